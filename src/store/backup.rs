//! Backups, restores and the accounting export of the store.
//!
//! - [`Store::backup_to`]: ONE redb read transaction (an MVCC snapshot: the writer thread is
//!   never blocked) copied table by table into a new redb file, which is therefore compacted
//!   (no free pages, no old versions). Written under a temporary name, checked (it opens and
//!   every table has the snapshot's row count), fsync'd, then renamed into place: a backup file
//!   either is complete or does not exist.
//! - [`verify_file`]: what `restore` checks before it swaps anything: the file opens, passes
//!   redb's integrity check, has Tollgate's tables and a schema this build understands, and
//!   every record decodes.
//! - [`restore_into`]: replaces `<data_dir>/tollgate.redb` with a verified copy of a backup,
//!   refusing while a gateway holds the store and keeping the old file aside.
//! - [`Store::export_jsonl`]: accounts, ledger entries and generations as JSON lines, from one
//!   read transaction, with amounts as exact decimal USD strings and integer nano-USD.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableError, TableHandle, Value as RedbValue,
};
use serde_json::json;

use super::records::{
    AccountRecord, AuditEntry, ByokRecord, GenerationRecord, KeyRecord, LedgerEntry, LedgerKind,
    UsageRollup,
};
use super::tables::*;
use super::{now_millis, Store, StoreError, DB_FILE};
use crate::billing::money::{format_usd, Nano};

/// redb page cache of the file a backup writes.
const BACKUP_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Rows per table of a backup (or of a verified file), in table order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableCounts(pub Vec<(&'static str, u64)>);

impl TableCounts {
    pub fn get(&self, name: &str) -> Option<u64> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> =
            self.0.iter().map(|(n, c)| (n.to_string(), json!(c))).collect();
        serde_json::Value::Object(map)
    }
}

/// What [`Store::backup_to`] wrote.
#[derive(Clone, Debug)]
pub struct BackupReport {
    pub path: PathBuf,
    /// Size of the backup file.
    pub bytes: u64,
    pub rows: TableCounts,
    pub millis: u64,
}

/// Rows copied per write transaction of a backup. redb keeps a transaction's dirty pages in
/// memory until it commits, so one transaction for the whole store would cost about the
/// store's size in RAM (measured: +30 MiB for a 34 MiB store); chunks keep it to a few MiB.
/// The snapshot is still one read transaction: chunking the writes into a temporary file does
/// not change what is copied.
const ROWS_PER_COMMIT: u64 = 4096;

/// Copies one table, row by row, from the snapshot into the new file, committing every
/// [`ROWS_PER_COMMIT`] rows. A table the source does not have (an old schema) is skipped: None.
fn copy_table<K: Key + 'static, V: RedbValue + 'static>(
    src: &ReadTransaction,
    dst: &Database,
    def: TableDefinition<K, V>,
) -> Result<Option<u64>, StoreError> {
    let from = match src.open_table(def) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut rows = from.iter()?;
    let mut n = 0u64;
    loop {
        let mut txn = dst.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut done = true;
        {
            // Opening the table creates it, so even an empty table exists in the backup.
            let mut to = txn.open_table(def)?;
            for row in rows.by_ref() {
                let (k, v) = row?;
                to.insert(k.value(), v.value())?;
                n += 1;
                if n.is_multiple_of(ROWS_PER_COMMIT) {
                    done = false;
                    break;
                }
            }
        }
        txn.commit()?;
        if done {
            return Ok(Some(n));
        }
    }
}

/// Row count of one table, None if it does not exist.
fn count_rows<K: Key + 'static, V: RedbValue + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<u64>, StoreError> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t.len()?)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Every table, by name, through one generic visitor (redb tables are typed, so each needs its
/// own monomorphised call).
macro_rules! for_each_table {
    ($f:ident, $($arg:expr),*) => {{
        let out: Vec<(&'static str, Option<u64>)> = vec![
            ("accounts", $f($($arg,)* ACCOUNTS)?),
            ("keys", $f($($arg,)* KEYS)?),
            ("ledger", $f($($arg,)* LEDGER)?),
            ("generations", $f($($arg,)* GENERATIONS)?),
            ("generation_by_body", $f($($arg,)* GENERATION_BY_BODY)?),
            ("meta", $f($($arg,)* META)?),
            ("usage_rollups", $f($($arg,)* USAGE)?),
            ("key_last_used", $f($($arg,)* KEY_LAST_USED)?),
            ("audit", $f($($arg,)* AUDIT)?),
            ("byok", $f($($arg,)* BYOK)?),
        ];
        out
    }};
}

/// A sibling of `dest` for writing before the rename (same directory, so the rename is atomic).
fn temp_sibling(dest: &Path, tag: &str) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let suffix = super::new_generation_id();
    dest.with_file_name(format!(".{name}.{tag}-{}-{}", std::process::id(), &suffix[suffix.len() - 6..]))
}

