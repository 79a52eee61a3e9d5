//! Unit algebra of derived points: what unit an expression's result has, given the units its
//! inputs declare.
//!
//! A unit is a scale and a vector of exponents over seven base dimensions (current, voltage,
//! time, mass, length, standard coal, temperature). Power is voltage × current, energy is power ×
//! time, so `kA × V` is `kW` (scale 1,000 on V·A) and `kWh / h` is `kW` too. A unit string is a
//! product and quotient of the atoms in [`ATOMS`], each with an optional integer power
//! (`m3`, `mg/m3`, `kWh/t`, `V*kA`); `%` and `ppm` are dimensionless with their scale.
//!
//! Number literals carry no unit: added to or compared with a quantity they take its unit
//! (`v > 4.5`), multiplied with one they scale it (`energy_kwh / 1000` declared `MWh`), so an
//! expression that multiplies by a literal is only checked for its dimension, not its scale.

use std::fmt;
use std::ops::{Div, Mul};

/// Number of base dimensions.
const DIMS: usize = 7;
/// Names of the base dimensions, as rendered: the base unit of each.
const BASE: [&str; DIMS] = ["A", "V", "h", "kg", "m", "kgce", "degC"];

/// A physical unit: `scale` base units per unit and the power of each base dimension.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unit {
    /// How many base units one of this unit is (`kW`: 1,000 V·A).
    pub scale: f64,
    /// Exponent of each base dimension ([`BASE`]).
    pub dims: [i8; DIMS],
}

/// The base dimensions of an atom and their powers.
type AtomDims = &'static [(usize, i8)];

/// Known atoms: spelling, scale, base dimension index and its power (none: dimensionless).
const ATOMS: &[(&str, f64, AtomDims)] = &[
    ("A", 1.0, &[(0, 1)]),
    ("mA", 1e-3, &[(0, 1)]),
    ("kA", 1e3, &[(0, 1)]),
    ("V", 1.0, &[(1, 1)]),
    ("mV", 1e-3, &[(1, 1)]),
    ("kV", 1e3, &[(1, 1)]),
    ("W", 1.0, &[(0, 1), (1, 1)]),
    ("kW", 1e3, &[(0, 1), (1, 1)]),
    ("MW", 1e6, &[(0, 1), (1, 1)]),
    ("Wh", 1.0, &[(0, 1), (1, 1), (2, 1)]),
    ("kWh", 1e3, &[(0, 1), (1, 1), (2, 1)]),
    ("MWh", 1e6, &[(0, 1), (1, 1), (2, 1)]),
    ("GWh", 1e9, &[(0, 1), (1, 1), (2, 1)]),
    ("s", 1.0 / 3600.0, &[(2, 1)]),
    ("min", 1.0 / 60.0, &[(2, 1)]),
    ("h", 1.0, &[(2, 1)]),
    ("d", 24.0, &[(2, 1)]),
    ("ug", 1e-9, &[(3, 1)]),
    ("mg", 1e-6, &[(3, 1)]),
    ("g", 1e-3, &[(3, 1)]),
    ("kg", 1.0, &[(3, 1)]),
    ("t", 1e3, &[(3, 1)]),
    ("mm", 1e-3, &[(4, 1)]),
    ("cm", 1e-2, &[(4, 1)]),
    ("m", 1.0, &[(4, 1)]),
    // Normal cubic metres: volume at reference conditions, the same dimension as m³.
    ("Nm", 1.0, &[(4, 1)]),
    ("kgce", 1.0, &[(5, 1)]),
    ("tce", 1e3, &[(5, 1)]),
    ("degC", 1.0, &[(6, 1)]),
    ("°C", 1.0, &[(6, 1)]),
    ("%", 1e-2, &[]),
    ("ppm", 1e-6, &[]),
    ("1", 1.0, &[]),
];

