//! The request and response rewriters that splice bytes instead of re-serialising
//! (`providers::openai` over `providers::json_scan`), the legacy-completions conversions, and
//! the multipart `model` splice: no panic, and valid JSON in means valid JSON out with the
//! rewritten field read back as written and everything else read back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate::providers::json_scan::{self, ObjectScanner};
use tollgate::providers::{completions, multipart, openai};
use tollgate_fuzz::{is_json, lossy};

const UPSTREAM: &str = "gpt-4o-mini-2024-07-18";
const SLUG: &str = "openai/gpt-4o-mini";

fn json_rewrites(body: &[u8], add_include_usage: bool) {
    // The span scanner: members of a valid object are valid JSON values, inside the input.
    if let Ok(mut scanner) = ObjectScanner::new(body) {
        while let Ok(Some(member)) = scanner.next_member() {
            let value = member.value(body);
            if is_json(body) {
                assert!(is_json(value), "member value {:?} of valid JSON", lossy(value));
            }
        }
    }
    let _ = json_scan::find_member(body, "model");

    // Requests: what the gateway accepts, it forwards as valid JSON, reading back the same.
    if let Ok(info) = openai::parse_chat_request(body) {
        let out = openai::rewrite_chat_request(body, UPSTREAM, add_include_usage);
        let back = openai::parse_chat_request(&out).unwrap_or_else(|e| {
            panic!("the rewritten request is refused ({e}):\n{}\n->\n{}", lossy(body), lossy(&out))
        });
        assert_eq!(back.model, UPSTREAM, "{}", lossy(&out));
        assert_eq!(
            (back.stream, back.max_tokens, back.message_count, back.n),
            (info.stream, info.max_tokens, info.message_count, info.n),
            "{}",
            lossy(&out)
        );
        assert_eq!(back.include_usage, info.include_usage || add_include_usage, "{}", lossy(&out));
    } else {
        let _ = openai::rewrite_chat_request(body, UPSTREAM, add_include_usage);
    }

    // Responses: valid JSON stays valid; a top-level `model` becomes the slug.
    let (out, _usage) = openai::rewrite_chat_response(body, SLUG);
    let _ = openai::response_id(body);
    let _ = openai::parse_usage(body);
    if let Ok(Value::Object(before)) = serde_json::from_slice::<Value>(body) {
        let after: Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("rewritten response is not JSON ({e}):\n{}\n->\n{}", lossy(body), lossy(&out)));
        if before.contains_key("model") {
            assert_eq!(after["model"], SLUG, "{}", lossy(&out));
        }
    }
    let mut chunk = Vec::new();
    if let Some(_info) = openai::rewrite_stream_chunk(body, b"\"s\"", &mut chunk) {
        if is_json(body) {
            assert!(is_json(&chunk), "{}\n->\n{}", lossy(body), lossy(&chunk));
        }
    } else {
        assert!(chunk.is_empty());
    }

    // Legacy completions.
    if let Ok(chat) = completions::to_chat_request(body) {
        assert!(is_json(&chat));
    }
    let legacy = completions::chat_to_completion(body);
    if is_json(body) {
        assert!(is_json(&legacy));
    }
}

/// The multipart body of an audio transcription: replacing `model` and parsing again gives
/// the new value and every other part unchanged.
fn multipart_rewrite(body: &[u8], boundary_len: usize) {
    let boundary = String::from_utf8_lossy(&body[..boundary_len.min(body.len())]).into_owned();
    let body = &body[boundary_len.min(body.len())..];
    let _ = multipart::boundary(&format!("multipart/form-data; boundary={boundary}"));
    let Ok(form) = multipart::Form::parse(body, &boundary) else { return };
    for part in &form.parts {
        let _ = form.field(body, &part.name);
        let _ = form.text(body, &part.name);
    }
    let out = form.replace(body, "model", UPSTREAM);
    if form.parts.iter().any(|p| p.name == "model") {
        let again = multipart::Form::parse(&out, &boundary)
            .unwrap_or_else(|e| panic!("the rewritten form does not parse ({e}):\n{:?}\n->\n{:?}", lossy(body), lossy(&out)));
        assert_eq!(again.field(&out, "model"), Some(UPSTREAM.as_bytes()), "{:?}\n->\n{:?}", lossy(body), lossy(&out));
        assert_eq!(again.parts.len(), form.parts.len());
        for (a, b) in form.parts.iter().zip(&again.parts) {
            assert_eq!((&a.name, &a.filename), (&b.name, &b.filename));
            if a.name != "model" {
                assert_eq!(body.get(a.value.clone()), out.get(b.value.clone()), "part {}", a.name);
            }
        }
    } else {
        assert_eq!(out, body);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else { return };
    if flags & 0x80 != 0 {
        multipart_rewrite(body, (flags & 0x3f) as usize);
    } else {
        json_rewrites(body, flags & 1 != 0);
    }
});
