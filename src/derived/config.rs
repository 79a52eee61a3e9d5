//! The `[[derived]]` section: its raw form, its validation with located errors, and what
//! `smeltwatch check` prints of it.
//!
//! Validating an entry rewrites its references ([`inputs`]), compiles and type-checks its
//! expression ([`expr`]) and infers its unit ([`units`]): pure work on the text, kept here with
//! the section so that the runtime ([`crate::derived::engine`]) builds on the configuration and
//! not the other way round.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

pub mod expr;
pub mod inputs;
pub mod units;

use self::inputs::{Input, Kind, Rewritten};
use self::units::{Inferred, Unit};
use crate::calc::catalog::{self, CatalogMetric};
use crate::calc::{CalcConfig, glob_match};
use crate::config::{KeyPath, Report, SourceConfig};

/// The source name of derived points' batches (`derived/<device>.<name>`).
pub const SOURCE: &str = "derived";

/// Which stream a derived point travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DerivedStream {
    /// As a reading of device `derived/<device>` on the live stream.
    Live,
    /// As a metric of calculator `derived`, with the entry's labels.
    #[default]
    Metrics,
}

/// `[[derived]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDerived {
    name: String,
    expr: String,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    trigger: Option<String>,
    #[serde(default)]
    labels: IndexMap<String, String>,
    #[serde(default)]
    stream: DerivedStream,
    #[serde(default)]
    device: Option<String>,
}

/// `(source, device)` pairs an input reads.
pub type Devices = Vec<(Arc<str>, Arc<str>)>;

/// When a derived point is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Whenever a batch with one of its inputs arrives (once per fan-out burst).
    Batch,
    /// On a clock period.
    Period(Duration),
}

/// A validated `[[derived]]` entry with its inputs resolved.
#[derive(Debug, Clone)]
pub struct DerivedPoint {
    /// Point name, with its unit as suffix (`line_power_kw`).
    pub name: Arc<str>,
    /// The expression as written.
    pub expr: String,
    /// The declared unit.
    pub unit: Arc<str>,
    /// When it is evaluated.
    pub trigger: Trigger,
    /// Labels of its metric.
    pub labels: Vec<(Arc<str>, Arc<str>)>,
    /// Its stream.
    pub stream: DerivedStream,
    /// The device it is reported under (`derived/<device>.<name>`); `derived` by default.
    pub device: Arc<str>,
    /// The expression with its inputs as variables.
    pub rewritten: Rewritten,
    /// For each input, the `(source, device)` pairs it reads.
    pub resolved: Vec<Devices>,
    /// For each input, its unit.
    pub units: Vec<Inferred>,
    /// For each input, the unit its points (or calculator metrics) declare, as written; empty
    /// when none declares one.
    pub input_units: Vec<Arc<str>>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

/// Validate every entry, reporting problems at `derived[i].<key>`.
pub(crate) fn validate(
    raw: &[RawDerived],
    sources: &[SourceConfig],
    calc: Option<&CalcConfig>,
    report: &mut Report<'_>,
) -> Vec<DerivedPoint> {
    let mut out: Vec<DerivedPoint> = Vec::new();
    // The metrics `calc:` inputs may name, and their units.
    let catalogue = calc.map(catalog::metrics).unwrap_or_default();
    for (i, r) in raw.iter().enumerate() {
        let path = KeyPath::default().key("derived").index(i);
        let device: Arc<str> = Arc::from(r.device.as_deref().unwrap_or(SOURCE));
        if !valid_name(&r.name) {
            report.at(
                &path.key("name"),
                format!("invalid name `{}`, expected lowercase letters, digits and `_`, with the unit as suffix (`line_power_kw`)", r.name),
            );
        } else if let Some(j) = out
            .iter()
            .position(|p| *p.name == *r.name && p.device == device)
        {
            report.at(
                &path.key("name"),
                format!("duplicate derived point `{}`, already derived[{j}]", r.name),
            );
        }
        if !valid_name(&device) {
            report.at(
                &path.key("device"),
                format!("invalid device `{device}`, expected lowercase letters, digits and `_`"),
            );
        }
        let declared = Unit::parse(&r.unit);
        if declared.is_none() {
            report.at(
                &path.key("unit"),
                format!("unknown unit `{}`: expected a product or quotient of A, V, W, Wh, h, s, g, t, m, kgce, degC, % with prefixes (kW, kWh/t, mg/m3, t/h)", r.unit),
            );
        }
        let trigger = match r.trigger.as_deref() {
            None | Some("batch") => Trigger::Batch,
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) if d >= Duration::from_secs(1) => Trigger::Period(d),
                _ => {
                    report.at(&path.key("trigger"), format!("invalid trigger `{text}`, expected \"batch\" or a period of at least 1 s (\"10s\", \"1m\")"));
                    Trigger::Batch
                }
            },
        };
        let Some((rewritten, resolved, units, input_units)) =
            expression(r, &out, sources, &catalogue, declared, report, &path)
        else {
            continue;
        };
        out.push(DerivedPoint {
            name: Arc::from(r.name.as_str()),
            expr: r.expr.clone(),
            unit: Arc::from(r.unit.as_str()),
            trigger,
            labels: r
                .labels
                .iter()
                .map(|(k, v)| (Arc::from(k.as_str()), Arc::from(v.as_str())))
                .collect(),
            stream: r.stream,
            device,
            rewritten,
            resolved,
            units,
            input_units,
        });
    }
    out
}

