//! The catalogue of the calculators' metrics: for a `[calc]` section, every metric its
//! calculators can emit, with the value of its first label and its unit.
//!
//! A metric of calculator `calc` with first label value `label` (the line or the smelter name)
//! and name `name` is what a derived point reads as `calc:<calc>/<label>.<name>`, and what an
//! uplink can announce before the first value arrives. Public API: [`metrics`] and
//! [`CatalogMetric`]; the names are the constants of [`super::names`].
//!
//! Decisions:
//! - **From the configuration, not from what was seen.** A metric is listed when the section
//!   configures what its calculator needs to emit it (`comprehensive_ac_kwh_per_t` needs auxiliary
//!   meters, `copper_t` a copper output point), whether or not it has a value yet: the figures of
//!   closed periods come once a day, and a reference to one must load before the first close.
//!   A metric without a value is emitted as such (`stale`), so a listed one does come.
//! - **One entry per (calculator, first label, name).** The same name is emitted for several
//!   periods (`period = "day"`, `"month"`, `"ytd"`) and, for the per-cell metrics, for every cell
//!   (second label `cell`); they share the first label, name and unit, which is what a reference
//!   names.
//! - **Stacks emit no metrics.** A stack's figures are windowed aggregates (`<p>_mg_m3`,
//!   `<p>_kg_h`, `flow_m3h` per minute, hour, day and month, with validity), not metric batches,
//!   so they are not in this catalogue.
//! - **It cannot drift.** `tests/calc_catalog.rs` runs the calculators over a month's end with
//!   every optional input and with none, and checks that what they emit and what this lists are
//!   the same set of (calculator, first label, name, unit).

use super::{CalcConfig, PotlineRole, SmelterRole, names};

/// One metric a configured calculator emits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CatalogMetric {
    /// The calculator: the `calc` of its metric batches ([`names::POTLINE`],
    /// [`names::ANODE_EFFECT`], [`names::EMISSIONS`], [`names::COPPER`]).
    pub calc: &'static str,
    /// The value of its first label: the line (`potline1`) or the smelter (`smelter1`).
    pub label: String,
    /// Metric name, its unit as suffix (`line_current_ka`).
    pub name: &'static str,
    /// Its unit as emitted (`kA`, `kWh/t`; empty for a count or a grade).
    pub unit: &'static str,
}

impl CatalogMetric {
    /// How a derived point's expression names it: `calc:potline/potline1.line_current_ka`.
    pub fn reference(&self) -> String {
        format!("calc:{}/{}.{}", self.calc, self.label, self.name)
    }
}

/// A calculator's metrics: (name, unit, what it needs).
type Table = &'static [(&'static str, &'static str, Needs)];

/// What a metric needs configured to be emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Nothing: every line (or smelter) emits it.
    Nothing,
    /// A potline's `auxiliary_meters`.
    AuxiliaryMeters,
    /// A potline's `tapped_metal_kg_point`.
    TappedMetal,
    /// A potline's `approved_capacity_t_per_year`.
    Capacity,
    /// A smelter's `acid_plant_gas_flow_point` and `stack`.
    AcidPlant,
    /// A smelter's `copper_output_point`.
    CopperOutput,
    /// A smelter's `copper_output_point` and `energy_kgce_point`.
    Energy,
}

