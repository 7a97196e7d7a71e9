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
