//! `smeltwatch tail` on recorded streams.
//!
//! The stream is recorded from our own encoders: a small potline (six cells, one of them in anode
//! effect, one cut out), the line's potline metrics, an anode-effect event, a stack's minute
//! aggregates above its SO2 limit with the exceedance event, an outage event and the retained
//! status, encoded as JSON, as protobuf, and as Sparkplug B (NBIRTH, DBIRTHs, DDATA by exception).
//! Each is decoded into a `State`, drawn into ratatui's `TestBackend`, and the buffer is checked:
//! cells sorted by voltage, the anode effect highlighted with its style, the KPI values, the
//! stack against its limit, the events.
//!
//! `--plain` runs the real binary against Mosquitto (skipped with a message when `mosquitto` is
//! missing, unless `SMELTWATCH_REQUIRE_PEERS` is set): recorded messages of all three encodings
//! are published and the lines it prints are compared.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::{Color, Modifier};
use rumqttc::{AsyncClient, MqttOptions, PublishOptions};
use smeltwatch::codec::Envelope;
use smeltwatch::codec::sparkplug::{self as spb, DeviceModel, DeviceState, MetricModel};
use smeltwatch::codec::topic;
use smeltwatch::codec::{json, protobuf};
use smeltwatch::config::{Stream, TopicTemplates};
use smeltwatch::model::{
    Aggregate, Event, EventPhase, Metric, MetricBatch, Period, Quality, Reading, ReadingBatch,
    Record, Timestamp, Value,
};
use smeltwatch::tail::{self, Decoder, Filter, State};
use tokio::io::{AsyncBufReadExt as _, BufReader};

const SITE: &str = "demo-al-01";
/// 2025-11-28T03:24:13.000Z
const T0: i64 = 1_764_300_253_000;

/// (cell, voltage, in service, controller AE bit)
const CELLS: [(&str, f64, bool, bool); 6] = [
    ("pot_001", 4.125, true, false),
    ("pot_002", 4.0625, true, false),
    ("pot_003", 9.5, true, true),
    ("pot_004", 4.25, true, false),
    ("pot_005", 0.03125, false, false),
    ("pot_006", 3.9375, true, false),
];

fn reading(point: &str, value: Value, unit: &str, ts: i64) -> Reading {
    Reading {
        point: point.into(),
        value: Some(value),
        unit: unit.into(),
        quality: Quality::Good,
        ts: Timestamp(ts),
    }
}

fn cell_batch(device: &str, v: f64, in_service: bool, ae: bool, ts: i64) -> ReadingBatch {
    ReadingBatch {
        source: "potline1".into(),
        device: device.into(),
        unit_id: 10,
        poll_interval_ms: 1000,
        scheduled: Timestamp(ts),
        readings: vec![
            reading("cell_voltage_v", Value::Float(v), "V", ts + 12),
            reading("in_service", Value::Bool(in_service), "", ts + 12),
            reading("cut_out", Value::Bool(!in_service), "", ts + 12),
            reading("anode_effect", Value::Bool(ae), "", ts + 12),
        ],
    }
}

fn metric(name: &str, value: f64, unit: &str, labels: &[(&str, &str)]) -> Metric {
    Metric {
        name: name.into(),
        value: Some(value),
        unit: unit.into(),
        quality: Quality::Good,
        ts: Timestamp(T0 + 60_000),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    }
}

fn aggregate(quantity: &str, unit: &str, avg: f64) -> Aggregate {
    Aggregate {
        subject: "gtc1_stack".into(),
        quantity: quantity.into(),
        unit: unit.into(),
        period: Period::Minute,
        start: Timestamp(T0),
        end: Timestamp(T0 + 60_000),
        avg: Some(avg),
        min: Some(avg),
        max: Some(avg),
        total: None,
        total_unit: None,
        samples: 6,
        expected: 6,
        valid: true,
        quality: Quality::Good,
        substituted: 0,
    }
}

