//! Uplinks: each reads its spool and delivers to its peer, acking a record only once the peer has
//! taken responsibility for it. The payloads come from [`crate::codec`].
//!
//! - [`status`]: the one [`UplinkStatus`] of every uplink and the [`Reporter`] each writes it
//!   through, with the hook that reports spool acks and feeds completeness;
//! - [`backoff`]: the reconnect and restart delay of every uplink and of their supervisor;
//! - [`mqtt`]: the MQTT uplink: reads its spool, publishes at QoS 1 and acks the spool on PUBACK,
//!   so a record leaves the spool only once a broker has taken responsibility for it;
//! - [`sparkplug`]: the Sparkplug B edge node;
//! - [`hj212`]: the HJ 212 TCP client to a regulator's platform.
//!
//! [`options`] builds the MQTT connection options of the two uplinks that speak MQTT.

pub mod backoff;
pub mod hj212;
pub mod mqtt;
mod options;
pub mod sparkplug;
pub mod status;

pub use status::{LinkState, Reporter, UplinkStatus};

/// Why a run of the MQTT or the Sparkplug uplink ended before its shutdown signal, which its
/// supervisor restarts it after. A lost or refused connection is not one: each uplink rides it out
/// by reconnecting, and reports it in its status. (The HJ 212 uplink ends with its own
/// [`hj212::Hj212TcpError`].)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The uplink's spool was closed under it (or its thread stopped).
    #[error("spool closed")]
    SpoolClosed,
}
