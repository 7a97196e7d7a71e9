//! `/admin/*`: the operator's routes, behind `Authorization: Bearer $TOLLGATE_ADMIN_TOKEN`.
//! Disabled (401 for everything) when the token variable is unset.

use super::error::ApiError;
use super::{parse_json, Reply};
use crate::app::App;
use crate::billing::keys::{self, KeyEntry};
use crate::billing::money::{self, usd_json, Nano};
use crate::config::Config;
use crate::store::records::{AccountRecord, KeyRecord};
use crate::store::writer::WriteOp;
use serde_json::{json, Value};

pub fn authorize(config: &Config, authorization: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = config.server.admin_token.as_deref() else {
        return Err(ApiError::new(401, "unauthorized", "administration is disabled: TOLLGATE_ADMIN_TOKEN is not set"));
    };
    let presented = authorization
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .unwrap_or("")
        .trim();
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(401, "unauthorized", "invalid admin token"))
    }
}

/// Compare secrets without an early exit, so timing does not reveal a matching prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0 && a.len() == b.len()
}

fn store_failed(e: String) -> ApiError {
    log::error!("durable write failed: {e}");
    ApiError::internal("the store could not record this change; nothing was applied")
}

/// `POST /admin/accounts {email, password?}` → 201 `{id, email}`.
pub async fn create_account(app: &App, body: &[u8]) -> Result<Reply, ApiError> {
    let v = parse_json(body)?;
    let email = v.get("email").and_then(Value::as_str).map(str::trim).unwrap_or("");
    if email.is_empty() || !email.contains('@') || email.len() > 254 {
        return Err(ApiError::invalid_request("'email' must be an email address").with_param("email"));
    }
    if v.get("password").is_some_and(|p| !p.is_string() && !p.is_null()) {
        return Err(ApiError::invalid_request("'password' must be a string").with_param("password"));
    }
    if app.account_by_email(email).is_some() {
        return Err(ApiError::new(409, "account_exists", format!("an account for {email} already exists")));
    }
    let record = AccountRecord {
        id: app.ids.next_account_id(),
        email: email.to_string(),
        created_at: crate::store::now_secs(),
        markup_bps: 0,
        suspended: false,
        // Login (and its argon2id hashing) is part of self-service accounts; an operator-set
        // password is not stored until then.
        password_hash: None,
    };
    // In memory first: if this request is cancelled after the commit, the account is still
    // known (a zero balance for an id that never committed is harmless).
    app.ledger.add_account(record.id);
    app.writer.submit_durable(WriteOp::InsertAccount(record.clone())).await.map_err(store_failed)?;
    app.put_account(record.clone());
    Ok(Reply::json(201, &json!({"id": record.id, "email": record.email})))
}

/// `GET /admin/accounts/{id}`: account, balance, keys (redacted).
pub fn get_account(app: &App, id: u64) -> Result<Reply, ApiError> {
    let account = app.account(id).ok_or_else(|| ApiError::not_found(format!("no account {id}")))?;
    let bal = app.ledger.account(id).unwrap_or_default();
    let keys = app.store.list_keys(id).map_err(|e| {
        log::error!("listing keys failed: {e:?}");
        ApiError::internal("listing keys failed")
    })?;
    let keys: Vec<Value> = keys.iter().map(key_json).collect();
    Ok(Reply::json(
        200,
        &json!({
            "id": account.id,
            "email": account.email,
            "created_at": account.created_at,
            "suspended": account.suspended,
            "balance": usd_json(bal.balance),
            "reserved": usd_json(bal.reserved),
            "total_credits": usd_json(bal.total_credits()),
            "total_usage": usd_json(bal.total_usage),
            "markup_percent": account.markup_bps as f64 / 100.0,
            "keys": keys,
        }),
    ))
}

