//! The spool's budget: what an append drops when the byte budget, `max_age` or a full disk
//! leaves no room, and the wall-clock step corrections that age records fairly.

use std::path::Path;

use rusqlite::{OptionalExtension, Transaction, params};

use super::*;
use crate::config::Stream;
use crate::spool::{Appended, NewRecord, SpoolError};

/// Room made by the first retry of an append that hit a full disk, at least: a few pages, as rows
/// and index entries take more than their payload bytes.
pub(super) const DISK_FULL_FIRST_ROOM: u64 = 16 * 1024;

/// The `kv` key of the step corrections: 24 bytes per correction, three little-endian i64
/// (`before_ms`, `delta_ms`, `up_to_id`), oldest first.
pub(super) const CLOCK_STEPS_KEY: &str = "clock_steps";

/// `up_to_id` of a correction not yet bounded by the append that noticed its step.
pub(super) const UNBOUNDED: i64 = i64::MAX;

/// A forward step of the wall clock, for the `max_age` comparison: a record created before
/// `before_ms` was stamped by the clock before the step, and is aged from its creation time plus
/// `delta_ms` (the time the corrected clock would have given it). Its stored `created` is not
/// changed: that is what was acquired and published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StepCorrection {
    /// Halfway between the old clock's time and the new one's at the step: on either side of it
    /// lie the times stamped before and after the step.
    before_ms: i64,
    delta_ms: i64,
    /// Kept while a record with an id up to this one is queued; only those can predate the step.
    up_to_id: i64,
}

/// `created_ms` on the clock as corrected by every later forward step.
pub(super) fn corrected(corrections: &[StepCorrection], created_ms: i64) -> i64 {
    corrections.iter().fold(created_ms, |c, k| {
        if c < k.before_ms {
            c.saturating_add(k.delta_ms)
        } else {
            c
        }
    })
}

pub(super) fn encode_corrections(corrections: &[StepCorrection]) -> Vec<u8> {
    corrections
        .iter()
        .flat_map(|k| [k.before_ms, k.delta_ms, k.up_to_id])
        .flat_map(i64::to_le_bytes)
        .collect()
}

