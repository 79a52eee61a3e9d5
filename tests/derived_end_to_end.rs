//! Derived points end to end: simulated Modbus devices → agent → a real Mosquitto. A derived mean
//! cell voltage over a glob (live stream) and a derived auxiliary power from an energy counter's
//! rate (metrics stream) arrive with the right values and qualities, also while a pot and then
//! the meter are silent; over a Sparkplug uplink the `live` derived points are device metrics
//! with the same values, qualities and timestamps.

mod common;

use std::path::Path;
use std::time::Duration;

use common::agent;
use common::mosquitto::{self, Mosquitto};
use common::plant::{device, f32_words, mqtt_uplink_toml, serve};
use serde_json::Value as Json;
use smeltwatch::codec::sparkplug as spb;
use smeltwatch::model::Value;
use smeltwatch::simulator::{Device, Faults, UnitMap};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The `pcu` map (the cell voltage, f32 at input 0) and the source `line1` at `modbus_port`,
/// polled every 200 ms, with its three pots `pot_001`… (units 10…) on that map.
fn line1_pots_toml(modbus_port: u16) -> String {
    format!(
        r#"
[register_maps.pcu.points.cell_voltage_v]
area = "input"
address = 0
type = "f32"
unit = "V"

[[sources]]
name = "line1"
tcp = "127.0.0.1:{modbus_port}"
timeout = "300ms"
default_poll = "200ms"

[[sources.devices]]
name = "pot_{{n:03}}"
count = 3
unit_id = 10
map = "pcu"
"#
    )
}

/// The line's mean cell voltage, a `live` derived point under device `potline1`.
const MEAN_CELL_VOLTAGE: &str = r#"[[derived]]
name = "mean_cell_voltage_v"
expr = "mean(line1/pot_*.cell_voltage_v)"
unit = "V"
stream = "live"
device = "potline1"
"#;

fn plant_config(modbus_port: u16, mqtt_port: u16, http_port: u16, state_dir: &Path) -> String {
    format!(
        r#"
site = "e2e"
state_dir = "{state}"

[register_maps.meter.points.energy_kwh]
area = "input"
address = 0
type = "f32"
unit = "kWh"
{pots}
[[sources.devices]]
name = "compressors"
unit_id = 20
map = "meter"

{MEAN_CELL_VOLTAGE}
[[derived]]
name = "aux_power_kw"
expr = "rate(compressors.energy_kwh, \"3s\")"
unit = "kW"
labels = {{ line = "potline1" }}

[http]
listen = "127.0.0.1:{http_port}"

{uplink}"#,
        uplink = mqtt_uplink_toml("plant", mqtt_port, &["live", "metrics"]),
        state = state_dir.display(),
        pots = line1_pots_toml(modbus_port)
    )
}

/// One derived value as published: (value, quality).
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    value: Option<f64>,
    quality: String,
}

/// The next derived results on the broker: the mean from `live/derived/potline1`, the
/// auxiliary power from `metrics/derived`.
async fn next(rx: &mut mpsc::Receiver<(String, Vec<u8>)>) -> (&'static str, Seen) {
    loop {
        let (topic, payload) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("messages stopped arriving")
            .expect("subscription open");
        let msg: Json = serde_json::from_slice(&payload).expect("JSON payload");
        let (name, item) = match topic.as_str() {
            "smeltwatch/e2e/live/derived/potline1" => {
                assert_eq!(msg["source"], "derived");
                ("mean_cell_voltage_v", msg["readings"][0].clone())
            }
            "smeltwatch/e2e/metrics/derived" => {
                let m = msg["metrics"][0].clone();
                assert_eq!(m["labels"]["line"], "potline1");
                assert_eq!(m["unit"], "kW");
                ("aux_power_kw", m)
            }
            _ => continue,
        };
        let seen = Seen {
            value: item["value"].as_f64(),
            quality: item["quality"].as_str().unwrap().to_string(),
        };
        if seen.quality == "good" {
            assert!(seen.value.is_some(), "{item}");
        }
        return (name, seen);
    }
}

