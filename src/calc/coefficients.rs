//! Versioned coefficient tables (`config/coefficients/*.toml`): every slope, GWP, grid factor,
//! grade bound, limit, tariff rule and validity threshold the calculators use.
//!
//! Invariant: no such number is a literal in code. The shipped tables are embedded with
//! `include_str!` so that a deployment without the files still works; a path overrides them.
//! Each table carries its source beside its values; they are kept (and ignored) here.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::CalcError;

/// Shipped tables: (name, TOML text).
const EMBEDDED: &[(&str, &str)] = &[(
    "cn-2025",
    include_str!("../../config/coefficients/cn-2025.toml"),
)];

/// One coefficient table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coefficients {
    /// Name of this version (`cn-2025`).
    pub version: String,
    /// Metals by key (`al`, `mg`).
    pub metals: BTreeMap<String, MetalTable>,
    /// Potline constants.
    pub potline: PotlineTable,
    /// Anode-effect detection defaults.
    pub anode_effect: AnodeEffectTable,
    /// PFC slope coefficients by technology (`cwpb`, `swpb`, `vss`, `hss`).
    pub pfc: BTreeMap<String, PfcTable>,
    /// GWP100 sets by key (`sar`, `ar4`, `ar5`, `ar6`).
    pub gwp: BTreeMap<String, GwpTable>,
    /// Anode CO2 defaults.
    pub anode: AnodeTable,
    /// Grid emission factors by key (`qinghai-2022`).
    pub grid: BTreeMap<String, GridTable>,
    /// Copper smelting constants.
    pub copper: CopperTable,
    /// Energy conversions.
    pub energy: EnergyTable,
    /// Grade tables by key (`gb21346_2022_al_liquid_ac`).
    pub grades: BTreeMap<String, GradeTable>,
    /// Stack limit tables: standard key → pollutant → limits.
    pub limits: BTreeMap<String, BTreeMap<String, LimitTable>>,
    /// Tiered electricity surcharge rules.
    pub tariff: TariffTable,
    /// CEMS validity rules.
    pub validity: ValidityTable,
    /// How a day fills its missing or invalid hours of a mass flow.
    pub substitution: SubstitutionTable,
    /// The table's choices where `[calc]` names none.
    #[serde(default)]
    pub defaults: DefaultsTable,
}

/// `[defaults]`: the GWP set and grid factor a table applies when `[calc]` names none (a table
/// without them makes `[calc] gwp` and `grid_factor` required).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsTable {
    /// Key of `[gwp]`.
    #[serde(default)]
    pub gwp: Option<String>,
    /// Key of `[grid]`.
    #[serde(default)]
    pub grid_factor: Option<String>,
    /// Source of the choices.
    #[serde(default)]
    pub source: String,
}

/// A metal for the Faraday formula.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetalTable {
    /// Electrons per atom (Al 3, Mg 2).
    pub valence: u8,
    /// Molar mass, g/mol.
    pub molar_mass_g_mol: f64,
    /// Where the values come from.
    #[serde(default)]
    pub source: String,
}

/// Potline constants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PotlineTable {
    /// E0 of the pseudo-resistance, V.
    pub e0_v: f64,
    /// Source of E0.
    #[serde(default)]
    pub e0_source: String,
    /// How a gap in the line current is bridged where a line names no `gap_bridge`.
    pub gap_bridge: super::GapBridge,
    /// Longest gap bridged where a line names no `max_bridge`.
    #[serde(with = "humantime_serde")]
    pub max_bridge: std::time::Duration,
    /// Window of the current efficiency from tapping where a line names no `ce_window`.
    #[serde(with = "humantime_serde")]
    pub ce_window: std::time::Duration,
    /// Whether a pot with no status reading counts in service where a line does not say.
    pub in_service_default: bool,
    /// Source of these choices.
    #[serde(default)]
    pub policy_source: String,
}

/// Anode-effect detection defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnodeEffectTable {
    /// Start threshold, V.
    pub threshold_v: f64,
    /// Minimum time above the threshold for an AE to count, s.
    pub min_duration_s: f64,
    /// The AE ends when the voltage falls below `threshold_v - hysteresis_v`.
    pub hysteresis_v: f64,
    /// Source of the threshold.
    #[serde(default)]
    pub threshold_source: String,
    /// Source of duration and hysteresis.
    #[serde(default)]
    pub min_duration_source: String,
}

/// Slope-method coefficients of one cell technology.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PfcTable {
    /// S_CF4, (kg CF4/t Al)/(AE-min/cell-day).
    pub s_cf4: f64,
    /// F_C2F6/CF4, kg C2F6 per kg CF4.
    pub f_c2f6: f64,
    /// Low-voltage AE CF4 factor, kg CF4/t Al (IPCC 2019 Refinement; 0 when not used).
    #[serde(default)]
    pub ef_lv_cf4_kg_per_t: f64,
    /// Source.
    #[serde(default)]
    pub source: String,
}

/// A GWP100 set.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GwpTable {
    /// GWP100 of CF4.
    pub cf4: f64,
    /// GWP100 of C2F6.
    pub c2f6: f64,
    /// Source.
    #[serde(default)]
    pub source: String,
}

