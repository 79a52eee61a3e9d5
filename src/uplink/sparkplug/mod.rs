//! The Sparkplug B 3.0 edge-node uplink: smeltwatch is the edge node `spBv1.0/{group}/…/{edge}`,
//! each configured Modbus device a Sparkplug device, each point a device metric, and each device
//! of the `live` derived points a Sparkplug device too; with the `metrics` stream, the
//! calculators' figures and the `metrics` derived points are metrics of the node itself (payloads
//! from [`codec::sparkplug`](crate::codec::sparkplug)).
//!
//! # Session (Sparkplug 3.0 §5)
//! For every connection attempt the uplink:
//! 1. takes the next **bdSeq** (0 the first time, then +1 per CONNECT, wrapping 255 → 0), persisted
//!    in the spool's `kv` table *before* connecting, so it also increments across restarts;
//! 2. CONNECTs (MQTT 3.1.1, clean session) with a fresh client whose **Will** is the NDEATH carrying
//!    that bdSeq (QoS 1, not retained): the Will is rebuilt for every connection;
//! 3. subscribes to `NCMD/{edge}` and `DCMD/{edge}/#` at QoS 1 and waits for the SUBACKs;
//! 4. publishes **NBIRTH** (seq 0, `bdSeq`, `Node Control/Rebirth`, the node metrics with their
//!    last known values) and one **DBIRTH** per device with its last known values (a device known
//!    dead gets its DDEATH right after);
//! 5. reads its spool in id order: live poll batches become **DDATA** by exception (aliases only),
//!    a batch whose readings are all `comm_fail` becomes **DDEATH** (once; never for a derived
//!    device, whose bad results are DATA with their quality), and the first batch after that a
//!    **DBIRTH**; metric batches become **NDATA** by exception (their figures that are node
//!    metrics). Records that were already waiting when the session started are
//!    replayed as DDATA (NDATA) with `is_historical` and their acquisition timestamps, without
//!    touching the live state. Sparkplug DATA is QoS 0, so the broker acknowledges none of it; but TCP
//!    delivers in order, so an answer to a packet sent after the data proves the data arrived.
//!    After each group of records (one spool batch, at most [`READ_BATCH`]) the uplink sends an
//!    UNSUBSCRIBE of a topic it never subscribed to (`…/NCMD/{edge}/delivery-check`), which the
//!    broker must answer with an UNSUBACK; the group leaves the spool, and counts as delivered
//!    (completeness, `acked_total`), only when that answer arrives. One group is in flight at a
//!    time. Without an answer within `keep_alive` (a broker that froze with its TCP connection
//!    open) the connection is dropped and the group stays in the spool, to be replayed, as
//!    historical, after the next births (its `seq` numbering starts again at NBIRTH, so the host
//!    takes the replay as new messages of a new session). Pings cannot serve as that proof: the
//!    MQTT client resets its keep-alive timer on every packet it sends, so under steady traffic no
//!    PINGREQ ever goes out.
//!
//! An NCMD `Node Control/Rebirth = true` makes it publish NBIRTH (same bdSeq, seq 0) and every
//! DBIRTH again. On shutdown it publishes NDEATH itself (QoS 1, waits for the PUBACK), then
//! DISCONNECTs, which discards the Will. A lost connection is retried with backoff.
//!
//! # Primary host (Sparkplug 3.0 §5)
//! With a `primary_host_id`, step 3 also subscribes to `spBv1.0/STATE/{host}` (QoS 1) and the
//! births wait until that retained topic says `{"online":true,"timestamp":…}`. A STATE whose
//! timestamp is older than the last one accepted is ignored. When the host goes offline
//! (`online: false`, timestamp not older than its last online) the uplink publishes NDEATH,
//! DISCONNECTs and connects again with the next bdSeq, then waits for the host once more. Meanwhile
//! the pollers keep appending to the spool; what piled up is replayed as historical after the
//! new births. The 2.2 form of the payload (`ONLINE` / `OFFLINE`) is accepted too.
//!
//! # Device writes (DCMD)
//! A DCMD metric (by alias or by name) asks to write a device point. The request goes to the
//! [`DeviceWriteGate`] given with [`SparkplugUplink::with_device_writes`], which writes through the
//! source's poller only when the uplink allows device writes, the point is `writable` and the value
//! is within its range and type ([`crate::modbus::write`]). Requests are served one after the other
//! in arrival order; every attempt, written, refused or failed, becomes an event (`kind = "write"`)
//! on the events stream, with the old and the new value. The device's next poll reports the new
//! value as DDATA. Without a gate, DCMDs are refused and logged.
//!
//! Events and emissions are not carried over Sparkplug, nor the figures that are no node metric
//! (the completeness reports); such records are acked with their group, and counted.
//!
//! # Dropped commands
//! Incoming NCMD, DCMD and STATE messages wait for the session in a bounded queue, so that a
//! burst never stalls the MQTT event loop; a message that finds the queue full is dropped, and so
//! is a DCMD write that finds the writer's queue full. Each drop counts in
//! [`SparkplugStatus::commands_dropped`] (`smeltwatch_uplink_commands_dropped_total`), is logged,
//! and, with a [`DeviceWriteGate`], raises a `command_dropped` event (a dropped DCMD write also
//! raises its refused `write` event).
//!
//! # Layout
//! This file holds the uplink, its settings and its connection loop; `session` one session on an
//! established connection, `send` what a session publishes from the spool, `dcmd` the device
//! writes.

