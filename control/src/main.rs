//! The causeway-control binary: `--check` validates a control config, `demo` runs the local
//! stack; discovery, reconcile and drain (`run`, `plan`, `apply`) are the control issue's work.

mod demo;

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
    Apply,
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
    let what = match args.command {
        Some(Command::Run) => "run",
        Some(Command::Plan) => "plan",
        Some(Command::Apply) => "apply",
        Some(Command::Demo { once }) => return demo::run(once),
        None => {
            eprintln!("causeway-control: give a command (run, plan, apply, demo) or --check FILE");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &args.config {
        if let Err(e) = causeway_config::load::<causeway_config::control::FileControl>(path) {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    eprintln!("causeway-control {what}: not implemented yet (see the control issue)");
    ExitCode::from(3)
}
