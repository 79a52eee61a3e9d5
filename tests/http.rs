//! The HTTP side doors against a running agent: simulator devices → agent → Mosquitto, with
//! `http::serve` on the agent's live state. Every route is requested with a plain HTTP/1.1 client
//! over a `TcpStream`; `/metrics` is parsed with `prometheus-parse`.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::agent;
use common::mosquitto::Mosquitto;
use common::plant::{
    RECTIFIER_DEVICE, device, f32_words, mqtt_uplink_toml, polled_source_toml, pots_toml, serve,
};
use common::probe::serve_http;
use prometheus_parse::{Scrape, Value as PromValue};
use serde_json::Value as Json;
use smeltwatch::acquisition::PollerStats;
use smeltwatch::config::{self, Secret};
use smeltwatch::http::{self, HttpOptions};
use smeltwatch::live::LiveState;
use smeltwatch::model::{
    Event, EventPhase, Metric, MetricBatch, Quality, Record, Timestamp, Value,
};
use smeltwatch::simulator::UnitMap;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "pot-room-token";

/// A rectifier at 400.5 kA, a healthy pot at 4.05 V, a pot in anode effect at 8.75 V and a pot
/// whose voltage register holds NaN.
async fn plant(shutdown: &CancellationToken) -> u16 {
    let rectifier = device("rectifier");
    rectifier.set_input(0, &f32_words(400.5));
    let pot1 = device("pot_001");
    pot1.set_input(0, &f32_words(4.05));
    let pot2 = device("pot_002");
    pot2.set_input(0, &f32_words(f32::NAN));
    let pot3 = device("pot_003");
    pot3.set_input(0, &f32_words(8.75));
    serve(
        UnitMap::from([(1, rectifier), (10, pot1), (11, pot2), (12, pot3)]),
        shutdown,
    )
    .await
}

fn agent_config(modbus_port: u16, mqtt_port: u16, state_dir: &Path) -> String {
    format!(
        r#"
site = "http"
state_dir = "{state}"
{source}{RECTIFIER_DEVICE}{pots}
{uplink}"#,
        source = polled_source_toml("line1", modbus_port, "200ms"),
        pots = pots_toml(3),
        uplink = mqtt_uplink_toml("plant", mqtt_port, &["live"]),
        state = state_dir.display()
    )
}

/// A response: status, lower-cased header names with values, body (de-chunked).
struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

async fn request(addr: SocketAddr, path: &str, auth: Option<&str>) -> Resp {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header/body separator");
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn sample<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a PromValue> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| &s.value)
}

fn number(v: Option<&PromValue>) -> f64 {
    match v {
        Some(PromValue::Gauge(x)) | Some(PromValue::Counter(x)) | Some(PromValue::Untyped(x)) => *x,
        other => panic!("expected a gauge or counter, got {other:?}"),
    }
}

