//! The sender's bookkeeping as a state machine without I/O: the two lanes and their cursors, the
//! connection generation, which spool ids are in flight in which generation, which records ride
//! in the message of another, and which record a dead connection is blamed on. The sender feeds
//! it what happened (connected, connection lost, a record read, published, its notice resolved,
//! acks written) and carries out the [`Action`]s it returns against the spool; nothing here
//! touches the spool, the client or the clock, so every rule of the module documentation of
//! `uplink::mqtt` about lanes, generations and blame is tested here synchronously.
//!
//! rumqttc hands out one notice per publish rather than its packet id, so a publish is known by
//! the spool id of its record (the first record of an HJ 212 message, whose others ride with it)
//! and the generation it went out in.

use std::collections::HashMap;

/// Where an id stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tracked {
    /// Published in this generation; its notice has not resolved.
    InFlight(u64),
    /// PUBACKed (or dropped, or set aside); waiting for the batched spool write.
    Acked,
}

/// The two read positions of a connection: records appended after the CONNACK (fresh) and the
/// records that were already waiting then (backlog).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::uplink::mqtt) enum Lane {
    Fresh,
    Backlog,
}

/// What a lane does with a record it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Acked, or in flight on the current connection: pass over it.
    Skip,
    /// Publish it.
    Send,
    /// A backlog read reached the fresh records: the backlog lane is done.
    EndOfLane,
}

/// What the sender has to do against the spool after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// The broker has the record: ack it in the spool with the next batch.
    Ack(i64),
    /// A connection ended with the record the oldest unacknowledged publish: count one more
    /// attempt for it in the spool.
    CountAttempt(i64),
    /// `attempts` connections ended on the record: move it to the dead-letter table.
    DeadLetter { id: i64, attempts: u32 },
}

/// The sender's lanes, generations and in-flight records (see the module documentation).
#[derive(Debug)]
pub(in crate::uplink::mqtt) struct SendState {
    /// The generation of the current connection; `None` while there is none.
    generation: Option<u64>,
    /// Ids up to this one were in the spool at the CONNACK: the backlog.
    boundary: i64,
    /// Read fresh records (ids above `boundary`) after this id.
    fresh_cursor: i64,
    /// The spool may hold fresh records after `fresh_cursor` that were not read yet.
    fresh_more: bool,
    /// Read backlog records after this id (up to `boundary`).
    backlog_cursor: i64,
    /// Backlog records after `backlog_cursor` may remain.
    backlog_more: bool,
    tracked: HashMap<i64, Tracked>,
    /// The records that went out in the message of another (the first of a window's aggregates,
    /// with `hj212`), by that record's id: its PUBACK, loss or dead letter is theirs too.
    riders: HashMap<i64, Vec<i64>>,
    max_inflight: usize,
    /// Blamed connections before a record is set aside.
    dead_letter_after: u32,
    /// Publishes so far, numbering each in publish order.
    publish_count: u64,
    /// For each id in flight: its number in publish order.
    publish_no: HashMap<i64, u64>,
    /// The attempts each record in flight had (as read, plus blames counted since).
    attempts: HashMap<i64, u32>,
    /// Per connection generation that lost publishes: the first of them (publish number, id).
    lost_head: HashMap<u64, (u64, i64)>,
}

impl SendState {
    /// Nothing read or sent yet, no connection; the fresh lane reads from the spool's start.
    pub(super) fn new(max_inflight: usize, dead_letter_after: u32) -> SendState {
        SendState {
            generation: None,
            boundary: 0,
            fresh_cursor: 0,
            fresh_more: true,
            backlog_cursor: 0,
            backlog_more: false,
            tracked: HashMap::new(),
            riders: HashMap::new(),
            max_inflight,
            dead_letter_after,
            publish_count: 0,
            publish_no: HashMap::new(),
            attempts: HashMap::new(),
            lost_head: HashMap::new(),
        }
    }

    // --- events ---

    /// A new connection, `generation`, with `boundary` the last id appended at its CONNACK: the
    /// spool splits into the backlog (ids up to it, read again from the start) and the fresh
    /// lane (after it). Records in flight in an older generation are not skipped by either lane,
    /// so they are published again; acked ones are.
    pub(in crate::uplink::mqtt) fn connected(&mut self, generation: u64, boundary: i64) {
        self.generation = Some(generation);
        self.boundary = boundary;
        self.fresh_cursor = boundary;
        self.fresh_more = true;
        self.backlog_cursor = 0;
        self.backlog_more = true;
    }

