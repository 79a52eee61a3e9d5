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
//! - the **driver** owns the rumqttc `EventLoop` and does nothing but poll it (an event loop
//!   that is not polled stalls every client call).
//!   Each connection attempt gets a *fresh* client/event-loop pair, numbered by a generation.
//!   When a connection fails the pair is dropped, so every request still queued in it and every
//!   notice still waiting for a PUBACK fails with it; nothing sent through an old connection can be
//!   delivered, or acknowledged, on a later one. Between attempts it sleeps an exponential backoff
//!   (`reconnect_min` doubling to `reconnect_max`, ±25 % jitter, reset by a CONNACK).
//! - the **sender** reads the spool and publishes through the client of the current generation,
//!   with at most `max_inflight` notices outstanding. Each id is tracked with the generation it was
//!   last published in. On a new generation the spool is split at the last appended id (the
//!   *boundary*) into two lanes, each read in id order after its own cursor:
//!   - **fresh** (ids above the boundary): sent as soon as they are appended, first;
//!   - **backlog** (ids up to the boundary: everything that waited out the outage or restart):
//!     replayed beside the fresh lane, paced by a token bucket at `replay_rate` records/s, and
//!     marked `historical` in the payload (so is any record created more than
//!     [`HISTORICAL_AGE`] ago).
//!
//!   Ids already acked (or awaiting the batched spool ack) are skipped. A notice resolves:
//!   - OK: the broker has the record, whichever generation sent it; the id joins the ack batch
//!     (flushed every 50 ms or 256 ids). Acking an id twice is harmless.
//!   - failed, for the id's latest generation: the id is forgotten and its lane's cursor rewinds,
//!     so it is published again (in order) on the current connection or the next one.
//!   - failed, for an older generation than the id's latest: ignored; the newer publish decides.
//!
//!   A record whose body cannot be decoded is logged, counted as rejected and acked: it would never
//!   become sendable.
//!
//! # Records the broker will not take
//! Because every connection restarts at the oldest unacknowledged record, one record that cannot
//! be delivered would hold the whole uplink: rumqttc fails the connection on a packet over
//! `max_packet_size`, a broker drops the client on a packet over its own limit, and the next
//! connection sends the same record first again. Two rules keep such a record from blocking the
//! ones behind it; both move it to the spool's dead-letter table ([`SpoolHandle::dead_letter`]),
//! raise a `dead_letter` event on this spool's `events` stream, log a warning and count it in
//! [`UplinkStatus::dead_letters`]:
//! - **Too large.** Before a publish, its packet size (MQTT 3.1.1 PUBLISH at QoS 1: fixed header,
//!   topic, packet id, payload) is compared with `max_packet_size`; a larger record is never sent
//!   and is set aside at once, since no retry can make it fit. It is not split: the parts would
//!   share the record's `(site, stream, seq)`, which consumers drop duplicates by.
//! - **Kills the connection.** When a connection ends with publishes unacknowledged, the *first*
//!   of them in publish order is blamed (its `attempts` in the spool grows by one): PUBACKs come
//!   in publish order, so it is where the broker stopped. Records behind it that died with the
//!   connection are not counted. A record blamed by [`DEFAULT_DEAD_LETTER_AFTER`] connections
//!   (`with_dead_letter_after`) is set aside. A broker that merely goes away costs the record at
//!   the head one count, which its next PUBACK ends (the row is deleted); only a record that keeps
//!   being where connections die reaches the limit.
//!
//! `smeltwatch spool requeue` flags dead letters; the uplink moves flagged ones back into the
//! queue on every connection and every [`REQUEUE_CHECK_INTERVAL`], and sends them like fresh
//! records (same seq, new spool id).
//!
//! # Ordering after an outage
//! Within a lane, first deliveries of a stream happen in seq order. Across lanes they do not: after
//! an outage a consumer sees fresh seqs before the older, historical ones of the same stream. That
//! is the point of replaying beside live data; consumers order by `seq` (or by timestamps), drop
//! duplicates by `(site, stream, seq)`, and treat a missing seq as missing only once the backlog
//! has drained ([`UplinkStatus::backlog_records`] is 0).
//!
//! # Outage record
//! The spool's byte budget may drop records while the link is down. After every CONNACK the sender
//! compares the spool's per-stream drop counters with those already reported (kept in the spool's
//! kv store) and, if some are new, appends one `Event` of kind `outage` (attributes
//! `dropped_{stream}`, `dropped_total`, `outage_start`, `outage_end`, `duration_s`) to the
//! `events` stream of this spool, so it is durable and delivered like any record. The outage start
//! is when this process last lost the link (or started).
//!
//! # Keep-alive blind spot
//! A record published on a link that is already dead (the broker froze, a NAT dropped the flow)
//! is not acked until its PUBACK arrives, so it stays in the spool while the keep-alive timeout
//! runs; when the driver declares the link dead its notice fails and it is sent again on the next
//! connection.
//!
//! # TLS
//! `mqtts://` brokers use rustls with the ring provider; see [`crate::publish::tls`]. A failed
//! handshake is reported as one sentence (expired certificate, wrong CA, missing client
//! certificate…) in [`UplinkStatus::last_error`] and the log, and records stay in the spool.
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
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Outgoing, Packet, PublishOptions, QoS, TlsConfiguration, Transport,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::completeness::{self, Completeness, Tally};
use crate::config::{Encoding, MqttConfig, Stream, UplinkConfig, UplinkKind};
use crate::model::{Event as ModelEvent, EventKind, EventPhase, Record, Timestamp, Value};
use crate::publish::backoff::Backoff;
use crate::publish::encode::hj212_message::Hj212Messages;
use crate::publish::encode::json;
use crate::publish::tls::{self, TlsError};
use crate::publish::topic::{self, TopicError};
use crate::spool::{Decoded, NewRecord, SpoolHandle, StoredRecord};

/// Acks collected from PUBACKs are written to the spool at least this often… Each flush is a
/// command to the spool's thread; at one batch every 50 ms (20 sources of one device each), a
/// 50 ms flush was one more wake-up of that thread per batch. A slower flush only delays what
/// counts on acks (completeness, `acked_total`) and, after a crash, resends what was acked since
/// the last flush; the publish latency is taken at the PUBACK.
const ACK_FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// …or as soon as this many are waiting.
const ACK_FLUSH_IDS: usize = 256;
/// Default time [`MqttUplink::run`] waits for in-flight PUBACKs after the shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long the final offline publish and DISCONNECT may take.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections that ended with a record as the oldest unacknowledged publish before the record is
/// set aside as a dead letter (see the module docs).
pub const DEFAULT_DEAD_LETTER_AFTER: u32 = 5;
/// How often a connected uplink looks for dead letters that `smeltwatch spool requeue` flagged.
pub const REQUEUE_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// A record older than this when it is published is marked historical even if it was created
/// after the current connection was established (it waited behind a long backlog).
pub const HISTORICAL_AGE: Duration = Duration::from_secs(60);

/// Why an MQTT uplink cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The TLS settings of an `mqtts://` uplink are unusable (unreadable file, key mismatch…).
    #[error("uplink {uplink:?}: {source}")]
    Tls {
        /// The uplink name.
        uplink: String,
        /// What is wrong.
        #[source]
        source: TlsError,
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
    /// The uplink task itself ended on an error (its spool failed); its supervisor starts it
    /// again after a backoff. Not ready.
    Failed(String),
}

