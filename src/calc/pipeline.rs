//! The calculator stage as one object: routes each batch to the potline or stack it belongs to
//! and turns the state changes into records.

use std::collections::HashMap;
use std::sync::Arc;

use super::coefficients::{Coefficients, GradeTable, GwpTable, LimitTable};
use super::copper::{
    energy_kgce_per_t, oxygen_per_t_concentrate, so2_kg_h_from_volume_pct, sulphur_capture_pct,
};
use super::emissions::{mass_flow_kg_h, o2_corrected, reference_exhaust_corrected};
use super::limits::{check_hour, grade, limit_of};
use super::line::{Ctx, Line};
use super::snapshot::{
    PipelineSnapshot, SNAPSHOT_VERSION, SmelterAcc, SmelterSnapshot, SmelterState, StackSnapshot,
};
use super::time::{MINUTE_MS, civil, floor, local_day};
use super::units::UnitCheck;
use super::window::{Sample, Substitution, Window, WindowRules};
use super::{CalcConfig, CalcError, StackRole, glob_match};
use crate::model::{
    Aggregate, Metric, MetricBatch, Period, Quality, Reading, ReadingBatch, Record, Timestamp,
};

#[derive(Debug, Clone, Copy)]
enum Route {
    Rectifier(usize),
    Pot(usize),
    Auxiliary(usize),
    Stack(usize),
    Smelter(usize),
    Other,
}

/// Plant time of `[calc.simulated_time]`: an affine map of reading timestamps.
#[derive(Debug, Clone, Copy)]
struct SimClock {
    scale: f64,
    start_ms: i64,
    /// Wall-clock time of the first reading (or flush) seen.
    anchor_ms: Option<i64>,
}

impl SimClock {
    fn map(&mut self, ts: Timestamp) -> Timestamp {
        let anchor = *self.anchor_ms.get_or_insert(ts.0);
        Timestamp(self.start_ms + ((ts.0 - anchor) as f64 * self.scale).round() as i64)
    }
}

/// How a stack's measured concentration is converted (折算) for the limit check.
#[derive(Debug, Clone, Copy)]
enum Conversion {
    /// To a reference O2, %.
    O2 { reference_pct: f64 },
    /// To a reference exhaust volume per tonne of product (基准排气量), m³/t.
    ExhaustVolume { reference_m3_per_t: f64 },
}

#[derive(Debug)]
struct Stack {
    role: StackRole,
    name: Arc<str>,
    /// Validity and substitution rules of its windows.
    rules: WindowRules,
    /// The conversion its limits apply to, if its standard has one.
    conversion: Option<Conversion>,
    limits: HashMap<String, f64>,
    windows: IndexMap<Arc<str>, Window>,
    /// Latest good SO2 mass flow, kg/h (for a smelter's sulphur capture).
    latest_so2_kg_h: Option<f64>,
    /// Converts its inputs' units, and reports each point whose unit cannot be converted.
    units: UnitCheck,
}

#[derive(Debug)]
struct Smelter {
    role: super::SmelterRole,
    name: Arc<str>,
    grade: GradeTable,
    max_gap_ms: i64,
    /// Index of the stack whose SO2 leaves its acid plant.
    stack: Option<usize>,
    state: SmelterState,
    /// Converts its inputs' units, and reports each point whose unit cannot be converted.
    units: UnitCheck,
}

use indexmap::IndexMap;

/// The calculator stage: feed it every [`ReadingBatch`]; it returns the records to fan out.
#[derive(Debug)]
pub struct Pipeline {
    coef: Coefficients,
    gwp: GwpTable,
    grid_t_per_mwh: f64,
    offset_ms: i64,
    lines: Vec<Line>,
    stacks: Vec<Stack>,
    smelters: Vec<Smelter>,
    routes: HashMap<(Arc<str>, Arc<str>), Route>,
    clock: Option<SimClock>,
    /// Latest calculator time seen.
    latest: Option<Timestamp>,
}

