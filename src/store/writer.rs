//! The one writer thread.
//!
//! redb allows one write transaction at a time and `begin_write` blocks, and an fsync'd commit
//! costs ~160 µs. So no request ever writes: ops go down a channel to a dedicated OS thread that
//! blocks for the first op, drains whatever else is queued (up to [`MAX_BATCH`]), applies it all
//! in ONE transaction and commits with `Durability::Immediate` (~2.6 µs per op at 100 per
//! commit). Only then are waiters completed, so "acknowledged" always means "on disk".

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use redb::{Database, Durability, ReadableTable, WriteTransaction};

use super::records::{AccountRecord, GenerationRecord, KeyRecord, LedgerEntry};
use super::tables::*;
use super::StoreError;

/// Most ops applied in one transaction; bounds commit latency under a flood.
pub const MAX_BATCH: usize = 512;

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
        }
    }
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
            .spawn(move || run(&db, rx, &thread_stats));
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
            thread: Mutex::new(thread),
            closed: AtomicBool::new(false),
            stats,
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
        rx.await
            .unwrap_or_else(|_| Err("store writer stopped".into()))
    }

    /// Commits everything submitted so far and joins the thread. Idempotent. Blocks the
    /// calling thread for up to one commit; call it outside async tasks or in `spawn_blocking`.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            // Everything sent before this message is ahead of it in the FIFO channel.
            let _ = self.tx.send(Msg::Shutdown);
            if handle.join().is_err() {
                log::error!("store: writer thread panicked");
            }
        }
    }

    fn send(&self, op: WriteOp, done: Option<Completion>) {
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
        if let Err(mpsc::SendError(msg)) = self.tx.send(Msg::Op(op, done)) {
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

impl Drop for StoreWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The thread body: block for one message, drain the queue, commit, repeat.
fn run(db: &Database, rx: mpsc::Receiver<Msg>, stats: &WriterStats) {
    let mut shutting_down = false;
    loop {
        let mut ops: Vec<(WriteOp, Option<Completion>)> = Vec::new();
        let mut flushes: Vec<Completion> = Vec::new();
        if !shutting_down {
            match rx.recv() {
                Ok(msg) => shutting_down |= sort(msg, &mut ops, &mut flushes),
                Err(_) => return, // every handle dropped: nothing more can arrive
            }
        }
        // Drain. Keep going after Shutdown too, so a submit that raced it is still written.
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(msg) => shutting_down |= sort(msg, &mut ops, &mut flushes),
                Err(_) => break,
            }
        }
        let batch_empty = ops.is_empty();
        let all_ok = write_batch(db, ops, stats);
        let flush_result = if all_ok {
            Ok(())
        } else {
            Err("some writes failed".to_string())
        };
        for done in flushes {
            done(flush_result.clone());
        }
        if shutting_down && batch_empty {
            return;
        }
    }
}

/// Files one message into the batch; returns true for Shutdown.
fn sort(
    msg: Msg,
    ops: &mut Vec<(WriteOp, Option<Completion>)>,
    flushes: &mut Vec<Completion>,
) -> bool {
    match msg {
        Msg::Op(op, done) => ops.push((op, done)),
        Msg::Flush(done) => flushes.push(done),
        Msg::Shutdown => return true,
    }
    false
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
fn commit(db: &Database, ops: &[WriteOp]) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    apply(&txn, ops)?;
    txn.commit()?;
    Ok(())
}

fn apply(txn: &WriteTransaction, ops: &[WriteOp]) -> Result<(), StoreError> {
    let mut accounts = txn.open_table(ACCOUNTS)?;
    let mut keys = txn.open_table(KEYS)?;
    let mut ledger = txn.open_table(LEDGER)?;
    let mut generations = txn.open_table(GENERATIONS)?;
    let mut by_body = txn.open_table(GENERATION_BY_BODY)?;
    let mut meta = txn.open_table(META)?;

    // High-water marks for the id counters, raised once per batch.
    let (mut next_account, mut next_key, mut next_seq) = (0u64, 0u64, 0u64);
    let mut put_generation = |g: &GenerationRecord| -> Result<(), StoreError> {
        generations.insert(g.id.as_str(), encode(g)?.as_slice())?;
        if !g.body_id.is_empty() {
            by_body.insert(g.body_id.as_str(), g.id.as_str())?;
        }
        Ok(())
    };
    for op in ops {
        match op {
            WriteOp::InsertAccount(a) => {
                accounts.insert(a.id, encode(a)?.as_slice())?;
                next_account = next_account.max(a.id + 1);
            }
            WriteOp::PutKey(k) => {
                keys.insert(k.id, encode(k)?.as_slice())?;
                next_key = next_key.max(k.id + 1);
            }
            WriteOp::Grant(entry) => {
                ledger.insert(entry.seq, encode(entry)?.as_slice())?;
                next_seq = next_seq.max(entry.seq + 1);
            }
            WriteOp::Settle { charge, generation } => {
                ledger.insert(charge.seq, encode(charge)?.as_slice())?;
                next_seq = next_seq.max(charge.seq + 1);
                put_generation(generation)?;
            }
            WriteOp::RecordGeneration(generation) => put_generation(generation)?,
        }
    }
    for (name, mark) in [
        (META_NEXT_ACCOUNT, next_account),
        (META_NEXT_KEY, next_key),
        (META_NEXT_LEDGER, next_seq),
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
