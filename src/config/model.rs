//! The validated configuration: what the rest of the agent consumes.
//!
//! These types are produced by [`super::load`] after the TOML has been parsed, templates expanded,
//! CSV register maps imported and every rule checked. Nothing downstream re-validates them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Stream;

/// The whole agent configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages and relative paths).
    pub path: PathBuf,
    /// Site identifier: first element of every topic and record key (`qh-al-01`).
    pub site: String,
    /// Physical Modbus connections and the devices behind them.
    pub sources: Vec<SourceConfig>,
    /// DL/T 645 meter buses (`[[sources]]` with `protocol = "dlt645-…"`), in file order.
    pub meter_buses: Vec<crate::dlt645::config::BusConfig>,
    /// The built-in plant simulator, when the file has a `[simulator]` section.
    pub simulator: Option<crate::simulator::config::SimulatorConfig>,
    /// The calculators (`[calc]`): which devices and points play which role, which coefficient
    /// tables apply.
    pub calc: Option<crate::calc::CalcConfig>,
    /// Where durable state lives (spools, sequence numbers).
    pub state_dir: PathBuf,
    /// A stage without progress for this long makes `/readyz` answer 503 and stops the systemd
    /// watchdog (`crate::live::health`).
    pub stall_after: Duration,
    /// Northbound uplinks, each with its own spool.
    pub uplinks: Vec<UplinkConfig>,
    /// The HTTP side doors, when the file has an `[http]` section.
    pub http: Option<HttpConfig>,
    /// `[history]`: where closed windows are kept and for how long (used when `[calc]` exists).
    pub history: HistoryConfig,
    /// `[ledger]`: the site key and the regulated records, when the file has that section.
    pub ledger: Option<LedgerConfig>,
    /// `[[derived]]`: the plant's own formulas, validated, their inputs resolved.
    pub derived: Vec<crate::derived::config::DerivedPoint>,
}

/// `[history]`: the store of closed aggregate windows and the potline's daily and monthly figures,
/// which answers the HJ 212 platform's history requests across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    /// SQLite file (`state_dir/history.db` by default).
    pub path: PathBuf,
    /// How long minute windows are kept.
    pub minute_retention: Duration,
    /// How long hour windows are kept.
    pub hour_retention: Duration,
    /// How long day windows and the potline's daily and monthly figures are kept.
    pub day_retention: Duration,
}

/// `[ledger]`: regulated records are hash-chained and signed with the site key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConfig {
    /// The site's Ed25519 secret key (`smeltwatch keygen`); refused when group or others can
    /// read it.
    pub key_file: PathBuf,
    /// Which records are signed into the chain.
    pub regulated: Vec<Regulated>,
}

/// A kind of regulated record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Regulated {
    /// Minute aggregates of the stacks (2051 data); not signed unless listed.
    StackMinute,
    /// Hourly aggregates of the stacks (2061 data).
    StackHour,
    /// Daily aggregates of the stacks (2031 data).
    StackDay,
    /// Monthly aggregates of the stacks (no HJ 212 command: not uploaded there).
    StackMonth,
    /// The potlines' daily energy and PFC figures.
    PotlineDay,
    /// The potlines' monthly energy and PFC figures.
    PotlineMonth,
}

impl Regulated {
    /// The default of `regulated`: hourly, daily and monthly stack aggregates, the potlines'
    /// daily and monthly figures.
    pub const DEFAULT: [Regulated; 5] = [
        Regulated::StackHour,
        Regulated::StackDay,
        Regulated::StackMonth,
        Regulated::PotlineDay,
        Regulated::PotlineMonth,
    ];

    /// Name as written in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            Regulated::StackMinute => "stack_minute",
            Regulated::StackHour => "stack_hour",
            Regulated::StackDay => "stack_day",
            Regulated::StackMonth => "stack_month",
            Regulated::PotlineDay => "potline_day",
            Regulated::PotlineMonth => "potline_month",
        }
    }
}

/// `[http]`: where `/metrics`, the health checks, the live API and the dashboard are served.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Address to bind (`127.0.0.1:9187` by default: loopback only).
    pub listen: SocketAddr,
    /// Bearer token every route but `/healthz` requires, read from `token_file`.
    pub token: Option<Secret>,
}

