//! One JSON line per request on stdout, written by a background thread.
//!
//! The request path only formats the line and hands it to a channel; a dedicated thread
//! writes through a buffer and flushes whenever the channel runs dry, so a slow stdout (a
//! pipe to a log shipper) never stalls a request. Never a key, a token or a prompt.

use super::ctx::RequestCtx;
use super::settle::Settled;
use crate::app::App;
use crate::billing::money;
use crate::metrics;
use crate::providers::json_scan::{write_json_string, write_json_u64};
use pingora::proxy::Session;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

pub struct AccessLog {
    /// Finished lines, as bytes: only valid UTF-8 is ever written into one (see `Line`), and
    /// stdout takes bytes, so nothing checks them again.
    tx: Option<SyncSender<Vec<u8>>>,
}

impl AccessLog {
    /// `enabled = false` drops lines (benchmarks, or an operator who logs elsewhere).
    pub fn start(enabled: bool) -> AccessLog {
        if !enabled {
            return AccessLog { tx: None };
        }
        let (tx, rx) = sync_channel::<Vec<u8>>(16 * 1024);
        let spawned = std::thread::Builder::new().name("access-log".into()).spawn(move || writer(rx));
        match spawned {
            Ok(_) => AccessLog { tx: Some(tx) },
            Err(e) => {
                log::error!("cannot start the access log thread: {e}");
                AccessLog { tx: None }
            }
        }
    }

    fn send(&self, line: Vec<u8>) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(line) {
                // Never block a request on logging; count what was dropped.
                metrics::STORE_WRITE_ERRORS.with_label_values(&["access_log_dropped"]).inc();
            }
        }
    }
}

fn writer(rx: Receiver<Vec<u8>>) {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    while let Ok(line) = rx.recv() {
        // Let lines accumulate: while this thread sleeps instead of blocking in recv(), a
        // request logging a line never has to wake it (no futex syscall per request).
        std::thread::sleep(std::time::Duration::from_millis(10));
        let _ = out.write_all(&line);
        let _ = out.write_all(b"\n");
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(&line);
            let _ = out.write_all(b"\n");
        }
        let _ = out.flush();
    }
}

/// `,"name":`, a field after the first, as one literal: each field's key is one copy of a
/// known length (the key pieces pushed one by one were a fifth of the line's cost).
macro_rules! field {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

/// `end` and `end_unix_ms`: when the request ended, as `settle::finish` was told.
pub fn record(app: &App, session: &Session, ctx: &RequestCtx, settled: &Settled, end: std::time::Instant, end_unix_ms: u64) {
    let (model, provider) = match ctx.inference.as_ref() {
        Some(inf) => (inf.model.slug.as_str(), inf.provider.name.as_str()),
        None => ("", ""),
    };
    let status = ctx.status;
    metrics::count_request(ctx.route_label, ctx.inference.as_ref().map(|i| &*i.model), status_label(status));
    let req = session.req_header();
    // Written by hand into one buffer: a serde_json::Value map per request cost more than the
    // rest of the logging phase together.
    let mut line = Line(Vec::with_capacity(512));
    line.0.extend_from_slice(br#"{"ts":"#);
    write_json_u64(&mut line.0, end_unix_ms);
    line.text(field!("request_id"), &ctx.request_id);
    line.text(field!("generation_id"), &ctx.generation_id);
    line.text(field!("method"), req.method.as_str());
    line.text(field!("path"), req.uri.path());
    line.num(field!("status"), status as u64);
    line.text(field!("route"), ctx.route_label);
    line.text(field!("model"), model);
    line.text(field!("provider"), provider);
    match ctx.key.as_ref() {
        Some(k) => line.num(field!("key_id"), k.id),
        None => line.raw(field!("key_id"), "null"),
    }
    let latency_us = end.saturating_duration_since(ctx.start).as_micros() as u64;
    line.key(field!("latency_ms"));
    write_json_u64(&mut line.0, latency_us / 1000);
    let ms_frac = latency_us % 1000;
    line.0.extend_from_slice(&[b'.', b'0' + (ms_frac / 100) as u8, b'0' + (ms_frac / 10 % 10) as u8, b'0' + (ms_frac % 10) as u8]);
    line.num(field!("overhead_us"), ctx.overhead_us);
    let stream = ctx.inference.as_ref().map(|i| i.info.stream).unwrap_or(false);
    line.raw(field!("stream"), if stream { "true" } else { "false" });
    line.num(field!("tokens_prompt"), settled.usage.prompt_tokens);
    line.num(field!("tokens_completion"), settled.usage.completion_tokens);
    line.raw(field!("usage_estimated"), if settled.estimated { "true" } else { "false" });
    line.key(field!("cost_usd"));
    // A decimal is only digits, '-' and '.': nothing to escape.
    line.0.push(b'"');
    money::push_usd(&mut line.0, settled.cost);
    line.0.push(b'"');
    match ctx.error.as_ref() {
        Some(e) => line.text(field!("error"), e.code),
        None => line.raw(field!("error"), "null"),
    }
    app.access_log.send(line.finish());
}

/// One JSON object, built field by field.
struct Line(Vec<u8>);

impl Line {
    /// `field` is a [`field!`] of this file: plain ASCII, written as is.
    fn key(&mut self, field: &'static str) {
        self.0.extend_from_slice(field.as_bytes());
    }
    fn num(&mut self, field: &'static str, n: u64) {
        self.key(field);
        write_json_u64(&mut self.0, n);
    }
    fn text(&mut self, field: &'static str, s: &str) {
        self.key(field);
        write_json_string(&mut self.0, s);
    }
    fn raw(&mut self, field: &'static str, json: &str) {
        self.key(field);
        self.0.extend_from_slice(json.as_bytes());
    }
    /// The object's bytes: valid UTF-8, since only field names, escaped strings and numbers
    /// were written.
    fn finish(mut self) -> Vec<u8> {
        self.0.push(b'}');
        self.0
    }
}

/// Status codes as bounded label values.
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200", 201 => "201", 400 => "400", 401 => "401", 402 => "402", 404 => "404",
        405 => "405", 413 => "413", 429 => "429", 500 => "500", 502 => "502", 503 => "503",
        504 => "504", 0 => "0",
        s if s < 300 => "2xx", s if s < 400 => "3xx", s if s < 500 => "4xx", _ => "5xx",
    }
}
