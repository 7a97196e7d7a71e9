//! Soak: an hour of a gateway's life compressed into minutes, on loopback only.
//!
//! `make soak` (= `cargo bench --bench soak`) starts `tollgate mock-upstream` and
//! `tollgate serve`, then for `SOAK_SECS` (default 180) runs `SOAK_CONNS` (default 6) client
//! threads of mixed traffic: JSON and streaming chat completions, Anthropic-translated streams,
//! and requests carrying per-request upstream faults (`x-mock-status: 500`, a stream cut
//! after two chunks, a slow upstream). On top of that it opens a global fault window on the mock
//! every 30 s (error rate, stream errors, 429s, latency), reloads the config every 10 s (file
//! rewrite and SIGHUP in turn), and takes a backup through the admin API every 60 s.
//!
//! Every `SOAK_SAMPLE_SECS` (default 5) it samples the gateway's RSS, open file descriptors and
//! threads from /proc. It writes `benches/soak.md`: the time series, error counts by kind, and
//! a verdict: RSS after warm-up (`SOAK_WARMUP_SECS`, default a quarter of the run, at least
//! 30 s) grows by no more than 10% (or 8 MiB, whichever is larger), file descriptors stay
//! bounded, and no error is of an unexpected kind (a transport failure, or a gateway 500).
//!
//! `SOAK_BIN=path/to/tollgate` soaks another build of the binary (the report names its profile).
//!
//! Bounded: every request has a 10 s timeout, every loop ends at the deadline, and a watchdog
//! kills the children and exits if the run overruns by two minutes. Exit status is non-zero
//! only when the harness fails (a server does not start) or the gateway dies; a failed verdict
//! is reported, not fatal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;
use support::{admin_post, free_port, rss_kib, start_watchdog, status_field, utc_now, ChildGuard};

const BUILT_BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// The `tollgate` binary to soak: `SOAK_BIN` if set (e.g. `target/release/tollgate` while the
/// harness itself is a dev build), else the one Cargo built with this bench.
fn bin() -> String {
    std::env::var("SOAK_BIN").ok().filter(|b| !b.trim().is_empty()).unwrap_or_else(|| BUILT_BIN.to_string())
}
const REPORT_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/soak.md");
const ADMIN_TOKEN: &str = "soak-admin-token-0123456789";
const PROVIDER_KEY: &str = "soak-upstream-key-0123456789";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const RELOAD_EVERY: Duration = Duration::from_secs(10);
const FAULT_EVERY: Duration = Duration::from_secs(30);
const FAULT_WINDOW: Duration = Duration::from_secs(6);
const BACKUP_EVERY: Duration = Duration::from_secs(60);
/// After a backup, RSS is not judged for this long: the copy's page buffers are freed at its
/// end, and the allocator returns them to the system over ~10 s (jemalloc's decay).
const BACKUP_SETTLE: Duration = Duration::from_secs(15);
/// RSS growth after warm-up that still passes: this fraction of the warm level, or
/// [`RSS_TOLERANCE_MIB`], whichever is larger.
const RSS_TOLERANCE: f64 = 0.10;
const RSS_TOLERANCE_MIB: f64 = 8.0;
/// How long a server may take to open its port.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

