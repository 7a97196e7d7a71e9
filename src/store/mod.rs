//! Durable state in one redb file, `<data_dir>/tollgate.redb`.
//!
//! The request path never touches the disk: at startup [`Store::load_state`] reads everything
//! the gateway serves from memory (accounts, keys, balances), and afterwards every change goes
//! through the single batching [`StoreWriter`] thread. Reads for the API (`/generation`, key
//! listings) open their own MVCC read transactions and never wait for the writer.
//!
//! Balances are not stored: an account's balance is the sum of its ledger entries, computed at
//! load. A charge and its generation record are written in one transaction, so after any crash
//! (kill -9 included; redb repairs the file on open) balance = grants − recorded charges.

pub mod backup;
mod codec;
pub mod handoff;
pub mod records;
pub mod tables;
pub mod writer;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable};

use crate::billing::money::Nano;
pub use records::{
    AccountRecord, AuditEntry, ByokRecord, GenerationRecord, KeyRecord, LedgerEntry, LedgerKind,
    UsageRollup,
};
use tables::*;
pub use backup::{restore_into, verify_file, BackupReport, ExportSummary, RestoreError, RestoreReport, VerifyReport};
pub use writer::{StoreWriter, WriteOp, WriterStats};

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "tollgate.redb";
/// redb page cache: enough for the writer's working set and the occasional lookup.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// A storage failure, as text (redb's error types differ per call; callers only log them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

macro_rules! from_redb_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError(e.to_string())
            }
        }
    )*};
}
from_redb_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    std::io::Error
);

/// Everything the gateway keeps in memory, read once at startup.
#[derive(Debug, Default)]
pub struct LoadedState {
    pub accounts: Vec<AccountRecord>,
    /// All keys, revoked ones included (the key ring skips those).
    pub keys: Vec<KeyRecord>,
    /// Sum of each account's ledger entries. Every account is present (0 if it has none).
    pub balances: HashMap<u64, Nano>,
    /// Sum of each account's charges, as a positive amount (for `/credits` total_usage).
    pub usage: HashMap<u64, Nano>,
    pub next_account_id: u64,
    pub next_key_id: u64,
    pub next_ledger_seq: u64,
    pub next_audit_seq: u64,
    /// Key id → unix seconds it was last used (as last flushed).
    pub key_last_used: HashMap<u64, u64>,
    /// Every account's encrypted provider keys.
    pub byok: Vec<ByokRecord>,
}

/// In-memory id allocation, seeded from [`LoadedState`]: no read-modify-write through the
/// writer, so allocating an id never waits. Ids start at 1 (0 can mean "none").
#[derive(Debug)]
pub struct IdCounters {
    account: AtomicU64,
    key: AtomicU64,
    ledger: AtomicU64,
    audit: AtomicU64,
}

impl IdCounters {
    pub fn from_state(state: &LoadedState) -> IdCounters {
        IdCounters {
            account: AtomicU64::new(state.next_account_id.max(1)),
            key: AtomicU64::new(state.next_key_id.max(1)),
            ledger: AtomicU64::new(state.next_ledger_seq.max(1)),
            audit: AtomicU64::new(state.next_audit_seq.max(1)),
        }
    }

    pub fn next_audit_seq(&self) -> u64 {
        self.audit.fetch_add(1, Ordering::Relaxed)
    }

    pub fn next_account_id(&self) -> u64 {
        self.account.fetch_add(1, Ordering::Relaxed)
    }

    pub fn next_key_id(&self) -> u64 {
        self.key.fetch_add(1, Ordering::Relaxed)
    }

    pub fn next_ledger_seq(&self) -> u64 {
        self.ledger.fetch_add(1, Ordering::Relaxed)
    }
}

/// Handle to the database. Cheap to clone; reads may run on any thread.
#[derive(Clone)]
pub struct Store {
    db: Arc<DbSlot>,
    path: PathBuf,
    /// Whether redb had to repair the file when it was opened (an unclean shutdown before).
    repaired: bool,
}

/// Why an existing store file could not be opened (see [`Store::open_file`]).
#[derive(Debug)]
pub enum OpenError {
    /// There is no file at the path.
    Missing(PathBuf),
    /// Another process (a running gateway) holds the file: redb allows one process at a time.
    Locked(PathBuf),
    Other(StoreError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Missing(p) => write!(f, "no store at {}", p.display()),
            OpenError::Locked(p) => {
                write!(f, "{} is in use by another process (a running gateway?)", p.display())
            }
            OpenError::Other(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OpenError {}

/// Opens (`create`: or creates) the redb file at `path` with Tollgate's settings. After an
/// unclean shutdown redb repairs the file here, logging its progress; the returned flag says
/// whether it did.
fn open_db(path: &Path, create: bool) -> Result<(Database, bool), redb::DatabaseError> {
    let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = repaired.clone();
    let started = std::time::Instant::now();
    // redb's page cache defaults to 1 GiB and fills as the file grows, which made RSS
    // climb under load; the request path never reads the store, so a small cache is enough.
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES).set_repair_callback(move |session| {
        seen.store(true, Ordering::Relaxed);
        log::warn!(
            "store: repairing database after unclean shutdown ({:.0}%)",
            session.progress() * 100.0
        )
    });
    let db = if create { builder.create(path)? } else { builder.open(path)? };
    let repaired = repaired.load(Ordering::Relaxed);
    if repaired {
        // One line per repair (the callback above logs progress several times): what the
        // crash tests and an operator look for.
        log::warn!(
            "store: {} was not shut down cleanly; repaired in {} ms",
            path.display(),
            started.elapsed().as_millis()
        );
    }
    Ok((db, repaired))
}

/// The open database, until [`Store::close`] gives it up (a graceful upgrade hands the file
/// to the new process: redb holds an exclusive lock on it while open). Reads after that fail
/// with a [`StoreError`] saying so.
pub(crate) struct DbSlot(std::sync::RwLock<Option<Arc<Database>>>);

impl DbSlot {
    fn new(db: Database) -> DbSlot {
        DbSlot(std::sync::RwLock::new(Some(Arc::new(db))))
    }

    /// The database, if still open.
    pub(crate) fn database(&self) -> Result<Arc<Database>, StoreError> {
        let slot = self.0.read().unwrap_or_else(|p| p.into_inner());
        slot.clone().ok_or_else(|| StoreError(handoff::CLOSED.into()))
    }

    pub(crate) fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        Ok(self.database()?.begin_read()?)
    }

    #[allow(dead_code)] // tests, and tools that write outside the writer thread
    pub(crate) fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        Ok(self.database()?.begin_write()?)
    }

