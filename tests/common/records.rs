//! Records the pipeline would have produced, for tests that feed a store, a spool or an uplink
//! directly.

use smeltwatch::codec::topic::topic_for;
use smeltwatch::config::{Stream, TopicTemplates};
use smeltwatch::model::{Aggregate, Period, Quality, Record, Timestamp};
use smeltwatch::spool::NewRecord;

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
