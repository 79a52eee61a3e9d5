//! A potline's figures: the minute's instantaneous metrics and the closed day's, month's and
//! year's production, energy, tariff, anode-effect and emission figures.

use std::sync::Arc;

use super::{Ctx, Line};
use crate::calc::coefficients::GradeTable;
use crate::calc::emissions::{anode_co2_factor, electricity_co2_t, kgce, pfc_slope};
use crate::calc::limits::grade;
use crate::calc::pipeline::metric;
use crate::calc::potline::{
    capacity_utilisation, pseudo_resistance_uohm, specific_energy_kwh_per_t,
};
use crate::calc::snapshot::PeriodAcc;
use crate::calc::time::{DAY_MS, civil, days_from_civil};
use crate::calc::{AnodeCo2Method, names, tariff};
use crate::model::{Metric, MetricBatch, Quality, Record, Timestamp};

impl Line {
    /// Anode CO2 of `prod_t` tonnes, t, and what it rests on: `tier1`, `measured` (every
    /// Tier 2 input measured), `partly_measured` or `default`.
    pub(super) fn anode_co2(&self, ctx: &Ctx<'_>, prod_t: f64) -> (f64, &'static str) {
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
    pub(super) fn days_covered(&self, start: Timestamp, end: Timestamp) -> f64 {
        let from = self.extra.first_ts.map_or(start, |f| f.max(start));
        (end.0 - from.0).max(0) as f64 / DAY_MS as f64
    }

    pub(super) fn minute_metrics(&mut self, ctx: &Ctx<'_>, end: Timestamp) -> MetricBatch {
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
                names::COMPREHENSIVE_AC_KWH_PER_T_TODAY,
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
            metrics.push(metric(names::CELL_VOLTAGE_AVG_V, Some(v), "V", end, &l));
            let r = ka.and_then(|ka| pseudo_resistance_uohm(v, e0, ka));
            metrics.push(metric(names::PSEUDO_RESISTANCE_UOHM, r, "uohm", end, &l));
        }
        MetricBatch {
            calc: Arc::from(names::POTLINE),
            ts: end,
            metrics,
        }
    }

