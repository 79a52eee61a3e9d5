//! Calculator stage: readings per second per core through `calc::Pipeline` for a 300-cell line
//! (rectifier + 300 pot control units at 1 s) and a stack CEMS at 10 s.
//!
//! Run: `cargo bench --bench calc -- --warm-up-time 1 --measurement-time 3`.
//! Throughput is reported in readings per second on one core; each iteration feeds ten minutes
//! of plant time, so minute windows, per-cell metrics and anode-effect detection are included.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use smeltwatch::calc::{CalcConfig, Pipeline};
use smeltwatch::model::{Quality, Reading, ReadingBatch, Timestamp, Value};

const CELLS: usize = 300;
const SECONDS: i64 = 600;
const T0: i64 = 1_740_787_200_000;

const CALC: &str = r#"
[[potlines]]
name = "potline1"
rectifier = "potline1/rectifier"
pots = "potline1/pot_*"
current_efficiency = 0.935
approved_capacity_t_per_year = 500000.0

[[stacks]]
name = "gtc1_stack"
device = "gtc1/gtc1_stack"
limits = "gb25465_2010_al_pot_gas"
pollutants = { so2 = "so2_mg_m3", fluoride = "fluoride_mg_m3", particulate = "particulate_mg_m3" }
calibration_point = "in_calibration"
"#;

fn reading(point: &Arc<str>, value: Value, ts: i64) -> Reading {
    Reading {
        point: point.clone(),
        value: Some(value),
        unit: Arc::from(""),
        quality: Quality::Good,
        ts: Timestamp(ts),
    }
}

fn batch(
    source: &Arc<str>,
    device: Arc<str>,
    interval_ms: u64,
    readings: Vec<Reading>,
) -> ReadingBatch {
    let scheduled = readings[0].ts;
    ReadingBatch {
        source: source.clone(),
        device,
        unit_id: 1,
        poll_interval_ms: interval_ms,
        scheduled,
        readings,
    }
}

fn plant() -> (Vec<ReadingBatch>, u64) {
    let line: Arc<str> = Arc::from("potline1");
    let gtc: Arc<str> = Arc::from("gtc1");
    let names: Vec<Arc<str>> = (1..=CELLS)
        .map(|c| Arc::from(format!("pot_{c:03}")))
        .collect();
    let [v, ins, cut, ka, ac, so2, f, pm, flow, cal]: [Arc<str>; 10] = [
        "cell_voltage_v",
        "in_service",
        "cut_out",
        "line_current_ka",
        "ac_energy_kwh",
        "so2_mg_m3",
        "fluoride_mg_m3",
        "particulate_mg_m3",
        "flow_m3h",
        "in_calibration",
    ]
    .map(Arc::from);
    let mut batches = Vec::new();
    let mut readings = 0u64;
    for s in 0..SECONDS {
        let t = T0 + s * 1000;
        let mut r = vec![reading(&ka, Value::Float(400.0), t)];
        if s % 60 == 0 {
            r.push(reading(&ac, Value::UInt(1_000_000 + s as u64 * 110), t));
        }
        readings += r.len() as u64;
        batches.push(batch(&line, Arc::from("rectifier"), 1000, r));
        for (i, name) in names.iter().enumerate() {
            // one anode effect every few minutes on some cell
            let volts = if (s / 5) % 40 == 1 && i == (s as usize / 200) % CELLS {
                30.0
            } else {
                4.05 + (i % 7) as f64 * 0.01
            };
            let r = vec![
                reading(&v, Value::Float(volts), t),
                reading(&ins, Value::Bool(i != 7), t),
                reading(&cut, Value::Bool(i == 7), t),
            ];
            readings += r.len() as u64;
            batches.push(batch(&line, name.clone(), 1000, r));
        }
        if s % 10 == 0 {
            let r = vec![
                reading(&so2, Value::Float(85.3), t),
                reading(&f, Value::Float(0.85), t),
                reading(&pm, Value::Float(4.2), t),
                reading(&flow, Value::Float(1.6e6), t),
                reading(&cal, Value::Bool(false), t),
            ];
            readings += r.len() as u64;
            batches.push(batch(&gtc, Arc::from("gtc1_stack"), 10_000, r));
        }
    }
    (batches, readings)
}

fn bench_pipeline(c: &mut Criterion) {
    let cfg: CalcConfig = toml::from_str(CALC).expect("bench config parses");
    let (batches, readings) = plant();
    let mut g = c.benchmark_group("calc");
    g.throughput(Throughput::Elements(readings));
    g.sample_size(10);
    g.bench_function("pipeline_300_cells_10_min", |b| {
        b.iter(|| {
            let mut p = Pipeline::new(&cfg).expect("bench pipeline builds");
            let mut n = 0usize;
            for batch in &batches {
                n += p.on_batch(black_box(batch)).len();
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_pipeline);
criterion_main!(benches);
