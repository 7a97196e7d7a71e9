//! Gemini streamGenerateContent (SSE) -> OpenAI chunks (`providers::gemini::GeminiStream`): no
//! panic, the same output and metering however the upstream splits its bytes, and a client
//! stream that is always well-formed and always ends (`[DONE]` or one error event).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tollgate::metering::StreamMeter;
use tollgate::providers::gemini::GeminiStream;
use tollgate::providers::completions::ChatToCompletionStream;
use tollgate_fuzz::{assert_openai_sse, find, lossy, Split};

const SLUG: &str = "google/gemini-2.5-flash";

fn run(input: &[u8], chunks: &[&[u8]], include_usage: bool, legacy: bool) -> (Vec<u8>, Option<tollgate::metering::Usage>, Option<String>, u64) {
    let inner = GeminiStream::with_created(SLUG, include_usage, 1_700_000_000);
    let mut stream: Box<dyn StreamMeter> =
        if legacy { Box::new(ChatToCompletionStream::new(Box::new(inner))) } else { Box::new(inner) };
    let mut out = BytesMut::new();
    for chunk in chunks {
        stream.on_bytes(chunk, &mut out);
    }
    stream.on_end(&mut out);
    let estimate = stream.estimated_completion_tokens();
    let mut out = out.to_vec();
    let mut id = stream.response_id().map(str::to_owned);
    // Without a `responseId` the completion id is random (and the tool-call ids, hashed from
    // it, with it): replace them with placeholders before comparing runs.
    if let Some(generated) = id.as_deref().filter(|i| find(input, i["chatcmpl-".len()..].as_bytes()).is_none()) {
        // (The suffix only: legacy completions turn `chatcmpl-` into `cmpl-`.)
        out = replace(&out, generated["chatcmpl-".len()..].as_bytes(), b"ID");
        let mut at = 0;
        while let Some(i) = find(&out[at..], b"\"call_") {
            let start = at + i + 6;
            let end = (start + 16).min(out.len());
            if out[start..end].iter().all(u8::is_ascii_hexdigit) {
                out[start..end].fill(b'X');
            }
            at = start;
        }
        id = Some("chatcmpl-ID".to_owned());
    }
    (out, stream.usage(), id, estimate)
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(i) = find(rest, from) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(to);
        rest = &rest[i + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    let split = Split::new(data);
    let include_usage = split.flags & 1 != 0;
    let legacy = split.flags & 2 != 0;
    let whole = run(split.stream, &[split.stream], include_usage, legacy);
    for chunks in [split.chunks(), split.bytes()] {
        let other = run(split.stream, &chunks, include_usage, legacy);
        assert!(other.0 == whole.0, "output depends on the reads:\n{}\n---\n{}", lossy(&whole.0), lossy(&other.0));
        assert_eq!((other.1, &other.2, other.3), (whole.1, &whole.2, whole.3));
    }
    let events = assert_openai_sse(&whole.0);
    let last = events.last().expect("a stream always ends with [DONE] or an error event");
    let errors = events.iter().filter(|e| e.starts_with(b"{\"error\"")).count();
    if *last == b"[DONE]" {
        assert_eq!(errors, 0, "{}", lossy(&whole.0));
    } else {
        assert!(last.starts_with(b"{\"error\""), "the stream ended on neither [DONE] nor an error: {}", lossy(&whole.0));
        assert_eq!(errors, 1, "{}", lossy(&whole.0));
    }
});
