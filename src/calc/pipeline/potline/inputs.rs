//! A potline's polls: the rectifier's line current, energy and tapped-metal counters, the pots'
//! voltages and status, and the auxiliary meters, integrated into the open day.

use std::sync::Arc;

use super::{Ctx, Line, PendingBridge, TapPoint, aux_counter};
use crate::calc::anode_effect::{AeDetector, AeTransition, event_of};
use crate::calc::counter::{CounterDelta, CounterStep};
use crate::calc::pipeline::{num, raw_u64};
use crate::calc::snapshot::{CellState, PeriodAcc};
use crate::calc::time::{MINUTE_MS, floor, local_day};
use crate::calc::{GapBridge, glob_match};
use crate::model::{Event, EventKind, EventPhase, Reading, ReadingBatch, Record, Timestamp, Value};

impl Line {
    pub(super) fn in_service(&self) -> f64 {
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
    pub(super) fn add_charge(&mut self, ka: f64, h: f64) {
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
    pub(super) fn dc_meter_interval(&mut self, prev: Option<Timestamp>, ts: Timestamp, kwh: f64) {
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

    pub(super) fn line_current(&mut self, r: &Reading, ka: f64, out: &mut Vec<Record>) {
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
    pub(super) fn spans_unbridged(&self, prev: Option<Timestamp>, ts: Timestamp) -> bool {
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
                let Some(f) = self.units.factor(batch, r, "kA", out) else {
                    continue;
                };
                if let Some(ka) = num(r) {
                    self.line_current(r, ka * f, out);
                }
            } else if self.role.tapped_metal_kg_point.as_deref() == Some(&*r.point) {
                let Some(f) = self.units.factor(batch, r, "kg", out) else {
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
                let Some(f) = self.units.factor(batch, r, "kg", out) else {
                    continue;
                };
                self.extra.inventory_kg = num(r).map(|v| v * f).or(self.extra.inventory_kg);
            } else if *r.point == *self.role.dc_energy_point
                || *r.point == *self.role.ac_energy_point
            {
                let Some(f) = self.units.factor(batch, r, "kWh", out) else {
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
    pub(super) fn record_tap(&mut self, ts: Timestamp) {
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
    pub(super) fn measured_ce(&self) -> Option<f64> {
        self.role.tapped_metal_kg_point.as_ref()?;
        let (first, last) = (self.extra.taps.front()?, self.extra.taps.back()?);
        let theoretical = last.theoretical_kg - first.theoretical_kg;
        let ce = (last.metal_kg - first.metal_kg) / theoretical;
        (theoretical > 0.0 && ce.is_finite() && ce > 0.0).then_some(ce)
    }

    /// Production of a period, t, and whether it is measured.
    pub(super) fn production_t(&self, charge_ka_h: f64) -> (f64, bool) {
        match self.measured_ce() {
            Some(ce) => (
                self.metal.produced_from_charge_kg(charge_ka_h, ce) / 1000.0,
                true,
            ),
            None => (self.faraday_t(charge_ka_h), false),
        }
    }

    pub(super) fn faraday_t(&self, charge_ka_h: f64) -> f64 {
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
                .units
                .factor(batch, vr, "V", out)
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

#[cfg(test)]
mod tests {
    use super::spans;
    use crate::model::Timestamp;

    #[test]
    fn a_counter_interval_spans_a_gap_it_overlaps() {
        let gap = Some((Timestamp(100), Timestamp(200)));
        assert!(spans(Some(Timestamp(50)), Timestamp(150), gap));
        assert!(spans(Some(Timestamp(150)), Timestamp(250), gap));
        // an interval that ends where the gap starts, or starts where it ends, does not
        assert!(!spans(Some(Timestamp(50)), Timestamp(100), gap));
        assert!(!spans(Some(Timestamp(200)), Timestamp(300), gap));
        // no previous reading or no gap: nothing spanned
        assert!(!spans(None, Timestamp(150), gap));
        assert!(!spans(Some(Timestamp(50)), Timestamp(150), None));
    }
}
