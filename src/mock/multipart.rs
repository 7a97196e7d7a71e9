//! A strict `multipart/form-data` reader (RFC 7578 on RFC 2046) for audio transcriptions.
//!
//! Limits and rules:
//! - the boundary comes from the `Content-Type` `boundary` parameter (quoted or not), 1 to
//!   [`MAX_BOUNDARY`] characters of RFC 2046's boundary alphabet;
//! - delimiters are `CRLF--boundary` (the first may also open the body); a delimiter line may
//!   end in spaces/tabs before its CRLF, and `--` after the last one closes the form. A
//!   `--boundary` inside content that is not at a line start, or is followed by anything else,
//!   is content: binary files can hold any bytes, CRLFs included. Bare-LF line ends are not
//!   delimiters (a truncated or LF-only body is a 400);
//! - the preamble before the first delimiter and the epilogue after the last are ignored;
//! - at most [`MAX_PARTS`] parts, each with at most [`MAX_HEADER_BYTES`] of headers; every part
//!   needs `Content-Disposition: form-data; name=...` (quoted, with `\"` escapes, or a token;
//!   `filename*=UTF-8''...` is decoded too). Header folding is not supported;
//! - part contents are zero-copy slices of the body; the body itself is capped by the server's
//!   request limit.

use bytes::Bytes;
use memchr::memmem;

/// RFC 2046's longest boundary.
pub const MAX_BOUNDARY: usize = 70;
/// Most parts one form may have.
pub const MAX_PARTS: usize = 256;
/// Most bytes of headers one part may have.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Bytes,
}

impl Part {
    pub fn is_file(&self) -> bool {
        self.filename.is_some()
    }

    /// The content as text (lossy), for fields like `model`.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// The boundary of a `multipart/form-data` content type, or why there is none.
pub fn boundary(content_type: &str) -> Result<String, String> {
    let mut params = split_params(content_type).into_iter();
    let media = params.next().unwrap_or_default();
    if !media.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(format!(
            "Invalid Content-Type header ({}), expected multipart/form-data.",
            content_type.trim()
        ));
    }
    let value = params
        .find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| unquote(v.trim()))
        })
        .ok_or("multipart/form-data without a boundary parameter")?;
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "'()+_,-./:=? ".contains(c);
    if value.is_empty()
        || value.len() > MAX_BOUNDARY
        || !value.chars().all(ok_char)
        || value.ends_with(' ')
    {
        return Err(format!("invalid multipart boundary {value:?}"));
    }
    Ok(value)
}

