//! Crash safety: `kill -9` of the gateway under concurrent load, again and again. After every
//! restart the store opens (through redb's repair path), every account's balance equals its
//! grants minus its recorded charges, no generation is charged twice, every acknowledged grant
//! is there, and nothing once committed is lost. Also the helpers the backup tests share.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `tollgate ARGS` (bounded: killed after 60 s) with the admin token in its environment:
/// (success, stdout, stderr). Asserts it did not panic.
pub fn tollgate(args: &[&str]) -> (bool, String, String) {
    let dir = scratch_dir("cli");
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(BIN)
        .args(args)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn tollgate");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tollgate {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!stderr.contains("panicked"), "tollgate {args:?} panicked:\n{stderr}");
    (status.success(), stdout, stderr)
}

/// `tollgate export ARGS --to FILE`, asserting success: the JSON lines, and what it printed.
pub fn export(args: &[&str], file: &Path) -> (Vec<Value>, String) {
    let to = file.to_str().unwrap();
    let mut all: Vec<&str> = vec!["export"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--to", to, "--force"]);
    let (ok, stdout, stderr) = tollgate(&all);
    assert!(ok, "export {args:?} failed:\n{stderr}");
    let output = format!("{stdout}{stderr}");
    let text = std::fs::read_to_string(file).unwrap();
    let lines = text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}"))).collect();
    (lines, output)
}

/// What an export says, checked for internal consistency: every charge pays for exactly one
/// generation whose cost it equals, no generation is charged twice, every billed generation
/// has its charge, and the summary's balances are the sums of the ledger.
pub struct Books {
    /// account id → sum of its ledger entries (grants − charges), nano-USD.
    pub balances: BTreeMap<u64, i64>,
    pub ledger_seqs: BTreeSet<u64>,
    pub notes: BTreeSet<String>,
    pub charges: usize,
    pub generations: usize,
}

pub fn check_books(lines: &[Value]) -> Books {
    let mut balances: BTreeMap<u64, i64> = BTreeMap::new();
    let mut ledger_seqs = BTreeSet::new();
    let mut notes = BTreeSet::new();
    let mut charged: HashMap<String, i64> = HashMap::new();
    let mut generations: HashMap<String, i64> = HashMap::new();
    let mut charges = 0;
    for l in lines {
        match l["type"].as_str().unwrap() {
            "account" => {
                balances.entry(l["id"].as_u64().unwrap()).or_insert(0);
            }
            "ledger" => {
                let amount = l["amount_nano"].as_i64().expect("integer nano-USD");
                assert!(ledger_seqs.insert(l["seq"].as_u64().unwrap()), "ledger seq twice: {l}");
                *balances.entry(l["account_id"].as_u64().unwrap()).or_insert(0) += amount;
                if let Some(n) = l["note"].as_str() {
                    notes.insert(n.to_string());
                }
                if l["kind"] == "charge" {
                    charges += 1;
                    assert!(amount < 0, "a charge is negative: {l}");
                    let id = l["generation_id"].as_str().expect("a charge names its generation").to_string();
                    assert!(charged.insert(id.clone(), -amount).is_none(), "generation {id} charged twice");
                }
            }
            "generation" => {
                let id = l["id"].as_str().unwrap().to_string();
                assert!(generations.insert(id.clone(), l["cost_nano"].as_i64().unwrap()).is_none(), "generation {id} twice");
            }
            "summary" => {
                for b in l["balances"].as_array().unwrap() {
                    let id = b["account_id"].as_u64().unwrap();
                    assert_eq!(Some(&b["balance_nano"].as_i64().unwrap()), balances.get(&id), "summary balance of {id}");
                }
            }
            other => panic!("unknown line type {other}"),
        }
    }
    assert_eq!(lines.last().map(|l| l["type"].clone()), Some(json!("summary")), "the export ends with its summary");
    for (id, cost) in &charged {
        assert_eq!(generations.get(id), Some(cost), "charge for {id} without its generation record (or a different cost)");
    }
    for (id, cost) in &generations {
        if *cost > 0 {
            assert_eq!(charged.get(id), Some(cost), "billed generation {id} without its charge");
        }
    }
    Books { balances, ledger_seqs, notes, charges, generations: generations.len() }
}

/// An account's balance as the gateway reports it (the in-memory sum loaded from the ledger).
pub fn gateway_balance_nano(gw: &Gateway, id: u64) -> i64 {
    (usd(&gw.admin_get(&format!("/v1/admin/accounts/{id}"))["balance"]) * 1e9).round() as i64
}

/// Concurrent traffic against a gateway until stopped: chat requests (every other thread
/// streaming) round-robin over `keys`, and, with `grant_to`, a credit grant every ~50 ms whose
/// acknowledged notes are recorded.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pub acked_grants: Arc<Mutex<Vec<String>>>,
}

