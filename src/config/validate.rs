//! The second phase: raw structs → validated [`Config`].
//!
//! Applies every default (in one place), imports CSV register maps, expands device templates and
//! checks every rule that serde cannot express. Problems are collected, never returned early, so
//! that the caller sees all of them; the `Config` built alongside is only handed out when the
//! collector stayed empty.
//!
//! Overlap rules: two points overlap when they share a register (or a bit, for coil/discrete
//! areas) of the same area on the same unit id of the same source. A `bool` point with `bit` on a
//! register area only overlaps another `bool` point with the same register and bit, because
//! decoding a status word both as a whole and bit by bit is normal practice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;

use super::broker_url::BrokerUrl;
use super::csv_map::{PointDef, parse_csv_map};
use super::defaults;
use super::locate::{KeyPath, Origin, Report};
use super::model::{
    Area, ByteOrder, Config, DataType, DeviceConfig, HostPort, MqttConfig, PointConfig,
    SerialSettings, SourceConfig, SpoolConfig, TopicTemplates, Transport, UplinkConfig, UplinkKind,
};
use super::model::{HistoryConfig, LedgerConfig, Regulated};
use super::model::{HttpConfig, Parity, Secret, TlsSettings};
use super::raw::RawHttp;
use super::raw::{
    RawConfig, RawDevice, RawSource, RawSynchronous, RawTls, RawTopics, RawType, RawUplink,
    RawUplinkType,
};
use super::template::NamePattern;
use crate::model::Stream;

mod hj212;

/// Modbus limits (Modbus Application Protocol v1.1b3 §6.1–6.4).
const MODBUS_MAX_REGISTERS: u32 = 125;
const MODBUS_MAX_BITS: u32 = 2000;

/// A point that passed its own checks; the poll class may still come from the source default.
#[derive(Debug, Clone)]
struct CheckedPoint {
    name: Arc<str>,
    area: Area,
    address: u16,
    data_type: DataType,
    byte_order: ByteOrder,
    scale: f64,
    offset: f64,
    unit: Arc<str>,
    poll: Option<Duration>,
    range: Option<(f64, f64)>,
    writable: bool,
    origin: Origin,
}

impl CheckedPoint {
    fn width(&self) -> u32 {
        match self.area {
            Area::Coil | Area::DiscreteInput => 1,
            Area::Holding | Area::Input => u32::from(self.data_type.registers()),
        }
    }

    /// A bool on one bit of a register.
    fn bit(&self) -> Option<u8> {
        match self.data_type {
            DataType::Bool { bit } if !self.area.is_bits() => bit,
            _ => None,
        }
    }
}

/// `holding 10-11`, `coil 5`, `input 7 bit 3`.
fn describe_registers(area: Area, address: u32, width: u32, bit: Option<u8>) -> String {
    let area = area.as_str();
    match (width, bit) {
        (_, Some(bit)) => format!("{area} {address} bit {bit}"),
        (0 | 1, None) => format!("{area} {address}"),
        (w, None) => format!("{area} {address}-{}", address + w - 1),
    }
}

/// An interval of one point, for overlap sweeps. `owner` tells points of different devices
/// apart; `order` is the definition order (later ones are reported).
struct Span<'p> {
    area: Area,
    start: u32,
    end: u32,
    bit: Option<u8>,
    owner: usize,
    order: usize,
    point: &'p CheckedPoint,
}

/// Overlapping pairs `(earlier, later)` by definition order. Each point is reported at most once.
fn overlaps<'s, 'p>(spans: &'s mut [Span<'p>]) -> Vec<(&'s Span<'p>, &'s Span<'p>)> {
    spans.sort_by_key(|s| (s.area, s.bit.is_some(), s.start, s.bit, s.order));
    let mut pairs = Vec::new();
    let mut reach: Option<usize> = None;
    for i in 0..spans.len() {
        let current = &spans[i];
        if let Some(r) = reach {
            let previous = &spans[r];
            let same_group =
                previous.area == current.area && previous.bit.is_some() == current.bit.is_some();
            let overlapping = match (previous.bit, current.bit) {
                (None, None) => same_group && current.start < previous.end,
                (Some(a), Some(b)) => same_group && previous.start == current.start && a == b,
                _ => false,
            };
            if overlapping {
                let pair = if previous.order < current.order {
                    (previous, current)
                } else {
                    (current, previous)
                };
                pairs.push(pair);
            }
            if !same_group || current.end > previous.end || current.bit.is_some() {
                reach = Some(i);
            }
        } else {
            reach = Some(i);
        }
    }
    pairs
}

fn span<'p>(point: &'p CheckedPoint, shift: u32, owner: usize, order: usize) -> Span<'p> {
    let start = u32::from(point.address) + shift;
    Span {
        area: point.area,
        start,
        end: start + point.width(),
        bit: point.bit(),
        owner,
        order,
        point,
    }
}

/// A device after template expansion, kept for the site-wide checks.
struct Expanded {
    source: usize,
    entry: usize,
    entry_path: KeyPath,
    /// `Some(name)` when the device is an instance of a template.
    instance: Option<String>,
    name: String,
    /// `None` when the unit id is invalid (reported already); the name is still checked.
    unit_id: Option<u8>,
    shift: u32,
    points: Vec<CheckedPoint>,
}

impl Expanded {
    fn what(&self) -> String {
        match &self.instance {
            Some(name) => format!("instance `{name}`"),
            None => format!("device `{}`", self.name),
        }
    }
}

struct Builder<'r, 'a> {
    report: &'r mut Report<'a>,
    dir: PathBuf,
}

/// Validates `raw`, read from `path`, reporting every problem to `report`. The returned config
/// is only meaningful when the report stayed empty.
pub(crate) fn build(raw: RawConfig, path: &Path, report: &mut Report<'_>) -> Config {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut b = Builder { report, dir };
    let root = KeyPath::default();

    if raw.site.is_empty()
        || !raw
            .site
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
    {
        b.report.at(
            &root.key("site"),
            format!(
                "invalid site `{}`, expected lowercase letters, digits, `_` and `-` only",
                raw.site
            ),
        );
    }
    let state_dir = b.resolve(
        raw.state_dir
            .as_deref()
            .unwrap_or(Path::new(defaults::STATE_DIR)),
    );

    let maps = b.register_maps(&raw);
    let meter_maps = crate::dlt645::config::meter_maps(&raw.meter_maps, &b.dir, b.report);

    let mut sources = Vec::new();
    let mut modbus_raw: Vec<(usize, &RawSource)> = Vec::new();
    let mut meter_buses = Vec::new();
    let mut expanded: Vec<Expanded> = Vec::new();
    let mut source_names: HashMap<String, usize> = HashMap::new();
    for (i, source) in raw.sources.iter().enumerate() {
        let source_path = root.key("sources").index(i);
        if source.name.is_empty() {
            b.report
                .at(&source_path.key("name"), "source name must not be empty");
        } else if let Some(first) = source_names.get(&source.name) {
            b.report.at(
                &source_path.key("name"),
                format!(
                    "duplicate source name `{}`, already used by sources[{first}]",
                    source.name
                ),
            );
        } else {
            source_names.insert(source.name.clone(), i);
        }
        if let Some(edition) = source.protocol.and_then(|p| p.dlt645()) {
            let bus =
                crate::dlt645::config::bus(source, edition, &source_path, &meter_maps, b.report);
            meter_buses.push(bus);
            continue;
        }
        if !source.meters.is_empty() {
            b.report.at(
                &source_path.key("meters"),
                "`meters` are the meters of a DL/T 645 bus: set `protocol = \"dlt645-2007\"` or `\"dlt645-1997\"`, or list Modbus devices under [[sources.devices]]",
            );
        }
        modbus_raw.push((i, source));
        sources.push(b.source(i, source, &source_path, &maps, &mut expanded));
    }
    b.poll_offsets(&modbus_raw, &mut sources, &root);
    b.site_wide_device_checks(&raw.sources, &expanded);
    b.meter_names(&raw.sources, &expanded, &meter_buses);

    let mut uplinks = Vec::new();
    let mut uplink_names: HashMap<String, usize> = HashMap::new();
    for (i, uplink) in raw.uplinks.iter().enumerate() {
        let uplink_path = root.key("uplinks").index(i);
        if let Some(first) = uplink_names.get(&uplink.name) {
            b.report.at(
                &uplink_path.key("name"),
                format!(
                    "duplicate uplink name `{}`, already used by uplinks[{first}]",
                    uplink.name
                ),
            );
        } else {
            uplink_names.insert(uplink.name.clone(), i);
        }
        uplinks.push(b.uplink(&raw.site, uplink, &uplink_path));
    }
    let derived =
        crate::derived::config::validate(&raw.derived, &sources, raw.calc.as_ref(), b.report);
    let http = raw.http.as_ref().map(|h| b.http(h, &root.key("http")));
    let history = b.history(raw.history.as_ref(), &state_dir, &root.key("history"));
    let ledger = raw
        .ledger
        .as_ref()
        .map(|l| b.ledger(l, &root.key("ledger")));

    Config {
        path: path.to_path_buf(),
        site: raw.site,
        sources,
        meter_buses,
        simulator: raw.simulator,
        calc: raw.calc,
        state_dir,
        stall_after: raw.stall_after.unwrap_or(defaults::STALL_AFTER),
        uplinks,
        http,
        history,
        ledger,
        derived,
    }
}

