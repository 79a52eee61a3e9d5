//! The spool's record log side: appends to the log, the spill of its pending records into
//! SQLite, and reads of what SQLite holds.

use rusqlite::{OptionalExtension, params};

use super::*;
use crate::config::Stream;
use crate::spool::log::{self, RecordLog};
use crate::spool::pending::PendingRecord;
use crate::spool::{Appended, NewRecord, SpoolError, StoredRecord};

impl Spool {
    /// Opens the record log and takes in what it holds: records appended and not acked before the
    /// last stop (or crash) are moved into SQLite and the log starts empty. If another process
    /// owns the spool (it holds the log's lock), the log is only read, and its records are shown
    /// beside SQLite's.
    pub(super) fn open_log(&mut self) -> Result<(), SpoolError> {
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
    pub(super) fn spill(&mut self) -> Result<(), SpoolError> {
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

    /// The last id SQLite handed out or was told about (`sqlite_sequence`).
    pub(super) fn sqlite_last_id(&self) -> Result<i64, SpoolError> {
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
    pub(super) fn in_sqlite(&self, i: usize) -> u64 {
        self.streams[i].records - self.pending.count(i)
    }

    /// The common case: the batch fits the budget, nothing expires and no clock step is pending,
    /// so it goes to the record log with one write (and one `fdatasync` under `synchronous =
    /// FULL`). `None` when SQLite's path is needed.
    pub(super) fn append_to_log(
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
        let format = self.log.as_ref()?.format();
        let mut frames = Vec::with_capacity(records.iter().map(|r| r.body.len() + 64).sum());
        let mut appended = Vec::with_capacity(records.len());
        let mut streams = self.streams;
        for (k, r) in records.iter().enumerate() {
            let s = &mut streams[index(r.stream)];
            let id = self.next_id + k as i64;
            format.encode_record(&mut frames, id, s.next_seq, r);
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
        if let Err(e) = log.append(&mut frames, self.synchronous_full) {
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
    pub(super) fn spill_or_drop(&mut self) -> Result<(), SpoolError> {
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
    pub(super) fn append_to_sqlite(
        &mut self,
        records: &[NewRecord],
    ) -> Result<Vec<Appended>, SpoolError> {
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

    pub(super) fn read_after_in_sqlite(
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
        let mut rows = stmt
            .query(params![after_id, limit])
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            out.push(read_record(&self.path, row)?);
        }
        Ok(out)
    }
}
