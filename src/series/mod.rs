//! The trends in memory: a bounded ring of time buckets per series, fed by the fan-out with the
//! live readings and the calculators' records, read by `GET /api/v1/series` (`http::series`),
//! which answers what is older than a ring from the history store.
//!
//! ```text
//! fan-out ── ReadingBatch ──► record_batches ─┐
//!         ── Metrics, hour Aggregates ──► record ──► SeriesStore { Key → Ring } ──► query
//! ```
//!
//! # What is kept
//! | series (name) | from | class |
//! |---|---|---|
//! | `reading:<device>/line_current_ka`, `sum:line_current_ka` (the line: sum of the rectifiers) | readings of [`LINE_CURRENT_POINT`] | trend |
//! | `reading:<device>/cell_voltage_v` (one per pot) | readings of [`CELL_VOLTAGE_POINT`] | cell |
//! | `mean:cell_voltage_v` (mean over the pots; min/max: the lowest and highest pot) | the same readings | trend |
//! | `reading:<device>/<point>` for concentrations (unit `mg/m3`) | readings | trend |
//! | `metric:<calc>/<name>` with its labels: the calculators' minute figures (no `period`, no `cell` label), e.g. `dc_kwh_per_t_today` | calculator metrics | minute |
//! | `hour:<subject>/<quantity>`: hourly windows (avg, min, max, validity as quality) | closed hour aggregates | hour |
//!
//! # Bounds
//! Each class has a bucket width, a ring length and a most number of series ([`CLASSES`]); a
//! series beyond the cap of its class is not kept (counted in [`SeriesStore::refused`]). Rings
//! take their memory when the series appears, [`BUCKET_BYTES`] per bucket, so the store never
//! holds more than [`MEMORY_BOUND_BYTES`] of buckets (29 MB, 27.7 MiB; a line of 300 pots with
//! its trends uses about 6 MB).
//!
//! # Quality
//! Values of samples whose quality is `comm_fail`, `device_exception` or `out_of_range` are not
//! used; a bucket is `good` when all its samples were, otherwise it carries the quality of its last
//! other sample. Hourly windows carry their own quality; an invalid window has no value.

pub mod references;
pub mod ring;
mod selector;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::history::HistoryStore;
use crate::model::{Period, ReadingBatch, Record};

pub use ring::{Bucket, Combine, Ring, downsample};
pub use selector::{Selector, SelectorError};

/// The point whose readings are the line current (kA), per rectifier device.
pub const LINE_CURRENT_POINT: &str = "line_current_ka";
/// The point whose readings are a pot's cell voltage (V).
pub const CELL_VOLTAGE_POINT: &str = "cell_voltage_v";
/// The unit of the concentration points kept.
pub const CONCENTRATION_UNIT: &str = "mg/m3";

/// Bucket width, ring length and series cap of one kind of series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// Name in the answer (`trend`, `cell`, `minute`, `hour`).
    pub name: &'static str,
    /// Bucket width, ms.
    pub resolution_ms: i64,
    /// Buckets kept per series.
    pub slots: usize,
    /// Most series of this class.
    pub max_series: usize,
}

/// Line current, mean cell voltage, concentrations: 10 s buckets over 6 hours, 128 series.
pub const TRENDS: Class = Class {
    name: "trend",
    resolution_ms: 10_000,
    slots: 2_160,
    max_series: 128,
};
/// One pot's cell voltage: 5 s buckets (min and max keep an anode effect's peak) over 1 hour,
/// 1,024 pots.
pub const CELLS: Class = Class {
    name: "cell",
    resolution_ms: 5_000,
    slots: 720,
    max_series: 1_024,
};
/// The calculators' minute figures: one bucket per minute over 24 hours (a whole day's kWh/t),
/// 128 series.
pub const MINUTES: Class = Class {
    name: "minute",
    resolution_ms: 60_000,
    slots: 1_440,
    max_series: 128,
};
/// Hourly windows: 48 hours, 256 series; older hours come from the history store.
pub const HOURS: Class = Class {
    name: "hour",
    resolution_ms: 3_600_000,
    slots: 48,
    max_series: 256,
};
/// Every class.
pub const CLASSES: [Class; 4] = [TRENDS, CELLS, MINUTES, HOURS];
/// Memory of one bucket.
pub const BUCKET_BYTES: usize = std::mem::size_of::<Bucket>();
/// The most memory the buckets of a full store take.
pub const MEMORY_BOUND_BYTES: usize = {
    let mut total = 0;
    let mut i = 0;
    while i < CLASSES.len() {
        total += CLASSES[i].slots * CLASSES[i].max_series * BUCKET_BYTES;
        i += 1;
    }
    total
};

