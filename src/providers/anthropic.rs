//! Anthropic's Messages API behind the OpenAI chat-completions surface: pure, IO-free
//! translation of requests, responses and streams.
//!
//! - [`translate_request`]: an OpenAI chat request becomes a `POST /v1/messages` body;
//! - [`translate_response`] / [`translate_message`]: an Anthropic `message` becomes a
//!   `chat.completion`;
//! - [`AnthropicStream`]: Anthropic's SSE events become `chat.completion.chunk` events as they
//!   arrive, metered on the way ([`StreamMeter`]).
//!
//! # Request mapping
//!
//! | OpenAI | Anthropic |
//! |---|---|
//! | `system` / `developer` messages (anywhere) | top-level `system`, joined with a blank line |
//! | consecutive same-role messages, `tool` messages | merged into alternating user/assistant turns |
//! | `max_tokens` / `max_completion_tokens` | `max_tokens` (the larger; else the route's default) |
//! | `stop` | `stop_sequences` |
//! | `temperature`, `top_p`, `top_k`, `stream` | copied |
//! | `user` (or `safety_identifier`) | `metadata.user_id` |
//! | `image_url` part: data URL / http(s) URL | `image` block, `base64` / `url` source |
//! | `file` part with a PDF data URL | `document` block, `base64` source |
//! | `tools` (function tools) | `tools` with `input_schema` = `parameters` |
//! | `tool_choice` auto / none / required / named | `auto` / `none` / `any` / `tool` |
//! | `parallel_tool_calls: false` | `tool_choice.disable_parallel_tool_use: true` |
//! | assistant `tool_calls` | `tool_use` blocks, `input` = parsed `arguments` |
//! | `tool` messages | `tool_result` blocks, first in their user turn (Anthropic requires it) |
//! | `response_format` json_object / json_schema | an instruction appended to `system` |
//!
//! Dropped, having no Anthropic equivalent: `frequency_penalty`, `presence_penalty`,
//! `logit_bias`, `logprobs`, `top_logprobs`, `seed`, `service_tier`, `store`, `metadata`,
//! `prediction`, `modalities`, `audio`, `reasoning_effort`, `web_search_options`,
//! `stream_options` (Anthropic always reports usage), a message's `name`, an image's `detail`,
//! a tool's `strict`. Refused with a [`RequestError`], because ignoring them would silently
//! change the answer: `n` > 1, the deprecated `functions` / `function_call`, the `function`
//! role, non-function tools, audio parts, files other than PDF data URLs.
//!
//! Message order is kept as given: a conversation that starts with an assistant turn is sent
//! that way, and Anthropic decides whether it accepts it. `temperature` is copied as is, so a
//! value above 1 (valid for OpenAI, whose range is 0–2) is refused by Anthropic.
//!
//! # JSON mode
//!
//! Anthropic has no `response_format`: the gateway asks for JSON in the system prompt, and
//! [`translate_response`] removes a Markdown code fence around the answer when `json_mode` is
//! set ([`json_mode`] reads it from the client's request). Streams are not post-processed: a
//! fence the model writes reaches a streaming client as it was generated.
//!
//! # Ids
//!
//! The translation names a completion `chatcmpl-` followed by Anthropic's message id
//! (`chatcmpl-msg_01…`), and tool-call ids are derived from it. The gateway then answers with
//! its own id in the body and every chunk (`store::client_response_id`, via `with_client_id`
//! for streams).
//!
//! # Robustness
//!
//! Nothing here panics on any input. Upstream output is read with typed wire structs whose
//! type tags fall back to an `Unknown` / `Other` variant, so an event or content block type
//! Anthropic adds later is skipped (logged at debug level) rather than failing the response.
//! Output that is malformed beyond that becomes a [`TranslateError`] (a 502 for the client) or,
//! mid-stream, an OpenAI-style error event that ends the stream.
/// The Messages API version every request is sent with (`anthropic-version` header).
pub const API_VERSION: &str = "2023-06-01";


use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;
use std::marker::PhantomData;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use serde::de::{self, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use super::json_scan::{self, Member, ObjectScanner};
use super::openai::RequestError;
use crate::metering::estimate;
use crate::metering::sse::{SseDecoder, SseEvent};
use crate::metering::usage::Usage;
use crate::metering::StreamMeter;

/// Prefix of the ids the client sees; Anthropic's message id follows it.
const ID_PREFIX: &str = "chatcmpl-";

/// Anthropic's own message id (`msg_…`) inside a translated id (`chatcmpl-msg_…`).
pub fn upstream_id(translated: &str) -> Option<&str> {
    translated.strip_prefix(ID_PREFIX).filter(|id| !id.is_empty())
}

/// The error a client's stream ends with when Anthropic's ends without `message_stop`.
const ENDED_EARLY: &str = "the upstream stream ended before the message was complete";

/// The image types Anthropic accepts (as of the Messages API's vision documentation).
const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// =============================================================================================
// An order-preserving JSON value.

/// A JSON value that keeps object members in their original order (and duplicates, as given).
///
/// `serde_json::Value` sorts object keys (the crate is built without `preserve_order`). Tool
/// schemas and tool arguments pass through this module, and a schema's property order is part
/// of what the model reads, so re-sorting it could change answers; arguments re-sorted would
/// surprise clients comparing them. Depth is bounded by serde_json's recursion limit when
/// parsing, so serialising it back cannot overflow the stack either.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// A member of an object; the last one when the key repeats (what serde-based readers use).
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    fn empty_object() -> Json {
        Json::Object(Vec::new())
    }

    fn to_json_string(&self) -> String {
        // Serialising this type cannot fail (string keys, no custom errors); the fallback only
        // keeps the signature free of an error path.
        serde_json::to_string(self).unwrap_or_else(|_| "null".to_owned())
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
                Json::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
                Ok(Json::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
                Ok(Json::Number(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
                Ok(Json::Number(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
                // serde_json never produces a non-finite float; `Null` covers other sources.
                Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
            }
            fn visit_str<E>(self, v: &str) -> Result<Json, E> {
                Ok(Json::String(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Json, E> {
                Ok(Json::String(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut members = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Json>()? {
                    members.push((key, value));
                }
                Ok(Json::Object(members))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::String(v) => s.serialize_str(v),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

// =============================================================================================
// Requests: OpenAI wire types.

/// Message content: a string, or an array of parts. Hand-written rather than an untagged enum,
/// which would first buffer the whole value (a vision request's megabytes of base64 included).
enum ContentWire<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<PartWire<'a>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for ContentWire<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ContentWire<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ContentWire::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ContentWire::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(ContentWire::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(ContentWire::Parts(parts))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// One content part, flat: every part type's fields are optional and `kind` says which apply.
/// A flat struct deserialises in one pass, where an internally tagged enum would buffer.
#[derive(Deserialize)]
struct PartWire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow)]
    image_url: Option<ImageUrlWire<'a>>,
    #[serde(borrow)]
    file: Option<FileWire<'a>>,
}

/// `{"url": …, "detail": …}`, or a bare URL string as some older clients send.
#[derive(Deserialize)]
#[serde(untagged)]
enum ImageUrlWire<'a> {
    Bare(#[serde(borrow)] Cow<'a, str>),
    Object {
        #[serde(borrow)]
        url: Cow<'a, str>,
    },
}

impl<'a> ImageUrlWire<'a> {
    fn into_url(self) -> Cow<'a, str> {
        match self {
            ImageUrlWire::Bare(url) | ImageUrlWire::Object { url } => url,
        }
    }
}

#[derive(Deserialize)]
struct FileWire<'a> {
    #[serde(borrow)]
    file_data: Option<Cow<'a, str>>,
    #[serde(borrow)]
    file_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MessageWire<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow)]
    content: Option<ContentWire<'a>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<ToolCallWire<'a>>>,
    #[serde(borrow)]
    tool_call_id: Option<Cow<'a, str>>,
    function_call: Option<de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ToolCallWire<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<FunctionCallWire<'a>>,
}

#[derive(Deserialize)]
struct FunctionCallWire<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ToolWire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<FunctionDefWire<'a>>,
}

#[derive(Deserialize)]
struct FunctionDefWire<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    description: Option<Cow<'a, str>>,
    parameters: Option<Json>,
}

#[derive(Deserialize)]
struct ResponseFormatWire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    json_schema: Option<JsonSchemaWire>,
}

#[derive(Deserialize)]
struct JsonSchemaWire {
    name: Option<String>,
    description: Option<String>,
    schema: Option<Json>,
}

/// The top-level fields this translation reads. Each is parsed on its own (see
/// [`ChatRequest::parse`]) so a type error names its field in `RequestError::param`.
#[derive(Default)]
struct ChatRequest<'a> {
    messages: Option<Vec<MessageWire<'a>>>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    stop: Option<Json>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u64>,
    stream: Option<bool>,
    user: Option<Cow<'a, str>>,
    safety_identifier: Option<Cow<'a, str>>,
    n: Option<u64>,
    tools: Option<Vec<ToolWire<'a>>>,
    tool_choice: Option<Json>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<ResponseFormatWire<'a>>,
    functions: bool,
    function_call: bool,
}

// =============================================================================================
// Requests: Anthropic wire types.

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<MetadataOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceOut>,
}

#[derive(Serialize)]
struct MetadataOut<'a> {
    user_id: Cow<'a, str>,
}

#[derive(Serialize)]
struct ToolOut<'a> {
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Cow<'a, str>>,
    input_schema: Json,
}

#[derive(Serialize)]
struct ToolChoiceOut {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One Anthropic message: a role and its blocks, merged from consecutive OpenAI messages.
struct Turn<'a> {
    role: Role,
    blocks: Vec<Block<'a>>,
    /// How many `tool_result` blocks lead the turn: Anthropic requires them before any other
    /// content of the user turn that answers a `tool_use`.
    leading_results: usize,
}

