//! The alb's one error type. It records which side failed, maps to one status in one place,
//! and says whether a retry on another target is allowed.

/// Why a request could not be served normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The client sent something we refuse: answer this 4xx and close.
    #[error("client error {0}: {1}")]
    Client(u16, &'static str),
    /// The client went away or stalled mid-request: nothing to answer.
    #[error("client gone")]
    ClientGone,
    /// The target group has no target to try.
    #[error("no target available")]
    NoTargets,
    /// Every target is at its concurrency limit (`target_control`), and the request could not
    /// wait or waited past the queue timeout.
    #[error("every target is at its concurrency limit")]
    TargetsAtCapacity,
    /// Connecting to the target failed (refused, reset, unreachable).
    #[error("target connection failed")]
    ConnectFailed,
    /// Connecting to the target timed out.
    #[error("target connection timed out")]
    ConnectTimeout,
    /// The target failed after the request was (partly) sent, before any response byte.
    #[error("target closed or reset before responding")]
    UpstreamFailed,
    /// The target did not answer within the idle timeout.
    #[error("target timed out")]
    UpstreamTimeout,
    /// The target's response head or framing was invalid.
    #[error("invalid response from target")]
    BadResponse,
    /// Something failed after response bytes reached the client: only closing is left.
    #[error("response cut after it started")]
    ResponseCut,
    /// A rule transform matched but made an invalid request (ALB answers 500).
    #[error("{0}")]
    Transform(crate::transform::TransformError),
}

impl ProxyError {
    /// The status the client gets, if it gets one.
    pub fn status(self) -> Option<u16> {
        match self {
            ProxyError::Client(s, _) => Some(s),
            ProxyError::ClientGone | ProxyError::ResponseCut => None,
            ProxyError::NoTargets | ProxyError::TargetsAtCapacity => Some(503),
            ProxyError::Transform(_) => Some(500),
            ProxyError::ConnectFailed | ProxyError::UpstreamFailed | ProxyError::BadResponse => {
                Some(502)
            }
            ProxyError::ConnectTimeout | ProxyError::UpstreamTimeout => Some(504),
        }
    }

    /// Whether another target may be tried: always for a connect failure (nothing was sent);
    /// for a failure after sending, only for an idempotent method whose body we still hold.
    pub fn retryable(self, idempotent: bool, replayable: bool) -> bool {
        match self {
            ProxyError::ConnectFailed | ProxyError::ConnectTimeout => true,
            ProxyError::UpstreamFailed => idempotent && replayable,
            _ => false,
        }
    }

    /// Whether the failure counts against the target's health.
    pub fn blames_target(self) -> bool {
        matches!(
            self,
            ProxyError::ConnectFailed | ProxyError::ConnectTimeout | ProxyError::UpstreamFailed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_retries() {
        assert_eq!(ProxyError::Client(431, "x").status(), Some(431));
        assert_eq!(ProxyError::NoTargets.status(), Some(503));
        assert_eq!(ProxyError::TargetsAtCapacity.status(), Some(503));
        assert!(!ProxyError::TargetsAtCapacity.retryable(true, true));
        assert!(!ProxyError::TargetsAtCapacity.blames_target());
        assert_eq!(
            ProxyError::Transform(crate::transform::TransformError::Url).status(),
            Some(500)
        );
        assert_eq!(ProxyError::ConnectFailed.status(), Some(502));
        assert_eq!(ProxyError::UpstreamTimeout.status(), Some(504));
        assert_eq!(ProxyError::ResponseCut.status(), None);
        assert!(ProxyError::ConnectFailed.retryable(false, false));
        assert!(ProxyError::UpstreamFailed.retryable(true, true));
        assert!(
            !ProxyError::UpstreamFailed.retryable(false, true),
            "POST is never resent"
        );
        assert!(
            !ProxyError::UpstreamFailed.retryable(true, false),
            "a streamed body cannot be replayed"
        );
        assert!(!ProxyError::BadResponse.retryable(true, true));
    }
}
