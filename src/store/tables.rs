//! redb table definitions and the (de)serialisation of rows.
//!
//! Keys are compact native types (u64 ids, the generation id string); values are the types in
//! `records`, stored through [`Row`]: serde_json, except ledger entries and generation records
//! (binary, see `codec`).

use redb::TableDefinition;

use super::records::{AccountRecord, AuditEntry, ByokRecord, KeyRecord, UsageRollup};
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

/// How a record is stored as a table value. Most records are serde_json (inspectable, and a
/// field added with `#[serde(default)]` still decodes old rows); the two written on every
/// request, `LedgerEntry` and `GenerationRecord`, have a compact binary form (`codec`) and
/// still read their JSON rows from before it.
pub trait Row: Sized {
    /// Appends the stored form of `self` to `out`.
    fn write_row(&self, out: &mut Vec<u8>) -> Result<(), String>;
    /// Decodes a stored value; a corrupt one is an error, never a panic.
    fn read_row(bytes: &[u8]) -> Result<Self, String>;
}

macro_rules! json_rows {
    ($($t:ty),*) => {$(
        impl Row for $t {
            fn write_row(&self, out: &mut Vec<u8>) -> Result<(), String> {
                serde_json::to_writer(out, self).map_err(|e| e.to_string())
            }
            fn read_row(bytes: &[u8]) -> Result<Self, String> {
                read_json(bytes)
            }
        }
    )*};
}
json_rows!(AccountRecord, KeyRecord, AuditEntry, ByokRecord, UsageRollup);

/// A JSON row (every record but the binary ones, and theirs from before the binary form).
pub(super) fn read_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

pub fn encode<T: Row>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// [`encode`] into a buffer the caller reuses (the writer thread: one per batch, not per row).
pub fn encode_into<T: Row>(value: &T, out: &mut Vec<u8>) -> Result<(), StoreError> {
    out.clear();
    value.write_row(out).map_err(|e| StoreError(format!("encode: {e}")))
}

pub fn decode<T: Row>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    T::read_row(bytes).map_err(|e| StoreError(format!("decode {what}: {e}")))
}
