//! Prometheus metrics, served in text format at `GET /metrics` on `server.metrics_listen`.
//!
//! Label values come only from bounded sets: slugs and provider names from the config, HTTP
//! status codes, and fixed words. Never a key id, an account or a path: those would let a
//! client grow the registry without bound.

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Encoder, IntCounterVec, IntGauge,
    IntGaugeVec, TextEncoder,
};
use std::sync::{Arc, LazyLock, OnceLock};

pub mod sharded;
use sharded::{Counter, CounterFamily, Histogram, HistogramFamily};

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

pub static REQUESTS: LazyLock<&'static CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "tollgate_requests_total",
        "Requests answered, by route kind, model, provider and status",
        &["route", "model", "provider", "status"],
    )
});

pub static TOKENS: LazyLock<&'static CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "tollgate_tokens_total",
        "Tokens metered, by model, provider and direction (input|output)",
        &["model", "provider", "direction"],
    )
});

pub static COST: LazyLock<&'static CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "tollgate_cost_nano_usd_total",
        "Charged cost in nano-USD, by model and provider",
        &["model", "provider"],
    )
});

pub static UPSTREAM_LATENCY: LazyLock<&'static HistogramFamily> = LazyLock::new(|| {
    HistogramFamily::register(
        "tollgate_upstream_latency_seconds",
        "Time from sending the request upstream to the end of the upstream response",
        &["model", "provider"],
        LATENCY_BUCKETS,
    )
});

pub static TTFT: LazyLock<&'static HistogramFamily> = LazyLock::new(|| {
    HistogramFamily::register(
        "tollgate_time_to_first_token_seconds",
        "Time from sending the request upstream to the first response body byte",
        &["model", "provider"],
        LATENCY_BUCKETS,
    )
});

pub static ACTIVE_STREAMS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("tollgate_active_streams", "Streaming responses in progress")
        .expect("metric registers once")
});

pub static CONFIG_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tollgate_config_reloads_total",
        "Config reloads by result (success|failure)",
        &["result"]
    )
    .expect("metric registers once")
});

pub static STORE_WRITE_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tollgate_errors_total",
        "Internal errors by kind",
        &["kind"]
    )
    .expect("metric registers once")
});

/// 1 for each route's current state (healthy, ejected, half_open), 0 for the others.
pub static ROUTE_STATE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "tollgate_route_state",
        "Health of each route (provider, upstream model): 1 for its current state",
        &["provider", "upstream_model", "state"]
    )
    .expect("metric registers once")
});

pub static ROUTE_EJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tollgate_route_ejections_total",
        "Times a route was ejected by the passive health check",
        &["provider", "upstream_model"]
    )
    .expect("metric registers once")
});

pub static ROUTE_ATTEMPTS: LazyLock<&'static CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "tollgate_route_attempts_total",
        "Upstream attempts per route, by result (success|failure|client_error)",
        &["provider", "upstream_model", "result"],
    )
});

pub static FAILOVERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tollgate_failovers_total",
        "Requests moved to another route (or fallback model) after a failed attempt, by requested model",
        &["model"]
    )
    .expect("metric registers once")
});

pub static TLS_CERT_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tollgate_tls_cert_reloads_total",
        "Reloads of the TLS listener's certificates, by result (success|failure: the old ones stay)",
        &["result"]
    )
    .expect("metric registers once")
});

/// The per-request metrics of one model as one route serves it, looked up in the registry
/// the first time and kept: `with_label_values` hashes every label and takes a lock, six times
/// a request otherwise. Lives in the config snapshot's `Model` (a route's view of a model is a
/// `Model` of its own, whose `provider` is the route's), so the labels are that model's slug
/// and provider, and a reload starts with an empty cache.
#[derive(Default)]
pub struct RouteMetrics(OnceLock<RouteHandles>);

