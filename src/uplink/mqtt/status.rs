//! The uplink's link state and the status it reports to displays, `/metrics` and the log.

use std::fmt;
use std::time::Duration;

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

    pub(super) fn new() -> Self {
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
