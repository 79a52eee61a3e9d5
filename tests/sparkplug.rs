//! Sparkplug B 3.0: golden payload files, decoding cross-checks with Eclipse Tahu's JavaScript
//! library (npm `sparkplug-payload`, installed into `tests/peers/node`) and with the PyPI package
//! `mqtt-spb-wrapper` (in `.venv`, through `tests/peers/spb_wrapper_decode.py`), both installed by
//! `scripts/test.sh` and skipped with a message when absent unless `SMELTWATCH_REQUIRE_PEERS` is set;
//! and the edge node against a real Mosquitto, in tests named after the specification's normative
//! statements (bdSeq in the Will, seq from 0 wrapping after 255, rebirth, broker restart, the Will
//! replaced before each reconnect, primary host STATE). The agent-level statements (a device
//! timeout yields DDEATH, DCMD writes) are in `tests/sparkplug_agent.rs`.
//!
//! Regenerate the golden files after an intended change with `SMELTWATCH_BLESS=1` and review the
//! diff (`protoc --decode=org.eclipse.tahu.protobuf.Payload -I proto proto/sparkplug_b.proto`).

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::path::{Path, PathBuf};

use smeltwatch::codec::sparkplug::pb::payload::metric::Value as PbValue;
use smeltwatch::codec::sparkplug::{self as spb, DeviceState, EdgeNodeModel, pb::DataType};
use smeltwatch::model::{Metric, MetricBatch, Quality, Reading, ReadingBatch, Timestamp, Value};

const T0: i64 = 1_764_300_253_000;

const CONFIG: &str = concat!(
    include_str!("fixtures/sparkplug_gw1.toml"),
    r#"
[sources.devices.points.delta_i32]
area = "holding"
address = 12
type = "i32"

[sources.devices.points.balance_i64]
area = "holding"
address = 20
type = "i64"

[sources.devices.points.energy_kwh]
area = "input"
address = 30
type = "u64"
unit = "kWh"

[sources.devices.points.temp_c]
area = "holding"
address = 40
type = "i16"
scale = 0.1
unit = "degC"

[sources.devices.points.breaker_closed]
area = "coil"
address = 0
type = "bool"
"#,
    include_str!("fixtures/pot_001_gateway.toml"),
);

fn model() -> EdgeNodeModel {
    let cfg = smeltwatch::config::parse(CONFIG, Path::new("test.toml")).expect("valid config");
    EdgeNodeModel::from_sources(&cfg.sources)
}

fn reading(point: &str, value: Option<Value>, ts: i64) -> Reading {
    Reading {
        point: point.into(),
        quality: if value.is_some() {
            Quality::Good
        } else {
            Quality::CommFail
        },
        value,
        unit: "".into(),
        ts: Timestamp(ts),
    }
}

fn first_poll() -> ReadingBatch {
    ReadingBatch {
        source: "gw1".into(),
        device: "rectifier".into(),
        unit_id: 1,
        poll_interval_ms: 1000,
        scheduled: Timestamp(T0),
        readings: vec![
            reading("line_current_ka", Some(Value::Float(-402.5)), T0 + 11),
            reading("offset_raw", Some(Value::Int(-5)), T0 + 11),
            reading("delta_i32", Some(Value::Int(-2_000_000_000)), T0 + 11),
            reading("balance_i64", Some(Value::Int(-9_000_000_000)), T0 + 11),
            reading("energy_kwh", Some(Value::UInt(18_000_000_000_000)), T0 + 12),
            reading("temp_c", Some(Value::Float(-12.25)), T0 + 12),
            reading("breaker_closed", Some(Value::Bool(true)), T0 + 13),
        ],
    }
}

fn second_poll() -> ReadingBatch {
    let mut b = first_poll();
    b.scheduled = Timestamp(T0 + 1000);
    for r in &mut b.readings {
        r.ts = Timestamp(T0 + 1011);
    }
    b.readings[1].value = Some(Value::Int(-6));
    b.readings[5].value = None;
    b.readings[5].quality = Quality::CommFail;
    b
}

/// The session every golden file comes from: NBIRTH (bdSeq 3), DBIRTH, one DDATA, DDEATH, NDEATH.
fn session() -> Vec<(&'static str, Vec<u8>)> {
    let m = model();
    let dev = &m.devices[0];
    let mut seq = spb::SeqCounter::default();
    let mut st = DeviceState::new(dev.metrics.len());
    let nbirth = spb::nbirth(3, Timestamp(T0 + 50));
    let _ = seq.birth();
    st.absorb(dev, &first_poll());
    let dbirth = spb::dbirth(dev, st.current(), seq.next_seq(), Timestamp(T0 + 51));
    let second = second_poll();
    let changes = st.changes(dev, &second);
    let ddata = spb::ddata(dev, &changes, seq.next_seq(), Timestamp(T0 + 1050), false);
    let ddeath = spb::ddeath(seq.next_seq(), Timestamp(T0 + 2000));
    let ndeath = spb::ndeath(3, Timestamp(T0 + 3000));
    vec![
        ("nbirth", spb::encode(&nbirth)),
        ("dbirth", spb::encode(&dbirth)),
        ("ddata", spb::encode(&ddata)),
        ("ddeath", spb::encode(&ddeath)),
        ("ndeath", spb::encode(&ndeath)),
    ]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/sparkplug")
}

#[test]
fn every_message_type_matches_its_golden_file_byte_for_byte() {
    let bless = std::env::var_os("SMELTWATCH_BLESS").is_some();
    for (name, bytes) in session() {
        let path = golden_dir().join(format!("{name}.bin"));
        if bless {
            std::fs::write(&path, &bytes).unwrap();
        }
        let want = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with SMELTWATCH_BLESS=1)", path.display()));
        assert_eq!(
            bytes, want,
            "{name}: Sparkplug payload changed; re-bless if intended"
        );
    }
}

