//! In-memory balances, reservations and settlement.
//!
//! A request reserves its worst-case cost before going upstream and settles the exact cost
//! afterwards, under a per-account mutex, so concurrent requests cannot take an account below
//! −overdraft (as long as the exact cost stays within the reservation). Settled charges are
//! handed to the store writer without waiting (group commit); grants wait for their fsync
//! before they change the in-memory balance. After a crash the balance is re-derived from the
//! ledger on disk, so the two can never disagree — at worst a few charges committed nowhere.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::money::Nano;
use crate::store::{
    now_millis, GenerationRecord, IdCounters, LedgerEntry, LedgerKind, LoadedState, StoreWriter,
    WriteOp,
};

/// One account's money, in nano-USD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountBalance {
    /// Settled balance: grants minus charges (= the sum of the ledger, once committed).
    pub balance: Nano,
    /// Held by in-flight requests.
    pub reserved: Nano,
    /// Sum of charges (positive), for `/credits`.
    pub total_usage: Nano,
}

impl AccountBalance {
    /// `/credits`: total_credits = grants = balance + usage.
    pub fn total_credits(&self) -> Nano {
        self.balance.saturating_add(self.total_usage)
    }

    /// What a new reservation may still take before reaching zero (ignoring overdraft).
    pub fn available(&self) -> Nano {
        self.balance.saturating_sub(self.reserved)
    }
}

type Slot = Arc<Mutex<AccountBalance>>;

/// The plain integers inside cannot be left half-updated, so a poisoned lock is still usable.
fn lock(slot: &Slot) -> MutexGuard<'_, AccountBalance> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReserveError {
    /// balance − reserved − amount would fall below −overdraft.
    InsufficientBalance,
    UnknownAccount,
}

impl fmt::Display for ReserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReserveError::InsufficientBalance => f.write_str("insufficient balance"),
            ReserveError::UnknownAccount => f.write_str("unknown account"),
        }
    }
}

impl std::error::Error for ReserveError {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantError {
    UnknownAccount,
    /// A zero grant would only add noise to the ledger.
    ZeroAmount,
    /// Not committed; the balance is unchanged.
    Store(String),
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantError::UnknownAccount => f.write_str("unknown account"),
            GrantError::ZeroAmount => f.write_str("grant amount must not be zero"),
            GrantError::Store(e) => write!(f, "grant not recorded: {e}"),
        }
    }
}

impl std::error::Error for GrantError {}

/// Money held for one in-flight request. Consumed by [`Ledger::settle`] or
/// [`Ledger::release`]; if simply dropped (request aborted, task cancelled, panic), it releases
/// itself, so reserved money never leaks.
#[derive(Debug)]
pub struct Reservation {
    account_id: u64,
    amount: Nano,
    /// None once settled or released.
    slot: Option<Slot>,
}

impl Reservation {
    pub fn account_id(&self) -> u64 {
        self.account_id
    }

    /// The amount held (the worst-case cost).
    pub fn amount(&self) -> Nano {
        self.amount
    }

    /// Removes the hold and, under the same lock, applies `then` (e.g. the charge).
    fn finish<R>(&mut self, then: impl FnOnce(&mut AccountBalance) -> R) -> Option<R> {
        let slot = self.slot.take()?;
        let mut b = lock(&slot);
        b.reserved -= self.amount;
        Some(then(&mut b))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.finish(|_| ());
    }
}

/// All accounts' balances, shared by every request.
pub struct Ledger {
    accounts: RwLock<crate::FastMap<u64, Slot>>,
    writer: Arc<StoreWriter>,
    ids: Arc<IdCounters>,
}

impl Ledger {
    /// Balances from the loaded ledger sums; new entries get seqs from `ids`.
    pub fn new(state: &LoadedState, writer: Arc<StoreWriter>, ids: Arc<IdCounters>) -> Ledger {
        let accounts = state
            .balances
            .iter()
            .map(|(&id, &balance)| {
                let total_usage = state.usage.get(&id).copied().unwrap_or(0);
                let b = AccountBalance {
                    balance,
                    reserved: 0,
                    total_usage,
                };
                (id, Arc::new(Mutex::new(b)))
            })
            .collect();
        Ledger {
            accounts: RwLock::new(accounts),
            writer,
            ids,
        }
    }

    /// Registers a new account with a zero balance (idempotent). Call it before the account
    /// record's durable insert is acknowledged, so the account is never usable on disk but
    /// unknown here.
    pub fn add_account(&self, account_id: u64) {
        let mut map = self.accounts.write().unwrap_or_else(|p| p.into_inner());
        map.entry(account_id).or_default();
    }

