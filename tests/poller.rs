//! The poller against real Modbus servers: our simulator's devices (healthy and faulty), an
//! independent pymodbus server, and an RTU server through a pseudo-terminal pair.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::acquisition::{collect, first_batch_within_10s, float, pty_pair, reading_of};
use common::plant::serve;
use smeltwatch::acquisition::PollerStats;
use smeltwatch::config::Config;
use smeltwatch::modbus::poller::Poller;
use smeltwatch::model::{Quality, ReadingBatch, Value};
use smeltwatch::simulator::{BankSizes, Device, ExceptionFault, Faults, UnitMap};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn parse(toml: &str) -> Config {
    common::acquisition::parse(toml, "poller-test.toml")
}

/// Site `t` with one TCP source `bus` at the simulator's `port`, then `rest`: the source's other
/// keys and its devices, what the test is about.
fn bus_config(port: u16, rest: &str) -> Config {
    parse(&format!(
        "\nsite = \"t\"\n[[sources]]\nname = \"bus\"\ntcp = \"127.0.0.1:{port}\"\n{rest}"
    ))
}

/// The points of the RTU meters below (`power_mw`, f32 at holding 4; `status`, u16 at holding 6),
/// with what [`rtu_meter`] holds there.
const RTU_METER_POINTS: &str = r#"[sources.devices.points.power_mw]
area = "holding"
address = 4
type = "f32"
[sources.devices.points.status]
area = "holding"
address = 6
type = "u16"
"#;

/// A device `name` holding 123.456 (f32) at holding 4 and 0x0102 at holding 6.
fn rtu_meter(name: &str) -> Device {
    let dev = device(name);
    dev.set_holding(4, &[0x42F6, 0xE979, 0x0102]);
    dev
}

/// Site `t` with the one RTU source `source` (a 1 s timeout, then `link`: the keys of its serial
/// line) and its one device `device` at `unit_id`, with [`RTU_METER_POINTS`].
fn rtu_meter_config(source: &str, link: &str, device: &str, unit_id: u8) -> Config {
    parse(&format!(
        "\nsite = \"t\"\n[[sources]]\nname = \"{source}\"\ntimeout = \"1s\"\n{link}\n\
         [[sources.devices]]\nname = \"{device}\"\nunit_id = {unit_id}\n{RTU_METER_POINTS}"
    ))
}

/// `batch` holds what [`rtu_meter`] holds, read good.
fn assert_rtu_meter_values(batch: &ReadingBatch) {
    assert_eq!(
        reading_of(batch, "status"),
        (&Some(Value::UInt(0x0102)), Quality::Good)
    );
    assert_eq!(
        float(reading_of(batch, "power_mw").0),
        f64::from(123.456f32)
    );
}

fn device(name: &str) -> Device {
    Device::new(
        name,
        BankSizes {
            coils: 16,
            discrete_inputs: 16,
            holding: 256,
            input: 256,
        },
        7,
    )
}

/// Start one poller per source of `cfg`; batches from all of them arrive on one channel.
fn start_pollers(
    cfg: &Config,
    shutdown: &CancellationToken,
) -> (mpsc::Receiver<ReadingBatch>, Vec<Arc<PollerStats>>) {
    let (tx, rx) = mpsc::channel(1024);
    let mut stats = Vec::new();
    for source in &cfg.sources {
        let poller = Poller::new(source.clone(), tx.clone());
        stats.push(poller.stats());
        tokio::spawn(poller.run(shutdown.clone()));
    }
    (rx, stats)
}