impl LinkState {
    /// Stable lowercase name (`connecting`, `connected`, `disconnected`, `auth_failed`, `failed`).
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Disconnected(_) => "disconnected",
            LinkState::AuthFailed(_) => "auth_failed",
            LinkState::Failed(_) => "failed",
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
    /// Records in the spool's dead-letter table (set aside because the broker would not take
    /// them, not yet re-queued).
    pub dead_letters: u64,
    /// Successful connections (CONNACKs), since start.
    pub connects: u64,
    /// The last error seen (connection, spool or publish), if any.
    pub last_error: Option<String>,
    /// Records that were waiting when the current connection was established and are not acked
    /// yet (the replay backlog; 0 when drained or while disconnected).
    pub backlog_records: u64,
    /// Creation time of the oldest backlog record not yet published; `None` when drained.
    pub backlog_oldest: Option<Timestamp>,
    /// Backlog records acked per second over the last complete second (the drain rate).
    pub replay_rate_per_s: u64,
    /// Commands from the broker dropped on a full queue, since start (Sparkplug NCMD/DCMD).
    pub commands_dropped_total: u64,
    /// Records that left the spool once written, with nothing to prove they arrived (HJ 212
    /// with `ack = false`), since start. Not in `acked_total`.
    pub unconfirmed_total: u64,
    /// Times the uplink task failed and was started again by its supervisor, since start.
    pub restarts: u64,
}

impl Default for UplinkStatus {
    fn default() -> Self {
        UplinkStatus::new()
    }
}

impl UplinkStatus {
    /// Age of the oldest backlog record not yet published, at `now`.
    pub fn backlog_age(&self, now: Timestamp) -> Option<Duration> {
        let oldest = self.backlog_oldest?;
        let ms = now.unix_ms().saturating_sub(oldest.unix_ms()).max(0);
        Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }

