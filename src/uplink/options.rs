//! The MQTT connection options of the uplinks that speak MQTT (plain MQTT and Sparkplug): one
//! place that turns an uplink's `[uplinks]` MQTT settings into the options of a connection.

use std::sync::Arc;

use rumqttc::{LastWill, MqttOptions};

use crate::config::MqttConfig;

/// Requests rumqttc's event loop takes from its channel per turn before it flushes the socket. Its
/// default, one, makes a turn of the loop (and a flush) per PUBLISH; a poll slot hands it a
/// burst of them, one per device. The codec still flushes whenever its buffer passes 8 KiB; the
/// uplink's stream (`mqtt::coalesce`) writes those flushes together.
const REQUEST_BATCH: usize = 32;

/// The options of a fresh connection to `cfg`'s broker: client id, TLS (`tls`, with the
/// configured server name), keep-alive, packet size limit in both directions, credentials, a clean
/// session, and `will` as the Last Will. What differs between the uplinks (the in-flight window,
/// the request channel's capacity) the caller sets on the result.
pub(super) fn mqtt_options(
    cfg: &MqttConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    will: LastWill,
) -> MqttOptions {
    let mut o = crate::mqtt::connect_options(
        cfg.client_id.clone(),
        &cfg.broker.host,
        cfg.broker.port,
        tls,
        cfg.tls_settings.server_name.as_deref(),
    );
    o.set_keep_alive(u16::try_from(cfg.keep_alive.as_secs().max(1)).unwrap_or(u16::MAX))
        .set_clean_session(true)
        .set_max_packet_size(cfg.max_packet_size, cfg.max_packet_size)
        .set_max_request_batch(REQUEST_BATCH)
        .set_last_will(will);
    // An uplink's connection writes a burst of PUBLISHes at once (`mqtt::coalesce`). It dials the
    // configured host, as `connect_options` does for a server-name override; each address the
    // name resolves to is tried in turn.
    let dial = format!("{}:{}", cfg.broker.host, cfg.broker.port);
    o.set_socket_connector(move |_host, network| {
        crate::mqtt::coalesce::connect(dial.clone(), network)
    });
    match (&cfg.username, &cfg.password) {
        (Some(user), Some(password)) => {
            o.set_credentials(user.clone(), password.0.clone());
        }
        (Some(user), None) => {
            o.set_username(user.clone());
        }
        // MQTT 3.1.1 has no password-only login: the MQTT uplink refuses such a configuration
        // when it is built.
        (None, _) => {}
    }
    o
}
