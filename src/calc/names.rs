//! Names of the calculators' output: the calculators (`calc` of a metric batch) and their
//! metrics. The calculators write these constants and the readers match on them (the potline
//! KPIs of `smeltwatch tail`, the control-room dashboard (`src/http/dashboard.html`, whose names a
//! test checks against these), the reference lines of the trends, and the catalogue of
//! [`crate::calc::catalog`] that derived points and uplinks read), so a rename is one edit here.

/// `calc` of the potline metrics (labelled `line`).
pub const POTLINE: &str = "potline";
/// `calc` of a potline's anode-effect figures of closed periods (labelled `line`).
pub const ANODE_EFFECT: &str = "anode_effect";
/// `calc` of a potline's emissions of closed periods (labelled `line`).
pub const EMISSIONS: &str = "emissions";
/// `calc` of the copper smelters' metrics (labelled `smelter`).
pub const COPPER: &str = "copper";

// Potline: the minute's figures.

/// Line current at the end of the minute (kA).
pub const LINE_CURRENT_KA: &str = "line_current_ka";
/// Cells in service at the end of the minute.
pub const CELLS_IN_SERVICE: &str = "cells_in_service";
/// Metal produced since local midnight (t).
pub const PRODUCTION_TODAY_T: &str = "production_today_t";
/// Specific DC energy since local midnight (kWh/t).
pub const DC_KWH_PER_T_TODAY: &str = "dc_kwh_per_t_today";
/// Specific AC energy since local midnight (kWh/t).
pub const AC_KWH_PER_T_TODAY: &str = "ac_kwh_per_t_today";
/// Comprehensive AC energy (rectifier plus auxiliaries) since local midnight (kWh/t).
pub const COMPREHENSIVE_AC_KWH_PER_T_TODAY: &str = "comprehensive_ac_kwh_per_t_today";
/// A cell's mean voltage over the minute (V, labels `line`, `cell`).
pub const CELL_VOLTAGE_AVG_V: &str = "cell_voltage_avg_v";
/// A cell's pseudo-resistance over the minute (µΩ, labels `line`, `cell`).
pub const PSEUDO_RESISTANCE_UOHM: &str = "pseudo_resistance_uohm";

// Potline: a closed period's figures (label `period`).

/// Metal produced (t).
pub const PRODUCTION_T: &str = "production_t";
/// DC energy from the average voltage and the line current (kWh).
pub const DC_ENERGY_KWH: &str = "dc_energy_kwh";
/// DC energy of the DC meter (kWh).
pub const DC_METER_ENERGY_KWH: &str = "dc_meter_energy_kwh";
/// AC energy of the rectifier's meter (kWh).
pub const AC_ENERGY_KWH: &str = "ac_energy_kwh";
/// Specific DC energy of a closed period (kWh/t, label `period`).
pub const DC_KWH_PER_T: &str = "dc_kwh_per_t";
/// Average line voltage per cell (V).
pub const AVERAGE_VOLTAGE_V: &str = "average_voltage_v";
/// Specific DC energy of the DC meter (kWh/t).
pub const DC_METER_KWH_PER_T: &str = "dc_meter_kwh_per_t";
/// DC meter energy over AC energy (%).
pub const RECTIFIER_EFFICIENCY_PCT: &str = "rectifier_efficiency_pct";
/// Specific AC energy of a closed period (kWh/t, label `period`).
pub const AC_KWH_PER_T: &str = "ac_kwh_per_t";
/// Grade of the specific AC energy (1, 2, 3; none for out of grade).
pub const AC_GRADE: &str = "ac_grade";
/// AC energy in standard coal (kgce).
pub const AC_ENERGY_KGCE: &str = "ac_energy_kgce";
/// Energy of the auxiliary meters (kWh).
pub const AUXILIARY_ENERGY_KWH: &str = "auxiliary_energy_kwh";
/// Comprehensive AC energy (rectifier plus auxiliaries, kWh/t).
pub const COMPREHENSIVE_AC_KWH_PER_T: &str = "comprehensive_ac_kwh_per_t";
/// Grade of the comprehensive AC energy.
pub const COMPREHENSIVE_AC_GRADE: &str = "comprehensive_ac_grade";
/// Faraday production with the configured efficiency, beside a measured one (t).
pub const PRODUCTION_FARADAY_T: &str = "production_faraday_t";
/// Capacity utilisation of a period (%, label `period`).
pub const CAPACITY_UTILISATION_PCT: &str = "capacity_utilisation_pct";
/// Metal tapped (t).
pub const TAPPED_METAL_T: &str = "tapped_metal_t";
/// Current efficiency from the metal tapped (%).
pub const CURRENT_EFFICIENCY_FROM_TAPPING_PCT: &str = "current_efficiency_from_tapping_pct";
/// Estimated tariff surcharge rate (yuan/kWh, label `basis`).
pub const TARIFF_SURCHARGE_YUAN_PER_KWH_ESTIMATE: &str = "tariff_surcharge_yuan_per_kwh_estimate";
/// Estimated tariff surcharge (yuan, label `basis`).
pub const TARIFF_SURCHARGE_YUAN_ESTIMATE: &str = "tariff_surcharge_yuan_estimate";
/// Energy meter resets.
pub const METER_RESETS: &str = "meter_resets";
/// Time of line current bridged over gaps (s).
pub const LINE_CURRENT_BRIDGED_S: &str = "line_current_bridged_s";
/// Time of line current missing and not bridged (s).
pub const LINE_CURRENT_UNBRIDGED_S: &str = "line_current_unbridged_s";
/// Energy left out because it spans a gap that was not bridged (kWh).
pub const EXCLUDED_ENERGY_KWH: &str = "excluded_energy_kwh";

