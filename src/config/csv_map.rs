//! Register maps imported from CSV.
//!
//! A header row is required; columns may come in any order; an unknown or repeated column is an
//! error; an empty cell means the default. Lines starting with `#` are comments. Each row becomes
//! a [`RawPoint`], the same struct an inline TOML point deserializes into, so that both go through
//! the same semantic checks. Every problem is reported with the CSV file, its line and the column.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::de::value::{Error as ValueError, StrDeserializer};

use super::locate::{KeyPath, Origin, Report};
use super::raw::{RawPoint, RawType};
use crate::config::model::{Area, ByteOrder};

/// Every column a register map CSV may have, in documentation order.
pub(crate) const COLUMNS: [&str; 15] = [
    "name",
    "area",
    "address",
    "type",
    "byte_order",
    "scale",
    "offset",
    "unit",
    "poll",
    "range_min",
    "range_max",
    "bit",
    "registers",
    "writable",
    "description",
];

const REQUIRED: [&str; 4] = ["name", "area", "address", "type"];

/// A point read from a CSV row (or an inline table), with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct PointDef {
    pub(crate) name: String,
    pub(crate) raw: RawPoint,
    pub(crate) origin: Origin,
}

/// Parses the text of a CSV register map. `map_path` is `register_maps.<name>`; problems go to
/// `report` and the rows that parsed are returned.
pub(crate) fn parse_csv_map(
    file: &Path,
    text: &str,
    map_path: &KeyPath,
    report: &mut Report<'_>,
) -> Vec<PointDef> {
    let file = Arc::new(file.to_path_buf());
    let csv_path = map_path.key("csv");
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let Some((index, header_line)) = header(&mut reader, text, &file, &csv_path, report) else {
        return Vec::new();
    };
    let sheet = Sheet {
        file: &file,
        map_path,
        index,
    };

    let mut points: Vec<PointDef> = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(err) => {
                let line = err.position().map_or(header_line, |p| line_of(text, p));
                report.at_csv(
                    &file,
                    line,
                    None,
                    &csv_path,
                    format!("malformed row: {err}"),
                );
                continue;
            }
        };
        let line = record.position().map_or(header_line, |p| line_of(text, p));
        if let Some(point) = sheet.point(&record, line, &mut seen, report) {
            points.push(point);
        }
    }
    points
}

/// The header row: the index of each column and the header's line. `None` (with the problems
/// reported) when it is unreadable or missing, names an unknown column or one twice, or lacks a
/// required column.
fn header(
    reader: &mut csv::Reader<&[u8]>,
    text: &str,
    file: &Path,
    csv_path: &KeyPath,
    report: &mut Report<'_>,
) -> Option<(HashMap<&'static str, usize>, u64)> {
    let header = match reader.headers() {
        Ok(header) => header.clone(),
        Err(err) => {
            let line = err.position().map_or(1, |p| line_of(text, p));
            report.at_csv(
                file,
                line,
                None,
                csv_path,
                format!("unreadable header: {err}"),
            );
            return None;
        }
    };
    let header_line = header.position().map_or(1, |p| line_of(text, p));
    if header.iter().all(str::is_empty) {
        report.at_csv(
            file,
            header_line,
            None,
            csv_path,
            format!(
                "missing header row, expected columns among {}",
                column_list()
            ),
        );
        return None;
    }
    let index = column_index(&header, header_line, file, csv_path, report)?;
    Some((index, header_line))
}

/// Each known column's position in `header`; `None` (reported) on an unknown or repeated column
/// or a missing required one.
fn column_index(
    header: &csv::StringRecord,
    header_line: u64,
    file: &Path,
    csv_path: &KeyPath,
    report: &mut Report<'_>,
) -> Option<HashMap<&'static str, usize>> {
    let mut index: HashMap<&'static str, usize> = HashMap::new();
    let mut header_ok = true;
    for (i, column) in header.iter().enumerate() {
        let Some(known) = COLUMNS.iter().find(|c| **c == column) else {
            report.at_csv(
                file,
                header_line,
                Some(column),
                csv_path,
                format!(
                    "unknown column `{column}`, expected one of {}",
                    column_list()
                ),
            );
            header_ok = false;
            continue;
        };
        if index.insert(known, i).is_some() {
            report.at_csv(
                file,
                header_line,
                Some(column),
                csv_path,
                format!("column `{column}` appears twice"),
            );
            header_ok = false;
        }
    }
    for required in REQUIRED {
        if !index.contains_key(required) {
            report.at_csv(
                file,
                header_line,
                Some(required),
                csv_path,
                format!("missing required column `{required}`"),
            );
            header_ok = false;
        }
    }
    header_ok.then_some(index)
}

/// A register map CSV whose header was read: where it is and which column is where.
struct Sheet<'s> {
    file: &'s Arc<PathBuf>,
    map_path: &'s KeyPath,
    index: HashMap<&'static str, usize>,
}

