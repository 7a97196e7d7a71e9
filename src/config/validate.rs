//! Turns the file's shapes into a [`Config`], collecting every error with its key path.
//!
//! All errors are gathered rather than stopping at the first, so `tollgate check` can show an
//! operator everything wrong with a file in one run.

use super::file::{FileConfig, ModelFile, ProviderFile, RoutingFile, ServerFile};
use super::snapshot::*;
use crate::billing::money::{self, Nano};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One problem in a config file, located by its key path (`models[2].input_per_mtok`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError { path: path.into(), message: message.into() });
    }
}

const PLATFORMS: [&str; 2] = ["intl", "cn"];
/// Inference endpoints a model can declare.
pub const ENDPOINTS: [&str; 6] = ["chat", "completions", "embeddings", "images", "speech", "transcriptions"];
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Validate a parsed file. `env` resolves `*_env` variables (the process environment in
/// production, a map in tests).
pub fn validate(
    file: FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let mut errs = Errors(Vec::new());
    let server = server_settings(&file, env, &mut errs);
    let billing = billing_settings(&file, &mut errs);

    let mut providers = crate::FastMap::default();
    for (name, p) in &file.providers {
        if let Some(provider) = provider(name, p, env, &mut errs) {
            providers.insert(name.clone(), Arc::new(provider));
        }
    }

    let mut models = Vec::new();
    let mut by_slug = crate::FastMap::default();
    for (i, m) in file.models.iter().enumerate() {
        let path = format!("models[{i}]");
        if by_slug.contains_key(&m.slug) {
            errs.push(format!("{path}.slug"), format!("duplicate slug '{}'", m.slug));
            continue;
        }
        if !file.providers.contains_key(&m.provider) {
            errs.push(format!("{path}.provider"), format!("unknown provider '{}'", m.provider));
            continue;
        }
        if let Some(model) = model(&path, m, &mut errs) {
            if let Some(model) = with_routes(&path, m, model, &providers, &file.providers, &mut errs) {
                let model = Arc::new(model);
                by_slug.insert(model.slug.clone(), model.clone());
                models.push(model);
            }
        }
    }
    let aliases = aliases(&file, &by_slug, &mut errs);
    for (i, m) in file.models.iter().enumerate() {
        for (j, f) in m.fallbacks.iter().enumerate() {
            if !by_slug.contains_key(f) && !aliases.contains_key(f) {
                errs.push(format!("models[{i}].fallbacks[{j}]"), format!("unknown model '{f}'"));
            } else if *f == m.slug {
                errs.push(format!("models[{i}].fallbacks[{j}]"), "a model cannot be its own fallback");
            }
        }
    }
    let routing = routing_settings(&file.routing, &mut errs);

    if errs.0.is_empty() {
        Ok(Config { server, billing, providers, models, by_slug, aliases, routing })
    } else {
        Err(errs.0)
    }
}

/// What `model` names that are not slugs mean: `auto` and `[[aliases]]`.
pub const AUTO_NAMES: [&str; 2] = ["auto", "tollgate/auto"];

fn aliases(file: &FileConfig, by_slug: &crate::FastMap<String, Arc<Model>>, errs: &mut Errors) -> crate::FastMap<String, Vec<String>> {
    let mut out = crate::FastMap::default();
    for (i, a) in file.aliases.iter().enumerate() {
        let path = format!("aliases[{i}]");
        if a.name.is_empty() || a.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errs.push(format!("{path}.name"), "must be non-empty with no spaces");
            continue;
        }
        if by_slug.contains_key(&a.name) || AUTO_NAMES.contains(&a.name.as_str()) {
            errs.push(format!("{path}.name"), format!("'{}' is already a model", a.name));
            continue;
        }
        if out.contains_key(&a.name) {
            errs.push(format!("{path}.name"), format!("duplicate alias '{}'", a.name));
            continue;
        }
        if a.models.is_empty() {
            errs.push(format!("{path}.models"), "must list at least one model");
        }
        for (j, m) in a.models.iter().enumerate() {
            if !by_slug.contains_key(m) {
                errs.push(format!("{path}.models[{j}]"), format!("unknown model '{m}'"));
            }
        }
        out.insert(a.name.clone(), a.models.clone());
    }
    out
}

fn routing_settings(r: &RoutingFile, errs: &mut Errors) -> RoutingSettings {
    if !(1..=16).contains(&r.max_attempts) {
        errs.push("routing.max_attempts", "must be between 1 and 16");
    }
    if r.failure_threshold == 0 {
        errs.push("routing.failure_threshold", "must be at least 1");
    }
    let mut secs = |field: &str, v: f64| -> Duration {
        if v.is_finite() && v > 0.0 && v <= 86_400.0 {
            Duration::from_secs_f64(v)
        } else {
            errs.push(format!("routing.{field}"), "must be a number of seconds in (0, 86400]");
            Duration::from_secs(1)
        }
    };
    let window = secs("failure_window_secs", r.failure_window_secs);
    let ejection = secs("ejection_secs", r.ejection_secs);
    let max_ejection = secs("max_ejection_secs", r.max_ejection_secs);
    let total_timeout = secs("total_timeout_secs", r.total_timeout_secs);
    if max_ejection < ejection {
        errs.push("routing.max_ejection_secs", "must be at least ejection_secs");
    }
    RoutingSettings {
        max_attempts: r.max_attempts.clamp(1, 16),
        health: crate::routing::health::HealthParams {
            failure_threshold: r.failure_threshold.max(1),
            window,
            ejection,
            max_ejection: max_ejection.max(ejection),
        },
        total_timeout,
    }
}

