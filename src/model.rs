//! Shared domain types: what a reading is, when it was taken and how far it can be trusted.
//!
//! Everything downstream of the pollers (calculators, spool, encoders) speaks these types. They carry
//! no I/O and no clocks: a [`Timestamp`] is always the instant a value was *acquired*, taken by the
//! poller when the read that returned it completed, never the time it was encoded or sent.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
///
/// Milliseconds are what every northbound protocol we speak uses (Sparkplug, HJ 212 with ms QN,
/// JSON consumers), so nothing finer is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time. Only pollers and uplinks call this; pure cores take timestamps
    /// as arguments.
    pub fn now() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(since.as_millis() as i64)
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_ms(self) -> i64 {
        self.0
    }

    /// RFC 3339 with milliseconds, UTC (`2026-11-28T03:24:13.123Z`).
    pub fn to_rfc3339(self) -> String {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.0.max(0) as u64);
        humantime::format_rfc3339_millis(t).to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// How far a value can be trusted. Every value smeltwatch emits carries one.
///
/// The names are stable: they appear in JSON payloads, metrics labels and the HJ 212 flag mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// Read from the device, decoded, finite and within its plausible range.
    Good,
    /// The device did not answer (timeout, connection refused or dropped, garbled frame).
    CommFail,
    /// The device answered with a Modbus exception (illegal address, busy, gateway path…).
    DeviceException,
    /// Decoded, but NaN, infinite or outside the configured plausible range.
    OutOfRange,
    /// The last good value, repeated because no fresh one could be read.
    Stale,
    /// Replaced by a configured or computed substitute value.
    Substituted,
    /// The device or point is flagged as under maintenance.
    Maintenance,
    /// The analyser is calibrating (CEMS zero/span).
    Calibration,
}

impl Quality {
    /// Stable lowercase name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::CommFail => "comm_fail",
            Quality::DeviceException => "device_exception",
            Quality::OutOfRange => "out_of_range",
            Quality::Stale => "stale",
            Quality::Substituted => "substituted",
            Quality::Maintenance => "maintenance",
            Quality::Calibration => "calibration",
        }
    }

    /// Every quality, in declaration order (for counters and tests).
    pub const ALL: [Quality; 8] = [
        Quality::Good,
        Quality::CommFail,
        Quality::DeviceException,
        Quality::OutOfRange,
        Quality::Stale,
        Quality::Substituted,
        Quality::Maintenance,
        Quality::Calibration,
    ];

    /// Whether the value may be used in calculations.
    pub fn is_good(self) -> bool {
        self == Quality::Good
    }

    /// The quality a reading of this quality is shown with when it is `age_ms` old and its point
    /// is polled every `poll_interval_ms`: [`Quality::Stale`] once a good reading is older than
    /// [`STALE_AFTER_POLL_INTERVALS`] intervals (the poller missed three refreshes, or stopped).
    /// Other qualities already say why the value is not a fresh good one and are kept; an unknown
    /// interval (0, a Sparkplug stream) never ages.
    pub fn at_age(self, age_ms: i64, poll_interval_ms: u64) -> Quality {
        let limit_ms = i64::try_from(poll_interval_ms)
            .unwrap_or(i64::MAX)
            .saturating_mul(STALE_AFTER_POLL_INTERVALS);
        if self.is_good() && poll_interval_ms > 0 && age_ms > limit_ms {
            Quality::Stale
        } else {
            self
        }
    }
}

/// A good reading not refreshed for this many of its poll intervals is shown `stale`
/// ([`Quality::at_age`]).
pub const STALE_AFTER_POLL_INTERVALS: i64 = 3;

