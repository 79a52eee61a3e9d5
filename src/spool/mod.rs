//! The durable per-uplink spool: a FIFO queue of outgoing records in one SQLite file and a record
//! log beside it.
//!
//! Fan-out appends every record to each uplink's spool **before** anything is sent; the uplink reads
//! batches in id order, sends them, and [`Spool::ack`]s what its peer confirmed (MQTT PUBACK, HJ 212
//! 9014). A record leaves the spool only by an ack, the byte budget or its maximum age, never by a
//! read. Delivery is therefore at-least-once, and every record carries `(stream, seq)` so consumers
//! can drop duplicates and see gaps.
//!
//! One spool file belongs to exactly one uplink, and one process opens it (`smeltwatch spool stats`
//! may read it alongside). [`Spool`] is the synchronous core that owns the `rusqlite::Connection`
//! (which is not `Sync`); [`SpoolHandle`] runs it on a dedicated thread and gives async callers a
//! cloneable handle.
//!
//! # On-disk format (`PRAGMA user_version = 3`)
//! ```sql
//! CREATE TABLE records (                       -- the queue, oldest first by id
//!     id         INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused, even after the table empties
//!     stream     TEXT    NOT NULL,             -- 'live' | 'metrics' | 'events' | 'emissions'
//!     seq        INTEGER NOT NULL,             -- per-stream sequence number, from 1
//!     topic      TEXT    NOT NULL,
//!     body       BLOB    NOT NULL,             -- the encoded record, opaque to the spool (codec::body)
//!     created_ms INTEGER NOT NULL,             -- Timestamp: ms since the Unix epoch, UTC
//!     attempts   INTEGER NOT NULL DEFAULT 0    -- sends that ended unacknowledged (mark_attempt)
//! );
//! CREATE INDEX records_by_stream ON records(stream, id);  -- budget eviction, per-stream heads
//! CREATE TABLE streams (                       -- one row per stream, written with every append
//!     stream   TEXT PRIMARY KEY,
//!     next_seq INTEGER NOT NULL,               -- the seq the next record of this stream gets
//!     dropped  INTEGER NOT NULL DEFAULT 0      -- records dropped by the byte budget, ever
//! ) WITHOUT ROWID;
//! CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;  -- bdSeq, aliases
//! CREATE TABLE dead_letters (                  -- records set aside (version 3)
//!     id, stream, seq, topic, body, created_ms, attempts,  -- as they were in `records`
//!     reason     TEXT    NOT NULL,             -- why the uplink set it aside
//!     dead_ms    INTEGER NOT NULL,             -- when
//!     requeue    INTEGER NOT NULL DEFAULT 0    -- 1: `spool requeue` asked for it to be sent again
//! );
//! ```
//! Versions 1 and 2 are upgraded in place at open (2 only gains the empty `dead_letters`).
//! The file runs in WAL mode (`-wal` and `-shm` files beside it) with a busy timeout; `open` runs
//! `PRAGMA quick_check` and refuses a corrupt file with an error that names it, and refuses a file
//! whose `user_version` is newer than this build understands.
//!
//! # Record log
//! Appends go first to `<spool file>-log` ([`log`]), an append-only file of checksummed frames:
//! one write and, under `synchronous = FULL`, one `fdatasync` per append, and the next append
//! starts on a fresh 4 KiB page so that no synced page is written twice. Acks of logged records
//! are frames of id ranges, written without a sync (as for SQLite, below). The records not yet
//! acked are also kept in memory, so that an uplink that keeps up reads and acks them without
//! touching a file; SQLite is not written at all in that case. A poll batch of a few kB thus costs
//! one or two pages of flash instead of a dozen B-tree pages written twice (WAL and checkpoint) and
//! rewritten by the delete.
//!
//! The log is moved into SQLite (its unacked records inserted with their ids, the seq and id
//! counters updated, in one transaction) and then emptied when its unacked records exceed 1 MiB (an
//! outage), when the file exceeds 8 MiB, at [`Spool::close`], at open after a crash, and before
//! any call that needs SQL over every record: an append that the byte budget, `max_age` or a full
//! disk must drop records for, or one after a clock step (see below); dead-lettering, re-queueing
//! and [`Spool::cap_file_pages`] (while a cap is set, appends go to SQLite, whose pages it
//! counts). Ids are handed out by the spool and stay increasing across both; SQLite's
//! `sqlite_sequence` is moved past every id the log used.
//!
//! The process that opens the log holds an exclusive lock on it (released when it closes or
//! dies): that process owns the spool. Another [`Spool::open`] of the same file (`smeltwatch spool
//! stats` beside a running agent) reads the log without taking it and shows its records with
//! SQLite's; it may read and flag dead letters for re-queueing, and any call that writes records
//! fails with [`SpoolError::HeldByAnother`].
//!
//! # A damaged file at start
//! [`Spool::open_or_set_aside`] (what the agent uses) does not let one damaged file stop the
//! agent: a file that is not a SQLite database, fails `quick_check`, holds impossible values or
//! lacks the spool's tables ([`SpoolError::is_damaged`]) is renamed to
//! `<name>.corrupt-<UTC time>` (a `-wal`, `-shm` and `-log` left beside it first, to `<new name>-wal`,
//! `-shm` and `-log`, so that `sqlite3` opens them together and a fresh file never picks up the old WAL;
//! closing the failed connection normally checkpoints a readable WAL into the file), and an empty spool
//! is started in its place; the caller reports the [`SetAside`]. Nothing is deleted. Every other
//! failure leaves the file alone: a permission problem, a full disk or an I/O error is not the
//! file's fault, and a file of a newer schema holds records this build cannot read, which it must
//! not push out of the way.
//!
//! # Sequence numbers
//! `seq` starts at 1 and is strictly increasing per stream for the life of the file, across restarts
//! and after every record was acked: the next value lives in `streams.next_seq`, updated in the same
//! transaction as the insert, and is never derived from the surviving rows. A record that the budget
//! drops keeps the seq it was given, so a consumer sees the loss as a gap.
//!
//! # Crash guarantees
//! [`Spool::append`] writes a whole batch in one log write (or one transaction) and returns only
//! after it is durable. At open the log is read back up to the first incomplete or damaged frame
//! (only the tail can be torn: every append that returned was synced before the next began), and
//! its unacked records are moved into SQLite.
//! - `synchronous = FULL` (the default): a record whose append returned survives a process crash,
//!   an OS crash and power loss, and so does every seq counter. Acks commit without an fsync of
//!   their own (see [`Spool::ack`]): an OS crash or power loss may undo those since the last
//!   append, and their records are then sent again, which at-least-once delivery allows.
//! - `synchronous = NORMAL` (less flash wear): the file is never corrupted and a committed record
//!   survives a process crash, but after power loss or an OS crash the most recent commits may roll
//!   back: returned records may be missing, acked ones may come back, and the seqs handed out in the
//!   lost commits will be issued again to different records. Use `FULL` where `(stream, seq)` must
//!   stay unique across power loss.
//!
//! In both modes a reopened spool holds every record that was appended (and returned) and not acked,
//! in id order; acking an unknown or already-acked id is harmless.
//!
//! # Byte budget
//! [`SpoolConfig::max_bytes`](crate::config::SpoolConfig) bounds the sum of topic and body bytes.
//! When an append would exceed it, records are dropped lowest priority first (`live` < `metrics` <
//! `events` < `emissions`, the order of [`Stream`]) and oldest first within a
//! stream, the queued ones before those of the new batch; emissions are dropped only when nothing
//! else remains. If the new batch alone exceeds the budget, what fits is kept by the same rule. Drops
//! are counted per stream in `streams.dropped` (persisted in the same transaction) and logged at
//! warn. Running totals per stream are kept in memory, computed once at open, so enforcing the budget
//! reads only the rows it removes.
//!
//! # Dead letters
//! A record its peer will not take (larger than the uplink's packet limit, or one that kept
//! killing the connection) would block every record behind it, because the uplink restarts from
//! the oldest record on each connection. [`Spool::dead_letter`] moves such a record out of the
//! queue into `dead_letters`, with its reason; it is not counted in the byte budget or the stats'
//! `records` any more (`dead_letters` counts it). `smeltwatch spool requeue` only flags rows
//! ([`Spool::request_requeue`]): the process that owns the spool moves them back into the queue
//! ([`Spool::take_requeued`]), so that its in-memory totals stay those of the table. A re-queued
//! record keeps its seq and gets a new id.
//!
//! # Maximum age
//! With [`SpoolConfig::max_age`](crate::config::SpoolConfig), each append first expires the queued
//! `live`, `metrics` and `events` records created more than `max_age` before the newest record of
//! the batch, walking each stream from its head. Emissions never expire. Expired records are
//! counted in `streams.dropped` like budget drops, so they are reported the same way.
//!
//! Ages are compared on the wall clock as corrected by every forward step ([`crate::clock`]): the
//! spool reads the shared clock at each append only to notice steps, and a record created before a
//! forward step of `d` is compared at `created + d`, the time the corrected clock would have given
//! it, so that NTP setting a gateway's clock from 1970 to today does not expire the whole backlog.
//! The corrections (`kv` key `clock_steps`) are kept, with the last record id they may concern,
//! until no such record is queued, so they survive a restart. `created` itself is never changed.
//! A backward step needs no correction: records queued before it only expire later.