mod dcmd;
mod send;
mod session;
mod status;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::codec::sparkplug::{self as spb, EdgeNodeModel, MessageType, SeqCounter};
use crate::completeness::Completeness;
use crate::config::MqttConfig;
use crate::modbus::write::DeviceWriters;
use crate::model::{Record, Timestamp};
use crate::mqtt::tls::{self, TlsError};
use crate::spool::{SpoolError, SpoolHandle};
use crate::uplink::RunError;
use crate::uplink::backoff::Backoff;
use crate::uplink::status::{Reporter, UplinkStatus};

use dcmd::serve_writes;
pub use session::HostState;
use session::{NodeState, Session, SessionError};
use status::StatusTx;

/// The spool `kv` key holding the last bdSeq used.
pub const BD_SEQ_KEY: &str = "sparkplug.bdseq";
/// Spool records read per batch.
const READ_BATCH: usize = 256;
/// How long the SUBACKs, the NDEATH's PUBACK and the DISCONNECT may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time [`SparkplugUplink::run`] may take after the shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// DCMD write requests waiting for the writer before new ones are refused.
const DCMD_QUEUE: usize = 64;
/// Incoming commands (NCMD, DCMD, STATE) waiting for the session.
const COMMAND_QUEUE: usize = 16;
/// The last level of the topic the delivery proof unsubscribes from (under the node's NCMD topic,
/// never subscribed to).
const PROOF_LEVEL: &str = "delivery-check";

/// Sparkplug identity of the edge node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparkplugSettings {
    /// Sparkplug group id.
    pub group_id: String,
    /// Edge node id (unique within the group).
    pub edge_node_id: String,
    /// The primary host application whose STATE gates the births, if any.
    pub primary_host_id: Option<String>,
}

/// Where DCMD writes go: the uplink's permission, the sources' write queues, the events stream.
#[derive(Debug, Clone)]
pub struct DeviceWriteGate {
    /// `[uplinks.device_writes] enabled`: when false every DCMD write is refused (with an event).
    pub enabled: bool,
    /// `[uplinks.device_writes] max_command_age`: a DCMD further than this from the clock is
    /// refused.
    pub max_command_age: Duration,
    /// Every device's configuration and its source's write queue.
    pub writers: DeviceWriters,
    /// The events stream (fan-out): one event per write attempt.
    pub events: mpsc::Sender<Record>,
}

/// Why a Sparkplug uplink cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SparkplugError {
    /// A Sparkplug id is empty or contains `+`, `/` or `#`.
    #[error("uplink {uplink:?}: {what} {value:?} must be non-empty and free of '+', '/' and '#'")]
    BadId {
        /// The uplink name.
        uplink: String,
        /// `group_id` or `edge_node_id`.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// The TLS settings cannot be used.
    #[error("uplink {uplink:?}: {source}")]
    Tls {
        /// The uplink name.
        uplink: String,
        /// What is wrong.
        #[source]
        source: TlsError,
    },
}

/// What the uplink is doing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SparkplugStatus {
    /// Births published in the current connection (NBIRTH and DBIRTHs done).
    pub online: bool,
    /// Connected, and waiting for the primary host to be online before the births.
    pub waiting_for_host: bool,
    /// Times the primary host went offline during a session (each ended it with NDEATH).
    pub host_offline_total: u64,
    /// The bdSeq of the current (or last) connection.
    pub bd_seq: Option<u64>,
    /// Successful connections since start.
    pub connects: u64,
    /// NBIRTHs published since start (connections and rebirths).
    pub nbirths: u64,
    /// Spool records acked since start: those that produced messages once the broker proved it
    /// received them (the UNSUBACK after them), the others at once.
    pub acked_total: u64,
    /// Records sent whose proof of arrival has not come yet (at most one spool batch).
    pub unproven: u64,
    /// Commands dropped because a queue was full (see the module documentation), since start.
    pub commands_dropped: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// The Sparkplug edge-node uplink. Build with [`SparkplugUplink::new`], spawn [`SparkplugUplink::run`].
