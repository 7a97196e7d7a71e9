//! Which routes a request may use, and which one its next attempt takes.
//!
//! [`build`] turns the requested name (a slug, an alias or `auto`), the request's `models` and
//! `provider` preferences and the model's fallbacks into an ordered list of candidates. Each
//! attempt then calls [`Plan::next`]: among the candidates not tried yet, the healthy ones of
//! the earliest model and the best priority compete (a half-open route's probe goes first;
//! otherwise weighted random or least outstanding). When no untried candidate is healthy the
//! ejected ones are tried anyway, soonest back first: ejection reorders traffic, it never turns
//! a request away that the route might still have served.

use super::health::{AttemptGuard, Availability};
use super::prefs::{RoutingOpts, Sort};
use crate::api::error::ApiError;
use crate::api::Endpoint;
use crate::billing::keys::KeyEntry;
use crate::config::snapshot::{Balance, RouteSpec};
use crate::config::{Config, Model, Provider};
use crate::proxy::endpoints::RequestInfo;
use rand::Rng;
use std::sync::Arc;
use std::time::Instant;

/// One route a request may use.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub route: Arc<RouteSpec>,
    pub provider: Arc<Provider>,
    /// Position of the candidate's model in the request's list (0 = what was asked for).
    pub model_rank: usize,
    /// Order within the model: lower first. The route's priority, or its position under the
    /// request's `provider.order` / `provider.sort`.
    pub rank: u32,
    pub balance: Balance,
}

/// The candidates and what is left of the attempt budget.
#[derive(Debug)]
pub struct Plan {
    pub candidates: Vec<Candidate>,
    tried: Vec<bool>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub deadline: Instant,
}

/// The candidate an attempt takes, counted in flight while the guard lives.
#[derive(Debug)]
pub struct Pick {
    pub index: usize,
    pub guard: AttemptGuard,
}

impl Plan {
    pub fn new(candidates: Vec<Candidate>, max_attempts: u32, deadline: Instant) -> Plan {
        let tried = vec![false; candidates.len()];
        Plan { candidates, tried, attempts: 0, max_attempts: max_attempts.max(1), deadline }
    }

    /// Whether another attempt may start now.
    pub fn has_next(&self, now: Instant) -> bool {
        self.attempts < self.max_attempts && now < self.deadline && self.tried.iter().any(|t| !t)
    }

    /// The next attempt's candidate, or None when the budget, the deadline or the candidates
    /// are used up.
    pub fn next(&mut self, now: Instant) -> Option<Pick> {
        if !self.has_next(now) {
            return None;
        }
        let mut avail: Vec<Availability> = self.candidates.iter().map(|c| c.route.health.availability(now)).collect();
        loop {
            let usable = |i: usize| !self.tried[i] && !matches!(avail[i], Availability::Unavailable(_));
            let best = (0..self.candidates.len()).filter(|&i| usable(i)).map(|i| self.key(i)).min();
            let Some(best) = best else { break };
            let group: Vec<usize> = (0..self.candidates.len()).filter(|&i| usable(i) && self.key(i) == best).collect();
            // A half-open route's single probe goes first, so it recovers promptly.
            if let Some(&i) = group.iter().find(|&&i| avail[i] == Availability::Probe) {
                if self.candidates[i].route.health.claim_probe(now) {
                    return Some(self.take(i, true));
                }
                avail[i] = Availability::Unavailable(None);
                continue;
            }
            let i = self.balance(&group);
            return Some(self.take(i, false));
        }
        // Nothing healthy left: the ejected ones, in order, soonest back first.
        let i = (0..self.candidates.len()).filter(|&i| !self.tried[i]).min_by_key(|&i| {
            let until = match avail[i] {
                Availability::Unavailable(Some(t)) => Some(t),
                _ => None,
            };
            (self.key(i), until)
        })?;
        Some(self.take(i, false))
    }

    /// The picked candidate could not be used (its wire format refused the request): it is
    /// not an attempt.
    pub fn unpick(&mut self) {
        self.attempts = self.attempts.saturating_sub(1);
    }

