//! Gemini's `generateContent` / `streamGenerateContent` (`POST /v1beta/models/{model}:{action}`):
//! the same deterministic reply as [`super::openai`], in Gemini's shapes.
//!
//! Tokens: `promptTokenCount` = Σ over `contents` of `ceil(text_bytes / 4) + 3` (text of the
//! parts, + 85 per `image/*` `inlineData`/`fileData` part), plus the same for
//! `systemInstruction` when present; `candidatesTokenCount` = words of the reply = the number of
//! content chunks. `generationConfig.maxOutputTokens` caps the reply (`finishReason:
//! "MAX_TOKENS"`). Auth is `x-goog-api-key` or `?key=`. With `?alt=sse` the stream is SSE with
//! CRLF line ends like Google's; without it, one JSON array of the chunks.
//!
//! Tools (see [`super::tools`]): with `tools[].functionDeclarations` declared and a user turn
//! last, the answer is one `functionCall {name, args}` part with `finishReason: "STOP"`, streamed
//! as one event (it is the stream's finish event, so stream faults fire before it); a turn with
//! `functionResponse` parts is answered in text. `generationConfig.responseMimeType:
//! "application/json"` turns on JSON mode. Field names are accepted in camelCase and snake_case,
//! as Gemini does.
//!
//! Embeddings: `:embedContent {content: {parts: [{text}]}, outputDimensionality?}` →
//! `{"embedding": {"values": [...]}}`, `:batchEmbedContents {requests: [...]}` (at most
//! [`MAX_BATCH_EMBED`]) → `{"embeddings": [...]}`; 8 dimensions unless `outputDimensionality`
//! says otherwise, the same deterministic unit vectors as OpenAI's embeddings, seeded by the
//! text. Like Gemini, no token usage is reported for embeddings.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::openai::{bad_json, embedding_vector, event, fnv1a, to_vec, ApiError, Event};
use super::openai::{EventKind, Reply, DEFAULT_DIMENSIONS, MAX_DIMENSIONS};
use super::tools::{choose_call, content_tokens, result_content, tool_result_text};
use super::tools::{Choice, ToolCall, ToolDecl, Turn};

/// Most requests one `batchEmbedContents` takes, as in Gemini.
pub const MAX_BATCH_EMBED: usize = 100;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequest {
    contents: Option<Vec<RawContent>>,
    #[serde(alias = "system_instruction")]
    system_instruction: Option<RawContent>,
    #[serde(alias = "generation_config")]
    generation_config: Option<RawConfig>,
    #[serde(default)]
    tools: Value,
    #[serde(default, alias = "tool_config")]
    tool_config: Value,
}

#[derive(Deserialize)]
struct RawContent {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    parts: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(alias = "max_output_tokens")]
    max_output_tokens: Option<u64>,
    #[serde(alias = "response_mime_type")]
    response_mime_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub max_output_tokens: Option<u64>,
    pub content_count: usize,
    pub prompt_tokens: u64,
    /// Call a tool, answer a tool result, or just chat (see [`super::tools`]).
    pub turn: Turn,
    /// `generationConfig.responseMimeType: "application/json"`.
    pub json_mode: bool,
}

pub fn parse_generate(body: &[u8]) -> Result<GenerateRequest, ApiError> {
    let raw: RawRequest = serde_json::from_slice(body).map_err(bad_json)?;
    let contents = raw
        .contents
        .ok_or_else(|| ApiError::invalid("contents is not specified", Some("contents")))?;
    let tokens = |c: &RawContent| content_tokens(&c.parts) + 3;
    let (max_output_tokens, mime) = raw
        .generation_config
        .map_or((None, None), |g| (g.max_output_tokens, g.response_mime_type));
    Ok(GenerateRequest {
        max_output_tokens,
        content_count: contents.len(),
        prompt_tokens: raw.system_instruction.as_ref().map_or(0, tokens)
            + contents.iter().map(tokens).sum::<u64>(),
        turn: generate_turn(&contents, &raw.tools, &raw.tool_config)?,
        json_mode: mime.as_deref() == Some("application/json"),
    })
}

/// A field under either of Gemini's spellings.
fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

