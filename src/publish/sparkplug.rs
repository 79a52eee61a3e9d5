//! The Sparkplug B 3.0 edge-node uplink: smeltwatch is the edge node `spBv1.0/{group}/…/{edge}`,
//! each configured Modbus device a Sparkplug device, each point a device metric, and each device
//! of the `live` derived points a Sparkplug device too (payloads from
//! [`encode::sparkplug`](crate::publish::encode::sparkplug)).
//!
//! # Session (Sparkplug 3.0 §5)
//! For every connection attempt the uplink:
//! 1. takes the next **bdSeq** (0 the first time, then +1 per CONNECT, wrapping 255 → 0), persisted
//!    in the spool's `kv` table *before* connecting, so it also increments across restarts;
//! 2. CONNECTs (MQTT 3.1.1, clean session) with a fresh client whose **Will** is the NDEATH carrying
//!    that bdSeq (QoS 1, not retained): the Will is rebuilt for every connection;
//! 3. subscribes to `NCMD/{edge}` and `DCMD/{edge}/#` at QoS 1 and waits for the SUBACKs;
//! 4. publishes **NBIRTH** (seq 0, `bdSeq`, `Node Control/Rebirth`) and one **DBIRTH** per device
//!    with its last known values (a device known dead gets its DDEATH right after);
//! 5. reads its spool in id order: live poll batches become **DDATA** by exception (aliases only),
//!    a batch whose readings are all `comm_fail` becomes **DDEATH** (once; never for a derived
//!    device, whose bad results are DATA with their quality), and the first batch after that a
//!    **DBIRTH**. Records that were already waiting when the session started are
//!    replayed as DDATA with `is_historical` and their acquisition timestamps, without touching
//!    the live state. Sparkplug DATA is QoS 0, so the broker acknowledges none of it; but TCP
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
//! Streams other than `live` are not carried over Sparkplug; such records are acked and counted.
//!
//! # Dropped commands
//! Incoming NCMD, DCMD and STATE messages wait for the session in a bounded queue, so that a
//! burst never stalls the MQTT event loop; a message that finds the queue full is dropped, and so
//! is a DCMD write that finds the writer's queue full. Each drop counts in
//! [`SparkplugStatus::commands_dropped`] (`smeltwatch_uplink_commands_dropped_total`), is logged,
//! and, with a [`DeviceWriteGate`], raises a `command_dropped` event (a dropped DCMD write also
//! raises its refused `write` event).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, PublishOptions,
    QoS, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::completeness::{self, Completeness, Tally};