fn seconds(path: &str, field: &str, v: Option<f64>, errs: &mut Errors) -> Option<Duration> {
    match v {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Some(Duration::from_secs_f64(s)),
        Some(_) => {
            errs.push(format!("{path}.{field}"), "must be a number of seconds in (0, 86400]");
            None
        }
    }
}

/// The model's routes (the default one first, then `[[models.routes]]`), its balancing,
/// fallbacks, attempt budget and timeouts.
fn with_routes(
    path: &str,
    m: &ModelFile,
    mut model: Model,
    providers: &crate::FastMap<String, Arc<Provider>>,
    provider_files: &std::collections::BTreeMap<String, ProviderFile>,
    errs: &mut Errors,
) -> Option<Model> {
    let before = errs.0.len();
    model.balance = match m.balance.as_deref() {
        None | Some("weighted") => Balance::Weighted,
        Some("least_outstanding") => Balance::LeastOutstanding,
        Some(other) => {
            errs.push(format!("{path}.balance"), format!("'{other}' is not weighted or least_outstanding"));
            Balance::Weighted
        }
    };
    if let Some(n) = m.max_attempts {
        if !(1..=16).contains(&n) {
            errs.push(format!("{path}.max_attempts"), "must be between 1 and 16");
        }
    }
    model.max_attempts = m.max_attempts;
    model.fallbacks = m.fallbacks.clone();
    model.auto = m.auto.unwrap_or(true);
    model.total_timeout = seconds(path, "total_timeout_secs", m.total_timeout_secs, errs);
    let connect = seconds(path, "connect_timeout_secs", m.connect_timeout_secs, errs);
    let first_byte = seconds(path, "first_byte_timeout_secs", m.first_byte_timeout_secs, errs);
    let idle = seconds(path, "idle_timeout_secs", m.idle_timeout_secs, errs);

    let price = |field: &str, v: Option<f64>, default: Nano, errs: &mut Errors| -> Nano {
        match v {
            None => default,
            Some(v) if v.is_finite() && v >= 0.0 => money::price_per_mtok_to_nano(v).unwrap_or_else(|e| {
                errs.push(field.to_string(), e);
                0
            }),
            Some(v) => {
                errs.push(field.to_string(), format!("must be a non-negative price, got {v}"));
                0
            }
        }
    };
    struct Draft {
        provider: String,
        upstream_model: String,
        weight: u32,
        priority: u32,
        input: Nano,
        output: Nano,
        input_display: f64,
        output_display: f64,
    }
    let mut drafts = vec![Draft {
        provider: m.provider.clone(),
        upstream_model: m.upstream_model.clone(),
        weight: m.weight.unwrap_or(1),
        priority: m.priority.unwrap_or(0),
        input: model.input_per_mtok,
        output: model.output_per_mtok,
        input_display: m.input_per_mtok,
        output_display: m.output_per_mtok,
    }];
    for (i, r) in m.routes.iter().enumerate() {
        let rpath = format!("{path}.routes[{i}]");
        if !provider_files.contains_key(&r.provider) {
            errs.push(format!("{rpath}.provider"), format!("unknown provider '{}'", r.provider));
            continue;
        }
        let upstream_model = r.upstream_model.clone().unwrap_or_else(|| m.upstream_model.clone());
        if upstream_model.is_empty() {
            errs.push(format!("{rpath}.upstream_model"), "must not be empty");
        }
        if drafts.iter().any(|d| d.provider == r.provider && d.upstream_model == upstream_model) {
            errs.push(rpath.clone(), format!("duplicate route {} / {upstream_model}", r.provider));
            continue;
        }
        drafts.push(Draft {
            provider: r.provider.clone(),
            upstream_model,
            weight: r.weight.unwrap_or(1),
            priority: r.priority.unwrap_or(0),
            input: price(&format!("{rpath}.input_per_mtok"), r.input_per_mtok, model.input_per_mtok, errs),
            output: price(&format!("{rpath}.output_per_mtok"), r.output_per_mtok, model.output_per_mtok, errs),
            input_display: r.input_per_mtok.unwrap_or(m.input_per_mtok),
            output_display: r.output_per_mtok.unwrap_or(m.output_per_mtok),
        });
    }
    if errs.0.len() != before {
        return None;
    }
    let mut routes = Vec::with_capacity(drafts.len());
    for (index, d) in drafts.into_iter().enumerate() {
        // A provider that failed its own validation has its error already.
        let Some(p) = providers.get(&d.provider) else { continue };
        let mut view = model.clone();
        view.provider = d.provider.clone();
        view.upstream_model = d.upstream_model.clone();
        view.input_per_mtok = d.input;
        view.output_per_mtok = d.output;
        view.input_per_mtok_display = d.input_display;
        view.output_per_mtok_display = d.output_display;
        let health = crate::routing::health::registry().get(crate::routing::health::RouteKey {
            provider: d.provider.clone(),
            upstream_model: d.upstream_model.clone(),
            base_url: p.base_url.clone(),
        });
        routes.push(Arc::new(RouteSpec {
            index,
            provider: d.provider,
            model: Arc::new(view),
            weight: d.weight,
            priority: d.priority,
            timeouts: Timeouts {
                connect: connect.unwrap_or(p.connect_timeout),
                first_byte: first_byte.unwrap_or(p.first_byte_timeout),
                idle: idle.unwrap_or(p.idle_timeout),
                attempt_total: p.total_timeout,
            },
            health,
        }));
    }
    model.routes = routes;
    Some(model)
}

