use super::*;
use crate::model::{Aggregate, Event, EventPhase, Period, Reading, ReadingBatch, Value};

/// 2026-11-28T10:00:00Z.
const H10: i64 = 1_795_860_000_000;
const MIN: i64 = 60_000;

fn plan() -> Plan {
    let mut devices = BTreeMap::new();
    // pot_001: 3 points every second, 1 point every minute.
    devices.insert(Arc::from("pot_001"), vec![(1000, 3), (60_000, 1)]);
    // stack_1: 2 points every 10 s.
    devices.insert(Arc::from("stack_1"), vec![(10_000, 2)]);
    Plan {
        devices,
        uplinks: vec![
            (
                "plant".into(),
                vec![
                    Stream::Live,
                    Stream::Metrics,
                    Stream::Events,
                    Stream::Emissions,
                ],
            ),
            ("platform".into(), vec![Stream::Events, Stream::Emissions]),
        ],
    }
}

fn batch(device: &str, scheduled: i64, qualities: &[Quality]) -> Record {
    Record::Batch(ReadingBatch {
        source: "line1".into(),
        device: device.into(),
        unit_id: 1,
        poll_interval_ms: 1000,
        scheduled: Timestamp(scheduled),
        readings: qualities
            .iter()
            .enumerate()
            .map(|(i, q)| Reading {
                point: format!("p{i}").into(),
                value: q.is_good().then_some(Value::Float(1.0)),
                unit: "V".into(),
                quality: *q,
                ts: Timestamp(scheduled + 20),
            })
            .collect(),
    })
}

fn aggregate(end: i64, quality: Quality) -> Record {
    Record::Aggregate(Aggregate {
        subject: "stack_1".into(),
        quantity: "so2_mg_m3".into(),
        unit: "mg/m3".into(),
        period: Period::Hour,
        start: Timestamp(end - HOUR_MS),
        end: Timestamp(end),
        avg: Some(1.0),
        min: Some(1.0),
        max: Some(1.0),
        total: None,
        total_unit: None,
        samples: 360,
        expected: 360,
        valid: true,
        quality,
        substituted: 0,
    })
}

fn event(kind: &str, ts: i64) -> Record {
    Record::Event(Event {
        kind: EventKind::from_name(kind),
        subject: "pot_001".into(),
        phase: EventPhase::Instant,
        ts: Timestamp(ts),
        attributes: vec![],
        message: String::new(),
    })
}

fn row<'a>(r: &'a Report, device: &str, stream: Stream) -> &'a Row {
    r.rows
        .iter()
        .find(|x| &*x.device == device && x.stream == stream)
        .unwrap_or_else(|| panic!("no row {device}/{stream:?} in {r:?}"))
}

#[test]
fn expected_is_cycles_in_the_window_times_points_per_poll_class() {
    let p = plan();
    // A full hour: 3600 × 3 + 60 × 1.
    assert_eq!(p.expected("pot_001", HOUR_MS), Some(10_860));
    assert_eq!(p.expected("stack_1", HOUR_MS), Some(720));
    // 90.5 s: 90 one-second cycles × 3, one one-minute cycle.
    assert_eq!(p.expected("pot_001", 90_500), Some(271));
    assert_eq!(p.expected("nobody", HOUR_MS), None);
}

