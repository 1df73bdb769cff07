//! Fuzzes the chunked decoder (RFC 9112 §7.1): no panic; the body decodes the same whether the
//! input arrives at once or split at any point; scanning and decoding agree on where the body
//! ends; and a decoded body re-encoded as one chunk decodes back to itself.
#![no_main]

use causeway_dataplane::http1::ChunkedScanner;
use libfuzzer_sys::fuzz_target;

/// Feeds `parts` in order: (consumed, done, decoded, failed).
fn run(parts: &[&[u8]]) -> (usize, bool, Vec<u8>, bool) {
    let mut s = ChunkedScanner::new();
    let mut out = Vec::new();
    let mut used = 0;
    for p in parts {
        match s.decode(p, &mut out) {
            Ok(n) => {
                used += n;
                if s.is_done() {
                    return (used, true, out, false);
                }
            }
            Err(_) => return (used, false, out, true),
        }
    }
    (used, s.is_done(), out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let whole = run(&[body]);
    let at = (cut as usize * body.len()) / 255;
    let split = run(&[&body[..at], &body[at..]]);
    assert_eq!(whole.1, split.1, "done differs when split at {at}");
    assert_eq!(whole.3, split.3, "failure differs when split at {at}");
    if whole.1 {
        assert_eq!(whole.0, split.0, "body end differs when split at {at}");
        assert_eq!(whole.2, split.2, "decoded body differs when split at {at}");
    }
    // Scanning (the relay's mode) finds the same end as decoding.
    let mut scan = ChunkedScanner::new();
    if let Ok(n) = scan.feed(body) {
        if scan.is_done() {
            assert!(whole.1 && whole.0 == n);
        }
    }
    if whole.1 {
        assert!(whole.2.len() <= whole.0);
        let mut again = format!("{:x}\r\n", whole.2.len()).into_bytes();
        again.extend_from_slice(&whole.2);
        again.extend_from_slice(b"\r\n0\r\n\r\n");
        let re = run(&[&again]);
        assert!(re.1 && re.2 == whole.2, "re-encoded body does not decode back");
    }
});
