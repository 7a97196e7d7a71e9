//! The validated config: what a request pins for its whole life.
//!
//! Everything here is immutable after validation. Prices are already nano-USD, providers
//! already know whether they are enabled and hold their resolved key, and models are indexed
//! by slug, so the request path does no parsing and no lookups in the environment.

use crate::billing::money::Nano;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Gemini,
    /// The project's own fake provider: OpenAI wire format, optionally served in-process.
    Mock,
}

impl ProviderKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "openai" => Some(Self::OpenAi),
            "anthropic" => Some(Self::Anthropic),
            "gemini" => Some(Self::Gemini),
            "mock" => Some(Self::Mock),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Mock => "mock",
        }
    }
}

/// Where a provider lives, split once so each request only clones small strings.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `host` or `host:port` as the Host header must carry it.
    pub authority: String,
    /// Path prefix from `base_url` without a trailing slash, e.g. `/v1`.
    pub path_prefix: String,
    /// `authority` as a header value, built once (every request sends it as Host).
    pub host_header: http::HeaderValue,
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    /// `name` as the value of the `X-Tollgate-Provider` response header, built once.
    pub name_header: http::HeaderValue,
    pub kind: ProviderKind,
    pub upstream: Upstream,
    /// The resolved secret; never logged, never shown.
    pub api_key: Option<String>,
    /// The header carrying `api_key` in this provider's wire format (`Authorization: Bearer …`,
    /// `x-api-key`, `x-goog-api-key`), built once and marked sensitive.
    pub credential_header: Option<(http::HeaderName, http::HeaderValue)>,
    pub enabled: bool,
    /// Why a provider is off, for the startup log and `/models` filtering.
    pub disabled_reason: Option<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// To the response header, and between two chunks (both default to `read_timeout`).
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    /// Longest one attempt on this provider may take; None = only the request's deadline.
    pub total_timeout: Option<Duration>,
    /// `serve` address of an in-process mock provider.
    pub serve_mock: Option<String>,
    /// The configured `base_url`, part of a route's health key.
    pub base_url: String,
    /// `ca_bundle`: CA certificates trusted for this provider instead of the system roots.
    pub ca_bundle: Option<crate::tls::CaBundle>,
    /// Offer HTTP/2 by ALPN to an `https` provider.
    pub http2: bool,
}

/// How a request picks among healthy routes of the same priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// At random, in proportion to the routes' weights.
    Weighted,
    /// The route with the fewest attempts in flight per unit of weight.
    LeastOutstanding,
}

/// The timeouts of one route: the model's setting, else the provider's, else the default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    /// Longest one attempt may take; None = only the request's deadline.
    pub attempt_total: Option<Duration>,
}

/// One deployment of a model: a provider, the name it knows the model by, and its prices.
#[derive(Debug)]
pub struct RouteSpec {
    /// 0 is the model's own provider/upstream_model/prices; then `[[models.routes]]` in order.
    pub index: usize,
    pub provider: String,
    /// The model as this route serves it: same slug and limits, this route's provider,
    /// upstream model and prices. Billing and the wire format use it.
    pub model: Arc<Model>,
    pub weight: u32,
    pub priority: u32,
    pub timeouts: Timeouts,
    /// Shared across config reloads for the same (provider, upstream model, base URL).
    pub health: Arc<crate::routing::health::RouteHealth>,
}

/// `[routing]`, validated.
#[derive(Debug, Clone)]
pub struct RoutingSettings {
    pub max_attempts: u32,
    pub health: crate::routing::health::HealthParams,
    /// A request's deadline unless its model sets `total_timeout_secs`.
    pub total_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub slug: String,
    pub provider: String,
    pub upstream_model: String,
    pub context_length: u64,
    pub max_output_tokens: u64,
    /// nano-USD per 1M prompt tokens.
    pub input_per_mtok: Nano,
    /// nano-USD per 1M completion tokens.
    pub output_per_mtok: Nano,
    pub capabilities: Vec<String>,
    pub platforms: Vec<String>,
    pub name: String,
    pub description: String,
    /// The prices as configured, for the catalog (display only; never used for money).
    pub input_per_mtok_display: f64,
    pub output_per_mtok_display: f64,
    /// Endpoints served, by name (`chat`, `completions`, `embeddings`, `images`, `speech`,
    /// `transcriptions`).
    pub endpoints: Vec<String>,
    /// nano-USD per 1M cached prompt tokens read / written; None = the input price.
    pub cache_read_per_mtok: Option<Nano>,
    pub cache_write_per_mtok: Option<Nano>,
    /// nano-USD per image by size ("default" for the rest).
    pub image_prices: std::collections::BTreeMap<String, Nano>,
    /// nano-USD per 1M input characters (speech).
    pub input_per_mchar: Option<Nano>,
    /// nano-USD per minute of audio (transcriptions).
    pub audio_per_minute: Option<Nano>,
    /// Every deployment of the model, the default route first. Empty in a route's own view of
    /// the model (`RouteSpec::model`).
    pub routes: Vec<Arc<RouteSpec>>,
    pub balance: Balance,
    /// Slugs tried in order when every route failed.
    pub fallbacks: Vec<String>,
    /// Upstream attempts per request; None = `routing.max_attempts`.
    pub max_attempts: Option<u32>,
    /// Deadline of a whole request for this model; None = `routing.total_timeout_secs`.
    pub total_timeout: Option<Duration>,
    /// Whether `model: "auto"` may pick it.
    pub auto: bool,
    /// This model's metric handles as one route serves it (filled on first use).
    pub metrics: crate::metrics::RouteMetrics,
}

