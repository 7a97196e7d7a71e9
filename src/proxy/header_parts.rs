//! Editing a Pingora header as plain `http` parts.
//!
//! Pingora's `insert_header` parses the name, copies it, and keeps a second map of how each
//! name was spelled, in step with the first (it must never fall out of step: Pingora asserts it
//! when writing). Moved out into `http` parts, a header takes names made at compile time
//! (`HeaderName::from_static`) with no parse and no copy; moving the parts out and back copies
//! no header, and the spelling record is let go. Names are case-insensitive (RFC 9110 §5.1):
//! without the record, standard names go out in their usual capitals and others in lowercase.

use pingora::http::{RequestHeader, ResponseHeader};

pub fn edit_response<T>(resp: &mut ResponseHeader, edit: impl FnOnce(&mut http::response::Parts) -> T) -> T {
    let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
    edit_as_parts(resp, empty, edit)
}

pub fn edit_request<T>(req: &mut RequestHeader, edit: impl FnOnce(&mut http::request::Parts) -> T) -> T {
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    edit_as_parts(req, empty, edit)
}

/// `header` is back in place (edited) whatever `edit` returns.
fn edit_as_parts<H, P, T>(header: &mut H, empty: H, edit: impl FnOnce(&mut P) -> T) -> T
where
    H: Into<P>,
    P: Into<H>,
{
    let mut parts: P = std::mem::replace(header, empty).into();
    let out = edit(&mut parts);
    *header = parts.into();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_land_and_the_spelling_record_goes() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("X-Custom", "a").unwrap();
        assert!(resp.has_case());
        let n = edit_response(&mut resp, |p| {
            p.headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(3u64));
            p.headers.len()
        });
        assert_eq!(n, 2);
        assert!(!resp.has_case());
        assert_eq!(resp.status, 200);
        assert_eq!(resp.headers["x-custom"], "a");
        let mut wire = Vec::new();
        resp.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("x-custom: a\r\n") && wire.contains("Content-Length: 3\r\n"), "{wire}");

        let mut req = RequestHeader::build("GET", b"/a", None).unwrap();
        edit_request(&mut req, |p| p.method = http::Method::POST);
        assert_eq!(req.method, http::Method::POST);
        assert_eq!(req.uri.path(), "/a");
    }
}
