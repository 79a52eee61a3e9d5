//! Opening the uplinks' spools at start, so that one bad spool file does not stop the agent.
//!
//! # Decisions
//! - **A damaged file is moved aside** ([`SpoolHandle::open_or_set_aside`]): not a SQLite
//!   database, a failed `quick_check`, impossible values or a missing table. The file keeps its
//!   bytes under `<name>.corrupt-<UTC time>` for inspection, the uplink starts on an empty spool,
//!   and the set-aside is reported three ways: an error line naming both paths, a
//!   `spool_set_aside` event on the `events` stream of every uplink that carries it (the fresh
//!   spool's first record), and `smeltwatch_spool_set_aside_total{uplink, reason}`. Its records
//!   are lost to delivery; keeping the whole agent down would lose everyone's.
//! - **Any other failure stops that uplink only**: a newer schema (records this build cannot
//!   read), permissions, a full disk. The file is left untouched, the uplink is not started, and
//!   the rest of the agent runs: an error line, a `spool_open_failed` event,
//!   `smeltwatch_spool_open_failed{uplink} 1` and `/readyz` 503 naming the uplink. Records of its
//!   streams are not kept for it while it is down; a restart after the cause is fixed opens it.
//!   The watchdog keeps being fed: a restart would not fix any of these causes.
//! - **systemd's start timeout.** `quick_check` reads the whole file, so on slow flash a large
//!   spool can take longer than `TimeoutStartSec`. Under systemd each open is preceded by
//!   `EXTEND_TIMEOUT_USEC` with an allowance from the file's size ([`open_allowance`]), which
//!   only ever lengthens the start: it takes effect when the start has run past its own timeout.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::UplinkConfig;
use crate::model::{Event, EventKind, EventPhase, Record, Timestamp, Value};
use crate::spool::{SetAside, SpoolHandle};

use super::systemd::Notifier;
use crate::live::health::Health;

/// Time allowed for an open on top of the file's read: creating the directory, WAL recovery,
/// the schema, loading the totals.
const OPEN_BASE_ALLOWANCE: Duration = Duration::from_secs(30);

/// The slowest read rate `quick_check` is allowed for: slow SD cards and eMMC under load read a
/// few MB/s of random pages.
const QUICK_CHECK_BYTES_PER_S: u64 = 2 * 1024 * 1024;

/// How long opening the spool at `path` may take: [`OPEN_BASE_ALLOWANCE`] plus reading the file
/// and its WAL at [`QUICK_CHECK_BYTES_PER_S`].
pub fn open_allowance(path: &Path) -> Duration {
    let size = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        std::fs::metadata(p).map_or(0, |m| m.len())
    };
    let bytes = size("") + size("-wal");
    OPEN_BASE_ALLOWANCE + Duration::from_secs(bytes.div_ceil(QUICK_CHECK_BYTES_PER_S))
}

/// Where [`open`] reports what it did.
pub(super) struct Report<'a> {
    pub notifier: &'a Notifier,
    pub health: &'a Health,
    /// Events to send first, on every uplink that carries the `events` stream.
    pub events: &'a mut Vec<Record>,
}

/// Open `uplink`'s spool at `path`, moving a damaged file aside. `None`: it cannot be opened and
/// the uplink is not to be started; reported (module docs).
pub(super) fn open(uplink: &UplinkConfig, path: &Path, report: Report<'_>) -> Option<SpoolHandle> {
    if report.notifier.enabled() {
        let allowance = open_allowance(path);
        report.notifier.notify_or_log(&format!(
            "EXTEND_TIMEOUT_USEC={}\nSTATUS=opening spool {}",
            allowance.as_micros(),
            path.display()
        ));
    }
    match SpoolHandle::open_or_set_aside(path, &uplink.spool, SystemTime::now()) {
        Ok((spool, None)) => Some(spool),
        Ok((spool, Some(aside))) => {
            tracing::error!(
                uplink = %uplink.name,
                spool = %aside.path.display(),
                moved_to = %aside.moved_to.display(),
                "spool file set aside ({}): moved to {}, uplink starts on an empty spool; its records were not delivered: {}",
                aside.reason,
                aside.moved_to.display(),
                aside.detail
            );
            report.health.spool_set_aside(&uplink.name, aside.reason);
            report.events.push(set_aside_event(&uplink.name, &aside));
            Some(spool)
        }
        Err(e) => {
            let error = e.to_string();
            tracing::error!(
                uplink = %uplink.name,
                spool = %path.display(),
                "uplink not started, the rest of the agent runs: cannot open its spool: {error}"
            );
            report.health.spool_not_opened(&uplink.name, &error);
            report.events.push(Record::Event(Event {
                kind: EventKind::SpoolOpenFailed,
                subject: Arc::from(uplink.name.as_str()),
                phase: EventPhase::Instant,
                ts: Timestamp::now(),
                attributes: vec![
                    (Arc::from("spool"), Value::Text(path.display().to_string())),
                    (Arc::from("error"), Value::Text(error.clone())),
                ],
                message: format!("uplink {} not started: {error}", uplink.name),
            }));
            None
        }
    }
}

/// The `spool_set_aside` event: subject the uplink, the fresh spool's path, where the damaged file
/// went, the reason and SQLite's words.
fn set_aside_event(uplink: &str, aside: &SetAside) -> Record {
    let text = |s: String| Value::Text(s);
    Record::Event(Event {
        kind: EventKind::SpoolSetAside,
        subject: Arc::from(uplink),
        phase: EventPhase::Instant,
        ts: Timestamp::now(),
        attributes: vec![
            (Arc::from("spool"), text(aside.path.display().to_string())),
            (
                Arc::from("moved_to"),
                text(aside.moved_to.display().to_string()),
            ),
            (Arc::from("reason"), text(aside.reason.to_owned())),
            (Arc::from("detail"), text(aside.detail.clone())),
        ],
        message: format!(
            "uplink {uplink}: spool file {} was damaged ({}); moved to {} and started an empty spool",
            aside.path.display(),
            aside.reason,
            aside.moved_to.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_allowance_grows_with_the_file_and_its_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool-a.db");
        assert_eq!(open_allowance(&path), OPEN_BASE_ALLOWANCE);
        std::fs::File::create(&path)
            .unwrap()
            .set_len(20 * QUICK_CHECK_BYTES_PER_S)
            .unwrap();
        std::fs::File::create(dir.path().join("spool-a.db-wal"))
            .unwrap()
            .set_len(QUICK_CHECK_BYTES_PER_S + 1)
            .unwrap();
        assert_eq!(
            open_allowance(&path),
            OPEN_BASE_ALLOWANCE + Duration::from_secs(22)
        );
    }
}