#[test]
fn every_message_type_round_trips_through_the_lenient_decoder() {
    let m = model();
    let dev = &m.devices[0];
    let files: std::collections::HashMap<_, _> = session().into_iter().collect();
    let dbirth = spb::decode(&files["dbirth"]).unwrap();
    let by_alias: std::collections::HashMap<u64, DataType> = dbirth
        .metrics
        .iter()
        .map(|x| {
            (
                x.alias.unwrap(),
                DataType::try_from(x.datatype.unwrap() as i32).unwrap(),
            )
        })
        .collect();
    let values: Vec<Option<Value>> = dbirth
        .metrics
        .iter()
        .map(|x| spb::decode_value(by_alias[&x.alias.unwrap()], x.value.as_ref()))
        .collect();
    let want: Vec<Option<Value>> = first_poll()
        .readings
        .iter()
        .map(|r| r.value.clone())
        .collect();
    assert_eq!(values, want);
    assert_eq!(dbirth.metrics.len(), dev.metrics.len());

    let ddata = spb::decode(&files["ddata"]).unwrap();
    let changed: Vec<(u64, Option<Value>, u64)> = ddata
        .metrics
        .iter()
        .map(|x| {
            let a = x.alias.unwrap();
            (
                a,
                spb::decode_value(by_alias[&a], x.value.as_ref()),
                x.timestamp.unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changed,
        vec![
            (2, Some(Value::Int(-6)), (T0 + 1011) as u64),
            (6, None, (T0 + 1011) as u64),
        ]
    );
    assert_eq!(ddata.metrics[1].is_null, Some(true));
    assert_eq!(
        spb::metric_quality(&ddata.metrics[1]),
        Some(spb::QUALITY_BAD)
    );

    let nbirth = spb::decode(&files["nbirth"]).unwrap();
    let ndeath = spb::decode(&files["ndeath"]).unwrap();
    assert_eq!(
        nbirth.metrics[0].value, ndeath.metrics[0].value,
        "same bdSeq"
    );
    assert_eq!(
        (nbirth.seq, dbirth.seq, ddata.seq),
        (Some(0), Some(1), Some(2))
    );
    assert_eq!(spb::decode(&files["ddeath"]).unwrap().seq, Some(3));
    assert_eq!(ndeath.seq, None);
}

/// `node` with `sparkplug-payload` installed in `tests/peers/node`, or a skip.
fn tahu_js() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/node");
    let ok = dir.join("node_modules/sparkplug-payload").is_dir()
        && std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if ok {
        Some(dir.join("sparkplug_decode.js"))
    } else {
        common::peers::missing("node with npm sparkplug-payload (npm ci --prefix tests/peers/node)")
    }
}

/// Decode payloads with Eclipse Tahu JS; one JSON value per payload.
pub fn decode_with_tahu(script: &Path, payloads: &[&[u8]]) -> Vec<serde_json::Value> {
    decode_with_peer(Path::new("node"), script, payloads, "tahu")
}

/// Decode payloads with a peer: `program script FILE…`, one file a payload, printing one JSON
/// line a payload; a failed run fails the test naming `peer`.
fn decode_with_peer(
    program: &Path,
    script: &Path,
    payloads: &[&[u8]],
    peer: &str,
) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let f = dir.path().join(format!("{i}.bin"));
            std::fs::write(&f, p).unwrap();
            f
        })
        .collect();
    let out = std::process::Command::new(program)
        .arg(script)
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{peer} decode failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn tahu_js_decodes_names_aliases_datatypes_values_timestamps_seq_and_bdseq() {
    let Some(script) = tahu_js() else { return };
    let files = session();
    let payloads: Vec<&[u8]> = files.iter().map(|(_, b)| b.as_slice()).collect();
    let decoded = decode_with_tahu(&script, &payloads);
    let [nbirth, dbirth, ddata, ddeath, ndeath] = &decoded[..] else {
        panic!("{decoded:?}")
    };
    eprintln!("{dbirth}\n{ddata}");

    // NBIRTH: seq 0, bdSeq Int64 3, rebirth Boolean false.
    assert_eq!(num(&nbirth["seq"]), 0.0);
    assert_eq!(nbirth["metrics"][0]["name"], "bdSeq");
    assert_eq!(nbirth["metrics"][0]["type"], "Int64");
    assert_eq!(num(&nbirth["metrics"][0]["value"]), 3.0);
    assert_eq!(nbirth["metrics"][1]["name"], "Node Control/Rebirth");
    assert_eq!(nbirth["metrics"][1]["type"], "Boolean");
    assert_eq!(nbirth["metrics"][1]["value"], false);
    assert_eq!(
        num(&ndeath["metrics"][0]["value"]),
        3.0,
        "NDEATH bdSeq = NBIRTH bdSeq"
    );
    assert!(
        ndeath.get("seq").is_none_or(serde_json::Value::is_null),
        "{ndeath}"
    );

    // DBIRTH: names, aliases, datatypes, values (negative integers and floats), timestamps.
    assert_eq!(num(&dbirth["seq"]), 1.0);
    let want = [
        ("line_current_ka", 1, "Float", -402.5, T0 + 11),
        ("offset_raw", 2, "Int16", -5.0, T0 + 11),
        ("delta_i32", 3, "Int32", -2_000_000_000.0, T0 + 11),
        ("balance_i64", 4, "Int64", -9_000_000_000.0, T0 + 11),
        ("energy_kwh", 5, "UInt64", 18_000_000_000_000.0, T0 + 12),
        ("temp_c", 6, "Double", -12.25, T0 + 12),
    ];
    for (i, (name, alias, ty, value, ts)) in want.iter().enumerate() {
        let m = &dbirth["metrics"][i];
        assert_eq!(m["name"], *name, "{m}");
        assert_eq!(num(&m["alias"]), *alias as f64, "{m}");
        assert_eq!(m["type"], *ty, "{m}");
        assert_eq!(num(&m["value"]), *value, "{m}");
        assert_eq!(num(&m["timestamp"]), *ts as f64, "{m}");
        assert_eq!(num(&m["properties"]["Quality"]["value"]), 192.0, "{m}");
    }
    assert_eq!(dbirth["metrics"][6]["type"], "Boolean");
    assert_eq!(dbirth["metrics"][6]["value"], true);

    // DDATA: aliases only, no names; seq continues.
    assert_eq!(num(&ddata["seq"]), 2.0);
    let d0 = &ddata["metrics"][0];
    assert_eq!(num(&d0["alias"]), 2.0);
    assert!(
        d0.get("name").is_none_or(|n| n.is_null() || n == ""),
        "{d0}"
    );
    assert_eq!(num(&d0["timestamp"]), (T0 + 1011) as f64);
    assert_eq!(num(&ddeath["seq"]), 3.0);
}

/// A JSON number, or a decimal string (the script prints longs as strings).
fn num(v: &serde_json::Value) -> f64 {
    match v {
        serde_json::Value::Number(n) => n.as_f64().unwrap(),
        serde_json::Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not a number: {s}")),
        other => panic!("not a number: {other}"),
    }
}

// === the edge node against a real Mosquitto ===

use std::time::Duration;

use common::mosquitto::{self, Mosquitto};
use common::status::wait_status;
use rumqttc::{AsyncClient, PublishOptions, QoS};
use smeltwatch::codec::sparkplug::pb::Payload;
use smeltwatch::config::{Stream, UplinkKind};
use smeltwatch::model::Record;
use smeltwatch::spool::{NewRecord, SpoolHandle};
use smeltwatch::uplink::sparkplug::{SparkplugSettings, SparkplugStatus, SparkplugUplink};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// How long a status may take to come true.
const WAIT: Duration = Duration::from_secs(20);

const GROUP: &str = "smelter";
const EDGE: &str = "line1";

struct Edge {
    task: JoinHandle<()>,
    stop: CancellationToken,
    status: watch::Receiver<SparkplugStatus>,
    latency: std::sync::Arc<smeltwatch::histogram::Histogram>,
}

fn spool_in(dir: &tempfile::TempDir) -> SpoolHandle {
    SpoolHandle::open(&dir.path().join("spool.db"), &Default::default()).expect("open spool")
}

fn start_edge(port: u16, spool: &SpoolHandle) -> Edge {
    start_edge_with_host(port, spool, None)
}

/// An edge node that waits for the primary host `host` (when given).
fn start_edge_with_host(port: u16, spool: &SpoolHandle, host: Option<&str>) -> Edge {
    start_edge_with_model(port, spool, host, model())
}

/// An edge node publishing `model`.
fn start_edge_with_model(
    port: u16,
    spool: &SpoolHandle,
    host: Option<&str>,
    model: EdgeNodeModel,
) -> Edge {
    let src = format!(
        "{CONFIG}\n[[uplinks]]\nname = \"scada\"\ntype = \"mqtt\"\nbroker = \"mqtt://127.0.0.1:{port}\"\n\
         reconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\nkeep_alive = \"5s\"\n"
    );
    let cfg = smeltwatch::config::parse(&src, Path::new("t.toml")).expect("valid config");
    let mqtt = match &cfg.uplinks[0].kind {
        UplinkKind::Mqtt(m) => m.clone(),
        #[allow(unreachable_patterns)]
        _ => panic!("not MQTT"),
    };
    let ids = SparkplugSettings {
        group_id: GROUP.into(),
        edge_node_id: EDGE.into(),
        primary_host_id: host.map(str::to_owned),
    };
    let up = SparkplugUplink::new("scada", &mqtt, ids, model, spool.clone()).expect("valid uplink");
    let latency = std::sync::Arc::new(smeltwatch::histogram::Histogram::default());
    let up = up.with_publish_latency(latency.clone());
    let status = up.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(up.run(stop.clone()));
    Edge {
        task,
        stop,
        status,
        latency,
    }
}

/// A message seen on `spBv1.0/#`: its type, device and decoded payload.
#[derive(Debug, Clone)]
struct Msg {
    kind: String,
    device: Option<String>,
    payload: Payload,
    raw: Vec<u8>,
}

async fn next_msg(rx: &mut mpsc::Receiver<(String, Vec<u8>)>, what: &str) -> Msg {
    let (topic, raw) = timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("subscriber alive");
    let parts: Vec<&str> = topic.split('/').collect();
    assert_eq!(&parts[..2], &["spBv1.0", GROUP], "{topic}");
    assert_eq!(parts[3], EDGE, "{topic}");
    Msg {
        kind: parts[2].to_owned(),
        device: parts.get(4).map(|d| (*d).to_owned()),
        payload: spb::decode(&raw).expect("a Sparkplug payload"),
        raw,
    }
}

