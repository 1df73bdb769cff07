//! Phase `logging`: metrics after ALB's CloudWatch names, as Prometheus counters labelled by
//! target group.

use crate::error::ProxyError;
use crate::upstream::Outcome;
use std::net::SocketAddr;
use tokio::time::Instant;

fn class(status: u16) -> &'static str {
    match status {
        200..=299 => "2XX",
        300..=399 => "3XX",
        400..=499 => "4XX",
        _ => "5XX",
    }
}

/// A forwarded request, answered by a target or by us.
pub fn forwarded(
    group: &str,
    received: Instant,
    r: &Result<Outcome, (ProxyError, Option<SocketAddr>)>,
) {
    let g = group.to_owned();
    metrics::counter!("causeway_alb_request_count", "target_group" => g.clone()).increment(1);
    match r {
        Ok(o) => {
            metrics::counter!("causeway_alb_httpcode_target_count",
                "target_group" => g.clone(), "class" => class(o.status))
            .increment(1);
            metrics::histogram!("causeway_alb_target_response_time_seconds", "target_group" => g)
                .record(o.target_time.as_secs_f64());
        }
        Err((e, _)) => {
            if let Some(s) = e.status() {
                metrics::counter!("causeway_alb_httpcode_elb_count", "class" => class(s))
                    .increment(1);
            }
            tracing::debug!(target_group = group, error = %e, elapsed = ?received.elapsed(), "forward failed");
        }
    }
}

/// A response we generated (fixed-response, redirect).
pub fn local(status: u16) {
    metrics::counter!("causeway_alb_httpcode_elb_count", "class" => class(status)).increment(1);
}

/// A request refused before routing.
pub fn elb_error(e: &ProxyError) {
    if let Some(s) = e.status() {
        metrics::counter!("causeway_alb_httpcode_elb_count", "class" => class(s)).increment(1);
    }
}