    fn new() -> Self {
        UplinkStatus {
            state: LinkState::Connecting,
            in_flight: 0,
            acked_total: 0,
            rejected_total: 0,
            dead_letters: 0,
            connects: 0,
            last_error: None,
            backlog_records: 0,
            backlog_oldest: None,
            replay_rate_per_s: 0,
            commands_dropped_total: 0,
            unconfirmed_total: 0,
            restarts: 0,
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
        if self.dead_letters > 0 {
            write!(f, " dead letters {}", self.dead_letters)?;
        }
        if self.backlog_records > 0 {
            write!(
                f,
                " backlog {} draining {}/s",
                self.backlog_records, self.replay_rate_per_s
            )?;
            if let Some(age) = self.backlog_age(Timestamp::now()) {
                write!(f, " oldest {}s", age.as_secs())?;
            }
        }
        if self.restarts > 0 {
            write!(f, " restarts {}", self.restarts)?;
        }
        match &self.state {
            LinkState::Disconnected(r) | LinkState::AuthFailed(r) | LinkState::Failed(r) => {
                write!(f, " ({r})")
            }
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
    /// Shared with the supervisor, which marks a failed run in it.
    status_tx: Arc<watch::Sender<UplinkStatus>>,
    shutdown_grace: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Completeness accounting, told what the broker acknowledged.
    completeness: Option<Arc<Completeness>>,
    /// Acquisition to PUBACK (and spool ack) of each delivered record.
    publish_latency: Arc<crate::histogram::Histogram>,
    /// Blamed connections before a record is set aside.
    dead_letter_after: u32,
    /// `encoding = "hj212"`: the MN of each stack and of each device that measures one.
    hj212_mn_by_subject: HashMap<String, String>,
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
        let (cfg, tls) = Self::checked(uplink)?;
        let (status_tx, _) = watch::channel(UplinkStatus::new());
        Ok(MqttUplink {
            name: uplink.name.clone(),
            site: site.to_owned(),
            status_topic: topic::status_topic(&cfg.topics, site),
            cfg: cfg.clone(),
            spool,
            status_tx: Arc::new(status_tx),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            tls,
            completeness: None,
            publish_latency: Arc::default(),
            dead_letter_after: DEFAULT_DEAD_LETTER_AFTER,
            hj212_mn_by_subject: HashMap::new(),
        })
    }

    /// Everything [`MqttUplink::new`] can refuse, without a spool: a configuration reload runs
    /// it before it stops the running agent, so that unusable TLS files keep the agent running.
    pub fn preflight(uplink: &UplinkConfig) -> Result<(), PublishError> {
        Self::checked(uplink).map(drop)
    }

    /// The uplink's MQTT settings once checked, and its TLS configuration (files read).
    fn checked(
        uplink: &UplinkConfig,
    ) -> Result<(&MqttConfig, Option<Arc<rustls::ClientConfig>>), PublishError> {
        let invalid = |problem: &str| PublishError::Invalid {
            uplink: uplink.name.clone(),
            problem: problem.to_owned(),
        };
        let UplinkKind::Mqtt(cfg) = &uplink.kind else {
            return Err(invalid("not an MQTT uplink"));
        };
        let tls = if cfg.tls {
            let config =
                tls::client_config(&cfg.tls_settings).map_err(|source| PublishError::Tls {
                    uplink: uplink.name.clone(),
                    source,
                })?;
            Some(config)
        } else {
            None
        };
        if cfg.replay_rate == 0 {
            return Err(invalid("replay_rate must be at least 1 record per second"));
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
        let hj212 = uplink
            .streams
            .iter()
            .any(|s| cfg.encoding.for_stream(*s) == Encoding::Hj212);
        if hj212 && cfg.encoding.hj212.is_none() {
            return Err(invalid(
                "encoding = \"hj212\" needs the station header of [uplinks.hj212]",
            ));
        }
        Ok((cfg, tls))
    }

    /// With `encoding = "hj212"`: the MN each stack's data and each measuring device's real-time
    /// data goes out under (`[uplinks.hj212] mn_by_stack` extended to the stacks' devices); the
    /// site's `mn` for anything else.
    pub fn with_hj212_mn_by_subject(mut self, mn_by_subject: HashMap<String, String>) -> Self {
        self.hj212_mn_by_subject = mn_by_subject;
        self
    }

    /// Count the values of every record the broker acknowledged (PUBACK, then the spool ack) as
    /// delivered by this uplink in `completeness`.
    pub fn with_completeness(mut self, completeness: Arc<Completeness>) -> Self {
        self.completeness = Some(completeness);
        self
    }

    /// Count the time from each delivered record's acquisition (a poll batch's scheduled time,
    /// otherwise the time it was spooled) to its acknowledgement in `histogram`.
    pub fn with_publish_latency(mut self, histogram: Arc<crate::histogram::Histogram>) -> Self {
        self.publish_latency = histogram;
        self
    }

    /// How long [`MqttUplink::run`] may take after the shutdown signal: it waits for in-flight
    /// PUBACKs, then publishes the offline status and DISCONNECTs, all within this time (default
    /// [`DEFAULT_SHUTDOWN_GRACE`]). The agent gives its `grace_period`.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// How many connections may end with a record as the oldest unacknowledged publish before it
    /// is set aside as a dead letter (default [`DEFAULT_DEAD_LETTER_AFTER`], at least 1).
    pub fn with_dead_letter_after(mut self, connections: u32) -> Self {
        self.dead_letter_after = connections.max(1);
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

    /// The sender behind [`MqttUplink::status`], for a supervisor that reports a failed run.
    pub fn status_sender(&self) -> Arc<watch::Sender<UplinkStatus>> {
        self.status_tx.clone()
    }

    /// Connect, send and ack until `shutdown` is cancelled; then wait up to the grace period for
    /// in-flight PUBACKs, publish the retained offline status, DISCONNECT and return. Records not
    /// acknowledged stay in the spool for the next start. A failure that ends the run is logged
    /// ([`MqttUplink::run_once`] returns it instead).
    pub async fn run(self, shutdown: CancellationToken) {
        if let Err(e) = self.run_once(&shutdown).await {
            tracing::error!(uplink = %self.name, "uplink stopped: {e}");
        }
    }

    /// [`MqttUplink::run`], returning `Err` when the run ended without `shutdown`: its spool
    /// closed under it. May be called again after it returned (the supervisor does): every run
    /// connects anew and reads the spool from its oldest record.
    pub async fn run_once(&self, shutdown: &CancellationToken) -> Result<(), String> {
        let (conn_tx, conn_rx) = watch::channel(None::<Conn>);
        let stop_driver = CancellationToken::new();
        // When the sender stopped, the time left for the offline status and DISCONNECT ends:
        // both share one grace period.
        let stop_deadline = std::sync::OnceLock::new();
        let driver = Driver {
            uplink: self,
            options: self.mqtt_options(),
            conn_tx,
            deadline: &stop_deadline,
        };
        let sender = Sender::new(self, conn_rx);
        let ((), ended) = tokio::join!(driver.run(stop_driver.clone()), async {
            let ended = sender.run(shutdown, &stop_deadline).await;
            stop_driver.cancel();
            ended
        });
        tracing::info!(uplink = %self.name, "uplink stopped");
        ended
    }

    fn mqtt_options(&self) -> MqttOptions {
        let cfg = &self.cfg;
        // With a TLS server-name override, rumqttc gets that name as its host (it is what rustls
        // sends as SNI and verifies), and the socket connector dials the configured host instead.
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
    /// Set by the sender when it stops: the end of the grace period.
    deadline: &'a std::sync::OnceLock<Instant>,
}

impl Driver<'_> {
    async fn run(self, stop: CancellationToken) {
        let u = self.uplink;
        let mut backoff = Backoff::new(u.cfg.reconnect_min, u.cfg.reconnect_max).with_jitter();
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
        // Within what is left of the grace period: a broker that does not take the offline
        // status in time publishes the Will, which says the same.
        let budget = self
            .deadline
            .get()
            .map_or(DISCONNECT_TIMEOUT, |d| {
                d.saturating_duration_since(Instant::now())
            })
            .min(DISCONNECT_TIMEOUT + Duration::from_millis(500));
        let done = timeout(budget, async {
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
        other => tls::explain(other).unwrap_or_else(|| other.to_string()),
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

/// The two read positions of a connection: records appended after the CONNACK (fresh) and the
/// records that were already waiting then (backlog).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Fresh,
    Backlog,
}

/// Kv key of the per-stream drop counts already reported in an outage event.
const REPORTED_DROPS_KEY: &str = "uplink.reported_drops";

struct Sender<'a> {
    uplink: &'a MqttUplink,
    spool: SpoolHandle,
    conn_rx: watch::Receiver<Option<Conn>>,
    conn: Option<Conn>,
    /// Ids up to this one were in the spool at the CONNACK: the backlog.
    boundary: i64,
    /// Read fresh records (ids above `boundary`) after this id.
    fresh_cursor: i64,
    /// The spool may hold fresh records after `fresh_cursor` that were not read yet.
    fresh_more: bool,
    /// Read backlog records after this id (up to `boundary`).
    backlog_cursor: i64,
    /// Backlog records after `backlog_cursor` may remain.
    backlog_more: bool,
    /// Backlog records not yet acked (estimate: spool depth at the CONNACK minus backlog acks).
    backlog_left: u64,
    /// When the link was last lost (or the uplink started), for the outage event.
    down_since: Timestamp,
    bucket: TokenBucket,
    drain: DrainRate,
    tracked: HashMap<i64, Tracked>,
    /// What each published record counts for in the completeness accounting, until its ack.
    tallies: HashMap<i64, Tally>,
    /// When each published record was acquired, until its ack (publish latency).
    acquired: HashMap<i64, Timestamp>,
    waiters: JoinSet<NoticeOutcome>,
    to_ack: Vec<i64>,
    /// Ids whose publish ended without a PUBACK, to be counted in the spool's `attempts` with the
    /// next ack flush. A successful send is not written: the ack deletes the row anyway, and
    /// rewriting a whole row (body included) per publish cost a write transaction per refill.
    failed_sends: Vec<i64>,
    ack_deadline: Option<Instant>,
    max_inflight: usize,
    /// Publishes so far, numbering each in publish order.
    publish_count: u64,
    /// For each id in flight: its number in publish order.
    publish_no: HashMap<i64, u64>,
    /// The attempts each record in flight had (as read, plus blames counted since).
    attempts: HashMap<i64, u32>,
    /// Per connection generation that lost publishes: the first of them (publish number, id).
    lost_head: HashMap<u64, (u64, i64)>,
    /// Records to move to the dead-letter table with the next flush, with their reason.
    to_dead: Vec<(i64, String)>,
    /// `encoding = "hj212"` on some stream: the messages' encoder.
    hj212: Option<Hj212Messages>,
    /// The records that went out in the message of another (the first of a window's aggregates,
    /// with `hj212`), by that record's id: its PUBACK, loss or dead letter is theirs too.
    riders: HashMap<i64, Vec<i64>>,
}

impl<'a> Sender<'a> {
    fn new(uplink: &'a MqttUplink, conn_rx: watch::Receiver<Option<Conn>>) -> Self {
        Sender {
            uplink,
            spool: uplink.spool.clone(),
            conn_rx,
            conn: None,
            boundary: 0,
            fresh_cursor: 0,
            fresh_more: true,
            backlog_cursor: 0,
            backlog_more: false,
            backlog_left: 0,
            down_since: Timestamp::now(),
            bucket: TokenBucket::new(uplink.cfg.replay_rate),
            drain: DrainRate::new(),
            tracked: HashMap::new(),
            tallies: HashMap::new(),
            acquired: HashMap::new(),
            waiters: JoinSet::new(),
            to_ack: Vec::new(),
            failed_sends: Vec::new(),
            ack_deadline: None,
            max_inflight: usize::from(uplink.cfg.max_inflight),
            publish_count: 0,
            publish_no: HashMap::new(),
            attempts: HashMap::new(),
            lost_head: HashMap::new(),
            to_dead: Vec::new(),
            hj212: uplink
                .cfg
                .encoding
                .hj212
                .as_ref()
                .map(|h| Hj212Messages::new(h, uplink.hj212_mn_by_subject.clone())),
            riders: HashMap::new(),
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

    /// The in-flight window has room worth a spool read: nothing is in flight, or at least a
    /// quarter of the window is free. Refilling one slot per PUBACK would cost a spool read per
    /// record under load; waiting for a quarter of the window batches the reads while the other
    /// three quarters keep the link busy.
    fn has_room(&self) -> bool {
        let outstanding = self.outstanding();
        outstanding == 0
            || self.max_inflight.saturating_sub(outstanding) >= (self.max_inflight / 4).max(1)
    }

    /// Something can be published right now.
    fn can_fill(&mut self) -> bool {
        self.conn.is_some()
            && self.has_room()
            && (self.fresh_more || (self.backlog_more && self.bucket.available(Instant::now()) > 0))
    }

    /// Send until `shutdown`, then drain within the grace period (setting `deadline` to its
    /// end). `Err` when the spool closed first.
    async fn run(
        mut self,
        shutdown: &CancellationToken,
        deadline: &std::sync::OnceLock<Instant>,
    ) -> Result<(), String> {
        let mut ended = Ok(());
        let mut appended = self.spool.appended();
        self.refresh_dead_letters().await;
        let mut requeue_check = tokio::time::interval(REQUEUE_CHECK_INTERVAL);
        requeue_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if self.can_fill() {
                self.fill().await;
                continue;
            }
            self.publish_status();
            // The backlog waits for replay tokens only when it is the one thing left to send.
            let token_wait = (self.conn.is_some() && self.backlog_more && self.has_room())
                .then(|| self.bucket.next_token_at());
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = self.conn_rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.on_connection_change().await;
                }
                Some(joined) = self.waiters.join_next(), if !self.waiters.is_empty() => {
                    if let Ok(outcome) = joined {
                        self.on_notice(outcome);
                    }
                }
                changed = appended.changed() => {
                    if changed.is_err() {
                        tracing::warn!(uplink = %self.uplink.name, "spool closed; uplink stops sending");
                        ended = Err("spool closed".to_owned());
                        break;
                    }
                    self.fresh_more = true;
                }
                _ = sleep_until(self.ack_deadline.unwrap_or_else(far_future)), if self.ack_deadline.is_some() => {
                    self.flush_acks().await;
                }
                _ = sleep_until(token_wait.unwrap_or_else(far_future)), if token_wait.is_some() => {}
                _ = requeue_check.tick(), if self.conn.is_some() => self.take_requeued().await,
            }
            if self.to_ack.len() >= ACK_FLUSH_IDS {
                self.flush_acks().await;
            }
        }
        let until = *deadline.get_or_init(|| Instant::now() + self.uplink.shutdown_grace);
        // The last fifth (at most 500 ms) is kept for the offline status and DISCONNECT.
        let reserve = (self.uplink.shutdown_grace / 5).min(Duration::from_millis(500));
        self.drain(until - reserve).await;
        ended
    }

    async fn on_connection_change(&mut self) {
        let next = self.conn_rx.borrow_and_update().clone();
        let new_generation = next.as_ref().map(|c| c.generation);
        if next.is_none() && self.conn.is_some() {
            self.down_since = Timestamp::now();
        }
        let is_new = new_generation.is_some() && new_generation != self.generation();
        // Dropping the old client lets its event loop's channel close, so its notices fail.
        self.conn = next;
        if is_new {
            self.on_connected().await;
        }
    }

    /// A new connection: report budget drops, then split the spool into the backlog (everything
    /// waiting now, replayed at `replay_rate`) and fresh records (sent as they come).
    async fn on_connected(&mut self) {
        let now = Timestamp::now();
        // Tallies of publishes that failed are taken again when the records are sent again.
        let tracked = &self.tracked;
        self.tallies.retain(|id, _| tracked.contains_key(id));
        self.acquired.retain(|id, _| tracked.contains_key(id));
        // Re-queued dead letters join the backlog of this connection.
        self.take_requeued().await;
        self.boundary = *self.spool.appended().borrow();
        self.fresh_cursor = self.boundary;
        self.fresh_more = true;
        self.backlog_cursor = 0;
        self.backlog_more = true;
        self.backlog_left = match self.spool.stats().await {
            Ok(stats) => stats.records,
            Err(_) => 0,
        };
        self.bucket.reset(Instant::now());
        self.drain = DrainRate::new();
        // After the boundary: the outage event is fresh news about the past, sent first.
        self.report_outage(now).await;
    }

    /// If the byte budget dropped records since the last report, append one `outage` event to the
    /// `events` stream of this spool, naming the drops per stream and the outage window. The
    /// reported counts are kept in the spool's kv store, so each drop is reported once (a crash
    /// between the append and the kv write reports it twice, never zero times).
    async fn report_outage(&mut self, now: Timestamp) {
        let u = self.uplink;
        let dropped = match self.spool.dropped_per_stream().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(uplink = %u.name, "cannot read the spool's drop counters: {e}");
                return;
            }
        };
        let reported: HashMap<Stream, u64> =
            match self.spool.kv_get(REPORTED_DROPS_KEY.to_owned()).await {
                Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
                Ok(None) => HashMap::new(),
                Err(e) => {
                    tracing::warn!(uplink = %u.name, "cannot read the reported drop counters: {e}");
                    return;
                }
            };
        let new: Vec<(Stream, u64)> = dropped
            .iter()
            .map(|(s, n)| (*s, n.saturating_sub(reported.get(s).copied().unwrap_or(0))))
            .collect();
        let total: u64 = new.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return;
        }
        let event = outage_event(&u.name, self.down_since, now, &new);
        let record = Record::Event(event);
        let body = crate::publish::body::encode(&record);
        let new_record = NewRecord {
            stream: Stream::Events,
            topic: topic::topic_for(&u.cfg.topics, &u.site, &record),
            body,
            created: now,
        };
        if let Err(e) = self.spool.append(vec![new_record]).await {
            tracing::warn!(uplink = %u.name, "cannot spool the outage event: {e}");
            return;
        }
        let counts: HashMap<Stream, u64> = dropped.into_iter().collect();
        let bytes = serde_json::to_vec(&counts).expect("a map of counters always serialises");
        if let Err(e) = self
            .spool
            .kv_set(REPORTED_DROPS_KEY.to_owned(), bytes)
            .await
        {
            tracing::warn!(uplink = %u.name, "cannot store the reported drop counters: {e}");
        }
        tracing::warn!(uplink = %u.name, dropped = total, "the spool budget dropped records during the outage; outage event queued");
    }

    fn lane_of(&self, id: i64) -> Lane {
        if id > self.boundary {
            Lane::Fresh
        } else {
            Lane::Backlog
        }
    }

    fn on_notice(&mut self, (id, generation, result): NoticeOutcome) {
        match (result, self.tracked.get(&id).copied()) {
            (Ok(()), Some(Tracked::InFlight(_))) => {
                // A PUBACK from any generation means the broker has the record.
                self.tracked.insert(id, Tracked::Acked);
                self.queue_ack(id);
                for rider in self.riders.remove(&id).unwrap_or_default() {
                    self.tracked.insert(rider, Tracked::Acked);
                    self.queue_ack(rider);
                }
            }
            (Ok(()), _) => {}
            (Err(reason), Some(Tracked::InFlight(latest))) if latest == generation => {
                tracing::debug!(uplink = %self.uplink.name, id, "publish not acknowledged: {reason}");
                self.tracked.remove(&id);
                self.note_lost(id, generation);
                // Sent again with it (the rewind below reads them again), unless set aside with it.
                for rider in self.riders.remove(&id).unwrap_or_default() {
                    self.tracked.remove(&rider);
                }
                if self.ack_deadline.is_none() {
                    self.ack_deadline = Some(Instant::now() + ACK_FLUSH_INTERVAL);
                }
                if Some(generation) == self.generation() {
                    // Failed on the live connection (it is probably dropping): send it again.
                    match self.lane_of(id) {
                        Lane::Fresh => {
                            self.fresh_cursor = self.fresh_cursor.min(id - 1);
                            self.fresh_more = true;
                        }
                        Lane::Backlog => {
                            self.backlog_cursor = self.backlog_cursor.min(id - 1);
                            self.backlog_more = true;
                        }
                    }
                }
                // Otherwise the next connection's rewind picks it up.
            }
            // An older publish of a record that was published again, or already acked.
            (Err(_), _) => {}
        }
    }

    /// A publish of `generation` ended without its PUBACK. Once none of that generation is left
    /// in flight, the first lost one in publish order is blamed (see the module docs).
    fn note_lost(&mut self, id: i64, generation: u64) {
        let no = self.publish_no.get(&id).copied().unwrap_or(u64::MAX);
        let head = self.lost_head.entry(generation).or_insert((no, id));
        if no < head.0 {
            *head = (no, id);
        }
        let pending = self
            .tracked
            .values()
            .any(|t| *t == Tracked::InFlight(generation));
        if pending {
            return;
        }
        let Some((_, blamed)) = self.lost_head.remove(&generation) else {
            return;
        };
        let attempts = self.attempts.get(&blamed).copied().unwrap_or(0) + 1;
        self.attempts.insert(blamed, attempts);
        self.failed_sends.push(blamed);
        if attempts >= self.uplink.dead_letter_after && !self.tracked.contains_key(&blamed) {
            let last = self
                .uplink
                .status_tx
                .borrow()
                .last_error
                .clone()
                .unwrap_or_else(|| "unknown".into());
            let reason = format!(
                "{attempts} connections ended with it the oldest unacknowledged publish (last: {last})"
            );
            self.set_aside(blamed, reason);
        }
    }

    /// Never send `id` again on this run; move it to the dead-letter table with the next flush.
    fn set_aside(&mut self, id: i64, reason: String) {
        for rider in self.riders.remove(&id).unwrap_or_default() {
            self.tracked.insert(rider, Tracked::Acked);
            self.to_dead.push((rider, reason.clone()));
        }
        self.tracked.insert(id, Tracked::Acked);
        self.to_dead.push((id, reason));
        if self.ack_deadline.is_none() {
            self.ack_deadline = Some(Instant::now() + ACK_FLUSH_INTERVAL);
        }
    }

    /// Move the records set aside to the dead-letter table and report each one.
    async fn flush_dead_letters(&mut self) {
        if self.to_dead.is_empty() {
            return;
        }
        let u = self.uplink;
        let letters = std::mem::take(&mut self.to_dead);
        let moved = match self.spool.dead_letter(letters.clone()).await {
            Ok(moved) => moved,
            Err(e) => {
                tracing::warn!(uplink = %u.name, "cannot move {} records to the dead-letter table: {e}", letters.len());
                u.update(|s| s.last_error = Some(format!("spool dead letter: {e}")));
                self.to_dead = letters;
                self.ack_deadline = Some(Instant::now() + ACK_FLUSH_INTERVAL);
                return;
            }
        };
        for (id, _) in &letters {
            self.tracked.remove(id);
            self.attempts.remove(id);
            self.publish_no.remove(id);
            self.tallies.remove(id);
            self.acquired.remove(id);
        }
        let backlog = moved.iter().filter(|d| d.id <= self.boundary).count() as u64;
        self.backlog_left = self.backlog_left.saturating_sub(backlog);
        let now = Timestamp::now();
        let mut events = Vec::with_capacity(moved.len());
        for letter in &moved {
            tracing::warn!(
                uplink = %u.name, id = letter.id, stream = letter.stream.as_str(), seq = letter.seq,
                "record set aside as a dead letter: {}", letter.reason
            );
            let record = Record::Event(dead_letter_event(&u.name, now, letter));
            events.push(NewRecord {
                stream: Stream::Events,
                topic: topic::topic_for(&u.cfg.topics, &u.site, &record),
                body: crate::publish::body::encode(&record),
                created: now,
            });
        }
        if let Err(e) = self.spool.append(events).await {
            tracing::warn!(uplink = %u.name, "cannot spool the dead_letter events: {e}");
        }
        self.refresh_dead_letters().await;
    }

    /// Move dead letters that `smeltwatch spool requeue` flagged back into the queue.
    async fn take_requeued(&mut self) {
        match self.spool.take_requeued().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(uplink = %self.uplink.name, records = n, "re-queued dead letters");
                self.fresh_more = true;
                self.refresh_dead_letters().await;
            }
            Err(e) => {
                tracing::warn!(uplink = %self.uplink.name, "cannot re-queue dead letters: {e}")
            }
        }
    }

