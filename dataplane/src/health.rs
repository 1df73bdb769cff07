//! The target health state machine: pure, time-free, driven by check outcomes and passive
//! failures. States and reason codes follow AWS's target health.

use causeway_config::common::HealthCheckConfig;
use serde::Serialize;

/// A target's health state, as AWS's `TargetHealth.State`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Registered, not yet through its first checks.
    Initial,
    Healthy,
    Unhealthy,
    /// Health checks are disabled: routed to, health unknown.
    Unavailable,
    /// Deregistered: finishing in-flight work, gets nothing new.
    Draining,
    /// Gone: drained, or no longer configured.
    Unused,
}

impl State {
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(v: u8) -> State {
        match v {
            0 => State::Initial,
            1 => State::Healthy,
            2 => State::Unhealthy,
            3 => State::Unavailable,
            4 => State::Draining,
            _ => State::Unused,
        }
    }

    /// Whether active checks still run in this state.
    pub fn checked(self) -> bool {
        matches!(self, State::Initial | State::Healthy | State::Unhealthy)
    }

    /// Whether new requests or flows may go to a target in this state.
    pub fn routable(self) -> bool {
        matches!(self, State::Healthy | State::Unavailable)
    }
}

/// Why a target is in its state, as AWS's `TargetHealth.Reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Reason {
    #[serde(rename = "Elb.InitialHealthChecking")]
    InitialHealthChecking,
    #[serde(rename = "Target.ResponseCodeMismatch")]
    ResponseCodeMismatch,
    #[serde(rename = "Target.Timeout")]
    Timeout,
    #[serde(rename = "Target.FailedHealthChecks")]
    FailedHealthChecks,
    /// Ours: real traffic failed to connect (passive checking).
    #[serde(rename = "Target.PassiveFailures")]
    PassiveFailures,
    #[serde(rename = "Target.NotRegistered")]
    NotRegistered,
    #[serde(rename = "Target.DeregistrationInProgress")]
    DeregistrationInProgress,
    #[serde(rename = "Target.HealthCheckDisabled")]
    HealthCheckDisabled,
    /// Healthy: no reason to give.
    #[serde(rename = "")]
    None,
}

/// The result of one active check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered (a TCP check: it accepted the connection).
    Success,
    /// An HTTP or gRPC answer with a status the matcher accepts: this status.
    Answered(u16),
    /// No answer within the check's timeout.
    Timeout,
    /// The connection was refused or reset, or the answer was not HTTP.
    Failed,
    /// An HTTP answer with a status the matcher rejects (for a gRPC check, an HTTP status
    /// other than 200).
    BadStatus(u16),
    /// A gRPC answer whose `grpc-status` the matcher rejects: this status.
    BadGrpcStatus(u16),
    /// A gRPC answer with no `grpc-status`, in its head or its trailers.
    GrpcStatusMissing,
}

impl Outcome {
    /// Whether the check passed.
    pub fn passed(self) -> bool {
        matches!(self, Outcome::Success | Outcome::Answered(_))
    }

    fn reason(self) -> Reason {
        match self {
            Outcome::Success | Outcome::Answered(_) => Reason::None,
            Outcome::Timeout => Reason::Timeout,
            Outcome::Failed => Reason::FailedHealthChecks,
            Outcome::BadStatus(_) | Outcome::BadGrpcStatus(_) => Reason::ResponseCodeMismatch,
            // A malformed answer, as AWS's Target.FailedHealthChecks says.
            Outcome::GrpcStatusMissing => Reason::FailedHealthChecks,
        }
    }
}

/// A change of state, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
}

/// Consecutive-count hysteresis between healthy and unhealthy.
#[derive(Debug, Clone)]
pub struct HealthMachine {
    state: State,
    reason: Reason,
    successes: u32,
    failures: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

impl HealthMachine {
    pub fn new(cfg: &HealthCheckConfig) -> Self {
        let (state, reason) = if cfg.enabled {
            (State::Initial, Reason::InitialHealthChecking)
        } else {
            (State::Unavailable, Reason::HealthCheckDisabled)
        };
        HealthMachine {
            state,
            reason,
            successes: 0,
            failures: 0,
            healthy_threshold: cfg.healthy_threshold,
            unhealthy_threshold: cfg.unhealthy_threshold,
        }
    }

