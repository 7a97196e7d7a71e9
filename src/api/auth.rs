//! Self-service accounts: `POST /auth/register`, `POST /auth/login`, and who is calling an
//! account route ([`principal`]).
//!
//! Login tokens are HS256 JWTs signed with the secret from `server.jwt_secret_env`, valid for
//! `server.jwt_ttl_secs`, with audience "tollgate" and no leeway on expiry. Without a secret
//! self-service is off: register and login answer 503 `auth_disabled`, and account routes take
//! only the admin token. A JWT is never accepted for inference (the proxy only looks up
//! `sk-tg-` keys), and an API key is never accepted on account routes.
//!
//! A wrong password, an unknown email and an account without a password all answer the same
//! 401 after the same argon2 work (see `password`). Attempts are rate limited per client
//! address and per email (`limits::login`).

use std::net::IpAddr;
use std::time::Instant;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::ApiError;
use super::password::Passwords;
use super::{parse_json, Reply};
use crate::app::App;
use crate::config::Config;
use crate::store::records::AccountRecord;
use crate::store::writer::WriteOp;

const AUDIENCE: &str = "tollgate";
const BAD_LOGIN: &str = "wrong email or password";

/// Who is calling an account or admin route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// The admin token: may act for any account (`?account_id=` where one is needed).
    Admin,
    /// A login token's account.
    Account(u64),
}

impl Principal {
    /// For the audit log.
    pub fn actor(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::Account(id) => format!("account:{id}"),
        }
    }

    /// The account a request acts on: a JWT's own; for the admin token, `?account_id=`
    /// (required, and the account must exist).
    pub fn account(&self, app: &App, query: Option<&str>) -> Result<u64, ApiError> {
        match *self {
            Principal::Account(id) => Ok(id),
            Principal::Admin => {
                let id = super::query_param(query, "account_id")
                    .ok_or_else(|| ApiError::invalid_request("the admin token needs ?account_id= on this route").with_param("account_id"))?
                    .parse::<u64>()
                    .map_err(|_| ApiError::invalid_request("'account_id' must be an account id").with_param("account_id"))?;
                app.account(id).map(|_| id).ok_or_else(|| ApiError::not_found(format!("no account {id}")))
            }
        }
    }

    /// Whether this caller may act on `account_id`.
    pub fn may_act_on(&self, account_id: u64) -> bool {
        match *self {
            Principal::Admin => true,
            Principal::Account(id) => id == account_id,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The account id, as a string (JWT's `sub` is a string).
    sub: String,
    aud: String,
    iat: u64,
    exp: u64,
}

/// A login token for `account_id`: `(token, expires_at)`.
pub fn issue_token(secret: &str, account_id: u64, ttl_secs: u64, now: u64) -> Result<(String, u64), ApiError> {
    let exp = now + ttl_secs;
    let claims = Claims { sub: account_id.to_string(), aud: AUDIENCE.into(), iat: now, exp };
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|e| {
            log::error!("cannot sign a login token: {e}");
            ApiError::internal("cannot issue a login token")
        })?;
    Ok((token, exp))
}

/// The account id of a valid, unexpired login token signed with `secret`.
pub fn verify_token(secret: &str, token: &str) -> Result<u64, ApiError> {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 0;
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["exp", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &v).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        ApiError::unauthorized(match e.kind() {
            ErrorKind::ExpiredSignature => "login token expired: log in again",
            _ => "invalid login token",
        })
    })?;
    data.claims.sub.parse().map_err(|_| ApiError::unauthorized("invalid login token"))
}

fn bearer(authorization: Option<&str>) -> &str {
    authorization
        .map(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).unwrap_or(v))
        .unwrap_or("")
        .trim()
}

