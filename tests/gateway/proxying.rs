//! What reaches the provider, and what comes back.

use crate::common::*;
use serde_json::{json, Value};

#[test]
fn chat_completion_is_routed_rewritten_and_answered_with_the_slug() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("accept-encoding", "gzip, br")
        .header("x-custom-leak", format!("copy of {key}"))
        .header("x-kept", "yes")
        .json(&hello("mock/echo-1"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    for h in ["x-request-id", "x-generation-id", "x-tollgate-overhead-us"] {
        assert!(r.headers().get(h).is_some(), "missing {h}");
    }
    let overhead: u64 = r.headers()["x-tollgate-overhead-us"].to_str().unwrap().parse().unwrap();
    assert!(overhead > 0);
    let body: Value = r.json().unwrap();
    assert_eq!(body["model"], "mock/echo-1", "the body names the slug, not the upstream model");
    assert_eq!(body["object"], "chat.completion");
    assert!(!body["choices"][0]["message"]["content"].as_str().unwrap().is_empty());
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let reqs = gw.mock.requests();
    let up = reqs.last().expect("the mock saw the request");
    assert_eq!(up["path"], "/v1/chat/completions");
    assert_eq!(up["json"]["model"], "echo-upstream-1", "slug rewritten to upstream_model");
    let headers = &up["headers"];
    assert_eq!(headers["authorization"], format!("Bearer {PROVIDER_KEY}"), "provider key injected");
    assert!(headers.get("accept-encoding").is_none(), "accept-encoding stripped");
    assert!(headers.get("x-custom-leak").is_none(), "a header carrying our key is dropped");
    assert_eq!(headers["x-kept"], "yes");
    let all = up.to_string();
    assert!(!all.contains(&key), "the client's key never reaches the provider");
    assert!(!all.contains("sk-tg-"), "no sk-tg- value upstream");
}

#[test]
fn both_base_paths_serve_inference() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    for base in ["/v1", "/api/v1"] {
        let r = client()
            .post(gw.url(&format!("{base}/chat/completions")))
            .bearer_auth(&key)
            .json(&hello("mock/echo-1"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{base}");
    }
}

#[test]
fn other_body_fields_pass_through_untouched() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let body = json!({
        "model": "mock/echo-1",
        "messages": [{"role": "user", "content": "say \"model\": \"x\""}],
        "temperature": 0.25,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "metadata": {"model": "nested stays"}
    });
    assert_eq!(gw.chat(&key, body.clone()).status(), 200);
    let up = gw.mock.requests().pop().unwrap();
    let sent = &up["json"];
    assert_eq!(sent["model"], "echo-upstream-1");
    assert_eq!(sent["temperature"], 0.25);
    assert_eq!(sent["messages"], body["messages"]);
    assert_eq!(sent["tools"], body["tools"]);
    assert_eq!(sent["metadata"]["model"], "nested stays");
    assert!(sent.get("stream_options").is_none(), "non-streaming requests are not given stream_options");
}

#[test]
fn provider_4xx_passes_through_in_contract_shape() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-mock-status", "400")
        .json(&hello("mock/echo-1"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert_eq!(error_code(&v), "invalid_request");
    assert!(v["error"]["message"].as_str().unwrap().len() > 3);
}

/// A non-streamed answer is rewritten whole, so it goes out with its exact `Content-Length`
/// (one write, no chunked framing), on a connection that stays usable; a stream stays chunked.
#[test]
fn a_json_answer_carries_its_rewritten_length_and_a_stream_stays_chunked() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let mut conn = RawConn::open(gw.port);
    for stream in [false, false, true, false] {
        let body = json!({"model": "mock/echo-1", "stream": stream,
                          "messages": [{"role": "user", "content": "Hello"}]})
        .to_string();
        conn.send(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let (status, headers, body) = conn.read_response();
        assert_eq!(status, 200);
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        if stream {
            assert_eq!(get("transfer-encoding").as_deref(), Some("chunked"));
            assert!(get("content-length").is_none());
            assert!(String::from_utf8_lossy(&body).contains("data: [DONE]"));
        } else {
            assert!(get("transfer-encoding").is_none(), "{headers:?}");
            let len: usize = get("content-length").expect("content-length").parse().unwrap();
            assert_eq!(len, body.len());
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["model"], "mock/echo-1");
        }
    }
}
