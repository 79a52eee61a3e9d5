//! Cumulative counters (energy in kWh, tapped metal in kg): deltas with 16/32/64-bit rollover,
//! glitch and meter reset or replacement detection, CT/PT ratio, and a restart-safe last value.
//!
//! Invariants:
//! - A delta is never negative, and no step larger than the plausible step ever becomes energy.
//! - The plausible step between two readings is the meter's rated rate × the time between them
//!   ([`EnergyCounter::with_max_rate_per_h`]: a 50 MW meter read every 10 s can add at most
//!   139 kWh), plus one count of resolution. Without a rated rate it is half the register range
//!   (or a fixed raw step, [`EnergyCounter::with_max_step`]).
//! - A drop of the raw value is a rollover only when the wrapped distance is plausible.
//! - Any other step (an implausible rise or drop) is *suspect*: it adds nothing and the baseline
//!   stays where it was. The next reading decides what it was:
//!   - plausible from the old baseline: the suspect value was a glitch (one bad frame, a
//!     half-updated register pair); the new reading counts from the old baseline, so the energy
//!     of the whole span is kept ([`CounterStep::Glitch`]);
//!   - plausible from the suspect value: the meter really was reset or replaced; counting
//!     restarts from the suspect value ([`CounterStep::Reset`]). The energy between the last
//!     reading of the old meter and the first of the new one is unknowable and not invented;
//!   - neither: the new value becomes the suspect one.
//!
//!   So a reset or replacement is classified one reading late, and one glitched reading never
//!   becomes energy.

use serde::{Deserialize, Serialize};

use crate::model::Timestamp;

/// What one update found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterStep {
    /// The first value: it only sets the baseline.
    First,
    /// An ordinary increase (or no change).
    Normal,
    /// The register wrapped past its maximum.
    Rollover,
    /// An implausible step (rise or drop): nothing counted, the baseline kept, decided by the
    /// next reading.
    Suspect,
    /// The suspect value before this one was a glitch: this reading counts from the baseline
    /// before it.
    Glitch,
    /// The suspect value before this one is confirmed: the meter was reset or replaced, and
    /// counting restarted from it.
    Reset,
}

impl CounterStep {
    /// Whether this step closes an anomaly (a glitch or a reset) that should be reported.
    pub fn is_anomaly(self) -> bool {
        matches!(self, CounterStep::Glitch | CounterStep::Reset)
    }
}

/// Result of one update: engineering delta (after the ratio) and what happened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CounterDelta {
    /// Quantity since the previous counted value, engineering units (kWh, kg), ≥ 0.
    pub delta: f64,
    /// Classification of the step.
    pub step: CounterStep,
    /// For [`CounterStep::Glitch`] and [`CounterStep::Reset`]: the raw value that was suspect.
    pub suspect_raw: Option<u64>,
}

/// The restart-safe part of a counter: its baseline and a suspect value not yet decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterState {
    /// Last counted raw value and its time.
    pub last: Option<(u64, Timestamp)>,
    /// A suspect raw value and its time.
    #[serde(default)]
    pub pending: Option<(u64, Timestamp)>,
}

/// How large a step may be before it is suspect.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Limit {
    /// A fixed raw step.
    Raw(u64),
    /// Engineering units per hour (rated power in kW for a kWh counter).
    RatePerH(f64),
}

/// One cumulative counter.
#[derive(Debug, Clone, PartialEq)]
pub struct EnergyCounter {
    modulus: u128,
    limit: Limit,
    ratio: f64,
    state: CounterState,
}

impl EnergyCounter {
    /// A counter of `bits` (16, 32 or 64) with a multiplier `ratio` (CT × PT × scale); the
    /// plausible step is half the register range until [`Self::with_max_rate_per_h`] or
    /// [`Self::with_max_step`] says otherwise.
    pub fn new(bits: u8, ratio: f64) -> Self {
        let bits = bits.clamp(1, 64);
        let modulus = 1u128 << bits;
        let half = u64::try_from(modulus / 2).unwrap_or(u64::MAX);
        EnergyCounter {
            modulus,
            limit: Limit::Raw(half),
            ratio,
            state: CounterState::default(),
        }
    }

