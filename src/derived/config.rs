//! The `[[derived]]` section: its raw form, its validation with located errors, and what
//! `smeltwatch check` prints of it.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

use super::expr;
use super::inputs::{self, Input, Kind, Rewritten};
use super::units::{Inferred, Unit};
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
}

/// The calculators whose metrics can be inputs, and whether the `[calc]` section has them.
fn calc_known(calc: Option<&CalcConfig>, name: &str) -> bool {
    calc.is_some_and(|c| match name {
        "potline" | "anode_effect" | "emissions" => !c.potlines.is_empty(),
        "copper" => !c.smelters.is_empty(),
        _ => false,
    })
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
    for (i, r) in raw.iter().enumerate() {
        let path = KeyPath::default().key("derived").index(i);
        let device: Arc<str> = Arc::from(r.device.as_deref().unwrap_or(super::engine::SOURCE));
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
        let Some((rewritten, resolved, units)) =
            expression(r, &out, sources, calc, declared, report, &path)
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
        });
    }
    out
}

type Resolved = (Rewritten, Vec<Devices>, Vec<Inferred>);

/// Rewrite, resolve and compile the expression of `r`; problems go to `path.expr`.
fn expression(
    r: &RawDerived,
    earlier: &[DerivedPoint],
    sources: &[SourceConfig],
    calc: Option<&CalcConfig>,
    declared: Option<Unit>,
    report: &mut Report<'_>,
    path: &KeyPath,
) -> Option<Resolved> {
    let at = path.key("expr");
    let rewritten = match inputs::rewrite(&r.expr) {
        Ok(rw) => rw,
        Err(m) => {
            report.at(&at, m);
            return None;
        }
    };
    let mut resolved = Vec::new();
    let mut units = Vec::new();
    let mut failed = false;
    for input in &rewritten.inputs {
        match resolve(input, earlier, sources, calc) {
            Ok((matches, unit)) => {
                resolved.push(matches);
                units.push(unit);
            }
            Err(m) => {
                report.at(&at, m);
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
                m
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
    Some((rewritten, resolved, units))
}

/// The `(source, device)` pairs `input` reads and its unit.
fn resolve(
    input: &Input,
    earlier: &[DerivedPoint],
    sources: &[SourceConfig],
    calc: Option<&CalcConfig>,
) -> Result<(Devices, Inferred), String> {
    let p = &input.pattern;
    let written = input.written();
    let (matches, declared): (Devices, Vec<Arc<str>>) = match p.source.as_deref() {
        Some(s) if s.starts_with("calc:") => {
            let name = &s[5..];
            if !calc_known(calc, name) {
                return Err(format!(
                    "unknown input `{written}`: no calculator `{name}` in [calc] (metrics of potline, anode_effect and emissions need a potline, of copper a smelter)"
                ));
            }
            // A calculator's metric declares no unit in the configuration: it is not checked.
            (vec![(Arc::from(s), Arc::from(p.device.as_str()))], vec![])
        }
        Some(s) if s == super::engine::SOURCE => earlier
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
        return Err(format!(
            "input `{written}` matches {} devices ({}): name its source, or aggregate it",
            matches.len(),
            list(&matches)
        ));
    }
    let unit = unit_of(&declared, &written)?;
    Ok((
        matches,
        match input.kind {
            Kind::Aggregate(inputs::Agg::Count) => Inferred::of(Unit::ONE),
            Kind::Rate(_) => {
                Inferred::product(unit, Inferred::of(Unit::parse("h").expect("h")), true)
            }
            _ => unit,
        },
    ))
}

/// The one unit of the matched points; `Unknown` when none declares one we know.
fn unit_of(declared: &[Arc<str>], written: &str) -> Result<Inferred, String> {
    let mut unit: Option<(Unit, &str)> = None;
    for text in declared.iter().filter(|t| !t.trim().is_empty()) {
        let Some(u) = Unit::parse(text) else {
            return Ok(Inferred::Unknown);
        };
        match unit {
            Some((first, first_text)) if !first.same(&u) => {
                return Err(format!(
                    "input `{written}` matches points in `{first_text}` and in `{text}`: aggregate points of one unit"
                ));
            }
            _ => unit = Some((u, text)),
        }
    }
    Ok(unit.map_or(Inferred::Unknown, |(u, _)| Inferred::of(u)))
}

/// Why nothing matched, with what exists.
fn unknown(input: &Input, sources: &[SourceConfig]) -> String {
    let p = &input.pattern;
    let devices: Vec<String> = sources
        .iter()
        .filter(|s| p.source.as_deref().is_none_or(|name| *s.name == *name))
        .flat_map(|s| s.devices.iter().map(move |d| (s, d)))
        .filter(|(_, d)| glob_match(&p.device, &d.name))
        .map(|(s, d)| format!("{}/{}", s.name, d.name))
        .collect();
    if devices.is_empty() {
        format!(
            "unknown input `{}`: no device matches `{}`",
            input.written(),
            p.device
        )
    } else {
        format!(
            "unknown input `{}`: no point `{}` on {}",
            input.written(),
            p.point,
            shorten(&devices)
        )
    }
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
        for (input, matches) in p.rewritten.inputs.iter().zip(&p.resolved) {
            let _ = writeln!(
                out,
                "    {} <- {} device{}: {}",
                input.written(),
                matches.len(),
                if matches.len() == 1 { "" } else { "s" },
                list(matches)
            );
        }
    }
    out
}