/// `POST /admin/accounts/{id}/credits {amount_usd, note?}` → the new balance, after the
/// grant is durable.
pub async fn grant_credits(app: &App, id: u64, body: &[u8]) -> Result<Reply, ApiError> {
    let v = parse_json(body)?;
    if app.account(id).is_none() {
        return Err(ApiError::not_found(format!("no account {id}")));
    }
    let amount = amount_field(body, &v, "amount_usd")?;
    if amount == 0 {
        return Err(ApiError::invalid_request("'amount_usd' must not be zero").with_param("amount_usd"));
    }
    let note = match v.get("note") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.chars().take(500).collect()),
        Some(_) => return Err(ApiError::invalid_request("'note' must be a string").with_param("note")),
    };
    let balance = app.ledger.grant(id, amount, note).await.map_err(|e| store_failed(e.to_string()))?;
    Ok(Reply::json(
        200,
        &json!({"id": id, "balance": usd_json(balance), "balance_usd": money::format_usd(balance), "granted": usd_json(amount)}),
    ))
}

/// An exact USD amount: a JSON string ("12.50") or number (12.5), parsed from its text so
/// that no float ever touches the ledger.
fn amount_field(body: &[u8], v: &Value, field: &str) -> Result<Nano, ApiError> {
    let bad = || ApiError::invalid_request(format!("'{field}' must be a decimal amount in USD")).with_param(field);
    match v.get(field) {
        Some(Value::String(s)) => money::parse_usd(s.trim()).map_err(|_| bad()),
        Some(Value::Number(_)) => {
            let text = raw_number_text(body, field).ok_or_else(bad)?;
            money::parse_usd(&text).map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// The literal text of a top-level numeric member, so `0.1` stays `0.1` (a float would not).
fn raw_number_text(body: &[u8], field: &str) -> Option<String> {
    let member = crate::providers::json_scan::find_member(body, field).ok()??;
    Some(String::from_utf8_lossy(member.value(body)).trim().to_string())
}

/// `POST /admin/accounts/{id}/keys {name, rate_limit_rpm?, daily_cap_usd?, monthly_cap_usd?}`
/// → 201 with the secret `key`, shown this once.
pub async fn create_key(app: &App, config: &Config, account_id: u64, body: &[u8]) -> Result<Reply, ApiError> {
    let v = parse_json(body)?;
    if app.account(account_id).is_none() {
        return Err(ApiError::not_found(format!("no account {account_id}")));
    }
    let name = match v.get("name") {
        None | Some(Value::Null) => "default".to_string(),
        Some(Value::String(s)) if s.len() <= 200 => s.clone(),
        Some(_) => return Err(ApiError::invalid_request("'name' must be a string of at most 200 characters").with_param("name")),
    };
    let rate_limit_rpm = match v.get("rate_limit_rpm") {
        None | Some(Value::Null) => None,
        Some(n) => Some(
            n.as_u64()
                .filter(|n| *n > 0 && *n <= u32::MAX as u64)
                .ok_or_else(|| ApiError::invalid_request("'rate_limit_rpm' must be a positive integer").with_param("rate_limit_rpm"))?
                as u32,
        ),
    };
    let cap = |field: &str| -> Result<Option<Nano>, ApiError> {
        match v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => {
                let n = amount_field(body, &v, field)?;
                if n <= 0 {
                    return Err(ApiError::invalid_request(format!("'{field}' must be positive")).with_param(field));
                }
                Ok(Some(n))
            }
        }
    };
    let daily_cap_nano = cap("daily_cap_usd")?;
    let monthly_cap_nano = cap("monthly_cap_usd")?;

    let secret = keys::generate_secret(&config.server.key_prefix);
    let hash = keys::hash_secret(&secret);
    let record = KeyRecord {
        id: app.ids.next_key_id(),
        account_id,
        name,
        secret_hash: keys::hash_hex(&hash),
        redacted: keys::redact(&secret),
        created_at: crate::store::now_secs(),
        revoked: false,
        rate_limit_rpm,
        daily_cap_nano,
        monthly_cap_nano,
    };
    app.writer.submit_durable(WriteOp::PutKey(record.clone())).await.map_err(store_failed)?;
    if let Some((hash, entry)) = KeyEntry::from_record(&record) {
        app.keys.insert(hash, entry);
    }
    let mut out = key_json(&record);
    out["key"] = Value::String(secret);
    Ok(Reply::json(201, &out))
}

fn key_json(k: &KeyRecord) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "redacted": k.redacted,
        "created_at": k.created_at,
        "revoked": k.revoked,
        "rate_limit_rpm": k.rate_limit_rpm,
        "daily_cap_usd": k.daily_cap_nano.map(usd_json),
        "monthly_cap_usd": k.monthly_cap_nano.map(usd_json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
