//! Points: the checks of one point definition on its own, and the register maps (CSV files and
//! inline tables) whose points devices take.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;

use super::Builder;
use crate::config::csv_map::{PointDef, parse_csv_map};
use crate::config::locate::{KeyPath, Origin};
use crate::config::model::{Area, ByteOrder, DataType};
use crate::config::raw::{RawConfig, RawPoint, RawType};

/// A point that passed its own checks; the poll class may still come from the source default.
#[derive(Debug, Clone)]
pub(super) struct CheckedPoint {
    pub(super) name: Arc<str>,
    pub(super) area: Area,
    pub(super) address: u16,
    pub(super) data_type: DataType,
    pub(super) byte_order: ByteOrder,
    pub(super) scale: f64,
    pub(super) offset: f64,
    pub(super) unit: Arc<str>,
    pub(super) poll: Option<Duration>,
    pub(super) range: Option<(f64, f64)>,
    pub(super) writable: bool,
    pub(super) origin: Origin,
}

impl CheckedPoint {
    /// Registers (or bits, on a bit area) the point occupies.
    pub(super) fn width(&self) -> u32 {
        match self.area {
            Area::Coil | Area::DiscreteInput => 1,
            Area::Holding | Area::Input => u32::from(self.data_type.registers()),
        }
    }

    /// A bool on one bit of a register.
    pub(super) fn bit(&self) -> Option<u8> {
        match self.data_type {
            DataType::Bool { bit } if !self.area.is_bits() => bit,
            _ => None,
        }
    }
}

/// `holding 10-11`, `coil 5`, `input 7 bit 3`.
pub(super) fn describe_registers(area: Area, address: u32, width: u32, bit: Option<u8>) -> String {
    let area = area.as_str();
    match (width, bit) {
        (_, Some(bit)) => format!("{area} {address} bit {bit}"),
        (0 | 1, None) => format!("{area} {address}"),
        (w, None) => format!("{area} {address}-{}", address + w - 1),
    }
}

impl Builder<'_, '_> {
    /// `[register_maps]`: each map's points (its CSV file's, then its inline ones), checked on
    /// their own and for overlaps within the map.
    pub(super) fn register_maps(&mut self, raw: &RawConfig) -> IndexMap<String, Vec<CheckedPoint>> {
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
            self.report_overlaps(&points, 0);
            maps.insert(name.clone(), points);
        }
        maps
    }

    /// Checks one point definition on its own (independent of the device it ends up on).
    pub(super) fn point(&mut self, def: &PointDef) -> Option<CheckedPoint> {
        let before = self.report.len();
        let raw = &def.raw;
        let origin = &def.origin;
        let data_type = self.data_type(raw, origin);
        self.point_extent(raw, origin, data_type);
        let (scale, offset, range) = self.point_scaling(raw, origin);
        if raw.poll == Some(Duration::ZERO) {
            self.report
                .at_point(origin, "poll", "poll interval must be greater than zero");
        }
        if raw.writable == Some(true) {
            self.writable(raw.area, data_type, range, origin);
        }
        if self.report.len() > before {
            return None;
        }
        Some(CheckedPoint {
            name: Arc::from(def.name.as_str()),
            area: raw.area,
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

    /// The point's type: `type` with `bit` and `registers` where they apply, and allowed in its
    /// area.
    fn data_type(&mut self, raw: &RawPoint, origin: &Origin) -> DataType {
        let area = raw.area;
        if raw.bit.is_some() && raw.data_type != RawType::Bool {
            self.report.at_point(
                origin,
                "bit",
                format!(
                    "`bit` applies only to `bool` points, not to `{}`",
                    raw.data_type.name()
                ),
            );
        }
        match raw.data_type {
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
            RawType::Bool => self.register_bit(raw, origin),
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
        }
    }

    /// A `bool` on a register: `bit` is required, 0..=15.
    fn register_bit(&mut self, raw: &RawPoint, origin: &Origin) -> DataType {
        match raw.bit {
            None => {
                self.report.at_point(
                    origin,
                    "bit",
                    format!(
                        "a `bool` point on a {} register needs `bit` (0..=15, 0 = least significant)",
                        raw.area.as_str()
                    ),
                );
                DataType::Bool { bit: None }
            }
            Some(bit) if bit > 15 => {
                self.report.at_point(
                    origin,
                    "bit",
                    format!("bit {bit} is out of range, expected 0..=15 (0 = least significant)"),
                );
                DataType::Bool { bit: None }
            }
            Some(bit) => DataType::Bool { bit: Some(bit) },
        }
    }

    /// `registers` agrees with a fixed-width type, and the point ends at or before address 65535.
    fn point_extent(&mut self, raw: &RawPoint, origin: &Origin, data_type: DataType) {
        let area = raw.area;
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
                        "type `{}` occupies {fixed} register{}, but `registers` = {given}",
                        raw.data_type.name(),
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
    }

    /// `scale` (finite, non-zero), `offset` (finite) and `range` (numbers, minimum not above
    /// maximum), with their defaults.
    fn point_scaling(&mut self, raw: &RawPoint, origin: &Origin) -> (f64, f64, Option<(f64, f64)>) {
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
        (scale, offset, range)
    }

    /// `writable = true`: only what a single write request can set is writable, a register value
    /// or a coil.
    fn writable(
        &mut self,
        area: Area,
        data_type: DataType,
        range: Option<(f64, f64)>,
        origin: &Origin,
    ) {
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
}
