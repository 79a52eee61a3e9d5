//! Spool replay rate to a real Mosquitto after an outage of a known size.
//!
//! An outage of `BACKLOG` live batches is simulated by filling a spool while no uplink runs; then
//! the uplink starts against a local Mosquitto with an unlimited `replay_rate`, and the time until
//! every record is PUBACKed and acked in the spool gives the replay rate in records per second.
//! Run with `cargo bench --bench replay` (needs `mosquitto` on the PATH). `BACKLOG` and the
//! in-flight window can be overridden with `SMELTWATCH_REPLAY_BACKLOG` and
//! `SMELTWATCH_REPLAY_INFLIGHT`.

use std::time::{Duration, Instant};

use smeltwatch::codec::topic::topic_for;
use smeltwatch::config::{
    MqttConfig, SpoolConfig, Stream, TopicTemplates, UplinkConfig, UplinkKind,
};
use smeltwatch::model::{Quality, Reading, ReadingBatch, Record, Timestamp, Value};
use smeltwatch::spool::{NewRecord, SpoolHandle};
use smeltwatch::uplink::mqtt::MqttUplink;
use smeltwatch_testkit::mosquitto::Mosquitto;
use smeltwatch_testkit::mqtt_config;
use tokio_util::sync::CancellationToken;

const SITE: &str = "bench";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn batch(i: u64) -> Record {
    let ts = Timestamp(1_764_300_000_000 + i as i64 * 1000);
    Record::Batch(ReadingBatch {
        source: "line1".into(),
        device: format!("pot_{:03}", i % 400).into(),
        unit_id: 10,
        poll_interval_ms: 1000,
        scheduled: ts,
        readings: [
            "cell_voltage_v",
            "bath_temp_c",
            "anode_current_ka",
            "status",
        ]
        .iter()
        .map(|p| Reading {
            point: (*p).into(),
            value: Some(Value::Float(4.0 + i as f64 / 1e6)),
            unit: "V".into(),
            quality: Quality::Good,
            ts,
        })
        .collect(),
    })
}

fn main() {
    let backlog = env_or("SMELTWATCH_REPLAY_BACKLOG", 20_000);
    let inflight = env_or("SMELTWATCH_REPLAY_INFLIGHT", 64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let broker = Mosquitto::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let spool_cfg = SpoolConfig {
            max_bytes: 1 << 30,
            ..SpoolConfig::default()
        };
        let spool = SpoolHandle::open(&dir.path().join("spool.db"), &spool_cfg).expect("spool");
        let templates = TopicTemplates::default();
        let mut bytes = 0usize;
        for chunk in (1..=backlog).collect::<Vec<_>>().chunks(1000) {
            let records = chunk
                .iter()
                .map(|&i| {
                    let r = batch(i);
                    let body = serde_json::to_vec(&r).expect("serialise");
                    bytes += body.len();
                    NewRecord {
                        stream: Stream::Live,
                        topic: topic_for(&templates, SITE, &r),
                        body,
                        created: Timestamp::now(),
                    }
                })
                .collect();
            spool.append(records).await.expect("append");
        }
        let cfg = UplinkConfig {
            name: "bench".into(),
            kind: UplinkKind::Mqtt(MqttConfig {
                client_id: "smeltwatch-replay-bench".into(),
                keep_alive: Duration::from_secs(30),
                max_inflight: u16::try_from(inflight).unwrap_or(u16::MAX),
                reconnect_min: Duration::from_millis(50),
                reconnect_max: Duration::from_millis(500),
                topics: templates.clone(),
                replay_rate: u32::MAX,
                ..mqtt_config(broker.port, "replay-bench")
            }),
            streams: vec![Stream::Live],
            spool: spool_cfg,
        };
        let uplink = MqttUplink::new(SITE, &cfg, spool.clone()).expect("uplink");
        let mut status = uplink.status();
        let stop = CancellationToken::new();
        let started = Instant::now();
        let task = tokio::spawn(uplink.run(stop.clone()));
        status
            .wait_for(|s| s.acked_total >= backlog)
            .await
            .expect("uplink running");
        let elapsed = started.elapsed();
        stop.cancel();
        let _ = task.await;
        println!(
            "replay: {backlog} records ({:.1} MB of bodies) spooled during an outage, replayed to \
             Mosquitto and acked in {:.2} s: {:.0} records/s (max_inflight {inflight})",
            bytes as f64 / 1e6,
            elapsed.as_secs_f64(),
            backlog as f64 / elapsed.as_secs_f64()
        );
    });
}
