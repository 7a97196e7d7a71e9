//! What the three chat formats share beyond the plain sentence: tool calls, answers to tool
//! results, JSON mode and image tokens. Each format's parser reads its own field names and hands
//! the generic pieces to the functions here, so the three behave identically.
//!
//! # When the mock calls a tool
//!
//! Only when the request declares at least one function tool, tool choice does not forbid calls
//! (OpenAI `tool_choice: "none"`, Anthropic `{"type":"none"}`, Gemini mode `NONE`), and the last
//! message is a user turn that is not a tool result. It then makes exactly one call, to the tool
//! that tool choice forces (OpenAI `{"type":"function","function":{"name"}}` or the first of an
//! `allowed_tools` list, Anthropic `{"type":"tool","name"}`, Gemini `allowedFunctionNames[0]`),
//! else to the first declared tool. A forced name that is not declared is a 400.
//!
//! Arguments ([`synthesize_args`]): a JSON object with each `required` property of the tool's
//! schema, in `required` order, set by its type: string → `"mock"`, number/integer → `1`,
//! boolean → `true`, array → `[]`, object → `{}`, null → `null`. A type list takes its first
//! non-null type; a property without a type takes the first `anyOf`/`oneOf` branch's type, then
//! `object` if it has `properties`, `array` if it has `items`, its `const` or first `enum` value;
//! anything else gets `"mock"`. A tool without a schema or `required` gets `{}`.
//! Completion tokens of a call = `ceil(len(arguments JSON) / 4)` (times `n` for OpenAI choices);
//! `max_tokens` and `x-mock-words` do not apply to calls.
//!
//! # When the last message is a tool result
//!
//! (OpenAI a `tool`/`function` message; Anthropic a user turn holding `tool_result` blocks;
//! Gemini a turn holding `functionResponse` parts) the reply is the text
//! `"The tool returned: <content>"`, the content cut to [`TOOL_RESULT_CHARS`] characters: the
//! last tool result's text (text parts joined; Gemini's `response.content`, `.output` or
//! `.result`, else the whole `response`, as JSON unless it is a string). Its completion tokens
//! are its words, one streamed chunk each; `max_tokens` cuts it like the sentence.
//!
//! # JSON mode
//!
//! OpenAI `response_format` `json_object`/`json_schema`, Gemini
//! `generationConfig.responseMimeType: "application/json"`, Anthropic a system prompt containing
//! `JSON` (or `output_format.type: "json_schema"`): instead of the sentence the reply is
//! `{"answer":"mock","messages":N}` (N = messages / contents), streamed as 3 chunks and counted
//! as 3 completion tokens. `x-mock-words` does not apply to it; `max_tokens` below 3 cuts it
//! (leaving invalid JSON, as a real model would). Tool calls and tool-result answers win over it.
//!
//! # Images
//!
//! Every image part counts [`IMAGE_TOKENS`] prompt tokens on top of the text: OpenAI
//! `image_url` (and `input_image`) parts, Anthropic `image` blocks, Gemini `inlineData` /
//! `fileData` parts whose MIME type is `image/*` (either spelling of the field names). Only a
//! message's own parts count, not images nested in tool results.

use std::borrow::Cow;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::openai::{build_reply, text_bytes, tokens_for_bytes, ApiError, Reply};

/// Prompt tokens per image part, whatever its size.
pub const IMAGE_TOKENS: u64 = 85;
/// A tool result is quoted back at most this many characters long.
pub const TOOL_RESULT_CHARS: usize = 200;

/// Prompt tokens of a message's content (a string or an array of parts / blocks), without the
/// per-message overhead: `ceil(text_bytes / 4)` + [`IMAGE_TOKENS`] per image part.
pub fn content_tokens(content: &Value) -> u64 {
    let images = match content {
        Value::Array(parts) => parts.iter().filter(|p| is_image_part(p)).count() as u64,
        _ => 0,
    };
    tokens_for_bytes(text_bytes(content)) + images * IMAGE_TOKENS
}