/// Wait until `name` arrives with `quality`, and return its value.
async fn until(
    rx: &mut mpsc::Receiver<(String, Vec<u8>)>,
    name: &str,
    quality: &str,
) -> Option<f64> {
    for _ in 0..400 {
        let (n, seen) = next(rx).await;
        if n == name && seen.quality == quality {
            return seen.value;
        }
    }
    panic!("{name} never arrived with quality {quality}");
}

/// Raise the meter's counter at 1 kWh per 100 ms (36,000 kW) until `stop`.
fn run_meter(meter: Device, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut energy_kwh = 1000.0f32;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    meter.set_input(0, &f32_words(energy_kwh));
                    energy_kwh += 1.0;
                }
                () = stop.cancelled() => return,
            }
        }
    });
}

/// The dashboard's snapshot carries the derived points like polled points (device, unit, value,
/// quality): the mean of the pots good, the silent meter's power without a value.
async fn snapshot_carries_the_derived_points(http_port: u16) {
    let (code, body) = common::probe::get(http_port, "/api/v1/snapshot").await;
    assert_eq!(code, 200);
    let snapshot: Json = serde_json::from_str(&body).expect("the snapshot is JSON");
    let point = |name: &str| {
        snapshot["points"]
            .as_array()
            .expect("points")
            .iter()
            .find(|p| p["point"] == name)
            .unwrap_or_else(|| panic!("no {name} in the snapshot: {body}"))
            .clone()
    };
    let mean = point("mean_cell_voltage_v");
    assert_eq!(mean["device"], "potline1", "{mean}");
    assert_eq!(mean["unit"], "V", "{mean}");
    assert_eq!(mean["quality"], "good", "{mean}");
    assert!(
        (mean["value"].as_f64().unwrap() - 4.2).abs() < 1e-6,
        "{mean}"
    );
    let power = point("aux_power_kw");
    assert_eq!(power["unit"], "kW", "{power}");
    assert_eq!(power["quality"], "comm_fail", "{power}");
    assert!(power["value"].is_null(), "{power}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_mean_and_auxiliary_power_arrive_with_their_qualities() {
    let broker = Mosquitto::start();
    let shutdown = CancellationToken::new();
    let pots: Vec<Device> = (1..=3).map(|n| device(&format!("pot_{n:03}"))).collect();
    for (pot, v) in pots.iter().zip([4.0f32, 4.2, 4.4]) {
        pot.set_input(0, &f32_words(v));
    }
    let meter = device("compressors");
    let mut units = UnitMap::new();
    for (i, pot) in pots.iter().enumerate() {
        units.insert(10 + i as u8, pot.clone());
    }
    units.insert(20, meter.clone());
    let modbus_port = serve(units, &shutdown).await;
    run_meter(meter.clone(), shutdown.clone());
    let state = tempfile::tempdir().unwrap();
    let (_sub, mut rx) = mosquitto::subscribe(broker.port, "smeltwatch/#").await;

    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = plant_config(modbus_port, broker.port, http_port, state.path());
    let agent = agent::start_inline(&toml, "e2e.toml").await;

    // Every device answers: the mean of the three pots, good; the meter's power, good.
    let mean = until(&mut rx, "mean_cell_voltage_v", "good").await.unwrap();
    assert!((mean - 4.2).abs() < 1e-6, "{mean}");
    // Skip the first rates, whose window is still filling, then read one over a full window.
    for _ in 0..30 {
        until(&mut rx, "aux_power_kw", "good").await;
    }
    let kw = until(&mut rx, "aux_power_kw", "good").await.unwrap();
    assert!((kw - 36_000.0).abs() < 0.1 * 36_000.0, "{kw}");

    // pot_003 falls silent: the mean of the two that answer, with quality comm_fail; the
    // auxiliary power is not concerned and stays good.
    pots[2].set_faults(Faults {
        silent: true,
        ..Faults::default()
    });
    let mean = until(&mut rx, "mean_cell_voltage_v", "comm_fail")
        .await
        .expect("the mean of the pots that answer");
    assert!((mean - 4.1).abs() < 1e-6, "{mean}");
    let kw = until(&mut rx, "aux_power_kw", "good").await.unwrap();
    assert!((kw - 36_000.0).abs() < 0.15 * 36_000.0, "{kw}");

    // The meter falls silent too: its power has no value and says comm_fail.
    meter.set_faults(Faults {
        silent: true,
        ..Faults::default()
    });
    assert_eq!(until(&mut rx, "aux_power_kw", "comm_fail").await, None);

    // pot_003 answers again: the mean is good again.
    pots[2].set_faults(Faults::default());
    let mean = until(&mut rx, "mean_cell_voltage_v", "good").await.unwrap();
    assert!((mean - 4.2).abs() < 1e-6, "{mean}");

    // /metrics has both as points of their derived device, whatever their stream.
    let (code, text) = common::probe::get(http_port, "/metrics").await;
    assert_eq!(code, 200);
    let line = |prefix: &str, needle: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix) && l.contains(needle))
            .unwrap_or_else(|| panic!("no {prefix} with {needle} in /metrics:\n{text}"))
            .to_string()
    };
    let point = line("smeltwatch_point_value{", "point=\"mean_cell_voltage_v\"");
    assert!(point.contains("potline1"), "{point}");
    // The meter is still silent: the auxiliary power's latest result has no value.
    line(
        "smeltwatch_point_quality{",
        "point=\"aux_power_kw\",quality=\"comm_fail\"",
    );
    assert!(!text.contains("smeltwatch_point_value{device=\"derived\",point=\"aux_power_kw\""));

    snapshot_carries_the_derived_points(http_port).await;

    agent.shutdown().await;
    shutdown.cancel();
}

