//! [`Spool`]: the synchronous core over one SQLite connection and the record log beside it. No
//! tokio, no threads.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::log::{self, RecordLog};
use super::pending::Pending;
use super::{Appended, DropsByReason, NewRecord, SetAside, SpoolError, SpoolStats, StoredRecord};
use crate::clock::Clock;
use crate::config::{SpoolConfig, Stream};
use crate::model::Timestamp;

mod budget;
mod dead_letters;
mod record_log;
mod schema;

use budget::{CLOCK_STEPS_KEY, DISK_FULL_FIRST_ROOM, StepCorrection, decode_corrections};
use dead_letters::DEAD_LETTERS_SCHEMA;
use schema::{check_tables, migrate, quick_check, set_aside};

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

/// A stored `attempts` (an INTEGER) as the count: negative reads as 0, beyond `u32` as its
/// maximum.
fn attempts(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// A row whose columns 0 to 6 are `id, stream, seq, topic, body, created_ms, attempts`, the
/// columns `records` and `dead_letters` share, as a record.
fn read_record(path: &Path, r: &rusqlite::Row<'_>) -> Result<StoredRecord, SpoolError> {
    let err = |e| classify(path, e);
    Ok(StoredRecord {
        id: r.get(0).map_err(err)?,
        stream: parse_stream(path, &r.get::<_, String>(1).map_err(err)?)?,
        seq: non_negative(path, "seq", r.get(2).map_err(err)?)?,
        topic: r.get(3).map_err(err)?,
        body: r.get(4).map_err(err)?,
        created: Timestamp(r.get(5).map_err(err)?),
        attempts: attempts(r.get(6).map_err(err)?),
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
            let rows = stream_rows(&self.conn, "SELECT stream, next_seq, dropped FROM streams")
                .map_err(|e| classify(&path, e))?;
            for (name, next_seq, dropped) in rows {
                let s = &mut streams[index(parse_stream(&path, &name)?)];
                s.next_seq = non_negative(&path, "next_seq", next_seq)?;
                s.dropped = non_negative(&path, "dropped", dropped)?;
            }
            let sql = format!(
                "SELECT stream, count(*), coalesce(sum({ROW_BYTES}), 0) FROM records GROUP BY stream"
            );
            let rows = stream_rows(&self.conn, &sql).map_err(|e| classify(&path, e))?;
            for (name, records, bytes) in rows {
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

/// The rows of a query that yields a stream name and two integers per row.
fn stream_rows(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<(String, i64, i64)>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

#[cfg(test)]
mod tests;
