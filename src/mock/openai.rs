//! The OpenAI wire format as pure functions: parse a request, decide the deterministic reply and
//! render it to JSON or SSE bytes. No I/O here, so all of it is unit tested.
//!
//! Token accounting (what the gateway's metering and billing are checked against):
//! - chat `prompt_tokens` = Σ over messages of `ceil(text_bytes / 4) + 3`, where `text_bytes` is
//!   the UTF-8 length of a string `content`, or the sum of the `text` fields of its content parts,
//!   plus 85 per `image_url` part (tool calls, tool declarations and names count nothing);
//! - completions / embeddings `prompt_tokens` = Σ over inputs of `ceil(bytes / 4)` for strings,
//!   or the array length for pre-tokenized inputs;
//! - `completion_tokens` = number of words in the reply, which is exactly the number of content
//!   chunks when streamed, times `n` when several choices are asked for. The smaller of
//!   `max_tokens` / `max_completion_tokens` cuts the reply to that many words and turns
//!   `finish_reason` into `"length"`.
//!
//! Tools (see [`super::tools`]): with function `tools` declared and a `user` message last, the
//! answer is one call (`id: "call_mock_<n>"`, `finish_reason: "tool_calls"`, `content: null`);
//! a `tool` message last is answered in text. `response_format` `json_object`/`json_schema`
//! turns on JSON mode.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::tools::{choose_call, content_tokens, result_content, tool_result_text};
use super::tools::{Choice, ToolCall, ToolDecl, Turn};

pub const SYSTEM_FINGERPRINT: &str = "fp_mock";
/// Longest reply the mock will generate, whatever `x-mock-words` says.
pub const MAX_WORDS: u32 = 100_000;
/// Largest `n` (choices per chat request), as in OpenAI.
pub const MAX_CHOICES: u32 = 128;
/// Default and largest embedding sizes.
pub const DEFAULT_DIMENSIONS: usize = 8;
pub const MAX_DIMENSIONS: usize = 4096;
/// What `GET /v1/models` lists.
pub const MODELS: &[&str] = &[
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "mock-model",
];

