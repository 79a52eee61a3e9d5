//! Potline energy and production: Faraday production, current efficiency, DC and AC specific
//! energy, pseudo-resistance and capacity utilisation.
//!
//! Pure functions of their arguments. The metal is a parameter (valence, molar mass) so that the
//! same formulas serve aluminium and magnesium cells. Only the Faraday constant is a constant here:
//! it is physics, not a regulatory coefficient.

use super::coefficients::MetalTable;

/// Faraday constant, C/mol (CODATA 2018, exact).
pub const FARADAY_C_PER_MOL: f64 = 96_485.332_12;

/// A metal produced by electrolysis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metal {
    /// Electrons per atom (Al 3, Mg 2).
    pub valence: u8,
    /// Molar mass, g/mol.
    pub molar_mass_g_mol: f64,
}

impl From<&MetalTable> for Metal {
    fn from(t: &MetalTable) -> Self {
        Metal {
            valence: t.valence,
            molar_mass_g_mol: t.molar_mass_g_mol,
        }
    }
}

impl Metal {
    /// Electrochemical equivalent, kg per kA·h (Al: 0.335573).
    pub fn kg_per_ka_h(self) -> f64 {
        // g/(A·s) × 3600 s/h = g/(A·h) = kg/(kA·h)
        self.molar_mass_g_mol / (f64::from(self.valence) * FARADAY_C_PER_MOL) * 3600.0
    }

    /// Metal produced by `cells` cells at `current_ka` for `hours` with current efficiency `ce`
    /// (0–1), kg.
    pub fn produced_kg(self, current_ka: f64, hours: f64, ce: f64, cells: f64) -> f64 {
        self.kg_per_ka_h() * current_ka * hours * ce * cells
    }

    /// Metal produced from an integrated charge (`ka_h` = Σ I·t per cell, summed over cells), kg.
    pub fn produced_from_charge_kg(self, ka_h: f64, ce: f64) -> f64 {
        self.kg_per_ka_h() * ka_h * ce
    }

    /// Current efficiency (0–1) from metal tapped (corrected for the metal-pad inventory change)
    /// over the charge `ka_h` (Σ I·t·cells).
    pub fn current_efficiency(self, tapped_kg: f64, ka_h: f64) -> Option<f64> {
        let theoretical = self.kg_per_ka_h() * ka_h;
        (theoretical > 0.0).then(|| tapped_kg / theoretical)
    }

    /// Specific DC energy, kWh per tonne, from the average cell voltage and current efficiency:
    /// W = V / (k × CE) (= 2980 × V / CE for aluminium).
    pub fn dc_kwh_per_t(self, avg_voltage_v: f64, ce: f64) -> f64 {
        avg_voltage_v / (self.kg_per_ka_h() * ce) * 1000.0
    }
}

/// Energy per tonne from metered energy and production; `None` without production.
pub fn specific_energy_kwh_per_t(energy_kwh: f64, production_t: f64) -> Option<f64> {
    (production_t > 0.0).then(|| energy_kwh / production_t)
}

/// AC-side estimate from a DC figure and the rectifier efficiency (0–1). Regulatory AC figures
/// come from the AC meters, not from this.
pub fn ac_from_dc_kwh_per_t(dc_kwh_per_t: f64, rectifier_efficiency: f64) -> f64 {
    dc_kwh_per_t / rectifier_efficiency
}

/// Pseudo-resistance R = (V − E0) / I, µΩ, with the line current in kA.
pub fn pseudo_resistance_uohm(cell_voltage_v: f64, e0_v: f64, line_current_ka: f64) -> Option<f64> {
    (line_current_ka > 0.0).then(|| (cell_voltage_v - e0_v) / (line_current_ka * 1000.0) * 1e6)
}

/// Capacity utilisation (0–1): output over the approved capacity pro rata for `period_days`.
pub fn capacity_utilisation(
    output_t: f64,
    approved_t_per_year: f64,
    period_days: f64,
) -> Option<f64> {
    let capacity = approved_t_per_year * period_days / 365.0;
    (capacity > 0.0).then(|| output_t / capacity)
}

/// Anode-effect share of the average voltage, V: AEF × (V_AE − V_work) × AED / 1440.
pub fn anode_effect_share_v(
    aef: f64,
    ae_voltage_v: f64,
    working_voltage_v: f64,
    aed_min: f64,
) -> f64 {
    aef * (ae_voltage_v - working_voltage_v) * aed_min / 1440.0
}
