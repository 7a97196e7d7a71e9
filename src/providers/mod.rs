//! Provider wire formats, one file per format, plus the span scanner they share.
//!
//! Everything here is pure: bytes in, bytes out. The proxy decides when to call it.

pub mod anthropic;
pub mod completions;
pub mod gemini;
pub mod gemini_embed;
pub mod json_scan;
pub mod multipart;
pub mod openai;

use crate::config::ProviderKind;

/// The header that carries `key` to a provider of `kind`, marked sensitive (kept out of
/// debug output and HPACK tables).
pub fn credential_header(kind: ProviderKind, key: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    let (name, value) = match kind {
        ProviderKind::OpenAi | ProviderKind::Mock => (http::header::AUTHORIZATION, format!("Bearer {key}")),
        ProviderKind::Anthropic => (http::HeaderName::from_static("x-api-key"), key.to_string()),
        ProviderKind::Gemini => (http::HeaderName::from_static("x-goog-api-key"), key.to_string()),
    };
    let mut value = http::HeaderValue::try_from(value).map_err(|_| "the key is not a valid header value".to_string())?;
    value.set_sensitive(true);
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_headers_per_wire_format() {
        let (name, value) = credential_header(ProviderKind::OpenAi, "sk-up").unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("authorization", "Bearer sk-up"));
        assert!(value.is_sensitive());
        let (name, value) = credential_header(ProviderKind::Anthropic, "sk-ant").unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("x-api-key", "sk-ant"));
        let (name, _) = credential_header(ProviderKind::Gemini, "g").unwrap();
        assert_eq!(name.as_str(), "x-goog-api-key");
        // A key with a line break (an env file's trailing newline) is refused, not sent.
        assert!(credential_header(ProviderKind::OpenAi, "sk-up\n").is_err());
    }
}