/// Poll `path` until `done` holds for its JSON body (the agent fills its state asynchronously).
async fn wait_json(addr: SocketAddr, path: &str, done: impl Fn(&Json) -> bool) -> Json {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = request(addr, path, Some(&bearer())).await;
        let json: Json = serde_json::from_str(&r.body).unwrap_or(Json::Null);
        if done(&json) {
            return json;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never satisfied the condition; last answer {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kwh_metric() -> Record {
    Record::Metrics(MetricBatch {
        calc: "potline".into(),
        ts: Timestamp::now(),
        metrics: vec![Metric {
            name: "dc_energy_kwh_per_t".into(),
            value: Some(13_050.0),
            unit: "kWh/t".into(),
            quality: Quality::Good,
            ts: Timestamp::now(),
            labels: vec![("line".into(), "potline1".into())],
        }],
    })
}

fn anode_effect() -> Record {
    Record::Event(Event {
        kind: "anode_effect".into(),
        subject: "potline1/pot_003".into(),
        phase: EventPhase::Start,
        ts: Timestamp::now(),
        attributes: vec![("peak_voltage_v".into(), Value::Float(8.75))],
        message: "anode effect started on pot_003 at 8.75 V".into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_serves_the_running_agent() {
    let broker = Mosquitto::start();
    let shutdown = CancellationToken::new();
    let modbus_port = plant(&shutdown).await;
    let state = tempfile::tempdir().unwrap();
    let toml = agent_config(modbus_port, broker.port, state.path());
    let agent = agent::start_inline(&toml, "http.toml").await;

    let (addr, http_stop, server) = serve_http(
        agent.live.clone(),
        HttpOptions {
            token: Some(Secret(TOKEN.to_owned())),
            ..Default::default()
        },
    )
    .await;

    // /healthz needs no token; once it answers, the record collector is subscribed.
    let health = request(addr, "/healthz", None).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    agent.live.records.send(kwh_metric());
    agent.live.records.send(anode_effect());
    // What an agent with a [[calc.stacks]] entry knows at start (this one has no [calc]).
    agent
        .live
        .stack_limits
        .set(vec![smeltwatch::calc::limits::StackLimit {
            stack: "gtc1_stack".into(),
            pollutant: "so2".into(),
            point: "so2_mg_m3".into(),
            limit_mg_m3: 200.0,
        }])
        .unwrap();

    // The token: every other route refuses a request without it, or with a wrong one.
    for path in [
        "/",
        "/metrics",
        "/readyz",
        "/api/v1/snapshot",
        "/api/v1/stream",
    ] {
        let r = request(addr, path, None).await;
        assert_eq!(r.status, 401, "{path} without a token");
        assert!(r.headers["www-authenticate"].starts_with("Basic"), "{path}");
        let r = request(addr, path, Some("Bearer wrong-token")).await;
        assert_eq!(r.status, 401, "{path} with a wrong token");
    }
    // HTTP Basic with the token as password ("operator:pot-room-token"), as a browser sends it.
    let r = request(
        addr,
        "/healthz",
        Some("Basic b3BlcmF0b3I6cG90LXJvb20tdG9rZW4="),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = request(addr, "/", Some("Basic b3BlcmF0b3I6cG90LXJvb20tdG9rZW4=")).await;
    assert_eq!(r.status, 200);

    // /readyz: ready once the source polled and the uplink connected.
    let ready = wait_json(addr, "/readyz", |j| j["ready"] == true).await;
    assert_eq!(ready["reasons"], serde_json::json!([]));
    let r = request(addr, "/readyz", Some(&bearer())).await;
    assert_eq!(r.status, 200);

    // /api/v1/snapshot: every point, the uplink with its spool, the computed metric and the event.
    let snap = wait_json(addr, "/api/v1/snapshot", |j| {
        j["points"].as_array().is_some_and(|p| p.len() == 4)
            && j["events"].as_array().is_some_and(|e| !e.is_empty())
            && j["uplinks"][0]["state"] == "connected"
    })
    .await;
    let point = |device: &str| {
        snap["points"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["device"] == device)
            .unwrap_or_else(|| panic!("no {device} in {snap}"))
            .clone()
    };
    let current = point("rectifier");
    assert_eq!(current["point"], "line_current_ka");
    assert_eq!(current["value"].as_f64(), Some(400.5));
    assert_eq!(
        (&current["unit"], &current["quality"]),
        (&"kA".into(), &"good".into())
    );
    assert!(current["ts_ms"].as_i64().unwrap() > 0);
    let pot1 = point("pot_001");
    assert!((pot1["value"].as_f64().unwrap() - 4.05).abs() < 1e-6);
    assert_eq!(pot1["unit"], "V");
    let pot2 = point("pot_002");
    assert!(pot2["value"].is_null(), "NaN is never a number: {pot2}");
    assert_eq!(pot2["quality"], "out_of_range");
    assert_eq!(snap["uplinks"][0]["name"], "plant");
    assert!(snap["uplinks"][0]["spool"]["records"].is_u64());
    assert_eq!(snap["sources"][0]["name"], "line1");
    assert!(snap["sources"][0]["cycles"].as_u64().unwrap() > 0);
    assert_eq!(snap["metrics"][0]["name"], "dc_energy_kwh_per_t");
    assert_eq!(snap["metrics"][0]["value"], 13_050.0);
    assert_eq!(snap["metrics"][0]["labels"]["line"], "potline1");
    assert_eq!(snap["events"][0]["subject"], "potline1/pot_003");
    assert_eq!(snap["events"][0]["phase"], "start");

    // /metrics: parsed by a real parser, with specific samples.
    let r = request(addr, "/metrics", Some(&bearer())).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].starts_with("text/plain; version=0.0.4"));
    let scrape = Scrape::parse(r.body.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition");
    assert_eq!(
        number(sample(
            &scrape,
            "smeltwatch_point_value",
            &[
                ("device", "rectifier"),
                ("point", "line_current_ka"),
                ("unit", "kA")
            ]
        )),
        400.5
    );
    let v = number(sample(
        &scrape,
        "smeltwatch_point_value",
        &[("device", "pot_003"), ("point", "cell_voltage_v")],
    ));
    assert!((v - 8.75).abs() < 1e-6);
    assert!(
        sample(&scrape, "smeltwatch_point_value", &[("device", "pot_002")]).is_none(),
        "a point without a finite value has no value series"
    );
    assert_eq!(
        number(sample(
            &scrape,
            "smeltwatch_point_quality",
            &[("device", "pot_002"), ("quality", "out_of_range")]
        )),
        1.0
    );
    assert!(matches!(
        sample(&scrape, "smeltwatch_source_cycles_total", &[("source", "line1")]),
        Some(PromValue::Counter(n)) if *n >= 1.0
    ));
    assert!(
        number(sample(
            &scrape,
            "smeltwatch_source_requests_total",
            &[("source", "line1")]
        )) >= 1.0
    );
    assert!(
        number(sample(
            &scrape,
            "smeltwatch_source_readings_total",
            &[("source", "line1"), ("quality", "good")]
        )) >= 3.0
    );
    assert_eq!(
        number(sample(
            &scrape,
            "smeltwatch_source_comm_failures_total",
            &[("source", "line1")]
        )),
        0.0
    );
    // The request duration histogram: buckets from 1 ms to 60 s, as many observations as
    // requests (read when the scrape was taken; the poller goes on between the two lines).
    let line_value = |prefix: &str| -> f64 {
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix}in\n{}", r.body))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(
        r.body
            .contains("# TYPE smeltwatch_source_request_duration_seconds histogram"),
        "{}",
        r.body
    );
    let requests = line_value("smeltwatch_source_requests_total{source=\"line1\"} ");
    let observed =
        line_value("smeltwatch_source_request_duration_seconds_count{source=\"line1\"} ");
    assert!(
        observed >= 1.0 && observed <= requests,
        "{observed} of {requests}"
    );
    assert_eq!(
        line_value(
            "smeltwatch_source_request_duration_seconds_bucket{source=\"line1\",le=\"+Inf\"} "
        ),
        observed
    );
    assert!(line_value("smeltwatch_source_request_duration_seconds_sum{source=\"line1\"} ") > 0.0);
    for le in ["0.001", "0.01", "1", "60"] {
        assert!(
            r.body.contains(&format!(
                "smeltwatch_source_request_duration_seconds_bucket{{source=\"line1\",le=\"{le}\"}}"
            )),
            "bucket {le}"
        );
    }
    // Publish latency per uplink: the family is there from the start, counting once records
    // are acknowledged.
    assert!(
        r.body.contains(
            "smeltwatch_uplink_publish_latency_seconds_bucket{uplink=\"plant\",le=\"0.001\"}"
        ),
        "{}",
        r.body
    );
    assert_eq!(
        number(sample(
            &scrape,
            "smeltwatch_uplink_state",
            &[("uplink", "plant"), ("state", "connected")]
        )),
        1.0
    );
    assert_eq!(
        number(sample(
            &scrape,
            "smeltwatch_uplink_state",
            &[("uplink", "plant"), ("state", "disconnected")]
        )),
        0.0
    );
    assert!(
        number(sample(
            &scrape,
            "smeltwatch_uplink_connects_total",
            &[("uplink", "plant")]
        )) >= 1.0
    );
    assert!(sample(&scrape, "smeltwatch_spool_bytes", &[("uplink", "plant")]).is_some());
    for reason in ["budget", "disk_full", "max_age"] {
        assert_eq!(
            number(sample(
                &scrape,
                "smeltwatch_spool_drops_total",
                &[("uplink", "plant"), ("reason", reason)]
            )),
            0.0,
            "drops by {reason}"
        );
    }
    assert_eq!(
        number(sample(
            &scrape,
            "smeltwatch_calc_value",
            &[
                ("calc", "potline"),
                ("metric", "dc_energy_kwh_per_t"),
                ("line", "potline1")
            ]
        )),
        13_050.0
    );
    assert_eq!(
        number(sample(
            &scrape,
            "smeltwatch_events_total",
            &[("kind", "anode_effect"), ("phase", "start")]
        )),
        1.0
    );
    assert!(
        scrape
            .docs
            .get("smeltwatch_point_value")
            .is_some_and(|d| !d.is_empty()),
        "HELP lines are rendered"
    );

    // Every series the Grafana dashboard queries is one this scrape renders.
    let grafana = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/smeltwatch.json"),
    )
    .unwrap();
    let rendered: std::collections::BTreeSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    let mut queried = std::collections::BTreeSet::new();
    for (i, _) in grafana.match_indices("smeltwatch_") {
        let name: String = grafana[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        queried.insert(name);
    }
    queried.retain(|n| n.ends_with(|c: char| c.is_ascii_lowercase()) && n.contains('_'));
    assert!(queried.len() >= 15, "{queried:?}");
    for name in &queried {
        // A histogram is parsed under its family name; the dashboard queries its `_bucket`s.
        let family = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            rendered.contains(name.as_str()) || rendered.contains(family),
            "the Grafana dashboard queries {name}, which /metrics does not render"
        );
    }

    // The limit lines of the concentration panel come from a series /metrics renders (the query
    // named calc metrics `*_limit_mg_m3` that no calculator produces).
    assert!(grafana.contains("smeltwatch_stack_limit_mg_m3{"));
    assert!(
        !grafana.contains("_limit_mg_m3\\\""),
        "no query of calc metrics named *_limit_mg_m3"
    );
    assert_eq!(
        number(sample(
            &scrape,
            "smeltwatch_stack_limit_mg_m3",
            &[("stack", "gtc1_stack"), ("pollutant", "so2")]
        )),
        200.0
    );

    // The dashboard: one page whose only assets are the ones compiled into the binary
    // (`/vendor/`, behind the same token), nothing from outside.
    let page = request(addr, "/", Some(&bearer())).await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"].starts_with("text/html"));
    assert!(page.body.contains("id=\"heatmap\"") && page.body.contains("api/v1/snapshot"));
    for external in ["@import", "url(http", "url(//"] {
        assert!(!page.body.contains(external), "external asset: {external}");
    }
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for (i, _) in page.body.match_indices(attr) {
            let rest = &page.body[i + attr.len()..];
            assets.push(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    assert_eq!(assets.len(), 2, "{assets:?}");
    for asset in assets {
        assert!(asset.starts_with("vendor/"), "external asset: {asset}");
        let served = request(addr, &format!("/{asset}"), Some(&bearer())).await;
        assert_eq!(served.status, 200, "{asset}");
        assert!(request(addr, &format!("/{asset}"), None).await.status == 401);
    }

    // /api/v1/stream: a full snapshot first, then a delta a second later.
    let events = read_sse(addr, 2).await;
    assert_eq!(events[0].0, "snapshot");
    let first: Json = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(first["points"].as_array().unwrap().len(), 4);
    assert_eq!(events[1].0, "delta");
    let delta: Json = serde_json::from_str(&events[1].1).unwrap();
    assert!(delta["ts_ms"].as_i64().unwrap() > first["ts_ms"].as_i64().unwrap());
    assert_eq!(delta["uplinks"][0]["name"], "plant");
    assert!(
        !delta["points"].as_array().unwrap().is_empty(),
        "points are polled every 200 ms, so a one-second delta has fresh ones"
    );

    // Shutdown ends the server even while an event stream is open.
    let mut open_stream = open_event_stream(addr).await;
    let mut first_bytes = [0u8; 16];
    open_stream.read_exact(&mut first_bytes).await.unwrap();
    http_stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("http::serve returns after shutdown with a stream open")
        .unwrap()
        .unwrap();

    agent.shutdown().await;
    shutdown.cancel();
}

/// A connection that has asked for `/api/v1/stream`, with the token.
async fn open_event_stream(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /api/v1/stream HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\r\n",
                bearer()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    stream
}

/// Read `n` server-sent events (name, data) from `/api/v1/stream`.
async fn read_sse(addr: SocketAddr, n: usize) -> Vec<(String, String)> {
    // The write half stays open as long as the events are read.
    let (rd, _wr) = open_event_stream(addr).await.into_split();
    let mut lines = BufReader::new(rd).lines();
    let mut events = Vec::new();
    let (mut name, mut data) = (String::new(), String::new());
    let read = async {
        let status = lines.next_line().await.unwrap().unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        while let Some(line) = lines.next_line().await.unwrap() {
            // Chunk-size lines of the chunked encoding carry no colon and are skipped; an SSE
            // line never spans two chunks here because axum writes each event in one frame.
            if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            } else if line.is_empty() && !data.is_empty() {
                events.push((std::mem::take(&mut name), std::mem::take(&mut data)));
                if events.len() == n {
                    break;
                }
            } else if line.to_ascii_lowercase().starts_with("content-type") {
                assert!(line.contains("text/event-stream"), "{line}");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("events within 15 s");
    events
}

#[tokio::test]
async fn not_ready_before_any_poll_cycle_and_open_without_a_token() {
    let live = Arc::new(LiveState::default());
    live.pollers
        .lock()
        .unwrap()
        .push(("line1".into(), Arc::new(PollerStats::default())));
    let (addr, stop, server) = serve_http(live.clone(), HttpOptions::default()).await;

    let r = request(addr, "/readyz", None).await;
    assert_eq!(r.status, 503);
    let body: Json = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["ready"], false);
    assert_eq!(
        body["reasons"],
        serde_json::json!(["source \"line1\" has not completed a poll cycle"])
    );

    // A cycle completed: ready (no uplink to wait for).
    live.pollers.lock().unwrap()[0]
        .1
        .cycles
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let r = request(addr, "/readyz", None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, r#"{"ready":true,"reasons":[]}"#)
    );

    // Without a token every route is open, and an empty state is still valid exposition.
    let r = request(addr, "/metrics", None).await;
    assert_eq!(r.status, 200);
    let scrape = Scrape::parse(r.body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert_eq!(
        number(sample(
            &scrape,
            "smeltwatch_source_cycles_total",
            &[("source", "line1")]
        )),
        1.0
    );
    assert!(sample(&scrape, "smeltwatch_point_value", &[]).is_none());
    let r = request(addr, "/api/v1/snapshot", None).await;
    assert_eq!(r.status, 200);
    let snap: Json = serde_json::from_str(&r.body).unwrap();
    assert_eq!(snap["points"], serde_json::json!([]));
    assert_eq!(snap["uplinks"], serde_json::json!([]));

    stop.cancel();
    server.await.unwrap().unwrap();
}

/// `http::serve` on an empty agent state with `opts`: its address, its stop token and its task.
async fn bare_server(
    opts: HttpOptions,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), http::HttpError>>,
) {
    serve_http(Arc::new(LiveState::default()), opts).await
}

async fn stop_server(
    stop: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), http::HttpError>>,
) {
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("http::serve returns after shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_slow_to_send_its_request_head_is_disconnected() {
    let (addr, stop, server) = bare_server(HttpOptions {
        header_read_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    // Half a request line, then nothing; and a connection that sends nothing at all.
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /heal").await.unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    for (name, conn) in [("half a request line", &mut half), ("silent", &mut silent)] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{name}: the server still holds the connection after 5 s"));
        // Closed (end of stream, or a reset), without a response.
        assert!(matches!(read, Ok(0) | Err(_)), "{name}: {read:?}");
    }

    // Both are counted.
    let r = request(addr, "/metrics", None).await;
    let scrape = Scrape::parse(r.body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert_eq!(
        number(sample(
            &scrape,
            "smeltwatch_http_header_timeouts_total",
            &[]
        )),
        2.0
    );
    assert_eq!(
        number(sample(&scrape, "smeltwatch_http_connections_max", &[])),
        64.0
    );

    // The timeout bounds the request head only: an event stream outlives it (its second event
    // comes a second after the first).
    let events = read_sse(addr, 2).await;
    assert_eq!(
        (events[0].0.as_str(), events[1].0.as_str()),
        ("snapshot", "delta")
    );
    // And a request sent in time is answered.
    let health = request(addr, "/healthz", None).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    stop_server(stop, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_ends() {
    let (addr, stop, server) = bare_server(HttpOptions {
        max_connections: 2,
        ..Default::default()
    })
    .await;
    // Two idle connections take both slots (the listen backlog is accepted in order).
    let idle1 = TcpStream::connect(addr).await.unwrap();
    let idle2 = TcpStream::connect(addr).await.unwrap();
    // A third client sends a complete request...
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // ...and is not answered while both slots are held. An answer that does not come can only
    // be watched for over a window; a server without the cap answers within milliseconds.
    let mut answer = Vec::new();
    let early =
        tokio::time::timeout(Duration::from_millis(500), third.read_to_end(&mut answer)).await;
    assert!(
        early.is_err() && answer.is_empty(),
        "answered beyond the cap of 2 connections: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // One idle connection ends: the third is served.
    drop(idle1);
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer))
        .await
        .expect("served once a slot is free")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok\n"), "{answer}");

    drop(idle2);
    stop_server(stop, server).await;
}

#[test]
fn http_section_defaults_to_loopback_and_reads_the_token_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "  s3cret\n").unwrap();
    let base = "site = \"http\"\n";
    let cfg = config::parse(base, &dir.path().join("a.toml")).unwrap();
    assert!(cfg.http.is_none());

    let cfg = config::parse(&format!("{base}[http]\n"), &dir.path().join("a.toml")).unwrap();
    let http = cfg.http.unwrap();
    assert_eq!(http.listen, "127.0.0.1:9187".parse().unwrap());
    assert!(http.token.is_none());

    // token_file is relative to the configuration file; surrounding whitespace is not the token.
    let cfg = config::parse(
        &format!("{base}[http]\nlisten = \"[::1]:8080\"\ntoken_file = \"token\"\n"),
        &dir.path().join("a.toml"),
    )
    .unwrap();
    let http = cfg.http.unwrap();
    assert_eq!(http.listen, "[::1]:8080".parse().unwrap());
    assert_eq!(http.token.unwrap().0, "s3cret");
}

#[test]
fn http_section_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty"), "\n").unwrap();
    let path = dir.path().join("a.toml");
    let cases = [
        (
            "[http]\nlisten = \"localhost:9187\"\n",
            "http.listen: invalid listen address `localhost:9187`",
        ),
        (
            "[http]\nlisten = \"127.0.0.1\"\n",
            "http.listen: invalid listen address",
        ),
        (
            "[http]\ntoken_file = \"missing\"\n",
            "http.token_file: cannot read token file",
        ),
        (
            "[http]\ntoken_file = \"empty\"\n",
            "http.token_file: token file",
        ),
        ("[http]\nport = 1\n", "unknown field `port`"),
    ];
    for (section, expected) in cases {
        let err = config::parse(&format!("site = \"http\"\n{section}"), &path)
            .expect_err(section)
            .to_string();
        assert!(err.contains(expected), "{section:?}: {err}");
    }
}
