//! The MQTT uplink against a real Mosquitto: exact payloads, ack only after PUBACK, broker crash
//! and restart, refused credentials, retained status and Last Will.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::mosquitto::{self, Mosquitto, SubscribeOptions};
use common::mqtt_config;
use common::records::queued;
use common::status::wait_status;
use common::task::stop_and_join;
use smeltwatch::codec::Envelope;
use smeltwatch::codec::json::encode_record;
use smeltwatch::codec::topic::topic_for;
use smeltwatch::config::{
    MqttConfig, Secret, SpoolConfig, Stream, TopicTemplates, UplinkConfig, UplinkKind,
};
use smeltwatch::model::{Quality, Reading, ReadingBatch, Record, Timestamp, Value};
use smeltwatch::spool::{NewRecord, SpoolHandle};
use smeltwatch::uplink::LinkState;
use smeltwatch::uplink::mqtt::MqttUplink;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// How long a status may take to come true.
const WAIT: Duration = Duration::from_secs(30);

const SITE: &str = "demo-al-01";

fn uplink_config(port: u16, login: Option<(&str, &str)>) -> UplinkConfig {
    UplinkConfig {
        name: "plant".into(),
        kind: UplinkKind::Mqtt(MqttConfig {
            username: login.map(|(u, _)| u.to_owned()),
            password: login.map(|(_, p)| Secret(p.to_owned())),
            ..mqtt_config(port, "test")
        }),
        streams: vec![Stream::Live],
        spool: SpoolConfig::default(),
    }
}

fn open_spool(dir: &tempfile::TempDir) -> SpoolHandle {
    SpoolHandle::open(&dir.path().join("spool.db"), &SpoolConfig::default()).expect("open spool")
}

fn record(i: u64) -> Record {
    let ts = 1_764_300_253_000 + i as i64 * 1000;
    Record::Batch(ReadingBatch {
        source: "potline1".into(),
        device: format!("pot_{:03}", i % 3).into(),
        unit_id: 12,
        poll_interval_ms: 1000,
        scheduled: Timestamp(ts),
        readings: vec![
            Reading {
                point: "cell_voltage_v".into(),
                value: Some(Value::Float(4.0 + i as f64 / 1000.0)),
                unit: "V".into(),
                quality: Quality::Good,
                ts: Timestamp(ts + 123),
            },
            Reading {
                point: "line_current_ka".into(),
                value: None,
                unit: "kA".into(),
                quality: Quality::CommFail,
                ts: Timestamp(ts + 200),
            },
        ],
    })
}

/// Append records `from..=to` (record i gets seq i on a fresh spool).
async fn append(spool: &SpoolHandle, from: u64, to: u64) {
    let recs = (from..=to)
        .map(|i| queued(Stream::Live, SITE, &record(i)))
        .collect();
    let appended = spool.append(recs).await.expect("append");
    assert_eq!(appended.first().map(|a| a.seq), Some(from));
}

fn historical_of(payload: &[u8]) -> bool {
    let v: serde_json::Value = serde_json::from_slice(payload).expect("payload is JSON");
    v["historical"].as_bool().unwrap_or(false)
}

fn seq_of(payload: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(payload).expect("payload is JSON");
    v["seq"].as_u64().expect("seq")
}

