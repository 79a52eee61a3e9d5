//! One potline inside the calculator stage: its rectifier, pots and auxiliary meters in; minute,
//! day and month figures, anode-effect and meter events out.
//!
//! Decisions that make a day's regulated figures true on a real day:
//! - **Production and energy cover the same span.** Charge (Σ I·Δt·N) is integrated on each line
//!   current sample. An interval longer than `max_gap` is a gap in the current (a lost rectifier
//!   link while the line runs): up to `max_bridge` it is bridged with the mean of the current
//!   before and after, corrected by the DC energy meter's delta over the gap when the meter's
//!   next reading covers it (`gap_bridge = "dc_meter"`; `"interpolate"` keeps the mean), counted
//!   in `line_current_bridged_s`, and every figure that depends on production is flagged
//!   `substituted`. A longer gap (or
//!   `gap_bridge = "none"`) is not bridged: the counter deltas that span it are left out of
//!   energy too (so a full-span energy is never divided by a part-span production), the span is
//!   counted in `line_current_unbridged_s`, and the per-tonne figures are flagged `stale`.
//!   A gap that ends after midnight lands, with the counter deltas that cover it, in the day the
//!   link came back.
//! - **DC consumption uses the average voltage** (平均电压: cell voltage plus the bus share,
//!   `bus_share_v`), not the working voltage alone; the DC meter's own figure and the
//!   rectifier efficiency (DC meter / AC meter) are reported beside it.
//! - **The tariff is assessed on 铝液综合交流电耗** (rectifier plus auxiliaries, without
//!   desulphurisation): configured auxiliary meters make `comprehensive_ac_kwh_per_t`, which
//!   feeds the surcharge; without them the surcharge says `basis = "rectifier_ac_only"`.
//! - **Measured metal, where it is weighed.** With a tapped-metal counter, production is
//!   k·Q × the current efficiency from tapping over the trailing `ce_window` (tap to tap, so a
//!   tap that moves across midnight does not swing a day), label `production = "measured"`;
//!   the Faraday figure with the configured efficiency is kept as `production_faraday_t`.
//!   Without one, production is Faraday's with the configured efficiency, label
//!   `production = "faraday"`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Pipeline, lookup};
use crate::calc::anode_effect::AeParams;
use crate::calc::coefficients::{Coefficients, GradeTable, GwpTable, PfcTable};
use crate::calc::counter::{CounterState, EnergyCounter};
use crate::calc::potline::Metal;
use crate::calc::snapshot::{CellState, LineSnapshot, PeriodAcc};
use crate::calc::units::UnitCheck;
use crate::calc::{AuxiliaryMeter, CalcError, GapBridge, PotlineRole, glob_match};
use crate::model::{ReadingBatch, Record, Timestamp};

mod figures;
mod inputs;

/// What the line's figures need from the stage around it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ctx<'a> {
    pub(super) coef: &'a Coefficients,
    pub(super) gwp: &'a GwpTable,
    pub(super) grid_t_per_mwh: f64,
    pub(super) offset_ms: i64,
}

/// A point of the tapping record: cumulative theoretical metal (k·Q) and cumulative metal
/// tapped (plus the metal-pad inventory, when measured) at a tap. One point per hour is kept.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct TapPoint {
    pub(super) ts: Timestamp,
    pub(super) theoretical_kg: f64,
    pub(super) metal_kg: f64,
}

/// The open state of a line that is not a period figure, kept across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(in crate::calc) struct LineExtra {
    /// Σ (V + bus share) × Δt of in-service cells while the line current was older than
    /// `max_gap`, V·h: the DC energy of a gap is corrected with it once the gap is bridged.
    pub(super) gap_v_h: f64,
    /// The latest span of line current that was not bridged.
    pub(super) unbridged: Option<(Timestamp, Timestamp)>,
    /// Cumulative theoretical metal since the start, kg.
    pub(super) theoretical_kg: f64,
    /// Cumulative metal tapped since the start, kg.
    pub(super) tapped_kg: f64,
    /// Latest metal-pad inventory reading, kg.
    pub(super) inventory_kg: Option<f64>,
    /// Tapping record over the trailing `ce_window`.
    pub(super) taps: VecDeque<TapPoint>,
    /// Auxiliary meter counters: (meter index, device, state).
    pub(super) aux: Vec<(usize, Arc<str>, CounterState)>,
    /// Time of the first reading: a month or year that began before it is measured against
    /// the days it covers.
    pub(super) first_ts: Option<Timestamp>,
    /// Σ line current × time since the start (not × cells), kA·h, bridged gaps included.
    #[serde(default)]
    pub(super) line_ka_h: f64,
    /// `line_ka_h` at the DC meter's last reading.
    #[serde(default)]
    pub(super) line_ka_h_at_dc: Option<f64>,
    /// DC meter energy and line charge (kWh, kA·h) over its recent intervals without a gap,
    /// each weighted down by e^(−age/1 h): their ratio is the line voltage at the meter (V),
    /// over long enough a span that the counter's resolution does not matter.
    #[serde(default)]
    pub(super) dc_meter_recent: (f64, f64),
    /// The latest span of line current that was bridged.
    #[serde(default)]
    pub(super) bridged: Option<(Timestamp, Timestamp)>,
    /// A gap bridged by interpolation that the DC meter's next reading will correct.
    #[serde(default)]
    pub(super) pending_bridge: Option<PendingBridge>,
}