mod handle;
mod log;
mod pending;
mod store;

use std::path::PathBuf;

use crate::config::Stream;
use crate::model::Timestamp;

pub use handle::{AppendFailed, DECODED_MAX_BYTES, Decoded, SpoolHandle};
pub use store::Spool;

/// A damaged spool file that [`Spool::open_or_set_aside`] moved aside before it started an empty
/// spool in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// The spool file: a fresh, empty spool now.
    pub path: PathBuf,
    /// Where the damaged file went (its `-wal` and `-shm`, if any, beside it with those suffixes).
    pub moved_to: PathBuf,
    /// `corrupt` (not a database, failed `quick_check`, impossible values) or `not_a_spool` (a
    /// SQLite database without the spool's schema).
    pub reason: &'static str,
    /// The error the open failed with.
    pub detail: String,
}

/// A record to append: what fan-out hands to an uplink's spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// The stream it belongs to; decides its seq counter and its priority under the byte budget.
    pub stream: Stream,
    /// The topic it will be published on (counted in the byte budget).
    pub topic: String,
    /// The encoded record, opaque to the spool (counted in the byte budget).
    pub body: Vec<u8>,
    /// When the data was acquired or produced.
    pub created: Timestamp,
}

/// A record as stored in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Spool-wide id: increasing in append order, never reused. Pass it to [`Spool::ack`].
    pub id: i64,
    /// The record's stream.
    pub stream: Stream,
    /// Sequence number within the stream, from 1, strictly increasing for the life of the file.
    pub seq: u64,
    /// The topic it will be published on.
    pub topic: String,
    /// The encoded record.
    pub body: Vec<u8>,
    /// When the data was acquired or produced.
    pub created: Timestamp,
    /// How often [`Spool::mark_attempt`] was called for it: the MQTT uplink counts each send that
    /// ended without an acknowledgement (a successful send is acked and the row deleted).
    pub attempts: u32,
}

