//! The protobuf payload encoder: schema `smeltwatch.v1` (`proto/smeltwatch/v1/smeltwatch.proto`).
//!
//! Every payload is one [`pb::Envelope`]: `site`, `stream`, `seq`, `historical` and a `body` oneof
//! holding the record ([`pb::ReadingBatch`], [`pb::MetricBatch`], [`pb::Event`] or
//! [`pb::Aggregate`]). A consumer decodes every smeltwatch topic with the one message type.
//!
//! Invariants:
//! - field numbers and enum values are stable (the `.proto` says so and the golden files in
//!   `tests/testdata/protobuf/` pin the bytes);
//! - timestamps are Unix milliseconds (`*_ms`), exactly the record's [`Timestamp`]s;
//! - a missing value stays missing (`value` absent, never 0); integers keep their signedness
//!   (`sint64` / `uint64`), floats are `double`, NaN and infinities pass through unchanged;
//! - [`decode_record`] inverts [`encode_record`]: decoding an encoded record gives it back.
//!
//! The encoder is pure: the same arguments always give the same bytes.

use std::sync::Arc;

use prost::Message;

use crate::codec::Envelope;
use crate::config::Stream;
use crate::model::{
    Aggregate, Event, EventKind, EventPhase, Metric, MetricBatch, Period, Quality, Reading,
    ReadingBatch, Record, Timestamp, Value,
};

/// The prost types generated from `proto/smeltwatch/v1/smeltwatch.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/smeltwatch.v1.rs"));
}

/// A protobuf payload that is not a valid `smeltwatch.v1.Envelope`.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a protobuf message of this schema.
    #[error("not a smeltwatch.v1.Envelope: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The envelope has no body.
    #[error("envelope without a body")]
    NoBody,
    /// An enum field holds a value this build does not know.
    #[error("unknown {field} value {value}")]
    UnknownEnum {
        /// The field.
        field: &'static str,
        /// The number found.
        value: i32,
    },
    /// A field is out of the range the model allows.
    #[error("{field} out of range: {value}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
}

/// A decoded envelope: the header and the record.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Site identifier.
    pub site: String,
    /// The stream.
    pub stream: Stream,
    /// Sequence number within `(site, stream)`.
    pub seq: u64,
    /// Whether the record was replayed after an outage.
    pub historical: bool,
    /// The record.
    pub record: Record,
}

/// Encode one spooled record as a `smeltwatch.v1.Envelope`.
///
/// Same signature and meaning as [`super::json::encode_record`].
pub fn encode_record(envelope: Envelope<'_>, record: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record_to(envelope, record, &mut out);
    out
}

/// [`encode_record`], appending the envelope to `out`.
///
/// A poll batch, the bulk of the traffic, is written straight from the borrowed record
/// ([`batch_wire`]); other records go through the prost messages. Both give the bytes prost writes
/// for [`envelope`] (a unit test holds the batch writer to that).
pub fn encode_record_to(envelope: Envelope<'_>, record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::Batch(b) => batch_wire::envelope(envelope, b, out),
        _ => self::envelope(envelope, record)
            .encode(out)
            .expect("a Vec grows as needed"),
    }
}

/// The envelope message of a record (for callers that want the message rather than bytes).
pub fn envelope(envelope: Envelope<'_>, record: &Record) -> pb::Envelope {
    use pb::envelope::Body;
    let body = match record {
        Record::Batch(b) => Body::Batch(batch(b)),
        Record::Metrics(m) => Body::Metrics(metric_batch(m)),
        Record::Event(e) => Body::Event(event(e)),
        Record::Aggregate(a) => Body::Aggregate(aggregate(a)),
    };
    pb::Envelope {
        site: envelope.site.to_owned(),
        stream: stream_pb(envelope.stream) as i32,
        seq: envelope.seq,
        historical: envelope.historical,
        body: Some(body),
        ledger: None,
    }
}