/// `tls_cert`/`tls_key` and `[[server.tls_certs]]` as certificate specs, each file read and
/// checked (PEM, key matching the certificate, names covered), so `tollgate check` reports a
/// bad certificate with its key path instead of the listener failing at startup.
fn tls_certs(s: &ServerFile, errs: &mut Errors) -> Vec<crate::tls::CertSpec> {
    use crate::tls::CertSpec;
    let mut specs = Vec::new();
    match (&s.tls_cert, &s.tls_key) {
        (Some(cert), Some(key)) => specs.push(CertSpec {
            origin: "server.tls_cert".into(),
            cert_origin: "server.tls_cert".into(),
            key_origin: "server.tls_key".into(),
            names: vec![],
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
        }),
        (Some(_), None) => errs.push("server.tls_key", "required with server.tls_cert"),
        (None, Some(_)) => errs.push("server.tls_cert", "required with server.tls_key"),
        (None, None) => {}
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, c) in s.tls_certs.iter().enumerate() {
        let origin = format!("server.tls_certs[{i}]");
        if c.names.is_empty() {
            errs.push(format!("{origin}.names"), "list at least one SNI name (the default certificate is server.tls_cert)");
        }
        for (j, name) in c.names.iter().enumerate() {
            if let Err(e) = crate::tls::check_sni_name(name) {
                errs.push(format!("{origin}.names[{j}]"), e);
            } else if let Some(first) = seen.insert(name, i) {
                errs.push(format!("{origin}.names[{j}]"), format!("'{name}' is already served by server.tls_certs[{first}]"));
            }
        }
        specs.push(CertSpec {
            cert_origin: format!("{origin}.cert"),
            key_origin: format!("{origin}.key"),
            origin,
            names: c.names.clone(),
            cert: PathBuf::from(&c.cert),
            key: PathBuf::from(&c.key),
        });
    }
    for spec in &specs {
        if let Err(e) = crate::tls::load_cert(spec) {
            errs.push(e.path, e.message);
        }
    }
    specs
}

fn server_settings(
    file: &FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> ServerSettings {
    let s = &file.server;
    if s.listen.is_empty() && s.tls_listen.is_empty() {
        errs.push("server.listen", "at least one listener is required");
    }
    for (i, addr) in s.listen.iter().enumerate() {
        check_addr(&format!("server.listen[{i}]"), addr, errs);
    }
    for (i, addr) in s.tls_listen.iter().enumerate() {
        check_addr(&format!("server.tls_listen[{i}]"), addr, errs);
    }
    let tls_certs = tls_certs(s, errs);
    if !s.tls_listen.is_empty() && tls_certs.is_empty() {
        errs.push("server.tls_listen", "needs server.tls_cert and server.tls_key (or [[server.tls_certs]])");
    }
    if let Some(addr) = s.metrics_listen.as_ref().filter(|a| !a.is_empty()) {
        check_addr("server.metrics_listen", addr, errs);
    }
    distinct_listeners(s, errs);
    if s.key_prefix.is_empty() || !s.key_prefix.bytes().all(|b| b.is_ascii_graphic()) {
        errs.push("server.key_prefix", "must be non-empty printable ASCII");
    }
    if s.max_body_bytes < 1024 {
        errs.push("server.max_body_bytes", "must be at least 1024");
    }
    if !(1..=366 * 86_400).contains(&s.jwt_ttl_secs) {
        errs.push("server.jwt_ttl_secs", "must be between 1 and 31622400 (366 days)");
    }
    if s.login_attempts_per_minute == 0 {
        errs.push("server.login_attempts_per_minute", "must be at least 1");
    }
    if !(1..=3600).contains(&s.upgrade_store_wait_secs) {
        errs.push("server.upgrade_store_wait_secs", "must be between 1 and 3600");
    }
    let upgrade_sock = if s.upgrade_sock.is_empty() {
        PathBuf::from(&s.data_dir).join("upgrade.sock")
    } else {
        PathBuf::from(&s.upgrade_sock)
    };
    // sun_path holds 108 bytes, the terminating NUL included.
    if upgrade_sock.as_os_str().len() > 107 {
        errs.push("server.upgrade_sock", "a Unix socket path must be at most 107 bytes (set it, or use a shorter data_dir)");
    }
    let secret = |name: &str| env(name).filter(|v| !v.is_empty());
    let limits = limits_settings(&s.limits, errs);
    let cors = cors_policies(s, errs);
    ServerSettings {
        listen: s.listen.clone(),
        tls_listen: s.tls_listen.clone(),
        tls_cert: s.tls_cert.clone(),
        tls_key: s.tls_key.clone(),
        tls_certs,
        data_dir: PathBuf::from(&s.data_dir),
        metrics_listen: s.metrics_listen.clone().filter(|a| !a.is_empty()),
        admin_token: secret(&s.admin_token_env),
        jwt_secret: secret(&s.jwt_secret_env),
        key_prefix: s.key_prefix.clone(),
        threads: if s.threads == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            s.threads
        },
        grace_period_secs: s.grace_period_secs,
        max_body_bytes: s.max_body_bytes,
        reload_poll_ms: s.reload_poll_ms.max(50),
        access_log: s.access_log,
        jwt_ttl_secs: s.jwt_ttl_secs,
        byok_key: byok_key(s, env, errs),
        byok_key_env: s.byok_key_env.clone(),
        login_attempts_per_minute: s.login_attempts_per_minute,
        upgrade_sock,
        upgrade_store_wait_secs: s.upgrade_store_wait_secs,
        limits,
        cors,
    }
}

