//! The sender's bookkeeping of notices: PUBACKs into batched spool acks, lost publishes back
//! into their lane, blame counting and dead letters.

use tokio::time::Instant;

use super::*;
use crate::codec::topic::{self};
use crate::completeness::Tally;
use crate::config::Stream;
use crate::model::{Record, Timestamp};
use crate::spool::NewRecord;

impl Sender<'_> {
    pub(super) fn lane_of(&self, id: i64) -> Lane {
        if id > self.boundary {
            Lane::Fresh
        } else {
            Lane::Backlog
        }
    }

    pub(super) fn on_notice(&mut self, (id, generation, result): NoticeOutcome) {
        match (result, self.tracked.get(&id).copied()) {
            (Ok(()), Some(Tracked::InFlight(_))) => {
                // A PUBACK from any generation means the broker has the record.
                self.tracked.insert(id, Tracked::Acked);
                self.queue_ack(id);
                for rider in self.riders.remove(&id).unwrap_or_default() {
                    self.tracked.insert(rider, Tracked::Acked);
                    self.queue_ack(rider);
                }
            }
            (Ok(()), _) => {}
            (Err(reason), Some(Tracked::InFlight(latest))) if latest == generation => {
                tracing::debug!(uplink = %self.uplink.name, id, "publish not acknowledged: {reason}");
                self.tracked.remove(&id);
                self.note_lost(id, generation);
                // Sent again with it (the rewind below reads them again), unless set aside with it.
                for rider in self.riders.remove(&id).unwrap_or_default() {
                    self.tracked.remove(&rider);
                }
                if self.ack_deadline.is_none() {
                    self.ack_deadline = Some(Instant::now() + ACK_FLUSH_INTERVAL);
                }
                if Some(generation) == self.generation() {
                    // Failed on the live connection (it is probably dropping): send it again.
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
                // Otherwise the next connection's rewind picks it up.
            }
            // An older publish of a record that was published again, or already acked.
            (Err(_), _) => {}
        }
    }

    /// A publish of `generation` ended without its PUBACK. Once none of that generation is left
    /// in flight, the first lost one in publish order is blamed (see the module docs).
    pub(super) fn note_lost(&mut self, id: i64, generation: u64) {
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
            return;
        }
        let Some((_, blamed)) = self.lost_head.remove(&generation) else {
            return;
        };
        let attempts = self.attempts.get(&blamed).copied().unwrap_or(0) + 1;
        self.attempts.insert(blamed, attempts);
        self.failed_sends.push(blamed);
        if attempts >= self.uplink.dead_letter_after && !self.tracked.contains_key(&blamed) {
            let last = self
                .uplink
                .report
                .borrow()
                .last_error
                .clone()
                .unwrap_or_else(|| "unknown".into());
            let reason = format!(
                "{attempts} connections ended with it the oldest unacknowledged publish (last: {last})"
            );
            self.set_aside(blamed, reason);
        }
    }

    /// Never send `id` again on this run; move it to the dead-letter table with the next flush.
    pub(super) fn set_aside(&mut self, id: i64, reason: String) {
        for rider in self.riders.remove(&id).unwrap_or_default() {
            self.tracked.insert(rider, Tracked::Acked);
            self.to_dead.push((rider, reason.clone()));
        }
        self.tracked.insert(id, Tracked::Acked);
        self.to_dead.push((id, reason));
        if self.ack_deadline.is_none() {
            self.ack_deadline = Some(Instant::now() + ACK_FLUSH_INTERVAL);
        }
    }

    /// Move the records set aside to the dead-letter table and report each one.
    pub(super) async fn flush_dead_letters(&mut self) {
        if self.to_dead.is_empty() {
            return;
        }
        let u = self.uplink;
        let letters = std::mem::take(&mut self.to_dead);
        let moved = match self.spool.dead_letter(letters.clone()).await {
            Ok(moved) => moved,
            Err(e) => {
                tracing::warn!(uplink = %u.name, "cannot move {} records to the dead-letter table: {e}", letters.len());
                u.update(|s| s.last_error = Some(format!("spool dead letter: {e}")));
                self.to_dead = letters;
                self.ack_deadline = Some(Instant::now() + ACK_FLUSH_INTERVAL);
                return;
            }
        };
        for (id, _) in &letters {
            self.tracked.remove(id);
            self.attempts.remove(id);
            self.publish_no.remove(id);
            self.tallies.remove(id);
            self.acquired.remove(id);
        }
        let backlog = moved.iter().filter(|d| d.id <= self.boundary).count() as u64;
        self.backlog_left = self.backlog_left.saturating_sub(backlog);
        let now = Timestamp::now();
        let mut events = Vec::with_capacity(moved.len());
        for letter in &moved {
            tracing::warn!(
                uplink = %u.name, id = letter.id, stream = letter.stream.as_str(), seq = letter.seq,
                "record set aside as a dead letter: {}", letter.reason
            );
            let record = Record::Event(dead_letter_event(&u.name, now, letter));
            events.push(NewRecord {
                stream: Stream::Events,
                topic: topic::topic_for(&u.cfg.topics, &u.site, &record),
                body: crate::codec::body::encode(&record),
                created: now,
            });
        }
        if let Err(e) = self.spool.append(events).await {
            tracing::warn!(uplink = %u.name, "cannot spool the dead_letter events: {e}");
        }
        self.refresh_dead_letters().await;
    }

    /// Move dead letters that `smeltwatch spool requeue` flagged back into the queue.
    pub(super) async fn take_requeued(&mut self) {
        match self.spool.take_requeued().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(uplink = %self.uplink.name, records = n, "re-queued dead letters");
                self.fresh_more = true;
                self.refresh_dead_letters().await;
            }
            Err(e) => {
                tracing::warn!(uplink = %self.uplink.name, "cannot re-queue dead letters: {e}")
            }
        }
    }

    pub(super) async fn refresh_dead_letters(&mut self) {
        if let Ok(stats) = self.spool.stats().await {
            self.uplink.update(|s| s.dead_letters = stats.dead_letters);
        }
    }

    pub(super) fn queue_ack(&mut self, id: i64) {
        if let Some(t) = self.acquired.remove(&id) {
            self.uplink
                .publish_latency
                .observe_between(t, Timestamp::now());
        }
        self.to_ack.push(id);
        if self.ack_deadline.is_none() {
            self.ack_deadline = Some(Instant::now() + ACK_FLUSH_INTERVAL);
        }
    }

    pub(super) async fn flush_acks(&mut self) {
        self.ack_deadline = None;
        if !self.failed_sends.is_empty() {
            let ids = std::mem::take(&mut self.failed_sends);
            if let Err(e) = self.spool.mark_attempt(ids).await {
                tracing::debug!(uplink = %self.uplink.name, "cannot count failed sends: {e}");
            }
        }
        self.flush_dead_letters().await;
        if self.to_ack.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.to_ack);
        match self.spool.ack(ids.clone()).await {
            Ok(removed) => {
                for id in &ids {
                    self.tracked.remove(id);
                    self.publish_no.remove(id);
                    self.attempts.remove(id);
                }
                // Delivered: the broker acknowledged these and the spool let go of them.
                let delivered: Vec<Tally> = ids
                    .iter()
                    .filter_map(|id| self.tallies.remove(id))
                    .collect();
                let backlog = ids.iter().filter(|id| **id <= self.boundary).count() as u64;
                self.backlog_left = self.backlog_left.saturating_sub(backlog);
                self.drain.add(Instant::now(), backlog);
                self.uplink.report.spool_acked(removed, &delivered);
            }
            Err(e) => {
                // Keep them: the next flush retries. Until then they are not sent again.
                tracing::warn!(uplink = %self.uplink.name, "cannot ack {} records in the spool: {e}", ids.len());
                self.uplink
                    .update(|s| s.last_error = Some(format!("spool ack: {e}")));
                self.to_ack = ids;
                self.ack_deadline = Some(Instant::now() + ACK_FLUSH_INTERVAL);
            }
        }
    }

    /// Wait for the PUBACK of `id`'s publish in `generation` (see [`Sender::on_notice`]).
    pub(super) fn await_puback(
        &mut self,
        id: i64,
        generation: u64,
        notice: rumqttc::PublishNotice,
    ) {
        self.waiters.spawn(async move {
            let result = notice
                .wait_async()
                .await
                .map(drop)
                .map_err(|e| e.to_string());
            (id, generation, result)
        });
    }
}
