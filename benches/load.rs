//! Whole-gateway load benchmark: the mock provider directly, a bare Pingora pass-through in
//! front of it, and `tollgate serve` in front of it (JSON and streaming), all on loopback.
//!
//! Run: `make bench` (= `cargo bench --bench load`). Knobs (environment):
//!
//! - `LOAD_CONNS` (default 32): keep-alive connections per run.
//! - `LOAD_SECS` (default 10): measured seconds per run, after a 2 s warm-up.
//! - `LOAD_ACCESS_LOG` (default true) and `LOAD_GW_THREADS` (default 2): gateway variants for
//!   investigating where time goes. A run with a non-default variant prints its table but does
//!   not overwrite `benches/results.md`, which holds the standard measurement.
//! - `LOAD_ONLY=tls`: only the TLS runs (keep-alive and new-connection-per-request, TLS vs
//!   plain, and 10,000 idle keep-alive connections); replaces only the TLS section of
//!   `benches/results.md`. `LOAD_IDLE_CONNS` (default 10000) sets the idle-connection count.
//! - `TMPDIR` (read by `std::env::temp_dir`) decides where the gateway's store lives. Leave it
//!   unset for the standard run: /tmp is on the real disk, so the store's fsyncs are counted.
//!
//! The same binary doubles as the bare Pingora proxy: started with
//! `--passthrough LISTEN UPSTREAM` it runs a `ProxyHttp` that only picks the peer. That is the
//! baseline the gateway is held to (≥ 80% of its throughput): same Pingora version, same
//! thread count, same upstream, nothing of the gateway's own work.
//!
//! The load generator is a small hand-rolled HTTP/1.1 client on a *single-threaded* tokio
//! runtime. The machine this runs on has 2 cores shared by the load generator, the proxy under
//! test (2 worker threads) and the mock (2 worker threads); one generator thread keeps the
//! generator's share of the CPU bounded and equal across runs, so the proxies' differences
//! show instead of scheduler noise. The flip side: the "mock directly" row can be limited by
//! the generator itself, so read it as a ceiling of the setup, not of the mock.
//!
//! Every child process is killed when its guard drops (normal end and panics), and a watchdog
//! kills them and exits if the whole run overruns its time budget. The exit status is non-zero
//! only when the harness itself fails (a server does not start, setup requests fail, a run
//! gets no successful response); a missed target is reported, not fatal.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;
use support::{admin_post, free_port, rss_kib, start_watchdog, utc_now, ChildGuard};

/// The release-profile gateway binary Cargo built for this bench.
const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const RESULTS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results.md");

const ADMIN_TOKEN: &str = "load-bench-admin-token-0123456789";
/// The mock requires this key, so every path (direct, pass-through, gateway) carries an
/// `Authorization` header of similar size and the mock does the same work in each run.
const PROVIDER_KEY: &str = "load-bench-upstream-key-0123456789";
const MODEL: &str = "mock/echo-1";
const UPSTREAM_MODEL: &str = "echo-1";
/// Two healthy routes (both on the mock, under two upstream names).
const MODEL_TWO: &str = "bench/two-routes";
/// Served by a provider of kind `anthropic`: every chunk is translated.
const MODEL_CLAUDE: &str = "bench/claude";
/// Two routes, one of them on a mock that answers 500 to everything: ejected during warm-up.
const MODEL_HALF_FAILING: &str = "bench/one-route-failing";
/// The failing route first (priority 0) and never ejected: every request fails over.
const MODEL_ALWAYS_FAILOVER: &str = "bench/always-failover";

const WARMUP: Duration = Duration::from_secs(2);
/// Longest a single request may take before it counts as an error (keeps every run bounded).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

const TARGET_THROUGHPUT_RATIO: f64 = 0.80;
/// The second and third pass-through / gateway pairs (see the runs).
const PT_PAIR2: &str = "Pingora pass-through → mock (2nd pair)";
const GW_PAIR2: &str = "gateway → mock (2nd pair)";
const PT_PAIR3: &str = "Pingora pass-through → mock (3rd pair)";
const GW_PAIR3: &str = "gateway → mock (3rd pair)";
const TARGET_OVERHEAD_P99_US: u32 = 150;
const TARGET_IDLE_RSS_MB: f64 = 30.0;
/// With one of two routes failing every request, once it is ejected.
const TARGET_FAILING_ROUTE_RATIO: f64 = 0.90;
/// What a failover adds beyond the failed attempt's own time (p99 of the gateway's overhead,
/// upstream time of both attempts excluded).
const TARGET_FAILOVER_ADDED_P99_US: u32 = 1000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Child mode: the bare Pingora proxy. Checked first so nothing of the bench runs in it.
    if let Some(i) = args.iter().position(|a| a == "--passthrough") {
        let (Some(listen), Some(upstream)) = (args.get(i + 1), args.get(i + 2)) else {
            eprintln!("usage: load --passthrough LISTEN UPSTREAM");
            std::process::exit(2);
        };
        passthrough::run(listen, upstream);
    }
    // Any other argument (`cargo bench` passes `--bench`, and may pass filters) is ignored:
    // this bench is one fixed scenario.
    run_bench();
}

// ---------------------------------------------------------------------------------------------
// The bare Pingora pass-through

mod passthrough {
    use async_trait::async_trait;
    use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
    use pingora::server::configuration::ServerConf;
    use pingora::server::Server;
    use pingora::upstreams::peer::HttpPeer;
    use std::net::SocketAddr;

    /// Only chooses the peer; every other phase is Pingora's default.
    struct Pass {
        upstream: SocketAddr,
    }

    #[async_trait]
    impl ProxyHttp for Pass {
        type CTX = ();

        fn new_ctx(&self) -> Self::CTX {}

        async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> pingora::Result<Box<HttpPeer>> {
            Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
        }
    }

    pub fn run(listen: &str, upstream: &str) -> ! {
        let upstream: SocketAddr = upstream.parse().expect("UPSTREAM must be ip:port");
        // Same shape as the mock's server: our own conf so Pingora never parses argv, and a
        // quick shutdown. Two threads, like the gateway in the bench.
        let conf = ServerConf {
            threads: 2,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(1),
            ..Default::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let mut service = http_proxy_service(&server.configuration, Pass { upstream });
        service.add_tcp(listen);
        server.add_service(service);
        server.run_forever()
    }
}

// ---------------------------------------------------------------------------------------------
// Settings

struct Settings {
    conns: usize,
    secs: u64,
    access_log: bool,
    gw_threads: usize,
    /// `LOAD_ONLY=tls`: only the TLS section.
    tls_only: bool,
    idle_conns: usize,
}

impl Settings {
    fn from_env() -> Settings {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => {
                    v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not valid"))
                }
                _ => default,
            }
        }
        let s = Settings {
            conns: var("LOAD_CONNS", 32usize),
            secs: var("LOAD_SECS", 10u64),
            access_log: var("LOAD_ACCESS_LOG", true),
            gw_threads: var("LOAD_GW_THREADS", 2usize),
            tls_only: match std::env::var("LOAD_ONLY").as_deref().map(str::trim) {
                Ok("tls") => true,
                Ok("") | Err(_) => false,
                Ok(other) => panic!("LOAD_ONLY={other:?}: only \"tls\" is known"),
            },
            idle_conns: var("LOAD_IDLE_CONNS", 10_000usize),
        };
        assert!(s.conns > 0 && s.secs > 0, "LOAD_CONNS and LOAD_SECS must be positive");
        s
    }

    /// The standard measurement (what `benches/results.md` records).
    fn is_standard_variant(&self) -> bool {
        self.access_log && self.gw_threads == 2
    }
}

