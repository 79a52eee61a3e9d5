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

use crate::calc::{CalcConfig, catalog, names};
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

/// A figure of the `metrics` stream that is a metric of the edge node itself (NBIRTH, NDATA):
/// where it comes from, and the name it has there.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeMetric {
    /// The Sparkplug metric name: `calc/<calc>/<label>[/<period>]/<metric>` for a calculator's
    /// figure ([`NodeMetric::calc`]), `derived/<device>/<name>` for a derived point
    /// ([`NodeMetric::derived`]).
    pub name: Arc<str>,
    /// The `calc` of the metric batches that carry it.
    pub calc: Arc<str>,
    /// Its name in those batches.
    pub metric: Arc<str>,
    /// Which of the metrics of that name it is.
    pub place: Place,
    /// The declared unit (empty: none).
    pub unit: Arc<str>,
}

/// Which metric of a batch a node metric stands for, among those of its calculator and name.
#[derive(Debug, Clone, PartialEq)]
pub enum Place {
    /// A derived point: the metric with exactly these labels (all that tells two points of one
    /// name apart).
    Labels(Vec<(Arc<str>, Arc<str>)>),
    /// A calculator's figure: the metric whose first label (the line, the smelter) has the value
    /// `first` and whose label [`PERIOD_LABEL`] is `period` (none: a minute's figure). Its other
    /// labels describe the value rather than place it (a period's `production` basis, measured
    /// or by Faraday, may change from one day to the next) and are not compared; a figure of one
    /// cell (label [`CELL_LABEL`]) is never a line's.
    Figure {
        /// The value of the first label.
        first: Arc<str>,
        /// The closed window, if it is one's.
        period: Option<Arc<str>>,
    },
}

/// The label of a calculator's figure that names its closed window (`day`, `month`, `ytd`).
pub const PERIOD_LABEL: &str = "period";
/// The label of a calculator's figure of one cell.
pub const CELL_LABEL: &str = "cell";

impl Place {
    fn matches(&self, labels: &[(Arc<str>, Arc<str>)]) -> bool {
        let value = |key: &str| labels.iter().find(|(k, _)| &**k == key).map(|(_, v)| v);
        match self {
            Place::Labels(l) => l.as_slice() == labels,
            Place::Figure { first, period } => {
                labels.first().map(|(_, v)| v) == Some(first)
                    && value(PERIOD_LABEL) == period.as_ref()
                    && value(CELL_LABEL).is_none()
            }
        }
    }
}

/// One level of a node metric name: a `/` inside a value would open another level, so it is
/// written `_`.
fn level(value: &str) -> String {
    value.replace('/', "_")
}

impl NodeMetric {
    /// A calculator's figure, named by its place: `calc/<calc>/<first label>/<metric>`, e.g.
    /// `calc/potline/potline1/dc_kwh_per_t_today`, with the period as a level before the name
    /// for the figure of a closed window (`calc/potline/potline1/day/dc_kwh_per_t`).
    ///
    /// One node metric per period: the day's and the month's figure are different quantities
    /// that a host trends, stores and alarms on separately, and one metric taking the day's
    /// value at midnight and the month's at the month's end would have a meaningless history.
    /// Each value is timestamped with the end of its window.
    pub fn calc(
        calc: &str,
        first: &str,
        period: Option<&str>,
        metric: &str,
        unit: &str,
    ) -> NodeMetric {
        let mut name = format!("{NODE_CALC_PREFIX}/{}/{}", level(calc), level(first));
        if let Some(p) = period {
            name.push('/');
            name.push_str(&level(p));
        }
        name.push('/');
        name.push_str(&level(metric));
        NodeMetric {
            name: Arc::from(name),
            calc: Arc::from(calc),
            metric: Arc::from(metric),
            place: Place::Figure {
                first: Arc::from(first),
                period: period.map(Arc::from),
            },
            unit: Arc::from(unit),
        }
    }

    /// A derived point of the `metrics` stream, `derived/<device>/<name>`: the batches of
    /// calculator `derived` carry it under its name with exactly its labels.
    pub fn derived(p: &DerivedPoint) -> NodeMetric {
        NodeMetric {
            name: Arc::from(format!(
                "{NODE_DERIVED_PREFIX}/{}/{}",
                level(&p.device),
                level(&p.name)
            )),
            calc: Arc::from(DERIVED_CALC),
            metric: p.name.clone(),
            place: Place::Labels(p.labels.clone()),
            unit: p.unit.clone(),
        }
    }
}

