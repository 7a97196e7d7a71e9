//! The one writer thread.
//!
//! redb allows one write transaction at a time and `begin_write` blocks, and an fsync'd commit
//! costs ~160 µs. So no request ever writes: ops go down a channel to a dedicated OS thread that
//! blocks for the first op, lingers while nobody waits (see [`LINGER`]), drains whatever else
//! is queued (up to [`MAX_BATCH`]), applies it all in ONE transaction and commits with
//! `Durability::Immediate`. Only then are waiters completed, so "acknowledged" always means
//! "on disk". A settled request costs this thread ~2.3 µs of CPU at ~1,000 per commit (wrk, 2026-11-25); a body
//! id the gateway did not make (a provider's random one) would cost several times that in the
//! body-id index, which is why responses carry the gateway's own (see `put_generation` and
//! `benches/store_writer.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use redb::{Database, Durability, ReadableTable, WriteTransaction};

use super::handoff::Journal;
use super::records::{
    AccountRecord, AuditEntry, ByokRecord, GenerationRecord, KeyRecord, LedgerEntry, UsageRollup,
};
use super::tables::*;
use super::StoreError;

/// Most ops applied in one transaction; bounds commit latency under a flood. Above what
/// [`LINGER`] collects at ~40k requests/s.
pub const MAX_BATCH: usize = 2048;

/// How long a batch of fire-and-forget charges waits for company before it commits. Charges
/// are not on anyone's critical path (the request was answered already), and a credit grant
/// or flush that arrives meanwhile ends the wait at once (its sender unparks the writer).
/// Every commit costs an fdatasync, redb's page writes and a rewrite of each B-tree leaf it
/// touched, whatever its size: at ~20k requests/s a 50 ms batch (~1,000 charges) costs the
/// writer ~3.8 µs per request where a 10 ms one (~200) cost ~5.3 (`benches/store_writer.rs`,
/// `STORE_BENCH_BATCH`). On `kill -9` the batch in the making is lost: the ledger and the
/// balance (its sum) still agree, and the loss is charges (under-billing), never credits.
/// `/generation` (on a miss) and `/usage` flush, so they see every request already answered.
const LINGER: std::time::Duration = std::time::Duration::from_millis(50);

/// A durable change.
#[derive(Clone, Debug)]
pub enum WriteOp {
    /// Insert or replace an account (also used to update markup/suspension).
    InsertAccount(AccountRecord),
    /// Insert or replace a key (create, update limits, revoke).
    PutKey(KeyRecord),
    /// A credit grant (or admin correction) ledger entry.
    Grant(LedgerEntry),
    /// A successful request: its charge and its generation record, in the same transaction.
    Settle {
        charge: LedgerEntry,
        generation: GenerationRecord,
    },
    /// An unbilled (failed) request.
    RecordGeneration(GenerationRecord),
    /// [`Settle`](WriteOp::Settle) or [`RecordGeneration`](WriteOp::RecordGeneration) with
    /// the rows already encoded: what a request submits (see [`WriteOp::settled`]).
    Settled(SettledRows),
    /// Last-used times of keys, `(key id, unix secs)`: the lazy flush of `KeyEntry::touch`.
    TouchKeys(Vec<(u64, u64)>),
    /// One audit-log entry.
    Audit(AuditEntry),
    /// Insert or replace an account's encrypted provider key.
    PutByok(ByokRecord),
    DeleteByok { account_id: u64, provider: String },
    /// Several ops in the same transaction: a change and its audit entry land together or
    /// not at all.
    Atomic(Vec<WriteOp>),
}

