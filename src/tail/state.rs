//! What the `tail` screen shows, as plain data: [`State::apply`] folds decoded messages into it,
//! the renderer only reads it. No I/O and no clock: "now" is the newest timestamp seen, so a
//! recorded stream always gives the same screen.

use std::collections::{BTreeMap, VecDeque};

use crate::calc::{glob_match, names};
use crate::derived::engine::{CALC as DERIVED_CALC, SOURCE as DERIVED_SOURCE};
use crate::model::{
    Aggregate, Event, EventKind, EventPhase, MetricBatch, Period, Quality, ReadingBatch, Record,
    Timestamp, Value,
};

use super::decode::{AgentStatus, Message, SparkplugMessage};

/// Default anode-effect threshold (V): a cell at or above it is shown in anode effect even before
/// the calculator's event arrives (METRICS.md, `anode_effect.threshold_v`).
pub const AE_THRESHOLD_V: f64 = 8.0;
/// Events kept for the "recent events" list.
pub const EVENTS_KEPT: usize = 200;

/// Glob patterns (`*`, `?`) over a message's names: site, source, device, `source/device`, the
/// `line` and `cell` labels of metrics, stack and event subjects (and their first and last
/// segments: `potline1/pot_017` matches `potline1` and `pot_017`), and
/// Sparkplug group, edge node and device. A message passes when any pattern matches any name;
/// with no pattern everything passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    patterns: Vec<String>,
}

impl Filter {
    /// A filter from `--filter` patterns.
    pub fn new(patterns: Vec<String>) -> Self {
        Filter { patterns }
    }

    /// Whether the message passes.
    pub fn accepts(&self, msg: &Message) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let names = names(msg);
        self.patterns
            .iter()
            .any(|p| names.iter().any(|n| glob_match(p, n)))
    }
}

fn names(msg: &Message) -> Vec<String> {
    let mut out = Vec::new();
    match msg {
        Message::Record { site, record, .. } => {
            out.push(site.clone());
            match record {
                Record::Batch(b) => batch_names(b, &mut out),
                Record::Metrics(m) => {
                    out.push(m.calc.to_string());
                    for metric in &m.metrics {
                        for (k, v) in &metric.labels {
                            if &**k == "line" || &**k == "cell" || &**k == "stack" {
                                out.push(v.to_string());
                            }
                        }
                    }
                }
                Record::Event(e) => subject_names(&e.subject, &mut out),
                Record::Aggregate(a) => subject_names(&a.subject, &mut out),
            }
        }
        Message::Status { status, .. } => out.push(status.site.clone()),
        Message::Cleared { topic } => out.push(topic.clone()),
        Message::Sparkplug(s) => {
            out.push(s.group.clone());
            out.push(s.edge.clone());
            if let Some(d) = &s.device {
                out.push(d.clone());
                out.push(format!("{}/{d}", s.edge));
            }
        }
    }
    out
}

fn batch_names(b: &ReadingBatch, out: &mut Vec<String>) {
    out.push(b.source.to_string());
    out.push(b.device.to_string());
    out.push(format!("{}/{}", b.source, b.device));
}

fn subject_names(subject: &str, out: &mut Vec<String>) {
    out.push(subject.to_owned());
    if let Some((first, last)) = subject.split_once('/') {
        out.push(first.to_owned());
        out.push(last.rsplit('/').next().unwrap_or(last).to_owned());
    }
}

/// One potline cell (a device with a `cell_voltage_v` point).
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// `source/device` (`potline1/pot_017`).
    pub key: String,
    /// Latest voltage.
    pub voltage_v: Option<f64>,
    /// Its quality.
    pub quality: Quality,
    /// When it was read.
    pub ts: Timestamp,
    /// Poll interval of its batch (ms); 0 when the stream does not say (Sparkplug).
    pub poll_interval_ms: u64,
    /// `in_service` status bit, when the device reports one.
    pub in_service: Option<bool>,
    /// `cut_out` status bit, when the device reports one.
    pub cut_out: Option<bool>,
    /// `anode_effect` status bit, when the device reports one.
    pub ae_bit: Option<bool>,
    /// An `anode_effect` start event without its end.
    pub ae_event_open: bool,
}

