//! Google Gemini's `generateContent` API behind the OpenAI chat-completions contract.
//!
//! Three pure translations, no IO:
//! - [`translate_request`]: an OpenAI chat request body → a Gemini `GenerateContentRequest`;
//! - [`translate_response`]: a Gemini `GenerateContentResponse` → an OpenAI `chat.completion`;
//! - [`GeminiStream`]: `streamGenerateContent?alt=sse` events → OpenAI `chat.completion.chunk`
//!   events, translated one Gemini event at a time while metering.
//!
//! The wire structs are typed but tolerant in the direction we do not control: in Gemini's
//! output, unknown fields are skipped and unknown part types become `PartIn::Other`
//! (debug-logged, never an error), so a new Gemini feature cannot break a stream or drop a
//! part we do know. Client input is held to a stricter standard: content we cannot express in
//! Gemini's format (an unknown content-part type, a non-function tool) is refused with a
//! [`RequestError`] naming the field, rather than silently dropped from the prompt.
//!
//! # Request mapping
//!
//! | OpenAI | Gemini |
//! |---|---|
//! | `system` / `developer` messages | `systemInstruction.parts` (text only, in order; their position among the other messages is not kept) |
//! | `user` / `assistant` messages | `contents` with role `user` / `model`; consecutive turns of one role are merged |
//! | `tool` (and legacy `function`) messages | `functionResponse {name, response: {content}}` parts in a `user` turn |
//! | assistant `tool_calls` | `functionCall {name, args}` parts in the `model` turn |
//! | `image_url` data URL / http(s) or gs:// URL | `inline_data` / `file_data` (the gateway never fetches URLs) |
//! | `input_audio`, `file.file_data` | `inline_data` |
//! | `tools` | `tools[0].functionDeclarations` with `parametersJsonSchema` |
//! | `tool_choice` | `toolConfig.functionCallingConfig` |
//! | `temperature`, `top_p`, `stop`, `n`, `seed`, `presence_penalty`, `frequency_penalty` | `generationConfig` |
//! | `max_completion_tokens` / `max_tokens` (the larger), else the default | `generationConfig.maxOutputTokens` |
//! | `response_format` `json_object` / `json_schema` | `responseMimeType` / + `responseJsonSchema` |
//!
//! Ignored: `model` and `stream` (they are in the URL: [`upstream_path`]), `stream_options`
//! (see [`GeminiStream::new`]), `user`, `metadata`, `store`, `service_tier`, `logit_bias`,
//! `logprobs`, `top_logprobs`, `parallel_tool_calls`, `reasoning_effort`, `modalities`,
//! `audio`, `prediction`, `web_search_options`, the deprecated `functions` / `function_call`,
//! `strict` on tools and schemas, `name` on user messages, and any other field.
//!
//! Schemas use Gemini's JSON-Schema fields (`parametersJsonSchema`, `responseJsonSchema`), not
//! the older `parameters` / `responseSchema`: those take an OpenAPI 3.0 subset and answer 400 to
//! `additionalProperties`, `$ref`, `$defs` and `"type": [..., "null"]`, which OpenAI clients put
//! in almost every schema (strict mode requires `additionalProperties: false`). The JSON-Schema
//! fields accept them, though Gemini still enforces only a subset (types, `properties`,
//! `required`, `enum`, `items`, `anyOf`, `$ref`/`$defs`, min/max bounds, `format`, ...) and
//! ignores the rest. Schemas are passed through with their key order kept (Gemini generates
//! properties in schema order).
//!
//! # Thought signatures
//!
//! Thinking models attach an opaque `thoughtSignature` to function-call parts, and Gemini 3
//! answers 400 when a function call in the history comes back without it. OpenAI messages
//! have no place for it, so we use Google's own OpenAI-compatibility convention: the response
//! carries it in `tool_calls[].extra_content.google.thought_signature`, and a request that
//! sends it back there gets it restored. When an assistant turn's first call has none (a client
//! that drops unknown fields, or a history from another model), the documented placeholder
//! [`SKIP_SIGNATURE`] is sent instead, so the request is still accepted.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::BytesMut;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::json_scan::write_json_string;
use super::openai::RequestError;
use crate::api::error::{from_provider, ApiError};
use crate::metering::estimate;
use crate::metering::sse::{SseDecoder, SseEvent};
use crate::metering::{StreamMeter, Usage};

/// The signature Google documents for function calls it did not produce (or whose signature
/// was lost): it tells Gemini 3 to skip validation instead of refusing the request.
pub const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// The path to append to a Gemini base URL (e.g. `https://generativelanguage.googleapis.com/v1beta`).
///
/// A name that already has a collection (`tunedModels/x`, `models/x`) is used as is. The
/// streaming path already has a query string: an API key must be appended with `&key=`.
pub fn upstream_path(upstream_model: &str, stream: bool) -> String {
    let collection = if upstream_model.contains('/') { "" } else { "models/" };
    let action = if stream { "streamGenerateContent?alt=sse" } else { "generateContent" };
    format!("/{collection}{upstream_model}:{action}")
}

/// A Gemini response that cannot be turned into a chat completion.
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

// ---------------------------------------------------------------------------------------------
// Shared wire helpers.

/// A string borrowed from the input when it has no escapes. serde's own `Cow<str>` always
/// copies, and `Option<Cow<str>>` cannot borrow even with `#[serde(borrow)]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// A JSON value that keeps its object members in order and borrows its strings.
///
/// `serde_json::Value` sorts keys (this build has no `preserve_order`), which would reorder a
/// client's schema (Gemini generates properties in schema order) and the model's function
/// arguments. Recursion is bounded by serde_json's nesting limit (128).
#[derive(Debug, Clone, PartialEq)]
enum Json<'a> {
    Null,
    Bool(bool),
    U(u64),
    I(i64),
    F(f64),
    Str(Cow<'a, str>),
    Arr(Vec<Json<'a>>),
    Obj(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl Json<'_> {
    fn into_owned(self) -> Json<'static> {
        match self {
            Json::Null => Json::Null,
            Json::Bool(b) => Json::Bool(b),
            Json::U(n) => Json::U(n),
            Json::I(n) => Json::I(n),
            Json::F(n) => Json::F(n),
            Json::Str(s) => Json::Str(Cow::Owned(s.into_owned())),
            Json::Arr(items) => Json::Arr(items.into_iter().map(Json::into_owned).collect()),
            Json::Obj(members) => Json::Obj(
                members
                    .into_iter()
                    .map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned()))
                    .collect(),
            ),
        }
    }

    fn get(&self, key: &str) -> Option<&Json<'_>> {
        match self {
            Json::Obj(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    fn to_json_string(&self) -> String {
        // Serialising our own tree cannot fail: every key is a string.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Json<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor(PhantomData))
    }
}

struct JsonVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for JsonVisitor<'a> {
    type Value = Json<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json<'a>, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json<'a>, E> {
        Ok(Json::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json<'a>, D::Error> {
        Json::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json<'a>, E> {
        Ok(Json::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json<'a>, E> {
        Ok(Json::U(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json<'a>, E> {
        Ok(Json::I(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Json<'a>, E> {
        Ok(Json::F(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'a>, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json<'a>, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Json<'a>, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'a>, A::Error> {
        // The hint comes from the input: cap it so a lying length cannot reserve gigabytes.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'a>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some((key, value)) = map.next_entry::<Str<'a>, Json<'a>>()? {
            members.push((key.0, value));
        }
        Ok(Json::Obj(members))
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::U(n) => s.serialize_u64(*n),
            Json::I(n) => s.serialize_i64(*n),
            Json::F(n) => s.serialize_f64(*n),
            Json::Str(v) => s.serialize_str(v),
            Json::Arr(items) => s.collect_seq(items),
            Json::Obj(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k.as_ref(), v)?;
                }
                map.end()
            }
        }
    }
}

/// A substring of a `Cow`, still borrowed from the input when the `Cow` was.
fn sub_cow<'a>(s: &Cow<'a, str>, start: usize, end: usize) -> Cow<'a, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.get(start..end).unwrap_or_default()),
        Cow::Owned(o) => Cow::Owned(o.get(start..end).unwrap_or_default().to_owned()),
    }
}

/// Characters (not bytes) of generated text, the unit the completion estimate is based on.
fn char_count(s: &str) -> u64 {
    s.bytes().filter(|&b| (b & 0xC0) != 0x80).count() as u64
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// 24 hex digits that differ per call and per process: an id for a response Gemini sent
/// without `responseId`. `RandomState` is seeded randomly per process, so no RNG dependency.
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    let a = h.finish();
    h.write_u8(0);
    let b = h.finish() as u32;
    format!("{a:016x}{b:08x}")
}

/// The completion's id as translated: Gemini's `responseId` when it sent one. The gateway
/// answers with its own id; tool-call ids are derived from this one.
fn chat_id(response_id: Option<&str>) -> String {
    match response_id.filter(|r| !r.is_empty()) {
        Some(r) => format!("chatcmpl-{r}"),
        None => format!("chatcmpl-{}", random_hex()),
    }
}

/// The id of the `call`-th tool call of choice `choice`: a hash of the completion id, so the
/// same response always gets the same ids (streamed or not), and different responses get
/// different ones. Gemini ids function calls only in some APIs, so we cannot rely on its own.
fn tool_call_id(chat_id: &str, choice: u64, call: u64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a
    let bytes = chat_id.bytes().chain(choice.to_le_bytes()).chain(call.to_le_bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("call_{h:016x}")
}

// ---------------------------------------------------------------------------------------------
// OpenAI request (input) wire types.

/// The fields of a chat request that have a Gemini equivalent; everything else is skipped.
#[derive(Default)]
struct ChatRequest<'a> {
    messages: Option<Vec<Message<'a>>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    stop: Option<Stop<'a>>,
    n: Option<u64>,
    seed: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    tools: Option<Vec<ToolIn<'a>>>,
    tool_choice: Option<ToolChoice<'a>>,
    response_format: Option<ResponseFormat<'a>>,
}

/// Reads the top-level object member by member, recording which member is being read so a
/// type error can name its field (serde's own error has only a line and column).
struct RequestVisitor<'x> {
    field: &'x mut Option<&'static str>,
}

impl<'de> Visitor<'de> for RequestVisitor<'_> {
    type Value = ChatRequest<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChatRequest<'de>, A::Error> {
        const KNOWN: [&str; 13] = [
            "messages",
            "temperature",
            "top_p",
            "max_tokens",
            "max_completion_tokens",
            "stop",
            "n",
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "tools",
            "tool_choice",
            "response_format",
        ];
        let mut req = ChatRequest::default();
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let Some(&name) = KNOWN.iter().find(|k| **k == key.0) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            *self.field = Some(name);
            match name {
                "messages" => req.messages = map.next_value()?,
                "temperature" => req.temperature = map.next_value()?,
                "top_p" => req.top_p = map.next_value()?,
                "max_tokens" => req.max_tokens = map.next_value()?,
                "max_completion_tokens" => req.max_completion_tokens = map.next_value()?,
                "stop" => req.stop = map.next_value()?,
                "n" => req.n = map.next_value()?,
                "seed" => req.seed = map.next_value()?,
                "presence_penalty" => req.presence_penalty = map.next_value()?,
                "frequency_penalty" => req.frequency_penalty = map.next_value()?,
                "tools" => req.tools = map.next_value()?,
                "tool_choice" => req.tool_choice = map.next_value()?,
                _ => req.response_format = map.next_value()?,
            }
            *self.field = None;
        }
        Ok(req)
    }
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Str<'a>,
    #[serde(borrow)]
    content: Option<MessageContent<'a>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<ToolCallIn<'a>>>,
    #[serde(borrow)]
    tool_call_id: Option<Str<'a>>,
    #[serde(borrow)]
    name: Option<Str<'a>>,
}

