//! The Sparkplug B 3.0 payload encoder (pure): smeltwatch is the edge node, each Modbus device a
//! Sparkplug device, each configured point a device metric, and the figures of the `metrics`
//! stream metrics of the node itself.
//!
//! What this module guarantees (the statements of the Sparkplug 3.0 specification it implements):
//! - **Aliases** are assigned deterministically from the configuration: device metrics get 1, 2, 3…
//!   in configuration order of sources, devices and points ([`EdgeNodeModel::from_sources`]), then
//!   the `live` derived points in `[[derived]]` order ([`EdgeNodeModel::with_derived`]), so the
//!   same configuration gives the same aliases after every restart; then the node metrics
//!   ([`EdgeNodeModel::with_node_metrics`]). Aliases are unique across the whole edge node. The
//!   node metrics `bdSeq` and `Node Control/Rebirth` are never aliased.
//! - **Derived devices**: each device of the `live` derived points (`derived/<device>`) is a
//!   Sparkplug device of its own, its points Double metrics. It is never dead: a derived value's
//!   bad quality travels in DATA, not as DDEATH.
//! - **Node metrics**: when the uplink carries the `metrics` stream, each calculator figure and
//!   each `metrics` derived point is a Double metric of the edge node, named by its place
//!   ([`NodeMetric`]: `calc/<calc>/<label values…>/<name>`, `derived/<device>/<name>`), declared
//!   in NBIRTH and reported by exception in NDATA like a device metric.
//! - **NBIRTH** ([`nbirth_with`]) carries every node metric: `bdSeq` (Int64), `Node
//!   Control/Rebirth` (Boolean, false) and the node metrics, with seq 0. **NDEATH** ([`ndeath`])
//!   carries only `bdSeq` and no seq.
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
//! - **Units**: a BIRTH metric whose point, derived point or figure declares a unit carries it as
//!   the property `engUnit` (String), beside `Quality`; DATA does not repeat it.
//! - **Integers** are encoded as Eclipse Tahu does: signed values are sign-extended into the
//!   unsigned field (`Int16 -5` → `int_value 4294967291`), and decoded leniently
//!   ([`decode_value`]: the low bits of either field, sign-extended to the datatype's width).
//!
//! Nothing here does I/O or reads a clock: every timestamp and counter is an argument.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;

use crate::calc::{CalcConfig, catalog};
use crate::config::{DataType as WireType, PointConfig, SourceConfig};
use crate::derived::config::{DerivedPoint, DerivedStream, SOURCE};
use crate::model::{Metric, MetricBatch, Quality, Reading, ReadingBatch, Timestamp, Value};

/// The prost types generated from `proto/sparkplug_b.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/org.eclipse.tahu.protobuf.rs"));
}

use pb::DataType;
use pb::payload::Metric as PbMetric;
use pb::payload::metric::Value as PbValue;

mod node;
mod state;
pub use node::*;
pub use state::*;

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
/// Name of the engineering-unit property (String), the one Ignition and other hosts read.
pub const ENG_UNIT_PROPERTY: &str = "engUnit";
/// First level of the name of a node metric that carries a calculator's figure.
pub const NODE_CALC_PREFIX: &str = "calc";
/// First level of the name of a node metric that carries a `metrics` derived point.
pub const NODE_DERIVED_PREFIX: &str = "derived";
/// The `calc` of the metric batches of the `metrics` derived points (the derived engine's, which
/// sits above this layer; a test checks that they agree).
const DERIVED_CALC: &str = "derived";

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

/// One Sparkplug device: a configured Modbus device, or the device of `live` derived points; or
/// the edge node's own metrics ([`EdgeNodeModel::node`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceModel {
    /// Device id: the device name.
    pub name: Arc<str>,
    /// Metrics in configuration order.
    pub metrics: Vec<MetricModel>,
    /// The derived device (`derived/<device>`) it stands for, if it is one: never dead, never
    /// written.
    pub derived: Option<Arc<str>>,
    /// The declared unit of each metric (empty: none), beside `metrics` rather than in
    /// [`MetricModel`] so that a model built by hand keeps its shape ([`DeviceModel::with_units`]).
    units: Vec<Arc<str>>,
    index: HashMap<Arc<str>, usize>,
}

