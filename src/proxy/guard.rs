//! Per-request defences at the top of `request_filter` (the connection-level ones are in
//! `front.rs`; every defence, its setting and what a client sees are in docs/hardening.md):
//!
//! - the downstream read (per body read) and write timeouts;
//! - CORS: the request's origin is checked and a preflight answered (`cors.rs`);
//! - a cap on requests in flight per client address (429 `rate_limit_exceeded`);
//! - path normalisation: repeated slashes collapse; `.`/`..` segments, percent-encoded dots
//!   and backslashes are refused (400), so no path reaches a route other than its own;
//! - the content type of routes that read a body (400);
//! - a JSON body must be UTF-8 and nest at most `max_json_depth` arrays/objects (400),
//!   checked in one pass over the bytes before any parser sees them;
//! - a deadline on reading the whole body (408).
//!
//! All of it is cheap on the happy path: no allocation unless a path has `//` in it, the
//! depth scan skips string contents with `memchr`, and the per-address count is one
//! uncontended lock in 64.

use super::ctx::RequestCtx;
use crate::api::error::ApiError;
use crate::api::{self, Endpoint, Reply, Route};
use crate::config::snapshot::Limits;
use crate::limits::conn::REQUESTS;
use bytes::Bytes;
use http::Method;
use pingora::proxy::Session;
use std::borrow::Cow;

/// Start a request: timeouts, CORS, the per-address cap, the path, the content type.
/// `Err` is the reply to send instead (a preflight's 204 among them).
pub fn begin(session: &mut Session, ctx: &mut RequestCtx) -> Result<Route, Reply> {
    let limits = &ctx.config.server.limits;
    let (idle, write, cap) = (limits.body_idle_timeout, limits.write_timeout, limits.max_requests_per_ip);
    session.set_read_timeout(Some(idle));
    session.set_write_timeout(Some(write));

    if let Some(preflight) = super::cors::begin(session, ctx) {
        return Err(preflight);
    }

    if cap > 0 {
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
            match REQUESTS.acquire(ip, cap) {
                Some(slot) => ctx.ip_slot = slot,
                None => {
                    crate::metrics::count_refusal("requests_per_ip");
                    return Err(ApiError::rate_limited(
                        format!("too many requests in flight from your address (at most {cap} at once); retry when some finish"),
                        1,
                    )
                    .into());
                }
            }
        }
    }

    let header = session.req_header();
    let path = normalize_path(header.uri.path()).map_err(Reply::from)?;
    let route = api::route(&header.method, &path);
    check_content_type(&header.method, &route, session).map_err(Reply::from)?;
    Ok(route)
}

/// After refusing a request whose body was not read: swallow the body for a moment, so the
/// connection is not reset under the answer (nothing when there is no body).
pub async fn drain_after_refusal(session: &mut Session) {
    if session.is_body_empty() {
        return;
    }
    let drain = session.downstream_session.drain_request_body();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
}

/// The path routed: repeated slashes collapsed; dot segments (plain or percent-encoded) and
/// backslashes refused. Borrowed unless there was something to collapse.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, ApiError> {
    let b = path.as_bytes();
    let suspicious = memchr::memchr3(b'.', b'%', b'\\', b).is_some() || memchr::memmem::find(b, b"//").is_some();
    if !suspicious {
        return Ok(Cow::Borrowed(path));
    }
    let refuse = |what: &str| {
        crate::metrics::count_refusal("path");
        Err(ApiError::invalid_request(format!("request path must not contain {what}")))
    };
    if b.contains(&b'\\') {
        return refuse("a backslash");
    }
    if b.windows(3).any(|w| w[0] == b'%' && w[1] == b'2' && (w[2] | 0x20) == b'e') {
        return refuse("percent-encoded dots");
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return refuse("'.' or '..' segments");
    }
    if memchr::memmem::find(b, b"//").is_none() {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(seg);
    }
    if path.ends_with('/') || out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Routes that read a body want JSON (transcriptions: multipart). A missing `Content-Type`
/// is tolerated (OpenAI does), and so is curl's `-d` default
/// (`application/x-www-form-urlencoded`): the body is parsed as JSON either way. Any other type
/// is refused before the body is read.
fn check_content_type(method: &Method, route: &Route, session: &Session) -> Result<(), ApiError> {
    if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        return Ok(());
    }
    if matches!(route, Route::NotFound | Route::MethodNotAllowed(_)) {
        return Ok(());
    }
    let value = session.req_header().headers.get(http::header::CONTENT_TYPE);
    let essence = value.map(|v| {
        let v = v.as_bytes();
        let end = memchr::memchr(b';', v).unwrap_or(v.len());
        v[..end].trim_ascii()
    });
    let bad = |want: &str| {
        crate::metrics::count_refusal("content_type");
        let got = value.and_then(|v| v.to_str().ok()).unwrap_or("none");
        Err(ApiError::invalid_request(format!("Content-Type must be {want} (got {got})")))
    };
    if *route == Route::Inference(Endpoint::Transcriptions) {
        return match essence {
            Some(e) if e.eq_ignore_ascii_case(b"multipart/form-data") => Ok(()),
            _ => bad("multipart/form-data"),
        };
    }
    match essence {
        None => Ok(()),
        Some(e) if is_json_type(e) || e.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") => Ok(()),
        Some(_) => bad("application/json"),
    }
}