/// One physical connection: a TCP endpoint or a serial bus. One poller task serves it, with one
/// request in flight at a time.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Unique name (`potline1_pcu_gw`).
    pub name: Arc<str>,
    /// How to reach the bus.
    pub transport: Transport,
    /// Deadline for one request/response; a device that misses it is marked `comm_fail` and the
    /// connection is rebuilt (a late reply would otherwise answer the next request).
    pub timeout: Duration,
    /// Pause between two requests on the bus (RTU needs ≥ 3.5 character times).
    pub inter_request_gap: Duration,
    /// Reconnect backoff: first delay, doubling up to `reconnect_max`, with ±25 % jitter.
    pub reconnect_min: Duration,
    /// Upper bound of the reconnect backoff.
    pub reconnect_max: Duration,
    /// Consecutive failed cycles after which a device's circuit opens and it is only probed
    /// every `breaker_probe_interval`.
    pub breaker_failures: u32,
    /// How often an open circuit lets one probe request through (half-open).
    pub breaker_probe_interval: Duration,
    /// How long after the agent starts this source's schedule begins: every job's deadlines are
    /// `start + poll_offset + k × period`. Unless configured, sources are grouped in
    /// configuration order into slots of up to 32 devices that poll together, and the slots are
    /// spread evenly over each source's shortest poll interval ([`crate::config::PollSlots`]), so
    /// that a slot's batches are stored in one spool transaction and a large plant does not read,
    /// encode and publish everything in the same instant. Always shorter than the source's
    /// shortest poll interval.
    pub poll_offset: Duration,
    /// Devices on this connection.
    pub devices: Vec<DeviceConfig>,
}

/// How a source reaches its devices.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// Modbus TCP (MBAP header).
    Tcp {
        /// Host and port.
        addr: HostPort,
    },
    /// Modbus RTU frames tunnelled over a raw TCP socket (serial device servers).
    RtuOverTcp {
        /// Host and port of the serial server.
        addr: HostPort,
    },
    /// Modbus RTU on a local serial port.
    Rtu(SerialSettings),
}

/// A host name or address with a port, resolved at connect time so that DNS changes are followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP literal.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl HostPort {
    /// From a socket address.
    pub fn from_addr(addr: SocketAddr) -> Self {
        HostPort {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Serial line settings for RTU.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialSettings {
    /// Device path (`/dev/ttyS1`, `/dev/serial/by-id/...`).
    pub path: String,
    /// Baud rate (9600, 19200, 38400, 115200 …).
    pub baud: u32,
    /// Data bits (7 or 8).
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits (1 or 2).
    pub stop_bits: u8,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity (the Modbus RTU default).
    Even,
    /// Odd parity.
    Odd,
}

/// One Modbus device (a unit id behind a connection).
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Unique name within the site (`pot_017`).
    pub name: Arc<str>,
    /// Modbus unit id (1–247; 0 is broadcast and never valid for reads; 255 is accepted on TCP).
    pub unit_id: u8,
    /// Largest register count in one read (≤ 125; ≤ 2000 for coils/discrete inputs, see
    /// `max_bits_per_read`).
    pub max_registers_per_read: u16,
    /// Largest bit count in one coil/discrete-input read (≤ 2000).
    pub max_bits_per_read: u16,
    /// Largest run of unused registers a read may span to merge two neighbouring points.
    pub max_gap_registers: u16,
    /// Some devices only accept one point per request: never coalesce.
    pub single_point_reads: bool,
    /// Free-form labels carried into payloads (`line = "1"`, `kind = "pcu"`).
    pub labels: Vec<(String, String)>,
    /// Points, in configuration order.
    pub points: Vec<PointConfig>,
}

/// One value on a device.
#[derive(Debug, Clone, PartialEq)]
pub struct PointConfig {
    /// Name with its unit as suffix by convention (`cell_voltage_v`).
    pub name: Arc<str>,
    /// Register area.
    pub area: Area,
    /// 0-based protocol address. Datasheets often number registers from 1 (40001 = holding 0).
    pub address: u16,
    /// Wire type.
    pub data_type: DataType,
    /// Order of the 16-bit words and of the bytes within them, for multi-register types.
    pub byte_order: ByteOrder,
    /// engineering = raw × scale + offset.
    pub scale: f64,
    /// See `scale`.
    pub offset: f64,
    /// Engineering unit after scaling.
    pub unit: Arc<str>,
    /// Poll class: how often this point is read.
    pub poll_interval: Duration,
    /// Plausible range in engineering units; values outside get `out_of_range`.
    pub range: Option<(f64, f64)>,
    /// Whether smeltwatch may write this point. Default false: smeltwatch never writes to a
    /// controller unless the configuration allows that register explicitly.
    pub writable: bool,
}

impl PointConfig {
    /// Number of registers (or bits, for coil/discrete areas) the point occupies.
    pub fn width(&self) -> u16 {
        match self.area {
            Area::Coil | Area::DiscreteInput => 1,
            Area::Holding | Area::Input => self.data_type.registers(),
        }
    }
}

/// Modbus data area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    /// Read/write bits (FC 1).
    Coil,
    /// Read-only bits (FC 2).
    DiscreteInput,
    /// Read/write registers (FC 3).
    Holding,
    /// Read-only registers (FC 4).
    Input,
}