/// Anode CO2 defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnodeTable {
    /// Net anode consumption, t anode per t Al.
    pub nac_t_per_t: f64,
    /// Sulphur content of baked anodes, weight %.
    pub sulphur_pct: f64,
    /// Ash content of baked anodes, weight %.
    pub ash_pct: f64,
    /// Tier 1 fallback, t CO2 per t Al.
    pub tier1_t_co2_per_t: f64,
    /// Sources.
    #[serde(default)]
    pub nac_source: String,
    /// Sources.
    #[serde(default)]
    pub sulphur_ash_source: String,
    /// Sources.
    #[serde(default)]
    pub tier1_source: String,
}

/// A grid emission factor.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GridTable {
    /// t CO2 per MWh (= kg CO2 per kWh).
    pub t_co2_per_mwh: f64,
    /// Source.
    #[serde(default)]
    pub source: String,
}

/// Copper smelting constants.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CopperTable {
    /// Density of SO2 at the standard state, kg/Nm³.
    pub so2_density_kg_per_nm3: f64,
    /// Source.
    #[serde(default)]
    pub so2_density_source: String,
}

/// Energy conversions.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnergyTable {
    /// Electricity to standard coal, equivalent value, kgce per kWh.
    pub kgce_per_kwh: f64,
    /// Source.
    #[serde(default)]
    pub source: String,
}

/// A three-level grade table (GB 21346-2022 style).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GradeTable {
    /// Unit of the graded value.
    pub unit: String,
    /// Upper bounds of level 1, 2, 3 (inclusive).
    pub levels: [f64; 3],
    /// Source.
    #[serde(default)]
    pub source: String,
}

/// Emission limits of one pollutant, mg/m³.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitTable {
    /// General limit.
    pub general: f64,
    /// Special (key-region) limit.
    pub special: f64,
    /// Source.
    #[serde(default)]
    pub source: String,
}

/// Tiered electricity surcharge rules (发改价格〔2021〕1239号).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TariffTable {
    /// Width of one step above the threshold, kWh/t.
    pub step_kwh_per_t: f64,
    /// Surcharge per step, yuan/kWh.
    pub step_yuan_per_kwh: f64,
    /// The renewable reduction needs a non-hydro share strictly above this, %.
    pub renewable_min_share_pct: f64,
    /// Percentage points of share are counted above this base, %.
    pub renewable_base_pct: f64,
    /// Reduction of the surcharge per percentage point, %.
    pub reduction_pct_per_point: f64,
    /// Multiplier for a surcharge unpaid 90 days after notice.
    pub overdue_multiplier: f64,
    /// Thresholds by year, in force from `from_year` until the next entry.
    pub thresholds: Vec<TariffThreshold>,
    /// Source.
    #[serde(default)]
    pub source: String,
}

/// One threshold of the tiered tariff.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TariffThreshold {
    /// First year it applies to.
    pub from_year: i32,
    /// Threshold of 铝液综合交流电耗, kWh/t.
    pub kwh_per_t: f64,
}

/// CEMS validity rules (HJ 75/76).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValidityTable {
    /// A minute needs at least this many good samples.
    pub minute_min_samples: u32,
    /// …and at least this share of its samples good (0–1).
    pub minute_min_good_ratio: f64,
    /// An hour needs at least this many valid minutes.
    pub hour_min_minutes: u32,
    /// A day needs at least this many valid hours.
    pub day_min_hours: u32,
    /// A month needs at least this many valid days.
    pub month_min_days: u32,
    /// February needs at least this many valid days.
    pub february_min_days: u32,
    /// Sources.
    #[serde(default)]
    pub minute_source: String,
    /// Sources.
    #[serde(default)]
    pub source: String,
}

/// Which rule fills the missing or invalid hours of a day's mass (see `calc::window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubstitutionPolicy {
    /// HJ 75-2017 as commonly cited: a gap of at most `short_gap_max_hours` takes the mean of the
    /// valid hour before and the valid hour after it; a longer gap the maximum of the preceding
    /// `long_gap_lookback_hours` valid hours.
    Hj75,
    /// No filling: a day's total is the sum of its valid hours (a gap counts as zero), for a
    /// platform that substitutes itself.
    #[default]
    None,
}

/// The substitution rule and its parameters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubstitutionTable {
    /// Policy applied unless `[calc]` or a stack overrides it.
    pub policy: SubstitutionPolicy,
    /// Longest gap, hours, filled with the mean of its neighbours.
    pub short_gap_max_hours: u32,
    /// Valid hours a longer gap looks back over for their maximum.
    pub long_gap_lookback_hours: u32,
    /// Source.
    #[serde(default)]
    pub source: String,
}

impl Coefficients {
    /// One of the shipped tables by name (`cn-2025`).
    pub fn embedded(name: &str) -> Result<Self, CalcError> {
        let (_, text) = EMBEDDED.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            CalcError::UnknownCoefficients {
                name: name.to_string(),
                known: EMBEDDED
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })?;
        Self::parse(text, name)
    }

    /// Names of the shipped tables.
    pub fn embedded_names() -> impl Iterator<Item = &'static str> {
        EMBEDDED.iter().map(|(n, _)| *n)
    }

    /// Parse a table from TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, CalcError> {
        toml::from_str(text).map_err(|e| CalcError::Coefficients {
            origin: origin.to_string(),
            message: e.to_string(),
        })
    }

    /// Read a table from a file (the override of an embedded one).
    pub fn from_path(path: &Path) -> Result<Self, CalcError> {
        let text = std::fs::read_to_string(path).map_err(|e| CalcError::Coefficients {
            origin: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }
}
