//! ALB's health check logs: one line per active check, with AWS's fields in AWS's order
//! (`type time latency target_addr target_group_id status status_code reason_code elb
//! ip_address`), written by the async log writer.

use crate::accesslog::{iso8601, AccessLog};
use crate::health::Outcome;
use crate::target::Target;
use causeway_config::common::{HealthCheckConfig, HealthCheckKind};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

/// A plane's health check log: the file, and what it says of the load balancer.
#[derive(Debug)]
pub struct HealthLog {
    pub log: AccessLog,
    /// `elb`: the load balancer's name in its logs (`app/causeway-alb/<first listener>`).
    pub elb: String,
    /// `ip_address`: the address the load balancer serves on.
    pub ip: IpAddr,
}

impl HealthLog {
    /// Logs one check of `target`, started at `started`, that took `latency`.
    pub fn record(&self, target: &Target, started: SystemTime, latency: Duration, o: Outcome) {
        self.log.log(line(
            &target.health_check,
            started,
            latency,
            target.cfg.address,
            &target.group,
            o,
            &self.elb,
            self.ip,
        ));
    }
}

/// `type`: `http`, `https` or `grpc` (AWS lists those and asks parsers to ignore others; a
/// TCP check, which ALB does not have, says `tcp`).
fn kind(hc: &HealthCheckConfig) -> &'static str {
    match (&hc.kind, hc.tls) {
        (HealthCheckKind::Tcp, _) => "tcp",
        (HealthCheckKind::Grpc { .. }, _) => "grpc",
        (HealthCheckKind::Http { .. }, true) => "https",
        (HealthCheckKind::Http { .. }, false) => "http",
    }
}

/// `reason_code` of a failed check, with AWS's codes (`-` when it passed).
fn reason(o: Outcome) -> &'static str {
    match o {
        Outcome::Success | Outcome::Answered(_) => "-",
        Outcome::Timeout => "TimedOut",
        Outcome::Failed => "ConnectionReset",
        Outcome::BadGrpcStatus(_) => "GRPCUnexpectedStatus",
        Outcome::GrpcStatusMissing => "GRPCStatusHeaderEmpty",
        Outcome::BadStatus(500..=599) => "TargetError",
        Outcome::BadStatus(_) => "ResponseCodeMismatch",
    }
}

/// One line of the health check log.
#[allow(clippy::too_many_arguments)]
pub fn line(
    hc: &HealthCheckConfig,
    started: SystemTime,
    latency: Duration,
    target: SocketAddr,
    group: &str,
    o: Outcome,
    elb: &str,
    ip: IpAddr,
) -> String {
    let status = match o {
        Outcome::Answered(c) | Outcome::BadStatus(c) | Outcome::BadGrpcStatus(c) => c.to_string(),
        _ => "-".to_owned(),
    };
    format!(
        "{} {} {:.9} {target} {group} {} {status} {} {elb} {ip}",
        kind(hc),
        iso8601(started),
        latency.as_secs_f64(),
        if o.passed() { "PASS" } else { "FAIL" },
        reason(o),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_config::common::StatusMatcher;

    fn http(tls: bool) -> HealthCheckConfig {
        HealthCheckConfig {
            enabled: true,
            kind: HealthCheckKind::Http {
                path: "/".into(),
                matcher: StatusMatcher::parse("200").unwrap(),
            },
            port: None,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            healthy_threshold: 5,
            unhealthy_threshold: 2,
            proxy_protocol_v2: false,
            tls,
        }
    }

    #[test]
    fn lines_follow_aws_fields_and_codes() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_761_914_699_875_678);
        let target: SocketAddr = "172.31.20.97:80".parse().unwrap();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let l = |hc: &HealthCheckConfig, o| {
            line(
                hc,
                at,
                Duration::from_nanos(19_584_011),
                target,
                "web",
                o,
                "app/x",
                ip,
            )
        };
        assert_eq!(
            l(&http(false), Outcome::Answered(200)),
            "http 2025-10-31T12:44:59.875678Z 0.019584011 172.31.20.97:80 web PASS 200 - app/x 10.0.0.5"
        );
        assert!(l(&http(true), Outcome::BadStatus(502)).starts_with("https "));
        assert!(l(&http(true), Outcome::BadStatus(502))
            .ends_with(" web FAIL 502 TargetError app/x 10.0.0.5"));
        assert!(
            l(&http(false), Outcome::BadStatus(404)).contains(" FAIL 404 ResponseCodeMismatch ")
        );
        assert!(l(&http(false), Outcome::Timeout).contains(" FAIL - TimedOut "));
        assert!(l(&http(false), Outcome::Failed).contains(" FAIL - ConnectionReset "));
        let grpc = HealthCheckConfig {
            kind: HealthCheckKind::Grpc {
                path: "/AWS.ALB/healthcheck".into(),
                matcher: StatusMatcher::parse_grpc("12").unwrap(),
            },
            ..http(false)
        };
        assert!(l(&grpc, Outcome::BadGrpcStatus(14)).starts_with("grpc "));
        assert!(l(&grpc, Outcome::BadGrpcStatus(14)).contains(" FAIL 14 GRPCUnexpectedStatus "));
        assert!(l(&grpc, Outcome::Answered(12)).contains(" PASS 12 - "));
        // A gRPC check's HTTP status is judged as an HTTP check's; a missing grpc-status is
        // its own code.
        assert!(l(&grpc, Outcome::BadStatus(503)).contains(" FAIL 503 TargetError "));
        assert!(l(&grpc, Outcome::BadStatus(404)).contains(" FAIL 404 ResponseCodeMismatch "));
        assert!(l(&grpc, Outcome::GrpcStatusMissing).contains(" FAIL - GRPCStatusHeaderEmpty "));
    }
}