    /// Keeps the state of `old` under new thresholds (a reload that kept the target).
    pub fn carried(old: &HealthMachine, cfg: &HealthCheckConfig) -> Self {
        let mut m = HealthMachine::new(cfg);
        if cfg.enabled
            && matches!(
                old.state,
                State::Healthy | State::Unhealthy | State::Initial
            )
        {
            m.state = old.state;
            m.reason = old.reason;
            m.successes = old.successes;
            m.failures = old.failures;
        }
        m
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn reason(&self) -> Reason {
        self.reason
    }

    fn go(&mut self, to: State, reason: Reason) -> Option<Transition> {
        let from = self.state;
        self.reason = reason;
        if from == to {
            return None;
        }
        self.state = to;
        self.successes = 0;
        self.failures = 0;
        Some(Transition { from, to, reason })
    }

    /// Feeds one active check result.
    pub fn on_check(&mut self, outcome: Outcome) -> Option<Transition> {
        if !matches!(
            self.state,
            State::Initial | State::Healthy | State::Unhealthy
        ) {
            return None;
        }
        if outcome.passed() {
            self.failures = 0;
            self.successes += 1;
            if self.state != State::Healthy && self.successes >= self.healthy_threshold {
                return self.go(State::Healthy, Reason::None);
            }
            return None;
        }
        self.fail(outcome.reason())
    }

    /// Real traffic could not connect: counts toward unhealthy like a failed check.
    pub fn on_passive_failure(&mut self) -> Option<Transition> {
        if !matches!(
            self.state,
            State::Initial | State::Healthy | State::Unhealthy
        ) {
            return None;
        }
        self.fail(Reason::PassiveFailures)
    }

    fn fail(&mut self, reason: Reason) -> Option<Transition> {
        self.successes = 0;
        self.failures += 1;
        if self.state == State::Unhealthy {
            self.reason = reason;
            return None;
        }
        if self.failures >= self.unhealthy_threshold {
            return self.go(State::Unhealthy, reason);
        }
        None
    }

    /// Deregistered: stop routing, finish in-flight work.
    pub fn drain(&mut self) -> Option<Transition> {
        self.go(State::Draining, Reason::DeregistrationInProgress)
    }

    /// Drained or dropped.
    pub fn retire(&mut self) -> Option<Transition> {
        self.go(State::Unused, Reason::NotRegistered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_config::common::HealthCheckKind;
    use std::time::Duration;

    fn cfg(healthy: u32, unhealthy: u32) -> HealthCheckConfig {
        HealthCheckConfig {
            enabled: true,
            kind: HealthCheckKind::Tcp,
            port: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
            proxy_protocol_v2: false,
            tls: false,
        }
    }

    #[test]
    fn initial_becomes_healthy_after_threshold_successes() {
        let mut m = HealthMachine::new(&cfg(3, 2));
        assert_eq!(m.state(), State::Initial);
        assert_eq!(m.reason(), Reason::InitialHealthChecking);
        assert_eq!(m.on_check(Outcome::Success), None);
        assert_eq!(m.on_check(Outcome::Success), None);
        let t = m.on_check(Outcome::Success).unwrap();
        assert_eq!((t.from, t.to), (State::Initial, State::Healthy));
        assert!(m.state().routable());
    }

    #[test]
    fn failures_must_be_consecutive() {
        let mut m = HealthMachine::new(&cfg(1, 3));
        m.on_check(Outcome::Success);
        assert_eq!(m.state(), State::Healthy);
        m.on_check(Outcome::Timeout);
        m.on_check(Outcome::Timeout);
        m.on_check(Outcome::Success);
        m.on_check(Outcome::Failed);
        m.on_check(Outcome::Failed);
        assert_eq!(m.state(), State::Healthy);
        let t = m.on_check(Outcome::BadStatus(500)).unwrap();
        assert_eq!(t.to, State::Unhealthy);
        assert_eq!(t.reason, Reason::ResponseCodeMismatch);
        assert!(!m.state().routable());
    }

    #[test]
    fn unhealthy_recovers_after_healthy_threshold() {
        let mut m = HealthMachine::new(&cfg(2, 1));
        m.on_check(Outcome::Timeout);
        assert_eq!(m.state(), State::Unhealthy);
        assert_eq!(m.reason(), Reason::Timeout);
        m.on_check(Outcome::Success);
        assert_eq!(m.state(), State::Unhealthy);
        m.on_check(Outcome::Failed);
        assert_eq!(m.reason(), Reason::FailedHealthChecks);
        m.on_check(Outcome::Success);
        m.on_check(Outcome::Success);
        assert_eq!(m.state(), State::Healthy);
        assert_eq!(m.reason(), Reason::None);
    }

    #[test]
    fn passive_failures_count_toward_unhealthy() {
        let mut m = HealthMachine::new(&cfg(1, 2));
        m.on_check(Outcome::Success);
        assert_eq!(m.on_passive_failure(), None);
        let t = m.on_passive_failure().unwrap();
        assert_eq!(
            (t.to, t.reason),
            (State::Unhealthy, Reason::PassiveFailures)
        );
    }

    #[test]
    fn draining_and_unused_ignore_checks() {
        let mut m = HealthMachine::new(&cfg(1, 1));
        m.on_check(Outcome::Success);
        let t = m.drain().unwrap();
        assert_eq!((t.from, t.to), (State::Healthy, State::Draining));
        assert_eq!(m.reason(), Reason::DeregistrationInProgress);
        assert_eq!(m.on_check(Outcome::Failed), None);
        assert_eq!(m.on_passive_failure(), None);
        assert_eq!(m.state(), State::Draining);
        m.retire();
        assert_eq!(
            (m.state(), m.reason()),
            (State::Unused, Reason::NotRegistered)
        );
    }

    #[test]
    fn disabled_checks_mean_unavailable_but_routable() {
        let mut c = cfg(1, 1);
        c.enabled = false;
        let mut m = HealthMachine::new(&c);
        assert_eq!(
            (m.state(), m.reason()),
            (State::Unavailable, Reason::HealthCheckDisabled)
        );
        assert!(m.state().routable());
        assert_eq!(m.on_check(Outcome::Failed), None);
    }

    #[test]
    fn carried_state_survives_a_reload() {
        let mut m = HealthMachine::new(&cfg(1, 1));
        m.on_check(Outcome::Success);
        let n = HealthMachine::carried(&m, &cfg(5, 5));
        assert_eq!(n.state(), State::Healthy);
        let mut n = n;
        for _ in 0..4 {
            n.on_check(Outcome::Failed);
        }
        assert_eq!(n.state(), State::Healthy, "new threshold of 5 applies");
    }
}
