//! The hostile-input checks every request pays (proxy/guard.rs, proxy/front.rs): the JSON
//! body check (UTF-8 + nesting depth, one pass skipping strings with memchr2), the raw header
//! scan (end, size, framing) and path normalisation.
//!
//! Run: `cargo bench --bench guard -- --quick`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use std::hint::black_box;
use tollgate::proxy::front::HeadScanner;
use tollgate::proxy::guard::{check_json, normalize_path};

fn chat_body(content_bytes: usize) -> Vec<u8> {
    json!({
        "model": "openai/gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "x".repeat(content_bytes)},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}}
        }}}],
        "stream": true,
    })
    .to_string()
    .into_bytes()
}

fn guard(c: &mut Criterion) {
    for size in [1024usize, 100 * 1024] {
        let body = chat_body(size);
        let mut g = c.benchmark_group("check_json");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("chat_{}k", size / 1024), |b| {
            b.iter(|| check_json(black_box(&body), 64).unwrap())
        });
        g.finish();
    }
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: OpenAI/Python 1.99.0\r\n\
Authorization: Bearer sk-tg-0123456789abcdef0123456789abcdef\r\nContent-Type: application/json\r\n\
Accept: application/json\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.99.0\r\n\
X-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\n\
X-Stainless-Runtime-Version: 3.12.3\r\nContent-Length: 120\r\n\r\n";
    c.bench_function("head_scan_14_lines", |b| {
        b.iter(|| {
            let mut s = HeadScanner::default();
            black_box(s.scan(black_box(head), 32 * 1024, 100))
        })
    });
    c.bench_function("normalize_path", |b| b.iter(|| normalize_path(black_box("/v1/chat/completions")).is_ok()));
}

criterion_group!(benches, guard);
criterion_main!(benches);
