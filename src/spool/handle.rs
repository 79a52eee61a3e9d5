//! [`SpoolHandle`]: the async face of a [`Spool`], which runs on a dedicated thread.
//!
//! SQLite calls block (fsync on every commit under `FULL`), so they never run on a tokio worker.
//! One `std::thread` owns the `Spool` and serves commands from a bounded channel in arrival order;
//! each command carries a oneshot for its reply. When the channel is full, callers wait: that is
//! the backpressure fan-out feels when the disk is slow.
//!
//! # Decoded forms
//! Fan-out holds each record decoded in memory when it appends its body; the uplink reading it a
//! few milliseconds later would otherwise parse the body straight back. [`SpoolHandle::append_decoded`]
//! hands the decoded form (opaque here, [`Decoded`]) to the spool thread beside the body, and
//! [`SpoolHandle::read_after_decoded`] returns it with the stored record, once. They are kept in
//! memory only, bounded by [`DECODED_MAX_BYTES`] of the bodies they stand for, oldest dropped
//! first: after a restart, a long outage or a second read of the same id the reader decodes the
//! body, which stays the one source of truth. A decoded form is attached to a record only when
//! the append stored every record of the batch (none dropped by the budget), in input order.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot, watch};

use super::{
    Appended, DeadLetter, NewRecord, SetAside, Spool, SpoolError, SpoolStats, StoredRecord,
};
use crate::config::{SpoolConfig, Stream};

/// Commands waiting for the spool thread before senders wait.
const COMMAND_CAPACITY: usize = 64;

/// Decoded forms kept for records not read yet, counted in the body bytes they stand for: at most
/// this many. 1 MiB is about 450 poll batches of 100 readings in their binary body (2.3 kB), which
/// take about 8 kB each decoded, i.e. about 4 MB of memory: enough for the uplink to read a
/// second of a large plant without decoding (docs/PERFORMANCE.md, "the spool held every record as
/// JSON").
pub const DECODED_MAX_BYTES: usize = 1 << 20;

/// The decoded form of a record, handed from the appender to the reader (see the module docs).
pub type Decoded = Arc<dyn Any + Send + Sync>;

type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

/// An append that did not commit, with the records (and decoded forms) it was given back, so that
/// the caller can retry it without keeping a copy of every body.
#[derive(Debug)]
pub struct AppendFailed {
    /// Why.
    pub error: SpoolError,
    /// The records, as given (none stored).
    pub records: Vec<NewRecord>,
    /// Their decoded forms, as given.
    pub decoded: Vec<Option<Decoded>>,
}

enum Command {
    Append(
        Vec<NewRecord>,
        Vec<Option<Decoded>>,
        oneshot::Sender<AppendReply>,
    ),
    ReadAfter(i64, usize, Reply<Vec<StoredRecord>>),
    ReadAfterDecoded(i64, usize, Reply<Vec<(StoredRecord, Option<Decoded>)>>),
    Ack(Vec<i64>, Reply<u64>),
    MarkAttempt(Vec<i64>, Reply<()>),
    DeadLetter(Vec<(i64, String)>, Reply<Vec<DeadLetter>>),
    DeadLetters(Reply<Vec<DeadLetter>>),
    RequestRequeue(Option<Vec<i64>>, Reply<u64>),
    TakeRequeued(Reply<u64>),
    Stats(Reply<SpoolStats>),
    DroppedPerStream(Reply<Vec<(Stream, u64)>>),
    KvGet(String, Reply<Option<Vec<u8>>>),
    KvSet(String, Vec<u8>, Reply<()>),
    CapFilePages(u64, Reply<u64>),
    DiskFullDrops(Reply<u64>),
    Close(Reply<()>),
}

