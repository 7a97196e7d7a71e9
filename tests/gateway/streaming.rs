//! Streaming: chunks pass as they are produced, rewritten and metered in flight.

use crate::common::*;
use serde_json::{json, Value};
use std::io::Read;
use std::time::{Duration, Instant};

fn stream_body(include_usage: Option<bool>) -> Value {
    let mut b = json!({"model": "mock/echo-1", "stream": true,
        "messages": [{"role": "user", "content": "Stream to me"}]});
    if let Some(u) = include_usage {
        b["stream_options"] = json!({"include_usage": u});
    }
    b
}

#[test]
fn chunks_arrive_as_the_upstream_sends_them() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let mut r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-mock-chunk-delay-ms", "150")
        .header("x-mock-words", "6")
        .json(&stream_body(None))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    // Record when each piece of the body arrives at the client.
    let start = Instant::now();
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 4096];
    let mut all = Vec::new();
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        arrivals.push(start.elapsed());
        all.extend_from_slice(&buf[..n]);
    }
    // Buffering would deliver everything at once at the end (~1 s). Unbuffered, reads are
    // spread over the stream's life, about 150 ms apart.
    assert!(arrivals.len() >= 5, "only {} reads: the stream was buffered", arrivals.len());
    let gaps: Vec<u128> = arrivals.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    let spaced = gaps.iter().filter(|g| **g >= 100).count();
    assert!(spaced >= 4, "reads not spaced like the upstream's chunks: {gaps:?}");
    let text = String::from_utf8(all).unwrap();
    let events = sse_data(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
}

#[test]
fn every_chunk_names_the_slug_and_usage_is_hidden_unless_asked() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let r = gw.chat(&key, stream_body(None));
    let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_string();
    let text = r.text().unwrap();
    let events = sse_data(&text);
    let chunks: Vec<Value> = events.iter().filter(|e| *e != "[DONE]").map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.len() >= 3);
    for c in &chunks {
        assert_eq!(c["model"], "mock/echo-1", "chunk {c}");
        assert!(c.get("usage").is_none_or(|u| u.is_null()), "usage leaked to a client that did not ask: {c}");
        assert!(!c["choices"].as_array().unwrap().is_empty(), "the usage-only chunk must be removed");
    }
    // The gateway asked upstream for usage itself...
    let up = gw.mock.requests().pop().unwrap();
    assert_eq!(up["json"]["stream_options"]["include_usage"], true);
    // ...and billed from it.
    let g = gw.generation_eventually(&key, &gen_id);
    assert!(g["tokens_completion"].as_u64().unwrap() > 0);
    assert_eq!(g["usage_estimated"], false);
}

#[test]
fn usage_chunk_is_kept_when_the_client_asks() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let r = gw.chat(&key, stream_body(Some(true)));
    let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_string();
    let text = r.text().unwrap();
    let events = sse_data(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage_chunk: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage_chunk["model"], "mock/echo-1");
    let usage = &usage_chunk["usage"];
    let g = gw.generation_eventually(&key, &gen_id);
    assert_eq!(g["tokens_prompt"], usage["prompt_tokens"]);
    assert_eq!(g["tokens_completion"], usage["completion_tokens"]);
    // The body's id finds the same generation.
    let body_id = usage_chunk["id"].as_str().unwrap();
    let by_body = gw.generation_eventually(&key, body_id);
    assert_eq!(by_body["id"], gen_id);
}

#[test]
fn a_cut_stream_is_billed_for_what_was_produced_and_marked_estimated() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let before = usd(&gw.credits(&key)["data"]["remaining"]);
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-mock-cut-after", "3")
        .header("x-mock-words", "20")
        .json(&stream_body(None))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_string();
    let text = r.text().unwrap_or_default();
    let events = sse_data(&text);
    assert!(!events.iter().any(|e| e == "[DONE]"), "a cut stream has no [DONE]");
    // The client is told the stream failed, as one error event at the end.
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(last.get("error").is_some(), "last event should be an error: {last}");
    let g = gw.generation_eventually(&key, &gen_id);
    assert_eq!(g["usage_estimated"], true);
    assert!(g["tokens_completion"].as_u64().unwrap() >= 1);
    assert!(usd(&g["total_cost"]) > 0.0);
    let after = usd(&gw.credits(&key)["data"]["remaining"]);
    assert!((before - after - usd(&g["total_cost"])).abs() < 1e-9);
}

#[test]
fn an_upstream_error_event_is_forwarded_and_the_stream_ends() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-mock-stream-error-after", "2")
        .json(&stream_body(None))
        .send()
        .unwrap();
    let text = r.text().unwrap();
    let events = sse_data(&text);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{last}");
}

#[test]
fn streaming_with_no_usage_from_upstream_is_estimated() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-mock-no-usage", "1")
        .json(&stream_body(None))
        .send()
        .unwrap();
    let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_string();
    let _ = r.text().unwrap();
    let g = gw.generation_eventually(&key, &gen_id);
    assert_eq!(g["usage_estimated"], true);
    assert!(g["tokens_completion"].as_u64().unwrap() > 0);
    let _ = Duration::from_secs(0);
}