/// A gap in the line current bridged provisionally (`gap_bridge = "dc_meter"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct PendingBridge {
    pub(super) from: Timestamp,
    pub(super) to: Timestamp,
    /// The interpolated current it was bridged with, kA.
    pub(super) ka: f64,
    /// Cells in service over it.
    pub(super) cells: f64,
    /// Σ (V + bus share) × Δt of the cells over it, V·h.
    pub(super) v_h: f64,
}

#[derive(Debug)]
pub(super) struct Line {
    pub(super) role: PotlineRole,
    pub(super) name: Arc<str>,
    metal: Metal,
    pfc: PfcTable,
    grade: GradeTable,
    comprehensive_grade: GradeTable,
    ae: AeParams,
    max_gap_ms: i64,
    gap_bridge: GapBridge,
    max_bridge_ms: i64,
    ce_window_ms: i64,
    in_service_default: bool,
    cells: HashMap<Arc<str>, CellState>,
    current: Option<(Timestamp, f64)>,
    dc_counter: EnergyCounter,
    ac_counter: EnergyCounter,
    tap_counter: EnergyCounter,
    aux_counters: HashMap<(usize, Arc<str>), EnergyCounter>,
    extra: LineExtra,
    /// Converts its inputs' units, and reports each point whose unit cannot be converted.
    units: UnitCheck,
    /// Local day and minute currently open.
    day: Option<i64>,
    minute: Option<Timestamp>,
    today: PeriodAcc,
    month: PeriodAcc,
    month_days: u32,
    year: PeriodAcc,
    year_days: u32,
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Line {
    /// The line of `potlines[i]`, checked against the coefficient table.
    pub(super) fn new(
        i: usize,
        role: &PotlineRole,
        coef: &Coefficients,
    ) -> Result<Self, CalcError> {
        let v = &coef.version;
        let key = |k: &str| format!("potlines[{i}].{k}");
        let invalid = |k: &str, message: String| CalcError::Invalid {
            key: key(k),
            message,
        };
        let metal = Metal::from(lookup(&coef.metals, &key("metal"), &role.metal, v)?);
        let pfc = lookup(&coef.pfc, &key("technology"), &role.technology, v)?.clone();
        let grade = lookup(&coef.grades, &key("ac_grade"), &role.ac_grade, v)?.clone();
        let comprehensive_grade = lookup(
            &coef.grades,
            &key("comprehensive_ac_grade"),
            &role.comprehensive_ac_grade,
            v,
        )?
        .clone();
        check_role(role, invalid)?;
        let mut ae = AeParams::from(&coef.anode_effect);
        ae.threshold_v = role.ae_threshold_v.unwrap_or(ae.threshold_v);
        ae.min_duration_s = role.ae_min_duration_s.unwrap_or(ae.min_duration_s);
        ae.hysteresis_v = role.ae_hysteresis_v.unwrap_or(ae.hysteresis_v);
        Ok(Line {
            name: Arc::from(role.name.as_str()),
            metal,
            pfc,
            grade,
            comprehensive_grade,
            ae,
            max_gap_ms: ms(role.max_gap),
            gap_bridge: role.gap_bridge.unwrap_or(coef.potline.gap_bridge),
            max_bridge_ms: ms(role.max_bridge.unwrap_or(coef.potline.max_bridge)),
            ce_window_ms: ms(role.ce_window.unwrap_or(coef.potline.ce_window)),
            in_service_default: role
                .in_service_default
                .unwrap_or(coef.potline.in_service_default),
            cells: HashMap::new(),
            current: None,
            dc_counter: counter_of(role, Counter::Dc),
            ac_counter: counter_of(role, Counter::Ac),
            tap_counter: counter_of(role, Counter::Tap),
            aux_counters: HashMap::new(),
            extra: LineExtra::default(),
            units: UnitCheck::default(),
            day: None,
            minute: None,
            today: PeriodAcc::default(),
            month: PeriodAcc::default(),
            month_days: 0,
            year: PeriodAcc::default(),
            year_days: 0,
            role: role.clone(),
        })
    }

    /// Whether the batch's device is one of this line's auxiliary meters.
    pub(super) fn has_auxiliary(&self, full: &str, device: &str) -> bool {
        self.role
            .auxiliary_meters
            .iter()
            .any(|m| glob_match(&m.device, full) || glob_match(&m.device, device))
    }

    pub(super) fn snapshot(&self) -> LineSnapshot {
        let mut cells: Vec<_> = self
            .cells
            .iter()
            .map(|(d, c)| (d.clone(), c.clone()))
            .collect();
        cells.sort_by(|a, b| a.0.cmp(&b.0));
        let mut extra = self.extra.clone();
        extra.aux = self
            .aux_counters
            .iter()
            .map(|((j, d), c)| (*j, d.clone(), c.state()))
            .collect();
        extra.aux.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        LineSnapshot {
            name: self.role.name.clone(),
            cells,
            current: self.current,
            dc_counter: self.dc_counter.state(),
            ac_counter: self.ac_counter.state(),
            tap_counter: self.tap_counter.state(),
            dc_counter_raw: None,
            ac_counter_raw: None,
            tap_counter_raw: None,
            extra,
            day: self.day,
            minute: self.minute,
            today: self.today,
            month: self.month,
            month_days: self.month_days,
            year: self.year,
            year_days: self.year_days,
        }
    }

    /// Resume from a snapshot; `latest` is the snapshot's latest time (the time of counters
    /// that older snapshots kept without one).
    pub(super) fn restore(&mut self, ls: LineSnapshot, latest: Option<Timestamp>) {
        self.cells = ls.cells.into_iter().collect();
        self.current = ls.current;
        let at = latest.unwrap_or(Timestamp(0));
        let state = |st: CounterState, raw: Option<u64>| match (st.last, raw) {
            (None, Some(r)) => CounterState {
                last: Some((r, at)),
                pending: None,
            },
            _ => st,
        };
        self.dc_counter =
            counter_of(&self.role, Counter::Dc).with_state(state(ls.dc_counter, ls.dc_counter_raw));
        self.ac_counter =
            counter_of(&self.role, Counter::Ac).with_state(state(ls.ac_counter, ls.ac_counter_raw));
        self.tap_counter = counter_of(&self.role, Counter::Tap)
            .with_state(state(ls.tap_counter, ls.tap_counter_raw));
        self.aux_counters = ls
            .extra
            .aux
            .iter()
            .filter_map(|(j, d, st)| {
                let m = self.role.auxiliary_meters.get(*j)?;
                Some(((*j, d.clone()), aux_counter(&self.role, m).with_state(*st)))
            })
            .collect();
        self.extra = ls.extra;
        self.extra.aux.clear();
        self.day = ls.day;
        self.minute = ls.minute;
        self.today = ls.today;
        self.month = ls.month;
        self.month_days = ls.month_days;
        self.year = ls.year;
        self.year_days = ls.year_days;
    }
}

impl Pipeline {
    pub(super) fn line_clock(&mut self, i: usize, ts: Timestamp, out: &mut Vec<Record>) {
        let (lines, ctx) = self.split_lines();
        lines[i].clock(&ctx, ts, out);
    }