/// Where an appended record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The record's id.
    pub id: i64,
    /// The record's stream.
    pub stream: Stream,
    /// The seq it was given.
    pub seq: u64,
}

/// What is waiting in a spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records waiting.
    pub records: u64,
    /// Topic plus body bytes waiting (what the budget counts).
    pub bytes: u64,
    /// The earliest `created` among the oldest waiting record of each stream; `None` when empty.
    pub oldest: Option<Timestamp>,
    /// Records waiting per stream, every stream in priority order (lowest first), zeros included.
    pub per_stream: Vec<(Stream, u64)>,
    /// Records dropped by the byte budget, a full disk or `max_age` over the life of the file.
    pub dropped: u64,
    /// The drops since this spool was opened, by reason (not persisted: the life-of-file total
    /// above is).
    pub dropped_since_open: DropsByReason,
    /// Records set aside in the dead-letter table (not counted in `records` or `bytes`).
    pub dead_letters: u64,
}

/// A record set aside because its peer would not take it (see [`Spool::dead_letter`]).
///
/// It is the queued record as it was (id, stream, seq, topic, body, creation time, attempts) plus
/// why and when it was set aside; its record's fields read through it (`letter.seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The record as it stood in the queue; its body is empty in what [`Spool::dead_letter`]
    /// returns.
    pub record: StoredRecord,
    /// Why it was set aside.
    pub reason: String,
    /// When it was set aside.
    pub dead_at: Timestamp,
    /// A re-queue was asked for and the owning process has not moved it back yet.
    pub requeue: bool,
}

