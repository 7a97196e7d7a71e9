//! The end of an inference request: charge exactly what the provider reported, or nothing.
//!
//! Only a successful upstream response is charged. A provider 5xx, a timeout, a refused
//! connection or a gateway error releases the reservation; the request is still recorded as
//! an unbilled generation so `/generation` can explain it.

use super::ctx::{BodyMode, RequestCtx};
use crate::app::App;
use crate::billing::money::Nano;
use crate::billing::pricing::{self, Units};
use crate::metering::{estimate, usage::Usage};
use crate::store::records::GenerationRecord;
use pingora::Error;

/// What the request cost, for the access log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Settled {
    pub usage: Usage,
    pub cost: Nano,
    pub billed: bool,
    pub estimated: bool,
}

/// `end`: when the request ended, and `end_unix_ms` the same moment in Unix milliseconds (the
/// logging phase's clock reads, shared with the access log).
pub fn finish(app: &App, ctx: &mut RequestCtx, e: Option<&Error>, end: std::time::Instant, end_unix_ms: u64) -> Settled {
    let Some(inf) = ctx.inference.as_mut() else { return Settled::default() };
    let reservation = inf.reservation.take();
    let spend_hold = inf.spend_hold.take();
    let account_hold = inf.account_hold.take();
    let Some(key) = ctx.key.clone() else { return Settled::default() };

    // A stream's usage comes from its meter; a stream cut before usage arrived is estimated
    // from what was produced.
    if let BodyMode::Stream(meter) = &ctx.body_mode {
        if ctx.body_id.is_none() && meter.response_id().is_some() {
            // The chunks carried the gateway's id in place of the provider's.
            ctx.body_id = Some(super::wire::client_id(inf.endpoint, inf.via_chat, &ctx.generation_id));
        }
        if ctx.upstream_id.is_none() {
            ctx.upstream_id = meter.upstream_id().map(str::to_string);
        }
        match meter.usage() {
            Some(u) => ctx.units = Some(Units::Tokens(u)),
            None => {
                ctx.units = Some(Units::Tokens(Usage {
                    prompt_tokens: estimate::tokens_from_chars(inf.request_bytes as u64),
                    completion_tokens: meter.estimated_completion_tokens(),
                    ..Default::default()
                }));
                ctx.usage_estimated = true;
            }
        }
    }

    let upstream_ok = ctx.upstream_status.is_some_and(|s| (200..300).contains(&s));
    let latency_ms = end.saturating_duration_since(ctx.start).as_millis() as u64;
    let model = &inf.model;
    let provider = &inf.provider;
    let mut record = GenerationRecord {
        id: ctx.generation_id.clone(),
        body_id: ctx.body_id.take().unwrap_or_default(),
        upstream_id: ctx.upstream_id.take().unwrap_or_default(),
        account_id: key.account_id,
        key_id: key.id,
        model: model.slug.clone(),
        provider: provider.name.clone(),
        tokens_prompt: 0,
        tokens_completion: 0,
        total_cost_nano: 0,
        latency_ms,
        status: ctx.status,
        streamed: inf.info.stream,
        usage_estimated: false,
        created_at: end_unix_ms / 1000,
        attempts: 1,
        error: None,
        attempt_log: Vec::new(),
    };
    if let Some(r) = ctx.routing.as_mut() {
        record.attempt_log = std::mem::take(&mut r.log);
        record.attempts = record.attempt_log.len().max(1) as u32;
    }

    if let (Some(start), Some(header)) = (ctx.upstream_start, ctx.upstream_header) {
        let end = ctx.upstream_end.unwrap_or_else(std::time::Instant::now);
        let handles = model.metrics.get(model);
        handles.upstream_latency.observe(end.duration_since(start));
        let first = ctx.first_body_byte.unwrap_or(header);
        handles.ttft.observe(first.duration_since(start));
    }

    match (upstream_ok, ctx.units, reservation) {
        (true, Some(units), Some(reservation)) => {
            // A request on the account's own provider key pays the flat routing fee instead.
            let cost = match inf.byok_key {
                Some(_) => ctx.config.billing.byok_fee,
                None => pricing::cost(model, &units, inf.markup_bps),
            };
            let usage = units.tokens();
            record.tokens_prompt = usage.prompt_tokens;
            record.tokens_completion = usage.completion_tokens;
            record.total_cost_nano = cost;
            record.usage_estimated = ctx.usage_estimated;
            if ctx.status == 0 || ctx.status >= 400 {
                // The client saw an error after the stream started (cut, or it went away):
                // what was produced is still billed, and the record says why it ended.
                record.error = ctx.error.as_ref().map(|e| e.message.clone()).or_else(|| e.map(|e| e.to_string()));
            }
            if e.is_some() && record.error.is_none() {
                record.error = e.map(|e| e.etype().as_str().to_string());
            }
            let handles = model.metrics.get(model);
            handles.tokens_in.inc_by(usage.prompt_tokens);
            handles.tokens_out.inc_by(usage.completion_tokens);
            handles.cost.inc_by(cost.max(0) as u64);
            app.ledger.settle(reservation, cost, record);
            let now = end_unix_ms / 1000;
            for hold in [spend_hold, account_hold].into_iter().flatten() {
                app.caps.settle(hold, cost, now);
            }
            if key.tokens_per_minute.is_some() {
                app.tpm.record_tokens(key.id, usage.total_tokens(), std::time::Instant::now());
            }
            Settled { usage, cost, billed: true, estimated: ctx.usage_estimated }
        }
        (_, _, reservation) => {
            // Released: nothing is charged, nothing counts against the caps.
            drop((reservation, spend_hold, account_hold));
            if ctx.upstream_start.is_some() {
                record.error = ctx
                    .error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .or_else(|| e.map(|e| e.etype().as_str().to_string()));
                app.ledger.record_unbilled(record);
            }
            Settled::default()
        }
    }
}
