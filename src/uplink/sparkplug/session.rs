//! One Sparkplug session on an established connection: the subscriptions, the wait for the
//! primary host, the births, the spool read group by group with its proof of arrival, the
//! commands (rebirth, DCMD, STATE), and the NDEATH and DISCONNECT that end it.

use std::time::Duration;

use rumqttc::{
    AsyncClient, ClientError, ConnectionError, PublishNoticeError, PublishOptions, QoS,
    SubscribeNoticeError, UnsubscribeNoticeError,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use super::dcmd::DcmdWrite;
use super::{Ended, STEP_TIMEOUT, SparkplugUplink, state_topic};
use crate::codec::sparkplug::{self as spb, DeviceState, EdgeNodeModel, MessageType, SeqCounter};
use crate::completeness::Tally;
use crate::model::Timestamp;
use crate::spool::SpoolError;

/// What survives a reconnect: the last reported values and which devices are dead.
pub(super) struct NodeState {
    pub(super) devices: Vec<DeviceState>,
    /// The last reported values of the node metrics (the `metrics` stream's figures).
    pub(super) metrics: DeviceState,
    pub(super) dead: Vec<bool>,
    /// Timestamp of the last STATE accepted from the primary host (older ones are ignored).
    pub(super) host_ts: Option<u64>,
}

impl NodeState {
    pub(super) fn new(model: &EdgeNodeModel) -> Self {
        NodeState {
            devices: model
                .devices
                .iter()
                .map(|d| DeviceState::new(d.metrics.len()))
                .collect(),
            metrics: DeviceState::new(model.node.metrics.len()),
            dead: vec![false; model.devices.len()],
            host_ts: None,
        }
    }
}

pub(super) struct Session<'a> {
    pub(super) up: &'a SparkplugUplink,
    pub(super) client: &'a AsyncClient,
    pub(super) node: &'a mut NodeState,
    pub(super) seq: SeqCounter,
    pub(super) bd_seq: u64,
    /// Notices of the publishes not yet known to be written to the socket.
    pub(super) pending: Vec<rumqttc::PublishNotice>,
    /// DCMD write requests go here (served by [`serve_writes`](super::dcmd::serve_writes)).
    pub(super) dcmd: &'a mpsc::Sender<DcmdWrite>,
    /// The end of the grace period, once the shutdown signal was seen.
    pub(super) stopping: Option<Instant>,
}

