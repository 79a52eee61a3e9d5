//! What the edge node remembers between messages: its sequence number and, per device, the last
//! value and quality reported (report by exception).

use super::*;

/// The edge node's message sequence number: 0 on NBIRTH, +1 per message, wrapping 255 → 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeqCounter {
    next: u8,
}

impl SeqCounter {
    /// The seq for an NBIRTH (always 0); the next message gets 1.
    pub fn birth(&mut self) -> u64 {
        self.next = 1;
        0
    }

    /// The seq for the next message after the NBIRTH.
    pub fn next_seq(&mut self) -> u64 {
        let s = self.next;
        self.next = self.next.wrapping_add(1);
        u64::from(s)
    }
}

/// The last value and quality reported for each metric of one device, for report by exception.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceState {
    pub(super) last: Vec<Option<Reading>>,
}

/// A metric to put into a DATA message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change<'a> {
    /// Index of the metric in its [`DeviceModel`].
    pub metric: usize,
    /// The new reading.
    pub reading: &'a Reading,
    /// Whether to send the `Quality` property (not good, or changed since last reported).
    pub with_quality: bool,
}

impl DeviceState {
    /// An empty state for a device with `metrics` metrics.
    pub fn new(metrics: usize) -> Self {
        DeviceState {
            last: vec![None; metrics],
        }
    }

    /// The last reading of each metric, for a DBIRTH.
    pub fn current(&self) -> &[Option<Reading>] {
        &self.last
    }

    /// Record every reading of a batch (a BIRTH follows, which reports them all).
    pub fn absorb(&mut self, device: &DeviceModel, batch: &ReadingBatch) {
        for r in &batch.readings {
            if let Some(i) = device.metric_index(&r.point) {
                self.last[i] = Some(r.clone());
            }
        }
    }

    /// The readings of `batch` whose value or quality differs from the last reported one (report
    /// by exception), recording them as reported. Points that are not in the model are ignored.
    pub fn changes<'a>(
        &mut self,
        device: &DeviceModel,
        batch: &'a ReadingBatch,
    ) -> Vec<Change<'a>> {
        let mut out = Vec::new();
        for r in &batch.readings {
            let Some(i) = device.metric_index(&r.point) else {
                continue;
            };
            let (changed, quality_changed) = match &self.last[i] {
                None => (true, true),
                Some(prev) => (
                    prev.value != r.value || prev.quality != r.quality,
                    prev.quality != r.quality,
                ),
            };
            if changed {
                out.push(Change {
                    metric: i,
                    reading: r,
                    with_quality: quality_changed || r.quality != Quality::Good,
                });
                self.last[i] = Some(r.clone());
            }
        }
        out
    }
}

/// Every reading of `batch` that is a metric of `device`, as replayed data reports it: without
/// comparing with the last reported values (which belong to the live data), each with its
/// `Quality` when that is not good.
pub fn replayed<'a>(device: &DeviceModel, batch: &'a ReadingBatch) -> Vec<Change<'a>> {
    batch
        .readings
        .iter()
        .filter_map(|r| {
            Some(Change {
                metric: device.metric_index(&r.point)?,
                reading: r,
                with_quality: r.quality != Quality::Good,
            })
        })
        .collect()
}

/// Whether a device stopped answering: it returned readings and every one is `comm_fail`.
pub fn device_is_dead(batch: &ReadingBatch) -> bool {
    !batch.readings.is_empty()
        && batch
            .readings
            .iter()
            .all(|r| r.quality == Quality::CommFail)
}