/// `application/json` or a `+json` type.
fn is_json_type(essence: &[u8]) -> bool {
    if essence.eq_ignore_ascii_case(b"application/json") {
        return true;
    }
    let n = essence.len();
    n > 5 && essence[n - 5..].eq_ignore_ascii_case(b"+json") && essence.starts_with(b"application/")
}

/// Read the whole body within `limit` bytes and `body_timeout` (408 after it).
pub async fn read_body(session: &mut Session, limit: u64, limits: &Limits) -> Result<Bytes, ApiError> {
    let within = limits.body_timeout;
    match pingora::time::fast_timeout::fast_timeout(within, super::read_body::read_body(session, limit)).await {
        Ok(r) => r,
        Err(_) => {
            crate::metrics::count_refusal("body_timeout");
            // Half a body is left unread: Pingora closes the connection after the answer.
            Err(ApiError::new(
                408,
                "invalid_request",
                format!("request body not received within {} s", within.as_secs_f64()),
            ))
        }
    }
}

/// A JSON body must be UTF-8 and nest at most `max_depth` arrays and objects (0 = any depth).
///
/// One pass: `str::from_utf8` (word-at-a-time on ASCII), then a depth count over the bytes
/// outside strings, jumping over string contents with `memchr2`. Malformed JSON is left to
/// the parser that follows, which names the error.
pub fn check_json(body: &[u8], max_depth: u32) -> Result<(), ApiError> {
    if std::str::from_utf8(body).is_err() {
        crate::metrics::count_refusal("utf8");
        return Err(ApiError::invalid_request("request body is not valid UTF-8"));
    }
    if max_depth == 0 || json_depth_within(body, max_depth) {
        return Ok(());
    }
    crate::metrics::count_refusal("json_depth");
    Err(ApiError::invalid_request(format!("request body nests JSON arrays and objects deeper than {max_depth} levels")))
}

/// Whether the arrays and objects of `body` nest at most `max` deep.
#[inline]
pub fn json_depth_within(body: &[u8], max: u32) -> bool {
    let mut depth = 0u32;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                i += 1;
                // Skip to the closing quote; an escape skips the byte after the backslash.
                loop {
                    let Some(rest) = body.get(i..) else { return true };
                    match memchr::memchr2(b'"', b'\\', rest) {
                        Some(j) if rest[j] == b'\\' => i += j + 2,
                        Some(j) => {
                            i += j + 1;
                            break;
                        }
                        None => return true, // unterminated: the parser says so
                    }
                }
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    true
}

/// Whether a route's body is JSON (everything but transcriptions).
pub fn json_route(route: &Route) -> bool {
    *route != Route::Inference(Endpoint::Transcriptions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_or_are_refused() {
        let ok = |p: &str| normalize_path(p).unwrap().into_owned();
        assert!(matches!(normalize_path("/v1/chat/completions").unwrap(), Cow::Borrowed(_)));
        assert!(matches!(normalize_path("/v1/models/openai/gpt-4.1").unwrap(), Cow::Borrowed(_)));
        assert_eq!(ok("//v1//chat/completions"), "/v1/chat/completions");
        assert_eq!(ok("/v1/chat/completions//"), "/v1/chat/completions/");
        assert_eq!(ok("//"), "/");
        assert_eq!(ok("/v1/models/a%2Fb"), "/v1/models/a%2Fb");
        for bad in [
            "/v1/./chat/completions",
            "/v1/../admin/accounts",
            "/v1/chat/completions/..",
            "/v1/%2e%2e/admin/accounts",
            "/v1/%2E/models",
            "/v1\\..\\admin",
        ] {
            assert_eq!(normalize_path(bad).unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn depth_counts_outside_strings_only() {
        assert!(json_depth_within(br#"{"a":[1,{"b":[]}]}"#, 4));
        assert!(!json_depth_within(br#"{"a":[1,{"b":[]}]}"#, 3));
        assert!(json_depth_within(br#"{"s":"[[[[[[{{{{\"[[[["}"#, 1));
        assert!(json_depth_within(br#"{"s":"\\"}"#, 1), "an escaped backslash ends before the quote");
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(!json_depth_within(deep.as_bytes(), 64));
        assert!(json_depth_within(deep.as_bytes(), 65));
        assert!(json_depth_within(b"\"unterminated \\", 1));
    }

    #[test]
    fn json_bodies_must_be_utf8() {
        assert!(check_json(b"{\"a\":\"\xff\"}", 64).is_err());
        assert!(check_json("{\"a\":\"é 漢字\"}".as_bytes(), 64).is_ok());
        assert_eq!(check_json(b"[[[]]]", 2).unwrap_err().status, 400);
    }

    #[test]
    fn json_types() {
        assert!(is_json_type(b"application/json"));
        assert!(is_json_type(b"Application/JSON"));
        assert!(is_json_type(b"application/merge-patch+json"));
        assert!(!is_json_type(b"text/plain"));
        assert!(!is_json_type(b"+json"));
    }
}