impl Cell {
    fn new(key: String) -> Self {
        Cell {
            key,
            voltage_v: None,
            quality: Quality::CommFail,
            ts: Timestamp(0),
            poll_interval_ms: 0,
            in_service: None,
            cut_out: None,
            ae_bit: None,
            ae_event_open: false,
        }
    }

    /// In anode effect: an open AE event, the controller's AE bit, or a good voltage at or above
    /// [`AE_THRESHOLD_V`].
    pub fn anode_effect(&self) -> bool {
        self.ae_event_open
            || self.ae_bit == Some(true)
            || (self.quality.is_good() && self.voltage_v.is_some_and(|v| v >= AE_THRESHOLD_V))
    }

    /// The quality shown at `now`: `stale` for a good reading not refreshed for three poll
    /// intervals ([`Quality::at_age`]).
    ///
    /// `now` is the newest reading timestamp of the stream ([`State::readings_now`]), not the
    /// viewer's clock: a
    /// recorded stream then always shows the same screen, and a viewer whose clock differs from
    /// the agent's does not mark every cell stale. A cell goes stale when the others move on
    /// without it (one device or poll class stopped); when the whole feed stops, the status and
    /// uplink panes say so.
    pub fn shown_quality(&self, now: Timestamp) -> Quality {
        self.quality
            .at_age(now.unix_ms() - self.ts.unix_ms(), self.poll_interval_ms)
    }

    /// In service unless a status bit says otherwise.
    pub fn in_service(&self) -> bool {
        self.in_service != Some(false) && self.cut_out != Some(true)
    }
}

/// The potline KPIs of one line (from `calc = "potline"` metrics labelled `line`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineKpis {
    /// `line_current_ka` (kA).
    pub line_current_ka: Option<f64>,
    /// `production_today_t` (t).
    pub production_today_t: Option<f64>,
    /// `dc_kwh_per_t_today` (kWh/t).
    pub dc_kwh_per_t: Option<f64>,
    /// `ac_kwh_per_t_today` (kWh/t).
    pub ac_kwh_per_t: Option<f64>,
    /// `capacity_utilisation_pct` of the last closed day (%).
    pub capacity_use_pct: Option<f64>,
    /// `cells_in_service`.
    pub cells_in_service: Option<f64>,
    /// Time of the newest metric.
    pub ts: Option<Timestamp>,
}

/// One pollutant of a stack: the latest minute aggregates of its measured concentration
/// (`<p>_mg_m3`), its converted (折算) concentration (`<p>_zs_mg_m3`, where the stack's standard
/// has a conversion) and its mass flow (`<p>_kg_h`), and the limit when known. The converted
/// concentration belongs to the same pollutant, not to one of its own: the limit applies to it
/// where it exists ([`StackQuantity::checked_mg_m3`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StackQuantity {
    /// Measured concentration (mg/m³), minute average.
    pub conc_mg_m3: Option<f64>,
    /// Converted concentration (mg/m³), minute average.
    pub zs_mg_m3: Option<f64>,
    /// Whether a converted concentration was ever published for it (then the limit is checked
    /// against it alone, even while its minute is invalid).
    pub zs_published: bool,
    /// Mass flow (kg/h), minute average.
    pub mass_kg_h: Option<f64>,
    /// Quality of the concentration window.
    pub quality: Option<Quality>,
    /// Concentration limit (mg/m³): from `--config`, or learned from an exceedance event.
    pub limit_mg_m3: Option<f64>,
    /// Hours above the limit reported by exceedance events since `tail` started.
    pub exceedances: u32,
}

impl StackQuantity {
    /// The concentration the limit is compared with: the converted one where the stack
    /// publishes it, the measured one otherwise.
    pub fn checked_mg_m3(&self) -> Option<f64> {
        if self.has_zs() {
            self.zs_mg_m3
        } else {
            self.conc_mg_m3
        }
    }

    /// Whether a converted concentration was published for this pollutant.
    pub fn has_zs(&self) -> bool {
        self.zs_published
    }
}

