//! Billing: exact money, API keys, and the in-memory ledger.
//!
//! - `money`: nano-USD integers, decimal parsing/formatting, token cost.
//! - `keys`: the API-key ring consulted on every request.
//! - `ledger`: balances, reserve-before/settle-after, durable grants.
//! - `tiers`: markup tiers from each account's 30-day spend.
//! - `byok`: accounts' own provider keys, encrypted at rest.
//!
//! Nothing here waits on a disk sync on the request path; durability goes through
//! `store::StoreWriter`.

pub mod byok;
pub mod keys;
pub mod ledger;
pub mod money;
pub mod pricing;
pub mod tiers;

pub use keys::{generate_secret, hash_secret, redact, KeyEntry, KeyRing};
pub use ledger::{AccountBalance, GrantError, Ledger, Reservation, ReserveError};
pub use money::{
    format_usd, parse_usd, price_per_mtok_to_nano, token_cost, usd_json, Nano, NANO_PER_USD,
};
