//! Fixtures shared by the unit tests of the modbus module.

use crate::config::model::{DeviceConfig, PointConfig};

/// Device `name` at `unit_id` with `points` and the default read limits: 125 registers or 2000
/// bits a read, gaps of up to 10 registers read through, no labels.
pub(crate) fn device(name: &str, unit_id: u8, points: Vec<PointConfig>) -> DeviceConfig {
    DeviceConfig {
        name: name.into(),
        unit_id,
        max_registers_per_read: 125,
        max_bits_per_read: 2000,
        max_gap_registers: 10,
        single_point_reads: false,
        labels: Vec::new(),
        points,
    }
}
