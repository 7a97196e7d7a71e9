//! The OpenAI chat-completions wire format: validating and rewriting requests, rewriting
//! responses, and reading the parts of streamed chunks that metering needs.
//!
//! Bodies are never turned into a `serde_json::Value`. Validation streams through serde with
//! visitors that keep only scalars and counts (message contents are skipped, not copied), and
//! rewrites splice bytes at spans found by [`json_scan`], so a 1 MiB image costs one scan and
//! one copy.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::json_scan::{self, ObjectScanner, ScanError};
use crate::metering::usage::Usage;

/// What the gateway needs to know about a chat request before forwarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRequestInfo {
    pub model: String,
    pub stream: bool,
    /// The client's own `stream_options.include_usage`.
    pub include_usage: bool,
    /// The larger of `max_tokens` and `max_completion_tokens` when either is given: the request
    /// cannot generate more than this per choice, whichever of the two the provider honours.
    pub max_tokens: Option<u64>,
    pub message_count: usize,
    /// Number of choices to generate (`n`), 1 when absent. Output cost scales with it.
    pub n: u64,
}

/// A request the gateway refuses, in the shape of OpenAI's `invalid_request_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub message: String,
    pub param: Option<String>,
}

impl RequestError {
    fn new(message: impl Into<String>, param: Option<&str>) -> Self {
        RequestError { message: message.into(), param: param.map(str::to_owned) }
    }