/// (name, unit, what it needs) of a potline's own metrics (calculator [`names::POTLINE`]).
const POTLINE: Table = &[
    (names::LINE_CURRENT_KA, "kA", Needs::Nothing),
    (names::CELLS_IN_SERVICE, "", Needs::Nothing),
    (names::PRODUCTION_TODAY_T, "t", Needs::Nothing),
    (names::DC_KWH_PER_T_TODAY, "kWh/t", Needs::Nothing),
    (names::AC_KWH_PER_T_TODAY, "kWh/t", Needs::Nothing),
    (
        names::COMPREHENSIVE_AC_KWH_PER_T_TODAY,
        "kWh/t",
        Needs::AuxiliaryMeters,
    ),
    (names::CELL_VOLTAGE_AVG_V, "V", Needs::Nothing),
    (names::PSEUDO_RESISTANCE_UOHM, "uohm", Needs::Nothing),
    (names::PRODUCTION_T, "t", Needs::Nothing),
    (names::DC_ENERGY_KWH, "kWh", Needs::Nothing),
    (names::DC_METER_ENERGY_KWH, "kWh", Needs::Nothing),
    (names::AC_ENERGY_KWH, "kWh", Needs::Nothing),
    (names::DC_KWH_PER_T, "kWh/t", Needs::Nothing),
    (names::AVERAGE_VOLTAGE_V, "V", Needs::Nothing),
    (names::DC_METER_KWH_PER_T, "kWh/t", Needs::Nothing),
    (names::RECTIFIER_EFFICIENCY_PCT, "%", Needs::Nothing),
    (names::AC_KWH_PER_T, "kWh/t", Needs::Nothing),
    (names::AC_GRADE, "", Needs::Nothing),
    (names::AC_ENERGY_KGCE, "kgce", Needs::Nothing),
    (names::AUXILIARY_ENERGY_KWH, "kWh", Needs::AuxiliaryMeters),
    (
        names::COMPREHENSIVE_AC_KWH_PER_T,
        "kWh/t",
        Needs::AuxiliaryMeters,
    ),
    (names::COMPREHENSIVE_AC_GRADE, "", Needs::AuxiliaryMeters),
    (names::PRODUCTION_FARADAY_T, "t", Needs::TappedMetal),
    (names::CAPACITY_UTILISATION_PCT, "%", Needs::Capacity),
    (names::TAPPED_METAL_T, "t", Needs::TappedMetal),
    (
        names::CURRENT_EFFICIENCY_FROM_TAPPING_PCT,
        "%",
        Needs::TappedMetal,
    ),
    (
        names::TARIFF_SURCHARGE_YUAN_PER_KWH_ESTIMATE,
        "yuan/kWh",
        Needs::Nothing,
    ),
    (
        names::TARIFF_SURCHARGE_YUAN_ESTIMATE,
        "yuan",
        Needs::Nothing,
    ),
    (names::METER_RESETS, "", Needs::Nothing),
    (names::LINE_CURRENT_BRIDGED_S, "s", Needs::Nothing),
    (names::LINE_CURRENT_UNBRIDGED_S, "s", Needs::Nothing),
    (names::EXCLUDED_ENERGY_KWH, "kWh", Needs::Nothing),
];

/// (name, unit, what it needs) of a potline's anode-effect metrics (calculator
/// [`names::ANODE_EFFECT`]).
const ANODE_EFFECT: Table = &[
    (names::AE_COUNT, "", Needs::Nothing),
    (names::AE_MINUTES, "min", Needs::Nothing),
    (names::CELL_DAYS, "cell-day", Needs::Nothing),
    (names::AEF_PER_CELL_DAY, "1/cell-day", Needs::Nothing),
    (names::AED_MIN, "min", Needs::Nothing),
    (names::AEM_MIN_PER_CELL_DAY, "min/cell-day", Needs::Nothing),
];

/// (name, unit, what it needs) of a potline's emission metrics (calculator [`names::EMISSIONS`]).
const EMISSIONS: Table = &[
    (names::PFC_CF4_KG, "kg", Needs::Nothing),
    (names::PFC_C2F6_KG, "kg", Needs::Nothing),
    (names::PFC_CO2E_T, "t", Needs::Nothing),
    (names::ANODE_CO2_T, "t", Needs::Nothing),
    (names::ELECTRICITY_CO2_T, "t", Needs::Nothing),
];

/// The calculators of a potline, each with its metrics.
const LINE_CALCULATORS: &[(&str, Table)] = &[
    (names::POTLINE, POTLINE),
    (names::ANODE_EFFECT, ANODE_EFFECT),
    (names::EMISSIONS, EMISSIONS),
];

