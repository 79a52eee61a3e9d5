//! HJ 212 TCP uplink against a fake platform: hourly packets delivered in order, a dropped
//! connection, an unanswered packet sent again with the same QN (OverTime/ReCount), and the spool
//! emptied only by 9014 answers.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::hj212::{next_packet, platform, station};
use common::records::stack_aggregate;
use smeltwatch::codec::hj212::{self, Packet, Table};
use smeltwatch::config::{SpoolConfig, Stream};
use smeltwatch::history::HistorySource;
use smeltwatch::model::{Aggregate, Period, Quality, Record, Timestamp};
use smeltwatch::spool::{NewRecord, SpoolHandle};
use smeltwatch::uplink::hj212::{Hj212TcpConfig, Hj212TcpUplink};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// 2025-03-01 09:00 China time.
const T0: i64 = 1_740_790_800_000;

fn aggregate(hour: i64, quantity: &str, avg: f64) -> Aggregate {
    Aggregate {
        total: Some(avg * 1.6),
        total_unit: Some(Arc::from("kg")),
        ..stack_aggregate(
            quantity,
            Period::Hour,
            T0 + hour * 3_600_000,
            T0 + (hour + 1) * 3_600_000,
            avg,
            1.0,
        )
    }
}

/// The uplink's spool, in `dir`.
fn spool_in(dir: &tempfile::TempDir) -> SpoolHandle {
    SpoolHandle::open(&dir.path().join("hj212.db"), &SpoolConfig::default()).unwrap()
}

/// Where a test's platform listens: a free loopback port, and its address.
async fn loopback_listener() -> (TcpListener, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// An uplink of `cfg` (HJ 212-2017) on `spool` whose events go to the returned receiver, which
/// holds `capacity` of them.
fn uplink_with_events(
    cfg: Hj212TcpConfig,
    spool: &SpoolHandle,
    capacity: usize,
) -> (Hj212TcpUplink, mpsc::Receiver<Record>) {
    let (events_tx, events) = mpsc::channel(capacity);
    let uplink = Hj212TcpUplink::new(cfg, Arc::new(Table::hj212_2017()), spool.clone())
        .with_events(events_tx);
    (uplink, events)
}

/// The next event of `kind` on `events`, within 10 s.
async fn next_event(events: &mut mpsc::Receiver<Record>, kind: &str) -> smeltwatch::model::Event {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Record::Event(e)) = events.recv().await
                && &*e.kind == kind
            {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("an {kind} event"))
}

fn record(r: &Record) -> NewRecord {
    NewRecord {
        stream: Stream::Emissions,
        topic: "t".into(),
        body: serde_json::to_vec(r).unwrap(),
        created: Timestamp(T0),
    }
}

