//! The open state of the calculators, so that an agent restart neither loses a partial window nor
//! counts anything twice.
//!
//! What is open at any instant: each stack's minute, hour and day windows; each line's open
//! minute, day, month and year accumulators (charge, DC and AC energy, AE figures); the last raw
//! value of every energy counter; every cell's anode-effect detector (an AE in progress) and
//! status. [`Pipeline::snapshot`](super::Pipeline::snapshot) copies all of it into a
//! [`PipelineSnapshot`]; [`Pipeline::restore`](super::Pipeline::restore) puts it back into a
//! pipeline built from the (possibly edited) configuration, matching lines and stacks by name.
//! Closed aggregates are not part of it: once emitted they belong to the spools (and the history
//! store), so a restore cannot emit them again.
//!
//! Pure data: the agent decides where and when it is written (`app`: `calc-state.json` in the
//! state directory, after every burst that closed a window, on a timer and at shutdown).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::anode_effect::{AeDetector, AeStats};
use super::counter::CounterState;
use super::pipeline::LineExtra;
use super::window::Window;
use crate::model::Timestamp;

/// Format version of [`PipelineSnapshot`]; a snapshot of another version is not restored.
pub(super) const SNAPSHOT_VERSION: u32 = 1;

/// Everything the calculators hold open. Serialise it with serde (the agent uses JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineSnapshot {
    /// Format version of the writer (a snapshot of another version is not restored).
    pub version: u32,
    /// Latest calculator time seen (reading time, or plant time under `simulated_time`).
    pub latest: Option<Timestamp>,
    pub(super) lines: Vec<LineSnapshot>,
    pub(super) stacks: Vec<StackSnapshot>,
    #[serde(default)]
    pub(super) smelters: Vec<SmelterSnapshot>,
    /// Wall-clock anchor of `[calc.simulated_time]`, if that is in use.
    pub(super) clock_anchor_ms: Option<i64>,
}

/// Figures of a line accumulated over a period.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct PeriodAcc {
    /// Σ line current × time × cells in service, kA·h.
    pub(super) charge_ka_h: f64,
    /// Σ cell voltage × line current × time, kWh.
    pub(super) dc_kwh: f64,
    /// AC energy from the meter, kWh.
    pub(super) ac_kwh: f64,
    /// DC energy from the meter, kWh.
    pub(super) dc_meter_kwh: f64,
    /// AE figures.
    pub(super) ae: AeStats,
    /// Meter resets seen.
    pub(super) resets: u32,
    /// Metal tapped, kg.
    #[serde(default)]
    pub(super) tapped_kg: f64,
    /// Auxiliary energy, kWh.
    #[serde(default)]
    pub(super) aux_kwh: f64,
    /// Gaps in the line current that were bridged, s.
    #[serde(default)]
    pub(super) bridged_s: f64,
    /// Gaps in the line current that were not bridged, s.
    #[serde(default)]
    pub(super) unbridged_s: f64,
    /// Counter energy left out because it spans a gap that was not bridged, kWh.
    #[serde(default)]
    pub(super) excluded_kwh: f64,
}

impl PeriodAcc {
    pub(super) fn add(&mut self, o: &PeriodAcc) {
        self.charge_ka_h += o.charge_ka_h;
        self.dc_kwh += o.dc_kwh;
        self.ac_kwh += o.ac_kwh;
        self.dc_meter_kwh += o.dc_meter_kwh;
        self.ae.add(&o.ae);
        self.resets += o.resets;
        self.tapped_kg += o.tapped_kg;
        self.aux_kwh += o.aux_kwh;
        self.bridged_s += o.bridged_s;
        self.unbridged_s += o.unbridged_s;
        self.excluded_kwh += o.excluded_kwh;
    }
}

/// One cell's open state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CellState {
    pub(super) subject: Arc<str>,
    pub(super) detector: AeDetector,
    pub(super) in_service: bool,
    pub(super) last_ts: Option<Timestamp>,
    pub(super) minute_v_sum: f64,
    pub(super) minute_v_n: u32,
}

