//! The records the HTTP side doors see besides raw readings: computed metrics and events.
//!
//! [`RecordFeed`] is a broadcast held in [`LiveState`](crate::live::LiveState). Whoever produces
//! [`Record`]s (fan-out, the calculators) calls [`RecordFeed::send`]; sending never waits and
//! never fails, with or without listeners. The HTTP server's [`collect`] task keeps the latest
//! value of every computed metric and the last [`MAX_EVENTS`] events in a [`Collected`].
//!
//! Invariants: a slow collector loses the oldest records of the broadcast (counted in
//! [`Collected::lagged`]) and never slows the producers down; [`Collected`] is bounded by the
//! number of distinct metrics plus [`MAX_EVENTS`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::model::{Event, Metric, Record};

/// Records buffered per listener before the slowest one starts losing the oldest.
pub const FEED_CAPACITY: usize = 1024;
/// Events kept for the snapshot and the dashboard, newest first.
pub const MAX_EVENTS: usize = 200;

/// A broadcast of records for live displays. `Default` gives a feed of [`FEED_CAPACITY`].
#[derive(Debug, Clone)]
pub struct RecordFeed {
    tx: broadcast::Sender<Record>,
}

impl Default for RecordFeed {
    fn default() -> Self {
        RecordFeed {
            tx: broadcast::Sender::new(FEED_CAPACITY),
        }
    }
}

impl RecordFeed {
    /// Offer a record to every listener; a no-op when there is none. Never waits.
    pub fn send(&self, record: Record) {
        // An error only means that nobody listens, which is normal without an HTTP server.
        let _ = self.tx.send(record);
    }

    /// A new listener that sees every record sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Record> {
        self.tx.subscribe()
    }
}

/// Key of a computed metric: calculator, name and labels in their given order.
pub type MetricKey = (Arc<str>, Arc<str>, Vec<(Arc<str>, Arc<str>)>);

/// What the collector keeps from the feed.
#[derive(Debug, Default)]
pub struct Collected {
    /// Latest value of every computed metric.
    pub metrics: BTreeMap<MetricKey, Metric>,
    /// The last events, newest first.
    pub events: VecDeque<Event>,
    /// Events seen since the server started, by (kind, phase).
    pub event_counts: BTreeMap<(Arc<str>, &'static str), u64>,
    /// Records lost because the collector fell behind the feed.
    pub lagged: u64,
}

impl Collected {
    /// Take one record into account. Live batches are ignored: their readings are in
    /// `LiveState::latest` already.
    pub fn absorb(&mut self, record: Record) {
        match record {
            Record::Batch(_) | Record::Aggregate(_) => {}
            Record::Metrics(batch) => {
                for m in batch.metrics {
                    self.metrics
                        .insert((batch.calc.clone(), m.name.clone(), m.labels.clone()), m);
                }
            }
            Record::Event(event) => {
                let phase = match event.phase {
                    crate::model::EventPhase::Start => "start",
                    crate::model::EventPhase::End => "end",
                    crate::model::EventPhase::Instant => "instant",
                };
                *self
                    .event_counts
                    .entry((Arc::from(event.kind.as_str()), phase))
                    .or_default() += 1;
                self.events.push_front(event);
                self.events.truncate(MAX_EVENTS);
            }
        }
    }
}

/// Keep `collected` up to date from `rx` until `shutdown` fires or the feed closes.
pub async fn collect(
    mut rx: broadcast::Receiver<Record>,
    collected: Arc<Mutex<Collected>>,
    shutdown: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rx.recv() => r,
        };
        let mut c = collected
            .lock()
            .expect("collected lock is never poisoned: holders do not panic");
        match received {
            Ok(record) => c.absorb(record),
            Err(broadcast::error::RecvError::Lagged(n)) => c.lagged += n,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventKind, EventPhase, MetricBatch, Quality, Timestamp};

    fn event(i: i64) -> Record {
        Record::Event(Event {
            kind: EventKind::AnodeEffect,
            subject: "potline1/pot_017".into(),
            phase: if i % 2 == 0 {
                EventPhase::Start
            } else {
                EventPhase::End
            },
            ts: Timestamp(i),
            attributes: vec![],
            message: format!("event {i}"),
        })
    }

    #[test]
    fn keeps_the_latest_metric_and_a_bounded_newest_first_event_list() {
        let mut c = Collected::default();
        for (i, v) in [13_100.0, 13_050.0].into_iter().enumerate() {
            c.absorb(Record::Metrics(MetricBatch {
                calc: "potline".into(),
                ts: Timestamp(i as i64),
                metrics: vec![Metric {
                    name: "dc_energy_kwh_per_t".into(),
                    value: Some(v),
                    unit: "kWh/t".into(),
                    quality: Quality::Good,
                    ts: Timestamp(i as i64),
                    labels: vec![("line".into(), "potline1".into())],
                }],
            }));
        }
        assert_eq!(c.metrics.len(), 1);
        assert_eq!(c.metrics.values().next().unwrap().value, Some(13_050.0));

        for i in 0..(MAX_EVENTS as i64 + 5) {
            c.absorb(event(i));
        }
        assert_eq!(c.events.len(), MAX_EVENTS);
        assert_eq!(c.events[0].ts, Timestamp(MAX_EVENTS as i64 + 4));
        let starts = c.event_counts[&(Arc::from("anode_effect"), "start")];
        let ends = c.event_counts[&(Arc::from("anode_effect"), "end")];
        assert_eq!(starts + ends, MAX_EVENTS as u64 + 5);
    }

    #[tokio::test]
    async fn collector_sees_what_is_sent_after_it_subscribed() {
        let feed = RecordFeed::default();
        feed.send(event(0)); // nobody listens: dropped, no error
        let collected = Arc::new(Mutex::new(Collected::default()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(collect(
            feed.subscribe(),
            collected.clone(),
            shutdown.clone(),
        ));
        feed.send(event(1));
        drop(feed);
        // The feed closed: the collector drains what was sent and stops by itself.
        task.await.unwrap();
        let c = collected.lock().unwrap();
        assert_eq!(c.events.len(), 1);
        assert_eq!(c.events[0].ts, Timestamp(1));
    }
}