    fn field(param: &str, message: impl Into<String>) -> Self {
        Self::new(message, Some(param))
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RequestError {}

/// Validates a chat-completions request body and extracts what routing and billing need.
///
/// The whole body is checked to be syntactically valid JSON (serde walks it once, skipping
/// contents without allocating them). Known fields given twice are rejected: serde-based
/// upstreams keep the last occurrence, and if we read a different one than the provider, a
/// client could be routed or billed for one model while getting another.
pub fn parse_chat_request(body: &[u8]) -> Result<ChatRequestInfo, RequestError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => return Err(RequestError::new("request body is empty", None)),
        Some(b'{') => {}
        Some(_) => {
            // Distinguish "valid JSON, wrong shape" from "not JSON" for a clearer message.
            return Err(match serde_json::from_slice::<IgnoredAny>(body) {
                Ok(_) => RequestError::new("request body must be a JSON object", None),
                Err(e) => not_json(e),
            });
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let fields = (&mut de).deserialize_map(TopLevel).map_err(not_json)?;
    de.end().map_err(not_json)?;
    fields.validate()
}

fn not_json(e: serde_json::Error) -> RequestError {
    RequestError::new(format!("request body is not valid JSON: {e}"), None)
}

/// Rewrites a request for the upstream: the top-level `model` becomes `upstream_model`, and
/// with `add_include_usage` (a streamed request whose client did not ask for usage) the
/// gateway asks for the usage chunk itself, keeping any other `stream_options` members.
///
/// Every other byte is copied verbatim. Meant for bodies [`parse_chat_request`] accepted; a body
/// that is not an object comes back unchanged.
pub fn rewrite_chat_request(body: &[u8], upstream_model: &str, add_include_usage: bool) -> Vec<u8> {
    let mut model = Vec::with_capacity(upstream_model.len() + 2);
    json_scan::write_json_string(&mut model, upstream_model);
    match plan_request_edits(body, add_include_usage) {
        Ok(edits) => apply_edits(body, &edits, &model, b""),
        Err(_) => body.to_vec(),
    }
}

/// Rewrites a non-streamed response for the client (`model` becomes the gateway's slug) and
/// reads its usage. A body that is not a JSON object (an HTML error page, say) comes back
/// unchanged with no usage. A body without `model` (an error object) gets none added.
pub fn rewrite_chat_response(body: &[u8], slug: &str) -> (Vec<u8>, Option<Usage>) {
    let (out, usage, _) = rewrite_chat_response_as(body, slug, None);
    (out, usage)
}

/// [`rewrite_chat_response`], plus the body's top-level `id` (as [`response_id`] would read
/// it) from the same scan; with `client_id` given, that `id` is replaced by it in the body (the
/// id the gateway answers with; see `store::client_response_id`). The id returned is still the
/// provider's.
pub fn rewrite_chat_response_as(
    body: &[u8],
    slug: &str,
    client_id: Option<&str>,
) -> (Vec<u8>, Option<Usage>, Option<String>) {
    let mut literals = Vec::with_capacity(slug.len() + client_id.map_or(0, str::len) + 4);
    json_scan::write_json_string(&mut literals, slug);
    let model_len = literals.len();
    if let Some(id) = client_id {
        json_scan::write_json_string(&mut literals, id);
    }
    let (model, id) = literals.split_at(model_len);
    match plan_response_edits(body, client_id.is_some()) {
        Ok(plan) => (apply_edits(body, &plan.edits, model, id), plan.usage, plan.id),
        Err(_) => (body.to_vec(), None, None),
    }
}

/// `body` with its first top-level `id` member's value replaced by `id` (a translated answer,
/// built with the provider's id). A body that is not a JSON object, or has no `id`, comes back
/// unchanged.
pub fn with_response_id(body: &[u8], id: &str) -> Vec<u8> {
    let Ok(Some(member)) = json_scan::find_member(body, "id") else { return body.to_vec() };
    let mut out = Vec::with_capacity(body.len() + id.len());
    out.extend_from_slice(&body[..member.value.start]);
    json_scan::write_json_string(&mut out, id);
    out.extend_from_slice(&body[member.value.end..]);
    out
}

/// The top-level `id` of a response or chunk (`chatcmpl-...`), if it is a string.
pub fn response_id(body: &[u8]) -> Option<String> {
    let member = json_scan::find_member(body, "id").ok()??;
    string_value(member.value(body))
}

/// A JSON string value's text; None for any other value. Ids are plain ASCII: the common case
/// is sliced out without serde.
fn string_value(json: &[u8]) -> Option<String> {
    match json {
        [b'"', inner @ .., b'"'] if !inner.iter().any(|&b| b == b'\\' || b == b'"' || b < 0x20) => {
            std::str::from_utf8(inner).ok().map(str::to_string)
        }
        _ => serde_json::from_slice(json).ok(),
    }
}

/// Reads an OpenAI `usage` object. `None` for `null` or anything malformed.
///
/// Read with the member scanner rather than serde: it runs on every response (and every
/// usage chunk of a stream), and a derived `Deserialize` parses all of the object's unknown
/// members (`completion_tokens_details`, …) as strictly as the fields it keeps, ~0.5 µs a
/// response. What serde refuses in the fields read here is refused the same way (a duplicate
/// field, a number that is not a plain non-negative integer, a `prompt_tokens_details` that is
/// neither an object nor `null`). Two differences: unknown members are only skipped, as the
/// scanner does (see `json_scan`), so a provider's malformed extra detail no longer costs the
/// request its usage; and an array is not read as the struct's fields in order.
pub fn parse_usage(json: &[u8]) -> Option<Usage> {
    let json = json.trim_ascii();
    if json == b"null" {
        return None;
    }
    let mut scan = ObjectScanner::new(json).ok()?;
    read_usage(&mut scan, json)
}

/// [`parse_usage`] of the value that starts at `open` in `src`, and the index just past it:
/// `None` exactly where `parse_usage` of the value is `None` (`null`, not an object, a
/// malformed or duplicated field).
fn parse_usage_at(src: &[u8], open: usize) -> Option<(Usage, usize)> {
    let mut scan = ObjectScanner::at(src, open).ok()?;
    let usage = read_usage(&mut scan, src)?;
    Some((usage, scan.close_brace()? + 1))
}

/// The members of a `usage` object, read from `scan` to its closing brace.
fn read_usage(scan: &mut ObjectScanner<'_>, json: &[u8]) -> Option<Usage> {
    let (mut prompt, mut completion, mut details) = (OnceField::new(), OnceField::new(), OnceField::new());
    while let Some(m) = scan.next_member().ok()? {
        let value = m.value(json);
        if m.key_is(json, "prompt_tokens") {
            prompt.set(json_u64(value)?)?;
        } else if m.key_is(json, "completion_tokens") {
            completion.set(json_u64(value)?)?;
        } else if m.key_is(json, "prompt_tokens_details") {
            details.set(cached_tokens(value)?)?;
        }
    }
    Some(Usage {
        prompt_tokens: prompt.get().unwrap_or(0),
        completion_tokens: completion.get().unwrap_or(0),
        cached_prompt_tokens: details.get().unwrap_or(0),
        cache_write_tokens: 0,
    })
}

/// One optional field of an object read by hand: absent, or set once (serde refuses a
/// duplicate field, and so do we).
struct OnceField {
    seen: bool,
    value: Option<u64>,
}

impl OnceField {
    fn new() -> OnceField {
        OnceField { seen: false, value: None }
    }
    fn set(&mut self, value: Option<u64>) -> Option<()> {
        if std::mem::replace(&mut self.seen, true) {
            return None;
        }
        self.value = value;
        Some(())
    }
    fn get(&self) -> Option<u64> {
        self.value
    }
}

/// A JSON value that serde would read as `Option<u64>`: `Some(None)` for `null`,
/// `Some(Some(n))` for a plain integer (no sign, fraction, exponent or leading zero) that
/// fits, `None` for anything else.
fn json_u64(v: &[u8]) -> Option<Option<u64>> {
    match v {
        b"null" => Some(None),
        [b'0'] => Some(Some(0)),
        [b'1'..=b'9', rest @ ..] if rest.iter().all(u8::is_ascii_digit) => {
            let mut n: u64 = 0;
            for &d in v {
                n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            }
            Some(Some(n))
        }
        _ => None,
    }
}

/// `prompt_tokens_details.cached_tokens`, as serde would read `Option<{cached_tokens:
/// Option<u64>}>`: `Some(None)` for `null` or no such member, `None` when malformed.
fn cached_tokens(v: &[u8]) -> Option<Option<u64>> {
    if v == b"null" {
        return Some(None);
    }
    let mut scan = ObjectScanner::new(v).ok()?;
    let mut cached = OnceField::new();
    while let Some(m) = scan.next_member().ok()? {
        if m.key_is(v, "cached_tokens") {
            cached.set(json_u64(m.value(v))?)?;
        }
    }
    Some(cached.get())
}

/// What metering needs from one streamed `chat.completion.chunk`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkInfo {
    /// A non-null `usage` member.
    pub usage: Option<Usage>,
    /// Length of the `choices` array, `None` when absent or null.
    pub choices: Option<usize>,
    /// Characters of generated text in this chunk: content, refusal, reasoning, tool names and
    /// arguments, over all choices.
    pub generated_chars: u64,
    /// A non-null top-level `error` member (providers report mid-stream failures this way).
    pub is_error: bool,
}

/// Reads a streamed chunk's metering fields and writes the chunk to `out` (cleared first) with
/// its top-level `model` replaced by `model_json` (a JSON string literal). `None`, with `out`
/// empty, if `data` is not a JSON object: the caller forwards such data unchanged.
///
/// One scan of the chunk finds every member; serde then parses only `choices` and `usage`
/// (the ids, fingerprints and timestamps around them are never decoded). Text is counted where
/// serde hands it over, without copying it.
pub fn rewrite_stream_chunk(
    data: &[u8],
    model_json: &[u8],
    out: &mut Vec<u8>,
) -> Option<ChunkInfo> {
    rewrite_stream_chunk_as(data, model_json, None, out)
}

/// [`rewrite_stream_chunk`], and with `id_json` given (a JSON string literal), the chunk's
/// top-level `id` replaced by it.
pub fn rewrite_stream_chunk_as(
    data: &[u8],
    model_json: &[u8],
    id_json: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Option<ChunkInfo> {
    out.clear();
    let mut id_seen = false;
    let mut info = ChunkInfo::default();
    let mut scanner = ObjectScanner::new(data).ok()?;
    let mut copied = 0;
    loop {
        let member = match scanner.next_member() {
            Ok(Some(member)) => member,
            Ok(None) => break,
            Err(_) => {
                out.clear();
                return None;
            }
        };
        let value = member.value(data);
        // A replaced value: `model`, and the first `id` (as `response_id` reads it).
        let replacement = if member.key_is(data, "model") {
            Some(model_json)
        } else if id_json.is_some() && !id_seen && member.key_is(data, "id") {
            id_seen = true;
            id_json
        } else {
            None
        };
        if let Some(with) = replacement {
            out.extend_from_slice(data.get(copied..member.value.start).unwrap_or_default());
            out.extend_from_slice(with);
            copied = member.value.end;
        } else if member.key_is(data, "choices") {
            // An unexpected shape leaves the chunk uncounted rather than unforwarded.
            if let Ok(Some(choices)) = serde_json::from_slice::<Option<ChoicesWire>>(value) {
                info.choices = Some(choices.len);
                info.generated_chars = choices.chars;
            }
        } else if member.key_is(data, "usage") {
            info.usage = parse_usage(value);
        } else if member.key_is(data, "error") {
            info.is_error = value != b"null";
        }
    }
    out.extend_from_slice(data.get(copied..).unwrap_or_default());
    Some(info)
}

// ---------------------------------------------------------------------------------------------
// Request validation.

/// A value reduced to what validation looks at. Containers are walked (serde must, to check
/// syntax) but their contents are dropped, except an object's `include_usage`, which is all we
/// read from `stream_options`.
enum Shallow<'a> {
    Null,
    Bool(bool),
    UInt(u64),
    Int,
    Float,
    Str(Cow<'a, str>),
    Array(usize),
    Object(IncludeUsage),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IncludeUsage {
    Absent,
    Null,
    Bool(bool),
    Invalid,
}

impl<'de> Deserialize<'de> for Shallow<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShallowVisitor)
    }
}

