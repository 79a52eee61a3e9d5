//! `smeltwatch run` under a systemd-like supervisor: readiness, watchdog and SIGHUP reload, with
//! the notify socket played by the test.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::agent;
use common::notify::NotifySocket;
use common::plant::{one_meter, one_meter_toml};
use tokio_util::sync::CancellationToken;

fn config(modbus_port: u16, device: &str, state: &Path) -> String {
    one_meter_toml(
        "sd",
        &state.display().to_string(),
        &format!("127.0.0.1:{modbus_port}"),
        Some("200ms"),
        device,
        "broker = \"mqtt://127.0.0.1:1\"",
    )
}

/// How long a notification may take.
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_watchdog_and_reload_follow_the_notify_protocol() {
    let shutdown = CancellationToken::new();
    let modbus_port = one_meter(&shutdown).await;

    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path());
    let cfg_path = dir.path().join("smeltwatch.toml");
    let state = dir.path().join("state");
    std::fs::write(&cfg_path, config(modbus_port, "meter_a", &state)).unwrap();

    let child = agent::run_command(&cfg_path)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "error")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();

    assert_eq!(notify.next(WAIT).await, "READY=1\nSTATUS=polling");
    // The watchdog is fed at half its period while the pipeline runs.
    assert_eq!(notify.next(WAIT).await, "WATCHDOG=1");
    assert_eq!(notify.next(WAIT).await, "WATCHDOG=1");

    // An invalid configuration is rejected and the running one kept.
    std::fs::write(&cfg_path, "site = \"sd\"\n[[sources]]\nname = 1\n").unwrap();
    agent::signal(pid, "-HUP");
    assert_eq!(notify.next_non_watchdog(WAIT).await, "RELOADING=1");
    assert_eq!(
        notify.next_non_watchdog(WAIT).await,
        "READY=1\nSTATUS=polling (reload rejected: invalid configuration)"
    );
    assert_eq!(
        notify.next(WAIT).await,
        "WATCHDOG=1",
        "still alive after a rejected reload"
    );

    // A valid one replaces it.
    std::fs::write(&cfg_path, config(modbus_port, "meter_b", &state)).unwrap();
    agent::signal(pid, "-HUP");
    assert_eq!(notify.next_non_watchdog(WAIT).await, "RELOADING=1");
    assert_eq!(
        notify.next_non_watchdog(WAIT).await,
        "READY=1\nSTATUS=polling (configuration reloaded)"
    );
    assert_eq!(notify.next(WAIT).await, "WATCHDOG=1");

    agent::signal(pid, "-TERM");
    assert_eq!(notify.next_non_watchdog(WAIT).await, "STOPPING=1");
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
