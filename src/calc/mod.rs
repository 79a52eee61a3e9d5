//! Pure calculators: readings in; metrics, events and aggregates out.
//!
//! [`Pipeline`] is what the app calls: `on_batch` for every [`ReadingBatch`], `flush` when windows
//! must close without new data. Everything here is pure: no clock, no I/O, no channels; all time
//! comes from the readings' timestamps (or the `now` handed to `flush`), so tests drive it with
//! timestamped readings.
//!
//! Submodules hold the formulas ([`potline`], [`emissions`], [`tariff`], [`limits`]) and the
//! stateful trackers ([`counter`], [`anode_effect`], [`window`]). Every coefficient comes from a
//! versioned table ([`coefficients`]), never from a literal in code. [`names`] holds the names
//! of what they emit, [`catalog`] the list of metrics a configuration makes them emit.

pub mod anode_effect;
pub mod catalog;
pub mod coefficients;
pub mod config;
pub mod copper;
pub mod counter;
pub mod emissions;
pub mod limits;
pub mod names;
mod pipeline;
pub mod potline;
mod snapshot;
pub mod tariff;
pub mod time;
pub mod units;
pub mod window;

pub use config::{
    AnodeCo2Method, AuxiliaryMeter, CalcConfig, GapBridge, PotlineRole, SimulatedTime, SmelterRole,
    StackRole,
};
pub use limits::LimitClass;
pub use pipeline::Pipeline;
pub use snapshot::PipelineSnapshot;

/// Errors building the calculators.
#[derive(Debug, thiserror::Error)]
pub enum CalcError {
    /// No shipped coefficient table of that name.
    #[error("unknown coefficient table `{name}`, known: {known}")]
    UnknownCoefficients {
        /// Requested name.
        name: String,
        /// Shipped names.
        known: String,
    },
    /// A coefficient table could not be read or parsed.
    #[error("coefficient table {origin}: {message}")]
    Coefficients {
        /// File or table name.
        origin: String,
        /// What went wrong.
        message: String,
    },
    /// A key of `[calc]` names an entry the coefficient table lacks.
    #[error("calc.{key}: `{value}` is not in coefficient table `{table}` (known: {known})")]
    UnknownKey {
        /// Config key (`gwp`, `potlines[0].technology`).
        key: String,
        /// Its value.
        value: String,
        /// Coefficient table version.
        table: String,
        /// Known entries.
        known: String,
    },
    /// A value out of its range.
    #[error("calc.{key}: {message}")]
    Invalid {
        /// Config key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Whether `name` matches `pattern` (`*` any run, `?` one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}