    fn slot(&self, account_id: u64) -> Option<Slot> {
        let map = self.accounts.read().unwrap_or_else(|p| p.into_inner());
        map.get(&account_id).cloned()
    }

    /// Holds `amount` (negative counts as 0) if balance − reserved − amount ≥ −overdraft.
    pub fn reserve(
        &self,
        account_id: u64,
        amount: Nano,
        overdraft: Nano,
    ) -> Result<Reservation, ReserveError> {
        let slot = self.slot(account_id).ok_or(ReserveError::UnknownAccount)?;
        let amount = amount.max(0);
        {
            let mut b = lock(&slot);
            // i128: no overflow whatever the inputs.
            let after = b.balance as i128 - b.reserved as i128 - amount as i128;
            if after < -(overdraft.max(0) as i128) {
                return Err(ReserveError::InsufficientBalance);
            }
            b.reserved += amount;
        }
        Ok(Reservation {
            account_id,
            amount,
            slot: Some(slot),
        })
    }

    /// Ends a successful request: releases the hold, charges `cost` (exact, from provider usage;
    /// negative counts as 0) and queues the charge and `generation` for one transaction without
    /// waiting. Fills in `generation.account_id` and `total_cost_nano`. Returns the new balance.
    ///
    /// The exact cost is charged even if it exceeds the reservation (a provider that ignored
    /// max_tokens); that is the one way a balance can end below −overdraft.
    pub fn settle(
        &self,
        mut reservation: Reservation,
        cost: Nano,
        mut generation: GenerationRecord,
    ) -> Nano {
        let cost = cost.max(0);
        let account_id = reservation.account_id;
        let balance = reservation
            .finish(|b| {
                b.balance = b.balance.saturating_sub(cost);
                b.total_usage = b.total_usage.saturating_add(cost);
                b.balance
            })
            .unwrap_or(0); // unreachable: a Reservation is only finished once, here or in Drop
        generation.account_id = account_id;
        generation.total_cost_nano = cost;
        if cost == 0 {
            // Nothing owed: keep zero-amount rows out of the ledger.
            self.writer.submit(WriteOp::settled(None, generation));
        } else {
            let charge = LedgerEntry {
                seq: self.ids.next_ledger_seq(),
                account_id,
                amount_nano: -cost,
                kind: LedgerKind::Charge,
                generation_id: Some(generation.id.clone()),
                note: None,
                at: now_millis(),
            };
            self.writer.submit(WriteOp::settled(Some(charge), generation));
        }
        balance
    }

    /// Ends a failed request: releases the hold, charges nothing. (Same as dropping it.)
    pub fn release(&self, reservation: Reservation) {
        drop(reservation);
    }

    /// Records an unbilled (failed) request for `/generation`, without waiting.
    pub fn record_unbilled(&self, generation: GenerationRecord) {
        self.writer.submit(WriteOp::settled(None, generation));
    }

    /// Adds credit (a negative amount is an admin correction). The ledger entry is committed
    /// with an fsync first; only then does the in-memory balance change and the new balance
    /// come back. The balance update runs on the writer thread right after the commit, so it
    /// happens even if this future is dropped while waiting.
    pub async fn grant(
        &self,
        account_id: u64,
        amount: Nano,
        note: Option<String>,
    ) -> Result<Nano, GrantError> {
        self.grant_audited(account_id, amount, note, None).await
    }

