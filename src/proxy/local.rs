//! Answering from `request_filter`: local routes, refusals, and the headers every response
//! carries.

use super::ctx::RequestCtx;
use crate::api::error::ApiError;
use crate::api::auth::{self, Principal};
use crate::api::{account, admin, byok, catalog, keys, me, usage, Reply, Route};
use crate::app::App;
use crate::billing::keys::KeyEntry;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::sync::Arc;

/// Local routes read small JSON bodies only.
const LOCAL_BODY_LIMIT: u64 = 1024 * 1024;

/// Serve a route that needs no upstream.
pub async fn answer(app: &App, session: &mut Session, ctx: &mut RequestCtx, route: Route) -> Reply {
    if app.handed_off() && needs_store(&route) {
        return upgrading();
    }
    let result = match route {
        Route::Healthz => Ok(Reply::json(200, &serde_json::json!({"status": "ok"}))),
        Route::Readyz => Ok(readiness(app)),
        Route::Models => {
            let platform = header_str(session, "x-platform");
            // The catalog is public; a valid API key narrows it to what that key may use.
            let key = header_str(session, "authorization")
                .and_then(|v| v.strip_prefix("Bearer ").map(str::to_string))
                .filter(|t| t.starts_with(ctx.config.server.key_prefix.as_str()))
                .and_then(|t| app.keys.lookup(&t));
            catalog::list(&ctx.config, platform.as_deref(), key.as_deref())
        }
        Route::Model(slug) => catalog::one(&ctx.config, &slug),
        Route::Generation => match authenticate_key(app, session, ctx) {
            Ok(key) => {
                let query = session.req_header().uri.query().map(str::to_owned);
                account::generation(app, &key, query.as_deref()).await
            }
            Err(e) => Err(e),
        },
        Route::Credits => match authenticate_key(app, session, ctx) {
            Ok(key) => account::credits(app, &key),
            Err(e) => Err(e),
        },
        Route::AuthRegister | Route::AuthLogin => auth_route(app, session, ctx, route).await,
        Route::Me
        | Route::Usage
        | Route::KeysList
        | Route::KeysCreate
        | Route::KeyUpdate(_)
        | Route::KeyRevoke(_)
        | Route::ByokList
        | Route::ByokPut(_)
        | Route::ByokDelete(_) => account_route(app, session, ctx, route).await,
        Route::AdminAccounts
        | Route::AdminAccountList
        | Route::AdminAccount(_)
        | Route::AdminAccountUpdate(_)
        | Route::AdminCredits(_)
        | Route::AdminKeys(_)
        | Route::AdminAudit
        | Route::AdminRecomputeTiers
        | Route::AdminRoutes
        | Route::AdminBackup => admin_route(app, session, ctx, route).await,
        Route::NotFound => Err(ApiError::not_found(format!(
            "no route for {} {}",
            session.req_header().method,
            session.req_header().uri.path()
        ))),
        Route::MethodNotAllowed(allow) => {
            let mut r = Reply::error(&ApiError::new(405, "method_not_allowed", format!("use {allow} for this route")));
            r.headers.push(("allow", allow.to_string()));
            Ok(r)
        }
        Route::Inference(_) => Err(ApiError::internal("inference routed locally")),
    };
    result.unwrap_or_else(|e| Reply::error(&e))
}

/// Routes that read or change accounts, keys and records: after a graceful upgrade handed the
/// store to the new process, the old one refuses them (503 `upgrading`, retry: the retry
/// reaches the new process, since the old one no longer keeps connections alive).
fn needs_store(route: &Route) -> bool {
    !matches!(
        route,
        Route::Healthz | Route::Readyz | Route::Models | Route::Model(_) | Route::NotFound | Route::MethodNotAllowed(_)
    )
}

fn upgrading() -> Reply {
    let mut r = Reply::error(&ApiError::new(
        503,
        "upgrading",
        "this gateway process is handing over to its upgraded successor; retry the request",
    ));
    r.headers.push(("retry-after", "1".to_string()));
    r
}

/// A request body for the methods that carry one; GET and DELETE read none. JSON, so it is
/// checked like an inference body (UTF-8, nesting depth).
async fn local_body(session: &mut Session, ctx: &RequestCtx) -> Result<bytes::Bytes, ApiError> {
    let method = &session.req_header().method;
    if *method == http::Method::GET || *method == http::Method::DELETE {
        return Ok(bytes::Bytes::new());
    }
    let limits = &ctx.config.server.limits;
    let body = super::guard::read_body(session, LOCAL_BODY_LIMIT, limits).await?;
    super::guard::check_json(&body, limits.max_json_depth)?;
    Ok(body)
}

