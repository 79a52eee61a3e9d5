//! The plant simulator seen from Modbus clients: tokio-modbus, mbpoll and an RTU pty pair.
//!
//! Values are decoded by hand here (not with the crate's decoder), so these tests check the
//! simulator's wire format independently.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::time::Duration;

use common::mbpoll;
use smeltwatch::simulator::layout::{cems, copper_smelter, pcu, rectifier};
use smeltwatch::simulator::{
    self, BankSizes, BindMode, Corruption, Device, ExceptionFault, Faults, RunningSimulator,
    SimulatorConfig, UnitMap,
};
use tokio::time::{Instant, timeout};
use tokio_modbus::client::Context;
use tokio_modbus::prelude::*;
use tokio_util::sync::CancellationToken;

/// A small plant. The tick is long so that values stay still while a test compares them.
fn config(seed: u64, tick: &str) -> SimulatorConfig {
    toml::from_str(&format!(
        r#"
        seed = {seed}
        tick = "{tick}"
        [[potlines]]
        name = "potline1"
        listen = "127.0.0.1:15020"
        cells = 4
        cells_out_of_service = [2]
        anode_effects_per_cell_day = 2000.0
        dc_energy_start_kwh = 4294967000
        [[smelters]]
        name = "smelter1"
        listen = "127.0.0.1:15022"
        unit_id = 1
        [[stacks]]
        name = "smelter1_stack"
        listen = "127.0.0.1:15022"
        unit_id = 2
        profile = "copper_smelter"
        [[stacks]]
        name = "gtc1_stack"
        listen = "127.0.0.1:15021"
        profile = "potline_gtc"
        "#
    ))
    .expect("test simulator config")
}

async fn start(seed: u64, tick: &str) -> RunningSimulator {
    simulator::start(&config(seed, tick), BindMode::AnyPort)
        .await
        .expect("simulator starts")
}