    fn key(&self, i: usize) -> (usize, u32) {
        (self.candidates[i].model_rank, self.candidates[i].rank)
    }

    fn take(&mut self, i: usize, probe: bool) -> Pick {
        self.tried[i] = true;
        self.attempts += 1;
        Pick { index: i, guard: self.candidates[i].route.health.begin(probe) }
    }

    fn balance(&self, group: &[usize]) -> usize {
        if group.len() == 1 {
            return group[0];
        }
        let weight = |i: usize| self.candidates[i].route.weight as u64;
        let total: u64 = group.iter().map(|&i| weight(i)).sum();
        let mut rng = rand::rng();
        match self.candidates[group[0]].balance {
            Balance::LeastOutstanding => {
                // Fewest in flight per unit of weight; ties at random.
                let load = |i: usize| {
                    let w = weight(i).max(1) as u128;
                    let zero = if weight(i) == 0 && total > 0 { 1u128 << 64 } else { 0 };
                    zero + ((self.candidates[i].route.health.outstanding() as u128 + 1) << 32) / w
                };
                let min = group.iter().map(|&i| load(i)).min().unwrap_or(0);
                let ties: Vec<usize> = group.iter().copied().filter(|&i| load(i) == min).collect();
                ties[rng.random_range(0..ties.len())]
            }
            Balance::Weighted => {
                if total == 0 {
                    return group[rng.random_range(0..group.len())];
                }
                let mut roll = rng.random_range(0..total);
                for &i in group {
                    if roll < weight(i) {
                        return i;
                    }
                    roll -= weight(i);
                }
                group[group.len() - 1]
            }
        }
    }
}

