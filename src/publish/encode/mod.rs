//! Payload encoders: turn a canonical spooled [`Record`](crate::model::Record) into the bytes an
//! uplink publishes.
//!
//! Encoders are pure (no I/O, no clocks): everything they print comes from their arguments, so
//! the same record always encodes to the same bytes. Each payload carries `(site, stream, seq)` so
//! that consumers can drop duplicates (delivery is at-least-once) and spot gaps.

pub mod json;
pub mod protobuf;
pub mod sparkplug;
