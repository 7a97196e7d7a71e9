//! Anthropic and Gemini through the same OpenAI call: translated both ways, streamed as
//! OpenAI chunks, billed from the provider's own usage.

use crate::common::*;
use serde_json::{json, Value};

const MODELS: [(&str, &str, f64, f64); 2] = [
    // slug, the path the mock must see, $ per 1M in, $ per 1M out
    ("anthropic/claude-test", "/v1/messages", 3.0, 15.0),
    ("google/gemini-test", "/v1beta/models/gemini-2.5-flash:generateContent", 0.30, 2.50),
];

fn nano(v: &Value) -> i64 {
    (usd(v) * 1e9).round() as i64
}

#[test]
fn non_streaming_completions_are_translated_and_billed_exactly() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    for (slug, path, inp, out) in MODELS {
        gw.mock.clear();
        let body = json!({"model": slug, "max_tokens": 100,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]});
        let r = gw.chat(&key, body);
        assert_eq!(r.status(), 200, "{slug}");
        let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_string();
        let v: Value = r.json().unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], slug);
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert!(v["choices"][0]["message"]["content"].as_str().unwrap().contains("mock"), "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let (p, c) = (v["usage"]["prompt_tokens"].as_u64().unwrap(), v["usage"]["completion_tokens"].as_u64().unwrap());
        assert!(p > 0 && c > 0);

        let up = gw.mock.requests().pop().unwrap();
        assert_eq!(up["path"].as_str().unwrap().split('?').next().unwrap(), path, "{slug}");
        let headers = &up["headers"];
        if slug.starts_with("anthropic") {
            assert_eq!(headers["x-api-key"], PROVIDER_KEY);
            assert_eq!(headers["anthropic-version"], "2023-06-01");
            assert!(headers.get("authorization").is_none());
            assert_eq!(up["json"]["system"], "Be brief.");
            assert_eq!(up["json"]["max_tokens"], 100);
            assert_eq!(up["json"]["model"], "claude-sonnet-4-5");
        } else {
            assert_eq!(headers["x-goog-api-key"], PROVIDER_KEY);
            assert!(headers.get("authorization").is_none());
            assert_eq!(up["json"]["systemInstruction"]["parts"][0]["text"], "Be brief.");
            assert_eq!(up["json"]["generationConfig"]["maxOutputTokens"], 100);
        }
        assert!(!up.to_string().contains(&key));

        let g = gw.generation_eventually(&key, &gen_id);
        assert_eq!(g["tokens_prompt"].as_u64().unwrap(), p);
        assert_eq!(g["tokens_completion"].as_u64().unwrap(), c);
        let expected = ((p as f64 * inp + c as f64 * out) * 1000.0).round() as i64; // nano-USD
        assert_eq!(nano(&g["total_cost"]), expected, "{slug}");
        assert_eq!(g["provider"], if slug.starts_with("anthropic") { "claude" } else { "gem" });
    }
}

#[test]
fn streams_arrive_as_openai_chunks_with_usage_when_asked() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    for (slug, _, _, _) in MODELS {
        for include_usage in [false, true] {
            let mut body = json!({"model": slug, "stream": true,
                "messages": [{"role": "user", "content": "Hello"}]});
            if include_usage {
                body["stream_options"] = json!({"include_usage": true});
            }
            let r = gw.chat(&key, body);
            assert_eq!(r.status(), 200);
            assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
            let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_string();
            let text = r.text().unwrap();
            let events = sse_data(&text);
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{slug}: {text}");
            let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
            let ids: std::collections::HashSet<&str> = chunks.iter().map(|c| c["id"].as_str().unwrap()).collect();
            assert_eq!(ids.len(), 1, "one id for the whole stream");
            let mut content = String::new();
            for c in &chunks {
                assert_eq!(c["object"], "chat.completion.chunk");
                assert_eq!(c["model"], slug);
                if let Some(d) = c["choices"][0]["delta"]["content"].as_str() {
                    content.push_str(d);
                }
            }
            assert!(content.contains("mock"), "{slug}: {content}");
            let usage_chunks: Vec<&Value> = chunks.iter().filter(|c| c.get("usage").is_some_and(|u| !u.is_null())).collect();
            let g = gw.generation_eventually(&key, &gen_id);
            if include_usage {
                assert_eq!(usage_chunks.len(), 1, "{slug}");
                assert_eq!(g["tokens_completion"], usage_chunks[0]["usage"]["completion_tokens"]);
            } else {
                assert!(usage_chunks.is_empty(), "{slug}");
            }
            assert!(g["tokens_completion"].as_u64().unwrap() > 0);
            assert_eq!(g["usage_estimated"], false, "{slug}");
        }
    }
}

#[test]
fn provider_errors_keep_their_status_and_message() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    for (slug, _, _, _) in MODELS {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("x-mock-status", "400")
            .json(&hello(slug))
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "{slug}");
        let v: Value = r.json().unwrap();
        assert_eq!(error_code(&v), "invalid_request");
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("x-mock-status", "529")
            .json(&hello(slug))
            .send()
            .unwrap();
        assert_eq!(r.status(), 502, "{slug}");
    }
}