/// A cloneable async handle to a spool running on its own thread.
///
/// The thread stops when [`close`](SpoolHandle::close) is called on any clone (the others then get
/// [`SpoolError::Closed`]) or when the last clone is dropped (it then checkpoints and closes the
/// file itself). A call whose future is dropped after it was sent still runs to completion: an
/// append cancelled that way may still be stored.
#[derive(Debug, Clone)]
pub struct SpoolHandle {
    commands: mpsc::Sender<Command>,
    appended: watch::Receiver<i64>,
    /// Moved on by the appender once its append returned (see [`publish_appended`]), so that the
    /// spool thread wakes the runtime once per append (its reply) rather than twice. The thread
    /// holds the one strong reference: the watch closes when the thread stops, which tells the
    /// uplinks the spool is gone.
    appended_tx: Weak<watch::Sender<i64>>,
    path: Arc<PathBuf>,
}

impl SpoolHandle {
    /// Opens the spool synchronously (so a bad file fails at startup), then starts its thread.
    pub fn open(path: &Path, cfg: &SpoolConfig) -> Result<SpoolHandle, SpoolError> {
        Self::serve_on_thread(Spool::open(path, cfg)?)
    }

    /// [`Spool::open_or_set_aside`], then starts its thread: a damaged file is moved aside and
    /// an empty spool started in its place, which the [`SetAside`] describes.
    pub fn open_or_set_aside(
        path: &Path,
        cfg: &SpoolConfig,
        now: std::time::SystemTime,
    ) -> Result<(SpoolHandle, Option<SetAside>), SpoolError> {
        let (spool, aside) = Spool::open_or_set_aside(path, cfg, now)?;
        Ok((Self::serve_on_thread(spool)?, aside))
    }

    fn serve_on_thread(spool: Spool) -> Result<SpoolHandle, SpoolError> {
        let path = spool.path().to_path_buf();
        let (appended_tx, appended) = watch::channel(spool.last_id()?);
        let thread_tx = Arc::new(appended_tx);
        let appended_tx = Arc::downgrade(&thread_tx);
        let (commands, rx) = mpsc::channel(COMMAND_CAPACITY);
        std::thread::Builder::new()
            .name("smeltwatch-spool".to_owned())
            .spawn(move || serve(spool, rx, &thread_tx))
            .map_err(|source| SpoolError::Thread {
                path: path.clone(),
                source,
            })?;
        Ok(SpoolHandle {
            commands,
            appended,
            appended_tx,
            path: Arc::new(path),
        })
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| SpoolError::Closed)?;
        // A dropped reply sender means the thread stopped before serving this command.
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Appends a batch in one transaction; returns after it committed. See [`Spool::append`].
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<Vec<Appended>, SpoolError> {
        self.append_decoded(records, Vec::new()).await
    }

    /// [`append`](Self::append), handing over the decoded form of each record (`decoded[i]` for
    /// `records[i]`; shorter or empty: none for the rest) for [`read_after_decoded`](Self::read_after_decoded).
    pub async fn append_decoded(
        &self,
        records: Vec<NewRecord>,
        decoded: Vec<Option<Decoded>>,
    ) -> Result<Vec<Appended>, SpoolError> {
        self.try_append_decoded(records, decoded)
            .await
            .map_err(|failed| failed.error)
    }

