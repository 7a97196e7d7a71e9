//! The store's side of a graceful upgrade: the handoff journal.
//!
//! redb holds an exclusive lock on its file, so during an upgrade only one process can have
//! the store open, yet the old process keeps settling the requests it still has in flight
//! (streams can last minutes). So at handoff the old process's writer commits everything
//! queued, lets go of the database (the new process opens it), and from then on appends what
//! its requests still produce — charges with their generation records, unbilled generation
//! records, keys' last-used times — to `<data_dir>/handoff-<pid>.jsonl`, one JSON line per
//! batch, fsync'd before the batch is acknowledged, exactly like a redb commit. Admin and
//! account changes are refused there instead (they answer 503 `upgrading`).
//!
//! The new process applies every journal it finds (after an upgrade, and at any startup, so a
//! journal left by a killed process is never lost), tails it while its writer lives, and
//! deletes it once the writer has finished (an `end` line) or died and every line is applied.
//! Applying is idempotent by generation id: a charge whose generation is already stored is
//! skipped, so a journal applied twice (the new process crashed half-way) charges once. Charges
//! get fresh ledger seqs from the process that applies them (the old process's seqs may be
//! taken by then).
//!
//! Each line also carries the old process's reservations still outstanding, per account
//! (`holds`), so the new process counts that money as held until the requests settle.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::records::{GenerationRecord, LedgerEntry};
use super::tables::GENERATIONS;
use super::writer::{Completion, WriteOp, WriterStats};
use super::{Store, StoreError};

/// What a read or write after the handoff fails with.
pub const CLOSED: &str = "the store was handed over to a new process (graceful upgrade)";

/// Journal file names: `handoff-<pid>.jsonl`.
const PREFIX: &str = "handoff-";
const SUFFIX: &str = ".jsonl";

/// An account's reservations outstanding in the old process: (account id, nano-USD).
pub type Holds = Vec<(u64, i64)>;

/// The reservations the old process holds now; called once per journal batch.
pub type HoldsFn = Box<dyn Fn() -> Holds + Send>;

/// One durable change in a journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalOp {
    /// A successful request's charge and its generation record (`WriteOp::Settle`).
    Settle { charge: LedgerEntry, generation: GenerationRecord },
    /// An unbilled request (`WriteOp::RecordGeneration`).
    Generation(GenerationRecord),
    /// Keys' last-used times (`WriteOp::TouchKeys`).
    Touch(Vec<(u64, u64)>),
}

/// One line of a journal: a batch of ops (all or nothing: a torn last line is ignored), the
/// writer's outstanding holds when it was written, or the end mark.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JournalLine {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<JournalOp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds: Option<Holds>,
    /// The writer finished: nothing follows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub end: bool,
}

/// `<dir>/handoff-<pid>.jsonl`.
pub fn journal_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("{PREFIX}{pid}{SUFFIX}"))
}

/// The ops a journal can carry; None for the ones it refuses (everything an operator or an
/// account does: those need the store's ids and answer 503 during an upgrade).
fn journal_ops(op: &WriteOp, out: &mut Vec<JournalOp>) -> Option<()> {
    match op {
        WriteOp::Settle { charge, generation } => {
            out.push(JournalOp::Settle { charge: charge.clone(), generation: generation.clone() })
        }
        WriteOp::RecordGeneration(g) => out.push(JournalOp::Generation(g.clone())),
        WriteOp::Settled(rows) => match rows.decode().ok()? {
            (Some(charge), generation) => out.push(JournalOp::Settle { charge, generation }),
            (None, generation) => out.push(JournalOp::Generation(generation)),
        },
        WriteOp::TouchKeys(keys) => out.push(JournalOp::Touch(keys.clone())),
        WriteOp::Atomic(ops) => {
            for op in ops {
                journal_ops(op, out)?;
            }
        }
        _ => return None,
    }
    Some(())
}

/// The writer's sink after the handoff: an append-only, fsync'd journal.
pub struct Journal {
    file: File,
    path: PathBuf,
    holds: HoldsFn,
    last_holds: Option<Holds>,
}

