//! Reconnect delays: exponential, capped, with jitter.
//!
//! The n-th delay is drawn uniformly from [d/2, d] where d = base * 2^n capped
//! at `max` ("equal jitter"): agents that lost the same server spread out,
//! and none retries faster than half the base delay.

use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay, with `unit` in [0, 1) choosing within the jitter range.
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The next delay, with random jitter.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }

    /// The longest delay, for failures that waiting does not heal; later
    /// delays stay there.
    pub fn max_delay(&mut self) -> Duration {
        self.attempt = 31;
        self.max
    }

    /// Back to the base delay (after a connection that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_and_cap() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(b.next_with(1.0), Duration::from_secs(5));
        assert_eq!(b.next_with(0.0), Duration::from_secs(5));
        assert_eq!(b.next_with(1.0), Duration::from_secs(20));
        assert_eq!(b.next_with(1.0), Duration::from_secs(40));
        assert_eq!(b.next_with(1.0), Duration::from_secs(60));
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d >= Duration::from_secs(30) && d <= Duration::from_secs(60));
        }
        b.reset();
        assert_eq!(b.next_with(0.0), Duration::from_millis(2500));
    }
}