/// `;`-separated parameters, with `;` inside quoted strings kept.
fn split_params(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// A parameter value: a quoted string (backslash escapes undone) or a token.
fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// RFC 5987 `UTF-8''percent%20encoded` (other charsets are taken as UTF-8 too).
fn decode_ext_value(v: &str) -> Option<String> {
    let (_charset, rest) = v.split_once('\'')?;
    let (_lang, encoded) = rest.split_once('\'')?;
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Every part of `body`, in order.
pub fn parse(body: &Bytes, boundary: &str) -> Result<Vec<Part>, String> {
    let dash = format!("--{boundary}");
    let delimiter = format!("\r\n{dash}");
    let finder = memmem::Finder::new(delimiter.as_bytes());
    // Where the next delimiter's `--boundary` starts, searching from `from`: only matches that
    // end a line with padding + CRLF or `--` count.
    let next_delimiter = |from: usize| -> Option<usize> {
        let mut at = from;
        while let Some(i) = finder.find(&body[at..]) {
            let dash_at = at + i + 2;
            if delimiter_end(body, dash_at + dash.len()).is_some() {
                return Some(dash_at);
            }
            at += i + 1;
        }
        None
    };
    let mut pos = if body.starts_with(dash.as_bytes()) && delimiter_end(body, dash.len()).is_some()
    {
        0
    } else {
        next_delimiter(0).ok_or("no multipart boundary found in the body")?
    };
    let mut parts = Vec::new();
    loop {
        let after = pos + dash.len();
        let Some((closing, start)) = delimiter_end(body, after) else {
            return Err("malformed multipart delimiter line".into());
        };
        if closing {
            return Ok(parts);
        }
        if parts.len() == MAX_PARTS {
            return Err(format!("more than {MAX_PARTS} multipart parts"));
        }
        let rest = &body[start..];
        let (headers, content_start) = if rest.starts_with(b"\r\n") {
            ("", start + 2)
        } else {
            let window = &rest[..rest.len().min(MAX_HEADER_BYTES + 4)];
            let end = memmem::find(window, b"\r\n\r\n").ok_or_else(|| {
                format!("multipart part headers not ended by a blank line within {MAX_HEADER_BYTES} bytes")
            })?;
            let headers = std::str::from_utf8(&rest[..end])
                .map_err(|_| "multipart part headers are not UTF-8")?;
            (headers, start + end + 4)
        };
        // `end` is where `--boundary` starts, 2 bytes after the content's end (>= start).
        let end = next_delimiter(content_start)
            .ok_or("multipart body ends before its closing boundary")?;
        let mut part = part_from_headers(headers)?;
        // The CRLF before the delimiter belongs to the delimiter.
        part.data = body.slice(content_start..end - 2);
        parts.push(part);
        pos = end;
    }
}

/// After `--boundary` at `at`: `Some((true, _))` for the closing `--`, `Some((false, start))`
/// for transport padding + CRLF with the next line at `start`, `None` for anything else.
fn delimiter_end(body: &[u8], at: usize) -> Option<(bool, usize)> {
    let rest = body.get(at..)?;
    if rest.starts_with(b"--") {
        return Some((true, at + 2));
    }
    let pad = rest.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    rest[pad..]
        .starts_with(b"\r\n")
        .then_some((false, at + pad + 2))
}

fn part_from_headers(headers: &str) -> Result<Part, String> {
    let mut name = None;
    let mut filename = None;
    let mut filename_ext = None;
    let mut content_type = None;
    for line in headers.split("\r\n").filter(|l| !l.is_empty()) {
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed multipart part header {line:?}"))?;
        let key = key.trim();
        if key.eq_ignore_ascii_case("content-disposition") {
            let mut params = split_params(value).into_iter();
            let kind = params.next().unwrap_or_default().trim();
            if !kind.eq_ignore_ascii_case("form-data") {
                return Err(format!("multipart part is {kind:?}, not form-data"));
            }
            for p in params {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    "name" => name = Some(unquote(v.trim())),
                    "filename" => filename = Some(unquote(v.trim())),
                    "filename*" => filename_ext = decode_ext_value(&unquote(v.trim())),
                    _ => {}
                }
            }
        } else if key.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim().to_string());
        }
    }
    let name = name.ok_or("multipart part without a Content-Disposition name")?;
    Ok(Part {
        name,
        filename: filename_ext.or(filename),
        content_type,
        data: Bytes::new(),
    })
}

