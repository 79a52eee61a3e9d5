//! DL/T 645 buses in the configuration: the validated model, and its validation with located
//! problems.
//!
//! A `[[sources]]` entry with `protocol = "dlt645-2007"` or `"dlt645-1997"` is a meter bus: a
//! serial port (`[sources.serial]`, 2400 baud 8E1 by default for 2007, 1200 8E1 for 1997) or a
//! transparent serial server (`tcp = "host:port"`, raw bytes both ways). Its meters are listed
//! under `[[sources.meters]]` with their address; a meter with `count` is a template of meters
//! with consecutive addresses (`address_step` apart), one with `addresses = [...]` a template
//! of the meters listed. Points come from a `[meter_maps.NAME]`
//! (CSV `name,di,format,unit,poll`, or inline) and from the meter's own `points`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

mod ids;
mod notation;

pub use ids::{Address, AddressError, DataId, DataIdError, Edition};
pub use notation::{Format, FormatParseError};

use crate::config::csv_map::line_of;
use crate::config::locate::{KeyPath, Origin, Report};
use crate::config::raw::RawSource;
use crate::config::template::NamePattern;
use crate::config::{HostPort, Parity, SerialSettings};

/// Defaults of a DL/T 645 bus.
pub mod defaults {
    use std::time::Duration;

    /// Poll period of a point without `poll`: meters are slow (2400 baud) and their values
    /// move slowly.
    pub const POLL: Duration = Duration::from_secs(10);
    /// A meter has up to 500 ms to start its answer, which takes ~0.2 s at 1200 baud.
    pub const TIMEOUT: Duration = Duration::from_secs(2);
    /// Silence between the end of one exchange and the next request: meters need a moment to
    /// turn their RS-485 driver around.
    pub const INTER_FRAME_GAP: Duration = Duration::from_millis(20);
    /// Baud rate of a 2007 bus.
    pub const BAUD_2007: u32 = 2400;
    /// Baud rate of a 1997 bus.
    pub const BAUD_1997: u32 = 1200;
}

/// One DL/T 645 bus, validated.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Unique source name.
    pub name: Arc<str>,
    /// The edition every meter on the bus speaks.
    pub edition: Edition,
    /// How to reach the bus.
    pub transport: BusTransport,
    /// Deadline of one exchange.
    pub timeout: Duration,
    /// Silence kept between two exchanges.
    pub inter_frame_gap: Duration,
    /// Reconnect backoff, first delay.
    pub reconnect_min: Duration,
    /// Reconnect backoff, upper bound.
    pub reconnect_max: Duration,
    /// Failed cycles in a row after which a meter is only probed.
    pub breaker_failures: u32,
    /// How often an open circuit lets one probe through.
    pub breaker_probe_interval: Duration,
    /// How long after the start the bus's schedule begins.
    pub poll_offset: Duration,
    /// The meters, templates expanded.
    pub meters: Vec<MeterConfig>,
}

/// How a bus is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum BusTransport {
    /// A transparent serial server: the bus's bytes over TCP.
    SerialServer(HostPort),
    /// A local serial port.
    Serial(SerialSettings),
}

impl std::fmt::Display for BusTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusTransport::SerialServer(addr) => write!(f, "serial server {addr}"),
            BusTransport::Serial(s) => write!(f, "serial {} at {} baud", s.path, s.baud),
        }
    }
}

/// One meter.
#[derive(Debug, Clone)]
pub struct MeterConfig {
    /// Unique device name.
    pub name: Arc<str>,
    /// Its address on the bus.
    pub address: Address,
    /// Labels carried into payloads.
    pub labels: Vec<(String, String)>,
    /// Its points, map first.
    pub points: Vec<MeterPoint>,
}

/// One value of a meter.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterPoint {
    /// Point name (`energy_kwh`).
    pub name: Arc<str>,
    /// The data identifier read.
    pub di: DataId,
    /// How its bytes read.
    pub format: Format,
    /// Engineering unit.
    pub unit: Arc<str>,
    /// Poll class.
    pub poll_interval: Duration,
}

/// One `[[sources.meters]]` entry: a meter, or a template when `count` is given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMeter {
    name: String,
    address: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
    map: Option<String>,
    #[serde(default)]
    labels: IndexMap<String, String>,
    #[serde(default)]
    points: IndexMap<String, RawMeterPoint>,
    count: Option<u32>,
    first_index: Option<u32>,
    address_step: Option<u64>,
}