impl fmt::Display for Quality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoded value. Integers keep their signedness so that a u64 energy counter never passes
/// through a float.
///
/// Serialised untagged (a bare JSON scalar). Deserialising is written by hand with the same result
/// as `#[serde(untagged)]` (bool → `Bool`, integers in i64 range → `Int`, larger ones → `UInt`,
/// other numbers → `Float`, strings → `Text`): the derived untagged form tries each variant in turn
/// and builds an error for every miss, which was a visible share of the uplink's CPU when it decodes
/// spooled batches.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// Coil, discrete input or bit of a register.
    Bool(bool),
    /// Signed integer (i16, i32, i64), after scale and offset when both are identity.
    Int(i64),
    /// Unsigned integer (u16, u32, u64), after scale and offset when both are identity.
    UInt(u64),
    /// Float, or any integer that had a scale or offset applied.
    Float(f64),
    /// ASCII string (trailing NULs and spaces trimmed).
    Text(String),
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a bool, a number or a string")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
                Ok(Value::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
                Ok(Value::Int(i))
            }
            fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
                Ok(i64::try_from(u).map_or(Value::UInt(u), Value::Int))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
                Ok(Value::Float(f))
            }
            fn visit_str<E>(self, s: &str) -> Result<Value, E> {
                Ok(Value::Text(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Value, E> {
                Ok(Value::Text(s))
            }
        }
        d.deserialize_any(V)
    }
}

impl Value {
    /// The value as a float, for calculators; `None` for text.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            Value::Int(i) => Some(i as f64),
            Value::UInt(u) => Some(u as f64),
            Value::Float(f) => Some(f),
            Value::Text(_) => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// One point's value from one poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Point name, unique within its device (`cell_voltage_v`).
    pub point: Arc<str>,
    /// The value; `None` when nothing could be read or decoded (quality says why).
    pub value: Option<Value>,
    /// Engineering unit after scaling (`V`, `kA`, `mg/m3`); empty when dimensionless.
    pub unit: Arc<str>,
    /// Trust in this value.
    pub quality: Quality,
    /// When the read that returned this value completed (or failed).
    pub ts: Timestamp,
}

/// Everything one device returned in one poll cycle of one poll class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingBatch {
    /// Source (physical connection) name from the configuration.
    pub source: Arc<str>,
    /// Device name, unique within the site.
    pub device: Arc<str>,
    /// Modbus unit id the device answered on.
    pub unit_id: u8,
    /// The poll class's period in milliseconds (e.g. 1000 for cell voltages).
    pub poll_interval_ms: u64,
    /// The scheduled instant of this cycle (deadline), for completeness accounting.
    pub scheduled: Timestamp,
    /// Readings, one per configured point, in read-plan order.
    pub readings: Vec<Reading>,
}

impl ReadingBatch {
    /// Number of readings of each quality.
    pub fn quality_counts(&self) -> [usize; Quality::ALL.len()] {
        let mut counts = [0; Quality::ALL.len()];
        for r in &self.readings {
            counts[r.quality as usize] += 1;
        }
        counts
    }
}

/// A unit of data on its way north: what fan-out hands to each uplink's spool.
///
/// The spool stores records in this canonical form (its body is the record's protobuf, or JSON for
/// sealed records, see [`crate::codec::body`]) and each uplink encodes them
/// with its own encoder at send time, adding `(site, stream, seq)`. Later streams (metrics, events,
/// emissions) add variants here.
///
/// Serialised internally tagged (`{"record":"batch",...}`). Deserialising is written by hand with
/// the same result as the derived form: the derived form buffers every record into serde's
/// `Content` tree before it looks at the tag, which was a visible share of the uplink's CPU when it
/// decodes spooled batches. Our serialiser writes the tag first, and then the variant is read
/// straight from the input; a record whose tag comes later is still accepted (through a
/// `serde_json::Value`).
#[derive(Debug, Clone, PartialEq, Serialize)]
// The tag is `record`, not `kind`: `Event` has a field named `kind`, and an internally tagged
// enum whose variant has a field of the tag's name serialises the key twice (unreadable).
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// One poll batch of one device (stream `live`).
    Batch(ReadingBatch),
    /// Metrics computed by one calculator at one instant (stream `metrics`).
    Metrics(MetricBatch),
    /// Something that happened (stream `events`).
    Event(Event),
    /// A closed aggregation window of a regulated quantity (stream `emissions`).
    Aggregate(Aggregate),
}

impl Record {
    /// Whether this record is a poll batch that its JSON form (the spool body of older builds)
    /// decodes back to exactly: JSON has no NaN or infinity, so a non-finite float is written as `null` and comes
    /// back as no value. Other kinds answer `false` (not checked).
    pub fn is_batch_exact_in_json(&self) -> bool {
        match self {
            Record::Batch(b) => b
                .readings
                .iter()
                .all(|r| !matches!(r.value, Some(Value::Float(f)) if !f.is_finite())),
            _ => false,
        }
    }