impl DeviceModel {
    /// Build a device from its metrics (in the order given), without units.
    pub fn new(name: Arc<str>, metrics: Vec<MetricModel>) -> Self {
        let index = metrics
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), i))
            .collect();
        DeviceModel {
            name,
            metrics,
            derived: None,
            units: Vec::new(),
            index,
        }
    }

    /// This device with the unit of each metric, in the order of its metrics (an empty unit, or
    /// a missing one at the end, is none). Births carry them as `engUnit`.
    #[must_use]
    pub fn with_units(mut self, units: Vec<Arc<str>>) -> Self {
        self.units = units;
        self
    }

    /// The declared unit of metric `i`, if it has one.
    pub fn unit(&self, i: usize) -> Option<&str> {
        self.units.get(i).map(|u| &**u).filter(|u| !u.is_empty())
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
    /// The edge node's own metrics besides `bdSeq` and `Node Control/Rebirth`: the figures of
    /// the `metrics` stream ([`EdgeNodeModel::with_node_metrics`]), Double, in NBIRTH and NDATA.
    /// Its `name` is empty.
    pub node: DeviceModel,
    /// Where each metric of `node` comes from, in the same order.
    node_sources: Vec<NodeMetric>,
    /// `(calc, metric)` → the indexes in `node` of the node metrics of that name.
    node_keys: HashMap<(Arc<str>, Arc<str>), Vec<usize>>,
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
                let units = d.points.iter().map(|p| p.unit.clone()).collect();
                DeviceModel::new(d.name.clone(), metrics).with_units(units)
            })
            .collect();
        Self::new(devices)
    }

    /// A model from explicit devices (aliases as given), without node metrics.
    pub fn new(devices: Vec<DeviceModel>) -> Self {
        let index = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.clone(), i))
            .collect();
        EdgeNodeModel {
            devices,
            index,
            ..Default::default()
        }
    }

    /// The highest alias of the model (0 when it has none).
    fn last_alias(&self) -> u64 {
        self.devices
            .iter()
            .chain(std::iter::once(&self.node))
            .flat_map(|d| &d.metrics)
            .map(|m| m.alias)
            .max()
            .unwrap_or(0)
    }

    /// This model with the `live` derived points added: one device per derived device, in
    /// first-seen order, its points Double metrics with the aliases after the last one. The
    /// device id is the derived device's name, or `derived_<name>` when a configured device
    /// already has that name (two births on one topic would confuse every host). `metrics`
    /// derived points are node metrics ([`EdgeNodeModel::with_node_metrics`]).
    #[must_use]
    pub fn with_derived(self, derived: &[DerivedPoint]) -> Self {
        /// A derived device's metrics and their units, in `[[derived]]` order.
        struct Added {
            device: Arc<str>,
            metrics: Vec<MetricModel>,
            units: Vec<Arc<str>>,
        }
        let first_alias = self.last_alias() + 1;
        let mut devices = self.devices;
        let mut added: Vec<Added> = Vec::new();
        let live = derived.iter().filter(|p| p.stream == DerivedStream::Live);
        for (alias, p) in (first_alias..).zip(live) {
            let metric = MetricModel {
                name: p.name.clone(),
                alias,
                datatype: DataType::Double,
            };
            let i = match added.iter().position(|a| a.device == p.device) {
                Some(i) => i,
                None => {
                    added.push(Added {
                        device: p.device.clone(),
                        metrics: Vec::new(),
                        units: Vec::new(),
                    });
                    added.len() - 1
                }
            };
            added[i].metrics.push(metric);
            added[i].units.push(p.unit.clone());
        }
        for a in added {
            let mut id = a.device.to_string();
            while devices.iter().any(|d| *d.name == *id) {
                id = format!("derived_{id}");
            }
            let mut model = DeviceModel::new(Arc::from(id), a.metrics).with_units(a.units);
            model.derived = Some(a.device);
            devices.push(model);
        }
        Self {
            node: self.node,
            node_sources: self.node_sources,
            node_keys: self.node_keys,
            ..Self::new(devices)
        }
    }

    /// This model with the node metrics `metrics` added after the last alias, Double, in the
    /// order given. A metric whose name is already taken is left out: the first one keeps it.
    #[must_use]
    pub fn with_node_metrics(mut self, metrics: impl IntoIterator<Item = NodeMetric>) -> Self {
        let mut next_alias = self.last_alias() + 1;
        let mut sources = std::mem::take(&mut self.node_sources);
        let mut models = std::mem::take(&mut self.node.metrics);
        let mut taken: std::collections::HashSet<Arc<str>> =
            sources.iter().map(|s| s.name.clone()).collect();
        for m in metrics {
            if !taken.insert(m.name.clone()) {
                continue;
            }
            models.push(MetricModel {
                name: m.name.clone(),
                alias: next_alias,
                datatype: DataType::Double,
            });
            next_alias += 1;
            sources.push(m);
        }
        let units = sources.iter().map(|s| s.unit.clone()).collect();
        self.node = DeviceModel::new(Arc::from(""), models).with_units(units);
        self.node_keys.clear();
        for (i, s) in sources.iter().enumerate() {
            self.node_keys
                .entry((s.calc.clone(), s.metric.clone()))
                .or_default()
                .push(i);
        }
        self.node_sources = sources;
        self
    }

    /// Where each node metric comes from, in the order of [`EdgeNodeModel::node`]'s metrics.
    pub fn node_sources(&self) -> &[NodeMetric] {
        &self.node_sources
    }

    /// The node metric a metric of calculator `calc` is, if any: the first of its name whose
    /// [`Place`] it is.
    pub fn node_metric_index(&self, calc: &Arc<str>, metric: &Metric) -> Option<usize> {
        self.node_keys
            .get(&(calc.clone(), metric.name.clone()))?
            .iter()
            .copied()
            .find(|&i| self.node_sources[i].place.matches(&metric.labels))
    }

    /// A metric batch as readings of [`EdgeNodeModel::node`] (point = node metric name), for
    /// [`DeviceState::changes`] and [`ddata`]: its metrics that are node metrics, each with its
    /// value (Double), unit, quality and timestamp; the others are left out.
    pub fn node_batch(&self, batch: &MetricBatch) -> ReadingBatch {
        let readings = batch
            .metrics
            .iter()
            .filter_map(|m| {
                let i = self.node_metric_index(&batch.calc, m)?;
                Some(Reading {
                    point: self.node.metrics[i].name.clone(),
                    value: m.value.map(Value::Float),
                    unit: m.unit.clone(),
                    quality: m.quality,
                    ts: m.ts,
                })
            })
            .collect();
        ReadingBatch {
            source: Arc::from(""),
            device: batch.calc.clone(),
            unit_id: 0,
            poll_interval_ms: 0,
            scheduled: batch.ts,
            readings,
        }
    }

    /// The index of a device by name.
    pub fn device_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The index of the device a poll batch belongs to: a derived device for the batches of
    /// source `derived` ([`SOURCE`]), else the device of that name.
    pub fn batch_device(&self, batch: &ReadingBatch) -> Option<usize> {
        if *batch.source == *SOURCE
            && let Some(i) = self
                .devices
                .iter()
                .position(|d| d.derived.as_deref() == Some(&*batch.device))
        {
            return Some(i);
        }
        self.device_index(&batch.device)
            .filter(|&i| self.devices[i].derived.is_none())
    }
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

