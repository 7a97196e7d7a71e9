//! One upstream attempt at a time: picking the route, translating the request for it, and
//! recording how each attempt ended (for health, metrics and the generation record).

use super::ctx::{Attempt, Inference, RequestCtx, Routing};
use super::watchdog::earliest;
use crate::api::error::ApiError;
use crate::app::App;
use crate::store::records::AttemptRecord;
use bytes::Bytes;
use std::time::Instant;

/// Take the next candidate and translate the request for it: sets `inf`'s per-route fields
/// and `routing.current`, and returns the body to send. A candidate whose wire format refuses
/// the request is skipped (not an attempt); the last such refusal is the answer when nothing
/// else is left.
pub fn next(app: &App, routing: &mut Routing, inf: &mut Inference, account_id: u64, now: Instant) -> Result<Bytes, ApiError> {
    let mut refused: Option<ApiError> = None;
    loop {
        let Some(pick) = routing.plan.next(now) else {
            return Err(refused.unwrap_or_else(|| {
                if now >= routing.plan.deadline {
                    ApiError::upstream_timeout("the request's deadline passed before a route could answer")
                } else {
                    ApiError::provider_unavailable("no route of this model is available")
                }
            }));
        };
        let c = &routing.plan.candidates[pick.index];
        let translated = super::wire::request(
            c.provider.kind,
            inf.endpoint,
            &routing.client_body,
            &inf.info,
            &c.route.model,
            &routing.content_type,
        );
        let up = match translated {
            Ok(up) => up,
            Err(e) => {
                routing.plan.unpick();
                refused = Some(e);
                continue;
            }
        };
        inf.model = c.route.model.clone();
        inf.provider = c.provider.clone();
        inf.path = up.path;
        inf.json_mode = up.json_mode;
        inf.via_chat = up.via_chat;
        inf.content_type = up.content_type;
        inf.upstream_body_len = up.body.len();
        inf.byok_key = app.byok_key(account_id, &c.provider.name);
        inf.timeouts = c.route.timeouts;
        let deadline = earliest(routing.plan.deadline, c.route.timeouts.attempt_total.map(|t| now + t));
        routing.current = Some(Attempt { index: pick.index, guard: pick.guard, started: now, deadline });
        return Ok(Bytes::from(up.body));
    }
}

fn record(routing: &Routing, a: &Attempt, status: u16, end: Instant, error: Option<String>) -> AttemptRecord {
    let c = &routing.plan.candidates[a.index];
    AttemptRecord {
        model: c.route.model.slug.clone(),
        provider: c.route.provider.clone(),
        upstream_model: c.route.model.upstream_model.clone(),
        status,
        latency_ms: end.saturating_duration_since(a.started).as_millis() as u64,
        error,
    }
}

fn count(routing: &Routing, a: &Attempt, result: &str) {
    routing.plan.candidates[a.index].route.health.count_attempt(result);
}

/// The attempt in progress failed in a way that counts against its route (connect error,
/// 5xx, 429, timeout): health, metrics and the log. With `failing_over`, its time is upstream
/// time the gateway's overhead leaves out (the last attempt's is measured as usual).
pub fn failed(ctx: &mut RequestCtx, status: u16, error: String, failing_over: bool) {
    let now = Instant::now();
    let params = ctx.config.routing.health;
    let Some(routing) = ctx.routing.as_mut() else { return };
    let Some(mut a) = routing.current.take() else { return };
    a.guard.failure(&params, now);
    count(routing, &a, "failure");
    let rec = record(routing, &a, status, now, Some(error));
    routing.log.push(rec);
    if failing_over {
        ctx.upstream_wait += now.saturating_duration_since(a.started);
    }
}

/// The provider answered with a status that is not the route's fault (2xx, or a 4xx other
/// than 429): the route is healthy.
pub fn answered(ctx: &mut RequestCtx, status: u16, now: Instant) {
    let Some(routing) = ctx.routing.as_mut() else { return };
    let Some(a) = routing.current.as_mut() else { return };
    a.guard.success(Some(now.saturating_duration_since(a.started)));
    let result = if (200..300).contains(&status) { "success" } else { "client_error" };
    let a = routing.current.as_ref().expect("checked above");
    count(routing, a, result);
}

/// The request is over: the last attempt joins the log.
pub fn finish(ctx: &mut RequestCtx, e: Option<&pingora::Error>) {
    let Some(routing) = ctx.routing.as_mut() else { return };
    let Some(a) = routing.current.take() else { return };
    let end = ctx.upstream_end.unwrap_or_else(Instant::now);
    let status = ctx.upstream_status.unwrap_or(0);
    let ok = (200..300).contains(&status);
    let error = match (&ctx.error, e) {
        (Some(err), _) => Some(err.message.clone()),
        (None, Some(e)) => Some(e.etype().as_str().to_string()),
        (None, None) if !ok && status != 0 => Some(format!("provider answered {status}")),
        _ => None,
    };
    if !a.guard.is_resolved() && (status == 0 || e.is_some()) {
        // Ended before any header (a client that went away, a gateway error): no verdict on
        // the route; the guard's drop frees a probe slot.
        count(routing, &a, "abandoned");
    }
    let rec = record(routing, &a, status, end, error);
    routing.log.push(rec);
}