/// Decode a payload made by [`encode_record`].
pub fn decode_record(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    use pb::envelope::Body;
    let env = pb::Envelope::decode(bytes)?;
    let stream = match pb::Stream::try_from(env.stream) {
        Ok(pb::Stream::Live) => Stream::Live,
        Ok(pb::Stream::Metrics) => Stream::Metrics,
        Ok(pb::Stream::Events) => Stream::Events,
        Ok(pb::Stream::Emissions) => Stream::Emissions,
        _ => {
            return Err(DecodeError::UnknownEnum {
                field: "stream",
                value: env.stream,
            });
        }
    };
    let record = match env.body.ok_or(DecodeError::NoBody)? {
        Body::Batch(b) => Record::Batch(batch_from(b)?),
        Body::Metrics(m) => Record::Metrics(metric_batch_from(m)?),
        Body::Event(e) => Record::Event(event_from(e)?),
        Body::Aggregate(a) => Record::Aggregate(aggregate_from(a)?),
    };
    Ok(Decoded {
        site: env.site,
        stream,
        seq: env.seq,
        historical: env.historical,
        record,
    })
}

fn stream_pb(s: Stream) -> pb::Stream {
    match s {
        Stream::Live => pb::Stream::Live,
        Stream::Metrics => pb::Stream::Metrics,
        Stream::Events => pb::Stream::Events,
        Stream::Emissions => pb::Stream::Emissions,
    }
}

/// The schema's quality number: declaration order of [`Quality`], from 1 (0 is unspecified).
pub fn quality_pb(q: Quality) -> pb::Quality {
    match q {
        Quality::Good => pb::Quality::Good,
        Quality::CommFail => pb::Quality::CommFail,
        Quality::DeviceException => pb::Quality::DeviceException,
        Quality::OutOfRange => pb::Quality::OutOfRange,
        Quality::Stale => pb::Quality::Stale,
        Quality::Substituted => pb::Quality::Substituted,
        Quality::Maintenance => pb::Quality::Maintenance,
        Quality::Calibration => pb::Quality::Calibration,
    }
}

fn quality_from(v: i32) -> Result<Quality, DecodeError> {
    usize::try_from(v - 1)
        .ok()
        .and_then(|i| Quality::ALL.get(i).copied())
        .ok_or(DecodeError::UnknownEnum {
            field: "quality",
            value: v,
        })
}

fn value_pb(v: &Value) -> pb::Value {
    use pb::value::Kind;
    let kind = match v {
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Int(i) => Kind::IntValue(*i),
        Value::UInt(u) => Kind::UintValue(*u),
        Value::Float(f) => Kind::FloatValue(*f),
        Value::Text(t) => Kind::TextValue(t.clone()),
    };
    pb::Value { kind: Some(kind) }
}

fn value_from(v: pb::Value) -> Option<Value> {
    use pb::value::Kind;
    Some(match v.kind? {
        Kind::BoolValue(b) => Value::Bool(b),
        Kind::IntValue(i) => Value::Int(i),
        Kind::UintValue(u) => Value::UInt(u),
        Kind::FloatValue(f) => Value::Float(f),
        Kind::TextValue(t) => Value::Text(t),
    })
}

fn batch(b: &ReadingBatch) -> pb::ReadingBatch {
    pb::ReadingBatch {
        source: b.source.to_string(),
        device: b.device.to_string(),
        unit_id: u32::from(b.unit_id),
        poll_interval_ms: b.poll_interval_ms,
        scheduled_ms: b.scheduled.unix_ms(),
        readings: b.readings.iter().map(reading).collect(),
    }
}

fn reading(r: &Reading) -> pb::Reading {
    pb::Reading {
        point: r.point.to_string(),
        value: r.value.as_ref().map(value_pb),
        unit: r.unit.to_string(),
        quality: quality_pb(r.quality) as i32,
        ts_ms: r.ts.unix_ms(),
    }
}