/// The recorded plant: every record with its stream, in publishing order.
fn records() -> Vec<(Stream, Record)> {
    let mut out: Vec<(Stream, Record)> = CELLS
        .iter()
        .map(|(d, v, s, ae)| (Stream::Live, Record::Batch(cell_batch(d, *v, *s, *ae, T0))))
        .collect();
    let line = [("line", "potline1")];
    out.push((
        Stream::Metrics,
        Record::Metrics(MetricBatch {
            calc: "potline".into(),
            ts: Timestamp(T0 + 60_000),
            metrics: vec![
                metric("line_current_ka", 400.3, "kA", &line),
                metric("cells_in_service", 5.0, "", &line),
                metric("production_today_t", 12.5, "t", &line),
                metric("dc_kwh_per_t_today", 12876.0, "kWh/t", &line),
                metric("ac_kwh_per_t_today", 13204.0, "kWh/t", &line),
                metric(
                    "capacity_utilisation_pct",
                    87.5,
                    "%",
                    &[("line", "potline1"), ("period", "day")],
                ),
                metric(
                    "cell_voltage_avg_v",
                    4.1,
                    "V",
                    &[("line", "potline1"), ("cell", "potline1/pot_001")],
                ),
            ],
        }),
    ));
    out.push((
        Stream::Events,
        Record::Event(Event {
            kind: "anode_effect".into(),
            subject: "potline1/pot_003".into(),
            phase: EventPhase::Start,
            ts: Timestamp(T0 + 12),
            attributes: vec![],
            message: "anode effect on potline1/pot_003 (9.50 V)".into(),
        }),
    ));
    for a in [
        aggregate("so2_mg_m3", "mg/m3", 250.0),
        aggregate("so2_kg_h", "kg/h", 62.5),
        aggregate("fluoride_mg_m3", "mg/m3", 1.5),
        aggregate("fluoride_kg_h", "kg/h", 0.375),
        aggregate("flow_m3h", "m3/h", 250_000.0),
    ] {
        out.push((Stream::Emissions, Record::Aggregate(a)));
    }
    out.push((
        Stream::Events,
        Record::Event(Event {
            kind: "exceedance".into(),
            subject: "gtc1_stack/so2_mg_m3".into(),
            phase: EventPhase::Instant,
            ts: Timestamp(T0),
            attributes: vec![
                ("hour_avg_mg_m3".into(), Value::Float(250.0)),
                ("limit_mg_m3".into(), Value::Float(200.0)),
            ],
            message: "gtc1_stack so2_mg_m3 hourly average 250.00 mg/m3 exceeds the limit 200 mg/m3"
                .into(),
        }),
    ));
    out.push((
        Stream::Events,
        Record::Event(Event {
            kind: "outage".into(),
            subject: "plant".into(),
            phase: EventPhase::Instant,
            ts: Timestamp(T0 + 30_000),
            attributes: vec![
                ("duration_s".into(), Value::Float(95.0)),
                ("dropped_total".into(), Value::Int(12)),
            ],
            message: "uplink plant was down 95 s; 12 records dropped".into(),
        }),
    ));
    out
}

/// The recorded stream as `(topic, payload)` with one encoder; seq per stream from 1.
fn encoded(protobuf: bool) -> Vec<(String, Vec<u8>)> {
    encode(records(), protobuf)
}

/// `records` as `(topic, payload)` after the retained status; seq per stream from 1.
fn encode(records: Vec<(Stream, Record)>, protobuf: bool) -> Vec<(String, Vec<u8>)> {
    let templates = TopicTemplates::default();
    let mut seqs = std::collections::HashMap::new();
    let mut out = vec![(
        topic::status_topic(&templates, SITE),
        br#"{"state":"online","site":"demo-al-01","since":"2025-11-28T03:20:00.000Z","version":"0.1.0"}"#
            .to_vec(),
    )];
    for (stream, record) in records {
        let seq = seqs.entry(stream).or_insert(0u64);
        *seq += 1;
        let bytes = if protobuf {
            protobuf::encode_record(Envelope::new(SITE, stream, *seq, false), &record)
        } else {
            json::encode_record(Envelope::new(SITE, stream, *seq, false), &record)
        };
        out.push((topic::topic_for(&templates, SITE, &record), bytes));
    }
    out
}

