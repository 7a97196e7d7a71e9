//! Legacy `/completions` through chat, for providers that only have a chat API (Anthropic,
//! Gemini): the prompt becomes one user message, and the chat answer (whole or streamed)
//! becomes `text_completion` objects.

use crate::api::error::ApiError;
use crate::metering::{usage::Usage, SseDecoder, SseEvent, StreamMeter};
use bytes::BytesMut;
use serde_json::{json, Map, Value};

/// Fields a legacy request shares with chat, copied as they are.
const SHARED: &[&str] = &[
    "model", "max_tokens", "temperature", "top_p", "stop", "stream", "stream_options", "n",
    "user", "seed", "presence_penalty", "frequency_penalty",
];

pub fn to_chat_request(body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let v: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("request body is not valid JSON: {e}")))?;
    let prompt = match v.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_string(),
        _ => {
            return Err(ApiError::invalid_request(
                "this provider takes one text prompt: a string, or an array of one string",
            )
            .with_param("prompt"))
        }
    };
    let mut chat = Map::new();
    for k in SHARED {
        if let Some(x) = v.get(*k) {
            chat.insert((*k).to_string(), x.clone());
        }
    }
    if !chat.contains_key("max_tokens") {
        chat.insert("max_tokens".into(), json!(16)); // the legacy default
    }
    chat.insert("messages".into(), json!([{"role": "user", "content": prompt}]));
    Ok(Value::Object(chat).to_string().into_bytes())
}

/// A `chat.completion` as a `text_completion`.
pub fn chat_to_completion(chat: &[u8]) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<Value>(chat) else { return chat.to_vec() };
    convert(&mut v, false);
    v.to_string().into_bytes()
}

/// Rewrite a chat object (whole or chunk) into the legacy shape in place.
fn convert(v: &mut Value, chunk: bool) {
    if let Some(o) = v.as_object_mut() {
        o.insert("object".into(), json!("text_completion"));
        if let Some(Value::String(id)) = o.get("id").cloned() {
            o.insert("id".into(), json!(id.replacen("chatcmpl-", "cmpl-", 1)));
        }
        if let Some(Value::Array(choices)) = o.get_mut("choices") {
            for c in choices.iter_mut() {
                let from = if chunk { "delta" } else { "message" };
                let text = c.get(from).and_then(|m| m.get("content")).and_then(|t| t.as_str()).unwrap_or("").to_string();
                if let Some(c) = c.as_object_mut() {
                    c.remove(from);
                    c.insert("text".into(), json!(text));
                    c.entry("logprobs").or_insert(Value::Null);
                }
            }
        }
    }
}

/// Wraps a chat stream handler and re-frames its OpenAI chat chunks as legacy chunks.
pub struct ChatToCompletionStream {
    inner: Box<dyn StreamMeter>,
    decoder: SseDecoder,
    chat: BytesMut,
    events: Vec<SseEvent>,
}

impl ChatToCompletionStream {
    pub fn new(inner: Box<dyn StreamMeter>) -> Self {
        ChatToCompletionStream { inner, decoder: SseDecoder::new(), chat: BytesMut::new(), events: Vec::new() }
    }

    fn reframe(&mut self, out: &mut BytesMut, end: bool) {
        self.decoder.feed(&self.chat, &mut self.events);
        self.chat.clear();
        if end {
            self.decoder.finish(&mut self.events);
        }
        for ev in self.events.drain(..) {
            out.extend_from_slice(b"data: ");
            match serde_json::from_slice::<Value>(&ev.data) {
                Ok(mut v) if v.get("choices").is_some() => {
                    convert(&mut v, true);
                    out.extend_from_slice(v.to_string().as_bytes());
                }
                // [DONE], error events and anything else pass through.
                _ => out.extend_from_slice(&ev.data),
            }
            out.extend_from_slice(b"\n\n");
        }
    }
}

impl StreamMeter for ChatToCompletionStream {
    fn on_bytes(&mut self, input: &[u8], out: &mut BytesMut) {
        self.inner.on_bytes(input, &mut self.chat);
        self.reframe(out, false);
    }
    fn on_end(&mut self, out: &mut BytesMut) {
        self.inner.on_end(&mut self.chat);
        self.reframe(out, true);
    }
    fn usage(&self) -> Option<Usage> {
        self.inner.usage()
    }
    fn response_id(&self) -> Option<&str> {
        self.inner.response_id()
    }
    fn upstream_id(&self) -> Option<&str> {
        self.inner.upstream_id()
    }
    fn estimated_completion_tokens(&self) -> u64 {
        self.inner.estimated_completion_tokens()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::OpenAiStreamMeter;

    #[test]
    fn a_prompt_becomes_one_user_message() {
        let chat = to_chat_request(br#"{"model":"m","prompt":"Say hi","max_tokens":5,"logprobs":2}"#).unwrap();
        let v: Value = serde_json::from_slice(&chat).unwrap();
        assert_eq!(v["messages"], json!([{"role": "user", "content": "Say hi"}]));
        assert_eq!(v["max_tokens"], 5);
        assert!(v.get("logprobs").is_none());
        assert!(to_chat_request(br#"{"model":"m","prompt":["a","b"]}"#).is_err());
        assert!(to_chat_request(br#"{"model":"m"}"#).is_err());
    }

    #[test]
    fn answers_and_chunks_take_the_legacy_shape() {
        let out = chat_to_completion(br#"{"id":"chatcmpl-1","object":"chat.completion","model":"s","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!((v["object"].as_str(), v["id"].as_str()), (Some("text_completion"), Some("cmpl-1")));
        assert_eq!(v["choices"][0]["text"], "Hi");

        let mut s = ChatToCompletionStream::new(Box::new(OpenAiStreamMeter::new("s", false)));
        let mut out = BytesMut::new();
        let input = b"data: {\"id\":\"chatcmpl-2\",\"object\":\"chat.completion.chunk\",\"model\":\"u\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"He\"},\"finish_reason\":null}]}\n\ndata: [DONE]\n\n";
        for b in input.chunks(7) {
            s.on_bytes(b, &mut out);
        }
        s.on_end(&mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.contains(r#""text":"He""#) && text.contains(r#""object":"text_completion""#), "{text}");
        assert!(text.trim_end().ends_with("data: [DONE]"));
    }
}
