//! API keys: `GET/POST /keys`, `PATCH/DELETE /keys/{id}` (login token of the owner, or the
//! admin token), and `POST /admin/accounts/{id}/keys`, which is the same creation.
//!
//! The secret is returned once, by the creating request; only its sha256 and a redacted form
//! are stored. Every change is durable (with its audit entry, in one transaction) before it
//! is answered. Changes take [`App::mutations`] so that a rename racing a revocation cannot
//! write the key back unrevoked. A revocation takes the key out of the in-memory ring
//! *before* anything else, so the very next request with it is refused, even if the store
//! then fails.

use serde_json::{json, Value};

use super::admin::{amount_field, store_failed};
use super::auth::Principal;
use super::error::ApiError;
use super::{parse_json, Reply};
use crate::app::App;
use crate::billing::keys::{self, KeyEntry};
use crate::billing::money::{usd_json, Nano};
use crate::config::Config;
use crate::store::records::KeyRecord;
use crate::store::writer::WriteOp;

const FIELDS: &[&str] = &[
    "name",
    "rate_limit_rpm",
    "tokens_per_minute",
    "daily_cap_usd",
    "monthly_cap_usd",
    "allowed_models",
    "expires_at",
    "platform",
];

/// A body member: absent (unchanged), null (cleared) or a value.
#[derive(Debug, Clone, PartialEq)]
enum Field<T> {
    Absent,
    Null,
    Set(T),
}

impl<T> Field<T> {
    fn apply(self, slot: &mut Option<T>) {
        match self {
            Field::Absent => {}
            Field::Null => *slot = None,
            Field::Set(v) => *slot = Some(v),
        }
    }
}

/// The settable parts of a key, as sent.
struct KeyChanges {
    name: Field<String>,
    rate_limit_rpm: Field<u32>,
    tokens_per_minute: Field<u32>,
    daily_cap_nano: Field<Nano>,
    monthly_cap_nano: Field<Nano>,
    allowed_models: Field<Vec<String>>,
    expires_at: Field<u64>,
    platform: Field<String>,
}

fn field<T>(v: &Value, name: &str, parse: impl FnOnce(&Value) -> Option<T>, what: &str) -> Result<Field<T>, ApiError> {
    match v.get(name) {
        None => Ok(Field::Absent),
        Some(Value::Null) => Ok(Field::Null),
        Some(x) => parse(x)
            .map(Field::Set)
            .ok_or_else(|| ApiError::invalid_request(format!("'{name}' must be {what}")).with_param(name)),
    }
}

impl KeyChanges {
    fn parse(body: &[u8], v: &Value) -> Result<KeyChanges, ApiError> {
        if let Some(unknown) = v.as_object().and_then(|o| o.keys().find(|k| !FIELDS.contains(&k.as_str()))) {
            return Err(ApiError::invalid_request(format!("unknown field '{unknown}' (known: {})", FIELDS.join(", "))).with_param(unknown.as_str()));
        }
        let positive_u32 = |x: &Value| x.as_u64().filter(|n| *n > 0 && *n <= u32::MAX as u64).map(|n| n as u32);
        let cap = |name: &str| -> Result<Field<Nano>, ApiError> {
            match v.get(name) {
                None => Ok(Field::Absent),
                Some(Value::Null) => Ok(Field::Null),
                Some(_) => {
                    let n = amount_field(body, v, name)?;
                    if n <= 0 {
                        return Err(ApiError::invalid_request(format!("'{name}' must be positive")).with_param(name));
                    }
                    Ok(Field::Set(n))
                }
            }
        };
        Ok(KeyChanges {
            name: field(v, "name", |x| x.as_str().filter(|s| s.len() <= 200).map(str::to_string), "a string of at most 200 characters")?,
            rate_limit_rpm: field(v, "rate_limit_rpm", positive_u32, "a positive integer")?,
            tokens_per_minute: field(v, "tokens_per_minute", positive_u32, "a positive integer")?,
            daily_cap_nano: cap("daily_cap_usd")?,
            monthly_cap_nano: cap("monthly_cap_usd")?,
            allowed_models: field(
                v,
                "allowed_models",
                |x| {
                    let list = x.as_array().filter(|a| !a.is_empty() && a.len() <= 100)?;
                    list.iter()
                        .map(|g| g.as_str().filter(|s| !s.is_empty() && s.len() <= 200).map(str::to_string))
                        .collect()
                },
                "a non-empty array of model slugs or globs like \"openai/*\" (null allows every model)",
            )?,
            expires_at: field(v, "expires_at", |x| x.as_u64().filter(|n| *n > 0), "unix seconds")?,
            platform: field(
                v,
                "platform",
                |x| x.as_str().filter(|p| *p == "intl" || *p == "cn").map(str::to_string),
                "\"intl\" or \"cn\"",
            )?,
        })
    }

