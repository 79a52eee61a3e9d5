use super::*;
use std::path::Path;

const T0: i64 = 1_764_300_253_000;

// The Sparkplug suites' plant (the fixtures are shared with `tests/sparkplug.rs`) with this
// suite's own rectifier and pot points: the alias tests pin exactly these five metrics.
const CONFIG: &str = concat!(
    include_str!("../../../tests/fixtures/sparkplug_gw1.toml"),
    r#"
[sources.devices.points.temp_c]
area = "holding"
address = 11
type = "i16"
scale = 0.1
unit = "degC"
"#,
    include_str!("../../../tests/fixtures/pot_001_gateway.toml"),
    r#"
[sources.devices.points.energy_kwh]
area = "input"
address = 2
type = "u64"
unit = "kWh"
"#,
);

fn model() -> EdgeNodeModel {
    let cfg = crate::config::parse(CONFIG, Path::new("test.toml")).expect("valid config");
    EdgeNodeModel::from_sources(&cfg.sources)
}

/// [`CONFIG`] with the `[[derived]]` entries of `derived`, parsed.
fn config_with(derived: &str) -> crate::config::Config {
    crate::config::parse(&format!("{CONFIG}{derived}"), Path::new("test.toml"))
        .expect("valid config")
}

/// The model of [`CONFIG`] with the `[[derived]]` entries of `derived`.
fn model_with(derived: &str) -> EdgeNodeModel {
    let cfg = config_with(derived);
    EdgeNodeModel::from_sources(&cfg.sources).with_derived(&cfg.derived)
}

fn reading(point: &str, value: Option<Value>, q: Quality, ts: i64) -> Reading {
    Reading {
        point: point.into(),
        value,
        unit: "".into(),
        quality: q,
        ts: Timestamp(ts),
    }
}

fn batch(device: &str, readings: Vec<Reading>) -> ReadingBatch {
    ReadingBatch {
        source: "gw1".into(),
        device: device.into(),
        unit_id: 1,
        poll_interval_ms: 1000,
        scheduled: Timestamp(T0),
        readings,
    }
}

/// Each device metric as (device, metric, alias, datatype), in order.
fn device_metrics(devices: &[DeviceModel]) -> Vec<(&str, &str, u64, DataType)> {
    devices
        .iter()
        .flat_map(|d| {
            d.metrics
                .iter()
                .map(move |x| (&*d.name, &*x.name, x.alias, x.datatype))
        })
        .collect()
}

#[test]
fn aliases_are_assigned_in_configuration_order_and_unique_across_the_edge_node() {
    let m = model();
    let names = device_metrics(&m.devices);
    assert_eq!(
        names,
        vec![
            ("rectifier", "line_current_ka", 1, DataType::Float),
            ("rectifier", "offset_raw", 2, DataType::Int16),
            ("rectifier", "temp_c", 3, DataType::Double),
            ("pot_001", "cell_voltage_v", 4, DataType::Float),
            ("pot_001", "energy_kwh", 5, DataType::UInt64),
        ]
    );
    // The same configuration gives the same aliases (stable across restarts).
    assert_eq!(model(), m);
}

#[test]
fn live_derived_points_are_double_metrics_of_their_own_devices_after_the_polled_points() {
    let derived = r#"
[[derived]]
name = "line_power_kw"
expr = "rectifier.line_current_ka * 2"
unit = "kA"
stream = "live"
device = "rectifier"

[[derived]]
name = "mean_v"
expr = "pot_001.cell_voltage_v"
unit = "V"
stream = "live"

[[derived]]
name = "on_metrics_v"
expr = "pot_001.cell_voltage_v"
unit = "V"
"#;
    let m = model_with(derived);
    let names = device_metrics(&m.devices[2..]);
    assert_eq!(
        names,
        vec![
            ("derived_rectifier", "line_power_kw", 6, DataType::Double),
            ("derived", "mean_v", 7, DataType::Double),
        ],
        "a configured device's name is not taken twice; metrics-stream points are not metrics"
    );
    let b = ReadingBatch {
        source: "derived".into(),
        ..batch("rectifier", vec![])
    };
    assert_eq!(m.batch_device(&b), Some(2));
    assert_eq!(m.batch_device(&batch("rectifier", vec![])), Some(0));
    assert_eq!(m.batch_device(&batch("derived", vec![])), None);
}

