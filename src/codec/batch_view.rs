//! A live poll batch read in place from a binary spool body, for the uplink's replay.
//!
//! After an outage the uplink drains the backlog from the spool, and every record it publishes
//! was written as a binary body ([`crate::codec::body`]). Decoding one into a [`ReadingBatch`]
//! builds a hundred readings, each with its own strings, only to write them out again as JSON;
//! [`BatchView`] borrows the point names, units and device from the body instead, so a replayed
//! batch costs the JSON it becomes and one vector of views.
//!
//! The view reads exactly the shape the spool's encoder writes: an `Envelope` with `stream`
//! live and a `batch` body, each field at most once, no unknown field, no seal. Anything else
//! (another record kind, a sealed or JSON body, a body from a different writer) is `None`, and
//! the caller takes the general path through [`crate::codec::body::decode`], which also reports
//! what is wrong with a damaged body. Field numbers are those of
//! `proto/smeltwatch/v1/smeltwatch.proto`.
//!
//! [`ReadingBatch`]: crate::model::ReadingBatch

use prost::encoding::{WireType, decode_key, decode_varint};

use crate::model::{Quality, Timestamp, Value};

/// A live batch borrowed from a binary spool body.
#[derive(Debug, PartialEq)]
pub struct BatchView<'a> {
    /// The source that polled the device.
    pub source: &'a str,
    /// The device.
    pub device: &'a str,
    /// Modbus unit id.
    pub unit_id: u8,
    /// Poll interval of the batch's class, ms.
    pub poll_interval_ms: u64,
    /// The scheduled instant of the cycle.
    pub scheduled: Timestamp,
    /// The readings, in the body's order.
    pub readings: Vec<ReadingView<'a>>,
}

/// One reading of a [`BatchView`].
#[derive(Debug, PartialEq)]
pub struct ReadingView<'a> {
    /// Point name.
    pub point: &'a str,
    /// The value (a text value is the one thing copied).
    pub value: Option<Value>,
    /// Engineering unit.
    pub unit: &'a str,
    /// Quality code.
    pub quality: Quality,
    /// Acquisition time.
    pub ts: Timestamp,
}

/// `Envelope` fields.
const ENVELOPE_SITE: u32 = 1;
const ENVELOPE_STREAM: u32 = 2;
const ENVELOPE_SEQ: u32 = 3;
const ENVELOPE_HISTORICAL: u32 = 4;
const ENVELOPE_BATCH: u32 = 10;
/// `smeltwatch.v1.Stream.STREAM_LIVE`.
const STREAM_LIVE: u64 = 1;

