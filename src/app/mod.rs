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

pub mod calc_state;
pub mod demo;
mod derived_stage;
pub mod health;
mod hj212;
mod regulated;
mod sparkplug;
pub mod spools;
mod supervise;
pub mod systemd;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acquisition::PollerStats;
use crate::config::{Area, BrokerUrl, Config, Stream, TopicTemplates, UplinkKind};
use crate::modbus::plan;
use crate::modbus::poller::Poller;
use crate::modbus::write::DeviceWriters;
use crate::model::{
    Event, EventKind, EventPhase, Quality, Reading, ReadingBatch, Record, Timestamp, Value,
};
use crate::publish::mqtt::{MqttUplink, UplinkStatus};
use crate::spool::{AppendFailed, Decoded, NewRecord, SpoolHandle};

/// Capacity of the channel between the pollers and the fan-out, in batches. When it is full the
/// pollers wait, which shows up as late ticks. The fan-out never waits on a store for longer than
/// a store call's timeout (a failing store is isolated, [`health`]), so it fills only when the
/// machine cannot keep up.
const READINGS_CHANNEL: usize = 4096;
/// How often the calculators are asked to close windows whose data stopped.
const CALC_FLUSH_EVERY: Duration = Duration::from_secs(10);
/// Largest number of batches appended to the spools in one transaction. The spool serves one
/// command at a time, so an uplink's read waits for the append in progress: a short transaction
/// lets fresh data out sooner, at the same CPU (docs/PERFORMANCE.md, "fresh data waited behind
/// 512-batch spool transactions").
const MAX_BATCHES_PER_APPEND: usize = 32;
/// How long fan-out waits for more batches after the first of a burst before it appends them (up
/// to [`MAX_BATCHES_PER_APPEND`]): group commit. A source reads its devices one after the other,
/// so its batches trickle in over tens of milliseconds; the wait joins them into one transaction
/// (one fsync under `synchronous = full`) instead of one each (docs/PERFORMANCE.md, "spread
/// sources made a transaction of nearly every batch").
const APPEND_LINGER: Duration = Duration::from_millis(5);
/// After this many waits in a row that gathered nothing, fan-out stops waiting ([`Linger`])...
const LINGER_FRUITLESS: u32 = 8;
/// ...except on every this many bursts, to notice when batches trickle in again.
const LINGER_PROBE_EVERY: u32 = 16;
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
            override_broker(&mut cfg, url)?;
        }
        Ok(cfg)
    }
}

/// Latest reading of every point: the latest batch of each device and poll class (a point
/// belongs to one poll class, and each batch carries every point of its class).
///
/// Kept per batch, not per reading: the pipeline updates it for every batch, and one hash lookup
/// and an in-place copy per batch cost a fraction of a map insert per reading.
#[derive(Debug, Default)]
pub struct LatestReadings {
    /// (device, poll interval in ms) → the latest batch.
    batches: HashMap<(Arc<str>, u64), ReadingBatch>,
}

impl LatestReadings {
    /// Remember `batch` as the latest of its device and poll class.
    pub fn update(&mut self, batch: &ReadingBatch) {
        match self
            .batches
            .get_mut(&(batch.device.clone(), batch.poll_interval_ms))
        {
            Some(latest) => {
                // Field by field: `Vec::clone_from` reuses the readings' allocation (a derived
                // `clone_from` would clone the whole batch).
                latest.source.clone_from(&batch.source);
                latest.unit_id = batch.unit_id;
                latest.scheduled = batch.scheduled;
                latest.readings.clone_from(&batch.readings);
            }
            None => {
                self.batches.insert(
                    (batch.device.clone(), batch.poll_interval_ms),
                    batch.clone(),
                );
            }
        }
    }

    /// Every point's latest reading, with its device, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Reading)> {
        self.batches
            .values()
            .flat_map(|b| b.readings.iter().map(move |r| (&b.device, r)))
    }

    /// Every point's latest reading, with its device and the poll interval of its class (ms), in
    /// no particular order.
    pub fn iter_with_interval(&self) -> impl Iterator<Item = (&Arc<str>, u64, &Reading)> {
        self.batches.iter().flat_map(|((device, interval_ms), b)| {
            b.readings.iter().map(move |r| (device, *interval_ms, r))
        })
    }

    /// Number of points with a reading.
    pub fn len(&self) -> usize {
        self.batches.values().map(|b| b.readings.len()).sum()
    }

    /// No reading yet.
    pub fn is_empty(&self) -> bool {
        self.batches.values().all(|b| b.readings.is_empty())
    }
}

