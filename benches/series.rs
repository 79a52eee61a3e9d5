//! The series store in the fan-out's path (`SeriesStore::record_batches`): readings per second
//! on one core for a 300-cell line at 1 s (the rectifier's current and 300 cell voltages kept, as
//! rings and as the line's sum and mean, beside points that are not kept), and for 1,000 devices
//! × 100 registers of which none is kept (the cost of the selection alone).
//!
//! Run: `cargo bench --bench series -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use smeltwatch::model::{Quality, ReadingBatch, Timestamp, Value};
use smeltwatch::series::SeriesStore;
use smeltwatch_testkit::batch::{one_second_batch, reading};

const T0: i64 = 1_740_787_200_000;

fn batch(device: &str, ts: i64, points: &[(&Arc<str>, &Arc<str>, f64)]) -> ReadingBatch {
    let readings = points
        .iter()
        .map(|&(p, u, v)| {
            reading(
                p.clone(),
                Some(Value::Float(v)),
                u.clone(),
                Quality::Good,
                ts,
            )
        })
        .collect();
    one_second_batch("potline1", device, ts, readings)
}

fn potline(c: &mut Criterion) {
    let (ka, v, none) = (Arc::from("kA"), Arc::from("V"), Arc::from(""));
    let current: Arc<str> = Arc::from("line_current_ka");
    let voltage: Arc<str> = Arc::from("cell_voltage_v");
    let status: Vec<Arc<str>> = ["in_service", "cut_out", "feeding", "beam_mm"]
        .iter()
        .map(|s| Arc::from(*s))
        .collect();
    // One minute of the line: per second the rectifier and 300 pots, one batch each.
    let mut minute = Vec::new();
    for s in 0..60 {
        let ts = T0 + s * 1000;
        minute.push(batch("rectifier", ts, &[(&current, &ka, 400.0)]));
        for p in 0..300 {
            let mut points = vec![(&voltage, &v, 4.1 + (p % 7) as f64 * 0.01)];
            points.extend(status.iter().map(|s| (s, &none, 1.0)));
            minute.push(batch(&format!("pot_{p:03}"), ts, &points));
        }
    }
    let readings: usize = minute.iter().map(|b| b.readings.len()).sum();
    let mut g = c.benchmark_group("series");
    g.throughput(Throughput::Elements(readings as u64));
    g.bench_function("potline_300_cells_one_minute", |b| {
        let store = SeriesStore::default();
        b.iter(|| {
            // Each iteration is the next minute, so buckets keep closing as in a run (the shift
            // is one addition per reading).
            for b in &mut minute {
                for r in &mut b.readings {
                    r.ts = Timestamp(r.ts.0 + 60_000);
                }
            }
            for chunk in minute.chunks(32) {
                store.record_batches(black_box(chunk));
            }
        });
    });
    g.finish();
}

fn nothing_kept(c: &mut Criterion) {
    let unit: Arc<str> = Arc::from("");
    let names: Vec<Arc<str>> = (0..100).map(|i| Arc::from(format!("r{i:03}"))).collect();
    let batches: Vec<ReadingBatch> = (0..1000)
        .map(|d| {
            let points: Vec<(&Arc<str>, &Arc<str>, f64)> =
                names.iter().map(|n| (n, &unit, 1.0)).collect();
            batch(&format!("dev{d:04}"), T0, &points)
        })
        .collect();
    let mut g = c.benchmark_group("series");
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("1000x100_nothing_kept", |b| {
        let store = SeriesStore::default();
        b.iter(|| {
            for chunk in batches.chunks(32) {
                store.record_batches(black_box(chunk));
            }
        });
    });
    g.finish();
}

criterion_group!(benches, potline, nothing_kept);
criterion_main!(benches);