impl Serialize for Turn<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("role", self.role.name())?;
        // A lone text block is sent as a plain string: the same meaning, the familiar shape.
        match self.blocks.as_slice() {
            [Block::Text { text }] => map.serialize_entry("content", text)?,
            blocks => map.serialize_entry("content", blocks)?,
        }
        map.end()
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: Cow<'a, str>,
    },
    Image {
        source: Source<'a>,
    },
    Document {
        source: Source<'a>,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: Cow<'a, str>,
        input: Json,
    },
    ToolResult {
        tool_use_id: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<ToolResultContent<'a>>,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Source<'a> {
    Base64 {
        media_type: Cow<'a, str>,
        data: Cow<'a, str>,
    },
    Url {
        url: Cow<'a, str>,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolResultContent<'a> {
    Text(Cow<'a, str>),
    Blocks(Vec<Block<'a>>),
}

// =============================================================================================
// Requests: translation.

/// Translates an OpenAI chat-completions request into an Anthropic `/v1/messages` body for
/// `upstream_model`. `default_max_tokens` is used when the client set no limit (Anthropic
/// requires one).
pub fn translate_request(
    openai_body: &[u8],
    upstream_model: &str,
    default_max_tokens: u64,
) -> Result<Vec<u8>, RequestError> {
    let request = ChatRequest::parse(openai_body)?;
    let messages = request.build(upstream_model, default_max_tokens)?;
    serde_json::to_vec(&messages)
        .map_err(|e| error(format!("could not encode the upstream request: {e}"), None))
}

/// Whether the client asked for JSON output (`response_format` of type `json_object` or
/// `json_schema`): the `json_mode` to pass to [`translate_response`]. False for anything
/// unreadable (such a request is refused by [`translate_request`] anyway).
pub fn json_mode(openai_body: &[u8]) -> bool {
    let Ok(Some(member)) = json_scan::find_member(openai_body, "response_format") else {
        return false;
    };
    serde_json::from_slice::<Option<ResponseFormatWire>>(member.value(openai_body))
        .ok()
        .flatten()
        .is_some_and(|f| matches!(&*f.kind, "json_object" | "json_schema"))
}

fn error(message: impl Into<String>, param: Option<String>) -> RequestError {
    RequestError {
        message: message.into(),
        param,
    }
}

fn invalid<T>(param: impl Into<String>, message: impl Into<String>) -> Result<T, RequestError> {
    Err(error(message, Some(param.into())))
}

/// Parses one top-level field's value, naming the field on failure.
fn field<'a, T: Deserialize<'a>>(value: &'a [u8], name: &str) -> Result<T, RequestError> {
    serde_json::from_slice(value)
        .map_err(|e| error(format!("invalid '{name}': {e}"), Some(name.to_owned())))
}

/// A member's key, decoded (`"mod\u0065l"` is `model`, as serde reads it).
fn member_key<'a>(body: &'a [u8], member: &Member) -> Option<Cow<'a, str>> {
    let quoted = body.get(member.key.clone())?;
    let raw = quoted.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if memchr::memchr(b'\\', raw).is_none() {
        return std::str::from_utf8(raw).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(quoted)
        .ok()
        .map(Cow::Owned)
}

impl<'a> ChatRequest<'a> {
    /// Reads the known top-level fields, walking the object with [`ObjectScanner`] so each
    /// value is deserialised separately and its errors carry the field name. A repeated field
    /// keeps its last value, as serde-based servers do (the gateway's validation has already
    /// refused duplicates of the fields it routes and bills on).
    fn parse(body: &'a [u8]) -> Result<Self, RequestError> {
        let not_object = |e: json_scan::ScanError| {
            error(
                format!("request body is not a valid JSON object: {e}"),
                None,
            )
        };
        let mut scanner = ObjectScanner::new(body).map_err(not_object)?;
        let mut req = ChatRequest::default();
        while let Some(member) = scanner.next_member().map_err(not_object)? {
            let Some(key) = member_key(body, &member) else {
                return Err(error("request body has an invalid key", None));
            };
            let v = member.value(body);
            match &*key {
                "messages" => req.messages = field(v, "messages")?,
                "max_tokens" => req.max_tokens = field(v, "max_tokens")?,
                "max_completion_tokens" => {
                    req.max_completion_tokens = field(v, "max_completion_tokens")?
                }
                "stop" => req.stop = field(v, "stop")?,
                "temperature" => req.temperature = field(v, "temperature")?,
                "top_p" => req.top_p = field(v, "top_p")?,
                "top_k" => req.top_k = field(v, "top_k")?,
                "stream" => req.stream = field(v, "stream")?,
                "user" => req.user = field(v, "user")?,
                "safety_identifier" => req.safety_identifier = field(v, "safety_identifier")?,
                "n" => req.n = field(v, "n")?,
                "tools" => req.tools = field(v, "tools")?,
                "tool_choice" => req.tool_choice = field(v, "tool_choice")?,
                "parallel_tool_calls" => req.parallel_tool_calls = field(v, "parallel_tool_calls")?,
                "response_format" => req.response_format = field(v, "response_format")?,
                "functions" => req.functions = v != b"null",
                "function_call" => req.function_call = v != b"null",
                // Everything else has no Anthropic equivalent (see the module docs).
                _ => {}
            }
        }
        Ok(req)
    }

    fn build(
        self,
        model: &'a str,
        default_max_tokens: u64,
    ) -> Result<MessagesRequest<'a>, RequestError> {
        if self.n.is_some_and(|n| n > 1) {
            return invalid("n", "n > 1 is not supported by this provider");
        }
        if self.functions || self.function_call {
            let param = if self.functions {
                "functions"
            } else {
                "function_call"
            };
            return invalid(
                param,
                format!("the deprecated '{param}' is not supported by this provider; use 'tools'"),
            );
        }
        let Some(messages) = self.messages else {
            return invalid("messages", "missing required field 'messages'");
        };

        let mut system: Vec<Cow<'a, str>> = Vec::new();
        let mut turns = Turns::default();
        for (i, message) in messages.into_iter().enumerate() {
            convert_message(i, message, &mut system, &mut turns)?;
        }
        let mut turns = turns.0;
        trim_final_assistant(&mut turns);
        if turns.is_empty() {
            return invalid(
                "messages",
                "'messages' must contain at least one non-empty user or assistant message",
            );
        }

        let mut system = system.join("\n\n");
        if let Some(format) = &self.response_format {
            if let Some(instruction) = json_instruction(format)? {
                if !system.is_empty() {
                    system.push_str("\n\n");
                }
                system.push_str(&instruction);
            }
        }

        let (tools, tool_choice) =
            convert_tools(self.tools, self.tool_choice, self.parallel_tool_calls)?;
        let max_tokens = match (self.max_tokens, self.max_completion_tokens) {
            // The larger, as the gateway's reservation assumes (`ChatRequestInfo::max_tokens`).
            (Some(a), Some(b)) => a.max(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => default_max_tokens,
        };
        let user = self
            .user
            .or(self.safety_identifier)
            .filter(|u| !u.is_empty());

        Ok(MessagesRequest {
            model,
            max_tokens,
            system: (!system.is_empty()).then_some(system),
            messages: turns,
            stop_sequences: convert_stop(self.stop)?,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            stream: self.stream,
            metadata: user.map(|user_id| MetadataOut { user_id }),
            tools,
            tool_choice,
        })
    }
}

/// The turns built so far; consecutive content of one role lands in one turn.
#[derive(Default)]
struct Turns<'a>(Vec<Turn<'a>>);

impl<'a> Turns<'a> {
    fn push(&mut self, role: Role, blocks: Vec<Block<'a>>) {
        // A message with no content adds nothing, so it cannot break the alternation either.
        if blocks.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some(turn) if turn.role == role => turn.blocks.extend(blocks),
            _ => self.0.push(Turn {
                role,
                blocks,
                leading_results: 0,
            }),
        }
    }

    fn push_tool_result(&mut self, block: Block<'a>) {
        match self.0.last_mut() {
            Some(turn) if turn.role == Role::User => {
                // After the results already there, before any text of the turn.
                let at = turn.leading_results.min(turn.blocks.len());
                turn.blocks.insert(at, block);
                turn.leading_results += 1;
            }
            _ => self.0.push(Turn {
                role: Role::User,
                blocks: vec![block],
                leading_results: 1,
            }),
        }
    }
}

/// Anthropic refuses a final assistant turn (a prefill) that ends with whitespace.
fn trim_final_assistant(turns: &mut Vec<Turn<'_>>) {
    let Some(turn) = turns.last_mut() else { return };
    if turn.role != Role::Assistant {
        return;
    }
    if let Some(Block::Text { text }) = turn.blocks.last_mut() {
        let trimmed = text.trim_end().len();
        if trimmed < text.len() {
            text.to_mut().truncate(trimmed);
        }
        if text.is_empty() {
            turn.blocks.pop();
        }
    }
    if turn.blocks.is_empty() {
        turns.pop();
    }
}

fn convert_message<'a>(
    i: usize,
    message: MessageWire<'a>,
    system: &mut Vec<Cow<'a, str>>,
    turns: &mut Turns<'a>,
) -> Result<(), RequestError> {
    match &*message.role {
        "system" | "developer" => {
            for block in content_blocks(i, message.content, Allowed::Text)? {
                if let Block::Text { text } = block {
                    system.push(text);
                }
            }
        }
        "user" => turns.push(
            Role::User,
            content_blocks(i, message.content, Allowed::User)?,
        ),
        "assistant" => {
            if message.function_call.is_some() {
                return invalid(
                    format!("messages[{i}].function_call"),
                    "the deprecated 'function_call' is not supported by this provider; use 'tool_calls'",
                );
            }
            let mut blocks = content_blocks(i, message.content, Allowed::Assistant)?;
            for (j, call) in message.tool_calls.into_iter().flatten().enumerate() {
                blocks.push(tool_use_block(i, j, call)?);
            }
            turns.push(Role::Assistant, blocks);
        }
        "tool" => {
            let Some(id) = message.tool_call_id else {
                return invalid(
                    format!("messages[{i}].tool_call_id"),
                    "a 'tool' message needs 'tool_call_id'",
                );
            };
            let content = match message.content {
                None => None,
                Some(ContentWire::Text(text)) => {
                    (!text.is_empty()).then_some(ToolResultContent::Text(text))
                }
                Some(parts @ ContentWire::Parts(_)) => {
                    let mut blocks = content_blocks(i, Some(parts), Allowed::User)?;
                    match blocks.as_slice() {
                        [] => None,
                        [Block::Text { .. }] => match blocks.pop() {
                            Some(Block::Text { text }) => Some(ToolResultContent::Text(text)),
                            _ => None,
                        },
                        _ => Some(ToolResultContent::Blocks(blocks)),
                    }
                }
            };
            turns.push_tool_result(Block::ToolResult {
                tool_use_id: tool_id(id),
                content,
            });
        }
        "function" => {
            return invalid(
                format!("messages[{i}].role"),
                "the deprecated 'function' role is not supported by this provider; use 'tool'",
            )
        }
        other => {
            return invalid(
                format!("messages[{i}].role"),
                format!("unknown message role '{other}'"),
            )
        }
    }
    Ok(())
}

/// Which part types a message may carry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Allowed {
    /// System and developer messages.
    Text,
    /// Text and refusals (an earlier answer replayed).
    Assistant,
    /// Text, images, PDF files (user and tool messages).
    User,
}

fn content_blocks<'a>(
    i: usize,
    content: Option<ContentWire<'a>>,
    allowed: Allowed,
) -> Result<Vec<Block<'a>>, RequestError> {
    let parts = match content {
        None => return Ok(Vec::new()),
        // Anthropic refuses empty text blocks; an empty message simply contributes nothing.
        Some(ContentWire::Text(text)) if text.is_empty() => return Ok(Vec::new()),
        Some(ContentWire::Text(text)) => return Ok(vec![Block::Text { text }]),
        Some(ContentWire::Parts(parts)) => parts,
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        let param = |suffix: &str| format!("messages[{i}].content[{j}]{suffix}");
        match (&*part.kind, allowed) {
            ("text", _) => match part.text {
                Some(text) if !text.is_empty() => blocks.push(Block::Text { text }),
                Some(_) => {}
                None => return invalid(param(".text"), "a text part needs 'text'"),
            },
            ("refusal", Allowed::Assistant) => {
                if let Some(text) = part.refusal.filter(|t| !t.is_empty()) {
                    blocks.push(Block::Text { text });
                }
            }
            ("image_url", Allowed::User) => {
                let Some(url) = part.image_url else {
                    return invalid(param(".image_url"), "an image_url part needs 'image_url'");
                };
                blocks.push(image_block(url.into_url(), || param(".image_url.url"))?);
            }
            ("file", Allowed::User) => {
                let Some(file) = part.file else {
                    return invalid(param(".file"), "a file part needs 'file'");
                };
                blocks.push(file_block(file, || param(".file"))?);
            }
            (kind, _) => {
                let role = match allowed {
                    Allowed::Text => "system",
                    Allowed::Assistant => "assistant",
                    Allowed::User => "user",
                };
                return invalid(
                    param(".type"),
                    format!("content part type '{kind}' is not supported in {role} messages by this provider"),
                );
            }
        }
    }
    Ok(blocks)
}

/// The sub-slice `start..` of a possibly borrowed string, still borrowed when it was.
fn tail<'a>(s: Cow<'a, str>, start: usize) -> Cow<'a, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.get(start..).unwrap_or_default()),
        Cow::Owned(mut o) => {
            if start <= o.len() && o.is_char_boundary(start) {
                o.drain(..start);
                Cow::Owned(o)
            } else {
                Cow::Owned(String::new())
            }
        }
    }
}

/// Splits a `data:` URL into its media type (lowercased, parameters dropped) and the offset of
/// its base64 payload. `None` unless it is a base64 data URL.
fn parse_data_url(url: &str) -> Option<(String, usize)> {
    let rest = url
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("data:"))
        .map(|_| &url[5..])?;
    let comma = rest.find(',')?;
    let header = &rest[..comma];
    let mut params = header.split(';');
    let media_type = params
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return None;
    }
    Some((media_type, 5 + comma + 1))
}