fn batch_from(b: pb::ReadingBatch) -> Result<ReadingBatch, DecodeError> {
    Ok(ReadingBatch {
        source: b.source.into(),
        device: b.device.into(),
        unit_id: u8::try_from(b.unit_id).map_err(|_| DecodeError::OutOfRange {
            field: "unit_id",
            value: u64::from(b.unit_id),
        })?,
        poll_interval_ms: b.poll_interval_ms,
        scheduled: Timestamp(b.scheduled_ms),
        readings: b
            .readings
            .into_iter()
            .map(|r| {
                Ok(Reading {
                    point: r.point.into(),
                    value: r.value.and_then(value_from),
                    unit: r.unit.into(),
                    quality: quality_from(r.quality)?,
                    ts: Timestamp(r.ts_ms),
                })
            })
            .collect::<Result<_, DecodeError>>()?,
    })
}

fn labels(l: &[(Arc<str>, Arc<str>)]) -> Vec<pb::Label> {
    l.iter()
        .map(|(k, v)| pb::Label {
            key: k.to_string(),
            value: v.to_string(),
        })
        .collect()
}

fn metric_batch(m: &MetricBatch) -> pb::MetricBatch {
    pb::MetricBatch {
        calc: m.calc.to_string(),
        ts_ms: m.ts.unix_ms(),
        metrics: m
            .metrics
            .iter()
            .map(|x: &Metric| pb::Metric {
                name: x.name.to_string(),
                value: x.value,
                unit: x.unit.to_string(),
                quality: quality_pb(x.quality) as i32,
                ts_ms: x.ts.unix_ms(),
                labels: labels(&x.labels),
            })
            .collect(),
    }
}

fn metric_batch_from(m: pb::MetricBatch) -> Result<MetricBatch, DecodeError> {
    Ok(MetricBatch {
        calc: m.calc.into(),
        ts: Timestamp(m.ts_ms),
        metrics: m
            .metrics
            .into_iter()
            .map(|x| {
                Ok(Metric {
                    name: x.name.into(),
                    value: x.value,
                    unit: x.unit.into(),
                    quality: quality_from(x.quality)?,
                    ts: Timestamp(x.ts_ms),
                    labels: x
                        .labels
                        .into_iter()
                        .map(|l| (l.key.into(), l.value.into()))
                        .collect(),
                })
            })
            .collect::<Result<_, DecodeError>>()?,
    })
}

fn event(e: &Event) -> pb::Event {
    pb::Event {
        kind: e.kind.as_str().to_owned(),
        subject: e.subject.to_string(),
        phase: match e.phase {
            EventPhase::Start => pb::EventPhase::Start,
            EventPhase::End => pb::EventPhase::End,
            EventPhase::Instant => pb::EventPhase::Instant,
        } as i32,
        ts_ms: e.ts.unix_ms(),
        attributes: e
            .attributes
            .iter()
            .map(|(k, v)| pb::Attribute {
                key: k.to_string(),
                value: Some(value_pb(v)),
            })
            .collect(),
        message: e.message.clone(),
    }
}

fn event_from(e: pb::Event) -> Result<Event, DecodeError> {
    let phase = match pb::EventPhase::try_from(e.phase) {
        Ok(pb::EventPhase::Start) => EventPhase::Start,
        Ok(pb::EventPhase::End) => EventPhase::End,
        Ok(pb::EventPhase::Instant) => EventPhase::Instant,
        _ => {
            return Err(DecodeError::UnknownEnum {
                field: "phase",
                value: e.phase,
            });
        }
    };
    Ok(Event {
        kind: EventKind::from_name(&e.kind),
        subject: e.subject.into(),
        phase,
        ts: Timestamp(e.ts_ms),
        attributes: e
            .attributes
            .into_iter()
            .filter_map(|a| Some((a.key.into(), value_from(a.value?)?)))
            .collect(),
        message: e.message,
    })
}

fn aggregate(a: &Aggregate) -> pb::Aggregate {
    pb::Aggregate {
        subject: a.subject.to_string(),
        quantity: a.quantity.to_string(),
        unit: a.unit.to_string(),
        period: match a.period {
            Period::Minute => pb::Period::Minute,
            Period::Hour => pb::Period::Hour,
            Period::Day => pb::Period::Day,
            Period::Month => pb::Period::Month,
        } as i32,
        start_ms: a.start.unix_ms(),
        end_ms: a.end.unix_ms(),
        avg: a.avg,
        min: a.min,
        max: a.max,
        total: a.total,
        total_unit: a.total_unit.as_ref().map(|u| u.to_string()),
        samples: a.samples,
        expected: a.expected,
        valid: a.valid,
        quality: quality_pb(a.quality) as i32,
        substituted: a.substituted,
    }
}

