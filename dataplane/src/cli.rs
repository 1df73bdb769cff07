//! The command line every data plane shares (`--config`, `--check`, `--version`, `--help`) and
//! the process lifecycle: signals, admin server, drain.
//!
//! | signal  | effect |
//! |---------|--------|
//! | SIGHUP  | reload: read → validate → build → one snapshot store; on failure keep the old config |
//! | SIGTERM | stop accepting, drain in-flight work up to `server.grace_period_seconds`, exit 0 |
//! | SIGINT  | exit at once (status 130) |
//!
//! `--upgrade` starts a new binary on the running one's listening sockets
//! (`server.upgrade_socket`, see `upgrade.rs`); the old one then drains and exits 0. `--master`
//! runs a master that keeps one PID across such upgrades (`master.rs`).

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
    /// Take the listening sockets over from the process serving `server.upgrade_socket`, then
    /// let it drain and exit: a binary upgrade without a refused connection.
    #[arg(long, requires = "config")]
    upgrade: bool,
    /// Run as a master that keeps its PID (for systemd) while a worker child serves: SIGHUP
    /// reloads the worker, SIGUSR2 upgrades it to the binary now on disk, SIGTERM drains it.
    #[arg(long, requires = "config", conflicts_with = "upgrade")]
    master: bool,
}

