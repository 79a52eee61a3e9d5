//! The sender's state machine driven by hand: no runtime, no broker, no spool.

use super::*;

/// The sender's fill loop over a spool of ids, without payloads: each lane read after its
/// cursor, up to the window's room, what the state passes over skipped.
struct Sim {
    state: SendState,
    /// Ids in the spool, in order.
    spool: Vec<i64>,
    /// Ids the state said to ack, in order.
    acked: Vec<i64>,
    /// Ids counted as attempts.
    attempts: Vec<i64>,
    /// Ids set aside, with their blame count.
    dead: Vec<(i64, u32)>,
}

impl Sim {
    fn new(records: i64, max_inflight: usize) -> Sim {
        Sim {
            state: SendState::new(max_inflight, 3),
            spool: (1..=records).collect(),
            acked: Vec::new(),
            attempts: Vec::new(),
            dead: Vec::new(),
        }
    }

    /// Read and publish in `lane` as far as the window allows; the ids published.
    fn fill(&mut self, lane: Lane) -> Vec<i64> {
        let generation = self.state.generation().expect("connected");
        let room = self.state.room();
        let mut cursor = self.state.cursor(lane);
        let read: Vec<i64> = self
            .spool
            .iter()
            .copied()
            .filter(|id| *id > cursor)
            .take(room)
            .collect();
        let exhausted = read.len() < room;
        let (mut lane_done, mut stopped_early) = (false, false);
        let mut sent = Vec::new();
        for id in read {
            match self.state.step(lane, id) {
                Step::EndOfLane => {
                    lane_done = true;
                    break;
                }
                Step::Skip => {
                    cursor = id;
                    continue;
                }
                Step::Send => {}
            }
            if sent.len() >= room {
                stopped_early = true;
                break;
            }
            self.state.published(generation, &[(id, 0)]);
            sent.push(id);
            cursor = id;
        }
        self.state
            .set_lane(lane, cursor, !lane_done && (stopped_early || !exhausted));
        sent
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Ack(id) => self.acked.push(id),
                Action::CountAttempt(id) => self.attempts.push(id),
                Action::DeadLetter { id, attempts } => self.dead.push((id, attempts)),
            }
        }
    }

    fn puback(&mut self, id: i64) {
        let actions = self.state.puback(id);
        self.apply(actions);
    }

    fn lost(&mut self, id: i64, generation: u64) -> bool {
        match self.state.publish_lost(id, generation) {
            Some(actions) => {
                self.apply(actions);
                true
            }
            None => false,
        }
    }

    /// The batched spool write: acked and set-aside ids leave the spool.
    fn flush(&mut self) {
        let gone: Vec<i64> = self
            .acked
            .iter()
            .copied()
            .chain(self.dead.iter().map(|(id, _)| *id))
            .collect();
        self.spool.retain(|id| !gone.contains(id));
        self.state.forget(&gone);
    }
}

/// Each id of `acked` once, in any order.
fn once_each(acked: &[i64]) -> Vec<i64> {
    let mut sorted = acked.to_vec();
    sorted.sort_unstable();
    let len = sorted.len();
    sorted.dedup();
    assert_eq!(sorted.len(), len, "acked twice: {acked:?}");
    sorted
}

#[test]
fn pubacks_in_publish_order_and_out_of_it_ack_each_record_once() {
    let mut sim = Sim::new(6, 8);
    sim.state.connected(1, 0);
    assert_eq!(sim.fill(Lane::Fresh), [1, 2, 3, 4, 5, 6]);
    assert_eq!(sim.state.outstanding(), 6);
    for id in [1, 2, 3] {
        sim.puback(id);
    }
    for id in [6, 4, 5] {
        sim.puback(id);
    }
    assert_eq!(sim.acked, [1, 2, 3, 6, 4, 5]);
    assert_eq!(sim.state.outstanding(), 0);
    assert_eq!(
        sim.state.in_flight(),
        6,
        "acked, waiting for the spool write"
    );
    // A second PUBACK for the same publish changes nothing.
    sim.puback(4);
    assert_eq!(once_each(&sim.acked), [1, 2, 3, 4, 5, 6]);
    sim.flush();
    assert_eq!(sim.state.in_flight(), 0);
    assert!(sim.spool.is_empty());
    assert!(
        !sim.state.fresh_more(),
        "the fresh lane read to the spool's end"
    );
}

#[test]
fn a_dropped_connection_resends_what_was_in_flight_none_lost_none_acked_twice() {
    let mut sim = Sim::new(5, 8);
    sim.state.connected(1, 0);
    assert_eq!(sim.fill(Lane::Fresh), [1, 2, 3, 4, 5]);
    sim.puback(2);
    // The link drops with 1, 3, 4 and 5 in flight; the new connection comes up before their
    // notices fail, and two records are appended after it.
    sim.state.connection_lost();
    assert_eq!(sim.state.outstanding(), 0);
    sim.state.connected(2, 5);
    sim.spool.extend([6, 7]);
    assert_eq!(sim.fill(Lane::Fresh), [6, 7], "fresh records first");
    assert_eq!(
        sim.fill(Lane::Backlog),
        [1, 3, 4, 5],
        "in flight in generation 1: sent again; 2 is acked"
    );
    // Generation 1's notices fail now: they no longer decide anything.
    for id in [1, 3, 4, 5] {
        assert!(!sim.lost(id, 1), "{id}");
    }
    assert!(sim.attempts.is_empty());
    for id in [1, 3, 4, 5, 6, 7] {
        sim.puback(id);
    }
    assert_eq!(once_each(&sim.acked), [1, 2, 3, 4, 5, 6, 7]);
    sim.flush();
    assert!(sim.spool.is_empty(), "nothing lost: {:?}", sim.spool);
}

