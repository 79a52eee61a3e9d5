//! Register layouts of the simulated devices, as constant tables.
//!
//! Each table is the single source of truth in code for one device kind; the CSV register maps
//! in `config/maps/{pcu,rectifier,copper_smelter,cems}.csv` describe the same registers for the
//! agent, and a unit test checks that the two agree field by field (name, area, address, type,
//! byte order, scale, offset, unit, bit, writable). Poll classes, plausible ranges and
//! descriptions live only in the CSV files.
//!
//! Addresses are 0-based protocol addresses. Analog values are mostly `f32` ABCD; every table
//! also carries at least one word-swapped (CDAB) float or one scaled 16-bit integer so that the
//! decoder's variety is exercised.

use crate::config::{Area, ByteOrder, DataType};

/// One register (or bit) of a simulated device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reg {
    /// Point name, unit as suffix (`cell_voltage_v`).
    pub name: &'static str,
    /// Modbus area.
    pub area: Area,
    /// 0-based protocol address.
    pub address: u16,
    /// Wire type.
    pub data_type: DataType,
    /// Word and byte order of multi-register values.
    pub byte_order: ByteOrder,
    /// engineering = raw × scale + offset.
    pub scale: f64,
    /// See `scale`.
    pub offset: f64,
    /// Engineering unit.
    pub unit: &'static str,
    /// Whether the agent's map marks the point writable (the simulator accepts writes to every
    /// holding register and coil regardless).
    pub writable: bool,
}

impl Reg {
    /// Registers (or bits) the point occupies.
    pub fn width(&self) -> u16 {
        if self.area.is_bits() {
            1
        } else {
            self.data_type.registers()
        }
    }
}

/// A register with ABCD order and no scaling; `cdab` and `scaled` change those.
const fn reg(
    name: &'static str,
    area: Area,
    address: u16,
    data_type: DataType,
    unit: &'static str,
) -> Reg {
    Reg {
        name,
        area,
        address,
        data_type,
        unit,
        byte_order: ByteOrder::Abcd,
        scale: 1.0,
        offset: 0.0,
        writable: false,
    }
}

impl Reg {
    /// The same register with its two words swapped (CDAB).
    const fn cdab(self) -> Reg {
        Reg {
            byte_order: ByteOrder::Cdab,
            ..self
        }
    }

    /// The same register with engineering = raw × `scale`.
    const fn scaled(self, scale: f64) -> Reg {
        Reg { scale, ..self }
    }
}

const fn f32_in(name: &'static str, address: u16, unit: &'static str) -> Reg {
    reg(name, Area::Input, address, DataType::F32, unit)
}

const fn bit_in(name: &'static str, address: u16, bit: u8) -> Reg {
    reg(
        name,
        Area::Input,
        address,
        DataType::Bool { bit: Some(bit) },
        "",
    )
}

/// A 16- or 32-bit integer input register, engineering = raw × `scale`.
const fn int_in(
    name: &'static str,
    address: u16,
    data_type: DataType,
    scale: f64,
    unit: &'static str,
) -> Reg {
    reg(name, Area::Input, address, data_type, unit).scaled(scale)
}

/// A whole coil or discrete input.
const fn one_bit(name: &'static str, area: Area, address: u16) -> Reg {
    reg(name, area, address, DataType::Bool { bit: None }, "")
}

/// Pot control unit (one per cell, one unit id each).
pub mod pcu {
    use super::*;