    async fn refresh_dead_letters(&mut self) {
        if let Ok(stats) = self.spool.stats().await {
            self.uplink.update(|s| s.dead_letters = stats.dead_letters);
        }
    }

    fn queue_ack(&mut self, id: i64) {
        if let Some(t) = self.acquired.remove(&id) {
            self.uplink
                .publish_latency
                .observe_between(t, Timestamp::now());
        }
        self.to_ack.push(id);
        if self.ack_deadline.is_none() {
            self.ack_deadline = Some(Instant::now() + ACK_FLUSH_INTERVAL);
        }
    }

    async fn flush_acks(&mut self) {
        self.ack_deadline = None;
        if !self.failed_sends.is_empty() {
            let ids = std::mem::take(&mut self.failed_sends);
            if let Err(e) = self.spool.mark_attempt(ids).await {
                tracing::debug!(uplink = %self.uplink.name, "cannot count failed sends: {e}");
            }
        }
        self.flush_dead_letters().await;
        if self.to_ack.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.to_ack);
        match self.spool.ack(ids.clone()).await {
            Ok(removed) => {
                for id in &ids {
                    self.tracked.remove(id);
                    self.publish_no.remove(id);
                    self.attempts.remove(id);
                }
                // Delivered: the broker acknowledged these and the spool let go of them.
                let delivered: Vec<Tally> = ids
                    .iter()
                    .filter_map(|id| self.tallies.remove(id))
                    .collect();
                if let Some(c) = &self.uplink.completeness
                    && !delivered.is_empty()
                {
                    c.delivered(&self.uplink.name, &delivered);
                }
                let backlog = ids.iter().filter(|id| **id <= self.boundary).count() as u64;
                self.backlog_left = self.backlog_left.saturating_sub(backlog);
                self.drain.add(Instant::now(), backlog);
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

    /// Publish fresh records first, then backlog records as far as the replay rate allows, until
    /// the in-flight window is full.
    async fn fill(&mut self) {
        if self.fresh_more {
            let room = self.max_inflight.saturating_sub(self.outstanding());
            self.fill_lane(Lane::Fresh, room).await;
        }
        if self.backlog_more && self.conn.is_some() {
            let room = self.max_inflight.saturating_sub(self.outstanding());
            let tokens = self.bucket.available(Instant::now());
            let sent = self.fill_lane(Lane::Backlog, room.min(tokens)).await;
            self.bucket.take(sent);
        }
        self.publish_status();
    }

    /// Read records of one lane after its cursor and publish up to `room` of them; returns how
    /// many were published.
    async fn fill_lane(&mut self, lane: Lane, room: usize) -> usize {
        let Some(conn) = self.conn.clone() else {
            return 0;
        };
        if room == 0 {
            return 0;
        }
        let cursor = match lane {
            Lane::Fresh => self.fresh_cursor,
            Lane::Backlog => self.backlog_cursor,
        };
        // Read `room` records: each carries its whole body, so reading more than can be sent
        // costs a copy per record. Records skipped as already in flight or acked (after a rewind)
        // leave the lane `more`, and the next fill reads on from the cursor.
        let limit = room;
        let records = match self.spool.read_after_decoded(cursor, limit).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(uplink = %self.uplink.name, "cannot read the spool: {e}");
                self.uplink
                    .update(|s| s.last_error = Some(format!("spool read: {e}")));
                // Wait for the next append or connection change before trying again.
                self.set_lane(lane, cursor, false);
                return 0;
            }
        };
        let exhausted = records.len() < limit;
        if lane == Lane::Backlog {
            let oldest = records
                .iter()
                .find(|(r, _)| r.id <= self.boundary)
                .map(|(r, _)| r.created);
            self.uplink.update(|s| s.backlog_oldest = oldest);
        }
        let mut cursor = cursor;
        let mut stopped_early = false;
        let mut lane_done = false;
        let mut sent = 0usize;
        let mut records = records.into_iter().peekable();
        while let Some((record, decoded)) = records.next() {
            if lane == Lane::Backlog && record.id > self.boundary {
                lane_done = true;
                break;
            }
            match self.tracked.get(&record.id) {
                Some(Tracked::Acked) => {
                    cursor = record.id;
                    continue;
                }
                Some(Tracked::InFlight(g)) if *g == conn.generation => {
                    cursor = record.id;
                    continue;
                }
                _ => {}
            }
            if sent >= room {
                stopped_early = true;
                break;
            }
            let outcome = if self.hj212.is_some()
                && self.uplink.cfg.encoding.for_stream(record.stream) == Encoding::Hj212
            {
                let bound = (lane == Lane::Backlog).then_some(self.boundary);
                let group = self.hj212_group(record, decoded, &mut records, bound);
                let last = group.last().map(|(r, _)| r.id);
                let outcome = self.publish_hj212(&conn, group).await;
                if !matches!(outcome, Sent::Failed) {
                    cursor = last.unwrap_or(cursor);
                }
                outcome
            } else {
                let id = record.id;
                let outcome = self.publish(&conn, &record, decoded).await;
                if !matches!(outcome, Sent::Failed) {
                    cursor = id;
                }
                outcome
            };
            match outcome {
                Sent::Published => sent += 1,
                Sent::Rejected | Sent::Nothing => {}
                Sent::Failed => {
                    // The connection is going away; wait for the driver to hand over a new one.
                    self.conn = None;
                    stopped_early = true;
                    break;
                }
            }
        }
        let more = !lane_done && (stopped_early || !exhausted);
        self.set_lane(lane, cursor, more);
        sent
    }

