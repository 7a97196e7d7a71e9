//! Cost of the Anthropic translation: one `text_delta` event through `AnthropicStream` (paid
//! once per generated token of a streamed answer), a whole typical stream, `translate_request`
//! on a 1 KB chat, and `translate_response` on a typical answer.
//!
//! Add to Cargo.toml:
//!
//! ```toml
//! [[bench]]
//! name = "translate_anthropic"
//! harness = false
//! ```
//!
//! Run: `cargo bench --bench translate_anthropic -- --quick`. Stream throughput is in events, so
//! criterion's `elem/s` inverts to the cost per event; the target is ≤ 2 µs per `text_delta`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use tollgate::providers::anthropic::{translate_request, translate_response, AnthropicStream};

const SLUG: &str = "anthropic/claude-sonnet-4.5";
const TEXT_EVENTS: usize = 256;

const MESSAGE_START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01Y3kPq7TnRv2Xc9\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":1205,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":1024,\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n\n";
const BLOCK_START: &str = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
/// A typical delta: a few words, as Anthropic sends them (Claude's deltas are a little longer
/// than OpenAI's one-token chunks).
const TEXT_DELTA: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" the caf\u{e9} on the \\\"corner\\\"\"}}\n\n";

/// A whole stream: start, a text block of `TEXT_EVENTS` deltas with a ping in the middle, stop.
fn anthropic_stream() -> (Vec<u8>, usize) {
    let words = [
        "Hello",
        " world,",
        " the caf\u{e9}",
        " \\\"quoted\\\"",
        "\\n\\n",
        " r\u{e9}sum\u{e9} of",
        " tokens",
    ];
    let mut out = String::from(MESSAGE_START);
    out.push_str(BLOCK_START);
    for i in 0..TEXT_EVENTS {
        if i == TEXT_EVENTS / 2 {
            out.push_str("event: ping\ndata: {\"type\": \"ping\"}\n\n");
        }
        out.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}\n\n",
            words[i % words.len()]
        ));
    }
    out.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    );
    out.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":256}}\n\n");
    out.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    (out.into_bytes(), TEXT_EVENTS + 6)
}

/// One read per event, as a provider flushing each delta delivers them.
fn per_event_reads(stream: &[u8]) -> Vec<&[u8]> {
    let mut reads = Vec::new();
    let mut rest = stream;
    while let Some(end) = rest.windows(2).position(|w| w == b"\n\n") {
        reads.push(&rest[..end + 2]);
        rest = &rest[end + 2..];
    }
    reads
}

/// A 1 KB chat: system prompt, three earlier turns, a question, sampling options.
fn chat_body() -> Vec<u8> {
    let body = json!({
        "model": SLUG,
        "messages": [
            {"role": "system", "content": "You are a concise assistant for a travel booking site. Answer in the user's language, quote prices in EUR, and never invent availability."},
            {"role": "user", "content": "I'd like to go from Lyon to Lisbon in the second week of May, two adults, flexible by a day or two. What are my options?"},
            {"role": "assistant", "content": "There are direct flights on Tuesdays, Thursdays and Saturdays (about 2h15). Trains take 14h+ with a change in Paris or Barcelona. Do you prefer the cheapest or the fastest?"},
            {"role": "user", "content": "Cheapest, but no departures before 8am please. Also \"carry-on only\" if that changes anything."},
            {"role": "assistant", "content": "With carry-on only, the Thursday 9:40 flight is usually the cheapest at around 95 EUR per person."},
            {"role": "user", "content": "Great. And for the way back, a week later, same constraints?"},
        ],
        "temperature": 0.3,
        "max_tokens": 512,
        "stop": ["\n\nUser:"],
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "user-8f3a2c",
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

const RESPONSE: &str = r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"For the way back a week later, the Thursday 18:05 flight from Lisbon is usually the cheapest option at around 90 EUR per person with carry-on only. Saturday has a 10:15 departure for about 110 EUR if you would rather travel at the weekend."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":268,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":58,"service_tier":"standard"}}"#;

fn bench_stream(c: &mut Criterion) {
    let mut group = c.benchmark_group("anthropic_stream");

    group.throughput(Throughput::Elements(1));
    group.bench_function("text_delta_event", |b| {
        let mut stream = AnthropicStream::new(SLUG, true);
        let mut out = BytesMut::with_capacity(4096);
        stream.on_bytes(MESSAGE_START.as_bytes(), &mut out);
        stream.on_bytes(BLOCK_START.as_bytes(), &mut out);
        b.iter(|| {
            out.clear();
            stream.on_bytes(black_box(TEXT_DELTA.as_bytes()), &mut out);
            black_box(out.len())
        })
    });

    let (stream_bytes, events) = anthropic_stream();
    let reads = per_event_reads(&stream_bytes);
    assert_eq!(reads.len(), events);
    group.throughput(Throughput::Elements(events as u64));
    group.bench_function("whole_stream_per_event_reads", |b| {
        let mut out = BytesMut::with_capacity(stream_bytes.len() * 2);
        b.iter(|| {
            let mut stream = AnthropicStream::new(SLUG, true);
            out.clear();
            for read in &reads {
                stream.on_bytes(black_box(read), &mut out);
            }
            stream.on_end(&mut out);
            black_box((out.len(), stream.usage()))
        })
    });
    group.finish();
}

fn bench_translate(c: &mut Criterion) {
    let mut group = c.benchmark_group("anthropic_translate");
    let body = chat_body();
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function(format!("request_{}B_chat", body.len()), |b| {
        b.iter(|| {
            translate_request(black_box(&body), "claude-sonnet-4-5-20250929", 4096).map(|v| v.len())
        })
    });
    group.throughput(Throughput::Bytes(RESPONSE.len() as u64));
    group.bench_function("response_text", |b| {
        b.iter(|| {
            translate_response(black_box(RESPONSE.as_bytes()), SLUG, false)
                .map(|(v, u)| (v.len(), u))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_stream, bench_translate);
criterion_main!(benches);
