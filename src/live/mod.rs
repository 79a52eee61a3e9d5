//! The agent's live state: what the HTTP side doors, the dashboard and `/metrics` read while the
//! agent runs (latest readings, poller and uplink views, the record feed, completeness, health,
//! trends). The wiring in `app` fills it; the fan-out and the pollers update it.

pub mod feed;
pub mod health;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::acquisition::PollerStats;
use crate::model::{Reading, ReadingBatch};
use crate::spool::SpoolHandle;
use crate::uplink::UplinkStatus;

/// Makes `into` a copy of `from`, reusing its allocation. A batch's point names and units are the
/// configuration's own `Arc`s, so the previous batch of a device already holds the same ones:
/// they are cloned only when they differ. `Vec::clone_from` would clone both anyway, four atomic
/// operations per reading (two increments, two decrements for the names it replaces), on every
/// reading the agent polls.
fn copy_readings(into: &mut Vec<Reading>, from: &[Reading]) {
    if into.len() != from.len() {
        into.clear();
        into.extend_from_slice(from);
        return;
    }
    for (to, r) in into.iter_mut().zip(from) {
        if !Arc::ptr_eq(&to.point, &r.point) {
            to.point = Arc::clone(&r.point);
        }
        if !Arc::ptr_eq(&to.unit, &r.unit) {
            to.unit = Arc::clone(&r.unit);
        }
        to.value.clone_from(&r.value);
        to.quality = r.quality;
        to.ts = r.ts;
    }
}

/// Latest reading of every point: the latest batch of each device and poll class (a point
/// belongs to one poll class, and each batch carries every point of its class).
///
/// Kept per batch, not per reading: the pipeline updates it for every batch, and one hash lookup
/// and an in-place copy per batch cost a fraction of a map insert per reading.
#[derive(Debug, Default)]
pub struct LatestReadings {
    /// (device, poll interval in ms) → the latest batch.
    batches: HashMap<(Arc<str>, u64), ReadingBatch>,
}

impl LatestReadings {
    /// Remember `batch` as the latest of its device and poll class.
    pub fn update(&mut self, batch: &ReadingBatch) {
        match self
            .batches
            .get_mut(&(batch.device.clone(), batch.poll_interval_ms))
        {
            Some(latest) => {
                // Field by field: a derived `clone_from` would clone the whole batch.
                latest.source.clone_from(&batch.source);
                latest.unit_id = batch.unit_id;
                latest.scheduled = batch.scheduled;
                copy_readings(&mut latest.readings, &batch.readings);
            }
            None => {
                self.batches.insert(
                    (batch.device.clone(), batch.poll_interval_ms),
                    batch.clone(),
                );
            }
        }
    }

    /// Every point's latest reading, with its device, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Reading)> {
        self.batches
            .values()
            .flat_map(|b| b.readings.iter().map(move |r| (&b.device, r)))
    }

    /// Every point's latest reading, with its device and the poll interval of its class (ms), in
    /// no particular order.
    pub fn iter_with_interval(&self) -> impl Iterator<Item = (&Arc<str>, u64, &Reading)> {
        self.batches.iter().flat_map(|((device, interval_ms), b)| {
            b.readings.iter().map(move |r| (device, *interval_ms, r))
        })
    }

    /// Number of points with a reading.
    pub fn len(&self) -> usize {
        self.batches.values().map(|b| b.readings.len()).sum()
    }

    /// No reading yet.
    pub fn is_empty(&self) -> bool {
        self.batches.values().all(|b| b.readings.is_empty())
    }
}

/// Latest value of every point, and the counters of every component, for status displays.
#[derive(Debug, Default)]
pub struct LiveState {
    /// (device, point) → latest reading.
    pub latest: Mutex<LatestReadings>,
    /// One entry per source.
    pub pollers: Mutex<Vec<(Arc<str>, Arc<PollerStats>)>>,
    /// One entry per uplink: name, spool, status.
    pub uplinks: Mutex<Vec<UplinkView>>,
    /// Computed metrics and events for live displays (the HTTP side doors); producers call
    /// `records.send(record)`, which never waits.
    pub records: crate::live::feed::RecordFeed,
    /// Values expected, received and delivered per device, stream and hour.
    pub completeness: Arc<crate::completeness::Completeness>,
    /// Progress of the stages and what the stores lost (`/readyz`, the watchdog, `/metrics`).
    pub health: Arc<health::Health>,
    /// The concentration limits of the configured stacks, set once at start (the limit lines of
    /// the dashboards).
    pub stack_limits: std::sync::OnceLock<Vec<crate::calc::limits::StackLimit>>,
    /// The trends in memory (`/api/v1/series`), fed by the fan-out.
    pub series: Arc<crate::series::SeriesStore>,
}

