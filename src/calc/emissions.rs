//! Greenhouse gases (IPCC 2006 Vol. 3 Ch. 4; 40 CFR 98 Subpart F), stack mass flows (HJ 212-2017
//! App. D) and converted (折算) concentrations.
//!
//! Pure formulas; every coefficient is an argument taken from the coefficient tables.

use super::coefficients::{AnodeTable, GwpTable, PfcTable};

/// PFC emissions of a period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pfc {
    /// CF4, kg.
    pub cf4_kg: f64,
    /// C2F6, kg.
    pub c2f6_kg: f64,
}

impl Pfc {
    /// CO2-equivalent under a GWP set, t.
    pub fn co2e_t(&self, gwp: &GwpTable) -> f64 {
        (self.cf4_kg * gwp.cf4 + self.c2f6_kg * gwp.c2f6) / 1000.0
    }
}

/// Slope method: CF4 = S × AEM × MP (+ low-voltage AE factor × MP); C2F6 = F × CF4.
pub fn pfc_slope(coef: &PfcTable, aem: f64, production_t: f64) -> Pfc {
    let cf4_kg = coef.s_cf4 * aem * production_t + coef.ef_lv_cf4_kg_per_t * production_t;
    Pfc {
        cf4_kg,
        c2f6_kg: cf4_kg * coef.f_c2f6,
    }
}

/// Emission factor of prebaked anodes, t CO2 per t Al: NAC × (100 − S − Ash)/100 × 44/12.
pub fn anode_co2_factor(nac_t_per_t: f64, sulphur_pct: f64, ash_pct: f64) -> f64 {
    nac_t_per_t * (100.0 - sulphur_pct - ash_pct) / 100.0 * 44.0 / 12.0
}

/// Anode CO2 of a period, t, with the table's NAC, sulphur and ash.
pub fn anode_co2_t(anode: &AnodeTable, production_t: f64) -> f64 {
    anode_co2_factor(anode.nac_t_per_t, anode.sulphur_pct, anode.ash_pct) * production_t
}

/// CO2 of electricity, t: kWh × factor (t/MWh) / 1000.
pub fn electricity_co2_t(energy_kwh: f64, t_co2_per_mwh: f64) -> f64 {
    energy_kwh * t_co2_per_mwh / 1000.0
}

/// Standard coal equivalent, kgce.
pub fn kgce(energy_kwh: f64, kgce_per_kwh: f64) -> f64 {
    energy_kwh * kgce_per_kwh
}

/// Mass flow, kg/h, from a concentration (mg/m³, standard dry) and a flow (m³/h, standard dry).
pub fn mass_flow_kg_h(concentration_mg_m3: f64, flow_m3_h: f64) -> f64 {
    concentration_mg_m3 * flow_m3_h * 1e-6
}

/// Mass, kg, from a concentration (mg/m³) and a volume (m³).
pub fn mass_kg(concentration_mg_m3: f64, volume_m3: f64) -> f64 {
    concentration_mg_m3 * volume_m3 * 1e-6
}

/// O2-referenced (折算) concentration: C × (21 − O2_ref)/(21 − O2_meas); `None` at 21 % O2.
pub fn o2_corrected(concentration: f64, o2_ref_pct: f64, o2_measured_pct: f64) -> Option<f64> {
    let denom = 21.0 - o2_measured_pct;
    (denom > 0.0).then(|| concentration * (21.0 - o2_ref_pct) / denom)
}

/// Reference-exhaust-volume (基准排气量) concentration of GB 25465/25467: when the actual exhaust
/// volume per tonne of product, `flow / production`, exceeds the reference, ρ × Q_actual/Q_ref;
/// otherwise the measured ρ. `None` without a production above 0.
pub fn reference_exhaust_corrected(
    concentration_mg_m3: f64,
    flow_m3_h: f64,
    production_t_h: f64,
    reference_m3_per_t: f64,
) -> Option<f64> {
    if !(production_t_h > 0.0 && reference_m3_per_t > 0.0) {
        return None;
    }
    let actual_m3_per_t = flow_m3_h / production_t_h;
    Some(if actual_m3_per_t > reference_m3_per_t {
        concentration_mg_m3 * actual_m3_per_t / reference_m3_per_t
    } else {
        concentration_mg_m3
    })
}
