//! A record the broker will not take must not block the records behind it: a payload over the
//! uplink's own `max_packet_size` (never sent), and one over the broker's limit (Mosquitto
//! disconnects the client; the record goes to the dead-letter table after N such connections),
//! against a real Mosquitto on a free port; `smeltwatch spool dead-letters` and `spool requeue`.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::time::Duration;

use common::agent::smeltwatch;
use common::mosquitto::{self, Mosquitto};
use common::mqtt_config;
use common::plant::one_meter_toml;
use common::status::wait_status;
use smeltwatch::codec::Envelope;
use smeltwatch::codec::topic::topic_for;
use smeltwatch::config::{
    MqttConfig, SpoolConfig, Stream, TopicTemplates, UplinkConfig, UplinkKind,
};
use smeltwatch::model::{Quality, Reading, ReadingBatch, Record, Timestamp, Value};
use smeltwatch::spool::{NewRecord, SpoolHandle};
use smeltwatch::uplink::mqtt::{DEFAULT_DEAD_LETTER_AFTER, MqttUplink};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const SITE: &str = "poison-01";

fn uplink_config(port: u16, max_packet_size: usize) -> UplinkConfig {
    UplinkConfig {
        name: "plant".into(),
        kind: UplinkKind::Mqtt(MqttConfig {
            max_packet_size,
            ..mqtt_config(port, "poison")
        }),
        streams: vec![Stream::Live, Stream::Events],
        spool: SpoolConfig::default(),
    }
}

/// A poll batch of `readings` readings (about 130 bytes of JSON each).
fn batch(i: u64, readings: usize) -> Record {
    let ts = 1_764_300_253_000 + i as i64 * 1000;
    Record::Batch(ReadingBatch {
        source: "potline1".into(),
        device: format!("pot_{i:03}").into(),
        unit_id: 12,
        poll_interval_ms: 1000,
        scheduled: Timestamp(ts),
        readings: (0..readings)
            .map(|r| Reading {
                point: format!("cell_voltage_{r:02}_v").into(),
                value: Some(Value::Float(4.0 + r as f64 / 1000.0)),
                unit: "V".into(),
                quality: Quality::Good,
                ts: Timestamp(ts + 12),
            })
            .collect(),
    })
}

fn new_record(r: &Record) -> NewRecord {
    NewRecord {
        stream: Stream::Live,
        topic: topic_for(&TopicTemplates::default(), SITE, r),
        body: smeltwatch::codec::body::encode(r),
        created: Timestamp::now(),
    }
}

fn json_len(r: &Record) -> usize {
    smeltwatch::codec::json::encode_record(Envelope::new(SITE, Stream::Live, 1, false), r).len()
}

/// One record of more than 2 KiB as JSON, then ten small ones (seqs 2..=11).
async fn append_poison_then_ten(spool: &SpoolHandle) {
    let big = batch(0, 20);
    assert!(json_len(&big) > 2048, "{}", json_len(&big));
    let small: Vec<Record> = (1..=10).map(|i| batch(i, 2)).collect();
    assert!(small.iter().all(|r| json_len(r) < 600));
    let mut records = vec![new_record(&big)];
    records.extend(small.iter().map(new_record));
    spool.append(records).await.expect("append");
}

/// Seqs of the live payloads received until `want` distinct ones arrived.
/// A spool in `dir` holding a record too large for a packet then ten small ones, sent by an uplink
/// to the broker at `port` whose `max_packet_size` is `max_packet`. Once the ten are acked and
/// the large one set aside, the ten have arrived in order (checked here); then the spool, the
/// uplink's status, what stops it and its task.
async fn deliver_past_the_poison(
    dir: &tempfile::TempDir,
    port: u16,
    max_packet: usize,
) -> (
    SpoolHandle,
    smeltwatch::uplink::UplinkStatus,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let (_sub, mut rx) = mosquitto::subscribe(port, "smeltwatch/+/live/#").await;
    let spool = SpoolHandle::open(&dir.path().join("spool.db"), &SpoolConfig::default()).unwrap();
    append_poison_then_ten(&spool).await;
    let uplink = MqttUplink::new(SITE, &uplink_config(port, max_packet), spool.clone()).unwrap();
    let mut status = uplink.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(uplink.run(stop.clone()));

    let st = wait_status(
        &mut status,
        "the ten small records acked",
        Duration::from_secs(10),
        |s| s.acked_total >= 10 && s.dead_letters == 1,
    )
    .await;
    assert_eq!(live_seqs(&mut rx, 10).await, (2..=11).collect::<Vec<_>>());
    (spool, st, stop, task)
}

async fn live_seqs(rx: &mut mpsc::Receiver<(String, Vec<u8>)>, want: usize) -> Vec<u64> {
    let mut seqs = std::collections::BTreeSet::new();
    let r = timeout(Duration::from_secs(10), async {
        while seqs.len() < want {
            let (_, payload) = rx.recv().await.expect("subscriber alive");
            let v: serde_json::Value = serde_json::from_slice(&payload).expect("JSON payload");
            seqs.insert(v["seq"].as_u64().expect("seq"));
        }
    })
    .await;
    assert!(r.is_ok(), "only {seqs:?} arrived");
    seqs.into_iter().collect()
}

