//! The end-to-end load harness (`benches/e2e`) counts correctly: a tiny plant polled for a few
//! seconds is delivered complete, through the agent and through the reference loop. This checks
//! the harness, not speed: no figure here depends on the machine.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::peers;
use smeltwatch_testkit::e2e::{self as harness, Params, PollSchedule, Target};

fn params(target: Target) -> Params {
    Params {
        agent_bin: PathBuf::from(env!("CARGO_BIN_EXE_smeltwatch")),
        target,
        devices: 2,
        registers: 10,
        per_endpoint: 1,
        interval: Duration::from_millis(200),
        warmup: Duration::from_secs(2),
        duration: Duration::from_secs(3),
        outage: None,
        replay_rate: 1000,
        spool_max_bytes: 64 << 20,
        spool_synchronous: "full".into(),
        max_inflight: None,
        schedule: PollSchedule::Slots,
        unserved_devices: 0,
        work_dir: None,
    }
}

fn have_mosquitto() -> bool {
    std::process::Command::new("mosquitto")
        .arg("-h")
        .output()
        .is_ok()
        || peers::missing::<()>("mosquitto").is_some()
}

fn assert_complete(r: &harness::Report) {
    // 2 devices × 10 points every 200 ms over ~3 s: 15 cycles each.
    assert!(
        (280..=320).contains(&r.expected_points),
        "expected points {} for a 3 s window",
        r.expected_points
    );
    assert_eq!(r.delivered_points, r.expected_points, "{r:#?}");
    assert_eq!(r.completeness_pct, 100.0);
    assert_eq!(r.missing_cycles, 0);
    assert_eq!(r.incomplete_cycles, 0);
    assert!(r.latency.count as u64 * 10 == r.expected_points, "{r:#?}");
    assert!(r.cpu_s > 0.0 && r.cpu_us_per_point > 0.0, "{r:#?}");
    // Disk figures are per delivered record: every cycle of the window, once.
    let d = &r.disk;
    assert_eq!(d.delivered_records * 10, r.delivered_points, "{r:#?}");
    // The spool body (protobuf) is smaller than the JSON payload of the same batch.
    assert!(
        0.0 < d.spool_body_bytes_per_record
            && d.spool_body_bytes_per_record < d.payload_bytes_per_record,
        "{r:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_agent_run_is_complete() {
    if !have_mosquitto() {
        return;
    }
    let r = harness::run(&params(Target::Agent))
        .await
        .expect("harness run");
    assert_complete(&r);
    assert!(r.peak_rss_mb.is_some_and(|mb| mb > 1.0), "{r:#?}");
    assert!(
        r.late_ticks_total.is_some(),
        "late ticks scraped from /metrics"
    );
    // The spool commits every batch to disk (on a tmpfs nothing reaches a disk: not checked).
    let d = &r.disk;
    assert!(d.fs_type.is_some(), "{r:#?}");
    if d.fs_type.as_deref() != Some("tmpfs") {
        assert!(d.write_bytes > 0 && d.write_over_body > 0.0, "{r:#?}");
    }
    assert!(d.log_bytes.is_some(), "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_reference_run_is_complete() {
    if !have_mosquitto() {
        return;
    }
    let r = harness::run(&params(Target::Reference))
        .await
        .expect("harness run");
    assert_complete(&r);
    assert_eq!(r.late_ticks_total, Some(0));
    // The reference loop keeps nothing on disk: its thread's counters stay (next to) zero.
    assert!(r.disk.write_bytes < 64 * 1024, "{r:#?}");
    assert_eq!(r.disk.fs_type, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_shows_as_missing_points() {
    if !have_mosquitto() {
        return;
    }
    // The second device is configured in the agent but not served by the simulator (its unit id
    // is answered with exception 0x0B): its readings arrive, but not `good`.
    let mut p = params(Target::Agent);
    p.per_endpoint = 2;
    p.unserved_devices = 1;
    let r = harness::run(&p).await.expect("harness run");
    assert!(
        (r.completeness_pct - 50.0).abs() < 1.0,
        "one of two devices answers: {r:#?}"
    );
    assert!(r.incomplete_cycles > 0);
}
