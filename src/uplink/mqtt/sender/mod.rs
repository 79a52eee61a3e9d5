//! The sender: reads the spool in two lanes (fresh and backlog), publishes at QoS 1 through the
//! current connection and acks in the spool on PUBACK (see the module docs of `uplink::mqtt`).
//! What is in flight in which generation, what to read next and what to send again is decided by
//! [`SendState`], a state machine without I/O; this is the driver around it that reads the
//! spool, publishes, waits for the notices and writes the acks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::codec::hj212_message::Hj212Messages;
use crate::codec::topic::{self};
use crate::completeness::Tally;
use crate::config::Stream;
use crate::model::{Event as ModelEvent, EventKind, EventPhase, Record, Timestamp, Value};
use crate::spool::{NewRecord, SpoolHandle};
use crate::uplink::RunError;

mod acks;
mod fill;
mod state;

use state::{Action, Lane, SendState, Step};

// === impl Sender ===

/// The result a notice waiter reports: id, generation it was published in, outcome.
pub(super) type NoticeOutcome = (i64, u64, Result<(), rumqttc::PublishNoticeError>);

/// Kv key of the per-stream drop counts already reported in an outage event.
pub(super) const REPORTED_DROPS_KEY: &str = "uplink.reported_drops";

pub(super) struct Sender<'a> {
    uplink: &'a MqttUplink,
    spool: SpoolHandle,
    conn_rx: watch::Receiver<Option<Conn>>,
    conn: Option<Conn>,
    /// Lanes, generations and what is in flight.
    pub(super) state: SendState,
    /// Backlog records not yet acked (estimate: spool depth at the CONNACK minus backlog acks).
    backlog_left: u64,
    /// When the link was last lost (or the uplink started), for the outage event.
    down_since: Timestamp,
    bucket: TokenBucket,
    drain: DrainRate,
    /// What each published record counts for in the completeness accounting, until its ack.
    tallies: HashMap<i64, Tally>,
    /// When each published record was acquired, until its ack (publish latency).
    acquired: HashMap<i64, Timestamp>,
    /// One future per publish awaiting its notice, polled by the sender's own task: a task
    /// spawned per publish cost a spawn, a trip through the scheduler and a join per PUBLISH
    /// (docs/PERFORMANCE.md, "one write per PUBLISH").
    waiters: FuturesUnordered<BoxFuture<'static, NoticeOutcome>>,
    to_ack: Vec<i64>,
    /// Ids whose publish ended without a PUBACK, to be counted in the spool's `attempts` with the
    /// next ack flush. A successful send is not written: the ack deletes the row anyway, and
    /// rewriting a whole row (body included) per publish cost a write transaction per refill.
    failed_sends: Vec<i64>,
    ack_deadline: Option<Instant>,
    /// When acks were last written to the spool (see [`acks::flush_early`]).
    last_ack_flush: Instant,
    /// Records to move to the dead-letter table with the next flush, with their reason.
    to_dead: Vec<(i64, String)>,
    /// Dead letters in the spool when last counted (`None`: not counted yet). Only this process
    /// sets records aside, so while it is zero `smeltwatch spool requeue` has nothing to flag and
    /// the periodic re-queue check is skipped (see [`requeue_check_due`]).
    dead_letters: Option<u64>,
    /// `encoding = "hj212"` on some stream: the messages' encoder.
    hj212: Option<Hj212Messages>,
}

impl<'a> Sender<'a> {
    pub(super) fn new(uplink: &'a MqttUplink, conn_rx: watch::Receiver<Option<Conn>>) -> Self {
        Sender {
            uplink,
            spool: uplink.spool.clone(),
            conn_rx,
            conn: None,
            state: SendState::new(
                usize::from(uplink.cfg.max_inflight),
                uplink.dead_letter_after,
            ),
            backlog_left: 0,
            down_since: Timestamp::now(),
            bucket: TokenBucket::new(uplink.cfg.replay_rate),
            drain: DrainRate::new(),
            tallies: HashMap::new(),
            acquired: HashMap::new(),
            waiters: FuturesUnordered::new(),
            to_ack: Vec::new(),
            failed_sends: Vec::new(),
            ack_deadline: None,
            last_ack_flush: Instant::now(),
            to_dead: Vec::new(),
            dead_letters: None,
            hj212: uplink
                .cfg
                .encoding
                .hj212
                .as_ref()
                .map(|h| Hj212Messages::new(h, uplink.hj212_mn_by_subject.clone())),
        }
    }

