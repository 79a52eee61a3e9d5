//! Reconnect backoff: the first delay, doubling up to a ceiling, each with ±25 % jitter so that
//! the pollers of one gateway do not knock on a recovering server in step.

use std::time::Duration;

use tokio::time::Instant;

/// The backoff of one connection.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    next_attempt: Instant,
}

impl Backoff {
    /// A backoff from `min` up to `max`; the first attempt may go at once.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            current: min,
            next_attempt: Instant::now(),
        }
    }

    /// Whether an attempt may go now.
    pub fn ready(&self) -> bool {
        Instant::now() >= self.next_attempt
    }

    /// An attempt failed: the next waits the current delay (jittered), which then doubles.
    pub fn failed(&mut self) {
        let jitter = 0.75 + fastrand::f64() * 0.5;
        self.next_attempt = Instant::now() + self.current.mul_f64(jitter);
        self.current = (self.current * 2).min(self.max);
    }

    /// An attempt succeeded: the next failure starts from the first delay again.
    pub fn succeeded(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delays_double_up_to_the_ceiling_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
        assert!(b.ready());
        for expected_s in [1.0, 2.0, 4.0, 4.0] {
            let t0 = Instant::now();
            b.failed();
            let wait = b.next_attempt - t0;
            let s = wait.as_secs_f64();
            assert!(
                s >= 0.75 * expected_s && s <= 1.25 * expected_s,
                "{s} for {expected_s}"
            );
            assert!(!b.ready());
            tokio::time::advance(wait).await;
            assert!(b.ready());
        }
        b.succeeded();
        let t0 = Instant::now();
        b.failed();
        assert!(b.next_attempt - t0 <= Duration::from_millis(1250));
    }
}
