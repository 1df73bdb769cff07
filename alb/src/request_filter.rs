//! Phase `request_filter`: read one request head within the deadlines, refuse what is too large
//! or malformed (414, 431, 400), classify it for desync mitigation, and decide its framing.
//! It may end the request (with a 4xx, or silently when the client left); it changes nothing.

use crate::error::ProxyError;
use causeway_config::alb::{DesyncMode, LoadBalancerAttributes};
use causeway_dataplane::client::{self, Client, ClientStream, ReadHeadError};
use causeway_dataplane::desync::{self, Classification, Mode, Verdict};
use causeway_dataplane::http1::{Framing, Limits, RequestHead};
use std::time::Duration;

/// A request ready for routing. Spans refer to `client.buf`.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub framing: Framing,
    /// Close the client connection after this exchange.
    pub close: bool,
    pub idempotent: bool,
    pub is_head: bool,
    /// `Expect: 100-continue` (answered by us).
    pub expect_continue: bool,
    /// A WebSocket upgrade request.
    pub websocket: bool,
    pub classification: Classification,
    /// What the matched rule's transforms made of the request target and Host.
    pub rewrite: Option<crate::transform::Rewritten>,
}

fn mode(m: DesyncMode) -> Mode {
    match m {
        DesyncMode::Monitor => Mode::Monitor,
        DesyncMode::Defensive => Mode::Defensive,
        DesyncMode::Strictest => Mode::Strictest,
    }
}

/// Reads the next request head. `Ok(None)`: the client closed, or idled past the keep-alive
/// idle timeout, between requests.
pub async fn read_head<S: ClientStream>(
    client: &mut Client<S>,
    head: &mut RequestHead,
    lb: &LoadBalancerAttributes,
    opened: tokio::time::Instant,
) -> Result<Option<()>, ProxyError> {
    let limits = Limits::default();
    // A connection's first head is due `request_header_timeout` after the connection opened
    // (HAProxy's `timeout http-request`), however long its first bytes took; a later one's,
    // that long after its first byte.
    let header_timeout = if client.requests == 0 {
        lb.request_header_timeout.saturating_sub(opened.elapsed())
    } else {
        lb.request_header_timeout
    };
    client::read_head(client, head, &limits, lb.idle_timeout, header_timeout)
        .await
        .map_err(|e| match e {
            ReadHeadError::Refuse(status, why) => ProxyError::Client(status, why),
            ReadHeadError::Gone => ProxyError::ClientGone,
        })
}

/// Classifies and checks a parsed head.
pub fn prepare<S: ClientStream>(
    client: &Client<S>,
    head: &RequestHead,
    lb: &LoadBalancerAttributes,
) -> Result<Prepared, ProxyError> {
    let buf = &client.buf;
    let classification = desync::classify(buf, head);
    let verdict = desync::verdict(mode(lb.desync_mitigation_mode), classification);
    if classification.tier >= desync::Tier::Ambiguous {
        metrics::counter!("causeway_alb_desync_mitigation_mode_non_compliant_request_count",
            "classification" => classification.tier_name())
        .increment(1);
    }
    if verdict == Verdict::Reject {
        return Err(ProxyError::Client(
            400,
            "request refused by desync mitigation",
        ));
    }
    let framing = head
        .framing(buf)
        .map_err(|_| ProxyError::Client(400, "ambiguous or invalid message framing"))?;
    let method = head.method(buf);
    if head.minor_version == 1 && head.count(buf, "host") != 1 {
        return Err(ProxyError::Client(400, "HTTP/1.1 needs exactly one Host"));
    }
    if head.count(buf, "host") > 1 {
        return Err(ProxyError::Client(400, "duplicate Host"));
    }
    let target = head.target(buf);
    if !(target.first() == Some(&b'/') || (method == b"OPTIONS" && target == b"*")) {
        // Absolute-form would let the URI disagree with Host; ALB answers 400 too.
        return Err(ProxyError::Client(
            400,
            "request target must be origin-form",
        ));
    }
    if method == b"CONNECT" {
        return Err(ProxyError::Client(405, "CONNECT is not supported"));
    }
    let has = |t: &str| head.lists_token(buf, "connection", t);
    let close = has("close")
        || (head.minor_version == 0 && !has("keep-alive"))
        || verdict == Verdict::AllowThenClose
        || client.draining();
    let expect_continue = match head.header(buf, "expect") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case(b"100-continue") => true,
        Some(_) => return Err(ProxyError::Client(417, "unsupported Expect")),
    };
    let websocket = has("upgrade")
        && head
            .header(buf, "upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case(b"websocket"));
    if websocket && framing != Framing::None {
        return Err(ProxyError::Client(400, "an upgrade request has no body"));
    }
    if head.header(buf, "upgrade").is_some() && !websocket {
        // h2c and other upgrades are not honoured; the header is dropped as hop-by-hop.
        tracing::debug!("ignoring non-WebSocket Upgrade");
    }
    Ok(Prepared {
        framing,
        close,
        idempotent: matches!(
            method,
            b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
        ),
        is_head: method == b"HEAD",
        expect_continue,
        websocket,
        classification,
        rewrite: None,
    })
}

/// How long the whole request may take to arrive when its body streams.
pub const BODY_IDLE: Duration = Duration::from_secs(60);

/// A streamed request body's minimum pace, against slow-POST attacks (Apache mod_reqtimeout's
/// defaults, `body=20,MinRate=500`): after its first 20 s a body must have averaged 500 bytes/s.
pub const BODY_GRACE: Duration = Duration::from_secs(20);
pub const BODY_MIN_RATE: u64 = 500;

/// How fast a streamed request body has arrived.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    started: tokio::time::Instant,
    bytes: u64,
}

impl BodyPace {
    pub fn new(now: tokio::time::Instant) -> BodyPace {
        BodyPace {
            started: now,
            bytes: 0,
        }
    }

    pub fn add(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    /// When the body becomes too slow if no more bytes arrive.
    pub fn deadline(&self) -> tokio::time::Instant {
        let earned = Duration::from_millis(self.bytes.saturating_mul(1000) / BODY_MIN_RATE);
        self.started + earned.max(BODY_GRACE)
    }

    /// Whether the body is behind its minimum pace at `now`.
    pub fn too_slow(&self, now: tokio::time::Instant) -> bool {
        now >= self.deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_must_keep_its_minimum_pace_after_the_grace() {
        let t0 = tokio::time::Instant::now();
        let mut pace = BodyPace::new(t0);
        assert_eq!(pace.deadline(), t0 + BODY_GRACE);
        tokio::time::advance(Duration::from_secs(19)).await;
        pace.add(3);
        assert!(
            !pace.too_slow(tokio::time::Instant::now()),
            "within the grace"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            pace.too_slow(tokio::time::Instant::now()),
            "3 bytes in 20 s is too slow"
        );
        // 15,000 bytes earn 30 s.
        let mut fast = BodyPace::new(t0);
        fast.add(15_000);
        assert_eq!(fast.deadline(), t0 + Duration::from_secs(30));
        assert!(!fast.too_slow(t0 + Duration::from_secs(29)));
        assert!(fast.too_slow(t0 + Duration::from_secs(30)));
    }
}
