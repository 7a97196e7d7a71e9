//! Anthropic Messages stream -> OpenAI chunks (`providers::anthropic::AnthropicStream`): no
//! panic, the same output and metering however the upstream splits its bytes, and a client
//! stream that is always well-formed and always ends (`[DONE]` or one error event).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tollgate::metering::StreamMeter;
use tollgate::providers::anthropic::AnthropicStream;
use tollgate::providers::completions::ChatToCompletionStream;
use tollgate_fuzz::{assert_openai_sse, lossy, Split};

const SLUG: &str = "anthropic/claude-sonnet-4";

fn run(chunks: &[&[u8]], include_usage: bool, legacy: bool) -> (Vec<u8>, Option<tollgate::metering::Usage>, Option<String>, u64) {
    let inner = AnthropicStream::with_created(SLUG, include_usage, 1_700_000_000);
    let mut stream: Box<dyn StreamMeter> =
        if legacy { Box::new(ChatToCompletionStream::new(Box::new(inner))) } else { Box::new(inner) };
    let mut out = BytesMut::new();
    for chunk in chunks {
        stream.on_bytes(chunk, &mut out);
    }
    stream.on_end(&mut out);
    let estimate = stream.estimated_completion_tokens();
    (out.to_vec(), stream.usage(), stream.response_id().map(str::to_owned), estimate)
}

fuzz_target!(|data: &[u8]| {
    let split = Split::new(data);
    let include_usage = split.flags & 1 != 0;
    let legacy = split.flags & 2 != 0;
    let whole = run(&[split.stream], include_usage, legacy);
    for chunks in [split.chunks(), split.bytes()] {
        let other = run(&chunks, include_usage, legacy);
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