fn limits_settings(l: &super::file::LimitsFile, errs: &mut Errors) -> super::snapshot::Limits {
    let path = |f: &str| format!("server.limits.{f}");
    if !(1024..=1024 * 1024).contains(&l.max_header_bytes) {
        errs.push(path("max_header_bytes"), "must be between 1024 and 1048576");
    }
    // Pingora's parser refuses more than 256 header lines by itself.
    if !(8..=256).contains(&l.max_headers) {
        errs.push(path("max_headers"), "must be between 8 and 256");
    }
    let secs = |f: &str, v: f64, errs: &mut Errors| -> Duration {
        if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
            errs.push(path(f), "must be more than 0 and at most 86400 seconds");
            return Duration::from_secs(1);
        }
        Duration::from_secs_f64(v)
    };
    if l.max_json_depth > 0 && l.max_json_depth < 8 {
        errs.push(path("max_json_depth"), "must be 0 (no limit) or at least 8");
    }
    super::snapshot::Limits {
        max_header_bytes: l.max_header_bytes,
        max_headers: l.max_headers,
        header_timeout: secs("header_timeout_secs", l.header_timeout_secs, errs),
        keepalive_timeout: secs("keepalive_timeout_secs", l.keepalive_timeout_secs, errs),
        body_idle_timeout: secs("body_idle_timeout_secs", l.body_idle_timeout_secs, errs),
        body_timeout: secs("body_timeout_secs", l.body_timeout_secs, errs),
        write_timeout: secs("write_timeout_secs", l.write_timeout_secs, errs),
        max_connections_per_ip: l.max_connections_per_ip,
        max_requests_per_ip: l.max_requests_per_ip,
        max_json_depth: l.max_json_depth,
    }
}

