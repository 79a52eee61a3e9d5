//! The reconnect and restart delay of the uplinks: `min`, doubling after each failure up to
//! `max`, back to `min` after a success (what counts as one is the caller's: a CONNACK, a
//! session that delivered something). With jitter, each delay is drawn from ±25 % of its base so
//! that gateways that lost the same broker at the same moment do not all come back on the same
//! instant.

use std::time::Duration;

/// An exponential backoff (see the module documentation).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    jitter: Option<fastrand::Rng>,
}

impl Backoff {
    /// First delay `min`, doubling up to `max`, without jitter.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            next: min,
            jitter: None,
        }
    }

    /// The same with ±25 % jitter on every delay.
    pub fn with_jitter(mut self) -> Backoff {
        self.jitter = Some(fastrand::Rng::new());
        self
    }

    /// After a success: the next delay is `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The base of the next delay (before jitter), without using it up.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The delay to wait now (jittered when asked for); the one after it is twice its base, at
    /// most `max`.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        match &mut self.jitter {
            Some(rng) => base.mul_f64(0.75 + 0.5 * rng.f64()),
            None => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    /// Sleep each delay on the paused clock and return how long each took, in ms.
    async fn waits(b: &mut Backoff, n: usize) -> Vec<u128> {
        let mut out = Vec::new();
        for _ in 0..n {
            let started = Instant::now();
            tokio::time::sleep(b.next_delay()).await;
            out.push(started.elapsed().as_millis());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn doubles_up_to_the_cap_and_starts_over_after_a_reset() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        assert_eq!(waits(&mut b, 6).await, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.peek(), 100 * MS);
        assert_eq!(waits(&mut b, 2).await, [100, 200]);
    }

    #[tokio::test(start_paused = true)]
    async fn peek_does_not_use_the_delay_up() {
        let mut b = Backoff::new(50 * MS, 200 * MS);
        assert_eq!(b.peek(), 50 * MS);
        assert_eq!(b.peek(), 50 * MS);
        assert_eq!(waits(&mut b, 1).await, [50]);
        assert_eq!(b.peek(), 100 * MS);
    }

    #[test]
    fn a_cap_below_the_first_delay_is_the_first_delay() {
        let mut b = Backoff::new(300 * MS, 100 * MS);
        assert_eq!(b.next_delay(), 300 * MS);
        assert_eq!(b.next_delay(), 300 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_within_a_quarter_of_the_base() {
        let mut b = Backoff::new(100 * MS, 1000 * MS).with_jitter();
        b.jitter = Some(fastrand::Rng::with_seed(7));
        let bases = [100u128, 200, 400, 800, 1000, 1000];
        let got = waits(&mut b, bases.len()).await;
        for (base, ms) in bases.iter().zip(&got) {
            assert!(
                base * 3 / 4 <= *ms && *ms <= base * 5 / 4,
                "{ms} ms for a base of {base} ms"
            );
        }
        assert!(
            got.iter().zip(bases).any(|(ms, base)| *ms != base),
            "jitter changed nothing: {got:?}"
        );
    }
}