impl<'a> BatchView<'a> {
    /// The batch of an encoded `Envelope` (a binary spool body without its form byte); `None`
    /// unless it is a live batch in the encoder's shape (see the module documentation).
    pub fn parse(envelope: &'a [u8]) -> Option<BatchView<'a>> {
        let mut buf = envelope;
        let mut seen = Seen::default();
        let mut stream = 0;
        let mut batch = None;
        while !buf.is_empty() {
            let (tag, wire) = decode_key(&mut buf).ok()?;
            seen.first(tag)?;
            match (tag, wire) {
                (ENVELOPE_SITE, WireType::LengthDelimited) => {
                    take_str(&mut buf)?;
                }
                (ENVELOPE_STREAM, WireType::Varint) => stream = decode_varint(&mut buf).ok()?,
                (ENVELOPE_SEQ | ENVELOPE_HISTORICAL, WireType::Varint) => {
                    decode_varint(&mut buf).ok()?;
                }
                (ENVELOPE_BATCH, WireType::LengthDelimited) => {
                    batch = Some(Self::parse_batch(take(&mut buf)?)?);
                }
                _ => return None,
            }
        }
        if stream != STREAM_LIVE {
            return None;
        }
        batch
    }

    fn parse_batch(mut buf: &'a [u8]) -> Option<BatchView<'a>> {
        let mut seen = Seen::default();
        let mut b = BatchView {
            source: "",
            device: "",
            unit_id: 0,
            poll_interval_ms: 0,
            scheduled: Timestamp(0),
            readings: Vec::with_capacity(128),
        };
        while !buf.is_empty() {
            let (tag, wire) = decode_key(&mut buf).ok()?;
            // Readings repeat; every other field appears once.
            if tag != 6 {
                seen.first(tag)?;
            }
            match (tag, wire) {
                (1, WireType::LengthDelimited) => b.source = take_str(&mut buf)?,
                (2, WireType::LengthDelimited) => b.device = take_str(&mut buf)?,
                (3, WireType::Varint) => {
                    b.unit_id = u8::try_from(decode_varint(&mut buf).ok()?).ok()?;
                }
                (4, WireType::Varint) => b.poll_interval_ms = decode_varint(&mut buf).ok()?,
                (5, WireType::Varint) => b.scheduled = Timestamp(int64(&mut buf)?),
                (6, WireType::LengthDelimited) => {
                    b.readings.push(ReadingView::parse(take(&mut buf)?)?);
                }
                _ => return None,
            }
        }
        Some(b)
    }

    /// Number of readings of each quality, indexed like [`Quality::ALL`].
    pub fn quality_counts(&self) -> [u64; Quality::ALL.len()] {
        let mut counts = [0; Quality::ALL.len()];
        for r in &self.readings {
            counts[r.quality as usize] += 1;
        }
        counts
    }
}

impl<'a> ReadingView<'a> {
    fn parse(mut buf: &'a [u8]) -> Option<ReadingView<'a>> {
        let mut seen = Seen::default();
        let mut r = ReadingView {
            point: "",
            value: None,
            unit: "",
            quality: Quality::Good,
            ts: Timestamp(0),
        };
        // Quality 0 is `QUALITY_UNSPECIFIED`, which no reading may carry.
        let mut quality = 0;
        while !buf.is_empty() {
            let (tag, wire) = decode_key(&mut buf).ok()?;
            seen.first(tag)?;
            match (tag, wire) {
                (1, WireType::LengthDelimited) => r.point = take_str(&mut buf)?,
                (2, WireType::LengthDelimited) => r.value = value(take(&mut buf)?)?,
                (3, WireType::LengthDelimited) => r.unit = take_str(&mut buf)?,
                (4, WireType::Varint) => quality = decode_varint(&mut buf).ok()?,
                (5, WireType::Varint) => r.ts = Timestamp(int64(&mut buf)?),
                _ => return None,
            }
        }
        r.quality = *Quality::ALL.get(usize::try_from(quality).ok()?.checked_sub(1)?)?;
        Some(r)
    }
}

/// A `Value` message: `Some(None)` for one without a kind, `None` when it is not in the
/// encoder's shape (more than one kind, an unknown field, bad UTF-8).
fn value(mut buf: &[u8]) -> Option<Option<Value>> {
    if buf.is_empty() {
        return Some(None);
    }
    let (tag, wire) = decode_key(&mut buf).ok()?;
    let v = match (tag, wire) {
        (1, WireType::Varint) => Value::Bool(decode_varint(&mut buf).ok()? != 0),
        (2, WireType::Varint) => {
            let z = decode_varint(&mut buf).ok()?;
            Value::Int(((z >> 1) as i64) ^ -((z & 1) as i64))
        }
        (3, WireType::Varint) => Value::UInt(decode_varint(&mut buf).ok()?),
        (4, WireType::SixtyFourBit) => {
            let (bytes, rest) = buf.split_first_chunk::<8>()?;
            buf = rest;
            Value::Float(f64::from_le_bytes(*bytes))
        }
        (5, WireType::LengthDelimited) => Value::Text(take_str(&mut buf)?.to_owned()),
        _ => return None,
    };
    buf.is_empty().then_some(Some(v))
}

/// An `int64` field: the varint is the value's two's complement.
fn int64(buf: &mut &[u8]) -> Option<i64> {
    Some(decode_varint(buf).ok()? as i64)
}

/// A length-delimited field's bytes.
fn take<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
    if len > buf.len() {
        return None;
    }
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Some(field)
}

fn take_str<'a>(buf: &mut &'a [u8]) -> Option<&'a str> {
    std::str::from_utf8(take(buf)?).ok()
}

/// The field numbers met so far in one message (all below 64 in this schema).
#[derive(Default)]
struct Seen(u64);