fn image_block<'a>(
    url: Cow<'a, str>,
    param: impl Fn() -> String,
) -> Result<Block<'a>, RequestError> {
    if let Some((media_type, start)) = parse_data_url(&url) {
        // `image/jpg` is common in the wild but not a registered type; Anthropic wants jpeg.
        let media_type = if media_type == "image/jpg" {
            "image/jpeg".to_owned()
        } else {
            media_type
        };
        if !IMAGE_TYPES.contains(&media_type.as_str()) {
            return invalid(
                param(),
                format!(
                    "unsupported image type '{media_type}': this provider accepts {}",
                    IMAGE_TYPES.join(", ")
                ),
            );
        }
        let data = tail(url, start);
        return Ok(Block::Image {
            source: Source::Base64 {
                media_type: Cow::Owned(media_type),
                data,
            },
        });
    }
    let lower = url.get(..8).unwrap_or(&url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(Block::Image {
            source: Source::Url { url },
        });
    }
    invalid(
        param(),
        "an image URL must be an http(s) URL or a base64 data URL",
    )
}

fn file_block<'a>(
    file: FileWire<'a>,
    param: impl Fn() -> String,
) -> Result<Block<'a>, RequestError> {
    let Some(data_url) = file.file_data else {
        let why = if file.file_id.is_some() {
            "uploaded files ('file_id') are not supported by this provider; send 'file_data'"
        } else {
            "a file part needs 'file_data'"
        };
        return invalid(param(), why);
    };
    match parse_data_url(&data_url) {
        Some((media_type, start)) if media_type == "application/pdf" => {
            let data = tail(data_url, start);
            Ok(Block::Document {
                source: Source::Base64 {
                    media_type: Cow::Borrowed("application/pdf"),
                    data,
                },
            })
        }
        _ => invalid(
            format!("{}.file_data", param()),
            "only PDF files, as a base64 data URL, are supported by this provider",
        ),
    }
}

/// Anthropic tool ids must match `^[a-zA-Z0-9_-]+$`; OpenAI's `call_…` do, but ids minted by
/// other clients or providers may not (`functions.get_weather:0`). The same mapping is applied
/// to `tool_use.id` and `tool_result.tool_use_id`, so the pair still matches.
fn tool_id(id: Cow<'_, str>) -> Cow<'_, str> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !id.is_empty() && id.chars().all(ok) {
        return id;
    }
    let mapped: String = id.chars().map(|c| if ok(c) { c } else { '_' }).collect();
    Cow::Owned(if mapped.is_empty() {
        "_".to_owned()
    } else {
        mapped
    })
}

fn tool_use_block<'a>(
    i: usize,
    j: usize,
    call: ToolCallWire<'a>,
) -> Result<Block<'a>, RequestError> {
    let param = |suffix: &str| format!("messages[{i}].tool_calls[{j}]{suffix}");
    if let Some(kind) = call.kind.as_deref().filter(|k| *k != "function") {
        return invalid(
            param(".type"),
            format!("tool call type '{kind}' is not supported by this provider"),
        );
    }
    let Some(id) = call.id else {
        return invalid(param(".id"), "a tool call needs 'id'");
    };
    let Some(function) = call.function else {
        return invalid(param(".function"), "a tool call needs 'function'");
    };
    let Some(name) = function.name else {
        return invalid(param(".function.name"), "a tool call needs 'function.name'");
    };
    let arguments = function.arguments.unwrap_or_default();
    // Some clients send "" for a tool without parameters: that is an empty object.
    let input = if arguments.trim().is_empty() {
        Json::empty_object()
    } else {
        match serde_json::from_str::<Json>(&arguments) {
            Ok(input @ Json::Object(_)) => input,
            Ok(_) => {
                return invalid(
                    param(".function.arguments"),
                    "tool call arguments must be a JSON object",
                )
            }
            Err(e) => {
                return invalid(
                    param(".function.arguments"),
                    format!("tool call arguments are not valid JSON: {e}"),
                )
            }
        }
    };
    Ok(Block::ToolUse {
        id: tool_id(id),
        name,
        input,
    })
}

fn convert_stop(stop: Option<Json>) -> Result<Vec<String>, RequestError> {
    match stop {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::String(s)) => Ok(vec![s]),
        Some(Json::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Json::String(s) => Ok(s),
                _ => invalid("stop", "'stop' must be a string or an array of strings"),
            })
            .collect(),
        Some(_) => invalid("stop", "'stop' must be a string or an array of strings"),
    }
}

fn convert_tools<'a>(
    tools: Option<Vec<ToolWire<'a>>>,
    choice: Option<Json>,
    parallel: Option<bool>,
) -> Result<(Vec<ToolOut<'a>>, Option<ToolChoiceOut>), RequestError> {
    let mut out = Vec::new();
    for (i, tool) in tools.into_iter().flatten().enumerate() {
        if let Some(kind) = tool.kind.as_deref().filter(|k| *k != "function") {
            return invalid(
                format!("tools[{i}].type"),
                format!("tool type '{kind}' is not supported by this provider"),
            );
        }
        let Some(function) = tool.function else {
            return invalid(format!("tools[{i}].function"), "a tool needs 'function'");
        };
        let Some(name) = function.name else {
            return invalid(
                format!("tools[{i}].function.name"),
                "a tool needs 'function.name'",
            );
        };
        // Anthropic requires a schema; OpenAI allows leaving it out for a tool without inputs.
        let input_schema = match function.parameters {
            None | Some(Json::Null) => Json::Object(vec![
                ("type".to_owned(), Json::String("object".to_owned())),
                ("properties".to_owned(), Json::empty_object()),
            ]),
            Some(schema) => schema,
        };
        out.push(ToolOut {
            name,
            description: function.description,
            input_schema,
        });
    }
    if out.is_empty() {
        // Anthropic only accepts a tool_choice alongside tools; without tools, none is chosen.
        return Ok((out, None));
    }
    let tool_choice = |kind, name| ToolChoiceOut {
        kind,
        name,
        disable_parallel_tool_use: None,
    };
    let bad = || {
        invalid("tool_choice", "'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":…}}")
    };
    let mut choice = match choice {
        None | Some(Json::Null) => None,
        Some(Json::String(mode)) => match mode.as_str() {
            "auto" => Some(tool_choice("auto", None)),
            "none" => Some(tool_choice("none", None)),
            "required" => Some(tool_choice("any", None)),
            _ => return bad(),
        },
        Some(object) => {
            let name = object
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Json::as_str);
            match (object.get("type").and_then(Json::as_str), name) {
                (Some("function"), Some(name)) => Some(tool_choice("tool", Some(name.to_owned()))),
                _ => return bad(),
            }
        }
    };
    if parallel == Some(false) {
        let choice = choice.get_or_insert_with(|| tool_choice("auto", None));
        // With "none" no tool is called at all, and Anthropic's `none` takes no such flag.
        if choice.kind != "none" {
            choice.disable_parallel_tool_use = Some(true);
        }
    }
    Ok((out, choice))
}

/// The system-prompt instruction standing in for `response_format`; `None` for plain text.
fn json_instruction(format: &ResponseFormatWire<'_>) -> Result<Option<String>, RequestError> {
    const BASE: &str = "Respond with only a single valid JSON object. Do not write anything \
        before or after it, and do not wrap it in Markdown code fences.";
    match &*format.kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(BASE.to_owned())),
        "json_schema" => {
            let mut text = BASE.to_owned();
            let spec = format.json_schema.as_ref();
            if let Some(schema) = spec.and_then(|s| s.schema.as_ref()) {
                text.push_str("\nThe JSON object must conform to this JSON Schema");
                if let Some(name) = spec.and_then(|s| s.name.as_deref()) {
                    text.push_str(&format!(" (\"{name}\")"));
                }
                if let Some(description) = spec.and_then(|s| s.description.as_deref()) {
                    text.push_str(&format!(", described as: {description}"));
                }
                text.push_str(":\n");
                text.push_str(&schema.to_json_string());
            }
            Ok(Some(text))
        }
        other => invalid(
            "response_format.type",
            format!("response_format type '{other}' is not supported by this provider"),
        ),
    }
}

// =============================================================================================
// Responses.

/// The upstream answered something that cannot be translated; the proxy answers 502
/// `upstream_error` with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateError {
    pub message: String,
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TranslateError {}

fn translate_error(message: impl Into<String>) -> TranslateError {
    TranslateError {
        message: message.into(),
    }
}

/// Anthropic's token counts. All optional: `message_delta` reports only `output_tokens` in
/// older API versions, and the cache fields are `null` when caching is not involved.
#[derive(Deserialize, Default, Debug, Clone, Copy)]
struct UsageWire {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl UsageWire {
    fn to_usage(self) -> Usage {
        let cache_read = self.cache_read_input_tokens.unwrap_or(0);
        let cache_write = self.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            // Anthropic's `input_tokens` excludes cached and cache-written tokens; OpenAI's
            // `prompt_tokens` (and the gateway's billing) counts the whole prompt.
            prompt_tokens: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(cache_read)
                .saturating_add(cache_write),
            completion_tokens: self.output_tokens.unwrap_or(0),
            cached_prompt_tokens: cache_read,
            cache_write_tokens: cache_write,
        }
    }
}

#[derive(Deserialize)]
struct ErrorWire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MessageWireOut<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    content: Option<Vec<ContentBlockWire>>,
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
    usage: Option<UsageWire>,
    #[serde(borrow)]
    error: Option<ErrorWire<'a>>,
}

/// A content block of a complete message. Read through [`Json`] first, so a block type added
/// later, whatever its shape, is skipped instead of failing the whole response.
enum ContentBlockWire {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        input: Json,
    },
    Other(String),
}

impl<'de> Deserialize<'de> for ContentBlockWire {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let block = Json::deserialize(d)?;
        let text = |key: &str| block.get(key).and_then(Json::as_str).map(str::to_owned);
        let kind =
            text("type").ok_or_else(|| de::Error::custom("content block without a 'type'"))?;
        match kind.as_str() {
            "text" => {
                let t =
                    text("text").ok_or_else(|| de::Error::custom("text block without 'text'"))?;
                Ok(ContentBlockWire::Text(t))
            }
            "tool_use" => {
                let (Some(id), Some(name)) = (text("id"), text("name")) else {
                    return Err(de::Error::custom("tool_use block without 'id' or 'name'"));
                };
                let input = block
                    .get("input")
                    .cloned()
                    .unwrap_or_else(Json::empty_object);
                Ok(ContentBlockWire::ToolUse { id, name, input })
            }
            _ => Ok(ContentBlockWire::Other(kind)),
        }
    }
}

#[derive(Serialize)]
struct ChatCompletionOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChoiceOut<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u32,
    message: ResponseMessageOut<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct ResponseMessageOut<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<()>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
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
    arguments: String,
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetailsOut,
}

#[derive(Serialize)]
struct PromptDetailsOut {
    cached_tokens: u64,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> Self {
        UsageOut {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens(),
            prompt_tokens_details: PromptDetailsOut {
                cached_tokens: u.cached_prompt_tokens,
            },
        }
    }
}

/// Anthropic's `stop_reason` as an OpenAI `finish_reason`.
fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        // A refusal by the model's safety layer: OpenAI's name for a filtered answer.
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, anything newer, or none at all.
        _ => "stop",
    }
}

/// A translated non-streamed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslatedResponse {
    /// The `chat.completion` body for the client.
    pub body: Vec<u8>,
    /// `None` when Anthropic reported no usage (it always does; a faulty upstream might not):
    /// the caller should estimate rather than bill nothing.
    pub usage: Option<Usage>,
    /// The completion id as translated (`chatcmpl-msg_…`); the gateway answers with its own.
    pub id: String,
}

/// Translates an Anthropic `message` into an OpenAI `chat.completion` whose `model` is `slug`.
/// With `json_mode`, a Markdown code fence around the answer is removed. A missing `usage`
/// gives zero counts here; [`translate_message`] tells that case apart.
pub fn translate_response(
    body: &[u8],
    slug: &str,
    json_mode: bool,
) -> Result<(Vec<u8>, Usage), TranslateError> {
    let translated = translate_message(body, slug, json_mode)?;
    Ok((translated.body, translated.usage.unwrap_or_default()))
}

/// [`translate_response`], also saying whether usage was reported, and the id.
pub fn translate_message(
    body: &[u8],
    slug: &str,
    json_mode: bool,
) -> Result<TranslatedResponse, TranslateError> {
    translate_message_at(body, slug, json_mode, now_secs())
}

