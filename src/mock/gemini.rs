//! Gemini's `generateContent` / `streamGenerateContent` (`POST /v1beta/models/{model}:{action}`):
//! the same deterministic reply as [`super::openai`], in Gemini's shapes.
//!
//! Tokens: `promptTokenCount` = Σ over `contents` of `ceil(text_bytes / 4) + 3` (text of the
//! parts), plus the same for `systemInstruction` when present; `candidatesTokenCount` = words of
//! the reply = the number of content chunks. `generationConfig.maxOutputTokens` caps the reply
//! (`finishReason: "MAX_TOKENS"`). Auth is `x-goog-api-key` or `?key=`. With `?alt=sse` the
//! stream is SSE with CRLF line ends like Google's; without it, one JSON array of the chunks.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::openai::{bad_json, event, text_bytes, to_vec, tokens_for_bytes, ApiError, Event};
use super::openai::{EventKind, Reply};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequest {
    contents: Option<Vec<RawContent>>,
    #[serde(alias = "system_instruction")]
    system_instruction: Option<RawContent>,
    #[serde(alias = "generation_config")]
    generation_config: Option<RawConfig>,
}

#[derive(Deserialize)]
struct RawContent {
    #[serde(default)]
    parts: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(alias = "max_output_tokens")]
    max_output_tokens: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub max_output_tokens: Option<u64>,
    pub content_count: usize,
    pub prompt_tokens: u64,
}

pub fn parse_generate(body: &[u8]) -> Result<GenerateRequest, ApiError> {
    let raw: RawRequest = serde_json::from_slice(body).map_err(bad_json)?;
    let contents = raw
        .contents
        .ok_or_else(|| ApiError::invalid("contents is not specified", Some("contents")))?;
    let tokens = |c: &RawContent| tokens_for_bytes(text_bytes(&c.parts)) + 3;
    Ok(GenerateRequest {
        max_output_tokens: raw.generation_config.and_then(|g| g.max_output_tokens),
        content_count: contents.len(),
        prompt_tokens: raw.system_instruction.as_ref().map_or(0, tokens)
            + contents.iter().map(tokens).sum::<u64>(),
    })
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    pub prompt_token_count: u64,
    pub candidates_token_count: u64,
    pub total_token_count: u64,
}

impl UsageMetadata {
    pub fn new(prompt: u64, candidates: u64) -> Self {
        UsageMetadata {
            prompt_token_count: prompt,
            candidates_token_count: candidates,
            total_token_count: prompt + candidates,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    candidates: [Candidate<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_metadata: Option<UsageMetadata>,
    model_version: &'a str,
    response_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    content: Content<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'a str>,
    index: u32,
}

#[derive(Serialize)]
struct Content<'a> {
    parts: [Part<'a>; 1],
    role: &'static str,
}

#[derive(Serialize)]
struct Part<'a> {
    text: &'a str,
}

fn finish_reason(reply: &Reply) -> &'static str {
    if reply.finish_reason == "length" {
        "MAX_TOKENS"
    } else {
        "STOP"
    }
}

fn response(
    id: &str,
    model: &str,
    text: &str,
    finish: Option<&str>,
    usage: Option<UsageMetadata>,
) -> Vec<u8> {
    to_vec(&Response {
        candidates: [Candidate {
            content: Content {
                parts: [Part { text }],
                role: "model",
            },
            finish_reason: finish,
            index: 0,
        }],
        usage_metadata: usage,
        model_version: model,
        response_id: id,
    })
}

/// The whole reply in one `generateContent` response.
pub fn generate_json(
    id: &str,
    model: &str,
    reply: &Reply,
    usage: Option<UsageMetadata>,
) -> Vec<u8> {
    response(id, model, &reply.text(), Some(finish_reason(reply)), usage)
}

/// One chunk per word, each with the usage so far (as Gemini does), then a last chunk with an
/// empty text, the finish reason and the final usage. No `[DONE]`: the body just ends.
fn chunks(
    id: &str,
    model: &str,
    reply: &Reply,
    usage: Option<UsageMetadata>,
) -> Vec<(EventKind, Vec<u8>)> {
    let so_far = |n: usize| usage.map(|u| UsageMetadata::new(u.prompt_token_count, n as u64));
    let mut out: Vec<_> = reply
        .chunks
        .iter()
        .enumerate()
        .map(|(i, word)| {
            (
                EventKind::Content,
                response(id, model, word, None, so_far(i + 1)),
            )
        })
        .collect();
    let last = response(id, model, "", Some(finish_reason(reply)), usage);
    out.push((EventKind::Finish, last));
    out
}

/// `streamGenerateContent?alt=sse`.
pub fn generate_stream(
    id: &str,
    model: &str,
    reply: &Reply,
    usage: Option<UsageMetadata>,
) -> Vec<Event> {
    chunks(id, model, reply, usage)
        .into_iter()
        .map(|(kind, json)| event(kind, sse_crlf(&json)))
        .collect()
}

/// `streamGenerateContent` without `alt=sse`: the chunks as one JSON array.
pub fn generate_array(
    id: &str,
    model: &str,
    reply: &Reply,
    usage: Option<UsageMetadata>,
) -> Vec<u8> {
    let mut out = b"[".to_vec();
    for (i, (_, json)) in chunks(id, model, reply, usage).iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",\r\n");
        }
        out.extend_from_slice(json);
    }
    out.extend_from_slice(b"]");
    out
}

