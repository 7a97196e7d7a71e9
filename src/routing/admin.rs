//! `GET /admin/routes`: every model's routes as the current config defines them, with each
//! route's live health (state, failures in the window, ejection left, attempts in flight,
//! counters and mean time to the response header).

use crate::api::Reply;
use crate::config::snapshot::Balance;
use crate::config::Config;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub fn routes(config: &Config) -> Reply {
    let now = Instant::now();
    let params = &config.routing.health;
    let models: Vec<_> = config
        .models
        .iter()
        .map(|m| {
            let routes: Vec<_> = m
                .routes
                .iter()
                .map(|r| {
                    let h = &r.health;
                    let (state, in_window, ejected_for, cooldown) = h.snapshot(now, params);
                    let provider = config.providers.get(&r.provider);
                    json!({
                        "index": r.index,
                        "provider": r.provider,
                        "upstream_model": r.model.upstream_model,
                        "base_url": provider.map(|p| p.base_url.as_str()),
                        "enabled": provider.is_some_and(|p| p.enabled),
                        "weight": r.weight,
                        "priority": r.priority,
                        "input_per_mtok": r.model.input_per_mtok_display,
                        "output_per_mtok": r.model.output_per_mtok_display,
                        "state": state,
                        "failures_in_window": in_window,
                        "ejected_for_ms": ejected_for.map(|d| d.as_millis() as u64),
                        "next_ejection_ms": cooldown.max(params.ejection).as_millis() as u64,
                        "outstanding": h.outstanding(),
                        "attempts": h.attempts.get(),
                        "successes": h.successes.get(),
                        "failures": h.failures.get(),
                        "ejections": h.ejections.load(Ordering::Relaxed),
                        "latency_ms": h.latency().map(|d| d.as_secs_f64() * 1000.0),
                        "timeouts": {
                            "connect_secs": r.timeouts.connect.as_secs_f64(),
                            "first_byte_secs": r.timeouts.first_byte.as_secs_f64(),
                            "idle_secs": r.timeouts.idle.as_secs_f64(),
                            "attempt_total_secs": r.timeouts.attempt_total.map(|d| d.as_secs_f64()),
                        },
                    })
                })
                .collect();
            json!({
                "model": m.slug,
                "balance": match m.balance { Balance::Weighted => "weighted", Balance::LeastOutstanding => "least_outstanding" },
                "fallbacks": m.fallbacks,
                "max_attempts": m.max_attempts.unwrap_or(config.routing.max_attempts),
                "total_timeout_secs": m.total_timeout.unwrap_or(config.routing.total_timeout).as_secs_f64(),
                "auto": m.auto,
                "routes": routes,
            })
        })
        .collect();
    let mut aliases: Vec<_> = config.aliases.iter().map(|(k, v)| json!({"name": k, "models": v})).collect();
    aliases.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Reply::json(
        200,
        &json!({
            "data": models,
            "aliases": aliases,
            "routing": {
                "max_attempts": config.routing.max_attempts,
                "failure_threshold": params.failure_threshold,
                "failure_window_secs": params.window.as_secs_f64(),
                "ejection_secs": params.ejection.as_secs_f64(),
                "max_ejection_secs": params.max_ejection.as_secs_f64(),
                "total_timeout_secs": config.routing.total_timeout.as_secs_f64(),
            },
        }),
    )
}