impl Seen {
    /// `Some` the first time `tag` is met, `None` after (or for a number this schema never uses).
    fn first(&mut self, tag: u32) -> Option<()> {
        let bit = 1u64.checked_shl(tag)?;
        if self.0 & bit != 0 {
            return None;
        }
        self.0 |= bit;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::codec::test_fixtures::any_value;
    use crate::codec::{Envelope, body, json};
    use crate::config::Stream;
    use crate::model::{Reading, ReadingBatch, Record};

    /// Times a payload can print (RFC 3339 needs years 0 to 9999): 1900 to 2100.
    const TIMES: std::ops::Range<i64> = -2_208_988_800_000..4_102_444_800_000;

    fn batch_strategy() -> impl Strategy<Value = ReadingBatch> {
        let reading = (
            "[a-z_]{0,12}",
            any_value("[a-z\"\\\\ é]{0,8}"),
            "[A-Za-z%/]{0,4}",
            0..Quality::ALL.len(),
            TIMES,
        )
            .prop_map(|(point, value, unit, q, ts)| Reading {
                point: Arc::from(point),
                value,
                unit: Arc::from(unit),
                quality: Quality::ALL[q],
                ts: Timestamp(ts),
            });
        (
            "[a-z0-9_]{0,10}",
            "[a-z0-9_]{0,10}",
            any::<u8>(),
            any::<u64>(),
            TIMES,
            prop::collection::vec(reading, 0..20),
        )
            .prop_map(
                |(source, device, unit_id, poll_interval_ms, scheduled, readings)| ReadingBatch {
                    source: Arc::from(source),
                    device: Arc::from(device),
                    unit_id,
                    poll_interval_ms,
                    scheduled: Timestamp(scheduled),
                    readings,
                },
            )
    }

    /// The view of a body, compared field by field with what the general decoder makes of it.
    fn assert_view_is_the_decoded_batch(view: &BatchView<'_>, decoded: &ReadingBatch) {
        assert_eq!(view.source, &*decoded.source);
        assert_eq!(view.device, &*decoded.device);
        assert_eq!(view.unit_id, decoded.unit_id);
        assert_eq!(view.poll_interval_ms, decoded.poll_interval_ms);
        assert_eq!(view.scheduled, decoded.scheduled);
        assert_eq!(view.readings.len(), decoded.readings.len());
        for (v, d) in view.readings.iter().zip(&decoded.readings) {
            assert_eq!(v.point, &*d.point);
            assert_eq!(v.unit, &*d.unit);
            assert_eq!(v.quality, d.quality);
            assert_eq!(v.ts, d.ts);
            match (&v.value, &d.value) {
                // NaN is not equal to itself; the bits are what must survive.
                (Some(Value::Float(a)), Some(Value::Float(b))) => {
                    assert_eq!(a.to_bits(), b.to_bits());
                }
                (a, b) => assert_eq!(a, b),
            }
        }
    }

    proptest! {
        #[test]
        fn a_spooled_batch_reads_in_place_as_the_decoder_reads_it(batch in batch_strategy()) {
            let body = body::encode(&Record::Batch(batch.clone()));
            let view = BatchView::parse(&body[1..]).expect("the encoder's shape");
            let Record::Batch(decoded) = body::decode(&body).unwrap() else {
                panic!("a batch body decodes to a batch");
            };
            assert_view_is_the_decoded_batch(&view, &decoded);
        }

        #[test]
        fn a_view_encodes_the_json_payload_of_the_decoded_batch(
            batch in batch_strategy(),
            seq in any::<u64>(),
            historical in any::<bool>(),
        ) {
            let body = body::encode(&Record::Batch(batch));
            let view = BatchView::parse(&body[1..]).expect("the encoder's shape");
            let decoded = body::decode(&body).unwrap();
            let envelope = Envelope::new("site-1", Stream::Live, seq, historical);
            prop_assert_eq!(
                json::encode_view(envelope, &view),
                json::encode_record(envelope, &decoded)
            );
        }
    }

    fn one_reading_body() -> Vec<u8> {
        body::encode(&Record::Batch(ReadingBatch {
            source: "potline1".into(),
            device: "pot_003".into(),
            unit_id: 12,
            poll_interval_ms: 1000,
            scheduled: Timestamp(1_764_300_253_000),
            readings: vec![Reading {
                point: "cell_voltage_v".into(),
                value: Some(Value::Float(4.061)),
                unit: "V".into(),
                quality: Quality::Good,
                ts: Timestamp(1_764_300_253_123),
            }],
        }))
    }

    #[test]
    fn a_body_outside_the_encoders_shape_takes_the_general_path() {
        let body = one_reading_body();
        assert!(BatchView::parse(&body[1..]).is_some());
        // An unknown envelope field (a later schema), a repeated one, and a truncated body.
        let mut unknown = body[1..].to_vec();
        unknown.extend_from_slice(&[0x78, 0x01]); // field 15, varint 1
        assert_eq!(BatchView::parse(&unknown), None);
        let mut twice = body[1..].to_vec();
        twice.extend_from_slice(&[0x10, 0x01]); // stream again
        assert_eq!(BatchView::parse(&twice), None);
        assert_eq!(BatchView::parse(&body[1..body.len() - 1]), None);
    }

    #[test]
    fn records_other_than_live_batches_have_no_view() {
        let event = Record::Event(crate::model::Event {
            kind: crate::model::EventKind::UplinkFailed,
            subject: "plant".into(),
            phase: crate::model::EventPhase::Start,
            ts: Timestamp(1),
            attributes: Vec::new(),
            message: String::new(),
        });
        let body = body::encode(&event);
        assert_eq!(BatchView::parse(&body[1..]), None);
    }
}