fn pot_model(device: &str, first_alias: u64) -> DeviceModel {
    let m = |name: &str, alias: u64, datatype: spb::pb::DataType| MetricModel {
        name: name.into(),
        alias,
        datatype,
    };
    use spb::pb::DataType as D;
    DeviceModel::new(
        device.into(),
        vec![
            m("cell_voltage_v", first_alias, D::Float),
            m("in_service", first_alias + 1, D::Boolean),
            m("cut_out", first_alias + 2, D::Boolean),
            m("anode_effect", first_alias + 3, D::Boolean),
        ],
    )
}

/// The cells as a Sparkplug session: NBIRTH, DBIRTH of every cell at its normal voltage, then
/// DDATA by exception in which pot_003 goes into anode effect.
fn sparkplug_stream() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![(
        spb::topic("smelter", spb::MessageType::NBirth, "edge1", None),
        spb::encode(&spb::nbirth(4, Timestamp(T0))),
    )];
    let mut seq = 0;
    let mut sessions = Vec::new();
    for (i, (device, v, s, _)) in CELLS.iter().enumerate() {
        let model = pot_model(device, 1 + 4 * i as u64);
        let mut state = DeviceState::new(model.metrics.len());
        let normal = if *device == "pot_003" { 4.1875 } else { *v };
        state.absorb(&model, &cell_batch(device, normal, *s, false, T0));
        seq += 1;
        out.push((
            spb::topic("smelter", spb::MessageType::DBirth, "edge1", Some(device)),
            spb::encode(&spb::dbirth(&model, state.current(), seq, Timestamp(T0))),
        ));
        sessions.push((model, state));
    }
    for ((model, state), (device, v, s, ae)) in sessions.iter_mut().zip(CELLS) {
        let batch = cell_batch(device, v, s, ae, T0 + 1000);
        let changes = state.changes(model, &batch);
        if changes.is_empty() {
            continue;
        }
        seq += 1;
        out.push((
            spb::topic("smelter", spb::MessageType::DData, "edge1", Some(device)),
            spb::encode(&spb::ddata(
                model,
                &changes,
                seq,
                Timestamp(T0 + 1000),
                false,
            )),
        ));
    }
    out
}

fn state_of(stream: &[(String, Vec<u8>)]) -> State {
    let mut state = State::new(Filter::default());
    let mut decoder = Decoder::new();
    tail::replay(
        &mut state,
        &mut decoder,
        stream.iter().map(|(t, p)| (t.as_str(), p.as_slice())),
    );
    assert_eq!(state.decode_errors, 0, "{:?}", state.last_error);
    state
}

fn render(state: &State) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(140, 36)).unwrap();
    terminal
        .draw(|f| tail::render::draw(f, state, "mqtt://127.0.0.1:1883"))
        .unwrap();
    terminal.backend().buffer().clone()
}

fn rows(buf: &Buffer) -> Vec<String> {
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol().to_owned())
                .collect::<String>()
        })
        .collect()
}

/// Row and column (in cells) of the first occurrence of `text`.
fn find(buf: &Buffer, text: &str) -> (u16, u16) {
    for (y, row) in rows(buf).iter().enumerate() {
        let chars: Vec<char> = row.chars().collect();
        let needle: Vec<char> = text.chars().collect();
        if let Some(x) = chars
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
        {
            return (y as u16, x as u16);
        }
    }
    panic!("{text:?} not on screen:\n{}", rows(buf).join("\n"));
}

/// Cell names in the order the cell list shows them.
fn cell_order(buf: &Buffer) -> Vec<String> {
    rows(buf)
        .iter()
        .filter_map(|r| {
            let list = r.get(r.find('│')? + '│'.len_utf8()..)?;
            let name = list.split_whitespace().next()?;
            name.starts_with("pot_").then(|| name.to_owned())
        })
        .collect()
}

fn assert_ae_highlighted(buf: &Buffer, cell: &str) {
    let (y, x) = find(buf, cell);
    let style = buf[(x, y)].style();
    assert_eq!(style.bg, Some(Color::Red), "{cell} background");
    assert!(style.add_modifier.contains(Modifier::BOLD), "{cell} bold");
    let (ny, nx) = find(buf, "pot_001");
    assert_ne!(
        buf[(nx, ny)].style().bg,
        Some(Color::Red),
        "pot_001 is not in AE"
    );
    assert_eq!(
        y,
        find(buf, "ANODE EFFECT").0,
        "the marker is on {cell}'s row"
    );
}

