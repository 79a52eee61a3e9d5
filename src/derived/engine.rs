//! The running derived points: the latest value of every input, the counters' trailing
//! windows, and the evaluation of the entries whose inputs changed or whose period came.
//!
//! Pure like the calculators: no clock and no I/O; time comes from the readings and from the
//! `now` handed to [`Engine::evaluate`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use cel::Context;

use super::config::expr::{self, Compiled, ExprError};
use super::config::inputs::{Agg, Kind};
use super::config::{DerivedPoint, DerivedStream, Trigger};
use super::eval;
use crate::model::{Metric, MetricBatch, Quality, Reading, ReadingBatch, Record, Timestamp, Value};

pub use super::config::SOURCE;
/// The calculator name of derived points on the metrics stream.
pub const CALC: &str = "derived";

/// A validated point whose expression does not compile (validation prevents it).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("derived point {point}: {error}")]
pub struct EngineError {
    /// The point's name.
    pub point: Arc<str>,
    /// Why its expression does not compile.
    pub error: ExprError,
}

/// The latest state of one concrete input point.
#[derive(Debug, Clone)]
struct Slot {
    /// Good and finite value of the latest reading.
    value: Option<f64>,
    quality: Quality,
    ts: Option<Timestamp>,
    poll_interval_ms: u64,
    /// Good samples of a counter within `window_ms`, oldest first (rate and delta only).
    history: Option<VecDeque<(i64, f64)>>,
    window_ms: i64,
    /// Entries that read this slot.
    readers: Vec<usize>,
}

/// One variable of an entry: its kind and the slots it reads.
#[derive(Debug)]
struct Var {
    kind: Kind,
    slots: Vec<usize>,
    guarded: bool,
}

#[derive(Debug)]
struct Entry {
    point: DerivedPoint,
    compiled: Compiled,
    vars: Vec<Var>,
    /// An input changed since the last evaluation.
    dirty: bool,
    /// When a periodic entry is next due.
    due: Option<Timestamp>,
}

/// What one evaluation gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The value; `None` when it could not be computed or is not finite.
    pub value: Option<f64>,
    /// Quality under the rules of the module docs.
    pub quality: Quality,
    /// The newest input's timestamp.
    pub ts: Timestamp,
}

/// What [`Engine::evaluate`] produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Every result, as poll batches of source `derived` (one per derived device): what the
    /// calculators, the latest readings and the trends take.
    pub batches: Vec<ReadingBatch>,
    /// The records for the spools: the batches of `live` entries and one metric batch of the
    /// `metrics` entries.
    pub records: Vec<Record>,
}

/// `(source, device)`.
type DeviceKey = (Arc<str>, Arc<str>);

