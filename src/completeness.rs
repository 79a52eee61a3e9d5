//! Completeness accounting: per device and stream, per hour, how many values were expected,
//! received and delivered, so that the platform can see data completeness (the energy platform
//! expects at least 90 %).
//!
//! # Definitions
//! Hours are UTC clock hours, `[hh:00, hh+1:00)`. A value belongs to the hour of its own time: a
//! reading batch to the hour of its `scheduled` instant, a metric batch of its `ts`, an event of its
//! `ts`, an aggregate of the last instant of its window (an hourly aggregate to the hour it covers).
//! - **expected** (stream `live` only): for each poll class of a device (points sharing a
//!   `poll_interval`), `floor(window / poll_interval) × points`, summed over the classes. The window
//!   is the whole hour, except in the hour accounting first started (a fresh state directory: from
//!   that instant) and in a partial report at shutdown (up to that instant). A restart within the
//!   hour does not shorten the window: the cycles missed while the agent was down are missing data.
//!   The pollers' grids start when the agent starts, not on the hour, so a class whose interval
//!   does not divide the window may see one cycle more or less than expected.
//! - **received**: values that reached fan-out, by quality: readings (`live`), metric values
//!   (`metrics`), aggregates (`emissions`) and events (`events`, which carry no quality and count as
//!   `good`). A comm failure still yields a reading (quality `comm_fail`), so `received` counts cycles
//!   that ran and `good` the ones that produced data.
//! - **delivered**, per uplink: values in records the uplink's broker acknowledged (MQTT PUBACK, then
//!   the spool ack), never merely sent. Only streams the uplink carries are reported for it.
//!
//! For `metrics`, `events` and `emissions` the "device" is the producer: the calculator, the event
//! kind, the aggregate's subject. The completeness reports themselves (`calc = "completeness"`) and
//! the uplinks' own `outage` events are not counted.
//!
//! # Reports
//! [`Ledger::close_due`] closes every hour that ended at least [`CLOSE_DELAY`] ago and turns it into
//! one [`MetricBatch`] (`calc = "completeness"`) on the `metrics` stream; [`Ledger::partial`] does the
//! same for the open hours at shutdown, labelled `partial = "true"`. Closed hours stay in the ledger
//! for [`KEEP_CLOSED`] so that late deliveries (a replayed backlog) still show on `/metrics`, but are
//! not reported again.
//!
//! The ledger is pure: every method takes the time it should use, nothing reads a clock.
//! [`Completeness`] wraps it for the running agent and persists it to `completeness.json` in the
//! state directory (written atomically on the blocking pool, see [`crate::state_file`]) every
//! [`CHECKPOINT_EVERY`] and at shutdown, so a restart in the middle of an hour continues its
//! counts. A crash loses at most the last checkpoint interval of counts: the hour then shows fewer
//! values received and delivered than there were, never more.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Stream};
use crate::model::{EventKind, Metric, MetricBatch, Quality, Record, Timestamp};
use crate::state_file::StateFile;

/// Length of an accounting period.
pub const HOUR_MS: i64 = 3_600_000;
/// How long after its end an hour is closed: room for the last cycles to reach fan-out.
pub const CLOSE_DELAY: Duration = Duration::from_secs(60);
/// How long closed hours are kept (for `/metrics` and late deliveries).
pub const KEEP_CLOSED: Duration = Duration::from_secs(3 * 3600);
/// How often [`Completeness`] writes its state file.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
/// The `calc` of the reports, and the `{calc}` of their topic.
pub const CALC: &str = "completeness";
/// Name of the state file in the state directory.
pub const STATE_FILE: &str = "completeness.json";

/// Counts of one hour, by `(device, stream)`.
type HourCounts = BTreeMap<(Arc<str>, Stream), Counts>;

/// One device's poll classes: `(poll_interval_ms, points)`.
pub type DevicePlan = Vec<(u64, u64)>;

/// What the configuration expects per device, and which streams each uplink carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Device name → its poll classes.
    pub devices: BTreeMap<Arc<str>, DevicePlan>,
    /// Uplink name → the streams it carries.
    pub uplinks: Vec<(String, Vec<Stream>)>,
}

impl Plan {
    /// The plan of a configuration: every device's points grouped by `poll_interval` (the poll
    /// classes of the read plan), and every uplink's streams.
    pub fn from_config(cfg: &Config) -> Plan {
        let mut devices = BTreeMap::new();
        for source in &cfg.sources {
            for device in &source.devices {
                let mut classes: BTreeMap<u64, u64> = BTreeMap::new();
                for p in &device.points {
                    *classes
                        .entry(p.poll_interval.as_millis() as u64)
                        .or_default() += 1;
                }
                devices.insert(device.name.clone(), classes.into_iter().collect());
            }
        }
        Plan {
            devices,
            uplinks: cfg
                .uplinks
                .iter()
                .map(|u| (u.name.clone(), u.streams.clone()))
                .collect(),
        }
    }