fn aggregate_from(a: pb::Aggregate) -> Result<Aggregate, DecodeError> {
    let period = match pb::Period::try_from(a.period) {
        Ok(pb::Period::Minute) => Period::Minute,
        Ok(pb::Period::Hour) => Period::Hour,
        Ok(pb::Period::Day) => Period::Day,
        Ok(pb::Period::Month) => Period::Month,
        _ => {
            return Err(DecodeError::UnknownEnum {
                field: "period",
                value: a.period,
            });
        }
    };
    Ok(Aggregate {
        subject: a.subject.into(),
        quantity: a.quantity.into(),
        unit: a.unit.into(),
        period,
        start: Timestamp(a.start_ms),
        end: Timestamp(a.end_ms),
        avg: a.avg,
        min: a.min,
        max: a.max,
        total: a.total,
        total_unit: a.total_unit.map(Into::into),
        samples: a.samples,
        expected: a.expected,
        valid: a.valid,
        quality: quality_from(a.quality)?,
        substituted: a.substituted,
    })
}

/// The wire form of an envelope holding a [`ReadingBatch`], written from the borrowed batch with
/// prost's encoding primitives: prost's own encoder needs the owned [`pb`] messages, i.e. two
/// `String`s and a `pb::Value` per reading, built and dropped for every batch. Fields are written
/// as prost writes them: in field-number order, proto3 defaults (empty strings, zeros, `false`)
/// left out, a present `value` and its `kind` always written.
mod batch_wire {
    use prost::encoding::{WireType, encoded_len_varint, key_len};

    use super::{quality_pb, stream_pb};
    use crate::codec::Envelope;
    use crate::model::{Quality, Reading, ReadingBatch, Timestamp, Value};

    /// `Envelope.body` oneof: `batch`.
    const ENVELOPE_BATCH: u32 = 10;

    fn delimited_len(tag: u32, len: usize) -> usize {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }

    /// A varint, byte by byte with `Vec::push` (the buffer was reserved for the whole envelope).
    /// prost's `encode_varint` writes each byte as a one-byte slice through `BufMut`: with it,
    /// writing the spool body took about a fifth of the agent's instructions at 20 devices × 100
    /// registers (docs/PERFORMANCE.md, "the spool body's writer").
    fn encode_varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn encode_key(tag: u32, wire_type: WireType, out: &mut Vec<u8>) {
        encode_varint(u64::from(tag << 3 | wire_type as u32), out);
    }

    fn put_delimiter(tag: u32, len: usize, out: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(len as u64, out);
    }

