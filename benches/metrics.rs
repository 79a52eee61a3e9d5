//! One scrape of `/metrics` (`http::metrics::render`) for a plant of 20 devices × 100 points
//! (2,000 points, each a value, a quality and a timestamp series) and of 300 computed metrics
//! (a line's per-cell figures): the cost a Prometheus server polling every 15 s puts on the agent.
//!
//! Run: `cargo bench --bench metrics -- --warm-up-time 1 --measurement-time 3`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use smeltwatch::http::Snapshot;
use smeltwatch::http::metrics::render;
use smeltwatch::http::snapshot::{MetricView, PointView};
use smeltwatch::model::{Quality, Value};

const T0: i64 = 1_740_787_200_000;

fn snapshot(devices: usize, points: usize, cells: usize) -> Snapshot {
    let unit: Arc<str> = Arc::from("V");
    let points = (0..devices)
        .flat_map(|d| {
            let unit = unit.clone();
            let device: Arc<str> = Arc::from(format!("pot_{d:03}"));
            (0..points).map(move |p| PointView {
                device: device.clone(),
                point: Arc::from(format!("hr_{p:03}")),
                value: Some(Value::Float(4.0 + p as f64 / 1000.0)),
                unit: unit.clone(),
                quality: Quality::Good,
                ts_ms: T0 + p as i64,
            })
        })
        .collect();
    let metrics = (0..cells)
        .map(|c| MetricView {
            calc: Arc::from("potline"),
            name: Arc::from("cell_voltage_mean_v"),
            value: Some(4.1 + c as f64 / 1000.0),
            unit: unit.clone(),
            quality: Quality::Good,
            ts_ms: T0,
            labels: BTreeMap::from([
                (Arc::from("line"), Arc::from("potline1")),
                (Arc::from("cell"), Arc::from(format!("pot_{c:03}"))),
            ]),
        })
        .collect();
    Snapshot {
        ts_ms: T0,
        version: "bench",
        points,
        metrics,
        events: Vec::new(),
        event_counts: Vec::new(),
        feed_lagged: 0,
        sources: Vec::new(),
        uplinks: Vec::new(),
        stack_limits: Vec::new(),
    }
}

fn bench(c: &mut Criterion) {
    let snap = snapshot(20, 100, 300);
    let mut group = c.benchmark_group("metrics");
    group.throughput(Throughput::Elements(2_300));
    group.bench_function("render 2000 points + 300 metrics", |b| {
        b.iter(|| black_box(render(black_box(&snap))).len())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