/// Latest value of every point, and the counters of every component, for status displays.
#[derive(Debug, Default)]
pub struct LiveState {
    /// (device, point) → latest reading.
    pub latest: Mutex<LatestReadings>,
    /// One entry per source.
    pub pollers: Mutex<Vec<(Arc<str>, Arc<PollerStats>)>>,
    /// One entry per uplink: name, spool, status.
    pub uplinks: Mutex<Vec<UplinkView>>,
    /// Computed metrics and events for live displays (the HTTP side doors); producers call
    /// `records.send(record)`, which never waits.
    pub records: crate::http::RecordFeed,
    /// Values expected, received and delivered per device, stream and hour.
    pub completeness: Arc<crate::completeness::Completeness>,
    /// Progress of the stages and what the stores lost (`/readyz`, the watchdog, `/metrics`).
    pub health: Arc<health::Health>,
    /// The concentration limits of the configured stacks, set once at start (the limit lines of
    /// the dashboards).
    pub stack_limits: std::sync::OnceLock<Vec<crate::calc::limits::StackLimit>>,
    /// The trends in memory (`/api/v1/series`), fed by the fan-out.
    pub series: Arc<crate::series::SeriesStore>,
}

impl LiveState {
    /// Why the pipeline is not healthy (stalled stages, failing stores); empty when it is.
    pub fn problems(&self) -> Vec<String> {
        self.health.problems(&self.poller_cycles())
    }

    /// The stalled stages only: what stops the watchdog.
    pub fn stalls(&self) -> Vec<String> {
        self.health.stalls(&self.poller_cycles())
    }