    /// Something can be published right now.
    pub(super) fn can_fill(&mut self) -> bool {
        self.conn.is_some()
            && self.state.has_room()
            && (self.state.fresh_more()
                || (self.state.backlog_more() && self.bucket.available(Instant::now()) > 0))
    }

    /// The publish on `conn` failed: the connection is going away. Nothing is sent until the
    /// driver hands over the next one.
    pub(super) fn publish_failed(&mut self) {
        self.conn = None;
        self.state.connection_lost();
    }

    /// Send until `shutdown`, then drain within the grace period (setting `deadline` to its
    /// end). `Err` when the spool closed first.
    pub(super) async fn run(
        mut self,
        shutdown: &CancellationToken,
        deadline: &std::sync::OnceLock<Instant>,
    ) -> Result<(), RunError> {
        let mut ended = Ok(());
        let mut appended = self.spool.appended();
        self.refresh_dead_letters().await;
        let mut requeue_check = tokio::time::interval(REQUEUE_CHECK_INTERVAL);
        requeue_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer each for the ack flush and the replay token, moved only when their deadline
        // moves. A `sleep_until` made afresh on every turn of the loop (each PUBACK is one) enters
        // tokio's timer wheel again each time, and an entry earlier than the driver's next wake
        // writes to the runtime's eventfd: about twenty system calls a second for nothing at 20
        // devices (docs/PERFORMANCE.md, "the sender re-armed its timers on every PUBACK").
        let ack_timer = sleep_until(far_future());
        tokio::pin!(ack_timer);
        let token_timer = sleep_until(far_future());
        tokio::pin!(token_timer);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if self.can_fill() {
                self.fill().await;
                continue;
            }
            self.publish_status();
            // The backlog waits for replay tokens only when it is the one thing left to send.
            let token_wait =
                (self.conn.is_some() && self.state.backlog_more() && self.state.has_room())
                    .then(|| self.bucket.next_token_at());
            arm(ack_timer.as_mut(), self.ack_deadline);
            arm(token_timer.as_mut(), token_wait);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = self.conn_rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.on_connection_change().await;
                }
                Some(outcome) = self.waiters.next(), if !self.waiters.is_empty() => {
                    self.on_notice(outcome);
                }
                changed = appended.changed() => {
                    if changed.is_err() {
                        tracing::warn!(uplink = %self.uplink.name, "spool closed; uplink stops sending");
                        ended = Err(RunError::SpoolClosed);
                        break;
                    }
                    self.state.appended();
                }
                () = &mut ack_timer, if self.ack_deadline.is_some() => {
                    self.flush_acks().await;
                }
                () = &mut token_timer, if token_wait.is_some() => {}
                _ = requeue_check.tick(), if requeue_check_due(self.conn.is_some(), self.dead_letters) => {
                    self.take_requeued().await;
                }
            }
            // A waiter per publish until its notice is taken: none left is nothing in flight.
            if self.to_ack.len() >= ACK_FLUSH_IDS
                || (!self.to_ack.is_empty()
                    && acks::flush_early(
                        self.to_ack.len(),
                        !self.waiters.is_empty(),
                        self.last_ack_flush.elapsed(),
                    ))
            {
                self.flush_acks().await;
            }
        }
        let until = *deadline.get_or_init(|| Instant::now() + self.uplink.shutdown_grace);
        // The last fifth (at most 500 ms) is kept for the offline status and DISCONNECT.
        let reserve = (self.uplink.shutdown_grace / 5).min(Duration::from_millis(500));
        self.drain(until - reserve).await;
        ended
    }

    pub(super) async fn on_connection_change(&mut self) {
        let next = self.conn_rx.borrow_and_update().clone();
        let new_generation = next.as_ref().map(|c| c.generation);
        if next.is_none() && self.conn.is_some() {
            self.down_since = Timestamp::now();
        }
        let is_new = new_generation.is_some() && new_generation != self.state.generation();
        // Dropping the old client lets its event loop's channel close, so its notices fail.
        self.conn = next;
        match new_generation {
            None => self.state.connection_lost(),
            Some(generation) if is_new => self.on_connected(generation).await,
            Some(_) => {}
        }
    }

    /// A new connection: report budget drops, then split the spool into the backlog (everything
    /// waiting now, replayed at `replay_rate`) and fresh records (sent as they come).
    pub(super) async fn on_connected(&mut self, generation: u64) {
        let now = Timestamp::now();
        // Tallies of publishes that failed are taken again when the records are sent again.
        let state = &self.state;
        self.tallies.retain(|id, _| state.is_tracked(*id));
        self.acquired.retain(|id, _| state.is_tracked(*id));
        // Re-queued dead letters join the backlog of this connection.
        self.take_requeued().await;
        let boundary = *self.spool.appended().borrow();
        self.state.connected(generation, boundary);
        self.backlog_left = match self.spool.stats().await {
            Ok(stats) => stats.records,
            Err(_) => 0,
        };
        self.bucket.reset(Instant::now());
        self.drain = DrainRate::new();
        // After the boundary: the outage event is fresh news about the past, sent first.
        self.report_outage(now).await;
    }

    /// If the byte budget dropped records since the last report, append one `outage` event to the
    /// `events` stream of this spool, naming the drops per stream and the outage window. The
    /// reported counts are kept in the spool's kv store, so each drop is reported once (a crash
    /// between the append and the kv write reports it twice, never zero times).
    pub(super) async fn report_outage(&mut self, now: Timestamp) {
        let u = self.uplink;
        let dropped = match self.spool.dropped_per_stream().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(uplink = %u.name, "cannot read the spool's drop counters: {e}");
                return;
            }
        };
        let reported: HashMap<Stream, u64> =
            match self.spool.kv_get(REPORTED_DROPS_KEY.to_owned()).await {
                Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
                Ok(None) => HashMap::new(),
                Err(e) => {
                    tracing::warn!(uplink = %u.name, "cannot read the reported drop counters: {e}");
                    return;
                }
            };
        let new: Vec<(Stream, u64)> = dropped
            .iter()
            .map(|(s, n)| (*s, n.saturating_sub(reported.get(s).copied().unwrap_or(0))))
            .collect();
        let total: u64 = new.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return;
        }
        let event = outage_event(&u.name, self.down_since, now, &new);
        let record = Record::Event(event);
        let body = crate::codec::body::encode(&record);
        let new_record = NewRecord {
            stream: Stream::Events,
            topic: topic::topic_for(&u.cfg.topics, &u.site, &record),
            body,
            created: now,
        };
        if let Err(e) = self.spool.append(vec![new_record]).await {
            tracing::warn!(uplink = %u.name, "cannot spool the outage event: {e}");
            return;
        }
        let counts: HashMap<Stream, u64> = dropped.into_iter().collect();
        let bytes = serde_json::to_vec(&counts).expect("a map of counters always serialises");
        if let Err(e) = self
            .spool
            .kv_set(REPORTED_DROPS_KEY.to_owned(), bytes)
            .await
        {
            tracing::warn!(uplink = %u.name, "cannot store the reported drop counters: {e}");
        }
        tracing::warn!(uplink = %u.name, dropped = total, "the spool budget dropped records during the outage; outage event queued");
    }

    pub(super) fn publish_status(&mut self) {
        let in_flight = self.state.in_flight();
        if self.state.backlog_done() {
            // Every backlog record was sent and acked; the estimate may have counted a few
            // records appended while the connection came up.
            self.backlog_left = 0;
        }
        let backlog = if self.conn.is_some() {
            self.backlog_left
        } else {
            0
        };
        let rate = self.drain.per_second(Instant::now());
        self.uplink.report.update_if(|s| {
            let changed = s.in_flight != in_flight
                || s.backlog_records != backlog
                || s.replay_rate_per_s != rate;
            s.in_flight = in_flight;
            s.backlog_records = backlog;
            s.replay_rate_per_s = rate;
            changed
        });
    }

    /// After the shutdown signal: wait until `deadline` (the end of the grace period) for
    /// outstanding PUBACKs, then write the acks that arrived. Everything else stays in the spool.
    pub(super) async fn drain(mut self, deadline: Instant) {
        while self.state.any_in_flight() {
            tokio::select! {
                _ = sleep_until(deadline) => {
                    tracing::warn!(
                        uplink = %self.uplink.name,
                        "shutdown grace period over with {} publishes unacknowledged; they stay in the spool",
                        self.state.outstanding()
                    );
                    break;
                }
                outcome = self.waiters.next() => match outcome {
                    Some(outcome) => self.on_notice(outcome),
                    None => break,
                },
            }
        }
        self.flush_acks().await;
        self.publish_status();
        self.waiters.clear();
    }
}

