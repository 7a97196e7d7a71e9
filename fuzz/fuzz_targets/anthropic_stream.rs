//! Anthropic Messages stream -> OpenAI chunks (`providers::anthropic::AnthropicStream`): no
//! panic, the same output and metering however the upstream splits its bytes, and a client
//! stream that is always well-formed and always ends (`[DONE]` or one error event).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::providers::anthropic::AnthropicStream;
use tollgate_fuzz::{assert_ends_once, assert_openai_sse, assert_same_metering, meter, Metered, Split};

const SLUG: &str = "anthropic/claude-sonnet-4";

fn run(chunks: &[&[u8]], include_usage: bool, legacy: bool) -> Metered {
    meter(Box::new(AnthropicStream::with_created(SLUG, include_usage, 1_700_000_000)), legacy, chunks)
}

fuzz_target!(|data: &[u8]| {
    let split = Split::new(data);
    let include_usage = split.flags & 1 != 0;
    let legacy = split.flags & 2 != 0;
    let whole = run(&[split.stream], include_usage, legacy);
    for chunks in [split.chunks(), split.bytes()] {
        assert_same_metering(&whole, &run(&chunks, include_usage, legacy));
    }
    assert_ends_once(&assert_openai_sse(&whole.out), &whole.out);
});
