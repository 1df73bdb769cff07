//! Fuzzes the route matcher: `glob` (host-header and path-pattern wildcards) and a router
//! compiled from fuzzed host and path patterns. No panic; a pattern without wildcards matches
//! exactly itself; `*` matches everything; case folding agrees with matching lower-cased input.
#![no_main]

use causeway_alb::route::{glob, RequestView, Router};
use causeway_config::alb::{Action, Condition, Rule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (pattern, text) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let m = glob(pattern, text, true);
    assert_eq!(
        m,
        glob(
            &pattern.to_ascii_lowercase(),
            &text.to_ascii_lowercase(),
            false
        )
    );
    assert!(glob(b"*", text, false));
    let plain: Vec<u8> = text.iter().copied().filter(|b| *b != b'*' && *b != b'?').collect();
    assert!(glob(&plain, &plain, false), "a literal pattern matches itself");
    // A router with the pattern as host and path conditions, routing the text both ways.
    let (Ok(p), Ok(t)) = (std::str::from_utf8(pattern), std::str::from_utf8(text)) else {
        return;
    };
    let fwd = |tg: &str| Action::Forward {
        target_groups: vec![(tg.to_owned(), 1)],
        group_stickiness: None,
    };
    let rules = [
        Rule {
            priority: 1,
            conditions: vec![Condition::HostHeader(vec![p.to_owned()])],
            action: fwd("host"),
            transforms: Default::default(),
            authenticate: None,
            jwt: None,
        },
        Rule {
            priority: 2,
            conditions: vec![Condition::PathPattern(vec![p.to_owned()])],
            action: fwd("path"),
            transforms: Default::default(),
            authenticate: None,
            jwt: None,
        },
    ];
    let router = Router::from_rules(&rules, fwd("default"));
    let none = |_: &str, _: &mut dyn FnMut(&[u8]) -> bool| false;
    let view = RequestView {
        method: b"GET",
        path: t.as_bytes(),
        query: b"",
        host: Some(t.as_bytes()),
        host_as_sent: Some(t.as_bytes()),
        source: std::net::Ipv4Addr::LOCALHOST.into(),
        headers: &none,
    };
    let (action, priority) = router.route(&view);
    if m {
        assert_eq!(priority, Some(1), "{action:?}");
    }
});