/// What the request log keeps of a multipart body: `{"fields": {name: text}, "files":
/// [{"name", "filename", "content_type", "bytes"}]}` (text fields cut to 1 KiB), or
/// `{"error": ...}` when it does not parse.
pub fn log_summary(content_type: &str, body: &Bytes) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let parts = boundary(content_type).and_then(|b| parse(body, &b));
    let parts = match parts {
        Ok(parts) => parts,
        Err(e) => return json!({ "error": e }),
    };
    let mut fields = Map::new();
    let mut files = Vec::new();
    for p in parts {
        if p.is_file() {
            files.push(json!({
                "name": p.name,
                "filename": p.filename,
                "content_type": p.content_type,
                "bytes": p.data.len(),
            }));
        } else {
            let mut text = p.text();
            if text.len() > 1024 {
                let mut cut = 1024;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            fields.insert(p.name, Value::String(text));
        }
    }
    json!({ "fields": fields, "files": files })
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "----mockBoundary7MA4YWxkTrZu0gW";

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Bytes {
        let mut out = b"preamble to ignore\r\n".to_vec();
        for (name, filename, data) in parts {
            out.extend_from_slice(format!("--{B}\r\n").as_bytes());
            match filename {
                Some(f) => out.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                         Content-Type: audio/wav\r\n\r\n"
                    )
                    .as_bytes(),
                ),
                None => out.extend_from_slice(
                    format!("content-disposition: form-data; name={name}\r\n\r\n").as_bytes(),
                ),
            }
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{B}--\r\nepilogue").as_bytes());
        out.into()
    }

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").unwrap(),
            "abc"
        );
        assert_eq!(
            boundary("Multipart/Form-Data;charset=utf-8; BOUNDARY=\"a b;c\"").unwrap_err(),
            "invalid multipart boundary \"a b;c\""
        );
        assert_eq!(
            boundary("multipart/form-data; boundary=\"x'y(z)\"").unwrap(),
            "x'y(z)"
        );
        assert!(boundary("application/json").is_err());
        assert!(boundary("multipart/form-data").is_err());
        assert!(boundary("multipart/form-data; boundary=").is_err());
        assert!(boundary(&format!("multipart/form-data; boundary={}", "a".repeat(71))).is_err());
    }

    #[test]
    fn binary_file_with_crlf_and_near_boundaries() {
        // Every byte value, CRLFs, a blank line, and boundary look-alikes that are not
        // delimiters (not at a line start, or followed by other bytes).
        let mut audio: Vec<u8> = (0..=255u8).collect();
        audio.extend_from_slice(b"\r\n\r\n");
        audio.extend_from_slice(format!("x--{B}\r\n").as_bytes());
        audio.extend_from_slice(format!("\r\n--{B}X\r\n").as_bytes());
        audio.extend_from_slice(format!("\r\n--{B}-").as_bytes());
        audio.extend_from_slice(b"\r\n");
        let body = form(&[
            ("model", None, b"whisper-1"),
            ("file", Some("a.wav"), &audio),
            ("language", None, b""),
        ]);
        let parts = parse(&body, B).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].name, "model");
        assert_eq!(parts[0].text(), "whisper-1");
        assert!(!parts[0].is_file());
        assert_eq!(parts[1].name, "file");
        assert_eq!(parts[1].filename.as_deref(), Some("a.wav"));
        assert_eq!(parts[1].content_type.as_deref(), Some("audio/wav"));
        assert_eq!(&parts[1].data[..], &audio[..]);
        assert_eq!(parts[2].data.len(), 0);
        let log = log_summary(&format!("multipart/form-data; boundary={B}"), &body);
        assert_eq!(log["fields"]["model"], "whisper-1");
        assert_eq!(log["files"][0]["bytes"], audio.len());
        assert_eq!(log["files"][0]["filename"], "a.wav");
    }

    #[test]
    fn body_starting_with_the_boundary_and_padding() {
        let body = Bytes::from(format!(
            "--{B} \t\r\nContent-Disposition: form-data; name=\"q\\\"x\"; filename*=UTF-8''%C3%A9t%C3%A9.mp3; filename=\"plain.mp3\"\r\n\r\nA\r\n--{B}--"
        ));
        let parts = parse(&body, B).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].name, "q\"x");
        assert_eq!(parts[0].filename.as_deref(), Some("été.mp3"));
        assert_eq!(&parts[0].data[..], b"A");
        // A part with no headers at all has no name.
        let body = Bytes::from(format!("--{B}\r\n\r\nA\r\n--{B}--"));
        assert!(parse(&body, B).is_err());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let ok = form(&[("model", None, b"m")]);
        assert!(parse(&ok, B).is_ok());
        // Truncated before the closing delimiter.
        assert!(parse(&ok.slice(..ok.len() - 20), B).is_err());
        // Wrong boundary.
        assert!(parse(&ok, "other").is_err());
        // LF-only line ends are not delimiters.
        let lf = Bytes::from(format!(
            "--{B}\nContent-Disposition: form-data; name=\"a\"\n\nx\n--{B}--\n"
        ));
        assert!(parse(&lf, B).is_err());
        // Not form-data.
        let att = Bytes::from(format!(
            "--{B}\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx\r\n--{B}--"
        ));
        assert!(parse(&att, B).is_err());
        // Header block without its blank line.
        let big = Bytes::from(format!(
            "--{B}\r\nContent-Disposition: form-data; name=\"a\"\r\nX-Pad: {}\r\n",
            "p".repeat(MAX_HEADER_BYTES)
        ));
        assert!(parse(&big, B).is_err());
        // Too many parts.
        let many: Vec<(&str, Option<&str>, &[u8])> =
            (0..=MAX_PARTS).map(|_| ("f", None, &b"1"[..])).collect();
        assert!(parse(&form(&many), B).unwrap_err().contains("more than"));
        let log = log_summary("text/plain", &ok);
        assert!(log["error"].is_string());
    }
}