fn translate_message_at(
    body: &[u8],
    slug: &str,
    json_mode: bool,
    created: u64,
) -> Result<TranslatedResponse, TranslateError> {
    let message: MessageWireOut = serde_json::from_slice(body)
        .map_err(|e| translate_error(format!("malformed response from Anthropic: {e}")))?;
    if message.kind.as_deref() == Some("error") || message.error.is_some() {
        let (kind, text) = message
            .error
            .map(|e| (e.kind.unwrap_or_default(), e.message.unwrap_or_default()))
            .unwrap_or_default();
        return Err(translate_error(format!(
            "Anthropic returned an error ({kind}): {text}"
        )));
    }
    if let Some(kind) = message.kind.as_deref().filter(|k| *k != "message") {
        return Err(translate_error(format!(
            "unexpected response type '{kind}' from Anthropic"
        )));
    }
    let Some(upstream_id) = message.id else {
        return Err(translate_error("response from Anthropic has no 'id'"));
    };
    let id = format!("{ID_PREFIX}{upstream_id}");

    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let blocks = message.content.unwrap_or_default();
    for block in &blocks {
        match block {
            // Blocks of one answer are consecutive pieces of it (citations split text into
            // several blocks): joined without separator.
            ContentBlockWire::Text(t) => text.push_str(t),
            ContentBlockWire::ToolUse { id, name, input } => tool_calls.push(ToolCallOut {
                id,
                kind: "function",
                function: FunctionOut {
                    name,
                    arguments: input.to_json_string(),
                },
            }),
            ContentBlockWire::Other(kind) => {
                log::debug!("anthropic response: skipping content block of type '{kind}'")
            }
        }
    }
    let content = if json_mode {
        strip_json_fence(&text)
    } else {
        text.as_str()
    };
    // OpenAI sends `content: null` for a message that only calls tools.
    let content = if content.is_empty() && !tool_calls.is_empty() {
        None
    } else {
        Some(content)
    };

    let usage = message.usage.map(UsageWire::to_usage);
    if usage.is_none() {
        log::warn!("anthropic response {upstream_id} reported no usage");
    }
    let completion = ChatCompletionOut {
        id: &id,
        object: "chat.completion",
        created,
        model: slug,
        choices: [ChoiceOut {
            index: 0,
            message: ResponseMessageOut {
                role: "assistant",
                content,
                refusal: None,
                tool_calls,
            },
            logprobs: None,
            finish_reason: finish_reason(message.stop_reason.as_deref()),
        }],
        usage: usage.map(UsageOut::from),
    };
    let body = serde_json::to_vec(&completion)
        .map_err(|e| translate_error(format!("could not encode the response: {e}")))?;
    Ok(TranslatedResponse { body, usage, id })
}

/// Removes a Markdown code fence (```` ```json … ``` ````) around the whole text, which models
/// add despite being asked not to. Anything else is returned unchanged: only a fence that
/// wraps everything is known to be decoration.
fn strip_json_fence(text: &str) -> &str {
    let trimmed = text.trim();
    let Some(inner) = trimmed
        .strip_prefix("```")
        .and_then(|t| t.strip_suffix("```"))
    else {
        return text;
    };
    // The opening line may carry an info string ("json", "JSON"); drop it.
    let inner = match inner.split_once('\n') {
        Some((info, rest)) if info.trim().chars().all(|c| c.is_ascii_alphanumeric()) => rest,
        _ => inner,
    };
    inner.trim()
}

// =============================================================================================
// Streams.

/// The event types of a Messages stream. `Unknown` covers types added later: skipped.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum EventKind {
    MessageStart,
    ContentBlockStart,
    ContentBlockDelta,
    ContentBlockStop,
    MessageDelta,
    MessageStop,
    Ping,
    Error,
    #[serde(other)]
    Unknown,
}

/// Content block types; only text and client tool calls reach an OpenAI client. Thinking,
/// server tools and later additions are `Other`, and their deltas are skipped.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum BlockKind {
    Text,
    ToolUse,
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum DeltaKind {
    TextDelta,
    InputJsonDelta,
    #[serde(other)]
    Other,
}

/// Every event, flat: a flat struct deserialises in one pass over the event (an internally
/// tagged enum would buffer it first), which matters at one event per generated token.
#[derive(Deserialize)]
struct EventWire<'a> {
    #[serde(rename = "type")]
    kind: EventKind,
    index: Option<u64>,
    #[serde(borrow)]
    message: Option<StartMessageWire<'a>>,
    #[serde(borrow)]
    content_block: Option<BlockStartWire<'a>>,
    #[serde(borrow)]
    delta: Option<DeltaWire<'a>>,
    usage: Option<UsageWire>,
    #[serde(borrow)]
    error: Option<ErrorWire<'a>>,
}

#[derive(Deserialize)]
struct StartMessageWire<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    usage: Option<UsageWire>,
}

#[derive(Deserialize)]
struct BlockStartWire<'a> {
    #[serde(rename = "type")]
    kind: BlockKind,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

/// A `content_block_delta`'s delta (typed) or a `message_delta`'s (untyped, with the stop).
#[derive(Deserialize)]
struct DeltaWire<'a> {
    #[serde(rename = "type")]
    kind: Option<DeltaKind>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

/// Only the type tags of an event, read when [`EventWire`] fails, to tell an unknown variant
/// with an unexpected shape (skipped) from a malformed known one (an error).
/// `content_block` and `delta` are read as any value: an unknown event may use those names for
/// something else entirely.
#[derive(Deserialize)]
struct TagsWire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    content_block: Option<Json>,
    delta: Option<Json>,
}

