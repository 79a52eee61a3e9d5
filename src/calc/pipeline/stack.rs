//! The stacks inside the calculator stage: a CEMS poll in; hourly, daily and monthly windows of
//! concentration, converted concentration and mass flow out, each hour checked against its
//! limit.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexMap;

use super::{Pipeline, lookup, num};
use crate::calc::coefficients::{Coefficients, LimitTable};
use crate::calc::emissions::{mass_flow_kg_h, o2_corrected, reference_exhaust_corrected};
use crate::calc::limits::{check_hour, limit_of};
use crate::calc::units::UnitCheck;
use crate::calc::window::{Sample, Substitution, Window, WindowRules};
use crate::calc::{CalcError, StackRole};
use crate::model::{Aggregate, Period, Quality, Reading, ReadingBatch, Record};

/// How a stack's measured concentration is converted (折算) for the limit check.
#[derive(Debug, Clone, Copy)]
pub(super) enum Conversion {
    /// To a reference O2, %.
    O2 { reference_pct: f64 },
    /// To a reference exhaust volume per tonne of product (基准排气量), m³/t.
    ExhaustVolume { reference_m3_per_t: f64 },
}

/// A stack of `[[calc.stacks]]` and its open windows.
#[derive(Debug)]
pub(super) struct Stack {
    pub(super) role: StackRole,
    pub(super) name: Arc<str>,
    /// Validity and substitution rules of its windows.
    pub(super) rules: WindowRules,
    /// The conversion its limits apply to, if its standard has one.
    pub(super) conversion: Option<Conversion>,
    pub(super) limits: HashMap<String, f64>,
    pub(super) windows: IndexMap<Arc<str>, Window>,
    /// Latest good SO2 mass flow, kg/h (for a smelter's sulphur capture).
    pub(super) latest_so2_kg_h: Option<f64>,
    /// Converts its inputs' units, and reports each point whose unit cannot be converted.
    pub(super) units: UnitCheck,
}

impl Stack {
    /// The stack of `stacks[i]`: its limits from the coefficient table and its conversion,
    /// checked.
    pub(super) fn new(
        i: usize,
        role: &StackRole,
        coef: &Coefficients,
        offset_ms: i64,
    ) -> Result<Self, CalcError> {
        let v = &coef.version;
        let mut limits = HashMap::new();
        if let Some(std_key) = &role.limits {
            let table: &std::collections::BTreeMap<String, LimitTable> =
                lookup(&coef.limits, &format!("stacks[{i}].limits"), std_key, v)?;
            for p in role.pollutants.keys() {
                if let Some(l) = table.get(p) {
                    limits.insert(p.clone(), limit_of(l, role.limit_class));
                }
            }
        }
        let key = |k: &str| format!("stacks[{i}].{k}");
        let conversion = match (role.o2_reference_pct, role.reference_exhaust_m3_per_t) {
            (Some(_), Some(_)) => {
                return Err(CalcError::Invalid {
                    key: key("reference_exhaust_m3_per_t"),
                    message: "a stack converts to a reference O2 or to a reference exhaust \
                              volume, not both (o2_reference_pct is set too)"
                        .into(),
                });
            }
            (Some(reference_pct), None) => Some(Conversion::O2 { reference_pct }),
            (None, Some(q)) => {
                if !(q.is_finite() && q > 0.0) {
                    return Err(CalcError::Invalid {
                        key: key("reference_exhaust_m3_per_t"),
                        message: format!("{q} is not a number above 0"),
                    });
                }
                if role.production_point.is_none() && role.production_t_per_h.is_none() {
                    return Err(CalcError::Invalid {
                        key: key("reference_exhaust_m3_per_t"),
                        message: "needs production_point or production_t_per_h (the \
                                  production rate the exhaust volume is divided by)"
                            .into(),
                    });
                }
                Some(Conversion::ExhaustVolume {
                    reference_m3_per_t: q,
                })
            }
            (None, None) => None,
        };
        let rules = WindowRules::new(&coef.validity, offset_ms)
            .with_substitution(Substitution::new(&coef.substitution, role.substitution));
        Ok(Stack {
            name: Arc::from(role.name.as_str()),
            role: role.clone(),
            rules,
            conversion,
            limits,
            windows: IndexMap::new(),
            latest_so2_kg_h: None,
            units: UnitCheck::default(),
        })
    }
}

