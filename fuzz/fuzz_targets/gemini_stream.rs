//! Gemini streamGenerateContent (SSE) -> OpenAI chunks (`providers::gemini::GeminiStream`): no
//! panic, the same output and metering however the upstream splits its bytes, and a client
//! stream that is always well-formed and always ends (`[DONE]` or one error event).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::providers::gemini::GeminiStream;
use tollgate_fuzz::{assert_ends_once, assert_openai_sse, assert_same_metering, find, meter, Metered, Split};

const SLUG: &str = "google/gemini-2.5-flash";

fn run(input: &[u8], chunks: &[&[u8]], include_usage: bool, legacy: bool) -> Metered {
    let Metered { mut out, usage, mut id, estimate } =
        meter(Box::new(GeminiStream::with_created(SLUG, include_usage, 1_700_000_000)), legacy, chunks);
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
    Metered { out, usage, id, estimate }
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
        assert_same_metering(&whole, &run(split.stream, &chunks, include_usage, legacy));
    }
    assert_ends_once(&assert_openai_sse(&whole.out), &whole.out);
});
