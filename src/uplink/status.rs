//! The one status every uplink (MQTT, Sparkplug, HJ 212) reports to displays, `/metrics`, the
//! log and its supervisor, and the [`Reporter`] each uplink writes it through.
//!
//! # Delivery hook
//! An uplink reports the records its spool let go of through one call,
//! [`Reporter::spool_acked`], made once the spool ack succeeded: it counts them in
//! [`UplinkStatus::acked_total`] and counts the values among them that the peer proved it
//! received (a PUBACK, the UNSUBACK after Sparkplug data, a 9014) as delivered by this uplink in
//! the completeness accounting. Records written without any proof of arrival go through
//! [`Reporter::unconfirmed`] instead and count nowhere as delivered. What an uplink counts as
//! proof is its own (see each uplink's delivery contract); how it is reported is the same for all.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::completeness::{Completeness, Tally};
use crate::model::Timestamp;

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

    /// The status of an uplink that has not connected yet.
    pub fn new() -> Self {
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

/// Where an uplink reports: its [`UplinkStatus`] (a `watch`, shared with its supervisor and with
/// a rebuilt instance of the same uplink) and the completeness accounting its deliveries count
/// in. Cloning shares both.
#[derive(Debug, Clone)]
pub struct Reporter {
    uplink: Arc<str>,
    status: Arc<watch::Sender<UplinkStatus>>,
    completeness: Option<Arc<Completeness>>,
}

impl Reporter {
    /// A fresh status for the uplink named `uplink`, counting deliveries nowhere.
    pub fn new(uplink: &str) -> Reporter {
        Reporter {
            uplink: Arc::from(uplink),
            status: Arc::new(watch::Sender::new(UplinkStatus::new())),
            completeness: None,
        }
    }

    /// Count the values of the records delivered in `completeness`.
    pub fn with_completeness(mut self, completeness: Arc<Completeness>) -> Reporter {
        self.completeness = Some(completeness);
        self
    }

    /// Report on `status` (shared with an earlier instance of the same uplink, so that a rebuilt
    /// uplink continues its counters).
    pub fn with_status(mut self, status: Arc<watch::Sender<UplinkStatus>>) -> Reporter {
        self.status = status;
        self
    }

    /// Whether deliveries are counted in a completeness accounting: without one, an uplink need
    /// not compute the tallies it would hand to [`Reporter::spool_acked`].
    pub fn counts_delivery(&self) -> bool {
        self.completeness.is_some()
    }

    /// A live view of the status.
    pub fn subscribe(&self) -> watch::Receiver<UplinkStatus> {
        self.status.subscribe()
    }

    /// The status's sender, for the supervisor (which marks a failed run in it) and for a rebuilt
    /// uplink ([`Reporter::with_status`]).
    pub fn sender(&self) -> Arc<watch::Sender<UplinkStatus>> {
        self.status.clone()
    }

    /// The status as it is now.
    pub fn borrow(&self) -> watch::Ref<'_, UplinkStatus> {
        self.status.borrow()
    }

    /// Change the status.
    pub fn update(&self, f: impl FnOnce(&mut UplinkStatus)) {
        self.status.send_modify(f);
    }

    /// Change the status, waking its watchers only when `f` says it changed something.
    pub fn update_if(&self, f: impl FnOnce(&mut UplinkStatus) -> bool) -> bool {
        self.status.send_if_modified(f)
    }

    /// The delivery hook (see the module documentation): the spool acked `records` records, and
    /// `delivered` are the completeness tallies of those whose arrival the peer proved. Records
    /// acked without being sent (nothing to send, undecodable) count in `records` with no tally.
    pub fn spool_acked(&self, records: u64, delivered: &[Tally]) {
        self.status.send_modify(|s| s.acked_total += records);
        if let Some(c) = &self.completeness
            && !delivered.is_empty()
        {
            c.delivered(&self.uplink, delivered);
        }
    }

    /// The spool let go of `records` records once they were written, with nothing to prove they
    /// arrived: counted in [`UplinkStatus::unconfirmed_total`], never as delivered.
    pub fn unconfirmed(&self, records: u64) {
        self.status.send_modify(|s| s.unconfirmed_total += records);
    }
}
