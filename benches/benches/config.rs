//! Criterion micro-benchmark of config loading: parse and validate the example alb file.

use causeway_config::alb::FileAlb;
use causeway_config::{parse, Context};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn config(c: &mut Criterion) {
    let text = include_str!("../../examples/alb.toml");
    let cx = Context { dir: ".".into() };
    c.bench_function("parse_alb_example", |b| {
        b.iter(|| parse::<FileAlb>("alb.toml", black_box(text), &cx).unwrap())
    });
    let bad = text.replacen("\ninterval_seconds = 2\n", "\ninterval_seconds = 0\n", 1);
    c.bench_function("parse_alb_error_placed", |b| {
        b.iter(|| parse::<FileAlb>("alb.toml", black_box(&bad), &cx).unwrap_err())
    });
}

criterion_group!(benches, config);
criterion_main!(benches);