fn is_image_part(part: &Value) -> bool {
    if let Some(kind) = part.get("type").and_then(Value::as_str) {
        return matches!(kind, "image_url" | "image" | "input_image");
    }
    for key in ["inlineData", "inline_data", "fileData", "file_data"] {
        if let Some(blob) = part.get(key) {
            let mime = blob
                .get("mimeType")
                .or_else(|| blob.get("mime_type"))
                .and_then(Value::as_str);
            return mime.is_some_and(|m| m.starts_with("image/"));
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------
// What to answer

/// What the last turn of a chat request asks of the mock.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    /// The usual sentence (or the JSON object in JSON mode).
    Chat,
    /// Call this tool.
    Call(ToolCall),
    /// The last message is a tool result: the text to answer with.
    ToolResult(String),
}

/// The reply decided for a request: text (streamed word by word) or one tool call.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Reply(Reply),
    Call(ToolCall),
}

/// Tool call > tool-result answer > JSON object > the sentence.
pub fn plan(
    turn: Turn,
    json_mode: bool,
    message_count: usize,
    words: Option<u32>,
    max_tokens: Option<u64>,
) -> Plan {
    match turn {
        Turn::Call(call) => Plan::Call(call),
        Turn::ToolResult(text) => Plan::Reply(text_reply(&text, max_tokens)),
        Turn::Chat if json_mode => Plan::Reply(json_reply(message_count, max_tokens)),
        Turn::Chat => Plan::Reply(build_reply(message_count, words, max_tokens)),
    }
}

/// One declared tool: its name and its parameters' JSON schema.
#[derive(Debug, Clone, Copy)]
pub struct ToolDecl<'a> {
    pub name: &'a str,
    pub schema: Option<&'a Value>,
}

/// How the request's tool choice constrains the call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Choice<'a> {
    /// Any tool may be called (auto / required / any / validated): the first declared one.
    First,
    /// No tool may be called.
    None,
    /// This tool must be called (400 if it is not declared).
    Named(&'a str),
    /// The first of these that is declared (OpenAI `allowed_tools`, Gemini
    /// `allowedFunctionNames`); the first declared tool if none is.
    Allowed(&'a [Value]),
}

/// The call for a user turn, or `None` when no tool may be called. `param` names the
/// tool-choice field for the 400 a forced unknown tool gets.
pub fn choose_call(
    tools: &[ToolDecl],
    choice: Choice,
    param: &'static str,
) -> Result<Option<ToolCall>, ApiError> {
    let Some(first) = tools.first() else {
        return Ok(None);
    };
    let find = |name: &str| tools.iter().find(|t| t.name == name);
    let tool = match choice {
        Choice::None => return Ok(None),
        Choice::First => first,
        Choice::Named(name) => find(name).ok_or_else(|| {
            ApiError::invalid(
                format!("Invalid value for '{param}': no tool named '{name}' is declared in 'tools'."),
                Some(param),
            )
        })?,
        Choice::Allowed(names) => names
            .iter()
            .filter_map(allowed_name)
            .find_map(find)
            .unwrap_or(first),
    };
    Ok(Some(ToolCall {
        name: tool.name.to_string(),
        args: synthesize_args(tool.schema),
    }))
}

/// A name in an allow-list: a string (Gemini) or an OpenAI tool object.
fn allowed_name(v: &Value) -> Option<&str> {
    v.as_str()
        .or_else(|| v.pointer("/function/name").and_then(Value::as_str))
        .or_else(|| v.get("name").and_then(Value::as_str))
}

// ---------------------------------------------------------------------------------------------
// Tool calls

/// One call the mock makes: the tool's name and the synthesized arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub args: Args,
}

impl ToolCall {
    /// The arguments as compact JSON text (OpenAI's `arguments` string, Anthropic's
    /// `partial_json` pieces).
    pub fn arguments(&self) -> String {
        serde_json::to_string(&self.args).unwrap_or_else(|_| "{}".into())
    }

    /// `ceil(len(arguments) / 4)`.
    pub fn completion_tokens(&self) -> u64 {
        tokens_for_bytes(self.arguments().len())
    }
}

/// A JSON object that keeps its keys in insertion order (serde_json's map would sort them).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Args(pub Vec<(String, Value)>);