/// Authenticates an account route: the admin token, or a login token of an existing, active
/// account. API keys are refused here, whatever they are.
pub fn principal(app: &App, config: &Config, authorization: Option<&str>) -> Result<Principal, ApiError> {
    let token = bearer(authorization);
    if token.is_empty() {
        return Err(ApiError::unauthorized("missing login token: send Authorization: Bearer <token from /auth/login>"));
    }
    if token.starts_with(config.server.key_prefix.as_str()) {
        return Err(ApiError::unauthorized(
            "an API key is not accepted on account routes: use a login token from /auth/login",
        ));
    }
    if let Some(admin) = config.server.admin_token.as_deref() {
        if super::admin::constant_time_eq(token.as_bytes(), admin.as_bytes()) {
            return Ok(Principal::Admin);
        }
    }
    let Some(secret) = config.server.jwt_secret.as_deref() else {
        return Err(ApiError::unauthorized("login is disabled on this gateway (no JWT secret is set); only the admin token is accepted"));
    };
    let id = verify_token(secret, token)?;
    match app.account(id) {
        None => Err(ApiError::unauthorized("invalid login token")),
        Some(a) if a.suspended => Err(ApiError::unauthorized("this account is suspended")),
        Some(_) => Ok(Principal::Account(id)),
    }
}

/// The JWT secret, or 503 `auth_disabled` naming the variable to set.
fn jwt_secret(config: &Config) -> Result<&str, ApiError> {
    config.server.jwt_secret.as_deref().ok_or_else(|| {
        ApiError::disabled(
            "auth_disabled",
            "self-service accounts are disabled: the gateway has no JWT secret (server.jwt_secret_env)",
        )
    })
}

fn limit_addr(app: &App, config: &Config, addr: Option<IpAddr>) -> Result<(), ApiError> {
    let d = app.login_limits.check_addr(addr, config.server.login_attempts_per_minute, Instant::now());
    if d.allowed {
        Ok(())
    } else {
        Err(ApiError::rate_limited(format!("too many attempts from this address; retry in {} s", d.retry_after_secs), d.retry_after_secs))
    }
}

/// A trimmed email address, or 400.
pub fn parse_email(v: &Value) -> Result<String, ApiError> {
    let email = v.get("email").and_then(Value::as_str).map(str::trim).unwrap_or("");
    let (local, domain) = email.split_once('@').unwrap_or(("", ""));
    if local.is_empty() || domain.is_empty() || email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::invalid_request("'email' must be an email address").with_param("email"));
    }
    Ok(email.to_string())
}

/// The `password` member: None when absent or null, 400 when not a string.
pub fn parse_password(v: &Value) -> Result<Option<String>, ApiError> {
    match v.get("password") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid_request("'password' must be a string").with_param("password")),
    }
}

/// Creates an account (shared by `/auth/register` and `POST /admin/accounts`): hashes the
/// password if given (before taking the lock: it is the slow part), then under the mutation
/// lock checks the email is free and commits the record and its audit entry.
pub async fn create_account(app: &App, email: String, password: Option<String>, actor: Option<Principal>) -> Result<AccountRecord, ApiError> {
    let password_hash = match password {
        Some(p) => {
            // The length policy binds self-service registration (checked there); an operator
            // may set any non-empty password, bounded only to keep argon2's input small.
            if p.is_empty() || p.len() > super::password::MAX_LEN {
                return Err(ApiError::invalid_request("'password' must not be empty or over 1024 bytes").with_param("password"));
            }
            Some(app.passwords.hash(p).await?)
        }
        None => None,
    };
    let _lock = app.mutations.lock().await;
    if app.account_by_email(&email).is_some() {
        return Err(ApiError::conflict("account_exists", format!("an account for {email} already exists")));
    }
    let record = AccountRecord {
        id: app.ids.next_account_id(),
        email,
        created_at: crate::store::now_secs(),
        markup_override_bps: None,
        suspended: false,
        password_hash,
        monthly_cap_nano: None,
    };
    let actor = actor.unwrap_or(Principal::Account(record.id));
    let audit = super::audit::entry(app, &actor, "account.create", Some(record.id), json!({"email": record.email, "password": record.password_hash.is_some()}));
    // In memory first: if this request is cancelled after the commit, the account is still
    // known (a zero balance for an id that never committed is harmless).
    app.ledger.add_account(record.id);
    app.writer
        .submit_durable(WriteOp::Atomic(vec![WriteOp::InsertAccount(record.clone()), WriteOp::Audit(audit)]))
        .await
        .map_err(super::admin::store_failed)?;
    app.put_account(record.clone());
    Ok(record)
}