// The bound the documentation states.
const _: () = assert!(MEMORY_BOUND_BYTES <= 30_000_000);

/// Labels of a metric, in their given order.
pub type Labels = Vec<(Arc<str>, Arc<str>)>;

/// The identity of one series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// One point of one device.
    Reading {
        /// Device.
        device: Arc<str>,
        /// Point.
        point: Arc<str>,
    },
    /// A point summed over its devices.
    Sum(Arc<str>),
    /// A point averaged over its devices.
    Mean(Arc<str>),
    /// A computed metric.
    Metric {
        /// Calculator.
        calc: Arc<str>,
        /// Metric name.
        name: Arc<str>,
        /// Labels.
        labels: Labels,
    },
    /// Hourly windows of an aggregate.
    Hour {
        /// Stack (or other subject).
        subject: Arc<str>,
        /// Quantity.
        quantity: Arc<str>,
    },
}

impl Key {
    /// The series' name in the API (labels of a metric apart).
    pub fn name(&self) -> String {
        match self {
            Key::Reading { device, point } => format!("reading:{device}/{point}"),
            Key::Sum(p) => format!("sum:{p}"),
            Key::Mean(p) => format!("mean:{p}"),
            Key::Metric { calc, name, .. } => format!("metric:{calc}/{name}"),
            Key::Hour { subject, quantity } => format!("hour:{subject}/{quantity}"),
        }
    }

    /// Its class.
    pub fn class(&self) -> Class {
        match self {
            Key::Reading { point, .. } if &**point == CELL_VOLTAGE_POINT => CELLS,
            Key::Reading { .. } | Key::Sum(_) | Key::Mean(_) => TRENDS,
            Key::Metric { .. } => MINUTES,
            Key::Hour { .. } => HOURS,
        }
    }

    /// A metric's labels (empty for other series).
    pub fn labels(&self) -> &[(Arc<str>, Arc<str>)] {
        match self {
            Key::Metric { labels, .. } => labels,
            _ => &[],
        }
    }
}

/// A horizontal line to draw with a series: a limit or a grade bound.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reference {
    /// What it is (`limit`, `level 1`…).
    pub label: String,
    /// Its value, in the series' unit.
    pub value: f64,
}

/// Which series a [`Reference`] belongs to: hourly windows of a subject's quantity, the readings
/// of a point on devices matching a glob (`source/device` or `device`), or a metric with a label.
#[derive(Debug, Clone, PartialEq)]
pub enum RefTarget {
    /// `hour:<subject>/<quantity>` and `day:<subject>/<quantity>`.
    Window {
        /// Subject.
        subject: String,
        /// Quantity.
        quantity: String,
    },
    /// `reading:<device>/<point>` for devices matching the glob.
    Reading {
        /// Glob of `source/device` or `device`.
        device_glob: String,
        /// Point.
        point: String,
    },
    /// `metric:<calc>/<name>` carrying `label`.
    Metric {
        /// Metric name.
        name: String,
        /// A label it carries.
        label: (String, String),
    },
}

/// One series of the catalogue (`GET /api/v1/series/names`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Listed {
    /// Its name in a query.
    pub name: String,
    /// A metric's labels.
    pub labels: BTreeMap<Arc<str>, Arc<str>>,
    /// Unit.
    pub unit: Arc<str>,
    /// Class (`trend`, `cell`, `minute`, `hour`).
    pub class: &'static str,
    /// Limits and bounds that apply to it.
    pub references: Vec<Reference>,
}

/// One series as stored, for an answer.
#[derive(Debug, Clone)]
pub struct Found {
    /// The series.
    pub key: Key,
    /// Its unit.
    pub unit: Arc<str>,
    /// Its class.
    pub class: Class,
    /// Buckets in the asked range, oldest first.
    pub buckets: Vec<Bucket>,
    /// Start of the oldest bucket the ring holds (what is older must come from history).
    pub oldest_ms: Option<i64>,
    /// Limits and bounds to draw with it.
    pub references: Vec<Reference>,
}