    /// The stream a record travels on.
    pub fn stream(&self) -> Stream {
        match self {
            Record::Batch(_) => Stream::Live,
            Record::Metrics(_) => Stream::Metrics,
            Record::Event(_) => Stream::Events,
            Record::Aggregate(_) => Stream::Emissions,
        }
    }
}

/// Record streams, in increasing priority (the spool drops the lowest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Raw poll batches for operators.
    Live,
    /// Computed metrics.
    Metrics,
    /// Events (anode effects, exceedances, outages).
    Events,
    /// Regulated emission records.
    Emissions,
}

impl Stream {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Live => "live",
            Stream::Metrics => "metrics",
            Stream::Events => "events",
            Stream::Emissions => "emissions",
        }
    }
}

/// The variant names of [`Record`] as they appear in its `record` tag.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RecordTag {
    Batch,
    Metrics,
    Event,
    Aggregate,
}

impl RecordTag {
    /// Deserialise the variant's fields from `d`.
    fn variant<'de, D: serde::Deserializer<'de>>(self, d: D) -> Result<Record, D::Error> {
        Ok(match self {
            RecordTag::Batch => Record::Batch(ReadingBatch::deserialize(d)?),
            RecordTag::Metrics => Record::Metrics(MetricBatch::deserialize(d)?),
            RecordTag::Event => Record::Event(Event::deserialize(d)?),
            RecordTag::Aggregate => Record::Aggregate(Aggregate::deserialize(d)?),
        })
    }
}

/// The first key of a record object: the tag, or another field (kept for the slow path).
enum FirstKey {
    Tag,
    Other(String),
}

impl<'de> Deserialize<'de> for FirstKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = FirstKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, s: &str) -> Result<FirstKey, E> {
                Ok(if s == "record" {
                    FirstKey::Tag
                } else {
                    FirstKey::Other(s.to_owned())
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, Visitor, value::MapAccessDeserializer};

        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Record;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a record: an object with a `record` tag")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
                let first = match map.next_key::<FirstKey>()? {
                    None => return Err(A::Error::missing_field("record")),
                    Some(FirstKey::Tag) => {
                        // The common case: the rest of the map is the variant's fields.
                        let tag: RecordTag = map.next_value()?;
                        return tag.variant(MapAccessDeserializer::new(map));
                    }
                    Some(FirstKey::Other(key)) => key,
                };
                // The tag comes later: collect the fields, then decode the variant from them.
                let mut fields = serde_json::Map::new();
                fields.insert(first, map.next_value()?);
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    fields.insert(k, v);
                }
                let tag = fields
                    .remove("record")
                    .ok_or_else(|| A::Error::missing_field("record"))?;
                let tag = RecordTag::deserialize(tag).map_err(A::Error::custom)?;
                tag.variant(serde_json::Value::Object(fields))
                    .map_err(A::Error::custom)
            }
        }
        d.deserialize_map(V)
    }
}

/// A computed value: kWh per tonne, aluminium produced, AEM, a mass flow…
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Name with its unit as suffix (`dc_energy_kwh_per_t`).
    pub name: Arc<str>,
    /// The value; `None` when it cannot be computed (quality says why).
    pub value: Option<f64>,
    /// Unit (`kWh/t`, `t`, `kg/h`).
    pub unit: Arc<str>,
    /// Trust: the worst quality of the inputs, or `substituted`.
    pub quality: Quality,
    /// The instant (or end of the period) the value describes, from the inputs' timestamps.
    pub ts: Timestamp,
    /// Labels that place it (`line = "potline1"`, `cell = "pot_017"`, `period = "day"`), in
    /// order. JSON form: an object (see [`labels_json`]).
    #[serde(with = "labels_json")]
    pub labels: Vec<(Arc<str>, Arc<str>)>,
}

/// The JSON form of a metric's labels: an object `{"line":"potline1","period":"day"}`, keys in
/// the metric's order, because that is what JSON consumers (Telegraf's json parser, Node-RED,
/// Grafana's JSON sources, jq) read as labels. Reading also accepts the array of `[key, value]`
/// pairs that older builds wrote, so their spool bodies, history rows and ledger payloads still
/// decode.
pub mod labels_json {
    use std::fmt;
    use std::sync::Arc;

    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    use serde::ser::{SerializeMap, Serializer};

