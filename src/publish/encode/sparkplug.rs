//! The Sparkplug B 3.0 payload encoder (pure): smeltwatch is the edge node, each Modbus device a
//! Sparkplug device, each configured point a device metric.
//!
//! What this module guarantees (the statements of the Sparkplug 3.0 specification it implements,
//! see PROTOCOLS.md §3):
//! - **Aliases** are assigned deterministically from the configuration: device metrics get 1, 2, 3…
//!   in configuration order of sources, devices and points ([`EdgeNodeModel::from_sources`]), so
//!   the same configuration gives the same aliases after every restart. Aliases are unique across
//!   the whole edge node. The node metrics `bdSeq` and `Node Control/Rebirth` are never aliased.
//! - **NBIRTH** ([`nbirth`]) carries every node metric: `bdSeq` (Int64) and `Node Control/Rebirth`
//!   (Boolean, false), with seq 0. **NDEATH** ([`ndeath`]) carries only `bdSeq` and no seq.
//! - **DBIRTH** ([`dbirth`]) carries every metric of the device with name, alias, datatype, its
//!   current value (or `is_null`) and the timestamp of its acquisition.
//! - **NDATA/DDATA** ([`ddata`]) carry aliases only (no name, no datatype), only the metrics that
//!   changed ([`DeviceState::changes`]: report by exception), each with its acquisition timestamp;
//!   `is_historical` marks replayed data. **DDEATH** ([`ddeath`]) carries a timestamp and seq.
//! - **seq** is one counter per edge node, 0 on NBIRTH, +1 per message, 255 wraps to 0
//!   ([`SeqCounter`]).
//! - **Quality** is the metric property `Quality` (Int32): 192 good, 500 stale, 0 for every other
//!   quality ([`quality_code`]). BIRTH metrics always carry it; DATA metrics carry it when the
//!   quality is not good or has changed since it was last reported.
//! - **Integers** are encoded as Eclipse Tahu does: signed values are sign-extended into the
//!   unsigned field (`Int16 -5` → `int_value 4294967291`), and decoded leniently
//!   ([`decode_value`]: the low bits of either field, sign-extended to the datatype's width).
//!
//! Nothing here does I/O or reads a clock: every timestamp and counter is an argument.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;

use crate::config::{DataType as WireType, PointConfig, SourceConfig};
use crate::model::{Quality, Reading, ReadingBatch, Timestamp, Value};

/// The prost types generated from `proto/sparkplug_b.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/org.eclipse.tahu.protobuf.rs"));
}

use pb::DataType;
use pb::payload::Metric as PbMetric;
use pb::payload::metric::Value as PbValue;

/// The topic namespace of Sparkplug B.
pub const NAMESPACE: &str = "spBv1.0";
/// Name of the birth/death sequence metric.
pub const BD_SEQ: &str = "bdSeq";
/// Name of the node's rebirth command metric.
pub const NODE_REBIRTH: &str = "Node Control/Rebirth";
/// Name of the quality property.
pub const QUALITY_PROPERTY: &str = "Quality";
/// `Quality` property value of a good value.
pub const QUALITY_GOOD: i32 = 192;
/// `Quality` property value of a bad value.
pub const QUALITY_BAD: i32 = 0;
/// `Quality` property value of a stale value.
pub const QUALITY_STALE: i32 = 500;

/// The Sparkplug message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Node birth.
    NBirth,
    /// Node death (the Will, or before an intentional disconnect).
    NDeath,
    /// Node data.
    NData,
    /// Node command (from a host).
    NCmd,
    /// Device birth.
    DBirth,
    /// Device death.
    DDeath,
    /// Device data.
    DData,
    /// Device command (from a host).
    DCmd,
}

impl MessageType {
    /// The topic element (`NBIRTH`, `DDATA` …).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::NBirth => "NBIRTH",
            MessageType::NDeath => "NDEATH",
            MessageType::NData => "NDATA",
            MessageType::NCmd => "NCMD",
            MessageType::DBirth => "DBIRTH",
            MessageType::DDeath => "DDEATH",
            MessageType::DData => "DDATA",
            MessageType::DCmd => "DCMD",
        }
    }
}

