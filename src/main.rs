//! `tollgate`: the gateway (`serve`), its config checker (`check`), and the project's own
//! fake provider (`mock-upstream`).

use clap::{Parser, Subcommand};

// glibc malloc showed up under load as ~20% of the gateway's samples, much of it lock
// contention when one thread frees what another allocated (the store writer and the access
// log free what request threads built); jemalloc's thread caches avoid that.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
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
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let path = config.unwrap_or_else(tollgate::config::default_path);
            if let Err(e) = tollgate::server::serve(path) {
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
    }
}