    /// [`append_decoded`](Self::append_decoded), giving the records back when they were not
    /// stored (see [`AppendFailed`]).
    pub async fn try_append_decoded(
        &self,
        records: Vec<NewRecord>,
        decoded: Vec<Option<Decoded>>,
    ) -> Result<Vec<Appended>, Box<AppendFailed>> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(command)) = self
            .commands
            .send(Command::Append(records, decoded, reply))
            .await
        {
            let (records, decoded) = match command {
                Command::Append(records, decoded, _) => (records, decoded),
                _ => (Vec::new(), Vec::new()),
            };
            return Err(Box::new(AppendFailed {
                error: SpoolError::Closed,
                records,
                decoded,
            }));
        }
        let mut answer = PendingAppend {
            answer,
            appended: &self.appended_tx,
        };
        // A dropped reply sender means the thread stopped before serving this command, and
        // dropped the records with it.
        let result = (&mut answer.answer).await.unwrap_or_else(|_| {
            Err(Box::new(AppendFailed {
                error: SpoolError::Closed,
                records: Vec::new(),
                decoded: Vec::new(),
            }))
        });
        if let Ok(stored) = &result
            && let Some(appended) = self.appended_tx.upgrade()
        {
            publish_appended(&appended, stored);
        }
        result
    }

    /// Up to `limit` records with `id > after_id`, oldest first. See [`Spool::read_after`].
    pub async fn read_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, SpoolError> {
        self.call(|reply| Command::ReadAfter(after_id, limit, reply))
            .await
    }

    /// [`read_after`](Self::read_after), each record with the decoded form its appender handed
    /// over, if it is still kept; a decoded form is returned once.
    pub async fn read_after_decoded(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<(StoredRecord, Option<Decoded>)>, SpoolError> {
        self.call(|reply| Command::ReadAfterDecoded(after_id, limit, reply))
            .await
    }

    /// Deletes delivered records; returns how many were removed. See [`Spool::ack`].
    pub async fn ack(&self, ids: Vec<i64>) -> Result<u64, SpoolError> {
        self.call(|reply| Command::Ack(ids, reply)).await
    }

    /// Counts a send attempt for each record. See [`Spool::mark_attempt`].
    pub async fn mark_attempt(&self, ids: Vec<i64>) -> Result<(), SpoolError> {
        self.call(|reply| Command::MarkAttempt(ids, reply)).await
    }

    /// Moves records to the dead-letter table. See [`Spool::dead_letter`].
    pub async fn dead_letter(
        &self,
        letters: Vec<(i64, String)>,
    ) -> Result<Vec<DeadLetter>, SpoolError> {
        self.call(|reply| Command::DeadLetter(letters, reply)).await
    }

    /// Every dead letter. See [`Spool::dead_letters`].
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, SpoolError> {
        self.call(Command::DeadLetters).await
    }

    /// Flags dead letters for re-queueing (`None`: all). See [`Spool::request_requeue`].
    pub async fn request_requeue(&self, ids: Option<Vec<i64>>) -> Result<u64, SpoolError> {
        self.call(|reply| Command::RequestRequeue(ids, reply)).await
    }

    /// Moves flagged dead letters back into the queue (see [`Spool::take_requeued`]); the
    /// [`appended`](Self::appended) watch moves on when any were, so the uplink reads them.
    pub async fn take_requeued(&self) -> Result<u64, SpoolError> {
        self.call(Command::TakeRequeued).await
    }

    /// What is waiting. See [`Spool::stats`].
    pub async fn stats(&self) -> Result<SpoolStats, SpoolError> {
        self.call(Command::Stats).await
    }

    /// Records dropped by the byte budget, a full disk or `max_age`, per stream. See [`Spool::dropped_per_stream`].
    pub async fn dropped_per_stream(&self) -> Result<Vec<(Stream, u64)>, SpoolError> {
        self.call(Command::DroppedPerStream).await
    }

    /// Reads a small piece of durable state.
    pub async fn kv_get(&self, key: String) -> Result<Option<Vec<u8>>, SpoolError> {
        self.call(|reply| Command::KvGet(key, reply)).await
    }

    /// Writes a small piece of durable state; returns after it committed.
    pub async fn kv_set(&self, key: String, value: Vec<u8>) -> Result<(), SpoolError> {
        self.call(|reply| Command::KvSet(key, value, reply)).await
    }

    /// Caps the file at `pages` pages until it is closed, as a full disk would. See
    /// [`Spool::cap_file_pages`].
    pub async fn cap_file_pages(&self, pages: u64) -> Result<u64, SpoolError> {
        self.call(|reply| Command::CapFilePages(pages, reply)).await
    }

    /// Records dropped to make room on a full disk since the spool was opened. See
    /// [`Spool::disk_full_drops`].
    pub async fn disk_full_drops(&self) -> Result<u64, SpoolError> {
        self.call(Command::DiskFullDrops).await
    }

    /// The id of the last appended record (0 if none ever was), updated after each committed
    /// append, so an uplink can wait for new records (`changed().await`) instead of polling.
    pub fn appended(&self) -> watch::Receiver<i64> {
        self.appended.clone()
    }

    /// Checkpoints the WAL, closes the file and stops the thread. Commands queued behind this one,
    /// and every later call on any clone, fail with [`SpoolError::Closed`].
    pub async fn close(self) -> Result<(), SpoolError> {
        self.call(Command::Close).await
    }
}

