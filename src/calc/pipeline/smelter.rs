//! The copper smelters inside the calculator stage: feed, oxygen, acid-plant and stack SO2,
//! copper and energy readings in; minute, day and month figures out (calc `copper`).

use std::sync::Arc;

use super::{Pipeline, lookup, metric, num};
use crate::calc::coefficients::{Coefficients, GradeTable};
use crate::calc::copper::{
    energy_kgce_per_t, oxygen_per_t_concentrate, so2_kg_h_from_volume_pct, sulphur_capture_pct,
};
use crate::calc::limits::grade;
use crate::calc::snapshot::{SmelterAcc, SmelterRates, SmelterState};
use crate::calc::time::{DAY_MS, MINUTE_MS, civil, floor, local_day};
use crate::calc::units::UnitCheck;
use crate::calc::{CalcConfig, CalcError, SmelterRole, names};
use crate::model::{MetricBatch, ReadingBatch, Record, Timestamp};

/// A smelter of `[[calc.smelters]]` and its open accumulators.
#[derive(Debug)]
pub(super) struct Smelter {
    pub(super) role: SmelterRole,
    name: Arc<str>,
    grade: GradeTable,
    max_gap_ms: i64,
    /// Index of the stack whose SO2 leaves its acid plant.
    stack: Option<usize>,
    pub(super) state: SmelterState,
    /// Converts its inputs' units, and reports each point whose unit cannot be converted.
    units: UnitCheck,
}

impl Smelter {
    /// The smelter of `smelters[i]`: its energy grade table and the stack its acid plant's SO2
    /// leaves by, checked.
    pub(super) fn new(
        i: usize,
        role: &SmelterRole,
        cfg: &CalcConfig,
        coef: &Coefficients,
    ) -> Result<Self, CalcError> {
        let v = &coef.version;
        let key = |k: &str| format!("smelters[{i}].{k}");
        let grade = lookup(&coef.grades, &key("energy_grade"), &role.energy_grade, v)?.clone();
        let stack = match &role.stack {
            None => None,
            Some(name) => {
                let found = cfg.stacks.iter().position(|s| s.name == *name);
                let known = || {
                    let names: Vec<&str> = cfg.stacks.iter().map(|s| s.name.as_str()).collect();
                    names.join(", ")
                };
                Some(found.ok_or_else(|| CalcError::Invalid {
                    key: key("stack"),
                    message: format!(
                        "`{name}` is not the name of a [[calc.stacks]] entry (known: {})",
                        known()
                    ),
                })?)
            }
        };
        Ok(Smelter {
            name: Arc::from(role.name.as_str()),
            grade,
            max_gap_ms: i64::try_from(role.max_gap.as_millis()).unwrap_or(i64::MAX),
            stack,
            state: SmelterState::default(),
            units: UnitCheck::default(),
            role: role.clone(),
        })
    }
}

impl Pipeline {
    /// One poll of a smelter: integrate the rates held since the previous poll, then take
    /// the new ones.
    pub(super) fn smelter(&mut self, i: usize, batch: &ReadingBatch, out: &mut Vec<Record>) {
        let Some(ts) = batch.readings.iter().map(|r| r.ts).max() else {
            return;
        };
        self.smelter_clock(i, ts, out);
        let density = self.coef.copper.so2_density_kg_per_nm3;
        let stack_so2 = self.smelters[i]
            .stack
            .and_then(|j| self.stacks[j].latest_so2_kg_h);
        let sm = &mut self.smelters[i];
        if let Some(t0) = sm.state.last_ts {
            let dt = ts.0 - t0.0;
            if dt > 0 && dt <= sm.max_gap_ms {
                let rates = sm.state.rates;
                sm.state.today.integrate(&rates, dt as f64 / 3_600_000.0);
            }
        }
        // each input in the unit its formula expects; one that cannot be converted is not used
        // and is reported once per point
        let check = &mut sm.units;
        let mut get = |p: &str, expected: &str| {
            let r = batch
                .readings
                .iter()
                .find(|r| *r.point == *p)
                .filter(|r| r.quality.is_good())?;
            let f = check.factor(batch, r, expected, out)?;
            num(r).map(|v| v * f)
        };
        let role = &sm.role;
        let mut opt =
            |p: &Option<String>, expected: &str| p.as_deref().and_then(|p| get(p, expected));
        let rates = SmelterRates {
            feed_tph: opt(&Some(role.feed_point.clone()), "t/h"),
            oxygen_nm3_h: opt(&Some(role.oxygen_point.clone()), "Nm3/h"),
            enrichment_pct: opt(&Some(role.enrichment_point.clone()), "%"),
            inlet_so2_kg_h: match (
                opt(&Some(role.acid_plant_so2_point.clone()), "%"),
                opt(&role.acid_plant_gas_flow_point, "Nm3/h"),
            ) {
                (Some(pct), Some(flow)) => Some(so2_kg_h_from_volume_pct(pct, flow, density)),
                _ => None,
            },
            stack_so2_kg_h: stack_so2,
            copper_tph: opt(&role.copper_output_point, "t/h"),
            energy_kgce_h: opt(&role.energy_kgce_point, "kgce/h"),
        };
        sm.state.rates = rates;
        sm.state.last_ts = Some(ts);
    }