    fn put_str(tag: u32, s: &str, out: &mut Vec<u8>) {
        if !s.is_empty() {
            put_delimiter(tag, s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
    }

    fn put_varint(tag: u32, v: u64, out: &mut Vec<u8>) {
        if v != 0 {
            encode_key(tag, WireType::Varint, out);
            encode_varint(v, out);
        }
    }

    /// `sint64`'s ZigZag form.
    fn zigzag(i: i64) -> u64 {
        ((i << 1) ^ (i >> 63)) as u64
    }

    /// `int32`/`int64` fields are varints of the value sign-extended to 64 bits.
    fn int(i: i64) -> u64 {
        i as u64
    }

    /// Length of a `Value` message (the `kind` oneof is always written when present).
    fn value_len(v: &Value) -> usize {
        match v {
            Value::Bool(_) => key_len(1) + 1,
            Value::Int(i) => key_len(2) + encoded_len_varint(zigzag(*i)),
            Value::UInt(u) => key_len(3) + encoded_len_varint(*u),
            Value::Float(_) => key_len(4) + 8,
            Value::Text(t) => delimited_len(5, t.len()),
        }
    }

    fn put_value(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Bool(b) => {
                encode_key(1, WireType::Varint, out);
                encode_varint(u64::from(*b), out);
            }
            Value::Int(i) => {
                encode_key(2, WireType::Varint, out);
                encode_varint(zigzag(*i), out);
            }
            Value::UInt(u) => {
                encode_key(3, WireType::Varint, out);
                encode_varint(*u, out);
            }
            Value::Float(f) => {
                encode_key(4, WireType::SixtyFourBit, out);
                out.extend_from_slice(&f.to_le_bytes());
            }
            Value::Text(t) => {
                put_delimiter(5, t.len(), out);
                out.extend_from_slice(t.as_bytes());
            }
        }
    }

    fn quality(r: &Reading) -> u64 {
        int(i64::from(quality_pb(r.quality) as i32))
    }

    /// The fields of a reading after its value (unit, quality, timestamp), kept for the next
    /// reading: the readings of one request share them, so a batch of a hundred encodes a
    /// handful of tails (the timestamp is a six-byte varint) instead of one per reading.
    #[derive(Default)]
    struct Tail<'r> {
        key: Option<(&'r str, Quality, Timestamp)>,
        bytes: Vec<u8>,
    }

    impl<'r> Tail<'r> {
        fn of(&mut self, r: &'r Reading) -> &[u8] {
            let key = (&*r.unit, r.quality, r.ts);
            if self.key != Some(key) {
                self.bytes.clear();
                put_str(3, &r.unit, &mut self.bytes);
                put_varint(4, quality(r), &mut self.bytes);
                put_varint(5, int(r.ts.unix_ms()), &mut self.bytes);
                self.key = Some(key);
            }
            &self.bytes
        }
    }

    fn put_reading<'r>(r: &'r Reading, tail: &mut Tail<'r>, out: &mut Vec<u8>) {
        put_str(1, &r.point, out);
        if let Some(v) = &r.value {
            put_delimiter(2, value_len(v), out);
            put_value(v, out);
        }
        out.extend_from_slice(tail.of(r));
    }

    /// Write what `body` appends to `out` as a length-delimited field `tag`, its length learnt
    /// by writing it: one byte is kept for the length (a reading is shorter than 128 bytes unless
    /// it holds a long name, unit or text) and the body moved on when it needs more. Each
    /// message is written once instead of measured first and written after.
    fn put_delimited(tag: u32, out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
        encode_key(tag, WireType::LengthDelimited, out);
        let at = out.len();
        out.push(0);
        body(out);
        let len = out.len() - at - 1;
        if len < 0x80 {
            out[at] = len as u8;
        } else {
            // The varint on the stack: this happens once per batch at least (its own length).
            let mut prefix = [0u8; 10];
            let (mut v, mut n) = (len as u64, 0);
            while v >= 0x80 {
                prefix[n] = (v as u8) | 0x80;
                v >>= 7;
                n += 1;
            }
            prefix[n] = v as u8;
            out.splice(at..=at, prefix[..=n].iter().copied());
        }
    }