/// The entry `value` of a coefficient table's `map`, or an error naming the config `key` and the
/// entries known.
pub(super) fn lookup<'a, T>(
    map: &'a std::collections::BTreeMap<String, T>,
    key: &str,
    value: &str,
    table: &str,
) -> Result<&'a T, CalcError> {
    map.get(value).ok_or_else(|| CalcError::UnknownKey {
        key: key.to_string(),
        value: value.to_string(),
        table: table.to_string(),
        known: map.keys().cloned().collect::<Vec<_>>().join(", "),
    })
}

impl Pipeline {
    /// Build the stage: load the coefficient table (`coefficients_path` overrides the shipped
    /// one) and check that every key of `cfg` names an entry of it.
    pub fn new(cfg: &CalcConfig) -> Result<Self, CalcError> {
        let coef = match &cfg.coefficients_path {
            Some(p) => Coefficients::from_path(p)?,
            None => Coefficients::embedded(&cfg.coefficients)?,
        };
        Self::with_coefficients(cfg, coef)
    }

    /// Build the stage with an already loaded table.
    pub fn with_coefficients(cfg: &CalcConfig, coef: Coefficients) -> Result<Self, CalcError> {
        let v = coef.version.clone();
        let chosen = |key: &str, cfg: &Option<String>, table: &Option<String>| {
            cfg.clone()
                .or_else(|| table.clone())
                .ok_or_else(|| CalcError::Invalid {
                    key: key.to_string(),
                    message: format!(
                        "required: the coefficient table `{v}` has no `[defaults] {key}`"
                    ),
                })
        };
        let gwp_key = chosen("gwp", &cfg.gwp, &coef.defaults.gwp)?;
        let grid_key = chosen("grid_factor", &cfg.grid_factor, &coef.defaults.grid_factor)?;
        let gwp = lookup(&coef.gwp, "gwp", &gwp_key, &v)?.clone();
        let grid = lookup(&coef.grid, "grid_factor", &grid_key, &v)?.t_co2_per_mwh;
        if !(-14..=14).contains(&cfg.utc_offset_hours) {
            return Err(CalcError::Invalid {
                key: "utc_offset_hours".into(),
                message: format!("{} is not between -14 and 14", cfg.utc_offset_hours),
            });
        }
        let offset_ms = i64::from(cfg.utc_offset_hours) * 3_600_000;
        let lines = cfg
            .potlines
            .iter()
            .enumerate()
            .map(|(i, role)| Line::new(i, role, &coef))
            .collect::<Result<Vec<_>, _>>()?;
        let mut stacks = Vec::new();
        for (i, role) in cfg.stacks.iter().enumerate() {
            let mut limits = HashMap::new();
            if let Some(std_key) = &role.limits {
                let table: &std::collections::BTreeMap<String, LimitTable> =
                    lookup(&coef.limits, &format!("stacks[{i}].limits"), std_key, &v)?;
                for p in role.pollutants.keys() {
                    if let Some(l) = table.get(p) {
                        limits.insert(p.clone(), limit_of(l, role.limit_class));
                    }
                }
            }
            let key = |k: &str| format!("stacks[{i}].{k}");
            let conversion = match (role.o2_reference_pct, role.reference_exhaust_m3_per_t) {
                (Some(_), Some(_)) => {
                    return Err(CalcError::Invalid {
                        key: key("reference_exhaust_m3_per_t"),
                        message: "a stack converts to a reference O2 or to a reference exhaust \
                                  volume, not both (o2_reference_pct is set too)"
                            .into(),
                    });
                }
                (Some(reference_pct), None) => Some(Conversion::O2 { reference_pct }),
                (None, Some(q)) => {
                    if !(q.is_finite() && q > 0.0) {
                        return Err(CalcError::Invalid {
                            key: key("reference_exhaust_m3_per_t"),
                            message: format!("{q} is not a number above 0"),
                        });
                    }
                    if role.production_point.is_none() && role.production_t_per_h.is_none() {
                        return Err(CalcError::Invalid {
                            key: key("reference_exhaust_m3_per_t"),
                            message: "needs production_point or production_t_per_h (the \
                                      production rate the exhaust volume is divided by)"
                                .into(),
                        });
                    }
                    Some(Conversion::ExhaustVolume {
                        reference_m3_per_t: q,
                    })
                }
                (None, None) => None,
            };
            let rules = WindowRules::new(&coef.validity, offset_ms)
                .with_substitution(Substitution::new(&coef.substitution, role.substitution));
            stacks.push(Stack {
                name: Arc::from(role.name.as_str()),
                role: role.clone(),
                rules,
                conversion,
                limits,
                windows: IndexMap::new(),
                latest_so2_kg_h: None,
                units: UnitCheck::default(),
            });
        }
        let mut smelters = Vec::new();
        for (i, role) in cfg.smelters.iter().enumerate() {
            let key = |k: &str| format!("smelters[{i}].{k}");
            let grade = lookup(&coef.grades, &key("energy_grade"), &role.energy_grade, &v)?.clone();
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
            smelters.push(Smelter {
                name: Arc::from(role.name.as_str()),
                grade,
                max_gap_ms: i64::try_from(role.max_gap.as_millis()).unwrap_or(i64::MAX),
                stack,
                state: SmelterState::default(),
                units: UnitCheck::default(),
                role: role.clone(),
            });
        }
        let clock = match &cfg.simulated_time {
            None => None,
            Some(st) => {
                if !(st.scale.is_finite() && st.scale > 0.0) {
                    return Err(CalcError::Invalid {
                        key: "simulated_time.scale".into(),
                        message: format!("{} is not a number above 0", st.scale),
                    });
                }
                let start =
                    humantime::parse_rfc3339(&st.start).map_err(|e| CalcError::Invalid {
                        key: "simulated_time.start".into(),
                        message: format!(
                            "`{}` is not an RFC 3339 UTC time like 2025-03-01T15:58:00Z: {e}",
                            st.start
                        ),
                    })?;
                let start_ms = start
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                Some(SimClock {
                    scale: st.scale,
                    start_ms,
                    anchor_ms: None,
                })
            }
        };
        Ok(Pipeline {
            coef,
            gwp,
            grid_t_per_mwh: grid,
            offset_ms,
            lines,
            stacks,
            smelters,
            routes: HashMap::new(),
            clock,
            latest: None,
        })
    }

