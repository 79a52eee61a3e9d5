//! Wall-clock steps: the system clock set forward or back (NTP's first sync on a gateway that boots
//! at 1970 without a real-time clock, an operator's `date -s`).
//!
//! Timestamps are wall-clock time, while schedules and timeouts run on the monotonic clock. A
//! [`StepDetector`] compares the two: between two observations the wall clock should advance by
//! what the monotonic clock advanced, give or take [`STEP_TOLERANCE`] plus
//! [`SLEW_ALLOWANCE_PPM`] of the elapsed time (NTP slews the wall clock by at most 500 ppm, which
//! is drift, not a step). A larger difference is a step of that size. Every observation re-anchors
//! the detector, so slow drift never adds up to a step.
//!
//! One [`Clock`] per process ([`Clock::system`]) is shared by the pollers and the spools: whoever
//! reads it first after a step detects it, and it is recorded once (one `clock_step` event, one
//! count in `smeltwatch_clock_steps_total`, one warning in the log). The others learn of it from
//! [`Clock::offset_ms`] (the sum of every step so far: the poller re-anchors its schedule by it) or
//! [`Clock::steps_after`] (the spool keeps its `max_age` expiry off the step). Tests build their own
//! clock over a [`WallSource`] they control.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::model::{Event, EventKind, EventPhase, Record, Timestamp, Value};

/// A wall-clock difference up to this (plus the slew allowance) is jitter, not a step: reading two
/// clocks is not atomic, and a busy machine may be descheduled between the reads.
pub const STEP_TOLERANCE: Duration = Duration::from_secs(2);

/// The most NTP slews the wall clock, in parts per million of elapsed time (ntpd and chrony cap a
/// slew at 500 ppm); a difference within it is drift being corrected, not a step.
pub const SLEW_ALLOWANCE_PPM: u64 = 500;

/// Steps kept for [`Clock::steps_after`]; a reader that falls this far behind misses the oldest.
const STEPS_KEPT: usize = 64;

/// The name of [`EventKind::ClockStep`], the event raised for a step.
pub const CLOCK_STEP_EVENT: &str = "clock_step";

/// Where wall-clock time comes from: the system clock, or a test's.
pub trait WallSource: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemWall;

impl WallSource for SystemWall {
    fn now_ms(&self) -> i64 {
        Timestamp::now().0
    }
}

/// A wall clock a test sets by hand (and that does not advance by itself).
#[derive(Debug, Default)]
pub struct ManualWall(AtomicI64);

impl ManualWall {
    /// A clock reading `ms`.
    pub fn new(ms: i64) -> Arc<ManualWall> {
        Arc::new(ManualWall(AtomicI64::new(ms)))
    }

    /// Set the clock to `ms`.
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    /// Move the clock by `ms` (negative: back).
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl WallSource for ManualWall {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The system clock shifted by an offset a test sets: a gateway that boots at 1970 and is then
/// corrected, on a real monotonic clock.
#[derive(Debug, Default)]
pub struct ShiftedWall(AtomicI64);

impl ShiftedWall {
    /// The system clock shifted by `offset_ms`.
    pub fn new(offset_ms: i64) -> Arc<ShiftedWall> {
        Arc::new(ShiftedWall(AtomicI64::new(offset_ms)))
    }

    /// Shift the clock by `offset_ms` from the system clock from now on.
    pub fn set_offset(&self, offset_ms: i64) {
        self.0.store(offset_ms, Ordering::SeqCst);
    }
}

impl WallSource for ShiftedWall {
    fn now_ms(&self) -> i64 {
        Timestamp::now().0 + self.0.load(Ordering::SeqCst)
    }
}

/// One step of the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockStep {
    /// What the wall clock should have read (the last reading plus monotonic time since).
    pub expected_ms: i64,
    /// What it read.
    pub actual_ms: i64,
}

impl ClockStep {
    /// The size of the step: positive when the clock was set forward.
    pub fn delta_ms(&self) -> i64 {
        self.actual_ms - self.expected_ms
    }

    /// `forward` or `backward`.
    pub fn direction(&self) -> &'static str {
        if self.delta_ms() >= 0 {
            "forward"
        } else {
            "backward"
        }
    }
}

/// Detects steps from pairs of (wall, monotonic) readings. Pure: the caller reads the clocks.
#[derive(Debug, Clone, Copy)]
pub struct StepDetector {
    wall_ms: i64,
    mono: Instant,
    tolerance: Duration,
}

impl StepDetector {
    /// A detector anchored at this pair of readings.
    pub fn new(wall_ms: i64, mono: Instant, tolerance: Duration) -> Self {
        StepDetector {
            wall_ms,
            mono,
            tolerance,
        }
    }