#[test]
fn nbirth_has_seq_0_bdseq_int64_and_rebirth_false_never_aliased() {
    let p = nbirth(7, Timestamp(T0));
    assert_eq!(p.seq, Some(0));
    assert_eq!(p.timestamp, Some(T0 as u64));
    let bd = &p.metrics[0];
    assert_eq!(bd.name.as_deref(), Some(BD_SEQ));
    assert_eq!(bd.datatype, Some(DataType::Int64 as u32));
    assert_eq!(bd.value, Some(PbValue::LongValue(7)));
    let rb = &p.metrics[1];
    assert_eq!(rb.name.as_deref(), Some(NODE_REBIRTH));
    assert_eq!(rb.datatype, Some(DataType::Boolean as u32));
    assert_eq!(rb.value, Some(PbValue::BooleanValue(false)));
    assert!(p.metrics.iter().all(|m| m.alias.is_none()));
    assert!(p.metrics.iter().all(|m| m.timestamp.is_some()));
}

#[test]
fn ndeath_carries_only_bdseq_and_no_seq() {
    let p = ndeath(7, Timestamp(T0));
    assert_eq!(p.seq, None);
    assert_eq!(p.metrics.len(), 1);
    assert_eq!(p.metrics[0].name.as_deref(), Some(BD_SEQ));
    assert_eq!(p.metrics[0].value, Some(PbValue::LongValue(7)));
    // The Will's bdSeq equals the NBIRTH's for the same session.
    assert_eq!(
        p.metrics[0].value,
        nbirth(7, Timestamp(T0 + 5)).metrics[0].value
    );
}

