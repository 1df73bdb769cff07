//! Fuzzes the HTTP/1.1 request-head parser, framing decision and chunked decoder shared by the
//! alb and the edge: no panic, spans inside the buffer, and a decoded body no longer than its
//! encoding.
#![no_main]

use causeway_dataplane::http1::{parse_request, ChunkedScanner, Limits, RequestHead};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut head = RequestHead::default();
    if let Ok(true) = parse_request(data, &Limits::default(), &mut head) {
        assert!(head.len <= data.len());
        for h in &head.headers {
            assert!(h.name.end as usize <= head.len && h.value.end as usize <= head.len);
        }
        let _ = head.framing(data);
        let _ = causeway_dataplane::desync::classify(data, &head);
        let mut s = ChunkedScanner::new();
        let mut out = Vec::new();
        if let Ok(used) = s.decode(&data[head.len..], &mut out) {
            assert!(used <= data.len() - head.len);
            assert!(out.len() <= used);
        }
    }
});
