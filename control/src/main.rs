//! The causeway-control binary: `--check` validates a control config; `plan` discovers and
//! prints each data plane's target changes; `apply` does one reconcile pass; `run` loops;
//! `demo` runs the local stack.

mod aws;
mod demo;
mod discover;
mod reconcile;
mod render;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "causeway-control", version, about = "Causeway's control plane")]
struct Args {
    /// Validate this config file, print `ok` or the error, and exit.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// The config file for `run`, `plan` and `apply`.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the discovery and reconcile loop.
    Run,
    /// Show what would change, write nothing.
    Plan,
    /// Do one reconcile pass.
    Apply {
        /// Override the safety brake (the operator's confirmation).
        #[arg(long)]
        force: bool,
    },
    /// Start the local demo stack (origins, two albs, nlb, edge) until Ctrl-C.
    Demo {
        /// Print one status and stop (for scripts).
        #[arg(long)]
        once: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = args.check {
        return match causeway_config::load::<causeway_config::control::FileControl>(&path) {
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
    let (command, force) = match args.command {
        Some(Command::Demo { once }) => return demo::run(once),
        Some(Command::Run) => ("run", false),
        Some(Command::Plan) => ("plan", false),
        Some(Command::Apply { force }) => ("apply", force),
        None => {
            eprintln!("causeway-control: give a command (run, plan, apply, demo) or --check FILE");
            return ExitCode::from(2);
        }
    };
    let Some(path) = &args.config else {
        eprintln!("causeway-control {command}: give --config FILE");
        return ExitCode::from(2);
    };
    let cfg = match causeway_config::load::<causeway_config::control::FileControl>(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    causeway_dataplane::telemetry::init_logging();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("causeway-control: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match command {
            "plan" => match reconcile::discover(&cfg).await {
                Ok(instances) => {
                    let planned = reconcile::plan(&cfg, &instances);
                    print!("{}", reconcile::describe(&instances, &planned));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            },
            "apply" => pass(&cfg, force).await,
            _ => run(&cfg).await,
        }
    })
}

/// One reconcile pass: exit 0 when applied (or nothing changed), 4 when the safety brake held,
/// 1 on any other failure.
async fn pass(cfg: &causeway_config::control::ControlConfig, force: bool) -> ExitCode {
    let instances = match reconcile::discover(cfg).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let planned = reconcile::plan(cfg, &instances);
    print!("{}", reconcile::describe(&instances, &planned));
    match reconcile::apply(&planned, force).await {
        Ok(n) => {
            println!("applied: {n} data plane(s) reloaded");
            ExitCode::SUCCESS
        }
        Err(e @ reconcile::ReconcileError::Brake { .. }) => {
            eprintln!("{e}");
            ExitCode::from(4)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The loop: a pass every refresh interval; a failed discovery or a held brake keeps the last
/// good set and says so every time, until it clears or an operator confirms.
async fn run(cfg: &causeway_config::control::ControlConfig) -> ExitCode {
    let every = match &cfg.provider {
        causeway_config::control::Provider::Aws {
            refresh_interval, ..
        } => *refresh_interval,
        causeway_config::control::Provider::Static { .. } => std::time::Duration::from_secs(15),
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("causeway-control: {e}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        match reconcile::discover(cfg).await {
            Ok(instances) => {
                let planned = reconcile::plan(cfg, &instances);
                match reconcile::apply(&planned, false).await {
                    Ok(0) => tracing::debug!("no change"),
                    Ok(n) => tracing::info!(reloaded = n, "targets updated"),
                    Err(e) => tracing::error!(error = %e, "reconcile held"),
                }
            }
            Err(e) => tracing::error!(error = %e, "discovery failed; keeping the last good set"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            _ = term.recv() => return ExitCode::SUCCESS,
        }
    }
}
