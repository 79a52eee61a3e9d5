//! The `[calc]` section: potlines, stacks and smelters, the roles their devices play, and the
//! defaults of every optional key.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

use crate::calc::LimitClass;
use crate::calc::window;

/// The optional `[calc]` section: which devices and points play which role, and which
/// coefficient tables apply.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CalcConfig {
    /// Shipped coefficient table (`cn-2025`).
    #[serde(default = "default_coefficients")]
    pub coefficients: String,
    /// A coefficient file that replaces the shipped table (relative to the working directory
    /// unless absolute).
    #[serde(default)]
    pub coefficients_path: Option<PathBuf>,
    /// GWP set for CO2e: `sar`, `ar4`, `ar5`, `ar6` (keys of the table's `[gwp]`); without it,
    /// the table's `[defaults] gwp`.
    #[serde(default)]
    pub gwp: Option<String>,
    /// Grid emission factor for electricity CO2 (a key of the table's `[grid]`, e.g.
    /// `qinghai-2022`); without it, the table's `[defaults] grid_factor`.
    #[serde(default)]
    pub grid_factor: Option<String>,
    /// Site offset from UTC in hours, for day and month boundaries (China: 8).
    #[serde(default = "default_utc_offset")]
    pub utc_offset_hours: i32,
    /// Potlines.
    #[serde(default)]
    pub potlines: Vec<PotlineRole>,
    /// Stacks with CEMS.
    #[serde(default)]
    pub stacks: Vec<StackRole>,
    /// Copper smelters.
    #[serde(default)]
    pub smelters: Vec<SmelterRole>,
    /// Plant time for a simulator that runs faster than real time (`[simulator] time_scale`);
    /// absent in production. See [`SimulatedTime`].
    #[serde(default)]
    pub simulated_time: Option<SimulatedTime>,
}

/// `[calc.simulated_time]`: the calculators read reading timestamps as plant time running
/// `scale` times faster than the wall clock, starting at `start` with the first reading.
///
/// This exists so that hour and day windows, day closes and AE statistics can be exercised in
/// seconds (tests, demos) against a simulator with the same `time_scale`. Only the calculators'
/// view changes: `t_plant = start + (t_reading − t_first_reading) × scale`; the live stream keeps
/// the acquisition timestamps. Never set it on a plant: every figure would be wrong by `scale`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedTime {
    /// Plant seconds per wall-clock second (> 0).
    pub scale: f64,
    /// Plant time of the first reading, RFC 3339 in UTC (`2025-03-01T15:58:00Z`).
    pub start: String,
}

fn default_coefficients() -> String {
    "cn-2025".into()
}
const fn default_utc_offset() -> i32 {
    8
}

