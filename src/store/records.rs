//! The records kept in redb, stored as serde_json values.
//!
//! JSON keeps the file inspectable and lets fields be added later: every field that was not in
//! the first version carries `#[serde(default)]`, so old rows still decode.

use serde::{Deserialize, Serialize};

/// A customer account. Money is not stored here: the balance is the sum of the account's
/// ledger entries, so the two can never disagree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub id: u64,
    pub email: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Markup over provider prices in basis points (2500 = 25%).
    #[serde(default)]
    pub markup_bps: u32,
    #[serde(default)]
    pub suspended: bool,
    /// For a dashboard login, if any; never the password itself.
    #[serde(default)]
    pub password_hash: Option<String>,
}

/// An API key. Only the sha256 of the secret is kept; the secret is shown once, at creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: u64,
    pub account_id: u64,
    pub name: String,
    /// Lower-case hex sha256 of the full secret (prefix included).
    pub secret_hash: String,
    /// What the dashboard shows, e.g. "sk-tg-abc…xyz".
    pub redacted: String,
    /// Unix seconds.
    pub created_at: u64,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub rate_limit_rpm: Option<u32>,
    #[serde(default)]
    pub daily_cap_nano: Option<i64>,
    #[serde(default)]
    pub monthly_cap_nano: Option<i64>,
}

/// Why money moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerKind {
    /// Credit added (or, with a negative amount, an admin correction).
    Grant,
    /// A successful request's cost (negative amount).
    Charge,
}

/// One movement of money. An account's balance is the sum of its entries' `amount_nano`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Global sequence number, allocated in memory (see `store::IdCounters`).
    pub seq: u64,
    pub account_id: u64,
    /// Nano-USD: positive for a grant, negative for a charge.
    pub amount_nano: i64,
    pub kind: LedgerKind,
    /// The generation a charge pays for.
    #[serde(default)]
    pub generation_id: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    /// Unix milliseconds.
    pub at: u64,
}

/// What the gateway remembers about one request (billed or not), for `/generation` lookups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationRecord {
    /// Tollgate's id, from `store::new_generation_id()`.
    pub id: String,
    /// The upstream response's `id` field (e.g. "chatcmpl-…"); empty if there was none.
    #[serde(default)]
    pub body_id: String,
    pub account_id: u64,
    pub key_id: u64,
    pub model: String,
    pub provider: String,
    pub tokens_prompt: u64,
    pub tokens_completion: u64,
    /// What was charged; 0 for unbilled (failed) requests.
    pub total_cost_nano: i64,
    pub latency_ms: u64,
    /// HTTP status returned to the client.
    pub status: u16,
    #[serde(default)]
    pub streamed: bool,
    /// True when the provider reported no usage and tokens were counted locally.
    #[serde(default)]
    pub usage_estimated: bool,
    /// Unix seconds.
    pub created_at: u64,
    /// Upstream attempts made (retries/fallbacks); 0 when not tracked.
    #[serde(default)]
    pub attempts: u32,
    /// Why the request failed, for unbilled records.
    #[serde(default)]
    pub error: Option<String>,
}