    fn set_lane(&mut self, lane: Lane, cursor: i64, more: bool) {
        match lane {
            Lane::Fresh => {
                self.fresh_cursor = cursor;
                self.fresh_more = more;
            }
            Lane::Backlog => {
                self.backlog_cursor = cursor;
                self.backlog_more = more;
                if !more {
                    self.uplink.update(|s| s.backlog_oldest = None);
                }
            }
        }
    }

    /// A record is historical when it was already in the spool when the current connection was
    /// established (the backlog: it waited out an outage or a restart), or when it was created
    /// more than [`HISTORICAL_AGE`] ago.
    fn is_historical(&self, record: &StoredRecord) -> bool {
        let age_ms = Timestamp::now()
            .unix_ms()
            .saturating_sub(record.created.unix_ms());
        record.id <= self.boundary
            || u128::try_from(age_ms).unwrap_or(0) > HISTORICAL_AGE.as_millis()
    }

    /// The payload, topic and completeness tally of a spooled record; `Err` when its body cannot
    /// be decoded. `decoded` is the record as fan-out appended it (unsealed records only), when
    /// the spool still had it: a poll batch that its body decodes back to exactly is then encoded
    /// from it, without parsing the body again (the payload is the same either way).
    fn prepare(
        &self,
        record: &StoredRecord,
        decoded: Option<Decoded>,
    ) -> Result<(Vec<u8>, String, Option<Tally>, Timestamp), crate::publish::body::BodyError> {
        let u = self.uplink;
        let historical = self.is_historical(record);
        let encoding = u.cfg.encoding.for_stream(record.stream);
        if let Some(decoded) = decoded.as_ref().and_then(|d| d.downcast_ref::<Record>())
            && !record.topic.is_empty()
            && decoded.is_batch_exact_in_json()
        {
            let payload = crate::publish::encode::encode_sealed(
                encoding,
                &u.site,
                record.stream,
                record.seq,
                decoded,
                historical,
                None,
            );
            let tally = u
                .completeness
                .is_some()
                .then(|| completeness::tally(decoded))
                .flatten();
            let acquired = crate::histogram::acquired_at(decoded, record.created);
            return Ok((payload, record.topic.clone(), tally, acquired));
        }
        // A live batch in a JSON body (spools written by older builds) to a JSON payload, encoded
        // from the body as it is, without building the record (see `SpooledBatch`).
        if record.stream == Stream::Live
            && encoding == Encoding::Json
            && !record.topic.is_empty()
            && let Some(batch) = json::SpooledBatch::parse(&record.body)
        {
            let payload = batch.encode(&u.site, record.stream, record.seq, historical);
            let tally = u.completeness.is_some().then(|| {
                let device = Arc::from(batch.device.as_ref());
                completeness::live_tally(device, batch.scheduled, batch.quality_counts())
            });
            return Ok((payload, record.topic.clone(), tally, batch.scheduled));
        }
        let decoded = crate::publish::body::decode(&record.body)?;
        let seal = crate::ledger::capture::seal_of(&record.body);
        let payload = crate::publish::encode::encode_sealed(
            encoding,
            &u.site,
            record.stream,
            record.seq,
            &decoded,
            historical,
            seal.as_ref(),
        );
        let topic = if record.topic.is_empty() {
            topic::topic_for(&u.cfg.topics, &u.site, &decoded)
        } else {
            record.topic.clone()
        };
        let tally = u
            .completeness
            .is_some()
            .then(|| completeness::tally(&decoded))
            .flatten();
        let acquired = crate::histogram::acquired_at(&decoded, record.created);
        Ok((payload, topic, tally, acquired))
    }