    /// [`grant`](Self::grant), with an audit entry committed in the same transaction.
    pub async fn grant_audited(
        &self,
        account_id: u64,
        amount: Nano,
        note: Option<String>,
        audit: Option<crate::store::AuditEntry>,
    ) -> Result<Nano, GrantError> {
        if amount == 0 {
            return Err(GrantError::ZeroAmount);
        }
        let slot = self.slot(account_id).ok_or(GrantError::UnknownAccount)?;
        let entry = LedgerEntry {
            seq: self.ids.next_ledger_seq(),
            account_id,
            amount_nano: amount,
            kind: LedgerKind::Grant,
            generation_id: None,
            note,
            at: now_millis(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let apply = move |committed: Result<(), String>| {
            let result = committed.map(|()| {
                let mut b = lock(&slot);
                b.balance = b.balance.saturating_add(amount);
                b.balance
            });
            let _ = tx.send(result);
        };
        let op = match audit {
            Some(audit) => WriteOp::Atomic(vec![WriteOp::Grant(entry), WriteOp::Audit(audit)]),
            None => WriteOp::Grant(entry),
        };
        self.writer.submit_with(op, Box::new(apply));
        match rx.await {
            Ok(result) => result.map_err(GrantError::Store),
            Err(_) => Err(GrantError::Store("store writer stopped".into())),
        }
    }

    // ---- Graceful upgrade (`store::handoff`, `crate::upgrade`).

    /// Every account's money held by requests in flight, for the handoff journal.
    pub fn holds(&self) -> Vec<(u64, Nano)> {
        let map = self.accounts.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(u64, Nano)> = map
            .iter()
            .filter_map(|(&id, slot)| Some((id, lock(slot).reserved)).filter(|&(_, r)| r != 0))
            .collect();
        out.sort_unstable();
        out
    }

    /// A charge settled by the previous process (read from its handoff journal), once it is
    /// committed here: the balance and usage follow the ledger on disk.
    pub fn apply_imported_charge(&self, account_id: u64, cost: Nano) {
        if let Some(slot) = self.slot(account_id) {
            let mut b = lock(&slot);
            b.balance = b.balance.saturating_sub(cost.max(0));
            b.total_usage = b.total_usage.saturating_add(cost.max(0));
        }
    }

    /// Counts (or, negative, stops counting) money the previous process still holds for its
    /// requests in flight, so this one cannot lend it out again.
    pub fn adjust_reserved(&self, account_id: u64, delta: Nano) {
        if let Some(slot) = self.slot(account_id) {
            lock(&slot).reserved += delta;
        }
    }

    /// (settled balance, reserved) for an account.
    pub fn snapshot(&self, account_id: u64) -> Option<(Nano, Nano)> {
        self.account(account_id).map(|b| (b.balance, b.reserved))
    }

    /// A copy of an account's figures (for `/credits`).
    pub fn account(&self, account_id: u64) -> Option<AccountBalance> {
        self.slot(account_id).map(|slot| *lock(&slot))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::Barrier;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::tests::{account, generation};
    use crate::store::{new_generation_id, test_dir, Store};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        rt.expect("runtime").block_on(f)
    }

    /// A store in `dir` with accounts `1..=accounts` (created durably) and a ledger over it.
    fn open(dir: &Path, accounts: u64) -> (Store, Arc<StoreWriter>, Ledger) {
        let store = Store::open(dir).expect("open");
        let state = store.load_state().expect("load");
        let ids = Arc::new(IdCounters::from_state(&state));
        let writer = Arc::new(store.start_writer());
        let ledger = Ledger::new(&state, writer.clone(), ids);
        for id in 1..=accounts {
            if ledger.account(id).is_none() {
                ledger.add_account(id);
                writer
                    .submit_durable_blocking(WriteOp::InsertAccount(account(id)))
                    .expect("durable");
            }
        }
        (store, writer, ledger)
    }

    fn cleanup(dir: PathBuf) {
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_balance() {
        let dir = test_dir("reserve");
        let (_store, _writer, ledger) = open(&dir, 1);
        assert_eq!(block_on(ledger.grant(1, 10_000, None)), Ok(10_000));
        let ledger = Arc::new(ledger);

        for (overdraft, expected) in [(0, 10), (2_500, 12)] {
            let barrier = Arc::new(Barrier::new(100));
            let threads: Vec<_> = (0..100)
                .map(|_| {
                    let (ledger, barrier) = (ledger.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let held = ledger.reserve(1, 1_000, overdraft);
                        barrier.wait(); // all reservations are held at once here
                        held.is_ok()
                    })
                })
                .collect();
            let admitted = threads
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .filter(|ok| *ok)
                .count();
            assert_eq!(admitted, expected, "overdraft {overdraft}");
            assert_eq!(
                ledger.snapshot(1),
                Some((10_000, 0)),
                "threads ended: all released"
            );
        }
        cleanup(dir);
    }

    #[test]
    fn reservations_release_on_drop_and_release() {
        let dir = test_dir("drop");
        let (_store, _writer, ledger) = open(&dir, 1);
        block_on(ledger.grant(1, 100, None)).expect("grant");

        let r = ledger.reserve(1, 60, 0).expect("fits");
        assert_eq!((r.account_id(), r.amount()), (1, 60));
        assert_eq!(ledger.snapshot(1), Some((100, 60)));
        assert_eq!(
            ledger.reserve(1, 41, 0).err(),
            Some(ReserveError::InsufficientBalance)
        );
        drop(r); // an aborted request
        assert_eq!(ledger.snapshot(1), Some((100, 0)));

        let r = ledger.reserve(1, 100, 0).expect("fits exactly");
        ledger.release(r);
        assert_eq!(ledger.snapshot(1), Some((100, 0)));

        // Negative amounts reserve nothing; unknown accounts are refused.
        let r = ledger.reserve(1, -5, 0).expect("zero hold");
        assert_eq!(ledger.snapshot(1), Some((100, 0)));
        drop(r);
        assert_eq!(
            ledger.reserve(9, 1, 0).err(),
            Some(ReserveError::UnknownAccount)
        );
        cleanup(dir);
    }

    #[test]
    fn settle_charges_exactly_and_persists_with_its_generation() {
        let dir = test_dir("settle");
        {
            let (store, writer, ledger) = open(&dir, 2);
            assert_eq!(
                block_on(ledger.grant(1, 1_000, Some("welcome".into()))),
                Ok(1_000)
            );

            let r = ledger.reserve(1, 500, 0).expect("fits");
            let balance = ledger.settle(r, 123, generation("gen-1", "chatcmpl-1", 0, 0));
            assert_eq!(balance, 877);
            let b = ledger.account(1).expect("known");
            assert_eq!(
                (b.balance, b.reserved, b.total_usage, b.total_credits()),
                (877, 0, 123, 1_000)
            );

            // A zero-cost success records the generation but no ledger row.
            let r = ledger.reserve(1, 500, 0).expect("fits");
            ledger.settle(r, 0, generation("gen-2", "", 1, 0));
            // A failure: released, recorded unbilled.
            let r = ledger.reserve(1, 500, 0).expect("fits");
            ledger.release(r);
            ledger.record_unbilled(generation("gen-3", "", 1, 0));
            // Cost above the reservation is still charged in full.
            let r = ledger.reserve(1, 10, 0).expect("fits");
            assert_eq!(ledger.settle(r, 900, generation("gen-4", "", 1, 0)), -23);

            writer.shutdown();
            let g = store
                .get_generation("chatcmpl-1")
                .expect("read")
                .expect("stored");
            assert_eq!(
                (g.id.as_str(), g.account_id, g.total_cost_nano),
                ("gen-1", 1, 123)
            );
            assert!(store.get_generation("gen-2").expect("read").is_some());
            assert!(store.get_generation("gen-3").expect("read").is_some());
            let entries = store.ledger_entries(1, 100).expect("read");
            let amounts: Vec<i64> = entries.iter().rev().map(|e| e.amount_nano).collect();
            assert_eq!(amounts, vec![1_000, -123, -900]);
            assert_eq!(entries[2].note.as_deref(), Some("welcome"));
            assert_eq!(entries[1].generation_id.as_deref(), Some("gen-1"));

            // After shutdown nothing can be made durable, so a grant fails and changes nothing.
            assert!(matches!(
                block_on(ledger.grant(1, 5, None)),
                Err(GrantError::Store(_))
            ));
            assert_eq!(ledger.snapshot(1), Some((-23, 0)));
        }
        // Reloaded balances equal the in-memory ones.
        let (_store, _writer, ledger) = open(&dir, 2);
        let b = ledger.account(1).expect("known");
        assert_eq!(
            (b.balance, b.total_usage, b.total_credits()),
            (-23, 1_023, 1_000)
        );
        assert_eq!(ledger.snapshot(2), Some((0, 0)));
        cleanup(dir);
    }

    #[test]
    fn grant_checks_its_input() {
        let dir = test_dir("grant");
        let (_store, _writer, ledger) = open(&dir, 1);
        assert_eq!(
            block_on(ledger.grant(2, 5, None)),
            Err(GrantError::UnknownAccount)
        );
        assert_eq!(
            block_on(ledger.grant(1, 0, None)),
            Err(GrantError::ZeroAmount)
        );
        assert_eq!(block_on(ledger.grant(1, 50, None)), Ok(50));
        assert_eq!(
            block_on(ledger.grant(1, -20, Some("correction".into()))),
            Ok(30)
        );
        cleanup(dir);
    }

    const CRASH_DIR_ENV: &str = "TOLLGATE_TEST_CRASH_DIR";
    const ACCOUNTS: u64 = 4;

    /// Run by [`kill_9_keeps_balances_equal_to_the_ledger`] in a child process: grants durably,
    /// logging each acknowledged grant's new balance to a file, while four threads settle
    /// charges, until it is killed (or 60 s pass).
    #[test]
    #[ignore = "child process of kill_9_keeps_balances_equal_to_the_ledger"]
    fn crash_child() {
        let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
            return;
        };
        let dir = PathBuf::from(dir);
        let (_store, _writer, ledger) = open(&dir, ACCOUNTS);
        let ledger = Arc::new(ledger);
        for id in 1..=ACCOUNTS {
            block_on(ledger.grant(id, 1_000_000_000_000, None)).expect("grant");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for id in 1..=ACCOUNTS {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    if let Ok(r) = ledger.reserve(id, 1_000, 0) {
                        let gen_id = new_generation_id();
                        ledger.settle(
                            r,
                            1 + (n % 997) as i64,
                            generation(&gen_id, &format!("body-{gen_id}"), id, 0),
                        );
                    }
                    // A paced stream: an unpaced flood would only grow the writer's queue (and
                    // a debug build's writer manages some 10k ops/s).
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
        // The file is not fsync'd: a killed process's writes still reach the page cache.
        let mut acks = std::fs::File::create(dir.join("acked-grants")).expect("ack file");
        let mut n = 0u64;
        while Instant::now() < deadline {
            n += 1;
            let id = 1 + n % ACCOUNTS;
            if block_on(ledger.grant(id, 7, None)).is_ok() {
                writeln!(acks, "{id}").expect("ack");
            }
        }
    }

    /// kill -9 in the middle of a stream of settlements and grants: the file must reopen,
    /// every charge must have its generation (same transaction), every acknowledged grant must
    /// be there, and the loaded balance must equal grants − charges.
    #[test]
    fn kill_9_keeps_balances_equal_to_the_ledger() {
        let dir = test_dir("kill9");
        let exe = std::env::current_exe().expect("test binary");
        let child = std::process::Command::new(exe)
            .args([
                "billing::ledger::tests::crash_child",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn child");
        // Kill the child even if an assertion below fails.
        struct KillOnDrop(std::process::Child);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                let _ = self.0.kill(); // SIGKILL on Unix
                let _ = self.0.wait();
            }
        }
        let child = KillOnDrop(child);
        let acks = dir.join("acked-grants");
        let waited = Instant::now();
        while std::fs::metadata(&acks)
            .map(|m| m.len() < 40)
            .unwrap_or(true)
        {
            assert!(
                waited.elapsed() < Duration::from_secs(60),
                "child made no progress"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        drop(child); // kill -9, mid-stream

        let store = Store::open(&dir).expect("reopens after kill -9");
        let state = store.load_state().expect("load");
        let generations: std::collections::HashMap<String, GenerationRecord> = store
            .all_generations()
            .expect("read")
            .into_iter()
            .map(|g| (g.id.clone(), g))
            .collect();
        let acked = std::fs::read_to_string(&acks).expect("acks");
        let mut charges = 0;
        for id in 1..=ACCOUNTS {
            let entries = store.ledger_entries(id, usize::MAX).expect("read");
            let (mut granted, mut charged) = (0i64, 0i64);
            for e in &entries {
                match e.kind {
                    LedgerKind::Grant => granted += e.amount_nano,
                    LedgerKind::Charge => {
                        charged -= e.amount_nano;
                        charges += 1;
                        let gen_id = e.generation_id.as_deref().unwrap_or("");
                        let g = generations
                            .get(gen_id)
                            .expect("every charge has its generation");
                        assert_eq!((g.account_id, g.total_cost_nano), (id, -e.amount_nano));
                    }
                }
            }
            assert_eq!(
                state.balances.get(&id),
                Some(&(granted - charged)),
                "account {id}"
            );
            assert_eq!(state.usage.get(&id), Some(&charged));
            // The usage rollups were written in the same transactions: they agree too.
            let rolled: i64 = store
                .usage_rollups(id, 0, u64::MAX / 2)
                .expect("read")
                .iter()
                .map(|r| r.3.cost_nano)
                .sum();
            assert_eq!(rolled, charged, "rollups of account {id}");
            let acked_grants = acked.lines().filter(|l| *l == id.to_string()).count() as i64;
            assert!(
                granted >= 1_000_000_000_000 + 7 * acked_grants,
                "acknowledged grants survive"
            );
        }
        // And every billed generation has its charge.
        let billed = generations
            .values()
            .filter(|g| g.total_cost_nano > 0)
            .count();
        assert_eq!(billed, charges);
        assert!(charges > 0, "the child settled something before it died");
        eprintln!(
            "kill -9 test: {charges} charges and {} generations survived",
            generations.len()
        );

        // The reopened store takes writes, with ids past everything already used.
        let ids = IdCounters::from_state(&state);
        let seq = ids.next_ledger_seq();
        assert!(store
            .ledger_entries(1, 1)
            .expect("read")
            .iter()
            .all(|e| e.seq < seq));
        let writer = store.start_writer();
        writer
            .submit_durable_blocking(WriteOp::InsertAccount(account(ids.next_account_id())))
            .expect("writable after recovery");
        drop(writer);
        drop(store);
        cleanup(dir);
    }
}
