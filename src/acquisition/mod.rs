//! What every poller shares, whatever its protocol: the deadline schedule, the circuit breaker
//! and the reconnect backoff.
//!
//! The Modbus poller and the DL/T 645 poller keep the same guarantees because they use the same
//! pieces:
//! - [`Schedule`]: jobs on fixed grids that never drift, late deadlines skipped and counted,
//!   wall times that follow a stepped clock;
//! - [`Breaker`]: a device (or a part of one) that fails `threshold` times in a row is left
//!   alone and probed once per interval;
//! - [`Backoff`]: exponential reconnect delays with ±25 % jitter;
//! - [`open_serial`]: a local serial port with its line settings;
//! - [`PollerStats`]: the counters both keep, read by the status display and the metrics
//!   endpoint.

mod backoff;
mod breaker;
mod schedule;
mod serial;
mod stats;

pub use backoff::Backoff;
pub use breaker::{Breaker, Transition};
pub use schedule::Schedule;
pub use serial::open_serial;
pub use stats::{DeviceReadErrors, PollerStats};

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::ReadingBatch;

/// The end of one poll of `job` (due at `due`): count the batch and the cycle, send the batch
/// downstream, and move the job to its next deadline on its own grid, counting the deadlines
/// already past as late ticks. `false` when the poller must end: the receiver is gone, or the
/// agent stops while the channel is full (downstream is being torn down anyway).
pub(crate) async fn finish_cycle(
    batch: ReadingBatch,
    out: &mpsc::Sender<ReadingBatch>,
    stats: &PollerStats,
    shutdown: &CancellationToken,
    (schedule, due, job, period): (&mut Schedule, Instant, usize, Duration),
) -> bool {
    stats.count_batch(&batch);
    stats.cycles.fetch_add(1, Ordering::Relaxed);
    tokio::select! {
        biased;
        res = out.send(batch) => if res.is_err() { return false },
        _ = shutdown.cancelled() => return false,
    }
    let missed = schedule.reschedule(due, job, period);
    if missed > 0 {
        stats
            .late_ticks
            .fetch_add(u64::from(missed), Ordering::Relaxed);
    }
    true
}
