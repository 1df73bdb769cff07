//! Phase `logging`: metrics after ALB's CloudWatch names, as Prometheus counters labelled by
//! target group.

use crate::error::ProxyError;
use crate::upstream::Outcome;
use std::net::SocketAddr;
use tokio::time::Instant;

const CLASSES: [&str; 4] = ["2XX", "3XX", "4XX", "5XX"];

fn class(status: u16) -> usize {
    match status {
        0..=299 => 0,
        300..=399 => 1,
        400..=499 => 2,
        _ => 3,
    }
}

/// One target group's metric handles, registered once per load so that a request costs no
/// label formatting or registry lookup.
#[derive(Debug)]
pub struct GroupMetrics {
    requests: metrics::Counter,
    target_codes: [metrics::Counter; 4],
    response_time: metrics::Histogram,
}

impl GroupMetrics {
    pub fn new(group: &str) -> GroupMetrics {
        let g = group.to_owned();
        GroupMetrics {
            requests: metrics::counter!("causeway_alb_request_count", "target_group" => g.clone()),
            target_codes: CLASSES.map(|c| {
                metrics::counter!("causeway_alb_httpcode_target_count",
                    "target_group" => g.clone(), "class" => c)
            }),
            response_time: metrics::histogram!(
                "causeway_alb_target_response_time_seconds", "target_group" => g),
        }
    }
}

/// Counters for responses the alb itself generated, by status class.
#[derive(Debug)]
pub struct ElbMetrics([metrics::Counter; 4]);

impl Default for ElbMetrics {
    fn default() -> Self {
        ElbMetrics(
            CLASSES.map(|c| metrics::counter!("causeway_alb_httpcode_elb_count", "class" => c)),
        )
    }
}

impl ElbMetrics {
    /// A response we generated (fixed-response, redirect, or an error).
    pub fn count(&self, status: u16) {
        self.0[class(status)].increment(1);
    }

    /// A request refused with an error status.
    pub fn error(&self, e: &ProxyError) {
        if let Some(s) = e.status() {
            self.count(s);
        }
    }
}

/// A forwarded request, answered by a target or by us.
pub fn forwarded(
    group: &str,
    m: Option<&GroupMetrics>,
    elb: &ElbMetrics,
    received: Instant,
    r: &Result<Outcome, (ProxyError, Option<SocketAddr>)>,
) {
    if let Some(m) = m {
        m.requests.increment(1);
    }
    match r {
        Ok(o) => {
            if let Some(m) = m {
                m.target_codes[class(o.status)].increment(1);
                m.response_time.record(o.target_time.as_secs_f64());
            }
        }
        Err((e, _)) => {
            elb.error(e);
            tracing::debug!(target_group = group, error = %e, elapsed = ?received.elapsed(), "forward failed");
        }
    }
}

/// What the access log needs of a request, captured before its bytes are consumed. Built only
/// when access logging is on.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// ALB's `type` field: `http`, `https` or `h2`.
    pub kind: &'static str,
    pub created: std::time::SystemTime,
    pub received: Instant,
    pub client: SocketAddr,
    pub listener: SocketAddr,
    /// `GET http://host:port/path HTTP/1.1`, as ALB logs it.
    pub request: Vec<u8>,
    pub user_agent: Vec<u8>,
    pub received_bytes: u64,
    pub classification: &'static str,
    pub classification_reason: String,
    /// The `X-Amzn-Trace-Id` sent to the target (empty: none was sent).
    pub trace: Vec<u8>,
    /// `ssl_cipher` and `ssl_protocol` (`-` over cleartext).
    pub tls_names: (&'static str, &'static str),
    /// `conn_trace_id`: the connection's id (`conn_trace`).
    pub conn_trace: u128,
    /// `transformed_host` and `transformed_uri`: what the matched rule's transforms made of
    /// the Host and the request target (`None`: no transform changed it).
    pub transformed_host: Option<String>,
    pub transformed_uri: Option<String>,
    /// An authenticate action let the request through: `actions_executed` starts with
    /// `authenticate,`.
    pub authenticated: bool,
}

/// ALB's `conn_trace_id` for a connection: opaque, the same on every request the connection
/// carries, and different for each connection. It is a hash of the connection's addresses and
/// the instant it opened, keyed at random once per process, so nothing is stored per
/// connection to remember it.
pub fn conn_trace(peer: SocketAddr, local: SocketAddr, opened: Instant) -> u128 {
    use std::hash::{BuildHasher, RandomState};
    static KEYS: std::sync::OnceLock<[RandomState; 2]> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| [RandomState::new(), RandomState::new()]);
    let what = (peer, local, opened);
    (u128::from(keys[0].hash_one(what)) << 64) | u128::from(keys[1].hash_one(what))
}

