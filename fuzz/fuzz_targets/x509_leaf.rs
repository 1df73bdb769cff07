//! The client certificate reader of mutual TLS (`dataplane::x509`): any bytes read as a leaf
//! never panic, and what reads gives names and times in the shapes ALB sends; PEM and URL
//! encoding of the same bytes round-trip.
#![no_main]

use causeway_dataplane::x509::{leaf_info, pem, url_encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(info) = leaf_info(data) {
        assert!(info.serial.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(info.serial.len() % 2, 0);
        for t in [&info.not_before, &info.not_after] {
            assert_eq!(t.len(), 20, "{t}");
            assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        }
    }
    let text = pem(&[data]);
    let encoded = url_encode(&text);
    assert!(encoded
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~+=/%".contains(&b)));
    // The base64 between the markers is as long as the input needs (padded to 4).
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert_eq!(body.len() % 4, 0);
    assert!(body.len() >= data.len() * 4 / 3);
});
