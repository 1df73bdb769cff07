//! `causeway-control demo`: the whole pipeline on loopback, wired by the ports contract:
//! three built-in WordPress-like origins, two alb replicas, one nlb and one edge, started from
//! `examples/`, with a live status until Ctrl-C, then a clean stop of every child.

pub mod origin;
pub mod status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

/// The data planes of the demo: (binary, example config, admin address).
const PLANES: [(&str, &str, &str); 4] = [
    ("causeway-alb", "alb.toml", "127.0.0.1:9182"),
    ("causeway-alb", "alb-2.toml", "127.0.0.1:9183"),
    ("causeway-nlb", "nlb.toml", "127.0.0.1:9181"),
    ("causeway-edge", "edge.toml", "127.0.0.1:9180"),
];

/// Where the examples are: `./examples`, or next to the source tree this binary was built from.
fn examples_dir() -> Option<PathBuf> {
    let here = PathBuf::from("examples");
    if here.join("alb.toml").exists() {
        return Some(here);
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    built.join("alb.toml").exists().then_some(built)
}

/// The data-plane binaries sit next to this one.
fn sibling(name: &str) -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let p = me.parent()?.join(name);
    p.exists().then_some(p)
}

struct Children(Vec<(String, Child)>);

impl Children {
    /// SIGTERM to every child, then wait; SIGKILL whatever is left after `grace`.
    fn stop(&mut self, grace: Duration) {
        for (_, c) in &self.0 {
            if let Err(e) = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status()
            {
                eprintln!("kill -TERM {}: {e}", c.id());
            }
        }
        let deadline = std::time::Instant::now() + grace;
        for (name, c) in &mut self.0 {
            loop {
                match c.try_wait() {
                    Ok(Some(st)) => {
                        println!("  {name} stopped ({st})");
                        break;
                    }
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        if let Err(e) = c.kill() {
                            eprintln!("kill {name}: {e}");
                        }
                        println!("  {name} killed after {grace:?}");
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            if matches!(c.try_wait(), Ok(None)) {
                drop(c.kill());
            }
        }
    }
}

/// Runs the demo until Ctrl-C. `once` prints one status and stops (for scripts and tests).
pub fn run(once: bool) -> ExitCode {
    let Some(examples) = examples_dir() else {
        eprintln!("demo: run it from the repository root (examples/ not found)");
        return ExitCode::FAILURE;
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (n, port) in [(1, 9001), (2, 9002), (3, 9003)] {
        let addr: SocketAddr = format!("127.0.0.1:{port}")
            .parse()
            .expect("literal address");
        rt.spawn(async move {
            if let Err(e) = origin::run(n, addr).await {
                eprintln!("demo origin {n} on {addr}: {e}");
            }
        });
    }
    let mut children = Children(Vec::new());
    for (bin, file, _) in PLANES {
        let Some(path) = sibling(bin) else {
            eprintln!("demo: {bin} not found next to causeway-control (cargo build --release --workspace --bins)");
            return ExitCode::FAILURE;
        };
        let config = examples.join(file);
        match Command::new(&path)
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
        {
            Ok(c) => children.0.push((format!("{bin} ({file})"), c)),
            Err(e) => {
                eprintln!("demo: cannot start {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    print_banner(&examples);
    let stop =
        rt.block_on(async {
            let mut int =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
                    Ok(s) => s,
                    Err(e) => return Err(e.to_string()),
                };
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => return Err(e.to_string()),
                };
            let mut last = status::Counters::default();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            loop {
                let now = status::collect(&PLANES.map(|(_, f, a)| (f, a))).await;
                print!("{}", status::render(&now, &last));
                last = now.counters;
                if once {
                    // One request through every hop, twice: the second is the edge's hit.
                    for _ in 0..2 {
                        println!(
                            "pipeline GET / via the edge: {}",
                            status::probe("127.0.0.1:8080", "/").await
                        );
                    }
                    return Ok(());
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = int.recv() => return Ok(()),
                    _ = term.recv() => return Ok(()),
                }
            }
        });
    println!("\nstopping…");
    children.stop(Duration::from_secs(15));
    match stop {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_banner(examples: &Path) {
    println!("Causeway demo (configs from {}):", examples.display());
    println!("  edge  http://127.0.0.1:8080/   (the caching edge, WordPress preset: see X-Cache)");
    println!("  nlb   http://127.0.0.1:8081/   (L4, Maglev over the two albs)");
    println!("  albs  http://127.0.0.1:8082/  http://127.0.0.1:8083/");
    println!("  origins 127.0.0.1:9001-9003: /  /wp-login.php  /wp-admin/  /wp-content/uploads/x.jpg  /wp-json/");
    println!("  admin: /status and /metrics on 127.0.0.1:9180 (edge) 9181 (nlb) 9182, 9183 (albs)");
    println!("Try:  curl -i 127.0.0.1:8081/   curl -i 127.0.0.1:8081/xmlrpc.php");
    println!("Take origin 2 down for 20 s and watch it turn unhealthy, then come back:");
    println!("      curl -X POST '127.0.0.1:9002/demo/down?seconds=20'");
    println!("Ctrl-C stops everything.\n");
}