    type Labels = Vec<(Arc<str>, Arc<str>)>;

    /// Write the labels as an object, in order.
    pub fn serialize<S: Serializer>(
        labels: &[(Arc<str>, Arc<str>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(labels.len()))?;
        for (k, v) in labels {
            map.serialize_entry(&**k, &**v)?;
        }
        map.end()
    }

    /// Read an object of strings or an array of `[key, value]` pairs, keeping their order.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Labels, D::Error> {
        struct Form;
        impl<'de> Visitor<'de> for Form {
            type Value = Labels;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of label strings or an array of [key, value] pairs")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
                while let Some(kv) = a.next_entry::<Arc<str>, Arc<str>>()? {
                    out.push(kv);
                }
                Ok(out)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
                while let Some(kv) = a.next_element::<(Arc<str>, Arc<str>)>()? {
                    out.push(kv);
                }
                Ok(out)
            }
        }
        d.deserialize_any(Form)
    }
}

/// Metrics of one calculator at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricBatch {
    /// Calculator name (`potline`, `anode_effect`, `emissions`): the `{calc}` of the topic.
    pub calc: Arc<str>,
    /// The instant the batch describes.
    pub ts: Timestamp,
    /// The metrics.
    pub metrics: Vec<Metric>,
}

/// Something that happened: an anode effect started or ended, a limit was exceeded, an outage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What happened: the `kind` of the payload and the `{kind}` of the topic.
    pub kind: EventKind,
    /// What it concerns (`potline1/pot_017`, `gtc1_stack/so2`).
    pub subject: Arc<str>,
    /// `start`, `end` or `instant`.
    pub phase: EventPhase,
    /// When it happened (from reading timestamps).
    pub ts: Timestamp,
    /// Details (`peak_voltage_v`, `duration_s`, `limit_mg_m3`…).
    pub attributes: Vec<(Arc<str>, Value)>,
    /// One human-readable sentence.
    pub message: String,
}

/// What an [`Event`] reports. Serialised as its name (`anode_effect`, `outage`…), which is also
/// the `{kind}` of its topic; a name this build does not know (a newer agent's, read back by
/// `tail` or from a spool) is kept as [`EventKind::Other`] so that nothing is lost on the way.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `anode_effect`: An anode effect of a cell started or ended (`calc::anode_effect`).
    AnodeEffect,
    /// `exceedance`: A stack's hourly concentration exceeded its limit (`calc::limits`).
    Exceedance,
    /// `unit_mismatch`: A point's configured unit is not the one its calculator expects.
    UnitMismatch,
    /// `gap_bridged`: A gap in the line current was bridged at the last current.
    GapBridged,
    /// `gap_unbridged`: A gap in the line current was too long to bridge.
    GapUnbridged,
    /// `meter_anomaly`: An energy meter's counter went back or jumped.
    MeterAnomaly,
    /// `outage`: An uplink lost or regained its broker.
    Outage,
    /// `dead_letter`: A record its broker refused for good was set aside.
    DeadLetter,
    /// `uplink_failed`: An uplink's task failed and is restarted after a backoff.
    UplinkFailed,
    /// `spool_open_failed`: An uplink's spool could not be opened: that uplink is not started.
    SpoolOpenFailed,
    /// `spool_set_aside`: A damaged spool file was moved aside and a fresh one started.
    SpoolSetAside,
    /// `reload_failed`: A reload of the configuration could not start; the running one is kept.
    ReloadFailed,
    /// `config_change`: The configuration of the regulated figures changed (recorded in the ledger).
    ConfigChange,
    /// `clock_step`: The wall clock stepped against the monotonic clock.
    ClockStep,
    /// `write`: A Sparkplug command wrote (or failed to write) a device point.
    Write,
    /// `command_dropped`: A Sparkplug command was dropped unexecuted.
    CommandDropped,
    /// `hj212_encode_error`: Records for an HJ 212 MN could not be encoded and were skipped.
    Hj212EncodeError,
    /// `hj212_waiting`: The HJ 212 platform stopped or resumed acknowledging an MN.
    Hj212Waiting,
    /// A kind this build does not know, by its name.
    Other(Arc<str>),
}

