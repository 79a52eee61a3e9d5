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

use super::anode_effect::{AeDetector, AeParams, AeTransition, event_of};
use super::coefficients::{Coefficients, GradeTable, GwpTable, PfcTable};
use super::counter::{CounterDelta, CounterState, CounterStep, EnergyCounter};
use super::emissions::{anode_co2_factor, electricity_co2_t, kgce, pfc_slope};
use super::limits::grade;
use super::names;
use super::pipeline::{lookup, metric, num, raw_u64};
use super::potline::{
    Metal, capacity_utilisation, pseudo_resistance_uohm, specific_energy_kwh_per_t,
};
use super::snapshot::{CellState, LineSnapshot, PeriodAcc};
use super::time::{DAY_MS, MINUTE_MS, civil, days_from_civil, floor, local_day};
use super::units::UnitCheck;
use super::{
    AnodeCo2Method, AuxiliaryMeter, CalcError, GapBridge, PotlineRole, glob_match, tariff,
};
use crate::model::{
    Event, EventKind, EventPhase, Metric, MetricBatch, Quality, Reading, ReadingBatch, Record,
    Timestamp, Value,
};

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
pub(super) struct LineExtra {
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
            .map_err(|m| invalid("counter_wraps_at", m))?;
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
            check_wrap(m.counter_wraps_at, bits).map_err(|msg| invalid(&key, msg))?;
        }
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

    /// Anode CO2 of `prod_t` tonnes, t, and what it rests on: `tier1`, `measured` (every
    /// Tier 2 input measured), `partly_measured` or `default`.
    fn anode_co2(&self, ctx: &Ctx<'_>, prod_t: f64) -> (f64, &'static str) {
        let t = &ctx.coef.anode;
        if self.role.anode_co2_method == AnodeCo2Method::Tier1 {
            return (t.tier1_t_co2_per_t * prod_t, "tier1");
        }
        let r = &self.role;
        let given = [r.anode_nac_t_per_t, r.anode_sulphur_pct, r.anode_ash_pct];
        let n = given.iter().filter(|v| v.is_some()).count();
        let factor = anode_co2_factor(
            r.anode_nac_t_per_t.unwrap_or(t.nac_t_per_t),
            r.anode_sulphur_pct.unwrap_or(t.sulphur_pct),
            r.anode_ash_pct.unwrap_or(t.ash_pct),
        );
        let basis = match n {
            0 => "default",
            3 => "measured",
            _ => "partly_measured",
        };
        (factor * prod_t, basis)
    }

    /// Days from `start` (or the first reading, if later) to `end`.
    fn days_covered(&self, start: Timestamp, end: Timestamp) -> f64 {
        let from = self.extra.first_ts.map_or(start, |f| f.max(start));
        (end.0 - from.0).max(0) as f64 / DAY_MS as f64
    }

    fn in_service(&self) -> f64 {
        self.cells.values().filter(|c| c.in_service).count() as f64
    }

    /// Close the minute and the day that `ts` has passed.
    pub(super) fn clock(&mut self, ctx: &Ctx<'_>, ts: Timestamp, out: &mut Vec<Record>) {
        self.extra.first_ts.get_or_insert(ts);
        let minute = floor(ts, MINUTE_MS, ctx.offset_ms);
        let day = local_day(ts, ctx.offset_ms);
        if let Some(m) = self.minute
            && minute > m
        {
            out.push(Record::Metrics(
                self.minute_metrics(ctx, Timestamp(m.0 + MINUTE_MS)),
            ));
        }
        if self.minute.is_none_or(|m| minute > m) {
            self.minute = Some(minute);
        }
        match self.day {
            None => self.day = Some(day),
            Some(d) if day > d => {
                self.close_day(ctx, d, out);
                self.day = Some(day);
            }
            _ => {}
        }
    }

    /// Add charge for `h` hours at `ka` with the cells in service now.
    fn add_charge(&mut self, ka: f64, h: f64) {
        let n = self.in_service();
        self.today.charge_ka_h += ka * h * n;
        self.today.ae.cell_days += n * h / 24.0;
        self.extra.theoretical_kg += self.metal.kg_per_ka_h() * ka * h * n;
        self.extra.line_ka_h += ka * h;
    }

    /// A DC meter delta over (`prev`, `ts`]: learn the line voltage from an interval without a
    /// gap, or correct the pending bridge with the current the energy implies over one that
    /// covers it. The interval of the first reading after a link cut is the gap plus at most a
    /// poll interval at each end, so its mean current stands for the gap's.
    fn dc_meter_interval(&mut self, prev: Option<Timestamp>, ts: Timestamp, kwh: f64) {
        let before = self.extra.line_ka_h_at_dc.replace(self.extra.line_ka_h);
        let (Some(prev), Some(before)) = (prev, before) else {
            return;
        };
        let ka_h = self.extra.line_ka_h - before;
        let overlaps = |(g0, g1): (Timestamp, Timestamp)| prev < g1 && ts > g0;
        match self.extra.pending_bridge {
            Some(b) if prev <= b.from && ts >= b.to => {
                self.extra.pending_bridge = None;
                let (e, q) = self.extra.dc_meter_recent;
                if !(e > 0.0 && q > 0.0) {
                    return;
                }
                let u_v = e / q;
                let gap_h = (b.to.0 - b.from.0) as f64 / 3_600_000.0;
                // the charge the energy implies, less what the provisional bridge counted
                let delta_ka_h = kwh / u_v - ka_h;
                let delta_ka = (delta_ka_h / gap_h).max(-b.ka);
                let dq = delta_ka * gap_h;
                self.today.charge_ka_h += dq * b.cells;
                self.extra.theoretical_kg += self.metal.kg_per_ka_h() * dq * b.cells;
                self.extra.line_ka_h += dq;
                if let Some(at) = self.extra.line_ka_h_at_dc.as_mut() {
                    *at += dq;
                }
                self.today.dc_kwh += delta_ka * b.v_h;
            }
            // a meter read during the gap (through another link) cannot cover it: the bridge
            // stays interpolated
            Some(b) if prev > b.from => self.extra.pending_bridge = None,
            Some(_) => {}
            None if self.extra.bridged.is_some_and(overlaps) => {}
            None => {
                if ka_h > 0.0 && kwh >= 0.0 {
                    let w = (-((ts.0 - prev.0) as f64) / 3_600_000.0).exp();
                    let (e, q) = self.extra.dc_meter_recent;
                    self.extra.dc_meter_recent = (e * w + kwh, q * w + ka_h);
                }
            }
        }
    }

    fn line_current(&mut self, r: &Reading, ka: f64, out: &mut Vec<Record>) {
        if let Some((t0, ka0)) = self.current {
            let dt = r.ts.0 - t0.0;
            let h = dt as f64 / 3_600_000.0;
            if dt > 0 && dt <= self.max_gap_ms {
                self.add_charge(ka0, h);
            } else if dt > 0 && self.gap_bridge != GapBridge::None && dt <= self.max_bridge_ms {
                let bridge_ka = (ka0 + ka) / 2.0;
                self.add_charge(bridge_ka, h);
                // the pots integrated DC energy with the current held at ka0 during the gap
                self.today.dc_kwh += (bridge_ka - ka0) * self.extra.gap_v_h;
                self.extra.bridged = Some((t0, r.ts));
                if self.gap_bridge == GapBridge::DcMeter {
                    self.extra.pending_bridge = Some(PendingBridge {
                        from: t0,
                        to: r.ts,
                        ka: bridge_ka,
                        cells: self.in_service(),
                        v_h: self.extra.gap_v_h,
                    });
                }
                self.today.bridged_s += dt as f64 / 1000.0;
                out.push(Record::Event(gap_event(
                    &self.name, t0, r.ts, bridge_ka, true,
                )));
            } else if dt > 0 {
                self.today.dc_kwh -= ka0 * self.extra.gap_v_h;
                self.today.unbridged_s += dt as f64 / 1000.0;
                self.extra.unbridged = Some((t0, r.ts));
                out.push(Record::Event(gap_event(&self.name, t0, r.ts, ka0, false)));
            }
        }
        self.extra.gap_v_h = 0.0;
        self.current = Some((r.ts, ka));
    }

    /// Whether the counter interval ending at `ts` and starting at `prev` spans the latest
    /// span of line current that was not bridged.
    fn spans_unbridged(&self, prev: Option<Timestamp>, ts: Timestamp) -> bool {
        spans(prev, ts, self.extra.unbridged)
    }

    /// One poll of the rectifier (and of any auxiliary meter it carries).
    pub(super) fn rectifier(&mut self, ctx: &Ctx<'_>, batch: &ReadingBatch, out: &mut Vec<Record>) {
        let Some(ts) = batch.readings.iter().map(|r| r.ts).max() else {
            return;
        };
        self.clock(ctx, ts, out);
        // the line current first, so that a gap it closes is known to the counters read with it
        let current_point = self.role.line_current_point.clone();
        let is_current = |r: &&Reading| *r.point == *current_point;
        let current_first = batch
            .readings
            .iter()
            .filter(is_current)
            .chain(batch.readings.iter().filter(|r| !is_current(r)));
        for r in current_first {
            if !r.quality.is_good() {
                continue;
            }
            if *r.point == *self.role.line_current_point {
                let Some(f) = self.unit_factor(batch, r, "kA", out) else {
                    continue;
                };
                if let Some(ka) = num(r) {
                    self.line_current(r, ka * f, out);
                }
            } else if self.role.tapped_metal_kg_point.as_deref() == Some(&*r.point) {
                let Some(f) = self.unit_factor(batch, r, "kg", out) else {
                    continue;
                };
                let Some(raw) = raw_u64(r) else { continue };
                let d = self.tap_counter.update(raw, r.ts);
                counter_anomaly(&mut self.today, batch, r, &d, out);
                let kg = d.delta * f;
                self.today.tapped_kg += kg;
                if kg > 0.0 {
                    self.extra.tapped_kg += kg;
                    self.record_tap(r.ts);
                }
            } else if self.role.metal_inventory_kg_point.as_deref() == Some(&*r.point) {
                let Some(f) = self.unit_factor(batch, r, "kg", out) else {
                    continue;
                };
                self.extra.inventory_kg = num(r).map(|v| v * f).or(self.extra.inventory_kg);
            } else if *r.point == *self.role.dc_energy_point
                || *r.point == *self.role.ac_energy_point
            {
                let Some(f) = self.unit_factor(batch, r, "kWh", out) else {
                    continue;
                };
                let Some(raw) = raw_u64(r) else { continue };
                let dc = *r.point == *self.role.dc_energy_point;
                let counter = if dc {
                    &mut self.dc_counter
                } else {
                    &mut self.ac_counter
                };
                let prev = counter.state().last.map(|(_, t)| t);
                let d = counter.update(raw, r.ts);
                counter_anomaly(&mut self.today, batch, r, &d, out);
                let kwh = d.delta * f;
                let excluded = self.spans_unbridged(prev, r.ts);
                if dc
                    && !excluded
                    && matches!(
                        d.step,
                        CounterStep::Normal | CounterStep::Rollover | CounterStep::Glitch
                    )
                {
                    self.dc_meter_interval(prev, r.ts, kwh);
                }
                match (dc, excluded) {
                    (_, true) => self.today.excluded_kwh += kwh,
                    (true, false) => self.today.dc_meter_kwh += kwh,
                    (false, false) => self.today.ac_kwh += kwh,
                }
            }
        }
        self.auxiliary(batch, out);
    }

    /// The factor that turns `r` into `expected` units, or `None` (reported once per point)
    /// when its unit cannot be.
    fn unit_factor(
        &mut self,
        batch: &ReadingBatch,
        r: &Reading,
        expected: &str,
        out: &mut Vec<Record>,
    ) -> Option<f64> {
        self.units.factor(batch, r, expected, out)
    }

    /// The auxiliary meters' counters in `batch` (a device of their own, or the rectifier's).
    pub(super) fn auxiliary(&mut self, batch: &ReadingBatch, out: &mut Vec<Record>) {
        if self.role.auxiliary_meters.is_empty() {
            return;
        }
        let full = format!("{}/{}", batch.source, batch.device);
        for (j, m) in self.role.auxiliary_meters.iter().enumerate() {
            if !(glob_match(&m.device, &full) || glob_match(&m.device, &batch.device)) {
                continue;
            }
            let Some(r) = batch
                .readings
                .iter()
                .find(|r| *r.point == *m.point && r.quality.is_good())
            else {
                continue;
            };
            let Some(f) = self.units.factor(batch, r, "kWh", out) else {
                continue;
            };
            let Some(raw) = raw_u64(r) else { continue };
            let role = &self.role;
            let c = self
                .aux_counters
                .entry((j, batch.device.clone()))
                .or_insert_with(|| aux_counter(role, m));
            let prev = c.state().last.map(|(_, t)| t);
            let mut d = c.update(raw, r.ts);
            d.delta *= f;
            counter_anomaly(&mut self.today, batch, r, &d, out);
            if spans(prev, r.ts, self.extra.unbridged) {
                self.today.excluded_kwh += d.delta;
            } else {
                self.today.aux_kwh += d.delta;
            }
        }
    }

    /// Keep one tapping point per hour over the trailing window.
    fn record_tap(&mut self, ts: Timestamp) {
        let p = TapPoint {
            ts,
            theoretical_kg: self.extra.theoretical_kg,
            metal_kg: self.extra.tapped_kg + self.extra.inventory_kg.unwrap_or(0.0),
        };
        let taps = &mut self.extra.taps;
        let same_hour = taps.len() > 1
            && taps
                .back()
                .is_some_and(|last| last.ts.0 / 3_600_000 == ts.0 / 3_600_000);
        if same_hour {
            taps.pop_back();
        }
        taps.push_back(p);
        while taps.len() > 2
            && taps
                .front()
                .is_some_and(|f| ts.0 - f.ts.0 > self.ce_window_ms)
        {
            taps.pop_front();
        }
    }

    /// Current efficiency from tapping over the trailing window (tap to tap), 0–1.
    fn measured_ce(&self) -> Option<f64> {
        self.role.tapped_metal_kg_point.as_ref()?;
        let (first, last) = (self.extra.taps.front()?, self.extra.taps.back()?);
        let theoretical = last.theoretical_kg - first.theoretical_kg;
        let ce = (last.metal_kg - first.metal_kg) / theoretical;
        (theoretical > 0.0 && ce.is_finite() && ce > 0.0).then_some(ce)
    }

    /// Production of a period, t, and whether it is measured.
    fn production_t(&self, charge_ka_h: f64) -> (f64, bool) {
        match self.measured_ce() {
            Some(ce) => (
                self.metal.produced_from_charge_kg(charge_ka_h, ce) / 1000.0,
                true,
            ),
            None => (self.faraday_t(charge_ka_h), false),
        }
    }

    fn faraday_t(&self, charge_ka_h: f64) -> f64 {
        self.metal
            .produced_from_charge_kg(charge_ka_h, self.role.current_efficiency)
            / 1000.0
    }

    /// One poll of a pot control unit.
    pub(super) fn pot(&mut self, ctx: &Ctx<'_>, batch: &ReadingBatch, out: &mut Vec<Record>) {
        let Some(ts) = batch.readings.iter().map(|r| r.ts).max() else {
            return;
        };
        self.clock(ctx, ts, out);
        let find = |p: &str| batch.readings.iter().find(|r| *r.point == *p);
        let flag = |p: &str| {
            find(p)
                .filter(|r| r.quality.is_good())
                .and_then(num)
                .map(|v| v != 0.0)
        };
        let in_service = flag(&self.role.in_service_point);
        let cut_out = flag(&self.role.cut_out_point);
        let voltage = match find(&self.role.cell_voltage_point).filter(|r| r.quality.is_good()) {
            Some(vr) => self
                .unit_factor(batch, vr, "V", out)
                .and_then(|f| num(vr).map(|v| (vr.ts, v * f))),
            None => None,
        };
        let name = self.name.clone();
        let in_service_default = self.in_service_default;
        let cell = self
            .cells
            .entry(batch.device.clone())
            .or_insert_with(|| CellState {
                subject: Arc::from(format!("{name}/{}", batch.device)),
                detector: AeDetector::default(),
                in_service: in_service_default,
                last_ts: None,
                minute_v_sum: 0.0,
                minute_v_n: 0,
            });
        if in_service.is_some() || cut_out.is_some() {
            cell.in_service = in_service.unwrap_or(true) && !cut_out.unwrap_or(false);
        }
        let Some((v_ts, v)) = voltage else {
            return;
        };
        if let (Some(t0), Some((t_ka, ka))) = (cell.last_ts, self.current)
            && cell.in_service
        {
            let dt = v_ts.0 - t0.0;
            if dt > 0 && dt <= self.max_gap_ms {
                let v_h = (v + self.role.bus_share_v) * dt as f64 / 3_600_000.0;
                self.today.dc_kwh += v_h * ka;
                if v_ts.0 - t_ka.0 > self.max_gap_ms {
                    self.extra.gap_v_h += v_h;
                }
            }
        }
        cell.last_ts = Some(v_ts);
        if cell.in_service {
            cell.minute_v_sum += v;
            cell.minute_v_n += 1;
        }
        if let Some(t) = cell.detector.update(&self.ae, v_ts, v, cell.in_service) {
            if let AeTransition::Ended(ae) = t {
                self.today.ae.count += 1;
                self.today.ae.minutes += ae.duration_s() / 60.0;
            }
            out.push(Record::Event(event_of(&cell.subject, &t)));
        }
    }

    fn minute_metrics(&mut self, ctx: &Ctx<'_>, end: Timestamp) -> MetricBatch {
        let e0 = ctx.coef.potline.e0_v;
        let labels = vec![(Arc::from("line"), self.name.clone())];
        let ka = self.current.map(|(_, ka)| ka);
        let in_service = self.in_service();
        let (prod_t, _) = self.production_t(self.today.charge_ka_h);
        let mut metrics = vec![
            metric(names::LINE_CURRENT_KA, ka, "kA", end, &labels),
            metric(names::CELLS_IN_SERVICE, Some(in_service), "", end, &labels),
            metric(names::PRODUCTION_TODAY_T, Some(prod_t), "t", end, &labels),
            metric(
                names::DC_KWH_PER_T_TODAY,
                specific_energy_kwh_per_t(self.today.dc_kwh, prod_t),
                "kWh/t",
                end,
                &labels,
            ),
            metric(
                names::AC_KWH_PER_T_TODAY,
                specific_energy_kwh_per_t(self.today.ac_kwh, prod_t),
                "kWh/t",
                end,
                &labels,
            ),
        ];
        if !self.role.auxiliary_meters.is_empty() {
            metrics.push(metric(
                "comprehensive_ac_kwh_per_t_today",
                specific_energy_kwh_per_t(self.today.ac_kwh + self.today.aux_kwh, prod_t),
                "kWh/t",
                end,
                &labels,
            ));
        }
        let quality = self.today.quality();
        for m in metrics.iter_mut().skip(2) {
            downgrade(m, quality);
        }
        let name = self.name.clone();
        let mut cells: Vec<_> = self.cells.values_mut().collect();
        cells.sort_by(|a, b| a.subject.cmp(&b.subject));
        for c in cells {
            if c.minute_v_n == 0 {
                continue;
            }
            let v = c.minute_v_sum / f64::from(c.minute_v_n);
            c.minute_v_sum = 0.0;
            c.minute_v_n = 0;
            let l = vec![
                (Arc::from("line"), name.clone()),
                (Arc::from("cell"), c.subject.clone()),
            ];
            metrics.push(metric("cell_voltage_avg_v", Some(v), "V", end, &l));
            let r = ka.and_then(|ka| pseudo_resistance_uohm(v, e0, ka));
            metrics.push(metric("pseudo_resistance_uohm", r, "uohm", end, &l));
        }
        MetricBatch {
            calc: Arc::from(names::POTLINE),
            ts: end,
            metrics,
        }
    }

    fn close_day(&mut self, ctx: &Ctx<'_>, day: i64, out: &mut Vec<Record>) {
        let end = Timestamp((day + 1) * DAY_MS - ctx.offset_ms);
        let (y, m, _) = civil(day);
        let (ny, nm, _) = civil(day + 1);
        let today = std::mem::take(&mut self.today);
        self.month.add(&today);
        self.month_days += 1;
        self.year.add(&today);
        self.year_days += 1;
        out.extend(self.period_records(ctx, "day", &today, 1.0, y, end));
        if nm != m || ny != y {
            let month = self.month;
            let start = Timestamp(days_from_civil(y, m, 1) * DAY_MS - ctx.offset_ms);
            let days = self.days_covered(start, end);
            out.extend(self.period_records(ctx, "month", &month, days, y, end));
            self.month = PeriodAcc::default();
            self.month_days = 0;
        }
        if let Some(cap) = self.role.approved_capacity_t_per_year {
            let (prod, _) = self.production_t(self.year.charge_ka_h);
            let labels = vec![
                (Arc::from("line"), self.name.clone()),
                (Arc::from("period"), Arc::from("ytd")),
            ];
            let start = Timestamp(days_from_civil(y, 1, 1) * DAY_MS - ctx.offset_ms);
            let days = self.days_covered(start, end);
            let u = capacity_utilisation(prod, cap, days).map(|u| u * 100.0);
            let mut m = metric(names::CAPACITY_UTILISATION_PCT, u, "%", end, &labels);
            downgrade(&mut m, self.year.quality());
            out.push(Record::Metrics(MetricBatch {
                calc: Arc::from(names::POTLINE),
                ts: end,
                metrics: vec![m],
            }));
        }
        if ny != y {
            self.year = PeriodAcc::default();
            self.year_days = 0;
        }
    }

    fn period_records(
        &self,
        ctx: &Ctx<'_>,
        period: &str,
        acc: &PeriodAcc,
        days: f64,
        year: i32,
        end: Timestamp,
    ) -> Vec<Record> {
        let (prod_t, measured) = self.production_t(acc.charge_ka_h);
        let basis = if measured { "measured" } else { "faraday" };
        let labels = vec![
            (Arc::from("line"), self.name.clone()),
            (Arc::from("period"), Arc::from(period)),
            (Arc::from("production"), Arc::from(basis)),
        ];
        let l = &labels;
        let quality = acc.quality();
        let dc = specific_energy_kwh_per_t(acc.dc_kwh, prod_t);
        let ac = specific_energy_kwh_per_t(acc.ac_kwh, prod_t);
        let has_aux = !self.role.auxiliary_meters.is_empty();
        let comprehensive = has_aux
            .then(|| specific_energy_kwh_per_t(acc.ac_kwh + acc.aux_kwh, prod_t))
            .flatten();
        let grade_of = |t: &GradeTable, v: Option<f64>| v.map(|v| grade(t, v).as_number());
        let mut pot = vec![
            metric("production_t", Some(prod_t), "t", end, l),
            metric("dc_energy_kwh", Some(acc.dc_kwh), "kWh", end, l),
            metric("dc_meter_energy_kwh", Some(acc.dc_meter_kwh), "kWh", end, l),
            metric("ac_energy_kwh", Some(acc.ac_kwh), "kWh", end, l),
            metric(names::DC_KWH_PER_T, dc, "kWh/t", end, l),
            metric(
                "average_voltage_v",
                (acc.charge_ka_h > 0.0).then(|| acc.dc_kwh / acc.charge_ka_h),
                "V",
                end,
                l,
            ),
            metric(
                "dc_meter_kwh_per_t",
                specific_energy_kwh_per_t(acc.dc_meter_kwh, prod_t)
                    .filter(|_| acc.dc_meter_kwh > 0.0),
                "kWh/t",
                end,
                l,
            ),
            metric(
                "rectifier_efficiency_pct",
                (acc.ac_kwh > 0.0 && acc.dc_meter_kwh > 0.0)
                    .then(|| acc.dc_meter_kwh / acc.ac_kwh * 100.0),
                "%",
                end,
                l,
            ),
            metric(names::AC_KWH_PER_T, ac, "kWh/t", end, l),
            metric("ac_grade", grade_of(&self.grade, ac), "", end, l),
            metric(
                "ac_energy_kgce",
                Some(kgce(acc.ac_kwh, ctx.coef.energy.kgce_per_kwh)),
                "kgce",
                end,
                l,
            ),
        ];
        if has_aux {
            pot.push(metric(
                "auxiliary_energy_kwh",
                Some(acc.aux_kwh),
                "kWh",
                end,
                l,
            ));
            pot.push(metric(
                "comprehensive_ac_kwh_per_t",
                comprehensive,
                "kWh/t",
                end,
                l,
            ));
            pot.push(metric(
                "comprehensive_ac_grade",
                grade_of(&self.comprehensive_grade, comprehensive),
                "",
                end,
                l,
            ));
        }
        if measured {
            pot.push(metric(
                "production_faraday_t",
                Some(self.faraday_t(acc.charge_ka_h)),
                "t",
                end,
                l,
            ));
        }
        if let Some(cap) = self.role.approved_capacity_t_per_year {
            let u = capacity_utilisation(prod_t, cap, days).map(|u| u * 100.0);
            pot.push(metric(names::CAPACITY_UTILISATION_PCT, u, "%", end, l));
        }
        if self.role.tapped_metal_kg_point.is_some() {
            pot.push(metric(
                "tapped_metal_t",
                Some(acc.tapped_kg / 1000.0),
                "t",
                end,
                l,
            ));
            let ce = self
                .metal
                .current_efficiency(acc.tapped_kg, acc.charge_ka_h)
                .map(|ce| ce * 100.0);
            pot.push(metric(
                "current_efficiency_from_tapping_pct",
                ce,
                "%",
                end,
                l,
            ));
        }
        // The surcharge is assessed on 铝液综合交流电耗; without auxiliary meters only the
        // rectifier's AC figure exists, and the label says so.
        let (tariff_kwh_per_t, tariff_basis) = if has_aux {
            (comprehensive, "comprehensive_ac")
        } else {
            (ac, "rectifier_ac_only")
        };
        if let Some(e) = tariff_kwh_per_t {
            let s = tariff::surcharge_yuan_per_kwh(
                &ctx.coef.tariff,
                year,
                e,
                self.role.renewable_share_pct,
                self.role.provincial_renewable_weight_pct,
            );
            let mut tl = labels.clone();
            tl.push((Arc::from("basis"), Arc::from(tariff_basis)));
            pot.push(metric(
                "tariff_surcharge_yuan_per_kwh_estimate",
                Some(s),
                "yuan/kWh",
                end,
                &tl,
            ));
            pot.push(metric(
                "tariff_surcharge_yuan_estimate",
                Some(tariff::surcharge_cost_yuan(s, e, prod_t)),
                "yuan",
                end,
                &tl,
            ));
        }
        for m in pot.iter_mut() {
            if !matches!(
                &*m.name,
                "dc_meter_energy_kwh" | "ac_energy_kwh" | "auxiliary_energy_kwh"
            ) {
                downgrade(m, quality);
            }
        }
        pot.push(metric(
            "meter_resets",
            Some(f64::from(acc.resets)),
            "",
            end,
            l,
        ));
        pot.push(metric(
            "line_current_bridged_s",
            Some(acc.bridged_s),
            "s",
            end,
            l,
        ));
        pot.push(metric(
            "line_current_unbridged_s",
            Some(acc.unbridged_s),
            "s",
            end,
            l,
        ));
        pot.push(metric(
            "excluded_energy_kwh",
            Some(acc.excluded_kwh),
            "kWh",
            end,
            l,
        ));
        let ae = &acc.ae;
        let aem = ae.aem();
        let mut ae_metrics = vec![
            metric("ae_count", Some(ae.count as f64), "", end, l),
            metric("ae_minutes", Some(ae.minutes), "min", end, l),
            metric("cell_days", Some(ae.cell_days), "cell-day", end, l),
            metric("aef_per_cell_day", ae.aef(), "1/cell-day", end, l),
            metric("aed_min", ae.aed_min(), "min", end, l),
            metric("aem_min_per_cell_day", aem, "min/cell-day", end, l),
        ];
        for m in ae_metrics.iter_mut().skip(2) {
            downgrade(m, quality);
        }
        let mut em = Vec::new();
        if let Some(aem) = aem {
            let pfc = pfc_slope(&self.pfc, aem, prod_t);
            em.push(metric("pfc_cf4_kg", Some(pfc.cf4_kg), "kg", end, l));
            em.push(metric("pfc_c2f6_kg", Some(pfc.c2f6_kg), "kg", end, l));
            em.push(metric("pfc_co2e_t", Some(pfc.co2e_t(ctx.gwp)), "t", end, l));
        }
        let (anode_t, anode_basis) = self.anode_co2(ctx, prod_t);
        let mut al = labels.clone();
        al.push((Arc::from("anode_data"), Arc::from(anode_basis)));
        em.push(metric("anode_co2_t", Some(anode_t), "t", end, &al));
        em.push(metric(
            "electricity_co2_t",
            Some(electricity_co2_t(acc.ac_kwh, ctx.grid_t_per_mwh)),
            "t",
            end,
            l,
        ));
        for m in em.iter_mut() {
            downgrade(m, quality);
        }
        vec![
            Record::Metrics(MetricBatch {
                calc: Arc::from(names::POTLINE),
                ts: end,
                metrics: pot,
            }),
            Record::Metrics(MetricBatch {
                calc: Arc::from("anode_effect"),
                ts: end,
                metrics: ae_metrics,
            }),
            Record::Metrics(MetricBatch {
                calc: Arc::from("emissions"),
                ts: end,
                metrics: em,
            }),
        ]
    }
}

