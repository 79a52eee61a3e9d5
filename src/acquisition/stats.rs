//! The counters a poller keeps, whatever its protocol: requests, failures, late ticks,
//! readings by quality and request times, shared with the status display and the metrics
//! endpoint.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::histogram::Histogram;
use crate::model::{Quality, ReadingBatch};

/// Counters of one poller, shared with the status display and the metrics endpoint.
#[derive(Debug, Default)]
pub struct PollerStats {
    /// Job runs (device poll cycles) completed, successful or not.
    pub cycles: AtomicU64,
    /// Requests sent.
    pub requests: AtomicU64,
    /// Requests that timed out or failed in transport.
    pub comm_failures: AtomicU64,
    /// Requests answered with a Modbus exception (DL/T 645: an abnormal reply).
    pub exceptions: AtomicU64,
    /// DL/T 645 frames discarded while waiting for an answer: another meter's address, another
    /// data identifier (always 0 for Modbus, whose client library checks its own replies).
    pub discarded_replies: AtomicU64,
    /// Scheduled cycles skipped because the previous work ran past them.
    pub late_ticks: AtomicU64,
    /// Connections established.
    pub connects: AtomicU64,
    /// Readings emitted, by quality (index = `Quality as usize`).
    pub readings_by_quality: [AtomicU64; Quality::ALL.len()],
    /// Sum of request round-trip times in microseconds (with `requests`, gives the mean).
    pub request_time_us: AtomicU64,
    /// Read request round-trip times, answered or not (a timeout counts its full wait).
    pub request_duration: Histogram,
    /// Failed read requests per device. A lock, not atomics: devices are known only by name
    /// here, and a failed request already cost a timeout or an exception frame.
    pub device_read_errors: Mutex<BTreeMap<Arc<str>, DeviceReadErrors>>,
}

/// Failed read requests of one device, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceReadErrors {
    /// Requests that timed out or failed in transport.
    pub comm_failures: u64,
    /// Requests answered with a Modbus exception.
    pub exceptions: u64,
}

impl PollerStats {
    pub(crate) fn count_read_error(&self, device: &Arc<str>, exception: bool) {
        let mut map = self
            .device_read_errors
            .lock()
            .expect("poller stats lock is never poisoned: holders do not panic");
        let e = map.entry(device.clone()).or_default();
        if exception {
            e.exceptions += 1;
        } else {
            e.comm_failures += 1;
        }
    }

    /// Failed read requests per device now, sorted by device.
    pub fn device_read_errors(&self) -> Vec<(Arc<str>, DeviceReadErrors)> {
        self.device_read_errors
            .lock()
            .expect("poller stats lock is never poisoned: holders do not panic")
            .iter()
            .map(|(d, e)| (d.clone(), *e))
            .collect()
    }

    /// Count one request that took `took`, answered or not (a timeout counts its wait).
    pub(crate) fn count_request(&self, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.request_time_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.request_duration.observe(took);
    }

    pub(crate) fn count_batch(&self, batch: &ReadingBatch) {
        for (i, n) in batch.quality_counts().iter().enumerate() {
            self.readings_by_quality[i].fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}
