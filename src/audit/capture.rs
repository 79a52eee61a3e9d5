//! Reading captured messages back for the verifier: a ledger record line, a sealed JSON payload
//! or a protobuf envelope ([`crate::ledger::capture`] describes the forms), and the verdict over
//! a capture.

use serde_json::Value as Json;

use crate::codec::protobuf::{self, pb};
use crate::codec::seal::{SealLengthError, seal_from_pb};
use crate::ledger::{Anchors, LedgerRecord, Report, verify_with};
use crate::model::Record;

/// Rewrite the `labels` of a signed metric batch from the `[key, value]` pairs older builds
/// signed to the object the JSON payload now carries, so that a record sealed before an upgrade
/// and published after it still compares equal to its body (same labels, same order).
fn labels_as_objects(signed: &mut serde_json::Map<String, Json>) {
    let Some(Json::Array(metrics)) = signed.get_mut("metrics") else {
        return;
    };
    for metric in metrics {
        let Some(labels) = metric.get_mut("labels") else {
            continue;
        };
        let Json::Array(pairs) = labels else {
            continue;
        };
        let mut object = serde_json::Map::new();
        for pair in pairs.iter() {
            match pair.as_array().map(Vec::as_slice) {
                Some([Json::String(k), v]) => {
                    object.insert(k.clone(), v.clone());
                }
                // Not the pairs form: leave it for the comparison to reject.
                _ => return,
            }
        }
        *labels = Json::Object(object);
    }
}