#[test]
fn notices_that_fail_before_the_reconnect_send_the_records_again_and_blame_the_first() {
    let mut sim = Sim::new(4, 8);
    sim.state.connected(1, 0);
    assert_eq!(sim.fill(Lane::Fresh), [1, 2, 3, 4]);
    sim.puback(1);
    sim.state.connection_lost();
    // The dropped client fails the notices, in any order.
    for id in [4, 2, 3] {
        assert!(sim.lost(id, 1));
    }
    assert_eq!(sim.attempts, [2], "the first lost in publish order");
    sim.state.connected(2, 4);
    assert!(sim.fill(Lane::Fresh).is_empty());
    assert_eq!(sim.fill(Lane::Backlog), [2, 3, 4]);
    for id in [2, 3, 4] {
        sim.puback(id);
    }
    assert_eq!(once_each(&sim.acked), [1, 2, 3, 4]);
}

#[test]
fn a_late_notice_of_an_old_generation_acks_at_most_once_and_rewinds_nothing() {
    let mut sim = Sim::new(3, 8);
    sim.state.connected(1, 0);
    assert_eq!(sim.fill(Lane::Fresh), [1, 2, 3]);
    sim.state.connected(2, 3);
    assert_eq!(sim.fill(Lane::Backlog), [1, 2, 3]);
    // Generation 1's PUBACK of 1 arrives late: the broker has it, whichever publish it was.
    sim.puback(1);
    // Generation 2's PUBACK of the same record is then ignored.
    sim.puback(1);
    assert_eq!(sim.acked, [1]);
    // A PUBACK of generation 1 for a record already acked in generation 2 is ignored too.
    sim.puback(2);
    sim.puback(2);
    assert_eq!(sim.acked, [1, 2]);
    // Generation 1's failure of 3, published again in generation 2: ignored, no rewind.
    let cursor = sim.state.cursor(Lane::Backlog);
    assert!(!sim.lost(3, 1));
    assert_eq!(sim.state.cursor(Lane::Backlog), cursor);
    assert_eq!(sim.state.outstanding(), 1);
    sim.puback(3);
    assert_eq!(once_each(&sim.acked), [1, 2, 3]);
}

#[test]
fn a_loss_on_the_live_connection_rewinds_its_lane_to_the_record() {
    let mut sim = Sim::new(4, 8);
    sim.state.connected(1, 2);
    assert_eq!(sim.fill(Lane::Fresh), [3, 4]);
    assert_eq!(sim.fill(Lane::Backlog), [1, 2]);
    assert!(!sim.state.fresh_more() && !sim.state.backlog_more());
    assert!(sim.lost(3, 1));
    assert_eq!(sim.state.cursor(Lane::Fresh), 2);
    assert!(sim.state.fresh_more());
    assert!(sim.lost(1, 1));
    assert_eq!(sim.state.cursor(Lane::Backlog), 0);
    assert_eq!(sim.fill(Lane::Fresh), [3], "4 is still in flight");
    assert_eq!(sim.fill(Lane::Backlog), [1]);
}

#[test]
fn a_record_blamed_by_enough_connections_is_set_aside() {
    let mut sim = Sim::new(2, 8);
    for generation in 1..=3 {
        sim.state.connected(generation, 2);
        assert_eq!(sim.fill(Lane::Backlog), [1, 2], "generation {generation}");
        sim.state.connection_lost();
        assert!(sim.lost(2, generation));
        assert!(sim.lost(1, generation));
    }
    assert_eq!(sim.attempts, [1, 1, 1]);
    assert_eq!(sim.dead, [(1, 3)]);
    sim.flush();
    sim.state.connected(4, 2);
    assert_eq!(
        sim.fill(Lane::Backlog),
        [2],
        "the one set aside holds nothing up"
    );
    sim.puback(2);
    assert_eq!(sim.acked, [2]);
}

#[test]
fn riders_are_acked_and_lost_with_the_message_they_went_out_in() {
    let mut state = SendState::new(8, 3);
    state.connected(1, 0);
    state.published(1, &[(1, 0), (2, 0), (3, 0)]);
    assert_eq!(
        state.puback(1),
        [Action::Ack(1), Action::Ack(2), Action::Ack(3)]
    );
    state.published(1, &[(4, 0), (5, 0)]);
    assert_eq!(state.publish_lost(4, 1), Some(Vec::new()));
    assert!(!state.is_tracked(4) && !state.is_tracked(5), "read again");
    state.published(1, &[(4, 0), (5, 0)]);
    assert_eq!(state.set_aside(4), [5, 4]);
    assert_eq!(state.step(Lane::Fresh, 5), Step::Skip);
}

#[test]
fn the_window_is_refilled_once_a_quarter_of_it_is_free() {
    let mut sim = Sim::new(20, 8);
    sim.state.connected(1, 0);
    assert_eq!(sim.fill(Lane::Fresh).len(), 8);
    assert!(!sim.state.has_room());
    sim.puback(1);
    assert!(!sim.state.has_room(), "one free slot of eight");
    sim.puback(2);
    assert!(sim.state.has_room());
    assert_eq!(sim.fill(Lane::Fresh), [9, 10]);
}
