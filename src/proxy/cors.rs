//! CORS for browser clients, per listener (`[[server.cors]]`).
//!
//! The listener a request came in on (`session.server_addr()`) picks the policy: the first
//! whose `listeners` names that address (an unspecified IP matches by port), else the policy
//! without `listeners`, else none. With a policy and an allowed `Origin`:
//!
//! - a preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered 204 here, before
//!   routing and without credentials, with the allowed methods, headers and max age;
//! - every other response, errors and streams included, carries
//!   `Access-Control-Allow-Origin` (via `local::stamp_parts`), `Vary: Origin` and the gateway's
//!   own headers in `Access-Control-Expose-Headers`.
//!
//! A disallowed origin, or a listener without a policy, gets no CORS header at all (the
//! browser then refuses to hand the answer to the page). A request without `Origin` costs one
//! header lookup, and nothing when no policy is configured.

use super::ctx::RequestCtx;
use crate::api::Reply;
use crate::config::snapshot::CorsPolicy;
use crate::config::Config;
use http::HeaderValue;
use pingora::proxy::Session;
use std::net::SocketAddr;
use std::sync::Arc;

const METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
const EXPOSE: &str = "x-request-id, x-generation-id, x-ratelimit-limit, x-ratelimit-remaining, \
                      x-ratelimit-reset, retry-after, x-tollgate-provider";

/// An allowed cross-origin request: what its responses carry.
pub struct Allowed {
    origin: HeaderValue,
    policy: Arc<CorsPolicy>,
}

/// The policy of the listener at `local`.
pub fn policy_for(config: &Config, local: Option<SocketAddr>) -> Option<&Arc<CorsPolicy>> {
    let policies = &config.server.cors;
    if let Some(local) = local {
        let named = policies.iter().find(|p| {
            p.listeners
                .iter()
                .any(|(ip, port)| *port == local.port() && (ip.is_unspecified() || *ip == local.ip()))
        });
        if named.is_some() {
            return named;
        }
    }
    policies.iter().find(|p| p.listeners.is_empty())
}

fn origin_allowed(policy: &CorsPolicy, origin: &[u8]) -> bool {
    if policy.any_origin {
        return true;
    }
    let origin = origin.strip_suffix(b"/").unwrap_or(origin);
    policy.origins.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(origin))
}

/// Check the request's origin. `Some` is a preflight's answer.
pub fn begin(session: &Session, ctx: &mut RequestCtx) -> Option<Reply> {
    if ctx.config.server.cors.is_empty() {
        return None;
    }
    let headers = &session.req_header().headers;
    let origin = headers.get(http::header::ORIGIN)?;
    let local = session.server_addr().and_then(|a| a.as_inet()).copied();
    let policy = policy_for(&ctx.config, local)?;
    if !origin_allowed(policy, origin.as_bytes()) {
        return None;
    }
    let policy = policy.clone();
    let preflight = session.req_header().method == http::Method::OPTIONS
        && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD);
    let reply = preflight.then(|| {
        let mut r = Reply {
            status: 204,
            body: bytes::Bytes::new(),
            content_type: "text/plain",
            headers: Vec::with_capacity(3),
            error: None,
        };
        r.headers.push(("access-control-allow-methods", METHODS.to_string()));
        let asked = headers
            .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty());
        match (&policy.allowed_headers, asked) {
            (Some(list), _) => r.headers.push(("access-control-allow-headers", list.clone())),
            (None, Some(asked)) => r.headers.push(("access-control-allow-headers", asked.to_string())),
            (None, None) => {}
        }
        r.headers.push(("access-control-max-age", policy.max_age_secs.to_string()));
        r
    });
    ctx.cors = Some(Allowed { origin: origin.clone(), policy });
    reply
}

/// The CORS headers of an allowed cross-origin request's response.
pub fn stamp(headers: &mut http::HeaderMap, ctx: &RequestCtx) {
    use http::header::*;
    let Some(a) = ctx.cors.as_ref() else { return };
    if a.policy.any_origin && !a.policy.allow_credentials {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    } else {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, a.origin.clone());
        headers.append(VARY, HeaderValue::from_static("Origin"));
    }
    if a.policy.allow_credentials {
        headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(listeners: Vec<(&str, u16)>, origins: &[&str]) -> Arc<CorsPolicy> {
        Arc::new(CorsPolicy {
            listeners: listeners.into_iter().map(|(ip, p)| (ip.parse().unwrap(), p)).collect(),
            any_origin: origins.contains(&"*"),
            origins: origins.iter().filter(|o| **o != "*").map(|o| o.to_string()).collect(),
            allowed_headers: None,
            max_age_secs: 600,
            allow_credentials: false,
        })
    }

    #[test]
    fn origins_match_case_insensitively_and_without_a_trailing_slash() {
        let p = policy(vec![], &["https://app.example.com"]);
        assert!(origin_allowed(&p, b"https://app.example.com"));
        assert!(origin_allowed(&p, b"HTTPS://App.Example.com/"));
        assert!(!origin_allowed(&p, b"https://evil.example.com"));
        assert!(!origin_allowed(&p, b"https://app.example.com.evil.net"));
        assert!(origin_allowed(&policy(vec![], &["*"]), b"https://anything"));
    }
}
