//! Starting an agent: every component of a [`Config`] built and its task spawned, in the order
//! the shutdown relies on (spools and uplinks, then pollers and HTTP, then the fan-out between
//! them), and the preflight a reload runs before it stops the running agent.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    Agent, EVENTS_CHANNEL, READINGS_CHANNEL, RunOptions, hj212, sparkplug, spool_path, spools,
    supervise, systemd,
};
use crate::config::{Config, TopicTemplates, UplinkConfig, UplinkKind};
use crate::fanout::{FanInputs, FanOut, FanTarget, calc_state, fan_out, regulated};
use crate::history::HistorySource;
use crate::live::{LiveState, UplinkView, health};
use crate::modbus::poller::Poller;
use crate::modbus::write::{DeviceWriters, WriteQueue};
use crate::model::{ReadingBatch, Record, Timestamp};
use crate::spool::SpoolHandle;
use crate::uplink::mqtt::MqttUplink;
use crate::uplink::{RunError, UplinkStatus};

/// Start every component of `cfg`. Returns once the spools are open and every task is spawned.
pub async fn start(cfg: Config, opts: RunOptions) -> anyhow::Result<Agent> {
    let live = Arc::new(LiveState {
        completeness: Arc::new(crate::completeness::Completeness::open(
            &cfg,
            Timestamp::now(),
        )),
        health: Arc::new(health::Health::new(cfg.stall_after)),
        ..LiveState::default()
    });
    if let Some(calc) = &cfg.calc {
        let limits = crate::calc::limits::stack_limits(calc).context("[calc] stack limits")?;
        let _ = live.stack_limits.set(limits);
    }
    let sources = CancellationToken::new();
    let uplinks_token = CancellationToken::new();
    let tracker = TaskTracker::new();

    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create state directory {}", cfg.state_dir.display()))?;

    // History store and ledger first: the HJ 212 uplinks answer history requests from the store,
    // and a key that others can read stops the start before anything runs.
    let regulator = regulated::Regulator::open(&cfg)?.with_health(live.health.clone());
    live.series.set_history(regulator.history_store());

    // Guarded device writes (Sparkplug DCMD) go to the pollers' write queues; every attempt is
    // reported as an event through the fan-out's side entrance.
    let (writers, write_queues) = DeviceWriters::for_sources(&cfg.sources);
    let (events_tx, events_rx) = mpsc::channel(EVENTS_CHANNEL);

    let wiring = UplinkWiring {
        cfg: &cfg,
        opts: &opts,
        live: &live,
        writers: &writers,
        events: &events_tx,
        history: regulator.history_source(),
        tracker: &tracker,
        stop: &uplinks_token,
    };
    let started = start_uplinks(&wiring)?;

    let (tx, rx) = mpsc::channel(READINGS_CHANNEL);
    // A step of the wall clock is raised once, by whichever poller or spool reads the clock first.
    crate::clock::Clock::system().set_events(events_tx.clone());
    let pollers = start_pollers(&cfg, write_queues, &tx, &live, &tracker, &sources);
    drop(tx);

    // The HTTP side doors are a source too: they stop with the pollers.
    start_http(&cfg, &live, &tracker, &sources).await?;

    let (calc, derived) = stages(&cfg, &live)?;
    let initial: Vec<Record> = regulator
        .config_change(&cfg)
        .into_iter()
        .chain(started.events)
        .collect();
    let drain_deadline = CancellationToken::new();
    let fan_out = tokio::spawn(fan_out(FanOut {
        inputs: FanInputs {
            batches: rx,
            events: events_rx,
        },
        targets: started.targets,
        site: cfg.site.clone(),
        live: live.clone(),
        calc,
        derived,
        regulator,
        initial,
        drain_deadline: drain_deadline.clone(),
    }));
    tracker.close();

    Ok(Agent {
        pollers,
        sources,
        uplinks: uplinks_token,
        drain_deadline,
        fan_out,
        tracker,
        spools: started.spools,
        events: events_tx,
        grace: opts.grace_period,
        live,
    })
}

/// What starting an uplink needs from the agent being started.
struct UplinkWiring<'a> {
    cfg: &'a Config,
    opts: &'a RunOptions,
    live: &'a Arc<LiveState>,
    writers: &'a DeviceWriters,
    events: &'a mpsc::Sender<Record>,
    /// The history store the HJ 212 uplinks answer history requests from.
    history: Option<Arc<dyn HistorySource>>,
    tracker: &'a TaskTracker,
    stop: &'a CancellationToken,
}

/// The uplinks that started: the fan-out's targets, their spools, and the events opening the
/// spools raised (a damaged file moved aside), which go out first.
struct StartedUplinks {
    targets: Vec<FanTarget>,
    spools: Vec<SpoolHandle>,
    events: Vec<Record>,
}

