//! Hostile input: every defence of docs/hardening.md answered as specified, and the gateway
//! still serving afterwards. Raw sockets (`RawConn`) for what a well-behaved client library
//! would never send. Timeouts are configured short; nothing asserts on timing.

use crate::common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// `/healthz` answers and an ordinary chat completion goes through.
fn assert_healthy(gw: &Gateway, key: &str) {
    let r = client().get(gw.url("/healthz")).send().unwrap();
    assert_eq!(r.status(), 200);
    let r = gw.chat(key, hello("mock/echo-1"));
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
}

/// The status and contract error code of one raw exchange, and whether the server closed
/// the connection after it.
fn raw_exchange(port: u16, raw: &[u8]) -> (u16, String, bool) {
    let mut conn = RawConn::open(port);
    let _ = conn.stream.get_mut().write_all(raw);
    let (status, headers, body) = conn.read_response();
    let v: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {:?}", String::from_utf8_lossy(&body)));
    let code = error_code(&v);
    let said_close = headers.iter().any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
    (status, code, said_close && closed(&mut conn))
}

/// Whether the peer closed the connection (EOF or reset) rather than keeping it open.
fn closed(conn: &mut RawConn) -> bool {
    let mut buf = [0u8; 64];
    matches!(conn.stream.read(&mut buf), Ok(0) | Err(_))
}

/// The first `Some` of `f`, tried for up to 10 s (the gateway may not have seen what the test
/// just did yet).
fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "condition not reached in 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn chat_head(key: &str, extra: &str) -> String {
    format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n{extra}")
}

#[test]
fn smuggling_shapes_get_400_and_a_closed_connection() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let body = hello("mock/echo-1").to_string();
    let n = body.len();
    let chunked = format!("{n:x}\r\n{body}\r\n0\r\n\r\n");
    let cases = [
        ("CL+TE", format!("{}Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}", chat_head(&key, ""))),
        ("TE+CL", format!("{}Transfer-Encoding: chunked\r\nContent-Length: {n}\r\n\r\n{chunked}", chat_head(&key, ""))),
        ("CL twice, differing", format!("{}Content-Length: {n}\r\nContent-Length: 5\r\n\r\n{body}", chat_head(&key, ""))),
        ("CL twice, equal", format!("{}Content-Length: {n}\r\nContent-Length: {n}\r\n\r\n{body}", chat_head(&key, ""))),
        ("CL list", format!("{}Content-Length: {n}, {n}\r\n\r\n{body}", chat_head(&key, ""))),
        ("TE chunked, identity", format!("{}Transfer-Encoding: chunked, identity\r\n\r\n{chunked}", chat_head(&key, ""))),
        ("TE xchunked", format!("{}Transfer-Encoding: xchunked\r\n\r\n{chunked}", chat_head(&key, ""))),
        ("TE twice", format!("{}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}", chat_head(&key, ""))),
        ("obs-fold", format!("{}Content-Length: {n}\r\nX-A: a\r\n b\r\n\r\n{body}", chat_head(&key, ""))),
        ("bare LF", format!("POST /v1/chat/completions HTTP/1.1\nHost: x\nContent-Length: {n}\n\n{body}")),
    ];
    gw.mock.clear();
    for (what, raw) in cases {
        let (status, code, closed) = raw_exchange(gw.port, raw.as_bytes());
        assert_eq!((status, code.as_str()), (400, "invalid_request"), "{what}");
        assert!(closed, "{what}: the connection is closed after the refusal");
    }
    assert!(gw.mock.requests().is_empty(), "nothing reached the provider");
    assert_healthy(&gw, &key);
}

