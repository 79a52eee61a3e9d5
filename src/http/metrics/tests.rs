use super::*;

#[test]
fn per_device_read_errors_histograms_and_renamed_families() {
    let mut snap = crate::http::snapshot::tests::snap();
    snap.sources[0].device_read_errors.insert(
        "pot_007".into(),
        crate::acquisition::DeviceReadErrors {
            comm_failures: 4,
            exceptions: 1,
        },
    );
    let h = crate::histogram::Histogram::default();
    h.observe(std::time::Duration::from_millis(40));
    h.observe(std::time::Duration::from_secs(2));
    snap.uplinks[0].publish_latency = h.snapshot();
    snap.sources[0].request_duration = h.snapshot();
    let text = render(&snap);
    for line in [
        "smeltwatch_device_read_errors_total{source=\"line1\",device=\"pot_007\",kind=\"comm_failure\"} 4",
        "smeltwatch_device_read_errors_total{source=\"line1\",device=\"pot_007\",kind=\"exception\"} 1",
        "# TYPE smeltwatch_uplink_publish_latency_seconds histogram",
        "smeltwatch_uplink_publish_latency_seconds_bucket{uplink=\"plant\",le=\"0.05\"} 1",
        "smeltwatch_uplink_publish_latency_seconds_bucket{uplink=\"plant\",le=\"2.5\"} 2",
        "smeltwatch_uplink_publish_latency_seconds_count{uplink=\"plant\"} 2",
        "smeltwatch_source_request_duration_seconds_sum{source=\"line1\"} 2.04",
        "smeltwatch_uplink_replay_records_per_second{uplink=\"plant\"} 0",
        "smeltwatch_spool_drops_total{uplink=\"plant\",reason=\"budget\"} 3",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    }
    for gone in [
        "smeltwatch_uplink_replay_rate{",
        "smeltwatch_spool_dropped_total",
        "smeltwatch_source_request_duration_seconds_mean",
    ] {
        assert!(!text.contains(gone), "{gone} still rendered");
    }
}

/// A snapshot whose points and metric need escaping, non-finite values and text values.
fn awkward_points_snapshot() -> Snapshot {
    use crate::http::snapshot::{MetricView, PointView};
    use crate::model::Quality;
    let mut snap = crate::http::snapshot::tests::snap();
    let point = |device: &str, point: &str, value: Option<Value>, unit: &str| PointView {
        device: device.into(),
        point: point.into(),
        value,
        unit: unit.into(),
        quality: Quality::Stale,
        ts_ms: 1_740_787_200_123,
    };
    snap.points = vec![
        point("pot_001", "cell_voltage_v", Some(Value::Float(4.125)), "V"),
        point("pot_001", "flow", Some(Value::Int(-3)), "m³/h"),
        point(
            "stack \"a\" \\ b\nc",
            "note",
            Some(Value::Text("x".into())),
            "-",
        ),
        point("pot_001", "level", Some(Value::Float(0.5)), "a\\b\nc\"d\""),
        point("pot_002", "nan", Some(Value::Float(f64::NAN)), "V"),
        point("pot_002", "none", None, "V"),
    ];
    snap.metrics = vec![MetricView {
        calc: "potline".into(),
        name: "dc_energy_kwh_per_t".into(),
        value: Some(13_120.5),
        unit: "kWh/t".into(),
        quality: Quality::Good,
        ts_ms: 0,
        labels: [
            ("line".into(), "potline1".into()),
            ("unit".into(), "x".into()),
        ]
        .into(),
    }];
    snap
}

/// The point and calc families of `snap` as the `metrics` exporter renders them.
fn render_by_exporter(snap: &Snapshot) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        for p in &snap.points {
            let number = p
                .value
                .as_ref()
                .and_then(Value::as_f64)
                .filter(|f| f.is_finite());
            if let (Some(v), false) = (number, matches!(p.value, Some(Value::Text(_)))) {
                let l = labels(&[
                    ("device", &p.device),
                    ("point", &p.point),
                    ("unit", &p.unit),
                ]);
                gauge!("smeltwatch_point_value", l).set(v);
            }
            let l = labels(&[
                ("device", &p.device),
                ("point", &p.point),
                ("quality", p.quality.as_str()),
            ]);
            gauge!("smeltwatch_point_quality", l).set(1.0);
            let l = labels(&[("device", &p.device), ("point", &p.point)]);
            gauge!("smeltwatch_point_timestamp_seconds", l).set(p.ts_ms as f64 / 1000.0);
        }
        for m in &snap.metrics {
            let mut l = labels(&[("calc", &m.calc), ("metric", &m.name), ("unit", &m.unit)]);
            for (k, v) in &m.labels {
                l.push(Label::new(label_name(k), v.to_string()));
            }
            gauge!("smeltwatch_calc_value", l).set(m.value.unwrap_or_default());
        }
    });
    handle.render()
}

/// The point and calc samples of `text`, one sorted line each.
fn point_and_calc_samples(text: &str) -> Vec<String> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid text format");
    let mut out: Vec<String> = scrape
        .samples
        .into_iter()
        .filter(|s| s.metric.starts_with("smeltwatch_point") || s.metric == "smeltwatch_calc_value")
        .map(|s| {
            let mut l: Vec<_> = s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            l.sort();
            format!("{} {} {:?}", s.metric, l.join(","), s.value)
        })
        .collect();
    out.sort();
    out
}

/// The per-point and per-metric families, written by hand, carry exactly the samples the
/// `metrics` exporter renders for them (escaping included).
#[test]
fn points_and_calc_values_render_as_the_exporter_would() {
    let snap = awkward_points_snapshot();
    let by_exporter = render_by_exporter(&snap);
    let samples = point_and_calc_samples;
    let ours = render(&snap);
    assert_eq!(samples(&ours), samples(&by_exporter), "{ours}");
    assert_eq!(samples(&ours).len(), 3 + 6 + 6 + 1, "{ours}");
}

#[test]
fn stack_limits_are_a_family_of_their_own() {
    let mut snap = crate::http::snapshot::tests::snap();
    snap.stack_limits = vec![crate::calc::limits::StackLimit {
        stack: "gtc1_stack".into(),
        pollutant: "so2".into(),
        point: "so2_mg_m3".into(),
        limit_mg_m3: 200.0,
    }];
    let text = render(&snap);
    let line = "smeltwatch_stack_limit_mg_m3{stack=\"gtc1_stack\",pollutant=\"so2\",point=\"so2_mg_m3\"} 200";
    assert!(text.lines().any(|l| l == line), "{text}");
}

#[test]
fn label_names_are_valid_and_do_not_shadow_ours() {
    assert_eq!(label_name("line"), "line");
    assert_eq!(label_name("unit"), "label_unit");
    assert_eq!(label_name("cell-id"), "cell_id");
    assert_eq!(label_name("1st"), "label_1st");
    assert_eq!(label_name("__name__"), "label___name__");
    assert_eq!(label_name(""), "label_");
}
