//! Derived points in the fan-out's path (`derived::Engine`): a 300-cell line polled at 1 s
//! (the rectifier, 300 pots and two auxiliary meters, one batch each) with 10 expressions: five
//! aggregates over the pots' glob, a product of units, a counter's rate and delta, a condition and
//! a `has()`. One iteration is one second of the line: every batch observed, then every entry
//! evaluated once (the fan-out evaluates once per burst).
//!
//! Run: `cargo bench --bench derived -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use smeltwatch::derived::Engine;
use smeltwatch::model::{Quality, Record, Timestamp, Value};
use smeltwatch_testkit::batch::{one_second_batch, reading};

const T0: i64 = 1_740_787_200_000;

const CONFIG: &str = concat!(
    r#"
site = "bench"
"#,
    include_str!("../tests/fixtures/derived_potline.toml"),
    r#"
[[sources.devices]]
name = "pot_{n:03}"
count = 300
unit_id = 2
address_stride = 2
map = "pcu"
"#,
    include_str!("../tests/fixtures/derived_aux_meters.toml"),
    r#"
[[derived]]
name = "mean_cell_voltage_v"
expr = "mean(potline1/pot_*.cell_voltage_v)"
unit = "V"
[[derived]]
name = "max_cell_voltage_v"
expr = "max(potline1/pot_*.cell_voltage_v)"
unit = "V"
[[derived]]
name = "min_cell_voltage_v"
expr = "min(potline1/pot_*.cell_voltage_v)"
unit = "V"
[[derived]]
name = "pots_answering"
expr = "count(potline1/pot_*.cell_voltage_v)"
[[derived]]
name = "line_voltage_sum_v"
expr = "sum(potline1/pot_*.cell_voltage_v)"
unit = "V"
[[derived]]
name = "line_power_kw"
expr = "rectifier.line_current_ka * rectifier.line_voltage_v"
unit = "kW"
[[derived]]
name = "compressor_power_kw"
expr = "rate(aux/compressors.energy_kwh, \"5m\")"
unit = "kW"
[[derived]]
name = "compressor_last_hour_kwh"
expr = "delta(aux/compressors.energy_kwh, \"1h\")"
unit = "kWh"
[[derived]]
name = "line_voltage_high"
expr = "mean(potline1/pot_*.cell_voltage_v) > 4.6 ? 1 : 0"
[[derived]]
name = "aux_energy_kwh"
expr = "aux/compressors.energy_kwh + (has(aux/gtc_fans.energy_kwh) ? aux/gtc_fans.energy_kwh : 0)"
unit = "kWh"
"#,
);

fn batch(source: &str, device: &str, point: &Arc<str>, v: f64, ts: i64) -> Record {
    let readings = vec![reading(
        point.clone(),
        Some(Value::Float(v)),
        "",
        Quality::Good,
        ts,
    )];
    Record::Batch(one_second_batch(source, device, ts, readings))
}

/// One second of the line at `s` seconds.
fn second(s: i64, voltage: &Arc<str>, energy: &Arc<str>) -> Vec<Record> {
    let ts = T0 + s * 1000;
    let mut out = Vec::with_capacity(303);
    let line = [("line_current_ka", 400.0), ("line_voltage_v", 1_300.0)]
        .map(|(p, v)| reading(p, Some(Value::Float(v)), "", Quality::Good, ts));
    out.push(Record::Batch(one_second_batch(
        "potline1",
        "rectifier",
        ts,
        line.to_vec(),
    )));
    for p in 1..=300 {
        let v = 4.1 + (p % 7) as f64 * 0.01;
        out.push(batch("potline1", &format!("pot_{p:03}"), voltage, v, ts));
    }
    out.push(batch(
        "aux",
        "compressors",
        energy,
        1e5 + 0.3 * s as f64,
        ts,
    ));
    out.push(batch("aux", "gtc_fans", energy, 2e5 + 0.1 * s as f64, ts));
    out
}

fn potline(c: &mut Criterion) {
    let cfg = smeltwatch::config::parse(CONFIG, Path::new("bench.toml")).expect("config loads");
    assert_eq!(cfg.derived.len(), 10);
    let (voltage, energy) = (Arc::from("cell_voltage_v"), Arc::from("energy_kwh"));
    let seconds: Vec<Vec<Record>> = (0..60).map(|s| second(s, &voltage, &energy)).collect();
    let mut engine = Engine::new(&cfg.derived).expect("engine");
    let mut g = c.benchmark_group("derived");
    // Elements: derived points evaluated.
    g.throughput(Throughput::Elements(10));
    let mut s = 0usize;
    g.bench_function("potline_300_cells_one_second_10_expressions", |b| {
        b.iter(|| {
            let batches = &seconds[s % 60];
            engine.observe(batches);
            let out = engine.evaluate(Timestamp(T0 + (s % 60) as i64 * 1000));
            s += 1;
            black_box(out)
        })
    });
    // The inputs alone: what the 303 batches of a second cost without an evaluation.
    let mut quiet = Engine::new(&cfg.derived).expect("engine");
    g.throughput(Throughput::Elements(303));
    g.bench_function("observe_one_second_303_batches", |b| {
        b.iter(|| {
            quiet.observe(&seconds[s % 60]);
            s += 1;
        })
    });
    g.finish();
}

criterion_group!(benches, potline);
criterion_main!(benches);
