//! The audit log: every operator action and every self-service change of keys, BYOK keys and
//! accounts, written in the same transaction as the change itself (`WriteOp::Atomic`), so
//! the log and the state cannot disagree. `GET /admin/audit?limit=&account_id=` reads it,
//! newest first. Entries never carry a secret: keys appear by id, BYOK keys by provider.

use serde_json::{json, Value};

use super::auth::Principal;
use super::error::ApiError;
use super::{query_param, Reply};
use crate::app::App;
use crate::store::AuditEntry;

/// A new entry (its sequence number allocated now).
pub fn entry(app: &App, actor: &Principal, action: &str, account_id: Option<u64>, detail: Value) -> AuditEntry {
    AuditEntry {
        seq: app.ids.next_audit_seq(),
        at: crate::store::now_secs(),
        actor: actor.actor(),
        action: action.to_string(),
        account_id,
        detail,
    }
}

/// `GET /admin/audit?limit=&account_id=`: `{"data": [entries, newest first]}`.
pub fn list(app: &App, query: Option<&str>) -> Result<Reply, ApiError> {
    let limit = match query_param(query, "limit") {
        None => 100,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::invalid_request("'limit' must be 1 to 1000").with_param("limit"))?,
    };
    let account_id = match query_param(query, "account_id") {
        None => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| ApiError::invalid_request("'account_id' must be an account id").with_param("account_id"))?),
    };
    let entries = app.store.audit_entries(limit, account_id).map_err(|e| {
        log::error!("reading the audit log failed: {e}");
        ApiError::internal("reading the audit log failed")
    })?;
    Ok(Reply::json(200, &json!({"data": entries})))
}