#[test]
fn malformed_request_heads_get_a_json_400() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let cases: [(&str, &[u8]); 7] = [
        ("not a request line", b"GARBAGE\r\n\r\n"),
        ("method only", b"GET\r\n\r\n"),
        ("method not a token", b"G@T /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("unknown version", b"GET /v1/models HTTP/9.9\r\nHost: x\r\n\r\n"),
        ("space in a header name", b"GET /v1/models HTTP/1.1\r\nBad Header: x\r\n\r\n"),
        ("empty header name", b"GET /v1/models HTTP/1.1\r\n: x\r\n\r\n"),
        ("control byte in a value", b"GET /v1/models HTTP/1.1\r\nHost: x\x01y\r\n\r\n"),
    ];
    for (what, raw) in cases {
        let (status, code, closed) = raw_exchange(gw.port, raw);
        assert_eq!((status, code.as_str()), (400, "invalid_request"), "{what}");
        assert!(closed, "{what}: the connection is closed after the refusal");
    }
    assert!(gw.metrics().contains("tollgate_refused_total{reason=\"malformed\"} 7"));
    // A target with characters Pingora percent-encodes (a space, quotes) is still served.
    let mut conn = RawConn::open(gw.port);
    conn.stream.get_mut().write_all(b"GET /v1/models?q=\"a b\" HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (status, _, body) = conn.read_response();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_healthy(&gw, &key);
}

#[test]
fn oversized_headers_get_431() {
    let gw = Gateway::start(); // max_header_bytes 32 KiB, max_headers 100 by default
    let (_, key) = gw.account_with_key("5");
    let big = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(40 * 1024));
    let many = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\n{}\r\n", "X-A: b\r\n".repeat(101));
    for (what, raw) in [("40 KiB header", big), ("101 header lines", many)] {
        let (status, code, closed) = raw_exchange(gw.port, raw.as_bytes());
        assert_eq!((status, code.as_str()), (431, "request_too_large"), "{what}");
        assert!(closed, "{what}");
    }
    // Just under both limits is fine.
    let r = client().get(gw.url("/v1/models")).header("x-big", "a".repeat(30 * 1024)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(gw.metrics().contains("tollgate_refused_total{reason=\"header_too_large\"} 2"));
    assert_healthy(&gw, &key);
}

#[test]
fn slow_clients_are_cut_off() {
    let gw = Gateway::start_extra(
        "[server.limits]\nheader_timeout_secs = 1\nbody_idle_timeout_secs = 1\nbody_timeout_secs = 3\n",
    );
    let (_, key) = gw.account_with_key("5");

    // Slowloris: a header trickled a line at a time never finishes within the deadline.
    let mut conn = RawConn::open(gw.port);
    let _ = conn.stream.get_mut().write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n");
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1600) {
        std::thread::sleep(Duration::from_millis(200));
        if conn.stream.get_mut().write_all(b"X-Slow: 1\r\n").is_err() {
            break;
        }
    }
    let (status, _, body) = conn.read_response();
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&body));
    assert_eq!(error_code(&serde_json::from_slice(&body).unwrap()), "invalid_request");
    assert!(closed(&mut conn));

    // A connection that never sends a byte is closed.
    let mut idle = RawConn::open(gw.port);
    assert!(closed(&mut idle), "an idle new connection is closed after header_timeout_secs");

    // A body that stops arriving: 400 after body_idle_timeout_secs.
    let body = hello("mock/echo-1").to_string();
    let mut conn = RawConn::open(gw.port);
    let head = chat_head(&key, &format!("Content-Length: {}\r\n\r\n", body.len()));
    conn.send(head.as_bytes());
    conn.send(&body.as_bytes()[..10]);
    let (status, _, resp) = conn.read_response();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&resp));

    // A body trickled fast enough to dodge the idle timeout still has to end in time: 408.
    let mut conn = RawConn::open(gw.port);
    conn.send(head.as_bytes());
    let start = Instant::now();
    // A byte every 250 ms until 2.5 s (the idle timeout never fires), then nothing more: the
    // 3 s deadline ends it with every byte sent already read (no reset under the answer).
    for b in body.as_bytes().iter().take(10) {
        if start.elapsed() > Duration::from_millis(2500) || conn.stream.get_mut().write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let (status, _, resp) = conn.read_response();
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&resp));

    assert_healthy(&gw, &key);
}

