//! What one request carries through Pingora's phases.

use super::body_replay::ReplaySlot;
use crate::api::error::ApiError;
use crate::billing::keys::KeyEntry;
use crate::billing::ledger::Reservation;
use crate::config::{Config, Model, Provider};
use crate::limits::{RateDecision, SpendHold};
use crate::metering::StreamMeter;
use super::endpoints::RequestInfo;
use crate::api::Endpoint;
use crate::billing::pricing::Units;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the response body is handled on its way back.
#[derive(Default)]
pub enum BodyMode {
    /// Nothing to do (local replies, or before the upstream answered).
    #[default]
    Untouched,
    /// A 2xx SSE stream: rewritten and metered chunk by chunk, never held back.
    Stream(Box<dyn StreamMeter>),
    /// A 2xx JSON completion: collected, then rewritten and metered once whole.
    Json(BytesMut),
    /// A provider error: collected, then answered in the contract's shape.
    Error(BytesMut),
}

/// The inference part of a request, present once it passed auth, parsing and reservation.
pub struct Inference {
    pub endpoint: Endpoint,
    pub model: Arc<Model>,
    pub provider: Arc<Provider>,
    /// What the request asked for (model, stream, units).
    pub info: RequestInfo,
    /// Appended to the provider's path prefix: `/chat/completions`, `/messages`, …
    pub path: String,
    /// Anthropic JSON mode (see `proxy::wire`).
    pub json_mode: bool,
    /// Legacy completions sent as chat (see `providers::completions`).
    pub via_chat: bool,
    /// The upstream content type when it is not JSON (multipart uploads).
    pub content_type: Option<String>,
    pub request_bytes: usize,
    /// Length of the rewritten body sent upstream.
    pub upstream_body_len: usize,
    /// The account's own provider key (BYOK): used instead of the gateway's, billed a flat fee.
    pub byok_key: Option<String>,
    /// The account's markup, fixed when the request was admitted.
    pub markup_bps: u32,
    pub reservation: Option<Reservation>,
    /// The key's and the account's spend-cap holds for the same worst case.
    pub spend_hold: Option<SpendHold>,
    pub account_hold: Option<SpendHold>,
    /// The route this attempt uses: its timeouts.
    pub timeouts: crate::config::snapshot::Timeouts,
}

/// A request's routing: its candidates, the attempt in progress, and what earlier attempts did.
pub struct Routing {
    pub plan: crate::routing::plan::Plan,
    /// The attempt in progress (its candidate, health guard, start).
    pub current: Option<Attempt>,
    /// Finished attempts, for the generation record.
    pub log: Vec<crate::store::records::AttemptRecord>,
    /// The first attempt was prepared in `request_filter`; `upstream_peer` starts it as is.
    pub prepared: bool,
    /// A stale pooled connection failed before the provider saw the request: same route again.
    pub retry_same: bool,
    /// `upstream_response_filter` turned a 5xx/429 into an error to fail over.
    pub failing_over: bool,
    pub watchdog: Arc<super::watchdog::Watchdog>,
    /// The client's body (routing options removed) each attempt is translated from.
    pub client_body: Bytes,
    pub content_type: String,
    /// The requested model's slug (first of the list), for metrics.
    pub primary: String,
}

pub struct Attempt {
    pub index: usize,
    pub guard: crate::routing::health::AttemptGuard,
    pub started: Instant,
    /// When this attempt must end (the request's deadline, or the provider's attempt limit).
    pub deadline: Instant,
}

impl Routing {
    pub fn candidate(&self) -> Option<&crate::routing::plan::Candidate> {
        self.current.as_ref().map(|a| &self.plan.candidates[a.index])
    }
}