    /// Cell voltage; above 8 V during an anode effect, ≈ 0 when the cell is cut out.
    pub const CELL_VOLTAGE_V: Reg = f32_in("cell_voltage_v", 0, "V");
    /// Pseudo-resistance (V − 1.65 V) / I, in µΩ.
    pub const PSEUDO_RESISTANCE_UOHM: Reg = f32_in("pseudo_resistance_uohm", 2, "uohm");
    /// Bath temperature, u16 in 0.1 °C.
    pub const BATH_TEMP_C: Reg = int_in("bath_temp_c", 4, DataType::U16, 0.1, "degC");
    /// Status bit 0: cell in service.
    pub const IN_SERVICE: Reg = bit_in("in_service", 5, 0);
    /// Status bit 1: anode effect in progress.
    pub const ANODE_EFFECT: Reg = bit_in("anode_effect", 5, 1);
    /// Status bit 2: cell cut out (shorting bridges in).
    pub const CUT_OUT: Reg = bit_in("cut_out", 5, 2);
    /// Alumina feeder shots since commissioning (u32, wraps).
    pub const FEED_SHOTS: Reg = int_in("feed_shots", 6, DataType::U32, 1.0, "shots");
    /// Anode effects since the controller started (u16, wraps).
    pub const ANODE_EFFECT_COUNT: Reg = int_in("anode_effect_count", 8, DataType::U16, 1.0, "");
    /// Target cell voltage, the controller's set point (f32 **CDAB**; writable by a client).
    pub const TARGET_VOLTAGE_V: Reg =
        reg("target_voltage_v", Area::Holding, 0, DataType::F32, "V").cdab();
    /// Nominal interval between feeder shots.
    pub const FEED_INTERVAL_S: Reg = reg("feed_interval_s", Area::Holding, 2, DataType::U16, "s");
    /// Anode-effect alarm contact (mirrors status bit 1).
    pub const AE_ALARM: Reg = one_bit("ae_alarm", Area::DiscreteInput, 0);
    /// Manual mode (a coil an operator sets; the model keeps regulating regardless).
    pub const MANUAL_MODE: Reg = one_bit("manual_mode", Area::Coil, 0);

    /// The whole table, in address order per area.
    pub const LAYOUT: &[Reg] = &[
        CELL_VOLTAGE_V,
        PSEUDO_RESISTANCE_UOHM,
        BATH_TEMP_C,
        IN_SERVICE,
        ANODE_EFFECT,
        CUT_OUT,
        FEED_SHOTS,
        ANODE_EFFECT_COUNT,
        TARGET_VOLTAGE_V,
        FEED_INTERVAL_S,
        AE_ALARM,
        MANUAL_MODE,
    ];
}

/// Potline rectifier with its DC and AC energy meters.
pub mod rectifier {
    use super::*;

    /// Potline (series) current.
    pub const LINE_CURRENT_KA: Reg = f32_in("line_current_ka", 0, "kA");
    /// DC line voltage ≈ Σ cell voltages + bus drop.
    pub const LINE_VOLTAGE_V: Reg = f32_in("line_voltage_v", 2, "V");
    /// DC power.
    pub const DC_POWER_MW: Reg = f32_in("dc_power_mw", 4, "MW");
    /// AC power drawn by the rectifier.
    pub const AC_POWER_MW: Reg = f32_in("ac_power_mw", 6, "MW");
    /// DC energy counter, u32 kWh, rolls over at 2^32.
    pub const DC_ENERGY_KWH: Reg = int_in("dc_energy_kwh", 8, DataType::U32, 1.0, "kWh");
    /// AC energy counter, u32 kWh, rolls over at 2^32.
    pub const AC_ENERGY_KWH: Reg = int_in("ac_energy_kwh", 10, DataType::U32, 1.0, "kWh");
    /// Rectifier efficiency, u16 in 0.01 %.
    pub const EFFICIENCY_PCT: Reg = int_in("efficiency_pct", 12, DataType::U16, 0.01, "%");
    /// Transformer oil temperature, i16 in 0.1 °C.
    pub const TRANSFORMER_OIL_TEMP_C: Reg =
        int_in("transformer_oil_temp_c", 13, DataType::I16, 0.1, "degC");
    /// Line-current set point (f32 **CDAB**; writable by a client, the model follows it).
    pub const CURRENT_SETPOINT_KA: Reg =
        reg("current_setpoint_ka", Area::Holding, 0, DataType::F32, "kA").cdab();

    /// The whole table.
    pub const LAYOUT: &[Reg] = &[
        LINE_CURRENT_KA,
        LINE_VOLTAGE_V,
        DC_POWER_MW,
        AC_POWER_MW,
        DC_ENERGY_KWH,
        AC_ENERGY_KWH,
        EFFICIENCY_PCT,
        TRANSFORMER_OIL_TEMP_C,
        CURRENT_SETPOINT_KA,
    ];
}

/// Copper flash-smelter controller.
pub mod copper_smelter {
    use super::*;