/// A point as written inline (or read from one CSV row).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMeterPoint {
    di: String,
    format: String,
    unit: Option<String>,
    #[serde(default, with = "humantime_serde")]
    poll: Option<Duration>,
}

/// `[meter_maps.NAME]`: a CSV file, inline points, or both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMeterMap {
    csv: Option<PathBuf>,
    #[serde(default)]
    points: IndexMap<String, RawMeterPoint>,
}

/// A map point checked on its own: its DI's edition is known from its width.
#[derive(Debug, Clone)]
pub(crate) struct MapPoint {
    name: String,
    di: DataId,
    format: Format,
    unit: Option<String>,
    poll: Option<Duration>,
    origin: Origin,
}

/// The columns of a meter map CSV.
const COLUMNS: [&str; 6] = ["name", "di", "format", "unit", "poll", "description"];

/// Checks every `[meter_maps]` entry; `dir` resolves relative CSV paths.
pub(crate) fn meter_maps(
    raw: &IndexMap<String, RawMeterMap>,
    dir: &Path,
    report: &mut Report<'_>,
) -> IndexMap<String, Vec<MapPoint>> {
    let mut maps = IndexMap::new();
    for (name, map) in raw {
        let path = KeyPath::default().key("meter_maps").key(name);
        let mut points = Vec::new();
        if let Some(csv) = &map.csv {
            let file = if csv.is_absolute() {
                csv.clone()
            } else {
                dir.join(csv)
            };
            match std::fs::read_to_string(&file) {
                Ok(text) => points.extend(csv_points(&file, &text, &path, report)),
                Err(e) => report.at(
                    &path.key("csv"),
                    format!("cannot read meter map {}: {e}", file.display()),
                ),
            }
        }
        for (point, raw) in &map.points {
            let origin = Origin::Toml(path.key("points").key(point));
            if points.iter().any(|p: &MapPoint| &p.name == point) {
                report.at_point(&origin, "", format!("point `{point}` is defined twice"));
                continue;
            }
            points.extend(map_point(point, raw, origin, report));
        }
        maps.insert(name.clone(), points);
    }
    maps
}

/// The points of a meter map CSV.
fn csv_points(file: &Path, text: &str, map: &KeyPath, report: &mut Report<'_>) -> Vec<MapPoint> {
    let file_arc = Arc::new(file.to_path_buf());
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let csv_path = map.key("csv");
    let header = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            report.at_csv(file, 1, None, &csv_path, format!("unreadable header: {e}"));
            return Vec::new();
        }
    };
    let header_line = header.position().map_or(1, |p| line_of(text, p));
    let columns: Vec<&str> = header.iter().collect();
    for column in &columns {
        if !COLUMNS.contains(column) {
            let message = format!("unknown column `{column}`, expected {}", COLUMNS.join(", "));
            report.at_csv(file, header_line, Some(*column), &csv_path, message);
            return Vec::new();
        }
    }
    for required in ["name", "di", "format"] {
        if !columns.contains(&required) {
            let message = format!("missing required column `{required}`");
            report.at_csv(file, header_line, Some(required), &csv_path, message);
            return Vec::new();
        }
    }
    let mut points: Vec<MapPoint> = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(header_line, |p| line_of(text, p));
                report.at_csv(file, line, None, &csv_path, format!("malformed row: {e}"));
                continue;
            }
        };
        let line = record.position().map_or(header_line, |p| line_of(text, p));
        let cell = |c: &str| {
            let i = columns.iter().position(|k| *k == c)?;
            record.get(i).filter(|s| !s.is_empty()).map(str::to_owned)
        };
        let Some(name) = cell("name") else {
            report.at_csv(file, line, Some("name"), &csv_path, "missing point name");
            continue;
        };
        let point_path = map.key("points").key(&name);
        let origin = Origin::Csv {
            file: Arc::clone(&file_arc),
            line,
            path: point_path,
        };
        if points.iter().any(|p| p.name == name) {
            report.at_point(&origin, "name", format!("duplicate point `{name}`"));
            continue;
        }
        let poll = match cell("poll").map(|s| humantime::parse_duration(&s)) {
            Some(Err(e)) => {
                report.at_point(&origin, "poll", format!("invalid duration: {e}"));
                continue;
            }
            Some(Ok(d)) => Some(d),
            None => None,
        };
        let raw = RawMeterPoint {
            di: cell("di").unwrap_or_default(),
            format: cell("format").unwrap_or_default(),
            unit: cell("unit"),
            poll,
        };
        points.extend(map_point(&name, &raw, origin, report));
    }
    points
}

