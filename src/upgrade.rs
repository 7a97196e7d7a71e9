//! Graceful upgrade, new process side: applying the handoff journals of earlier processes.
//!
//! See `store::handoff` for the journal and `docs/upgrades.md` for the whole procedure. At
//! startup every journal in the data dir is applied before the first request is served, so
//! balances are exact from the start (a journal left by a crash included). A journal whose
//! writer still runs (the old process of an upgrade, settling its last streams) is then
//! tailed by a background thread: its charges are committed here and reach the in-memory
//! balances as they arrive, its outstanding holds are counted as reserved, and it is deleted
//! once its writer has finished or died and every line is applied.

use crate::app::App;
use crate::billing::money::Nano;
use crate::store::handoff::{self, JournalFile, JournalLine, JournalOp, Tail};
use crate::store::{now_secs, StoreError, WriteOp};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often a live journal is read.
const TAIL_INTERVAL: Duration = Duration::from_millis(20);

/// A journal being applied.
pub struct Pending {
    file: JournalFile,
    tail: Tail,
    /// What its writer holds per account, as counted in this process's `reserved`.
    holds: HashMap<u64, Nano>,
    /// Something failed to apply: keep the file for the next start.
    failed: bool,
    applied: usize,
}

/// Applies everything every journal holds now. Returns the journals whose writer still runs.
pub fn import_now(app: &App) -> Vec<Pending> {
    let dir = app.config.pin().server.data_dir.clone();
    let mut live = Vec::new();
    for file in handoff::find_journals(&dir) {
        let tail = match Tail::open(&file.path) {
            Ok(t) => t,
            Err(e) => {
                log::error!("upgrade: {e}");
                continue;
            }
        };
        log::info!("upgrade: applying handoff journal {} (process {})", file.path.display(), file.pid);
        let mut p = Pending { file, tail, holds: HashMap::new(), failed: false, applied: 0 };
        if !step(app, &mut p) {
            live.push(p);
        }
    }
    live
}

/// Tails the journals of processes still running until each is finished, on its own thread.
pub fn spawn_tailer(app: Arc<App>, mut pending: Vec<Pending>) {
    if pending.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new().name("tollgate-handoff".into()).spawn(move || {
        while !pending.is_empty() {
            if app.handed_off() {
                // This process is being upgraded in turn: the next one takes over these files.
                for p in &mut pending {
                    release_holds(&app, p);
                }
                return;
            }
            pending.retain_mut(|p| !step(&app, p));
            std::thread::sleep(TAIL_INTERVAL);
        }
    });
    if let Err(e) = spawned {
        log::error!("upgrade: cannot start the journal tailer: {e}");
    }
}

/// Applies the new lines of one journal; true once it is finished (and removed, if all went
/// well).
fn step(app: &App, p: &mut Pending) -> bool {
    // Liveness before reading: a writer found dead has written its last line already.
    let alive = p.file.pid != std::process::id() && handoff::writer_alive(p.file.pid);
    let lines = match p.tail.read() {
        Ok(lines) => lines,
        Err(e) => {
            log::error!("upgrade: reading {}: {e}", p.file.path.display());
            p.failed = true;
            Vec::new()
        }
    };
    for line in lines {
        match apply_line(app, line, &mut p.holds) {
            Ok(n) => p.applied += n,
            Err(e) => {
                log::error!("upgrade: applying {}: {e}", p.file.path.display());
                p.failed = true;
            }
        }
    }
    if !(p.tail.ended || !alive || p.failed) {
        return false;
    }
    if !p.tail.ended && p.tail.torn_bytes() > 0 {
        log::warn!(
            "upgrade: {} ends with an incomplete record ({} bytes, its writer died while writing it); ignored",
            p.file.path.display(),
            p.tail.torn_bytes()
        );
    }
    release_holds(app, p);
    if p.failed {
        log::error!("upgrade: {} kept; it is applied again at the next start", p.file.path.display());
    } else {
        match std::fs::remove_file(&p.file.path) {
            Ok(()) => log::info!(
                "upgrade: handoff journal of process {} applied ({} records) and removed",
                p.file.pid,
                p.applied
            ),
            Err(e) => log::error!("upgrade: cannot remove {}: {e}", p.file.path.display()),
        }
    }
    true
}

fn release_holds(app: &App, p: &mut Pending) {
    for (account, held) in p.holds.drain() {
        app.ledger.adjust_reserved(account, -held);
    }
}

/// Commits one journal line here (skipping generations already stored), then applies its
/// charges and holds in memory. Returns the number of records written.
fn apply_line(app: &App, line: JournalLine, holds: &mut HashMap<u64, Nano>) -> Result<usize, StoreError> {
    let mut ops = Vec::with_capacity(line.ops.len());
    let mut charges = Vec::new();
    for op in line.ops {
        match op {
            JournalOp::Settle { mut charge, generation } => {
                if app.store.has_generation(&generation.id)? {
                    continue;
                }
                // The old process's seq may be taken here by now.
                charge.seq = app.ids.next_ledger_seq();
                charges.push((charge.account_id, generation.key_id, -charge.amount_nano));
                ops.push(WriteOp::Settle { charge, generation });
            }
            JournalOp::Generation(g) => {
                if !app.store.has_generation(&g.id)? {
                    ops.push(WriteOp::RecordGeneration(g));
                }
            }
            JournalOp::Touch(keys) => {
                for &(id, at) in &keys {
                    if let Some(entry) = app.keys.get(id) {
                        entry.touch(at);
                    }
                }
                ops.push(WriteOp::TouchKeys(keys));
            }
        }
    }
    let n = ops.len();
    if !ops.is_empty() {
        app.writer.submit_durable_blocking(WriteOp::Atomic(ops)).map_err(StoreError)?;
        let now = now_secs();
        for (account, key, cost) in charges {
            app.ledger.apply_imported_charge(account, cost);
            // Spend caps count it too (a key whose cap is already reached stays blocked).
            if let Some(entry) = app.keys.get(key) {
                if let Ok(hold) = app.caps.reserve(&entry, 0, now) {
                    app.caps.settle(hold, cost, now);
                }
            }
            if let Ok(hold) = app.caps.reserve_account(account, None, 0, now) {
                app.caps.settle(hold, cost, now);
            }
        }
    }
    if let Some(now) = line.holds {
        let now: HashMap<u64, Nano> = now.into_iter().collect();
        for (&account, &held) in now.iter() {
            let before = holds.get(&account).copied().unwrap_or(0);
            app.ledger.adjust_reserved(account, held - before);
        }
        for (&account, &before) in holds.iter() {
            if !now.contains_key(&account) {
                app.ledger.adjust_reserved(account, -before);
            }
        }
        *holds = now;
    }
    Ok(n)
}
