//! Access logs written off the request path: requests hand a finished line to a channel, and
//! one task appends lines to the file in batches. When the channel is full, lines are dropped
//! and counted rather than slowing requests down.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Lines waiting to be written before new ones are dropped.
const QUEUE: usize = 65_536;

/// A handle that request code sends lines through.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<String>,
}

impl AccessLog {
    /// Opens (appends to) `path` and starts the writer task.
    pub fn open(path: &Path) -> std::io::Result<AccessLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(file, rx, path.to_owned()));
        Ok(AccessLog { tx })
    }

    /// Queues one line (without its newline).
    pub fn log(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            metrics::counter!("causeway_access_log_dropped_total").increment(1);
        }
    }
}

async fn writer(file: std::fs::File, mut rx: mpsc::Receiver<String>, path: PathBuf) {
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut batch = Vec::with_capacity(1024);
    loop {
        if rx.recv_many(&mut batch, 1024).await == 0 {
            break;
        }
        for line in batch.drain(..) {
            let ok = out
                .write_all(line.as_bytes())
                .and_then(|()| out.write_all(b"\n"));
            if let Err(e) = ok {
                tracing::error!(file = %path.display(), error = %e, "access log write failed");
                metrics::counter!("causeway_access_log_errors_total").increment(1);
            }
        }
        if rx.is_empty() {
            if let Err(e) = out.flush() {
                tracing::error!(file = %path.display(), error = %e, "access log flush failed");
                metrics::counter!("causeway_access_log_errors_total").increment(1);
            }
        }
    }
    if let Err(e) = out.flush() {
        tracing::error!(file = %path.display(), error = %e, "access log flush failed");
    }
}

/// `2018-07-02T22:23:00.186641Z` for a time since the Unix epoch (UTC, microseconds).
pub fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Quotes a field for a space-separated log line: `"..."` with `"` and `\` escaped and
/// control bytes written as `\xNN`, so a request cannot forge log fields.
pub fn quote(out: &mut String, bytes: &[u8]) {
    out.push('"');
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_aws_style() {
        let t = UNIX_EPOCH + Duration::from_micros(1_530_570_180_186_641);
        assert_eq!(iso8601(t), "2018-07-02T22:23:00.186641Z");
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(iso8601(leap).starts_with("2000-02-29T"));
    }

    #[test]
    fn quoting_escapes_what_could_forge_fields() {
        let mut s = String::new();
        quote(&mut s, b"GET /\" x\\\n");
        assert_eq!(s, "\"GET /\\\" x\\\\\\x0a\"");
    }

    #[tokio::test]
    async fn lines_reach_the_file() {
        let path = std::env::temp_dir().join(format!("causeway-accesslog-{}", std::process::id()));
        let log = AccessLog::open(&path).unwrap();
        log.log("one".into());
        log.log("two".into());
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap();
            if text.lines().count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(text, "one\ntwo\n");
        std::fs::remove_file(&path).unwrap();
    }
}