impl Area {
    /// Whether the area holds bits rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Area::Coil | Area::DiscreteInput)
    }

    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Area::Coil => "coil",
            Area::DiscreteInput => "discrete_input",
            Area::Holding => "holding",
            Area::Input => "input",
        }
    }
}

/// Wire type of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// A coil or discrete input, or with `bit = Some(n)` bit n (0 = LSB) of one register.
    Bool {
        /// Bit index within a register (0–15); `None` for coil/discrete areas.
        bit: Option<u8>,
    },
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit (two's complement).
    I16,
    /// Unsigned 32-bit (2 registers).
    U32,
    /// Signed 32-bit (2 registers).
    I32,
    /// Unsigned 64-bit (4 registers).
    U64,
    /// Signed 64-bit (4 registers).
    I64,
    /// IEEE 754 single (2 registers).
    F32,
    /// IEEE 754 double (4 registers).
    F64,
    /// ASCII text of N registers (2 characters each, high byte first under ABCD).
    Ascii {
        /// Register count.
        registers: u16,
    },
}

impl DataType {
    /// Registers occupied in a register area.
    pub fn registers(self) -> u16 {
        match self {
            DataType::Bool { .. } | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::Ascii { registers } => registers,
        }
    }

    /// Name as written in configuration files (`f32`, `ascii`, `bool`).
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool { .. } => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::Ascii { .. } => "ascii",
        }
    }
}

/// Order of bytes in a multi-register value, named by where the most significant byte `A` lands.
///
/// `ABCD` is Modbus big-endian (high word first, high byte first); `CDAB` swaps words (common on
/// PLCs and many meters); `BADC` swaps bytes within words; `DCBA` is fully little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ByteOrder {
    /// High word first, high byte first.
    #[default]
    #[serde(rename = "ABCD", alias = "abcd")]
    Abcd,
    /// Low word first, high byte first ("word swap").
    #[serde(rename = "CDAB", alias = "cdab")]
    Cdab,
    /// High word first, low byte first ("byte swap").
    #[serde(rename = "BADC", alias = "badc")]
    Badc,
    /// Low word first, low byte first (little-endian).
    #[serde(rename = "DCBA", alias = "dcba")]
    Dcba,
}

impl ByteOrder {
    /// All four orders.
    pub const ALL: [ByteOrder; 4] = [
        ByteOrder::Abcd,
        ByteOrder::Cdab,
        ByteOrder::Badc,
        ByteOrder::Dcba,
    ];

    /// Name as written in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            ByteOrder::Abcd => "ABCD",
            ByteOrder::Cdab => "CDAB",
            ByteOrder::Badc => "BADC",
            ByteOrder::Dcba => "DCBA",
        }
    }
}