    /// Copy of everything open (windows, accumulators, counters, detectors), to be saved so
    /// that a restart resumes it with [`Pipeline::restore`].
    pub fn snapshot(&self) -> PipelineSnapshot {
        PipelineSnapshot {
            version: SNAPSHOT_VERSION,
            latest: self.latest,
            lines: self.lines.iter().map(Line::snapshot).collect(),
            stacks: self
                .stacks
                .iter()
                .map(|s| StackSnapshot {
                    name: s.role.name.clone(),
                    windows: s
                        .windows
                        .iter()
                        .map(|(q, w)| (q.clone(), w.clone()))
                        .collect(),
                })
                .collect(),
            smelters: self
                .smelters
                .iter()
                .map(|s| SmelterSnapshot {
                    name: s.role.name.clone(),
                    state: s.state.clone(),
                })
                .collect(),
            clock_anchor_ms: self.clock.and_then(|c| c.anchor_ms),
        }
    }

    /// Resume from a snapshot taken before a restart. Lines and stacks are matched by name;
    /// those no longer configured are dropped, new ones start empty; windows take the current
    /// validity and substitution rules. Returns false (and changes nothing) for a snapshot of
    /// another format version.
    ///
    /// Whatever happened while the agent was down is not invented: windows that ended in the
    /// meantime close (with what they had) on the first reading or flush after the restart, the
    /// missing minutes count as missing, and the hours without any data are emitted as such
    /// (0 samples, `comm_fail`), to be filled at their day's close by the substitution policy.
    pub fn restore(&mut self, snap: PipelineSnapshot) -> bool {
        if snap.version != SNAPSHOT_VERSION {
            return false;
        }
        for ls in snap.lines {
            if let Some(line) = self.lines.iter_mut().find(|l| l.role.name == ls.name) {
                line.restore(ls, snap.latest);
            }
        }
        for ss in snap.stacks {
            let Some(stack) = self.stacks.iter_mut().find(|s| s.role.name == ss.name) else {
                continue;
            };
            let rules = stack.rules;
            stack.windows = ss
                .windows
                .into_iter()
                .map(|(q, w)| (q, w.with_rules(rules)))
                .collect();
        }
        for ss in snap.smelters {
            if let Some(sm) = self.smelters.iter_mut().find(|s| s.role.name == ss.name) {
                sm.state = ss.state;
            }
        }
        if let (Some(clock), Some(anchor)) = (self.clock.as_mut(), snap.clock_anchor_ms) {
            clock.anchor_ms = Some(anchor);
        }
        self.latest = snap.latest;
        true
    }