/// A counter as an event attribute. `Int`, not `UInt`: `Value` is untagged, so a small `UInt`
/// would come back from the spool as an `Int`.
pub(super) fn count(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The `outage` event: drops per stream between `from` and `to`.
pub(super) fn outage_event(
    uplink: &str,
    from: Timestamp,
    to: Timestamp,
    dropped: &[(Stream, u64)],
) -> ModelEvent {
    let total: u64 = dropped.iter().map(|(_, n)| n).sum();
    let mut attributes: Vec<(Arc<str>, Value)> = dropped
        .iter()
        .map(|(s, n)| (Arc::from(format!("dropped_{}", s.as_str())), count(*n)))
        .collect();
    attributes.push(("dropped_total".into(), count(total)));
    attributes.push(("outage_start".into(), Value::Text(from.to_rfc3339())));
    attributes.push(("outage_end".into(), Value::Text(to.to_rfc3339())));
    let duration_s = (to.unix_ms() - from.unix_ms()).max(0) as f64 / 1000.0;
    attributes.push(("duration_s".into(), Value::Float(duration_s)));
    let per_stream = dropped
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    ModelEvent {
        kind: EventKind::Outage,
        subject: uplink.into(),
        phase: EventPhase::Instant,
        ts: to,
        attributes,
        message: format!(
            "uplink {uplink}: the spool budget dropped {total} records ({per_stream}) between {} and {}",
            from.to_rfc3339(),
            to.to_rfc3339()
        ),
    }
}

/// The `dead_letter` event: one record set aside, and why.
pub(super) fn dead_letter_event(
    uplink: &str,
    ts: Timestamp,
    letter: &crate::spool::DeadLetter,
) -> ModelEvent {
    let attributes: Vec<(Arc<str>, Value)> = vec![
        ("stream".into(), Value::Text(letter.stream.as_str().into())),
        ("seq".into(), count(letter.seq)),
        (
            "spool_id".into(),
            count(u64::try_from(letter.id).unwrap_or(0)),
        ),
        ("attempts".into(), count(u64::from(letter.attempts))),
        ("topic".into(), Value::Text(letter.topic.as_str().into())),
        ("created".into(), Value::Text(letter.created.to_rfc3339())),
        ("reason".into(), Value::Text(letter.reason.as_str().into())),
    ];
    ModelEvent {
        kind: EventKind::DeadLetter,
        subject: uplink.into(),
        phase: EventPhase::Instant,
        ts,
        attributes,
        message: format!(
            "uplink {uplink}: {} record seq {} set aside as a dead letter: {}; \
             `smeltwatch spool dead-letters` lists it, `smeltwatch spool requeue` sends it again",
            letter.stream.as_str(),
            letter.seq,
            letter.reason
        ),
    }
}

/// Bytes of an MQTT 3.1.1 PUBLISH at QoS 1: fixed header byte, remaining length (1 to 4 bytes),
/// topic length and topic, packet id, payload. The size rumqttc compares with its limit.
pub(super) fn publish_packet_size(topic: usize, payload: usize) -> usize {
    let remaining = 2 + topic + 2 + payload;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

pub(super) enum Sent {
    Published,
    Rejected,
    /// Nothing to publish (a record with no HJ 212 form): acked at once, not delivered.
    Nothing,
    Failed,
}

/// Moves `timer` to `deadline` when it is set and differs from the timer's, so that a deadline
/// that stays put keeps its one entry in the timer wheel. A timer whose deadline is not set (its
/// `select!` branch is disabled) is replaced, once, by one parked far away that is never polled
/// and so never enters the wheel.
///
/// Replacing, not [`Sleep::reset`](tokio::time::Sleep::reset): a reset to a later deadline only
/// marks the wheel's entry as extended, and the wheel still wakes the runtime where the old
/// deadline's slot falls (up to 64 ms before it, for a 250 ms ack deadline) to file the entry
/// again further on; a dropped `Sleep` leaves the wheel at once. The same holds for a deadline
/// that moves later.
fn arm(mut timer: std::pin::Pin<&mut tokio::time::Sleep>, deadline: Option<Instant>) {
    match deadline {
        Some(at) if timer.deadline() != at => timer.set(sleep_until(at)),
        None if timer.deadline() < Instant::now() + DISARMED_BEYOND => {
            timer.set(sleep_until(far_future()));
        }
        _ => {}
    }
}

/// Whether the periodic re-queue check runs: only while connected, and only while dead letters
/// may exist (counted, or not counted yet). `smeltwatch spool requeue` flags dead letters that
/// this process set aside; with none, a check would only cost a round trip to the spool thread
/// and a SQL query every [`REQUEUE_CHECK_INTERVAL`].
fn requeue_check_due(connected: bool, dead_letters: Option<u64>) -> bool {
    connected && dead_letters != Some(0)
}

/// A timer whose deadline is further away than this counts as disarmed (see [`arm`]).
const DISARMED_BEYOND: Duration = Duration::from_secs(3600);

pub(super) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_timer_no_longer_wanted_is_moved_out_of_the_way_and_one_wanted_is_set() {
        let timer = tokio::time::sleep(ACK_FLUSH_INTERVAL);
        tokio::pin!(timer);
        // A flush happened before the timer's deadline: the timer must not wake anyone then.
        arm(timer.as_mut(), None);
        assert!(timer.deadline() >= Instant::now() + DISARMED_BEYOND);
        let parked = timer.deadline();
        arm(timer.as_mut(), None);
        assert_eq!(timer.deadline(), parked, "a parked timer is left alone");
        let at = Instant::now() + Duration::from_millis(40);
        arm(timer.as_mut(), Some(at));
        assert_eq!(timer.deadline(), at);
        let later = at + Duration::from_millis(300);
        arm(timer.as_mut(), Some(later));
        assert_eq!(timer.deadline(), later);
        // The armed timer fires at its deadline, not before.
        tokio::time::sleep_until(later - Duration::from_millis(1)).await;
        assert!(timer.as_mut().now_or_never().is_none());
        tokio::time::sleep_until(later).await;
        assert!(timer.as_mut().now_or_never().is_some());
    }

    #[test]
    fn the_requeue_check_runs_while_connected_unless_the_spool_has_no_dead_letters() {
        assert!(requeue_check_due(true, None), "not counted yet");
        assert!(requeue_check_due(true, Some(3)));
        assert!(!requeue_check_due(true, Some(0)));
        assert!(!requeue_check_due(false, Some(3)));
        assert!(!requeue_check_due(false, None));
    }
}
