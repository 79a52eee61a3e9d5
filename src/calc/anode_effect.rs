//! Anode-effect detection per cell from timestamped cell voltages, and AEF/AED/AEM statistics.
//!
//! An AE candidate starts at the first sample at or above `threshold_v`; it becomes an anode
//! effect once the voltage has stayed above `threshold_v − hysteresis_v` for `min_duration_s`
//! (the start event then carries the candidate's first timestamp). It ends at the first sample
//! below `threshold_v − hysteresis_v`. A cell out of service (cut out, not in service) never
//! starts an AE; if it goes out of service during one, the AE ends there. Time comes only from
//! the readings' timestamps.
//!
//! The duration of an AE (the AE minutes of AEM, and so of the PFC slope method) is the time the
//! voltage spent at or above the threshold, each sample standing for the interval up to the next
//! one. The hysteresis only keeps a voltage that dips under the threshold and comes back from
//! counting as a second AE: the time between the threshold and the end level is not AE time.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::coefficients::AnodeEffectTable;
use crate::model::{Event, EventKind, EventPhase, Timestamp, Value};

/// Detection parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AeParams {
    /// Start threshold, V.
    pub threshold_v: f64,
    /// Minimum duration above the threshold, s.
    pub min_duration_s: f64,
    /// End when V < threshold − hysteresis, V.
    pub hysteresis_v: f64,
}

impl From<&AnodeEffectTable> for AeParams {
    fn from(t: &AnodeEffectTable) -> Self {
        AeParams {
            threshold_v: t.threshold_v,
            min_duration_s: t.min_duration_s,
            hysteresis_v: t.hysteresis_v,
        }
    }
}

/// A finished anode effect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnodeEffect {
    /// First sample at or above the threshold.
    pub start: Timestamp,
    /// First sample below the end level (or the instant the cell left service).
    pub end: Timestamp,
    /// Time at or above the threshold, ms.
    pub above_ms: i64,
    /// Highest voltage, V.
    pub peak_v: f64,
    /// Mean of the samples during the AE, V.
    pub mean_v: f64,
}

impl AnodeEffect {
    /// Duration: the time at or above the threshold, s.
    pub fn duration_s(&self) -> f64 {
        self.above_ms as f64 / 1000.0
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Active {
    start: Timestamp,
    confirmed: bool,
    peak_v: f64,
    sum_v: f64,
    n: u32,
    /// Time at or above the threshold so far, ms.
    #[serde(default)]
    above_ms: i64,
    /// The previous sample: its time and whether it was at or above the threshold.
    #[serde(default)]
    last: Option<(Timestamp, bool)>,
}

impl Active {
    /// Count the interval since the previous sample if that one was above the threshold.
    fn advance(&mut self, ts: Timestamp, above: bool) {
        if let Some((t0, true)) = self.last {
            self.above_ms += (ts.0 - t0.0).max(0);
        }
        self.last = Some((ts, above));
    }
}

/// What one sample did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AeTransition {
    /// An AE was confirmed; it started at this instant.
    Started(Timestamp),
    /// An AE ended.
    Ended(AnodeEffect),
}

/// Detector of one cell (serialisable: an AE in progress survives an agent restart).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AeDetector {
    active: Option<Active>,
}

impl AeDetector {
    /// Whether an AE is confirmed and in progress.
    pub fn in_effect(&self) -> bool {
        self.active.is_some_and(|a| a.confirmed)
    }

    /// Feed one good sample. `in_service` false excludes the cell.
    pub fn update(
        &mut self,
        p: &AeParams,
        ts: Timestamp,
        voltage_v: f64,
        in_service: bool,
    ) -> Option<AeTransition> {
        let end_level = p.threshold_v - p.hysteresis_v;
        if !in_service {
            return self.finish(ts);
        }
        match self.active.as_mut() {
            None => {
                if voltage_v >= p.threshold_v {
                    self.active = Some(Active {
                        start: ts,
                        confirmed: false,
                        peak_v: voltage_v,
                        sum_v: voltage_v,
                        n: 1,
                        above_ms: 0,
                        last: Some((ts, true)),
                    });
                    return self.confirm(p, ts);
                }
                None
            }
            Some(a) => {
                if voltage_v < end_level {
                    return self.finish(ts);
                }
                a.advance(ts, voltage_v >= p.threshold_v);
                a.peak_v = a.peak_v.max(voltage_v);
                a.sum_v += voltage_v;
                a.n += 1;
                self.confirm(p, ts)
            }
        }
    }

    fn confirm(&mut self, p: &AeParams, ts: Timestamp) -> Option<AeTransition> {
        let a = self.active.as_mut()?;
        if !a.confirmed && (ts.0 - a.start.0) as f64 / 1000.0 >= p.min_duration_s {
            a.confirmed = true;
            return Some(AeTransition::Started(a.start));
        }
        None
    }

    fn finish(&mut self, ts: Timestamp) -> Option<AeTransition> {
        let mut a = self.active.take()?;
        a.advance(ts, false);
        a.confirmed.then(|| {
            AeTransition::Ended(AnodeEffect {
                start: a.start,
                end: ts,
                above_ms: a.above_ms,
                peak_v: a.peak_v,
                mean_v: a.sum_v / f64::from(a.n.max(1)),
            })
        })
    }
}

/// AE statistics of a line over a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AeStats {
    /// Number of AEs ended in the period.
    pub count: u64,
    /// Total AE minutes.
    pub minutes: f64,
    /// Operating cell-days (cells in service integrated over time).
    pub cell_days: f64,
}

impl AeStats {
    /// Add another period's figures.
    pub fn add(&mut self, other: &AeStats) {
        self.count += other.count;
        self.minutes += other.minutes;
        self.cell_days += other.cell_days;
    }

    /// AEF: AEs per cell-day.
    pub fn aef(&self) -> Option<f64> {
        (self.cell_days > 0.0).then(|| self.count as f64 / self.cell_days)
    }

    /// AED: minutes per AE (0 when there was none).
    pub fn aed_min(&self) -> Option<f64> {
        if self.count == 0 {
            return (self.cell_days > 0.0).then_some(0.0);
        }
        Some(self.minutes / self.count as f64)
    }

    /// AEM: AE minutes per cell-day (= AEF × AED).
    pub fn aem(&self) -> Option<f64> {
        (self.cell_days > 0.0).then(|| self.minutes / self.cell_days)
    }
}

/// The event of a transition, for cell `subject` (`potline1/pot_017`).
pub fn event_of(subject: &Arc<str>, t: &AeTransition) -> Event {
    match *t {
        AeTransition::Started(ts) => Event {
            kind: EventKind::AnodeEffect,
            subject: subject.clone(),
            phase: EventPhase::Start,
            ts,
            attributes: Vec::new(),
            message: format!("anode effect started on {subject}"),
        },
        AeTransition::Ended(ae) => Event {
            kind: EventKind::AnodeEffect,
            subject: subject.clone(),
            phase: EventPhase::End,
            ts: ae.end,
            attributes: vec![
                (Arc::from("start"), Value::Int(ae.start.0)),
                (Arc::from("duration_s"), Value::Float(ae.duration_s())),
                (Arc::from("peak_voltage_v"), Value::Float(ae.peak_v)),
                (Arc::from("mean_voltage_v"), Value::Float(ae.mean_v)),
            ],
            message: format!(
                "anode effect on {subject} ended after {:.1} s (peak {:.1} V, mean {:.1} V)",
                ae.duration_s(),
                ae.peak_v,
                ae.mean_v
            ),
        },
    }
}
