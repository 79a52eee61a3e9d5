//! Derived points end to end: simulated Modbus devices → agent → a real Mosquitto. A derived mean
//! cell voltage over a glob (live stream) and a derived auxiliary power from an energy counter's
//! rate (metrics stream) arrive with the right values and qualities, also while a pot and then
//! the meter are silent.

mod common;

use std::path::Path;
use std::time::Duration;

use common::mosquitto::{self, Mosquitto};
use common::plant::{device, f32_words, serve};
use serde_json::Value as Json;
use smeltwatch::config;
use smeltwatch::simulator::{Device, Faults, UnitMap};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn plant_config(modbus_port: u16, mqtt_port: u16, http_port: u16, state_dir: &Path) -> String {
    format!(
        r#"
site = "e2e"
state_dir = "{state}"

[register_maps.pcu.points.cell_voltage_v]
area = "input"
address = 0
type = "f32"
unit = "V"

[register_maps.meter.points.energy_kwh]
area = "input"
address = 0
type = "f32"
unit = "kWh"

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

[[sources.devices]]
name = "compressors"
unit_id = 20
map = "meter"

[[derived]]
name = "mean_cell_voltage_v"
expr = "mean(line1/pot_*.cell_voltage_v)"
unit = "V"
stream = "live"
device = "potline1"

[[derived]]
name = "aux_power_kw"
expr = "rate(compressors.energy_kwh, \"3s\")"
unit = "kW"
labels = {{ line = "potline1" }}

[http]
listen = "127.0.0.1:{http_port}"

[[uplinks]]
name = "plant"
type = "mqtt"
broker = "mqtt://127.0.0.1:{mqtt_port}"
keep_alive = "5s"
reconnect_min = "100ms"
reconnect_max = "1s"
streams = ["live", "metrics"]
"#,
        state = state_dir.display()
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
    let cfg = config::parse(&toml, Path::new("e2e.toml")).unwrap_or_else(|e| panic!("{e}"));
    let agent = smeltwatch::app::start(cfg, Default::default())
        .await
        .unwrap();

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

    agent.shutdown().await;
    shutdown.cancel();
}
