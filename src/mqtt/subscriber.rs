//! MQTT options of the read-only clients (`smeltwatch tail`, `smeltwatch verify --broker`).
//!
//! Both connect the way an uplink does (same TLS settings, same SNI override) but never publish:
//! a clean session, a client id that names the tool and the process, and a packet limit large
//! enough for any batch an uplink may send.

use rumqttc::MqttOptions;

use crate::config::TlsSettings;
use crate::mqtt::tls::{TlsError, client_config};

/// Largest packet a read-only client accepts (an uplink's limit is configurable and smaller).
pub const MAX_PACKET: usize = 4 * 1024 * 1024;

/// Where and how a read-only client connects.
pub struct Endpoint<'a> {
    /// Broker host (dialled as given).
    pub host: &'a str,
    /// Broker port.
    pub port: u16,
    /// TLS settings when the broker is `mqtts://`, `None` for plain TCP.
    pub tls: Option<&'a TlsSettings>,
    /// Username and optional password.
    pub credentials: Option<(&'a str, Option<&'a str>)>,
}

/// Options for a clean-session client named `smeltwatch-<tool>-<pid>-<random>`.
///
/// With a `server_name` in the TLS settings, rustls checks that name (and sends it as SNI) while
/// the socket still dials `host`.
pub fn options(tool: &str, endpoint: &Endpoint<'_>) -> Result<MqttOptions, TlsError> {
    let client_id = format!(
        "smeltwatch-{tool}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    );
    let tls = endpoint.tls.map(client_config).transpose()?;
    let server_name = endpoint.tls.and_then(|t| t.server_name.as_deref());
    let mut o = super::connect_options(client_id, endpoint.host, endpoint.port, tls, server_name);
    o.set_keep_alive(30)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some((user, password)) = endpoint.credentials {
        match password {
            Some(p) => o.set_credentials(user.to_owned(), p.to_owned()),
            None => o.set_username(user.to_owned()),
        };
    }
    Ok(o)
}
