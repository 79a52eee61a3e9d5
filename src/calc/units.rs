//! The units the calculators accept for each input, and conversions between the ones that differ
//! only by a factor.
//!
//! A reading carries the unit its point declares (the register map's `unit` column). Each input
//! of a calculator expects one unit (`kA` for a line current, `m3/h` for a stack flow); a reading
//! in another unit of the same dimension is converted (`A` → `kA`, `m3/s` → `m3/h`), one in a unit
//! of another dimension, or one this table does not know, is not used and is reported once as a
//! `unit_mismatch` event: a flow declared in m³/s and read as m³/h would otherwise be a silent
//! factor of 3600 in every mass figure. A reading whose point declares no unit is taken as being
//! in the expected unit, since many register maps leave the column empty.

use std::collections::HashSet;
use std::sync::Arc;

use crate::model::{Event, EventKind, EventPhase, Reading, ReadingBatch, Record, Value};

/// The unit check of one calculator subject (a line, a stack, a smelter): the factor of each
/// reading to the unit its input expects, and one `unit_mismatch` event per point whose unit
/// cannot be converted.
#[derive(Debug, Default)]
pub struct UnitCheck {
    reported: HashSet<String>,
}

impl UnitCheck {
    /// The factor that turns `r` (a reading of `batch`) into `expected`, or `None`, reported in
    /// `out` the first time for its point, when it cannot be converted.
    pub fn factor(
        &mut self,
        batch: &ReadingBatch,
        r: &Reading,
        expected: &str,
        out: &mut Vec<Record>,
    ) -> Option<f64> {
        let f = factor(&r.unit, expected);
        if f.is_none() {
            let subject = format!("{}/{}.{}", batch.source, batch.device, r.point);
            if self.reported.insert(subject.clone()) {
                out.push(Record::Event(mismatch_event(subject, r, expected)));
            }
        }
        f
    }
}

/// The event of a reading whose unit is not the one its calculator input expects.
fn mismatch_event(subject: String, r: &Reading, expected: &str) -> Event {
    Event {
        kind: EventKind::UnitMismatch,
        message: format!(
            "{subject} is in `{}`, which cannot be converted to the `{expected}` the calculators expect: its readings are not used",
            r.unit
        ),
        subject: Arc::from(subject),
        phase: EventPhase::Instant,
        ts: r.ts,
        attributes: vec![
            (Arc::from("unit"), Value::Text(r.unit.to_string())),
            (Arc::from("expected"), Value::Text(expected.to_string())),
        ],
    }
}

/// A physical dimension and the factor of a unit to the dimension's base unit.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Unit {
    dimension: &'static str,
    to_base: f64,
}

/// Known units: (spelling, dimension, factor to the base unit of the dimension). Spellings are
/// compared after dropping spaces, with `³` read as `3`.
const UNITS: &[(&str, &str, f64)] = &[
    ("A", "current", 1.0),
    ("kA", "current", 1e3),
    ("mV", "voltage", 1e-3),
    ("V", "voltage", 1.0),
    ("kV", "voltage", 1e3),
    ("Wh", "energy", 1e-3),
    ("kWh", "energy", 1.0),
    ("MWh", "energy", 1e3),
    ("GWh", "energy", 1e6),
    ("kW", "power", 1.0),
    ("MW", "power", 1e3),
    ("m3/h", "volume_flow", 1.0),
    ("Nm3/h", "volume_flow", 1.0),
    ("m3/min", "volume_flow", 60.0),
    ("m3/s", "volume_flow", 3600.0),
    ("Nm3/s", "volume_flow", 3600.0),
    ("g", "mass", 1e-3),
    ("kg", "mass", 1.0),
    ("t", "mass", 1e3),
    ("kg/h", "mass_flow", 1.0),
    ("t/h", "mass_flow", 1e3),
    ("mg/m3", "concentration", 1.0),
    ("mg/Nm3", "concentration", 1.0),
    ("g/m3", "concentration", 1e3),
    ("ug/m3", "concentration", 1e-3),
    ("kgce/h", "coal_rate", 1.0),
    ("tce/h", "coal_rate", 1e3),
    ("%", "fraction", 1.0),
];

fn unit(spelling: &str) -> Option<Unit> {
    let s: String = spelling
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| if c == '³' { '3' } else { c })
        .collect();
    UNITS
        .iter()
        .find(|(u, _, _)| *u == s)
        .map(|&(_, dimension, to_base)| Unit { dimension, to_base })
}

/// The factor that turns a value in `from` into `to`: 1 when `from` is empty (undeclared) or
/// the same unit; `None` when the units are unknown or of different dimensions.
pub fn factor(from: &str, to: &str) -> Option<f64> {
    if from.trim().is_empty() || from == to {
        return Some(1.0);
    }
    let (f, t) = (unit(from)?, unit(to)?);
    (f.dimension == t.dimension).then(|| f.to_base / t.to_base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_dimension_converts_and_others_are_refused() {
        assert_eq!(factor("m3/s", "m3/h"), Some(3600.0));
        assert_eq!(factor("m³/h", "m3/h"), Some(1.0));
        assert_eq!(factor("A", "kA"), Some(1e-3));
        assert_eq!(factor("MWh", "kWh"), Some(1e3));
        assert_eq!(factor("t", "kg"), Some(1e3));
        assert_eq!(factor("", "kA"), Some(1.0));
        assert_eq!(factor("kW", "kWh"), None);
        assert_eq!(factor("furlong", "kA"), None);
    }
}