impl EventKind {
    /// Every kind this build emits, in the order of the enum.
    pub const KNOWN: &[EventKind] = &[
        EventKind::AnodeEffect,
        EventKind::Exceedance,
        EventKind::UnitMismatch,
        EventKind::GapBridged,
        EventKind::GapUnbridged,
        EventKind::MeterAnomaly,
        EventKind::Outage,
        EventKind::DeadLetter,
        EventKind::UplinkFailed,
        EventKind::SpoolOpenFailed,
        EventKind::SpoolSetAside,
        EventKind::ReloadFailed,
        EventKind::ConfigChange,
        EventKind::ClockStep,
        EventKind::Write,
        EventKind::CommandDropped,
        EventKind::Hj212EncodeError,
        EventKind::Hj212Waiting,
    ];

    /// The name in payloads and topics.
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::AnodeEffect => "anode_effect",
            EventKind::Exceedance => "exceedance",
            EventKind::UnitMismatch => "unit_mismatch",
            EventKind::GapBridged => "gap_bridged",
            EventKind::GapUnbridged => "gap_unbridged",
            EventKind::MeterAnomaly => "meter_anomaly",
            EventKind::Outage => "outage",
            EventKind::DeadLetter => "dead_letter",
            EventKind::UplinkFailed => "uplink_failed",
            EventKind::SpoolOpenFailed => "spool_open_failed",
            EventKind::SpoolSetAside => "spool_set_aside",
            EventKind::ReloadFailed => "reload_failed",
            EventKind::ConfigChange => "config_change",
            EventKind::ClockStep => "clock_step",
            EventKind::Write => "write",
            EventKind::CommandDropped => "command_dropped",
            EventKind::Hj212EncodeError => "hj212_encode_error",
            EventKind::Hj212Waiting => "hj212_waiting",
            EventKind::Other(name) => name,
        }
    }

    /// The kind of that name; [`EventKind::Other`] for a name this build does not emit.
    pub fn from_name(name: &str) -> EventKind {
        EventKind::KNOWN
            .iter()
            .find(|k| k.as_str() == name)
            .cloned()
            .unwrap_or_else(|| EventKind::Other(Arc::from(name)))
    }
}

/// An event kind reads as its name where a `&str` is wanted (`&*event.kind == "outage"`).
impl std::ops::Deref for EventKind {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for EventKind {
    fn from(name: &str) -> EventKind {
        EventKind::from_name(name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<EventKind, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(EventKind::from_name(&name))
    }
}

/// Phase of an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventPhase {
    /// A condition began.
    Start,
    /// A condition ended.
    End,
    /// A one-off occurrence.
    Instant,
}

/// Length of an aggregation window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// One clock minute.
    Minute,
    /// One clock hour.
    Hour,
    /// One calendar day (site time zone).
    Day,
    /// One calendar month (site time zone).
    Month,
}

impl Period {
    /// Stable lowercase name (the `{period}` of the emissions topic).
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// A closed, clock-aligned window of one quantity of one subject (a stack pollutant, a line's
/// energy), with the validity verdict of the rules that apply (HJ 75/76 for CEMS data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Stack or line (`gtc1_stack`): the `{stack}` of the emissions topic.
    pub subject: Arc<str>,
    /// Quantity (`so2_mg_m3`, `so2_kg`).
    pub quantity: Arc<str>,
    /// Unit of avg/min/max.
    pub unit: Arc<str>,
    /// Window length.
    pub period: Period,
    /// Window start (inclusive).
    pub start: Timestamp,
    /// Window end (exclusive).
    pub end: Timestamp,
    /// Mean of the valid samples.
    pub avg: Option<f64>,
    /// Minimum of the valid samples.
    pub min: Option<f64>,
    /// Maximum of the valid samples.
    pub max: Option<f64>,
    /// Cumulative amount over the window (mass for concentrations × flow), when defined.
    pub total: Option<f64>,
    /// Unit of `total` (`kg`).
    pub total_unit: Option<Arc<str>>,
    /// Valid samples or sub-windows counted.
    pub samples: u32,
    /// Samples or sub-windows expected.
    pub expected: u32,
    /// Whether the window meets its validity rule.
    pub valid: bool,
    /// Overall quality of the window.
    pub quality: Quality,
    /// Sub-windows (hours of a day) missing or invalid whose value was filled by the
    /// substitution policy into `total`; omitted from JSON when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub substituted: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests;