    /// The step since the last observation, if the wall clock moved by more than the monotonic
    /// clock allows. Always re-anchors at this observation.
    pub fn observe(&mut self, wall_ms: i64, mono: Instant) -> Option<ClockStep> {
        let elapsed = mono.saturating_duration_since(self.mono);
        let elapsed_ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
        let expected_ms = self.wall_ms.saturating_add(elapsed_ms);
        let slew_ms = elapsed.as_millis() * u128::from(SLEW_ALLOWANCE_PPM) / 1_000_000;
        let allowed = self.tolerance.as_millis() + slew_ms;
        self.wall_ms = wall_ms;
        self.mono = mono;
        (u128::from(wall_ms.abs_diff(expected_ms)) > allowed).then_some(ClockStep {
            expected_ms,
            actual_ms: wall_ms,
        })
    }
}

#[derive(Debug)]
struct State {
    detector: StepDetector,
    /// Every step so far, numbered from 1; the last [`STEPS_KEPT`] are kept.
    steps: VecDeque<(u64, ClockStep)>,
    count: u64,
    offset_ms: i64,
    events: Option<mpsc::Sender<Record>>,
}

/// The process's view of the wall clock, with step detection (see the module documentation).
#[derive(Debug)]
pub struct Clock {
    wall: Arc<dyn WallSource>,
    /// The monotonic side: the OS clock for the system clock, tokio's (which a test may pause)
    /// for one built over a test's wall source.
    mono: fn() -> Instant,
    state: Mutex<State>,
}

impl Clock {
    /// The system clock, shared by every component of the process.
    pub fn system() -> Arc<Clock> {
        static SYSTEM: OnceLock<Arc<Clock>> = OnceLock::new();
        SYSTEM
            .get_or_init(|| {
                // Not tokio's clock: a test that pauses it must not look like a step to the
                // process's shared clock.
                Clock::with_mono(Arc::new(SystemWall), || {
                    Instant::from_std(std::time::Instant::now())
                })
            })
            .clone()
    }

    /// A clock over `wall`, anchored now, on tokio's monotonic clock (tests pause and advance it).
    pub fn new(wall: Arc<dyn WallSource>) -> Arc<Clock> {
        Clock::with_mono(wall, Instant::now)
    }

    fn with_mono(wall: Arc<dyn WallSource>, mono: fn() -> Instant) -> Arc<Clock> {
        let detector = StepDetector::new(wall.now_ms(), mono(), STEP_TOLERANCE);
        Arc::new(Clock {
            wall,
            mono,
            state: Mutex::new(State {
                detector,
                steps: VecDeque::new(),
                count: 0,
                offset_ms: 0,
                events: None,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing under the lock can panic; a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Raise `clock_step` events on `events` (the agent's event entrance) from now on.
    pub fn set_events(&self, events: mpsc::Sender<Record>) {
        self.state().events = Some(events);
    }

    /// The wall clock now, in ms since the Unix epoch, after checking it for a step since the last
    /// reading (a step is recorded, logged and raised as an event here).
    pub fn now_ms(&self) -> i64 {
        let mut st = self.state();
        let wall_ms = self.wall.now_ms();
        if let Some(step) = st.detector.observe(wall_ms, (self.mono)()) {
            st.count += 1;
            st.offset_ms = st.offset_ms.saturating_add(step.delta_ms());
            let n = st.count;
            st.steps.push_back((n, step));
            if st.steps.len() > STEPS_KEPT {
                st.steps.pop_front();
            }
            tracing::warn!(
                step_ms = step.delta_ms(),
                expected = %step.expected_ms,
                actual = %step.actual_ms,
                "the wall clock was stepped {} by {}; timestamps follow the new time",
                step.direction(),
                humantime::format_duration(Duration::from_millis(step.delta_ms().unsigned_abs()))
            );
            if let Some(events) = &st.events
                && events.try_send(Record::Event(step_event(&step))).is_err()
            {
                tracing::warn!("event channel full or closed; clock_step not recorded");
            }
        }
        wall_ms
    }

    /// Steps detected so far.
    pub fn steps_total(&self) -> u64 {
        self.state().count
    }

    /// The sum of every step detected so far, ms (positive: net forward).
    pub fn offset_ms(&self) -> i64 {
        self.state().offset_ms
    }

    /// The steps numbered after `seen` (a value of [`Clock::steps_total`]), oldest first, with
    /// their numbers.
    pub fn steps_after(&self, seen: u64) -> Vec<(u64, ClockStep)> {
        self.state()
            .steps
            .iter()
            .filter(|(n, _)| *n > seen)
            .copied()
            .collect()
    }
}

/// The `clock_step` event of `step`.
pub fn step_event(step: &ClockStep) -> Event {
    let delta = step.delta_ms();
    Event {
        kind: EventKind::ClockStep,
        subject: Arc::from("system_clock"),
        phase: EventPhase::Instant,
        ts: Timestamp(step.actual_ms),
        attributes: vec![
            (Arc::from("step_ms"), Value::Int(delta)),
            (Arc::from("direction"), Value::Text(step.direction().into())),
            (Arc::from("expected_ms"), Value::Int(step.expected_ms)),
        ],
        message: format!(
            "the wall clock was stepped {} by {}",
            step.direction(),
            humantime::format_duration(Duration::from_millis(delta.unsigned_abs()))
        ),
    }
}
