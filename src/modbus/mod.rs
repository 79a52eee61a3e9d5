//! Modbus acquisition: planning (pure), decoding (pure) and polling (I/O), and the guarded writes
//! the poller serves between polls.

pub mod decode;
pub mod plan;
pub mod poller;
pub mod probe;
#[cfg(test)]
mod test_fixtures;
pub mod write;
