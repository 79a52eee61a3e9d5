//! Helpers shared by smeltwatch's integration tests and benches: hand-built poll batches
//! ([`batch`]), a real Mosquitto broker on a free loopback port ([`mosquitto`]) and the end-to-end load harness ([`e2e`]) that
//! `benches/e2e` runs for figures and `tests/e2e_harness.rs` runs to check that it counts right.

pub mod batch;
pub mod e2e;
pub mod mosquitto;

/// A loopback port nothing listens on right now (bound to port 0, then released).
///
/// For a child process that must be told its port before it starts; a listener the test owns
/// binds port 0 itself instead.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The settings of an MQTT uplink to a test broker on loopback `port`, plain TCP, no login: a
/// client id unique to this run (`smeltwatch-{what}-…`), 5 s keep-alive, 1 MiB packets, 20
/// publishes in flight, reconnects after 20 ms to 100 ms, the default topics and encodings, a
/// replay rate of 2000 records/s. Tests change what they are about with struct update syntax.
pub fn mqtt_config(port: u16, what: &str) -> smeltwatch::config::MqttConfig {
    use std::time::Duration;
    smeltwatch::config::MqttConfig {
        broker: smeltwatch::config::HostPort {
            host: "127.0.0.1".into(),
            port,
        },
        tls: false,
        client_id: format!("smeltwatch-{what}-{}", fastrand::u32(..)),
        username: None,
        password: None,
        keep_alive: Duration::from_secs(5),
        max_packet_size: 1024 * 1024,
        max_inflight: 20,
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(100),
        topics: Default::default(),
        encoding: Default::default(),
        tls_settings: Default::default(),
        replay_rate: 2000,
    }
}