impl std::ops::Deref for DeadLetter {
    type Target = StoredRecord;

    fn deref(&self) -> &StoredRecord {
        &self.record
    }
}

/// Records a spool dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DropsByReason {
    /// Over the byte budget (lowest priority, oldest first).
    pub budget: u64,
    /// To make room on a full file system.
    pub disk_full: u64,
    /// Older than `max_age`.
    pub max_age: u64,
}

/// What can go wrong with a spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The directory for the spool file could not be created.
    #[error("cannot create spool directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a readable SQLite database or fails its integrity check.
    #[error(
        "spool file {path} is corrupt ({detail}); move it aside to start an empty spool, or inspect it with sqlite3"
    )]
    Corrupt {
        /// The spool file.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
    /// The file is a SQLite database but not a smeltwatch spool.
    #[error("{path} is a SQLite database but not a smeltwatch spool ({detail})")]
    NotASpool {
        /// The file.
        path: PathBuf,
        /// Why it was not recognised.
        detail: String,
    },
    /// The file was written by a newer smeltwatch with a schema this build does not know.
    #[error(
        "spool file {path} has schema version {found}; this build understands up to {supported}"
    )]
    NewerSchema {
        /// The spool file.
        path: PathBuf,
        /// `PRAGMA user_version` found in the file.
        found: i64,
        /// The newest version this build understands.
        supported: i64,
    },
    /// SQLite would not switch the file to WAL mode (e.g. a file system without shared memory).
    #[error("spool file {path}: cannot enable WAL mode, journal_mode stayed {mode:?}")]
    NoWal {
        /// The spool file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// The disk (or the file's size limit) is full; nothing of the failed call was written.
    #[error("spool file {path}: disk full, the write was rolled back")]
    DiskFull {
        /// The spool file.
        path: PathBuf,
    },
    /// Any other SQLite or I/O error; nothing of the failed call was written.
    #[error("spool file {path}: {source}")]
    Sqlite {
        /// The spool file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The record log beside the spool file could not be read or written (not a full disk).
    #[error("spool record log {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The call needs to own the spool, and another process (the agent) does.
    #[error("spool file {path} is in use by another process; stop it first")]
    HeldByAnother {
        /// The spool file.
        path: PathBuf,
    },
    /// The spool thread could not be started.
    #[error("cannot start the spool thread for {path}: {source}")]
    Thread {
        /// The spool file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The spool was closed (by [`SpoolHandle::close`] on any clone) or its thread stopped.
    #[error("spool is closed")]
    Closed,
    /// A damaged spool file could not be moved aside.
    #[error("spool file {path} is damaged ({detail}) and cannot be moved aside to {to}: {source}")]
    SetAsideFailed {
        /// The spool file.
        path: PathBuf,
        /// Why it was to be moved.
        detail: String,
        /// Where it was to go.
        to: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl SpoolError {
    /// Whether the error is the file's own damage, so that moving it aside and starting an empty
    /// spool is the way on: not a SQLite database, a failed `quick_check` or impossible values
    /// ([`SpoolError::Corrupt`]), or a database without the spool's schema
    /// ([`SpoolError::NotASpool`]). Not for a newer schema (records this build cannot read), a
    /// full disk, permissions or other I/O errors: those are not fixed by a new file, or would
    /// push data out of the way.
    pub fn is_damaged(&self) -> bool {
        self.set_aside_reason().is_some()
    }

    /// The `reason` of a [`SetAside`] for a damaged file; `None` for the others.
    pub fn set_aside_reason(&self) -> Option<&'static str> {
        match self {
            SpoolError::Corrupt { .. } => Some("corrupt"),
            SpoolError::NotASpool { .. } => Some("not_a_spool"),
            _ => None,
        }
    }
}