async fn admin_route(app: &App, session: &mut Session, ctx: &mut RequestCtx, route: Route) -> Result<Reply, ApiError> {
    admin::authorize(&ctx.config, header_str(session, "authorization").as_deref())?;
    let body = local_body(session, ctx).await?;
    let query = session.req_header().uri.query();
    let config = &ctx.config;
    match route {
        Route::AdminAccounts => admin::create_account(app, &body).await,
        Route::AdminAccountList => admin::list_accounts(app, config, query),
        Route::AdminAccount(id) => admin::get_account(app, config, id),
        Route::AdminAccountUpdate(id) => admin::update_account(app, config, id, &body).await,
        Route::AdminCredits(id) => admin::grant_credits(app, id, &body).await,
        Route::AdminKeys(id) => admin::create_key(app, config, id, &body).await,
        Route::AdminAudit => crate::api::audit::list(app, query),
        Route::AdminRecomputeTiers => admin::recompute_tiers(app, &body).await,
        Route::AdminRoutes => Ok(crate::routing::admin::routes(config)),
        Route::AdminBackup => crate::api::backup::backup(app, &body).await,
        _ => Err(ApiError::internal("not an admin route")),
    }
}

/// `/auth/*`: no credentials, rate limited by client address (the TCP peer; a reverse proxy
/// in front of the gateway would make every client one address).
async fn auth_route(app: &App, session: &mut Session, ctx: &mut RequestCtx, route: Route) -> Result<Reply, ApiError> {
    let addr = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
    let body = local_body(session, ctx).await?;
    match route {
        Route::AuthRegister => auth::register(app, &ctx.config, addr, &body).await,
        Route::AuthLogin => auth::login(app, &ctx.config, addr, &body).await,
        _ => Err(ApiError::internal("not an auth route")),
    }
}

/// Routes of a login token's account (or of `?account_id=` with the admin token). API keys
/// are refused.
async fn account_route(app: &App, session: &mut Session, ctx: &mut RequestCtx, route: Route) -> Result<Reply, ApiError> {
    let who = auth::principal(app, &ctx.config, header_str(session, "authorization").as_deref())?;
    let body = local_body(session, ctx).await?;
    let query = session.req_header().uri.query();
    let config = &ctx.config;
    // Routes on a key by id find its account from the key; the others from the caller.
    let account = |who: &Principal| who.account(app, query);
    match route {
        Route::Me => me::me(app, config, account(&who)?),
        Route::Usage => {
            let account = account(&who)?;
            // Charges are group-committed after their answers; commit what is queued so the
            // report includes every request already answered.
            if let Err(e) = app.writer.flush().await {
                log::warn!("usage report: store flush failed: {e}");
            }
            usage::usage(app, account, query)
        }
        Route::KeysList => keys::list(app, account(&who)?),
        Route::KeysCreate => keys::create(app, config, &who, account(&who)?, &body).await,
        Route::KeyUpdate(id) => keys::update(app, &who, id, &body).await,
        Route::KeyRevoke(id) => keys::revoke(app, &who, id).await,
        Route::ByokList => byok::list(app, config, account(&who)?),
        Route::ByokPut(provider) => byok::put(app, config, &who, account(&who)?, &provider, &body).await,
        Route::ByokDelete(provider) => byok::delete(app, config, &who, account(&who)?, &provider).await,
        _ => Err(ApiError::internal("not an account route")),
    }
}

fn readiness(app: &App) -> Reply {
    if app.handed_off() {
        Reply::json(503, &serde_json::json!({"status": "draining"}))
    } else if app.is_ready() {
        Reply::json(200, &serde_json::json!({"status": "ready"}))
    } else {
        Reply::json(503, &serde_json::json!({"status": "starting"}))
    }
}

pub fn header_str(session: &Session, name: &str) -> Option<String> {
    session.req_header().headers.get(name).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string())
}

