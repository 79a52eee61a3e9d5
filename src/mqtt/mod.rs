//! MQTT client settings shared by every client of the agent: the uplinks, `smeltwatch tail` and
//! `smeltwatch verify --broker`.
//!
//! - [`tls`]: rustls (ring) client configuration for `mqtts://` brokers, and TLS errors told as
//!   one sentence.
//! - [`subscriber`]: MQTT options of the read-only clients (`tail`, `verify --broker`).

pub mod subscriber;
pub mod tls;
