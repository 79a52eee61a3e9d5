//! `[[sources.devices]]`: a device's points (from its register map and inline), template
//! expansion into instances, and the site-wide checks over every expanded device (unique names,
//! no two devices on one unit id reading the same register).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;

use super::Builder;
use super::overlap::{Span, overlap_message, overlaps, span};
use super::points::{CheckedPoint, describe_registers};
use super::sources::Limits;
use crate::config::csv_map::PointDef;
use crate::config::defaults;
use crate::config::locate::{KeyPath, Origin};
use crate::config::model::{DeviceConfig, PointConfig};
use crate::config::raw::{RawDevice, RawSource};
use crate::config::template::NamePattern;

/// What a device takes from its source.
pub(super) struct SourceContext<'m> {
    /// The source's index in `[[sources]]`.
    pub(super) index: usize,
    /// The register maps, by name.
    pub(super) maps: &'m IndexMap<String, Vec<CheckedPoint>>,
    /// The source's read limits, which a device may lower or raise.
    pub(super) limits: Limits,
    /// Whether the source is Modbus TCP, where unit id 255 is allowed.
    pub(super) is_tcp: bool,
    /// The poll interval of a point without its own.
    pub(super) default_poll: Duration,
}

/// A device after template expansion, kept for the site-wide checks.
pub(super) struct Expanded {
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
    /// How messages name it: `instance `x`` of a template, or `device `x``.
    fn what(&self) -> String {
        match &self.instance {
            Some(name) => format!("instance `{name}`"),
            None => format!("device `{}`", self.name),
        }
    }
}

/// A `[[sources.devices]]` entry that passed its own checks, ready to expand into instances.
struct CheckedEntry<'d> {
    /// The entry's index in its source's `devices`.
    entry: usize,
    raw: &'d RawDevice,
    path: &'d KeyPath,
    pattern: NamePattern,
    /// How many instances (1 for a plain device).
    count: u32,
    limits: Limits,
    points: Vec<CheckedPoint>,
}

/// Where instance names and unit ids went wrong, reported once per entry.
#[derive(Default)]
struct BadInstances {
    /// Instance name and its unit id, for unit ids out of range.
    units: Vec<(String, i64)>,
    /// Instance name and what is wrong, for points shifted past the last address.
    addresses: Vec<(String, String)>,
}

impl Builder<'_, '_> {
    /// One `[[sources.devices]]` entry: its own checks, then its instances (one for a plain
    /// device). Every instance goes to `expanded` for the site-wide checks; those with a valid
    /// unit id are returned.
    pub(super) fn device(
        &mut self,
        source: &SourceContext<'_>,
        entry: usize,
        raw: &RawDevice,
        path: &KeyPath,
        expanded: &mut Vec<Expanded>,
    ) -> Vec<DeviceConfig> {
        let before = self.report.len();
        let (pattern, count) = self.device_template(raw, path);
        let limits = Limits {
            max_registers: self
                .max_registers(path, raw.max_registers_per_read)
                .unwrap_or(source.limits.max_registers),
            max_bits: self
                .max_bits(path, raw.max_bits_per_read)
                .unwrap_or(source.limits.max_bits),
            max_gap: raw.max_gap_registers.unwrap_or(source.limits.max_gap),
        };
        let (points, from_map) = self.device_points(raw, path, source.maps);
        self.report_overlaps(&points, from_map);
        self.too_wide(&points, &limits, path);

        if self.report.len() > before {
            return Vec::new();
        }
        let Some(pattern) = pattern else {
            return Vec::new();
        };
        let checked = CheckedEntry {
            entry,
            raw,
            path,
            pattern,
            count,
            limits,
            points,
        };
        self.expand(source, &checked, expanded)
    }

