//! Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`): the same
//! deterministic reply as [`super::openai`], in Anthropic's shapes.
//!
//! Tokens: `input_tokens` = Σ over messages of `ceil(text_bytes / 4) + 3`, plus the same for
//! `system` when present (a string or text blocks); `output_tokens` = words of the reply = the
//! number of `content_block_delta` events. `max_tokens` is required (as in Anthropic) and caps the
//! reply, turning `stop_reason` into `"max_tokens"`. Auth is `x-api-key`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::openai::{bad_json, event, text_bytes, to_vec, tokens_for_bytes, ApiError, Event};
use super::openai::{EventKind, Reply};

#[derive(Deserialize)]
struct RawRequest {
    model: Option<String>,
    messages: Option<Vec<RawMessage>>,
    #[serde(default)]
    system: Value,
    max_tokens: Option<u64>,
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct RawMessage {
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
        s => tokens_for_bytes(text_bytes(s)) + 3,
    };
    Ok(MessagesRequest {
        model,
        stream: raw.stream.unwrap_or(false),
        max_tokens: raw.max_tokens,
        message_count: messages.len(),
        input_tokens: system
            + messages
                .iter()
                .map(|m| tokens_for_bytes(text_bytes(&m.content)) + 3)
                .sum::<u64>(),
    })
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
    content: Vec<TextBlock<'a>>,
    stop_reason: Option<&'a str>,
    stop_sequence: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

pub fn message_json(id: &str, model: &str, reply: &Reply, usage: Option<Usage>) -> Vec<u8> {
    let text = reply.text();
    to_vec(&Message {
        id,
        kind: "message",
        role: "assistant",
        model,
        content: vec![TextBlock {
            kind: "text",
            text: &text,
        }],
        stop_reason: Some(stop_reason(reply)),
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
        content_block: TextBlock<'a>,
    },
    Ping,
    ContentBlockDelta {
        index: u32,
        delta: TextBlock<'a>,
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
    let text = |kind, text| TextBlock { kind, text };
    let mut events = Vec::with_capacity(reply.chunks.len() + 6);
    let mut push = |kind, name, e: &StreamEvent| events.push(event(kind, named(name, e)));
    push(K::Head, "message_start", &E::MessageStart { message });
    let block = E::ContentBlockStart {
        index: 0,
        content_block: text("text", ""),
    };
    push(K::Head, "content_block_start", &block);
    push(K::Head, "ping", &E::Ping);
    for word in &reply.chunks {
        let delta = E::ContentBlockDelta {
            index: 0,
            delta: text("text_delta", word),
        };
        push(K::Content, "content_block_delta", &delta);
    }
    push(
        K::Finish,
        "content_block_stop",
        &E::ContentBlockStop { index: 0 },
    );
    let delta = E::MessageDelta {
        delta: StopInfo {
            stop_reason: stop_reason(reply),
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
}