/// One map point checked on its own.
fn map_point(
    name: &str,
    raw: &RawMeterPoint,
    origin: Origin,
    report: &mut Report<'_>,
) -> Option<MapPoint> {
    let di = match raw.di.replace('.', "").len() {
        8 => DataId::parse(Edition::Dlt2007, &raw.di),
        _ => DataId::parse(Edition::Dlt1997, &raw.di),
    };
    let di = di
        .map_err(|_| {
            let message = format!(
                "invalid data identifier `{}`, expected 8 hex digits (DL/T 645-2007, `00010000`) or 4 (1997, `9010`)",
                raw.di
            );
            report.at_point(&origin, "di", message);
        })
        .ok();
    let format = raw
        .format
        .parse::<Format>()
        .map_err(|e| report.at_point(&origin, "format", e.to_string()))
        .ok();
    if raw.poll.is_some_and(|p| p.is_zero()) {
        report.at_point(&origin, "poll", "poll must be greater than zero");
        return None;
    }
    Some(MapPoint {
        name: name.to_owned(),
        di: di?,
        format: format?,
        unit: raw.unit.clone(),
        poll: raw.poll,
        origin,
    })
}

/// Keys of a Modbus source that a DL/T 645 bus does not use.
fn modbus_only_keys(raw: &RawSource) -> Vec<&'static str> {
    [
        ("rtu_over_tcp", raw.rtu_over_tcp.is_some()),
        (
            "max_registers_per_read",
            raw.max_registers_per_read.is_some(),
        ),
        ("max_bits_per_read", raw.max_bits_per_read.is_some()),
        ("max_gap_registers", raw.max_gap_registers.is_some()),
        ("devices", !raw.devices.is_empty()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect()
}

/// Validates the bus `raw` (at `path`) of `edition`.
pub(crate) fn bus(
    raw: &RawSource,
    edition: Edition,
    path: &KeyPath,
    maps: &IndexMap<String, Vec<MapPoint>>,
    report: &mut Report<'_>,
) -> BusConfig {
    refuse_modbus_keys(raw, edition, path, report);
    let transport = transport(raw, edition, path, report);
    let positive = |report: &mut Report<'_>, key: &str, v: Option<Duration>, d: Duration| {
        let v = v.unwrap_or(d);
        if v.is_zero() {
            report.at(&path.key(key), format!("{key} must be greater than zero"));
        }
        v
    };
    use crate::config::defaults as modbus;
    let timeout = positive(report, "timeout", raw.timeout, defaults::TIMEOUT);
    let reconnect_min = positive(
        report,
        "reconnect_min",
        raw.reconnect_min,
        modbus::RECONNECT_MIN,
    );
    let reconnect_max = positive(
        report,
        "reconnect_max",
        raw.reconnect_max,
        modbus::RECONNECT_MAX,
    );
    let probe = raw.breaker_probe_interval;
    let breaker_probe_interval = positive(
        report,
        "breaker_probe_interval",
        probe,
        modbus::BREAKER_PROBE_INTERVAL,
    );
    let default_poll = positive(report, "default_poll", raw.default_poll, defaults::POLL);
    let breaker_failures = raw.breaker_failures.unwrap_or(modbus::BREAKER_FAILURES);
    if breaker_failures == 0 {
        report.at(
            &path.key("breaker_failures"),
            "breaker_failures must be at least 1",
        );
    }
    if reconnect_min > reconnect_max {
        report.at(
            &path.key("reconnect_min"),
            format!(
                "reconnect_min ({}) is greater than reconnect_max ({})",
                humantime::format_duration(reconnect_min),
                humantime::format_duration(reconnect_max)
            ),
        );
    }
    let shared = Shared {
        edition,
        maps,
        default_poll,
    };
    let meters = meters(raw, &shared, path, report);
    BusConfig {
        name: Arc::from(raw.name.as_str()),
        edition,
        transport: transport.unwrap_or(BusTransport::SerialServer(HostPort {
            host: String::new(),
            port: 0,
        })),
        timeout,
        inter_frame_gap: raw.inter_request_gap.unwrap_or(defaults::INTER_FRAME_GAP),
        reconnect_min,
        reconnect_max,
        breaker_failures,
        breaker_probe_interval,
        poll_offset: raw.poll_offset.unwrap_or_default(),
        meters,
    }
}

