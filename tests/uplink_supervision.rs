//! Every uplink kind runs supervised, and every one stops within the grace period, in the whole
//! agent (`app::start`) with a simulated Modbus plant and a real Mosquitto started by each test.
//!
//! - An MQTT or Sparkplug uplink whose spool closes under it does not end silently: its status
//!   turns `failed` and names the next restart, it is restarted with a backoff, `/readyz` says
//!   not ready and `/metrics` counts the restarts (`smeltwatch_uplink_restarts_total`).
//! - With the broker frozen (SIGSTOP: publishes go out and nothing is acknowledged) and an HJ 212
//!   platform that never answers, a stop with `grace_period = 1s` takes about that long for all
//!   three uplink kinds, and what the broker did not acknowledge stays in the MQTT spool.

mod common;

use std::path::Path;
use std::time::Duration;

use common::agent;
use common::mosquitto::Mosquitto;
use common::plant::{meter_site_toml, meter_source_toml, meters, mqtt_uplink_toml_backing_off_to};
use common::probe::assert_not_ready_for;
use common::status::status_comes;
use smeltwatch::app::Agent;
use smeltwatch::config::SpoolConfig;
use smeltwatch::live::UplinkView;
use smeltwatch::spool::SpoolHandle;
use smeltwatch::uplink::LinkState;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

/// Two meters polled every 100 ms; returns the port.
async fn plant(shutdown: &CancellationToken) -> u16 {
    meters(2, shutdown).await
}

fn mqtt_uplink(broker: u16) -> String {
    format!(
        "\n{}",
        mqtt_uplink_toml_backing_off_to("plant", broker, &["live"], "400ms")
    )
}

fn sparkplug_uplink(broker: u16) -> String {
    format!(
        r#"
[[uplinks]]
name = "scada"
type = "sparkplug"
broker = "mqtt://127.0.0.1:{broker}"
group_id = "smelter"
edge_node_id = "line1"
keep_alive = "5s"
reconnect_min = "100ms"
reconnect_max = "400ms"
"#
    )
}

fn hj212_uplink(platform: std::net::SocketAddr) -> String {
    format!(
        r#"
[[uplinks]]
name = "province"
type = "hj212"
platform = "{platform}"
streams = ["live"]
reconnect_min = "100ms"
reconnect_max = "400ms"
[uplinks.hj212]
mn = "QHAL0000000000000000GTC1"
pw = "123456"
over_time = "10s"
"#
    )
}

async fn start_agent(state: &Path, modbus: u16, uplinks: &[String], grace: Duration) -> Agent {
    let mut src = meter_site_toml("sup", state);
    src.push_str(&meter_source_toml("bus", modbus, "100ms", "", 2));
    for u in uplinks {
        src.push_str(u);
    }
    agent::start_with_grace(&state.join("uplink_supervision.toml"), &src, grace).await
}

fn view(agent: &Agent, name: &str) -> UplinkView {
    agent
        .live
        .uplinks
        .lock()
        .unwrap()
        .iter()
        .find(|v| v.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("no uplink {name}"))
}

/// Wait until the uplink got records acknowledged.
async fn delivering(view: &UplinkView) {
    let mut status = view.status.clone();
    timeout(Duration::from_secs(30), async {
        while status.borrow_and_update().acked_total == 0 {
            status.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "uplink {} delivers nothing: {}",
            view.name,
            *status.borrow()
        )
    });
}