    /// Readings expected from `device` over a window of `window_ms`.
    pub fn expected(&self, device: &str, window_ms: i64) -> Option<u64> {
        let classes = self.devices.get(device)?;
        let window = u64::try_from(window_ms.max(0)).unwrap_or(0);
        Some(
            classes
                .iter()
                .filter(|(interval, _)| *interval > 0)
                .map(|(interval, points)| window / interval * points)
                .sum(),
        )
    }
}

/// Where a record's values are counted: `(device, stream, hour start)` and how many values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Device, or the producer of a derived record (calculator, event kind, aggregate subject).
    pub device: Arc<str>,
    /// The record's stream.
    pub stream: Stream,
    /// Start of the hour, ms since the Unix epoch.
    pub hour_ms: i64,
    /// Values per quality.
    pub by_quality: [u64; Quality::ALL.len()],
}

impl Tally {
    /// Values in the record, any quality.
    pub fn values(&self) -> u64 {
        self.by_quality.iter().sum()
    }
}

/// Start of the UTC hour that contains `ts`.
pub fn hour_of(ts: Timestamp) -> i64 {
    ts.unix_ms().div_euclid(HOUR_MS) * HOUR_MS
}

/// How a live batch of `device` counts, from its scheduled instant and its readings' qualities:
/// the same as [`tally`] of the decoded batch.
pub fn live_tally(
    device: Arc<str>,
    scheduled: Timestamp,
    by_quality: [u64; Quality::ALL.len()],
) -> Tally {
    Tally {
        device,
        stream: Stream::Live,
        hour_ms: hour_of(scheduled),
        by_quality,
    }
}

/// How a record counts, or `None` for records that are not accounted (completeness reports,
/// outage events: the agent's own bookkeeping).
pub fn tally(record: &Record) -> Option<Tally> {
    let mut by_quality = [0u64; Quality::ALL.len()];
    let (device, ts) = match record {
        Record::Batch(b) => {
            for r in &b.readings {
                by_quality[r.quality as usize] += 1;
            }
            return Some(live_tally(b.device.clone(), b.scheduled, by_quality));
        }
        Record::Metrics(m) => {
            if &*m.calc == CALC {
                return None;
            }
            for metric in &m.metrics {
                by_quality[metric.quality as usize] += 1;
            }
            (m.calc.clone(), m.ts)
        }
        Record::Event(e) => {
            if e.kind == EventKind::Outage {
                return None;
            }
            by_quality[Quality::Good as usize] += 1;
            (Arc::from(e.kind.as_str()), e.ts)
        }
        Record::Aggregate(a) => {
            by_quality[a.quality as usize] += 1;
            // The window is [start, end): an hourly aggregate belongs to the hour it covers.
            (a.subject.clone(), Timestamp(a.end.unix_ms() - 1))
        }
    };
    Some(Tally {
        device,
        stream: record.stream(),
        hour_ms: hour_of(ts),
        by_quality,
    })
}

/// The counts of one device and stream in one hour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Values received per quality, indexed like [`Quality::ALL`].
    pub received: [u64; Quality::ALL.len()],
    /// Values delivered per uplink.
    pub delivered: BTreeMap<String, u64>,
}

/// One hour in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Hour {
    /// Start of the expected window: the hour start, or later in the first hour of accounting.
    window_start_ms: i64,
    /// Reported by `close_due` (or not to be reported: see `Ledger::restore`).
    closed: bool,
    /// `(device, stream)` → counts (a list of `[device, stream, counts]` in JSON).
    #[serde(with = "counts_as_list")]
    counts: HourCounts,
}

/// JSON object keys must be strings: the counts map is stored as a list of entries.
mod counts_as_list {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(map: &HourCounts, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter().map(|((d, st), c)| (d, st, c)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HourCounts, D::Error> {
        let list: Vec<(Arc<str>, Stream, Counts)> = Vec::deserialize(d)?;
        Ok(list.into_iter().map(|(d, st, c)| ((d, st), c)).collect())
    }
}

/// The persisted form of a [`Ledger`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// When accounting first started (ms): the expected window of that hour starts there.
    pub started_ms: i64,
    /// Hour start → `[device, stream, counts]` and flags.
    hours: BTreeMap<i64, Hour>,
}

/// One row of a report: one device and stream in one hour.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Device (or producer).
    pub device: Arc<str>,
    /// Stream.
    pub stream: Stream,
    /// Values expected (`live` devices of the read plan only).
    pub expected: Option<u64>,
    /// Values received per quality (non-zero ones only, in [`Quality::ALL`] order).
    pub received: Vec<(Quality, u64)>,
    /// Values delivered per uplink that carries `stream` (zeros included).
    pub delivered: Vec<(String, u64)>,
}

