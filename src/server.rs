//! Process wiring for `tollgate serve`: the Pingora server, its services, and shutdown.
//!
//! Shutdown: SIGTERM stops the listeners and lets requests in flight finish. Pingora then
//! sleeps the whole grace period whether or not anything is still running, so a drain
//! watcher exits as soon as the last request finished (after flushing the store writer),
//! and the grace period is only the upper bound. SIGINT is a fast exit.
//!
//! Graceful upgrade (docs/upgrades.md): a new process started with `serve --upgrade` waits on
//! `server.upgrade_sock`; SIGQUIT to the old one makes Pingora send it the listening sockets.
//! The old process keeps accepting for Pingora's fixed 5 s, then stops and hands the store
//! over (`App::hand_off`: its writer switches to a journal, the redb file is closed); the new
//! one, which waits for the file, opens it, applies the journal as it grows and starts
//! serving. The old process exits as soon as its last request (stream) finished.

use crate::app::App;
use crate::config::{self, ConfigHandle, ProviderKind};
use crate::metrics::{self, MetricsApp};
use crate::proxy::Gateway;
use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
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

/// Runs the gateway. `upgrade`: take over the listening sockets (and then the store) of a
/// running instance on the same config, once it gets SIGQUIT.
pub fn serve(path: PathBuf, upgrade: bool) -> Result<(), String> {
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

    let conf = ServerConf {
        threads: settings.threads,
        grace_period_seconds: Some(settings.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(1),
        // Pingora 0.9.1 waits a fixed ~5 s on it, both for the new process's accept and the
        // old process's connect (`upgrade_sock_connect_accept_max_retries` is not used there).
        upgrade_sock: settings.upgrade_sock.to_string_lossy().into_owned(),
        ..Default::default()
    };
    let opt = Opt { upgrade, ..Default::default() };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    if upgrade {
        log::info!(
            "upgrade: waiting about 5 s on {} for the running process's listening sockets (send it SIGQUIT now)",
            settings.upgrade_sock.display()
        );
    }
    // With --upgrade this blocks until the old process sent its sockets (or exits the process).
    server.bootstrap();

    let timeout = Duration::from_secs(if upgrade { settings.upgrade_store_wait_secs } else { 0 });
    let (app, waited) = crate::store::handoff::retry_while_locked(timeout, || App::open(handle.clone()))
        .map_err(|e| format!("cannot open the store: {e}"))?;
    let app = Arc::new(app);
    if upgrade {
        log::info!("upgrade: listening sockets received; store opened after waiting {} ms for the old process", waited.as_millis());
    }
    // Charges the previous process settled after it let go of the store (or before it died).
    let pending = crate::upgrade::import_now(&app);
    crate::upgrade::spawn_tailer(app.clone(), pending);

    // The proxy behind the per-connection defences (proxy/front.rs: connection caps, header
    // deadline and size, request framing).
    let gateway = pingora::proxy::http_proxy(&server.configuration, Gateway::new(app.clone()));
    let mut proxy = Service::new("tollgate".to_string(), crate::proxy::front::Front::new(gateway, app.clone()));
    for addr in &settings.listen {
        proxy.add_listener(crate::tls::listener(addr, None));
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
    let grace = Duration::from_secs(settings.grace_period_secs);
    let drain = Drain { app: app.clone(), grace };
    let phases = server.watch_execution_phase();
    let watched = app.clone();
    std::thread::Builder::new()
        .name("tollgate-upgrade".into())
        .spawn(move || hand_off_when_upgraded(phases, watched, grace))
        .map_err(|e| format!("cannot start the upgrade watcher: {e}"))?;
    server.run(RunArgs { shutdown_signal: Box::new(drain) });
    app.writer.shutdown();
    app.store.close(); // marks the file cleanly shut down: the next start needs no repair
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

/// Old process of a graceful upgrade: once Pingora has sent the listening sockets and stopped
/// accepting (the shutdown that follows SIGQUIT), hand the store over, then exit as soon as
/// the requests in flight are done.
fn hand_off_when_upgraded(mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>, app: Arc<App>, grace: Duration) {
    use tokio::sync::broadcast::error::RecvError;
    let mut upgrading = false;
    loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => upgrading = true,
            Ok(ExecutionPhase::ShutdownStarted) if upgrading => break,
            Ok(ExecutionPhase::ShutdownStarted) | Err(RecvError::Closed) => return,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
        }
    }
    log::info!("upgrade: handing the store over; {} request(s) in flight finish here", IN_FLIGHT.load(Ordering::Acquire));
    match app.hand_off() {
        Ok(journal) => log::info!("upgrade: store closed; later charges go to {}", journal.display()),
        Err(e) => log::error!("upgrade: store handoff failed: {e}"),
    }
    exit_when_drained(app, grace);
}

fn exit_when_drained(app: Arc<App>, grace: Duration) {
    let start = Instant::now();
    // Give the listeners a moment to stop accepting before counting.
    std::thread::sleep(Duration::from_millis(100));
    while start.elapsed() < grace {
        if IN_FLIGHT.load(Ordering::Acquire) == 0 {
            log::info!("drained in {:?}; exiting", start.elapsed());
            app.writer.shutdown();
            app.store.close();
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
