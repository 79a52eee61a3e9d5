use super::*;

#[test]
fn event_kinds_serialise_as_their_names_and_unknown_names_survive() {
    for kind in EventKind::KNOWN {
        let json = serde_json::to_string(kind).unwrap();
        assert_eq!(json, format!("\"{}\"", kind.as_str()));
        assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), *kind);
        assert_eq!(EventKind::from_name(kind.as_str()), *kind);
    }
    let names: std::collections::BTreeSet<&str> =
        EventKind::KNOWN.iter().map(EventKind::as_str).collect();
    assert_eq!(
        names.len(),
        EventKind::KNOWN.len(),
        "two kinds share a name"
    );
    assert_eq!(EventKind::AnodeEffect.as_str(), "anode_effect");
    assert_eq!(EventKind::Outage.to_string(), "outage");
    let newer: EventKind = serde_json::from_str("\"furnace_tap\"").unwrap();
    assert_eq!(newer, EventKind::Other(Arc::from("furnace_tap")));
    assert_eq!(serde_json::to_string(&newer).unwrap(), "\"furnace_tap\"");
    // The names other modules match on.
    assert_eq!(
        crate::clock::CLOCK_STEP_EVENT,
        EventKind::ClockStep.as_str()
    );
    assert_eq!(
        crate::ledger::capture::CONFIG_CHANGE,
        EventKind::ConfigChange.as_str()
    );
}

#[test]
fn value_deserialises_as_untagged_did() {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Untagged {
        Bool(bool),
        Int(i64),
        UInt(u64),
        Float(f64),
        Text(String),
    }
    for text in [
        "true",
        "-5",
        "5",
        "9223372036854775807",
        "18446744073709551615",
        "1.5",
        "-0.0",
        "1e300",
        "\"x\"",
    ] {
        let expected = match serde_json::from_str::<Untagged>(text).unwrap() {
            Untagged::Bool(b) => Value::Bool(b),
            Untagged::Int(i) => Value::Int(i),
            Untagged::UInt(u) => Value::UInt(u),
            Untagged::Float(f) => Value::Float(f),
            Untagged::Text(t) => Value::Text(t),
        };
        assert_eq!(
            serde_json::from_str::<Value>(text).unwrap(),
            expected,
            "{text}"
        );
    }
    // Inside an internally tagged record (buffered by serde first), and null as None.
    let r: Record = serde_json::from_str(
        r#"{"record":"batch","source":"s","device":"d","unit_id":1,"poll_interval_ms":1000,
               "scheduled":0,"readings":[
               {"point":"a","value":7,"unit":"","quality":"good","ts":0},
               {"point":"b","value":null,"unit":"","quality":"comm_fail","ts":0},
               {"point":"c","value":2.5,"unit":"","quality":"good","ts":0}]}"#,
    )
    .unwrap();
    let Record::Batch(b) = r else {
        panic!("a batch")
    };
    let values: Vec<_> = b.readings.iter().map(|r| r.value.clone()).collect();
    assert_eq!(values, [Some(Value::Int(7)), None, Some(Value::Float(2.5))]);
    assert!(serde_json::from_str::<Value>("[1]").is_err());
}

