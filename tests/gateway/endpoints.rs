//! The other OpenAI endpoints: each through the same auth, reservation and billing path,
//! priced by its own unit.

use crate::common::*;
use serde_json::{json, Value};

fn nano(v: &Value) -> i64 {
    (usd(v) * 1e9).round() as i64
}

fn post(gw: &Gateway, key: &str, path: &str, body: Value) -> reqwest::blocking::Response {
    client().post(gw.url(path)).bearer_auth(key).json(&body).send().unwrap()
}

fn gen_id(r: &reqwest::blocking::Response) -> String {
    r.headers()["x-generation-id"].to_str().unwrap().to_string()
}

#[test]
fn legacy_completions_pass_through_and_go_through_chat_for_anthropic() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    // OpenAI-compatible: passed through with the model rewritten.
    let r = post(&gw, &key, "/v1/completions", json!({"model": "mock/echo-1", "prompt": "Say hi", "max_tokens": 20}));
    assert_eq!(r.status(), 200);
    let id = gen_id(&r);
    let v: Value = r.json().unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "mock/echo-1");
    assert!(!v["choices"][0]["text"].as_str().unwrap().is_empty());
    let (p, c) = (v["usage"]["prompt_tokens"].as_u64().unwrap(), v["usage"]["completion_tokens"].as_u64().unwrap());
    let up = gw.mock.requests().pop().unwrap();
    assert_eq!(up["path"], "/v1/completions");
    assert_eq!(up["json"]["model"], "echo-upstream-1");
    let g = gw.generation_eventually(&key, &id);
    assert_eq!(nano(&g["total_cost"]), (p * 1000 + c * 2000) as i64);

    // Anthropic has no legacy endpoint: translated through chat, answered in legacy shape.
    for stream in [false, true] {
        let r = post(&gw, &key, "/v1/completions", json!({"model": "anthropic/claude-test", "prompt": "Say hi", "max_tokens": 50, "stream": stream}));
        assert_eq!(r.status(), 200, "stream={stream}");
        let up = gw.mock.requests().pop().unwrap();
        assert_eq!(up["path"], "/v1/messages");
        assert_eq!(up["json"]["messages"][0]["content"], "Say hi");
        let text = r.text().unwrap();
        if stream {
            let events = sse_data(&text);
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
            let first: Value = serde_json::from_str(&events[0]).unwrap();
            assert_eq!(first["object"], "text_completion");
            let all: String = events[..events.len() - 1]
                .iter()
                .filter_map(|e| serde_json::from_str::<Value>(e).ok())
                .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
                .collect();
            assert!(all.contains("mock"), "{all}");
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["object"], "text_completion");
            assert!(v["choices"][0]["text"].as_str().unwrap().contains("mock"));
        }
    }
}

#[test]
fn embeddings_are_billed_by_input_tokens() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let r = post(&gw, &key, "/v1/embeddings", json!({"model": "mock/embed", "input": ["hello world", "second"]}));
    assert_eq!(r.status(), 200);
    let id = gen_id(&r);
    let v: Value = r.json().unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["model"], "mock/embed");
    let p = v["usage"]["prompt_tokens"].as_u64().unwrap();
    let g = gw.generation_eventually(&key, &id);
    assert_eq!(g["tokens_prompt"].as_u64().unwrap(), p);
    assert_eq!(nano(&g["total_cost"]), (p * 20) as i64); // $0.02 per 1M = 20 nano per token

    // Gemini: embedContent / batchEmbedContents, usage estimated (Gemini reports none).
    let r = post(&gw, &key, "/v1/embeddings", json!({"model": "google/embed-test", "input": ["a", "b", "c"]}));
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
    let up = gw.mock.requests().pop().unwrap();
    assert!(up["path"].as_str().unwrap().ends_with(":batchEmbedContents"), "{}", up["path"]);
    let v: Value = r.json().unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
}

#[test]
fn a_model_only_serves_its_endpoints() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let r = post(&gw, &key, "/v1/embeddings", json!({"model": "mock/echo-1", "input": "x"}));
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert_eq!(error_code(&v), "invalid_request");
    assert!(v["error"]["message"].as_str().unwrap().contains("embeddings"));
    let r = gw.chat(&key, hello("mock/embed"));
    assert_eq!(r.status(), 400);
}

#[test]
fn images_are_billed_per_image_by_size() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let r = post(&gw, &key, "/v1/images/generations", json!({"model": "mock/image", "prompt": "a cat", "n": 2, "size": "1792x1024"}));
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
    let id = gen_id(&r);
    let v: Value = r.json().unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let g = gw.generation_eventually(&key, &id);
    assert_eq!(nano(&g["total_cost"]), 2 * 80_000_000);
    let r = post(&gw, &key, "/v1/images/generations", json!({"model": "mock/image", "prompt": "a cat", "size": "7x7"}));
    assert_eq!(r.status(), 400, "an unpriced size is refused before the upstream");
}

#[test]
fn speech_streams_audio_back_and_bills_input_characters() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let input = "Hello from Tollgate."; // 20 characters
    let r = post(&gw, &key, "/v1/audio/speech", json!({"model": "mock/tts", "input": input, "voice": "alloy"}));
    assert_eq!(r.status(), 200);
    let id = gen_id(&r);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("audio/"));
    let bytes = r.bytes().unwrap();
    assert!(bytes.len() >= 1000, "raw audio bytes back: {}", bytes.len());
    let g = gw.generation_eventually(&key, &id);
    assert_eq!(nano(&g["total_cost"]), 20 * 15_000); // $15 per 1M chars = 15,000 nano per char
}

#[test]
fn transcriptions_take_multipart_and_bill_seconds() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let audio = vec![7u8; 48_000]; // the mock reports ceil(bytes / 16000) = 3 seconds
    let form = reqwest::blocking::multipart::Form::new()
        .text("model", "mock/whisper")
        .part("file", reqwest::blocking::multipart::Part::bytes(audio).file_name("a.wav").mime_str("audio/wav").unwrap());
    let r = client().post(gw.url("/v1/audio/transcriptions")).bearer_auth(&key).multipart(form).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
    let id = gen_id(&r);
    let v: Value = r.json().unwrap();
    assert!(v["text"].as_str().unwrap().contains("48000"), "{v}");
    let up = gw.mock.requests().pop().unwrap();
    assert_eq!(up["path"], "/v1/audio/transcriptions");
    assert!(up["body"].as_str().unwrap().contains("whisper-upstream"), "the model field is rewritten");
    assert!(!up["body"].as_str().unwrap().contains("mock/whisper"));
    let g = gw.generation_eventually(&key, &id);
    assert_eq!(nano(&g["total_cost"]), 300_000); // 3 s × $0.006 / 60
}