struct ShallowVisitor;

impl<'de> Visitor<'de> for ShallowVisitor {
    type Value = Shallow<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Shallow::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Shallow::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Shallow::UInt(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        // serde_json only calls this for negative integers.
        Ok(if v >= 0 { Shallow::UInt(v.unsigned_abs()) } else { Shallow::Int })
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Shallow::Float)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Shallow::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Shallow::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut len = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            len += 1;
        }
        Ok(Shallow::Array(len))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut include_usage = IncludeUsage::Absent;
        while let Some(key) = map.next_key::<IsIncludeUsage>()? {
            if key.0 {
                include_usage = match map.next_value::<Shallow>()? {
                    Shallow::Null => IncludeUsage::Null,
                    Shallow::Bool(b) => IncludeUsage::Bool(b),
                    _ => IncludeUsage::Invalid,
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Shallow::Object(include_usage))
    }
}

/// Whether a map key is `include_usage`, decided without allocating (an escaped key arrives
/// decoded in serde's scratch buffer through `visit_str`).
struct IsIncludeUsage(bool);

impl<'de> Deserialize<'de> for IsIncludeUsage {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IsIncludeUsage;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<IsIncludeUsage, E> {
                Ok(IsIncludeUsage(v == "include_usage"))
            }
        }
        d.deserialize_identifier(V)
    }
}

#[derive(Clone, Copy)]
enum Field {
    Model,
    Messages,
    Stream,
    StreamOptions,
    MaxTokens,
    MaxCompletionTokens,
    N,
    Other,
}

impl Field {
    const KNOWN: [Field; 7] = [
        Field::Model,
        Field::Messages,
        Field::Stream,
        Field::StreamOptions,
        Field::MaxTokens,
        Field::MaxCompletionTokens,
        Field::N,
    ];

    fn name(self) -> &'static str {
        match self {
            Field::Model => "model",
            Field::Messages => "messages",
            Field::Stream => "stream",
            Field::StreamOptions => "stream_options",
            Field::MaxTokens => "max_tokens",
            Field::MaxCompletionTokens => "max_completion_tokens",
            Field::N => "n",
            Field::Other => "",
        }
    }

    /// Slot in `Fields::values`; `Other` is past the end, so it has no slot.
    fn index(self) -> usize {
        self as usize
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, v: &str) -> Result<Field, E> {
                Ok(Field::KNOWN.into_iter().find(|f| f.name() == v).unwrap_or(Field::Other))
            }
        }
        d.deserialize_identifier(V)
    }
}

/// The known top-level fields, each the last value seen, indexed by `Field`.
#[derive(Default)]
struct Fields<'a> {
    values: [Option<Shallow<'a>>; Field::KNOWN.len()],
    duplicate: Option<Field>,
}

struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        while let Some(field) = map.next_key::<Field>()? {
            let Some(slot) = fields.values.get_mut(field.index()) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let value = map.next_value::<Shallow>()?;
            if slot.replace(value).is_some() && fields.duplicate.is_none() {
                fields.duplicate = Some(field);
            }
        }
        Ok(fields)
    }
}

impl<'a> Fields<'a> {
    fn take(&mut self, field: Field) -> Option<Shallow<'a>> {
        self.values.get_mut(field.index()).and_then(Option::take)
    }

    fn validate(mut self) -> Result<ChatRequestInfo, RequestError> {
        if let Some(field) = self.duplicate {
            let name = field.name();
            return invalid(name, format!("duplicate field '{name}'"));
        }
        let model = match self.take(Field::Model) {
            None => return invalid("model", "missing required field 'model'"),
            Some(Shallow::Str(s)) if !s.is_empty() => s.into_owned(),
            Some(Shallow::Str(_)) => return invalid("model", "'model' must be a non-empty string"),
            Some(_) => return invalid("model", "'model' must be a string"),
        };
        let message_count = match self.take(Field::Messages) {
            None => return invalid("messages", "missing required field 'messages'"),
            Some(Shallow::Array(len)) if len > 0 => len,
            Some(_) => return invalid("messages", "'messages' must be a non-empty array"),
        };
        let stream = match self.take(Field::Stream) {
            None | Some(Shallow::Null) => false,
            Some(Shallow::Bool(b)) => b,
            Some(_) => return invalid("stream", "'stream' must be a boolean"),
        };
        let include_usage = match self.take(Field::StreamOptions) {
            None | Some(Shallow::Null) => false,
            Some(Shallow::Object(IncludeUsage::Absent | IncludeUsage::Null)) => false,
            Some(Shallow::Object(IncludeUsage::Bool(b))) => b,
            Some(Shallow::Object(IncludeUsage::Invalid)) => {
                let param = "stream_options.include_usage";
                return invalid(param, format!("'{param}' must be a boolean"));
            }
            Some(_) => return invalid("stream_options", "'stream_options' must be an object"),
        };
        let max_tokens = self.count(Field::MaxTokens)?;
        let max_completion_tokens = self.count(Field::MaxCompletionTokens)?;
        let n = match self.take(Field::N) {
            None | Some(Shallow::Null) => 1,
            Some(Shallow::UInt(n)) if n > 0 => n,
            Some(_) => return invalid("n", "'n' must be a positive integer"),
        };
        Ok(ChatRequestInfo {
            model,
            stream,
            include_usage,
            max_tokens: max_tokens.max(max_completion_tokens),
            message_count,
            n,
        })
    }

    /// An optional non-negative integer field (`null` counts as absent).
    fn count(&mut self, field: Field) -> Result<Option<u64>, RequestError> {
        match self.take(field) {
            None | Some(Shallow::Null) => Ok(None),
            Some(Shallow::UInt(n)) => Ok(Some(n)),
            Some(_) => {
                let name = field.name();
                invalid(name, format!("'{name}' must be a non-negative integer"))
            }
        }
    }
}