/// The derived points of one configuration.
pub struct Engine {
    entries: Vec<Entry>,
    slots: Vec<Slot>,
    /// `(source, device)` → `(point, slot)` for every slot of that device.
    by_device: HashMap<DeviceKey, Vec<(Arc<str>, usize)>>,
    root: Context<'static, 'static>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("entries", &self.entries.len())
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl Engine {
    /// The engine of validated points (`Config::derived`). `Err` names an entry that does not
    /// compile, which validation prevents.
    pub fn new(points: &[DerivedPoint]) -> Result<Engine, EngineError> {
        let mut engine = Engine {
            entries: Vec::new(),
            slots: Vec::new(),
            by_device: HashMap::new(),
            root: eval::root_context(),
        };
        for (e, point) in points.iter().enumerate() {
            let compiled =
                expr::compile(&point.rewritten, &point.units).map_err(|error| EngineError {
                    point: point.name.clone(),
                    error,
                })?;
            let mut vars = Vec::new();
            for (input, resolved) in point.rewritten.inputs.iter().zip(&point.resolved) {
                let window_ms = match input.kind {
                    Kind::Rate(w) | Kind::Delta(w) => Some(w.as_millis() as i64),
                    _ => None,
                };
                let slots = resolved
                    .iter()
                    .map(|(source, device)| {
                        engine.slot(source, device, &input.pattern.point, window_ms, e)
                    })
                    .collect();
                vars.push(Var {
                    kind: input.kind,
                    slots,
                    guarded: input.guarded,
                });
            }
            engine.entries.push(Entry {
                point: point.clone(),
                compiled,
                vars,
                dirty: false,
                due: None,
            });
        }
        Ok(engine)
    }

    /// A new slot for `source/device.point`, read by entry `reader`.
    fn slot(
        &mut self,
        source: &Arc<str>,
        device: &Arc<str>,
        point: &str,
        window_ms: Option<i64>,
        reader: usize,
    ) -> usize {
        let id = self.slots.len();
        self.slots.push(Slot {
            value: None,
            quality: Quality::CommFail,
            ts: None,
            poll_interval_ms: 0,
            history: window_ms.map(|_| VecDeque::new()),
            window_ms: window_ms.unwrap_or(0),
            readers: vec![reader],
        });
        self.by_device
            .entry((source.clone(), device.clone()))
            .or_default()
            .push((Arc::from(point), id));
        id
    }

    /// Whether some entry has a clock period.
    pub fn has_periodic(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.point.trigger, Trigger::Period(_)))
    }

    /// Take the inputs in `records`: poll batches and the calculators' metrics.
    pub fn observe(&mut self, records: &[Record]) {
        for r in records {
            match r {
                Record::Batch(b) => self.on_batch(b),
                Record::Metrics(m) => self.on_metrics(m),
                _ => {}
            }
        }
    }

    /// Take one poll batch.
    pub fn on_batch(&mut self, batch: &ReadingBatch) {
        let Some(watched) = self
            .by_device
            .get(&(batch.source.clone(), batch.device.clone()))
        else {
            return;
        };
        for (point, slot) in watched {
            if let Some(r) = batch.readings.iter().find(|r| r.point == *point) {
                let value = r.value.as_ref().and_then(Value::as_f64);
                let s = &mut self.slots[*slot];
                s.poll_interval_ms = batch.poll_interval_ms;
                update(s, value, r.quality, r.ts);
                for &e in &s.readers {
                    self.entries[e].dirty = true;
                }
            }
        }
    }

    /// Take one batch of calculator metrics: `calc:<calc>/<first label>.<metric>`.
    fn on_metrics(&mut self, batch: &MetricBatch) {
        let source: Arc<str> = Arc::from(format!("calc:{}", batch.calc));
        for m in &batch.metrics {
            let device = m
                .labels
                .first()
                .map_or_else(|| Arc::from(""), |l| l.1.clone());
            let Some(watched) = self.by_device.get(&(source.clone(), device)) else {
                continue;
            };
            for (point, slot) in watched {
                if **point == *m.name {
                    let s = &mut self.slots[*slot];
                    update(s, m.value, m.quality, m.ts);
                    for &e in &s.readers {
                        self.entries[e].dirty = true;
                    }
                }
            }
        }
    }

    /// Evaluate every entry triggered by its inputs since the last call and every periodic
    /// entry whose period came by `now`; entries are evaluated in configuration order, and a
    /// result is an input of the entries after it at once.
    pub fn evaluate(&mut self, now: Timestamp) -> Output {
        let mut out = Output::default();
        let mut live: Vec<(Arc<str>, Reading, u64)> = Vec::new();
        let mut metrics = Vec::new();
        for e in 0..self.entries.len() {
            let entry = &mut self.entries[e];
            let run = match entry.point.trigger {
                Trigger::Batch => std::mem::take(&mut entry.dirty),
                Trigger::Period(p) => {
                    let due = entry.due.is_none_or(|d| d <= now);
                    if due {
                        let period_ms = p.as_millis().max(1) as i64;
                        entry.due = Some(Timestamp((now.0 / period_ms + 1) * period_ms));
                    }
                    due
                }
            };
            if !run {
                continue;
            }
            let Some(outcome) = self.evaluate_entry(e, now) else {
                continue;
            };
            let point = &self.entries[e].point;
            let interval_ms = match point.trigger {
                Trigger::Period(p) => p.as_millis() as u64,
                Trigger::Batch => 0,
            };
            let reading = Reading {
                point: point.name.clone(),
                value: outcome.value.map(Value::Float),
                unit: point.unit.clone(),
                quality: outcome.quality,
                ts: outcome.ts,
            };
            if point.stream == DerivedStream::Metrics {
                metrics.push(Metric {
                    name: point.name.clone(),
                    value: outcome.value,
                    unit: point.unit.clone(),
                    quality: outcome.quality,
                    ts: outcome.ts,
                    labels: point.labels.clone(),
                });
            }
            live.push((point.device.clone(), reading.clone(), interval_ms));
            // An earlier derived point is an input of the later ones.
            let batch = single(point.device.clone(), reading, interval_ms);
            self.on_batch(&batch);
        }
        out.batches = group(live);
        for b in &out.batches {
            let on_live: Vec<Reading> = b
                .readings
                .iter()
                .filter(|r| self.stream_of(&b.device, &r.point) == Some(DerivedStream::Live))
                .cloned()
                .collect();
            if !on_live.is_empty() {
                out.records.push(Record::Batch(ReadingBatch {
                    readings: on_live,
                    ..b.clone()
                }));
            }
        }
        if let Some(ts) = metrics.iter().map(|m: &Metric| m.ts).max() {
            out.records.push(Record::Metrics(MetricBatch {
                calc: Arc::from(CALC),
                ts,
                metrics,
            }));
        }
        out
    }

    fn stream_of(&self, device: &str, name: &str) -> Option<DerivedStream> {
        self.entries
            .iter()
            .find(|e| *e.point.device == *device && *e.point.name == *name)
            .map(|e| e.point.stream)
    }

    /// Evaluate entry `e`; `None` while none of its inputs has been seen.
    fn evaluate_entry(&self, e: usize, now: Timestamp) -> Option<Outcome> {
        let entry = &self.entries[e];
        let mut values = Vec::with_capacity(entry.vars.len());
        let mut newest: Option<Timestamp> = None;
        let mut bad_unguarded: Option<Quality> = None;
        let mut bad_any: Option<Quality> = None;
        for var in &entry.vars {
            let (value, quality) = self.var_value(var, now);
            for &s in &var.slots {
                newest = newest.max(self.slots[s].ts);
            }
            if !quality.is_good() {
                bad_any = Some(worst(bad_any, quality));
                if !var.guarded {
                    bad_unguarded = Some(worst(bad_unguarded, quality));
                }
            }
            values.push(value);
        }
        let ts = newest?;
        let (value, quality) = match entry.compiled.eval(&self.root, &values) {
            Ok(v) if v.is_finite() => (Some(v), bad_unguarded.unwrap_or(Quality::Good)),
            Ok(_) => (None, bad_any.unwrap_or(Quality::OutOfRange)),
            Err(_) => (None, bad_any.unwrap_or(Quality::OutOfRange)),
        };
        Some(Outcome { value, quality, ts })
    }

    /// The value (bound only when good) and quality of one variable at `now`.
    fn var_value(&self, var: &Var, now: Timestamp) -> (Option<f64>, Quality) {
        let quality_of = |s: &Slot| match s.ts {
            Some(ts) => s.quality.at_age(now.0 - ts.0, s.poll_interval_ms),
            None => Quality::CommFail,
        };
        match var.kind {
            Kind::Point => {
                let s = &self.slots[var.slots[0]];
                let q = quality_of(s);
                (s.value.filter(|_| q.is_good()), q)
            }
            Kind::Aggregate(agg) => {
                let mut bad: Option<Quality> = None;
                let mut good = Vec::with_capacity(var.slots.len());
                for &i in &var.slots {
                    let s = &self.slots[i];
                    let q = quality_of(s);
                    match s.value {
                        Some(v) if q.is_good() => good.push(v),
                        _ => bad = Some(worst(bad, q)),
                    }
                }
                let value = aggregate(agg, &good);
                let quality = match (agg, bad) {
                    (Agg::Count, _) | (_, None) => Quality::Good,
                    (_, Some(q)) => q,
                };
                (value, quality)
            }
            Kind::Rate(_) | Kind::Delta(_) => {
                let s = &self.slots[var.slots[0]];
                let q = quality_of(s);
                let h = s.history.as_ref().expect("counter slots keep a history");
                let value = match (h.front(), h.back()) {
                    (Some(&(t0, v0)), Some(&(t1, v1))) if t1 > t0 => Some(match var.kind {
                        Kind::Rate(_) => (v1 - v0) / ((t1 - t0) as f64 / 3_600_000.0),
                        _ => v1 - v0,
                    }),
                    _ => None,
                };
                let q = if value.is_none() && q.is_good() {
                    Quality::Stale
                } else {
                    q
                };
                (value.filter(|_| q.is_good()), q)
            }
        }
    }
}

