//! Hot reload: the config file's modification time is polled, and SIGHUP forces a reload.
//!
//! Polling (every `server.reload_poll_ms`) instead of inotify keeps the dependency list short
//! and works on every filesystem, including the bind mounts and ConfigMap symlink swaps that
//! operators use; one `stat` a second costs nothing.
//!
//! A file written in place (truncate, then write) can be read half-written, and a prefix of a
//! config may well be valid (an empty file is: all defaults, no models). So a change is only
//! applied once the file reads the same twice, [`SETTLE`] apart; otherwise the next poll
//! tries again.

use super::ConfigHandle;
use crate::metrics;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long the file must stay unchanged before it is applied.
const SETTLE: Duration = Duration::from_millis(50);

fn mtime(handle: &ConfigHandle) -> Option<SystemTime> {
    std::fs::metadata(handle.path()).and_then(|m| m.modified()).ok()
}

/// Validate and swap; a bad file leaves the running config in place, logged and counted.
pub fn reload_now(handle: &ConfigHandle, why: &str) {
    report(handle.reload(), why)
}

/// The file's text once two reads [`SETTLE`] apart agree; None while it is being written
/// (or cannot be read: then the reload reports why).
async fn settled_text(handle: &ConfigHandle) -> Option<Option<String>> {
    let first = std::fs::read(handle.path());
    tokio::time::sleep(SETTLE).await;
    let second = std::fs::read(handle.path());
    match (first, second) {
        (Ok(a), Ok(b)) if a == b => Some(String::from_utf8(b).ok()),
        (Err(_), Err(_)) => Some(None),
        _ => None,
    }
}

/// Reload from the file once it is stable; false if it is still changing.
async fn reload_settled(handle: &ConfigHandle, why: &str) -> bool {
    match settled_text(handle).await {
        None => false,
        Some(Some(text)) => {
            report(handle.reload_text(&text), why);
            true
        }
        // Unreadable (or not UTF-8): let the reload say so.
        Some(None) => {
            reload_now(handle, why);
            true
        }
    }
}

fn report(result: Result<Arc<super::Config>, Vec<super::ConfigError>>, why: &str) {
    match result {
        Ok(cfg) => {
            metrics::config_reload("success");
            log::info!(
                "config reloaded ({why}): {} providers, {} models",
                cfg.providers.len(),
                cfg.models.len()
            );
        }
        Err(errors) => {
            metrics::config_reload("failure");
            for e in &errors {
                log::error!("config reload ({why}) refused, keeping the running config: {e}");
            }
        }
    }
}

/// What wakes a reload watcher: a poll tick, or SIGHUP. Shared by the config and the TLS
/// certificate watchers (each gets its own signal stream; tokio delivers SIGHUP to both).
pub struct Triggers {
    hup: Option<tokio::signal::unix::Signal>,
    tick: tokio::time::Interval,
}

impl Triggers {
    pub fn new(poll: Duration) -> Triggers {
        let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("cannot listen for SIGHUP ({e}); file-change reload still works");
                None
            }
        };
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Triggers { hup, tick }
    }

    /// Waits for the next tick (false) or SIGHUP (true: a forced reload).
    pub async fn next(&mut self) -> bool {
        let hup_recv = async {
            match self.hup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hup_recv => true,
            _ = self.tick.tick() => false,
        }
    }
}

/// Runs until the process ends: reload when the file changes or on SIGHUP.
pub async fn watch(handle: Arc<ConfigHandle>, poll: Duration) {
    let mut last = mtime(&handle);
    let mut triggers = Triggers::new(poll);
    loop {
        if triggers.next().await {
            let now = mtime(&handle);
            while !reload_settled(&handle, "SIGHUP").await {}
            last = now;
        } else {
            let now = mtime(&handle);
            if now.is_some() && now != last && reload_settled(&handle, "file changed").await {
                last = now;
            }
        }
    }
}
