//! Sparkplug B 3.0: golden payload files and a decoding cross-check with Eclipse Tahu's
//! JavaScript library (npm `sparkplug-payload`, installed into `tests/peers/node` by
//! `scripts/test.sh`; skipped with a message when absent unless `SMELTWATCH_REQUIRE_PEERS` is set).
//!
//! Regenerate the golden files after an intended change with `SMELTWATCH_BLESS=1` and review the
//! diff (`protoc --decode=org.eclipse.tahu.protobuf.Payload -I proto proto/sparkplug_b.proto`).

mod common;

use std::path::{Path, PathBuf};

use smeltwatch::model::{Quality, Reading, ReadingBatch, Timestamp, Value};
use smeltwatch::publish::encode::sparkplug::{
    self as spb, DeviceState, EdgeNodeModel, pb::DataType,
};

const T0: i64 = 1_764_300_253_000;

const CONFIG: &str = r#"
site = "al-line1"
state_dir = "var/state"

[[sources]]
name = "gw1"
tcp = "127.0.0.1:15020"

[[sources.devices]]
name = "rectifier"
unit_id = 1

[sources.devices.points.line_current_ka]
area = "input"
address = 0
type = "f32"
unit = "kA"

[sources.devices.points.offset_raw]
area = "holding"
address = 10
type = "i16"

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
"#;

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
    let out = std::process::Command::new("node")
        .arg(script)
        .args(&files)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "tahu decode failed: {}",
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