    /// Append the envelope `{site, stream, seq, historical, batch}` to `out`.
    pub(super) fn envelope(envelope: Envelope<'_>, b: &ReadingBatch, out: &mut Vec<u8>) {
        // About 25 bytes per reading with a short name and an integer value.
        out.reserve(
            envelope.site.len() + b.source.len() + b.device.len() + 48 + 32 * b.readings.len(),
        );
        put_str(1, envelope.site, out);
        put_varint(2, int(i64::from(stream_pb(envelope.stream) as i32)), out);
        put_varint(3, envelope.seq, out);
        put_varint(4, u64::from(envelope.historical), out);
        put_delimited(ENVELOPE_BATCH, out, |out| {
            put_str(1, &b.source, out);
            put_str(2, &b.device, out);
            put_varint(3, u64::from(b.unit_id), out);
            put_varint(4, b.poll_interval_ms, out);
            put_varint(5, int(b.scheduled.unix_ms()), out);
            let mut tail = Tail::default();
            for r in &b.readings {
                put_delimited(6, out, |out| put_reading(r, &mut tail, out));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_fixtures::{any_value, one_reading};
    use proptest::prelude::*;

    fn any_batch() -> impl Strategy<Value = ReadingBatch> {
        let reading = (
            prop_oneof!["[a-z_0-9]{0,12}", "[a-z_0-9]{100,200}"],
            // Long texts make readings of 128 bytes and more, whose length takes two bytes or
            // three.
            any_value(prop_oneof![".{0,20}", ".{120,400}"]),
            "(|V|kA|mg/m3|°C)",
            0..Quality::ALL.len(),
            // Often the same instant, so that neighbours share a tail and differ in the rest.
            prop_oneof![Just(1_764_300_253_123_i64), any::<i64>()],
        )
            .prop_map(|(point, value, unit, q, ts)| Reading {
                point: point.into(),
                value,
                unit: unit.into(),
                quality: Quality::ALL[q],
                ts: Timestamp(ts),
            });
        (
            "[a-z0-9]{0,8}",
            "[a-z_0-9]{0,8}",
            any::<u8>(),
            any::<u64>(),
            any::<i64>(),
            proptest::collection::vec(reading, 0..40),
        )
            .prop_map(
                |(source, device, unit_id, poll_interval_ms, scheduled, readings)| ReadingBatch {
                    source: source.into(),
                    device: device.into(),
                    unit_id,
                    poll_interval_ms,
                    scheduled: Timestamp(scheduled),
                    readings,
                },
            )
    }

    proptest! {
        /// The borrowed batch writer gives exactly prost's bytes for the same envelope, and they
        /// decode back to the batch (bit for bit: NaN payloads too).
        #[test]
        fn batch_writer_matches_prost(
            batch in any_batch(),
            site in "[a-z0-9-]{0,10}",
            seq in any::<u64>(),
            historical in any::<bool>(),
            stream in 0..4usize,
        ) {
            let stream = [Stream::Live, Stream::Metrics, Stream::Events, Stream::Emissions][stream];
            let record = Record::Batch(batch);
            let head = Envelope::new(&site, stream, seq, historical);
            let ours = encode_record(head, &record);
            let prost = envelope(head, &record).encode_to_vec();
            prop_assert_eq!(&ours, &prost);
            let back = decode_record(&ours).unwrap();
            let (Record::Batch(a), Record::Batch(b)) = (&back.record, &record) else {
                panic!("not a batch");
            };
            prop_assert_eq!(a.readings.len(), b.readings.len());
            for (x, y) in a.readings.iter().zip(&b.readings) {
                let bits = |v: &Option<Value>| match v {
                    Some(Value::Float(f)) => Some(f.to_bits()),
                    _ => None,
                };
                prop_assert_eq!(bits(&x.value), bits(&y.value));
            }
        }
    }

    #[test]
    fn quality_numbers_follow_declaration_order_from_one() {
        for (i, q) in Quality::ALL.iter().enumerate() {
            assert_eq!(quality_pb(*q) as i32, i as i32 + 1);
            assert_eq!(quality_from(i as i32 + 1).unwrap(), *q);
        }
        assert!(quality_from(0).is_err());
        assert!(quality_from(9).is_err());
    }

    #[test]
    fn a_missing_value_stays_missing_and_is_not_zero() {
        let r = one_reading(None, "V", Quality::CommFail, 5);
        let head = Envelope::new("x", Stream::Live, 1, false);
        let env = envelope(head, &r);
        let Some(pb::envelope::Body::Batch(b)) = env.body else {
            panic!("not a batch")
        };
        assert!(b.readings[0].value.is_none());
        let back = decode_record(&encode_record(head, &r)).unwrap();
        assert_eq!(back.record, r);
    }

    #[test]
    fn garbage_and_bodiless_envelopes_are_refused() {
        assert!(decode_record(&[0xff, 0xff, 0xff]).is_err());
        let empty = pb::Envelope {
            site: "s".into(),
            stream: 1,
            seq: 1,
            historical: false,
            body: None,
            ledger: None,
        }
        .encode_to_vec();
        assert!(matches!(decode_record(&empty), Err(DecodeError::NoBody)));
    }
}