pub struct SparkplugUplink {
    name: String,
    mqtt: MqttConfig,
    ids: SparkplugSettings,
    model: EdgeNodeModel,
    spool: SpoolHandle,
    /// Its [`SparkplugStatus`] and the [`UplinkStatus`] every uplink reports, with the
    /// completeness accounting its deliveries count in.
    status_tx: StatusTx,
    tls: Option<Arc<rustls::ClientConfig>>,
    writes: Option<DeviceWriteGate>,
    /// Acquisition to proof of delivery of each reading batch.
    publish_latency: Arc<crate::histogram::Histogram>,
    shutdown_grace: Duration,
}

impl fmt::Debug for SparkplugUplink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SparkplugUplink")
            .field("name", &self.name)
            .field("ids", &self.ids)
            .finish_non_exhaustive()
    }
}

/// How a session ended.
enum Ended {
    Shutdown,
    Lost(SessionError),
    /// The primary host went offline: NDEATH and DISCONNECT are out, connect again.
    HostOffline,
}

impl SparkplugUplink {
    /// Check the ids and keep the settings. `mqtt` gives the broker, credentials, keep-alive,
    /// packet size and backoff; its topic templates and encoding are not used.
    pub fn new(
        name: &str,
        mqtt: &MqttConfig,
        ids: SparkplugSettings,
        model: EdgeNodeModel,
        spool: SpoolHandle,
    ) -> Result<SparkplugUplink, SparkplugError> {
        let tls = Self::checked(name, mqtt, &ids)?;
        Ok(SparkplugUplink {
            name: name.to_owned(),
            mqtt: mqtt.clone(),
            ids,
            model,
            spool,
            status_tx: StatusTx::new(Reporter::new(name)),
            tls,
            writes: None,
            publish_latency: Arc::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        })
    }

    /// Everything [`SparkplugUplink::new`] can refuse, without a spool: a configuration reload
    /// runs it before it stops the running agent, so that unusable TLS files keep the agent
    /// running.
    pub fn preflight(
        name: &str,
        mqtt: &MqttConfig,
        ids: &SparkplugSettings,
    ) -> Result<(), SparkplugError> {
        Self::checked(name, mqtt, ids).map(drop)
    }

    /// Check the ids; the TLS configuration (files read) of an `mqtts://` broker.
    fn checked(
        name: &str,
        mqtt: &MqttConfig,
        ids: &SparkplugSettings,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, SparkplugError> {
        for (what, value) in [
            ("group_id", &ids.group_id),
            ("edge_node_id", &ids.edge_node_id),
        ] {
            if value.is_empty() || value.contains(['+', '/', '#']) {
                return Err(SparkplugError::BadId {
                    uplink: name.to_owned(),
                    what,
                    value: value.clone(),
                });
            }
        }
        if let Some(host) = &ids.primary_host_id
            && (host.is_empty() || host.contains(['+', '/', '#']))
        {
            return Err(SparkplugError::BadId {
                uplink: name.to_owned(),
                what: "primary_host_id",
                value: host.clone(),
            });
        }
        let tls = if mqtt.tls {
            Some(
                tls::client_config(&mqtt.tls_settings).map_err(|source| SparkplugError::Tls {
                    uplink: name.to_owned(),
                    source,
                })?,
            )
        } else {
            None
        };
        Ok(tls)
    }

    /// How long [`SparkplugUplink::run`] may take after the shutdown signal: the NDEATH's PUBACK,
    /// the DISCONNECT and the device writes already queued are waited for within this time
    /// (default [`DEFAULT_SHUTDOWN_GRACE`]). The agent gives its `grace_period`.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Serve DCMD writes through `gate` (without one, DCMDs are refused and logged).
    pub fn with_device_writes(mut self, gate: DeviceWriteGate) -> Self {
        self.writes = Some(gate);
        self
    }

    /// Count the values of the `live` records this uplink delivered (acked after the broker's
    /// proof, see the module documentation) in `completeness`.
    pub fn with_completeness(mut self, completeness: Arc<Completeness>) -> Self {
        self.status_tx = self.status_tx.with_completeness(completeness);
        self
    }

    /// Count the time from each delivered batch's acquisition to its proof in `histogram`.
    pub fn with_publish_latency(mut self, histogram: Arc<crate::histogram::Histogram>) -> Self {
        self.publish_latency = histogram;
        self
    }

    /// A live view of the uplink's state.
    pub fn status(&self) -> watch::Receiver<SparkplugStatus> {
        self.status_tx.subscribe()
    }

    /// The status every uplink reports (connected once the births are out), for the displays.
    pub fn uplink_status(&self) -> watch::Receiver<UplinkStatus> {
        self.status_tx.report().subscribe()
    }

    /// The sender behind [`SparkplugUplink::uplink_status`], for the supervisor.
    pub fn status_sender(&self) -> Arc<watch::Sender<UplinkStatus>> {
        self.status_tx.report().sender()
    }

    fn topic(&self, kind: MessageType, device: Option<&str>) -> String {
        spb::topic(&self.ids.group_id, kind, &self.ids.edge_node_id, device)
    }

    /// The bdSeq for the next CONNECT, persisted before it is used.
    async fn next_bd_seq(&self) -> Result<u64, SpoolError> {
        let prev = self
            .spool
            .kv_get(BD_SEQ_KEY.to_owned())
            .await?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse::<u64>().ok());
        let next = prev.map_or(0, |p| (p + 1) % 256);
        self.spool
            .kv_set(BD_SEQ_KEY.to_owned(), next.to_string().into_bytes())
            .await?;
        Ok(next)
    }