fn invalid<T>(param: &str, message: impl Into<String>) -> Result<T, RequestError> {
    Err(RequestError::field(param, message))
}

// ---------------------------------------------------------------------------------------------
// Rewriting by splicing.

/// Replace the bytes at `at` (empty for an insertion) with `with`.
struct Edit {
    at: Range<usize>,
    with: Insert,
}

enum Insert {
    /// The new model name, JSON-escaped.
    Model,
    /// The id the client sees, JSON-escaped.
    Id,
    True,
    /// `"include_usage":true` as a new member, after a comma if the object has members.
    IncludeUsageMember {
        comma: bool,
    },
    /// `"stream_options":{"include_usage":true}` as a new member.
    StreamOptionsMember {
        comma: bool,
    },
    /// `{"include_usage":true}` in place of a `null` value.
    StreamOptionsObject,
}

/// The edits, in body order (the scan is in order, and insertions go at closing braces, after
/// everything inside their object).
fn plan_request_edits(body: &[u8], add_include_usage: bool) -> Result<Vec<Edit>, ScanError> {
    let mut edits = Vec::new();
    let mut scanner = ObjectScanner::new(body)?;
    let mut has_stream_options = false;
    while let Some(member) = scanner.next_member()? {
        if member.key_is(body, "model") {
            edits.push(Edit { at: member.value, with: Insert::Model });
        } else if add_include_usage && member.key_is(body, "stream_options") {
            has_stream_options = true;
            match member.value(body).first() {
                Some(b'{') => plan_include_usage(body, member.value.start, &mut edits)?,
                Some(b'n') => {
                    edits.push(Edit { at: member.value, with: Insert::StreamOptionsObject })
                }
                // Any other type was rejected by validation; leave it for the provider to refuse.
                _ => {}
            }
        }
    }
    if add_include_usage && !has_stream_options {
        let close = scanner.close_brace().unwrap_or(body.len());
        let comma = scanner.member_count() > 0;
        edits.push(Edit { at: close..close, with: Insert::StreamOptionsMember { comma } });
    }
    Ok(edits)
}

/// Sets `include_usage` to true inside the `stream_options` object opening at `open`.
fn plan_include_usage(body: &[u8], open: usize, edits: &mut Vec<Edit>) -> Result<(), ScanError> {
    let mut scanner = ObjectScanner::at(body, open)?;
    let mut found = false;
    while let Some(member) = scanner.next_member()? {
        if member.key_is(body, "include_usage") {
            found = true;
            edits.push(Edit { at: member.value, with: Insert::True });
        }
    }
    if !found {
        let close = scanner.close_brace().unwrap_or(open);
        let comma = scanner.member_count() > 0;
        edits.push(Edit { at: close..close, with: Insert::IncludeUsageMember { comma } });
    }
    Ok(())
}

/// What one scan of a response finds: where `model` is, the usage, the first `id`.
struct ResponsePlan {
    edits: Vec<Edit>,
    usage: Option<Usage>,
    id: Option<String>,
}

/// `replace_id`: the first `id` member's value is to be replaced (an [`Insert::Id`] edit).
fn plan_response_edits(body: &[u8], replace_id: bool) -> Result<ResponsePlan, ScanError> {
    let mut plan = ResponsePlan { edits: Vec::new(), usage: None, id: None };
    let mut id_seen = false;
    let mut scanner = ObjectScanner::new(body)?;
    // `usage` is read as the scan meets it rather than skipped and then read: `Some` here
    // once a `usage` member was read, with what it said.
    let mut usage_member: Option<Option<Usage>> = None;
    while let Some(member) = scanner.next_member_with(|m, start| {
        if !m.key_is(body, "usage") {
            return None;
        }
        let read = parse_usage_at(body, start);
        usage_member = Some(read.map(|(usage, _)| usage));
        read.map(|(_, end)| end)
    })? {
        if let Some(usage) = usage_member.take() {
            // The last `usage` member wins.
            plan.usage = usage;
        } else if member.key_is(body, "model") {
            plan.edits.push(Edit { at: member.value, with: Insert::Model });
        } else if !id_seen && member.key_is(body, "id") {
            // The first `id` member, like `find_member`.
            id_seen = true;
            plan.id = string_value(member.value(body));
            if replace_id {
                plan.edits.push(Edit { at: member.value, with: Insert::Id });
            }
        }
    }
    Ok(plan)
}

fn apply_edits(body: &[u8], edits: &[Edit], model: &[u8], id: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + model.len() + id.len() + 48);
    let mut copied = 0;
    for edit in edits {
        // Edits are in order and within the body (they come from the scan); `get` keeps a
        // mistake from ever panicking.
        out.extend_from_slice(body.get(copied..edit.at.start).unwrap_or_default());
        match edit.with {
            Insert::Model => out.extend_from_slice(model),
            Insert::Id => out.extend_from_slice(id),
            Insert::True => out.extend_from_slice(b"true"),
            Insert::IncludeUsageMember { comma } => {
                if comma {
                    out.push(b',');
                }
                out.extend_from_slice(br#""include_usage":true"#);
            }
            Insert::StreamOptionsMember { comma } => {
                if comma {
                    out.push(b',');
                }
                out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
            }
            Insert::StreamOptionsObject => out.extend_from_slice(br#"{"include_usage":true}"#),
        }
        copied = edit.at.end.max(copied);
    }
    out.extend_from_slice(body.get(copied..).unwrap_or_default());
    out
}

// ---------------------------------------------------------------------------------------------
// Response and chunk wire types. Only the fields metering reads; serde skips the rest.

/// The derived reading `parse_usage` must agree with (its tests' oracle).
#[cfg(test)]
#[derive(Deserialize)]
struct UsageWire {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetailsWire>,
}

#[cfg(test)]
#[derive(Deserialize)]
struct PromptDetailsWire {
    cached_tokens: Option<u64>,
}

#[cfg(test)]
impl UsageWire {
    fn into_usage(self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            completion_tokens: self.completion_tokens.unwrap_or(0),
            cached_prompt_tokens: self
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_write_tokens: 0,
        }
    }
}

