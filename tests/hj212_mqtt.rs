//! HJ 212 over MQTT (`encoding = "hj212"`) through a real Mosquitto: a closed window of a stack
//! is one 2051 packet with every pollutant under the stack's MN, a poll batch one 2011 packet,
//! a record with no HJ 212 form no message; and the configuration refuses what cannot work.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::mosquitto::{self, Mosquitto};
use common::records::{queued, stack_aggregate};
use common::task::stop_and_join;
use smeltwatch::codec::hj212::{self, Packet, ParseOptions, Table};
use smeltwatch::config::{self, Encoding, Stream, UplinkKind};
use smeltwatch::model::{
    Aggregate, Event, EventKind, EventPhase, Period, Quality, Reading, ReadingBatch, Record,
    Timestamp, Value,
};
use smeltwatch::spool::{NewRecord, SpoolHandle};
use smeltwatch::uplink::mqtt::MqttUplink;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// 2025-03-01 09:00 China time.
const T0: i64 = 1_740_790_800_000;
const SITE_MN: &str = "88888880000001";
const STACK_MN: &str = "88888880000002";

const SOURCES: &str = "site = \"qh-al-01\"\n[[sources]]\nname = \"gw\"\ntcp = \"127.0.0.1:502\"\n\
                       [[sources.devices]]\nname = \"cems1\"\nunit_id = 1\n\
                       points.so2_mg_m3 = { area = \"input\", address = 0, type = \"f32\" }\n";

fn config_with(uplink: &str) -> Result<config::Config, config::ConfigError> {
    config::parse(
        &format!("{SOURCES}{uplink}"),
        Path::new("inline/smeltwatch.toml"),
    )
}

fn hj212_uplink(port: u16) -> String {
    format!(
        r#"
[[uplinks]]
name = "province"
type = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
streams = ["live", "emissions", "events"]
encoding = {{ default = "hj212", events = "json" }}
reconnect_min = "20ms"
reconnect_max = "100ms"
[uplinks.hj212]
mn = "{SITE_MN}"
pw = "123456"
[uplinks.hj212.mn_by_stack]
gtc1_stack = "{STACK_MN}"
"#
    )
}

fn aggregate(quantity: &str, avg: f64) -> Aggregate {
    stack_aggregate(quantity, Period::Minute, T0, T0 + 60_000, avg, 1.0)
}

fn batch(device: &str, point: &str, value: f64) -> Record {
    Record::Batch(ReadingBatch {
        source: "gw".into(),
        device: device.into(),
        unit_id: 1,
        poll_interval_ms: 1000,
        scheduled: Timestamp(T0 + 5_000),
        readings: vec![Reading {
            point: point.into(),
            value: Some(Value::Float(value)),
            unit: "mg/m3".into(),
            quality: Quality::Good,
            ts: Timestamp(T0 + 5_020),
        }],
    })
}

fn new_record(stream: Stream, r: &Record) -> NewRecord {
    queued(stream, "qh-al-01", r)
}