#[test]
fn connections_and_requests_per_address_are_capped() {
    let gw = Gateway::start_extra("[server.limits]\nmax_connections_per_ip = 3\nmax_requests_per_ip = 1\n");
    let (_, key) = gw.account_with_key("5");

    // One request in flight: its body is still on its way.
    let body = hello("mock/echo-1").to_string();
    // Until the gateway has the slow request in hand (and the previous request's slot is back),
    // others still go through: start over until one is refused.
    let (mut slow, r) = eventually(|| {
        let mut slow = RawConn::open(gw.port);
        slow.send(chat_head(&key, &format!("Content-Length: {}\r\n\r\n", body.len())).as_bytes());
        slow.send(&body.as_bytes()[..5]);
        std::thread::sleep(Duration::from_millis(100));
        let r = gw.chat(&key, hello("mock/echo-1"));
        (r.status() != 200).then_some((slow, r))
    });
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_code(&r.json().unwrap()), "rate_limit_exceeded");
    // When it finishes, the next one goes through.
    slow.send(&body.as_bytes()[5..]);
    assert_eq!(slow.read_response().0, 200);
    assert_healthy(&gw, &key);

    // Connections: `slow` still holds one; two more fill the cap, the fourth is refused.
    // Each is proven open and counted by a kept-alive answer: connections of the requests
    // above may still count until the gateway sees them closed, and refuse one of these.
    let held: Vec<RawConn> = (0..2)
        .map(|_| {
            eventually(|| {
                let mut conn = RawConn::open(gw.port);
                conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
                (conn.read_response().0 == 200).then_some(conn)
            })
        })
        .collect();
    // Once the gateway has accepted them, the next connection is refused.
    let (status, code, closed) = eventually(|| {
        let mut conn = RawConn::open(gw.port);
        conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let (status, headers, body) = conn.read_response();
        if status == 200 {
            return None;
        }
        let code = error_code(&serde_json::from_slice(&body).unwrap());
        let said_close = headers.iter().any(|(k, v)| k == "connection" && v == "close");
        Some((status, code, said_close && closed(&mut conn)))
    });
    assert_eq!((status, code.as_str()), (429, "rate_limit_exceeded"));
    assert!(closed);
    drop(held);
    drop(slow);
    // Closed connections give their slots back (as soon as the gateway sees them close).
    let start = Instant::now();
    loop {
        let ok = client().get(gw.url("/healthz")).send().is_ok_and(|r| r.status() == 200);
        if ok {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "slots were not given back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_healthy(&gw, &key);
}

#[test]
fn paths_are_normalised_or_refused() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    let get = |path: &str| {
        let mut conn = RawConn::open(gw.port);
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n").as_bytes());
        let (status, _, body) = conn.read_response();
        (status, body)
    };
    // Repeated slashes collapse to the route they spell.
    for path in ["//v1//models", "/v1/models/", "/api/v1//models"] {
        let (status, body) = get(path);
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        assert!(serde_json::from_slice::<Value>(&body).unwrap()["data"].is_array(), "{path}");
    }
    // Dot segments never reach another route: refused, whatever their spelling.
    for path in [
        "/v1/./models",
        "/v1/../v1/models",
        "/v1/models/../admin/accounts",
        "/v1/%2e%2e/admin/accounts",
        "/v1/%2E/models",
        "/v1/models/%2e%2e%2fadmin",
    ] {
        let (status, body) = get(path);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, error_code(&v).as_str()), (400, "invalid_request"), "{path}");
    }
    // A trailing slash on an inference route still routes.
    let r = client().post(gw.url("/v1/chat/completions/")).bearer_auth(&key).json(&hello("mock/echo-1")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_healthy(&gw, &key);
}

#[test]
fn bodies_must_be_json_utf8_shallow_and_of_the_right_type() {
    let gw = Gateway::start();
    let (id, key) = gw.account_with_key("5");
    let post = |path: &str, auth: &str, content_type: Option<&str>, body: Vec<u8>| {
        let mut req = client().post(gw.url(path)).bearer_auth(auth).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.send().unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap())
    };
    let chat = hello("mock/echo-1").to_string().into_bytes();
    gw.mock.clear();

    // Nesting deeper than max_json_depth (64), in a field the gateway would otherwise ignore.
    let deep = format!(
        r#"{{"model":"mock/echo-1","messages":[{{"role":"user","content":"hi"}}],"metadata":{}1{}}}"#,
        "[".repeat(70),
        "]".repeat(70)
    );
    let (status, v) = post("/v1/chat/completions", &key, Some("application/json"), deep.into_bytes());
    assert_eq!((status, error_code(&v).as_str()), (400, "invalid_request"));
    assert!(v["error"]["message"].as_str().unwrap().contains("deeper than 64"), "{v}");
    // Also on a local route.
    let deep_admin = format!(r#"{{"amount_usd":"1","note":{}"x"{}}}"#, "[".repeat(70), "]".repeat(70));
    let (status, _) = post(&format!("/v1/admin/accounts/{id}/credits"), ADMIN_TOKEN, None, deep_admin.into_bytes());
    assert_eq!(status, 400);

    // Invalid UTF-8 inside a string.
    let mut bad = br#"{"model":"mock/echo-1","messages":[{"role":"user","content":"hi "#.to_vec();
    bad.extend_from_slice(b"\xff\xfe\"}]}");
    let (status, v) = post("/v1/chat/completions", &key, Some("application/json"), bad);
    assert_eq!((status, error_code(&v).as_str()), (400, "invalid_request"));
    assert!(v["error"]["message"].as_str().unwrap().contains("UTF-8"), "{v}");

    // Wrong content types.
    for ct in ["text/plain", "application/xml", "multipart/form-data; boundary=x"] {
        let (status, v) = post("/v1/chat/completions", &key, Some(ct), chat.clone());
        assert_eq!((status, error_code(&v).as_str()), (400, "invalid_request"), "{ct}");
        assert!(v["error"]["message"].as_str().unwrap().contains("Content-Type"), "{v}");
    }
    let (status, _) = post("/v1/audio/transcriptions", &key, Some("application/json"), b"{}".to_vec());
    assert_eq!(status, 400, "transcriptions want multipart");
    assert!(gw.mock.requests().is_empty(), "nothing refused reached the provider");

    // Tolerated: JSON with parameters, no Content-Type at all, and curl -d's default.
    for ct in [Some("application/json; charset=utf-8"), None, Some("application/x-www-form-urlencoded")] {
        let (status, v) = post("/v1/chat/completions", &key, ct, chat.clone());
        assert_eq!(status, 200, "{ct:?}: {v}");
    }
    assert_healthy(&gw, &key);
}

