//! Cost of the Gemini translation: one streamed event through [`GeminiStream`] (decode the
//! SSE, parse the partial `GenerateContentResponse`, write the OpenAI chunk), and
//! `translate_request` for a typical 1 KB chat.
//!
//! Add to Cargo.toml:
//!
//! ```toml
//! [[bench]]
//! name = "translate_gemini"
//! harness = false
//! ```
//!
//! Run: `cargo bench --bench translate_gemini -- --quick`. Stream throughput is in events, so
//! criterion's `elem/s` inverts to the cost per Gemini event (target: ≤ 2 µs).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tollgate::metering::StreamMeter;
use tollgate::providers::gemini::{translate_request, GeminiStream};

const TEXT_EVENTS: usize = 256;

/// A text event as Gemini 2.5 streams it (CRLF, usage in every event), a few words of text.
fn text_event(words: &str, count: usize) -> String {
    format!(
        "data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \"{words}\"}}],\"role\": \"model\"}},\"index\": 0}}],\"usageMetadata\": {{\"promptTokenCount\": 1205,\"candidatesTokenCount\": {count},\"totalTokenCount\": {},\"promptTokensDetails\": [{{\"modality\": \"TEXT\",\"tokenCount\": 1205}}]}},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"Bx7qaK3vJ9mQz8sP4o2W-Qg\"}}\r\n\r\n",
        1205 + count
    )
}

/// One read per event, as a provider flushing each chunk delivers them.
fn stream_reads() -> Vec<Vec<u8>> {
    let words = [
        "Hello",
        " world, the caf\\u00e9",
        " \\\"quoted\\\" text",
        "\\n\\nNext paragraph of",
        " r\u{e9}sum\u{e9} and more",
        " tokens here",
    ];
    let mut reads: Vec<Vec<u8>> =
        (0..TEXT_EVENTS).map(|i| text_event(words[i % words.len()], i + 1).into_bytes()).collect();
    reads.push(
        text_event("", TEXT_EVENTS)
            .replace("\"index\": 0", "\"finishReason\": \"STOP\",\"index\": 0")
            .into_bytes(),
    );
    reads
}

fn bench_stream(c: &mut Criterion) {
    let reads = stream_reads();
    let mut group = c.benchmark_group("gemini_stream");
    group.throughput(Throughput::Elements(reads.len() as u64));
    group.bench_function("text_event_per_read", |b| {
        let mut out = BytesMut::with_capacity(1 << 16);
        b.iter(|| {
            let mut stream = GeminiStream::new("google/gemini-2.5-flash", true);
            for read in &reads {
                stream.on_bytes(black_box(read), &mut out);
                out.clear();
            }
            stream.on_end(&mut out);
            out.clear();
            black_box(stream.usage())
        })
    });
    group.finish();
}

/// About 1 KB: a system prompt, three turns, sampling settings.
fn chat_request() -> Vec<u8> {
    let body = serde_json::json!({
        "model": "google/gemini-2.5-flash",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant for a travel agency. Answer briefly, in the user's language, and always mention prices in euros when you give any."},
            {"role": "user", "content": "I would like to spend four days in Lisbon in May. What should I see, and which neighbourhood is best to stay in?"},
            {"role": "assistant", "content": "Stay in Baixa or Chiado: central, walkable, near trams. See Belém (tower, monastery, pastéis), Alfama and the castle, LX Factory, and take a day trip to Sintra. Budget about 120 € a night for a good hotel."},
            {"role": "user", "content": [{"type": "text", "text": "Great. Can you turn that into a day-by-day plan, with one restaurant suggestion per evening and a rough daily budget? My partner is vegetarian."}]}
        ],
        "temperature": 0.7,
        "top_p": 0.95,
        "max_tokens": 800,
        "stop": ["\n\n\n"],
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "user-1234"
    });
    serde_json::to_vec(&body).unwrap()
}

fn bench_request(c: &mut Criterion) {
    let body = chat_request();
    let mut group = c.benchmark_group("gemini_request");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function(format!("translate_{}_bytes", body.len()), |b| {
        b.iter(|| translate_request(black_box(&body), Some(8192)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_stream, bench_request);
criterion_main!(benches);
