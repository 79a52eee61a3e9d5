//! Spool bodies: the form in which fan-out stores a [`Record`] in an uplink's spool, and the one
//! place that reads it back.
//!
//! The spool keeps bodies as opaque bytes; their first byte tells the form:
//!
//! | first byte | form | written for |
//! |---|---|---|
//! | `0x01` | a `smeltwatch.v1.Envelope` (protobuf, `proto/smeltwatch/v1/`) with only `stream` and the record set | every unsealed record (spool schema 2 on) |
//! | `{` | the JSON of the record, or a sealed record's canonical JSON with its seal first ([`crate::ledger::capture`]) | sealed records; every record of spool files written before schema 2 |
//!
//! The binary form is what the spool holds for nearly every record: a poll batch of 100 readings is
//! about a third of its JSON, written without serde, and decodes back exactly (protobuf keeps NaN
//! and infinities, which JSON cannot). A sealed record stays JSON because its seal signs exactly
//! that JSON. Both forms decode here, so a spool written by an older build drains after an upgrade.

use crate::codec::{Envelope, protobuf};
use crate::model::Record;

/// First byte of the binary form (see the module documentation).
const PROTOBUF_FORM: u8 = 0x01;

/// A spool body that cannot be decoded into a record.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// An empty body.
    #[error("empty body")]
    Empty,
    /// A JSON body that is not a record.
    #[error("JSON body: {0}")]
    Json(#[from] serde_json::Error),
    /// A binary body that is not a `smeltwatch.v1.Envelope` with a record.
    #[error("protobuf body: {0}")]
    Protobuf(#[from] protobuf::DecodeError),
    /// A body whose first byte names no form this build knows.
    #[error("unknown body form (first byte {0:#04x})")]
    UnknownForm(u8),
}

/// The spool body of an unsealed record (a sealed one's body is
/// [`sealed_body`](crate::ledger::capture::sealed_body)).
pub fn encode(record: &Record) -> Vec<u8> {
    let mut out = vec![PROTOBUF_FORM];
    let envelope = Envelope::new("", record.stream(), 0, false);
    protobuf::encode_record_to(envelope, record, &mut out);
    out
}

/// The record of a spool body, in any of its forms.
pub fn decode(body: &[u8]) -> Result<Record, BodyError> {
    match body.first() {
        None => Err(BodyError::Empty),
        Some(&PROTOBUF_FORM) => Ok(protobuf::decode_record(&body[1..])?.record),
        Some(b'{') => Ok(serde_json::from_slice(body)?),
        Some(&other) => Err(BodyError::UnknownForm(other)),
    }
}

/// A live batch read in place from a binary body, without decoding it (see
/// [`BatchView`](crate::codec::batch_view::BatchView)); `None` for any other body.
pub fn live_batch(body: &[u8]) -> Option<crate::codec::batch_view::BatchView<'_>> {
    match body.split_first() {
        Some((&PROTOBUF_FORM, envelope)) => crate::codec::batch_view::BatchView::parse(envelope),
        _ => None,
    }
}