/// A gateway listening on two ports, with a CORS policy on the first only.
fn two_listener_gateway() -> (Gateway, u16) {
    let mock = Mock::start_with(&["--api-key", PROVIDER_KEY]);
    let dir = scratch_dir("gw");
    let (port, second, metrics_port) = (free_port(), free_port(), free_port());
    let extra = format!(
        "[[server.cors]]\nlisteners = [\"127.0.0.1:{port}\"]\nallowed_origins = [\"https://app.example.com\"]\nmax_age_secs = 120\n\n[billing]\ntiers = []\n"
    );
    let text = config_for(port, metrics_port, &dir.join("data"), mock.port, &extra).replacen(
        &format!("listen = [\"127.0.0.1:{port}\"]"),
        &format!("listen = [\"127.0.0.1:{port}\", \"127.0.0.1:{second}\"]"),
        1,
    );
    let config_path = dir.join("tollgate.toml");
    std::fs::write(&config_path, text).unwrap();
    let mut gw = Gateway { port, metrics_port, stdout_path: dir.join("stdout.log"), dir, config_path, proc: None, mock };
    gw.spawn();
    (gw, second)
}

#[test]
fn cors_is_configured_per_listener() {
    let (gw, other_port) = two_listener_gateway();
    let (_, key) = gw.account_with_key("5");
    const ORIGIN: &str = "https://app.example.com";
    let preflight = |port: u16, origin: &str| {
        client()
            .request(reqwest::Method::OPTIONS, format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type, x-stainless-lang")
            .send()
            .unwrap()
    };

    // Preflight from an allowed origin: 204, no credentials needed.
    let r = preflight(gw.port, ORIGIN);
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], ORIGIN);
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert_eq!(h["access-control-allow-headers"], "authorization, content-type, x-stainless-lang");
    assert_eq!(h["access-control-max-age"], "120");

    // The actual request, and an error, carry the origin; a stream too.
    let r = client().post(gw.url("/v1/chat/completions")).header("origin", ORIGIN).bearer_auth(&key).json(&hello("mock/echo-1")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    assert!(r.headers()["access-control-expose-headers"].to_str().unwrap().contains("x-request-id"));
    let r = client().post(gw.url("/v1/chat/completions")).header("origin", ORIGIN).bearer_auth("sk-tg-wrong").json(&hello("mock/echo-1")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    let mut stream = hello("mock/echo-1");
    stream["stream"] = json!(true);
    let r = client().post(gw.url("/v1/chat/completions")).header("origin", ORIGIN).bearer_auth(&key).json(&stream).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    let _ = r.text();

    // A disallowed origin gets no CORS headers (and its preflight is not answered as one).
    let r = client().post(gw.url("/v1/chat/completions")).header("origin", "https://evil.example.com").bearer_auth(&key).json(&hello("mock/echo-1")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = preflight(gw.port, "https://evil.example.com");
    assert_ne!(r.status(), 204);
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // The other listener has no policy: no CORS for anyone.
    let r = preflight(other_port, ORIGIN);
    assert_ne!(r.status(), 204);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = client().post(format!("http://127.0.0.1:{other_port}/v1/chat/completions")).header("origin", ORIGIN).bearer_auth(&key).json(&hello("mock/echo-1")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_healthy(&gw, &key);
}