/// One potline: its rectifier, its pots, and its constants.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PotlineRole {
    /// Line name: the `line` label of its metrics (`potline1`).
    pub name: String,
    /// Glob matching the rectifier device, as `source/device` or `device` (`potline1/rectifier`).
    pub rectifier: String,
    /// Glob matching the pot control units (`potline1/pot_*`).
    pub pots: String,
    /// Metal key of the coefficient table (`al`, `mg`).
    #[serde(default = "default_metal")]
    pub metal: String,
    /// PFC technology key (`cwpb`, `swpb`, `vss`, `hss`).
    #[serde(default = "default_technology")]
    pub technology: String,
    /// Current efficiency, 0–1 (e.g. 0.935).
    pub current_efficiency: f64,
    /// Approved capacity, t/year, for capacity utilisation.
    #[serde(default)]
    pub approved_capacity_t_per_year: Option<f64>,
    /// Grade table for AC kWh/t (a key of the table's `[grades]`).
    #[serde(default = "default_grade")]
    pub ac_grade: String,
    /// Non-hydro renewable share of consumption, %, for the tariff estimate.
    #[serde(default)]
    pub renewable_share_pct: f64,
    /// The province's non-hydro incentive weight of the previous year, %.
    #[serde(default)]
    pub provincial_renewable_weight_pct: f64,
    /// Line current point of the rectifier.
    #[serde(default = "default_line_current")]
    pub line_current_point: String,
    /// DC energy counter point of the rectifier.
    #[serde(default = "default_dc_energy")]
    pub dc_energy_point: String,
    /// AC energy counter point of the rectifier.
    #[serde(default = "default_ac_energy")]
    pub ac_energy_point: String,
    /// Cumulative tapped-metal counter (kg) on the rectifier's device, from the plant's crucible
    /// weighing; with it, the line reports the current efficiency from tapping per day and
    /// month. Rollover and resets are handled as for the energy counters (`counter_bits`, no
    /// ratio).
    #[serde(default)]
    pub tapped_metal_kg_point: Option<String>,
    /// Rated power of the AC energy meter (or the largest power the feeder can carry), kW: a
    /// step of the AC counter larger than this × the time since the previous reading is
    /// suspect (a glitch unless the next reading confirms it). Without it, half the register
    /// range.
    #[serde(default)]
    pub ac_meter_rated_kw: Option<f64>,
    /// Rated power of the DC energy meter, kW (as `ac_meter_rated_kw`).
    #[serde(default)]
    pub dc_meter_rated_kw: Option<f64>,
    /// Largest plausible tapping rate, kg/h, for the tapped-metal counter (a crucible of 4 t
    /// every 5 minutes is 48,000 kg/h); without it, half the register range.
    #[serde(default)]
    pub tapped_metal_max_kg_per_h: Option<f64>,
    /// Width of the energy counters: 16, 32 or 64 bits.
    #[serde(default = "default_counter_bits")]
    pub counter_bits: u8,
    /// The raw value at which the energy counters wrap to 0 when that is not a power of two: a
    /// DL/T 645 `XXXXXX.XX` kWh register, counted in whole kWh, wraps at 1000000. Without it, at
    /// 2^`counter_bits`.
    #[serde(default)]
    pub counter_wraps_at: Option<u64>,
    /// Multiplier of the counters (CT × PT × scale).
    #[serde(default = "default_ratio")]
    pub counter_ratio: f64,
    /// Cell voltage point of the pots.
    #[serde(default = "default_cell_voltage")]
    pub cell_voltage_point: String,
    /// "In service" status bit of the pots.
    #[serde(default = "default_in_service")]
    pub in_service_point: String,
    /// How anode CO2 is computed: `tier2` (net anode consumption × (100 − S − ash)/100 ×
    /// 44/12, with the line's measured values below where set, the table's defaults
    /// otherwise) or `tier1` (the table's t CO2 per t Al).
    #[serde(default)]
    pub anode_co2_method: AnodeCo2Method,
    /// Measured net anode consumption, t anode per t Al (replaces the table's default).
    #[serde(default)]
    pub anode_nac_t_per_t: Option<f64>,
    /// Measured sulphur content of the baked anodes, weight %.
    #[serde(default)]
    pub anode_sulphur_pct: Option<f64>,
    /// Measured ash content of the baked anodes, weight %.
    #[serde(default)]
    pub anode_ash_pct: Option<f64>,
    /// Whether a pot counts in service before (or without) any status reading; without it, the
    /// table's `[potline] in_service_default`.
    #[serde(default)]
    pub in_service_default: Option<bool>,
    /// "Cut out" status bit of the pots.
    #[serde(default = "default_cut_out")]
    pub cut_out_point: String,
    /// Overrides of the AE threshold, V.
    #[serde(default)]
    pub ae_threshold_v: Option<f64>,
    /// Override of the AE minimum duration, s.
    #[serde(default)]
    pub ae_min_duration_s: Option<f64>,
    /// Override of the AE hysteresis, V.
    #[serde(default)]
    pub ae_hysteresis_v: Option<f64>,
    /// Longest interval between two line-current samples that is integrated as it is; a longer
    /// one is a gap in the current (bridged or left out, `gap_bridge`).
    #[serde(default = "default_max_gap", with = "humantime_serde")]
    pub max_gap: Duration,
    /// How a gap in the line current (a lost rectifier link while the line runs) is bridged:
    /// `interpolate` (the mean of the current before and after it), `dc_meter` (corrected by the
    /// DC energy meter's delta over the gap) or `none`; without it, the table's
    /// `[potline] gap_bridge`.
    #[serde(default)]
    pub gap_bridge: Option<GapBridge>,
    /// Longest gap that is bridged; a longer one is left out of production and energy alike.
    /// Without it, the table's `[potline] max_bridge`.
    #[serde(default, with = "humantime_serde")]
    pub max_bridge: Option<Duration>,
    /// Bus and series share of the average cell voltage, V per cell (平均电压 is the working
    /// voltage plus the AE share plus this), added to each cell's voltage in the DC energy. A
    /// plant constant from its bus design or a survey of the line voltage.
    #[serde(default)]
    pub bus_share_v: f64,
    /// Auxiliary energy meters of the line (kWh counters): with them, the comprehensive AC
    /// consumption (铝液综合交流电耗) is reported and the tariff estimate is assessed on it. List
    /// the meters inside the boundary only (desulphurisation is outside it).
    #[serde(default)]
    pub auxiliary_meters: Vec<AuxiliaryMeter>,
    /// Grade table for the comprehensive AC figure (a key of the table's `[grades]`).
    #[serde(default = "default_comprehensive_grade")]
    pub comprehensive_ac_grade: String,
    /// Metal-pad inventory point (kg of metal in the line's cells) on the rectifier's device:
    /// its change corrects the tapped metal in the current efficiency from tapping.
    #[serde(default)]
    pub metal_inventory_kg_point: Option<String>,
    /// Trailing window of the current efficiency from tapping that measured production uses;
    /// without it, the table's `[potline] ce_window`.
    #[serde(default, with = "humantime_serde")]
    pub ce_window: Option<Duration>,
}