impl WriteOp {
    /// A one-line summary for logs: enough to reconcile a lost write by hand, without secrets
    /// (no password or key hashes).
    pub fn describe(&self) -> String {
        match self {
            WriteOp::InsertAccount(a) => format!("InsertAccount(id {})", a.id),
            WriteOp::PutKey(k) => format!(
                "PutKey(id {}, account {}, revoked {})",
                k.id, k.account_id, k.revoked
            ),
            WriteOp::Grant(e) => {
                format!(
                    "Grant(seq {}, account {}, {} nano)",
                    e.seq, e.account_id, e.amount_nano
                )
            }
            WriteOp::Settle { charge, generation } => format!(
                "Settle(seq {}, account {}, {} nano, generation {})",
                charge.seq, charge.account_id, charge.amount_nano, generation.id
            ),
            WriteOp::RecordGeneration(g) => {
                format!("RecordGeneration({}, account {})", g.id, g.account_id)
            }
            WriteOp::Settled(rows) => format!(
                "Settled(seq {:?}, account {}, generation {})",
                rows.ledger_row().map(|_| rows.charge_seq),
                rows.account_id,
                rows.id().unwrap_or("?")
            ),
            WriteOp::TouchKeys(keys) => format!("TouchKeys({} keys)", keys.len()),
            WriteOp::Audit(a) => format!("Audit(seq {}, {} by {})", a.seq, a.action, a.actor),
            WriteOp::PutByok(b) => format!("PutByok(account {}, {})", b.account_id, b.provider),
            WriteOp::DeleteByok { account_id, provider } => {
                format!("DeleteByok(account {account_id}, {provider})")
            }
            WriteOp::Atomic(ops) => {
                let parts: Vec<String> = ops.iter().map(WriteOp::describe).collect();
                format!("Atomic[{}]", parts.join(", "))
            }
        }
    }

    /// A request's settlement: its charge (None: nothing owed) and its generation record,
    /// encoded here, on the request's thread (see [`SettledRows`]). Should encoding fail
    /// (it does not for these rows), the records go as they are.
    pub fn settled(charge: Option<LedgerEntry>, generation: GenerationRecord) -> WriteOp {
        match SettledRows::encode(charge.as_ref(), &generation) {
            Ok(rows) => WriteOp::Settled(rows),
            Err(_) => match charge {
                Some(charge) => WriteOp::Settle { charge, generation },
                None => WriteOp::RecordGeneration(generation),
            },
        }
    }
}

/// A settled request's rows as they will be stored, and what the writer needs besides to
/// index and roll them up.
///
/// Why encoded on the request's thread: a generation record and its charge are a dozen
/// strings allocated by a worker thread. Freed by the writer thread, each went back to the
/// worker's arena through jemalloc's cross-thread path (the writer's cache flushes whole
/// batches into the owning arena's bins under their locks: the writer's largest single cost
/// after redb), and the worker's next allocations refilled from the arena instead of its own
/// cache. Encoded and dropped where they were made, the strings are recycled locally and the
/// writer frees one buffer.
#[derive(Clone, Debug)]
pub struct SettledRows {
    /// The ledger row (empty: nothing charged), the generation row, then the generation id,
    /// its model and, when it needs the body-id index, its body id, back to back.
    bytes: Vec<u8>,
    ledger_end: usize,
    generation_end: usize,
    id_end: usize,
    model_end: usize,
    charge_seq: u64,
    account_id: u64,
    key_id: u64,
    created_at: u64,
    /// This record's contribution to its usage rollup.
    rollup: UsageRollup,
}

impl SettledRows {
    fn encode(charge: Option<&LedgerEntry>, g: &GenerationRecord) -> Result<SettledRows, StoreError> {
        let mut bytes = Vec::with_capacity(320);
        if let Some(charge) = charge {
            encode_append(charge, &mut bytes)?;
        }
        let ledger_end = bytes.len();
        encode_append(g, &mut bytes)?;
        let generation_end = bytes.len();
        bytes.extend_from_slice(g.id.as_bytes());
        let id_end = bytes.len();
        bytes.extend_from_slice(g.model.as_bytes());
        let model_end = bytes.len();
        if needs_body_index(g) {
            bytes.extend_from_slice(g.body_id.as_bytes());
        }
        Ok(SettledRows {
            bytes,
            ledger_end,
            generation_end,
            id_end,
            model_end,
            charge_seq: charge.map_or(0, |c| c.seq),
            account_id: g.account_id,
            key_id: g.key_id,
            created_at: g.created_at,
            rollup: UsageRollup::of(g, 1),
        })
    }

    fn ledger_row(&self) -> Option<&[u8]> {
        Some(&self.bytes[..self.ledger_end]).filter(|row| !row.is_empty())
    }

    fn generation_row(&self) -> &[u8] {
        &self.bytes[self.ledger_end..self.generation_end]
    }

    fn text(&self, range: std::ops::Range<usize>) -> Result<&str, StoreError> {
        std::str::from_utf8(&self.bytes[range]).map_err(|e| StoreError(format!("settled rows: {e}")))
    }

    fn id(&self) -> Result<&str, StoreError> {
        self.text(self.generation_end..self.id_end)
    }

    fn model(&self) -> Result<&str, StoreError> {
        self.text(self.id_end..self.model_end)
    }

