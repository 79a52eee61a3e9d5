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
                // Field by field: `Vec::clone_from` reuses the readings' allocation (a derived
                // `clone_from` would clone the whole batch).
                latest.source.clone_from(&batch.source);
                latest.unit_id = batch.unit_id;
                latest.scheduled = batch.scheduled;
                latest.readings.clone_from(&batch.readings);
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