impl Journal {
    /// Creates this process's journal in `dir` (replacing a stale one of the same pid) and
    /// writes the holds outstanding now as its first line.
    pub fn create(dir: &Path, holds: HoldsFn) -> Result<Journal, StoreError> {
        let path = journal_path(dir, std::process::id());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| StoreError(format!("create {}: {e}", path.display())))?;
        // The file's directory entry must survive a crash too.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        let mut journal = Journal { file, path, holds, last_holds: None };
        let now = (journal.holds)();
        journal.append(&JournalLine { holds: Some(now.clone()), ..Default::default() })?;
        journal.last_holds = Some(now);
        Ok(journal)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&mut self, line: &JournalLine) -> Result<(), StoreError> {
        let mut bytes = serde_json::to_vec(line).map_err(|e| StoreError(format!("encode: {e}")))?;
        bytes.push(b'\n');
        self.file.write_all(&bytes)?;
        self.file.sync_data()?;
        Ok(())
    }

    /// Appends one batch as one line and fsyncs it, then completes every op's waiter; ops a
    /// journal cannot carry fail with [`CLOSED`]. Returns whether all succeeded.
    pub(super) fn write_batch(&mut self, ops: Vec<(WriteOp, Option<Completion>)>, stats: &WriterStats) -> bool {
        let mut line = JournalLine::default();
        let mut accepted = Vec::with_capacity(ops.len());
        let mut all_ok = true;
        for (op, done) in ops {
            let before = line.ops.len();
            if journal_ops(&op, &mut line.ops).is_some() {
                accepted.push((op, done));
            } else {
                line.ops.truncate(before);
                log::warn!("store: refused after the handoff: {}", op.describe());
                stats.failed.fetch_add(1, Ordering::Relaxed);
                all_ok = false;
                if let Some(done) = done {
                    done(Err(CLOSED.into()));
                }
            }
        }
        let holds = (self.holds)();
        if self.last_holds.as_ref() != Some(&holds) {
            line.holds = Some(holds.clone());
            self.last_holds = Some(holds);
        }
        if line.ops.is_empty() && line.holds.is_none() {
            return all_ok;
        }
        match self.append(&line) {
            Ok(()) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.committed.fetch_add(accepted.len() as u64, Ordering::Relaxed);
                accepted.into_iter().filter_map(|(_, d)| d).for_each(|done| done(Ok(())));
                all_ok
            }
            Err(e) => {
                for (op, done) in accepted {
                    log::error!("store: journal write failed ({e}), dropped: {}", op.describe());
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    if let Some(done) = done {
                        done(Err(e.to_string()));
                    }
                }
                false
            }
        }
    }

    /// Writes the end mark: the process applying the journal may delete it once applied.
    pub(super) fn finish(mut self) {
        match self.append(&JournalLine { holds: Some(Vec::new()), end: true, ..Default::default() }) {
            Ok(()) => log::info!("store: handoff journal {} complete", self.path.display()),
            Err(e) => log::error!("store: cannot end the handoff journal {}: {e}", self.path.display()),
        }
    }
}

/// A journal found in the data dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalFile {
    pub path: PathBuf,
    /// The process that writes (or wrote) it.
    pub pid: u32,
}

/// Every journal in `dir`, by pid (order does not matter for correctness: each charge is
/// applied once whatever the order). One with this process's own pid can only be stale (left
/// before a reboot): a process writes its journal after it last reads them.
pub fn find_journals(dir: &Path) -> Vec<JournalFile> {
    let mut out: Vec<JournalFile> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let pid = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?.parse().ok()?;
            Some(JournalFile { path: entry.path(), pid })
        })
        .collect();
    out.sort_by_key(|j| j.pid);
    out
}

/// Whether `pid` is a live (not zombie) tollgate process. Linux `/proc`; a pid reused by an
/// unrelated program after a reboot does not count.
pub fn writer_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("tollgate"))
        .unwrap_or(false)
}

/// Reads a journal as it grows: complete lines only, from where the last read stopped.
pub struct Tail {
    file: File,
    partial: Vec<u8>,
    /// The end mark was read.
    pub ended: bool,
}

impl Tail {
    pub fn open(path: &Path) -> Result<Tail, StoreError> {
        let file = File::open(path).map_err(|e| StoreError(format!("open {}: {e}", path.display())))?;
        Ok(Tail { file, partial: Vec::new(), ended: false })
    }

    /// The lines appended since the last call. A line that does not parse is logged and
    /// skipped (it cannot be a torn write: those have no newline yet).
    pub fn read(&mut self) -> Result<Vec<JournalLine>, StoreError> {
        let mut buf = Vec::new();
        self.file.read_to_end(&mut buf)?;
        self.partial.extend_from_slice(&buf);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(n) = memchr::memchr(b'\n', &self.partial[start..]) {
            let raw = &self.partial[start..start + n];
            start += n + 1;
            if raw.is_empty() {
                continue;
            }
            match serde_json::from_slice::<JournalLine>(raw) {
                Ok(line) => {
                    self.ended |= line.end;
                    out.push(line);
                }
                Err(e) => log::error!("store: unreadable handoff journal line skipped: {e}"),
            }
        }
        self.partial.drain(..start);
        Ok(out)
    }

    /// Bytes of an incomplete last line (a write torn by a crash, once the writer is gone).
    pub fn torn_bytes(&self) -> usize {
        self.partial.len()
    }
}