impl PeriodAcc {
    /// Trust of the period's production-dependent figures: `stale` when a gap in the line
    /// current was not bridged (the period is incomplete), `substituted` when one was.
    pub(super) fn quality(&self) -> Quality {
        if self.unbridged_s > 0.0 {
            Quality::Stale
        } else if self.bridged_s > 0.0 {
            Quality::Substituted
        } else {
            Quality::Good
        }
    }
}

/// Lower a metric's quality to `q` (a metric without a value keeps its own).
fn downgrade(m: &mut Metric, q: Quality) {
    if m.value.is_some() && q != Quality::Good {
        m.quality = q;
    }
}

/// Whether the interval (`prev`, `ts`] overlaps the span `gap`.
fn spans(prev: Option<Timestamp>, ts: Timestamp, gap: Option<(Timestamp, Timestamp)>) -> bool {
    match (prev, gap) {
        (Some(p), Some((g0, g1))) => p < g1 && ts > g0,
        _ => false,
    }
}

/// The event of a gap in the line current: bridged, or left out.
fn gap_event(line: &Arc<str>, from: Timestamp, to: Timestamp, ka: f64, bridged: bool) -> Event {
    let s = (to.0 - from.0) as f64 / 1000.0;
    let (kind, message) = if bridged {
        (
            EventKind::GapBridged,
            format!("{line}: {s:.0} s without line current bridged at {ka:.1} kA"),
        )
    } else {
        (
            EventKind::GapUnbridged,
            format!(
                "{line}: {s:.0} s without line current not bridged; its energy is left out of the per-tonne figures"
            ),
        )
    };
    Event {
        kind,
        subject: line.clone(),
        phase: EventPhase::Instant,
        ts: to,
        attributes: vec![
            (Arc::from("start"), Value::Int(from.0)),
            (Arc::from("seconds"), Value::Float(s)),
            (Arc::from("current_ka"), Value::Float(ka)),
        ],
        message,
    }
}

