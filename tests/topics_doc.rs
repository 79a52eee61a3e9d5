//! The example messages of docs/TOPICS.md are real: one per stream (live, metrics, events,
//! emissions), each the JSON encoder's output for a record built here, pinned byte for byte in
//! `tests/testdata/json/`, and each docs example is the same JSON value as its golden file. A
//! change of the encoder fails the golden comparison; an edit of the docs that drifts from the
//! golden file fails the docs comparison.
//!
//! A docs example is the first ```json block after a line `<!-- golden: tests/testdata/json/NAME -->`
//! (it may be wrapped over several lines: it is compared as parsed JSON). To regenerate the
//! golden files after an intended change, run with `SMELTWATCH_BLESS=1`, review the diff and copy
//! the new payloads into the docs.

mod common;

use std::path::{Path, PathBuf};

use smeltwatch::codec::Envelope;
use smeltwatch::codec::json::encode_record;
use smeltwatch::codec::topic::topic_for;
use smeltwatch::config::{Stream, TopicTemplates};
use smeltwatch::model::{
    Aggregate, Metric, MetricBatch, Period, Quality, Record, Timestamp, Value,
};

const SITE: &str = "demo-al-01";
/// 2025-11-28T03:24:13Z.
const T0: i64 = 1_764_300_253_000;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The live example: [`common::records::documented_live_batch`].
fn live() -> Record {
    Record::Batch(common::records::documented_live_batch())
}

/// The potline's minute figures at the end of a minute (METRICS.md, "Minute figures").
fn metrics() -> Record {
    let end = Timestamp(1_764_300_300_000); // 03:25:00Z
    let metric = |name: &str, value: f64, unit: &str| Metric {
        name: name.into(),
        value: Some(value),
        unit: unit.into(),
        quality: Quality::Good,
        ts: end,
        labels: vec![("line".into(), "potline1".into())],
    };
    Record::Metrics(MetricBatch {
        calc: "potline".into(),
        ts: end,
        metrics: vec![
            metric("line_current_ka", 400.3, "kA"),
            metric("cells_in_service", 288.0, ""),
            metric("production_today_t", 188.42, "t"),
            metric("dc_kwh_per_t_today", 13_012.6, "kWh/t"),
            metric("ac_kwh_per_t_today", 13_239.1, "kWh/t"),
        ],
    })
}

/// The end of an anode effect, as the anode-effect calculator reports it.
fn event() -> Record {
    Record::Event(common::records::pot_017_anode_effect_end(
        vec![
            ("start".into(), Value::Int(T0)),
            ("duration_s".into(), Value::Float(42.0)),
            ("peak_voltage_v".into(), Value::Float(31.2)),
            ("mean_voltage_v".into(), Value::Float(18.4)),
        ],
        "anode effect on potline1/pot_017 ended after 42.0 s (peak 31.2 V, mean 18.4 V)",
    ))
}

/// An hour of a stack's SO2 mass flow (METRICS.md, "Stack aggregates": 47 valid minutes at a
/// mean of 136.48 kg/h give a total of 136.48 kg).
fn emissions() -> Record {
    Record::Aggregate(Aggregate {
        subject: "gtc1_stack".into(),
        quantity: "so2_kg_h".into(),
        unit: "kg/h".into(),
        period: Period::Hour,
        start: Timestamp(1_764_298_800_000), // 03:00Z
        end: Timestamp(1_764_302_400_000),
        avg: Some(136.48),
        min: Some(121.9),
        max: Some(152.3),
        total: Some(136.48),
        total_unit: Some("kg".into()),
        samples: 47,
        expected: 60,
        valid: true,
        quality: Quality::Good,
        substituted: 0,
    })
}

/// (golden file, stream, seq, record)
fn cases() -> Vec<(&'static str, Stream, u64, Record)> {
    vec![
        ("batch.json", Stream::Live, 17, live()),
        ("metrics.json", Stream::Metrics, 5, metrics()),
        ("event.json", Stream::Events, 3, event()),
        ("emissions.json", Stream::Emissions, 9, emissions()),
    ]
}

fn golden_path(file: &str) -> PathBuf {
    repo("tests/testdata/json").join(file)
}

#[test]
fn every_stream_matches_its_golden_file_byte_for_byte() {
    let bless = std::env::var_os("SMELTWATCH_BLESS").is_some();
    for (file, stream, seq, record) in cases() {
        let mut got = encode_record(Envelope::new(SITE, stream, seq, false), &record);
        // The golden files end with a newline for editors; the payload does not.
        got.push(b'\n');
        let path = golden_path(file);
        if bless {
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with SMELTWATCH_BLESS=1)", path.display()));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{file}: JSON payload changed; if intended, re-bless, review and update docs/TOPICS.md"
        );
    }
}

/// The ```json block after each `<!-- golden: PATH -->` marker of `doc`: (PATH, block text).
fn docs_examples(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(path) = line
            .trim()
            .strip_prefix("<!-- golden:")
            .and_then(|r| r.strip_suffix("-->"))
        else {
            continue;
        };
        let mut block = String::new();
        let mut inside = false;
        for l in lines.by_ref() {
            if !inside {
                inside = l.trim() == "```json";
                continue;
            }
            if l.trim() == "```" {
                break;
            }
            block.push_str(l);
            block.push('\n');
        }
        out.push((path.trim().to_owned(), block));
    }
    out
}

#[test]
fn the_docs_show_each_streams_golden_message_and_its_topic() {
    let doc = std::fs::read_to_string(repo("docs/TOPICS.md")).unwrap();
    let examples = docs_examples(&doc);
    for (file, _, _, record) in cases() {
        let path = format!("tests/testdata/json/{file}");
        let (_, block) = examples
            .iter()
            .find(|(p, _)| *p == path)
            .unwrap_or_else(|| {
                panic!("docs/TOPICS.md has no example marked <!-- golden: {path} -->")
            });
        let shown: serde_json::Value = serde_json::from_str(block)
            .unwrap_or_else(|e| panic!("the docs example of {file} is not JSON: {e}\n{block}"));
        let golden: serde_json::Value =
            serde_json::from_slice(&std::fs::read(golden_path(file)).unwrap()).unwrap();
        assert_eq!(
            shown, golden,
            "docs/TOPICS.md's example of {file} drifted from the golden file"
        );
        // The topic it is published on, with the default templates, is named beside it.
        let topic = topic_for(&TopicTemplates::default(), SITE, &record);
        assert!(
            doc.contains(&format!("`{topic}`")),
            "docs/TOPICS.md does not name the topic {topic} of {file}"
        );
    }
}
