//! Spool throughput: batched appends (FULL and NORMAL), reads of 500, batched acks.
//!
//! Records carry 256-byte bodies. Figures are records per second. Each durable commit costs one
//! fsync, so on SD cards and eMMC the batch size matters far more than on a VM disk.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use smeltwatch::config::{SpoolConfig, Stream};
use smeltwatch::model::Timestamp;
use smeltwatch::spool::{NewRecord, Spool};

const BODY_BYTES: usize = 256;

fn batch(n: usize) -> Vec<NewRecord> {
    (0..n)
        .map(|i| NewRecord {
            stream: if i % 10 == 0 {
                Stream::Metrics
            } else {
                Stream::Live
            },
            topic: "smeltwatch/site/live/potline1/pcu017".to_owned(),
            body: vec![(i % 251) as u8; BODY_BYTES],
            created: Timestamp(1_764_300_253_000 + i as i64),
        })
        .collect()
}

fn open(dir: &tempfile::TempDir, synchronous_full: bool) -> Spool {
    let cfg = SpoolConfig {
        max_bytes: u64::MAX,
        max_age: None,
        synchronous_full,
    };
    Spool::open(&dir.path().join("bench.db"), &cfg).expect("open the bench spool")
}

fn mode(full: bool) -> &'static str {
    if full { "full" } else { "normal" }
}

/// Benchmarks group `name` per synchronous mode and batch size: each iteration appends and acks
/// one batch, and `step` returns the part of that it times.
fn append_then_ack(c: &mut Criterion, name: &str, step: fn(&mut Spool, usize) -> Duration) {
    let mut group = c.benchmark_group(name);
    for full in [true, false] {
        for size in [100usize, 1000] {
            group.throughput(Throughput::Elements(size as u64));
            group.bench_function(BenchmarkId::new(mode(full), size), |b| {
                let dir = tempfile::TempDir::new().expect("temp dir");
                let mut spool = open(&dir, full);
                b.iter_custom(|iters| (0..iters).map(|_| step(&mut spool, size)).sum());
            });
        }
    }
    group.finish();
}

fn append(c: &mut Criterion) {
    append_then_ack(c, "spool_append", |spool, size| {
        let records = batch(size);
        let start = Instant::now();
        let appended = spool.append(records).expect("append");
        let spent = start.elapsed();
        // Keep the file small so every iteration measures the same thing; the ack is not timed.
        let ids: Vec<i64> = appended.iter().map(|a| a.id).collect();
        spool.ack(&ids).expect("ack");
        spent
    });
}

fn read_after(c: &mut Criterion) {
    let mut group = c.benchmark_group("spool_read_after");
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut spool = open(&dir, false);
    for _ in 0..20 {
        spool.append(batch(1000)).expect("prefill");
    }
    let last = spool.last_id().expect("last id");
    group.throughput(Throughput::Elements(500));
    group.bench_function("500", |b| {
        let mut cursor = 0;
        b.iter(|| {
            let records = spool.read_after(cursor, 500).expect("read");
            cursor = if cursor + 1000 >= last {
                0
            } else {
                cursor + 500
            };
            black_box(records)
        });
    });
    group.finish();
}

fn ack(c: &mut Criterion) {
    append_then_ack(c, "spool_ack", |spool, size| {
        let appended = spool.append(batch(size)).expect("append");
        let ids: Vec<i64> = appended.iter().map(|a| a.id).collect();
        let start = Instant::now();
        let removed = spool.ack(&ids).expect("ack");
        let spent = start.elapsed();
        assert_eq!(removed, size as u64);
        spent
    });
}

criterion_group!(benches, append, read_after, ack);
criterion_main!(benches);
