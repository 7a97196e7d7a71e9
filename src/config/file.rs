//! The config file as written: TOML shapes only, no meaning yet.
//!
//! Every struct denies unknown fields so that a typo (`input_per_mtoks`) is an error with its
//! key path instead of a silently ignored setting. `validate.rs` turns these into the snapshot.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub billing: BillingFile,
    /// Keyed by provider name; BTreeMap keeps error messages and `/models` in a stable order.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderFile>,
    #[serde(default)]
    pub models: Vec<ModelFile>,
    /// Failover, health and deadlines shared by every model (`[routing]`).
    #[serde(default)]
    pub routing: RoutingFile,
    /// Names that stand for a list of models tried in order (`[[aliases]]`).
    #[serde(default)]
    pub aliases: Vec<AliasFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerFile {
    pub listen: Vec<String>,
    pub tls_listen: Vec<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// More certificates for `tls_listen`, chosen by the SNI name a client asks for
    /// (`[[server.tls_certs]]`); `tls_cert`/`tls_key` stay the default for other names.
    pub tls_certs: Vec<TlsCertFile>,
    pub data_dir: String,
    pub metrics_listen: Option<String>,
    pub admin_token_env: String,
    pub jwt_secret_env: String,
    pub key_prefix: String,
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    /// How long SIGTERM waits for in-flight requests before the process exits.
    pub grace_period_secs: u64,
    /// Largest request body accepted, in bytes (413 above it).
    pub max_body_bytes: u64,
    /// Seconds between checks of the config file's modification time (hot reload).
    pub reload_poll_ms: u64,
    /// Access log: one JSON line per request on stdout.
    pub access_log: bool,
    /// Lifetime of a login token (JWT) from `/auth/login`, in seconds.
    pub jwt_ttl_secs: u64,
    /// Environment variable holding the BYOK master key (32 bytes, base64 or hex).
    pub byok_key_env: String,
    /// `/auth/login` and `/auth/register` attempts per minute per client address (and login
    /// attempts per email).
    pub login_attempts_per_minute: u32,
    /// Unix socket on which a new process started with `serve --upgrade` receives the
    /// listening sockets of the old one. Empty: `<data_dir>/upgrade.sock`.
    pub upgrade_sock: String,
    /// How long a process started with `--upgrade`, once it has the listening sockets, waits
    /// for the old process to release the store.
    pub upgrade_store_wait_secs: u64,
    /// `[server.limits]`: the defences against hostile clients (docs/hardening.md).
    pub limits: LimitsFile,
    /// `[[server.cors]]`: CORS policies for browser clients, per listener.
    pub cors: Vec<CorsFile>,
}

impl Default for ServerFile {
    fn default() -> Self {
        ServerFile {
            listen: vec!["127.0.0.1:8080".into()],
            tls_listen: vec![],
            tls_cert: None,
            tls_key: None,
            tls_certs: vec![],
            data_dir: "data".into(),
            metrics_listen: Some("127.0.0.1:9464".into()),
            admin_token_env: "TOLLGATE_ADMIN_TOKEN".into(),
            jwt_secret_env: "TOLLGATE_JWT_SECRET".into(),
            key_prefix: "sk-tg-".into(),
            threads: 0,
            grace_period_secs: 10,
            max_body_bytes: 16 * 1024 * 1024,
            reload_poll_ms: 1000,
            access_log: true,
            jwt_ttl_secs: 86_400,
            byok_key_env: "TOLLGATE_BYOK_KEY".into(),
            login_attempts_per_minute: 10,
            upgrade_sock: String::new(),
            upgrade_store_wait_secs: 30,
            limits: LimitsFile::default(),
            cors: Vec::new(),
        }
    }
}

