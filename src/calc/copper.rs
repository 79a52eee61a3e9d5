//! Copper smelting (oxygen-enriched bath or flash smelting): oxygen per tonne of concentrate,
//! sulphur capture by the acid plant, comprehensive energy per tonne of copper (GB 25323-2023).
//!
//! Pure formulas; the SO2 density and the GB 25323-2023 grade tables come from the coefficient
//! table (`[copper]`, `[grades.gb25323_2023_cu_*]`).

/// Oxygen per tonne of concentrate, Nm³/t; `None` without feed.
pub fn oxygen_per_t_concentrate(oxygen_nm3: f64, concentrate_t: f64) -> Option<f64> {
    (concentrate_t > 0.0).then(|| oxygen_nm3 / concentrate_t)
}

/// SO2 mass flow, kg/h, of a gas with `so2_pct` % SO2 by volume at `gas_flow_nm3_h` (standard
/// state), with the SO2 density in kg/Nm³.
pub fn so2_kg_h_from_volume_pct(so2_pct: f64, gas_flow_nm3_h: f64, density_kg_nm3: f64) -> f64 {
    so2_pct / 100.0 * gas_flow_nm3_h * density_kg_nm3
}

/// Sulphur capture, %: the share of the SO2 entering the acid plant that does not leave by the
/// stack, 100 × (1 − outlet / inlet); `None` without inlet SO2.
pub fn sulphur_capture_pct(inlet_so2: f64, stack_so2: f64) -> Option<f64> {
    (inlet_so2 > 0.0).then(|| 100.0 * (1.0 - stack_so2 / inlet_so2))
}

/// Comprehensive energy per tonne of copper, kgce/t; `None` without output.
pub fn energy_kgce_per_t(energy_kgce: f64, copper_t: f64) -> Option<f64> {
    (copper_t > 0.0).then(|| energy_kgce / copper_t)
}
