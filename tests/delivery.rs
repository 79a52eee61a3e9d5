//! Delivery under faults, against a real Mosquitto started by each test: a broker outage under
//! continuous load, a flapping link, a spool budget that overflows during an outage, the
//! keep-alive blind spot (a frozen broker), and two uplinks of one agent with one broker down.
//!
//! Outages and flaps are made by a TCP relay between the uplink and Mosquitto that can cut the
//! link ([`Link`]); the test subscriber stays connected to the broker, so it sees exactly what the
//! broker accepted. The keep-alive test freezes the broker itself (SIGSTOP) and then SIGKILLs and
//! restarts it; there the subscriber has a persistent session on a broker with persistence.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::agent;
use common::mosquitto::{self, CliWitness, Mosquitto};
use common::mqtt_config;
use common::plant::mqtt_uplink_toml;
use common::records::{queued, stack_aggregate};
use common::status::wait_status;
use common::task::stop_and_join;
use serde_json::Value as Json;
use smeltwatch::config::{MqttConfig, SpoolConfig, Stream, UplinkConfig, UplinkKind};
use smeltwatch::model::{
    Event, EventPhase, Period, Quality, Reading, ReadingBatch, Record, Timestamp, Value,
};
use smeltwatch::simulator::{BankSizes, Device, UnitMap, serve_tcp};
use smeltwatch::spool::{NewRecord, SpoolHandle};
use smeltwatch::uplink::mqtt::MqttUplink;
use smeltwatch::uplink::{LinkState, UplinkStatus};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::block_in_place;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

const SITE: &str = "delivery";
/// Length of the broker outage under load: the minute the issue asks for (a backlog of about
/// 10 000 records at the load below).
const OUTAGE: Duration = Duration::from_secs(60);
/// Flapping: the broker is up for `FLAP_UP`, down for `FLAP_DOWN`, for `FLAP_TOTAL`.
const FLAP_UP: Duration = Duration::from_millis(1200);
const FLAP_DOWN: Duration = Duration::from_millis(800);
const FLAP_TOTAL: Duration = Duration::from_secs(60);
/// One live batch and one event every this often while load runs.
const LOAD_PERIOD: Duration = Duration::from_millis(10);
/// Replay pacing used by the outage test (records/s).
const REPLAY_RATE: u32 = 400;

/// A TCP relay between the uplink and the broker that can cut the link: while down it closes
/// every relayed connection and every new one at once, as a failed WAN link or a broker outage
/// looks from the agent. The test subscriber talks to the broker directly, so it sees exactly what
/// the broker accepted.
struct Link {
    port: u16,
    up: watch::Sender<bool>,
}