fn cors_policies(s: &super::file::ServerFile, errs: &mut Errors) -> Vec<Arc<super::snapshot::CorsPolicy>> {
    let mut out = Vec::new();
    let mut catch_all = 0;
    for (i, c) in s.cors.iter().enumerate() {
        let path = |f: &str| format!("server.cors[{i}].{f}");
        let mut listeners = Vec::new();
        for (j, l) in c.listeners.iter().enumerate() {
            if !s.listen.contains(l) && !s.tls_listen.contains(l) {
                errs.push(format!("server.cors[{i}].listeners[{j}]"), format!("'{l}' is not in server.listen or server.tls_listen"));
                continue;
            }
            match l.parse::<std::net::SocketAddr>() {
                Ok(a) => listeners.push((a.ip(), a.port())),
                Err(_) => errs.push(format!("server.cors[{i}].listeners[{j}]"), "must be an IP address and port"),
            }
        }
        if c.listeners.is_empty() {
            catch_all += 1;
        }
        if c.allowed_origins.is_empty() {
            errs.push(path("allowed_origins"), "list at least one origin, or \"*\"");
        }
        let mut any_origin = false;
        let mut origins = Vec::new();
        for (j, o) in c.allowed_origins.iter().enumerate() {
            if o == "*" {
                any_origin = true;
                continue;
            }
            let o = o.trim_end_matches('/').to_ascii_lowercase();
            let ok = o
                .split_once("://")
                .is_some_and(|(scheme, host)| matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/'));
            if !ok {
                errs.push(format!("server.cors[{i}].allowed_origins[{j}]"), "must be \"*\" or scheme://host[:port] (no path)");
            }
            origins.push(o);
        }
        let header_ok = |h: &String| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !c.allowed_headers.iter().all(header_ok) {
            errs.push(path("allowed_headers"), "header names only (letters, digits, '-')");
        }
        out.push(Arc::new(super::snapshot::CorsPolicy {
            listeners,
            any_origin,
            origins,
            allowed_headers: (!c.allowed_headers.is_empty()).then(|| c.allowed_headers.join(", ")),
            max_age_secs: c.max_age_secs,
            allow_credentials: c.allow_credentials,
        }));
    }
    if catch_all > 1 {
        errs.push("server.cors", "at most one policy may leave `listeners` empty (the default policy)");
    }
    out
}

/// The BYOK master key from its variable: unset or empty disables BYOK; a malformed one is an
/// error (silently disabling it would strand the stored keys).
fn byok_key(
    s: &super::file::ServerFile,
    env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> Option<crate::billing::byok::ByokKey> {
    let text = env(&s.byok_key_env).filter(|v| !v.trim().is_empty())?;
    match crate::billing::byok::ByokKey::parse(&text) {
        Ok(key) => Some(key),
        Err(e) => {
            errs.push("server.byok_key_env", format!("environment variable {}: {e}", s.byok_key_env));
            None
        }
    }
}

fn billing_settings(file: &FileConfig, errs: &mut Errors) -> BillingSettings {
    let b = &file.billing;
    let overdraft = usd_amount("billing.overdraft_usd", b.overdraft_usd, errs);
    let markup = b.default_markup_percent;
    let default_markup_bps = if markup.is_finite() && (0.0..=1000.0).contains(&markup) {
        (markup * 100.0).round() as u32
    } else {
        errs.push("billing.default_markup_percent", "must be between 0 and 1000");
        0
    };
    let tiers = match &b.tiers {
        None => crate::billing::tiers::default_ladder(),
        Some(list) => tiers(list, errs),
    };
    if b.tier_recompute_secs < 1 {
        errs.push("billing.tier_recompute_secs", "must be at least 1");
    }
    let byok_fee = usd_amount("billing.byok_fee_usd", b.byok_fee_usd, errs);
    BillingSettings {
        overdraft,
        default_markup_bps,
        tiers,
        tier_recompute_secs: b.tier_recompute_secs.max(1),
        byok_fee,
    }
}

fn tiers(list: &[super::file::TierFile], errs: &mut Errors) -> Vec<crate::billing::tiers::Tier> {
    let mut out: Vec<crate::billing::tiers::Tier> = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let path = format!("billing.tiers[{i}]");
        let min_spend = usd_amount(&format!("{path}.min_spend_usd"), t.min_spend_usd, errs);
        let m = t.markup_percent;
        if !(m.is_finite() && (0.0..=1000.0).contains(&m)) {
            errs.push(format!("{path}.markup_percent"), "must be between 0 and 1000");
            continue;
        }
        if out.iter().any(|o| o.min_spend == min_spend) {
            errs.push(format!("{path}.min_spend_usd"), "two tiers have the same min_spend_usd");
            continue;
        }
        out.push(crate::billing::tiers::Tier { min_spend, markup_bps: (m * 100.0).round() as u32 });
    }
    out.sort_by_key(|t| t.min_spend);
    out
}

fn usd_amount(path: &str, usd: f64, errs: &mut Errors) -> Nano {
    // Config amounts are small and few; `price_per_mtok_to_nano` is the same conversion.
    match money::price_per_mtok_to_nano(usd) {
        Ok(n) => n,
        Err(e) => {
            errs.push(path, e);
            0
        }
    }
}

/// Every listener needs a port of its own: two on one port (or one on an unspecified address,
/// `0.0.0.0:P` or `[::]:P`, and another on port P of an address it covers) would either fail
/// to bind or, worse, split connections between the proxy and the metrics endpoint.
fn distinct_listeners(s: &ServerFile, errs: &mut Errors) {
    let all = (s.listen.iter().enumerate().map(|(i, a)| (format!("server.listen[{i}]"), a)))
        .chain(s.tls_listen.iter().enumerate().map(|(i, a)| (format!("server.tls_listen[{i}]"), a)))
        .chain(s.metrics_listen.iter().filter(|a| !a.is_empty()).map(|a| ("server.metrics_listen".to_string(), a)));
    let mut seen: Vec<(String, std::net::SocketAddr)> = Vec::new();
    for (path, text) in all {
        let Ok(addr) = text.parse::<std::net::SocketAddr>() else { continue };
        let clash = seen.iter().find(|(_, other)| other.port() == addr.port() && overlaps(other.ip(), addr.ip()));
        match clash {
            Some((first, _)) => errs.push(path, format!("'{text}' takes the port of {first}: every listener needs its own")),
            None => seen.push((path, addr)),
        }
    }
}

/// Whether listening on `a` and on `b` (same port) competes for the same connections: one
/// address, or an unspecified one covering the other (`0.0.0.0` covers IPv4 only; `[::]` is
/// dual-stack on Linux and covers both).
fn overlaps(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    let covers = |wide: std::net::IpAddr, other: std::net::IpAddr| {
        wide.is_unspecified() && (wide.is_ipv6() || other.is_ipv4())
    };
    a == b || covers(a, b) || covers(b, a)
}

fn check_addr(path: &str, addr: &str, errs: &mut Errors) {
    if addr.parse::<std::net::SocketAddr>().is_err() {
        errs.push(path, format!("'{addr}' is not an address like 127.0.0.1:8080"));
    }
}

fn provider(
    name: &str,
    p: &ProviderFile,
    env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> Option<Provider> {
    let path = format!("providers.{name}");
    let Some(kind) = ProviderKind::parse(&p.kind) else {
        errs.push(
            format!("{path}.kind"),
            format!("unknown provider kind '{}' (openai, anthropic, gemini, mock)", p.kind),
        );
        return None;
    };
    if p.serve.is_some() && kind != ProviderKind::Mock {
        errs.push(format!("{path}.serve"), "only a provider of kind \"mock\" can be served");
    }
    if let Some(addr) = &p.serve {
        check_addr(&format!("{path}.serve"), addr, errs);
    }
    let base_url = match (&p.base_url, &p.serve) {
        (Some(url), _) => url.clone(),
        (None, Some(addr)) => format!("http://{addr}/v1"),
        (None, None) => {
            errs.push(format!("{path}.base_url"), "required (or `serve` for a mock provider)");
            return None;
        }
    };
    let upstream = match parse_base_url(&base_url) {
        Ok(u) => u,
        Err(e) => {
            errs.push(format!("{path}.base_url"), e);
            return None;
        }
    };

    // A provider without a key variable (a local vLLM, the mock) needs none.
    let key = p.api_key_env.as_deref().map(|var| (var, env(var).filter(|v| !v.is_empty())));
    let (enabled, disabled_reason, api_key) = match (p.enabled, key) {
        (Some(false), _) => (false, Some("enabled = false".to_string()), None),
        (Some(true), Some((var, None))) => {
            errs.push(
                format!("{path}.api_key_env"),
                format!("environment variable {var} is not set (the provider is enabled = true)"),
            );
            return None;
        }
        (None, Some((var, None))) => (false, Some(format!("{var} is not set")), None),
        (_, Some((_, Some(secret)))) => (true, None, Some(secret)),
        (_, None) => (true, None, None),
    };

    let timeout = |field: &str, v: Option<f64>, default: Duration, errs: &mut Errors| match v {
        None => default,
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Duration::from_secs_f64(s),
        Some(_) => {
            errs.push(format!("{path}.{field}"), "must be a number of seconds in (0, 86400]");
            default
        }
    };
    let read_timeout = timeout("read_timeout_secs", p.read_timeout_secs, DEFAULT_READ_TIMEOUT, errs);
    let ca_bundle = match &p.ca_bundle {
        Some(_) if !upstream.tls => {
            errs.push(format!("{path}.ca_bundle"), "only for an https:// base_url");
            None
        }
        Some(file) => crate::tls::CaBundle::load(file)
            .map_err(|e| errs.push(format!("{path}.ca_bundle"), e))
            .ok(),
        None => None,
    };
    if p.http2.is_some() && !upstream.tls {
        errs.push(format!("{path}.http2"), "only for an https:// base_url (HTTP/2 is offered by TLS ALPN)");
    }
    let credential_header = match api_key.as_deref().map(|key| crate::providers::credential_header(kind, key)) {
        Some(Err(e)) => {
            errs.push(format!("{path}.api_key_env"), e);
            None
        }
        Some(Ok(header)) => Some(header),
        None => None,
    };
    let name_header = http::HeaderValue::from_str(name).unwrap_or_else(|_| {
        errs.push(path.clone(), "a provider's name cannot contain control characters (it is sent as X-Tollgate-Provider)");
        http::HeaderValue::from_static("invalid")
    });
    Some(Provider {
        name: name.to_string(),
        name_header,
        kind,
        upstream,
        api_key,
        credential_header,
        enabled,
        disabled_reason,
        connect_timeout: timeout("connect_timeout_secs", p.connect_timeout_secs, DEFAULT_CONNECT_TIMEOUT, errs),
        read_timeout,
        first_byte_timeout: timeout("first_byte_timeout_secs", p.first_byte_timeout_secs, read_timeout, errs),
        idle_timeout: timeout("idle_timeout_secs", p.idle_timeout_secs, read_timeout, errs),
        total_timeout: seconds(&path, "total_timeout_secs", p.total_timeout_secs, errs),
        serve_mock: p.serve.clone(),
        base_url: base_url.clone(),
        ca_bundle,
        http2: p.http2.unwrap_or(true),
    })
}

/// Split `https://api.openai.com/v1` into what a peer and a request path need.
pub fn parse_base_url(url: &str) -> Result<Upstream, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("'{url}' must start with http:// or https://")),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or(format!("'{url}' has no host"))?;
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    if uri.query().is_some() {
        return Err(format!("'{url}' must not have a query string"));
    }
    let host_header = http::HeaderValue::from_str(&authority).map_err(|_| format!("'{url}' has a host that cannot be a Host header"))?;
    Ok(Upstream {
        host_header,
        tls,
        host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
        port,
        authority,
        path_prefix: uri.path().trim_end_matches('/').to_string(),
    })
}