impl Sheet<'_> {
    /// The non-empty cell of `column` in `record`.
    fn cell<'r>(&self, record: &'r csv::StringRecord, column: &str) -> Option<&'r str> {
        self.index
            .get(column)
            .and_then(|&i| record.get(i))
            .filter(|s| !s.is_empty())
    }

    /// The point of one data row on `line`; `None` (reported) when the name is missing or was
    /// seen before (`seen` maps names to their lines) or a cell is invalid.
    fn point(
        &self,
        record: &csv::StringRecord,
        line: u64,
        seen: &mut HashMap<String, u64>,
        report: &mut Report<'_>,
    ) -> Option<PointDef> {
        let cell = |column: &str| self.cell(record, column);
        let Some(name) = cell("name") else {
            report.at_csv(
                self.file,
                line,
                Some("name"),
                &self.map_path.key("csv"),
                "missing point name (column `name` is required)",
            );
            return None;
        };
        let point_path = self.map_path.key("points").key(name);
        if let Some(first) = seen.get(name) {
            report.at_csv(
                self.file,
                line,
                Some("name"),
                &point_path,
                format!("duplicate point `{name}` (first defined on line {first})"),
            );
            return None;
        }
        seen.insert(name.to_owned(), line);

        let mut row = Row {
            report,
            file: self.file,
            line,
            path: &point_path,
            failed: false,
        };
        let raw = raw_point(&mut row, cell)?;
        Some(PointDef {
            name: name.to_owned(),
            raw,
            origin: Origin::Csv {
                file: Arc::clone(self.file),
                line,
                path: point_path,
            },
        })
    }
}

/// The cells of a row as the point an inline table would give; `None` when a cell failed (each
/// failure reported through `row`).
fn raw_point<'c>(
    row: &mut Row<'_, '_>,
    cell: impl Fn(&str) -> Option<&'c str>,
) -> Option<RawPoint> {
    let area = row.required(cell("area"), "area", parse_enum::<Area>);
    let address = row.required(cell("address"), "address", parse_address);
    let data_type = row.required(cell("type"), "type", parse_enum::<RawType>);
    let byte_order = row.optional(cell("byte_order"), "byte_order", parse_enum::<ByteOrder>);
    let scale = row.optional(cell("scale"), "scale", parse_f64);
    let offset = row.optional(cell("offset"), "offset", parse_f64);
    let unit = cell("unit").map(str::to_owned);
    let poll = row.optional(cell("poll"), "poll", |s| {
        humantime::parse_duration(s).map_err(|source| CellError::Duration {
            text: s.to_owned(),
            source,
        })
    });
    let range_min = row.optional(cell("range_min"), "range_min", parse_f64);
    let range_max = row.optional(cell("range_max"), "range_max", parse_f64);
    let bit = row.optional(cell("bit"), "bit", |s| {
        s.parse::<u8>().map_err(|_| CellError::Bit(s.to_owned()))
    });
    let registers = row.optional(cell("registers"), "registers", |s| {
        s.parse::<u16>()
            .map_err(|_| CellError::Registers(s.to_owned()))
    });
    let writable = row.optional(cell("writable"), "writable", |s| match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(CellError::Bool(s.to_owned())),
    });
    let range = match (range_min, range_max) {
        (Some(min), Some(max)) => Some([min, max]),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            let column = if range_min.is_some() {
                "range_max"
            } else {
                "range_min"
            };
            row.fail(
                column,
                "range",
                "range_min and range_max must both be given or both be empty",
            );
            None
        }
    };
    let (Some(area), Some(address), Some(data_type)) = (area, address, data_type) else {
        return None;
    };
    if row.failed {
        return None;
    }
    Some(RawPoint {
        area,
        address,
        data_type,
        byte_order,
        scale,
        offset,
        unit,
        poll,
        range,
        bit,
        registers,
        writable,
        description: cell("description").map(str::to_owned),
    })
}

/// 1-based line of a record as an editor shows it. csv reports where it started reading, which
/// is before any blank and comment lines it then skipped, so skip those here too.
pub(crate) fn line_of(text: &str, position: &csv::Position) -> u64 {
    let mut offset = usize::try_from(position.byte()).map_or(text.len(), |b| b.min(text.len()));
    while let Some(rest) = text.get(offset..) {
        let skippable = rest.starts_with('\n') || rest.starts_with("\r\n") || rest.starts_with('#');
        match rest.find('\n') {
            Some(newline) if skippable => offset += newline + 1,
            _ => break,
        }
    }
    let newlines = text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count();
    u64::try_from(newlines).map_or(u64::MAX, |n| n + 1)
}

/// The cells of one row being parsed, with problem reporting.
struct Row<'r, 'a> {
    report: &'r mut Report<'a>,
    file: &'r PathBuf,
    line: u64,
    path: &'r KeyPath,
    failed: bool,
}

