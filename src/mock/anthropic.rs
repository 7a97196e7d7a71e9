//! Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`): the same
//! deterministic reply as [`super::openai`], in Anthropic's shapes.
//!
//! Tokens: `input_tokens` = Σ over messages of `ceil(text_bytes / 4) + 3` (+ 85 per `image`
//! block), plus the same for `system` when present (a string or text blocks); `output_tokens` =
//! words of the reply = the number of `content_block_delta` events. `max_tokens` is required (as
//! in Anthropic) and caps the reply, turning `stop_reason` into `"max_tokens"`. Auth is
//! `x-api-key`.
//!
//! Tools (see [`super::tools`]): with custom tools (`{name, input_schema}`) declared and a user
//! turn last, the answer is one `tool_use` block (`id: "toolu_mock_<n>"`, `stop_reason:
//! "tool_use"`); a user turn holding `tool_result` blocks is answered in text. A system prompt
//! containing `JSON` (or `output_format.type: "json_schema"`) turns on JSON mode.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::openai::{bad_json, event, to_vec, ApiError, Event};
use super::openai::{EventKind, Reply};
use super::tools::{argument_pieces, choose_call, content_tokens, result_content};
use super::tools::{tool_result_text, Args, Choice, ToolCall, ToolDecl, Turn};

#[derive(Deserialize)]
struct RawRequest {
    model: Option<String>,
    messages: Option<Vec<RawMessage>>,
    #[serde(default)]
    system: Value,
    max_tokens: Option<u64>,
    stream: Option<bool>,
    #[serde(default)]
    tools: Value,
    #[serde(default)]
    tool_choice: Value,
    #[serde(default)]
    output_format: Value,
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    content: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MessagesRequest {
    pub model: String,
    pub stream: bool,
    /// Required by `/v1/messages`, absent for `/v1/messages/count_tokens`.
    pub max_tokens: Option<u64>,
    pub message_count: usize,
    pub input_tokens: u64,
    /// Call a tool, answer a tool result, or just chat (see [`super::tools`]).
    pub turn: Turn,
    /// The system prompt mentions `JSON`, or `output_format` asks for a JSON schema.
    pub json_mode: bool,
}

pub fn parse_messages(body: &[u8]) -> Result<MessagesRequest, ApiError> {
    let raw: RawRequest = serde_json::from_slice(body).map_err(bad_json)?;
    let model = raw
        .model
        .ok_or_else(|| ApiError::invalid("model: Field required", Some("model")))?;
    let messages = raw
        .messages
        .ok_or_else(|| ApiError::invalid("messages: Field required", Some("messages")))?;
    let system = match &raw.system {
        Value::Null => 0,
        s => content_tokens(s) + 3,
    };
    let json_mode = raw.output_format.get("type").and_then(Value::as_str) == Some("json_schema")
        || result_content(&raw.system).contains("JSON");
    Ok(MessagesRequest {
        model,
        stream: raw.stream.unwrap_or(false),
        max_tokens: raw.max_tokens,
        message_count: messages.len(),
        input_tokens: system
            + messages
                .iter()
                .map(|m| content_tokens(&m.content) + 3)
                .sum::<u64>(),
        turn: messages_turn(&messages, &raw.tools, &raw.tool_choice)?,
        json_mode,
    })
}

/// A user turn last: answer its `tool_result` blocks if it has any, else call a custom tool if
/// one is declared. An assistant turn last (a prefill) is just continued.
fn messages_turn(messages: &[RawMessage], tools: &Value, choice: &Value) -> Result<Turn, ApiError> {
    let Some(last) = messages.last().filter(|m| m.role.as_deref() == Some("user")) else {
        return Ok(Turn::Chat);
    };
    if let Value::Array(blocks) = &last.content {
        let result = blocks
            .iter()
            .rfind(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"));
        if let Some(result) = result {
            let content = result.get("content").unwrap_or(&Value::Null);
            return Ok(Turn::ToolResult(tool_result_text(&result_content(content))));
        }
    }
    let Value::Array(tools) = tools else {
        return Ok(Turn::Chat);
    };
    // Custom tools have an input schema; server tools (web search, code execution, ...) do not.
    let decls: Vec<ToolDecl> = tools
        .iter()
        .filter(|t| t.get("type").and_then(Value::as_str).is_none_or(|k| k == "custom"))
        .filter_map(|t| {
            Some(ToolDecl {
                name: t.get("name")?.as_str()?,
                schema: Some(t.get("input_schema")?),
            })
        })
        .collect();
    let choice = match choice.get("type").and_then(Value::as_str) {
        Some("none") => Choice::None,
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(name) => Choice::Named(name),
            None => Choice::First,
        },
        _ => Choice::First,
    };
    Ok(choose_call(&decls, choice, "tool_choice.name")?.map_or(Turn::Chat, Turn::Call))
}

/// `usage: None` leaves usage out (the `no_usage` fault).
#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl Usage {
    pub fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Usage {
            input_tokens,
            output_tokens,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
        }
    }
}

