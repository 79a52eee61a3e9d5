//! Wiring: the only place that builds components from a [`Config`], spawns their tasks and owns
//! shutdown.
//!
//! ```text
//! Poller ×sources ──mpsc<ReadingBatch>(bounded)──► fan-out ──append (one txn per burst)──► Spool ×uplinks
//!                                                                                       │
//!                                                         MqttUplink ×uplinks ◄─────────┘ read / ack on PUBACK
//! ```
//!
//! Shutdown order: the pollers stop first (cancel), the fan-out drains what they produced into the
//! spools and exits when its channel closes, then the uplinks get a grace period to finish what is
//! in flight. Whatever was appended to a spool and not acknowledged by a broker stays in the spool
//! file and is sent first on the next start.

pub mod commands;
pub mod demo;
mod hj212;
mod sparkplug;
pub mod spools;
mod supervise;
pub mod systemd;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, TopicTemplates, UplinkKind};
use crate::fanout::{FanInputs, FanOut, FanTarget, calc_state, fan_out, regulated};
use crate::live::{LiveState, UplinkView, health};
use crate::modbus::poller::Poller;
use crate::modbus::write::DeviceWriters;
use crate::model::{Event, EventKind, EventPhase, Record, Timestamp, Value};
use crate::publish::mqtt::MqttUplink;
use crate::spool::SpoolHandle;

/// Capacity of the channel between the pollers and the fan-out, in batches. When it is full the
/// pollers wait, which shows up as late ticks. The fan-out never waits on a store for longer than
/// a store call's timeout (a failing store is isolated, [`health`]), so it fills only when the
/// machine cannot keep up.
const READINGS_CHANNEL: usize = 4096;
/// Capacity of the side entrance of the fan-out for events produced by the uplinks.
const EVENTS_CHANNEL: usize = 256;
/// Every uplink stops within the grace period on its own (in-flight acknowledgements are awaited
/// up to its end); shutdown waits this much longer for the tasks to be scheduled and return.
const UPLINK_STOP_MARGIN: Duration = Duration::from_millis(500);

/// Knobs of a run that do not belong in the configuration file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How long the uplinks get after the sources stopped to deliver what is in flight.
    pub grace_period: Duration,
    /// Where to reload the configuration from on SIGHUP (`None`: SIGHUP is ignored).
    pub reload: Option<ReloadSource>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            grace_period: Duration::from_secs(5),
            reload: None,
        }
    }
}

/// How `run` rereads its configuration on SIGHUP.
#[derive(Debug, Clone)]
pub struct ReloadSource {
    /// The configuration file.
    pub path: PathBuf,
    /// The `--broker` override given on the command line, applied again after each reload.
    pub broker: Option<String>,
}