/// The pollutant of a concentration quantity: `so2` of `so2_zs_mg_m3` (converted, `true`) or of
/// `so2_mg_m3` (measured, `false`).
pub fn concentration_pollutant(quantity: &str) -> Option<(&str, bool)> {
    quantity
        .strip_suffix("_zs_mg_m3")
        .map(|p| (p, true))
        .or_else(|| quantity.strip_suffix("_mg_m3").map(|p| (p, false)))
}

/// One stack: pollutants by name, and the flow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stack {
    /// Pollutant (`so2`) → figures.
    pub pollutants: BTreeMap<String, StackQuantity>,
    /// Flow (m³/h), minute average.
    pub flow_m3h: Option<f64>,
    /// End of the newest window.
    pub ts: Option<Timestamp>,
}

/// What is known about one uplink as seen on this broker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Uplink {
    /// The retained status (`online`/`offline`).
    pub status: Option<AgentStatus>,
    /// Records marked `historical` received: the uplink is replaying its backlog.
    pub historical_records: u64,
    /// When the newest historical record arrived (its own time).
    pub last_historical: Option<Timestamp>,
    /// The newest `outage` event: records dropped and duration.
    pub last_outage: Option<Event>,
    /// Gaps in `seq` seen per stream (records missed so far).
    pub seq_gaps: u64,
}

/// One Sparkplug edge node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeNode {
    /// Births seen and no death since.
    pub online: bool,
    /// `bdSeq` of the last birth or death.
    pub bd_seq: Option<u64>,
    /// Devices born (and not dead).
    pub devices_online: usize,
    /// DATA metrics that no birth resolved.
    pub unresolved: u64,
}

/// The latest value of one derived point (`[[derived]]`) seen on the feed: a metric of calculator
/// `derived` (stream `metrics`) or a reading of source `derived` (stream `live`).
#[derive(Debug, Clone, PartialEq)]
pub struct DerivedValue {
    /// The value; `None` when the agent could not compute it.
    pub value: Option<f64>,
    /// Its declared unit.
    pub unit: String,
    /// Its quality.
    pub quality: Quality,
    /// Its time (the newest input's).
    pub ts: Timestamp,
}

/// One line of the recent-events list.
#[derive(Debug, Clone, PartialEq)]
pub struct EventLine {
    /// Site.
    pub site: String,
    /// The event.
    pub event: Event,
    /// Replayed after an outage.
    pub historical: bool,
}

/// The whole screen's data.
#[derive(Debug, Clone)]
pub struct State {
    filter: Filter,
    /// Sites seen.
    pub sites: Vec<String>,
    /// Cells by `source/device`.
    pub cells: BTreeMap<String, Cell>,
    /// Line KPIs by line name.
    pub lines: BTreeMap<String, LineKpis>,
    /// Stacks by name.
    pub stacks: BTreeMap<String, Stack>,
    /// Newest first.
    pub events: VecDeque<EventLine>,
    /// Uplinks by site (records, outage events) and status topic.
    pub uplinks: BTreeMap<String, Uplink>,
    /// Sparkplug edge nodes by `group/edge`.
    pub edge_nodes: BTreeMap<String, EdgeNode>,
    /// Derived points by what identifies them: `<name>` followed by its labels
    /// (`line_power_kw line=potline1`) on the metrics stream, `<device>.<name>` on the live one.
    pub derived: BTreeMap<String, DerivedValue>,
    /// Messages applied (after the filter).
    pub messages: u64,
    /// Messages that could not be decoded.
    pub decode_errors: u64,
    /// The newest decode error.
    pub last_error: Option<String>,
    /// Newest timestamp seen in any message.
    pub now: Timestamp,
    /// Newest acquisition timestamp of a reading: the clock cells age against (metrics and
    /// aggregates may be stamped at the end of their window, or in simulated plant time).
    pub readings_now: Timestamp,
    last_seq: BTreeMap<(String, &'static str), u64>,
}

impl State {
    /// An empty state with a filter.
    pub fn new(filter: Filter) -> Self {
        State {
            filter,
            sites: Vec::new(),
            cells: BTreeMap::new(),
            lines: BTreeMap::new(),
            stacks: BTreeMap::new(),
            events: VecDeque::new(),
            uplinks: BTreeMap::new(),
            edge_nodes: BTreeMap::new(),
            derived: BTreeMap::new(),
            messages: 0,
            decode_errors: 0,
            last_error: None,
            now: Timestamp(0),
            readings_now: Timestamp(0),
            last_seq: BTreeMap::new(),
        }
    }