    /// The coefficient table in use.
    pub fn coefficients(&self) -> &Coefficients {
        &self.coef
    }

    fn route(&mut self, batch: &ReadingBatch) -> Route {
        let key = (batch.source.clone(), batch.device.clone());
        if let Some(r) = self.routes.get(&key) {
            return *r;
        }
        let full = format!("{}/{}", batch.source, batch.device);
        let m = |p: &str| glob_match(p, &full) || glob_match(p, &batch.device);
        let r = if let Some(i) = self.lines.iter().position(|l| m(&l.role.rectifier)) {
            Route::Rectifier(i)
        } else if let Some(i) = self.lines.iter().position(|l| m(&l.role.pots)) {
            Route::Pot(i)
        } else if let Some(i) = self
            .lines
            .iter()
            .position(|l| l.has_auxiliary(&full, &batch.device))
        {
            Route::Auxiliary(i)
        } else if let Some(i) = self.stacks.iter().position(|s| m(&s.role.device)) {
            Route::Stack(i)
        } else if let Some(i) = self.smelters.iter().position(|s| m(&s.role.device)) {
            Route::Smelter(i)
        } else {
            Route::Other
        };
        self.routes.insert(key, r);
        r
    }

    /// Process one poll batch; returns the metrics, events and aggregates it produced.
    pub fn on_batch(&mut self, batch: &ReadingBatch) -> Vec<Record> {
        if let Some(clock) = self.clock.as_mut() {
            let mut b = batch.clone();
            b.scheduled = clock.map(b.scheduled);
            for r in &mut b.readings {
                r.ts = clock.map(r.ts);
            }
            b.poll_interval_ms = (b.poll_interval_ms as f64 * clock.scale).round() as u64;
            return self.process(&b);
        }
        self.process(batch)
    }

    fn process(&mut self, batch: &ReadingBatch) -> Vec<Record> {
        if let Some(ts) = batch.readings.iter().map(|r| r.ts).max() {
            self.latest = self.latest.max(Some(ts));
        }
        let mut out = Vec::new();
        match self.route(batch) {
            Route::Rectifier(i) => self.rectifier(i, batch, &mut out),
            Route::Pot(i) => self.pot(i, batch, &mut out),
            Route::Auxiliary(i) => self.auxiliary(i, batch, &mut out),
            Route::Stack(i) => self.stack(i, batch, &mut out),
            Route::Smelter(i) => self.smelter(i, batch, &mut out),
            Route::Other => {}
        }
        out
    }

