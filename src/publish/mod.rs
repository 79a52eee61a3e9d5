//! Uplinks and payload encoders.
//!
//! - [`encode`]: pure encoders from a spooled [`Record`](crate::model::Record) to payload bytes.
//! - [`topic`]: topic templates, validated when the uplink is built and rendered per record.
//! - [`mqtt`]: the MQTT uplink task: reads its spool, publishes at QoS 1 and acks the spool on
//!   PUBACK, so a record leaves the spool only once a broker has taken responsibility for it.

pub mod backoff;
pub mod body;
pub mod encode;
pub mod hj212_tcp;
pub mod mqtt;
pub mod sparkplug;
pub mod topic;