/// The `status` string Google APIs use for an HTTP status.
pub fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        s if s < 500 => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    }
}

/// `{"error":{"code","message","status"}}`.
pub fn error_json(err: &ApiError) -> Vec<u8> {
    to_vec(&serde_json::json!({
        "error": {"code": err.status, "message": err.message, "status": status_name(err.status)},
    }))
}

pub fn error_sse(err: &ApiError) -> Bytes {
    sse_crlf(&error_json(err))
}

fn sse_crlf(json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 10);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\r\n\r\n");
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::openai::build_reply;

    #[test]
    fn parses_and_counts() {
        let body = br#"{"systemInstruction":{"parts":[{"text":"be nice"}]},
            "contents":[{"role":"user","parts":[{"text":"hello"},{"text":"!!!"}]}],
            "generationConfig":{"maxOutputTokens":4}}"#;
        let req = parse_generate(body).unwrap();
        assert_eq!(req.prompt_tokens, (2 + 3) + (2 + 3));
        assert_eq!((req.max_output_tokens, req.content_count), (Some(4), 1));
        let snake = br#"{"contents":[],"generation_config":{"max_output_tokens":2}}"#;
        assert_eq!(parse_generate(snake).unwrap().max_output_tokens, Some(2));
        assert_eq!(parse_generate(b"{}").unwrap_err().status, 400);
        assert_eq!(parse_generate(b"[1").unwrap_err().status, 400);
    }

    #[test]
    fn response_shapes() {
        let reply = build_reply(1, Some(3), Some(2));
        let usage = Some(UsageMetadata::new(5, 2));
        let v: Value = serde_json::from_slice(&generate_json("r1", "gem", &reply, usage)).unwrap();
        assert_eq!(
            v["candidates"][0]["content"]["parts"][0]["text"],
            "Hello from"
        );
        assert_eq!(v["candidates"][0]["content"]["role"], "model");
        assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert_eq!(v["usageMetadata"]["totalTokenCount"], 7);
        assert_eq!(v["modelVersion"], "gem");

        let events = generate_stream("r1", "gem", &reply, usage);
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(|e| e.bytes.ends_with(b"}\r\n\r\n")));
        let last: Value = serde_json::from_slice(&events[2].bytes[6..]).unwrap();
        assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 2);
        assert_eq!(last["candidates"][0]["finishReason"], "MAX_TOKENS");
        let first: Value = serde_json::from_slice(&events[0].bytes[6..]).unwrap();
        assert_eq!(first["usageMetadata"]["candidatesTokenCount"], 1);
        assert!(first["candidates"][0].get("finishReason").is_none());

        let array: Value =
            serde_json::from_slice(&generate_array("r1", "gem", &reply, None)).unwrap();
        assert_eq!(array.as_array().unwrap().len(), 3);
        assert!(array[0].get("usageMetadata").is_none());
    }

    #[test]
    fn errors() {
        let v: Value =
            serde_json::from_slice(&error_json(&ApiError::for_status(429, "quota"))).unwrap();
        assert_eq!(v["error"]["code"], 429);
        assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
        assert!(error_sse(&ApiError::for_status(500, "x")).ends_with(b"\r\n\r\n"));
    }
}
