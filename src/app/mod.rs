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
mod signals;
mod sparkplug;
pub mod spools;
mod start;
mod supervise;
pub mod systemd;

use signals::reload_signal;
pub use signals::shutdown_on_signal;
use start::preflight;
pub use start::start;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::live::LiveState;
use crate::model::{Event, EventKind, EventPhase, Record, Timestamp, Value};
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

/// The spool file of an uplink.
pub fn spool_path(cfg: &Config, uplink: &str) -> PathBuf {
    cfg.state_dir.join(format!("spool-{uplink}.db"))
}