#[tokio::test]
async fn poller_decodes_what_the_simulated_device_holds() {
    let shutdown = CancellationToken::new();
    let dev = device("meter");
    // 123.456 as f32 ABCD, -42 as i16 scaled by 0.1, 4_000_000_000 as u32 CDAB, "POT017".
    dev.set_holding(0, &[0x42F6, 0xE979]);
    dev.set_holding(2, &[(-42i16) as u16]);
    dev.set_holding(10, &[0x2800, 0xEE6B]);
    dev.set_input(20, &[0x504F, 0x5430, 0x3137]);
    dev.set_coil(3, true);
    let port = serve(UnitMap::from([(5, dev.clone())]), &shutdown).await;
    let cfg = bus_config(
        port,
        r#"[[sources.devices]]
name = "meter"
unit_id = 5
[sources.devices.points.power_mw]
area = "holding"
address = 0
type = "f32"
unit = "MW"
[sources.devices.points.temp_c]
area = "holding"
address = 2
type = "i16"
scale = 0.1
unit = "degC"
[sources.devices.points.energy_kwh]
area = "holding"
address = 10
type = "u32"
byte_order = "CDAB"
unit = "kWh"
[sources.devices.points.tag]
area = "input"
address = 20
type = "ascii"
registers = 3
[sources.devices.points.breaker_closed]
area = "coil"
address = 3
type = "bool"
"#,
    );
    let (mut rx, _) = start_pollers(&cfg, &shutdown);
    let batch = rx.recv().await.unwrap();
    shutdown.cancel();

    assert_eq!(&*batch.device, "meter");
    assert_eq!(batch.unit_id, 5);
    assert_eq!(batch.readings.len(), 5);
    for r in &batch.readings {
        assert_eq!(r.quality, Quality::Good, "{r:?}");
    }
    let (v, _) = reading_of(&batch, "power_mw");
    assert!((float(v) - 123.456).abs() < 1e-4, "{v:?}");
    let (v, _) = reading_of(&batch, "temp_c");
    assert!((float(v) + 4.2).abs() < 1e-9, "{v:?}");
    assert_eq!(
        reading_of(&batch, "energy_kwh").0,
        &Some(Value::UInt(4_000_000_000))
    );
    assert_eq!(
        reading_of(&batch, "tag").0,
        &Some(Value::Text("POT017".into()))
    );
    assert_eq!(
        reading_of(&batch, "breaker_closed").0,
        &Some(Value::Bool(true))
    );
    let unit = batch
        .readings
        .iter()
        .find(|r| &*r.point == "power_mw")
        .unwrap();
    assert_eq!(&*unit.unit, "MW");
}

#[tokio::test]
async fn a_source_with_a_poll_offset_runs_its_schedule_that_much_later() {
    let shutdown = CancellationToken::new();
    let dev = device("pcu");
    dev.set_holding(0, &[4000]);
    let port = serve(UnitMap::from([(1, dev)]), &shutdown).await;
    let source = |name: &str, offset: &str| {
        format!(
            r#"
[[sources]]
name = "{name}"
tcp = "127.0.0.1:{port}"
default_poll = "1s"
poll_offset = "{offset}"
[[sources.devices]]
name = "{name}_pcu"
unit_id = 1
points.cell_voltage_mv = {{ area = "holding", address = 0, type = "u16" }}
"#
        )
    };
    let cfg = parse(&format!(
        "site = \"t\"\n{}{}",
        source("early", "0s"),
        source("late", "400ms")
    ));
    let started = tokio::time::Instant::now();
    let (mut rx, _stats) = start_pollers(&cfg, &shutdown);
    let got = collect(&mut rx, |d| {
        d.values().filter(|b| b.len() >= 2).count() == 2
    })
    .await;
    shutdown.cancel();
    let (early, late) = (&got["early_pcu"], &got["late_pcu"]);
    // The late source's first cycle was not read before its offset had passed.
    assert!(
        late[0].readings[0].ts.0 >= late[0].scheduled.0,
        "{:?}",
        late[0]
    );
    assert!(started.elapsed() >= Duration::from_millis(1400));
    // Both schedules keep the period; the late one sits 400 ms after the early one (both pollers
    // take their start within a few milliseconds of each other).
    for k in 0..2 {
        let behind = late[k].scheduled.0 - early[k].scheduled.0;
        assert!((400..450).contains(&behind), "cycle {k}: {behind} ms");
        assert_eq!(early[1].scheduled.0 - early[0].scheduled.0, 1000);
        assert_eq!(late[1].scheduled.0 - late[0].scheduled.0, 1000);
        assert_eq!(reading_of(&late[k], "cell_voltage_mv").1, Quality::Good);
    }
}