/// A northbound uplink with its own spool.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// Unique name (`plant`, `province`); names the spool file.
    pub name: String,
    /// Transport-specific settings.
    pub kind: UplinkKind,
    /// Streams this uplink carries.
    pub streams: Vec<Stream>,
    /// Spool settings.
    pub spool: SpoolConfig,
}

/// Transport of an uplink.
#[derive(Debug, Clone)]
pub enum UplinkKind {
    /// An MQTT 3.1.1 broker.
    Mqtt(MqttConfig),
    /// An HJ 212 platform over TCP (the provincial regulator's data centre).
    Hj212(Hj212Config),
    /// A Sparkplug B 3.0 host (SCADA) through an MQTT 3.1.1 broker: smeltwatch is the edge node.
    Sparkplug(SparkplugConfig),
}

/// Sparkplug B uplink settings (`type = "sparkplug"`).
#[derive(Debug, Clone)]
pub struct SparkplugConfig {
    /// Broker, credentials, TLS, keep-alive, packet size and backoff, as for an MQTT uplink (its
    /// topic templates and encoding are not used: Sparkplug fixes both).
    pub mqtt: MqttConfig,
    /// Sparkplug group id (`spBv1.0/{group_id}/…`).
    pub group_id: String,
    /// Edge node id, unique within the group.
    pub edge_node_id: String,
    /// The primary host application whose `spBv1.0/STATE/{id}` gates the births, if any.
    pub primary_host_id: Option<String>,
    /// `[uplinks.device_writes]`: whether a DCMD may write Modbus points (default false).
    pub device_writes: bool,
    /// `[uplinks.device_writes] max_command_age`: a DCMD whose timestamp is further than this
    /// from the gateway's clock (older, or ahead) is refused (default 30 s).
    pub max_command_age: Duration,
}

/// HJ 212 TCP uplink settings (`type = "hj212"`, `[uplinks.hj212]`).
#[derive(Debug, Clone)]
pub struct Hj212Config {
    /// Platform host and port.
    pub platform: HostPort,
    /// The code table (`hj212-2017` built in, or a TOML file of another edition).
    pub table: Arc<crate::config::hj212_table::Table>,
    /// Station header: ST, PW, MN, acknowledgement flag, local time offset.
    pub station: crate::config::hj212_table::Station,
    /// MN per stack, for stacks registered as separate monitoring points.
    pub mn_by_stack: Vec<(String, String)>,
    /// How long to wait for a 9014 before sending again (OverTime).
    pub over_time: Duration,
    /// Sends again before the connection is given up (ReCount).
    pub re_count: u32,
    /// Reconnect backoff, first delay.
    pub reconnect_min: Duration,
    /// Reconnect backoff, upper bound.
    pub reconnect_max: Duration,
    /// How long an MN's data may go unacknowledged before an `hj212_waiting` event.
    pub max_wait: Duration,
}

/// MQTT uplink settings.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker host and port.
    pub broker: HostPort,
    /// `mqtts` when true (TLS); plain TCP otherwise.
    pub tls: bool,
    /// Client id; defaults to `smeltwatch-{site}-{uplink}`.
    pub client_id: String,
    /// User name, if the broker requires one.
    pub username: Option<String>,
    /// Password, resolved from `password`, `password_file` or `password_env`. Never logged.
    pub password: Option<Secret>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Largest packet accepted or sent (rumqttc's default of 10 KiB is far too small).
    pub max_packet_size: usize,
    /// Publishes awaiting PUBACK at once.
    pub max_inflight: u16,
    /// Reconnect backoff, first delay.
    pub reconnect_min: Duration,
    /// Reconnect backoff, upper bound.
    pub reconnect_max: Duration,
    /// Topic templates per stream, with `{site}`, `{source}`, `{device}`, `{calc}`, `{kind}`.
    pub topics: TopicTemplates,
    /// Payload encoding, per stream (`encoding = "json" | "protobuf"`, default json).
    pub encoding: EncodingConfig,
    /// `[uplinks.tls]`: CA, client certificate and SNI of an `mqtts://` broker.
    pub tls_settings: TlsSettings,
    /// Largest rate at which the backlog is replayed after an outage, in records per second.
    pub replay_rate: u32,
}

