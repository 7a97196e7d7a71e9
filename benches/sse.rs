//! Throughput of the streaming path: SSE decoding alone, and the full OpenAI stream meter
//! (decode, inspect, rewrite `model`, re-frame), on a realistic `gpt-4o-mini` stream.
//!
//! Add to Cargo.toml:
//!
//! ```toml
//! [[bench]]
//! name = "sse"
//! harness = false
//! ```
//!
//! Run: `cargo bench --bench sse -- --quick`. Throughput is in chunks (SSE events), so
//! criterion's `elem/s` inverts to the cost per chunk.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tollgate::metering::{OpenAiStreamMeter, SseDecoder};

const TEXT_CHUNKS: usize = 256;

/// A stream as OpenAI sends it with `include_usage`: role chunk, text deltas of a few words
/// (some with escapes and non-ASCII), finish chunk, usage-only chunk, `[DONE]`.
fn openai_stream() -> (Vec<u8>, usize) {
    let head = r#"{"id":"chatcmpl-BxQ1vZ9kTq3YhR8uWm2LcN5pA7","object":"chat.completion.chunk","created":1753180000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_34a54ae93c","choices":"#;
    let words = [
        "Hello",
        " world",
        ",",
        " the",
        " caf\u{e9}",
        " \\\"quoted\\\"",
        "\\n\\n",
        " r\u{e9}sum\u{e9}",
        " of",
        " tokens",
    ];
    let mut out = String::new();
    let mut event = |choices: &str, tail: &str| {
        out.push_str("data: ");
        out.push_str(head);
        out.push_str(choices);
        out.push_str(tail);
        out.push_str("\n\n");
    };
    event(
        r#"[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]"#,
        r#","usage":null,"obfuscation":"3Kx"}"#,
    );
    for i in 0..TEXT_CHUNKS {
        let choices = format!(
            r#"[{{"index":0,"delta":{{"content":"{}"}},"logprobs":null,"finish_reason":null}}]"#,
            words[i % words.len()]
        );
        event(&choices, r#","usage":null,"obfuscation":"q2Zf9"}"#);
    }
    event(
        r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]"#,
        r#","usage":null,"obfuscation":"Lm"}"#,
    );
    event(
        "[]",
        r#","usage":{"prompt_tokens":1205,"completion_tokens":256,"total_tokens":1461,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"obfuscation":"x"}"#,
    );
    out.push_str("data: [DONE]\n\n");
    (out.into_bytes(), TEXT_CHUNKS + 4)
}

/// How the stream arrives: one read per event (a provider flushing each token), or bursts of
/// 16 KiB (a fast provider or a buffering hop), which split events at arbitrary bytes.
fn reads(stream: &[u8], mode: &str) -> Vec<Vec<u8>> {
    match mode {
        "per_event" => stream
            .split_inclusive(|&b| b == b'\n')
            .collect::<Vec<_>>()
            .chunks(2)
            .map(|lines| lines.concat())
            .collect(),
        _ => stream.chunks(16 * 1024).map(<[u8]>::to_vec).collect(),
    }
}

fn bench(c: &mut Criterion) {
    let (stream, events) = openai_stream();
    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Elements(events as u64));
    for mode in ["per_event", "16k_reads"] {
        let input = reads(&stream, mode);
        group.bench_with_input(BenchmarkId::new("decode", mode), &input, |b, input| {
            let mut out = Vec::with_capacity(events);
            b.iter(|| {
                let mut decoder = SseDecoder::new();
                out.clear();
                for read in input {
                    decoder.feed(black_box(read), &mut out);
                }
                decoder.finish(&mut out);
                black_box(out.len())
            })
        });
        group.bench_with_input(BenchmarkId::new("meter", mode), &input, |b, input| {
            let mut out = BytesMut::with_capacity(stream.len() * 2);
            b.iter(|| {
                let mut meter = OpenAiStreamMeter::new("openai/gpt-4o-mini", true);
                out.clear();
                for read in input {
                    meter.on_bytes(black_box(read), &mut out);
                }
                meter.on_end(&mut out);
                black_box((out.len(), meter.usage()))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