/// Receive until `pred` holds for the collected list (30 s deadline).
async fn collect_until(
    rx: &mut mpsc::Receiver<(String, Vec<u8>)>,
    got: &mut Vec<(String, Vec<u8>)>,
    what: &str,
    pred: impl Fn(&[(String, Vec<u8>)]) -> bool,
) {
    let r = timeout(Duration::from_secs(30), async {
        while !pred(got) {
            got.push(rx.recv().await.expect("subscriber alive"));
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "timed out waiting for {what}; got {} messages",
        got.len()
    );
}

/// Run `uplink`: its status, what stops it and its task.
fn spawn(
    uplink: MqttUplink,
) -> (
    tokio::sync::watch::Receiver<smeltwatch::uplink::UplinkStatus>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let status = uplink.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(uplink.run(stop.clone()));
    (status, stop, task)
}

/// Wait until the uplink's link is up.
async fn wait_connected(
    status: &mut tokio::sync::watch::Receiver<smeltwatch::uplink::UplinkStatus>,
) {
    wait_status(status, "connected", WAIT, |s| {
        s.state == LinkState::Connected
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_as_exact_json_in_seq_order_and_leave_the_spool_after_puback() {
    let broker = Mosquitto::start();
    let (_sub, mut rx) = mosquitto::subscribe(broker.port, "smeltwatch/+/live/#").await;
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(&dir);
    append(&spool, 1, 50).await; // waiting before the uplink starts

    let uplink = MqttUplink::new(SITE, &uplink_config(broker.port, None), spool.clone()).unwrap();
    let (mut status, stop, task) = spawn(uplink);
    append(&spool, 51, 120).await; // arriving while it runs

    let mut got = Vec::new();
    collect_until(&mut rx, &mut got, "120 messages", |g| g.len() >= 120).await;
    // Records waiting when the connection came up are replayed as historical beside fresh ones:
    // seq order holds within each of the two lanes, not across them.
    let (mut historical, mut fresh) = (Vec::new(), Vec::new());
    for (topic, payload) in &got {
        let seq = seq_of(payload);
        let is_historical = historical_of(payload);
        let r = record(seq);
        assert_eq!(topic, &topic_for(&TopicTemplates::default(), SITE, &r));
        assert_eq!(
            payload,
            &encode_record(Envelope::new(SITE, Stream::Live, seq, is_historical), &r),
            "payload of seq {seq}"
        );
        if is_historical {
            historical.push(seq);
        } else {
            fresh.push(seq);
        }
    }
    assert!(historical.windows(2).all(|w| w[0] < w[1]), "{historical:?}");
    assert!(fresh.windows(2).all(|w| w[0] < w[1]), "{fresh:?}");
    assert!(
        (1..=50).all(|s| historical.contains(&s)),
        "spooled before the start: historical"
    );
    let mut all: Vec<u64> = historical.iter().chain(&fresh).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=120).collect::<Vec<_>>());
    let s = wait_status(&mut status, "120 acks", WAIT, |s| s.acked_total == 120).await;
    assert_eq!(s.state, LinkState::Connected);
    assert_eq!(spool.stats().await.unwrap().records, 0);

    stop_and_join(&stop, task).await;
    assert!(rx.try_recv().is_err(), "no duplicates on a healthy link");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_latency_counts_each_acked_record_from_its_acquisition() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(&dir);
    let latency = Arc::new(smeltwatch::histogram::Histogram::default());
    let uplink = MqttUplink::new(SITE, &uplink_config(broker.port, None), spool.clone())
        .unwrap()
        .with_publish_latency(latency.clone());
    let (mut status, stop, task) = spawn(uplink);
    wait_connected(&mut status).await;

    // Five poll batches acquired 2 s ago, one a year ago (an outage's backlog).
    let acquired = Timestamp(Timestamp::now().unix_ms() - 2_000);
    let mut recs: Vec<NewRecord> = (1..=5)
        .map(|i| {
            let mut r = record(i);
            if let Record::Batch(b) = &mut r {
                b.scheduled = acquired;
            }
            queued(Stream::Live, SITE, &r)
        })
        .collect();
    let old = record(6);
    recs.push(queued(Stream::Live, SITE, &old));
    spool.append(recs).await.unwrap();
    wait_status(&mut status, "6 acks", WAIT, |s| s.acked_total == 6).await;

    let h = latency.snapshot();
    assert_eq!(h.count, 6);
    let bucket = |le: f64| h.buckets.iter().find(|(b, _)| *b == le).unwrap().1;
    assert_eq!(bucket(1.0), 0, "{h:?}");
    assert_eq!(bucket(10.0), 5, "{h:?}");
    assert_eq!(
        bucket(60.0),
        5,
        "the year-old batch is above every bound: {h:?}"
    );
    assert!(h.sum_s > 300.0 * 86_400.0, "{h:?}");

    stop_and_join(&stop, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_crash_loses_nothing_the_spool_still_held_and_keeps_first_delivery_in_order() {
    const N: u64 = 400;
    let mut broker = Mosquitto::start_persistent();
    // A persistent session so that Mosquitto queues for the subscriber while it is away; its
    // subscription survives the SIGKILL because Mosquitto saves after every change.
    let (_sub, mut rx) = mosquitto::subscribe_persistent(broker.port, "smeltwatch/+/live/#").await;
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(&dir);
    let uplink = MqttUplink::new(SITE, &uplink_config(broker.port, None), spool.clone()).unwrap();
    let (mut status, stop, task) = spawn(uplink);

    let appender = {
        let spool = spool.clone();
        tokio::spawn(async move {
            for i in 1..=N {
                append(&spool, i, i).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };

    wait_status(&mut status, "100 acks", WAIT, |s| s.acked_total >= 100).await;
    assert!(
        broker.db_path().exists(),
        "mosquitto saved the subscription"
    );
    broker.kill();
    // Every notice of the dead connection has resolved and every PUBACK that did arrive is acked.
    wait_status(&mut status, "link down, nothing in flight", WAIT, |s| {
        s.state != LinkState::Connected && s.in_flight == 0
    })
    .await;
    let last_appended = *spool.appended().borrow() as u64;
    let unacked: HashSet<u64> = spool
        .read_after(0, 100_000)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    // Acked before the crash: the broker had them; Mosquitto may lose those it had not yet
    // forwarded or saved when it was killed. Everything else must arrive.
    let acked_before: HashSet<u64> = (1..=last_appended)
        .filter(|s| !unacked.contains(s))
        .collect();
    broker.restart();

    appender.await.unwrap();
    let final_status = wait_status(&mut status, "spool drained", WAIT, |s| {
        s.state == LinkState::Connected && s.acked_total >= N
    })
    .await;
    assert_eq!(spool.stats().await.unwrap().records, 0, "spool drained");
    assert!(final_status.connects >= 2, "reconnected: {final_status:?}");

    let mut got = Vec::new();
    collect_until(
        &mut rx,
        &mut got,
        "every seq not acked before the crash",
        |g| {
            let seen: HashSet<u64> = g.iter().map(|(_, p)| seq_of(p)).collect();
            (1..=N).all(|s| seen.contains(&s) || acked_before.contains(&s))
        },
    )
    .await;

    let mut seen = BTreeSet::new();
    // First deliveries are in seq order within each lane (historical replay, fresh).
    let mut first_order = [Vec::new(), Vec::new()];
    for (_, p) in &got {
        let s = seq_of(p);
        if seen.insert(s) {
            first_order[usize::from(historical_of(p))].push(s);
        }
    }
    for lane in &first_order {
        assert!(
            lane.windows(2).all(|w| w[0] < w[1]),
            "first deliveries out of order: {lane:?}"
        );
    }
    let missing: Vec<u64> = (1..=N).filter(|s| !seen.contains(s)).collect();
    assert!(
        missing.iter().all(|s| acked_before.contains(s)),
        "lost records the broker never acknowledged: {missing:?}"
    );
    let dups = got.len() - seen.len();
    eprintln!(
        "crash test: {} messages, {} distinct, {dups} duplicates, {} acked before the kill, missing {missing:?}",
        got.len(),
        seen.len(),
        acked_before.len()
    );
    stop_and_join(&stop, task).await;
}

/// Captures formatted log lines in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Lines that mention `needle` (the broker address identifies one test's uplink).
    fn lines_with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    fn contains(&self, needle: &str) -> bool {
        String::from_utf8_lossy(&self.0.lock().unwrap()).contains(needle)
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One process-wide capturing subscriber. A thread-scoped one (`set_default`) misses events
/// whose callsites other tests' threads registered first, so the capture is global and each test
/// picks its lines by its broker's address.
fn log_capture() -> Captured {
    static CAPTURE: OnceLock<Captured> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let logs = Captured::default();
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter("smeltwatch=debug")
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("first global subscriber");
            logs
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_log_one_error_keep_spooling_and_recover_with_the_right_password() {
    let logs = log_capture();
    // `watcher` is the test's subscriber, connected before the uplink can be.
    let mut broker =
        Mosquitto::start_with_users(&[("plant", "right-password"), ("watcher", "watcher")]);
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(&dir);
    let cfg = uplink_config(broker.port, Some(("plant", "wrong-password")));
    let uplink = MqttUplink::new(SITE, &cfg, spool.clone()).unwrap();
    let (mut status, stop, task) = spawn(uplink);

    let s = wait_status(&mut status, "auth_failed", WAIT, |s| {
        matches!(s.state, LinkState::AuthFailed(_))
    })
    .await;
    assert!(s.last_error.is_some());
    append(&spool, 1, 10).await;
    // Let it fail at least five more times (it logs those at debug only).
    let me = format!("127.0.0.1:{}", broker.port);
    let repeats = || {
        logs.lines_with(&me)
            .iter()
            .filter(|l| l.contains("connection attempt failed again"))
            .count()
    };
    let repeated = timeout(Duration::from_secs(20), async {
        while repeats() < 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        repeated.is_ok(),
        "no repeated attempts: {:?}",
        logs.lines_with(&me)
    );
    append(&spool, 11, 20).await;
    assert_eq!(
        spool.stats().await.unwrap().records,
        20,
        "records keep accumulating"
    );

    let mine = logs.lines_with(&me);
    let errors: Vec<&String> = mine.iter().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {mine:#?}");
    let expected = format!(
        "uplink \"plant\": broker 127.0.0.1:{} refused the connection: ",
        broker.port
    );
    assert!(errors[0].contains(&expected), "{}", errors[0]);
    assert!(
        errors[0].ends_with("not authorized") || errors[0].ends_with("bad user name or password"),
        "{}",
        errors[0]
    );
    assert!(
        !logs.contains("wrong-password"),
        "the password leaked into the log"
    );

    // Subscribed before the broker accepts the uplink's login: a subscriber that connects after
    // the fix races the uplink's reconnect and can miss the whole backlog.
    let (_sub, mut rx) = mosquitto::subscribe_with(
        broker.port,
        "smeltwatch/+/live/#",
        SubscribeOptions {
            persistent_id: None,
            user: Some(("watcher".into(), "watcher".into())),
        },
    )
    .await;
    // The operator fixes the broker's password file to match and reloads it.
    broker.reload_users(&[("plant", "wrong-password"), ("watcher", "watcher")]);
    wait_status(&mut status, "all 20 acked", WAIT, |s| s.acked_total == 20).await;
    assert_eq!(spool.stats().await.unwrap().records, 0);
    let mut got = Vec::new();
    collect_until(&mut rx, &mut got, "20 messages", |g| {
        let seen: HashSet<u64> = g.iter().map(|(_, p)| seq_of(p)).collect();
        (1..=20).all(|s| seen.contains(&s))
    })
    .await;
    assert!(
        logs.lines_with(&me)
            .iter()
            .any(|l| l.contains("connected to the broker")),
        "recovery is logged"
    );
    stop_and_join(&stop, task).await;
}

async fn first_status(port: u16) -> serde_json::Value {
    let status_topic = format!("smeltwatch/{SITE}/status");
    let (_c, mut rx) = mosquitto::subscribe(port, &status_topic).await;
    let (topic, payload) = timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a retained status within 10 s")
        .expect("subscriber alive");
    assert_eq!(topic, status_topic);
    serde_json::from_slice(&payload).expect("status is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_status_is_online_while_running_offline_after_shutdown_and_after_a_dropped_link() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(&dir);

    // Clean path: run, then shut down.
    let uplink = MqttUplink::new(SITE, &uplink_config(broker.port, None), spool.clone()).unwrap();
    let (mut status, stop, task) = spawn(uplink);
    wait_connected(&mut status).await;
    let online = first_status(broker.port).await;
    assert_eq!(online["state"], "online");
    assert_eq!(online["site"], SITE);
    assert_eq!(online["version"], env!("CARGO_PKG_VERSION"));
    assert!(online["since"].as_str().is_some_and(|s| s.ends_with('Z')));
    stop_and_join(&stop, task).await;
    let offline = first_status(broker.port).await;
    assert_eq!(
        offline,
        serde_json::json!({"state": "offline", "site": SITE})
    );

    // Will path: the task is aborted, its TCP connection dropped without DISCONNECT.
    let uplink = MqttUplink::new(SITE, &uplink_config(broker.port, None), spool.clone()).unwrap();
    let mut status = uplink.status();
    let task = tokio::spawn(uplink.run(CancellationToken::new()));
    wait_status(&mut status, "connected again", WAIT, |s| {
        s.state == LinkState::Connected
    })
    .await;
    let status_topic = format!("smeltwatch/{SITE}/status");
    let (_watcher, mut watch_rx) = mosquitto::subscribe(broker.port, &status_topic).await;
    let retained: serde_json::Value =
        serde_json::from_slice(&watch_rx.recv().await.unwrap().1).unwrap();
    assert_eq!(retained["state"], "online");
    task.abort();
    let _ = task.await;
    let will = timeout(Duration::from_secs(10), watch_rx.recv())
        .await
        .expect("the Last Will within 10 s")
        .unwrap();
    let will: serde_json::Value = serde_json::from_slice(&will.1).unwrap();
    assert_eq!(will, serde_json::json!({"state": "offline", "site": SITE}));
    assert_eq!(
        first_status(broker.port).await["state"],
        "offline",
        "the Will is retained"
    );
}

#[test]
fn mqtts_with_an_unreadable_ca_file_is_refused_at_build_time_and_options_never_print_the_password()
{
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let spool = open_spool(&dir);
    let mut cfg = uplink_config(1883, Some(("plant", "s3cret-pw")));
    let uplink = MqttUplink::new(SITE, &cfg, spool.clone()).unwrap();
    assert!(!format!("{uplink:?}").contains("s3cret-pw"));
    let UplinkKind::Mqtt(m) = &mut cfg.kind else {
        panic!("an MQTT uplink")
    };
    m.tls = true;
    let missing = dir.path().join("missing-ca.pem");
    m.tls_settings.ca_file = Some(missing.clone());
    let err = MqttUplink::new(SITE, &cfg, spool).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "uplink \"plant\": ca_file {}: ",
            missing.display()
        )),
        "{err}"
    );
}