    /// The body id to index, if it needs indexing.
    fn body_id(&self) -> Result<Option<&str>, StoreError> {
        let body = self.text(self.model_end..self.bytes.len())?;
        Ok(Some(body).filter(|b| !b.is_empty()))
    }

    /// The records again (the handoff journal, which stores them as JSON).
    pub(super) fn decode(&self) -> Result<(Option<LedgerEntry>, GenerationRecord), StoreError> {
        let charge = self.ledger_row().map(|row| decode(row, "ledger entry")).transpose()?;
        Ok((charge, decode(self.generation_row(), "generation")?))
    }
}

/// [`encode_into`] without clearing `out` first.
fn encode_append<T: Row>(value: &T, out: &mut Vec<u8>) -> Result<(), StoreError> {
    value.write_row(out).map_err(|e| StoreError(format!("encode: {e}")))
}

/// Whether a generation's body id leads back to it only through the body-id index: the
/// gateway's own body ids contain the generation id (`client_response_id`); only another id
/// (a provider's, in records from before) needs one. With a provider's random ids, this index
/// was most of the writer's work per request.
fn needs_body_index(g: &GenerationRecord) -> bool {
    !g.body_id.is_empty() && super::generation_id_in(&g.body_id) != Some(g.id.as_str())
}

/// Called on the writer thread once the op's transaction committed (Ok) or failed (Err).
/// Must be quick: it runs before the next batch starts.
pub type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;

// Ops are the common case; boxing them would cost an allocation each to shrink rare variants.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Op(WriteOp, Option<Completion>),
    /// Completed after everything queued before it has been committed.
    Flush(Completion),
    Shutdown,
    /// Graceful upgrade: commit what is queued ahead, let go of the database and write to
    /// this journal from now on (see `store::handoff`).
    HandOff(Box<Journal>, Completion),
}

/// Where batches go: the database, or after a handoff the journal.
enum Sink {
    Db(Arc<Database>),
    Journal(Box<Journal>),
}

/// Counters for metrics. `pending()` is the queue depth.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub submitted: AtomicU64,
    pub committed: AtomicU64,
    pub failed: AtomicU64,
    pub commits: AtomicU64,
}

impl WriterStats {
    /// Ops submitted but not yet committed or failed.
    pub fn pending(&self) -> u64 {
        let done = self.committed.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
        self.submitted.load(Ordering::Relaxed).saturating_sub(done)
    }
}

/// Handle to the writer thread. Dropping it flushes and joins, like [`StoreWriter::shutdown`].
pub struct StoreWriter {
    tx: mpsc::Sender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread, to end its linger when somebody waits (`None`: no thread).
    waker: Option<std::thread::Thread>,
    closed: AtomicBool,
    stats: Arc<WriterStats>,
}

impl StoreWriter {
    /// Spawns the writer thread (normally via `Store::start_writer`).
    pub fn start(db: Arc<Database>) -> StoreWriter {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("tollgate-store-writer".into())
            .spawn(move || run(db, rx, &thread_stats));
        let thread = match thread {
            Ok(handle) => Some(handle),
            Err(e) => {
                // Without a writer nothing can be made durable; every submit will report it.
                log::error!("store: cannot spawn writer thread: {e}");
                None
            }
        };
        StoreWriter {
            tx,
            waker: thread.as_ref().map(|h| h.thread().clone()),
            thread: Mutex::new(thread),
            closed: AtomicBool::new(false),
            stats,
        }
    }

    /// A writer with no thread, for a closed store: every submit fails (and says so).
    pub fn stopped() -> StoreWriter {
        let (tx, _) = mpsc::channel();
        StoreWriter {
            tx,
            thread: Mutex::new(None),
            waker: None,
            closed: AtomicBool::new(true),
            stats: Arc::new(WriterStats::default()),
        }
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Fire-and-forget (charges): queued, committed with the next batch. A failure is logged.
    pub fn submit(&self, op: WriteOp) {
        self.send(op, None);
    }

    /// Queues `op` and calls `done` on the writer thread once its transaction committed or
    /// failed. Unlike awaiting [`submit_durable`](Self::submit_durable), this still runs if the
    /// caller goes away, so in-memory state can follow the disk exactly (see `Ledger::grant`).
    pub fn submit_with(&self, op: WriteOp, done: Completion) {
        self.send(op, Some(done));
    }

    /// Queues `op` and waits until it is committed with an fsync (grants, accounts, keys).
    pub async fn submit_durable(&self, op: WriteOp) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit_with(op, Box::new(move |r| drop(tx.send(r))));
        rx.await
            .unwrap_or_else(|_| Err("store writer stopped".into()))
    }

