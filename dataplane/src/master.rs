//! Master mode (`--master`), as HAProxy's master-worker: one process keeps its PID (the one
//! systemd watches) while the data plane runs in a worker child.
//!
//! | signal to the master | effect |
//! |---------|--------|
//! | SIGHUP  | passed to every worker: a reload |
//! | SIGUSR2 | starts the binary now at the master's path as a new worker with `--upgrade`; it takes the sockets over `server.upgrade_socket` and the old worker drains and exits |
//! | SIGTERM, SIGINT | passed to every worker; the master exits once they all have |
//!
//! A worker that fails while an older one still serves (a failed upgrade: a bad config, a
//! binary that does not start) is logged and the older one goes on. When the last worker exits
//! without being told to, the master exits with failure, for systemd's `Restart=` to act; a
//! worker whose master is gone drains and exits.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Tells a worker its master's PID: a worker whose parent is no longer the master drains and
/// exits (`cli.rs`), so killing the master never leaves a worker behind.
pub const MASTER_PID_ENV: &str = "CAUSEWAY_MASTER_PID";

/// Sends `sig` to `pid`.
#[allow(unsafe_code)]
fn send(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is a child
    // this process has not reaped yet, so it cannot have been reused.
    let r = unsafe { libc::kill(pid, sig) };
    if r != 0 {
        tracing::warn!(pid, sig, error = %std::io::Error::last_os_error(), "master: kill");
    }
}

/// Starts a worker: the binary at `exe` with `--config`, and `--upgrade` to take over from the
/// running worker.
fn spawn(exe: &PathBuf, config: &PathBuf, upgrade: bool) -> std::io::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .env(MASTER_PID_ENV, std::process::id().to_string());
    if upgrade {
        cmd.arg("--upgrade");
    }
    let child = cmd.spawn()?;
    tracing::info!(pid = child.id(), upgrade, "master: worker started");
    Ok(child)
}

/// Runs the master until its workers have stopped. `exe` is the binary's path as it was at
/// start: an upgrade installs a new file there, and SIGUSR2 starts that.
pub async fn run(exe: PathBuf, config: PathBuf) -> ExitCode {
    let (Ok(mut hup), Ok(mut usr2), Ok(mut term), Ok(mut int), Ok(mut chld)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined2()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::child()),
    ) else {
        eprintln!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    // Oldest first: the last is the newest worker.
    let mut workers = match spawn(&exe, &config, false) {
        Ok(c) => vec![c],
        Err(e) => {
            eprintln!("master: cannot start {}: {e}", exe.display());
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(pid = std::process::id(), "master: running");
    let mut stopping: Option<ExitCode> = None;
    // A child's exit is noticed by SIGCHLD; the tick catches one that raced the handler.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = hup.recv() => {
                for w in &workers {
                    send(w.id(), libc::SIGHUP);
                }
            }
            _ = usr2.recv(), if stopping.is_none() => match spawn(&exe, &config, true) {
                Ok(c) => workers.push(c),
                Err(e) => tracing::error!(error = %e, exe = %exe.display(), "master: upgrade not started"),
            },
            _ = term.recv() => {
                stopping = Some(ExitCode::SUCCESS);
                for w in &workers {
                    send(w.id(), libc::SIGTERM);
                }
            }
            _ = int.recv() => {
                stopping = Some(ExitCode::from(130));
                for w in &workers {
                    send(w.id(), libc::SIGINT);
                }
            }
            _ = chld.recv() => {}
            _ = tick.tick() => {}
        }
        let newest = workers.last().map(Child::id);
        workers.retain_mut(|w| match w.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                let pid = w.id();
                if status.success() {
                    tracing::info!(pid, "master: worker exited");
                } else {
                    tracing::error!(pid, %status, newest = Some(pid) == newest, "master: worker failed");
                }
                false
            }
            Err(e) => {
                tracing::error!(pid = w.id(), error = %e, "master: waiting for a worker");
                false
            }
        });
        if workers.is_empty() {
            return match stopping {
                Some(code) => {
                    tracing::info!("master: workers stopped, exiting");
                    code
                }
                None => {
                    tracing::error!("master: the last worker ended unasked, exiting");
                    ExitCode::FAILURE
                }
            };
        }
    }
}