/// `content`: a string or an array of parts.
enum MessageContent<'a> {
    Text(Str<'a>),
    Parts(Vec<ContentPart<'a>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for MessageContent<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = MessageContent<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(Str(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(Str(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(Str(Cow::Owned(v))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::deserialize(SeqAccessDeserializer::new(seq)).map(MessageContent::Parts)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// One content part, flat rather than an internally tagged enum: serde buffers tagged enums,
/// which would copy every base64 image once more.
#[derive(Deserialize)]
struct ContentPart<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    text: Option<Str<'a>>,
    #[serde(borrow)]
    refusal: Option<Str<'a>>,
    #[serde(borrow)]
    image_url: Option<ImageUrl<'a>>,
    #[serde(borrow)]
    input_audio: Option<InputAudio<'a>>,
    #[serde(borrow)]
    file: Option<FileIn<'a>>,
}

#[derive(Deserialize)]
struct ImageUrl<'a> {
    #[serde(borrow)]
    url: Str<'a>,
}

#[derive(Deserialize)]
struct InputAudio<'a> {
    #[serde(borrow)]
    data: Str<'a>,
    #[serde(borrow)]
    format: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct FileIn<'a> {
    #[serde(borrow)]
    file_data: Option<Str<'a>>,
    #[serde(borrow)]
    file_id: Option<Str<'a>>,
    #[serde(borrow)]
    filename: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ToolCallIn<'a> {
    #[serde(borrow)]
    id: Option<Str<'a>>,
    #[serde(borrow)]
    function: Option<FunctionIn<'a>>,
    #[serde(borrow)]
    extra_content: Option<ExtraContentIn<'a>>,
}

#[derive(Deserialize)]
struct FunctionIn<'a> {
    #[serde(borrow)]
    name: Option<Str<'a>>,
    #[serde(borrow)]
    arguments: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ExtraContentIn<'a> {
    #[serde(borrow)]
    google: Option<GoogleExtraIn<'a>>,
}

#[derive(Deserialize)]
struct GoogleExtraIn<'a> {
    #[serde(borrow)]
    thought_signature: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ToolIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    function: Option<FunctionDefIn<'a>>,
}

#[derive(Deserialize)]
struct FunctionDefIn<'a> {
    #[serde(borrow)]
    name: Option<Str<'a>>,
    #[serde(borrow)]
    description: Option<Str<'a>>,
    #[serde(borrow)]
    parameters: Option<Json<'a>>,
}

/// `tool_choice`: a mode string or `{"type": "function", "function": {"name": ...}}`.
enum ToolChoice<'a> {
    Mode(Str<'a>),
    Object(ToolChoiceObject<'a>),
}

#[derive(Deserialize)]
struct ToolChoiceObject<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    function: Option<NamedFunction<'a>>,
}

#[derive(Deserialize)]
struct NamedFunction<'a> {
    #[serde(borrow)]
    name: Option<Str<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ToolChoice<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ToolChoice<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an object")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ToolChoice::Mode(Str(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ToolChoice::Mode(Str(Cow::Owned(v.to_owned()))))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                ToolChoiceObject::deserialize(MapAccessDeserializer::new(map))
                    .map(ToolChoice::Object)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// `stop`: one string or an array of them.
struct Stop<'a>(Vec<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Stop<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Stop<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Stop(vec![Cow::Borrowed(v)]))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Stop(vec![Cow::Owned(v.to_owned())]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                let all = Vec::<Str<'a>>::deserialize(SeqAccessDeserializer::new(seq))?;
                Ok(Stop(all.into_iter().map(|s| s.0).collect()))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[derive(Deserialize)]
struct ResponseFormat<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    json_schema: Option<JsonSchemaIn<'a>>,
}

#[derive(Deserialize)]
struct JsonSchemaIn<'a> {
    #[serde(borrow)]
    schema: Option<Json<'a>>,
}

// ---------------------------------------------------------------------------------------------
// Gemini request (output) wire types.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentRequest<'a> {
    contents: Vec<ContentOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfigOut<'a>>,
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    generation_config: GenerationConfig<'a>,
}

#[derive(Serialize)]
struct ContentOut<'a> {
    role: &'static str,
    parts: Vec<PartOut<'a>>,
}

#[derive(Serialize)]
struct SystemOut<'a> {
    parts: Vec<PartOut<'a>>,
}

/// A Gemini `Part`. Media use the snake_case names of Google's REST examples; Gemini's JSON
/// parser accepts both spellings of every field.
#[derive(Serialize)]
#[serde(untagged)]
enum PartOut<'a> {
    Text {
        text: Cow<'a, str>,
    },
    InlineData {
        inline_data: BlobOut<'a>,
    },
    FileData {
        file_data: FileDataOut<'a>,
    },
    FunctionCall {
        #[serde(rename = "functionCall")]
        function_call: FunctionCallOut<'a>,
        #[serde(rename = "thoughtSignature", skip_serializing_if = "Option::is_none")]
        thought_signature: Option<Cow<'a, str>>,
    },
    FunctionResponse {
        #[serde(rename = "functionResponse")]
        function_response: FunctionResponseOut<'a>,
    },
}

#[derive(Serialize)]
struct BlobOut<'a> {
    mime_type: Cow<'a, str>,
    data: Cow<'a, str>,
}

#[derive(Serialize)]
struct FileDataOut<'a> {
    mime_type: Cow<'a, str>,
    file_uri: Cow<'a, str>,
}

#[derive(Serialize)]
struct FunctionCallOut<'a> {
    name: Cow<'a, str>,
    args: Json<'static>,
}

#[derive(Serialize)]
struct FunctionResponseOut<'a> {
    name: Cow<'a, str>,
    response: Json<'static>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolOut<'a> {
    function_declarations: Vec<FunctionDeclarationOut<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeclarationOut<'a> {
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters_json_schema: Option<Json<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfigOut<'a> {
    function_calling_config: FunctionCallingConfigOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfigOut<'a> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_function_names: Vec<Cow<'a, str>>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<Json<'a>>,
}

impl GenerationConfig<'_> {
    fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_p.is_none()
            && self.max_output_tokens.is_none()
            && self.stop_sequences.is_empty()
            && self.candidate_count.is_none()
            && self.seed.is_none()
            && self.presence_penalty.is_none()
            && self.frequency_penalty.is_none()
            && self.response_mime_type.is_none()
            && self.response_json_schema.is_none()
    }
}

// ---------------------------------------------------------------------------------------------
// Request translation.

fn bad(param: impl Into<String>, message: impl Into<String>) -> RequestError {
    RequestError { message: message.into(), param: Some(param.into()) }
}

/// Translates an OpenAI chat-completions request body into a Gemini `generateContent` body.
///
/// `default_max_tokens` (the model's configured output limit) is sent when the client gives no
/// limit: the gateway reserved funds for at most that many tokens, so the upstream must not be
/// left free to generate more. Meant for bodies `openai::parse_chat_request` accepted, but any
/// input is handled without panicking.
pub fn translate_request(
    openai_body: &[u8],
    default_max_tokens: Option<u64>,
) -> Result<Vec<u8>, RequestError> {
    let mut field = None;
    let mut de = serde_json::Deserializer::from_slice(openai_body);
    let parsed = (&mut de)
        .deserialize_map(RequestVisitor { field: &mut field })
        .and_then(|req| de.end().map(|()| req));
    let req = parsed.map_err(|e| match field {
        Some(name) => bad(name, format!("invalid '{name}': {e}")),
        None => {
            RequestError { message: format!("request body is not valid JSON: {e}"), param: None }
        }
    })?;

    let mut out = GenerateContentRequest {
        contents: Vec::new(),
        system_instruction: None,
        tools: Vec::new(),
        tool_config: None,
        generation_config: GenerationConfig::default(),
    };
    let messages =
        req.messages.ok_or_else(|| bad("messages", "missing required field 'messages'"))?;
    translate_messages(messages, &mut out)?;
    if out.contents.is_empty() {
        return Err(bad("messages", "at least one user or assistant message is required"));
    }

    if let Some(tools) = req.tools {
        let mut declarations = Vec::with_capacity(tools.len());
        for (k, tool) in tools.into_iter().enumerate() {
            let kind = tool.kind.map(|k| k.0);
            if kind.as_deref().is_some_and(|k| k != "function") {
                let kind = kind.unwrap_or_default();
                return Err(bad(
                    format!("tools[{k}].type"),
                    format!(
                        "tool type '{kind}' is not supported by this model; only 'function' is"
                    ),
                ));
            }
            let Some(function) = tool.function else {
                return Err(bad(
                    format!("tools[{k}].function"),
                    "missing required field 'function'",
                ));
            };
            let Some(name) = function.name.filter(|n| !n.0.is_empty()) else {
                return Err(bad(format!("tools[{k}].function.name"), "missing function name"));
            };
            declarations.push(FunctionDeclarationOut {
                name: name.0,
                description: function.description.map(|d| d.0),
                parameters_json_schema: function.parameters.filter(|p| *p != Json::Null),
            });
        }
        if !declarations.is_empty() {
            out.tools.push(ToolOut { function_declarations: declarations });
            // Without tools there is nothing to choose from: the choice is moot, not an error.
            if let Some(choice) = req.tool_choice {
                out.tool_config = Some(tool_config(choice)?);
            }
        }
    }

    let config = &mut out.generation_config;
    config.temperature = req.temperature;
    config.top_p = req.top_p;
    // The larger of the two, as for the reservation (`ChatRequestInfo::max_tokens`).
    config.max_output_tokens = match (req.max_tokens, req.max_completion_tokens) {
        (None, None) => default_max_tokens,
        (a, b) => a.max(b),
    };
    config.stop_sequences = req.stop.map(|s| s.0).unwrap_or_default();
    config.candidate_count = req.n;
    // Gemini's seed is an int32; OpenAI's is an int64. Wrapping keeps "same seed, same output".
    config.seed = req.seed.map(|s| s as i32);
    config.presence_penalty = req.presence_penalty;
    config.frequency_penalty = req.frequency_penalty;
    if let Some(format) = req.response_format {
        match format.kind.as_ref().map(|k| k.0.as_ref()) {
            None | Some("text") => {}
            Some("json_object") => config.response_mime_type = Some("application/json"),
            Some("json_schema") => {
                config.response_mime_type = Some("application/json");
                config.response_json_schema = format.json_schema.and_then(|s| s.schema);
            }
            Some(other) => {
                return Err(bad(
                    "response_format.type",
                    format!("unsupported response_format type '{other}'"),
                ))
            }
        }
    }

    serde_json::to_vec(&out).map_err(|e| RequestError {
        message: format!("could not encode the request for Gemini: {e}"),
        param: None,
    })
}