/// A user turn last (Gemini's default role): answer its `functionResponse` parts if it has
/// any, else call a declared function. A `model` turn last is just continued.
fn generate_turn(contents: &[RawContent], tools: &Value, config: &Value) -> Result<Turn, ApiError> {
    let Some(last) = contents
        .last()
        .filter(|c| c.role.as_deref().is_none_or(|r| r == "user"))
    else {
        return Ok(Turn::Chat);
    };
    if let Value::Array(parts) = &last.parts {
        let response = parts
            .iter()
            .rev()
            .find_map(|p| field(p, "functionResponse", "function_response"));
        if let Some(r) = response {
            let response = r.get("response").unwrap_or(&Value::Null);
            let content = ["content", "output", "result"]
                .iter()
                .find_map(|k| response.get(*k))
                .unwrap_or(response);
            return Ok(Turn::ToolResult(tool_result_text(&result_content(content))));
        }
    }
    let Value::Array(tools) = tools else {
        return Ok(Turn::Chat);
    };
    let decls: Vec<ToolDecl> = tools
        .iter()
        .filter_map(|t| field(t, "functionDeclarations", "function_declarations")?.as_array())
        .flatten()
        .filter_map(|d| {
            let schema = field(d, "parametersJsonSchema", "parameters_json_schema")
                .or_else(|| d.get("parameters"));
            Some(ToolDecl {
                name: d.get("name")?.as_str()?,
                schema,
            })
        })
        .collect();
    let calling = field(config, "functionCallingConfig", "function_calling_config");
    let mode = calling
        .and_then(|c| c.get("mode"))
        .and_then(Value::as_str)
        .unwrap_or("AUTO");
    let allowed = calling.and_then(|c| field(c, "allowedFunctionNames", "allowed_function_names"));
    let choice = match (mode.to_ascii_uppercase().as_str(), allowed) {
        ("NONE", _) => Choice::None,
        (_, Some(Value::Array(names))) => Choice::Allowed(names),
        _ => Choice::First,
    };
    let param = "tool_config.function_calling_config.allowed_function_names";
    Ok(choose_call(&decls, choice, param)?.map_or(Turn::Chat, Turn::Call))
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
#[serde(untagged)]
enum Part<'a> {
    Text {
        text: &'a str,
    },
    FunctionCall {
        #[serde(rename = "functionCall")]
        function_call: FunctionCall<'a>,
    },
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    args: &'a super::tools::Args,
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
    response_with(id, model, Part::Text { text }, finish, usage)
}