    fn apply(self, k: &mut KeyRecord) -> Result<(), ApiError> {
        match self.name {
            Field::Absent => {}
            Field::Null => return Err(ApiError::invalid_request("'name' cannot be null").with_param("name")),
            Field::Set(n) => k.name = n,
        }
        self.rate_limit_rpm.apply(&mut k.rate_limit_rpm);
        self.tokens_per_minute.apply(&mut k.tokens_per_minute);
        self.daily_cap_nano.apply(&mut k.daily_cap_nano);
        self.monthly_cap_nano.apply(&mut k.monthly_cap_nano);
        self.allowed_models.apply(&mut k.allowed_models);
        self.expires_at.apply(&mut k.expires_at);
        self.platform.apply(&mut k.platform);
        Ok(())
    }
}

/// Limits as recorded in the audit log (never the secret or its hash).
fn limits_json(k: &KeyRecord) -> Value {
    json!({
        "key_id": k.id,
        "name": k.name,
        "rate_limit_rpm": k.rate_limit_rpm,
        "tokens_per_minute": k.tokens_per_minute,
        "daily_cap_nano": k.daily_cap_nano,
        "monthly_cap_nano": k.monthly_cap_nano,
        "allowed_models": k.allowed_models,
        "expires_at": k.expires_at,
        "platform": k.platform,
    })
}

/// What a listing shows of a key: never the secret.
pub fn key_json(app: &App, k: &KeyRecord) -> Value {
    let last_used = app
        .keys
        .get(k.id)
        .map(|e| e.last_used_secs())
        .filter(|&t| t > 0)
        .or_else(|| app.store.key_last_used(k.id).ok().flatten());
    json!({
        "id": k.id,
        "name": k.name,
        "redacted": k.redacted,
        "created_at": k.created_at,
        "last_used": last_used,
        "revoked": k.revoked,
        "revoked_at": k.revoked_at,
        "rate_limit_rpm": k.rate_limit_rpm,
        "tokens_per_minute": k.tokens_per_minute,
        "daily_cap_usd": k.daily_cap_nano.map(usd_json),
        "monthly_cap_usd": k.monthly_cap_nano.map(usd_json),
        "allowed_models": k.allowed_models,
        "expires_at": k.expires_at,
        "platform": k.platform,
    })
}

fn read_failed(e: crate::store::StoreError) -> ApiError {
    log::error!("reading keys failed: {e}");
    ApiError::internal("reading keys failed")
}

