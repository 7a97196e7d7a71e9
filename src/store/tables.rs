//! redb table definitions and the (de)serialisation of rows.
//!
//! Keys are compact native types (u64 ids, the generation id string); values are serde_json
//! bytes of the types in `records`.

use redb::TableDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;

/// account id → `AccountRecord`
pub const ACCOUNTS: TableDefinition<u64, &[u8]> = TableDefinition::new("accounts");
/// key id → `KeyRecord`
pub const KEYS: TableDefinition<u64, &[u8]> = TableDefinition::new("keys");
/// ledger seq → `LedgerEntry`
pub const LEDGER: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger");
/// generation id → `GenerationRecord`
pub const GENERATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("generations");
/// upstream body id ("chatcmpl-…") → generation id
pub const GENERATION_BY_BODY: TableDefinition<&str, &str> =
    TableDefinition::new("generation_by_body");
/// counter / schema name → value
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (account id, UTC day index, key id, model slug) → `UsageRollup`. Account first, then day,
/// so one account's days are one contiguous range.
pub const USAGE: TableDefinition<(u64, u64, u64, &str), &[u8]> = TableDefinition::new("usage_rollups");
/// key id → unix seconds it was last used; its own table so the periodic flush never
/// rewrites (and so never races) the key records.
pub const KEY_LAST_USED: TableDefinition<u64, u64> = TableDefinition::new("key_last_used");
/// audit seq → `AuditEntry`
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// (account id, provider name) → `ByokRecord`
pub const BYOK: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("byok");

/// `META` keys.
pub const META_SCHEMA_VERSION: &str = "schema_version";
/// High-water marks: one past the largest id ever written. Seeding counters from
/// max(high-water mark, last key + 1) means an id is never reused, even if rows were removed.
pub const META_NEXT_ACCOUNT: &str = "next_account_id";
pub const META_NEXT_KEY: &str = "next_key_id";
pub const META_NEXT_LEDGER: &str = "next_ledger_seq";
pub const META_NEXT_AUDIT: &str = "next_audit_seq";

/// The layout written by this version. 2 added usage rollups (built from the generations of a
/// version-1 file when it is first opened), key last-used times, the audit log and BYOK keys.
pub const SCHEMA_VERSION: u64 = 2;

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError(format!("encode: {e}")))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError(format!("decode {what}: {e}")))
}