/// Whether `tag` names the catch-all variant `unknown` of a tag enum.
fn is_unknown<'de, T: Deserialize<'de> + PartialEq>(tag: &'de str, unknown: T) -> bool {
    let tag: de::value::StrDeserializer<'de, de::value::Error> = tag.into_deserializer();
    T::deserialize(tag).is_ok_and(|k| k == unknown)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamBlock {
    Text,
    /// A client tool call, with its position among the message's tool calls (OpenAI's index).
    Tool(u32),
    Other,
}

/// What a chunk's `delta` says.
enum Delta<'b> {
    Role,
    Content(&'b str),
    ToolStart {
        index: u32,
        id: &'b str,
        name: &'b str,
    },
    ToolArgs {
        index: u32,
        args: &'b str,
    },
    Finish,
}

/// Translates an Anthropic Messages stream into OpenAI `chat.completion.chunk` events as it
/// arrives, and meters it.
///
/// Every complete upstream event is translated as soon as its blank line is seen; nothing is
/// held back. The output is the same however the input is split into reads.
pub struct AnthropicStream {
    decoder: SseDecoder,
    /// Decoded events waiting to be translated; kept to reuse its allocation.
    events: Vec<SseEvent>,
    slug_json: Vec<u8>,
    include_usage: bool,
    created: u64,
    id: Option<String>,
    /// The id the chunks carry to the client instead of `id` (the gateway's own).
    client_id: Option<String>,
    /// `{"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[`, built
    /// once the id is known, so each chunk costs one copy rather than four escapes.
    head: Vec<u8>,
    /// The chunk being written, reused across events.
    scratch: Vec<u8>,
    /// Content blocks by Anthropic index, in order of appearance (a handful per message).
    blocks: Vec<(u64, StreamBlock)>,
    tool_calls: u32,
    usage_seen: bool,
    input_tokens: u64,
    cache_read: u64,
    cache_write: u64,
    /// `output_tokens` of `message_start` (a token or so) and of `message_delta` (the total).
    start_output: u64,
    final_output: Option<u64>,
    finish_sent: bool,
    /// `message_stop` or an error was handled (or written): later input is ignored.
    finished: bool,
    /// In `on_end`: a last event that does not parse was cut short, not garbled.
    ending: bool,
    generated_chars: u64,
}

impl AnthropicStream {
    /// `include_usage`: the client asked for `stream_options.include_usage`, so a usage-only
    /// chunk (`choices: []`) precedes `[DONE]`.
    pub fn new(slug: &str, include_usage: bool) -> Self {
        Self::with_created(slug, include_usage, now_secs())
    }

    /// Chunks go to the client with `id` as their `id` (the gateway's; see
    /// `store::client_response_id`); `response_id` stays the provider's.
    pub fn with_client_id(mut self, id: &str) -> Self {
        self.client_id = Some(id.to_owned());
        self
    }

    /// [`AnthropicStream::new`] with a fixed `created` timestamp, for output that can be
    /// compared byte for byte (tests, fuzz targets).
    pub fn with_created(slug: &str, include_usage: bool, created: u64) -> Self {
        let mut slug_json = Vec::with_capacity(slug.len() + 2);
        json_scan::write_json_string(&mut slug_json, slug);
        AnthropicStream {
            decoder: SseDecoder::new(),
            events: Vec::new(),
            slug_json,
            include_usage,
            created,
            id: None,
            client_id: None,
            head: Vec::new(),
            scratch: Vec::new(),
            blocks: Vec::new(),
            tool_calls: 0,
            usage_seen: false,
            input_tokens: 0,
            cache_read: 0,
            cache_write: 0,
            start_output: 0,
            final_output: None,
            finish_sent: false,
            finished: false,
            ending: false,
            generated_chars: 0,
        }
    }

    /// Whether the usage is final (`message_delta` reported the output tokens), rather than
    /// the prompt as reported with an estimated completion.
    pub fn usage_is_final(&self) -> bool {
        self.final_output.is_some()
    }

    /// Feeds upstream bytes; appends to `out` the OpenAI events they complete.
    pub fn on_bytes(&mut self, input: &[u8], out: &mut BytesMut) {
        if self.finished {
            return;
        }
        self.decoder.feed(input, &mut self.events);
        self.translate_events(out);
        if let Some(e) = self.decoder.error() {
            if !self.finished {
                // Unlike an OpenAI stream, the bytes cannot be passed through: the client does
                // not speak Anthropic's format. End the stream with an explicit error.
                self.fail(
                    "upstream_error",
                    &format!("could not decode the upstream stream: {e}"),
                    out,
                );
            }
        }
    }

    /// The upstream body ended: translates a last event that lacked its blank line, and ends
    /// the client's stream with an error if Anthropic's never reached `message_stop`.
    pub fn on_end(&mut self, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        self.ending = true;
        self.decoder.finish(&mut self.events);
        self.translate_events(out);
        if !self.finished {
            self.fail("upstream_error", ENDED_EARLY, out);
        }
    }

    /// Usage once Anthropic has reported any: exact after `message_delta`; after only
    /// `message_start`, the exact prompt with an estimated completion (see
    /// [`AnthropicStream::usage_is_final`]).
    pub fn usage(&self) -> Option<Usage> {
        if !self.usage_seen {
            return None;
        }
        let cached = self.cache_read;
        let completion = match self.final_output {
            Some(output) => output,
            // Cut before message_delta: the prompt is known exactly, the output is not. The
            // estimate from the text produced is better than message_start's placeholder.
            None => self.start_output.max(self.estimated_completion_tokens()),
        };
        Some(Usage {
            prompt_tokens: self
                .input_tokens
                .saturating_add(cached)
                .saturating_add(self.cache_write),
            completion_tokens: completion,
            cached_prompt_tokens: cached,
            cache_write_tokens: self.cache_write,
        })
    }

    /// The translated id (`chatcmpl-msg_…`), once `message_start` has given it; the chunks
    /// carry the client id instead if one was set.
    pub fn response_id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Completion tokens estimated from the characters produced so far (text, tool names and
    /// tool arguments, as the OpenAI meter counts them).
    pub fn estimated_completion_tokens(&self) -> u64 {
        estimate::tokens_from_chars(self.generated_chars)
    }

    fn translate_events(&mut self, out: &mut BytesMut) {
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            if !self.finished {
                self.translate(&event.data, out);
            }
        }
        self.events = events;
    }

    fn translate(&mut self, data: &[u8], out: &mut BytesMut) {
        let event: EventWire = match serde_json::from_slice(data) {
            Ok(event) => event,
            Err(e) => return self.malformed(data, &e, out),
        };
        match event.kind {
            EventKind::MessageStart => {
                let Some(message) = event.message else {
                    return self.fail("upstream_error", "message_start without 'message'", out);
                };
                if self.id.is_some() {
                    log::debug!("anthropic stream: ignoring a second message_start");
                    return;
                }
                let upstream = message.id.as_deref().unwrap_or("unknown");
                self.set_id(format!("{ID_PREFIX}{upstream}"));
                if let Some(usage) = message.usage {
                    self.record_usage(usage, false);
                }
                self.write_chunk(Delta::Role, None, out);
            }
            EventKind::ContentBlockStart => {
                let (Some(index), Some(block)) = (event.index, event.content_block) else {
                    return self.fail(
                        "upstream_error",
                        "content_block_start without 'index' or 'content_block'",
                        out,
                    );
                };
                match block.kind {
                    BlockKind::Text => {
                        self.blocks.push((index, StreamBlock::Text));
                        // Normally empty; text given here is part of the answer all the same.
                        if let Some(text) = block.text.filter(|t| !t.is_empty()) {
                            self.count(&text);
                            self.write_chunk(Delta::Content(&text), None, out);
                        }
                    }
                    BlockKind::ToolUse => {
                        let tool = self.tool_calls;
                        self.tool_calls = tool.saturating_add(1);
                        self.blocks.push((index, StreamBlock::Tool(tool)));
                        let id = block.id.unwrap_or_default();
                        let name = block.name.unwrap_or_default();
                        self.count(&name);
                        self.write_chunk(
                            Delta::ToolStart {
                                index: tool,
                                id: &id,
                                name: &name,
                            },
                            None,
                            out,
                        );
                    }
                    BlockKind::Other => {
                        self.blocks.push((index, StreamBlock::Other));
                        log::debug!("anthropic stream: skipping a content block of a type OpenAI has no place for");
                    }
                }
            }
            EventKind::ContentBlockDelta => {
                let Some(delta) = event.delta else {
                    return self.fail("upstream_error", "content_block_delta without 'delta'", out);
                };
                let block = event.index.and_then(|i| self.block(i));
                match (delta.kind, block) {
                    // Text of a block we were not told about is still the answer's text.
                    (
                        Some(DeltaKind::TextDelta),
                        Some(StreamBlock::Text | StreamBlock::Tool(_)) | None,
                    ) => {
                        let text = delta.text.unwrap_or_default();
                        self.count(&text);
                        self.write_chunk(Delta::Content(&text), None, out);
                    }
                    (Some(DeltaKind::InputJsonDelta), Some(StreamBlock::Tool(index))) => {
                        let args = delta.partial_json.unwrap_or_default();
                        self.count(&args);
                        self.write_chunk(Delta::ToolArgs { index, args: &args }, None, out);
                    }
                    _ => log::debug!(
                        "anthropic stream: skipping a delta for a block OpenAI has no place for"
                    ),
                }
            }
            EventKind::ContentBlockStop | EventKind::Ping => {}
            EventKind::MessageDelta => {
                if let Some(usage) = event.usage {
                    self.record_usage(usage, true);
                }
                let stop_reason = event.delta.and_then(|d| d.stop_reason);
                if let Some(reason) = stop_reason.as_deref() {
                    if !self.finish_sent {
                        self.write_chunk(Delta::Finish, Some(finish_reason(Some(reason))), out);
                    }
                }
            }
            EventKind::MessageStop => {
                if !self.finish_sent {
                    self.write_chunk(Delta::Finish, Some("stop"), out);
                }
                if self.include_usage {
                    if let Some(usage) = self.usage() {
                        self.write_usage_chunk(usage, out);
                    }
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.finished = true;
            }
            EventKind::Error => {
                let (kind, message) = match &event.error {
                    Some(e) => (
                        e.kind.as_deref().unwrap_or("upstream_error"),
                        e.message.as_deref().unwrap_or("upstream error"),
                    ),
                    None => ("upstream_error", "upstream error"),
                };
                self.fail(kind, message, out);
            }
            EventKind::Unknown => log::debug!(
                "anthropic stream: skipping an event of unknown type: {}",
                String::from_utf8_lossy(data.get(..200).unwrap_or(data))
            ),
        }
    }

    /// An event that did not fit [`EventWire`]: skipped if it is of a type we do not know
    /// (its shape is its own business), otherwise the stream ends with an error.
    fn malformed(&mut self, data: &[u8], e: &serde_json::Error, out: &mut BytesMut) {
        if let Ok(tags) = serde_json::from_slice::<TagsWire>(data) {
            let unknown_event = is_unknown(&tags.kind, EventKind::Unknown);
            let tag = |value: &Option<Json>| -> Option<String> {
                value.as_ref()?.get("type")?.as_str().map(str::to_owned)
            };
            let unknown_block =
                tag(&tags.content_block).is_some_and(|k| is_unknown(&k, BlockKind::Other));
            let unknown_delta = tag(&tags.delta).is_some_and(|k| is_unknown(&k, DeltaKind::Other));
            if unknown_event || unknown_block || unknown_delta {
                log::debug!(
                    "anthropic stream: skipping an event of unknown shape: {}",
                    String::from_utf8_lossy(data.get(..200).unwrap_or(data))
                );
                return;
            }
        }
        if self.ending && e.is_eof() {
            // The body ended inside this event: say so, rather than blame its syntax.
            return self.fail("upstream_error", ENDED_EARLY, out);
        }
        self.fail(
            "upstream_error",
            &format!("malformed event in the upstream stream: {e}"),
            out,
        );
    }

    fn block(&self, index: u64) -> Option<StreamBlock> {
        self.blocks
            .iter()
            .rev()
            .find(|(i, _)| *i == index)
            .map(|(_, b)| *b)
    }

    fn count(&mut self, text: &str) {
        let chars = text.chars().count() as u64;
        self.generated_chars = self.generated_chars.saturating_add(chars);
    }

    fn record_usage(&mut self, usage: UsageWire, from_delta: bool) {
        self.usage_seen = true;
        // message_delta's counts are cumulative (and, in recent API versions, include the input
        // counts, which can grow with server tools): the latest value wins.
        if let Some(v) = usage.input_tokens {
            self.input_tokens = v;
        }
        if let Some(v) = usage.cache_read_input_tokens {
            self.cache_read = v;
        }
        if let Some(v) = usage.cache_creation_input_tokens {
            self.cache_write = v;
        }
        if let Some(v) = usage.output_tokens {
            if from_delta {
                self.final_output = Some(v);
            } else {
                self.start_output = v;
            }
        }
    }

    fn set_id(&mut self, id: String) {
        let mut head = Vec::with_capacity(id.len() + self.slug_json.len() + 96);
        head.extend_from_slice(b"{\"id\":");
        json_scan::write_json_string(&mut head, self.client_id.as_deref().unwrap_or(&id));
        head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        let _ = write!(head, "{}", self.created);
        head.extend_from_slice(b",\"model\":");
        head.extend_from_slice(&self.slug_json);
        head.extend_from_slice(b",\"choices\":[");
        self.head = head;
        self.id = Some(id);
    }

    /// Content before `message_start` (a malformed stream) still needs an id.
    fn ensure_head(&mut self) {
        if self.id.is_none() {
            self.set_id(format!("{ID_PREFIX}anthropic-{}", self.created));
        }
    }

    fn write_chunk(&mut self, delta: Delta<'_>, finish: Option<&str>, out: &mut BytesMut) {
        self.ensure_head();
        let buf = &mut self.scratch;
        buf.clear();
        buf.extend_from_slice(b"data: ");
        buf.extend_from_slice(&self.head);
        buf.extend_from_slice(b"{\"index\":0,\"delta\":");
        match delta {
            Delta::Role => buf.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\"}"),
            Delta::Content(text) => {
                buf.extend_from_slice(b"{\"content\":");
                json_scan::write_json_string(buf, text);
                buf.push(b'}');
            }
            Delta::ToolStart { index, id, name } => {
                let _ = write!(buf, "{{\"tool_calls\":[{{\"index\":{index},\"id\":");
                json_scan::write_json_string(buf, id);
                buf.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                json_scan::write_json_string(buf, name);
                buf.extend_from_slice(b",\"arguments\":\"\"}}]}");
            }
            Delta::ToolArgs { index, args } => {
                let _ = write!(
                    buf,
                    "{{\"tool_calls\":[{{\"index\":{index},\"function\":{{\"arguments\":"
                );
                json_scan::write_json_string(buf, args);
                buf.extend_from_slice(b"}}]}");
            }
            Delta::Finish => buf.extend_from_slice(b"{}"),
        }
        buf.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(reason) => {
                json_scan::write_json_string(buf, reason);
                self.finish_sent = true;
            }
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b"}]}\n\n");
        out.extend_from_slice(buf);
    }

    fn write_usage_chunk(&mut self, usage: Usage, out: &mut BytesMut) {
        self.ensure_head();
        let buf = &mut self.scratch;
        buf.clear();
        buf.extend_from_slice(b"data: ");
        buf.extend_from_slice(&self.head);
        let _ = write!(
            buf,
            "],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":{}}}}}}}\n\n",
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens(),
            usage.cached_prompt_tokens,
        );
        out.extend_from_slice(buf);
    }

    /// Writes an OpenAI-style error event and ends the stream (no `[DONE]`: the stream failed).
    fn fail(&mut self, kind: &str, message: &str, out: &mut BytesMut) {
        let buf = &mut self.scratch;
        buf.clear();
        buf.extend_from_slice(b"data: {\"error\":{\"message\":");
        json_scan::write_json_string(buf, message);
        buf.extend_from_slice(b",\"type\":");
        json_scan::write_json_string(buf, kind);
        buf.extend_from_slice(b",\"code\":\"upstream_error\",\"param\":null}}\n\n");
        out.extend_from_slice(buf);
        self.finished = true;
    }
}

impl StreamMeter for AnthropicStream {
    fn on_bytes(&mut self, input: &[u8], out: &mut BytesMut) {
        AnthropicStream::on_bytes(self, input, out)
    }
    fn on_end(&mut self, out: &mut BytesMut) {
        AnthropicStream::on_end(self, out)
    }
    fn usage(&self) -> Option<Usage> {
        AnthropicStream::usage(self)
    }
    fn response_id(&self) -> Option<&str> {
        AnthropicStream::response_id(self)
    }
    fn upstream_id(&self) -> Option<&str> {
        self.id.as_deref().and_then(upstream_id)
    }
    fn estimated_completion_tokens(&self) -> u64 {
        AnthropicStream::estimated_completion_tokens(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const SLUG: &str = "anthropic/claude-sonnet-4.5";
    const MODEL: &str = "claude-sonnet-4-5-20250929";

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/anthropic/", $name))
        };
    }

    fn value(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
    }

    fn without_created(mut v: Value) -> Value {
        if let Some(object) = v.as_object_mut() {
            object.remove("created");
        }
        v
    }

    fn translate(body: &Value) -> Result<Value, RequestError> {
        translate_request(&serde_json::to_vec(body).unwrap(), MODEL, 4096).map(|out| value(&out))
    }