/// The candidates of a request, every model's routes in preference order, and the model the
/// request is for (the first of its list), whose budget and deadline apply.
pub fn build(
    config: &Config,
    key: &KeyEntry,
    endpoint: Endpoint,
    info: &RequestInfo,
    body: &[u8],
    opts: &RoutingOpts,
) -> Result<(Vec<Candidate>, Arc<Model>), ApiError> {
    let name = info.model.as_str();
    let budget = config.routing.max_attempts as usize;
    let mut names = if crate::config::validate::AUTO_NAMES.contains(&name) {
        let chosen = super::auto::choose(config, key, endpoint, info, body, budget.max(1));
        if chosen.is_empty() {
            return Err(ApiError::invalid_request(
                "no enabled model fits this request (context length, tools, vision, json) for this key",
            )
            .with_param("model"));
        }
        chosen
    } else if let Some(list) = config.aliases.get(name) {
        list.clone()
    } else {
        vec![name.to_string()]
    };
    for m in &opts.models {
        if !config.by_slug.contains_key(m) && !config.aliases.contains_key(m) {
            return Err(ApiError::invalid_request(format!("'models' names an unknown model '{m}'")).with_param("models"));
        }
        match config.aliases.get(m) {
            Some(list) => names.extend(list.iter().cloned()),
            None => names.push(m.clone()),
        }
    }
    if let Some(first) = config.by_slug.get(&names[0]) {
        for f in &first.fallbacks {
            match config.aliases.get(f) {
                Some(list) => names.extend(list.iter().cloned()),
                None => names.push(f.clone()),
            }
        }
    }
    // A handful of names: a linear dedup beats hashing.
    let mut i = 1;
    while i < names.len() {
        if names[..i].contains(&names[i]) {
            names.remove(i);
        } else {
            i += 1;
        }
    }

    let prefs = opts.provider.as_ref();
    let mut candidates = Vec::new();
    let mut first_error: Option<ApiError> = None;
    let mut primary: Option<Arc<Model>> = None;
    let mut filtered_by_prefs = false;
    // A route whose provider kind cannot serve the endpoint (anthropic has no /embeddings).
    let mut unoffered: Option<ApiError> = None;
    for slug in &names {
        let model = match check_model(config, key, endpoint, slug) {
            Ok(m) => m,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        let model_rank = candidates.iter().map(|c: &Candidate| c.model_rank + 1).max().unwrap_or(0);
        let mut routes: Vec<(Arc<RouteSpec>, Arc<Provider>)> = Vec::new();
        for r in &model.routes {
            let Some(p) = config.providers.get(&r.provider).filter(|p| p.enabled) else { continue };
            if !crate::proxy::wire::offers(p.kind, endpoint) {
                unoffered.get_or_insert_with(|| crate::proxy::wire::not_offered(p.kind, endpoint));
                continue;
            }
            if prefs.is_some_and(|pr| !pr.allows(&r.provider)) {
                filtered_by_prefs = true;
                continue;
            }
            routes.push((r.clone(), p.clone()));
        }
        let mut ranked = rank_routes(routes, prefs);
        if prefs.and_then(|p| p.allow_fallbacks) == Some(false) {
            let listed = |p: &str| prefs.and_then(|pr| pr.order.as_ref()).is_some_and(|o| o.iter().any(|x| x == p));
            let has_order = prefs.and_then(|pr| pr.order.as_ref()).is_some();
            let best = ranked.iter().map(|r| r.0).min();
            let before = ranked.len();
            ranked.retain(|(rank, route, _)| if has_order { listed(&route.provider) } else { Some(*rank) == best });
            filtered_by_prefs |= ranked.len() != before;
        }
        if ranked.is_empty() {
            continue;
        }
        primary.get_or_insert_with(|| model.clone());
        for (rank, route, provider) in ranked {
            candidates.push(Candidate { route, provider, model_rank, rank, balance: model.balance });
        }
    }
    match primary {
        Some(p) => Ok((candidates, p)),
        None if filtered_by_prefs => Err(ApiError::invalid_request(format!(
            "no provider of '{name}' matches the request's provider preferences"
        ))
        .with_param("provider")),
        None => Err(first_error.or(unoffered).unwrap_or_else(|| ApiError::model_not_found(name))),
    }
}

/// The checks a requested model must pass, with the answer for each failure.
fn check_model(config: &Config, key: &KeyEntry, endpoint: Endpoint, slug: &str) -> Result<Arc<Model>, ApiError> {
    let Some((model, _)) = config.route(slug) else { return Err(ApiError::model_not_found(slug)) };
    if !model.serves(endpoint.label()) {
        return Err(ApiError::invalid_request(format!(
            "model '{}' does not serve /{}; it serves: {}",
            model.slug,
            endpoint.upstream_path().trim_start_matches('/'),
            model.endpoints.join(", ")
        ))
        .with_param("model"));
    }
    if !key.permits_model(&model.slug, &model.platforms) {
        return Err(ApiError::new(403, "model_not_allowed", format!("this key may not use '{}'", model.slug))
            .with_param("model"));
    }
    Ok(model.clone())
}

/// Each route's rank: its priority, unless the request orders providers or sorts.
fn rank_routes(
    routes: Vec<(Arc<RouteSpec>, Arc<Provider>)>,
    prefs: Option<&super::prefs::ProviderPrefs>,
) -> Vec<(u32, Arc<RouteSpec>, Arc<Provider>)> {
    let order = prefs.and_then(|p| p.order.as_ref());
    let sort = prefs.and_then(|p| p.sort);
    let mut out: Vec<(u32, Arc<RouteSpec>, Arc<Provider>)> = match sort {
        Some(s) => {
            let mut v = routes;
            match s {
                Sort::Price => v.sort_by_key(|(r, _)| {
                    (r.model.input_per_mtok.saturating_add(r.model.output_per_mtok), r.priority, r.index)
                }),
                // Unmeasured routes last (they have no latency to compare).
                Sort::Latency => v.sort_by_key(|(r, _)| (r.health.latency().is_none(), r.health.latency(), r.priority, r.index)),
            }
            v.into_iter().enumerate().map(|(i, (r, p))| (i as u32, r, p)).collect()
        }
        None => routes.into_iter().map(|(r, p)| (r.priority, r, p)).collect(),
    };
    if let Some(order) = order {
        let n = order.len() as u32;
        for entry in &mut out {
            match order.iter().position(|p| *p == entry.1.provider) {
                Some(pos) => entry.0 = pos as u32,
                None => entry.0 = entry.0.saturating_add(n),
            }
        }
    }
    out.sort_by_key(|e| (e.0, e.1.index));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::health::HealthParams;
    use crate::routing::prefs::ProviderPrefs;
    use crate::store::records::KeyRecord;
    use std::time::Duration;

    /// Providers p1..p3 on `port` (unique per test: health is keyed by base URL) and models:
    /// m/a on p1 and p2 (priority 0) and p3 (priority 1, cheapest), falling back to m/b on p1.
    fn config(port: u16, extra: &str) -> Config {
        let text = format!(
            r#"
[server]
listen = ["127.0.0.1:8080"]
[routing]
max_attempts = 16
{extra}
[providers.p1]
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"
[providers.p2]
kind = "openai"
base_url = "http://127.0.0.1:{port}/v2"
[providers.p3]
kind = "anthropic"
base_url = "http://127.0.0.1:{port}/v3"
[[models]]
slug = "m/a"
provider = "p1"
upstream_model = "a1"
context_length = 1000
input_per_mtok = 2
output_per_mtok = 2
fallbacks = ["m/b"]
endpoints = ["chat", "completions", "embeddings"]
[[models.routes]]
provider = "p2"
upstream_model = "a2"
[[models.routes]]
provider = "p3"
upstream_model = "a3"
priority = 1
input_per_mtok = 1
output_per_mtok = 1
[[models]]
slug = "m/b"
provider = "p1"
upstream_model = "b1"
context_length = 1000
input_per_mtok = 1
output_per_mtok = 1
[[models]]
slug = "m/c"
provider = "p3"
upstream_model = "c3"
context_length = 1000
input_per_mtok = 1
output_per_mtok = 1
endpoints = ["embeddings"]
"#
        );
        crate::config::from_toml_with_env(&text, &|_| None).unwrap()
    }

    fn key() -> KeyEntry {
        let secret = "sk-tg-plan-test";
        let record = KeyRecord {
            id: 1,
            account_id: 1,
            name: "k".into(),
            secret_hash: crate::billing::keys::hash_hex(&crate::billing::keys::hash_secret(secret)),
            redacted: "sk-tg-…".into(),
            created_at: 0,
            revoked: false,
            rate_limit_rpm: None,
            daily_cap_nano: None,
            monthly_cap_nano: None,
            tokens_per_minute: None,
            allowed_models: None,
            expires_at: None,
            platform: None,
            revoked_at: None,
        };
        KeyEntry::from_record(&record).unwrap().1
    }

    fn info(model: &str) -> RequestInfo {
        RequestInfo { model: model.into(), n: 1, prompt_bytes: 10, ..Default::default() }
    }

    fn order(c: &Config, model: &str, opts: RoutingOpts, now: Instant) -> Vec<String> {
        let (cands, _) = build(c, &key(), Endpoint::ChatCompletions, &info(model), b"{}", &opts).unwrap();
        let mut plan = Plan::new(cands, 16, now + Duration::from_secs(60));
        let mut out = Vec::new();
        while let Some(p) = plan.next(now) {
            let cand = &plan.candidates[p.index];
            out.push(format!("{}:{}", cand.route.model.slug, cand.route.provider));
        }
        out
    }

    fn prefs(json: &str) -> RoutingOpts {
        RoutingOpts { provider: Some(serde_json::from_str::<ProviderPrefs>(json).unwrap()), ..Default::default() }
    }

    #[test]
    fn priority_groups_then_fallback_models() {
        let c = config(41001, "");
        let now = Instant::now();
        let got = order(&c, "m/a", RoutingOpts::default(), now);
        assert_eq!(got.len(), 4, "{got:?}");
        let mut first_two = got[..2].to_vec();
        first_two.sort();
        assert_eq!(first_two, vec!["m/a:p1", "m/a:p2"]);
        assert_eq!(got[2..], ["m/a:p3", "m/b:p1"]);
    }

    #[test]
    fn ejected_routes_come_last_and_a_half_open_probe_first() {
        let c = config(41002, "");
        let p = HealthParams { failure_threshold: 1, ..HealthParams::default() };
        let now = Instant::now();
        let p1 = c.by_slug["m/a"].routes[0].health.clone();
        p1.record_failure(&p, now);
        let got = order(&c, "m/a", RoutingOpts::default(), now);
        // p1 is ejected: everything healthy first (m/b's route on p1 is another key), p1 last.
        assert_eq!(got, vec!["m/a:p2", "m/a:p3", "m/b:p1", "m/a:p1"]);
        // Cool-down over: the half-open route is the probe, first; only one request gets it.
        let later = now + Duration::from_secs(11);
        let got = order(&c, "m/a", RoutingOpts::default(), later);
        assert_eq!(got[0], "m/a:p1");
        let (cands, _) = build(&c, &key(), Endpoint::ChatCompletions, &info("m/a"), b"{}", &RoutingOpts::default()).unwrap();
        let mut plan = Plan::new(cands, 1, later + Duration::from_secs(60));
        let probe = plan.next(later).unwrap();
        assert!(probe.guard.probe);
        assert!(plan.next(later).is_none(), "budget of one attempt");
        let got = order(&c, "m/a", RoutingOpts::default(), later);
        assert_ne!(got[0], "m/a:p1", "the probe is in flight: {got:?}");
        drop(probe);
        assert_eq!(order(&c, "m/a", RoutingOpts::default(), later)[0], "m/a:p1", "an abandoned probe frees the slot");
    }

    #[test]
    fn provider_preferences_reorder_and_filter() {
        let c = config(41003, "");
        let now = Instant::now();
        assert_eq!(order(&c, "m/a", prefs(r#"{"order":["p3","p2"]}"#), now)[..2], ["m/a:p3", "m/a:p2"]);
        assert_eq!(order(&c, "m/a", prefs(r#"{"only":["p2"]}"#), now), vec!["m/a:p2"]);
        assert!(!order(&c, "m/a", prefs(r#"{"ignore":["p1"]}"#), now).iter().any(|r| r.ends_with(":p1")));
        assert_eq!(order(&c, "m/a", prefs(r#"{"sort":"price"}"#), now)[0], "m/a:p3");
        assert_eq!(order(&c, "m/a", prefs(r#"{"order":["p2"],"allow_fallbacks":false}"#), now), vec!["m/a:p2"]);
        let e = build(&c, &key(), Endpoint::ChatCompletions, &info("m/a"), b"{}", &prefs(r#"{"only":["zz"]}"#)).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("provider"));
        // A provider kind that cannot serve the endpoint is no candidate (p3 is anthropic).
        let (cands, _) = build(&c, &key(), Endpoint::Embeddings, &info("m/a"), b"{}", &RoutingOpts::default())
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(cands.iter().all(|c| c.route.provider != "p3"));
    }

    #[test]
    fn unknown_and_refused_models() {
        let c = config(41004, "");
        let e = build(&c, &key(), Endpoint::ChatCompletions, &info("nope/x"), b"{}", &RoutingOpts::default()).unwrap_err();
        assert_eq!(e.status, 404);
        let e = build(&c, &key(), Endpoint::Embeddings, &info("m/c"), b"{}", &RoutingOpts::default()).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("anthropic") && e.message.contains("/embeddings"), "{}", e.message);
        let opts = RoutingOpts { models: vec!["nope/y".into()], ..Default::default() };
        let e = build(&c, &key(), Endpoint::ChatCompletions, &info("m/b"), b"{}", &opts).unwrap_err();
        assert_eq!(e.status, 400);
    }
}
