//! The configuration file as written: serde structs that check its shape only.
//!
//! Every struct denies unknown keys, every choice is an enum, every duration is humantime. Values
//! that have a semantic range (unit ids, read sizes, counts) are kept wide here (`i64`, `u32`) so
//! that the second phase (`validate`) can name the rule that was broken instead of serde
//! reporting a bare integer overflow. Nothing in this module applies defaults that depend on other
//! keys; that is `validate`'s job, so the defaults live in one place.

use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

use super::model::{Area, ByteOrder, Encoding, EncodingConfig, Parity};
use crate::model::Stream;
use crate::simulator::config::SimulatorConfig;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) site: String,
    pub(crate) state_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) stall_after: Option<Duration>,
    pub(crate) simulator: Option<SimulatorConfig>,
    pub(crate) calc: Option<crate::calc::CalcConfig>,
    #[serde(default)]
    pub(crate) register_maps: IndexMap<String, RawMap>,
    /// DL/T 645 point maps (`[meter_maps.NAME]`).
    #[serde(default)]
    pub(crate) meter_maps: IndexMap<String, crate::dlt645::config::RawMeterMap>,
    #[serde(default)]
    pub(crate) sources: Vec<RawSource>,
    #[serde(default)]
    pub(crate) uplinks: Vec<RawUplink>,
    pub(crate) http: Option<RawHttp>,
    pub(crate) history: Option<RawHistory>,
    pub(crate) ledger: Option<RawLedger>,
    #[serde(default)]
    pub(crate) derived: Vec<crate::derived::config::RawDerived>,
}

/// `[history]`: the store of closed windows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHistory {
    pub(crate) file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) minute_retention: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) hour_retention: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) day_retention: Option<Duration>,
}

/// `[ledger]`: the site key and which records are signed into the chain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLedger {
    pub(crate) key_file: PathBuf,
    pub(crate) regulated: Option<Vec<super::model::Regulated>>,
}

/// `[http]`: the side doors (metrics, health, live API, dashboard).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    pub(crate) listen: Option<String>,
    pub(crate) token_file: Option<PathBuf>,
}

/// A named register map: a CSV file, inline points, or both (inline points are added).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMap {
    pub(crate) csv: Option<PathBuf>,
    #[serde(default)]
    pub(crate) points: IndexMap<String, RawPoint>,
}

/// One point as written in TOML (or assembled from one CSV row).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPoint {
    pub(crate) area: Area,
    pub(crate) address: u16,
    #[serde(rename = "type")]
    pub(crate) data_type: RawType,
    pub(crate) byte_order: Option<ByteOrder>,
    pub(crate) scale: Option<f64>,
    pub(crate) offset: Option<f64>,
    pub(crate) unit: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) poll: Option<Duration>,
    pub(crate) range: Option<[f64; 2]>,
    pub(crate) bit: Option<u8>,
    pub(crate) registers: Option<u16>,
    pub(crate) writable: Option<bool>,
    /// Free text for people; accepted so that maps can document themselves, never used.
    #[allow(dead_code, reason = "documentation for readers of the file only")]
    pub(crate) description: Option<String>,
}

/// Wire type names as written in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    Ascii,
}

impl RawType {
    /// Registers the type occupies, `None` for ascii (its length is configured).
    pub(crate) fn fixed_registers(self) -> Option<u16> {
        match self {
            RawType::Bool | RawType::U16 | RawType::I16 => Some(1),
            RawType::U32 | RawType::I32 | RawType::F32 => Some(2),
            RawType::U64 | RawType::I64 | RawType::F64 => Some(4),
            RawType::Ascii => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            RawType::Bool => "bool",
            RawType::U16 => "u16",
            RawType::I16 => "i16",
            RawType::U32 => "u32",
            RawType::I32 => "i32",
            RawType::U64 => "u64",
            RawType::I64 => "i64",
            RawType::F32 => "f32",
            RawType::F64 => "f64",
            RawType::Ascii => "ascii",
        }
    }
}

/// One `[[sources]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    pub(crate) name: String,
    /// `modbus` (the default), `dlt645-2007` or `dlt645-1997`.
    pub(crate) protocol: Option<RawProtocol>,
    pub(crate) tcp: Option<String>,
    pub(crate) rtu_over_tcp: Option<String>,
    pub(crate) serial: Option<RawSerial>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) inter_request_gap: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) reconnect_min: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) reconnect_max: Option<Duration>,
    pub(crate) breaker_failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) breaker_probe_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) default_poll: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) poll_offset: Option<Duration>,
    pub(crate) max_registers_per_read: Option<u32>,
    pub(crate) max_bits_per_read: Option<u32>,
    pub(crate) max_gap_registers: Option<u16>,
    #[serde(default)]
    pub(crate) devices: Vec<RawDevice>,
    /// The meters of a DL/T 645 bus.
    #[serde(default)]
    pub(crate) meters: Vec<crate::dlt645::config::RawMeter>,
}

/// The acquisition protocol of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) enum RawProtocol {
    /// Modbus TCP, RTU or RTU over TCP (by the transport).
    #[serde(rename = "modbus")]
    Modbus,
    /// DL/T 645-2007 meters.
    #[serde(rename = "dlt645-2007")]
    Dlt645v2007,
    /// DL/T 645-1997 meters.
    #[serde(rename = "dlt645-1997")]
    Dlt645v1997,
}

impl RawProtocol {
    /// The DL/T 645 edition, for a meter bus.
    pub(crate) fn dlt645(self) -> Option<crate::dlt645::config::Edition> {
        match self {
            RawProtocol::Modbus => None,
            RawProtocol::Dlt645v2007 => Some(crate::dlt645::config::Edition::Dlt2007),
            RawProtocol::Dlt645v1997 => Some(crate::dlt645::config::Edition::Dlt1997),
        }
    }
}

