//! The contract's one error shape: `{"error": {"message", "type", "code", "param"}}`.
//!
//! Every failure path, ours or Pingora's, answers through [`ApiError`], so the OpenAI SDKs map
//! our errors onto their exception types (they key on the status) and show our message.

use bytes::Bytes;
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), param: None, retry_after: None }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", message)
    }
    pub fn invalid_api_key(message: impl Into<String>) -> Self {
        Self::new(401, "invalid_api_key", message)
    }
    pub fn insufficient_balance(message: impl Into<String>) -> Self {
        Self::new(402, "insufficient_balance", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }
    pub fn model_not_found(slug: &str) -> Self {
        Self::new(404, "model_not_found", format!("model '{slug}' does not exist or is not available"))
            .with_param("model")
    }
    pub fn too_large(limit: u64) -> Self {
        Self::new(413, "request_too_large", format!("request body is larger than {limit} bytes"))
    }
    pub fn upstream_error(message: impl Into<String>) -> Self {
        Self::new(502, "upstream_error", message)
    }
    pub fn provider_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "provider_unavailable", message)
    }
    pub fn upstream_timeout(message: impl Into<String>) -> Self {
        Self::new(504, "upstream_timeout", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal_error", message)
    }
    /// Account and admin routes: a missing, bad or expired login token or admin token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "unauthorized", message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(409, code, message)
    }
    /// 429 `rate_limit_exceeded` with `Retry-After`.
    pub fn rate_limited(message: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(429, "rate_limit_exceeded", message);
        e.retry_after = Some(retry_after_secs.max(1));
        e
    }
    /// 503 for a feature switched off by configuration (login without a JWT secret, BYOK
    /// without a master key).
    pub fn disabled(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(503, code, message)
    }

    /// The OpenAI `type` that goes with a status, which some clients switch on.
    pub fn error_type(&self) -> &'static str {
        match self.status {
            400 | 404 | 405 | 413 | 415 => "invalid_request_error",
            401 | 403 => "authentication_error",
            402 => "insufficient_quota",
            429 => "rate_limit_error",
            409 => "invalid_request_error",
            // A feature switched off here is not the upstream's fault.
            503 if matches!(self.code, "auth_disabled" | "byok_disabled" | "upgrading") => "server_error",
            502..=504 => "upstream_error",
            _ if self.status >= 500 => "server_error",
            _ => "invalid_request_error",
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.error_type(),
            "code": self.code,
            "param": self.param,
        }})
    }

    pub fn body(&self) -> Bytes {
        Bytes::from(self.to_json().to_string())
    }

    /// The body as one SSE event, for an error after a stream has started.
    pub fn sse_event(&self) -> Bytes {
        Bytes::from(format!("data: {}\n\n", self.to_json()))
    }
}

/// Wrap a provider's own error body in the contract's shape, keeping its message.
pub fn from_provider(status: u16, body: &[u8]) -> ApiError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| {
            let e = v.get("error")?;
            e.get("message").and_then(|m| m.as_str()).map(str::to_string)
                .or_else(|| e.as_str().map(str::to_string))
        })
        .or_else(|| parsed.as_ref().and_then(|v| v.get("message")?.as_str().map(str::to_string)))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).trim().to_string();
            if text.is_empty() { format!("provider answered {status}") } else { text }
        });
    let code = match status {
        400 => "invalid_request",
        401 | 403 => "upstream_auth_error",
        404 => "model_not_found",
        413 => "request_too_large",
        429 => "rate_limit_exceeded",
        _ if status >= 500 => "upstream_error",
        _ => "upstream_error",
    };
    let mut e = ApiError::new(status, code, message);
    if let Some(p) = parsed.as_ref().and_then(|v| v.get("error")?.get("param")?.as_str().map(str::to_string)) {
        e.param = Some(p);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_the_contracts() {
        let v = ApiError::insufficient_balance("no money").to_json();
        assert_eq!(v["error"]["code"], "insufficient_balance");
        assert_eq!(v["error"]["message"], "no money");
        assert!(v["error"]["param"].is_null());
        assert_eq!(v["error"]["type"], "insufficient_quota");
    }

    #[test]
    fn provider_message_is_kept() {
        let e = from_provider(400, br#"{"error":{"message":"context too long","type":"invalid_request_error","param":"messages"}}"#);
        assert_eq!((e.status, e.code, e.message.as_str()), (400, "invalid_request", "context too long"));
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = from_provider(422, b"plain text failure");
        assert_eq!(e.message, "plain text failure");
    }
}