/// `spBv1.0/{group}/{type}/{edge}[/{device}]`.
pub fn topic(
    group_id: &str,
    kind: MessageType,
    edge_node_id: &str,
    device: Option<&str>,
) -> String {
    match device {
        Some(d) => format!(
            "{NAMESPACE}/{group_id}/{}/{edge_node_id}/{d}",
            kind.as_str()
        ),
        None => format!("{NAMESPACE}/{group_id}/{}/{edge_node_id}", kind.as_str()),
    }
}

/// The `Quality` property value of a quality: 192 good, 500 stale, 0 (bad) for the rest.
pub fn quality_code(q: Quality) -> i32 {
    match q {
        Quality::Good => QUALITY_GOOD,
        Quality::Stale => QUALITY_STALE,
        _ => QUALITY_BAD,
    }
}

/// The Sparkplug datatype of a configured point: integers keep their width and signedness when
/// scale and offset are identity (the decoder then yields integers), anything scaled is Double.
pub fn datatype_for(point: &PointConfig) -> DataType {
    let identity = point.scale == 1.0 && point.offset == 0.0;
    match point.data_type {
        WireType::Bool { .. } => DataType::Boolean,
        WireType::Ascii { .. } => DataType::String,
        _ if !identity => DataType::Double,
        WireType::U16 => DataType::UInt16,
        WireType::I16 => DataType::Int16,
        WireType::U32 => DataType::UInt32,
        WireType::I32 => DataType::Int32,
        WireType::U64 => DataType::UInt64,
        WireType::I64 => DataType::Int64,
        WireType::F32 => DataType::Float,
        WireType::F64 => DataType::Double,
    }
}

/// One device metric: a configured point.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricModel {
    /// Metric name: the point name.
    pub name: Arc<str>,
    /// Alias, unique across the edge node, from 1.
    pub alias: u64,
    /// Sparkplug datatype.
    pub datatype: DataType,
}

/// One Sparkplug device: a configured Modbus device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceModel {
    /// Device id: the device name.
    pub name: Arc<str>,
    /// Metrics in configuration order.
    pub metrics: Vec<MetricModel>,
    index: HashMap<Arc<str>, usize>,
}

impl DeviceModel {
    /// Build a device from its metrics (in the order given).
    pub fn new(name: Arc<str>, metrics: Vec<MetricModel>) -> Self {
        let index = metrics
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), i))
            .collect();
        DeviceModel {
            name,
            metrics,
            index,
        }
    }

    /// The index of a metric by point name.
    pub fn metric_index(&self, point: &str) -> Option<usize> {
        self.index.get(point).copied()
    }
}

/// Every device and metric of the edge node, with their aliases.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EdgeNodeModel {
    /// Devices in configuration order.
    pub devices: Vec<DeviceModel>,
    index: HashMap<Arc<str>, usize>,
}

impl EdgeNodeModel {
    /// The model of the configured sources: aliases 1, 2, 3… in configuration order of sources,
    /// devices and points.
    pub fn from_sources(sources: &[SourceConfig]) -> Self {
        let mut next_alias = 1u64;
        let devices = sources
            .iter()
            .flat_map(|s| &s.devices)
            .map(|d| {
                let metrics = d
                    .points
                    .iter()
                    .map(|p| {
                        let alias = next_alias;
                        next_alias += 1;
                        MetricModel {
                            name: p.name.clone(),
                            alias,
                            datatype: datatype_for(p),
                        }
                    })
                    .collect();
                DeviceModel::new(d.name.clone(), metrics)
            })
            .collect();
        Self::new(devices)
    }

    /// A model from explicit devices (aliases as given).
    pub fn new(devices: Vec<DeviceModel>) -> Self {
        let index = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.clone(), i))
            .collect();
        EdgeNodeModel { devices, index }
    }

    /// The index of a device by name.
    pub fn device_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
}

/// The edge node's message sequence number: 0 on NBIRTH, +1 per message, wrapping 255 → 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeqCounter {
    next: u8,
}