impl Link {
    async fn start(broker_port: u16) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("relay addr").port();
        let (up, up_rx) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*up_rx.borrow() {
                    drop(client);
                    continue;
                }
                let mut cut = up_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut broker) = TcpStream::connect(("127.0.0.1", broker_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Link { port, up }
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

/// An MQTT uplink of the site to the broker at `port` on `spool` ([`uplink_config`]), running:
/// its status, what stops it and its task.
fn spawn_uplink(
    port: u16,
    spool: &SpoolHandle,
    max_bytes: u64,
    replay_rate: u32,
) -> (
    watch::Receiver<UplinkStatus>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let uplink = MqttUplink::new(
        SITE,
        &uplink_config(port, max_bytes, replay_rate),
        spool.clone(),
    )
    .unwrap();
    let status = uplink.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(uplink.run(stop.clone()));
    (status, stop, task)
}

fn uplink_config(port: u16, max_bytes: u64, replay_rate: u32) -> UplinkConfig {
    UplinkConfig {
        name: "plant".into(),
        kind: UplinkKind::Mqtt(MqttConfig {
            keep_alive: Duration::from_secs(2),
            max_inflight: 32,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(300),
            replay_rate,
            ..mqtt_config(port, "delivery")
        }),
        streams: vec![Stream::Live, Stream::Events, Stream::Emissions],
        spool: SpoolConfig {
            max_bytes,
            ..SpoolConfig::default()
        },
    }
}

fn live(i: u64) -> Record {
    let ts = Timestamp::now();
    Record::Batch(ReadingBatch {
        source: "line1".into(),
        device: format!("pot_{:03}", i % 4).into(),
        unit_id: 10,
        poll_interval_ms: 1000,
        scheduled: ts,
        readings: vec![Reading {
            point: "cell_voltage_v".into(),
            value: Some(Value::Float(4.0 + (i % 100) as f64 / 1000.0)),
            unit: "V".into(),
            quality: Quality::Good,
            ts,
        }],
    })
}

fn event(i: u64) -> Record {
    Record::Event(Event {
        kind: "anode_effect".into(),
        subject: format!("potline1/pot_{:03}", i % 4).into(),
        phase: EventPhase::Instant,
        ts: Timestamp::now(),
        attributes: vec![("peak_voltage_v".into(), Value::Float(30.0))],
        message: format!("test event {i}"),
    })
}

fn emission(i: u64) -> Record {
    let start = Timestamp(1_764_300_000_000 + i as i64 * 60_000);
    Record::Aggregate(stack_aggregate(
        "so2_mg_m3",
        Period::Minute,
        start.0,
        start.0 + 60_000,
        120.0,
        20.0,
    ))
}

fn new_record(r: &Record) -> NewRecord {
    queued(r.stream(), SITE, r)
}

/// A delivered message, parsed.
#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    stream: String,
    seq: u64,
    historical: bool,
    json: Json,
}

fn parse(topic: String, payload: &[u8]) -> Option<Msg> {
    let json: Json = serde_json::from_slice(payload).expect("JSON payload");
    let seq = json["seq"].as_u64()?; // the retained status has no seq
    Some(Msg {
        topic,
        stream: json["stream"].as_str().expect("stream").to_owned(),
        seq,
        historical: json["historical"].as_bool().unwrap_or(false),
        json,
    })
}

async fn subscriber(port: u16) -> (rumqttc::AsyncClient, mpsc::Receiver<(String, Vec<u8>)>) {
    mosquitto::subscribe(port, &format!("smeltwatch/{SITE}/#")).await
}

async fn persistent_subscriber(
    port: u16,
) -> (rumqttc::AsyncClient, mpsc::Receiver<(String, Vec<u8>)>) {
    mosquitto::subscribe_persistent(port, &format!("smeltwatch/{SITE}/#")).await
}

/// Seqs of `1..=expected[stream]` not in `got`, per stream (streams with none missing left out).
fn missing_seqs(got: &[Msg], expected: &BTreeMap<String, u64>) -> BTreeMap<String, Vec<u64>> {
    expected
        .iter()
        .filter_map(|(stream, n)| {
            let seen: BTreeSet<u64> = got
                .iter()
                .filter(|m| &m.stream == stream)
                .map(|m| m.seq)
                .collect();
            let missing: Vec<u64> = (1..=*n).filter(|s| !seen.contains(s)).collect();
            (!missing.is_empty()).then(|| (stream.clone(), missing))
        })
        .collect()
}

/// Receive until every seq in `1..=expected[stream]` of every stream was seen, or `deadline`
/// passed; returns what is still missing then. Each message costs O(log n): a backlog of ten
/// thousand records must not make the collector itself the bottleneck.
async fn try_collect_all(
    rx: &mut mpsc::Receiver<(String, Vec<u8>)>,
    got: &mut Vec<Msg>,
    expected: &BTreeMap<String, u64>,
    deadline: Duration,
) -> BTreeMap<String, Vec<u64>> {
    // An expected (stream, seq) seen for the first time.
    let first_sight = |m: &Msg, seen: &mut BTreeSet<(String, u64)>| {
        expected
            .get(&m.stream)
            .is_some_and(|n| (1..=*n).contains(&m.seq))
            && seen.insert((m.stream.clone(), m.seq))
    };
    let mut seen = BTreeSet::new();
    let mut remaining: u64 = expected.values().sum();
    for m in got.iter() {
        if first_sight(m, &mut seen) {
            remaining -= 1;
        }
    }
    let _ = timeout(deadline, async {
        while remaining > 0 {
            let (topic, payload) = rx.recv().await.expect("subscriber alive");
            if let Some(m) = parse(topic, &payload) {
                if first_sight(&m, &mut seen) {
                    remaining -= 1;
                }
                got.push(m);
            }
        }
    })
    .await;
    missing_seqs(got, expected)
}

/// A summary of missing seqs for a failure message: count and the first ten, per stream.
fn summary(missing: &BTreeMap<String, Vec<u64>>) -> Vec<(&String, usize, &[u64])> {
    missing
        .iter()
        .map(|(s, v)| (s, v.len(), &v[..v.len().min(10)]))
        .collect()
}

/// Receive until every seq in `1..=expected[stream]` of every stream was seen.
async fn collect_all(
    rx: &mut mpsc::Receiver<(String, Vec<u8>)>,
    got: &mut Vec<Msg>,
    expected: &BTreeMap<String, u64>,
    deadline: Duration,
) {
    let missing = try_collect_all(rx, got, expected, deadline).await;
    assert!(
        missing.is_empty(),
        "records missing after {deadline:?}: {:?}",
        summary(&missing)
    );
}

/// Last seq appended per stream, and the (stream, seq) appended while the link was down.
type LoadResult = (BTreeMap<String, u64>, BTreeSet<(String, u64)>);

/// Continuous load: one live batch and one event every [`LOAD_PERIOD`] until `stop`. Seqs appended
/// while `down` is set are collected per stream. Returns (appended per stream, seqs while down).
fn spawn_load(
    spool: SpoolHandle,
    stop: CancellationToken,
    down: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<LoadResult> {
    tokio::spawn(async move {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut while_down = BTreeSet::new();
        let mut i = 0u64;
        while !stop.is_cancelled() {
            i += 1;
            let was_down = down.load(Ordering::SeqCst);
            let appended = spool
                .append(vec![new_record(&live(i)), new_record(&event(i))])
                .await
                .expect("append");
            for a in appended {
                let stream = a.stream.as_str().to_owned();
                counts.insert(stream.clone(), a.seq);
                if was_down && down.load(Ordering::SeqCst) {
                    while_down.insert((stream, a.seq));
                }
            }
            sleep(LOAD_PERIOD).await;
        }
        (counts, while_down)
    })
}

/// What the status showed during a run.
#[derive(Debug, Default, Clone)]
struct Observed {
    max_backlog: u64,
    max_rate_per_s: u64,
    max_oldest_age: Duration,
}

fn watch_status(mut rx: watch::Receiver<UplinkStatus>) -> Arc<Mutex<Observed>> {
    let seen = Arc::new(Mutex::new(Observed::default()));
    let out = seen.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let s = rx.borrow_and_update().clone();
            let mut o = out.lock().unwrap();
            o.max_backlog = o.max_backlog.max(s.backlog_records);
            o.max_rate_per_s = o.max_rate_per_s.max(s.replay_rate_per_s);
            if let Some(age) = s.backlog_age(Timestamp::now()) {
                o.max_oldest_age = o.max_oldest_age.max(age);
            }
        }
    });
    seen
}