/// `[server.limits]`: size, time and concurrency bounds on what one client may make the
/// gateway hold (docs/hardening.md). Every field has a default; 0 turns a cap off where noted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    /// Largest request header (request line and every header line), bytes: 431 above it.
    pub max_header_bytes: usize,
    /// Most header lines in one request: 431 above it.
    pub max_headers: usize,
    /// Seconds from a request header's first byte (or a new connection's accept) to its end:
    /// 408 and the connection closed after it (slowloris).
    pub header_timeout_secs: f64,
    /// Seconds an idle keep-alive connection waits for its next request.
    pub keepalive_timeout_secs: f64,
    /// Seconds allowed between two reads of a request body.
    pub body_idle_timeout_secs: f64,
    /// Seconds to receive a whole request body.
    pub body_timeout_secs: f64,
    /// Seconds one write to a client may wait (a client that stops reading is cut off).
    pub write_timeout_secs: f64,
    /// Open connections per client address (IPv6: per /64); 0 = no cap.
    pub max_connections_per_ip: u32,
    /// Requests in flight per client address (HTTP/2 streams included); 0 = no cap.
    pub max_requests_per_ip: u32,
    /// Deepest nesting of arrays and objects in a JSON request body; 0 = no limit.
    pub max_json_depth: u32,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            header_timeout_secs: 10.0,
            keepalive_timeout_secs: 60.0,
            body_idle_timeout_secs: 30.0,
            body_timeout_secs: 300.0,
            write_timeout_secs: 60.0,
            max_connections_per_ip: 1024,
            max_requests_per_ip: 1024,
            max_json_depth: 64,
        }
    }
}

/// One `[[server.cors]]` policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    /// Listener addresses (as in `listen` / `tls_listen`) this policy applies to; absent or
    /// empty: every listener without a policy of its own.
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Origins allowed (`https://app.example.com`), or `"*"` for any.
    pub allowed_origins: Vec<String>,
    /// Request headers a browser may send; absent or empty: whatever the preflight asks for.
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    /// How long a browser may cache a preflight answer, seconds.
    #[serde(default = "default_cors_max_age")]
    pub max_age_secs: u64,
    /// Send `Access-Control-Allow-Credentials: true` (cookies; the API itself uses bearer keys).
    #[serde(default)]
    pub allow_credentials: bool,
}

fn default_cors_max_age() -> u64 {
    600
}

/// One `[[server.tls_certs]]` entry: a certificate chain and its key, served to clients whose
/// SNI is one of `names` (exact host names, or `*.example.com` for one label).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertFile {
    pub names: Vec<String>,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingFile {
    /// How far below zero concurrent requests may push an account, in USD.
    pub overdraft_usd: f64,
    /// Markup applied to accounts that have no tier of their own, in percent.
    pub default_markup_percent: f64,
    /// Markup tiers by 30-day spend. Absent: the default ladder; `[]`: no tiers, every
    /// account pays `default_markup_percent`.
    pub tiers: Option<Vec<TierFile>>,
    /// Seconds between recomputations of every account's tier.
    pub tier_recompute_secs: u64,
    /// Flat routing fee per request served with an account's own provider key (BYOK), USD.
    pub byok_fee_usd: f64,
}

impl Default for BillingFile {
    fn default() -> Self {
        BillingFile {
            overdraft_usd: 0.0,
            default_markup_percent: 0.0,
            tiers: None,
            tier_recompute_secs: 21_600,
            byok_fee_usd: 0.001,
        }
    }
}