fn response_with(
    id: &str,
    model: &str,
    part: Part,
    finish: Option<&str>,
    usage: Option<UsageMetadata>,
) -> Vec<u8> {
    to_vec(&Response {
        candidates: [Candidate {
            content: Content {
                parts: [part],
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

/// The call as a `functionCall` part, `finishReason: "STOP"` (Gemini has no tool-use reason).
fn function_call(id: &str, model: &str, call: &ToolCall, usage: Option<UsageMetadata>) -> Vec<u8> {
    let part = Part::FunctionCall {
        function_call: FunctionCall {
            name: &call.name,
            args: &call.args,
        },
    };
    response_with(id, model, part, Some("STOP"), usage)
}

/// `generateContent` answering with a call.
pub fn generate_call_json(
    id: &str,
    model: &str,
    call: &ToolCall,
    usage: Option<UsageMetadata>,
) -> Vec<u8> {
    function_call(id, model, call, usage)
}

/// `streamGenerateContent?alt=sse` answering with a call: one event holding the whole
/// `functionCall` part, the finish reason and the usage (Gemini never splits a call).
pub fn generate_call_stream(
    id: &str,
    model: &str,
    call: &ToolCall,
    usage: Option<UsageMetadata>,
) -> Vec<Event> {
    let json = function_call(id, model, call, usage);
    vec![event(EventKind::Finish, sse_crlf(&json))]
}

/// `streamGenerateContent` without `alt=sse` answering with a call: a one-element array.
pub fn generate_call_array(
    id: &str,
    model: &str,
    call: &ToolCall,
    usage: Option<UsageMetadata>,
) -> Vec<u8> {
    let mut out = b"[".to_vec();
    out.extend_from_slice(&function_call(id, model, call, usage));
    out.extend_from_slice(b"]");
    out
}

// ---------------------------------------------------------------------------------------------
// Embeddings

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEmbed {
    model: Option<String>,
    content: Option<RawContent>,
    #[serde(alias = "output_dimensionality")]
    output_dimensionality: Option<i64>,
}

#[derive(Deserialize)]
struct RawBatch {
    requests: Option<Vec<RawEmbed>>,
}

/// One text to embed: its seed and how many values to return.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmbedInput {
    pub seed: u64,
    pub dimensions: usize,
}

fn embed_input(raw: &RawEmbed, at: &str) -> Result<EmbedInput, ApiError> {
    let content = raw.content.as_ref().ok_or_else(|| {
        ApiError::invalid(format!("{at}content is not specified"), Some("content"))
    })?;
    let text: String = match &content.parts {
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    let dimensions = match raw.output_dimensionality {
        None => DEFAULT_DIMENSIONS,
        Some(d) if d >= 1 && d as usize <= MAX_DIMENSIONS => d as usize,
        Some(d) => {
            return Err(ApiError::invalid(
                format!("{at}outputDimensionality must be 1..={MAX_DIMENSIONS}, got {d}"),
                Some("outputDimensionality"),
            ))
        }
    };
    Ok(EmbedInput {
        seed: fnv1a(text.as_bytes()),
        dimensions,
    })
}

/// `:embedContent`'s body.
pub fn parse_embed(body: &[u8]) -> Result<EmbedInput, ApiError> {
    let raw: RawEmbed = serde_json::from_slice(body).map_err(bad_json)?;
    embed_input(&raw, "")
}

/// `:batchEmbedContents`'s body for the model `model` of the URL: every request's `model`, when
/// given, must name it (`models/{model}`), as Gemini requires.
pub fn parse_batch_embed(body: &[u8], model: &str) -> Result<Vec<EmbedInput>, ApiError> {
    let raw: RawBatch = serde_json::from_slice(body).map_err(bad_json)?;
    let requests = raw
        .requests
        .ok_or_else(|| ApiError::invalid("requests is not specified", Some("requests")))?;
    if requests.is_empty() || requests.len() > MAX_BATCH_EMBED {
        return Err(ApiError::invalid(
            format!(
                "requests must hold 1..={MAX_BATCH_EMBED} requests, got {}",
                requests.len()
            ),
            Some("requests"),
        ));
    }
    requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if let Some(m) = r.model.as_deref() {
                if m.strip_prefix("models/").unwrap_or(m) != model {
                    return Err(ApiError::invalid(
                        format!(
                            "requests[{i}].model: Model \"{m}\" does not match the model in \
                             the URL (\"models/{model}\")."
                        ),
                        Some("requests"),
                    ));
                }
            }
            embed_input(r, &format!("requests[{i}]."))
        })
        .collect()
}

#[derive(Serialize)]
struct Embedding {
    values: Vec<f32>,
}

fn embedding(input: &EmbedInput) -> Embedding {
    Embedding {
        values: embedding_vector(input.seed, input.dimensions),
    }
}

/// `{"embedding": {"values": [...]}}`.
pub fn embed_json(input: &EmbedInput) -> Vec<u8> {
    to_vec(&serde_json::json!({ "embedding": embedding(input) }))
}

/// `{"embeddings": [{"values": [...]}, ...]}`.
pub fn batch_embed_json(inputs: &[EmbedInput]) -> Vec<u8> {
    let list: Vec<Embedding> = inputs.iter().map(embedding).collect();
    to_vec(&serde_json::json!({ "embeddings": list }))
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

    fn turn(body: Value) -> Result<(Turn, bool), ApiError> {
        parse_generate(body.to_string().as_bytes()).map(|r| (r.turn, r.json_mode))
    }

    #[test]
    fn function_call_detection() {
        use serde_json::json;
        let tools = json!([
            {"googleSearch": {}},
            {"functionDeclarations": [
                {"name": "get_weather", "parametersJsonSchema": {"type": "object",
                    "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"]}},
                    "required": ["city", "unit"]}},
                {"name": "get_time"}
            ]},
            {"function_declarations": [{"name": "count", "parameters": {"type": "OBJECT",
                "properties": {"n": {"type": "INTEGER"}}, "required": ["n"]}}]}
        ]);
        let user = json!([{"role": "user", "parts": [{"text": "weather?"}]}]);
        let body = |extra: Value, contents: &Value| {
            let mut b = json!({"contents": contents, "tools": tools});
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        let Turn::Call(call) = turn(body(json!({}), &user)).unwrap().0 else {
            panic!()
        };
        assert_eq!(call.name, "get_weather");
        assert_eq!(call.arguments(), r#"{"city":"mock","unit":"mock"}"#);
        let any = json!({"toolConfig": {"functionCallingConfig": {"mode": "ANY",
            "allowedFunctionNames": ["count"]}}});
        let Turn::Call(call) = turn(body(any, &user)).unwrap().0 else {
            panic!()
        };
        assert_eq!((call.name.as_str(), call.arguments().as_str()), ("count", r#"{"n":1}"#));
        let snake = json!({"tool_config": {"function_calling_config": {"mode": "ANY",
            "allowed_function_names": ["get_time"]}}});
        let Turn::Call(call) = turn(body(snake, &user)).unwrap().0 else {
            panic!()
        };
        assert_eq!((call.name.as_str(), call.arguments().as_str()), ("get_time", "{}"));
        let none = json!({"toolConfig": {"functionCallingConfig": {"mode": "NONE"}}});
        assert_eq!(turn(body(none, &user)).unwrap().0, Turn::Chat);
        let no_role = json!([{"parts": [{"text": "hi"}]}]);
        assert!(matches!(turn(body(json!({}), &no_role)).unwrap().0, Turn::Call(_)));
        let model_last = json!([{"role": "user", "parts": [{"text": "hi"}]},
                                {"role": "model", "parts": [{"text": "yo"}]}]);
        assert_eq!(turn(body(json!({}), &model_last)).unwrap().0, Turn::Chat);

        let answered = json!([
            {"role": "user", "parts": [{"text": "weather?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}}}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"content": {"temp": 9}}}}
            ]}
        ]);
        let t = turn(body(json!({}), &answered)).unwrap().0;
        assert_eq!(t, Turn::ToolResult(r#"The tool returned: {"temp":9}"#.into()));
        let mut s = answered.clone();
        s[2]["parts"][0] = json!({"function_response": {"name": "f", "response": {"output": "14:05"}}});
        assert_eq!(
            turn(body(json!({}), &s)).unwrap().0,
            Turn::ToolResult("The tool returned: 14:05".into())
        );

        let json_mode = json!({"generationConfig": {"responseMimeType": "application/json"}});
        assert!(turn(body(json_mode, &user)).unwrap().1);
        let snake = json!({"generation_config": {"response_mime_type": "application/json"}});
        assert!(turn(json!({"contents": user, "generation_config": snake["generation_config"]})).unwrap().1);
        assert!(!turn(json!({"contents": user})).unwrap().1);
    }

    #[test]
    fn function_call_shapes() {
        let schema = serde_json::json!({"required": ["city"], "properties": {"city": {"type": "string"}}});
        let call = ToolCall {
            name: "get_weather".into(),
            args: crate::mock::tools::synthesize_args(Some(&schema)),
        };
        let usage = Some(UsageMetadata::new(10, call.completion_tokens()));
        let v: Value =
            serde_json::from_slice(&generate_call_json("r1", "gem", &call, usage)).unwrap();
        let c = &v["candidates"][0];
        assert_eq!(
            c["content"],
            serde_json::json!({"parts": [{"functionCall": {"name": "get_weather", "args": {"city": "mock"}}}],
                               "role": "model"})
        );
        assert_eq!(c["finishReason"], "STOP");
        assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 4);

        let events = generate_call_stream("r1", "gem", &call, usage);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventKind::Finish);
        assert!(events[0].bytes.starts_with(b"data: {") && events[0].bytes.ends_with(b"}\r\n\r\n"));
        let one: Value = serde_json::from_slice(&events[0].bytes[6..]).unwrap();
        assert_eq!(one, v);
        let array: Value =
            serde_json::from_slice(&generate_call_array("r1", "gem", &call, None)).unwrap();
        assert_eq!(array.as_array().unwrap().len(), 1);
        assert!(array[0].get("usageMetadata").is_none());
    }

    #[test]
    fn embeddings() {
        let one = parse_embed(br#"{"content":{"parts":[{"text":"hello"}]}}"#).unwrap();
        let v: Value = serde_json::from_slice(&embed_json(&one)).unwrap();
        let values = v["embedding"]["values"].as_array().unwrap();
        assert_eq!(values.len(), DEFAULT_DIMENSIONS);
        assert!(v.get("usageMetadata").is_none());
        let again = parse_embed(br#"{"model":"models/e","content":{"parts":[{"text":"hello"}]},"outputDimensionality":8}"#)
            .unwrap();
        assert_eq!(one, again);
        let d3 = parse_embed(br#"{"content":{"parts":[{"text":"x"}]},"output_dimensionality":3}"#).unwrap();
        assert_eq!(d3.dimensions, 3);

        let batch = br#"{"requests":[
            {"model":"models/e","content":{"parts":[{"text":"a"}]}},
            {"model":"e","content":{"parts":[{"text":"b"}]}},
            {"content":{"parts":[{"text":"a"}]}}]}"#;
        let inputs = parse_batch_embed(batch, "e").unwrap();
        let v: Value = serde_json::from_slice(&batch_embed_json(&inputs)).unwrap();
        let list = v["embeddings"].as_array().unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[0], list[2]);
        assert_ne!(list[0], list[1]);
        assert_eq!(list[1]["values"].as_array().unwrap().len(), DEFAULT_DIMENSIONS);

        assert_eq!(parse_batch_embed(batch, "other").unwrap_err().status, 400);
        assert!(parse_batch_embed(br#"{"requests":[]}"#, "e").is_err());
        assert!(parse_batch_embed(br#"{}"#, "e").is_err());
        let many = format!(
            r#"{{"requests":[{}]}}"#,
            vec![r#"{"content":{"parts":[{"text":"a"}]}}"#; MAX_BATCH_EMBED + 1].join(",")
        );
        assert!(parse_batch_embed(many.as_bytes(), "e").is_err());
        assert!(parse_embed(br#"{}"#).is_err());
        assert!(parse_embed(br#"{"content":{"parts":[]},"outputDimensionality":0}"#).is_err());
    }

}