    /// The connection is gone (or a publish could not be queued on it): nothing is sent until
    /// the next [`SendState::connected`].
    pub(super) fn connection_lost(&mut self) {
        self.generation = None;
    }

    /// Records were appended (or dead letters re-queued): the fresh lane reads on.
    pub(super) fn appended(&mut self) {
        self.fresh_more = true;
    }

    /// One read of `lane` went up to `cursor`; `more` when records after it may remain.
    pub(super) fn set_lane(&mut self, lane: Lane, cursor: i64, more: bool) {
        match lane {
            Lane::Fresh => {
                self.fresh_cursor = cursor;
                self.fresh_more = more;
            }
            Lane::Backlog => {
                self.backlog_cursor = cursor;
                self.backlog_more = more;
            }
        }
    }

    /// `records` (spool id, attempts as read) went out in one message in `generation`: the first
    /// is the one whose notice resolves, the others ride with it.
    pub(super) fn published(&mut self, generation: u64, records: &[(i64, u32)]) {
        for &(id, attempts) in records {
            self.tracked.insert(id, Tracked::InFlight(generation));
            self.publish_count += 1;
            self.publish_no.insert(id, self.publish_count);
            let known = self.attempts.entry(id).or_insert(0);
            *known = (*known).max(attempts);
        }
        if let [(leader, _), rest @ ..] = records {
            if rest.is_empty() {
                self.riders.remove(leader);
            } else {
                self.riders
                    .insert(*leader, rest.iter().map(|(id, _)| *id).collect());
            }
        }
    }

    /// `id` is acked without being published (undecodable, nothing to send): never sent again.
    pub(super) fn dropped(&mut self, id: i64) {
        self.tracked.insert(id, Tracked::Acked);
    }

    /// The PUBACK of `id`'s publish, from any generation: the broker has the record and its
    /// riders, which are acked once. A record already acked (a late PUBACK of an earlier publish
    /// of it) is ignored.
    pub(super) fn puback(&mut self, id: i64) -> Vec<Action> {
        if !matches!(self.tracked.get(&id), Some(Tracked::InFlight(_))) {
            return Vec::new();
        }
        self.tracked.insert(id, Tracked::Acked);
        let mut actions = vec![Action::Ack(id)];
        for rider in self.riders.remove(&id).unwrap_or_default() {
            self.tracked.insert(rider, Tracked::Acked);
            actions.push(Action::Ack(rider));
        }
        actions
    }

    /// The publish of `id` in `generation` ended without its PUBACK. `None` when that publish no
    /// longer decides anything: the record was published again in a later generation, or acked.
    /// Otherwise the record (and its riders) is forgotten, so that a lane reads it again: at once
    /// if `generation` is the current connection (its lane rewinds to it), else after the next
    /// connection's split. Once none of `generation` is left in flight, the first of its lost
    /// publishes is blamed, and set aside when it reached the limit.
    pub(super) fn publish_lost(&mut self, id: i64, generation: u64) -> Option<Vec<Action>> {
        if self.tracked.get(&id) != Some(&Tracked::InFlight(generation)) {
            return None;
        }
        self.tracked.remove(&id);
        let actions = self.blame(id, generation);
        for rider in self.riders.remove(&id).unwrap_or_default() {
            self.tracked.remove(&rider);
        }
        if Some(generation) == self.generation {
            match self.lane_of(id) {
                Lane::Fresh => {
                    self.fresh_cursor = self.fresh_cursor.min(id - 1);
                    self.fresh_more = true;
                }
                Lane::Backlog => {
                    self.backlog_cursor = self.backlog_cursor.min(id - 1);
                    self.backlog_more = true;
                }
            }
        }
        Some(actions)
    }

    /// `id` is never sent again on this run (too large, no HJ 212 form, blamed too often): it and
    /// its riders are to be moved to the dead-letter table. Returns their ids, riders first.
    pub(super) fn set_aside(&mut self, id: i64) -> Vec<i64> {
        let mut ids = self.riders.remove(&id).unwrap_or_default();
        ids.push(id);
        for id in &ids {
            self.tracked.insert(*id, Tracked::Acked);
        }
        ids
    }

    /// `ids` left the spool (acked or moved to the dead-letter table): forget them.
    pub(super) fn forget(&mut self, ids: &[i64]) {
        for id in ids {
            self.tracked.remove(id);
            self.publish_no.remove(id);
            self.attempts.remove(id);
        }
    }