impl Unit {
    /// The dimensionless unit of scale 1 (an empty unit string, a count).
    pub const ONE: Unit = Unit {
        scale: 1.0,
        dims: [0; DIMS],
    };

    /// Parse a unit string; `None` when an atom is unknown. Spaces are ignored, `³`/`²` are
    /// powers, `*` and `·` multiply, `/` divides everything after it up to the next `/`.
    pub fn parse(text: &str) -> Option<Unit> {
        let s: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| match c {
                '³' => '3',
                '²' => '2',
                '·' => '*',
                other => other,
            })
            .collect();
        let mut unit = Unit::ONE;
        for (i, quotient_part) in s.split('/').enumerate() {
            for factor in quotient_part.split('*') {
                if factor.is_empty() {
                    if s.is_empty() {
                        continue;
                    }
                    return None;
                }
                let f = atom_with_power(factor)?;
                unit = if i == 0 { unit * f } else { unit / f };
            }
        }
        Some(unit)
    }

    /// 1 / self.
    pub fn inverse(self) -> Unit {
        Unit {
            scale: 1.0 / self.scale,
            dims: self.dims.map(|d| d.saturating_neg()),
        }
    }

    /// Same dimension (whatever the scale).
    pub fn same_dimension(&self, o: &Unit) -> bool {
        self.dims == o.dims
    }

    /// Same dimension and the same scale (to a relative 1e-9).
    pub fn same(&self, o: &Unit) -> bool {
        self.same_dimension(o) && ((self.scale - o.scale).abs() <= 1e-9 * self.scale.abs())
    }
}

impl Mul for Unit {
    type Output = Unit;

    /// Product of two units.
    fn mul(self, o: Unit) -> Unit {
        let mut dims = self.dims;
        for (d, e) in dims.iter_mut().zip(o.dims) {
            *d = d.saturating_add(e);
        }
        Unit {
            scale: self.scale * o.scale,
            dims,
        }
    }
}

impl Div for Unit {
    type Output = Unit;

    /// Quotient of two units.
    fn div(self, o: Unit) -> Unit {
        Mul::mul(self, o.inverse())
    }
}

/// One factor: an atom with an optional trailing integer power (`m3`, `h2`).
fn atom_with_power(factor: &str) -> Option<Unit> {
    let digits = factor.len() - factor.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (name, power) = if digits > 0 && digits < factor.len() {
        let (n, p) = factor.split_at(factor.len() - digits);
        (n, p.parse::<i8>().ok()?)
    } else {
        (factor, 1)
    };
    let &(_, scale, dims) = ATOMS.iter().find(|(a, _, _)| *a == name)?;
    let mut u = Unit {
        scale,
        dims: [0; DIMS],
    };
    for &(d, e) in dims {
        u.dims[d] = e;
    }
    let mut out = Unit::ONE;
    for _ in 0..power.max(0) {
        out = out * u;
    }
    Some(out)
}

impl fmt::Display for Unit {
    /// Base-unit form with the scale: `1000 A·V`, `A·V·h/kg`, `1` for a pure number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |sign: i8| {
            self.dims
                .iter()
                .zip(BASE)
                .filter(|(e, _)| e.signum() == sign)
                .map(|(e, b)| match e.abs() {
                    1 => b.to_string(),
                    n => format!("{b}{n}"),
                })
                .collect::<Vec<_>>()
                .join("·")
        };
        let (num, den) = (part(1), part(-1));
        if self.scale != 1.0 {
            write!(f, "{} ", self.scale)?;
        }
        match (num.is_empty(), den.is_empty()) {
            (true, true) => f.write_str("1"),
            (false, true) => f.write_str(&num),
            (true, false) => write!(f, "1/{den}"),
            (false, false) => write!(f, "{num}/{den}"),
        }
    }
}