/// Reports every Modbus-only key set on a DL/T 645 bus.
fn refuse_modbus_keys(raw: &RawSource, edition: Edition, path: &KeyPath, report: &mut Report<'_>) {
    for key in modbus_only_keys(raw) {
        let hint = if key == "devices" {
            "; a DL/T 645 bus lists its meters under [[sources.meters]]"
        } else {
            ""
        };
        report.at(
            &path.key(key),
            format!("`{key}` is a Modbus setting, not used by a {edition} bus{hint}"),
        );
    }
}

/// What every meter entry of a bus is validated against.
struct Shared<'a> {
    /// The edition the bus speaks.
    edition: Edition,
    /// The meter maps, checked.
    maps: &'a IndexMap<String, Vec<MapPoint>>,
    /// The poll period of a point without `poll`.
    default_poll: Duration,
}

/// The meters of a bus, templates expanded; two with one address are an error.
fn meters(
    raw: &RawSource,
    shared: &Shared<'_>,
    path: &KeyPath,
    report: &mut Report<'_>,
) -> Vec<MeterConfig> {
    let mut meters = Vec::new();
    for (j, meter) in raw.meters.iter().enumerate() {
        let meter_path = path.key("meters").index(j);
        expand_meter(meter, shared, &meter_path, report, &mut meters);
    }
    let mut seen = HashSet::new();
    for m in &meters {
        if !seen.insert(m.address) {
            report.at(
                &path.key("meters"),
                format!(
                    "meter `{}`: address {} is used twice on this bus",
                    m.name, m.address
                ),
            );
        }
    }
    meters
}

/// The transport of a bus: `tcp` (a serial server) or `[sources.serial]`.
fn transport(
    raw: &RawSource,
    edition: Edition,
    path: &KeyPath,
    report: &mut Report<'_>,
) -> Option<BusTransport> {
    match (&raw.tcp, &raw.serial) {
        (Some(addr), None) => match crate::config::validate::shared::parse_host_port(addr) {
            Ok(hp) => Some(BusTransport::SerialServer(hp)),
            Err(err) => {
                report.at(&path.key("tcp"), err.to_string());
                None
            }
        },
        (None, Some(serial)) => {
            let baud = serial.baud.unwrap_or(match edition {
                Edition::Dlt2007 => defaults::BAUD_2007,
                Edition::Dlt1997 => defaults::BAUD_1997,
            });
            if baud == 0 || serial.path.is_empty() {
                report.at(
                    &path.key("serial"),
                    "a serial port needs a path and a baud rate > 0",
                );
                return None;
            }
            Some(BusTransport::Serial(SerialSettings {
                path: serial.path.clone(),
                baud,
                data_bits: serial.data_bits.unwrap_or(8),
                parity: serial.parity.unwrap_or(Parity::Even),
                stop_bits: serial.stop_bits.unwrap_or(1),
            }))
        }
        _ => {
            report.at(
                path,
                format!("a {edition} bus needs exactly one of `tcp = \"host:port\"` (a transparent serial server) or `[sources.serial]`"),
            );
            None
        }
    }
}