pub struct RequestCtx {
    pub start: Instant,
    pub request_id: String,
    pub generation_id: String,
    /// The snapshot this request pins for its whole life.
    pub config: Arc<Config>,
    pub key: Option<Arc<KeyEntry>>,
    pub inference: Option<Inference>,
    /// Routes, attempts and deadlines of an inference request.
    pub routing: Option<Routing>,
    /// Time spent on upstream attempts that failed over, excluded from the gateway's overhead.
    pub upstream_wait: Duration,
    /// Set while the downstream session is wrapped to replay the body.
    pub replay: Option<ReplaySlot>,
    pub body_mode: BodyMode,
    /// The error this request answered with, if the gateway produced one.
    pub error: Option<ApiError>,
    /// Status sent to the client.
    pub status: u16,
    pub upstream_status: Option<u16>,
    /// What the request consumed, once known (reported, or estimated: see `usage_estimated`).
    pub units: Option<Units>,
    /// The response body's `id` as the client saw it (the gateway's `chatcmpl-<generation
    /// id>`), recorded with the generation.
    pub body_id: Option<String>,
    /// The provider's own id for a collected (JSON) answer, recorded as the generation's
    /// `upstream_id`; a stream's comes from its meter at settlement.
    pub upstream_id: Option<String>,
    pub usage_estimated: bool,
    /// When the upstream attempt began (peer chosen) and when its header arrived.
    pub upstream_start: Option<Instant>,
    pub upstream_header: Option<Instant>,
    pub first_body_byte: Option<Instant>,
    pub upstream_end: Option<Instant>,
    /// Microseconds spent inside the gateway, upstream time excluded (as of the header).
    pub overhead_us: u64,
    pub stream_started: bool,
    /// The key's rate-limit state, for the X-RateLimit-* headers.
    pub rate: Option<RateDecision>,
    /// Route label for metrics: a fixed word, never a raw path.
    pub route_label: &'static str,
    /// An allowed cross-origin request: the CORS headers its responses carry.
    pub cors: Option<super::cors::Allowed>,
    /// Counts this request against its client address's cap until the ctx is dropped.
    pub ip_slot: Option<crate::limits::conn::IpSlot>,
    /// Counts this request for the SIGTERM drain until the ctx is dropped.
    _in_flight: crate::server::InFlight,
}

impl RequestCtx {
    pub fn new(config: Arc<Config>) -> Self {
        RequestCtx {
            start: Instant::now(),
            request_id: String::new(),
            generation_id: String::new(),
            config,
            key: None,
            inference: None,
            routing: None,
            upstream_wait: Duration::ZERO,
            replay: None,
            body_mode: BodyMode::Untouched,
            error: None,
            status: 0,
            upstream_status: None,
            units: None,
            body_id: None,
            upstream_id: None,
            usage_estimated: false,
            upstream_start: None,
            upstream_header: None,
            first_body_byte: None,
            upstream_end: None,
            overhead_us: 0,
            stream_started: false,
            rate: None,
            route_label: "other",
            cors: None,
            ip_slot: None,
            _in_flight: crate::server::InFlight::enter(),
        }
    }

    /// Gateway time so far: the wall time minus the time spent waiting on the upstream.
    pub fn overhead_now(&self) -> u64 {
        let total = self.start.elapsed();
        let upstream = match (self.upstream_start, self.upstream_header) {
            (Some(a), Some(b)) => b.saturating_duration_since(a),
            (Some(a), None) => a.elapsed(),
            _ => Default::default(),
        };
        total.saturating_sub(upstream).saturating_sub(self.upstream_wait).as_micros() as u64
    }
}

/// A short random id for `X-Request-Id`.
pub fn new_request_id() -> String {
    // 96 random bits as 24 hex digits, written by hand (no formatting machinery per request).
    let (hi, lo): (u32, u64) = (rand::random(), rand::random());
    let mut id = String::with_capacity(28);
    id.push_str("req-");
    crate::store::push_hex_digits(&mut id, u64::from(hi), 8);
    crate::store::push_hex_digits(&mut id, lo, 16);
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_req_and_24_hex_digits() {
        let id = super::new_request_id();
        let hex = id.strip_prefix("req-").expect("prefix");
        assert_eq!(hex.len(), 24, "{id}");
        assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{id}");
        assert_ne!(super::new_request_id(), super::new_request_id());
    }
}