/// What the unit inference knows about a sub-expression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Inferred {
    /// An input whose unit is not declared: nothing is checked through it.
    Unknown,
    /// A number literal: takes the unit of what it is added to or compared with.
    Literal,
    /// A quantity; `free_scale` when a literal multiplied or divided it (only its dimension is
    /// then checked).
    Quantity {
        /// The unit.
        unit: Unit,
        /// Whether a literal factor changed its scale.
        free_scale: bool,
    },
    /// A truth value (a comparison, `has()`, `&&`).
    Bool,
}

impl Inferred {
    /// A quantity of `unit`.
    pub fn of(unit: Unit) -> Inferred {
        Inferred::Quantity {
            unit,
            free_scale: false,
        }
    }

    /// The unit of `a * b` (`divide`: `a / b`).
    pub fn product(a: Inferred, b: Inferred, divide: bool) -> Inferred {
        use Inferred::*;
        if let Some((u, v, free_scale)) = quantities(a, b) {
            let unit = if divide { u / v } else { u * v };
            return Quantity { unit, free_scale };
        }
        match (a, b) {
            (Unknown, _) | (_, Unknown) => Unknown,
            (Literal | Bool, Literal | Bool) => Literal,
            (Quantity { unit, .. }, Literal | Bool) => Quantity {
                unit,
                free_scale: true,
            },
            (Literal | Bool, Quantity { unit, .. }) => Quantity {
                unit: if divide { unit.inverse() } else { unit },
                free_scale: true,
            },
            (Quantity { .. }, Quantity { .. }) => unreachable!("two quantities are handled above"),
        }
    }

    /// The unit of `a + b`, `a - b`, a comparison's operands or a conditional's branches: both
    /// must be the same quantity. `Err` says what differs.
    pub fn same(a: Inferred, b: Inferred) -> Result<Inferred, CombineError> {
        use Inferred::*;
        if let Some((u, v, free_scale)) = quantities(a, b) {
            return if !u.same_dimension(&v) {
                Err(CombineError::Dimension(u, v))
            } else if !(free_scale || u.same(&v)) {
                Err(CombineError::Scale(u, v))
            } else {
                Ok(Quantity {
                    unit: u,
                    free_scale,
                })
            };
        }
        match (a, b) {
            (Unknown, _) | (_, Unknown) => Ok(Unknown),
            (Literal | Bool, x) | (x, Literal | Bool) => Ok(x),
            (Quantity { .. }, Quantity { .. }) => unreachable!("two quantities are handled above"),
        }
    }