/// The uplink's own limit: the 2 KiB record is never sent, the ten behind it are acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_uplinks_max_packet_size_does_not_block_the_ones_behind_it() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (spool, st, stop, task) = deliver_past_the_poison(&dir, broker.port, 1024).await;
    // Never sent, so no connection was lost over it.
    assert_eq!(st.connects, 1, "{st:?}");
    let dead = spool.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].stream, dead[0].seq, dead[0].attempts),
        (Stream::Live, 1, 0)
    );
    assert!(
        dead[0].reason.contains("max_packet_size (1024)"),
        "{}",
        dead[0].reason
    );
    stop.cancel();
    task.await.unwrap();
}

/// The broker's limit (Mosquitto disconnects a client that sends a larger packet): the record
/// that keeps killing the connection is set aside and the ten behind it are acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_brokers_limit_does_not_block_the_ones_behind_it() {
    let broker = Mosquitto::start_with_max_packet(1024);
    let dir = tempfile::tempdir().unwrap();
    let (spool, st, stop, task) = deliver_past_the_poison(&dir, broker.port, 1 << 20).await;
    let dead = spool.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].seq, dead[0].attempts),
        (1, DEFAULT_DEAD_LETTER_AFTER)
    );
    assert!(st.connects > u64::from(DEFAULT_DEAD_LETTER_AFTER), "{st:?}");
    stop.cancel();
    task.await.unwrap();
}

/// The dead-letter path end to end: the broker refuses a record (its size limit) three
/// connections in a row; it goes to the dead-letter table with a `dead_letter` event, later
/// records flow, `spool dead-letters` lists it, and after the broker's limit is raised
/// `spool requeue` sends it with its seq while the uplink runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_becomes_a_dead_letter_that_spool_lists_and_requeues() {
    let mut broker = Mosquitto::start_with_max_packet(1024);
    let (_sub, mut rx) = mosquitto::subscribe(broker.port, "smeltwatch/+/live/#").await;
    let (_esub, mut events) = mosquitto::subscribe(broker.port, "smeltwatch/+/events/#").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plant.toml");
    let toml = one_meter_toml(
        SITE,
        "state",
        "127.0.0.1:502",
        None,
        "meter",
        &format!("broker = \"mqtt://127.0.0.1:{}\"", broker.port),
    );
    std::fs::write(&config, toml).unwrap();
    let path = dir.path().join("state/spool-plant.db");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let spool = SpoolHandle::open(&path, &SpoolConfig::default()).unwrap();
    append_poison_then_ten(&spool).await;
    let uplink = MqttUplink::new(SITE, &uplink_config(broker.port, 1 << 20), spool.clone())
        .unwrap()
        .with_dead_letter_after(3);
    let mut status = uplink.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(uplink.run(stop.clone()));

    wait_status(
        &mut status,
        "the refused record set aside",
        Duration::from_secs(10),
        |s| s.dead_letters == 1 && s.acked_total >= 10,
    )
    .await;
    assert_eq!(live_seqs(&mut rx, 10).await, (2..=11).collect::<Vec<_>>());
    // The event, delivered like any record.
    let (topic, payload) = timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("the dead_letter event within 10 s")
        .unwrap();
    assert!(topic.ends_with("/events/dead_letter"), "{topic}");
    let event: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(event["kind"], "dead_letter", "{event}");
    assert_eq!(event["subject"], "plant", "{event}");
    // Later records flow.
    let later: Vec<NewRecord> = (12..=16).map(|i| new_record(&batch(i, 2))).collect();
    spool.append(later).await.unwrap();
    assert_eq!(live_seqs(&mut rx, 5).await, (12..=16).collect::<Vec<_>>());

    let cfg = config.to_str().unwrap();
    let (ok, stdout, stderr) = smeltwatch(&["spool", "dead-letters", "-c", cfg]);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(
        (lines[0]["seq"].as_u64(), lines[0]["attempts"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(lines[0]["record"]["device"], "pot_000", "{stdout}");
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .contains("3 connections"),
        "{stdout}"
    );
    let (ok, stdout, _) = smeltwatch(&["spool", "stats", "-c", cfg]);
    assert!(ok);
    assert!(stdout.contains("dead letters 1"), "{stdout}");
    let (ok, _, stderr) = smeltwatch(&["spool", "requeue", "-c", cfg, "--id", "999"]);
    assert!(!ok);
    assert!(stderr.contains("no dead letter with id 999"), "{stderr}");

    // The broker takes it now; re-queued while the uplink runs, it is sent with its seq.
    broker.restart_with_max_packet(1 << 20);
    let (_sub2, mut rx2) = mosquitto::subscribe(broker.port, "smeltwatch/+/live/#").await;
    let id = lines[0]["id"].to_string();
    let (ok, stdout, stderr) = smeltwatch(&["spool", "requeue", "-c", cfg, "--id", &id]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("1 dead letters flagged"), "{stdout}");
    wait_status(
        &mut status,
        "the re-queued record moved back",
        Duration::from_secs(10),
        |s| s.dead_letters == 0,
    )
    .await;
    assert_eq!(live_seqs(&mut rx2, 1).await, vec![1]);
    wait_status(
        &mut status,
        "the spool drained",
        Duration::from_secs(10),
        |s| s.in_flight == 0,
    )
    .await;
    let (ok, stdout, _) = smeltwatch(&["spool", "dead-letters", "-c", cfg]);
    assert!(ok && stdout.is_empty(), "{stdout}");
    stop.cancel();
    task.await.unwrap();
}