fn stop_reason(reply: &Reply) -> &'static str {
    if reply.finish_reason == "length" {
        "max_tokens"
    } else {
        "end_turn"
    }
}

#[derive(Serialize)]
struct Message<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Block<'a>>,
    stop_reason: Option<&'a str>,
    stop_sequence: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

/// A content block, `type` first as Anthropic sends it.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: &'a Args,
    },
}

/// A `content_block_delta`'s delta.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

pub fn message_json(id: &str, model: &str, reply: &Reply, usage: Option<Usage>) -> Vec<u8> {
    let text = reply.text();
    to_vec(&Message {
        id,
        kind: "message",
        role: "assistant",
        model,
        content: vec![Block::Text { text: &text }],
        stop_reason: Some(stop_reason(reply)),
        stop_sequence: None,
        usage,
    })
}

/// A message that is one `tool_use` block (`stop_reason: "tool_use"`).
pub fn message_tool_json(
    id: &str,
    model: &str,
    tool_id: &str,
    call: &ToolCall,
    usage: Option<Usage>,
) -> Vec<u8> {
    to_vec(&Message {
        id,
        kind: "message",
        role: "assistant",
        model,
        content: vec![Block::ToolUse {
            id: tool_id,
            name: &call.name,
            input: &call.args,
        }],
        stop_reason: Some("tool_use"),
        stop_sequence: None,
        usage,
    })
}

pub fn count_tokens_json(input_tokens: u64) -> Vec<u8> {
    to_vec(&serde_json::json!({ "input_tokens": input_tokens }))
}

/// Every event of a Messages stream. Internally tagged, so `type` comes first like Anthropic's.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent<'a> {
    MessageStart {
        message: Message<'a>,
    },
    ContentBlockStart {
        index: u32,
        content_block: Block<'a>,
    },
    Ping,
    ContentBlockDelta {
        index: u32,
        delta: Delta<'a>,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: StopInfo<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<OutputUsage>,
    },
    MessageStop,
    Error {
        error: ErrorBody<'a>,
    },
}

#[derive(Serialize)]
struct StopInfo<'a> {
    stop_reason: &'a str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
struct OutputUsage {
    output_tokens: u64,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

/// The Messages stream: message_start, content_block_start, ping, one content_block_delta per
/// word, content_block_stop, message_delta (stop reason and output tokens), message_stop.
pub fn message_stream(id: &str, model: &str, reply: &Reply, usage: Option<Usage>) -> Vec<Event> {
    let deltas = reply
        .chunks
        .iter()
        .map(|word| Delta::TextDelta { text: word });
    stream_events(
        id,
        model,
        Block::Text { text: "" },
        deltas,
        stop_reason(reply),
        usage,
    )
}

/// A streamed call: message_start, content_block_start (`tool_use` with its id and name and an
/// empty `input`), ping, the arguments as `input_json_delta` events (at least 2), then
/// content_block_stop, message_delta (`stop_reason: "tool_use"`), message_stop.
pub fn message_tool_stream(
    id: &str,
    model: &str,
    tool_id: &str,
    call: &ToolCall,
    usage: Option<Usage>,
) -> Vec<Event> {
    let arguments = call.arguments();
    let empty = Args::default();
    let block = Block::ToolUse {
        id: tool_id,
        name: &call.name,
        input: &empty,
    };
    let deltas = argument_pieces(&arguments)
        .into_iter()
        .map(|piece| Delta::InputJsonDelta {
            partial_json: piece,
        });
    stream_events(id, model, block, deltas, "tool_use", usage)
}

fn stream_events<'a>(
    id: &str,
    model: &str,
    block: Block,
    deltas: impl ExactSizeIterator<Item = Delta<'a>>,
    stop_reason: &str,
    usage: Option<Usage>,
) -> Vec<Event> {
    use EventKind as K;
    use StreamEvent as E;
    let start_usage = usage.map(|u| Usage {
        // Anthropic reports a token or so at the start and the real count in message_delta.
        output_tokens: u.output_tokens.min(1),
        ..u
    });
    let message = Message {
        id,
        kind: "message",
        role: "assistant",
        model,
        content: Vec::new(),
        stop_reason: None,
        stop_sequence: None,
        usage: start_usage,
    };
    let mut events = Vec::with_capacity(deltas.len() + 6);
    let mut push = |kind, name, e: &StreamEvent| events.push(event(kind, named(name, e)));
    push(K::Head, "message_start", &E::MessageStart { message });
    let start = E::ContentBlockStart {
        index: 0,
        content_block: block,
    };
    push(K::Head, "content_block_start", &start);
    push(K::Head, "ping", &E::Ping);
    for delta in deltas {
        let delta = E::ContentBlockDelta { index: 0, delta };
        push(K::Content, "content_block_delta", &delta);
    }
    push(
        K::Finish,
        "content_block_stop",
        &E::ContentBlockStop { index: 0 },
    );
    let delta = E::MessageDelta {
        delta: StopInfo {
            stop_reason,
            stop_sequence: None,
        },
        usage: usage.map(|u| OutputUsage {
            output_tokens: u.output_tokens,
        }),
    };
    push(K::Usage, "message_delta", &delta);
    push(K::Done, "message_stop", &E::MessageStop);
    events
}