    /// [`submit_durable`](Self::submit_durable) for code outside the async runtime (startup,
    /// CLI). Panics if called from inside a tokio runtime, like any blocking wait would stall it.
    pub fn submit_durable_blocking(&self, op: WriteOp) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit_with(op, Box::new(move |r| drop(tx.send(r))));
        rx.blocking_recv()
            .unwrap_or_else(|_| Err("store writer stopped".into()))
    }

    /// Waits until everything submitted before this call is committed (tests, shutdown hooks).
    pub async fn flush(&self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .tx
            .send(Msg::Flush(Box::new(move |r| drop(tx.send(r)))))
            .is_err()
        {
            return Err("store writer stopped".into());
        }
        self.wake();
        rx.await
            .unwrap_or_else(|_| Err("store writer stopped".into()))
    }

    /// Graceful upgrade: once everything submitted before this call is committed, the writer
    /// drops its handle on the database and appends every later batch to `journal` (ops a
    /// journal cannot carry fail). Blocks until then; call it outside async tasks. With
    /// `Store::close`, this releases the file for the new process.
    pub fn hand_off(&self, journal: Journal) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let done: Completion = Box::new(move |r| drop(tx.send(r)));
        if self.tx.send(Msg::HandOff(Box::new(journal), done)).is_err() {
            return Err("store writer stopped".into());
        }
        self.wake();
        rx.recv().unwrap_or_else(|_| Err("store writer stopped".into()))
    }

    /// Commits everything submitted so far and joins the thread. Idempotent. Blocks the
    /// calling thread for up to one commit; call it outside async tasks or in `spawn_blocking`.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            // Everything sent before this message is ahead of it in the FIFO channel.
            let _ = self.tx.send(Msg::Shutdown);
            self.wake();
            if handle.join().is_err() {
                log::error!("store: writer thread panicked");
            }
        }
    }

    /// Ends the writer's linger: somebody waits on what was just sent. (A wake that finds the
    /// writer busy or blocked in `recv` only makes its next linger end early.)
    fn wake(&self) {
        if let Some(thread) = &self.waker {
            thread.unpark();
        }
    }

    fn send(&self, op: WriteOp, done: Option<Completion>) {
        let waited = done.is_some();
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
        if self.closed.load(Ordering::SeqCst) {
            log::error!(
                "store: write submitted after shutdown, dropped: {}",
                op.describe()
            );
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            if let Some(done) = done {
                done(Err("store writer shut down".into()));
            }
            return;
        }
        match self.tx.send(Msg::Op(op, done)) {
            Ok(()) if waited => self.wake(),
            Ok(()) => {}
            Err(mpsc::SendError(msg)) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                if let Msg::Op(op, done) = msg {
                    log::error!(
                        "store: writer thread gone, write dropped: {}",
                        op.describe()
                    );
                    if let Some(done) = done {
                        done(Err("store writer stopped".into()));
                    }
                }
            }
        }
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The thread body: block for one message, linger, drain the queue, commit, repeat.
fn run(db: Arc<Database>, rx: mpsc::Receiver<Msg>, stats: &WriterStats) {
    let mut sink = Sink::Db(db);
    let mut shutting_down = false;
    loop {
        let mut batch = Batch::default();
        if !shutting_down {
            match rx.recv() {
                Ok(msg) => batch.add(msg),
                Err(_) => break, // every handle dropped: nothing more can arrive
            }
            // Nobody waits on a fire-and-forget charge: linger so the batch fills. While the
            // writer is not blocked in recv(), submitters never have to wake it, which saves a
            // futex wake per request and turns many small commits (an fdatasync each) into few.
            // Whoever does wait (a credit grant, a flush, a handoff, shutdown) unparks it, so
            // their latency is one commit.
            let until = std::time::Instant::now() + LINGER;
            loop {
                batch.drain(&rx);
                if batch.commit_now() {
                    break;
                }
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                // Spurious returns are fine: the loop looks again.
                std::thread::park_timeout(left);
            }
        }
        // Drain (again, after a linger cut short). Keep going after Shutdown too, so a submit
        // that raced it is still written.
        batch.drain(&rx);
        shutting_down |= batch.shutdown;
        let Batch { ops, flushes, hand_off, .. } = batch;
        let batch_empty = ops.is_empty();
        let all_ok = match &mut sink {
            Sink::Db(db) => write_batch(db, ops, stats),
            Sink::Journal(journal) => journal.write_batch(ops, stats),
        };
        let flush_result = if all_ok {
            Ok(())
        } else {
            Err("some writes failed".to_string())
        };
        for done in flushes {
            done(flush_result.clone());
        }
        if let Some((journal, done)) = hand_off {
            // Dropping the Db sink drops this thread's handle on the database.
            sink = Sink::Journal(journal);
            log::info!("store: writer handed off; writing to the journal from now on");
            done(Ok(()));
        }
        if shutting_down && batch_empty {
            break;
        }
    }
    if let Sink::Journal(journal) = sink {
        journal.finish();
    }
}