pub(super) fn decode_corrections(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<StepCorrection>, SpoolError> {
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

/// `corrections` after an append in `tx`: a new one is bounded by the last id appended (the
/// records it may concern are queued by now), one is dropped once no record up to its bound is
/// queued; written to `kv` if they changed.
pub(super) fn bound_corrections(
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
pub(super) fn evict_oldest(
    tx: &Transaction<'_>,
    stream: Stream,
    need: u64,
) -> rusqlite::Result<(u64, u64)> {
    evict_head(tx, stream, |_, freed| freed >= need)
}

/// Deletes the oldest records of `stream` (by id) while they were created before `cutoff_ms` (on
/// the clock as `corrections` correct it); returns (rows, budget bytes) freed. Walking from the
/// head reads only the rows it removes plus one; a record that is older than one queued before it
/// (clocks are not monotonic) simply waits for the records ahead of it to expire.
pub(super) fn evict_older(
    tx: &Transaction<'_>,
    stream: Stream,
    cutoff_ms: i64,
    corrections: &[StepCorrection],
) -> rusqlite::Result<(u64, u64)> {
    evict_head(tx, stream, |created_ms, _| {
        corrected(corrections, created_ms) >= cutoff_ms
    })
}

/// Deletes the records of `stream` from the oldest (by id) until `stop(created_ms, freed so
/// far)` holds for the next one; returns (rows, budget bytes) freed. Reads only the rows it
/// removes plus one, and deletes them in one statement.
fn evict_head(
    tx: &Transaction<'_>,
    stream: Stream,
    mut stop: impl FnMut(i64, u64) -> bool,
) -> rusqlite::Result<(u64, u64)> {
    let sql =
        format!("SELECT id, {ROW_BYTES}, created_ms FROM records WHERE stream = ?1 ORDER BY id");
    let mut select = tx.prepare_cached(&sql)?;
    let mut rows = select.query([stream.as_str()])?;
    let (mut count, mut freed, mut last_id) = (0u64, 0u64, None);
    while let Some(row) = rows.next()? {
        if stop(row.get::<_, i64>(2)?, freed) {
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

impl Spool {
    /// Take the forward steps of the wall clock since the last append into the `max_age`
    /// corrections. A backward step needs none: records queued before it only expire later.
    pub(super) fn note_clock_steps(&mut self) {
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
    pub(super) fn append_on_full_disk(
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
    pub(super) fn append_within(
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
            aged = expire_aged(
                &tx,
                records,
                max_age_ms,
                &self.corrections,
                &mut streams,
                &mut dropped_now,
            )
            .map_err(err)?;
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

        let kept = Kept {
            keep: &keep,
            seqs: &seqs,
            sizes: &sizes,
        };
        let appended = insert_kept(&tx, records, &kept, &mut streams).map_err(err)?;
        update_streams(&tx, &self.streams, &mut streams, &dropped_now).map_err(err)?;
        let corrections = bound_corrections(&tx, &self.corrections).map_err(err)?;
        tx.commit().map_err(err)?;
        self.corrections = corrections;
        self.streams = streams;
        self.drops.max_age += aged;
        Ok((appended, dropped_now, aged))
    }
}

/// Expires the queued records older than `max_age_ms` before the newest record of `records`, on
/// the clock as corrected by every forward step (see `corrected`); emissions never expire by age.
/// Returns how many expired.
fn expire_aged(
    tx: &Transaction<'_>,
    records: &[NewRecord],
    max_age_ms: i64,
    corrections: &[StepCorrection],
    streams: &mut [StreamState; 4],
    dropped_now: &mut [u64; 4],
) -> rusqlite::Result<u64> {
    let newest = records
        .iter()
        .map(|r| corrected(corrections, r.created.unix_ms()))
        .max();
    let cutoff = newest.unwrap_or(i64::MIN).saturating_sub(max_age_ms);
    let mut aged = 0;
    for stream in STREAMS {
        let i = index(stream);
        if stream == Stream::Emissions || streams[i].records == 0 {
            continue;
        }
        let (rows, bytes) = evict_older(tx, stream, cutoff, corrections)?;
        streams[i].records -= rows;
        streams[i].bytes -= bytes;
        dropped_now[i] += rows;
        aged += rows;
    }
    Ok(aged)
}

/// Which records of a batch the budget keeps, with the seq and budget size of each.
struct Kept<'a> {
    keep: &'a [bool],
    seqs: &'a [u64],
    sizes: &'a [u64],
}

/// Inserts the kept records of a batch and counts them in `streams`.
fn insert_kept(
    tx: &Transaction<'_>,
    records: &[NewRecord],
    kept: &Kept<'_>,
    streams: &mut [StreamState; 4],
) -> rusqlite::Result<Vec<Appended>> {
    let mut appended = Vec::with_capacity(records.len());
    let mut insert = tx.prepare_cached(
        "INSERT INTO records (stream, seq, topic, body, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (k, r) in records.iter().enumerate() {
        if !kept.keep[k] {
            continue;
        }
        insert.execute(params![
            r.stream.as_str(),
            to_sql_int(kept.seqs[k]),
            r.topic,
            r.body,
            r.created.unix_ms()
        ])?;
        let s = &mut streams[index(r.stream)];
        s.records += 1;
        s.bytes += kept.sizes[k];
        appended.push(Appended {
            id: tx.last_insert_rowid(),
            stream: r.stream,
            seq: kept.seqs[k],
        });
    }
    Ok(appended)
}

/// Adds this batch's drops to `streams` and writes each stream's `next_seq` and `dropped` where
/// they changed from `before`.
fn update_streams(
    tx: &Transaction<'_>,
    before: &[StreamState; 4],
    streams: &mut [StreamState; 4],
    dropped_now: &[u64; 4],
) -> rusqlite::Result<()> {
    let mut update =
        tx.prepare_cached("UPDATE streams SET next_seq = ?2, dropped = ?3 WHERE stream = ?1")?;
    for stream in STREAMS {
        let (old, new) = (&before[index(stream)], &mut streams[index(stream)]);
        new.dropped += dropped_now[index(stream)];
        if (old.next_seq, old.dropped) != (new.next_seq, new.dropped) {
            update.execute(params![
                stream.as_str(),
                to_sql_int(new.next_seq),
                to_sql_int(new.dropped)
            ])?;
        }
    }
    Ok(())
}