/// Expands one `[[sources.meters]]` entry into `out`.
fn expand_meter(
    raw: &RawMeter,
    shared: &Shared<'_>,
    path: &KeyPath,
    report: &mut Report<'_>,
    out: &mut Vec<MeterConfig>,
) {
    let pattern = NamePattern::parse(&raw.name)
        .map_err(|e| report.at(&path.key("name"), e.to_string()))
        .ok();
    let addresses = meter_addresses(raw, path, report);
    let points = meter_points(raw, shared, path, report);
    let (Some(pattern), Some(addresses)) = (pattern, addresses) else {
        return;
    };
    if addresses.len() > 1 && !pattern.has_placeholder() {
        report.at(
            &path.key("name"),
            format!(
                "template name `{}` has no `{{n}}` placeholder but the entry has {} meters",
                raw.name,
                addresses.len()
            ),
        );
        return;
    }
    let first = u64::from(raw.first_index.unwrap_or(1));
    let labels: Vec<(String, String)> = raw
        .labels
        .iter()
        .map(|(key, v)| (key.clone(), v.clone()))
        .collect();
    for (k, address) in addresses.into_iter().enumerate() {
        out.push(MeterConfig {
            name: Arc::from(pattern.render(first + k as u64).as_str()),
            address,
            labels: labels.clone(),
            points: points.clone(),
        });
    }
}

/// The addresses of a meter entry: `address`, stepped by `address_step` for `count` meters,
/// or every one listed in `addresses`.
fn meter_addresses(
    raw: &RawMeter,
    path: &KeyPath,
    report: &mut Report<'_>,
) -> Option<Vec<Address>> {
    let parse = |report: &mut Report<'_>, key: KeyPath, text: &str| {
        Address::parse(text)
            .map_err(|e| report.at(&key, e.to_string()))
            .ok()
    };
    match (&raw.address, raw.addresses.is_empty()) {
        (Some(_), false) | (None, true) => {
            report.at(
                path,
                "a meter entry needs exactly one of `address` (with `count` for a template of consecutive addresses) or `addresses = [...]`",
            );
            None
        }
        (None, false) => {
            if raw.count.is_some() || raw.address_step.is_some() {
                report.at(
                    &path.key("addresses"),
                    "`addresses` lists every meter: `count` and `address_step` do not go with it",
                );
                return None;
            }
            let list: Vec<Option<Address>> = raw
                .addresses
                .iter()
                .enumerate()
                .map(|(i, text)| parse(report, path.key("addresses").index(i), text))
                .collect();
            list.into_iter().collect()
        }
        (Some(text), true) => {
            let first = parse(report, path.key("address"), text)?;
            let count = raw.count.unwrap_or(1);
            if count == 0 {
                report.at(&path.key("count"), "count must be at least 1");
                return None;
            }
            let step = raw.address_step.unwrap_or(1);
            let all: Option<Vec<Address>> = (0..u64::from(count))
                .map(|k| first.offset(k.checked_mul(step)?))
                .collect();
            if all.is_none() {
                report.at(
                    &path.key("count"),
                    "the template's addresses run past 12 digits",
                );
            }
            all
        }
    }
}

/// The points of a meter entry: its map's, then its own, each of the bus's edition.
fn meter_points(
    raw: &RawMeter,
    shared: &Shared<'_>,
    path: &KeyPath,
    report: &mut Report<'_>,
) -> Vec<MeterPoint> {
    let Shared {
        edition,
        maps,
        default_poll,
    } = *shared;
    let mut map_points: Vec<MapPoint> = Vec::new();
    if let Some(map) = &raw.map {
        match maps.get(map) {
            Some(p) => map_points.extend(p.iter().cloned()),
            None => report.at(&path.key("map"), format!("unknown meter map `{map}`")),
        }
    }
    for (name, p) in &raw.points {
        let origin = Origin::Toml(path.key("points").key(name));
        if map_points.iter().any(|m| &m.name == name) {
            let message = format!("point `{name}` is already defined by the map");
            report.at_point(&origin, "", message);
            continue;
        }
        map_points.extend(map_point(name, p, origin, report));
    }
    let mut points = Vec::new();
    for p in map_points {
        if p.di.edition() != edition {
            let message = format!(
                "data identifier {} is DL/T 645-{} but the bus speaks {edition}",
                p.di,
                if p.di.edition() == Edition::Dlt2007 {
                    "2007"
                } else {
                    "1997"
                },
            );
            report.at_point(&p.origin, "di", message);
            continue;
        }
        points.push(MeterPoint {
            name: Arc::from(p.name.as_str()),
            di: p.di,
            format: p.format,
            unit: Arc::from(p.unit.as_deref().unwrap_or_default()),
            poll_interval: p.poll.unwrap_or(default_poll),
        });
    }
    points
}