    /// A chat request with `extra` merged into its top level.
    fn chat(messages: Value, extra: Value) -> Value {
        let mut body = json!({"model": "m", "messages": messages});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            body[k] = v;
        }
        body
    }

    fn user(text: &str) -> Value {
        json!([{"role": "user", "content": text}])
    }

    // -----------------------------------------------------------------------------------------
    // Requests.

    #[test]
    fn request_fixtures() {
        let cases = [
            (
                "plain",
                fixture!("request_plain.openai.json"),
                fixture!("request_plain.anthropic.json"),
            ),
            (
                "multiturn",
                fixture!("request_multiturn.openai.json"),
                fixture!("request_multiturn.anthropic.json"),
            ),
            (
                "vision",
                fixture!("request_vision.openai.json"),
                fixture!("request_vision.anthropic.json"),
            ),
            (
                "tools",
                fixture!("request_tools.openai.json"),
                fixture!("request_tools.anthropic.json"),
            ),
            (
                "json_mode",
                fixture!("request_json_mode.openai.json"),
                fixture!("request_json_mode.anthropic.json"),
            ),
        ];
        for (name, openai, anthropic) in cases {
            let out = translate_request(openai.as_bytes(), MODEL, 4096)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(
                value(&out),
                value(anthropic.as_bytes()),
                "{name}: {}",
                String::from_utf8_lossy(&out)
            );
        }
        assert!(json_mode(
            fixture!("request_json_mode.openai.json").as_bytes()
        ));
        assert!(!json_mode(fixture!("request_plain.openai.json").as_bytes()));
    }

    #[test]
    fn schemas_and_arguments_keep_their_member_order() {
        let out =
            translate_request(fixture!("request_tools.openai.json").as_bytes(), MODEL, 1).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(r#""input_schema":{"type":"object","properties":{"unit":{"type":"string","enum":["celsius","fahrenheit"]},"city":{"type":"string"}},"required":["city"]}"#),
            "{text}"
        );
        let body = chat(
            json!([{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "f", "arguments": "{\"z\":1,\"a\":{\"y\":2,\"b\":[3]},\"z\":4}"}}]}]),
            json!({}),
        );
        let out = translate_request(&serde_json::to_vec(&body).unwrap(), MODEL, 1).unwrap();
        let text = String::from_utf8(out).unwrap();
        // Order and even the duplicate are passed on as the client wrote them.
        assert!(
            text.contains(r#""input":{"z":1,"a":{"y":2,"b":[3]},"z":4}"#),
            "{text}"
        );
    }

    #[test]
    fn request_errors_name_the_parameter() {
        let bad_args = |args: &str| {
            chat(
                json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": null,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}}]}]),
                json!({}),
            )
        };
        let part = |p: Value| {
            chat(
                json!([{"role": "user", "content": [{"type": "text", "text": "x"}, p]}]),
                json!({}),
            )
        };
        let image = |url: &str| part(json!({"type": "image_url", "image_url": {"url": url}}));
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                chat(user("hi"), json!({"n": 2})),
                "n > 1 is not supported by this provider",
                "n",
            ),
            (
                json!({"model": "m"}),
                "missing required field 'messages'",
                "messages",
            ),
            (
                chat(json!([]), json!({})),
                "'messages' must contain at least one",
                "messages",
            ),
            (
                chat(json!([{"role": "system", "content": "x"}]), json!({})),
                "'messages' must contain",
                "messages",
            ),
            (
                chat(json!([{"role": "user", "content": ""}]), json!({})),
                "'messages' must contain",
                "messages",
            ),
            (
                chat(json!([{"role": "wizard", "content": "x"}]), json!({})),
                "unknown message role 'wizard'",
                "messages[0].role",
            ),
            (
                chat(
                    json!([{"role": "function", "name": "f", "content": "x"}]),
                    json!({}),
                ),
                "the deprecated 'function' role",
                "messages[0].role",
            ),
            (
                chat(
                    json!([{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}]),
                    json!({}),
                ),
                "the deprecated 'function_call'",
                "messages[0].function_call",
            ),
            (
                bad_args("{\"city\":"),
                "tool call arguments are not valid JSON",
                "messages[1].tool_calls[0].function.arguments",
            ),
            (
                bad_args("[1,2]"),
                "tool call arguments must be a JSON object",
                "messages[1].tool_calls[0].function.arguments",
            ),
            (
                chat(
                    json!([{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]),
                    json!({}),
                ),
                "a tool call needs 'id'",
                "messages[0].tool_calls[0].id",
            ),
            (
                chat(json!([{"role": "tool", "content": "42"}]), json!({})),
                "a 'tool' message needs 'tool_call_id'",
                "messages[0].tool_call_id",
            ),
            (
                image("data:image/bmp;base64,Qk0="),
                "unsupported image type 'image/bmp'",
                "messages[0].content[1].image_url.url",
            ),
            (
                image("data:image/png,%89PNG"),
                "an image URL must be",
                "messages[0].content[1].image_url.url",
            ),
            (
                image("ftp://example.com/a.png"),
                "an image URL must be",
                "messages[0].content[1].image_url.url",
            ),
            (
                part(
                    json!({"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}),
                ),
                "content part type 'input_audio' is not supported in user messages",
                "messages[0].content[1].type",
            ),
            (
                part(json!({"type": "text"})),
                "a text part needs 'text'",
                "messages[0].content[1].text",
            ),
            (
                part(json!({"type": "file", "file": {"file_id": "file-abc"}})),
                "uploaded files ('file_id')",
                "messages[0].content[1].file",
            ),
            (
                part(json!({"type": "file", "file": {"file_data": "data:text/plain;base64,aGk="}})),
                "only PDF files",
                "messages[0].content[1].file.file_data",
            ),
            (
                chat(
                    json!([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}, {"role": "user", "content": "hi"}]),
                    json!({}),
                ),
                "content part type 'image_url' is not supported in system messages",
                "messages[0].content[0].type",
            ),
            (
                chat(
                    user("hi"),
                    json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]}),
                ),
                "tool type 'custom' is not supported",
                "tools[0].type",
            ),
            (
                chat(
                    user("hi"),
                    json!({"tools": [{"type": "function", "function": {"description": "d"}}]}),
                ),
                "a tool needs 'function.name'",
                "tools[0].function.name",
            ),
            (
                chat(
                    user("hi"),
                    json!({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}),
                ),
                "'tool_choice' must be",
                "tool_choice",
            ),
            (
                chat(
                    user("hi"),
                    json!({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "allowed_tools"}}),
                ),
                "'tool_choice' must be",
                "tool_choice",
            ),
            (
                chat(user("hi"), json!({"functions": [{"name": "f"}]})),
                "the deprecated 'functions'",
                "functions",
            ),
            (
                chat(user("hi"), json!({"temperature": "hot"})),
                "invalid 'temperature': invalid type",
                "temperature",
            ),
            (
                chat(user("hi"), json!({"max_tokens": -1})),
                "invalid 'max_tokens'",
                "max_tokens",
            ),
            (
                chat(user("hi"), json!({"messages": "hello"})),
                "invalid 'messages'",
                "messages",
            ),
            (
                chat(user("hi"), json!({"stop": 5})),
                "'stop' must be a string or an array of strings",
                "stop",
            ),
            (
                chat(user("hi"), json!({"stop": ["a", 1]})),
                "'stop' must be a string or an array of strings",
                "stop",
            ),
            (
                chat(user("hi"), json!({"response_format": {"type": "xml"}})),
                "response_format type 'xml' is not supported",
                "response_format.type",
            ),
        ];
        for (body, message, param) in cases {
            let err = translate(&body).expect_err(&body.to_string());
            assert!(err.message.starts_with(message), "{body}: {}", err.message);
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
        }
        for raw in [
            &b"[1]"[..],
            b"",
            b"{\"model\":",
            b"not json",
            b"{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}x",
        ] {
            let err = translate_request(raw, MODEL, 1).expect_err(&String::from_utf8_lossy(raw));
            assert_eq!(err.param, None);
            assert!(
                err.message
                    .starts_with("request body is not a valid JSON object"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn max_tokens_stop_sampling_and_user() {
        let t = |extra: Value| translate(&chat(user("hi"), extra)).unwrap();
        assert_eq!(t(json!({}))["max_tokens"], 4096);
        assert_eq!(t(json!({"max_tokens": 10}))["max_tokens"], 10);
        assert_eq!(
            t(json!({"max_completion_tokens": 20, "max_tokens": null}))["max_tokens"],
            20
        );
        // Both given: the larger, as the gateway reserved for.
        assert_eq!(
            t(json!({"max_tokens": 30, "max_completion_tokens": 20}))["max_tokens"],
            30
        );
        let out = t(
            json!({"stop": ["END", "\n\n"], "top_k": 40, "temperature": 1, "stream": true,
            "safety_identifier": "hash-1", "logit_bias": {"50256": -100}, "service_tier": "auto", "n": null}),
        );
        assert_eq!(out["stop_sequences"], json!(["END", "\n\n"]));
        assert_eq!(
            (
                out["top_k"].clone(),
                out["temperature"].clone(),
                out["stream"].clone()
            ),
            (json!(40), json!(1.0), json!(true))
        );
        assert_eq!(out["metadata"], json!({"user_id": "hash-1"}));
        assert_eq!(out.as_object().unwrap().len(), 8, "{out}");
        // `user` wins over `safety_identifier`; an empty one is no user at all.
        assert_eq!(
            t(json!({"user": "u", "safety_identifier": "s"}))["metadata"]["user_id"],
            "u"
        );
        assert!(t(json!({"user": ""})).get("metadata").is_none());
        assert!(t(json!({"stop": null})).get("stop_sequences").is_none());
        assert!(t(json!({"stop": []})).get("stop_sequences").is_none());
        // The last of a repeated field wins, as in serde-based servers.
        let raw = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"max_tokens":2}"#;
        assert_eq!(
            value(&translate_request(raw, MODEL, 9).unwrap())["max_tokens"],
            2
        );
        // Escaped keys are read decoded.
        let raw = br#"{"model":"m","m\u0065ssages":[{"role":"user","content":"hi"}],"max_tok\u0065ns":3}"#;
        assert_eq!(
            value(&translate_request(raw, MODEL, 9).unwrap())["max_tokens"],
            3
        );
    }

    #[test]
    fn tool_choice_and_parallel_calls() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        let choice = |extra: Value| {
            let mut extra = extra;
            extra["tools"] = tools.clone();
            translate(&chat(user("hi"), extra))
                .unwrap()
                .get("tool_choice")
                .cloned()
        };
        assert_eq!(choice(json!({})), None);
        assert_eq!(
            choice(json!({"tool_choice": "auto"})),
            Some(json!({"type": "auto"}))
        );
        assert_eq!(
            choice(json!({"tool_choice": "none"})),
            Some(json!({"type": "none"}))
        );
        assert_eq!(
            choice(json!({"tool_choice": "required"})),
            Some(json!({"type": "any"}))
        );
        assert_eq!(choice(json!({"tool_choice": null})), None);
        assert_eq!(
            choice(json!({"tool_choice": "required", "parallel_tool_calls": false})),
            Some(json!({"type": "any", "disable_parallel_tool_use": true}))
        );
        assert_eq!(
            choice(json!({"parallel_tool_calls": false})),
            Some(json!({"type": "auto", "disable_parallel_tool_use": true}))
        );
        assert_eq!(
            choice(json!({"tool_choice": "none", "parallel_tool_calls": false})),
            Some(json!({"type": "none"}))
        );
        assert_eq!(
            choice(json!({"tool_choice": "auto", "parallel_tool_calls": true})),
            Some(json!({"type": "auto"}))
        );
        // No tools: no tool_choice (Anthropic refuses one on its own).
        let out = translate(&chat(
            user("hi"),
            json!({"tool_choice": "required", "parallel_tool_calls": false, "tools": []}),
        ))
        .unwrap();
        assert!(
            out.get("tool_choice").is_none() && out.get("tools").is_none(),
            "{out}"
        );
    }

    #[test]
    fn turns_merge_alternate_and_order_tool_results_first() {
        let body = chat(
            json!([
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "Run it."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Running."}, {"type": "refusal", "refusal": "Not that part."}],
                 "tool_calls": [{"id": "functions.run:0", "type": "function", "function": {"name": "run", "arguments": ""}}]},
                {"role": "user", "content": "Also, hurry."},
                {"role": "tool", "tool_call_id": "functions.run:0", "content": ""},
                {"role": "tool", "tool_call_id": "x", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": "https://h/p.png"}]},
                {"role": "assistant", "content": "The answer is  \n"}
            ]),
            json!({}),
        );
        let out = translate(&body).unwrap();
        assert_eq!(
            out["messages"],
            json!([
                // A leading assistant turn is kept: order is the client's.
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Run it."},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Running."},
                    {"type": "text", "text": "Not that part."},
                    {"type": "tool_use", "id": "functions_run_0", "name": "run", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "functions_run_0"},
                    {"type": "tool_result", "tool_use_id": "x", "content": [
                        {"type": "text", "text": "a"},
                        {"type": "image", "source": {"type": "url", "url": "https://h/p.png"}}
                    ]},
                    {"type": "text", "text": "Also, hurry."}
                ]},
                // A final assistant turn (a prefill) loses its trailing whitespace.
                {"role": "assistant", "content": "The answer is"}
            ])
        );
        // A whitespace-only prefill disappears, rather than being refused upstream.
        let out = translate(&chat(
            json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": " \n"}]),
            json!({}),
        ))
        .unwrap();
        assert_eq!(out["messages"], json!([{"role": "user", "content": "hi"}]));
    }

    #[test]
    fn images_and_documents() {
        let png = "iVBORw0KGgo=";
        let body = chat(
            json!([{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": format!("DATA:Image/JPG;base64,{png}")}},
                {"type": "image_url", "image_url": {"url": format!("data:image/webp;charset=x;base64,{png}")}},
                {"type": "image_url", "image_url": {"url": "HTTPS://EXAMPLE.COM/A.GIF"}},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0xLjQ=", "filename": "a.pdf"}}
            ]}]),
            json!({}),
        );
        let out = translate(&body).unwrap();
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": png}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": png}},
                {"type": "image", "source": {"type": "url", "url": "HTTPS://EXAMPLE.COM/A.GIF"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQ="}}
            ])
        );
        // An escaped data URL (some encoders write `\/`) is decoded, then sliced.
        let raw = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image\/png;base64,ab\/c+"}}]}]}"#;
        let out = value(&translate_request(raw, MODEL, 1).unwrap());
        assert_eq!(
            out["messages"][0]["content"][0]["source"],
            json!({"type": "base64", "media_type": "image/png", "data": "ab/c+"})
        );
    }

    #[test]
    fn json_object_mode_without_a_system_prompt() {
        let out = translate(&chat(
            user("List three colours."),
            json!({"response_format": {"type": "json_object"}}),
        ))
        .unwrap();
        let system = out["system"].as_str().unwrap();
        assert!(
            system.starts_with("Respond with only a single valid JSON object."),
            "{system}"
        );
        assert!(!system.contains("Schema"));
        let out = translate(&chat(
            user("hi"),
            json!({"response_format": {"type": "text"}}),
        ))
        .unwrap();
        assert!(out.get("system").is_none());
        let body = chat(
            user("hi"),
            json!({"response_format": {"type": "json_object"}}),
        );
        assert!(json_mode(&serde_json::to_vec(&body).unwrap()));
        assert!(!json_mode(b"{\"response_format\":{\"type\":\"text\"}}"));
        assert!(!json_mode(b"{\"response_format\":"));
    }

    // -----------------------------------------------------------------------------------------
    // Responses.

    #[test]
    fn response_fixtures() {
        let cases = [
            (
                "text",
                fixture!("response_text.anthropic.json"),
                fixture!("response_text.openai.json"),
                false,
            ),
            (
                "tool_use",
                fixture!("response_tool_use.anthropic.json"),
                fixture!("response_tool_use.openai.json"),
                false,
            ),
            (
                "max_tokens",
                fixture!("response_max_tokens.anthropic.json"),
                fixture!("response_max_tokens.openai.json"),
                false,
            ),
            (
                "json_fenced",
                fixture!("response_json_fenced.anthropic.json"),
                fixture!("response_json_fenced.openai.json"),
                true,
            ),
        ];
        for (name, anthropic, openai, json_mode) in cases {
            let (out, usage) = translate_response(anthropic.as_bytes(), SLUG, json_mode)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let got = value(&out);
            assert!(
                got["created"].as_u64().is_some_and(|t| t > 1_700_000_000),
                "{name}"
            );
            assert_eq!(
                without_created(got),
                without_created(value(openai.as_bytes())),
                "{name}"
            );
            let want = value(openai.as_bytes())["usage"].clone();
            assert_eq!(
                usage.prompt_tokens,
                want["prompt_tokens"].as_u64().unwrap(),
                "{name}"
            );
            assert_eq!(
                usage.completion_tokens,
                want["completion_tokens"].as_u64().unwrap(),
                "{name}"
            );
        }
        let (_, usage) = translate_response(
            fixture!("response_tool_use.anthropic.json").as_bytes(),
            SLUG,
            false,
        )
        .unwrap();
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 1692,
                completion_tokens: 87,
                cached_prompt_tokens: 1024,
                cache_write_tokens: 256
            }
        );
        let message = translate_message(
            fixture!("response_text.anthropic.json").as_bytes(),
            SLUG,
            false,
        )
        .unwrap();
        assert_eq!(message.id, "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL");
        assert_eq!(
            crate::providers::openai::response_id(&message.body).as_deref(),
            Some(message.id.as_str())
        );
        // The fenced answer is left alone when the client did not ask for JSON.
        let (out, _) = translate_response(
            fixture!("response_json_fenced.anthropic.json").as_bytes(),
            SLUG,
            false,
        )
        .unwrap();
        assert!(value(&out)["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("```json\n"));
    }

    #[test]
    fn finish_reasons() {
        for (stop, finish) in [
            (json!("end_turn"), "stop"),
            (json!("stop_sequence"), "stop"),
            (json!("pause_turn"), "stop"),
            (json!("max_tokens"), "length"),
            (json!("model_context_window_exceeded"), "length"),
            (json!("tool_use"), "tool_calls"),
            (json!("refusal"), "content_filter"),
            (json!("something_new"), "stop"),
            (json!(null), "stop"),
        ] {
            let body = json!({"id": "msg_1", "type": "message", "content": [{"type": "text", "text": "x"}], "stop_reason": stop});
            let (out, _) =
                translate_response(&serde_json::to_vec(&body).unwrap(), SLUG, false).unwrap();
            assert_eq!(value(&out)["choices"][0]["finish_reason"], finish, "{stop}");
        }
    }

    #[test]
    fn response_shapes() {
        // Only tool calls: `content` is null, as OpenAI sends it.
        let body = json!({"id": "msg_2", "type": "message", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "f"},
            {"type": "server_tool_use", "id": 5, "input": "odd"},
            {"type": "web_search_tool_result", "content": [{"type": "web_search_result"}]}
        ], "stop_reason": "tool_use"});
        let message = translate_message(&serde_json::to_vec(&body).unwrap(), SLUG, false).unwrap();
        let out = value(&message.body);
        assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(
            out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
        // No usage: none reported (the caller estimates), and none invented in the body.
        assert_eq!(message.usage, None);
        assert!(out.get("usage").is_none());
        let (_, usage) =
            translate_response(&serde_json::to_vec(&body).unwrap(), SLUG, false).unwrap();
        assert_eq!(usage, Usage::default());
        // No content at all: an empty string.
        let (out, _) = translate_response(
            br#"{"id":"msg_3","type":"message","content":[]}"#,
            SLUG,
            false,
        )
        .unwrap();
        assert_eq!(value(&out)["choices"][0]["message"]["content"], "");
        let (out, _) =
            translate_response(br#"{"id":"msg_3","content":null}"#, SLUG, false).unwrap();
        assert_eq!(value(&out)["choices"][0]["message"]["content"], "");
    }

    #[test]
    fn malformed_responses_are_errors() {
        let cases: [(&[u8], &str); 8] = [
            (b"<html>502</html>", "malformed response from Anthropic"),
            (b"", "malformed response from Anthropic"),
            (
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                "Anthropic returned an error (overloaded_error): Overloaded",
            ),
            (
                br#"{"type":"completion","id":"x"}"#,
                "unexpected response type 'completion'",
            ),
            (
                br#"{"type":"message","content":[]}"#,
                "response from Anthropic has no 'id'",
            ),
            (
                br#"{"id":"m","content":[{"type":"text","text":7}]}"#,
                "malformed response from Anthropic",
            ),
            (
                br#"{"id":"m","content":[{"text":"x"}]}"#,
                "malformed response from Anthropic",
            ),
            (
                br#"{"id":"m","content":[{"type":"tool_use","input":{}}]}"#,
                "malformed response from Anthropic",
            ),
        ];
        for (body, message) in cases {
            let err =
                translate_response(body, SLUG, false).expect_err(&String::from_utf8_lossy(body));
            assert!(err.message.starts_with(message), "{}", err.message);
        }
        // Every truncation of a real response is an error, never a panic or a partial success.
        let full = fixture!("response_tool_use.anthropic.json")
            .trim_end()
            .as_bytes();
        for cut in 0..full.len() {
            assert!(
                translate_response(&full[..cut], SLUG, false).is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn json_fences() {
        let cases = [
            ("```json\n{\"a\":1}\n```", "{\"a\":1}"),
            ("  ```JSON\r\n{\"a\":1}\r\n```\n", "{\"a\":1}"),
            ("```\n[1, 2]\n```", "[1, 2]"),
            ("```{\"a\":1}```", "{\"a\":1}"),
            ("{\"a\":\"```\"}", "{\"a\":\"```\"}"),
            (
                "Here you go:\n```json\n{}\n```",
                "Here you go:\n```json\n{}\n```",
            ),
            ("```", "```"),
            ("``````", ""),
            ("", ""),
        ];
        for (text, want) in cases {
            assert_eq!(strip_json_fence(text), want, "{text:?}");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Streams.

    fn run(chunks: &[&[u8]], include_usage: bool) -> (Vec<u8>, AnthropicStream) {
        let mut stream = AnthropicStream::with_created(SLUG, include_usage, 0);
        let mut out = BytesMut::new();
        for chunk in chunks {
            stream.on_bytes(chunk, &mut out);
        }
        stream.on_end(&mut out);
        (out.to_vec(), stream)
    }

    /// The events of an OpenAI stream: each is `data: …\n\n`, parsed (or `[DONE]`).
    fn events(sse: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(sse).expect("UTF-8 output");
        assert!(text.is_empty() || text.ends_with("\n\n"), "{text}");
        text.split_terminator("\n\n")
            .map(|event| {
                let data = event
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data event: {event:?}"));
                assert!(!data.contains('\n'), "{data:?}");
                if data == "[DONE]" {
                    Value::String("[DONE]".into())
                } else {
                    without_created(value(data.as_bytes()))
                }
            })
            .collect()
    }

    struct StreamCase {
        name: &'static str,
        input: &'static str,
        expected: &'static str,
        include_usage: bool,
        usage: Usage,
        id: &'static str,
    }

    fn stream_cases() -> [StreamCase; 4] {
        [
            StreamCase {
                name: "text",
                input: fixture!("stream_text.anthropic.sse"),
                expected: fixture!("stream_text.openai.sse"),
                include_usage: true,
                usage: Usage {
                    prompt_tokens: 25,
                    completion_tokens: 12,
                    ..Usage::default()
                },
                id: "chatcmpl-msg_01Y3kPq7TnRv2Xc9",
            },
            StreamCase {
                name: "tool_call",
                input: fixture!("stream_tool_call.anthropic.sse"),
                expected: fixture!("stream_tool_call.openai.sse"),
                include_usage: false,
                usage: Usage {
                    prompt_tokens: 2520,
                    completion_tokens: 89,
                    cached_prompt_tokens: 2048,
                    cache_write_tokens: 0,
                },
                id: "chatcmpl-msg_014p7gG3wDgGV9EUtLvnow3U",
            },
            StreamCase {
                name: "ping_unknown",
                input: fixture!("stream_ping_unknown.anthropic.sse"),
                expected: fixture!("stream_ping_unknown.openai.sse"),
                include_usage: true,
                usage: Usage {
                    prompt_tokens: 1509,
                    completion_tokens: 5,
                    cached_prompt_tokens: 0,
                    cache_write_tokens: 1500,
                },
                id: "chatcmpl-msg_01PingUnknown5Hx",
            },
            StreamCase {
                name: "error",
                input: fixture!("stream_error.anthropic.sse"),
                expected: fixture!("stream_error.openai.sse"),
                include_usage: true,
                // Cut before message_delta: the prompt as reported, the output estimated from
                // the 12 characters the client received.
                usage: Usage {
                    prompt_tokens: 30,
                    completion_tokens: 3,
                    ..Usage::default()
                },
                id: "chatcmpl-msg_01ErrMidStream9Kp",
            },
        ]
    }

    #[test]
    fn stream_fixtures() {
        for case in stream_cases() {
            let input = case.input.as_bytes();
            let (whole, stream) = run(&[input], case.include_usage);
            assert_eq!(
                events(&whole),
                events(case.expected.as_bytes()),
                "{}: {}",
                case.name,
                String::from_utf8_lossy(&whole)
            );
            assert_eq!(stream.usage(), Some(case.usage), "{}", case.name);
            assert_eq!(stream.response_id(), Some(case.id), "{}", case.name);
            // The same however the upstream splits it: at every byte, and byte by byte.
            for cut in 0..=input.len() {
                let (out, split) = run(&[&input[..cut], &input[cut..]], case.include_usage);
                assert!(out == whole, "{}: split at {cut}", case.name);
                assert_eq!(
                    split.usage(),
                    Some(case.usage),
                    "{}: split at {cut}",
                    case.name
                );
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            let (out, _) = run(&bytes, case.include_usage);
            assert!(out == whole, "{}: byte by byte", case.name);
            // CRLF line endings are the same stream.
            let crlf = case.input.replace('\n', "\r\n");
            assert!(
                run(&[crlf.as_bytes()], case.include_usage).0 == whole,
                "{}: CRLF",
                case.name
            );
        }
    }

    #[test]
    fn every_event_is_written_as_soon_as_it_is_complete() {
        let input = fixture!("stream_text.anthropic.sse").as_bytes();
        let mut stream = AnthropicStream::with_created(SLUG, true, 0);
        let mut out = BytesMut::new();
        let mut written = 0;
        for event in input
            .split_inclusive(|&b| b == b'\n')
            .collect::<Vec<_>>()
            .chunks(3)
        {
            for line in event {
                stream.on_bytes(line, &mut out);
            }
            // A complete Anthropic event that carries content has produced its chunk already.
            let data =
                String::from_utf8_lossy(event.get(1).copied().unwrap_or_default()).into_owned();
            if data.contains("text_delta")
                || data.contains("message_start")
                || data.contains("message_stop")
            {
                assert!(out.len() > written, "held back: {data}");
            }
            written = out.len();
        }
        stream.on_end(&mut out);
        assert_eq!(out.len(), written, "nothing left for on_end");
    }

    #[test]
    fn stream_without_usage_chunk_and_usage_progress() {
        let input = fixture!("stream_text.anthropic.sse").as_bytes();
        let (out, stream) = run(&[input], false);
        let got = events(&out);
        assert!(got.iter().all(|e| e.get("usage").is_none()));
        assert_eq!(got.last(), Some(&json!("[DONE]")));
        assert!(stream.usage_is_final());
        assert_eq!(
            stream.estimated_completion_tokens(),
            tokens_chars("Hello! Here\u{2019}s a \"line\"\n caf\u{e9} \u{1F600}")
        );

        // Before anything: no usage, no id. After message_start: the prompt, and at least
        // message_start's output count.
        let mut stream = AnthropicStream::with_created(SLUG, true, 0);
        let mut out = BytesMut::new();
        assert_eq!((stream.usage(), stream.response_id()), (None, None));
        let start_end = find(input, b"\n\n") + 2;
        stream.on_bytes(&input[..start_end], &mut out);
        assert_eq!(
            stream.usage(),
            Some(Usage {
                prompt_tokens: 25,
                completion_tokens: 1,
                ..Usage::default()
            })
        );
        assert!(!stream.usage_is_final());
        assert_eq!(stream.response_id(), Some("chatcmpl-msg_01Y3kPq7TnRv2Xc9"));
        assert_eq!(crate::metering::StreamMeter::upstream_id(&stream), Some("msg_01Y3kPq7TnRv2Xc9"));
    }

    #[test]
    fn the_providers_own_id_is_the_message_id() {
        assert_eq!(upstream_id("chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL"), Some("msg_01XFDUDYJgAACzvnptvVoYEL"));
        assert_eq!(upstream_id("chatcmpl-"), None);
        assert_eq!(upstream_id("msg_1"), None, "not a translated id");
    }

    fn tokens_chars(text: &str) -> u64 {
        estimate::tokens_from_chars(text.chars().count() as u64)
    }

    fn find(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    }

    #[test]
    fn cut_and_malformed_streams_end_with_an_error_event() {
        let input = fixture!("stream_tool_call.anthropic.sse").as_bytes();
        // Cut in the middle of the second tool call.
        let cut = find(input, b"toolu_01Hq8RkQ3vWb5nZy") + 10;
        let (out, stream) = run(&[&input[..cut]], true);
        let got = events(&out);
        let last = got.last().unwrap();
        assert_eq!(last["error"]["code"], "upstream_error");
        assert_eq!(
            last["error"]["message"],
            "the upstream stream ended before the message was complete"
        );
        assert!(!got.contains(&json!("[DONE]")));
        let usage = stream.usage().unwrap();
        assert_eq!(
            (usage.prompt_tokens, usage.cached_prompt_tokens),
            (2520, 2048)
        );
        assert!(usage.completion_tokens >= 2 && !stream.usage_is_final());
        // Cut inside an event or between events: the same error, after the same chunks.
        let boundary = cut
            - 10
            - find(
                &input[..cut - 10].iter().rev().copied().collect::<Vec<_>>(),
                b"\n\n",
            );
        let (at_boundary, _) = run(&[&input[..boundary]], true);
        assert_eq!(events(&at_boundary), got);

        // Nothing at all.
        let (out, stream) = run(&[], true);
        assert_eq!(events(&out).len(), 1);
        assert_eq!(stream.usage(), None);

        // A known event that is not what it claims ends the stream; later events are ignored.
        let bad = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_x\",\"usage\":{\"input_tokens\":3}}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":5}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"late\"}}\n\n",
        );
        let got = events(&run(&[bad.as_bytes()], true).0);
        assert_eq!(got.len(), 2);
        assert!(got[1]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("malformed event in the upstream stream"));
        for bad in [
            "data: not json\n\n",
            "data: {\"no\":\"type\"}\n\n",
            "data: {\"type\":\"message_start\"}\n\n",
            "data: {\"type\":\"content_block_start\",\"index\":0}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0}\n\n",
        ] {
            let got = events(&run(&[bad.as_bytes()], true).0);
            assert_eq!(got.len(), 1, "{bad}");
            assert_eq!(got[0]["error"]["type"], "upstream_error", "{bad}");
        }
        // An event past the decoder's limit cannot be translated either.
        let mut huge = b"data: {\"type\":\"ping\",\"pad\":\"".to_vec();
        huge.resize(crate::metering::sse::DEFAULT_MAX_EVENT_BYTES + 10, b'a');
        let got = events(&run(&[&huge], true).0);
        assert_eq!(got.len(), 1);
        assert!(got[0]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("could not decode the upstream stream"));
    }

    #[test]
    fn odd_but_harmless_streams() {
        // Content before message_start still gets an id; a second message_start is ignored;
        // message_stop without message_delta still finishes the choice.
        let input = concat!(
            "data: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"text_delta\",\"text\":\"early\"}}\n\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_late\"}}\n\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"lead \"}}\n\n",
            "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"server_tool_use\",\"id\":\"srvtoolu_1\",\"name\":\"web_search\"}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"query\\\"\"}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":9,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
            "data: {\"type\":\"message_stop\"}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"after the end\"}}\n\n",
        );
        let (out, stream) = run(&[input.as_bytes()], true);
        let got = events(&out);
        let deltas: Vec<Value> = got
            .iter()
            .map(|e| e["choices"][0]["delta"].clone())
            .collect();
        assert_eq!(
            deltas,
            [
                json!({"content": "early"}),
                json!({"content": "lead "}),
                json!({}),
                Value::Null
            ]
        );
        assert_eq!(got[2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(got[3], json!("[DONE]"));
        // No usage was ever reported: no usage chunk, and none claimed.
        assert_eq!(stream.usage(), None);
        assert_eq!(stream.estimated_completion_tokens(), 3);
        assert!(got[0]["id"]
            .as_str()
            .unwrap()
            .starts_with("chatcmpl-anthropic-"));
    }

    #[test]
    fn message_delta_input_counts_win() {
        let input = concat!(
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_s\",\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":null,\"output_tokens\":1}}}\n\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"refusal\"},\"usage\":{\"input_tokens\":40,\"cache_read_input_tokens\":8,\"output_tokens\":6}}\n\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let (out, stream) = run(&[input.as_bytes()], true);
        let got = events(&out);
        // One finish chunk only, with the first reason.
        let finishes: Vec<&Value> = got
            .iter()
            .filter_map(|e| e["choices"][0].get("finish_reason"))
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finishes, [&json!("content_filter")]);
        let want = Usage {
            prompt_tokens: 48,
            completion_tokens: 7,
            cached_prompt_tokens: 8,
            cache_write_tokens: 0,
        };
        assert_eq!(stream.usage(), Some(want));
        assert_eq!(
            got[got.len() - 2]["usage"],
            json!({"prompt_tokens": 48, "completion_tokens": 7, "total_tokens": 55, "prompt_tokens_details": {"cached_tokens": 8}})
        );
    }

    /// The mock upstream's Anthropic stream, translated, is a stream the gateway's own OpenAI
    /// meter reads with the same usage: the two halves of the gateway agree on the format.
    #[test]
    fn mock_stream_reads_back_as_openai() {
        use crate::metering::OpenAiStreamMeter;
        use crate::mock::anthropic::{message_stream, Usage as MockUsage};
        use crate::mock::openai::build_reply;

        let reply = build_reply(2, Some(40), None);
        let events_in =
            message_stream("msg_mock", "claude-x", &reply, Some(MockUsage::new(31, 40)));
        let mut stream: Box<dyn StreamMeter> = Box::new(AnthropicStream::new(SLUG, true));
        let mut out = BytesMut::new();
        for event in &events_in {
            stream.on_bytes(&event.bytes, &mut out);
        }
        stream.on_end(&mut out);
        let want = Usage {
            prompt_tokens: 31,
            completion_tokens: 40,
            ..Usage::default()
        };
        assert_eq!(stream.usage(), Some(want));

        let mut meter = OpenAiStreamMeter::new(SLUG, false);
        let mut again = BytesMut::new();
        meter.on_bytes(&out, &mut again);
        meter.on_end(&mut again);
        assert_eq!(meter.usage(), Some(want));
        assert!(meter.saw_done() && !meter.saw_error());
        assert_eq!(meter.response_id(), stream.response_id());
        assert_eq!(meter.generated_chars(), reply.text().chars().count() as u64);
        let text: String = events(&out)
            .iter()
            .filter_map(|e| {
                e["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text, reply.text());
    }

    /// Random byte mutations of upstream output: never a panic, and the client always gets
    /// well-formed SSE whose events are JSON (or `[DONE]`).
    #[test]
    fn mutated_upstream_output_never_panics() {
        let alphabet = b"{}[]\":,\\ ntf01-.eu\n\r\x00\xff";
        let mut next = crate::testing::xorshift(0x9E37_79B9_7F4A_7C15_u64);
        let bases = [
            fixture!("stream_tool_call.anthropic.sse").as_bytes(),
            fixture!("stream_ping_unknown.anthropic.sse").as_bytes(),
        ];
        let responses = [
            fixture!("response_tool_use.anthropic.json").as_bytes(),
            fixture!("response_text.anthropic.json").as_bytes(),
        ];
        let requests = [
            fixture!("request_tools.openai.json").as_bytes(),
            fixture!("request_vision.openai.json").as_bytes(),
            fixture!("request_multiturn.openai.json").as_bytes(),
        ];
        let mutate = |base: &[u8], next: &mut dyn FnMut(usize) -> usize| {
            let mut body = base.to_vec();
            for _ in 0..=next(3) {
                let at = next(body.len());
                match next(4) {
                    0 => drop(body.remove(at)),
                    1 => body.insert(at, alphabet[next(alphabet.len())]),
                    _ => body[at] = alphabet[next(alphabet.len())],
                }
            }
            body
        };
        for round in 0..1_500 {
            let body = mutate(bases[round % 2], &mut next);
            let cut = next(body.len() + 1);
            let (out, stream) = run(&[&body[..cut], &body[cut..]], true);
            let got = events(&out);
            assert!(!got.is_empty());
            let _ = (stream.usage(), stream.estimated_completion_tokens());

            let body = mutate(responses[round % 2], &mut next);
            if let Ok((out, _)) = translate_response(&body, SLUG, round % 3 == 0) {
                value(&out);
            }
            let body = mutate(requests[round % 3], &mut next);
            if let Ok(out) = translate_request(&body, MODEL, 100) {
                value(&out);
            }
        }
    }
}
