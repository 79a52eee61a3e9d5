//! MQTT options of the read-only clients (`smeltwatch tail`, `smeltwatch verify --broker`).
//!
//! Both connect the way an uplink does (same TLS settings, same SNI override) but never publish:
//! a clean session, a client id that names the tool and the process, and a packet limit large
//! enough for any batch an uplink may send.

use rumqttc::{MqttOptions, TlsConfiguration, Transport};

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
    let sni = endpoint.tls.and_then(|t| t.server_name.clone());
    let client_id = format!(
        "smeltwatch-{tool}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    );
    let host = endpoint.host.to_owned();
    let mut o = MqttOptions::new(client_id, (sni.clone().unwrap_or(host), endpoint.port));
    if let Some(settings) = endpoint.tls {
        let config = client_config(settings)?;
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(config)));
    }
    if sni.is_some() {
        let dial = format!("{}:{}", endpoint.host, endpoint.port);
        o.set_socket_connector(move |_host, network| {
            rumqttc::default_socket_connect(dial.clone(), network)
        });
    }
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
