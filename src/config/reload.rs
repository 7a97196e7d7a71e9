//! Hot reload: the config file's modification time is polled, and SIGHUP forces a reload.
//!
//! Polling (every `server.reload_poll_ms`) instead of inotify keeps the dependency list short
//! and works on every filesystem, including the bind mounts and ConfigMap symlink swaps that
//! operators use; one `stat` a second costs nothing.

use super::ConfigHandle;
use crate::metrics;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn mtime(handle: &ConfigHandle) -> Option<SystemTime> {
    std::fs::metadata(handle.path()).and_then(|m| m.modified()).ok()
}

/// Validate and swap; a bad file leaves the running config in place, logged and counted.
pub fn reload_now(handle: &ConfigHandle, why: &str) {
    match handle.reload() {
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

/// Runs until the process ends: reload when the file changes or on SIGHUP.
pub async fn watch(handle: Arc<ConfigHandle>, poll: Duration) {
    let mut last = mtime(&handle);
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!("cannot listen for SIGHUP ({e}); file-change reload still works");
            None
        }
    };
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hup_recv => {
                last = mtime(&handle);
                reload_now(&handle, "SIGHUP");
            }
            _ = tick.tick() => {
                let now = mtime(&handle);
                if now.is_some() && now != last {
                    last = now;
                    reload_now(&handle, "file changed");
                }
            }
        }
    }
}
