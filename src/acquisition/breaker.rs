//! The circuit breaker of a device, or of one request group of a device.
//!
//! After `threshold` failed cycles in a row the circuit opens: until its probe instant nobody
//! spends a timeout on it. Once that instant has passed, the next cycle goes ahead as the
//! half-open probe; its failure keeps the circuit open for another probe interval, one good
//! answer closes it.

use std::time::Duration;

use tokio::time::Instant;

/// What a recorded outcome changed, for the caller's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing worth a log line.
    None,
    /// The circuit has just opened.
    Opened,
    /// The circuit was open (or at its threshold) and closed.
    Closed,
}

/// Consecutive failures and, once open, the instant of the next probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// Whether the circuit is open at `now` (no bus traffic before the probe instant).
    pub fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|until| now < until)
    }

    /// Whether the circuit has opened and not closed since (probe instant passed or not).
    pub fn has_opened(&self) -> bool {
        self.open_until.is_some()
    }

    /// Failures in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// A good answer: the circuit closes.
    pub fn succeeded(&mut self, threshold: u32) -> Transition {
        let was_open = self.open_until.is_some() || self.consecutive_failures >= threshold;
        *self = Breaker::default();
        if was_open {
            Transition::Closed
        } else {
            Transition::None
        }
    }

    /// A failure: at `threshold` in a row the circuit opens (again) for `probe_interval`.
    pub fn failed(&mut self, threshold: u32, probe_interval: Duration) -> Transition {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.consecutive_failures < threshold {
            return Transition::None;
        }
        let opened = self.open_until.is_none();
        self.open_until = Some(Instant::now() + probe_interval);
        if opened {
            Transition::Opened
        } else {
            Transition::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_threshold_probes_and_closes_on_success() {
        let probe = Duration::from_secs(10);
        let mut b = Breaker::default();
        assert_eq!(b.failed(3, probe), Transition::None);
        assert_eq!(b.failed(3, probe), Transition::None);
        assert!(!b.is_open(Instant::now()));
        assert_eq!(b.failed(3, probe), Transition::Opened);
        assert!(b.is_open(Instant::now()));
        tokio::time::advance(probe).await;
        // The probe instant has passed: the next cycle may try.
        assert!(!b.is_open(Instant::now()));
        assert!(b.has_opened());
        // The probe fails: open again, without a second "opened".
        assert_eq!(b.failed(3, probe), Transition::None);
        assert!(b.is_open(Instant::now()));
        assert_eq!(b.succeeded(3), Transition::Closed);
        assert_eq!(b, Breaker::default());
        assert_eq!(b.succeeded(3), Transition::None);
    }
}