/// A plant of three pots and a Sparkplug uplink (group `g`, edge node `e`) with two `live`
/// derived points: the mean cell voltage under device `potline1` and the pots' sum under the
/// default device `derived`.
fn sparkplug_config(modbus_port: u16, mqtt_port: u16, state_dir: &Path) -> String {
    format!(
        r#"
site = "e2e"
state_dir = "{state}"
{pots}
{MEAN_CELL_VOLTAGE}
[[derived]]
name = "sum_cell_voltage_v"
expr = "sum(line1/pot_*.cell_voltage_v)"
unit = "V"
stream = "live"

[[uplinks]]
name = "scada"
type = "sparkplug"
broker = "mqtt://127.0.0.1:{mqtt_port}"
group_id = "g"
edge_node_id = "e"
keep_alive = "5s"
reconnect_min = "100ms"
reconnect_max = "1s"
"#,
        state = state_dir.display(),
        pots = line1_pots_toml(modbus_port)
    )
}

/// The next Sparkplug message on `topic` (others skipped); panics on a DDEATH of a derived
/// device, which a derived point's bad quality must never cause.
async fn next_on(rx: &mut mpsc::Receiver<(String, Vec<u8>)>, topic: &str) -> spb::pb::Payload {
    loop {
        let (t, payload) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing on {topic} within 20 s"))
            .expect("subscription open");
        assert!(
            !t.starts_with("spBv1.0/g/DDEATH/e/potline1")
                && !t.starts_with("spBv1.0/g/DDEATH/e/derived"),
            "a derived device got a DDEATH: {t}"
        );
        if t == topic {
            return spb::decode(&payload).expect("a Sparkplug payload");
        }
    }
}

