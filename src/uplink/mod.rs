//! Uplinks: each reads its spool and delivers to its peer, acking a record only once the peer has
//! taken responsibility for it. The payloads come from [`crate::codec`].
//!
//! - [`mqtt`]: the MQTT uplink task: reads its spool, publishes at QoS 1 and acks the spool on
//!   PUBACK, so a record leaves the spool only once a broker has taken responsibility for it.

pub mod backoff;
pub mod hj212_tcp;
pub mod mqtt;
pub mod sparkplug;
