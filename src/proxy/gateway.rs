//! The one `ProxyHttp` implementation: a request's path through Pingora's phases.
//!
//! - `request_filter`: route; answer local routes; for inference authenticate, read and
//!   validate the body, plan the routes (`routing::plan`), reserve the worst-case cost over
//!   every candidate route, take the first attempt's route, rewrite the body for it and install
//!   it for replay.
//! - `upstream_peer`: a failover takes the next route and re-translates the body for it; then
//!   the provider's address, TLS, timeouts and the attempt's watchdog.
//! - `fail_to_connect` / `upstream_response_filter` / `error_while_proxy`: a refused
//!   connection, a 5xx or 429, or a timeout before anything reached the client fails over to
//!   the next route while the attempt budget and the deadline allow; the route's health
//!   counts it.
//! - `upstream_request_filter`: the provider's path, Host and credentials; the client's key
//!   and anything carrying our key prefix removed; `accept-encoding` stripped so bodies can
//!   be metered.
//! - `response_filter` / `response_body_filter`: rewrite `model`, meter usage (streams chunk
//!   by chunk, never buffered), wrap provider errors in the contract's shape.
//! - `logging`: settle or release the reservation, record the generation, metrics, access log.

use super::body_replay::ReplaySlot;
use super::ctx::{BodyMode, Inference, RequestCtx, Routing};
use super::watchdog::{self, TimeoutKind, Watchdog};
use super::{access_log, attempt, local, upstream_error};
use crate::routing::{plan, prefs};
use crate::api::error::{self, ApiError};
use crate::api::{self, Endpoint, Route};
use crate::app::App;
use crate::billing::{money, pricing};
use crate::metrics;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
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
    /// Boxed: Pingora keeps its CTX inline in the future it boxes for each request, in about
    /// three places (moved from phase to phase), and copies that whole future once. Inline,
    /// our 1.1 KB context grew it from ~13.4 KB to ~16.8 KB, past jemalloc's largest small
    /// size class (14 KiB), onto its slower large-allocation path.
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::new(RequestCtx::new(self.app.config.pin()))
    }

    /// No downstream modules. Pingora's default adds its response-compression module, off,
    /// to every request: four allocations and a pass over every response header and body
    /// chunk for nothing, since the gateway never compresses (and asks providers not to).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<RequestCtx>) -> Result<bool> {
        // `ctx.start` was set by `new_ctx`, which Pingora calls just before this phase.
        ctx.request_id = super::ctx::new_request_id();
        // Timeouts, CORS, the per-address cap, the path, the content type (guard.rs).
        let route = match super::guard::begin(session, ctx) {
            Ok(route) => route,
            Err(reply) => {
                local::write_reply(session, ctx, reply).await;
                super::guard::drain_after_refusal(session).await;
                return Ok(true);
            }
        };
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
        ctx: &mut Box<RequestCtx>,
    ) -> Result<Box<HttpPeer>> {
        if ctx.inference.is_none() || ctx.routing.is_none() {
            return Error::e_explain(pingora::ErrorType::InternalError, "no inference route chosen");
        }
        loop {
            let now = Instant::now();
            if let Err(e) = self.begin_attempt(ctx, now) {
                ctx.error = Some(e);
                return Error::e_explain(pingora::ErrorType::ConnectNoRoute, "no route left to try");
            }
            let (inf, routing) = (ctx.inference.as_ref().expect("checked"), ctx.routing.as_ref().expect("checked"));
            let attempt = routing.current.as_ref().expect("begin_attempt sets it");
            let provider = inf.provider.clone();
            let up = &provider.upstream;
            let t = inf.timeouts;
            let connect = t.connect.min(watchdog::remaining(attempt.deadline, now));
            let resolved = pingora::time::fast_timeout::fast_timeout(connect, self.resolver.resolve(&up.host, up.port)).await;
            let addr = match resolved {
                Ok(Ok(addr)) => addr,
                // An unresolvable provider is a failed route like a refused connection: the next
                // route may still answer.
                failure => {
                    let why = match failure {
                        Ok(Err(e)) => format!("resolving {}: {e}", up.host),
                        _ => format!("resolving {} timed out", up.host),
                    };
                    let next = self.can_fail_over(ctx, now);
                    attempt::failed(ctx, 0, why.clone(), next);
                    if next {
                        continue;
                    }
                    ctx.error = Some(ApiError::provider_unavailable(format!("cannot reach the provider ({why})")));
                    return Error::e_explain(pingora::ErrorType::ConnectNoRoute, why);
                }
            };
            let routing = ctx.routing.as_ref().expect("checked");
            let attempt = routing.current.as_ref().expect("begin_attempt sets it");
            let mut peer = HttpPeer::new(addr, up.tls, up.host.clone());
            peer.options.connection_timeout = Some(connect);
            peer.options.total_connection_timeout = Some(connect);
            // The watchdog enforces first byte, idle and total; Pingora's timeouts are only a
            // backstop behind it. Writes rarely wait, and a timeout's timer only starts when
            // one does.
            let backstop = t.first_byte.max(t.idle) + Duration::from_secs(1);
            peer.options.write_timeout = Some(backstop);
            // No idle timeout on pooled connections (Pingora's default): the pool already
            // drops one the provider closes, keeps at most its configured number (LRU), and a
            // stale one is retried on the same route (`error_while_proxy`). A timeout would
            // register a timer every time a connection goes back to the pool, i.e. per request.
            if up.tls {
                crate::tls::upstream_peer_options(&mut peer, &provider); // h2, CA bundle
            }
            // A per-read timeout only where HTTP/2 may be spoken: Pingora retires a hung h2
            // connection (shared by other streams) only on its own read timeout. Over HTTP/1
            // every response read waits (the provider has not answered yet), so it would
            // register a timer per request and per chunk, while the watchdog already bounds
            // each of those waits and a connection it abandons is never pooled.
            if peer.options.alpn != pingora::protocols::ALPN::H1 {
                peer.options.read_timeout = Some(backstop);
            }
            routing.watchdog.arm(now + t.first_byte, TimeoutKind::FirstByte, attempt.deadline);
            ctx.upstream_start = Some(now);
            return Ok(Box::new(peer));
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        _ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        // HTTP/1 in the clear: the request's head waits for its body (one segment).
        if peer.scheme == pingora::upstreams::peer::Scheme::HTTP {
            super::coalesce::cork_until_yield(fd);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        let Some(inf) = ctx.inference.as_ref() else { return Ok(()) };
        super::upstream_headers::prepare(req, inf, &ctx.config.server.key_prefix)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        if ctx.routing.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        let status = resp.status.as_u16();
        if status >= 500 || status == 429 {
            // Nothing has reached the client yet (this runs before the header is written), so
            // another route can still answer.
            let next = session.response_written().is_none() && self.can_fail_over(ctx, now);
            attempt::failed(ctx, status, format!("provider answered {status}"), next);
            if next {
                if let Some(r) = ctx.routing.as_mut() {
                    r.failing_over = true;
                }
                let mut e = Error::explain(pingora::ErrorType::HTTPStatus(status), "failing over to the next route");
                e.set_retry(true);
                return Err(e);
            }
            // The last route: its answer goes to the client as it is (502, or its 429).
            if let Some(r) = ctx.routing.as_mut() {
                r.current = None;
            }
        } else {
            attempt::answered(ctx, status, now);
        }
        if let (Some(inf), Some(r)) = (ctx.inference.as_ref(), ctx.routing.as_ref()) {
            let deadline = r.current.as_ref().map_or(r.plan.deadline, |a| a.deadline);
            r.watchdog.arm(now + inf.timeouts.idle, TimeoutKind::Idle, deadline);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        ctx.upstream_header = Some(Instant::now());
        let status = resp.status.as_u16();
        ctx.upstream_status = Some(status);
        let Some(inf) = ctx.inference.as_ref() else {
            ctx.status = status;
            ctx.overhead_us = ctx.overhead_now();
            return local::stamp(resp, ctx);
        };
        let ok = (200..300).contains(&status);
        let provider = inf.provider.name_header.clone();
        // Audio bytes pass through as they come, header untouched; only their count of input
        // characters, known from the request, is billed.
        let reframe = if ok && inf.endpoint == Endpoint::Speech {
            ctx.units = Some(crate::billing::pricing::Units::Chars(inf.info.chars));
            ctx.status = status;
            None
        } else {
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
                        &super::wire::client_id(inf.endpoint, inf.via_chat, &ctx.generation_id),
                    ))
                }
                (true, false) => BodyMode::Json(BytesMut::new()),
                (false, _) => BodyMode::Error(BytesMut::new()),
            };
            // The body is rewritten, so its length changes: re-frame it. A collected (JSON)
            // body goes out whole with its new length (the replay wrapper holds the header
            // until then); a stream is sent in chunks.
            let whole = matches!(ctx.body_mode, BodyMode::Json(_) | BodyMode::Error(_));
            if let Some(slot) = ctx.replay.as_ref() {
                slot.frame_whole_body(whole);
            }
            // A provider 5xx is our 502; its own 4xx passes through with its status.
            ctx.status = if status >= 500 { 502 } else { status };
            Some(Reframe {
                bad_gateway: status >= 500,
                json_error: !ok,
                chunked: (!whole || ctx.replay.is_none()) && session.req_header().version != http::Version::HTTP_2,
            })
        };
        ctx.overhead_us = ctx.overhead_now();
        super::header_parts::edit_response(resp, |parts| {
            if let Some(r) = reframe {
                r.apply(parts);
            }
            parts.headers.insert(local::names::X_TOLLGATE_PROVIDER, provider);
            local::stamp_parts(parts, ctx)
        })
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<Option<Duration>> {
        if ctx.inference.is_none() {
            return Ok(None);
        }
        // When bytes arrived with this call, if they did.
        let arrived = body.as_ref().is_some_and(|b| !b.is_empty()).then(Instant::now);
        if let Some(now) = arrived {
            if ctx.first_body_byte.is_none() {
                ctx.first_body_byte = Some(now);
            }
            // Every chunk restarts the idle timer.
            if let (Some(inf), Some(r)) = (ctx.inference.as_ref(), ctx.routing.as_ref()) {
                let deadline = r.current.as_ref().map_or(r.plan.deadline, |a| a.deadline);
                r.watchdog.arm(now + inf.timeouts.idle, TimeoutKind::Idle, deadline);
            }
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
            // The body's last bytes arrived with this call (a JSON answer usually comes in
            // one): the clock read for them is the end.
            ctx.upstream_end = Some(arrived.unwrap_or_else(Instant::now));
            // The last bytes are about to leave: see `local::write_reply`.
            ctx.ip_slot = None;
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Box<RequestCtx>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Refused, unreachable, TLS failure, connect timeout: the next route may answer.
        let retry = session.response_written().is_none() && self.can_fail_over(ctx, Instant::now());
        attempt::failed(ctx, 0, format!("cannot connect ({}) to {peer}", e.etype().as_str()), retry);
        if ctx.routing.is_some() {
            e.set_retry(retry);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Box<RequestCtx>,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        let now = Instant::now();
        if session.response_written().is_some() {
            // Something reached the client: never retried; a stream gets an error event.
            if let Some(kind) = TimeoutKind::from_error(&e) {
                ctx.error.get_or_insert_with(|| ApiError::upstream_timeout(kind.message()));
            }
            e.set_retry(false);
            return e;
        }
        let Some(routing) = ctx.routing.as_mut() else {
            e.retry.decide_reuse(client_reused);
            return e;
        };
        if std::mem::take(&mut routing.failing_over) {
            // upstream_response_filter turned a 5xx/429 into this error; already recorded.
            e.set_retry(true);
            return e;
        }
        if let Some(kind) = TimeoutKind::from_error(&e) {
            // Past the request's deadline there is nothing left to try (`has_next` knows).
            let retry = self.can_fail_over(ctx, now);
            attempt::failed(ctx, 0, kind.message().to_string(), retry);
            if !retry {
                ctx.error = Some(ApiError::upstream_timeout(kind.message()));
            }
            e.set_retry(retry);
            return e;
        }
        // A pooled connection that turned out stale: the provider never saw the request, so
        // the same route again, without counting it against the route.
        if matches!(e.retry, pingora::RetryType::ReusedOnly) && client_reused {
            routing.retry_same = true;
            e.set_retry(true);
            return e;
        }
        if *e.esource() == pingora::ErrorSource::Upstream {
            let retry = self.can_fail_over(ctx, now);
            attempt::failed(ctx, 0, format!("the provider failed: {}", e.etype().as_str()), retry);
            e.set_retry(retry);
            return e;
        }
        e.set_retry(false);
        e
    }

    /// A failover is routine: it is counted (`tollgate_failovers_total`, the route's attempts)
    /// and recorded in the generation, so Pingora's warning per retry becomes a debug line.
    fn suppress_proxy_warn_log(&self, session: &Session, ctx: &Box<RequestCtx>, e: &Error, context: ProxyWarnLogContext) -> bool {
        if matches!(context, ProxyWarnLogContext::UpstreamRetry) && ctx.routing.is_some() {
            log::debug!("failing over: {e}, {}", self.request_summary(session, ctx));
            return true;
        }
        false
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<RequestCtx>,
    ) -> FailToProxy {
        if let Some(slot) = ctx.replay.as_ref() {
            slot.restore(session);
        }
        let api_error = ctx.error.clone().unwrap_or_else(|| upstream_error::classify(e));
        let code = api_error.status;
        if session.response_written().is_some() {
            ctx.ip_slot = None;
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

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<RequestCtx>) {
        if let Some(slot) = ctx.replay.take() {
            slot.restore(session);
        }
        if let Some(r) = ctx.routing.as_ref() {
            r.watchdog.disarm();
        }
        attempt::finish(ctx, e);
        if ctx.stream_started {
            metrics::ACTIVE_STREAMS.dec();
        }
        if ctx.status == 0 {
            ctx.status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        }
        let end = Instant::now();
        let end_unix_ms = crate::store::now_millis();
        let settled = super::settle::finish(&self.app, ctx, e, end, end_unix_ms);
        access_log::record(&self.app, session, ctx, &settled, end, end_unix_ms);
    }
}

/// How an inference response's header changes when its body is rewritten.
#[derive(Clone, Copy)]
struct Reframe {
    /// A provider 5xx, answered as our 502.
    bad_gateway: bool,
    /// A provider error, whose body is rewritten into the contract's JSON shape.
    json_error: bool,
    /// The rewritten body goes out in chunks (its length is not known up front).
    chunked: bool,
}

impl Reframe {
    fn apply(self, parts: &mut http::response::Parts) {
        if self.bad_gateway {
            parts.status = http::StatusCode::BAD_GATEWAY;
        }
        let headers = &mut parts.headers;
        // A provider answers with a handful of headers, rarely one of these: one pass over
        // them costs less than a hashed removal per name.
        if headers.keys().any(|name| HIDDEN_UPSTREAM_HEADERS.contains(name)) {
            for name in &HIDDEN_UPSTREAM_HEADERS {
                headers.remove(name);
            }
        }
        headers.remove(http::header::CONTENT_LENGTH);
        headers.reserve(8);
        if self.json_error {
            headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        }
        if self.chunked {
            headers.insert(http::header::TRANSFER_ENCODING, http::HeaderValue::from_static("chunked"));
        }
    }
}

/// Upstream headers that describe the provider's account or framing, not the answer.
static HIDDEN_UPSTREAM_HEADERS: [http::HeaderName; 5] = [
    http::HeaderName::from_static("openai-organization"),
    http::HeaderName::from_static("openai-project"),
    http::header::SET_COOKIE,
    http::HeaderName::from_static("x-request-id"),
    http::header::CONTENT_ENCODING,
];

impl Gateway {
    /// Auth, body, model, reservation, rewrite. `Err` is the reply to send instead.
    async fn begin_inference(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        endpoint: Endpoint,
    ) -> std::result::Result<(), api::Reply> {
        // Also leaves the key in `ctx.key`.
        let key = local::authenticate_key(&self.app, session, ctx).map_err(api::Reply::from)?;
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
        let body = super::guard::read_body(session, limit, &ctx.config.server.limits).await.map_err(api::Reply::from)?;
        if endpoint != Endpoint::Transcriptions {
            super::guard::check_json(&body, ctx.config.server.limits.max_json_depth).map_err(api::Reply::from)?;
        }
        let content_type = local::header_str(session, "content-type").unwrap_or_default();
        // `models` and `provider` are the gateway's own options: read here, never sent upstream.
        let (body, opts) = if endpoint == Endpoint::Transcriptions {
            (body, prefs::RoutingOpts::default())
        } else {
            let (changed, opts) = prefs::extract(&body).map_err(api::Reply::from)?;
            (changed.map(Bytes::from).unwrap_or(body), opts)
        };
        let info = super::endpoints::parse(endpoint, &body, &content_type).map_err(api::Reply::from)?;
        let (candidates, primary) =
            plan::build(&ctx.config, &key, endpoint, &info, &body, &opts).map_err(api::Reply::from)?;

        // Reserve the worst case before the upstream is called (see endpoints::worst_units), at
        // the dearest route the request might end up on: failover never overspends. A request
        // on the account's own provider key (BYOK) costs the flat routing fee.
        let markup_bps = self.app.markup_bps_in(&ctx.config, key.account_id);
        let mut worst = 0;
        let mut usable = Vec::with_capacity(candidates.len());
        for (i, c) in candidates.into_iter().enumerate() {
            let cost = match self.app.byok_key(key.account_id, &c.provider.name) {
                Some(_) => ctx.config.billing.byok_fee,
                None => match super::endpoints::worst_units(endpoint, &info, &c.route.model) {
                    Ok(units) => pricing::cost(&c.route.model, &units, markup_bps),
                    Err(e) if i == 0 => return Err(e.into()),
                    // A fallback that cannot price this request (an image size it lacks).
                    Err(_) => continue,
                },
            };
            worst = worst.max(cost);
            usable.push(c);
        }
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

        let deadline = ctx.start + primary.total_timeout.unwrap_or(ctx.config.routing.total_timeout);
        let max_attempts = primary.max_attempts.unwrap_or(ctx.config.routing.max_attempts);
        let first = usable.first().map(|c| (c.provider.clone(), c.route.timeouts));
        let Some((first_provider, first_timeouts)) = first else {
            return Err(ApiError::model_not_found(&info.model).into());
        };
        let mut routing = Routing {
            plan: plan::Plan::new(usable, max_attempts, deadline),
            current: None,
            log: Vec::new(),
            prepared: true,
            retry_same: false,
            failing_over: false,
            watchdog: Arc::new(Watchdog::default()),
            client_body: body.clone(),
            content_type,
            primary: primary.slug.clone(),
        };
        let mut inf = Inference {
            endpoint,
            model: primary,
            provider: first_provider,
            info,
            path: String::new(),
            json_mode: false,
            via_chat: false,
            content_type: None,
            request_bytes: body.len(),
            upstream_body_len: 0,
            byok_key: None,
            markup_bps,
            reservation: Some(reservation),
            spend_hold: Some(spend_hold),
            account_hold: Some(account_hold),
            timeouts: first_timeouts,
        };
        let upstream_body = attempt::next(&self.app, &mut routing, &mut inf, key.account_id, Instant::now())
            .map_err(api::Reply::from)?;
        ctx.replay = Some(ReplaySlot::install_with(session, upstream_body, Some(routing.watchdog.clone())));
        ctx.inference = Some(inf);
        ctx.routing = Some(routing);
        Ok(())
    }

    /// Whether the request may fail over after the attempt in progress: budget, deadline and
    /// an untried candidate left.
    fn can_fail_over(&self, ctx: &RequestCtx, now: Instant) -> bool {
        ctx.routing.as_ref().is_some_and(|r| r.plan.has_next(now))
    }

    /// Start an upstream attempt: the one `request_filter` prepared, the same route again
    /// after a stale pooled connection, or the next route (re-translating the body for it).
    fn begin_attempt(&self, ctx: &mut RequestCtx, now: Instant) -> std::result::Result<(), ApiError> {
        let account_id = ctx.key.as_ref().map_or(0, |k| k.account_id);
        let Some(routing) = ctx.routing.as_mut() else {
            return Err(ApiError::internal("no inference route chosen"));
        };
        let has_current = routing.current.is_some();
        if std::mem::take(&mut routing.prepared) && has_current {
            return Ok(());
        }
        if std::mem::take(&mut routing.retry_same) && has_current {
            if let Some(a) = routing.current.as_mut() {
                ctx.upstream_wait += now.saturating_duration_since(a.started);
                a.started = now;
            }
            return Ok(());
        }
        // A failover. An attempt still open here ended without a verdict recorded: count it.
        if has_current {
            attempt::failed(ctx, 0, "retried".into(), true);
        }
        let (Some(routing), Some(inf)) = (ctx.routing.as_mut(), ctx.inference.as_mut()) else {
            return Err(ApiError::internal("no inference route chosen"));
        };
        let body = attempt::next(&self.app, routing, inf, account_id, now)?;
        if let Some(slot) = ctx.replay.as_ref() {
            slot.set_body(body);
        }
        metrics::FAILOVERS.with_label_values(&[routing.primary.as_str()]).inc();
        ctx.upstream_status = None;
        ctx.upstream_header = None;
        ctx.first_body_byte = None;
        ctx.upstream_end = None;
        ctx.body_mode = BodyMode::Untouched;
        ctx.error = None;
        Ok(())
    }

    /// The collected JSON or error body, rewritten for the client.
    fn finish_collected(&self, ctx: &mut RequestCtx) -> Bytes {
        let Some(inf) = ctx.inference.as_ref() else { return Bytes::new() };
        match std::mem::take(&mut ctx.body_mode) {
            BodyMode::Json(buf) => {
                let client_id = super::wire::client_id(inf.endpoint, inf.via_chat, &ctx.generation_id);
                let answer = super::wire::response(
                    inf.provider.kind,
                    inf.endpoint,
                    &buf,
                    &inf.model.slug,
                    &inf.model,
                    &inf.info,
                    inf.json_mode,
                    inf.via_chat,
                    &client_id,
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
                // The body carries the gateway's id wherever the provider's had one; the
                // provider's is kept for the record.
                ctx.body_id = answer.carries_id.then_some(client_id);
                ctx.upstream_id = answer.upstream_id;
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