impl Row {
    /// Values received, any quality.
    pub fn received_total(&self) -> u64 {
        self.received.iter().map(|(_, n)| n).sum()
    }
}

/// One hour's report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Start of the hour.
    pub hour: Timestamp,
    /// The window `expected` covers.
    pub window: (Timestamp, Timestamp),
    /// A report at shutdown of an hour that had not ended.
    pub partial: bool,
    /// One row per device and stream; every device of the read plan has a `live` row.
    pub rows: Vec<Row>,
}

/// The accounting itself: pure, fed with timestamped input.
#[derive(Debug, Clone)]
pub struct Ledger {
    plan: Plan,
    state: State,
}

impl Ledger {
    /// A ledger that starts accounting at `now`.
    pub fn new(plan: Plan, now: Timestamp) -> Ledger {
        Ledger {
            plan,
            state: State {
                started_ms: now.unix_ms(),
                hours: BTreeMap::new(),
            },
        }
    }

    /// A ledger that continues a persisted state.
    pub fn restore(plan: Plan, state: State) -> Ledger {
        Ledger { plan, state }
    }

    /// The state to persist.
    pub fn state(&self) -> &State {
        &self.state
    }

    fn hour_mut(&mut self, hour_ms: i64) -> &mut Hour {
        let started = self.state.started_ms;
        self.state.hours.entry(hour_ms).or_insert_with(|| Hour {
            window_start_ms: hour_ms.max(started.min(hour_ms + HOUR_MS)),
            closed: false,
            counts: BTreeMap::new(),
        })
    }

    /// Count records that reached fan-out.
    pub fn received<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) {
        for t in records.into_iter().filter_map(tally) {
            let counts = self
                .hour_mut(t.hour_ms)
                .counts
                .entry((t.device, t.stream))
                .or_default();
            for (c, n) in counts.received.iter_mut().zip(t.by_quality) {
                *c += n;
            }
        }
    }

    /// Count records `uplink`'s broker acknowledged. Hours no longer kept are ignored.
    pub fn delivered<'a>(&mut self, uplink: &str, tallies: impl IntoIterator<Item = &'a Tally>) {
        let oldest = self.state.hours.keys().next().copied();
        for t in tallies {
            if oldest.is_some_and(|o| t.hour_ms < o) {
                // Older than every hour kept: already reported and forgotten.
                continue;
            }
            *self
                .hour_mut(t.hour_ms)
                .counts
                .entry((t.device.clone(), t.stream))
                .or_default()
                .delivered
                .entry(uplink.to_owned())
                .or_default() += t.values();
        }
    }

    /// Reports of every hour that ended at least [`CLOSE_DELAY`] before `now` and was not reported
    /// yet, oldest first; also forgets hours closed more than [`KEEP_CLOSED`] ago. Hours in which
    /// nothing was counted are reported too (every planned device then shows 0 received): an hour
    /// the agent was down for entirely has no entry and is not reported.
    pub fn close_due(&mut self, now: Timestamp) -> Vec<Report> {
        let now_ms = now.unix_ms();
        let delay = CLOSE_DELAY.as_millis() as i64;
        let due: Vec<i64> = self
            .state
            .hours
            .iter()
            .filter(|(h, hour)| !hour.closed && **h + HOUR_MS + delay <= now_ms)
            .map(|(h, _)| *h)
            .collect();
        let reports = due
            .iter()
            .map(|h| {
                let hour = self.state.hours.get_mut(h).expect("listed above");
                hour.closed = true;
                self.report(*h, *h + HOUR_MS, false)
            })
            .collect();
        let keep = KEEP_CLOSED.as_millis() as i64;
        self.state
            .hours
            .retain(|h, hour| !hour.closed || *h + HOUR_MS + keep > now_ms);
        reports
    }

    /// Reports of the hours not closed yet, up to `now` (at shutdown), marked partial. They stay
    /// open: after a restart the hour continues and is reported in full when it closes.
    pub fn partial(&self, now: Timestamp) -> Vec<Report> {
        let now_ms = now.unix_ms();
        self.state
            .hours
            .iter()
            .filter(|(h, hour)| !hour.closed && **h <= now_ms)
            .map(|(h, _)| self.report(*h, now_ms.min(*h + HOUR_MS), *h + HOUR_MS > now_ms))
            .collect()
    }

    /// The report of the hour containing `at` so far (ended at `at` if it has not ended), if it
    /// has counts. For the live view (`/metrics`).
    pub fn hour_at(&self, at: Timestamp) -> Option<Report> {
        let h = hour_of(at);
        self.state.hours.contains_key(&h).then(|| {
            let end = at.unix_ms().min(h + HOUR_MS);
            self.report(h, end, end < h + HOUR_MS)
        })
    }

    fn report(&self, hour_ms: i64, end_ms: i64, partial: bool) -> Report {
        let hour = &self.state.hours[&hour_ms];
        let window_start = hour.window_start_ms.min(end_ms);
        let mut keys: Vec<(Arc<str>, Stream)> = hour.counts.keys().cloned().collect();
        for device in self.plan.devices.keys() {
            keys.push((device.clone(), Stream::Live));
        }
        keys.sort();
        keys.dedup();
        let empty = Counts::default();
        let rows = keys
            .into_iter()
            .map(|(device, stream)| {
                let c = hour.counts.get(&(device.clone(), stream)).unwrap_or(&empty);
                let expected = if stream == Stream::Live {
                    self.plan.expected(&device, end_ms - window_start)
                } else {
                    None
                };
                Row {
                    expected,
                    received: Quality::ALL
                        .iter()
                        .zip(c.received)
                        .filter(|(_, n)| *n > 0)
                        .map(|(q, n)| (*q, n))
                        .collect(),
                    delivered: self
                        .plan
                        .uplinks
                        .iter()
                        .filter(|(_, streams)| streams.contains(&stream))
                        .map(|(u, _)| (u.clone(), c.delivered.get(u).copied().unwrap_or(0)))
                        .collect(),
                    device,
                    stream,
                }
            })
            .collect();
        Report {
            hour: Timestamp(hour_ms),
            window: (Timestamp(window_start), Timestamp(end_ms)),
            partial,
            rows,
        }
    }
}

