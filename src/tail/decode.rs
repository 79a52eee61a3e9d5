//! Turns `(topic, payload)` pairs from the broker back into smeltwatch's records.
//!
//! Three encodings arrive on a broker that smeltwatch publishes to:
//! - **JSON** (`encode::json`): a `{"site","stream","seq",…}` object per record, or the retained
//!   `{"state":…}` object on the status topic;
//! - **protobuf** (`encode::protobuf`): one `smeltwatch.v1.Envelope` per record, decoded with
//!   [`protobuf::decode_record`];
//! - **Sparkplug B** (`encode::sparkplug`) under `spBv1.0/…`: DATA messages name their metrics by
//!   alias only, so the [`Decoder`] keeps, per edge node and device, the alias table of the last
//!   DBIRTH (an NBIRTH starts a new session and forgets the old tables). A DDATA metric whose alias
//!   no birth has announced yet is counted as unresolved and left out; it resolves from the next
//!   DBIRTH on. Report by exception leaves the `Quality` property out when it has not changed, so
//!   the decoder also remembers each metric's last quality.
//!
//! The encoding of a smeltwatch topic is recognised from the payload (a JSON object starts with
//! `{`, which is never the first byte of an Envelope, whose first field is a string with tag 1,
//! byte `0x0a`), so one `tail` reads uplinks of either encoding at once.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::codec::protobuf;
use crate::codec::sparkplug::{self as spb, MessageType, pb::DataType};
use crate::config::Stream;
use crate::model::{
    Aggregate, Event, MetricBatch, Quality, Reading, ReadingBatch, Record, Timestamp, Value,
};

/// A message that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not valid JSON of any smeltwatch payload.
    #[error("{topic}: not a smeltwatch JSON payload: {source}")]
    Json {
        /// The topic.
        topic: String,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// Not a `smeltwatch.v1.Envelope`.
    #[error("{topic}: {source}")]
    Protobuf {
        /// The topic.
        topic: String,
        /// The decoder's complaint.
        source: protobuf::DecodeError,
    },
    /// A `spBv1.0/…` topic whose payload is not a Sparkplug B payload.
    #[error("{topic}: not a Sparkplug B payload: {source}")]
    Sparkplug {
        /// The topic.
        topic: String,
        /// The decoder's complaint.
        source: prost::DecodeError,
    },
    /// A `spBv1.0/…` topic that is not `spBv1.0/{group}/{TYPE}/{edge}[/{device}]`.
    #[error("{topic}: not a Sparkplug B topic (spBv1.0/group/TYPE/edge[/device])")]
    SparkplugTopic {
        /// The topic.
        topic: String,
    },
}

/// The retained agent status (`smeltwatch/{site}/status`): online with the time it connected, or
/// offline (clean stop or Last Will).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AgentStatus {
    /// `online` or `offline`.
    pub state: String,
    /// The site.
    #[serde(default)]
    pub site: String,
    /// RFC 3339 time of the connection (online only).
    #[serde(default)]
    pub since: Option<String>,
    /// Agent version (online only).
    #[serde(default)]
    pub version: Option<String>,
}

/// One Sparkplug message, with its aliases resolved to names.
#[derive(Debug, Clone, PartialEq)]
pub struct SparkplugMessage {
    /// Group id.
    pub group: String,
    /// Edge node id.
    pub edge: String,
    /// Device id (device messages only).
    pub device: Option<String>,
    /// Message type.
    pub kind: MessageType,
    /// Payload seq (absent on NDEATH).
    pub seq: Option<u64>,
    /// `bdSeq` of an NBIRTH or NDEATH.
    pub bd_seq: Option<u64>,
    /// Payload timestamp.
    pub ts: Option<Timestamp>,
    /// The device's metrics as readings (DBIRTH and DDATA): source = edge node, device = device.
    pub batch: Option<ReadingBatch>,
    /// Whether the metrics are marked `is_historical` (replayed after an outage).
    pub historical: bool,
    /// DDATA metrics left out because no birth announced their alias.
    pub unresolved: usize,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A record of one of the four streams (JSON or protobuf).
    Record {
        /// Site.
        site: String,
        /// Stream.
        stream: Stream,
        /// Sequence number within `(site, stream)`.
        seq: u64,
        /// Replayed after an outage, behind newer data.
        historical: bool,
        /// The record.
        record: Record,
    },
    /// The retained status of an uplink's agent.
    Status {
        /// The status topic (one per uplink template and site).
        topic: String,
        /// The payload.
        status: AgentStatus,
    },
    /// A Sparkplug B message.
    Sparkplug(SparkplugMessage),
    /// An empty payload on a smeltwatch topic: a retained message (the status) being cleared.
    Cleared {
        /// The topic.
        topic: String,
    },
}

