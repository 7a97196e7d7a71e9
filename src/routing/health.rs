//! Passive health of each route, kept outside the config snapshot.
//!
//! A route is one deployment of a model: (provider, upstream model, base URL). Its health is
//! keyed by exactly that, in a process-wide [`registry`], so a config reload hands the same
//! state to routes that did not change and fresh state to the ones that did.
//!
//! The state machine:
//! - **healthy**: failures (connect errors, 5xx, 429, timeouts) are remembered for
//!   `window`; `threshold` of them within it eject the route.
//! - **ejected** for a cool-down (first `ejection`, doubling on every failed probe, capped at
//!   `max_ejection`): requests go elsewhere.
//! - **half-open** once the cool-down ends: the next request that would use the route is its
//!   single probe (others keep away); success makes it healthy, failure ejects it again for
//!   twice as long. A probe abandoned without an outcome (client gone) frees the slot.

use std::collections::{HashMap, VecDeque};
use crate::metrics::sharded::{Counter, Ewma, Gauge};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// What identifies a route's health across config reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub provider: String,
    pub upstream_model: String,
    pub base_url: String,
}

/// The `[routing]` knobs the state machine needs, from the request's config snapshot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthParams {
    pub failure_threshold: u32,
    pub window: Duration,
    pub ejection: Duration,
    pub max_ejection: Duration,
}