use crate::config::{MqttConfig, Stream};
use crate::modbus::write::{self, DeviceWriters, Refusal, WriteFailure};
use crate::model::{Event as WriteEvent, EventKind, EventPhase, Record, Timestamp, Value};
use crate::publish::backoff::Backoff;
use crate::publish::encode::sparkplug::{
    self as spb, Change, DeviceState, EdgeNodeModel, MessageType, SeqCounter,
};
use crate::publish::tls::{self, TlsError};
use crate::spool::{SpoolError, SpoolHandle};

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
    status_tx: watch::Sender<SparkplugStatus>,
    tls: Option<Arc<rustls::ClientConfig>>,
    writes: Option<DeviceWriteGate>,
    completeness: Option<Arc<Completeness>>,
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
    Lost(String),
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
        let (status_tx, _) = watch::channel(SparkplugStatus::default());
        Ok(SparkplugUplink {
            name: name.to_owned(),
            mqtt: mqtt.clone(),
            ids,
            model,
            spool,
            status_tx,
            tls,
            writes: None,
            completeness: None,
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
        self.completeness = Some(completeness);
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
        let cfg = &self.mqtt;
        // With a TLS server-name override, rumqttc gets that name as its host (what rustls sends
        // as SNI and verifies) and the socket connector dials the configured host instead.
        let sni = match (&self.tls, &cfg.tls_settings.server_name) {
            (Some(_), Some(name)) => Some(name.clone()),
            _ => None,
        };
        let mut o = MqttOptions::new(
            cfg.client_id.clone(),
            (
                sni.clone().unwrap_or_else(|| cfg.broker.host.clone()),
                cfg.broker.port,
            ),
        );
        if let Some(config) = &self.tls {
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(config.clone())));
        }
        if sni.is_some() {
            let dial = format!("{}:{}", cfg.broker.host, cfg.broker.port);
            o.set_socket_connector(move |_host, network| {
                rumqttc::default_socket_connect(dial.clone(), network)
            });
        }
        let will = spb::encode(&spb::ndeath(bd_seq, Timestamp::now()));
        o.set_keep_alive(u16::try_from(cfg.keep_alive.as_secs().max(1)).unwrap_or(u16::MAX))
            .set_clean_session(true)
            .set_max_packet_size(cfg.max_packet_size, cfg.max_packet_size)
            .set_request_channel_capacity(64)
            .set_last_will(LastWill::new(
                self.topic(MessageType::NDeath, None),
                will,
                QoS::AtLeastOnce,
                false,
            ));
        match (&cfg.username, &cfg.password) {
            (Some(user), Some(password)) => {
                o.set_credentials(user.clone(), password.0.clone());
            }
            (Some(user), None) => {
                o.set_username(user.clone());
            }
            (None, _) => {}
        }
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
    pub async fn run_once(&self, shutdown: &CancellationToken) -> Result<(), String> {
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
                    outcome = Err("spool closed".to_owned());
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
            let (client, mut eventloop) = AsyncClient::builder(self.options(bd_seq))
                .capacity(64)
                .build();
            let connected = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = wait_connack(&mut eventloop) => r,
            };
            let ended = match connected {
                Err(e) => Ended::Lost(e.to_string()),
                Ok(()) => {
                    backoff.reset();
                    self.status_tx.send_modify(|s| s.connects += 1);
                    tracing::info!(uplink = %self.name, bd_seq, "Sparkplug session up");
                    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
                    let mut session = Session {
                        up: self,
                        client: &client,
                        node: &mut node,
                        seq: SeqCounter::default(),
                        bd_seq,
                        pending: Vec::new(),
                        dcmd: &dcmd_tx,
                        stopping: None,
                    };
                    let ended = tokio::select! {
                        e = drive(self, &mut eventloop, cmd_tx) => Ended::Lost(e.to_string()),
                        ended = session.run(cmd_rx, shutdown) => ended,
                    };
                    stopping = session.stopping;
                    if matches!(ended, Ended::Shutdown | Ended::HostOffline) {
                        // The session queued its DISCONNECT: drive the event loop until it is
                        // out, so that the broker discards the Will.
                        let (tx, _rx) = mpsc::channel(1);
                        let until = stopping.unwrap_or_else(|| Instant::now() + STEP_TIMEOUT);
                        let _ = timeout_at(until, drive(self, &mut eventloop, tx)).await;
                    }
                    ended
                }
            };
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
                    self.status_tx.send_modify(|s| s.last_error = Some(reason));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sleep(backoff.next_delay()) => {}
            }
        }
        // Writes already queued are still answered (and reported) within the grace period; then
        // the writer ends.
        drop(dcmd_tx);
        let until = stopping
            .or_else(|| {
                shutdown
                    .is_cancelled()
                    .then(|| Instant::now() + self.shutdown_grace)
            })
            .unwrap_or_else(|| Instant::now() + STEP_TIMEOUT);
        let mut writer = writer;
        if timeout_at(until, &mut writer).await.is_err() {
            tracing::warn!(uplink = %self.name, "device writes still queued at the end of the grace period are dropped");
            writer.abort();
        }
        tracing::info!(uplink = %self.name, "Sparkplug uplink stopped");
        outcome
    }
}

/// What survives a reconnect: the last reported values and which devices are dead.
struct NodeState {
    devices: Vec<DeviceState>,
    dead: Vec<bool>,
    /// Timestamp of the last STATE accepted from the primary host (older ones are ignored).
    host_ts: Option<u64>,
}

impl NodeState {
    fn new(model: &EdgeNodeModel) -> Self {
        NodeState {
            devices: model
                .devices
                .iter()
                .map(|d| DeviceState::new(d.metrics.len()))
                .collect(),
            dead: vec![false; model.devices.len()],
            host_ts: None,
        }
    }
}

struct Session<'a> {
    up: &'a SparkplugUplink,
    client: &'a AsyncClient,
    node: &'a mut NodeState,
    seq: SeqCounter,
    bd_seq: u64,
    /// Notices of the publishes not yet known to be written to the socket.
    pending: Vec<rumqttc::PublishNotice>,
    /// DCMD write requests go here (served by [`serve_writes`]).
    dcmd: &'a mpsc::Sender<DcmdWrite>,
    /// The end of the grace period, once the shutdown signal was seen.
    stopping: Option<Instant>,
}

/// A group of records whose messages are out, waiting for the broker's answer to the UNSUBSCRIBE
/// sent after them: that answer proves the broker read everything before it.
struct Proof {
    answer: std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>,
    /// When the connection is given up for lost.
    deadline: Instant,
    /// The spool ids of the group.
    ids: Vec<i64>,
    /// What the group's `live` records count for in the completeness accounting.
    tallies: Vec<Tally>,
    /// When the group's reading batches were acquired (publish latency).
    acquired: Vec<Timestamp>,
}

/// The broker's answer to `proof`'s UNSUBSCRIBE, or an error when it fails or does not come
/// before the deadline. Pending forever without a proof in flight.
async fn proof_answer(proof: &mut Option<Proof>) -> Result<(), String> {
    let Some(p) = proof.as_mut() else {
        return std::future::pending().await;
    };
    match timeout_at(p.deadline, &mut p.answer).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the broker did not answer within keep_alive ({} records unconfirmed, kept in the spool)",
            p.ids.len()
        )),
    }
}

