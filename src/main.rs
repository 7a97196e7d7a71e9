//! `tollgate`: the gateway (`serve`), its config checker (`check`), the project's own
//! fake provider (`mock-upstream`), and the store tools (`backup`, `restore`, `export`).

use clap::{Parser, Subcommand};

// glibc malloc showed up under load as ~20% of the gateway's samples, much of it lock
// contention when one thread frees what another allocated (the store writer and the access
// log free what request threads built); jemalloc's thread caches avoid that. `alloc.rs` adds
// a per-thread cache for Pingora's 64 KiB body buffers, which jemalloc's own cache skips.
#[global_allocator]
static GLOBAL: tollgate::alloc::Allocator = tollgate::alloc::Allocator;

// jemalloc's options, read when it starts (before `main`). `tcache_gc_incr_bytes`: jemalloc
// walks a thread cache's bins to return unused slots every this many bytes a thread
// allocates (64 KiB by default), which a proxied request reaches about twice. Every 8 MiB
// instead: ~2.5% fewer instructions per request (callgrind, load-bench request), while each
// bin stays capped by its slot count, so the memory a cache holds stays bounded (idle RSS in
// the load bench 17.7 MB). `_RJEM_MALLOC_CONF` in the environment can still override it.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static std::ffi::c_char> =
    // SAFETY: a pointer to the first byte of a NUL-terminated static string, as jemalloc reads it.
    Some(unsafe { &*c"tcache_gc_incr_bytes:8388608".as_ptr() });
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "tollgate", version, about = "An OpenAI-compatible AI gateway on Pingora")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file; defaults to $TOLLGATE_CONFIG, then conf/tollgate.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Take over from a running instance on the same config (graceful upgrade): wait for
        /// its listening sockets on `server.upgrade_sock`, then send the old process SIGQUIT.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file: exit 0 with a summary, or 1 with every error.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the fake provider used by tests, benchmarks and the demo.
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:9390")]
        listen: String,
        /// Require `Authorization: Bearer <KEY>` from callers.
        #[arg(long)]
        api_key: Option<String>,
        /// Also serve HTTPS (ALPN h2 and http/1.1) on this address, with --tls-cert/--tls-key.
        #[arg(long, requires_all = ["tls_cert", "tls_key"])]
        tls_listen: Option<String>,
        #[arg(long)]
        tls_cert: Option<String>,
        #[arg(long)]
        tls_key: Option<String>,
    },
    /// Write a consistent, compacted copy of the store to FILE, while serving or not. With a
    /// gateway running, it is asked (admin API, admin token from the environment) to write it.
    Backup {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The backup file to write.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Replace the store with a backup: refused while a gateway runs; the backup is verified
    /// first and the old store is kept aside as tollgate.redb.pre-restore-<time>.
    Restore {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The backup file to restore.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
    /// Write accounts, ledger entries and generations as JSON lines, for accounting.
    Export {
        #[arg(long)]
        config: Option<PathBuf>,
        /// A store file or data directory to read (e.g. a backup); default: the config's store.
        #[arg(long, value_name = "STORE")]
        from: Option<PathBuf>,
        /// Only entries at or after this time: unix seconds or YYYY-MM-DD (UTC).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// The file to write, or - for standard output.
        #[arg(long, value_name = "FILE|-")]
        to: String,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
}

/// Prints an operator tool's summary (to stderr when stdout carries data), or its error and
/// exits 1.
fn finish(result: Result<String, String>, to_stderr: bool) {
    match result {
        Ok(summary) if to_stderr => eprintln!("{summary}"),
        Ok(summary) => println!("{summary}"),
        Err(e) => {
            eprintln!("tollgate: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, upgrade } => {
            let path = config.unwrap_or_else(tollgate::config::default_path);
            if let Err(e) = tollgate::server::serve(path, upgrade) {
                eprintln!("tollgate: {e}");
                std::process::exit(1);
            }
        }
        Command::Check { config } => {
            let path = config.unwrap_or_else(tollgate::config::default_path);
            match tollgate::server::check(path) {
                Ok(summary) => println!("{summary}"),
                Err(errors) => {
                    for e in errors {
                        eprintln!("{e}");
                    }
                    std::process::exit(1);
                }
            }
        }
        Command::MockUpstream { listen, api_key, tls_listen, tls_cert, tls_key } => {
            let state = std::sync::Arc::new(tollgate::mock::MockState::new(api_key));
            let tls = match (tls_listen, tls_cert, tls_key) {
                (Some(addr), Some(cert), Some(key)) => Some((addr, cert, key)),
                _ => None,
            };
            tollgate::mock::server::run_standalone_tls(&listen, tls, state)
        }
        Command::Backup { config, to, force } => {
            let path = config.unwrap_or_else(tollgate::config::default_path);
            finish(tollgate::ops::backup(&path, &to, force), false)
        }
        Command::Restore { config, from } => {
            let path = config.unwrap_or_else(tollgate::config::default_path);
            finish(tollgate::ops::restore(&path, &from), false)
        }
        Command::Export { config, from, since, to, force } => {
            let path = config.unwrap_or_else(tollgate::config::default_path);
            let result = tollgate::ops::export(&path, from.as_deref(), since.as_deref(), &to, force);
            finish(result, to == "-")
        }
    }
}
