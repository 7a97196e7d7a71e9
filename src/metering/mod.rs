//! Metering: decoding the SSE a provider streams back, recording the usage it reports, and
//! estimating what it did not report (a stream cut before its usage chunk).
//!
//! [`sse`] is the format-neutral decoder; [`stream`] applies the OpenAI chunk format on top of
//! it, in the response body path; [`estimate`] holds the conservative token arithmetic used for
//! reservations and for streams that end without usage.

pub mod estimate;
pub mod sse;
pub mod stream;
pub mod usage;

pub use sse::{SseDecoder, SseError, SseEvent};
pub use stream::OpenAiStreamMeter;
pub use usage::Usage;

/// What the proxy needs from a streamed response's handler, whatever the provider's wire
/// format: OpenAI chunks are rewritten in place ([`OpenAiStreamMeter`]); other formats are
/// translated into OpenAI chunks as they arrive (`providers::anthropic`, `providers::gemini`).
pub trait StreamMeter: Send + Sync {
    /// Consume upstream bytes; append to `out` what the client must receive now.
    fn on_bytes(&mut self, input: &[u8], out: &mut bytes::BytesMut);
    /// The upstream body ended; flush anything pending.
    fn on_end(&mut self, out: &mut bytes::BytesMut);
    /// Usage as the provider reported it, once it has.
    fn usage(&self) -> Option<Usage>;
    /// The provider's id for the response (translated: `chatcmpl-msg_…`), once a chunk gave
    /// it. The client sees the gateway's own instead (each meter's `with_client_id`).
    fn response_id(&self) -> Option<&str>;
    /// The provider's own id for the response, as it sent it (`msg_…` from Anthropic), for
    /// the generation record's `upstream_id`. An OpenAI-format provider's id is not
    /// translated, so by default it is [`response_id`](Self::response_id).
    fn upstream_id(&self) -> Option<&str> {
        self.response_id()
    }
    /// Completion tokens estimated from what was produced, for streams without usage.
    fn estimated_completion_tokens(&self) -> u64;
}

impl StreamMeter for OpenAiStreamMeter {
    fn on_bytes(&mut self, input: &[u8], out: &mut bytes::BytesMut) {
        OpenAiStreamMeter::on_bytes(self, input, out)
    }
    fn on_end(&mut self, out: &mut bytes::BytesMut) {
        OpenAiStreamMeter::on_end(self, out)
    }
    fn usage(&self) -> Option<Usage> {
        OpenAiStreamMeter::usage(self)
    }
    fn response_id(&self) -> Option<&str> {
        OpenAiStreamMeter::response_id(self)
    }
    fn estimated_completion_tokens(&self) -> u64 {
        OpenAiStreamMeter::estimated_completion_tokens(self)
    }
}