/// The record of a spool body as JSON, for `smeltwatch spool export`: a JSON body as it is (a
/// sealed one with its `ledger` seal), a binary one as the JSON of its record.
pub fn to_json(body: &[u8]) -> Result<serde_json::Value, BodyError> {
    match body.first() {
        Some(b'{') => Ok(serde_json::from_slice(body)?),
        _ => Ok(serde_json::to_value(decode(body)?)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_fixtures::one_reading;
    use crate::model::{Quality, Reading, ReadingBatch, Timestamp, Value};

    /// One record of every kind, from the JSON form the spool held before schema 2.
    fn records() -> Vec<Record> {
        [
            r#"{"record":"batch","source":"s","device":"d","unit_id":1,"poll_interval_ms":1000,
               "scheduled":5,"readings":[{"point":"a","value":-7,"unit":"V","quality":"good","ts":5},
               {"point":"b","value":null,"unit":"","quality":"comm_fail","ts":6},
               {"point":"c","value":"OK","unit":"","quality":"good","ts":6}]}"#,
            r#"{"record":"metrics","calc":"potline","ts":9,"metrics":[{"name":"m_t","value":1.5,
               "unit":"t","quality":"good","ts":9,"labels":[["line","potline1"]]}]}"#,
            r#"{"record":"event","kind":"outage","subject":"plant","phase":"instant","ts":3,
               "attributes":[["dropped_live",4]],"message":"m"}"#,
            r#"{"record":"aggregate","subject":"s1","quantity":"so2_mg_m3","unit":"mg/m3",
               "period":"hour","start":0,"end":3600000,"avg":1.0,"min":0.5,"max":2.0,"total":null,
               "total_unit":null,"samples":60,"expected":60,"valid":true,"quality":"good"}"#,
        ]
        .iter()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect()
    }

    #[test]
    fn every_record_kind_round_trips_in_the_binary_form() {
        for record in records() {
            let body = encode(&record);
            assert_eq!(body[0], PROTOBUF_FORM);
            assert_eq!(decode(&body).unwrap(), record);
            // Export shows the same JSON as the record's own JSON form.
            assert_eq!(
                to_json(&body).unwrap(),
                serde_json::to_value(&record).unwrap()
            );
        }
    }

    #[test]
    fn json_bodies_of_older_spools_still_decode() {
        for record in records() {
            let body = serde_json::to_vec(&record).unwrap();
            assert_eq!(body[0], b'{');
            assert_eq!(decode(&body).unwrap(), record);
            assert_eq!(
                to_json(&body).unwrap(),
                serde_json::from_slice::<serde_json::Value>(&body).unwrap()
            );
        }
    }

    #[test]
    fn non_finite_floats_survive_the_binary_form() {
        let batch = |v: f64| one_reading(Some(Value::Float(v)), "", Quality::OutOfRange, 0);
        for v in [f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(decode(&encode(&batch(v))).unwrap(), batch(v));
        }
        let Record::Batch(b) = decode(&encode(&batch(f64::NAN))).unwrap() else {
            panic!("a batch")
        };
        assert!(matches!(b.readings[0].value, Some(Value::Float(f)) if f.is_nan()));
    }

    #[test]
    fn a_poll_batch_is_a_fraction_of_its_json() {
        let readings = (0..100)
            .map(|i| Reading {
                point: format!("register_{i:03}").into(),
                value: Some(Value::UInt(40_000 + i)),
                unit: "".into(),
                quality: Quality::Good,
                ts: Timestamp(1_795_843_453_012),
            })
            .collect();
        let record = Record::Batch(ReadingBatch {
            source: "potline1".into(),
            device: "pot_003".into(),
            unit_id: 12,
            poll_interval_ms: 1000,
            scheduled: Timestamp(1_795_843_453_000),
            readings,
        });
        let binary = encode(&record).len();
        let json = serde_json::to_vec(&record).unwrap().len();
        // 3.1 kB against 8.6 kB: the keys, the quality names and the decimal digits are gone.
        assert!(
            binary * 5 < json * 2,
            "binary {binary} bytes, JSON {json} bytes"
        );
    }

    #[test]
    fn bad_bodies_are_refused_with_what_is_wrong() {
        assert!(matches!(decode(b""), Err(BodyError::Empty)));
        assert!(matches!(decode(b"{\"x\":1}"), Err(BodyError::Json(_))));
        assert!(matches!(
            decode(&[PROTOBUF_FORM, 0xff, 0xff]),
            Err(BodyError::Protobuf(_))
        ));
        // A valid envelope without a record.
        assert!(matches!(
            decode(&[PROTOBUF_FORM, 0x10, 0x01]),
            Err(BodyError::Protobuf(_))
        ));
        let err = decode(&[0x7f, 1, 2]).unwrap_err();
        assert_eq!(err.to_string(), "unknown body form (first byte 0x7f)");
    }
}