fn model(path: &str, m: &ModelFile, errs: &mut Errors) -> Option<Model> {
    let before = errs.0.len();
    if m.slug.is_empty() || m.slug.chars().any(|c| c.is_whitespace() || c.is_control()) {
        errs.push(format!("{path}.slug"), "must be non-empty with no spaces");
    }
    if m.upstream_model.is_empty() {
        errs.push(format!("{path}.upstream_model"), "must not be empty");
    }
    if m.context_length == 0 {
        errs.push(format!("{path}.context_length"), "must be positive");
    }
    let price = |field: &str, v: f64, errs: &mut Errors| -> Nano {
        if !v.is_finite() || v < 0.0 {
            errs.push(format!("{path}.{field}"), format!("must be a non-negative price, got {v}"));
            return 0;
        }
        match money::price_per_mtok_to_nano(v) {
            Ok(n) => n,
            Err(e) => {
                errs.push(format!("{path}.{field}"), e);
                0
            }
        }
    };
    let input = price("input_per_mtok", m.input_per_mtok, errs);
    let output = price("output_per_mtok", m.output_per_mtok, errs);
    let platforms = m.platforms.clone().unwrap_or_else(|| PLATFORMS.map(String::from).to_vec());
    for (i, p) in platforms.iter().enumerate() {
        if !PLATFORMS.contains(&p.as_str()) {
            errs.push(format!("{path}.platforms[{i}]"), format!("'{p}' is not intl or cn"));
        }
    }
    let mut seen = HashSet::new();
    for (i, c) in m.capabilities.iter().enumerate() {
        if !seen.insert(c) {
            errs.push(format!("{path}.capabilities[{i}]"), format!("duplicate capability '{c}'"));
        }
    }
    let endpoints = m
        .endpoints
        .clone()
        .unwrap_or_else(|| vec!["chat".to_string(), "completions".to_string()]);
    for (i, e) in endpoints.iter().enumerate() {
        if !ENDPOINTS.contains(&e.as_str()) {
            errs.push(format!("{path}.endpoints[{i}]"), format!("'{e}' is not one of {}", ENDPOINTS.join(", ")));
        }
    }
    let optional_price = |field: &str, v: Option<f64>, errs: &mut Errors| v.map(|v| price(field, v, errs));
    let cache_read_per_mtok = optional_price("cache_read_per_mtok", m.cache_read_per_mtok, errs);
    let cache_write_per_mtok = optional_price("cache_write_per_mtok", m.cache_write_per_mtok, errs);
    let input_per_mchar = optional_price("input_per_mchar", m.input_per_mchar, errs);
    let audio_per_minute = optional_price("audio_per_minute", m.audio_per_minute, errs);
    let mut image_prices = std::collections::BTreeMap::new();
    for (size, v) in m.image_prices.iter().flatten() {
        image_prices.insert(size.clone(), price(&format!("image_prices.{size}"), *v, errs));
    }
    if endpoints.iter().any(|e| e == "images") && image_prices.is_empty() {
        errs.push(format!("{path}.image_prices"), "a model serving images needs image_prices");
    }
    if endpoints.iter().any(|e| e == "speech") && input_per_mchar.is_none() {
        errs.push(format!("{path}.input_per_mchar"), "a model serving speech needs input_per_mchar");
    }
    let max_output_tokens = m.max_output_tokens.unwrap_or(m.context_length);
    if max_output_tokens == 0 {
        errs.push(format!("{path}.max_output_tokens"), "must be positive");
    }
    if errs.0.len() != before {
        return None;
    }
    Some(Model {
        slug: m.slug.clone(),
        provider: m.provider.clone(),
        upstream_model: m.upstream_model.clone(),
        context_length: m.context_length,
        max_output_tokens,
        input_per_mtok: input,
        output_per_mtok: output,
        capabilities: m.capabilities.clone(),
        platforms,
        name: m.name.clone().unwrap_or_else(|| m.slug.clone()),
        description: m.description.clone().unwrap_or_default(),
        input_per_mtok_display: m.input_per_mtok,
        output_per_mtok_display: m.output_per_mtok,
        endpoints,
        cache_read_per_mtok,
        cache_write_per_mtok,
        image_prices,
        input_per_mchar,
        audio_per_minute,
        // Filled in by `with_routes`.
        routes: Vec::new(),
        balance: Balance::Weighted,
        fallbacks: Vec::new(),
        max_attempts: None,
        total_timeout: None,
        auto: true,
        metrics: Default::default(),
    })
}

