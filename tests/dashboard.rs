//! The dashboard in headless Chromium against a running agent (simulator → agent with its
//! calculators → Mosquitto, `http::serve` on its live state): the page shows the cells with the
//! anode effect marked, the line-current KPI and the events list, keeps polling, follows a changed
//! value; its trends are drawn with the bundled uPlot (line current and mean cell voltage, the
//! anode-effect cell's voltage, kWh/t of the day against the grade bounds, the stack's hourly
//! averages against the limit, older hours from the history store), the stack bar over its limit
//! is red, and the DC/AC kWh/t tiles show the day's running figure after its first minute. The
//! checks read the DOM (`--dump-dom`); a screenshot is written as a test artifact
//! (`dashboard.png` in cargo's integration-test temp directory; docs/img/dashboard.png is one).
//!
//! Skipped with a message when `chromium` is not installed, unless `SMELTWATCH_REQUIRE_PEERS` is
//! set.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::mosquitto::Mosquitto;
use common::plant::{RECTIFIER_DEVICE, device, f32_words, polled_source_toml, pots_toml, serve};
use common::probe::serve_http;
use common::records::stack_aggregate;
use smeltwatch::config;
use smeltwatch::history::HistoryStore;
use smeltwatch::http::HttpOptions;
use smeltwatch::model::{
    Event, EventPhase, Metric, MetricBatch, Period, Quality, Record, Timestamp, Value,
};
use smeltwatch::series::Selector;
use smeltwatch::simulator::UnitMap;
use tokio_util::sync::CancellationToken;

fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return Some(PathBuf::from(name));
        }
    }
    common::peers::missing("chromium (Debian package `chromium`)")
}

fn rectifier_of(units: &UnitMap) -> smeltwatch::simulator::Device {
    units[&1].clone()
}

fn agent_config(modbus_port: u16, mqtt_port: u16, state_dir: &Path) -> String {
    format!(
        r#"
site = "dash"
state_dir = "{state}"
{source}{RECTIFIER_DEVICE}
[sources.devices.points.ac_energy_kwh]
area = "input"
address = 2
type = "u32"
unit = "kWh"

{pots}
[[sources.devices]]
name = "gtc1_stack"
unit_id = 40
[sources.devices.points.so2_mg_m3]
area = "input"
address = 0
type = "f32"
unit = "mg/m3"
[sources.devices.points.flow_m3h]
area = "input"
address = 2
type = "f32"
unit = "m3/h"

[[uplinks]]
name = "plant"
type = "mqtt"
broker = "mqtt://127.0.0.1:{mqtt_port}"
reconnect_min = "100ms"
reconnect_max = "1s"
streams = ["live"]

[calc]
coefficients = "cn-2025"
utc_offset_hours = 0

[[calc.potlines]]
name = "potline1"
rectifier = "rectifier"
pots = "pot_*"
current_efficiency = 0.935
counter_bits = 32

[[calc.stacks]]
name = "gtc1_stack"
device = "gtc1_stack"
limits = "gb25465_2010_al_pot_gas"
limit_class = "general"
pollutants = {{ so2 = "so2_mg_m3" }}
flow_point = "flow_m3h"
"#,
        source = polled_source_toml("potline1", modbus_port, "200ms"),
        pots = pots_toml(12),
        state = state_dir.display()
    )
}

/// Run headless Chromium on `url` and return the DOM after the page's scripts ran for
/// `budget_ms` of virtual time; write a screenshot to `screenshot` if given.
fn run_chromium(exe: &Path, url: &str, budget_ms: u32, screenshot: Option<&Path>) -> String {
    // The screenshot shows the whole page: KPIs, trends, cells, stacks.
    let window = if screenshot.is_some() {
        "--window-size=1600,1450"
    } else {
        "--window-size=1600,1100"
    };
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        window,
        &format!("--virtual-time-budget={budget_ms}"),
        &format!("--user-data-dir={}", profile.path().display()),
    ]);
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn attr<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    let start = dom.find(&format!("{name}=\""))? + name.len() + 2;
    Some(&dom[start..start + dom[start..].find('"')?])
}

/// The opening tag of the element with `id`.
fn tag<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let start = dom[..at].rfind('<').unwrap();
    &dom[start..at + dom[at..].find('>').unwrap()]
}

/// The inner HTML of the `<div>` with `id` (up to its matching close tag).
fn element<'a>(dom: &'a str, id: &str) -> &'a str {
    let t = tag(dom, id);
    let open = dom.find(t).unwrap() + t.len() + 1;
    let mut depth = 1;
    let mut i = open;
    while depth > 0 {
        let next_open = dom[i..].find("<div").map(|j| i + j);
        let next_close = i + dom[i..].find("</div>").unwrap();
        match next_open {
            Some(o) if o < next_close => {
                depth += 1;
                i = o + 4;
            }
            _ => {
                depth -= 1;
                i = next_close + 6;
            }
        }
    }
    &dom[open..i - 6]
}

