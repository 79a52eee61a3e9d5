//! Modbus acquisition: planning (pure), decoding (pure) and polling (I/O).

pub mod decode;
pub mod plan;
pub mod poller;
pub mod probe;
