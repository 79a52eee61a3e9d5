//! A corrupt spool file at start: the `smeltwatch` binary with two MQTT uplinks, one of whose spool
//! files is garbage before the start. The agent must run: the healthy uplink delivers, the other
//! one delivers from a fresh spool, the damaged file is kept beside it under a new name, and a `spool_set_aside` event, a counter and an error line report it.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::mosquitto::{self, Mosquitto};
use common::notify::NotifySocket;
use common::plant::{device, f32_words, meter_map_toml, serve};
use common::probe::get;
use common::{agent, free_port};
use serde_json::Value as Json;
use smeltwatch::simulator::UnitMap;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const SITE: &str = "aside";

fn config(modbus_port: u16, mqtt_port: u16, http_port: u16, state: &Path) -> String {
    let uplink = |name: &str| {
        format!(
            r#"
[[uplinks]]
name = "{name}"
type = "mqtt"
broker = "mqtt://127.0.0.1:{mqtt_port}"
reconnect_min = "100ms"
reconnect_max = "500ms"
streams = ["live", "events"]
[uplinks.topics]
live = "{name}/{{site}}/live/{{source}}/{{device}}"
events = "{name}/{{site}}/events/{{kind}}"
"#
        )
    };
    format!(
        r#"
site = "{SITE}"
state_dir = "{state}"

[http]
listen = "127.0.0.1:{http_port}"
{map}
[[sources]]
name = "bus"
tcp = "127.0.0.1:{modbus_port}"
timeout = "500ms"
default_poll = "100ms"

[[sources.devices]]
name = "meter"
unit_id = 1
map = "meter"
{}{}"#,
        uplink("healthy"),
        uplink("broken"),
        state = state.display(),
        map = meter_map_toml(false),
    )
}