/// What a received command is.
enum Command<'p> {
    /// `Node Control/Rebirth = true` on NCMD.
    Rebirth,
    /// A DCMD for the named device.
    Dcmd(&'p str),
    /// The primary host's STATE.
    HostState(HostState),
    /// Anything else (ignored).
    Other,
}

/// A STATE payload: 3.0 JSON `{"online":…,"timestamp":…}`, or the 2.2 text `ONLINE`/`OFFLINE`
/// (no timestamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostState {
    /// Whether the host says it is online.
    pub online: bool,
    /// Its timestamp (ms since the epoch), when the payload has one.
    pub timestamp: Option<u64>,
}

impl HostState {
    /// Parse a STATE payload; `None` when it is neither form.
    pub fn parse(payload: &[u8]) -> Option<HostState> {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
            return Some(HostState {
                online: v.get("online")?.as_bool()?,
                timestamp: v.get("timestamp").and_then(serde_json::Value::as_u64),
            });
        }
        match payload {
            b"ONLINE" => Some(HostState {
                online: true,
                timestamp: None,
            }),
            b"OFFLINE" => Some(HostState {
                online: false,
                timestamp: None,
            }),
            _ => None,
        }
    }
}

impl Session<'_> {
    async fn run(
        &mut self,
        mut cmds: mpsc::Receiver<rumqttc::Publish>,
        shutdown: &CancellationToken,
    ) -> Ended {
        if let Err(e) = self.subscribe().await {
            return Ended::Lost(e);
        }
        if self.up.ids.primary_host_id.is_some()
            && let Some(ended) = self.wait_for_host(&mut cmds, shutdown).await
        {
            return ended;
        }
        let mut appended = self.up.spool.appended();
        // Records up to here waited out the outage (or the restart, or the host's absence):
        // replayed as historical after the births. Whatever arrives from now on is live.
        let boundary = *appended.borrow_and_update();
        if let Err(e) = self.births().await {
            return Ended::Lost(e);
        }
        let mut cursor = 0i64;
        let mut more = true;
        // At most one group of records waits for its proof of arrival; the next is read only
        // once it came, so a silent broker holds back at most one spool batch.
        let mut proof: Option<Proof> = None;
        loop {
            if more && proof.is_none() {
                // A batch waiting on a dead link must not hold the stop past the grace period:
                // its records stay in the spool.
                let sent = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => None,
                    r = self.send_batch(&mut cursor, boundary) => Some(r),
                };
                match sent {
                    None => {
                        self.stop(&mut proof).await;
                        return Ended::Shutdown;
                    }
                    Some(Ok((m, p))) => {
                        more = m;
                        proof = p;
                    }
                    Some(Err(e)) => return Ended::Lost(e),
                }
                if more {
                    // Let commands and shutdown in between batches.
                    tokio::task::yield_now().await;
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.stop(&mut proof).await;
                    return Ended::Shutdown;
                }
                answer = proof_answer(&mut proof) => {
                    let p = proof.take().expect("an answer comes only for a proof in flight");
                    if let Err(e) = answer {
                        return Ended::Lost(e);
                    }
                    if let Err(e) = self.settle(p.ids, &p.tallies, &p.acquired).await {
                        return Ended::Lost(e);
                    }
                    // The batch read before may have filled a whole READ_BATCH.
                    more = true;
                }
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return Ended::Lost("event loop stopped".into()) };
                    match self.classify(&cmd) {
                        Command::Rebirth => {
                            tracing::info!(uplink = %self.up.name, "rebirth requested");
                            if let Err(e) = self.births().await {
                                return Ended::Lost(e);
                            }
                        }
                        Command::Dcmd(device) => self.on_dcmd(device, &cmd.payload, cmd.retain),
                        Command::HostState(state) => {
                            if self.accept_host_state(state) && !state.online {
                                tracing::warn!(
                                    uplink = %self.up.name,
                                    "primary host offline: NDEATH, disconnect, spool until it is back"
                                );
                                let until = Instant::now() + STEP_TIMEOUT;
                                self.ndeath_and_disconnect(until, &mut proof).await;
                                return Ended::HostOffline;
                            }
                        }
                        Command::Other => {}
                    }
                }
                changed = appended.changed() => {
                    if changed.is_err() {
                        return Ended::Lost("spool closed".into());
                    }
                    more = true;
                }
                _ = std::future::ready(()), if more && proof.is_none() => {}
            }
        }
    }

    fn classify<'p>(&self, cmd: &'p rumqttc::Publish) -> Command<'p> {
        let Ok(topic) = std::str::from_utf8(&cmd.topic) else {
            return Command::Other;
        };
        let ids = &self.up.ids;
        if let Some(host) = &ids.primary_host_id
            && topic == state_topic(host)
        {
            return HostState::parse(&cmd.payload).map_or_else(
                || {
                    tracing::warn!(uplink = %self.up.name, "unreadable STATE payload ignored");
                    Command::Other
                },
                Command::HostState,
            );
        }
        if topic == self.up.topic(MessageType::NCmd, None) {
            return if spb::decode(&cmd.payload).is_ok_and(|p| spb::is_rebirth_request(&p)) {
                Command::Rebirth
            } else {
                Command::Other
            };
        }
        let dcmd = self.up.topic(MessageType::DCmd, None);
        match topic
            .strip_prefix(dcmd.as_str())
            .and_then(|r| r.strip_prefix('/'))
        {
            Some(device) if !device.is_empty() && !device.contains('/') => Command::Dcmd(device),
            _ => Command::Other,
        }
    }

    /// Whether a STATE is to be acted on: not older than the last one accepted (3.0 timestamps).
    fn accept_host_state(&mut self, state: HostState) -> bool {
        match (state.timestamp, self.node.host_ts) {
            (Some(ts), Some(last)) if ts < last => {
                tracing::debug!(uplink = %self.up.name, ts, last, "stale STATE ignored");
                false
            }
            (Some(ts), _) => {
                self.node.host_ts = Some(ts);
                true
            }
            (None, _) => true,
        }
    }

    /// Before the births: wait until the primary host says it is online. `Some` when the session
    /// ends first (shutdown, lost connection).
    async fn wait_for_host(
        &mut self,
        cmds: &mut mpsc::Receiver<rumqttc::Publish>,
        shutdown: &CancellationToken,
    ) -> Option<Ended> {
        self.up.status_tx.send_modify(|s| s.waiting_for_host = true);
        tracing::info!(uplink = %self.up.name, "waiting for the primary host to be online");
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.stop(&mut None).await;
                    return Some(Ended::Shutdown);
                }
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else {
                        return Some(Ended::Lost("event loop stopped".into()));
                    };
                    match self.classify(&cmd) {
                        Command::HostState(state) => {
                            if self.accept_host_state(state) && state.online {
                                self.up.status_tx.send_modify(|s| s.waiting_for_host = false);
                                tracing::info!(uplink = %self.up.name, "primary host online");
                                return None;
                            }
                        }
                        Command::Dcmd(device) => tracing::warn!(
                            uplink = %self.up.name, device,
                            "DCMD before the births ignored (the primary host is not online)"
                        ),
                        Command::Rebirth | Command::Other => {}
                    }
                }
            }
        }
    }

    /// Queue the writes a DCMD asks for (one per metric), in order. A retained DCMD, or one
    /// whose timestamp is further than `max_command_age` from the clock (or missing), is queued
    /// refused: it never reaches the device, and each of its writes is reported.
    fn on_dcmd(&mut self, device: &str, payload: &[u8], retained: bool) {
        let up = self.up;
        let payload = match spb::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(uplink = %up.name, device, "undecodable DCMD ignored: {e}");
                return;
            }
        };
        let max_age_ms = up.writes.as_ref().map_or(i64::MAX, |g| {
            i64::try_from(g.max_command_age.as_millis()).unwrap_or(i64::MAX)
        });
        let refusal = if retained {
            Some(Refusal::Retained)
        } else {
            match payload.timestamp.and_then(|t| i64::try_from(t).ok()) {
                None => Some(Refusal::NoTimestamp),
                Some(t) => {
                    let age_ms = Timestamp::now().unix_ms() - t;
                    (age_ms.unsigned_abs() > max_age_ms.unsigned_abs())
                        .then_some(Refusal::Stale { age_ms, max_age_ms })
                }
            }
        };
        let model = up
            .model
            .device_index(device)
            .map(|i| (i, &up.model.devices[i]));
        for m in &payload.metrics {
            // Aliases as the DCMD should carry them (3.0), or names as some hosts send.
            let metric = model.and_then(|(_, d)| {
                let by_alias = m
                    .alias
                    .and_then(|a| d.metrics.iter().position(|x| x.alias == a));
                by_alias.or_else(|| d.metric_index(m.name.as_deref()?))
            });
            let point: Arc<str> = match (model, metric) {
                (Some((_, d)), Some(j)) => d.metrics[j].name.clone(),
                _ => m
                    .name
                    .clone()
                    .or_else(|| m.alias.map(|a| format!("alias {a}")))
                    .unwrap_or_default()
                    .into(),
            };
            let (old, new) = match (model, metric) {
                (Some((i, d)), Some(j)) => (
                    self.node.devices[i].current()[j]
                        .as_ref()
                        .and_then(|r| r.value.clone()),
                    spb::decode_value(d.metrics[j].datatype, m.value.as_ref()),
                ),
                _ => (None, None),
            };
            let request = DcmdWrite {
                device: device.into(),
                point,
                known: metric.is_some(),
                old,
                new,
                topic: format!("{}/{device}", up.topic(MessageType::DCmd, None)),
                refusal: refusal.clone(),
            };
            if let Err(mpsc::error::TrySendError::Full(request)) = self.dcmd.try_send(request) {
                // Refused without touching the device; still reported.
                up.command_dropped(&request.topic, "the device write queue is full");
                let events = up.writes.as_ref().map(|g| g.events.clone());
                let name = up.name.clone();
                tokio::spawn(async move {
                    report(
                        &name,
                        events.as_ref(),
                        &request,
                        &Err(WriteFailure::Refused(Refusal::Busy)),
                    )
                    .await;
                });
            }
        }
    }

    async fn subscribe(&self) -> Result<(), String> {
        let mut topics = vec![
            self.up.topic(MessageType::NCmd, None),
            format!("{}/#", self.up.topic(MessageType::DCmd, None)),
        ];
        if let Some(host) = &self.up.ids.primary_host_id {
            topics.push(state_topic(host));
        }
        for t in topics {
            let notice = self
                .client
                .subscribe_tracked(t.clone(), QoS::AtLeastOnce)
                .await
                .map_err(|e| format!("subscribe {t}: {e}"))?;
            timeout(STEP_TIMEOUT, notice.wait_async())
                .await
                .map_err(|_| format!("no SUBACK for {t}"))?
                .map_err(|e| format!("subscribe {t}: {e}"))?;
        }
        Ok(())
    }

    async fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        let notice = self
            .client
            .publish_tracked(topic, payload, PublishOptions::new(QoS::AtMostOnce))
            .await
            .map_err(|e| format!("publish: {e}"))?;
        self.pending.push(notice);
        Ok(())
    }

    /// Wait until every publish so far was written to the socket (QoS 0 notices resolve then).
    async fn flushed(&mut self) -> Result<(), String> {
        for notice in self.pending.drain(..) {
            timeout(STEP_TIMEOUT, notice.wait_async())
                .await
                .map_err(|_| "a publish was not written within 5 s".to_owned())?
                .map_err(|e| format!("publish not written: {e}"))?;
        }
        Ok(())
    }

    /// NBIRTH (seq 0) and every DBIRTH; DDEATH after the DBIRTH of a device known dead.
    async fn births(&mut self) -> Result<(), String> {
        let up = self.up;
        let now = Timestamp::now();
        let _ = self.seq.birth();
        self.publish(
            up.topic(MessageType::NBirth, None),
            spb::encode(&spb::nbirth(self.bd_seq, now)),
        )
        .await?;
        for (i, dev) in up.model.devices.iter().enumerate() {
            let p = spb::dbirth(
                dev,
                self.node.devices[i].current(),
                self.seq.next_seq(),
                now,
            );
            self.publish(
                up.topic(MessageType::DBirth, Some(&dev.name)),
                spb::encode(&p),
            )
            .await?;
            if self.node.dead[i] {
                let p = spb::ddeath(self.seq.next_seq(), now);
                self.publish(
                    up.topic(MessageType::DDeath, Some(&dev.name)),
                    spb::encode(&p),
                )
                .await?;
            }
        }
        self.flushed().await?;
        up.status_tx.send_modify(|s| {
            s.online = true;
            s.nbirths += 1;
        });
        Ok(())
    }

    /// Send the next spool batch after `cursor`: `Ok(true, _)` when more may be waiting, and the
    /// group's [`Proof`] when it produced messages. A group that produced none (other streams,
    /// no change to report) is acked at once: the messages before it were proven already.
    async fn send_batch(
        &mut self,
        cursor: &mut i64,
        boundary: i64,
    ) -> Result<(bool, Option<Proof>), String> {
        let up = self.up;
        let records = up
            .spool
            .read_after(*cursor, READ_BATCH)
            .await
            .map_err(|e| format!("spool read: {e}"))?;
        let more = records.len() == READ_BATCH;
        let mut ids = Vec::with_capacity(records.len());
        let mut tallies = Vec::new();
        let mut acquired = Vec::new();
        for r in &records {
            if r.stream == Stream::Live
                && let Ok(record) = crate::publish::body::decode(&r.body)
                && let Record::Batch(batch) = &record
            {
                self.send_reading_batch(batch, r.id <= boundary).await?;
                acquired.push(crate::histogram::acquired_at(&record, r.created));
                if up.completeness.is_some() {
                    tallies.extend(completeness::tally(&record));
                }
            }
            ids.push(r.id);
            *cursor = r.id;
        }
        // The publishes' own notices only say they were written to the socket: not a proof.
        let sent = !self.pending.is_empty();
        self.pending.clear();
        if !sent {
            // Nothing went out: no publish to time.
            self.settle(ids, &tallies, &[]).await?;
            return Ok((more, None));
        }
        let topic = format!("{}/{PROOF_LEVEL}", up.topic(MessageType::NCmd, None));
        let notice = self
            .client
            .unsubscribe_tracked(topic)
            .await
            .map_err(|e| format!("unsubscribe (delivery check): {e}"))?;
        let n = ids.len() as u64;
        up.status_tx.send_modify(|s| s.unproven = n);
        Ok((
            more,
            Some(Proof {
                answer: Box::pin(async move {
                    notice
                        .wait_async()
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("delivery check: {e}"))
                }),
                deadline: Instant::now() + up.mqtt.keep_alive.max(Duration::from_secs(1)),
                ids,
                tallies,
                acquired,
            }),
        ))
    }

    /// Ack a group in the spool, and count its `live` values as delivered.
    async fn settle(
        &mut self,
        ids: Vec<i64>,
        tallies: &[Tally],
        acquired: &[Timestamp],
    ) -> Result<(), String> {
        let up = self.up;
        if ids.is_empty() {
            return Ok(());
        }
        let n = up
            .spool
            .ack(ids)
            .await
            .map_err(|e| format!("spool ack: {e}"))?;
        up.status_tx.send_modify(|s| {
            s.acked_total += n;
            s.unproven = 0;
        });
        let now = Timestamp::now();
        for t in acquired {
            up.publish_latency.observe_between(*t, now);
        }
        if let Some(c) = &up.completeness
            && !tallies.is_empty()
        {
            c.delivered(&up.name, tallies);
        }
        Ok(())
    }

    async fn send_reading_batch(
        &mut self,
        batch: &crate::model::ReadingBatch,
        historical: bool,
    ) -> Result<(), String> {
        let up = self.up;
        let Some(i) = up.model.batch_device(batch) else {
            return Ok(());
        };
        let dev = &up.model.devices[i];
        let topic = |kind| up.topic(kind, Some(&dev.name));
        let now = Timestamp::now();
        if historical {
            let changes: Vec<Change<'_>> = batch
                .readings
                .iter()
                .filter_map(|r| {
                    Some(Change {
                        metric: dev.metric_index(&r.point)?,
                        reading: r,
                        with_quality: r.quality != crate::model::Quality::Good,
                    })
                })
                .collect();
            if changes.is_empty() {
                return Ok(());
            }
            let p = spb::ddata(dev, &changes, self.seq.next_seq(), now, true);
            return self
                .publish(topic(MessageType::DData), spb::encode(&p))
                .await;
        }
        // A derived device is never dead: a derived value's bad quality goes out as DATA.
        if dev.derived.is_none() && spb::device_is_dead(batch) {
            if !self.node.dead[i] {
                self.node.dead[i] = true;
                let p = spb::ddeath(self.seq.next_seq(), now);
                self.publish(topic(MessageType::DDeath), spb::encode(&p))
                    .await?;
            }
            return Ok(());
        }
        if self.node.dead[i] {
            self.node.dead[i] = false;
            self.node.devices[i].absorb(dev, batch);
            let p = spb::dbirth(
                dev,
                self.node.devices[i].current(),
                self.seq.next_seq(),
                now,
            );
            return self
                .publish(topic(MessageType::DBirth), spb::encode(&p))
                .await;
        }
        let changes = self.node.devices[i].changes(dev, batch);
        if changes.is_empty() {
            return Ok(());
        }
        let p = spb::ddata(dev, &changes, self.seq.next_seq(), now, false);
        self.publish(topic(MessageType::DData), spb::encode(&p))
            .await
    }

    /// The shutdown signal: NDEATH and DISCONNECT within the grace period, which starts now.
    async fn stop(&mut self, proof: &mut Option<Proof>) {
        let until = Instant::now() + self.up.shutdown_grace;
        self.stopping = Some(until);
        // The last fifth (at most 500 ms) is kept for the DISCONNECT.
        let reserve = (self.up.shutdown_grace / 5).min(Duration::from_millis(500));
        self.ndeath_and_disconnect(until - reserve, proof).await;
    }

    /// NDEATH (QoS 1, waits for the PUBACK until `until`), then DISCONNECT (queued: the caller
    /// drives the event loop until it is out). A group still waiting for its proof is settled
    /// when the proof came before the PUBACK (the broker answers in order); otherwise it stays
    /// in the spool.
    async fn ndeath_and_disconnect(&mut self, until: Instant, proof: &mut Option<Proof>) {
        let up = self.up;
        let payload = spb::encode(&spb::ndeath(self.bd_seq, Timestamp::now()));
        // Queueing waits for room in the client's request channel, which a link that takes
        // nothing never makes: bounded by `until` as well.
        let queued = timeout_at(
            until,
            self.client.publish_tracked(
                up.topic(MessageType::NDeath, None),
                payload,
                PublishOptions::new(QoS::AtLeastOnce),
            ),
        )
        .await;
        let mut acked = false;
        match queued {
            Ok(Ok(notice)) => match timeout_at(until, notice.wait_async()).await {
                Ok(r) => acked = r.is_ok(),
                Err(_) => tracing::warn!(uplink = %up.name, "no PUBACK for the NDEATH"),
            },
            Ok(Err(e)) => tracing::warn!(uplink = %up.name, "cannot publish the NDEATH: {e}"),
            Err(_) => tracing::warn!(uplink = %up.name, "no room to queue the NDEATH in time"),
        }
        if acked
            && let Some(mut p) = proof.take()
            && let Ok(Ok(())) = timeout(Duration::from_millis(100), &mut p.answer).await
            && let Err(e) = self.settle(p.ids, &p.tallies, &p.acquired).await
        {
            tracing::warn!(uplink = %up.name, "{e}");
        }
        if let Err(e) = self.client.try_disconnect() {
            tracing::debug!(uplink = %up.name, "cannot queue the DISCONNECT: {e}");
        }
    }
}