    /// A register that wraps to 0 at `wraps_at` instead of at a power of two: a DL/T 645 energy
    /// register `XXXXXX.XX` counted in whole kWh wraps at 1,000,000. The plausible step without a
    /// rated rate becomes half of that range. A value of 0 or 1 leaves the counter as it was.
    pub fn with_wrap_at(mut self, wraps_at: u64) -> Self {
        if wraps_at > 1 {
            self.modulus = u128::from(wraps_at);
            if let Limit::Raw(r) = self.limit {
                self.limit = Limit::Raw(r.min(wraps_at / 2));
            }
        }
        self
    }

    /// The largest plausible raw step, whatever the time between readings.
    pub fn with_max_step(mut self, raw: u64) -> Self {
        self.limit = Limit::Raw(raw);
        self
    }

    /// The largest plausible rate in engineering units per hour (the meter's rated power in kW
    /// for kWh): the plausible step is this × the time between the two readings. A rate that is
    /// not a positive finite number leaves the limit as it was.
    pub fn with_max_rate_per_h(mut self, rate: f64) -> Self {
        if rate.is_finite() && rate > 0.0 {
            self.limit = Limit::RatePerH(rate);
        }
        self
    }

    /// Restore the state saved before a restart.
    pub fn with_state(mut self, state: CounterState) -> Self {
        self.state = state;
        self
    }

    /// The state to persist across restarts.
    pub fn state(&self) -> CounterState {
        self.state
    }

    /// The last counted raw value.
    pub fn last_raw(&self) -> Option<u64> {
        self.state.last.map(|(r, _)| r)
    }

    /// Largest plausible raw step over `dt_ms`.
    fn max_step(&self, dt_ms: i64) -> u128 {
        match self.limit {
            Limit::Raw(r) => u128::from(r),
            Limit::RatePerH(rate) => {
                let units = rate * dt_ms.max(0) as f64 / 3_600_000.0;
                let raw = (units / self.ratio.abs().max(f64::MIN_POSITIVE)).ceil();
                // one count of resolution: a reading may tick over just after the previous one
                (raw.min(u64::MAX as f64) as u128).saturating_add(1)
            }
        }
    }

    /// The raw distance from `from` to `to` if it is a plausible step over `dt_ms`, with whether
    /// it wrapped.
    fn plausible(&self, from: u64, to: u64, dt_ms: i64) -> Option<(u64, bool)> {
        let max = self.max_step(dt_ms);
        if to >= from {
            let d = to - from;
            (u128::from(d) <= max).then_some((d, false))
        } else {
            let wrapped = self.modulus - u128::from(from) + u128::from(to);
            (wrapped <= max).then_some((wrapped as u64, true))
        }
    }

    fn delta(&self, raw: u64, step: CounterStep, suspect: Option<u64>) -> CounterDelta {
        CounterDelta {
            delta: raw as f64 * self.ratio,
            step,
            suspect_raw: suspect,
        }
    }