    /// Concentrate feed rate.
    pub const CONCENTRATE_FEED_TPH: Reg = f32_in("concentrate_feed_tph", 0, "t/h");
    /// Technical oxygen flow.
    pub const OXYGEN_FLOW_NM3H: Reg = f32_in("oxygen_flow_nm3h", 2, "Nm3/h");
    /// Oxygen enrichment of the process air.
    pub const OXYGEN_ENRICHMENT_PCT: Reg = f32_in("oxygen_enrichment_pct", 4, "%");
    /// Furnace (settler) temperature.
    pub const FURNACE_TEMP_C: Reg = f32_in("furnace_temp_c", 6, "degC");
    /// Matte grade (Cu in matte), f32 **CDAB**.
    pub const MATTE_GRADE_PCT: Reg =
        reg("matte_grade_pct", Area::Input, 8, DataType::F32, "%").cdab();
    /// SO2 at the acid-plant inlet, u16 in 0.01 %.
    pub const ACID_PLANT_SO2_PCT: Reg = int_in("acid_plant_so2_pct", 10, DataType::U16, 0.01, "%");
    /// Status bit 0: furnace running.
    pub const RUNNING: Reg = bit_in("running", 11, 0);
    /// Feed-rate set point (f32 CDAB; writable by a client, the model follows it).
    pub const FEED_SETPOINT_TPH: Reg =
        reg("feed_setpoint_tph", Area::Holding, 0, DataType::F32, "t/h").cdab();

    /// The whole table.
    pub const LAYOUT: &[Reg] = &[
        CONCENTRATE_FEED_TPH,
        OXYGEN_FLOW_NM3H,
        OXYGEN_ENRICHMENT_PCT,
        FURNACE_TEMP_C,
        MATTE_GRADE_PCT,
        ACID_PLANT_SO2_PCT,
        RUNNING,
        FEED_SETPOINT_TPH,
    ];
}

/// Stack continuous emission monitoring system (dry, standard-state concentrations).
pub mod cems {
    use super::*;

    /// SO2 concentration.
    pub const SO2_MG_M3: Reg = f32_in("so2_mg_m3", 0, "mg/m3");
    /// NOx (as NO2) concentration.
    pub const NOX_MG_M3: Reg = f32_in("nox_mg_m3", 2, "mg/m3");
    /// Particulate concentration.
    pub const PARTICULATE_MG_M3: Reg = f32_in("particulate_mg_m3", 4, "mg/m3");
    /// Fluoride (as F) concentration.
    pub const FLUORIDE_MG_M3: Reg = f32_in("fluoride_mg_m3", 6, "mg/m3");
    /// O2 in the flue gas.
    pub const O2_PCT: Reg = f32_in("o2_pct", 8, "%");
    /// Flue-gas flow.
    pub const FLOW_M3H: Reg = f32_in("flow_m3h", 10, "m3/h");
    /// Flue-gas temperature, i16 in 0.1 °C.
    pub const TEMPERATURE_C: Reg = int_in("temperature_c", 12, DataType::I16, 0.1, "degC");
    /// Flue-gas moisture, u16 in 0.01 %.
    pub const MOISTURE_PCT: Reg = int_in("moisture_pct", 13, DataType::U16, 0.01, "%");
    /// Status bit 0: analyser in calibration.
    pub const IN_CALIBRATION: Reg = bit_in("in_calibration", 14, 0);
    /// Status bit 1: maintenance.
    pub const IN_MAINTENANCE: Reg = bit_in("in_maintenance", 14, 1);
    /// Status bit 2: analyser fault.
    pub const ANALYSER_FAULT: Reg = bit_in("analyser_fault", 14, 2);

    /// The whole table.
    pub const LAYOUT: &[Reg] = &[
        SO2_MG_M3,
        NOX_MG_M3,
        PARTICULATE_MG_M3,
        FLUORIDE_MG_M3,
        O2_PCT,
        FLOW_M3H,
        TEMPERATURE_C,
        MOISTURE_PCT,
        IN_CALIBRATION,
        IN_MAINTENANCE,
        ANALYSER_FAULT,
    ];
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;

