//! The embedded demo broker: rumqttd 0.20 on a loopback address, for `smeltwatch demo` and tests.
//!
//! Never a production broker: rumqttd keeps everything in memory (no persistence) and its retained
//! message and Last Will support is young. It is compiled only with the default
//! cargo feature `demo-broker`.
//!
//! `rumqttd::Broker::start` blocks for the life of the broker and spawns its own threads, each with
//! a current-thread tokio runtime, so [`start`] runs it on a dedicated std thread. rumqttd has no
//! stop call: the broker lives until the process exits, and dropping [`EmbeddedBroker`] only
//! detaches it.
//!
//! # Port checks and the race they leave
//! rumqttd binds its listener inside its own thread and only logs a bind failure. [`start`]
//! therefore first binds a `std::net::TcpListener` on the address itself, so that a taken port gives
//! a clear [`BrokerError::PortInUse`], then releases it and lets rumqttd bind. Between the release
//! and rumqttd's bind another process could take the port (a window of microseconds); [`start`]
//! then still fails, because it waits until the broker accepts a TCP connection and checks that the
//! broker thread is alive.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long [`start`] waits for the broker to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest MQTT payload the embedded broker accepts (rumqttd's default of 20 KiB is too small for
/// a batch of a few hundred readings).
pub const MAX_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The address is not a loopback address; the demo broker has no authentication and must not
    /// be reachable from the network.
    #[error("the embedded broker only listens on loopback addresses, not {0}")]
    NotLoopback(SocketAddr),
    /// Something else listens on the port already.
    #[error("cannot start the embedded broker on {addr}: the port is taken ({source})")]
    PortInUse {
        /// The requested address.
        addr: SocketAddr,
        /// What the probe bind reported.
        #[source]
        source: std::io::Error,
    },
    /// The rumqttd configuration was rejected (a bug in this module).
    #[error("embedded broker configuration: {0}")]
    Config(String),
    /// The broker thread could not be spawned.
    #[error("cannot spawn the embedded broker thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The broker did not accept connections in time (or its thread ended).
    #[error("the embedded broker on {addr} did not come up: {detail}")]
    NotReady {
        /// The requested address.
        addr: SocketAddr,
        /// What was observed.
        detail: String,
    },
}

/// A running embedded broker. Dropping it detaches the broker thread; the broker lives until the
/// process exits (rumqttd cannot be stopped).
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    _thread: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// The address the broker listens on (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Start rumqttd on `addr` (a loopback address; port 0 picks a free port) with MQTT 3.1.1, anonymous
/// access and packet sizes raised to [`MAX_PAYLOAD_BYTES`]. Returns once the broker accepts TCP
/// connections.
pub fn start(addr: SocketAddr) -> Result<EmbeddedBroker, BrokerError> {
    if !addr.ip().is_loopback() {
        return Err(BrokerError::NotLoopback(addr));
    }
    let addr = {
        let probe =
            TcpListener::bind(addr).map_err(|source| BrokerError::PortInUse { addr, source })?;
        probe
            .local_addr()
            .map_err(|source| BrokerError::PortInUse { addr, source })?
        // The probe listener is dropped here and the port released for rumqttd.
    };
    let config = broker_config(addr)?;
    let thread = std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })
        .map_err(BrokerError::Thread)?;

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if thread.is_finished() {
            return Err(BrokerError::NotReady {
                addr,
                detail: "the broker thread ended (port taken after the probe?)".into(),
            });
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(EmbeddedBroker {
                addr,
                _thread: thread,
            });
        }
        if Instant::now() >= deadline {
            return Err(BrokerError::NotReady {
                addr,
                detail: format!("no TCP connection accepted within {READY_TIMEOUT:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn broker_config(addr: SocketAddr) -> Result<rumqttd::Config, BrokerError> {
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1024
max_outgoing_packet_count = 200
max_segment_size = 16777216
max_segment_count = 4

[v4.1]
name = "demo-v4"
listen = "{addr}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {MAX_PAYLOAD_BYTES}
max_inflight_count = 200
dynamic_filters = true
"#
    );
    toml::from_str(&text).map_err(|e| BrokerError::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_listens_only_where_asked() {
        let addr: SocketAddr = "127.0.0.1:18999".parse().unwrap();
        let cfg = broker_config(addr).unwrap();
        let v4 = cfg.v4.unwrap();
        assert_eq!(v4.len(), 1);
        let server = v4.values().next().unwrap();
        assert_eq!(server.listen, addr);
        assert!(server.connections.max_payload_size >= 1024 * 1024);
    }

    #[test]
    fn refuses_non_loopback_and_taken_ports() {
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(matches!(start(any), Err(BrokerError::NotLoopback(_))));
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = start(addr).unwrap_err();
        assert!(matches!(err, BrokerError::PortInUse { .. }), "{err}");
        assert!(err.to_string().contains("the port is taken"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_publishes_and_another_receives_through_it() {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, PublishOptions, QoS};

        let broker = start("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = broker.local_addr().port();
        assert_ne!(port, 0);
        let client = |id: &str| {
            let mut o = MqttOptions::new(id, ("127.0.0.1".to_owned(), port));
            o.set_max_packet_size(MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES);
            AsyncClient::builder(o).capacity(10).build()
        };

        let (sub, mut sub_loop) = client("sub");
        let (got_tx, mut got_rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok(ev) = sub_loop.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = ev {
                    let _ = got_tx.send((p.topic.to_vec(), p.payload.len())).await;
                }
            }
        });
        sub.subscribe_tracked("smeltwatch/#", QoS::AtLeastOnce)
            .await
            .unwrap()
            .wait_async()
            .await
            .unwrap();

        let (publisher, mut pub_loop) = client("pub");
        tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
        // Larger than rumqttd's and rumqttc's 10-20 KiB defaults.
        let payload = vec![b'x'; 300 * 1024];
        publisher
            .publish_tracked(
                "smeltwatch/demo/live/a/b",
                payload,
                PublishOptions::new(QoS::AtLeastOnce),
            )
            .await
            .unwrap()
            .wait_async()
            .await
            .unwrap();
        let (topic, len) = tokio::time::timeout(Duration::from_secs(10), got_rx.recv())
            .await
            .expect("delivery within 10 s")
            .unwrap();
        assert_eq!(topic, b"smeltwatch/demo/live/a/b");
        assert_eq!(len, 300 * 1024);
    }
}