    pub(super) fn rectifier(&mut self, i: usize, batch: &ReadingBatch, out: &mut Vec<Record>) {
        let (lines, ctx) = self.split_lines();
        lines[i].rectifier(&ctx, batch, out);
    }

    pub(super) fn pot(&mut self, i: usize, batch: &ReadingBatch, out: &mut Vec<Record>) {
        let (lines, ctx) = self.split_lines();
        lines[i].pot(&ctx, batch, out);
    }

    pub(super) fn auxiliary(&mut self, i: usize, batch: &ReadingBatch, out: &mut Vec<Record>) {
        if let Some(ts) = batch.readings.iter().map(|r| r.ts).max() {
            self.line_clock(i, ts, out);
        }
        self.lines[i].auxiliary(batch, out);
    }

    /// The lines, mutably, beside the context their figures read.
    fn split_lines(&mut self) -> (&mut [Line], Ctx<'_>) {
        let ctx = Ctx {
            coef: &self.coef,
            gwp: &self.gwp,
            grid_t_per_mwh: self.grid_t_per_mwh,
            offset_ms: self.offset_ms,
        };
        (&mut self.lines, ctx)
    }
}

/// The ranges of a potline's own settings (those the coefficient table does not check); the
/// error is made by `invalid` from the key and the message.
fn check_role(
    role: &PotlineRole,
    invalid: impl Fn(&str, String) -> CalcError,
) -> Result<(), CalcError> {
    if !(role.current_efficiency > 0.0 && role.current_efficiency <= 1.0) {
        return Err(invalid(
            "current_efficiency",
            format!("{} is not in (0, 1]", role.current_efficiency),
        ));
    }
    if ![16, 32, 64].contains(&role.counter_bits) {
        return Err(invalid(
            "counter_bits",
            format!("{} is not 16, 32 or 64", role.counter_bits),
        ));
    }
    if !(role.bus_share_v.is_finite() && (0.0..5.0).contains(&role.bus_share_v)) {
        return Err(invalid(
            "bus_share_v",
            format!("{} V is not between 0 and 5", role.bus_share_v),
        ));
    }
    for (k, v, range) in [
        ("anode_nac_t_per_t", role.anode_nac_t_per_t, 0.0..2.0),
        ("anode_sulphur_pct", role.anode_sulphur_pct, 0.0..100.0),
        ("anode_ash_pct", role.anode_ash_pct, 0.0..100.0),
    ] {
        if let Some(v) = v
            && !(v.is_finite() && range.contains(&v))
        {
            return Err(invalid(
                k,
                format!("{v} is not in {}..{}", range.start, range.end),
            ));
        }
    }
    check_wrap(role.counter_wraps_at, role.counter_bits)
        .map_err(|e| invalid("counter_wraps_at", e.to_string()))?;
    for (j, m) in role.auxiliary_meters.iter().enumerate() {
        if let Some(bits) = m.counter_bits
            && ![16, 32, 64].contains(&bits)
        {
            return Err(invalid(
                &format!("auxiliary_meters[{j}].counter_bits"),
                format!("{bits} is not 16, 32 or 64"),
            ));
        }
        let key = format!("auxiliary_meters[{j}].counter_wraps_at");
        let bits = m.counter_bits.unwrap_or(role.counter_bits);
        check_wrap(m.counter_wraps_at, bits).map_err(|e| invalid(&key, e.to_string()))?;
    }
    Ok(())
}

/// The counters of a line.
#[derive(Debug, Clone, Copy)]
enum Counter {
    Dc,
    Ac,
    Tap,
}

/// A `counter_wraps_at` below 2 or beyond what a register of `bits` holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{wraps_at} is not between 2 and 2^{bits}, the register's range")]
struct WrapOutOfRange {
    wraps_at: u64,
    bits: u8,
}

/// A `counter_wraps_at` must be at least 2 and fit the register's width.
fn check_wrap(wraps_at: Option<u64>, bits: u8) -> Result<(), WrapOutOfRange> {
    match wraps_at {
        Some(w) if w < 2 || (bits < 64 && u128::from(w) > 1u128 << bits) => {
            Err(WrapOutOfRange { wraps_at: w, bits })
        }
        _ => Ok(()),
    }
}

/// A counter of `role` with its width, wrap value, ratio and plausible rate.
fn counter_of(role: &PotlineRole, which: Counter) -> EnergyCounter {
    let (ratio, rate) = match which {
        Counter::Dc => (role.counter_ratio, role.dc_meter_rated_kw),
        Counter::Ac => (role.counter_ratio, role.ac_meter_rated_kw),
        Counter::Tap => (1.0, role.tapped_metal_max_kg_per_h),
    };
    let mut c = EnergyCounter::new(role.counter_bits, ratio);
    if let (Some(w), false) = (role.counter_wraps_at, matches!(which, Counter::Tap)) {
        c = c.with_wrap_at(w);
    }
    match rate {
        Some(r) => c.with_max_rate_per_h(r),
        None => c,
    }
}

fn aux_counter(role: &PotlineRole, m: &AuxiliaryMeter) -> EnergyCounter {
    let mut c = EnergyCounter::new(m.counter_bits.unwrap_or(role.counter_bits), m.counter_ratio);
    if let Some(w) = m.counter_wraps_at.or(role.counter_wraps_at) {
        c = c.with_wrap_at(w);
    }
    match m.rated_kw {
        Some(r) => c.with_max_rate_per_h(r),
        None => c,
    }
}

#[cfg(test)]
mod tests {
    use super::check_wrap;

    #[test]
    fn a_wrap_value_fits_the_register_width() {
        assert_eq!(check_wrap(None, 16), Ok(()));
        assert_eq!(check_wrap(Some(2), 16), Ok(()));
        assert_eq!(check_wrap(Some(65_536), 16), Ok(()));
        assert_eq!(
            check_wrap(Some(65_537), 16).map_err(|e| e.to_string()),
            Err("65537 is not between 2 and 2^16, the register's range".to_string())
        );
        assert_eq!(
            check_wrap(Some(1), 32).map_err(|e| e.to_string()),
            Err("1 is not between 2 and 2^32, the register's range".to_string())
        );
        assert_eq!(check_wrap(Some(u64::MAX), 64), Ok(()));
    }
}