/// Record a reading in a slot; a counter's window drops what is older than the window, and
/// starts over when the counter went backwards (a reset or a rollover).
fn update(s: &mut Slot, value: Option<f64>, quality: Quality, ts: Timestamp) {
    let good = value.filter(|v| v.is_finite() && quality.is_good());
    s.value = good;
    s.quality = if value.is_some_and(|v| !v.is_finite()) && quality.is_good() {
        Quality::OutOfRange
    } else {
        quality
    };
    s.ts = s.ts.max(Some(ts));
    if let (Some(h), Some(v)) = (s.history.as_mut(), good) {
        if h.back().is_some_and(|&(t, last)| v < last || ts.0 < t) {
            h.clear();
        }
        h.push_back((ts.0, v));
        while h.front().is_some_and(|&(t, _)| t < ts.0 - s.window_ms) {
            h.pop_front();
        }
    }
}

fn aggregate(agg: Agg, good: &[f64]) -> Option<f64> {
    if agg == Agg::Count {
        return Some(good.len() as f64);
    }
    if good.is_empty() {
        return None;
    }
    Some(match agg {
        Agg::Mean => good.iter().sum::<f64>() / good.len() as f64,
        Agg::Sum => good.iter().sum(),
        Agg::Min => good.iter().copied().fold(f64::INFINITY, f64::min),
        Agg::Max => good.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        Agg::Count => unreachable!("handled above"),
    })
}