    fn options(&self, bd_seq: u64) -> MqttOptions {
        let will = LastWill::new(
            self.topic(MessageType::NDeath, None),
            spb::encode(&spb::ndeath(bd_seq, Timestamp::now())),
            QoS::AtLeastOnce,
            false,
        );
        let mut o = crate::uplink::options::mqtt_options(&self.mqtt, self.tls.clone(), will);
        o.set_request_channel_capacity(64);
        o
    }

    /// Connect, publish and retry until `shutdown`; then NDEATH, DISCONNECT and return. A failure
    /// that ends the run is logged ([`SparkplugUplink::run_once`] returns it instead).
    pub async fn run(self, shutdown: CancellationToken) {
        if let Err(e) = self.run_once(&shutdown).await {
            tracing::error!(uplink = %self.name, "Sparkplug uplink stopped: {e}");
        }
    }

    /// [`SparkplugUplink::run`], returning `Err` when the run ended without `shutdown`: its spool
    /// closed under it (a lost connection or a failing spool call is retried with backoff). May
    /// be called again after it returned (the supervisor does): the next bdSeq, fresh births, and
    /// what waits in the spool replayed as historical.
    pub async fn run_once(&self, shutdown: &CancellationToken) -> Result<(), RunError> {
        let mut node = NodeState::new(&self.model);
        let mut outcome = Ok(());
        // Set when the shutdown signal is seen: the end of the grace period.
        let mut stopping: Option<Instant> = None;
        // DCMD writes are served one at a time, in arrival order, by their own task, so a slow
        // device never holds up publishing.
        let (dcmd_tx, dcmd_rx) = mpsc::channel(DCMD_QUEUE);
        let writer = tokio::spawn(serve_writes(
            self.name.clone(),
            self.writes.clone(),
            dcmd_rx,
        ));
        let mut backoff =
            Backoff::new(self.mqtt.reconnect_min, self.mqtt.reconnect_max).with_jitter();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let bd_seq = match self.next_bd_seq().await {
                Ok(b) => b,
                Err(SpoolError::Closed) => {
                    outcome = Err(RunError::SpoolClosed);
                    break;
                }
                Err(e) => {
                    tracing::warn!(uplink = %self.name, "cannot persist bdSeq: {e}");
                    self.status_tx
                        .send_modify(|s| s.last_error = Some(format!("bdSeq: {e}")));
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = sleep(backoff.peek()) => {}
                    }
                    continue;
                }
            };
            self.status_tx.send_modify(|s| s.bd_seq = Some(bd_seq));
            let Some((ended, stop)) = self
                .connection(bd_seq, &mut node, &dcmd_tx, &mut backoff, shutdown)
                .await
            else {
                break;
            };
            stopping = stop;
            self.status_tx.send_modify(|s| {
                s.online = false;
                s.waiting_for_host = false;
                s.unproven = 0;
            });
            match ended {
                Ended::Shutdown => break,
                Ended::HostOffline => {
                    self.status_tx.send_modify(|s| s.host_offline_total += 1);
                    // Not a failure: connect again at once and wait for the host there.
                    continue;
                }
                Ended::Lost(reason) => {
                    tracing::warn!(uplink = %self.name, "Sparkplug connection lost: {reason}");
                    self.status_tx
                        .send_modify(|s| s.last_error = Some(reason.to_string()));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sleep(backoff.next_delay()) => {}
            }
        }
        self.finish_writes(dcmd_tx, writer, stopping, shutdown)
            .await;
        tracing::info!(uplink = %self.name, "Sparkplug uplink stopped");
        outcome
    }

    /// One connection with the bdSeq's Will: CONNECT, the session, and the DISCONNECT the session
    /// queued driven out. `None` when the shutdown signal comes before the CONNACK; otherwise how
    /// the session ended and the end of the grace period if the shutdown signal was seen.
    async fn connection(
        &self,
        bd_seq: u64,
        node: &mut NodeState,
        dcmd: &mpsc::Sender<dcmd::DcmdWrite>,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Option<(Ended, Option<Instant>)> {
        let (client, mut eventloop) = AsyncClient::builder(self.options(bd_seq))
            .capacity(64)
            .build();
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = wait_connack(&mut eventloop) => r,
        };
        if let Err(e) = connected {
            return Some((Ended::Lost(e.into()), None));
        }
        backoff.reset();
        self.status_tx.send_modify(|s| s.connects += 1);
        tracing::info!(uplink = %self.name, bd_seq, "Sparkplug session up");
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let mut session = Session {
            up: self,
            client: &client,
            node,
            seq: SeqCounter::default(),
            bd_seq,
            pending: Vec::new(),
            dcmd,
            stopping: None,
        };
        let ended = tokio::select! {
            e = drive(self, &mut eventloop, cmd_tx) => Ended::Lost(e.into()),
            ended = session.run(cmd_rx, shutdown) => ended,
        };
        let stopping = session.stopping;
        if matches!(ended, Ended::Shutdown | Ended::HostOffline) {
            // The session queued its DISCONNECT: drive the event loop until it is out, so that
            // the broker discards the Will.
            let (tx, _rx) = mpsc::channel(1);
            let until = stopping.unwrap_or_else(|| Instant::now() + STEP_TIMEOUT);
            let _ = timeout_at(until, drive(self, &mut eventloop, tx)).await;
        }
        Some((ended, stopping))
    }

    /// Writes already queued are still answered (and reported) within the grace period; then
    /// the writer ends.
    async fn finish_writes(
        &self,
        dcmd: mpsc::Sender<dcmd::DcmdWrite>,
        mut writer: tokio::task::JoinHandle<()>,
        stopping: Option<Instant>,
        shutdown: &CancellationToken,
    ) {
        drop(dcmd);
        let until = stopping
            .or_else(|| {
                shutdown
                    .is_cancelled()
                    .then(|| Instant::now() + self.shutdown_grace)
            })
            .unwrap_or_else(|| Instant::now() + STEP_TIMEOUT);
        if timeout_at(until, &mut writer).await.is_err() {
            tracing::warn!(uplink = %self.name, "device writes still queued at the end of the grace period are dropped");
            writer.abort();
        }
    }
}