/// fsyncs a directory, so a rename in it is durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) {
        let _ = d.sync_all();
    }
}

/// The same file, by canonical path of its directory plus its name (the file may not exist).
fn same_file(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| -> Option<PathBuf> {
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Some(parent.canonicalize().ok()?.join(p.file_name()?))
    };
    match (canon(a), canon(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

impl Store {
    /// Writes a consistent, compacted copy of the whole store to `dest` (see the module docs).
    /// Refuses an existing `dest` unless `overwrite`, and never writes over the live file.
    /// Safe while serving: it holds one read transaction, which never blocks the writer.
    pub fn backup_to(&self, dest: &Path, overwrite: bool) -> Result<BackupReport, StoreError> {
        let started = Instant::now();
        if dest.as_os_str().is_empty() || dest.file_name().is_none() {
            return Err(StoreError(format!("backup: '{}' is not a file path", dest.display())));
        }
        if same_file(dest, &self.path) {
            return Err(StoreError("backup: the destination is the live store itself".into()));
        }
        if dest.is_dir() {
            return Err(StoreError(format!("backup: {} is a directory", dest.display())));
        }
        if dest.exists() && !overwrite {
            return Err(StoreError(format!("backup: {} already exists", dest.display())));
        }
        let parent = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(StoreError(format!("backup: directory {} does not exist", parent.display())));
        }
        let tmp = temp_sibling(dest, "backup");
        let result = self.write_backup(&tmp);
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&tmp, dest) {
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError(format!("backup: rename into {}: {e}", dest.display())));
        }
        sync_dir(parent);
        let bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
        let report = BackupReport {
            path: dest.to_path_buf(),
            bytes,
            rows,
            millis: started.elapsed().as_millis() as u64,
        };
        log::info!(
            "store: backup written to {} ({} bytes, {} ledger entries, {} generations) in {} ms",
            dest.display(),
            report.bytes,
            report.rows.get("ledger").unwrap_or(0),
            report.rows.get("generations").unwrap_or(0),
            report.millis
        );
        Ok(report)
    }

    /// Snapshot → new redb file at `tmp`, then reopen it and compare row counts.
    fn write_backup(&self, tmp: &Path) -> Result<TableCounts, StoreError> {
        let snapshot = self.db()?.begin_read()?;
        let copied = {
            // A small cache: the copy is written once and never read back through it, and a
            // backup taken while serving should not grow the gateway's memory much.
            let out = Database::builder()
                .set_cache_size(BACKUP_CACHE_BYTES)
                .create(tmp)
                .map_err(|e| StoreError(format!("backup: create {}: {e}", tmp.display())))?;
            for_each_table!(copy_table, &snapshot, &out)
            // `out` drops here: a clean close, so the backup never needs a repair.
        };
        drop(snapshot);
        let check = Database::builder()
            .open(tmp)
            .map_err(|e| StoreError(format!("backup: reopen {}: {e}", tmp.display())))?;
        let rtxn = check.begin_read()?;
        let counted = for_each_table!(count_rows, &rtxn);
        drop(rtxn);
        drop(check);
        if copied != counted {
            return Err(StoreError(format!("backup: row counts differ after writing: {copied:?} vs {counted:?}")));
        }
        File::open(tmp)?.sync_all()?;
        Ok(TableCounts(copied.into_iter().filter_map(|(n, c)| Some((n, c?))).collect()))
    }
}

