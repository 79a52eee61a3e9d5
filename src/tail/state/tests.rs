use super::*;
use crate::config::Stream;
use crate::model::Reading;

fn cell(device: &str, v: f64, in_service: bool, ae: bool, ts: i64) -> Message {
    let r = |point: &str, value: Value| Reading {
        point: point.into(),
        value: Some(value),
        unit: "".into(),
        quality: Quality::Good,
        ts: Timestamp(ts),
    };
    Message::Record {
        site: "s1".into(),
        stream: Stream::Live,
        seq: 0,
        historical: false,
        record: Record::Batch(ReadingBatch {
            source: "potline1".into(),
            device: device.into(),
            unit_id: 1,
            poll_interval_ms: 1000,
            scheduled: Timestamp(ts),
            readings: vec![
                r("cell_voltage_v", Value::Float(v)),
                r("in_service", Value::Bool(in_service)),
                r("anode_effect", Value::Bool(ae)),
            ],
        }),
    }
}

fn with_seq(mut m: Message, n: u64, hist: bool) -> Message {
    if let Message::Record {
        seq, historical, ..
    } = &mut m
    {
        *seq = n;
        *historical = hist;
    }
    m
}

fn ae_event(device: &str, phase: EventPhase) -> Message {
    Message::Record {
        site: "s1".into(),
        stream: Stream::Events,
        seq: 1,
        historical: false,
        record: Record::Event(Event {
            kind: EventKind::AnodeEffect,
            subject: format!("potline1/{device}").into(),
            phase,
            ts: Timestamp(5_000),
            attributes: vec![],
            message: String::new(),
        }),
    }
}

#[test]
fn cells_sort_by_voltage_and_mean_leaves_out_cells_out_of_service() {
    let mut s = State::new(Filter::default());
    s.apply(&cell("pot_001", 4.10, true, false, 1_000));
    s.apply(&cell("pot_002", 0.02, false, false, 1_000));
    s.apply(&cell("pot_003", 4.30, true, false, 1_000));
    s.apply(&cell("pot_004", 4.00, true, false, 1_000));
    let order: Vec<&str> = s
        .cells_by_voltage()
        .iter()
        .map(|c| c.key.as_str())
        .collect();
    assert_eq!(
        order,
        [
            "potline1/pot_003",
            "potline1/pot_001",
            "potline1/pot_004",
            "potline1/pot_002"
        ]
    );
    let mean = s.mean_cell_voltage(Some("potline1")).unwrap();
    assert!((mean - (4.10 + 4.30 + 4.00) / 3.0).abs() < 1e-12, "{mean}");
    assert_eq!(s.now, Timestamp(1_000));
}

#[test]
fn a_cell_not_refreshed_for_three_poll_intervals_shows_stale() {
    let mut s = State::new(Filter::default());
    s.apply(&cell("pot_001", 4.1, true, false, 1_000));
    s.apply(&cell("pot_002", 4.2, true, false, 4_000));
    let shown = |s: &State, key: &str| s.cells[key].shown_quality(s.readings_now);
    // Three intervals of 1 s: on the limit, still good.
    assert_eq!(shown(&s, "potline1/pot_001"), Quality::Good);
    s.apply(&cell("pot_002", 4.2, true, false, 4_001));
    assert_eq!(shown(&s, "potline1/pot_001"), Quality::Stale);
    assert_eq!(shown(&s, "potline1/pot_002"), Quality::Good);
    // A fresh reading makes it good again.
    s.apply(&cell("pot_001", 4.1, true, false, 4_001));
    assert_eq!(shown(&s, "potline1/pot_001"), Quality::Good);
}