/// `POST /keys` and `POST /admin/accounts/{id}/keys`: 201 with the secret `key`, shown once.
pub async fn create(app: &App, config: &Config, actor: &Principal, account_id: u64, body: &[u8]) -> Result<Reply, ApiError> {
    let v = parse_json(body)?;
    if app.account(account_id).is_none() {
        return Err(ApiError::not_found(format!("no account {account_id}")));
    }
    let changes = KeyChanges::parse(body, &v)?;
    let secret = keys::generate_secret(&config.server.key_prefix);
    let mut record = KeyRecord {
        id: app.ids.next_key_id(),
        account_id,
        name: "default".into(),
        secret_hash: keys::hash_hex(&keys::hash_secret(&secret)),
        redacted: keys::redact(&secret),
        created_at: crate::store::now_secs(),
        revoked: false,
        rate_limit_rpm: None,
        daily_cap_nano: None,
        monthly_cap_nano: None,
        tokens_per_minute: None,
        allowed_models: None,
        expires_at: None,
        platform: None,
        revoked_at: None,
    };
    changes.apply(&mut record)?;
    let audit = super::audit::entry(app, actor, "key.create", Some(account_id), limits_json(&record));
    app.writer
        .submit_durable(WriteOp::Atomic(vec![WriteOp::PutKey(record.clone()), WriteOp::Audit(audit)]))
        .await
        .map_err(store_failed)?;
    if let Some((hash, entry)) = KeyEntry::from_record(&record) {
        app.keys.insert(hash, entry);
    }
    let mut out = key_json(app, &record);
    out["key"] = Value::String(secret);
    Ok(Reply::json(201, &out))
}

/// `GET /keys`: the account's keys, revoked ones included, oldest first. Also queues the
/// lazy flush of last-used times (the listing itself reads them from memory).
pub fn list(app: &App, account_id: u64) -> Result<Reply, ApiError> {
    app.flush_key_usage();
    let records = app.store.list_keys(account_id).map_err(read_failed)?;
    let data: Vec<Value> = records.iter().map(|k| key_json(app, k)).collect();
    Ok(Reply::json(200, &json!({"data": data})))
}

/// The stored key `id` if `actor` may change it; another account's key is a 404, like a
/// missing one.
fn owned_key(app: &App, actor: &Principal, id: u64) -> Result<KeyRecord, ApiError> {
    match app.store.key(id).map_err(read_failed)? {
        Some(k) if actor.may_act_on(k.account_id) => Ok(k),
        _ => Err(ApiError::not_found(format!("no key {id}"))),
    }
}

/// `PATCH /keys/{id}`: rename, change limits (null clears one). The new limits apply from
/// the key's next request.
pub async fn update(app: &App, actor: &Principal, id: u64, body: &[u8]) -> Result<Reply, ApiError> {
    let v = parse_json(body)?;
    let changes = KeyChanges::parse(body, &v)?;
    let _lock = app.mutations.lock().await;
    let old = owned_key(app, actor, id)?;
    if old.revoked {
        return Err(ApiError::conflict("key_revoked", format!("key {id} is revoked and cannot be changed")));
    }
    let mut new = old.clone();
    changes.apply(&mut new)?;
    let audit = super::audit::entry(app, actor, "key.update", Some(new.account_id), limits_json(&new));
    app.writer
        .submit_durable(WriteOp::Atomic(vec![WriteOp::PutKey(new.clone()), WriteOp::Audit(audit)]))
        .await
        .map_err(store_failed)?;
    let uncapped = |k: &KeyRecord| k.daily_cap_nano.is_none() && k.monthly_cap_nano.is_none();
    if uncapped(&old) && !uncapped(&new) {
        // Spend of uncapped keys is not tracked in memory: seed this month's from the
        // rollups (after the writer has committed every charge queued so far).
        let _ = app.writer.flush().await;
        seed_key_caps(app, new.account_id, new.id);
    }
    app.keys.insert_record(&new).map_err(ApiError::internal)?;
    Ok(Reply::json(200, &key_json(app, &new)))
}

fn seed_key_caps(app: &App, account_id: u64, key_id: u64) {
    let now = crate::store::now_secs();
    let month_start = crate::limits::calendar::month_start_day(now);
    match app.store.costs_since_day([account_id], month_start) {
        Ok(rows) => {
            // The zero row makes the key appear even without spend this month, so counts
            // left from an earlier capped period are replaced too.
            let mine = rows
                .into_iter()
                .filter(|r| r.1 == key_id)
                .map(|(_, k, at, cost)| (k, cost, at))
                .chain(std::iter::once((key_id, 0, now)));
            app.caps.seed(mine, now);
        }
        Err(e) => log::error!("seeding spend caps of key {key_id} failed: {e}"),
    }
}

