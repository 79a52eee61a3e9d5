//! `GET /api/v1/series` and `/api/v1/series/names` over HTTP, on a live state whose series store
//! was fed directly and whose history store holds the older hours and a day; the bundled uPlot
//! is served and the dashboard loads nothing from outside.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::probe::serve_http;
use common::records::stack_aggregate;
use serde_json::Value as Json;
use smeltwatch::config::HistoryConfig;
use smeltwatch::history::HistoryStore;
use smeltwatch::http::HttpOptions;
use smeltwatch::live::LiveState;
use smeltwatch::model::{Period, Quality, Reading, ReadingBatch, Record, Timestamp, Value};
use smeltwatch::series::{RefTarget, Reference};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const H: i64 = 3_600_000;

/// Status and body of `GET path` (the server answers with a length or closes).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("answer within 10 s")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(!head.to_ascii_lowercase().contains("chunked"), "{head}");
    (status, body.to_owned())
}

async fn json(addr: SocketAddr, path: &str) -> Json {
    let (status, body) = get(addr, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn hour(start: i64, period: Period, avg: f64) -> Record {
    let len = if period == Period::Day { 24 * H } else { H };
    Record::Aggregate(stack_aggregate(
        "so2_mg_m3",
        period,
        start,
        start + len,
        avg,
        5.0,
    ))
}

fn current(ts: i64, ka: f64) -> ReadingBatch {
    ReadingBatch {
        source: "potline1".into(),
        device: "rectifier".into(),
        unit_id: 1,
        poll_interval_ms: 1000,
        scheduled: Timestamp(ts),
        readings: vec![Reading {
            point: "line_current_ka".into(),
            value: Some(Value::Float(ka)),
            unit: "kA".into(),
            quality: Quality::Good,
            ts: Timestamp(ts),
        }],
    }
}

#[tokio::test]
async fn series_are_answered_from_memory_and_history_downsampled_with_units_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::now().unix_ms();
    let this_hour = now / H * H;
    let history = Arc::new(
        HistoryStore::open(&HistoryConfig {
            path: dir.path().join("history.db"),
            minute_retention: Duration::from_secs(3600),
            hour_retention: Duration::from_secs(86_400),
            day_retention: Duration::from_secs(30 * 86_400),
        })
        .unwrap(),
    );
    // Hours -3 and -2 only in the history store; hour -1 in memory (and in history too, as the
    // fan-out stores it): the answer has each hour once.
    history
        .store(
            &[
                hour(this_hour - 3 * H, Period::Hour, 150.0),
                hour(this_hour - 2 * H, Period::Hour, 230.0),
                hour(this_hour - H, Period::Hour, 180.0),
                hour(this_hour / (24 * H) * (24 * H) - 24 * H, Period::Day, 170.0),
            ],
            &[],
            Timestamp(now),
        )
        .unwrap();

    let live = Arc::new(LiveState::default());
    live.series.set_history(Some(history));
    live.series.set_references(vec![(
        RefTarget::Window {
            subject: "gtc1_stack".into(),
            quantity: "so2_mg_m3".into(),
        },
        Reference {
            label: "limit".into(),
            value: 200.0,
        },
    )]);
    live.series
        .record(&[hour(this_hour - H, Period::Hour, 180.0)]);
    // Half an hour of line current, one reading every 2 s: 180 buckets of 10 s.
    let batches: Vec<ReadingBatch> = (0..900)
        .map(|i| current(now - 1_800_000 + i * 2_000, 400.0 + (i % 10) as f64))
        .collect();
    live.series.record_batches(&batches);

    let (addr, stop, server) = serve_http(live.clone(), HttpOptions::default()).await;

    // Downsampled: 180 (or 181) buckets into at most 50 points of 4 buckets.
    let a = json(
        addr,
        "/api/v1/series?name=sum:line_current_ka&from=-1h&max_points=50",
    )
    .await;
    let s = &a["series"][0];
    assert_eq!(s["name"], "sum:line_current_ka");
    assert_eq!(s["unit"], "kA");
    assert_eq!(s["class"], "trend");
    assert_eq!(s["merged"], 4);
    assert_eq!(s["resolution_s"], 40.0);
    let t = s["t"].as_array().unwrap();
    assert!((45..=46).contains(&t.len()), "{}", t.len());
    for col in ["v", "min", "max", "q"] {
        assert_eq!(s[col].as_array().unwrap().len(), t.len(), "{col}");
    }
    assert_eq!(s["q"][0], "good");
    let (lo, hi) = (s["min"][1].as_f64().unwrap(), s["max"][1].as_f64().unwrap());
    assert!(lo >= 400.0 && hi <= 409.0 && lo < hi, "{lo} {hi}");
    // A time range: the last 5 minutes only.
    let a = json(addr, "/api/v1/series?name=sum:line_current_ka&from=-5m").await;
    let t = a["series"][0]["t"].as_array().unwrap();
    assert!((30..=32).contains(&t.len()), "{}", t.len());
    assert!(t[0].as_i64().unwrap() >= now - 310_000);

    // Hours: two from history, one from memory, with the limit.
    let a = json(
        addr,
        "/api/v1/series?name=hour:gtc1_stack/so2_mg_m3&from=-4h",
    )
    .await;
    let s = &a["series"][0];
    assert_eq!(s["unit"], "mg/m3");
    assert_eq!(s["from_history"], 2);
    assert_eq!(s["v"], serde_json::json!([150.0, 230.0, 180.0]));
    assert_eq!(s["references"][0]["value"], 200.0);
    // Days: from the history store only.
    let a = json(
        addr,
        "/api/v1/series?name=day:gtc1_stack/so2_mg_m3&from=-3d",
    )
    .await;
    assert_eq!(a["series"][0]["v"], serde_json::json!([170.0]));
    assert_eq!(a["series"][0]["class"], "day");
    // A series without data yet is answered empty, not refused.
    let a = json(addr, "/api/v1/series?name=mean:cell_voltage_v").await;
    assert_eq!(a["series"][0]["t"], serde_json::json!([]));
    assert_eq!(a["series"][0]["unit"], Json::Null);

    // Bad queries: 400 with a message.
    for (q, says) in [
        ("", "name is required"),
        ("?name=volts", "has no kind"),
        (
            "?name=sum:line_current_ka&from=yesterday",
            "from=\\\"yesterday\\\"",
        ),
        ("?name=sum:line_current_ka&max_points=0", "max_points"),
        ("?name=sum:line_current_ka&step=10s", "unknown parameter"),
    ] {
        let (status, body) = get(addr, &format!("/api/v1/series{q}")).await;
        assert_eq!(status, 400, "{q}: {body}");
        let e: Json = serde_json::from_str(&body).unwrap();
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains(says.replace('\\', "").as_str()),
            "{q}: {body}"
        );
    }

    let names = json(addr, "/api/v1/series/names").await;
    let listed: Vec<&str> = names["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        vec![
            "reading:rectifier/line_current_ka",
            "sum:line_current_ka",
            "hour:gtc1_stack/so2_mg_m3"
        ]
    );
    assert_eq!(names["refused"], 0);
    let (_, scrape) = get(addr, "/metrics").await;
    assert!(scrape.contains("\nsmeltwatch_series 3\n"), "{scrape}");
    assert!(scrape.contains("\nsmeltwatch_series_refused_total 0\n"));

    // uPlot comes from the binary; the page names no outside address.
    let (status, js) = get(addr, "/vendor/uPlot.iife.min.js").await;
    assert_eq!(status, 200);
    assert!(js.contains("uPlot") && js.len() > 40_000);
    let (status, css) = get(addr, "/vendor/uPlot.min.css").await;
    assert_eq!(status, 200);
    assert!(css.contains(".uplot"));
    let (_, page) = get(addr, "/").await;
    assert!(page.contains("src=\"vendor/uPlot.iife.min.js\""));
    for outside in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(!page.contains(outside), "{outside}");
    }

    stop.cancel();
    server.await.unwrap().unwrap();
}