impl Builder<'_, '_> {
    /// A path from the file, relative to the configuration file's directory.
    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.dir.join(path)
        }
    }

    // === register maps ===

    fn register_maps(&mut self, raw: &RawConfig) -> IndexMap<String, Vec<CheckedPoint>> {
        let mut maps = IndexMap::new();
        for (name, map) in &raw.register_maps {
            let map_path = KeyPath::default().key("register_maps").key(name);
            let mut defs: Vec<PointDef> = Vec::new();
            if let Some(csv) = &map.csv {
                let file = self.resolve(csv);
                match std::fs::read_to_string(&file) {
                    Ok(text) => defs = parse_csv_map(&file, &text, &map_path, self.report),
                    Err(err) => self.report.at(
                        &map_path.key("csv"),
                        format!("cannot read register map `{}`: {err}", file.display()),
                    ),
                }
            }
            for (point_name, point) in &map.points {
                let origin = Origin::Toml(map_path.key("points").key(point_name));
                if let Some(existing) = defs.iter().find(|d| &d.name == point_name) {
                    let message = match &existing.origin {
                        Origin::Csv { file, line, .. } => format!(
                            "point `{point_name}` is already defined in `{}` line {line}",
                            file.display()
                        ),
                        Origin::Toml(_) => format!("point `{point_name}` is defined twice"),
                    };
                    self.report.at_point(&origin, "", message);
                    continue;
                }
                defs.push(PointDef {
                    name: point_name.clone(),
                    raw: point.clone(),
                    origin,
                });
            }
            if map.csv.is_none() && map.points.is_empty() {
                self.report.at(
                    &map_path,
                    format!("register map `{name}` is empty: give `csv` or `points`"),
                );
            }
            let points: Vec<CheckedPoint> = defs.iter().filter_map(|d| self.point(d)).collect();
            let mut spans: Vec<Span<'_>> = points
                .iter()
                .enumerate()
                .map(|(order, p)| span(p, 0, 0, order))
                .collect();
            let pairs: Vec<(String, Origin)> = overlaps(&mut spans)
                .into_iter()
                .map(|(earlier, later)| {
                    (overlap_message(earlier, later), later.point.origin.clone())
                })
                .collect();
            for (message, origin) in pairs {
                self.report.at_point(&origin, "address", message);
            }
            maps.insert(name.clone(), points);
        }
        maps
    }

    // === points ===

    /// Checks one point definition on its own (independent of the device it ends up on).
    fn point(&mut self, def: &PointDef) -> Option<CheckedPoint> {
        let before = self.report.len();
        let raw = &def.raw;
        let origin = &def.origin;
        let type_name = raw.data_type.name();
        let area = raw.area;

        if raw.bit.is_some() && raw.data_type != RawType::Bool {
            self.report.at_point(
                origin,
                "bit",
                format!("`bit` applies only to `bool` points, not to `{type_name}`"),
            );
        }
        let data_type = match raw.data_type {
            RawType::Bool if area.is_bits() => {
                if raw.bit.is_some() {
                    self.report.at_point(
                        origin,
                        "bit",
                        format!(
                            "`bit` is not allowed on a {} point: each address there is already a single bit",
                            area.as_str()
                        ),
                    );
                }
                DataType::Bool { bit: None }
            }
            RawType::Bool => match raw.bit {
                None => {
                    self.report.at_point(
                        origin,
                        "bit",
                        format!(
                            "a `bool` point on a {} register needs `bit` (0..=15, 0 = least significant)",
                            area.as_str()
                        ),
                    );
                    DataType::Bool { bit: None }
                }
                Some(bit) if bit > 15 => {
                    self.report.at_point(
                        origin,
                        "bit",
                        format!(
                            "bit {bit} is out of range, expected 0..=15 (0 = least significant)"
                        ),
                    );
                    DataType::Bool { bit: None }
                }
                Some(bit) => DataType::Bool { bit: Some(bit) },
            },
            other if area.is_bits() => {
                self.report.at_point(
                    origin,
                    "type",
                    format!(
                        "type `{}` cannot live in a {} area, which holds single bits: expected `bool`",
                        other.name(),
                        area.as_str()
                    ),
                );
                DataType::U16
            }
            RawType::Ascii => match raw.registers {
                Some(0) | None => {
                    self.report.at_point(
                        origin,
                        "registers",
                        "type `ascii` needs `registers` >= 1 (2 characters per register)",
                    );
                    DataType::Ascii { registers: 1 }
                }
                Some(registers) => DataType::Ascii { registers },
            },
            RawType::U16 => DataType::U16,
            RawType::I16 => DataType::I16,
            RawType::U32 => DataType::U32,
            RawType::I32 => DataType::I32,
            RawType::U64 => DataType::U64,
            RawType::I64 => DataType::I64,
            RawType::F32 => DataType::F32,
            RawType::F64 => DataType::F64,
        };
        if let (Some(fixed), Some(given)) = (raw.data_type.fixed_registers(), raw.registers) {
            if area.is_bits() {
                self.report.at_point(
                    origin,
                    "registers",
                    format!("`registers` does not apply to a {} point", area.as_str()),
                );
            } else if given != fixed {
                self.report.at_point(
                    origin,
                    "registers",
                    format!(
                        "type `{type_name}` occupies {fixed} register{}, but `registers` = {given}",
                        if fixed == 1 { "" } else { "s" }
                    ),
                );
            }
        }
        let width = if area.is_bits() {
            1
        } else {
            u32::from(data_type.registers())
        };
        if u32::from(raw.address) + width > 65536 {
            self.report.at_point(
                origin,
                "address",
                format!(
                    "{} runs past the last address 65535",
                    describe_registers(area, u32::from(raw.address), width, None)
                ),
            );
        }
        let scale = raw.scale.unwrap_or(1.0);
        if scale == 0.0 || !scale.is_finite() {
            self.report.at_point(
                origin,
                "scale",
                format!("scale must be a finite, non-zero number, got {scale}"),
            );
        }
        let offset = raw.offset.unwrap_or(0.0);
        if !offset.is_finite() {
            self.report.at_point(
                origin,
                "offset",
                format!("offset must be a finite number, got {offset}"),
            );
        }
        let range = raw.range.map(|[min, max]| (min, max));
        if let Some((min, max)) = range {
            if min.is_nan() || max.is_nan() {
                self.report
                    .at_point(origin, "range", "range bounds must be numbers, got NaN");
            } else if min > max {
                self.report.at_point(
                    origin,
                    "range",
                    format!("range minimum {min} is greater than its maximum {max}"),
                );
            }
        }
        if raw.poll == Some(Duration::ZERO) {
            self.report
                .at_point(origin, "poll", "poll interval must be greater than zero");
        }
        if raw.writable == Some(true) {
            // Only what a single write request can set is writable: a register value or a coil.
            let why = match (area, data_type) {
                (Area::Input | Area::DiscreteInput, _) => Some(format!(
                    "{} is a read-only area, expected a `holding` register or a `coil`",
                    area.as_str()
                )),
                (Area::Holding, DataType::Bool { .. }) => Some(
                    "a bit of a holding register cannot be written on its own (smeltwatch does no read-modify-write)"
                        .to_owned(),
                ),
                (Area::Holding, DataType::Ascii { .. }) => {
                    Some("text (`ascii`) points cannot be written".to_owned())
                }
                // A coil holds only on or off; a number is bounded only by its wire type, so a
                // command could set a set point anywhere the register can hold.
                (Area::Holding, _) if range.is_none() => Some(
                    "a number needs a `range` (range_min and range_max in a CSV map): without one any value the register holds could be written"
                        .to_owned(),
                ),
                _ => None,
            };
            if let Some(why) = why {
                self.report
                    .at_point(origin, "writable", format!("writable = true: {why}"));
            }
        }
        if self.report.len() > before {
            return None;
        }
        Some(CheckedPoint {
            name: Arc::from(def.name.as_str()),
            area,
            address: raw.address,
            data_type,
            byte_order: raw.byte_order.unwrap_or_default(),
            scale,
            offset,
            unit: Arc::from(raw.unit.as_deref().unwrap_or("")),
            poll: raw.poll,
            range,
            writable: raw.writable.unwrap_or(false),
            origin: origin.clone(),
        })
    }

    // === sources ===

    fn source(
        &mut self,
        index: usize,
        raw: &RawSource,
        path: &KeyPath,
        maps: &IndexMap<String, Vec<CheckedPoint>>,
        expanded: &mut Vec<Expanded>,
    ) -> SourceConfig {
        let transport = self.transport(raw, path);
        let is_tcp = matches!(transport, Some(Transport::Tcp { .. }));
        let default_gap = match &transport {
            Some(Transport::Tcp { .. }) | None => Duration::ZERO,
            Some(Transport::RtuOverTcp { .. }) => defaults::RTU_OVER_TCP_GAP,
            Some(Transport::Rtu(serial)) => rtu_gap(serial),
        };
        let timeout = self.positive(path, "timeout", raw.timeout, defaults::TIMEOUT);
        let (reconnect_min, reconnect_max) = self.reconnect_range(
            path,
            (raw.reconnect_min, raw.reconnect_max),
            (defaults::RECONNECT_MIN, defaults::RECONNECT_MAX),
        );
        let breaker_failures = raw.breaker_failures.unwrap_or(defaults::BREAKER_FAILURES);
        if breaker_failures == 0 {
            self.report.at(
                &path.key("breaker_failures"),
                "breaker_failures must be at least 1",
            );
        }
        let breaker_probe_interval = self.positive(
            path,
            "breaker_probe_interval",
            raw.breaker_probe_interval,
            defaults::BREAKER_PROBE_INTERVAL,
        );
        let default_poll = self.positive(
            path,
            "default_poll",
            raw.default_poll,
            defaults::DEFAULT_POLL,
        );
        let limits = Limits {
            max_registers: self
                .max_registers(path, raw.max_registers_per_read)
                .unwrap_or(defaults::MAX_REGISTERS_PER_READ),
            max_bits: self
                .max_bits(path, raw.max_bits_per_read)
                .unwrap_or(defaults::MAX_BITS_PER_READ),
            max_gap: raw.max_gap_registers.unwrap_or(defaults::MAX_GAP_REGISTERS),
        };

        let mut devices = Vec::new();
        for (j, device) in raw.devices.iter().enumerate() {
            let device_path = path.key("devices").index(j);
            self.device(
                index,
                j,
                device,
                &device_path,
                maps,
                &limits,
                is_tcp,
                default_poll,
                expanded,
                &mut devices,
            );
        }

        SourceConfig {
            name: Arc::from(raw.name.as_str()),
            transport: transport.unwrap_or(Transport::Tcp {
                addr: HostPort {
                    host: String::new(),
                    port: 0,
                },
            }),
            timeout,
            inter_request_gap: raw.inter_request_gap.unwrap_or(default_gap),
            reconnect_min,
            reconnect_max,
            breaker_failures,
            breaker_probe_interval,
            // Resolved by `poll_offsets` once every source is known.
            poll_offset: Duration::ZERO,
            devices,
        }
    }

    /// Each source's `poll_offset`: the configured one, checked against the source's shortest
    /// poll interval, or source `i` of `n` at `i / n` of that interval (see
    /// [`SourceConfig::poll_offset`]).
    fn poll_offsets(
        &mut self,
        raw: &[(usize, &RawSource)],
        sources: &mut [SourceConfig],
        root: &KeyPath,
    ) {
        let n = sources.len() as u32;
        for (i, (&(at, raw), source)) in raw.iter().zip(sources.iter_mut()).enumerate() {
            let Some(shortest) = source
                .devices
                .iter()
                .flat_map(|d| &d.points)
                .map(|p| p.poll_interval)
                .min()
            else {
                // No points: nothing is scheduled, any given offset is moot.
                continue;
            };
            source.poll_offset = match raw.poll_offset {
                Some(offset) if offset >= shortest => {
                    self.report.at(
                        &root.key("sources").index(at).key("poll_offset"),
                        format!(
                            "poll_offset ({}) must be shorter than the source's shortest poll interval ({})",
                            humantime::format_duration(offset),
                            humantime::format_duration(shortest)
                        ),
                    );
                    offset
                }
                Some(offset) => offset,
                // Whole milliseconds: scheduled times are.
                None => {
                    Duration::from_millis((shortest.as_millis() * i as u128 / u128::from(n)) as u64)
                }
            };
        }
    }

    fn transport(&mut self, raw: &RawSource, path: &KeyPath) -> Option<Transport> {
        let given: Vec<&str> = [
            raw.tcp.as_ref().map(|_| "tcp"),
            raw.rtu_over_tcp.as_ref().map(|_| "rtu_over_tcp"),
            raw.serial.as_ref().map(|_| "serial"),
        ]
        .into_iter()
        .flatten()
        .collect();
        match given.as_slice() {
            [] => {
                self.report.at(
                    path,
                    "no transport: expected exactly one of `tcp = \"host:port\"`, `rtu_over_tcp = \"host:port\"` or `[sources.serial]`",
                );
                None
            }
            [_] => {
                if let Some(addr) = &raw.tcp {
                    self.host_port(path, "tcp", addr)
                        .map(|addr| Transport::Tcp { addr })
                } else if let Some(addr) = &raw.rtu_over_tcp {
                    self.host_port(path, "rtu_over_tcp", addr)
                        .map(|addr| Transport::RtuOverTcp { addr })
                } else {
                    raw.serial.as_ref().and_then(|serial| {
                        let serial_path = path.key("serial");
                        let before = self.report.len();
                        if serial.path.is_empty() {
                            self.report.at(
                                &serial_path.key("path"),
                                "serial port path must not be empty",
                            );
                        }
                        let baud = serial.baud.unwrap_or(defaults::BAUD);
                        if baud == 0 {
                            self.report.at(
                                &serial_path.key("baud"),
                                "baud rate must be greater than zero",
                            );
                        }
                        let data_bits = serial.data_bits.unwrap_or(defaults::DATA_BITS);
                        if !matches!(data_bits, 7 | 8) {
                            self.report.at(
                                &serial_path.key("data_bits"),
                                format!("data_bits = {data_bits}, expected 7 or 8"),
                            );
                        }
                        let stop_bits = serial.stop_bits.unwrap_or(defaults::STOP_BITS);
                        if !matches!(stop_bits, 1 | 2) {
                            self.report.at(
                                &serial_path.key("stop_bits"),
                                format!("stop_bits = {stop_bits}, expected 1 or 2"),
                            );
                        }
                        (self.report.len() == before).then(|| {
                            Transport::Rtu(SerialSettings {
                                path: serial.path.clone(),
                                baud,
                                data_bits,
                                parity: serial.parity.unwrap_or(Parity::Even),
                                stop_bits,
                            })
                        })
                    })
                }
            }
            [_, second, ..] => {
                self.report.at(
                    &path.key(second),
                    format!(
                        "more than one transport ({}): expected exactly one of `tcp`, `rtu_over_tcp` or `[sources.serial]`",
                        given
                            .iter()
                            .map(|g| format!("`{g}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                None
            }
        }
    }

    fn host_port(&mut self, path: &KeyPath, key: &str, text: &str) -> Option<HostPort> {
        match parse_host_port(text) {
            Ok(hp) => Some(hp),
            Err(message) => {
                self.report.at(&path.key(key), message);
                None
            }
        }
    }

    /// A duration that must be positive, with its default.
    fn positive(
        &mut self,
        path: &KeyPath,
        key: &str,
        value: Option<Duration>,
        default: Duration,
    ) -> Duration {
        let value = value.unwrap_or(default);
        if value.is_zero() {
            self.report
                .at(&path.key(key), format!("{key} must be greater than zero"));
        }
        value
    }

    /// `reconnect_min` and `reconnect_max` of a source or an uplink: each positive, the first
    /// not above the second.
    fn reconnect_range(
        &mut self,
        path: &KeyPath,
        (min, max): (Option<Duration>, Option<Duration>),
        (default_min, default_max): (Duration, Duration),
    ) -> (Duration, Duration) {
        let min = self.positive(path, "reconnect_min", min, default_min);
        let max = self.positive(path, "reconnect_max", max, default_max);
        if min > max {
            self.report.at(
                &path.key("reconnect_min"),
                format!(
                    "reconnect_min ({}) is greater than reconnect_max ({})",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
        }
        (min, max)
    }

    fn max_registers(&mut self, path: &KeyPath, value: Option<u32>) -> Option<u16> {
        let value = value?;
        if value == 0 || value > MODBUS_MAX_REGISTERS {
            self.report.at(
                &path.key("max_registers_per_read"),
                format!(
                    "max_registers_per_read = {value} is out of range, expected 1..={MODBUS_MAX_REGISTERS} (the Modbus limit for one read)"
                ),
            );
            return None;
        }
        u16::try_from(value).ok()
    }

    fn max_bits(&mut self, path: &KeyPath, value: Option<u32>) -> Option<u16> {
        let value = value?;
        if value == 0 || value > MODBUS_MAX_BITS {
            self.report.at(
                &path.key("max_bits_per_read"),
                format!(
                    "max_bits_per_read = {value} is out of range, expected 1..={MODBUS_MAX_BITS} (the Modbus limit for one read)"
                ),
            );
            return None;
        }
        u16::try_from(value).ok()
    }

    // === devices and templates ===

    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; a struct would only rename them"
    )]
    fn device(
        &mut self,
        source: usize,
        entry: usize,
        raw: &RawDevice,
        path: &KeyPath,
        maps: &IndexMap<String, Vec<CheckedPoint>>,
        source_limits: &Limits,
        is_tcp: bool,
        default_poll: Duration,
        expanded: &mut Vec<Expanded>,
        devices: &mut Vec<DeviceConfig>,
    ) {
        let before = self.report.len();
        let pattern = match NamePattern::parse(&raw.name) {
            Ok(pattern) => Some(pattern),
            Err(message) => {
                self.report.at(&path.key("name"), message);
                None
            }
        };
        if raw.name.is_empty() {
            self.report
                .at(&path.key("name"), "device name must not be empty");
        }
        let count = raw.count.unwrap_or(1);
        if count == 0 {
            self.report
                .at(&path.key("count"), "count must be at least 1");
        }
        if let Some(pattern) = &pattern
            && count > 1
            && !pattern.has_placeholder()
        {
            self.report.at(
                &path.key("name"),
                format!(
                    "template name `{}` has no `{{n}}` placeholder but count = {count}: every instance would get the same name (write e.g. `{}_{{n:03}}`)",
                    raw.name, raw.name
                ),
            );
        }
        if raw.address_stride.is_some() && raw.unit_id_step.is_some() {
            self.report.at(
                &path.key("address_stride"),
                "`address_stride` and `unit_id_step` exclude each other: instances either share the unit id and shift addresses, or step the unit id",
            );
        }
        let limits = Limits {
            max_registers: self
                .max_registers(path, raw.max_registers_per_read)
                .unwrap_or(source_limits.max_registers),
            max_bits: self
                .max_bits(path, raw.max_bits_per_read)
                .unwrap_or(source_limits.max_bits),
            max_gap: raw.max_gap_registers.unwrap_or(source_limits.max_gap),
        };

        // The points: the map's first, then inline ones.
        let mut points: Vec<CheckedPoint> = Vec::new();
        let mut from_map = 0;
        if let Some(map_name) = &raw.map {
            match maps.get(map_name) {
                Some(map_points) => {
                    points.extend(map_points.iter().cloned());
                    from_map = points.len();
                }
                None => {
                    let known = if maps.is_empty() {
                        "no register maps are defined".to_owned()
                    } else {
                        format!(
                            "defined maps: {}",
                            maps.keys()
                                .map(|k| format!("`{k}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    self.report.at(
                        &path.key("map"),
                        format!("unknown register map `{map_name}` ({known})"),
                    );
                }
            }
        }
        for (name, point) in &raw.points {
            let def = PointDef {
                name: name.clone(),
                raw: point.clone(),
                origin: Origin::Toml(path.key("points").key(name)),
            };
            if points[..from_map].iter().any(|p| &*p.name == name) {
                self.report.at_point(
                    &def.origin,
                    "",
                    format!(
                        "point `{name}` is already defined by register map `{}`",
                        raw.map.as_deref().unwrap_or_default()
                    ),
                );
                continue;
            }
            if let Some(point) = self.point(&def) {
                points.push(point);
            }
        }

        // Overlaps that involve an inline point (map-internal ones were reported with the map).
        let mut spans: Vec<Span<'_>> = points
            .iter()
            .enumerate()
            .map(|(order, p)| span(p, 0, 0, order))
            .collect();
        let pairs: Vec<(String, Origin)> = overlaps(&mut spans)
            .into_iter()
            .filter(|(_, later)| later.order >= from_map)
            .map(|(earlier, later)| (overlap_message(earlier, later), later.point.origin.clone()))
            .collect();
        for (message, origin) in pairs {
            self.report.at_point(&origin, "address", message);
        }

        for point in &points {
            if point.area.is_bits() {
                continue;
            }
            let width = point.width();
            if width > u32::from(limits.max_registers) {
                self.report.at_point(
                    &point.origin,
                    "type",
                    format!(
                        "point `{}` ({}, {width} registers) is wider than max_registers_per_read = {} of {path}, so it can never be read",
                        point.name,
                        point.data_type.name(),
                        limits.max_registers
                    ),
                );
            }
        }

        if self.report.len() > before {
            return;
        }
        let Some(pattern) = pattern else { return };

        // Expansion.
        let first_index = raw.first_index.unwrap_or(defaults::FIRST_INDEX);
        let step = match raw.address_stride {
            Some(_) => 0,
            None => raw.unit_id_step.unwrap_or(defaults::UNIT_ID_STEP),
        };
        let stride = raw.address_stride.unwrap_or(0);
        let is_template = count > 1;
        let mut bad_unit: Vec<(String, i64)> = Vec::new();
        let mut bad_address: Vec<(String, String)> = Vec::new();
        let labels: Vec<(String, String)> = raw
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for k in 0..count {
            let name = pattern.render(u64::from(first_index) + u64::from(k));
            let unit_id = raw.unit_id + i64::from(k) * step;
            let unit_ok = (1..=247).contains(&unit_id) || (unit_id == 255 && is_tcp);
            if !unit_ok {
                bad_unit.push((name.clone(), unit_id));
            }
            let shift = u64::from(k) * u64::from(stride);
            let mut device_points = Vec::with_capacity(points.len());
            for point in &points {
                let address = u64::from(point.address) + shift;
                if address + u64::from(point.width()) > 65536 {
                    bad_address.push((
                        name.clone(),
                        format!(
                            "point `{}` would start at {} address {address} and run past 65535",
                            point.name,
                            point.area.as_str()
                        ),
                    ));
                    continue;
                }
                device_points.push(PointConfig {
                    name: Arc::clone(&point.name),
                    area: point.area,
                    address: u16::try_from(address).expect("checked against 65536 above"),
                    data_type: point.data_type,
                    byte_order: point.byte_order,
                    scale: point.scale,
                    offset: point.offset,
                    unit: Arc::clone(&point.unit),
                    poll_interval: point.poll.unwrap_or(default_poll),
                    range: point.range,
                    writable: point.writable,
                });
            }
            let unit = u8::try_from(unit_id).ok().filter(|_| unit_ok);
            expanded.push(Expanded {
                source,
                entry,
                entry_path: path.clone(),
                instance: is_template.then(|| name.clone()),
                name: name.clone(),
                unit_id: unit,
                shift: u32::try_from(shift).unwrap_or(u32::MAX),
                points: points.clone(),
            });
            let Some(unit) = unit else { continue };
            devices.push(DeviceConfig {
                name: Arc::from(name.as_str()),
                unit_id: unit,
                max_registers_per_read: limits.max_registers,
                max_bits_per_read: limits.max_bits,
                max_gap_registers: limits.max_gap,
                single_point_reads: raw.single_point_reads.unwrap_or(false),
                labels: labels.clone(),
                points: device_points,
            });
        }
        if let Some((name, unit_id)) = bad_unit.first() {
            let expected = if is_tcp {
                "expected 1..=247 (or 255 on tcp)"
            } else {
                "expected 1..=247 (255 only on tcp sources)"
            };
            let why = if *unit_id == 0 {
                "is the broadcast address and cannot be polled"
            } else {
                "is out of range"
            };
            let message = if is_template {
                format!(
                    "unit id {unit_id} of instance `{name}` {why}, {expected}{}",
                    more(bad_unit.len() - 1, "instance")
                )
            } else {
                format!("unit id {unit_id} {why}, {expected}")
            };
            self.report.at(&path.key("unit_id"), message);
        }
        if let Some((name, what)) = bad_address.first() {
            let message = if is_template {
                format!(
                    "instance `{name}`: {what} (address_stride = {stride}){}",
                    more(bad_address.len() - 1, "point")
                )
            } else {
                what.clone()
            };
            self.report.at(&path.key("address_stride"), message);
        }
    }

    /// Duplicate device names across the site and overlaps between devices sharing a unit id.
    /// Meter names are device names: unique across the site, Modbus devices included.
    fn meter_names(
        &mut self,
        raw: &[RawSource],
        expanded: &[Expanded],
        buses: &[crate::dlt645::config::BusConfig],
    ) {
        let mut names: HashMap<&str, String> = expanded
            .iter()
            .map(|d| (d.name.as_str(), d.entry_path.to_string()))
            .collect();
        let bus_paths = raw
            .iter()
            .enumerate()
            .filter(|(_, s)| s.protocol.and_then(|p| p.dlt645()).is_some());
        for ((i, _), bus) in bus_paths.zip(buses) {
            let path = KeyPath::default().key("sources").index(i).key("meters");
            for meter in &bus.meters {
                let here = format!("{path} (meter `{}`)", meter.name);
                if let Some(first) = names.insert(&meter.name, here) {
                    self.report.at(
                        &path,
                        format!(
                            "duplicate device name `{}`, already used by {first}; device names must be unique across the site",
                            meter.name
                        ),
                    );
                }
            }
        }
    }

    fn site_wide_device_checks(&mut self, sources: &[RawSource], expanded: &[Expanded]) {
        let mut names: HashMap<&str, &Expanded> = HashMap::new();
        for device in expanded {
            match names.get(device.name.as_str()) {
                Some(first) if (first.source, first.entry) == (device.source, device.entry) => {
                    // Same template: already reported as a missing `{n}` placeholder.
                }
                Some(first) => {
                    let whose = match &device.instance {
                        Some(_) => " (an instance of this template)".to_owned(),
                        None => String::new(),
                    };
                    let earlier = match &first.instance {
                        Some(name) => format!("{} (instance `{name}`)", first.entry_path),
                        None => first.entry_path.to_string(),
                    };
                    self.report.at(
                        &device.entry_path.key("name"),
                        format!(
                            "duplicate device name `{}`{whose}, already used by {earlier}; device names must be unique across the site",
                            device.name
                        ),
                    );
                }
                None => {
                    names.insert(&device.name, device);
                }
            }
        }

        let mut groups: IndexMap<(usize, u8), Vec<usize>> = IndexMap::new();
        for (i, device) in expanded.iter().enumerate() {
            let Some(unit_id) = device.unit_id else {
                continue;
            };
            groups.entry((device.source, unit_id)).or_default().push(i);
        }
        let mut reported: Vec<(usize, usize, usize)> = Vec::new();
        for ((source, unit_id), members) in groups {
            if members.len() < 2 {
                continue;
            }
            let mut spans: Vec<Span<'_>> = Vec::new();
            for &d in &members {
                let device = &expanded[d];
                for point in &device.points {
                    let order = spans.len();
                    spans.push(span(point, device.shift, d, order));
                }
            }
            let mut messages = Vec::new();
            for (earlier, later) in overlaps(&mut spans) {
                if earlier.owner == later.owner {
                    continue; // Within one device: reported with the device.
                }
                let (a, b) = (&expanded[earlier.owner], &expanded[later.owner]);
                let key = (source, a.entry, b.entry);
                if reported.contains(&key) {
                    continue;
                }
                reported.push(key);
                messages.push((
                    b.entry_path.clone(),
                    format!(
                        "{} point `{}` ({}) overlaps {} point `{}` ({}) of {}: both are unit id {unit_id} on source `{}`",
                        b.what(),
                        later.point.name,
                        describe_registers(later.area, later.start, later.end - later.start, later.bit),
                        a.what(),
                        earlier.point.name,
                        describe_registers(earlier.area, earlier.start, earlier.end - earlier.start, earlier.bit),
                        a.entry_path,
                        sources[source].name
                    ),
                ));
            }
            for (path, message) in messages {
                self.report.at(&path, message);
            }
        }
    }

    // === http ===

    /// `[http]`: a socket address (an IP literal: binding follows no DNS) and a non-empty token.
    fn http(&mut self, raw: &RawHttp, path: &KeyPath) -> HttpConfig {
        let listen = match raw.listen.as_deref() {
            None => std::net::SocketAddr::from(([127, 0, 0, 1], defaults::HTTP_PORT)),
            Some(text) => text.parse().unwrap_or_else(|_| {
                self.report.at(
                    &path.key("listen"),
                    format!(
                        "invalid listen address `{text}`, expected IP:PORT such as `127.0.0.1:9187` or `[::1]:9187`"
                    ),
                );
                std::net::SocketAddr::from(([127, 0, 0, 1], defaults::HTTP_PORT))
            }),
        };
        let token = raw.token_file.as_ref().and_then(|file| {
            let file = self.resolve(file);
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    let token = text.trim();
                    if token.is_empty() {
                        self.report.at(
                            &path.key("token_file"),
                            format!("token file `{}` is empty", file.display()),
                        );
                        None
                    } else {
                        Some(Secret(token.to_owned()))
                    }
                }
                Err(err) => {
                    self.report.at(
                        &path.key("token_file"),
                        format!("cannot read token file `{}`: {err}", file.display()),
                    );
                    None
                }
            }
        });
        HttpConfig { listen, token }
    }

    // === uplinks ===

    fn tls(&mut self, raw: Option<&RawTls>, enabled: bool, path: &KeyPath) -> TlsSettings {
        let Some(raw) = raw else {
            return TlsSettings::default();
        };
        let at = path.key("tls");
        if !enabled {
            self.report.at(
                &at,
                "[uplinks.tls] needs an `mqtts://` broker URL (the broker is `mqtt://`, plain TCP)",
            );
        }
        match (&raw.cert_file, &raw.key_file) {
            (Some(_), None) => self.report.at(
                &at.key("cert_file"),
                "cert_file needs key_file (the client certificate's private key)",
            ),
            (None, Some(_)) => self.report.at(
                &at.key("key_file"),
                "key_file needs cert_file (the client certificate)",
            ),
            _ => {}
        }
        if raw.server_name.as_deref() == Some("") {
            self.report
                .at(&at.key("server_name"), "server_name must not be empty");
        }
        TlsSettings {
            ca_file: raw.ca_file.clone(),
            cert_file: raw.cert_file.clone(),
            key_file: raw.key_file.clone(),
            server_name: raw.server_name.clone(),
        }
    }

    fn uplink(&mut self, site: &str, raw: &RawUplink, path: &KeyPath) -> UplinkConfig {
        if raw.name.is_empty()
            || !raw
                .name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            self.report.at(
                &path.key("name"),
                format!(
                    "invalid uplink name `{}`: it names the spool file, so only letters, digits, `_` and `-` are allowed",
                    raw.name
                ),
            );
        }
        if raw.kind == RawUplinkType::Hj212 {
            return self.hj212_uplink(raw, path);
        }
        let kind_name = if raw.kind == RawUplinkType::Sparkplug {
            "sparkplug"
        } else {
            "mqtt"
        };
        self.not_for_kind(
            path,
            kind_name,
            &[
                ("platform", raw.platform.is_some()),
                // An MQTT uplink takes `[uplinks.hj212]` for its `hj212` encoding.
                ("hj212", raw.hj212.is_some() && kind_name == "sparkplug"),
            ],
        );
        let broker_url = raw.broker.as_deref().ok_or_else(|| {
            "missing `broker`, expected mqtt://host:port or mqtts://host:port".to_owned()
        });
        let parsed =
            broker_url.and_then(|text| text.parse::<BrokerUrl>().map_err(|e| e.to_string()));
        let (broker, tls) = match parsed {
            Ok(url) => (url.addr, url.tls),
            Err(message) => {
                self.report.at(&path.key("broker"), message);
                (
                    HostPort {
                        host: String::new(),
                        port: 0,
                    },
                    false,
                )
            }
        };
        let client_id = raw
            .client_id
            .clone()
            .unwrap_or_else(|| format!("smeltwatch-{site}-{}", raw.name));
        if client_id.is_empty() {
            self.report
                .at(&path.key("client_id"), "client_id must not be empty");
        }
        let password = self.password(raw, path);
        if password.is_some() && raw.username.is_none() {
            self.report.at(
                &path.key("username"),
                "a password needs a `username` (MQTT 3.1.1 sends no password without a user name)",
            );
        }
        let keep_alive = raw.keep_alive.unwrap_or(defaults::KEEP_ALIVE);
        if keep_alive < Duration::from_secs(1) || keep_alive > Duration::from_secs(65535) {
            self.report.at(
                &path.key("keep_alive"),
                format!(
                    "keep_alive = {} is out of range, expected 1s..=65535s",
                    humantime::format_duration(keep_alive)
                ),
            );
        }
        let max_packet_size = raw.max_packet_size.unwrap_or(defaults::MAX_PACKET_SIZE);
        if max_packet_size == 0 {
            self.report.at(
                &path.key("max_packet_size"),
                "max_packet_size must be greater than zero",
            );
        }
        let max_inflight = raw.max_inflight.unwrap_or(defaults::MAX_INFLIGHT);
        if !(1..=65535).contains(&max_inflight) {
            self.report.at(
                &path.key("max_inflight"),
                format!("max_inflight = {max_inflight} is out of range, expected 1..=65535"),
            );
        }
        let (reconnect_min, reconnect_max) = self.reconnect_range(
            path,
            (raw.reconnect_min, raw.reconnect_max),
            (defaults::MQTT_RECONNECT_MIN, defaults::MQTT_RECONNECT_MAX),
        );
        let streams = self.streams(
            raw.streams.as_ref(),
            path,
            &[
                Stream::Live,
                Stream::Metrics,
                Stream::Events,
                Stream::Emissions,
            ],
        );
        let topics = self.topics(raw.topics.as_ref(), path);
        let tls_settings = self.tls(raw.tls.as_ref(), tls, path);
        let replay_rate = raw.replay_rate.unwrap_or(defaults::REPLAY_RATE);
        if replay_rate == 0 {
            self.report.at(
                &path.key("replay_rate"),
                "replay_rate must be at least 1 record per second",
            );
        }
        let spool = self.spool(raw.spool.as_ref(), path);
        let mqtt = MqttConfig {
            broker,
            tls,
            client_id,
            username: raw.username.clone(),
            password,
            keep_alive,
            max_packet_size: usize::try_from(max_packet_size).unwrap_or(usize::MAX),
            max_inflight: u16::try_from(max_inflight).unwrap_or(u16::MAX),
            reconnect_min,
            reconnect_max,
            topics,
            encoding: if raw.kind == RawUplinkType::Sparkplug {
                Default::default()
            } else {
                self.mqtt_encoding(raw, path, &streams)
            },
            tls_settings,
            replay_rate,
        };
        if raw.kind == RawUplinkType::Sparkplug {
            return self.sparkplug_uplink(raw, path, mqtt, spool);
        }
        self.not_for_kind(
            path,
            "mqtt",
            &[
                ("group_id", raw.group_id.is_some()),
                ("edge_node_id", raw.edge_node_id.is_some()),
                ("primary_host_id", raw.primary_host_id.is_some()),
                ("device_writes", raw.device_writes.is_some()),
            ],
        );
        UplinkConfig {
            name: raw.name.clone(),
            kind: UplinkKind::Mqtt(mqtt),
            streams,
            spool,
        }
    }

    /// A `type = "sparkplug"` uplink: the broker settings of an MQTT uplink (`mqtt`, already
    /// checked) plus the Sparkplug identity and `[uplinks.device_writes]`.
    fn sparkplug_uplink(
        &mut self,
        raw: &RawUplink,
        path: &KeyPath,
        mqtt: MqttConfig,
        spool: SpoolConfig,
    ) -> UplinkConfig {
        self.not_for_kind(
            path,
            "sparkplug",
            &[
                ("topics", raw.topics.is_some()),
                ("encoding", raw.encoding.is_some()),
                ("replay_rate", raw.replay_rate.is_some()),
            ],
        );
        // Sparkplug carries poll batches only: metrics, events and emissions have no Sparkplug form.
        if let Some(streams) = &raw.streams {
            for (i, stream) in streams.iter().enumerate() {
                if *stream != Stream::Live {
                    self.report.at(
                        &path.key("streams").index(i),
                        format!(
                            "a Sparkplug uplink carries only the `live` stream (device metrics), not `{}`",
                            stream.as_str()
                        ),
                    );
                }
            }
        }
        let group_id = self.sparkplug_id(path, "group_id", raw.group_id.as_deref());
        let edge_node_id = self.sparkplug_id(path, "edge_node_id", raw.edge_node_id.as_deref());
        let primary_host_id = raw
            .primary_host_id
            .as_deref()
            .map(|h| self.sparkplug_id(path, "primary_host_id", Some(h)));
        let device_writes = raw
            .device_writes
            .as_ref()
            .and_then(|w| w.enabled)
            .unwrap_or(false);
        let max_command_age = raw
            .device_writes
            .as_ref()
            .and_then(|w| w.max_command_age)
            .unwrap_or(defaults::MAX_COMMAND_AGE);
        if max_command_age.is_zero() {
            self.report.at(
                &path.key("device_writes").key("max_command_age"),
                "max_command_age must be greater than zero",
            );
        }
        // A DCMD can move a set point: only a broker session that proves who it is may carry one.
        if device_writes && mqtt.username.is_none() && mqtt.tls_settings.cert_file.is_none() {
            self.report.at(
                &path.key("device_writes").key("enabled"),
                "device writes need an authenticated uplink: set `username` (with a password) or a client certificate (`[uplinks.tls] cert_file`)",
            );
        }
        UplinkConfig {
            name: raw.name.clone(),
            kind: UplinkKind::Sparkplug(super::model::SparkplugConfig {
                mqtt,
                group_id,
                edge_node_id,
                primary_host_id,
                device_writes,
                max_command_age,
            }),
            streams: vec![Stream::Live],
            spool,
        }
    }

    /// A Sparkplug id (group, edge node, host): required, one topic level.
    fn sparkplug_id(&mut self, path: &KeyPath, key: &str, value: Option<&str>) -> String {
        let Some(v) = value else {
            self.report.at(
                &path.key(key),
                format!("missing `{key}`, expected a Sparkplug id (one MQTT topic level)"),
            );
            return String::new();
        };
        if v.is_empty() || v.contains(['+', '/', '#']) {
            self.report.at(
                &path.key(key),
                format!(
                    "invalid {key} `{v}`: a Sparkplug id must be non-empty and free of `+`, `/` and `#` (it is one topic level)"
                ),
            );
        }
        v.to_owned()
    }

    /// The password from exactly one of its three sources. Messages name the file or variable,
    /// never the secret.
    fn password(&mut self, raw: &RawUplink, path: &KeyPath) -> Option<Secret> {
        let given: Vec<&str> = [
            raw.password.as_ref().map(|_| "password"),
            raw.password_file.as_ref().map(|_| "password_file"),
            raw.password_env.as_ref().map(|_| "password_env"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let [_, second, ..] = given.as_slice() {
            self.report.at(
                &path.key(second),
                format!(
                    "give at most one of `password`, `password_file`, `password_env`; found {}",
                    given
                        .iter()
                        .map(|g| format!("`{g}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            );
            return None;
        }
        if let Some(password) = &raw.password {
            return Some(Secret(password.clone()));
        }
        if let Some(file) = &raw.password_file {
            let file = self.resolve(file);
            return match std::fs::read_to_string(&file) {
                Ok(text) => Some(Secret(text.trim_end_matches(['\r', '\n']).to_owned())),
                Err(err) => {
                    self.report.at(
                        &path.key("password_file"),
                        format!("cannot read password file `{}`: {err}", file.display()),
                    );
                    None
                }
            };
        }
        if let Some(variable) = &raw.password_env {
            return match std::env::var(variable) {
                Ok(value) => Some(Secret(value)),
                Err(std::env::VarError::NotPresent) => {
                    self.report.at(
                        &path.key("password_env"),
                        format!("environment variable `{variable}` is not set"),
                    );
                    None
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    self.report.at(
                        &path.key("password_env"),
                        format!("environment variable `{variable}` is not valid UTF-8"),
                    );
                    None
                }
            };
        }
        None
    }

    fn topics(&mut self, raw: Option<&RawTopics>, path: &KeyPath) -> TopicTemplates {
        let mut topics = TopicTemplates::default();
        let Some(raw) = raw else { return topics };
        let overrides = [
            ("live", &raw.live, &mut topics.live),
            ("metrics", &raw.metrics, &mut topics.metrics),
            ("events", &raw.events, &mut topics.events),
            ("emissions", &raw.emissions, &mut topics.emissions),
            ("status", &raw.status, &mut topics.status),
        ];
        for (key, value, slot) in overrides {
            let Some(value) = value else { continue };
            if value.is_empty() || value.contains(['+', '#', '\0']) {
                self.report.at(
                    &path.key("topics").key(key),
                    format!(
                        "invalid topic template `{value}`: it must not be empty or contain the wildcards `+` and `#`"
                    ),
                );
            }
            *slot = value.clone();
        }
        topics
    }
}

/// Validation shared by every uplink type, and the HJ 212 uplink.
impl Builder<'_, '_> {
    /// `streams`: `default` when absent; never empty, no stream twice.
    fn streams(
        &mut self,
        raw: Option<&Vec<Stream>>,
        path: &KeyPath,
        default: &[Stream],
    ) -> Vec<Stream> {
        let Some(streams) = raw else {
            return default.to_vec();
        };
        if streams.is_empty() {
            self.report.at(
                &path.key("streams"),
                "streams must not be empty, expected some of `live`, `metrics`, `events`, `emissions`",
            );
        }
        for (i, stream) in streams.iter().enumerate() {
            if streams[..i].contains(stream) {
                self.report.at(
                    &path.key("streams").index(i),
                    format!("stream `{}` is listed twice", stream.as_str()),
                );
            }
        }
        streams.clone()
    }

    /// `[uplinks.spool]`.
    fn spool(&mut self, raw: Option<&super::raw::RawSpool>, path: &KeyPath) -> SpoolConfig {
        let default = SpoolConfig::default();
        let Some(spool) = raw else {
            return default;
        };
        let max_bytes = spool.max_bytes.unwrap_or(default.max_bytes);
        if max_bytes == 0 {
            self.report.at(
                &path.key("spool").key("max_bytes"),
                "max_bytes must be greater than zero",
            );
        }
        if spool.max_age.is_some_and(|a| a.is_zero()) {
            self.report.at(
                &path.key("spool").key("max_age"),
                "max_age must be a positive duration such as \"7d\" (leave it out for no age limit)",
            );
        }
        SpoolConfig {
            max_bytes,
            max_age: spool.max_age,
            synchronous_full: spool.synchronous.unwrap_or(RawSynchronous::Full)
                == RawSynchronous::Full,
        }
    }

    /// Report every key in `given` that is set although uplinks of `kind` do not use it.
    fn not_for_kind(&mut self, path: &KeyPath, kind: &str, given: &[(&str, bool)]) {
        for (key, _) in given.iter().filter(|(_, set)| *set) {
            self.report.at(
                &path.key(key),
                format!("`{key}` does not apply to an uplink of type = \"{kind}\""),
            );
        }
    }
}

/// `[history]` and `[ledger]`.
impl Builder<'_, '_> {
    /// `[history]`: the store file (relative to `state_dir`) and the retention per period.
    fn history(
        &mut self,
        raw: Option<&super::raw::RawHistory>,
        state_dir: &Path,
        path: &KeyPath,
    ) -> HistoryConfig {
        let file = raw
            .and_then(|h| h.file.clone())
            .unwrap_or_else(|| PathBuf::from(defaults::HISTORY_FILE));
        let mut retention = |key: &str, value: Option<Duration>, default: Duration| {
            let d = value.unwrap_or(default);
            if d < Duration::from_secs(60) {
                self.report.at(
                    &path.key(key),
                    format!(
                        "{key} = {} is too short, expected at least 1m",
                        humantime::format_duration(d)
                    ),
                );
            }
            d
        };
        HistoryConfig {
            path: if file.is_absolute() {
                file
            } else {
                state_dir.join(file)
            },
            minute_retention: retention(
                "minute_retention",
                raw.and_then(|h| h.minute_retention),
                defaults::MINUTE_RETENTION,
            ),
            hour_retention: retention(
                "hour_retention",
                raw.and_then(|h| h.hour_retention),
                defaults::HOUR_RETENTION,
            ),
            day_retention: retention(
                "day_retention",
                raw.and_then(|h| h.day_retention),
                defaults::DAY_RETENTION,
            ),
        }
    }

    /// `[ledger]`: the site key (must exist; its permissions are checked when the agent starts)
    /// and which records are regulated.
    fn ledger(&mut self, raw: &super::raw::RawLedger, path: &KeyPath) -> LedgerConfig {
        let key_file = self.resolve(&raw.key_file);
        if !key_file.is_file() {
            self.report.at(
                &path.key("key_file"),
                format!(
                    "no key file at `{}`, expected the site's secret key (make one with `smeltwatch keygen --out DIR`)",
                    key_file.display()
                ),
            );
        }
        let regulated = match &raw.regulated {
            None => Regulated::DEFAULT.to_vec(),
            Some(list) => {
                if list.is_empty() {
                    self.report.at(
                        &path.key("regulated"),
                        "regulated must not be empty, expected some of `stack_minute`, `stack_hour`, `stack_day`, `stack_month`, `potline_day`, `potline_month`",
                    );
                }
                for (i, r) in list.iter().enumerate() {
                    if list[..i].contains(r) {
                        self.report.at(
                            &path.key("regulated").index(i),
                            format!("`{}` is listed twice", r.as_str()),
                        );
                    }
                }
                list.clone()
            }
        };
        LedgerConfig {
            key_file,
            regulated,
        }
    }
}

/// Read limits of one device.
struct Limits {
    max_registers: u16,
    max_bits: u16,
    max_gap: u16,
}

fn overlap_message(earlier: &Span<'_>, later: &Span<'_>) -> String {
    format!(
        "point `{}` ({}) overlaps point `{}` ({})",
        later.point.name,
        describe_registers(later.area, later.start, later.end - later.start, later.bit),
        earlier.point.name,
        describe_registers(
            earlier.area,
            earlier.start,
            earlier.end - earlier.start,
            earlier.bit
        ),
    )
}

fn more(n: usize, what: &str) -> String {
    match n {
        0 => String::new(),
        1 => format!(" (and 1 more {what})"),
        n => format!(" (and {n} more {what}s)"),
    }
}

/// 3.5 character times at the line's settings, at least 2 ms (Modbus over serial line v1.02
/// §2.5.1.1 fixes 1.75 ms above 19200 baud; 2 ms leaves margin for USB adapters).
fn rtu_gap(serial: &SerialSettings) -> Duration {
    let parity_bits = u32::from(serial.parity != Parity::None);
    let char_bits = 1 + u32::from(serial.data_bits) + parity_bits + u32::from(serial.stop_bits);
    let gap = if serial.baud == 0 {
        defaults::RTU_GAP_MIN
    } else {
        Duration::from_secs_f64(3.5 * f64::from(char_bits) / f64::from(serial.baud))
    };
    gap.max(defaults::RTU_GAP_MIN)
}

/// `host:port` or `[v6]:port`.
pub(crate) fn parse_host_port(text: &str) -> Result<HostPort, String> {
    let bad = || format!("invalid address `{text}`, expected `host:port` (e.g. `10.1.0.20:502`)");
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, rest) = rest.split_once(']').ok_or_else(bad)?;
        (host, rest.strip_prefix(':').ok_or_else(bad)?)
    } else {
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        if host.contains(':') {
            return Err(bad());
        }
        (host, port)
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(format!("invalid address `{text}`: port 0"));
    }
    Ok(HostPort {
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(name: &str, area: Area, address: u16, data_type: DataType) -> CheckedPoint {
        CheckedPoint {
            name: Arc::from(name),
            area,
            address,
            data_type,
            byte_order: ByteOrder::Abcd,
            scale: 1.0,
            offset: 0.0,
            unit: Arc::from(""),
            poll: None,
            range: None,
            writable: false,
            origin: Origin::Toml(KeyPath::default()),
        }
    }

    fn overlapping_names(points: &[CheckedPoint]) -> Vec<(String, String)> {
        let mut spans: Vec<Span<'_>> = points
            .iter()
            .enumerate()
            .map(|(order, p)| span(p, 0, 0, order))
            .collect();
        overlaps(&mut spans)
            .into_iter()
            .map(|(a, b)| (a.point.name.to_string(), b.point.name.to_string()))
            .collect()
    }

    #[test]
    fn adjacent_points_and_different_areas_do_not_overlap() {
        let points = [
            point("a", Area::Holding, 0, DataType::F32),
            point("b", Area::Holding, 2, DataType::U64),
            point("c", Area::Input, 0, DataType::F64),
            point("d", Area::Coil, 0, DataType::Bool { bit: None }),
            point("e", Area::Coil, 1, DataType::Bool { bit: None }),
        ];
        assert!(overlapping_names(&points).is_empty());
    }

    #[test]
    fn overlaps_are_reported_against_the_earlier_definition() {
        let points = [
            point("wide", Area::Holding, 10, DataType::F64),
            point("inside", Area::Holding, 12, DataType::U16),
            point("before", Area::Holding, 9, DataType::U32),
            point("coil", Area::Coil, 5, DataType::Bool { bit: None }),
            point("coil_again", Area::Coil, 5, DataType::Bool { bit: None }),
        ];
        let mut got = overlapping_names(&points);
        got.sort();
        assert_eq!(
            got,
            [
                ("coil".to_owned(), "coil_again".to_owned()),
                ("wide".to_owned(), "before".to_owned()),
                ("wide".to_owned(), "inside".to_owned()),
            ]
        );
    }

    #[test]
    fn bits_overlap_only_the_same_bit() {
        let points = [
            point("word", Area::Input, 3, DataType::U16),
            point("b0", Area::Input, 3, DataType::Bool { bit: Some(0) }),
            point("b1", Area::Input, 3, DataType::Bool { bit: Some(1) }),
            point("b1_again", Area::Input, 3, DataType::Bool { bit: Some(1) }),
            point("next_b1", Area::Input, 4, DataType::Bool { bit: Some(1) }),
        ];
        assert_eq!(
            overlapping_names(&points),
            [("b1".to_owned(), "b1_again".to_owned())]
        );
    }

    #[test]
    fn host_port_needs_a_port() {
        assert!(parse_host_port("10.0.0.1").is_err());
        assert!(parse_host_port(":502").is_err());
        assert!(parse_host_port("::1:502").is_err());
        assert_eq!(
            parse_host_port("plc-7:5020").expect("valid"),
            HostPort {
                host: "plc-7".into(),
                port: 5020
            }
        );
    }

    #[test]
    fn rtu_gap_is_three_and_a_half_characters_with_a_floor() {
        let mut serial = SerialSettings {
            path: "/dev/ttyS1".into(),
            baud: 9600,
            data_bits: 8,
            parity: Parity::Even,
            stop_bits: 1,
        };
        // 11 bits per character: 3.5 × 11 / 9600 s = 4.0104 ms.
        assert_eq!(rtu_gap(&serial).as_micros(), 4010);
        serial.baud = 115_200;
        assert_eq!(rtu_gap(&serial), Duration::from_millis(2));
    }
}
