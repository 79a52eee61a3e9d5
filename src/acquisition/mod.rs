//! What every poller shares, whatever its protocol: the poll loop on its deadline schedule, the
//! circuit breaker and the connection kept with its reconnect backoff.
//!
//! The Modbus poller and the DL/T 645 poller keep the same guarantees because they use the same
//! pieces:
//! - `PollerBase` running a protocol's `Jobs`: one batch per job run, work between polls (the
//!   Modbus writes) ahead of a due poll, every cycle counted and sent downstream;
//! - [`Schedule`]: jobs on fixed grids that never drift, late deadlines skipped and counted,
//!   wall times that follow a stepped clock;
//! - [`Breaker`]: a device (or a part of one) that fails `threshold` times in a row is left
//!   alone and probed once per interval;
//! - [`Backoff`]: exponential reconnect delays with ±25 % jitter;
//! - `Link`: the connection kept with that backoff, its outages logged once, the gap between
//!   exchanges kept, and [`ConnectError`] for why there is none;
//! - [`open_serial`], [`connect_tcp`]: a local serial port with its line settings, a TCP
//!   connection;
//! - [`PollerStats`]: the counters both keep, read by the status display and the metrics
//!   endpoint;
//! - [`wakes`]: replies awaited by several connections at once gathered per wake-up of the
//!   runtime.

mod backoff;
mod breaker;
mod link;
mod schedule;
mod serial;
mod stats;
pub mod wakes;

pub use backoff::Backoff;
pub use breaker::{Breaker, Transition};
pub(crate) use link::Link;
pub use link::{ConnectError, SharedError, connect_tcp};
pub use schedule::Schedule;
pub use serial::open_serial;
pub use stats::{DeviceReadErrors, PollerStats};
pub(crate) use wakes::Awaiting;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::model::{Quality, Reading, ReadingBatch, Timestamp};

/// A poller's protocol side, as [`PollerBase::run`] runs it: which device a job polls, what its
/// poll does, and what may go between two polls.
pub(crate) trait Jobs {
    /// Work that goes ahead of a poll that is due (the Modbus poller's guarded writes).
    type Between;

    /// The next piece of work to go between polls; never resolves when there is none. Only
    /// waits: the work is done by [`between`](Jobs::between), which no due poll interrupts.
    async fn next_between(&mut self) -> Self::Between;

    /// Does one piece of the work between polls.
    async fn between(&mut self, work: Self::Between);

    /// The device job `job` polls (its name and unit id) and the job's period.
    fn device(&self, job: usize) -> (Arc<str>, u8, Duration);

    /// Polls job `job`, appending one reading per point of the job to `readings`.
    async fn poll(&mut self, job: usize, readings: &mut Vec<Reading>);
}

/// What every poller holds besides its protocol's configuration and plan: where its batches go,
/// its counters and the clock of its schedule's wall time.
#[derive(Debug)]
pub(crate) struct PollerBase {
    /// Downstream, bounded: when it is slower than acquisition the poller waits for room, which
    /// shows up as late ticks rather than as unbounded memory.
    pub out: mpsc::Sender<ReadingBatch>,
    /// The poller's counters.
    pub stats: Arc<PollerStats>,
    /// The wall time of the schedule (tests step it).
    pub clock: Arc<Clock>,
}

impl PollerBase {
    /// Batches to `out`, fresh counters, the system clock.
    pub(crate) fn new(out: mpsc::Sender<ReadingBatch>) -> Self {
        PollerBase {
            out,
            stats: Arc::new(PollerStats::default()),
            clock: Clock::system(),
        }
    }

    /// Runs the `count` jobs of `source` (a `kind` of source, for the log) on their deadline
    /// schedule, starting `offset` from now, until `shutdown` or until the batches' receiver is
    /// gone; a source without jobs is not run at all. Every job run sends one batch. Jobs due
    /// together run in configuration (job) order; work between polls goes ahead of a due poll (a
    /// late schedule must not starve it), and a job it held up waits for its deadline again.
    pub(crate) async fn run(
        &self,
        jobs: &mut impl Jobs,
        (source, kind): (&Arc<str>, &str),
        (count, offset): (usize, Duration),
        shutdown: &CancellationToken,
    ) {
        if count == 0 {
            tracing::warn!(source = %source, "{kind} has no points to poll");
            return;
        }
        let mut schedule = Schedule::new(count, offset, self.clock.clone());
        while let Some((due, job)) = schedule.pop() {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                work = jobs.next_between() => {
                    jobs.between(work).await;
                    schedule.put_back(due, job);
                    continue;
                }
                _ = sleep_until(due) => {}
            }
            let (device, unit_id, period) = jobs.device(job);
            let scheduled = schedule.wall_time(due);
            let mut readings = Vec::new();
            jobs.poll(job, &mut readings).await;
            let batch = ReadingBatch {
                source: source.clone(),
                device,
                unit_id,
                poll_interval_ms: period.as_millis() as u64,
                scheduled,
                readings,
            };
            let next = (&mut schedule, due, job, period);
            if !finish_cycle(batch, self, shutdown, next).await {
                break;
            }
        }
    }
}

/// Appends a reading without a value, of `quality` at `ts`, for each of `points` (its name and
/// unit): the points of a request that could not be read, or of a device left alone.
pub(crate) fn push_valueless<'a>(
    readings: &mut Vec<Reading>,
    points: impl Iterator<Item = (&'a Arc<str>, &'a Arc<str>)>,
    quality: Quality,
    ts: Timestamp,
) {
    readings.extend(points.map(|(point, unit)| Reading {
        point: point.clone(),
        value: None,
        unit: unit.clone(),
        quality,
        ts,
    }));
}

/// The end of one poll of `job` (due at `due`): count the batch and the cycle, send the batch
/// downstream, and move the job to its next deadline on its own grid, counting the deadlines
/// already past as late ticks. `false` when the poller must end: the receiver is gone, or the
/// agent stops while the channel is full (downstream is being torn down anyway).
async fn finish_cycle(
    batch: ReadingBatch,
    base: &PollerBase,
    shutdown: &CancellationToken,
    (schedule, due, job, period): (&mut Schedule, Instant, usize, Duration),
) -> bool {
    let stats = &base.stats;
    stats.count_batch(&batch);
    stats.cycles.fetch_add(1, Ordering::Relaxed);
    tokio::select! {
        biased;
        res = base.out.send(batch) => if res.is_err() { return false },
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