#[test]
fn anode_effect_follows_events_bits_and_the_threshold() {
    let mut s = State::new(Filter::default());
    s.apply(&cell("pot_001", 4.1, true, false, 1_000));
    assert!(!s.cells["potline1/pot_001"].anode_effect());
    s.apply(&ae_event("pot_001", EventPhase::Start));
    assert!(s.cells["potline1/pot_001"].anode_effect());
    s.apply(&ae_event("pot_001", EventPhase::End));
    assert!(!s.cells["potline1/pot_001"].anode_effect());
    s.apply(&cell("pot_001", 4.1, true, true, 2_000));
    assert!(s.cells["potline1/pot_001"].anode_effect(), "controller bit");
    s.apply(&cell("pot_001", AE_THRESHOLD_V, true, false, 3_000));
    assert!(
        s.cells["potline1/pot_001"].anode_effect(),
        "voltage at the threshold"
    );
    s.apply(&cell("pot_001", AE_THRESHOLD_V - 0.01, true, false, 4_000));
    assert!(!s.cells["potline1/pot_001"].anode_effect());
    assert_eq!(s.events.len(), 2);
}

#[test]
fn seq_jumps_count_as_gaps_and_historical_records_as_backlog() {
    let mut s = State::new(Filter::default());
    s.apply(&with_seq(cell("pot_001", 4.0, true, false, 1), 10, false));
    s.apply(&with_seq(cell("pot_001", 4.0, true, false, 2), 11, false));
    s.apply(&with_seq(cell("pot_001", 4.0, true, false, 3), 15, false));
    // Replayed older seqs neither count as gaps nor move the live order back.
    s.apply(&with_seq(cell("pot_001", 4.0, true, false, 0), 12, true));
    s.apply(&with_seq(cell("pot_001", 4.0, true, false, 4), 16, false));
    let u = &s.uplinks["s1"];
    assert_eq!(u.seq_gaps, 3);
    assert_eq!(u.historical_records, 1);
}

#[test]
fn filter_matches_site_line_stack_device_and_subjects() {
    let f = Filter::new(vec!["pot_00?".into()]);
    assert!(f.accepts(&cell("pot_001", 4.0, true, false, 0)));
    assert!(!f.accepts(&cell("pot_010", 4.0, true, false, 0)));
    assert!(Filter::new(vec!["s1".into()]).accepts(&cell("pot_010", 4.0, true, false, 0)));
    assert!(Filter::new(vec!["potline1".into()]).accepts(&ae_event("pot_010", EventPhase::Start)));
    assert!(
        !Filter::new(vec!["gtc1_stack".into()]).accepts(&ae_event("pot_010", EventPhase::Start))
    );
    assert!(Filter::default().accepts(&ae_event("pot_010", EventPhase::Start)));
    let mut s = State::new(Filter::new(vec!["pot_001".into()]));
    assert!(s.apply(&cell("pot_001", 4.0, true, false, 0)));
    assert!(!s.apply(&cell("pot_002", 4.0, true, false, 0)));
    assert_eq!(s.cells.len(), 1);
    assert_eq!(s.messages, 1);
}

#[test]
fn a_derived_value_replayed_from_a_backlog_does_not_hide_a_newer_one() {
    use crate::model::Metric;
    let derived = |v: f64, ts: i64, hist: bool| {
        let m = Message::Record {
            site: "s1".into(),
            stream: Stream::Metrics,
            seq: 0,
            historical: false,
            record: Record::Metrics(MetricBatch {
                calc: DERIVED_CALC.into(),
                ts: Timestamp(ts),
                metrics: vec![Metric {
                    name: "line_power_kw".into(),
                    value: Some(v),
                    unit: "kW".into(),
                    quality: Quality::Good,
                    ts: Timestamp(ts),
                    labels: vec![("line".into(), "potline1".into())],
                }],
            }),
        };
        with_seq(m, ts as u64, hist)
    };
    let mut s = State::new(Filter::default());
    s.apply(&derived(500.0, 2_000, false));
    s.apply(&derived(480.0, 1_000, true));
    let d = &s.derived["line_power_kw line=potline1"];
    assert_eq!((d.value, d.ts), (Some(500.0), Timestamp(2_000)));
    s.apply(&derived(510.0, 3_000, false));
    assert_eq!(s.derived["line_power_kw line=potline1"].value, Some(510.0));
}
