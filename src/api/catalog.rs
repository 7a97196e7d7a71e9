//! `GET /models` and `GET /models/{slug}`: the public catalog, no key needed.

use super::error::ApiError;
use super::Reply;
use crate::billing::keys::KeyEntry;
use crate::config::{Config, Model};
use serde_json::{json, Value};

/// The catalog, optionally filtered by `X-Platform: intl|cn`, and — when the request carries
/// an API key — to the models that key may use (its `allowed_models` and `platform`).
pub fn list(config: &Config, platform: Option<&str>, key: Option<&KeyEntry>) -> Result<Reply, ApiError> {
    let platform = match platform {
        None | Some("") => None,
        Some(p @ ("intl" | "cn")) => Some(p),
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "X-Platform must be 'intl' or 'cn', not '{other}'"
            ))
            .with_param("X-Platform"))
        }
    };
    let data: Vec<Value> = config
        .available_models()
        .filter(|m| platform.is_none_or(|p| m.serves_platform(p)))
        .filter(|m| key.is_none_or(|k| k.permits_model(&m.slug, &m.platforms)))
        .map(|m| model_json(config, m))
        .collect();
    Ok(Reply::json(200, &json!({"object": "list", "data": data})))
}

pub fn one(config: &Config, slug: &str) -> Result<Reply, ApiError> {
    match config.route(slug) {
        Some((m, _)) => Ok(Reply::json(200, &model_json(config, m))),
        None => Err(ApiError::model_not_found(slug)),
    }
}

fn model_json(config: &Config, m: &Model) -> Value {
    let provider_kind = config.providers.get(&m.provider).map(|p| p.kind.as_str()).unwrap_or("");
    json!({
        "id": m.slug,
        "object": "model",
        "created": 0,
        "owned_by": m.slug.split('/').next().unwrap_or(&m.provider),
        "name": m.name,
        "description": m.description,
        "context_length": m.context_length,
        "max_output_tokens": m.max_output_tokens,
        "provider": m.provider,
        "provider_kind": provider_kind,
        // OpenRouter's shape: USD per token, as exact decimal strings.
        "pricing": {
            "prompt": per_token_usd(m.input_per_mtok),
            "completion": per_token_usd(m.output_per_mtok),
        },
        "input_per_mtok": m.input_per_mtok_display,
        "output_per_mtok": m.output_per_mtok_display,
        "capabilities": m.capabilities,
        "platforms": m.platforms,
        "top_provider": {
            "context_length": m.context_length,
            "max_completion_tokens": m.max_output_tokens,
        },
    })
}

/// nano-USD per 1M tokens as an exact decimal of USD per token (divide by 10^15).
pub fn per_token_usd(nano_per_mtok: i64) -> String {
    let neg = nano_per_mtok < 0;
    let digits = nano_per_mtok.unsigned_abs().to_string();
    let scale = 15;
    let padded = if digits.len() <= scale { format!("{}{}", "0".repeat(scale + 1 - digits.len()), digits) } else { digits };
    let (int, frac) = padded.split_at(padded.len() - scale);
    let frac = frac.trim_end_matches('0');
    let body = if frac.is_empty() { int.to_string() } else { format!("{int}.{frac}") };
    if neg { format!("-{body}") } else { body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_token_prices_are_exact() {
        assert_eq!(per_token_usd(2_500_000_000), "0.0000025");
        assert_eq!(per_token_usd(10_000_000_000), "0.00001");
        assert_eq!(per_token_usd(0), "0");
        assert_eq!(per_token_usd(75_000_000_000_000_000), "75");
    }
}