fn tool_config(choice: ToolChoice<'_>) -> Result<ToolConfigOut<'_>, RequestError> {
    let (mode, allowed) = match choice {
        ToolChoice::Mode(mode) => match mode.0.as_ref() {
            "auto" => ("AUTO", Vec::new()),
            "none" => ("NONE", Vec::new()),
            "required" => ("ANY", Vec::new()),
            other => {
                return Err(bad("tool_choice", format!("unsupported tool_choice '{other}'")));
            }
        },
        ToolChoice::Object(object) => {
            let kind = object.kind.map(|k| k.0).unwrap_or_default();
            let name = object.function.and_then(|f| f.name).filter(|n| !n.0.is_empty());
            match (kind.as_ref(), name) {
                ("function", Some(name)) => ("ANY", vec![name.0]),
                ("function", None) => {
                    return Err(bad("tool_choice.function.name", "missing function name"));
                }
                _ => {
                    return Err(bad(
                        "tool_choice.type",
                        format!("unsupported tool_choice type '{kind}'"),
                    ))
                }
            }
        }
    };
    Ok(ToolConfigOut {
        function_calling_config: FunctionCallingConfigOut { mode, allowed_function_names: allowed },
    })
}

/// Appends `part` to the last turn when it has `role`, else opens a new turn: Gemini expects
/// turns to alternate, while OpenAI allows (and tool results produce) runs of one role.
fn push_part<'a>(contents: &mut Vec<ContentOut<'a>>, role: &'static str, part: PartOut<'a>) {
    match contents.last_mut() {
        Some(last) if last.role == role => last.parts.push(part),
        _ => contents.push(ContentOut { role, parts: vec![part] }),
    }
}

fn translate_messages<'a>(
    messages: Vec<Message<'a>>,
    out: &mut GenerateContentRequest<'a>,
) -> Result<(), RequestError> {
    // tool_call_id → function name, from earlier assistant turns: OpenAI tool results carry only
    // the id, Gemini's function responses only the name.
    let mut call_names: HashMap<Cow<'a, str>, Cow<'a, str>> = HashMap::new();
    let mut system = Vec::new();
    let mut parts = Vec::new();
    for (i, message) in messages.into_iter().enumerate() {
        let at = || format!("messages[{i}]");
        match message.role.0.as_ref() {
            "system" | "developer" => {
                content_parts(message.content, &at(), false, &mut system)?;
            }
            "user" => {
                content_parts(message.content, &at(), true, &mut parts)?;
                for part in parts.drain(..) {
                    push_part(&mut out.contents, "user", part);
                }
            }
            "assistant" => {
                content_parts(message.content, &at(), false, &mut parts)?;
                for part in parts.drain(..) {
                    push_part(&mut out.contents, "model", part);
                }
                for (k, call) in message.tool_calls.unwrap_or_default().into_iter().enumerate() {
                    let part = function_call(call, k, &at(), &mut call_names)?;
                    push_part(&mut out.contents, "model", part);
                }
            }
            "tool" => {
                let id = message.tool_call_id.map(|id| id.0);
                let name = match (&id, message.name) {
                    (Some(id), _) if call_names.contains_key(id.as_ref()) => {
                        call_names.get(id.as_ref()).cloned().unwrap_or_default()
                    }
                    // Some clients also send the function's name: good enough without a match.
                    (_, Some(name)) if !name.0.is_empty() => name.0,
                    (Some(id), _) => {
                        return Err(bad(
                            format!("{}.tool_call_id", at()),
                            format!("tool_call_id '{id}' does not match a tool call of an earlier assistant message"),
                        ))
                    }
                    (None, _) => {
                        return Err(bad(format!("{}.tool_call_id", at()), "missing tool_call_id"))
                    }
                };
                let text = text_only(message.content, &at())?;
                push_part(&mut out.contents, "user", function_response(name, &text));
            }
            // The deprecated `function_call` protocol: the result names its function directly.
            "function" => {
                let Some(name) = message.name.filter(|n| !n.0.is_empty()) else {
                    return Err(bad(format!("{}.name", at()), "missing function name"));
                };
                let text = text_only(message.content, &at())?;
                push_part(&mut out.contents, "user", function_response(name.0, &text));
            }
            other => {
                return Err(bad(format!("{}.role", at()), format!("unsupported role '{other}'")));
            }
        }
    }
    if !system.is_empty() {
        out.system_instruction = Some(SystemOut { parts: system });
    }
    Ok(())
}

/// A tool result as a Gemini function response. `response` must be a JSON object, and the
/// tool's output is usually JSON text: parsed, it reaches the model as structure rather than
/// as an escaped string; any other text is wrapped.
fn function_response<'a>(name: Cow<'a, str>, text: &str) -> PartOut<'a> {
    let content = match serde_json::from_str::<Json<'_>>(text) {
        Ok(value) => value.into_owned(),
        Err(_) => {
            Json::Obj(vec![(Cow::Borrowed("result"), Json::Str(Cow::Owned(text.to_owned())))])
        }
    };
    PartOut::FunctionResponse {
        function_response: FunctionResponseOut {
            name,
            response: Json::Obj(vec![(Cow::Borrowed("content"), content)]),
        },
    }
}

fn function_call<'a>(
    call: ToolCallIn<'a>,
    k: usize,
    at: &str,
    call_names: &mut HashMap<Cow<'a, str>, Cow<'a, str>>,
) -> Result<PartOut<'a>, RequestError> {
    let param = format!("{at}.tool_calls[{k}].function");
    let Some(function) = call.function else {
        return Err(bad(param, "missing required field 'function'"));
    };
    let Some(name) = function.name.filter(|n| !n.0.is_empty()) else {
        return Err(bad(format!("{param}.name"), "missing function name"));
    };
    let arguments = function.arguments.map(|a| a.0).unwrap_or_default();
    let args = if arguments.trim().is_empty() {
        Json::Obj(Vec::new())
    } else {
        match serde_json::from_str::<Json<'_>>(&arguments) {
            Ok(value @ Json::Obj(_)) => value.into_owned(),
            // Gemini's args are a JSON object; every call we translated from Gemini is one.
            _ => {
                return Err(bad(
                    format!("{param}.arguments"),
                    "function arguments must be a JSON object",
                ))
            }
        }
    };
    if let Some(id) = call.id {
        call_names.insert(id.0, name.0.clone());
    }
    let signature = call
        .extra_content
        .and_then(|e| e.google)
        .and_then(|g| g.thought_signature)
        .map(|s| s.0)
        .filter(|s| !s.is_empty());
    // Gemini 3 validates the signature of the first call of each step (parallel calls carry
    // one on the first only); without one it refuses the whole request.
    let signature = match signature {
        None if k == 0 => Some(Cow::Borrowed(SKIP_SIGNATURE)),
        s => s,
    };
    Ok(PartOut::FunctionCall {
        function_call: FunctionCallOut { name: name.0, args },
        thought_signature: signature,
    })
}

/// The text of a message whose content can only be text (tool results), parts joined.
fn text_only(content: Option<MessageContent<'_>>, at: &str) -> Result<String, RequestError> {
    match content {
        None => Ok(String::new()),
        Some(MessageContent::Text(text)) => Ok(text.0.into_owned()),
        Some(MessageContent::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.into_iter().enumerate() {
                match (part.kind.as_ref().map(|k| k.0.as_ref()), part.text) {
                    (Some("text"), Some(t)) => text.push_str(&t.0),
                    _ => {
                        return Err(bad(
                            format!("{at}.content[{j}]"),
                            "tool results can only contain text parts",
                        ))
                    }
                }
            }
            Ok(text)
        }
    }
}

/// Appends a message's content as Gemini parts. Empty text is dropped: Gemini refuses a part
/// with no data, and an empty string says nothing.
fn content_parts<'a>(
    content: Option<MessageContent<'a>>,
    at: &str,
    media: bool,
    parts: &mut Vec<PartOut<'a>>,
) -> Result<(), RequestError> {
    let list = match content {
        None => return Ok(()),
        Some(MessageContent::Text(text)) => {
            if !text.0.is_empty() {
                parts.push(PartOut::Text { text: text.0 });
            }
            return Ok(());
        }
        Some(MessageContent::Parts(list)) => list,
    };
    for (j, part) in list.into_iter().enumerate() {
        let param = |field: &str| format!("{at}.content[{j}]{field}");
        let kind = part.kind.map(|k| k.0).unwrap_or_default();
        let translated = match kind.as_ref() {
            "text" | "refusal" => {
                let text = if kind == "text" { part.text } else { part.refusal };
                let Some(text) = text else {
                    return Err(bad(param(&format!(".{kind}")), format!("missing '{kind}'")));
                };
                (!text.0.is_empty()).then_some(PartOut::Text { text: text.0 })
            }
            "image_url" | "input_audio" | "file" if !media => {
                return Err(bad(
                    param(".type"),
                    format!("'{kind}' parts are only supported in user messages"),
                ));
            }
            "image_url" => {
                let Some(image) = part.image_url else {
                    return Err(bad(param(".image_url"), "missing 'image_url'"));
                };
                Some(media_part(image.url.0, "image/jpeg", &param(".image_url.url"))?)
            }
            "input_audio" => {
                let Some(audio) = part.input_audio else {
                    return Err(bad(param(".input_audio"), "missing 'input_audio'"));
                };
                let format = audio.format.map(|f| f.0).unwrap_or(Cow::Borrowed("wav"));
                Some(PartOut::InlineData {
                    inline_data: BlobOut {
                        mime_type: Cow::Owned(format!("audio/{format}")),
                        data: audio.data.0,
                    },
                })
            }
            "file" => {
                let Some(file) = part.file else {
                    return Err(bad(param(".file"), "missing 'file'"));
                };
                match (file.file_data, file.file_id) {
                    (Some(data), _) => {
                        let name = file.filename.map(|f| f.0).unwrap_or_default();
                        let default = guess_mime(&name).unwrap_or("application/pdf");
                        Some(if data.0.starts_with("data:") {
                            media_part(data.0, default, &param(".file.file_data"))?
                        } else {
                            // OpenAI also takes bare base64 here.
                            PartOut::InlineData {
                                inline_data: BlobOut {
                                    mime_type: Cow::Borrowed(default),
                                    data: data.0,
                                },
                            }
                        })
                    }
                    (None, Some(_)) => {
                        return Err(bad(
                            param(".file.file_id"),
                            "file_id refers to OpenAI's file storage; send the file as file_data",
                        ));
                    }
                    (None, None) => return Err(bad(param(".file"), "missing 'file_data'")),
                }
            }
            "" => return Err(bad(param(".type"), "missing content part type")),
            other => {
                return Err(bad(
                    param(".type"),
                    format!("content part type '{other}' is not supported by this model"),
                ));
            }
        };
        parts.extend(translated);
    }
    Ok(())
}

