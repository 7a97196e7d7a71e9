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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerFile {
    pub listen: Vec<String>,
    pub tls_listen: Vec<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
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
}

impl Default for ServerFile {
    fn default() -> Self {
        ServerFile {
            listen: vec!["127.0.0.1:8080".into()],
            tls_listen: vec![],
            tls_cert: None,
            tls_key: None,
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
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingFile {
    /// How far below zero concurrent requests may push an account, in USD.
    pub overdraft_usd: f64,
    /// Markup applied to accounts that have no tier of their own, in percent.
    pub default_markup_percent: f64,
}

impl Default for BillingFile {
    fn default() -> Self {
        BillingFile { overdraft_usd: 0.0, default_markup_percent: 0.0 }
    }
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
}