fn assert_full_screen(buf: &Buffer) {
    let screen = rows(buf).join("\n");
    assert_eq!(
        cell_order(buf),
        [
            "pot_003", "pot_004", "pot_001", "pot_002", "pot_006", "pot_005"
        ],
        "{screen}"
    );
    assert_ae_highlighted(buf, "pot_003");
    // KPIs of the potline metrics; the mean leaves out cut-out pot_005.
    let mean = (4.125 + 4.0625 + 9.5 + 4.25 + 3.9375) / 5.0;
    for kpi in [
        "current 400.3 kA".to_owned(),
        format!("mean cell {mean:.3} V"),
        "DC 12876 kWh/t".into(),
        "AC 13204 kWh/t".into(),
        "today 12.50 t".into(),
        "capacity use 87.5 %".into(),
    ] {
        assert!(screen.contains(&kpi), "{kpi:?} missing:\n{screen}");
    }
    assert!(screen.contains("0.031 V  cut out"), "{screen}");
    // The stack: SO2 above the limit learned from the exceedance event, in the over-limit style.
    assert!(screen.contains("flow 250000 m3/h"), "{screen}");
    let (y, x) = find(buf, "250.00 / 200");
    assert_eq!(
        buf[(x, y)].style().fg,
        Some(Color::Red),
        "SO2 over its limit"
    );
    assert!(rows(buf)[y as usize].contains("62.500 kg/h"), "{screen}");
    assert!(rows(buf)[y as usize].contains("1 h over"), "{screen}");
    let (fy, fx) = find(buf, "1.50 / –");
    assert_ne!(
        buf[(fx, fy)].style().fg,
        Some(Color::Red),
        "fluoride has no limit known"
    );
    // Events, newest first; uplink status and outage.
    let outage = find(buf, "uplink plant was down 95 s").0;
    let exceed = find(buf, "gtc1_stack so2_mg_m3 hourly average").0;
    let ae = find(buf, "anode effect on potline1/pot_003").0;
    assert!(outage < exceed && exceed < ae, "{screen}");
    assert!(
        screen.contains("online since 2025-11-28T03:20:00.000Z v0.1.0"),
        "{screen}"
    );
    assert!(screen.contains("last outage 95 s, 12 dropped"), "{screen}");
    assert!(screen.contains("site demo-al-01"), "{screen}");
}

#[test]
fn json_stream_renders_sorted_cells_highlighted_ae_kpis_stacks_and_events() {
    let buf = render(&state_of(&encoded(false)));
    assert_full_screen(&buf);
}

#[test]
fn protobuf_stream_renders_the_same_screen_as_json() {
    let pb = render(&state_of(&encoded(true)));
    assert_full_screen(&pb);
    assert_eq!(rows(&pb), rows(&render(&state_of(&encoded(false)))));
}

#[test]
fn sparkplug_stream_resolves_aliases_from_births_and_highlights_the_ae_bit() {
    let stream = sparkplug_stream();
    let state = state_of(&stream);
    let buf = render(&state);
    let screen = rows(&buf).join("\n");
    assert_eq!(
        cell_order(&buf),
        [
            "pot_003", "pot_004", "pot_001", "pot_002", "pot_006", "pot_005"
        ],
        "{screen}"
    );
    assert_ae_highlighted(&buf, "pot_003");
    // Only pot_003 changed, so one DDATA followed the births: 9.5 V resolved from its alias.
    assert_eq!(stream.len(), 1 + 6 + 1, "NBIRTH, six DBIRTHs, one DDATA");
    assert!(screen.contains("pot_003       9.500 V"), "{screen}");
    assert!(
        screen.contains("spB smelter/edge1") && screen.contains("online bdSeq 4 · 6 devices born"),
        "{screen}"
    );
    assert!(!screen.contains("awaiting a birth"), "{screen}");

    // The same DDATA without the births cannot be named: nothing is shown, the count says why.
    let state = state_of(&stream[stream.len() - 1..]);
    assert!(state.cells.is_empty());
    let screen = rows(&render(&state)).join("\n");
    assert!(screen.contains("2 metrics awaiting a birth"), "{screen}");
}

