//! The records of the record log ([`super::log`]) not yet acked, in memory: what the uplink reads
//! while its peer keeps up, so that reading and acking them touches no file.

use std::collections::BTreeMap;

use super::StoredRecord;
use crate::config::Stream;
use crate::model::Timestamp;

/// One record held in the log and in memory.
#[derive(Debug, Clone)]
pub(super) struct PendingRecord {
    pub(super) stream: Stream,
    pub(super) seq: u64,
    pub(super) topic: String,
    pub(super) body: Vec<u8>,
    pub(super) created_ms: i64,
    /// Sends that ended unacknowledged (also in the log's attempt frames).
    pub(super) attempts: u32,
}

impl PendingRecord {
    /// What the byte budget counts: topic and body bytes.
    pub(super) fn budget_bytes(&self) -> u64 {
        (self.topic.len() + self.body.len()) as u64
    }

    fn stored(&self, id: i64) -> StoredRecord {
        StoredRecord {
            id,
            stream: self.stream,
            seq: self.seq,
            topic: self.topic.clone(),
            body: self.body.clone(),
            created: Timestamp(self.created_ms),
            attempts: self.attempts,
        }
    }
}

/// The pending records by id, with their budget bytes.
#[derive(Debug, Default)]
pub(super) struct Pending {
    by_id: BTreeMap<i64, PendingRecord>,
    bytes: u64,
    per_stream: [u64; 4],
}

impl Pending {
    pub(super) fn insert(&mut self, id: i64, record: PendingRecord, stream_index: usize) {
        self.bytes += record.budget_bytes();
        self.per_stream[stream_index] += 1;
        if let Some(old) = self.by_id.insert(id, record) {
            // Ids are never reused; keep the totals right if one were.
            self.bytes -= old.budget_bytes();
            self.per_stream[stream_index] -= 1;
        }
    }

    pub(super) fn remove(
        &mut self,
        id: i64,
        index: impl Fn(Stream) -> usize,
    ) -> Option<PendingRecord> {
        let record = self.by_id.remove(&id)?;
        self.bytes -= record.budget_bytes();
        self.per_stream[index(record.stream)] -= 1;
        Some(record)
    }

    pub(super) fn contains(&self, id: i64) -> bool {
        self.by_id.contains_key(&id)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Pending records of the stream at `index`.
    pub(super) fn count(&self, index: usize) -> u64 {
        self.per_stream[index]
    }

    /// Up to `limit` records with `id > after_id`, oldest first.
    pub(super) fn read_after(&self, after_id: i64, limit: usize) -> Vec<StoredRecord> {
        self.by_id
            .range(after_id.saturating_add(1)..)
            .take(limit)
            .map(|(&id, r)| r.stored(id))
            .collect()
    }

    pub(super) fn mark_attempt(&mut self, id: i64) -> bool {
        match self.by_id.get_mut(&id) {
            Some(r) => {
                r.attempts = r.attempts.saturating_add(1);
                true
            }
            None => false,
        }
    }

    /// The `created_ms` of the oldest (lowest id) pending record of `stream`.
    pub(super) fn head_created(&self, stream: Stream) -> Option<i64> {
        self.by_id
            .values()
            .find(|r| r.stream == stream)
            .map(|r| r.created_ms)
    }

    /// Whether any record passes `expired` (the `max_age` check).
    pub(super) fn any(&self, expired: impl Fn(&PendingRecord) -> bool) -> bool {
        self.by_id.values().any(expired)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (i64, &PendingRecord)> {
        self.by_id.iter().map(|(&id, r)| (id, r))
    }

    pub(super) fn clear(&mut self) {
        *self = Pending::default();
    }
}
