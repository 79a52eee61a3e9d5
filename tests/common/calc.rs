//! Timestamped readings and poll batches for driving the calculators directly.

use std::sync::Arc;

use smeltwatch::model::{Quality, Reading, ReadingBatch, Timestamp, Value};

/// A good reading of `point` at `ts` (ms), with no declared unit.
pub fn reading(point: &str, value: Value, ts: i64) -> Reading {
    Reading {
        point: Arc::from(point),
        value: Some(value),
        unit: Arc::from(""),
        quality: Quality::Good,
        ts: Timestamp(ts),
    }
}

/// A poll batch of `source/device`, scheduled at its first reading's time.
pub fn batch(source: &str, device: &str, interval_ms: u64, readings: Vec<Reading>) -> ReadingBatch {
    let ts = readings.first().map_or(Timestamp(0), |r| r.ts);
    ReadingBatch {
        source: Arc::from(source),
        device: Arc::from(device),
        unit_id: 1,
        poll_interval_ms: interval_ms,
        scheduled: ts,
        readings,
    }
}

/// Assert that `actual` is within `tol` of `expected`, saying what was compared.
pub fn close(actual: f64, expected: f64, tol: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: {actual} is not within {tol} of {expected}"
    );
}
