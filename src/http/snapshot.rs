//! A consistent copy of everything the side doors show, taken from [`LiveState`] per request:
//! the JSON of `/api/v1/snapshot`, the input of `/metrics` and `/readyz`, and the `delta` events of
//! `/api/v1/stream`.
//!
//! Invariants: each lock is held only while its content is copied (never across an `.await`);
//! points are sorted by (device, point), computed metrics by (calc, name, labels), so that two
//! snapshots of the same state serialise identically.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::acquisition::DeviceReadErrors;
use crate::calc::limits::StackLimit;
use crate::histogram::HistogramSnapshot;
use crate::live::feed::Collected;
use crate::live::{LatestReadings, LiveState, UplinkView};
use crate::model::{Event, Quality, Timestamp, Value};
use crate::uplink::LinkState;

/// How long a request waits for a spool's statistics before reporting them as unavailable.
const SPOOL_STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything the side doors know at one instant.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    /// When the snapshot was taken, ms since the Unix epoch.
    pub ts_ms: i64,
    /// The agent's version.
    pub version: &'static str,
    /// Latest reading of every point, sorted by (device, point).
    pub points: Vec<PointView>,
    /// Latest value of every computed metric.
    pub metrics: Vec<MetricView>,
    /// Recent events, newest first.
    pub events: Vec<Event>,
    /// Events seen since the HTTP server started, per kind and phase.
    pub event_counts: Vec<EventCount>,
    /// Records the HTTP collector lost because it fell behind the feed.
    pub feed_lagged: u64,
    /// Acquisition counters per source.
    pub sources: Vec<SourceView>,
    /// Status and spool of every uplink.
    pub uplinks: Vec<UplinkSnapshot>,
    /// The concentration limit of each pollutant of each configured stack (`[[calc.stacks]]`).
    pub stack_limits: Vec<StackLimit>,
}

/// The latest reading of one point.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PointView {
    /// Device name.
    pub device: Arc<str>,
    /// Point name.
    pub point: Arc<str>,
    /// The value (`null` when none could be read, or when not finite).
    pub value: Option<Value>,
    /// Engineering unit.
    pub unit: Arc<str>,
    /// Quality of the value.
    pub quality: Quality,
    /// Acquisition time, ms since the Unix epoch.
    pub ts_ms: i64,
}

/// The latest value of one computed metric.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetricView {
    /// Calculator (`potline`).
    pub calc: Arc<str>,
    /// Metric name (`dc_energy_kwh_per_t`).
    pub name: Arc<str>,
    /// Value, `null` when it could not be computed.
    pub value: Option<f64>,
    /// Unit.
    pub unit: Arc<str>,
    /// Quality.
    pub quality: Quality,
    /// Time the value describes, ms since the Unix epoch.
    pub ts_ms: i64,
    /// Labels (`line`, `cell`, `period`…).
    pub labels: BTreeMap<Arc<str>, Arc<str>>,
}

/// How many events of one kind and phase were seen.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventCount {
    /// Event kind.
    pub kind: Arc<str>,
    /// `start`, `end` or `instant`.
    pub phase: &'static str,
    /// Count since the HTTP server started.
    pub count: u64,
}

/// Acquisition counters of one source (since start).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceView {
    /// Source name.
    pub name: Arc<str>,
    /// Device poll cycles completed, successful or not.
    pub cycles: u64,
    /// Modbus requests sent.
    pub requests: u64,
    /// Requests that failed in transport or timed out.
    pub comm_failures: u64,
    /// Requests answered with a Modbus exception.
    pub exceptions: u64,
    /// Scheduled cycles skipped because earlier work ran late.
    pub late_ticks: u64,
    /// Connections established.
    pub connects: u64,
    /// Sum of request round-trip times, seconds.
    pub request_time_s: f64,
    /// Mean request round-trip time, seconds; `null` before the first request.
    pub request_mean_s: Option<f64>,
    /// Readings emitted per quality (every quality listed).
    pub readings_by_quality: BTreeMap<&'static str, u64>,
    /// Failed read requests per device that had any.
    pub device_read_errors: BTreeMap<Arc<str>, DeviceReadErrors>,
    /// Request round-trip times (for `/metrics`; not in the JSON, which has the mean).
    #[serde(skip)]
    pub request_duration: HistogramSnapshot,
}