#[cfg(test)]
mod account_settings_tests {
    use crate::billing::money::NANO_PER_USD;

    fn load(extra: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<crate::config::Config, Vec<String>> {
        let text = format!("[server]\nlisten = [\"127.0.0.1:8080\"]\n{extra}");
        crate::config::from_toml_with_env(&text, env).map_err(|e| e.iter().map(|e| e.to_string()).collect())
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn tier_ladder_default_explicit_and_off() {
        let c = load("", &no_env).unwrap();
        assert_eq!(c.billing.tiers, crate::billing::tiers::default_ladder());
        assert_eq!(c.billing.tier_recompute_secs, 21_600);
        assert_eq!(c.billing.byok_fee, NANO_PER_USD / 1000);
        assert_eq!((c.server.jwt_ttl_secs, c.server.login_attempts_per_minute), (86_400, 10));
        let c = load(
            "[billing]\ntier_recompute_secs = 5\n[[billing.tiers]]\nmin_spend_usd = 10\nmarkup_percent = 5\n[[billing.tiers]]\nmin_spend_usd = 0\nmarkup_percent = 12.5\n",
            &no_env,
        )
        .unwrap();
        let got: Vec<(i64, u32)> = c.billing.tiers.iter().map(|t| (t.min_spend, t.markup_bps)).collect();
        assert_eq!(got, vec![(0, 1_250), (10 * NANO_PER_USD, 500)], "sorted by min_spend");
        assert!(load("[billing]\ntiers = []\n", &no_env).unwrap().billing.tiers.is_empty());
        let e = load(
            "[billing]\n[[billing.tiers]]\nmin_spend_usd = -1\nmarkup_percent = 5\n[[billing.tiers]]\nmin_spend_usd = 1\nmarkup_percent = 5000\n",
            &no_env,
        )
        .unwrap_err();
        assert!(e.iter().any(|m| m.starts_with("billing.tiers[0].min_spend_usd")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("billing.tiers[1].markup_percent")), "{e:?}");
    }

    #[test]
    fn every_listener_has_a_port_of_its_own() {
        let e = load("tls_listen = [\"0.0.0.0:8080\"]\nmetrics_listen = \"127.0.0.1:8080\"\n", &no_env).unwrap_err();
        let on = |path: &str| e.iter().any(|m| m.starts_with(path) && m.contains("takes the port of server.listen[0]"));
        assert!(on("server.tls_listen[0]") && on("server.metrics_listen"), "{e:?}");
        // Other ports, or the same port on two different specific addresses, are fine.
        assert!(load("metrics_listen = \"127.0.0.1:9464\"\n", &no_env).is_ok());
        let two = "[server]\nlisten = [\"127.0.0.1:8080\", \"127.0.0.2:8080\"]\n";
        assert!(crate::config::from_toml_with_env(two, &no_env).is_ok());
        // 0.0.0.0 covers IPv4 only; [::] covers both.
        let v4_v6 = "[server]\nlisten = [\"0.0.0.0:8080\", \"[::1]:8080\"]\n";
        assert!(crate::config::from_toml_with_env(v4_v6, &no_env).is_ok());
        let dual = "[server]\nlisten = [\"[::]:8080\", \"127.0.0.1:8080\"]\n";
        assert!(crate::config::from_toml_with_env(dual, &no_env).is_err());
    }

    #[test]
    fn byok_key_and_jwt_settings() {
        let key = "ab".repeat(32);
        let env = |name: &str| (name == "MY_BYOK").then(|| key.clone());
        let c = load("byok_key_env = \"MY_BYOK\"\njwt_ttl_secs = 5\n", &env).unwrap();
        assert!(c.server.byok_key.is_some());
        assert_eq!(c.server.jwt_ttl_secs, 5);
        assert!(!format!("{:?}", c.server).contains("abab"), "the key never shows in Debug");
        assert!(load("", &no_env).unwrap().server.byok_key.is_none());
        let bad = |name: &str| (name == "TOLLGATE_BYOK_KEY").then(|| "too-short".to_string());
        let e = load("", &bad).unwrap_err();
        assert!(e.iter().any(|m| m.starts_with("server.byok_key_env: environment variable TOLLGATE_BYOK_KEY")), "{e:?}");
        let e = load("jwt_ttl_secs = 0\nlogin_attempts_per_minute = 0\n", &no_env).unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
    }
}

#[cfg(test)]
mod routing_config_tests {
    const BASE: &str = r#"
[server]
listen = ["127.0.0.1:8080"]
[providers.a]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
read_timeout_secs = 7
[providers.b]
kind = "openai"
base_url = "http://127.0.0.1:9/v2"
total_timeout_secs = 30
"#;

    fn load(models: &str) -> Result<crate::config::Config, Vec<String>> {
        crate::config::from_toml_with_env(&format!("{BASE}{models}"), &|_| None)
            .map_err(|e| e.iter().map(|e| e.to_string()).collect())
    }

    const MODEL: &str = "[[models]]\nslug = \"m/x\"\nprovider = \"a\"\nupstream_model = \"x\"\ncontext_length = 100\ninput_per_mtok = 1\noutput_per_mtok = 2\n";

    #[test]
    fn routes_inherit_the_model_and_take_their_own_prices_and_timeouts() {
        let c = load(&format!(
            "{MODEL}weight = 4\nfirst_byte_timeout_secs = 2\n[[models.routes]]\nprovider = \"b\"\npriority = 1\noutput_per_mtok = 5\n"
        ))
        .unwrap();
        let m = &c.by_slug["m/x"];
        assert_eq!(m.routes.len(), 2);
        let (r0, r1) = (&m.routes[0], &m.routes[1]);
        assert_eq!((r0.provider.as_str(), r0.weight, r0.priority), ("a", 4, 0));
        assert_eq!((r1.provider.as_str(), r1.model.upstream_model.as_str(), r1.weight, r1.priority), ("b", "x", 1, 1));
        assert_eq!((r1.model.input_per_mtok, r1.model.output_per_mtok), (1_000_000_000, 5_000_000_000));
        assert_eq!(r1.model.slug, "m/x");
        // Timeouts: the model's first byte, the provider's idle (its read timeout) and total.
        assert_eq!(r0.timeouts.first_byte, std::time::Duration::from_secs(2));
        assert_eq!(r0.timeouts.idle, std::time::Duration::from_secs(7));
        assert_eq!(r1.timeouts.attempt_total, Some(std::time::Duration::from_secs(30)));
        assert_eq!(c.routing.max_attempts, 3);
        // Unchanged routes share health across loads; the registry keys on provider, model, URL.
        let again = load(&format!("{MODEL}[[models.routes]]\nprovider = \"b\"\n")).unwrap();
        assert!(std::sync::Arc::ptr_eq(&again.by_slug["m/x"].routes[1].health, &r1.health));
    }

    #[test]
    fn bad_routing_keys_are_errors_with_their_path() {
        let e = load(&format!(
            "{MODEL}balance = \"fastest\"\nfallbacks = [\"m/nope\", \"m/x\"]\nmax_attempts = 0\n\
             [[models.routes]]\nprovider = \"zz\"\n[[models.routes]]\nprovider = \"a\"\n[[models.routes]]\nprovider = \"b\"\ninput_per_mtok = -1\n\
             [[aliases]]\nname = \"m/x\"\nmodels = [\"m/x\"]\n[[aliases]]\nname = \"smart\"\nmodels = [\"m/none\"]\n\
             [routing]\nmax_attempts = 17\nejection_secs = 20\nmax_ejection_secs = 10\n"
        ))
        .unwrap_err();
        let has = |s: &str| e.iter().any(|x| x.starts_with(s));
        assert!(has("models[0].balance"), "{e:?}");
        assert!(has("models[0].max_attempts"), "{e:?}");
        assert!(has("models[0].routes[0].provider: unknown provider 'zz'"), "{e:?}");
        assert!(has("models[0].routes[1]: duplicate route"), "{e:?}");
        assert!(has("models[0].routes[2].input_per_mtok"), "{e:?}");
        assert!(has("routing.max_attempts"), "{e:?}");
        assert!(has("routing.max_ejection_secs"), "{e:?}");
        // Later checks need the model to exist; they are reported on a file whose model is fine.
        let e = load(&format!(
            "{MODEL}fallbacks = [\"m/nope\", \"m/x\"]\n[[aliases]]\nname = \"m/x\"\nmodels = [\"m/x\"]\n[[aliases]]\nname = \"auto\"\nmodels = [\"m/x\"]\n[[aliases]]\nname = \"smart\"\nmodels = [\"m/none\"]\n"
        ))
        .unwrap_err();
        let has = |s: &str| e.iter().any(|x| x.starts_with(s));
        assert!(has("models[0].fallbacks[0]: unknown model 'm/nope'"), "{e:?}");
        assert!(has("models[0].fallbacks[1]: a model cannot be its own fallback"), "{e:?}");
        assert!(has("aliases[0].name"), "{e:?}");
        assert!(has("aliases[1].name"), "{e:?}");
        assert!(has("aliases[2].models[0]: unknown model 'm/none'"), "{e:?}");
    }

    #[test]
    fn a_model_is_available_when_any_route_is() {
        let text = format!(
            "{BASE}[providers.off]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v3\"\nenabled = false\n\
             [[models]]\nslug = \"m/y\"\nprovider = \"off\"\nupstream_model = \"y\"\ncontext_length = 100\ninput_per_mtok = 1\noutput_per_mtok = 1\n\
             [[models.routes]]\nprovider = \"b\"\n"
        );
        let c = crate::config::from_toml_with_env(&text, &|_| None).unwrap();
        let (m, p) = c.route("m/y").unwrap();
        assert_eq!((m.slug.as_str(), p.name.as_str()), ("m/y", "b"));
        assert_eq!(c.available_models().count(), 1);
    }
}
