//! Fuzzes the edge's header-value parsers: Cache-Control / CDN-Cache-Control /
//! Surrogate-Control directives, the structured-field check, Vary normalisation and Range.
#![no_main]

use causeway_edge::cache_control::{is_valid_dictionary, split_list, Directives, DELTA_MAX};
use causeway_edge::cache_key::normalize_field;
use causeway_edge::respond::{parse_ranges, Ranged};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Several field lines, separated by newlines, as a cache sees repeated fields.
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let d = Directives::parse(lines.iter().copied());
    assert_eq!(d, Directives::parse(lines.iter().copied()), "parsing is deterministic");
    for v in [d.max_age, d.s_maxage, d.stale_while_revalidate, d.stale_if_error, d.min_fresh] {
        assert!(v.is_none_or(|s| s <= DELTA_MAX));
    }
    let _ = is_valid_dictionary(data);
    for item in split_list(data) {
        assert!(!item.is_empty());
    }
    let normalized = normalize_field(lines.iter().copied());
    assert_eq!(normalize_field(std::iter::once(normalized.as_slice())), normalized, "idempotent");
    let len = u64::from(data.first().copied().unwrap_or(0)) * 7;
    if let Ranged::Partial(rs) = parse_ranges(data, len) {
        for (a, b) in rs {
            assert!(a <= b && b < len, "{a}-{b} of {len}");
        }
    }
});