/// What the next transaction carries.
#[derive(Default)]
struct Batch {
    ops: Vec<(WriteOp, Option<Completion>)>,
    flushes: Vec<Completion>,
    hand_off: Option<(Box<Journal>, Completion)>,
    shutdown: bool,
}

impl Batch {
    fn add(&mut self, msg: Msg) {
        match msg {
            Msg::Op(op, done) => self.ops.push((op, done)),
            Msg::Flush(done) => self.flushes.push(done),
            Msg::Shutdown => self.shutdown = true,
            Msg::HandOff(journal, done) => self.hand_off = Some((journal, done)),
        }
    }

    /// Takes what is queued, up to [`MAX_BATCH`] ops, and nothing past a handoff: what
    /// follows it goes to the journal.
    fn drain(&mut self, rx: &mpsc::Receiver<Msg>) {
        while self.ops.len() < MAX_BATCH && self.hand_off.is_none() {
            match rx.try_recv() {
                Ok(msg) => self.add(msg),
                Err(_) => break,
            }
        }
    }

    /// Whether to stop lingering: somebody waits on this batch, or it is full.
    fn commit_now(&self) -> bool {
        !self.flushes.is_empty()
            || self.shutdown
            || self.hand_off.is_some()
            || self.ops.len() >= MAX_BATCH
            || self.ops.iter().any(|(_, done)| done.is_some())
    }
}

/// Commits `ops` in one transaction; if that fails, retries each op in its own transaction so
/// one bad op cannot sink the rest. Completes every op's waiter. Returns whether all succeeded.
fn write_batch(
    db: &Database,
    ops: Vec<(WriteOp, Option<Completion>)>,
    stats: &WriterStats,
) -> bool {
    if ops.is_empty() {
        return true;
    }
    let (ops, dones): (Vec<WriteOp>, Vec<Option<Completion>>) = ops.into_iter().unzip();
    match commit(db, &ops) {
        Ok(()) => {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .committed
                .fetch_add(ops.len() as u64, Ordering::Relaxed);
            dones.into_iter().flatten().for_each(|done| done(Ok(())));
            true
        }
        Err(e) if ops.len() > 1 => {
            log::error!(
                "store: batch of {} failed ({e}); retrying one by one",
                ops.len()
            );
            let mut all_ok = true;
            for (op, done) in ops.into_iter().zip(dones) {
                all_ok &= write_batch(db, vec![(op, done)], stats);
            }
            all_ok
        }
        Err(e) => {
            log::error!("store: write failed ({e}), dropped: {}", ops[0].describe());
            stats.failed.fetch_add(1, Ordering::Relaxed);
            dones
                .into_iter()
                .flatten()
                .for_each(|done| done(Err(e.to_string())));
            false
        }
    }
}

/// One write transaction for all `ops`, fsync'd. On error the transaction is dropped (aborted).
pub(super) fn commit(db: &Database, ops: &[WriteOp]) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    apply(&txn, ops)?;
    txn.commit()?;
    Ok(())
}

/// The tables one transaction writes, opened once per batch.
struct Tables<'t> {
    accounts: redb::Table<'t, u64, &'static [u8]>,
    keys: redb::Table<'t, u64, &'static [u8]>,
    ledger: redb::Table<'t, u64, &'static [u8]>,
    generations: redb::Table<'t, &'static str, &'static [u8]>,
    by_body: redb::Table<'t, &'static str, &'static str>,
    usage: redb::Table<'t, (u64, u64, u64, &'static str), &'static [u8]>,
    last_used: redb::Table<'t, u64, u64>,
    audit: redb::Table<'t, u64, &'static [u8]>,
    byok: redb::Table<'t, (u64, &'static str), &'static [u8]>,
    /// Usage-rollup changes of this batch, summed per row and written once at the end: a
    /// batch of many settles for one key and model costs one read and one write of its row.
    rollups: RollupDeltas,
    /// Scratch for encoding a row: one allocation per batch instead of one per row.
    buf: Vec<u8>,
    /// High-water marks for the id counters, raised once per batch.
    next_account: u64,
    next_key: u64,
    next_seq: u64,
    next_audit: u64,
}