/// Status and spool of one uplink.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UplinkSnapshot {
    /// Uplink name.
    pub name: String,
    /// `connecting`, `connected`, `disconnected`, `auth_failed` or `failed`.
    pub state: &'static str,
    /// Why it is disconnected or refused, if it is.
    pub reason: Option<String>,
    /// Publishes awaiting PUBACK or spool ack.
    pub in_flight: usize,
    /// Records delivered and removed from the spool since start.
    pub acked_total: u64,
    /// Records rejected (undecodable) since start.
    pub rejected_total: u64,
    /// Successful connections since start.
    pub connects: u64,
    /// Times the uplink task failed and was restarted by its supervisor, since start.
    pub restarts: u64,
    /// The last error seen, if any.
    pub last_error: Option<String>,
    /// Replay backlog: records that were waiting when the current connection came up and are
    /// not acked yet (0 when drained or disconnected).
    pub backlog_records: u64,
    /// Age of the oldest backlog record not yet published, seconds.
    pub backlog_oldest_age_s: Option<f64>,
    /// Backlog records acked over the last whole second (the drain rate).
    pub replay_rate_per_s: u64,
    /// Commands from the broker dropped on a full queue since start.
    pub commands_dropped_total: u64,
    /// Records sent with nothing to prove they arrived (HJ 212 with `ack = false`) since start.
    pub unconfirmed_total: u64,
    /// Time from acquisition to the platform's acknowledgement of delivered records (for
    /// `/metrics`; not in the JSON).
    #[serde(skip)]
    pub publish_latency: HistogramSnapshot,
    /// The spool's statistics; `null` when the spool did not answer (see `spool_error`).
    pub spool: Option<SpoolView>,
    /// Why `spool` is missing.
    pub spool_error: Option<String>,
}

/// What waits in a spool.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SpoolView {
    /// Records waiting.
    pub records: u64,
    /// Topic and body bytes waiting (what the budget counts).
    pub bytes: u64,
    /// Creation time of the oldest waiting record, ms since the Unix epoch.
    pub oldest_ts_ms: Option<i64>,
    /// Age of the oldest waiting record at snapshot time, seconds.
    pub oldest_age_s: Option<f64>,
    /// Records dropped by the byte budget, a full disk or `max_age` over the life of the spool file.
    pub dropped: u64,
    /// Records dropped since the agent opened the spool, by reason.
    pub dropped_by_reason: crate::spool::DropsByReason,
    /// Records set aside in the dead-letter table (the broker would not take them).
    pub dead_letters: u64,
    /// Records waiting per stream.
    pub per_stream: BTreeMap<&'static str, u64>,
}

/// The answer of `/readyz`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Readiness {
    /// Whether the agent is ready.
    pub ready: bool,
    /// Why not, one sentence each; empty when ready.
    pub reasons: Vec<String>,
}

/// What changed between two snapshots: the `delta` event of `/api/v1/stream`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Delta {
    /// When the newer snapshot was taken, ms since the Unix epoch.
    pub ts_ms: i64,
    /// Points whose time, value or quality changed, or that are new.
    pub points: Vec<PointView>,
    /// Computed metrics whose time, value or quality changed, or that are new.
    pub metrics: Vec<MetricView>,
    /// Events newer than the newest of the previous snapshot, newest first.
    pub events: Vec<Event>,
    /// Every source, in full (they are few and their counters move every second).
    pub sources: Vec<SourceView>,
    /// Every uplink, in full.
    pub uplinks: Vec<UplinkSnapshot>,
}

impl Snapshot {
    /// Copy the state of `live` and `collected` now.
    pub async fn gather(live: &LiveState, collected: &Mutex<Collected>) -> Snapshot {
        let now = Timestamp::now();
        let points = {
            let latest = live
                .latest
                .lock()
                .expect("live state lock is never poisoned: holders do not panic");
            point_views(&latest, now)
        };
        let (metrics, events, event_counts, feed_lagged) = collected_views(collected);
        let sources = source_views(live);
        let uplinks = uplink_snapshots(live, now).await;
        Snapshot {
            ts_ms: now.unix_ms(),
            version: env!("CARGO_PKG_VERSION"),
            points,
            metrics,
            events,
            event_counts,
            feed_lagged,
            sources,
            uplinks,
            stack_limits: live.stack_limits.get().cloned().unwrap_or_default(),
        }
    }
}