    pub(super) fn close_day(&mut self, ctx: &Ctx<'_>, day: i64, out: &mut Vec<Record>) {
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

    pub(super) fn period_records(
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
        let p = Closed {
            ctx,
            acc,
            labels,
            prod_t,
            measured,
            end,
        };
        let (l, quality) = (&p.labels, acc.quality());
        let mut pot = self.energy_metrics(&p);
        self.production_metrics(&p, days, &mut pot);
        self.tariff_metrics(&p, year, &mut pot);
        for m in pot.iter_mut() {
            if !matches!(
                &*m.name,
                names::DC_METER_ENERGY_KWH | names::AC_ENERGY_KWH | names::AUXILIARY_ENERGY_KWH
            ) {
                downgrade(m, quality);
            }
        }
        pot.push(metric(
            names::METER_RESETS,
            Some(f64::from(acc.resets)),
            "",
            end,
            l,
        ));
        pot.push(metric(
            names::LINE_CURRENT_BRIDGED_S,
            Some(acc.bridged_s),
            "s",
            end,
            l,
        ));
        pot.push(metric(
            names::LINE_CURRENT_UNBRIDGED_S,
            Some(acc.unbridged_s),
            "s",
            end,
            l,
        ));
        pot.push(metric(
            names::EXCLUDED_ENERGY_KWH,
            Some(acc.excluded_kwh),
            "kWh",
            end,
            l,
        ));
        vec![
            Record::Metrics(MetricBatch {
                calc: Arc::from(names::POTLINE),
                ts: end,
                metrics: pot,
            }),
            Record::Metrics(MetricBatch {
                calc: Arc::from(names::ANODE_EFFECT),
                ts: end,
                metrics: ae_metrics(&p),
            }),
            Record::Metrics(MetricBatch {
                calc: Arc::from(names::EMISSIONS),
                ts: end,
                metrics: self.emission_metrics(&p),
            }),
        ]
    }

    /// A closed period's energy figures: totals, specific energy, grades and, with auxiliary
    /// meters, the comprehensive AC consumption.
    fn energy_metrics(&self, p: &Closed<'_>) -> Vec<Metric> {
        let (acc, prod_t, end, l) = (p.acc, p.prod_t, p.end, &p.labels);
        let dc = specific_energy_kwh_per_t(acc.dc_kwh, prod_t);
        let ac = p.ac_kwh_per_t();
        let comprehensive = self.comprehensive_kwh_per_t(p);
        let grade_of = |t: &GradeTable, v: Option<f64>| v.map(|v| grade(t, v).as_number());
        let mut pot = vec![
            metric(names::PRODUCTION_T, Some(prod_t), "t", end, l),
            metric(names::DC_ENERGY_KWH, Some(acc.dc_kwh), "kWh", end, l),
            metric(
                names::DC_METER_ENERGY_KWH,
                Some(acc.dc_meter_kwh),
                "kWh",
                end,
                l,
            ),
            metric(names::AC_ENERGY_KWH, Some(acc.ac_kwh), "kWh", end, l),
            metric(names::DC_KWH_PER_T, dc, "kWh/t", end, l),
            metric(
                names::AVERAGE_VOLTAGE_V,
                (acc.charge_ka_h > 0.0).then(|| acc.dc_kwh / acc.charge_ka_h),
                "V",
                end,
                l,
            ),
            metric(
                names::DC_METER_KWH_PER_T,
                specific_energy_kwh_per_t(acc.dc_meter_kwh, prod_t)
                    .filter(|_| acc.dc_meter_kwh > 0.0),
                "kWh/t",
                end,
                l,
            ),
            metric(
                names::RECTIFIER_EFFICIENCY_PCT,
                (acc.ac_kwh > 0.0 && acc.dc_meter_kwh > 0.0)
                    .then(|| acc.dc_meter_kwh / acc.ac_kwh * 100.0),
                "%",
                end,
                l,
            ),
            metric(names::AC_KWH_PER_T, ac, "kWh/t", end, l),
            metric(names::AC_GRADE, grade_of(&self.grade, ac), "", end, l),
            metric(
                names::AC_ENERGY_KGCE,
                Some(kgce(acc.ac_kwh, p.ctx.coef.energy.kgce_per_kwh)),
                "kgce",
                end,
                l,
            ),
        ];
        if self.has_auxiliary_meters() {
            pot.push(metric(
                names::AUXILIARY_ENERGY_KWH,
                Some(acc.aux_kwh),
                "kWh",
                end,
                l,
            ));
            pot.push(metric(
                names::COMPREHENSIVE_AC_KWH_PER_T,
                comprehensive,
                "kWh/t",
                end,
                l,
            ));
            pot.push(metric(
                names::COMPREHENSIVE_AC_GRADE,
                grade_of(&self.comprehensive_grade, comprehensive),
                "",
                end,
                l,
            ));
        }
        pot
    }

    fn has_auxiliary_meters(&self) -> bool {
        !self.role.auxiliary_meters.is_empty()
    }

    /// 铝液综合交流电耗 of a closed period (rectifier plus auxiliaries), kWh/t, where the line
    /// has auxiliary meters.
    fn comprehensive_kwh_per_t(&self, p: &Closed<'_>) -> Option<f64> {
        self.has_auxiliary_meters()
            .then(|| specific_energy_kwh_per_t(p.acc.ac_kwh + p.acc.aux_kwh, p.prod_t))
            .flatten()
    }

    /// A closed period's production figures beside the main one: the Faraday production when
    /// production is measured, capacity utilisation over `days`, tapped metal and the current
    /// efficiency from tapping.
    fn production_metrics(&self, p: &Closed<'_>, days: f64, pot: &mut Vec<Metric>) {
        let (acc, prod_t, end, l) = (p.acc, p.prod_t, p.end, &p.labels);
        if p.measured {
            pot.push(metric(
                names::PRODUCTION_FARADAY_T,
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
                names::TAPPED_METAL_T,
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
                names::CURRENT_EFFICIENCY_FROM_TAPPING_PCT,
                ce,
                "%",
                end,
                l,
            ));
        }
    }

    /// A closed period's tariff surcharge estimate (rate and cost) for `year`.
    fn tariff_metrics(&self, p: &Closed<'_>, year: i32, pot: &mut Vec<Metric>) {
        // The surcharge is assessed on 铝液综合交流电耗; without auxiliary meters only the
        // rectifier's AC figure exists, and the label says so.
        let (tariff_kwh_per_t, tariff_basis) = if self.has_auxiliary_meters() {
            (self.comprehensive_kwh_per_t(p), "comprehensive_ac")
        } else {
            (p.ac_kwh_per_t(), "rectifier_ac_only")
        };
        let Some(e) = tariff_kwh_per_t else { return };
        let s = tariff::surcharge_yuan_per_kwh(
            &p.ctx.coef.tariff,
            year,
            e,
            self.role.renewable_share_pct,
            self.role.provincial_renewable_weight_pct,
        );
        let mut tl = p.labels.clone();
        tl.push((Arc::from("basis"), Arc::from(tariff_basis)));
        pot.push(metric(
            names::TARIFF_SURCHARGE_YUAN_PER_KWH_ESTIMATE,
            Some(s),
            "yuan/kWh",
            p.end,
            &tl,
        ));
        pot.push(metric(
            names::TARIFF_SURCHARGE_YUAN_ESTIMATE,
            Some(tariff::surcharge_cost_yuan(s, e, p.prod_t)),
            "yuan",
            p.end,
            &tl,
        ));
    }

    /// A closed period's emissions: PFC from the anode-effect minutes, anode CO2 and the
    /// electricity's indirect CO2.
    fn emission_metrics(&self, p: &Closed<'_>) -> Vec<Metric> {
        let (acc, prod_t, end, l) = (p.acc, p.prod_t, p.end, &p.labels);
        let mut em = Vec::new();
        if let Some(aem) = acc.ae.aem() {
            let pfc = pfc_slope(&self.pfc, aem, prod_t);
            em.push(metric(names::PFC_CF4_KG, Some(pfc.cf4_kg), "kg", end, l));
            em.push(metric(names::PFC_C2F6_KG, Some(pfc.c2f6_kg), "kg", end, l));
            em.push(metric(
                names::PFC_CO2E_T,
                Some(pfc.co2e_t(p.ctx.gwp)),
                "t",
                end,
                l,
            ));
        }
        let (anode_t, anode_basis) = self.anode_co2(p.ctx, prod_t);
        let mut al = p.labels.clone();
        al.push((Arc::from("anode_data"), Arc::from(anode_basis)));
        em.push(metric(names::ANODE_CO2_T, Some(anode_t), "t", end, &al));
        em.push(metric(
            names::ELECTRICITY_CO2_T,
            Some(electricity_co2_t(acc.ac_kwh, p.ctx.grid_t_per_mwh)),
            "t",
            end,
            l,
        ));
        for m in em.iter_mut() {
            downgrade(m, acc.quality());
        }
        em
    }
}

/// A closed period on its way to records: what every figure of it reads.
struct Closed<'a> {
    ctx: &'a Ctx<'a>,
    acc: &'a PeriodAcc,
    labels: Vec<(Arc<str>, Arc<str>)>,
    /// Production, t.
    prod_t: f64,
    /// Whether production is measured (tapped metal) rather than Faraday's.
    measured: bool,
    end: Timestamp,
}

impl Closed<'_> {
    /// The rectifier's AC consumption, kWh/t.
    fn ac_kwh_per_t(&self) -> Option<f64> {
        specific_energy_kwh_per_t(self.acc.ac_kwh, self.prod_t)
    }
}

/// A closed period's anode-effect figures (the counts as they are, the rates with the
/// period's quality).
fn ae_metrics(p: &Closed<'_>) -> Vec<Metric> {
    let (ae, end, l) = (&p.acc.ae, p.end, &p.labels);
    let mut ae_metrics = vec![
        metric(names::AE_COUNT, Some(ae.count as f64), "", end, l),
        metric(names::AE_MINUTES, Some(ae.minutes), "min", end, l),
        metric(names::CELL_DAYS, Some(ae.cell_days), "cell-day", end, l),
        metric(names::AEF_PER_CELL_DAY, ae.aef(), "1/cell-day", end, l),
        metric(names::AED_MIN, ae.aed_min(), "min", end, l),
        metric(
            names::AEM_MIN_PER_CELL_DAY,
            ae.aem(),
            "min/cell-day",
            end,
            l,
        ),
    ];
    for m in ae_metrics.iter_mut().skip(2) {
        downgrade(m, p.acc.quality());
    }
    ae_metrics
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