/// What [`verify_file`] found.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    pub schema_version: u64,
    pub rows: TableCounts,
    pub accounts: usize,
    /// Sum of every ledger entry (the sum of all balances), nano-USD.
    pub ledger_total_nano: Nano,
}

/// Decodes every row of a record table into `T`, or says which row is broken.
fn decode_all<K: Key + 'static, T: Row>(
    txn: &ReadTransaction,
    def: TableDefinition<K, &'static [u8]>,
    what: &str,
    required: bool,
    mut each: impl FnMut(T),
) -> Result<(), StoreError> {
    let table = match txn.open_table(def) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) if !required => return Ok(()),
        Err(TableError::TableDoesNotExist(_)) => {
            return Err(StoreError(format!("not a Tollgate store: table '{}' is missing", def.name())))
        }
        Err(e) => return Err(e.into()),
    };
    for (i, row) in table.iter()?.enumerate() {
        let (_, v) = row?;
        let value: T = decode(v.value(), what).map_err(|e| StoreError(format!("{} (row {i})", e.0)))?;
        each(value);
    }
    Ok(())
}

/// Checks that `path` is a usable Tollgate store without changing what it holds: it opens (a
/// file a crash left is repaired), passes redb's integrity check, has the required tables and
/// a schema version this build understands, and every record decodes.
pub fn verify_file(path: &Path) -> Result<VerifyReport, StoreError> {
    if !path.is_file() {
        return Err(StoreError(format!("{} is not a file", path.display())));
    }
    let (mut db, _) = super::open_db(path, false).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            StoreError(format!("{} is in use by another process", path.display()))
        }
        e => StoreError(format!("{} is not a valid redb file: {e}", path.display())),
    })?;
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => log::warn!("store: {} failed redb's integrity check and was repaired", path.display()),
        Err(e) => return Err(StoreError(format!("{} failed redb's integrity check: {e}", path.display()))),
    }
    let txn = db.begin_read()?;
    let version = match txn.open_table(META) {
        Ok(meta) => meta.get(META_SCHEMA_VERSION)?.map(|v| v.value()),
        Err(TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let schema_version = match version {
        Some(v) if (1..=SCHEMA_VERSION).contains(&v) => v,
        Some(v) => {
            return Err(StoreError(format!(
                "{} has schema version {v}; this build understands up to {SCHEMA_VERSION}",
                path.display()
            )))
        }
        None => return Err(StoreError(format!("{} is not a Tollgate store (no schema version)", path.display()))),
    };
    let mut accounts = HashSet::new();
    decode_all(&txn, ACCOUNTS, "account", true, |a: AccountRecord| {
        accounts.insert(a.id);
    })?;
    decode_all(&txn, KEYS, "key", true, |_: KeyRecord| {})?;
    let mut total: i128 = 0;
    decode_all(&txn, LEDGER, "ledger entry", true, |e: LedgerEntry| total += i128::from(e.amount_nano))?;
    decode_all(&txn, GENERATIONS, "generation", true, |_: GenerationRecord| {})?;
    decode_all(&txn, AUDIT, "audit entry", false, |_: AuditEntry| {})?;
    decode_all(&txn, BYOK, "byok key", false, |_: ByokRecord| {})?;
    decode_all(&txn, USAGE, "usage rollup", false, |_: UsageRollup| {})?;
    let counted = for_each_table!(count_rows, &txn);
    let ledger_total_nano = Nano::try_from(total)
        .map_err(|_| StoreError(format!("{}: the ledger's total overflows", path.display())))?;
    Ok(VerifyReport {
        schema_version,
        rows: TableCounts(counted.into_iter().filter_map(|(n, c)| Some((n, c?))).collect()),
        accounts: accounts.len(),
        ledger_total_nano,
    })
}

/// Why a restore did not happen.
#[derive(Debug)]
pub enum RestoreError {
    /// A gateway (or another tool) holds the live store.
    Locked(PathBuf),
    /// The backup is unusable; nothing was changed.
    Invalid(String),
    /// Some other I/O or store failure; the live store is unchanged unless the message says so.
    Failed(String),
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::Locked(p) => write!(
                f,
                "{} is in use by a running gateway; stop it before restoring (nothing was changed)",
                p.display()
            ),
            RestoreError::Invalid(m) => write!(f, "the backup cannot be restored: {m} (nothing was changed)"),
            RestoreError::Failed(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for RestoreError {}

/// What [`restore_into`] did.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    pub store: PathBuf,
    /// Where the replaced store was moved (never deleted); None if there was none.
    pub previous: Option<PathBuf>,
    pub verified: VerifyReport,
}

/// Replaces `<data_dir>/tollgate.redb` with a verified copy of `backup`:
/// 1. refuses while another process holds the live store (it stays locked by us meanwhile, so
///    a gateway cannot start in the middle);
/// 2. copies the backup to `<data_dir>/tollgate.redb.restoring` (the backup itself is never
///    opened for writing) and verifies the copy ([`verify_file`]);
/// 3. moves the live file to `tollgate.redb.pre-restore-<unix ms>` and renames the copy into
///    place, then fsyncs the directory.
pub fn restore_into(data_dir: &Path, backup: &Path) -> Result<RestoreReport, RestoreError> {
    if !backup.is_file() {
        return Err(RestoreError::Invalid(format!("{} is not a file", backup.display())));
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| RestoreError::Failed(format!("create data dir {}: {e}", data_dir.display())))?;
    let live = data_dir.join(DB_FILE);
    if same_file(backup, &live) {
        return Err(RestoreError::Invalid("the backup is the live store itself".into()));
    }
    // Hold the live store (if any) for the whole swap.
    let guard = if live.exists() {
        match super::open_db(&live, false) {
            Ok((db, _)) => Some(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(RestoreError::Locked(live)),
            Err(e) => {
                // A live file redb cannot open is what a restore is for: keep it aside anyway.
                log::warn!("store: the current {} does not open ({e}); it will be kept aside", live.display());
                None
            }
        }
    } else {
        None
    };
    let staging = data_dir.join(format!("{DB_FILE}.restoring"));
    let _ = std::fs::remove_file(&staging);
    let copy = std::fs::copy(backup, &staging).and_then(|_| File::open(&staging)?.sync_all());
    if let Err(e) = copy {
        let _ = std::fs::remove_file(&staging);
        return Err(RestoreError::Failed(format!("copy {} to {}: {e}", backup.display(), staging.display())));
    }
    let verified = match verify_file(&staging) {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            return Err(RestoreError::Invalid(e.0));
        }
    };
    let previous = if live.exists() {
        let aside = data_dir.join(format!("{DB_FILE}.pre-restore-{}", now_millis()));
        std::fs::rename(&live, &aside).map_err(|e| {
            let _ = std::fs::remove_file(&staging);
            RestoreError::Failed(format!("move {} aside: {e}", live.display()))
        })?;
        Some(aside)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(&staging, &live) {
        // Put the old file back so the data dir is as it was.
        if let Some(prev) = &previous {
            let _ = std::fs::rename(prev, &live);
        }
        return Err(RestoreError::Failed(format!("rename {} into place: {e}", staging.display())));
    }
    sync_dir(data_dir);
    drop(guard);
    log::info!(
        "store: restored {} from {} ({} ledger entries, {} generations)",
        live.display(),
        backup.display(),
        verified.rows.get("ledger").unwrap_or(0),
        verified.rows.get("generations").unwrap_or(0)
    );
    Ok(RestoreReport { store: live, previous, verified })
}

/// What [`Store::export_jsonl`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub accounts: u64,
    pub ledger_entries: u64,
    pub generations: u64,
}

fn kind_str(kind: LedgerKind) -> &'static str {
    match kind {
        LedgerKind::Grant => "grant",
        LedgerKind::Charge => "charge",
    }
}

/// One ledger entry as an export line.
pub fn ledger_line(e: &LedgerEntry) -> serde_json::Value {
    json!({
        "type": "ledger",
        "seq": e.seq,
        "account_id": e.account_id,
        "kind": kind_str(e.kind),
        "amount_nano": e.amount_nano,
        "amount_usd": format_usd(e.amount_nano),
        "generation_id": e.generation_id,
        "note": e.note,
        "at_ms": e.at,
    })
}

/// One generation record as an export line (no key secrets exist in it; the key id is kept).
pub fn generation_line(g: &GenerationRecord) -> serde_json::Value {
    json!({
        "type": "generation",
        "id": g.id,
        "body_id": g.body_id,
        "upstream_id": g.upstream_id,
        "account_id": g.account_id,
        "key_id": g.key_id,
        "model": g.model,
        "provider": g.provider,
        "tokens_prompt": g.tokens_prompt,
        "tokens_completion": g.tokens_completion,
        "cost_nano": g.total_cost_nano,
        "cost_usd": format_usd(g.total_cost_nano),
        "status": g.status,
        "streamed": g.streamed,
        "usage_estimated": g.usage_estimated,
        "latency_ms": g.latency_ms,
        "attempts": g.attempts,
        "error": g.error,
        "created_at": g.created_at,
    })
}

impl Store {
    /// Writes the accounting export as JSON lines, all from ONE read transaction (a consistent
    /// snapshot, safe while serving):
    /// - one `"type":"account"` line per account (id, email, created_at, suspended; never a
    ///   password hash);
    /// - one `"type":"ledger"` line per ledger entry at or after `since_secs`, in sequence order;
    /// - one `"type":"generation"` line per generation created at or after `since_secs`;
    /// - a final `"type":"summary"` line: counts, and every account's balance over the WHOLE
    ///   ledger (whatever `since_secs` is), as of the snapshot.
    ///
    /// Amounts are integer nano-USD (`*_nano`) and exact decimal USD strings (`*_usd`); no
    /// float is involved. Key hashes, BYOK keys and passwords are never written.
    pub fn export_jsonl(&self, since_secs: Option<u64>, out: &mut dyn Write) -> Result<ExportSummary, StoreError> {
        let txn = self.db()?.begin_read()?;
        let snapshot_ms = now_millis();
        let mut summary = ExportSummary::default();
        let io = |e: std::io::Error| StoreError(format!("export: write: {e}"));
        let line = |v: serde_json::Value, out: &mut dyn Write| -> Result<(), StoreError> {
            serde_json::to_writer(&mut *out, &v).map_err(|e| StoreError(format!("export: {e}")))?;
            out.write_all(b"\n").map_err(io)
        };
        let mut balances: BTreeMap<u64, i128> = BTreeMap::new();
        let accounts = txn.open_table(ACCOUNTS)?;
        for row in accounts.iter()? {
            let a: AccountRecord = decode(row?.1.value(), "account")?;
            balances.insert(a.id, 0);
            line(
                json!({"type": "account", "id": a.id, "email": a.email, "created_at": a.created_at, "suspended": a.suspended}),
                out,
            )?;
            summary.accounts += 1;
        }
        let since_ms = since_secs.map(|s| s.saturating_mul(1000));
        let (mut grants, mut charges) = (0i128, 0i128);
        let ledger = txn.open_table(LEDGER)?;
        for row in ledger.iter()? {
            let e: LedgerEntry = decode(row?.1.value(), "ledger entry")?;
            *balances.entry(e.account_id).or_insert(0) += i128::from(e.amount_nano);
            if since_ms.is_some_and(|s| e.at < s) {
                continue;
            }
            match e.kind {
                LedgerKind::Grant => grants += i128::from(e.amount_nano),
                LedgerKind::Charge => charges += i128::from(e.amount_nano),
            }
            line(ledger_line(&e), out)?;
            summary.ledger_entries += 1;
        }
        let generations = txn.open_table(GENERATIONS)?;
        for row in generations.iter()? {
            let g: GenerationRecord = decode(row?.1.value(), "generation")?;
            if since_secs.is_some_and(|s| g.created_at < s) {
                continue;
            }
            line(generation_line(&g), out)?;
            summary.generations += 1;
        }
        let to_nano = |v: i128| -> Result<Nano, StoreError> {
            Nano::try_from(v).map_err(|_| StoreError("export: an amount overflows".into()))
        };
        let mut balance_lines = Vec::new();
        for (id, b) in &balances {
            let b = to_nano(*b)?;
            balance_lines.push(json!({"account_id": id, "balance_nano": b, "balance_usd": format_usd(b)}));
        }
        let (grants, charges) = (to_nano(grants)?, to_nano(charges)?);
        line(
            json!({
                "type": "summary",
                "format": 1,
                "snapshot_at_ms": snapshot_ms,
                "since": since_secs,
                "accounts": summary.accounts,
                "ledger_entries": summary.ledger_entries,
                "generations": summary.generations,
                "grants_nano": grants,
                "grants_usd": format_usd(grants),
                "charges_nano": charges,
                "charges_usd": format_usd(charges),
                "balances": balance_lines,
            }),
            out,
        )?;
        out.flush().map_err(io)?;
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{account, entry, generation, key};
    use super::super::{test_dir, OpenError, WriteOp};
    use super::*;

    /// A store with two accounts, keys, grants, charges (with generations), an unbilled
    /// failure, audit, BYOK and last-used rows: every table has something in it.
    fn populated(dir: &Path) -> Store {
        let store = Store::open(dir).expect("open");
        let writer = store.start_writer();
        writer.submit(WriteOp::InsertAccount(account(1)));
        writer.submit(WriteOp::InsertAccount(account(2)));
        writer.submit(WriteOp::PutKey(key(1, 1)));
        writer.submit(WriteOp::PutKey(key(2, 2)));
        writer.submit(WriteOp::Grant(entry(1, 1, 5_000_000_000, LedgerKind::Grant, None)));
        writer.submit(WriteOp::Grant(entry(2, 2, 1_000, LedgerKind::Grant, None)));
        for i in 0..50u64 {
            let id = format!("gen-{i:04}");
            writer.submit(WriteOp::Settle {
                charge: entry(3 + i, 1, -(i as i64 + 1), LedgerKind::Charge, Some(&id)),
                generation: generation(&id, &format!("chatcmpl-{i}"), 1, i as i64 + 1),
            });
        }
        let mut failed = generation("gen-failed", "", 2, 0);
        failed.status = 502;
        failed.error = Some("upstream down".into());
        writer.submit(WriteOp::RecordGeneration(failed));
        writer.submit(WriteOp::TouchKeys(vec![(1, 77)]));
        writer.submit(WriteOp::PutByok(ByokRecord {
            account_id: 1,
            provider: "openai".into(),
            nonce: "n".into(),
            ciphertext: "c".into(),
            created_at: 1,
        }));
        writer.submit(WriteOp::Audit(AuditEntry {
            seq: 1,
            at: 1,
            actor: "admin".into(),
            action: "credits.grant".into(),
            account_id: Some(1),
            detail: json!({}),
        }));
        writer.shutdown();
        store
    }

    fn export_lines(store: &Store, since: Option<u64>) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        store.export_jsonl(since, &mut out).expect("export");
        String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }

    #[test]
    fn backup_is_a_complete_copy_that_reopens_with_the_same_state() {
        let dir = test_dir("backup-src");
        let out_dir = test_dir("backup-out");
        std::fs::create_dir_all(&out_dir).expect("mkdir");
        let store = populated(&dir);
        let dest = out_dir.join("snap.redb");
        let report = store.backup_to(&dest, false).expect("backup");
        assert_eq!(report.rows.get("ledger"), Some(52));
        assert_eq!(report.rows.get("generations"), Some(51));
        assert_eq!(report.rows.get("generation_by_body"), Some(50));
        assert_eq!(report.rows.get("byok"), Some(1));
        assert!(report.bytes > 0 && report.bytes == std::fs::metadata(&dest).unwrap().len());
        // No temporary file is left next to it.
        let names: Vec<String> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["snap.redb".to_string()]);

        // Refusals: an existing file without overwrite, the live file, a missing directory.
        let e = store.backup_to(&dest, false).unwrap_err();
        assert!(e.0.contains("already exists"), "{e}");
        assert!(store.backup_to(store.path(), true).unwrap_err().0.contains("live store"));
        assert!(store.backup_to(&out_dir.join("no/such/dir.redb"), false).unwrap_err().0.contains("does not exist"));
        store.backup_to(&dest, true).expect("overwrite when asked");

        let verified = verify_file(&dest).expect("verify");
        assert_eq!((verified.schema_version, verified.accounts), (SCHEMA_VERSION, 2));
        assert_eq!(verified.ledger_total_nano, 5_000_000_000 + 1_000 - (1..=50).sum::<i64>());

        // Opened as a live store, the backup has the same state, and exports identically.
        let copy_dir = test_dir("backup-copy");
        std::fs::create_dir_all(&copy_dir).unwrap();
        std::fs::copy(&dest, copy_dir.join(DB_FILE)).unwrap();
        let copy = Store::open(&copy_dir).expect("open the copy");
        let (a, b) = (store.load_state().unwrap(), copy.load_state().unwrap());
        assert_eq!(a.balances, b.balances);
        assert_eq!(a.accounts, b.accounts);
        assert_eq!(a.keys, b.keys);
        assert_eq!(a.byok, b.byok);
        assert_eq!((a.next_ledger_seq, a.next_audit_seq), (b.next_ledger_seq, b.next_audit_seq));
        assert_eq!(copy.get_generation("chatcmpl-7").unwrap().map(|g| g.total_cost_nano), Some(8));
        let strip = |mut v: Vec<serde_json::Value>| {
            v.last_mut().unwrap().as_object_mut().unwrap().remove("snapshot_at_ms");
            v
        };
        assert_eq!(strip(export_lines(&store, None)), strip(export_lines(&copy, None)));
        drop((store, copy));
        for d in [dir, out_dir, copy_dir] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// More rows than one backup commit holds: the chunked copy loses and repeats nothing.
    #[test]
    fn a_backup_larger_than_one_commit_is_complete() {
        let dir = test_dir("backup-big");
        let store = Store::open(&dir).expect("open");
        let writer = store.start_writer();
        writer.submit(WriteOp::InsertAccount(account(1)));
        let n = ROWS_PER_COMMIT * 2 + 17;
        for seq in 1..=n {
            writer.submit(WriteOp::Grant(entry(seq, 1, seq as i64, LedgerKind::Grant, None)));
        }
        writer.shutdown();
        let dest = dir.join("big.redb");
        let report = store.backup_to(&dest, false).expect("backup");
        assert_eq!(report.rows.get("ledger"), Some(n));
        let verified = verify_file(&dest).expect("verify");
        assert_eq!(verified.ledger_total_nano, (n * (n + 1) / 2) as i64);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn export_lines_carry_exact_amounts_and_no_secrets() {
        let dir = test_dir("export");
        let store = populated(&dir);
        let lines = export_lines(&store, None);
        let of = |t: &str| lines.iter().filter(|l| l["type"] == t).count();
        assert_eq!((of("account"), of("ledger"), of("generation"), of("summary")), (2, 52, 51, 1));
        let grant = lines.iter().find(|l| l["type"] == "ledger" && l["seq"] == 1).unwrap();
        assert_eq!(grant["kind"], "grant");
        assert_eq!((grant["amount_nano"].as_i64(), grant["amount_usd"].as_str()), (Some(5_000_000_000), Some("5")));
        let charge = lines.iter().find(|l| l["type"] == "ledger" && l["seq"] == 4).unwrap();
        assert_eq!((charge["kind"].as_str(), charge["amount_usd"].as_str()), (Some("charge"), Some("-0.000000002")));
        assert_eq!(charge["generation_id"], "gen-0001");
        let g = lines.iter().find(|l| l["id"] == "gen-0001").unwrap();
        assert_eq!((g["cost_nano"].as_i64(), g["cost_usd"].as_str()), (Some(2), Some("0.000000002")));
        let summary = lines.last().unwrap();
        assert_eq!(summary["type"], "summary");
        assert_eq!(summary["balances"][0]["balance_nano"], 5_000_000_000i64 - 1275);
        assert_eq!(summary["balances"][0]["balance_usd"], "4.999998725");
        assert_eq!(summary["charges_nano"], -1275);
        // Nothing secret, and no float anywhere in the money fields.
        let text: String = lines.iter().map(|l| l.to_string()).collect();
        for secret in ["secret_hash", "password", "ciphertext", "nonce", &"ab".repeat(32)] {
            assert!(!text.contains(secret), "export contains {secret}");
        }
        for l in &lines {
            for (k, v) in l.as_object().unwrap() {
                if k.ends_with("_nano") {
                    assert!(v.is_i64(), "{k} = {v} is not an integer");
                }
            }
        }
        // --since: entries from the future only → accounts and the summary, nothing else; the
        // balances still cover the whole ledger.
        let later = export_lines(&store, Some(super::super::now_secs() + 3600));
        assert_eq!(later.len(), 3);
        assert_eq!(later[2]["balances"], summary["balances"]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn restore_verifies_swaps_and_keeps_the_old_store() {
        let src = test_dir("restore-src");
        let target = test_dir("restore-target");
        let store = populated(&src);
        let backup = src.join("backup.redb");
        store.backup_to(&backup, false).expect("backup");

        // A live store that differs (one account) and is held open: refused, nothing changes.
        let live = Store::open(&target).expect("open target");
        live.start_writer().submit_durable_blocking(WriteOp::InsertAccount(account(9))).unwrap();
        match restore_into(&target, &backup) {
            Err(RestoreError::Locked(_)) => {}
            other => panic!("restore beside an open store: {other:?}"),
        }
        drop(live);

        // Garbage and a redb file that is not a Tollgate store are refused before any swap.
        let garbage = src.join("garbage.redb");
        std::fs::write(&garbage, b"this is not a database").unwrap();
        assert!(matches!(restore_into(&target, &garbage), Err(RestoreError::Invalid(_))));
        let foreign = src.join("foreign.redb");
        {
            let db = Database::create(&foreign).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(TableDefinition::<u64, u64>::new("other")).unwrap().insert(1, 2).unwrap();
            txn.commit().unwrap();
        }
        match restore_into(&target, &foreign) {
            Err(RestoreError::Invalid(m)) => assert!(m.contains("not a Tollgate store"), "{m}"),
            other => panic!("foreign file: {other:?}"),
        }
        assert!(matches!(restore_into(&target, &src.join("missing.redb")), Err(RestoreError::Invalid(_))));
        let names = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> =
                std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            v.sort();
            v
        };
        assert_eq!(names(&target), vec![DB_FILE.to_string()], "a refused restore leaves the data dir as it was");
        assert_eq!(Store::open(&target).unwrap().list_accounts().unwrap().len(), 1);

        let report = restore_into(&target, &backup).expect("restore");
        let previous = report.previous.expect("the old store is kept");
        assert!(previous.file_name().unwrap().to_string_lossy().starts_with("tollgate.redb.pre-restore-"));
        assert_eq!(Store::open_file(&previous).unwrap().list_accounts().unwrap().len(), 1);
        let restored = Store::open(&target).expect("open restored");
        assert_eq!(restored.load_state().unwrap().balances, store.load_state().unwrap().balances);
        assert_eq!(names(&target).len(), 2, "the store and the kept one: {:?}", names(&target));
        // The backup file itself was never opened for writing: it is byte-identical to a
        // fresh backup's verification.
        assert!(verify_file(&backup).is_ok());
        drop((store, restored));
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(&target);
    }

    #[test]
    fn open_file_reports_missing_and_locked() {
        let dir = test_dir("open-file");
        assert!(matches!(Store::open_file(dir.join(DB_FILE)), Err(OpenError::Missing(_))));
        let store = Store::open(&dir).expect("open");
        assert!(matches!(Store::open_file(store.path()), Err(OpenError::Locked(_))));
        let path = store.path().to_path_buf();
        drop(store);
        let again = Store::open_file(&path).expect("open when free");
        assert!(!again.was_repaired());
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