/// A data URL becomes inline data; an http(s) or gs:// URL becomes a file reference that
/// Gemini fetches itself (the gateway never fetches client URLs).
fn media_part<'a>(
    url: Cow<'a, str>,
    default_mime: &'static str,
    param: &str,
) -> Result<PartOut<'a>, RequestError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some(comma) = rest.find(',') else {
            return Err(bad(param, "malformed data URL: no ','"));
        };
        let header = &rest[..comma];
        let mut fields = header.split(';');
        let mime = fields.next().unwrap_or_default().trim();
        let base64 = fields.any(|f| f.trim().eq_ignore_ascii_case("base64"));
        let mime_type =
            if mime.is_empty() { Cow::Borrowed(default_mime) } else { Cow::Owned(mime.to_owned()) };
        let data_start = 5 + comma + 1;
        let data = if base64 {
            sub_cow(&url, data_start, url.len())
        } else {
            // A percent-encoded data URL: Gemini takes base64 only.
            let raw = percent_decode(&url[data_start..]);
            Cow::Owned(base64::engine::general_purpose::STANDARD.encode(raw))
        };
        return Ok(PartOut::InlineData { inline_data: BlobOut { mime_type, data } });
    }
    let scheme_ok = ["http://", "https://", "gs://"]
        .iter()
        .any(|s| url.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s)));
    if !scheme_ok {
        return Err(bad(param, "expected a data URL or an http(s) URL"));
    }
    let mime_type = Cow::Borrowed(guess_mime(url_path(&url)).unwrap_or(default_mime));
    Ok(PartOut::FileData { file_data: FileDataOut { mime_type, file_uri: url } })
}

/// The path of an absolute URL, without query or fragment (so the host's `.com` is never
/// mistaken for a file extension).
fn url_path(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
    let path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
    path.split(['?', '#']).next().unwrap_or_default()
}

/// The MIME type for a file name's extension, for the types Gemini accepts as media.
fn guess_mime(path: &str) -> Option<&'static str> {
    let name = path.rsplit('/').next().unwrap_or_default();
    let (_, ext) = name.rsplit_once('.')?;
    const TABLE: [(&str, &str); 22] = [
        ("jpg", "image/jpeg"),
        ("jpeg", "image/jpeg"),
        ("png", "image/png"),
        ("gif", "image/gif"),
        ("webp", "image/webp"),
        ("heic", "image/heic"),
        ("heif", "image/heif"),
        ("pdf", "application/pdf"),
        ("txt", "text/plain"),
        ("md", "text/markdown"),
        ("csv", "text/csv"),
        ("html", "text/html"),
        ("mp3", "audio/mp3"),
        ("wav", "audio/wav"),
        ("ogg", "audio/ogg"),
        ("flac", "audio/flac"),
        ("aac", "audio/aac"),
        ("m4a", "audio/mp4"),
        ("mp4", "video/mp4"),
        ("mov", "video/quicktime"),
        ("webm", "video/webm"),
        ("mpeg", "video/mpeg"),
    ];
    TABLE.iter().find(|(e, _)| e.eq_ignore_ascii_case(ext)).map(|(_, m)| *m)
}

fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Gemini response (input) wire types.

/// A `GenerateContentResponse`, whole or one streamed event of it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseIn<'a> {
    #[serde(borrow)]
    candidates: Option<Vec<CandidateIn<'a>>>,
    #[serde(borrow)]
    prompt_feedback: Option<PromptFeedbackIn<'a>>,
    usage_metadata: Option<UsageMetadataIn>,
    #[serde(borrow)]
    response_id: Option<Str<'a>>,
    /// Kept loose: an error we cannot parse must still be reported as an error.
    #[serde(borrow)]
    error: Option<Json<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CandidateIn<'a> {
    #[serde(borrow)]
    content: Option<ContentIn<'a>>,
    #[serde(borrow)]
    finish_reason: Option<Str<'a>>,
    index: Option<u64>,
}

#[derive(Deserialize)]
struct ContentIn<'a> {
    #[serde(borrow)]
    parts: Option<Vec<PartIn<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedbackIn<'a> {
    #[serde(borrow)]
    block_reason: Option<Str<'a>>,
}

#[derive(Deserialize, Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct UsageMetadataIn {
    prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    cached_content_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
    tool_use_prompt_token_count: Option<u64>,
}

impl UsageMetadataIn {
    /// Thinking tokens are billed as output and are not in `candidatesTokenCount`; results of
    /// Google-run tools are billed as input and are not in `promptTokenCount`. (We never
    /// enable such tools, so the latter is normally absent.)
    fn usage(&self) -> Usage {
        let n = |v: Option<u64>| v.unwrap_or(0);
        Usage {
            prompt_tokens: n(self.prompt_token_count)
                .saturating_add(n(self.tool_use_prompt_token_count)),
            completion_tokens: n(self.candidates_token_count)
                .saturating_add(n(self.thoughts_token_count)),
            cached_prompt_tokens: n(self.cached_content_token_count),
            // Implicit caching has no write surcharge; explicit caches are created (and billed)
            // through a separate API the gateway does not proxy.
            cache_write_tokens: 0,
        }
    }
}

/// One `Part` of Gemini's output, reduced to what a chat completion can carry.
#[derive(Debug, PartialEq)]
enum PartIn<'a> {
    Text {
        text: Cow<'a, str>,
        thought: bool,
    },
    Call {
        name: Cow<'a, str>,
        args: Option<Json<'a>>,
        signature: Option<Cow<'a, str>>,
    },
    /// Any other part (`inlineData`, `executableCode`, a type added after this was written):
    /// the name of its first field, for the debug log.
    Other(Cow<'a, str>),
}

#[derive(Deserialize)]
struct FunctionCallIn<'a> {
    #[serde(borrow)]
    name: Option<Str<'a>>,
    #[serde(borrow)]
    args: Option<Json<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for PartIn<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = PartIn<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Gemini part object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PartIn<'a>, A::Error> {
                let (mut text, mut thought, mut signature, mut call, mut other) =
                    (None, false, None, None, None);
                while let Some(key) = map.next_key::<Str<'a>>()? {
                    match key.0.as_ref() {
                        "text" => text = map.next_value::<Option<Str<'a>>>()?,
                        "thought" => thought = map.next_value::<Option<bool>>()?.unwrap_or(false),
                        "thoughtSignature" | "thought_signature" => {
                            signature = map.next_value::<Option<Str<'a>>>()?
                        }
                        "functionCall" | "function_call" => {
                            call = map.next_value::<Option<FunctionCallIn<'a>>>()?
                        }
                        _ => {
                            other.get_or_insert(key.0);
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(match (call, text) {
                    (Some(call), _) => PartIn::Call {
                        name: call.name.map(|n| n.0).unwrap_or_default(),
                        args: call.args,
                        signature: signature.map(|s| s.0),
                    },
                    (None, Some(text)) => PartIn::Text { text: text.0, thought },
                    (None, None) => PartIn::Other(other.unwrap_or(Cow::Borrowed("(empty part)"))),
                })
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// Gemini's finish reason as OpenAI's. `STOP` after function calls is `tool_calls`, the signal
/// OpenAI clients wait for before running tools.
fn finish_reason(reason: &str, had_tool_calls: bool) -> &'static str {
    match reason {
        "STOP" if had_tool_calls => "tool_calls",
        "STOP" => "stop",
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => "content_filter",
        "FINISH_REASON_UNSPECIFIED"
        | "OTHER"
        | "LANGUAGE"
        | "MALFORMED_FUNCTION_CALL"
        | "UNEXPECTED_TOOL_CALL"
        | "TOO_MANY_TOOL_CALLS"
        | "IMAGE_OTHER"
        | "NO_IMAGE" => "stop",
        other => {
            log::debug!("gemini: unknown finishReason '{other}', reported as 'stop'");
            "stop"
        }
    }
}

/// A Gemini `error` object's message, for logs and [`TranslateError`].
fn describe_error(error: &Json<'_>) -> String {
    let message = error.get("message").and_then(Json::as_str);
    let status = error.get("status").and_then(Json::as_str);
    let code = match error.get("code") {
        Some(Json::U(n)) => Some(*n),
        _ => None,
    };
    let mut out = String::from("Gemini error");
    if let Some(code) = code {
        out.push_str(&format!(" {code}"));
    }
    if let Some(status) = status {
        out.push_str(&format!(" {status}"));
    }
    out.push_str(": ");
    out.push_str(message.unwrap_or("(no message)"));
    out
}

// ---------------------------------------------------------------------------------------------
// OpenAI response (output) wire types.

#[derive(Serialize)]
struct CompletionOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChoiceOut<'a>>,
    usage: UsageOut,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u64,
    message: MessageOut<'a>,
    logprobs: (),
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    /// Only in stream deltas, where it says which call the delta belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extra_content: Option<ExtraContentOut<'a>>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    name: Cow<'a, str>,
    arguments: String,
}

#[derive(Serialize)]
struct ExtraContentOut<'a> {
    google: GoogleExtraOut<'a>,
}

#[derive(Serialize)]
struct GoogleExtraOut<'a> {
    thought_signature: Cow<'a, str>,
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedTokensOut,
    completion_tokens_details: ReasoningTokensOut,
}

