use std::sync::Arc;

use super::*;
use crate::model::{Aggregate, Metric, MetricBatch, Quality, Reading, Timestamp, Value};

fn batch(device: &str, ts: i64, readings: &[(&str, &str, Option<f64>, Quality)]) -> ReadingBatch {
    ReadingBatch {
        source: Arc::from("line1"),
        device: Arc::from(device),
        unit_id: 1,
        poll_interval_ms: 1000,
        scheduled: Timestamp(ts),
        readings: readings
            .iter()
            .map(|(point, unit, v, q)| Reading {
                point: Arc::from(*point),
                value: v.map(Value::Float),
                unit: Arc::from(*unit),
                quality: *q,
                ts: Timestamp(ts),
            })
            .collect(),
    }
}

fn names(store: &SeriesStore) -> Vec<String> {
    store.catalogue().into_iter().map(|l| l.name).collect()
}

#[test]
fn keeps_line_current_cell_voltages_and_concentrations_only() {
    let store = SeriesStore::default();
    store.record_batches(&[
        batch(
            "rectifier",
            1_000,
            &[
                ("line_current_ka", "kA", Some(400.0), Quality::Good),
                ("ac_energy_kwh", "kWh", Some(1e6), Quality::Good),
            ],
        ),
        batch(
            "pot_001",
            1_000,
            &[("cell_voltage_v", "V", Some(4.1), Quality::Good)],
        ),
        batch(
            "pot_002",
            1_000,
            &[("cell_voltage_v", "V", Some(4.3), Quality::Good)],
        ),
        batch(
            "gtc1_stack",
            1_000,
            &[
                ("so2_mg_m3", "mg/m3", Some(85.0), Quality::Good),
                ("flow_m3h", "m3/h", Some(1e6), Quality::Good),
            ],
        ),
    ]);
    assert_eq!(
        names(&store),
        vec![
            "reading:gtc1_stack/so2_mg_m3",
            "reading:pot_001/cell_voltage_v",
            "reading:pot_002/cell_voltage_v",
            "reading:rectifier/line_current_ka",
            "sum:line_current_ka",
            "mean:cell_voltage_v",
        ]
    );
    let mean = store.query(&Selector::parse("mean:cell_voltage_v").unwrap(), 0, 10_000);
    assert_eq!(mean.len(), 1);
    assert_eq!(&*mean[0].unit, "V");
    assert_eq!(mean[0].class, TRENDS);
    assert!((mean[0].buckets[0].mean - 4.2).abs() < 1e-6);
    let cell = store.query(
        &Selector::parse("reading:pot_001/cell_voltage_v").unwrap(),
        0,
        10_000,
    );
    assert_eq!(cell[0].class, CELLS);
}

#[test]
fn a_full_class_refuses_new_series_and_the_memory_bound_holds() {
    let store = SeriesStore::default();
    let pots: Vec<ReadingBatch> = (0..CELLS.max_series + 10)
        .map(|i| {
            batch(
                &format!("pot_{i:04}"),
                1_000,
                &[("cell_voltage_v", "V", Some(4.1), Quality::Good)],
            )
        })
        .collect();
    store.record_batches(&pots);
    // Every pot but the last ten, plus the mean over all of them.
    assert_eq!(store.len(), CELLS.max_series + 1);
    assert_eq!(store.refused(), 10);
    let mean = store.query(&Selector::parse("mean:cell_voltage_v").unwrap(), 0, 1_000);
    assert_eq!(usize::from(mean[0].buckets[0].n), CELLS.max_series + 10);
    assert_eq!(BUCKET_BYTES, 24);
    // 6.3 MiB of trends, 16.9 MiB of cells, 4.2 MiB of minute figures, 0.3 MiB of hours.
    assert_eq!(MEMORY_BOUND_BYTES, 29_048_832);
}

fn minute_batch(ts: i64, line: &str, value: f64) -> Record {
    let labels = vec![(Arc::from("line"), Arc::from(line))];
    Record::Metrics(MetricBatch {
        calc: Arc::from("potline"),
        ts: Timestamp(ts),
        metrics: vec![
            Metric {
                name: Arc::from("ac_kwh_per_t_today"),
                value: Some(value),
                unit: Arc::from("kWh/t"),
                quality: Quality::Good,
                ts: Timestamp(ts),
                labels: labels.clone(),
            },
            Metric {
                name: Arc::from("cell_voltage_avg_v"),
                value: Some(4.1),
                unit: Arc::from("V"),
                quality: Quality::Good,
                ts: Timestamp(ts),
                labels: vec![
                    (Arc::from("line"), Arc::from(line)),
                    (Arc::from("cell"), Arc::from("pot_001")),
                ],
            },
            Metric {
                name: Arc::from("ac_kwh_per_t"),
                value: Some(value),
                unit: Arc::from("kWh/t"),
                quality: Quality::Good,
                ts: Timestamp(ts),
                labels: vec![
                    (Arc::from("line"), Arc::from(line)),
                    (Arc::from("period"), Arc::from("day")),
                ],
            },
        ],
    })
}