/// A stack with an O2 conversion publishes `so2_mg_m3` and `so2_zs_mg_m3`: one `so2` row with
/// both, the limit checked against the converted value (85.3 measured is under 100, the
/// converted 120.0 over it).
#[test]
fn the_converted_concentration_shows_in_its_pollutants_row_and_the_limit_goes_with_it() {
    let records = vec![
        aggregate("so2_mg_m3", "mg/m3", 85.3),
        aggregate("so2_zs_mg_m3", "mg/m3", 120.0),
        aggregate("so2_kg_h", "kg/h", 21.325),
        aggregate("fluoride_mg_m3", "mg/m3", 1.5),
        aggregate("flow_m3h", "m3/h", 250_000.0),
    ]
    .into_iter()
    .map(|a| (Stream::Emissions, Record::Aggregate(a)))
    .chain(std::iter::once((
        Stream::Events,
        Record::Event(Event {
            kind: "exceedance".into(),
            subject: "gtc1_stack/so2_zs_mg_m3".into(),
            phase: EventPhase::Instant,
            ts: Timestamp(T0),
            attributes: vec![
                ("hour_avg_mg_m3".into(), Value::Float(120.0)),
                ("limit_mg_m3".into(), Value::Float(100.0)),
            ],
            message: "gtc1_stack so2_zs_mg_m3 hourly average 120.00 mg/m3 exceeds the limit 100 \
                      mg/m3"
                .into(),
        }),
    )))
    .collect::<Vec<_>>();
    for protobuf in [false, true] {
        let state = state_of(&encode(records.clone(), protobuf));
        let stack = &state.stacks["gtc1_stack"];
        assert_eq!(
            stack.pollutants.keys().collect::<Vec<_>>(),
            ["fluoride", "so2"],
            "no `so2_zs` pollutant"
        );
        let so2 = &stack.pollutants["so2"];
        assert_eq!((so2.conc_mg_m3, so2.zs_mg_m3), (Some(85.3), Some(120.0)));
        assert_eq!((so2.limit_mg_m3, so2.exceedances), (Some(100.0), 1));
        let buf = render(&state);
        let screen = rows(&buf).join("\n");
        let (y, x) = find(&buf, "85.30 (zs  120.00) / 100");
        let row = &rows(&buf)[y as usize];
        assert!(
            row.contains("21.325 kg/h") && row.contains("1 h over"),
            "{screen}"
        );
        assert!(
            row.contains("120%"),
            "the gauge of the converted value:\n{screen}"
        );
        assert_ne!(
            buf[(x, y)].style().fg,
            Some(Color::Red),
            "measured 85.3 is under 100"
        );
        let (zy, zx) = find(&buf, "120.00");
        assert_eq!(zy, y);
        assert_eq!(
            buf[(zx, zy)].style().fg,
            Some(Color::Red),
            "converted 120.0 over 100"
        );
        // the pollutant without a conversion lines up with the converted one's limit column
        let (fy, _) = find(&buf, "1.50");
        let slash = |r: &str| r.chars().position(|c| c == '/');
        assert_eq!(slash(&rows(&buf)[fy as usize]), slash(row), "{screen}");
    }
}

/// Derived points as the agent publishes them: `line_power_kw` (stream `metrics`, a metric of
/// calculator `derived` with its labels), `mean_cell_voltage_v` (stream `live`, a reading of
/// `derived/potline1`) and `aux_power_kw` whose input went silent (`comm_fail`, no value).
fn derived_records() -> Vec<(Stream, Record)> {
    use smeltwatch::derived::engine::{CALC, SOURCE};
    let mut silent = metric("aux_power_kw", 0.0, "kW", &[]);
    silent.value = None;
    silent.quality = Quality::CommFail;
    silent.ts = Timestamp(T0 + 15_000);
    vec![
        (
            Stream::Metrics,
            Record::Metrics(MetricBatch {
                calc: CALC.into(),
                ts: Timestamp(T0 + 60_000),
                metrics: vec![
                    metric("line_power_kw", 161_300.0, "kW", &[("line", "potline1")]),
                    silent,
                ],
            }),
        ),
        (
            Stream::Live,
            Record::Batch(ReadingBatch {
                source: SOURCE.into(),
                device: "potline1".into(),
                unit_id: 0,
                poll_interval_ms: 10_000,
                scheduled: Timestamp(T0 + 50_000),
                readings: vec![reading(
                    "mean_cell_voltage_v",
                    Value::Float(4.063),
                    "V",
                    T0 + 50_000,
                )],
            }),
        ),
    ]
}