impl Serialize for Args {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Each `required` property of an object schema with a simple value for its type.
pub fn synthesize_args(schema: Option<&Value>) -> Args {
    let Some(schema) = schema else {
        return Args::default();
    };
    let Some(required) = schema.get("required").and_then(Value::as_array) else {
        return Args::default();
    };
    let props = schema.get("properties");
    let mut out: Vec<(String, Value)> = Vec::with_capacity(required.len());
    for name in required.iter().filter_map(Value::as_str) {
        if out.iter().any(|(k, _)| k == name) {
            continue;
        }
        let prop = props.and_then(|p| p.get(name));
        out.push((name.to_string(), value_for(prop)));
    }
    Args(out)
}

fn value_for(schema: Option<&Value>) -> Value {
    let Some(schema) = schema else {
        return Value::String("mock".into());
    };
    match schema_type(schema).as_deref() {
        Some("string") => Value::String("mock".into()),
        Some("number" | "integer") => Value::from(1),
        Some("boolean") => Value::Bool(true),
        Some("array") => Value::Array(Vec::new()),
        Some("object") => Value::Object(Default::default()),
        Some("null") => Value::Null,
        _ => {
            if let Some(c) = schema.get("const") {
                return c.clone();
            }
            match schema.get("enum").and_then(Value::as_array) {
                Some(values) if !values.is_empty() => values[0].clone(),
                _ => Value::String("mock".into()),
            }
        }
    }
}

/// The schema's type, lower-cased (Gemini's OpenAPI schemas say `STRING`).
fn schema_type(schema: &Value) -> Option<String> {
    match schema.get("type") {
        Some(Value::String(t)) => return Some(t.to_ascii_lowercase()),
        Some(Value::Array(types)) => {
            let strings = || types.iter().filter_map(Value::as_str);
            let t = strings()
                .find(|t| !t.eq_ignore_ascii_case("null"))
                .or_else(|| strings().next());
            return t.map(str::to_ascii_lowercase);
        }
        _ => {}
    }
    for key in ["anyOf", "oneOf", "any_of", "one_of"] {
        if let Some(Value::Array(branches)) = schema.get(key) {
            let t = branches
                .iter()
                .filter_map(schema_type)
                .find(|t| t != "null");
            if t.is_some() {
                return t;
            }
        }
    }
    if schema.get("properties").is_some() {
        Some("object".into())
    } else if schema.get("items").is_some() {
        Some("array".into())
    } else {
        None
    }
}

/// The arguments as the pieces they are streamed in: about 4 bytes each (so the count is the
/// call's completion tokens), split at character boundaries, and never fewer than 2.
pub fn argument_pieces(args: &str) -> Vec<&str> {
    let mut pieces = Vec::with_capacity(args.len() / 4 + 2);
    let mut start = 0;
    while start < args.len() {
        let mut end = (start + 4).min(args.len());
        while !args.is_char_boundary(end) {
            end += 1;
        }
        pieces.push(&args[start..end]);
        start = end;
    }
    if pieces.len() == 1 {
        let one = pieces[0];
        if let Some((i, _)) = one.char_indices().nth(1) {
            return vec![&one[..i], &one[i..]];
        }
    }
    pieces
}

// ---------------------------------------------------------------------------------------------
// Text replies

/// `"The tool returned: <content>"`, the content cut to [`TOOL_RESULT_CHARS`] characters.
pub fn tool_result_text(content: &str) -> String {
    let cut: String = content.chars().take(TOOL_RESULT_CHARS).collect();
    format!("The tool returned: {cut}")
}

/// The text of a tool result's content: a string as is, the `text` of each part joined, null
/// as nothing, anything else as compact JSON.
pub fn result_content(content: &Value) -> Cow<'_, str> {
    match content {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed(""),
        Value::Array(parts) if parts.iter().any(|p| p.get("text").is_some()) => Cow::Owned(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect(),
        ),
        other => Cow::Owned(other.to_string()),
    }
}