/// One `[[billing.tiers]]` rung.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierFile {
    /// Rolling 30-day billed spend, USD, from which this markup applies.
    pub min_spend_usd: f64,
    pub markup_percent: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    pub kind: String,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    /// `true`: the key variable must be set (a missing one is a config error).
    /// `false`: off. Absent: on when the key variable is set, else disabled with a log line.
    pub enabled: Option<bool>,
    /// For `kind = "mock"` only: serve the mock provider in-process on this address.
    pub serve: Option<String>,
    /// Seconds to wait for a connection.
    pub connect_timeout_secs: Option<f64>,
    /// Seconds to wait between reads from the upstream (first byte and between chunks).
    pub read_timeout_secs: Option<f64>,
    /// Seconds from sending a request to the response header (default: read_timeout_secs).
    pub first_byte_timeout_secs: Option<f64>,
    /// Seconds allowed between two chunks of a response (default: read_timeout_secs).
    pub idle_timeout_secs: Option<f64>,
    /// Longest one attempt on this provider may take, start to end (default: no limit of its
    /// own; the request's deadline still applies).
    pub total_timeout_secs: Option<f64>,
    /// For an `https` provider: a PEM file of CA certificates trusted for this provider
    /// *instead of* the system roots (a private PKI).
    pub ca_bundle: Option<String>,
    /// For an `https` provider: offer HTTP/2 by ALPN (default true; HTTP/1.1 when the
    /// provider does not pick h2). `false`: HTTP/1.1 only.
    pub http2: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub slug: String,
    pub provider: String,
    pub upstream_model: String,
    pub context_length: u64,
    /// The most completion tokens one request may produce; reservations use it when the
    /// client sends no `max_tokens`. Defaults to `context_length`.
    pub max_output_tokens: Option<u64>,
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Which `X-Platform` catalogs list the model (`intl`, `cn`); default both.
    pub platforms: Option<Vec<String>>,
    pub name: Option<String>,
    pub description: Option<String>,
    /// Which inference endpoints the model serves: chat, completions, embeddings, images,
    /// speech, transcriptions. Default: chat and completions.
    pub endpoints: Option<Vec<String>>,
    /// USD per 1M prompt tokens read from / written to the provider's prompt cache (default:
    /// the input price).
    pub cache_read_per_mtok: Option<f64>,
    pub cache_write_per_mtok: Option<f64>,
    /// Images: USD per generated image by `size` ("1024x1024" = 0.04); key "default" for
    /// sizes not listed.
    pub image_prices: Option<BTreeMap<String, f64>>,
    /// Speech: USD per 1M input characters.
    pub input_per_mchar: Option<f64>,
    /// Transcriptions: USD per minute of audio (when the provider reports seconds).
    pub audio_per_minute: Option<f64>,
    /// Weight and priority of the default route (the model's own provider/upstream_model/prices)
    /// among `routes`: defaults 1 and 0.
    pub weight: Option<u32>,
    pub priority: Option<u32>,
    /// More deployments of the same model (`[[models.routes]]`).
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    /// How a request picks among healthy routes of the same priority: "weighted" (default) or
    /// "least_outstanding".
    pub balance: Option<String>,
    /// Other slugs tried, in order, when every route of this model failed.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Upstream attempts per request (default `routing.max_attempts`).
    pub max_attempts: Option<u32>,
    /// Per-model timeouts, overriding the provider's for this model's routes; the model's
    /// `total_timeout_secs` is the deadline of a whole request for it, failovers included.
    pub connect_timeout_secs: Option<f64>,
    pub first_byte_timeout_secs: Option<f64>,
    pub idle_timeout_secs: Option<f64>,
    pub total_timeout_secs: Option<f64>,
    /// Whether `model: "auto"` may pick this model (default true).
    pub auto: Option<bool>,
}

/// One `[[models.routes]]` entry: the same model served by another provider or key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub provider: String,
    /// Default: the model's `upstream_model`.
    pub upstream_model: Option<String>,
    /// Share of traffic among healthy routes of the same priority (default 1; 0 = only when
    /// nothing else is left).
    pub weight: Option<u32>,
    /// Lower is tried first (default 0).
    pub priority: Option<u32>,
    /// This route's prices, USD per 1M tokens (default: the model's).
    pub input_per_mtok: Option<f64>,
    pub output_per_mtok: Option<f64>,
}

/// `[routing]`: failover, passive health checks and deadlines.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingFile {
    /// Upstream attempts per request, failovers included (1..=16).
    pub max_attempts: u32,
    /// Failures of a route within `failure_window_secs` that eject it.
    pub failure_threshold: u32,
    pub failure_window_secs: f64,
    /// First ejection's length; doubles each time the half-open probe fails, up to
    /// `max_ejection_secs`.
    pub ejection_secs: f64,
    pub max_ejection_secs: f64,
    /// Deadline of a whole request (all attempts, streaming included) unless the model sets one.
    pub total_timeout_secs: f64,
}

impl Default for RoutingFile {
    fn default() -> Self {
        RoutingFile {
            max_attempts: 3,
            failure_threshold: 3,
            failure_window_secs: 30.0,
            ejection_secs: 10.0,
            max_ejection_secs: 300.0,
            total_timeout_secs: 600.0,
        }
    }
}

/// One `[[aliases]]` entry: a name clients send as `model`, standing for models tried in order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasFile {
    pub name: String,
    pub models: Vec<String>,
}
