//! End to end: Modbus devices → agent → a real Mosquitto → a subscriber that checks every value,
//! unit, timestamp, quality and sequence number; and the agent killed with SIGKILL mid-stream and
//! restarted on the same spool.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::agent;
use common::mosquitto::{self, Mosquitto};
use common::plant::{
    RECTIFIER_DEVICE, device, f32_words, mqtt_uplink_toml, polled_source_toml, serve,
};
use serde_json::Value as Json;
use smeltwatch::config::{self, SpoolConfig};
use smeltwatch::model::Timestamp;
use smeltwatch::simulator::{ExceptionFault, Faults, UnitMap};
use smeltwatch::spool::Spool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A small plant with a known state: a rectifier and three pots, one of which reports NaN, one an
/// implausible bath temperature, and one refuses its status register.
async fn known_plant(shutdown: &CancellationToken) -> u16 {
    let rectifier = device("rectifier");
    rectifier.set_input(0, &f32_words(400.5));
    let pot1 = device("pot_001");
    pot1.set_input(0, &f32_words(4.05));
    pot1.set_input(2, &[9550]);
    pot1.set_holding(20, &[1]);
    let pot2 = device("pot_002");
    pot2.set_input(0, &f32_words(f32::NAN));
    pot2.set_input(2, &[20000]);
    pot2.set_holding(20, &[1]);
    let pot3 = device("pot_003");
    pot3.set_input(0, &f32_words(8.75));
    pot3.set_input(2, &[9600]);
    pot3.set_faults(Faults {
        exception: Some(ExceptionFault {
            code: 2,
            addresses: Some(20..=20),
        }),
        ..Faults::default()
    });
    serve(
        UnitMap::from([(1, rectifier), (10, pot1), (11, pot2), (12, pot3)]),
        shutdown,
    )
    .await
}

fn plant_config(modbus_port: u16, mqtt_port: u16, state_dir: &Path, poll: &str) -> String {
    format!(
        r#"
site = "e2e"
state_dir = "{state}"

[register_maps.pcu.points.cell_voltage_v]
area = "input"
address = 0
type = "f32"
unit = "V"
range = [0.0, 60.0]
[register_maps.pcu.points.bath_temp_c]
area = "input"
address = 2
type = "u16"
scale = 0.1
unit = "degC"
range = [800.0, 1100.0]
[register_maps.pcu.points.status]
area = "holding"
address = 20
type = "u16"
{source}{RECTIFIER_DEVICE}
[[sources.devices]]
name = "pot_{{n:03}}"
count = 3
unit_id = 10
map = "pcu"

{uplink}"#,
        source = polled_source_toml("line1", modbus_port, poll),
        uplink = mqtt_uplink_toml("plant", mqtt_port, &["live"]),
        state = state_dir.display()
    )
}

