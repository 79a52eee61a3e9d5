//! The MQTT uplink: spool → QoS 1 PUBLISH → PUBACK → spool ack.
//!
//! # Delivery contract
//! The spool, not the broker session, is the source of truth. The uplink connects with a clean
//! session (MQTT 3.1.1), publishes every spooled record at QoS 1 and acks it in the spool only when
//! its PUBACK arrived (`publish_tracked` notices of `rumqttc-v4-next`). Whatever was not acked stays
//! in the spool and is sent again after the next CONNACK, oldest first: delivery is at-least-once
//! and, per stream, the first delivery of each seq happens in seq order. Consumers drop duplicates
//! by `(site, stream, seq)`.
//!
//! # Tasks and connection generations
//! [`MqttUplink::run`] drives two loops concurrently in one task:
//! - the **driver** owns the rumqttc `EventLoop` and does nothing but poll it (PROTOCOLS.md §2.4).
//!   Each connection attempt gets a *fresh* client/event-loop pair, numbered by a generation.
//!   When a connection fails the pair is dropped, so every request still queued in it and every
//!   notice still waiting for a PUBACK fails with it; nothing sent through an old connection can be
//!   delivered, or acknowledged, on a later one. Between attempts it sleeps an exponential backoff
//!   (`reconnect_min` doubling to `reconnect_max`, ±25 % jitter, reset by a CONNACK).
//! - the **sender** reads the spool after a cursor and publishes through the client of the current
//!   generation, with at most `max_inflight` notices outstanding. Each id is tracked with the
//!   generation it was last published in. On a new generation the cursor restarts from 0, so every
//!   record still in the spool is sent again in id order; ids already acked (or awaiting the batched
//!   spool ack) are skipped. A notice resolves:
//!   - OK: the broker has the record, whichever generation sent it; the id joins the ack batch
//!     (flushed every 50 ms or 256 ids). Acking an id twice is harmless.
//!   - failed, for the id's latest generation: the id is forgotten and the cursor rewinds, so it is
//!     published again (in order) on the current connection or the next one.
//!   - failed, for an older generation than the id's latest: ignored; the newer publish decides.
//!
//!   A record whose body cannot be decoded is logged, counted as rejected and acked: it would never
//!   become sendable.
//!
//! # Status and logging
//! [`MqttUplink::status`] is a `watch` of [`UplinkStatus`]. A broker that refuses the connection
//! (bad credentials, not authorised) sets [`LinkState::AuthFailed`] and logs one error line; the
//! uplink keeps retrying with backoff but logs again only when the kind of failure changes.
//! Credentials are never logged: the rumqttc options (whose `Debug` prints the password) are never
//! formatted.
//!
//! # Status topic
//! The Last Will is `{"state":"offline","site":…}` on the status topic (retained, QoS 1). After every
//! CONNACK the uplink publishes `{"state":"online","site":…,"since":…,"version":…}` retained; on an
//! intentional shutdown it publishes the retained offline message itself, then DISCONNECTs (which
//! discards the Will).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Outgoing, Packet, PublishOptions, QoS,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::config::{MqttConfig, UplinkConfig, UplinkKind};
use crate::model::{Record, Timestamp};
use crate::publish::topic::{self, TopicError};
use crate::spool::{SpoolHandle, StoredRecord};

/// Acks collected from PUBACKs are written to the spool at least this often…
const ACK_FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// …or as soon as this many are waiting.
const ACK_FLUSH_IDS: usize = 256;
/// Default time [`MqttUplink::run`] waits for in-flight PUBACKs after the shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long the final offline publish and DISCONNECT may take.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an MQTT uplink cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// `mqtts://` was configured; TLS is not implemented yet.
    #[error("uplink {uplink:?}: mqtts is not supported in this build yet")]
    TlsUnsupported {
        /// The uplink name.
        uplink: String,
    },
    /// A topic template is unusable.
    #[error("uplink {uplink:?}: {source}")]
    Topic {
        /// The uplink name.
        uplink: String,
        /// What is wrong with the template.
        #[source]
        source: TopicError,
    },
    /// An MQTT setting is out of range.
    #[error("uplink {uplink:?}: {problem}")]
    Invalid {
        /// The uplink name.
        uplink: String,
        /// What is wrong.
        problem: String,
    },
}

