//! Tiered electricity surcharge of the electrolytic-aluminium policy (发改价格〔2021〕1239号, August
//! 2021): threshold by year, +step per started 20 kWh/t above it, renewable reduction.

use super::coefficients::TariffTable;

/// Threshold in force in `year`, kWh/t; `None` before the first entry.
pub fn threshold_kwh_per_t(rules: &TariffTable, year: i32) -> Option<f64> {
    rules
        .thresholds
        .iter()
        .filter(|t| t.from_year <= year)
        .max_by_key(|t| t.from_year)
        .map(|t| t.kwh_per_t)
}

/// Number of started steps above the threshold (0 at or below it).
pub fn steps(rules: &TariffTable, kwh_per_t: f64, threshold_kwh_per_t: f64) -> u32 {
    let excess = kwh_per_t - threshold_kwh_per_t;
    if excess <= 0.0 {
        return 0;
    }
    // A relative guard keeps an exact multiple (20.0/20) from becoming 2 through rounding noise,
    // while 20.0001 still starts a second step.
    let x = excess / rules.step_kwh_per_t;
    (x - 1e-9).ceil().max(1.0) as u32
}

/// Reduction factor (0–1) for the non-hydro renewable share: applies only when the share is
/// strictly above the minimum share and not below the provincial incentive weight.
pub fn renewable_reduction(rules: &TariffTable, share_pct: f64, provincial_weight_pct: f64) -> f64 {
    if share_pct > rules.renewable_min_share_pct && share_pct >= provincial_weight_pct {
        ((share_pct - rules.renewable_base_pct) * rules.reduction_pct_per_point / 100.0)
            .clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Surcharge, yuan/kWh, for a year's 铝液综合交流电耗 `kwh_per_t`.
pub fn surcharge_yuan_per_kwh(
    rules: &TariffTable,
    year: i32,
    kwh_per_t: f64,
    renewable_share_pct: f64,
    provincial_weight_pct: f64,
) -> f64 {
    let Some(threshold) = threshold_kwh_per_t(rules, year) else {
        return 0.0;
    };
    let base = f64::from(steps(rules, kwh_per_t, threshold)) * rules.step_yuan_per_kwh;
    base * (1.0 - renewable_reduction(rules, renewable_share_pct, provincial_weight_pct))
}

/// Total surcharge, yuan, applied to the electricity of Al-liquid production
/// (`kwh_per_t × output_t`).
pub fn surcharge_cost_yuan(surcharge_yuan_per_kwh: f64, kwh_per_t: f64, output_t: f64) -> f64 {
    surcharge_yuan_per_kwh * kwh_per_t * output_t
}
