//! Fuzzes the alb's cookie parsing: the Cookie header lookup and the signed stickiness values
//! (`AWSALB`, `AWSALBAPP-0`, `AWSALBTG`). No panic; a value that decodes carries the name it
//! starts with; what the alb encodes decodes back, and a changed byte never does.
#![no_main]

use causeway_alb::sticky::{decode, decode_name, encode_name, find_cookie, StickyKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = StickyKey::from_secret("fuzz");
    for name in ["AWSALB", "AWSALBAPP-0", "AWSALBTG"] {
        if let Some(v) = find_cookie(data, name) {
            let _ = decode(&key, v, 1_000);
            if let Some(n) = decode_name(&key, v, 1_000) {
                assert!(v.starts_with(n.as_bytes()));
            }
        }
    }
    // Round trip for names the config allows (letters, digits, - and _).
    let name: String = data
        .iter()
        .take(32)
        .map(|&b| b as char)
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    if name.is_empty() {
        return;
    }
    let v = encode_name(&key, &name, 2_000);
    assert_eq!(decode_name(&key, v.as_bytes(), 1_000), Some(name.as_str()));
    if let Some(&flip) = data.last() {
        let mut bad = v.clone().into_bytes();
        let i = flip as usize % bad.len();
        bad[i] = bad[i].wrapping_add(1);
        if bad != v.as_bytes() {
            assert_ne!(decode_name(&key, &bad, 1_000), Some(name.as_str()));
        }
    }
});
