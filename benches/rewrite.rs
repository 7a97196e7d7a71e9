//! Cost of the request path's body work: validating a chat request and rewriting its `model`
//! (plus `stream_options.include_usage`), on a 1 KB chat body and a 1 MiB vision body whose
//! size is one base64 image. Also the non-streamed response rewrite.
//!
//! Add to Cargo.toml:
//!
//! ```toml
//! [[bench]]
//! name = "rewrite"
//! harness = false
//! ```
//!
//! Run: `cargo bench --bench rewrite -- --quick`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::json;
use tollgate::providers::openai::{
    parse_chat_request, rewrite_chat_request, rewrite_chat_response,
};

fn chat_body() -> Vec<u8> {
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a concise assistant for a travel booking site. Answer in the user's language, quote prices in EUR, and never invent availability."},
            {"role": "user", "content": "I'd like to go from Lyon to Lisbon in the second week of May, two adults, flexible by a day or two. What are my options?"},
            {"role": "assistant", "content": "There are direct flights on Tuesdays, Thursdays and Saturdays (about 2h15). Trains take 14h+ with a change in Paris or Barcelona. Do you prefer the cheapest or the fastest?"},
            {"role": "user", "content": "Cheapest, but no departures before 8am please. Also \"carry-on only\" if that changes anything."},
        ],
        "temperature": 0.3,
        "max_tokens": 512,
        "stream": true,
        "user": "user-8f3a2c",
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn vision_body(size: usize) -> Vec<u8> {
    // Base64 of arbitrary bytes, like an encoded PNG.
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let image: String = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(B64[(state % 64) as usize])
        })
        .collect();
    let body = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this image? Describe it in one sentence."},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{image}"), "detail": "high"}},
        ]}],
        "max_tokens": 300,
        "stream": true,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

const RESPONSE: &[u8] = br#"{"id":"chatcmpl-BxQ1vZ9kTq3YhR8uWm2LcN5pA7","object":"chat.completion","created":1753180000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"The cheapest option is the Saturday 9:40 flight at about 84 EUR per person with carry-on only; Tuesday at 10:15 is 91 EUR.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":118,"completion_tokens":34,"total_tokens":152,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_34a54ae93c"}"#;

fn bench(c: &mut Criterion) {
    let bodies = [("chat_1k", chat_body()), ("vision_1m", vision_body(1 << 20))];
    let mut group = c.benchmark_group("request");
    for (name, body) in &bodies {
        assert!(parse_chat_request(body).is_ok(), "{name} must be a valid request");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("parse", name), body, |b, body| {
            b.iter(|| parse_chat_request(black_box(body)).map(|info| info.message_count))
        });
        group.bench_with_input(BenchmarkId::new("rewrite", name), body, |b, body| {
            b.iter(|| rewrite_chat_request(black_box(body), "gpt-4o-2024-08-06", true).len())
        });
        group.bench_with_input(BenchmarkId::new("parse+rewrite", name), body, |b, body| {
            b.iter(|| {
                let info = parse_chat_request(black_box(body)).ok()?;
                let add = info.stream && !info.include_usage;
                Some(rewrite_chat_request(body, "gpt-4o-2024-08-06", add).len())
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("response");
    group.throughput(Throughput::Bytes(RESPONSE.len() as u64));
    group.bench_function("rewrite_chat_response", |b| {
        b.iter(|| rewrite_chat_response(black_box(RESPONSE), "openai/gpt-4o-mini").1)
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
