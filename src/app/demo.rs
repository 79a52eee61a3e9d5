//! `smeltwatch demo`: the built-in plant simulator, an embedded broker and the agent, with a live
//! one-screen summary. Nothing to install and nothing to configure: the demo configuration and
//! its register maps are compiled into the binary (they are the files under `config/`).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::RunOptions;
use super::commands::{override_broker, quality_totals};
use crate::config::{self, Config, HostPort, Transport};
use crate::live::LiveState;
use crate::model::Quality;
use crate::simulator::{self, BindMode};

/// The demo configuration and the register maps it references, as shipped under `config/`.
const DEMO_FILES: &[(&str, &str)] = &[
    ("demo.toml", include_str!("../../config/demo.toml")),
    ("maps/pcu.csv", include_str!("../../config/maps/pcu.csv")),
    (
        "maps/rectifier.csv",
        include_str!("../../config/maps/rectifier.csv"),
    ),
    (
        "maps/copper_smelter.csv",
        include_str!("../../config/maps/copper_smelter.csv"),
    ),
    ("maps/cems.csv", include_str!("../../config/maps/cems.csv")),
    (
        "maps/aux_meter.csv",
        include_str!("../../config/maps/aux_meter.csv"),
    ),
];

/// How often the summary is printed.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// Options of `smeltwatch demo`.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Port for the embedded broker; `None` tries 1883 and falls back to a free port.
    pub mqtt_port: Option<u16>,
    /// Port for the HTTP endpoint and dashboard; `None` tries 9187 and falls back to a free port.
    pub http_port: Option<u16>,
}

/// Load the embedded demo configuration, with its state under `dir`.
pub fn demo_config(dir: &Path) -> anyhow::Result<Config> {
    for (name, text) in DEMO_FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let path = dir.join("demo.toml");
    let mut cfg = config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    cfg.state_dir = dir.join("state");
    Ok(cfg)
}

/// Point every source that targets a simulator's configured address at where it really listens.
pub fn retarget_sources(cfg: &mut Config, endpoints: &[simulator::Endpoint]) {
    let retarget = |addr: &mut HostPort| {
        for ep in endpoints {
            if addr.port == ep.configured.port()
                && (addr.host == ep.configured.ip().to_string() || addr.host == "localhost")
            {
                *addr = HostPort::from_addr(ep.bound);
            }
        }
    };
    for source in &mut cfg.sources {
        if let Transport::Tcp { addr } | Transport::RtuOverTcp { addr } = &mut source.transport {
            retarget(addr);
        }
    }
    for bus in &mut cfg.meter_buses {
        if let crate::dlt645::config::BusTransport::SerialServer(addr) = &mut bus.transport {
            retarget(addr);
        }
    }
}

/// Run the demo until `shutdown` fires.
pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let result = run_in(&dir, opts, shutdown).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &Path, opts: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut cfg = demo_config(dir)?;
    let sim_cfg = cfg
        .simulator
        .clone()
        .context("the demo configuration has no [simulator] section")?;

    #[cfg(not(feature = "demo-broker"))]
    {
        let _ = (opts, shutdown, pick_broker_addr);
        anyhow::bail!(
            "this build has no embedded broker (cargo feature `demo-broker`); run \
             `smeltwatch run -c config/demo.toml --broker mqtt://HOST:PORT` against your own broker"
        );
    }
    #[cfg(feature = "demo-broker")]
    let broker = crate::broker::start(pick_broker_addr(opts.mqtt_port)?)
        .context("starting the embedded broker")?;
    #[cfg(feature = "demo-broker")]
    let broker_addr = broker.local_addr();

    let sim = simulator::start(&sim_cfg, BindMode::AnyPort)
        .await
        .context("starting the plant simulator")?;
    retarget_sources(&mut cfg, &sim.endpoints());
    let http_addr = pick_addr(opts.http_port, 9187, "HTTP endpoint")?;
    cfg.http = Some(crate::config::HttpConfig {
        listen: http_addr,
        token: None,
    });
    override_broker(&mut cfg, &format!("mqtt://{broker_addr}"))?;

    println!("smeltwatch demo: site {:?}", cfg.site);
    println!("  embedded MQTT broker  mqtt://{broker_addr}");
    for ep in sim.endpoints() {
        println!("  simulator {:<22} tcp {}", ep.name, ep.bound);
    }
    println!(
        "  dashboard             http://{http_addr}/   (Prometheus: http://{http_addr}/metrics)"
    );
    println!(
        "  watch the topics:     mosquitto_sub -h 127.0.0.1 -p {} -t 'smeltwatch/#' -v",
        broker_addr.port()
    );
    println!("  live view:            smeltwatch tail --broker mqtt://{broker_addr}");
    println!("  stop with Ctrl-C\n");

    let agent = super::start(cfg, RunOptions::default()).await?;
    let live = agent.live.clone();
    let mut ticker = tokio::time::interval(SUMMARY_EVERY);
    ticker.tick().await;
    let mut last_total = 0u64;
    let mut last_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                let now = tokio::time::Instant::now();
                let total: u64 = quality_totals(&live).iter().sum();
                let rate = (total - last_total) as f64 / now.duration_since(last_at).as_secs_f64();
                last_total = total;
                last_at = now;
                println!("{}", summary(&live, rate).await);
            }
        }
    }
    agent.shutdown().await;
    sim.shutdown().await;
    #[cfg(feature = "demo-broker")]
    drop(broker);
    Ok(())
}