/// `DELETE /keys/{id}`: revokes. Idempotent (a revoked key answers the same).
pub async fn revoke(app: &App, actor: &Principal, id: u64) -> Result<Reply, ApiError> {
    let _lock = app.mutations.lock().await;
    let old = owned_key(app, actor, id)?;
    if old.revoked {
        return Ok(Reply::json(200, &key_json(app, &old)));
    }
    // Refused from this instant, before the store is even asked.
    let last_used = app.keys.get(id).map(|e| e.last_used_secs()).unwrap_or(0);
    app.keys.revoke(id);
    let mut new = old.clone();
    new.revoked = true;
    new.revoked_at = Some(crate::store::now_secs());
    let audit = super::audit::entry(app, actor, "key.revoke", Some(new.account_id), json!({"key_id": id, "name": new.name}));
    let mut ops = vec![WriteOp::PutKey(new.clone()), WriteOp::Audit(audit)];
    if last_used > 0 {
        ops.push(WriteOp::TouchKeys(vec![(id, last_used)]));
    }
    app.writer.submit_durable(WriteOp::Atomic(ops)).await.map_err(|e| {
        log::error!("revocation of key {id} not stored ({e}); it stays refused until a restart");
        ApiError::internal("the key is refused from now on, but the store could not record the revocation: retry")
    })?;
    Ok(Reply::json(200, &key_json(app, &new)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(v: Value) -> Result<KeyChanges, ApiError> {
        let body = v.to_string();
        KeyChanges::parse(body.as_bytes(), &v)
    }

    fn blank() -> KeyRecord {
        KeyRecord {
            id: 1,
            account_id: 1,
            name: "a".into(),
            secret_hash: String::new(),
            redacted: String::new(),
            created_at: 0,
            revoked: false,
            rate_limit_rpm: Some(5),
            daily_cap_nano: None,
            monthly_cap_nano: Some(7),
            tokens_per_minute: None,
            allowed_models: None,
            expires_at: None,
            platform: None,
            revoked_at: None,
        }
    }

    #[test]
    fn patch_semantics_absent_null_set() {
        let mut k = blank();
        changes(json!({"name": "b", "rate_limit_rpm": null, "daily_cap_usd": "0.5", "allowed_models": ["openai/*"], "platform": "cn", "tokens_per_minute": 1000, "expires_at": 99}))
            .unwrap()
            .apply(&mut k)
            .unwrap();
        assert_eq!(k.name, "b");
        assert_eq!(k.rate_limit_rpm, None);
        assert_eq!(k.daily_cap_nano, Some(500_000_000));
        assert_eq!(k.monthly_cap_nano, Some(7), "absent: unchanged");
        assert_eq!(k.allowed_models, Some(vec!["openai/*".to_string()]));
        assert_eq!((k.platform.as_deref(), k.tokens_per_minute, k.expires_at), (Some("cn"), Some(1000), Some(99)));
        // A number amount is parsed from its text, exactly.
        changes(json!({"monthly_cap_usd": 0.1})).unwrap().apply(&mut k).unwrap();
        assert_eq!(k.monthly_cap_nano, Some(100_000_000));
    }

    #[test]
    fn bad_fields_are_400_with_param() {
        for (body, param) in [
            (json!({"rate_limit_rpm": 0}), "rate_limit_rpm"),
            (json!({"tokens_per_minute": "x"}), "tokens_per_minute"),
            (json!({"daily_cap_usd": "-1"}), "daily_cap_usd"),
            (json!({"allowed_models": []}), "allowed_models"),
            (json!({"allowed_models": [""]}), "allowed_models"),
            (json!({"platform": "eu"}), "platform"),
            (json!({"expires_at": -5}), "expires_at"),
            (json!({"rate_limt_rpm": 5}), "rate_limt_rpm"),
        ] {
            let e = changes(body.clone()).err().unwrap_or_else(|| panic!("{body} accepted"));
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{body}");
        }
        let mut k = blank();
        assert!(changes(json!({"name": null})).unwrap().apply(&mut k).is_err());
    }
}
