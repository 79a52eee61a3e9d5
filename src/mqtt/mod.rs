//! MQTT client settings shared by every client of the agent: the uplinks, `smeltwatch tail` and
//! `smeltwatch verify --broker`.
//!
//! - [`tls`]: rustls (ring) client configuration for `mqtts://` brokers, and TLS errors told as
//!   one sentence.
//! - [`subscriber`]: MQTT options of the read-only clients (`tail`, `verify --broker`).
//! - [`connect_options`]: the broker address, TLS and server-name override of every client.
//! - [`coalesce`]: the uplinks' TCP stream, which writes a burst of PUBLISHes at once.

pub mod coalesce;
pub mod subscriber;
pub mod tls;

use std::sync::Arc;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};

/// Options that connect `client_id` to `host:port`, over TLS when `tls` is given. With a TLS
/// `server_name` override, rumqttc gets that name as its host (it is what rustls sends as SNI and
/// verifies) and the socket connector dials `host` instead. Every client of the agent (uplinks,
/// `tail`, `verify`) connects through this, so they treat a broker's name alike.
pub fn connect_options(
    client_id: String,
    host: &str,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    server_name: Option<&str>,
) -> MqttOptions {
    let sni = tls.as_ref().and(server_name).map(str::to_owned);
    let mut o = MqttOptions::new(
        client_id,
        (sni.clone().unwrap_or_else(|| host.to_owned()), port),
    );
    if let Some(config) = tls {
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(config)));
    }
    if sni.is_some() {
        let dial = format!("{host}:{port}");
        o.set_socket_connector(move |_host, network| {
            rumqttc::default_socket_connect(dial.clone(), network)
        });
    }
    o
}
