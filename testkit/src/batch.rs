//! Poll batches built by hand, for the tests and benches that feed a consumer of batches (the
//! derived engine, the series store) without a poller.

use std::sync::Arc;

use smeltwatch::model::{Quality, Reading, ReadingBatch, Timestamp, Value};

/// A reading of `point` in `unit`: `value` with `quality`, read at `ts` (ms).
pub fn reading(
    point: impl Into<Arc<str>>,
    value: Option<Value>,
    unit: impl Into<Arc<str>>,
    quality: Quality,
    ts: i64,
) -> Reading {
    Reading {
        point: point.into(),
        value,
        unit: unit.into(),
        quality,
        ts: Timestamp(ts),
    }
}

/// The batch of a 1 s poll of `source`/`device` (unit 1) scheduled at `ts` (ms).
pub fn one_second_batch(
    source: &str,
    device: &str,
    ts: i64,
    readings: Vec<Reading>,
) -> ReadingBatch {
    ReadingBatch {
        source: Arc::from(source),
        device: Arc::from(device),
        unit_id: 1,
        poll_interval_ms: 1000,
        scheduled: Timestamp(ts),
        readings,
    }
}