/// The API key of an inference-side request. A JWT is never accepted here.
pub fn authenticate_key(app: &App, session: &Session, ctx: &mut RequestCtx) -> Result<Arc<KeyEntry>, ApiError> {
    let header = session.req_header().headers.get(http::header::AUTHORIZATION);
    let Some(value) = header.and_then(|v| v.to_str().ok()) else {
        return Err(ApiError::invalid_api_key(
            "missing API key: send Authorization: Bearer <your key>",
        ));
    };
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .unwrap_or(value)
        .trim();
    let prefix = &ctx.config.server.key_prefix;
    if !token.starts_with(prefix.as_str()) {
        let looks_like_jwt = token.split('.').count() == 3;
        return Err(ApiError::invalid_api_key(if looks_like_jwt {
            "a login token (JWT) is not accepted for inference: use an API key"
        } else {
            "invalid API key"
        }));
    }
    let now = crate::store::now_secs();
    match app.keys.lookup(token) {
        Some(key) if key.is_revoked() => Err(ApiError::invalid_api_key("this API key has been revoked")),
        Some(key) if key.is_expired(now) => Err(ApiError::invalid_api_key("this API key has expired")),
        // Checked on every request (one read-locked map probe), so suspension is immediate.
        Some(key) if app.account_suspended(key.account_id) => {
            Err(ApiError::invalid_api_key("the account of this API key is suspended"))
        }
        Some(key) => {
            key.touch(now);
            ctx.key = Some(key.clone());
            Ok(key)
        }
        None => Err(ApiError::invalid_api_key("invalid API key")),
    }
}

/// Names of the headers the gateway adds, parsed at compile time: inserting one costs no parse
/// and no copy of the name.
pub mod names {
    use http::HeaderName;
    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    pub const X_GENERATION_ID: HeaderName = HeaderName::from_static("x-generation-id");
    pub const X_TOLLGATE_OVERHEAD_US: HeaderName = HeaderName::from_static("x-tollgate-overhead-us");
    pub const X_TOLLGATE_PROVIDER: HeaderName = HeaderName::from_static("x-tollgate-provider");
    pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
}

/// A header value from text the gateway made (ids): never fails for them, but say so if it does.
pub fn text_value(text: &str) -> pingora::Result<http::HeaderValue> {
    http::HeaderValue::from_str(text)
        .map_err(|e| pingora::Error::because(pingora::ErrorType::InternalError, "header value", e))
}

/// The headers every response carries (CORS ones included). Leaves `resp` without its
/// spelling record (see `header_parts`).
pub fn stamp(resp: &mut ResponseHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    super::header_parts::edit_response(resp, |parts| stamp_parts(parts, ctx))
}

/// [`stamp`] on parts already taken out.
pub fn stamp_parts(parts: &mut http::response::Parts, ctx: &RequestCtx) -> pingora::Result<()> {
    use names::*;
    let headers = &mut parts.headers;
    headers.reserve(6);
    headers.insert(X_REQUEST_ID, text_value(&ctx.request_id)?);
    if !ctx.generation_id.is_empty() {
        headers.insert(X_GENERATION_ID, text_value(&ctx.generation_id)?);
    }
    headers.insert(X_TOLLGATE_OVERHEAD_US, http::HeaderValue::from(ctx.overhead_us));
    if let Some(rate) = &ctx.rate {
        headers.insert(X_RATELIMIT_LIMIT, http::HeaderValue::from(rate.limit));
        headers.insert(X_RATELIMIT_REMAINING, http::HeaderValue::from(rate.remaining));
        headers.insert(X_RATELIMIT_RESET, http::HeaderValue::from(rate.reset_secs));
    }
    super::cors::stamp(headers, ctx);
    Ok(())
}

/// Write a complete reply. Errors writing to a client that went away are only logged.
pub async fn write_reply(session: &mut Session, ctx: &mut RequestCtx, reply: Reply) {
    // The request stops counting against its address's cap before the client can see the
    // answer: a client sending one request at a time must never meet its own previous one.
    ctx.ip_slot = None;
    if ctx.error.is_none() {
        ctx.error = reply.error.clone();
    }
    ctx.status = reply.status;
    let mut resp = match ResponseHeader::build_no_case(reply.status, Some(8 + reply.headers.len())) {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot build a {} response: {e}", reply.status);
            return;
        }
    };
    ctx.overhead_us = ctx.overhead_now();
    let built = (|| -> pingora::Result<()> {
        // A 204 (a CORS preflight) carries neither (RFC 9110 §8.6).
        if reply.status != 204 {
            resp.insert_header(http::header::CONTENT_TYPE, reply.content_type)?;
            resp.insert_header(http::header::CONTENT_LENGTH, reply.body.len().to_string())?;
        }
        for (name, value) in &reply.headers {
            resp.insert_header(*name, value.as_str())?;
        }
        stamp(&mut resp, ctx)
    })();
    if let Err(e) = built {
        log::error!("cannot build response headers: {e}");
        return;
    }
    if let Err(e) = session.write_response_header(Box::new(resp), false).await {
        log::debug!("client went away before the response header: {e}");
        return;
    }
    if let Err(e) = session.write_response_body(Some(reply.body), true).await {
        log::debug!("client went away before the response body: {e}");
    }
}
