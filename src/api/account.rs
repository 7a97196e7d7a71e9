//! `/credits` and `/generation`: what an API key's account can see about its money.

use super::error::ApiError;
use super::{query_param, Reply};
use crate::app::App;
use crate::billing::keys::KeyEntry;
use crate::billing::money::{format_usd, usd_json};
use serde_json::json;

/// OpenRouter's shape: `{"data": {"total_credits", "total_usage", "remaining"}}` in USD.
pub fn credits(app: &App, key: &KeyEntry) -> Result<Reply, ApiError> {
    let bal = app.ledger.account(key.account_id).unwrap_or_default();
    Ok(Reply::json(
        200,
        &json!({"data": {
            "total_credits": usd_json(bal.total_credits()),
            "total_usage": usd_json(bal.total_usage),
            "remaining": usd_json(bal.balance),
            "reserved": usd_json(bal.reserved),
        }}),
    ))
}

/// `GET /generation?id=`: by generation id or the response body's `id`, own account only.
/// Records are group-committed after the answer went out; a miss flushes the writer and looks
/// again, so a record can be read as soon as its request was answered.
pub async fn generation(app: &App, key: &KeyEntry, query: Option<&str>) -> Result<Reply, ApiError> {
    let Some(id) = query_param(query, "id").filter(|s| !s.is_empty()) else {
        return Err(ApiError::invalid_request("query parameter 'id' is required").with_param("id"));
    };
    let lookup = || {
        app.store.get_generation(&id).map_err(|e| {
            log::error!("generation lookup failed: {e:?}");
            ApiError::internal("generation lookup failed")
        })
    };
    let mut found = lookup()?;
    if found.is_none() {
        if let Err(e) = app.writer.flush().await {
            log::warn!("generation lookup: store flush failed: {e}");
        }
        found = lookup()?;
    }
    // Another account's generation is indistinguishable from a missing one.
    let Some(g) = found.filter(|g| g.account_id == key.account_id) else {
        return Err(ApiError::not_found(format!("no generation '{id}' (it may still be being recorded; retry shortly)")));
    };
    let status = if g.error.is_none() && g.status < 400 { "success" } else { "error" };
    Ok(Reply::json(
        200,
        &json!({"data": {
            "id": g.id,
            // The provider's own id, to find the request in its logs (OpenRouter's name).
            "upstream_id": (!g.upstream_id.is_empty()).then_some(&g.upstream_id),
            "model": g.model,
            "provider": g.provider,
            "tokens_prompt": g.tokens_prompt,
            "tokens_completion": g.tokens_completion,
            "total_cost": usd_json(g.total_cost_nano),
            "total_cost_usd": format_usd(g.total_cost_nano),
            "latency_ms": g.latency_ms,
            "status": status,
            "http_status": g.status,
            "streamed": g.streamed,
            "usage_estimated": g.usage_estimated,
            "error": g.error,
            "created_at": g.created_at,
            "key_id": g.key_id,
            "attempts": g.attempt_log.iter().map(|a| json!({
                "model": a.model,
                "provider": a.provider,
                "upstream_model": a.upstream_model,
                "status": a.status,
                "latency_ms": a.latency_ms,
                "error": a.error,
            })).collect::<Vec<_>>(),
        }}),
    ))
}
