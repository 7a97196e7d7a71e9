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
    },
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
        Command::MockUpstream { listen, api_key } => {
            let state = std::sync::Arc::new(tollgate::mock::MockState::new(api_key));
            tollgate::mock::server::run_standalone_with(&listen, state)
        }
    }
}