/// The computed metrics, recent events, event counts and lagged count of `collected`.
fn collected_views(
    collected: &Mutex<Collected>,
) -> (Vec<MetricView>, Vec<Event>, Vec<EventCount>, u64) {
    let c = collected
        .lock()
        .expect("collected lock is never poisoned: holders do not panic");
    let metrics = c
        .metrics
        .iter()
        .map(|((calc, _, _), m)| MetricView {
            calc: calc.clone(),
            name: m.name.clone(),
            value: m.value.filter(|v| v.is_finite()),
            unit: m.unit.clone(),
            quality: m.quality,
            ts_ms: m.ts.unix_ms(),
            labels: m.labels.iter().cloned().collect(),
        })
        .collect::<Vec<_>>();
    let counts = c
        .event_counts
        .iter()
        .map(|((kind, phase), n)| EventCount {
            kind: kind.clone(),
            phase,
            count: *n,
        })
        .collect::<Vec<_>>();
    (
        metrics,
        c.events.iter().cloned().collect(),
        counts,
        c.lagged,
    )
}

/// Every poller's counters.
fn source_views(live: &LiveState) -> Vec<SourceView> {
    live.pollers
        .lock()
        .expect("live state lock is never poisoned: holders do not panic")
        .iter()
        .map(|(name, s)| {
            let requests = s.requests.load(Ordering::Relaxed);
            let request_time_s = s.request_time_us.load(Ordering::Relaxed) as f64 / 1e6;
            SourceView {
                name: name.clone(),
                cycles: s.cycles.load(Ordering::Relaxed),
                requests,
                comm_failures: s.comm_failures.load(Ordering::Relaxed),
                exceptions: s.exceptions.load(Ordering::Relaxed),
                late_ticks: s.late_ticks.load(Ordering::Relaxed),
                connects: s.connects.load(Ordering::Relaxed),
                request_time_s,
                request_mean_s: (requests > 0).then(|| request_time_s / requests as f64),
                readings_by_quality: Quality::ALL
                    .iter()
                    .map(|q| {
                        (
                            q.as_str(),
                            s.readings_by_quality[*q as usize].load(Ordering::Relaxed),
                        )
                    })
                    .collect(),
                device_read_errors: s.device_read_errors().into_iter().collect(),
                request_duration: s.request_duration.snapshot(),
            }
        })
        .collect()
}

/// Every uplink's status and spool statistics at `now`.
async fn uplink_snapshots(live: &LiveState, now: Timestamp) -> Vec<UplinkSnapshot> {
    let views = live
        .uplinks
        .lock()
        .expect("live state lock is never poisoned: holders do not panic")
        .clone();
    let mut uplinks = Vec::with_capacity(views.len());
    for view in views {
        let status = view.status.borrow().clone();
        let reason = match &status.state {
            LinkState::Disconnected(r) | LinkState::AuthFailed(r) | LinkState::Failed(r) => {
                Some(r.clone())
            }
            _ => None,
        };
        let (spool, spool_error) = spool_view(&view, now).await;
        uplinks.push(UplinkSnapshot {
            name: view.name,
            state: status.state.as_str(),
            reason,
            in_flight: status.in_flight,
            acked_total: status.acked_total,
            rejected_total: status.rejected_total,
            connects: status.connects,
            restarts: status.restarts,
            backlog_records: status.backlog_records,
            backlog_oldest_age_s: status.backlog_age(now).map(|age| age.as_secs_f64()),
            replay_rate_per_s: status.replay_rate_per_s,
            commands_dropped_total: status.commands_dropped_total,
            unconfirmed_total: status.unconfirmed_total,
            last_error: status.last_error,
            publish_latency: view.publish_latency.snapshot(),
            spool,
            spool_error,
        });
    }
    uplinks
}

/// The spool statistics of `view`, or why there are none (an error, or no answer within
/// [`SPOOL_STATS_TIMEOUT`]).
async fn spool_view(view: &UplinkView, now: Timestamp) -> (Option<SpoolView>, Option<String>) {
    match tokio::time::timeout(SPOOL_STATS_TIMEOUT, view.spool.stats()).await {
        Ok(Ok(s)) => (
            Some(SpoolView {
                records: s.records,
                bytes: s.bytes,
                oldest_ts_ms: s.oldest.map(Timestamp::unix_ms),
                oldest_age_s: s
                    .oldest
                    .map(|t| (now.unix_ms() - t.unix_ms()).max(0) as f64 / 1000.0),
                dropped: s.dropped,
                dropped_by_reason: s.dropped_since_open,
                dead_letters: s.dead_letters,
                per_stream: s
                    .per_stream
                    .iter()
                    .map(|(stream, n)| (stream.as_str(), *n))
                    .collect(),
            }),
            None,
        ),
        Ok(Err(e)) => (None, Some(e.to_string())),
        Err(_) => (
            None,
            Some(format!(
                "spool did not answer within {SPOOL_STATS_TIMEOUT:?}"
            )),
        ),
    }
}