/// Connection state of an uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// The first connection attempt is under way.
    Connecting,
    /// CONNACK received; records are being sent.
    Connected,
    /// Not connected; the reason of the last failure. Retrying with backoff.
    Disconnected(String),
    /// The broker refused the credentials or the client. Retrying with backoff.
    AuthFailed(String),
}

impl LinkState {
    /// Stable lowercase name (`connecting`, `connected`, `disconnected`, `auth_failed`).
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Disconnected(_) => "disconnected",
            LinkState::AuthFailed(_) => "auth_failed",
        }
    }
}

/// What an uplink is doing, for status displays and health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkStatus {
    /// Connection state.
    pub state: LinkState,
    /// Publishes awaiting their PUBACK, plus PUBACKed records awaiting the spool ack.
    pub in_flight: usize,
    /// Records removed from the spool after a PUBACK, since start.
    pub acked_total: u64,
    /// Records dropped because their body could not be decoded, since start.
    pub rejected_total: u64,
    /// Successful connections (CONNACKs), since start.
    pub connects: u64,
    /// The last error seen (connection, spool or publish), if any.
    pub last_error: Option<String>,
}

impl UplinkStatus {
    fn new() -> Self {
        UplinkStatus {
            state: LinkState::Connecting,
            in_flight: 0,
            acked_total: 0,
            rejected_total: 0,
            connects: 0,
            last_error: None,
        }
    }
}

impl fmt::Display for UplinkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in-flight {} acked {}",
            self.state.as_str(),
            self.in_flight,
            self.acked_total
        )?;
        if self.rejected_total > 0 {
            write!(f, " rejected {}", self.rejected_total)?;
        }
        match &self.state {
            LinkState::Disconnected(r) | LinkState::AuthFailed(r) => write!(f, " ({r})"),
            _ => Ok(()),
        }
    }
}

/// The MQTT uplink of one configured `[[uplink]]`. Build it with [`MqttUplink::new`], keep
/// [`MqttUplink::status`] for displays, then spawn [`MqttUplink::run`].
pub struct MqttUplink {
    name: String,
    site: String,
    cfg: MqttConfig,
    status_topic: String,
    spool: SpoolHandle,
    status_tx: watch::Sender<UplinkStatus>,
    shutdown_grace: Duration,
}

impl fmt::Debug for MqttUplink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // MqttConfig's password is a `Secret`, which prints as `Secret(***)`.
        f.debug_struct("MqttUplink")
            .field("name", &self.name)
            .field("site", &self.site)
            .field("cfg", &self.cfg)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

impl MqttUplink {
    /// Validate the uplink's MQTT settings and topic templates.
    pub fn new(
        site: &str,
        uplink: &UplinkConfig,
        spool: SpoolHandle,
    ) -> Result<MqttUplink, PublishError> {
        let UplinkKind::Mqtt(cfg) = &uplink.kind;
        let invalid = |problem: &str| PublishError::Invalid {
            uplink: uplink.name.clone(),
            problem: problem.to_owned(),
        };
        if cfg.tls {
            return Err(PublishError::TlsUnsupported {
                uplink: uplink.name.clone(),
            });
        }
        topic::validate(&cfg.topics).map_err(|source| PublishError::Topic {
            uplink: uplink.name.clone(),
            source,
        })?;
        if cfg.max_inflight == 0 {
            return Err(invalid("max_inflight must be at least 1"));
        }
        if cfg.client_id.is_empty() {
            return Err(invalid("client_id must not be empty"));
        }
        if cfg.password.is_some() && cfg.username.is_none() {
            return Err(invalid(
                "a password needs a username (MQTT 3.1.1 has no password-only login)",
            ));
        }
        if cfg.reconnect_min.is_zero() || cfg.reconnect_max < cfg.reconnect_min {
            return Err(invalid(
                "reconnect_min must be > 0 and reconnect_max must not be less than reconnect_min",
            ));
        }
        if cfg.max_packet_size < 1024 {
            return Err(invalid("max_packet_size must be at least 1024 bytes"));
        }
        let (status_tx, _) = watch::channel(UplinkStatus::new());
        Ok(MqttUplink {
            name: uplink.name.clone(),
            site: site.to_owned(),
            status_topic: topic::status_topic(&cfg.topics, site),
            cfg: cfg.clone(),
            spool,
            status_tx,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        })
    }

