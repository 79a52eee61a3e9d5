use super::*;
use crate::config::Stream;
use crate::config::TopicTemplates;
use crate::model::{Record, Value};
use crate::spool::{Decoded, StoredRecord};
use driver::refusal_reason;
use rate::{DrainRate, TokenBucket};
use rumqttc::ConnectReturnCode;
use sender::outage_event;
use tokio::time::Instant;

fn test_config(encoding: Encoding) -> UplinkConfig {
    UplinkConfig {
        name: "plant".into(),
        kind: UplinkKind::Mqtt(MqttConfig {
            broker: crate::config::HostPort {
                host: "127.0.0.1".into(),
                port: 1,
            },
            tls: false,
            client_id: "smeltwatch-test".into(),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(5),
            max_packet_size: 1 << 20,
            max_inflight: 8,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(300),
            topics: TopicTemplates::default(),
            encoding: crate::config::EncodingConfig {
                default: encoding,
                per_stream: Vec::new(),
                hj212: None,
            },
            tls_settings: Default::default(),
            replay_rate: 100,
        }),
        streams: vec![Stream::Live, Stream::Events, Stream::Emissions],
        spool: crate::config::SpoolConfig::default(),
    }
}

#[tokio::test]
// One table of records (each encoding, stream, seal and historical flag) checked in one pass.
#[allow(clippy::too_many_lines)]
async fn a_record_handed_over_decoded_is_published_exactly_as_its_body_would_be() {
    use crate::model::{Aggregate, Period, Quality, Reading, ReadingBatch, Value};
    let ts = Timestamp(1_764_300_253_123);
    let reading = |point: &str, value: Option<Value>, quality| Reading {
        point: point.into(),
        value,
        unit: "V".into(),
        quality,
        ts,
    };
    let readings = vec![
        reading("cell_voltage_v", Some(Value::Float(4.061)), Quality::Good),
        reading("alarm", Some(Value::Bool(true)), Quality::Good),
        reading("count", Some(Value::UInt(u64::MAX)), Quality::Good),
        reading("offset", Some(Value::Int(-7)), Quality::Substituted),
        reading(
            "state",
            Some(Value::Text("tapping\n".into())),
            Quality::Good,
        ),
        reading("silent", None, Quality::CommFail),
    ];
    let batch = ReadingBatch {
        source: "potline1".into(),
        device: "pot_\"003\"".into(),
        unit_id: 12,
        poll_interval_ms: 1000,
        scheduled: Timestamp(1_764_300_253_000),
        readings,
    };
    // JSON has no NaN: a JSON body decodes to no value, so the uplink encodes a batch with
    // one from its body, in either form.
    let mut with_nan = batch.clone();
    with_nan.readings.push(reading(
        "nan",
        Some(Value::Float(f64::NAN)),
        Quality::OutOfRange,
    ));
    let (batch, with_nan) = (Record::Batch(batch), Record::Batch(with_nan));
    let event = Record::Event(outage_event(
        "plant",
        Timestamp(1_764_300_000_000),
        Timestamp(1_764_300_010_000),
        &[(Stream::Live, 7)],
    ));
    let aggregate = Record::Aggregate(Aggregate {
        subject: "gtc1_stack".into(),
        quantity: "so2_mg_m3".into(),
        unit: "mg/m3".into(),
        period: Period::Hour,
        start: Timestamp(1_764_298_800_000),
        end: Timestamp(1_764_302_400_000),
        avg: Some(120.5),
        min: Some(100.0),
        max: None,
        total: Some(3.2),
        total_unit: Some("kg".into()),
        samples: 58,
        expected: 60,
        valid: true,
        quality: Quality::Good,
        substituted: 0,
    });
    let dir = tempfile::tempdir().unwrap();
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        let spool = SpoolHandle::open(
            &dir.path().join(format!("{encoding:?}.db")),
            &crate::config::SpoolConfig::default(),
        )
        .unwrap();
        let uplink = MqttUplink::new("demo-al-01", &test_config(encoding), spool).unwrap();
        let (_conn_tx, conn_rx) = watch::channel(None);
        let mut sender = Sender::new(&uplink, conn_rx);
        let cases = [
            (&batch, true),
            (&with_nan, false),
            (&event, false),
            (&aggregate, false),
        ];
        // The body as this build writes it, and as older builds did (JSON).
        let bodies = |record: &Record| {
            [
                crate::codec::body::encode(record),
                serde_json::to_vec(record).unwrap(),
            ]
        };
        let cases = cases
            .into_iter()
            .flat_map(|(record, from_memory)| {
                bodies(record).map(|body| (record, from_memory, body))
            })
            .enumerate();
        for (id, (record, from_memory, body)) in cases {
            let stored = StoredRecord {
                id: id as i64 + 1,
                stream: record.stream(),
                seq: 40 + id as u64,
                topic: topic::topic_for(&TopicTemplates::default(), "demo-al-01", record),
                body,
                created: Timestamp::now(),
                attempts: 0,
            };
            for boundary in [0, 10] {
                // Fresh and historical.
                sender.state.connected(1, boundary);
                let from_body = sender.prepare(&stored, None).unwrap();
                let decoded: Decoded = Arc::new(record.clone());
                let from_decoded = sender.prepare(&stored, Some(decoded.clone())).unwrap();
                assert_eq!(from_decoded, from_body, "{encoding:?} {record:?}");
                // Which way it went: only the decoded form does without the body.
                let unreadable = StoredRecord {
                    body: b"{not json".to_vec(),
                    ..stored.clone()
                };
                let without_body = sender.prepare(&unreadable, Some(decoded));
                assert_eq!(
                    without_body.ok(),
                    from_memory.then_some(from_body),
                    "{encoding:?} {record:?}"
                );
            }
        }
    }
}