#[test]
fn an_hour_is_closed_after_the_delay_with_expected_received_by_quality_and_delivered_per_uplink() {
    // Accounting has run since before this hour.
    let mut l = Ledger::new(plan(), Timestamp(H10 - HOUR_MS));
    let good3 = [Quality::Good; 3];
    let mut sent = Vec::new();
    for s in 0..3600 {
        let q = if s < 100 {
            [Quality::CommFail; 3]
        } else {
            good3
        };
        let r = batch("pot_001", H10 + s * 1000, &q);
        l.received([&r]);
        sent.push(r);
    }
    // One stack aggregate and one event, and one outage event that is not accounted.
    let agg = aggregate(H10 + 30 * MIN, Quality::Good);
    let ev = event("anode_effect", H10 + 5 * MIN);
    let outage = event("outage", H10 + 6 * MIN);
    l.received([&agg, &ev, &outage]);
    // The plant broker acknowledged all but 500 batches; the platform the aggregate only.
    let acked: Vec<Tally> = sent[..3100].iter().filter_map(tally).collect();
    l.delivered("plant", &acked);
    l.delivered("platform", &[tally(&agg).unwrap()]);

    // Not before the hour's end plus the delay.
    assert!(l.close_due(Timestamp(H10 + HOUR_MS + 59_999)).is_empty());
    let reports = l.close_due(Timestamp(H10 + HOUR_MS + 60_000));
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert!(!r.partial);
    assert_eq!(r.window, (Timestamp(H10), Timestamp(H10 + HOUR_MS)));
    let pot = row(r, "pot_001", Stream::Live);
    assert_eq!(pot.expected, Some(10_860));
    assert_eq!(
        pot.received,
        vec![(Quality::Good, 3500 * 3), (Quality::CommFail, 300)]
    );
    assert_eq!(pot.received_total(), 10_800);
    assert_eq!(pot.delivered, vec![("plant".to_string(), 3100 * 3)]);
    // The planned stack delivered nothing on live: a row with zeros, not a missing row.
    let stack = row(r, "stack_1", Stream::Live);
    assert_eq!((stack.expected, stack.received_total()), (Some(720), 0));
    let emis = row(r, "stack_1", Stream::Emissions);
    assert_eq!(emis.expected, None);
    assert_eq!(
        emis.delivered,
        vec![("plant".to_string(), 0), ("platform".to_string(), 1)]
    );
    assert_eq!(row(r, "anode_effect", Stream::Events).received_total(), 1);
    assert!(r.rows.iter().all(|x| &*x.device != "outage"));
    // Reported once.
    assert!(l.close_due(Timestamp(H10 + 2 * HOUR_MS)).is_empty());
}

#[test]
fn the_report_record_carries_counts_and_the_delivered_percentage() {
    let mut l = Ledger::new(plan(), Timestamp(H10 - HOUR_MS));
    let r = batch("stack_1", H10, &[Quality::Good, Quality::Good]);
    for _ in 0..324 {
        l.received([&r]);
        l.delivered("plant", [&tally(&r).unwrap()]);
    }
    let report = l.close_due(Timestamp(H10 + 2 * HOUR_MS)).remove(0);
    let Record::Metrics(m) = report.to_record() else {
        panic!("a metrics record")
    };
    assert_eq!(&*m.calc, "completeness");
    assert_eq!(m.ts, Timestamp(H10 + HOUR_MS));
    let find = |name: &str, device: &str| {
        m.metrics
            .iter()
            .find(|x| {
                &*x.name == name
                    && x.labels
                        .iter()
                        .any(|(k, v)| &**k == "device" && &**v == device)
            })
            .unwrap_or_else(|| panic!("no {name} for {device}"))
    };
    // 648 of 360 cycles × 2 points = 720 expected: 90 %.
    assert_eq!(
        find("completeness_expected_count", "stack_1").value,
        Some(720.0)
    );
    assert_eq!(
        find("completeness_received_count", "stack_1").value,
        Some(648.0)
    );
    let pct = find("completeness_delivered_pct", "stack_1");
    assert_eq!(pct.value, Some(90.0));
    assert_eq!(&*pct.unit, "%");
    let label = |k: &str| {
        pct.labels
            .iter()
            .find(|(key, _)| &**key == k)
            .map(|(_, v)| v.to_string())
    };
    assert_eq!(label("uplink").as_deref(), Some("plant"));
    assert_eq!(label("hour").as_deref(), Some("2026-11-28T10:00:00.000Z"));
    assert_eq!(label("partial").as_deref(), Some("false"));
    assert_eq!(label("stream").as_deref(), Some("live"));
    // Nothing delivered from pot_001: 0 %, still reported.
    assert_eq!(
        find("completeness_delivered_pct", "pot_001").value,
        Some(0.0)
    );
}