impl Pipeline {
    /// One CEMS poll. Each pollutant feeds three windows: `<p>_mg_m3`, the measured (dry,
    /// standard) concentration; `<p>_zs_mg_m3`, the converted (折算) concentration, only where
    /// the stack's standard defines a conversion; and `<p>_kg_h`, the mass flow from the
    /// measured concentration and the flow (HJ 75: mass is never computed from the converted
    /// concentration, which exists only to be compared with the limit).
    pub(super) fn stack(&mut self, i: usize, batch: &ReadingBatch, out: &mut Vec<Record>) {
        let s = &mut self.stacks[i];
        let get = |p: &str| batch.readings.iter().find(|r| *r.point == *p);
        let status = status_of(&s.role, batch);
        let units = unit_factors(&s.role, &mut s.units, batch, out);
        let flow = get(&s.role.flow_point)
            .filter(|r| units.quality(r).is_good() && status.is_none())
            .map(|r| units.value(r))
            .filter(|v| v.is_finite());
        let o2 = s
            .role
            .o2_point
            .as_deref()
            .and_then(get)
            .filter(|r| units.quality(r).is_good())
            .map(|r| units.value(r))
            .filter(|v| v.is_finite());
        let production_t_h = match &s.role.production_point {
            Some(p) => get(p).filter(|r| r.quality.is_good()).and_then(num),
            None => s.role.production_t_per_h,
        };
        let poll = Poll {
            status,
            flow,
            o2,
            production_t_h,
            conversion: s.conversion,
        };
        let mut feed = Feed {
            windows: &mut s.windows,
            name: &s.name,
            rules: s.rules,
            poll_interval_ms: batch.poll_interval_ms,
            aggs: Vec::new(),
        };
        if let Some(fr) = get(&s.role.flow_point) {
            let q = status.unwrap_or(units.quality(fr));
            let v = units.value(fr);
            feed.push(
                "flow_m3h".into(),
                "m3/h",
                Some("m3"),
                Sample {
                    ts: fr.ts,
                    value: v,
                    quality: q,
                    rate_per_h: Some(v),
                },
            );
        }
        let mut so2_update = None;
        for (pollutant, point) in &s.role.pollutants {
            let Some(r) = get(point) else { continue };
            if let Some(u) = feed.pollutant(&poll, pollutant, r, &units) {
                so2_update = Some(u);
            }
        }
        let aggs = feed.aggs;
        if let Some(u) = so2_update {
            self.stacks[i].latest_so2_kg_h = u;
        }
        self.emit_aggregates(aggs, out);
    }

    /// Push the closed windows, each valid hour of the concentration the limits apply to
    /// preceded by its exceedance event: the converted `<p>_zs_mg_m3` where the stack has a
    /// conversion, the measured `<p>_mg_m3` otherwise.
    pub(super) fn emit_aggregates(&self, aggs: Vec<Aggregate>, out: &mut Vec<Record>) {
        for a in aggs {
            if a.period == Period::Hour
                && let Some(stack) = self.stacks.iter().find(|s| s.name == a.subject)
                && let Some(p) = a.quantity.strip_suffix(if stack.conversion.is_some() {
                    "_zs_mg_m3"
                } else {
                    "_mg_m3"
                })
                && let Some(limit) = stack.limits.get(p)
                && let Some(e) = check_hour(&a, *limit)
            {
                out.push(Record::Event(e));
            }
            out.push(Record::Aggregate(a));
        }
    }
}

/// The status a stack's flags give its samples this poll: calibration, maintenance or fault.
fn status_of(role: &StackRole, batch: &ReadingBatch) -> Option<Quality> {
    let find = |p: &Option<String>| {
        p.as_deref()
            .and_then(|p| batch.readings.iter().find(|r| *r.point == *p))
            .filter(|r| r.quality.is_good())
            .and_then(num)
            .is_some_and(|v| v != 0.0)
    };
    if find(&role.calibration_point) {
        Some(Quality::Calibration)
    } else if find(&role.maintenance_point) {
        Some(Quality::Maintenance)
    } else if find(&role.fault_point) {
        Some(Quality::DeviceException)
    } else {
        None
    }
}

/// Each input's factor to the unit its formula expects, by point; `None` for a reading whose
/// unit cannot be converted.
struct Units<'b>(HashMap<&'b str, Option<f64>>);

impl Units<'_> {
    /// The value of `r` in its expected unit (NaN when it has none).
    fn value(&self, r: &Reading) -> f64 {
        let f = self.0.get(&*r.point).copied().flatten();
        f.and_then(|f| num(r).map(|v| v * f)).unwrap_or(f64::NAN)
    }

    /// The quality of `r`, out of range when its unit cannot be converted.
    fn quality(&self, r: &Reading) -> Quality {
        match self.0.get(&*r.point) {
            Some(None) => Quality::OutOfRange,
            _ => r.quality,
        }
    }
}