/// Skip messages until one of `kind` arrives.
async fn until(rx: &mut mpsc::Receiver<(String, Vec<u8>)>, kind: &str) -> Msg {
    loop {
        let m = next_msg(rx, kind).await;
        if m.kind == kind {
            return m;
        }
    }
}

fn bd_seq_of(p: &Payload) -> u64 {
    let m = p
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(spb::BD_SEQ))
        .expect("a bdSeq metric");
    match m.value {
        Some(spb::pb::payload::metric::Value::LongValue(v)) => v,
        ref other => panic!("bdSeq value {other:?}"),
    }
}

async fn append_batches(spool: &SpoolHandle, batches: Vec<ReadingBatch>) {
    let recs = batches
        .into_iter()
        .map(|b| NewRecord {
            stream: Stream::Live,
            topic: String::new(),
            body: serde_json::to_vec(&Record::Batch(b)).unwrap(),
            created: Timestamp::now(),
        })
        .collect();
    spool.append(recs).await.expect("append");
}

fn pot_batch(value: Option<f64>, ts: i64) -> ReadingBatch {
    ReadingBatch {
        source: "gw2".into(),
        device: "pot_001".into(),
        unit_id: 2,
        poll_interval_ms: 1000,
        scheduled: Timestamp(ts),
        readings: vec![Reading {
            point: "cell_voltage_v".into(),
            value: value.map(Value::Float),
            unit: "V".into(),
            quality: if value.is_some() {
                Quality::Good
            } else {
                Quality::CommFail
            },
            ts: Timestamp(ts),
        }],
    }
}

/// A broker, a test subscriber to `spBv1.0/#` (its client and what it receives), and a spool in
/// a temporary directory (kept for as long as the spool): what the edge-node tests start from.
async fn bench() -> (
    Mosquitto,
    AsyncClient,
    mpsc::Receiver<(String, Vec<u8>)>,
    tempfile::TempDir,
    SpoolHandle,
) {
    let broker = Mosquitto::start();
    let (sub, rx) = mosquitto::subscribe(broker.port, "spBv1.0/#").await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_in(&dir);
    (broker, sub, rx, dir, spool)
}

/// NBIRTH (seq 0) then a DBIRTH per configured device, in order: the bdSeq and the two DBIRTHs.
async fn births(rx: &mut mpsc::Receiver<(String, Vec<u8>)>) -> (u64, Msg, Msg) {
    let nbirth = until(rx, "NBIRTH").await;
    assert_eq!(nbirth.payload.seq, Some(0), "seq starts at 0 on NBIRTH");
    let d1 = next_msg(rx, "DBIRTH rectifier").await;
    let d2 = next_msg(rx, "DBIRTH pot_001").await;
    assert_eq!(
        (d1.kind.as_str(), d1.device.as_deref()),
        ("DBIRTH", Some("rectifier"))
    );
    assert_eq!(
        (d2.kind.as_str(), d2.device.as_deref()),
        ("DBIRTH", Some("pot_001"))
    );
    (bd_seq_of(&nbirth.payload), d1, d2)
}

/// Births of one session: NBIRTH then a DBIRTH per configured device, seq 0, 1, 2.
async fn expect_births(rx: &mut mpsc::Receiver<(String, Vec<u8>)>) -> u64 {
    let (bd, d1, d2) = births(rx).await;
    assert_eq!((d1.payload.seq, d2.payload.seq), (Some(1), Some(2)));
    assert_eq!(d1.payload.metrics.len(), 7, "every metric of the device");
    bd
}

