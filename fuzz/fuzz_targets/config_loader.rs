//! Fuzzes the config loader: any text, as an alb, nlb, edge or control file, is either accepted
//! or refused with a placed error; nothing panics. Texts naming files are skipped (validation
//! reads them, and a fuzzer may name /dev/zero).
#![no_main]

use causeway_config::{parse, Context};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains("file") || text.len() > 16 * 1024 {
        return;
    }
    let cx = Context { dir: ".".into() };
    let render = |e: causeway_config::ConfigError| {
        let s = e.to_string();
        assert!(!s.is_empty());
    };
    if let Err(e) = parse::<causeway_config::alb::FileAlb>("alb.toml", text, &cx) {
        render(e);
    }
    if let Err(e) = parse::<causeway_config::nlb::FileNlb>("nlb.toml", text, &cx) {
        render(e);
    }
    if let Err(e) = parse::<causeway_config::edge::FileEdge>("edge.toml", text, &cx) {
        render(e);
    }
    if let Err(e) = parse::<causeway_config::control::FileControl>("control.toml", text, &cx) {
        render(e);
    }
});