    /// Whether a result of this unit may be declared as `declared`; `Err` says why not.
    pub fn fits(self, declared: &Unit, declared_text: &str) -> Result<(), FitError> {
        match self {
            Inferred::Unknown | Inferred::Literal | Inferred::Bool => Ok(()),
            Inferred::Quantity { unit, free_scale } => {
                if !unit.same_dimension(declared) {
                    Err(FitError::Dimension {
                        got: unit,
                        declared: *declared,
                        text: declared_text.to_owned(),
                    })
                } else if !free_scale && !unit.same(declared) {
                    Err(FitError::Scale {
                        got: unit,
                        declared: *declared,
                        text: declared_text.to_owned(),
                        factor: unit.scale / declared.scale,
                    })
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Both units with whether either scale is free, when `a` and `b` are both quantities: the
/// case every operation on two operands works out the same way.
fn quantities(a: Inferred, b: Inferred) -> Option<(Unit, Unit, bool)> {
    match (a, b) {
        (
            Inferred::Quantity {
                unit: u,
                free_scale: fa,
            },
            Inferred::Quantity {
                unit: v,
                free_scale: fb,
            },
        ) => Some((u, v, fa || fb)),
        _ => None,
    }
}

/// Why two operands cannot be added, compared or be the two branches of a conditional.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CombineError {
    /// Different dimensions (`kA` and `V`).
    #[error("combines `{0}` with `{1}`")]
    Dimension(Unit, Unit),
    /// One dimension at two scales (`kA` and `A`), neither freed by a literal factor.
    #[error("combines `{0}` with `{1}` (same dimension, another scale: convert one)")]
    Scale(Unit, Unit),
}

/// Why a result cannot be declared in a unit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    /// The result has another dimension.
    #[error("the expression gives `{got}`, which is not a `{text}` (`{declared}`)")]
    Dimension {
        /// The unit of the result.
        got: Unit,
        /// The declared unit.
        declared: Unit,
        /// The declared unit as written.
        text: String,
    },
    /// The result has the dimension at another scale.
    #[error(
        "the expression gives `{got}`, the declared `{text}` is `{declared}`: multiply by {factor} to get `{text}`"
    )]
    Scale {
        /// The unit of the result.
        got: Unit,
        /// The declared unit.
        declared: Unit,
        /// The declared unit as written.
        text: String,
        /// What the result must be multiplied by.
        factor: f64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Unit {
        Unit::parse(s).unwrap_or_else(|| panic!("{s} does not parse"))
    }

    #[test]
    fn kiloamperes_times_volts_are_kilowatts() {
        assert!((u("kA") * u("V")).same(&u("kW")));
        assert!(!(u("A") * u("V")).same(&u("kW")));
        assert!((u("A") * u("V")).same_dimension(&u("kW")));
    }

    #[test]
    fn kilowatt_hours_per_hour_are_kilowatts_and_per_tonne_is_specific_energy() {
        assert!(u("kWh/h").same(&u("kW")));
        assert!((u("kWh") / u("t")).same(&u("kWh/t")));
        assert!((u("MWh") / u("t")).same_dimension(&u("kWh/t")));
        assert!(!u("kWh").same_dimension(&u("kW")));
    }

    #[test]
    fn powers_percent_and_spelling_variants() {
        assert!((u("mg/m3") * u("m3/h")).same(&u("mg/h")));
        assert!(u("mg/m³").same(&u("mg/m3")));
        assert!(u("Nm3/h").same(&u("m3/h")));
        let per_hour_in_a_second = Unit {
            scale: 3600.0,
            dims: [0; DIMS],
        };
        assert!(u("m3/s").same(&(u("m3/h") * per_hour_in_a_second)));
        assert!(u("%").same_dimension(&Unit::ONE));
        assert!(u("").same(&Unit::ONE));
        assert!(u("V*kA").same(&u("kW")));
        assert_eq!(Unit::parse("furlong"), None);
        assert_eq!(Unit::parse("kW/"), None);
        assert_eq!(u("kW").to_string(), "1000 A·V");
        assert_eq!(u("mg/m3").to_string(), "0.000001 kg/m3");
    }

    #[test]
    fn literals_take_the_unit_they_meet_and_free_the_scale_they_multiply() {
        let v = Inferred::of(u("V"));
        let ka = Inferred::of(u("kA"));
        assert_eq!(Inferred::same(v, Inferred::Literal), Ok(v));
        let kw = Inferred::product(ka, v, false);
        assert_eq!(kw.fits(&u("kW"), "kW"), Ok(()));
        assert!(
            kw.fits(&u("MW"), "MW")
                .unwrap_err()
                .to_string()
                .contains("multiply by 0.001")
        );
        let mw = Inferred::product(kw, Inferred::Literal, true);
        assert_eq!(mw.fits(&u("MW"), "MW"), Ok(()));
        assert!(mw.fits(&u("MWh"), "MWh").is_err());
        assert!(
            Inferred::same(v, ka)
                .unwrap_err()
                .to_string()
                .contains("combines")
        );
        assert!(
            Inferred::same(Inferred::of(u("kA")), Inferred::of(u("A")))
                .unwrap_err()
                .to_string()
                .contains("another scale")
        );
        assert_eq!(Inferred::same(Inferred::Unknown, ka), Ok(Inferred::Unknown));
        assert_eq!(Inferred::Bool.fits(&u("kW"), "kW"), Ok(()));
    }
}
