//! The JSON payload encoder.
//!
//! A [`Record::Batch`] becomes one object per poll batch of one device, fields in this fixed
//! order (consumers and the golden file rely on it):
//!
//! ```json
//! {"site":"demo-al-01","stream":"live","seq":17,"source":"potline1","device":"pot_003",
//!  "unit_id":12,"poll_interval_ms":1000,"scheduled":"2026-11-28T03:24:13.000Z",
//!  "readings":[{"point":"cell_voltage_v","value":4.061,"unit":"V","quality":"good",
//!               "ts":"2026-11-28T03:24:13.123Z","ts_ms":1764300253123}]}
//! ```
//!
//! `value` is `null` when nothing could be read (the quality says why) and for non-finite floats;
//! `"historical":true` follows `seq` only for records replayed after an outage, and is absent
//! otherwise. The encoder writes borrowed views of the record (the header with serde, the readings
//! by hand, see `write_reading`), so nothing but one RFC 3339 string per distinct timestamp is
//! allocated besides the output buffer.

use std::borrow::Cow;

use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::codec::Envelope;
use crate::codec::batch_view::{BatchView, ReadingView};
use crate::model::{Quality, Reading, ReadingBatch, Record, Timestamp, Value};

/// Encode one spooled record as a JSON payload.
///
/// `envelope.historical` marks a record sent after an outage, behind newer data; it adds
/// `"historical":true` and is omitted when false.
pub fn encode_record(envelope: Envelope<'_>, record: &Record) -> Vec<u8> {
    match record {
        Record::Batch(batch) => write_batch(envelope, batch),
        Record::Metrics(m) => encode_envelope(envelope, m),
        Record::Event(e) => encode_envelope(envelope, e),
        Record::Aggregate(a) => encode_envelope(envelope, a),
    }
}

/// Metrics, events and aggregates: the record's own fields (timestamps as Unix milliseconds)
/// after the common `site`, `stream`, `seq` (and `historical`) header.
fn encode_envelope<T: Serialize>(envelope: Envelope<'_>, body: &T) -> Vec<u8> {
    #[derive(Serialize)]
    struct Payload<'a, T> {
        site: &'a str,
        stream: &'a str,
        seq: u64,
        #[serde(skip_serializing_if = "is_false")]
        historical: bool,
        #[serde(flatten)]
        body: &'a T,
    }
    serde_json::to_vec(&Payload {
        site: envelope.site,
        stream: envelope.stream.as_str(),
        seq: envelope.seq,
        historical: envelope.historical,
        body,
    })
    .expect("serialising plain data into a Vec cannot fail")
}

fn write_batch<B: BatchFields>(envelope: Envelope<'_>, batch: &B) -> Vec<u8> {
    let head = BatchHead {
        site: envelope.site,
        stream: envelope.stream.as_str(),
        seq: envelope.seq,
        historical: envelope.historical,
        source: batch.source(),
        device: batch.device(),
        unit_id: batch.unit_id(),
        poll_interval_ms: batch.poll_interval_ms(),
        scheduled: Rfc3339(batch.scheduled()),
    };
    let readings = batch.readings();
    // Rough size guess: ~110 bytes per reading plus the header; avoids most regrowth.
    let mut out = Vec::with_capacity(192 + 112 * readings.len());
    serde_json::to_writer(&mut out, &head)
        .expect("serialising borrowed strings and numbers into a Vec cannot fail");
    // `readings` is the last field: reopen the object and append it.
    debug_assert_eq!(out.last(), Some(&b'}'));
    out.pop();
    out.extend_from_slice(b",\"readings\":[");
    let mut tail = Tail::default();
    for (i, r) in readings.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_reading(&mut out, r, &mut tail);
    }
    out.extend_from_slice(b"]}");
    out
}

