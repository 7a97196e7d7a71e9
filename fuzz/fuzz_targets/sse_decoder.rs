//! The incremental SSE decoder (`metering::sse`): no panic on any bytes, and the events (and
//! whether it failed) are the same however the stream is split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::metering::{SseDecoder, SseError, SseEvent};
use tollgate_fuzz::Split;

fn decode(chunks: &[&[u8]], limit: usize) -> (Vec<SseEvent>, Option<SseError>) {
    let mut decoder = SseDecoder::with_limit(limit);
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.feed(chunk, &mut out);
    }
    let error = decoder.error();
    decoder.finish(&mut out);
    // finish() resets the decoder for a new stream.
    assert_eq!(decoder.error(), None);
    (out, error)
}

fuzz_target!(|data: &[u8]| {
    let split = Split::new(data);
    // The flags pick the limit: the default one, or a small one so that the oversize paths
    // (buffered and unbuffered lines, many data lines) are reached with small inputs.
    let limit = match split.flags {
        0..=127 => tollgate::metering::sse::DEFAULT_MAX_EVENT_BYTES,
        f => (f as usize - 128) * 4,
    };
    let whole = decode(&[split.stream], limit);
    let chunked = decode(&split.chunks(), limit);
    assert_eq!(whole, chunked, "split at {:?}", split.chunks().iter().map(|c| c.len()).collect::<Vec<_>>());
    let bytes = decode(&split.bytes(), limit);
    assert_eq!(whole, bytes, "byte by byte");
    for event in &whole.0 {
        assert!(event.data.len() <= limit, "event of {} bytes over the limit {limit}", event.data.len());
        assert!(!event.data.contains(&b'\r'));
        assert!(event.event.as_deref().is_none_or(|e| !e.is_empty() && !e.contains(['\r', '\n'])));
        assert!(event.id.as_deref().is_none_or(|i| !i.contains(['\r', '\n', '\0'])));
    }
});