    /// Set the known concentration limit of a stack pollutant (mg/m³).
    pub fn set_limit(&mut self, stack: &str, pollutant: &str, limit_mg_m3: f64) {
        self.stacks
            .entry(stack.to_owned())
            .or_default()
            .pollutants
            .entry(pollutant.to_owned())
            .or_default()
            .limit_mg_m3 = Some(limit_mg_m3);
    }

    /// Count a message that could not be decoded.
    pub fn decode_error(&mut self, error: String) {
        self.decode_errors += 1;
        self.last_error = Some(error);
    }

    /// Fold one message in; returns false when the filter rejected it.
    pub fn apply(&mut self, msg: &Message) -> bool {
        if !self.filter.accepts(msg) {
            return false;
        }
        self.messages += 1;
        match msg {
            Message::Record {
                site,
                stream,
                seq,
                historical,
                record,
            } => {
                if !self.sites.contains(site) {
                    self.sites.push(site.clone());
                }
                let uplink = self.uplinks.entry(site.clone()).or_default();
                if *historical {
                    uplink.historical_records += 1;
                    uplink.last_historical = Some(record_ts(record));
                } else {
                    // Gaps only in the live order: historical records fill older seqs.
                    let key = (site.clone(), stream.as_str());
                    if let Some(prev) = self.last_seq.get(&key)
                        && *seq > prev + 1
                    {
                        uplink.seq_gaps += seq - prev - 1;
                    }
                    let last = self.last_seq.entry(key).or_insert(*seq);
                    *last = (*last).max(*seq);
                }
                self.now = self.now.max(record_ts(record));
                match record {
                    Record::Batch(b) => self.apply_batch(b),
                    Record::Metrics(m) => self.apply_metrics(m),
                    Record::Event(e) => self.apply_event(site, e, *historical),
                    Record::Aggregate(a) => self.apply_aggregate(a),
                }
            }
            Message::Status { topic, status } => {
                self.uplinks.entry(topic.clone()).or_default().status = Some(status.clone());
            }
            Message::Sparkplug(s) => self.apply_sparkplug(s),
            // Status entries are keyed by their topic, records by site: only a status goes.
            Message::Cleared { topic } => {
                if self.uplinks.get(topic).is_some_and(|u| u.status.is_some()) {
                    self.uplinks.remove(topic);
                }
            }
        }
        true
    }

    fn apply_batch(&mut self, b: &ReadingBatch) {
        if &*b.source == DERIVED_SOURCE {
            for r in &b.readings {
                self.note_derived(
                    format!("{}.{}", b.device, r.point),
                    DerivedValue {
                        value: r.value.as_ref().and_then(Value::as_f64),
                        unit: r.unit.to_string(),
                        quality: r.quality,
                        ts: r.ts,
                    },
                );
            }
        }
        let get = |name: &str| b.readings.iter().find(|r| &*r.point == name);
        let flag = |name: &str| {
            get(name).and_then(|r| match r.value {
                Some(Value::Bool(v)) if r.quality.is_good() => Some(v),
                _ => None,
            })
        };
        if let Some(r) = get("cell_voltage_v") {
            let key = format!("{}/{}", b.source, b.device);
            let cell = self
                .cells
                .entry(key.clone())
                .or_insert_with(|| Cell::new(key));
            cell.voltage_v = r.value.as_ref().and_then(Value::as_f64);
            cell.quality = r.quality;
            cell.ts = r.ts;
            cell.poll_interval_ms = b.poll_interval_ms;
            // Sparkplug DDATA carries only what changed: keep the last known bits.
            cell.in_service = flag("in_service").or(cell.in_service);
            cell.cut_out = flag("cut_out").or(cell.cut_out);
            cell.ae_bit = flag("anode_effect").or(cell.ae_bit);
        } else if let Some(cell) = self.cells.get_mut(&format!("{}/{}", b.source, b.device)) {
            cell.in_service = flag("in_service").or(cell.in_service);
            cell.cut_out = flag("cut_out").or(cell.cut_out);
            cell.ae_bit = flag("anode_effect").or(cell.ae_bit);
        }
        for r in &b.readings {
            self.now = self.now.max(r.ts);
            self.readings_now = self.readings_now.max(r.ts);
        }
    }