#[test]
fn the_outage_event_survives_the_spool_round_trip() {
    let event = outage_event(
        "province",
        Timestamp(1_764_300_000_000),
        Timestamp(1_764_300_010_000),
        &[(Stream::Live, 7), (Stream::Emissions, 0)],
    );
    let record = Record::Event(event.clone());
    let body = crate::codec::body::encode(&record);
    let back = crate::codec::body::decode(&body).expect("an event record decodes");
    assert_eq!(back, record);
    assert_eq!(event.kind.as_str(), "outage");
    assert_eq!(event.attributes[0], ("dropped_live".into(), Value::Int(7)));
    assert!(
        event.message.contains("dropped 7 records (7 live)"),
        "{}",
        event.message
    );
    assert!(
        event
            .attributes
            .contains(&("duration_s".into(), Value::Float(10.0)))
    );
}

#[test]
fn token_bucket_paces_to_the_rate() {
    let start = Instant::now();
    let mut b = TokenBucket::new(100);
    b.reset(start);
    assert_eq!(b.available(start), 10, "a tenth of a second's burst");
    b.take(10);
    assert_eq!(b.available(start), 0);
    assert_eq!(b.next_token_at(), start + Duration::from_millis(10));
    assert_eq!(b.available(start + Duration::from_millis(55)), 5);
    assert_eq!(b.available(start + Duration::from_secs(5)), 10, "capped");
}

#[test]
fn drain_rate_reports_the_last_whole_second() {
    let t0 = Instant::now();
    let mut d = DrainRate::new();
    d.add(t0, 100);
    d.add(t0 + Duration::from_millis(500), 150);
    assert_eq!(d.per_second(t0 + Duration::from_millis(900)), 0);
    assert_eq!(d.per_second(t0 + Duration::from_millis(1100)), 250);
    assert_eq!(d.per_second(t0 + Duration::from_secs(4)), 0, "idle");
}

#[test]
fn refusal_reasons_read_like_the_spec() {
    assert_eq!(
        refusal_reason(ConnectReturnCode::BadUserNamePassword),
        "bad user name or password"
    );
    assert_eq!(
        refusal_reason(ConnectReturnCode::NotAuthorized),
        "not authorized"
    );
}