    // --- queries ---

    pub(super) fn generation(&self) -> Option<u64> {
        self.generation
    }

    pub(in crate::uplink::mqtt) fn boundary(&self) -> i64 {
        self.boundary
    }

    pub(super) fn cursor(&self, lane: Lane) -> i64 {
        match lane {
            Lane::Fresh => self.fresh_cursor,
            Lane::Backlog => self.backlog_cursor,
        }
    }

    pub(super) fn fresh_more(&self) -> bool {
        self.fresh_more
    }

    pub(super) fn backlog_more(&self) -> bool {
        self.backlog_more
    }

    pub(super) fn lane_of(&self, id: i64) -> Lane {
        if id > self.boundary {
            Lane::Fresh
        } else {
            Lane::Backlog
        }
    }

    /// What `lane` does with the record `id` it read.
    pub(super) fn step(&self, lane: Lane, id: i64) -> Step {
        if lane == Lane::Backlog && id > self.boundary {
            Step::EndOfLane
        } else if self.skips(id) {
            Step::Skip
        } else {
            Step::Send
        }
    }

    /// A lane that reads `id` passes over it: it is acked (or waits for its spool ack) or in
    /// flight on the current connection.
    pub(super) fn skips(&self, id: i64) -> bool {
        match self.tracked.get(&id) {
            Some(Tracked::Acked) => true,
            Some(Tracked::InFlight(g)) => Some(*g) == self.generation,
            None => false,
        }
    }

    /// `id` is in flight in some generation or waits for its spool ack.
    pub(super) fn is_tracked(&self, id: i64) -> bool {
        self.tracked.contains_key(&id)
    }

    /// Publishes of the current generation still waiting for their PUBACK.
    pub(super) fn outstanding(&self) -> usize {
        let Some(generation) = self.generation else {
            return 0;
        };
        self.tracked
            .values()
            .filter(|t| **t == Tracked::InFlight(generation))
            .count()
    }

    /// Publishes of any generation still waiting for their notice.
    pub(super) fn any_in_flight(&self) -> bool {
        self.tracked
            .values()
            .any(|t| matches!(t, Tracked::InFlight(_)))
    }

    /// Records in flight or waiting for their spool ack (the status's `in_flight`).
    pub(super) fn in_flight(&self) -> usize {
        self.tracked.len()
    }

    /// Every backlog record was read and none is in flight or waiting for its spool ack.
    pub(super) fn backlog_done(&self) -> bool {
        !self.backlog_more && !self.tracked.keys().any(|id| *id <= self.boundary)
    }

    /// The in-flight window has room worth a spool read: nothing is in flight, or at least a
    /// quarter of the window is free. Refilling one slot per PUBACK would cost a spool read per
    /// record under load; waiting for a quarter of the window batches the reads while the other
    /// three quarters keep the link busy.
    pub(super) fn has_room(&self) -> bool {
        let outstanding = self.outstanding();
        outstanding == 0
            || self.max_inflight.saturating_sub(outstanding) >= (self.max_inflight / 4).max(1)
    }

    /// How many more publishes the window takes now.
    pub(super) fn room(&self) -> usize {
        self.max_inflight.saturating_sub(self.outstanding())
    }

    /// A publish of `generation` was lost. Once none of that generation is left in flight, the
    /// first lost one in publish order is blamed (see the module docs of `uplink::mqtt`).
    fn blame(&mut self, id: i64, generation: u64) -> Vec<Action> {
        let no = self.publish_no.get(&id).copied().unwrap_or(u64::MAX);
        let head = self.lost_head.entry(generation).or_insert((no, id));
        if no < head.0 {
            *head = (no, id);
        }
        let pending = self
            .tracked
            .values()
            .any(|t| *t == Tracked::InFlight(generation));
        if pending {
            return Vec::new();
        }
        let Some((_, blamed)) = self.lost_head.remove(&generation) else {
            return Vec::new();
        };
        let attempts = self.attempts.get(&blamed).copied().unwrap_or(0) + 1;
        self.attempts.insert(blamed, attempts);
        let mut actions = vec![Action::CountAttempt(blamed)];
        if attempts >= self.dead_letter_after && !self.tracked.contains_key(&blamed) {
            actions.extend(
                self.set_aside(blamed)
                    .into_iter()
                    .map(|id| Action::DeadLetter { id, attempts }),
            );
        }
        actions
    }
}

#[cfg(test)]
mod tests;