impl Store {
    /// Whether a generation with this exact id is stored (not a body id).
    pub fn has_generation(&self, id: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        let generations = txn.open_table(GENERATIONS)?;
        Ok(generations.get(id)?.is_some())
    }
}

/// Runs `open` (something that opens the store) until it stops failing because another
/// process (the one being upgraded) still holds the file, for up to `timeout`. Returns what it
/// opened and how long it waited.
pub fn retry_while_locked<T>(
    timeout: std::time::Duration,
    mut open: impl FnMut() -> Result<T, StoreError>,
) -> Result<(T, std::time::Duration), StoreError> {
    let start = std::time::Instant::now();
    loop {
        match open() {
            Ok(opened) => return Ok((opened, start.elapsed())),
            Err(e) if e.0.contains("already open") && start.elapsed() < timeout => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{entry, generation};
    use crate::store::{test_dir, LedgerKind};
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_journal_round_trips_through_the_writer_and_a_tail() {
        let dir = test_dir("handoff-journal");
        let store = Store::open(&dir).expect("open");
        let writer = store.start_writer();
        writer
            .submit_durable_blocking(WriteOp::Settle {
                charge: entry(1, 1, -100, LedgerKind::Charge, Some("gen-before")),
                generation: generation("gen-before", "body-before", 1, 100),
            })
            .expect("committed to the store");
        let holds = Arc::new(Mutex::new(vec![(1u64, 500i64)]));
        let h = holds.clone();
        let journal = Journal::create(&dir, Box::new(move || h.lock().unwrap().clone())).expect("journal");
        let path = journal.path().to_path_buf();
        writer.hand_off(journal).expect("handoff");
        assert!(store.close());
        // The file is free: another handle can open it (what the new process does).
        let (other, _) = retry_while_locked(std::time::Duration::from_secs(5), || Store::open(&dir)).expect("reopen");
        assert!(other.has_generation("gen-before").unwrap());
        assert!(store.has_generation("gen-before").is_err(), "reads fail after close");

        let mut tail = Tail::open(&path).expect("tail");
        let first = tail.read().unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].holds, Some(vec![(1, 500)]));

        *holds.lock().unwrap() = vec![(1, 200)];
        writer
            .submit_durable_blocking(WriteOp::Settle {
                charge: entry(2, 1, -300, LedgerKind::Charge, Some("gen-after")),
                generation: generation("gen-after", "body-after", 1, 300),
            })
            .expect("journaled");
        // As a request submits it: encoded rows, journaled as the records again.
        let (charge, encoded) = (entry(4, 1, -50, LedgerKind::Charge, Some("gen-encoded")), generation("gen-encoded", "", 1, 50));
        writer
            .submit_durable_blocking(WriteOp::settled(Some(charge.clone()), encoded.clone()))
            .expect("journaled");
        let refused = writer.submit_durable_blocking(WriteOp::Grant(entry(3, 1, 5, LedgerKind::Grant, None)));
        assert_eq!(refused, Err(CLOSED.to_string()));
        writer.submit(WriteOp::TouchKeys(vec![(7, 70)]));
        writer.shutdown();

        let lines = tail.read().unwrap();
        assert!(tail.ended);
        let ops: Vec<&JournalOp> = lines.iter().flat_map(|l| &l.ops).collect();
        assert!(matches!(ops[0], JournalOp::Settle { generation, .. } if generation.id == "gen-after"));
        assert_eq!(ops[1], &JournalOp::Settle { charge, generation: encoded });
        assert_eq!(ops[2], &JournalOp::Touch(vec![(7, 70)]));
        assert_eq!(ops.len(), 3);
        assert_eq!(lines[0].holds, Some(vec![(1, 200)]));
        assert_eq!(lines.last().unwrap().holds, Some(vec![]));
        assert!(!other.has_generation("gen-after").unwrap(), "journaled, not in the store");
        drop((other, store));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tail_waits_for_complete_lines() {
        let dir = test_dir("handoff-tail");
        std::fs::create_dir_all(&dir).unwrap();
        let path = journal_path(&dir, 4242);
        let line = serde_json::to_string(&JournalLine { holds: Some(vec![(1, 2)]), ..Default::default() }).unwrap();
        std::fs::write(&path, &line[..5]).unwrap();
        let mut tail = Tail::open(&path).unwrap();
        assert!(tail.read().unwrap().is_empty());
        assert_eq!(tail.torn_bytes(), 5);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(format!("{}\n{{\"end\":true}}\n", &line[5..]).as_bytes()).unwrap();
        let lines = tail.read().unwrap();
        assert_eq!(lines.len(), 2);
        assert!(tail.ended);
        assert_eq!(find_journals(&dir), vec![JournalFile { path: path.clone(), pid: 4242 }]);
        assert!(!writer_alive(u32::MAX - 1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