/// Open each uplink's spool and start the uplink. A damaged spool file is moved aside, a spool
/// that cannot be opened stops its uplink only (`spools`); what happened goes out first as events.
fn start_uplinks(w: &UplinkWiring<'_>) -> anyhow::Result<StartedUplinks> {
    let notifier = systemd::Notifier::from_env();
    let mut started = StartedUplinks {
        targets: Vec::new(),
        spools: Vec::new(),
        events: Vec::new(),
    };
    for uplink in &w.cfg.uplinks {
        let path = spool_path(w.cfg, &uplink.name);
        let report = spools::Report {
            notifier: &notifier,
            health: &w.live.health,
            events: &mut started.events,
        };
        let Some(spool) = spools::open(uplink, &path, report) else {
            continue;
        };
        let latency = Arc::new(crate::histogram::Histogram::default());
        let (status, topics) = start_uplink(w, uplink, &spool, &path, &latency)?;
        w.live
            .uplinks
            .lock()
            .expect("live state lock is never poisoned: holders do not panic")
            .push(UplinkView {
                name: uplink.name.clone(),
                spool: spool.clone(),
                status,
                publish_latency: latency,
            });
        started.targets.push(FanTarget {
            gate: health::StoreGate::new(format!("spool-{}", uplink.name)),
            spool: spool.clone(),
            streams: uplink.streams.clone(),
            topics,
            hand_over_decoded: matches!(uplink.kind, UplinkKind::Mqtt(_)),
        });
        started.spools.push(spool);
    }
    Ok(started)
}

/// Start one uplink on its open spool; returns its status and the topics its records get.
fn start_uplink(
    w: &UplinkWiring<'_>,
    uplink: &UplinkConfig,
    spool: &SpoolHandle,
    path: &std::path::Path,
    latency: &Arc<crate::histogram::Histogram>,
) -> anyhow::Result<(tokio::sync::watch::Receiver<UplinkStatus>, TopicTemplates)> {
    let cfg = w.cfg;
    match &uplink.kind {
        UplinkKind::Mqtt(mqtt) => {
            let client = MqttUplink::new(&cfg.site, uplink, spool.clone())
                .with_context(|| format!("uplink {:?}", uplink.name))?
                .with_completeness(w.live.completeness.clone())
                .with_publish_latency(latency.clone())
                .with_shutdown_grace(w.opts.grace_period)
                .with_hj212_mn_by_subject(
                    mqtt.encoding
                        .hj212
                        .as_ref()
                        .map_or_else(HashMap::new, |h| hj212::mn_by_subject(&h.mn_by_stack, cfg)),
                );
            tracing::info!(uplink = %uplink.name, broker = %mqtt.broker, spool = %path.display(), "uplink ready");
            let status = client.status();
            let who = supervise::Supervised {
                name: uplink.name.clone(),
                kind: "MQTT",
                status: client.status_sender(),
                events: w.events.clone(),
                backoff: (mqtt.reconnect_min, mqtt.reconnect_max),
            };
            w.tracker.spawn(supervise::supervise(
                who,
                supervised_mqtt(Arc::new(client)),
                w.stop.clone(),
            ));
            Ok((status, mqtt.topics.clone()))
        }
        UplinkKind::Hj212(h) => {
            tracing::info!(uplink = %uplink.name, platform = %h.platform, spool = %path.display(), "HJ 212 uplink ready");
            let wiring = hj212::Wiring {
                events: w.events.clone(),
                completeness: w.live.completeness.clone(),
                mn_by_subject: hj212::mn_by_subject(&h.mn_by_stack, cfg),
                grace: w.opts.grace_period,
                publish_latency: latency.clone(),
            };
            let status = hj212::start(
                uplink,
                h,
                spool.clone(),
                w.history.clone(),
                wiring,
                w.tracker,
                w.stop.clone(),
            );
            Ok((status, TopicTemplates::default()))
        }
        UplinkKind::Sparkplug(spb) => {
            let wiring = sparkplug::Wiring {
                writers: w.writers,
                events: w.events,
                tracker: w.tracker,
                stop: w.stop,
                completeness: &w.live.completeness,
                grace: w.opts.grace_period,
                publish_latency: latency,
            };
            let status = sparkplug::start(cfg, uplink, spb, spool.clone(), wiring)?;
            Ok((status, TopicTemplates::default()))
        }
    }
}

/// Spawn one poller per Modbus source and per DL/T 645 meter bus, each watched by the health
/// checks at its shortest poll interval.
fn start_pollers(
    cfg: &Config,
    write_queues: Vec<WriteQueue>,
    tx: &mpsc::Sender<ReadingBatch>,
    live: &LiveState,
    tracker: &TaskTracker,
    sources: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut pollers = Vec::new();
    let watch = |name: &Arc<str>, stats, shortest_poll: Option<Duration>| {
        live.pollers
            .lock()
            .expect("live state lock is never poisoned: holders do not panic")
            .push((name.clone(), stats));
        live.health
            .watch_poller(name, shortest_poll.unwrap_or(Duration::ZERO));
    };
    for (source, writes) in cfg.sources.iter().zip(write_queues) {
        let poller = Poller::new(source.clone(), tx.clone()).with_writes(writes);
        let shortest = source.devices.iter().flat_map(|d| &d.points);
        watch(
            &source.name,
            poller.stats(),
            shortest.map(|p| p.poll_interval).min(),
        );
        pollers.push(tracker.spawn(poller.run(sources.clone())));
    }
    for bus in &cfg.meter_buses {
        let poller = crate::dlt645::poller::Dlt645Poller::new(bus.clone(), tx.clone());
        let shortest = bus.meters.iter().flat_map(|m| &m.points);
        watch(
            &bus.name,
            poller.stats(),
            shortest.map(|p| p.poll_interval).min(),
        );
        pollers.push(tracker.spawn(poller.run(sources.clone())));
    }
    pollers
}

