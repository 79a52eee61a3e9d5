//! The whole agent under faults, with a simulated Modbus plant and a real Mosquitto started by
//! each test: SIGKILL of the `smeltwatch` binary while it replays a backlog, a spool that hits a
//! full disk during an outage, and completeness accounting that counts what the broker
//! acknowledged (not what was sent).

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::agent;
use common::mosquitto::{self, Mosquitto};
use common::plant::{meter_map_toml, meter_source_toml, meters};
use serde_json::Value as Json;
use smeltwatch::completeness::{Ledger, Plan, Report, State};
use smeltwatch::config::{self, SpoolConfig, Stream};
use smeltwatch::model::Timestamp;
use smeltwatch::spool::{NewRecord, Spool, StoredRecord};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

const SITE: &str = "faults";
/// Devices of the plant, each with two points polled every 100 ms.
const DEVICES: u8 = 4;

/// A plant of [`DEVICES`] meters (unit ids 1..), served until `shutdown`; returns the port.
async fn plant(shutdown: &CancellationToken) -> u16 {
    meters(DEVICES, shutdown).await
}

fn config(modbus_port: u16, mqtt_port: u16, state: &Path, replay_rate: u32) -> String {
    format!(
        r#"
site = "{SITE}"
state_dir = "{state}"
{map}{source}
[[uplinks]]
name = "plant"
type = "mqtt"
broker = "mqtt://127.0.0.1:{mqtt_port}"
keep_alive = "5s"
reconnect_min = "100ms"
reconnect_max = "500ms"
replay_rate = {replay_rate}
streams = ["live", "metrics", "events"]
"#,
        state = state.display(),
        map = meter_map_toml(true),
        source = meter_source_toml("bus", modbus_port, "100ms", "", DEVICES),
    )
}

/// A subscriber with a persistent session on a persistent broker: it gets everything the broker
/// accepted, also while it was reconnecting after a broker restart.
async fn persistent_subscriber(
    port: u16,
) -> (rumqttc::AsyncClient, mpsc::Receiver<(String, Vec<u8>)>) {
    mosquitto::subscribe_persistent(port, &format!("smeltwatch/{SITE}/#")).await
}

/// The plant's meters served until `stop_plant` (their port), a persistent broker with a
/// [`persistent_subscriber`] (its client and what it receives), and a temporary directory.
async fn persistent_plant(
    stop_plant: &CancellationToken,
) -> (
    u16,
    Mosquitto,
    rumqttc::AsyncClient,
    mpsc::Receiver<(String, Vec<u8>)>,
    tempfile::TempDir,
) {
    let modbus_port = plant(stop_plant).await;
    let broker = Mosquitto::start_persistent();
    let (sub, rx) = persistent_subscriber(broker.port).await;
    let dir = tempfile::tempdir().unwrap();
    (modbus_port, broker, sub, rx, dir)
}

