//! Encoding a 300-cell poll (one potline section: 300 cell voltages from one poll cycle) as JSON,
//! as protobuf (`smeltwatch.v1`) and as Sparkplug B (DDATA with every metric changed, and DBIRTH).
//!
//! Criterion reports points encoded per second (throughput in elements); the payload size per
//! point of each encoding is printed once before the measurements.
//!
//! Run: `cargo bench --bench encode`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use smeltwatch::codec::Envelope;
use smeltwatch::codec::sparkplug::{
    self as spb, DeviceModel, DeviceState, MetricModel, pb::DataType,
};
use smeltwatch::codec::{json, protobuf};
use smeltwatch::config::Stream;
use smeltwatch::model::{Quality, Reading, ReadingBatch, Record, Timestamp, Value};

const CELLS: usize = 300;
const T0: i64 = 1_764_300_253_000;

fn poll(cycle: i64) -> ReadingBatch {
    ReadingBatch {
        source: "potline1_gw".into(),
        device: "section_a".into(),
        unit_id: 1,
        poll_interval_ms: 1000,
        scheduled: Timestamp(T0 + cycle * 1000),
        readings: (0..CELLS)
            .map(|i| Reading {
                point: format!("pot_{i:03}_cell_voltage_v").into(),
                value: Some(Value::Float(4.0 + (i as f64 + cycle as f64) * 0.001)),
                unit: Arc::from("V"),
                quality: Quality::Good,
                ts: Timestamp(T0 + cycle * 1000 + 120),
            })
            .collect(),
    }
}

fn device() -> DeviceModel {
    DeviceModel::new(
        "section_a".into(),
        (0..CELLS)
            .map(|i| MetricModel {
                name: format!("pot_{i:03}_cell_voltage_v").into(),
                alias: i as u64 + 1,
                datatype: DataType::Float,
            })
            .collect(),
    )
}

fn bench(c: &mut Criterion) {
    let batch = poll(0);
    let next = poll(1);
    let record = Record::Batch(batch.clone());
    let dev = device();
    let mut base = DeviceState::new(CELLS);
    base.absorb(&dev, &batch);

    let envelope = Envelope::new("site", Stream::Live, 1, false);
    let json_len = json::encode_record(envelope, &record).len();
    let pb_len = protobuf::encode_record(envelope, &record).len();
    let ddata_len = {
        let mut st = base.clone();
        let changes = st.changes(&dev, &next);
        spb::encode(&spb::ddata(&dev, &changes, 1, Timestamp(T0), false)).len()
    };
    let dbirth_len = spb::encode(&spb::dbirth(&dev, base.current(), 1, Timestamp(T0))).len();
    for (name, len) in [
        ("json", json_len),
        ("protobuf", pb_len),
        ("sparkplug DDATA", ddata_len),
        ("sparkplug DBIRTH", dbirth_len),
    ] {
        println!(
            "{name:>17}: {len:>6} bytes per {CELLS}-cell poll, {:.1} bytes per point",
            len as f64 / CELLS as f64
        );
    }

    let mut g = c.benchmark_group("encode_300_cells");
    g.throughput(Throughput::Elements(CELLS as u64));
    g.bench_function("json", |b| {
        b.iter(|| json::encode_record(envelope, black_box(&record)))
    });
    g.bench_function("protobuf", |b| {
        b.iter(|| protobuf::encode_record(envelope, black_box(&record)))
    });
    g.bench_function("sparkplug_ddata_by_exception", |b| {
        b.iter(|| {
            let mut st = base.clone();
            let changes = st.changes(&dev, black_box(&next));
            spb::encode(&spb::ddata(&dev, &changes, 1, Timestamp(T0), false))
        })
    });
    g.bench_function("sparkplug_dbirth", |b| {
        b.iter(|| {
            spb::encode(&spb::dbirth(
                &dev,
                black_box(base.current()),
                1,
                Timestamp(T0),
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
