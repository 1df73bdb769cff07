//! The 159 vectors of AWS's `http_desync_guardian` crate (see `vectors/README.md`): the
//! classifier agrees with AWS, and end to end, in the default strictest mode, every ambiguous or
//! severe request gets a 400 and a close while nothing of it reaches the origin.

use causeway_alb::Alb;
use causeway_config::alb::FileAlb;
use causeway_config::{parse, Context};
use causeway_dataplane::check::NetProber;
use causeway_dataplane::desync::{classify, Tier};
use causeway_dataplane::http1::{parse_request, Limits, RequestHead};
use causeway_dataplane::Server;
use causeway_testkit::raw::{self, RawResponse};
use causeway_testkit::{free_port, Origin};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize)]
struct Vector {
    file: String,
    name: String,
    method: String,
    uri: String,
    version: String,
    headers: Vec<(String, String)>,
    tier: String,
    reason: String,
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("vectors/desync.json");
    let v: Vec<Vector> = serde_json::from_str(text).unwrap();
    assert_eq!(v.len(), 159);
    v
}

fn raw_head(v: &Vector) -> Vec<u8> {
    let mut out = format!("{} {} {}\r\n", v.method, v.uri, v.version).into_bytes();
    // The vectors test framing, not Host: give the ones without a Host a compliant one.
    if !v
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        out.extend_from_slice(b"Host: example.com\r\n");
    }
    for (k, val) in &v.headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(val.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn tier(t: &str) -> Tier {
    match t {
        "Compliant" => Tier::Compliant,
        "Acceptable" => Tier::Acceptable,
        "Ambiguous" => Tier::Ambiguous,
        _ => Tier::Severe,
    }
}

/// Our parser plus AWS's classifier: the tier, or `None` when the parser refuses the head.
fn our_tier(v: &Vector) -> Option<Tier> {
    let raw = raw_head(v);
    let mut head = RequestHead::default();
    match parse_request(&raw, &Limits::default(), &mut head) {
        Ok(true) => Some(classify(&raw, &head).tier),
        _ => None,
    }
}

#[test]
fn classifier_agrees_with_aws_on_every_vector_the_parser_accepts() {
    let mut disagree = Vec::new();
    let mut refused = 0;
    for v in vectors() {
        match our_tier(&v) {
            None => refused += 1,
            Some(t) if t != tier(&v.tier) => disagree.push(format!(
                "{}: {} (want {} {}, got {t:?})",
                v.file, v.name, v.tier, v.reason
            )),
            Some(_) => {}
        }
    }
    assert!(
        disagree.is_empty(),
        "{} disagreements:\n{}",
        disagree.len(),
        disagree.join("\n")
    );
    eprintln!("{refused} of 159 vectors are refused by the parser before classification");
}

#[test]
fn nothing_ambiguous_or_severe_gets_past_request_parsing() {
    for v in vectors() {
        if tier(&v.tier) >= Tier::Ambiguous {
            if let Some(t) = our_tier(&v) {
                assert!(
                    t >= Tier::Ambiguous,
                    "{}: {} passed as {t:?}",
                    v.file,
                    v.name
                );
            }
        }
    }
}

async fn alb_with(origin: &Origin) -> (Arc<Server<Alb>>, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        "[admin]\naddress = \"127.0.0.1:{}\"\n[[listeners]]\naddress = \"{addr}\"\ndefault_action = {{ type = \"forward\", target_group = \"o\" }}\n[target_groups.o]\ntargets = [{{ address = \"{}\" }}]\nhealth_check.interval_seconds = 300\n",
        free_port(),
        origin.addr()
    );
    let cfg = parse::<FileAlb>("alb.toml", &text, &Context { dir: ".".into() }).unwrap();
    let s = Server::<Alb>::start(Path::new("alb.toml"), cfg, Arc::new(NetProber))
        .await
        .unwrap();
    (s, addr)
}

#[tokio::test]
async fn end_to_end_in_strictest_mode() {
    let origin = Origin::start().await;
    let (_server, addr) = alb_with(&origin).await;
    let mut refused = 0;
    for v in vectors()
        .iter()
        .filter(|v| tier(&v.tier) >= Tier::Ambiguous)
    {
        let mut bytes = raw_head(v);
        // Whatever body the head might announce, followed by a smuggled second request.
        bytes.extend_from_slice(b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = raw::exchange(addr, &bytes, Duration::from_secs(2))
            .await
            .unwrap();
        let r = RawResponse::parse(&out).unwrap_or_else(|| {
            panic!(
                "{}: {}: no response: {:?}",
                v.file,
                v.name,
                String::from_utf8_lossy(&out)
            )
        });
        assert!(
            r.status == 400
                || r.status == 414
                || r.status == 431
                || r.status == 501
                || r.status == 505,
            "{}: {}: got {}",
            v.file,
            v.name,
            r.status
        );
        assert_eq!(r.header("connection"), Some("close"), "{}", v.name);
        refused += 1;
    }
    assert_eq!(refused, 116, "58 ambiguous + 58 severe vectors");
    assert_eq!(
        origin.total(),
        0,
        "nothing ambiguous or severe, and nothing smuggled, reached the origin"
    );
}

/// Sends `bytes` and reads one whole response (Content-Length delimited) or until close.
async fn one_response(addr: SocketAddr, bytes: &[u8]) -> Option<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(bytes).await.ok()?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let r = RawResponse::parse(&buf)?;
            let want: usize = r
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + want {
                return Some(r);
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&tmp[..n]),
            _ => return RawResponse::parse(&buf),
        }
    }
}

#[tokio::test]
async fn compliant_and_acceptable_vectors_are_forwarded_unless_the_parser_is_stricter() {
    let origin = Origin::start().await;
    let (_server, addr) = alb_with(&origin).await;
    let mut stricter = Vec::new();
    let mut forwarded = 0;
    for v in vectors()
        .iter()
        .filter(|v| tier(&v.tier) <= Tier::Acceptable)
    {
        let mut bytes = raw_head(v);
        // The body the head announces.
        for (k, val) in &v.headers {
            if k.eq_ignore_ascii_case("content-length") {
                let n: usize = val.trim().parse().unwrap_or(0).min(8 << 20);
                bytes.extend(std::iter::repeat_n(b'b', n));
            }
            if k.eq_ignore_ascii_case("transfer-encoding") {
                bytes.extend_from_slice(b"0\r\n\r\n");
                break;
            }
        }
        let r = one_response(addr, &bytes)
            .await
            .unwrap_or_else(|| panic!("{}: {}: no response", v.file, v.name));
        if r.status == 200 {
            forwarded += 1;
        } else {
            assert!(
                r.status >= 400 && r.status < 500,
                "{}: {}",
                v.name,
                r.status
            );
            stricter.push(format!("{} {}: {} {}", r.status, v.file, v.name, v.reason));
        }
    }
    eprintln!(
        "forwarded {forwarded}; refused though AWS accepts:\n{}",
        stricter.join("\n")
    );
    assert_eq!(
        origin.total(),
        forwarded,
        "{:?}",
        origin.seen().iter().map(|s| &s.path).collect::<Vec<_>>()
    );
    // Every refusal of a request AWS would pass is one of Causeway's deliberate strictures
    // (docs/config.md): Transfer-Encoding other than one `chunked`, control bytes in a header,
    // a version other than HTTP/1.0 or 1.1, a space in or an empty request target.
    assert_eq!(forwarded + stricter.len(), 43);
    assert_eq!(stricter.len(), 21, "{}", stricter.join("\n"));
}
