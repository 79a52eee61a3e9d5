//! The limits and grade bounds drawn with the trends, from the calculators' configuration and
//! coefficient table: the same numbers the exceedance events and the grades use.
//!
//! - A stack's limit (`limits.<stacks[].limits>.<p>.<general|special>`) on its hourly windows of
//!   the concentration the limit applies to (`<p>_zs_mg_m3` where the stack converts, `<p>_mg_m3`
//!   otherwise), and on the live readings of its measured concentration point (the bar and the
//!   trend of the dashboard; without a conversion the two are the same quantity).
//! - A potline's grade bounds (`grades.<ac_grade>.levels`, `grades.<comprehensive_ac_grade>`) on
//!   its `ac_kwh_per_t_today` and `comprehensive_ac_kwh_per_t_today` figures.

use super::{RefTarget, Reference};
use crate::calc::coefficients::Coefficients;
use crate::calc::limits::limit_of;
use crate::calc::{CalcConfig, names};

/// Every reference line of `cfg` (keys that name no table entry are left out: the calculators
/// refuse such a configuration anyway).
pub fn from_calc(cfg: &CalcConfig, coef: &Coefficients) -> Vec<(RefTarget, Reference)> {
    let mut out = Vec::new();
    for stack in &cfg.stacks {
        let Some(table) = stack.limits.as_ref().and_then(|k| coef.limits.get(k)) else {
            continue;
        };
        let converts =
            stack.o2_reference_pct.is_some() || stack.reference_exhaust_m3_per_t.is_some();
        for (p, point) in &stack.pollutants {
            let Some(l) = table.get(p) else { continue };
            let limit = Reference {
                label: "limit".into(),
                value: limit_of(l, stack.limit_class),
            };
            let quantity = if converts {
                format!("{p}_zs_mg_m3")
            } else {
                format!("{p}_mg_m3")
            };
            out.push((
                RefTarget::Window {
                    subject: stack.name.clone(),
                    quantity,
                },
                limit.clone(),
            ));
            out.push((
                RefTarget::Reading {
                    device_glob: stack.device.clone(),
                    point: point.clone(),
                },
                limit,
            ));
        }
    }
    for line in &cfg.potlines {
        for (metric, grade_key) in [
            (names::AC_KWH_PER_T_TODAY, &line.ac_grade),
            (
                "comprehensive_ac_kwh_per_t_today",
                &line.comprehensive_ac_grade,
            ),
        ] {
            let Some(table) = coef.grades.get(grade_key) else {
                continue;
            };
            for (i, bound) in table.levels.iter().enumerate() {
                out.push((
                    RefTarget::Metric {
                        name: metric.into(),
                        label: ("line".into(), line.name.clone()),
                    },
                    Reference {
                        label: format!("level {}", i + 1),
                        value: *bound,
                    },
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_configuration_gives_stack_limits_and_grade_bounds() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
        let cfg = crate::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let calc = cfg.calc.expect("the demo has calculators");
        let coef = Coefficients::embedded(&calc.coefficients).unwrap();
        let refs = from_calc(&calc, &coef);
        let window_limits = refs
            .iter()
            .filter(|(t, _)| matches!(t, RefTarget::Window { .. }))
            .count();
        assert!(window_limits > 0, "{refs:?}");
        let grade = refs
            .iter()
            .find(|(t, r)| {
                matches!(t, RefTarget::Metric { name, .. } if name == "ac_kwh_per_t_today")
                    && r.label == "level 3"
            })
            .expect("a level-3 bound");
        assert!(grade.1.value > 10_000.0, "{grade:?}");
    }
}
