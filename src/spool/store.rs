//! [`Spool`]: the synchronous core over one SQLite connection and the record log beside it. No
//! tokio, no threads.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, ErrorCode, OptionalExtension, Transaction, params};

use super::log::{self, RecordLog};
use super::pending::{Pending, PendingRecord};
use super::{
    Appended, DeadLetter, DropsByReason, NewRecord, SetAside, SpoolError, SpoolStats, StoredRecord,
};
use crate::clock::Clock;
use crate::config::{SpoolConfig, Stream};
use crate::model::Timestamp;

/// The schema version written to `PRAGMA user_version` (see the module documentation of
/// [`crate::spool`]): 1 held JSON bodies only; 2, the same tables, may also hold binary bodies
/// ([`crate::publish::body`]); 3 adds the `dead_letters` table. Older files are upgraded in place
/// when they are opened, and an older build refuses a newer file rather than drop what it cannot
/// read (a version-2 build would not know that records were set aside).
const SCHEMA_VERSION: i64 = 3;

/// The table of version 3 (also part of [`SCHEMA`]).
const DEAD_LETTERS_SCHEMA: &str = "
CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY,
    stream     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    topic      TEXT    NOT NULL,
    body       BLOB    NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts   INTEGER NOT NULL,
    reason     TEXT    NOT NULL,
    dead_ms    INTEGER NOT NULL,
    requeue    INTEGER NOT NULL DEFAULT 0
);
";

/// How long a statement waits for a lock held by another connection (e.g. `spool stats` reading
/// the file) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Page size of new spool files: 16 KiB, so that a record of a large batch sits in one leaf page
/// instead of a leaf cell and a chain of overflow pages (each an extra WAL frame on append and an
/// extra page to walk on read and ack). With binary bodies (2 to 3 kB for a batch of 100
/// readings) 4 and 8 KiB pages are no better; docs/PERFORMANCE.md ("every spooled batch spanned
/// four pages", "Tried and left out") has the figures. Files made with another page size keep it.
const PAGE_SIZE_BYTES: i64 = 16 * 1024;

/// The budget's measure of one row, in SQL. `octet_length` counts UTF-8 bytes of the topic.
const ROW_BYTES: &str = "octet_length(topic) + length(body)";

/// Room made by the first retry of an append that hit a full disk, at least: a few pages, as rows
/// and index entries take more than their payload bytes.
const DISK_FULL_FIRST_ROOM: u64 = 16 * 1024;

const SCHEMA: &str = "
CREATE TABLE records (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    stream     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    topic      TEXT    NOT NULL,
    body       BLOB    NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX records_by_stream ON records(stream, id);
CREATE TABLE streams (
    stream   TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL,
    dropped  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
";

/// Every stream, lowest priority first: the order the budget drops in.
const STREAMS: [Stream; 4] = [
    Stream::Live,
    Stream::Metrics,
    Stream::Events,
    Stream::Emissions,
];

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Live => 0,
        Stream::Metrics => 1,
        Stream::Events => 2,
        Stream::Emissions => 3,
    }
}

/// In-memory mirror of one stream's durable state, so appends need not scan the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct StreamState {
    records: u64,
    bytes: u64,
    next_seq: u64,
    dropped: u64,
}

/// The spool over one SQLite file. See the [module docs](super) for format and guarantees.
///
/// Every mutating method runs in one transaction; if it fails, neither the file nor the in-memory
/// totals change.
pub struct Spool {
    conn: Connection,
    path: PathBuf,
    max_bytes: u64,
    max_age_ms: Option<i64>,
    streams: [StreamState; 4],
    drops: DropsByReason,
    /// `synchronous = FULL` (an fsync per commit) for appends; acks always commit without one.
    synchronous_full: bool,
    /// Read at every append to notice wall-clock steps (see the module docs, "Maximum age").
    clock: Arc<Clock>,
    /// Forward steps whose records are still queued, oldest first; persisted in `kv`.
    corrections: Vec<StepCorrection>,
    /// Steps of `clock` already taken into `corrections`.
    steps_seen: u64,
    /// The record log appends go to (see "Record log" in the [module docs](super)); `None` when
    /// another process owns the spool and this one only reads it.
    log: Option<RecordLog>,
    /// The log's records not acked yet, also counted in `streams`.
    pending: Pending,
    /// The id the next appended record gets.
    next_id: i64,
    /// `cap_file_pages` is in effect: appends go to SQLite, whose pages the cap counts.
    capped: bool,
}

/// The log is emptied into SQLite when its pending records exceed this many budget bytes (a long
/// outage: memory stays bounded and the backlog goes to SQLite in large transactions), or when
/// the file exceeds [`log::FULL_BYTES`] (acked records included), so that the log never holds more
/// than a few seconds to minutes of a plant's data and its replay at open stays short.
const PENDING_MAX_BYTES: u64 = 1 << 20;

/// The `kv` key of the step corrections: 24 bytes per correction, three little-endian i64
/// (`before_ms`, `delta_ms`, `up_to_id`), oldest first.
const CLOCK_STEPS_KEY: &str = "clock_steps";

/// `up_to_id` of a correction not yet bounded by the append that noticed its step.
const UNBOUNDED: i64 = i64::MAX;

/// A forward step of the wall clock, for the `max_age` comparison: a record created before
/// `before_ms` was stamped by the clock before the step, and is aged from its creation time plus
/// `delta_ms` (the time the corrected clock would have given it). Its stored `created` is not
/// changed: that is what was acquired and published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StepCorrection {
    /// Halfway between the old clock's time and the new one's at the step: on either side of it
    /// lie the times stamped before and after the step.
    before_ms: i64,
    delta_ms: i64,
    /// Kept while a record with an id up to this one is queued; only those can predate the step.
    up_to_id: i64,
}

/// `created_ms` on the clock as corrected by every later forward step.
fn corrected(corrections: &[StepCorrection], created_ms: i64) -> i64 {
    corrections.iter().fold(created_ms, |c, k| {
        if c < k.before_ms {
            c.saturating_add(k.delta_ms)
        } else {
            c
        }
    })
}

fn encode_corrections(corrections: &[StepCorrection]) -> Vec<u8> {
    corrections
        .iter()
        .flat_map(|k| [k.before_ms, k.delta_ms, k.up_to_id])
        .flat_map(i64::to_le_bytes)
        .collect()
}

fn decode_corrections(path: &Path, bytes: &[u8]) -> Result<Vec<StepCorrection>, SpoolError> {
    if !bytes.len().is_multiple_of(24) {
        return Err(SpoolError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("kv {CLOCK_STEPS_KEY:?} holds {} bytes", bytes.len()),
        });
    }
    let int = |b: &[u8]| i64::from_le_bytes(b.try_into().expect("8 bytes"));
    Ok(bytes
        .chunks_exact(24)
        .map(|c| StepCorrection {
            before_ms: int(&c[0..8]),
            delta_ms: int(&c[8..16]),
            up_to_id: int(&c[16..24]),
        })
        .collect())
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.path)
            .field("max_bytes", &self.max_bytes)
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

