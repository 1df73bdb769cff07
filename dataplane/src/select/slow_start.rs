//! Slow start: a target that has just become healthy gets a weight that ramps up linearly over
//! the window, as AWS's `slow_start.duration_seconds` does.

use std::time::Duration;

/// The effective weight `elapsed` into a slow-start `window`. Never 0 for a non-zero weight, so
/// a ramping target still gets some traffic.
pub fn ramp(weight: u32, elapsed: Duration, window: Duration) -> u32 {
    if window.is_zero() || elapsed >= window || weight == 0 {
        return weight;
    }
    let w = (weight as u128 * elapsed.as_millis()) / window.as_millis().max(1);
    (w as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_linearly_to_full_weight() {
        let win = Duration::from_secs(30);
        assert_eq!(ramp(100, Duration::ZERO, win), 1);
        assert_eq!(ramp(100, Duration::from_secs(15), win), 50);
        assert_eq!(ramp(100, Duration::from_secs(30), win), 100);
        assert_eq!(ramp(100, Duration::from_secs(99), win), 100);
        assert_eq!(ramp(100, Duration::from_secs(1), Duration::ZERO), 100);
        assert_eq!(ramp(0, Duration::from_secs(1), win), 0);
    }
}