    fn close(&self) -> Option<Arc<Database>> {
        self.0.write().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Store {
    /// Opens (or creates) `<dir>/tollgate.redb`, creating `dir` and all tables. After an
    /// unclean shutdown redb repairs the file here; that can take a while on a large file.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("create data dir {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let (db, repaired) =
            open_db(&path, true).map_err(|e| StoreError(format!("open {}: {e}", path.display())))?;
        init_tables(&db, &path)?;
        Ok(Store {
            db: Arc::new(DbSlot::new(db)),
            path,
            repaired,
        })
    }

    /// Opens an existing store file (the live one or a backup) without creating anything: no
    /// file, no tables, no schema upgrade. Refused while another process holds the file. For
    /// the offline tools (`backup`, `export`); redb still repairs a file a crash left.
    pub fn open_file(path: impl AsRef<Path>) -> Result<Store, OpenError> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(OpenError::Missing(path.to_path_buf()));
        }
        match open_db(path, false) {
            Ok((db, repaired)) => Ok(Store {
                db: Arc::new(DbSlot::new(db)),
                path: path.to_path_buf(),
                repaired,
            }),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                Err(OpenError::Locked(path.to_path_buf()))
            }
            Err(e) => Err(OpenError::Other(StoreError(format!(
                "cannot open {} as a Tollgate store: {e}",
                path.display()
            )))),
        }
    }

    /// The open database, or an error once the store is closed.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db.database()
    }

    /// Gives up this handle's reference to the database, so that redb can close the file:
    /// its lock is released (a graceful upgrade hands the file to the new process) and it is
    /// marked cleanly shut down (the next open needs no repair). The file closes now if this
    /// was the last reference, else when the writer (`StoreWriter::hand_off`) or a backup or
    /// read in progress lets go. Every later use of this store (and its clones) is an error.
    /// Returns false if it was closed already. Call after the writer's shutdown before the
    /// process exits (which runs no destructors).
    pub fn close(&self) -> bool {
        let Some(db) = self.db.close() else { return false };
        if let Ok(db) = Arc::try_unwrap(db) {
            if let Err(e) = db.close() {
                log::error!("store: closing {}: {e}", self.path.display());
            }
        }
        true
    }

    /// Whether redb repaired the file on open (the previous process did not shut down cleanly).
    pub fn was_repaired(&self) -> bool {
        self.repaired
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.db.database().is_err()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts the one writer thread. Call once; all durable changes go through it.
    pub fn start_writer(&self) -> StoreWriter {
        match self.db.database() {
            Ok(db) => StoreWriter::start(db),
            Err(_) => StoreWriter::stopped(),
        }
    }

    /// Applies `ops` in one fsync'd transaction on the calling thread: the writer thread's own
    /// commit of a batch, minus the channel. Only for benches (`benches/store_writer.rs`);
    /// everything else goes through [`start_writer`](Self::start_writer).
    #[doc(hidden)]
    pub fn commit_batch(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        writer::commit(&*self.db()?, ops)
    }

    /// Reads all accounts and keys and sums the ledger into balances. O(ledger size): every
    /// entry is decoded once at startup.
    pub fn load_state(&self) -> Result<LoadedState, StoreError> {
        let txn = self.db()?.begin_read()?;
        let mut state = LoadedState::default();

        let accounts = txn.open_table(ACCOUNTS)?;
        for row in accounts.iter()? {
            let (_, v) = row?;
            let account: AccountRecord = decode(v.value(), "account")?;
            state.balances.insert(account.id, 0);
            state.usage.insert(account.id, 0);
            state.next_account_id = state.next_account_id.max(account.id + 1);
            state.accounts.push(account);
        }

        let keys = txn.open_table(KEYS)?;
        for row in keys.iter()? {
            let (_, v) = row?;
            let key: KeyRecord = decode(v.value(), "key")?;
            state.next_key_id = state.next_key_id.max(key.id + 1);
            state.keys.push(key);
        }

        let ledger = txn.open_table(LEDGER)?;
        for row in ledger.iter()? {
            let (k, v) = row?;
            let entry: LedgerEntry = decode(v.value(), "ledger entry")?;
            let balance = state.balances.entry(entry.account_id).or_insert_with(|| {
                log::warn!(
                    "store: ledger entry {} for unknown account {}",
                    k.value(),
                    entry.account_id
                );
                0
            });
            *balance = balance.checked_add(entry.amount_nano).ok_or_else(|| {
                StoreError(format!("balance of account {} overflows", entry.account_id))
            })?;
            if entry.kind == LedgerKind::Charge {
                *state.usage.entry(entry.account_id).or_insert(0) -= entry.amount_nano;
            }
            state.next_ledger_seq = state.next_ledger_seq.max(k.value() + 1);
        }

        let last_used = txn.open_table(KEY_LAST_USED)?;
        for row in last_used.iter()? {
            let (k, v) = row?;
            state.key_last_used.insert(k.value(), v.value());
        }
        let byok = txn.open_table(BYOK)?;
        for row in byok.iter()? {
            state.byok.push(decode(row?.1.value(), "byok key")?);
        }
        let audit = txn.open_table(AUDIT)?;
        if let Some(row) = audit.last()? {
            state.next_audit_seq = row.0.value() + 1;
        }

        // Never reuse an id that was handed out, even if its row is gone.
        let meta = txn.open_table(META)?;
        let mark = |name: &str| -> Result<u64, StoreError> {
            Ok(meta.get(name)?.map(|v| v.value()).unwrap_or(0))
        };
        state.next_account_id = state.next_account_id.max(mark(META_NEXT_ACCOUNT)?).max(1);
        state.next_key_id = state.next_key_id.max(mark(META_NEXT_KEY)?).max(1);
        state.next_ledger_seq = state.next_ledger_seq.max(mark(META_NEXT_LEDGER)?).max(1);
        state.next_audit_seq = state.next_audit_seq.max(mark(META_NEXT_AUDIT)?).max(1);
        Ok(state)
    }

    pub fn account(&self, id: u64) -> Result<Option<AccountRecord>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(ACCOUNTS)?;
        let row = table.get(id)?;
        row.map(|v| decode(v.value(), "account")).transpose()
    }

    pub fn list_accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(ACCOUNTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            out.push(decode(row?.1.value(), "account")?);
        }
        Ok(out)
    }

    pub fn key(&self, id: u64) -> Result<Option<KeyRecord>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(KEYS)?;
        let row = table.get(id)?;
        row.map(|v| decode(v.value(), "key")).transpose()
    }

    /// An account's keys, revoked ones included, oldest first. A scan of the keys table:
    /// fine for the thousands of keys a gateway has, and it is not on the request path.
    pub fn list_keys(&self, account_id: u64) -> Result<Vec<KeyRecord>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(KEYS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let key: KeyRecord = decode(row?.1.value(), "key")?;
            if key.account_id == account_id {
                out.push(key);
            }
        }
        Ok(out)
    }

    /// `(key_id, total_cost_nano, created_at)` of every generation created at or after
    /// `since_secs`, for rebuilding spend-cap counters at startup. Generation ids begin with
    /// the creation time in unpadded hex milliseconds, which keeps them in time order (the
    /// width only grows in the year 2527), so this reads a range, not the whole table.
    pub fn generation_costs_since(&self, since_secs: u64) -> Result<Vec<(u64, Nano, u64)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let generations = txn.open_table(GENERATIONS)?;
        let start = format!("gen-{:x}", since_secs.saturating_mul(1000));
        let mut out = Vec::new();
        for row in generations.range(start.as_str()..)? {
            let (_, v) = row?;
            let g: GenerationRecord = decode(v.value(), "generation")?;
            if g.created_at >= since_secs && g.total_cost_nano != 0 {
                out.push((g.key_id, g.total_cost_nano, g.created_at));
            }
        }
        Ok(out)
    }

    /// One account's usage rollups for UTC days `day_from..=day_to`, as
    /// `(day, key id, model, sums)`, ordered by day, key, model. Reads only those rows.
    pub fn usage_rollups(
        &self,
        account_id: u64,
        day_from: u64,
        day_to: u64,
    ) -> Result<Vec<(u64, u64, String, UsageRollup)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let usage = txn.open_table(USAGE)?;
        let mut out = Vec::new();
        if day_from > day_to {
            return Ok(out);
        }
        let start = (account_id, day_from, 0u64, "");
        let end = (account_id, day_to.saturating_add(1), 0u64, "");
        for row in usage.range(start..end)? {
            let (k, v) = row?;
            let (_, day, key_id, model) = k.value();
            out.push((day, key_id, model.to_string(), decode(v.value(), "usage rollup")?));
        }
        Ok(out)
    }

    /// Billed cost per account over UTC days `day_from..=day_to`, from the rollups, for
    /// the accounts given (one range read each).
    pub fn cost_by_account(
        &self,
        accounts: impl IntoIterator<Item = u64>,
        day_from: u64,
        day_to: u64,
    ) -> Result<HashMap<u64, Nano>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let usage = txn.open_table(USAGE)?;
        let mut out = HashMap::new();
        for account_id in accounts {
            let start = (account_id, day_from, 0u64, "");
            let end = (account_id, day_to.saturating_add(1), 0u64, "");
            let mut sum: Nano = 0;
            for row in usage.range(start..end)? {
                let r: UsageRollup = decode(row?.1.value(), "usage rollup")?;
                sum = sum.saturating_add(r.cost_nano.max(0));
            }
            out.insert(account_id, sum);
        }
        Ok(out)
    }

    /// `(account id, key id, day start unix secs, cost)` of every rollup row with a cost, for
    /// the accounts given, from UTC day `day_from` on: rebuilds spend-cap counters without
    /// reading generations.
    pub fn costs_since_day(
        &self,
        accounts: impl IntoIterator<Item = u64>,
        day_from: u64,
    ) -> Result<Vec<(u64, u64, u64, Nano)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let usage = txn.open_table(USAGE)?;
        let mut out = Vec::new();
        for account_id in accounts {
            let start = (account_id, day_from, 0u64, "");
            let end = (account_id, u64::MAX, 0u64, "");
            for row in usage.range(start..end)? {
                let (k, v) = row?;
                let (_, day, key_id, _) = k.value();
                let r: UsageRollup = decode(v.value(), "usage rollup")?;
                if r.cost_nano > 0 {
                    out.push((account_id, key_id, day * crate::limits::calendar::SECS_PER_DAY, r.cost_nano));
                }
            }
        }
        Ok(out)
    }

    /// Last-used time of a key as last flushed.
    pub fn key_last_used(&self, key_id: u64) -> Result<Option<u64>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(KEY_LAST_USED)?;
        Ok(table.get(key_id)?.map(|v| v.value()))
    }

    /// The newest audit entries, newest first; only `account_id`'s when given. Scans
    /// backwards from the end, so a recent page is cheap.
    pub fn audit_entries(
        &self,
        limit: usize,
        account_id: Option<u64>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut out = Vec::new();
        for row in table.iter()?.rev() {
            if out.len() >= limit {
                break;
            }
            let entry: AuditEntry = decode(row?.1.value(), "audit entry")?;
            if account_id.is_none_or(|id| entry.account_id == Some(id)) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// A generation by Tollgate's id ("gen-…"), by the body id the client saw
    /// ("chatcmpl-gen-…", see [`client_response_id`]) or, failing both, by an indexed body id
    /// (a provider's "chatcmpl-…", as responses carried before). If two upstream responses
    /// shared an indexed body id, the latest one wins.
    pub fn get_generation(
        &self,
        id_or_body_id: &str,
    ) -> Result<Option<GenerationRecord>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let generations = txn.open_table(GENERATIONS)?;
        if let Some(v) = generations.get(id_or_body_id)? {
            return decode(v.value(), "generation").map(Some);
        }
        if let Some(id) = generation_id_in(id_or_body_id) {
            if let Some(v) = generations.get(id)? {
                return decode(v.value(), "generation").map(Some);
            }
        }
        let by_body = txn.open_table(GENERATION_BY_BODY)?;
        let Some(id) = by_body.get(id_or_body_id)? else {
            return Ok(None);
        };
        let row = generations.get(id.value())?;
        row.map(|v| decode(v.value(), "generation")).transpose()
    }

    /// An account's most recent ledger entries, newest first. Scans the ledger backwards;
    /// meant for admin views, not the request path.
    pub fn ledger_entries(
        &self,
        account_id: u64,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(LEDGER)?;
        let mut out = Vec::new();
        for row in table.iter()?.rev() {
            if out.len() >= limit {
                break;
            }
            let entry: LedgerEntry = decode(row?.1.value(), "ledger entry")?;
            if entry.account_id == account_id {
                out.push(entry);
            }
        }
        Ok(out)
    }
}

