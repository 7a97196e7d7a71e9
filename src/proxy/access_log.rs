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
use pingora::proxy::Session;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

pub struct AccessLog {
    tx: Option<SyncSender<String>>,
}

impl AccessLog {
    /// `enabled = false` drops lines (benchmarks, or an operator who logs elsewhere).
    pub fn start(enabled: bool) -> AccessLog {
        if !enabled {
            return AccessLog { tx: None };
        }
        let (tx, rx) = sync_channel::<String>(16 * 1024);
        let spawned = std::thread::Builder::new().name("access-log".into()).spawn(move || writer(rx));
        match spawned {
            Ok(_) => AccessLog { tx: Some(tx) },
            Err(e) => {
                log::error!("cannot start the access log thread: {e}");
                AccessLog { tx: None }
            }
        }
    }

    fn send(&self, line: String) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(line) {
                // Never block a request on logging; count what was dropped.
                metrics::STORE_WRITE_ERRORS.with_label_values(&["access_log_dropped"]).inc();
            }
        }
    }
}

fn writer(rx: Receiver<String>) {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    while let Ok(line) = rx.recv() {
        // Let lines accumulate: while this thread sleeps instead of blocking in recv(), a
        // request logging a line never has to wake it (no futex syscall per request).
        std::thread::sleep(std::time::Duration::from_millis(10));
        let _ = out.write_all(line.as_bytes());
        let _ = out.write_all(b"\n");
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
            let _ = out.write_all(b"\n");
        }
        let _ = out.flush();
    }
}

pub fn record(app: &App, session: &Session, ctx: &RequestCtx, settled: &Settled) {
    let (model, provider) = match ctx.inference.as_ref() {
        Some(inf) => (inf.model.slug.as_str(), inf.provider.name.as_str()),
        None => ("", ""),
    };
    let status = ctx.status;
    metrics::REQUESTS
        .with_label_values(&[ctx.route_label, model, provider, status_label(status)])
        .inc();
    let req = session.req_header();
    let line = serde_json::json!({
        "ts": crate::store::now_millis(),
        "request_id": ctx.request_id,
        "generation_id": ctx.generation_id,
        "method": req.method.as_str(),
        "path": req.uri.path(),
        "status": status,
        "route": ctx.route_label,
        "model": model,
        "provider": provider,
        "key_id": ctx.key.as_ref().map(|k| k.id),
        "latency_ms": ctx.start.elapsed().as_secs_f64() * 1000.0,
        "overhead_us": ctx.overhead_us,
        "stream": ctx.inference.as_ref().map(|i| i.info.stream).unwrap_or(false),
        "tokens_prompt": settled.usage.prompt_tokens,
        "tokens_completion": settled.usage.completion_tokens,
        "usage_estimated": settled.estimated,
        "cost_usd": money::format_usd(settled.cost),
        "error": ctx.error.as_ref().map(|e| e.code),
    });
    app.access_log.send(line.to_string());
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
