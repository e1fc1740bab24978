//! The `portcullis` command: `run` (the default), `check`, `demo`, `probe`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use portcullis::{check, config, demo, probe, server, telemetry};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An authentication sidecar: validates bearer JWTs and forwards the verified identity to the app beside it."
)]
struct Cli {
    /// The TOML config file (also PORTCULLIS_CONFIG).
    #[arg(long, short = 'c', global = true, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default when only --config is given).
    Run,
    /// Validate the config and probe the issuers. Exit 0: all good; 2: invalid config;
    /// 1: valid config, but an issuer could not be probed.
    Check {
        /// Validate only; no network.
        #[arg(long)]
        offline: bool,
    },
    /// Start a development issuer, an echo app and the proxy on loopback. Development only.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:4180")]
        listen: SocketAddr,
        /// Where the demo's /healthz and /readyz listen.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// Put your own app on loopback behind the demo instead of the built-in echo app.
        #[arg(long)]
        upstream: Option<String>,
        /// Keep browser sessions on this Redis server (e.g. redis://127.0.0.1:6379/0) instead
        /// of in cookies.
        #[arg(long)]
        redis: Option<String>,
    },
    /// GET a URL (e.g. http://127.0.0.1:9090/healthz): exit 0 on a 2xx within the timeout,
    /// else 1 with the reason. For health checks in images without curl.
    Probe {
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

fn load(path: Option<&PathBuf>) -> Result<config::Loaded, ExitCode> {
    let Some(path) = path else {
        eprintln!("portcullis: --config FILE is required (or set PORTCULLIS_CONFIG); try `portcullis demo` for a self-contained example");
        return Err(ExitCode::from(check::INVALID_CONFIG));
    };
    config::load(Some(path), std::env::vars()).map_err(|e| {
        eprintln!("portcullis: invalid config: {e}");
        ExitCode::from(check::INVALID_CONFIG)
    })
}

/// The control runtime: admin endpoints, key refresh, signals, `check`, the demo's helpers.
/// Proxied traffic runs on the server's own worker threads.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let loaded = match load(cli.config.as_ref()) {
                Ok(l) => l,
                Err(code) => return code,
            };
            let guard = telemetry::init(&loaded.config.log);
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            match rt.block_on(server::run(loaded.config)) {
                Ok(deadline) => {
                    // Every access line is the audit record: wait for the log reader until the
                    // shutdown is due (at least a second), and say what could not be written.
                    let deadline = deadline.max(Instant::now() + Duration::from_secs(1));
                    if let Some(g) = guard {
                        g.finish(deadline);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("portcullis: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { offline } => {
            let loaded = match load(cli.config.as_ref()) {
                Ok(l) => l,
                Err(code) => return code,
            };
            for w in &loaded.warnings {
                println!("warning: {w}");
            }
            ExitCode::from(rt.block_on(check::run(&loaded.config, offline)))
        }
        Command::Probe { url, timeout } => match rt.block_on(probe::probe(&url, timeout)) {
            Ok(_) => ExitCode::SUCCESS,
            Err(why) => {
                eprintln!("portcullis probe: {why}");
                ExitCode::FAILURE
            }
        },
        Command::Demo { listen, admin_listen, upstream, redis } => {
            // The demo's log settings come from the environment like any config key's would.
            let log = config::LogConfig {
                level: std::env::var("PORTCULLIS_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
                format: match std::env::var("PORTCULLIS_LOG_FORMAT").as_deref() {
                    Ok("json") => config::LogFormat::Json,
                    _ => config::LogFormat::Text,
                },
            };
            let _guard = telemetry::init(&log);
            match rt.block_on(demo::run(listen, admin_listen, upstream, redis)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