#[derive(Serialize)]
struct CachedTokensOut {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningTokensOut {
    reasoning_tokens: u64,
}

impl UsageOut {
    fn new(usage: Usage, reasoning_tokens: u64) -> Self {
        UsageOut {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens(),
            prompt_tokens_details: CachedTokensOut { cached_tokens: usage.cached_prompt_tokens },
            completion_tokens_details: ReasoningTokensOut { reasoning_tokens },
        }
    }
}

fn tool_call_out<'a>(
    chat_id: &str,
    choice: u64,
    call: u64,
    name: Cow<'a, str>,
    args: Option<Json<'a>>,
    signature: Option<Cow<'a, str>>,
) -> ToolCallOut<'a> {
    ToolCallOut {
        index: None,
        id: tool_call_id(chat_id, choice, call),
        kind: "function",
        function: FunctionOut {
            name,
            // A function without parameters comes back without `args`.
            arguments: args.map_or_else(|| "{}".to_owned(), |a| a.to_json_string()),
        },
        extra_content: signature.filter(|s| !s.is_empty()).map(|thought_signature| {
            ExtraContentOut { google: GoogleExtraOut { thought_signature } }
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Response translation.

/// Translates a `generateContent` response into an OpenAI `chat.completion` named `slug`, and
/// returns the usage to bill.
///
/// Gemini always reports `usageMetadata` on success; if it is missing, the completion side is
/// estimated from the generated text and the prompt side is 0.
pub fn translate_response(body: &[u8], slug: &str) -> Result<(Vec<u8>, Usage), TranslateError> {
    translate_response_and_id(body, slug).map(|(out, usage, _)| (out, usage))
}

/// [`translate_response`], and Gemini's own `responseId` if it sent one (the generation
/// record's `upstream_id`; the completion's id is derived from it, see [`chat_id`]).
pub fn translate_response_and_id(body: &[u8], slug: &str) -> Result<(Vec<u8>, Usage, Option<String>), TranslateError> {
    let response: ResponseIn<'_> = serde_json::from_slice(body)
        .map_err(|e| TranslateError { message: format!("malformed Gemini response: {e}") })?;
    if let Some(error) = response.error.as_ref().filter(|e| **e != Json::Null) {
        return Err(TranslateError { message: describe_error(error) });
    }
    let upstream_id = response.response_id.as_ref().map(|r| r.0.as_ref()).filter(|r| !r.is_empty()).map(str::to_string);
    let id = chat_id(upstream_id.as_deref());
    let mut choices = Vec::new();
    let mut chars = 0u64;
    for (position, candidate) in response.candidates.unwrap_or_default().into_iter().enumerate() {
        // Proto3 JSON omits a zero index; the array is in index order.
        let index = candidate.index.unwrap_or(position as u64);
        let (mut text, mut reasoning, mut tool_calls) = (String::new(), String::new(), Vec::new());
        for part in candidate.content.and_then(|c| c.parts).unwrap_or_default() {
            match part {
                PartIn::Text { text: t, thought: false } => text.push_str(&t),
                PartIn::Text { text: t, thought: true } => reasoning.push_str(&t),
                PartIn::Call { name, args, signature } => {
                    let call =
                        tool_call_out(&id, index, tool_calls.len() as u64, name, args, signature);
                    chars += char_count(&call.function.name) + char_count(&call.function.arguments);
                    tool_calls.push(call);
                }
                PartIn::Other(kind) => log::debug!("gemini: ignoring a '{kind}' part"),
            }
        }
        chars += char_count(&text) + char_count(&reasoning);
        let finish = match &candidate.finish_reason {
            Some(reason) => finish_reason(&reason.0, !tool_calls.is_empty()),
            None if !tool_calls.is_empty() => "tool_calls",
            None => "stop",
        };
        // OpenAI sends null content beside tool calls; otherwise a string, even empty, since
        // clients commonly call string methods on it.
        let content = (!text.is_empty() || tool_calls.is_empty()).then_some(text);
        choices.push(ChoiceOut {
            index,
            message: MessageOut {
                role: "assistant",
                content,
                reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
                tool_calls,
            },
            logprobs: (),
            finish_reason: finish,
        });
    }
    if choices.is_empty() {
        // No candidates: the prompt itself was blocked (`promptFeedback.blockReason`). Clients
        // read `choices[0]`, so answer with an empty, filtered choice rather than none.
        let blocked = response.prompt_feedback.and_then(|f| f.block_reason).is_some();
        choices.push(ChoiceOut {
            index: 0,
            message: MessageOut {
                role: "assistant",
                content: Some(String::new()),
                reasoning_content: None,
                tool_calls: Vec::new(),
            },
            logprobs: (),
            finish_reason: if blocked { "content_filter" } else { "stop" },
        });
    }
    let metadata = response.usage_metadata;
    let usage = metadata.map_or_else(
        || Usage { completion_tokens: estimate::tokens_from_chars(chars), ..Usage::default() },
        |m| m.usage(),
    );
    let reasoning_tokens = metadata.and_then(|m| m.thoughts_token_count).unwrap_or(0);
    let completion = CompletionOut {
        id: &id,
        object: "chat.completion",
        created: now_secs(),
        model: slug,
        choices,
        usage: UsageOut::new(usage, reasoning_tokens),
    };
    let body = serde_json::to_vec(&completion)
        .map_err(|e| TranslateError { message: format!("could not encode the completion: {e}") })?;
    Ok((body, usage, upstream_id))
}

// ---------------------------------------------------------------------------------------------
// Streaming.

/// Per-choice progress through a stream.
#[derive(Debug, Clone, Copy)]
struct ChoiceState {
    index: u64,
    tool_calls: u64,
    finished: bool,
}

/// Translates a `streamGenerateContent?alt=sse` body into OpenAI `chat.completion.chunk`
/// events as it arrives, and meters it.
///
/// Every Gemini event is a partial `GenerateContentResponse`; as soon as one is complete it
/// becomes, per candidate: a role chunk the first time the candidate appears, a `content` (or
/// `reasoning_content`, for thought parts) chunk per text part, a `tool_calls` chunk per
/// function call (whole arguments in one delta, as Gemini sends them whole), and a finish chunk
/// when the candidate has a `finishReason`. Nothing is held back but the incomplete event.
///
/// The end (the usage chunk if the client asked for it, then `data: [DONE]`) is written only
/// in [`StreamMeter::on_end`], not when a `finishReason` arrives: Gemini sends `usageMetadata`
/// in every event, nothing promises the finishing event is the last one (several candidates
/// finish separately; metadata may follow), and Gemini closes the body right after its last
/// event, so waiting costs nothing. If the body ends before every choice has finished (or the
/// prompt was blocked), the stream ends with an error event instead of `[DONE]`, so the client
/// can tell a cut answer from a complete one. A Gemini `error` event becomes an error event in
/// the gateway's shape and ends the translation.
pub struct GeminiStream {
    decoder: SseDecoder,
    events: Vec<SseEvent>,
    slug: String,
    include_usage: bool,
    created: u64,
    /// `chatcmpl-…`, fixed by the first event.
    id: Option<String>,
    /// Gemini's own `responseId`, if the first event had one.
    upstream_id: Option<String>,
    /// The id the chunks carry to the client instead of `id` (the gateway's own).
    client_id: Option<String>,
    /// `{"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[`, built
    /// once, so a chunk costs one copy of it plus its delta.
    prefix: Vec<u8>,
    /// The chunk being written, reused across chunks.
    scratch: Vec<u8>,
    choices: Vec<ChoiceState>,
    usage: Option<Usage>,
    reasoning_tokens: u64,
    generated_chars: u64,
    /// An error event or the end was written: nothing more goes out.
    stopped: bool,
}

impl GeminiStream {
    /// `include_usage`: the client's `stream_options.include_usage`, whether it gets the usage
    /// chunk. Usage is metered either way.
    pub fn new(slug: &str, include_usage: bool) -> Self {
        Self::with_created(slug, include_usage, now_secs())
    }

    /// Chunks go to the client with `id` as their `id` (the gateway's; see
    /// `store::client_response_id`); `response_id` stays the provider's.
    pub fn with_client_id(mut self, id: &str) -> Self {
        self.client_id = Some(id.to_owned());
        self
    }

    /// [`GeminiStream::new`] with a fixed `created` timestamp, for output that can be compared
    /// byte for byte (tests, fuzz targets).
    pub fn with_created(slug: &str, include_usage: bool, created: u64) -> Self {
        GeminiStream {
            decoder: SseDecoder::new(),
            events: Vec::new(),
            slug: slug.to_owned(),
            include_usage,
            created,
            id: None,
            upstream_id: None,
            client_id: None,
            prefix: Vec::new(),
            scratch: Vec::new(),
            choices: Vec::new(),
            usage: None,
            reasoning_tokens: 0,
            generated_chars: 0,
            stopped: false,
        }
    }

    /// Characters of generated text so far (content, reasoning, tool names and arguments).
    pub fn generated_chars(&self) -> u64 {
        self.generated_chars
    }

    fn drain(&mut self, out: &mut BytesMut) {
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            if self.stopped {
                break;
            }
            self.on_event(&event.data, out);
        }
        self.events = events;
    }

    fn on_event(&mut self, data: &[u8], out: &mut BytesMut) {
        if data.trim_ascii().is_empty() {
            return;
        }
        let event: ResponseIn<'_> = match serde_json::from_slice(data) {
            Ok(event) => event,
            Err(e) => {
                log::warn!(
                    "gemini stream: skipping an event that is not a GenerateContentResponse: {e}"
                );
                return;
            }
        };
        if let Some(error) = event.error.as_ref().filter(|e| **e != Json::Null) {
            log::debug!("gemini stream: {}", describe_error(error));
            let status = match error.get("code") {
                Some(Json::U(code)) => u16::try_from(*code).unwrap_or(502),
                _ => 502,
            };
            return self.fail(from_provider(status, data), out);
        }
        if self.id.is_none() {
            self.start(event.response_id.as_ref().map(|r| r.0.as_ref()));
        }
        if let Some(metadata) = event.usage_metadata {
            self.usage = Some(metadata.usage());
            self.reasoning_tokens = metadata.thoughts_token_count.unwrap_or(0);
        }
        let candidates = event.candidates.unwrap_or_default();
        if candidates.is_empty() {
            if event.prompt_feedback.and_then(|f| f.block_reason).is_some() {
                let slot = self.choice(0, out);
                self.finish(slot, "content_filter", out);
            }
            return;
        }
        for candidate in candidates {
            self.on_candidate(candidate, out);
        }
    }

    fn start(&mut self, response_id: Option<&str>) {
        self.upstream_id = response_id.filter(|r| !r.is_empty()).map(str::to_string);
        let id = chat_id(response_id);
        let mut prefix = Vec::with_capacity(id.len() + self.slug.len() + 80);
        prefix.extend_from_slice(b"{\"id\":");
        write_json_string(&mut prefix, self.client_id.as_deref().unwrap_or(&id));
        prefix.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        let _ = write!(prefix, "{}", self.created);
        prefix.extend_from_slice(b",\"model\":");
        write_json_string(&mut prefix, &self.slug);
        prefix.extend_from_slice(b",\"choices\":[");
        self.prefix = prefix;
        self.id = Some(id);
    }

    fn on_candidate(&mut self, candidate: CandidateIn<'_>, out: &mut BytesMut) {
        // Proto3 JSON omits a zero index.
        let slot = self.choice(candidate.index.unwrap_or(0), out);
        let index = self.choices[slot].index;
        for part in candidate.content.and_then(|c| c.parts).unwrap_or_default() {
            match part {
                // Gemini ends streams with an empty text part; an empty delta says nothing.
                PartIn::Text { text, .. } if text.is_empty() => {}
                PartIn::Text { text, thought } => {
                    self.generated_chars += char_count(&text);
                    self.begin_chunk(index);
                    self.scratch.extend_from_slice(if thought {
                        b"{\"reasoning_content\":"
                    } else {
                        b"{\"content\":"
                    });
                    write_json_string(&mut self.scratch, &text);
                    self.scratch.push(b'}');
                    self.end_chunk(None, out);
                }
                PartIn::Call { name, args, signature } => {
                    let id = self.id.as_deref().unwrap_or_default();
                    let number = self.choices[slot].tool_calls;
                    self.choices[slot].tool_calls += 1;
                    let mut call = tool_call_out(id, index, number, name, args, signature);
                    call.index = Some(number);
                    self.generated_chars +=
                        char_count(&call.function.name) + char_count(&call.function.arguments);
                    self.begin_chunk(index);
                    self.scratch.extend_from_slice(b"{\"tool_calls\":[");
                    // Cannot fail: plain structs with string keys, written to a Vec.
                    let _ = serde_json::to_writer(&mut self.scratch, &call);
                    self.scratch.extend_from_slice(b"]}");
                    self.end_chunk(None, out);
                }
                PartIn::Other(kind) => log::debug!("gemini stream: ignoring a '{kind}' part"),
            }
        }
        if let Some(reason) = candidate.finish_reason {
            let reason = finish_reason(&reason.0, self.choices[slot].tool_calls > 0);
            self.finish(slot, reason, out);
        }
    }

    /// The slot of choice `index`, created (with its role chunk) on first sight.
    fn choice(&mut self, index: u64, out: &mut BytesMut) -> usize {
        if let Some(slot) = self.choices.iter().position(|c| c.index == index) {
            return slot;
        }
        self.choices.push(ChoiceState { index, tool_calls: 0, finished: false });
        self.begin_chunk(index);
        self.scratch.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\"}");
        self.end_chunk(None, out);
        self.choices.len() - 1
    }

    fn finish(&mut self, slot: usize, reason: &'static str, out: &mut BytesMut) {
        if self.choices[slot].finished {
            return;
        }
        self.choices[slot].finished = true;
        self.begin_chunk(self.choices[slot].index);
        self.scratch.extend_from_slice(b"{}");
        self.end_chunk(Some(reason), out);
    }

    /// Starts `data: {…"choices":[{"index":N,"delta":`; the caller writes the delta object.
    fn begin_chunk(&mut self, index: u64) {
        if self.id.is_none() {
            // Only reachable through a blocked prompt before any id was seen; defensive.
            self.start(None);
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(b"data: ");
        self.scratch.extend_from_slice(&self.prefix);
        let _ = write!(self.scratch, "{{\"index\":{index},\"delta\":");
    }

    fn end_chunk(&mut self, finish: Option<&str>, out: &mut BytesMut) {
        match finish {
            None => self.scratch.extend_from_slice(b",\"finish_reason\":null}]}\n\n"),
            Some(reason) => {
                self.scratch.extend_from_slice(b",\"finish_reason\":\"");
                self.scratch.extend_from_slice(reason.as_bytes());
                self.scratch.extend_from_slice(b"\"}]}\n\n");
            }
        }
        out.extend_from_slice(&self.scratch);
    }

    fn fail(&mut self, error: ApiError, out: &mut BytesMut) {
        out.extend_from_slice(&error.sse_event());
        self.stopped = true;
    }
}

impl StreamMeter for GeminiStream {
    fn on_bytes(&mut self, input: &[u8], out: &mut BytesMut) {
        if self.stopped {
            return;
        }
        self.decoder.feed(input, &mut self.events);
        self.drain(out);
        if let Some(e) = self.decoder.error() {
            if !self.stopped {
                // Unlike an OpenAI stream, Gemini bytes cannot be passed through untranslated.
                self.fail(ApiError::upstream_error(format!("provider stream: {e}")), out);
            }
        }
    }

    fn on_end(&mut self, out: &mut BytesMut) {
        if self.stopped {
            return;
        }
        self.decoder.finish(&mut self.events);
        self.drain(out);
        if self.stopped {
            return;
        }
        if let (true, Some(usage), Some(_)) = (self.include_usage, self.usage, &self.id) {
            self.scratch.clear();
            self.scratch.extend_from_slice(b"data: ");
            self.scratch.extend_from_slice(&self.prefix);
            self.scratch.extend_from_slice(b"],\"usage\":");
            let _ = serde_json::to_writer(
                &mut self.scratch,
                &UsageOut::new(usage, self.reasoning_tokens),
            );
            self.scratch.extend_from_slice(b"}\n\n");
            out.extend_from_slice(&self.scratch);
        }
        let complete = !self.choices.is_empty() && self.choices.iter().all(|c| c.finished);
        if complete {
            out.extend_from_slice(b"data: [DONE]\n\n");
            self.stopped = true;
        } else {
            self.fail(
                ApiError::upstream_error(
                    "the provider's stream ended before the response was complete",
                ),
                out,
            );
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn response_id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn upstream_id(&self) -> Option<&str> {
        self.upstream_id.as_deref()
    }

    fn estimated_completion_tokens(&self) -> u64 {
        estimate::tokens_from_chars(self.generated_chars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const SLUG: &str = "google/gemini-2.5-flash";

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/gemini/", $name))
        };
    }

    fn value(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
    }

    /// `created` is the clock; everything else must match exactly.
    fn without_created(mut v: Value) -> Value {
        if let Some(object) = v.as_object_mut() {
            object.remove("created");
        }
        v
    }

    // ---- requests ----------------------------------------------------------------------------

    const REQUESTS: [(&str, &str, &str); 6] = [
        ("plain", fixture!("request_plain.openai.json"), fixture!("request_plain.gemini.json")),
        (
            "system_multiturn",
            fixture!("request_system_multiturn.openai.json"),
            fixture!("request_system_multiturn.gemini.json"),
        ),
        ("vision", fixture!("request_vision.openai.json"), fixture!("request_vision.gemini.json")),
        ("tools", fixture!("request_tools.openai.json"), fixture!("request_tools.gemini.json")),
        (
            "json_mode",
            fixture!("request_json_mode.openai.json"),
            fixture!("request_json_mode.gemini.json"),
        ),
        (
            "json_schema",
            fixture!("request_json_schema.openai.json"),
            fixture!("request_json_schema.gemini.json"),
        ),
    ];

    #[test]
    fn request_fixtures() {
        for (name, openai, gemini) in REQUESTS {
            let out = translate_request(openai.as_bytes(), Some(8192))
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(value(&out), value(gemini.as_bytes()), "{name}");
        }
    }

    #[test]
    fn schemas_and_arguments_keep_their_key_order() {
        let out =
            translate_request(fixture!("request_tools.openai.json").as_bytes(), None).unwrap();
        let out = String::from_utf8(out).unwrap();
        let schema = r#""parametersJsonSchema":{"type":"object","properties":{"city":{"type":"string","description":"City name"},"unit":{"type":["string","null"],"enum":["c","f",null]}},"required":["city","unit"],"additionalProperties":false}"#;
        assert!(out.contains(schema), "{out}");
        assert!(out.contains(r#""args":{"city":"Paris","unit":"c"}"#), "{out}");
        let (body, _) =
            translate_response(fixture!("response_function_call.gemini.json").as_bytes(), SLUG)
                .unwrap();
        let v = value(&body);
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            r#"{"unit":"c","city":"Paris"}"#
        );
    }

    #[test]
    fn max_output_tokens_falls_back_to_the_default() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let out = value(&translate_request(body, Some(4096)).unwrap());
        assert_eq!(out["generationConfig"], json!({"maxOutputTokens": 4096}));
        let out = value(&translate_request(body, None).unwrap());
        assert_eq!(out, json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}));
        // Either client field wins over the default; both given, the larger (as reserved).
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":7,"max_tokens":null}"#;
        assert_eq!(
            value(&translate_request(body, Some(4096)).unwrap())["generationConfig"]
                ["maxOutputTokens"],
            7
        );
    }

    #[test]
    fn request_details() {
        let t = |body: Value| value(&translate_request(body.to_string().as_bytes(), None).unwrap());
        let user = |content: Value| json!({"model": "m", "messages": [{"role": "user", "content": content}]});
        // Data URL without base64: percent-decoded, then base64-encoded; empty MIME defaulted.
        let out = t(user(json!([{"type": "image_url", "image_url": {"url": "data:,a%20b"}}])));
        assert_eq!(
            out["contents"][0]["parts"][0],
            json!({"inline_data": {"mime_type": "image/jpeg", "data": "YSBi"}})
        );
        let out = t(user(
            json!([{"type": "image_url", "image_url": {"url": "data:image/gif;name=x;BASE64,R0lG"}}]),
        ));
        assert_eq!(
            out["contents"][0]["parts"][0],
            json!({"inline_data": {"mime_type": "image/gif", "data": "R0lG"}})
        );
        // The host's ".com" is not an extension; gs:// is Gemini's own.
        let out = t(user(json!([
            {"type": "image_url", "image_url": {"url": "HTTPS://example.com"}},
            {"type": "image_url", "image_url": {"url": "gs://bucket/a/b.PNG"}},
            {"type": "file", "file": {"file_data": "JVBE"}},
            {"type": "text", "text": ""},
        ])));
        assert_eq!(
            out["contents"][0]["parts"],
            json!([
                {"file_data": {"mime_type": "image/jpeg", "file_uri": "HTTPS://example.com"}},
                {"file_data": {"mime_type": "image/png", "file_uri": "gs://bucket/a/b.PNG"}},
                {"inline_data": {"mime_type": "application/pdf", "data": "JVBE"}},
            ])
        );
        // tool_choice modes; stop as an array; a huge seed wraps into Gemini's int32.
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        for (choice, mode) in [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")] {
            let out = t(
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": choice, "stop": ["a", "b"], "seed": 4294967297_i64}),
            );
            assert_eq!(out["toolConfig"], json!({"functionCallingConfig": {"mode": mode}}));
            assert_eq!(out["tools"], json!([{"functionDeclarations": [{"name": "f"}]}]));
            assert_eq!(out["generationConfig"], json!({"stopSequences": ["a", "b"], "seed": 1}));
        }
        // A tool_choice without tools is moot; an empty tools array sends no tools.
        let out = t(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [], "tool_choice": "required"}),
        );
        assert!(out.get("tools").is_none() && out.get("toolConfig").is_none());
        // The legacy function role, and a tool result matched by name when the id is unknown.
        let out = t(json!({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "function", "name": "f", "content": "[1,2]"},
            {"role": "tool", "tool_call_id": "nope", "name": "g", "content": null},
        ]}));
        // Text and function responses are all user turns: merged into one.
        assert_eq!(
            out["contents"],
            json!([{"role": "user", "parts": [
                {"text": "x"},
                {"functionResponse": {"name": "f", "response": {"content": [1, 2]}}},
                {"functionResponse": {"name": "g", "response": {"content": {"result": ""}}}},
            ]}])
        );
    }

    #[test]
    fn request_errors_name_the_field() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            (r#"{"model":"m"}"#, Some("messages"), "missing required field 'messages'"),
            (r#"{"model":"m","messages":[]}"#, Some("messages"), "at least one user or assistant"),
            (
                r#"{"model":"m","messages":[{"role":"system","content":"s"}]}"#,
                Some("messages"),
                "at least one",
            ),
            (r#"{"model":"m","messages":{}}"#, Some("messages"), "invalid 'messages'"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                Some("temperature"),
                "invalid 'temperature'",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":5}"#,
                Some("stop"),
                "invalid 'stop'",
            ),
            (
                r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#,
                Some("messages[0].role"),
                "unsupported role 'wizard'",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"video","video":{}}]}]}"#,
                Some("messages[0].content[0].type"),
                "'video' is not supported",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"text":"x"}]}]}"#,
                Some("messages[0].content[0].type"),
                "missing content part type",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
                Some("messages[0].content[0].text"),
                "missing 'text'",
            ),
            (
                r#"{"model":"m","messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#,
                Some("messages[0].content[0].type"),
                "only supported in user messages",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"ftp://x/y.png"}}]}]}"#,
                Some("messages[0].content[0].image_url.url"),
                "expected a data URL",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64"}}]}]}"#,
                Some("messages[0].content[0].image_url.url"),
                "malformed data URL",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"file-1"}}]}]}"#,
                Some("messages[0].content[0].file.file_id"),
                "file_data",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"tool","tool_call_id":"c1","content":"r"}]}"#,
                Some("messages[1].tool_call_id"),
                "does not match",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"tool","content":"r"}]}"#,
                Some("messages[1].tool_call_id"),
                "missing tool_call_id",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"assistant","tool_calls":[{"id":"c","function":{"name":"f","arguments":"[1]"}}]}]}"#,
                Some("messages[1].tool_calls[0].function.arguments"),
                "JSON object",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"assistant","tool_calls":[{"id":"c","function":{"arguments":"{}"}}]}]}"#,
                Some("messages[1].tool_calls[0].function.name"),
                "missing function name",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search"}]}"#,
                Some("tools[0].type"),
                "only 'function'",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#,
                Some("tools[0].function"),
                "missing",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"sometimes"}"#,
                Some("tool_choice"),
                "unsupported tool_choice",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{}}}"#,
                Some("tool_choice.function.name"),
                "missing",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"allowed_tools"}}"#,
                Some("tool_choice.type"),
                "unsupported",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"yaml"}}"#,
                Some("response_format.type"),
                "unsupported",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}]} trailing"#,
                None,
                "not valid JSON",
            ),
            ("[1]", None, "not valid JSON"),
            ("", None, "not valid JSON"),
        ];
        for (body, param, message) in cases {
            let err = translate_request(body.as_bytes(), None).expect_err(body);
            assert_eq!(err.param.as_deref(), *param, "{body}: {err:?}");
            assert!(err.message.contains(message), "{body}: {err:?}");
        }
    }

    // ---- responses ---------------------------------------------------------------------------

    #[test]
    fn response_fixtures() {
        let cases = [
            (
                fixture!("response_text.gemini.json"),
                fixture!("response_text.openai.json"),
                Usage { prompt_tokens: 8, completion_tokens: 29, ..Usage::default() },
            ),
            (
                fixture!("response_function_call.gemini.json"),
                fixture!("response_function_call.openai.json"),
                Usage {
                    prompt_tokens: 1205,
                    completion_tokens: 31,
                    cached_prompt_tokens: 1024,
                    cache_write_tokens: 0,
                },
            ),
            (
                fixture!("response_max_tokens.gemini.json"),
                fixture!("response_max_tokens.openai.json"),
                Usage { prompt_tokens: 12, completion_tokens: 16, ..Usage::default() },
            ),
            (
                fixture!("response_safety.gemini.json"),
                fixture!("response_safety.openai.json"),
                Usage { prompt_tokens: 15, ..Usage::default() },
            ),
        ];
        for (gemini, openai, usage) in cases {
            let (body, got) = translate_response(gemini.as_bytes(), SLUG).unwrap();
            let v = value(&body);
            assert!(v["created"].as_u64().is_some_and(|c| c > 1_700_000_000));
            assert_eq!(without_created(v), without_created(value(openai.as_bytes())), "{gemini}");
            assert_eq!(got, usage);
        }
    }

    #[test]
    fn response_edge_cases() {
        // A blocked prompt has no candidates: one empty, filtered choice.
        let blocked = br#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},"usageMetadata":{"promptTokenCount":7,"totalTokenCount":7}}"#;
        let (body, usage) = translate_response(blocked, SLUG).unwrap();
        let v = value(&body);
        assert_eq!(
            v["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": "content_filter"}])
        );
        assert_eq!(usage, Usage { prompt_tokens: 7, ..Usage::default() });
        // Without responseId an id is generated, different each time.
        let id = |b: &[u8]| value(b)["id"].as_str().unwrap().to_owned();
        let (a, _) = translate_response(blocked, SLUG).unwrap();
        assert!(id(&a).starts_with("chatcmpl-") && id(&a).len() == 33 && id(&a) != id(&body));
        // Missing usage: the completion is estimated from the text (12 chars → 3 tokens).
        let (_, usage) = translate_response(br#"{"candidates":[{"content":{"parts":[{"text":"abcdefghijkl"}]},"finishReason":"STOP"}]}"#, SLUG).unwrap();
        assert_eq!(usage, Usage { completion_tokens: 3, ..Usage::default() });
        // Thought parts are reasoning, not content; unknown parts are skipped.
        let (body, _) = translate_response(br#"{"candidates":[{"content":{"parts":[{"text":"hmm","thought":true},{"codeExecutionResult":{}},{"text":"ok"}]},"finishReason":"OTHER"}],"responseId":"r"}"#, SLUG).unwrap();
        assert_eq!(
            value(&body)["choices"][0]["message"],
            json!({"role": "assistant", "content": "ok", "reasoning_content": "hmm"})
        );
        assert_eq!(value(&body)["choices"][0]["finish_reason"], "stop");
        // Errors and garbage are errors, never panics.
        let err = translate_response(br#"{"error":{"code":429,"message":"Resource exhausted","status":"RESOURCE_EXHAUSTED"}}"#, SLUG).unwrap_err();
        assert_eq!(err.message, "Gemini error 429 RESOURCE_EXHAUSTED: Resource exhausted");
        assert_eq!(
            translate_response(br#"{"error":"boom"}"#, SLUG).unwrap_err().message,
            "Gemini error: (no message)"
        );
        for garbage in [
            &b""[..],
            b"<html>",
            b"[{}]",
            b"{\"candidates\":",
            b"{\"candidates\":[{\"index\":-1}]}",
        ] {
            assert!(translate_response(garbage, SLUG)
                .unwrap_err()
                .message
                .starts_with("malformed Gemini response"));
        }
    }

    #[test]
    fn finish_reasons() {
        let cases = [
            ("STOP", false, "stop"),
            ("STOP", true, "tool_calls"),
            ("MAX_TOKENS", true, "length"),
            ("SAFETY", false, "content_filter"),
            ("RECITATION", false, "content_filter"),
            ("BLOCKLIST", false, "content_filter"),
            ("PROHIBITED_CONTENT", false, "content_filter"),
            ("SPII", false, "content_filter"),
            ("MALFORMED_FUNCTION_CALL", false, "stop"),
            ("SOMETHING_NEW", true, "stop"),
        ];
        for (gemini, calls, openai) in cases {
            assert_eq!(finish_reason(gemini, calls), openai, "{gemini}");
        }
    }

    // ---- streams -----------------------------------------------------------------------------

    fn run(chunks: &[&[u8]], include_usage: bool) -> (String, GeminiStream) {
        let mut stream = GeminiStream::new(SLUG, include_usage);
        stream.created = 0;
        let mut out = BytesMut::new();
        for chunk in chunks {
            stream.on_bytes(chunk, &mut out);
        }
        stream.on_end(&mut out);
        (String::from_utf8(out.to_vec()).expect("output is UTF-8"), stream)
    }

    /// The `data:` payloads of an SSE text, as JSON where they are JSON.
    fn events(sse: &str) -> Vec<Value> {
        sse.split("\n\n")
            .filter(|block| !block.trim().is_empty())
            .map(|block| {
                let data = block
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data event: {block:?}"));
                serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_owned()))
            })
            .collect()
    }

    /// Whole, split at every byte, and byte by byte: identical output, and the fixture's.
    fn assert_stream(input: &str, want: &str, include_usage: bool) -> GeminiStream {
        let input = input.as_bytes();
        let (whole, stream) = run(&[input], include_usage);
        assert_eq!(events(&whole), events(want));
        // The writer's exact bytes, too: the fixtures are written in its key order.
        assert_eq!(whole, want);
        for cut in 0..=input.len() {
            let (out, _) = run(&[&input[..cut], &input[cut..]], include_usage);
            assert_eq!(out, whole, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&bytes, include_usage).0, whole, "byte by byte");
        stream
    }

    #[test]
    fn stream_text_fixture() {
        let stream = assert_stream(
            fixture!("stream_text.gemini.sse"),
            fixture!("stream_text.openai.sse"),
            true,
        );
        assert_eq!(
            stream.usage(),
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 26,
                cached_prompt_tokens: 4,
                cache_write_tokens: 0
            })
        );
        assert_eq!(stream.response_id(), Some("chatcmpl-st-Ab12Cd"));
        assert_eq!(crate::metering::StreamMeter::upstream_id(&stream), Some("st-Ab12Cd"));
        // "Hello" + " world! Here’s a \"line\"\n" + " café 😀"
        assert_eq!(stream.generated_chars(), 5 + 24 + 7);
        assert_eq!(stream.estimated_completion_tokens(), 9);
        // Without include_usage, the same stream minus the usage chunk; usage still metered.
        let (out, stream) = run(&[fixture!("stream_text.gemini.sse").as_bytes()], false);
        let want: Vec<Value> = events(fixture!("stream_text.openai.sse"))
            .into_iter()
            .filter(|e| e.get("usage").is_none())
            .collect();
        assert_eq!(events(&out), want);
        assert_eq!(stream.usage().map(|u| u.total_tokens()), Some(35));
    }

    #[test]
    fn stream_function_call_fixture() {
        let stream = assert_stream(
            fixture!("stream_function_call.gemini.sse"),
            fixture!("stream_function_call.openai.sse"),
            false,
        );
        assert_eq!(stream.usage().map(|u| u.cached_prompt_tokens), Some(1024));
        // Streamed tool calls get the ids the same response gets unstreamed.
        let (body, _) =
            translate_response(fixture!("response_function_call.gemini.json").as_bytes(), SLUG)
                .unwrap();
        let calls = &value(&body)["choices"][0]["message"]["tool_calls"];
        let streamed = events(fixture!("stream_function_call.openai.sse"));
        for k in 0..2 {
            assert_eq!(
                streamed[2 + k]["choices"][0]["delta"]["tool_calls"][0]["id"],
                calls[k]["id"]
            );
        }
        // "Let me check." + "get_weather" + {"unit":"c","city":"Paris"} + "get_time" + {}
        assert_eq!(stream.generated_chars(), 13 + 11 + 27 + 8 + 2);
    }

    #[test]
    fn stream_unknown_part_fixture() {
        let stream = assert_stream(
            fixture!("stream_unknown_part.gemini.sse"),
            fixture!("stream_unknown_part.openai.sse"),
            true,
        );
        assert_eq!(stream.generated_chars(), 17 + 8 + 2);
    }

    #[test]
    fn complete_events_are_never_held_back() {
        let mut stream = GeminiStream::new(SLUG, false);
        let mut out = BytesMut::new();
        stream.on_bytes(b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}],\"responseId\":\"r\"}\r\n", &mut out);
        assert!(out.is_empty(), "the event is not complete before its blank line");
        assert_eq!(stream.response_id(), None);
        stream.on_bytes(b"\r\n", &mut out);
        let got = events(std::str::from_utf8(&out).unwrap());
        assert_eq!(got.len(), 2);
        assert_eq!(got[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(stream.response_id(), Some("chatcmpl-r"));
        assert_eq!(crate::metering::StreamMeter::upstream_id(&stream), Some("r"));
    }

    #[test]
    fn the_providers_own_id_is_its_response_id() {
        let own = |body: &[u8]| translate_response_and_id(body, SLUG).unwrap().2;
        assert_eq!(own(br#"{"candidates":[],"responseId":"r-1\u00e9"}"#).as_deref(), Some("r-1é"));
        assert_eq!(own(br#"{"candidates":[{"responseId":"nested"}]}"#), None);
        assert_eq!(own(br#"{"responseId":""}"#), None);
        assert!(translate_response_and_id(br#"{"responseId":7}"#, SLUG).is_err());
        assert!(translate_response_and_id(b"not json", SLUG).is_err());
        // No responseId: the translated id is made up, and there is no provider id to keep.
        let mut stream = GeminiStream::new(SLUG, false);
        let mut out = BytesMut::new();
        stream.on_bytes(b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}]}\r\n\r\n", &mut out);
        assert!(stream.response_id().is_some_and(|id| id.starts_with("chatcmpl-")));
        assert_eq!(crate::metering::StreamMeter::upstream_id(&stream), None);
    }

    #[test]
    fn stream_with_several_candidates() {
        let input = concat!(
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"A\"}]}},{\"content\":{\"parts\":[{\"text\":\"B\"}]},\"index\":1}],\"responseId\":\"n2\"}\n\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\",\"args\":{}}}]},\"index\":1,\"finishReason\":\"STOP\"}]}\n\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]},\"finishReason\":\"MAX_TOKENS\"}],\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":4}}\n\n",
        );
        let (out, stream) = run(&[input.as_bytes()], true);
        let got = events(&out);
        let deltas: Vec<(Value, Value, Value)> = got
            .iter()
            .filter_map(|e| {
                let c = e["choices"].get(0)?;
                Some((c["index"].clone(), c["delta"].clone(), c["finish_reason"].clone()))
            })
            .collect();
        let call = json!({"tool_calls": [{"index": 0, "id": tool_call_id("chatcmpl-n2", 1, 0), "type": "function", "function": {"name": "f", "arguments": "{}"}}]});
        assert_eq!(
            deltas,
            vec![
                (json!(0), json!({"role": "assistant", "content": ""}), Value::Null),
                (json!(0), json!({"content": "A"}), Value::Null),
                (json!(1), json!({"role": "assistant", "content": ""}), Value::Null),
                (json!(1), json!({"content": "B"}), Value::Null),
                (json!(1), call, Value::Null),
                (json!(1), json!({}), json!("tool_calls")),
                (json!(0), json!({"content": "a"}), Value::Null),
                (json!(0), json!({}), json!("length")),
            ]
        );
        assert_eq!(got[got.len() - 2]["usage"]["total_tokens"], 7);
        assert_eq!(got[got.len() - 1], json!("[DONE]"));
        assert_eq!(stream.usage().map(|u| u.completion_tokens), Some(4));
    }

    #[test]
    fn stream_of_a_blocked_prompt() {
        let input = b"data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"},\"usageMetadata\":{\"promptTokenCount\":6,\"totalTokenCount\":6},\"responseId\":\"b\"}\r\n\r\n";
        let (out, stream) = run(&[input], false);
        let got = events(&out);
        assert_eq!(got.len(), 3);
        assert_eq!(got[1]["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(got[2], json!("[DONE]"));
        assert_eq!(stream.usage(), Some(Usage { prompt_tokens: 6, ..Usage::default() }));
    }

    #[test]
    fn stream_error_event_stops_the_translation() {
        let text = fixture!("stream_text.gemini.sse");
        let first = &text[..text.find("\r\n\r\n").unwrap() + 4];
        let error = "data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n";
        let input = format!("{first}{error}{first}");
        let (out, stream) = run(&[input.as_bytes()], true);
        let got = events(&out);
        assert_eq!(got.len(), 3, "{out}");
        assert_eq!(got[2]["error"]["message"], "The model is overloaded.");
        // The type comes from the gateway's status mapping (api::error), not asserted here.
        assert!(got[2]["error"]["type"].is_string(), "{out}");
        assert!(!out.contains("[DONE]"));
        assert_eq!(stream.usage().map(|u| u.prompt_tokens), Some(9));
    }

    #[test]
    fn stream_cut_before_its_finish_ends_with_an_error() {
        let text = fixture!("stream_text.gemini.sse");
        let cut = text.find("\"finishReason\"").unwrap();
        let (out, stream) = run(&[&text.as_bytes()[..cut]], true);
        let got = events(&out);
        // role, 3 texts, usage (the last reported, partial), then an error instead of [DONE].
        assert_eq!(got.len(), 6, "{out}");
        assert_eq!(got[4]["usage"]["completion_tokens"], 11);
        assert_eq!(got[5]["error"]["type"], "upstream_error");
        assert_eq!(stream.usage().map(|u| u.completion_tokens), Some(11));
        // An empty body: just the error.
        let (out, stream) = run(&[], true);
        assert_eq!(events(&out).len(), 1);
        assert_eq!((stream.usage(), stream.response_id()), (None, None));
        // on_end twice, or bytes after it, add nothing.
        let (mut stream, mut out) = (GeminiStream::new(SLUG, true), BytesMut::new());
        stream.on_end(&mut out);
        let len = out.len();
        stream.on_end(&mut out);
        stream.on_bytes(text.as_bytes(), &mut out);
        assert_eq!(out.len(), len);
    }

    #[test]
    fn oversized_and_malformed_events() {
        let mut stream = GeminiStream::new(SLUG, false);
        stream.decoder = SseDecoder::with_limit(64);
        let mut out = BytesMut::new();
        stream.on_bytes(b"data: not json\n\ndata: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"0123456789abcdefghij\"}]}}]}\n\n", &mut out);
        let got = events(std::str::from_utf8(&out).unwrap());
        assert_eq!(
            got.len(),
            1,
            "the malformed event is skipped, the oversized one is an error: {got:?}"
        );
        assert!(got[0]["error"]["message"].as_str().unwrap().contains("larger than 64 bytes"));
        let len = out.len();
        stream.on_bytes(b"data: {}\n\n", &mut out);
        stream.on_end(&mut out);
        assert_eq!(out.len(), len);
    }

    /// A mutated `responseId` makes the stream generate its id (and so its tool-call ids) at
    /// random: replace them with placeholders.
    fn without_generated_ids(out: &str, stream: &GeminiStream) -> String {
        let Some(id) = stream.response_id() else { return out.to_owned() };
        let mut out = out.replace(id, "chatcmpl-ID");
        while let Some(at) = out.find("\"call_").filter(|&at| out[at + 1..].len() > 21) {
            out.replace_range(at + 1..at + 22, "CALL-ID-PLACEHOLDER--");
        }
        out
    }

    /// Random mutations of the fixtures (line breaks, braces, quotes moved around): no panic,
    /// output always UTF-8, and still independent of where the input was split.
    #[test]
    fn mutated_streams_are_split_invariant() {
        let alphabet = b"\r\n:{}[]\",\\ d0\xff";
        let mut next = crate::testing::xorshift(0x9E37_79B9_7F4A_7C15_u64);
        let fixtures = [
            fixture!("stream_text.gemini.sse"),
            fixture!("stream_function_call.gemini.sse"),
            fixture!("stream_unknown_part.gemini.sse"),
        ];
        for round in 0..300 {
            let mut input = fixtures[round % fixtures.len()].as_bytes().to_vec();
            for _ in 0..=next(8) {
                let at = next(input.len());
                input[at] = alphabet[next(alphabet.len())];
            }
            let usage = next(2) == 0;
            let (whole, stream) = run(&[&input], usage);
            let whole = without_generated_ids(&whole, &stream);
            for _ in 0..8 {
                let (a, b) = (next(input.len()), next(input.len()));
                let (a, b) = (a.min(b), a.max(b));
                let (out, stream) = run(&[&input[..a], &input[a..b], &input[b..]], usage);
                assert_eq!(without_generated_ids(&out, &stream), whole, "splits {a} {b}");
            }
        }
    }

    /// Random mutations of every request and response fixture: errors, never panics.
    #[test]
    fn mutated_bodies_never_panic() {
        let alphabet = b"{}[]\":,\\ ntf01-.eu\x00\xff";
        let mut next = crate::testing::xorshift(0x2545_F491_4F6C_DD1D_u64);
        let mut bodies: Vec<&str> = REQUESTS.iter().map(|(_, openai, _)| *openai).collect();
        bodies.extend([
            fixture!("response_text.gemini.json"),
            fixture!("response_function_call.gemini.json"),
            fixture!("response_max_tokens.gemini.json"),
            fixture!("response_safety.gemini.json"),
        ]);
        let (mut requests, mut responses) = (0, 0);
        for round in 0..6_000 {
            let mut body = bodies[round % bodies.len()].as_bytes().to_vec();
            for _ in 0..=next(3) {
                let at = next(body.len());
                match next(4) {
                    0 => drop(body.remove(at)),
                    1 => body.insert(at, alphabet[next(alphabet.len())]),
                    _ => body[at] = alphabet[next(alphabet.len())],
                }
            }
            if let Ok(out) = translate_request(&body, Some(10)) {
                requests += 1;
                value(&out);
            }
            if let Ok((out, _)) = translate_response(&body, SLUG) {
                responses += 1;
                value(&out);
            }
        }
        assert!(requests > 500 && responses > 100, "{requests} {responses}");
    }

    #[test]
    fn paths() {
        assert_eq!(
            upstream_path("gemini-2.5-flash", false),
            "/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            upstream_path("gemini-2.5-flash", true),
            "/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            upstream_path("tunedModels/my-tune", false),
            "/tunedModels/my-tune:generateContent"
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(url_path("https://h.com/a/b.png?x=1#f"), "/a/b.png");
        assert_eq!(url_path("https://h.com"), "");
        assert_eq!(guess_mime("/a/b.tar.GZ"), None);
        assert_eq!(guess_mime("/a/b.JPeG"), Some("image/jpeg"));
        assert_eq!(percent_decode("%41%zz%4"), b"A%zz%4");
        assert_eq!(char_count("aé😀"), 3);
        let ids: std::collections::HashSet<String> = (0..100).map(|_| random_hex()).collect();
        assert_eq!(ids.len(), 100);
        assert_ne!(tool_call_id("chatcmpl-a", 0, 1), tool_call_id("chatcmpl-a", 1, 0));
    }
}
