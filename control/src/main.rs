//! The causeway-control binary: `--check` validates a control config; `plan` discovers and
//! prints each data plane's target changes; `apply` does one reconcile pass; `run` loops;
//! `demo` runs the local stack. Each pass: discover → plan → (debounce) → apply → drain.

mod admin;
mod aws;
mod demo;
mod discover;
mod drain;
mod reconcile;
mod render;

use causeway_config::control::ControlConfig;
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
        let source = reconcile::Source::new(&cfg).await;
        match command {
            "plan" => match source.discover(&cfg).await {
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
            "apply" => pass(&cfg, &source, force).await,
            _ => run(&cfg, &source).await,
        }
    })
}

/// One reconcile pass, then the drains it allows: exit 0 when applied (or nothing changed) and
/// every terminating instance was drained and completed, 4 when the safety brake held, 1 on any
/// other failure.
async fn pass(cfg: &ControlConfig, source: &reconcile::Source, force: bool) -> ExitCode {
    let instances = match source.discover(cfg).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let planned = reconcile::plan(cfg, &instances);
    print!("{}", reconcile::describe(&instances, &planned));
    match reconcile::apply(&planned, force).await {
        Ok(n) => println!("applied: {n} data plane(s) reloaded"),
        Err(e @ reconcile::ReconcileError::Brake { .. }) => {
            eprintln!("{e}");
            return ExitCode::from(4);
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    let mut drains = Drains::default();
    drains.start(cfg, source, &instances);
    let mut ok = true;
    while let Some((id, outcome)) = drains.next().await {
        println!("lifecycle action for {id}: {}", describe_outcome(&outcome));
        ok &= !matches!(outcome, drain::Outcome::Failed(_));
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn describe_outcome(o: &drain::Outcome) -> String {
    match o {
        drain::Outcome::Drained { after, heartbeats } => format!(
            "CONTINUE after draining for {:.1} s ({heartbeats} heartbeats)",
            after.as_secs_f64()
        ),
        drain::Outcome::TimedOut {
            after,
            heartbeats,
            last,
        } => format!(
            "CONTINUE at the drain timeout, {:.1} s ({heartbeats} heartbeats); still busy: {last:?}",
            after.as_secs_f64()
        ),
        drain::Outcome::Failed(e) => format!("failed: {e}"),
    }
}

/// The drains in progress, one task per terminating instance.
#[derive(Default)]
struct Drains {
    tasks: tokio::task::JoinSet<(String, drain::Outcome)>,
    ids: std::collections::BTreeSet<String>,
}

impl Drains {
    /// Starts a drain for every instance waiting on a Terminating hook that has none yet.
    fn start(
        &mut self,
        cfg: &ControlConfig,
        source: &reconcile::Source,
        instances: &[discover::Instance],
    ) {
        let reconcile::Source::Aws(aws) = source else {
            return;
        };
        if !cfg.lifecycle.enabled {
            return;
        }
        for w in drain::waiting(cfg, instances) {
            if !self.ids.insert(w.instance.clone()) {
                continue;
            }
            tracing::info!(instance = %w.instance, hook = %w.hook.name, places = w.places.len(),
                "draining before termination");
            let (aws, policy) = (aws.clone(), cfg.lifecycle.clone());
            self.tasks.spawn(async move {
                let outcome = drain::drain(aws.as_ref(), &w, &policy).await;
                (w.instance, outcome)
            });
        }
        admin::set_draining(&self.ids);
    }

    /// The next drain to end.
    async fn next(&mut self) -> Option<(String, drain::Outcome)> {
        let done = match self.tasks.join_next().await? {
            Ok(d) => d,
            Err(e) => (String::new(), drain::Outcome::Failed(e.to_string())),
        };
        self.finish(&done);
        Some(done)
    }

    /// The drains that have ended since the last call.
    fn reap(&mut self) {
        while let Some(r) = self.tasks.try_join_next() {
            let done = match r {
                Ok(d) => d,
                Err(e) => (String::new(), drain::Outcome::Failed(e.to_string())),
            };
            match &done.1 {
                drain::Outcome::Failed(e) => {
                    tracing::error!(instance = %done.0, error = %e, "lifecycle action failed")
                }
                o => tracing::info!(instance = %done.0, outcome = %describe_outcome(o),
                    "lifecycle action completed"),
            }
            self.finish(&done);
        }
    }

    fn finish(&mut self, (id, outcome): &(String, drain::Outcome)) {
        self.ids.remove(id);
        metrics::counter!("causeway_control_lifecycle_actions_total", "result" => outcome.label())
            .increment(1);
        admin::set_draining(&self.ids);
    }
}

/// The loop: a pass every refresh interval. A changed plan is applied once it has held still
/// for the debounce; a failed discovery or a held brake keeps the last good set and says so
/// every time, until it clears or an operator confirms. Drains start once the pass that removes
/// their instance has been applied.
async fn run(cfg: &ControlConfig, source: &reconcile::Source) -> ExitCode {
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
    causeway_dataplane::telemetry::metrics();
    if let Some(a) = &cfg.admin {
        match tokio::net::TcpListener::bind(a.address).await {
            Ok(l) => {
                tokio::spawn(admin::serve(l));
            }
            Err(e) => {
                eprintln!("causeway-control: admin {}: {e}", a.address);
                return ExitCode::FAILURE;
            }
        }
    }
    let mut debounce = reconcile::Debounce::new(cfg.debounce);
    let mut drains = Drains::default();
    loop {
        let mut wait = every;
        drains.reap();
        match source.discover(cfg).await {
            Ok(instances) => {
                let planned = reconcile::plan(cfg, &instances);
                let fp = reconcile::fingerprint(&planned);
                let (settled, problem) = match debounce.observe(fp, tokio::time::Instant::now()) {
                    reconcile::Step::Idle => (true, None),
                    reconcile::Step::Wait(d) => {
                        tracing::info!(wait = ?d, "targets changed; waiting for them to settle");
                        wait = d.min(every);
                        (false, None)
                    }
                    reconcile::Step::Apply => match reconcile::apply(&planned, false).await {
                        Ok(n) => {
                            tracing::info!(reloaded = n, "targets updated");
                            (true, None)
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "reconcile held");
                            (false, Some(e.to_string()))
                        }
                    },
                };
                admin::record_pass(instances.len(), problem);
                if settled {
                    drains.start(cfg, source, &instances);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "discovery failed; keeping the last good set");
                admin::record_pass(0, Some(e.to_string()));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            _ = term.recv() => return ExitCode::SUCCESS,
        }
    }
}