    /// Close the minute, day and month that `ts` has passed.
    pub(super) fn smelter_clock(&mut self, i: usize, ts: Timestamp, out: &mut Vec<Record>) {
        let minute = floor(ts, MINUTE_MS, self.offset_ms);
        let day = local_day(ts, self.offset_ms);
        let sm = &mut self.smelters[i];
        if let Some(m) = sm.state.minute
            && minute > m
        {
            let end = Timestamp(m.0 + MINUTE_MS);
            out.push(Record::Metrics(smelter_minute(sm, end)));
        }
        if sm.state.minute.is_none_or(|m| minute > m) {
            sm.state.minute = Some(minute);
        }
        match sm.state.day {
            None => sm.state.day = Some(day),
            Some(d) if day > d => {
                let end = Timestamp((d + 1) * DAY_MS - self.offset_ms);
                let (_, m, _) = civil(d);
                let (_, nm, _) = civil(d + 1);
                let today = std::mem::take(&mut sm.state.today);
                sm.state.month.add(&today);
                out.push(Record::Metrics(smelter_period(sm, "day", &today, end)));
                if nm != m {
                    let month = std::mem::take(&mut sm.state.month);
                    out.push(Record::Metrics(smelter_period(sm, "month", &month, end)));
                }
                sm.state.day = Some(day);
            }
            _ => {}
        }
    }
}

/// The smelter's instantaneous figures at the end of a minute (calc `copper`).
fn smelter_minute(sm: &Smelter, end: Timestamp) -> MetricBatch {
    let l = vec![(Arc::from("smelter"), sm.name.clone())];
    let r = &sm.state.rates;
    let o2_per_t = match (r.oxygen_nm3_h, r.feed_tph) {
        (Some(o), Some(f)) => oxygen_per_t_concentrate(o, f),
        _ => None,
    };
    let capture = match (r.inlet_so2_kg_h, r.stack_so2_kg_h) {
        (Some(i), Some(o)) => sulphur_capture_pct(i, o),
        _ => None,
    };
    MetricBatch {
        calc: Arc::from(names::COPPER),
        ts: end,
        metrics: vec![
            metric(names::CONCENTRATE_FEED_TPH, r.feed_tph, "t/h", end, &l),
            metric(names::OXYGEN_FLOW_NM3H, r.oxygen_nm3_h, "Nm3/h", end, &l),
            metric(names::OXYGEN_ENRICHMENT_PCT, r.enrichment_pct, "%", end, &l),
            metric(
                names::OXYGEN_NM3_PER_T_CONCENTRATE,
                o2_per_t,
                "Nm3/t",
                end,
                &l,
            ),
            metric(
                names::ACID_PLANT_SO2_KG_H,
                r.inlet_so2_kg_h,
                "kg/h",
                end,
                &l,
            ),
            metric(names::STACK_SO2_KG_H, r.stack_so2_kg_h, "kg/h", end, &l),
            metric(names::SULPHUR_CAPTURE_PCT, capture, "%", end, &l),
        ],
    }
}

/// The smelter's figures of a closed day or month (calc `copper`, label `period`).
fn smelter_period(sm: &Smelter, period: &str, acc: &SmelterAcc, end: Timestamp) -> MetricBatch {
    let l = vec![
        (Arc::from("smelter"), sm.name.clone()),
        (Arc::from("period"), Arc::from(period)),
    ];
    let l = &l;
    let kgce_t = energy_kgce_per_t(acc.energy_kgce, acc.copper_t);
    let has_copper = sm.role.copper_output_point.is_some();
    let has_energy = has_copper && sm.role.energy_kgce_point.is_some();
    let has_so2 = sm.role.acid_plant_gas_flow_point.is_some() && sm.stack.is_some();
    let mut metrics = vec![
        metric(names::CONCENTRATE_T, Some(acc.concentrate_t), "t", end, l),
        metric(names::OXYGEN_NM3, Some(acc.oxygen_nm3), "Nm3", end, l),
        metric(
            names::OXYGEN_NM3_PER_T_CONCENTRATE,
            oxygen_per_t_concentrate(acc.oxygen_nm3, acc.concentrate_t),
            "Nm3/t",
            end,
            l,
        ),
    ];
    if has_so2 {
        metrics.push(metric(
            names::ACID_PLANT_SO2_T,
            Some(acc.inlet_so2_kg / 1000.0),
            "t",
            end,
            l,
        ));
        metrics.push(metric(
            names::STACK_SO2_T,
            Some(acc.stack_so2_kg / 1000.0),
            "t",
            end,
            l,
        ));
        metrics.push(metric(
            names::SULPHUR_CAPTURE_PCT,
            sulphur_capture_pct(acc.inlet_so2_kg, acc.stack_so2_kg),
            "%",
            end,
            l,
        ));
    }
    if has_copper {
        metrics.push(metric(names::COPPER_T, Some(acc.copper_t), "t", end, l));
    }
    if has_energy {
        metrics.push(metric(
            names::ENERGY_KGCE,
            Some(acc.energy_kgce),
            "kgce",
            end,
            l,
        ));
        metrics.push(metric(names::ENERGY_KGCE_PER_T, kgce_t, "kgce/t", end, l));
        metrics.push(metric(
            names::ENERGY_GRADE,
            kgce_t.map(|v| grade(&sm.grade, v).as_number()),
            "",
            end,
            l,
        ));
    }
    MetricBatch {
        calc: Arc::from(names::COPPER),
        ts: end,
        metrics,
    }
}