/// The STATE topic of a primary host application.
pub fn state_topic(host_id: &str) -> String {
    format!("{}/STATE/{host_id}", spb::NAMESPACE)
}

/// One DCMD metric asking for a write.
#[derive(Debug)]
struct DcmdWrite {
    device: Arc<str>,
    point: Arc<str>,
    /// Whether device and metric exist in the model.
    known: bool,
    /// Last value reported for the point.
    old: Option<Value>,
    /// The requested value, decoded with the metric's datatype (`None`: unreadable or null).
    new: Option<Value>,
    /// The DCMD topic it came on.
    topic: String,
    /// Refused before any gate (retained, stale or without a timestamp).
    refusal: Option<Refusal>,
}

/// Serve DCMD writes in order until every sender is gone.
async fn serve_writes(
    uplink: String,
    gate: Option<DeviceWriteGate>,
    mut requests: mpsc::Receiver<DcmdWrite>,
) {
    while let Some(req) = requests.recv().await {
        let result = attempt(gate.as_ref(), &req).await;
        report(&uplink, gate.as_ref().map(|g| &g.events), &req, &result).await;
    }
}

/// Apply the gates and, when they pass, write through the source's poller.
async fn attempt(gate: Option<&DeviceWriteGate>, req: &DcmdWrite) -> Result<(), WriteFailure> {
    if let Some(r) = &req.refusal {
        return Err(WriteFailure::Refused(r.clone()));
    }
    let Some(gate) = gate else {
        return Err(WriteFailure::Refused(Refusal::WritesDisabled));
    };
    if !gate.enabled {
        return Err(WriteFailure::Refused(Refusal::WritesDisabled));
    }
    let found = gate.writers.device(&req.device).and_then(|(w, d)| {
        let p = d.points.iter().find(|p| p.name == req.point)?;
        Some((w, d, p))
    });
    let (writer, device, point) = match found {
        Some(f) if req.known => f,
        _ => return Err(WriteFailure::Refused(Refusal::UnknownPoint)),
    };
    let Some(value) = &req.new else {
        return Err(WriteFailure::Refused(Refusal::WrongType {
            expected: "a value of the metric's datatype",
        }));
    };
    let data = write::check_write(gate.enabled, point, value).map_err(WriteFailure::Refused)?;
    writer.write(device, point, data).await
}