impl Model {
    pub fn serves(&self, endpoint: &str) -> bool {
        self.endpoints.iter().any(|e| e == endpoint)
    }

    /// The price of one image of `size`, if the model prices images.
    pub fn image_price(&self, size: &str) -> Option<Nano> {
        self.image_prices.get(size).or_else(|| self.image_prices.get("default")).copied()
    }

    pub fn serves_platform(&self, platform: &str) -> bool {
        self.platforms.iter().any(|p| p == platform)
    }
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<String>,
    pub tls_listen: Vec<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// Every certificate of `tls_listen`: `tls_cert`/`tls_key` first (the default, no names),
    /// then `[[server.tls_certs]]` in order. Checked loadable by validation.
    pub tls_certs: Vec<crate::tls::CertSpec>,
    pub data_dir: PathBuf,
    pub metrics_listen: Option<String>,
    pub admin_token: Option<String>,
    pub jwt_secret: Option<String>,
    pub key_prefix: String,
    pub threads: usize,
    pub grace_period_secs: u64,
    pub max_body_bytes: u64,
    pub reload_poll_ms: u64,
    pub access_log: bool,
    pub jwt_ttl_secs: u64,
    /// The BYOK master key; None disables BYOK. Its `Debug` is redacted.
    pub byok_key: Option<crate::billing::byok::ByokKey>,
    /// The variable it came from, for error messages.
    pub byok_key_env: String,
    pub login_attempts_per_minute: u32,
    /// Where `serve --upgrade` receives the old process's listening sockets.
    pub upgrade_sock: PathBuf,
    pub upgrade_store_wait_secs: u64,
    /// `[server.limits]`, validated.
    pub limits: Limits,
    /// `[[server.cors]]`, validated, in file order.
    pub cors: Vec<Arc<CorsPolicy>>,
}

/// `[server.limits]`: see `config::file::LimitsFile` and docs/hardening.md.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub body_timeout: Duration,
    pub write_timeout: Duration,
    /// 0 = no cap.
    pub max_connections_per_ip: u32,
    pub max_requests_per_ip: u32,
    /// 0 = no limit.
    pub max_json_depth: u32,
}

/// One `[[server.cors]]` policy.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    /// The listeners it applies to: (IP, port); an unspecified IP (`0.0.0.0`, `[::]`) matches
    /// any local address on that port. Empty: every listener without a policy of its own.
    pub listeners: Vec<(std::net::IpAddr, u16)>,
    /// `"*"` was configured.
    pub any_origin: bool,
    /// Allowed origins, lower-cased, without a trailing slash.
    pub origins: Vec<String>,
    /// `Access-Control-Allow-Headers` as sent; None: the preflight's own request headers.
    pub allowed_headers: Option<String>,
    pub max_age_secs: u64,
    pub allow_credentials: bool,
}

#[derive(Debug, Clone)]
pub struct BillingSettings {
    pub overdraft: Nano,
    /// Basis points (2500 = 25 %). Applies to spend below the lowest tier (or to everyone when
    /// `tiers` is empty).
    pub default_markup_bps: u32,
    /// Sorted by `min_spend`, ascending.
    pub tiers: Vec<crate::billing::tiers::Tier>,
    pub tier_recompute_secs: u64,
    /// nano-USD per BYOK request.
    pub byok_fee: Nano,
}

/// One immutable, validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerSettings,
    pub billing: BillingSettings,
    pub providers: crate::FastMap<String, Arc<Provider>>,
    /// In file order, which is the catalog's order.
    pub models: Vec<Arc<Model>>,
    pub by_slug: crate::FastMap<String, Arc<Model>>,
    /// `[[aliases]]`: name → slugs, tried in order.
    pub aliases: crate::FastMap<String, Vec<String>>,
    pub routing: RoutingSettings,
}

impl Config {
    /// The model and the provider of its first enabled route, if the slug exists and any of
    /// its routes' providers is enabled.
    pub fn route(&self, slug: &str) -> Option<(&Arc<Model>, &Arc<Provider>)> {
        let model = self.by_slug.get(slug)?;
        let provider = self.first_enabled_provider(model)?;
        Some((model, provider))
    }

    /// Models with at least one enabled route, in catalog order.
    pub fn available_models(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.iter().filter(|m| self.first_enabled_provider(m).is_some())
    }

    fn first_enabled_provider(&self, model: &Model) -> Option<&Arc<Provider>> {
        let enabled = |name: &str| self.providers.get(name).filter(|p| p.enabled);
        if model.routes.is_empty() {
            return enabled(&model.provider);
        }
        model.routes.iter().find_map(|r| enabled(&r.provider))
    }
}