    /// How long [`MqttUplink::run`] waits for in-flight PUBACKs after the shutdown signal
    /// (default [`DEFAULT_SHUTDOWN_GRACE`]).
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The retained status topic (Last Will, online/offline).
    pub fn status_topic(&self) -> &str {
        &self.status_topic
    }

    /// A live view of the uplink's state and counters.
    pub fn status(&self) -> watch::Receiver<UplinkStatus> {
        self.status_tx.subscribe()
    }

    /// Connect, send and ack until `shutdown` is cancelled; then wait up to the grace period for
    /// in-flight PUBACKs, publish the retained offline status, DISCONNECT and return. Records not
    /// acknowledged stay in the spool for the next start.
    pub async fn run(self, shutdown: CancellationToken) {
        let (conn_tx, conn_rx) = watch::channel(None::<Conn>);
        let stop_driver = CancellationToken::new();
        let driver = Driver {
            uplink: &self,
            options: self.mqtt_options(),
            conn_tx,
        };
        let sender = Sender::new(&self, conn_rx);
        tokio::join!(driver.run(stop_driver.clone()), async {
            sender.run(&shutdown).await;
            stop_driver.cancel();
        });
        tracing::info!(uplink = %self.name, "uplink stopped");
    }

    fn mqtt_options(&self) -> MqttOptions {
        let cfg = &self.cfg;
        let mut o = MqttOptions::new(
            cfg.client_id.clone(),
            (cfg.broker.host.clone(), cfg.broker.port),
        );
        o.set_keep_alive(u16::try_from(cfg.keep_alive.as_secs().max(1)).unwrap_or(u16::MAX))
            .set_clean_session(true)
            .set_max_packet_size(cfg.max_packet_size, cfg.max_packet_size)
            .set_inflight(cfg.max_inflight)
            .set_request_channel_capacity(usize::from(cfg.max_inflight) + 8)
            .set_last_will(LastWill::new(
                self.status_topic.clone(),
                self.status_payload("offline", None),
                QoS::AtLeastOnce,
                true,
            ));
        match (&cfg.username, &cfg.password) {
            (Some(user), Some(password)) => {
                o.set_credentials(user.clone(), password.0.clone());
            }
            (Some(user), None) => {
                o.set_username(user.clone());
            }
            // A password without a user is refused by `new`.
            (None, _) => {}
        }
        o
    }

    fn status_payload(&self, state: &str, since: Option<Timestamp>) -> Vec<u8> {
        let v = match since {
            None => serde_json::json!({"state": state, "site": self.site}),
            Some(since) => serde_json::json!({
                "state": state,
                "site": self.site,
                "since": since.to_rfc3339(),
                "version": env!("CARGO_PKG_VERSION"),
            }),
        };
        serde_json::to_vec(&v).expect("a JSON value of strings always serialises")
    }

    fn update(&self, f: impl FnOnce(&mut UplinkStatus)) {
        self.status_tx.send_modify(f);
    }
}

/// The client of one established connection, handed from the driver to the sender.
#[derive(Clone)]
struct Conn {
    generation: u64,
    client: AsyncClient,
}

/// What kind of failure the driver last logged, so that a repeated failure is not logged again.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    Refused(String),
    Other(String),
}

// === impl Driver ===

struct Driver<'a> {
    uplink: &'a MqttUplink,
    options: MqttOptions,
    conn_tx: watch::Sender<Option<Conn>>,
}