impl ReloadSource {
    /// Load and validate the configuration as `run` was started with it.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut cfg = crate::config::load(&self.path).map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(url) = &self.broker {
            commands::override_broker(&mut cfg, url)?;
        }
        Ok(cfg)
    }
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    pollers: Vec<tokio::task::JoinHandle<()>>,
    sources: CancellationToken,
    uplinks: CancellationToken,
    /// Fired when the grace period ends during a stop: the fan-out stops storing and counts what
    /// is left.
    drain_deadline: CancellationToken,
    fan_out: tokio::task::JoinHandle<()>,
    tracker: TaskTracker,
    spools: Vec<SpoolHandle>,
    /// The fan-out's side entrance for events, for what happens around the agent ([`Agent::report`]).
    events: mpsc::Sender<Record>,
    grace: Duration,
    /// Live state for displays.
    pub live: Arc<LiveState>,
}

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
    let history = regulator.history_source();
    live.series.set_history(regulator.history_store());

    // Guarded device writes (Sparkplug DCMD) go to the pollers' write queues; every attempt is
    // reported as an event through the fan-out's side entrance.
    let (writers, write_queues) = DeviceWriters::for_sources(&cfg.sources);
    let (events_tx, events_rx) = mpsc::channel(EVENTS_CHANNEL);

    let mut targets = Vec::new();
    let mut spools = Vec::new();
    // A damaged spool file is moved aside, a spool that cannot be opened stops its uplink only
    // (`spools`); what happened goes out first as events.
    let notifier = systemd::Notifier::from_env();
    let mut spool_events = Vec::new();
    for uplink in &cfg.uplinks {
        let path = spool_path(&cfg, &uplink.name);
        let report = spools::Report {
            notifier: &notifier,
            health: &live.health,
            events: &mut spool_events,
        };
        let Some(spool) = spools::open(uplink, &path, report) else {
            continue;
        };
        let latency = Arc::new(crate::histogram::Histogram::default());
        let (status, topics) = match &uplink.kind {
            UplinkKind::Mqtt(mqtt) => {
                let client = MqttUplink::new(&cfg.site, uplink, spool.clone())
                    .with_context(|| format!("uplink {:?}", uplink.name))?
                    .with_completeness(live.completeness.clone())
                    .with_publish_latency(latency.clone())
                    .with_shutdown_grace(opts.grace_period)
                    .with_hj212_mn_by_subject(
                        mqtt.encoding.hj212.as_ref().map_or_else(HashMap::new, |h| {
                            hj212::mn_by_subject(&h.mn_by_stack, &cfg)
                        }),
                    );
                tracing::info!(uplink = %uplink.name, broker = %mqtt.broker, spool = %path.display(), "uplink ready");
                let status = client.status();
                let who = supervise::Supervised {
                    name: uplink.name.clone(),
                    kind: "MQTT",
                    status: client.status_sender(),
                    events: events_tx.clone(),
                    backoff: (mqtt.reconnect_min, mqtt.reconnect_max),
                };
                tracker.spawn(supervise::supervise(
                    who,
                    supervised_mqtt(Arc::new(client)),
                    uplinks_token.clone(),
                ));
                (status, mqtt.topics.clone())
            }
            UplinkKind::Hj212(h) => {
                tracing::info!(uplink = %uplink.name, platform = %h.platform, spool = %path.display(), "HJ 212 uplink ready");
                let wiring = hj212::Wiring {
                    events: events_tx.clone(),
                    completeness: live.completeness.clone(),
                    mn_by_subject: hj212::mn_by_subject(&h.mn_by_stack, &cfg),
                    grace: opts.grace_period,
                    publish_latency: latency.clone(),
                };
                let status = hj212::start(
                    uplink,
                    h,
                    spool.clone(),
                    history.clone(),
                    wiring,
                    &tracker,
                    uplinks_token.clone(),
                );
                (status, TopicTemplates::default())
            }
            UplinkKind::Sparkplug(spb) => {
                let wiring = sparkplug::Wiring {
                    writers: &writers,
                    events: &events_tx,
                    tracker: &tracker,
                    stop: &uplinks_token,
                    completeness: &live.completeness,
                    grace: opts.grace_period,
                    publish_latency: &latency,
                };
                let status = sparkplug::start(&cfg, uplink, spb, spool.clone(), wiring)?;
                (status, TopicTemplates::default())
            }
        };
        live.uplinks
            .lock()
            .expect("live state lock is never poisoned: holders do not panic")
            .push(UplinkView {
                name: uplink.name.clone(),
                spool: spool.clone(),
                status,
                publish_latency: latency,
            });
        targets.push(FanTarget {
            gate: health::StoreGate::new(format!("spool-{}", uplink.name)),
            spool: spool.clone(),
            streams: uplink.streams.clone(),
            topics,
            hand_over_decoded: matches!(uplink.kind, UplinkKind::Mqtt(_)),
        });
        spools.push(spool);
    }

    let (tx, rx) = mpsc::channel(READINGS_CHANNEL);
    let mut pollers = Vec::new();
    // A step of the wall clock is raised once, by whichever poller or spool reads the clock first.
    crate::clock::Clock::system().set_events(events_tx.clone());
    for (source, writes) in cfg.sources.iter().zip(write_queues) {
        let poller = Poller::new(source.clone(), tx.clone()).with_writes(writes);
        live.pollers
            .lock()
            .expect("live state lock is never poisoned: holders do not panic")
            .push((source.name.clone(), poller.stats()));
        let shortest_poll = source
            .devices
            .iter()
            .flat_map(|d| &d.points)
            .map(|p| p.poll_interval)
            .min()
            .unwrap_or(Duration::ZERO);
        live.health.watch_poller(&source.name, shortest_poll);
        pollers.push(tracker.spawn(poller.run(sources.clone())));
    }
    for bus in &cfg.meter_buses {
        let poller = crate::dlt645::poller::Dlt645Poller::new(bus.clone(), tx.clone());
        live.pollers
            .lock()
            .expect("live state lock is never poisoned: holders do not panic")
            .push((bus.name.clone(), poller.stats()));
        let shortest_poll = bus
            .meters
            .iter()
            .flat_map(|m| &m.points)
            .map(|p| p.poll_interval)
            .min()
            .unwrap_or(Duration::ZERO);
        live.health.watch_poller(&bus.name, shortest_poll);
        pollers.push(tracker.spawn(poller.run(sources.clone())));
    }
    drop(tx);

    // The HTTP side doors are a source too: they stop with the pollers. Binding here makes a
    // taken or invalid address fail the start with a clear message.
    if let Some(http) = &cfg.http {
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
            let stop = sources.clone();
            async move {
                if let Err(e) = crate::http::serve(listener, live, opts, stop).await {
                    tracing::error!("http endpoint: {e}");
                }
            }
        });
    }

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
    let initial: Vec<Record> = regulator
        .config_change(&cfg)
        .into_iter()
        .chain(spool_events)
        .collect();
    let inputs = FanInputs {
        batches: rx,
        events: events_rx,
    };
    let drain_deadline = CancellationToken::new();
    let fan_out = tokio::spawn(fan_out(FanOut {
        inputs,
        targets,
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
        spools,
        events: events_tx,
        grace: opts.grace_period,
        live,
    })
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
async fn preflight(cfg: &Config, running: &Config) -> anyhow::Result<()> {
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

/// The `reload_failed` event: what failed and what runs now.
fn reload_failed(config: &Path, stage: &str, message: String) -> Record {
    Record::Event(Event {
        kind: EventKind::ReloadFailed,
        subject: Arc::from(config.display().to_string()),
        phase: EventPhase::Instant,
        ts: Timestamp::now(),
        attributes: vec![(Arc::from("stage"), Value::Text(stage.to_owned()))],
        message,
    })
}

impl Agent {
    /// Hand an event about the agent itself (a failed reload) to the fan-out: the live feed, the
    /// event counts of `/metrics` and the uplinks that carry the `events` stream. Never waits.
    pub fn report(&self, event: Record) {
        if self.events.try_send(event).is_err() {
            tracing::warn!("event channel full or closed; event not recorded");
        }
    }

    /// Whether the pipeline is running and making progress: every poller and the fan-out are
    /// still at work, and none has gone without progress for `stall_after` ([`health`]). This is
    /// what feeds the systemd watchdog.
    pub fn is_alive(&self) -> bool {
        !self.fan_out.is_finished()
            && self.pollers.iter().all(|p| !p.is_finished())
            && self.live.stalls().is_empty()
    }

    /// Stop in order: sources, fan-out (drains into the spools), uplinks (grace period), spools.
    ///
    /// The fan-out gets the grace period to drain; when it ends, the fan-out stops storing and
    /// counts the batches it could not store (`smeltwatch_store_lost_records_total{reason=
    /// "shutdown"}`, and logged), so a stop never outlasts about twice the grace period.
    pub async fn shutdown(self) {
        self.sources.cancel();
        let mut fan_out = self.fan_out;
        let drained = tokio::time::timeout(self.grace, &mut fan_out).await;
        let joined = match drained {
            Ok(joined) => joined,
            Err(_) => {
                self.drain_deadline.cancel();
                match tokio::time::timeout(Duration::from_secs(2), &mut fan_out).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        fan_out.abort();
                        tracing::error!("fan-out did not stop after the grace period; aborted");
                        Ok(())
                    }
                }
            }
        };
        if let Err(e) = joined {
            tracing::error!("fan-out task failed: {e}");
        }
        self.uplinks.cancel();
        if tokio::time::timeout(self.grace + UPLINK_STOP_MARGIN, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "uplinks did not stop within the grace period; unsent records stay in the spool"
            );
        }
        // After the uplinks' last acks: the delivered counts are complete.
        self.live.completeness.checkpoint().await;
        log_undelivered(&self.live).await;
        for spool in self.spools {
            if let Err(e) = spool.close().await {
                tracing::error!("closing spool: {e}");
            }
        }
    }
}