    fn poller_cycles(&self) -> Vec<(String, u64)> {
        self.pollers
            .lock()
            .expect("live state lock is never poisoned: holders do not panic")
            .iter()
            .map(|(n, s)| {
                (
                    n.to_string(),
                    s.cycles.load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// What the status display knows of an uplink.
#[derive(Debug, Clone)]
pub struct UplinkView {
    /// Uplink name.
    pub name: String,
    /// Its spool.
    pub spool: SpoolHandle,
    /// Its connection status.
    pub status: watch::Receiver<UplinkStatus>,
    /// Acquisition to acknowledgement of the records it delivered.
    pub publish_latency: Arc<crate::histogram::Histogram>,
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
    let fan_out = tokio::spawn(fan_out(
        inputs,
        targets,
        cfg.site.clone(),
        live.clone(),
        calc,
        derived,
        regulator,
        initial,
        drain_deadline.clone(),
    ));
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

/// What the fan-out reads: the pollers' batches (it ends when they are all gone) and the events the
/// uplinks produce (device write attempts).
struct FanInputs {
    batches: mpsc::Receiver<ReadingBatch>,
    events: mpsc::Receiver<Record>,
}

/// Where fan-out sends the records of the streams an uplink carries.
struct FanTarget {
    spool: SpoolHandle,
    /// Whether the spool is failing, and when to try it again ([`health`]).
    gate: health::StoreGate,
    streams: Vec<Stream>,
    topics: TopicTemplates,
    /// The uplink reads records with their decoded form (`SpoolHandle::read_after_decoded`): hand
    /// each unsealed record over beside its body, so that it is not parsed back.
    hand_over_decoded: bool,
}

/// What the fan-out works with besides its inputs and targets.
struct FanContext {
    site: String,
    live: Arc<LiveState>,
    regulator: regulated::Regulator,
    /// Fired when a stop's grace period ended: store nothing more, count what is left.
    drain_deadline: CancellationToken,
}

impl FanContext {
    /// Seal, store in history and append to the spools.
    async fn hand_on(&mut self, targets: &mut [FanTarget], records: &mut Vec<Record>) {
        if records.is_empty() {
            return;
        }
        if self.drain_deadline.is_cancelled() {
            count_undrained(&self.live, targets, records);
            return;
        }
        let seals = tokio::select! {
            seals = self.regulator.process(records) => seals,
            _ = self.drain_deadline.cancelled() => {
                count_undrained(&self.live, targets, records);
                return;
            }
        };
        route(
            targets,
            &self.site,
            records,
            &seals,
            &self.live.health,
            &self.drain_deadline,
        )
        .await;
    }
}

/// Count `records` as lost at shutdown, once for every spool that would have taken them.
fn count_undrained(live: &LiveState, targets: &[FanTarget], records: &[Record]) {
    let batches = records
        .iter()
        .filter(|r| matches!(r, Record::Batch(_)))
        .count();
    live.health.undrained(batches as u64);
    for t in targets {
        let n = records
            .iter()
            .filter(|r| t.streams.contains(&r.stream()))
            .count();
        live.health.lost(t.gate.name(), "shutdown", n as u64);
    }
}

/// Route poll batches to every uplink's spool that carries the `live` stream.
///
/// Batches that arrive together are appended in one transaction per spool, up to
/// [`MAX_BATCHES_PER_APPEND`]: under load this turns many small fsyncs into few larger ones. A
/// spool or history store that keeps failing is isolated ([`health`]): what it refuses is
/// counted as lost, and acquisition goes on. `initial` records (the configuration change of the
/// ledger) go first. Closed windows are stored in the history store and regulated records sealed
/// into the ledger before they reach a spool.
#[allow(clippy::too_many_arguments)]
async fn fan_out(
    inputs: FanInputs,
    mut targets: Vec<FanTarget>,
    site: String,
    live: Arc<LiveState>,
    mut calc: Option<calc_state::CalcStage>,
    mut derived: Option<crate::derived::Engine>,
    regulator: regulated::Regulator,
    mut initial: Vec<Record>,
    drain_deadline: CancellationToken,
) {
    let FanInputs {
        batches: mut rx,
        mut events,
    } = inputs;
    let mut cx = FanContext {
        site,
        live: live.clone(),
        regulator,
        drain_deadline,
    };
    if !initial.is_empty() {
        publish_derived(&live, &initial);
        cx.hand_on(&mut targets, &mut initial).await;
    }
    let mut burst = Vec::with_capacity(MAX_BATCHES_PER_APPEND);
    let mut lingering = Linger::default();
    // Windows must close even when their data stops (a dead stack analyser still owes the
    // platform an invalid hour), so the calculators are also flushed on a timer.
    let mut flush_tick = tokio::time::interval(CALC_FLUSH_EVERY);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Derived points with a clock period are evaluated on this tick (their period is ≥ 1 s).
    let periodic = derived.as_ref().is_some_and(|d| d.has_periodic());
    let mut derived_tick = tokio::time::interval(Duration::from_secs(1));
    derived_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut records: Vec<Record> = Vec::new();
        live.health.fan_out_idle();
        tokio::select! {
            n = rx.recv_many(&mut burst, MAX_BATCHES_PER_APPEND) => {
                if n == 0 {
                    break;
                }
                live.health.fan_out_busy();
                lingering.gather(&mut rx, &mut burst).await;
                remember_latest(&live, &burst);
                for batch in burst.drain(..) {
                    let derived = calc.as_mut().map(|c| c.on_batch(&batch)).unwrap_or_default();
                    records.push(Record::Batch(batch));
                    records.extend(derived);
                }
            }
            _ = flush_tick.tick(), if calc.is_some() => {
                live.health.fan_out_busy();
                if let Some(c) = calc.as_mut() {
                    records = c.flush(Timestamp::now());
                }
            }
            // Events from the uplinks (device write attempts) and about the agent itself
            // ([`Agent::report`]); the branch sleeps once they are all gone.
            Some(event) = events.recv() => {
                live.health.fan_out_busy();
                records.push(event);
            }
            _ = derived_tick.tick(), if periodic => live.health.fan_out_busy(),
        }
        if let Some(d) = derived.as_mut() {
            derived_stage::run(d, calc.as_mut(), &live, &mut records);
        }
        publish_derived(&live, &records);
        live.completeness.received(&records);
        records.extend(live.completeness.tick(Timestamp::now()).await);
        cx.hand_on(&mut targets, &mut records).await;
        if let Some(c) = calc.as_mut() {
            c.saved_after(&records).await;
        }
    }
    live.health.fan_out_busy();
    if let Some(c) = calc.as_mut() {
        let mut records = c.flush(Timestamp::now());
        publish_derived(&live, &records);
        live.completeness.received(&records);
        cx.hand_on(&mut targets, &mut records).await;
        c.saved_after(&records).await;
    }
    // The hour in progress is reported as partial; after a restart it continues.
    let mut partial = live.completeness.partial(Timestamp::now());
    cx.hand_on(&mut targets, &mut partial).await;
    let undrained = live.health.undrained_total();
    if undrained > 0 {
        tracing::error!(
            "{undrained} poll batches could not be stored within the grace period and are lost"
        );
    }
    live.health.fan_out_idle();
}

/// Group commit that waits only where waiting gathers something. A source reading many devices
/// behind one gateway sends its batches in a trickle, and [`APPEND_LINGER`] joins them into one
/// append. Where every device is its own connection, the sources are spread over the interval
/// (each a few tens of milliseconds from the next) and the wait gathers nothing: it only costs a
/// timer wake-up per batch. So after [`LINGER_FRUITLESS`] waits in a row that gathered nothing,
/// a burst takes only what has already arrived, and every [`LINGER_PROBE_EVERY`]th burst waits
/// again to notice when batches trickle in again.
#[derive(Debug, Default)]
struct Linger {
    fruitless: u32,
    skipped: u32,
}

impl Linger {
    async fn gather(
        &mut self,
        rx: &mut mpsc::Receiver<ReadingBatch>,
        burst: &mut Vec<ReadingBatch>,
    ) {
        if self.fruitless >= LINGER_FRUITLESS {
            self.skipped = self.skipped.wrapping_add(1);
            if !self.skipped.is_multiple_of(LINGER_PROBE_EVERY) {
                while burst.len() < MAX_BATCHES_PER_APPEND {
                    match rx.try_recv() {
                        Ok(batch) => burst.push(batch),
                        Err(_) => break,
                    }
                }
                return;
            }
        }
        let before = burst.len();
        linger(rx, burst).await;
        self.fruitless = if burst.len() > before {
            0
        } else {
            self.fruitless.saturating_add(1)
        };
    }
}

/// Adds to `burst` what arrives within [`APPEND_LINGER`], until it holds
/// [`MAX_BATCHES_PER_APPEND`] batches or the channel closes (see [`APPEND_LINGER`]).
async fn linger(rx: &mut mpsc::Receiver<ReadingBatch>, burst: &mut Vec<ReadingBatch>) {
    let until = tokio::time::Instant::now() + APPEND_LINGER;
    while burst.len() < MAX_BATCHES_PER_APPEND {
        let room = MAX_BATCHES_PER_APPEND - burst.len();
        match tokio::time::timeout_at(until, rx.recv_many(burst, room)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Keep the latest reading of every point for the status displays and the HTTP API, and the
/// trends.
fn remember_latest(live: &LiveState, batches: &[ReadingBatch]) {
    let mut latest = live
        .latest
        .lock()
        .expect("live state lock is never poisoned: holders do not panic");
    for batch in batches {
        latest.update(batch);
    }
    drop(latest);
    live.series.record_batches(batches);
}

/// Hand computed metrics, events and aggregates to the live feed (dashboard, SSE) and the trends.
fn publish_derived(live: &LiveState, records: &[Record]) {
    live.series.record(records);
    for r in records {
        if !matches!(r, Record::Batch(_)) {
            live.records.send(r.clone());
        }
    }
}

/// Append `records` to the spool of every uplink that carries their stream; a sealed record
/// (`seals[i]`, see [`regulated`]) carries its seal in the spool body.
async fn route(
    targets: &mut [FanTarget],
    site: &str,
    records: &[Record],
    seals: &[Option<crate::ledger::LedgerRecord>],
    health: &health::Health,
    drain_deadline: &CancellationToken,
) {
    let created = Timestamp::now();
    // Decoded forms, made on first use and shared by every uplink that takes them.
    let mut shared: Vec<Option<Decoded>> = vec![None; records.len()];
    for target in targets.iter_mut() {
        let mut new = Vec::with_capacity(records.len());
        let mut decoded = Vec::new();
        for (i, record) in records.iter().enumerate() {
            let stream = record.stream();
            if !target.streams.contains(&stream) {
                continue;
            }
            let seal = seals.get(i).and_then(Option::as_ref);
            let body = match seal {
                Some(seal) => crate::ledger::capture::sealed_body(seal),
                None => crate::publish::body::encode(record),
            };
            if target.hand_over_decoded {
                // Poll batches are the bulk of the traffic. A sealed record's payload carries its
                // seal, which only the body has. Whether a form may stand in for its body is the
                // uplink's call (`Record::is_batch_exact_in_json`).
                let hand_over = seal.is_none() && matches!(record, Record::Batch(_));
                decoded.push(hand_over.then(|| {
                    shared[i]
                        .get_or_insert_with(|| Arc::new(record.clone()) as Decoded)
                        .clone()
                }));
            }
            new.push(NewRecord {
                stream,
                topic: crate::publish::topic::topic_for(&target.topics, site, record),
                body,
                created,
            });
        }
        if !new.is_empty() {
            tokio::select! {
                () = append_or_count(target, new, decoded, health) => {}
                _ = drain_deadline.cancelled() => {}
            }
        }
    }
}

/// Append to the target's spool: a few quick retries while it is healthy, one probe per backoff
/// while it fails ([`health::StoreGate`]). What it does not take is counted as lost with the
/// reason (`disk_full` when even the spool's own disk-full drops made no room, `io_error`,
/// `timeout`, `closed`, `store_failing` while the probe is not due). A failed append gives the
/// records back, so nothing is copied for the retry.
async fn append_or_count(
    target: &mut FanTarget,
    mut records: Vec<NewRecord>,
    mut decoded: Vec<Option<Decoded>>,
    health: &health::Health,
) {
    let count = records.len() as u64;
    let attempts = target.gate.attempts();
    let mut delay = Duration::from_millis(100);
    let mut last = (String::from("failing, probe not due"), "store_failing");
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        let call = target.spool.try_append_decoded(records, decoded);
        let result = match tokio::time::timeout(health::STORE_CALL_TIMEOUT, call).await {
            Ok(result) => result,
            Err(_) => {
                last = (
                    format!("no answer within {:?}", health::STORE_CALL_TIMEOUT),
                    "timeout",
                );
                // The records went with the call: nothing left to retry.
                target.gate.failed(health, &last.0);
                health.lost(target.gate.name(), last.1, count);
                return;
            }
        };
        match result {
            Ok(_) => {
                target.gate.ok(health);
                return;
            }
            Err(failed) => {
                let reason = match failed.error {
                    crate::spool::SpoolError::DiskFull { .. } => "disk_full",
                    crate::spool::SpoolError::Closed => "closed",
                    _ => "io_error",
                };
                last = (failed.error.to_string(), reason);
                let AppendFailed {
                    records: r,
                    decoded: d,
                    ..
                } = *failed;
                (records, decoded) = (r, d);
                if reason == "closed" {
                    break;
                }
            }
        }
    }
    if attempts > 0 {
        target.gate.failed(health, &last.0);
    }
    health.lost(target.gate.name(), last.1, count);
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

/// Replace the first MQTT uplink's broker (`--broker mqtt://host:port`).
pub fn override_broker(cfg: &mut Config, url: &str) -> anyhow::Result<()> {
    let url: BrokerUrl = url
        .parse()
        .map_err(|e: crate::config::BrokerUrlError| anyhow::anyhow!(e.for_flag("--broker")))?;
    let Some(m) = cfg.uplinks.iter_mut().find_map(|u| match &mut u.kind {
        UplinkKind::Mqtt(m) => Some(m),
        _ => None,
    }) else {
        bail!("--broker given but the configuration has no MQTT uplink");
    };
    m.broker = url.addr;
    m.tls = url.tls;
    Ok(())
}

/// The text `smeltwatch check` prints for a valid configuration: a summary and the read plan.
pub fn check_report(cfg: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let devices: usize = cfg.sources.iter().map(|s| s.devices.len()).sum();
    let points: usize = cfg
        .sources
        .iter()
        .flat_map(|s| &s.devices)
        .map(|d| d.points.len())
        .sum();
    let _ = writeln!(
        out,
        "{}: ok: site {:?}, {} sources, {} devices, {} points, {} uplinks{}",
        cfg.path.display(),
        cfg.site,
        cfg.sources.len(),
        devices,
        points,
        cfg.uplinks.len(),
        if cfg.simulator.is_some() {
            ", simulator"
        } else {
            ""
        }
    );
    if !cfg.meter_buses.is_empty() {
        let meters = cfg.meter_buses.iter().flat_map(|b| &b.meters);
        let _ = writeln!(
            out,
            "DL/T 645: {} meter buses, {} meters, {} points",
            cfg.meter_buses.len(),
            meters.clone().count(),
            meters.map(|m| m.points.len()).sum::<usize>()
        );
    }
    if let Some(calc) = &cfg.calc {
        match crate::calc::Pipeline::new(calc) {
            Ok(_) => {
                let _ = writeln!(
                    out,
                    "calculators: {} potlines, {} stacks",
                    calc.potlines.len(),
                    calc.stacks.len()
                );
            }
            Err(e) => {
                let _ = writeln!(out, "calculators: INVALID: {e}");
            }
        }
    }
    out.push_str(&crate::derived::check_report(&cfg.derived));
    for source in &cfg.sources {
        let plans = plan::plan_source(source);
        let _ = writeln!(out);
        out.push_str(&plan::render_plan(source, &plans));
    }
    for bus in &cfg.meter_buses {
        let plans = crate::dlt645::poller::plan_bus(bus);
        let _ = writeln!(out);
        out.push_str(&crate::dlt645::poller::render_plan(bus, &plans));
    }
    out
}

/// Read `count` registers for `smeltwatch probe`.
pub async fn probe(
    addr: SocketAddr,
    unit: u8,
    area: Area,
    address: u16,
    count: u16,
    timeout: Duration,
) -> anyhow::Result<Vec<u16>> {
    use tokio_modbus::prelude::*;
    if count == 0 || count > 125 {
        bail!("--count {count}: expected 1 to 125 registers");
    }
    let mut ctx = tokio::time::timeout(
        timeout,
        tokio_modbus::client::tcp::connect_slave(addr, Slave(unit)),
    )
    .await
    .with_context(|| format!("connecting to {addr}: no answer within {timeout:?}"))?
    .with_context(|| format!("connecting to {addr}"))?;
    let call = async {
        match area {
            Area::Input => ctx.read_input_registers(address, count).await,
            _ => ctx.read_holding_registers(address, count).await,
        }
    };
    let words = tokio::time::timeout(timeout, call)
        .await
        .with_context(|| format!("unit {unit} at {addr}: no reply within {timeout:?}"))?
        .with_context(|| format!("unit {unit} at {addr}"))?
        .map_err(|code| {
            anyhow::anyhow!(
                "unit {unit} at {addr} answered {} {address}+{count} with exception {code:?}",
                area.as_str()
            )
        })?;
    Ok(words)
}

/// Quality counts summed over every poller.
pub fn quality_totals(live: &LiveState) -> [u64; Quality::ALL.len()] {
    let mut totals = [0u64; Quality::ALL.len()];
    for (_, stats) in live
        .pollers
        .lock()
        .expect("live state lock is never poisoned: holders do not panic")
        .iter()
    {
        for (i, t) in totals.iter_mut().enumerate() {
            *t += stats.readings_by_quality[i].load(std::sync::atomic::Ordering::Relaxed);
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Value;

    fn batch(device: &str, interval_ms: u64, points: &[(&str, f64)], ts: i64) -> ReadingBatch {
        ReadingBatch {
            source: "line1".into(),
            device: device.into(),
            unit_id: 1,
            poll_interval_ms: interval_ms,
            scheduled: Timestamp(ts),
            readings: points
                .iter()
                .map(|(p, v)| Reading {
                    point: (*p).into(),
                    value: Some(Value::Float(*v)),
                    unit: "V".into(),
                    quality: Quality::Good,
                    ts: Timestamp(ts),
                })
                .collect(),
        }
    }

    #[test]
    fn latest_readings_keep_the_last_batch_of_each_device_and_poll_class() {
        let mut latest = LatestReadings::default();
        assert!(latest.is_empty());
        latest.update(&batch("pot_001", 1000, &[("cell_voltage_v", 4.0)], 1));
        latest.update(&batch("pot_001", 60_000, &[("energy_kwh", 7.0)], 1));
        latest.update(&batch("pot_002", 1000, &[("cell_voltage_v", 4.1)], 1));
        latest.update(&batch("pot_001", 1000, &[("cell_voltage_v", 8.5)], 2));
        let mut seen: Vec<(String, String, Option<f64>, i64)> = latest
            .iter()
            .map(|(d, r)| {
                let v = r.value.as_ref().and_then(Value::as_f64);
                (d.to_string(), r.point.to_string(), v, r.ts.unix_ms())
            })
            .collect();
        seen.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        assert_eq!(
            seen,
            [
                ("pot_001".into(), "cell_voltage_v".into(), Some(8.5), 2),
                ("pot_001".into(), "energy_kwh".into(), Some(7.0), 1),
                ("pot_002".into(), "cell_voltage_v".into(), Some(4.1), 1),
            ]
        );
        assert_eq!(latest.len(), 3);
        assert!(!latest.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn batches_that_follow_within_the_linger_join_the_first_one() {
        let (tx, mut rx) = mpsc::channel(256);
        // A source reading its devices one after the other: one batch a millisecond, then a
        // pause, then a long run.
        tokio::spawn(async move {
            let mut n = 0;
            for gap_ms in [0, 1, 1, 1, 20].into_iter().chain([1; 40]) {
                tokio::time::sleep(Duration::from_millis(gap_ms)).await;
                n += 1;
                tx.send(batch(&format!("pot_{n:03}"), 1000, &[], n))
                    .await
                    .unwrap();
            }
        });
        let mut sizes = Vec::new();
        let mut burst = Vec::new();
        loop {
            let started = tokio::time::Instant::now();
            if rx.recv_many(&mut burst, MAX_BATCHES_PER_APPEND).await == 0 {
                break;
            }
            linger(&mut rx, &mut burst).await;
            assert!(started.elapsed() <= Duration::from_millis(20) + APPEND_LINGER);
            sizes.push(burst.len());
            burst.clear();
        }
        // 4 within the linger of the first; the run after the pause in bursts of 5 (the first and
        // those less than 5 ms after it).
        assert_eq!(sizes[0], 4, "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 45, "{sizes:?}");
        assert!(
            sizes[1..sizes.len() - 1].iter().all(|&n| n == 5),
            "{sizes:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fan_out_stops_waiting_where_waiting_gathers_nothing_and_resumes_when_it_would() {
        let (tx, mut rx) = mpsc::channel(256);
        // Sources of one device each, spread 50 ms apart; then one source of many devices.
        tokio::spawn(async move {
            let mut n = 0;
            for gap_ms in [50; 60].into_iter().chain([1; 100]) {
                tokio::time::sleep(Duration::from_millis(gap_ms)).await;
                n += 1;
                tx.send(batch(&format!("pot_{n:03}"), 1000, &[], n))
                    .await
                    .unwrap();
            }
        });
        let mut lingering = Linger::default();
        let (mut waits, mut sizes) = (Vec::new(), Vec::new());
        let mut burst = Vec::new();
        while rx.recv_many(&mut burst, MAX_BATCHES_PER_APPEND).await > 0 {
            let started = tokio::time::Instant::now();
            lingering.gather(&mut rx, &mut burst).await;
            waits.push(started.elapsed() > Duration::ZERO);
            sizes.push(burst.len());
            burst.clear();
        }
        // The spread part: the first waits, then only the probes.
        let spread = &waits[..60];
        assert!(spread[..LINGER_FRUITLESS as usize].iter().all(|&w| w));
        let later = spread[LINGER_FRUITLESS as usize..]
            .iter()
            .filter(|&&w| w)
            .count();
        assert!((2..=4).contains(&later), "{waits:?}");
        // The trickle: a probe notices it, and from then on bursts of 5 as before.
        assert_eq!(sizes.iter().sum::<usize>(), 160);
        let trickle = &sizes[60..];
        assert!(
            trickle.len() <= 100 / 5 + LINGER_PROBE_EVERY as usize,
            "{sizes:?}"
        );
        assert!(
            trickle[trickle.len() - 5..trickle.len() - 1]
                .iter()
                .all(|&n| n == 5),
            "{sizes:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_burst_is_not_held_back() {
        let (tx, mut rx) = mpsc::channel(256);
        for n in 0..(MAX_BATCHES_PER_APPEND as i64 + 3) {
            tx.send(batch("pot_001", 1000, &[], n)).await.unwrap();
        }
        let started = tokio::time::Instant::now();
        let mut burst = Vec::new();
        rx.recv_many(&mut burst, MAX_BATCHES_PER_APPEND).await;
        linger(&mut rx, &mut burst).await;
        assert_eq!(burst.len(), MAX_BATCHES_PER_APPEND);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