type AppendReply = Result<Vec<Appended>, Box<AppendFailed>>;

/// Moves the [`SpoolHandle::appended`] watch on to the last of `stored`, never back: appends
/// from several tasks may return in another order than they committed.
fn publish_appended(appended: &watch::Sender<i64>, stored: &[Appended]) {
    if let Some(last) = stored.last() {
        appended.send_if_modified(|id| {
            let newer = last.id > *id;
            if newer {
                *id = last.id;
            }
            newer
        });
    }
}

/// The reply of an append being awaited. If the append's future is dropped before it took the
/// reply, the records may still be stored: then whichever of the two comes second, this guard's
/// drop or the spool thread's failed reply, moves the watch on, so that the uplink still reads
/// them without waiting for the next append.
struct PendingAppend<'h> {
    answer: oneshot::Receiver<AppendReply>,
    appended: &'h Weak<watch::Sender<i64>>,
}

impl Drop for PendingAppend<'_> {
    fn drop(&mut self) {
        // After `close`, the thread's reply fails (and it moves the watch itself), and a reply
        // sent before is still here to take.
        self.answer.close();
        if let Ok(Ok(stored)) = self.answer.try_recv()
            && let Some(appended) = self.appended.upgrade()
        {
            publish_appended(&appended, &stored);
        }
    }
}

/// Decoded forms of appended records by id, with the body bytes each stands for.
#[derive(Default)]
struct DecodedForms {
    by_id: BTreeMap<i64, (Decoded, usize)>,
    bytes: usize,
}

impl DecodedForms {
    /// Keep the decoded forms of a committed append. Only when every record was stored (the
    /// budget dropped none of the batch) is `appended[i]` known to be `records[i]`.
    fn keep(
        &mut self,
        streams_and_sizes: &[(Stream, usize)],
        decoded: Vec<Option<Decoded>>,
        appended: &[Appended],
    ) {
        if appended.len() != streams_and_sizes.len() {
            return;
        }
        for ((a, (stream, size)), d) in appended.iter().zip(streams_and_sizes).zip(decoded) {
            if let Some(d) = d
                && a.stream == *stream
            {
                self.bytes += size;
                if let Some((_, old)) = self.by_id.insert(a.id, (d, *size)) {
                    self.bytes -= old;
                }
            }
        }
        while self.bytes > DECODED_MAX_BYTES {
            match self.by_id.pop_first() {
                Some((_, (_, size))) => self.bytes -= size,
                None => break,
            }
        }
    }

    fn take(&mut self, id: i64) -> Option<Decoded> {
        let (d, size) = self.by_id.remove(&id)?;
        self.bytes -= size;
        Some(d)
    }
}