    /// The fields of a CSV row that the code tables also carry.
    #[derive(Debug, PartialEq)]
    struct Row {
        area: String,
        address: u16,
        data_type: String,
        byte_order: String,
        scale: f64,
        offset: f64,
        unit: String,
        bit: Option<u8>,
        writable: bool,
    }

    fn read_csv(file: &str) -> BTreeMap<String, Row> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config/maps")
            .join(file);
        let mut reader = csv::ReaderBuilder::new()
            .comment(Some(b'#'))
            .trim(csv::Trim::All)
            .from_path(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let headers = reader.headers().expect("header row").clone();
        for h in &headers {
            assert!(
                crate::config::csv_map::COLUMNS.contains(&h),
                "{file}: unknown column {h:?}"
            );
        }
        let col = |name: &str| headers.iter().position(|h| h == name);
        let mut rows = BTreeMap::new();
        for record in reader.records() {
            let record = record.expect("well-formed CSV record");
            let cell = |name: &str| {
                col(name)
                    .and_then(|i| record.get(i))
                    .unwrap_or("")
                    .to_string()
            };
            let or = |s: String, d: &str| if s.is_empty() { d.to_string() } else { s };
            let row = Row {
                area: cell("area"),
                address: cell("address").parse().expect("address"),
                data_type: cell("type"),
                byte_order: or(cell("byte_order"), "ABCD"),
                scale: or(cell("scale"), "1").parse().expect("scale"),
                offset: or(cell("offset"), "0").parse().expect("offset"),
                unit: cell("unit"),
                bit: Some(cell("bit"))
                    .filter(|b| !b.is_empty())
                    .map(|b| b.parse().expect("bit")),
                writable: or(cell("writable"), "false").parse().expect("writable"),
            };
            // poll and range must at least parse, since the agent will read them.
            let poll = cell("poll");
            if !poll.is_empty() {
                humantime::parse_duration(&poll)
                    .unwrap_or_else(|e| panic!("{file}: poll {poll:?}: {e}"));
            }
            let name = cell("name");
            assert!(
                rows.insert(name.clone(), row).is_none(),
                "{file}: duplicate {name}"
            );
        }
        rows
    }

    fn from_code(layout: &[Reg]) -> BTreeMap<String, Row> {
        layout
            .iter()
            .map(|r| {
                let bit = match r.data_type {
                    DataType::Bool { bit } => bit,
                    _ => None,
                };
                let row = Row {
                    area: r.area.as_str().to_string(),
                    address: r.address,
                    data_type: r.data_type.name().to_string(),
                    byte_order: r.byte_order.as_str().to_string(),
                    scale: r.scale,
                    offset: r.offset,
                    unit: r.unit.to_string(),
                    bit,
                    writable: r.writable,
                };
                (r.name.to_string(), row)
            })
            .collect()
    }

    #[test]
    fn csv_register_maps_agree_with_the_code_tables() {
        for (file, layout) in [
            ("pcu.csv", pcu::LAYOUT),
            ("rectifier.csv", rectifier::LAYOUT),
            ("copper_smelter.csv", copper_smelter::LAYOUT),
            ("cems.csv", cems::LAYOUT),
        ] {
            let csv = read_csv(file);
            let code = from_code(layout);
            let csv_names: Vec<_> = csv.keys().collect();
            let code_names: Vec<_> = code.keys().collect();
            assert_eq!(csv_names, code_names, "{file}: point names differ");
            for (name, row) in &code {
                assert_eq!(Some(row), csv.get(name), "{file}: point {name}");
            }
        }
    }

    #[test]
    fn layouts_do_not_overlap_except_bits_of_one_register() {
        for layout in [
            pcu::LAYOUT,
            rectifier::LAYOUT,
            copper_smelter::LAYOUT,
            cems::LAYOUT,
        ] {
            for (i, a) in layout.iter().enumerate() {
                for b in &layout[i + 1..] {
                    if a.area != b.area {
                        continue;
                    }
                    let both_bits = matches!(
                        (a.data_type, b.data_type),
                        (DataType::Bool { bit: Some(x) }, DataType::Bool { bit: Some(y) }) if x != y
                    );
                    let overlap =
                        a.address < b.address + b.width() && b.address < a.address + a.width();
                    assert!(!overlap || both_bits, "{} overlaps {}", a.name, b.name);
                }
            }
        }
    }
}