/// A live batch borrowed from a JSON spool body (the form of [`Record::Batch`] in spools written
/// before the binary body, see [`crate::codec::body`]): the uplink
/// encodes a JSON payload from it without building the [`ReadingBatch`] (no allocation per
/// reading, only for text values and strings with escapes). [`SpooledBatch::encode`] writes the
/// same bytes as [`encode_record`] of the decoded record; a unit test holds both to that.
#[derive(Debug, Deserialize)]
pub struct SpooledBatch<'a> {
    #[serde(borrow)]
    source: Cow<'a, str>,
    /// The device.
    #[serde(borrow)]
    pub device: Cow<'a, str>,
    unit_id: u8,
    poll_interval_ms: u64,
    /// The scheduled instant of the cycle.
    pub scheduled: Timestamp,
    #[serde(borrow)]
    readings: Vec<SpooledReading<'a>>,
}

#[derive(Debug, Deserialize)]
struct SpooledReading<'a> {
    #[serde(borrow)]
    point: Cow<'a, str>,
    value: Option<Value>,
    #[serde(borrow)]
    unit: Cow<'a, str>,
    quality: Quality,
    ts: Timestamp,
}

impl<'a> SpooledBatch<'a> {
    /// Borrow a live batch from a spool body; `None` when the body is not a batch record.
    pub fn parse(body: &'a [u8]) -> Option<SpooledBatch<'a>> {
        // Our serialiser writes the tag first; anything else takes the general path.
        if !body.starts_with(br#"{"record":"batch","#) {
            return None;
        }
        serde_json::from_slice(body).ok()
    }

    /// Number of readings of each quality, indexed like [`Quality::ALL`].
    pub fn quality_counts(&self) -> [u64; Quality::ALL.len()] {
        let mut counts = [0; Quality::ALL.len()];
        for r in &self.readings {
            counts[r.quality as usize] += 1;
        }
        counts
    }

    /// The JSON payload, as [`encode_record`] writes it for the decoded batch.
    pub fn encode(&self, envelope: Envelope<'_>) -> Vec<u8> {
        write_batch(envelope, self)
    }
}

/// The JSON payload of a live batch read in place from its binary spool body: the bytes
/// [`encode_record`] writes for the decoded batch (a property test holds both to that).
pub fn encode_view(envelope: Envelope<'_>, batch: &BatchView<'_>) -> Vec<u8> {
    write_batch(envelope, batch)
}

/// The fields of a reading that a payload shows, owned or borrowed.
trait ReadingFields {
    fn point(&self) -> &str;
    fn value(&self) -> Option<&Value>;
    fn unit(&self) -> &str;
    fn quality(&self) -> Quality;
    fn ts(&self) -> Timestamp;
}

/// The owned and the borrowed reading have the same fields; only their string types differ.
macro_rules! reading_fields {
    ($($t:ty),+) => {$(
        impl ReadingFields for $t {
            fn point(&self) -> &str {
                &self.point
            }
            fn value(&self) -> Option<&Value> {
                self.value.as_ref()
            }
            fn unit(&self) -> &str {
                &self.unit
            }
            fn quality(&self) -> Quality {
                self.quality
            }
            fn ts(&self) -> Timestamp {
                self.ts
            }
        }
    )+};
}

reading_fields!(Reading, SpooledReading<'_>, ReadingView<'_>);

/// The fields of a poll batch that a payload shows, whatever holds them: the decoded batch, a JSON
/// spool body ([`SpooledBatch`]) or a binary one read in place ([`BatchView`]).
trait BatchFields {
    type Reading: ReadingFields;
    fn source(&self) -> &str;
    fn device(&self) -> &str;
    fn unit_id(&self) -> u8;
    fn poll_interval_ms(&self) -> u64;
    fn scheduled(&self) -> Timestamp;
    fn readings(&self) -> &[Self::Reading];
}

/// The three batches have the same fields; only their string types differ.
macro_rules! batch_fields {
    ($(<$($lt:lifetime)?> $t:ty => $r:ty),+) => {$(
        impl<$($lt)?> BatchFields for $t {
            type Reading = $r;
            fn source(&self) -> &str {
                &self.source
            }
            fn device(&self) -> &str {
                &self.device
            }
            fn unit_id(&self) -> u8 {
                self.unit_id
            }
            fn poll_interval_ms(&self) -> u64 {
                self.poll_interval_ms
            }
            fn scheduled(&self) -> Timestamp {
                self.scheduled
            }
            fn readings(&self) -> &[$r] {
                &self.readings
            }
        }
    )+};
}

batch_fields!(
    <> ReadingBatch => Reading,
    <'a> SpooledBatch<'a> => SpooledReading<'a>,
    <'a> BatchView<'a> => ReadingView<'a>
);

#[derive(Serialize)]
struct BatchHead<'a> {
    site: &'a str,
    stream: &'a str,
    seq: u64,
    #[serde(skip_serializing_if = "is_false")]
    historical: bool,
    source: &'a str,
    device: &'a str,
    unit_id: u8,
    poll_interval_ms: u64,
    scheduled: Rfc3339,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A timestamp printed as RFC 3339 with milliseconds.
struct Rfc3339(Timestamp);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_rfc3339())
    }
}