/// The `choices` array reduced to its length and generated characters, without a `Vec`.
struct ChoicesWire {
    len: usize,
    chars: u64,
}

#[derive(Deserialize)]
struct ChoiceWire {
    delta: Option<DeltaWire>,
}

#[derive(Deserialize)]
struct DeltaWire {
    content: Option<Chars>,
    refusal: Option<Chars>,
    reasoning_content: Option<Chars>,
    reasoning: Option<Chars>,
    tool_calls: Option<ToolCallsWire>,
}

#[derive(Deserialize)]
struct ToolCallWire {
    function: Option<FunctionWire>,
}

#[derive(Deserialize)]
struct FunctionWire {
    name: Option<Chars>,
    arguments: Option<Chars>,
}

/// A string reduced to its length in characters.
struct Chars(u64);

fn chars(field: Option<Chars>) -> u64 {
    field.map_or(0, |c| c.0)
}

impl DeltaWire {
    fn chars(self) -> u64 {
        chars(self.content)
            + chars(self.refusal)
            + chars(self.reasoning_content)
            + chars(self.reasoning)
            + self.tool_calls.map_or(0, |t| t.0)
    }
}

impl<'de> Deserialize<'de> for Chars {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Chars;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, v: &str) -> Result<Chars, E> {
                Ok(Chars(v.chars().count() as u64))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for ChoicesWire {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ChoicesWire;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ChoicesWire, A::Error> {
                let mut out = ChoicesWire { len: 0, chars: 0 };
                while let Some(choice) = seq.next_element::<ChoiceWire>()? {
                    out.len += 1;
                    out.chars += choice.delta.map_or(0, DeltaWire::chars);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

/// `delta.tool_calls`, reduced to the characters of names and arguments.
struct ToolCallsWire(u64);

impl<'de> Deserialize<'de> for ToolCallsWire {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ToolCallsWire;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of tool calls")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ToolCallsWire, A::Error> {
                let mut total = 0;
                while let Some(call) = seq.next_element::<ToolCallWire>()? {
                    if let Some(f) = call.function {
                        total += chars(f.name) + chars(f.arguments);
                    }
                }
                Ok(ToolCallsWire(total))
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(body: &str) -> Result<ChatRequestInfo, RequestError> {
        parse_chat_request(body.as_bytes())
    }

    fn err(body: &str) -> (String, Option<String>) {
        let e = parse(body).expect_err(body);
        (e.message, e.param)
    }

    const BASIC: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

    #[test]
    fn parses_a_valid_request() {
        let info = parse(BASIC).unwrap();
        let want = ChatRequestInfo {
            model: "gpt-4o".into(),
            stream: false,
            include_usage: false,
            max_tokens: None,
            message_count: 1,
            n: 1,
        };
        assert_eq!(info, want);

        let body = r#" {"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"\"model\": \"x\""}]}],
            "model":"fast\n\u0041","stream":true,"stream_options":{"include_usage":true,"x":[1]},
            "max_tokens":100,"max_completion_tokens":200,"n":2,"temperature":0.2,"tools":[{"type":"function"}],"user":null} "#;
        let info = parse(body).unwrap();
        assert_eq!(info.model, "fast\nA");
        assert!(info.stream && info.include_usage);
        assert_eq!((info.max_tokens, info.message_count, info.n), (Some(200), 2, 2));
    }

    #[test]
    fn nulls_mean_absent_for_optional_fields() {
        let body = r#"{"model":"m","messages":[{}],"stream":null,"stream_options":null,"max_tokens":null,"max_completion_tokens":7,"n":null}"#;
        let info = parse(body).unwrap();
        assert_eq!(
            (info.stream, info.include_usage, info.max_tokens, info.n),
            (false, false, Some(7), 1)
        );
        let body = r#"{"model":"m","messages":[{}],"stream_options":{"include_usage":null}}"#;
        assert!(!parse(body).unwrap().include_usage);
    }

    #[test]
    fn field_errors_name_the_field() {
        let p = |s: &str| Some(s.to_owned());
        let cases = [
            (r#"{"messages":[{}]}"#, "missing required field 'model'", p("model")),
            (r#"{"model":null,"messages":[{}]}"#, "'model' must be a string", p("model")),
            (r#"{"model":7,"messages":[{}]}"#, "'model' must be a string", p("model")),
            (r#"{"model":"","messages":[{}]}"#, "'model' must be a non-empty string", p("model")),
            (r#"{"model":"m"}"#, "missing required field 'messages'", p("messages")),
            (
                r#"{"model":"m","messages":[]}"#,
                "'messages' must be a non-empty array",
                p("messages"),
            ),
            (
                r#"{"model":"m","messages":{}}"#,
                "'messages' must be a non-empty array",
                p("messages"),
            ),
            (
                r#"{"model":"m","messages":[1],"stream":"yes"}"#,
                "'stream' must be a boolean",
                p("stream"),
            ),
            (
                r#"{"model":"m","messages":[1],"stream_options":true}"#,
                "'stream_options' must be an object",
                p("stream_options"),
            ),
            (
                r#"{"model":"m","messages":[1],"stream_options":{"include_usage":1}}"#,
                "'stream_options.include_usage' must be a boolean",
                p("stream_options.include_usage"),
            ),
            (
                r#"{"model":"m","messages":[1],"max_tokens":-1}"#,
                "'max_tokens' must be a non-negative integer",
                p("max_tokens"),
            ),
            (
                r#"{"model":"m","messages":[1],"max_tokens":1.5}"#,
                "'max_tokens' must be a non-negative integer",
                p("max_tokens"),
            ),
            (
                r#"{"model":"m","messages":[1],"max_completion_tokens":"9"}"#,
                "'max_completion_tokens' must be a non-negative integer",
                p("max_completion_tokens"),
            ),
            (r#"{"model":"m","messages":[1],"n":0}"#, "'n' must be a positive integer", p("n")),
            (r#"{"model":"a","messages":[1],"model":"b"}"#, "duplicate field 'model'", p("model")),
            (
                r#"{"model":"a","messages":[1],"stre\u0061m":true,"stream":false}"#,
                "duplicate field 'stream'",
                p("stream"),
            ),
            ("[1,2]", "request body must be a JSON object", None),
            ("\"model\"", "request body must be a JSON object", None),
            (" \n", "request body is empty", None),
        ];
        for (body, message, param) in cases {
            assert_eq!(err(body), (message.to_owned(), param), "{body}");
        }
        // Unknown fields may repeat: they are the provider's business.
        assert!(parse(r#"{"model":"m","messages":[1],"x":1,"x":2}"#).is_ok());
    }

    #[test]
    fn malformed_json_is_rejected() {
        for body in [
            "{",
            "{\"model\":\"m\",\"messages\":[{}]",
            "{\"model\":\"m\",\"messages\":[{}],}",
            "{\"model\":\"m\",\"messages\":[{\"content\":\"a\nb\"}]}",
            "{\"model\":\"m\",\"messages\":[{}]} x",
            "{\"model\":\"m\",\"messages\":[{}]}{}",
            "{model:\"m\"}",
            "[1,",
            "nul",
        ] {
            let (message, param) = err(body);
            assert!(message.starts_with("request body is not valid JSON: "), "{body}: {message}");
            assert_eq!(param, None);
        }
        // Every truncation of a valid body is an error, not a panic and not a success.
        for cut in 0..BASIC.len() {
            assert!(parse_chat_request(&BASIC.as_bytes()[..cut]).is_err(), "cut {cut}");
        }
        assert!(parse_chat_request(b"{\"model\":\"\xFF\",\"messages\":[1]}").is_err());
        let deep = format!(
            "{{\"model\":\"m\",\"messages\":[1],\"x\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        // Skipped values are walked without recursion: deep nesting is valid and costs no stack.
        assert!(parse(&deep).is_ok());
        // Values we look into hit serde's recursion limit instead of overflowing the stack.
        let nested = format!(
            "{{\"model\":\"m\",\"messages\":[1],\"stream_options\":{}1{}}}",
            "{\"include_usage\":".repeat(10_000),
            "}".repeat(10_000)
        );
        assert!(err(&nested).0.contains("recursion limit"));
    }

    fn value(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn rewrite_replaces_only_the_top_level_model() {
        let body = r#"{ "messages" : [{"role":"user","content":"\"model\": \"x\"","model":"inner"}], "model" : "gpt-4o" ,"meta":{"model":"m"}}"#;
        let out = rewrite_chat_request(body.as_bytes(), "gpt-4o-2024-08-06", false);
        let want = body.replace(r#""model" : "gpt-4o""#, r#""model" : "gpt-4o-2024-08-06""#);
        assert_eq!(String::from_utf8(out).unwrap(), want);

        // The new name is escaped.
        let out = rewrite_chat_request(BASIC.as_bytes(), "we\"ird\\name\n", false);
        assert_eq!(value(&out)["model"], "we\"ird\\name\n");
        // An escaped key is still the model.
        let out = rewrite_chat_request(br#"{"mod\u0065l":"a","messages":[1]}"#, "b", false);
        assert_eq!(out, br#"{"mod\u0065l":"b","messages":[1]}"#);
    }

    #[test]
    fn rewrite_adds_or_merges_include_usage() {
        let cases = [
            (
                r#"{"model":"a","messages":[1],"stream":true}"#,
                r#"{"model":"b","messages":[1],"stream":true,"stream_options":{"include_usage":true}}"#,
            ),
            (
                "{\"model\":\"a\",\"messages\":[1],\"stream\":true\n}\n",
                "{\"model\":\"b\",\"messages\":[1],\"stream\":true\n,\"stream_options\":{\"include_usage\":true}}\n",
            ),
            (
                r#"{"model":"a","stream_options":{"x":1}, "messages":[1]}"#,
                r#"{"model":"b","stream_options":{"x":1,"include_usage":true}, "messages":[1]}"#,
            ),
            (
                r#"{"model":"a","stream_options":{ },"messages":[1]}"#,
                r#"{"model":"b","stream_options":{ "include_usage":true},"messages":[1]}"#,
            ),
            (
                r#"{"model":"a","stream_options":{"include_usage":false,"y":{"include_usage":0}},"messages":[1]}"#,
                r#"{"model":"b","stream_options":{"include_usage":true,"y":{"include_usage":0}},"messages":[1]}"#,
            ),
            (
                r#"{"stream_options":null,"model":"a","messages":[1]}"#,
                r#"{"stream_options":{"include_usage":true},"model":"b","messages":[1]}"#,
            ),
        ];
        for (body, want) in cases {
            let out = rewrite_chat_request(body.as_bytes(), "b", true);
            assert_eq!(String::from_utf8(out.clone()).unwrap(), want);
            let info = parse_chat_request(&out).unwrap();
            assert!(info.include_usage);
            assert_eq!(info.model, "b");
        }
    }

    #[test]
    fn rewrite_preserves_everything_else() {
        let body = json!({
            "model": "a",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is \"model\": here? \u{1F600} \\ \n"},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "QUJD".repeat(1000))}},
            ]}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"model": {"type": "string"}}}}],
            "stream": true,
        });
        let bytes = serde_json::to_vec_pretty(&body).unwrap();
        let out = rewrite_chat_request(&bytes, "z", true);
        let mut want = body.clone();
        want["model"] = json!("z");
        want["stream_options"] = json!({"include_usage": true});
        assert_eq!(value(&out), want);
        // Not a JSON object: returned unchanged rather than mangled.
        assert_eq!(rewrite_chat_request(b"[1]", "z", true), b"[1]");
        assert_eq!(rewrite_chat_request(b"{\"model\":", "z", true), b"{\"model\":");
    }

    #[test]
    fn usage_reads_as_serde_would() {
        let serde = |json: &[u8]| serde_json::from_slice::<Option<UsageWire>>(json).ok().flatten().map(UsageWire::into_usage);
        let cases: &[&[u8]] = &[
            br#"{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}"#,
            br#"{"prompt_tokens":2}"#,
            br#" { "completion_tokens" : 7 , "prompt_tokens" : null } "#,
            br#"{}"#,
            b"null",
            br#"{"prompt_tokens":18446744073709551615}"#,
            br#"{"prompt_tokens":18446744073709551616}"#,
            br#"{"prompt_tokens":-1}"#,
            br#"{"prompt_tokens":1.0}"#,
            br#"{"prompt_tokens":1e3}"#,
            br#"{"prompt_tokens":01}"#,
            br#"{"prompt_tokens":"3"}"#,
            br#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            br#"{"prompt_tokens_details":null,"prompt_tokens":4}"#,
            br#"{"prompt_tokens_details":{},"prompt_tokens":4}"#,
            br#"{"prompt_tokens_details":{"cached_tokens":null}}"#,
            br#"{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":2}}"#,
            br#"{"prompt_tokens_details":5}"#,
            br#"{"pro\u006dpt_tokens":6}"#,
            br#""text""#,
            br#"{"prompt_tokens":3"#,
            br#"{"prompt_tokens":3}x"#,
            b"",
        ];
        for &case in cases {
            assert_eq!(parse_usage(case), serde(case), "{}", String::from_utf8_lossy(case));
        }
        // The differences, on purpose. serde's derive also reads a struct from an array of its
        // fields in order; no provider sends that, and it is refused here.
        assert_eq!(parse_usage(br#"{"prompt_tokens_details":[1],"prompt_tokens":4}"#), None);
        assert_eq!(parse_usage(br#"[1,2,null]"#), None);
        // An unknown member is skipped, not validated.
        assert_eq!(
            parse_usage(br#"{"prompt_tokens":3,"extra":[1,}"#),
            None,
            "an unbalanced value still ends the object early"
        );
        assert_eq!(
            parse_usage(br#"{"prompt_tokens":3,"extra":tru}"#),
            Some(Usage { prompt_tokens: 3, ..Usage::default() })
        );
    }

    #[test]
    fn response_rewrite_and_usage() {
        let body = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"{\"model\":\"x\"}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0}},"system_fingerprint":"fp"}"#;
        let (out, usage) = rewrite_chat_response(body.as_bytes(), "openai/gpt-4o");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            body.replace(r#""model":"gpt-4o-2024-08-06""#, r#""model":"openai/gpt-4o""#)
        );
        assert_eq!(
            usage,
            Some(Usage { prompt_tokens: 19, completion_tokens: 10, cached_prompt_tokens: 3, ..Default::default() })
        );

        let (out, usage) = rewrite_chat_response(br#"{"model":"m","usage":null}"#, "s");
        assert_eq!((out.as_slice(), usage), (&br#"{"model":"s","usage":null}"#[..], None));
        let (out, usage) =
            rewrite_chat_response(br#"{"model":"m","usage":{"prompt_tokens":2}}"#, "s");
        assert_eq!(out, br#"{"model":"s","usage":{"prompt_tokens":2}}"#);
        assert_eq!(usage, Some(Usage { prompt_tokens: 2, ..Usage::default() }));
        for raw in [
            &b"<html>bad gateway</html>"[..],
            b"",
            b"{\"model\":\"m\"",
            br#"{"error":{"message":"x"}}"#,
        ] {
            assert_eq!(rewrite_chat_response(raw, "s"), (raw.to_vec(), None));
        }
    }

    #[test]
    fn responses_and_chunks_carry_the_gateways_id() {
        let body = br#"{"id":"chatcmpl-up\u0041","model":"m","choices":[{"id":"inner","message":{"content":"\"id\":1"}}],"id":"second","usage":{"prompt_tokens":2}}"#;
        let (out, usage, id) = rewrite_chat_response_as(body, "s", Some("chatcmpl-gen-1"));
        // The first top-level `id` is replaced; nested ones, strings and a duplicate are not.
        let want = String::from_utf8_lossy(body)
            .replacen(r#""chatcmpl-up\u0041""#, r#""chatcmpl-gen-1""#, 1)
            .replace(r#""model":"m""#, r#""model":"s""#);
        assert_eq!(String::from_utf8(out).unwrap(), want);
        // What is returned (and recorded) is still the provider's id.
        assert_eq!((usage.map(|u| u.prompt_tokens), id.as_deref()), (Some(2), Some("chatcmpl-upA")));
        // Without an `id` member nothing is added.
        let (out, _, id) = rewrite_chat_response_as(br#"{"model":"m"}"#, "s", Some("x"));
        assert_eq!((out.as_slice(), id), (&br#"{"model":"s"}"#[..], None));

        let mut out = Vec::new();
        let chunk = br#"{"id":"c1","model":"m","choices":[{"delta":{"content":"hi"}}],"id":"c2"}"#;
        let info = rewrite_stream_chunk_as(chunk, br#""s""#, Some(br#""chatcmpl-gen-1""#), &mut out).unwrap();
        assert_eq!(info.generated_chars, 2);
        assert_eq!(out, br#"{"id":"chatcmpl-gen-1","model":"s","choices":[{"delta":{"content":"hi"}}],"id":"c2"}"#);

        assert_eq!(with_response_id(br#"{"object":"x","id":"msg_1"}"#, "chatcmpl-gen-2"), br#"{"object":"x","id":"chatcmpl-gen-2"}"#);
        assert_eq!(with_response_id(b"[1]", "x"), b"[1]");
        assert_eq!(with_response_id(br#"{"a":1}"#, "x"), br#"{"a":1}"#);
    }

    #[test]
    fn reads_response_ids() {
        assert_eq!(
            response_id(br#"{"model":"m","id":"chatcmpl-1\u0041"}"#).as_deref(),
            Some("chatcmpl-1A")
        );
        assert_eq!(response_id(br#"{"choices":[{"id":"x"}]}"#), None);
        assert_eq!(response_id(br#"{"id":7}"#), None);
        assert_eq!(response_id(b"not json"), None);
    }

    fn inspect(data: &[u8]) -> Option<ChunkInfo> {
        rewrite_stream_chunk(data, br#""s""#, &mut Vec::new())
    }

    #[test]
    fn stream_chunks_are_inspected_and_rewritten() {
        let chunk = br#"{"id":"c","model":"m","choices":[{"delta":{"content":"h\u00e9\n"}},{"delta":{"tool_calls":[{"function":{"name":"f","arguments":"{}"}},{"function":{"arguments":null}}]}}],"usage":null,"x":{"model":1}}"#;
        let mut out = Vec::new();
        let info = rewrite_stream_chunk(chunk, br#""slug""#, &mut out).unwrap();
        let want = ChunkInfo {
            usage: None,
            choices: Some(2),
            generated_chars: 3 + 1 + 2,
            is_error: false,
        };
        assert_eq!(info, want);
        let rewritten =
            String::from_utf8_lossy(chunk).replace(r#""model":"m""#, r#""model":"slug""#);
        assert_eq!(String::from_utf8(out).unwrap(), rewritten);

        let info = inspect(br#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#)
            .unwrap();
        assert_eq!(info.choices, Some(0));
        assert_eq!(info.usage.map(|u| u.total_tokens()), Some(3));
        assert!(inspect(br#"{"error":{"message":"boom"}}"#).unwrap().is_error);
        assert!(!inspect(br#"{"error":null,"choices":null}"#).unwrap().is_error);
        // Odd shapes are forwarded (Some) but not counted.
        let odd = inspect(br#"{"choices":[{"delta":{"content":5}}],"usage":"n/a"}"#).unwrap();
        assert_eq!(odd, ChunkInfo::default());
        let mut out = b"stale".to_vec();
        assert_eq!(rewrite_stream_chunk(b"[DONE]", b"\"s\"", &mut out), None);
        assert_eq!(rewrite_stream_chunk(b"{\"model\":\"m\",", b"\"s\"", &mut out), None);
        assert!(out.is_empty());
    }

    #[test]
    fn usage_read_in_place_matches_skipping_then_reading() {
        // The scan before `usage` was read in place: every member skipped, `usage` then read.
        type Read = (Vec<Range<usize>>, Option<Usage>, Option<String>);
        fn reference(body: &[u8]) -> Result<Read, ScanError> {
            let (mut models, mut usage, mut id) = (Vec::new(), None, None);
            let mut scanner = ObjectScanner::new(body)?;
            while let Some(m) = scanner.next_member()? {
                if m.key_is(body, "model") {
                    models.push(m.value.clone());
                } else if m.key_is(body, "usage") {
                    usage = parse_usage(m.value(body));
                } else if id.is_none() && m.key_is(body, "id") {
                    id = Some(string_value(m.value(body)));
                }
            }
            Ok((models, usage, id.flatten()))
        }
        let base = br#"{"id":"c-1","model":"m","usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1},"x":[{"y":"}"}]},"choices":[{"message":{"content":"u\"sage"}}],"usage":null}"#;
        let alphabet = b"{}[]\":,\\ ntf013-.eu";
        let mut next = crate::testing::xorshift(0x9E37_79B9_7F4A_7C15_u64);
        let (mut read, mut with_usage) = (0, 0);
        for round in 0..30_000 {
            let mut body = base.to_vec();
            if round % 3 == 0 {
                // Also bodies whose last `usage` is an object.
                body.truncate(body.len() - r#","usage":null}"#.len());
                body.push(b'}');
            }
            for _ in 0..next(3) {
                let at = next(body.len());
                match next(4) {
                    0 => drop(body.remove(at)),
                    1 => body.insert(at, alphabet[next(alphabet.len())]),
                    _ => body[at] = alphabet[next(alphabet.len())],
                }
            }
            let got = plan_response_edits(&body, false)
                .map(|p| (p.edits.iter().map(|e| e.at.clone()).collect::<Vec<_>>(), p.usage, p.id));
            let want = reference(&body);
            assert_eq!(got.is_ok(), want.is_ok(), "{}", String::from_utf8_lossy(&body));
            if let (Ok(got), Ok(want)) = (got, want) {
                assert_eq!(got, want, "{}", String::from_utf8_lossy(&body));
                read += 1;
                with_usage += usize::from(got.1.is_some());
            }
        }
        assert!(read > 5_000 && with_usage > 2_000, "mutations should leave many bodies readable: {read}, {with_usage}");
    }

    /// Random byte mutations of a request: nothing panics, and whenever validation accepts the
    /// mutant, the rewrite is accepted too and means exactly the original with the two changes.
    #[test]
    fn mutated_bodies_never_panic_and_rewrite_exactly() {
        let base = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"a \"model\": b"}],"stream":true,"stream_options":{"x":1},"max_tokens":5,"t":[1.5,null]}"#;
        let alphabet = b"{}[]\":,\\ ntf01-.eu\x00\xff";
        let mut next = crate::testing::xorshift(0x2545_F491_4F6C_DD1D_u64);
        let (mut accepted, mut scratch) = (0, Vec::new());
        for _ in 0..20_000 {
            let mut body = base.to_vec();
            for _ in 0..=next(3) {
                let at = next(body.len());
                match next(4) {
                    0 => drop(body.remove(at)),
                    1 => body.insert(at, alphabet[next(alphabet.len())]),
                    _ => body[at] = alphabet[next(alphabet.len())],
                }
            }
            let out = rewrite_chat_request(&body, "new\"m", true);
            let _ = rewrite_chat_response(&body, "s");
            let _ = rewrite_stream_chunk(&body, b"\"s\"", &mut scratch);
            let _ = response_id(&body);
            let Ok(info) = parse_chat_request(&body) else { continue };
            accepted += 1;
            let again = parse_chat_request(&out).expect("a rewritten accepted body is accepted");
            assert_eq!((again.model.as_str(), again.include_usage), ("new\"m", true));
            assert_eq!(
                (again.message_count, again.max_tokens),
                (info.message_count, info.max_tokens)
            );
            // IgnoredAny accepts lone surrogate escapes (valid JSON grammar, as in Python's json),
            // which `Value` cannot represent: compare meaning only where `Value` can.
            let Ok(mut want) = serde_json::from_slice::<Value>(&body) else { continue };
            want["model"] = json!("new\"m");
            match want.get_mut("stream_options") {
                Some(Value::Object(options)) => {
                    drop(options.insert("include_usage".into(), json!(true)))
                }
                _ => want["stream_options"] = json!({"include_usage": true}),
            }
            assert_eq!(value(&out), want, "{}", String::from_utf8_lossy(&body));
        }
        assert!(accepted > 1_000, "the mutations should leave many bodies valid: {accepted}");
    }
}
