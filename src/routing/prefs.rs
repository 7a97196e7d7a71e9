//! The request's own routing options, OpenRouter style: `models: [...]` (fallback models tried
//! in order) and `provider: {order, only, ignore, allow_fallbacks, sort}`.
//!
//! Both are removed from the body before it goes upstream (providers do not know them). The
//! scan is a byte-level walk of the top-level members, and only happens when the body mentions
//! `"models"` or `"provider"` at all, so ordinary requests pay one `memmem` each.

use memchr::memmem::Finder;
use std::sync::LazyLock;
use crate::api::error::ApiError;
use crate::providers::json_scan::{self, ObjectScanner};
use serde::Deserialize;

/// `provider` preferences.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderPrefs {
    /// Providers to try first, in this order.
    #[serde(default)]
    pub order: Option<Vec<String>>,
    /// Use only these providers.
    #[serde(default)]
    pub only: Option<Vec<String>>,
    /// Never use these providers.
    #[serde(default)]
    pub ignore: Option<Vec<String>>,
    /// false: only the providers in `order` (or, without `order`, the best-priority routes); no other
    /// route of the model. Model fallbacks still apply.
    #[serde(default)]
    pub allow_fallbacks: Option<bool>,
    /// Order routes by price or by measured latency instead of priority and weight.
    #[serde(default)]
    pub sort: Option<Sort>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sort {
    Price,
    Latency,
}

impl ProviderPrefs {
    pub fn allows(&self, provider: &str) -> bool {
        let listed = |l: &Option<Vec<String>>| l.as_ref().map(|l| l.iter().any(|p| p == provider));
        listed(&self.only).unwrap_or(true) && !listed(&self.ignore).unwrap_or(false)
    }
}

/// What the request asked of routing besides `model`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingOpts {
    pub models: Vec<String>,
    pub provider: Option<ProviderPrefs>,
}

/// Reads and removes `models` and `provider` from a JSON request body. Returns the body to use
/// from now on (`None`: unchanged) and the options. A body that is not a JSON object is left for
/// the endpoint's parser to refuse. When `model` is absent and `models` is not, the first of
/// `models` becomes `model`.
pub fn extract(body: &[u8]) -> Result<(Option<Vec<u8>>, RoutingOpts), ApiError> {
    // Built once: a `memmem::find` call builds its searcher every time, which costs more than
    // searching a small body.
    static MODELS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"models\""));
    static PROVIDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"provider\""));
    if MODELS.find(body).is_none() && PROVIDER.find(body).is_none() {
        return Ok((None, RoutingOpts::default()));
    }
    let Ok(mut scan) = ObjectScanner::new(body) else { return Ok((None, RoutingOpts::default())) };
    let mut kept = Vec::new();
    let mut removed = false;
    let mut has_model = false;
    let mut opts = RoutingOpts::default();
    loop {
        let member = match scan.next_member() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(_) => return Ok((None, RoutingOpts::default())),
        };
        if member.key_is(body, "models") {
            removed = true;
            let v = member.value(body);
            if v != b"null" {
                opts.models = serde_json::from_slice::<Vec<String>>(v).map_err(|_| {
                    ApiError::invalid_request("'models' must be an array of model slugs").with_param("models")
                })?;
                if opts.models.iter().any(|m| m.is_empty()) {
                    return Err(ApiError::invalid_request("'models' must not contain empty names").with_param("models"));
                }
            }
        } else if member.key_is(body, "provider") {
            removed = true;
            let v = member.value(body);
            if v != b"null" {
                let prefs = serde_json::from_slice::<ProviderPrefs>(v).map_err(|e| {
                    ApiError::invalid_request(format!(
                        "'provider' must be an object with order, only, ignore (provider names), allow_fallbacks (bool) and sort (\"price\" or \"latency\"): {e}"
                    ))
                    .with_param("provider")
                })?;
                opts.provider = Some(prefs);
            }
        } else {
            has_model |= member.key_is(body, "model");
            kept.push(member.key.start..member.value.end);
        }
    }
    if !removed {
        return Ok((None, opts));
    }
    let mut out = Vec::with_capacity(body.len());
    out.push(b'{');
    if !has_model {
        if let Some(first) = opts.models.first() {
            out.extend_from_slice(b"\"model\":");
            json_scan::write_json_string(&mut out, first);
            if !kept.is_empty() {
                out.push(b',');
            }
        }
    }
    for (i, span) in kept.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&body[span.clone()]);
    }
    out.push(b'}');
    Ok((Some(out), opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_bodies_are_untouched() {
        let body = br#"{"model":"a/b","messages":[{"role":"user","content":"the provider models"}]}"#;
        let (out, opts) = extract(body).unwrap();
        assert!(out.is_none());
        assert_eq!(opts, RoutingOpts::default());
    }

    #[test]
    fn models_and_provider_are_read_and_removed() {
        let body = br#"{ "model" : "a/b", "models": ["c/d", "e/f"], "messages": [{"content": "x"}],
            "provider": {"order": ["p1"], "ignore": ["p2"], "allow_fallbacks": false, "sort": "price"}, "n": 1 }"#;
        let (out, opts) = extract(body).unwrap();
        let out = out.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, serde_json::json!({"model": "a/b", "messages": [{"content": "x"}], "n": 1}));
        assert_eq!(opts.models, vec!["c/d", "e/f"]);
        let p = opts.provider.unwrap();
        assert_eq!(p.order.as_deref(), Some(&["p1".to_string()][..]));
        assert_eq!(p.sort, Some(Sort::Price));
        assert_eq!(p.allow_fallbacks, Some(false));
        assert!(p.allows("p1") && !p.allows("p2"));
    }

    #[test]
    fn models_alone_supplies_model() {
        let (out, opts) = extract(br#"{"models":["c/d"],"messages":[]}"#).unwrap();
        assert_eq!(out.unwrap(), br#"{"model":"c/d","messages":[]}"#.to_vec());
        assert_eq!(opts.models, vec!["c/d"]);
        let (out, _) = extract(br#"{"models":["c/d"]}"#).unwrap();
        assert_eq!(out.unwrap(), br#"{"model":"c/d"}"#.to_vec());
    }

    #[test]
    fn bad_options_are_400() {
        for body in [
            &br#"{"model":"a","provider":{"order":["x"],"bogus":1}}"#[..],
            br#"{"model":"a","provider":{"sort":"cheapest"}}"#,
            br#"{"model":"a","provider":"x"}"#,
            br#"{"model":"a","models":"c/d"}"#,
            br#"{"model":"a","models":[1]}"#,
        ] {
            let e = extract(body).unwrap_err();
            assert_eq!(e.status, 400, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn not_json_is_left_to_the_parser() {
        let (out, _) = extract(br#"{"models":["x"] "model":"a"}"#).unwrap();
        assert!(out.is_none());
    }
}