/// NBIRTH of a node without metrics of its own: `bdSeq` and `Node Control/Rebirth` (false,
/// never aliased), seq 0.
pub fn nbirth(bd_seq: u64, ts: Timestamp) -> pb::Payload {
    nbirth_with(bd_seq, &DeviceModel::default(), &[], ts)
}

/// NBIRTH: `bdSeq` and `Node Control/Rebirth` (false, never aliased), then every node metric
/// ([`EdgeNodeModel::node`]) as [`dbirth`] writes a device's metrics, with its last value
/// `current`; seq 0.
pub fn nbirth_with(
    bd_seq: u64,
    node: &DeviceModel,
    current: &[Option<Reading>],
    ts: Timestamp,
) -> pb::Payload {
    let mut metrics = vec![
        bd_seq_metric(bd_seq, ts),
        PbMetric {
            name: Some(NODE_REBIRTH.into()),
            timestamp: Some(ms(ts)),
            datatype: Some(DataType::Boolean as u32),
            value: Some(PbValue::BooleanValue(false)),
            ..Default::default()
        },
    ];
    metrics.extend(birth_metrics(node, current, ts));
    pb::Payload {
        timestamp: Some(ms(ts)),
        seq: Some(0),
        metrics,
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

/// The properties of a metric in a BIRTH: `Quality`, and `engUnit` (String) when the metric
/// declares a unit. DATA does not repeat the unit: it belongs to the metric's definition, which
/// hosts take from the birth.
fn birth_props(q: Quality, unit: Option<&str>) -> pb::payload::PropertySet {
    let mut props = quality_props(q);
    if let Some(unit) = unit {
        props.keys.push(ENG_UNIT_PROPERTY.into());
        props.values.push(pb::payload::PropertyValue {
            r#type: Some(DataType::String as u32),
            is_null: None,
            value: Some(pb::payload::property_value::Value::StringValue(
                unit.to_owned(),
            )),
        });
    }
    props
}

/// Every metric of `device` as a BIRTH carries it: name, alias, datatype, current value (or
/// `is_null`), quality, unit and acquisition timestamp (`ts` for one never read).
fn birth_metrics<'a>(
    device: &'a DeviceModel,
    current: &'a [Option<Reading>],
    ts: Timestamp,
) -> impl Iterator<Item = PbMetric> + 'a {
    device.metrics.iter().enumerate().map(move |(i, m)| {
        let reading = current.get(i).and_then(Option::as_ref);
        let mut metric = PbMetric {
            name: Some(m.name.to_string()),
            alias: Some(m.alias),
            datatype: Some(m.datatype as u32),
            timestamp: Some(ms(reading.map_or(ts, |r| r.ts))),
            properties: Some(birth_props(
                reading.map_or(Quality::CommFail, |r| r.quality),
                device.unit(i),
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
}

/// DBIRTH: every metric of the device with name, alias, datatype, current value (or `is_null`
/// when none was ever read), quality, unit (`engUnit`, when declared) and acquisition timestamp.
/// A metric never read gets `ts`.
pub fn dbirth(
    device: &DeviceModel,
    current: &[Option<Reading>],
    seq: u64,
    ts: Timestamp,
) -> pb::Payload {
    pb::Payload {
        timestamp: Some(ms(ts)),
        seq: Some(seq),
        metrics: birth_metrics(device, current, ts).collect(),
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

/// The `engUnit` property of a metric, if present.
pub fn metric_eng_unit(metric: &PbMetric) -> Option<&str> {
    let props = metric.properties.as_ref()?;
    let i = props.keys.iter().position(|k| k == ENG_UNIT_PROPERTY)?;
    match props.values.get(i)?.value.as_ref()? {
        pb::payload::property_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
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
#[cfg(test)]
mod tests;