/// `text` as a reply: one chunk per word (each with the whitespace before it, so the chunks
/// concatenate back to `text` exactly), cut to `max_tokens` words.
pub fn text_reply(text: &str, max_tokens: Option<u64>) -> Reply {
    let mut chunks: Vec<Cow<'static, str>> = Vec::new();
    // `start`: where the current chunk began; `gap`: where the whitespace before the word being
    // read began.
    let (mut start, mut gap) = (0, 0);
    let (mut in_word, mut seen_word) = (false, false);
    for (i, c) in text.char_indices() {
        let ws = c.is_whitespace();
        if ws && in_word {
            gap = i;
        }
        if !ws && !in_word {
            if seen_word {
                chunks.push(text[start..gap].to_string().into());
                start = gap;
            }
            seen_word = true;
        }
        in_word = !ws;
    }
    if start < text.len() {
        chunks.push(text[start..].to_string().into());
    }
    cap(chunks, max_tokens)
}

/// `{"answer":"mock","messages":N}` in 3 chunks.
pub fn json_reply(message_count: usize, max_tokens: Option<u64>) -> Reply {
    let chunks: Vec<Cow<'static, str>> = vec![
        "{\"answer\":".into(),
        "\"mock\",".into(),
        format!("\"messages\":{message_count}}}").into(),
    ];
    cap(chunks, max_tokens)
}