#[derive(Debug)]
struct Entry {
    ring: Ring,
    unit: Arc<str>,
    references: Vec<Reference>,
}

#[derive(Debug, Default)]
struct Inner {
    series: BTreeMap<Key, Entry>,
    per_class: [usize; CLASSES.len()],
    refused: u64,
    references: Vec<(RefTarget, Reference)>,
}

/// The store (see the module documentation). One lock; every call holds it only while it
/// copies or updates buckets, never across an `.await`.
#[derive(Debug, Default)]
pub struct SeriesStore {
    inner: Mutex<Inner>,
    history: Mutex<Option<Arc<HistoryStore>>>,
}

fn class_index(c: Class) -> usize {
    CLASSES.iter().position(|k| *k == c).unwrap_or(0)
}

impl Inner {
    /// The entry of `key`, created if its class has room; `source` places a reading's device for
    /// the references' globs.
    fn entry(&mut self, key: &Key, unit: &Arc<str>, source: &str) -> Option<&mut Entry> {
        if !self.series.contains_key(key) {
            let class = key.class();
            let i = class_index(class);
            if self.per_class[i] >= class.max_series {
                self.refused += 1;
                return None;
            }
            self.per_class[i] += 1;
            let combine = match key {
                Key::Sum(_) => Combine::SumOfDevices,
                Key::Mean(_) => Combine::MeanOfDevices,
                _ => Combine::Plain,
            };
            let references = self
                .references
                .iter()
                .filter(|(t, _)| target_matches(t, key, source))
                .map(|(_, r)| r.clone())
                .collect();
            self.series.insert(
                key.clone(),
                Entry {
                    ring: Ring::new(class.resolution_ms, class.slots, combine),
                    unit: unit.clone(),
                    references,
                },
            );
        }
        self.series.get_mut(key)
    }
}

fn target_matches(t: &RefTarget, key: &Key, source: &str) -> bool {
    match (t, key) {
        (
            RefTarget::Window { subject, quantity },
            Key::Hour {
                subject: s,
                quantity: q,
            },
        ) => **s == **subject && **q == **quantity,
        (RefTarget::Reading { device_glob, point }, Key::Reading { device, point: p }) => {
            **p == **point
                && (crate::calc::glob_match(device_glob, device)
                    || crate::calc::glob_match(device_glob, &format!("{source}/{device}")))
        }
        (
            RefTarget::Metric { name, label },
            Key::Metric {
                name: n, labels, ..
            },
        ) => {
            **n == **name
                && labels
                    .iter()
                    .any(|(k, v)| **k == *label.0 && **v == *label.1)
        }
        _ => false,
    }
}