/// Where records that the test subscriber never received went: still in the spool (never acked:
/// the uplink did not send them, or got no PUBACK), or acked (the broker acknowledged them), and
/// whether the independent `mosquitto_sub` witness received them.
async fn diagnose_loss(
    missing: &BTreeMap<String, Vec<u64>>,
    spool: &SpoolHandle,
    witness: Option<&CliWitness>,
    status: &UplinkStatus,
) -> String {
    let in_spool: BTreeSet<(String, u64)> = spool
        .read_after(0, 10_000_000)
        .await
        .expect("read the spool")
        .into_iter()
        .map(|r| (r.stream.as_str().to_owned(), r.seq))
        .collect();
    let witnessed: Option<BTreeSet<(String, u64)>> = witness.map(|w| {
        w.payloads()
            .into_iter()
            .filter_map(|p| parse(String::new(), p.as_bytes()))
            .map(|m| (m.stream, m.seq))
            .collect()
    });
    let mut lines = vec![format!(
        "records missing at the test subscriber: {:?}",
        summary(missing)
    )];
    for (stream, seqs) in missing {
        let key = |seq: &u64| (stream.clone(), *seq);
        let still = seqs.iter().filter(|q| in_spool.contains(&key(q))).count();
        let seen = witnessed
            .as_ref()
            .map(|w| seqs.iter().filter(|q| w.contains(&key(q))).count());
        lines.push(format!(
            "  {stream}: {} missing, {still} still in the spool, {} acked; the mosquitto_sub \
             witness received {}",
            seqs.len(),
            seqs.len() - still,
            seen.map_or("(no witness)".to_owned(), |n| n.to_string())
        ));
    }
    lines.push(format!("  uplink status: {status:?}"));
    lines.join("\n")
}

