//! OpenAI chat request -> Anthropic Messages / Gemini generateContent / Gemini embeddings
//! (`providers::{anthropic, gemini, gemini_embed}`): no panic on any body, and every request
//! that translates is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::providers::{anthropic, gemini, gemini_embed, openai};
use tollgate_fuzz::{is_json, lossy};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else { return };
    // The proxy translates only what `parse_chat_request` accepted; the translators are still
    // meant to take anything without panicking, so both paths are fuzzed.
    if flags & 1 != 0 && openai::parse_chat_request(body).is_err() {
        return;
    }
    let max_tokens = if flags & 2 != 0 { None } else { Some(u64::from(flags)) };
    let _ = anthropic::json_mode(body);
    if let Ok(out) = anthropic::translate_request(body, "claude-sonnet-4-20250514", max_tokens.unwrap_or(4096)) {
        assert!(is_json(&out), "{}\n->\n{}", lossy(body), lossy(&out));
    }
    if let Ok(out) = gemini::translate_request(body, max_tokens) {
        assert!(is_json(&out), "{}\n->\n{}", lossy(body), lossy(&out));
    }
    if let Ok((out, path)) = gemini_embed::embed_request(body, "text-embedding-004") {
        assert!(is_json(&out), "{}\n->\n{}", lossy(body), lossy(&out));
        assert!(path.starts_with('/'));
    }
});
