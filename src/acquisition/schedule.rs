//! The deterministic deadline schedule of one connection's jobs.
//!
//! Job `j` is due at `start + k × period_j` for k = 0, 1, 2, … and nothing else moves those
//! deadlines, so the schedule never drifts. `start` is the poller's start plus the source's
//! `poll_offset`. Jobs due at the same instant run in index order. When a job is picked up after
//! its *next* deadline has already passed, the missed deadlines are skipped and counted as late
//! ticks; the cycle that does run is never repeated to catch up.
//!
//! The wall time of a deadline is the wall clock read at the start plus the monotonic time
//! since, so timestamps do not jitter with the scheduler; when the wall clock is stepped, the
//! schedule's wall time moves by the step from the next cycle on ([`Clock`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::Clock;
use crate::model::Timestamp;

/// Deadlines of every job of one connection.
#[derive(Debug)]
pub struct Schedule {
    /// Min-heap of (deadline, job index); the index breaks ties.
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    start: Instant,
    wall_start: Timestamp,
    offset_at_start: i64,
    clock: Arc<Clock>,
}

impl Schedule {
    /// `jobs` jobs, all first due `poll_offset` from now.
    pub fn new(jobs: usize, poll_offset: Duration, clock: Arc<Clock>) -> Self {
        let start = Instant::now() + poll_offset;
        let heap = (0..jobs).map(|j| Reverse((start, j))).collect();
        // A step of the wall clock moves this by the step, so timestamps follow the corrected
        // clock while the deadlines stay where they are.
        let wall_start = Timestamp(clock.now_ms() + poll_offset.as_millis() as i64);
        let offset_at_start = clock.offset_ms();
        Schedule {
            heap,
            start,
            wall_start,
            offset_at_start,
            clock,
        }
    }

    /// The job due first and its deadline (not waited for).
    pub fn pop(&mut self) -> Option<(Instant, usize)> {
        self.heap.pop().map(|Reverse(entry)| entry)
    }

    /// Puts a popped job back at the same deadline (it did not run).
    pub fn put_back(&mut self, due: Instant, job: usize) {
        self.heap.push(Reverse((due, job)));
    }

    /// The wall time of deadline `due`, following any step of the clock seen so far.
    pub fn wall_time(&self, due: Instant) -> Timestamp {
        // Reading the clock notices a step (whoever reads it first raises it, once).
        self.clock.now_ms();
        let stepped = self.clock.offset_ms() - self.offset_at_start;
        Timestamp(self.wall_start.0 + stepped + due.duration_since(self.start).as_millis() as i64)
    }

    /// Schedules `job`'s next deadline on its own grid after the run due at `due`, skipping the
    /// deadlines already past; returns how many were skipped (late ticks).
    pub fn reschedule(&mut self, due: Instant, job: usize, period: Duration) -> u32 {
        let mut next = due + period;
        let now = Instant::now();
        let mut missed = 0;
        if next <= now {
            let behind = now.duration_since(next);
            missed = (behind.as_nanos() / period.as_nanos().max(1)) as u32 + 1;
            next += period * missed;
        }
        self.heap.push(Reverse((next, job)));
        missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_stay_on_their_grid_and_late_ones_are_skipped() {
        let mut s = Schedule::new(2, Duration::from_millis(50), Clock::system());
        let t0 = Instant::now();
        let ms = |ms| t0 + Duration::from_millis(ms);
        let (due, job) = s.pop().expect("job 0");
        assert_eq!((due, job), (ms(50), 0));
        let wall0 = s.wall_time(due);
        assert_eq!(s.reschedule(due, job, Duration::from_millis(100)), 0);
        let (due1, job1) = s.pop().expect("job 1");
        assert_eq!((due1, job1), (ms(50), 1));
        // Job 1 ran long: 350 ms later its next deadlines at 150, 250 and 350 have passed.
        tokio::time::advance(Duration::from_millis(350)).await;
        assert_eq!(s.reschedule(due1, job1, Duration::from_millis(100)), 3);
        assert_eq!(s.pop(), Some((ms(150), 0)));
        assert_eq!(s.wall_time(ms(150)).0 - wall0.0, 100);
        s.put_back(ms(150), 0);
        assert_eq!(s.pop(), Some((ms(150), 0)));
        assert_eq!(s.pop(), Some((ms(450), 1)));
    }
}