/// (name, unit, what it needs) of a copper smelter's metrics (calculator [`names::COPPER`]).
const COPPER: Table = &[
    (names::CONCENTRATE_FEED_TPH, "t/h", Needs::Nothing),
    (names::OXYGEN_FLOW_NM3H, "Nm3/h", Needs::Nothing),
    (names::OXYGEN_ENRICHMENT_PCT, "%", Needs::Nothing),
    (names::OXYGEN_NM3_PER_T_CONCENTRATE, "Nm3/t", Needs::Nothing),
    (names::ACID_PLANT_SO2_KG_H, "kg/h", Needs::Nothing),
    (names::STACK_SO2_KG_H, "kg/h", Needs::Nothing),
    (names::SULPHUR_CAPTURE_PCT, "%", Needs::Nothing),
    (names::CONCENTRATE_T, "t", Needs::Nothing),
    (names::OXYGEN_NM3, "Nm3", Needs::Nothing),
    (names::ACID_PLANT_SO2_T, "t", Needs::AcidPlant),
    (names::STACK_SO2_T, "t", Needs::AcidPlant),
    (names::COPPER_T, "t", Needs::CopperOutput),
    (names::ENERGY_KGCE, "kgce", Needs::Energy),
    (names::ENERGY_KGCE_PER_T, "kgce/t", Needs::Energy),
    (names::ENERGY_GRADE, "", Needs::Energy),
];

fn potline_has(role: &PotlineRole, needs: Needs) -> bool {
    match needs {
        Needs::AuxiliaryMeters => !role.auxiliary_meters.is_empty(),
        Needs::TappedMetal => role.tapped_metal_kg_point.is_some(),
        Needs::Capacity => role.approved_capacity_t_per_year.is_some(),
        Needs::Nothing => true,
        Needs::AcidPlant | Needs::CopperOutput | Needs::Energy => false,
    }
}

fn smelter_has(role: &SmelterRole, needs: Needs) -> bool {
    let copper = role.copper_output_point.is_some();
    match needs {
        Needs::AcidPlant => role.acid_plant_gas_flow_point.is_some() && role.stack.is_some(),
        Needs::CopperOutput => copper,
        Needs::Energy => copper && role.energy_kgce_point.is_some(),
        Needs::Nothing => true,
        Needs::AuxiliaryMeters | Needs::TappedMetal | Needs::Capacity => false,
    }
}

/// Every metric the calculators of `calc` can emit: for each potline (in `[calc]` order) its
/// `potline`, `anode_effect` and `emissions` metrics, then for each smelter its `copper` ones.
/// Each (calculator, label, name) is listed once.
pub fn metrics(calc: &CalcConfig) -> Vec<CatalogMetric> {
    let mut out = Vec::new();
    for line in &calc.potlines {
        for &(calculator, table) in LINE_CALCULATORS {
            out.extend(
                table
                    .iter()
                    .filter(|(_, _, needs)| potline_has(line, *needs))
                    .map(|&(name, unit, _)| CatalogMetric {
                        calc: calculator,
                        label: line.name.clone(),
                        name,
                        unit,
                    }),
            );
        }
    }
    for smelter in &calc.smelters {
        out.extend(
            COPPER
                .iter()
                .filter(|(_, _, needs)| smelter_has(smelter, *needs))
                .map(|&(name, unit, _)| CatalogMetric {
                    calc: names::COPPER,
                    label: smelter.name.clone(),
                    name,
                    unit,
                }),
        );
    }
    out
}