/// [`config`] with a replay of 2000 records/s, parsed as `faults.toml`.
fn parsed_config(modbus_port: u16, mqtt_port: u16, state: &Path) -> config::Config {
    let toml = config(modbus_port, mqtt_port, state, 2000);
    config::parse(&toml, Path::new("faults.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// A live message: (seq, device, readings, historical).
#[derive(Debug, Clone)]
struct Live {
    seq: u64,
    device: String,
    readings: u64,
    historical: bool,
}

/// Messages received so far, sorted by kind.
#[derive(Debug, Default)]
struct Inbox {
    live: Vec<Live>,
    events: Vec<Json>,
    metrics: Vec<Json>,
}

impl Inbox {
    fn take(&mut self, topic: &str, payload: &[u8]) {
        let Ok(json) = serde_json::from_slice::<Json>(payload) else {
            return;
        };
        if topic.contains("/live/") {
            self.live.push(Live {
                seq: json["seq"].as_u64().expect("seq"),
                device: json["device"].as_str().expect("device").to_owned(),
                readings: json["readings"].as_array().expect("readings").len() as u64,
                historical: json["historical"].as_bool().unwrap_or(false),
            });
        } else if topic.contains("/events/") {
            self.events.push(json);
        } else if topic.contains("/metrics/") {
            self.metrics.push(json);
        }
    }

    fn live_seqs(&self) -> BTreeSet<u64> {
        self.live.iter().map(|m| m.seq).collect()
    }

    /// Receive until `done` holds, or panic after `within`.
    async fn until(
        &mut self,
        rx: &mut mpsc::Receiver<(String, Vec<u8>)>,
        within: Duration,
        what: &str,
        done: impl Fn(&Inbox) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !done(self) {
            match timeout(
                deadline.saturating_duration_since(Instant::now()),
                rx.recv(),
            )
            .await
            {
                Ok(Some((topic, payload))) => self.take(&topic, &payload),
                _ => panic!(
                    "timed out after {within:?} waiting for {what}: {} live (max seq {:?}), {} events",
                    self.live.len(),
                    self.live_seqs().last(),
                    self.events.len()
                ),
            }
        }
    }

    /// Take what is already queued, waiting at most `quiet` for each next message.
    async fn drain(&mut self, rx: &mut mpsc::Receiver<(String, Vec<u8>)>, quiet: Duration) {
        while let Ok(Some((topic, payload))) = timeout(quiet, rx.recv()).await {
            self.take(&topic, &payload);
        }
    }
}

/// After the agent stopped: the last seq the spool ever gave to `stream` (a probe record takes
/// the next one) and the records of `stream` still waiting. A graceful stop waits for the PUBACKs
/// in flight, not for records appended in its last moments: those wait for the next start.
fn last_seq_and_waiting(spool_file: &Path, stream: Stream) -> (u64, Vec<StoredRecord>) {
    let mut spool = Spool::open(spool_file, &SpoolConfig::default()).expect("open the spool");
    let waiting: Vec<StoredRecord> = spool
        .read_after(0, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|r| r.stream == stream)
        .collect();
    let probe = spool
        .append(vec![NewRecord {
            stream,
            topic: "probe".into(),
            body: b"{}".to_vec(),
            created: Timestamp::now(),
        }])
        .unwrap();
    (probe[0].seq - 1, waiting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_agent_during_replay_loses_nothing_after_restart() {
    let stop_plant = CancellationToken::new();
    let (modbus_port, mut broker, _sub, mut rx, dir) = persistent_plant(&stop_plant).await;
    let state = dir.path().join("state");
    let config_path = dir.path().join("faults.toml");
    // A slow replay, so that the kill lands in the middle of it.
    std::fs::write(&config_path, config(modbus_port, broker.port, &state, 25)).unwrap();

    // The broker is down while a backlog builds: 4 devices × 10 batches/s × 5 s.
    broker.stop();
    let mut agent = agent::spawn(&config_path);
    sleep(Duration::from_secs(5)).await;
    broker.restart();
    let mut inbox = Inbox::default();
    inbox
        .until(&mut rx, Duration::from_secs(30), "replay to start", |i| {
            i.live.iter().filter(|m| m.historical).count() >= 30
        })
        .await;
    agent.kill().expect("SIGKILL the agent");
    agent.wait().unwrap();
    inbox.drain(&mut rx, Duration::from_millis(300)).await;
    let at_kill = inbox.live_seqs();
    let max_at_kill = *at_kill.last().unwrap();
    let missing_at_kill = (1..=max_at_kill).filter(|s| !at_kill.contains(s)).count();
    assert!(
        missing_at_kill > 50,
        "killed while replaying: {missing_at_kill} of {max_at_kill} seqs not yet delivered"
    );

    let mut agent = agent::spawn(&config_path);
    // Everything up to some seq after the restart, without a gap.
    inbox
        .until(
            &mut rx,
            Duration::from_secs(60),
            "the backlog to drain",
            |i| {
                let seqs = i.live_seqs();
                let max = seqs.last().copied().unwrap_or(0);
                max > max_at_kill + 40 && seqs.len() as u64 == max
            },
        )
        .await;
    agent::signal(agent.id(), "-TERM");
    assert!(agent.wait().unwrap().success());
    stop_plant.cancel();

    let (last, waiting) = last_seq_and_waiting(&state.join("spool-plant.db"), Stream::Live);
    let waiting: BTreeSet<u64> = waiting.iter().map(|r| r.seq).collect();
    assert!(
        waiting.len() < 20,
        "only the last moments wait: {waiting:?}"
    );
    inbox
        .until(&mut rx, Duration::from_secs(30), "every live seq", |i| {
            let seqs = i.live_seqs();
            (1..=last).all(|s| seqs.contains(&s) || waiting.contains(&s))
        })
        .await;
    let historical = inbox.live.iter().filter(|m| m.historical).count();
    let dups = inbox.live.len() - inbox.live_seqs().len();
    eprintln!(
        "sigkill during replay: {last} live records, {missing_at_kill} undelivered at the kill, \
         {historical} replayed as historical, {dups} duplicates"
    );
    // Every record the broker was down for came as historical.
    assert!(historical >= missing_at_kill);
}

/// Current and previous hour of the persisted ledger, summed: (expected, received, delivered) per
/// device.
fn persisted_counts(cfg: &config::Config, state: &Path) -> BTreeMap<String, (u64, u64, u64)> {
    let bytes = std::fs::read(state.join("completeness.json")).expect("completeness state file");
    let st: State = serde_json::from_slice(&bytes).unwrap();
    let ledger = Ledger::restore(Plan::from_config(cfg), st);
    let now = Timestamp::now();
    let hour = smeltwatch::completeness::hour_of(now);
    let reports: Vec<Report> = [Timestamp(hour - 1), now]
        .iter()
        .filter_map(|t| ledger.hour_at(*t))
        .collect();
    let mut out = BTreeMap::new();
    for r in &reports {
        for row in r.rows.iter().filter(|r| r.stream == Stream::Live) {
            let e = out.entry(row.device.to_string()).or_insert((0, 0, 0));
            e.0 += row.expected.unwrap_or(0);
            e.1 += row.received_total();
            e.2 += row
                .delivered
                .iter()
                .filter(|(u, _)| u == "plant")
                .map(|(_, n)| n)
                .sum::<u64>();
        }
    }
    out
}

fn delivered_now(live: &smeltwatch::live::LiveState) -> (u64, u64) {
    let view = live.completeness.live_view(Timestamp::now());
    let (mut received, mut delivered) = (0, 0);
    for (_, r) in &view {
        for row in r.rows.iter().filter(|r| r.stream == Stream::Live) {
            received += row.received_total();
            delivered += row.delivered.iter().map(|(_, n)| n).sum::<u64>();
        }
    }
    (received, delivered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completeness_counts_what_the_broker_acknowledged_not_what_was_sent() {
    let stop_plant = CancellationToken::new();
    let modbus_port = plant(&stop_plant).await;
    let broker = Mosquitto::start();
    let (_sub, mut rx) = mosquitto::subscribe(broker.port, &format!("smeltwatch/{SITE}/#")).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = parsed_config(modbus_port, broker.port, &state);
    let agent = smeltwatch::app::start(cfg.clone(), Default::default())
        .await
        .unwrap();
    let live = agent.live.clone();
    let mut status = live.uplinks.lock().unwrap()[0].status.clone();

    let r = timeout(Duration::from_secs(15), async {
        while delivered_now(&live).1 == 0 {
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(r.is_ok(), "nothing was counted as delivered");

    // Frozen broker: publishes go out on the socket but no PUBACK comes back.
    broker.pause();
    timeout(Duration::from_secs(5), status.wait_for(|s| s.in_flight > 0))
        .await
        .expect("publishes in flight to the frozen broker")
        .unwrap();
    // Acks of PUBACKs that arrived before the freeze are written within 50 ms.
    sleep(Duration::from_millis(500)).await;
    let (received_0, delivered_0) = delivered_now(&live);
    sleep(Duration::from_millis(1500)).await;
    let (received_1, delivered_1) = delivered_now(&live);
    let in_flight = status.borrow().in_flight;
    broker.resume();
    assert!(received_1 > received_0, "acquisition went on");
    assert!(in_flight > 0, "records were sent and not acknowledged");
    assert_eq!(
        delivered_1, delivered_0,
        "sent but unacknowledged records are not counted as delivered"
    );

    sleep(Duration::from_secs(2)).await;
    agent.shutdown().await;
    stop_plant.cancel();

    let mut inbox = Inbox::default();
    inbox.drain(&mut rx, Duration::from_millis(500)).await;
    // The partial report of the hour went to the spool at the stop: it reached the broker, or
    // waits for the next start.
    let spooled: Vec<Json> = {
        let s = Spool::open(&state.join("spool-plant.db"), &SpoolConfig::default()).unwrap();
        s.read_after(0, usize::MAX)
            .unwrap()
            .iter()
            .filter(|r| r.stream == Stream::Metrics)
            .map(|r| smeltwatch::codec::body::to_json(&r.body).unwrap())
            .collect()
    };
    let report = inbox
        .metrics
        .iter()
        .chain(&spooled)
        .find(|m| m["calc"] == "completeness")
        .expect("a completeness report at shutdown");
    let metrics = report["metrics"].as_array().unwrap();
    assert!(
        metrics
            .iter()
            .any(|m| m["name"] == "completeness_expected_count")
    );
    let label = |m: &Json, k: &str| m["labels"][k].as_str().map(str::to_owned);
    assert!(
        metrics
            .iter()
            .all(|m| label(m, "partial").as_deref() == Some("true")),
        "{report}"
    );

    // Every live batch the subscriber got, once, per device: the delivered count is exactly
    // that, and everything received was delivered by the end.
    let mut seen = BTreeSet::new();
    let mut readings: BTreeMap<String, u64> = BTreeMap::new();
    for m in &inbox.live {
        if seen.insert(m.seq) {
            *readings.entry(m.device.clone()).or_default() += m.readings;
        }
    }
    // What the stop left in the spool: acquired, not yet delivered.
    let (_, waiting) = last_seq_and_waiting(&state.join("spool-plant.db"), Stream::Live);
    let mut pending: BTreeMap<String, u64> = BTreeMap::new();
    for r in &waiting {
        let json: Json = smeltwatch::codec::body::to_json(&r.body).unwrap();
        *pending
            .entry(json["device"].as_str().unwrap().to_owned())
            .or_default() += json["readings"].as_array().unwrap().len() as u64;
    }
    let counts = persisted_counts(&cfg, &state);
    assert_eq!(counts.len(), usize::from(DEVICES), "{counts:?}");
    for (device, (expected, received, delivered)) in &counts {
        assert_eq!(
            Some(delivered),
            readings.get(device),
            "{device}: delivered = readings the broker passed on"
        );
        let pending = pending.get(device).copied().unwrap_or(0);
        assert_eq!(*received, delivered + pending, "{device}");
        assert!(
            *expected > 0 && *expected >= received * 9 / 10,
            "{device}: {counts:?}"
        );
    }
    eprintln!("completeness: {counts:?} (expected, received, delivered)");
}

/// The value of attribute `name` of an event message (attributes are `[name, value]` pairs).
fn attribute(msg: &Json, name: &str) -> Option<i64> {
    msg["attributes"]
        .as_array()?
        .iter()
        .find(|a| a[0] == name)
        .and_then(|a| a[1].as_i64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_drops_and_reports_like_the_budget_and_the_agent_keeps_running() {
    let stop_plant = CancellationToken::new();
    let (modbus_port, mut broker, _sub, mut rx, dir) = persistent_plant(&stop_plant).await;
    let state = dir.path().join("state");
    let cfg = parsed_config(modbus_port, broker.port, &state);

    broker.stop();
    let agent = smeltwatch::app::start(cfg, Default::default())
        .await
        .unwrap();
    let spool = agent.live.uplinks.lock().unwrap()[0].spool.clone();
    // The file may grow by 6 pages (96 KiB of a new spool's 16 KiB pages) more: a disk that fills
    // up during the outage.
    let pages = spool.cap_file_pages(1).await.unwrap();
    spool.cap_file_pages(pages + 6).await.unwrap();
    let cycles = || common::agent::poll_cycles(&agent);
    let r = timeout(Duration::from_secs(30), async {
        while spool.disk_full_drops().await.unwrap() < 20 {
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(r.is_ok(), "the capped spool never filled up");
    let cycles_at_full = cycles();
    sleep(Duration::from_secs(1)).await;
    assert!(agent.is_alive(), "the agent runs on with a full disk");
    assert!(cycles() > cycles_at_full + 20, "acquisition goes on");
    let dropped_live = spool.dropped_per_stream().await.unwrap()[0].1;
    assert!(dropped_live > 0);

    broker.restart();
    let mut inbox = Inbox::default();
    inbox
        .until(&mut rx, Duration::from_secs(30), "the outage event", |i| {
            i.events.iter().any(|e| e["kind"] == "outage")
        })
        .await;
    sleep(Duration::from_secs(1)).await;
    agent.shutdown().await;
    stop_plant.cancel();
    inbox.drain(&mut rx, Duration::from_millis(500)).await;

    let spool_file = state.join("spool-plant.db");
    let per_stream = {
        let s = Spool::open(&spool_file, &SpoolConfig::default()).unwrap();
        s.dropped_per_stream()
    };
    let total_live_dropped = per_stream[0].1;
    let outage = inbox.events.iter().find(|e| e["kind"] == "outage").unwrap();
    let reported = attribute(outage, "dropped_live").expect("dropped_live");
    assert!(
        reported > 0 && reported as u64 <= total_live_dropped,
        "reported {reported}, dropped {total_live_dropped}: {outage}"
    );
    let (last, waiting) = last_seq_and_waiting(&spool_file, Stream::Live);
    let mut seqs = inbox.live_seqs();
    seqs.extend(waiting.iter().map(|r| r.seq));
    let gaps = (1..=last).filter(|s| !seqs.contains(s)).count() as u64;
    assert_eq!(
        gaps, total_live_dropped,
        "every live seq arrived except exactly the dropped ones"
    );
    eprintln!(
        "full disk: {last} live records, {total_live_dropped} dropped ({reported} reported in the \
         first outage event), drops per stream {per_stream:?}"
    );
}