/// The attempts of a supervised MQTT uplink: each runs `client` in a task of its own (a panic ends
/// that run only); a run that got records acknowledged resets the backoff.
fn supervised_mqtt(
    client: Arc<MqttUplink>,
) -> impl FnMut(CancellationToken) -> std::pin::Pin<Box<dyn Future<Output = supervise::Outcome> + Send>>
{
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
            (run.and_then(|r| r), progressed)
        })
    }
}

/// What each uplink leaves in its spool at the stop, logged with the count: sent first on the
/// next start.
async fn log_undelivered(live: &LiveState) {
    let views = live
        .uplinks
        .lock()
        .expect("live state lock is never poisoned: holders do not panic")
        .clone();
    for view in views {
        match tokio::time::timeout(Duration::from_secs(1), view.spool.stats()).await {
            Ok(Ok(stats)) if stats.records > 0 => tracing::info!(
                uplink = %view.name,
                records = stats.records,
                "records not delivered by the end of the grace period stay in the spool for the next start"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(uplink = %view.name, "cannot count the undelivered records: {e}")
            }
            Err(_) => {
                tracing::warn!(uplink = %view.name, "cannot count the undelivered records: the spool did not answer")
            }
        }
    }
}

/// Run the agent until `shutdown` fires, then stop cleanly.
pub async fn run(cfg: Config, opts: RunOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    log_start(&cfg);
    // A configuration with a [simulator] section brings its plant along (config/demo.toml does),
    // so that `run -c config/demo.toml --broker URL` works against any broker. The simulator is not
    // restarted by a reload.
    let sim = match &cfg.simulator {
        Some(sim_cfg) => Some(
            crate::simulator::start(sim_cfg, crate::simulator::BindMode::AsConfigured)
                .await
                .context("starting the simulator of the [simulator] section")?,
        ),
        None => None,
    };
    let notifier = systemd::Notifier::from_env();
    // Kept to check a reload against (preflight) and to start again when a reload fails to start.
    let mut running = cfg.clone();
    let mut agent = start(cfg, opts.clone()).await?;
    notifier.notify_or_log("READY=1\nSTATUS=polling");

    let mut hup = reload_signal(opts.reload.is_some())?;
    let watchdog = systemd::watchdog_interval();
    let mut watchdog_tick =
        tokio::time::interval(watchdog.map(|w| w / 2).unwrap_or(Duration::from_secs(3600)));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                // Fed only while the pipeline works: if a poller or the fan-out died, systemd's
                // watchdog restarts the service.
                if agent.is_alive() {
                    notifier.notify_or_log("WATCHDOG=1");
                } else {
                    tracing::error!("pipeline task ended unexpectedly; no longer feeding the watchdog");
                }
            }
            Some(()) = hup.recv() => {
                let Some(source) = &opts.reload else { continue };
                notifier.notify_or_log("RELOADING=1");
                match source.load() {
                    Ok(new_cfg) => {
                        agent = reload(agent, &mut running, new_cfg, &opts, &notifier).await?;
                    }
                    Err(e) => {
                        tracing::error!(
                            config = %source.path.display(),
                            "configuration reload failed, keeping the running configuration: {e:#}"
                        );
                        notifier.notify_or_log("READY=1\nSTATUS=polling (reload rejected: invalid configuration)");
                    }
                }
            }
        }
    }
    notifier.notify_or_log("STOPPING=1");
    tracing::info!("stopping: draining readings into the spools");
    agent.shutdown().await;
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Replace the running agent by one of `new_cfg`, or keep (or restart) the running configuration.
///
/// The new configuration's fallible parts are built first ([`preflight`]); if one fails, the
/// running agent is not touched. If the new agent still fails to start once the old one stopped
/// (a spool locked by another process, a port taken in between), the previous configuration is
/// started again. Either failure is an error in the log, a `reload_failed` event and the systemd
/// STATUS; the daemon ends only if the previous configuration cannot be started again either.
async fn reload(
    agent: Agent,
    running: &mut Config,
    new_cfg: Config,
    opts: &RunOptions,
    notifier: &systemd::Notifier,
) -> anyhow::Result<Agent> {
    let path = &new_cfg.path;
    if let Err(e) = preflight(&new_cfg, running).await {
        let message =
            format!("configuration reload failed, keeping the running configuration: {e:#}");
        tracing::error!(config = %path.display(), "{message}");
        agent.report(reload_failed(path, "preflight", message));
        notifier.notify_or_log(&format!(
            "READY=1\nSTATUS=polling (reload failed, running configuration kept: {})",
            one_line(&format!("{e:#}"))
        ));
        return Ok(agent);
    }
    tracing::info!(config = %path.display(), "reloading the configuration");
    agent.shutdown().await;
    log_start(&new_cfg);
    match start(new_cfg.clone(), opts.clone()).await {
        Ok(agent) => {
            *running = new_cfg;
            notifier.notify_or_log("READY=1\nSTATUS=polling (configuration reloaded)");
            Ok(agent)
        }
        Err(e) => {
            let message = format!(
                "configuration reload failed, restarting the previous configuration: {e:#}"
            );
            tracing::error!(config = %new_cfg.path.display(), "{message}");
            log_start(running);
            let agent = start(running.clone(), opts.clone())
                .await
                .with_context(|| {
                    format!("restarting the previous configuration after a failed reload ({e:#})")
                })?;
            agent.report(reload_failed(&new_cfg.path, "start", message));
            notifier.notify_or_log(&format!(
                "READY=1\nSTATUS=polling (reload failed, previous configuration restarted: {})",
                one_line(&format!("{e:#}"))
            ));
            Ok(agent)
        }
    }
}