/// Fails the test with the agent's exit status and log if it is no longer running.
fn assert_running(agent: &mut Child, log: &Path) {
    if let Some(status) = agent.try_wait().unwrap() {
        panic!(
            "the agent exited ({status}):\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// A meter holding 42.0 (f32 at input 0), served until `stop_plant`, on the returned port; and a
/// broker with a subscriber to every topic (its client and what it receives).
async fn meter_and_broker(
    stop_plant: &CancellationToken,
) -> (
    u16,
    Mosquitto,
    rumqttc::AsyncClient,
    tokio::sync::mpsc::Receiver<(String, Vec<u8>)>,
) {
    let d = device("meter");
    d.set_input(0, &f32_words(42.0));
    let modbus_port = serve(UnitMap::from([(1, d)]), stop_plant).await;
    let broker = Mosquitto::start();
    let (sub, rx) = mosquitto::subscribe(broker.port, "#").await;
    (modbus_port, broker, sub, rx)
}

/// The next message on `rx`, after waiting at most 500 ms (`None` then), while the agent runs;
/// past `deadline`, a failure that tells `seen()` (what the test has had so far) and the log.
async fn next_message(
    rx: &mut tokio::sync::mpsc::Receiver<(String, Vec<u8>)>,
    agent: &mut Child,
    log: &Path,
    deadline: Instant,
    seen: impl Fn() -> String,
) -> Option<(String, Vec<u8>)> {
    assert_running(agent, log);
    let left = deadline.saturating_duration_since(Instant::now());
    let Ok(Some(message)) = timeout(left.min(Duration::from_millis(500)), rx.recv()).await else {
        assert!(
            Instant::now() < deadline,
            "after 30 s: {}; log:\n{}",
            seen(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        return None;
    };
    Some(message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_spool_is_set_aside_and_every_uplink_delivers() {
    let stop_plant = CancellationToken::new();
    let (modbus_port, broker, _sub, mut rx) = meter_and_broker(&stop_plant).await;

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let garbage: Vec<u8> = b"this is not a SQLite database; "
        .iter()
        .copied()
        .cycle()
        .take(64 * 1024)
        .collect();
    std::fs::write(state.join("spool-broken.db"), &garbage).unwrap();
    let http_port = free_port();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, config(modbus_port, broker.port, http_port, &state)).unwrap();

    // Under systemd the spool opens ask for more start time before READY=1.
    let notify = NotifySocket::bind(dir.path());
    let log = dir.path().join("agent.log");
    let mut agent = agent::run_command(&cfg)
        .env("NO_COLOR", "1")
        .env("NOTIFY_SOCKET", &notify.path)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting smeltwatch run");

    // Both uplinks deliver live records, and the broken one reports the set-aside.
    let mut live = [0u32; 2];
    let mut event: Option<Json> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while live.iter().any(|&n| n < 5) || event.is_none() {
        let Some((topic, payload)) = next_message(&mut rx, &mut agent, &log, deadline, || {
            format!("live records healthy/broken {live:?}, set-aside event {event:?}")
        })
        .await
        else {
            continue;
        };
        if topic.starts_with(&format!("healthy/{SITE}/live/")) {
            live[0] += 1;
        } else if topic.starts_with(&format!("broken/{SITE}/live/")) {
            live[1] += 1;
        } else if topic == format!("broken/{SITE}/events/spool_set_aside") {
            event = Some(serde_json::from_slice(&payload).unwrap());
        }
    }
    assert_running(&mut agent, &log);

    // The damaged file is kept, as it was, beside the fresh spool.
    let names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let aside = names
        .iter()
        .find(|n| n.starts_with("spool-broken.db.corrupt-") && !n.ends_with("-wal"))
        .unwrap_or_else(|| panic!("no set-aside file in {names:?}"));
    assert_eq!(std::fs::read(state.join(aside)).unwrap(), garbage);
    assert!(names.iter().any(|n| n == "spool-broken.db"), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("spool-healthy.db.corrupt")),
        "{names:?}"
    );

    let event = event.unwrap();
    assert_eq!(event["subject"], "broken", "{event}");
    let attrs: Vec<(String, Json)> = serde_json::from_value(event["attributes"].clone()).unwrap();
    let attr = |name: &str| {
        attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no attribute {name} in {event}"))
    };
    assert_eq!(
        attr("spool").as_str().unwrap(),
        state.join("spool-broken.db").to_str().unwrap()
    );
    assert_eq!(
        attr("moved_to").as_str().unwrap(),
        state.join(aside).to_str().unwrap()
    );
    assert_eq!(attr("reason"), "corrupt");
    assert!(
        attr("detail").as_str().unwrap().contains("not a database"),
        "{event}"
    );

    let notes = notify.queued();
    let ready = notes
        .iter()
        .position(|n| n.contains("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1 in {notes:?}"));
    let extends = notes[..ready]
        .iter()
        .filter(|n| n.contains("EXTEND_TIMEOUT_USEC="))
        .count();
    assert_eq!(extends, 2, "one per spool before READY=1: {notes:?}");

    let metrics = get(http_port, "/metrics").await.1;
    assert!(
        metrics
            .contains("smeltwatch_spool_set_aside_total{uplink=\"broken\",reason=\"corrupt\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("smeltwatch_spool_set_aside_total{uplink=\"healthy\""),
        "{metrics}"
    );

    agent::signal(agent.id(), "-TERM");
    let status = agent.wait().unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}: {log_text}");
    assert!(
        log_text.contains("ERROR") && log_text.contains(aside.as_str()),
        "an error line names the set-aside file: {log_text}"
    );
    stop_plant.cancel();
}

/// A spool written by a newer build is not pushed aside (this build cannot read its records):
/// that uplink alone is not started, the other one delivers and reports it, `/readyz` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_stops_only_its_uplink_and_is_left_untouched() {
    let stop_plant = CancellationToken::new();
    let (modbus_port, broker, _sub, mut rx) = meter_and_broker(&stop_plant).await;

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let newer = state.join("spool-broken.db");
    smeltwatch::spool::Spool::open(&newer, &smeltwatch::config::SpoolConfig::default())
        .unwrap()
        .close()
        .unwrap();
    rusqlite::Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let before = std::fs::read(&newer).unwrap();
    let http_port = free_port();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, config(modbus_port, broker.port, http_port, &state)).unwrap();
    let log = dir.path().join("agent.log");
    let mut agent = agent::run_command(&cfg)
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting smeltwatch run");

    let mut healthy_live = 0;
    let mut event: Option<Json> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while healthy_live < 5 || event.is_none() {
        let Some((topic, payload)) = next_message(&mut rx, &mut agent, &log, deadline, || {
            format!("{healthy_live} live records, event {event:?}")
        })
        .await
        else {
            continue;
        };
        assert!(!topic.starts_with("broken/"), "{topic}");
        if topic.starts_with(&format!("healthy/{SITE}/live/")) {
            healthy_live += 1;
        } else if topic == format!("healthy/{SITE}/events/spool_open_failed") {
            event = Some(serde_json::from_slice(&payload).unwrap());
        }
    }
    let event = event.unwrap();
    assert_eq!(event["subject"], "broken", "{event}");
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .contains("schema version 99"),
        "{event}"
    );
    let readyz: Json = serde_json::from_str(&get(http_port, "/readyz").await.1).unwrap();
    assert_eq!(readyz["ready"], false, "{readyz}");
    assert!(
        readyz["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("uplink \"broken\" not started"),
        "{readyz}"
    );
    let metrics = get(http_port, "/metrics").await.1;
    assert!(
        metrics.contains("smeltwatch_spool_open_failed{uplink=\"broken\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        std::fs::read(&newer).unwrap(),
        before,
        "the file is left as it was"
    );
    let names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("corrupt")), "{names:?}");

    agent::signal(agent.id(), "-TERM");
    let status = agent.wait().unwrap();
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    stop_plant.cancel();
}