/// Log a write attempt and put its event on the events stream.
async fn report(
    uplink: &str,
    events: Option<&mpsc::Sender<Record>>,
    req: &DcmdWrite,
    result: &Result<(), WriteFailure>,
) {
    let (outcome, reason) = match result {
        Ok(()) => ("accepted", None),
        Err(WriteFailure::Refused(r)) => ("refused", Some(r.to_string())),
        Err(WriteFailure::Failed(why)) => ("failed", Some(why.clone())),
    };
    let shown = |v: &Option<Value>| {
        v.as_ref()
            .map_or_else(|| "null".to_owned(), Value::to_string)
    };
    let message = match &reason {
        None => format!(
            "write of {}/{} = {} accepted (was {})",
            req.device,
            req.point,
            shown(&req.new),
            shown(&req.old)
        ),
        Some(why) => format!(
            "write of {}/{} = {} {outcome}: {why}",
            req.device,
            req.point,
            shown(&req.new)
        ),
    };
    if result.is_ok() {
        tracing::info!(uplink, "{message}");
    } else {
        tracing::warn!(uplink, "{message}");
    }
    let mut attributes: Vec<(Arc<str>, Value)> = vec![
        ("outcome".into(), Value::Text(outcome.into())),
        (
            "by".into(),
            Value::Text(format!("sparkplug DCMD on uplink {uplink}")),
        ),
        ("topic".into(), Value::Text(req.topic.clone())),
    ];
    if let Some(why) = reason {
        attributes.push(("reason".into(), Value::Text(why)));
    }
    if let Some(v) = &req.old {
        attributes.push(("old_value".into(), v.clone()));
    }
    if let Some(v) = &req.new {
        attributes.push(("new_value".into(), v.clone()));
    }
    let event = WriteEvent {
        kind: EventKind::Write,
        subject: format!("{}/{}", req.device, req.point).into(),
        phase: EventPhase::Instant,
        ts: Timestamp::now(),
        attributes,
        message,
    };
    if let Some(events) = events
        && events.send(Record::Event(event)).await.is_err()
    {
        tracing::warn!(
            uplink,
            "the events stream is closed: write event not recorded"
        );
    }
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

impl SparkplugUplink {
    /// Count, log and report (as a `command_dropped` event, with a [`DeviceWriteGate`]) a command
    /// that was dropped on a full queue.
    fn command_dropped(&self, topic: &str, why: &str) {
        self.status_tx.send_modify(|s| s.commands_dropped += 1);
        let message = format!("command on {topic} dropped: {why}");
        tracing::warn!(uplink = %self.name, "{message}");
        let Some(events) = self.writes.as_ref().map(|g| g.events.clone()) else {
            return;
        };
        let event = WriteEvent {
            kind: EventKind::CommandDropped,
            subject: self.name.as_str().into(),
            phase: EventPhase::Instant,
            ts: Timestamp::now(),
            attributes: vec![
                ("topic".into(), Value::Text(topic.to_owned())),
                ("reason".into(), Value::Text(why.to_owned())),
            ],
            message,
        };
        // Not awaited here: the caller is the event loop (or the session) and must not wait for
        // the events stream.
        let name = self.name.clone();
        tokio::spawn(async move {
            if events.send(Record::Event(event)).await.is_err() {
                tracing::warn!(
                    uplink = %name,
                    "the events stream is closed: command_dropped event not recorded"
                );
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UplinkKind;

    const CONFIG: &str = r#"
site = "t"
state_dir = "var/state"

[[sources]]
name = "gw"
tcp = "127.0.0.1:1502"

[[sources.devices]]
name = "rect"
unit_id = 1
points.x = { area = "holding", address = 0, type = "u16" }

[[uplinks]]
name = "scada"
type = "sparkplug"
broker = "mqtt://127.0.0.1:1883"
group_id = "g"
edge_node_id = "e"
"#;

    #[tokio::test]
    async fn a_command_that_finds_the_queue_full_is_counted_and_reported_as_an_event() {
        let cfg = crate::config::parse(CONFIG, std::path::Path::new("t.toml")).unwrap();
        let UplinkKind::Sparkplug(spb_cfg) = &cfg.uplinks[0].kind else {
            panic!("a Sparkplug uplink")
        };
        let dir = tempfile::tempdir().unwrap();
        let spool = SpoolHandle::open(&dir.path().join("spool.db"), &Default::default()).unwrap();
        let (writers, _queues) = DeviceWriters::for_sources(&cfg.sources);
        let (events_tx, mut events_rx) = mpsc::channel(4);
        let ids = SparkplugSettings {
            group_id: "g".into(),
            edge_node_id: "e".into(),
            primary_host_id: None,
        };
        let up = SparkplugUplink::new(
            "scada",
            &spb_cfg.mqtt,
            ids,
            EdgeNodeModel::from_sources(&cfg.sources),
            spool,
        )
        .unwrap()
        .with_device_writes(DeviceWriteGate {
            enabled: false,
            max_command_age: Duration::from_secs(30),
            writers,
            events: events_tx,
        });
        let status = up.status();
        let (tx, mut rx) = mpsc::channel(1);
        let cmd = |n: u8| rumqttc::Publish::new("spBv1.0/g/NCMD/e", QoS::AtMostOnce, vec![n]);
        forward(&up, &tx, cmd(1));
        forward(&up, &tx, cmd(2));
        assert_eq!(status.borrow().commands_dropped, 1);
        assert_eq!(
            rx.recv().await.unwrap().payload[..],
            [1],
            "the first one waits"
        );
        let Some(Record::Event(e)) = timeout(Duration::from_secs(5), events_rx.recv())
            .await
            .expect("an event within 5 s")
        else {
            panic!("an event record")
        };
        assert_eq!(e.kind, EventKind::CommandDropped);
        assert_eq!(&*e.subject, "scada");
        assert!(
            e.attributes
                .iter()
                .any(|(k, v)| &**k == "topic" && *v == Value::Text("spBv1.0/g/NCMD/e".into())),
            "{e:?}"
        );
    }
}
