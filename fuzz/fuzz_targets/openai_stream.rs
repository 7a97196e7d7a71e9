//! The OpenAI stream meter (`metering::stream`), alone and wrapped by the legacy-completions
//! re-framer: no panic, output independent of the reads, and the client's stream decodes back
//! to the upstream's events (the model renamed, the gateway's own usage chunk dropped).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::metering::{OpenAiStreamMeter, SseDecoder, SseEvent};
use tollgate::providers::openai;
use tollgate_fuzz::{assert_same_metering, is_json, lossy, meter, Metered, Split};

const SLUG: &str = "openai/gpt-4o-mini";

fn run(chunks: &[&[u8]], strip: bool, legacy: bool) -> Metered {
    meter(Box::new(OpenAiStreamMeter::new(SLUG, strip)), legacy, chunks)
}

fn decode(bytes: &[u8]) -> Vec<SseEvent> {
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    decoder.feed(bytes, &mut events);
    decoder.finish(&mut events);
    events
}

fuzz_target!(|data: &[u8]| {
    let split = Split::new(data);
    let strip = split.flags & 1 != 0;
    let legacy = split.flags & 2 != 0;
    let whole = run(&[split.stream], strip, legacy);
    for chunks in [split.chunks(), split.bytes()] {
        assert_same_metering(&whole, &run(&chunks, strip, legacy));
    }
    if legacy {
        return;
    }
    // The client decodes what the upstream sent, event for event: the same names and ids,
    // valid JSON still valid, data that is not a JSON object untouched. With `strip`, the
    // usage-only chunks (the gateway asked for them, the client did not) are gone.
    let mut scratch = Vec::new();
    let upstream: Vec<SseEvent> = decode(split.stream)
        .into_iter()
        .filter(|u| {
            let stripped = strip
                && u.data.trim_ascii() != b"[DONE]"
                && openai::rewrite_stream_chunk(&u.data, b"\"m\"", &mut scratch)
                    .is_some_and(|i| !i.is_error && i.usage.is_some() && i.choices == Some(0));
            !stripped
        })
        .collect();
    let client = decode(&whole.out);
    assert_eq!(upstream.len(), client.len(), "{}", lossy(&whole.out));
    for (source, event) in upstream.iter().zip(&client) {
        assert_eq!((&source.event, &source.id), (&event.event, &event.id));
        if is_json(&source.data) {
            assert!(is_json(&event.data), "valid JSON became invalid: {:?} -> {:?}", lossy(&source.data), lossy(&event.data));
        }
        if openai::rewrite_stream_chunk(&source.data, b"\"m\"", &mut scratch).is_none() {
            assert_eq!(source.data, event.data);
        }
    }
});