/// Classifies a SQLite error for the caller: disk full and corruption get their own variants.
fn classify(path: &Path, e: rusqlite::Error) -> SpoolError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => SpoolError::DiskFull {
            path: path.to_path_buf(),
        },
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => SpoolError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        _ => SpoolError::Sqlite {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// Sorted, non-overlapping id ranges covering `ranges`.
fn merged(mut ranges: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    ranges.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

/// Classifies an I/O error of the record log: a full disk or quota gets its own variant.
fn classify_io(path: &Path, e: std::io::Error) -> SpoolError {
    // ENOSPC, EFBIG, EDQUOT.
    if matches!(e.raw_os_error(), Some(28 | 27 | 122)) {
        SpoolError::DiskFull {
            path: path.to_path_buf(),
        }
    } else {
        SpoolError::Log {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

fn parse_stream(path: &Path, name: &str) -> Result<Stream, SpoolError> {
    STREAMS
        .into_iter()
        .find(|s| s.as_str() == name)
        .ok_or_else(|| SpoolError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("unknown stream {name:?}"),
        })
}

/// A non-negative SQLite integer as u64 (counts, seqs); negative values mean a damaged file.
fn non_negative(path: &Path, what: &str, v: i64) -> Result<u64, SpoolError> {
    u64::try_from(v).map_err(|_| SpoolError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("negative {what} {v}"),
    })
}

fn to_sql_int(v: u64) -> i64 {
    // Seqs and counters start at 0 or 1 and grow by one per record; i64::MAX is out of reach.
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Spool {
    /// Opens (or creates) the spool file at `path`, creating missing directories.
    ///
    /// Runs `PRAGMA quick_check` and fails with [`SpoolError::Corrupt`] naming the file if it is
    /// damaged, switches to WAL mode, sets `synchronous` per `cfg`, creates or checks the schema,
    /// and loads the per-stream totals (one scan of the table).
    pub fn open(path: &Path, cfg: &SpoolConfig) -> Result<Spool, SpoolError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| SpoolError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let err = |e| classify(path, e);
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        quick_check(&conn, path)?;
        // Only a new, empty file takes it; an existing one keeps the page size it was made with.
        conn.pragma_update(None, "page_size", PAGE_SIZE_BYTES)
            .map_err(err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SpoolError::NoWal {
                path: path.to_path_buf(),
                mode,
            });
        }
        let synchronous = if cfg.synchronous_full {
            "FULL"
        } else {
            "NORMAL"
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(err)?;
        migrate(&mut conn, path)?;
        check_tables(&conn, path)?;
        let mut spool = Spool {
            conn,
            path: path.to_path_buf(),
            max_bytes: cfg.max_bytes,
            max_age_ms: cfg
                .max_age
                .map(|a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX)),
            streams: [StreamState::default(); 4],
            drops: DropsByReason::default(),
            synchronous_full: cfg.synchronous_full,
            clock: Clock::system(),
            corrections: Vec::new(),
            steps_seen: 0,
            log: None,
            pending: Pending::default(),
            next_id: 1,
            capped: false,
        };
        spool.load_totals()?;
        if let Some(bytes) = spool.kv_get(CLOCK_STEPS_KEY)? {
            spool.corrections = decode_corrections(path, &bytes)?;
        }
        spool.next_id = spool.sqlite_last_id()? + 1;
        spool.open_log()?;
        Ok(spool)
    }

    /// Opens the record log and takes in what it holds: records appended and not acked before the
    /// last stop (or crash) are moved into SQLite and the log starts empty. If another process
    /// owns the spool (it holds the log's lock), the log is only read, and its records are shown
    /// beside SQLite's.
    fn open_log(&mut self) -> Result<(), SpoolError> {
        let log_path = log::path_for(&self.path);
        let damaged = |detail: String| SpoolError::Corrupt {
            path: log_path.clone(),
            detail,
        };
        let (log, replay) = match RecordLog::open(&log_path) {
            Ok((log, replay)) => (Some(log), replay),
            Err(log::OpenError::Held(_)) => match RecordLog::read(&log_path) {
                Ok(replay) => (None, replay),
                Err(log::OpenError::NotALog(detail)) => return Err(damaged(detail)),
                Err(log::OpenError::Io(e) | log::OpenError::Held(e)) => {
                    return Err(classify_io(&log_path, e));
                }
            },
            Err(log::OpenError::NotALog(detail)) => return Err(damaged(detail)),
            Err(log::OpenError::Io(e)) => return Err(classify_io(&log_path, e)),
        };
        if replay.discarded_bytes > 0 {
            tracing::warn!(
                log = %log_path.display(),
                bytes = replay.discarded_bytes,
                "spool record log: an incomplete or damaged frame at the end was discarded (a \
                 write cut short by a crash; every append that returned was before it)"
            );
        }
        let acked = merged(replay.acked);
        let is_acked = |id: i64| {
            let i = acked.partition_point(|&(first, _)| first <= id);
            i > 0 && id <= acked[i - 1].1
        };
        let mut attempts = std::collections::HashMap::<i64, u32>::new();
        for id in replay.attempts {
            *attempts.entry(id).or_default() += 1;
        }
        let in_sqlite = self.next_id - 1;
        for r in replay.records {
            if r.id <= in_sqlite {
                // Moved into SQLite before a crash cut the log's reset short.
                continue;
            }
            self.next_id = self.next_id.max(r.id + 1);
            let s = &mut self.streams[index(r.stream)];
            s.next_seq = s.next_seq.max(r.seq + 1);
            if is_acked(r.id) {
                continue;
            }
            let record = PendingRecord {
                stream: r.stream,
                seq: r.seq,
                topic: r.topic,
                body: r.body,
                created_ms: r.created_ms,
                attempts: attempts.get(&r.id).copied().unwrap_or(0),
            };
            s.records += 1;
            s.bytes += record.budget_bytes();
            self.pending.insert(r.id, record, index(r.stream));
        }
        self.log = log;
        if self.log.is_some() {
            self.spill()?;
        }
        Ok(())
    }

    /// Moves the pending records into SQLite in one transaction, with the seq counters and the
    /// id counter, then empties the log. Fails with nothing changed if the transaction fails.
    fn spill(&mut self) -> Result<(), SpoolError> {
        let Some(log) = &self.log else {
            return if self.pending.is_empty() {
                Ok(())
            } else {
                Err(SpoolError::HeldByAnother {
                    path: self.path.clone(),
                })
            };
        };
        if self.pending.is_empty() && log.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let err = |e| classify(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO records (id, stream, seq, topic, body, created_ms, attempts) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(err)?;
            for (id, r) in self.pending.iter() {
                insert
                    .execute(params![
                        id,
                        r.stream.as_str(),
                        to_sql_int(r.seq),
                        r.topic,
                        r.body,
                        r.created_ms,
                        r.attempts
                    ])
                    .map_err(err)?;
            }
            let mut update = tx
                .prepare_cached("UPDATE streams SET next_seq = ?2, dropped = ?3 WHERE stream = ?1")
                .map_err(err)?;
            for stream in STREAMS {
                let s = &self.streams[index(stream)];
                update
                    .execute(params![
                        stream.as_str(),
                        to_sql_int(s.next_seq),
                        to_sql_int(s.dropped)
                    ])
                    .map_err(err)?;
            }
            // AUTOINCREMENT continues after the ids the log handed out, acked ones included.
            let last = self.next_id - 1;
            let bumped = tx
                .execute(
                    "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'records'",
                    [last],
                )
                .map_err(err)?;
            if bumped == 0 && last > 0 {
                tx.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('records', ?1)",
                    [last],
                )
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        self.pending.clear();
        if let Some(log) = &mut self.log {
            log.reset()
                .map_err(|e| classify_io(&log::path_for(&path), e))?;
        }
        Ok(())
    }

    /// Fails unless this process owns the spool (holds its record log): a reader beside the
    /// owner must not write records, or ids would collide.
    fn owned(&self) -> Result<(), SpoolError> {
        match self.log {
            Some(_) => Ok(()),
            None => Err(SpoolError::HeldByAnother {
                path: self.path.clone(),
            }),
        }
    }

    /// The last id SQLite handed out or was told about (`sqlite_sequence`).
    fn sqlite_last_id(&self) -> Result<i64, SpoolError> {
        self.conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'records'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map(|id| id.unwrap_or(0))
            .map_err(|e| self.err(e))
    }

    /// Records of `stream` held in SQLite (not in the log).
    fn in_sqlite(&self, i: usize) -> u64 {
        self.streams[i].records - self.pending.count(i)
    }

    /// Notice wall-clock steps on `clock` instead of the system clock (tests step it).
    pub fn with_clock(mut self, clock: Arc<Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// [`Spool::open`], but a damaged file ([`SpoolError::is_damaged`]) does not stop it: the file
    /// (and its `-wal` and `-shm`) is renamed to `<name>.corrupt-<now, UTC>` and an empty spool is
    /// opened in its place; the [`SetAside`] says what was moved where and why. Any other error is
    /// returned with the file untouched (see the [module docs](super)).
    pub fn open_or_set_aside(
        path: &Path,
        cfg: &SpoolConfig,
        now: SystemTime,
    ) -> Result<(Spool, Option<SetAside>), SpoolError> {
        let e = match Spool::open(path, cfg) {
            Ok(spool) => return Ok((spool, None)),
            Err(e) => e,
        };
        let Some(reason) = e.set_aside_reason() else {
            return Err(e);
        };
        let detail = e.to_string();
        let moved_to = set_aside(path, now).map_err(|(to, source)| SpoolError::SetAsideFailed {
            path: path.to_path_buf(),
            detail: detail.clone(),
            to,
            source,
        })?;
        let spool = Spool::open(path, cfg)?;
        Ok((
            spool,
            Some(SetAside {
                path: path.to_path_buf(),
                moved_to,
                reason,
                detail,
            }),
        ))
    }

    fn err(&self, e: rusqlite::Error) -> SpoolError {
        classify(&self.path, e)
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load_totals(&mut self) -> Result<(), SpoolError> {
        let path = self.path.clone();
        let mut streams = [StreamState::default(); 4];
        {
            let mut stmt = self
                .conn
                .prepare("SELECT stream, next_seq, dropped FROM streams")
                .map_err(|e| classify(&path, e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(|e| classify(&path, e))?;
            for row in rows {
                let (name, next_seq, dropped) = row.map_err(|e| classify(&path, e))?;
                let s = &mut streams[index(parse_stream(&path, &name)?)];
                s.next_seq = non_negative(&path, "next_seq", next_seq)?;
                s.dropped = non_negative(&path, "dropped", dropped)?;
            }
            let sql = format!(
                "SELECT stream, count(*), coalesce(sum({ROW_BYTES}), 0) FROM records GROUP BY stream"
            );
            let mut stmt = self.conn.prepare(&sql).map_err(|e| classify(&path, e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(|e| classify(&path, e))?;
            for row in rows {
                let (name, records, bytes) = row.map_err(|e| classify(&path, e))?;
                let s = &mut streams[index(parse_stream(&path, &name)?)];
                s.records = non_negative(&path, "count", records)?;
                s.bytes = non_negative(&path, "size", bytes)?;
            }
        }
        if let Some(s) = streams.iter().zip(STREAMS).find(|(s, _)| s.next_seq == 0) {
            return Err(SpoolError::Corrupt {
                path,
                detail: format!("no sequence counter for stream {}", s.1.as_str()),
            });
        }
        self.streams = streams;
        Ok(())
    }

    /// Appends `records` in one transaction and returns where each stored one went, in input
    /// order.
    ///
    /// Every record gets the next seq of its stream. If the byte budget forces drops (see the
    /// module docs), queued records and possibly records of this batch are removed; those of this
    /// batch have no `Appended` entry (their seqs are consumed, so consumers see the gap) and all
    /// drops are counted. When this returns `Ok`, the transaction has committed.
    ///
    /// A full disk (`SQLITE_FULL`: the file system, a quota or `max_page_count`) is handled like
    /// the budget: the append is retried with a budget shrunk below what is queued now, dropping
    /// lowest-priority, oldest records first, doubling the room it makes until the batch fits.
    /// Those drops are counted like budget drops (and also in [`Spool::disk_full_drops`]). Only if
    /// nothing at all can be written, not even after dropping everything, does this return
    /// [`SpoolError::DiskFull`].
    pub fn append(&mut self, records: Vec<NewRecord>) -> Result<Vec<Appended>, SpoolError> {
        self.append_slice(&records)
    }

    /// [`append`](Self::append), leaving the records with the caller (who may retry them).
    pub fn append_slice(&mut self, records: &[NewRecord]) -> Result<Vec<Appended>, SpoolError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.owned()?;
        self.note_clock_steps();
        match self.append_to_log(records) {
            Some(Ok(appended)) => return Ok(appended),
            Some(Err(SpoolError::DiskFull { .. })) | None => {}
            Some(Err(e)) => return Err(e),
        }
        // The budget, `max_age` or a full disk must drop records, or a clock step must be
        // recorded: SQLite's path does that, so it must hold every record first.
        self.spill_or_drop()?;
        let result = self.append_to_sqlite(records);
        self.next_id = self.next_id.max(self.sqlite_last_id()? + 1);
        result
    }

    /// The common case: the batch fits the budget, nothing expires and no clock step is pending,
    /// so it goes to the record log with one write (and one `fdatasync` under `synchronous =
    /// FULL`). `None` when SQLite's path is needed.
    fn append_to_log(
        &mut self,
        records: &[NewRecord],
    ) -> Option<Result<Vec<Appended>, SpoolError>> {
        if self.log.is_none() || self.capped || !self.corrections.is_empty() {
            return None;
        }
        let batch: u64 = records
            .iter()
            .map(|r| (r.topic.len() + r.body.len()) as u64)
            .sum();
        let queued: u64 = self.streams.iter().map(|s| s.bytes).sum();
        if queued + batch > self.max_bytes {
            return None;
        }
        if let Some(max_age_ms) = self.max_age_ms {
            let newest = records.iter().map(|r| r.created.unix_ms()).max();
            let cutoff = newest.unwrap_or(i64::MIN).saturating_sub(max_age_ms);
            let expiring = |stream: Stream| stream != Stream::Emissions;
            if STREAMS
                .into_iter()
                .any(|s| expiring(s) && self.in_sqlite(index(s)) > 0)
                || self
                    .pending
                    .any(|r| expiring(r.stream) && r.created_ms < cutoff)
            {
                return None;
            }
        }
        let mut frames = Vec::with_capacity(records.iter().map(|r| r.body.len() + 64).sum());
        let mut appended = Vec::with_capacity(records.len());
        let mut streams = self.streams;
        for (k, r) in records.iter().enumerate() {
            let s = &mut streams[index(r.stream)];
            let id = self.next_id + k as i64;
            log::encode_record(&mut frames, id, s.next_seq, r);
            appended.push(Appended {
                id,
                stream: r.stream,
                seq: s.next_seq,
            });
            s.next_seq += 1;
            s.records += 1;
            s.bytes += (r.topic.len() + r.body.len()) as u64;
        }
        let log = self.log.as_mut()?;
        if let Err(e) = log.append(&frames, self.synchronous_full) {
            return Some(Err(classify_io(&log::path_for(&self.path), e)));
        }
        self.streams = streams;
        self.next_id += records.len() as i64;
        for (a, r) in appended.iter().zip(records) {
            let record = PendingRecord {
                stream: r.stream,
                seq: a.seq,
                topic: r.topic.clone(),
                body: r.body.clone(),
                created_ms: r.created.unix_ms(),
                attempts: 0,
            };
            self.pending.insert(a.id, record, index(r.stream));
        }
        let full = self.pending.bytes() > PENDING_MAX_BYTES
            || self.log.as_ref().is_some_and(|l| l.len() > log::FULL_BYTES);
        if full && let Err(e) = self.spill() {
            // The batch is durable in the log; the next append tries again.
            tracing::warn!(spool = %self.path.display(), error = %e, "spool: moving the record log into SQLite failed");
        }
        Some(Ok(appended))
    }

    /// [`spill`](Self::spill); on a full disk, drops pending records by the budget's rule (lowest
    /// priority, oldest first; counted as disk-full drops), twice as many bytes each time, until
    /// the rest fits.
    fn spill_or_drop(&mut self) -> Result<(), SpoolError> {
        let mut room = DISK_FULL_FIRST_ROOM;
        loop {
            match self.spill() {
                Err(SpoolError::DiskFull { .. }) if !self.pending.is_empty() => {}
                other => return other,
            }
            let mut victims = Vec::new();
            let mut freed = 0;
            for stream in STREAMS {
                for (id, r) in self.pending.iter().filter(|(_, r)| r.stream == stream) {
                    if freed >= room {
                        break;
                    }
                    freed += r.budget_bytes();
                    victims.push(id);
                }
            }
            for id in victims {
                if let Some(r) = self.pending.remove(id, index) {
                    let s = &mut self.streams[index(r.stream)];
                    s.records -= 1;
                    s.bytes -= r.budget_bytes();
                    s.dropped += 1;
                    self.drops.disk_full += 1;
                }
            }
            tracing::warn!(
                spool = %self.path.display(),
                freed_bytes = freed,
                "spool file system full: dropped the lowest-priority oldest records of the record log to move the rest into SQLite"
            );
            room = room.saturating_mul(2);
        }
    }

    /// [`Spool::append`] through SQLite (every record already there).
    fn append_to_sqlite(&mut self, records: &[NewRecord]) -> Result<Vec<Appended>, SpoolError> {
        let (appended, dropped) = match self.append_within(records, self.max_bytes) {
            Err(SpoolError::DiskFull { .. }) => self.append_on_full_disk(records)?,
            Ok((appended, dropped, aged)) => {
                self.drops.budget += dropped.iter().sum::<u64>() - aged;
                (appended, dropped)
            }
            Err(e) => return Err(e),
        };
        let total: u64 = dropped.iter().sum();
        if total > 0 {
            tracing::warn!(
                spool = %self.path.display(),
                dropped = total,
                live = dropped[0],
                metrics = dropped[1],
                events = dropped[2],
                emissions = dropped[3],
                max_bytes = self.max_bytes,
                "spool dropped records: the lowest-priority oldest over the byte budget, or older than max_age"
            );
        }
        Ok(appended)
    }

    /// Take the forward steps of the wall clock since the last append into the `max_age`
    /// corrections. A backward step needs none: records queued before it only expire later.
    fn note_clock_steps(&mut self) {
        self.clock.now_ms();
        for (n, step) in self.clock.steps_after(self.steps_seen) {
            self.steps_seen = n;
            let delta_ms = step.delta_ms();
            if delta_ms <= 0 {
                continue;
            }
            let k = StepCorrection {
                before_ms: step.expected_ms.saturating_add(delta_ms / 2),
                delta_ms,
                up_to_id: UNBOUNDED,
            };
            // Reopened in the same process, the spool sees the process's steps again.
            if self
                .corrections
                .iter()
                .any(|c| (c.before_ms, c.delta_ms) == (k.before_ms, k.delta_ms))
            {
                continue;
            }
            tracing::warn!(
                spool = %self.path.display(),
                step_ms = delta_ms,
                "the wall clock was stepped forward: records queued before the step are aged from \
                 their creation time plus the step, not expired by it"
            );
            self.corrections.push(k);
        }
    }

    /// The disk is full: make room by the budget's rule, twice as much each time it still does
    /// not fit, until the batch fits or there is nothing left to drop.
    fn append_on_full_disk(
        &mut self,
        records: &[NewRecord],
    ) -> Result<(Vec<Appended>, [u64; 4]), SpoolError> {
        let batch: u64 = records
            .iter()
            .map(|r| (r.topic.len() + r.body.len()) as u64)
            .sum();
        // Pages hold more than the payload (row headers, index entries): start with some slack.
        let mut room = batch.max(DISK_FULL_FIRST_ROOM);
        loop {
            let queued: u64 = self.streams.iter().map(|s| s.bytes).sum();
            let cap = (queued + batch).saturating_sub(room);
            match self.append_within(records, cap) {
                Ok((appended, dropped, aged)) => {
                    let total: u64 = dropped.iter().sum();
                    self.drops.disk_full += total - aged;
                    tracing::warn!(
                        spool = %self.path.display(),
                        dropped = total,
                        "spool file system full: dropped the lowest-priority oldest records to store new ones"
                    );
                    return Ok((appended, dropped));
                }
                Err(SpoolError::DiskFull { .. }) if cap > 0 => room = room.saturating_mul(2),
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Spool::append`] under a byte budget of `max_bytes`; also returns the drops per stream
    /// (every reason) and how many of them were expired by `max_age` (counted here, on commit).
    fn append_within(
        &mut self,
        records: &[NewRecord],
        max_bytes: u64,
    ) -> Result<(Vec<Appended>, [u64; 4], u64), SpoolError> {
        let mut streams = self.streams;
        let sizes: Vec<u64> = records
            .iter()
            .map(|r| (r.topic.len() + r.body.len()) as u64)
            .collect();
        let mut seqs = Vec::with_capacity(records.len());
        for r in records {
            let s = &mut streams[index(r.stream)];
            seqs.push(s.next_seq);
            s.next_seq += 1;
        }

        let path = self.path.clone();
        let err = |e| classify(&path, e);
        let tx = self.conn.transaction().map_err(err)?;

        let mut keep = vec![true; records.len()];
        let mut dropped_now = [0u64; 4];
        let mut aged = 0u64;

        // Age: queued records older than `max_age` before the newest record of this batch expire,
        // except emissions (a regulator's record is bounded by the byte budget alone).
        if let Some(max_age_ms) = self.max_age_ms {
            // Ages are compared on the clock as corrected by every forward step (see `corrected`).
            let newest = records
                .iter()
                .map(|r| corrected(&self.corrections, r.created.unix_ms()))
                .max();
            let cutoff = newest.unwrap_or(i64::MIN).saturating_sub(max_age_ms);
            for stream in STREAMS {
                let i = index(stream);
                if stream == Stream::Emissions || streams[i].records == 0 {
                    continue;
                }
                let (rows, bytes) =
                    evict_older(&tx, stream, cutoff, &self.corrections).map_err(err)?;
                streams[i].records -= rows;
                streams[i].bytes -= bytes;
                dropped_now[i] += rows;
                aged += rows;
            }
        }

        // Budget: free lowest-priority, oldest bytes first; queued rows before this batch's.
        let queued: u64 = streams.iter().map(|s| s.bytes).sum();
        let mut excess = (queued + sizes.iter().sum::<u64>()).saturating_sub(max_bytes);
        for stream in STREAMS {
            if excess == 0 {
                break;
            }
            let i = index(stream);
            if streams[i].records > 0 {
                let (rows, bytes) = evict_oldest(&tx, stream, excess).map_err(err)?;
                streams[i].records -= rows;
                streams[i].bytes -= bytes;
                dropped_now[i] += rows;
                excess = excess.saturating_sub(bytes);
            }
            for (k, r) in records.iter().enumerate() {
                if excess == 0 {
                    break;
                }
                if r.stream == stream {
                    keep[k] = false;
                    dropped_now[i] += 1;
                    excess = excess.saturating_sub(sizes[k]);
                }
            }
        }

        let mut appended = Vec::with_capacity(records.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO records (stream, seq, topic, body, created_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(err)?;
            for (k, r) in records.iter().enumerate() {
                if !keep[k] {
                    continue;
                }
                insert
                    .execute(params![
                        r.stream.as_str(),
                        to_sql_int(seqs[k]),
                        r.topic,
                        r.body,
                        r.created.unix_ms()
                    ])
                    .map_err(err)?;
                let s = &mut streams[index(r.stream)];
                s.records += 1;
                s.bytes += sizes[k];
                appended.push(Appended {
                    id: tx.last_insert_rowid(),
                    stream: r.stream,
                    seq: seqs[k],
                });
            }
            let mut update = tx
                .prepare_cached("UPDATE streams SET next_seq = ?2, dropped = ?3 WHERE stream = ?1")
                .map_err(err)?;
            for stream in STREAMS {
                let (old, new) = (&self.streams[index(stream)], &mut streams[index(stream)]);
                new.dropped += dropped_now[index(stream)];
                if (old.next_seq, old.dropped) != (new.next_seq, new.dropped) {
                    update
                        .execute(params![
                            stream.as_str(),
                            to_sql_int(new.next_seq),
                            to_sql_int(new.dropped)
                        ])
                        .map_err(err)?;
                }
            }
        }
        let corrections = bound_corrections(&tx, &self.corrections).map_err(err)?;
        tx.commit().map_err(err)?;
        self.corrections = corrections;
        self.streams = streams;
        self.drops.max_age += aged;
        Ok((appended, dropped_now, aged))
    }

    /// Records dropped to make room on a full disk since this spool was opened (they are also in
    /// the persisted per-stream drop counts, with the budget's drops).
    pub fn disk_full_drops(&self) -> u64 {
        self.drops.disk_full
    }

    /// Caps the file at `pages` database pages (SQLite `max_page_count`; pages are 4 KiB by
    /// default) until it is closed; 0 removes the cap. Writes that would grow the file beyond it
    /// fail like on a full disk. For fault tests, and for a hard size limit on a shared disk.
    /// Returns the cap in effect (never below the file's current size).
    pub fn cap_file_pages(&mut self, pages: u64) -> Result<u64, SpoolError> {
        // While capped, appends go to SQLite, where the cap applies.
        self.spill()?;
        self.capped = pages != 0;
        let pages = if pages == 0 {
            i64::from(u32::MAX - 1)
        } else {
            to_sql_int(pages)
        };
        self.conn
            .pragma_update_and_check(None, "max_page_count", pages, |r| r.get::<_, i64>(0))
            .map(|p| u64::try_from(p).unwrap_or(0))
            .map_err(|e| self.err(e))
    }

    /// Pages the file has now (SQLite `page_count`).
    pub fn page_count(&self) -> Result<u64, SpoolError> {
        self.conn
            .pragma_query_value(None, "page_count", |r| r.get::<_, i64>(0))
            .map(|p| u64::try_from(p).unwrap_or(0))
            .map_err(|e| self.err(e))
    }

    /// Up to `limit` records with `id > after_id`, oldest (lowest id) first.
    pub fn read_after(&self, after_id: i64, limit: usize) -> Result<Vec<StoredRecord>, SpoolError> {
        let logged = self.pending.read_after(after_id, limit);
        if STREAMS.iter().all(|&s| self.in_sqlite(index(s)) == 0) {
            return Ok(logged);
        }
        let mut out = self.read_after_in_sqlite(after_id, limit)?;
        if !logged.is_empty() {
            out.extend(logged);
            out.sort_unstable_by_key(|r| r.id);
            out.truncate(limit);
        }
        Ok(out)
    }

    fn read_after_in_sqlite(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, SpoolError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, stream, seq, topic, body, created_ms, attempts FROM records \
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![after_id, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, stream, seq, topic, body, created_ms, attempts) =
                row.map_err(|e| self.err(e))?;
            out.push(StoredRecord {
                id,
                stream: parse_stream(&self.path, &stream)?,
                seq: non_negative(&self.path, "seq", seq)?,
                topic,
                body,
                created: Timestamp(created_ms),
                attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
            });
        }
        Ok(out)
    }

    /// Deletes delivered records in one transaction; returns how many were removed. Unknown and
    /// already-acked ids are ignored.
    ///
    /// An ack commits without an fsync of its own, under `synchronous = FULL` too: a lost ack
    /// only sends its records again (delivery is at-least-once and consumers drop repeats by
    /// seq), so it need not wait for the disk. The WAL is written in order, so the fsync of the
    /// next append (or checkpoint) makes every ack before it durable; a process crash loses
    /// none (they are in the OS's cache), an OS crash or power loss at most those since that
    /// fsync.
    pub fn ack(&mut self, ids: &[i64]) -> Result<u64, SpoolError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.owned()?;
        let (logged, others): (Vec<i64>, Vec<i64>) =
            ids.iter().partition(|&&id| self.pending.contains(id));
        let mut removed = 0;
        if !logged.is_empty() {
            removed += self.ack_logged(logged)?;
        }
        if others.is_empty() || STREAMS.iter().all(|&s| self.in_sqlite(index(s)) == 0) {
            return Ok(removed);
        }
        Ok(removed + self.ack_in_sqlite(&others)?)
    }

    /// Acks records of the log: one frame of id ranges, written without a sync, then they leave
    /// memory.
    fn ack_logged(&mut self, mut ids: Vec<i64>) -> Result<u64, SpoolError> {
        ids.sort_unstable();
        ids.dedup();
        let ranges = merged(ids.iter().map(|&id| (id, id)).collect());
        if let Some(log) = &mut self.log {
            log.append_acks(&ranges)
                .map_err(|e| classify_io(&log::path_for(&self.path), e))?;
        }
        let mut removed = 0;
        for id in ids {
            if let Some(r) = self.pending.remove(id, index) {
                let s = &mut self.streams[index(r.stream)];
                s.records -= 1;
                s.bytes -= r.budget_bytes();
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn ack_in_sqlite(&mut self, ids: &[i64]) -> Result<u64, SpoolError> {
        if !self.synchronous_full {
            return self.ack_ids(ids);
        }
        let err = |e| classify(&self.path, e);
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        let result = self.ack_ids(ids);
        let restored = self.conn.pragma_update(None, "synchronous", "FULL");
        let removed = result?;
        restored.map_err(|e| classify(&self.path, e))?;
        Ok(removed)
    }

    fn ack_ids(&mut self, ids: &[i64]) -> Result<u64, SpoolError> {
        let mut streams = self.streams;
        let mut removed = 0;
        let path = self.path.clone();
        let err = |e| classify(&path, e);
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let tx = self.conn.transaction().map_err(err)?;
        {
            // Acks come in runs of consecutive ids (PUBACKs arrive in publish order): one range
            // delete per run instead of one statement per id.
            let sql = format!(
                "DELETE FROM records WHERE id BETWEEN ?1 AND ?2 RETURNING stream, {ROW_BYTES}"
            );
            let mut delete = tx.prepare_cached(&sql).map_err(err)?;
            let mut rest = sorted.as_slice();
            while let Some(&first) = rest.first() {
                let run = rest
                    .iter()
                    .zip(first..)
                    .take_while(|(id, expected)| **id == *expected)
                    .count();
                let last = rest[run - 1];
                rest = &rest[run..];
                let mut rows = delete.query(params![first, last]).map_err(err)?;
                while let Some(row) = rows.next().map_err(err)? {
                    let name: String = row.get(0).map_err(err)?;
                    let bytes: i64 = row.get(1).map_err(err)?;
                    let s = &mut streams[index(parse_stream(&path, &name)?)];
                    s.records = s.records.saturating_sub(1);
                    s.bytes = s.bytes.saturating_sub(non_negative(&path, "size", bytes)?);
                    removed += 1;
                }
            }
        }
        tx.commit().map_err(err)?;
        self.streams = streams;
        Ok(removed)
    }

    /// Adds one to the `attempts` of each record in `ids` (one transaction); unknown ids are
    /// ignored.
    pub fn mark_attempt(&mut self, ids: &[i64]) -> Result<(), SpoolError> {
        self.owned()?;
        let (logged, ids): (Vec<i64>, Vec<i64>) =
            ids.iter().partition(|&&id| self.pending.contains(id));
        if !logged.is_empty() {
            if let Some(log) = &mut self.log {
                log.append_attempts(&logged)
                    .map_err(|e| classify_io(&log::path_for(&self.path), e))?;
            }
            for id in logged {
                self.pending.mark_attempt(id);
            }
        }
        if ids.is_empty() || STREAMS.iter().all(|&s| self.in_sqlite(index(s)) == 0) {
            return Ok(());
        }
        let path = self.path.clone();
        let err = |e| classify(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut update = tx
                .prepare_cached("UPDATE records SET attempts = attempts + 1 WHERE id = ?1")
                .map_err(err)?;
            for id in &ids {
                update.execute([id]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// What is waiting. Counts come from the in-memory totals; `oldest` reads one row per stream.
    pub fn stats(&self) -> Result<SpoolStats, SpoolError> {
        let mut oldest: Option<Timestamp> = None;
        let mut head = self
            .conn
            .prepare_cached("SELECT created_ms FROM records WHERE stream = ?1 ORDER BY id LIMIT 1")
            .map_err(|e| self.err(e))?;
        for stream in STREAMS {
            if let Some(ms) = self.pending.head_created(stream) {
                oldest = Some(oldest.map_or(Timestamp(ms), |t| t.min(Timestamp(ms))));
            }
            if self.in_sqlite(index(stream)) == 0 {
                continue;
            }
            let created: Option<i64> = head
                .query_row([stream.as_str()], |r| r.get(0))
                .optional()
                .map_err(|e| self.err(e))?;
            if let Some(ms) = created {
                oldest = Some(oldest.map_or(Timestamp(ms), |t| t.min(Timestamp(ms))));
            }
        }
        Ok(SpoolStats {
            records: self.streams.iter().map(|s| s.records).sum(),
            bytes: self.streams.iter().map(|s| s.bytes).sum(),
            oldest,
            per_stream: STREAMS
                .iter()
                .map(|&s| (s, self.streams[index(s)].records))
                .collect(),
            dropped: self.streams.iter().map(|s| s.dropped).sum(),
            dropped_since_open: self.drops,
            dead_letters: self.dead_letter_count()?,
        })
    }

    /// Moves records out of the queue into the dead-letter table, each with its reason, in one
    /// transaction; returns what was moved (ids not in the queue are ignored). A dead letter keeps
    /// its id, seq, body and attempts; it is never sent again unless it is re-queued.
    pub fn dead_letter(
        &mut self,
        letters: &[(i64, String)],
        now: Timestamp,
    ) -> Result<Vec<DeadLetter>, SpoolError> {
        if letters.is_empty() {
            return Ok(Vec::new());
        }
        self.owned()?;
        self.spill()?;
        let mut streams = self.streams;
        let path = self.path.clone();
        let err = |e| classify(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        let mut moved = Vec::new();
        {
            let mut copy = tx
                .prepare_cached(
                    "INSERT INTO dead_letters \
                     (id, stream, seq, topic, body, created_ms, attempts, reason, dead_ms) \
                     SELECT id, stream, seq, topic, body, created_ms, attempts, ?2, ?3 \
                     FROM records WHERE id = ?1",
                )
                .map_err(err)?;
            let sql = format!(
                "DELETE FROM records WHERE id = ?1 RETURNING stream, seq, topic, created_ms, \
                 attempts, {ROW_BYTES}"
            );
            let mut delete = tx.prepare_cached(&sql).map_err(err)?;
            for (id, reason) in letters {
                if copy
                    .execute(params![id, reason, now.unix_ms()])
                    .map_err(err)?
                    == 0
                {
                    continue;
                }
                let mut rows = delete.query([id]).map_err(err)?;
                while let Some(row) = rows.next().map_err(err)? {
                    let stream = parse_stream(&path, &row.get::<_, String>(0).map_err(err)?)?;
                    let bytes = non_negative(&path, "size", row.get(5).map_err(err)?)?;
                    let s = &mut streams[index(stream)];
                    s.records = s.records.saturating_sub(1);
                    s.bytes = s.bytes.saturating_sub(bytes);
                    moved.push(DeadLetter {
                        id: *id,
                        stream,
                        seq: non_negative(&path, "seq", row.get(1).map_err(err)?)?,
                        topic: row.get(2).map_err(err)?,
                        body: Vec::new(),
                        created: Timestamp(row.get(3).map_err(err)?),
                        attempts: u32::try_from(row.get::<_, i64>(4).map_err(err)?.max(0))
                            .unwrap_or(u32::MAX),
                        reason: reason.clone(),
                        dead_at: now,
                        requeue: false,
                    });
                }
            }
        }
        tx.commit().map_err(err)?;
        self.streams = streams;
        Ok(moved)
    }

    /// Every dead letter, oldest id first, with its body.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, SpoolError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, stream, seq, topic, body, created_ms, attempts, reason, dead_ms, \
                 requeue FROM dead_letters ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, i64>(9)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, stream, seq, topic, body, created_ms, attempts, reason, dead_ms, requeue) =
                row.map_err(|e| self.err(e))?;
            out.push(DeadLetter {
                id,
                stream: parse_stream(&self.path, &stream)?,
                seq: non_negative(&self.path, "seq", seq)?,
                topic,
                body,
                created: Timestamp(created_ms),
                attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
                reason,
                dead_at: Timestamp(dead_ms),
                requeue: requeue != 0,
            });
        }
        Ok(out)
    }

    /// Dead letters waiting (re-queue requests included).
    pub fn dead_letter_count(&self) -> Result<u64, SpoolError> {
        self.conn
            .query_row("SELECT count(*) FROM dead_letters", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| self.err(e))
    }

    /// Asks for dead letters to be re-queued: `ids`, or every one when `None`. Only a flag is
    /// written, so that this is safe from another process (`smeltwatch spool requeue` while the
    /// agent runs): the process that owns the spool moves them back with
    /// [`take_requeued`](Self::take_requeued), keeping its in-memory totals right. Returns how
    /// many dead letters were flagged.
    pub fn request_requeue(&mut self, ids: Option<&[i64]>) -> Result<u64, SpoolError> {
        let path = self.path.clone();
        let err = |e| classify(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        let mut flagged = 0;
        match ids {
            None => {
                flagged += tx
                    .execute("UPDATE dead_letters SET requeue = 1", [])
                    .map_err(err)?;
            }
            Some(ids) => {
                let mut update = tx
                    .prepare_cached("UPDATE dead_letters SET requeue = 1 WHERE id = ?1")
                    .map_err(err)?;
                for id in ids {
                    flagged += update.execute([id]).map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)?;
        Ok(flagged as u64)
    }

    /// Moves the dead letters flagged by [`request_requeue`](Self::request_requeue) back into the
    /// queue, in one transaction; returns how many. Each gets a new id (after every record
    /// appended so far, so a running uplink reads it like a fresh record), keeps its stream, seq
    /// (its identity for consumers), topic, body and creation time, and starts again at 0
    /// attempts. Re-queued records bypass the byte budget: they were counted in it once.
    pub fn take_requeued(&mut self) -> Result<u64, SpoolError> {
        let flagged: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM dead_letters WHERE requeue = 1",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        if flagged == 0 {
            return Ok(0);
        }
        self.owned()?;
        self.spill()?;
        let mut streams = self.streams;
        let path = self.path.clone();
        let err = |e| classify(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        let mut moved = 0;
        {
            let sql = format!(
                "INSERT INTO records (stream, seq, topic, body, created_ms) \
                 SELECT stream, seq, topic, body, created_ms FROM dead_letters \
                 WHERE requeue = 1 ORDER BY id RETURNING stream, {ROW_BYTES}"
            );
            let mut insert = tx.prepare_cached(&sql).map_err(err)?;
            let mut rows = insert.query([]).map_err(err)?;
            while let Some(row) = rows.next().map_err(err)? {
                let stream = parse_stream(&path, &row.get::<_, String>(0).map_err(err)?)?;
                let bytes = non_negative(&path, "size", row.get(1).map_err(err)?)?;
                let s = &mut streams[index(stream)];
                s.records += 1;
                s.bytes += bytes;
                moved += 1;
            }
        }
        tx.execute("DELETE FROM dead_letters WHERE requeue = 1", [])
            .map_err(err)?;
        tx.commit().map_err(err)?;
        self.streams = streams;
        self.next_id = self.next_id.max(self.sqlite_last_id()? + 1);
        Ok(moved)
    }

    /// Records dropped by the byte budget, a full disk or `max_age` over the life of the file, per
    /// stream (priority order).
    pub fn dropped_per_stream(&self) -> Vec<(Stream, u64)> {
        STREAMS
            .iter()
            .map(|&s| (s, self.streams[index(s)].dropped))
            .collect()
    }

    /// Reads a small piece of durable state.
    pub fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        self.conn
            .prepare_cached("SELECT value FROM kv WHERE key = ?1")
            .and_then(|mut stmt| stmt.query_row([key], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    /// Writes a small piece of durable state (committed when this returns).
    pub fn kv_set(&mut self, key: &str, value: &[u8]) -> Result<(), SpoolError> {
        self.conn
            .prepare_cached(
                "INSERT INTO kv (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut stmt| stmt.execute(params![key, value]))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The id of the last record ever appended (0 if none), acked or not.
    pub fn last_id(&self) -> Result<i64, SpoolError> {
        Ok(self.next_id - 1)
    }

    /// Checkpoints the WAL into the main file (truncating the WAL) and closes the connection.
    /// Dropping a `Spool` also closes it safely; this only reports errors and leaves one file.
    pub fn close(mut self) -> Result<(), SpoolError> {
        let path = self.path.clone();
        if self.log.is_some() {
            self.spill()?;
            if let Some(log) = self.log.take() {
                log.remove()
                    .map_err(|e| classify_io(&log::path_for(&path), e))?;
            }
        }
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| classify(&path, e))?;
        self.conn.close().map_err(|(_, e)| classify(&path, e))
    }
}

/// `corrections` after an append in `tx`: a new one is bounded by the last id appended (the
/// records it may concern are queued by now), one is dropped once no record up to its bound is
/// queued; written to `kv` if they changed.
fn bound_corrections(
    tx: &Transaction<'_>,
    corrections: &[StepCorrection],
) -> rusqlite::Result<Vec<StepCorrection>> {
    if corrections.is_empty() {
        return Ok(Vec::new());
    }
    let last_id: i64 = tx
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'records'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let head: Option<i64> = tx.query_row("SELECT MIN(id) FROM records", [], |r| r.get(0))?;
    let mut kept = corrections.to_vec();
    for k in &mut kept {
        if k.up_to_id == UNBOUNDED {
            k.up_to_id = last_id;
        }
    }
    kept.retain(|k| head.is_some_and(|h| h <= k.up_to_id));
    if kept != corrections {
        if kept.is_empty() {
            tx.execute("DELETE FROM kv WHERE key = ?1", [CLOCK_STEPS_KEY])?;
        } else {
            tx.execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![CLOCK_STEPS_KEY, encode_corrections(&kept)],
            )?;
        }
    }
    Ok(kept)
}

/// Deletes the oldest rows of `stream` until at least `need` bytes are freed or the stream is
/// empty. Returns (rows, bytes) removed. Reads only the rows it removes (index `records_by_stream`).
fn evict_oldest(tx: &Transaction<'_>, stream: Stream, need: u64) -> rusqlite::Result<(u64, u64)> {
    let sql = format!("SELECT id, {ROW_BYTES} FROM records WHERE stream = ?1 ORDER BY id");
    let mut select = tx.prepare_cached(&sql)?;
    let mut rows = select.query([stream.as_str()])?;
    let (mut count, mut freed, mut last_id) = (0u64, 0u64, None);
    while freed < need {
        let Some(row) = rows.next()? else { break };
        last_id = Some(row.get::<_, i64>(0)?);
        freed += u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0);
        count += 1;
    }
    drop(rows);
    if let Some(last_id) = last_id {
        tx.prepare_cached("DELETE FROM records WHERE stream = ?1 AND id <= ?2")?
            .execute(params![stream.as_str(), last_id])?;
    }
    Ok((count, freed))
}

/// Deletes the oldest records of `stream` (by id) while they were created before `cutoff_ms` (on
/// the clock as `corrections` correct it); returns (rows, budget bytes) freed. Walking from the
/// head reads only the rows it removes plus one; a record that is older than one queued before it
/// (clocks are not monotonic) simply waits for the records ahead of it to expire.
fn evict_older(
    tx: &Transaction<'_>,
    stream: Stream,
    cutoff_ms: i64,
    corrections: &[StepCorrection],
) -> rusqlite::Result<(u64, u64)> {
    let sql =
        format!("SELECT id, {ROW_BYTES}, created_ms FROM records WHERE stream = ?1 ORDER BY id");
    let mut select = tx.prepare_cached(&sql)?;
    let mut rows = select.query([stream.as_str()])?;
    let (mut count, mut freed, mut last_id) = (0u64, 0u64, None);
    while let Some(row) = rows.next()? {
        if corrected(corrections, row.get::<_, i64>(2)?) >= cutoff_ms {
            break;
        }
        last_id = Some(row.get::<_, i64>(0)?);
        freed += u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0);
        count += 1;
    }
    drop(rows);
    if let Some(last_id) = last_id {
        tx.prepare_cached("DELETE FROM records WHERE stream = ?1 AND id <= ?2")?
            .execute(params![stream.as_str(), last_id])?;
    }
    Ok((count, freed))
}

fn quick_check(conn: &Connection, path: &Path) -> Result<(), SpoolError> {
    let corrupt = |detail: String| SpoolError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let mut problems = Vec::new();
    conn.pragma_query(None, "quick_check", |row| {
        problems.push(row.get::<_, String>(0)?);
        Ok(())
    })
    .map_err(|e| match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => corrupt(e.to_string()),
        _ => classify(path, e),
    })?;
    if problems.len() == 1 && problems[0] == "ok" {
        Ok(())
    } else {
        Err(corrupt(format!("quick_check: {}", problems.join("; "))))
    }
}

/// Rename the spool file at `path` to `<name>.corrupt-<now as YYYYMMDDTHHMMSSZ>` (with `-1`,
/// `-2`… if that is taken) and returns the new path; on failure, the path it tried and the error.
///
/// The `-wal` and `-shm` files, if SQLite left any (closing the failed connection normally
/// checkpoints a readable WAL into the file and removes both), go first, to the new name plus
/// their suffix: SQLite would replay a WAL left at the old name into the fresh file, and beside the
/// renamed file it is the WAL that `sqlite3` reads with it.
fn set_aside(path: &Path, now: SystemTime) -> Result<PathBuf, (PathBuf, std::io::Error)> {
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let with_suffix = |p: &Path, suffix: &str| {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    let taken = |p: &Path| {
        ["", "-wal", "-shm", "-log"]
            .iter()
            .any(|s| with_suffix(p, s).symlink_metadata().is_ok())
    };
    let mut to = path.with_file_name(format!("{name}.corrupt-{stamp}"));
    let mut n = 0;
    while taken(&to) {
        n += 1;
        to = path.with_file_name(format!("{name}.corrupt-{stamp}-{n}"));
    }
    for suffix in ["-wal", "-shm", "-log"] {
        let from = with_suffix(path, suffix);
        let dest = with_suffix(&to, suffix);
        match fs::rename(&from, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err((dest, e)),
        }
    }
    fs::rename(path, &to).map_err(|e| (to.clone(), e))?;
    Ok(to)
}

/// Fails with [`SpoolError::NotASpool`] naming the first table of the spool's schema the file
/// lacks: such a file would fail every call later, so it is refused at open like a damaged one.
fn check_tables(conn: &Connection, path: &Path) -> Result<(), SpoolError> {
    for table in ["records", "streams", "kv", "dead_letters"] {
        let found: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .map_err(|e| classify(path, e))?;
        if found == 0 {
            return Err(SpoolError::NotASpool {
                path: path.to_path_buf(),
                detail: format!("user_version {SCHEMA_VERSION} but no table {table}"),
            });
        }
    }
    Ok(())
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), SpoolError> {
    let err = |e| classify(path, e);
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    match version {
        SCHEMA_VERSION => Ok(()),
        // 1 to 2 changed no table (every JSON body a version-1 file holds still decodes); 3 adds
        // the empty dead-letter table. One transaction: an interrupted upgrade leaves the old
        // version, which the next open upgrades again.
        1 | 2 => {
            let tx = conn.transaction().map_err(err)?;
            tx.execute_batch(DEAD_LETTERS_SCHEMA).map_err(err)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(err)?;
            tx.commit().map_err(err)
        }
        0 => {
            let tx = conn.transaction().map_err(err)?;
            let tables: i64 = tx
                .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
                .map_err(err)?;
            if tables > 0 {
                return Err(SpoolError::NotASpool {
                    path: path.to_path_buf(),
                    detail: format!("user_version 0 but {tables} schema objects"),
                });
            }
            tx.execute_batch(SCHEMA).map_err(err)?;
            tx.execute_batch(DEAD_LETTERS_SCHEMA).map_err(err)?;
            for stream in STREAMS {
                tx.execute(
                    "INSERT INTO streams (stream, next_seq, dropped) VALUES (?1, 1, 0)",
                    [stream.as_str()],
                )
                .map_err(err)?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(err)?;
            tx.commit().map_err(err)
        }
        found if found > SCHEMA_VERSION => Err(SpoolError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        }),
        found => Err(SpoolError::NotASpool {
            path: path.to_path_buf(),
            detail: format!("unknown user_version {found}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    fn cfg(max_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            max_bytes,
            max_age: None,
            synchronous_full: false,
        }
    }

    /// A record of exactly `bytes` budget bytes (topic "t/NN" plus body).
    fn rec(stream: Stream, n: u8, bytes: usize) -> NewRecord {
        let topic = format!("t/{n:02}");
        NewRecord {
            stream,
            body: vec![n; bytes - topic.len()],
            topic,
            created: Timestamp(1_000 + i64::from(n)),
        }
    }

    fn open(dir: &TempDir, max_bytes: u64) -> Spool {
        Spool::open(&dir.path().join("spool/plant.db"), &cfg(max_bytes)).unwrap()
    }

    fn ids_and_seqs(records: &[StoredRecord]) -> Vec<(i64, Stream, u64)> {
        records.iter().map(|r| (r.id, r.stream, r.seq)).collect()
    }

    #[test]
    fn appends_go_to_the_record_log_and_a_crash_keeps_what_was_not_acked() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("spool/plant.db");
        let mut spool = open(&dir, u64::MAX);
        spool
            .append(vec![rec(Stream::Live, 1, 100), rec(Stream::Events, 2, 50)])
            .unwrap();
        spool.append(vec![rec(Stream::Live, 3, 100)]).unwrap();
        spool.ack(&[1]).unwrap();
        let before = spool.read_after(0, 10).unwrap();
        assert_eq!(
            ids_and_seqs(&before),
            [(2, Stream::Events, 1), (3, Stream::Live, 2)]
        );
        assert_eq!(spool.stats().unwrap().records, 2);
        let rows: i64 = spool
            .conn
            .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "nothing went through SQLite");
        assert!(log::path_for(&path).exists());
        // A crash: the spool is dropped without close; the log stays beside the file.
        drop(spool);

        let mut spool = open(&dir, u64::MAX);
        assert_eq!(spool.read_after(0, 10).unwrap(), before);
        assert_eq!(spool.last_id().unwrap(), 3);
        let stats = spool.stats().unwrap();
        assert_eq!((stats.records, stats.bytes), (2, 150));
        assert_eq!(stats.oldest, Some(Timestamp(1_002)));
        // Seqs and ids go on after the recovered ones.
        let next = spool.append(vec![rec(Stream::Live, 4, 100)]).unwrap();
        assert_eq!((next[0].id, next[0].seq), (4, 3));
        spool.ack(&[2, 3, 4]).unwrap();
        spool.close().unwrap();
        assert!(
            !log::path_for(&path).exists(),
            "a clean close leaves one file"
        );

        let mut spool = open(&dir, u64::MAX);
        assert!(spool.read_after(0, 10).unwrap().is_empty());
        assert_eq!(spool.last_id().unwrap(), 4, "ids are never reused");
        let next = spool.append(vec![rec(Stream::Events, 5, 50)]).unwrap();
        assert_eq!((next[0].id, next[0].seq), (5, 2));
    }

    #[test]
    fn records_in_sqlite_and_in_the_log_read_back_in_id_order() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, u64::MAX);
        spool.cap_file_pages(1 << 20).unwrap();
        spool.append(vec![rec(Stream::Live, 1, 100)]).unwrap();
        spool.cap_file_pages(0).unwrap();
        spool.append(vec![rec(Stream::Metrics, 2, 100)]).unwrap();
        spool.cap_file_pages(1 << 20).unwrap();
        spool.append(vec![rec(Stream::Live, 3, 100)]).unwrap();
        spool.cap_file_pages(0).unwrap();
        spool.append(vec![rec(Stream::Live, 4, 100)]).unwrap();
        spool.mark_attempt(&[1, 4]).unwrap();
        let got = spool.read_after(1, 2).unwrap();
        assert_eq!(
            ids_and_seqs(&got),
            [(2, Stream::Metrics, 1), (3, Stream::Live, 2)]
        );
        let all = spool.read_after(0, 10).unwrap();
        assert_eq!(
            all.iter().map(|r| r.attempts).collect::<Vec<_>>(),
            [1, 0, 0, 1]
        );
        assert_eq!(spool.ack(&[4, 1]).unwrap(), 2);
        assert_eq!(spool.stats().unwrap().records, 2);
    }

    #[test]
    fn a_second_open_beside_the_owner_reads_the_log_without_taking_it() {
        let dir = TempDir::new().unwrap();
        let mut owner = open(&dir, u64::MAX);
        owner
            .append(vec![
                rec(Stream::Live, 1, 100),
                rec(Stream::Emissions, 2, 60),
            ])
            .unwrap();
        owner.ack(&[1]).unwrap();
        let mut reader = open(&dir, u64::MAX);
        assert_eq!(
            ids_and_seqs(&reader.read_after(0, 10).unwrap()),
            [(2, Stream::Emissions, 1)]
        );
        assert_eq!(reader.stats().unwrap().records, 1);
        assert!(matches!(
            reader.dead_letter(&[(2, "test".to_owned())], Timestamp(0)),
            Err(SpoolError::HeldByAnother { .. })
        ));
        drop(reader);
        // The owner's log is untouched by the reader.
        owner.append(vec![rec(Stream::Live, 3, 100)]).unwrap();
        assert_eq!(
            ids_and_seqs(&owner.read_after(0, 10).unwrap()),
            [(2, Stream::Emissions, 1), (3, Stream::Live, 2)]
        );
    }

    #[test]
    fn a_large_backlog_moves_from_the_log_into_sqlite_and_stays_in_order() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, u64::MAX);
        let body = (PENDING_MAX_BYTES / 10) as usize;
        for n in 1..=25u8 {
            spool.append(vec![rec(Stream::Live, n, body)]).unwrap();
        }
        assert!(spool.pending.bytes() <= PENDING_MAX_BYTES);
        assert!(spool.in_sqlite(index(Stream::Live)) >= 10);
        let all = spool.read_after(0, 100).unwrap();
        assert_eq!(
            all.iter().map(|r| r.id).collect::<Vec<_>>(),
            (1..=25).collect::<Vec<i64>>()
        );
        assert!(all.iter().zip(1u8..).all(|(r, n)| r.body[0] == n));
        spool.ack(&(1..=25).collect::<Vec<_>>()).unwrap();
        assert_eq!(spool.stats().unwrap().records, 0);
    }

    #[test]
    fn requeued_dead_letters_take_ids_after_those_of_the_log() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, u64::MAX);
        spool
            .append(vec![rec(Stream::Live, 1, 100), rec(Stream::Live, 2, 100)])
            .unwrap();
        spool
            .dead_letter(&[(1, "too big".to_owned())], Timestamp(9))
            .unwrap();
        spool.append(vec![rec(Stream::Live, 3, 100)]).unwrap();
        spool.ack(&[3]).unwrap();
        spool.request_requeue(None).unwrap();
        assert_eq!(spool.take_requeued().unwrap(), 1);
        let ids: Vec<i64> = spool
            .read_after(0, 10)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [2, 4]);
        let next = spool.append(vec![rec(Stream::Live, 5, 100)]).unwrap();
        assert_eq!(next[0].id, 5);
    }

    /// Ids of every record waiting, oldest first.
    fn ids_of(spool: &Spool) -> Vec<i64> {
        let all = spool.read_after(0, usize::MAX).unwrap();
        all.iter().map(|r| r.id).collect()
    }

    fn seqs_of(spool: &Spool, stream: Stream) -> Vec<u64> {
        spool
            .read_after(0, usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|r| r.stream == stream)
            .map(|r| r.seq)
            .collect()
    }

    #[test]
    fn append_assigns_seq_per_stream_independently() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, u64::MAX);
        let streams = [
            Stream::Live,
            Stream::Metrics,
            Stream::Live,
            Stream::Live,
            Stream::Metrics,
            Stream::Events,
        ];
        let batch = streams.iter().map(|&s| rec(s, 1, 10)).collect();
        let appended = spool.append(batch).unwrap();
        let got: Vec<(i64, Stream, u64)> =
            appended.iter().map(|a| (a.id, a.stream, a.seq)).collect();
        assert_eq!(
            got,
            vec![
                (1, Stream::Live, 1),
                (2, Stream::Metrics, 1),
                (3, Stream::Live, 2),
                (4, Stream::Live, 3),
                (5, Stream::Metrics, 2),
                (6, Stream::Events, 1),
            ]
        );
        let next = spool.append(vec![rec(Stream::Metrics, 2, 10)]).unwrap();
        assert_eq!((next[0].id, next[0].seq), (7, 3));
        assert!(spool.append(Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn read_after_returns_oldest_first_from_the_cursor() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, u64::MAX);
        let batch: Vec<_> = (0..10u8).map(|n| rec(Stream::Live, n, 20)).collect();
        spool.append(batch.clone()).unwrap();
        let all = spool.read_after(0, 100).unwrap();
        assert_eq!(
            all.iter().map(|r| r.id).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(all[3].topic, batch[3].topic);
        assert_eq!(all[3].body, batch[3].body);
        assert_eq!(all[3].created, batch[3].created);
        assert_eq!(all[3].attempts, 0);
        let page = spool.read_after(4, 3).unwrap();
        assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), vec![5, 6, 7]);
        assert!(spool.read_after(10, 3).unwrap().is_empty());
    }

    #[test]
    fn ack_removes_only_known_ids_and_is_idempotent() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, u64::MAX);
        spool
            .append((0..5u8).map(|n| rec(Stream::Events, n, 30)).collect())
            .unwrap();
        assert_eq!(spool.ack(&[2, 4, 99, 2]).unwrap(), 2);
        assert_eq!(spool.ack(&[2, 4]).unwrap(), 0);
        assert_eq!(spool.ack(&[]).unwrap(), 0);
        assert_eq!(ids_of(&spool), vec![1, 3, 5]);
        let stats = spool.stats().unwrap();
        assert_eq!((stats.records, stats.bytes), (3, 90));
    }

    #[test]
    fn ack_deletes_runs_of_ids_in_any_order_and_keeps_the_totals_per_stream() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, u64::MAX);
        // ids 1..=12, alternating live (odd) and metrics (even), 40 bytes each.
        spool
            .append(
                (0..12u8)
                    .map(|n| {
                        let stream = if n % 2 == 0 {
                            Stream::Live
                        } else {
                            Stream::Metrics
                        };
                        rec(stream, n, 40)
                    })
                    .collect(),
            )
            .unwrap();
        // Two runs (3..=6 and 9..=10) given out of order with a duplicate, a lone id, and ids
        // that are not in the spool (0, 13, 20) next to the runs.
        assert_eq!(spool.ack(&[6, 4, 10, 3, 5, 9, 5, 1, 13, 0, 20]).unwrap(), 7);
        assert_eq!(ids_of(&spool), vec![2, 7, 8, 11, 12]);
        let stats = spool.stats().unwrap();
        assert_eq!((stats.records, stats.bytes), (5, 200));
        // Left: live 7, 11; metrics 2, 8, 12.
        let per_stream: Vec<(Stream, u64)> = stats
            .per_stream
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(per_stream, vec![(Stream::Live, 2), (Stream::Metrics, 3)]);
    }

    #[test]
    fn seq_and_id_continue_after_reopen_even_when_empty() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, u64::MAX);
        spool
            .append(vec![rec(Stream::Live, 1, 10), rec(Stream::Live, 2, 10)])
            .unwrap();
        spool.append(vec![rec(Stream::Emissions, 3, 10)]).unwrap();
        assert_eq!(spool.ack(&[1, 2, 3]).unwrap(), 3);
        assert_eq!(spool.stats().unwrap().records, 0);
        drop(spool);

        let mut spool = open(&dir, u64::MAX);
        assert_eq!(spool.last_id().unwrap(), 3);
        let a = spool
            .append(vec![
                rec(Stream::Live, 4, 10),
                rec(Stream::Emissions, 5, 10),
            ])
            .unwrap();
        assert_eq!((a[0].id, a[0].seq), (4, 3));
        assert_eq!((a[1].id, a[1].seq), (5, 2));
        assert_eq!(seqs_of(&spool, Stream::Metrics), Vec::<u64>::new());
        assert_eq!(
            spool.append(vec![rec(Stream::Metrics, 6, 10)]).unwrap()[0].seq,
            1
        );
    }

    #[test]
    fn budget_drops_live_then_metrics_then_events_and_emissions_last() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, 1000);
        // 10 records of 100 bytes: exactly the budget, nothing dropped.
        let mut batch = Vec::new();
        for n in 0..2 {
            batch.push(rec(Stream::Emissions, n, 100));
            batch.push(rec(Stream::Events, n, 100));
            batch.push(rec(Stream::Metrics, n, 100));
        }
        for n in 0..4 {
            batch.push(rec(Stream::Live, n, 100));
        }
        assert_eq!(spool.append(batch).unwrap().len(), 10);
        assert_eq!(spool.stats().unwrap().dropped, 0);

        // One more emission record: the oldest live record goes.
        spool.append(vec![rec(Stream::Emissions, 2, 100)]).unwrap();
        assert_eq!(seqs_of(&spool, Stream::Live), vec![2, 3, 4]);

        // 400 bytes of events: the other three live records, then the oldest metrics record.
        spool
            .append((3..7).map(|n| rec(Stream::Events, n, 100)).collect())
            .unwrap();
        assert_eq!(seqs_of(&spool, Stream::Live), Vec::<u64>::new());
        assert_eq!(seqs_of(&spool, Stream::Metrics), vec![2]);
        assert_eq!(seqs_of(&spool, Stream::Events), vec![1, 2, 3, 4, 5, 6]);

        // 300 bytes of emissions: the last metrics record, then the two oldest events.
        spool
            .append((7..10).map(|n| rec(Stream::Emissions, n, 100)).collect())
            .unwrap();
        assert_eq!(seqs_of(&spool, Stream::Metrics), Vec::<u64>::new());
        assert_eq!(seqs_of(&spool, Stream::Events), vec![3, 4, 5, 6]);
        assert_eq!(seqs_of(&spool, Stream::Emissions), vec![1, 2, 3, 4, 5, 6]);

        let stats = spool.stats().unwrap();
        assert_eq!((stats.records, stats.bytes, stats.dropped), (10, 1000, 8));
        assert_eq!(
            spool.dropped_per_stream(),
            vec![
                (Stream::Live, 4),
                (Stream::Metrics, 2),
                (Stream::Events, 2),
                (Stream::Emissions, 0)
            ]
        );

        // A live record now has nothing of lower priority to displace: it is dropped itself,
        // rather than an older event.
        assert!(
            spool
                .append(vec![rec(Stream::Live, 10, 100)])
                .unwrap()
                .is_empty()
        );
        assert_eq!(seqs_of(&spool, Stream::Events), vec![3, 4, 5, 6]);
        assert_eq!(spool.stats().unwrap().dropped, 9);

        // The drop counters and totals survive a reopen.
        drop(spool);
        let spool = open(&dir, 1000);
        let stats = spool.stats().unwrap();
        assert_eq!((stats.records, stats.bytes, stats.dropped), (10, 1000, 9));
        assert_eq!(spool.dropped_per_stream()[0], (Stream::Live, 5));
    }

    #[test]
    fn budget_drops_oldest_emissions_only_when_nothing_else_remains() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, 250);
        spool
            .append(vec![
                rec(Stream::Emissions, 0, 100),
                rec(Stream::Live, 0, 100),
            ])
            .unwrap();
        spool.append(vec![rec(Stream::Emissions, 1, 100)]).unwrap();
        assert_eq!(seqs_of(&spool, Stream::Live), Vec::<u64>::new());
        assert_eq!(seqs_of(&spool, Stream::Emissions), vec![1, 2]);
        spool.append(vec![rec(Stream::Emissions, 2, 100)]).unwrap();
        assert_eq!(seqs_of(&spool, Stream::Emissions), vec![2, 3]);
    }

    #[test]
    fn max_age_expires_old_records_except_emissions_and_counts_them() {
        let dir = TempDir::new().unwrap();
        let cfg = SpoolConfig {
            max_age: Some(std::time::Duration::from_millis(10)),
            ..cfg(u64::MAX)
        };
        let mut spool = Spool::open(&dir.path().join("aged.db"), &cfg).unwrap();
        let at = |stream, n: u8, ms: i64| NewRecord {
            created: Timestamp(ms),
            ..rec(stream, n, 20)
        };
        spool
            .append(vec![
                at(Stream::Live, 0, 1_000),
                at(Stream::Events, 1, 1_000),
                at(Stream::Emissions, 2, 1_000),
                at(Stream::Live, 3, 1_005),
            ])
            .unwrap();
        // 1 010 - 10 ms = 1 000: nothing is older than the cutoff yet.
        spool.append(vec![at(Stream::Metrics, 4, 1_010)]).unwrap();
        assert_eq!(spool.stats().unwrap().records, 5);
        // 1 012 - 10 ms = 1 002: the two records of 1 000 expire, but not the emission.
        spool.append(vec![at(Stream::Live, 5, 1_012)]).unwrap();
        assert_eq!(seqs_of(&spool, Stream::Live), vec![2, 3]);
        assert_eq!(seqs_of(&spool, Stream::Events), Vec::<u64>::new());
        assert_eq!(seqs_of(&spool, Stream::Emissions), vec![1]);
        assert_eq!(seqs_of(&spool, Stream::Metrics), vec![1]);
        let stats = spool.stats().unwrap();
        assert_eq!((stats.records, stats.dropped), (4, 2));
        assert_eq!(
            stats.dropped_since_open,
            DropsByReason {
                max_age: 2,
                ..DropsByReason::default()
            }
        );
        assert_eq!(
            spool.dropped_per_stream(),
            vec![
                (Stream::Live, 1),
                (Stream::Metrics, 0),
                (Stream::Events, 1),
                (Stream::Emissions, 0)
            ]
        );
        // Expiry is persisted like budget drops: a reopened spool still counts them.
        drop(spool);
        let spool = Spool::open(&dir.path().join("aged.db"), &cfg).unwrap();
        assert_eq!(spool.stats().unwrap().dropped, 2);
    }

    #[test]
    fn oversized_batch_keeps_what_fits_by_priority() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, 300);
        let mut batch: Vec<_> = (0..5).map(|n| rec(Stream::Live, n, 100)).collect();
        batch.insert(2, rec(Stream::Emissions, 9, 100));
        let appended = spool.append(batch).unwrap();
        let got: Vec<(Stream, u64)> = appended.iter().map(|a| (a.stream, a.seq)).collect();
        // Live seqs 1..3 were dropped (consumed, so a consumer sees the gap); ids stay dense.
        assert_eq!(
            got,
            vec![(Stream::Emissions, 1), (Stream::Live, 4), (Stream::Live, 5)]
        );
        assert_eq!(
            appended.iter().map(|a| a.id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let stats = spool.stats().unwrap();
        assert_eq!((stats.records, stats.bytes, stats.dropped), (3, 300, 3));
        assert_eq!(stats.dropped_since_open.budget, 3);
        assert_eq!(
            spool.append(vec![rec(Stream::Live, 6, 10)]).unwrap().len(),
            1
        );
        assert_eq!(seqs_of(&spool, Stream::Live), vec![5, 6]);

        // A single record larger than the whole budget is dropped, not stored.
        let mut spool = Spool::open(&dir.path().join("tiny.db"), &cfg(50)).unwrap();
        assert!(
            spool
                .append(vec![rec(Stream::Emissions, 1, 60)])
                .unwrap()
                .is_empty()
        );
        assert_eq!(spool.stats().unwrap().dropped, 1);
    }

    #[test]
    fn stats_report_counts_bytes_and_the_oldest_head() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, u64::MAX);
        let empty = spool.stats().unwrap();
        assert_eq!(empty.records, 0);
        assert_eq!(empty.oldest, None);
        assert_eq!(empty.per_stream.len(), 4);
        let mut late_event = rec(Stream::Events, 1, 40);
        late_event.created = Timestamp(500);
        spool
            .append(vec![
                rec(Stream::Live, 1, 10),
                late_event,
                rec(Stream::Live, 2, 10),
            ])
            .unwrap();
        // Multi-byte topic: the budget counts bytes, not characters.
        spool
            .append(vec![NewRecord {
                stream: Stream::Metrics,
                topic: "µ".to_owned(),
                body: vec![0; 3],
                created: Timestamp(2_000),
            }])
            .unwrap();
        let stats = spool.stats().unwrap();
        assert_eq!(stats.records, 4);
        assert_eq!(stats.bytes, 10 + 40 + 10 + 5);
        assert_eq!(stats.oldest, Some(Timestamp(500)));
        assert_eq!(
            stats.per_stream,
            vec![
                (Stream::Live, 2),
                (Stream::Metrics, 1),
                (Stream::Events, 1),
                (Stream::Emissions, 0)
            ]
        );
        // The in-memory totals agree with what a fresh open computes from the table.
        drop(spool);
        assert_eq!(open(&dir, u64::MAX).stats().unwrap(), stats);
    }

    #[test]
    fn mark_attempt_counts_attempts() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, u64::MAX);
        spool
            .append(vec![rec(Stream::Live, 1, 10), rec(Stream::Live, 2, 10)])
            .unwrap();
        spool.mark_attempt(&[1, 42]).unwrap();
        spool.mark_attempt(&[1, 2]).unwrap();
        let attempts: Vec<u32> = spool
            .read_after(0, 10)
            .unwrap()
            .iter()
            .map(|r| r.attempts)
            .collect();
        assert_eq!(attempts, vec![2, 1]);
    }

    #[test]
    fn kv_values_persist_and_overwrite() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, u64::MAX);
        assert_eq!(spool.kv_get("bdseq").unwrap(), None);
        spool.kv_set("bdseq", &[1]).unwrap();
        spool.kv_set("bdseq", &[2, 3]).unwrap();
        drop(spool);
        let spool = open(&dir, u64::MAX);
        assert_eq!(spool.kv_get("bdseq").unwrap(), Some(vec![2, 3]));
    }

    #[test]
    fn open_refuses_a_file_that_is_not_a_database() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("garbage.db");
        fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = Spool::open(&path, &cfg(u64::MAX)).unwrap_err();
        assert!(matches!(err, SpoolError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("garbage.db"), "{err}");
    }

    #[test]
    fn open_refuses_a_damaged_page_found_by_quick_check() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("damaged.db");
        let mut spool = Spool::open(&path, &cfg(u64::MAX)).unwrap();
        spool
            .append((0..200u8).map(|n| rec(Stream::Live, n, 800)).collect())
            .unwrap();
        spool.close().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let page = PAGE_SIZE_BYTES as usize;
        assert!(bytes.len() > 4 * page, "the file should span several pages");
        bytes[2 * page..3 * page].fill(0xff);
        fs::write(&path, bytes).unwrap();
        let err = Spool::open(&path, &cfg(u64::MAX)).unwrap_err();
        assert!(matches!(err, SpoolError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("damaged.db"), "{err}");
    }

    #[test]
    fn open_refuses_newer_schema_and_foreign_databases() {
        let dir = TempDir::new().unwrap();
        let newer = dir.path().join("newer.db");
        let spool = Spool::open(&newer, &cfg(u64::MAX)).unwrap();
        spool.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(spool);
        let err = Spool::open(&newer, &cfg(u64::MAX)).unwrap_err();
        assert!(
            matches!(
                err,
                SpoolError::NewerSchema {
                    found: 99,
                    supported: SCHEMA_VERSION,
                    ..
                }
            ),
            "{err:?}"
        );

        let foreign = dir.path().join("foreign.db");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let err = Spool::open(&foreign, &cfg(u64::MAX)).unwrap_err();
        assert!(matches!(err, SpoolError::NotASpool { .. }), "{err:?}");
    }

    #[test]
    fn damage_is_told_apart_from_other_open_failures() {
        let dir = TempDir::new().unwrap();
        let open_err = |path: &Path| Spool::open(path, &cfg(u64::MAX)).unwrap_err();
        // Damaged: not a database, a database without the spool's tables, or missing one.
        let garbage = dir.path().join("garbage.db");
        fs::write(&garbage, vec![0x5a; 8192]).unwrap();
        let foreign = dir.path().join("foreign.db");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let truncated = dir.path().join("no-streams.db");
        let spool = Spool::open(&truncated, &cfg(u64::MAX)).unwrap();
        spool.conn.execute_batch("DROP TABLE streams").unwrap();
        drop(spool);
        for (path, reason) in [
            (&garbage, "corrupt"),
            (&foreign, "not_a_spool"),
            (&truncated, "not_a_spool"),
        ] {
            let err = open_err(path);
            assert!(err.is_damaged(), "{err:?}");
            assert_eq!(err.set_aside_reason(), Some(reason), "{err:?}");
        }
        // Not damage: a newer schema, a file that cannot be opened, a directory that cannot be
        // made, a full disk.
        let newer = dir.path().join("newer.db");
        let spool = Spool::open(&newer, &cfg(u64::MAX)).unwrap();
        spool.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(spool);
        let a_directory = dir.path().join("a-directory.db");
        fs::create_dir(&a_directory).unwrap();
        let under_a_file = garbage.join("spool.db");
        for err in [
            open_err(&newer),
            open_err(&a_directory),
            open_err(&under_a_file),
            SpoolError::DiskFull {
                path: newer.clone(),
            },
        ] {
            assert!(!err.is_damaged(), "{err:?}");
            assert_eq!(err.set_aside_reason(), None, "{err:?}");
        }
    }

    #[test]
    fn a_damaged_spool_file_is_moved_aside_with_its_record_log() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("spool-l.db");
        let mut spool = Spool::open(&path, &cfg(u64::MAX)).unwrap();
        spool.append(vec![rec(Stream::Live, 1, 10)]).unwrap();
        drop(spool);
        let logged = fs::read(log::path_for(&path)).unwrap();
        fs::write(&path, vec![7; 8192]).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_083_200);
        let (spool, aside) = Spool::open_or_set_aside(&path, &cfg(u64::MAX), now).unwrap();
        let aside = aside.expect("set aside");
        assert_eq!(fs::read(log::path_for(&aside.moved_to)).unwrap(), logged);
        assert_eq!(
            spool.stats().unwrap().records,
            0,
            "the fresh spool has no old log"
        );
        // A log that is not a log is damage too: the spool is set aside with it.
        drop(spool);
        fs::write(log::path_for(&path), b"not a record log").unwrap();
        let (spool, aside) = Spool::open_or_set_aside(&path, &cfg(u64::MAX), now).unwrap();
        assert_eq!(aside.expect("set aside").reason, "corrupt");
        assert_eq!(spool.stats().unwrap().records, 0);
    }

    #[test]
    fn a_damaged_file_is_moved_aside_and_an_empty_spool_takes_its_place() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("spool-b.db");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_083_200);
        let stamp = "20261201T000000Z";
        for round in 0..2 {
            fs::write(&path, vec![round; 8192]).unwrap();
            let (mut spool, aside) = Spool::open_or_set_aside(&path, &cfg(u64::MAX), now).unwrap();
            let aside = aside.expect("the garbage was set aside");
            // The second one in the same second gets a name of its own.
            let name = match round {
                0 => format!("spool-b.db.corrupt-{stamp}"),
                _ => format!("spool-b.db.corrupt-{stamp}-1"),
            };
            assert_eq!(aside.moved_to, dir.path().join(&name));
            assert_eq!(
                (aside.path.as_path(), aside.reason),
                (path.as_path(), "corrupt")
            );
            assert!(aside.detail.contains("spool-b.db"), "{aside:?}");
            assert_eq!(fs::read(&aside.moved_to).unwrap(), vec![round; 8192]);
            // A working, empty spool in its place.
            assert_eq!(spool.stats().unwrap().records, 0);
            assert_eq!(
                spool.append(vec![rec(Stream::Live, 1, 10)]).unwrap()[0].seq,
                1
            );
            spool.close().unwrap();
        }
        // A healthy file is opened as it is.
        let (spool, aside) = Spool::open_or_set_aside(&path, &cfg(u64::MAX), now).unwrap();
        assert_eq!((aside, spool.stats().unwrap().records), (None, 1));
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_where_it_is() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("newer.db");
        let spool = Spool::open(&path, &cfg(u64::MAX)).unwrap();
        spool.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(spool);
        let before = fs::read(&path).unwrap();
        let err = Spool::open_or_set_aside(&path, &cfg(u64::MAX), SystemTime::now()).unwrap_err();
        assert!(
            matches!(err, SpoolError::NewerSchema { found: 99, .. }),
            "{err:?}"
        );
        assert_eq!(fs::read(&path).unwrap(), before);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.to_string_lossy().contains("corrupt")),
            "{names:?}"
        );
    }

    #[test]
    fn a_version_1_file_is_upgraded_in_place_and_keeps_its_records_and_seqs() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("v1.db");
        let mut spool = Spool::open(&path, &cfg(u64::MAX)).unwrap();
        spool.append(vec![rec(Stream::Live, 4, 20)]).unwrap();
        // Version 1 had no dead-letter table.
        spool.conn.execute_batch("DROP TABLE dead_letters").unwrap();
        spool.conn.pragma_update(None, "user_version", 1).unwrap();
        spool.close().unwrap();

        let mut spool = Spool::open(&path, &cfg(u64::MAX)).unwrap();
        let version: i64 = spool
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let read = spool.read_after(0, 10).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].seq, 1);
        let appended = spool.append(vec![rec(Stream::Live, 5, 20)]).unwrap();
        assert_eq!(appended[0].seq, 2, "the seq counter continues");
    }

    #[test]
    fn a_version_2_file_is_upgraded_in_place_and_gains_an_empty_dead_letter_table() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("v2.db");
        let mut spool = Spool::open(&path, &cfg(u64::MAX)).unwrap();
        spool
            .append(vec![rec(Stream::Live, 4, 20), rec(Stream::Events, 5, 20)])
            .unwrap();
        spool.mark_attempt(&[1]).unwrap();
        // A version-2 file: the same tables but no dead_letters.
        spool.conn.execute_batch("DROP TABLE dead_letters").unwrap();
        spool.conn.pragma_update(None, "user_version", 2).unwrap();
        spool.close().unwrap();

        let mut spool = Spool::open(&path, &cfg(u64::MAX)).unwrap();
        let version: i64 = spool
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3);
        assert_eq!(spool.dead_letters().unwrap(), Vec::new());
        let read = spool.read_after(0, 10).unwrap();
        assert_eq!(
            read.iter().map(|r| (r.seq, r.attempts)).collect::<Vec<_>>(),
            vec![(1, 1), (1, 0)]
        );
        // The upgraded file works as a version-3 one.
        let moved = spool
            .dead_letter(&[(1, "too large".into())], Timestamp(9_000))
            .unwrap();
        assert_eq!(moved.len(), 1);
        assert_eq!(spool.stats().unwrap().dead_letters, 1);
        drop(spool);
        // Reopening an upgraded file changes nothing.
        let spool = Spool::open(&path, &cfg(u64::MAX)).unwrap();
        assert_eq!(spool.dead_letter_count().unwrap(), 1);
    }

    #[test]
    fn dead_letters_leave_the_queue_with_their_reason_and_come_back_with_their_seq() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, u64::MAX);
        spool
            .append((1..=4u8).map(|n| rec(Stream::Live, n, 50)).collect())
            .unwrap();
        spool.mark_attempt(&[2, 2, 2]).unwrap();
        let moved = spool
            .dead_letter(
                &[(2, "connection lost".into()), (99, "unknown".into())],
                Timestamp(5_000),
            )
            .unwrap();
        assert_eq!(moved.len(), 1, "an id not in the queue is ignored");
        assert_eq!(
            (moved[0].id, moved[0].seq, moved[0].attempts),
            (2, 2, 3),
            "{moved:?}"
        );
        assert_eq!(ids_of(&spool), vec![1, 3, 4]);
        let stats = spool.stats().unwrap();
        assert_eq!(
            (stats.records, stats.bytes, stats.dead_letters),
            (3, 150, 1)
        );
        let letters = spool.dead_letters().unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].reason, "connection lost");
        assert_eq!(letters[0].dead_at, Timestamp(5_000));
        assert_eq!(letters[0].body, vec![2u8; 50 - 4]);
        assert!(!letters[0].requeue);

        // Nothing flagged: nothing moves. Flagging an unknown id flags nothing.
        assert_eq!(spool.take_requeued().unwrap(), 0);
        assert_eq!(spool.request_requeue(Some(&[7])).unwrap(), 0);
        assert_eq!(spool.request_requeue(None).unwrap(), 1);
        assert!(spool.dead_letters().unwrap()[0].requeue);
        // The flag survives a reopen; the owner moves it back with a new id and its old seq.
        drop(spool);
        let mut spool = open(&dir, u64::MAX);
        assert_eq!(spool.take_requeued().unwrap(), 1);
        assert_eq!(spool.dead_letter_count().unwrap(), 0);
        let read = spool.read_after(0, 10).unwrap();
        assert_eq!(
            read.iter()
                .map(|r| (r.id, r.seq, r.attempts))
                .collect::<Vec<_>>(),
            vec![(1, 1, 0), (3, 3, 0), (4, 4, 0), (5, 2, 0)]
        );
        let stats = spool.stats().unwrap();
        assert_eq!((stats.records, stats.bytes), (4, 200));
        // The totals agree with what a fresh open computes from the table.
        drop(spool);
        assert_eq!(open(&dir, u64::MAX).stats().unwrap(), stats);
    }

    #[test]
    fn a_full_disk_drops_like_the_budget_and_keeps_seqs_and_totals_consistent() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, u64::MAX);
        spool.append(vec![rec(Stream::Emissions, 0, 500)]).unwrap();
        // Cap the file near its current size: SQLite then reports SQLITE_FULL like a full disk.
        let pages = spool.page_count().unwrap();
        assert_eq!(spool.cap_file_pages(pages + 8).unwrap(), pages + 8);
        // Fill it with live and metrics records, far more than 8 pages hold.
        let mut stored = 0u64;
        for round in 0..40u8 {
            let stream = if round % 2 == 0 {
                Stream::Live
            } else {
                Stream::Metrics
            };
            let a = spool
                .append((0..20u8).map(|n| rec(stream, n, 1000)).collect())
                .expect("a full disk drops, it does not fail the append");
            stored += a.len() as u64;
        }
        // Every record was given its seq, and only what the disk could not hold was dropped.
        let dropped: u64 = spool.dropped_per_stream().iter().map(|(_, n)| n).sum();
        assert!(dropped > 0, "the cap never took effect");
        assert_eq!(spool.disk_full_drops(), dropped);
        let stats = spool.stats().unwrap();
        assert_eq!(stats.records + dropped, 1 + 800, "{stats:?}");
        assert_eq!(stats.dropped, dropped);
        assert!(spool.page_count().unwrap() <= pages + 8);
        // The emission survived: live and metrics were there to drop.
        assert_eq!(seqs_of(&spool, Stream::Emissions), vec![1]);
        assert_eq!(spool.dropped_per_stream()[3], (Stream::Emissions, 0));
        // Live went before metrics: the metrics of the last rounds are all still there.
        assert_eq!(
            seqs_of(&spool, Stream::Metrics).last(),
            Some(&400),
            "the newest metrics were kept"
        );
        assert!(stored > 0);
        // Acks still work on a full disk, and the totals survive a reopen.
        assert_eq!(spool.ack(&[1]).unwrap(), 1);
        let left = spool.stats().unwrap().records;
        drop(spool);
        let mut spool = open(&dir, u64::MAX);
        assert_eq!(spool.stats().unwrap().records, left);
        assert_eq!(spool.stats().unwrap().dropped, dropped);
        let next = spool.append(vec![rec(Stream::Metrics, 0, 10)]).unwrap();
        assert_eq!(next[0].seq, 401);
    }

    #[test]
    fn a_record_bigger_than_the_whole_disk_is_dropped_and_counted() {
        let dir = TempDir::new().unwrap();
        let mut spool = open(&dir, u64::MAX);
        let pages = spool.page_count().unwrap();
        spool.cap_file_pages(pages + 2).unwrap();
        spool.append(vec![rec(Stream::Live, 0, 100)]).unwrap();
        // One record bigger than the whole cap: nothing can make room for it. By the budget's
        // rule it is dropped (after everything of lower priority), its seq consumed and counted.
        let a = spool
            .append(vec![rec(Stream::Emissions, 0, 64 * 1024)])
            .unwrap();
        assert!(a.is_empty());
        assert_eq!(
            spool.dropped_per_stream(),
            vec![
                (Stream::Live, 1),
                (Stream::Metrics, 0),
                (Stream::Events, 0),
                (Stream::Emissions, 1)
            ]
        );
        assert_eq!(spool.stats().unwrap().records, 0);
        let next = spool.append(vec![rec(Stream::Emissions, 1, 10)]).unwrap();
        assert_eq!(next[0].seq, 2, "the consumer sees the dropped one as a gap");
    }

    #[test]
    fn file_is_in_wal_mode_with_the_configured_synchronous() {
        let dir = TempDir::new().unwrap();
        for (full, expected) in [(true, 2), (false, 1)] {
            let path = dir.path().join(format!("sync-{full}.db"));
            let cfg = SpoolConfig {
                max_bytes: 1,
                max_age: None,
                synchronous_full: full,
            };
            let mut spool = Spool::open(&path, &cfg).unwrap();
            let mode: String = spool
                .conn
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            let sync = |spool: &Spool| -> i64 {
                spool
                    .conn
                    .pragma_query_value(None, "synchronous", |r| r.get(0))
                    .unwrap()
            };
            assert_eq!((mode.as_str(), sync(&spool)), ("wal", expected));
            // An ack commits without an fsync and leaves the level as configured for appends,
            // also when it fails.
            spool.max_bytes = u64::MAX;
            // Appends go to the record log unless the file is capped; this is about SQLite's acks.
            spool.cap_file_pages(1 << 20).unwrap();
            let appended = spool
                .append(vec![rec(Stream::Live, 1, 10), rec(Stream::Live, 2, 10)])
                .unwrap();
            assert_eq!(spool.ack(&[appended[0].id]).unwrap(), 1);
            assert_eq!(sync(&spool), expected);
            spool.conn.execute_batch("DROP TABLE records").unwrap();
            assert!(spool.ack(&[appended[1].id]).is_err());
            assert_eq!(sync(&spool), expected);
        }
    }

    #[test]
    fn new_files_take_16_kib_pages_and_older_files_keep_theirs() {
        let dir = TempDir::new().unwrap();
        let page_size = |spool: &Spool| -> i64 {
            spool
                .conn
                .pragma_query_value(None, "page_size", |r| r.get(0))
                .unwrap()
        };
        let spool = open(&dir, u64::MAX);
        assert_eq!(page_size(&spool), PAGE_SIZE_BYTES);

        // A file made before the page size was set: 4 KiB pages, WAL, no tables yet.
        let old = dir.path().join("old.db");
        {
            let conn = Connection::open(&old).unwrap();
            conn.pragma_update(None, "page_size", 4096).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        }
        let mut spool = Spool::open(&old, &cfg(u64::MAX)).unwrap();
        assert_eq!(page_size(&spool), 4096);
        // A 13 kB body spans overflow pages there and still round-trips.
        spool.append(vec![rec(Stream::Live, 1, 13_000)]).unwrap();
        let read = spool.read_after(0, 10).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].body, vec![1u8; 13_000 - "t/01".len()]);
    }
}
