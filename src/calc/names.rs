//! Names of the calculators' output that other parts of the project read back by name: the
//! potline KPIs of `smeltwatch tail`, the control-room dashboard (`src/http/dashboard.html`, whose
//! names a test checks against these) and the reference lines of the trends. The calculators
//! write these constants and the readers match on them, so a rename is one edit here.

/// `calc` of the potline metrics.
pub const POTLINE: &str = "potline";

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
/// Specific DC energy of a closed period (kWh/t, label `period`).
pub const DC_KWH_PER_T: &str = "dc_kwh_per_t";
/// Specific AC energy of a closed period (kWh/t, label `period`).
pub const AC_KWH_PER_T: &str = "ac_kwh_per_t";
/// Capacity utilisation of a period (%, label `period`).
pub const CAPACITY_UTILISATION_PCT: &str = "capacity_utilisation_pct";

/// Every potline metric name in this module.
pub const POTLINE_METRICS: &[&str] = &[
    LINE_CURRENT_KA,
    CELLS_IN_SERVICE,
    PRODUCTION_TODAY_T,
    DC_KWH_PER_T_TODAY,
    AC_KWH_PER_T_TODAY,
    DC_KWH_PER_T,
    AC_KWH_PER_T,
    CAPACITY_UTILISATION_PCT,
];