type Resolved = (Rewritten, Vec<Devices>, Vec<Inferred>, Vec<Arc<str>>);

/// Rewrite, resolve and compile the expression of `r`; problems go to `path.expr`.
fn expression(
    r: &RawDerived,
    earlier: &[DerivedPoint],
    sources: &[SourceConfig],
    catalogue: &[CatalogMetric],
    declared: Option<Unit>,
    report: &mut Report<'_>,
    path: &KeyPath,
) -> Option<Resolved> {
    let at = path.key("expr");
    let rewritten = match inputs::rewrite(&r.expr) {
        Ok(rw) => rw,
        Err(m) => {
            report.at(&at, m.to_string());
            return None;
        }
    };
    let mut resolved = Vec::new();
    let mut units = Vec::new();
    let mut input_units = Vec::new();
    let mut failed = false;
    for input in &rewritten.inputs {
        match resolve(input, earlier, sources, catalogue) {
            Ok((matches, unit, text)) => {
                resolved.push(matches);
                units.push(unit);
                input_units.push(text);
            }
            Err(m) => {
                report.at(&at, m.to_string());
                failed = true;
            }
        }
    }
    if failed {
        return None;
    }
    let compiled = match expr::compile(&rewritten, &units) {
        Ok(c) => c,
        Err(m) => {
            // CEL saw the rewritten text: say which input each variable is.
            let legend: Vec<String> = rewritten
                .inputs
                .iter()
                .enumerate()
                .map(|(i, input)| format!("_in.v{i} = {}", input.written()))
                .collect();
            let m = if legend.is_empty() {
                m.to_string()
            } else {
                format!("{m}\n(as compiled, with {})", legend.join(", "))
            };
            report.at(&at, m);
            return None;
        }
    };
    if let Some(declared) = declared
        && let Err(m) = compiled.unit.fits(&declared, &r.unit)
    {
        report.at(&path.key("unit"), format!("unit mismatch: {m}"));
        return None;
    }
    Some((rewritten, resolved, units, input_units))
}

/// The `(source, device)` pairs `input` reads, its unit, and the unit text its points declare.
fn resolve(
    input: &Input,
    earlier: &[DerivedPoint],
    sources: &[SourceConfig],
    catalogue: &[CatalogMetric],
) -> Result<(Devices, Inferred, Arc<str>), ResolveError> {
    let p = &input.pattern;
    let written = input.written();
    let (matches, declared): (Devices, Vec<Arc<str>>) = match p.source.as_deref() {
        Some(s) if s.starts_with("calc:") => {
            let name = &s["calc:".len()..];
            if !catalogue.iter().any(|m| m.calc == name) {
                return Err(ResolveError::NoCalculator {
                    written,
                    calc: name.to_owned(),
                });
            }
            // The catalogue lists what the configured calculators emit, each with its unit:
            // a reference to anything else would never get a value.
            let found: (Devices, Vec<Arc<str>>) = catalogue
                .iter()
                .filter(|m| m.calc == name && m.name == p.point && glob_match(&p.device, &m.label))
                .map(|m| {
                    (
                        (Arc::from(s), Arc::from(m.label.as_str())),
                        Arc::from(m.unit),
                    )
                })
                .unzip();
            if found.0.is_empty() {
                return Err(unknown_metric(input, name, catalogue));
            }
            found
        }
        Some(s) if s == SOURCE => earlier
            .iter()
            .filter(|d| glob_match(&p.device, &d.device) && *d.name == *p.point)
            .map(|d| ((Arc::from(s), d.device.clone()), d.unit.clone()))
            .unzip(),
        _ => sources
            .iter()
            .filter(|s| p.source.as_deref().is_none_or(|name| *s.name == *name))
            .flat_map(|s| s.devices.iter().map(move |d| (s, d)))
            .filter(|(_, d)| glob_match(&p.device, &d.name))
            .filter_map(|(s, d)| {
                let point = d.points.iter().find(|pt| *pt.name == *p.point)?;
                Some(((s.name.clone(), d.name.clone()), point.unit.clone()))
            })
            .unzip(),
    };
    if matches.is_empty() {
        return Err(unknown(input, sources));
    }
    if !matches!(input.kind, Kind::Aggregate(_)) && matches.len() > 1 {
        return Err(ResolveError::Ambiguous {
            written,
            count: matches.len(),
            devices: list(&matches),
        });
    }
    let unit = unit_of(&declared, &written)?;
    let text = declared
        .iter()
        .find(|t| !t.trim().is_empty())
        .cloned()
        .unwrap_or_else(|| Arc::from(""));
    Ok((
        matches,
        match input.kind {
            Kind::Aggregate(inputs::Agg::Count) => Inferred::of(Unit::ONE),
            Kind::Rate(_) => {
                Inferred::product(unit, Inferred::of(Unit::parse("h").expect("h")), true)
            }
            _ => unit,
        },
        text,
    ))
}