#[tokio::test]
async fn exception_marks_only_the_points_of_the_refused_request() {
    let shutdown = CancellationToken::new();
    let dev = device("pcu");
    dev.set_holding(0, &[4000]);
    dev.set_holding(100, &[955]);
    dev.set_faults(Faults {
        exception: Some(ExceptionFault {
            code: 2,
            addresses: Some(100..=100),
        }),
        ..Faults::default()
    });
    let port = serve(UnitMap::from([(1, dev)]), &shutdown).await;
    let cfg = bus_config(
        port,
        r#"max_gap_registers = 4
[[sources.devices]]
name = "pcu"
unit_id = 1
[sources.devices.points.cell_voltage_mv]
area = "holding"
address = 0
type = "u16"
[sources.devices.points.bath_temp_c]
area = "holding"
address = 100
type = "u16"
"#,
    );
    let (mut rx, stats) = start_pollers(&cfg, &shutdown);
    let first = rx.recv().await.unwrap();
    let second = rx.recv().await.unwrap();
    shutdown.cancel();
    for batch in [first, second] {
        assert_eq!(
            reading_of(&batch, "cell_voltage_mv"),
            (&Some(Value::UInt(4000)), Quality::Good)
        );
        assert_eq!(
            reading_of(&batch, "bath_temp_c"),
            (&None, Quality::DeviceException)
        );
    }
    // The connection was kept: an exception is an answer, not a link failure.
    assert_eq!(stats[0].connects.load(Ordering::Relaxed), 1);
    assert_eq!(stats[0].comm_failures.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn silent_and_disconnecting_devices_do_not_disturb_healthy_ones() {
    let shutdown = CancellationToken::new();
    let mut ports = Vec::new();
    for (name, faults) in [
        ("healthy_a", Faults::default()),
        ("healthy_b", Faults::default()),
        (
            "silent",
            Faults {
                silent: true,
                ..Faults::default()
            },
        ),
        (
            "dropping",
            Faults {
                drop_every: 2,
                ..Faults::default()
            },
        ),
    ] {
        let dev = device(name);
        dev.set_holding(0, &[0x4081, 0x999A]); // 4.05 f32
        dev.set_faults(faults);
        ports.push((name, serve(UnitMap::from([(1, dev)]), &shutdown).await));
    }
    let mut toml = String::from("site = \"t\"\n");
    for (name, port) in &ports {
        toml.push_str(&format!(
            r#"
[[sources]]
name = "{name}_link"
tcp = "127.0.0.1:{port}"
timeout = "150ms"
reconnect_min = "50ms"
reconnect_max = "200ms"
breaker_failures = 3
breaker_probe_interval = "1s"
default_poll = "200ms"
[[sources.devices]]
name = "{name}"
unit_id = 1
[sources.devices.points.cell_voltage_v]
area = "holding"
address = 0
type = "f32"
unit = "V"
"#
        ));
    }
    let cfg = parse(&toml);
    let (mut rx, stats) = start_pollers(&cfg, &shutdown);
    let got = collect(&mut rx, |m| {
        ["healthy_a", "healthy_b"]
            .iter()
            .all(|d| m.get(*d).is_some_and(|v| v.len() >= 12))
            && m.get("dropping").is_some_and(|v| v.len() >= 6)
            && m.get("silent").is_some_and(|v| v.len() >= 6)
    })
    .await;
    shutdown.cancel();

    for (i, name) in ["healthy_a", "healthy_b"].iter().enumerate() {
        let batches = &got[*name];
        // Every cycle on the 200 ms grid, none skipped, none late, all good.
        for pair in batches.windows(2) {
            assert_eq!(
                pair[1].scheduled.0 - pair[0].scheduled.0,
                200,
                "{name} missed a cycle"
            );
        }
        for b in batches {
            let (v, q) = reading_of(b, "cell_voltage_v");
            assert_eq!(q, Quality::Good);
            assert!((float(v) - 4.05).abs() < 1e-6);
        }
        assert_eq!(stats[i].late_ticks.load(Ordering::Relaxed), 0, "{name}");
    }
    assert!(
        got["silent"]
            .iter()
            .all(|b| reading_of(b, "cell_voltage_v") == (&None, Quality::CommFail))
    );
    let dropping: Vec<Quality> = got["dropping"]
        .iter()
        .map(|b| reading_of(b, "cell_voltage_v").1)
        .collect();
    assert!(dropping.contains(&Quality::Good), "{dropping:?}");
    assert!(dropping.contains(&Quality::CommFail), "{dropping:?}");
}

#[tokio::test]
async fn a_silent_unit_on_a_shared_link_costs_one_timeout_and_its_breaker_opens() {
    let shutdown = CancellationToken::new();
    let healthy1 = device("unit1");
    let silent = device("unit2");
    let healthy3 = device("unit3");
    for d in [&healthy1, &silent, &healthy3] {
        d.set_holding(0, &[1234]);
    }
    silent.set_faults(Faults {
        silent: true,
        ..Faults::default()
    });
    let port = serve(
        UnitMap::from([(1, healthy1), (2, silent.clone()), (3, healthy3)]),
        &shutdown,
    )
    .await;
    let mut toml = format!(
        r#"
site = "t"
[[sources]]
name = "gateway"
tcp = "127.0.0.1:{port}"
timeout = "100ms"
reconnect_min = "20ms"
breaker_failures = 2
breaker_probe_interval = "1500ms"
default_poll = "300ms"
"#
    );
    for unit in 1..=3 {
        toml.push_str(&format!(
            r#"
[[sources.devices]]
name = "unit{unit}"
unit_id = {unit}
[sources.devices.points.value]
area = "holding"
address = 0
type = "u16"
"#
        ));
    }
    let cfg = parse(&toml);
    let (mut rx, stats) = start_pollers(&cfg, &shutdown);
    let got = collect(&mut rx, |m| m.get("unit3").is_some_and(|v| v.len() >= 8)).await;

    // The healthy units kept every 300 ms cycle with good values although unit 2 timed out.
    for name in ["unit1", "unit3"] {
        for pair in got[name].windows(2) {
            assert_eq!(pair[1].scheduled.0 - pair[0].scheduled.0, 300, "{name}");
        }
        assert!(
            got[name]
                .iter()
                .all(|b| reading_of(b, "value") == (&Some(Value::UInt(1234)), Quality::Good))
        );
    }
    assert_eq!(stats[0].late_ticks.load(Ordering::Relaxed), 0);
    // Over 8 cycles (2.1 s) unit 2 was asked twice before its circuit opened, then only probed
    // (at most twice in 2.1 s at one probe per 1.5 s), never 8 times.
    let asked = silent.requests();
    assert!((2..=4).contains(&asked), "unit 2 was asked {asked} times");
    assert!(
        got["unit2"]
            .iter()
            .all(|b| reading_of(b, "value") == (&None, Quality::CommFail))
    );

    // It recovers by itself once it answers again: the next probe closes the circuit.
    silent.clear_faults();
    let got = collect(&mut rx, |m| {
        m.get("unit2")
            .is_some_and(|v| v.iter().any(|b| reading_of(b, "value").1 == Quality::Good))
    })
    .await;
    shutdown.cancel();
    assert!(got.contains_key("unit2"));
}

#[tokio::test]
async fn a_block_that_keeps_timing_out_is_probed_like_a_dead_device_and_the_rest_is_read() {
    // One device, two request groups (holding 0 and holding 100); the block at 100 never
    // answers while the one at 0 does. Its breaker must open like a dead device's: otherwise
    // every cycle spends a whole timeout on it and drops the connection it shares.
    let shutdown = CancellationToken::new();
    let dev = device("rect");
    dev.set_holding(0, &[1234]);
    dev.set_holding(100, &[5678]);
    dev.set_faults(Faults {
        silent_addresses: Some(100..=100),
        ..Faults::default()
    });
    let port = serve(UnitMap::from([(1, dev.clone())]), &shutdown).await;
    let cfg = parse(&format!(
        r#"
site = "t"
[[sources]]
name = "gw"
tcp = "127.0.0.1:{port}"
timeout = "100ms"
reconnect_min = "20ms"
breaker_failures = 2
breaker_probe_interval = "1h"
default_poll = "250ms"
[[sources.devices]]
name = "rect"
unit_id = 1
points.good = {{ area = "holding", address = 0, type = "u16" }}
points.hung = {{ area = "holding", address = 100, type = "u16" }}
"#
    ));
    let (mut rx, stats) = start_pollers(&cfg, &shutdown);
    let got = collect(&mut rx, |m| m.get("rect").is_some_and(|v| v.len() >= 10)).await;
    shutdown.cancel();
    let cycles = &got["rect"];
    assert!(
        cycles
            .iter()
            .all(|b| reading_of(b, "hung") == (&None, Quality::CommFail))
    );
    // The block that answers is read in every cycle once the hung one is left out, and in most
    // before: the device is alive, so one block's timeout does not end its cycle.
    let good = cycles
        .iter()
        .filter(|b| reading_of(b, "good") == (&Some(Value::UInt(1234)), Quality::Good))
        .count();
    assert!(
        good >= 9,
        "good block read in {good} of {} cycles",
        cycles.len()
    );
    // The hung block was asked twice (breaker_failures), then left alone until its probe in an
    // hour: 10 cycles cost 2 timeouts, not 10.
    let failures = stats[0].comm_failures.load(Ordering::Relaxed);
    assert_eq!(failures, 2, "timeouts spent on the hung block");
}

#[tokio::test]
async fn poller_reads_an_independent_pymodbus_server_in_all_four_byte_orders() {
    let Some(python) = common::peers::python_with_pymodbus() else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pymodbus_server.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the pymodbus server");
    let port = common::peers::read_port_line(child.stdout.take().unwrap()).await;

    let mut toml = format!(
        r#"
site = "t"
[[sources]]
name = "pymodbus"
tcp = "127.0.0.1:{port}"
timeout = "2s"
[[sources.devices]]
name = "peer"
unit_id = 1
"#
    );
    for (i, order) in ["ABCD", "CDAB", "BADC", "DCBA"].iter().enumerate() {
        toml.push_str(&format!(
            "[sources.devices.points.f32_{order}]\narea = \"holding\"\naddress = {}\ntype = \"f32\"\nbyte_order = \"{order}\"\n",
            i * 2
        ));
    }
    toml.push_str(
        r#"[sources.devices.points.negative]
area = "holding"
address = 8
type = "f32"
[sources.devices.points.big_u32]
area = "holding"
address = 10
type = "u32"
[sources.devices.points.small_i16]
area = "holding"
address = 12
type = "i16"
[sources.devices.points.big_u16]
area = "holding"
address = 13
type = "u16"
[sources.devices.points.f64_value]
area = "input"
address = 0
type = "f64"
[sources.devices.points.coil0]
area = "coil"
address = 0
type = "bool"
[sources.devices.points.coil1]
area = "coil"
address = 1
type = "bool"
"#,
    );
    let cfg = parse(&toml);
    let shutdown = CancellationToken::new();
    let (mut rx, _) = start_pollers(&cfg, &shutdown);
    let batch = rx.recv().await.unwrap();
    shutdown.cancel();
    drop(child);

    for r in &batch.readings {
        assert_eq!(r.quality, Quality::Good, "{r:?}");
    }
    for order in ["ABCD", "CDAB", "BADC", "DCBA"] {
        let (v, _) = reading_of(&batch, &format!("f32_{order}"));
        assert_eq!(float(v), f64::from(123.456f32), "byte order {order}");
    }
    assert_eq!(float(reading_of(&batch, "negative").0), -1234.5);
    assert_eq!(
        reading_of(&batch, "big_u32").0,
        &Some(Value::UInt(4_000_000_000))
    );
    assert_eq!(reading_of(&batch, "small_i16").0, &Some(Value::Int(-42)));
    assert_eq!(reading_of(&batch, "big_u16").0, &Some(Value::UInt(65000)));
    assert_eq!(float(reading_of(&batch, "f64_value").0), -9876.54321);
    assert_eq!(reading_of(&batch, "coil0").0, &Some(Value::Bool(true)));
    assert_eq!(reading_of(&batch, "coil1").0, &Some(Value::Bool(false)));
}

#[tokio::test]
async fn poller_reads_rtu_through_a_pty_pair() {
    let (master, slave, path) = pty_pair();
    let dev = rtu_meter("rtu_meter");
    let shutdown = CancellationToken::new();
    tokio::spawn(smeltwatch::simulator::serve_rtu(
        master,
        UnitMap::from([(17, dev)]),
        shutdown.clone(),
    ));
    let cfg = rtu_meter_config(
        "rs485",
        &format!("[sources.serial]\npath = \"{path}\"\nbaud = 19200\nparity = \"even\""),
        "rtu_meter",
        17,
    );
    let (mut rx, _) = start_pollers(&cfg, &shutdown);
    let batch = first_batch_within_10s(&mut rx, "an RTU batch within 10 s").await;
    shutdown.cancel();
    drop(slave);
    assert_rtu_meter_values(&batch);
}

#[tokio::test]
async fn after_a_clock_step_timestamps_follow_the_new_wall_clock_and_one_event_is_raised() {
    use smeltwatch::clock::{CLOCK_STEP_EVENT, Clock, ShiftedWall};
    use smeltwatch::model::{Record, Timestamp};

    let shutdown = CancellationToken::new();
    let dev = device("pcu");
    dev.set_holding(0, &[4000]);
    let port = serve(UnitMap::from([(1, dev)]), &shutdown).await;
    let cfg = bus_config(
        port,
        r#"default_poll = "100ms"
poll_offset = "0s"
[[sources.devices]]
name = "pcu"
unit_id = 1
points.cell_voltage_mv = { area = "holding", address = 0, type = "u16" }
"#,
    );
    // A gateway without a real-time clock: it boots at the epoch (plus a little uptime).
    let boot_ms = 60_000;
    let wall = ShiftedWall::new(boot_ms - Timestamp::now().0);
    let clock = Clock::new(wall.clone());
    let (events_tx, mut events) = mpsc::channel(8);
    clock.set_events(events_tx);
    let (tx, mut rx) = mpsc::channel(1024);
    let poller = Poller::new(cfg.sources[0].clone(), tx).with_clock(clock.clone());
    tokio::spawn(poller.run(shutdown.clone()));

    let year_2000_ms = 946_684_800_000;
    for _ in 0..3 {
        let batch = rx.recv().await.unwrap();
        assert!(batch.scheduled.0 < year_2000_ms, "{:?}", batch.scheduled);
    }
    // NTP syncs: the wall clock jumps to the real time. The batch in flight may keep the old
    // time; within a few cycles every timestamp follows the new one.
    wall.set_offset(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut last = Timestamp(0);
    let mut after = Vec::new();
    while after.len() < 3 {
        let Ok(batch) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            panic!("5 s after the step, timestamps still follow the boot-time clock: last {last:?}")
        };
        last = batch.unwrap().scheduled;
        if last.0 >= year_2000_ms {
            after.push(last);
        } else {
            assert!(
                after.is_empty(),
                "an old timestamp after a new one: {last:?}"
            );
        }
    }
    shutdown.cancel();
    let now = Timestamp::now().0;
    for ts in &after {
        assert!(
            (ts.0 - now).abs() < 5_000,
            "{ts:?} is not near the corrected wall clock {now}"
        );
    }
    assert_eq!(clock.steps_total(), 1);
    let Ok(Record::Event(e)) = events.try_recv() else {
        panic!("no clock_step event")
    };
    assert_eq!(&*e.kind, CLOCK_STEP_EVENT);
    assert!(events.try_recv().is_err(), "one event per step");
}

/// Modbus RTU over TCP at run time: the poller's RTU framing through a transparent serial
/// server (bytes copied both ways between a TCP connection and one end of a pty pair) to the
/// simulator's RTU server on the other end, as a serial-to-Ethernet converter does.
#[tokio::test]
async fn poller_reads_rtu_over_tcp_through_a_transparent_serial_server() {
    let (master, slave, _) = pty_pair();
    let dev = rtu_meter("rtu_gw_meter");
    let shutdown = CancellationToken::new();
    tokio::spawn(smeltwatch::simulator::serve_rtu(
        master,
        UnitMap::from([(9, dev.clone())]),
        shutdown.clone(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut line = slave;
        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut line).await;
    });
    let cfg = rtu_meter_config(
        "serial_server",
        &format!("rtu_over_tcp = \"127.0.0.1:{port}\""),
        "rtu_gw_meter",
        9,
    );
    let (mut rx, stats) = start_pollers(&cfg, &shutdown);
    let batch = first_batch_within_10s(&mut rx, "a batch within 10 s").await;
    shutdown.cancel();
    assert_rtu_meter_values(&batch);
    assert!(dev.requests() >= 1);
    assert_eq!(stats[0].comm_failures.load(Ordering::Relaxed), 0);
}
