//! The syntax of a request's head, checked before Pingora parses it, so that a malformed
//! request line or header is refused in the contract's JSON shape. Pingora itself answers those
//! with an empty 400 (no body, no `error` object), which no client library can explain.
//!
//! The check is Pingora's own parse (`httparse`), with Pingora's one leniency: a request line
//! whose target holds characters `httparse` refuses (a space, `"`, `<`, `>`, controls, bytes
//! above ASCII) is accepted when the target, percent-encoded, parses; Pingora then encodes it
//! the same way. Anything this check lets through, Pingora accepts: it never turns a request
//! Pingora would serve into a refusal.

use crate::api::error::ApiError;

/// Header lines parsed at most (`server.limits.max_headers` refuses more, earlier, with 431).
const MAX_HEADERS: usize = 256;

/// `None` when `buf` starts with a well-formed request head (the scanner has already seen its
/// end); the 400 to answer otherwise.
pub fn check(buf: &[u8]) -> Option<ApiError> {
    let e = match parse(buf) {
        Ok(()) => return None,
        Err(e) => e,
    };
    if matches!(e, httparse::Error::Token | httparse::Error::Version) {
        if let Some(escaped) = escape_target(buf) {
            if parse(&escaped).is_ok() {
                return None;
            }
        }
    }
    crate::metrics::count_refusal("malformed");
    let what = match e {
        httparse::Error::HeaderName => "a header name is not a valid token",
        httparse::Error::HeaderValue => "a header value holds a control character",
        httparse::Error::NewLine | httparse::Error::Status => "a line of the request head is malformed",
        httparse::Error::Token => "the request line is malformed (expected: METHOD target HTTP/1.1)",
        httparse::Error::Version => "the request line's HTTP version is not HTTP/1.0 or HTTP/1.1",
        httparse::Error::TooManyHeaders => "the request has too many header lines",
    };
    Some(ApiError::invalid_request(format!("malformed request: {what}")))
}

fn parse(buf: &[u8]) -> Result<(), httparse::Error> {
    // Left uninitialised: this runs for every request, and 256 zeroed headers are 8 KiB.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    // A partial parse cannot happen: the head's end was found. Treat it as malformed anyway.
    match req.parse_with_uninit_headers(buf, &mut headers)? {
        httparse::Status::Complete(_) => Ok(()),
        httparse::Status::Partial => Err(httparse::Error::NewLine),
    }
}

/// The head with its request target percent-encoded the way Pingora rescues one: the line must
/// read `<word chars> SP <target> SP HTTP/<digit>…` (the last " HTTP/<digit>" on the line ends
/// the target). None when the line has no such shape or nothing needed encoding.
fn escape_target(buf: &[u8]) -> Option<Vec<u8>> {
    let line_end = memchr::memchr(b'\n', buf).unwrap_or(buf.len());
    let line = &buf[..line_end];
    let method_end = line.iter().position(|&b| b == b' ')?;
    if method_end == 0 || !line[..method_end].iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_') {
        return None;
    }
    let target_start = method_end + 1;
    let version_at = memchr::memmem::rfind_iter(&line[target_start..], b" HTTP/")
        .map(|i| target_start + i)
        .find(|&i| line.get(i + 6).is_some_and(u8::is_ascii_digit))?;
    if version_at <= target_start {
        return None;
    }
    let target = &line[target_start..version_at];
    let needs = |b: u8| !(0x20..0x7f).contains(&b) || matches!(b, b' ' | b'"' | b'<' | b'>');
    if !target.iter().any(|&b| needs(b)) {
        return None;
    }
    let mut out = Vec::with_capacity(buf.len() + 32);
    out.extend_from_slice(&buf[..target_start]);
    for &b in target {
        if needs(b) {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&buf[version_at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(raw: &str) -> String {
        match check(raw.as_bytes()) {
            Some(e) => {
                assert_eq!((e.status, e.code), (400, "invalid_request"), "{raw:?}");
                e.message
            }
            None => panic!("{raw:?} was accepted"),
        }
    }

    #[test]
    fn well_formed_heads_pass() {
        for raw in [
            "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}",
            "GET /v1/models?x=%ZZ HTTP/1.1\r\nHost: x\r\nX-Empty:\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            "\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(check(raw.as_bytes()).is_none(), "{raw:?}");
        }
    }

    #[test]
    fn targets_pingora_would_encode_pass() {
        for raw in [
            "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /q?x=\"y\"&z=<1> HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /caf\u{e9} HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(check(raw.as_bytes()).is_none(), "{raw:?}");
        }
        let escaped = escape_target(b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n").expect("escaped");
        assert_eq!(escaped, b"GET /a%20b HTTP/1.1\r\nHost: x\r\n\r\n");
    }

    #[test]
    fn malformed_heads_are_refused_with_a_reason() {
        assert!(refused("GARBAGE\r\n\r\n").contains("request line"));
        assert!(refused("GET\r\n\r\n").contains("request line"));
        assert!(refused("G@T / HTTP/1.1\r\nHost: x\r\n\r\n").contains("request line"));
        assert!(refused("GET / HTTP/9.9\r\nHost: x\r\n\r\n").contains("version"));
        assert!(refused("GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n").contains("malformed request"));
        assert!(refused("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n").contains("header name"));
        assert!(refused("GET / HTTP/1.1\r\n: x\r\n\r\n").contains("header name"));
        assert!(refused("GET / HTTP/1.1\r\nHost: x\u{1}y\r\n\r\n").contains("header value"));
    }
}