fn var(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

fn config(port: u16, metrics_port: u16, data: &Path, mock_port: u16, generation: u64) -> String {
    format!(
        r#"# soak config, generation {generation}
[server]
listen = ["127.0.0.1:{port}"]
data_dir = "{data}"
metrics_listen = "127.0.0.1:{metrics_port}"
threads = 2
grace_period_secs = 1
reload_poll_ms = 500

[billing]
tiers = []

[providers.mock]
kind = "mock"
base_url = "http://127.0.0.1:{mock_port}/v1"
api_key_env = "TOLLGATE_SOAK_PROVIDER_KEY"
read_timeout_secs = 5

[providers.claude]
kind = "anthropic"
base_url = "http://127.0.0.1:{mock_port}/v1"
api_key_env = "TOLLGATE_SOAK_PROVIDER_KEY"
read_timeout_secs = 5

[[models]]
slug = "mock/echo-1"
provider = "mock"
upstream_model = "echo-1"
context_length = 32768
max_output_tokens = 4096
input_per_mtok = 1.00
output_per_mtok = {price}

[[models]]
slug = "soak/claude"
provider = "claude"
upstream_model = "claude-soak"
context_length = 32768
max_output_tokens = 4096
input_per_mtok = 3.00
output_per_mtok = 15.00

[[aliases]]
name = "soak/alias-{generation}"
models = ["mock/echo-1"]
"#,
        data = data.display(),
        // Every reload changes a price a little, so each one is a real change.
        price = 2.0 + (generation % 7) as f64 / 100.0,
    )
}

/// What one request came to.
fn classify(result: reqwest::Result<(u16, String)>, stream: bool) -> Result<(), String> {
    match result {
        Ok((200, body)) if !stream => {
            if body.contains("\"choices\"") {
                Ok(())
            } else {
                Err("200 without choices".into())
            }
        }
        Ok((200, body)) => {
            if body.contains("data: [DONE]") {
                Ok(())
            } else if body.contains("\"error\"") {
                Err("stream error event".into())
            } else {
                Err("stream ended early".into())
            }
        }
        Ok((status, body)) => {
            let code = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
                .unwrap_or_else(|| "?".into());
            Err(format!("{status} {code}"))
        }
        Err(e) if e.is_timeout() => Err("transport: timeout".into()),
        Err(e) if e.is_connect() => Err("transport: connect".into()),
        Err(e) if e.is_body() || e.is_decode() => Err(format!("transport: body ({e:#})")),
        Err(e) => Err(format!("transport: other ({e:#})")),
    }
}

/// Error kinds that injected faults explain; anything else is unexpected.
fn expected_kind(kind: &str) -> bool {
    kind.starts_with("502 ")
        || kind.starts_with("503 ")
        || kind.starts_with("504 ")
        || kind.starts_with("429 ")
        || kind == "stream error event"
        || kind == "stream ended early"
        || kind == "connection closed after a cut stream, reused by the client"
}

#[derive(Clone)]
struct Sample {
    t: f64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    ok: u64,
    errors: u64,
    store_bytes: u64,
}

/// One backup through the admin API: when it ran (seconds into the run) and its
/// (milliseconds, bytes), or why it failed.
struct Backup {
    from: f64,
    to: f64,
    result: Result<(u64, u64), String>,
}

impl Backup {
    /// Whether a sample at `t` is inside the backup or the allocator's settling time after it.
    fn covers(&self, t: f64) -> bool {
        t >= self.from && t <= self.to + BACKUP_SETTLE.as_secs_f64()
    }
}

struct Stats {
    ok: AtomicU64,
    errors: AtomicU64,
    kinds: Mutex<BTreeMap<String, u64>>,
}

fn main() {
    let secs = var("SOAK_SECS", 180).max(30);
    let conns = var("SOAK_CONNS", 6).max(1) as usize;
    let sample_every = Duration::from_secs(var("SOAK_SAMPLE_SECS", 5).max(1));
    let warmup = Duration::from_secs(var("SOAK_WARMUP_SECS", (secs / 4).max(30)).min(secs / 2));
    let budget = Duration::from_secs(secs) + Duration::from_secs(120);
    start_watchdog("soak", budget);

    let tmp = std::env::temp_dir().join(format!("tollgate-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    // The conductor's client opens a connection per request: its calls are seconds apart, and
    // an idle keep-alive connection the server has closed meanwhile would fail the next send.
    let http = reqwest::blocking::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(0)
        .no_proxy()
        .build()
        .unwrap();

    let mock_port = free_port();
    let mut mock = ChildGuard::spawn(
        "mock-upstream",
        Command::new(bin())
            .args(["mock-upstream", "--listen", &format!("127.0.0.1:{mock_port}"), "--api-key", PROVIDER_KEY])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
        tmp.join("mock.stderr"),
    );
    mock.wait_for_port(mock_port, STARTUP_TIMEOUT);
    let (port, metrics_port) = (free_port(), free_port());
    let config_path = tmp.join("tollgate.toml");
    let data = tmp.join("data");
    std::fs::write(&config_path, config(port, metrics_port, &data, mock_port, 0)).unwrap();
    let mut gw = ChildGuard::spawn(
        "tollgate serve",
        Command::new(bin())
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TOLLGATE_SOAK_PROVIDER_KEY", PROVIDER_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
        tmp.join("gateway.stderr"),
    );
    gw.wait_for_port(port, STARTUP_TIMEOUT);
    let admin = |path: &str, body: Value| admin_post(&http, port, ADMIN_TOKEN, path, body);
    let start_ready = Instant::now();
    while http.get(format!("http://127.0.0.1:{port}/readyz")).send().map(|r| r.status() != 200).unwrap_or(true) {
        assert!(start_ready.elapsed() < Duration::from_secs(30), "gateway never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut keys = Vec::new();
    for i in 0..3 {
        let a = admin("/v1/admin/accounts", json!({"email": format!("soak{i}@example.com")}));
        let id = a["id"].as_u64().unwrap();
        admin(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": "100000"}));
        keys.push(admin(&format!("/v1/admin/accounts/{id}/keys"), json!({"name": "soak"}))["key"].as_str().unwrap().to_string());
    }

    let gw_pid = gw.pid();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let stats = Arc::new(Stats { ok: AtomicU64::new(0), errors: AtomicU64::new(0), kinds: Mutex::new(BTreeMap::new()) });
    let stop = Arc::new(AtomicBool::new(false));
    eprintln!("soak: {secs} s, {conns} client threads, warm-up {warmup:?}, sampling every {sample_every:?}");

    // Client threads.
    let mut threads = Vec::new();
    for t in 0..conns {
        let (stats, stop, keys) = (stats.clone(), stop.clone(), keys.clone());
        threads.push(std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder().timeout(REQUEST_TIMEOUT).no_proxy().build().unwrap();
            let mut i = t as u64 * 7;
            let mut previous = "none";
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                i += 1;
                let key = &keys[(i % keys.len() as u64) as usize];
                let (model, stream, header): (&str, bool, Option<(&str, &str)>) = match i % 20 {
                    0..=8 => ("mock/echo-1", false, None),
                    9..=14 => ("mock/echo-1", true, None),
                    15 | 16 => ("soak/claude", true, None),
                    17 => ("mock/echo-1", false, Some(("x-mock-status", "500"))),
                    18 => ("mock/echo-1", true, Some(("x-mock-cut-after", "2"))),
                    _ => ("mock/echo-1", false, Some(("x-mock-delay-ms", "300"))),
                };
                let body = json!({"model": model, "stream": stream,
                                  "messages": [{"role": "user", "content": format!("soak request {i}: tell me something")}]});
                let mut req = http.post(format!("http://127.0.0.1:{port}/v1/chat/completions")).bearer_auth(key).json(&body);
                if let Some((k, v)) = header {
                    req = req.header(k, v);
                }
                let result = req.send().and_then(|r| {
                    let status = r.status().as_u16();
                    Ok((status, r.text()?))
                });
                let label = match header {
                    None => if stream { "stream" } else { "json" },
                    Some((h, _)) => h,
                };
                let outcome = classify(result, stream).map_err(|k| {
                    if k.starts_with("transport") {
                        format!("{k} [{model} {label}; previous: {previous}]")
                    } else {
                        k
                    }
                });
                // A cut stream ends well-formed, but the gateway then closes that connection; a
                // client that reuses it at once (reqwest's pool does) fails its next send.
                let outcome = outcome.map_err(|k| {
                    if k.starts_with("transport: other (error sending request") && previous == "x-mock-cut-after" {
                        "connection closed after a cut stream, reused by the client".to_string()
                    } else {
                        k
                    }
                });
                previous = label;
                match outcome {
                    Ok(()) => {
                        stats.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(kind) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        *stats.kinds.lock().unwrap().entry(kind).or_insert(0) += 1;
                    }
                }
            }
        }));
    }

    // Backups on their own thread, so sampling goes on while one runs.
    let backups: Arc<Mutex<Vec<Backup>>> = Arc::new(Mutex::new(Vec::new()));
    let backup_thread = {
        let (backups, http, tmp) = (backups.clone(), http.clone(), tmp.clone());
        std::thread::spawn(move || {
            let mut next = started + BACKUP_EVERY / 2;
            loop {
                while Instant::now() < next {
                    if Instant::now() >= deadline {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                next += BACKUP_EVERY;
                let to = tmp.join("backup.redb");
                let from = started.elapsed().as_secs_f64();
                let r = http
                    .post(format!("http://127.0.0.1:{port}/v1/admin/backup"))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({"to": to.display().to_string(), "overwrite": true}))
                    .timeout(Duration::from_secs(120))
                    .send()
                    .and_then(|r| r.json::<Value>());
                let to_t = started.elapsed().as_secs_f64();
                let result = match r {
                    Ok(v) if v["bytes"].is_u64() => Ok((v["millis"].as_u64().unwrap_or(0), v["bytes"].as_u64().unwrap_or(0))),
                    other => Err(format!("{other:?}")),
                };
                if let Err(e) = &result {
                    eprintln!("soak: backup failed: {e}");
                }
                let _ = std::fs::remove_file(&to);
                backups.lock().unwrap().push(Backup { from, to: to_t, result });
            }
        })
    };

    // The conductor: samples, reloads, fault windows.
    let faults = [
        json!({"fail_rate": 0.3}),
        json!({"stream_error_after": 3}),
        json!({"status": 429, "retry_after": 1}),
        json!({"delay_ms": 150}),
    ];
    let mut samples: Vec<Sample> = Vec::new();
    let (mut next_sample, mut next_reload, mut next_fault) =
        (started, started + RELOAD_EVERY, started + FAULT_EVERY / 2);
    let mut fault_open: Option<Instant> = None;
    let (mut reloads, mut fault_windows) = (0u64, 0u64);
    let mut fault_log: Vec<String> = Vec::new();
    while Instant::now() < deadline {
        let now = Instant::now();
        if let Some(status) = gw.exited() {
            panic!("the gateway exited during the soak ({status}); stderr:\n{}", gw.stderr());
        }
        if now >= next_sample {
            next_sample += sample_every;
            samples.push(Sample {
                t: started.elapsed().as_secs_f64(),
                rss_kib: rss_kib(gw_pid).unwrap_or(0),
                fds: open_fds(gw_pid).unwrap_or(0),
                threads: status_field(gw_pid, "Threads:").unwrap_or(0),
                ok: stats.ok.load(Ordering::Relaxed),
                errors: stats.errors.load(Ordering::Relaxed),
                store_bytes: std::fs::metadata(data.join("tollgate.redb")).map(|m| m.len()).unwrap_or(0),
            });
        }
        if now >= next_reload {
            next_reload += RELOAD_EVERY;
            reloads += 1;
            std::fs::write(&config_path, config(port, metrics_port, &data, mock_port, reloads)).unwrap();
            if reloads % 2 == 0 {
                // Also the signal path (the file changed too, so either way it reloads).
                let _ = Command::new("kill").args(["-HUP", &gw_pid.to_string()]).status();
            }
        }
        if let Some(opened) = fault_open {
            if now >= opened + FAULT_WINDOW {
                let _ = http.delete(format!("http://127.0.0.1:{mock_port}/_mock/faults")).send();
                fault_open = None;
            }
        } else if now >= next_fault {
            next_fault += FAULT_EVERY;
            let f = &faults[(fault_windows % faults.len() as u64) as usize];
            fault_windows += 1;
            let r = http.post(format!("http://127.0.0.1:{mock_port}/_mock/faults")).json(f).send();
            assert!(r.is_ok_and(|r| r.status().is_success()), "set mock faults {f}");
            fault_log.push(format!("{:.0} s: {f}", started.elapsed().as_secs_f64()));
            fault_open = Some(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    backup_thread.join().expect("backup thread");
    for t in threads {
        t.join().expect("client thread");
    }
    let _ = http.delete(format!("http://127.0.0.1:{mock_port}/_mock/faults")).send();
    // Idle after the load: what is left open once nothing is in flight.
    std::thread::sleep(Duration::from_secs(3));
    let idle_rss = rss_kib(gw_pid).unwrap_or(0);
    let idle_fds = open_fds(gw_pid).unwrap_or(0);
    if let Some(status) = gw.exited() {
        panic!("the gateway exited during the soak ({status})");
    }
    let metrics = http.get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    let reload_ok: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tollgate_config_reloads_total") && l.contains("success"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum();

    let report = render(
        secs,
        conns,
        warmup,
        &samples,
        &stats.kinds.lock().unwrap(),
        (stats.ok.load(Ordering::Relaxed), stats.errors.load(Ordering::Relaxed)),
        (reloads, reload_ok as u64),
        &fault_log,
        &backups.lock().unwrap(),
        (idle_rss, idle_fds),
    );
    println!("\n{report}");
    std::fs::write(REPORT_PATH, &report).unwrap_or_else(|e| panic!("write {REPORT_PATH}: {e}"));
    eprintln!("soak: wrote {REPORT_PATH}");
    drop((gw, mock));
    let _ = std::fs::remove_dir_all(&tmp);
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

#[allow(clippy::too_many_arguments)]
fn render(
    secs: u64,
    conns: usize,
    warmup: Duration,
    samples: &[Sample],
    kinds: &BTreeMap<String, u64>,
    (ok, errors): (u64, u64),
    (reloads, reload_ok): (u64, u64),
    fault_log: &[String],
    backups: &[Backup],
    (idle_rss, idle_fds): (u64, u64),
) -> String {
    let mut out = String::new();
    let bin = bin();
    let profile = if bin.contains("/release/") {
        "release"
    } else if bin.contains("/debug/") {
        "dev (debug)"
    } else {
        "unknown"
    };
    let _ = writeln!(out, "# Tollgate soak (latest run)\n");
    let _ = writeln!(
        out,
        "Date: {} · SOAK_SECS={secs} · {conns} client threads · warm-up {} s · gateway build: {profile} · {} CPU cores (shared with other work: timings are noisy, memory and fds are not)\n",
        utc_now(),
        warmup.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let _ = writeln!(
        out,
        "Traffic: JSON chat 45%, streaming chat 30%, Anthropic-translated streams 10%, and per-request upstream faults 15% \
         (`x-mock-status: 500`, a stream cut after 2 chunks, a 300 ms slow upstream). A global fault window on the mock \
         every {} s for {} s; a config reload every {} s (file rewrite, every other one with SIGHUP too); a backup \
         through `POST /admin/backup` every {} s. `make soak` regenerates this file.\n",
        FAULT_EVERY.as_secs(),
        FAULT_WINDOW.as_secs(),
        RELOAD_EVERY.as_secs(),
        BACKUP_EVERY.as_secs()
    );
    let _ = writeln!(out, "## Gateway over time\n");
    let _ = writeln!(out, "| t (s) | RSS MiB | open fds | threads | ok (cum.) | errors (cum.) | req/s | store MiB | |");
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let mut prev: Option<&Sample> = None;
    for s in samples {
        let rate = prev.map_or(0.0, |p| (s.ok + s.errors - p.ok - p.errors) as f64 / (s.t - p.t).max(0.001));
        let _ = writeln!(
            out,
            "| {:.0} | {:.1} | {} | {} | {} | {} | {:.0} | {:.1} | {} |",
            s.t,
            mib(s.rss_kib),
            s.fds,
            s.threads,
            s.ok,
            s.errors,
            rate,
            s.store_bytes as f64 / 1048576.0,
            if backups.iter().any(|b| b.covers(s.t)) { "backup" } else { "" }
        );
        prev = Some(s);
    }
    let _ = writeln!(out, "\nIdle 3 s after the load stopped: RSS {:.1} MiB, {idle_fds} open fds.\n", mib(idle_rss));

    let _ = writeln!(out, "## Requests and errors\n");
    let total = ok + errors;
    let _ = writeln!(out, "{total} requests: {ok} complete, {errors} errors ({:.1}%).\n", errors as f64 * 100.0 / total.max(1) as f64);
    let _ = writeln!(out, "| error kind | count | expected (an injected fault explains it) |");
    let _ = writeln!(out, "|---|---:|---|");
    let mut unexpected = 0;
    for (k, n) in kinds {
        let exp = expected_kind(k);
        if !exp {
            unexpected += n;
        }
        let _ = writeln!(out, "| {k} | {n} | {} |", if exp { "yes" } else { "**no**" });
    }
    let _ = writeln!(out, "\nConfig reloads: {reloads} written, {reload_ok} applied (`tollgate_config_reloads_total{{result=\"success\"}}`).\n");
    let _ = writeln!(out, "Fault windows: {}.\n", if fault_log.is_empty() { "none".to_string() } else { fault_log.join("; ") });
    let ok_backups: Vec<&(u64, u64)> = backups.iter().filter_map(|b| b.result.as_ref().ok()).collect();
    let failed_backups = backups.len() - ok_backups.len();
    if !backups.is_empty() {
        let b: Vec<String> = backups
            .iter()
            .map(|b| match &b.result {
                Ok((ms, bytes)) => format!("at {:.0} s: {ms} ms, {:.1} MiB", b.from, *bytes as f64 / 1048576.0),
                Err(e) => format!("at {:.0} s: failed ({e})", b.from),
            })
            .collect();
        let _ = writeln!(out, "Backups while serving (file size after compaction): {}.\n", b.join("; "));
    }

    // Verdict.
    // Samples during a backup (and its settling time) are judged separately: see BACKUP_SETTLE.
    let warm_all: Vec<&Sample> = samples.iter().filter(|s| s.t >= warmup.as_secs_f64()).collect();
    let warm: Vec<&Sample> = warm_all.iter().copied().filter(|s| !backups.iter().any(|b| b.covers(s.t))).collect();
    let _ = writeln!(out, "## Verdict\n");
    let pass = |b: bool| if b { "PASS" } else { "FAIL" };
    if warm.len() >= 6 {
        // Medians of the first and last thirds after warm-up: a transient peak (a backup's
        // buffers, before the allocator returns them) does not decide; a trend does.
        let third = warm.len() / 3;
        let median = |v: &[&Sample]| -> f64 {
            let mut m: Vec<f64> = v.iter().map(|s| mib(s.rss_kib)).collect();
            m.sort_by(|x, y| x.total_cmp(y));
            m[m.len() / 2]
        };
        let (a, b) = (median(&warm[..third]), median(&warm[warm.len() - third..]));
        let growth = b - a;
        let allowed = (a * RSS_TOLERANCE).max(RSS_TOLERANCE_MIB);
        // Least-squares slope over every warm sample, MiB per minute.
        let xs: Vec<f64> = warm.iter().map(|s| s.t).collect();
        let ys: Vec<f64> = warm.iter().map(|s| mib(s.rss_kib)).collect();
        let (mx, my) = (mean(&xs), mean(&ys));
        let num: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        let den: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
        let slope = if den > 0.0 { num / den * 60.0 } else { 0.0 };
        let max_rss = ys.iter().cloned().fold(0.0, f64::max);
        let backup_peak = warm_all.iter().filter(|s| backups.iter().any(|b| b.covers(s.t))).map(|s| mib(s.rss_kib)).fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "- {} — RSS after warm-up, outside backups (median of the first and of the last third of the samples): {a:.1} MiB, then {b:.1} MiB (growth {growth:+.1} MiB, allowed {allowed:.1}); peak {max_rss:.1} MiB; least-squares trend {slope:+.2} MiB/min. During backups (and {} s after): peak {backup_peak:.1} MiB, transient",
            pass(growth <= allowed),
            BACKUP_SETTLE.as_secs()
        );
        let fd_first = warm[..3].iter().map(|s| s.fds).max().unwrap_or(0);
        let fd_last = warm[warm.len() - 3..].iter().map(|s| s.fds).max().unwrap_or(0);
        let fd_max = warm.iter().map(|s| s.fds).max().unwrap_or(0);
        // Under load the fds follow the connections in flight (clients + upstream pool), so
        // the bound is the start's level plus one connection pair per client thread.
        let fd_allowed = fd_first + 2 * conns as u64 + 4;
        let _ = writeln!(
            out,
            "- {} — open fds stay bounded: {fd_first} after warm-up, {fd_last} at the end, max {fd_max} (allowed {fd_allowed}); {idle_fds} idle after the run",
            pass(fd_last <= fd_allowed && fd_max <= fd_allowed + 2 * conns as u64)
        );
    } else {
        let _ = writeln!(out, "- n/a — too few samples after warm-up for a verdict (run longer)");
    }
    let _ = writeln!(out, "- {} — no error of an unexpected kind: {unexpected}", pass(unexpected == 0));
    let _ = writeln!(out, "- {} — every config reload applied: {reload_ok} of {reloads}", pass(reload_ok >= reloads));
    let _ = writeln!(out, "- {} — every backup while serving succeeded: {} of {}", pass(failed_backups == 0), ok_backups.len(), backups.len());
    out
}