/// Delivered values as a share of the expected ones, in percent (`None` without an expectation).
pub fn percent(delivered: u64, expected: Option<u64>) -> Option<f64> {
    match expected {
        Some(e) if e > 0 => Some(delivered as f64 * 100.0 / e as f64),
        _ => None,
    }
}

impl Report {
    /// The report as a metrics record (`calc = "completeness"`, stream `metrics`). Metrics, each
    /// labelled `device`, `stream`, `hour` (RFC 3339 start of the hour) and `partial`:
    /// `completeness_expected_count`, `completeness_received_count` (one per quality, label
    /// `quality`), `completeness_delivered_count` and `completeness_delivered_pct` (per uplink,
    /// label `uplink`; the percentage only where something was expected).
    pub fn to_record(&self) -> Record {
        let hour: Arc<str> = self.hour.to_rfc3339().into();
        let partial: Arc<str> = if self.partial { "true" } else { "false" }.into();
        let ts = self.window.1;
        let mut metrics = Vec::new();
        let metric = |name: &str, value: f64, unit: &str, extra: Vec<(&str, Arc<str>)>| {
            let mut labels = Vec::with_capacity(4 + extra.len());
            labels.extend(extra.into_iter().map(|(k, v)| (Arc::<str>::from(k), v)));
            labels.push(("hour".into(), hour.clone()));
            labels.push(("partial".into(), partial.clone()));
            Metric {
                name: name.into(),
                value: Some(value),
                unit: unit.into(),
                quality: Quality::Good,
                ts,
                labels,
            }
        };
        for row in &self.rows {
            let base = || {
                vec![
                    ("device", row.device.clone()),
                    ("stream", Arc::<str>::from(row.stream.as_str())),
                ]
            };
            if let Some(e) = row.expected {
                metrics.push(metric("completeness_expected_count", e as f64, "", base()));
            }
            for (q, n) in &row.received {
                let mut l = base();
                l.push(("quality", q.as_str().into()));
                metrics.push(metric("completeness_received_count", *n as f64, "", l));
            }
            for (uplink, n) in &row.delivered {
                let mut l = base();
                l.push(("uplink", uplink.as_str().into()));
                metrics.push(metric(
                    "completeness_delivered_count",
                    *n as f64,
                    "",
                    l.clone(),
                ));
                if let Some(p) = percent(*n, row.expected) {
                    metrics.push(metric("completeness_delivered_pct", p, "%", l));
                }
            }
        }
        Record::Metrics(MetricBatch {
            calc: CALC.into(),
            ts,
            metrics,
        })
    }
}