    /// The entry's name pattern and instance count, after the checks of `name`, `count` and the
    /// template keys.
    fn device_template(&mut self, raw: &RawDevice, path: &KeyPath) -> (Option<NamePattern>, u32) {
        let pattern = match NamePattern::parse(&raw.name) {
            Ok(pattern) => Some(pattern),
            Err(err) => {
                self.report.at(&path.key("name"), err.to_string());
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
        (pattern, count)
    }

    /// The entry's points: its register map's first, then its inline ones, with the number that
    /// came from the map.
    fn device_points(
        &mut self,
        raw: &RawDevice,
        path: &KeyPath,
        maps: &IndexMap<String, Vec<CheckedPoint>>,
    ) -> (Vec<CheckedPoint>, usize) {
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
        (points, from_map)
    }

    /// Report the overlaps among `points` (placed on one device, unshifted) whose later point
    /// is at index `from` or after, at that point's address: a register map reports all of its
    /// own (`from` 0), a device only those that involve an inline point (map-internal ones were
    /// reported with the map).
    pub(super) fn report_overlaps(&mut self, points: &[CheckedPoint], from: usize) {
        let mut spans: Vec<Span<'_>> = points
            .iter()
            .enumerate()
            .map(|(order, p)| span(p, 0, 0, order))
            .collect();
        let pairs: Vec<(String, Origin)> = overlaps(&mut spans)
            .into_iter()
            .filter(|(_, later)| later.order >= from)
            .map(|(earlier, later)| (overlap_message(earlier, later), later.point.origin.clone()))
            .collect();
        for (message, origin) in pairs {
            self.report.at_point(&origin, "address", message);
        }
    }

    /// Register points wider than one read may be: they could never be read.
    fn too_wide(&mut self, points: &[CheckedPoint], limits: &Limits, path: &KeyPath) {
        for point in points {
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
    }

    /// The instances of a checked entry: names from the pattern, unit ids stepped or addresses
    /// shifted. Each goes to `expanded`; those with a valid unit id are returned.
    fn expand(
        &mut self,
        source: &SourceContext<'_>,
        device: &CheckedEntry<'_>,
        expanded: &mut Vec<Expanded>,
    ) -> Vec<DeviceConfig> {
        let raw = device.raw;
        let first_index = raw.first_index.unwrap_or(defaults::FIRST_INDEX);
        let step = match raw.address_stride {
            Some(_) => 0,
            None => raw.unit_id_step.unwrap_or(defaults::UNIT_ID_STEP),
        };
        let stride = raw.address_stride.unwrap_or(0);
        let is_template = device.count > 1;
        let mut bad = BadInstances::default();
        let labels: Vec<(String, String)> = raw
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut devices = Vec::new();
        for k in 0..device.count {
            let name = device.pattern.render(u64::from(first_index) + u64::from(k));
            let unit_id = raw.unit_id + i64::from(k) * step;
            let unit_ok = (1..=247).contains(&unit_id) || (unit_id == 255 && source.is_tcp);
            if !unit_ok {
                bad.units.push((name.clone(), unit_id));
            }
            let shift = u64::from(k) * u64::from(stride);
            let points = instance_points(
                &device.points,
                shift,
                source.default_poll,
                &name,
                &mut bad.addresses,
            );
            let unit = u8::try_from(unit_id).ok().filter(|_| unit_ok);
            expanded.push(Expanded {
                source: source.index,
                entry: device.entry,
                entry_path: device.path.clone(),
                instance: is_template.then(|| name.clone()),
                name: name.clone(),
                unit_id: unit,
                shift: u32::try_from(shift).unwrap_or(u32::MAX),
                points: device.points.clone(),
            });
            let Some(unit) = unit else { continue };
            devices.push(DeviceConfig {
                name: Arc::from(name.as_str()),
                unit_id: unit,
                max_registers_per_read: device.limits.max_registers,
                max_bits_per_read: device.limits.max_bits,
                max_gap_registers: device.limits.max_gap,
                single_point_reads: raw.single_point_reads.unwrap_or(false),
                labels: labels.clone(),
                points,
            });
        }
        self.bad_instances(&bad, device.path, is_template, source.is_tcp, stride);
        devices
    }

    /// The first instance with a unit id out of range and the first with a point past the last
    /// address, each with how many more there are.
    fn bad_instances(
        &mut self,
        bad: &BadInstances,
        path: &KeyPath,
        is_template: bool,
        is_tcp: bool,
        stride: u32,
    ) {
        if let Some((name, unit_id)) = bad.units.first() {
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
                    more(bad.units.len() - 1, "instance")
                )
            } else {
                format!("unit id {unit_id} {why}, {expected}")
            };
            self.report.at(&path.key("unit_id"), message);
        }
        if let Some((name, what)) = bad.addresses.first() {
            let message = if is_template {
                format!(
                    "instance `{name}`: {what} (address_stride = {stride}){}",
                    more(bad.addresses.len() - 1, "point")
                )
            } else {
                what.clone()
            };
            self.report.at(&path.key("address_stride"), message);
        }
    }

    /// Meter names are device names: unique across the site, Modbus devices included.
    pub(super) fn meter_names(
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

    /// Duplicate device names across the site and overlaps between devices sharing a unit id.
    pub(super) fn site_wide_device_checks(&mut self, sources: &[RawSource], expanded: &[Expanded]) {
        self.device_names(expanded);
        self.unit_overlaps(sources, expanded);
    }

    /// Device names, instances included, are unique across the site.
    fn device_names(&mut self, expanded: &[Expanded]) {
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
    }

    /// Overlapping registers between devices of one source that share a unit id, reported once
    /// per pair of entries.
    fn unit_overlaps(&mut self, sources: &[RawSource], expanded: &[Expanded]) {
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
}

/// The points of the instance `name`, addresses shifted by `shift`. A point that would run past
/// the last address is left out and noted in `bad_address`.
fn instance_points(
    points: &[CheckedPoint],
    shift: u64,
    default_poll: Duration,
    name: &str,
    bad_address: &mut Vec<(String, String)>,
) -> Vec<PointConfig> {
    let mut device_points = Vec::with_capacity(points.len());
    for point in points {
        let address = u64::from(point.address) + shift;
        if address + u64::from(point.width()) > 65536 {
            bad_address.push((
                name.to_owned(),
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
    device_points
}

/// ` (and N more WHATs)`, or nothing for none.
fn more(n: usize, what: &str) -> String {
    match n {
        0 => String::new(),
        1 => format!(" (and 1 more {what})"),
        n => format!(" (and {n} more {what}s)"),
    }
}