/// The connection a request came on, as its access log line needs it.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// When it opened (`conn_trace`).
    pub opened: Instant,
    pub tls: bool,
}

impl RequestInfo {
    pub fn capture(
        buf: &[u8],
        head: &causeway_dataplane::http1::RequestHead,
        classification: causeway_dataplane::desync::Classification,
        conn: Conn,
        received: Instant,
    ) -> RequestInfo {
        let Conn {
            peer: client,
            local: listener,
            opened,
            tls,
        } = conn;
        let mut request = Vec::with_capacity(64 + head.target.len());
        request.extend_from_slice(head.method(buf));
        request.extend_from_slice(if tls { b" https://" } else { b" http://" });
        let host = head.header(buf, "host").unwrap_or(b"-");
        request.extend_from_slice(crate::route::host_without_port(host));
        request.push(b':');
        request.extend_from_slice(listener.port().to_string().as_bytes());
        request.extend_from_slice(head.target(buf));
        request.extend_from_slice(if head.minor_version == 0 {
            b" HTTP/1.0"
        } else {
            b" HTTP/1.1"
        });
        let body = match head.framing(buf) {
            Ok(causeway_dataplane::http1::Framing::Length(n)) => n,
            _ => 0,
        };
        let compliant = classification.tier == causeway_dataplane::desync::Tier::Compliant;
        RequestInfo {
            kind: if tls { "https" } else { "http" },
            created: std::time::SystemTime::now(),
            received,
            client,
            listener,
            request,
            user_agent: head.header(buf, "user-agent").unwrap_or(b"-").to_vec(),
            received_bytes: head.len as u64 + body,
            classification: if compliant {
                "-"
            } else {
                classification.tier_name()
            },
            classification_reason: if compliant {
                "-".into()
            } else {
                format!("{:?}", classification.reason)
            },
            trace: Vec::new(),
            tls_names: ("-", "-"),
            conn_trace: conn_trace(client, listener, opened),
            transformed_host: None,
            transformed_uri: None,
            authenticated: false,
        }
    }
}

/// What ALB's connection log says of a TLS connection.
#[derive(Debug, Clone, Default)]
pub struct TlsConn {
    /// `tls_protocol` and `tls_cipher`, OpenSSL's names.
    pub names: (&'static str, &'static str),
    /// `tls_handshake_latency`.
    pub handshake: std::time::Duration,
    /// The leaf client certificate, on a mutual TLS listener that got one.
    pub leaf: Option<causeway_dataplane::x509::LeafInfo>,
    /// `tls_keyexchange`.
    pub key_exchange: String,
}

/// How a connection attempt ended, for its connection log line.
#[derive(Debug, Clone)]
pub enum Handshake {
    /// Cleartext: nothing to negotiate.
    None,
    Done(TlsConn),
    /// The handshake failed: ALB's `Failed:` code.
    Failed(&'static str),
}

/// One line in ALB's connection log format: `timestamp client_ip client_port listener_port
/// tls_protocol tls_cipher tls_handshake_latency leaf_client_cert_subject
/// leaf_client_cert_validity leaf_client_cert_serial_number tls_verify_status conn_trace_id
/// tls_keyexchange elb ip_address`, `-` where a field does not apply. After a failed handshake
/// the negotiated names and the certificate are not known here, so they are `-` too.
pub fn connection_line(
    at: std::time::SystemTime,
    peer: SocketAddr,
    local: SocketAddr,
    conn_trace: u128,
    handshake: &Handshake,
) -> String {
    use causeway_dataplane::accesslog::{iso8601, quote};
    use std::fmt::Write;
    let mut l = String::with_capacity(256);
    let _ = write!(
        l,
        "{} {} {} {} ",
        iso8601(at),
        peer.ip(),
        peer.port(),
        local.port()
    );
    match handshake {
        Handshake::Done(t) => {
            let _ = write!(
                l,
                "{} {} {:.3} ",
                t.names.1,
                t.names.0,
                t.handshake.as_secs_f64()
            );
            match &t.leaf {
                Some(leaf) => {
                    quote(&mut l, leaf.subject.as_bytes());
                    let _ = write!(
                        l,
                        " NotBefore={};NotAfter={} {} ",
                        leaf.not_before, leaf.not_after, leaf.serial
                    );
                }
                None => l.push_str("- - - "),
            }
            l.push_str("Success");
        }
        Handshake::Failed(code) => {
            let _ = write!(l, "- - - - - - Failed:{code}");
        }
        Handshake::None => l.push_str("- - - - - - -"),
    }
    let kx = match handshake {
        Handshake::Done(t) => t.key_exchange.as_str(),
        _ => "-",
    };
    let _ = write!(
        l,
        " TID_{conn_trace:032x} {kx} app/causeway-alb/{local} {}",
        local.ip()
    );
    l
}

/// How a request ended, for its access log line.
#[derive(Debug, Clone, Copy)]
pub enum Ended<'a> {
    Forwarded {
        group: &'a str,
        outcome: &'a Result<Outcome, (ProxyError, Option<SocketAddr>)>,
    },
    Local {
        status: u16,
        action: &'static str,
    },
    /// An authenticate action answered (a redirect to or from the IdP, or a refusal), with
    /// ALB's `Auth*` error reason (`-` for a redirect).
    Authenticate {
        status: u16,
        reason: &'static str,
    },
    Refused(ProxyError),
}

