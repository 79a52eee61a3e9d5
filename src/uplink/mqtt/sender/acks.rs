//! The sender's notices and spool writes: each notice handed to the state machine and its
//! actions carried out (PUBACKs into batched spool acks, blames and dead letters), then written.

use tokio::time::Instant;

use super::*;
use crate::codec::topic::{self};
use crate::completeness::Tally;
use crate::config::Stream;
use crate::model::{Record, Timestamp};
use crate::spool::NewRecord;

impl Sender<'_> {
    pub(super) fn on_notice(&mut self, (id, generation, result): NoticeOutcome) {
        let actions = match result {
            Ok(()) => self.state.puback(id),
            Err(reason) => match self.state.publish_lost(id, generation) {
                Some(actions) => {
                    tracing::debug!(uplink = %self.uplink.name, id, "publish not acknowledged: {reason}");
                    if self.ack_deadline.is_none() {
                        self.ack_deadline = Some(Instant::now() + ACK_FLUSH_INTERVAL);
                    }
                    actions
                }
                // An older publish of a record that was published again, or already acked.
                None => return,
            },
        };
        self.act(actions);
    }

    /// Carry out what the state machine asked for: acks into the batch, blames and dead letters
    /// for the next flush.
    fn act(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Ack(id) => self.queue_ack(id),
                Action::CountAttempt(id) => self.failed_sends.push(id),
                Action::DeadLetter { id, attempts } => {
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
                    self.dead_letter(id, reason);
                }
            }
        }
    }

    /// Never send `id` (and the records riding with it) again on this run; move them to the
    /// dead-letter table with the next flush.
    pub(super) fn set_aside(&mut self, id: i64, reason: String) {
        for id in self.state.set_aside(id) {
            self.dead_letter(id, reason.clone());
        }
    }

    /// Move `id`, already set aside in the state, to the dead-letter table with the next flush.
    fn dead_letter(&mut self, id: i64, reason: String) {
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
        let ids: Vec<i64> = letters.iter().map(|(id, _)| *id).collect();
        self.state.forget(&ids);
        for id in &ids {
            self.tallies.remove(id);
            self.acquired.remove(id);
        }
        let boundary = self.state.boundary();
        let backlog = moved.iter().filter(|d| d.id <= boundary).count() as u64;
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
                self.state.appended();
                self.refresh_dead_letters().await;
            }
            Err(e) => {
                tracing::warn!(uplink = %self.uplink.name, "cannot re-queue dead letters: {e}")
            }
        }
    }

    pub(super) async fn refresh_dead_letters(&mut self) {
        match self.spool.stats().await {
            Ok(stats) => {
                self.dead_letters = Some(stats.dead_letters);
                self.uplink.update(|s| s.dead_letters = stats.dead_letters);
            }
            // Not counted: the re-queue check runs until a count succeeds.
            Err(_) => self.dead_letters = None,
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
        self.last_ack_flush = Instant::now();
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
                self.state.forget(&ids);
                // Delivered: the broker acknowledged these and the spool let go of them.
                let delivered: Vec<Tally> = ids
                    .iter()
                    .filter_map(|id| self.tallies.remove(id))
                    .collect();
                let boundary = self.state.boundary();
                let backlog = ids.iter().filter(|id| **id <= boundary).count() as u64;
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
        self.waiters.push(Box::pin(async move {
            let result = notice.wait_async().await.map(drop);
            (id, generation, result)
        }));
    }
}

/// Write the acks now rather than at the flush timer: some are waiting, nothing published is still
/// awaiting its PUBACK, and the last write is [`ACK_FLUSH_INTERVAL`] old. After a poll slot's burst
/// the last PUBACK comes a few milliseconds after the PUBLISHes, while the runtime is awake anyway;
/// waiting for the timer instead woke it twice more (the timer wheel moves a deadline that far
/// off down a level first). Records that trickle in, one poll batch at a time behind a gateway,
/// still make at most one write per interval.
pub(super) fn flush_early(waiting: usize, in_flight: bool, since_last: Duration) -> bool {
    waiting > 0 && !in_flight && since_last >= ACK_FLUSH_INTERVAL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_written_early_once_nothing_is_in_flight_and_the_interval_has_passed() {
        let long_ago = ACK_FLUSH_INTERVAL;
        let just_now = ACK_FLUSH_INTERVAL - Duration::from_millis(1);
        assert!(flush_early(20, false, long_ago));
        assert!(flush_early(1, false, Duration::from_secs(3600)));
        // Nothing to write.
        assert!(!flush_early(0, false, long_ago));
        // A PUBACK still to come: it would make a second write right after.
        assert!(!flush_early(20, true, long_ago));
        // Written less than an interval ago: the timer decides, as before.
        assert!(!flush_early(20, false, just_now));
        assert!(!flush_early(20, false, Duration::ZERO));
    }
}
