//! The Sparkplug B 3.0 edge-node uplink: smeltwatch is the edge node `spBv1.0/{group}/…/{edge}`,
//! each configured Modbus device a Sparkplug device, each point a device metric (payloads from
//! [`encode::sparkplug`](crate::publish::encode::sparkplug)).
//!
//! # Session (PROTOCOLS.md §3.3)
//! For every connection attempt the uplink:
//! 1. takes the next **bdSeq** (0 the first time, then +1 per CONNECT, wrapping 255 → 0), persisted
//!    in the spool's `kv` table *before* connecting, so it also increments across restarts;
//! 2. CONNECTs (MQTT 3.1.1, clean session) with a fresh client whose **Will** is the NDEATH carrying
//!    that bdSeq (QoS 1, not retained): the Will is rebuilt for every connection;
//! 3. subscribes to `NCMD/{edge}` and `DCMD/{edge}/#` at QoS 1 and waits for the SUBACKs;
//! 4. publishes **NBIRTH** (seq 0, `bdSeq`, `Node Control/Rebirth`) and one **DBIRTH** per device
//!    with its last known values (a device known dead gets its DDEATH right after);
//! 5. reads its spool in id order: live poll batches become **DDATA** by exception (aliases only),
//!    a batch whose readings are all `comm_fail` becomes **DDEATH** (once), and the first batch
//!    after that a **DBIRTH**. Records that were already waiting when the session started are
//!    replayed as DDATA with `is_historical` and their acquisition timestamps, without touching
//!    the live state. A record leaves the spool once the messages it produced were written to the
//!    socket (Sparkplug DATA is QoS 0: there is no acknowledgement to wait for); if the connection
//!    fails first, the record stays and is replayed, as historical, in the next session.
//!
//! An NCMD `Node Control/Rebirth = true` makes it publish NBIRTH (same bdSeq, seq 0) and every
//! DBIRTH again. On shutdown it publishes NDEATH itself (QoS 1, waits for the PUBACK), then
//! DISCONNECTs, which discards the Will. A lost connection is retried with backoff.
//!
//! Streams other than `live` are not carried over Sparkplug; such records are acked and counted.

use std::fmt;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, PublishOptions,
    QoS,
};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::config::{MqttConfig, Stream};
use crate::model::{Record, Timestamp};
use crate::publish::encode::sparkplug::{
    self as spb, Change, DeviceState, EdgeNodeModel, MessageType, SeqCounter,
};
use crate::spool::{SpoolError, SpoolHandle};

/// The spool `kv` key holding the last bdSeq used.
pub const BD_SEQ_KEY: &str = "sparkplug.bdseq";
/// Spool records read per batch.
const READ_BATCH: usize = 256;
/// How long the SUBACKs, the NDEATH's PUBACK and the DISCONNECT may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Sparkplug identity of the edge node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparkplugSettings {
    /// Sparkplug group id.
    pub group_id: String,
    /// Edge node id (unique within the group).
    pub edge_node_id: String,
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
    /// `mqtts://` is not wired for Sparkplug yet.
    #[error("uplink {uplink:?}: mqtts is not supported for Sparkplug yet")]
    TlsUnsupported {
        /// The uplink name.
        uplink: String,
    },
}

/// What the uplink is doing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SparkplugStatus {
    /// Births published in the current connection (NBIRTH and DBIRTHs done).
    pub online: bool,
    /// The bdSeq of the current (or last) connection.
    pub bd_seq: Option<u64>,
    /// Successful connections since start.
    pub connects: u64,
    /// NBIRTHs published since start (connections and rebirths).
    pub nbirths: u64,
    /// Spool records sent and acked since start.
    pub acked_total: u64,
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
        if mqtt.tls {
            return Err(SparkplugError::TlsUnsupported {
                uplink: name.to_owned(),
            });
        }
        let (status_tx, _) = watch::channel(SparkplugStatus::default());
        Ok(SparkplugUplink {
            name: name.to_owned(),
            mqtt: mqtt.clone(),
            ids,
            model,
            spool,
            status_tx,
        })
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
        let mut o = MqttOptions::new(
            cfg.client_id.clone(),
            (cfg.broker.host.clone(), cfg.broker.port),
        );
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

    /// Connect, publish and retry until `shutdown`; then NDEATH, DISCONNECT and return.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut node = NodeState::new(&self.model);
        let mut delay = self.mqtt.reconnect_min;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let bd_seq = match self.next_bd_seq().await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(uplink = %self.name, "cannot persist bdSeq: {e}");
                    self.status_tx
                        .send_modify(|s| s.last_error = Some(format!("bdSeq: {e}")));
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = sleep(delay) => {}
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
                    delay = self.mqtt.reconnect_min;
                    self.status_tx.send_modify(|s| s.connects += 1);
                    tracing::info!(uplink = %self.name, bd_seq, "Sparkplug session up");
                    let (cmd_tx, cmd_rx) = mpsc::channel(16);
                    let mut session = Session {
                        up: &self,
                        client: &client,
                        node: &mut node,
                        seq: SeqCounter::default(),
                        bd_seq,
                        pending: Vec::new(),
                    };
                    tokio::select! {
                        e = drive(&mut eventloop, cmd_tx) => Ended::Lost(e.to_string()),
                        ended = session.run(cmd_rx, &shutdown) => ended,
                    }
                }
            };
            self.status_tx.send_modify(|s| s.online = false);
            match ended {
                Ended::Shutdown => break,
                Ended::Lost(reason) => {
                    tracing::warn!(uplink = %self.name, "Sparkplug connection lost: {reason}");
                    self.status_tx.send_modify(|s| s.last_error = Some(reason));
                }
            }
            let jittered = delay.mul_f64(0.75 + 0.5 * fastrand::f64());
            delay = (delay * 2).min(self.mqtt.reconnect_max);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sleep(jittered) => {}
            }
        }
        tracing::info!(uplink = %self.name, "Sparkplug uplink stopped");
    }
}

