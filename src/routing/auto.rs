//! `model: "auto"`: the cheapest enabled model that can take the request.
//!
//! A model fits when its context length holds the request's estimated tokens (prompt estimated
//! from its bytes, plus `max_tokens` per choice) and its `capabilities` cover what the request
//! uses: `tools` (a non-empty `tools` or `functions`), `vision` (any `image_url` part) and
//! `json` (a `response_format` of type `json_object` or `json_schema`). Fitting models are
//! ordered by the estimated cost of this request at their cheapest enabled route, catalog order
//! breaking ties; the request tries them in that order.

use crate::api::Endpoint;
use crate::billing::keys::KeyEntry;
use crate::config::{Config, Model};
use crate::metering::estimate;
use crate::providers::json_scan;
use crate::proxy::endpoints::RequestInfo;

/// Completion tokens assumed for the price comparison when the request sets no `max_tokens`.
const ASSUMED_COMPLETION: u64 = 256;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub tools: bool,
    pub vision: bool,
    pub json: bool,
    /// Estimated prompt plus requested completion tokens.
    pub tokens: u64,
    pub prompt_tokens: u64,
}

pub fn needs(body: &[u8], info: &RequestInfo) -> Needs {
    let member = |name: &str| json_scan::find_member(body, name).ok().flatten().map(|m| m.value(body).to_vec());
    let non_empty_array = |v: Option<Vec<u8>>| {
        v.and_then(|v| serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&v).ok()).is_some_and(|a| !a.is_empty())
    };
    let json = member("response_format")
        .and_then(|v| serde_json::from_slice::<serde_json::Value>(&v).ok())
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .is_some_and(|t| t == "json_object" || t == "json_schema");
    let prompt_tokens = estimate::tokens_from_chars(info.prompt_bytes as u64);
    Needs {
        tools: non_empty_array(member("tools")) || non_empty_array(member("functions")),
        vision: memchr::memmem::find(body, b"\"image_url\"").is_some(),
        json,
        tokens: prompt_tokens.saturating_add(info.max_tokens.unwrap_or(0).saturating_mul(info.n.max(1))),
        prompt_tokens,
    }
}

fn has(model: &Model, capability: &str) -> bool {
    model.capabilities.iter().any(|c| c == capability)
}

pub fn fits(model: &Model, needs: &Needs) -> bool {
    needs.tokens <= model.context_length
        && (!needs.tools || has(model, "tools"))
        && (!needs.vision || has(model, "vision"))
        && (!needs.json || has(model, "json"))
}

/// Fitting models' slugs, cheapest first (at most `limit`).
pub fn choose(config: &Config, key: &KeyEntry, endpoint: Endpoint, info: &RequestInfo, body: &[u8], limit: usize) -> Vec<String> {
    let needs = needs(body, info);
    let completion = info.max_tokens.unwrap_or(ASSUMED_COMPLETION).saturating_mul(info.n.max(1));
    let mut fitting: Vec<(u128, usize, &str)> = config
        .available_models()
        .enumerate()
        .filter(|(_, m)| m.auto && m.serves(endpoint.label()) && key.permits_model(&m.slug, &m.platforms) && fits(m, &needs))
        .filter_map(|(i, m)| {
            let cost = m
                .routes
                .iter()
                .filter(|r| {
                    config.providers.get(&r.provider).is_some_and(|p| p.enabled && crate::proxy::wire::offers(p.kind, endpoint))
                })
                .map(|r| {
                    needs.prompt_tokens as u128 * r.model.input_per_mtok.max(0) as u128
                        + completion as u128 * r.model.output_per_mtok.max(0) as u128
                })
                .min()?;
            Some((cost, i, m.slug.as_str()))
        })
        .collect();
    fitting.sort();
    fitting.into_iter().take(limit).map(|(_, _, s)| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(body: &[u8], max_tokens: Option<u64>) -> RequestInfo {
        RequestInfo { prompt_bytes: body.len(), max_tokens, n: 1, ..Default::default() }
    }

    #[test]
    fn needs_are_read_from_the_body() {
        let body = br#"{"model":"auto","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}],
            "tools":[{"type":"function"}],"response_format":{"type":"json_object"}}"#;
        let n = needs(body, &info(body, Some(100)));
        assert!(n.tools && n.vision && n.json);
        assert!(n.tokens >= 100);
        let plain = br#"{"model":"auto","messages":[],"tools":[],"response_format":{"type":"text"}}"#;
        let n = needs(plain, &info(plain, None));
        assert!(!n.tools && !n.vision && !n.json);
    }
}