async fn connect(sim: &RunningSimulator, device: &str) -> Context {
    let at = sim.device_addr(device).expect("device exists");
    timeout(
        Duration::from_secs(5),
        tcp::connect_slave(at.addr, Slave(at.unit_id)),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

const CALL: Duration = Duration::from_secs(5);

async fn read_input(ctx: &mut Context, addr: u16, count: u16) -> Vec<u16> {
    timeout(CALL, ctx.read_input_registers(addr, count))
        .await
        .expect("reply in time")
        .expect("no transport error")
        .expect("no exception")
}

async fn read_holding(ctx: &mut Context, addr: u16, count: u16) -> Vec<u16> {
    timeout(CALL, ctx.read_holding_registers(addr, count))
        .await
        .expect("reply in time")
        .expect("no transport error")
        .expect("no exception")
}

fn f32_abcd(w: &[u16]) -> f64 {
    f64::from(f32::from_bits((u32::from(w[0]) << 16) | u32::from(w[1])))
}

fn f32_cdab(w: &[u16]) -> f64 {
    f64::from(f32::from_bits((u32::from(w[1]) << 16) | u32::from(w[0])))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-4 * b.abs().max(1.0)
}

#[tokio::test]
async fn a_client_reads_the_values_the_device_handles_report() {
    let sim = start(1, "1h").await;
    assert_eq!(sim.endpoints().len(), 3, "{:?}", sim.endpoints());
    assert!(
        sim.endpoints()
            .iter()
            .all(|e| e.bound.ip().is_loopback() && e.bound.port() != 0)
    );
    let names: Vec<_> = sim.endpoints().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["potline1", "smelter1+smelter1_stack", "gtc1_stack"]);

    // Rectifier: raw registers identical, floats and counters plausible.
    let rect = sim.device("potline1/rectifier").expect("rectifier");
    let mut ctx = connect(&sim, "potline1/rectifier").await;
    let words = read_input(&mut ctx, 0, 14).await;
    assert_eq!(Some(words.clone()), rect.input(0, 14));
    let current_ka = f32_abcd(&words[0..2]);
    assert!((380.0..420.0).contains(&current_ka), "{current_ka}");
    assert!(close(
        current_ka,
        rect.read_point(&rectifier::LINE_CURRENT_KA).expect("truth")
    ));
    let dc_kwh = (u32::from(words[8]) << 16) | u32::from(words[9]);
    assert_eq!(
        dc_kwh, 4_294_967_000,
        "initial counter value, nothing accumulated yet"
    );
    assert_eq!(words[12], 9750, "efficiency 97.50 % as u16 in 0.01 %");
    let setpoint = read_holding(&mut ctx, 0, 2).await;
    assert_eq!(f32_cdab(&setpoint), 400.0, "CDAB set point");

    // A write lands in the device (the simulator is a fake controller).
    let bits = 380.0f32.to_bits();
    let cdab = [bits as u16, (bits >> 16) as u16];
    timeout(CALL, ctx.write_multiple_registers(0, &cdab))
        .await
        .expect("in time")
        .expect("transport")
        .expect("no exception");
    assert_eq!(
        rect.read_point(&rectifier::CURRENT_SETPOINT_KA),
        Some(380.0)
    );

    // Pots on the same socket, switching unit ids on one connection.
    for (name, cut_out) in [("potline1/pot_001", false), ("potline1/pot_002", true)] {
        let at = sim.device_addr(name).expect("pot");
        ctx.set_slave(Slave(at.unit_id));
        let pot = sim.device(name).expect("pot");
        let words = read_input(&mut ctx, 0, 9).await;
        assert_eq!(Some(words.clone()), pot.input(0, 9), "{name}");
        let v = f32_abcd(&words[0..2]);
        assert!(close(
            v,
            pot.read_point(&pcu::CELL_VOLTAGE_V).expect("truth")
        ));
        let status = words[5];
        assert_eq!(
            status & 0b100 != 0,
            cut_out,
            "{name}: cut_out bit in {status:#06b}"
        );
        assert_eq!(status & 0b001 != 0, !cut_out, "{name}: in_service bit");
        if cut_out {
            assert!(v < 0.05, "{name}: {v}");
        } else {
            assert!((3.5..40.0).contains(&v), "{name}: {v}");
        }
        let target = read_holding(&mut ctx, 0, 2).await;
        assert!(close(f32_cdab(&target), 4.05));
        let alarm = timeout(CALL, ctx.read_discrete_inputs(0, 1))
            .await
            .expect("in time");
        assert_eq!(
            alarm.expect("transport").expect("no exception"),
            pot.discrete_inputs(0, 1).expect("truth")
        );
    }

    // Smelter and its stack share a socket: unit 1 and unit 2.
    let smelter = sim.device("smelter1").expect("smelter");
    let mut ctx = connect(&sim, "smelter1").await;
    let words = read_input(&mut ctx, 0, 12).await;
    assert_eq!(Some(words.clone()), smelter.input(0, 12));
    let matte = f32_cdab(&words[8..10]);
    assert!(close(
        matte,
        smelter
            .read_point(&copper_smelter::MATTE_GRADE_PCT)
            .expect("truth")
    ));
    assert!((40.0..80.0).contains(&matte), "{matte}");
    let so2_pct = f64::from(words[10]) * 0.01;
    assert!((5.0..20.0).contains(&so2_pct), "{so2_pct}");

    ctx.set_slave(Slave(2));
    let stack = sim.device("smelter1_stack").expect("stack");
    let words = read_input(&mut ctx, 0, 15).await;
    assert_eq!(Some(words.clone()), stack.input(0, 15));
    let temp_c = f64::from(words[12] as i16) * 0.1;
    assert!(close(
        temp_c,
        stack.read_point(&cems::TEMPERATURE_C).expect("truth")
    ));
    let so2 = f32_abcd(&words[0..2]);
    assert!((0.0..400.0).contains(&so2), "{so2}");

    // Unknown unit id: exception 0x0B. Past the end of a bank: illegal data address.
    ctx.set_slave(Slave(99));
    let r = timeout(CALL, ctx.read_input_registers(0, 1))
        .await
        .expect("in time");
    assert_eq!(
        r.expect("transport"),
        Err(ExceptionCode::GatewayTargetDevice)
    );
    ctx.set_slave(Slave(2));
    let r = timeout(CALL, ctx.read_input_registers(14, 2))
        .await
        .expect("in time");
    assert_eq!(
        r.expect("transport"),
        Err(ExceptionCode::IllegalDataAddress)
    );
    let r = timeout(CALL, ctx.read_holding_registers(0, 1))
        .await
        .expect("in time");
    assert_eq!(
        r.expect("transport"),
        Err(ExceptionCode::IllegalDataAddress),
        "a CEMS has no holding registers"
    );

    // Unit 255 ("this device") reaches the only device of a single-device endpoint.
    let gtc = sim.device_addr("gtc1_stack").expect("gtc");
    let mut ctx = timeout(CALL, tcp::connect(gtc.addr))
        .await
        .expect("in time")
        .expect("connect");
    let words = read_input(&mut ctx, 0, 2).await;
    let truth = sim.device("gtc1_stack").expect("gtc").input(0, 2);
    assert_eq!(Some(words), truth);

    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_the_endpoints() {
    let sim = start(1, "1h").await;
    let addr = sim.endpoints()[0].bound;
    let mut ctx = connect(&sim, "potline1/rectifier").await;
    read_input(&mut ctx, 0, 2).await;
    sim.shutdown().await;
    let r = timeout(CALL, ctx.read_input_registers(0, 2))
        .await
        .expect("in time");
    assert!(r.is_err(), "open connection is closed: {r:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener is closed"
    );
}

#[tokio::test]
async fn latency_delays_the_reply_and_trips_a_client_timeout() {
    let sim = start(2, "1h").await;
    let pot = sim.device("potline1/pot_003").expect("pot");
    pot.set_faults(Faults {
        latency: Duration::from_millis(300),
        ..Faults::default()
    });
    let mut ctx = connect(&sim, "potline1/pot_003").await;
    let r = timeout(Duration::from_millis(100), ctx.read_input_registers(0, 2)).await;
    assert!(
        r.is_err(),
        "a 100 ms client timeout fires before a 300 ms reply"
    );

    // A context that timed out may get the late reply next: use a fresh one (as the poller does).
    let mut ctx = connect(&sim, "potline1/pot_003").await;
    let t0 = Instant::now();
    let words = read_input(&mut ctx, 0, 2).await;
    let elapsed = t0.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert_eq!(Some(words), pot.input(0, 2));

    pot.clear_faults();
    let t0 = Instant::now();
    read_input(&mut ctx, 0, 2).await;
    assert!(
        t0.elapsed() < Duration::from_millis(300),
        "latency removed at runtime"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_silent_device_never_answers_but_its_neighbours_do() {
    let sim = start(3, "1h").await;
    let pot = sim.device("potline1/pot_004").expect("pot");
    pot.set_faults(Faults {
        silent: true,
        ..Faults::default()
    });
    let mut ctx = connect(&sim, "potline1/pot_004").await;
    let r = timeout(Duration::from_millis(500), ctx.read_input_registers(0, 2)).await;
    assert!(r.is_err(), "no reply within 500 ms: {r:?}");
    assert_eq!(pot.requests(), 1, "the request did arrive");

    let mut other = connect(&sim, "potline1/pot_001").await;
    read_input(&mut other, 0, 2).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn exceptions_for_every_request_or_an_address_range() {
    let sim = start(4, "1h").await;
    let rect = sim.device("potline1/rectifier").expect("rectifier");
    let mut ctx = connect(&sim, "potline1/rectifier").await;

    rect.set_faults(Faults {
        exception: Some(ExceptionFault {
            code: 6,
            addresses: None,
        }),
        ..Faults::default()
    });
    let r = timeout(CALL, ctx.read_input_registers(0, 2))
        .await
        .expect("in time");
    assert_eq!(r.expect("transport"), Err(ExceptionCode::ServerDeviceBusy));
    let r = timeout(CALL, ctx.write_single_register(0, 1))
        .await
        .expect("in time");
    assert_eq!(r.expect("transport"), Err(ExceptionCode::ServerDeviceBusy));

    rect.set_faults(Faults {
        exception: Some(ExceptionFault {
            code: 4,
            addresses: Some(8..=11),
        }),
        ..Faults::default()
    });
    read_input(&mut ctx, 0, 8).await;
    let r = timeout(CALL, ctx.read_input_registers(6, 4))
        .await
        .expect("in time");
    assert_eq!(
        r.expect("transport"),
        Err(ExceptionCode::ServerDeviceFailure)
    );
    read_input(&mut ctx, 12, 2).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_from_the_configuration_apply_from_the_start() {
    let mut cfg = config(5, "1h");
    cfg.faults = toml::from_str::<SimulatorConfig>(
        r#"
        [[faults]]
        device = "potline1/pot_003"
        exception = 2
        "#,
    )
    .expect("faults")
    .faults;
    let sim = simulator::start(&cfg, BindMode::AnyPort)
        .await
        .expect("start");
    let mut ctx = connect(&sim, "potline1/pot_003").await;
    let r = timeout(CALL, ctx.read_input_registers(0, 2))
        .await
        .expect("in time");
    assert_eq!(
        r.expect("transport"),
        Err(ExceptionCode::IllegalDataAddress)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn dropped_connections_every_n_requests_and_once() {
    let sim = start(6, "1h").await;
    let pot = sim.device("potline1/pot_001").expect("pot");
    pot.set_faults(Faults {
        drop_every: 3,
        ..Faults::default()
    });
    let mut ctx = connect(&sim, "potline1/pot_001").await;
    read_input(&mut ctx, 0, 2).await;
    read_input(&mut ctx, 0, 2).await;
    let r = timeout(CALL, ctx.read_input_registers(0, 2))
        .await
        .expect("closed, not hung");
    assert!(r.is_err(), "third request: connection dropped: {r:?}");
    let r = timeout(CALL, ctx.read_input_registers(0, 2))
        .await
        .expect("closed, not hung");
    assert!(r.is_err(), "the connection stays closed: {r:?}");

    let mut ctx = connect(&sim, "potline1/pot_001").await;
    read_input(&mut ctx, 0, 2).await; // request 4
    read_input(&mut ctx, 0, 2).await; // request 5
    let r = timeout(CALL, ctx.read_input_registers(0, 2))
        .await
        .expect("closed, not hung");
    assert!(r.is_err(), "sixth request dropped again: {r:?}");

    pot.set_faults(Faults {
        drop_once: true,
        ..Faults::default()
    });
    let mut ctx = connect(&sim, "potline1/pot_001").await;
    let r = timeout(CALL, ctx.read_input_registers(0, 2))
        .await
        .expect("closed, not hung");
    assert!(r.is_err(), "dropped once: {r:?}");
    let mut ctx = connect(&sim, "potline1/pot_001").await;
    for _ in 0..5 {
        read_input(&mut ctx, 0, 2).await;
    }
    assert!(!pot.faults().drop_once, "the one-shot fault is consumed");
    sim.shutdown().await;
}

#[tokio::test]
async fn corrupted_replies_are_rejected_by_the_client() {
    let sim = start(7, "1h").await;
    let pot = sim.device("potline1/pot_001").expect("pot");

    // Wrong transaction id: tokio-modbus reports a header mismatch.
    pot.set_faults(Faults {
        corrupt_every: 2,
        corruption: Corruption::TransactionId,
        ..Faults::default()
    });
    let mut ctx = connect(&sim, "potline1/pot_001").await;
    read_input(&mut ctx, 0, 2).await;
    let r = timeout(CALL, ctx.read_input_registers(0, 2))
        .await
        .expect("in time");
    match r {
        Err(tokio_modbus::Error::Protocol(tokio_modbus::ProtocolError::HeaderMismatch {
            ..
        })) => {}
        other => panic!("expected a header mismatch, got {other:?}"),
    }

    // Wrong protocol id and a truncated frame: some error, promptly (the truncation closes).
    for corruption in [Corruption::ProtocolId, Corruption::Truncate] {
        pot.set_faults(Faults {
            corrupt_once: true,
            corruption,
            ..Faults::default()
        });
        let mut ctx = connect(&sim, "potline1/pot_001").await;
        let r = timeout(CALL, ctx.read_input_registers(0, 2))
            .await
            .unwrap_or_else(|_| panic!("{corruption:?}: the client must fail, not hang"));
        assert!(r.is_err(), "{corruption:?}: {r:?}");
        let mut ctx = connect(&sim, "potline1/pot_001").await;
        read_input(&mut ctx, 0, 2).await;
    }
    sim.shutdown().await;
}

/// Every bank of every device, by name.
fn snapshot(sim: &RunningSimulator) -> Vec<(String, simulator::Banks)> {
    sim.device_names()
        .into_iter()
        .map(|n| {
            let banks = sim.device(&n).expect("listed").snapshot();
            (n, banks)
        })
        .collect()
}

/// The state after each of ticks 0..=n.
async fn sequence(sim: &RunningSimulator, n: u64) -> Vec<Vec<(String, simulator::Banks)>> {
    let mut out = vec![snapshot(sim)];
    for k in 1..=n {
        sim.wait_for_tick(k).await;
        // Time only moves when every task is idle, so the models are still at tick k here.
        assert_eq!(sim.ticks(), k);
        out.push(snapshot(sim));
    }
    out
}

/// Runs a fresh simulator for `n` ticks and returns its state after each tick, and the DC
/// energy counter at the end.
async fn run_for(seed: u64, n: u64) -> (Vec<Vec<(String, simulator::Banks)>>, f64) {
    let sim = start(seed, "1s").await;
    let seq = sequence(&sim, n).await;
    let rect = sim.device("potline1/rectifier").expect("rectifier");
    let dc = rect.read_point(&rectifier::DC_ENERGY_KWH).expect("dc");
    sim.shutdown().await;
    (seq, dc)
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_plant_tick_by_tick() {
    let (seq_a, dc) = run_for(42, 120).await;
    let (seq_b, _) = run_for(42, 120).await;
    let (seq_c, _) = run_for(43, 120).await;
    assert_eq!(seq_a.len(), 121);
    assert!(seq_a == seq_b, "same seed, same registers at every tick");
    assert!(seq_a[0] != seq_c[0], "another seed gives other values");
    assert!(seq_a[0] != seq_a[120], "values move");

    // With 2000 anode effects per cell-day on 3 live cells, two minutes see some.
    let ae_seen = seq_a.iter().any(|state| {
        state
            .iter()
            .filter(|(n, _)| n.contains("/pot_"))
            .any(|(_, banks)| banks.input[5] & 0b10 != 0)
    });
    assert!(ae_seen, "an anode effect in two minutes at this rate");
    // The DC counter started 296 kWh below 2^32 and the line draws ~20 MW: it has wrapped.
    assert!(dc < 1000.0, "{dc}");
}

#[tokio::test]
async fn mbpoll_reads_what_the_device_handles_report() {
    if !mbpoll::available() {
        eprintln!(
            "SKIPPED mbpoll_reads_what_the_device_handles_report: `mbpoll` not installed (apt-get install mbpoll)"
        );
        return;
    }
    let sim = start(8, "1h").await;
    let rect_at = sim.device_addr("potline1/rectifier").expect("rectifier");
    let rect = sim.device("potline1/rectifier").expect("rectifier");
    let pot_at = sim.device_addr("potline1/pot_001").expect("pot");
    let pot = sim.device("potline1/pot_001").expect("pot");

    // Raw input registers (FC 4).
    let (addr, unit) = (rect_at.addr, rect_at.unit_id);
    let got = tokio::task::spawn_blocking(move || mbpoll::poll(addr, unit, "3:hex", 0, 14, &[]))
        .await
        .expect("join")
        .expect("mbpoll");
    let expected = rect.input(0, 14).expect("truth");
    assert_eq!(got.len(), 14, "{got:?}");
    for ((a, text), (i, want)) in got.iter().zip(expected.iter().enumerate()) {
        assert_eq!(usize::from(*a), i);
        let value = u16::from_str_radix(text.trim_start_matches("0x"), 16).expect("hex");
        assert_eq!(value, *want, "input register {a}");
    }

    // Raw holding registers (FC 3) of a pot.
    let (addr, unit) = (pot_at.addr, pot_at.unit_id);
    let got = tokio::task::spawn_blocking(move || mbpoll::poll(addr, unit, "4:hex", 0, 3, &[]))
        .await
        .expect("join")
        .expect("mbpoll");
    let values: Vec<u16> = got
        .iter()
        .map(|(_, t)| u16::from_str_radix(t.trim_start_matches("0x"), 16).expect("hex"))
        .collect();
    assert_eq!(Some(values), pot.holding(0, 3));

    // Floats: mbpoll's default word order is low word first (our CDAB set point); -B reads ABCD.
    let got = tokio::task::spawn_blocking(move || mbpoll::poll(addr, unit, "4:float", 0, 1, &[]))
        .await
        .expect("join")
        .expect("mbpoll");
    let target: f64 = got[0].1.parse().expect("float");
    assert!(
        close(
            target,
            pot.read_point(&pcu::TARGET_VOLTAGE_V).expect("truth")
        ),
        "{target}"
    );
    let got =
        tokio::task::spawn_blocking(move || mbpoll::poll(addr, unit, "3:float", 0, 1, &["-B"]))
            .await
            .expect("join")
            .expect("mbpoll");
    let v: f64 = got[0].1.parse().expect("float");
    let truth = pot.read_point(&pcu::CELL_VOLTAGE_V).expect("truth");
    assert!((v - truth).abs() < 1e-3, "mbpoll {v} vs {truth}");
    sim.shutdown().await;
}

#[tokio::test]
async fn rtu_over_a_pty_pair_serves_the_same_devices() {
    let (client_end, server_end) = match tokio_serial::SerialStream::pair() {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("SKIPPED rtu_over_a_pty_pair_serves_the_same_devices: no pty pair here: {e}");
            return;
        }
    };
    let device = Device::new("meter", BankSizes::default(), 1);
    device.set_holding(0, &[0x4081, 0x999A, 7]);
    device.set_input(0, &[1, 2, 3]);
    let mut units = UnitMap::new();
    units.insert(5, device.clone());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(simulator::serve_rtu(server_end, units, shutdown.clone()));

    let mut ctx = tokio_modbus::client::rtu::attach_slave(client_end, Slave(5));
    assert_eq!(read_holding(&mut ctx, 0, 3).await, vec![0x4081, 0x999A, 7]);
    assert_eq!(read_input(&mut ctx, 1, 2).await, vec![2, 3]);
    timeout(CALL, ctx.write_single_register(2, 9))
        .await
        .expect("in time")
        .expect("transport")
        .expect("no exception");
    assert_eq!(device.holding(2, 1), Some(vec![9]));
    device.set_faults(Faults {
        exception: Some(ExceptionFault {
            code: 6,
            addresses: None,
        }),
        ..Faults::default()
    });
    let r = timeout(CALL, ctx.read_input_registers(0, 1))
        .await
        .expect("in time");
    assert_eq!(r.expect("transport"), Err(ExceptionCode::ServerDeviceBusy));

    shutdown.cancel();
    timeout(CALL, server)
        .await
        .expect("server stops")
        .expect("join")
        .expect("no error");
}
