//! Every error of the contract, in its JSON shape.

use crate::common::*;
use serde_json::{json, Value};

fn post_raw(gw: &Gateway, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = client().post(gw.url("/v1/chat/completions")).header("content-type", "application/json").body(body.to_string());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn malformed_requests_are_400() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let cases = [
        "{not json",
        "[]",
        r#"{"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"mock/echo-1"}"#,
        r#"{"model":"mock/echo-1","messages":[]}"#,
        r#"{"model":7,"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"mock/echo-1","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
        r#"{"model":"mock/echo-1","messages":[{"role":"user","content":"x"}],"max_tokens":-5}"#,
        "",
    ];
    for body in cases {
        let (status, v) = post_raw(&gw, Some(&key), body);
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(error_code(&v), "invalid_request", "{body}");
    }
}

#[test]
fn keys_are_checked() {
    let gw = Gateway::start();
    let ok = hello("mock/echo-1").to_string();
    for key in [None, Some("sk-tg-unknown"), Some("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"), Some("nonsense")] {
        let (status, v) = post_raw(&gw, key, &ok);
        assert_eq!(status, 401, "{key:?}");
        assert_eq!(error_code(&v), "invalid_api_key");
    }
}

#[test]
fn unknown_or_disabled_models_are_404() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    for model in ["nope/never", "off/model"] {
        let (status, v) = post_raw(&gw, Some(&key), &hello(model).to_string());
        assert_eq!(status, 404, "{model}");
        assert_eq!(error_code(&v), "model_not_found");
    }
}

#[test]
fn upstream_failures_map_to_502_503_504() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let with = |h: &str, v: &str| {
        client().post(gw.url("/v1/chat/completions")).bearer_auth(&key).header(h, v).json(&hello("mock/echo-1")).send().unwrap()
    };
    let r = with("x-mock-status", "500");
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(&r.json().unwrap()), "upstream_error");
    let r = with("x-mock-hang", "1"); // read timeout is 5 s in the test config
    assert_eq!(r.status(), 504);
    assert_eq!(error_code(&r.json().unwrap()), "upstream_timeout");
    let r = gw.chat(&key, hello("dead/model"));
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(&r.json().unwrap()), "provider_unavailable");
    // A provider whose host does not resolve: an answer, not a crash.
    let r = gw.chat(&key, hello("nodns/model"));
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(&r.json().unwrap()), "provider_unavailable");
    assert_eq!(client().get(gw.url("/healthz")).send().unwrap().status(), 200);
    let r = with("x-mock-status", "429");
    assert_eq!(r.status(), 429);
    assert_eq!(error_code(&r.json().unwrap()), "rate_limit_exceeded");
}

#[test]
fn unknown_routes_and_methods_answer_json() {
    let gw = Gateway::start();
    let r = client().get(gw.url("/v1/nothing-here")).send().unwrap();
    assert_eq!(r.status(), 404);
    error_code(&r.json().unwrap());
    let r = client().get(gw.url("/v1/chat/completions")).send().unwrap();
    assert_eq!(r.status(), 405);
    error_code(&r.json().unwrap());
    let r = client().post(gw.url("/v1/admin/accounts")).json(&json!({"email": "a@b.c"})).send().unwrap();
    assert_eq!(r.status(), 401, "admin needs the admin token");
    let (_, key) = gw.account_with_key("1");
    let r = client().post(gw.url("/v1/admin/accounts")).bearer_auth(&key).json(&json!({"email": "a@b.c"})).send().unwrap();
    assert_eq!(r.status(), 401, "an API key is not the admin token");
}