/// The one unit of the matched points; `Unknown` when none declares one we know.
fn unit_of(declared: &[Arc<str>], written: &str) -> Result<Inferred, ResolveError> {
    let mut unit: Option<(Unit, &str)> = None;
    for text in declared.iter().filter(|t| !t.trim().is_empty()) {
        let Some(u) = Unit::parse(text) else {
            return Ok(Inferred::Unknown);
        };
        match unit {
            Some((first, first_text)) if !first.same(&u) => {
                return Err(ResolveError::MixedUnits {
                    written: written.to_owned(),
                    first: first_text.to_owned(),
                    second: text.to_string(),
                });
            }
            _ => unit = Some((u, text)),
        }
    }
    Ok(unit.map_or(Inferred::Unknown, |(u, _)| Inferred::of(u)))
}

/// Why nothing matched, with what exists.
fn unknown(input: &Input, sources: &[SourceConfig]) -> ResolveError {
    let p = &input.pattern;
    let devices: Vec<String> = sources
        .iter()
        .filter(|s| p.source.as_deref().is_none_or(|name| *s.name == *name))
        .flat_map(|s| s.devices.iter().map(move |d| (s, d)))
        .filter(|(_, d)| glob_match(&p.device, &d.name))
        .map(|(s, d)| format!("{}/{}", s.name, d.name))
        .collect();
    if devices.is_empty() {
        ResolveError::NoDevice {
            written: input.written(),
            device: p.device.clone(),
        }
    } else {
        ResolveError::NoPoint {
            written: input.written(),
            point: p.point.clone(),
            devices: shorten(&devices),
        }
    }
}

/// Why a `calc:` reference names no metric of the catalogue, with the nearest names of its
/// calculator.
fn unknown_metric(input: &Input, calc: &str, catalogue: &[CatalogMetric]) -> ResolveError {
    let written = input.pattern.to_string();
    let mut scored: Vec<(usize, String)> = catalogue
        .iter()
        .filter(|m| m.calc == calc)
        .map(|m| {
            let r = m.reference();
            (edit_distance(&written, &r), r)
        })
        .collect();
    scored.sort();
    scored.dedup();
    let nearest: Vec<String> = scored.into_iter().take(3).map(|(_, r)| r).collect();
    ResolveError::UnknownMetric {
        written: input.written(),
        calc: calc.to_owned(),
        point: input.pattern.point.clone(),
        device: input.pattern.device.clone(),
        nearest: nearest.join(", "),
    }
}