/// Why a captured message that should be a record cannot be read (see [`read_message`]).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// It starts like JSON (or comes from a file of JSON lines) but does not parse.
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// JSON, but not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// An object with a ledger record's `hash` and `payload` that is no ledger record.
    #[error("not a ledger record: {0}")]
    NotARecord(#[source] serde_json::Error),
    /// A JSON payload whose `ledger` object is no seal.
    #[error("ledger: {0}")]
    JsonSeal(#[source] serde_json::Error),
    /// Binary, but no protobuf envelope.
    #[error("neither JSON nor protobuf: {0}")]
    NotProtobuf(#[source] prost::DecodeError),
    /// A protobuf envelope whose seal has a field of the wrong length.
    #[error(transparent)]
    ProtobufSeal(#[from] SealLengthError),
}

/// What one captured message holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Captured {
    /// A ledger record; `body_matches` is false when the record shown in the message's body
    /// differs from the signed payload.
    Sealed {
        /// The ledger record.
        record: Box<LedgerRecord>,
        /// Whether the body beside the seal says the same as the signed payload.
        body_matches: bool,
        /// Whether the message was marked historical (replayed after an outage); for a bare
        /// ledger record, its seal's label.
        historical: bool,
    },
    /// A message without a seal (not a regulated record): not part of the chain.
    Unsealed,
}

/// Read one captured message: a ledger record line, a sealed JSON payload, or (unless
/// `json_only`, as for the lines of a file) a protobuf envelope. An error says why a message
/// that should be a record cannot be read.
pub fn read_message(bytes: &[u8], json_only: bool) -> Result<Captured, CaptureError> {
    let trimmed = bytes.trim_ascii();
    if json_only || trimmed.first() == Some(&b'{') {
        let value: Json = serde_json::from_slice(trimmed).map_err(CaptureError::NotJson)?;
        let Json::Object(mut object) = value else {
            return Err(CaptureError::NotAnObject);
        };
        if object.contains_key("hash") && object.contains_key("payload") {
            let record: LedgerRecord =
                serde_json::from_value(Json::Object(object)).map_err(CaptureError::NotARecord)?;
            let historical = record.historical;
            return Ok(Captured::Sealed {
                record: Box::new(record),
                body_matches: true,
                historical,
            });
        }
        let Some(seal) = object.remove("ledger") else {
            return Ok(Captured::Unsealed);
        };
        let record: LedgerRecord = serde_json::from_value(seal).map_err(CaptureError::JsonSeal)?;
        let historical = object.get("historical") == Some(&Json::Bool(true));
        for key in ["site", "stream", "seq", "historical"] {
            object.remove(key);
        }
        let body_matches = match serde_json::from_str::<Json>(&record.payload) {
            Ok(Json::Object(mut signed)) => {
                signed.remove("record");
                labels_as_objects(&mut signed);
                signed == object
            }
            _ => false,
        };
        return Ok(Captured::Sealed {
            record: Box::new(record),
            body_matches,
            historical,
        });
    }
    use prost::Message as _;
    // Binary: no trimming (whitespace bytes are protobuf content).
    let envelope = pb::Envelope::decode(bytes).map_err(CaptureError::NotProtobuf)?;
    let Some(seal) = envelope.ledger.clone() else {
        return Ok(Captured::Unsealed);
    };
    let record = seal_from_pb(seal)?;
    let body_matches = match (
        protobuf::decode_record(bytes),
        serde_json::from_str::<Record>(&record.payload),
    ) {
        (Ok(decoded), Ok(signed)) => decoded.record == signed,
        _ => false,
    };
    Ok(Captured::Sealed {
        record: Box::new(record),
        body_matches,
        historical: envelope.historical,
    })
}

/// [`verify_messages_with`] expecting the capture from seq 1 and without a head to reach.
pub fn verify_messages<'a>(
    key: &ed25519_dalek::VerifyingKey,
    messages: impl IntoIterator<Item = (usize, &'a [u8])>,
    json_only: bool,
) -> Report {
    verify_messages_with(key, messages, json_only, &Anchors::default())
}

/// Verify captured messages in capture order (see [`read_message`]) against the chain's known
/// ends; messages without a seal are counted in [`Report::unsealed`] and otherwise ignored. Each
/// message comes with the number that names it in the report (its line or message number). A
/// record captured after a later one is out of order, unless it is labelled historical: a backlog
/// replayed after an outage arrives behind newer records by design ([`Report::late`]). The label
/// is the one the seal signs; a message whose flag says otherwise is relabelled
/// ([`Report::relabelled`]). A seal of an older build signs no label: its message's flag is taken
/// as it is and noted ([`Report::unsigned_label`]).
pub fn verify_messages_with<'a>(
    key: &ed25519_dalek::VerifyingKey,
    messages: impl IntoIterator<Item = (usize, &'a [u8])>,
    json_only: bool,
    anchors: &Anchors,
) -> Report {
    let mut records = Vec::new();
    let mut mismatched = Vec::new();
    let mut unreadable = Vec::new();
    let mut unsealed = 0;
    let mut historical = std::collections::BTreeSet::new();
    let mut relabelled = Vec::new();
    let mut unsigned_label = Vec::new();
    for (label, bytes) in messages {
        let blank = if json_only {
            bytes.trim_ascii().is_empty()
        } else {
            bytes.is_empty()
        };
        if blank {
            continue;
        }
        match read_message(bytes, json_only) {
            Ok(Captured::Sealed {
                record,
                body_matches,
                historical: late,
            }) => {
                if !body_matches {
                    mismatched.push(record.seq);
                }
                let label = if record.v == 1 {
                    if late {
                        unsigned_label.push(record.seq);
                    }
                    late
                } else {
                    if late != record.historical {
                        relabelled.push(record.seq);
                    }
                    record.historical
                };
                if label {
                    historical.insert(record.seq);
                }
                records.push(*record);
            }
            Ok(Captured::Unsealed) => unsealed += 1,
            Err(why) => unreadable.push((label, why.to_string())),
        }
    }
    let mut report = verify_with(key, &records, anchors);
    for list in [&mut mismatched, &mut relabelled, &mut unsigned_label] {
        list.sort_unstable();
        list.dedup();
    }
    report.relabelled = relabelled;
    report.unsigned_label = unsigned_label;
    report.unsealed = unsealed;
    let (late, out_of_order): (Vec<u64>, Vec<u64>) = report
        .out_of_order
        .iter()
        .partition(|seq| historical.contains(seq));
    report.late = late;
    report.out_of_order = out_of_order;
    report.mismatched = mismatched;
    report.unreadable = unreadable;
    report.ok = report.intact();
    report
}

/// A capture file's messages (what `--file` accepts): JSON lines when it starts with `{`,
/// otherwise length-delimited protobuf envelopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split<'a> {
    /// Each message with its line or message number (from 1).
    pub messages: Vec<(usize, &'a [u8])>,
    /// JSON lines (true) or protobuf envelopes (false).
    pub json_only: bool,
    /// Where a protobuf capture stopped making sense (a bad or truncated length prefix): the
    /// number of the message and why.
    pub damaged: Option<(usize, String)>,
}

/// Split a capture file into messages (see [`Split`]).
pub fn split_capture(bytes: &[u8]) -> Split<'_> {
    if bytes.trim_ascii_start().first().is_none_or(|&b| b == b'{') {
        return Split {
            messages: bytes
                .split(|&b| b == b'\n')
                .enumerate()
                .map(|(i, line)| (i + 1, line))
                .collect(),
            json_only: true,
            damaged: None,
        };
    }
    let mut messages = Vec::new();
    let mut damaged = None;
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = messages.len() + 1;
        let mut cursor = rest;
        let len = match prost::encoding::decode_varint(&mut cursor) {
            Ok(len) => usize::try_from(len).unwrap_or(usize::MAX),
            Err(e) => {
                damaged = Some((n, format!("bad length prefix: {e}")));
                break;
            }
        };
        if len > cursor.len() {
            damaged = Some((
                n,
                format!("{len} bytes announced, {} left (truncated)", cursor.len()),
            ));
            break;
        }
        messages.push((n, &cursor[..len]));
        rest = &cursor[len..];
    }
    Split {
        messages,
        json_only: false,
        damaged,
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::codec::Envelope;
    use crate::codec::json::encode_record;
    use crate::codec::seal::seal_json_payload;
    use crate::config::Stream;
    use crate::ledger::Chain;
    use crate::ledger::capture::{REGULATED_CHAIN, sealed_body};

    /// A payload signed by an older build (labels as `[key, value]` pairs), published by this one.
    /// `tamper`: change a label value in the published body.
    fn published_after_upgrade(signed_labels: &str, tamper: bool) -> Captured {
        let old = format!(
            r#"{{"record":"metrics","calc":"potline","ts":9,"metrics":[{{"name":"m_t","value":1.5,"unit":"t","quality":"good","ts":9,"labels":{signed_labels}}}]}}"#
        );
        let seal = Chain::new("s", REGULATED_CHAIN).append(&SigningKey::from_bytes(&[3; 32]), old);
        // The spool body holds the old payload; this build decodes it and encodes its JSON form.
        let record: Record = serde_json::from_slice(&sealed_body(&seal)).unwrap();
        let payload = encode_record(Envelope::new("s", Stream::Metrics, 1, false), &record);
        assert!(
            std::str::from_utf8(&payload)
                .unwrap()
                .contains(r#""labels":{"line":"potline1","period":"day"}"#)
        );
        let payload = if tamper {
            String::from_utf8(payload)
                .unwrap()
                .replace("potline1", "potline2")
                .into_bytes()
        } else {
            payload
        };
        read_message(&seal_json_payload(payload, &seal), false).unwrap()
    }

    #[test]
    fn a_payload_signed_with_label_pairs_matches_its_body_with_a_labels_object() {
        let pairs = r#"[["line","potline1"],["period","day"]]"#;
        for (tamper, matches) in [(false, true), (true, false)] {
            let Captured::Sealed { body_matches, .. } = published_after_upgrade(pairs, tamper)
            else {
                panic!("not sealed");
            };
            assert_eq!(body_matches, matches, "tamper {tamper}");
        }
    }
}