    /// Close every window whose end is at or before `now` (no new data arrived).
    pub fn flush(&mut self, now: Timestamp) -> Vec<Record> {
        let now = match self.clock.as_mut() {
            Some(c) => c.map(now),
            None => now,
        };
        let mut out = Vec::new();
        for i in 0..self.lines.len() {
            self.line_clock(i, now, &mut out);
        }
        for i in 0..self.smelters.len() {
            self.smelter_clock(i, now, &mut out);
        }
        let mut aggs = Vec::new();
        for s in &mut self.stacks {
            for w in s.windows.values_mut() {
                w.advance(now, &mut aggs);
            }
        }
        self.emit_aggregates(aggs, &mut out);
        out
    }

    fn line_clock(&mut self, i: usize, ts: Timestamp, out: &mut Vec<Record>) {
        let (lines, ctx) = self.split_lines();
        lines[i].clock(&ctx, ts, out);
    }

    fn rectifier(&mut self, i: usize, batch: &ReadingBatch, out: &mut Vec<Record>) {
        let (lines, ctx) = self.split_lines();
        lines[i].rectifier(&ctx, batch, out);
    }

    fn pot(&mut self, i: usize, batch: &ReadingBatch, out: &mut Vec<Record>) {
        let (lines, ctx) = self.split_lines();
        lines[i].pot(&ctx, batch, out);
    }

