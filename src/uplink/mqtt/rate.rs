//! Replay pacing (a token bucket) and the measured drain rate of the backlog.

use std::time::Duration;

use tokio::time::Instant;

// === impl TokenBucket ===

/// Replay pacing: `rate` tokens per second, bursts of up to a tenth of a second's worth.
#[derive(Debug)]
pub(super) struct TokenBucket {
    rate_per_s: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub(super) fn new(rate_per_s: u32) -> Self {
        let rate_per_s = f64::from(rate_per_s.max(1));
        let capacity = (rate_per_s / 10.0).max(1.0);
        TokenBucket {
            rate_per_s,
            capacity,
            tokens: capacity,
            at: Instant::now(),
        }
    }

    pub(super) fn reset(&mut self, now: Instant) {
        self.tokens = self.capacity;
        self.at = now;
    }

    pub(super) fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_s).min(self.capacity);
        self.at = now;
    }

    /// Whole tokens available now.
    pub(super) fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.floor() as usize
    }

    pub(super) fn take(&mut self, n: usize) {
        self.tokens -= n as f64;
    }

    /// When the next whole token will be available.
    pub(super) fn next_token_at(&self) -> Instant {
        if self.tokens >= 1.0 {
            return self.at;
        }
        self.at + Duration::from_secs_f64((1.0 - self.tokens) / self.rate_per_s)
    }
}

// === impl DrainRate ===

/// Backlog records acked per second, over the last complete one-second window.
#[derive(Debug)]
pub(super) struct DrainRate {
    window_start: Option<Instant>,
    count: u64,
    last: u64,
}

impl DrainRate {
    pub(super) fn new() -> Self {
        DrainRate {
            window_start: None,
            count: 0,
            last: 0,
        }
    }

    pub(super) fn roll(&mut self, now: Instant) {
        let Some(start) = self.window_start else {
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Duration::from_secs(2) {
            // A whole window without acks.
            self.last = 0;
            self.count = 0;
            self.window_start = Some(now);
        } else if elapsed >= Duration::from_secs(1) {
            self.last = self.count;
            self.count = 0;
            self.window_start = Some(start + Duration::from_secs(1));
        }
    }

    pub(super) fn add(&mut self, now: Instant, n: u64) {
        if n == 0 {
            self.roll(now);
            return;
        }
        if self.window_start.is_none() {
            self.window_start = Some(now);
        }
        self.roll(now);
        self.count += n;
    }

    pub(super) fn per_second(&mut self, now: Instant) -> u64 {
        self.roll(now);
        self.last
    }
}
