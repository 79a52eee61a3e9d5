//! The HJ 212 uplink inside the agent: a stack simulator polled every 200 ms, its readings sent as
//! 2011 packets to a fake platform that acknowledges each one. The uplink's delivery shows in the
//! completeness accounting, and a spool failure under the uplink shows in its status and in the
//! readiness verdict instead of leaving it "connected".

mod common;

use std::path::Path;
use std::time::Duration;

use common::agent::{self, wait_delivered};
use common::hj212::{acking_platform, platform};
use common::plant::{cems_map, gtc1_source_toml, stack_simulator, two_cems_source_toml};
use common::probe::assert_not_ready_for;
use common::status::status_comes;
use smeltwatch::app::Agent;
use smeltwatch::codec::hj212;
use smeltwatch::uplink::LinkState;
use tokio::net::TcpListener;

const MN: &str = "QHAL0000000000000000GTC1";

async fn start_agent(state: &Path, modbus_port: u16, platform: std::net::SocketAddr) -> Agent {
    let toml = format!(
        r#"
site = "qh-al-01"
state_dir = "{state}"
{gtc1}
[[uplinks]]
name = "province"
type = "hj212"
platform = "{platform}"
streams = ["live"]
reconnect_min = "50ms"
reconnect_max = "200ms"
[uplinks.hj212]
mn = "{MN}"
pw = "123456"
over_time = "2s"
"#,
        state = state.display(),
        gtc1 = gtc1_source_toml(modbus_port, &cems_map(state, "200ms")),
    );
    agent::start(&state.join("smeltwatch.toml"), &toml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_the_platform_acknowledged_count_as_delivered() {
    let (_sim, modbus_port) = stack_simulator(1, 1.0).await;
    let state = tempfile::tempdir().unwrap();
    let platform = acking_platform().await;
    let agent = start_agent(state.path(), modbus_port, platform.0).await;
    wait_delivered(&agent, "province", Duration::from_secs(30)).await;
    agent.shutdown().await;
    platform.1.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_failure_under_the_uplink_shows_in_its_status_and_readiness() {
    let (_sim, modbus_port) = stack_simulator(1, 1.0).await;
    let state = tempfile::tempdir().unwrap();
    let platform = acking_platform().await;
    let agent = start_agent(state.path(), modbus_port, platform.0).await;
    let view = agent.live.uplinks.lock().unwrap()[0].clone();
    let mut status = view.status.clone();
    tokio::time::timeout(Duration::from_secs(30), async {
        while status.borrow_and_update().acked_total == 0 {
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("the uplink delivers");
    // The spool under the uplink fails for good.
    view.spool.clone().close().await.unwrap();
    let failed = status_comes(&mut status, Duration::from_secs(10), |s| {
        s.state.as_str() == "failed"
    })
    .await;
    assert_eq!(
        failed,
        Ok(true),
        "status {} after the spool failed",
        *status.borrow()
    );
    // Restarted with a backoff: the status says which restart comes next.
    let mut restarts = status.clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(&restarts.borrow_and_update().state, LinkState::Failed(r) if r.contains("restart 2")) {
            restarts.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no second restart: {:?}", restarts.borrow().state));
    // The uplink is failed only between a restart's end and the next attempt (its backoff): take
    // snapshots until one falls in that window, as a readiness probe would.
    let collected = std::sync::Mutex::new(smeltwatch::live::feed::Collected::default());
    let snap = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let snap = smeltwatch::http::snapshot::Snapshot::gather(&agent.live, &collected).await;
            if snap.uplinks.iter().any(|u| u.state == "failed") {
                return snap;
            }
            restarts.changed().await.unwrap();
        }
    })
    .await
    .expect("a snapshot while the uplink is failed");
    assert_not_ready_for(&snap, "\"province\" failed");
    agent.shutdown().await;
    platform.1.abort();
}

/// Two stacks registered as separate monitoring points, each measured by a CEMS device whose
/// name is not the stack's: a platform records the MN of every 2011 packet it receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_data_of_each_stack_goes_out_under_its_own_mn() {
    const MN_SITE: &str = "QHAL0000000000000000SITE";
    const MN_1: &str = "QHAL0000000000000000GTC1";
    const MN_2: &str = "QHAL0000000000000000GTC2";
    // Both analysers answer on one endpoint, unit ids 1 and 2.
    let (sim, port) = stack_simulator(2, 1.0).await;
    let state = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let platform = platform(listener, None, Some(seen_tx));
    let toml = format!(
        r#"
site = "qh-al-01"
state_dir = "{state}"

{sources}
[calc]
utc_offset_hours = 8

[[calc.stacks]]
name = "gtc1_stack"
device = "cems/gtc1_cems"
limits = "gb25465_2010_al_pot_gas"
pollutants = {{ so2 = "so2_mg_m3" }}

[[calc.stacks]]
name = "gtc2_stack"
device = "cems/gtc2_cems"
limits = "gb25465_2010_al_pot_gas"
pollutants = {{ so2 = "so2_mg_m3" }}

[[uplinks]]
name = "province"
type = "hj212"
platform = "{addr}"
streams = ["live"]
reconnect_min = "50ms"
reconnect_max = "200ms"
[uplinks.hj212]
mn = "{MN_SITE}"
pw = "123456"
over_time = "2s"
[uplinks.hj212.mn_by_stack]
gtc1_stack = "{MN_1}"
gtc2_stack = "{MN_2}"
"#,
        state = state.path().display(),
        sources = two_cems_source_toml(port, &cems_map(state.path(), "200ms")),
    );
    let agent = agent::start(&state.path().join("smeltwatch.toml"), &toml).await;
    let mut by_mn = std::collections::BTreeMap::<String, usize>::new();
    let both = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(hj212::Packet { mn, cn, .. }) = seen.recv().await {
            if cn == 2011 {
                *by_mn.entry(mn).or_default() += 1;
            }
            if by_mn.get(MN_1).is_some_and(|n| *n >= 3) && by_mn.get(MN_2).is_some_and(|n| *n >= 3)
            {
                return;
            }
        }
    })
    .await;
    assert!(
        both.is_ok(),
        "2011 packets per MN: {by_mn:?} (each stack's CEMS data belongs to its own MN)"
    );
    assert_eq!(
        by_mn.get(MN_SITE),
        None,
        "no stack's live data goes out under the site's MN: {by_mn:?}"
    );
    agent.shutdown().await;
    platform.abort();
    sim.shutdown().await;
}