/// TLS settings of an `mqtts://` uplink (`[uplinks.tls]`). Paths are PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// CA certificates the broker's certificate must chain to; the system roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain for mutual TLS (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// Private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Name sent as SNI and checked against the broker's certificate; the broker host when `None`.
    pub server_name: Option<String>,
}

/// Topic templates (docs/TOPICS.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplates {
    /// Live poll batches: `smeltwatch/{site}/live/{source}/{device}`.
    pub live: String,
    /// Metrics: `smeltwatch/{site}/metrics/{calc}`.
    pub metrics: String,
    /// Events: `smeltwatch/{site}/events/{kind}`.
    pub events: String,
    /// Emissions: `smeltwatch/{site}/emissions/{stack}/{period}`.
    pub emissions: String,
    /// Retained agent status: `smeltwatch/{site}/status`.
    pub status: String,
}

impl Default for TopicTemplates {
    fn default() -> Self {
        TopicTemplates {
            live: "smeltwatch/{site}/live/{source}/{device}".into(),
            metrics: "smeltwatch/{site}/metrics/{calc}".into(),
            events: "smeltwatch/{site}/events/{kind}".into(),
            emissions: "smeltwatch/{site}/emissions/{stack}/{period}".into(),
            status: "smeltwatch/{site}/status".into(),
        }
    }
}

/// A payload encoding of the MQTT uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// JSON objects (`codec::json`).
    #[default]
    Json,
    /// `smeltwatch.v1.Envelope` protobuf messages (`codec::protobuf`).
    Protobuf,
    /// HJ 212 text packets (`codec::hj212`), for platforms that take HJ 212 over MQTT:
    /// a poll batch as 2011 real-time data, a closed window as 2051/2061/2031. Only the `live`
    /// and `emissions` streams have this form.
    Hj212,
}

impl Encoding {
    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Protobuf => "protobuf",
            Encoding::Hj212 => "hj212",
        }
    }
}

/// The encoding of each stream of an uplink: one default, optionally overridden per stream.
#[derive(Debug, Clone, Default)]
pub struct EncodingConfig {
    /// The encoding of every stream not listed in `per_stream`.
    pub default: Encoding,
    /// Per-stream overrides.
    pub per_stream: Vec<(Stream, Encoding)>,
    /// `[uplinks.hj212]` of an MQTT uplink: the station header HJ 212 packets carry. Present
    /// exactly when some stream of the uplink is encoded as `hj212`.
    pub hj212: Option<Hj212Station>,
}

/// What an HJ 212 packet says about its sender: the code table, the station header (ST, PW, MN,
/// local time offset) and the MN of each stack registered as a monitoring point of its own.
#[derive(Debug, Clone)]
pub struct Hj212Station {
    /// The code table (`hj212-2017` built in, or a TOML file of another edition).
    pub table: Arc<crate::config::hj212_table::Table>,
    /// Station header: ST, PW, MN, acknowledgement flag, local time offset.
    pub station: crate::config::hj212_table::Station,
    /// MN per stack, for stacks registered as separate monitoring points.
    pub mn_by_stack: Vec<(String, String)>,
}

impl EncodingConfig {
    /// The encoding records of `stream` are published with.
    pub fn for_stream(&self, stream: Stream) -> Encoding {
        self.per_stream
            .iter()
            .find(|(s, _)| *s == stream)
            .map_or(self.default, |(_, e)| *e)
    }
}

/// A credential that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Spool settings of one uplink.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolConfig {
    /// Byte budget of the spool file (payload bytes).
    pub max_bytes: u64,
    /// Records of the `live`, `metrics` and `events` streams older than this (by their creation
    /// time, against the newest record appended) are dropped and counted like budget drops.
    /// Emissions never expire: only the byte budget bounds them. `None`: no age limit.
    pub max_age: Option<std::time::Duration>,
    /// `FULL` (default: an acknowledged record survives power loss) or `NORMAL` (less flash wear).
    pub synchronous_full: bool,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_bytes: 256 * 1024 * 1024,
            max_age: None,
            synchronous_full: true,
        }
    }
}