/// One known metric of a Sparkplug device (from its DBIRTH).
#[derive(Debug, Clone)]
struct AliasEntry {
    name: Arc<str>,
    datatype: DataType,
    quality: Quality,
}

/// Decodes messages; keeps the Sparkplug alias tables announced by births.
#[derive(Debug, Default)]
pub struct Decoder {
    /// `(group, edge)` → device → alias → metric.
    births: HashMap<(String, String), HashMap<String, HashMap<u64, AliasEntry>>>,
}

impl Decoder {
    /// A decoder that has seen no birth yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode one message.
    pub fn decode(&mut self, topic: &str, payload: &[u8]) -> Result<Message, DecodeError> {
        if topic.starts_with(spb::NAMESPACE) && topic[spb::NAMESPACE.len()..].starts_with('/') {
            return self.sparkplug(topic, payload).map(Message::Sparkplug);
        }
        if payload.is_empty() {
            return Ok(Message::Cleared {
                topic: topic.to_owned(),
            });
        }
        if payload.first() == Some(&b'{') {
            decode_json(topic, payload)
        } else {
            let d = protobuf::decode_record(payload).map_err(|source| DecodeError::Protobuf {
                topic: topic.to_owned(),
                source,
            })?;
            Ok(Message::Record {
                site: d.site,
                stream: d.stream,
                seq: d.seq,
                historical: d.historical,
                record: d.record,
            })
        }
    }

    fn sparkplug(&mut self, topic: &str, payload: &[u8]) -> Result<SparkplugMessage, DecodeError> {
        let bad_topic = || DecodeError::SparkplugTopic {
            topic: topic.to_owned(),
        };
        let (group, kind, edge, device) = sparkplug_topic(topic).ok_or_else(bad_topic)?;
        let p = spb::decode(payload).map_err(|source| DecodeError::Sparkplug {
            topic: topic.to_owned(),
            source,
        })?;
        let node_key = (group.to_owned(), edge.to_owned());
        let mut msg = SparkplugMessage {
            group: group.to_owned(),
            edge: edge.to_owned(),
            device: device.map(str::to_owned),
            kind,
            seq: p.seq,
            bd_seq: None,
            ts: p.timestamp.map(|t| Timestamp(t as i64)),
            batch: None,
            historical: false,
            unresolved: 0,
        };
        match kind {
            MessageType::NBirth => {
                // A new session: aliases of the previous one no longer hold.
                self.births.insert(node_key, HashMap::new());
                msg.bd_seq = bd_seq(&p);
            }
            MessageType::NDeath => {
                self.births.remove(&node_key);
                msg.bd_seq = bd_seq(&p);
            }
            MessageType::DBirth => {
                let device = device.ok_or_else(bad_topic)?;
                let (table, readings) = birth_table(&p, msg.ts);
                self.births
                    .entry(node_key)
                    .or_default()
                    .insert(device.to_owned(), table);
                msg.batch = Some(batch(edge, device, msg.ts, readings));
            }
            MessageType::DData | MessageType::NData => {
                let table = device.and_then(|d| {
                    self.births
                        .get_mut(&node_key)
                        .and_then(|devices| devices.get_mut(d))
                });
                let readings = match table {
                    Some(table) => resolve_data(table, &p, &mut msg),
                    None => {
                        msg.unresolved = p.metrics.len();
                        Vec::new()
                    }
                };
                if let Some(device) = device {
                    msg.batch = Some(batch(edge, device, msg.ts, readings));
                }
            }
            MessageType::DDeath | MessageType::NCmd | MessageType::DCmd => {}
        }
        Ok(msg)
    }
}

