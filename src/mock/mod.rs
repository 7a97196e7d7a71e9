//! The project's own fake LLM provider (`tollgate mock-upstream --listen ADDR`).
//!
//! It speaks OpenAI's wire format with deterministic replies and token counts, so the gateway's
//! integration tests, the load benchmark and `make run` work without provider keys. It is a
//! plain Pingora [`HttpServerApp`](pingora::apps::HttpServerApp), so it serves HTTP/1.1
//! keep-alive and h2c through Pingora's own server session and can be hosted in any Pingora
//! `Server` next to the gateway ([`mock_service`]) or on its own ([`run_standalone`]).
//!
//! Routes (each also without the `/v1` prefix):
//! - `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/embeddings`,
//!   `GET /v1/models`, `GET /v1/models/{id}`: see [`openai`] for the replies and token counts;
//! - `POST /v1/images/generations`, `POST /v1/audio/speech`, `POST /v1/audio/transcriptions`
//!   (multipart): OpenAI's media endpoints ([`media`], [`multipart`]);
//! - `POST /v1/messages`, `POST /v1/messages/count_tokens`: Anthropic's format ([`anthropic`]);
//! - `POST /v1beta/models/{model}:generateContent` / `:streamGenerateContent[?alt=sse]`,
//!   `:embedContent`, `:batchEmbedContents`: Gemini's format ([`gemini`]);
//! - `GET|DELETE /_mock/requests`, `GET /_mock/requests/last`: the request log
//!   ([`LoggedRequest::to_json`]);
//! - `GET|POST|DELETE /_mock/faults`: the global [`FaultConfig`] (see [`faults`]);
//! - `GET /_mock/health`: 200 once the listener is up.
//!
//! Order of checks on a provider route: request logged → the provider's own key header
//! (`Authorization: Bearer`, `x-api-key`, `x-goog-api-key`/`?key=`) → `x-mock-*` headers parsed
//! (400 if malformed) → delay → hang → injected status → the reply. Errors always come in the
//! route's provider shape.
//!
//! All three chat formats make tool calls, answer tool results, honour JSON mode and count
//! images the same way: see [`tools`].

pub mod anthropic;
pub mod faults;
pub mod gemini;
pub mod media;
pub mod multipart;
pub mod openai;
pub mod server;
pub mod tools;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{json, Map, Value};

pub use faults::{FaultConfig, Faults};
pub use server::{mock_service, run_standalone, run_standalone_tls, run_standalone_with, spawn_background, MockApp};

/// How many requests the log keeps.
pub const LOG_CAPACITY: usize = 64;
/// Older log entries keep at most this much of their body; only the newest keeps all of it.
pub const OLD_BODY_LIMIT: usize = 64 * 1024;

/// Everything the mock shares between connections: the key it expects, the global faults and
/// the request log.
pub struct MockState {
    expected_key: Option<String>,
    log_enabled: bool,
    /// Lets the hot path skip the fault lock when no global fault is set (the benchmark case).
    faults_active: AtomicBool,
    faults: Mutex<GlobalFaults>,
    log: Mutex<VecDeque<LoggedRequest>>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct GlobalFaults {
    config: FaultConfig,
    /// Provider requests seen since `config` was set, for `fail_every`.
    seen: u64,
}

impl Default for MockState {
    fn default() -> Self {
        MockState::new(None)
    }
}

impl MockState {
    /// `expected_key: Some(k)` makes every provider route require the key `k`, carried the way
    /// that provider expects it.
    pub fn new(expected_key: Option<String>) -> Self {
        MockState {
            expected_key,
            log_enabled: true,
            faults_active: AtomicBool::new(false),
            faults: Mutex::new(GlobalFaults::default()),
            log: Mutex::new(VecDeque::with_capacity(LOG_CAPACITY)),
            next_id: AtomicU64::new(1),
        }
    }

    /// Turn the request log off (for load benchmarks that want the leanest request path).
    pub fn without_request_log(mut self) -> Self {
        self.log_enabled = false;
        self
    }

    pub fn expected_key(&self) -> Option<&str> {
        self.expected_key.as_deref()
    }

    /// Replace the global faults (not merged with the previous ones).
    pub fn set_faults(&self, config: FaultConfig) -> Result<(), String> {
        config.validate()?;
        // `remaining: 0` means "for no request": the same as clearing.
        let config = if config.remaining == Some(0) {
            FaultConfig::default()
        } else {
            config
        };
        let mut g = lock(&self.faults);
        self.faults_active
            .store(!config.is_empty(), Ordering::Release);
        *g = GlobalFaults { config, seen: 0 };
        Ok(())
    }

    pub fn clear_faults(&self) {
        // Cannot fail: the default config is valid.
        let _ = self.set_faults(FaultConfig::default());
    }

    /// The global faults as they are now (`remaining` counts down as requests use them).
    pub fn faults(&self) -> FaultConfig {
        lock(&self.faults).config.clone()
    }

