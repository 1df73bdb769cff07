//! h3load: an HTTP/3 load client for the side-by-side harness (quinn + h3, the same client as
//! the tests). C connections, each with M requests in flight, for D seconds against one URL;
//! prints one JSON line: requests, errors, req/s and p99 latency.
//!
//! `h3load ADDR HOST PATH CA_FILE CONNECTIONS STREAMS SECONDS`

use causeway_testkit::h3client::H3Client;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 8 {
        eprintln!("usage: h3load ADDR HOST PATH CA_FILE CONNECTIONS STREAMS SECONDS");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[1].parse().expect("ADDR");
    let host = args[2].clone();
    let path = args[3].clone();
    let ca = PathBuf::from(&args[4]);
    let conns: usize = args[5].parse().expect("CONNECTIONS");
    let streams: usize = args[6].parse().expect("STREAMS");
    let secs: u64 = args[7].parse().expect("SECONDS");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let client = match H3Client::connect(addr, &host, &ca).await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("connect: {e}");
                    std::process::exit(1);
                }
            };
            for _ in 0..streams {
                let mut client = client.clone();
                let (path, stop) = (path.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let (mut lat, mut errors) = (Vec::new(), 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        match client.request("GET", &path, &[]).await {
                            Ok(r) if r.status < 400 => lat.push(t.elapsed()),
                            _ => errors += 1,
                        }
                    }
                    (lat, errors)
                }));
            }
        }
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let mut lat = Vec::new();
        let mut errors = 0;
        for t in tasks {
            if let Ok((l, e)) = t.await {
                lat.extend(l);
                errors += e;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        lat.sort();
        let p99 = lat
            .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        println!(
            "{}",
            serde_json::json!({
                "requests": lat.len() as u64 + errors,
                "errors": errors,
                "rps": lat.len() as f64 / elapsed,
                "p99_ms": p99,
            })
        );
    });
}
