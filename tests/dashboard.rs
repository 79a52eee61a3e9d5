//! The dashboard in headless Chromium against a running agent (simulator → agent → Mosquitto,
//! `http::serve` on its live state): the page shows the cells with the anode effect marked, the
//! line-current KPI and the events list, keeps polling, follows a changed value, and a screenshot
//! is written as a test artifact (`dashboard.png` in cargo's integration-test temp directory).
//!
//! Skipped with a message when `chromium` is not installed, unless `SMELTWATCH_REQUIRE_PEERS` is
//! set.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::mosquitto::Mosquitto;
use common::plant::{device, f32_words, serve};
use smeltwatch::config;
use smeltwatch::http::{self, HttpOptions};
use smeltwatch::model::{Event, EventPhase, Record, Timestamp, Value};
use smeltwatch::simulator::UnitMap;
use tokio::net::TcpListener;
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

fn agent_config(modbus_port: u16, mqtt_port: u16, state_dir: &Path) -> String {
    format!(
        r#"
site = "dash"
state_dir = "{state}"

[[sources]]
name = "potline1"
tcp = "127.0.0.1:{modbus_port}"
timeout = "500ms"
default_poll = "200ms"

[[sources.devices]]
name = "rectifier"
unit_id = 1
[sources.devices.points.line_current_ka]
area = "input"
address = 0
type = "f32"
unit = "kA"

[[sources.devices]]
name = "pot_{{n:03}}"
count = 12
unit_id = 10
[sources.devices.points.cell_voltage_v]
area = "input"
address = 0
type = "f32"
unit = "V"
range = [0.0, 60.0]

[[sources.devices]]
name = "gtc1_stack"
unit_id = 40
[sources.devices.points.so2_mg_m3]
area = "input"
address = 0
type = "f32"
unit = "mg/m3"

[[uplinks]]
name = "plant"
type = "mqtt"
broker = "mqtt://127.0.0.1:{mqtt_port}"
reconnect_min = "100ms"
reconnect_max = "1s"
streams = ["live"]
"#,
        state = state_dir.display()
    )
}

/// Run headless Chromium on `url` and return the DOM after the page's scripts ran for
/// `budget_ms` of virtual time; write a screenshot to `screenshot` if given.
fn run_chromium(exe: &Path, url: &str, budget_ms: u32, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1600,1100",
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
    let stack = device("gtc1_stack");
    stack.set_input(0, &f32_words(85.0));
    units.insert(40, stack);
    let modbus_port = serve(units, &shutdown).await;

    let state = tempfile::tempdir().unwrap();
    let toml = agent_config(modbus_port, broker.port, state.path());
    let cfg = config::parse(&toml, Path::new("dash.toml")).unwrap_or_else(|e| panic!("{e}"));
    let agent = smeltwatch::app::start(cfg, Default::default())
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http_stop = CancellationToken::new();
    let server = tokio::spawn(http::serve(
        listener,
        agent.live.clone(),
        HttpOptions::default(),
        http_stop.clone(),
    ));
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
