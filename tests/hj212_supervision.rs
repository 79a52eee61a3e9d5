//! The HJ 212 uplink inside the agent: a stack simulator polled every 200 ms, its readings sent as
//! 2011 packets to a fake platform that acknowledges each one. The uplink's delivery shows in the
//! completeness accounting, and a spool failure under the uplink shows in its status and in the
//! readiness verdict instead of leaving it "connected".

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::hj212::next_packet;
use smeltwatch::app::{Agent, RunOptions};
use smeltwatch::config::{self, Stream};
use smeltwatch::model::Timestamp;
use smeltwatch::publish::encode::hj212::{self, Table};
use smeltwatch::publish::mqtt::LinkState;
use smeltwatch::simulator::{self, BindMode, RunningSimulator, SimulatorConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const MN: &str = "QHAL0000000000000000GTC1";

async fn stack_simulator() -> (RunningSimulator, u16) {
    let cfg: SimulatorConfig = toml::from_str(
        r#"
seed = 7
tick = "50ms"
[[stacks]]
name = "gtc1_stack"
listen = "127.0.0.1:0"
unit_id = 1
profile = "potline_gtc"
"#,
    )
    .unwrap();
    let sim = simulator::start(&cfg, BindMode::AnyPort).await.unwrap();
    let port = sim.endpoints()[0].bound.port();
    (sim, port)
}

/// The simulator's CEMS map polled every 200 ms (the shipped map polls every 10 s).
fn fast_map(dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("config/maps/cems.csv")).unwrap();
    let out: Vec<String> = text
        .lines()
        .map(|l| l.replacen(",10s,", ",200ms,", 1))
        .collect();
    let path = dir.join("cems.csv");
    std::fs::write(&path, out.join("\n")).unwrap();
    path
}

async fn start_agent(state: &Path, modbus_port: u16, platform: std::net::SocketAddr) -> Agent {
    let toml = format!(
        r#"
site = "qh-al-01"
state_dir = "{state}"

[register_maps.cems]
csv = "{map}"

[[sources]]
name = "gtc1"
tcp = "127.0.0.1:{modbus_port}"
timeout = "1s"

[[sources.devices]]
name = "gtc1_stack"
unit_id = 1
map = "cems"

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
        map = fast_map(state).display(),
    );
    let file = state.join("smeltwatch.toml");
    std::fs::write(&file, toml).unwrap();
    let cfg = config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    smeltwatch::app::start(
        cfg,
        RunOptions {
            grace_period: Duration::from_secs(2),
            reload: None,
        },
    )
    .await
    .unwrap()
}

/// A platform that acknowledges every packet on every connection.
fn acking_platform(listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let table = Table::hj212_2017();
        while let Ok((mut conn, _)) = listener.accept().await {
            let table = table.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(p) = next_packet(&mut conn, &mut buf, &table).await {
                    if p.wants_ack() {
                        let ack = hj212::data_response(&table, &p).unwrap();
                        if conn.write_all(ack.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    })
}

fn delivered_by(agent: &Agent, uplink: &str) -> u64 {
    agent
        .live
        .completeness
        .live_view(Timestamp::now())
        .iter()
        .flat_map(|(_, report)| report.rows.iter())
        .filter(|row| row.stream == Stream::Live)
        .flat_map(|row| row.delivered.iter())
        .filter(|(u, _)| u == uplink)
        .map(|(_, n)| *n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_the_platform_acknowledged_count_as_delivered() {
    let (_sim, modbus_port) = stack_simulator().await;
    let state = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let platform = acking_platform_at(listener);
    let agent = start_agent(state.path(), modbus_port, platform.0).await;
    let mut status = agent.live.uplinks.lock().unwrap()[0].status.clone();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if status.borrow_and_update().acked_total > 0 && delivered_by(&agent, "province") > 0 {
                return;
            }
            status.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "acked {} records, completeness shows {} values delivered",
            status.borrow().acked_total,
            delivered_by(&agent, "province")
        )
    });
    agent.shutdown().await;
    platform.1.abort();
}

fn acking_platform_at(
    listener: TcpListener,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let addr = listener.local_addr().unwrap();
    (addr, acking_platform(listener))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_failure_under_the_uplink_shows_in_its_status_and_readiness() {
    let (_sim, modbus_port) = stack_simulator().await;
    let state = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let platform = acking_platform_at(listener);
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
    let failed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if status.borrow_and_update().state.as_str() == "failed" {
                return true;
            }
            if status.changed().await.is_err() {
                return false; // nobody updates the status any more
            }
        }
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
    let collected = std::sync::Mutex::new(smeltwatch::http::feed::Collected::default());
    let snap = smeltwatch::http::snapshot::Snapshot::gather(&agent.live, &collected).await;
    let verdict = smeltwatch::http::snapshot::readiness(&snap, &Default::default());
    assert!(!verdict.ready);
    assert!(
        verdict
            .reasons
            .iter()
            .any(|r| r.contains("\"province\" failed")),
        "{:?}",
        verdict.reasons
    );
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
    let sim_cfg: SimulatorConfig = toml::from_str(
        r#"
seed = 7
tick = "50ms"
[[stacks]]
name = "gtc1_stack"
listen = "127.0.0.1:0"
unit_id = 1
profile = "potline_gtc"
[[stacks]]
name = "gtc2_stack"
listen = "127.0.0.1:0"
unit_id = 2
profile = "potline_gtc"
"#,
    )
    .unwrap();
    let sim = simulator::start(&sim_cfg, BindMode::AnyPort).await.unwrap();
    // Both analysers answer on one endpoint, unit ids 1 and 2.
    let port = sim.endpoints()[0].bound.port();
    let state = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<(String, u16)>();
    let platform = tokio::spawn(async move {
        let table = Table::hj212_2017();
        while let Ok((mut conn, _)) = listener.accept().await {
            let (table, seen) = (table.clone(), seen_tx.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(p) = next_packet(&mut conn, &mut buf, &table).await {
                    let _ = seen.send((p.mn.clone(), p.cn));
                    if p.wants_ack() {
                        let ack = hj212::data_response(&table, &p).unwrap();
                        if conn.write_all(ack.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let toml = format!(
        r#"
site = "qh-al-01"
state_dir = "{state}"

[register_maps.cems]
csv = "{map}"

[[sources]]
name = "cems"
tcp = "127.0.0.1:{port}"
timeout = "1s"
[[sources.devices]]
name = "gtc1_cems"
unit_id = 1
map = "cems"
[[sources.devices]]
name = "gtc2_cems"
unit_id = 2
map = "cems"

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
        map = fast_map(state.path()).display(),
    );
    let file = state.path().join("smeltwatch.toml");
    std::fs::write(&file, toml).unwrap();
    let cfg = config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let agent = smeltwatch::app::start(
        cfg,
        RunOptions {
            grace_period: Duration::from_secs(2),
            reload: None,
        },
    )
    .await
    .unwrap();
    let mut by_mn = std::collections::BTreeMap::<String, usize>::new();
    let both = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some((mn, cn)) = seen.recv().await {
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