impl SeqCounter {
    /// The seq for an NBIRTH (always 0); the next message gets 1.
    pub fn birth(&mut self) -> u64 {
        self.next = 1;
        0
    }

    /// The seq for the next message after the NBIRTH.
    pub fn next_seq(&mut self) -> u64 {
        let s = self.next;
        self.next = self.next.wrapping_add(1);
        u64::from(s)
    }
}

/// The last value and quality reported for each metric of one device, for report by exception.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceState {
    last: Vec<Option<Reading>>,
}

/// A metric to put into a DATA message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change<'a> {
    /// Index of the metric in its [`DeviceModel`].
    pub metric: usize,
    /// The new reading.
    pub reading: &'a Reading,
    /// Whether to send the `Quality` property (not good, or changed since last reported).
    pub with_quality: bool,
}

impl DeviceState {
    /// An empty state for a device with `metrics` metrics.
    pub fn new(metrics: usize) -> Self {
        DeviceState {
            last: vec![None; metrics],
        }
    }

    /// The last reading of each metric, for a DBIRTH.
    pub fn current(&self) -> &[Option<Reading>] {
        &self.last
    }

    /// Record every reading of a batch (a BIRTH follows, which reports them all).
    pub fn absorb(&mut self, device: &DeviceModel, batch: &ReadingBatch) {
        for r in &batch.readings {
            if let Some(i) = device.metric_index(&r.point) {
                self.last[i] = Some(r.clone());
            }
        }
    }

    /// The readings of `batch` whose value or quality differs from the last reported one (report
    /// by exception), recording them as reported. Points that are not in the model are ignored.
    pub fn changes<'a>(
        &mut self,
        device: &DeviceModel,
        batch: &'a ReadingBatch,
    ) -> Vec<Change<'a>> {
        let mut out = Vec::new();
        for r in &batch.readings {
            let Some(i) = device.metric_index(&r.point) else {
                continue;
            };
            let (changed, quality_changed) = match &self.last[i] {
                None => (true, true),
                Some(prev) => (
                    prev.value != r.value || prev.quality != r.quality,
                    prev.quality != r.quality,
                ),
            };
            if changed {
                out.push(Change {
                    metric: i,
                    reading: r,
                    with_quality: quality_changed || r.quality != Quality::Good,
                });
                self.last[i] = Some(r.clone());
            }
        }
        out
    }
}

/// Whether a device stopped answering: it returned readings and every one is `comm_fail`.
pub fn device_is_dead(batch: &ReadingBatch) -> bool {
    !batch.readings.is_empty()
        && batch
            .readings
            .iter()
            .all(|r| r.quality == Quality::CommFail)
}

/// Serialise a payload.
pub fn encode(payload: &pb::Payload) -> Vec<u8> {
    payload.encode_to_vec()
}

/// Parse a payload.
pub fn decode(bytes: &[u8]) -> Result<pb::Payload, prost::DecodeError> {
    pb::Payload::decode(bytes)
}

fn ms(ts: Timestamp) -> u64 {
    u64::try_from(ts.unix_ms()).unwrap_or(0)
}

fn bd_seq_metric(bd_seq: u64, ts: Timestamp) -> PbMetric {
    PbMetric {
        name: Some(BD_SEQ.into()),
        timestamp: Some(ms(ts)),
        datatype: Some(DataType::Int64 as u32),
        value: Some(PbValue::LongValue(bd_seq)),
        ..Default::default()
    }
}