/// How a potline's anode CO2 is computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnodeCo2Method {
    /// IPCC 2006 Tier 2 for prebake: NAC × (100 − S − ash)/100 × 44/12.
    #[default]
    Tier2,
    /// IPCC 2006 Tier 1: a fixed factor per tonne of aluminium.
    Tier1,
}

/// How a gap in a potline's line current is bridged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapBridge {
    /// The mean of the current before and after the gap, over the gap.
    Interpolate,
    /// Bridged as `interpolate`, then corrected by the DC energy meter's delta over the gap
    /// (divided by the line voltage the meter showed in the hour before it) when the meter's
    /// next reading covers the gap, as it does when the meter is read through the same link;
    /// otherwise (no DC meter, or one read through another link) it stays interpolated.
    DcMeter,
    /// Not bridged: the gap is left out of production and of the energy that spans it.
    None,
}

/// An auxiliary energy meter of a potline (`[[calc.potlines.auxiliary_meters]]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuxiliaryMeter {
    /// Glob matching the meter's device, as `source/device` or `device`; a glob that matches
    /// several devices sums them.
    pub device: String,
    /// Its cumulative energy point, kWh.
    #[serde(default = "default_aux_point")]
    pub point: String,
    /// Register width (default: the line's `counter_bits`).
    #[serde(default)]
    pub counter_bits: Option<u8>,
    /// The raw value at which the register wraps to 0 when that is not a power of two (default:
    /// the line's `counter_wraps_at`): 1000000 for a DL/T 645 `XXXXXX.XX` kWh register.
    #[serde(default)]
    pub counter_wraps_at: Option<u64>,
    /// Multiplier (CT × PT × scale).
    #[serde(default = "default_ratio")]
    pub counter_ratio: f64,
    /// Rated power, kW, for the counter's plausibility check.
    #[serde(default)]
    pub rated_kw: Option<f64>,
}

fn default_aux_point() -> String {
    "energy_kwh".into()
}
fn default_comprehensive_grade() -> String {
    "gb21346_2022_al_liquid_comprehensive_ac".into()
}

fn default_metal() -> String {
    "al".into()
}
fn default_technology() -> String {
    "cwpb".into()
}
fn default_grade() -> String {
    "gb21346_2022_al_liquid_ac".into()
}
fn default_line_current() -> String {
    "line_current_ka".into()
}
fn default_dc_energy() -> String {
    "dc_energy_kwh".into()
}
fn default_ac_energy() -> String {
    "ac_energy_kwh".into()
}
const fn default_counter_bits() -> u8 {
    32
}
const fn default_ratio() -> f64 {
    1.0
}
fn default_cell_voltage() -> String {
    "cell_voltage_v".into()
}
fn default_in_service() -> String {
    "in_service".into()
}
fn default_cut_out() -> String {
    "cut_out".into()
}
const fn default_max_gap() -> Duration {
    Duration::from_secs(10)
}

