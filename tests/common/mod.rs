//! Test harness: the real `tollgate` binary and its mock upstream on random loopback ports.
//!
//! Every process is killed when its handle drops, and every wait is bounded, so a failing
//! test never leaves a server behind or hangs the suite.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A loopback port that was free a moment ago and that this process has not handed out
/// before: the OS may offer a just-closed port again, and a gateway given the same port for its
/// proxy and its metrics listener answers requests with Prometheus text.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn wait_for_port(port: u16, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("port {port} did not open within {timeout:?}");
}

/// A unique scratch directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tollgate-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// Wait for the process to exit on its own (after a signal); fails the test after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < within, "the gateway did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Mock {
    pub port: u16,
    pub proc: Proc,
}

impl Mock {
    pub fn start() -> Mock {
        Mock::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Mock {
        let port = free_port();
        let child = Command::new(BIN)
            .args(["mock-upstream", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mock-upstream");
        wait_for_port(port, Duration::from_secs(10));
        Mock { port, proc: Proc { child } }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What the gateway sent upstream, newest last.
    pub fn requests(&self) -> Vec<Value> {
        let v: Value = client().get(self.url("/_mock/requests")).send().unwrap().json().unwrap();
        v.get("requests").and_then(|r| r.as_array()).cloned().unwrap_or_default()
    }

    pub fn clear(&self) {
        client().delete(self.url("/_mock/requests")).send().unwrap();
    }

    pub fn set_faults(&self, faults: Value) {
        let r = client().post(self.url("/_mock/faults")).json(&faults).send().unwrap();
        assert!(r.status().is_success(), "set faults: {}", r.text().unwrap_or_default());
    }

    pub fn clear_faults(&self) {
        client().delete(self.url("/_mock/faults")).send().unwrap();
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .unwrap()
}

/// A config for one mock provider at `mock_port`, serving `mock/echo-1` ($1 in, $2 out per
/// 1M tokens) and `mock/big` (a large context for big bodies).
pub fn config_for(port: u16, metrics_port: u16, data_dir: &Path, mock_port: u16, extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
data_dir = "{data}"
metrics_listen = "127.0.0.1:{metrics_port}"
threads = 2
grace_period_secs = 10
reload_poll_ms = 100
max_body_bytes = 4194304

[providers.mock]
kind = "mock"
base_url = "http://127.0.0.1:{mock_port}/v1"
api_key_env = "TOLLGATE_TEST_PROVIDER_KEY"
read_timeout_secs = 5

[providers.claude]
kind = "anthropic"
base_url = "http://127.0.0.1:{mock_port}/v1"
api_key_env = "TOLLGATE_TEST_PROVIDER_KEY"
read_timeout_secs = 5

[providers.gem]
kind = "gemini"
base_url = "http://127.0.0.1:{mock_port}/v1beta"
api_key_env = "TOLLGATE_TEST_PROVIDER_KEY"
read_timeout_secs = 5

[providers.dead]
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
connect_timeout_secs = 1

[providers.nodns]
kind = "openai"
base_url = "http://no-such-host.invalid/v1"

[providers.off]
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
api_key_env = "TOLLGATE_TEST_UNSET_KEY"

[[models]]
slug = "mock/echo-1"
provider = "mock"
upstream_model = "echo-upstream-1"
context_length = 32768
max_output_tokens = 4096
input_per_mtok = 1.00
output_per_mtok = 2.00
capabilities = ["tools", "json"]
platforms = ["intl"]

[[models]]
slug = "mock/big"
provider = "mock"
upstream_model = "big-upstream"
context_length = 2000000
max_output_tokens = 1000
input_per_mtok = 0.10
output_per_mtok = 0.20
platforms = ["cn"]

[[models]]
slug = "anthropic/claude-test"
provider = "claude"
upstream_model = "claude-sonnet-4-5"
context_length = 200000
max_output_tokens = 8192
input_per_mtok = 3.00
output_per_mtok = 15.00
capabilities = ["tools", "vision", "json"]

[[models]]
slug = "google/gemini-test"
provider = "gem"
upstream_model = "gemini-2.5-flash"
context_length = 1000000
max_output_tokens = 8192
input_per_mtok = 0.30
output_per_mtok = 2.50
capabilities = ["tools", "vision", "json"]

[[models]]
slug = "mock/embed"
provider = "mock"
upstream_model = "embed-upstream"
context_length = 8192
input_per_mtok = 0.02
output_per_mtok = 0
endpoints = ["embeddings"]

[[models]]
slug = "mock/image"
provider = "mock"
upstream_model = "image-upstream"
context_length = 4000
input_per_mtok = 0
output_per_mtok = 0
endpoints = ["images"]
image_prices = {{ "1024x1024" = 0.04, "1792x1024" = 0.08 }}

[[models]]
slug = "mock/tts"
provider = "mock"
upstream_model = "tts-upstream"
context_length = 4096
input_per_mtok = 0
output_per_mtok = 0
endpoints = ["speech"]
input_per_mchar = 15.0

[[models]]
slug = "mock/whisper"
provider = "mock"
upstream_model = "whisper-upstream"
context_length = 4096
input_per_mtok = 0
output_per_mtok = 0
endpoints = ["transcriptions"]
audio_per_minute = 0.006

[[models]]
slug = "google/embed-test"
provider = "gem"
upstream_model = "text-embedding-004"
context_length = 2048
input_per_mtok = 0.15
output_per_mtok = 0
endpoints = ["embeddings"]

[[models]]
slug = "dead/model"
provider = "dead"
upstream_model = "x"
context_length = 1000
input_per_mtok = 1
output_per_mtok = 1

[[models]]
slug = "nodns/model"
provider = "nodns"
upstream_model = "x"
context_length = 1000
input_per_mtok = 1
output_per_mtok = 1

[[models]]
slug = "off/model"
provider = "off"
upstream_model = "x"
context_length = 1000
input_per_mtok = 1
output_per_mtok = 1
{extra}
"#,
        data = data_dir.display()
    )
}

pub const PROVIDER_KEY: &str = "upstream-secret-key-42";

pub struct Gateway {
    pub port: u16,
    pub metrics_port: u16,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub stdout_path: PathBuf,
    pub proc: Option<Proc>,
    pub mock: Mock,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Gateway {
    /// A gateway in front of a fresh mock (which requires the provider key).
    pub fn start() -> Gateway {
        Gateway::start_extra("")
    }

    /// Prices in these tests are exact list prices: no markup tiers unless `extra` sets
    /// `[billing]` itself.
    pub fn start_extra(extra: &str) -> Gateway {
        let mock = Mock::start_with(&["--api-key", PROVIDER_KEY]);
        let dir = scratch_dir("gw");
        let port = free_port();
        let metrics_port = free_port();
        let config_path = dir.join("tollgate.toml");
        let flat = if extra.contains("[billing]") { String::new() } else { "\n[billing]\ntiers = []\n".to_string() };
        let extra = format!("{extra}{flat}");
        std::fs::write(&config_path, config_for(port, metrics_port, &dir.join("data"), mock.port, &extra)).unwrap();
        let mut gw = Gateway {
            port,
            metrics_port,
            stdout_path: dir.join("stdout.log"),
            dir,
            config_path,
            proc: None,
            mock,
        };
        gw.spawn();
        gw
    }

    /// Start (or restart) the gateway process on the same config and store.
    pub fn spawn(&mut self) {
        let stdout = std::fs::OpenOptions::new().create(true).append(true).open(&self.stdout_path).unwrap();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stderr.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TOLLGATE_TEST_PROVIDER_KEY", PROVIDER_KEY)
            .env_remove("TOLLGATE_TEST_UNSET_KEY")
            .env("RUST_LOG", "info")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn tollgate serve");
        self.proc = Some(Proc { child });
        self.wait_ready();
    }

    pub fn wait_ready(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(r) = client().get(self.url("/readyz")).timeout(Duration::from_millis(500)).send() {
                if r.status() == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("gateway not ready; stderr:\n{}", self.stderr());
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().unwrap().child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin_post(&self, path: &str, body: Value) -> reqwest::blocking::Response {
        client()
            .post(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .unwrap()
    }

    /// A new account with `credit_usd` and one key: (account id, key secret).
    pub fn account_with_key(&self, credit_usd: &str) -> (u64, String) {
        static N: AtomicU32 = AtomicU32::new(0);
        let email = format!("user{}-{}@example.com", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let r = self.admin_post("/v1/admin/accounts", json!({"email": email}));
        assert_eq!(r.status(), 201);
        let id = r.json::<Value>().unwrap()["id"].as_u64().unwrap();
        if credit_usd != "0" {
            let r = self.admin_post(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": credit_usd}));
            assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
        }
        let r = self.admin_post(&format!("/v1/admin/accounts/{id}/keys"), json!({"name": "test"}));
        assert_eq!(r.status(), 201);
        let key = r.json::<Value>().unwrap()["key"].as_str().unwrap().to_string();
        (id, key)
    }

    pub fn chat(&self, key: &str, body: Value) -> reqwest::blocking::Response {
        client().post(self.url("/v1/chat/completions")).bearer_auth(key).json(&body).send().unwrap()
    }

    pub fn credits(&self, key: &str) -> Value {
        client().get(self.url("/v1/credits")).bearer_auth(key).send().unwrap().json().unwrap()
    }

    pub fn generation(&self, key: &str, id: &str) -> reqwest::blocking::Response {
        client().get(self.url(&format!("/v1/generation?id={id}"))).bearer_auth(key).send().unwrap()
    }

    /// Poll `/generation` until the record is there (charges are group-committed).
    pub fn generation_eventually(&self, key: &str, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let r = self.generation(key, id);
            if r.status() == 200 {
                return r.json::<Value>().unwrap()["data"].clone();
            }
            assert!(start.elapsed() < Duration::from_secs(5), "generation {id} never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics(&self) -> String {
        client().get(format!("http://127.0.0.1:{}/metrics", self.metrics_port)).send().unwrap().text().unwrap()
    }
}

pub fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Hello there"}]})
}

/// Assert the contract's error shape and return the code.
pub fn error_code(body: &Value) -> String {
    let e = &body["error"];
    assert!(e["message"].is_string(), "no message in {body}");
    assert!(e["type"].is_string(), "no type in {body}");
    assert!(e.get("param").is_some(), "no param in {body}");
    e["code"].as_str().unwrap_or_else(|| panic!("no code in {body}")).to_string()
}

/// USD from a JSON number or string.
pub fn usd(v: &Value) -> f64 {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or_else(|| panic!("not an amount: {v}"))
}

/// A raw HTTP/1.1 exchange on one connection, for keep-alive and framing tests.
pub struct RawConn {
    pub stream: BufReader<TcpStream>,
}

impl RawConn {
    pub fn open(port: u16) -> RawConn {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        RawConn { stream: BufReader::new(s) }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.get_mut().write_all(raw).unwrap();
    }

    /// Read one response: (status, headers lower-cased, body). Handles content-length and chunked.
    pub fn read_response(&mut self) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut line = String::new();
        self.stream.read_line(&mut line).unwrap();
        let status: u16 = line.split_whitespace().nth(1).unwrap_or_else(|| panic!("bad status line {line:?}")).parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.stream.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if let Some(len) = get("content-length") {
            body.resize(len.parse().unwrap(), 0);
            self.stream.read_exact(&mut body).unwrap();
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut size = String::new();
                self.stream.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                self.stream.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        (status, headers, body)
    }
}

/// A chat body of about `size` bytes (one long user message).
pub fn big_body(model: &str, size: usize) -> Value {
    let text: String = "lorem ipsum dolor sit amet ".chars().cycle().take(size).collect();
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// Parse an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            let data: Vec<&str> = ev.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.trim_start()).collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

// ---- Accounts, login tokens and BYOK (tests/gateway/{accounts,keys,usage,byok}.rs).

/// What `TOLLGATE_JWT_SECRET` is set to by [`Gateway::start_accounts`].
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef";
/// What `TOLLGATE_BYOK_KEY` is set to by [`Gateway::start_accounts`] (32 bytes, hex).
pub const BYOK_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The environment of a gateway with self-service accounts and BYOK enabled.
pub fn accounts_env() -> Vec<(&'static str, &'static str)> {
    vec![("TOLLGATE_JWT_SECRET", JWT_SECRET), ("TOLLGATE_BYOK_KEY", BYOK_KEY_HEX)]
}

/// An email no other test uses.
pub fn unique_email(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{tag}-{}-{}@example.com", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

impl Gateway {
    /// A gateway with login (JWT) and BYOK enabled: `server` lines go into `[server]`,
    /// `extra` is appended to the config.
    pub fn start_accounts(server: &str, extra: &str) -> Gateway {
        Gateway::start_with_env(server, extra, &accounts_env())
    }

    /// Like [`Gateway::start_extra`], with lines for `[server]` and more environment
    /// variables for the gateway.
    pub fn start_with_env(server: &str, extra: &str, env: &[(&str, &str)]) -> Gateway {
        let mock = Mock::start_with(&["--api-key", PROVIDER_KEY]);
        let dir = scratch_dir("gw");
        let port = free_port();
        let metrics_port = free_port();
        let config_path = dir.join("tollgate.toml");
        let text = config_for(port, metrics_port, &dir.join("data"), mock.port, extra)
            .replacen("[server]\n", &format!("[server]\n{server}\n"), 1);
        std::fs::write(&config_path, text).unwrap();
        let mut gw = Gateway { port, metrics_port, stdout_path: dir.join("stdout.log"), dir, config_path, proc: None, mock };
        gw.spawn_with_env(env);
        gw
    }

    /// [`Gateway::spawn`] with more environment variables.
    pub fn spawn_with_env(&mut self, env: &[(&str, &str)]) {
        let stdout = std::fs::OpenOptions::new().create(true).append(true).open(&self.stdout_path).unwrap();
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("stderr.log")).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TOLLGATE_TEST_PROVIDER_KEY", PROVIDER_KEY)
            .env_remove("TOLLGATE_TEST_UNSET_KEY")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn tollgate serve");
        self.proc = Some(Proc { child });
        self.wait_ready();
    }

    pub fn register(&self, email: &str, password: &str) -> reqwest::blocking::Response {
        client().post(self.url("/v1/auth/register")).json(&json!({"email": email, "password": password})).send().unwrap()
    }

    pub fn login(&self, email: &str, password: &str) -> reqwest::blocking::Response {
        client().post(self.url("/v1/auth/login")).json(&json!({"email": email, "password": password})).send().unwrap()
    }

    /// Registers a fresh account and logs in: (account id, email, login token).
    pub fn signed_up(&self, tag: &str) -> (u64, String, String) {
        let email = unique_email(tag);
        let r = self.register(&email, "correct horse battery");
        assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
        let id = r.json::<Value>().unwrap()["id"].as_u64().unwrap();
        let r = self.login(&email, "correct horse battery");
        assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
        let token = r.json::<Value>().unwrap()["token"].as_str().unwrap().to_string();
        (id, email, token)
    }

    /// `method path` with `Authorization: Bearer token` and an optional JSON body.
    pub fn call(&self, method: &str, token: &str, path: &str, body: Option<Value>) -> reqwest::blocking::Response {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = client().request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().unwrap()
    }

    /// `call`, asserting the status, returning the JSON body.
    pub fn call_ok(&self, method: &str, token: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let r = self.call(method, token, path, body);
        let got = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        assert_eq!(got, status, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

// ---- Routing (tests/gateway/routing.rs): several mock providers, configs of their own.

/// `[server]` and flat `[billing]` for a gateway whose providers and models are all in `body`.
pub fn routed_config(port: u16, metrics_port: u16, data_dir: &Path, body: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
data_dir = "{data}"
metrics_listen = "127.0.0.1:{metrics_port}"
threads = 2
grace_period_secs = 10
reload_poll_ms = 100

[billing]
tiers = []
{body}
"#,
        data = data_dir.display()
    )
}

/// A `[providers.NAME]` section for a mock provider on `port` (the mock requires
/// [`PROVIDER_KEY`], which the gateway gets from `TOLLGATE_TEST_PROVIDER_KEY`).
pub fn mock_provider(name: &str, port: u16, extra: &str) -> String {
    format!(
        "\n[providers.{name}]\nkind = \"mock\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\napi_key_env = \"TOLLGATE_TEST_PROVIDER_KEY\"\n{extra}\n"
    )
}

impl Mock {
    /// A mock that requires the provider key, like the one every `Gateway` starts with.
    pub fn keyed() -> Mock {
        Mock::start_with(&["--api-key", PROVIDER_KEY])
    }
}

impl Gateway {
    /// A gateway whose providers and models are all in `body` (see [`routed_config`]); `mock`
    /// is kept with it (its `mock` field), other mocks are the caller's.
    pub fn start_routed(mock: Mock, body: &str) -> Gateway {
        let dir = scratch_dir("gw-routing");
        let port = free_port();
        let metrics_port = free_port();
        let config_path = dir.join("tollgate.toml");
        std::fs::write(&config_path, routed_config(port, metrics_port, &dir.join("data"), body)).unwrap();
        let mut gw = Gateway { port, metrics_port, stdout_path: dir.join("stdout.log"), dir, config_path, proc: None, mock };
        gw.spawn();
        gw
    }

    /// Replace a routed gateway's providers and models; returns once `probe_slug` is served
    /// by `/v1/models/{slug}` (the reload took effect).
    pub fn reload_routed(&self, body: &str, probe_slug: &str) {
        std::fs::write(&self.config_path, routed_config(self.port, self.metrics_port, &self.dir.join("data"), body)).unwrap();
        let start = Instant::now();
        loop {
            let r = client().get(self.url(&format!("/v1/models/{probe_slug}"))).send().unwrap();
            if r.status() == 200 {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "reload never applied; stderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` with the admin token, as JSON (asserting 200).
    pub fn admin_get(&self, path: &str) -> Value {
        let r = client().get(self.url(path)).bearer_auth(ADMIN_TOKEN).send().unwrap();
        let status = r.status();
        let text = r.text().unwrap_or_default();
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// One route of `/admin/routes`: the model's route whose provider is `provider`.
    pub fn route_state(&self, model: &str, provider: &str) -> Value {
        let v = self.admin_get("/v1/admin/routes");
        let m = v["data"].as_array().unwrap().iter().find(|m| m["model"] == model).unwrap_or_else(|| panic!("no model {model} in {v}"));
        m["routes"].as_array().unwrap().iter().find(|r| r["provider"] == provider).unwrap_or_else(|| panic!("no route {provider} in {m}")).clone()
    }
}