#[test]
fn derived_points_show_with_value_unit_quality_and_age_on_the_screen_and_in_plain() {
    for protobuf in [false, true] {
        let mut recs = records();
        recs.extend(derived_records());
        let buf = render(&state_of(&encode(recs, protobuf)));
        let screen = rows(&buf).join("\n");
        assert!(screen.contains("Derived points"), "{screen}");
        let (y, _) = find(&buf, "line_power_kw line=potline1");
        let row = &rows(&buf)[y as usize];
        assert!(row.contains("161300 kW"), "{row}");
        assert!(row.contains("good"), "{row}");
        assert!(row.contains("0s"), "its age against the newest time: {row}");
        let (y, _) = find(&buf, "potline1.mean_cell_voltage_v");
        let row = &rows(&buf)[y as usize];
        assert!(row.contains("4.063 V"), "{row}");
        assert!(row.contains("10s"), "{row}");
        let (y, x) = find(&buf, "comm_fail");
        let row = &rows(&buf)[y as usize];
        assert!(row.contains("aux_power_kw"), "{row}");
        assert!(row.contains("– kW"), "no value: {row}");
        assert!(row.contains("45s"), "{row}");
        assert_eq!(
            buf[(x, y)].style().fg,
            Some(Color::Red),
            "a bad quality shows"
        );
        // The rest of the screen is unchanged by the block.
        assert_full_screen(&buf);
    }
    // `--plain` prints each derived record on its line, the bad quality in brackets.
    let lines: Vec<String> = encode(derived_records(), false)
        .iter()
        .skip(1)
        .map(|(topic, payload)| {
            let msg = Decoder::new().decode(topic, payload).expect("decodes");
            tail::plain::line(&msg)
        })
        .collect();
    assert!(
        lines[0].ends_with(" derived line_power_kw=161300kW aux_power_kw=null[comm_fail]"),
        "{lines:?}"
    );
    assert!(
        lines[1].ends_with(" derived/potline1 mean_cell_voltage_v=4.063V"),
        "{lines:?}"
    );
}

#[test]
fn a_cell_not_refreshed_for_three_poll_intervals_shows_stale() {
    // Every cell but pot_001 is read again 3.5 poll intervals (1 s) later.
    let mut recs = records();
    for (d, v, s, ae) in CELLS.iter().filter(|c| c.0 != "pot_001") {
        recs.push((
            Stream::Live,
            Record::Batch(cell_batch(d, *v, *s, *ae, T0 + 3_500)),
        ));
    }
    let buf = render(&state_of(&encode(recs, false)));
    let screen = rows(&buf);
    let row = |cell: &str| {
        let (y, _) = find(&buf, cell);
        screen[y as usize].clone()
    };
    assert!(row("pot_001").contains("stale"), "{}", screen.join("\n"));
    assert!(!row("pot_004").contains("stale"), "{}", screen.join("\n"));
}

#[test]
fn filter_by_stack_keeps_only_that_stack() {
    let mut state = State::new(Filter::new(vec!["gtc1_stack".into()]));
    let mut decoder = Decoder::new();
    let stream = encoded(false);
    tail::replay(
        &mut state,
        &mut decoder,
        stream.iter().map(|(t, p)| (t.as_str(), p.as_slice())),
    );
    assert!(state.cells.is_empty());
    assert!(state.lines.is_empty());
    assert_eq!(state.stacks.keys().collect::<Vec<_>>(), ["gtc1_stack"]);
    assert_eq!(state.events.len(), 1, "only the stack's exceedance");
}