/// The counters of a line.
#[derive(Debug, Clone, Copy)]
enum Counter {
    Dc,
    Ac,
    Tap,
}

/// A `counter_wraps_at` must be at least 2 and fit the register's width.
fn check_wrap(wraps_at: Option<u64>, bits: u8) -> Result<(), String> {
    match wraps_at {
        Some(w) if w < 2 || (bits < 64 && u128::from(w) > 1u128 << bits) => Err(format!(
            "{w} is not between 2 and 2^{bits}, the register's range"
        )),
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

/// Count a confirmed reset and report a glitch or reset of the counter read in `r` as a
/// `meter_anomaly` event.
fn counter_anomaly(
    acc: &mut PeriodAcc,
    batch: &ReadingBatch,
    r: &Reading,
    d: &CounterDelta,
    out: &mut Vec<Record>,
) {
    if !d.step.is_anomaly() {
        return;
    }
    let (what, message) = match d.step {
        CounterStep::Reset => {
            acc.resets += 1;
            (
                "reset",
                "was reset or replaced: counting restarted from the new value",
            )
        }
        _ => (
            "glitch",
            "gave one implausible value, which was not counted",
        ),
    };
    let subject = format!("{}/{}.{}", batch.source, batch.device, r.point);
    let mut attributes = vec![(Arc::from("classification"), Value::Text(what.to_string()))];
    if let Some(raw) = d.suspect_raw {
        attributes.push((Arc::from("suspect_raw"), Value::UInt(raw)));
    }
    if let Some(raw) = raw_u64(r) {
        attributes.push((Arc::from("raw"), Value::UInt(raw)));
    }
    out.push(Record::Event(Event {
        kind: EventKind::MeterAnomaly,
        message: format!("counter {subject} {message}"),
        subject: Arc::from(subject),
        phase: EventPhase::Instant,
        ts: r.ts,
        attributes,
    }));
}
