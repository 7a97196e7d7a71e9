//! Graceful upgrade (docs/upgrades.md): a new process takes the listening sockets and then the
//! store over while a load runs; nothing fails and billing stays exact.
//!
//! The load uses a small raw HTTP/1.1 client so that every failure is seen and counted: a
//! refused or reset connection, a status other than 200, a truncated body or stream. It
//! retries in one case only, as browsers do: a request sent on a reused keep-alive connection
//! that the server closed before sending any byte of a response (docs/upgrades.md says which
//! clients resend it). That is the idle-connection race of HTTP/1.1:
//! the old process closes idle keep-alive connections when it stops, and a request written
//! at that instant was never read (so never run, never billed). Those retries are counted
//! and reported separately; the billing check below would catch one that had been billed.

use crate::common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Stats {
    ok: usize,
    failures: Vec<String>,
    /// Requests re-sent after the server closed an idle keep-alive connection under them.
    idle_retries: usize,
    generations: Vec<String>,
    /// (start, end) of every completed stream.
    streams: Vec<(Instant, Instant)>,
}

struct Resp {
    status: u16,
    close: bool,
    generation: Option<String>,
    body: Vec<u8>,
}

enum Fail {
    /// Nothing of a response arrived (write failed, or EOF/reset before the status line).
    BeforeResponse(String),
    During(String),
}

fn connect(port: u16) -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_nodelay(true)?;
    Ok(BufReader::new(s))
}

