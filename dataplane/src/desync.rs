//! HTTP desync (request smuggling) mitigation with AWS's own classifier, the
//! `http_desync_guardian` crate: each request is compliant, acceptable, ambiguous or severe, and
//! the mode (`monitor`, `defensive`, `strictest`) decides what passes.

use crate::http1::RequestHead;
use http_desync_guardian::request_analyzer::{
    HttpHeader, HttpRequestData, HEADERS_STACK_STORAGE_SIZE,
};
pub use http_desync_guardian::ClassificationReason;
use http_desync_guardian::RequestSafetyTier;
use smallvec::SmallVec;

/// AWS's `routing.http.desync_mitigation_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Monitor,
    Defensive,
    Strictest,
}

/// The classifier's tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Compliant,
    Acceptable,
    Ambiguous,
    Severe,
}

/// What to do with a classified request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it.
    Allow,
    /// Forward it, then close the client connection (defensive mode, ambiguous request).
    AllowThenClose,
    /// Answer 400 and close.
    Reject,
}

/// A classification: the tier and AWS's reason name (for the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    pub tier: Tier,
    pub reason: ClassificationReason,
}

impl Classification {
    /// AWS's access-log `classification` field.
    pub fn tier_name(&self) -> &'static str {
        match self.tier {
            Tier::Compliant => "Compliant",
            Tier::Acceptable => "Acceptable",
            Tier::Ambiguous => "Ambiguous",
            Tier::Severe => "Severe",
        }
    }
}

fn tier(t: RequestSafetyTier) -> Tier {
    match t {
        RequestSafetyTier::Compliant => Tier::Compliant,
        RequestSafetyTier::Acceptable => Tier::Acceptable,
        RequestSafetyTier::Ambiguous => Tier::Ambiguous,
        RequestSafetyTier::Severe => Tier::Severe,
    }
}

/// Classifies a request parsed from `buf`.
pub fn classify(buf: &[u8], head: &RequestHead) -> Classification {
    let version: &[u8] = if head.minor_version == 0 {
        b"HTTP/1.0"
    } else {
        b"HTTP/1.1"
    };
    let headers: SmallVec<[HttpHeader<'_>; HEADERS_STACK_STORAGE_SIZE]> = head
        .headers
        .iter()
        .map(|h| HttpHeader::new(h.name.get(buf), h.value.get(buf)))
        .collect();
    let mut data = HttpRequestData {
        method: head.method(buf),
        version,
        uri: head.target(buf),
        headers,
    };
    let r = data.analyze_parsed_request();
    let mut c = Classification {
        tier: tier(r.tier),
        reason: r.reason,
    };
    // httparse accepts bare LF line endings; the guardian's raw parser calls them severe.
    if has_bare_lf(&buf[..head.len]) && c.tier < Tier::Severe {
        c = Classification {
            tier: Tier::Severe,
            reason: ClassificationReason::NonCrLfLineTermination,
        };
    }
    c
}

fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// The verdict of `mode` on a classification, as AWS documents it.
pub fn verdict(mode: Mode, c: Classification) -> Verdict {
    match (mode, c.tier) {
        (_, Tier::Compliant | Tier::Acceptable) => Verdict::Allow,
        (Mode::Monitor, _) => Verdict::Allow,
        (Mode::Defensive, Tier::Ambiguous) => Verdict::AllowThenClose,
        (Mode::Defensive, Tier::Severe) => Verdict::Reject,
        (Mode::Strictest, _) => Verdict::Reject,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::{parse_request, Limits};

    fn classify_raw(raw: &str) -> Classification {
        let mut h = RequestHead::default();
        assert!(parse_request(raw.as_bytes(), &Limits::default(), &mut h).unwrap());
        classify(raw.as_bytes(), &h)
    }

    #[test]
    fn tiers_of_typical_requests() {
        let c = classify_raw("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(c.tier, Tier::Compliant);
        let c = classify_raw(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        );
        assert_eq!(c.tier, Tier::Severe);
        let c = classify_raw(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
        );
        assert!(c.tier >= Tier::Ambiguous, "{c:?}");
        let c = classify_raw("GET / HTTP/1.1\nHost: a\n\n");
        assert_eq!(c.tier, Tier::Severe);
        assert_eq!(c.reason, ClassificationReason::NonCrLfLineTermination);
    }

    #[test]
    fn modes_follow_aws() {
        let amb = Classification {
            tier: Tier::Ambiguous,
            reason: ClassificationReason::SuspiciousHeader,
        };
        let sev = Classification {
            tier: Tier::Severe,
            reason: ClassificationReason::BadHeader,
        };
        assert_eq!(verdict(Mode::Monitor, sev), Verdict::Allow);
        assert_eq!(verdict(Mode::Defensive, amb), Verdict::AllowThenClose);
        assert_eq!(verdict(Mode::Defensive, sev), Verdict::Reject);
        assert_eq!(verdict(Mode::Strictest, amb), Verdict::Reject);
        assert_eq!(verdict(Mode::Strictest, sev), Verdict::Reject);
    }
}
