//! Non-streamed provider answers -> OpenAI `chat.completion` (`providers::anthropic`,
//! `providers::gemini`, `providers::gemini_embed`): no panic on any body, and every answer that
//! translates is a JSON object carrying the gateway's slug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate::providers::{anthropic, gemini, gemini_embed};
use tollgate_fuzz::lossy;

const SLUG: &str = "vendor/model";

fn object(body: &[u8], out: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("translated answer is not JSON ({e}):\n{}\n->\n{}", lossy(body), lossy(out)));
    assert!(v.is_object(), "{}", lossy(out));
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else { return };
    match flags % 3 {
        0 => {
            let json_mode = flags & 0x80 != 0;
            if let Ok(t) = anthropic::translate_message(body, SLUG, json_mode) {
                let v = object(body, &t.body);
                assert_eq!(v["model"], SLUG);
                assert_eq!(v["id"], t.id.as_str());
            }
        }
        1 => {
            if let Ok((out, _usage)) = gemini::translate_response(body, SLUG) {
                assert_eq!(object(body, &out)["model"], SLUG);
            }
        }
        _ => {
            if let Ok(out) = gemini_embed::embed_response(body, SLUG) {
                object(body, &out);
            }
        }
    }
});
