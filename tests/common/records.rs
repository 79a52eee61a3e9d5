//! Records the pipeline would have produced, for tests that feed a store, a spool or an uplink
//! directly.

use smeltwatch::codec::topic::topic_for;
use smeltwatch::config::{Stream, TopicTemplates};
use std::sync::Arc;

use smeltwatch::model::{
    Aggregate, Event, EventPhase, Period, Quality, ReadingBatch, Record, Timestamp, Value,
};
use smeltwatch::spool::NewRecord;
use smeltwatch_testkit::batch::{one_second_batch, reading as testkit_reading};

/// The live batch of the docs' examples (also pinned by the JSON encoder's own golden test):
/// `potline1/pot_003` at 2025-11-28T03:24:13Z with a float, a 64-bit counter and a failed read.
pub fn documented_live_batch() -> ReadingBatch {
    const T0: i64 = 1_764_300_253_000;
    let reading = |point: &str, value, unit: &str, quality, at| {
        testkit_reading(point, value, unit, quality, T0 + at)
    };
    let readings = vec![
        reading(
            "cell_voltage_v",
            Some(Value::Float(4.061)),
            "V",
            Quality::Good,
            123,
        ),
        reading(
            "energy_kwh",
            Some(Value::UInt(18_446_744_073_709_551_000)),
            "kWh",
            Quality::Good,
            123,
        ),
        reading("anode_current_ka", None, "kA", Quality::CommFail, 310),
    ];
    ReadingBatch {
        unit_id: 12,
        ..one_second_batch("potline1", "pot_003", T0, readings)
    }
}

/// The end of an anode effect on `potline1/pot_017`, 42 s after the docs' live batch was
/// scheduled, with `attributes` and `message`.
pub fn pot_017_anode_effect_end(attributes: Vec<(Arc<str>, Value)>, message: &str) -> Event {
    Event {
        kind: "anode_effect".into(),
        subject: "potline1/pot_017".into(),
        phase: EventPhase::End,
        ts: Timestamp(1_764_300_253_000 + 42_000),
        attributes,
        message: message.into(),
    }
}

/// A valid, good aggregate of `quantity` (in mg/m3) of stack `gtc1_stack` over the `period`
/// from `start_ms` to `end_ms`: mean `avg`, minimum and maximum `spread` below and above it, 60
/// of 60 samples, no total. Tests set what they are about with struct update syntax.
pub fn stack_aggregate(
    quantity: &str,
    period: Period,
    start_ms: i64,
    end_ms: i64,
    avg: f64,
    spread: f64,
) -> Aggregate {
    Aggregate {
        subject: "gtc1_stack".into(),
        quantity: quantity.into(),
        unit: "mg/m3".into(),
        period,
        start: Timestamp(start_ms),
        end: Timestamp(end_ms),
        avg: Some(avg),
        min: Some(avg - spread),
        max: Some(avg + spread),
        total: None,
        total_unit: None,
        samples: 60,
        expected: 60,
        valid: true,
        quality: Quality::Good,
        substituted: 0,
    }
}

/// `record` of site `site` as queued on `stream` now: its topic after the default templates, its
/// JSON as the body.
pub fn queued(stream: Stream, site: &str, record: &Record) -> NewRecord {
    NewRecord {
        stream,
        topic: topic_for(&TopicTemplates::default(), site, record),
        body: serde_json::to_vec(record).expect("a record serialises"),
        created: Timestamp::now(),
    }
}
