//! Fuzzes the PROXY protocol v1/v2 parser: no panic, and a parsed header never claims more
//! bytes than it was given.
#![no_main]

use causeway_dataplane::proxy_protocol::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, used))) = parse(data) {
        assert!(used <= data.len());
    }
});
