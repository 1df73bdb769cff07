//! Fuzzes the h2 frame budget (`dataplane::h2conn::FrameBudget`): no panic, and the frame
//! that breaks the budget is found at the same place whether the client's bytes arrive at once
//! or split at any point.
#![no_main]

use causeway_dataplane::h2conn::{FrameBudget, PREFACE};
use libfuzzer_sys::fuzz_target;

/// Where in `bytes` (fed in pieces cut at `cuts`) the budget breaks, as an offset in `bytes`.
fn breaks_at(bytes: &[u8], cuts: &[usize]) -> Option<usize> {
    let mut b = FrameBudget::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&bytes.len())) {
        if let Some(at) = b.feed(&bytes[from..to], std::time::Duration::ZERO) {
            return Some(from + at);
        }
        from = to;
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, frames)) = data.split_first() else {
        return;
    };
    let mut bytes = PREFACE.to_vec();
    // Repeat the input so that short inputs can reach the budget.
    let times = if frames.is_empty() { 1 } else { 1 + 40_000 / frames.len().max(1) };
    for _ in 0..times.min(4000) {
        bytes.extend_from_slice(frames);
    }
    let whole = breaks_at(&bytes, &[]);
    let at = (cut as usize * bytes.len()) / 255;
    let split = breaks_at(&bytes, &[at]);
    // A break found after a cut that fell inside the breaking frame's header reports the
    // piece's start; the whole feed reports the header's own start, at most 8 bytes before.
    match (whole, split) {
        (None, None) => {}
        (Some(w), Some(s)) => assert!(s == w || (s == at && w < at && at - w < 9), "{w} vs {s}"),
        _ => panic!("split at {at} changes the verdict: {whole:?} vs {split:?}"),
    }
});