    fn auxiliary(&mut self, i: usize, batch: &ReadingBatch, out: &mut Vec<Record>) {
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

    /// One CEMS poll. Each pollutant feeds three windows: `<p>_mg_m3`, the measured (dry,
    /// standard) concentration; `<p>_zs_mg_m3`, the converted (折算) concentration, only where
    /// the stack's standard defines a conversion; and `<p>_kg_h`, the mass flow from the
    /// measured concentration and the flow (HJ 75: mass is never computed from the converted
    /// concentration, which exists only to be compared with the limit).
    fn stack(&mut self, i: usize, batch: &ReadingBatch, out: &mut Vec<Record>) {
        let s = &mut self.stacks[i];
        let rules = s.rules;
        let conversion = s.conversion;
        let find = |p: &Option<String>| {
            p.as_deref()
                .and_then(|p| batch.readings.iter().find(|r| *r.point == *p))
                .filter(|r| r.quality.is_good())
                .and_then(num)
                .is_some_and(|v| v != 0.0)
        };
        let status = if find(&s.role.calibration_point) {
            Some(Quality::Calibration)
        } else if find(&s.role.maintenance_point) {
            Some(Quality::Maintenance)
        } else if find(&s.role.fault_point) {
            Some(Quality::DeviceException)
        } else {
            None
        };
        let get = |p: &str| batch.readings.iter().find(|r| *r.point == *p);
        // Each input in the unit its formula expects (a flow in m³/s is converted to m³/h); a
        // reading whose unit cannot be converted is out of range, reported once per point.
        let mut factors: HashMap<&str, Option<f64>> = HashMap::new();
        let inputs = std::iter::once((s.role.flow_point.as_str(), "m3/h"))
            .chain(s.role.o2_point.as_deref().map(|p| (p, "%")))
            .chain(s.role.pollutants.values().map(|p| (p.as_str(), "mg/m3")));
        for (point, expected) in inputs {
            let Some(r) = get(point) else { continue };
            factors.insert(point, s.units.factor(batch, r, expected, out));
        }
        // the value of `r` in its expected unit (NaN when it has none)
        let value = |r: &Reading| {
            let f = factors.get(&*r.point).copied().flatten();
            f.and_then(|f| num(r).map(|v| v * f)).unwrap_or(f64::NAN)
        };
        let unit_quality = |r: &Reading| match factors.get(&*r.point) {
            Some(None) => Quality::OutOfRange,
            _ => r.quality,
        };
        let flow = get(&s.role.flow_point)
            .filter(|r| unit_quality(r).is_good() && status.is_none())
            .map(value)
            .filter(|v| v.is_finite());
        let o2 = s
            .role
            .o2_point
            .as_deref()
            .and_then(get)
            .filter(|r| unit_quality(r).is_good())
            .map(value)
            .filter(|v| v.is_finite());
        let production_t_h = match &s.role.production_point {
            Some(p) => get(p).filter(|r| r.quality.is_good()).and_then(num),
            None => s.role.production_t_per_h,
        };
        let mut aggs = Vec::new();
        let mut so2_update = None;
        let mut feed = |quantity: String, unit: &str, total_unit: Option<&str>, sample: Sample| {
            let name = s.name.clone();
            let w = s
                .windows
                .entry(Arc::from(quantity.as_str()))
                .or_insert_with(|| {
                    Window::new(
                        name,
                        Arc::from(quantity.as_str()),
                        Arc::from(unit),
                        total_unit.map(Arc::from),
                        rules,
                        batch.poll_interval_ms,
                    )
                });
            w.push(sample, &mut aggs);
        };
        if let Some(fr) = get(&s.role.flow_point) {
            let q = status.unwrap_or(unit_quality(fr));
            let v = value(fr);
            feed(
                "flow_m3h".into(),
                "m3/h",
                Some("m3"),
                Sample {
                    ts: fr.ts,
                    value: v,
                    quality: q,
                    rate_per_h: Some(v),
                },
            );
        }
        for (pollutant, point) in &s.role.pollutants {
            let Some(r) = get(point) else { continue };
            let q = status.unwrap_or(unit_quality(r));
            let c = value(r);
            feed(
                format!("{pollutant}_mg_m3"),
                "mg/m3",
                None,
                Sample {
                    ts: r.ts,
                    value: c,
                    quality: q,
                    rate_per_h: None,
                },
            );
            if let Some(conv) = conversion {
                let z = match conv {
                    Conversion::O2 { reference_pct } => {
                        o2.and_then(|o2| o2_corrected(c, reference_pct, o2))
                    }
                    Conversion::ExhaustVolume { reference_m3_per_t } => {
                        match (flow, production_t_h) {
                            (Some(f), Some(p)) => {
                                reference_exhaust_corrected(c, f, p, reference_m3_per_t)
                            }
                            _ => None,
                        }
                    }
                };
                // Without the O2 (or flow and production) the converted value is unknown: the
                // sample counts as out of range in the converted window only.
                let (zv, zq) = match z {
                    Some(z) => (z, q),
                    None => (f64::NAN, if q.is_good() { Quality::OutOfRange } else { q }),
                };
                feed(
                    format!("{pollutant}_zs_mg_m3"),
                    "mg/m3",
                    None,
                    Sample {
                        ts: r.ts,
                        value: zv,
                        quality: zq,
                        rate_per_h: None,
                    },
                );
            }
            let (mq, mv) = match flow {
                Some(f) => (q, mass_flow_kg_h(c, f)),
                None => (if q.is_good() { Quality::CommFail } else { q }, f64::NAN),
            };
            if pollutant == "so2" {
                so2_update = Some((mq.is_good() && mv.is_finite()).then_some(mv));
            }
            feed(
                format!("{pollutant}_kg_h"),
                "kg/h",
                Some("kg"),
                Sample {
                    ts: r.ts,
                    value: mv,
                    quality: mq,
                    rate_per_h: Some(mv),
                },
            );
        }
        if let Some(u) = so2_update {
            self.stacks[i].latest_so2_kg_h = u;
        }
        self.emit_aggregates(aggs, out);
    }

    fn smelter(&mut self, i: usize, batch: &ReadingBatch, out: &mut Vec<Record>) {
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
        let rates = super::snapshot::SmelterRates {
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

    fn smelter_clock(&mut self, i: usize, ts: Timestamp, out: &mut Vec<Record>) {
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
                let end = Timestamp((d + 1) * super::time::DAY_MS - self.offset_ms);
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

    /// Push the closed windows, each valid hour of the concentration the limits apply to
    /// preceded by its exceedance event: the converted `<p>_zs_mg_m3` where the stack has a
    /// conversion, the measured `<p>_mg_m3` otherwise.
    fn emit_aggregates(&self, aggs: Vec<Aggregate>, out: &mut Vec<Record>) {
        for a in aggs {
            if a.period == Period::Hour
                && let Some(stack) = self.stacks.iter().find(|s| s.name == a.subject)
                && let Some(p) = a.quantity.strip_suffix(if stack.conversion.is_some() {
                    "_zs_mg_m3"
                } else {
                    "_mg_m3"
                })
                && let Some(limit) = stack.limits.get(p)
                && let Some(e) = check_hour(&a, *limit)
            {
                out.push(Record::Event(e));
            }
            out.push(Record::Aggregate(a));
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
        calc: Arc::from("copper"),
        ts: end,
        metrics: vec![
            metric("concentrate_feed_tph", r.feed_tph, "t/h", end, &l),
            metric("oxygen_flow_nm3h", r.oxygen_nm3_h, "Nm3/h", end, &l),
            metric("oxygen_enrichment_pct", r.enrichment_pct, "%", end, &l),
            metric("oxygen_nm3_per_t_concentrate", o2_per_t, "Nm3/t", end, &l),
            metric("acid_plant_so2_kg_h", r.inlet_so2_kg_h, "kg/h", end, &l),
            metric("stack_so2_kg_h", r.stack_so2_kg_h, "kg/h", end, &l),
            metric("sulphur_capture_pct", capture, "%", end, &l),
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
        metric("concentrate_t", Some(acc.concentrate_t), "t", end, l),
        metric("oxygen_nm3", Some(acc.oxygen_nm3), "Nm3", end, l),
        metric(
            "oxygen_nm3_per_t_concentrate",
            oxygen_per_t_concentrate(acc.oxygen_nm3, acc.concentrate_t),
            "Nm3/t",
            end,
            l,
        ),
    ];
    if has_so2 {
        metrics.push(metric(
            "acid_plant_so2_t",
            Some(acc.inlet_so2_kg / 1000.0),
            "t",
            end,
            l,
        ));
        metrics.push(metric(
            "stack_so2_t",
            Some(acc.stack_so2_kg / 1000.0),
            "t",
            end,
            l,
        ));
        metrics.push(metric(
            "sulphur_capture_pct",
            sulphur_capture_pct(acc.inlet_so2_kg, acc.stack_so2_kg),
            "%",
            end,
            l,
        ));
    }
    if has_copper {
        metrics.push(metric("copper_t", Some(acc.copper_t), "t", end, l));
    }
    if has_energy {
        metrics.push(metric("energy_kgce", Some(acc.energy_kgce), "kgce", end, l));
        metrics.push(metric("energy_kgce_per_t", kgce_t, "kgce/t", end, l));
        metrics.push(metric(
            "energy_grade",
            kgce_t.map(|v| grade(&sm.grade, v).as_number()),
            "",
            end,
            l,
        ));
    }
    MetricBatch {
        calc: Arc::from("copper"),
        ts: end,
        metrics,
    }
}

pub(super) fn metric(
    name: &str,
    value: Option<f64>,
    unit: &str,
    ts: Timestamp,
    labels: &[(Arc<str>, Arc<str>)],
) -> Metric {
    let value = value.filter(|v| v.is_finite());
    Metric {
        name: Arc::from(name),
        quality: if value.is_some() {
            Quality::Good
        } else {
            Quality::Stale
        },
        value,
        unit: Arc::from(unit),
        ts,
        labels: labels.to_vec(),
    }
}

pub(super) fn num(r: &Reading) -> Option<f64> {
    r.value
        .as_ref()
        .and_then(|v| v.as_f64())
        .filter(|v| v.is_finite())
}

pub(super) fn raw_u64(r: &Reading) -> Option<u64> {
    use crate::model::Value;
    match r.value.as_ref()? {
        Value::UInt(u) => Some(*u),
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::Float(f) if *f >= 0.0 && f.is_finite() => Some(*f as u64),
        _ => None,
    }
}