/// How bad a quality is, for "the worst input's quality": no value at all first, then a value
/// known wrong, then one of doubtful standing.
fn severity(q: Quality) -> u8 {
    match q {
        Quality::Good => 0,
        Quality::Substituted => 1,
        Quality::Stale => 2,
        Quality::Maintenance => 3,
        Quality::Calibration => 4,
        Quality::OutOfRange => 5,
        Quality::DeviceException => 6,
        Quality::CommFail => 7,
    }
}

/// The worse of `a` (if any) and `b`.
pub fn worst(a: Option<Quality>, b: Quality) -> Quality {
    match a {
        Some(a) if severity(a) >= severity(b) => a,
        _ => b,
    }
}

fn single(device: Arc<str>, reading: Reading, interval_ms: u64) -> ReadingBatch {
    ReadingBatch {
        source: Arc::from(SOURCE),
        device,
        unit_id: 0,
        poll_interval_ms: interval_ms,
        scheduled: reading.ts,
        readings: vec![reading],
    }
}

/// One batch per derived device, in first-seen order.
fn group(results: Vec<(Arc<str>, Reading, u64)>) -> Vec<ReadingBatch> {
    let mut out: Vec<ReadingBatch> = Vec::new();
    for (device, reading, interval_ms) in results {
        match out.iter_mut().find(|b| b.device == device) {
            Some(b) => {
                b.scheduled = b.scheduled.max(reading.ts);
                b.poll_interval_ms = b.poll_interval_ms.max(interval_ms);
                b.readings.push(reading);
            }
            None => out.push(single(device, reading, interval_ms)),
        }
    }
    out
}
