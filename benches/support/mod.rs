//! What the two whole-process benchmarks, `load` and `soak`, share: starting and guarding the
//! child processes they measure (a port to listen on, a guard that kills the child, a watchdog
//! for a run that overruns), calling the gateway's admin API during setup, reading a process's
//! state from /proc, and the report's date.
//!
//! Each bench is its own crate (`harness = false`), so this is included in both with
//! `mod support;` rather than being a library: the harness code stays out of the gateway.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Child processes

/// PIDs of live children, so the watchdog can kill them even though it cannot run destructors.
static CHILD_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A child process killed (and reaped) when dropped, including while unwinding from a panic.
/// Its stdin is null and its stderr goes to a file, which failures quote; the caller decides
/// stdout on the `Command`.
pub struct ChildGuard {
    name: &'static str,
    child: Child,
    stderr_path: PathBuf,
}

impl ChildGuard {
    pub fn spawn(name: &'static str, cmd: &mut Command, stderr_path: PathBuf) -> ChildGuard {
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let child = cmd
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        CHILD_PIDS.lock().unwrap().push(child.id());
        ChildGuard { name, child, stderr_path }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until `port` accepts connections; fail fast (with its stderr) if the child died.
    pub fn wait_for_port(&mut self, port: u16, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.exited() {
                panic!("{} exited during startup ({status}); stderr:\n{}", self.name, self.stderr());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not open port {port} within {timeout:?}; stderr:\n{}", self.name, self.stderr());
    }

    /// The child's exit status if it has exited (without waiting), so a bench can tell a
    /// crashed server from one that merely answers errors.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        CHILD_PIDS.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| *p != pid);
    }
}

/// Kill every child and exit if the bench overruns `budget`: a hung run must not hang `make`.
/// `bench` prefixes the message ("load bench", "soak").
pub fn start_watchdog(bench: &'static str, budget: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(budget);
        eprintln!("{bench}: overran its {budget:?} budget; killing children");
        let pids = CHILD_PIDS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for pid in pids {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        std::process::exit(3);
    });
}

/// A port that was free a moment ago and not handed out before by this process (the OS may
/// offer a just-closed port again: two servers of one run must not be given the same one).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway's admin API

/// `POST` `body` to the admin API at `path` and return the JSON answer. Panics with the
/// answer on anything but success: a bench cannot go on without its accounts and keys.
pub fn admin_post(http: &reqwest::blocking::Client, port: u16, token: &str, path: &str, body: Value) -> Value {
    let r = http
        .post(format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = r.status();
    let text = r.text().unwrap_or_default();
    assert!(status.is_success(), "POST {path}: {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: {e}: {text}"))
}

// ---------------------------------------------------------------------------------------------
// /proc (Linux only)

/// A numeric field of /proc/<pid>/status, e.g. `"Threads:"`; sizes are in KiB.
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

// ---------------------------------------------------------------------------------------------
// Reports

/// "YYYY-MM-DD HH:MM UTC" without a date crate (civil-from-days, Howard Hinnant's algorithm).
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}