#[test]
fn record_deserialises_as_internally_tagged_did() {
    #[derive(Deserialize)]
    #[serde(tag = "record", rename_all = "snake_case")]
    enum Tagged {
        Batch(ReadingBatch),
        Metrics(MetricBatch),
        Event(Event),
        Aggregate(Aggregate),
    }
    let derived = |text: &str| -> Record {
        match serde_json::from_str::<Tagged>(text).unwrap() {
            Tagged::Batch(b) => Record::Batch(b),
            Tagged::Metrics(m) => Record::Metrics(m),
            Tagged::Event(e) => Record::Event(e),
            Tagged::Aggregate(a) => Record::Aggregate(a),
        }
    };
    let batch = r#""source":"s","device":"d","unit_id":1,"poll_interval_ms":1000,"scheduled":5,
            "readings":[{"point":"a","value":-7,"unit":"V","quality":"good","ts":5}]"#;
    let metrics = r#""calc":"potline","ts":9,"metrics":[{"name":"m_t","value":1.5,"unit":"t",
            "quality":"good","ts":9,"labels":[["line","potline1"]]}]"#;
    let event = r#""kind":"outage","subject":"plant","phase":"instant","ts":3,
            "attributes":[["dropped_live",4]],"message":"m""#;
    let aggregate = r#""subject":"s1","quantity":"so2_mg_m3","unit":"mg/m3","period":"hour",
            "start":0,"end":3600000,"avg":1.0,"min":0.5,"max":2.0,"total":null,"total_unit":null,
            "samples":60,"expected":60,"valid":true,"quality":"good""#;
    for (tag, fields) in [
        ("batch", batch),
        ("metrics", metrics),
        ("event", event),
        ("aggregate", aggregate),
    ] {
        // Tag first (what our serialiser writes), tag last, and an unknown field (a seal).
        for text in [
            format!(r#"{{"record":"{tag}",{fields}}}"#),
            format!(r#"{{{fields},"record":"{tag}"}}"#),
            format!(r#"{{"record":"{tag}",{fields},"seal":{{"chain_seq":1}}}}"#),
        ] {
            let ours: Record = serde_json::from_str(&text).unwrap();
            assert_eq!(ours, derived(&text), "{text}");
            let again = serde_json::to_vec(&ours).unwrap();
            assert_eq!(serde_json::from_slice::<Record>(&again).unwrap(), ours);
        }
    }
    for bad in [
        r#"{}"#,
        r#"{"source":"s"}"#,
        r#"{"record":"nope","source":"s"}"#,
        r#"{"record":"batch","source":"s"}"#,
        r#"[1]"#,
    ] {
        assert!(serde_json::from_str::<Record>(bad).is_err(), "{bad}");
        assert!(serde_json::from_str::<Tagged>(bad).is_err(), "{bad}");
    }
}

fn potline_metric() -> Metric {
    Metric {
        name: Arc::from("production_today_t"),
        value: Some(188.42),
        unit: Arc::from("t"),
        quality: Quality::Good,
        ts: Timestamp(9),
        // Not in key order: the JSON object keeps the metric's order.
        labels: vec![
            (Arc::from("line"), Arc::from("potline1")),
            (Arc::from("period"), Arc::from("day")),
            (Arc::from("cell"), Arc::from("pot_017")),
        ],
    }
}

#[test]
fn labels_serialise_as_an_object_in_their_order() {
    let text = serde_json::to_string(&potline_metric()).unwrap();
    assert!(
        text.ends_with(r#""labels":{"line":"potline1","period":"day","cell":"pot_017"}}"#),
        "{text}"
    );
    let empty = Metric {
        labels: vec![],
        ..potline_metric()
    };
    assert!(
        serde_json::to_string(&empty)
            .unwrap()
            .ends_with(r#""labels":{}}"#)
    );
    let back: Metric = serde_json::from_str(&text).unwrap();
    assert_eq!(back, potline_metric());
}

#[test]
fn labels_of_older_builds_as_pairs_still_deserialise() {
    let old = r#"{"name":"production_today_t","value":188.42,"unit":"t","quality":"good",
            "ts":9,"labels":[["line","potline1"],["period","day"],["cell","pot_017"]]}"#;
    assert_eq!(
        serde_json::from_str::<Metric>(old).unwrap(),
        potline_metric()
    );
    let empty = old.replace(
        r#"[["line","potline1"],["period","day"],["cell","pot_017"]]"#,
        "[]",
    );
    assert!(
        serde_json::from_str::<Metric>(&empty)
            .unwrap()
            .labels
            .is_empty()
    );
    // A whole spooled record of the old form, through the record's own deserialiser.
    let record = format!(r#"{{"record":"metrics","calc":"potline","ts":9,"metrics":[{old}]}}"#);
    let Record::Metrics(m) = serde_json::from_str::<Record>(&record).unwrap() else {
        panic!("not a metrics record");
    };
    assert_eq!(m.metrics[0].labels.len(), 3);
    for bad in [
        r#"{"line":1}"#,
        r#"[["line"]]"#,
        r#"[["a","b","c"]]"#,
        r#""line""#,
    ] {
        let text = old.replace(
            r#"[["line","potline1"],["period","day"],["cell","pot_017"]]"#,
            bad,
        );
        assert!(serde_json::from_str::<Metric>(&text).is_err(), "{bad}");
    }
}

#[test]
fn timestamp_formats_as_rfc3339_millis() {
    assert_eq!(
        Timestamp(1_764_300_253_123).to_rfc3339(),
        "2025-11-28T03:24:13.123Z"
    );
}

#[test]
fn quality_serialises_snake_case() {
    assert_eq!(
        serde_json::to_string(&Quality::DeviceException).unwrap(),
        "\"device_exception\""
    );
    for (i, q) in Quality::ALL.iter().enumerate() {
        assert_eq!(*q as usize, i);
    }
}