/// `POST /auth/register {email, password}` → 201 `{id, email}`.
pub async fn register(app: &App, config: &Config, addr: Option<IpAddr>, body: &[u8]) -> Result<Reply, ApiError> {
    jwt_secret(config)?;
    limit_addr(app, config, addr)?;
    let v = parse_json(body)?;
    let email = parse_email(&v)?;
    let password = parse_password(&v)?
        .ok_or_else(|| ApiError::invalid_request("'password' is required").with_param("password"))?;
    Passwords::check_new(&password)?;
    let record = create_account(app, email, Some(password), None).await?;
    Ok(Reply::json(201, &json!({"id": record.id, "email": record.email})))
}

/// `POST /auth/login {email, password}` → `{token, expires_at}`.
pub async fn login(app: &App, config: &Config, addr: Option<IpAddr>, body: &[u8]) -> Result<Reply, ApiError> {
    let secret = jwt_secret(config)?;
    limit_addr(app, config, addr)?;
    let v = parse_json(body)?;
    let email = v.get("email").and_then(Value::as_str).map(str::trim).unwrap_or("").to_string();
    let password = v.get("password").and_then(Value::as_str).unwrap_or("").to_string();
    if email.is_empty() || password.is_empty() {
        return Err(ApiError::invalid_request("'email' and 'password' are required"));
    }
    let d = app.login_limits.check_email(&email, config.server.login_attempts_per_minute, Instant::now());
    if !d.allowed {
        return Err(ApiError::rate_limited(
            format!("too many login attempts for this email; retry in {} s", d.retry_after_secs),
            d.retry_after_secs,
        ));
    }
    // The same work whether or not the account exists or has a password.
    let account = app.account_by_email(&email);
    let phc = account.as_ref().and_then(|a| a.password_hash.clone());
    let ok = app.passwords.verify(password, phc).await;
    let account = match account {
        Some(a) if ok => a,
        _ => return Err(ApiError::unauthorized(BAD_LOGIN)),
    };
    if account.suspended {
        return Err(ApiError::unauthorized("this account is suspended"));
    }
    let now = crate::store::now_secs();
    let (token, expires_at) = issue_token(secret, account.id, config.server.jwt_ttl_secs, now)?;
    Ok(Reply::json(200, &json!({"token": token, "token_type": "Bearer", "expires_at": expires_at})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_expire_and_resist_tampering() {
        let now = crate::store::now_secs();
        let (t, exp) = issue_token("s3cret", 42, 60, now).unwrap();
        assert_eq!(exp, now + 60);
        assert_eq!(verify_token("s3cret", &t).unwrap(), 42);
        assert_eq!(verify_token("other", &t).unwrap_err().status, 401);
        // A changed payload (another account) with the old signature.
        let parts: Vec<&str> = t.split('.').collect();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap().replace("\"42\"", "\"1\"");
        let forged = format!("{}.{}.{}", parts[0], b64.encode(payload), parts[2]);
        assert!(verify_token("s3cret", &forged).is_err());
        // alg=none is refused.
        let none = format!("{}.{}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
        assert!(verify_token("s3cret", &none).is_err());
        // Expired: no leeway.
        let (old, _) = issue_token("s3cret", 42, 1, now - 10).unwrap();
        let e = verify_token("s3cret", &old).unwrap_err();
        assert!(e.message.contains("expired"), "{e:?}");
    }

    #[test]
    fn emails_are_checked() {
        assert_eq!(parse_email(&json!({"email": " a@b.c "})).unwrap(), "a@b.c");
        for bad in [json!({}), json!({"email": "nope"}), json!({"email": "@x"}), json!({"email": "a b@c"}), json!({"email": 5})] {
            assert!(parse_email(&bad).is_err(), "{bad}");
        }
    }
}
