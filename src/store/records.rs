//! The records kept in redb. Most are stored as serde_json values (`tables::Row`); ledger
//! entries and generation records, written on every request, in a compact binary form
//! (`codec`) — they keep their serde derives for API responses, the export and the handoff
//! journal, and their JSON rows from before still decode.
//!
//! JSON keeps the file inspectable and lets fields be added later: every field that was not in
//! the first version carries `#[serde(default)]`, so old rows still decode. A field added to
//! `LedgerEntry`, `GenerationRecord` or `AttemptRecord` also needs a new version of their
//! binary layout in `codec`.

use serde::{Deserialize, Serialize};

/// A customer account. Money is not stored here: the balance is the sum of the account's
/// ledger entries, so the two can never disagree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub id: u64,
    pub email: String,
    /// Unix seconds.
    pub created_at: u64,
    /// An operator-set markup in basis points (2500 = 25%) that replaces the spend tier.
    /// None: the account pays its tier's markup (`billing.tiers`).
    #[serde(default)]
    pub markup_override_bps: Option<u32>,
    #[serde(default)]
    pub suspended: bool,
    /// argon2id PHC string for `/auth/login`, if the account has a password; never the
    /// password itself.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Account-wide spend cap per UTC calendar month, nano-USD (all keys together).
    #[serde(default)]
    pub monthly_cap_nano: Option<i64>,
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
    /// Tokens (prompt + completion) per minute; see `limits::tokens`.
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    /// Model slug globs this key may use (`openai/*`); None = every model.
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
    /// Unix seconds after which the key is refused like a revoked one.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// `intl` or `cn`: the only catalog this key may use; None = both.
    #[serde(default)]
    pub platform: Option<String>,
    /// Unix seconds of the revocation.
    #[serde(default)]
    pub revoked_at: Option<u64>,
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
    /// The `id` the client's response carried: the gateway's own (`chatcmpl-<id>`, see
    /// `store::client_response_id`); in records written before that, the provider's. Empty if
    /// the response had none.
    #[serde(default)]
    pub body_id: String,
    /// The provider's own id for the completion, as it sent it (`chatcmpl-…` from OpenAI,
    /// `msg_…` from Anthropic, Gemini's `responseId`), to find the request in the provider's
    /// logs; OpenRouter's `upstream_id`. Empty when the provider sent none (or the record
    /// predates the field).
    #[serde(default)]
    pub upstream_id: String,
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
    /// Every upstream attempt, in order (failovers included); the last one is the answer's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_log: Vec<AttemptRecord>,
}

/// One upstream attempt of a request: which route, what came back, how long it took.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The slug the attempt served (a fallback model's, for a fallback).
    pub model: String,
    pub provider: String,
    #[serde(default)]
    pub upstream_model: String,
    /// The provider's HTTP status; 0 when none came (refused, timeout).
    #[serde(default)]
    pub status: u16,
    pub latency_ms: u64,
    #[serde(default)]
    pub error: Option<String>,
}

/// Per (account, UTC day, key, model) sums of generation records, kept in the same
/// transaction as the records themselves (`store::writer`), so usage reports and spend tiers
/// read a few rows instead of scanning generations, and can never disagree with them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRollup {
    /// Generation records: billed requests and upstream failures alike.
    pub requests: i64,
    /// Of those, the ones whose `/generation` status is "error".
    #[serde(default)]
    pub failed: i64,
    pub tokens_prompt: i64,
    pub tokens_completion: i64,
    /// What was charged, nano-USD.
    pub cost_nano: i64,
}

impl UsageRollup {
    /// One generation's contribution; `sign` −1 takes it back out (a replaced record).
    pub fn of(g: &GenerationRecord, sign: i64) -> UsageRollup {
        UsageRollup {
            requests: sign,
            failed: sign * i64::from(g.is_failed()),
            tokens_prompt: sign * g.tokens_prompt as i64,
            tokens_completion: sign * g.tokens_completion as i64,
            cost_nano: sign * g.total_cost_nano,
        }
    }

    pub fn add(&mut self, other: &UsageRollup) {
        self.requests += other.requests;
        self.failed += other.failed;
        self.tokens_prompt += other.tokens_prompt;
        self.tokens_completion += other.tokens_completion;
        self.cost_nano = self.cost_nano.saturating_add(other.cost_nano);
    }
}

impl GenerationRecord {
    /// What `/generation` reports as status "error": an error message or an error status.
    pub fn is_failed(&self) -> bool {
        self.error.is_some() || self.status >= 400
    }
}

/// One operator or self-service change, for `GET /admin/audit`. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// Unix seconds.
    pub at: u64,
    /// "admin", or "account:<id>" for self-service changes.
    pub actor: String,
    /// e.g. "key.create", "account.update", "credits.grant".
    pub action: String,
    /// The account the change concerns.
    #[serde(default)]
    pub account_id: Option<u64>,
    /// What changed (ids, limits, amounts); never a secret.
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// A provider key an account brought (BYOK), AES-256-GCM encrypted; see `billing::byok`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByokRecord {
    pub account_id: u64,
    pub provider: String,
    /// base64 of the 96-bit nonce.
    pub nonce: String,
    /// base64 of ciphertext + tag.
    pub ciphertext: String,
    /// Unix seconds.
    pub created_at: u64,
}