impl LiveState {
    /// Why the pipeline is not healthy (stalled stages, failing stores); empty when it is.
    pub fn problems(&self) -> Vec<String> {
        self.health.problems(&self.poller_cycles())
    }

    /// The stalled stages only: what stops the watchdog.
    pub fn stalls(&self) -> Vec<String> {
        self.health.stalls(&self.poller_cycles())
    }

    fn poller_cycles(&self) -> Vec<(String, u64)> {
        self.pollers
            .lock()
            .expect("live state lock is never poisoned: holders do not panic")
            .iter()
            .map(|(n, s)| {
                (
                    n.to_string(),
                    s.cycles.load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// What the status display knows of an uplink.
#[derive(Debug, Clone)]
pub struct UplinkView {
    /// Uplink name.
    pub name: String,
    /// Its spool.
    pub spool: SpoolHandle,
    /// Its connection status.
    pub status: watch::Receiver<UplinkStatus>,
    /// Acquisition to acknowledgement of the records it delivered.
    pub publish_latency: Arc<crate::histogram::Histogram>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Quality, Timestamp, Value};

    fn batch(device: &str, points: &[(&Arc<str>, u64)], at: i64) -> ReadingBatch {
        let unit: Arc<str> = Arc::from("mV");
        ReadingBatch {
            source: Arc::from("src"),
            device: Arc::from(device),
            unit_id: 1,
            poll_interval_ms: 1000,
            scheduled: Timestamp(at),
            readings: points
                .iter()
                .map(|(name, v)| Reading {
                    point: Arc::clone(name),
                    value: Some(Value::UInt(*v)),
                    unit: Arc::clone(&unit),
                    quality: Quality::Good,
                    ts: Timestamp(at),
                })
                .collect(),
        }
    }

    fn latest(l: &LatestReadings) -> Vec<(String, String, Option<Value>, i64)> {
        let mut all: Vec<_> = l
            .iter()
            .map(|(d, r)| (d.to_string(), r.point.to_string(), r.value.clone(), r.ts.0))
            .collect();
        all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        all
    }

    #[test]
    fn a_later_batch_replaces_values_times_and_names_of_its_device() {
        let (a, b, c) = (Arc::from("a"), Arc::from("b"), Arc::from("c"));
        let mut l = LatestReadings::default();
        l.update(&batch("pcu1", &[(&a, 1), (&b, 2)], 10));
        l.update(&batch("pcu2", &[(&a, 7)], 10));
        // The same points again, then a batch of the same length with another point set.
        l.update(&batch("pcu1", &[(&a, 3), (&b, 4)], 20));
        assert_eq!(
            latest(&l),
            vec![
                ("pcu1".into(), "a".into(), Some(Value::UInt(3)), 20),
                ("pcu1".into(), "b".into(), Some(Value::UInt(4)), 20),
                ("pcu2".into(), "a".into(), Some(Value::UInt(7)), 10),
            ]
        );
        l.update(&batch("pcu1", &[(&a, 5), (&c, 6)], 30));
        l.update(&batch("pcu2", &[(&a, 8), (&b, 9)], 30));
        assert_eq!(
            latest(&l),
            vec![
                ("pcu1".into(), "a".into(), Some(Value::UInt(5)), 30),
                ("pcu1".into(), "c".into(), Some(Value::UInt(6)), 30),
                ("pcu2".into(), "a".into(), Some(Value::UInt(8)), 30),
                ("pcu2".into(), "b".into(), Some(Value::UInt(9)), 30),
            ]
        );
        assert_eq!(l.len(), 4);
    }
}