// ---------------------------------------------------------------------------------------------
// --plain against Mosquitto
// ---------------------------------------------------------------------------------------------

fn mosquitto_installed() -> bool {
    std::process::Command::new("mosquitto")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

struct Tail {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

/// Start `smeltwatch tail --plain` and wait until it reports its subscription.
async fn start_tail(port: u16, extra: &[&str]) -> Tail {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
        .args(["tail", "--plain", "--broker"])
        .arg(format!("mqtt://127.0.0.1:{port}"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start smeltwatch tail");
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = async {
        while let Some(line) = err.next_line().await.unwrap() {
            if line.starts_with("tail: subscribed to smeltwatch/#, spBv1.0/# on mqtt://127.0.0.1:")
            {
                return;
            }
            eprintln!("tail stderr: {line}");
        }
        panic!("tail exited before subscribing");
    };
    tokio::time::timeout(Duration::from_secs(20), ready)
        .await
        .expect("tail did not subscribe within 20 s");
    tokio::spawn(async move {
        while let Ok(Some(line)) = err.next_line().await {
            eprintln!("tail stderr: {line}");
        }
    });
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    Tail { child, lines }
}

impl Tail {
    async fn next_lines(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(Duration::from_secs(10), self.lines.next_line()).await {
                Ok(Ok(Some(line))) => out.push(line),
                other => panic!("after {} lines ({out:#?}): {other:?}", out.len()),
            }
        }
        out
    }
}

async fn publisher(port: u16) -> AsyncClient {
    let mut o = MqttOptions::new("tail-test-pub", ("127.0.0.1".to_owned(), port));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::builder(o).capacity(256).build();
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

#[tokio::test]
async fn plain_prints_one_line_per_message_of_every_encoding() {
    if !mosquitto_installed() && common::peers::missing::<()>("mosquitto").is_none() {
        return;
    }
    let broker = common::mosquitto::Mosquitto::start();
    let mut all = start_tail(broker.port, &[]).await;
    let mut pots = start_tail(broker.port, &["--filter", "pot_001", "--filter", "pot_003"]).await;
    let client = publisher(broker.port).await;

    let json_stream = encoded(false);
    let pb_stream = encoded(true);
    let spb_stream = sparkplug_stream();
    for (t, p) in json_stream.iter().chain(&pb_stream).chain(&spb_stream) {
        client
            .publish(t.clone(), p.clone(), PublishOptions::at_least_once())
            .await
            .unwrap();
    }
    let n = json_stream.len();
    let lines = all.next_lines(2 * n + spb_stream.len()).await;
    let (json_lines, rest) = lines.split_at(n);
    let (pb_lines, spb_lines) = rest.split_at(n);
    assert_eq!(
        json_lines, pb_lines,
        "JSON and protobuf print the same lines"
    );
    let expect = [
        "- demo-al-01 status online since 2025-11-28T03:20:00.000Z version 0.1.0 (smeltwatch/demo-al-01/status)",
        "2025-11-28T03:24:13.012Z demo-al-01 live#1 potline1/pot_001 cell_voltage_v=4.125V in_service=true cut_out=false anode_effect=false",
    ];
    assert_eq!(json_lines[..2], expect);
    assert_eq!(
        json_lines[3],
        "2025-11-28T03:24:13.012Z demo-al-01 live#3 potline1/pot_003 cell_voltage_v=9.5V in_service=true cut_out=false anode_effect=true"
    );
    assert_eq!(
        json_lines[7],
        "2025-11-28T03:25:13.000Z demo-al-01 metrics#1 potline line_current_ka=400.3kA \
         cells_in_service=5 production_today_t=12.5t dc_kwh_per_t_today=12876kWh/t \
         ac_kwh_per_t_today=13204kWh/t day:capacity_utilisation_pct=87.5% \
         potline1/pot_001:cell_voltage_avg_v=4.1V"
    );
    assert_eq!(
        json_lines[8],
        "2025-11-28T03:24:13.012Z demo-al-01 events#1 anode_effect start potline1/pot_003: anode effect on potline1/pot_003 (9.50 V)"
    );
    assert_eq!(
        json_lines[9],
        "2025-11-28T03:25:13.000Z demo-al-01 emissions#1 gtc1_stack so2_mg_m3 minute valid=true samples=6/6 avg=250mg/m3 min=250mg/m3 max=250mg/m3"
    );
    assert_eq!(
        spb_lines[0],
        "2025-11-28T03:24:13.000Z spB smelter/edge1 NBIRTH seq=0 bdSeq=4"
    );
    assert_eq!(
        spb_lines[3],
        "2025-11-28T03:24:13.000Z spB smelter/edge1 DBIRTH pot_003 seq=3 cell_voltage_v=4.1875 in_service=true cut_out=false anode_effect=false"
    );
    assert_eq!(
        spb_lines[7],
        "2025-11-28T03:24:14.000Z spB smelter/edge1 DDATA pot_003 seq=7 cell_voltage_v=9.5 anode_effect=true"
    );

    // The filtered tail saw only pot_001 and pot_003: their live batches and the AE event
    // (subject potline1/pot_003) in each encoding, then their Sparkplug births and data.
    let filtered = pots.next_lines(2 * 3 + 3).await;
    for l in &filtered {
        assert!(l.contains("pot_001") || l.contains("pot_003"), "{l}");
    }
    assert!(
        filtered[0].contains("live#1 potline1/pot_001"),
        "{filtered:#?}"
    );
    assert!(
        filtered[1].contains("live#3 potline1/pot_003"),
        "{filtered:#?}"
    );
    assert!(
        filtered[2].contains("events#1 anode_effect start"),
        "{filtered:#?}"
    );
    assert!(filtered[6].contains("DBIRTH pot_001"), "{filtered:#?}");
    assert!(filtered[7].contains("DBIRTH pot_003"), "{filtered:#?}");
    assert!(filtered[8].contains("DDATA pot_003"), "{filtered:#?}");
    // Nothing else came through before the stream ended (the broker keeps order per publisher).
    let extra = tokio::time::timeout(Duration::from_millis(500), pots.lines.next_line()).await;
    assert!(extra.is_err(), "unexpected line: {extra:?}");

    // SIGTERM ends tail cleanly.
    for t in [&mut all, &mut pots] {
        let pid = t.child.id().unwrap();
        std::process::Command::new("kill")
            .arg(pid.to_string())
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), t.child.wait())
            .await
            .expect("tail stops within 10 s of SIGTERM")
            .unwrap();
        assert!(status.success(), "{status}");
    }
}

#[test]
fn tail_help_has_the_contract_flags_and_a_bad_broker_is_named() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
        .args(["tail", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--broker",
        "--plain",
        "--filter",
        "--config",
        "--ca-file",
        "--password-file",
    ] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
        .args(["tail", "--plain", "--broker", "tcp://127.0.0.1:1883"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains(
            "--broker \"tcp://127.0.0.1:1883\": expected mqtt://host:port or mqtts://host:port"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn plain_reports_an_unreachable_broker_once_and_stops_at_its_duration() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
            .args(["tail", "--plain", "--duration", "2500ms", "--broker"])
            .arg(format!("mqtt://127.0.0.1:{port}"))
            .output(),
    )
    .await
    .expect("tail --duration 2500ms ends")
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let down: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(&format!("tail: mqtt://127.0.0.1:{port}: ")))
        .collect();
    assert_eq!(down.len(), 1, "one line for ~3 failed attempts:\n{err}");
    assert!(down[0].ends_with("(retrying every second)"), "{err}");
}

#[test]
fn tiny_and_empty_screens_draw_without_panicking() {
    let full = state_of(&encoded(false));
    let empty = State::new(Filter::default());
    for (w, h) in [(1, 1), (20, 5), (60, 12), (300, 80)] {
        for state in [&full, &empty] {
            let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
            terminal
                .draw(|f| tail::render::draw(f, state, "mqtt://127.0.0.1:1883"))
                .unwrap();
        }
    }
    let screen = rows(&render(&empty)).join("\n");
    for hint in [
        "waiting for data",
        "no stack aggregates yet",
        "no status seen yet",
        "no events yet",
    ] {
        assert!(screen.contains(hint), "{hint:?} missing:\n{screen}");
    }
}
