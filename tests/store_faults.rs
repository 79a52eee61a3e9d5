//! A store that keeps failing must not stop acquisition: `state_dir` on a 2 MiB tmpfs that fills
//! up while `[calc]` runs on plant time (minute windows close every half second, so the history
//! store is written all the time), with a live broker (the uplink stays connected, so nothing
//! else makes the agent look unhealthy).
//!
//! Asserted once the file system is full: the pollers' cycles grow by more than the fan-out
//! channel holds (so nothing waits on a store), the records that could not be stored are counted
//! per store and reason in `/metrics`, and `/readyz` answers 503 naming the failing store.
//! Needs root for `mount -t tmpfs`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::agent::poll_cycles;
use common::mosquitto::Mosquitto;
use common::plant::{
    GTC1_STACK_CALC, cems_map, four_streams_uplink_toml, gtc1_source_toml, meter_site_toml,
    meter_source_toml, meters, stack_simulator,
};
use common::probe::{SmallFs, get, metric_sum};
use common::{agent, free_port};
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

/// Meters per fast source, polled every 50 ms: with two sources 640 batches a second, so the
/// fan-out channel (4096 batches) would fill within seconds if the fan-out stopped reading.
const METERS: u8 = 16;

fn agent_toml(
    state: &Path,
    maps: &Path,
    stack_port: u16,
    meter_ports: &[u16],
    mqtt_port: u16,
    http_port: u16,
) -> String {
    let mut toml = meter_site_toml("full-disk", state);
    toml.push_str(&gtc1_source_toml(stack_port, &cems_map(maps, "100ms")));
    for (i, port) in meter_ports.iter().enumerate() {
        toml.push_str(&meter_source_toml(
            &format!("bus{i}"),
            *port,
            "50ms",
            &format!("bus{i}_"),
            METERS,
        ));
    }
    let plant_uplink = four_streams_uplink_toml(mqtt_port);
    toml.push_str(&format!(
        r#"
{plant_uplink}
[http]
listen = "127.0.0.1:{http_port}"

[calc]
utc_offset_hours = 8

[calc.simulated_time]
scale = 120
start = "2025-03-01T00:00:00Z"
{GTC1_STACK_CALC}"#
    ));
    toml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_dir_with_calc_on_never_stops_acquisition() {
    let fs = SmallFs::mount("2m");
    let work = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let (sim, stack_port) = stack_simulator(1, 120.0).await;
    let meter_ports = [meters(METERS, &stop).await, meters(METERS, &stop).await];
    let broker = Mosquitto::start();
    let http_port = free_port();
    let state = fs.path().join("state");
    let toml = agent_toml(
        &state,
        work.path(),
        stack_port,
        &meter_ports,
        broker.port,
        http_port,
    );
    let agent = agent::start(&work.path().join("full.toml"), &toml).await;
    let mut status = agent.live.uplinks.lock().unwrap()[0].status.clone();
    timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.acked_total > 0),
    )
    .await
    .expect("the uplink delivers before the disk fills")
    .unwrap();
    let (code, body) = get(http_port, "/readyz").await;
    assert_eq!(code, 200, "ready before the fault: {body}");

    // The disk fills up.
    fs.fill();
    let full_at = poll_cycles(&agent);

    // Records the stores could not keep are counted, per store and reason.
    let lost = timeout(Duration::from_secs(30), async {
        loop {
            let (_, text) = get(http_port, "/metrics").await;
            let history = metric_sum(
                &text,
                "smeltwatch_store_lost_records_total",
                "store=\"history\"",
            );
            if history > 0 {
                return text;
            }
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no record counted as lost by the history store within 30 s of a full disk \
             (cycles {full_at} at full, {} now)",
            poll_cycles(&agent)
        )
    });
    eprintln!(
        "lost: {}",
        lost.lines()
            .filter(|l| l.starts_with("smeltwatch_store_lost_records_total"))
            .collect::<Vec<_>>()
            .join("; ")
    );

    // Acquisition goes on: the pollers complete more cycles than the fan-out channel holds.
    let wanted = full_at + 3 * 4096;
    let r = timeout(Duration::from_secs(60), async {
        while poll_cycles(&agent) < wanted {
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "acquisition stalled on a full disk: {} cycles at full, {} after 60 s (wanted {wanted})",
        full_at,
        poll_cycles(&agent)
    );

    // Not ready, and it says why.
    let (code, body) = get(http_port, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("history store"), "{body}");
    assert!(agent.is_alive(), "the pipeline tasks keep running");

    // The stop finishes within its grace period even with every store failing.
    timeout(Duration::from_secs(10), agent.shutdown())
        .await
        .expect("shutdown within the grace period");
    stop.cancel();
    sim.shutdown().await;
}