/// The ledger of a running agent, shared by fan-out (received), the uplinks (delivered) and the
/// HTTP endpoint, with its state file.
#[derive(Debug, Default)]
pub struct Completeness {
    ledger: Mutex<Option<Ledger>>,
    file: Option<StateFile>,
    /// When the state file was last written (ms), for [`Completeness::tick`].
    saved_ms: std::sync::atomic::AtomicI64,
}

impl Completeness {
    /// Continue the state in `state_dir` (or start afresh at `now`) for the plan of `cfg`. A state
    /// file that cannot be read is logged and replaced: completeness counts are worth less than a
    /// running agent.
    pub fn open(cfg: &Config, now: Timestamp) -> Completeness {
        let file = cfg.state_dir.join(STATE_FILE);
        let plan = Plan::from_config(cfg);
        let ledger = match std::fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice::<State>(&bytes) {
                Ok(state) => Ledger::restore(plan, state),
                Err(e) => {
                    tracing::warn!(file = %file.display(), "completeness state unreadable, starting afresh: {e}");
                    Ledger::new(plan, now)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ledger::new(plan, now),
            Err(e) => {
                tracing::warn!(file = %file.display(), "cannot read the completeness state, starting afresh: {e}");
                Ledger::new(plan, now)
            }
        };
        Completeness {
            ledger: Mutex::new(Some(ledger)),
            file: Some(StateFile::new(file)),
            saved_ms: std::sync::atomic::AtomicI64::new(now.unix_ms()),
        }
    }

    /// Called by fan-out after each burst: the reports of the hours due (see
    /// [`Completeness::close_due`]), and a checkpoint of the state file every
    /// [`CHECKPOINT_EVERY`].
    pub async fn tick(&self, now: Timestamp) -> Vec<Record> {
        let records = self.close_due(now).await;
        let saved = self.saved_ms.load(std::sync::atomic::Ordering::Relaxed);
        if records.is_empty() && now.unix_ms() - saved >= CHECKPOINT_EVERY.as_millis() as i64 {
            self.checkpoint().await;
        }
        records
    }

    fn with<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> Option<T> {
        self.ledger
            .lock()
            .expect("completeness lock is never poisoned: holders do not panic")
            .as_mut()
            .map(f)
    }

    /// See [`Ledger::received`].
    pub fn received(&self, records: &[Record]) {
        self.with(|l| l.received(records));
    }

    /// See [`Ledger::delivered`].
    pub fn delivered(&self, uplink: &str, tallies: &[Tally]) {
        self.with(|l| l.delivered(uplink, tallies));
    }

    /// Reports of the hours due (see [`Ledger::close_due`]) as metrics records; writes the state
    /// file when something closed.
    pub async fn close_due(&self, now: Timestamp) -> Vec<Record> {
        let reports = self.with(|l| l.close_due(now)).unwrap_or_default();
        if !reports.is_empty() {
            self.checkpoint().await;
        }
        reports.iter().map(Report::to_record).collect()
    }

    /// Partial reports of the open hours at shutdown (see [`Ledger::partial`]), as records.
    pub fn partial(&self, now: Timestamp) -> Vec<Record> {
        self.with(|l| l.partial(now))
            .unwrap_or_default()
            .iter()
            .map(Report::to_record)
            .collect()
    }

    /// The current hour so far and the previous hour, for `/metrics`.
    pub fn live_view(&self, now: Timestamp) -> Vec<(&'static str, Report)> {
        self.with(|l| {
            let mut out = Vec::new();
            if let Some(r) = l.hour_at(now) {
                out.push(("current", r));
            }
            if let Some(r) = l.hour_at(Timestamp(hour_of(now) - 1)) {
                out.push(("previous", r));
            }
            out
        })
        .unwrap_or_default()
    }

    /// Write the state file (temporary file, fsync, rename, on the blocking pool). Errors are
    /// logged.
    pub async fn checkpoint(&self) {
        let Some(file) = &self.file else { return };
        self.saved_ms.store(
            crate::model::Timestamp::now().unix_ms(),
            std::sync::atomic::Ordering::Relaxed,
        );
        // The write is queued under the ledger's lock, so that of two checkpoints the one with the
        // later state lands last.
        let Some(written) =
            self.with(|l| serde_json::to_vec(l.state()).map(|bytes| file.write(bytes)))
        else {
            return;
        };
        let result = match written {
            Ok(write) => write.await,
            Err(e) => Err(std::io::Error::other(e)),
        };
        if let Err(e) = result {
            tracing::warn!(file = %file.path().display(), "cannot write the completeness state: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
