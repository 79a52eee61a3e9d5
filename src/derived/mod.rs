//! Derived points: the plant's own formulas over points, calculator metrics and aggregates,
//! declared in `[[derived]]` and evaluated safely with CEL (the Common Expression Language).
//!
//! - [`inputs`](config::inputs) finds the references in an expression (`potline1/rectifier.line_current_ka`,
//!   `mean(potline1/pot_*.cell_voltage_v)`, `rate(aux/meter.energy_kwh, "5m")`) and rewrites
//!   each into a variable `_in.vN`. CEL has neither that syntax nor an aggregate over a device
//!   glob, so the globs are resolved at load against the configured devices and every aggregate,
//!   rate and delta is computed by the [`engine`] before evaluation: CEL only ever sees numbers.
//! - [`expr`](config::expr) compiles the rewritten text once at load with the `cel` crate and refuses, on the
//!   syntax tree, whatever could make an evaluation costly or do anything but arithmetic (lists,
//!   maps, macros, strings, other functions); it infers the unit of the result ([`units`](config::units)).
//! - [`config`] validates `[[derived]]` with located errors and prints them for `check`. It
//!   holds `inputs`, `expr` and `units`: rewriting, compiling and unit inference are pure and
//!   are how an entry is validated, so they belong to the configuration layer, below the
//!   runtime that uses them.
//! - [`eval`] evaluates a compiled expression with the values of its inputs.
//! - [`engine`] keeps the latest value of every input, evaluates the entries whose inputs
//!   changed (or whose period came) and turns the results into records.
//!
//! Quality: an input without a good value is left out of `_in`, so `has(x)` is false for it. A
//! result is `good` when every input is good; otherwise it takes the worst quality of the bad
//! inputs, unless each bad input is tested with `has()` in the expression and the evaluation
//! succeeded. An aggregate is computed over the good members and takes the worst quality of the
//! others (`count` counts the good members and is always good). A result that is NaN or
//! infinite, or an evaluation that fails with every input good, is `out_of_range` without a
//! value. Its timestamp is the newest input's.

pub mod config;
pub mod engine;
pub mod eval;

pub use config::{DerivedPoint, DerivedStream, Trigger, calc_inputs_report, check_report};
pub use engine::{Engine, Output};
