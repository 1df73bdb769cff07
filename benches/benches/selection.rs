//! Criterion micro-benchmarks of target selection: each algorithm's pick, Maglev's build and
//! lookup, and a whole `TargetGroup::select` with health filtering.

use causeway_config::common::{
    Algorithm, HealthCheckConfig, HealthCheckKind, TargetConfig, TargetGroupConfig,
};
use causeway_dataplane::health::Outcome;
use causeway_dataplane::select::{self, maglev::hash64, Maglev, SmoothWrr};
use causeway_dataplane::target::TargetGroup;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::Duration;

fn group(n: usize, algorithm: Algorithm) -> TargetGroupConfig {
    TargetGroupConfig {
        minimum_healthy: Default::default(),
        target_control: None,
        name: "bench".into(),
        protocol: "HTTP".into(),
        protocol_version: Default::default(),
        targets: (0..n)
            .map(|i| TargetConfig {
                id: format!("i-{i:08x}"),
                address: format!("10.0.{}.{}:80", i / 250, i % 250 + 1)
                    .parse()
                    .unwrap(),
                weight: 1 + (i % 3) as u32,
                zone: None,
            })
            .collect(),
        health_check: HealthCheckConfig {
            enabled: true,
            kind: HealthCheckKind::Tcp,
            port: None,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            proxy_protocol_v2: false,
            tls: false,
        },
        deregistration_delay: Duration::from_secs(300),
        slow_start: Duration::ZERO,
        algorithm,
        anomaly_mitigation: false,
        stickiness: None,
        proxy_protocol_v2: false,
        preserve_client_ip: false,
        termination: causeway_config::common::Termination::NEVER,
        cross_zone: true,
        local_zone: None,
        outlier_detection: causeway_config::common::OutlierConfig {
            enabled: true,
            consecutive_failures: 5,
            ejection_time: Duration::from_secs(30),
            max_ejection_percent: 50,
        },
    }
}

fn algorithms(c: &mut Criterion) {
    let weights: Vec<u32> = (0..16).map(|i| 1 + i % 3).collect();
    let loads: Vec<u64> = (0..16).map(|i| (i * 7 % 5) as u64).collect();
    let wrr = SmoothWrr::new();
    let mut rng = fastrand_rng();
    c.bench_function("wrr_pick_16", |b| {
        b.iter(|| wrr.pick(16, |i| black_box(weights[i])))
    });
    c.bench_function("least_outstanding_16", |b| {
        b.iter(|| select::least_outstanding(16, |i| Some(black_box(loads[i])), &mut rng))
    });
    c.bench_function("weighted_random_16", |b| {
        b.iter(|| select::weighted_random(16, |i| black_box(weights[i]), &mut rng))
    });
    c.bench_function("p2c_16", |b| {
        b.iter(|| select::p2c::pick(16, |i| Some(black_box(loads[i]) as f64 + 1.0), &mut rng))
    });
    let names: Vec<String> = (0..16).map(|i| format!("10.0.0.{i}:80")).collect();
    c.bench_function("rendezvous_16", |b| {
        b.iter(|| {
            select::rendezvous::pick(
                black_box(b"/wp-content/a.jpg"),
                16,
                |i| names[i].as_str(),
                |_| 1,
            )
        })
    });
}

fn fastrand_rng() -> fastrand::Rng {
    fastrand::Rng::with_seed(42)
}

fn maglev(c: &mut Criterion) {
    let names: Vec<String> = (0..100).map(|i| format!("10.0.0.{i}:80")).collect();
    c.bench_function("maglev_build_100", |b| {
        b.iter(|| Maglev::new(black_box(&names)))
    });
    let m = Maglev::new(&names);
    let mut k = 0u64;
    c.bench_function("maglev_lookup", |b| {
        b.iter(|| {
            k = k.wrapping_add(1);
            m.lookup(hash64(0, &k.to_le_bytes()))
        })
    });
}

fn group_select(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    for (name, algo) in [
        ("group_select_round_robin_8", Algorithm::RoundRobin),
        (
            "group_select_least_outstanding_8",
            Algorithm::LeastOutstandingRequests,
        ),
        ("group_select_p2c_ewma_8", Algorithm::P2cEwma),
        ("group_select_maglev_8", Algorithm::Maglev),
    ] {
        let g = TargetGroup::build(group(8, algo), None);
        for t in &g.targets {
            t.record_check(Outcome::Success);
        }
        let mut k = 0u64;
        c.bench_function(name, |b| {
            b.iter(|| {
                k = k.wrapping_add(0x9e37_79b9);
                g.select(black_box(k))
            })
        });
    }
}

criterion_group!(benches, algorithms, maglev, group_select);
criterion_main!(benches);