#[test]
fn the_first_hour_counts_from_the_start_and_a_partial_report_up_to_shutdown() {
    let start = H10 + 20 * MIN;
    let mut l = Ledger::new(plan(), Timestamp(start));
    l.received([&batch("stack_1", start, &[Quality::Good; 2])]);
    let stop = H10 + 30 * MIN;
    let reports = l.partial(Timestamp(stop));
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert!(r.partial);
    assert_eq!(r.window, (Timestamp(start), Timestamp(stop)));
    // 10 minutes of 10 s cycles × 2 points.
    assert_eq!(row(r, "stack_1", Stream::Live).expected, Some(120));
    let Record::Metrics(m) = r.to_record() else {
        panic!()
    };
    assert!(m.metrics.iter().all(|x| {
        x.labels
            .iter()
            .any(|(k, v)| &**k == "partial" && &**v == "true")
    }));
    // The partial report does not close the hour.
    assert_eq!(l.close_due(Timestamp(H10 + HOUR_MS + MIN)).len(), 1);
}

#[test]
fn a_restart_mid_hour_continues_the_counts_and_keeps_the_whole_window() {
    let mut l = Ledger::new(plan(), Timestamp(H10 - HOUR_MS));
    let r = batch("stack_1", H10 + MIN, &[Quality::Good; 2]);
    l.received([&r]);
    l.delivered("plant", [&tally(&r).unwrap()]);
    let saved = serde_json::to_vec(l.state()).unwrap();

    // Down from 10:05 to 10:40; the ledger comes back from the state file.
    let state: State = serde_json::from_slice(&saved).unwrap();
    let mut l = Ledger::restore(plan(), state);
    let r2 = batch("stack_1", H10 + 40 * MIN, &[Quality::Good; 2]);
    l.received([&r2]);
    l.delivered("plant", [&tally(&r2).unwrap()]);
    let report = l.close_due(Timestamp(H10 + HOUR_MS + MIN)).remove(0);
    let s = row(&report, "stack_1", Stream::Live);
    assert_eq!(s.received_total(), 4, "counts before the restart kept");
    assert_eq!(s.delivered, vec![("plant".to_string(), 4)]);
    assert_eq!(s.expected, Some(720), "the downtime counts as missing data");
}

#[test]
fn late_deliveries_count_in_their_hour_until_it_is_forgotten() {
    let mut l = Ledger::new(plan(), Timestamp(H10 - HOUR_MS));
    let r = batch("stack_1", H10 + MIN, &[Quality::Good; 2]);
    l.received([&r]);
    assert_eq!(l.close_due(Timestamp(H10 + HOUR_MS + MIN)).len(), 1);
    // The backlog of 10:00 is replayed at 11:30: shown for the hour, not reported again.
    l.delivered("plant", [&tally(&r).unwrap()]);
    let view = l.hour_at(Timestamp(H10 + 30 * MIN)).unwrap();
    assert_eq!(
        row(&view, "stack_1", Stream::Live).delivered,
        vec![("plant".to_string(), 2)]
    );
    assert!(l.close_due(Timestamp(H10 + HOUR_MS + 90 * MIN)).is_empty());
    // Three hours after it closed, it is gone, and a delivery for it is ignored.
    l.received([&batch("stack_1", H10 + 5 * HOUR_MS, &[Quality::Good; 2])]);
    l.close_due(Timestamp(H10 + 4 * HOUR_MS + 2 * MIN));
    assert!(l.hour_at(Timestamp(H10)).is_none());
    l.delivered("plant", [&tally(&r).unwrap()]);
    assert!(l.hour_at(Timestamp(H10)).is_none());
}

#[test]
fn the_agents_own_records_are_not_accounted() {
    let report = Report {
        hour: Timestamp(H10),
        window: (Timestamp(H10), Timestamp(H10 + HOUR_MS)),
        partial: false,
        rows: vec![],
    };
    assert_eq!(tally(&report.to_record()), None);
    assert_eq!(tally(&event("outage", H10)), None);
    let t = tally(&aggregate(H10 + HOUR_MS, Quality::Stale)).unwrap();
    // An hourly aggregate belongs to the hour it covers, not the one its end starts.
    assert_eq!((t.hour_ms, t.values()), (H10, 1));
    assert_eq!(t.by_quality[Quality::Stale as usize], 1);
}
