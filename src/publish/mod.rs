//! Uplinks and payload encoders.

pub mod encode;
pub mod mqtt;