/// The STATE topic of a primary host application.
pub fn state_topic(host_id: &str) -> String {
    format!("{}/STATE/{host_id}", spb::NAMESPACE)
}

/// Poll a fresh event loop until its CONNACK (Ok) or the first error.
async fn wait_connack(eventloop: &mut EventLoop) -> Result<(), ConnectionError> {
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await? {
            return Ok(());
        }
    }
}

/// Drive an established connection, forwarding incoming publishes (NCMD/DCMD), until it ends.
async fn drive(
    up: &SparkplugUplink,
    eventloop: &mut EventLoop,
    cmds: mpsc::Sender<rumqttc::Publish>,
) -> ConnectionError {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => forward(up, &cmds, p),
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                return ConnectionError::RequestsDone;
            }
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}

/// Hand an incoming command to the session. A full queue drops it (reported) rather than stall
/// the event loop, which must keep reading the broker's answers.
fn forward(up: &SparkplugUplink, cmds: &mpsc::Sender<rumqttc::Publish>, p: rumqttc::Publish) {
    if let Err(mpsc::error::TrySendError::Full(p)) = cmds.try_send(p) {
        up.command_dropped(
            &String::from_utf8_lossy(&p.topic),
            "the command queue is full",
        );
    }
}

#[cfg(test)]
mod tests;