/// The periods of the closed windows a calculator's figure is emitted for (its label
/// [`PERIOD_LABEL`]); `None` stands for the figure of the minute, which has no period. The
/// catalogue ([`catalog::metrics`]) lists each figure once per line or smelter, whatever its
/// periods, and a birth must declare each period's metric: the calculators' minute figures,
/// those of a minute and of closed windows, and those also of the year to date are listed here;
/// every other figure is one of closed days and months. `tests/sparkplug.rs` checks these against what
/// a potline's and a copper smelter's calculators emit over a month's end.
fn periods(calc: &str, name: &str) -> &'static [Option<&'static str>] {
    const MINUTE: &[Option<&str>] = &[None];
    const DAY_MONTH: &[Option<&str>] = &[Some("day"), Some("month")];
    const MINUTE_DAY_MONTH: &[Option<&str>] = &[None, Some("day"), Some("month")];
    const DAY_MONTH_YTD: &[Option<&str>] = &[Some("day"), Some("month"), Some("ytd")];
    match (calc, name) {
        (
            names::POTLINE,
            names::LINE_CURRENT_KA
            | names::CELLS_IN_SERVICE
            | names::PRODUCTION_TODAY_T
            | names::DC_KWH_PER_T_TODAY
            | names::AC_KWH_PER_T_TODAY
            | names::COMPREHENSIVE_AC_KWH_PER_T_TODAY,
        )
        | (
            names::COPPER,
            names::CONCENTRATE_FEED_TPH
            | names::OXYGEN_FLOW_NM3H
            | names::OXYGEN_ENRICHMENT_PCT
            | names::ACID_PLANT_SO2_KG_H
            | names::STACK_SO2_KG_H,
        ) => MINUTE,
        (names::COPPER, names::OXYGEN_NM3_PER_T_CONCENTRATE | names::SULPHUR_CAPTURE_PCT) => {
            MINUTE_DAY_MONTH
        }
        (names::POTLINE, names::CAPACITY_UTILISATION_PCT) => DAY_MONTH_YTD,
        _ => DAY_MONTH,
    }
}

/// A cell's figures (labels `line` and [`CELL_LABEL`]): not node metrics. A line of 300 cells
/// would declare 600 of them, and the pots' own points are device metrics already.
fn is_cell_figure(calc: &str, name: &str) -> bool {
    calc == names::POTLINE
        && matches!(
            name,
            names::CELL_VOLTAGE_AVG_V | names::PSEUDO_RESISTANCE_UOHM
        )
}

/// The node metrics of an edge node that carries the `metrics` stream: the `metrics` derived
/// points in `[[derived]]` order, then every figure the calculators of `calc` can emit
/// ([`catalog::metrics`], in its order), one per period, except a cell's.
pub fn node_metrics(derived: &[DerivedPoint], calc: Option<&CalcConfig>) -> Vec<NodeMetric> {
    let mut out: Vec<NodeMetric> = derived
        .iter()
        .filter(|p| p.stream == DerivedStream::Metrics)
        .map(NodeMetric::derived)
        .collect();
    for m in calc.map(catalog::metrics).unwrap_or_default() {
        if is_cell_figure(m.calc, m.name) {
            continue;
        }
        for period in periods(m.calc, m.name) {
            out.push(NodeMetric::calc(m.calc, &m.label, *period, m.name, m.unit));
        }
    }
    out
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

/// Every reading of `batch` that is a metric of `device`, as replayed data reports it: without
/// comparing with the last reported values (which belong to the live data), each with its
/// `Quality` when that is not good.
pub fn replayed<'a>(device: &DeviceModel, batch: &'a ReadingBatch) -> Vec<Change<'a>> {
    batch
        .readings
        .iter()
        .filter_map(|r| {
            Some(Change {
                metric: device.metric_index(&r.point)?,
                reading: r,
                with_quality: r.quality != Quality::Good,
            })
        })
        .collect()
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
mod tests {
    use super::*;
    use std::path::Path;

    const T0: i64 = 1_764_300_253_000;

    const CONFIG: &str = r#"
site = "al-line1"
state_dir = "var/state"

[[sources]]
name = "gw1"
tcp = "127.0.0.1:15020"

[[sources.devices]]
name = "rectifier"
unit_id = 1

[sources.devices.points.line_current_ka]
area = "input"
address = 0
type = "f32"
unit = "kA"

[sources.devices.points.offset_raw]
area = "holding"
address = 10
type = "i16"

[sources.devices.points.temp_c]
area = "holding"
address = 11
type = "i16"
scale = 0.1
unit = "degC"

[[sources]]
name = "gw2"
tcp = "127.0.0.1:15021"

[[sources.devices]]
name = "pot_001"
unit_id = 2

[sources.devices.points.cell_voltage_v]
area = "input"
address = 0
type = "f32"
unit = "V"

[sources.devices.points.energy_kwh]
area = "input"
address = 2
type = "u64"
unit = "kWh"
"#;