impl Driver<'_> {
    async fn run(self, stop: CancellationToken) {
        let u = self.uplink;
        let mut backoff = Backoff::new(u.cfg.reconnect_min, u.cfg.reconnect_max);
        let mut generation = 0u64;
        let mut last_failure: Option<Failure> = None;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let (client, mut eventloop) = AsyncClient::builder(self.options.clone())
                .capacity(usize::from(u.cfg.max_inflight) + 8)
                .build();
            let connected = tokio::select! {
                _ = stop.cancelled() => return,
                r = wait_connack(&mut eventloop) => r,
            };
            match connected {
                Ok(()) => {
                    generation += 1;
                    backoff.reset();
                    if last_failure.take().is_some() || generation == 1 {
                        tracing::info!(uplink = %u.name, broker = %u.cfg.broker, "connected to the broker");
                    }
                    let online = u.status_payload("online", Some(Timestamp::now()));
                    let opts = PublishOptions::new(QoS::AtLeastOnce).retained();
                    if let Err(e) = client.try_publish(u.status_topic.clone(), online, opts) {
                        tracing::warn!(uplink = %u.name, "cannot queue the online status: {e}");
                    }
                    u.update(|s| {
                        s.state = LinkState::Connected;
                        s.connects += 1;
                    });
                    self.conn_tx.send_replace(Some(Conn {
                        generation,
                        client: client.clone(),
                    }));
                    let err = tokio::select! {
                        _ = stop.cancelled() => {
                            self.conn_tx.send_replace(None);
                            self.disconnect(&client, &mut eventloop).await;
                            return;
                        }
                        e = poll_until_error(&mut eventloop) => e,
                    };
                    self.conn_tx.send_replace(None);
                    let reason = describe(&err);
                    tracing::warn!(uplink = %u.name, broker = %u.cfg.broker, "connection lost: {reason}");
                    last_failure = Some(Failure::Other(reason.clone()));
                    u.update(|s| {
                        s.state = LinkState::Disconnected(reason.clone());
                        s.last_error = Some(reason);
                    });
                }
                Err(err) => self.connect_failed(&err, &mut last_failure),
            }
            // Dropping the pair fails every request and notice of this connection.
            drop(client);
            drop(eventloop);
            let delay = backoff.next_delay();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep(delay) => {}
            }
        }
    }

    fn connect_failed(&self, err: &ConnectionError, last_failure: &mut Option<Failure>) {
        let u = self.uplink;
        let (failure, state) = match err {
            ConnectionError::ConnectionRefused(code) => {
                let reason = refusal_reason(*code);
                let state = match code {
                    ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                        LinkState::AuthFailed(reason.to_owned())
                    }
                    _ => LinkState::Disconnected(reason.to_owned()),
                };
                (Failure::Refused(reason.to_owned()), state)
            }
            other => {
                let reason = describe(other);
                (
                    Failure::Other(reason.clone()),
                    LinkState::Disconnected(reason),
                )
            }
        };
        if last_failure.as_ref() != Some(&failure) {
            match &failure {
                Failure::Refused(reason) => tracing::error!(
                    "uplink {:?}: broker {} refused the connection: {reason}",
                    u.name,
                    u.cfg.broker
                ),
                Failure::Other(reason) => tracing::warn!(
                    "uplink {:?}: cannot connect to broker {}: {reason}",
                    u.name,
                    u.cfg.broker
                ),
            }
        } else {
            tracing::debug!(uplink = %u.name, broker = %u.cfg.broker, "connection attempt failed again: {err}");
        }
        let text = match &failure {
            Failure::Refused(r) => format!("refused: {r}"),
            Failure::Other(r) => r.clone(),
        };
        *last_failure = Some(failure);
        u.update(|s| {
            s.state = state;
            s.last_error = Some(text);
        });
    }

    /// Publish the retained offline status, then DISCONNECT, polling until it is written.
    async fn disconnect(&self, client: &AsyncClient, eventloop: &mut EventLoop) {
        let u = self.uplink;
        let offline = u.status_payload("offline", None);
        let opts = PublishOptions::new(QoS::AtLeastOnce).retained();
        let queued = client
            .try_publish(u.status_topic.clone(), offline, opts)
            .and_then(|()| client.try_disconnect_with_timeout(DISCONNECT_TIMEOUT));
        if let Err(e) = queued {
            tracing::warn!(uplink = %u.name, "cannot queue the offline status and DISCONNECT: {e}");
            return;
        }
        let done = timeout(DISCONNECT_TIMEOUT + Duration::from_millis(500), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match done {
            Ok(Ok(())) => {
                tracing::info!(uplink = %u.name, "published offline status and disconnected")
            }
            Ok(Err(e)) => tracing::warn!(uplink = %u.name, "disconnect: {}", describe(&e)),
            Err(_) => tracing::warn!(uplink = %u.name, "disconnect timed out"),
        }
        u.update(|s| s.state = LinkState::Disconnected("shut down".into()));
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

/// Poll an established connection until it fails. Incoming publishes are not expected (the
/// uplink subscribes to nothing) and are ignored.
async fn poll_until_error(eventloop: &mut EventLoop) -> ConnectionError {
    loop {
        if let Err(e) = eventloop.poll().await {
            return e;
        }
    }
}

fn refusal_reason(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Success => "success (unexpected refusal)",
        ConnectReturnCode::RefusedProtocolVersion => "unacceptable protocol version",
        ConnectReturnCode::BadClientId => "client identifier rejected",
        ConnectReturnCode::ServiceUnavailable => "server unavailable",
        ConnectReturnCode::BadUserNamePassword => "bad user name or password",
        ConnectReturnCode::NotAuthorized => "not authorized",
    }
}

fn describe(err: &ConnectionError) -> String {
    match err {
        ConnectionError::ConnectionRefused(code) => refusal_reason(*code).to_owned(),
        other => other.to_string(),
    }
}

// === impl Sender ===

/// Where an id stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracked {
    /// Published in this generation; its notice has not resolved.
    InFlight(u64),
    /// PUBACKed (or rejected); waiting for the batched spool ack.
    Acked,
}