pub struct RouteHandles {
    pub tokens_in: Arc<Counter>,
    pub tokens_out: Arc<Counter>,
    pub cost: Arc<Counter>,
    pub upstream_latency: Arc<Histogram>,
    pub ttft: Arc<Histogram>,
    /// `tollgate_requests_total` with status 200, for the first route kind counted (a model
    /// is nearly always reached through one endpoint).
    ok_requests: OnceLock<(&'static str, Arc<Counter>)>,
}

impl RouteMetrics {
    /// The handles of `model`, the `Model` this cache belongs to.
    pub fn get(&self, model: &crate::config::Model) -> &RouteHandles {
        self.0.get_or_init(|| {
            let (slug, provider) = (model.slug.as_str(), model.provider.as_str());
            RouteHandles {
                tokens_in: TOKENS.with_label_values(&[slug, provider, "input"]),
                tokens_out: TOKENS.with_label_values(&[slug, provider, "output"]),
                cost: COST.with_label_values(&[slug, provider]),
                upstream_latency: UPSTREAM_LATENCY.with_label_values(&[slug, provider]),
                ttft: TTFT.with_label_values(&[slug, provider]),
                ok_requests: OnceLock::new(),
            }
        })
    }
}

/// Counts one answered request in `tollgate_requests_total`; `model` is the route's view of
/// the model that answered (None: no model, both labels empty).
pub fn count_request(route: &'static str, model: Option<&crate::config::Model>, status: &'static str) {
    let (slug, provider) = model.map_or(("", ""), |m| (m.slug.as_str(), m.provider.as_str()));
    if let (Some(m), "200") = (model, status) {
        let (cached_route, counter) = m
            .metrics
            .get(m)
            .ok_requests
            .get_or_init(|| (route, REQUESTS.with_label_values(&[route, slug, provider, status])));
        if *cached_route == route {
            counter.inc();
            return;
        }
    }
    REQUESTS.with_label_values(&[route, slug, provider, status]).inc();
}

/// A copy starts empty: a model is cloned into its routes' views before each gets its provider.
impl Clone for RouteMetrics {
    fn clone(&self) -> Self {
        RouteMetrics::default()
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteMetrics")
    }
}

pub fn config_reload(result: &str) {
    CONFIG_RELOADS.with_label_values(&[result]).inc();
}

/// Touch every metric so `/metrics` lists them all from the start (zero-valued).
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&TOKENS);
    LazyLock::force(&COST);
    LazyLock::force(&UPSTREAM_LATENCY);
    LazyLock::force(&TTFT);
    LazyLock::force(&ACTIVE_STREAMS);
    for r in ["success", "failure"] {
        CONFIG_RELOADS.with_label_values(&[r]);
        TLS_CERT_RELOADS.with_label_values(&[r]);
    }
    LazyLock::force(&STORE_WRITE_ERRORS);
    LazyLock::force(&ROUTE_STATE);
    LazyLock::force(&ROUTE_EJECTIONS);
    LazyLock::force(&ROUTE_ATTEMPTS);
    LazyLock::force(&FAILOVERS);
    LazyLock::force(&REFUSED);
}

/// Requests and connections refused by the hostile-input defences (docs/hardening.md).
pub static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tollgate_refused_total",
        "Connections and requests refused before routing, by reason",
        &["reason"]
    )
    .expect("metric registers once")
});

/// Count one refusal; `reason` is a fixed word.
pub fn count_refusal(reason: &'static str) {
    REFUSED.with_label_values(&[reason]).inc();
}

/// The Prometheus text exposition of the default registry.
pub fn render() -> Vec<u8> {
    // Ejections end by the clock, not by an event: bring the route gauges up to date.
    crate::routing::refresh_metrics();
    let mut out = Vec::with_capacity(16 * 1024);
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut out);
    out
}

/// `GET /metrics` on its own listener, so scraping never competes with inference traffic
/// and the metrics port can stay private while the API port is public.
pub struct MetricsApp;

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let (status, body, ctype) = if path == "/metrics" {
            (200, render(), "text/plain; version=0.0.4")
        } else {
            (404, b"not found\n".to_vec(), "text/plain")
        };
        http::Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}