#[tokio::test]
async fn hourly_packets_survive_a_dropped_connection_and_an_unanswered_packet() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_in(&dir);
    // Three hours, two pollutants each, plus an event that has no HJ 212 form.
    let mut records = Vec::new();
    for hour in 0..3 {
        records.push(record(&Record::Aggregate(aggregate(
            hour,
            "so2_mg_m3",
            80.0 + hour as f64,
        ))));
        if hour == 1 {
            records.push(record(&Record::Event(smeltwatch::model::Event {
                kind: "exceedance".into(),
                subject: Arc::from("gtc1_stack/so2"),
                phase: smeltwatch::model::EventPhase::Instant,
                ts: Timestamp(T0),
                attributes: Vec::new(),
                message: "test".into(),
            })));
        }
        records.push(record(&Record::Aggregate(aggregate(
            hour,
            "nox_mg_m3",
            50.0 + hour as f64,
        ))));
    }
    spool.append(records).await.unwrap();

    let (listener, addr) = loopback_listener().await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<(usize, Packet)>();
    let table = Arc::new(Table::hj212_2017());
    let platform_table = table.clone();
    let platform = tokio::spawn(async move {
        // Connection 1: take the first packet, then drop the connection without answering.
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let p = next_packet(&mut conn, &mut buf, &Table::hj212_2017())
            .await
            .unwrap();
        seen_tx.send((1, p)).unwrap();
        drop(conn);
        // Connection 2: leave the first packet unanswered, answer everything after it.
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut first = true;
        while let Some(p) = next_packet(&mut conn, &mut buf, &Table::hj212_2017()).await {
            if !first {
                let ack = hj212::data_response(&platform_table, &p).unwrap();
                conn.write_all(ack.as_bytes()).await.unwrap();
            }
            first = false;
            if seen_tx.send((2, p)).is_err() {
                break;
            }
        }
    });

    let mut cfg = Hj212TcpConfig::new(addr.to_string(), station(true));
    cfg.over_time = Duration::from_millis(300);
    cfg.re_count = 3;
    cfg.reconnect_min = Duration::from_millis(20);
    cfg.reconnect_max = Duration::from_millis(100);
    let latency = Arc::new(smeltwatch::histogram::Histogram::default());
    let uplink =
        Hj212TcpUplink::new(cfg, table, spool.clone()).with_publish_latency(latency.clone());
    let mut stats = uplink.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(uplink.run(shutdown.clone()));

    // Wait until all seven records are accounted for (6 delivered + 1 skipped).
    tokio::time::timeout(Duration::from_secs(20), async {
        while {
            let s = stats.borrow_and_update();
            s.delivered + s.skipped < 7
        } {
            stats.changed().await.unwrap();
        }
    })
    .await
    .expect("the uplink delivers everything within 20 s");
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let mut packets = Vec::new();
    while let Ok(p) = seen.try_recv() {
        packets.push(p);
    }
    // conn 1: hour 0; conn 2: hour 0 unanswered, hour 0 again (same QN), hours 1 and 2.
    let summary: Vec<(usize, String, String)> = packets
        .iter()
        .map(|(c, p)| {
            (
                *c,
                p.cp.get("DataTime").unwrap().to_owned(),
                p.qn.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary.len(), 5, "{summary:?}");
    assert_eq!(summary[0].1, "20250301090000");
    assert_eq!(summary[1].0, 2);
    assert_eq!(summary[1].1, "20250301090000");
    assert_eq!(summary[2].1, "20250301090000");
    assert_eq!(summary[1].2, summary[2].2, "a resend keeps its QN");
    assert_eq!(summary[3].1, "20250301100000");
    assert_eq!(summary[4].1, "20250301110000");
    let qns: std::collections::HashSet<_> = summary[2..].iter().map(|s| s.2.clone()).collect();
    assert_eq!(qns.len(), 3, "each window has its own QN");
    for (_, p) in &packets {
        assert_eq!(p.cn, 2061);
        assert!(p.wants_ack());
        assert!(p.cp.get("a21026-Avg").is_some() && p.cp.get("a21002-Avg").is_some());
    }
    assert_eq!(packets[4].1.cp.get("a21026-Avg"), Some("82.0"));

    let s = stats.borrow().clone();
    assert_eq!(s.delivered, 6);
    assert_eq!(s.skipped, 1);
    assert_eq!(s.connects, 2);
    assert_eq!(s.resends, 1);
    assert_eq!(
        spool.stats().await.unwrap().records,
        0,
        "the spool is empty"
    );
    // Publish latency: one observation per delivered record, none for the skipped event;
    // windows are computed, so timed from when they were spooled (T0, March 2025, here).
    let h = latency.snapshot();
    assert_eq!(h.count, 6, "{h:?}");
    assert_eq!(h.buckets.last().map(|b| b.1), Some(0), "{h:?}");
    assert!(h.sum_s > 6.0 * 86_400.0, "{h:?}");
    platform.abort();
}

#[tokio::test]
async fn records_stay_in_the_spool_when_the_platform_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_in(&dir);
    spool
        .append(vec![record(&Record::Aggregate(aggregate(
            0,
            "so2_mg_m3",
            80.0,
        )))])
        .await
        .unwrap();
    let (listener, addr) = loopback_listener().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let platform = tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(p) = next_packet(&mut conn, &mut buf, &Table::hj212_2017()).await {
                    let _ = tx.send(p.qn.unwrap());
                }
            });
        }
    });
    let mut cfg = Hj212TcpConfig::new(addr.to_string(), station(true));
    cfg.over_time = Duration::from_millis(100);
    cfg.re_count = 2;
    cfg.reconnect_min = Duration::from_millis(10);
    let uplink = Hj212TcpUplink::new(cfg, Arc::new(Table::hj212_2017()), spool.clone());
    let mut stats = uplink.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(uplink.run(shutdown.clone()));
    // 1 + ReCount sends on the first connection, then a reconnect.
    tokio::time::timeout(Duration::from_secs(10), async {
        while stats.borrow_and_update().connects < 2 {
            stats.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let mut qns = Vec::new();
    while let Ok(q) = rx.try_recv() {
        qns.push(q);
    }
    assert!(qns.len() >= 3, "{qns:?}");
    assert!(
        qns[..3].iter().all(|q| *q == qns[0]),
        "ReCount resends keep the QN"
    );
    let s = stats.borrow().clone();
    assert_eq!(s.delivered, 0);
    assert!(s.last_error.unwrap().contains("no 9014 after 3 sends"));
    assert_eq!(
        spool.stats().await.unwrap().records,
        1,
        "nothing acked without a 9014"
    );
    platform.abort();
}

/// The history store, as the uplink sees it: the aggregates it was given, grouped by window.
struct MemoryHistory(Vec<Aggregate>);

impl HistorySource for MemoryHistory {
    fn windows(&self, period: Period, begin: Timestamp, end: Timestamp) -> Vec<Vec<Aggregate>> {
        let mut windows: Vec<Vec<Aggregate>> = Vec::new();
        for a in self
            .0
            .iter()
            .filter(|a| a.period == period && a.start >= begin && a.start <= end)
        {
            match windows
                .iter_mut()
                .find(|w| w[0].start == a.start && w[0].subject == a.subject)
            {
                Some(w) => w.push(a.clone()),
                None => windows.push(vec![a.clone()]),
            }
        }
        windows
    }
}

/// A platform request packet, as the platform would frame it.
fn request(cn: u16, qn: &str, pw: &str, cp: &str) -> Vec<u8> {
    let seg =
        format!("QN={qn};ST=31;CN={cn};PW={pw};MN=QHAL0000000000000000GTC1;Flag=5;CP=&&{cp}&&");
    hj212::frame(&seg).unwrap().into_bytes()
}

#[tokio::test]
async fn the_platform_gets_the_same_hours_back_from_a_history_request() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_in(&dir);
    let mut aggs = Vec::new();
    for hour in 0..3 {
        aggs.push(aggregate(hour, "so2_mg_m3", 80.0 + hour as f64));
        aggs.push(aggregate(hour, "nox_mg_m3", 50.0 + hour as f64));
    }
    spool
        .append(
            aggs.iter()
                .map(|a| record(&Record::Aggregate(a.clone())))
                .collect(),
        )
        .await
        .unwrap();

    let (listener, addr) = loopback_listener().await;
    let table = Arc::new(Table::hj212_2017());
    let t = table.clone();
    let platform = tokio::spawn(async move {
        // Connection 1 drops after the first packet.
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        next_packet(&mut conn, &mut buf, &Table::hj212_2017())
            .await
            .unwrap();
        drop(conn);
        // Connection 2: acknowledge the three hours, then ask for them again.
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut live = Vec::new();
        while live.len() < 3 {
            let p = next_packet(&mut conn, &mut buf, &Table::hj212_2017())
                .await
                .unwrap();
            conn.write_all(hj212::data_response(&t, &p).unwrap().as_bytes())
                .await
                .unwrap();
            live.push(p);
        }
        let qn = "20250301120000001";
        let cp = "BeginTime=20250301090000,EndTime=20250301110000";
        conn.write_all(&request(2061, qn, "123456", cp))
            .await
            .unwrap();
        let mut answer = Vec::new();
        loop {
            let p = next_packet(&mut conn, &mut buf, &Table::hj212_2017())
                .await
                .unwrap();
            let last = p.cn == 9012;
            answer.push(p);
            if last {
                break;
            }
        }
        // Time, a refused time set, a wrong password, an empty range.
        let mut others = Vec::new();
        for (cn, qn, pw, cp, replies) in [
            (1011, "20250301120000002", "123456", "", 3),
            (
                1012,
                "20250301120000003",
                "123456",
                "SystemTime=20250301120000",
                1,
            ),
            (2061, "20250301120000004", "654321", cp, 1),
            (
                2061,
                "20250301120000005",
                "123456",
                "BeginTime=20240101000000,EndTime=20240101010000",
                2,
            ),
            (
                2061,
                "20250301120000006",
                "123456",
                "BeginTime=20250301110000,EndTime=2025",
                1,
            ),
        ] {
            conn.write_all(&request(cn, qn, pw, cp)).await.unwrap();
            let mut got = Vec::new();
            for _ in 0..replies {
                got.push(
                    next_packet(&mut conn, &mut buf, &Table::hj212_2017())
                        .await
                        .unwrap(),
                );
            }
            others.push(got);
        }
        (live, answer, others)
    });

    let mut cfg = Hj212TcpConfig::new(addr.to_string(), station(true));
    cfg.over_time = Duration::from_millis(500);
    cfg.reconnect_min = Duration::from_millis(20);
    let uplink = Hj212TcpUplink::new(cfg, table, spool.clone())
        .with_history(Arc::new(MemoryHistory(aggs.clone())));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(uplink.run(shutdown.clone()));
    let (live, answer, others) = tokio::time::timeout(Duration::from_secs(20), platform)
        .await
        .expect("the exchange completes")
        .unwrap();
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(spool.stats().await.unwrap().records, 0);

    // 9011 ready, the three hours with the request's QN, 9012 success.
    assert_eq!(answer.len(), 5, "{answer:?}");
    assert_eq!((answer[0].cn, answer[0].cp.get("QnRtn")), (9011, Some("1")));
    assert_eq!(
        (answer[4].cn, answer[4].cp.get("ExeRtn")),
        (9012, Some("1"))
    );
    for (old, again) in live.iter().zip(&answer[1..4]) {
        assert_eq!(again.cn, 2061);
        assert_eq!(again.qn.as_deref(), Some("20250301120000001"));
        assert!(!again.wants_ack());
        assert_eq!(again.cp, old.cp, "the same hour, the same data area");
    }

    let [time, set, wrong_pw, empty, bad_time] = others.try_into().unwrap();
    assert_eq!(time[0].cp.get("QnRtn"), Some("1"));
    assert_eq!(time[1].cn, 1011);
    let system_time = time[1].cp.get("SystemTime").unwrap();
    assert_eq!(system_time.len(), 14);
    assert!(hj212::parse_time_text(system_time, 480).is_some());
    assert_eq!(time[2].cp.get("ExeRtn"), Some("1"));
    assert_eq!(
        set[0].cp.get("QnRtn"),
        Some("2"),
        "the clock is not set remotely"
    );
    assert_eq!(wrong_pw[0].cp.get("QnRtn"), Some("3"));
    assert_eq!(empty[0].cp.get("QnRtn"), Some("1"));
    assert_eq!(empty[1].cp.get("ExeRtn"), Some("100"), "no data");
    assert_eq!(bad_time[0].cp.get("QnRtn"), Some("2"));
    for reply in [&set[0], &wrong_pw[0], &empty[1]] {
        assert_eq!(reply.st, 91);
    }
}

fn aggregate_of(subject: &str, hour: i64, quantity: &str, avg: f64) -> Aggregate {
    Aggregate {
        subject: Arc::from(subject),
        ..aggregate(hour, quantity, avg)
    }
}

const MN_A: &str = "QHAL0000000000000000GTC1";
const MN_B: &str = "QHAL0000000000000000GTC2";

fn two_stack_config(addr: std::net::SocketAddr) -> Hj212TcpConfig {
    let mut cfg = Hj212TcpConfig::new(addr.to_string(), station(true));
    cfg.mn_by_subject.insert("gtc1_stack".into(), MN_A.into());
    cfg.mn_by_subject.insert("gtc2_stack".into(), MN_B.into());
    cfg.over_time = Duration::from_millis(100);
    cfg.re_count = 1;
    cfg.reconnect_min = Duration::from_millis(20);
    cfg.reconnect_max = Duration::from_millis(200);
    cfg
}

#[tokio::test]
async fn a_stack_the_platform_does_not_answer_does_not_hold_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_in(&dir);
    // Stack 1's hours first (its MN is not registered yet), then stack 2's.
    let mut records = Vec::new();
    for hour in 0..3 {
        records.push(record(&Record::Aggregate(aggregate_of(
            "gtc1_stack",
            hour,
            "so2_mg_m3",
            80.0,
        ))));
    }
    for hour in 0..3 {
        records.push(record(&Record::Aggregate(aggregate_of(
            "gtc2_stack",
            hour,
            "so2_mg_m3",
            60.0,
        ))));
    }
    spool.append(records).await.unwrap();
    let (listener, addr) = loopback_listener().await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let platform = platform(listener, Some(MN_A), Some(seen_tx));

    let mut cfg = two_stack_config(addr);
    cfg.max_wait = Duration::from_millis(300);
    let (uplink, mut events) = uplink_with_events(cfg, &spool, 64);
    let mut stats = uplink.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(uplink.run(shutdown.clone()));

    tokio::time::timeout(Duration::from_secs(10), async {
        while stats.borrow_and_update().delivered < 3 {
            stats.changed().await.unwrap();
        }
    })
    .await
    .expect("stack 2's three hours are delivered while stack 1 goes unanswered");
    let s = stats.borrow().clone();
    assert_eq!(s.delivered, 3, "nothing of stack 1 counts as delivered");
    assert_eq!(
        spool.stats().await.unwrap().records,
        3,
        "stack 1's hours stay in the spool"
    );
    let mut by_mn = std::collections::BTreeMap::<String, usize>::new();
    while let Ok(p) = seen.try_recv() {
        *by_mn.entry(p.mn.clone()).or_default() += 1;
    }
    assert_eq!(by_mn.get(MN_B), Some(&3), "{by_mn:?}");
    assert!(by_mn.get(MN_A).is_some_and(|n| *n >= 2), "{by_mn:?}");
    // Stack 1 has waited longer than max_wait: one start event names its MN.
    let waiting = next_event(&mut events, "hj212_waiting").await;
    assert_eq!(waiting.phase, smeltwatch::model::EventPhase::Start);
    assert!(waiting.subject.ends_with(MN_A), "{}", waiting.subject);
    shutdown.cancel();
    task.await.unwrap().unwrap();
    platform.abort();
}