/// One screen of status: throughput, qualities, uplinks and spools, the hottest cells.
pub async fn summary(live: &LiveState, points_per_s: f64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let totals = quality_totals(live);
    let _ = write!(out, "{:>8.0} points/s  quality:", points_per_s);
    for q in Quality::ALL {
        let n = totals[q as usize];
        if n > 0 || q == Quality::Good {
            let _ = write!(out, " {q}={n}");
        }
    }
    let late: u64 = live
        .pollers
        .lock()
        .expect("live state lock is never poisoned: holders do not panic")
        .iter()
        .map(|(_, s)| s.late_ticks.load(Ordering::Relaxed))
        .sum();
    let _ = writeln!(out, "  late ticks={late}");
    let uplinks = live
        .uplinks
        .lock()
        .expect("live state lock is never poisoned: holders do not panic")
        .clone();
    for u in uplinks {
        let status = u.status.borrow().clone();
        let depth = match u.spool.stats().await {
            Ok(s) => format!("{} records, {} bytes", s.records, s.bytes),
            Err(e) => format!("unavailable: {e}"),
        };
        let _ = writeln!(out, "  uplink {:<10} {}  spool: {depth}", u.name, status);
    }
    let mut cells: Vec<(String, f64, Quality)> = live
        .latest
        .lock()
        .expect("live state lock is never poisoned: holders do not panic")
        .iter()
        .filter(|(_, r)| r.point.starts_with("cell_voltage"))
        .filter_map(|(device, r)| {
            r.value
                .as_ref()
                .and_then(|v| v.as_f64())
                .map(|v| (device.to_string(), v, r.quality))
        })
        .collect();
    cells.sort_by(|a, b| b.1.total_cmp(&a.1));
    if !cells.is_empty() {
        let _ = write!(out, "  hottest cells:");
        for (device, v, q) in cells.iter().take(5) {
            let mark = if *v >= 8.0 { " ANODE EFFECT" } else { "" };
            let qmark = if *q == Quality::Good { "" } else { " (!)" };
            let _ = write!(out, "  {device} {v:.2} V{mark}{qmark}");
        }
        let _ = writeln!(out);
    }
    out
}

/// 127.0.0.1 on the requested port, or on 1883, or on any free port when 1883 is taken.
fn pick_broker_addr(requested: Option<u16>) -> anyhow::Result<SocketAddr> {
    pick_addr(requested, 1883, "embedded broker")
}

/// 127.0.0.1 on the requested port, or on `preferred`, or on any free port when that is taken.
fn pick_addr(requested: Option<u16>, preferred: u16, what: &str) -> anyhow::Result<SocketAddr> {
    let ip = Ipv4Addr::LOCALHOST;
    if let Some(port) = requested {
        return Ok(SocketAddr::from((ip, port)));
    }
    match TcpListener::bind((ip, preferred)) {
        Ok(l) => Ok(l.local_addr()?),
        Err(_) => {
            let l = TcpListener::bind((ip, 0))
                .with_context(|| format!("finding a free port for the {what}"))?;
            let addr = l.local_addr()?;
            println!("port {preferred} is taken; the {what} uses {}", addr.port());
            Ok(addr)
        }
    }
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("smeltwatch-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
