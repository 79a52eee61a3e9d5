//! SIGHUP reload of `smeltwatch run` with a configuration that validates but cannot start (a
//! certificate rotation with a garbage client certificate and key): the daemon keeps running the
//! previous configuration, keeps delivering, and reports the failure; a valid reload afterwards
//! still replaces the configuration.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::agent;
use common::mosquitto::{Mosquitto, subscribe};
use common::notify::NotifySocket;
use common::plant::{one_meter, one_meter_toml};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SITE: &str = "rl";
/// How long a notification may take.
const WAIT: Duration = Duration::from_secs(30);

fn config(modbus_port: u16, device: &str, state: &Path, uplink: &str) -> String {
    one_meter_toml(
        SITE,
        &state.display().to_string(),
        &format!("127.0.0.1:{modbus_port}"),
        Some("200ms"),
        device,
        uplink,
    )
}

/// Wait for a message whose topic satisfies `want`; returns its payload.
async fn await_topic(
    rx: &mut mpsc::Receiver<(String, Vec<u8>)>,
    what: &str,
    want: impl Fn(&str, &[u8]) -> bool,
) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (topic, payload) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: no such message within 30 s"))
            .expect("subscriber alive");
        if want(&topic, &payload) {
            return payload;
        }
    }
}

/// The `ts_ms` of the first reading of a live batch.
fn reading_ts_ms(payload: &[u8]) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(payload).expect("JSON batch");
    v["readings"][0]["ts_ms"]
        .as_i64()
        .expect("readings[0].ts_ms")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn assert_running(child: &mut Child, when: &str) {
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon exited {when}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_start_keeps_the_running_configuration() {
    let plant = CancellationToken::new();
    let modbus_port = one_meter(&plant).await;
    let broker = Mosquitto::start();
    let (_sub, mut rx) = subscribe(broker.port, &format!("smeltwatch/{SITE}/#")).await;

    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path());
    let cfg_path = dir.path().join("smeltwatch.toml");
    let state = dir.path().join("state");
    let plain = format!("broker = \"mqtt://127.0.0.1:{}\"", broker.port);
    std::fs::write(&cfg_path, config(modbus_port, "meter_a", &state, &plain)).unwrap();

    let mut child = agent::run_command(&cfg_path)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("RUST_LOG", "error")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert_eq!(
        notify.next_non_watchdog(WAIT).await,
        "READY=1\nSTATUS=polling"
    );
    let live_a = format!("smeltwatch/{SITE}/live/bus/meter_a");
    await_topic(&mut rx, "a first live batch", |t, _| t == live_a).await;

    // A certificate rotation gone wrong: the CA is fine, the client certificate and key are not
    // PEM. The file validates (every key is there) but the uplink cannot be built from it.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "reload CA");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let cert_file = dir.path().join("agent.crt");
    let key_file = dir.path().join("agent.key");
    std::fs::write(&cert_file, "not a certificate\n").unwrap();
    std::fs::write(&key_file, "not a key\n").unwrap();
    let tls = format!(
        "broker = \"mqtts://127.0.0.1:{}\"\n[uplinks.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        broker.port,
        ca_file.display(),
        cert_file.display(),
        key_file.display()
    );
    std::fs::write(&cfg_path, config(modbus_port, "meter_b", &state, &tls)).unwrap();
    let sighup_ms = now_ms();
    agent::signal(pid, "-HUP");

    // Reported on the uplink of the configuration that keeps running, as an event naming the file.
    let event = await_topic(&mut rx, "a reload_failed event", |t, _| {
        t == format!("smeltwatch/{SITE}/events/reload_failed")
    })
    .await;
    let event: serde_json::Value = serde_json::from_slice(&event).unwrap();
    let message = event["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cert_file") && message.contains("agent.crt"),
        "{event}"
    );
    assert_eq!(notify.next_non_watchdog(WAIT).await, "RELOADING=1");
    let status = notify.next_non_watchdog(WAIT).await;
    assert!(
        status.starts_with("READY=1\nSTATUS=polling (reload failed")
            && status.contains("cert_file"),
        "{status:?}"
    );
    assert_running(&mut child, "after a reload that could not start");

    // The previous configuration keeps delivering: batches read after the SIGHUP reach the broker.
    for _ in 0..3 {
        await_topic(&mut rx, "a live batch read after the SIGHUP", |t, p| {
            t == live_a && reading_ts_ms(p) > sighup_ms
        })
        .await;
    }
    assert_running(&mut child, "while delivering on the previous configuration");

    // A valid configuration still replaces it.
    std::fs::write(&cfg_path, config(modbus_port, "meter_c", &state, &plain)).unwrap();
    agent::signal(pid, "-HUP");
    assert_eq!(notify.next_non_watchdog(WAIT).await, "RELOADING=1");
    assert_eq!(
        notify.next_non_watchdog(WAIT).await,
        "READY=1\nSTATUS=polling (configuration reloaded)"
    );
    let live_c = format!("smeltwatch/{SITE}/live/bus/meter_c");
    await_topic(
        &mut rx,
        "a live batch of the reloaded configuration",
        |t, _| t == live_c,
    )
    .await;

    agent::signal(pid, "-TERM");
    let out = child.wait_with_output().unwrap();
    plant.cancel();
    assert!(out.status.success(), "exit status {}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("configuration reload failed") && stderr.contains("agent.crt"),
        "{stderr}"
    );
}