fn apply(txn: &WriteTransaction, ops: &[WriteOp]) -> Result<(), StoreError> {
    let mut t = Tables {
        accounts: txn.open_table(ACCOUNTS)?,
        keys: txn.open_table(KEYS)?,
        ledger: txn.open_table(LEDGER)?,
        generations: txn.open_table(GENERATIONS)?,
        by_body: txn.open_table(GENERATION_BY_BODY)?,
        usage: txn.open_table(USAGE)?,
        last_used: txn.open_table(KEY_LAST_USED)?,
        audit: txn.open_table(AUDIT)?,
        byok: txn.open_table(BYOK)?,
        rollups: RollupDeltas::default(),
        buf: Vec::with_capacity(256),
        next_account: 0,
        next_key: 0,
        next_seq: 0,
        next_audit: 0,
    };
    for op in ops {
        apply_one(&mut t, op)?;
    }
    let deltas = std::mem::take(&mut t.rollups);
    deltas.write(&mut t.usage)?;
    let mut meta = txn.open_table(META)?;
    for (name, mark) in [
        (META_NEXT_ACCOUNT, t.next_account),
        (META_NEXT_KEY, t.next_key),
        (META_NEXT_LEDGER, t.next_seq),
        (META_NEXT_AUDIT, t.next_audit),
    ] {
        if mark == 0 {
            continue;
        }
        let current = meta.get(name)?.map(|v| v.value()).unwrap_or(0);
        if mark > current {
            meta.insert(name, mark)?;
        }
    }
    Ok(())
}

fn apply_one(t: &mut Tables<'_>, op: &WriteOp) -> Result<(), StoreError> {
    match op {
        WriteOp::InsertAccount(a) => {
            t.accounts.insert(a.id, row(&mut t.buf, a)?)?;
            t.next_account = t.next_account.max(a.id + 1);
        }
        WriteOp::PutKey(k) => {
            t.keys.insert(k.id, row(&mut t.buf, k)?)?;
            t.next_key = t.next_key.max(k.id + 1);
        }
        WriteOp::Grant(entry) => {
            t.ledger.insert(entry.seq, row(&mut t.buf, entry)?)?;
            t.next_seq = t.next_seq.max(entry.seq + 1);
        }
        WriteOp::Settle { charge, generation } => {
            t.ledger.insert(charge.seq, row(&mut t.buf, charge)?)?;
            t.next_seq = t.next_seq.max(charge.seq + 1);
            put_generation(t, generation)?;
        }
        WriteOp::RecordGeneration(generation) => put_generation(t, generation)?,
        WriteOp::Settled(rows) => {
            if let Some(row) = rows.ledger_row() {
                t.ledger.insert(rows.charge_seq, row)?;
                t.next_seq = t.next_seq.max(rows.charge_seq + 1);
            }
            let day = crate::limits::calendar::day_index(rows.created_at);
            let body_id = rows.body_id()?;
            put_generation_row(t, rows.id()?, rows.generation_row(), (rows.account_id, day, rows.key_id), rows.model()?, rows.rollup, body_id)?;
        }
        WriteOp::TouchKeys(keys) => {
            for &(id, at) in keys {
                // Never move a time back (two flushes racing through the queue).
                let current = t.last_used.get(id)?.map(|v| v.value()).unwrap_or(0);
                if at > current {
                    t.last_used.insert(id, at)?;
                }
            }
        }
        WriteOp::Audit(a) => {
            t.audit.insert(a.seq, row(&mut t.buf, a)?)?;
            t.next_audit = t.next_audit.max(a.seq + 1);
        }
        WriteOp::PutByok(b) => {
            t.byok.insert((b.account_id, b.provider.as_str()), row(&mut t.buf, b)?)?;
        }
        WriteOp::DeleteByok { account_id, provider } => {
            t.byok.remove((*account_id, provider.as_str()))?;
        }
        WriteOp::Atomic(ops) => {
            for op in ops {
                apply_one(t, op)?;
            }
        }
    }
    Ok(())
}

/// `value` encoded for its table, in the batch's scratch buffer.
fn row<'b, T: Row>(buf: &'b mut Vec<u8>, value: &T) -> Result<&'b [u8], StoreError> {
    encode_into(value, buf)?;
    Ok(buf.as_slice())
}