/// NBIRTH: `bdSeq` and `Node Control/Rebirth` (false, never aliased), seq 0.
pub fn nbirth(bd_seq: u64, ts: Timestamp) -> pb::Payload {
    pb::Payload {
        timestamp: Some(ms(ts)),
        seq: Some(0),
        metrics: vec![
            bd_seq_metric(bd_seq, ts),
            PbMetric {
                name: Some(NODE_REBIRTH.into()),
                timestamp: Some(ms(ts)),
                datatype: Some(DataType::Boolean as u32),
                value: Some(PbValue::BooleanValue(false)),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// NDEATH: only `bdSeq`, no seq.
pub fn ndeath(bd_seq: u64, ts: Timestamp) -> pb::Payload {
    pb::Payload {
        timestamp: Some(ms(ts)),
        metrics: vec![bd_seq_metric(bd_seq, ts)],
        ..Default::default()
    }
}

fn quality_props(q: Quality) -> pb::payload::PropertySet {
    pb::payload::PropertySet {
        keys: vec![QUALITY_PROPERTY.into()],
        values: vec![pb::payload::PropertyValue {
            r#type: Some(DataType::Int32 as u32),
            is_null: None,
            value: Some(pb::payload::property_value::Value::IntValue(
                quality_code(q) as u32,
            )),
        }],
    }
}

/// DBIRTH: every metric of the device with name, alias, datatype, current value (or `is_null`
/// when none was ever read), quality and acquisition timestamp. A metric never read gets `ts`.
pub fn dbirth(
    device: &DeviceModel,
    current: &[Option<Reading>],
    seq: u64,
    ts: Timestamp,
) -> pb::Payload {
    let metrics = device
        .metrics
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let reading = current.get(i).and_then(Option::as_ref);
            let mut metric = PbMetric {
                name: Some(m.name.to_string()),
                alias: Some(m.alias),
                datatype: Some(m.datatype as u32),
                timestamp: Some(ms(reading.map_or(ts, |r| r.ts))),
                properties: Some(quality_props(
                    reading.map_or(Quality::CommFail, |r| r.quality),
                )),
                ..Default::default()
            };
            set_value(
                &mut metric,
                m.datatype,
                reading.and_then(|r| r.value.as_ref()),
            );
            metric
        })
        .collect();
    pb::Payload {
        timestamp: Some(ms(ts)),
        seq: Some(seq),
        metrics,
        ..Default::default()
    }
}

/// DDATA (or NDATA): the changed metrics by alias only, each with its acquisition timestamp;
/// `historical` sets `is_historical` on every metric (replayed data).
pub fn ddata(
    device: &DeviceModel,
    changes: &[Change<'_>],
    seq: u64,
    ts: Timestamp,
    historical: bool,
) -> pb::Payload {
    let metrics = changes
        .iter()
        .filter_map(|c| {
            let m = device.metrics.get(c.metric)?;
            let mut metric = PbMetric {
                alias: Some(m.alias),
                timestamp: Some(ms(c.reading.ts)),
                is_historical: historical.then_some(true),
                properties: c.with_quality.then(|| quality_props(c.reading.quality)),
                ..Default::default()
            };
            set_value(&mut metric, m.datatype, c.reading.value.as_ref());
            Some(metric)
        })
        .collect();
    pb::Payload {
        timestamp: Some(ms(ts)),
        seq: Some(seq),
        metrics,
        ..Default::default()
    }
}

/// DDEATH: timestamp and seq, no metrics.
pub fn ddeath(seq: u64, ts: Timestamp) -> pb::Payload {
    pb::Payload {
        timestamp: Some(ms(ts)),
        seq: Some(seq),
        ..Default::default()
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    match *v {
        Value::Bool(b) => Some(i64::from(b)),
        Value::Int(i) => Some(i),
        Value::UInt(u) => Some(u as i64),
        Value::Float(f) if f.is_finite() => Some(f.round() as i64),
        _ => None,
    }
}

/// Put a value into a metric the way Eclipse Tahu does; `None` (or a value that does not fit the
/// datatype at all) sets `is_null`.
pub fn set_value(metric: &mut PbMetric, datatype: DataType, value: Option<&Value>) {
    let encoded = value.and_then(|v| encode_value(datatype, v));
    match encoded {
        Some(v) => metric.value = Some(v),
        None => metric.is_null = Some(true),
    }
}

/// The oneof value of `v` as `datatype`: Int8/16/32 sign-extended into `int_value`, UInt8/16/32
/// in `int_value`, Int64/UInt64/DateTime in `long_value` (two's complement), Float, Double,
/// Boolean, String/Text in their fields.
pub fn encode_value(datatype: DataType, v: &Value) -> Option<PbValue> {
    Some(match datatype {
        DataType::Int8 | DataType::Int16 | DataType::Int32 => {
            PbValue::IntValue(as_i64(v)? as i32 as u32)
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => {
            PbValue::IntValue(as_i64(v)? as u32)
        }
        DataType::Int64 | DataType::DateTime => PbValue::LongValue(as_i64(v)? as u64),
        DataType::UInt64 => match *v {
            Value::UInt(u) => PbValue::LongValue(u),
            _ => PbValue::LongValue(as_i64(v)? as u64),
        },
        DataType::Float => PbValue::FloatValue(v.as_f64()? as f32),
        DataType::Double => PbValue::DoubleValue(v.as_f64()?),
        DataType::Boolean => PbValue::BooleanValue(match *v {
            Value::Bool(b) => b,
            _ => v.as_f64()? != 0.0,
        }),
        DataType::String | DataType::Text | DataType::Uuid => PbValue::StringValue(match v {
            Value::Text(t) => t.clone(),
            other => other.to_string(),
        }),
        _ => return None,
    })
}

/// Read a metric value leniently: integer types accept either `int_value` or `long_value` and
/// take the low bits of the datatype's width, sign-extended for signed types (so both the Tahu
/// form, `4294967291`, and the zero-extended form, `65531`, of Int16 −5 give −5). `None` for a
/// null or a value field that does not match the datatype.
pub fn decode_value(datatype: DataType, value: Option<&PbValue>) -> Option<Value> {
    let raw = || match value? {
        PbValue::IntValue(i) => Some(u64::from(*i)),
        PbValue::LongValue(l) => Some(*l),
        _ => None,
    };
    Some(match datatype {
        DataType::Int8 => Value::Int(i64::from(raw()? as u8 as i8)),
        DataType::Int16 => Value::Int(i64::from(raw()? as u16 as i16)),
        DataType::Int32 => Value::Int(i64::from(raw()? as u32 as i32)),
        DataType::Int64 | DataType::DateTime => Value::Int(raw()? as i64),
        DataType::UInt8 => Value::UInt(u64::from(raw()? as u8)),
        DataType::UInt16 => Value::UInt(u64::from(raw()? as u16)),
        DataType::UInt32 => Value::UInt(u64::from(raw()? as u32)),
        DataType::UInt64 => Value::UInt(raw()?),
        DataType::Float => match value? {
            PbValue::FloatValue(f) => Value::Float(f64::from(*f)),
            _ => return None,
        },
        DataType::Double => match value? {
            PbValue::DoubleValue(d) => Value::Float(*d),
            _ => return None,
        },
        DataType::Boolean => match value? {
            PbValue::BooleanValue(b) => Value::Bool(*b),
            _ => return None,
        },
        DataType::String | DataType::Text | DataType::Uuid => match value? {
            PbValue::StringValue(s) => Value::Text(s.clone()),
            _ => return None,
        },
        _ => return None,
    })
}

/// The `Quality` property of a metric, if present.
pub fn metric_quality(metric: &PbMetric) -> Option<i32> {
    let props = metric.properties.as_ref()?;
    let i = props.keys.iter().position(|k| k == QUALITY_PROPERTY)?;
    match props.values.get(i)?.value.as_ref()? {
        pb::payload::property_value::Value::IntValue(v) => Some(*v as i32),
        pb::payload::property_value::Value::LongValue(v) => Some(*v as i32),
        _ => None,
    }
}

/// Whether an NCMD payload asks for a rebirth (`Node Control/Rebirth` = true, by name).
pub fn is_rebirth_request(payload: &pb::Payload) -> bool {
    payload.metrics.iter().any(|m| {
        m.name.as_deref() == Some(NODE_REBIRTH) && m.value == Some(PbValue::BooleanValue(true))
    })
}

/// An NCMD payload requesting a rebirth, as a host sends it.
pub fn rebirth_request(ts: Timestamp) -> pb::Payload {
    pb::Payload {
        timestamp: Some(ms(ts)),
        metrics: vec![PbMetric {
            name: Some(NODE_REBIRTH.into()),
            timestamp: Some(ms(ts)),
            datatype: Some(DataType::Boolean as u32),
            value: Some(PbValue::BooleanValue(true)),
            ..Default::default()
        }],
        ..Default::default()
    }
}
