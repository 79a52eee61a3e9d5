//! The `smeltwatch.v1` protobuf encoder: golden files (bytes pinned in `tests/testdata/protobuf/`)
//! and a round trip of every message type.
//!
//! To regenerate the golden files after an intended schema change, run with
//! `SMELTWATCH_BLESS=1` and review the diff (`protoc --decode=smeltwatch.v1.Envelope
//! -I proto proto/smeltwatch/v1/smeltwatch.proto < tests/testdata/protobuf/batch.bin`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use smeltwatch::codec::Envelope;
use smeltwatch::codec::protobuf::{decode_record, encode_record};
use smeltwatch::config::{Encoding, Stream, UplinkKind};
use smeltwatch::model::{
    Aggregate, Metric, MetricBatch, Period, Quality, Reading, ReadingBatch, Record, Timestamp,
    Value,
};

const T0: i64 = 1_764_300_253_000;

/// The docs' live batch with a negative integer between the counter and the failed read.
fn batch() -> Record {
    let mut b = common::records::documented_live_batch();
    b.readings.insert(
        2,
        Reading {
            point: "offset_i16".into(),
            value: Some(Value::Int(-5)),
            unit: "".into(),
            quality: Quality::Good,
            ts: Timestamp(T0 + 123),
        },
    );
    Record::Batch(b)
}

fn metrics() -> Record {
    Record::Metrics(MetricBatch {
        calc: "potline".into(),
        ts: Timestamp(T0),
        metrics: vec![
            Metric {
                name: "dc_energy_kwh_per_t".into(),
                value: Some(13_150.5),
                unit: "kWh/t".into(),
                quality: Quality::Good,
                ts: Timestamp(T0),
                labels: vec![
                    ("line".into(), "potline1".into()),
                    ("period".into(), "day".into()),
                ],
            },
            Metric {
                name: "current_efficiency".into(),
                value: None,
                unit: "".into(),
                quality: Quality::Stale,
                ts: Timestamp(T0),
                labels: vec![],
            },
        ],
    })
}

fn event() -> Record {
    Record::Event(common::records::pot_017_anode_effect_end(
        vec![
            ("peak_voltage_v".into(), Value::Float(31.2)),
            ("duration_s".into(), Value::UInt(42)),
            ("killed".into(), Value::Bool(true)),
            ("by".into(), Value::Text("auto".into())),
        ],
        "anode effect on pot_017 ended after 42 s",
    ))
}

fn aggregate() -> Record {
    Record::Aggregate(Aggregate {
        subject: "gtc1_stack".into(),
        quantity: "so2_mg_m3".into(),
        unit: "mg/m3".into(),
        period: Period::Hour,
        start: Timestamp(1_764_298_800_000),
        end: Timestamp(1_764_302_400_000),
        avg: Some(87.25),
        min: Some(80.0),
        max: Some(96.5),
        total: Some(1.75),
        total_unit: Some("kg".into()),
        samples: 58,
        expected: 60,
        valid: true,
        quality: Quality::Good,
        substituted: 0,
    })
}

fn cases() -> Vec<(&'static str, Stream, u64, Record, bool)> {
    vec![
        ("batch", Stream::Live, 17, batch(), false),
        ("metrics", Stream::Metrics, 5, metrics(), false),
        ("event", Stream::Events, 3, event(), true),
        ("aggregate", Stream::Emissions, 9, aggregate(), false),
    ]
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata/protobuf")
        .join(format!("{name}.bin"))
}

#[test]
fn every_message_type_matches_its_golden_file_byte_for_byte() {
    let bless = std::env::var_os("SMELTWATCH_BLESS").is_some();
    for (name, stream, seq, record, historical) in cases() {
        let envelope = Envelope::new("demo-al-01", stream, seq, historical);
        let got = encode_record(envelope, &record);
        let path = golden_path(name);
        if bless {
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with SMELTWATCH_BLESS=1)", path.display()));
        assert_eq!(
            got, want,
            "{name}: protobuf payload changed; if intended, re-bless and review the diff"
        );
    }
}

#[test]
fn every_message_type_round_trips() {
    for (name, stream, seq, record, historical) in cases() {
        let envelope = Envelope::new("demo-al-01", stream, seq, historical);
        let bytes = encode_record(envelope, &record);
        let back = decode_record(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back.site, "demo-al-01", "{name}");
        assert_eq!(back.stream, stream, "{name}");
        assert_eq!(back.seq, seq, "{name}");
        assert_eq!(back.historical, historical, "{name}");
        assert_eq!(back.record, record, "{name}");
    }
}

#[test]
fn the_golden_files_decode_to_the_documented_records() {
    // Guards the reading side independently of the encoder: a committed file, decoded.
    let bytes = std::fs::read(golden_path("batch")).unwrap();
    let d = decode_record(&bytes).unwrap();
    assert_eq!(d.record, batch());
    assert_eq!((d.seq, d.stream), (17, Stream::Live));
}

#[test]
fn protobuf_is_smaller_than_json_for_a_poll_batch() {
    let r = batch();
    let envelope = Envelope::new("demo-al-01", Stream::Live, 17, false);
    let pb = encode_record(envelope, &r);
    let json = smeltwatch::codec::json::encode_record(envelope, &r);
    assert!(
        pb.len() * 2 < json.len(),
        "protobuf {} vs json {}",
        pb.len(),
        json.len()
    );
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<u64>().prop_map(Value::UInt),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
            .prop_map(Value::Float),
        ".{0,12}".prop_map(Value::Text),
    ]
}