/// The `engUnit` property of a metric, if present (a String).
fn eng_unit(metric: &PbMetric) -> Option<String> {
    let props = metric.properties.as_ref()?;
    let i = props.keys.iter().position(|k| k == "engUnit")?;
    let v = props.values.get(i)?;
    assert_eq!(v.r#type, Some(DataType::String as u32), "{v:?}");
    match v.value.as_ref()? {
        pb::payload::property_value::Value::StringValue(s) => Some(s.clone()),
        other => panic!("engUnit is not a string: {other:?}"),
    }
}

#[test]
fn births_carry_the_declared_unit_as_eng_unit_of_polled_and_derived_points() {
    let derived = r#"
[[derived]]
name = "line_current_x2_ka"
expr = "rectifier.line_current_ka * 2"
unit = "kA"
stream = "live"
"#;
    let m = model_with(derived);
    let rect = &m.devices[0];
    let p = dbirth(
        rect,
        &DeviceState::new(rect.metrics.len()).last,
        1,
        Timestamp(T0),
    );
    let units: Vec<(Option<&str>, Option<String>)> = p
        .metrics
        .iter()
        .map(|x| (x.name.as_deref(), eng_unit(x)))
        .collect();
    assert_eq!(
        units,
        vec![
            (Some("line_current_ka"), Some("kA".to_owned())),
            (Some("offset_raw"), None),
            (Some("temp_c"), Some("degC".to_owned())),
        ],
        "a point without a unit has no engUnit"
    );
    assert!(
        p.metrics
            .iter()
            .all(|x| metric_quality(x) == Some(QUALITY_BAD)),
        "the quality stays beside the unit"
    );
    let dev = &m.devices[2];
    assert_eq!(dev.derived.as_deref(), Some("derived"));
    let p = dbirth(dev, &DeviceState::new(1).last, 2, Timestamp(T0));
    assert_eq!(eng_unit(&p.metrics[0]), Some("kA".to_owned()));
}

#[test]
fn dbirth_carries_every_metric_with_name_alias_datatype_current_value_and_acquisition_time() {
    let m = model();
    let dev = &m.devices[0];
    let mut st = DeviceState::new(dev.metrics.len());
    st.absorb(
        dev,
        &batch(
            "rectifier",
            vec![
                reading(
                    "line_current_ka",
                    Some(Value::Float(402.5)),
                    Quality::Good,
                    T0 + 12,
                ),
                reading("offset_raw", Some(Value::Int(-5)), Quality::Good, T0 + 12),
            ],
        ),
    );
    let p = dbirth(dev, st.current(), 3, Timestamp(T0 + 100));
    assert_eq!(p.seq, Some(3));
    assert_eq!(p.metrics.len(), 3, "every metric, also one never read");
    for (pm, mm) in p.metrics.iter().zip(&dev.metrics) {
        assert_eq!(pm.name.as_deref(), Some(&*mm.name));
        assert_eq!(pm.alias, Some(mm.alias));
        assert_eq!(pm.datatype, Some(mm.datatype as u32));
        assert!(pm.timestamp.is_some());
    }
    assert_eq!(p.metrics[0].value, Some(PbValue::FloatValue(402.5)));
    assert_eq!(p.metrics[0].timestamp, Some((T0 + 12) as u64));
    assert_eq!(p.metrics[1].value, Some(PbValue::IntValue(4_294_967_291)));
    assert_eq!(p.metrics[2].is_null, Some(true));
    assert_eq!(p.metrics[2].value, None);
    assert_eq!(metric_quality(&p.metrics[0]), Some(QUALITY_GOOD));
    assert_eq!(metric_quality(&p.metrics[2]), Some(QUALITY_BAD));
}

#[test]
fn data_is_reported_by_exception_with_aliases_only() {
    let m = model();
    let dev = &m.devices[1];
    let mut st = DeviceState::new(dev.metrics.len());
    let b1 = batch(
        "pot_001",
        vec![
            reading(
                "cell_voltage_v",
                Some(Value::Float(4.06)),
                Quality::Good,
                T0,
            ),
            reading("energy_kwh", Some(Value::UInt(10)), Quality::Good, T0),
        ],
    );
    st.absorb(dev, &b1);
    let b2 = batch(
        "pot_001",
        vec![
            reading(
                "cell_voltage_v",
                Some(Value::Float(4.07)),
                Quality::Good,
                T0 + 1000,
            ),
            reading(
                "energy_kwh",
                Some(Value::UInt(10)),
                Quality::Good,
                T0 + 1000,
            ),
            reading(
                "not_configured",
                Some(Value::UInt(1)),
                Quality::Good,
                T0 + 1000,
            ),
        ],
    );
    let changes = st.changes(dev, &b2);
    assert_eq!(changes.len(), 1, "only the changed metric");
    let p = ddata(dev, &changes, 9, Timestamp(T0 + 1005), false);
    assert_eq!(p.seq, Some(9));
    let x = &p.metrics[0];
    assert_eq!(x.alias, Some(4));
    assert_eq!(x.name, None);
    assert_eq!(x.datatype, None);
    assert_eq!(x.timestamp, Some((T0 + 1000) as u64), "acquisition time");
    assert_eq!(x.is_historical, None);
    assert_eq!(
        x.properties, None,
        "good and unchanged quality is not repeated"
    );
    assert!(st.changes(dev, &b2).is_empty(), "nothing changed since");
}

#[test]
fn a_quality_change_is_reported_with_the_quality_property() {
    let m = model();
    let dev = &m.devices[1];
    let mut st = DeviceState::new(dev.metrics.len());
    let v = Some(Value::Float(4.06));
    st.absorb(
        dev,
        &batch(
            "pot_001",
            vec![reading("cell_voltage_v", v.clone(), Quality::Good, T0)],
        ),
    );
    let stale = batch(
        "pot_001",
        vec![reading("cell_voltage_v", v.clone(), Quality::Stale, T0 + 1)],
    );
    let c = st.changes(dev, &stale);
    assert_eq!(c.len(), 1);
    let p = ddata(dev, &c, 1, Timestamp(T0), false);
    assert_eq!(metric_quality(&p.metrics[0]), Some(QUALITY_STALE));
    let good = batch(
        "pot_001",
        vec![reading("cell_voltage_v", v, Quality::Good, T0 + 2)],
    );
    let c = st.changes(dev, &good);
    let p = ddata(dev, &c, 2, Timestamp(T0), false);
    assert_eq!(
        metric_quality(&p.metrics[0]),
        Some(QUALITY_GOOD),
        "recovery is announced"
    );
}

#[test]
fn quality_property_is_192_good_500_stale_0_bad() {
    assert_eq!(quality_code(Quality::Good), 192);
    assert_eq!(quality_code(Quality::Stale), 500);
    for q in Quality::ALL {
        if !matches!(q, Quality::Good | Quality::Stale) {
            assert_eq!(quality_code(q), 0, "{q}");
        }
    }
}

#[test]
fn replayed_data_is_marked_is_historical() {
    let m = model();
    let dev = &m.devices[1];
    let mut st = DeviceState::new(dev.metrics.len());
    let b = batch(
        "pot_001",
        vec![reading(
            "cell_voltage_v",
            Some(Value::Float(4.0)),
            Quality::Good,
            T0 - 60_000,
        )],
    );
    let c = st.changes(dev, &b);
    let p = ddata(dev, &c, 1, Timestamp(T0), true);
    assert_eq!(p.metrics[0].is_historical, Some(true));
    assert_eq!(
        p.metrics[0].timestamp,
        Some((T0 - 60_000) as u64),
        "original timestamp"
    );
}

#[test]
fn seq_starts_at_0_on_nbirth_and_wraps_after_255() {
    let mut s = SeqCounter::default();
    assert_eq!(s.birth(), 0);
    let seqs: Vec<u64> = (0..300).map(|_| s.next_seq()).collect();
    assert_eq!(seqs[0], 1);
    assert_eq!(seqs[254], 255);
    assert_eq!(seqs[255], 0);
    assert_eq!(seqs[256], 1);
    assert_eq!(s.birth(), 0, "a rebirth restarts the sequence");
    assert_eq!(s.next_seq(), 1);
}

#[test]
fn negative_integers_are_sign_extended_like_tahu_and_decoded_leniently() {
    for (dt, v, raw) in [
        (DataType::Int8, -1i64, 0xFFFF_FFFFu32),
        (DataType::Int16, -5, 4_294_967_291),
        (DataType::Int32, i64::from(i32::MIN), 0x8000_0000),
    ] {
        assert_eq!(
            encode_value(dt, &Value::Int(v)),
            Some(PbValue::IntValue(raw))
        );
        assert_eq!(
            decode_value(dt, Some(&PbValue::IntValue(raw))),
            Some(Value::Int(v))
        );
    }
    // The zero-extended form (pysparkplug) and long_value (older Tahu) decode the same.
    assert_eq!(
        decode_value(DataType::Int16, Some(&PbValue::IntValue(65_531))),
        Some(Value::Int(-5))
    );
    assert_eq!(
        decode_value(DataType::Int16, Some(&PbValue::LongValue(u64::MAX - 4))),
        Some(Value::Int(-5))
    );
    assert_eq!(
        decode_value(DataType::UInt32, Some(&PbValue::LongValue(4_000_000_000))),
        Some(Value::UInt(4_000_000_000))
    );
    assert_eq!(
        encode_value(DataType::Int64, &Value::Int(-2)),
        Some(PbValue::LongValue(u64::MAX - 1))
    );
    assert_eq!(
        decode_value(DataType::Int64, Some(&PbValue::LongValue(u64::MAX - 1))),
        Some(Value::Int(-2))
    );
    assert_eq!(
        encode_value(DataType::UInt64, &Value::UInt(u64::MAX)),
        Some(PbValue::LongValue(u64::MAX))
    );
}

#[test]
fn floats_and_doubles_keep_their_field() {
    assert_eq!(
        encode_value(DataType::Float, &Value::Float(-1.5)),
        Some(PbValue::FloatValue(-1.5))
    );
    assert_eq!(
        encode_value(DataType::Double, &Value::Float(4.061)),
        Some(PbValue::DoubleValue(4.061))
    );
    assert_eq!(
        decode_value(DataType::Double, Some(&PbValue::DoubleValue(4.061))),
        Some(Value::Float(4.061))
    );
    assert_eq!(
        decode_value(DataType::Double, Some(&PbValue::IntValue(1))),
        None
    );
}

#[test]
fn a_device_whose_readings_are_all_comm_fail_is_dead() {
    let dead = batch(
        "d",
        vec![
            reading("a", None, Quality::CommFail, T0),
            reading("b", None, Quality::CommFail, T0),
        ],
    );
    let half = batch(
        "d",
        vec![
            reading("a", None, Quality::CommFail, T0),
            reading("b", Some(Value::Bool(true)), Quality::Good, T0),
        ],
    );
    assert!(device_is_dead(&dead));
    assert!(!device_is_dead(&half));
    assert!(!device_is_dead(&batch("d", vec![])));
    let p = ddeath(4, Timestamp(T0));
    assert_eq!(
        (p.seq, p.timestamp, p.metrics.len()),
        (Some(4), Some(T0 as u64), 0)
    );
}

#[test]
fn a_rebirth_request_is_recognised_by_name() {
    assert!(is_rebirth_request(&rebirth_request(Timestamp(T0))));
    assert!(!is_rebirth_request(&nbirth(1, Timestamp(T0))));
    let bytes = encode(&rebirth_request(Timestamp(T0)));
    assert!(is_rebirth_request(&decode(&bytes).unwrap()));
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(Arc<str>, Arc<str>)> {
    pairs
        .iter()
        .map(|(k, v)| (Arc::from(*k), Arc::from(*v)))
        .collect()
}

fn figure(name: &str, value: Option<f64>, q: Quality, l: &[(&str, &str)]) -> Metric {
    Metric {
        name: name.into(),
        value,
        unit: "kWh/t".into(),
        quality: q,
        ts: Timestamp(T0),
        labels: labels(l),
    }
}

/// The model of [`CONFIG`] with a `live` derived point, a `metrics` one and two potline
/// figures (one of the day so far, one of closed periods) as node metrics.
fn node_model() -> EdgeNodeModel {
    let derived = r#"
[[derived]]
name = "line_current_x2_ka"
expr = "rectifier.line_current_ka * 2"
unit = "kA"
stream = "live"

[[derived]]
name = "mean_cell_voltage_v"
expr = "pot_001.cell_voltage_v"
unit = "V"
device = "potline1"
labels = { line = "potline1" }
"#;
    let cfg = config_with(derived);
    let mut figures = node_metrics(&cfg.derived, None);
    let day = Some("day");
    figures.extend([
        NodeMetric::calc("potline", "potline1", None, "dc_kwh_per_t_today", "kWh/t"),
        NodeMetric::calc("potline", "potline1", day, "dc_kwh_per_t", "kWh/t"),
        NodeMetric::calc(
            "potline",
            "potline1",
            Some("month"),
            "dc_kwh_per_t",
            "kWh/t",
        ),
        // Declared twice: the first keeps the name.
        NodeMetric::calc("potline", "potline1", day, "dc_kwh_per_t", "MWh/t"),
    ]);
    EdgeNodeModel::from_sources(&cfg.sources)
        .with_derived(&cfg.derived)
        .with_node_metrics(figures)
}

#[test]
fn metrics_stream_figures_are_double_node_metrics_named_by_their_place_after_every_alias() {
    let m = node_model();
    let names: Vec<(&str, u64, DataType, Option<&str>)> = m
        .node
        .metrics
        .iter()
        .enumerate()
        .map(|(i, x)| (&*x.name, x.alias, x.datatype, m.node.unit(i)))
        .collect();
    assert_eq!(
        names,
        vec![
            (
                "derived/potline1/mean_cell_voltage_v",
                7,
                DataType::Double,
                Some("V")
            ),
            (
                "calc/potline/potline1/dc_kwh_per_t_today",
                8,
                DataType::Double,
                Some("kWh/t")
            ),
            (
                "calc/potline/potline1/day/dc_kwh_per_t",
                9,
                DataType::Double,
                Some("kWh/t")
            ),
            (
                "calc/potline/potline1/month/dc_kwh_per_t",
                10,
                DataType::Double,
                Some("kWh/t")
            ),
        ],
        "after the polled points (1-5) and the live derived point (6); one per period"
    );
    assert_eq!(
        &*m.devices[2].name, "derived",
        "the live derived point stays a device metric"
    );
    assert_eq!(m, node_model(), "stable across restarts");
    assert_eq!(
        DERIVED_CALC,
        crate::derived::engine::CALC,
        "the calc of the derived engine's metric batches"
    );
    assert_eq!(
        NodeMetric::calc("copper", "a/b", None, "x_t", "t").name,
        Arc::from("calc/copper/a_b/x_t"),
        "a value never opens a level of its own"
    );
}

/// The calculator, a figure's name and labels, the node metric it is (if any), and why.
type FigureCase<'a> = (
    &'a Arc<str>,
    &'a str,
    &'a [(&'a str, &'a str)],
    Option<&'a str>,
    &'a str,
);

#[test]
fn a_figure_is_the_node_metric_of_its_name_and_place_whatever_else_it_is_labelled() {
    let m = node_model();
    let potline: Arc<str> = Arc::from("potline");
    let derived: Arc<str> = Arc::from("derived");
    let name = |calc: &Arc<str>, f: &Metric| {
        m.node_metric_index(calc, f)
            .map(|i| m.node.metrics[i].name.to_string())
    };
    let day = [
        ("line", "potline1"),
        ("period", "day"),
        ("production", "measured"),
    ];
    let month = [
        ("line", "potline1"),
        ("period", "month"),
        ("production", "faraday"),
    ];
    let cell = [("line", "potline1"), ("cell", "pot_017")];
    let other = [("line", "potline2")];
    let ytd = [("line", "potline1"), ("period", "ytd")];
    let line = [("line", "potline1")];
    let more = [("line", "potline1"), ("x", "y")];
    #[rustfmt::skip]
    let cases: [FigureCase; 8] = [
        (&potline, "dc_kwh_per_t", &day, Some("calc/potline/potline1/day/dc_kwh_per_t"),
            "the production basis describes the value, it does not place it"),
        (&potline, "dc_kwh_per_t", &month, Some("calc/potline/potline1/month/dc_kwh_per_t"),
            ""),
        (&potline, "dc_kwh_per_t_today", &cell, None, "a cell's figure is not the line's"),
        (&potline, "dc_kwh_per_t_today", &other, None, "another line's"),
        (&potline, "dc_kwh_per_t", &ytd, None, "a period not declared is no node metric"),
        (&derived, "mean_cell_voltage_v", &line, Some("derived/potline1/mean_cell_voltage_v"),
            ""),
        (&derived, "mean_cell_voltage_v", &more, None,
            "a derived point's labels are exactly its own"),
        (&potline, "mean_cell_voltage_v", &line, None, "another calculator's"),
    ];
    for (calc, metric, labels, expected, why) in cases {
        assert_eq!(
            name(calc, &figure(metric, None, Quality::Good, labels)).as_deref(),
            expected,
            "{why}"
        );
    }
}

#[test]
fn nbirth_declares_the_node_metrics_with_unit_and_ndata_reports_them_by_exception() {
    let m = node_model();
    let mut st = DeviceState::new(m.node.metrics.len());
    let batch = MetricBatch {
        calc: Arc::from("potline"),
        ts: Timestamp(T0),
        metrics: vec![
            figure(
                "dc_kwh_per_t_today",
                Some(13_012.6),
                Quality::Good,
                &[("line", "potline1")],
            ),
            figure(
                "cells_in_service",
                Some(288.0),
                Quality::Good,
                &[("line", "potline1")],
            ),
        ],
    };
    let readings = m.node_batch(&batch);
    assert_eq!(readings.readings.len(), 1, "only the declared figure");
    st.absorb(&m.node, &readings);
    let p = nbirth_with(5, &m.node, st.current(), Timestamp(T0 + 10));
    assert_eq!(p.seq, Some(0));
    assert_eq!(
        p.metrics.len(),
        2 + 4,
        "bdSeq, rebirth and every node metric"
    );
    assert_eq!(
        p.metrics[2].name.as_deref(),
        Some("derived/potline1/mean_cell_voltage_v")
    );
    assert_eq!(p.metrics[2].is_null, Some(true), "never computed");
    assert_eq!(metric_quality(&p.metrics[2]), Some(QUALITY_BAD));
    assert_eq!(eng_unit(&p.metrics[2]).as_deref(), Some("V"));
    let today = &p.metrics[3];
    assert_eq!(
        (today.name.as_deref(), today.alias, today.datatype),
        (
            Some("calc/potline/potline1/dc_kwh_per_t_today"),
            Some(8),
            Some(DataType::Double as u32)
        )
    );
    assert_eq!(today.value, Some(PbValue::DoubleValue(13_012.6)));
    assert_eq!(today.timestamp, Some(T0 as u64));
    assert_eq!(metric_quality(today), Some(QUALITY_GOOD));
    assert_eq!(metric_eng_unit(today), Some("kWh/t"));

    // The next minute: the figure changed, and lost its quality.
    let next = MetricBatch {
        metrics: vec![figure(
            "dc_kwh_per_t_today",
            None,
            Quality::CommFail,
            &[("line", "potline1")],
        )],
        ..batch.clone()
    };
    let readings = m.node_batch(&next);
    let changes = st.changes(&m.node, &readings);
    let p = ddata(&m.node, &changes, 3, Timestamp(T0 + 60_000), false);
    assert_eq!(p.metrics.len(), 1);
    let x = &p.metrics[0];
    assert_eq!(
        (x.alias, x.name.as_deref()),
        (Some(8), None),
        "aliases only"
    );
    assert_eq!(x.is_null, Some(true));
    assert_eq!(metric_quality(x), Some(QUALITY_BAD));
    assert_eq!(metric_eng_unit(x), None, "the unit is the birth's");
    assert!(st.changes(&m.node, &readings).is_empty(), "reported once");
    // Replayed: every figure, historical, not compared with the live ones.
    let replay = replayed(&m.node, &readings);
    let p = ddata(&m.node, &replay, 4, Timestamp(T0 + 60_000), true);
    assert_eq!(p.metrics[0].is_historical, Some(true));
}

#[test]
fn topics_follow_the_namespace() {
    assert_eq!(
        topic("G", MessageType::NBirth, "E", None),
        "spBv1.0/G/NBIRTH/E"
    );
    assert_eq!(
        topic("G", MessageType::DData, "E", Some("pot_001")),
        "spBv1.0/G/DDATA/E/pot_001"
    );
}
