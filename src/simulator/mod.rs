//! The plant simulator: Modbus TCP servers behaving like a potline, a copper smelter and a stack.

mod config;

pub use config::SimulatorConfig;