    /// Keep `value` as the derived point `key`'s, unless a newer one is known (a backlog
    /// replayed after an outage brings older values).
    fn note_derived(&mut self, key: String, value: DerivedValue) {
        match self.derived.get_mut(&key) {
            Some(known) if known.ts > value.ts => {}
            Some(known) => *known = value,
            None => {
                self.derived.insert(key, value);
            }
        }
    }

    fn apply_metrics(&mut self, m: &MetricBatch) {
        if &*m.calc == DERIVED_CALC {
            for metric in &m.metrics {
                let mut key = metric.name.to_string();
                for (k, v) in &metric.labels {
                    key.push_str(&format!(" {k}={v}"));
                }
                self.note_derived(
                    key,
                    DerivedValue {
                        value: metric.value,
                        unit: metric.unit.to_string(),
                        quality: metric.quality,
                        ts: metric.ts,
                    },
                );
            }
            return;
        }
        if &*m.calc != names::POTLINE {
            return;
        }
        for metric in &m.metrics {
            let label = |k: &str| {
                metric
                    .labels
                    .iter()
                    .find(|(key, _)| &**key == k)
                    .map(|(_, v)| v.to_string())
            };
            // Per-cell metrics carry `cell`; the KPIs are the line's own.
            if label("cell").is_some() {
                continue;
            }
            let Some(line) = label("line") else { continue };
            let kpis = self.lines.entry(line).or_default();
            kpis.ts = kpis.ts.max(Some(metric.ts));
            let v = metric.value;
            match &*metric.name {
                names::LINE_CURRENT_KA => kpis.line_current_ka = v,
                names::PRODUCTION_TODAY_T => kpis.production_today_t = v,
                names::DC_KWH_PER_T_TODAY => kpis.dc_kwh_per_t = v,
                names::AC_KWH_PER_T_TODAY => kpis.ac_kwh_per_t = v,
                names::CELLS_IN_SERVICE => kpis.cells_in_service = v,
                names::CAPACITY_UTILISATION_PCT if label("period").as_deref() == Some("day") => {
                    kpis.capacity_use_pct = v
                }
                _ => {}
            }
        }
    }

    fn apply_event(&mut self, site: &str, e: &Event, historical: bool) {
        match e.kind {
            EventKind::AnodeEffect => {
                let cell = self
                    .cells
                    .entry(e.subject.to_string())
                    .or_insert_with(|| Cell::new(e.subject.to_string()));
                match e.phase {
                    EventPhase::Start => cell.ae_event_open = true,
                    EventPhase::End => cell.ae_event_open = false,
                    EventPhase::Instant => {}
                }
            }
            EventKind::Exceedance => {
                // subject `stack/so2_mg_m3` (or `stack/so2_zs_mg_m3`, the converted
                // concentration of the same pollutant), attribute `limit_mg_m3`.
                if let Some((stack, quantity)) = e.subject.split_once('/')
                    && let Some((pollutant, _)) = concentration_pollutant(quantity)
                {
                    let q = self
                        .stacks
                        .entry(stack.to_owned())
                        .or_default()
                        .pollutants
                        .entry(pollutant.to_owned())
                        .or_default();
                    q.exceedances += 1;
                    if let Some(limit) = attribute(e, "limit_mg_m3") {
                        q.limit_mg_m3 = Some(limit);
                    }
                }
            }
            EventKind::Outage => {
                self.uplinks.entry(site.to_owned()).or_default().last_outage = Some(e.clone());
            }
            _ => {}
        }
        self.now = self.now.max(e.ts);
        self.events.push_front(EventLine {
            site: site.to_owned(),
            event: e.clone(),
            historical,
        });
        self.events.truncate(EVENTS_KEPT);
    }

