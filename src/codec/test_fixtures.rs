//! Fixtures shared by the unit tests of the codec module.

use proptest::prelude::*;

use crate::model::{Quality, Reading, ReadingBatch, Record, Timestamp, Value};

/// Any reading value, or none: every kind; floats both of any bit pattern (NaNs, infinities,
/// -0.0, subnormals) and as proptest draws them; texts from `text`.
pub(crate) fn any_value(
    text: impl Strategy<Value = String> + 'static,
) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        any::<bool>().prop_map(|b| Some(Value::Bool(b))),
        any::<i64>().prop_map(|i| Some(Value::Int(i))),
        any::<u64>().prop_map(|u| Some(Value::UInt(u))),
        any::<u64>().prop_map(|bits| Some(Value::Float(f64::from_bits(bits)))),
        any::<f64>().prop_map(|f| Some(Value::Float(f))),
        text.prop_map(|t| Some(Value::Text(t))),
    ]
}

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
