//! The request header the provider receives.
//!
//! The client's credentials must never reach a provider: `Authorization`, `x-api-key` and
//! any header whose value carries our key prefix are removed before the provider's own key
//! is injected. Hop-by-hop and framing headers are rebuilt for the rewritten body.

use super::ctx::Inference;
use crate::config::ProviderKind;
use pingora::http::RequestHeader;
use pingora::Result;

/// Headers never forwarded: credentials, hop-by-hop, framing we recompute, and
/// `accept-encoding` (a compressed body could not be metered).
const DROPPED: &[&str] = &[
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "api-key",
    "cookie",
    "proxy-authorization",
    "accept-encoding",
    "expect",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
    "content-length",
    "host",
    "x-platform",
    "anthropic-version",
];

pub fn prepare(req: &mut RequestHeader, inf: &Inference, key_prefix: &str) -> Result<()> {
    let up = &inf.provider.upstream;
    let mut path = String::with_capacity(up.path_prefix.len() + inf.path.len());
    path.push_str(&up.path_prefix);
    path.push_str(&inf.path);
    let uri = http::Uri::try_from(path)
        .map_err(|e| pingora::Error::because(pingora::ErrorType::InternalError, "bad upstream path", e))?;
    // The account's own key (BYOK) replaces the gateway's, whose header was built at load.
    let credential = match inf.byok_key.as_deref() {
        Some(key) => Some(
            crate::providers::credential_header(inf.provider.kind, key)
                .map_err(|e| pingora::Error::explain(pingora::ErrorType::InternalError, e))?,
        ),
        None => inf.provider.credential_header.clone(),
    };

    let content_type = match inf.content_type.as_deref() {
        None => http::HeaderValue::from_static("application/json"),
        Some(t) => http::HeaderValue::from_str(t)
            .map_err(|e| pingora::Error::because(pingora::ErrorType::InternalError, "content type", e))?,
    };
    // The provider sees standard names in their usual capitals and others in lowercase (see
    // `header_parts`).
    super::header_parts::edit_request(req, |parts| {
        let headers = &mut parts.headers;
        // One pass over what the client sent (a handful of headers) rather than a lookup per
        // dropped name: the dropped ones, and anything else that carries one of our keys (a
        // custom auth header, a forwarded copy).
        let mut doomed: Vec<http::HeaderName> = Vec::new();
        for (name, value) in headers.iter() {
            let drop = DROPPED.contains(&name.as_str()) || contains(value.as_bytes(), key_prefix.as_bytes());
            if drop && !doomed.contains(name) {
                doomed.push(name.clone());
            }
        }
        for name in &doomed {
            headers.remove(name);
        }
        headers.reserve(5);
        headers.insert(http::header::HOST, up.host_header.clone());
        headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(inf.upstream_body_len));
        headers.insert(http::header::CONTENT_TYPE, content_type);
        if inf.provider.kind == ProviderKind::Anthropic {
            headers.insert(
                http::HeaderName::from_static("anthropic-version"),
                http::HeaderValue::from_static(crate::providers::anthropic::API_VERSION),
            );
        }
        if let Some((name, value)) = credential {
            headers.insert(name, value);
        }
        parts.uri = uri;
        parts.method = http::Method::POST;
    });
    Ok(())
}

/// Whether `needle` occurs in `haystack`. Header values are short and the needle (the key
/// prefix) is a few bytes: looking for its first byte and comparing beats building a
/// `memmem` searcher per call.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, _)) = needle.split_first() else { return false };
    memchr::memchr_iter(first, haystack).any(|i| haystack[i..].starts_with(needle))
}

#[cfg(test)]
mod tests {
    use super::contains;

    #[test]
    fn finds_the_key_prefix_anywhere_in_a_value() {
        assert!(contains(b"Bearer sk-tg-abc", b"sk-tg-"));
        assert!(contains(b"sk-tg-", b"sk-tg-"));
        assert!(contains(b"ssk-sk-tg-x", b"sk-tg-"), "a partial match before the real one");
        assert!(!contains(b"Bearer sk-t", b"sk-tg-"), "cut short at the end");
        assert!(!contains(b"sk-other", b"sk-tg-"));
        assert!(!contains(b"", b"sk-tg-"));
        assert!(!contains(b"anything", b""), "an empty prefix matches nothing");
    }
}