/// `text` on one line, for the systemd STATUS.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn log_start(cfg: &Config) {
    tracing::info!(
        site = %cfg.site,
        sources = cfg.sources.len(),
        devices = cfg.sources.iter().map(|s| s.devices.len()).sum::<usize>(),
        uplinks = cfg.uplinks.len(),
        "smeltwatch {} starting", env!("CARGO_PKG_VERSION")
    );
}

/// SIGHUP as a channel of reload requests (never fires when reloading is off or off Unix).
fn reload_signal(enabled: bool) -> anyhow::Result<mpsc::Receiver<()>> {
    let (tx, rx) = mpsc::channel(1);
    #[cfg(unix)]
    if enabled {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // A reload already pending covers this one too.
                let _ = tx.try_send(());
            }
        });
        return Ok(rx);
    }
    // No reloads: the sender is dropped and the receiver reports a closed channel, which the
    // `Some(())` pattern in `run` treats as "no request".
    drop((tx, enabled));
    Ok(rx)
}

/// The spool file of an uplink.
pub fn spool_path(cfg: &Config, uplink: &str) -> PathBuf {
    cfg.state_dir.join(format!("spool-{uplink}.db"))
}

/// A cancellation token that fires on SIGINT or SIGTERM, or after `duration` if given.
pub fn shutdown_on_signal(duration: Option<Duration>) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        let timer = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => tracing::info!("interrupted"),
            _ = term => tracing::info!("terminated"),
            _ = timer => {},
        }
        t.cancel();
    });
    token
}