/// Until a live DDATA of `potline1` carries the mean (alias `alias`) with Sparkplug quality
/// `quality` (the last one announced, since DATA repeats it only when it changes or is not
/// good); returns the metric.
async fn until_mean(
    rx: &mut mpsc::Receiver<(String, Vec<u8>)>,
    alias: u64,
    quality: i32,
    announced: &mut i32,
) -> spb::pb::payload::Metric {
    for _ in 0..400 {
        let p = next_on(rx, "spBv1.0/g/DDATA/e/potline1").await;
        for m in p.metrics {
            assert_eq!(m.alias, Some(alias), "DDATA carries aliases only: {m:?}");
            assert_eq!(m.name, None, "{m:?}");
            if let Some(q) = spb::metric_quality(&m) {
                *announced = q;
            }
            if m.is_historical != Some(true) && *announced == quality {
                return m;
            }
        }
    }
    panic!("the mean never arrived with quality {quality}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_points_are_sparkplug_metrics_with_their_value_quality_and_timestamp() {
    let started = smeltwatch::model::Timestamp::now();
    let broker = Mosquitto::start();
    let shutdown = CancellationToken::new();
    let pots: Vec<Device> = (1..=3).map(|n| device(&format!("pot_{n:03}"))).collect();
    let mut units = UnitMap::new();
    for (i, (pot, v)) in pots.iter().zip([4.0f32, 4.2, 4.4]).enumerate() {
        pot.set_input(0, &f32_words(v));
        units.insert(10 + i as u8, pot.clone());
    }
    let modbus_port = serve(units, &shutdown).await;
    let state = tempfile::tempdir().unwrap();
    let (_sub, mut rx) = mosquitto::subscribe(broker.port, "spBv1.0/#").await;
    let toml = sparkplug_config(modbus_port, broker.port, state.path());
    let agent = agent::start_inline(&toml, "e2e.toml").await;

    // Each derived device has its DBIRTH: its points as Double metrics with their own aliases,
    // after the configured points' 1-3.
    let birth = next_on(&mut rx, "spBv1.0/g/DBIRTH/e/potline1").await;
    assert_eq!(birth.metrics.len(), 1, "{birth:?}");
    let mean = &birth.metrics[0];
    assert_eq!(mean.name.as_deref(), Some("mean_cell_voltage_v"));
    assert_eq!(mean.datatype, Some(spb::pb::DataType::Double as u32));
    assert_eq!(mean.alias, Some(4), "after the pots' three points");
    let alias = mean.alias.unwrap();
    let mut announced = spb::metric_quality(mean).expect("a birth carries the quality");
    let birth = next_on(&mut rx, "spBv1.0/g/DBIRTH/e/derived").await;
    let sum = &birth.metrics[0];
    assert_eq!(
        (sum.name.as_deref(), sum.alias, sum.datatype),
        (
            Some("sum_cell_voltage_v"),
            Some(5),
            Some(spb::pb::DataType::Double as u32)
        )
    );

    // Every pot answers: the mean, good, timestamped with its newest input's acquisition.
    let m = until_mean(&mut rx, alias, spb::QUALITY_GOOD, &mut announced).await;
    let v = spb::decode_value(spb::pb::DataType::Double, m.value.as_ref()).expect("a Double");
    assert!(
        matches!(v, Value::Float(x) if (x - 4.2).abs() < 1e-6),
        "{v:?}"
    );
    let ts = m.timestamp.expect("a timestamp") as i64;
    let now = smeltwatch::model::Timestamp::now();
    assert!(
        started.0 <= ts && ts <= now.0,
        "{ts} not in [{}, {}]",
        started.0,
        now.0
    );

    // pot_003 falls silent: the mean of the two that answer, with a bad quality (0), as DDATA
    // (no DDEATH: the derived device still has a value).
    pots[2].set_faults(Faults {
        silent: true,
        ..Faults::default()
    });
    let m = until_mean(&mut rx, alias, spb::QUALITY_BAD, &mut announced).await;
    let v = spb::decode_value(spb::pb::DataType::Double, m.value.as_ref()).expect("a Double");
    assert!(
        matches!(v, Value::Float(x) if (x - 4.1).abs() < 1e-6),
        "{v:?}"
    );

    // pot_003 answers again: good again, announced with the quality property.
    pots[2].set_faults(Faults::default());
    let m = until_mean(&mut rx, alias, spb::QUALITY_GOOD, &mut announced).await;
    assert_eq!(spb::metric_quality(&m), Some(spb::QUALITY_GOOD), "{m:?}");
    let v = spb::decode_value(spb::pb::DataType::Double, m.value.as_ref()).expect("a Double");
    assert!(
        matches!(v, Value::Float(x) if (x - 4.2).abs() < 1e-6),
        "{v:?}"
    );

    agent.shutdown().await;
    shutdown.cancel();
}
