//! When and how long to wait before trying a request again: exponential
//! backoff with jitter, for answers and failures that another try may fix.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// The wait before try number `attempt + 1` (`attempt` counts from 1):
    /// doubling each time up to the maximum, and a random half of it, so that
    /// many clients that failed together do not come back together.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doubling = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        let full = self
            .first_delay
            .saturating_mul(doubling)
            .min(self.max_delay);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// The wait a `Retry-After` header asks for, within reason.
    pub fn requested_delay(&self, retry_after: Option<&str>) -> Option<Duration> {
        let seconds: u64 = retry_after?.trim().parse().ok()?;
        Some(Duration::from_secs(seconds).min(self.max_delay * 2))
    }
}

/// Statuses that say "not now" rather than "no".
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_up_to_the_maximum() {
        let policy = RetryPolicy {
            attempts: 10,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        for _ in 0..50 {
            let first = policy.delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = policy.delay(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = policy.delay(30);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_millis(1000));
        }
        assert_eq!(
            policy.requested_delay(Some("1")),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            policy.requested_delay(Some("3600")),
            Some(Duration::from_millis(2000))
        );
        assert_eq!(policy.requested_delay(Some("Wed, 21 Oct 2015")), None);
        assert!(retryable_status(503) && retryable_status(429));
        assert!(!retryable_status(404) && !retryable_status(401));
    }
}
