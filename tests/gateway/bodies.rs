//! Request bodies of any realistic size, resent intact; the limit answered with 413.

use crate::common::*;
use serde_json::{json, Value};

#[test]
fn one_mib_bodies_reach_the_upstream_intact_streamed_and_not() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    for stream in [false, true] {
        let mut body = big_body("mock/big", 1024 * 1024);
        body["stream"] = json!(stream);
        gw.mock.clear();
        let r = gw.chat(&key, body.clone());
        assert_eq!(r.status(), 200, "stream={stream}");
        let text = r.text().unwrap();
        if stream {
            assert!(sse_data(&text).last().map(|s| s == "[DONE]").unwrap_or(false));
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["model"], "mock/big");
        }
        let up = gw.mock.requests().pop().unwrap();
        let sent_content = up["json"]["messages"][0]["content"].as_str().map(str::len);
        assert_eq!(sent_content, Some(1024 * 1024), "the whole message arrived (stream={stream})");
        assert!(up["body_len"].as_u64().unwrap() > 1024 * 1024);
    }
}

#[test]
fn a_large_body_then_a_second_request_on_the_same_connection() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let mut conn = RawConn::open(gw.port);
    for size in [200 * 1024, 100] {
        let body = big_body("mock/big", size).to_string();
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.send(req.as_bytes());
        let (status, headers, resp) = conn.read_response();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
        assert!(!headers.iter().any(|(k, v)| k == "connection" && v == "close"), "keep-alive kept after {size} bytes");
        let v: Value = serde_json::from_slice(&resp).unwrap();
        assert_eq!(v["model"], "mock/big");
    }
}

#[test]
fn chunked_upload_and_expect_continue_work() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let body = big_body("mock/big", 100 * 1024).to_string();
    let mut conn = RawConn::open(gw.port);
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
    )
    .into_bytes();
    for piece in body.as_bytes().chunks(7000) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    conn.send(&req);
    let (mut status, _, _) = conn.read_response();
    if status == 100 {
        status = conn.read_response().0;
    }
    assert_eq!(status, 200);
}

#[test]
fn a_body_over_the_limit_is_413() {
    let gw = Gateway::start(); // max_body_bytes = 4 MiB in the test config
    let (_, key) = gw.account_with_key("5");
    gw.mock.clear();
    let r = gw.chat(&key, big_body("mock/big", 5 * 1024 * 1024));
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(&r.json().unwrap()), "request_too_large");
    assert!(gw.mock.requests().is_empty());
}

#[test]
fn an_oversized_declared_body_with_expect_continue_is_refused_before_it_is_sent() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let mut conn = RawConn::open(gw.port);
    conn.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\nExpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    );
    let (status, _, body) = conn.read_response();
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error_code(&v), "request_too_large");
}