/// Stores a generation and adds it to its usage rollup, in the caller's transaction. A record
/// written again under the same id (never done today) replaces its old contribution, so the
/// rollups always equal the sum of the stored records.
fn put_generation(t: &mut Tables<'_>, g: &GenerationRecord) -> Result<(), StoreError> {
    let mut row = std::mem::take(&mut t.buf);
    encode_into(g, &mut row)?;
    let day = crate::limits::calendar::day_index(g.created_at);
    let body_id = Some(g.body_id.as_str()).filter(|_| needs_body_index(g));
    let result = put_generation_row(t, &g.id, &row, (g.account_id, day, g.key_id), &g.model, UsageRollup::of(g, 1), body_id);
    t.buf = row;
    result
}

/// [`put_generation`] of an encoded record: `rollup_key` is (account, UTC day, key), `rollup`
/// its contribution, `body_id` what the body-id index needs (see [`needs_body_index`]).
fn put_generation_row(
    t: &mut Tables<'_>,
    id: &str,
    row: &[u8],
    rollup_key: (u64, u64, u64),
    model: &str,
    rollup: UsageRollup,
    body_id: Option<&str>,
) -> Result<(), StoreError> {
    if let Some(old) = t.generations.insert(id, row)? {
        let old: GenerationRecord = decode(old.value(), "generation")?;
        t.rollups.add(&old, -1);
    }
    t.rollups.add_parts(rollup_key, model, rollup);
    if let Some(body_id) = body_id {
        t.by_body.insert(body_id, id)?;
    }
    Ok(())
}

/// Pending changes to usage-rollup rows: (account, UTC day, key, model) → delta.
///
/// Keyed in two levels so that adding a generation to a row already pending (nearly every
/// settle of a batch) neither copies the model's name nor hashes it: a batch holds few
/// distinct models per (account, day, key), found by comparing names in place.
#[derive(Default)]
pub(super) struct RollupDeltas(crate::FastMap<(u64, u64, u64), Vec<(String, UsageRollup)>>);

impl RollupDeltas {
    /// Adds (`sign` 1) or takes out (−1) one generation.
    pub(super) fn add(&mut self, g: &GenerationRecord, sign: i64) {
        let day = crate::limits::calendar::day_index(g.created_at);
        self.add_parts((g.account_id, day, g.key_id), &g.model, UsageRollup::of(g, sign));
    }

    /// Adds `delta` to the row of (account, day, key) and `model`.
    pub(super) fn add_parts(&mut self, key: (u64, u64, u64), model: &str, delta: UsageRollup) {
        let models = self.0.entry(key).or_default();
        match models.iter_mut().find(|(m, _)| m == model) {
            Some((_, row)) => row.add(&delta),
            None => models.push((model.to_string(), delta)),
        }
    }