    fn apply_aggregate(&mut self, a: &Aggregate) {
        if a.period != Period::Minute {
            return;
        }
        let stack = self.stacks.entry(a.subject.to_string()).or_default();
        stack.ts = stack.ts.max(Some(a.end));
        if &*a.quantity == "flow_m3h" {
            stack.flow_m3h = a.avg;
        } else if let Some((p, converted)) = concentration_pollutant(&a.quantity) {
            let q = stack.pollutants.entry(p.to_owned()).or_default();
            if converted {
                q.zs_mg_m3 = a.avg;
                q.zs_published = true;
            } else {
                q.conc_mg_m3 = a.avg;
                q.quality = Some(a.quality);
            }
        } else if let Some(p) = a.quantity.strip_suffix("_kg_h") {
            stack.pollutants.entry(p.to_owned()).or_default().mass_kg_h = a.avg;
        }
    }

    fn apply_sparkplug(&mut self, s: &SparkplugMessage) {
        use crate::codec::sparkplug::MessageType as T;
        let node = self
            .edge_nodes
            .entry(format!("{}/{}", s.group, s.edge))
            .or_default();
        node.unresolved += s.unresolved as u64;
        match s.kind {
            T::NBirth => {
                node.online = true;
                node.bd_seq = s.bd_seq;
                node.devices_online = 0;
            }
            T::NDeath => {
                node.online = false;
                node.bd_seq = s.bd_seq.or(node.bd_seq);
                node.devices_online = 0;
            }
            T::DBirth => node.devices_online += 1,
            T::DDeath => node.devices_online = node.devices_online.saturating_sub(1),
            _ => {}
        }
        if let Some(ts) = s.ts {
            self.now = self.now.max(ts);
        }
        if let Some(b) = &s.batch {
            self.apply_batch(b);
        }
    }

    /// Cells sorted by voltage, highest first (cells without a voltage last).
    pub fn cells_by_voltage(&self) -> Vec<&Cell> {
        let mut cells: Vec<&Cell> = self.cells.values().collect();
        cells.sort_by(|a, b| {
            let va = a.voltage_v.unwrap_or(f64::NEG_INFINITY);
            let vb = b.voltage_v.unwrap_or(f64::NEG_INFINITY);
            vb.total_cmp(&va).then_with(|| a.key.cmp(&b.key))
        });
        cells
    }

    /// Mean voltage of the in-service cells with a good voltage, of `line` (cells keyed
    /// `line/…`), or of all cells when `line` is `None` or no cell is keyed by it.
    pub fn mean_cell_voltage(&self, line: Option<&str>) -> Option<f64> {
        let usable = |c: &&Cell| c.in_service() && c.quality.is_good() && c.voltage_v.is_some();
        let prefix = line.map(|l| format!("{l}/"));
        let of_line: Vec<f64> = self
            .cells
            .values()
            .filter(usable)
            .filter(|c| {
                prefix
                    .as_ref()
                    .is_some_and(|p| c.key.starts_with(p.as_str()))
            })
            .filter_map(|c| c.voltage_v)
            .collect();
        let vs = if of_line.is_empty() {
            self.cells
                .values()
                .filter(usable)
                .filter_map(|c| c.voltage_v)
                .collect()
        } else {
            of_line
        };
        (!vs.is_empty()).then(|| vs.iter().sum::<f64>() / vs.len() as f64)
    }

    /// The filter in use.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }
}

/// The time a record describes.
pub fn record_ts(record: &Record) -> Timestamp {
    match record {
        Record::Batch(b) => b.readings.iter().map(|r| r.ts).max().unwrap_or(b.scheduled),
        Record::Metrics(m) => m.ts,
        Record::Event(e) => e.ts,
        Record::Aggregate(a) => a.end,
    }
}

/// A numeric attribute of an event.
pub fn attribute(e: &Event, name: &str) -> Option<f64> {
    e.attributes
        .iter()
        .find(|(k, _)| &**k == name)
        .and_then(|(_, v)| v.as_f64())
}

#[cfg(test)]
mod tests;