#[tokio::test]
async fn a_record_that_cannot_be_encoded_is_not_counted_as_having_no_hj212_form() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_in(&dir);
    // Stack 2's MN is not a valid MN: its hour cannot be encoded. Stack 1's can.
    spool
        .append(vec![
            record(&Record::Aggregate(aggregate_of(
                "gtc2_stack",
                0,
                "so2_mg_m3",
                60.0,
            ))),
            record(&Record::Aggregate(aggregate_of(
                "gtc1_stack",
                0,
                "so2_mg_m3",
                80.0,
            ))),
        ])
        .await
        .unwrap();
    let (listener, addr) = loopback_listener().await;
    let (seen_tx, _seen) = mpsc::unbounded_channel();
    let platform = platform(listener, Some("nobody"), Some(seen_tx));
    let mut cfg = two_stack_config(addr);
    cfg.mn_by_subject
        .insert("gtc2_stack".into(), "not;an&mn".into());
    let (uplink, mut events) = uplink_with_events(cfg, &spool, 64);
    let mut stats = uplink.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(uplink.run(shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(10), async {
        while {
            let s = stats.borrow_and_update();
            s.delivered + s.skipped + s.encode_failed < 2
        } {
            stats.changed().await.unwrap();
        }
    })
    .await
    .expect("both records are accounted for");
    let s = stats.borrow().clone();
    assert_eq!(s.delivered, 1);
    assert_eq!(
        s.skipped, 0,
        "an encode failure is not a record without an HJ 212 form"
    );
    assert_eq!(s.encode_failed, 1);
    let Ok(Record::Event(e)) = events.try_recv() else {
        panic!("no event for the record that could not be encoded");
    };
    assert_eq!(&*e.kind, "hj212_encode_error");
    assert!(e.message.contains("MN"), "{}", e.message);
    shutdown.cancel();
    task.await.unwrap().unwrap();
    platform.abort();
}