impl Row<'_, '_> {
    fn fail(&mut self, column: &str, key: &str, message: impl Into<String>) {
        self.failed = true;
        self.report.at_csv(
            self.file,
            self.line,
            Some(column),
            &self.path.key(key),
            message,
        );
    }

    fn required<T>(
        &mut self,
        cell: Option<&str>,
        column: &str,
        parse: impl FnOnce(&str) -> Result<T, CellError>,
    ) -> Option<T> {
        match cell {
            None => {
                self.fail(column, column, format!("missing `{column}` (required)"));
                None
            }
            Some(text) => self.optional(Some(text), column, parse),
        }
    }

    fn optional<T>(
        &mut self,
        cell: Option<&str>,
        column: &str,
        parse: impl FnOnce(&str) -> Result<T, CellError>,
    ) -> Option<T> {
        let text = cell?;
        match parse(text) {
            Ok(value) => Some(value),
            Err(err) => {
                let key = match column {
                    "range_min" | "range_max" => "range",
                    other => other,
                };
                self.fail(column, key, err.to_string());
                None
            }
        }
    }
}

/// Why one cell of a register map CSV does not parse. Its text is the message reported at the
/// cell, worded as the same mistake in a TOML point is.
#[derive(Debug, thiserror::Error)]
enum CellError {
    /// A name the column's enumeration (`area`, `type`, `byte_order`) does not have, in serde's
    /// words.
    #[error("{0}")]
    Name(ValueError),
    #[error("invalid address `{0}`, expected an integer 0..=65535")]
    Address(String),
    #[error("invalid number `{0}`")]
    Number(String),
    #[error("invalid duration `{text}`: {source}")]
    Duration {
        text: String,
        source: humantime::DurationError,
    },
    #[error("invalid bit `{0}`, expected an integer 0..=15")]
    Bit(String),
    #[error("invalid register count `{0}`, expected an integer")]
    Registers(String),
    #[error("invalid value `{0}`, expected `true` or `false`")]
    Bool(String),
}

/// Parses a cell the way serde parses the same string in TOML, so that messages match.
fn parse_enum<T: DeserializeOwned>(text: &str) -> Result<T, CellError> {
    T::deserialize(StrDeserializer::<ValueError>::new(text)).map_err(CellError::Name)
}

/// Decimal, or hexadecimal with `0x` (datasheets use both).
fn parse_address(text: &str) -> Result<u16, CellError> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => text.parse::<u16>(),
    };
    parsed.map_err(|_| CellError::Address(text.to_owned()))
}

fn parse_f64(text: &str) -> Result<f64, CellError> {
    text.parse::<f64>()
        .map_err(|_| CellError::Number(text.to_owned()))
}

fn column_list() -> String {
    COLUMNS
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<PointDef>, Vec<String>) {
        let src = "site = \"t\"\n";
        let root = toml::de::DeTable::parse(src).expect("valid toml");
        let mut report = Report::new(Path::new("c.toml"), src, root);
        let map = KeyPath::default().key("register_maps").key("m");
        let points = parse_csv_map(Path::new("m.csv"), text, &map, &mut report);
        let problems = report
            .into_problems()
            .iter()
            .map(ToString::to_string)
            .collect();
        (points, problems)
    }

    #[test]
    fn columns_in_any_order_with_comments_and_hex_addresses() {
        let (points, problems) = parse(
            "# comment\ntype,address,name,area,unit\n\n# another\nu32,0x10,energy_kwh,holding, kWh \n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(points.len(), 1);
        let p = &points[0];
        assert_eq!(p.name, "energy_kwh");
        assert_eq!((p.raw.area, p.raw.address), (Area::Holding, 16));
        assert_eq!(p.raw.data_type, RawType::U32);
        assert_eq!(p.raw.unit.as_deref(), Some("kWh"));
        let Origin::Csv { line, .. } = p.origin else {
            panic!("csv origin expected");
        };
        assert_eq!(line, 5);
    }

    #[test]
    fn every_bad_cell_is_reported_with_its_column() {
        let (points, problems) = parse(
            "name,area,address,type,range_min,range_max,writable\n\
             a,holding,0,u16,5,,yes\n\
             a,holding,1,u16,,,\n\
             ,holding,2,u16,,,\n",
        );
        assert!(points.is_empty());
        assert_eq!(
            problems,
            [
                "m.csv:2: register_maps.m.points.a.writable (column `writable`): invalid value `yes`, expected `true` or `false`",
                "m.csv:2: register_maps.m.points.a.range (column `range_max`): range_min and range_max must both be given or both be empty",
                "m.csv:3: register_maps.m.points.a (column `name`): duplicate point `a` (first defined on line 2)",
                "m.csv:4: register_maps.m.csv (column `name`): missing point name (column `name` is required)",
            ]
        );
    }
}