/// Close the uplink's spool under it; then its status shows `failed` with the restart count, it
/// is restarted (a second failure follows after the backoff), `/readyz` is not ready and
/// `/metrics` counts the restarts.
async fn spool_closes_under(agent: &Agent, name: &str) {
    let view = view(agent, name);
    delivering(&view).await;
    view.spool.clone().close().await.unwrap();
    let mut status = view.status.clone();
    let restarted = status_comes(
        &mut status,
        Duration::from_secs(15),
        |s| matches!(&s.state, LinkState::Failed(r) if r.contains("restart 2")),
    )
    .await;
    assert_eq!(
        restarted,
        Ok(true),
        "uplink {name}: status {} after its spool closed",
        *status.borrow()
    );
    assert!(status.borrow().restarts >= 2, "{}", *status.borrow());
    let collected = std::sync::Mutex::new(smeltwatch::live::feed::Collected::default());
    let snap = smeltwatch::http::snapshot::Snapshot::gather(&agent.live, &collected).await;
    assert_not_ready_for(&snap, &format!("{name:?} failed"));
    let metrics = smeltwatch::http::metrics::render(&snap);
    let restarts: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "smeltwatch_uplink_restarts_total{{uplink=\"{name}\"}} "
            ))
        })
        .unwrap_or_else(|| panic!("no restarts counter for {name}:\n{metrics}"))
        .parse()
        .unwrap();
    assert!(restarts >= 2, "{restarts}");
}

/// [`spool_closes_under`] for an agent whose one uplink, `name`, is `uplink` to a fresh broker.
async fn spool_closes_with_one_uplink(uplink: fn(u16) -> String, name: &str) {
    let stop_plant = CancellationToken::new();
    let modbus = plant(&stop_plant).await;
    let broker = Mosquitto::start();
    let state = tempfile::tempdir().unwrap();
    let agent = start_agent(
        state.path(),
        modbus,
        &[uplink(broker.port)],
        Duration::from_secs(1),
    )
    .await;
    spool_closes_under(&agent, name).await;
    agent.shutdown().await;
    stop_plant.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_uplink_whose_spool_closes_is_restarted_and_reported() {
    spool_closes_with_one_uplink(mqtt_uplink, "plant").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparkplug_uplink_whose_spool_closes_is_restarted_and_reported() {
    spool_closes_with_one_uplink(sparkplug_uplink, "scada").await;
}

/// A platform that takes connections and reads what it is sent, and never answers.
async fn silent_platform() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut conn, &mut sink).await;
            });
        }
    });
    (addr, task)
}

fn waiting_in(spool_file: &Path) -> u64 {
    let rt = tokio::runtime::Handle::current();
    let spool = SpoolHandle::open(spool_file, &SpoolConfig::default()).unwrap();
    tokio::task::block_in_place(|| rt.block_on(spool.stats()))
        .unwrap()
        .records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_uplink_kind_stops_within_the_grace_period_and_keeps_the_unsent() {
    let stop_plant = CancellationToken::new();
    let modbus = plant(&stop_plant).await;
    let broker = Mosquitto::start();
    let (platform, platform_task) = silent_platform().await;
    let state = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(1);
    let agent = start_agent(
        state.path(),
        modbus,
        &[
            mqtt_uplink(broker.port),
            sparkplug_uplink(broker.port),
            hj212_uplink(platform),
        ],
        grace,
    )
    .await;
    delivering(&view(&agent, "plant")).await;
    delivering(&view(&agent, "scada")).await;
    // Publishes go out into the socket; nothing comes back.
    broker.pause();
    let plant_status = view(&agent, "plant").status;
    timeout(Duration::from_secs(10), async {
        let mut s = plant_status.clone();
        while s.borrow_and_update().in_flight == 0 {
            s.changed().await.unwrap();
        }
    })
    .await
    .expect("MQTT publishes in flight to the frozen broker");
    let started = Instant::now();
    agent.shutdown().await;
    let took = started.elapsed();
    broker.resume();
    assert!(
        took < grace + Duration::from_millis(1200),
        "shutdown with grace_period {grace:?} took {took:?}"
    );
    // The MQTT uplink's publishes to the frozen broker were never acknowledged.
    let file = state.path().join("spool-plant.db");
    assert!(waiting_in(&file) > 0, "nothing left in {}", file.display());
    stop_plant.cancel();
    platform_task.abort();
}