/// Why an input of an expression reads nothing, or reads what cannot be one input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// A `calc:` reference to a calculator that is not configured.
    #[error(
        "unknown input `{written}`: no calculator `{calc}` in [calc] (metrics of potline, anode_effect and emissions need a potline, of copper a smelter)"
    )]
    NoCalculator {
        /// The input as written.
        written: String,
        /// The calculator named.
        calc: String,
    },
    /// A `calc:` reference to a metric the calculator does not emit as configured.
    #[error(
        "unknown input `{written}`: calculator `{calc}` emits no metric `{point}` for `{device}` as configured; nearest: {nearest} (a metric that needs an optional input, such as `copper_output_point`, exists only when the input is configured; `smeltwatch check` lists them all)"
    )]
    UnknownMetric {
        /// The input as written.
        written: String,
        /// The calculator named.
        calc: String,
        /// The metric named.
        point: String,
        /// The label (or glob) named.
        device: String,
        /// The nearest references of that calculator.
        nearest: String,
    },
    /// No configured device matches.
    #[error("unknown input `{written}`: no device matches `{device}`")]
    NoDevice {
        /// The input as written.
        written: String,
        /// The device (or glob) named.
        device: String,
    },
    /// Devices match, none has the point.
    #[error("unknown input `{written}`: no point `{point}` on {devices}")]
    NoPoint {
        /// The input as written.
        written: String,
        /// The point named.
        point: String,
        /// The devices that match.
        devices: String,
    },
    /// A single-value input that matches several devices.
    #[error(
        "input `{written}` matches {count} devices ({devices}): name its source, or aggregate it"
    )]
    Ambiguous {
        /// The input as written.
        written: String,
        /// How many match.
        count: usize,
        /// Which.
        devices: String,
    },
    /// An aggregate over points in different units.
    #[error(
        "input `{written}` matches points in `{first}` and in `{second}`: aggregate points of one unit"
    )]
    MixedUnits {
        /// The input as written.
        written: String,
        /// One unit.
        first: String,
        /// Another.
        second: String,
    },
}

/// Levenshtein distance in characters: how many insertions, deletions and substitutions turn
/// `a` into `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = Vec::with_capacity(b.len() + 1);
        row.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            row.push(substitute.min(prev[j + 1] + 1).min(row[j] + 1));
        }
        prev = row;
    }
    prev[b.len()]
}

fn list(matches: &[(Arc<str>, Arc<str>)]) -> String {
    let names: Vec<String> = matches.iter().map(|(s, d)| format!("{s}/{d}")).collect();
    shorten(&names)
}

/// Up to eight names, then how many more.
fn shorten(names: &[String]) -> String {
    if names.len() <= 8 {
        names.join(", ")
    } else {
        format!("{}, … ({} in all)", names[..6].join(", "), names.len())
    }
}

/// What `smeltwatch check` prints of the calculators' metrics that derived points may read
/// (`calc:<calculator>/<label>.<metric>`): one line per calculator and label, each metric with
/// its unit. Empty without `[calc]` metrics.
pub fn calc_inputs_report(calc: &CalcConfig) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let metrics = catalog::metrics(calc);
    if metrics.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "calculator metrics: {} (derived inputs `calc:<calculator>/<label>.<metric>`)",
        metrics.len()
    );
    let mut group: Option<(&str, &str)> = None;
    for m in &metrics {
        if group != Some((m.calc, m.label.as_str())) {
            if group.is_some() {
                out.push('\n');
            }
            let _ = write!(out, "  calc:{}/{}:", m.calc, m.label);
            group = Some((m.calc, m.label.as_str()));
        } else {
            out.push(',');
        }
        let _ = write!(out, " {}", m.name);
        if !m.unit.is_empty() {
            let _ = write!(out, " [{}]", m.unit);
        }
    }
    out.push('\n');
    out
}

/// What `smeltwatch check` prints of the derived points: each with its trigger, stream and unit,
/// and each input with the devices it resolved to.
pub fn check_report(points: &[DerivedPoint]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if points.is_empty() {
        return out;
    }
    let _ = writeln!(out, "derived points: {}", points.len());
    for p in points {
        let trigger = match p.trigger {
            Trigger::Batch => "on every input batch".to_string(),
            Trigger::Period(d) => format!("every {}", humantime::format_duration(d)),
        };
        let stream = match p.stream {
            DerivedStream::Live => "live",
            DerivedStream::Metrics => "metrics",
        };
        let _ = writeln!(
            out,
            "  derived/{}.{} [{}] = {}  ({stream}, {trigger})",
            p.device, p.name, p.unit, p.expr
        );
        for ((input, matches), unit) in p
            .rewritten
            .inputs
            .iter()
            .zip(&p.resolved)
            .zip(&p.input_units)
        {
            let plural = if matches.len() == 1 { "" } else { "s" };
            let is_calc = input
                .pattern
                .source
                .as_deref()
                .is_some_and(|s| s.starts_with("calc:"));
            let what = if is_calc {
                // A calculator's metric is known by the catalogue, with its unit.
                let unit = if unit.is_empty() {
                    "without unit".to_string()
                } else {
                    format!("in {unit}")
                };
                format!("metric{plural} {unit}")
            } else {
                format!("device{plural}")
            };
            let _ = writeln!(
                out,
                "    {} <- {} {what}: {}",
                input.written(),
                matches.len(),
                list(matches)
            );
        }
    }
    out
}
