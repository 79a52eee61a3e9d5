//! Dead letters: records the uplink set aside, kept with their reason, and flagged by
//! `smeltwatch spool requeue` to go back into the queue.

use rusqlite::params;

use super::*;
use crate::model::Timestamp;
use crate::spool::{DeadLetter, SpoolError};

/// The table of version 3 (also part of [`SCHEMA`]).
pub(super) const DEAD_LETTERS_SCHEMA: &str = "
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

impl Spool {
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
        self.move_in_transaction(|tx, streams, path| {
            let err = |e| classify(path, e);
            let mut moved = Vec::new();
            let mut copy = tx
                .prepare_cached(
                    "INSERT INTO dead_letters \
                     (id, stream, seq, topic, body, created_ms, attempts, reason, dead_ms) \
                     SELECT id, stream, seq, topic, body, created_ms, attempts, ?2, ?3 \
                     FROM records WHERE id = ?1",
                )
                .map_err(err)?;
            // The letters are returned without their bodies (an empty blob in the body column).
            let sql = format!(
                "DELETE FROM records WHERE id = ?1 RETURNING id, stream, seq, topic, x'', \
                 created_ms, attempts, {ROW_BYTES}"
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
                    let record = read_record(path, row)?;
                    let bytes = non_negative(path, "size", row.get(7).map_err(err)?)?;
                    let s = &mut streams[index(record.stream)];
                    s.records = s.records.saturating_sub(1);
                    s.bytes = s.bytes.saturating_sub(bytes);
                    moved.push(DeadLetter {
                        record,
                        reason: reason.clone(),
                        dead_at: now,
                        requeue: false,
                    });
                }
            }
            Ok(moved)
        })
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
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let record = read_record(&self.path, row)?;
            let err = |e| self.err(e);
            let reason = row.get(7).map_err(err)?;
            let dead_at = Timestamp(row.get(8).map_err(err)?);
            let requeue = row.get::<_, i64>(9).map_err(err)? != 0;
            out.push(DeadLetter {
                record,
                reason,
                dead_at,
                requeue,
            });
        }
        Ok(out)
    }

    /// Dead letters waiting (re-queue requests included).
    pub fn dead_letter_count(&self) -> Result<u64, SpoolError> {
        self.conn
            .prepare_cached("SELECT count(*) FROM dead_letters")
            .and_then(|mut count| count.query_row([], |r| r.get::<_, i64>(0)))
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
        // Asked every few seconds by every uplink: the statement is kept, not parsed each time.
        let flagged: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM dead_letters WHERE requeue = 1")
            .and_then(|mut count| count.query_row([], |r| r.get(0)))
            .map_err(|e| self.err(e))?;
        if flagged == 0 {
            return Ok(0);
        }
        let moved = self.move_in_transaction(|tx, streams, path| {
            let err = |e| classify(path, e);
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
                    let stream = parse_stream(path, &row.get::<_, String>(0).map_err(err)?)?;
                    let bytes = non_negative(path, "size", row.get(1).map_err(err)?)?;
                    let s = &mut streams[index(stream)];
                    s.records += 1;
                    s.bytes += bytes;
                    moved += 1;
                }
            }
            tx.execute("DELETE FROM dead_letters WHERE requeue = 1", [])
                .map_err(err)?;
            Ok(moved)
        })?;
        self.next_id = self.next_id.max(self.sqlite_last_id()? + 1);
        Ok(moved)
    }

    /// Runs `body` in one transaction, after the records still in the write-ahead log have moved
    /// into SQLite (dead letters move rows between the tables there), with a copy of the
    /// per-stream counts that replaces them only once the transaction has committed.
    fn move_in_transaction<T>(
        &mut self,
        body: impl FnOnce(
            &rusqlite::Transaction<'_>,
            &mut [StreamState; 4],
            &Path,
        ) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        self.owned()?;
        self.spill()?;
        let mut streams = self.streams;
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| classify(&path, e))?;
        let out = body(&tx, &mut streams, &path)?;
        tx.commit().map_err(|e| classify(&path, e))?;
        self.streams = streams;
        Ok(out)
    }
}