/// The whole `main` of a data-plane binary.
pub fn main<P: Plane>() -> ExitCode {
    let matches = Args::command().name(P::NAME).about(P::ABOUT).get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if let Some(path) = args.check {
        let checked = causeway_config::load::<P::File>(&path)
            .map_err(|e| e.to_string())
            .and_then(|cfg| P::check(&cfg).map_err(|e| format!("{}: {e}", path.display())));
        return match checked {
            Ok(()) => {
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
    catch_hangup_from_the_start();
    crate::telemetry::init_logging();
    let config = match causeway_config::load::<P::File>(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if args.master {
        return master(&path, P::server(&config).upgrade_socket.is_some());
    }
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
    rt.block_on(run::<P>(path, config, args.upgrade))
}

/// Catches SIGHUP before the config loads: its default action ends the process, and a reload
/// can come that early (a master passing one on to a worker still starting, or systemd's
/// `reload` just after `start`). One that early is dropped, not acted on: the config is being
/// read fresh anyway. tokio keeps a handler it installed for the life of the process, so a
/// throwaway runtime installs it; `run` and the master then listen with their own streams.
fn catch_hangup_from_the_start() {
    let installed = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map(|rt| rt.block_on(async { signal(SignalKind::hangup()).map(drop) }));
    if !matches!(installed, Ok(Ok(()))) {
        eprintln!("cannot catch SIGHUP: a reload sent while starting would end the process");
    }
}

/// The path this binary was started by, symlinks kept (a deploy that switches a symlink to a
/// new release upgrades to it); as an absolute path when it names a file, else the resolved
/// executable.
fn own_path() -> std::io::Result<PathBuf> {
    match std::env::args_os().next().map(PathBuf::from) {
        Some(p) if p.components().count() > 1 => Ok(std::env::current_dir()?.join(p)),
        _ => std::env::current_exe(),
    }
}

/// `--master`: the master's own small runtime, and this binary's path for its workers.
fn master(path: &std::path::Path, has_upgrade_socket: bool) -> ExitCode {
    if !has_upgrade_socket {
        eprintln!(
            "--master needs server.upgrade_socket in the config file (workers hand over by it)"
        );
        return ExitCode::FAILURE;
    }
    let exe = match own_path() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("--master: cannot find this binary's path: {e}");
            return ExitCode::FAILURE;
        }
    };
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(crate::master::run(exe, path.to_owned())),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The signals a data plane handles, installed as `run` starts: one that arrives while the
/// sockets bind waits for the loop.
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Runs until SIGTERM or SIGINT, or until a newer binary has taken the sockets over.
pub async fn run<P: Plane>(path: PathBuf, config: P::Config, upgrade: bool) -> ExitCode {
    use std::os::fd::AsFd;
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    crate::telemetry::spawn_upkeep();
    let upgrade_socket = P::server(&config).upgrade_socket.clone();
    let mut inherited = None;
    if upgrade {
        let Some(sock) = upgrade_socket.clone() else {
            eprintln!("--upgrade needs server.upgrade_socket in the config file");
            return ExitCode::FAILURE;
        };
        match tokio::task::spawn_blocking(move || crate::upgrade::receive(&sock)).await {
            Ok(Ok(i)) => {
                tracing::info!(
                    from_pid = i.from_pid,
                    listeners = i.listeners.len(),
                    "upgrade: took the running process's sockets"
                );
                inherited = Some(i);
            }
            Ok(Err(e)) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("upgrade: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let admin_addr = P::admin(&config);
    let inherited_admin = inherited
        .as_mut()
        .and_then(|i| i.admin.take())
        .filter(|(a, _)| *a == admin_addr)
        .map(|(_, l)| l);
    let admin = match inherited_admin {
        Some(l) => l
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(l)),
        None => crate::listener::bind_tcp(admin_addr),
    };
    let admin = match admin {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot bind admin {admin_addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admin_socket = admin.as_fd().try_clone_to_owned().ok();
    let sockets = inherited
        .as_mut()
        .map(|i| std::mem::take(&mut i.listeners))
        .unwrap_or_default();
    let server = match Server::<P>::start_with(&path, config, Arc::new(NetProber), sockets).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (stop_admin, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::admin::serve(admin, server.clone(), stop_rx));
    let (upgraded_tx, upgraded) = tokio::sync::oneshot::channel();
    if let Some(sock) = upgrade_socket {
        match crate::upgrade::listen(&sock) {
            Ok(unix) => {
                let weak = Arc::downgrade(&server);
                tokio::spawn(async move {
                    crate::upgrade::offer(unix, sock, move || crate::upgrade::Handoff {
                        listeners: weak
                            .upgrade()
                            .map(|s| s.listener_sockets())
                            .unwrap_or_default(),
                        admin: admin_socket
                            .as_ref()
                            .and_then(|s| s.try_clone().ok())
                            .map(|s| (admin_addr, s)),
                    })
                    .await;
                    let _ = upgraded_tx.send(());
                });
            }
            Err(e) => tracing::error!(error = %e, "upgrades are off for this process"),
        }
    }
    if let Some(i) = inherited {
        // This process serves now, and answers the next upgrade: the old one may stop
        // accepting and drain.
        match tokio::task::spawn_blocking(move || i.ready()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "upgrade: telling the old process failed"),
            Err(e) => tracing::warn!(error = %e, "upgrade: telling the old process failed"),
        }
    }
    let code = wait_for_signals(&server, signals, upgraded, &stop_admin).await;
    // send fails only if the admin server already ended
    if stop_admin.send(true).is_err() {
        tracing::debug!("admin server already stopped");
    }
    code
}

/// Resolves when this process is a master's worker (`CAUSEWAY_MASTER_PID`) and that master is
/// no longer its parent: a worker does not outlive its master (checked every second).
async fn orphaned() {
    let master = std::env::var(crate::master::MASTER_PID_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok());
    let Some(master) = master else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        if std::os::unix::process::parent_id() != master {
            return;
        }
    }
}

async fn wait_for_signals<P: Plane>(
    server: &Arc<Server<P>>,
    signals: Signals,
    mut upgraded: tokio::sync::oneshot::Receiver<()>,
    stop_admin: &tokio::sync::watch::Sender<bool>,
) -> ExitCode {
    let Signals {
        mut hup,
        mut term,
        mut int,
    } = signals;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // The outcome is logged and counted inside reload().
                if server.reload().await.is_err() {
                    tracing::debug!("SIGHUP reload refused");
                }
            }
            () = orphaned() => {
                tracing::warn!("the master is gone: draining");
                server.shutdown().await;
                tracing::info!("drained, exiting");
                return ExitCode::SUCCESS;
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
            Ok(()) = &mut upgraded => {
                // The new process has the sockets, the admin one included: stop answering on it.
                let _ = stop_admin.send(true);
                server.shutdown().await;
                tracing::info!("drained after the upgrade, exiting");
                return ExitCode::SUCCESS;
            }
        }
    }
}