/// One line's open state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LineSnapshot {
    pub(super) name: String,
    /// (device, cell state).
    pub(super) cells: Vec<(Arc<str>, CellState)>,
    pub(super) current: Option<(Timestamp, f64)>,
    /// The DC, AC and tapped-metal counters (baseline with its time, and a suspect value).
    #[serde(default)]
    pub(super) dc_counter: CounterState,
    #[serde(default)]
    pub(super) ac_counter: CounterState,
    #[serde(default)]
    pub(super) tap_counter: CounterState,
    /// Last raw values as snapshots before the counter state had times wrote them; read only.
    #[serde(default, skip_serializing)]
    pub(super) dc_counter_raw: Option<u64>,
    #[serde(default, skip_serializing)]
    pub(super) ac_counter_raw: Option<u64>,
    #[serde(default, skip_serializing)]
    pub(super) tap_counter_raw: Option<u64>,
    /// Gap, tapping and auxiliary-meter state.
    #[serde(default)]
    pub(super) extra: LineExtra,
    pub(super) day: Option<i64>,
    pub(super) minute: Option<Timestamp>,
    pub(super) today: PeriodAcc,
    pub(super) month: PeriodAcc,
    pub(super) month_days: u32,
    pub(super) year: PeriodAcc,
    pub(super) year_days: u32,
}

/// One stack's open windows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StackSnapshot {
    pub(super) name: String,
    /// (quantity, its windows).
    pub(super) windows: Vec<(Arc<str>, Window)>,
}

/// Latest rates of a smelter (good samples only; `None` when the point is missing or bad).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct SmelterRates {
    pub(super) feed_tph: Option<f64>,
    pub(super) oxygen_nm3_h: Option<f64>,
    pub(super) enrichment_pct: Option<f64>,
    pub(super) inlet_so2_kg_h: Option<f64>,
    pub(super) stack_so2_kg_h: Option<f64>,
    pub(super) copper_tph: Option<f64>,
    pub(super) energy_kgce_h: Option<f64>,
}

/// A smelter's figures over a period.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct SmelterAcc {
    pub(super) concentrate_t: f64,
    pub(super) oxygen_nm3: f64,
    /// Inlet and stack SO2, kg, over the intervals where both were known.
    pub(super) inlet_so2_kg: f64,
    pub(super) stack_so2_kg: f64,
    pub(super) copper_t: f64,
    pub(super) energy_kgce: f64,
}

impl SmelterAcc {
    pub(super) fn add(&mut self, o: &SmelterAcc) {
        self.concentrate_t += o.concentrate_t;
        self.oxygen_nm3 += o.oxygen_nm3;
        self.inlet_so2_kg += o.inlet_so2_kg;
        self.stack_so2_kg += o.stack_so2_kg;
        self.copper_t += o.copper_t;
        self.energy_kgce += o.energy_kgce;
    }

    /// Integrate `r` over `h` hours.
    pub(super) fn integrate(&mut self, r: &SmelterRates, h: f64) {
        self.concentrate_t += r.feed_tph.unwrap_or(0.0) * h;
        self.oxygen_nm3 += r.oxygen_nm3_h.unwrap_or(0.0) * h;
        if let (Some(i), Some(o)) = (r.inlet_so2_kg_h, r.stack_so2_kg_h) {
            self.inlet_so2_kg += i * h;
            self.stack_so2_kg += o * h;
        }
        self.copper_t += r.copper_tph.unwrap_or(0.0) * h;
        self.energy_kgce += r.energy_kgce_h.unwrap_or(0.0) * h;
    }
}

/// One smelter's open state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct SmelterState {
    pub(super) last_ts: Option<Timestamp>,
    pub(super) rates: SmelterRates,
    pub(super) minute: Option<Timestamp>,
    pub(super) day: Option<i64>,
    pub(super) today: SmelterAcc,
    pub(super) month: SmelterAcc,
}

/// One smelter's snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SmelterSnapshot {
    pub(super) name: String,
    pub(super) state: SmelterState,
}