/// `spBv1.0/group/KIND/edge[/device]`: group, message type, edge node and device, or `None` for
/// a topic of another shape or an unknown type.
fn sparkplug_topic(topic: &str) -> Option<(&str, MessageType, &str, Option<&str>)> {
    let parts: Vec<&str> = topic.split('/').collect();
    let (group, kind, edge, device) = match parts.as_slice() {
        [_, g, k, e] => (*g, *k, *e, None),
        [_, g, k, e, d] => (*g, *k, *e, Some(*d)),
        _ => return None,
    };
    let kind = match kind {
        "NBIRTH" => MessageType::NBirth,
        "NDEATH" => MessageType::NDeath,
        "NDATA" => MessageType::NData,
        "NCMD" => MessageType::NCmd,
        "DBIRTH" => MessageType::DBirth,
        "DDEATH" => MessageType::DDeath,
        "DDATA" => MessageType::DData,
        "DCMD" => MessageType::DCmd,
        _ => return None,
    };
    Some((group, kind, edge, device))
}

/// The `bdSeq` metric of a node birth or death certificate.
fn bd_seq(p: &spb::pb::Payload) -> Option<u64> {
    p.metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(spb::BD_SEQ))
        .and_then(|m| match m.value {
            Some(spb::pb::payload::metric::Value::LongValue(v)) => Some(v),
            Some(spb::pb::payload::metric::Value::IntValue(v)) => Some(u64::from(v)),
            _ => None,
        })
}

/// A device birth's alias table (name, data type and quality by alias) and its readings.
fn birth_table(
    p: &spb::pb::Payload,
    ts: Option<Timestamp>,
) -> (HashMap<u64, AliasEntry>, Vec<Reading>) {
    let mut table = HashMap::new();
    let mut readings = Vec::with_capacity(p.metrics.len());
    for m in &p.metrics {
        let Some(name) = m.name.as_deref() else {
            continue;
        };
        let datatype = m
            .datatype
            .and_then(|d| DataType::try_from(d as i32).ok())
            .unwrap_or(DataType::Unknown);
        let quality = quality_of(spb::metric_quality(m), Quality::Good);
        let name: Arc<str> = Arc::from(name);
        readings.push(reading(name.clone(), datatype, m, quality, ts));
        if let Some(alias) = m.alias {
            table.insert(
                alias,
                AliasEntry {
                    name,
                    datatype,
                    quality,
                },
            );
        }
    }
    (table, readings)
}

/// The readings of a data message through the birth's alias `table`, whose qualities it
/// updates; counts the metrics with no known alias in `msg.unresolved` and marks `msg`
/// historical if any metric is.
fn resolve_data(
    table: &mut HashMap<u64, AliasEntry>,
    p: &spb::pb::Payload,
    msg: &mut SparkplugMessage,
) -> Vec<Reading> {
    let mut readings = Vec::with_capacity(p.metrics.len());
    let mut unresolved = 0;
    for m in &p.metrics {
        let entry = m.alias.and_then(|a| table.get_mut(&a));
        let Some(entry) = entry else {
            unresolved += 1;
            continue;
        };
        entry.quality = quality_of(spb::metric_quality(m), entry.quality);
        msg.historical |= m.is_historical == Some(true);
        readings.push(reading(
            entry.name.clone(),
            entry.datatype,
            m,
            entry.quality,
            msg.ts,
        ));
    }
    msg.unresolved = unresolved;
    readings
}

/// 192 good, 500 stale; Sparkplug's "bad" (0, or anything else) carries no reason and is shown
/// as `comm_fail`. No property: `unchanged`.
fn quality_of(code: Option<i32>, unchanged: Quality) -> Quality {
    match code {
        None => unchanged,
        Some(spb::QUALITY_GOOD) => Quality::Good,
        Some(spb::QUALITY_STALE) => Quality::Stale,
        Some(_) => Quality::CommFail,
    }
}