    async fn publish(
        &mut self,
        conn: &Conn,
        record: &StoredRecord,
        decoded: Option<Decoded>,
    ) -> Sent {
        let u = self.uplink;
        let (payload, topic, tally, acquired) = match self.prepare(record, decoded) {
            Ok(prepared) => prepared,
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
        let size = publish_packet_size(topic.len(), payload.len());
        if size > u.cfg.max_packet_size {
            let reason = format!(
                "its PUBLISH packet of {size} bytes is larger than max_packet_size ({})",
                u.cfg.max_packet_size
            );
            self.set_aside(record.id, reason);
            return Sent::Rejected;
        }
        match conn
            .client
            .publish_tracked(topic, payload, PublishOptions::new(QoS::AtLeastOnce))
            .await
        {
            Ok(notice) => {
                let (id, generation) = (record.id, conn.generation);
                self.track(record, generation, tally, acquired);
                self.await_puback(id, generation, notice);
                Sent::Published
            }
            Err(e) => {
                tracing::debug!(uplink = %u.name, "publish not queued: {e}");
                Sent::Failed
            }
        }
    }

    /// Note `record` as published in `generation`, for its PUBACK.
    fn track(
        &mut self,
        record: &StoredRecord,
        generation: u64,
        tally: Option<Tally>,
        acquired: Timestamp,
    ) {
        let id = record.id;
        self.tracked.insert(id, Tracked::InFlight(generation));
        self.publish_count += 1;
        self.publish_no.insert(id, self.publish_count);
        let known = self.attempts.entry(id).or_insert(0);
        *known = (*known).max(record.attempts);
        if let Some(t) = tally {
            self.tallies.insert(id, t);
        }
        self.acquired.insert(id, acquired);
    }

    /// The records that make one HJ 212 message, starting with `first`: a window's aggregates
    /// are appended one after another, so the next records of `rest` that belong to the same
    /// window join it (up to `bound`, the backlog's end, and not those already published). A
    /// record whose body cannot be decoded goes alone, as `None`.
    fn hj212_group<I>(
        &self,
        first: StoredRecord,
        decoded: Option<Decoded>,
        rest: &mut std::iter::Peekable<I>,
        bound: Option<i64>,
    ) -> Vec<(StoredRecord, Option<Record>)>
    where
        I: Iterator<Item = (StoredRecord, Option<Decoded>)>,
    {
        let decode = |r: &StoredRecord, d: Option<&Decoded>| -> Option<Record> {
            match d.and_then(|d| d.downcast_ref::<Record>()) {
                Some(record) if crate::ledger::capture::seal_of(&r.body).is_none() => {
                    Some(record.clone())
                }
                _ => crate::publish::body::decode(&r.body).ok(),
            }
        };
        let head = decode(&first, decoded.as_ref());
        let window = head.as_ref().and_then(Hj212Messages::window_of);
        let mut group = vec![(first, head)];
        let Some(window) = window else {
            return group;
        };
        while let Some((next, next_decoded)) = rest.peek() {
            let joins = next.stream == group[0].0.stream
                && bound.is_none_or(|b| next.id <= b)
                && !self.tracked.contains_key(&next.id);
            let record = joins.then(|| decode(next, next_decoded.as_ref())).flatten();
            match record {
                Some(r) if Hj212Messages::window_of(&r).as_ref() == Some(&window) => {
                    let (next, _) = rest.next().expect("peeked");
                    group.push((next, Some(r)));
                }
                _ => break,
            }
        }
        group
    }

    /// Publish the HJ 212 message of `group` (see [`Sender::hj212_group`]): its first record is
    /// tracked, the others ride with it.
    async fn publish_hj212(
        &mut self,
        conn: &Conn,
        group: Vec<(StoredRecord, Option<Record>)>,
    ) -> Sent {
        let u = self.uplink;
        let ids: Vec<i64> = group.iter().map(|(r, _)| r.id).collect();
        let (leader, leader_record) = &group[0];
        let Some(leader_record) = leader_record else {
            tracing::warn!(
                uplink = %u.name, id = leader.id, stream = leader.stream.as_str(), seq = leader.seq,
                "dropping a spooled record that cannot be decoded"
            );
            u.update(|s| s.rejected_total += 1);
            self.tracked.insert(leader.id, Tracked::Acked);
            self.queue_ack(leader.id);
            return Sent::Rejected;
        };
        let records: Vec<&Record> = group.iter().filter_map(|(_, r)| r.as_ref()).collect();
        let encoded = match self.hj212.as_mut() {
            Some(messages) => messages.encode(Timestamp::now(), &records),
            None => Ok(Vec::new()),
        };
        let payload = match encoded {
            Ok(payload) => payload,
            Err(e) => {
                for id in ids {
                    self.set_aside(id, format!("it has no HJ 212 packet: {e}"));
                }
                return Sent::Rejected;
            }
        };
        if payload.is_empty() {
            for id in ids {
                self.tracked.insert(id, Tracked::Acked);
                self.queue_ack(id);
            }
            return Sent::Nothing;
        }
        let topic = if leader.topic.is_empty() {
            topic::topic_for(&u.cfg.topics, &u.site, leader_record)
        } else {
            leader.topic.clone()
        };
        let size = publish_packet_size(topic.len(), payload.len());
        if size > u.cfg.max_packet_size {
            let reason = format!(
                "its PUBLISH packet of {size} bytes is larger than max_packet_size ({})",
                u.cfg.max_packet_size
            );
            for id in ids {
                self.set_aside(id, reason.clone());
            }
            return Sent::Rejected;
        }
        let notice = conn
            .client
            .publish_tracked(topic, payload, PublishOptions::new(QoS::AtLeastOnce))
            .await;
        let notice = match notice {
            Ok(notice) => notice,
            Err(e) => {
                tracing::debug!(uplink = %u.name, "publish not queued: {e}");
                return Sent::Failed;
            }
        };
        let generation = conn.generation;
        for (record, decoded) in &group {
            let tally = decoded.as_ref().and_then(|d| {
                u.completeness
                    .is_some()
                    .then(|| completeness::tally(d))
                    .flatten()
            });
            let acquired = decoded.as_ref().map_or(record.created, |d| {
                crate::histogram::acquired_at(d, record.created)
            });
            self.track(record, generation, tally, acquired);
        }
        let id = ids[0];
        self.riders.insert(id, ids[1..].to_vec());
        self.await_puback(id, generation, notice);
        Sent::Published
    }

    /// Wait for the PUBACK of `id`'s publish in `generation` (see [`Sender::on_notice`]).
    fn await_puback(&mut self, id: i64, generation: u64, notice: rumqttc::PublishNotice) {
        self.waiters.spawn(async move {
            let result = notice
                .wait_async()
                .await
                .map(drop)
                .map_err(|e| e.to_string());
            (id, generation, result)
        });
    }

    fn publish_status(&mut self) {
        let in_flight = self.tracked.len();
        if !self.backlog_more && !self.tracked.keys().any(|id| *id <= self.boundary) {
            // Every backlog record was sent and acked; the estimate may have counted a few
            // records appended while the connection came up.
            self.backlog_left = 0;
        }
        let backlog = if self.conn.is_some() {
            self.backlog_left
        } else {
            0
        };
        let rate = self.drain.per_second(Instant::now());
        self.uplink.status_tx.send_if_modified(|s| {
            let changed = s.in_flight != in_flight
                || s.backlog_records != backlog
                || s.replay_rate_per_s != rate;
            s.in_flight = in_flight;
            s.backlog_records = backlog;
            s.replay_rate_per_s = rate;
            changed
        });
    }

    /// After the shutdown signal: wait until `deadline` (the end of the grace period) for
    /// outstanding PUBACKs, then write the acks that arrived. Everything else stays in the spool.
    async fn drain(mut self, deadline: Instant) {
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

/// A counter as an event attribute. `Int`, not `UInt`: `Value` is untagged, so a small `UInt`
/// would come back from the spool as an `Int`.
fn count(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The `outage` event: drops per stream between `from` and `to`.
fn outage_event(
    uplink: &str,
    from: Timestamp,
    to: Timestamp,
    dropped: &[(Stream, u64)],
) -> ModelEvent {
    let total: u64 = dropped.iter().map(|(_, n)| n).sum();
    let mut attributes: Vec<(Arc<str>, Value)> = dropped
        .iter()
        .map(|(s, n)| (Arc::from(format!("dropped_{}", s.as_str())), count(*n)))
        .collect();
    attributes.push(("dropped_total".into(), count(total)));
    attributes.push(("outage_start".into(), Value::Text(from.to_rfc3339())));
    attributes.push(("outage_end".into(), Value::Text(to.to_rfc3339())));
    let duration_s = (to.unix_ms() - from.unix_ms()).max(0) as f64 / 1000.0;
    attributes.push(("duration_s".into(), Value::Float(duration_s)));
    let per_stream = dropped
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    ModelEvent {
        kind: EventKind::Outage,
        subject: uplink.into(),
        phase: EventPhase::Instant,
        ts: to,
        attributes,
        message: format!(
            "uplink {uplink}: the spool budget dropped {total} records ({per_stream}) between {} and {}",
            from.to_rfc3339(),
            to.to_rfc3339()
        ),
    }
}

/// The `dead_letter` event: one record set aside, and why.
fn dead_letter_event(uplink: &str, ts: Timestamp, letter: &crate::spool::DeadLetter) -> ModelEvent {
    let attributes: Vec<(Arc<str>, Value)> = vec![
        ("stream".into(), Value::Text(letter.stream.as_str().into())),
        ("seq".into(), count(letter.seq)),
        (
            "spool_id".into(),
            count(u64::try_from(letter.id).unwrap_or(0)),
        ),
        ("attempts".into(), count(u64::from(letter.attempts))),
        ("topic".into(), Value::Text(letter.topic.as_str().into())),
        ("created".into(), Value::Text(letter.created.to_rfc3339())),
        ("reason".into(), Value::Text(letter.reason.as_str().into())),
    ];
    ModelEvent {
        kind: EventKind::DeadLetter,
        subject: uplink.into(),
        phase: EventPhase::Instant,
        ts,
        attributes,
        message: format!(
            "uplink {uplink}: {} record seq {} set aside as a dead letter: {}; \
             `smeltwatch spool dead-letters` lists it, `smeltwatch spool requeue` sends it again",
            letter.stream.as_str(),
            letter.seq,
            letter.reason
        ),
    }
}

/// Bytes of an MQTT 3.1.1 PUBLISH at QoS 1: fixed header byte, remaining length (1 to 4 bytes),
/// topic length and topic, packet id, payload. The size rumqttc compares with its limit.
fn publish_packet_size(topic: usize, payload: usize) -> usize {
    let remaining = 2 + topic + 2 + payload;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

enum Sent {
    Published,
    Rejected,
    /// Nothing to publish (a record with no HJ 212 form): acked at once, not delivered.
    Nothing,
    Failed,
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

// === impl TokenBucket ===

/// Replay pacing: `rate` tokens per second, bursts of up to a tenth of a second's worth.
#[derive(Debug)]
struct TokenBucket {
    rate_per_s: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate_per_s: u32) -> Self {
        let rate_per_s = f64::from(rate_per_s.max(1));
        let capacity = (rate_per_s / 10.0).max(1.0);
        TokenBucket {
            rate_per_s,
            capacity,
            tokens: capacity,
            at: Instant::now(),
        }
    }

    fn reset(&mut self, now: Instant) {
        self.tokens = self.capacity;
        self.at = now;
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_s).min(self.capacity);
        self.at = now;
    }

    /// Whole tokens available now.
    fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.floor() as usize
    }

    fn take(&mut self, n: usize) {
        self.tokens -= n as f64;
    }

    /// When the next whole token will be available.
    fn next_token_at(&self) -> Instant {
        if self.tokens >= 1.0 {
            return self.at;
        }
        self.at + Duration::from_secs_f64((1.0 - self.tokens) / self.rate_per_s)
    }
}

// === impl DrainRate ===

/// Backlog records acked per second, over the last complete one-second window.
#[derive(Debug)]
struct DrainRate {
    window_start: Option<Instant>,
    count: u64,
    last: u64,
}

impl DrainRate {
    fn new() -> Self {
        DrainRate {
            window_start: None,
            count: 0,
            last: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        let Some(start) = self.window_start else {
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Duration::from_secs(2) {
            // A whole window without acks.
            self.last = 0;
            self.count = 0;
            self.window_start = Some(now);
        } else if elapsed >= Duration::from_secs(1) {
            self.last = self.count;
            self.count = 0;
            self.window_start = Some(start + Duration::from_secs(1));
        }
    }

    fn add(&mut self, now: Instant, n: u64) {
        if n == 0 {
            self.roll(now);
            return;
        }
        if self.window_start.is_none() {
            self.window_start = Some(now);
        }
        self.roll(now);
        self.count += n;
    }

    fn per_second(&mut self, now: Instant) -> u64 {
        self.roll(now);
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TopicTemplates;

    fn test_config(encoding: Encoding) -> UplinkConfig {
        UplinkConfig {
            name: "plant".into(),
            kind: UplinkKind::Mqtt(MqttConfig {
                broker: crate::config::HostPort {
                    host: "127.0.0.1".into(),
                    port: 1,
                },
                tls: false,
                client_id: "smeltwatch-test".into(),
                username: None,
                password: None,
                keep_alive: Duration::from_secs(5),
                max_packet_size: 1 << 20,
                max_inflight: 8,
                reconnect_min: Duration::from_millis(50),
                reconnect_max: Duration::from_millis(300),
                topics: TopicTemplates::default(),
                encoding: crate::config::EncodingConfig {
                    default: encoding,
                    per_stream: Vec::new(),
                    hj212: None,
                },
                tls_settings: Default::default(),
                replay_rate: 100,
            }),
            streams: vec![Stream::Live, Stream::Events, Stream::Emissions],
            spool: crate::config::SpoolConfig::default(),
        }
    }

    #[tokio::test]
    async fn a_record_handed_over_decoded_is_published_exactly_as_its_body_would_be() {
        use crate::model::{Aggregate, Period, Quality, Reading, ReadingBatch, Value};
        let ts = Timestamp(1_764_300_253_123);
        let reading = |point: &str, value: Option<Value>, quality| Reading {
            point: point.into(),
            value,
            unit: "V".into(),
            quality,
            ts,
        };
        let readings = vec![
            reading("cell_voltage_v", Some(Value::Float(4.061)), Quality::Good),
            reading("alarm", Some(Value::Bool(true)), Quality::Good),
            reading("count", Some(Value::UInt(u64::MAX)), Quality::Good),
            reading("offset", Some(Value::Int(-7)), Quality::Substituted),
            reading(
                "state",
                Some(Value::Text("tapping\n".into())),
                Quality::Good,
            ),
            reading("silent", None, Quality::CommFail),
        ];
        let batch = ReadingBatch {
            source: "potline1".into(),
            device: "pot_\"003\"".into(),
            unit_id: 12,
            poll_interval_ms: 1000,
            scheduled: Timestamp(1_764_300_253_000),
            readings,
        };
        // JSON has no NaN: a JSON body decodes to no value, so the uplink encodes a batch with
        // one from its body, in either form.
        let mut with_nan = batch.clone();
        with_nan.readings.push(reading(
            "nan",
            Some(Value::Float(f64::NAN)),
            Quality::OutOfRange,
        ));
        let (batch, with_nan) = (Record::Batch(batch), Record::Batch(with_nan));
        let event = Record::Event(outage_event(
            "plant",
            Timestamp(1_764_300_000_000),
            Timestamp(1_764_300_010_000),
            &[(Stream::Live, 7)],
        ));
        let aggregate = Record::Aggregate(Aggregate {
            subject: "gtc1_stack".into(),
            quantity: "so2_mg_m3".into(),
            unit: "mg/m3".into(),
            period: Period::Hour,
            start: Timestamp(1_764_298_800_000),
            end: Timestamp(1_764_302_400_000),
            avg: Some(120.5),
            min: Some(100.0),
            max: None,
            total: Some(3.2),
            total_unit: Some("kg".into()),
            samples: 58,
            expected: 60,
            valid: true,
            quality: Quality::Good,
            substituted: 0,
        });
        let dir = tempfile::tempdir().unwrap();
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let spool = SpoolHandle::open(
                &dir.path().join(format!("{encoding:?}.db")),
                &crate::config::SpoolConfig::default(),
            )
            .unwrap();
            let uplink = MqttUplink::new("demo-al-01", &test_config(encoding), spool).unwrap();
            let (_conn_tx, conn_rx) = watch::channel(None);
            let mut sender = Sender::new(&uplink, conn_rx);
            let cases = [
                (&batch, true),
                (&with_nan, false),
                (&event, false),
                (&aggregate, false),
            ];
            // The body as this build writes it, and as older builds did (JSON).
            let bodies = |record: &Record| {
                [
                    crate::publish::body::encode(record),
                    serde_json::to_vec(record).unwrap(),
                ]
            };
            let cases = cases
                .into_iter()
                .flat_map(|(record, from_memory)| {
                    bodies(record).map(|body| (record, from_memory, body))
                })
                .enumerate();
            for (id, (record, from_memory, body)) in cases {
                let stored = StoredRecord {
                    id: id as i64 + 1,
                    stream: record.stream(),
                    seq: 40 + id as u64,
                    topic: topic::topic_for(&TopicTemplates::default(), "demo-al-01", record),
                    body,
                    created: Timestamp::now(),
                    attempts: 0,
                };
                for boundary in [0, 10] {
                    // Fresh and historical.
                    sender.boundary = boundary;
                    let from_body = sender.prepare(&stored, None).unwrap();
                    let decoded: Decoded = Arc::new(record.clone());
                    let from_decoded = sender.prepare(&stored, Some(decoded.clone())).unwrap();
                    assert_eq!(from_decoded, from_body, "{encoding:?} {record:?}");
                    // Which way it went: only the decoded form does without the body.
                    let unreadable = StoredRecord {
                        body: b"{not json".to_vec(),
                        ..stored.clone()
                    };
                    let without_body = sender.prepare(&unreadable, Some(decoded));
                    assert_eq!(
                        without_body.ok(),
                        from_memory.then_some(from_body),
                        "{encoding:?} {record:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_outage_event_survives_the_spool_round_trip() {
        let event = outage_event(
            "province",
            Timestamp(1_764_300_000_000),
            Timestamp(1_764_300_010_000),
            &[(Stream::Live, 7), (Stream::Emissions, 0)],
        );
        let record = Record::Event(event.clone());
        let body = crate::publish::body::encode(&record);
        let back = crate::publish::body::decode(&body).expect("an event record decodes");
        assert_eq!(back, record);
        assert_eq!(event.kind.as_str(), "outage");
        assert_eq!(event.attributes[0], ("dropped_live".into(), Value::Int(7)));
        assert!(
            event.message.contains("dropped 7 records (7 live)"),
            "{}",
            event.message
        );
        assert!(
            event
                .attributes
                .contains(&("duration_s".into(), Value::Float(10.0)))
        );
    }

    #[test]
    fn token_bucket_paces_to_the_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(100);
        b.reset(start);
        assert_eq!(b.available(start), 10, "a tenth of a second's burst");
        b.take(10);
        assert_eq!(b.available(start), 0);
        assert_eq!(b.next_token_at(), start + Duration::from_millis(10));
        assert_eq!(b.available(start + Duration::from_millis(55)), 5);
        assert_eq!(b.available(start + Duration::from_secs(5)), 10, "capped");
    }

    #[test]
    fn drain_rate_reports_the_last_whole_second() {
        let t0 = Instant::now();
        let mut d = DrainRate::new();
        d.add(t0, 100);
        d.add(t0 + Duration::from_millis(500), 150);
        assert_eq!(d.per_second(t0 + Duration::from_millis(900)), 0);
        assert_eq!(d.per_second(t0 + Duration::from_millis(1100)), 250);
        assert_eq!(d.per_second(t0 + Duration::from_secs(4)), 0, "idle");
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