/// One reading, `{"point":…,"value":…,"unit":…,"quality":…,"ts":…,"ts_ms":…}`, written by hand:
/// a poll batch is a hundred of them, and serde would escape the six keys, the quality name and
/// the timestamp of every one although none of them can need it. The point, the unit and text
/// values go through `serde_json`, which escapes them; numbers are printed by `serde_json` too,
/// so the bytes are what serde writes for the same fields (the golden file holds them).
fn write_reading<'r, R: ReadingFields>(out: &mut Vec<u8>, r: &'r R, tail: &mut Tail<'r>) {
    out.extend_from_slice(b"{\"point\":");
    scalar(out, r.point());
    out.extend_from_slice(b",\"value\":");
    match r.value() {
        Some(Value::Bool(b)) => scalar(out, b),
        Some(Value::Int(i)) => scalar(out, i),
        Some(Value::UInt(u)) => scalar(out, u),
        Some(Value::Float(f)) if f.is_finite() => scalar(out, f),
        Some(Value::Text(t)) => scalar(out, t.as_str()),
        // Nothing was read, or a non-finite float (JSON has no NaN): the quality says why.
        Some(Value::Float(_)) | None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(tail.of(r.unit(), r.quality(), r.ts()));
}

/// The end of a reading after its value, `,"unit":…,"quality":…,"ts":…,"ts_ms":…}`, kept for
/// the next reading: the readings of one request share their timestamp and quality, and often
/// their unit, so a batch formats a handful of tails instead of one per reading (the timestamp
/// as RFC 3339 and as a number, the quality, the escaped unit).
#[derive(Default)]
struct Tail<'r> {
    key: Option<(&'r str, Quality, Timestamp)>,
    bytes: Vec<u8>,
    /// The last timestamp formatted as RFC 3339, which tails of other units or qualities share.
    rfc3339: Option<(Timestamp, String)>,
}

impl<'r> Tail<'r> {
    fn of(&mut self, unit: &'r str, quality: Quality, ts: Timestamp) -> &[u8] {
        let key = (unit, quality, ts);
        if self.key != Some(key) {
            let text = match &self.rfc3339 {
                Some((t, text)) if *t == ts => text,
                _ => &self.rfc3339.insert((ts, ts.to_rfc3339())).1,
            };
            let out = &mut self.bytes;
            out.clear();
            out.extend_from_slice(b",\"unit\":");
            scalar(out, unit);
            // Quality names are fixed snake_case words, RFC 3339 timestamps digits and `-:.TZ`.
            out.extend_from_slice(b",\"quality\":\"");
            out.extend_from_slice(quality.as_str().as_bytes());
            out.extend_from_slice(b"\",\"ts\":\"");
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\",\"ts_ms\":");
            scalar(out, &ts.unix_ms());
            out.push(b'}');
            self.key = Some(key);
        }
        &self.bytes
    }
}