fn data_attr(dom: &str, id: &str, name: &str) -> u64 {
    attr(tag(dom, id), &format!("data-{name}"))
        .unwrap_or_else(|| panic!("#{id} has no data-{name}: {}", tag(dom, id)))
        .parse()
        .unwrap()
}

/// Three closed hours of the stack before the agent starts, the middle one over the 200 mg/m³
/// limit: the hourly chart has them from the history store.
fn earlier_hours(cfg: &config::Config) {
    let store = HistoryStore::open(&cfg.history).unwrap();
    let h = 3_600_000;
    let this_hour = Timestamp::now().unix_ms() / h * h;
    let hours: Vec<Record> = [(3, 150.0), (2, 230.0), (1, 180.0)]
        .into_iter()
        .map(|(back, avg)| {
            Record::Aggregate(stack_aggregate(
                "so2_mg_m3",
                Period::Hour,
                this_hour - back * h,
                this_hour - (back - 1) * h,
                avg,
                10.0,
            ))
        })
        .collect();
    store.store(&hours, &[], Timestamp::now()).unwrap();
}

fn inner_text<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let open = start + dom[start..].find('>').unwrap() + 1;
    &dom[open..open + dom[open..].find('<').unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_cells_kpis_and_events_and_follows_changes() {
    let Some(chromium) = chromium() else { return };
    let broker = Mosquitto::start();
    let shutdown = CancellationToken::new();

    let rectifier = device("rectifier");
    rectifier.set_input(0, &f32_words(400.5));
    rectifier.set_input(2, &[15, 16960]); // 1,000,000 kWh
    let mut units = UnitMap::from([(1, rectifier)]);
    let mut pots = Vec::new();
    for i in 0..12u8 {
        let pot = device(&format!("pot_{:03}", i + 1));
        // pot_007 is in anode effect; the others spread over the normal band.
        let v = if i == 6 {
            9.2
        } else {
            4.0 + 0.05 * f32::from(i)
        };
        pot.set_input(0, &f32_words(v));
        pots.push(pot.clone());
        units.insert(10 + i, pot);
    }
    // Over the 200 mg/m³ limit of GB 25465-2010.
    let stack = device("gtc1_stack");
    stack.set_input(0, &f32_words(260.0));
    stack.set_input(2, &f32_words(1.0e6));
    units.insert(40, stack);
    // The AC meter counts 6.6 kWh a second (a 23.8 MW line: 12 cells at 400 kA and 4.7 V, plus
    // rectifier losses).
    let meter = rectifier_of(&units);
    tokio::spawn({
        let stop = shutdown.clone();
        async move {
            let start = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.is_cancelled() {
                tick.tick().await;
                let kwh = 1_000_000 + (start.elapsed().as_secs_f64() * 6.6) as u32;
                meter.set_input(2, &[(kwh >> 16) as u16, kwh as u16]);
            }
        }
    });
    let modbus_port = serve(units, &shutdown).await;

    let state = tempfile::tempdir().unwrap();
    let toml = agent_config(modbus_port, broker.port, state.path());
    let cfg = config::parse(&toml, Path::new("dash.toml")).unwrap_or_else(|e| panic!("{e}"));
    earlier_hours(&cfg);
    let agent = smeltwatch::app::start(cfg, Default::default())
        .await
        .unwrap();
    let (addr, http_stop, server) = serve_http(agent.live.clone(), HttpOptions::default()).await;
    // Wait until every pot has a reading (and the server listens, so the collector subscribed).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while agent.live.latest.lock().unwrap().len() < 14 {
        assert!(tokio::time::Instant::now() < deadline, "no readings");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.live.records.send(Record::Event(Event {
        kind: "anode_effect".into(),
        subject: "potline1/pot_007".into(),
        phase: EventPhase::Start,
        ts: Timestamp::now(),
        attributes: vec![("peak_voltage_v".into(), Value::Float(9.2))],
        message: "anode effect on pot_007".into(),
    }));

    let url = format!("http://{addr}/");
    let exe = chromium.clone();
    let u = url.clone();
    let dom = tokio::task::spawn_blocking(move || run_chromium(&exe, &u, 3500, None))
        .await
        .unwrap();

    // Cells: twelve, pot_007 marked as anode effect.
    assert_eq!(dom.matches("class=\"cell").count(), 12, "{dom}");
    let ae_cell = dom
        .find("data-device=\"pot_007\"")
        .map(|i| &dom[dom[..i].rfind("<div").unwrap()..i])
        .expect("pot_007 cell");
    assert!(ae_cell.contains("cell ae"), "{ae_cell}");
    assert_eq!(dom.matches("cell ae").count(), 1);
    // KPIs.
    assert_eq!(inner_text(&dom, "kpi-current"), "400.5");
    assert_eq!(inner_text(&dom, "kpi-ae"), "1");
    // Events list and stack bar.
    assert!(dom.contains("potline1/pot_007"), "event missing");
    assert!(dom.contains("data-stack=\"gtc1_stack\""), "stack missing");
    // Over-limit bar: red fill, limit marker.
    let stacks = element(&dom, "stacks");
    assert!(stacks.contains("data-over=\"1\""), "{stacks}");
    assert!(stacks.contains("fill over"), "{stacks}");
    assert!(stacks.contains("class=\"limit\""), "{stacks}");
    // Trend charts drawn by uPlot with data.
    assert!(attr(&dom, "data-trends-error").is_none(), "{dom}");
    let line = element(&dom, "chart-line");
    assert!(line.contains("class=\"uplot"), "{line}");
    assert!(line.contains("<canvas"), "{line}");
    assert!(data_attr(&dom, "chart-line", "points") >= 2);
    // The cell in anode effect is charted by itself, against the 8 V line.
    assert!(inner_text(&dom, "cell-title").contains("pot_007"));
    assert!(element(&dom, "chart-cell").contains("class=\"uplot"));
    assert!(data_attr(&dom, "chart-cell", "points") >= 1);
    assert_eq!(data_attr(&dom, "chart-cell", "limits"), 1);
    // The stack's hourly averages from the history store, against the limit line; one is over.
    let hourly = "chart-hour-gtc1-stack-so2-mg-m3";
    assert!(element(&dom, hourly).contains("class=\"uplot"), "{dom}");
    assert_eq!(data_attr(&dom, hourly, "limits"), 1);
    assert!(data_attr(&dom, hourly, "points") >= 3);
    assert!(data_attr(&dom, hourly, "over") >= 1);
    // The page keeps polling (once a second).
    let polls: u32 = attr(&dom, "data-polls").unwrap().parse().unwrap();
    assert!(polls >= 2, "polled {polls} times");
    let first_update: i64 = attr(&dom, "data-updated").unwrap().parse().unwrap();

    // A value changes on the device: the page shows it within seconds.
    pots[0].set_input(0, &f32_words(8.4));
    let exe = chromium.clone();
    let u = url.clone();
    let dom = tokio::task::spawn_blocking(move || run_chromium(&exe, &u, 3500, None))
        .await
        .unwrap();
    assert_eq!(inner_text(&dom, "kpi-ae"), "2");
    let second_update: i64 = attr(&dom, "data-updated").unwrap().parse().unwrap();
    assert!(second_update > first_update);

    // The potline's first minute closes (at the next minute of the clock): the kWh/t tiles show
    // the day's running figure, and the kWh/t chart draws it against the three grade bounds.
    let ac_today = Selector::parse("metric:potline/ac_kwh_per_t_today").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(75);
    while agent.live.series.query(&ac_today, 0, i64::MAX).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no minute figure");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Yesterday's figures are there too: the tiles still show today's.
    let day = |name: &str| Metric {
        name: name.into(),
        value: Some(13_100.0),
        unit: "kWh/t".into(),
        quality: Quality::Good,
        ts: Timestamp::now(),
        labels: vec![
            ("line".into(), "potline1".into()),
            ("period".into(), "day".into()),
        ],
    };
    agent.live.records.send(Record::Metrics(MetricBatch {
        calc: "potline".into(),
        ts: Timestamp::now(),
        metrics: vec![day("dc_kwh_per_t"), day("ac_kwh_per_t")],
    }));
    let exe = chromium.clone();
    let u = url.clone();
    let dom = tokio::task::spawn_blocking(move || run_chromium(&exe, &u, 3500, None))
        .await
        .unwrap();
    for tile in ["kpi-dc", "kpi-ac"] {
        let v: f64 = inner_text(&dom, tile)
            .parse()
            .unwrap_or_else(|_| panic!("{tile}: {:?}", inner_text(&dom, tile)));
        assert!(v > 1000.0 && v != 13_100.0, "{tile} {v}");
    }
    assert_eq!(inner_text(&dom, "kpi-ac-when"), "today");
    assert!(element(&dom, "chart-kwh").contains("class=\"uplot"));
    assert!(data_attr(&dom, "chart-kwh", "points") >= 2);
    assert_eq!(data_attr(&dom, "chart-kwh", "limits"), 3);

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let s = shot.clone();
    tokio::task::spawn_blocking(move || run_chromium(&chromium, &url, 3500, Some(&s)))
        .await
        .unwrap();
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    eprintln!("dashboard screenshot: {}", shot.display());

    http_stop.cancel();
    server.await.unwrap().unwrap();
    agent.shutdown().await;
    shutdown.cancel();
}