/// Every point's latest reading as shown at `now`, sorted by (device, point).
///
/// Staleness is judged here, when a snapshot is taken, and not where readings are stored: a
/// stored quality is what the device said at acquisition, while "not refreshed for three poll
/// intervals" depends on when someone looks. A poller that hangs or a device class that stops
/// producing batches leaves no reading to carry a new quality, so only the reader can notice it.
/// `/api/v1/snapshot`, its stream, the dashboard and `/metrics` all come from this snapshot.
fn point_views(latest: &LatestReadings, now: Timestamp) -> Vec<PointView> {
    let mut points: Vec<PointView> = latest
        .iter_with_interval()
        .map(|(device, interval_ms, r)| PointView {
            device: device.clone(),
            point: r.point.clone(),
            value: r.value.clone().filter(|v| match v {
                Value::Float(f) => f.is_finite(),
                _ => true,
            }),
            unit: r.unit.clone(),
            quality: r
                .quality
                .at_age(now.unix_ms() - r.ts.unix_ms(), interval_ms),
            ts_ms: r.ts.unix_ms(),
        })
        .collect();
    points.sort_by(|a, b| (&a.device, &a.point).cmp(&(&b.device, &b.point)));
    points
}

impl Delta {
    /// What changed from `prev` to `next`.
    pub fn between(prev: &Snapshot, next: &Snapshot) -> Delta {
        let before: HashMap<(&str, &str), &PointView> = prev
            .points
            .iter()
            .map(|p| ((&*p.device, &*p.point), p))
            .collect();
        let points = next
            .points
            .iter()
            .filter(|p| before.get(&(&*p.device, &*p.point)) != Some(p))
            .cloned()
            .collect();
        let metrics = next
            .metrics
            .iter()
            .filter(|m| !prev.metrics.contains(m))
            .cloned()
            .collect();
        let events = match prev.events.first() {
            None => next.events.clone(),
            Some(newest) => next
                .events
                .iter()
                .take_while(|e| *e != newest)
                .cloned()
                .collect(),
        };
        Delta {
            ts_ms: next.ts_ms,
            points,
            metrics,
            events,
            sources: next.sources.clone(),
            uplinks: next.uplinks.clone(),
        }
    }
}

/// Spool `dropped` counters per uplink now (uplinks whose spool does not answer are left out).
pub(crate) async fn spool_dropped(live: &LiveState) -> HashMap<String, u64> {
    let views = live
        .uplinks
        .lock()
        .expect("live state lock is never poisoned: holders do not panic")
        .clone();
    let mut out = HashMap::new();
    for view in views {
        if let Ok(Ok(s)) = tokio::time::timeout(SPOOL_STATS_TIMEOUT, view.spool.stats()).await {
            out.insert(view.name, s.dropped);
        }
    }
    out
}