fn assert_no_gaps(got: &[Msg], expected: &BTreeMap<String, u64>) {
    for (stream, n) in expected {
        let seen: BTreeSet<u64> = got
            .iter()
            .filter(|m| &m.stream == stream)
            .map(|m| m.seq)
            .collect();
        assert_eq!(
            seen,
            (1..=*n).collect::<BTreeSet<_>>(),
            "stream {stream}: every seq exactly once at least, none beyond"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_under_load_loses_nothing_and_replays_the_backlog_as_historical() {
    let broker = Mosquitto::start();
    let link = Link::start(broker.port).await;
    // A persistent session: should the test subscriber itself lose its connection while the
    // backlog floods in, the broker keeps its messages until it is back. The assertions are about
    // what the broker accepted.
    let (_sub, mut rx) = persistent_subscriber(broker.port).await;
    // A second subscriber of another make (libmosquitto): if seqs are missing, the failure says
    // whether the broker delivered them to it, and whether they are still in the spool.
    let witness = CliWitness::start(broker.port, &format!("smeltwatch/{SITE}/#"));
    let dir = tempfile::tempdir().unwrap();
    let spool = SpoolHandle::open(&dir.path().join("spool.db"), &SpoolConfig::default()).unwrap();
    let uplink = MqttUplink::new(
        SITE,
        &uplink_config(link.port, SpoolConfig::default().max_bytes, REPLAY_RATE),
        spool.clone(),
    )
    .unwrap();
    let mut status = uplink.status();
    let observed = watch_status(uplink.status());
    let stop_uplink = CancellationToken::new();
    let task = tokio::spawn(uplink.run(stop_uplink.clone()));
    let stop_load = CancellationToken::new();
    let down = Arc::new(AtomicBool::new(false));
    let load = spawn_load(spool.clone(), stop_load.clone(), down.clone());

    wait_status(&mut status, "connected", Duration::from_secs(10), |s| {
        s.state == LinkState::Connected && s.acked_total > 100
    })
    .await;
    link.cut();
    down.store(true, Ordering::SeqCst);
    sleep(OUTAGE).await;
    down.store(false, Ordering::SeqCst);
    let back = Instant::now();
    let connects_before = status.borrow().connects;
    link.restore();
    wait_status(&mut status, "reconnected", Duration::from_secs(10), |s| {
        s.connects > connects_before
    })
    .await;
    // Keep the load on while the backlog drains, then stop it.
    wait_status(&mut status, "backlog shown", Duration::from_secs(10), |s| {
        s.backlog_records > 0
    })
    .await;
    wait_status(
        &mut status,
        "backlog drained",
        Duration::from_secs(120),
        |s| s.backlog_records == 0 && s.state == LinkState::Connected,
    )
    .await;
    let drained_after = back.elapsed();
    sleep(Duration::from_millis(500)).await;
    stop_load.cancel();
    let (expected, while_down) = load.await.unwrap();
    let total: u64 = expected.values().sum();
    // The spool lets a record go only on its PUBACK: once all are acked, the broker had them all.
    let acked_all = timeout(
        Duration::from_secs(60),
        status.wait_for(|s| s.acked_total >= total),
    )
    .await
    .is_ok();

    let mut got = Vec::new();
    let wait = Duration::from_secs(if acked_all { 30 } else { 5 });
    let missing = try_collect_all(&mut rx, &mut got, &expected, wait).await;
    if !missing.is_empty() {
        panic!(
            "{}\n  messages received but not yet processed by the test: {}",
            diagnose_loss(&missing, &spool, witness.as_ref(), &status.borrow()).await,
            rx.len()
        );
    }
    assert_no_gaps(&got, &expected);
    // Everything appended while the broker was down was replayed as historical.
    for m in &got {
        if while_down.contains(&(m.stream.clone(), m.seq)) {
            assert!(
                m.historical,
                "{} seq {} should be historical",
                m.stream, m.seq
            );
        }
    }
    assert!(
        while_down.len() as u64 > OUTAGE.as_secs() * 100,
        "load ran during the outage: {} records",
        while_down.len()
    );
    // Fresh data after the reconnect was not held behind the backlog, nor marked historical.
    let fresh_after = got
        .iter()
        .filter(|m| !m.historical && !while_down.contains(&(m.stream.clone(), m.seq)))
        .count();
    assert!(
        fresh_after > 0,
        "fresh records after the outage are not historical"
    );
    // Fresh data went out beside the backlog, not behind it.
    let last_down_seq = |stream: &str| {
        while_down
            .iter()
            .filter(|(s, _)| s == stream)
            .map(|(_, seq)| *seq)
            .max()
            .unwrap_or(0)
    };
    let first_fresh = got
        .iter()
        .position(|m| m.seq > last_down_seq(&m.stream))
        .expect("records appended after the outage arrived");
    let last_historical = got
        .iter()
        .rposition(|m| m.historical)
        .expect("historical records");
    assert!(
        first_fresh < last_historical,
        "fresh data waited for the whole backlog ({first_fresh} >= {last_historical})"
    );
    // Paced: the backlog took about backlog / replay_rate to drain.
    let paced = Duration::from_secs_f64(while_down.len() as f64 / f64::from(REPLAY_RATE));
    assert!(
        drained_after >= paced.mul_f64(0.7),
        "backlog of {} drained in {drained_after:?}, faster than {REPLAY_RATE}/s",
        while_down.len()
    );
    let o = observed.lock().unwrap().clone();
    assert!(
        o.max_backlog as usize >= while_down.len(),
        "status showed the backlog: {o:?}"
    );
    assert!(
        o.max_oldest_age >= OUTAGE / 2,
        "status showed the oldest age: {o:?}"
    );
    assert!(
        o.max_rate_per_s > 0 && o.max_rate_per_s <= u64::from(REPLAY_RATE) * 3 / 2,
        "drain rate shown and paced at about {REPLAY_RATE}/s: {o:?}"
    );
    let dups = got.len()
        - got
            .iter()
            .map(|m| (m.stream.clone(), m.seq))
            .collect::<BTreeSet<_>>()
            .len();
    eprintln!(
        "outage {OUTAGE:?}: {} records appended ({} while down), {} delivered, {dups} duplicates, \
         backlog drained {drained_after:?} after the restart, status {o:?}",
        expected.values().sum::<u64>(),
        while_down.len(),
        got.len()
    );
    stop_and_join(&stop_uplink, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_link_loses_nothing() {
    let broker = Mosquitto::start();
    let link = Link::start(broker.port).await;
    let (_sub, mut rx) = subscriber(broker.port).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = SpoolHandle::open(&dir.path().join("spool.db"), &SpoolConfig::default()).unwrap();
    let (mut status, stop_uplink, task) =
        spawn_uplink(link.port, &spool, SpoolConfig::default().max_bytes, 2000);
    let stop_load = CancellationToken::new();
    let load = spawn_load(
        spool.clone(),
        stop_load.clone(),
        Arc::new(AtomicBool::new(false)),
    );

    let start = Instant::now();
    let mut flaps = 0;
    while start.elapsed() < FLAP_TOTAL {
        sleep(FLAP_UP).await;
        link.cut();
        sleep(FLAP_DOWN).await;
        link.restore();
        flaps += 1;
    }
    stop_load.cancel();
    let (expected, _) = load.await.unwrap();
    let total: u64 = expected.values().sum();
    let s = wait_status(&mut status, "spool drained", Duration::from_secs(60), |s| {
        s.state == LinkState::Connected && s.acked_total >= total
    })
    .await;
    let mut got = Vec::new();
    collect_all(&mut rx, &mut got, &expected, Duration::from_secs(60)).await;
    assert_no_gaps(&got, &expected);
    assert!(s.connects >= 4, "the link really flapped: {s:?}");
    eprintln!(
        "flapping: {flaps} flaps, {} connects, {total} records, {} delivered",
        s.connects,
        got.len()
    );
    stop_and_join(&stop_uplink, task).await;
}

/// The value of attribute `name` of an event message (attributes are `[name, value]` pairs).
fn attribute<'a>(msg: &'a Json, name: &str) -> &'a Json {
    msg["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .find(|pair| pair[0] == name)
        .map(|pair| &pair[1])
        .unwrap_or_else(|| panic!("no attribute {name} in {msg}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_budget_keeps_every_emission_and_reports_exact_drops() {
    const LIVE: u64 = 300;
    const EMISSIONS: u64 = 30;
    let broker = Mosquitto::start();
    let link = Link::start(broker.port).await;
    let (_sub, mut rx) = subscriber(broker.port).await;
    link.cut();

    let dir = tempfile::tempdir().unwrap();
    let budget = 40_000;
    let spool_cfg = SpoolConfig {
        max_bytes: budget,
        ..SpoolConfig::default()
    };
    let spool = SpoolHandle::open(&dir.path().join("spool.db"), &spool_cfg).unwrap();
    let (mut status, stop_uplink, task) = spawn_uplink(link.port, &spool, budget, 2000);

    // The outage: interleaved live batches and emission records, far more than the budget holds.
    for i in 1..=LIVE {
        let mut batch = vec![new_record(&live(i))];
        if i % (LIVE / EMISSIONS) == 0 {
            batch.push(new_record(&emission(i / (LIVE / EMISSIONS))));
        }
        spool.append(batch).await.unwrap();
    }
    let stats = spool.stats().await.unwrap();
    let dropped: BTreeMap<Stream, u64> = spool
        .dropped_per_stream()
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(stats.bytes <= budget, "{stats:?}");
    assert!(
        dropped[&Stream::Live] > 0,
        "the budget overflowed: {dropped:?}"
    );
    assert_eq!(dropped[&Stream::Emissions], 0, "{dropped:?}");
    assert_eq!(stats.dropped, dropped[&Stream::Live]);

    // The link comes back. Appending the outage event to the full spool may itself evict a few
    // more live records: those are reported by the next outage event, after the next reconnect.
    link.restore();
    wait_spool_empty(&spool).await;
    let connects = status.borrow().connects;
    link.cut();
    wait_status(&mut status, "link lost", Duration::from_secs(10), |s| {
        s.state != LinkState::Connected
    })
    .await;
    link.restore();
    wait_status(&mut status, "reconnected", Duration::from_secs(10), |s| {
        s.connects > connects
    })
    .await;
    wait_spool_empty(&spool).await;
    let final_dropped: BTreeMap<Stream, u64> = spool
        .dropped_per_stream()
        .await
        .unwrap()
        .into_iter()
        .collect();
    let dropped_live = final_dropped[&Stream::Live];
    assert_eq!(final_dropped[&Stream::Emissions], 0);
    let outage_events = 1 + u64::from(dropped_live > dropped[&Stream::Live]);

    let mut got = Vec::new();
    let expected_live = LIVE - dropped_live;
    let r = timeout(Duration::from_secs(30), async {
        loop {
            let n = |stream: &str| got.iter().filter(|m: &&Msg| m.stream == stream).count() as u64;
            if n("live") >= expected_live
                && n("emissions") >= EMISSIONS
                && n("events") >= outage_events
            {
                return;
            }
            let (topic, payload) = rx.recv().await.expect("subscriber alive");
            if let Some(m) = parse(topic, &payload) {
                got.push(m);
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "not everything arrived: {} messages, streams {:?}, expected {expected_live} live and \
         {outage_events} events",
        got.len(),
        got.iter().fold(BTreeMap::<&str, u64>::new(), |mut m, g| {
            *m.entry(g.topic.as_str()).or_default() += 1;
            m
        })
    );
    // Nothing more: no further outage event for drops already reported.
    let extra = timeout(Duration::from_secs(1), rx.recv()).await;
    assert!(extra.is_err(), "unexpected message: {extra:?}");

    let emissions: BTreeSet<u64> = got
        .iter()
        .filter(|m| m.stream == "emissions")
        .map(|m| m.seq)
        .collect();
    assert_eq!(emissions, (1..=EMISSIONS).collect(), "emissions complete");
    let live_seqs: BTreeSet<u64> = got
        .iter()
        .filter(|m| m.stream == "live")
        .map(|m| m.seq)
        .collect();
    // The oldest live records were dropped: the survivors are exactly the newest ones.
    assert_eq!(
        live_seqs,
        (dropped_live + 1..=LIVE).collect(),
        "live survivors"
    );
    let outage: Vec<&Msg> = got
        .iter()
        .filter(|m| m.topic == format!("smeltwatch/{SITE}/events/outage"))
        .collect();
    assert_eq!(outage.len() as u64, outage_events, "{outage:?}");
    let first = &outage[0].json;
    assert_eq!(first["kind"], "outage");
    assert_eq!(first["subject"], "plant");
    assert_eq!(
        attribute(first, "dropped_live"),
        &Json::from(dropped[&Stream::Live]),
        "the drops of the outage, exactly"
    );
    assert_eq!(attribute(first, "dropped_emissions"), &Json::from(0));
    assert!(attribute(first, "outage_start").is_string());
    assert!(
        !outage[0].historical,
        "the outage event is news, sent with fresh data"
    );
    // Every drop reported exactly once over all outage events.
    let reported: u64 = outage
        .iter()
        .map(|m| attribute(&m.json, "dropped_live").as_u64().expect("count"))
        .sum();
    assert_eq!(reported, dropped_live, "each drop reported once");
    eprintln!(
        "budget {budget} B: {LIVE} live + {EMISSIONS} emissions; dropped during the outage {dropped:?}, \
         in total {final_dropped:?}; {} outage events; first: {}",
        outage.len(),
        first["message"]
    );
    stop_and_join(&stop_uplink, task).await;
}

async fn wait_spool_empty(spool: &SpoolHandle) {
    let r = timeout(Duration::from_secs(30), async {
        while spool.stats().await.unwrap().records > 0 {
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(r.is_ok(), "spool not drained: {:?}", spool.stats().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_published_to_a_frozen_broker_stay_spooled_and_arrive_after_its_restart() {
    const BEFORE: u64 = 20;
    const FROZEN: u64 = 15;
    let mut broker = Mosquitto::start_persistent();
    let (_sub, mut rx) = persistent_subscriber(broker.port).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = SpoolHandle::open(&dir.path().join("spool.db"), &SpoolConfig::default()).unwrap();
    let (mut status, stop_uplink, task) =
        spawn_uplink(broker.port, &spool, SpoolConfig::default().max_bytes, 2000);
    for i in 1..=BEFORE {
        spool.append(vec![new_record(&live(i))]).await.unwrap();
    }
    wait_status(
        &mut status,
        "first records acked",
        Duration::from_secs(10),
        |s| s.acked_total == BEFORE,
    )
    .await;

    // SIGSTOP: the TCP link stays up but nothing answers. Publishes go out into the socket.
    broker.pause();
    for i in BEFORE + 1..=BEFORE + FROZEN {
        spool.append(vec![new_record(&live(i))]).await.unwrap();
    }
    let in_flight = wait_status(
        &mut status,
        "publishes in flight",
        Duration::from_secs(5),
        |s| s.in_flight as u64 == FROZEN,
    )
    .await;
    assert_eq!(in_flight.state, LinkState::Connected, "not detected yet");
    assert_eq!(
        spool.stats().await.unwrap().records,
        FROZEN,
        "unacknowledged records stay in the spool"
    );
    // The keep-alive (2 s) detects the dead link.
    wait_status(
        &mut status,
        "dead link detected",
        Duration::from_secs(15),
        |s| s.state != LinkState::Connected,
    )
    .await;
    assert_eq!(
        spool.stats().await.unwrap().records,
        FROZEN,
        "still spooled"
    );

    block_in_place(|| broker.restart()); // SIGKILL the frozen broker, start it again
    wait_status(
        &mut status,
        "resent and acked",
        Duration::from_secs(20),
        |s| s.acked_total == BEFORE + FROZEN,
    )
    .await;
    let mut got: Vec<Msg> = Vec::new();
    timeout(Duration::from_secs(20), async {
        while !(BEFORE + 1..=BEFORE + FROZEN).all(|s| got.iter().any(|m| m.seq == s)) {
            let (topic, payload) = rx.recv().await.expect("subscriber alive");
            if let Some(m) = parse(topic, &payload) {
                got.push(m);
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "records published while frozen missing; got {:?}",
            got.iter().map(|m| m.seq).collect::<Vec<_>>()
        )
    });
    for m in got.iter().filter(|m| m.seq > BEFORE) {
        assert!(m.historical, "resent after the reconnect: historical");
    }
    stop_and_join(&stop_uplink, task).await;
}

fn two_uplink_config(
    modbus_port: u16,
    plant_port: u16,
    province_port: u16,
    state: &Path,
) -> String {
    format!(
        r#"
site = "{SITE}"
state_dir = "{state}"

[[sources]]
name = "cems"
tcp = "127.0.0.1:{modbus_port}"
timeout = "500ms"
default_poll = "100ms"

[[sources.devices]]
name = "stack1"
unit_id = 1
[sources.devices.points.so2_raw]
area = "input"
address = 0
type = "u16"

{uplink_plant}
{uplink_province}"#,
        uplink_province = mqtt_uplink_toml("province", province_port, &["live"]),
        uplink_plant = mqtt_uplink_toml("plant", plant_port, &["live"]),
        state = state.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_broker_down_the_other_uplink_receives_everything_on_time() {
    let plant = Mosquitto::start();
    let mut province = Mosquitto::start();
    block_in_place(|| province.stop()); // the provincial platform is unreachable
    let (_sub, mut rx) =
        mosquitto::subscribe(plant.port, &format!("smeltwatch/{SITE}/live/#")).await;

    let shutdown = CancellationToken::new();
    let stack = Device::new(
        "stack1",
        BankSizes {
            coils: 1,
            discrete_inputs: 1,
            holding: 8,
            input: 8,
        },
        1,
    );
    stack.set_input(0, &[321]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let modbus_port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_tcp(
        listener,
        UnitMap::from([(1, stack)]),
        shutdown.clone(),
    ));

    let state = tempfile::tempdir().unwrap();
    let toml = two_uplink_config(modbus_port, plant.port, province.port, state.path());
    let agent = agent::start_inline(&toml, "two.toml").await;

    // Over 3 s of 100 ms polls, each batch reaches the plant broker within a second of its poll.
    let mut seqs = Vec::new();
    let mut worst = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let (topic, payload) = timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("plant broker keeps receiving")
            .unwrap();
        let m = parse(topic, &payload).expect("live record");
        let scheduled = m.json["readings"][0]["ts_ms"]
            .as_i64()
            .expect("a reading timestamp");
        let lag = Duration::from_millis((Timestamp::now().0 - scheduled).max(0) as u64);
        worst = worst.max(lag);
        seqs.push(m.seq);
    }
    assert!(seqs.len() >= 20, "about 30 polls in 3 s: {}", seqs.len());
    assert_eq!(
        seqs,
        (seqs[0]..seqs[0] + seqs.len() as u64).collect::<Vec<_>>(),
        "no gap, in order"
    );
    assert!(
        worst < Duration::from_secs(1),
        "on time: worst lag {worst:?}"
    );

    // The province spool holds what the plant already has.
    let views = agent.live.uplinks.lock().unwrap().clone();
    let province_view = views
        .iter()
        .find(|v| v.name == "province")
        .expect("province");
    let spooled = province_view.spool.stats().await.unwrap().records;
    assert!(
        spooled >= seqs.len() as u64,
        "province spool holds {spooled}"
    );
    assert!(matches!(
        province_view.status.borrow().state,
        LinkState::Disconnected(_) | LinkState::Connecting
    ));
    eprintln!(
        "two uplinks: plant received {} batches, worst lag {worst:?}; province spooled {spooled}",
        seqs.len()
    );
    agent.shutdown().await;
    shutdown.cancel();
}