/// The spool thread: serves commands in order until closed or every handle is gone.
// One match arm per command, each a call on the spool and its reply: split, the arms would only
// move into functions that each take the whole state.
#[allow(clippy::too_many_lines)]
fn serve(mut spool: Spool, mut commands: mpsc::Receiver<Command>, appended: &watch::Sender<i64>) {
    let mut forms = DecodedForms::default();
    // A failed `send` on a reply only means the caller stopped waiting; the work is done anyway.
    while let Some(command) = commands.blocking_recv() {
        match command {
            Command::Append(records, decoded, reply) => {
                let sizes: Vec<(Stream, usize)> = if decoded.iter().any(Option::is_some) {
                    records.iter().map(|r| (r.stream, r.body.len())).collect()
                } else {
                    Vec::new()
                };
                let result = match spool.append_slice(&records) {
                    Ok(stored) => {
                        if !sizes.is_empty() {
                            forms.keep(&sizes, decoded, &stored);
                        }
                        Ok(stored)
                    }
                    Err(error) => Err(Box::new(AppendFailed {
                        error,
                        records,
                        decoded,
                    })),
                };
                // The appender moves the watch on when it takes the reply; one that stopped
                // waiting cannot.
                if let Err(Ok(stored)) = reply.send(result) {
                    publish_appended(appended, &stored);
                }
            }
            Command::ReadAfter(after_id, limit, reply) => {
                let _ = reply.send(spool.read_after(after_id, limit));
            }
            Command::ReadAfterDecoded(after_id, limit, reply) => {
                let result = spool.read_after(after_id, limit).map(|records| {
                    records
                        .into_iter()
                        .map(|r| {
                            let d = forms.take(r.id);
                            (r, d)
                        })
                        .collect()
                });
                let _ = reply.send(result);
            }
            Command::Ack(ids, reply) => {
                let _ = reply.send(spool.ack(&ids));
            }
            Command::MarkAttempt(ids, reply) => {
                let _ = reply.send(spool.mark_attempt(&ids));
            }
            Command::DeadLetter(letters, reply) => {
                let _ = reply.send(spool.dead_letter(&letters, crate::model::Timestamp::now()));
            }
            Command::DeadLetters(reply) => {
                let _ = reply.send(spool.dead_letters());
            }
            Command::RequestRequeue(ids, reply) => {
                let _ = reply.send(spool.request_requeue(ids.as_deref()));
            }
            Command::TakeRequeued(reply) => {
                let result = spool.take_requeued();
                if let Ok(n) = &result
                    && *n > 0
                    && let Ok(last) = spool.last_id()
                {
                    appended.send_replace(last);
                }
                let _ = reply.send(result);
            }
            Command::Stats(reply) => {
                let _ = reply.send(spool.stats());
            }
            Command::DroppedPerStream(reply) => {
                let _ = reply.send(Ok(spool.dropped_per_stream()));
            }
            Command::KvGet(key, reply) => {
                let _ = reply.send(spool.kv_get(&key));
            }
            Command::KvSet(key, value, reply) => {
                let _ = reply.send(spool.kv_set(&key, &value));
            }
            Command::CapFilePages(pages, reply) => {
                let _ = reply.send(spool.cap_file_pages(pages));
            }
            Command::DiskFullDrops(reply) => {
                let _ = reply.send(Ok(spool.disk_full_drops()));
            }
            Command::Close(reply) => {
                // Refuse new sends at once; queued commands are dropped with the receiver, so
                // their callers see `Closed`.
                commands.close();
                let _ = reply.send(spool.close());
                return;
            }
        }
    }
    let path = spool.path().to_path_buf();
    if let Err(e) = spool.close() {
        tracing::warn!(spool = %path.display(), error = %e, "closing the spool after its last handle was dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Stream;
    use crate::model::Timestamp;

    fn rec(stream: Stream, n: u8) -> NewRecord {
        NewRecord {
            stream,
            topic: format!("t/{n}"),
            body: vec![n; 16],
            created: Timestamp(i64::from(n)),
        }
    }

    #[tokio::test]
    async fn handle_appends_reads_acks_and_signals_new_records() {
        let dir = tempfile::TempDir::new().unwrap();
        let handle = SpoolHandle::open(&dir.path().join("a.db"), &SpoolConfig::default()).unwrap();
        let mut appended = handle.appended();
        assert_eq!(*appended.borrow_and_update(), 0);

        let writer = handle.clone();
        let a = tokio::spawn(async move {
            writer
                .append(vec![rec(Stream::Live, 1), rec(Stream::Events, 2)])
                .await
        });
        appended.changed().await.unwrap();
        assert_eq!(*appended.borrow_and_update(), 2);
        let a = a.await.unwrap().unwrap();
        assert_eq!(a.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![1, 1]);

        let read = handle.read_after(0, 10).await.unwrap();
        assert_eq!(read.len(), 2);
        handle.mark_attempt(vec![1]).await.unwrap();
        assert_eq!(handle.read_after(0, 1).await.unwrap()[0].attempts, 1);
        assert_eq!(handle.ack(vec![1, 1, 7]).await.unwrap(), 1);
        assert_eq!(handle.stats().await.unwrap().records, 1);
        handle.kv_set("bdseq".into(), vec![9]).await.unwrap();
        assert_eq!(handle.kv_get("bdseq".into()).await.unwrap(), Some(vec![9]));

        let other = handle.clone();
        handle.close().await.unwrap();
        assert!(matches!(other.stats().await, Err(SpoolError::Closed)));
        assert!(matches!(other.close().await, Err(SpoolError::Closed)));

        // Closed cleanly: the WAL was checkpointed, and a reopen sees the state and the last id.
        let reopened =
            SpoolHandle::open(&dir.path().join("a.db"), &SpoolConfig::default()).unwrap();
        assert_eq!(*reopened.appended().borrow(), 2);
        assert_eq!(reopened.read_after(0, 10).await.unwrap()[0].id, 2);
        assert_eq!(
            reopened.kv_get("bdseq".into()).await.unwrap(),
            Some(vec![9])
        );
    }

    fn decoded(n: u32) -> Option<Decoded> {
        Some(Arc::new(n))
    }

    fn numbers(read: &[(StoredRecord, Option<Decoded>)]) -> Vec<(i64, Option<u32>)> {
        read.iter()
            .map(|(r, d)| {
                (
                    r.id,
                    d.as_ref().and_then(|d| d.downcast_ref::<u32>()).copied(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn decoded_forms_come_back_with_their_own_records_once() {
        let dir = tempfile::TempDir::new().unwrap();
        let handle = SpoolHandle::open(&dir.path().join("d.db"), &SpoolConfig::default()).unwrap();
        handle.append(vec![rec(Stream::Live, 1)]).await.unwrap();
        let batch = vec![
            rec(Stream::Live, 2),
            rec(Stream::Events, 3),
            rec(Stream::Live, 4),
        ];
        handle
            .append_decoded(batch, vec![decoded(20), None, decoded(40)])
            .await
            .unwrap();
        // A plain read leaves them be.
        assert_eq!(handle.read_after(0, 10).await.unwrap().len(), 4);
        let first = handle.read_after_decoded(0, 2).await.unwrap();
        assert_eq!(numbers(&first), vec![(1, None), (2, Some(20))]);
        let rest = handle.read_after_decoded(2, 10).await.unwrap();
        assert_eq!(numbers(&rest), vec![(3, None), (4, Some(40))]);
        // Once: reading again (a rewind after a failed send) decodes the body.
        let again = handle.read_after_decoded(0, 10).await.unwrap();
        assert_eq!(
            numbers(&again),
            vec![(1, None), (2, None), (3, None), (4, None)]
        );
        // The bodies are what was appended, whichever way they were read.
        assert_eq!(again[1].0.body, vec![2; 16]);
    }

    #[tokio::test]
    async fn decoded_forms_are_bounded_and_skipped_when_the_budget_drops_part_of_a_batch() {
        let dir = tempfile::TempDir::new().unwrap();
        let handle = SpoolHandle::open(&dir.path().join("e.db"), &SpoolConfig::default()).unwrap();
        // Bodies of a quarter of the bound: only the last four appended keep their forms.
        let big = |n: u8| NewRecord {
            body: vec![n; DECODED_MAX_BYTES / 4],
            ..rec(Stream::Live, n)
        };
        for n in 1..=6u8 {
            handle
                .append_decoded(vec![big(n)], vec![decoded(u32::from(n))])
                .await
                .unwrap();
        }
        let read = handle.read_after_decoded(0, 10).await.unwrap();
        let kept: Vec<i64> = numbers(&read)
            .into_iter()
            .filter_map(|(id, d)| d.map(|_| id))
            .collect();
        assert_eq!(kept, vec![3, 4, 5, 6]);

        // A budget that cannot hold the whole batch: no form is attached to a record it was not
        // handed over with.
        let small = SpoolConfig {
            max_bytes: 100,
            ..SpoolConfig::default()
        };
        let handle = SpoolHandle::open(&dir.path().join("f.db"), &small).unwrap();
        let sized = |stream, n: u8| NewRecord {
            body: vec![n; 40],
            ..rec(stream, n)
        };
        let batch = vec![
            sized(Stream::Live, 1),
            sized(Stream::Emissions, 2),
            sized(Stream::Emissions, 3),
        ];
        let stored = handle
            .append_decoded(batch, vec![decoded(1), decoded(2), decoded(3)])
            .await
            .unwrap();
        assert!(
            stored.len() < 3,
            "the budget dropped part of the batch: {stored:?}"
        );
        let read = handle.read_after_decoded(0, 10).await.unwrap();
        assert!(read.iter().all(|(_, d)| d.is_none()));
    }

    #[tokio::test]
    async fn a_failed_append_gives_its_records_back_for_the_retry() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("c.db");
        let handle = SpoolHandle::open(&path, &SpoolConfig::default()).unwrap();
        // Appends go to SQLite while the file is capped (not to the record log), and then break
        // with the file: another connection removes the queue's table under the spool thread.
        handle.cap_file_pages(1 << 20).await.unwrap();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("DROP TABLE records")
            .unwrap();
        let records = vec![rec(Stream::Live, 1), rec(Stream::Live, 2)];
        let failed = handle
            .try_append_decoded(records.clone(), vec![decoded(7)])
            .await
            .unwrap_err();
        assert!(
            !matches!(failed.error, SpoolError::Closed),
            "{:?}",
            failed.error
        );
        assert_eq!(failed.records, records);
        assert_eq!(failed.decoded.len(), 1);
        // A closed spool gives them back too.
        handle.clone().close().await.unwrap();
        let failed = handle
            .try_append_decoded(records.clone(), Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(failed.error, SpoolError::Closed));
        assert_eq!(failed.records, records);
    }

    #[tokio::test]
    async fn an_append_whose_caller_stopped_waiting_still_moves_the_watch() {
        let dir = tempfile::TempDir::new().unwrap();
        let handle = SpoolHandle::open(&dir.path().join("c.db"), &SpoolConfig::default()).unwrap();
        let mut appended = handle.appended();
        assert_eq!(*appended.borrow_and_update(), 0);
        // The append is sent on its first poll and dropped right after, almost always while its
        // commit (an fsync) runs: the thread's reply finds no one and the thread moves the watch.
        tokio::select! {
            biased;
            _ = handle.append(vec![rec(Stream::Live, 1), rec(Stream::Live, 2)]) => {}
            () = std::future::ready(()) => {}
        }
        appended.changed().await.unwrap();
        assert_eq!(*appended.borrow_and_update(), 2);
        assert_eq!(handle.read_after(0, 10).await.unwrap().len(), 2);
    }

    #[test]
    fn a_reply_left_behind_by_a_dropped_append_moves_the_watch_and_never_back() {
        let (tx, mut rx) = watch::channel(5_i64);
        let tx = Arc::new(tx);
        let weak = Arc::downgrade(&tx);
        let appended = |id| Appended {
            id,
            stream: Stream::Live,
            seq: 1,
        };
        // The reply arrived, the caller was gone before it took it.
        let (reply, answer) = oneshot::channel::<AppendReply>();
        reply.send(Ok(vec![appended(6), appended(7)])).unwrap();
        drop(PendingAppend {
            answer,
            appended: &weak,
        });
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 7);
        // An append that committed earlier but returned later does not move it back.
        publish_appended(&tx, &[appended(6)]);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(*rx.borrow(), 7);
    }

    #[tokio::test]
    async fn dropping_every_handle_stops_the_thread_and_releases_the_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("b.db");
        let handle = SpoolHandle::open(&path, &SpoolConfig::default()).unwrap();
        handle.append(vec![rec(Stream::Metrics, 1)]).await.unwrap();
        let mut appended = handle.appended();
        assert_eq!(*appended.borrow_and_update(), 1);
        drop(handle);
        // The watch sender lives in the thread: its end proves the thread stopped.
        assert!(appended.changed().await.is_err());
        // It checkpointed on the way out: the WAL is truncated and the record is in the main file.
        let wal = dir.path().join("b.db-wal");
        assert!(std::fs::metadata(&wal).map_or(0, |m| m.len()) == 0);
        let spool = Spool::open(&path, &SpoolConfig::default()).unwrap();
        assert_eq!(spool.stats().unwrap().records, 1);
    }
}
