//! DL/T 645 meters end to end: the configuration, the poller against the simulator's meters
//! over TCP (a transparent serial server) and over a pseudo-terminal pair, faults on a shared
//! bus, and the read plan `check` prints.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::acquisition::{collect, first_batch_within_10s, float, pty_pair, reading_of};
use smeltwatch::acquisition::PollerStats;
use smeltwatch::config::{self, Config};
use smeltwatch::dlt645::config::BusTransport;
use smeltwatch::dlt645::format::MeterTime;
use smeltwatch::dlt645::poller::Dlt645Poller;
use smeltwatch::dlt645::{Address, Edition};
use smeltwatch::model::{Quality, ReadingBatch, Value};
use smeltwatch::simulator::{Meter, MeterBus, MeterFault, serve_meter_stream, serve_meters_tcp};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn parse(toml: &str) -> Config {
    common::acquisition::parse(toml, "dlt645-test.toml")
}

fn problems(toml: &str) -> String {
    match config::parse(toml, Path::new("dlt645-test.toml")) {
        Ok(_) => panic!("configuration should be refused:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

fn address(text: &str) -> Address {
    Address::parse(text).expect("valid address")
}

/// Serves `bus` on a fresh loopback port; returns the port.
async fn serve(bus: MeterBus, shutdown: &CancellationToken) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_meters_tcp(listener, bus, shutdown.clone()));
    port
}

fn start(
    cfg: &Config,
    shutdown: &CancellationToken,
) -> (mpsc::Receiver<ReadingBatch>, Arc<PollerStats>) {
    let (tx, rx) = mpsc::channel(1024);
    let poller = Dlt645Poller::new(cfg.meter_buses[0].clone(), tx);
    let stats = poller.stats();
    tokio::spawn(poller.run(shutdown.clone()));
    (rx, stats)
}

const AUX_MAP: &str = r#"
[meter_maps.aux.points]
energy_kwh = { di = "00010000", format = "XXXXXX.XX", unit = "kWh" }
energy_peak_kwh = { di = "00010200", format = "XXXXXX.XX", unit = "kWh" }
voltage_a_v = { di = "02010100", format = "XXX.X", unit = "V" }
power_kw = { di = "02030000", format = "sXX.XXXX", unit = "kW" }
power_factor = { di = "02060000", format = "sX.XXX" }
demand_kw = { di = "01010000", format = "demand", unit = "kW" }
demand_at = { di = "01010000", format = "demand_time" }
"#;

/// Site `t` with one DL/T 645-2007 source `bus` at the meter server on `port`, then `rest`: the
/// source's other keys and its meters, what the test is about.
fn meter_bus(port: u16, rest: &str) -> Config {
    parse(&format!(
        "\nsite = \"t\"\n[[sources]]\nname = \"bus\"\nprotocol = \"dlt645-2007\"\n\
         tcp = \"127.0.0.1:{port}\"\n{rest}"
    ))
}

#[tokio::test]
async fn poller_reads_a_2007_meter_through_a_serial_server() {
    let shutdown = CancellationToken::new();
    let meter = Meter::new(Edition::Dlt2007, address("3430163"), 1234.56, 36.0);
    let bus = MeterBus::new(vec![meter.clone()]);
    let port = serve(bus.clone(), &shutdown).await;
    let cfg = parse(&format!(
        r#"
site = "t"
{AUX_MAP}
[[sources]]
name = "aux_bus"
protocol = "dlt645-2007"
tcp = "127.0.0.1:{port}"
default_poll = "100ms"
[[sources.meters]]
name = "aux_meter"
address = "000003430163"
map = "aux"
"#
    ));
    let (mut rx, stats) = start(&cfg, &shutdown);
    let first = rx.recv().await.unwrap();
    assert_eq!(&*first.device, "aux_meter");
    for r in &first.readings {
        assert_eq!(r.quality, Quality::Good, "{r:?}");
    }
    assert_eq!(
        reading_of(&first, "energy_kwh").0,
        &Some(Value::Float(1234.56))
    );
    // The simulator books 30 % of the energy on the peak tariff (register 2).
    assert_eq!(float(reading_of(&first, "energy_peak_kwh").0), 370.36);
    assert_eq!(
        reading_of(&first, "voltage_a_v").0,
        &Some(Value::Float(230.0))
    );
    assert_eq!(reading_of(&first, "power_kw").0, &Some(Value::Float(36.0)));
    assert_eq!(
        reading_of(&first, "power_factor").0,
        &Some(Value::Float(0.92))
    );
    assert_eq!(reading_of(&first, "demand_kw").0, &Some(Value::Float(36.0)));
    // The demand so far was reached when the meter started: today (UTC, as the simulator keeps).
    let today = MeterTime::from_unix_ms(first.readings[0].ts.0).to_string();
    let Some(Value::Text(at)) = reading_of(&first, "demand_at").0 else {
        panic!("a date-time");
    };
    assert_eq!(at[..10], today[..10], "{at}");
    assert_eq!(&*first.readings[0].unit, "kWh");

    // 36 kW for 100 s is one more kWh on the register.
    bus.advance(Duration::from_secs(100), 0);
    let later = loop {
        let b = rx.recv().await.unwrap();
        if reading_of(&b, "energy_kwh").0 != reading_of(&first, "energy_kwh").0 {
            break b;
        }
    };
    assert_eq!(
        reading_of(&later, "energy_kwh").0,
        &Some(Value::Float(1235.56))
    );
    shutdown.cancel();
    // One exchange per DI: the demand and its time share one.
    assert!(meter.requests() >= 6);
    assert_eq!(stats.discarded_replies.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn poller_reads_a_1997_meter_through_a_pty_pair() {
    let (master, slave, path) = pty_pair();
    let shutdown = CancellationToken::new();
    let meter = Meter::new(Edition::Dlt1997, address("7"), 88.2, 10.0);
    tokio::spawn(serve_meter_stream(
        master,
        MeterBus::new(vec![meter]),
        shutdown.clone(),
    ));
    let cfg = parse(&format!(
        r#"
site = "t"
[[sources]]
name = "old_bus"
protocol = "dlt645-1997"
timeout = "1s"
[sources.serial]
path = "{path}"
[[sources.meters]]
name = "old_meter"
address = "7"
points.energy_kwh = {{ di = "9010", format = "XXXXXX.XX", unit = "kWh" }}
points.voltage_a_v = {{ di = "B611", format = "XXX", unit = "V" }}
points.power_kw = {{ di = "B630", format = "sXX.XXXX", unit = "kW" }}
"#
    ));
    let BusTransport::Serial(serial) = &cfg.meter_buses[0].transport else {
        panic!("a serial bus");
    };
    // 1997 meters default to 1200 baud, 8 data bits, even parity, 1 stop bit.
    assert_eq!(
        (serial.baud, serial.data_bits, serial.stop_bits),
        (1200, 8, 1)
    );
    assert_eq!(serial.parity, config::Parity::Even);
    let (mut rx, _) = start(&cfg, &shutdown);
    let batch = first_batch_within_10s(&mut rx, "a batch within 10 s").await;
    shutdown.cancel();
    drop(slave);
    assert_eq!(
        reading_of(&batch, "energy_kwh"),
        (&Some(Value::Float(88.2)), Quality::Good)
    );
    assert_eq!(
        reading_of(&batch, "voltage_a_v"),
        (&Some(Value::UInt(230)), Quality::Good)
    );
    assert_eq!(
        reading_of(&batch, "power_kw"),
        (&Some(Value::Float(10.0)), Quality::Good)
    );
}

/// Four meters on one bus (a template of consecutive addresses): the third is silent, the
/// fourth answers with bad checksums. The first two keep their 200 ms cadence, the faulty ones
/// are `comm_fail` and their circuits open after two failed cycles.
#[tokio::test]
async fn a_silent_meter_and_a_garbling_one_do_not_hold_up_their_bus() {
    let shutdown = CancellationToken::new();
    let meters: Vec<Meter> = (1..=4)
        .map(|n| {
            Meter::new(
                Edition::Dlt2007,
                address(&format!("11000{n}")),
                100.0 * n as f64,
                5.0,
            )
        })
        .collect();
    meters[2].set_fault(MeterFault::Silent);
    meters[3].set_fault(MeterFault::BadChecksum);
    let port = serve(MeterBus::new(meters.clone()), &shutdown).await;
    let cfg = parse(&format!(
        r#"
site = "t"
[[sources]]
name = "feeders"
protocol = "dlt645-2007"
tcp = "127.0.0.1:{port}"
timeout = "60ms"
inter_request_gap = "5ms"
breaker_failures = 2
breaker_probe_interval = "1h"
default_poll = "200ms"
[[sources.meters]]
name = "feeder_{{n}}"
address = "110001"
count = 4
points.energy_kwh = {{ di = "00010000", format = "XXXXXX.XX", unit = "kWh" }}
points.voltage_a_v = {{ di = "02010100", format = "XXX.X", unit = "V" }}
"#
    ));
    let addresses: Vec<String> = cfg.meter_buses[0]
        .meters
        .iter()
        .map(|m| m.address.to_string())
        .collect();
    assert_eq!(
        addresses,
        [
            "000000110001",
            "000000110002",
            "000000110003",
            "000000110004"
        ]
    );
    let (mut rx, stats) = start(&cfg, &shutdown);
    let by_device = collect(&mut rx, |b| {
        ["feeder_1", "feeder_2"]
            .iter()
            .all(|d| b.get(*d).is_some_and(|v| v.len() >= 10))
    })
    .await;
    shutdown.cancel();

    for healthy in ["feeder_1", "feeder_2"] {
        assert_good_on_the_grid(&by_device[healthy], healthy);
    }
    assert_eq!(stats.late_ticks.load(Ordering::Relaxed), 0);
    for faulty in ["feeder_3", "feeder_4"] {
        for b in &by_device[faulty] {
            for r in &b.readings {
                assert_eq!(
                    (r.quality, &r.value),
                    (Quality::CommFail, &None),
                    "{faulty}"
                );
            }
        }
    }
    // Cycle 1: two failed reads; cycle 2: one (silent again, the second is skipped); then the
    // circuit is open and the bus is left alone.
    assert_eq!(meters[2].requests(), 3, "silent meter");
    assert_eq!(meters[3].requests(), 3, "garbling meter");
    assert!(stats.comm_failures.load(Ordering::Relaxed) >= 6);
}

/// Every reading good, consecutive cycles exactly one 200 ms poll period apart, and each read
/// done within that period of its deadline.
fn assert_good_on_the_grid(batches: &[ReadingBatch], healthy: &str) {
    for b in batches {
        for r in &b.readings {
            assert_eq!(r.quality, Quality::Good, "{healthy}: {r:?}");
        }
    }
    for pair in batches.windows(2) {
        assert_eq!(pair[1].scheduled.0 - pair[0].scheduled.0, 200, "{healthy}");
    }
    for b in batches {
        let lag = b.readings[0].ts.0 - b.scheduled.0;
        assert!(
            (-5..200).contains(&lag),
            "{healthy}: read {lag} ms after its deadline"
        );
    }
}

/// A meter that answers in another meter's name: its answers are discarded, never taken as
/// its values or as the other meter's.
#[tokio::test]
async fn a_reply_from_the_wrong_address_is_discarded_not_taken() {
    let shutdown = CancellationToken::new();
    let confused = Meter::new(Edition::Dlt2007, address("21"), 500.0, 1.0);
    confused.set_fault(MeterFault::WrongAddress);
    let neighbour = Meter::new(Edition::Dlt2007, address("22"), 700.0, 1.0);
    let port = serve(MeterBus::new(vec![confused.clone(), neighbour]), &shutdown).await;
    let cfg = meter_bus(
        port,
        r#"timeout = "100ms"
default_poll = "300ms"
[[sources.meters]]
name = "m{n}"
first_index = 21
count = 2
address = "21"
points.energy_kwh = { di = "00010000", format = "XXXXXX.XX", unit = "kWh" }
"#,
    );
    let (mut rx, stats) = start(&cfg, &shutdown);
    let by_device = collect(&mut rx, |b| {
        b.get("m21").is_some_and(|v| v.len() >= 2) && b.contains_key("m22")
    })
    .await;
    shutdown.cancel();
    for b in &by_device["m21"] {
        assert_eq!(reading_of(b, "energy_kwh"), (&None, Quality::CommFail));
    }
    assert_eq!(
        reading_of(&by_device["m22"][0], "energy_kwh"),
        (&Some(Value::Float(700.0)), Quality::Good)
    );
    assert!(confused.requests() >= 2);
    assert!(stats.discarded_replies.load(Ordering::Relaxed) >= 2);
}

#[tokio::test]
async fn an_error_reply_marks_the_points_with_the_meters_refusal() {
    let shutdown = CancellationToken::new();
    let meter = Meter::new(Edition::Dlt2007, address("5"), 1.0, 1.0);
    let port = serve(MeterBus::new(vec![meter.clone()]), &shutdown).await;
    let cfg = meter_bus(
        port,
        r#"default_poll = "100ms"
[[sources.meters]]
name = "m"
address = "5"
points.energy_kwh = { di = "00010000", format = "XXXXXX.XX" }
points.unknown = { di = "04000409", format = "XXXXXX" }
"#,
    );
    let (mut rx, stats) = start(&cfg, &shutdown);
    let batch = rx.recv().await.unwrap();
    assert_eq!(reading_of(&batch, "energy_kwh").1, Quality::Good);
    // The simulator keeps no 04000409: it answers "no requested data".
    assert_eq!(
        reading_of(&batch, "unknown"),
        (&None, Quality::DeviceException)
    );
    meter.set_fault(MeterFault::ErrorReply(0x04));
    let refused = loop {
        let b = rx.recv().await.unwrap();
        if reading_of(&b, "energy_kwh").1 != Quality::Good {
            break b;
        }
    };
    shutdown.cancel();
    assert_eq!(
        reading_of(&refused, "energy_kwh"),
        (&None, Quality::DeviceException)
    );
    assert!(stats.exceptions.load(Ordering::Relaxed) >= 2);
    assert_eq!(stats.comm_failures.load(Ordering::Relaxed), 0);
}

/// `toml` loaded as `smeltwatch.toml` from a fresh directory that also holds the meter map
/// `csv_name` with the text `csv`; the directory lives as long as the returned guard.
fn load_beside_map(
    csv_name: &str,
    csv: &str,
    toml: &str,
) -> (tempfile::TempDir, Result<Config, config::ConfigError>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(csv_name), csv).unwrap();
    let path = dir.path().join("smeltwatch.toml");
    std::fs::write(&path, toml).unwrap();
    let loaded = config::load(&path);
    (dir, loaded)
}

#[test]
fn meter_maps_come_from_csv_and_check_prints_the_read_plan() {
    let toml = r#"
site = "t"
[meter_maps.aux]
csv = "aux.csv"
[[sources]]
name = "aux_bus"
protocol = "dlt645-2007"
[sources.serial]
path = "/dev/ttyS1"
[[sources.meters]]
name = "aux_{n}"
address = "000003430163"
count = 2
address_step = 10
map = "aux"
"#;
    let (_dir, loaded) = load_beside_map(
        "aux.csv",
        "# auxiliary feeder meters\nname,di,format,unit,poll\nenergy_kwh,00010000,XXXXXX.XX,kWh,1m\npower_kw,02030000,sXX.XXXX,kW,5s\n",
        toml,
    );
    let cfg = loaded.expect("valid configuration");
    let bus = &cfg.meter_buses[0];
    let BusTransport::Serial(serial) = &bus.transport else {
        panic!("serial");
    };
    assert_eq!((serial.baud, serial.parity), (2400, config::Parity::Even));
    assert_eq!(bus.meters[1].address, address("3430173"));
    let report = smeltwatch::app::commands::check_report(&cfg);
    assert!(
        report.contains("DL/T 645: 1 meter buses, 2 meters, 4 points"),
        "{report}"
    );
    assert!(
        report.contains(
            "source aux_bus (dlt645-2007 via serial /dev/ttyS1 at 2400 baud): 2 meters, timeout 2s, poll offset 0s"
        ),
        "{report}"
    );
    // Per meter: energy once a minute, power every 5 s: 2 × (1/60 + 1/5) = 0.43 requests/s.
    assert!(
        report.contains("total: 4 reads planned, 0.4 requests/s"),
        "{report}"
    );
    // A read of a 4-byte value is 2 × (4 + 12 + 4) + 4 = 44 bytes, a 3-byte one 43; at
    // 2400 baud and 11 bits a byte: 2 × (44/60 + 43/5) × 11 / 2400 = 0.0856 of the time.
    assert!(
        report.contains("the exchanges take 9 % of the time"),
        "{report}"
    );
    assert!(
        report.contains("meter aux_2 (address 000003430173) every 5s:"),
        "{report}"
    );
    assert!(
        report.contains("DI 00010000: energy_kwh [XXXXXX.XX kWh]"),
        "{report}"
    );
    assert!(cfg.sources.is_empty());
}

#[test]
fn meter_bus_mistakes_are_located() {
    let (dir, loaded) = load_beside_map(
        "old.csv",
        "name,di,format,unit\nenergy_kwh,9010,XXXXXX.XX,kWh\nbad,00010000,XX.X.X,\n",
        r#"site = "t"
[meter_maps.old]
csv = "old.csv"
[[sources]]
name = "bus"
protocol = "dlt645-2007"
tcp = "127.0.0.1:9000"
max_registers_per_read = 10
[[sources.meters]]
name = "m"
address = "12x"
map = "old"
"#,
    );
    let err = loaded.expect_err("mistakes").to_string();
    let csv = dir.path().join("old.csv");
    let csv = csv.display();
    for expected in [
        "smeltwatch.toml:8:26: sources[0].max_registers_per_read: `max_registers_per_read` is a Modbus setting, not used by a dlt645-2007 bus".to_owned(),
        "smeltwatch.toml:11:11: sources[0].meters[0].address: invalid meter address `12x`, expected 1 to 12 decimal digits".to_owned(),
        format!("{csv}:2: meter_maps.old.points.energy_kwh.di (column `di`): data identifier 9010 is DL/T 645-1997 but the bus speaks dlt645-2007"),
        format!("{csv}:3: meter_maps.old.points.bad.format (column `format`): invalid format `XX.X.X`"),
    ] {
        assert!(err.contains(&expected), "missing\n  {expected}\nin\n{err}");
    }
    let err = problems(
        r#"site = "t"
[[sources]]
name = "bus"
tcp = "127.0.0.1:502"
[[sources.meters]]
name = "m"
address = "1"
"#,
    );
    assert!(
        err.contains("sources[0].meters: `meters` are the meters of a DL/T 645 bus"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_dlt645_reads_the_address_and_the_default_dis() {
    let shutdown = CancellationToken::new();
    let meter = Meter::new(Edition::Dlt2007, address("3430163"), 1206.42, 12.5);
    let port = serve(MeterBus::new(vec![meter]), &shutdown).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
        .args(["probe", "--dlt645", "--tcp", &format!("127.0.0.1:{port}")])
        .output()
        .await
        .unwrap();
    shutdown.cancel();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "meter address 000003430163 (read with the address read to AAAAAAAAAAAA)"
    );
    // Energy, voltage, current, power, power factor: the standard's formats for their DIs.
    assert_eq!(lines.len(), 6, "{stdout}");
    assert!(lines[1].contains("→ 1206.42 kWh (XXXXXX.XX)"), "{stdout}");
    assert!(lines[2].contains("→ 230 V (XXX.X)"), "{stdout}");
    assert!(lines[4].contains("→ 12.5 kW (sXX.XXXX)"), "{stdout}");
    assert!(lines[5].contains("→ 0.92 (sX.XXX)"), "{stdout}");
    // Without --dlt645 a Modbus probe still needs its address.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
        .args(["probe", "--tcp", "127.0.0.1:1"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--address"));
}

#[test]
fn meters_by_address_list() {
    let cfg = parse(
        r#"site = "t"
[[sources]]
name = "bus"
protocol = "dlt645-1997"
tcp = "127.0.0.1:4001"
[[sources.meters]]
name = "feeder_{n:02}"
first_index = 7
addresses = ["3430163", "000012345678"]
points.energy_kwh = { di = "9010", format = "XXXXXX.XX", unit = "kWh" }
"#,
    );
    let meters: Vec<(String, String)> = cfg.meter_buses[0]
        .meters
        .iter()
        .map(|m| (m.name.to_string(), m.address.to_string()))
        .collect();
    assert_eq!(
        meters,
        [
            ("feeder_07".to_owned(), "000003430163".to_owned()),
            ("feeder_08".to_owned(), "000012345678".to_owned()),
        ]
    );
    let err = problems(
        r#"site = "t"
[[sources]]
name = "bus"
protocol = "dlt645-2007"
tcp = "127.0.0.1:4001"
reconnect_min = "5s"
reconnect_max = "1s"
[[sources.meters]]
name = "m_{n}"
address = "1"
addresses = ["2", "1"]
[[sources.meters]]
name = "k_{n}"
addresses = ["3", "3"]
"#,
    );
    assert!(
        err.contains("sources[0].meters[0]: a meter entry needs exactly one of `address`"),
        "{err}"
    );
    assert!(
        err.contains("address 000000000003 is used twice on this bus"),
        "{err}"
    );
    assert!(
        err.contains(
            "sources[0].reconnect_min: reconnect_min (5s) is greater than reconnect_max (1s)"
        ),
        "{err}"
    );
}