/// The result a notice waiter reports: id, generation it was published in, outcome.
type NoticeOutcome = (i64, u64, Result<(), String>);

struct Sender<'a> {
    uplink: &'a MqttUplink,
    spool: SpoolHandle,
    conn_rx: watch::Receiver<Option<Conn>>,
    conn: Option<Conn>,
    /// Read the spool after this id.
    cursor: i64,
    /// The spool may hold records after `cursor` that were not read yet.
    more: bool,
    tracked: HashMap<i64, Tracked>,
    waiters: JoinSet<NoticeOutcome>,
    to_ack: Vec<i64>,
    ack_deadline: Option<Instant>,
    max_inflight: usize,
}

impl<'a> Sender<'a> {
    fn new(uplink: &'a MqttUplink, conn_rx: watch::Receiver<Option<Conn>>) -> Self {
        Sender {
            uplink,
            spool: uplink.spool.clone(),
            conn_rx,
            conn: None,
            cursor: 0,
            more: true,
            tracked: HashMap::new(),
            waiters: JoinSet::new(),
            to_ack: Vec::new(),
            ack_deadline: None,
            max_inflight: usize::from(uplink.cfg.max_inflight),
        }
    }

    fn generation(&self) -> Option<u64> {
        self.conn.as_ref().map(|c| c.generation)
    }

    /// Publishes of the current generation still waiting for their PUBACK.
    fn outstanding(&self) -> usize {
        let Some(generation) = self.generation() else {
            return 0;
        };
        self.tracked
            .values()
            .filter(|t| **t == Tracked::InFlight(generation))
            .count()
    }