/// An edge node started on `spool`, past its births ([`expect_births`]) and online; with its
/// bdSeq.
async fn online_edge(
    port: u16,
    spool: &SpoolHandle,
    rx: &mut mpsc::Receiver<(String, Vec<u8>)>,
) -> (Edge, u64) {
    let mut edge = start_edge(port, spool);
    let bd = expect_births(rx).await;
    wait_status(&mut edge.status, "online", WAIT, |s| s.online).await;
    (edge, bd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdseq_in_the_will_equals_nbirths_and_seq_starts_at_0_on_nbirth() {
    let (broker, _sub, mut rx, _dir, spool) = bench().await;
    let edge = start_edge(broker.port, &spool);
    let bd = expect_births(&mut rx).await;
    assert_eq!(bd, 0, "the first bdSeq is 0");
    // Drop the connection without DISCONNECT: the broker publishes the Will.
    edge.task.abort();
    let _ = edge.task.await;
    let will = until(&mut rx, "NDEATH").await;
    assert_eq!(bd_seq_of(&will.payload), bd, "Will bdSeq = NBIRTH bdSeq");
    assert_eq!(will.payload.seq, None, "NDEATH has no seq");
    assert_eq!(will.payload.metrics.len(), 1, "NDEATH carries only bdSeq");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_increments_per_message_and_wraps_after_255() {
    let (broker, _sub, mut rx, _dir, spool) = bench().await;
    let (edge, _) = online_edge(broker.port, &spool, &mut rx).await;
    let batches = (0..300)
        .map(|i| pot_batch(Some(4.0 + f64::from(i) / 1000.0), T0 + i64::from(i)))
        .collect();
    append_batches(&spool, batches).await;
    let mut seqs = Vec::new();
    for i in 0..300 {
        let m = next_msg(&mut rx, "DDATA").await;
        assert_eq!(
            (m.kind.as_str(), m.device.as_deref()),
            ("DDATA", Some("pot_001")),
            "message {i}"
        );
        let x = &m.payload.metrics[0];
        assert_eq!(x.alias, Some(8), "aliases only");
        assert_eq!(x.name, None);
        assert_eq!(x.timestamp, Some((T0 + i) as u64), "acquisition timestamp");
        seqs.push(m.payload.seq.unwrap());
    }
    let want: Vec<u64> = (3..303).map(|i| i % 256).collect();
    assert_eq!(
        seqs, want,
        "seq continues after the births and wraps 255 -> 0"
    );
    edge.stop.cancel();
    edge.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebirth_request_yields_a_fresh_nbirth_and_all_dbirths_that_tahu_js_decodes() {
    let (broker, sub, mut rx, _dir, spool) = bench().await;
    let (edge, bd) = online_edge(broker.port, &spool, &mut rx).await;
    append_batches(&spool, vec![first_poll()]).await;
    let data = until(&mut rx, "DDATA").await;
    assert_eq!(
        data.payload.metrics.len(),
        7,
        "first values: every metric changed"
    );

    request_rebirth(&sub).await;
    let bd2 = expect_births_capturing(&mut rx).await;
    assert_eq!(bd2.0, bd, "a rebirth keeps the session's bdSeq");
    let dbirth = bd2.1;
    // Current values in the new DBIRTH, checked with our lenient decoder…
    let values: Vec<Option<Value>> = dbirth
        .payload
        .metrics
        .iter()
        .map(|m| {
            spb::decode_value(
                DataType::try_from(m.datatype.unwrap() as i32).unwrap(),
                m.value.as_ref(),
            )
        })
        .collect();
    let want: Vec<Option<Value>> = first_poll().readings.into_iter().map(|r| r.value).collect();
    assert_eq!(values, want);
    // …and with Eclipse Tahu JS, on the bytes captured from the broker.
    if let Some(script) = tahu_js() {
        let decoded = decode_with_tahu(&script, &[&dbirth.raw]);
        let m = &decoded[0]["metrics"];
        assert_eq!(m[1]["name"], "offset_raw");
        assert_eq!(m[1]["type"], "Int16");
        assert_eq!(num(&m[1]["value"]), -5.0);
        assert_eq!(num(&m[0]["value"]), -402.5);
        assert_eq!(num(&m[3]["value"]), -9_000_000_000.0);
        assert_eq!(num(&m[3]["alias"]), 4.0);
        assert_eq!(num(&m[0]["timestamp"]), (T0 + 11) as f64);
        assert_eq!(num(&decoded[0]["seq"]), 1.0);
    }
    edge.stop.cancel();
    edge.task.await.unwrap();
}

async fn request_rebirth(client: &AsyncClient) {
    client
        .publish(
            spb::topic(GROUP, spb::MessageType::NCmd, EDGE, None),
            spb::encode(&spb::rebirth_request(Timestamp::now())),
            PublishOptions::new(QoS::AtLeastOnce),
        )
        .await
        .expect("publish NCMD");
}

/// Like [`expect_births`], returning the bdSeq and the rectifier's DBIRTH.
async fn expect_births_capturing(rx: &mut mpsc::Receiver<(String, Vec<u8>)>) -> (u64, Msg) {
    let (bd, d1, _) = births(rx).await;
    (bd, d1)
}

/// Ask for rebirths until an NBIRTH is seen (the test subscriber may have re-subscribed after
/// the session's NBIRTH went out); its bdSeq, the session's.
async fn rebirth_bd_seq(sub: &AsyncClient, rx: &mut mpsc::Receiver<(String, Vec<u8>)>) -> u64 {
    loop {
        request_rebirth(sub).await;
        if let Ok(m) = timeout(Duration::from_millis(500), until(rx, "NBIRTH")).await {
            break bd_seq_of(&m.payload);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_and_an_agent_restart_each_yield_a_new_bdseq() {
    let (mut broker, sub, mut rx, _dir, spool) = bench().await;
    let mut edge = start_edge(broker.port, &spool);
    let bd0 = expect_births(&mut rx).await;
    wait_status(&mut edge.status, "online", WAIT, |s| {
        s.online && s.connects == 1
    })
    .await;
    broker.restart();
    wait_status(&mut edge.status, "reconnected", WAIT, |s| {
        s.online && s.connects >= 2
    })
    .await;
    // The test subscriber may have re-subscribed after the new NBIRTH went out: ask for a rebirth
    // (which repeats the session's bdSeq) until an NBIRTH is seen.
    let bd1 = rebirth_bd_seq(&sub, &mut rx).await;
    assert!(bd1 > bd0, "new connection, new bdSeq: {bd0} then {bd1}");
    assert_eq!(edge.status.borrow().bd_seq, Some(bd1));
    // An intentional shutdown publishes NDEATH with the current bdSeq.
    edge.stop.cancel();
    edge.task.await.unwrap();
    let death = until(&mut rx, "NDEATH").await;
    assert_eq!(bd_seq_of(&death.payload), bd1);
    // A restarted agent on the same spool continues the sequence.
    let edge = start_edge(broker.port, &spool);
    let bd2 = bd_seq_of(&until(&mut rx, "NBIRTH").await.payload);
    assert_eq!(bd2, bd1 + 1, "bdSeq persisted across restarts");
    edge.stop.cancel();
    edge.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_answering_gets_ddeath_and_a_dbirth_when_it_recovers() {
    let (broker, _sub, mut rx, _dir, spool) = bench().await;
    let (edge, _) = online_edge(broker.port, &spool, &mut rx).await;
    append_batches(
        &spool,
        vec![
            pot_batch(Some(4.1), T0),
            pot_batch(None, T0 + 1000),
            pot_batch(None, T0 + 2000),
            pot_batch(Some(4.25), T0 + 3000),
        ],
    )
    .await;
    let kinds: Vec<(String, Option<u64>)> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let m = next_msg(&mut rx, "device messages").await;
            assert_eq!(m.device.as_deref(), Some("pot_001"));
            v.push((m.kind.clone(), m.payload.seq));
            if m.kind == "DBIRTH" {
                assert_eq!(
                    spb::decode_value(DataType::Float, m.payload.metrics[0].value.as_ref()),
                    Some(Value::Float(4.25)),
                    "DBIRTH carries the recovered value"
                );
            }
        }
        v
    };
    assert_eq!(
        kinds,
        vec![
            ("DDATA".into(), Some(3)),
            ("DDEATH".into(), Some(4)),
            ("DBIRTH".into(), Some(5)),
        ],
        "one DDEATH for two dead polls, then DBIRTH"
    );
    edge.stop.cancel();
    edge.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_spooled_before_the_session_is_replayed_as_historical_after_the_births() {
    let (broker, _sub, mut rx, _dir, spool) = bench().await;
    append_batches(&spool, vec![pot_batch(Some(3.9), T0 - 60_000)]).await;
    let edge = start_edge(broker.port, &spool);
    expect_births(&mut rx).await;
    let m = until(&mut rx, "DDATA").await;
    let x = &m.payload.metrics[0];
    assert_eq!(x.is_historical, Some(true));
    assert_eq!(
        x.timestamp,
        Some((T0 - 60_000) as u64),
        "original timestamp"
    );
    edge.stop.cancel();
    edge.task.await.unwrap();
}

// === engineering units: the `engUnit` property of the births ===

/// A `live` derived point of device `derived`, in kA like its input.
const DERIVED_LIVE: &str = r#"
[[derived]]
name = "line_current_x2_ka"
expr = "rectifier.line_current_ka * 2"
unit = "kA"
stream = "live"
"#;

/// The `engUnit` property of a metric (a String, as Sparkplug hosts read it), if present.
fn eng_unit(metric: &spb::pb::payload::Metric) -> Option<String> {
    let props = metric.properties.as_ref()?;
    let i = props.keys.iter().position(|k| k == "engUnit")?;
    let v = &props.values[i];
    assert_eq!(v.r#type, Some(DataType::String as u32), "{v:?}");
    match v.value.as_ref()? {
        spb::pb::payload::property_value::Value::StringValue(s) => Some(s.clone()),
        other => panic!("engUnit is not a string: {other:?}"),
    }
}

/// Name → `engUnit` of every metric of a birth.
fn units_of(p: &Payload) -> Vec<(String, Option<String>)> {
    p.metrics
        .iter()
        .map(|m| (m.name.clone().unwrap_or_default(), eng_unit(m)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbirths_carry_the_unit_of_polled_and_derived_points_as_eng_unit() {
    let (broker, _sub, mut rx, _dir, spool) = bench().await;
    let cfg = smeltwatch::config::parse(&format!("{CONFIG}{DERIVED_LIVE}"), Path::new("t.toml"))
        .expect("valid config");
    let model = EdgeNodeModel::from_sources(&cfg.sources).with_derived(&cfg.derived);
    let edge = start_edge_with_model(broker.port, &spool, None, model);
    until(&mut rx, "NBIRTH").await;
    let rect = next_msg(&mut rx, "DBIRTH rectifier").await;
    let pot = next_msg(&mut rx, "DBIRTH pot_001").await;
    let derived = next_msg(&mut rx, "DBIRTH derived").await;
    assert_eq!(rect.device.as_deref(), Some("rectifier"));
    let some = |u: &str| Some(u.to_owned());
    assert_eq!(
        units_of(&rect.payload),
        vec![
            ("line_current_ka".to_owned(), some("kA")),
            ("offset_raw".to_owned(), None),
            ("delta_i32".to_owned(), None),
            ("balance_i64".to_owned(), None),
            ("energy_kwh".to_owned(), some("kWh")),
            ("temp_c".to_owned(), some("degC")),
            ("breaker_closed".to_owned(), None),
        ],
        "a point's declared unit, none where it declares none"
    );
    assert_eq!(
        units_of(&pot.payload),
        vec![("cell_voltage_v".to_owned(), some("V"))]
    );
    assert_eq!(
        (derived.kind.as_str(), derived.device.as_deref()),
        ("DBIRTH", Some("derived"))
    );
    assert_eq!(
        units_of(&derived.payload),
        vec![("line_current_x2_ka".to_owned(), some("kA"))]
    );
    // The quality stays beside the unit.
    assert!(
        rect.payload
            .metrics
            .iter()
            .all(|m| spb::metric_quality(m).is_some())
    );
    edge.stop.cancel();
    edge.task.await.unwrap();
}

// === the `metrics` stream: figures as metrics of the edge node (NBIRTH, NDATA) ===

/// A `metrics` derived point of device `potline1`, in V.
const DERIVED_METRICS: &str = r#"
[[derived]]
name = "mean_cell_voltage_v"
expr = "pot_001.cell_voltage_v"
unit = "V"
device = "potline1"
"#;

/// A figure of [`figures`]: `(name, value, unit, labels)`.
type Figure<'a> = (&'a str, Option<f64>, &'a str, &'a [(&'a str, &'a str)]);

/// A metric batch of calculator `calc` at `ts`: `(name, value, unit, labels)`, good where there
/// is a value, `comm_fail` where there is none.
fn figures(calc: &str, ts: i64, metrics: &[Figure<'_>]) -> MetricBatch {
    MetricBatch {
        calc: calc.into(),
        ts: Timestamp(ts),
        metrics: metrics
            .iter()
            .map(|(name, value, unit, labels)| Metric {
                name: (*name).into(),
                value: *value,
                unit: (*unit).into(),
                quality: if value.is_some() {
                    Quality::Good
                } else {
                    Quality::CommFail
                },
                ts: Timestamp(ts),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            })
            .collect(),
    }
}

async fn append_metrics(spool: &SpoolHandle, batches: Vec<MetricBatch>) {
    let recs = batches
        .into_iter()
        .map(|b| NewRecord {
            stream: Stream::Metrics,
            topic: String::new(),
            body: serde_json::to_vec(&Record::Metrics(b)).unwrap(),
            created: Timestamp::now(),
        })
        .collect();
    spool.append(recs).await.expect("append");
}

const LINE: &[(&str, &str)] = &[("line", "potline1")];

fn today_kwh_per_t(ts: i64, value: Option<f64>) -> MetricBatch {
    figures(
        "potline",
        ts,
        &[("dc_kwh_per_t_today", value, "kWh/t", LINE)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_stream_figures_are_node_metrics_of_nbirth_and_ndata_and_leave_the_spool() {
    let (broker, _sub, mut rx, _dir, spool) = bench().await;
    let src = format!("{CONFIG}{DERIVED_LIVE}{DERIVED_METRICS}");
    let cfg = smeltwatch::config::parse(&src, Path::new("t.toml")).expect("valid config");
    let mut node = spb::node_metrics(&cfg.derived, None);
    node.push(spb::NodeMetric::calc(
        "potline",
        "potline1",
        None,
        "dc_kwh_per_t_today",
        "kWh/t",
    ));
    let model = EdgeNodeModel::from_sources(&cfg.sources)
        .with_derived(&cfg.derived)
        .with_node_metrics(node);
    // Waiting before the session: replayed after the births, as historical.
    append_metrics(&spool, vec![today_kwh_per_t(T0 - 60_000, Some(13_100.0))]).await;
    let mut edge = start_edge_with_model(broker.port, &spool, None, model);

    // NBIRTH declares the node metrics after every device metric: the 8 polled points, the live
    // derived point (9), then the metrics derived point and the potline figure.
    let nbirth = until(&mut rx, "NBIRTH").await;
    type Declared<'a> = (Option<&'a str>, Option<u64>, Option<u32>, Option<String>);
    let declared: Vec<Declared<'_>> = nbirth
        .payload
        .metrics
        .iter()
        .skip(2)
        .map(|m| (m.name.as_deref(), m.alias, m.datatype, eng_unit(m)))
        .collect();
    let double = Some(DataType::Double as u32);
    assert_eq!(
        declared,
        vec![
            (
                Some("derived/potline1/mean_cell_voltage_v"),
                Some(10),
                double,
                Some("V".to_owned())
            ),
            (
                Some("calc/potline/potline1/dc_kwh_per_t_today"),
                Some(11),
                double,
                Some("kWh/t".to_owned())
            ),
        ]
    );
    assert!(
        nbirth.payload.metrics[2..]
            .iter()
            .all(|m| m.is_null == Some(true) && spb::metric_quality(m) == Some(spb::QUALITY_BAD)),
        "nothing computed yet in this run: {:?}",
        nbirth.payload
    );
    let replay = until(&mut rx, "NDATA").await;
    let x = &replay.payload.metrics[..];
    assert_eq!(x.len(), 1, "{:?}", replay.payload);
    assert_eq!(
        (
            x[0].alias,
            x[0].name.as_deref(),
            x[0].is_historical,
            x[0].timestamp
        ),
        (Some(11), None, Some(true), Some((T0 - 60_000) as u64))
    );
    assert_eq!(x[0].value, Some(PbValue::DoubleValue(13_100.0)));
    wait_status(&mut edge.status, "the replay acked", WAIT, |s| {
        s.online && s.acked_total == 1
    })
    .await;

    // Live: the derived point, a report no node metric stands for, the potline figure; then the
    // derived point without a value.
    append_metrics(
        &spool,
        vec![
            figures(
                "derived",
                T0,
                &[("mean_cell_voltage_v", Some(4.05), "V", &[])],
            ),
            figures(
                "completeness",
                T0,
                &[("completeness_received_pct", Some(100.0), "%", LINE)],
            ),
            today_kwh_per_t(T0, Some(13_012.6)),
            figures(
                "derived",
                T0 + 1000,
                &[("mean_cell_voltage_v", None, "V", &[])],
            ),
        ],
    )
    .await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = until(&mut rx, "NDATA").await;
        assert_eq!(m.device, None, "a node message");
        for x in m.payload.metrics {
            assert_eq!(x.name, None, "aliases only: {x:?}");
            assert_eq!(x.is_historical, None, "live: {x:?}");
            seen.push((
                x.alias.unwrap(),
                x.timestamp.unwrap() as i64,
                spb::decode_value(DataType::Double, x.value.as_ref()),
                x.is_null,
                spb::metric_quality(&x),
            ));
        }
    }
    assert_eq!(
        seen,
        vec![
            (
                10,
                T0,
                Some(Value::Float(4.05)),
                None,
                Some(spb::QUALITY_GOOD)
            ),
            (
                11,
                T0,
                Some(Value::Float(13_012.6)),
                None,
                Some(spb::QUALITY_GOOD)
            ),
            (10, T0 + 1000, None, Some(true), Some(spb::QUALITY_BAD)),
        ],
        "(alias, timestamp, value, is_null, Quality): the first report of a figure and a change of \
         quality carry the quality"
    );
    // Every record leaves the spool once the broker proved it has the NDATA, the report that
    // went nowhere too.
    wait_status(&mut edge.status, "every record acked", WAIT, |s| {
        s.acked_total == 5 && s.unproven == 0
    })
    .await;
    assert_eq!(spool_records(&spool).await, 0);
    edge.stop.cancel();
    edge.task.await.unwrap();
}

/// The agent of the potline test: the simulator's potline (rectifier and four pots) polled every
/// 100 ms, its potline calculator in plant time 120 times faster than the clock (a plant minute
/// every half second) from a minute before the end of March (local time, UTC+8), so that a day,
/// a month and the year-to-date close within a second; a `metrics` derived point (the mean cell
/// voltage), a Sparkplug uplink that carries `live` and `metrics`, and an MQTT uplink with the
/// `metrics` stream as JSON, against which the node metrics are checked.
fn potline_agent_config(potline: u16, mqtt: u16, state: &Path) -> String {
    format!(
        r#"
site = "spb-calc"
state_dir = "{state}"

[register_maps.pcu.points]
cell_voltage_v = {{ area = "input", address = 0, type = "f32", unit = "V" }}
in_service = {{ area = "input", address = 5, type = "bool", bit = 0 }}
cut_out = {{ area = "input", address = 5, type = "bool", bit = 2 }}

[[sources]]
name = "potline1"
tcp = "127.0.0.1:{potline}"
timeout = "500ms"
default_poll = "100ms"

[[sources.devices]]
name = "rectifier"
unit_id = 1
points.line_current_ka = {{ area = "input", address = 0, type = "f32", unit = "kA" }}

[[sources.devices]]
name = "pot_{{n:03}}"
count = 4
unit_id = 10
map = "pcu"

[calc]
gwp = "ar5"
grid_factor = "qinghai-2022"
utc_offset_hours = 8

[calc.simulated_time]
scale = 120
start = "2025-03-31T15:59:00Z"

[[calc.potlines]]
name = "potline1"
rectifier = "potline1/rectifier"
pots = "potline1/pot_*"
current_efficiency = 0.935
max_gap = "2m"
approved_capacity_t_per_year = 100000

[[derived]]
name = "mean_cell_voltage_v"
expr = "mean(potline1/pot_*.cell_voltage_v)"
unit = "V"
device = "potline1"
trigger = "1s"

[[uplinks]]
name = "scada"
type = "sparkplug"
broker = "mqtt://127.0.0.1:{mqtt}"
group_id = "{GROUP}"
edge_node_id = "{EDGE}"
streams = ["live", "metrics"]
keep_alive = "5s"
reconnect_min = "100ms"
reconnect_max = "1s"

[[uplinks]]
name = "plant"
type = "mqtt"
broker = "mqtt://127.0.0.1:{mqtt}"
streams = ["metrics"]
keep_alive = "5s"
reconnect_min = "100ms"
reconnect_max = "1s"
"#,
        state = state.display()
    )
}

/// Node metric name and timestamp → value and Sparkplug quality, as NDATA carried them.
type SpbValues = std::collections::HashMap<(String, u64), (Option<f64>, Option<i32>)>;
/// Node metric name and timestamp → value and quality, as the JSON uplink carried them.
type JsonValues = std::collections::HashMap<(String, u64), (Option<f64>, String)>;

/// The node metric name (docs/TOPICS.md, "Node metrics") of a figure the MQTT uplink published
/// as JSON (`calc`, one metric): `calc/<calc>/<line>[/<period>]/<name>` for the potline's
/// calculators, `derived/potline1/<name>` for the derived point; none for a cell's figure and
/// the completeness reports, which are no node metrics.
fn node_name_of_json(calc: &str, metric: &serde_json::Value) -> Option<String> {
    let name = metric["name"].as_str().expect("a name");
    let labels = &metric["labels"];
    match calc {
        "derived" => Some(format!("derived/potline1/{name}")),
        "completeness" => None,
        _ if labels.get("cell").is_some() => None,
        _ => {
            let line = labels["line"].as_str().expect("a line label");
            Some(
                match labels.get("period").and_then(serde_json::Value::as_str) {
                    Some(period) => format!("calc/{calc}/{line}/{period}/{name}"),
                    None => format!("calc/{calc}/{line}/{name}"),
                },
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_publishes_its_potline_figures_and_metrics_derived_points_as_node_metrics() {
    use std::collections::HashMap;

    let broker = Mosquitto::start();
    let (_sub, mut rx) = mosquitto::subscribe(broker.port, "spBv1.0/#").await;
    let (_json_sub, mut json) =
        mosquitto::subscribe(broker.port, "smeltwatch/spb-calc/metrics/#").await;
    let sim_cfg: smeltwatch::simulator::SimulatorConfig = toml::from_str(
        r#"
seed = 7
tick = "50ms"
time_scale = 120.0

[[potlines]]
name = "potline1"
listen = "127.0.0.1:1"
cells = 4
anode_effects_per_cell_day = 0.0
"#,
    )
    .expect("simulator section parses");
    let sim = smeltwatch::simulator::start(&sim_cfg, smeltwatch::simulator::BindMode::AnyPort)
        .await
        .expect("simulator starts");
    let state = tempfile::tempdir().unwrap();
    let toml = potline_agent_config(
        common::plant::endpoint_port(&sim, "potline1"),
        broker.port,
        state.path(),
    );
    let cfg = smeltwatch::config::parse(&toml, Path::new("spb-calc.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let agent = smeltwatch::app::start(cfg, Default::default())
        .await
        .expect("agent starts");

    // NBIRTH declares the node metrics, each Double with its unit: the minute figures, the
    // closed periods' one per period, the derived point.
    let nbirth = until(&mut rx, "NBIRTH").await;
    let declared: HashMap<String, (u64, Option<u32>, Option<String>)> = nbirth
        .payload
        .metrics
        .iter()
        .filter_map(|m| Some((m.name.clone()?, (m.alias?, m.datatype, eng_unit(m)))))
        .collect();
    let double = Some(DataType::Double as u32);
    for (name, unit) in [
        ("calc/potline/potline1/line_current_ka", "kA"),
        ("calc/potline/potline1/dc_kwh_per_t_today", "kWh/t"),
        ("calc/potline/potline1/day/dc_kwh_per_t", "kWh/t"),
        ("calc/potline/potline1/month/dc_kwh_per_t", "kWh/t"),
        ("calc/potline/potline1/ytd/capacity_utilisation_pct", "%"),
        (
            "calc/anode_effect/potline1/day/aem_min_per_cell_day",
            "min/cell-day",
        ),
        ("calc/emissions/potline1/month/pfc_co2e_t", "t"),
        ("derived/potline1/mean_cell_voltage_v", "V"),
    ] {
        let (_, datatype, eng) = declared
            .get(name)
            .unwrap_or_else(|| panic!("{name} not declared in {:?}", declared.keys()));
        assert_eq!((*datatype, eng.as_deref()), (double, Some(unit)), "{name}");
    }
    let by_alias: HashMap<u64, &str> = declared
        .iter()
        .map(|(name, (alias, _, _))| (*alias, name.as_str()))
        .collect();

    // Every NDATA value and every JSON value of the same figure and timestamp, until the line
    // current and the derived mean have both arrived good on both sides, and the month closed.
    let mut spb_values: SpbValues = HashMap::new();
    let mut json_values: JsonValues = HashMap::new();
    let wanted = [
        "calc/potline/potline1/line_current_ka",
        "derived/potline1/mean_cell_voltage_v",
    ];
    let month = "calc/potline/potline1/month/dc_kwh_per_t";
    let month_closed = |spb_values: &SpbValues, json_values: &JsonValues| {
        json_values
            .keys()
            .any(|(n, ts)| n == month && spb_values.contains_key(&(n.clone(), *ts)))
    };
    let both_good = |spb_values: &SpbValues, json_values: &JsonValues, name: &str| {
        json_values.iter().any(|((n, ts), (v, q))| {
            n == name && q == "good" && v.is_some() && spb_values.contains_key(&(n.clone(), *ts))
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // The last Quality announced live per alias (DATA repeats it only when it changes or is bad).
    let mut announced: HashMap<u64, i32> = HashMap::new();
    while !(wanted
        .iter()
        .all(|n| both_good(&spb_values, &json_values, n))
        && month_closed(&spb_values, &json_values))
    {
        tokio::select! {
            m = rx.recv() => {
                let (topic, raw) = m.expect("subscriber alive");
                if topic != format!("spBv1.0/{GROUP}/NDATA/{EDGE}") {
                    continue;
                }
                for x in spb::decode(&raw).expect("a Sparkplug payload").metrics {
                    let alias = x.alias.expect("NDATA by alias");
                    assert_eq!(x.name, None, "{x:?}");
                    let name = by_alias.get(&alias).unwrap_or_else(|| panic!("undeclared alias {alias}"));
                    // Replayed figures (spooled before the births) say their quality when it is
                    // not good; live ones when it changed since the last live report.
                    let quality = if x.is_historical == Some(true) {
                        Some(spb::metric_quality(&x).unwrap_or(spb::QUALITY_GOOD))
                    } else {
                        if let Some(q) = spb::metric_quality(&x) {
                            announced.insert(alias, q);
                        }
                        announced.get(&alias).copied()
                    };
                    let v = match spb::decode_value(DataType::Double, x.value.as_ref()) {
                        Some(Value::Float(f)) => Some(f),
                        None => None,
                        other => panic!("not a Double: {other:?}"),
                    };
                    spb_values.insert(
                        ((*name).to_owned(), x.timestamp.expect("a timestamp")),
                        (v, quality),
                    );
                }
            }
            m = json.recv() => {
                let (_, raw) = m.expect("subscriber alive");
                let msg: serde_json::Value = serde_json::from_slice(&raw).expect("JSON");
                let calc = msg["calc"].as_str().unwrap_or_default().to_owned();
                for metric in msg["metrics"].as_array().into_iter().flatten() {
                    if let Some(name) = node_name_of_json(&calc, metric) {
                        // Every figure the calculators emit is declared (a figure left out of
                        // the birth would never reach a host).
                        assert!(declared.contains_key(&name), "{name} is not a node metric: {metric}");
                        json_values.insert(
                            (name, metric["ts"].as_u64().expect("ts in ms")),
                            (metric["value"].as_f64(), metric["quality"].as_str().unwrap_or_default().to_owned()),
                        );
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => panic!(
                "no matching line current and mean, or no month's end, within 60 s: Sparkplug {spb_values:?}, JSON {json_values:?}"
            ),
        }
    }
    agent.shutdown().await;
    sim.shutdown().await;

    // The same figure at the same instant has the same value on both uplinks, and a good one
    // the Sparkplug quality 192.
    let mut compared = 0;
    for (key, (spb_value, spb_quality)) in &spb_values {
        let Some((json_value, json_quality)) = json_values.get(key) else {
            continue;
        };
        assert_eq!(spb_value, json_value, "{key:?}");
        if json_quality == "good" {
            assert_eq!(*spb_quality, Some(spb::QUALITY_GOOD), "{key:?}");
        }
        compared += 1;
    }
    assert!(compared >= 3, "{compared} figures compared");
}

// The calculators' figures over a month's end (`common::month_end`, which `tests/calc_catalog.rs`
// checks against the catalogue), against the node metrics.

#[test]
fn every_figure_the_calculators_emit_over_a_months_end_is_one_declared_node_metric() {
    let calc: smeltwatch::calc::CalcConfig =
        toml::from_str(common::month_end::EVERY_INPUT).expect("parses");
    let model = EdgeNodeModel::default().with_node_metrics(spb::node_metrics(&[], Some(&calc)));
    let mut hit = vec![false; model.node.metrics.len()];
    for m in common::month_end::metric_batches(&calc) {
        for x in &m.metrics {
            let i = model.node_metric_index(&m.calc, x);
            if x.labels.iter().any(|(k, _)| &**k == spb::CELL_LABEL) {
                assert_eq!(i, None, "a cell's figure is no node metric: {x:?}");
                continue;
            }
            let i = i.unwrap_or_else(|| panic!("{} {x:?} is not declared", m.calc));
            assert_eq!(model.node.unit(i).unwrap_or(""), &*x.unit, "{x:?}");
            hit[i] = true;
        }
    }
    let never: Vec<&str> = model
        .node
        .metrics
        .iter()
        .zip(&hit)
        .filter(|(_, hit)| !**hit)
        .map(|(m, _)| &*m.name)
        .collect();
    assert!(never.is_empty(), "declared but never emitted: {never:#?}");
    assert!(
        hit.len() > 100,
        "{} node metrics: a potline's and a smelter's figures, per period",
        hit.len()
    );
}

// === primary host awareness (Sparkplug 3.0: STATE) ===

const HOST: &str = "scada_host";

/// Publish the host's retained STATE, as a Sparkplug 3.0 primary host application does.
async fn host_state(client: &AsyncClient, online: bool, timestamp: i64) {
    client
        .publish(
            smeltwatch::uplink::sparkplug::state_topic(HOST),
            format!(r#"{{"online":{online},"timestamp":{timestamp}}}"#).into_bytes(),
            PublishOptions::new(QoS::AtLeastOnce).retain(true),
        )
        .await
        .expect("publish STATE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_primary_host_nbirth_waits_for_its_online_state_and_its_offline_state_yields_ndeath_and_spooling()
 {
    let broker = Mosquitto::start();
    // Only the edge node's messages: the STATE topic is outside the group.
    let (host, mut rx) = mosquitto::subscribe(broker.port, &format!("spBv1.0/{GROUP}/#")).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_in(&dir);
    let mut edge = start_edge_with_host(broker.port, &spool, Some(HOST));

    // Connected and subscribed, but no host yet: no NBIRTH, and data piles up in the spool.
    wait_status(&mut edge.status, "waiting for the host", WAIT, |s| {
        s.waiting_for_host && s.connects == 1
    })
    .await;
    append_batches(&spool, vec![pot_batch(Some(4.05), T0)]).await;
    assert!(
        timeout(Duration::from_millis(700), rx.recv())
            .await
            .is_err(),
        "nothing is published before the primary host is online"
    );
    assert_eq!(
        spool.stats().await.unwrap().records,
        1,
        "the batch waits in the spool"
    );

    // The host comes online: births, then the spooled batch as history.
    host_state(&host, true, T0 + 10_000).await;
    let bd0 = expect_births(&mut rx).await;
    let m = until(&mut rx, "DDATA").await;
    assert_eq!(m.payload.metrics[0].is_historical, Some(true));
    assert_eq!(m.payload.metrics[0].timestamp, Some(T0 as u64));

    // An offline STATE older than the last online one is ignored: the session goes on, and a
    // rebirth request is answered with the same bdSeq.
    host_state(&host, false, T0 + 5_000).await;
    request_rebirth(&host).await;
    let next = loop {
        // Our own NCMD comes back on the subscription: skip it.
        let m = next_msg(&mut rx, "NBIRTH after a stale STATE").await;
        if m.kind != "NCMD" {
            break m;
        }
    };
    assert_eq!(
        next.kind, "NBIRTH",
        "a stale offline STATE must not end the session"
    );
    assert_eq!(bd_seq_of(&next.payload), bd0);
    until(&mut rx, "DBIRTH").await;
    until(&mut rx, "DBIRTH").await;

    // The host goes offline: NDEATH with the session's bdSeq, then a new connection that waits.
    host_state(&host, false, T0 + 20_000).await;
    let death = until(&mut rx, "NDEATH").await;
    assert_eq!(
        bd_seq_of(&death.payload),
        bd0,
        "NDEATH carries the session's bdSeq"
    );
    wait_status(
        &mut edge.status,
        "reconnected, waiting for the host",
        WAIT,
        |s| s.host_offline_total == 1 && s.connects == 2 && s.waiting_for_host,
    )
    .await;
    // Data keeps being spooled meanwhile.
    append_batches(&spool, vec![pot_batch(Some(4.25), T0 + 30_000)]).await;
    assert!(
        timeout(Duration::from_millis(700), rx.recv())
            .await
            .is_err(),
        "nothing is published while the primary host is offline"
    );

    // Back online: new births with the next bdSeq, then what was spooled, as history.
    host_state(&host, true, T0 + 40_000).await;
    let bd1 = expect_births(&mut rx).await;
    assert_eq!(bd1, bd0 + 1, "a new session, a new bdSeq");
    let m = until(&mut rx, "DDATA").await;
    assert_eq!(m.payload.metrics[0].is_historical, Some(true));
    assert_eq!(m.payload.metrics[0].timestamp, Some((T0 + 30_000) as u64));
    assert_eq!(
        spb::decode_value(DataType::Float, m.payload.metrics[0].value.as_ref()),
        Some(Value::Float(4.25))
    );
    edge.stop.cancel();
    edge.task.await.unwrap();
}

#[test]
fn state_payloads_of_sparkplug_3_and_2_2_are_understood() {
    use smeltwatch::uplink::sparkplug::HostState;
    assert_eq!(
        HostState::parse(br#"{"online":true,"timestamp":1764300253000}"#),
        Some(HostState {
            online: true,
            timestamp: Some(1_764_300_253_000)
        })
    );
    assert_eq!(
        HostState::parse(b"OFFLINE"),
        Some(HostState {
            online: false,
            timestamp: None
        })
    );
    assert_eq!(HostState::parse(br#"{"timestamp":1}"#), None);
    assert_eq!(HostState::parse(b"maybe"), None);
}

// === mqtt-spb-wrapper (PyPI) decodes what Mosquitto delivered ===

/// Decode payloads (in receiving order) with `tests/peers/spb_wrapper_decode.py`.
fn decode_with_spb_wrapper(python: &Path, payloads: &[&[u8]]) -> Vec<serde_json::Value> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/spb_wrapper_decode.py");
    decode_with_peer(python, &script, payloads, "mqtt-spb-wrapper")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_spb_wrapper_decodes_nbirth_dbirth_and_ddata_captured_from_mosquitto() {
    let Some(python) = common::peers::python_with_spb_wrapper() else {
        return;
    };
    let (broker, sub, mut rx, _dir, spool) = bench().await;
    // A restarted agent: the last bdSeq used was 41, so this session's is 42.
    spool
        .kv_set(
            smeltwatch::uplink::sparkplug::BD_SEQ_KEY.to_owned(),
            b"41".to_vec(),
        )
        .await
        .unwrap();
    let mut edge = start_edge(broker.port, &spool);
    let nbirth = until(&mut rx, "NBIRTH").await;
    let first_dbirth = next_msg(&mut rx, "DBIRTH rectifier").await;
    until(&mut rx, "DBIRTH").await;
    wait_status(&mut edge.status, "online", WAIT, |s| s.online).await;
    append_batches(&spool, vec![first_poll(), second_poll()]).await;
    let ddata1 = until(&mut rx, "DDATA").await;
    let ddata2 = until(&mut rx, "DDATA").await;
    // A DBIRTH with values: after a rebirth request.
    request_rebirth(&sub).await;
    until(&mut rx, "NBIRTH").await;
    let dbirth = next_msg(&mut rx, "DBIRTH rectifier with values").await;
    assert_eq!(dbirth.device.as_deref(), Some("rectifier"));
    edge.stop.cancel();
    edge.task.await.unwrap();

    let raws: Vec<&[u8]> = [&nbirth, &first_dbirth, &ddata1, &ddata2, &dbirth]
        .iter()
        .map(|m| m.raw.as_slice())
        .collect();
    let decoded = decode_with_spb_wrapper(&python, &raws);
    let [nb, db0, d1, d2, db] = &decoded[..] else {
        panic!("{decoded:?}")
    };

    // NBIRTH: seq 0, bdSeq Int64 (4) = 42, rebirth Boolean (11) false.
    assert_eq!(nb["seq"], 0);
    assert_eq!(nb["metrics"][0]["name"], "bdSeq");
    assert_eq!(nb["metrics"][0]["datatype"], 4);
    assert_eq!(nb["metrics"][0]["value"], 42);
    assert_eq!(nb["metrics"][1]["name"], "Node Control/Rebirth");
    assert_eq!(nb["metrics"][1]["datatype"], 11);
    assert_eq!(nb["metrics"][1]["value"], false);

    // The first DBIRTH (no values read yet): names, aliases and datatypes, values null.
    assert_eq!(db0["seq"], 1);
    let want = [
        ("line_current_ka", 1, 9), // Float
        ("offset_raw", 2, 2),      // Int16
        ("delta_i32", 3, 3),       // Int32
        ("balance_i64", 4, 4),     // Int64
        ("energy_kwh", 5, 8),      // UInt64
        ("temp_c", 6, 10),         // Double (scaled)
        ("breaker_closed", 7, 11), // Boolean
    ];
    for (i, (name, alias, datatype)) in want.iter().enumerate() {
        let m = &db0["metrics"][i];
        assert_eq!(m["name"], *name, "{m}");
        assert_eq!(m["alias"], *alias, "{m}");
        assert_eq!(m["datatype"], *datatype, "{m}");
        assert_eq!(m["is_null"], true, "{m}");
    }

    // DDATA: aliases only, values (negative integers and floats) and acquisition timestamps.
    assert_eq!(d1["seq"], 3);
    let values = [
        serde_json::json!(-402.5),
        serde_json::json!(-5),
        serde_json::json!(-2_000_000_000),
        serde_json::json!(-9_000_000_000i64),
        serde_json::json!(18_000_000_000_000u64),
        serde_json::json!(-12.25),
        serde_json::json!(true),
    ];
    let stamps = [11, 11, 11, 11, 12, 12, 13];
    for (i, value) in values.iter().enumerate() {
        let m = &d1["metrics"][i];
        assert_eq!(m["name"], serde_json::Value::Null, "aliases only: {m}");
        assert_eq!(m["alias"], i + 1, "{m}");
        assert_eq!(&m["value"], value, "{m}");
        assert_eq!(m["timestamp"], T0 + stamps[i], "{m}");
        assert_eq!(m["is_historical"], false, "{m}");
    }
    // Report by exception: only what changed, with the quality of a value that went bad.
    assert_eq!(d2["seq"], 4);
    let changed = d2["metrics"].as_array().unwrap();
    assert_eq!(changed.len(), 2, "{d2}");
    assert_eq!(
        (&changed[0]["alias"], &changed[0]["value"]),
        (&serde_json::json!(2), &serde_json::json!(-6))
    );
    assert_eq!(changed[0]["timestamp"], T0 + 1011);
    assert_eq!(changed[1]["alias"], 6);
    assert_eq!(changed[1]["is_null"], true);
    assert_eq!(changed[1]["quality"], spb::QUALITY_BAD);

    // The DBIRTH after the rebirth: current values by name, with their Quality.
    assert_eq!(db["seq"], 1);
    let m = &db["metrics"];
    assert_eq!(
        (&m[1]["name"], &m[1]["value"]),
        (&"offset_raw".into(), &(-6).into())
    );
    assert_eq!(m[1]["quality"], spb::QUALITY_GOOD);
    assert_eq!(
        (&m[3]["name"], &m[3]["value"]),
        (&"balance_i64".into(), &serde_json::json!(-9_000_000_000i64))
    );
    assert_eq!(m[5]["name"], "temp_c");
    assert_eq!(
        m[5]["quality"],
        spb::QUALITY_BAD,
        "temp_c went bad in the second poll"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_is_replaced_before_each_reconnect_and_carries_the_new_bdseq() {
    let (mut broker, sub, mut rx, _dir, spool) = bench().await;
    let mut edge = start_edge(broker.port, &spool);
    let bd0 = expect_births(&mut rx).await;
    broker.restart();
    wait_status(&mut edge.status, "reconnected", WAIT, |s| {
        s.online && s.connects >= 2
    })
    .await;
    // Make sure the test subscriber is back too: a rebirth is answered on the new session.
    let bd1 = rebirth_bd_seq(&sub, &mut rx).await;
    assert!(bd1 > bd0, "{bd0} then {bd1}");
    // The connection dies without a DISCONNECT: the broker publishes this connection's Will.
    edge.task.abort();
    let _ = edge.task.await;
    let will = until(&mut rx, "NDEATH").await;
    assert_eq!(
        bd_seq_of(&will.payload),
        bd1,
        "the Will of the new connection carries the new bdSeq, not the first one"
    );
}

// === delivery: DATA is QoS 0, the spool lets go only of what the broker proved it received ===

async fn spool_records(spool: &SpoolHandle) -> u64 {
    spool.stats().await.expect("spool stats").records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sent_to_a_frozen_broker_stays_in_the_spool_and_arrives_after_it_resumes() {
    let (broker, _sub, mut rx, _dir, spool) = bench().await;
    let (mut edge, _) = online_edge(broker.port, &spool, &mut rx).await;
    append_batches(&spool, vec![pot_batch(Some(4.0), T0)]).await;
    until(&mut rx, "DDATA").await;
    wait_status(&mut edge.status, "the first record acked", WAIT, |s| {
        s.acked_total == 1
    })
    .await;

    // Frozen: the process stops, its TCP connections stay open, the kernel still takes bytes.
    broker.pause();
    const FROZEN: i64 = 5;
    let frozen: Vec<ReadingBatch> = (1..=FROZEN)
        .map(|i| pot_batch(Some(4.0 + i as f64 / 10.0), T0 + i * 1000))
        .collect();
    append_batches(&spool, frozen).await;
    wait_status(&mut edge.status, "the silent broker noticed", WAIT, |s| {
        !s.online
    })
    .await;
    let acked = edge.status.borrow().acked_total;
    assert_eq!(
        spool_records(&spool).await,
        FROZEN as u64,
        "records sent to the frozen broker stay in the spool (acked_total {acked})"
    );

    broker.resume();
    // Every one arrives (the replay is historical; the frozen connection's own copies may arrive
    // too: duplicates, never a gap).
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < FROZEN as usize {
        let m = next_msg(&mut rx, "the frozen records").await;
        if m.kind == "DDATA" {
            for x in &m.payload.metrics {
                let ts = x.timestamp.expect("a metric timestamp") as i64;
                if (T0 + 1000..=T0 + FROZEN * 1000).contains(&ts) {
                    seen.insert(ts);
                }
            }
        }
    }
    wait_status(&mut edge.status, "every record acked", WAIT, |s| {
        s.online && s.acked_total == 1 + FROZEN as u64
    })
    .await;
    assert_eq!(spool_records(&spool).await, 0);
    // Publish latency: each batch once, when its group was proven (not when it went to the
    // frozen broker).
    assert_eq!(edge.latency.snapshot().count, 1 + FROZEN as u64);
    edge.stop.cancel();
    edge.task.await.unwrap();
}