impl Default for HealthParams {
    fn default() -> Self {
        HealthParams {
            failure_threshold: 3,
            window: Duration::from_secs(30),
            ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Healthy,
    Ejected { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct State {
    mode: Mode,
    /// Failures inside the window, oldest first (healthy mode only).
    failures: VecDeque<Instant>,
    /// Length of the current (or next) ejection.
    cooldown: Duration,
}

/// Whether a request may use a route now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Healthy,
    /// Half-open with no probe in flight: the request that takes it is the probe.
    Probe,
    /// Ejected (until then) or half-open with its probe in flight (`None`).
    Unavailable(Option<Instant>),
}

/// The state names shown in `/admin/routes` and the `tollgate_route_state` gauge.
pub const STATES: [&str; 3] = ["healthy", "ejected", "half_open"];

#[derive(Debug)]
pub struct RouteHealth {
    pub key: RouteKey,
    state: Mutex<State>,
    /// `state.mode == Healthy`, readable without the lock: nearly every request finds its
    /// route healthy and leaves it so, and then touches no line the other workers write.
    healthy: AtomicBool,
    // Counted on every request by whichever worker runs it: per-thread cells (see
    // `metrics::sharded`), so that the workers do not pass these lines back and forth.
    /// Attempts on this route not finished yet (for least-outstanding balancing).
    outstanding: Gauge,
    pub attempts: Counter,
    pub successes: Counter,
    pub failures: Counter,
    pub ejections: AtomicU64,
    /// Exponentially weighted time to the response header.
    latency: Ewma,
    /// `tollgate_route_attempts_total{result="success"}` of this route, looked up once (it is
    /// counted on every request).
    success_metric: std::sync::OnceLock<std::sync::Arc<crate::metrics::sharded::Counter>>,
}

impl RouteHealth {
    pub fn new(key: RouteKey) -> RouteHealth {
        RouteHealth {
            key,
            state: Mutex::new(State { mode: Mode::Healthy, failures: VecDeque::new(), cooldown: Duration::ZERO }),
            healthy: AtomicBool::new(true),
            outstanding: Gauge::default(),
            attempts: Counter::default(),
            successes: Counter::default(),
            failures: Counter::default(),
            ejections: AtomicU64::new(0),
            latency: Ewma::default(),
            success_metric: std::sync::OnceLock::new(),
        }
    }

    /// Counts one attempt in `tollgate_route_attempts_total` under `result`.
    pub fn count_attempt(&self, result: &str) {
        let lookup = || crate::metrics::ROUTE_ATTEMPTS.with_label_values(&[self.key.provider.as_str(), self.key.upstream_model.as_str(), result]);
        match result {
            "success" => self.success_metric.get_or_init(lookup).inc(),
            _ => lookup().inc(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves an ejection that has run out to half-open. Returns the mode now.
    fn settle_mode(state: &mut State, now: Instant) -> Mode {
        if let Mode::Ejected { until } = state.mode {
            if now >= until {
                state.mode = Mode::HalfOpen { probing: false };
            }
        }
        state.mode
    }

    pub fn availability(&self, now: Instant) -> Availability {
        if self.healthy.load(Ordering::Acquire) {
            return Availability::Healthy;
        }
        let mut s = self.lock();
        match Self::settle_mode(&mut s, now) {
            Mode::Healthy => Availability::Healthy,
            Mode::HalfOpen { probing: false } => Availability::Probe,
            Mode::HalfOpen { probing: true } => Availability::Unavailable(None),
            Mode::Ejected { until } => Availability::Unavailable(Some(until)),
        }
    }

    /// Take the half-open probe slot; false if another request has it (or the route is not
    /// half-open any more).
    pub fn claim_probe(&self, now: Instant) -> bool {
        let mut s = self.lock();
        match Self::settle_mode(&mut s, now) {
            Mode::HalfOpen { probing: false } => {
                s.mode = Mode::HalfOpen { probing: true };
                true
            }
            _ => false,
        }
    }

    /// A probe ended without an outcome: let the next request probe.
    pub fn release_probe(&self) {
        let mut s = self.lock();
        if s.mode == (Mode::HalfOpen { probing: true }) {
            s.mode = Mode::HalfOpen { probing: false };
        }
    }

    /// The route answered (any status but 5xx/429). Any success closes the circuit.
    pub fn record_success(&self, header_latency: Option<Duration>) {
        self.successes.inc();
        if let Some(l) = header_latency {
            self.latency.record(l);
        }
        if self.healthy.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.lock();
        let changed = s.mode != Mode::Healthy;
        if changed {
            s.mode = Mode::Healthy;
            self.healthy.store(true, Ordering::Release);
            s.failures.clear();
            s.cooldown = Duration::ZERO;
        }
        drop(s);
        if changed {
            crate::routing::metrics_state(self, "healthy");
        }
    }

    /// The route failed (connect error, 5xx, 429, timeout). Returns true when this failure
    /// ejected it.
    pub fn record_failure(&self, p: &HealthParams, now: Instant) -> bool {
        self.failures.inc();
        let mut s = self.lock();
        let eject = match Self::settle_mode(&mut s, now) {
            Mode::Healthy => {
                while s.failures.front().is_some_and(|t| now.saturating_duration_since(*t) > p.window) {
                    s.failures.pop_front();
                }
                s.failures.push_back(now);
                if s.failures.len() as u32 >= p.failure_threshold.max(1) {
                    s.cooldown = p.ejection;
                    true
                } else {
                    false
                }
            }
            // The probe (or a last-resort attempt while half-open) failed: twice as long.
            Mode::HalfOpen { .. } => {
                s.cooldown = (s.cooldown.max(p.ejection) * 2).min(p.max_ejection.max(p.ejection));
                true
            }
            // A last-resort attempt on an ejected route failed: it stays ejected as it was.
            Mode::Ejected { .. } => false,
        };
        if eject {
            s.mode = Mode::Ejected { until: now + s.cooldown };
            self.healthy.store(false, Ordering::Release);
            s.failures.clear();
            drop(s);
            self.ejections.fetch_add(1, Ordering::Relaxed);
            crate::metrics::ROUTE_EJECTIONS
                .with_label_values(&[self.key.provider.as_str(), self.key.upstream_model.as_str()])
                .inc();
            crate::routing::metrics_state(self, "ejected");
            log::warn!(
                "route {}/{} ejected after failures",
                self.key.provider,
                self.key.upstream_model
            );
        }
        eject
    }

    /// The state's name, the failures in the window, the remaining ejection.
    pub fn snapshot(&self, now: Instant, p: &HealthParams) -> (&'static str, usize, Option<Duration>, Duration) {
        let mut s = self.lock();
        let mode = Self::settle_mode(&mut s, now);
        let in_window = s.failures.iter().filter(|t| now.saturating_duration_since(**t) <= p.window).count();
        match mode {
            Mode::Healthy => ("healthy", in_window, None, s.cooldown),
            Mode::Ejected { until } => ("ejected", in_window, Some(until - now), s.cooldown),
            Mode::HalfOpen { .. } => ("half_open", in_window, None, s.cooldown),
        }
    }

    pub fn state_name(&self, now: Instant) -> &'static str {
        let mut s = self.lock();
        match Self::settle_mode(&mut s, now) {
            Mode::Healthy => "healthy",
            Mode::Ejected { .. } => "ejected",
            Mode::HalfOpen { .. } => "half_open",
        }
    }

    pub fn outstanding(&self) -> u64 {
        self.outstanding.get().max(0) as u64
    }

    /// Mean time to the response header, if ever measured.
    pub fn latency(&self) -> Option<Duration> {
        self.latency.get()
    }

    /// Count an attempt in flight until the guard drops.
    pub fn begin(self: &Arc<Self>, probe: bool) -> AttemptGuard {
        self.attempts.inc();
        self.outstanding.inc();
        AttemptGuard { health: self.clone(), probe, resolved: false }
    }
}

/// One attempt on a route: counted as outstanding while alive; a probe that drops without an
/// outcome frees the half-open slot.
#[derive(Debug)]
pub struct AttemptGuard {
    pub health: Arc<RouteHealth>,
    pub probe: bool,
    resolved: bool,
}

impl AttemptGuard {
    pub fn success(&mut self, header_latency: Option<Duration>) {
        if !self.resolved {
            self.resolved = true;
            self.health.record_success(header_latency);
        }
    }

    pub fn failure(&mut self, p: &HealthParams, now: Instant) {
        if !self.resolved {
            self.resolved = true;
            self.health.record_failure(p, now);
        }
    }

    pub fn is_resolved(&self) -> bool {
        self.resolved
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        self.health.outstanding.dec();
        if self.probe && !self.resolved {
            self.health.release_probe();
        }
    }
}

/// Every route's health, by key; entries no config refers to any more are dropped.
#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<RouteKey, Arc<RouteHealth>>>,
}

impl Registry {
    /// The health of `key`, created healthy on first use.
    pub fn get(&self, key: RouteKey) -> Arc<RouteHealth> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = map.get(&key) {
            return h.clone();
        }
        // Forget routes that no snapshot holds any more (only the registry's own reference).
        if map.len() >= 64 {
            map.retain(|_, h| Arc::strong_count(h) > 1);
        }
        let h = Arc::new(RouteHealth::new(key.clone()));
        map.insert(key, h.clone());
        h
    }

    pub fn all(&self) -> Vec<Arc<RouteHealth>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);

/// The process-wide registry the config snapshots take their routes' health from.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> RouteKey {
        RouteKey { provider: n.into(), upstream_model: "m".into(), base_url: "http://x".into() }
    }

    fn params() -> HealthParams {
        HealthParams {
            failure_threshold: 3,
            window: Duration::from_secs(30),
            ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
        }
    }

    #[test]
    fn ejects_after_threshold_then_half_open_probe_decides() {
        let h = Arc::new(RouteHealth::new(key("a")));
        let p = params();
        let t0 = Instant::now();
        assert!(!h.record_failure(&p, t0));
        assert!(!h.record_failure(&p, t0 + Duration::from_secs(1)));
        assert_eq!(h.availability(t0), Availability::Healthy);
        assert!(h.record_failure(&p, t0 + Duration::from_secs(2)));
        let t1 = t0 + Duration::from_secs(2);
        assert!(matches!(h.availability(t1 + Duration::from_secs(9)), Availability::Unavailable(Some(_))));
        // Cool-down over: one probe, others stay away.
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(h.availability(t2), Availability::Probe);
        assert!(h.claim_probe(t2));
        assert!(!h.claim_probe(t2));
        assert_eq!(h.availability(t2), Availability::Unavailable(None));
        // The probe fails: ejected twice as long (20 s), then capped at 35 s.
        assert!(h.record_failure(&p, t2));
        assert!(matches!(h.availability(t2 + Duration::from_secs(19)), Availability::Unavailable(Some(_))));
        let t3 = t2 + Duration::from_secs(20);
        assert!(h.claim_probe(t3));
        assert!(h.record_failure(&p, t3));
        assert!(matches!(h.availability(t3 + Duration::from_secs(34)), Availability::Unavailable(Some(_))));
        let t4 = t3 + Duration::from_secs(35);
        assert!(h.claim_probe(t4));
        h.record_success(Some(Duration::from_millis(5)));
        assert_eq!(h.availability(t4), Availability::Healthy);
        assert_eq!(h.ejections.load(Ordering::Relaxed), 3);
        assert_eq!(h.latency(), Some(Duration::from_millis(5)));
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let h = RouteHealth::new(key("b"));
        let p = params();
        let t0 = Instant::now();
        h.record_failure(&p, t0);
        h.record_failure(&p, t0 + Duration::from_secs(1));
        assert!(!h.record_failure(&p, t0 + Duration::from_secs(40)));
        assert_eq!(h.availability(t0 + Duration::from_secs(40)), Availability::Healthy);
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot_and_guards_count_outstanding() {
        let h = Arc::new(RouteHealth::new(key("c")));
        let p = HealthParams { failure_threshold: 1, ..params() };
        let t0 = Instant::now();
        h.record_failure(&p, t0);
        let t1 = t0 + Duration::from_secs(11);
        assert!(h.claim_probe(t1));
        {
            let _g = h.begin(true);
            assert_eq!(h.outstanding(), 1);
        }
        assert_eq!(h.outstanding(), 0);
        assert_eq!(h.availability(t1), Availability::Probe);
    }

    #[test]
    fn registry_returns_the_same_state_for_the_same_key() {
        let r = Registry::default();
        let a = r.get(key("x"));
        let b = r.get(key("x"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &r.get(key("y"))));
    }
}