    async fn run(mut self, shutdown: &CancellationToken) {
        let mut appended = self.spool.appended();
        loop {
            if self.conn.is_some() && self.more && self.outstanding() < self.max_inflight {
                self.fill().await;
                continue;
            }
            self.publish_status();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = self.conn_rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.on_connection_change();
                }
                Some(joined) = self.waiters.join_next(), if !self.waiters.is_empty() => {
                    if let Ok(outcome) = joined {
                        self.on_notice(outcome);
                    }
                }
                changed = appended.changed() => {
                    if changed.is_err() {
                        tracing::warn!(uplink = %self.uplink.name, "spool closed; uplink stops sending");
                        break;
                    }
                    self.more = true;
                }
                _ = sleep_until(self.ack_deadline.unwrap_or_else(far_future)), if self.ack_deadline.is_some() => {
                    self.flush_acks().await;
                }
            }
            if self.to_ack.len() >= ACK_FLUSH_IDS {
                self.flush_acks().await;
            }
        }
        self.drain().await;
    }

    fn on_connection_change(&mut self) {
        let next = self.conn_rx.borrow_and_update().clone();
        let new_generation = next.as_ref().map(|c| c.generation);
        if new_generation.is_some() && new_generation != self.generation() {
            // A new connection: re-send everything still in the spool, oldest first.
            self.cursor = 0;
            self.more = true;
        }
        // Dropping the old client lets its event loop's channel close, so its notices fail.
        self.conn = next;
    }

    fn on_notice(&mut self, (id, generation, result): NoticeOutcome) {
        match (result, self.tracked.get(&id).copied()) {
            (Ok(()), Some(Tracked::InFlight(_))) => {
                // A PUBACK from any generation means the broker has the record.
                self.tracked.insert(id, Tracked::Acked);
                self.queue_ack(id);
            }
            (Ok(()), _) => {}
            (Err(reason), Some(Tracked::InFlight(latest))) if latest == generation => {
                tracing::debug!(uplink = %self.uplink.name, id, "publish not acknowledged: {reason}");
                self.tracked.remove(&id);
                if Some(generation) == self.generation() {
                    // Failed on the live connection (it is probably dropping): send it again.
                    self.cursor = self.cursor.min(id - 1);
                    self.more = true;
                }
                // Otherwise the next connection's rewind to 0 picks it up.
            }
            // An older publish of a record that was published again, or already acked.
            (Err(_), _) => {}
        }
    }

    fn queue_ack(&mut self, id: i64) {
        self.to_ack.push(id);
        if self.ack_deadline.is_none() {
            self.ack_deadline = Some(Instant::now() + ACK_FLUSH_INTERVAL);
        }
    }

    async fn flush_acks(&mut self) {
        self.ack_deadline = None;
        if self.to_ack.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.to_ack);
        match self.spool.ack(ids.clone()).await {
            Ok(removed) => {
                for id in &ids {
                    self.tracked.remove(id);
                }
                self.uplink.update(|s| s.acked_total += removed);
            }
            Err(e) => {
                // Keep them: the next flush retries. Until then they are not sent again.
                tracing::warn!(uplink = %self.uplink.name, "cannot ack {} records in the spool: {e}", ids.len());
                self.uplink
                    .update(|s| s.last_error = Some(format!("spool ack: {e}")));
                self.to_ack = ids;
                self.ack_deadline = Some(Instant::now() + ACK_FLUSH_INTERVAL);
            }
        }
    }

    /// Read records after the cursor and publish them until the in-flight window is full.
    async fn fill(&mut self) {
        let Some(conn) = self.conn.clone() else {
            return;
        };
        let room = self.max_inflight.saturating_sub(self.outstanding());
        // Read more than `room`: some may be skipped as already in flight or acked.
        let limit = room.max(ACK_FLUSH_IDS);
        let records = match self.spool.read_after(self.cursor, limit).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(uplink = %self.uplink.name, "cannot read the spool: {e}");
                self.uplink
                    .update(|s| s.last_error = Some(format!("spool read: {e}")));
                // Wait for the next append or connection change before trying again.
                self.more = false;
                return;
            }
        };
        let exhausted = records.len() < limit;
        let mut published = Vec::new();
        let mut stopped_early = false;
        for record in records {
            match self.tracked.get(&record.id) {
                Some(Tracked::Acked) => {
                    self.cursor = record.id;
                    continue;
                }
                Some(Tracked::InFlight(g)) if *g == conn.generation => {
                    self.cursor = record.id;
                    continue;
                }
                _ => {}
            }
            if published.len() >= room {
                stopped_early = true;
                break;
            }
            match self.publish(&conn, &record).await {
                Sent::Published => published.push(record.id),
                Sent::Rejected => {}
                Sent::Failed => {
                    // The connection is going away; wait for the driver to hand over a new one.
                    self.conn = None;
                    stopped_early = true;
                    break;
                }
            }
            self.cursor = record.id;
        }
        self.more = stopped_early || !exhausted;
        if !published.is_empty()
            && let Err(e) = self.spool.mark_attempt(published).await
        {
            tracing::debug!(uplink = %self.uplink.name, "cannot count send attempts: {e}");
        }
        self.publish_status();
    }

    async fn publish(&mut self, conn: &Conn, record: &StoredRecord) -> Sent {
        let u = self.uplink;
        let decoded: Record = match serde_json::from_slice(&record.body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    uplink = %u.name, id = record.id, stream = record.stream.as_str(), seq = record.seq,
                    "dropping a spooled record that cannot be decoded: {e}"
                );
                u.update(|s| s.rejected_total += 1);
                self.tracked.insert(record.id, Tracked::Acked);
                self.queue_ack(record.id);
                return Sent::Rejected;
            }
        };
        let payload = crate::publish::encode::encode_record(
            u.cfg.encoding.for_stream(record.stream),
            &u.site,
            record.stream,
            record.seq,
            &decoded,
            false,
        );
        let topic = if record.topic.is_empty() {
            topic::topic_for(&u.cfg.topics, &u.site, &decoded)
        } else {
            record.topic.clone()
        };
        match conn
            .client
            .publish_tracked(topic, payload, PublishOptions::new(QoS::AtLeastOnce))
            .await
        {
            Ok(notice) => {
                let (id, generation) = (record.id, conn.generation);
                self.tracked.insert(id, Tracked::InFlight(generation));
                self.waiters.spawn(async move {
                    let result = notice
                        .wait_async()
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string());
                    (id, generation, result)
                });
                Sent::Published
            }
            Err(e) => {
                tracing::debug!(uplink = %u.name, "publish not queued: {e}");
                Sent::Failed
            }
        }
    }

    fn publish_status(&self) {
        let in_flight = self.tracked.len();
        self.uplink.status_tx.send_if_modified(|s| {
            let changed = s.in_flight != in_flight;
            s.in_flight = in_flight;
            changed
        });
    }

    /// After the shutdown signal: wait up to the grace period for outstanding PUBACKs, then write
    /// the acks that arrived. Everything else stays in the spool.
    async fn drain(mut self) {
        let deadline = Instant::now() + self.uplink.shutdown_grace;
        while self
            .tracked
            .values()
            .any(|t| matches!(t, Tracked::InFlight(_)))
        {
            tokio::select! {
                _ = sleep_until(deadline) => {
                    tracing::warn!(
                        uplink = %self.uplink.name,
                        "shutdown grace period over with {} publishes unacknowledged; they stay in the spool",
                        self.outstanding()
                    );
                    break;
                }
                joined = self.waiters.join_next() => match joined {
                    Some(Ok(outcome)) => self.on_notice(outcome),
                    Some(Err(_)) => {}
                    None => break,
                },
            }
        }
        self.flush_acks().await;
        self.publish_status();
        self.waiters.abort_all();
    }
}

enum Sent {
    Published,
    Rejected,
    Failed,
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

// === impl Backoff ===

/// Exponential reconnect delay with ±25 % jitter.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
            rng: fastrand::Rng::new(),
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay to sleep now; doubles the next one, up to the maximum.
    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(0.75 + 0.5 * self.rng.f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        b.rng = fastrand::Rng::with_seed(7);
        let bases = [100u64, 200, 400, 800, 1000, 1000];
        for base in bases {
            let d = b.next_delay().as_secs_f64() * 1000.0;
            let base = base as f64;
            assert!(
                d >= base * 0.75 - 1e-6 && d <= base * 1.25 + 1e-6,
                "{d} vs {base}"
            );
        }
        b.reset();
        let d = b.next_delay().as_millis();
        assert!((75..=125).contains(&d), "{d}");
    }

    #[test]
    fn refusal_reasons_read_like_the_spec() {
        assert_eq!(
            refusal_reason(ConnectReturnCode::BadUserNamePassword),
            "bad user name or password"
        );
        assert_eq!(
            refusal_reason(ConnectReturnCode::NotAuthorized),
            "not authorized"
        );
    }
}