proptest! {
    #[test]
    fn any_reading_round_trips(
        value in proptest::option::of(arb_value()),
        q in 0usize..8,
        ts in any::<i64>(),
        unit_id in any::<u8>(),
        seq in any::<u64>(),
    ) {
        let r = Record::Batch(ReadingBatch {
            source: "s".into(),
            device: "d".into(),
            unit_id,
            poll_interval_ms: 60_000,
            scheduled: Timestamp(ts),
            readings: vec![Reading {
                point: "p".into(),
                value,
                unit: "u".into(),
                quality: Quality::ALL[q],
                ts: Timestamp(ts),
            }],
        });
        let envelope = Envelope::new("x", Stream::Live, seq, false);
        let back = decode_record(&encode_record(envelope, &r)).unwrap();
        prop_assert_eq!(back.record, r);
        prop_assert_eq!(back.seq, seq);
    }
}

fn config_with_encoding(encoding: &str, port: u16) -> smeltwatch::config::Config {
    let src = format!(
        r#"
site = "demo-al-01"
state_dir = "var/state"

[[uplinks]]
name = "plant"
type = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
streams = ["live", "metrics"]
encoding = {encoding}
"#
    );
    smeltwatch::config::parse(&src, Path::new("t.toml")).expect("valid config")
}

fn mqtt_of(cfg: &smeltwatch::config::Config) -> &smeltwatch::config::MqttConfig {
    match &cfg.uplinks[0].kind {
        UplinkKind::Mqtt(m) => m,
        #[allow(unreachable_patterns)]
        _ => panic!("not an MQTT uplink"),
    }
}

#[test]
fn encoding_is_json_by_default_and_chosen_per_uplink_or_per_stream() {
    let src = r#"
site = "s"
state_dir = "var/state"

[[uplinks]]
name = "plant"
type = "mqtt"
broker = "mqtt://127.0.0.1:1883"
"#;
    let cfg = smeltwatch::config::parse(src, Path::new("t.toml")).unwrap();
    assert_eq!(
        mqtt_of(&cfg).encoding.for_stream(Stream::Live),
        Encoding::Json
    );

    let cfg = config_with_encoding(r#""protobuf""#, 1883);
    for s in [
        Stream::Live,
        Stream::Metrics,
        Stream::Events,
        Stream::Emissions,
    ] {
        assert_eq!(mqtt_of(&cfg).encoding.for_stream(s), Encoding::Protobuf);
    }

    let cfg = config_with_encoding(r#"{ default = "json", live = "protobuf" }"#, 1883);
    let e = &mqtt_of(&cfg).encoding;
    assert_eq!(e.for_stream(Stream::Live), Encoding::Protobuf);
    assert_eq!(e.for_stream(Stream::Metrics), Encoding::Json);

    let bad = smeltwatch::config::parse(&config_src_with(r#""xml""#), Path::new("t.toml"));
    assert!(bad.is_err(), "an unknown encoding is refused");
}

fn config_src_with(encoding: &str) -> String {
    format!(
        "site = \"s\"\nstate_dir = \"v\"\n[[uplinks]]\nname = \"p\"\ntype = \"mqtt\"\nbroker = \"mqtt://127.0.0.1:1\"\nencoding = {encoding}\n"
    )
}

/// The uplink publishes live records as protobuf and metrics as JSON when configured so, against
/// a real Mosquitto.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_uplink_publishes_each_stream_in_its_configured_encoding() {
    use smeltwatch::codec::topic::topic_for;
    use smeltwatch::spool::{NewRecord, SpoolHandle};
    let broker = common::mosquitto::Mosquitto::start();
    let cfg = config_with_encoding(
        r#"{ default = "json", live = "protobuf" }"#,
        broker.addr().port(),
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = SpoolHandle::open(&dir.path().join("spool.db"), &cfg.uplinks[0].spool).unwrap();
    let (_sub, mut rx) =
        common::mosquitto::subscribe(broker.addr().port(), "smeltwatch/demo-al-01/#").await;
    let templates = &mqtt_of(&cfg).topics;
    let recs = [(Stream::Live, batch()), (Stream::Metrics, metrics())]
        .into_iter()
        .map(|(stream, r)| NewRecord {
            stream,
            topic: topic_for(templates, "demo-al-01", &r),
            body: serde_json::to_vec(&r).unwrap(),
            created: Timestamp::now(),
        })
        .collect();
    spool.append(recs).await.unwrap();
    let uplink =
        smeltwatch::uplink::mqtt::MqttUplink::new("demo-al-01", &cfg.uplinks[0], spool.clone())
            .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(uplink.run(stop.clone()));
    let mut live = None;
    let mut json = None;
    tokio::time::timeout(Duration::from_secs(30), async {
        while live.is_none() || json.is_none() {
            let (topic, payload) = rx.recv().await.expect("subscriber alive");
            if topic.contains("/live/") {
                live = Some(payload);
            } else if topic.contains("/metrics/") {
                json = Some(payload);
            }
        }
    })
    .await
    .expect("both records arrive");
    stop.cancel();
    task.await.unwrap();

    let live = decode_record(&live.unwrap()).expect("live is protobuf");
    assert_eq!((live.stream, live.seq), (Stream::Live, 1));
    assert_eq!(live.record, batch());
    let json: serde_json::Value = serde_json::from_slice(&json.unwrap()).expect("metrics are JSON");
    assert_eq!(json["calc"], "potline");
    assert_eq!(json["stream"], "metrics");
    assert_eq!(json["seq"], 1);
}