/// Ready when every source completed at least one poll cycle, and every uplink is connected or
/// spooling within its budget: its spool answers and has dropped nothing since `dropped_at_start`
/// was taken (the spool drops only when its byte budget is full).
pub fn readiness(snap: &Snapshot, dropped_at_start: &HashMap<String, u64>) -> Readiness {
    let mut reasons = Vec::new();
    if snap.sources.is_empty() {
        reasons.push("no source is configured".to_owned());
    }
    for s in &snap.sources {
        if s.cycles == 0 {
            reasons.push(format!(
                "source {:?} has not completed a poll cycle",
                s.name
            ));
        }
    }
    for u in &snap.uplinks {
        if u.state == "failed" {
            reasons.push(format!(
                "uplink {:?} failed and is being restarted: {}",
                u.name,
                u.reason.as_deref().unwrap_or("unknown")
            ));
        }
        match &u.spool {
            None => reasons.push(format!(
                "uplink {:?}: spool unavailable: {}",
                u.name,
                u.spool_error.as_deref().unwrap_or("unknown")
            )),
            Some(spool) if u.state != "connected" => {
                let base = dropped_at_start.get(&u.name).copied().unwrap_or(0);
                if spool.dropped > base {
                    reasons.push(format!(
                        "uplink {:?} is {} and its spool is over budget: {} records dropped",
                        u.name,
                        u.state,
                        spool.dropped - base
                    ));
                }
            }
            Some(_) => {}
        }
    }
    Readiness {
        ready: reasons.is_empty(),
        reasons,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn snap() -> Snapshot {
        Snapshot {
            ts_ms: 1000,
            version: "test",
            points: vec![PointView {
                device: "pot_001".into(),
                point: "cell_voltage_v".into(),
                value: Some(Value::Float(4.1)),
                unit: "V".into(),
                quality: Quality::Good,
                ts_ms: 900,
            }],
            metrics: vec![],
            events: vec![],
            event_counts: vec![],
            feed_lagged: 0,
            sources: vec![SourceView {
                name: "line1".into(),
                cycles: 1,
                requests: 1,
                comm_failures: 0,
                exceptions: 0,
                late_ticks: 0,
                connects: 1,
                request_time_s: 0.002,
                request_mean_s: Some(0.002),
                readings_by_quality: BTreeMap::new(),
                device_read_errors: BTreeMap::new(),
                request_duration: HistogramSnapshot::default(),
            }],
            uplinks: vec![UplinkSnapshot {
                name: "plant".into(),
                state: "disconnected",
                reason: Some("connection refused".into()),
                in_flight: 0,
                acked_total: 0,
                rejected_total: 0,
                connects: 0,
                restarts: 0,
                backlog_records: 0,
                backlog_oldest_age_s: None,
                replay_rate_per_s: 0,
                commands_dropped_total: 0,
                unconfirmed_total: 0,
                last_error: None,
                publish_latency: HistogramSnapshot::default(),
                spool: Some(SpoolView {
                    records: 10,
                    bytes: 1000,
                    oldest_ts_ms: Some(500),
                    oldest_age_s: Some(0.5),
                    dropped: 3,
                    dropped_by_reason: crate::spool::DropsByReason {
                        budget: 3,
                        ..Default::default()
                    },
                    dead_letters: 0,
                    per_stream: BTreeMap::new(),
                }),
                spool_error: None,
            }],
            stack_limits: vec![],
        }
    }

    fn batch(device: &str, interval_ms: u64, ts: i64) -> crate::model::ReadingBatch {
        crate::model::ReadingBatch {
            source: "line1".into(),
            device: device.into(),
            unit_id: 1,
            poll_interval_ms: interval_ms,
            scheduled: Timestamp(ts),
            readings: vec![crate::model::Reading {
                point: "cell_voltage_v".into(),
                value: Some(Value::Float(4.1)),
                unit: "V".into(),
                quality: Quality::Good,
                ts: Timestamp(ts),
            }],
        }
    }

    #[test]
    fn a_reading_older_than_three_poll_intervals_is_shown_stale() {
        let mut latest = LatestReadings::default();
        // 1 s class read 3 s ago: on the limit, still good. 1 s class read 3.001 s ago: stale.
        latest.update(&batch("pot_001", 1000, 10_000));
        latest.update(&batch("pot_002", 1000, 9_999));
        // A 60 s class read 2 min ago is fine; a failed reading keeps its own quality.
        latest.update(&batch("meter", 60_000, 13_000 - 120_000));
        let mut failed = batch("pot_003", 1000, 1_000);
        failed.readings[0].quality = Quality::CommFail;
        latest.update(&failed);
        let shown: Vec<(String, Quality)> = point_views(&latest, Timestamp(13_000))
            .iter()
            .map(|p| (p.device.to_string(), p.quality))
            .collect();
        let expected = [
            ("meter", Quality::Good),
            ("pot_001", Quality::Good),
            ("pot_002", Quality::Stale),
            ("pot_003", Quality::CommFail),
        ]
        .map(|(d, q)| (d.to_owned(), q));
        assert_eq!(shown, expected);
    }

    #[test]
    fn ready_while_spooling_until_the_spool_drops() {
        let s = snap();
        let base = HashMap::from([("plant".to_owned(), 3)]);
        assert_eq!(readiness(&s, &base).reasons, Vec::<String>::new());
        let base = HashMap::from([("plant".to_owned(), 1)]);
        let r = readiness(&s, &base);
        assert!(!r.ready);
        assert!(r.reasons[0].contains("2 records dropped"), "{r:?}");
    }

    #[test]
    fn not_ready_before_the_first_cycle() {
        let mut s = snap();
        s.sources[0].cycles = 0;
        s.uplinks[0].state = "connected";
        let r = readiness(&s, &HashMap::new());
        assert_eq!(
            r.reasons,
            vec!["source \"line1\" has not completed a poll cycle"]
        );
    }

    #[test]
    fn delta_carries_only_changed_points_and_new_events() {
        let a = snap();
        let mut b = snap();
        assert!(Delta::between(&a, &b).points.is_empty());
        b.points[0].ts_ms = 1900;
        b.points.push(PointView {
            device: "pot_002".into(),
            ..a.points[0].clone()
        });
        let d = Delta::between(&a, &b);
        assert_eq!(d.points.len(), 2);
        assert_eq!(d.uplinks, b.uplinks);
    }
}