/// Serve the HTTP side doors if configured. Binding here makes a taken or invalid address fail
/// the start with a clear message.
async fn start_http(
    cfg: &Config,
    live: &Arc<LiveState>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(http) = &cfg.http else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(http.listen)
        .await
        .with_context(|| format!("http.listen {}: cannot bind", http.listen))?;
    tracing::info!(listen = %http.listen, "HTTP endpoint: /metrics /healthz /readyz /api/v1 and the dashboard");
    let opts = crate::http::HttpOptions {
        token: http.token.clone(),
        ..Default::default()
    };
    tracker.spawn({
        let live = live.clone();
        let stop = stop.clone();
        async move {
            if let Err(e) = crate::http::serve(listener, live, opts, stop).await {
                tracing::error!("http endpoint: {e}");
            }
        }
    });
    Ok(())
}

/// The fan-out's calculator stage (with its saved state) and derived-point engine, if configured.
fn stages(
    cfg: &Config,
    live: &LiveState,
) -> anyhow::Result<(
    Option<calc_state::CalcStage>,
    Option<crate::derived::Engine>,
)> {
    let calc = match &cfg.calc {
        Some(c) => {
            let pipeline = crate::calc::Pipeline::new(c).context("[calc]")?;
            let refs = crate::series::references::from_calc(c, pipeline.coefficients());
            live.series.set_references(refs);
            Some(calc_state::CalcStage::open(pipeline, &cfg.state_dir))
        }
        None => None,
    };
    let derived = match cfg.derived.is_empty() {
        true => None,
        false => Some(crate::derived::Engine::new(&cfg.derived).map_err(anyhow::Error::msg)?),
    };
    Ok((calc, derived))
}

/// Build the fallible parts of `cfg` that do not need what the agent running `running` holds, and
/// drop them again. A reload stops the running agent only once these pass, so a configuration
/// that validates but cannot start (a rotated certificate or key that does not parse, a spool or
/// history store that cannot be opened, an HTTP address that is taken, an unreadable ledger key)
/// leaves the agent running. The same code as in [`start`] builds each part.
///
/// What the running agent holds is checked without taking it from it: a spool file it has open is
/// not opened a second time (it opened, and one agent works a spool), the HTTP address it listens
/// on is not bound. The history store is SQLite in WAL mode with a busy timeout, made for more
/// than one connection, so it is opened like at start. The simulator is not restarted by a reload
/// and not checked.
pub(super) async fn preflight(cfg: &Config, running: &Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create state directory {}", cfg.state_dir.display()))?;
    drop(regulated::Regulator::open(cfg)?);
    let held: HashSet<PathBuf> = running
        .uplinks
        .iter()
        .map(|u| spool_path(running, &u.name))
        .collect();
    for uplink in &cfg.uplinks {
        let path = spool_path(cfg, &uplink.name);
        if !held.contains(&path) {
            crate::spool::Spool::open(&path, &uplink.spool).with_context(|| {
                format!(
                    "uplink {:?}: cannot open spool {}",
                    uplink.name,
                    path.display()
                )
            })?;
        }
        match &uplink.kind {
            UplinkKind::Mqtt(_) => MqttUplink::preflight(uplink)
                .with_context(|| format!("uplink {:?}", uplink.name))?,
            UplinkKind::Hj212(_) => {}
            UplinkKind::Sparkplug(spb) => sparkplug::preflight(uplink, spb)?,
        }
    }
    if let Some(http) = &cfg.http
        && running.http.as_ref().map(|h| h.listen) != Some(http.listen)
    {
        tokio::net::TcpListener::bind(http.listen)
            .await
            .with_context(|| format!("http.listen {}: cannot bind", http.listen))?;
    }
    if let Some(c) = &cfg.calc {
        crate::calc::Pipeline::new(c).context("[calc]")?;
    }
    Ok(())
}

/// The attempts of a supervised MQTT uplink: each runs `client` in a task of its own (a panic ends
/// that run only); a run that got records acknowledged resets the backoff.
fn supervised_mqtt(
    client: Arc<MqttUplink>,
) -> impl FnMut(
    CancellationToken,
) -> std::pin::Pin<Box<dyn Future<Output = supervise::Outcome<RunError>> + Send>> {
    move |stop: CancellationToken| {
        let client = client.clone();
        Box::pin(async move {
            let acked = client.status().borrow().acked_total;
            let run = supervise::contain({
                let client = client.clone();
                async move { client.run_once(&stop).await }
            })
            .await;
            let progressed = client.status().borrow().acked_total > acked;
            (
                run.and_then(|r| r.map_err(supervise::Failure::Failed)),
                progressed,
            )
        })
    }
}