fn reading<'a>(msg: &'a Json, point: &str) -> &'a Json {
    msg["readings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["point"] == point)
        .unwrap_or_else(|| panic!("no {point} in {msg}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_unit_timestamp_and_quality_arrives_at_the_broker() {
    let broker = Mosquitto::start();
    let shutdown = CancellationToken::new();
    let modbus_port = known_plant(&shutdown).await;
    let state = tempfile::tempdir().unwrap();
    let (_sub, mut rx) = mosquitto::subscribe(broker.port, "smeltwatch/#").await;

    let toml = plant_config(modbus_port, broker.port, state.path(), "200ms");
    let cfg = config::parse(&toml, Path::new("e2e.toml")).unwrap_or_else(|e| panic!("{e}"));
    let started = Timestamp::now();
    let agent = smeltwatch::app::start(cfg, Default::default())
        .await
        .unwrap();

    let mut live: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    let mut status = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while live.len() < 4 || live.values().any(|v| v.len() < 3) || status.is_none() {
        let (topic, payload) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("messages stopped arriving")
            .unwrap();
        let msg: Json = serde_json::from_slice(&payload).expect("JSON payload");
        if topic == "smeltwatch/e2e/status" {
            status = Some(msg);
            continue;
        }
        let device = msg["device"].as_str().unwrap().to_string();
        assert_eq!(topic, format!("smeltwatch/e2e/live/line1/{device}"));
        live.entry(device).or_default().push(msg);
    }
    agent.shutdown().await;
    let finished = Timestamp::now();
    shutdown.cancel();

    assert_eq!(status.unwrap()["state"], "online");

    // seq: strictly increasing across the whole live stream, starting at 1, no gap.
    let mut seqs: Vec<u64> = live
        .values()
        .flatten()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    for msgs in live.values() {
        for m in msgs {
            assert_eq!(m["site"], "e2e");
            assert_eq!(m["stream"], "live");
            assert_eq!(m["source"], "line1");
            assert_eq!(m["poll_interval_ms"], 200);
            for r in m["readings"].as_array().unwrap() {
                let ts_ms = r["ts_ms"].as_i64().unwrap();
                assert!(ts_ms >= started.0 && ts_ms <= finished.0, "{r}");
                assert_eq!(r["ts"], Timestamp(ts_ms).to_rfc3339());
            }
        }
    }
    let rect = &live["rectifier"][0];
    assert_eq!(rect["unit_id"], 1);
    let current = reading(rect, "line_current_ka");
    assert_eq!(current["value"].as_f64().unwrap(), 400.5);
    assert_eq!(current["unit"], "kA");
    assert_eq!(current["quality"], "good");

    let pot1 = &live["pot_001"][0];
    assert_eq!(pot1["unit_id"], 10);
    let v = reading(pot1, "cell_voltage_v");
    assert!((v["value"].as_f64().unwrap() - 4.05).abs() < 1e-6);
    assert_eq!((&v["unit"], &v["quality"]), (&"V".into(), &"good".into()));
    let t = reading(pot1, "bath_temp_c");
    assert!((t["value"].as_f64().unwrap() - 955.0).abs() < 1e-9);
    assert_eq!(
        (&t["unit"], &t["quality"]),
        (&"degC".into(), &"good".into())
    );
    assert_eq!(reading(pot1, "status")["value"], 1);

    // NaN is never sent as a number; an implausible value keeps its value and says so.
    let pot2 = &live["pot_002"][0];
    let v = reading(pot2, "cell_voltage_v");
    assert!(v["value"].is_null());
    assert_eq!(v["quality"], "out_of_range");
    let t = reading(pot2, "bath_temp_c");
    assert_eq!(t["value"].as_f64().unwrap(), 2000.0);
    assert_eq!(t["quality"], "out_of_range");

    // An exception marks the refused register only.
    let pot3 = &live["pot_003"][0];
    assert_eq!(reading(pot3, "cell_voltage_v")["quality"], "good");
    assert_eq!(reading(pot3, "status")["quality"], "device_exception");
    assert!(reading(pot3, "status")["value"].is_null());
}

fn spawn_agent(config: &Path, mqtt_port: u16) -> Child {
    agent::run_command(config)
        .args(["--broker", &format!("mqtt://127.0.0.1:{mqtt_port}")])
        .spawn()
        .expect("starting smeltwatch run")
}

/// Receive live messages until `n` more have arrived; returns (seq, device, scheduled) triples.
async fn receive(
    rx: &mut mpsc::Receiver<(String, Vec<u8>)>,
    n: usize,
    out: &mut Vec<(u64, String, String)>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut got = 0;
    while got < n {
        let (topic, payload) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("messages stopped arriving")
            .unwrap();
        if !topic.contains("/live/") {
            continue;
        }
        let m: Json = serde_json::from_slice(&payload).unwrap();
        out.push((
            m["seq"].as_u64().unwrap(),
            m["device"].as_str().unwrap().to_string(),
            m["scheduled"].as_str().unwrap().to_string(),
        ));
        got += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_with_sigkill_loses_nothing_that_reached_its_spool() {
    let broker = Mosquitto::start();
    let shutdown = CancellationToken::new();
    let modbus_port = known_plant(&shutdown).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config_path = dir.path().join("plant.toml");
    // The broker in the file is wrong on purpose: `--broker` must override it.
    std::fs::write(&config_path, plant_config(modbus_port, 1, &state, "100ms")).unwrap();
    let (_sub, mut rx) = mosquitto::subscribe(broker.port, "smeltwatch/e2e/live/#").await;

    let mut received = Vec::new();
    let mut agent = spawn_agent(&config_path, broker.port);
    receive(&mut rx, 40, &mut received).await;
    agent.kill().expect("SIGKILL the agent");
    agent.wait().unwrap();
    let before_kill = received.iter().map(|r| r.0).max().unwrap();

    let mut agent = spawn_agent(&config_path, broker.port);
    receive(&mut rx, 60, &mut received).await;
    // Graceful stop this time: SIGTERM, and the agent must exit by itself.
    agent::signal(agent.id(), "-TERM");
    let status = agent.wait().unwrap();
    assert!(status.success(), "smeltwatch run exited with {status}");
    // Let the subscriber take in what the broker already has (the agent is gone).
    while let Ok(Some((topic, payload))) =
        tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
    {
        if topic.contains("/live/") {
            let m: Json = serde_json::from_slice(&payload).unwrap();
            received.push((
                m["seq"].as_u64().unwrap(),
                m["device"].as_str().unwrap().to_string(),
                m["scheduled"].as_str().unwrap().to_string(),
            ));
        }
    }
    shutdown.cancel();

    // Whatever the agent left unsent is still in its spool.
    let spool = Spool::open(&state.join("spool-plant.db"), &SpoolConfig::default()).unwrap();
    let left: Vec<u64> = spool
        .read_after(0, 1_000_000)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();

    // One seq is one record: a seq never names two different poll batches (no reuse after the
    // restart), and every seq ever assigned was delivered or is still in the spool (no gap).
    let mut content: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for (seq, device, scheduled) in &received {
        let prev = content.insert(*seq, (device.clone(), scheduled.clone()));
        if let Some(prev) = prev {
            assert_eq!(
                prev,
                (device.clone(), scheduled.clone()),
                "seq {seq} reused"
            );
        }
    }
    let all: BTreeSet<u64> = content
        .keys()
        .copied()
        .chain(left.iter().copied())
        .collect();
    let max = *all.iter().max().unwrap();
    assert!(
        max > before_kill + 50,
        "the restarted agent continued the sequence"
    );
    let missing: Vec<u64> = (1..=max).filter(|s| !all.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "seqs neither delivered nor spooled: {missing:?}"
    );
}

#[test]
fn check_prints_the_read_plan_of_the_demo_config() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
        .args(["check", "-c"])
        .arg(&demo)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok: site \"demo-al-01\""), "{stdout}");
    assert!(stdout.contains("cell_voltage_v"), "{stdout}");
}

#[test]
fn check_rejects_a_bad_config_with_a_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "site = \"x\"\n[[sources]]\nname = \"a\"\ntcp = \"127.0.0.1:502\"\n[[sources.devices]]\nname = \"d\"\nunit_id = 300\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:7:"), "{stderr}");
    assert!(stderr.contains("sources[0].devices[0].unit_id"), "{stderr}");
}