/// The error `type` Anthropic uses for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        s if s < 500 => "invalid_request_error",
        _ => "api_error",
    }
}

fn error_event(err: &ApiError) -> StreamEvent<'_> {
    StreamEvent::Error {
        error: ErrorBody {
            kind: error_type(err.status),
            message: &err.message,
        },
    }
}

/// `{"type":"error","error":{"type","message"}}`.
pub fn error_json(err: &ApiError) -> Vec<u8> {
    to_vec(&error_event(err))
}

/// The same error as an `event: error` SSE event, how Anthropic fails mid-stream.
pub fn error_sse(err: &ApiError) -> Bytes {
    named("error", &error_event(err))
}

/// One SSE event with an `event:` name, as Anthropic sends them.
fn named<T: Serialize>(name: &str, data: &T) -> Bytes {
    let json = to_vec(data);
    let mut out = Vec::with_capacity(json.len() + name.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::openai::build_reply;

    fn events_json(events: &[Event]) -> Vec<(String, Value)> {
        events
            .iter()
            .map(|e| {
                let s = std::str::from_utf8(&e.bytes).unwrap();
                let (name, data) = s.strip_suffix("\n\n").unwrap().split_once('\n').unwrap();
                let name = name.strip_prefix("event: ").unwrap().to_string();
                (
                    name,
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn parses_and_counts() {
        let body = br#"{"model":"claude-x","max_tokens":5,"system":"12345678",
            "messages":[{"role":"user","content":[{"type":"text","text":"abcd"}]},
                        {"role":"assistant","content":"hi"}]}"#;
        let req = parse_messages(body).unwrap();
        assert_eq!(req.input_tokens, (2 + 3) + (1 + 3) + (1 + 3));
        assert_eq!(
            (req.max_tokens, req.message_count, req.stream),
            (Some(5), 2, false)
        );
        assert_eq!(parse_messages(b"{}").unwrap_err().status, 400);
        assert_eq!(parse_messages(b"nope").unwrap_err().status, 400);
    }

    #[test]
    fn message_shape() {
        let reply = build_reply(1, None, Some(3));
        let v: Value =
            serde_json::from_slice(&message_json("msg_1", "c", &reply, Some(Usage::new(4, 3))))
                .unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["content"][0]["text"], "Hello from the");
        assert_eq!(v["stop_reason"], "max_tokens");
        assert_eq!(v["usage"]["output_tokens"], 3);
        assert_eq!(v["usage"]["input_tokens"], 4);
    }

    #[test]
    fn stream_shape() {
        let reply = build_reply(1, Some(2), None);
        let events = message_stream("msg_1", "c", &reply, Some(Usage::new(4, 2)));
        let v = events_json(&events);
        let names: Vec<&str> = v.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        for (name, data) in &v {
            assert_eq!(&data["type"], name.as_str());
        }
        let first = std::str::from_utf8(&events[0].bytes).unwrap();
        assert!(first.starts_with("event: message_start\ndata: {\"type\":\"message_start\""));
        assert_eq!(v[0].1["message"]["usage"]["input_tokens"], 4);
        assert_eq!(v[4].1["delta"]["text"], " from");
        assert_eq!(v[6].1["delta"]["stop_reason"], "end_turn");
        assert_eq!(v[6].1["usage"]["output_tokens"], 2);
        let no_usage = events_json(&message_stream("m", "c", &reply, None));
        assert!(no_usage[0].1["message"].get("usage").is_none());
        assert!(no_usage[6].1.get("usage").is_none());
    }

    #[test]
    fn errors() {
        let v: Value =
            serde_json::from_slice(&error_json(&ApiError::for_status(529, "busy"))).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert_eq!(v["error"]["message"], "busy");
        // Field order as Anthropic sends it, for byte-level scanners.
        assert!(error_json(&ApiError::for_status(400, "x")).starts_with(br#"{"type":"error""#));
        assert!(error_sse(&ApiError::for_status(500, "x")).starts_with(b"event: error\ndata: {"));
    }

    fn turn(body: Value) -> Result<(Turn, bool), ApiError> {
        parse_messages(body.to_string().as_bytes()).map(|r| (r.turn, r.json_mode))
    }

    fn tools() -> Value {
        serde_json::json!([
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 1},
            {"name": "get_weather", "description": "d", "input_schema": {"type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"]}},
            {"type": "custom", "name": "get_time", "input_schema": {"type": "object"}}
        ])
    }

    #[test]
    fn tool_use_detection() {
        use serde_json::json;
        let user = json!([{"role": "user", "content": "weather?"}]);
        let body = |extra: Value, messages: &Value| {
            let mut b = json!({"model": "c", "max_tokens": 10, "messages": messages});
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        let Turn::Call(call) = turn(body(json!({"tools": tools()}), &user)).unwrap().0 else {
            panic!()
        };
        assert_eq!(call.name, "get_weather");
        assert_eq!(call.arguments(), r#"{"city":"mock","days":1}"#);
        let forced = json!({"tools": tools(), "tool_choice": {"type": "tool", "name": "get_time"}});
        let Turn::Call(call) = turn(body(forced, &user)).unwrap().0 else {
            panic!()
        };
        assert_eq!((call.name.as_str(), call.arguments().as_str()), ("get_time", "{}"));
        let any = json!({"tools": tools(), "tool_choice": {"type": "any"}});
        assert!(matches!(turn(body(any, &user)).unwrap().0, Turn::Call(_)));
        let none = json!({"tools": tools(), "tool_choice": {"type": "none"}});
        assert_eq!(turn(body(none, &user)).unwrap().0, Turn::Chat);
        let unknown = json!({"tools": tools(), "tool_choice": {"type": "tool", "name": "x"}});
        assert_eq!(turn(body(unknown, &user)).unwrap_err().status, 400);
        let server_only = json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]});
        assert_eq!(turn(body(server_only, &user)).unwrap().0, Turn::Chat);

        // A user turn with tool_result blocks is answered, the last result quoted.
        let results = json!([
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_0", "content": "first"},
                {"type": "tool_result", "tool_use_id": "toolu_1",
                 "content": [{"type": "text", "text": "18 C"}, {"type": "text", "text": ", cloudy"}]},
                {"type": "text", "text": "and tomorrow?"}
            ]}
        ]);
        let (t, json_mode) = turn(body(json!({"tools": tools()}), &results)).unwrap();
        assert_eq!(t, Turn::ToolResult("The tool returned: 18 C, cloudy".into()));
        assert!(!json_mode);
        // JSON mode from the system prompt (string or blocks) or output_format.
        let sys = json!({"system": "Respond with only a single valid JSON object."});
        assert!(turn(body(sys, &user)).unwrap().1);
        let blocks = json!({"system": [{"type": "text", "text": "Use JSON."}]});
        assert!(turn(body(blocks, &user)).unwrap().1);
        let lower = json!({"system": "answer in json"});
        assert!(!turn(body(lower, &user)).unwrap().1);
        let of = json!({"output_format": {"type": "json_schema", "schema": {}}});
        assert!(turn(body(of, &user)).unwrap().1);
    }

    #[test]
    fn tool_use_message_and_stream() {
        let schema = serde_json::json!({"properties": {"city": {"type": "string"}}, "required": ["city"]});
        let call = ToolCall {
            name: "get_weather".into(),
            args: crate::mock::tools::synthesize_args(Some(&schema)),
        };
        let usage = Some(Usage::new(20, call.completion_tokens()));
        let v: Value =
            serde_json::from_slice(&message_tool_json("msg_1", "c", "toolu_mock_1", &call, usage))
                .unwrap();
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(
            v["content"],
            serde_json::json!([{"type": "tool_use", "id": "toolu_mock_1", "name": "get_weather",
                                "input": {"city": "mock"}}])
        );
        assert_eq!(v["usage"]["output_tokens"], 4); // 15 bytes

        let events = message_tool_stream("msg_1", "c", "toolu_mock_1", &call, usage);
        let v = events_json(&events);
        let names: Vec<&str> = v.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            v[1].1["content_block"],
            serde_json::json!({"type": "tool_use", "id": "toolu_mock_1", "name": "get_weather", "input": {}})
        );
        let json: String = v[3..7]
            .iter()
            .map(|(_, d)| {
                assert_eq!(d["delta"]["type"], "input_json_delta");
                assert_eq!(d["index"], 0);
                d["delta"]["partial_json"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(json, r#"{"city":"mock"}"#);
        assert_eq!(v[8].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(v[8].1["usage"]["output_tokens"], 4);
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds[3], EventKind::Content);
        assert_eq!(kinds[7], EventKind::Finish);
    }

}
