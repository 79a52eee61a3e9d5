//! Cumulative energy counters: deltas with 16/32/64-bit rollover, meter reset or replacement
//! detection, CT/PT ratio, and a restart-safe last value.
//!
//! Invariant: a delta is never negative. A drop of the raw value is a rollover only when the
//! wrapped distance is plausible (at most `max_step`); any other drop is a reset (or a replaced
//! meter): counting restarts from the new value, that step contributes nothing, and it is flagged.

/// What one update found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterStep {
    /// The first value: it only sets the baseline.
    First,
    /// An ordinary increase (or no change).
    Normal,
    /// The register wrapped past its maximum.
    Rollover,
    /// The value dropped implausibly: the meter was reset or replaced.
    Reset,
    /// The value rose by more than `max_step`: treated as a reset to a new baseline.
    Jump,
}

/// Result of one update: engineering delta (after the ratio) and what happened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CounterDelta {
    /// Energy since the previous value, engineering units (kWh), ≥ 0.
    pub delta: f64,
    /// Classification of the step.
    pub step: CounterStep,
}

/// One cumulative counter.
#[derive(Debug, Clone, PartialEq)]
pub struct EnergyCounter {
    modulus: u128,
    max_step: u64,
    ratio: f64,
    last: Option<u64>,
}

impl EnergyCounter {
    /// A counter of `bits` (16, 32 or 64) with a multiplier `ratio` (CT × PT × scale) and the
    /// largest plausible raw step `max_step` (`None`: half the range).
    pub fn new(bits: u8, ratio: f64, max_step: Option<u64>) -> Self {
        let bits = bits.clamp(1, 64);
        let modulus = 1u128 << bits;
        let half = u64::try_from(modulus / 2).unwrap_or(u64::MAX);
        EnergyCounter {
            modulus,
            max_step: max_step.unwrap_or(half),
            ratio,
            last: None,
        }
    }

    /// Restore the last raw value saved before a restart.
    pub fn with_last(mut self, last_raw: u64) -> Self {
        self.last = Some(last_raw);
        self
    }

    /// The last raw value (to persist across restarts).
    pub fn last_raw(&self) -> Option<u64> {
        self.last
    }

    /// Feed a new raw value.
    pub fn update(&mut self, raw: u64) -> CounterDelta {
        let raw = (u128::from(raw) % self.modulus) as u64;
        let Some(last) = self.last.replace(raw) else {
            return CounterDelta {
                delta: 0.0,
                step: CounterStep::First,
            };
        };
        let (raw_delta, step) = if raw >= last {
            let d = raw - last;
            if d > self.max_step {
                (0, CounterStep::Jump)
            } else {
                (d, CounterStep::Normal)
            }
        } else {
            let wrapped = self.modulus - u128::from(last) + u128::from(raw);
            if wrapped <= u128::from(self.max_step) {
                (wrapped as u64, CounterStep::Rollover)
            } else {
                (0, CounterStep::Reset)
            }
        };
        CounterDelta {
            delta: raw_delta as f64 * self.ratio,
            step,
        }
    }
}
