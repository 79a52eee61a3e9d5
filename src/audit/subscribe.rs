//! `smeltwatch verify --broker`: capture a live feed from an MQTT broker for the verifier.
//!
//! The capture subscribes (QoS 1, clean session) to the given topic filters and keeps every
//! message in arrival order until the duration is over or enough signed records have arrived.
//! It does not retry forever: a broker that refuses or drops the connection ends the capture with
//! an error, so a regulator's script fails loudly instead of verifying an empty feed.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};

use super::capture::{Captured, read_message};
use crate::config::TlsSettings;
use crate::mqtt::subscriber::{self, Endpoint};

/// Where and what to capture.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// CA, client certificate and SNI for TLS.
    pub tls_settings: TlsSettings,
    /// User name and password, when the broker requires them.
    pub credentials: Option<(String, Option<String>)>,
    /// Topic filters to subscribe to.
    pub topics: Vec<String>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many signed records.
    pub count: Option<usize>,
}

/// The capture failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The broker could not be reached, refused the client, or dropped the connection.
    #[error("broker {broker}: {reason}")]
    Broker {
        /// `host:port`.
        broker: String,
        /// What happened.
        reason: String,
    },
    /// The TLS settings are unusable.
    #[error("TLS: {0}")]
    Tls(#[from] crate::mqtt::tls::TlsError),
    /// Neither a duration nor a count was given: the capture would never end.
    #[error("give --duration or --count (or both): the capture needs an end")]
    Unbounded,
}

/// Subscribe and collect payloads in arrival order (see the module documentation).
pub async fn capture(opts: &CaptureOptions) -> Result<Vec<Vec<u8>>, CaptureError> {
    if opts.duration.is_none() && opts.count.is_none() {
        return Err(CaptureError::Unbounded);
    }
    let broker = format!("{}:{}", opts.host, opts.port);
    let fail = |reason: String| CaptureError::Broker {
        broker: broker.clone(),
        reason,
    };
    let endpoint = Endpoint {
        host: &opts.host,
        port: opts.port,
        tls: opts.tls.then_some(&opts.tls_settings),
        credentials: opts
            .credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_deref())),
    };
    let o = subscriber::options("verify", &endpoint)?;
    let (client, mut eventloop) = AsyncClient::builder(o).capacity(64).build();
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut messages = Vec::new();
    let mut sealed = 0usize;
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);
    loop {
        let event = tokio::select! {
            () = &mut until_deadline => break,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                for t in &opts.topics {
                    client
                        .try_subscribe(t.clone(), QoS::AtLeastOnce)
                        .map_err(|e| fail(format!("cannot subscribe to {t}: {e}")))?;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    return Err(fail("the broker refused a subscription".into()));
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if matches!(read_message(&p.payload, false), Ok(Captured::Sealed { .. })) {
                    sealed += 1;
                }
                messages.push(p.payload.to_vec());
                if opts.count.is_some_and(|n| sealed >= n) {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let why = crate::mqtt::tls::explain(&e).unwrap_or_else(|| e.to_string());
                return Err(fail(why));
            }
        }
    }
    let _ = client.try_disconnect();
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(port: u16) -> CaptureOptions {
        CaptureOptions {
            host: "127.0.0.1".into(),
            port,
            tls: false,
            tls_settings: TlsSettings::default(),
            credentials: None,
            topics: vec!["smeltwatch/#".into()],
            duration: Some(Duration::from_secs(5)),
            count: None,
        }
    }

    #[tokio::test]
    async fn a_capture_without_an_end_is_refused() {
        let mut o = opts(1);
        o.duration = None;
        assert!(matches!(capture(&o).await, Err(CaptureError::Unbounded)));
    }

    #[tokio::test]
    async fn an_unreachable_broker_ends_the_capture_with_an_error() {
        // A port nothing listens on: bind, read the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = capture(&opts(port)).await.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("broker 127.0.0.1:{port}: ")),
            "{err}"
        );
    }
}
