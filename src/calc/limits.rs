//! Grades against national energy limits (GB 21346-2022, GB 25323-2023) and stack limit checks
//! (GB 25465, GB 25467) on hourly averages.

use std::fmt;
use std::sync::Arc;

use super::coefficients::{GradeTable, LimitTable};
use crate::model::{Aggregate, Event, EventKind, EventPhase, Value};

/// The concentration limit of one pollutant of one `[[calc.stacks]]` entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StackLimit {
    /// Stack name.
    pub stack: String,
    /// Pollutant key (`so2`).
    pub pollutant: String,
    /// The measured concentration point it applies to (`so2_mg_m3`).
    pub point: String,
    /// Limit, mg/m³.
    pub limit_mg_m3: f64,
}

/// The concentration limit of every pollutant of every `[[calc.stacks]]` entry with a limit
/// table, from the configured coefficient table.
pub fn stack_limits(calc: &super::CalcConfig) -> anyhow::Result<Vec<StackLimit>> {
    use anyhow::Context as _;

    use super::coefficients::Coefficients;
    let coef = match &calc.coefficients_path {
        Some(path) => Coefficients::from_path(path)?,
        None => Coefficients::embedded(&calc.coefficients)?,
    };
    let mut out = Vec::new();
    for stack in &calc.stacks {
        let Some(key) = &stack.limits else { continue };
        let table = coef
            .limits
            .get(key)
            .with_context(|| format!("calc.stacks: no limit table {key:?} in the coefficients"))?;
        for (p, point) in &stack.pollutants {
            if let Some(l) = table.get(p) {
                out.push(StackLimit {
                    stack: stack.name.clone(),
                    pollutant: p.clone(),
                    point: point.clone(),
                    limit_mg_m3: limit_of(l, stack.limit_class),
                });
            }
        }
    }
    Ok(out)
}

/// Grade of an energy figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grade {
    /// 1级.
    Level1,
    /// 2级.
    Level2,
    /// 3级 (the mandatory limit for existing plants).
    Level3,
    /// Above level 3: fails the limit.
    Fail,
}

impl Grade {
    /// Numeric form for metrics: 1, 2, 3, or 4 for fail.
    pub fn as_number(self) -> f64 {
        match self {
            Grade::Level1 => 1.0,
            Grade::Level2 => 2.0,
            Grade::Level3 => 3.0,
            Grade::Fail => 4.0,
        }
    }
}

impl fmt::Display for Grade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Grade::Level1 => "level 1",
            Grade::Level2 => "level 2",
            Grade::Level3 => "level 3",
            Grade::Fail => "fails the limit",
        })
    }
}

/// Grade of `value` (lower is better): the best level whose bound it does not exceed.
pub fn grade(table: &GradeTable, value: f64) -> Grade {
    let [l1, l2, l3] = table.levels;
    if value <= l1 {
        Grade::Level1
    } else if value <= l2 {
        Grade::Level2
    } else if value <= l3 {
        Grade::Level3
    } else {
        Grade::Fail
    }
}

/// Which limit column applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitClass {
    /// General limits.
    #[default]
    General,
    /// Special limits of key regions.
    Special,
}

/// The limit of a class.
pub fn limit_of(table: &LimitTable, class: LimitClass) -> f64 {
    match class {
        LimitClass::General => table.general,
        LimitClass::Special => table.special,
    }
}

/// An exceedance event when a valid hourly average is above `limit_mg_m3`.
pub fn check_hour(agg: &Aggregate, limit_mg_m3: f64) -> Option<Event> {
    let avg = agg.avg?;
    if !agg.valid || avg <= limit_mg_m3 {
        return None;
    }
    Some(Event {
        kind: EventKind::Exceedance,
        subject: Arc::from(format!("{}/{}", agg.subject, agg.quantity)),
        phase: EventPhase::Instant,
        ts: agg.start,
        attributes: vec![
            (Arc::from("hour_avg_mg_m3"), Value::Float(avg)),
            (Arc::from("limit_mg_m3"), Value::Float(limit_mg_m3)),
            (Arc::from("end"), Value::Int(agg.end.0)),
        ],
        message: format!(
            "{} {} hourly average {avg:.2} mg/m3 exceeds the limit {limit_mg_m3} mg/m3",
            agg.subject, agg.quantity
        ),
    })
}