/// One line in ALB's access log format (fields that need TLS or AWS ARNs are `-`).
pub fn access_line(info: &RequestInfo, ended: Ended<'_>, priority: Option<u32>) -> String {
    use causeway_dataplane::accesslog::{iso8601, quote};
    use std::fmt::Write;
    let elapsed = info.received.elapsed().as_secs_f64();
    let (target, elb_status, target_status, target_time, group, actions, error, sent) = match ended
    {
        Ended::Forwarded {
            group,
            outcome: Ok(o),
        } => (
            o.target.to_string(),
            o.status.to_string(),
            o.status.to_string(),
            format!("{:.3}", o.target_time.as_secs_f64()),
            group.to_owned(),
            "forward",
            "-".to_owned(),
            o.sent_bytes,
        ),
        Ended::Forwarded {
            group,
            outcome: Err((e, t)),
        } => (
            t.map_or("-".into(), |t| t.to_string()),
            e.status().map_or("-".into(), |s| s.to_string()),
            "-".into(),
            "-1".into(),
            group.to_owned(),
            "forward",
            format!("{e:?}"),
            0,
        ),
        Ended::Authenticate { status, reason } => (
            "-".into(),
            status.to_string(),
            "-".into(),
            "-1".into(),
            "-".into(),
            "authenticate",
            reason.to_owned(),
            0,
        ),
        Ended::Local { status, action } => (
            "-".into(),
            status.to_string(),
            "-".into(),
            "-1".into(),
            "-".into(),
            action,
            "-".into(),
            0,
        ),
        Ended::Refused(e) => (
            "-".into(),
            e.status().map_or("-".into(), |s| s.to_string()),
            "-".into(),
            "-1".into(),
            "-".into(),
            "-",
            format!("{e:?}"),
            0,
        ),
    };
    // A WebSocket (a 101 and its tunnel) is ALB's type `ws` or `wss`, logged when it closes,
    // with the bytes its whole connection carried each way.
    let (kind, received) = match ended {
        Ended::Forwarded { outcome: Ok(o), .. } if o.status == 101 => (
            if info.kind == "https" { "wss" } else { "ws" },
            info.received_bytes + o.tunnel_received,
        ),
        _ => (info.kind, info.received_bytes),
    };
    let mut l = String::with_capacity(512);
    let _ = write!(
        l,
        "{} {} app/causeway-alb/{} {} {} 0.000 {} {:.3} {} {} {} {} ",
        kind,
        iso8601(std::time::SystemTime::now()),
        info.listener,
        info.client,
        target,
        target_time,
        elapsed,
        elb_status,
        target_status,
        received,
        sent
    );
    quote(&mut l, &info.request);
    l.push(' ');
    quote(&mut l, &info.user_agent);
    let _ = write!(l, " {} {} {group} ", info.tls_names.0, info.tls_names.1);
    quote(
        &mut l,
        if info.trace.is_empty() {
            b"-"
        } else {
            &info.trace
        },
    );
    let auth = if info.authenticated && actions != "authenticate" {
        "authenticate,"
    } else {
        ""
    };
    let _ = write!(
        l,
        " \"-\" \"-\" {} {} \"{auth}{actions}\" \"-\" \"{error}\" \"{target}\" \"{target_status}\" \"{}\" \"{}\"",
        priority.map_or("0".into(), |p| p.to_string()),
        iso8601(info.created),
        info.classification,
        info.classification_reason
    );
    // conn_trace_id "transformed_host" "transformed_uri" "request_transform_status". AWS's
    // values for the last are not documented where we could read them; it stays `-` here,
    // and a transform that failed is in error_reason.
    let _ = write!(l, " TID_{:032x} ", info.conn_trace);
    for part in [&info.transformed_host, &info.transformed_uri] {
        quote(&mut l, part.as_deref().map_or(b"-", str::as_bytes));
        l.push(' ');
    }
    l.push_str("\"-\"");
    l
}