    /// Adds every delta to its stored row.
    pub(super) fn write(self, usage: &mut redb::Table<'_, (u64, u64, u64, &'static str), &'static [u8]>) -> Result<(), StoreError> {
        for ((account, day, key), models) in self.0 {
            for (model, delta) in models {
                let k = (account, day, key, model.as_str());
                let mut sum: UsageRollup = match usage.get(k)? {
                    Some(v) => decode(v.value(), "usage rollup")?,
                    None => UsageRollup::default(),
                };
                sum.add(&delta);
                usage.insert(k, encode(&sum)?.as_slice())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::{AttemptRecord, LedgerKind};
    use crate::store::tests::{account, entry, generation};
    use crate::store::{test_dir, Store};

    /// The charges and records one store gets as records and the other as encoded rows.
    fn settlements() -> Vec<(Option<LedgerEntry>, GenerationRecord)> {
        let billed = generation("gen-1-aaaaaaaaaaaa", "chatcmpl-gen-1-aaaaaaaaaaaa", 1, 700);
        let mut failed = generation("gen-2-bbbbbbbbbbbb", "", 1, 0);
        failed.status = 502;
        failed.error = Some("provider answered 500".into());
        failed.attempt_log = vec![AttemptRecord {
            model: "gpt-test".into(),
            provider: "mock".into(),
            upstream_model: "gpt-upstream".into(),
            status: 500,
            latency_ms: 3,
            error: Some("provider answered 500".into()),
        }];
        // A provider's body id: found through the body-id index.
        let mut provider_id = generation("gen-3-cccccccccccc", "chatcmpl-provider-xyz", 1, 300);
        provider_id.model = "other-model".into();
        provider_id.upstream_id = "chatcmpl-provider-xyz".into();
        // Written again under an existing id: replaces the first one's rollup contribution.
        let again = generation("gen-1-aaaaaaaaaaaa", "chatcmpl-gen-1-aaaaaaaaaaaa", 1, 900);
        let charge = |seq, g: &GenerationRecord| Some(entry(seq, 1, -g.total_cost_nano, LedgerKind::Charge, Some(&g.id)));
        vec![
            (charge(1, &billed), billed),
            (None, failed),
            (charge(2, &provider_id), provider_id),
            (charge(3, &again), again),
        ]
    }

    /// What a store holds: the export (ledger, generations, balances) and the rollups.
    fn contents(store: &Store) -> (Vec<String>, Vec<(u64, u64, String, UsageRollup)>) {
        let mut out = Vec::new();
        store.export_jsonl(None, &mut out).unwrap();
        // The summary line carries the export's own time.
        let lines = String::from_utf8(out).unwrap().lines().filter(|l| !l.contains(r#""type":"summary""#)).map(String::from).collect();
        (lines, store.usage_rollups(1, 0, u64::MAX / 2).unwrap())
    }

    #[test]
    fn encoded_settlements_store_what_records_do() {
        let (as_records, as_rows) = (test_dir("writer-records"), test_dir("writer-rows"));
        let stores = [Store::open(&as_records).unwrap(), Store::open(&as_rows).unwrap()];
        // One set (their times included) for both stores.
        let (settled, holder) = (settlements(), account(1));
        for (i, store) in stores.iter().enumerate() {
            let writer = store.start_writer();
            writer.submit_durable_blocking(WriteOp::InsertAccount(holder.clone())).unwrap();
            for (charge, generation) in settled.clone() {
                let op = match (i, charge) {
                    (0, Some(charge)) => WriteOp::Settle { charge, generation },
                    (0, None) => WriteOp::RecordGeneration(generation),
                    (_, charge) => {
                        let op = WriteOp::settled(charge, generation);
                        assert!(matches!(op, WriteOp::Settled(_)), "{}", op.describe());
                        op
                    }
                };
                writer.submit(op);
            }
            writer.shutdown();
        }
        let [records, rows] = [contents(&stores[0]), contents(&stores[1])];
        assert_eq!(records, rows);
        let (lines, rollups) = rows;
        assert_eq!(lines.iter().filter(|l| l.contains(r#""type":"generation""#)).count(), 3, "{lines:#?}");
        assert_eq!(lines.iter().filter(|l| l.contains(r#""type":"ledger""#)).count(), 3, "{lines:#?}");
        // gen-1 counted once (900, not 700 + 900), gen-2 as a failure, gen-3 under its model.
        let sums: Vec<(String, i64, i64, i64)> = rollups.into_iter().map(|(_, _, m, r)| (m, r.requests, r.failed, r.cost_nano)).collect();
        assert_eq!(sums, [("gpt-test".to_string(), 2, 1, 900), ("other-model".to_string(), 1, 0, 300)]);
        drop(stores);
        for dir in [as_records, as_rows] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn encoded_settlements_find_their_generation_by_body_id() {
        let dir = test_dir("writer-rows-body");
        let store = Store::open(&dir).unwrap();
        let writer = store.start_writer();
        for (charge, generation) in settlements() {
            writer.submit(WriteOp::settled(charge, generation));
        }
        writer.shutdown();
        for (lookup, id) in [
            ("chatcmpl-provider-xyz", "gen-3-cccccccccccc"),
            ("chatcmpl-gen-1-aaaaaaaaaaaa", "gen-1-aaaaaaaaaaaa"),
            ("gen-2-bbbbbbbbbbbb", "gen-2-bbbbbbbbbbbb"),
        ] {
            let found = store.get_generation(lookup).unwrap().unwrap_or_else(|| panic!("{lookup} not found"));
            assert_eq!(found.id, id);
        }
        assert_eq!(store.get_generation("gen-2-bbbbbbbbbbbb").unwrap().unwrap().attempt_log.len(), 1);
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn encoded_settlements_decode_to_their_records_for_the_journal() {
        for (charge, generation) in settlements() {
            let WriteOp::Settled(rows) = WriteOp::settled(charge.clone(), generation.clone()) else { panic!("not encoded") };
            assert_eq!(rows.decode().unwrap(), (charge, generation));
        }
    }
}