/// Every potline metric name in this module (`calc` [`POTLINE`]).
pub const POTLINE_METRICS: &[&str] = &[
    LINE_CURRENT_KA,
    CELLS_IN_SERVICE,
    PRODUCTION_TODAY_T,
    DC_KWH_PER_T_TODAY,
    AC_KWH_PER_T_TODAY,
    COMPREHENSIVE_AC_KWH_PER_T_TODAY,
    CELL_VOLTAGE_AVG_V,
    PSEUDO_RESISTANCE_UOHM,
    PRODUCTION_T,
    DC_ENERGY_KWH,
    DC_METER_ENERGY_KWH,
    AC_ENERGY_KWH,
    DC_KWH_PER_T,
    AVERAGE_VOLTAGE_V,
    DC_METER_KWH_PER_T,
    RECTIFIER_EFFICIENCY_PCT,
    AC_KWH_PER_T,
    AC_GRADE,
    AC_ENERGY_KGCE,
    AUXILIARY_ENERGY_KWH,
    COMPREHENSIVE_AC_KWH_PER_T,
    COMPREHENSIVE_AC_GRADE,
    PRODUCTION_FARADAY_T,
    CAPACITY_UTILISATION_PCT,
    TAPPED_METAL_T,
    CURRENT_EFFICIENCY_FROM_TAPPING_PCT,
    TARIFF_SURCHARGE_YUAN_PER_KWH_ESTIMATE,
    TARIFF_SURCHARGE_YUAN_ESTIMATE,
    METER_RESETS,
    LINE_CURRENT_BRIDGED_S,
    LINE_CURRENT_UNBRIDGED_S,
    EXCLUDED_ENERGY_KWH,
];

// Anode effects of a closed period (`calc` [`ANODE_EFFECT`]).

/// Anode effects counted.
pub const AE_COUNT: &str = "ae_count";
/// Minutes in anode effect, summed over the cells (min).
pub const AE_MINUTES: &str = "ae_minutes";
/// Cell-days in service (cell-day).
pub const CELL_DAYS: &str = "cell_days";
/// Anode-effect frequency (1/cell-day).
pub const AEF_PER_CELL_DAY: &str = "aef_per_cell_day";
/// Anode-effect duration (min).
pub const AED_MIN: &str = "aed_min";
/// Anode-effect minutes per cell-day (min/cell-day).
pub const AEM_MIN_PER_CELL_DAY: &str = "aem_min_per_cell_day";

// Emissions of a closed period (`calc` [`EMISSIONS`]).

/// CF4 from anode effects (kg).
pub const PFC_CF4_KG: &str = "pfc_cf4_kg";
/// C2F6 from anode effects (kg).
pub const PFC_C2F6_KG: &str = "pfc_c2f6_kg";
/// PFC as CO2 equivalent (t).
pub const PFC_CO2E_T: &str = "pfc_co2e_t";
/// CO2 of the anodes consumed (t, label `anode_data`).
pub const ANODE_CO2_T: &str = "anode_co2_t";
/// Indirect CO2 of the AC energy (t).
pub const ELECTRICITY_CO2_T: &str = "electricity_co2_t";

// Copper smelters (`calc` [`COPPER`]): the minute's rates, then a closed period's figures.

/// Concentrate feed (t/h).
pub const CONCENTRATE_FEED_TPH: &str = "concentrate_feed_tph";
/// Oxygen flow (Nm³/h).
pub const OXYGEN_FLOW_NM3H: &str = "oxygen_flow_nm3h";
/// Oxygen enrichment (%).
pub const OXYGEN_ENRICHMENT_PCT: &str = "oxygen_enrichment_pct";
/// Oxygen per tonne of concentrate (Nm³/t), of the minute and of a period.
pub const OXYGEN_NM3_PER_T_CONCENTRATE: &str = "oxygen_nm3_per_t_concentrate";
/// SO2 into the acid plant (kg/h).
pub const ACID_PLANT_SO2_KG_H: &str = "acid_plant_so2_kg_h";
/// SO2 out of the acid plant's stack (kg/h).
pub const STACK_SO2_KG_H: &str = "stack_so2_kg_h";
/// Sulphur captured by the acid plant (%), of the minute and of a period.
pub const SULPHUR_CAPTURE_PCT: &str = "sulphur_capture_pct";
/// Concentrate fed (t).
pub const CONCENTRATE_T: &str = "concentrate_t";
/// Oxygen used (Nm³).
pub const OXYGEN_NM3: &str = "oxygen_nm3";
/// SO2 into the acid plant (t).
pub const ACID_PLANT_SO2_T: &str = "acid_plant_so2_t";
/// SO2 out of the acid plant's stack (t).
pub const STACK_SO2_T: &str = "stack_so2_t";
/// Copper produced (t).
pub const COPPER_T: &str = "copper_t";
/// Energy in standard coal (kgce).
pub const ENERGY_KGCE: &str = "energy_kgce";
/// Energy per tonne of copper (kgce/t).
pub const ENERGY_KGCE_PER_T: &str = "energy_kgce_per_t";
/// Grade of the energy per tonne.
pub const ENERGY_GRADE: &str = "energy_grade";