#[test]
fn minute_figures_are_kept_per_label_set_and_selected_by_labels_with_their_bounds() {
    let store = SeriesStore::default();
    store.set_references(vec![(
        RefTarget::Metric {
            name: "ac_kwh_per_t_today".into(),
            label: ("line".into(), "potline1".into()),
        },
        Reference {
            label: "level 3".into(),
            value: 13_350.0,
        },
    )]);
    for m in 0..3 {
        store.record(&[
            minute_batch(60_000 * (m + 1), "potline1", 13_000.0 + m as f64),
            minute_batch(60_000 * (m + 1), "potline2", 14_000.0),
        ]);
    }
    // Per-cell and period figures are not trends.
    assert_eq!(store.len(), 2);
    let all = store.query(
        &Selector::parse("metric:potline/ac_kwh_per_t_today").unwrap(),
        0,
        i64::MAX,
    );
    assert_eq!(all.len(), 2);
    let one = store.query(
        &Selector::parse("metric:potline/ac_kwh_per_t_today{line=potline1}").unwrap(),
        0,
        i64::MAX,
    );
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].class, MINUTES);
    assert_eq!(
        one[0].buckets.iter().map(|b| b.mean).collect::<Vec<_>>(),
        vec![13_000.0, 13_001.0, 13_002.0]
    );
    assert_eq!(one[0].references[0].value, 13_350.0);
    assert!(
        all.iter()
            .find(|f| f.key.labels()[0].1.as_ref() == "potline2")
            .unwrap()
            .references
            .is_empty()
    );
}

#[test]
fn hourly_windows_are_kept_with_their_limit_and_an_invalid_hour_has_no_value() {
    let store = SeriesStore::default();
    store.set_references(vec![(
        RefTarget::Window {
            subject: "gtc1_stack".into(),
            quantity: "so2_mg_m3".into(),
        },
        Reference {
            label: "limit".into(),
            value: 200.0,
        },
    )]);
    // Known before its first hour closes.
    let listed = store.catalogue();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "hour:gtc1_stack/so2_mg_m3");
    assert_eq!(listed[0].references[0].value, 200.0);
    let h = 3_600_000;
    let agg = |i: i64, valid: bool| {
        Record::Aggregate(Aggregate {
            subject: Arc::from("gtc1_stack"),
            quantity: Arc::from("so2_mg_m3"),
            unit: Arc::from("mg/m3"),
            period: Period::Hour,
            start: Timestamp(i * h),
            end: Timestamp((i + 1) * h),
            avg: Some(80.0 + i as f64),
            min: Some(70.0),
            max: Some(250.0),
            total: None,
            total_unit: None,
            samples: if valid { 60 } else { 10 },
            expected: 60,
            valid,
            quality: if valid {
                Quality::Good
            } else {
                Quality::CommFail
            },
            substituted: 0,
        })
    };
    store.record(&[agg(0, true), agg(1, false), agg(2, true)]);
    let f = store.query(
        &Selector::parse("hour:gtc1_stack/so2_mg_m3").unwrap(),
        0,
        10 * h,
    );
    assert_eq!(f.len(), 1);
    let b = &f[0].buckets;
    assert_eq!(b.len(), 3);
    assert_eq!((b[0].mean, b[0].max), (80.0, 250.0));
    assert!(b[1].mean.is_nan());
    assert_eq!(b[1].quality, Quality::CommFail);
    assert_eq!(f[0].references[0].label, "limit");
    assert_eq!(store.window_references("gtc1_stack", "so2_mg_m3").len(), 1);
    assert_eq!(store.catalogue().len(), 1);
    // Time range: only the last hour.
    let last = store.query(
        &Selector::parse("hour:gtc1_stack/so2_mg_m3").unwrap(),
        2 * h,
        10 * h,
    );
    assert_eq!(last[0].buckets.len(), 1);
}

#[test]
fn reading_references_follow_the_device_glob() {
    let store = SeriesStore::default();
    store.set_references(vec![(
        RefTarget::Reading {
            device_glob: "line1/gtc*".into(),
            point: "so2_mg_m3".into(),
        },
        Reference {
            label: "limit".into(),
            value: 200.0,
        },
    )]);
    store.record_batches(&[
        batch(
            "gtc1_stack",
            0,
            &[("so2_mg_m3", "mg/m3", Some(1.0), Quality::Good)],
        ),
        batch(
            "roaster",
            0,
            &[("so2_mg_m3", "mg/m3", Some(1.0), Quality::Good)],
        ),
    ]);
    let with_refs: Vec<String> = store
        .catalogue()
        .into_iter()
        .filter(|l| !l.references.is_empty())
        .map(|l| l.name)
        .collect();
    assert_eq!(with_refs, vec!["reading:gtc1_stack/so2_mg_m3"]);
}

#[test]
fn series_names_parse_or_say_what_is_wrong() {
    assert_eq!(
        Selector::parse("reading:pot_007/cell_voltage_v").unwrap(),
        Selector::Exact(Key::Reading {
            device: Arc::from("pot_007"),
            point: Arc::from("cell_voltage_v")
        })
    );
    assert!(matches!(
        Selector::parse("day:gtc1_stack/so2_mg_m3"),
        Ok(Selector::Day { .. })
    ));
    for (bad, says) in [
        ("cell_voltage_v", "has no kind"),
        ("volts:x", "unknown kind"),
        ("reading:pot_007", "expected reading:<device>/<point>"),
        ("sum:a/b", "expected sum:<point>"),
        ("metric:potline/x{line}", "is not key=value"),
        ("metric:potline/x{line=a", "must end with"),
    ] {
        let e = Selector::parse(bad).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
    let k = Key::Metric {
        calc: Arc::from("potline"),
        name: Arc::from("x"),
        labels: vec![],
    };
    assert_eq!(
        Selector::parse(&k.name()).unwrap(),
        Selector::Metric {
            calc: Arc::from("potline"),
            name: Arc::from("x"),
            labels: vec![]
        }
    );
}