/// `[sources.serial]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSerial {
    pub(crate) path: String,
    pub(crate) baud: Option<u32>,
    pub(crate) parity: Option<Parity>,
    pub(crate) data_bits: Option<u8>,
    pub(crate) stop_bits: Option<u8>,
}

/// One `[[sources.devices]]` entry: a device, or a template when `count` is given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDevice {
    pub(crate) name: String,
    pub(crate) unit_id: i64,
    pub(crate) map: Option<String>,
    #[serde(default)]
    pub(crate) labels: IndexMap<String, String>,
    pub(crate) single_point_reads: Option<bool>,
    pub(crate) max_registers_per_read: Option<u32>,
    pub(crate) max_bits_per_read: Option<u32>,
    pub(crate) max_gap_registers: Option<u16>,
    #[serde(default)]
    pub(crate) points: IndexMap<String, RawPoint>,
    pub(crate) count: Option<u32>,
    pub(crate) first_index: Option<u32>,
    pub(crate) unit_id_step: Option<i64>,
    pub(crate) address_stride: Option<u32>,
}

/// Uplink transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawUplinkType {
    Mqtt,
    Hj212,
    Sparkplug,
}

/// One `[[uplinks]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUplink {
    pub(crate) name: String,
    #[serde(rename = "type")]
    pub(crate) kind: RawUplinkType,
    /// MQTT broker URL (`type = "mqtt"`).
    pub(crate) broker: Option<String>,
    /// HJ 212 platform `host:port` (`type = "hj212"`).
    pub(crate) platform: Option<String>,
    /// `[uplinks.hj212]`: station identity and exchange settings (`type = "hj212"`).
    pub(crate) hj212: Option<RawHj212>,
    pub(crate) client_id: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) password_env: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) keep_alive: Option<Duration>,
    pub(crate) max_packet_size: Option<u64>,
    pub(crate) max_inflight: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) reconnect_min: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) reconnect_max: Option<Duration>,
    pub(crate) streams: Option<Vec<Stream>>,
    pub(crate) topics: Option<RawTopics>,
    pub(crate) encoding: Option<RawEncoding>,
    pub(crate) spool: Option<RawSpool>,
    pub(crate) tls: Option<RawTls>,
    pub(crate) replay_rate: Option<u32>,
    /// Sparkplug group id (`type = "sparkplug"` only).
    pub(crate) group_id: Option<String>,
    /// Sparkplug edge node id (`type = "sparkplug"` only).
    pub(crate) edge_node_id: Option<String>,
    /// Sparkplug primary host application id (`type = "sparkplug"` only).
    pub(crate) primary_host_id: Option<String>,
    /// `[uplinks.device_writes]`: DCMD writes to Modbus points (`type = "sparkplug"` only).
    pub(crate) device_writes: Option<RawDeviceWrites>,
}

/// `[uplinks.device_writes]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDeviceWrites {
    pub(crate) enabled: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) max_command_age: Option<Duration>,
}

/// `[uplinks.hj212]`: the station header and the exchange settings of an HJ 212 TCP uplink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHj212 {
    pub(crate) mn: String,
    pub(crate) pw: String,
    pub(crate) st: Option<i64>,
    pub(crate) table: Option<String>,
    pub(crate) ack: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) over_time: Option<Duration>,
    pub(crate) re_count: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) max_wait: Option<Duration>,
    pub(crate) utc_offset_hours: Option<i32>,
    #[serde(default)]
    pub(crate) mn_by_stack: IndexMap<String, String>,
}

/// `[uplinks.tls]`: PEM files and SNI of an `mqtts://` broker.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) server_name: Option<String>,
}

/// `encoding = "protobuf"`, or per stream: `encoding = { default = "json", live = "protobuf" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawEncoding {
    /// One encoding for every stream.
    One(Encoding),
    /// A default and per-stream overrides.
    PerStream(RawStreamEncoding),
}

/// The table form of `encoding`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStreamEncoding {
    pub(crate) default: Option<Encoding>,
    pub(crate) live: Option<Encoding>,
    pub(crate) metrics: Option<Encoding>,
    pub(crate) events: Option<Encoding>,
    pub(crate) emissions: Option<Encoding>,
}

impl RawEncoding {
    /// The encodings per stream (the station of `hj212` is added by the uplink's validation).
    pub(crate) fn resolve(&self) -> EncodingConfig {
        match self {
            RawEncoding::One(e) => EncodingConfig {
                default: *e,
                per_stream: Vec::new(),
                hj212: None,
            },
            RawEncoding::PerStream(t) => EncodingConfig {
                default: t.default.unwrap_or_default(),
                per_stream: [
                    (Stream::Live, t.live),
                    (Stream::Metrics, t.metrics),
                    (Stream::Events, t.events),
                    (Stream::Emissions, t.emissions),
                ]
                .into_iter()
                .filter_map(|(s, e)| Some((s, e?)))
                .collect(),
                hj212: None,
            },
        }
    }
}

/// `[uplinks.topics]`: overrides of the default topic templates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTopics {
    pub(crate) live: Option<String>,
    pub(crate) metrics: Option<String>,
    pub(crate) events: Option<String>,
    pub(crate) emissions: Option<String>,
    pub(crate) status: Option<String>,
}

/// `[uplinks.spool]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpool {
    pub(crate) max_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) max_age: Option<Duration>,
    pub(crate) synchronous: Option<RawSynchronous>,
}

/// SQLite `synchronous` levels offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawSynchronous {
    Full,
    Normal,
}