/// Each input in the unit its formula expects (a flow in m³/s is converted to m³/h); a reading
/// whose unit cannot be converted is out of range, reported once per point.
fn unit_factors<'b>(
    role: &StackRole,
    check: &mut UnitCheck,
    batch: &'b ReadingBatch,
    out: &mut Vec<Record>,
) -> Units<'b> {
    let mut factors = HashMap::new();
    let inputs = std::iter::once((role.flow_point.as_str(), "m3/h"))
        .chain(role.o2_point.as_deref().map(|p| (p, "%")))
        .chain(role.pollutants.values().map(|p| (p.as_str(), "mg/m3")));
    for (point, expected) in inputs {
        let Some(r) = batch.readings.iter().find(|r| *r.point == *point) else {
            continue;
        };
        factors.insert(&*r.point, check.factor(batch, r, expected, out));
    }
    Units(factors)
}

/// What a poll's pollutant samples are flagged, converted and weighed with.
struct Poll {
    status: Option<Quality>,
    /// Flow, m³/h, when good and the stack in normal operation.
    flow: Option<f64>,
    /// O2, %.
    o2: Option<f64>,
    /// Production rate, t/h.
    production_t_h: Option<f64>,
    conversion: Option<Conversion>,
}

/// A poll's samples on their way into the stack's windows, and the windows they close.
struct Feed<'a> {
    windows: &'a mut IndexMap<Arc<str>, Window>,
    name: &'a Arc<str>,
    rules: WindowRules,
    poll_interval_ms: u64,
    aggs: Vec<Aggregate>,
}

impl Feed<'_> {
    /// Push `sample` into the window of `quantity`, opened on its first sample.
    fn push(&mut self, quantity: String, unit: &str, total_unit: Option<&str>, sample: Sample) {
        let name = self.name.clone();
        let (rules, interval) = (self.rules, self.poll_interval_ms);
        let w = self
            .windows
            .entry(Arc::from(quantity.as_str()))
            .or_insert_with(|| {
                Window::new(
                    name,
                    Arc::from(quantity.as_str()),
                    Arc::from(unit),
                    total_unit.map(Arc::from),
                    rules,
                    interval,
                )
            });
        w.push(sample, &mut self.aggs);
    }

    /// Feed one pollutant's reading `r` into its windows. Returns, for SO2, the mass flow a
    /// smelter's sulphur capture reads (`Some(None)` when it is not good).
    fn pollutant(
        &mut self,
        poll: &Poll,
        pollutant: &str,
        r: &Reading,
        units: &Units<'_>,
    ) -> Option<Option<f64>> {
        let q = poll.status.unwrap_or(units.quality(r));
        let c = units.value(r);
        self.push(
            format!("{pollutant}_mg_m3"),
            "mg/m3",
            None,
            Sample {
                ts: r.ts,
                value: c,
                quality: q,
                rate_per_h: None,
            },
        );
        if let Some(conv) = poll.conversion {
            let z = match conv {
                Conversion::O2 { reference_pct } => {
                    poll.o2.and_then(|o2| o2_corrected(c, reference_pct, o2))
                }
                Conversion::ExhaustVolume { reference_m3_per_t } => {
                    match (poll.flow, poll.production_t_h) {
                        (Some(f), Some(p)) => {
                            reference_exhaust_corrected(c, f, p, reference_m3_per_t)
                        }
                        _ => None,
                    }
                }
            };
            // Without the O2 (or flow and production) the converted value is unknown: the
            // sample counts as out of range in the converted window only.
            let (zv, zq) = match z {
                Some(z) => (z, q),
                None => (f64::NAN, if q.is_good() { Quality::OutOfRange } else { q }),
            };
            self.push(
                format!("{pollutant}_zs_mg_m3"),
                "mg/m3",
                None,
                Sample {
                    ts: r.ts,
                    value: zv,
                    quality: zq,
                    rate_per_h: None,
                },
            );
        }
        let (mq, mv) = match poll.flow {
            Some(f) => (q, mass_flow_kg_h(c, f)),
            None => (if q.is_good() { Quality::CommFail } else { q }, f64::NAN),
        };
        self.push(
            format!("{pollutant}_kg_h"),
            "kg/h",
            Some("kg"),
            Sample {
                ts: r.ts,
                value: mv,
                quality: mq,
                rate_per_h: Some(mv),
            },
        );
        (pollutant == "so2").then_some((mq.is_good() && mv.is_finite()).then_some(mv))
    }
}