fn live_batch(device: &str, i: i64, so2_mg_m3: f64) -> Record {
    let ts = Timestamp(T0 + i * 1000);
    Record::Batch(smeltwatch::model::ReadingBatch {
        source: Arc::from("cems"),
        device: Arc::from(device),
        unit_id: 1,
        poll_interval_ms: 1000,
        scheduled: ts,
        readings: vec![smeltwatch::model::Reading {
            point: Arc::from("so2_mg_m3"),
            value: Some(smeltwatch::model::Value::Float(so2_mg_m3)),
            unit: Arc::from("mg/m3"),
            quality: Quality::Good,
            ts,
        }],
    })
}

#[tokio::test]
async fn live_data_of_a_stack_the_platform_does_not_answer_does_not_hold_the_others() {
    // The agent's shape: one poll batch per stack and second, appended as they are acquired,
    // while the platform never answers stack 1's MN.
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_in(&dir);
    let (listener, addr) = loopback_listener().await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let platform = platform(listener, Some(MN_A), Some(seen_tx));

    let mut cfg = two_stack_config(addr);
    cfg.mn_by_subject.insert("gtc1_cems".into(), MN_A.into());
    cfg.mn_by_subject.insert("gtc2_cems".into(), MN_B.into());
    cfg.max_wait = Duration::from_millis(300);
    let (uplink, mut events) = uplink_with_events(cfg, &spool, 1024);
    let mut stats = uplink.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(uplink.run(shutdown.clone()));

    let feeder = {
        let spool = spool.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                spool
                    .append(vec![
                        record(&live_batch("gtc1_cems", i, 80.0)),
                        record(&live_batch("gtc2_cems", i, 60.0)),
                    ])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    feeder.await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while stats.borrow_and_update().delivered < 40 {
            stats.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "stack 2's 40 batches are delivered while stack 1 goes unanswered: {:?}",
            stats.borrow()
        )
    });
    assert_eq!(stats.borrow().delivered, 40, "nothing of stack 1 counts");
    assert_eq!(
        spool.stats().await.unwrap().records,
        40,
        "stack 1's batches wait"
    );
    let waiting = next_event(&mut events, "hj212_waiting").await;
    assert!(waiting.subject.ends_with(MN_A), "{}", waiting.subject);
    let mut b_packets = 0;
    while let Ok(p) = seen.try_recv() {
        if p.mn == MN_B {
            assert_eq!(p.cn, 2011, "live data goes as 2011");
            b_packets += 1;
        }
    }
    assert!(b_packets >= 40, "{b_packets} packets of stack 2");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    platform.abort();
}

#[tokio::test]
async fn without_acknowledgements_written_packets_count_as_unconfirmed_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_in(&dir);
    let records = (0..3)
        .map(|hour| record(&Record::Aggregate(aggregate(hour, "so2_mg_m3", 80.0))))
        .collect();
    spool.append(records).await.unwrap();
    // A platform that reads everything and answers nothing (the station asked for no answer).
    let (listener, addr) = loopback_listener().await;
    let platform = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        while let Some(p) = next_packet(&mut conn, &mut buf, &Table::hj212_2017()).await {
            assert!(!p.wants_ack());
        }
    });
    let cfg = Hj212TcpConfig::new(addr.to_string(), station(false));
    let uplink = Hj212TcpUplink::new(cfg, Arc::new(Table::hj212_2017()), spool.clone());
    let mut stats = uplink.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(uplink.run(shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(20), async {
        while spool.stats().await.unwrap().records > 0 {
            stats.changed().await.unwrap();
        }
    })
    .await
    .expect("the spool empties within 20 s");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    platform.abort();
    let s = stats.borrow().clone();
    assert_eq!(
        (s.delivered, s.unconfirmed),
        (0, 3),
        "written without an answer: unconfirmed, not delivered"
    );
}