impl Load {
    pub fn start(port: u16, keys: &[String], threads: usize, grant_to: Option<(u64, &str)>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let acked_grants = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for t in 0..threads {
            let (stop, ok, failed, keys) = (stop.clone(), ok.clone(), failed.clone(), keys.to_vec());
            handles.push(std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).no_proxy().build().unwrap();
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let key = &keys[i % keys.len()];
                    i += 1;
                    let stream = t % 2 == 1;
                    let body = json!({"model": "mock/echo-1", "stream": stream,
                                      "messages": [{"role": "user", "content": format!("crash test {i}")}]});
                    let r = http.post(format!("http://127.0.0.1:{port}/v1/chat/completions")).bearer_auth(key).json(&body).send();
                    match r.and_then(|r| Ok((r.status(), r.text()?))) {
                        Ok((s, _)) if s.is_success() => ok.fetch_add(1, Ordering::Relaxed),
                        _ => {
                            // Refused (402 once a small balance is spent) or the gateway is gone.
                            std::thread::sleep(Duration::from_millis(5));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
        if let Some((account, tag)) = grant_to {
            let (stop, acked, tag) = (stop.clone(), acked_grants.clone(), tag.to_string());
            handles.push(std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).no_proxy().build().unwrap();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let note = format!("{tag}-{n}");
                    let r = http
                        .post(format!("http://127.0.0.1:{port}/v1/admin/accounts/{account}/credits"))
                        .bearer_auth(ADMIN_TOKEN)
                        .json(&json!({"amount_usd": "0.0001", "note": note}))
                        .send();
                    if r.is_ok_and(|r| r.status() == 200) {
                        acked.lock().unwrap().push(note);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }));
        }
        Load { stop, threads: handles, ok, failed, acked_grants }
    }

    pub fn stop(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load thread");
        }
        let acked = self.acked_grants.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), acked)
    }
}

const REPAIRED: &str = "was not shut down cleanly; repaired in";

#[test]
fn crash_loop_kill9_under_load_keeps_the_books() {
    let started = Instant::now();
    let mut gw = Gateway::start();
    let config = gw.config_path.to_str().unwrap().to_string();
    // Small balances: the first account runs dry within an iteration or two (402s, and
    // reservations released), the others keep being charged.
    let accounts: Vec<(u64, String)> = ["0.0005", "0.01", "1"].iter().map(|c| gw.account_with_key(c)).collect();
    let keys: Vec<String> = accounts.iter().map(|(_, k)| k.clone()).collect();
    // Some upstream failures too: unbilled generation records are written beside the charges.
    gw.mock.set_faults(json!({"fail_every": 9}));
    let mut seed = std::process::id() as u64 ^ started.elapsed().as_nanos() as u64;
    let mut next = move |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut committed: BTreeSet<u64> = BTreeSet::new();
    let mut acked_total: Vec<String> = Vec::new();
    let (mut served, mut charges, mut generations) = (0, 0, 0);
    const ITERATIONS: usize = 8;
    for iter in 0..ITERATIONS {
        let load = Load::start(gw.port, &keys, 4, Some((accounts[0].0, &format!("crash-{iter}"))));
        std::thread::sleep(Duration::from_millis(300 + next(900)));
        gw.kill9(); // SIGKILL, mid-traffic
        let (ok, _failed, acked) = load.stop();
        served += ok;
        acked_total.extend(acked);
        gw.spawn(); // same config, same data dir

        // The store opened through redb's repair path, once per crash.
        let repairs = gw.stderr().matches(REPAIRED).count();
        assert_eq!(repairs, iter + 1, "one repair per kill -9; stderr:\n{}", gw.stderr());

        // A consistent snapshot through the running gateway, checked line by line.
        let file = gw.dir.join(format!("export-{iter}.jsonl"));
        let (lines, stderr) = export(&["--config", &config], &file);
        assert!(stderr.contains("by the running gateway"), "{stderr}");
        let books = check_books(&lines);
        for (id, _) in &accounts {
            assert_eq!(gateway_balance_nano(&gw, *id), books.balances[id], "account {id}: balance != grants − charges");
        }
        for note in &acked_total {
            assert!(books.notes.contains(note), "acknowledged grant {note} lost in the crash");
        }
        let lost: Vec<_> = committed.difference(&books.ledger_seqs).collect();
        assert!(lost.is_empty(), "ledger entries committed before a crash are gone: {lost:?}");
        committed = books.ledger_seqs;
        charges = books.charges;
        generations = books.generations;
        eprintln!(
            "crash loop {iter}: {} served so far, {} charges, {} generations, {} acked grants, {:?} elapsed",
            served,
            books.charges,
            books.generations,
            acked_total.len(),
            started.elapsed()
        );
    }
    assert!(charges > 0 && served > 0, "the load did something");
    assert!(generations > charges, "failed requests left unbilled generation records");

    // Last crash, then the offline path: the CLI opens (and repairs) the store itself.
    let load = Load::start(gw.port, &keys, 4, None);
    std::thread::sleep(Duration::from_millis(400));
    gw.kill9();
    load.stop();
    let file = gw.dir.join("export-offline.jsonl");
    let (lines, stderr) = export(&["--config", &config], &file);
    assert!(stderr.contains(REPAIRED), "the offline export repaired the store:\n{stderr}");
    assert!(!stderr.contains("running gateway"), "{stderr}");
    let books = check_books(&lines);
    assert!(committed.is_subset(&books.ledger_seqs));
    // And a second offline open finds a clean file.
    let (_, stderr) = export(&["--config", &config], &file);
    assert!(!stderr.contains(REPAIRED), "{stderr}");
    eprintln!("crash loop: {ITERATIONS}+1 kills in {:?}", started.elapsed());
}

/// SIGTERM is the clean path: after the drain the store is closed, so neither the next
/// offline tool nor the next gateway has anything to repair.
#[test]
fn a_graceful_stop_leaves_a_store_that_needs_no_repair() {
    let mut gw = Gateway::start();
    let (_, key) = gw.account_with_key("1");
    assert_eq!(gw.chat(&key, hello("mock/echo-1")).status(), 200);
    gw.signal("TERM");
    gw.proc.as_mut().unwrap().wait_exit(Duration::from_secs(15));
    let config = gw.config_path.to_str().unwrap().to_string();
    let (lines, out) = export(&["--config", &config], &gw.dir.join("after-term.jsonl"));
    assert!(!out.contains(REPAIRED) && !out.contains("repairing"), "{out}");
    assert_eq!(check_books(&lines).charges, 1);
    gw.spawn();
    assert!(!gw.stderr().contains("repairing"), "{}", gw.stderr());
}