fn reading(
    name: Arc<str>,
    datatype: DataType,
    m: &spb::pb::payload::Metric,
    quality: Quality,
    payload_ts: Option<Timestamp>,
) -> Reading {
    let value = if m.is_null == Some(true) {
        None
    } else {
        spb::decode_value(datatype, m.value.as_ref())
    };
    Reading {
        point: name,
        value,
        unit: Arc::from(""),
        quality,
        ts: m
            .timestamp
            .map(|t| Timestamp(t as i64))
            .or(payload_ts)
            .unwrap_or(Timestamp(0)),
    }
}

fn batch(edge: &str, device: &str, ts: Option<Timestamp>, readings: Vec<Reading>) -> ReadingBatch {
    ReadingBatch {
        source: Arc::from(edge),
        device: Arc::from(device),
        unit_id: 0,
        poll_interval_ms: 0,
        scheduled: ts.unwrap_or(Timestamp(0)),
        readings,
    }
}

/// The header every JSON record payload starts with (the status payload has none of it).
#[derive(Deserialize)]
struct Header {
    site: String,
    stream: Option<Stream>,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    historical: bool,
}

/// A live batch as `encode::json` writes it (timestamps as RFC 3339 and `ts_ms`).
#[derive(Deserialize)]
struct BatchJson {
    source: Arc<str>,
    device: Arc<str>,
    unit_id: u8,
    poll_interval_ms: u64,
    scheduled: String,
    readings: Vec<ReadingJson>,
}

#[derive(Deserialize)]
struct ReadingJson {
    point: Arc<str>,
    value: Option<Value>,
    unit: Arc<str>,
    quality: Quality,
    ts_ms: i64,
}