// ---------------------------------------------------------------------------------------------
// Scratch space and /proc (the child-process guard and the watchdog are in `support`)

/// A scratch directory removed when dropped (declared before the children, so dropped after).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("tollgate-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// CPU time (user + system) `pid` has used so far, from /proc/<pid>/stat (Linux only).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is parenthesised and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // In USER_HZ ticks, which Linux fixes at 100 per second for user space.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Busy CPU time of the whole machine so far (all cores; idle and iowait excluded).
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    let busy = f.iter().take(8).sum::<u64>().checked_sub(f.get(3)? + f.get(4)?)?;
    Some(Duration::from_millis(busy * 10))
}

// ---------------------------------------------------------------------------------------------
// The scenario

fn run_bench() {
    let settings = Settings::from_env();
    // Fifteen runs (unless TLS only) and five TLS runs of warm-up + measurement + the request
    // timeout, two idle-connection runs, plus startup and setup.
    let per_run = WARMUP + Duration::from_secs(settings.secs) + REQUEST_TIMEOUT;
    let runs = if settings.tls_only { 5 } else { 20 };
    start_watchdog("load bench", per_run * runs + STARTUP_TIMEOUT * 4 + Duration::from_secs(180));
    // The idle-connection runs hold thousands of sockets here and in the gateway (which
    // inherits the limit): raise the soft fd limit before anything is spawned.
    let fd_limit = raise_fd_limit(settings.idle_conns as u64 + 1024);

    let tmp = TempDir::new();
    // A development CA and a localhost certificate for the gateway's TLS listener.
    let certs = tmp.0.join("certs");
    let ok = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gen-certs.sh"))
        .arg(&certs)
        .stdout(Stdio::null())
        .status()
        .expect("run scripts/gen-certs.sh");
    assert!(ok.success(), "scripts/gen-certs.sh failed");
    let tls_port = free_port();
    let tls_lines = format!(
        "[server]\ntls_listen = [\"127.0.0.1:{tls_port}\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        certs.join("server.pem").display(),
        certs.join("server.key").display()
    );
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("reqwest client");

    // 1. The mock provider.
    let mock_port = free_port();
    let mut mock = ChildGuard::spawn(
        "mock-upstream",
        Command::new(BIN)
            .args(["mock-upstream", "--listen", &format!("127.0.0.1:{mock_port}")])
            .args(["--api-key", PROVIDER_KEY])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
        tmp.0.join("mock.stderr"),
    );
    mock.wait_for_port(mock_port, STARTUP_TIMEOUT);
    // A second mock that fails every request with a 500: the failing route of the routing runs.
    let failing_port = free_port();
    let mut failing = ChildGuard::spawn(
        "mock-upstream (failing)",
        Command::new(BIN)
            .args(["mock-upstream", "--listen", &format!("127.0.0.1:{failing_port}")])
            .args(["--api-key", PROVIDER_KEY])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
        tmp.0.join("failing-mock.stderr"),
    );
    failing.wait_for_port(failing_port, STARTUP_TIMEOUT);
    let r = http
        .post(format!("http://127.0.0.1:{failing_port}/_mock/faults"))
        .json(&json!({"status": 500}))
        .send()
        .expect("set the failing mock's faults");
    assert!(r.status().is_success(), "set the failing mock's faults: {}", r.status());

    // 2. The bare Pingora pass-through: this very binary in `--passthrough` mode.
    let pass_port = free_port();
    let me = std::env::current_exe().expect("current_exe");
    let mut pass = ChildGuard::spawn(
        "passthrough",
        Command::new(me)
            .arg("--passthrough")
            .arg(format!("127.0.0.1:{pass_port}"))
            .arg(format!("127.0.0.1:{mock_port}"))
            .stdout(Stdio::null()),
        tmp.0.join("passthrough.stderr"),
    );
    pass.wait_for_port(pass_port, STARTUP_TIMEOUT);

    // 3. The gateway. Its access log stays on (a product feature whose cost we measure), but
    //    goes to /dev/null so the terminal or a file system is not what we benchmark.
    let gw_port = free_port();
    let metrics_port = free_port();
    let config_path = tmp.0.join("tollgate.toml");
    std::fs::write(
        &config_path,
        gateway_config(gw_port, metrics_port, &tmp.0.join("data"), mock_port, failing_port, &settings)
            .replacen("[server]\n", &tls_lines, 1),
    )
    .expect("write config");
    let mut gw = ChildGuard::spawn(
        "tollgate serve",
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TOLLGATE_BENCH_PROVIDER_KEY", PROVIDER_KEY)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null()),
        tmp.0.join("gateway.stderr"),
    );
    gw.wait_for_port(gw_port, STARTUP_TIMEOUT);
    wait_ready(&http, gw_port, &gw);
    let (key, limited_key) = create_account_and_key(&http, gw_port);

    // The four request shapes, checked once each so a broken setup fails here with a clear
    // message instead of as a table full of errors.
    let plain = json!({"model": UPSTREAM_MODEL, "messages": [{"role": "user", "content": "Hello"}]});
    let gw_json = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]});
    let gw_stream = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "stream": true});
    smoke(&http, mock_port, PROVIDER_KEY, &plain, false, false);
    smoke(&http, pass_port, PROVIDER_KEY, &plain, false, false);
    smoke(&http, gw_port, &key, &gw_json, false, true);
    smoke(&http, gw_port, &key, &gw_stream, true, true);
    let gw_claude = json!({"model": MODEL_CLAUDE, "messages": [{"role": "user", "content": "Hello"}], "stream": true});
    smoke(&http, gw_port, &key, &gw_claude, true, true);
    smoke(&http, gw_port, &limited_key, &gw_json, false, true);
    let routed = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "Hello"}]});
    let (gw_two, gw_half, gw_always) = (routed(MODEL_TWO), routed(MODEL_HALF_FAILING), routed(MODEL_ALWAYS_FAILOVER));
    smoke(&http, gw_port, &key, &gw_two, false, true);
    smoke(&http, gw_port, &key, &gw_always, false, true);

    // 4. Idle RSS: after startup and a short warm-up (a few dozen requests of each shape, so
    //    lazily built state and buffer pools exist), then a pause so nothing is in flight.
    for _ in 0..25 {
        smoke(&http, gw_port, &key, &gw_json, false, true);
        smoke(&http, gw_port, &key, &gw_stream, true, true);
    }
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss_kib = rss_kib(gw.pid()).expect("read the gateway's VmRSS from /proc");

    // 5 & 6. The runs, one after another so they never share the CPU.
    let (mock_pid, pass_pid, gw_pid) = (mock.pid(), pass.pid(), gw.pid());
    let targets = [
        Target::new("mock directly", mock_port, PROVIDER_KEY, &plain, false, None, mock_pid),
        Target::new("Pingora pass-through → mock", pass_port, PROVIDER_KEY, &plain, false, Some(pass_pid), mock_pid),
        Target::new("gateway → mock", gw_port, &key, &gw_json, false, Some(gw_pid), mock_pid),
        // Two more pass-through/gateway pairs, back to back: one run of either varies by up to
        // a fifth from one run to the next on this VM (the pass-through from 24.8k to 30.5k req/s
        // in two runs of the same build), so the throughput target takes the median of the
        // three pairs' ratios.
        Target::new(PT_PAIR2, pass_port, PROVIDER_KEY, &plain, false, Some(pass_pid), mock_pid),
        Target::new(GW_PAIR2, gw_port, &key, &gw_json, false, Some(gw_pid), mock_pid),
        Target::new(PT_PAIR3, pass_port, PROVIDER_KEY, &plain, false, Some(pass_pid), mock_pid),
        Target::new(GW_PAIR3, gw_port, &key, &gw_json, false, Some(gw_pid), mock_pid),
        Target::new("gateway → mock, streaming", gw_port, &key, &gw_stream, true, Some(gw_pid), mock_pid),
        Target::new("gateway → 2 healthy routes", gw_port, &key, &gw_two, false, Some(gw_pid), mock_pid),
        Target::new("gateway → 2 routes, one failing (ejected)", gw_port, &key, &gw_half, false, Some(gw_pid), mock_pid),
        Target::new("gateway → failover on every request", gw_port, &key, &gw_always, false, Some(gw_pid), mock_pid),
        // The limited key between two runs of the plain key, compared with their mean: the store
        // grows with every run (a fifth of a million records each), so a plain run a minute
        // earlier is not the same gateway.
        Target::new("gateway → mock, plain key (before the limited run)", gw_port, &key, &gw_json, false, Some(gw_pid), mock_pid),
        Target::new("gateway → mock, key with every limit", gw_port, &limited_key, &gw_json, false, Some(gw_pid), mock_pid),
        Target::new("gateway → mock, plain key (after the limited run)", gw_port, &key, &gw_json, false, Some(gw_pid), mock_pid),
        Target::new("gateway → Anthropic-format mock, streaming (translated)", gw_port, &key, &gw_claude, true, Some(gw_pid), mock_pid),
    ];
    let mut results = Vec::new();
    let standard_targets: &[Target] = if settings.tls_only { &[] } else { &targets };
    for target in standard_targets {
        if target.name == "gateway → failover on every request" {
            // The failing route must stay in the path: reload with a failure threshold no run
            // reaches (health is kept across the reload; only the threshold changes).
            let config = gateway_config(gw_port, metrics_port, &tmp.0.join("data"), mock_port, failing_port, &settings)
                .replacen("[server]\n", &tls_lines, 1)
                .replace("failure_threshold = 3", "failure_threshold = 4000000000")
                + "\n[[aliases]]\nname = \"bench/reloaded\"\nmodels = [\"mock/echo-1\"]\n";
            std::fs::write(&config_path, config).expect("rewrite config");
            let start = Instant::now();
            loop {
                let probe = json!({"model": "bench/reloaded", "messages": [{"role": "user", "content": "Hello"}]});
                let r = http
                    .post(format!("http://127.0.0.1:{gw_port}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&probe)
                    .send();
                if r.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                assert!(start.elapsed() < STARTUP_TIMEOUT, "the gateway never reloaded its config");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        eprintln!("load bench: {} ({} conns, {} s + {} s warm-up)…", target.name, settings.conns, settings.secs, WARMUP.as_secs());
        let r = run_load(target, settings.conns, settings.secs);
        if r.latencies_us.is_empty() {
            panic!(
                "run '{}' got no successful response ({} errors; first: {})",
                target.name,
                r.errors,
                r.first_error.as_deref().unwrap_or("none")
            );
        }
        if let Some(other) = r.other_cpu_percent.filter(|p| *p > 15.0) {
            eprintln!("load bench: {}: other processes used {other:.0}% of a core meanwhile; numbers are noisy", target.name);
        }
        if let Some(e) = &r.first_error {
            eprintln!("load bench: {}: {} errors; first: {e}", target.name, r.errors);
        }
        results.push(r);
    }
    // The gateway must have survived the load (a crash would otherwise only show as errors).
    if let Some(status) = gw.exited() {
        panic!("the gateway exited during the runs ({status}); stderr:\n{}", gw.stderr());
    }

    // 7. TLS: the gateway over TLS vs plain, keep-alive and one connection per request, and
    //    idle keep-alive connections.
    let tls_section = run_tls_section(&settings, &gw, gw_port, tls_port, &certs.join("ca.pem"), &key, &gw_json, mock_pid, fd_limit);
    if let Some(status) = gw.exited() {
        panic!("the gateway exited during the TLS runs ({status}); stderr:\n{}", gw.stderr());
    }

    // 8. Report.
    let report = if settings.tls_only {
        // Only the TLS section changes; the rest of the file keeps its last full measurement.
        let previous = std::fs::read_to_string(RESULTS_PATH).unwrap_or_default();
        let kept = previous.find(TLS_SECTION_HEADING).map_or(previous.as_str(), |i| &previous[..i]);
        format!("{}\n\n{tls_section}", kept.trim_end())
    } else {
        format!("{}\n{tls_section}", render_report(&settings, idle_rss_kib, &results))
    };
    println!("\n{}", if settings.tls_only { &tls_section } else { &report });
    if settings.is_standard_variant() {
        std::fs::write(RESULTS_PATH, &report).unwrap_or_else(|e| panic!("write {RESULTS_PATH}: {e}"));
        eprintln!("load bench: wrote {RESULTS_PATH}");
    } else {
        eprintln!("load bench: non-default gateway variant; {RESULTS_PATH} left unchanged");
    }
    let _ = std::io::stdout().flush();
    // Guards drop here: gateway, pass-through, mock, then the temp dir.
    drop((gw, pass, failing, mock, tmp));
}

fn gateway_config(port: u16, metrics_port: u16, data_dir: &Path, mock_port: u16, failing_port: u16, s: &Settings) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
data_dir = "{data}"
metrics_listen = "127.0.0.1:{metrics_port}"
admin_token_env = "TOLLGATE_ADMIN_TOKEN"
threads = {threads}
grace_period_secs = 1
reload_poll_ms = 1000
access_log = {access_log}

# Every connection of the bench comes from 127.0.0.1, as behind a load balancer: per-address
# caps off (docs/hardening.md).
[server.limits]
max_connections_per_ip = 0
max_requests_per_ip = 0

[providers.mock]
kind = "mock"
base_url = "http://127.0.0.1:{mock_port}/v1"
api_key_env = "TOLLGATE_BENCH_PROVIDER_KEY"

[[models]]
slug = "{MODEL}"
provider = "mock"
upstream_model = "{UPSTREAM_MODEL}"
context_length = 32768
max_output_tokens = 4096
input_per_mtok = 1.00
output_per_mtok = 2.00

# The Anthropic-translated run: the same mock, spoken to in Anthropic's Messages format.
[providers.claude]
kind = "anthropic"
base_url = "http://127.0.0.1:{mock_port}/v1"
api_key_env = "TOLLGATE_BENCH_PROVIDER_KEY"

[[models]]
slug = "{MODEL_CLAUDE}"
provider = "claude"
upstream_model = "claude-bench"
context_length = 32768
max_output_tokens = 4096
input_per_mtok = 3.00
output_per_mtok = 15.00

# Routing runs. The first ejection outlasts a run (10 s, then 20 s after a failed probe).
[routing]
failure_threshold = 3
ejection_secs = 10
max_ejection_secs = 300

[providers.failing]
kind = "mock"
base_url = "http://127.0.0.1:{failing_port}/v1"
api_key_env = "TOLLGATE_BENCH_PROVIDER_KEY"

[[models]]
slug = "{MODEL_TWO}"
provider = "mock"
upstream_model = "{UPSTREAM_MODEL}"
context_length = 32768
max_output_tokens = 4096
input_per_mtok = 1.00
output_per_mtok = 2.00
[[models.routes]]
provider = "mock"
upstream_model = "{UPSTREAM_MODEL}-b"

[[models]]
slug = "{MODEL_HALF_FAILING}"
provider = "failing"
upstream_model = "{UPSTREAM_MODEL}"
context_length = 32768
max_output_tokens = 4096
input_per_mtok = 1.00
output_per_mtok = 2.00
[[models.routes]]
provider = "mock"
upstream_model = "{UPSTREAM_MODEL}-c"

[[models]]
slug = "{MODEL_ALWAYS_FAILOVER}"
provider = "failing"
upstream_model = "{UPSTREAM_MODEL}-never-ejected"
context_length = 32768
max_output_tokens = 4096
input_per_mtok = 1.00
output_per_mtok = 2.00
max_attempts = 2
[[models.routes]]
provider = "mock"
upstream_model = "{UPSTREAM_MODEL}-d"
priority = 1
"#,
        data = data_dir.display(),
        threads = s.gw_threads,
        access_log = s.access_log,
    )
}

fn wait_ready(http: &reqwest::blocking::Client, port: u16, gw: &ChildGuard) {
    let start = Instant::now();
    while start.elapsed() < STARTUP_TIMEOUT {
        if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/readyz")).send() {
            if r.status() == 200 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("gateway not ready within {STARTUP_TIMEOUT:?}; stderr:\n{}", gw.stderr());
}

/// An account with plenty of credit and two API keys: (plain, with every limit set).
fn create_account_and_key(http: &reqwest::blocking::Client, port: u16) -> (String, String) {
    let admin = |path: &str, body: Value| admin_post(http, port, ADMIN_TOKEN, path, body);
    let account = admin("/v1/admin/accounts", json!({"email": "load-bench@example.com"}));
    let id = account["id"].as_u64().unwrap_or_else(|| panic!("no account id in {account}"));
    admin(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": "1000"}));
    let key = admin(&format!("/v1/admin/accounts/{id}/keys"), json!({"name": "load"}));
    // The same account's second key carries every per-key limit (set far above what a run
    // reaches), so the limited run measures the checks, not refusals.
    let limited = admin(
        &format!("/v1/admin/accounts/{id}/keys"),
        json!({"name": "load-limited", "rate_limit_rpm": 4_000_000_000u64, "tokens_per_minute": 4_000_000_000u64,
               "daily_cap_usd": "900", "monthly_cap_usd": "950"}),
    );
    let text = |k: &Value| k["key"].as_str().unwrap_or_else(|| panic!("no key in {k}")).to_string();
    (text(&key), text(&limited))
}

/// One request through reqwest; panics unless it succeeds (and streams to `[DONE]`).
fn smoke(http: &reqwest::blocking::Client, port: u16, key: &str, body: &Value, stream: bool, gateway: bool) {
    let r = http
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .unwrap_or_else(|e| panic!("smoke request to port {port}: {e}"));
    let status = r.status();
    let has_overhead = r.headers().contains_key("x-tollgate-overhead-us");
    let text = r.text().unwrap_or_default();
    assert!(status.is_success(), "smoke request to port {port}: {status}: {text}");
    assert!(!gateway || has_overhead, "gateway response without X-Tollgate-Overhead-Us");
    assert!(!stream || text.contains("data: [DONE]"), "stream without data: [DONE]: {text}");
}

// ---------------------------------------------------------------------------------------------
// Load generation

struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// The whole request (head and body), built once and written as is on every request.
    request: Arc<[u8]>,
    stream: bool,
    /// The proxy in the path (pass-through or gateway), for its CPU per request and RSS.
    proxy_pid: Option<u32>,
    mock_pid: u32,
    /// Over TLS (rustls, HTTP/1.1) instead of plain TCP.
    tls: Option<ClientTls>,
    /// Requests per connection before the client closes it and connects (and, over TLS,
    /// handshakes) again; 0: as many as the run allows.
    per_conn: u32,
}

impl Target {
    fn new(
        name: &'static str,
        port: u16,
        key: &str,
        body: &Value,
        stream: bool,
        proxy_pid: Option<u32>,
        mock_pid: u32,
    ) -> Target {
        let body = body.to_string();
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\n\
             Host: 127.0.0.1:{port}\r\n\
             Authorization: Bearer {key}\r\n\
             Content-Type: application/json\r\n\
             Accept: */*\r\n\
             Content-Length: {}\r\n\
             \r\n\
             {body}",
            body.len()
        );
        Target {
            name,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            request: request.into_bytes().into(),
            stream,
            proxy_pid,
            mock_pid,
            tls: None,
            per_conn: 0,
        }
    }

    fn over_tls(mut self, port: u16, tls: &ClientTls) -> Target {
        self.addr = SocketAddr::from(([127, 0, 0, 1], port));
        self.tls = Some(tls.clone());
        self
    }

    /// One request per connection: the request says `Connection: close`, and the client
    /// drops the connection after the response either way.
    fn one_request_per_connection(mut self) -> Target {
        let text = String::from_utf8_lossy(&self.request).replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1);
        self.request = text.into_bytes().into();
        self.per_conn = 1;
        self
    }

    /// Connection churn of a client with a pool: `n` requests per connection, then a new one.
    fn requests_per_connection(mut self, n: u32) -> Target {
        self.per_conn = n;
        self
    }
}

struct RunResult {
    name: &'static str,
    secs: f64,
    /// Successful requests' latencies in µs, sorted.
    latencies_us: Vec<u32>,
    /// `X-Tollgate-Overhead-Us` of successful requests, sorted (empty off the gateway).
    overhead_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    /// The proxy's RSS at the end of the window (pass-through and gateway runs).
    rss_kib: Option<u64>,
    /// CPU time per successful request, in µs, of the proxy and of the mock: where the two
    /// cores went, which is what explains a throughput gap between the proxies.
    proxy_cpu_us: Option<f64>,
    mock_cpu_us: Option<f64>,
    /// The load generator's own CPU per request: the third share of the two cores.
    client_cpu_us: Option<f64>,
    /// How much of the machine's CPU (both cores) went unused during the window, in %: near
    /// zero, throughput is the cores divided by the CPU a request costs everyone.
    idle_percent: Option<f64>,
    /// CPU used during the window by processes outside this bench (other builds or tests on
    /// a shared machine), in % of one core. Large values mean the run is not trustworthy.
    other_cpu_percent: Option<f64>,
}

#[derive(Default)]
struct ConnStats {
    latencies_us: Vec<u32>,
    overhead_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

impl ConnStats {
    fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }
}

fn run_load(target: &Target, conns: usize, secs: u64) -> RunResult {
    // One thread: see the module docs. A fresh runtime per run so nothing carries over.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let start = Instant::now();
        let measure_from = start + WARMUP;
        let measure_to = measure_from + Duration::from_secs(secs);
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                tokio::spawn(connection_loop(
                    target.addr,
                    target.tls.clone(),
                    target.per_conn,
                    target.request.clone(),
                    target.stream,
                    measure_from,
                    measure_to,
                ))
            })
            .collect();
        // CPU used by the servers over the window, and RSS under load: sampled at the window's
        // start and just before it closes, while every connection is busy.
        let cpu = |pid: Option<u32>| pid.and_then(cpu_time);
        let me = Some(std::process::id());
        tokio::time::sleep_until(tokio::time::Instant::from_std(measure_from)).await;
        let (proxy0, mock0, me0, busy0) = (cpu(target.proxy_pid), cpu(Some(target.mock_pid)), cpu(me), machine_busy());
        let t0 = Instant::now();
        tokio::time::sleep_until(tokio::time::Instant::from_std(measure_to - Duration::from_millis(100))).await;
        let (proxy1, mock1, me1, busy1) = (cpu(target.proxy_pid), cpu(Some(target.mock_pid)), cpu(me), machine_busy());
        let t1 = Instant::now();
        let delta = |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?));
        let ours = [delta(proxy0, proxy1), delta(mock0, mock1), delta(me0, me1)]
            .into_iter()
            .flatten()
            .sum::<Duration>();
        let other_cpu_percent = delta(busy0, busy1)
            .map(|busy| busy.saturating_sub(ours).as_secs_f64() / (t1 - t0).as_secs_f64() * 100.0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let idle_percent = delta(busy0, busy1)
            .map(|busy| (100.0 - busy.as_secs_f64() / (t1 - t0).as_secs_f64() / cores * 100.0).max(0.0));
        // The pass-through's RSS too: the baseline for the gateway's.
        let rss_kib = target.proxy_pid.and_then(rss_kib);
        let mut all = ConnStats::default();
        for t in tasks {
            let s = t.await.expect("connection task panicked");
            all.latencies_us.extend_from_slice(&s.latencies_us);
            all.overhead_us.extend_from_slice(&s.overhead_us);
            all.errors += s.errors;
            if all.first_error.is_none() {
                all.first_error = s.first_error;
            }
        }
        all.latencies_us.sort_unstable();
        all.overhead_us.sort_unstable();
        // Requests completed while CPU was sampled, estimated from the window's mean rate.
        let sampled_requests = all.latencies_us.len() as f64 / secs as f64 * (t1 - t0).as_secs_f64();
        let per_request = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) if sampled_requests > 0.0 => {
                Some(b.saturating_sub(a).as_secs_f64() * 1e6 / sampled_requests)
            }
            _ => None,
        };
        RunResult {
            name: target.name,
            secs: secs as f64,
            latencies_us: all.latencies_us,
            overhead_us: all.overhead_us,
            errors: all.errors,
            first_error: all.first_error,
            rss_kib,
            proxy_cpu_us: per_request(proxy0, proxy1),
            mock_cpu_us: per_request(mock0, mock1),
            client_cpu_us: per_request(me0, me1),
            idle_percent,
            other_cpu_percent,
        }
    })
}

/// One keep-alive connection sending requests back to back until `measure_to`. Only requests
/// that start and finish inside [measure_from, measure_to] count, so warm-up and the requests
/// cut off at the end are left out of both throughput and latency.
#[allow(clippy::too_many_arguments)]
async fn connection_loop(
    addr: SocketAddr,
    tls: Option<ClientTls>,
    per_conn: u32,
    request: Arc<[u8]>,
    stream: bool,
    measure_from: Instant,
    measure_to: Instant,
) -> ConnStats {
    let mut stats = ConnStats::default();
    stats.latencies_us.reserve(64 * 1024);
    let mut conn: Option<Conn> = None;
    let mut resp = Response::default();
    let mut used = 0u32;
    loop {
        let t0 = Instant::now();
        if t0 >= measure_to {
            break;
        }
        let in_window = |t1: Instant| t0 >= measure_from && t1 <= measure_to;
        if conn.is_none() {
            used = 0;
            match connect(addr, tls.as_ref()).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    if in_window(Instant::now()) {
                        stats.error(|| e);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, c.exchange(&request, &mut resp)).await;
        let t1 = Instant::now();
        match outcome {
            Ok(Ok(())) => {
                used += 1;
                if !resp.keep_alive || used == per_conn {
                    conn = None;
                }
                if !in_window(t1) {
                    continue;
                }
                let ok = (200..300).contains(&resp.status);
                let done = !stream || memchr::memmem::find(&resp.body, b"data: [DONE]").is_some();
                if ok && done {
                    stats.latencies_us.push(micros(t1 - t0));
                    if let Some(o) = resp.overhead_us {
                        stats.overhead_us.push(o);
                    }
                } else if !ok {
                    let body = String::from_utf8_lossy(&resp.body[..resp.body.len().min(300)]).into_owned();
                    stats.error(|| format!("HTTP {}: {body}", resp.status));
                } else {
                    stats.error(|| "stream ended without data: [DONE]".to_string());
                }
            }
            Ok(Err(e)) => {
                conn = None;
                if in_window(t1) {
                    stats.error(|| format!("I/O: {e}"));
                }
            }
            Err(_) => {
                conn = None;
                if in_window(t1) {
                    stats.error(|| format!("no full response within {REQUEST_TIMEOUT:?}"));
                }
            }
        }
    }
    stats
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// What the client keeps of a response. Reused across requests: `body` keeps its capacity,
/// so the steady state allocates nothing per request.
#[derive(Default)]
struct Response {
    status: u16,
    keep_alive: bool,
    overhead_us: Option<u32>,
    body: Vec<u8>,
}

/// How the response body is delimited.
enum Framing {
    Length(usize),
    Chunked,
    /// No body by definition (1xx, 204, 304).
    Empty,
    /// HTTP/1.0 style: the body ends when the server closes the connection.
    UntilClose,
}

/// A client connection's transport: plain TCP or rustls over TCP.
enum Stream {
    Plain(TcpStream),
    Tls(Box<pingora::tls::ClientTlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connect (and, for a TLS target, handshake), bounded by `REQUEST_TIMEOUT`.
async fn connect(addr: SocketAddr, tls: Option<&ClientTls>) -> Result<Conn, String> {
    let tcp = match tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("connect: {e}")),
        Err(_) => return Err("connect: timeout".to_string()),
    };
    // Requests are written in one piece; Nagle would only add delay.
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else { return Ok(Conn::new(Stream::Plain(tcp))) };
    let connector = pingora::tls::TlsConnector::from(tls.config.clone());
    match tokio::time::timeout(REQUEST_TIMEOUT, connector.connect(tls.name.clone(), tcp)).await {
        Ok(Ok(s)) => Ok(Conn::new(Stream::Tls(Box::new(s)))),
        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
        Err(_) => Err("TLS handshake: timeout".to_string()),
    }
}

/// What a TLS target's client needs: a rustls config (trusting the bench's CA) and the name.
#[derive(Clone)]
struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

impl ClientTls {
    /// `resume`: TLS session resumption on (tickets / session ids) or off (every new
    /// connection a full handshake).
    fn new(ca_pem: &Path, resume: bool) -> ClientTls {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca_pem).expect("read the bench CA") {
            roots.add(c.expect("bench CA PEM")).expect("bench CA");
        }
        let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        ClientTls { config: Arc::new(config), name: rustls::pki_types::ServerName::try_from("localhost").expect("name") }
    }
}

/// A client connection with its read buffer (bytes received but not yet parsed).
struct Conn {
    stream: Stream,
    buf: BytesMut,
}

impl Conn {
    fn new(stream: Stream) -> Conn {
        Conn { stream, buf: BytesMut::with_capacity(64 * 1024) }
    }

    /// Read more bytes into the buffer; EOF is an error (a response was still expected).
    async fn fill(&mut self) -> std::io::Result<()> {
        // `reserve` reclaims the already-consumed front of the buffer when it can, so this
        // does not allocate in the steady state.
        self.buf.reserve(16 * 1024);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Index of the next CRLF in the buffer, reading more until there is one.
    async fn line_end(&mut self) -> std::io::Result<usize> {
        loop {
            if let Some(i) = memchr::memmem::find(&self.buf, b"\r\n") {
                return Ok(i);
            }
            self.fill().await?;
        }
    }

    /// Send one request and read its whole response into `resp`.
    async fn exchange(&mut self, request: &[u8], resp: &mut Response) -> std::io::Result<()> {
        self.stream.write_all(request).await?;
        resp.body.clear();

        let head_len = loop {
            if let Some(i) = memchr::memmem::find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let framing = parse_head(&self.buf[..head_len], resp)?;
        self.buf.advance(head_len);

        match framing {
            Framing::Empty => {}
            Framing::Length(n) => {
                while self.buf.len() < n {
                    self.fill().await?;
                }
                resp.body.extend_from_slice(&self.buf[..n]);
                self.buf.advance(n);
            }
            Framing::Chunked => loop {
                let end = self.line_end().await?;
                let size = parse_chunk_size(&self.buf[..end])?;
                self.buf.advance(end + 2);
                if size == 0 {
                    // Trailers (normally none), up to the empty line.
                    loop {
                        let end = self.line_end().await?;
                        self.buf.advance(end + 2);
                        if end == 0 {
                            break;
                        }
                    }
                    break;
                }
                while self.buf.len() < size + 2 {
                    self.fill().await?;
                }
                resp.body.extend_from_slice(&self.buf[..size]);
                self.buf.advance(size + 2);
            },
            Framing::UntilClose => {
                loop {
                    self.buf.reserve(16 * 1024);
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        break;
                    }
                }
                resp.body.extend_from_slice(&self.buf);
                self.buf.clear();
                resp.keep_alive = false;
            }
        }
        Ok(())
    }
}

fn bad_data(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Status line and the few headers the client cares about; everything else is skipped.
fn parse_head(head: &[u8], resp: &mut Response) -> std::io::Result<Framing> {
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().ok_or_else(|| bad_data("empty response head"))?;
    // "HTTP/1.1 200 OK"
    if status_line.len() < 12 || !status_line.starts_with(b"HTTP/1.") {
        return Err(bad_data("bad status line"));
    }
    resp.status = std::str::from_utf8(&status_line[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad_data("bad status code"))?;
    resp.keep_alive = status_line[7] == b'1';
    resp.overhead_us = None;

    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            length = Some(parse_decimal(value).ok_or_else(|| bad_data("bad content-length"))? as usize);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value.eq_ignore_ascii_case(b"chunked") || value.ends_with(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            if value.eq_ignore_ascii_case(b"close") {
                resp.keep_alive = false;
            } else if value.eq_ignore_ascii_case(b"keep-alive") {
                resp.keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case(b"x-tollgate-overhead-us") {
            resp.overhead_us = parse_decimal(value).map(|v| v.min(u32::MAX as u64) as u32);
        }
    }
    Ok(if matches!(resp.status, 100..=199 | 204 | 304) {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    })
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v = 0u64;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
    }
    Some(v)
}

/// "1a3" or "1a3;ext=..." → 0x1a3.
fn parse_chunk_size(line: &[u8]) -> std::io::Result<usize> {
    let hex = line.split(|&b| b == b';').next().unwrap_or(line).trim_ascii();
    if hex.is_empty() {
        return Err(bad_data("empty chunk size"));
    }
    hex.iter().try_fold(0usize, |acc, &b| {
        let d = (b as char).to_digit(16).ok_or_else(|| bad_data("bad chunk size"))?;
        acc.checked_mul(16)
            .and_then(|v| v.checked_add(d as usize))
            .ok_or_else(|| bad_data("chunk size overflow"))
    })
}

// ---------------------------------------------------------------------------------------------
// Report

/// Nearest-rank percentile of a sorted slice.
fn percentile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn rps(r: &RunResult) -> f64 {
    r.latencies_us.len() as f64 / r.secs
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn render_report(s: &Settings, idle_rss_kib: u64, results: &[RunResult]) -> String {
    let opt = |v: Option<u32>| v.map_or("–".to_string(), |v| v.to_string());
    let mut out = String::new();
    out.push_str("# Tollgate load benchmark (latest measurement)\n\n");
    out.push_str(&format!(
        "Date: {} · LOAD_CONNS={} · LOAD_SECS={} (+{} s warm-up) · {} CPU cores · gateway threads={} · access_log={}\n\n",
        utc_now(),
        s.conns,
        s.secs,
        WARMUP.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        s.gw_threads,
        s.access_log,
    ));
    out.push_str(
        "Each request is `{\"model\":…,\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}` \
         (plus `\"stream\":true` in the streaming run) over keep-alive HTTP/1.1 on 127.0.0.1, from \
         one single-threaded tokio client on the same machine (so the mock-direct row is bounded \
         by the client too). Latency is client-side, request write to last body byte; overhead \
         is the gateway's own `X-Tollgate-Overhead-Us` (upstream time excluded). CPU µs/req is \
         the proxy's, the mock's and the load client's user+system CPU over the window divided by \
         the requests served; Idle % is the share of both cores nobody used (near zero: the run is \
         CPU-bound, and requests/s ≈ 2 cores ÷ the three CPU columns' sum); Other CPU % is what processes outside the bench used meanwhile (in % of one core; high \
         values mean a noisy run). `make bench` regenerates this file.\n\n",
    );
    out.push_str(
        "| Run | Requests/s | p50 µs | p99 µs | Errors | Overhead p50 µs | Overhead p99 µs \
         | RSS under load MB | Proxy CPU µs/req | Mock CPU µs/req | Client CPU µs/req | Idle % \
         | Other CPU % |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let cpu = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
    for r in results {
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            rps(r),
            opt(percentile(&r.latencies_us, 0.50)),
            opt(percentile(&r.latencies_us, 0.99)),
            r.errors,
            opt(percentile(&r.overhead_us, 0.50)),
            opt(percentile(&r.overhead_us, 0.99)),
            r.rss_kib.map_or("–".to_string(), |k| format!("{:.1}", mb(k))),
            cpu(r.proxy_cpu_us),
            cpu(r.mock_cpu_us),
            cpu(r.client_cpu_us),
            cpu(r.idle_percent),
            cpu(r.other_cpu_percent),
        ));
    }

    // Targets. Results are in run order: mock, pass-through, gateway, two more pass-through /
    // gateway pairs, gateway streaming, …
    let pass = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let (pt, gw, gws) = (&results[1], &results[2], &results[7]);
    let pairs = [(pt, gw), (&results[3], &results[4]), (&results[5], &results[6])];
    assert!(pairs[1].0.name == PT_PAIR2 && pairs[2].1.name == GW_PAIR3, "runs out of order");
    let pair_ratio = |(p, g): &(&RunResult, &RunResult)| rps(g) / rps(p);
    let mut by_ratio = pairs;
    by_ratio.sort_by(|a, b| pair_ratio(a).total_cmp(&pair_ratio(b)));
    let (mid_pt, mid_gw) = by_ratio[1];
    let ratio = pair_ratio(&by_ratio[1]);
    let p99 = |r: &RunResult| percentile(&r.overhead_us, 0.99);
    let worst_p99 = p99(gw).into_iter().chain(p99(gws)).max();
    let idle_mb = mb(idle_rss_kib);
    out.push_str("\n## Targets\n\n");
    out.push_str(&format!(
        "- {} — gateway throughput ≥ {:.0}% of the bare Pingora pass-through (non-streaming), the median of three back-to-back pairs: {:.0} vs {:.0} req/s = {:.1}% (pairs in run order: {})\n",
        pass(ratio >= TARGET_THROUGHPUT_RATIO),
        TARGET_THROUGHPUT_RATIO * 100.0,
        rps(mid_gw),
        rps(mid_pt),
        ratio * 100.0,
        pairs.iter().map(|pair| format!("{:.1}%", pair_ratio(pair) * 100.0)).collect::<Vec<_>>().join(", "),
    ));
    out.push_str(&format!(
        "- {} — p99 X-Tollgate-Overhead-Us ≤ {TARGET_OVERHEAD_P99_US} µs: {} µs (JSON), {} µs (streaming)\n",
        pass(worst_p99.is_some_and(|v| v <= TARGET_OVERHEAD_P99_US)),
        opt(p99(gw)),
        opt(p99(gws)),
    ));
    out.push_str(&format!(
        "- {} — gateway idle RSS ≤ {TARGET_IDLE_RSS_MB:.0} MB: {idle_mb:.1} MB\n",
        pass(idle_mb <= TARGET_IDLE_RSS_MB),
    ));

    // Routing: results 8 (two healthy routes), 9 (one failing, ejected), 10 (every request
    // fails over).
    let (two, half, always) = (&results[8], &results[9], &results[10]);
    let ratio = rps(half) / rps(two);
    out.push_str(&format!(
        "- {} — with one of two routes failing every request (ejected during warm-up), throughput ≥ {:.0}% of two healthy routes: {:.0} vs {:.0} req/s = {:.1}%\n",
        pass(ratio >= TARGET_FAILING_ROUTE_RATIO),
        TARGET_FAILING_ROUTE_RATIO * 100.0,
        rps(half),
        rps(two),
        ratio * 100.0,
    ));
    let added = p99(always);
    out.push_str(&format!(
        "- {} — a failed-over request adds ≤ {TARGET_FAILOVER_ADDED_P99_US} µs beyond the failed attempt's own time (p99 of its X-Tollgate-Overhead-Us, both attempts' upstream time excluded): {} µs (p50 {} µs; a request without failover: p99 {} µs). Client latency p50/p99: {}/{} µs with a failover on every request vs {}/{} µs with two healthy routes\n",
        pass(added.is_some_and(|v| v <= TARGET_FAILOVER_ADDED_P99_US)),
        opt(added),
        opt(percentile(&always.overhead_us, 0.50)),
        opt(p99(two)),
        opt(percentile(&always.latencies_us, 0.50)),
        opt(percentile(&always.latencies_us, 0.99)),
        opt(percentile(&two.latencies_us, 0.50)),
        opt(percentile(&two.latencies_us, 0.99)),
    ));
    // Limits: result 12 (a key with rate, token, daily and monthly limits) vs the mean of
    // results 11 and 13, the plain key just before and after it.
    let limited = &results[12];
    let plain = (rps(&results[11]) + rps(&results[13])) / 2.0;
    let ratio = rps(limited) / plain;
    out.push_str(&format!(
        "- {} — throughput with every per-key limit checked within 5% of no limits: {:.0} vs {:.0} req/s \
         (the plain key's runs just before and after) = {:.1}%\n",
        pass(ratio >= 0.95),
        rps(limited),
        plain,
        ratio * 100.0,
    ));
    // Translation: result 14, an Anthropic stream translated chunk by chunk.
    let claude = &results[14];
    out.push_str(&format!(
        "- info — Anthropic-translated streaming: {:.0} req/s vs {:.0} req/s for OpenAI-format streaming; overhead p99 {} µs\n",
        rps(claude),
        rps(gws),
        opt(p99(claude)),
    ));
    out
}

// ---------------------------------------------------------------------------------------------
// TLS

const TLS_SECTION_HEADING: &str = "## TLS";
const TARGET_TLS_RATIO: f64 = 0.80;
const TARGET_IDLE_CONNS_RSS_MB: f64 = 200.0;

/// Raise the soft limit on open files to at least `want` (up to the hard limit) with
/// `prlimit` on this process; children spawned afterwards inherit it. Returns the soft limit.
fn raise_fd_limit(want: u64) -> u64 {
    let read = || -> Option<(u64, u64)> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        let mut f = line.split_whitespace().skip(3);
        let soft = f.next()?.parse().unwrap_or(u64::MAX);
        let hard = f.next()?.parse().unwrap_or(u64::MAX);
        Some((soft, hard))
    };
    let Some((soft, hard)) = read() else { return 1024 };
    if soft >= want {
        return soft;
    }
    let target = want.min(hard);
    let _ = Command::new("prlimit")
        .args(["--pid", &std::process::id().to_string(), &format!("--nofile={target}:{hard}")])
        .status();
    read().map_or(soft, |(s, _)| s)
}

/// One idle-connection run: how much the gateway's RSS grows with `n` keep-alive connections
/// open, each having served one `GET /healthz`.
struct IdleResult {
    name: &'static str,
    opened: usize,
    errors: usize,
    first_error: Option<String>,
    rss_before_kib: u64,
    rss_open_kib: u64,
}

fn idle_connections(name: &'static str, addr: SocketAddr, tls: Option<ClientTls>, n: usize, gw_pid: u32) -> IdleResult {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let rss_before_kib = rss_kib(gw_pid).unwrap_or(0);
        let request: Arc<[u8]> = format!("GET /healthz HTTP/1.1\r\nHost: localhost:{}\r\n\r\n", addr.port()).into_bytes().into();
        // 64 handshakes at a time: a burst of 10,000 would only measure the accept backlog.
        let limit = Arc::new(tokio::sync::Semaphore::new(64));
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (tls, request, limit) = (tls.clone(), request.clone(), limit.clone());
                tokio::spawn(async move {
                    let _permit = limit.acquire_owned().await.map_err(|e| e.to_string())?;
                    let mut conn = connect(addr, tls.as_ref()).await?;
                    let mut resp = Response::default();
                    match tokio::time::timeout(REQUEST_TIMEOUT, conn.exchange(&request, &mut resp)).await {
                        Ok(Ok(())) if resp.status == 200 && resp.keep_alive => {}
                        Ok(Ok(())) => return Err(format!("HTTP {} (keep-alive {})", resp.status, resp.keep_alive)),
                        Ok(Err(e)) => return Err(format!("I/O: {e}")),
                        Err(_) => return Err("no response".to_string()),
                    }
                    // Idle: keep the socket, drop the 64 KiB read buffer the load runs reuse.
                    conn.buf = BytesMut::new();
                    Ok(conn)
                })
            })
            .collect();
        let mut open = Vec::with_capacity(n);
        let (mut errors, mut first_error) = (0, None);
        for t in tasks {
            match t.await.expect("idle connection task panicked") {
                Ok(c) => open.push(c),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        // Let the gateway settle (buffers released after the last response), then sample.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_open_kib = rss_kib(gw_pid).unwrap_or(0);
        let opened = open.len();
        drop(open);
        // Give the gateway a moment to see the closes before the next run.
        tokio::time::sleep(Duration::from_secs(1)).await;
        IdleResult { name, opened, errors, first_error, rss_before_kib, rss_open_kib }
    })
}

/// Requests per connection in the connection-churn runs.
const CHURN: u32 = 100;

/// The TLS runs and their markdown section.
#[allow(clippy::too_many_arguments)]
fn run_tls_section(
    settings: &Settings,
    gw: &ChildGuard,
    gw_port: u16,
    tls_port: u16,
    ca_pem: &Path,
    key: &str,
    gw_json: &Value,
    mock_pid: u32,
    fd_limit: u64,
) -> String {
    let gw_pid = gw.pid();
    let full = ClientTls::new(ca_pem, false);
    let resumed = ClientTls::new(ca_pem, true);
    let plain = || Target::new("plain", gw_port, key, gw_json, false, Some(gw_pid), mock_pid);
    let named = |mut t: Target, name: &'static str| {
        t.name = name;
        t
    };
    let targets = [
        named(plain(), "gateway → mock, keep-alive, plain HTTP"),
        named(plain().over_tls(tls_port, &full), "gateway → mock, keep-alive, TLS"),
        named(plain().one_request_per_connection(), "new connection per request, plain HTTP"),
        named(plain().over_tls(tls_port, &full).one_request_per_connection(), "new connection per request, TLS full handshake"),
        named(plain().over_tls(tls_port, &resumed).one_request_per_connection(), "new connection per request, TLS resumed"),
        named(plain().requests_per_connection(CHURN), "keep-alive, a new connection every 100 requests, plain HTTP"),
        named(plain().over_tls(tls_port, &full).requests_per_connection(CHURN), "keep-alive, a new connection every 100 requests, TLS full handshake"),
    ];
    let mut results = Vec::new();
    for target in &targets {
        eprintln!("load bench: {} ({} conns, {} s + {} s warm-up)…", target.name, settings.conns, settings.secs, WARMUP.as_secs());
        let r = run_load(target, settings.conns, settings.secs);
        if r.latencies_us.is_empty() {
            panic!("run '{}' got no successful response ({} errors; first: {})", target.name, r.errors, r.first_error.as_deref().unwrap_or("none"));
        }
        if let Some(e) = &r.first_error {
            eprintln!("load bench: {}: {} errors; first: {e}", target.name, r.errors);
        }
        results.push(r);
    }
    // Both sides of every idle connection live on this machine: this process's fds too.
    let n = settings.idle_conns.min(fd_limit.saturating_sub(512) as usize);
    if n < settings.idle_conns {
        eprintln!("load bench: open-files limit {fd_limit}: {n} idle connections instead of {}", settings.idle_conns);
    }
    let mut idle = Vec::new();
    for (name, port, tls) in [("TLS", tls_port, Some(full.clone())), ("plain HTTP", gw_port, None)] {
        eprintln!("load bench: {n} idle keep-alive connections, {name}…");
        let r = idle_connections(name, SocketAddr::from(([127, 0, 0, 1], port)), tls, n, gw_pid);
        if let Some(e) = &r.first_error {
            eprintln!("load bench: idle {name}: {} errors; first: {e}", r.errors);
        }
        idle.push(r);
    }
    render_tls_section(settings, &results, &idle)
}

fn render_tls_section(s: &Settings, results: &[RunResult], idle: &[IdleResult]) -> String {
    let opt = |v: Option<u32>| v.map_or("–".to_string(), |v| v.to_string());
    let cpu = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
    let mut out = String::new();
    out.push_str(&format!("{TLS_SECTION_HEADING} (`LOAD_ONLY=tls make bench` reruns only this section)\n\n"));
    out.push_str(&format!(
        "Date: {} · LOAD_CONNS={} · LOAD_SECS={} (+{} s warm-up) · gateway threads={}\n\n",
        utc_now(),
        s.conns,
        s.secs,
        WARMUP.as_secs(),
        s.gw_threads
    ));
    out.push_str(
        "The gateway → mock JSON request of the table above, on the gateway's `tls_listen` (rustls, \
         TLS 1.3, ECDSA P-256 certificate, HTTP/1.1) and, back to back for comparison, on its plain \
         listener. \"New connection per request\" sends `Connection: close`: every request pays a TCP \
         connect and, over TLS, a full handshake (client session resumption off) or a resumed one \
         (TLS 1.3 PSK from the client's session cache). The load client (one thread) does its own \
         side of the TLS work on the same 2 cores, so TLS rows include the client's cost.\n\n",
    );
    out.push_str("| Run | Requests/s | p50 µs | p99 µs | Errors | RSS under load MB | Proxy CPU µs/req | Other CPU % |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            rps(r),
            opt(percentile(&r.latencies_us, 0.50)),
            opt(percentile(&r.latencies_us, 0.99)),
            r.errors,
            r.rss_kib.map_or("–".to_string(), |k| format!("{:.1}", mb(k))),
            cpu(r.proxy_cpu_us),
            cpu(r.other_cpu_percent),
        ));
    }
    out.push_str("\n| Idle keep-alive connections | Open | Errors | Gateway RSS before MB | RSS with them open MB | KiB per connection |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|\n");
    for r in idle {
        let per = (r.rss_open_kib as f64 - r.rss_before_kib as f64) / r.opened.max(1) as f64;
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
            r.name,
            r.opened,
            r.errors,
            mb(r.rss_before_kib),
            mb(r.rss_open_kib),
            per
        ));
    }
    let pass = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let (ka_plain, ka_tls, new_plain, new_full, new_resumed) = (&results[0], &results[1], &results[2], &results[3], &results[4]);
    let (churn_plain, churn_tls) = (&results[5], &results[6]);
    out.push_str("\n### TLS targets\n\n");
    let ratio = rps(ka_tls) / rps(ka_plain);
    out.push_str(&format!(
        "- {} — keep-alive throughput over TLS within {:.0}% of plain HTTP: {:.0} vs {:.0} req/s = {:.1}%\n",
        pass(ratio >= TARGET_TLS_RATIO),
        (1.0 - TARGET_TLS_RATIO) * 100.0,
        rps(ka_tls),
        rps(ka_plain),
        ratio * 100.0
    ));
    let churn_ratio = rps(churn_tls) / rps(churn_plain);
    out.push_str(&format!(
        "- {} — keep-alive traffic with handshakes (a new connection, a full TLS handshake, every {CHURN} requests) \
         within {:.0}% of plain HTTP: {:.0} vs {:.0} req/s = {:.1}%\n",
        pass(churn_ratio >= TARGET_TLS_RATIO),
        (1.0 - TARGET_TLS_RATIO) * 100.0,
        rps(churn_tls),
        rps(churn_plain),
        churn_ratio * 100.0
    ));
    let full_ratio = rps(new_full) / rps(new_plain);
    let resumed_ratio = rps(new_resumed) / rps(new_plain);
    out.push_str(&format!(
        "- info — a full handshake for every request (no keep-alive): {:.0} handshakes/s = {:.1}% of {:.0} plain \
         connections/s (resumed: {:.0}/s = {:.1}%). A TLS 1.3 handshake costs the gateway ~{:.0} µs of CPU more than a \
         TCP accept (X25519 and an ECDSA signature; TLS 1.3 resumption still does the key exchange), and the load client \
         pays as much again on the same 2 cores: no TLS stack comes within 20% here, which is why the target is read \
         for keep-alive traffic (the lines above).\n",
        rps(new_full),
        full_ratio * 100.0,
        rps(new_plain),
        rps(new_resumed),
        resumed_ratio * 100.0,
        new_full.proxy_cpu_us.unwrap_or(0.0) - new_plain.proxy_cpu_us.unwrap_or(0.0),
    ));
    if let Some(t) = idle.iter().find(|r| r.name == "TLS") {
        out.push_str(&format!(
            "- {} — gateway RSS with {} idle keep-alive TLS connections ≤ {TARGET_IDLE_CONNS_RSS_MB:.0} MB: {:.1} MB\n",
            pass(t.opened >= s.idle_conns && t.errors == 0 && mb(t.rss_open_kib) <= TARGET_IDLE_CONNS_RSS_MB),
            t.opened,
            mb(t.rss_open_kib)
        ));
    }
    out
}
