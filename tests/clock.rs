//! The wall-clock step detector and the shared clock, on tokio's paused clock.

use std::time::Duration;

use smeltwatch::clock::{CLOCK_STEP_EVENT, Clock, ManualWall, STEP_TOLERANCE, StepDetector};
use smeltwatch::model::{Record, Timestamp, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

const DAY_MS: i64 = 86_400_000;

#[tokio::test(start_paused = true)]
async fn the_detector_sees_steps_and_ignores_jitter_and_slew() {
    let t0 = Instant::now();
    let mut d = StepDetector::new(1_000, t0, STEP_TOLERANCE);
    // One second passes on both clocks, and a little jitter: no step.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(d.observe(2_300, Instant::now()), None);
    // An hour of monotonic time with the wall clock slewed 1.5 s ahead: drift, not a step.
    tokio::time::advance(Duration::from_secs(3_600)).await;
    assert_eq!(d.observe(2_300 + 3_601_500, Instant::now()), None);
    // The clock set forward by a day.
    tokio::time::advance(Duration::from_secs(1)).await;
    let step = d
        .observe(2_300 + 3_602_500 + DAY_MS, Instant::now())
        .unwrap();
    assert_eq!(step.delta_ms(), DAY_MS);
    assert_eq!(step.direction(), "forward");
    // Re-anchored: the next second is no step; a step back is.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(d.observe(step.actual_ms + 1_000, Instant::now()), None);
    let back = d
        .observe(step.actual_ms + 1_000 - 5_000, Instant::now())
        .unwrap();
    assert_eq!((back.delta_ms(), back.direction()), (-5_000, "backward"));
}

#[tokio::test(start_paused = true)]
async fn a_step_is_recorded_once_and_raised_as_one_event() {
    let wall = ManualWall::new(0);
    let clock = Clock::new(wall.clone());
    let (tx, mut rx) = mpsc::channel(8);
    clock.set_events(tx);
    tokio::time::advance(Duration::from_secs(10)).await;
    wall.set(10_000);
    assert_eq!(clock.now_ms(), 10_000);
    // NTP: 1970 becomes 2026.
    let now_2026 = 1_780_000_000_000;
    wall.set(now_2026);
    assert_eq!(clock.now_ms(), now_2026);
    // Everyone who reads the clock afterwards sees no new step.
    assert_eq!(clock.now_ms(), now_2026);
    assert_eq!(clock.steps_total(), 1);
    assert_eq!(clock.offset_ms(), now_2026 - 10_000);
    assert_eq!(clock.steps_after(0).len(), 1);
    assert!(clock.steps_after(1).is_empty());
    let Record::Event(e) = rx.try_recv().unwrap() else {
        panic!("not an event")
    };
    assert_eq!(&*e.kind, CLOCK_STEP_EVENT);
    assert_eq!(e.ts, Timestamp(now_2026));
    assert!(
        e.attributes
            .iter()
            .any(|(k, v)| &**k == "step_ms" && *v == Value::Int(now_2026 - 10_000))
    );
    assert!(rx.try_recv().is_err(), "one event per step");
}