/// One stack with a CEMS.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StackRole {
    /// Stack name: the subject of its aggregates (`gtc1_stack`).
    pub name: String,
    /// Glob matching the CEMS device (`gtc1/gtc1_stack`).
    pub device: String,
    /// Limit table key (`gb25465_2010_al_pot_gas`); no exceedance checks without one.
    #[serde(default)]
    pub limits: Option<String>,
    /// General or special limits.
    #[serde(default)]
    pub limit_class: LimitClass,
    /// Pollutant key (as in the limit table) → concentration point (mg/m³, standard dry).
    pub pollutants: IndexMap<String, String>,
    /// Flow point (m³/h, standard dry).
    #[serde(default = "default_flow")]
    pub flow_point: String,
    /// O2 point (%), for O2-referenced concentrations.
    #[serde(default)]
    pub o2_point: Option<String>,
    /// Reference O2 (%) of the applicable standard: the pollutants get a converted
    /// `<p>_zs_mg_m3` = C × (21 − O2_ref)/(21 − O2), which the limits apply to; mass always uses
    /// the measured concentration. None for GB 25465/25467 (reference exhaust volume).
    #[serde(default)]
    pub o2_reference_pct: Option<f64>,
    /// Reference exhaust volume (基准排气量) of the applicable standard, m³ per t of product
    /// (GB 25465/25467; values to check against the standard's table [U]): when the actual
    /// exhaust volume per tonne (flow / production rate) exceeds it, `<p>_zs_mg_m3` = C ×
    /// actual/reference, else C; the limits apply to it. Needs `production_point` or
    /// `production_t_per_h`; excludes `o2_reference_pct`.
    #[serde(default)]
    pub reference_exhaust_m3_per_t: Option<f64>,
    /// Production rate point, t/h, in the CEMS device's poll (a derived point or a plant tag
    /// mapped onto it), for `reference_exhaust_m3_per_t`.
    #[serde(default)]
    pub production_point: Option<String>,
    /// Fixed production rate, t/h, when there is no `production_point`.
    #[serde(default)]
    pub production_t_per_h: Option<f64>,
    /// Substitution policy of this stack's day totals (`hj75`, `none`); the coefficient table's
    /// `[substitution] policy` when absent.
    #[serde(default)]
    pub substitution: Option<window::SubstitutionPolicy>,
    /// Status bit: analyser calibrating (samples flagged `calibration`).
    #[serde(default)]
    pub calibration_point: Option<String>,
    /// Status bit: maintenance (samples flagged `maintenance`).
    #[serde(default)]
    pub maintenance_point: Option<String>,
    /// Status bit: analyser fault (samples flagged `device_exception`).
    #[serde(default)]
    pub fault_point: Option<String>,
}

fn default_flow() -> String {
    "flow_m3h".into()
}

/// One copper smelting furnace (oxygen-enriched bath or flash smelting) and its acid plant.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmelterRole {
    /// Smelter name: the `smelter` label of its metrics.
    pub name: String,
    /// Glob matching the furnace controller (`smelter1/smelter1`).
    pub device: String,
    /// Concentrate feed point, t/h.
    #[serde(default = "default_feed")]
    pub feed_point: String,
    /// Oxygen flow point, Nm³/h.
    #[serde(default = "default_oxygen")]
    pub oxygen_point: String,
    /// Oxygen enrichment point, %.
    #[serde(default = "default_enrichment")]
    pub enrichment_point: String,
    /// SO2 at the acid-plant inlet, % by volume.
    #[serde(default = "default_acid_so2")]
    pub acid_plant_so2_point: String,
    /// Gas flow at the acid-plant inlet, Nm³/h; without it there is no inlet SO2 mass and no
    /// sulphur capture.
    #[serde(default)]
    pub acid_plant_gas_flow_point: Option<String>,
    /// The `[[calc.stacks]]` entry (by name) whose `so2` mass flow leaves the acid plant.
    #[serde(default)]
    pub stack: Option<String>,
    /// Copper output point, t/h (of the product the grade table is about).
    #[serde(default)]
    pub copper_output_point: Option<String>,
    /// Comprehensive energy rate of the process, kgce/h (all energy carriers, already converted
    /// to standard coal by the plant's energy system or a derived point).
    #[serde(default)]
    pub energy_kgce_point: Option<String>,
    /// Grade table of GB 25323-2023 for `energy_kgce_per_t` (a key of the table's `[grades]`).
    #[serde(default = "default_cu_grade")]
    pub energy_grade: String,
    /// Longest gap between two samples that is still integrated.
    #[serde(default = "default_smelter_gap", with = "humantime_serde")]
    pub max_gap: Duration,
}

fn default_feed() -> String {
    "concentrate_feed_tph".into()
}
fn default_oxygen() -> String {
    "oxygen_flow_nm3h".into()
}
fn default_enrichment() -> String {
    "oxygen_enrichment_pct".into()
}
fn default_acid_so2() -> String {
    "acid_plant_so2_pct".into()
}
fn default_cu_grade() -> String {
    "gb25323_2023_cu_smelting".into()
}
const fn default_smelter_gap() -> Duration {
    Duration::from_secs(60)
}
