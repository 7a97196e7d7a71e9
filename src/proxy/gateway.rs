//! The one `ProxyHttp` implementation: a request's path through Pingora's phases.
//!
//! - `request_filter`: route; answer local routes; for inference authenticate, read and
//!   validate the body, pick the model, reserve the worst-case cost, rewrite the body and
//!   install it for replay.
//! - `upstream_peer`: the provider's address, TLS and timeouts.
//! - `upstream_request_filter`: the provider's path, Host and credentials; the client's key
//!   and anything carrying our key prefix removed; `accept-encoding` stripped so bodies can
//!   be metered.
//! - `response_filter` / `response_body_filter`: rewrite `model`, meter usage (streams chunk
//!   by chunk, never buffered), wrap provider errors in the contract's shape.
//! - `logging`: settle or release the reservation, record the generation, metrics, access log.

use super::body_replay::ReplaySlot;
use super::ctx::{BodyMode, Inference, RequestCtx};
use super::{access_log, local, read_body::read_body, upstream_error};
use crate::api::error::{self, ApiError};
use crate::api::{self, Endpoint, Route};
use crate::app::App;
use crate::billing::{money, pricing};
use crate::metrics;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest upstream JSON body the gateway collects to rewrite (non-streaming responses and
/// provider errors). Completions are far smaller; this only bounds a misbehaving upstream.
const MAX_COLLECTED_RESPONSE: usize = 64 * 1024 * 1024;

pub struct Gateway {
    pub app: Arc<App>,
    pub resolver: super::resolve::Resolver,
}

impl Gateway {
    pub fn new(app: Arc<App>) -> Gateway {
        Gateway { app, resolver: Default::default() }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.app.config.pin())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.start = Instant::now();
        ctx.request_id = super::ctx::new_request_id();
        let header = session.req_header();
        let route = api::route(&header.method, header.uri.path());
        ctx.route_label = route.label();
        let outcome = match route {
            Route::Inference(endpoint) => self.begin_inference(session, ctx, endpoint).await,
            other => Err(local::answer(&self.app, session, ctx, other).await),
        };
        match outcome {
            // Proceed upstream.
            Ok(()) => Ok(false),
            Err(reply) => {
                local::write_reply(session, ctx, reply).await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let inf = ctx.inference.as_ref().ok_or_else(|| {
            Error::explain(pingora::ErrorType::InternalError, "no inference route chosen")
        })?;
        let up = &inf.provider.upstream;
        ctx.upstream_start = Some(Instant::now());
        let addr = self.resolver.resolve(&up.host, up.port).await.map_err(|e| {
            Error::because(pingora::ErrorType::ConnectNoRoute, format!("resolving {}", up.host), e)
        })?;
        let mut peer = HttpPeer::new(addr, up.tls, up.host.clone());
        peer.options.connection_timeout = Some(inf.provider.connect_timeout);
        peer.options.read_timeout = Some(inf.provider.read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(inf) = ctx.inference.as_ref() else { return Ok(()) };
        super::upstream_headers::prepare(req, inf, &ctx.config.server.key_prefix)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_header = Some(Instant::now());
        let status = resp.status.as_u16();
        ctx.upstream_status = Some(status);
        if let Some(inf) = ctx.inference.as_ref() {
            let ok = (200..300).contains(&status);
            // Audio bytes pass through as they come; only their count of input characters,
            // known from the request, is billed.
            if ok && inf.endpoint == Endpoint::Speech {
                ctx.units = Some(crate::billing::pricing::Units::Chars(inf.info.chars));
                ctx.status = status;
                ctx.overhead_us = ctx.overhead_now();
                local::stamp(resp, ctx)?;
                return Ok(());
            }
            // A provider that answers a stream request with plain JSON gets its JSON rewritten
            // rather than fed to the SSE decoder, which would drop it.
            let is_sse = resp
                .headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            ctx.body_mode = match (ok, inf.info.stream && is_sse) {
                (true, true) => {
                    metrics::ACTIVE_STREAMS.inc();
                    ctx.stream_started = true;
                    BodyMode::Stream(super::wire::stream_meter(
                        inf.provider.kind,
                        &inf.model.slug,
                        inf.info.include_usage,
                        inf.via_chat,
                    ))
                }
                (true, false) => BodyMode::Json(BytesMut::new()),
                (false, _) => BodyMode::Error(BytesMut::new()),
            };
            // A provider 5xx is our 502; its own 4xx passes through with its status.
            let client_status = if status >= 500 { 502 } else { status };
            if client_status != status {
                resp.set_status(client_status)?;
            }
            if !ok {
                resp.insert_header("content-type", "application/json")?;
            }
            // The body is rewritten, so its length changes: re-frame it.
            resp.remove_header(&http::header::CONTENT_LENGTH);
            if session.req_header().version != http::Version::HTTP_2 {
                resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            }
            for name in HIDDEN_UPSTREAM_HEADERS {
                resp.remove_header(*name);
            }
        }
        ctx.status = resp.status.as_u16();
        ctx.overhead_us = ctx.overhead_now();
        local::stamp(resp, ctx)?;
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if ctx.inference.is_none() {
            return Ok(None);
        }
        if ctx.first_body_byte.is_none() && body.as_ref().is_some_and(|b| !b.is_empty()) {
            ctx.first_body_byte = Some(Instant::now());
        }
        match &mut ctx.body_mode {
            BodyMode::Untouched => {}
            BodyMode::Stream(meter) => {
                let mut out = BytesMut::new();
                if let Some(chunk) = body.as_ref() {
                    meter.on_bytes(chunk, &mut out);
                }
                if end_of_stream {
                    meter.on_end(&mut out);
                }
                *body = (!out.is_empty()).then(|| out.freeze());
            }
            BodyMode::Json(buf) | BodyMode::Error(buf) => {
                if let Some(chunk) = body.take() {
                    if buf.len() + chunk.len() > MAX_COLLECTED_RESPONSE {
                        return Error::e_explain(
                            pingora::ErrorType::InvalidHTTPHeader,
                            "upstream response too large",
                        );
                    }
                    buf.extend_from_slice(&chunk);
                }
                if end_of_stream {
                    *body = Some(self.finish_collected(ctx));
                }
            }
        }
        if end_of_stream {
            ctx.upstream_end = Some(Instant::now());
        }
        Ok(None)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        _ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        // A stale pooled connection fails before the upstream saw the request: safe to retry
        // while nothing has reached the client yet. Pingora's default never retries a POST.
        if session.response_written().is_none() {
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if let Some(slot) = ctx.replay.as_ref() {
            slot.restore(session);
        }
        let api_error = ctx.error.clone().unwrap_or_else(|| upstream_error::classify(e));
        let code = api_error.status;
        if session.response_written().is_some() {
            // The stream already started: one error event, then the end.
            if ctx.stream_started {
                let _ = session.write_response_body(Some(api_error.sse_event()), true).await;
            }
        } else {
            ctx.status = code;
            local::write_reply(session, ctx, api::Reply::error(&api_error)).await;
        }
        ctx.error = Some(api_error);
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(slot) = ctx.replay.take() {
            slot.restore(session);
        }
        if ctx.stream_started {
            metrics::ACTIVE_STREAMS.dec();
        }
        if ctx.status == 0 {
            ctx.status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        }
        let settled = super::settle::finish(&self.app, ctx, e);
        access_log::record(&self.app, session, ctx, &settled);
    }
}

/// Upstream headers that describe the provider's account or framing, not the answer.
const HIDDEN_UPSTREAM_HEADERS: &[&str] = &[
    "openai-organization",
    "openai-project",
    "set-cookie",
    "x-request-id",
    "content-encoding",
];

impl Gateway {
    /// Auth, body, model, reservation, rewrite. `Err` is the reply to send instead.
    async fn begin_inference(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        endpoint: Endpoint,
    ) -> std::result::Result<(), api::Reply> {
        let key = local::authenticate_key(&self.app, session, ctx).map_err(api::Reply::from)?;
        ctx.key = Some(key.clone());
        ctx.generation_id = crate::store::new_generation_id();
        // Refused before the body is even read: the cheapest answer to a flood.
        if let Some(limit) = key.rate_limit_rpm {
            let decision = self.app.rate.check(key.id, limit, Instant::now());
            ctx.rate = Some(decision);
            if !decision.allowed {
                let mut e = ApiError::new(
                    429,
                    "rate_limit_exceeded",
                    format!(
                        "this key allows {limit} requests per minute; retry in {} s",
                        decision.retry_after_secs
                    ),
                );
                e.retry_after = Some(decision.retry_after_secs);
                return Err(e.into());
            }
        }

        if let Some(limit) = key.tokens_per_minute {
            let d = self.app.tpm.check_tpm(key.id, limit, Instant::now());
            if !d.allowed {
                let mut e = ApiError::new(
                    429,
                    "rate_limit_exceeded",
                    format!("this key allows {limit} tokens per minute; retry in {} s", d.retry_after_secs),
                );
                e.retry_after = Some(d.retry_after_secs);
                return Err(e.into());
            }
        }

        let limit = endpoint.body_limit(ctx.config.server.max_body_bytes);
        let body = read_body(session, limit).await.map_err(api::Reply::from)?;
        let content_type = local::header_str(session, "content-type").unwrap_or_default();
        let info = super::endpoints::parse(endpoint, &body, &content_type).map_err(api::Reply::from)?;
        let (model, provider) = match ctx.config.route(&info.model) {
            Some((m, p)) => (m.clone(), p.clone()),
            None => return Err(ApiError::model_not_found(&info.model).into()),
        };
        if !model.serves(endpoint.label()) {
            return Err(ApiError::invalid_request(format!(
                "model '{}' does not serve /{}; it serves: {}",
                model.slug,
                endpoint.upstream_path().trim_start_matches('/'),
                model.endpoints.join(", ")
            ))
            .with_param("model")
            .into());
        }
        if !key.permits_model(&model.slug, &model.platforms) {
            return Err(ApiError::new(403, "model_not_allowed", format!("this key may not use '{}'", model.slug))
                .with_param("model")
                .into());
        }

        // Reserve the worst case before the upstream is called (see endpoints::worst_units).
        // A request on the account's own provider key (BYOK) costs the flat routing fee.
        let byok_key = self.app.byok_key(key.account_id, &provider.name);
        let markup_bps = self.app.markup_bps_in(&ctx.config, key.account_id);
        let worst_units = super::endpoints::worst_units(endpoint, &info, &model).map_err(api::Reply::from)?;
        let worst = match byok_key {
            Some(_) => ctx.config.billing.byok_fee,
            None => pricing::cost(&model, &worst_units, markup_bps),
        };
        let now = crate::store::now_secs();
        let cap_error = |cap: crate::limits::CapExceeded| {
            api::Reply::from(ApiError::new(
                402,
                "spend_cap_exceeded",
                format!(
                    "the {}'s {} spend cap of {} USD is reached ({} USD spent or in flight); it resets at unix time {}",
                    cap.scope,
                    cap.period,
                    money::format_usd(cap.cap),
                    money::format_usd(cap.spent),
                    cap.resets_at
                ),
            ))
        };
        let spend_hold = self.app.caps.reserve(&key, worst, now).map_err(cap_error)?;
        let account_hold = self.app.reserve_account(key.account_id, worst, now).map_err(cap_error)?;
        let reservation = self
            .app
            .ledger
            .reserve(key.account_id, worst, ctx.config.billing.overdraft)
            .map_err(|_| {
                api::Reply::from(ApiError::insufficient_balance(format!(
                    "balance cannot cover this request (up to {} USD is reserved until it is answered); add credits or lower max_tokens",
                    money::format_usd(worst),
                )))
            })?;

        let upstream = super::wire::request(provider.kind, endpoint, &body, &info, &model, &content_type)
            .map_err(api::Reply::from)?;
        let upstream_body_len = upstream.body.len();
        ctx.replay = Some(ReplaySlot::install(session, Bytes::from(upstream.body)));
        ctx.inference = Some(Inference {
            endpoint,
            model,
            provider,
            info,
            path: upstream.path,
            json_mode: upstream.json_mode,
            via_chat: upstream.via_chat,
            content_type: upstream.content_type,
            request_bytes: body.len(),
            upstream_body_len,
            byok_key,
            markup_bps,
            reservation: Some(reservation),
            spend_hold: Some(spend_hold),
            account_hold: Some(account_hold),
        });
        Ok(())
    }

    /// The collected JSON or error body, rewritten for the client.
    fn finish_collected(&self, ctx: &mut RequestCtx) -> Bytes {
        let Some(inf) = ctx.inference.as_ref() else { return Bytes::new() };
        match std::mem::take(&mut ctx.body_mode) {
            BodyMode::Json(buf) => {
                let answer = super::wire::response(
                    inf.provider.kind,
                    inf.endpoint,
                    &buf,
                    &inf.model.slug,
                    &inf.model,
                    &inf.info,
                    inf.json_mode,
                    inf.via_chat,
                );
                let answer = match answer {
                    Ok(a) => a,
                    Err(e) => {
                        // The header (2xx) is already on its way; the body says what failed
                        // and nothing is charged.
                        ctx.upstream_status = Some(502);
                        let body = e.body();
                        ctx.error = Some(e);
                        return body;
                    }
                };
                ctx.body_id = answer.id;
                ctx.units = Some(match answer.units {
                    Some(u) => u,
                    None => {
                        // No usage reported: count what we can see, and say so.
                        ctx.usage_estimated = true;
                        super::wire::estimated_units(inf.endpoint, &inf.info, inf.request_bytes, &answer.body)
                    }
                });
                Bytes::from(answer.body)
            }
            BodyMode::Error(buf) => {
                let status = ctx.upstream_status.unwrap_or(502);
                let mut e = error::from_provider(status, &buf);
                if status >= 500 {
                    e = ApiError::upstream_error(format!("provider answered {status}: {}", e.message));
                }
                let body = e.body();
                ctx.error = Some(e);
                body
            }
            other => {
                ctx.body_mode = other;
                Bytes::new()
            }
        }
    }
}
