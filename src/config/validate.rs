//! The second phase: raw structs → validated [`Config`].
//!
//! Applies every default (named in [`super::defaults`]), imports CSV register maps, expands
//! device templates and checks every rule that serde cannot express. Problems are collected,
//! never returned early, so that the caller sees all of them; the `Config` built alongside is only
//! handed out when the collector stayed empty.
//!
//! Each section has its own file: `points` (point definitions and register maps), `sources`
//! (Modbus sources), `devices` (devices, templates and the site-wide device checks), `overlap`
//! (register overlap sweeps), `uplinks` (MQTT and Sparkplug uplinks and what every uplink
//! shares), `hj212` (the HJ 212 uplink and station header), `sections` (`[http]`, `[history]`,
//! `[ledger]`) and `shared` (checks several sections use).

use std::path::{Path, PathBuf};

use super::defaults;
use super::locate::{KeyPath, Report};
use super::model::Config;
use super::raw::RawConfig;

mod devices;
mod hj212;
mod overlap;
mod points;
mod sections;
pub(crate) mod shared;
mod sources;
mod uplinks;

/// The validation state: where problems go and the directory relative paths resolve against.
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

    b.site(&raw.site, &root);
    let state_dir = b.resolve(
        raw.state_dir
            .as_deref()
            .unwrap_or(Path::new(defaults::STATE_DIR)),
    );
    let (sources, meter_buses) = b.sources(&raw, &root);
    let uplinks = b.uplinks(&raw, &root);
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

    /// `site`: lowercase letters, digits, `_` and `-`.
    fn site(&mut self, site: &str, root: &KeyPath) {
        if site.is_empty()
            || !site
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
        {
            self.report.at(
                &root.key("site"),
                format!(
                    "invalid site `{site}`, expected lowercase letters, digits, `_` and `-` only"
                ),
            );
        }
    }
}
