//! Process wiring for `tollgate serve`: the Pingora server, its services, and shutdown.
//!
//! Shutdown: SIGTERM stops the listeners and lets requests in flight finish. Pingora then
//! sleeps the whole grace period whether or not anything is still running, so a drain
//! watcher exits as soon as the last request finished (after flushing the store writer),
//! and the grace period is only the upper bound. SIGINT is a fast exit; SIGQUIT is Pingora's
//! graceful upgrade.

use crate::app::App;
use crate::config::{self, ConfigHandle, ProviderKind};
use crate::metrics::{self, MetricsApp};
use crate::proxy::Gateway;
use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use pingora::server::ShutdownWatch;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests in flight, for the drain on SIGTERM.
pub static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Counts a request while it lives (held in its ctx, so every exit path decrements).
pub struct InFlight;

impl InFlight {
    pub fn enter() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

pub fn serve(path: PathBuf) -> Result<(), String> {
    let cfg = config::load(&path).map_err(|errs| {
        errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
    })?;
    for p in cfg.providers.values() {
        match &p.disabled_reason {
            Some(why) => log::warn!("provider '{}' ({}) is disabled: {why}", p.name, p.kind.as_str()),
            None => log::info!("provider '{}' ({}) enabled at {}", p.name, p.kind.as_str(), p.upstream.authority),
        }
    }
    metrics::init();
    let settings = cfg.server.clone();
    let mocks: Vec<String> = cfg
        .providers
        .values()
        .filter(|p| p.kind == ProviderKind::Mock && p.enabled)
        .filter_map(|p| p.serve_mock.clone())
        .collect();
    let handle = Arc::new(ConfigHandle::new(cfg, path));
    let app = Arc::new(App::open(handle.clone()).map_err(|e| format!("cannot open the store: {e:?}"))?);

    let conf = ServerConf {
        threads: settings.threads,
        grace_period_seconds: Some(settings.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(app.clone()),
        "tollgate",
    );
    for addr in &settings.listen {
        proxy.add_tcp(addr);
    }
    let certs = crate::tls::add_listeners(&mut proxy, &settings.tls_listen, &settings.tls_certs)?;
    server.add_service(proxy);

    if let Some(addr) = &settings.metrics_listen {
        let mut svc = Service::new("metrics".to_string(), MetricsApp);
        svc.add_tcp(addr);
        server.add_service(svc);
    }
    for addr in &mocks {
        log::info!("serving the mock provider in-process on {addr}");
        let state = Arc::new(crate::mock::MockState::new(None).without_request_log());
        server.add_service(crate::mock::mock_service(addr, state));
    }
    server.add_service(background_service(
        "config-reload",
        Housekeeping { app: app.clone(), poll: Duration::from_millis(settings.reload_poll_ms), certs },
    ));

    for addr in &settings.listen {
        log::info!("tollgate listening on http://{addr}");
    }
    let drain = Drain { app: app.clone(), grace: Duration::from_secs(settings.grace_period_secs) };
    server.run(RunArgs { shutdown_signal: Box::new(drain) });
    app.writer.shutdown();
    std::process::exit(0)
}

/// Config reload, and readiness once everything is up.
struct Housekeeping {
    app: Arc<App>,
    poll: Duration,
    /// The TLS listener's certificates, reloaded alongside the config (src/tls).
    certs: Option<Arc<crate::tls::CertResolver>>,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.app.set_ready();
        self.app.spawn_background(); // last-used flush, tier recompute (app.rs)
        let certs = async {
            match &self.certs {
                Some(r) => crate::tls::watch(self.app.config.clone(), r.clone(), self.poll).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = config::reload::watch(self.app.config.clone(), self.poll) => {}
            _ = certs => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Pingora's Unix signals, plus an early exit once a SIGTERM drain is complete.
struct Drain {
    app: Arc<App>,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Drain {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot install signal handlers");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                log::info!("SIGTERM: draining {} request(s) in flight, up to {:?}", IN_FLIGHT.load(Ordering::Acquire), self.grace);
                let app = self.app.clone();
                let grace = self.grace;
                std::thread::spawn(move || exit_when_drained(app, grace));
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

fn exit_when_drained(app: Arc<App>, grace: Duration) {
    let start = Instant::now();
    // Give the listeners a moment to stop accepting before counting.
    std::thread::sleep(Duration::from_millis(100));
    while start.elapsed() < grace {
        if IN_FLIGHT.load(Ordering::Acquire) == 0 {
            log::info!("drained in {:?}; exiting", start.elapsed());
            app.writer.shutdown();
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Pingora's own grace period ends now and shuts the runtimes down; `serve` flushes.
}

/// `tollgate check`: validate and summarise.
pub fn check(path: PathBuf) -> Result<String, Vec<String>> {
    match config::load(&path) {
        Ok(cfg) => {
            let enabled = cfg.providers.values().filter(|p| p.enabled).count();
            Ok(format!(
                "{}: OK — {} providers ({} enabled), {} models ({} available), listening on {}",
                path.display(),
                cfg.providers.len(),
                enabled,
                cfg.models.len(),
                cfg.available_models().count(),
                cfg.server.listen.join(", ")
            ))
        }
        Err(errs) => Err(errs.iter().map(|e| e.to_string()).collect()),
    }
}