    fn model() -> EdgeNodeModel {
        let cfg = crate::config::parse(CONFIG, Path::new("test.toml")).expect("valid config");
        EdgeNodeModel::from_sources(&cfg.sources)
    }

    fn reading(point: &str, value: Option<Value>, q: Quality, ts: i64) -> Reading {
        Reading {
            point: point.into(),
            value,
            unit: "".into(),
            quality: q,
            ts: Timestamp(ts),
        }
    }

    fn batch(device: &str, readings: Vec<Reading>) -> ReadingBatch {
        ReadingBatch {
            source: "gw1".into(),
            device: device.into(),
            unit_id: 1,
            poll_interval_ms: 1000,
            scheduled: Timestamp(T0),
            readings,
        }
    }

    #[test]
    fn aliases_are_assigned_in_configuration_order_and_unique_across_the_edge_node() {
        let m = model();
        let names: Vec<(&str, &str, u64, DataType)> = m
            .devices
            .iter()
            .flat_map(|d| {
                d.metrics
                    .iter()
                    .map(move |x| (&*d.name, &*x.name, x.alias, x.datatype))
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("rectifier", "line_current_ka", 1, DataType::Float),
                ("rectifier", "offset_raw", 2, DataType::Int16),
                ("rectifier", "temp_c", 3, DataType::Double),
                ("pot_001", "cell_voltage_v", 4, DataType::Float),
                ("pot_001", "energy_kwh", 5, DataType::UInt64),
            ]
        );
        // The same configuration gives the same aliases (stable across restarts).
        assert_eq!(model(), m);
    }

    #[test]
    fn live_derived_points_are_double_metrics_of_their_own_devices_after_the_polled_points() {
        let derived = r#"
[[derived]]
name = "line_power_kw"
expr = "rectifier.line_current_ka * 2"
unit = "kA"
stream = "live"
device = "rectifier"

[[derived]]
name = "mean_v"
expr = "pot_001.cell_voltage_v"
unit = "V"
stream = "live"

[[derived]]
name = "on_metrics_v"
expr = "pot_001.cell_voltage_v"
unit = "V"
"#;
        let cfg = crate::config::parse(&format!("{CONFIG}{derived}"), Path::new("test.toml"))
            .expect("valid config");
        let m = EdgeNodeModel::from_sources(&cfg.sources).with_derived(&cfg.derived);
        let names: Vec<(&str, &str, u64, DataType)> = m.devices[2..]
            .iter()
            .flat_map(|d| {
                d.metrics
                    .iter()
                    .map(move |x| (&*d.name, &*x.name, x.alias, x.datatype))
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("derived_rectifier", "line_power_kw", 6, DataType::Double),
                ("derived", "mean_v", 7, DataType::Double),
            ],
            "a configured device's name is not taken twice; metrics-stream points are not metrics"
        );
        let b = ReadingBatch {
            source: "derived".into(),
            ..batch("rectifier", vec![])
        };
        assert_eq!(m.batch_device(&b), Some(2));
        assert_eq!(m.batch_device(&batch("rectifier", vec![])), Some(0));
        assert_eq!(m.batch_device(&batch("derived", vec![])), None);
    }

    #[test]
    fn nbirth_has_seq_0_bdseq_int64_and_rebirth_false_never_aliased() {
        let p = nbirth(7, Timestamp(T0));
        assert_eq!(p.seq, Some(0));
        assert_eq!(p.timestamp, Some(T0 as u64));
        let bd = &p.metrics[0];
        assert_eq!(bd.name.as_deref(), Some(BD_SEQ));
        assert_eq!(bd.datatype, Some(DataType::Int64 as u32));
        assert_eq!(bd.value, Some(PbValue::LongValue(7)));
        let rb = &p.metrics[1];
        assert_eq!(rb.name.as_deref(), Some(NODE_REBIRTH));
        assert_eq!(rb.datatype, Some(DataType::Boolean as u32));
        assert_eq!(rb.value, Some(PbValue::BooleanValue(false)));
        assert!(p.metrics.iter().all(|m| m.alias.is_none()));
        assert!(p.metrics.iter().all(|m| m.timestamp.is_some()));
    }