/// What survives a reconnect: the last reported values and which devices are dead.
struct NodeState {
    devices: Vec<DeviceState>,
    dead: Vec<bool>,
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
        if let Err(e) = self.births().await {
            return Ended::Lost(e);
        }
        let mut appended = self.up.spool.appended();
        // Records up to here waited out the outage (or the restart): replayed as historical.
        let boundary = *appended.borrow_and_update();
        let mut cursor = 0i64;
        let mut more = true;
        let ncmd = self.up.topic(MessageType::NCmd, None);
        loop {
            if more {
                match self.send_batch(&mut cursor, boundary).await {
                    Ok(m) => more = m,
                    Err(e) => return Ended::Lost(e),
                }
                if more {
                    // Let commands and shutdown in between batches.
                    tokio::task::yield_now().await;
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return self.goodbye().await,
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return Ended::Lost("event loop stopped".into()) };
                    if std::str::from_utf8(&cmd.topic).ok() == Some(ncmd.as_str())
                        && spb::decode(&cmd.payload).is_ok_and(|p| spb::is_rebirth_request(&p))
                    {
                        tracing::info!(uplink = %self.up.name, "rebirth requested");
                        if let Err(e) = self.births().await {
                            return Ended::Lost(e);
                        }
                    }
                }
                changed = appended.changed() => {
                    if changed.is_err() {
                        return Ended::Lost("spool closed".into());
                    }
                    more = true;
                }
                _ = std::future::ready(()), if more => {}
            }
        }
    }

    async fn subscribe(&self) -> Result<(), String> {
        let topics = [
            self.up.topic(MessageType::NCmd, None),
            format!("{}/#", self.up.topic(MessageType::DCmd, None)),
        ];
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

    /// Send the next spool batch after `cursor`; `Ok(true)` when more may be waiting.
    async fn send_batch(&mut self, cursor: &mut i64, boundary: i64) -> Result<bool, String> {
        let up = self.up;
        let records = up
            .spool
            .read_after(*cursor, READ_BATCH)
            .await
            .map_err(|e| format!("spool read: {e}"))?;
        let more = records.len() == READ_BATCH;
        let mut done = Vec::with_capacity(records.len());
        for r in &records {
            if r.stream == Stream::Live
                && let Ok(Record::Batch(batch)) = serde_json::from_slice::<Record>(&r.body)
            {
                self.send_reading_batch(&batch, r.id <= boundary).await?;
            }
            done.push(r.id);
            *cursor = r.id;
        }
        self.flushed().await?;
        if !done.is_empty() {
            let n = up
                .spool
                .ack(done)
                .await
                .map_err(|e| format!("spool ack: {e}"))?;
            up.status_tx.send_modify(|s| s.acked_total += n);
        }
        Ok(more)
    }

    async fn send_reading_batch(
        &mut self,
        batch: &crate::model::ReadingBatch,
        historical: bool,
    ) -> Result<(), String> {
        let up = self.up;
        let Some(i) = up.model.device_index(&batch.device) else {
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
        if spb::device_is_dead(batch) {
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

    /// NDEATH (QoS 1, waits for the PUBACK), then DISCONNECT.
    async fn goodbye(&mut self) -> Ended {
        let up = self.up;
        let payload = spb::encode(&spb::ndeath(self.bd_seq, Timestamp::now()));
        match self
            .client
            .publish_tracked(
                up.topic(MessageType::NDeath, None),
                payload,
                PublishOptions::new(QoS::AtLeastOnce),
            )
            .await
        {
            Ok(notice) => {
                if timeout(STEP_TIMEOUT, notice.wait_async()).await.is_err() {
                    tracing::warn!(uplink = %up.name, "no PUBACK for the NDEATH");
                }
            }
            Err(e) => tracing::warn!(uplink = %up.name, "cannot publish the NDEATH: {e}"),
        }
        let _ = self.client.disconnect().await;
        // The driver ends when the DISCONNECT is out; this only bounds the wait.
        sleep(STEP_TIMEOUT).await;
        Ended::Shutdown
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
async fn drive(eventloop: &mut EventLoop, cmds: mpsc::Sender<rumqttc::Publish>) -> ConnectionError {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // A full command queue drops the command rather than stalling the event loop.
                let _ = cmds.try_send(p);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                return ConnectionError::RequestsDone;
            }
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}
