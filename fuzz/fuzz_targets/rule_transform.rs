//! Fuzzes ALB's rule transforms (`causeway_alb::transform`) with the regexes a config may hold:
//! the input is a pattern, a replacement, a request target and a Host, split at 0xFF bytes. No
//! panic; whatever a transform returns is a valid origin-form target and a valid Host, or the
//! error the alb answers with a 500; a part the pattern does not match comes back unchanged.
#![no_main]

use causeway_alb::transform::Compiled;
use causeway_config::alb::{check_regex, Rewrite, Transforms};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xff);
    let (Some(pattern), Some(replace), Some(target), host) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let (Ok(pattern), Ok(replace)) = (std::str::from_utf8(pattern), std::str::from_utf8(replace))
    else {
        return;
    };
    // What the config accepts, and nothing else.
    if check_regex("fuzz", pattern, 1024).is_err()
        || replace.len() > 1024
        || replace.bytes().any(|b| !(b' '..=b'~').contains(&b))
    {
        return;
    }
    let rewrite = Rewrite {
        regex: pattern.to_owned(),
        replace: replace.to_owned(),
    };
    let compiled = Compiled::of(&Transforms {
        host: Some(rewrite.clone()),
        url: Some(rewrite),
    })
    .expect("two transforms compile");
    let Ok(out) = compiled.apply(target, host) else {
        return;
    };
    if let Some(t) = &out.target {
        assert!(t.starts_with('/'), "{t:?}");
        assert!(t.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'#'), "{t:?}");
    }
    if let Some(h) = &out.host {
        assert!(!h.is_empty() && h.bytes().all(|b| (b'!'..=b'~').contains(&b)), "{h:?}");
    }
    let re = regex_lite::Regex::new(pattern).expect("checked above");
    if let Ok(t) = std::str::from_utf8(target) {
        if !re.is_match(t) {
            assert_eq!(out.target, None, "no match, no rewrite");
        }
    }
});