fn chat_request(key: &str, stream: bool, close: bool) -> Vec<u8> {
    let body = json!({"model": "mock/echo-1", "stream": stream, "messages": [{"role": "user", "content": "Hello there"}]}).to_string();
    // A stream of 12 words, 120 ms apart: about 1.5 s.
    let slow = if stream { "x-mock-words: 12\r\nx-mock-chunk-delay-ms: 120\r\n" } else { "" };
    let connection = if close { "close" } else { "keep-alive" };
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nConnection: {connection}\r\n{slow}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn exchange(conn: &mut BufReader<TcpStream>, req: &[u8]) -> Result<Resp, Fail> {
    conn.get_mut().write_all(req).map_err(|e| Fail::BeforeResponse(format!("write: {e}")))?;
    let mut line = String::new();
    match conn.read_line(&mut line) {
        Ok(0) => return Err(Fail::BeforeResponse("connection closed before the response".into())),
        Err(e) => return Err(Fail::BeforeResponse(format!("read: {e}"))),
        Ok(_) => {}
    }
    let during = |e: std::io::Error| Fail::During(e.to_string());
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| Fail::During(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if conn.read_line(&mut h).map_err(during)? == 0 {
            return Err(Fail::During("EOF in headers".into()));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(len) = get("content-length") {
        body.resize(len.parse().map_err(|_| Fail::During("bad content-length".into()))?, 0);
        conn.read_exact(&mut body).map_err(during)?;
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            if conn.read_line(&mut size).map_err(during)? == 0 {
                return Err(Fail::During("EOF in a chunked body".into()));
            }
            let n = usize::from_str_radix(size.trim(), 16).map_err(|_| Fail::During(format!("bad chunk size {size:?}")))?;
            let mut chunk = vec![0; n + 2];
            conn.read_exact(&mut chunk).map_err(during)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        conn.read_to_end(&mut body).map_err(during)?;
    }
    Ok(Resp {
        status,
        close: get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")),
        generation: get("x-generation-id"),
        body,
    })
}

/// Checks a response and files it.
fn record(stats: &Mutex<Stats>, resp: &Resp, stream: bool) -> bool {
    let text = String::from_utf8_lossy(&resp.body);
    let complete = if stream { text.contains("[DONE]") } else { text.contains("\"choices\"") };
    let mut s = stats.lock().unwrap();
    match (&resp.generation, resp.status == 200 && complete) {
        (Some(g), true) => {
            s.ok += 1;
            s.generations.push(g.clone());
            true
        }
        _ => {
            s.failures.push(format!("status {} (complete: {complete}): {}", resp.status, text.chars().take(300).collect::<String>()));
            false
        }
    }
}

/// Keep-alive client: one connection for as long as the server keeps it open.
fn keep_alive_worker(port: u16, key: &str, stop: &AtomicBool, stats: &Mutex<Stats>) {
    let req = chat_request(key, false, false);
    let mut kept: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut retried = false;
        loop {
            let (mut conn, reused) = match kept.take() {
                Some(c) => (c, true),
                None => match connect(port) {
                    Ok(c) => (c, false),
                    Err(e) => {
                        stats.lock().unwrap().failures.push(format!("connect: {e}"));
                        break;
                    }
                },
            };
            match exchange(&mut conn, &req) {
                Ok(resp) => {
                    if record(stats, &resp, false) && !resp.close {
                        kept = Some(conn);
                    }
                    break;
                }
                Err(Fail::BeforeResponse(_)) if reused && !retried => {
                    stats.lock().unwrap().idle_retries += 1;
                    retried = true;
                }
                Err(Fail::BeforeResponse(e) | Fail::During(e)) => {
                    stats.lock().unwrap().failures.push(format!("keep-alive (reused {reused}): {e}"));
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One connection per request (`Connection: close`), streaming or not. No retries.
fn new_connection_worker(port: u16, key: &str, stream: bool, stop: &AtomicBool, stats: &Mutex<Stats>) {
    let req = chat_request(key, stream, true);
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        match connect(port) {
            Err(e) => stats.lock().unwrap().failures.push(format!("connect: {e}")),
            Ok(mut conn) => match exchange(&mut conn, &req) {
                Ok(resp) => {
                    if record(stats, &resp, stream) && stream {
                        stats.lock().unwrap().streams.push((start, Instant::now()));
                    }
                }
                Err(Fail::BeforeResponse(e) | Fail::During(e)) => {
                    stats.lock().unwrap().failures.push(format!("new connection (stream {stream}): {e}"))
                }
            },
        }
        if !stream {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Waits until `path`'s text contains `needle`; returns the line holding it.
fn wait_for_log(path: &Path, needle: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(start.elapsed() < timeout, "no {needle:?} in {} within {timeout:?}:\n{text}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `tollgate serve --upgrade` on the gateway's config, logging to `<dir>/<tag>.log`.
fn spawn_upgrade(gw: &Gateway, tag: &str) -> (Proc, PathBuf) {
    let log = gw.dir.join(format!("{tag}.log"));
    let stderr = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--upgrade", "--config"])
        .arg(&gw.config_path)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TOLLGATE_TEST_PROVIDER_KEY", PROVIDER_KEY)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn tollgate serve --upgrade");
    (Proc { child }, log)
}

fn journals(data: &Path) -> Vec<String> {
    std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("handoff-"))
        .collect()
}

/// nano-USD from an exact decimal string ("0.000123").
fn nano(text: &str) -> i64 {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let frac = format!("{frac:0<9}");
    whole.parse::<i64>().unwrap() * 1_000_000_000 + frac[..9].parse::<i64>().unwrap()
}

#[test]
fn an_upgrade_under_load_fails_nothing_and_bills_exactly() {
    let mut gw = Gateway::start();
    let (account, key) = gw.account_with_key("100");
    let data = gw.dir.join("data");
    let a_log = gw.dir.join("stderr.log");
    let stop = AtomicBool::new(false);
    let stats = Mutex::new(Stats::default());
    let test_start = Instant::now();

    let (mut b, b_log, handoff_at, waited_ms) = std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| keep_alive_worker(gw.port, &key, &stop, &stats));
            s.spawn(|| new_connection_worker(gw.port, &key, false, &stop, &stats));
            s.spawn(|| new_connection_worker(gw.port, &key, true, &stop, &stats));
        }
        std::thread::sleep(Duration::from_millis(1000));

        // The new binary waits for the sockets; then the old one is told to hand them over.
        let (b, b_log) = spawn_upgrade(&gw, "b");
        let sock = data.join("upgrade.sock");
        let start = Instant::now();
        while !sock.exists() {
            assert!(start.elapsed() < Duration::from_secs(20), "the new process never listened on {}", sock.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        gw.signal("QUIT");
        // Pingora keeps the old process accepting for 5 s, then it stops and hands the store over.
        wait_for_log(&a_log, "upgrade: handing the store over", Duration::from_secs(20));
        let handoff_at = Instant::now();
        let opened = wait_for_log(&b_log, "store opened after waiting", Duration::from_secs(20));
        let waited_ms: u64 = opened.split("after waiting ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
        // The load keeps going on the new process.
        std::thread::sleep(Duration::from_millis(3000));
        stop.store(true, Ordering::Relaxed);
        (b, b_log, handoff_at, waited_ms)
    });

    let stats = stats.into_inner().unwrap();
    let across = stats.streams.iter().filter(|(start, end)| *start < handoff_at && *end > handoff_at).count();
    eprintln!(
        "upgrade under load: {} requests OK, {} failed, {} idle keep-alive retries, {} streams ({} in flight on the old process at the handoff), new process waited {} ms for the store, {:?} in all",
        stats.ok,
        stats.failures.len(),
        stats.idle_retries,
        stats.streams.len(),
        across,
        waited_ms,
        test_start.elapsed()
    );
    assert!(stats.failures.is_empty(), "failed requests: {:#?}", stats.failures);
    assert!(stats.ok > 100, "too little load: {}", stats.ok);
    assert!(across >= 1, "no stream was in flight on the old process when it handed the store over");

    // The old process exits by itself, once its streams are done.
    let a_status = gw.proc.as_mut().unwrap().wait_exit(Duration::from_secs(20));
    assert!(a_status.success(), "old process: {a_status:?}");
    gw.proc = None;
    let a_text = std::fs::read_to_string(&a_log).unwrap();
    assert!(a_text.contains("store closed; later charges go to"), "{a_text}");
    assert!(a_text.contains("handoff journal") && a_text.contains("complete"), "{a_text}");

    // The new process applied the journal and removed it.
    let start = Instant::now();
    while !journals(&data).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "journal never removed: {:?}", journals(&data));
        std::thread::sleep(Duration::from_millis(20));
    }
    let applied = wait_for_log(&b_log, "applied (", Duration::from_secs(5));
    eprintln!("{applied}");
    assert!(b.child.try_wait().unwrap().is_none(), "the new process is running");

    // Billing is exact: one charge per successful request, balance = grants − charges.
    let http = client();
    let mut sum = 0i64;
    for id in &stats.generations {
        let r = http.get(gw.url(&format!("/v1/generation?id={id}"))).bearer_auth(&key).send().unwrap();
        assert_eq!(r.status(), 200, "generation {id} not recorded");
        let g: Value = r.json().unwrap();
        assert_eq!(g["data"]["id"], id.as_str());
        sum += nano(g["data"]["total_cost_usd"].as_str().unwrap());
    }
    assert!(sum > 0);
    let usage: Value = http.get(gw.url(&format!("/v1/usage?account_id={account}"))).bearer_auth(ADMIN_TOKEN).send().unwrap().json().unwrap();
    assert_eq!(usage["total"]["requests"], stats.ok as u64, "one record per successful request: {usage}");
    assert_eq!(usage["total"]["failed"], 0, "{usage}");
    assert_eq!(nano(usage["total"]["cost_usd"].as_str().unwrap()), sum, "{usage}");
    let credits = gw.credits(&key);
    let used = usd(&credits["data"]["total_usage"]);
    assert!((used - sum as f64 / 1e9).abs() < 1e-9, "{credits} vs {sum} nano");
    assert!((usd(&credits["data"]["total_credits"]) - 100.0).abs() < 1e-9, "{credits}");
    assert!((usd(&credits["data"]["remaining"]) - (100.0 - used)).abs() < 1e-9, "{credits}");

    // And it is what the ledger on disk says: restart the new process normally and compare.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    gw.spawn();
    let after = gw.credits(&key);
    assert_eq!(after["data"], credits["data"], "balances after a restart (re-derived from the ledger)");
    assert!(test_start.elapsed() < Duration::from_secs(60));
}

/// The new process dies right after it got the sockets (here: the test takes them and drops
/// them): the old process still stops, as Pingora does after SIGQUIT, and journals what
/// settles after the handoff. Killed with -9 half-way, it leaves a journal without its end
/// mark; the next start applies it before serving, then removes it.
#[test]
fn a_journal_left_by_a_killed_process_is_applied_at_the_next_start() {
    let mut gw = Gateway::start();
    let (_, key) = gw.account_with_key("10");
    let data = gw.dir.join("data");
    // Takes the sockets, never uses them (dropped before the restart: sockets in flight in
    // its queue keep the ports bound).
    let taker = std::os::unix::net::UnixListener::bind(data.join("upgrade.sock")).unwrap();
    let url = gw.url("/v1/chat/completions");
    let stream = |words: u32| {
        client()
            .post(&url)
            .bearer_auth(&key)
            .header("x-mock-words", words.to_string())
            .header("x-mock-chunk-delay-ms", "120")
            .json(&json!({"model": "mock/echo-1", "stream": true, "messages": [{"role": "user", "content": "Hello there"}]}))
            .send()
    };
    let (short, journal_text) = std::thread::scope(|s| {
        // About 7 s: it settles after the handoff (Pingora's 5 s after SIGQUIT).
        let short = s.spawn(|| {
            let r = stream(60).unwrap();
            let id = r.headers()["x-generation-id"].to_str().unwrap().to_string();
            (id, r.text().unwrap())
        });
        // About 24 s: still running when the process is killed.
        let long = s.spawn(|| stream(200).and_then(|r| r.text()));
        std::thread::sleep(Duration::from_millis(300));
        gw.signal("QUIT");
        let short = short.join().unwrap();
        // Its charge reaches the journal (fsync'd before acknowledged), then: kill -9.
        let journal = data.join(format!("handoff-{}.jsonl", gw.pid()));
        let start = Instant::now();
        let text = loop {
            let text = std::fs::read_to_string(&journal).unwrap_or_default();
            if text.contains(&short.0) {
                break text;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "the charge never reached {}:\n{}", journal.display(), gw.stderr());
            std::thread::sleep(Duration::from_millis(20));
        };
        gw.signal("KILL");
        // The long stream dies with its process (a crash is not an upgrade).
        let _ = long.join().unwrap();
        (short, text)
    });
    gw.kill9(); // reaps it
    drop(taker);
    assert!(short.1.contains("[DONE]"), "the short stream completed: {}", short.1);
    assert!(!journal_text.contains("\"end\":true"), "killed before its end mark");
    assert_eq!(journals(&data).len(), 1);

    // A normal start applies the leftover journal before it serves anything.
    gw.spawn();
    assert!(journals(&data).is_empty(), "applied and removed: {:?}", journals(&data));
    assert!(gw.stderr().contains("applied ("), "{}", gw.stderr());
    let g = gw.generation_eventually(&key, &short.0);
    let cost = nano(g["total_cost_usd"].as_str().unwrap());
    assert!(cost > 0, "{g}");
    let credits = gw.credits(&key);
    assert!((usd(&credits["data"]["total_usage"]) - cost as f64 / 1e9).abs() < 1e-9, "{credits} vs {cost}");
    assert!((usd(&credits["data"]["remaining"]) - (10.0 - cost as f64 / 1e9)).abs() < 1e-9, "{credits}");
}
