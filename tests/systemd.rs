//! `smeltwatch run` under a systemd-like supervisor: readiness, watchdog and SIGHUP reload, with
//! the notify socket played by the test.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use smeltwatch::simulator::{BankSizes, Device, UnitMap, serve_tcp};
use tokio::net::UnixDatagram;
use tokio_util::sync::CancellationToken;

fn config(modbus_port: u16, device: &str, state: &Path) -> String {
    format!(
        r#"
site = "sd"
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
broker = "mqtt://127.0.0.1:1"
"#,
        state.display()
    )
}

/// The next notification as text, past the start-up time extensions each spool open sends
/// (their own test is in tests/spool_set_aside.rs).
async fn next(sock: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), sock.recv(&mut buf))
            .await
            .expect("a notification within 20 s")
            .unwrap();
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !msg.starts_with("EXTEND_TIMEOUT_USEC=") {
            return msg;
        }
    }
}

/// Skip watchdog pings until a notification that is not one.
async fn next_non_watchdog(sock: &UnixDatagram) -> String {
    loop {
        let msg = next(sock).await;
        if msg != "WATCHDOG=1" {
            return msg;
        }
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_watchdog_and_reload_follow_the_notify_protocol() {
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
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_tcp(
        listener,
        UnitMap::from([(1, dev)]),
        shutdown.clone(),
    ));

    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    let cfg_path = dir.path().join("smeltwatch.toml");
    let state = dir.path().join("state");
    std::fs::write(&cfg_path, config(modbus_port, "meter_a", &state)).unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
        .args(["run", "-c"])
        .arg(&cfg_path)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();

    assert_eq!(next(&sock).await, "READY=1\nSTATUS=polling");
    // The watchdog is fed at half its period while the pipeline runs.
    assert_eq!(next(&sock).await, "WATCHDOG=1");
    assert_eq!(next(&sock).await, "WATCHDOG=1");

    // An invalid configuration is rejected and the running one kept.
    std::fs::write(&cfg_path, "site = \"sd\"\n[[sources]]\nname = 1\n").unwrap();
    signal(pid, "-HUP");
    assert_eq!(next_non_watchdog(&sock).await, "RELOADING=1");
    assert_eq!(
        next_non_watchdog(&sock).await,
        "READY=1\nSTATUS=polling (reload rejected: invalid configuration)"
    );
    assert_eq!(
        next(&sock).await,
        "WATCHDOG=1",
        "still alive after a rejected reload"
    );

    // A valid one replaces it.
    std::fs::write(&cfg_path, config(modbus_port, "meter_b", &state)).unwrap();
    signal(pid, "-HUP");
    assert_eq!(next_non_watchdog(&sock).await, "RELOADING=1");
    assert_eq!(
        next_non_watchdog(&sock).await,
        "READY=1\nSTATUS=polling (configuration reloaded)"
    );
    assert_eq!(next(&sock).await, "WATCHDOG=1");

    signal(pid, "-TERM");
    assert_eq!(next_non_watchdog(&sock).await, "STOPPING=1");
    let out = child.wait_with_output().unwrap();
    shutdown.cancel();
    assert!(out.status.success(), "exit status {}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("configuration reload failed, keeping the running configuration")
            && stderr.contains("smeltwatch.toml"),
        "{stderr}"
    );

    // Both configurations really ran: the spool holds batches of meter_a and of meter_b.
    let spool = smeltwatch::spool::Spool::open(
        &state.join("spool-plant.db"),
        &smeltwatch::config::SpoolConfig::default(),
    )
    .unwrap();
    let topics: std::collections::BTreeSet<String> = spool
        .read_after(0, 100_000)
        .unwrap()
        .into_iter()
        .map(|r| r.topic)
        .collect();
    assert!(
        topics.contains("smeltwatch/sd/live/bus/meter_a"),
        "{topics:?}"
    );
    assert!(
        topics.contains("smeltwatch/sd/live/bus/meter_b"),
        "{topics:?}"
    );
}
