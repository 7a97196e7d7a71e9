//! Routing that users never notice: several deployments (routes) per model with weights and
//! priorities, failover to the next route and to fallback models, passive health checks with
//! ejection and half-open probes, `auto` and aliases, and OpenRouter-style per-request
//! provider preferences.
//!
//! - [`health`]: each route's state, outside the config snapshot (survives reloads).
//! - [`plan`]: a request's candidates, and which one each attempt takes.
//! - [`prefs`]: the request's `models` and `provider` options (stripped before upstream).
//! - [`auto`]: `model: "auto"`.
//! - [`admin`]: `GET /admin/routes`.
//!
//! The proxy phases drive it: `request_filter` builds the plan and takes the first attempt,
//! `upstream_peer` takes each further one, and the response and error hooks report outcomes.

pub mod admin;
pub mod auto;
pub mod health;
pub mod plan;
pub mod prefs;

use health::RouteHealth;

/// Set the state gauge of a route: 1 for `state`, 0 for the others.
pub fn metrics_state(h: &RouteHealth, state: &str) {
    for s in health::STATES {
        crate::metrics::ROUTE_STATE
            .with_label_values(&[h.key.provider.as_str(), h.key.upstream_model.as_str(), s])
            .set(i64::from(s == state));
    }
}

/// Bring every route's state gauge up to date (ejections end by the clock).
pub fn refresh_metrics() {
    let now = std::time::Instant::now();
    // Only routes a config snapshot still holds (the registry and `all()` hold one each).
    for h in health::registry().all().into_iter().filter(|h| std::sync::Arc::strong_count(h) > 2) {
        metrics_state(&h, h.state_name(now));
    }
}
