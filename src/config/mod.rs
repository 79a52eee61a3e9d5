//! Configuration: TOML schema, device templates, CSV register maps, validation.
//!
//! Loading runs in two phases. Serde checks the shape (`raw`: unknown keys, wrong types, unknown
//! enum variants) and stops at the first problem, located by toml's span and named by its key
//! path. The second phase (`validate`) applies defaults, imports CSV register maps, expands
//! device templates and checks meaning (overlapping registers, unit ids, read sizes, secrets),
//! collecting every problem before failing. Each problem is one line
//! `file:line:column: key.path: message` (see [`Problem`]).
//!
//! Invariants of a [`Config`] returned by [`load`] or [`parse`]: every rule in docs/CONFIG.md
//! holds, every default is applied, relative paths are resolved against the configuration
//! file's directory, templates are expanded into plain devices, and nothing downstream needs to
//! re-check it.

mod broker_url;
pub(crate) mod csv_map;
pub(crate) mod defaults;
mod error;
pub mod hj212_table;
pub(crate) mod locate;
pub mod model;
mod poll_slots;
pub(crate) mod raw;
pub(crate) mod template;
pub(crate) mod validate;

use std::path::Path;

/// Defined with the records it classifies; re-exported for the uplink settings that name it.
pub use crate::model::Stream;
pub use broker_url::{BrokerUrl, BrokerUrlError, BrokerUrlProblem, MQTT_PORT, MQTTS_PORT};
pub use error::{ConfigError, Location, Problem};
pub(crate) use locate::{KeyPath, Report};
pub use model::*;
pub use poll_slots::{DEVICES_PER_POLL_SLOT, PollSlots};

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&src, path)
}

/// Validates configuration text `src`. `path` is where it came from: it prefixes every message,
/// and relative paths in the file (CSV maps, `state_dir`, `password_file`) resolve against its
/// directory.
pub fn parse(src: &str, path: &Path) -> Result<Config, ConfigError> {
    let located = |err: &toml::de::Error, key_path: String| {
        let offset = err.span().map_or(0, |span| span.start);
        let (line, column) = locate::line_column(src, offset);
        ConfigError::Invalid {
            problems: vec![Problem {
                file: path.to_path_buf(),
                location: Location::Toml { line, column },
                key_path,
                message: err.message().to_owned(),
            }],
        }
    };

    let root = toml::de::DeTable::parse(src).map_err(|err| located(&err, String::new()))?;
    let deserializer =
        toml::Deserializer::parse(src).map_err(|err| located(&err, String::new()))?;
    let raw: raw::RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key_path = if err.path().iter().next().is_some() {
            err.path().to_string()
        } else {
            String::new()
        };
        located(err.inner(), key_path)
    })?;

    let mut report = locate::Report::new(path, src, root);
    let config = validate::build(raw, path, &mut report);
    let problems = report.into_problems();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid { problems })
    }
}
