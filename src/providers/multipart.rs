//! Just enough multipart/form-data (RFC 7578) for audio transcriptions: find the parts, read
//! the small text fields (`model`), and splice a new value into one of them. The audio file
//! part is never copied except once, when the whole body is re-assembled around the splice.

use memchr::memmem;
use std::ops::Range;

/// The `boundary` parameter of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    if !parts.next()?.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"').to_string())
    })
    .filter(|b| !b.is_empty() && b.len() <= 70)
}

#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    /// The part's content, as a range of the body.
    pub value: Range<usize>,
}

#[derive(Debug, Default)]
pub struct Form {
    pub parts: Vec<Part>,
}

impl Form {
    pub fn parse(body: &[u8], boundary: &str) -> Result<Form, String> {
        let delim = format!("--{boundary}");
        let finder = memmem::Finder::new(delim.as_bytes());
        let mut form = Form::default();
        let mut pos = finder.find(body).ok_or("no boundary found")?;
        loop {
            pos += delim.len();
            let rest = body.get(pos..).ok_or("truncated")?;
            if rest.starts_with(b"--") {
                return Ok(form); // the closing delimiter
            }
            pos += if rest.starts_with(b"\r\n") { 2 } else if rest.starts_with(b"\n") { 1 } else { return Err("bad delimiter line".into()) };
            let head_end = memmem::find(&body[pos..], b"\r\n\r\n")
                .map(|i| (i, 4))
                .or_else(|| memmem::find(&body[pos..], b"\n\n").map(|i| (i, 2)))
                .ok_or("part without a header end")?;
            let headers = std::str::from_utf8(&body[pos..pos + head_end.0]).map_err(|_| "part headers are not UTF-8")?;
            let start = pos + head_end.0 + head_end.1;
            // The content ends at CRLF + the next delimiter.
            let next = finder.find(&body[start..]).ok_or("part without an end")? + start;
            let mut end = next;
            if body[..end].ends_with(b"\r\n") {
                end -= 2;
            } else if body[..end].ends_with(b"\n") {
                end -= 1;
            }
            let (name, filename) = disposition(headers).ok_or("part without a form-data name")?;
            form.parts.push(Part { name, filename, value: start..end });
            pos = next;
        }
    }

    pub fn field<'a>(&self, body: &'a [u8], name: &str) -> Option<&'a [u8]> {
        self.parts.iter().find(|p| p.name == name).and_then(|p| body.get(p.value.clone()))
    }

    pub fn text(&self, body: &[u8], name: &str) -> Option<String> {
        let v = self.field(body, name)?;
        std::str::from_utf8(v).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    }

    /// The body with the value of field `name` replaced (unchanged if there is no such field).
    pub fn replace(&self, body: &[u8], name: &str, value: &str) -> Vec<u8> {
        let Some(part) = self.parts.iter().find(|p| p.name == name) else { return body.to_vec() };
        let mut out = Vec::with_capacity(body.len() + value.len());
        out.extend_from_slice(&body[..part.value.start]);
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(&body[part.value.end..]);
        out
    }
}

/// `name` and `filename` from a part's Content-Disposition header.
fn disposition(headers: &str) -> Option<(String, Option<String>)> {
    let line = headers
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
    let param = |key: &str| {
        line.split(';').skip(1).find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim().eq_ignore_ascii_case(key).then(|| v.trim().trim_matches('"').to_string())
        })
    };
    Some((param("name")?, param("filename")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Vec<u8> {
        let mut b = b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ntollgate/whisper\r\n".to_vec();
        b.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n");
        b.extend_from_slice(b"\x00\x01\r\n--Xy\r\n\xff binary");
        b.extend_from_slice(b"\r\n--XyZ--\r\n");
        b
    }

    #[test]
    fn parses_fields_and_binary_files() {
        let b = body();
        assert_eq!(boundary("multipart/form-data; boundary=XyZ").as_deref(), Some("XyZ"));
        assert_eq!(boundary("multipart/form-data; boundary=\"XyZ\"").as_deref(), Some("XyZ"));
        assert_eq!(boundary("application/json"), None);
        let f = Form::parse(&b, "XyZ").unwrap();
        assert_eq!(f.text(&b, "model").as_deref(), Some("tollgate/whisper"));
        assert_eq!(f.field(&b, "file").unwrap(), b"\x00\x01\r\n--Xy\r\n\xff binary");
        assert_eq!(f.parts[1].filename.as_deref(), Some("a.wav"));
    }

    #[test]
    fn replaces_one_field() {
        let b = body();
        let f = Form::parse(&b, "XyZ").unwrap();
        let out = f.replace(&b, "model", "whisper-1");
        let g = Form::parse(&out, "XyZ").unwrap();
        assert_eq!(g.text(&out, "model").as_deref(), Some("whisper-1"));
        assert_eq!(g.field(&out, "file"), f.field(&b, "file"));
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for bad in [&b""[..], b"--XyZ", b"--XyZ\r\nno header end", b"--XyZ\r\n\r\nno end", b"garbage"] {
            let _ = Form::parse(bad, "XyZ");
        }
        assert!(Form::parse(b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XyZ--", "XyZ").is_err());
    }
}