/// Creates every table up front (so read transactions never meet a missing one) and records
/// or upgrades the schema version.
fn init_tables(db: &Database, path: &Path) -> Result<(), StoreError> {
    // Create every table up front so read transactions never meet a missing table.
    let txn = db.begin_write()?;
    {
        txn.open_table(ACCOUNTS)?;
        txn.open_table(KEYS)?;
        txn.open_table(LEDGER)?;
        txn.open_table(GENERATIONS)?;
        txn.open_table(GENERATION_BY_BODY)?;
        txn.open_table(USAGE)?;
        txn.open_table(KEY_LAST_USED)?;
        txn.open_table(AUDIT)?;
        txn.open_table(BYOK)?;
        let mut meta = txn.open_table(META)?;
        let version = meta.get(META_SCHEMA_VERSION)?.map(|v| v.value());
        match version {
            None => {
                meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION)?;
            }
            Some(1) => {
                // Version 1 had no rollups: build them once from the generations, in the
                // same transaction as the version bump.
                let n = build_rollups(&txn)?;
                log::info!("store: upgraded to schema {SCHEMA_VERSION}; usage rollups built from {n} generations");
                meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION)?;
            }
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) => {
                return Err(StoreError(format!(
                    "{} has schema version {v}; this build understands {SCHEMA_VERSION}",
                    path.display()
                )))
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Builds the usage rollups from every stored generation (the upgrade from schema 1).
fn build_rollups(txn: &redb::WriteTransaction) -> Result<usize, StoreError> {
    let generations = txn.open_table(GENERATIONS)?;
    let mut usage = txn.open_table(USAGE)?;
    let mut deltas = writer::RollupDeltas::default();
    let mut n = 0;
    for row in generations.iter()? {
        let g: GenerationRecord = decode(row?.1.value(), "generation")?;
        deltas.add(&g, 1);
        n += 1;
    }
    deltas.write(&mut usage)?;
    Ok(n)
}

/// A new generation id: "gen-<unix millis, hex>-<12 random base62 chars>". Time-prefixed so ids
/// sort roughly by creation; 71 random bits make collisions within a millisecond negligible.
/// Built by hand (one per request): the formatting machinery and twelve ranged draws cost
/// half a microsecond.
pub fn new_generation_id() -> String {
    let mut id = String::with_capacity(32);
    id.push_str("gen-");
    push_hex(&mut id, now_millis());
    id.push('-');
    // Six digits from each of two 64-bit draws (62^6 < 2^36: the modulo bias is nil).
    for _ in 0..2 {
        let mut r: u64 = rand::random();
        for _ in 0..6 {
            id.push(BASE62[(r % 62) as usize] as char);
            r /= 62;
        }
    }
    id
}

/// The `id` a response or chunk carries to the client: the generation's own id behind the
/// prefix OpenAI uses for the object (`chatcmpl-gen-…`, `cmpl-gen-…` for legacy completions).
/// `/generation` finds the generation from it without an index (`get_generation`).
pub fn client_response_id(generation_id: &str, legacy_completion: bool) -> String {
    let prefix = if legacy_completion { LEGACY_ID_PREFIX } else { CHAT_ID_PREFIX };
    let mut id = String::with_capacity(prefix.len() + generation_id.len());
    id.push_str(prefix);
    id.push_str(generation_id);
    id
}

/// The generation id inside an id made by [`client_response_id`], if `id` is one.
pub fn generation_id_in(id: &str) -> Option<&str> {
    id.strip_prefix(CHAT_ID_PREFIX)
        .or_else(|| id.strip_prefix(LEGACY_ID_PREFIX))
        .filter(|g| g.starts_with("gen-"))
}

const CHAT_ID_PREFIX: &str = "chatcmpl-";
const LEGACY_ID_PREFIX: &str = "cmpl-";

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `n` in lower-case hex, without leading zeros.
pub fn push_hex(out: &mut String, n: u64) {
    push_hex_digits(out, n, (64 - n.leading_zeros()).div_ceil(4).max(1));
}

/// The low `digits` hex digits of `n`, lower case, zero-padded (ids written per request).
pub fn push_hex_digits(out: &mut String, n: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(HEX[((n >> (i * 4)) & 0xf) as usize] as char);
    }
}

