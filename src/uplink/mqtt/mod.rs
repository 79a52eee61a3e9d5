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
//!     (flushed every 250 ms or 256 ids). Acking an id twice is harmless.
//!   - failed, for the id's latest generation: the id is forgotten and its lane's cursor rewinds,
//!     so it is published again (in order) on the current connection or the next one.
//!   - failed, for an older generation than the id's latest: ignored; the newer publish decides.
//!
//!   A record whose body cannot be decoded is logged, counted as rejected and acked: it would never
//!   become sendable.
//!
//!   These rules (lanes, cursors, generations, what is in flight, riders, blame) are kept by a
//!   state machine without I/O, fed with events and answering with the spool writes to make; the
//!   sender is the driver around it that reads, publishes and writes.
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
//! `mqtts://` brokers use rustls with the ring provider; see [`crate::mqtt::tls`]. A failed
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

use rumqttc::{LastWill, MqttOptions, QoS};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::codec::topic::{self, TopicError};
use crate::completeness::Completeness;
use crate::config::{Encoding, MqttConfig, UplinkConfig, UplinkKind};
use crate::model::Timestamp;
use crate::mqtt::tls::{self, TlsError};
use crate::spool::SpoolHandle;

mod driver;
mod rate;
mod sender;

use super::RunError;
use super::status::{LinkState, Reporter, UplinkStatus};

use driver::{Conn, Driver};
use rate::{DrainRate, TokenBucket};
use sender::Sender;

/// Acks collected from PUBACKs are written to the spool at least this often… Each flush is a
/// command to the spool's thread, so the interval is longer than a batch period: one flush per
/// batch would be one more wake-up of that thread per batch. A flush comes before the timer once
/// nothing is in flight and the last one is this old (`sender::acks::flush_early`). A slower flush
/// only delays what counts on acks (completeness, `acked_total`) and, after a crash, resends what
/// was acked since the last flush; the publish latency is taken at the PUBACK.
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

/// The MQTT uplink of one configured `[[uplink]]`. Build it with [`MqttUplink::new`], keep
/// [`MqttUplink::status`] for displays, then spawn [`MqttUplink::run`].
pub struct MqttUplink {
    name: String,
    site: String,
    cfg: MqttConfig,
    status_topic: String,
    spool: SpoolHandle,
    /// Its status (shared with the supervisor, which marks a failed run in it) and the
    /// completeness accounting, told what the broker acknowledged.
    report: Reporter,
    shutdown_grace: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
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
        Ok(MqttUplink {
            name: uplink.name.clone(),
            site: site.to_owned(),
            status_topic: topic::status_topic(&cfg.topics, site),
            cfg: cfg.clone(),
            spool,
            report: Reporter::new(&uplink.name),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            tls,
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
        self.report = self.report.with_completeness(completeness);
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
        self.report.subscribe()
    }

    /// The sender behind [`MqttUplink::status`], for a supervisor that reports a failed run.
    pub fn status_sender(&self) -> Arc<watch::Sender<UplinkStatus>> {
        self.report.sender()
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
    pub async fn run_once(&self, shutdown: &CancellationToken) -> Result<(), RunError> {
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
        let will = LastWill::new(
            self.status_topic.clone(),
            self.status_payload("offline", None),
            QoS::AtLeastOnce,
            true,
        );
        let mut o = super::options::mqtt_options(&self.cfg, self.tls.clone(), will);
        o.set_inflight(self.cfg.max_inflight)
            .set_request_channel_capacity(usize::from(self.cfg.max_inflight) + 8);
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
        self.report.update(f);
    }
}

#[cfg(test)]
mod tests;
