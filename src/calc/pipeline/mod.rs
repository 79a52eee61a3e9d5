//! The calculator stage as one object: routes each batch to the potline, stack or smelter it
//! belongs to and turns the state changes into records.
//!
//! The potlines live in [`potline`], the stacks in [`stack`], the copper smelters in
//! [`smelter`]; this module holds the stage itself (building, routing, flushing, snapshots) and
//! the helpers they share.

use std::collections::HashMap;
use std::sync::Arc;

use super::coefficients::{Coefficients, GwpTable};
use super::snapshot::{PipelineSnapshot, SNAPSHOT_VERSION, SmelterSnapshot, StackSnapshot};
use super::{CalcConfig, CalcError, SimulatedTime, glob_match};
use crate::model::{Metric, Quality, Reading, ReadingBatch, Record, Timestamp};

mod potline;
mod smelter;
mod stack;

use potline::Line;
pub(super) use potline::LineExtra;
use smelter::Smelter;
use stack::Stack;

/// Where a batch's device belongs: a potline's rectifier, pots or auxiliary meters, a stack or
/// a smelter.
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
    /// The clock of `[calc.simulated_time]`, its scale and start checked.
    fn new(st: &SimulatedTime) -> Result<Self, CalcError> {
        if !(st.scale.is_finite() && st.scale > 0.0) {
            return Err(CalcError::Invalid {
                key: "simulated_time.scale".into(),
                message: format!("{} is not a number above 0", st.scale),
            });
        }
        let start = humantime::parse_rfc3339(&st.start).map_err(|e| CalcError::Invalid {
            key: "simulated_time.start".into(),
            message: format!(
                "`{}` is not an RFC 3339 UTC time like 2025-03-01T15:58:00Z: {e}",
                st.start
            ),
        })?;
        let start_ms = start
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Ok(SimClock {
            scale: st.scale,
            start_ms,
            anchor_ms: None,
        })
    }

    fn map(&mut self, ts: Timestamp) -> Timestamp {
        let anchor = *self.anchor_ms.get_or_insert(ts.0);
        Timestamp(self.start_ms + ((ts.0 - anchor) as f64 * self.scale).round() as i64)
    }
}

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
        let stacks = cfg
            .stacks
            .iter()
            .enumerate()
            .map(|(i, role)| Stack::new(i, role, &coef, offset_ms))
            .collect::<Result<Vec<_>, _>>()?;
        let smelters = cfg
            .smelters
            .iter()
            .enumerate()
            .map(|(i, role)| Smelter::new(i, role, cfg, &coef))
            .collect::<Result<Vec<_>, _>>()?;
        let clock = cfg.simulated_time.as_ref().map(SimClock::new).transpose()?;
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