/// Why a session was lost: the connection again after the backoff, and the error is the
/// uplink's `last_error`. The variants keep apart what failed: the link (the broker refused the
/// CONNECT, or the connection broke), the client's requests, the broker's answers (SUBACK, the
/// delivery proof), and the spool.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    /// The connection failed, or the broker refused it ([`ConnectionError::ConnectionRefused`]).
    #[error("{0}")]
    Link(#[from] ConnectionError),
    /// The event loop that hands the session its commands stopped.
    #[error("event loop stopped")]
    EventLoopStopped,
    /// A publish could not be queued in the client.
    #[error("publish: {0}")]
    Publish(#[source] ClientError),
    /// A publish was not written to the socket within [`STEP_TIMEOUT`].
    #[error("a publish was not written within 5 s")]
    PublishTimedOut,
    /// A publish failed before it was written.
    #[error("publish not written: {0}")]
    NotWritten(#[source] PublishNoticeError),
    /// A SUBSCRIBE could not be queued in the client.
    #[error("subscribe {topic}: {source}")]
    Subscribe {
        /// The topic filter.
        topic: String,
        /// The client's error.
        #[source]
        source: ClientError,
    },
    /// A SUBSCRIBE failed before its SUBACK (or the SUBACK refused it).
    #[error("subscribe {topic}: {source}")]
    Subscribed {
        /// The topic filter.
        topic: String,
        /// Why.
        #[source]
        source: SubscribeNoticeError,
    },
    /// No SUBACK within [`STEP_TIMEOUT`].
    #[error("no SUBACK for {topic}")]
    NoSuback {
        /// The topic filter.
        topic: String,
    },
    /// The UNSUBSCRIBE that proves a group's delivery could not be queued in the client.
    #[error("unsubscribe (delivery check): {0}")]
    ProofRequest(#[source] ClientError),
    /// The UNSUBSCRIBE that proves a group's delivery failed before its answer.
    #[error("delivery check: {0}")]
    ProofFailed(#[source] UnsubscribeNoticeError),
    /// The broker did not answer the UNSUBSCRIBE within `keep_alive`.
    #[error(
        "the broker did not answer within keep_alive ({unconfirmed} records unconfirmed, kept in the spool)"
    )]
    Unproven {
        /// The records of the group, left in the spool.
        unconfirmed: usize,
    },
    /// The spool could not be read.
    #[error("spool read: {0}")]
    SpoolRead(#[source] SpoolError),
    /// A group could not be acked in the spool.
    #[error("spool ack: {0}")]
    SpoolAck(#[source] SpoolError),
    /// The spool was closed under the session.
    #[error("spool closed")]
    SpoolClosed,
}

/// A group of records whose messages are out, waiting for the broker's answer to the UNSUBSCRIBE
/// sent after them: that answer proves the broker read everything before it.
pub(super) struct Proof {
    pub(super) answer: std::pin::Pin<Box<dyn Future<Output = Result<(), SessionError>> + Send>>,
    /// When the connection is given up for lost.
    pub(super) deadline: Instant,
    /// The spool ids of the group.
    pub(super) ids: Vec<i64>,
    /// What the group's `live` records count for in the completeness accounting.
    pub(super) tallies: Vec<Tally>,
    /// When the group's reading batches were acquired (publish latency).
    pub(super) acquired: Vec<Timestamp>,
}

/// The broker's answer to `proof`'s UNSUBSCRIBE, or an error when it fails or does not come
/// before the deadline. Pending forever without a proof in flight.
pub(super) async fn proof_answer(proof: &mut Option<Proof>) -> Result<(), SessionError> {
    let Some(p) = proof.as_mut() else {
        return std::future::pending().await;
    };
    match timeout_at(p.deadline, &mut p.answer).await {
        Ok(r) => r,
        Err(_) => Err(SessionError::Unproven {
            unconfirmed: p.ids.len(),
        }),
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
    pub(super) async fn run(
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
                    let Some(cmd) = cmd else { return Ended::Lost(SessionError::EventLoopStopped) };
                    if let Some(ended) = self.on_command(&cmd, &mut proof).await {
                        return ended;
                    }
                }
                changed = appended.changed() => {
                    if changed.is_err() {
                        return Ended::Lost(SessionError::SpoolClosed);
                    }
                    more = true;
                }
                _ = std::future::ready(()), if more && proof.is_none() => {}
            }
        }
    }

    /// Act on one command during the session; `Some` when it ends the session (the primary
    /// host went offline, or a rebirth failed).
    async fn on_command(
        &mut self,
        cmd: &rumqttc::Publish,
        proof: &mut Option<Proof>,
    ) -> Option<Ended> {
        match self.classify(cmd) {
            Command::Rebirth => {
                tracing::info!(uplink = %self.up.name, "rebirth requested");
                if let Err(e) = self.births().await {
                    return Some(Ended::Lost(e));
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
                    self.ndeath_and_disconnect(until, proof).await;
                    return Some(Ended::HostOffline);
                }
            }
            Command::Other => {}
        }
        None
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
                        return Some(Ended::Lost(SessionError::EventLoopStopped));
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

    /// Subscribe to the node's NCMD, its devices' DCMD and the primary host's STATE, each
    /// waiting for its SUBACK.
    async fn subscribe(&self) -> Result<(), SessionError> {
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
                .map_err(|source| SessionError::Subscribe {
                    topic: t.clone(),
                    source,
                })?;
            timeout(STEP_TIMEOUT, notice.wait_async())
                .await
                .map_err(|_| SessionError::NoSuback { topic: t.clone() })?
                .map_err(|source| SessionError::Subscribed { topic: t, source })?;
        }
        Ok(())
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