    #[test]
    fn ndeath_carries_only_bdseq_and_no_seq() {
        let p = ndeath(7, Timestamp(T0));
        assert_eq!(p.seq, None);
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(p.metrics[0].name.as_deref(), Some(BD_SEQ));
        assert_eq!(p.metrics[0].value, Some(PbValue::LongValue(7)));
        // The Will's bdSeq equals the NBIRTH's for the same session.
        assert_eq!(
            p.metrics[0].value,
            nbirth(7, Timestamp(T0 + 5)).metrics[0].value
        );
    }

    /// The `engUnit` property of a metric, if present (a String).
    fn eng_unit(metric: &PbMetric) -> Option<String> {
        let props = metric.properties.as_ref()?;
        let i = props.keys.iter().position(|k| k == "engUnit")?;
        let v = props.values.get(i)?;
        assert_eq!(v.r#type, Some(DataType::String as u32), "{v:?}");
        match v.value.as_ref()? {
            pb::payload::property_value::Value::StringValue(s) => Some(s.clone()),
            other => panic!("engUnit is not a string: {other:?}"),
        }
    }

    #[test]
    fn births_carry_the_declared_unit_as_eng_unit_of_polled_and_derived_points() {
        let derived = r#"
[[derived]]
name = "line_current_x2_ka"
expr = "rectifier.line_current_ka * 2"
unit = "kA"
stream = "live"
"#;
        let cfg = crate::config::parse(&format!("{CONFIG}{derived}"), Path::new("test.toml"))
            .expect("valid config");
        let m = EdgeNodeModel::from_sources(&cfg.sources).with_derived(&cfg.derived);
        let rect = &m.devices[0];
        let p = dbirth(
            rect,
            &DeviceState::new(rect.metrics.len()).last,
            1,
            Timestamp(T0),
        );
        let units: Vec<(Option<&str>, Option<String>)> = p
            .metrics
            .iter()
            .map(|x| (x.name.as_deref(), eng_unit(x)))
            .collect();
        assert_eq!(
            units,
            vec![
                (Some("line_current_ka"), Some("kA".to_owned())),
                (Some("offset_raw"), None),
                (Some("temp_c"), Some("degC".to_owned())),
            ],
            "a point without a unit has no engUnit"
        );
        assert!(
            p.metrics
                .iter()
                .all(|x| metric_quality(x) == Some(QUALITY_BAD)),
            "the quality stays beside the unit"
        );
        let dev = &m.devices[2];
        assert_eq!(dev.derived.as_deref(), Some("derived"));
        let p = dbirth(dev, &DeviceState::new(1).last, 2, Timestamp(T0));
        assert_eq!(eng_unit(&p.metrics[0]), Some("kA".to_owned()));
    }

    #[test]
    fn dbirth_carries_every_metric_with_name_alias_datatype_current_value_and_acquisition_time() {
        let m = model();
        let dev = &m.devices[0];
        let mut st = DeviceState::new(dev.metrics.len());
        st.absorb(
            dev,
            &batch(
                "rectifier",
                vec![
                    reading(
                        "line_current_ka",
                        Some(Value::Float(402.5)),
                        Quality::Good,
                        T0 + 12,
                    ),
                    reading("offset_raw", Some(Value::Int(-5)), Quality::Good, T0 + 12),
                ],
            ),
        );
        let p = dbirth(dev, st.current(), 3, Timestamp(T0 + 100));
        assert_eq!(p.seq, Some(3));
        assert_eq!(p.metrics.len(), 3, "every metric, also one never read");
        for (pm, mm) in p.metrics.iter().zip(&dev.metrics) {
            assert_eq!(pm.name.as_deref(), Some(&*mm.name));
            assert_eq!(pm.alias, Some(mm.alias));
            assert_eq!(pm.datatype, Some(mm.datatype as u32));
            assert!(pm.timestamp.is_some());
        }
        assert_eq!(p.metrics[0].value, Some(PbValue::FloatValue(402.5)));
        assert_eq!(p.metrics[0].timestamp, Some((T0 + 12) as u64));
        assert_eq!(p.metrics[1].value, Some(PbValue::IntValue(4_294_967_291)));
        assert_eq!(p.metrics[2].is_null, Some(true));
        assert_eq!(p.metrics[2].value, None);
        assert_eq!(metric_quality(&p.metrics[0]), Some(QUALITY_GOOD));
        assert_eq!(metric_quality(&p.metrics[2]), Some(QUALITY_BAD));
    }

    #[test]
    fn data_is_reported_by_exception_with_aliases_only() {
        let m = model();
        let dev = &m.devices[1];
        let mut st = DeviceState::new(dev.metrics.len());
        let b1 = batch(
            "pot_001",
            vec![
                reading(
                    "cell_voltage_v",
                    Some(Value::Float(4.06)),
                    Quality::Good,
                    T0,
                ),
                reading("energy_kwh", Some(Value::UInt(10)), Quality::Good, T0),
            ],
        );
        st.absorb(dev, &b1);
        let b2 = batch(
            "pot_001",
            vec![
                reading(
                    "cell_voltage_v",
                    Some(Value::Float(4.07)),
                    Quality::Good,
                    T0 + 1000,
                ),
                reading(
                    "energy_kwh",
                    Some(Value::UInt(10)),
                    Quality::Good,
                    T0 + 1000,
                ),
                reading(
                    "not_configured",
                    Some(Value::UInt(1)),
                    Quality::Good,
                    T0 + 1000,
                ),
            ],
        );
        let changes = st.changes(dev, &b2);
        assert_eq!(changes.len(), 1, "only the changed metric");
        let p = ddata(dev, &changes, 9, Timestamp(T0 + 1005), false);
        assert_eq!(p.seq, Some(9));
        let x = &p.metrics[0];
        assert_eq!(x.alias, Some(4));
        assert_eq!(x.name, None);
        assert_eq!(x.datatype, None);
        assert_eq!(x.timestamp, Some((T0 + 1000) as u64), "acquisition time");
        assert_eq!(x.is_historical, None);
        assert_eq!(
            x.properties, None,
            "good and unchanged quality is not repeated"
        );
        assert!(st.changes(dev, &b2).is_empty(), "nothing changed since");
    }

    #[test]
    fn a_quality_change_is_reported_with_the_quality_property() {
        let m = model();
        let dev = &m.devices[1];
        let mut st = DeviceState::new(dev.metrics.len());
        let v = Some(Value::Float(4.06));
        st.absorb(
            dev,
            &batch(
                "pot_001",
                vec![reading("cell_voltage_v", v.clone(), Quality::Good, T0)],
            ),
        );
        let stale = batch(
            "pot_001",
            vec![reading("cell_voltage_v", v.clone(), Quality::Stale, T0 + 1)],
        );
        let c = st.changes(dev, &stale);
        assert_eq!(c.len(), 1);
        let p = ddata(dev, &c, 1, Timestamp(T0), false);
        assert_eq!(metric_quality(&p.metrics[0]), Some(QUALITY_STALE));
        let good = batch(
            "pot_001",
            vec![reading("cell_voltage_v", v, Quality::Good, T0 + 2)],
        );
        let c = st.changes(dev, &good);
        let p = ddata(dev, &c, 2, Timestamp(T0), false);
        assert_eq!(
            metric_quality(&p.metrics[0]),
            Some(QUALITY_GOOD),
            "recovery is announced"
        );
    }

    #[test]
    fn quality_property_is_192_good_500_stale_0_bad() {
        assert_eq!(quality_code(Quality::Good), 192);
        assert_eq!(quality_code(Quality::Stale), 500);
        for q in Quality::ALL {
            if !matches!(q, Quality::Good | Quality::Stale) {
                assert_eq!(quality_code(q), 0, "{q}");
            }
        }
    }

    #[test]
    fn replayed_data_is_marked_is_historical() {
        let m = model();
        let dev = &m.devices[1];
        let mut st = DeviceState::new(dev.metrics.len());
        let b = batch(
            "pot_001",
            vec![reading(
                "cell_voltage_v",
                Some(Value::Float(4.0)),
                Quality::Good,
                T0 - 60_000,
            )],
        );
        let c = st.changes(dev, &b);
        let p = ddata(dev, &c, 1, Timestamp(T0), true);
        assert_eq!(p.metrics[0].is_historical, Some(true));
        assert_eq!(
            p.metrics[0].timestamp,
            Some((T0 - 60_000) as u64),
            "original timestamp"
        );
    }

    #[test]
    fn seq_starts_at_0_on_nbirth_and_wraps_after_255() {
        let mut s = SeqCounter::default();
        assert_eq!(s.birth(), 0);
        let seqs: Vec<u64> = (0..300).map(|_| s.next_seq()).collect();
        assert_eq!(seqs[0], 1);
        assert_eq!(seqs[254], 255);
        assert_eq!(seqs[255], 0);
        assert_eq!(seqs[256], 1);
        assert_eq!(s.birth(), 0, "a rebirth restarts the sequence");
        assert_eq!(s.next_seq(), 1);
    }

    #[test]
    fn negative_integers_are_sign_extended_like_tahu_and_decoded_leniently() {
        for (dt, v, raw) in [
            (DataType::Int8, -1i64, 0xFFFF_FFFFu32),
            (DataType::Int16, -5, 4_294_967_291),
            (DataType::Int32, i64::from(i32::MIN), 0x8000_0000),
        ] {
            assert_eq!(
                encode_value(dt, &Value::Int(v)),
                Some(PbValue::IntValue(raw))
            );
            assert_eq!(
                decode_value(dt, Some(&PbValue::IntValue(raw))),
                Some(Value::Int(v))
            );
        }
        // The zero-extended form (pysparkplug) and long_value (older Tahu) decode the same.
        assert_eq!(
            decode_value(DataType::Int16, Some(&PbValue::IntValue(65_531))),
            Some(Value::Int(-5))
        );
        assert_eq!(
            decode_value(DataType::Int16, Some(&PbValue::LongValue(u64::MAX - 4))),
            Some(Value::Int(-5))
        );
        assert_eq!(
            decode_value(DataType::UInt32, Some(&PbValue::LongValue(4_000_000_000))),
            Some(Value::UInt(4_000_000_000))
        );
        assert_eq!(
            encode_value(DataType::Int64, &Value::Int(-2)),
            Some(PbValue::LongValue(u64::MAX - 1))
        );
        assert_eq!(
            decode_value(DataType::Int64, Some(&PbValue::LongValue(u64::MAX - 1))),
            Some(Value::Int(-2))
        );
        assert_eq!(
            encode_value(DataType::UInt64, &Value::UInt(u64::MAX)),
            Some(PbValue::LongValue(u64::MAX))
        );
    }

    #[test]
    fn floats_and_doubles_keep_their_field() {
        assert_eq!(
            encode_value(DataType::Float, &Value::Float(-1.5)),
            Some(PbValue::FloatValue(-1.5))
        );
        assert_eq!(
            encode_value(DataType::Double, &Value::Float(4.061)),
            Some(PbValue::DoubleValue(4.061))
        );
        assert_eq!(
            decode_value(DataType::Double, Some(&PbValue::DoubleValue(4.061))),
            Some(Value::Float(4.061))
        );
        assert_eq!(
            decode_value(DataType::Double, Some(&PbValue::IntValue(1))),
            None
        );
    }

    #[test]
    fn a_device_whose_readings_are_all_comm_fail_is_dead() {
        let dead = batch(
            "d",
            vec![
                reading("a", None, Quality::CommFail, T0),
                reading("b", None, Quality::CommFail, T0),
            ],
        );
        let half = batch(
            "d",
            vec![
                reading("a", None, Quality::CommFail, T0),
                reading("b", Some(Value::Bool(true)), Quality::Good, T0),
            ],
        );
        assert!(device_is_dead(&dead));
        assert!(!device_is_dead(&half));
        assert!(!device_is_dead(&batch("d", vec![])));
        let p = ddeath(4, Timestamp(T0));
        assert_eq!(
            (p.seq, p.timestamp, p.metrics.len()),
            (Some(4), Some(T0 as u64), 0)
        );
    }

    #[test]
    fn a_rebirth_request_is_recognised_by_name() {
        assert!(is_rebirth_request(&rebirth_request(Timestamp(T0))));
        assert!(!is_rebirth_request(&nbirth(1, Timestamp(T0))));
        let bytes = encode(&rebirth_request(Timestamp(T0)));
        assert!(is_rebirth_request(&decode(&bytes).unwrap()));
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(Arc<str>, Arc<str>)> {
        pairs
            .iter()
            .map(|(k, v)| (Arc::from(*k), Arc::from(*v)))
            .collect()
    }

    fn figure(name: &str, value: Option<f64>, q: Quality, l: &[(&str, &str)]) -> Metric {
        Metric {
            name: name.into(),
            value,
            unit: "kWh/t".into(),
            quality: q,
            ts: Timestamp(T0),
            labels: labels(l),
        }
    }

    /// The model of [`CONFIG`] with a `live` derived point, a `metrics` one and two potline
    /// figures (one of the day so far, one of closed periods) as node metrics.
    fn node_model() -> EdgeNodeModel {
        let derived = r#"
[[derived]]
name = "line_current_x2_ka"
expr = "rectifier.line_current_ka * 2"
unit = "kA"
stream = "live"

[[derived]]
name = "mean_cell_voltage_v"
expr = "pot_001.cell_voltage_v"
unit = "V"
device = "potline1"
labels = { line = "potline1" }
"#;
        let cfg = crate::config::parse(&format!("{CONFIG}{derived}"), Path::new("test.toml"))
            .expect("valid config");
        let mut figures = node_metrics(&cfg.derived, None);
        let day = Some("day");
        figures.extend([
            NodeMetric::calc("potline", "potline1", None, "dc_kwh_per_t_today", "kWh/t"),
            NodeMetric::calc("potline", "potline1", day, "dc_kwh_per_t", "kWh/t"),
            NodeMetric::calc(
                "potline",
                "potline1",
                Some("month"),
                "dc_kwh_per_t",
                "kWh/t",
            ),
            // Declared twice: the first keeps the name.
            NodeMetric::calc("potline", "potline1", day, "dc_kwh_per_t", "MWh/t"),
        ]);
        EdgeNodeModel::from_sources(&cfg.sources)
            .with_derived(&cfg.derived)
            .with_node_metrics(figures)
    }

    #[test]
    fn metrics_stream_figures_are_double_node_metrics_named_by_their_place_after_every_alias() {
        let m = node_model();
        let names: Vec<(&str, u64, DataType, Option<&str>)> = m
            .node
            .metrics
            .iter()
            .enumerate()
            .map(|(i, x)| (&*x.name, x.alias, x.datatype, m.node.unit(i)))
            .collect();
        assert_eq!(
            names,
            vec![
                (
                    "derived/potline1/mean_cell_voltage_v",
                    7,
                    DataType::Double,
                    Some("V")
                ),
                (
                    "calc/potline/potline1/dc_kwh_per_t_today",
                    8,
                    DataType::Double,
                    Some("kWh/t")
                ),
                (
                    "calc/potline/potline1/day/dc_kwh_per_t",
                    9,
                    DataType::Double,
                    Some("kWh/t")
                ),
                (
                    "calc/potline/potline1/month/dc_kwh_per_t",
                    10,
                    DataType::Double,
                    Some("kWh/t")
                ),
            ],
            "after the polled points (1-5) and the live derived point (6); one per period"
        );
        assert_eq!(
            &*m.devices[2].name, "derived",
            "the live derived point stays a device metric"
        );
        assert_eq!(m, node_model(), "stable across restarts");
        assert_eq!(
            DERIVED_CALC,
            crate::derived::engine::CALC,
            "the calc of the derived engine's metric batches"
        );
        assert_eq!(
            NodeMetric::calc("copper", "a/b", None, "x_t", "t").name,
            Arc::from("calc/copper/a_b/x_t"),
            "a value never opens a level of its own"
        );
    }

    #[test]
    fn a_figure_is_the_node_metric_of_its_name_and_place_whatever_else_it_is_labelled() {
        let m = node_model();
        let potline: Arc<str> = Arc::from("potline");
        let derived: Arc<str> = Arc::from("derived");
        let name = |calc: &Arc<str>, f: &Metric| {
            m.node_metric_index(calc, f)
                .map(|i| m.node.metrics[i].name.to_string())
        };
        let day = [
            ("line", "potline1"),
            ("period", "day"),
            ("production", "measured"),
        ];
        assert_eq!(
            name(&potline, &figure("dc_kwh_per_t", None, Quality::Good, &day)).as_deref(),
            Some("calc/potline/potline1/day/dc_kwh_per_t"),
            "the production basis describes the value, it does not place it"
        );
        let month = [
            ("line", "potline1"),
            ("period", "month"),
            ("production", "faraday"),
        ];
        assert_eq!(
            name(
                &potline,
                &figure("dc_kwh_per_t", None, Quality::Good, &month)
            )
            .as_deref(),
            Some("calc/potline/potline1/month/dc_kwh_per_t")
        );
        let cell = [("line", "potline1"), ("cell", "pot_017")];
        assert_eq!(
            name(
                &potline,
                &figure("dc_kwh_per_t_today", None, Quality::Good, &cell)
            ),
            None,
            "a cell's figure is not the line's"
        );
        let other = [("line", "potline2")];
        assert_eq!(
            name(
                &potline,
                &figure("dc_kwh_per_t_today", None, Quality::Good, &other)
            ),
            None,
            "another line's"
        );
        let ytd = [("line", "potline1"), ("period", "ytd")];
        assert_eq!(
            name(&potline, &figure("dc_kwh_per_t", None, Quality::Good, &ytd)),
            None,
            "a period not declared is no node metric"
        );
        let line = [("line", "potline1")];
        assert_eq!(
            name(
                &derived,
                &figure("mean_cell_voltage_v", None, Quality::Good, &line)
            )
            .as_deref(),
            Some("derived/potline1/mean_cell_voltage_v")
        );
        let more = [("line", "potline1"), ("x", "y")];
        assert_eq!(
            name(
                &derived,
                &figure("mean_cell_voltage_v", None, Quality::Good, &more)
            ),
            None,
            "a derived point's labels are exactly its own"
        );
        assert_eq!(
            name(
                &potline,
                &figure("mean_cell_voltage_v", None, Quality::Good, &line)
            ),
            None,
            "another calculator's"
        );
    }

    #[test]
    fn nbirth_declares_the_node_metrics_with_unit_and_ndata_reports_them_by_exception() {
        let m = node_model();
        let mut st = DeviceState::new(m.node.metrics.len());
        let batch = MetricBatch {
            calc: Arc::from("potline"),
            ts: Timestamp(T0),
            metrics: vec![
                figure(
                    "dc_kwh_per_t_today",
                    Some(13_012.6),
                    Quality::Good,
                    &[("line", "potline1")],
                ),
                figure(
                    "cells_in_service",
                    Some(288.0),
                    Quality::Good,
                    &[("line", "potline1")],
                ),
            ],
        };
        let readings = m.node_batch(&batch);
        assert_eq!(readings.readings.len(), 1, "only the declared figure");
        st.absorb(&m.node, &readings);
        let p = nbirth_with(5, &m.node, st.current(), Timestamp(T0 + 10));
        assert_eq!(p.seq, Some(0));
        assert_eq!(
            p.metrics.len(),
            2 + 4,
            "bdSeq, rebirth and every node metric"
        );
        assert_eq!(
            p.metrics[2].name.as_deref(),
            Some("derived/potline1/mean_cell_voltage_v")
        );
        assert_eq!(p.metrics[2].is_null, Some(true), "never computed");
        assert_eq!(metric_quality(&p.metrics[2]), Some(QUALITY_BAD));
        assert_eq!(eng_unit(&p.metrics[2]).as_deref(), Some("V"));
        let today = &p.metrics[3];
        assert_eq!(
            (today.name.as_deref(), today.alias, today.datatype),
            (
                Some("calc/potline/potline1/dc_kwh_per_t_today"),
                Some(8),
                Some(DataType::Double as u32)
            )
        );
        assert_eq!(today.value, Some(PbValue::DoubleValue(13_012.6)));
        assert_eq!(today.timestamp, Some(T0 as u64));
        assert_eq!(metric_quality(today), Some(QUALITY_GOOD));
        assert_eq!(metric_eng_unit(today), Some("kWh/t"));

        // The next minute: the figure changed, and lost its quality.
        let next = MetricBatch {
            metrics: vec![figure(
                "dc_kwh_per_t_today",
                None,
                Quality::CommFail,
                &[("line", "potline1")],
            )],
            ..batch.clone()
        };
        let readings = m.node_batch(&next);
        let changes = st.changes(&m.node, &readings);
        let p = ddata(&m.node, &changes, 3, Timestamp(T0 + 60_000), false);
        assert_eq!(p.metrics.len(), 1);
        let x = &p.metrics[0];
        assert_eq!(
            (x.alias, x.name.as_deref()),
            (Some(8), None),
            "aliases only"
        );
        assert_eq!(x.is_null, Some(true));
        assert_eq!(metric_quality(x), Some(QUALITY_BAD));
        assert_eq!(metric_eng_unit(x), None, "the unit is the birth's");
        assert!(st.changes(&m.node, &readings).is_empty(), "reported once");
        // Replayed: every figure, historical, not compared with the live ones.
        let replay = replayed(&m.node, &readings);
        let p = ddata(&m.node, &replay, 4, Timestamp(T0 + 60_000), true);
        assert_eq!(p.metrics[0].is_historical, Some(true));
    }

    #[test]
    fn topics_follow_the_namespace() {
        assert_eq!(
            topic("G", MessageType::NBirth, "E", None),
            "spBv1.0/G/NBIRTH/E"
        );
        assert_eq!(
            topic("G", MessageType::DData, "E", Some("pot_001")),
            "spBv1.0/G/DDATA/E/pot_001"
        );
    }
}
