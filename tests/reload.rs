//! SIGHUP reload of `smeltwatch run` with a configuration that validates but cannot start (a
//! certificate rotation with a garbage client certificate and key): the daemon keeps running the
//! previous configuration, keeps delivering, and reports the failure; a valid reload afterwards
//! still replaces the configuration.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::mosquitto::{Mosquitto, subscribe};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use smeltwatch::simulator::{BankSizes, Device, UnitMap, serve_tcp};
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SITE: &str = "rl";

fn config(modbus_port: u16, device: &str, state: &Path, uplink: &str) -> String {
    format!(
        r#"
site = "{SITE}"
state_dir = "{}"
[[sources]]
name = "bus"
tcp = "127.0.0.1:{modbus_port}"
default_poll = "200ms"
[[sources.devices]]
name = "{device}"
unit_id = 1
[sources.devices.points.power_mw]
area = "input"
address = 0
type = "f32"
[[uplinks]]
name = "plant"
type = "mqtt"
{uplink}
"#,
        state.display()
    )
}

/// Next notification on the notify socket that is not a watchdog ping or a start-up time
/// extension, as text.
async fn next_status(sock: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), sock.recv(&mut buf))
            .await
            .expect("a notification within 30 s")
            .unwrap();
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        // Watchdog pings, and the start-up time extensions each spool open sends.
        if msg != "WATCHDOG=1" && !msg.starts_with("EXTEND_TIMEOUT_USEC=") {
            return msg;
        }
    }
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

fn signal(pid: u32, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

fn assert_running(child: &mut Child, when: &str) {
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon exited {when}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_start_keeps_the_running_configuration() {
    let dev = Device::new(
        "meter",
        BankSizes {
            input: 4,
            ..BankSizes::default()
        },
        1,
    );
    dev.set_input(0, &[0x4081, 0x999A]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let modbus_port = listener.local_addr().unwrap().port();
    let plant = CancellationToken::new();
    tokio::spawn(serve_tcp(
        listener,
        UnitMap::from([(1, dev)]),
        plant.clone(),
    ));
    let broker = Mosquitto::start();
    let (_sub, mut rx) = subscribe(broker.port, &format!("smeltwatch/{SITE}/#")).await;

    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    let cfg_path = dir.path().join("smeltwatch.toml");
    let state = dir.path().join("state");
    let plain = format!("broker = \"mqtt://127.0.0.1:{}\"", broker.port);
    std::fs::write(&cfg_path, config(modbus_port, "meter_a", &state, &plain)).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
        .args(["run", "-c"])
        .arg(&cfg_path)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert_eq!(next_status(&sock).await, "READY=1\nSTATUS=polling");
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
    signal(pid, "-HUP");

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
    assert_eq!(next_status(&sock).await, "RELOADING=1");
    let status = next_status(&sock).await;
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
    signal(pid, "-HUP");
    assert_eq!(next_status(&sock).await, "RELOADING=1");
    assert_eq!(
        next_status(&sock).await,
        "READY=1\nSTATUS=polling (configuration reloaded)"
    );
    let live_c = format!("smeltwatch/{SITE}/live/bus/meter_c");
    await_topic(
        &mut rx,
        "a live batch of the reloaded configuration",
        |t, _| t == live_c,
    )
    .await;

    signal(pid, "-TERM");
    let out = child.wait_with_output().unwrap();
    plant.cancel();
    assert!(out.status.success(), "exit status {}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("configuration reload failed") && stderr.contains("agent.crt"),
        "{stderr}"
    );
}