/// Unix seconds (0 if the clock is before 1970).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix milliseconds (0 if the clock is before 1970).
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
impl Store {
    /// Every generation record (for consistency checks in tests).
    pub(crate) fn all_generations(&self) -> Result<Vec<GenerationRecord>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(GENERATIONS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            out.push(decode(row?.1.value(), "generation")?);
        }
        Ok(out)
    }
}

/// A fresh, empty directory under the system temp dir, for tests.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tollgate-{name}-{}-{}",
        std::process::id(),
        new_generation_id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn account(id: u64) -> AccountRecord {
        AccountRecord {
            id,
            email: format!("a{id}@example.com"),
            created_at: now_secs(),
            markup_override_bps: Some(2500),
            suspended: false,
            password_hash: None,
            monthly_cap_nano: None,
        }
    }

    pub(crate) fn key(id: u64, account_id: u64) -> KeyRecord {
        KeyRecord {
            id,
            account_id,
            name: format!("key {id}"),
            secret_hash: "ab".repeat(32),
            redacted: "sk-tg-abc…xyz".into(),
            created_at: now_secs(),
            revoked: false,
            rate_limit_rpm: None,
            daily_cap_nano: Some(5),
            monthly_cap_nano: None,
            tokens_per_minute: None,
            allowed_models: None,
            expires_at: None,
            platform: None,
            revoked_at: None,
        }
    }

    pub(crate) fn entry(
        seq: u64,
        account_id: u64,
        amount_nano: i64,
        kind: LedgerKind,
        gen: Option<&str>,
    ) -> LedgerEntry {
        LedgerEntry {
            seq,
            account_id,
            amount_nano,
            kind,
            generation_id: gen.map(str::to_string),
            note: None,
            at: now_millis(),
        }
    }

    pub(crate) fn generation(
        id: &str,
        body_id: &str,
        account_id: u64,
        cost: i64,
    ) -> GenerationRecord {
        GenerationRecord {
            id: id.into(),
            body_id: body_id.into(),
            upstream_id: String::new(),
            account_id,
            key_id: 1,
            model: "gpt-test".into(),
            provider: "mock".into(),
            tokens_prompt: 10,
            tokens_completion: 20,
            total_cost_nano: cost,
            latency_ms: 5,
            status: 200,
            streamed: false,
            usage_estimated: false,
            created_at: now_secs(),
            attempts: 1,
            error: None,
            attempt_log: Vec::new(),
        }
    }

    #[test]
    fn generation_ids_have_the_documented_shape() {
        let id = new_generation_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[0], "gen");
        assert!(u64::from_str_radix(parts[1], 16).is_ok());
        assert_eq!(parts[2].len(), 12);
        assert!(parts[2].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(new_generation_id(), new_generation_id());
    }

    #[test]
    fn hex_digits() {
        for n in [0u64, 1, 0xf, 0x10, 0x19b0f5c2a41, u64::MAX] {
            let mut s = String::new();
            push_hex(&mut s, n);
            assert_eq!(s, format!("{n:x}"));
        }
    }

    #[test]
    fn reopen_round_trip() {
        let dir = test_dir("reopen");
        {
            let store = Store::open(&dir).expect("open");
            let state = store.load_state().expect("load empty");
            assert!(state.accounts.is_empty());
            assert_eq!(
                (
                    state.next_account_id,
                    state.next_key_id,
                    state.next_ledger_seq
                ),
                (1, 1, 1)
            );

            let writer = store.start_writer();
            for op in [
                WriteOp::InsertAccount(account(1)),
                WriteOp::InsertAccount(account(2)),
                WriteOp::PutKey(key(1, 1)),
                WriteOp::PutKey(key(2, 2)),
                WriteOp::Grant(entry(1, 1, 10_000, LedgerKind::Grant, None)),
            ] {
                writer.submit_durable_blocking(op).expect("durable");
            }
            writer.submit(WriteOp::Settle {
                charge: entry(2, 1, -300, LedgerKind::Charge, Some("gen-a")),
                generation: generation("gen-a", "chatcmpl-1", 1, 300),
            });
            let mut failed = generation("gen-b", "", 2, 0);
            failed.status = 502;
            failed.error = Some("upstream down".into());
            writer.submit(WriteOp::RecordGeneration(failed));
            let mut revoked = key(2, 2);
            revoked.revoked = true;
            writer.submit(WriteOp::PutKey(revoked));
            writer.shutdown();
        }

        let store = Store::open(&dir).expect("reopen");
        let state = store.load_state().expect("load");
        assert_eq!(
            state.accounts,
            vec![account_like(&state, 1), account_like(&state, 2)]
        );
        assert_eq!(state.keys.len(), 2);
        assert!(state.keys[1].revoked);
        assert_eq!(state.balances.get(&1), Some(&9_700));
        assert_eq!(state.balances.get(&2), Some(&0));
        assert_eq!(state.usage.get(&1), Some(&300));
        assert_eq!(
            (
                state.next_account_id,
                state.next_key_id,
                state.next_ledger_seq
            ),
            (3, 3, 3)
        );

        let by_id = store
            .get_generation("gen-a")
            .expect("read")
            .expect("present");
        let by_body = store
            .get_generation("chatcmpl-1")
            .expect("read")
            .expect("present");
        assert_eq!(by_id, by_body);
        assert_eq!(by_id.total_cost_nano, 300);
        let failed = store
            .get_generation("gen-b")
            .expect("read")
            .expect("present");
        assert_eq!(failed.error.as_deref(), Some("upstream down"));
        assert!(store.get_generation("nope").expect("read").is_none());
        assert!(store.get_generation("").expect("read").is_none());

        assert_eq!(
            store.account(2).expect("read").map(|a| a.email),
            Some("a2@example.com".into())
        );
        assert!(store.account(9).expect("read").is_none());
        assert_eq!(store.list_accounts().expect("read").len(), 2);
        assert_eq!(
            store.list_keys(1).expect("read"),
            vec![key(1, 1)]
                .into_iter()
                .map(|mut k| {
                    k.created_at = state.keys[0].created_at;
                    k
                })
                .collect::<Vec<_>>()
        );
        assert_eq!(store.key(2).expect("read").map(|k| k.revoked), Some(true));
        let entries = store.ledger_entries(1, 10).expect("read");
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert_eq!(store.ledger_entries(1, 1).expect("read").len(), 1);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The stored account with this id (created_at is not reproducible).
    fn account_like(state: &LoadedState, id: u64) -> AccountRecord {
        let mut a = account(id);
        if let Some(stored) = state.accounts.iter().find(|s| s.id == id) {
            a.created_at = stored.created_at;
        }
        a
    }

    #[test]
    fn writer_batches_and_loses_nothing_on_shutdown() {
        let dir = test_dir("batch");
        let store = Store::open(&dir).expect("open");
        let writer = Arc::new(store.start_writer());
        writer
            .submit_durable_blocking(WriteOp::InsertAccount(account(1)))
            .expect("durable");
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..500u64 {
                        let seq = 1 + t * 500 + i;
                        let id = format!("gen-{seq}");
                        writer.submit(WriteOp::Settle {
                            charge: entry(seq, 1, -1, LedgerKind::Charge, Some(&id)),
                            generation: generation(&id, "", 1, 1),
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("submitter");
        }
        writer.shutdown();
        let stats = writer.stats();
        assert_eq!(stats.committed.load(Ordering::Relaxed), 4001);
        assert_eq!(stats.pending(), 0);
        let commits = stats.commits.load(Ordering::Relaxed);
        assert!(commits < 4001, "ops were batched: {commits} commits");
        assert!(
            commits >= 4001 / MAX_BATCH_FOR_TESTS as u64,
            "batches are bounded"
        );
        writer.submit(WriteOp::InsertAccount(account(2)));
        assert_eq!(
            stats.failed.load(Ordering::Relaxed),
            1,
            "a write after shutdown is refused"
        );

        let state = store.load_state().expect("load");
        assert_eq!(state.balances.get(&1), Some(&-4000));
        assert_eq!(state.next_ledger_seq, 4001);
        assert!(store.get_generation("gen-4000").expect("read").is_some());
        assert!(store.account(2).expect("read").is_none());
        drop(writer);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    const MAX_BATCH_FOR_TESTS: usize = writer::MAX_BATCH;

    fn gen_at(id: &str, account: u64, key: u64, model: &str, cost: i64, at: u64, failed: bool) -> GenerationRecord {
        let mut g = generation(id, "", account, cost);
        g.key_id = key;
        g.model = model.into();
        g.created_at = at;
        if failed {
            g.status = 502;
            g.error = Some("down".into());
            g.tokens_prompt = 0;
            g.tokens_completion = 0;
        }
        g
    }

    /// Rollups equal the sums of the generation records, per account, day, key and model,
    /// whichever op wrote them; and a version-1 file gets them built on open.
    #[test]
    fn rollups_follow_generations_and_are_built_on_upgrade() {
        use crate::limits::calendar::SECS_PER_DAY;
        let dir = test_dir("rollups");
        let day = 20_000u64;
        let t = |d: u64| (day + d) * SECS_PER_DAY + 100;
        let gens = vec![
            gen_at("g1", 1, 10, "m/a", 300, t(0), false),
            gen_at("g2", 1, 10, "m/a", 200, t(0), false),
            gen_at("g3", 1, 11, "m/b", 50, t(0), false),
            gen_at("g4", 1, 10, "m/a", 0, t(1), true),
            gen_at("g5", 1, 10, "m/a", 7, t(2), false),
            gen_at("g6", 2, 12, "m/a", 1_000, t(0), false),
            // A second model of the same account, day and key, between two of the first's.
            gen_at("g7", 1, 10, "m/c", 40, t(0), false),
            gen_at("g8", 1, 10, "m/a", 1, t(0), false),
        ];
        let check = |store: &Store| {
            let rows = store.usage_rollups(1, day, day + 1).expect("read");
            let summary: Vec<(u64, u64, &str, i64, i64, i64, i64)> = rows
                .iter()
                .map(|(d, k, m, r)| (*d, *k, m.as_str(), r.requests, r.failed, r.cost_nano, r.tokens_prompt))
                .collect();
            assert_eq!(
                summary,
                vec![
                    (day, 10, "m/a", 3, 0, 501, 30),
                    (day, 10, "m/c", 1, 0, 40, 10),
                    (day, 11, "m/b", 1, 0, 50, 10),
                    (day + 1, 10, "m/a", 1, 1, 0, 0)
                ]
            );
            assert_eq!(store.usage_rollups(1, day + 2, day + 2).expect("read").len(), 1);
            assert!(store.usage_rollups(1, day + 3, day + 2).expect("read").is_empty());
            let costs = store.cost_by_account([1, 2, 3], day, day + 2).expect("read");
            assert_eq!((costs[&1], costs[&2], costs[&3]), (598, 1_000, 0));
            assert_eq!(store.cost_by_account([1], day + 1, day + 5).expect("read")[&1], 7);
            let mut since = store.costs_since_day([1, 2], day + 1).expect("read");
            since.sort();
            assert_eq!(since, vec![(1, 10, (day + 2) * SECS_PER_DAY, 7)]);
        };
        {
            let store = Store::open(&dir).expect("open");
            let writer = store.start_writer();
            for (i, g) in gens.into_iter().enumerate() {
                let op = if g.total_cost_nano > 0 {
                    WriteOp::Settle { charge: entry(i as u64 + 1, g.account_id, -g.total_cost_nano, LedgerKind::Charge, Some(&g.id)), generation: g }
                } else {
                    WriteOp::RecordGeneration(g)
                };
                writer.submit(op);
            }
            // Writing a record again replaces its contribution instead of adding to it.
            writer.submit(WriteOp::RecordGeneration(gen_at("g3", 1, 11, "m/b", 50, t(0), false)));
            writer.shutdown();
            check(&store);
            // Make it a version-1 file: no rollups table content, version 1.
            let txn = store.db().unwrap().begin_write().expect("txn");
            txn.delete_table(USAGE).expect("drop");
            txn.open_table(META).expect("meta").insert(META_SCHEMA_VERSION, 1).expect("v1");
            txn.commit().expect("commit");
            assert!(store.usage_rollups(1, day, day + 5).is_err() || store.usage_rollups(1, day, day + 5).unwrap().is_empty());
        }
        let store = Store::open(&dir).expect("upgrade");
        check(&store);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn audit_touch_and_byok_round_trip() {
        let dir = test_dir("audit");
        {
            let store = Store::open(&dir).expect("open");
            let writer = store.start_writer();
            let audit = |seq: u64, account: Option<u64>| AuditEntry {
                seq,
                at: 5,
                actor: "admin".into(),
                action: "key.create".into(),
                account_id: account,
                detail: serde_json::json!({"key_id": seq}),
            };
            writer
                .submit_durable_blocking(WriteOp::Atomic(vec![WriteOp::PutKey(key(1, 1)), WriteOp::Audit(audit(1, Some(1)))]))
                .expect("durable");
            writer.submit(WriteOp::Audit(audit(2, Some(2))));
            writer.submit(WriteOp::Audit(audit(3, Some(1))));
            writer.submit(WriteOp::TouchKeys(vec![(1, 100), (2, 50)]));
            writer.submit(WriteOp::TouchKeys(vec![(1, 90)])); // never backwards
            let byok = |provider: &str| ByokRecord {
                account_id: 1,
                provider: provider.into(),
                nonce: "n".into(),
                ciphertext: "c".into(),
                created_at: 1,
            };
            writer.submit(WriteOp::PutByok(byok("openai")));
            writer.submit(WriteOp::PutByok(byok("groq")));
            writer.submit(WriteOp::DeleteByok { account_id: 1, provider: "groq".into() });
            writer.shutdown();
            let all = store.audit_entries(10, None).expect("read");
            assert_eq!(all.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![3, 2, 1], "newest first");
            assert_eq!(store.audit_entries(1, None).expect("read").len(), 1);
            let mine = store.audit_entries(10, Some(1)).expect("read");
            assert_eq!(mine.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![3, 1]);
            assert_eq!(store.key_last_used(1).expect("read"), Some(100));
        }
        let store = Store::open(&dir).expect("reopen");
        let state = store.load_state().expect("load");
        assert_eq!(state.next_audit_seq, 4);
        assert_eq!(state.key_last_used.get(&2), Some(&50));
        assert_eq!(state.byok.iter().map(|b| b.provider.as_str()).collect::<Vec<_>>(), vec!["openai"]);
        assert_eq!(IdCounters::from_state(&state).next_audit_seq(), 4);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What kill -9 leaves behind is what the kernel had: the file as last written, without
    /// redb's clean-shutdown mark. A copy taken while the database is open is exactly that;
    /// it must open (redb repairs it) with every acknowledged commit in it.
    #[test]
    fn opens_a_file_left_by_an_unclean_shutdown() {
        let dir = test_dir("unclean");
        let copy = test_dir("unclean-copy");
        let store = Store::open(&dir).expect("open");
        let writer = store.start_writer();
        writer
            .submit_durable_blocking(WriteOp::InsertAccount(account(1)))
            .expect("durable");
        writer
            .submit_durable_blocking(WriteOp::Grant(entry(1, 1, 500, LedgerKind::Grant, None)))
            .expect("durable");
        writer
            .submit_durable_blocking(WriteOp::Settle {
                charge: entry(2, 1, -200, LedgerKind::Charge, Some("gen-x")),
                generation: generation("gen-x", "body-x", 1, 200),
            })
            .expect("durable");
        std::fs::create_dir_all(&copy).expect("mkdir");
        std::fs::copy(store.path(), copy.join(DB_FILE)).expect("copy live file");

        let crashed = Store::open(&copy).expect("open after unclean shutdown");
        assert!(crashed.was_repaired(), "redb's repair path was taken");
        let state = crashed.load_state().expect("load");
        assert_eq!(state.balances.get(&1), Some(&300));
        assert_eq!(
            crashed
                .get_generation("body-x")
                .expect("read")
                .map(|g| g.total_cost_nano),
            Some(200)
        );
        drop(writer);
        drop((store, crashed));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&copy);
    }

    fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
        serde_json::to_vec(value).expect("json")
    }

    /// A store written before ledger entries and generation records were binary holds their
    /// JSON rows, and new rows are binary. Both read everywhere: balances, usage, lookups, the
    /// ledger, rollups (built from both on a schema upgrade; a JSON record written again is
    /// replaced, not counted twice), cost scans, the export and a backup's verification.
    #[test]
    fn json_rows_from_before_and_binary_rows_read_together() {
        use crate::limits::calendar::SECS_PER_DAY;
        let dir = test_dir("mixed-rows");
        let day = 20_000u64;
        let at = day * SECS_PER_DAY + 100;
        let dated = |mut g: GenerationRecord| {
            g.created_at = at;
            g
        };
        let old_charge = dated(generation("gen-old", "chatcmpl-old", 1, 300));
        let mut old_failed = dated(generation("gen-old-failed", "", 1, 0));
        old_failed.status = 502;
        old_failed.error = Some("upstream down".into());
        {
            // What an older build left: JSON rows, written here with serde_json directly, and
            // schema 1 so that opening builds the usage rollups from them.
            let store = Store::open(&dir).expect("open");
            let txn = store.db().unwrap().begin_write().expect("txn");
            {
                let mut ledger = txn.open_table(LEDGER).unwrap();
                ledger.insert(1, json(&entry(1, 1, 10_000, LedgerKind::Grant, None)).as_slice()).unwrap();
                ledger.insert(2, json(&entry(2, 1, -300, LedgerKind::Charge, Some("gen-old"))).as_slice()).unwrap();
                let mut generations = txn.open_table(GENERATIONS).unwrap();
                generations.insert("gen-old", json(&old_charge).as_slice()).unwrap();
                generations.insert("gen-old-failed", json(&old_failed).as_slice()).unwrap();
                txn.open_table(GENERATION_BY_BODY).unwrap().insert("chatcmpl-old", "gen-old").unwrap();
                txn.open_table(ACCOUNTS).unwrap().insert(1, json(&account(1)).as_slice()).unwrap();
                txn.open_table(META).unwrap().insert(META_SCHEMA_VERSION, 1).unwrap();
            }
            txn.delete_table(USAGE).unwrap();
            txn.commit().expect("commit");
        }
        let store = Store::open(&dir).expect("open and upgrade");
        let writer = store.start_writer();
        writer.submit(WriteOp::Grant(entry(3, 1, 500, LedgerKind::Grant, None)));
        let new_charge = dated(generation("gen-new", "chatcmpl-new", 1, 200));
        writer.submit(WriteOp::Settle {
            charge: entry(4, 1, -200, LedgerKind::Charge, Some("gen-new")),
            generation: new_charge.clone(),
        });
        writer.submit(WriteOp::RecordGeneration(old_failed.clone()));
        writer.shutdown();
        {
            let txn = store.db().unwrap().begin_read().unwrap();
            let ledger = txn.open_table(LEDGER).unwrap();
            let first = |seq: u64| ledger.get(seq).unwrap().unwrap().value()[0];
            assert_eq!([first(1), first(2), first(3), first(4)], [b'{', b'{', codec::V1, codec::V1]);
            let generations = txn.open_table(GENERATIONS).unwrap();
            let first = |id: &str| generations.get(id).unwrap().unwrap().value()[0];
            assert_eq!([first("gen-old"), first("gen-new"), first("gen-old-failed")], [b'{', codec::V1, codec::V1]);
        }

        let check = |store: &Store| {
            let state = store.load_state().expect("load");
            assert_eq!(state.balances[&1], 10_000 - 300 + 500 - 200);
            assert_eq!(state.usage[&1], 500);
            assert_eq!(state.next_ledger_seq, 5);
            assert_eq!(store.get_generation("chatcmpl-old").unwrap(), Some(old_charge.clone()));
            assert_eq!(store.get_generation("gen-old").unwrap(), Some(old_charge.clone()));
            assert_eq!(store.get_generation("chatcmpl-new").unwrap(), Some(new_charge.clone()));
            assert_eq!(store.get_generation("gen-old-failed").unwrap(), Some(old_failed.clone()));
            let ledger = store.ledger_entries(1, 10).unwrap();
            let amounts: Vec<(u64, i64)> = ledger.iter().map(|e| (e.seq, e.amount_nano)).collect();
            assert_eq!(amounts, vec![(4, -200), (3, 500), (2, -300), (1, 10_000)]);
            assert_eq!(ledger[2].generation_id.as_deref(), Some("gen-old"));
            assert_eq!(ledger[2].kind, LedgerKind::Charge);
            let rollups = store.usage_rollups(1, day, day).unwrap();
            let r = rollups.iter().map(|(_, _, _, r)| *r).collect::<Vec<_>>();
            assert_eq!(r.len(), 1, "{rollups:?}");
            assert_eq!((r[0].requests, r[0].failed, r[0].cost_nano, r[0].tokens_prompt), (3, 1, 500, 30));
            let mut costs = store.generation_costs_since(at).unwrap();
            costs.sort();
            assert_eq!(costs, vec![(1, 200, at), (1, 300, at)]);
            let summary = store.export_jsonl(None, &mut Vec::new()).unwrap();
            assert_eq!((summary.ledger_entries, summary.generations), (4, 3));
        };
        check(&store);
        let backup = dir.join("mixed.redb");
        store.backup_to(&backup, false).expect("backup");
        assert_eq!(verify_file(&backup).expect("verify").ledger_total_nano, 10_000);
        drop((writer, store));
        check(&Store::open(&dir).expect("reopen"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A damaged binary row is an error wherever it is read, like a bad JSON row: never a
    /// panic, and a backup of it does not verify.
    #[test]
    fn a_damaged_binary_row_is_an_error() {
        let dir = test_dir("damaged-row");
        let store = Store::open(&dir).expect("open");
        let writer = store.start_writer();
        writer.submit(WriteOp::InsertAccount(account(1)));
        writer.submit(WriteOp::Settle {
            charge: entry(1, 1, -5, LedgerKind::Charge, Some("gen-a")),
            generation: generation("gen-a", "chatcmpl-a", 1, 5),
        });
        writer.shutdown();
        {
            // Cut both rows short by a byte.
            let txn = store.db().unwrap().begin_write().expect("txn");
            {
                let mut ledger = txn.open_table(LEDGER).unwrap();
                let row = ledger.get(1).unwrap().unwrap().value().to_vec();
                ledger.insert(1, &row[..row.len() - 1]).unwrap();
                let mut generations = txn.open_table(GENERATIONS).unwrap();
                let row = generations.get("gen-a").unwrap().unwrap().value().to_vec();
                generations.insert("gen-a", &row[..row.len() - 1]).unwrap();
            }
            txn.commit().expect("commit");
        }
        let e = store.get_generation("gen-a").unwrap_err();
        assert!(e.0.contains("decode generation: truncated row"), "{e}");
        assert!(store.get_generation("chatcmpl-a").is_err());
        let e = store.load_state().unwrap_err();
        assert!(e.0.contains("decode ledger entry: truncated row"), "{e}");
        assert!(store.ledger_entries(1, 10).is_err());
        assert!(store.generation_costs_since(0).is_err());
        assert!(store.export_jsonl(None, &mut Vec::new()).is_err());
        let backup = dir.join("damaged.redb");
        store.backup_to(&backup, false).expect("a backup copies rows as they are");
        let e = verify_file(&backup).unwrap_err();
        assert!(e.0.contains("decode ledger entry: truncated row (row 0)"), "{e}");
        drop((writer, store));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A body id made from the generation id is found without an index row; a provider's is
    /// still indexed (and found) as before.
    #[test]
    fn the_gateways_body_ids_need_no_index() {
        let dir = test_dir("client-ids");
        let store = Store::open(&dir).expect("open");
        let writer = store.start_writer();
        let gen = "gen-1a210f12c3d-AbCdEfGhIjKl";
        let chat = client_response_id(gen, false);
        writer.submit(WriteOp::RecordGeneration(generation(gen, &chat, 1, 0)));
        writer.submit(WriteOp::RecordGeneration(generation("gen-b", "chatcmpl-provider", 1, 0)));
        writer.shutdown();
        let indexed: Vec<String> = {
            let txn = store.db().unwrap().begin_read().unwrap();
            let table = txn.open_table(GENERATION_BY_BODY).unwrap();
            table.iter().unwrap().map(|r| r.unwrap().0.value().to_string()).collect()
        };
        assert_eq!(indexed, ["chatcmpl-provider"]);
        for id in [gen, chat.as_str(), &client_response_id(gen, true)] {
            assert_eq!(store.get_generation(id).unwrap().map(|g| g.id), Some(gen.to_string()), "{id}");
        }
        assert_eq!(store.get_generation("chatcmpl-provider").unwrap().map(|g| g.id).as_deref(), Some("gen-b"));
        assert!(store.get_generation("chatcmpl-gen-nope").unwrap().is_none());
        drop((writer, store));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn client_ids_lead_back_to_the_generation() {
        let gen = "gen-1a210f12c3d-WrpwmCcTbglE";
        let chat = client_response_id(gen, false);
        let legacy = client_response_id(gen, true);
        assert_eq!((chat.as_str(), legacy.as_str()), ("chatcmpl-gen-1a210f12c3d-WrpwmCcTbglE", "cmpl-gen-1a210f12c3d-WrpwmCcTbglE"));
        assert_eq!((generation_id_in(&chat), generation_id_in(&legacy)), (Some(gen), Some(gen)));
        // A provider's own ids are not ours.
        for other in ["chatcmpl-abc", "cmpl-", "gen-1", "chatcmpl-msg_01", "xchatcmpl-gen-1"] {
            assert_eq!(generation_id_in(other), None, "{other}");
        }
    }
}