    /// Feed a new raw value read at `ts`.
    pub fn update(&mut self, raw: u64, ts: Timestamp) -> CounterDelta {
        let raw = (u128::from(raw) % self.modulus) as u64;
        let Some((last, last_ts)) = self.state.last else {
            self.state.last = Some((raw, ts));
            return self.delta(0, CounterStep::First, None);
        };
        if let Some((d, wrapped)) = self.plausible(last, raw, ts.0 - last_ts.0) {
            let pending = self.state.pending.take();
            self.state.last = Some((raw, ts));
            let step = match (pending, wrapped) {
                (Some(_), _) => CounterStep::Glitch,
                (None, true) => CounterStep::Rollover,
                (None, false) => CounterStep::Normal,
            };
            return self.delta(d, step, pending.map(|(r, _)| r));
        }
        if let Some((p, p_ts)) = self.state.pending
            && let Some((d, _)) = self.plausible(p, raw, ts.0 - p_ts.0)
        {
            self.state.pending = None;
            self.state.last = Some((raw, ts));
            return self.delta(d, CounterStep::Reset, Some(p));
        }
        self.state.pending = Some((raw, ts));
        self.delta(0, CounterStep::Suspect, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp(s * 1000)
    }

    /// A decimal register (DL/T 645 `XXXXXX.XX` kWh) wraps at 1,000,000: with a binary width
    /// only, the wrap was a suspect step and then a meter reset, and the interval's energy was
    /// lost; with its wrap value it is a rollover that counts.
    #[test]
    fn a_decimal_register_rolls_over_at_its_wrap_value() {
        let mut binary = EnergyCounter::new(32, 1.0).with_max_rate_per_h(50_000.0);
        binary.update(999_990, at(0));
        assert_eq!(binary.update(10, at(10)).step, CounterStep::Suspect);
        let after = binary.update(40, at(20));
        assert_eq!((after.step, after.delta), (CounterStep::Reset, 30.0));

        let mut decimal = EnergyCounter::new(32, 1.0)
            .with_wrap_at(1_000_000)
            .with_max_rate_per_h(50_000.0);
        decimal.update(999_990, at(0));
        let wrapped = decimal.update(10, at(10));
        assert_eq!((wrapped.step, wrapped.delta), (CounterStep::Rollover, 20.0));
        let next = decimal.update(40, at(20));
        assert_eq!((next.step, next.delta), (CounterStep::Normal, 30.0));
        // Without a rated rate the plausible step is half the decimal range, not of 2^32.
        let mut unrated = EnergyCounter::new(32, 1.0).with_wrap_at(1_000_000);
        unrated.update(100, at(0));
        assert_eq!(unrated.update(600_000, at(10)).step, CounterStep::Suspect);
    }

    #[test]
    fn one_glitched_reading_adds_nothing_and_the_next_counts_from_before_it() {
        let mut c = EnergyCounter::new(32, 1.0).with_max_rate_per_h(50_000.0);
        assert_eq!(c.update(1_000_000, at(0)).step, CounterStep::First);
        let d = c.update(1_500_000_000, at(10));
        assert_eq!((d.step, d.delta), (CounterStep::Suspect, 0.0));
        let d = c.update(1_000_100, at(20));
        assert_eq!((d.step, d.delta), (CounterStep::Glitch, 100.0));
        assert_eq!(d.suspect_raw, Some(1_500_000_000));
        assert_eq!(c.last_raw(), Some(1_000_100));
    }

    #[test]
    fn the_plausible_step_grows_with_the_time_between_readings() {
        // 36,000 kW: 10 kWh per second, so 100 s allow 1,000 kWh (+1 count)
        let mut c = EnergyCounter::new(32, 1.0).with_max_rate_per_h(36_000.0);
        c.update(0, at(0));
        assert_eq!(c.update(1_001, at(100)).step, CounterStep::Normal);
        assert_eq!(c.update(2_003, at(200)).step, CounterStep::Suspect);
        // a ratio scales the raw limit: 1 raw count is 10 kWh
        let mut c = EnergyCounter::new(32, 10.0).with_max_rate_per_h(36_000.0);
        c.update(0, at(0));
        let d = c.update(101, at(100));
        assert_eq!((d.step, d.delta), (CounterStep::Normal, 1_010.0));
        assert_eq!(c.update(203, at(200)).step, CounterStep::Suspect);
    }

    #[test]
    fn a_replaced_meter_is_confirmed_by_the_reading_after_it() {
        let mut c = EnergyCounter::new(32, 1.0).with_max_rate_per_h(50_000.0);
        c.update(9_000_000, at(0));
        assert_eq!(c.update(50, at(10)).step, CounterStep::Suspect);
        let d = c.update(120, at(20));
        assert_eq!(
            (d.step, d.delta, d.suspect_raw),
            (CounterStep::Reset, 70.0, Some(50))
        );
        assert_eq!(c.update(150, at(30)).step, CounterStep::Normal);
    }

    #[test]
    fn a_rollover_within_the_rated_step_is_counted() {
        let mut c = EnergyCounter::new(16, 1.0).with_max_rate_per_h(36_000.0);
        c.update(65_500, at(0));
        let d = c.update(4, at(10));
        assert_eq!((d.step, d.delta), (CounterStep::Rollover, 40.0));
    }

    #[test]
    fn the_state_survives_a_restart() {
        let mut c = EnergyCounter::new(32, 1.0).with_max_rate_per_h(50_000.0);
        c.update(1_000, at(0));
        c.update(900_000_000, at(10));
        let mut r = EnergyCounter::new(32, 1.0)
            .with_max_rate_per_h(50_000.0)
            .with_state(c.state());
        assert_eq!(r.update(1_050, at(20)).step, CounterStep::Glitch);
    }
}