fn decode_json(topic: &str, payload: &[u8]) -> Result<Message, DecodeError> {
    let err = |source| DecodeError::Json {
        topic: topic.to_owned(),
        source,
    };
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(err)?;
    if value.get("state").is_some() && value.get("stream").is_none() {
        let status: AgentStatus = serde_json::from_value(value).map_err(err)?;
        return Ok(Message::Status {
            topic: topic.to_owned(),
            status,
        });
    }
    let header = Header::deserialize(&value).map_err(err)?;
    let Some(stream) = header.stream else {
        return Err(err(serde::de::Error::missing_field("stream")));
    };
    let record = match stream {
        Stream::Live => {
            let b = BatchJson::deserialize(&value).map_err(err)?;
            let scheduled = humantime::parse_rfc3339(&b.scheduled)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(Timestamp(0), |d| Timestamp(d.as_millis() as i64));
            Record::Batch(ReadingBatch {
                source: b.source,
                device: b.device,
                unit_id: b.unit_id,
                poll_interval_ms: b.poll_interval_ms,
                scheduled,
                readings: b
                    .readings
                    .into_iter()
                    .map(|r| Reading {
                        point: r.point,
                        value: r.value,
                        unit: r.unit,
                        quality: r.quality,
                        ts: Timestamp(r.ts_ms),
                    })
                    .collect(),
            })
        }
        // From the bytes, not `value`: a `serde_json::Value` object sorts its keys, and the
        // labels object's key order is the metric's label order.
        Stream::Metrics => {
            Record::Metrics(serde_json::from_slice::<MetricBatch>(payload).map_err(err)?)
        }
        Stream::Events => Record::Event(Event::deserialize(&value).map_err(err)?),
        Stream::Emissions => Record::Aggregate(Aggregate::deserialize(&value).map_err(err)?),
    };
    Ok(Message::Record {
        site: header.site,
        stream,
        seq: header.seq,
        historical: header.historical,
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Envelope, json, sparkplug as enc};
    use crate::model::{EventPhase, Metric};

    const T0: i64 = 1_764_300_253_000;

    fn batch_record() -> Record {
        Record::Batch(ReadingBatch {
            source: "potline1".into(),
            device: "pot_003".into(),
            unit_id: 12,
            poll_interval_ms: 1000,
            scheduled: Timestamp(T0),
            readings: vec![
                Reading {
                    point: "cell_voltage_v".into(),
                    value: Some(Value::Float(4.061)),
                    unit: "V".into(),
                    quality: Quality::Good,
                    ts: Timestamp(T0 + 12),
                },
                Reading {
                    point: "anode_effect".into(),
                    value: Some(Value::Bool(false)),
                    unit: "".into(),
                    quality: Quality::Good,
                    ts: Timestamp(T0 + 12),
                },
                Reading {
                    point: "feed_shots".into(),
                    value: None,
                    unit: "shots".into(),
                    quality: Quality::CommFail,
                    ts: Timestamp(T0 + 310),
                },
            ],
        })
    }

    fn records() -> Vec<(Stream, Record)> {
        vec![
            (Stream::Live, batch_record()),
            (
                Stream::Metrics,
                Record::Metrics(MetricBatch {
                    calc: "potline".into(),
                    ts: Timestamp(T0),
                    metrics: vec![Metric {
                        name: "line_current_ka".into(),
                        value: Some(400.25),
                        unit: "kA".into(),
                        quality: Quality::Good,
                        ts: Timestamp(T0),
                        // Out of key order: decoding keeps the labels object's order.
                        labels: vec![
                            ("period".into(), "minute".into()),
                            ("line".into(), "potline1".into()),
                        ],
                    }],
                }),
            ),
            (
                Stream::Events,
                Record::Event(Event {
                    kind: "anode_effect".into(),
                    subject: "potline1/pot_003".into(),
                    phase: EventPhase::End,
                    ts: Timestamp(T0),
                    attributes: vec![
                        ("duration_s".into(), Value::Float(42.5)),
                        ("start".into(), Value::Int(T0 - 42_500)),
                    ],
                    message: "pot_003 anode effect ended after 42.5 s".into(),
                }),
            ),
            (
                Stream::Emissions,
                Record::Aggregate(Aggregate {
                    subject: "gtc1_stack".into(),
                    quantity: "so2_kg_h".into(),
                    unit: "kg/h".into(),
                    period: crate::model::Period::Minute,
                    start: Timestamp(T0 - 60_000),
                    end: Timestamp(T0),
                    avg: Some(1.5),
                    min: Some(1.25),
                    max: Some(1.75),
                    total: Some(0.025),
                    total_unit: Some("kg".into()),
                    samples: 6,
                    expected: 6,
                    valid: true,
                    quality: Quality::Good,
                    substituted: 0,
                }),
            ),
        ]
    }

    #[test]
    fn json_and_protobuf_payloads_decode_to_the_encoded_record() {
        for (stream, record) in records() {
            let envelope = Envelope::new("s1", stream, 7, true);
            for (name, bytes) in [
                ("json", json::encode_record(envelope, &record)),
                ("protobuf", protobuf::encode_record(envelope, &record)),
            ] {
                let got = Decoder::new().decode("smeltwatch/s1/x", &bytes).unwrap();
                assert_eq!(
                    got,
                    Message::Record {
                        site: "s1".into(),
                        stream,
                        seq: 7,
                        historical: true,
                        record: record.clone(),
                    },
                    "{name} {stream:?}"
                );
            }
        }
    }

    #[test]
    fn status_payload_decodes_with_its_topic() {
        let got = Decoder::new()
            .decode(
                "smeltwatch/s1/status",
                br#"{"state":"online","site":"s1","since":"2026-11-28T03:24:13.000Z","version":"0.1.0"}"#,
            )
            .unwrap();
        let Message::Status { topic, status } = got else {
            panic!("{got:?}")
        };
        assert_eq!(topic, "smeltwatch/s1/status");
        assert_eq!(status.state, "online");
        assert_eq!(status.since.as_deref(), Some("2026-11-28T03:24:13.000Z"));
        let off = Decoder::new()
            .decode(
                "smeltwatch/s1/status",
                br#"{"state":"offline","site":"s1"}"#,
            )
            .unwrap();
        assert!(matches!(off, Message::Status { status, .. } if status.state == "offline"));
        let cleared = Decoder::new().decode("smeltwatch/s1/status", b"").unwrap();
        assert_eq!(
            cleared,
            Message::Cleared {
                topic: "smeltwatch/s1/status".into()
            }
        );
    }

    #[test]
    fn garbage_is_an_error_naming_the_topic() {
        let e = Decoder::new()
            .decode("smeltwatch/s1/live/a/b", b"{nope")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("smeltwatch/s1/live/a/b: not a smeltwatch JSON"),
            "{e}"
        );
        let e = Decoder::new()
            .decode("smeltwatch/s1/live/a/b", &[0xff, 0x01])
            .unwrap_err();
        assert!(e.to_string().starts_with("smeltwatch/s1/live/a/b:"), "{e}");
        let e = Decoder::new().decode("spBv1.0/g/NOPE/e", &[]).unwrap_err();
        assert!(matches!(e, DecodeError::SparkplugTopic { .. }), "{e}");
    }

    fn device() -> enc::DeviceModel {
        enc::DeviceModel::new(
            "pot_003".into(),
            vec![
                enc::MetricModel {
                    name: "cell_voltage_v".into(),
                    alias: 5,
                    datatype: DataType::Float,
                },
                enc::MetricModel {
                    name: "anode_effect".into(),
                    alias: 6,
                    datatype: DataType::Boolean,
                },
                enc::MetricModel {
                    name: "feed_shots".into(),
                    alias: 7,
                    datatype: DataType::UInt32,
                },
            ],
        )
    }

    fn readings_of(m: &Message) -> Vec<(String, Option<Value>, Quality)> {
        let Message::Sparkplug(s) = m else {
            panic!("{m:?}")
        };
        s.batch
            .as_ref()
            .unwrap()
            .readings
            .iter()
            .map(|r| (r.point.to_string(), r.value.clone(), r.quality))
            .collect()
    }

    #[test]
    fn sparkplug_aliases_resolve_from_the_dbirth_and_reset_with_an_nbirth() {
        let dev = device();
        let Record::Batch(b0) = batch_record() else {
            unreachable!()
        };
        let mut ds = enc::DeviceState::new(dev.metrics.len());
        ds.absorb(&dev, &b0);
        let nbirth = enc::encode(&enc::nbirth(3, Timestamp(T0)));
        let dbirth = enc::encode(&enc::dbirth(&dev, ds.current(), 1, Timestamp(T0)));
        let mut b1 = b0.clone();
        b1.readings[0].value = Some(Value::Float(9.5));
        b1.readings[1].value = Some(Value::Bool(true));
        let ddata = enc::encode(&enc::ddata(
            &dev,
            &ds.changes(&dev, &b1),
            2,
            Timestamp(T0 + 1000),
            false,
        ));

        let mut d = Decoder::new();
        // DATA before any birth: nothing can be named.
        let early = d.decode("spBv1.0/grp/DDATA/edge1/pot_003", &ddata).unwrap();
        assert!(matches!(&early, Message::Sparkplug(s) if s.unresolved == 2));
        assert!(readings_of(&early).is_empty());

        let n = d.decode("spBv1.0/grp/NBIRTH/edge1", &nbirth).unwrap();
        assert!(matches!(&n, Message::Sparkplug(s) if s.bd_seq == Some(3) && s.seq == Some(0)));
        let born = d
            .decode("spBv1.0/grp/DBIRTH/edge1/pot_003", &dbirth)
            .unwrap();
        assert_eq!(
            readings_of(&born),
            vec![
                (
                    "cell_voltage_v".into(),
                    Some(Value::Float(f64::from(4.061f32))),
                    Quality::Good
                ),
                (
                    "anode_effect".into(),
                    Some(Value::Bool(false)),
                    Quality::Good
                ),
                ("feed_shots".into(), None, Quality::CommFail),
            ]
        );
        let data = d.decode("spBv1.0/grp/DDATA/edge1/pot_003", &ddata).unwrap();
        assert_eq!(
            readings_of(&data),
            vec![
                (
                    "cell_voltage_v".into(),
                    Some(Value::Float(9.5)),
                    Quality::Good
                ),
                (
                    "anode_effect".into(),
                    Some(Value::Bool(true)),
                    Quality::Good
                ),
            ]
        );
        // A new session forgets the old aliases until the device is born again.
        d.decode("spBv1.0/grp/NBIRTH/edge1", &nbirth).unwrap();
        let after = d.decode("spBv1.0/grp/DDATA/edge1/pot_003", &ddata).unwrap();
        assert!(matches!(&after, Message::Sparkplug(s) if s.unresolved == 2));
    }
}
