//! Turns the file's shapes into a [`Config`], collecting every error with its key path.
//!
//! All errors are gathered rather than stopping at the first, so `tollgate check` can show an
//! operator everything wrong with a file in one run.

use super::file::{FileConfig, ModelFile, ProviderFile};
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

    let mut providers = HashMap::new();
    for (name, p) in &file.providers {
        if let Some(provider) = provider(name, p, env, &mut errs) {
            providers.insert(name.clone(), Arc::new(provider));
        }
    }

    let mut models = Vec::new();
    let mut by_slug = HashMap::new();
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
            let model = Arc::new(model);
            by_slug.insert(model.slug.clone(), model.clone());
            models.push(model);
        }
    }

    if errs.0.is_empty() {
        Ok(Config { server, billing, providers, models, by_slug })
    } else {
        Err(errs.0)
    }
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
    if !s.tls_listen.is_empty() && (s.tls_cert.is_none() || s.tls_key.is_none()) {
        errs.push("server.tls_listen", "needs server.tls_cert and server.tls_key");
    }
    if let Some(addr) = s.metrics_listen.as_ref().filter(|a| !a.is_empty()) {
        check_addr("server.metrics_listen", addr, errs);
    }
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
    let secret = |name: &str| env(name).filter(|v| !v.is_empty());
    ServerSettings {
        listen: s.listen.clone(),
        tls_listen: s.tls_listen.clone(),
        tls_cert: s.tls_cert.clone(),
        tls_key: s.tls_key.clone(),
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
    }
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
    Some(Provider {
        name: name.to_string(),
        kind,
        upstream,
        api_key,
        enabled,
        disabled_reason,
        connect_timeout: timeout("connect_timeout_secs", p.connect_timeout_secs, DEFAULT_CONNECT_TIMEOUT, errs),
        read_timeout: timeout("read_timeout_secs", p.read_timeout_secs, DEFAULT_READ_TIMEOUT, errs),
        serve_mock: p.serve.clone(),
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
    Ok(Upstream {
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