impl SeriesStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("series lock is never poisoned: holders do not panic")
    }

    /// Set the limits and grade bounds drawn with the series (from the calculators'
    /// configuration); series created from now on get those that apply to them.
    pub fn set_references(&self, refs: Vec<(RefTarget, Reference)>) {
        self.lock().references = refs;
    }

    /// The history store that answers what is older than the rings, if there is one.
    pub fn set_history(&self, store: Option<Arc<HistoryStore>>) {
        *self
            .history
            .lock()
            .expect("history lock is never poisoned: holders do not panic") = store;
    }

    /// The history store, if any.
    pub fn history(&self) -> Option<Arc<HistoryStore>> {
        self.history
            .lock()
            .expect("history lock is never poisoned: holders do not panic")
            .clone()
    }

    /// The references for windows of `subject`/`quantity` (for daily windows, which have no
    /// ring).
    pub fn window_references(&self, subject: &str, quantity: &str) -> Vec<Reference> {
        let key = Key::Hour {
            subject: Arc::from(subject),
            quantity: Arc::from(quantity),
        };
        self.lock()
            .references
            .iter()
            .filter(|(t, _)| target_matches(t, &key, ""))
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Take the kept points of `batches` (see the module documentation).
    pub fn record_batches(&self, batches: &[ReadingBatch]) {
        let mut inner = self.lock();
        for batch in batches {
            for r in &batch.readings {
                let point = &*r.point;
                let (own, combined) = if point == LINE_CURRENT_POINT {
                    (true, Some(Key::Sum(r.point.clone())))
                } else if point == CELL_VOLTAGE_POINT {
                    (true, Some(Key::Mean(r.point.clone())))
                } else {
                    (&*r.unit == CONCENTRATION_UNIT, None)
                };
                let value = r.value.as_ref().and_then(crate::model::Value::as_f64);
                let ts = r.ts.unix_ms();
                if own {
                    let key = Key::Reading {
                        device: batch.device.clone(),
                        point: r.point.clone(),
                    };
                    if let Some(e) = inner.entry(&key, &r.unit, &batch.source) {
                        e.ring.add(&batch.device, ts, value, r.quality);
                    }
                }
                if let Some(key) = combined
                    && let Some(e) = inner.entry(&key, &r.unit, &batch.source)
                {
                    e.ring.add(&batch.device, ts, value, r.quality);
                }
            }
        }
    }

    /// Take the calculators' minute figures and closed hourly windows among `records`.
    pub fn record(&self, records: &[Record]) {
        let mut inner = self.lock();
        for record in records {
            match record {
                Record::Metrics(batch) => {
                    for m in &batch.metrics {
                        if m.labels
                            .iter()
                            .any(|(k, _)| &**k == "period" || &**k == "cell")
                        {
                            continue;
                        }
                        let key = Key::Metric {
                            calc: batch.calc.clone(),
                            name: m.name.clone(),
                            labels: m.labels.clone(),
                        };
                        if let Some(e) = inner.entry(&key, &m.unit, "") {
                            e.ring.add(&batch.calc, m.ts.unix_ms(), m.value, m.quality);
                        }
                    }
                }
                Record::Aggregate(a) if a.period == Period::Hour => {
                    let key = Key::Hour {
                        subject: a.subject.clone(),
                        quantity: a.quantity.clone(),
                    };
                    if let Some(e) = inner.entry(&key, &a.unit, "") {
                        e.ring.put(window_bucket(a));
                    }
                }
                _ => {}
            }
        }
    }

    /// The series `sel` names, with their buckets overlapping `from_ms..=to_ms`.
    pub fn query(&self, sel: &Selector, from_ms: i64, to_ms: i64) -> Vec<Found> {
        let inner = self.lock();
        inner
            .series
            .iter()
            .filter(|(k, _)| sel.matches(k))
            .map(|(k, e)| Found {
                key: k.clone(),
                unit: e.unit.clone(),
                class: k.class(),
                buckets: e.ring.range(from_ms, to_ms),
                oldest_ms: e.ring.oldest_ms(),
                references: e.references.clone(),
            })
            .collect()
    }

    /// Every series kept, in name order, followed by the hourly windows a limit is configured
    /// for that have no window yet (so that a display knows them before their first hour
    /// closes: older hours may be in the history store).
    pub fn catalogue(&self) -> Vec<Listed> {
        let inner = self.lock();
        let mut out: Vec<Listed> = inner
            .series
            .iter()
            .map(|(k, e)| Listed {
                name: k.name(),
                labels: k.labels().iter().cloned().collect(),
                unit: e.unit.clone(),
                class: k.class().name,
                references: e.references.clone(),
            })
            .collect();
        for (t, r) in &inner.references {
            let RefTarget::Window { subject, quantity } = t else {
                continue;
            };
            let key = Key::Hour {
                subject: Arc::from(subject.as_str()),
                quantity: Arc::from(quantity.as_str()),
            };
            if inner.series.contains_key(&key) {
                continue;
            }
            let name = key.name();
            match out.iter_mut().find(|l| l.name == name) {
                Some(l) => l.references.push(r.clone()),
                None => out.push(Listed {
                    name,
                    labels: BTreeMap::new(),
                    // Limits are set on concentrations only.
                    unit: Arc::from(CONCENTRATION_UNIT),
                    class: HOURS.name,
                    references: vec![r.clone()],
                }),
            }
        }
        out
    }

    /// Series not kept because their class was full, since start.
    pub fn refused(&self) -> u64 {
        self.lock().refused
    }

    /// Series kept.
    pub fn len(&self) -> usize {
        self.lock().series.len()
    }

    /// No series kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The bucket of one closed window: its average, extremes and quality (an invalid window has no
/// value).
pub fn window_bucket(a: &crate::model::Aggregate) -> Bucket {
    let (avg, min, max) = if a.valid {
        (a.avg, a.min, a.max)
    } else {
        (None, None, None)
    };
    Bucket::window(a.start.unix_ms(), avg, min, max, a.quality)
}

#[cfg(test)]
mod tests;
