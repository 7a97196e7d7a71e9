//! `PUT /keys/byok/{provider} {api_key}`, `DELETE /keys/byok/{provider}`, `GET /keys/byok`:
//! an account's own provider keys (see `billing::byok` for how they are kept). The key is
//! accepted once and never shown again: listings name providers only, audit entries too.

use serde_json::{json, Value};

use super::admin::store_failed;
use super::auth::Principal;
use super::error::ApiError;
use super::{parse_json, Reply};
use crate::app::App;
use crate::billing::byok::{self, ByokKey};
use crate::config::Config;
use crate::store::writer::WriteOp;

fn master_key(config: &Config) -> Result<&ByokKey, ApiError> {
    config.server.byok_key.as_ref().ok_or_else(|| {
        ApiError::disabled(
            "byok_disabled",
            format!(
                "bring-your-own-key is disabled: set {} to a 32-byte key (base64 or hex) and restart",
                config.server.byok_key_env
            ),
        )
    })
}

fn known_provider(config: &Config, provider: &str) -> Result<(), ApiError> {
    if config.providers.contains_key(provider) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no provider '{provider}' on this gateway")))
    }
}

/// `GET /keys/byok`: `{"data": [{"provider"}]}`.
pub fn list(app: &App, config: &Config, account_id: u64) -> Result<Reply, ApiError> {
    master_key(config)?;
    let data: Vec<Value> = app.byok.providers(account_id).into_iter().map(|p| json!({"provider": p})).collect();
    Ok(Reply::json(200, &json!({"data": data})))
}

/// `PUT /keys/byok/{provider} {api_key}`: stores (or replaces) the account's key.
pub async fn put(app: &App, config: &Config, actor: &Principal, account_id: u64, provider: &str, body: &[u8]) -> Result<Reply, ApiError> {
    let master = master_key(config)?;
    known_provider(config, provider)?;
    let v = parse_json(body)?;
    let api_key = v.get("api_key").and_then(Value::as_str).unwrap_or("");
    // It goes into an upstream header: visible ASCII only, so it cannot smuggle a header.
    if api_key.is_empty() || api_key.len() > 4096 || !api_key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid_request("'api_key' must be 1 to 4096 visible ASCII characters").with_param("api_key"));
    }
    let now = crate::store::now_secs();
    let record = byok::seal(master, account_id, provider, api_key, now).map_err(ApiError::internal)?;
    let audit = super::audit::entry(app, actor, "byok.put", Some(account_id), json!({"provider": provider}));
    let _lock = app.mutations.lock().await;
    app.writer
        .submit_durable(WriteOp::Atomic(vec![WriteOp::PutByok(record), WriteOp::Audit(audit)]))
        .await
        .map_err(store_failed)?;
    app.byok.put(account_id, provider, api_key.to_string());
    Ok(Reply::json(200, &json!({"provider": provider, "registered": true, "created_at": now})))
}

/// `DELETE /keys/byok/{provider}`.
pub async fn delete(app: &App, config: &Config, actor: &Principal, account_id: u64, provider: &str) -> Result<Reply, ApiError> {
    master_key(config)?;
    let _lock = app.mutations.lock().await;
    if !app.byok.providers(account_id).iter().any(|p| p == provider) {
        return Err(ApiError::not_found(format!("no key registered for provider '{provider}'")));
    }
    let audit = super::audit::entry(app, actor, "byok.delete", Some(account_id), json!({"provider": provider}));
    let op = WriteOp::DeleteByok { account_id, provider: provider.to_string() };
    app.writer.submit_durable(WriteOp::Atomic(vec![op, WriteOp::Audit(audit)])).await.map_err(store_failed)?;
    app.byok.remove(account_id, provider);
    Ok(Reply::json(200, &json!({"provider": provider, "registered": false})))
}
