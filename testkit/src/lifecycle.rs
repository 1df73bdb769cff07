//! The lifecycle contract every data-plane binary keeps, as one reusable end-to-end check:
//! it serves `/metrics`, `/healthz` and `/status` on its admin port; SIGHUP with a broken file
//! keeps the old config and counts the failure; a good reload moves listeners (new bound before
//! old closed); `POST /reload` reports failures; SIGTERM drains and exits 0.

use crate::metric;
use crate::process::{http, http_get, listens, wait_for_port, Proc};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it returns `Some`, for at most `wait`.
pub fn eventually<T>(wait: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The text of a log file once it has at least `n` lines (an async writer fills it), or what
/// it has after four seconds.
pub async fn log_lines(path: &Path, n: usize) -> String {
    let mut text = String::new();
    for _ in 0..400 {
        text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    text
}

/// The current value of a metric on an admin server.
pub fn scrape(admin: SocketAddr, series: &str) -> Option<f64> {
    let (status, body) = http_get(admin, "/metrics").ok()?;
    assert_eq!(status, 200, "/metrics answers 200");
    metric(&body, series)
}

fn wait_metric(admin: SocketAddr, series: &str, want: f64) {
    let got = eventually(Duration::from_secs(10), || {
        (scrape(admin, series) == Some(want)).then_some(())
    });
    assert!(
        got.is_some(),
        "{series} never became {want}; last {:?}",
        scrape(admin, series)
    );
}

fn generation(admin: SocketAddr) -> u64 {
    let (status, body) = http_get(admin, "/status").unwrap();
    assert_eq!(status, 200);
    let key = "\"generation\":";
    let at = body.find(key).expect("status has a generation") + key.len();
    body[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// A scratch folder removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "causeway-{tag}-{}-{}",
            std::process::id(),
            crate::free_port()
        ));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        drop(std::fs::remove_dir_all(&self.0));
    }
}

/// Runs the whole lifecycle contract against binary `bin`. `config(listen, admin)` renders a
/// valid config file listening on `listen` with its admin server on `admin`.
pub fn check_lifecycle(bin: &Path, config: impl Fn(SocketAddr, SocketAddr) -> String) {
    let dir = TempDir::new("lifecycle");
    let file = dir.path().join("config.toml");
    let port = |_| -> SocketAddr { format!("127.0.0.1:{}", crate::free_port()).parse().unwrap() };
    let (listen, admin, listen2) = (port(0), port(1), port(2));
    std::fs::write(&file, config(listen, admin)).unwrap();
    let mut p = Proc::spawn(bin, &["--config", file.to_str().unwrap()]);
    wait_for_port(admin, Duration::from_secs(20));
    wait_for_port(listen, Duration::from_secs(5));

    // Admin endpoints.
    assert_eq!(http_get(admin, "/healthz").unwrap(), (200, "ok\n".into()));
    wait_metric(admin, "causeway_config_reloads_total", 0.0);
    wait_metric(admin, "causeway_config_reload_failures_total", 0.0);
    assert_eq!(generation(admin), 1);
    assert_eq!(http_get(admin, "/nope").unwrap().0, 404);

    // SIGHUP with a broken file: still running, old config, failure counted.
    std::fs::write(&file, format!("{}\nnot_a_key = 1\n", config(listen, admin))).unwrap();
    p.signal("HUP");
    wait_metric(admin, "causeway_config_reload_failures_total", 1.0);
    assert!(p.is_running(), "a broken reload must not stop the process");
    assert_eq!(generation(admin), 1);
    wait_for_port(listen, Duration::from_secs(1));

    // POST /reload with the same broken file: refused, counted, reported.
    let (status, body) = http(admin, "POST", "/reload").unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("not_a_key"),
        "the error names the key: {body}"
    );
    wait_metric(admin, "causeway_config_reload_failures_total", 2.0);

    // A good reload that moves the listener: new one bound, old one closed.
    std::fs::write(&file, config(listen2, admin)).unwrap();
    p.signal("HUP");
    wait_metric(admin, "causeway_config_reloads_total", 1.0);
    assert_eq!(generation(admin), 2);
    wait_for_port(listen2, Duration::from_secs(5));
    let closed = eventually(Duration::from_secs(5), || (!listens(listen)).then_some(()));
    assert!(closed.is_some(), "old listener {listen} still accepts");

    // POST /reload with a good file.
    let (status, body) = http(admin, "POST", "/reload").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"generation\":3"), "{body}");

    // SIGTERM: drain and exit 0.
    p.signal("TERM");
    let st = p
        .wait_exit(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(st.success(), "SIGTERM exit status: {st:?}");
}

/// Starts `bin` with an example config and checks `/metrics` on its admin port, then stops it.
pub fn check_example(bin: &Path, example: &Path, admin: SocketAddr) {
    let mut p = Proc::spawn(bin, &["--config", example.to_str().unwrap()]);
    wait_for_port(admin, Duration::from_secs(20));
    let (status, body) = http_get(admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("causeway_config_reloads_total"), "{body}");
    p.signal("TERM");
    let st = p
        .wait_exit(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(st.success(), "{st:?}");
}

/// The `examples/` folder.
pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}