    /// The global faults for one provider request, and whether `fail_rate`/`fail_every` picked
    /// it to fail. Counts the request against `fail_every` and `remaining`.
    pub fn faults_for_request(&self) -> (FaultConfig, bool) {
        if !self.faults_active.load(Ordering::Acquire) {
            return (FaultConfig::default(), false);
        }
        let mut g = lock(&self.faults);
        g.seen += 1;
        let fail = g.config.rolls_failure(g.seen, rand::random::<f64>());
        let config = g.config.clone();
        if let Some(left) = g.config.remaining.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                *g = GlobalFaults::default();
                self.faults_active.store(false, Ordering::Release);
            }
        }
        (config, fail)
    }

    /// A fresh number for response ids (`chatcmpl-mock-<n>`).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn log_enabled(&self) -> bool {
        self.log_enabled
    }

    /// Append to the request log, trimming the body of the entry that stops being the newest.
    pub fn record(&self, entry: LoggedRequest) {
        if !self.log_enabled {
            return;
        }
        let mut log = lock(&self.log);
        if let Some(prev) = log.back_mut() {
            prev.trim_body(OLD_BODY_LIMIT);
        }
        if log.len() == LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(entry);
    }

    /// The logged requests, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.log).iter().cloned().collect()
    }

    pub fn last_request(&self) -> Option<LoggedRequest> {
        lock(&self.log).back().cloned()
    }

    pub fn clear_requests(&self) {
        lock(&self.log).clear();
    }
}

/// A poisoned lock only means another request panicked mid-update; the data is still usable,
/// and the mock must never panic in turn.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One request as the mock received it: what the tests check the gateway sent upstream.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    /// "HTTP/1.1" or "HTTP/2" (h2c or ALPN h2).
    pub http_version: &'static str,
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    pub headers: HeaderMap,
    /// Length of the whole body, even when `body` was trimmed.
    pub body_len: usize,
    pub body: Bytes,
    /// For a multipart body: [`multipart::log_summary`] (text fields, file names and sizes).
    pub form: Option<Value>,
}

impl LoggedRequest {
    pub fn body_truncated(&self) -> bool {
        self.body.len() < self.body_len
    }

    fn trim_body(&mut self, limit: usize) {
        if self.body.len() > limit {
            // Copy rather than slice: a slice would keep the whole multi-MB buffer alive.
            self.body = Bytes::copy_from_slice(&self.body[..limit]);
        }
    }

    /// `{"method","path","headers":{name: value},"body_len","body","body_truncated","json",
    /// "model","form"}`: header names are lower-case, repeated headers are joined with ", ",
    /// `body` is the body as (lossy) UTF-8 and `json` the parsed body, or null when it is not
    /// complete JSON; `model` is the JSON body's `model` or a multipart body's `model` field
    /// (else null); `form` is the multipart summary (else null).
    pub fn to_json(&self) -> Value {
        let mut headers = Map::new();
        for (name, value) in &self.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            match headers.get_mut(name.as_str()) {
                Some(Value::String(prev)) => {
                    prev.push_str(", ");
                    prev.push_str(&value);
                }
                _ => {
                    headers.insert(name.as_str().to_owned(), Value::String(value.into_owned()));
                }
            }
        }
        let parsed = if self.body_truncated() {
            Value::Null
        } else {
            serde_json::from_slice(&self.body).unwrap_or(Value::Null)
        };
        let model = parsed
            .get("model")
            .or_else(|| self.form.as_ref()?.get("fields")?.get("model"))
            .cloned()
            .unwrap_or(Value::Null);
        json!({
            "http_version": self.http_version,
            "method": self.method,
            "path": self.path,
            "headers": headers,
            "body_len": self.body_len,
            "body": String::from_utf8_lossy(&self.body),
            "body_truncated": self.body_truncated(),
            "json": parsed,
            "model": model,
            "form": self.form,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn entry(body: &[u8]) -> LoggedRequest {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        LoggedRequest {
            http_version: "HTTP/1.1",
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            headers,
            body_len: body.len(),
            body: Bytes::copy_from_slice(body),
            form: None,
        }
    }

    #[test]
    fn log_keeps_last_entries_and_trims_old_bodies() {
        let state = MockState::default();
        let big = vec![b'x'; OLD_BODY_LIMIT * 2];
        state.record(entry(&big));
        assert!(!state.last_request().unwrap().body_truncated());
        state.record(entry(br#"{"model":"m"}"#));
        let all = state.requests();
        assert_eq!(all.len(), 2);
        assert!(all[0].body_truncated());
        assert_eq!(all[0].body.len(), OLD_BODY_LIMIT);
        assert_eq!(all[0].body_len, big.len());
        let last = all[1].to_json();
        assert_eq!(last["json"]["model"], "m");
        assert_eq!(last["headers"]["x-a"], "1, 2");
        assert_eq!(last["body_truncated"], false);
        for _ in 0..LOG_CAPACITY + 5 {
            state.record(entry(b"{}"));
        }
        assert_eq!(state.requests().len(), LOG_CAPACITY);
        state.clear_requests();
        assert!(state.requests().is_empty());
        assert!(MockState::default()
            .without_request_log()
            .last_request()
            .is_none());
    }

    #[test]
    fn global_faults_count_down() {
        let state = MockState::default();
        assert_eq!(state.faults_for_request(), (FaultConfig::default(), false));
        let cfg = FaultConfig {
            status: Some(503),
            remaining: Some(2),
            ..Default::default()
        };
        state.set_faults(cfg).unwrap();
        assert_eq!(state.faults_for_request().0.status, Some(503));
        assert_eq!(state.faults().remaining, Some(1));
        assert_eq!(state.faults_for_request().0.status, Some(503));
        assert_eq!(state.faults_for_request().0.status, None);
        assert!(state.faults().is_empty());

        state
            .set_faults(FaultConfig {
                fail_every: Some(2),
                ..Default::default()
            })
            .unwrap();
        let fails: Vec<bool> = (0..4).map(|_| state.faults_for_request().1).collect();
        assert_eq!(fails, vec![false, true, false, true]);
        state.clear_faults();
        assert!(!state.faults_for_request().1);
        assert!(state
            .set_faults(FaultConfig {
                fail_rate: -1.0,
                ..Default::default()
            })
            .is_err());
    }
}