/// A JSON string (escaped) or number, as `serde_json` prints it.
fn scalar<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(&mut *out, v).expect("a string or number always serialises into a Vec");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Stream;

    fn reading(point: &str, value: Option<Value>, unit: &str, q: Quality, ts: i64) -> Reading {
        Reading {
            point: point.into(),
            value,
            unit: unit.into(),
            quality: q,
            ts: Timestamp(ts),
        }
    }

    fn batch(readings: Vec<Reading>) -> Record {
        Record::Batch(ReadingBatch {
            source: "potline1".into(),
            device: "pot_003".into(),
            unit_id: 12,
            poll_interval_ms: 1000,
            scheduled: Timestamp(1_764_300_253_000),
            readings,
        })
    }

    #[test]
    fn historical_flag_appears_only_when_set() {
        let r = batch(vec![]);
        let live = String::from_utf8(encode_record(
            Envelope::new("s", Stream::Live, 1, false),
            &r,
        ))
        .unwrap();
        let hist = String::from_utf8(encode_record(Envelope::new("s", Stream::Live, 1, true), &r))
            .unwrap();
        assert!(!live.contains("historical"), "{live}");
        assert!(
            hist.contains(r#""seq":1,"historical":true,"source""#),
            "{hist}"
        );
    }

    #[test]
    fn every_value_kind_encodes_as_a_bare_scalar() {
        let r = batch(vec![
            reading("b", Some(Value::Bool(true)), "", Quality::Good, 0),
            reading("i", Some(Value::Int(-3)), "", Quality::Good, 0),
            reading("u", Some(Value::UInt(u64::MAX)), "kWh", Quality::Good, 0),
            reading(
                "f",
                Some(Value::Float(f64::NAN)),
                "V",
                Quality::OutOfRange,
                0,
            ),
            reading("t", Some(Value::Text("A\"1".into())), "", Quality::Good, 0),
            reading("n", None, "V", Quality::CommFail, 0),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&encode_record(
            Envelope::new("s", Stream::Live, 2, false),
            &r,
        ))
        .unwrap();
        let values: Vec<&serde_json::Value> = v["readings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| &r["value"])
            .collect();
        assert_eq!(values[0], &serde_json::json!(true));
        assert_eq!(values[1], &serde_json::json!(-3));
        assert_eq!(values[2], &serde_json::json!(u64::MAX));
        assert!(values[3].is_null());
        assert_eq!(values[4], &serde_json::json!("A\"1"));
        assert!(values[5].is_null());
        assert_eq!(v["readings"][5]["quality"], "comm_fail");
    }

    #[test]
    fn a_spooled_batch_encodes_the_bytes_of_the_decoded_record() {
        let r = batch(vec![
            reading("b", Some(Value::Bool(false)), "", Quality::Good, 5),
            reading("i", Some(Value::Int(i64::MIN)), "", Quality::Good, 5),
            reading("u", Some(Value::UInt(u64::MAX)), "kWh", Quality::Good, 5),
            reading("f", Some(Value::Float(-0.125)), "°C", Quality::Good, 7),
            reading(
                "x",
                Some(Value::Float(f64::INFINITY)),
                "V",
                Quality::OutOfRange,
                7,
            ),
            reading(
                "t",
                Some(Value::Text("A\"\\1\n".into())),
                "m\"3",
                Quality::Good,
                7,
            ),
            reading("n", None, "V", Quality::CommFail, 9),
            reading("s", Some(Value::Float(4.05)), "V", Quality::Stale, -1),
        ]);
        let body = serde_json::to_vec(&r).unwrap();
        let spooled = SpooledBatch::parse(&body).expect("a batch body");
        for (seq, historical) in [(1, false), (u64::MAX, true)] {
            let envelope = Envelope::new("site \"1\"", Stream::Live, seq, historical);
            assert_eq!(
                String::from_utf8(spooled.encode(envelope)),
                String::from_utf8(encode_record(envelope, &r))
            );
        }
        assert_eq!(spooled.device, "pot_003");
        assert_eq!(spooled.scheduled, Timestamp(1_764_300_253_000));
        let Record::Batch(b) = &r else { unreachable!() };
        let counts: Vec<u64> = b.quality_counts().iter().map(|n| *n as u64).collect();
        assert_eq!(spooled.quality_counts().to_vec(), counts);
        // Not a batch, or not in our serialiser's layout: the general path decodes it.
        let event = serde_json::to_vec(&Record::Event(crate::model::Event {
            kind: crate::model::EventKind::Outage,
            subject: "plant".into(),
            phase: crate::model::EventPhase::Instant,
            ts: Timestamp(0),
            attributes: vec![],
            message: String::new(),
        }))
        .unwrap();
        assert!(SpooledBatch::parse(&event).is_none());
        assert!(SpooledBatch::parse(br#"{"source":"s","record":"batch"}"#).is_none());
        assert!(SpooledBatch::parse(br#"{"record":"batch","source":1}"#).is_none());
    }
}

#[cfg(test)]
mod readings_prop {
    use super::*;
    use crate::codec::test_fixtures::any_value;
    use crate::config::Stream;
    use proptest::prelude::*;

    /// Readings drawn from few units, qualities and instants, so that neighbours share some of
    /// them and differ in others: each reading must show its own, whatever came before it.
    fn any_reading() -> impl Strategy<Value = Reading> {
        (
            0..4usize,
            0..Quality::ALL.len(),
            prop_oneof![Just(1_764_300_253_123_i64), Just(-1), Just(0), any::<i64>()],
            proptest::option::of(any::<i64>()),
        )
            .prop_map(|(u, q, ts, v)| Reading {
                point: format!("p{u}{q}").into(),
                value: v.map(Value::Int),
                unit: ["", "kA", "mg/m\"3", "°C"][u].into(),
                quality: Quality::ALL[q],
                ts: Timestamp(ts.clamp(-1, 253_402_300_799_999)),
            })
    }

    /// Any text: quotes, backslashes, every control character, non-ASCII.
    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z_0-9]{0,12}", "[\\x00-\\x7f]{0,12}", any::<String>(),]
    }

    /// A reading as serde writes it, field by field: what `write_reading` must print.
    #[derive(Serialize)]
    struct BySerde<'a> {
        point: &'a str,
        value: Option<&'a Value>,
        unit: &'a str,
        quality: &'a str,
        ts: String,
        ts_ms: i64,
    }

    proptest! {
        #[test]
        fn a_reading_is_the_bytes_serde_writes_for_its_fields(
            point in any_text(),
            value in any_value(any_text()),
            unit in any_text(),
            q in 0..Quality::ALL.len(),
            ts in -1..253_402_300_799_999_i64,
        ) {
            let r = Reading {
                point: point.as_str().into(),
                value,
                unit: unit.as_str().into(),
                quality: Quality::ALL[q],
                ts: Timestamp(ts),
            };
            let mut got = Vec::new();
            write_reading(&mut got, &r, &mut Tail::default());
            let expected = serde_json::to_vec(&BySerde {
                point: &r.point,
                value: r.value.as_ref(),
                unit: &r.unit,
                quality: r.quality.as_str(),
                ts: r.ts.to_rfc3339(),
                ts_ms: r.ts.unix_ms(),
            })
            .unwrap();
            prop_assert_eq!(String::from_utf8(got).unwrap(), String::from_utf8(expected).unwrap());
        }
    }

    proptest! {
        #[test]
        fn every_reading_shows_its_own_unit_quality_and_time(
            readings in proptest::collection::vec(any_reading(), 0..40)
        ) {
            let batch = Record::Batch(ReadingBatch {
                source: "s".into(),
                device: "d".into(),
                unit_id: 1,
                poll_interval_ms: 1000,
                scheduled: Timestamp(0),
                readings: readings.clone(),
            });
            let json = encode_record(Envelope::new("x", Stream::Live, 1, false), &batch);
            let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
            let got = v["readings"].as_array().unwrap();
            prop_assert_eq!(got.len(), readings.len());
            for (g, r) in got.iter().zip(&readings) {
                prop_assert_eq!(g["point"].as_str(), Some(&*r.point));
                prop_assert_eq!(g["unit"].as_str(), Some(&*r.unit));
                prop_assert_eq!(g["quality"].as_str(), Some(r.quality.as_str()));
                let ts = r.ts.to_rfc3339();
                prop_assert_eq!(g["ts"].as_str(), Some(ts.as_str()));
                prop_assert_eq!(g["ts_ms"].as_i64(), Some(r.ts.unix_ms()));
                prop_assert_eq!(g["value"].as_i64(), r.value.as_ref().and_then(|v| match v {
                    Value::Int(i) => Some(*i),
                    _ => None,
                }));
            }
        }
    }
}

#[cfg(test)]
mod golden {
    use super::*;
    use crate::config::Stream;

    /// The batch of the module docs: three readings covering a float, an integer counter and a
    /// failed read.
    fn documented_batch() -> Record {
        let ts = |ms: i64| Timestamp(1_764_300_253_000 + ms);
        Record::Batch(ReadingBatch {
            source: "potline1".into(),
            device: "pot_003".into(),
            unit_id: 12,
            poll_interval_ms: 1000,
            scheduled: ts(0),
            readings: vec![
                Reading {
                    point: "cell_voltage_v".into(),
                    value: Some(Value::Float(4.061)),
                    unit: "V".into(),
                    quality: Quality::Good,
                    ts: ts(123),
                },
                Reading {
                    point: "energy_kwh".into(),
                    value: Some(Value::UInt(18_446_744_073_709_551_000)),
                    unit: "kWh".into(),
                    quality: Quality::Good,
                    ts: ts(123),
                },
                Reading {
                    point: "anode_current_ka".into(),
                    value: None,
                    unit: "kA".into(),
                    quality: Quality::CommFail,
                    ts: ts(310),
                },
            ],
        })
    }

    const GOLDEN: &[u8] = include_bytes!("../../tests/testdata/json/batch.json");

    #[test]
    fn batch_matches_the_golden_file_byte_for_byte() {
        let got = encode_record(
            Envelope::new("demo-al-01", Stream::Live, 17, false),
            &documented_batch(),
        );
        // The golden file ends with a newline for editors; the payload does not.
        let want = GOLDEN.strip_suffix(b"\n").unwrap_or(GOLDEN);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "JSON payload changed; if intended, update tests/testdata/json/batch.json"
        );
    }

    #[test]
    fn batch_round_trips_through_a_json_parser() {
        let got = encode_record(
            Envelope::new("demo-al-01", Stream::Live, 17, false),
            &documented_batch(),
        );
        let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(v["site"], "demo-al-01");
        assert_eq!(v["stream"], "live");
        assert_eq!(v["seq"], 17);
        assert_eq!(v["unit_id"], 12);
        assert_eq!(v["scheduled"], "2025-11-28T03:24:13.000Z");
        let r = &v["readings"];
        assert_eq!(r.as_array().unwrap().len(), 3);
        assert_eq!(r[0]["value"].as_f64(), Some(4.061));
        assert_eq!(r[0]["ts"], "2025-11-28T03:24:13.123Z");
        assert_eq!(r[0]["ts_ms"], 1_764_300_253_123_i64);
        assert_eq!(r[1]["value"].as_u64(), Some(18_446_744_073_709_551_000));
        assert!(r[2]["value"].is_null());
        assert_eq!(r[2]["quality"], "comm_fail");
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(!keys.contains(&"historical"));
    }
}