fn parse(payload: &[u8]) -> Vec<Packet> {
    let table = Table::hj212_2017();
    let mut packets = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        match hj212::scan(rest) {
            hj212::Scan::Frame(n) => {
                packets.push(
                    hj212::parse(&rest[..n], &table, &ParseOptions::default())
                        .unwrap_or_else(|e| panic!("not an HJ 212 packet: {e}")),
                );
                rest = &rest[n..];
            }
            other => panic!("a message that is not whole packets: {other:?}"),
        }
    }
    packets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_is_one_packet_under_its_stack_mn_and_a_poll_batch_one_2011() {
    let broker = Mosquitto::start();
    let (_sub, mut rx) = mosquitto::subscribe(broker.port, "smeltwatch/#").await;
    let cfg = config_with(&hj212_uplink(broker.port)).expect("valid configuration");
    let uplink_cfg = &cfg.uplinks[0];
    let dir = tempfile::tempdir().unwrap();
    let spool = SpoolHandle::open(&dir.path().join("province.db"), &uplink_cfg.spool).unwrap();
    let event = Record::Event(Event {
        kind: EventKind::Exceedance,
        subject: Arc::from("gtc1_stack/so2"),
        phase: EventPhase::Instant,
        ts: Timestamp(T0),
        attributes: Vec::new(),
        message: "so2 over its limit".into(),
    });
    spool
        .append(vec![
            // The calculators append a window's aggregates one after another.
            new_record(
                Stream::Emissions,
                &Record::Aggregate(aggregate("so2_mg_m3", 85.0)),
            ),
            new_record(
                Stream::Emissions,
                &Record::Aggregate(aggregate("nox_mg_m3", 52.5)),
            ),
            new_record(
                Stream::Emissions,
                &Record::Aggregate(aggregate("o2_pct", 9.1)),
            ),
            new_record(Stream::Live, &batch("cems1", "so2_mg_m3", 84.3)),
            // No factor code: no HJ 212 form, so no message.
            new_record(Stream::Live, &batch("cems1", "fan_speed_rpm", 980.0)),
            new_record(Stream::Events, &event),
        ])
        .await
        .unwrap();

    let mn_by_subject = HashMap::from([("gtc1_stack".to_owned(), STACK_MN.to_owned())]);
    let uplink = MqttUplink::new("qh-al-01", uplink_cfg, spool.clone())
        .unwrap()
        .with_hj212_mn_by_subject(mn_by_subject);
    let mut status = uplink.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(uplink.run(stop.clone()));

    let mut got: HashMap<String, Vec<u8>> = HashMap::new();
    timeout(Duration::from_secs(30), async {
        while got.len() < 3 {
            let (topic, payload) = rx.recv().await.expect("subscriber alive");
            if !topic.ends_with("/status") {
                assert!(
                    got.insert(topic.clone(), payload).is_none(),
                    "{topic} twice"
                );
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("3 messages expected, got {:?}", got.keys()));

    let window = &got["smeltwatch/qh-al-01/emissions/gtc1_stack/minute"];
    let packets = parse(window);
    assert_eq!(packets.len(), 1, "one packet for the whole window");
    let p = &packets[0];
    assert_eq!((p.cn, p.mn.as_str(), p.st), (2051, STACK_MN, 31));
    assert!(!p.wants_ack(), "no 9014 can come back over a broker");
    assert_eq!(p.cp.get("DataTime"), Some("20250301090000"));
    assert_eq!(p.cp.get("a21026-Avg"), Some("85.0"), "{:?}", p.cp);
    assert_eq!(p.cp.get("a21002-Avg"), Some("52.5"), "{:?}", p.cp);
    assert_eq!(p.cp.get("a19001-Avg"), Some("9.1"), "{:?}", p.cp);

    let live = parse(&got["smeltwatch/qh-al-01/live/gw/cems1"]);
    assert_eq!(live.len(), 1);
    assert_eq!((live[0].cn, live[0].mn.as_str()), (2011, SITE_MN));
    assert_eq!(
        live[0].cp.get("a21026-Rtd"),
        Some("84.3"),
        "{:?}",
        live[0].cp
    );

    let events = &got["smeltwatch/qh-al-01/events/exceedance"];
    let json: serde_json::Value = serde_json::from_slice(events).expect("events stay JSON");
    assert_eq!(json["kind"], "exceedance", "{json}");

    // Every record left the spool: the window's three with its one PUBACK, the batch without a
    // coded point at once, with nothing published for it.
    timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.acked_total == 6),
    )
    .await
    .expect("6 records acked")
    .unwrap();
    assert_eq!(spool.stats().await.unwrap().records, 0);
    stop_and_join(&stop, task).await;
    while let Ok((topic, payload)) = rx.try_recv() {
        assert!(
            topic.ends_with("/status"),
            "nothing else was published: {topic} {}",
            String::from_utf8_lossy(&payload)
        );
    }
}

#[test]
fn the_hj212_encoding_is_read_with_its_station() {
    let cfg = config_with(&hj212_uplink(1883)).expect("valid configuration");
    let UplinkKind::Mqtt(mqtt) = &cfg.uplinks[0].kind else {
        panic!("an MQTT uplink")
    };
    assert_eq!(mqtt.encoding.for_stream(Stream::Emissions), Encoding::Hj212);
    assert_eq!(mqtt.encoding.for_stream(Stream::Events), Encoding::Json);
    let h = mqtt.encoding.hj212.as_ref().expect("the station header");
    assert_eq!((h.station.mn.as_str(), h.station.st), (SITE_MN, 31));
    assert!(!h.station.ack);
    assert_eq!(
        h.mn_by_stack,
        vec![("gtc1_stack".to_owned(), STACK_MN.to_owned())]
    );
}

#[test]
fn the_configuration_refuses_what_hj212_over_mqtt_cannot_do() {
    let mqtt = |keys: &str| {
        format!("[[uplinks]]\nname = \"p\"\ntype = \"mqtt\"\nbroker = \"mqtt://h\"\n{keys}")
    };
    let cases = [
        (
            mqtt("encoding = \"hj212\"\n"),
            "uplinks[0].hj212: missing [uplinks.hj212]: encoding = \"hj212\" needs",
        ),
        (
            mqtt("encoding = \"hj212\"\n[uplinks.hj212]\nmn = \"M1\"\npw = \"123456\"\n"),
            "uplinks[0].encoding: the `metrics` stream has no HJ 212 form",
        ),
        (
            mqtt(
                "streams = [\"emissions\"]\nencoding = \"hj212\"\n[uplinks.hj212]\nmn = \"M1\"\n\
                 pw = \"123456\"\nover_time = \"5s\"\n",
            ),
            "uplinks[0].hj212.over_time: `over_time` applies to an HJ 212 TCP uplink",
        ),
        (
            mqtt("[uplinks.hj212]\nmn = \"M1\"\npw = \"123456\"\n"),
            "uplinks[0].hj212: [uplinks.hj212] of an MQTT uplink is used only by encoding = \"hj212\"",
        ),
        (
            mqtt(
                "streams = [\"emissions\"]\nencoding = \"hj212\"\n[uplinks.hj212]\nmn = \"M1\"\n\
                 pw = \"12\"\n",
            ),
            "uplinks[0].hj212.pw: pw must be 6 printable ASCII characters",
        ),
        (
            "[[uplinks]]\nname = \"p\"\ntype = \"sparkplug\"\nbroker = \"mqtt://h\"\n\
             group_id = \"g\"\nedge_node_id = \"e\"\n[uplinks.hj212]\nmn = \"M1\"\npw = \"123456\"\n"
                .to_owned(),
            "uplinks[0].hj212: `hj212` does not apply to an uplink of type = \"sparkplug\"",
        ),
    ];
    for (uplink, expected) in cases {
        let err = config_with(&uplink).expect_err(&uplink).to_string();
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    }
}
