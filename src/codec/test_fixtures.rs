//! Fixtures shared by the unit tests of the codec module.

use crate::model::{Quality, Reading, ReadingBatch, Record, Timestamp, Value};

/// A batch of one reading, point `p` of device `d` on source `s` (unit 1, polled every second,
/// scheduled at 0): the smallest record that carries a value, a unit and a quality.
pub(crate) fn one_reading(value: Option<Value>, unit: &str, quality: Quality, ts: i64) -> Record {
    Record::Batch(ReadingBatch {
        source: "s".into(),
        device: "d".into(),
        unit_id: 1,
        poll_interval_ms: 1000,
        scheduled: Timestamp(0),
        readings: vec![Reading {
            point: "p".into(),
            value,
            unit: unit.into(),
            quality,
            ts: Timestamp(ts),
        }],
    })
}