fn cap(mut chunks: Vec<Cow<'static, str>>, max_tokens: Option<u64>) -> Reply {
    let finish_reason = match max_tokens {
        Some(max) if (max as usize) < chunks.len() => {
            chunks.truncate(max as usize);
            "length"
        }
        _ => "stop",
    };
    Reply {
        chunks,
        finish_reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decl<'a>(name: &'a str, schema: Option<&'a Value>) -> ToolDecl<'a> {
        ToolDecl { name, schema }
    }

    #[test]
    fn arguments_fill_required_properties_by_type() {
        let schema = json!({
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "count": {"type": "integer"},
                "ratio": {"type": "number"},
                "ok": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "extra": {"type": "object"},
                "unit": {"type": ["null", "string"], "enum": ["c", "f", null]},
                "upper": {"type": "STRING"},
                "either": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
                "choice": {"enum": ["x", "y"]},
                "nested": {"properties": {"a": {"type": "string"}}},
                "optional": {"type": "string"}
            },
            "required": ["location", "count", "ratio", "ok", "tags", "extra", "unit", "upper",
                         "either", "choice", "nested", "undeclared", "location"]
        });
        let args = synthesize_args(Some(&schema));
        let text = serde_json::to_string(&args).unwrap();
        assert_eq!(
            text,
            r#"{"location":"mock","count":1,"ratio":1,"ok":true,"tags":[],"extra":{},"unit":"mock","upper":"mock","either":1,"choice":"x","nested":{},"undeclared":"mock"}"#
        );
        let simple = json!({"type": "object", "properties": {"location": {"type": "string"}},
                            "required": ["location"]});
        let call = ToolCall {
            name: "f".into(),
            args: synthesize_args(Some(&simple)),
        };
        assert_eq!(call.arguments(), r#"{"location":"mock"}"#);
        assert_eq!(call.completion_tokens(), 5); // 19 bytes
        assert_eq!(synthesize_args(None), Args::default());
        assert_eq!(
            serde_json::to_string(&synthesize_args(Some(&json!({"type": "object"})))).unwrap(),
            "{}"
        );
    }

    #[test]
    fn tool_choice_picks_the_call() {
        let s = json!({"required": ["q"], "properties": {"q": {"type": "string"}}});
        let tools = [decl("first", None), decl("second", Some(&s))];
        let name = |c: Choice| {
            choose_call(&tools, c, "tool_choice")
                .unwrap()
                .map(|c| c.name)
        };
        assert_eq!(name(Choice::First).as_deref(), Some("first"));
        assert_eq!(name(Choice::None), None);
        assert_eq!(name(Choice::Named("second")).as_deref(), Some("second"));
        let allowed = [json!("nope"), json!({"type": "function", "function": {"name": "second"}})];
        assert_eq!(name(Choice::Allowed(&allowed)).as_deref(), Some("second"));
        assert_eq!(name(Choice::Allowed(&[])).as_deref(), Some("first"));
        let err = choose_call(&tools, Choice::Named("x"), "tool_choice").unwrap_err();
        assert_eq!((err.status, err.param), (400, Some("tool_choice")));
        assert_eq!(choose_call(&[], Choice::First, "p").unwrap(), None);
        let call = choose_call(&tools, Choice::Named("second"), "p")
            .unwrap()
            .unwrap();
        assert_eq!(call.arguments(), r#"{"q":"mock"}"#);
    }

    #[test]
    fn argument_pieces_cover_the_text() {
        let args = r#"{"location":"mock"}"#;
        let pieces = argument_pieces(args);
        assert_eq!(pieces.len(), 5);
        assert_eq!(pieces.concat(), args);
        assert_eq!(argument_pieces("{}"), ["{", "}"]);
        let wide = r#"{"é":"ü€"}"#;
        let pieces = argument_pieces(wide);
        assert!(pieces.len() >= 2);
        assert_eq!(pieces.concat(), wide);
    }

    #[test]
    fn text_replies() {
        let r = text_reply("The tool returned: a  b\nc ", None);
        assert_eq!(
            r.chunks,
            ["The", " tool", " returned:", " a", "  b", "\nc "]
        );
        assert_eq!(r.text(), "The tool returned: a  b\nc ");
        assert_eq!(r.completion_tokens(), 6);
        let cut = text_reply("one two three", Some(2));
        assert_eq!((cut.text().as_str(), cut.finish_reason), ("one two", "length"));
        assert!(text_reply("", None).chunks.is_empty());
        assert_eq!(text_reply("  lead", None).chunks, ["  lead"]);

        let long = "x".repeat(500);
        let t = tool_result_text(&long);
        assert_eq!(t.len(), "The tool returned: ".len() + TOOL_RESULT_CHARS);
        let accents = "é".repeat(300);
        assert_eq!(tool_result_text(&accents).chars().count(), 19 + 200);

        assert_eq!(result_content(&json!("x")), "x");
        assert_eq!(
            result_content(&json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])),
            "ab"
        );
        assert_eq!(result_content(&Value::Null), "");
        assert_eq!(result_content(&json!({"t": 1})), r#"{"t":1}"#);

        let j = json_reply(2, None);
        assert_eq!(j.text(), r#"{"answer":"mock","messages":2}"#);
        assert_eq!(j.completion_tokens(), 3);
        let v: Value = serde_json::from_str(&j.text()).unwrap();
        assert_eq!(v, json!({"answer": "mock", "messages": 2}));
        assert_eq!(json_reply(1, Some(1)).finish_reason, "length");
    }

    #[test]
    fn plan_precedence() {
        let call = ToolCall {
            name: "f".into(),
            args: Args::default(),
        };
        assert_eq!(
            plan(Turn::Call(call.clone()), true, 1, None, None),
            Plan::Call(call)
        );
        let Plan::Reply(r) = plan(Turn::ToolResult("The tool returned: 1".into()), true, 1, None, None)
        else {
            panic!()
        };
        assert_eq!(r.text(), "The tool returned: 1");
        let Plan::Reply(r) = plan(Turn::Chat, true, 4, Some(50), None) else {
            panic!()
        };
        assert_eq!(r.text(), r#"{"answer":"mock","messages":4}"#);
        let Plan::Reply(r) = plan(Turn::Chat, false, 1, Some(2), None) else {
            panic!()
        };
        assert_eq!(r.text(), "Hello from");
    }

    #[test]
    fn images_count_85_tokens() {
        let openai = json!([{"type": "text", "text": "abcd"},
                            {"type": "image_url", "image_url": {"url": "x"}}]);
        assert_eq!(content_tokens(&openai), 1 + 85);
        let anthropic = json!([{"type": "image", "source": {}}, {"type": "image", "source": {}}]);
        assert_eq!(content_tokens(&anthropic), 170);
        let gemini = json!([{"text": "abcde"},
                            {"inline_data": {"mime_type": "image/png", "data": "AA"}},
                            {"fileData": {"mimeType": "image/webp", "fileUri": "gs://x"}},
                            {"inlineData": {"mimeType": "audio/mp3", "data": "AA"}}]);
        assert_eq!(content_tokens(&gemini), 2 + 170);
        assert_eq!(content_tokens(&json!("abcd")), 1);
    }
}