/// The periods of the closed windows a calculator's figure is emitted for (its label `period`);
/// `None` stands for the figure of the minute, which has no period. [`metrics`] lists each figure
/// once per line or smelter, whatever its periods; a reader that declares one metric per period
/// (the Sparkplug node metrics) takes them from here. The minute figures, those of a minute and
/// of closed windows, and those also of the year to date are listed; every other figure is one of
/// closed days and months. `tests/sparkplug.rs` checks these against what a potline's and a
/// copper smelter's calculators emit over a month's end.
pub fn periods(calc: &str, name: &str) -> &'static [Option<&'static str>] {
    const MINUTE: &[Option<&str>] = &[None];
    const DAY_MONTH: &[Option<&str>] = &[Some("day"), Some("month")];
    const MINUTE_DAY_MONTH: &[Option<&str>] = &[None, Some("day"), Some("month")];
    const DAY_MONTH_YTD: &[Option<&str>] = &[Some("day"), Some("month"), Some("ytd")];
    match (calc, name) {
        (
            names::POTLINE,
            names::LINE_CURRENT_KA
            | names::CELLS_IN_SERVICE
            | names::PRODUCTION_TODAY_T
            | names::DC_KWH_PER_T_TODAY
            | names::AC_KWH_PER_T_TODAY
            | names::COMPREHENSIVE_AC_KWH_PER_T_TODAY,
        )
        | (
            names::COPPER,
            names::CONCENTRATE_FEED_TPH
            | names::OXYGEN_FLOW_NM3H
            | names::OXYGEN_ENRICHMENT_PCT
            | names::ACID_PLANT_SO2_KG_H
            | names::STACK_SO2_KG_H,
        ) => MINUTE,
        (names::COPPER, names::OXYGEN_NM3_PER_T_CONCENTRATE | names::SULPHUR_CAPTURE_PCT) => {
            MINUTE_DAY_MONTH
        }
        (names::POTLINE, names::CAPACITY_UTILISATION_PCT) => DAY_MONTH_YTD,
        _ => DAY_MONTH,
    }
}

/// Whether a figure is one of a cell (labels `line` and `cell`), emitted once per cell: readers
/// that declare a fixed set of metrics leave them out (a line of 300 cells would declare 600).
pub fn is_cell_figure(calc: &str, name: &str) -> bool {
    calc == names::POTLINE
        && matches!(
            name,
            names::CELL_VOLTAGE_AVG_V | names::PSEUDO_RESISTANCE_UOHM
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_potline_names_of_the_catalogue_are_those_the_readers_know() {
        let mut listed: Vec<&str> = POTLINE.iter().map(|(name, ..)| *name).collect();
        let mut known = names::POTLINE_METRICS.to_vec();
        listed.sort_unstable();
        known.sort_unstable();
        assert_eq!(listed, known);
    }

    #[test]
    fn optional_metrics_follow_the_configuration() {
        let bare: CalcConfig = toml::from_str(
            r#"
[[potlines]]
name = "potline1"
rectifier = "potline1/rectifier"
pots = "potline1/pot_*"
current_efficiency = 0.935
[[smelters]]
name = "smelter1"
device = "smelter1/smelter1"
"#,
        )
        .expect("parses");
        let list = metrics(&bare);
        let has = |calc: &str, label: &str, name: &str| {
            list.iter()
                .any(|m| m.calc == calc && m.label == label && m.name == name)
        };
        assert!(has(names::POTLINE, "potline1", names::LINE_CURRENT_KA));
        assert!(has(names::EMISSIONS, "potline1", names::PFC_CF4_KG));
        assert!(!has(names::POTLINE, "potline1", names::TAPPED_METAL_T));
        assert!(!has(
            names::POTLINE,
            "potline1",
            names::COMPREHENSIVE_AC_KWH_PER_T
        ));
        assert!(has(names::COPPER, "smelter1", names::CONCENTRATE_T));
        assert!(!has(names::COPPER, "smelter1", names::COPPER_T));
        assert_eq!(list[0].reference(), "calc:potline/potline1.line_current_ka");
        let mut keys: Vec<_> = list.iter().map(|m| (m.calc, &m.label, m.name)).collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "one entry per calculator, label and name");
    }
}
