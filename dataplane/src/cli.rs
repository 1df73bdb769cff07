//! The command line every data plane shares (`--config`, `--check`, `--version`, `--help`) and
//! the process lifecycle: signals, admin server, drain.
//!
//! | signal  | effect |
//! |---------|--------|
//! | SIGHUP  | reload: read → validate → build → one snapshot store; on failure keep the old config |
//! | SIGTERM | stop accepting, drain in-flight work up to `server.grace_period_seconds`, exit 0 |
//! | SIGINT  | exit at once (status 130) |

use crate::check::NetProber;
use crate::server::{Plane, Server};
use clap::{CommandFactory, FromArgMatches, Parser};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Run with this config file.
    #[arg(long, value_name = "FILE", required_unless_present = "check")]
    config: Option<PathBuf>,
    /// Validate this config file, print `ok` or the error, and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check: Option<PathBuf>,
}

/// The whole `main` of a data-plane binary.
pub fn main<P: Plane>() -> ExitCode {
    let matches = Args::command().name(P::NAME).about(P::ABOUT).get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if let Some(path) = args.check {
        return match causeway_config::load::<P::File>(&path) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(path) = args.config else {
        return ExitCode::FAILURE;
    };
    crate::telemetry::init_logging();
    let config = match causeway_config::load::<P::File>(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let workers = P::server(&config).workers;
    // One worker runs on a current-thread runtime: no work-stealing bookkeeping.
    let mut rt = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        rt.worker_threads(workers);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run::<P>(path, config))
}

/// Runs until SIGTERM or SIGINT.
pub async fn run<P: Plane>(path: PathBuf, config: P::Config) -> ExitCode {
    crate::telemetry::metrics();
    let admin_addr = P::admin(&config);
    let admin = match crate::listener::bind_tcp(admin_addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot bind admin {admin_addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::<P>::start(&path, config, Arc::new(NetProber)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (stop_admin, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::admin::serve(admin, server.clone(), stop_rx));
    let code = wait_for_signals(&server).await;
    // send fails only if the admin server already ended
    if stop_admin.send(true).is_err() {
        tracing::debug!("admin server already stopped");
    }
    code
}

async fn wait_for_signals<P: Plane>(server: &Arc<Server<P>>) -> ExitCode {
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // The outcome is logged and counted inside reload().
                if server.reload().await.is_err() {
                    tracing::debug!("SIGHUP reload refused");
                }
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining");
                server.shutdown().await;
                tracing::info!("drained, exiting");
                return ExitCode::SUCCESS;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: exiting now");
                return ExitCode::from(130);
            }
        }
    }
}
