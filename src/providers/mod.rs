//! Provider wire formats, one file per format, plus the span scanner they share.
//!
//! Everything here is pure: bytes in, bytes out. The proxy decides when to call it.

pub mod anthropic;
pub mod completions;
pub mod gemini;
pub mod gemini_embed;
pub mod json_scan;
pub mod multipart;
pub mod openai;