/// `ceil(bytes / 4)`: the mock's whole tokenizer.
pub fn tokens_for_bytes(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An OpenAI-shaped error: `{"error":{"message","type","param","code"}}` plus its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error`, what OpenAI answers to any malformed request.
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            code: None,
            param,
        }
    }

    /// The error OpenAI would send for `status`, with the `type`/`code` it uses for it.
    pub fn for_status(status: u16, message: impl Into<String>) -> Self {
        let (kind, code) = match status {
            401 => ("invalid_request_error", Some("invalid_api_key")),
            403 => (
                "invalid_request_error",
                Some("unsupported_country_region_territory"),
            ),
            404 => ("invalid_request_error", Some("unknown_url")),
            429 => ("requests", Some("rate_limit_exceeded")),
            400..=499 => ("invalid_request_error", None),
            503 => ("server_error", Some("service_unavailable")),
            _ => ("server_error", None),
        };
        ApiError {
            status,
            message: message.into(),
            kind,
            code,
            param: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: Option<&'a str>,
        }
        to_vec(&Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param,
                code: self.code,
            },
        })
    }

    /// The same error as one SSE event, the way OpenAI reports failures mid-stream.
    pub fn to_sse(&self) -> Bytes {
        sse(&self.to_json())
    }
}

pub(super) fn bad_json(e: serde_json::Error) -> ApiError {
    ApiError::invalid(
        format!("We could not parse the JSON body of your request: {e}"),
        None,
    )
}

// ---------------------------------------------------------------------------------------------
// Requests

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct RawChat {
    model: Option<String>,
    messages: Option<Vec<RawMessage>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    n: Option<u32>,
    #[serde(default)]
    tools: Value,
    #[serde(default)]
    tool_choice: Value,
    #[serde(default)]
    response_format: Value,
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    content: Value,
}

/// What the mock needs from a `POST /v1/chat/completions` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<u64>,
    pub message_count: usize,
    pub prompt_tokens: u64,
    /// Number of choices (`n`, 1..=[`MAX_CHOICES`]); each is the same reply.
    pub n: u32,
    /// Call a tool, answer a tool result, or just chat (see [`super::tools`]).
    pub turn: Turn,
    /// `response_format` `json_object` / `json_schema`.
    pub json_mode: bool,
}

pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let raw: RawChat = serde_json::from_slice(body).map_err(bad_json)?;
    let model = raw
        .model
        .ok_or_else(|| ApiError::invalid("you must provide a model parameter", Some("model")))?;
    let messages = raw.messages.ok_or_else(|| {
        ApiError::invalid("Missing required parameter: 'messages'.", Some("messages"))
    })?;
    let n = raw.n.unwrap_or(1);
    if !(1..=MAX_CHOICES).contains(&n) {
        return Err(ApiError::invalid(
            format!("n must be 1..={MAX_CHOICES}"),
            Some("n"),
        ));
    }
    let turn = chat_turn(&messages, &raw.tools, &raw.tool_choice)?;
    let json_mode = matches!(
        raw.response_format.get("type").and_then(Value::as_str),
        Some("json_object" | "json_schema")
    );
    Ok(ChatRequest {
        model,
        stream: raw.stream.unwrap_or(false),
        include_usage: raw
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        max_tokens: min_opt(raw.max_tokens, raw.max_completion_tokens),
        n,
        message_count: messages.len(),
        prompt_tokens: messages
            .iter()
            .map(|m| content_tokens(&m.content) + 3)
            .sum(),
        turn,
        json_mode,
    })
}

/// A `tool` (or legacy `function`) message last: answer it; a `user` message last with function
/// tools declared: call one; anything else: chat.
fn chat_turn(messages: &[RawMessage], tools: &Value, choice: &Value) -> Result<Turn, ApiError> {
    let Some(last) = messages.last() else {
        return Ok(Turn::Chat);
    };
    match last.role.as_deref() {
        Some("tool" | "function") => Ok(Turn::ToolResult(tool_result_text(&result_content(
            &last.content,
        )))),
        Some("user") => {
            let Value::Array(tools) = tools else {
                return Ok(Turn::Chat);
            };
            let decls: Vec<ToolDecl> = tools
                .iter()
                .filter(|t| t.get("type").and_then(Value::as_str).unwrap_or("function") == "function")
                .filter_map(|t| {
                    let f = t.get("function")?;
                    Some(ToolDecl {
                        name: f.get("name")?.as_str()?,
                        schema: f.get("parameters"),
                    })
                })
                .collect();
            let choice = match choice {
                Value::String(s) if s == "none" => Choice::None,
                Value::Object(o) => match o.get("type").and_then(Value::as_str) {
                    Some("function") => match choice.pointer("/function/name").and_then(Value::as_str) {
                        Some(name) => Choice::Named(name),
                        None => Choice::First,
                    },
                    Some("allowed_tools") => match choice.pointer("/allowed_tools/tools") {
                        Some(Value::Array(list)) => Choice::Allowed(list),
                        _ => Choice::First,
                    },
                    _ => Choice::First,
                },
                _ => Choice::First,
            };
            Ok(choose_call(&decls, choice, "tool_choice")?.map_or(Turn::Chat, Turn::Call))
        }
        _ => Ok(Turn::Chat),
    }
}

/// UTF-8 bytes of a message's text: a string, or the `text` of each content part.
pub(super) fn text_bytes(content: &Value) -> usize {
    match content {
        Value::String(s) => s.len(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(str::len)
            .sum(),
        _ => 0,
    }
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Deserialize)]
struct RawCompletion {
    model: Option<String>,
    #[serde(default)]
    prompt: Value,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
}

/// What the mock needs from a legacy `POST /v1/completions` body.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<u64>,
    pub prompt_count: usize,
    pub prompt_tokens: u64,
}

pub fn parse_completion(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let raw: RawCompletion = serde_json::from_slice(body).map_err(bad_json)?;
    let model = raw
        .model
        .ok_or_else(|| ApiError::invalid("you must provide a model parameter", Some("model")))?;
    let inputs = parse_inputs(&raw.prompt, "prompt")?;
    Ok(CompletionRequest {
        model,
        stream: raw.stream.unwrap_or(false),
        include_usage: raw
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        max_tokens: raw.max_tokens,
        // A missing prompt is one empty prompt, as in OpenAI.
        prompt_count: inputs.len().max(1),
        prompt_tokens: inputs.iter().map(|i| i.tokens).sum(),
    })
}

/// One prompt / embedding input: a seed derived from its content, and its token count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Input {
    pub seed: u64,
    pub tokens: u64,
}

/// Accept the four shapes OpenAI accepts: a string, an array of strings, an array of token ids,
/// or an array of token-id arrays. `null`/absent is no input at all.
fn parse_inputs(v: &Value, param: &'static str) -> Result<Vec<Input>, ApiError> {
    let bad = || {
        ApiError::invalid(
            format!("'{param}' must be a string or an array"),
            Some(param),
        )
    };
    let text = |s: &str| Input {
        seed: fnv1a(s.as_bytes()),
        tokens: tokens_for_bytes(s.len()),
    };
    let ids = |a: &[Value]| -> Result<Input, ApiError> {
        let mut bytes = Vec::with_capacity(a.len() * 8);
        for t in a {
            bytes.extend_from_slice(&t.as_u64().ok_or_else(bad)?.to_le_bytes());
        }
        Ok(Input {
            seed: fnv1a(&bytes),
            tokens: a.len() as u64,
        })
    };
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) if items.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![text(s)]),
        Value::Array(items) if items.iter().all(Value::is_number) => Ok(vec![ids(items)?]),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(text(s)),
                Value::Array(a) => ids(a),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

#[derive(Deserialize)]
struct RawEmbedding {
    model: Option<String>,
    #[serde(default)]
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

/// What the mock needs from a `POST /v1/embeddings` body.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingRequest {
    pub model: String,
    pub inputs: Vec<Input>,
    pub dimensions: usize,
    /// `encoding_format: "base64"` (the official Python SDK asks for it by default).
    pub base64: bool,
}

pub fn parse_embedding(body: &[u8]) -> Result<EmbeddingRequest, ApiError> {
    let raw: RawEmbedding = serde_json::from_slice(body).map_err(bad_json)?;
    let model = raw
        .model
        .ok_or_else(|| ApiError::invalid("you must provide a model parameter", Some("model")))?;
    let inputs = parse_inputs(&raw.input, "input")?;
    if inputs.is_empty() {
        return Err(ApiError::invalid(
            "'input' must not be empty",
            Some("input"),
        ));
    }
    let dimensions = raw.dimensions.unwrap_or(DEFAULT_DIMENSIONS);
    if !(1..=MAX_DIMENSIONS).contains(&dimensions) {
        return Err(ApiError::invalid(
            format!("'dimensions' must be 1..={MAX_DIMENSIONS}"),
            Some("dimensions"),
        ));
    }
    let base64 = match raw.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("unsupported encoding_format {other:?}"),
                Some("encoding_format"),
            ))
        }
    };
    Ok(EmbeddingRequest {
        model,
        inputs,
        dimensions,
        base64,
    })
}

// ---------------------------------------------------------------------------------------------
// The deterministic reply

/// The reply as the chunks it is streamed in; the non-streamed content is their concatenation.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// One word per chunk, each but the first with its leading space.
    pub chunks: Vec<Cow<'static, str>>,
    pub finish_reason: &'static str,
}

impl Reply {
    pub fn text(&self) -> String {
        self.chunks.concat()
    }

    pub fn completion_tokens(&self) -> u64 {
        self.chunks.len() as u64
    }
}

const FILLER: &[&str] = &[
    " lorem",
    " ipsum",
    " dolor",
    " sit",
    " amet,",
    " consectetur",
    " adipiscing",
    " elit.",
];

/// "Hello from the mock provider. You sent N messages." (9 words), or exactly `words` words: that
/// sentence cut short or continued with lorem-ipsum filler. `max_tokens` then caps the length.
pub fn build_reply(message_count: usize, words: Option<u32>, max_tokens: Option<u64>) -> Reply {
    let plural = if message_count == 1 {
        " message."
    } else {
        " messages."
    };
    let base: [Cow<'static, str>; 9] = [
        "Hello".into(),
        " from".into(),
        " the".into(),
        " mock".into(),
        " provider.".into(),
        " You".into(),
        " sent".into(),
        format!(" {message_count}").into(),
        plural.into(),
    ];
    let wanted = words.map_or(base.len(), |w| w.min(MAX_WORDS) as usize);
    let (len, finish_reason) = match max_tokens {
        Some(max) if (max as usize) < wanted => (max as usize, "length"),
        _ => (wanted, "stop"),
    };
    let filler = FILLER.iter().cycle().map(|w| Cow::Borrowed(*w));
    Reply {
        chunks: base.into_iter().chain(filler).take(len).collect(),
        finish_reason,
    }
}

/// FNV-1a: a stable seed for the embedding of an input.
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A unit-length vector that depends only on `seed` (splitmix64 draws in -1..1, normalized).
pub fn embedding_vector(seed: u64, dimensions: usize) -> Vec<f32> {
    let mut state = seed;
    let mut v: Vec<f32> = (0..dimensions)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Responses

#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub prompt_tokens_details: PromptTokensDetails,
    pub completion_tokens_details: CompletionTokensDetails,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Default)]
pub struct PromptTokensDetails {
    pub cached_tokens: u64,
    pub audio_tokens: u64,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Default)]
pub struct CompletionTokensDetails {
    pub reasoning_tokens: u64,
    pub audio_tokens: u64,
    pub accepted_prediction_tokens: u64,
    pub rejected_prediction_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: Default::default(),
            completion_tokens_details: Default::default(),
        }
    }
}

/// The fields every response of one request shares.
#[derive(Debug, Clone, Copy)]
pub struct Meta<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
}

/// `n` identical choices; `usage: None` omits the field (the `x-mock-no-usage` fault).
pub fn chat_completion(meta: Meta, reply: &Reply, n: u32, usage: Option<Usage>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        model: &'a str,
        choices: Vec<Choice<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        system_fingerprint: &'static str,
    }
    #[derive(Serialize)]
    struct Choice<'a> {
        index: u32,
        message: Message<'a>,
        logprobs: Option<()>,
        finish_reason: &'a str,
    }
    #[derive(Serialize)]
    struct Message<'a> {
        role: &'static str,
        content: &'a str,
        refusal: Option<()>,
        annotations: [(); 0],
    }
    let text = reply.text();
    to_vec(&Body {
        id: meta.id,
        object: "chat.completion",
        created: meta.created,
        model: meta.model,
        choices: (0..n)
            .map(|index| Choice {
                index,
                message: Message {
                    role: "assistant",
                    content: &text,
                    refusal: None,
                    annotations: [],
                },
                logprobs: None,
                finish_reason: reply.finish_reason,
            })
            .collect(),
        usage,
        system_fingerprint: SYSTEM_FINGERPRINT,
    })
}

pub fn text_completion(meta: Meta, reply: &Reply, usage: Option<Usage>) -> Vec<u8> {
    let text = reply.text();
    let choice = CompletionChoice {
        text: &text,
        index: 0,
        logprobs: None,
        finish_reason: Some(reply.finish_reason),
    };
    to_vec(&CompletionBody {
        id: meta.id,
        object: "text_completion",
        created: meta.created,
        model: meta.model,
        choices: std::slice::from_ref(&choice),
        usage: usage.map(Some),
        system_fingerprint: SYSTEM_FINGERPRINT,
    })
}

#[derive(Serialize)]
struct CompletionBody<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [CompletionChoice<'a>],
    /// Absent, `null` or the usage: see [`ChatChunk::usage`].
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
    system_fingerprint: &'static str,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

pub fn embeddings(model: &str, req: &EmbeddingRequest) -> Vec<u8> {
    use base64::Engine as _;
    #[derive(Serialize)]
    struct Body<'a> {
        object: &'static str,
        data: Vec<Item>,
        model: &'a str,
        usage: EmbeddingUsage,
    }
    #[derive(Serialize)]
    struct Item {
        object: &'static str,
        index: usize,
        embedding: Vector,
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Vector {
        Float(Vec<f32>),
        Base64(String),
    }
    #[derive(Serialize)]
    struct EmbeddingUsage {
        prompt_tokens: u64,
        total_tokens: u64,
    }
    let data = req
        .inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let v = embedding_vector(input.seed, req.dimensions);
            let embedding = if req.base64 {
                let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(raw))
            } else {
                Vector::Float(v)
            };
            Item {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let tokens = req.inputs.iter().map(|i| i.tokens).sum();
    to_vec(&Body {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    })
}

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

fn model(id: &str) -> Model<'_> {
    Model {
        id,
        object: "model",
        created: 1_700_000_000,
        owned_by: "tollgate-mock",
    }
}

pub fn models_list() -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        object: &'static str,
        data: Vec<Model<'a>>,
    }
    to_vec(&Body {
        object: "list",
        data: MODELS.iter().map(|m| model(m)).collect(),
    })
}

/// `GET /v1/models/{id}`: the mock knows every model it is asked about.
pub fn model_object(id: &str) -> Vec<u8> {
    to_vec(&model(id))
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// What an SSE event is, so the server can apply stream faults at the right places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The first chunk (`delta.role` for chat).
    Head,
    /// One word of the reply.
    Content,
    /// The chunk carrying `finish_reason`.
    Finish,
    /// `choices: []` with the usage.
    Usage,
    /// `data: [DONE]`.
    Done,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub bytes: Bytes,
}

#[derive(Serialize)]
struct ChatChunk<'a, D> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: &'a [ChunkChoice<'a, D>],
    /// `None` omits the field (usage not requested), `Some(None)` is OpenAI's `"usage": null`
    /// on every chunk but the last when `include_usage` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a, D> {
    index: u32,
    delta: D,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

/// One `chat.completion.chunk` event with one choice.
fn chat_chunk<D: Serialize>(
    meta: &Meta,
    usage: Option<Option<Usage>>,
    index: u32,
    delta: D,
    finish_reason: Option<&str>,
) -> Bytes {
    let choice = ChunkChoice {
        index,
        delta,
        logprobs: None,
        finish_reason,
    };
    sse(&to_vec(&ChatChunk {
        id: meta.id,
        object: "chat.completion.chunk",
        created: meta.created,
        model: meta.model,
        system_fingerprint: SYSTEM_FINGERPRINT,
        choices: std::slice::from_ref(&choice),
        usage,
    }))
}

/// The last events of a chat stream: the usage chunk (`choices: []`) if asked for, `[DONE]`.
fn push_usage_and_done(events: &mut Vec<Event>, meta: &Meta, usage: Option<Usage>) {
    if let Some(usage) = usage {
        let last = sse(&to_vec(&ChatChunk::<Delta> {
            id: meta.id,
            object: "chat.completion.chunk",
            created: meta.created,
            model: meta.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: &[],
            usage: Some(Some(usage)),
        }));
        events.push(event(EventKind::Usage, last));
    }
    events.push(event(
        EventKind::Done,
        Bytes::from_static(b"data: [DONE]\n\n"),
    ));
}

/// Every event of a streamed chat completion, in order. `usage: Some` means the client asked
/// for `stream_options.include_usage` (and no fault suppresses it). With `n > 1` each step is
/// sent once per choice index, interleaved as OpenAI does.
pub fn chat_stream(meta: Meta, reply: &Reply, n: u32, usage: Option<Usage>) -> Vec<Event> {
    let null_usage = usage.map(|_| None);
    let chunk = |index: u32, delta: Delta, finish_reason: Option<&str>| {
        chat_chunk(&meta, null_usage, index, delta, finish_reason)
    };
    let delta = |role, content| Delta { role, content };
    let mut events = Vec::with_capacity((reply.chunks.len() + 2) * n as usize + 2);
    for i in 0..n {
        let head = chunk(i, delta(Some("assistant"), Some("")), None);
        events.push(event(EventKind::Head, head));
    }
    for word in &reply.chunks {
        for i in 0..n {
            events.push(event(
                EventKind::Content,
                chunk(i, delta(None, Some(word)), None),
            ));
        }
    }
    for i in 0..n {
        let finish = chunk(i, delta(None, None), Some(reply.finish_reason));
        events.push(event(EventKind::Finish, finish));
    }
    push_usage_and_done(&mut events, &meta, usage);
    events
}

// ---------------------------------------------------------------------------------------------
// Tool calls

/// The id of choice `index`'s call: `call_mock_<n>`, then `call_mock_<n>_<index>` for the other
/// choices so every id in a response is unique.
pub fn tool_call_id(base: &str, index: u32) -> String {
    if index == 0 {
        base.to_string()
    } else {
        format!("{base}_{index}")
    }
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    name: &'a str,
    arguments: &'a str,
}

/// A chat completion whose `n` choices each make the call (`content: null`,
/// `finish_reason: "tool_calls"`); `call_id` is the first choice's call id.
pub fn chat_tool_completion(
    meta: Meta,
    call: &ToolCall,
    call_id: &str,
    n: u32,
    usage: Option<Usage>,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        model: &'a str,
        choices: Vec<Choice<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        system_fingerprint: &'static str,
    }
    #[derive(Serialize)]
    struct Choice<'a> {
        index: u32,
        message: Message<'a>,
        logprobs: Option<()>,
        finish_reason: &'static str,
    }
    #[derive(Serialize)]
    struct Message<'a> {
        role: &'static str,
        content: Option<()>,
        tool_calls: [ToolCallOut<'a>; 1],
        refusal: Option<()>,
        annotations: [(); 0],
    }
    let arguments = call.arguments();
    let ids: Vec<String> = (0..n).map(|i| tool_call_id(call_id, i)).collect();
    to_vec(&Body {
        id: meta.id,
        object: "chat.completion",
        created: meta.created,
        model: meta.model,
        choices: ids
            .iter()
            .enumerate()
            .map(|(index, id)| Choice {
                index: index as u32,
                message: Message {
                    role: "assistant",
                    content: None,
                    tool_calls: [ToolCallOut {
                        id,
                        kind: "function",
                        function: FunctionOut {
                            name: &call.name,
                            arguments: &arguments,
                        },
                    }],
                    refusal: None,
                    annotations: [],
                },
                logprobs: None,
                finish_reason: "tool_calls",
            })
            .collect(),
        usage,
        system_fingerprint: SYSTEM_FINGERPRINT,
    })
}

/// A streamed call, as OpenAI sends one: per choice a head chunk with the role, `content: null`
/// and the call's `index`/`id`/`type`/`name` with empty `arguments`; then the arguments in
/// pieces ([`super::tools::argument_pieces`], at least 2) under the same `index`; then an empty
/// delta with `finish_reason: "tool_calls"`, the optional usage chunk and `[DONE]`.
pub fn chat_tool_stream(
    meta: Meta,
    call: &ToolCall,
    call_id: &str,
    n: u32,
    usage: Option<Usage>,
) -> Vec<Event> {
    #[derive(Serialize)]
    struct HeadDelta<'a> {
        role: &'static str,
        content: Option<()>,
        tool_calls: [HeadCall<'a>; 1],
        refusal: Option<()>,
    }
    #[derive(Serialize)]
    struct HeadCall<'a> {
        index: u32,
        id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        function: FunctionOut<'a>,
    }
    #[derive(Serialize)]
    struct ArgsDelta<'a> {
        tool_calls: [ArgsCall<'a>; 1],
    }
    #[derive(Serialize)]
    struct ArgsCall<'a> {
        index: u32,
        function: ArgsOnly<'a>,
    }
    #[derive(Serialize)]
    struct ArgsOnly<'a> {
        arguments: &'a str,
    }
    #[derive(Serialize)]
    struct Empty {}

    let null_usage = usage.map(|_| None);
    let arguments = call.arguments();
    let pieces = super::tools::argument_pieces(&arguments);
    let mut events = Vec::with_capacity((pieces.len() + 2) * n as usize + 2);
    for i in 0..n {
        let id = tool_call_id(call_id, i);
        let delta = HeadDelta {
            role: "assistant",
            content: None,
            tool_calls: [HeadCall {
                index: 0,
                id: &id,
                kind: "function",
                function: FunctionOut {
                    name: &call.name,
                    arguments: "",
                },
            }],
            refusal: None,
        };
        events.push(event(
            EventKind::Head,
            chat_chunk(&meta, null_usage, i, delta, None),
        ));
    }
    for piece in &pieces {
        for i in 0..n {
            let delta = ArgsDelta {
                tool_calls: [ArgsCall {
                    index: 0,
                    function: ArgsOnly { arguments: piece },
                }],
            };
            events.push(event(
                EventKind::Content,
                chat_chunk(&meta, null_usage, i, delta, None),
            ));
        }
    }
    for i in 0..n {
        let finish = chat_chunk(&meta, null_usage, i, Empty {}, Some("tool_calls"));
        events.push(event(EventKind::Finish, finish));
    }
    push_usage_and_done(&mut events, &meta, usage);
    events
}

/// Every event of a streamed legacy completion: one chunk per word, then one with
/// `finish_reason`, the optional usage chunk and `[DONE]`.
pub fn completion_stream(meta: Meta, reply: &Reply, usage: Option<Usage>) -> Vec<Event> {
    let null_usage = usage.map(|_| None);
    let body = |choices: &[CompletionChoice], usage: Option<Option<Usage>>| {
        sse(&to_vec(&CompletionBody {
            id: meta.id,
            object: "text_completion",
            created: meta.created,
            model: meta.model,
            choices,
            usage,
            system_fingerprint: SYSTEM_FINGERPRINT,
        }))
    };
    let choice = |text, finish_reason| CompletionChoice {
        text,
        index: 0,
        logprobs: None,
        finish_reason,
    };
    let mut events = Vec::with_capacity(reply.chunks.len() + 3);
    for word in &reply.chunks {
        let bytes = body(&[choice(word, None)], null_usage);
        events.push(event(EventKind::Content, bytes));
    }
    let finish = body(&[choice("", Some(reply.finish_reason))], null_usage);
    events.push(event(EventKind::Finish, finish));
    if let Some(usage) = usage {
        events.push(event(EventKind::Usage, body(&[], Some(Some(usage)))));
    }
    events.push(event(
        EventKind::Done,
        Bytes::from_static(b"data: [DONE]\n\n"),
    ));
    events
}

pub(super) fn event(kind: EventKind, bytes: Bytes) -> Event {
    Event { kind, bytes }
}

pub(super) fn sse(json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    out.into()
}

/// Serializing these plain structs cannot fail (no maps with non-string keys, no I/O).
pub(super) fn to_vec<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_sse(events: &[Event]) -> Vec<Value> {
        events
            .iter()
            .filter(|e| e.kind != EventKind::Done)
            .map(|e| {
                let s = std::str::from_utf8(&e.bytes).unwrap();
                let body = s
                    .strip_prefix("data: ")
                    .unwrap()
                    .strip_suffix("\n\n")
                    .unwrap();
                serde_json::from_str(body).unwrap()
            })
            .collect()
    }

    const META: Meta = Meta {
        id: "chatcmpl-mock-1",
        created: 1_700_000_000,
        model: "gpt-x",
    };

    #[test]
    fn token_counting() {
        assert_eq!(tokens_for_bytes(0), 0);
        assert_eq!(tokens_for_bytes(1), 1);
        assert_eq!(tokens_for_bytes(4), 1);
        assert_eq!(tokens_for_bytes(5), 2);
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "12345678"},          // 2 + 3
                {"role": "user", "content": [
                    {"type": "text", "text": "abc"},                 // 3 bytes
                    {"type": "image_url", "image_url": {"url": "x"}},
                    {"type": "text", "text": "de"}                   // +2 = 5 bytes -> 2 + 3
                ]},                                                  // + 85 for the image
                {"role": "assistant", "content": null, "tool_calls": []} // 0 + 3
            ]
        });
        let req = parse_chat(body.to_string().as_bytes()).unwrap();
        assert_eq!(req.message_count, 3);
        assert_eq!(req.prompt_tokens, 5 + (5 + 85) + 3);
        assert!(!req.stream && !req.include_usage);
    }

    #[test]
    fn chat_request_fields() {
        let body = json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": 10,
            "max_completion_tokens": 4,
            "temperature": 0.2
        });
        let req = parse_chat(body.to_string().as_bytes()).unwrap();
        assert_eq!(req.model, "gpt-4o-mini");
        assert!(req.stream && req.include_usage);
        assert_eq!(req.max_tokens, Some(4));
    }

    #[test]
    fn bad_chat_requests_are_400() {
        for body in [
            &b"not json"[..],
            b"",
            b"[]",
            br#"{"messages":[]}"#,
            br#"{"model":"m"}"#,
            br#"{"model":"m","messages":"hi"}"#,
            br#"{"model":"m","messages":[],"stream":"yes"}"#,
            br#"{"model":"m","messages":[],"max_tokens":-1}"#,
        ] {
            let err = parse_chat(body).unwrap_err();
            assert_eq!(err.status, 400, "{}", String::from_utf8_lossy(body));
            let v: Value = serde_json::from_slice(&err.to_json()).unwrap();
            assert_eq!(v["error"]["type"], "invalid_request_error");
            assert!(v["error"]["message"].is_string());
            assert!(v["error"].get("code").is_some() && v["error"].get("param").is_some());
        }
    }

    #[test]
    fn reply_is_deterministic() {
        let r = build_reply(2, None, None);
        assert_eq!(
            r.text(),
            "Hello from the mock provider. You sent 2 messages."
        );
        assert_eq!(r.completion_tokens(), 9);
        assert_eq!(r.finish_reason, "stop");
        assert_eq!(
            build_reply(1, None, None).text(),
            "Hello from the mock provider. You sent 1 message."
        );
        assert_eq!(build_reply(1, Some(3), None).text(), "Hello from the");
        let long = build_reply(1, Some(12), None);
        assert_eq!(
            long.text(),
            "Hello from the mock provider. You sent 1 message. lorem ipsum dolor"
        );
        assert_eq!(long.completion_tokens(), 12);
        assert_eq!(build_reply(1, Some(0), None).completion_tokens(), 0);
        assert_eq!(
            build_reply(1, Some(u32::MAX), None).completion_tokens(),
            MAX_WORDS as u64
        );
    }

    #[test]
    fn max_tokens_caps_reply() {
        let r = build_reply(1, Some(20), Some(5));
        assert_eq!(r.completion_tokens(), 5);
        assert_eq!(r.finish_reason, "length");
        // A cap at or above the length changes nothing.
        assert_eq!(build_reply(1, None, Some(9)).finish_reason, "stop");
    }

    #[test]
    fn chat_completion_shape() {
        let reply = build_reply(1, None, None);
        let body = chat_completion(META, &reply, 1, Some(Usage::new(7, 9)));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "chatcmpl-mock-1");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gpt-x");
        assert_eq!(v["created"], 1_700_000_000);
        assert_eq!(v["choices"][0]["index"], 0);
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["message"]["content"], reply.text());
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], 7);
        assert_eq!(v["usage"]["completion_tokens"], 9);
        assert_eq!(v["usage"]["total_tokens"], 16);
        let no_usage: Value =
            serde_json::from_slice(&chat_completion(META, &reply, 1, None)).unwrap();
        assert!(no_usage.get("usage").is_none());
    }

    #[test]
    fn chat_stream_with_usage() {
        let reply = build_reply(1, Some(3), None);
        let events = chat_stream(META, &reply, 1, Some(Usage::new(4, 3)));
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        use EventKind as K;
        let want = [
            K::Head,
            K::Content,
            K::Content,
            K::Content,
            K::Finish,
            K::Usage,
            K::Done,
        ];
        assert_eq!(kinds, want);
        assert_eq!(&events.last().unwrap().bytes[..], b"data: [DONE]\n\n");
        let v = parse_sse(&events);
        for c in &v {
            assert_eq!(c["id"], "chatcmpl-mock-1");
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["model"], "gpt-x");
            assert!(c.get("usage").is_some(), "usage key on every chunk");
        }
        assert_eq!(
            v[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert!(v[0]["usage"].is_null());
        let text: String = v[1..4]
            .iter()
            .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(text, reply.text());
        assert_eq!(v[4]["choices"][0]["delta"], json!({}));
        assert_eq!(v[4]["choices"][0]["finish_reason"], "stop");
        assert_eq!(v[5]["choices"], json!([]));
        assert_eq!(v[5]["usage"]["completion_tokens"], 3);
        assert_eq!(v[5]["usage"]["prompt_tokens"], 4);
    }

    #[test]
    fn several_choices() {
        let body = br#"{"model":"m","messages":[],"n":3}"#;
        assert_eq!(parse_chat(body).unwrap().n, 3);
        assert!(parse_chat(br#"{"model":"m","messages":[],"n":0}"#).is_err());
        let reply = build_reply(0, Some(2), None);
        let v: Value = serde_json::from_slice(&chat_completion(META, &reply, 3, None)).unwrap();
        assert_eq!(v["choices"].as_array().unwrap().len(), 3);
        assert_eq!(v["choices"][2]["index"], 2);
        let events = chat_stream(META, &reply, 2, None);
        let count = |k| events.iter().filter(|e| e.kind == k).count();
        assert_eq!(
            (
                count(EventKind::Head),
                count(EventKind::Content),
                count(EventKind::Finish)
            ),
            (2, 4, 2)
        );
        let v = parse_sse(&events);
        assert_eq!(v[3]["choices"][0]["index"], 1);
        assert_eq!(v[3]["choices"][0]["delta"]["content"], "Hello");
    }

    #[test]
    fn chat_stream_without_usage_has_no_usage_key() {
        let events = chat_stream(META, &build_reply(1, Some(2), None), 1, None);
        assert!(events.iter().all(|e| e.kind != EventKind::Usage));
        for c in parse_sse(&events) {
            assert!(c.get("usage").is_none());
        }
    }

    #[test]
    fn completions() {
        let req =
            parse_completion(br#"{"model":"gpt-3.5-turbo-instruct","prompt":"12345"}"#).unwrap();
        assert_eq!((req.prompt_count, req.prompt_tokens), (1, 2));
        let req =
            parse_completion(br#"{"model":"m","prompt":["ab","cd"],"max_tokens":2}"#).unwrap();
        assert_eq!(
            (req.prompt_count, req.prompt_tokens, req.max_tokens),
            (2, 2, Some(2))
        );
        let req = parse_completion(br#"{"model":"m","prompt":[1,2,3]}"#).unwrap();
        assert_eq!(req.prompt_tokens, 3);
        assert!(parse_completion(br#"{"model":"m","prompt":{"a":1}}"#).is_err());

        let reply = build_reply(1, None, Some(2));
        let meta = Meta {
            id: "cmpl-mock-1",
            ..META
        };
        let v: Value =
            serde_json::from_slice(&text_completion(meta, &reply, Some(Usage::new(2, 2)))).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "Hello from");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 4);

        let events = completion_stream(meta, &reply, Some(Usage::new(2, 2)));
        let v = parse_sse(&events);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0]["choices"][0]["text"], "Hello");
        assert!(v[0]["usage"].is_null());
        assert_eq!(v[2]["choices"][0]["finish_reason"], "length");
        assert_eq!(v[3]["choices"], json!([]));
        assert_eq!(v[3]["usage"]["completion_tokens"], 2);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let req = parse_embedding(br#"{"model":"e","input":["hello","world!"]}"#).unwrap();
        assert_eq!(req.inputs.len(), 2);
        let v: Value = serde_json::from_slice(&embeddings("e", &req)).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][1]["index"], 1);
        assert_eq!(v["data"][0]["object"], "embedding");
        assert_eq!(v["usage"]["prompt_tokens"], 2 + 2);
        assert_eq!(v["usage"]["total_tokens"], 4);
        let a = v["data"][0]["embedding"].as_array().unwrap();
        assert_eq!(a.len(), DEFAULT_DIMENSIONS);
        let norm: f64 = a.iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-3);
        assert_eq!(embedding_vector(42, 16), embedding_vector(42, 16));
        assert_ne!(embedding_vector(42, 16), embedding_vector(43, 16));

        let b64 = parse_embedding(
            br#"{"model":"e","input":"hi","encoding_format":"base64","dimensions":4}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&embeddings("e", &b64)).unwrap();
        // 4 floats = 16 bytes = 24 base64 characters.
        assert_eq!(v["data"][0]["embedding"].as_str().unwrap().len(), 24);

        assert!(parse_embedding(br#"{"model":"e","input":[]}"#).is_err());
        assert!(parse_embedding(br#"{"model":"e"}"#).is_err());
        assert!(parse_embedding(br#"{"model":"e","input":"x","dimensions":0}"#).is_err());
        assert!(parse_embedding(br#"{"model":"e","input":"x","encoding_format":"hex"}"#).is_err());
    }

    #[test]
    fn errors_and_models() {
        let v: Value =
            serde_json::from_slice(&ApiError::for_status(429, "slow down").to_json()).unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert_eq!(v["error"]["message"], "slow down");
        assert!(v["error"]["param"].is_null());
        let v: Value =
            serde_json::from_slice(&ApiError::for_status(500, "boom").to_json()).unwrap();
        assert_eq!(v["error"]["type"], "server_error");
        assert!(ApiError::for_status(500, "x")
            .to_sse()
            .starts_with(b"data: {\"error\""));

        let v: Value = serde_json::from_slice(&models_list()).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"].as_array().unwrap().len(), MODELS.len());
        assert_eq!(v["data"][0]["object"], "model");
        let v: Value = serde_json::from_slice(&model_object("x/y")).unwrap();
        assert_eq!(v["id"], "x/y");
    }

    fn weather_tools() -> Value {
        json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["location"]}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {
                "type": "object", "properties": {"tz": {"type": "integer"}}, "required": ["tz"]}}}
        ])
    }

    fn turn_of(extra: Value, messages: Value) -> Result<Turn, ApiError> {
        let mut body = json!({"model": "m", "messages": messages});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        parse_chat(body.to_string().as_bytes()).map(|r| r.turn)
    }

    #[test]
    fn tool_call_detection() {
        let user = json!([{"role": "user", "content": "weather?"}]);
        let call = |turn: Turn| match turn {
            Turn::Call(c) => (c.name.clone(), c.arguments()),
            other => panic!("{other:?}"),
        };
        let t = turn_of(json!({"tools": weather_tools()}), user.clone()).unwrap();
        assert_eq!(call(t), ("get_weather".into(), r#"{"location":"mock"}"#.into()));
        for choice in [json!("auto"), json!("required")] {
            let t = turn_of(json!({"tools": weather_tools(), "tool_choice": choice}), user.clone());
            assert_eq!(call(t.unwrap()).0, "get_weather");
        }
        let forced = json!({"type": "function", "function": {"name": "get_time"}});
        let t = turn_of(json!({"tools": weather_tools(), "tool_choice": forced}), user.clone());
        assert_eq!(call(t.unwrap()), ("get_time".into(), r#"{"tz":1}"#.into()));
        let allowed = json!({"type": "allowed_tools", "allowed_tools": {"mode": "required",
            "tools": [{"type": "function", "function": {"name": "get_time"}}]}});
        let t = turn_of(json!({"tools": weather_tools(), "tool_choice": allowed}), user.clone());
        assert_eq!(call(t.unwrap()).0, "get_time");
        let unknown = json!({"type": "function", "function": {"name": "nope"}});
        let err = turn_of(json!({"tools": weather_tools(), "tool_choice": unknown}), user.clone())
            .unwrap_err();
        assert_eq!((err.status, err.param), (400, Some("tool_choice")));

        // No call: tool_choice none, no tools, no function tools, or not a user turn last.
        let none = turn_of(json!({"tools": weather_tools(), "tool_choice": "none"}), user.clone());
        assert_eq!(none.unwrap(), Turn::Chat);
        assert_eq!(turn_of(json!({}), user.clone()).unwrap(), Turn::Chat);
        let custom = json!([{"type": "custom", "custom": {"name": "x"}}]);
        assert_eq!(turn_of(json!({"tools": custom}), user.clone()).unwrap(), Turn::Chat);
        let prefill = json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]);
        assert_eq!(turn_of(json!({"tools": weather_tools()}), prefill).unwrap(), Turn::Chat);

        // A tool result last is answered in text, tools declared or not.
        let result = json!([
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}
        ]);
        let t = turn_of(json!({"tools": weather_tools()}), result.clone()).unwrap();
        assert_eq!(t, Turn::ToolResult("The tool returned: {\"temp\": 21}".into()));
        let mut parts = result;
        parts[2]["content"] = json!([{"type": "text", "text": "sunny"}]);
        assert_eq!(
            turn_of(json!({}), parts).unwrap(),
            Turn::ToolResult("The tool returned: sunny".into())
        );
    }

    #[test]
    fn json_mode_flag() {
        let user = json!([{"role": "user", "content": "x"}]);
        let mode = |rf: Value| {
            let body = json!({"model": "m", "messages": user, "response_format": rf});
            parse_chat(body.to_string().as_bytes()).unwrap().json_mode
        };
        assert!(mode(json!({"type": "json_object"})));
        assert!(mode(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})));
        assert!(!mode(json!({"type": "text"})));
        assert!(!mode(Value::Null));
    }

    fn sample_call() -> ToolCall {
        let schema = json!({"type": "object", "properties": {"location": {"type": "string"}},
                            "required": ["location"]});
        ToolCall {
            name: "get_weather".into(),
            args: super::super::tools::synthesize_args(Some(&schema)),
        }
    }

    #[test]
    fn tool_call_completion_shape() {
        let call = sample_call();
        let body = chat_tool_completion(META, &call, "call_mock_7", 2, Some(Usage::new(9, 5)));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["object"], "chat.completion");
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["role"], "assistant");
        assert!(choice["message"]["content"].is_null());
        assert_eq!(
            choice["message"]["tool_calls"],
            json!([{"id": "call_mock_7", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"location\":\"mock\"}"}}])
        );
        assert_eq!(v["choices"][1]["message"]["tool_calls"][0]["id"], "call_mock_7_1");
        assert_eq!(v["usage"]["completion_tokens"], 5);
    }

    #[test]
    fn tool_call_stream_sequence() {
        let call = sample_call();
        let events = chat_tool_stream(META, &call, "call_mock_7", 1, Some(Usage::new(9, 5)));
        use EventKind as K;
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        // Head, 5 argument pieces (19 bytes in 4-byte pieces), finish, usage, [DONE].
        let mut want = vec![K::Head];
        want.extend([K::Content; 5]);
        want.extend([K::Finish, K::Usage, K::Done]);
        assert_eq!(kinds, want);
        let v = parse_sse(&events);
        assert_eq!(
            v[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [{
                "index": 0, "id": "call_mock_7", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]})
        );
        let mut args = String::new();
        for c in &v[1..6] {
            let tc = &c["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(tc["index"], 0);
            assert!(tc.get("id").is_none() && tc["function"].get("name").is_none());
            args.push_str(tc["function"]["arguments"].as_str().unwrap());
            assert!(c["usage"].is_null());
        }
        assert_eq!(args, call.arguments());
        assert_eq!(v[6]["choices"][0]["delta"], json!({}));
        assert_eq!(v[6]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v[7]["choices"], json!([]));
        assert_eq!(v[7]["usage"]["completion_tokens"], 5);

        // Two choices: each with its own id, steps interleaved; no usage key without usage.
        let events = chat_tool_stream(META, &call, "call_mock_7", 2, None);
        let v = parse_sse(&events);
        assert_eq!(v[1]["choices"][0]["index"], 1);
        assert_eq!(v[1]["choices"][0]["delta"]["tool_calls"][0]["id"], "call_mock_7_1");
        assert!(v.iter().all(|c| c.get("usage").is_none()));
    }

}
