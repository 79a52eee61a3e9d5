//! The delivery state of each MN: parking an MN the platform does not answer, its turn to be
//! tried again, and the `hj212_waiting` events of an MN whose data waits too long.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Hj212TcpUplink, Lane};
use crate::model::{Event, EventKind, EventPhase, Record, Timestamp, Value};
use crate::uplink::backoff::Backoff;

impl Hj212TcpUplink {
    pub(super) fn is_parked(&self, mn: &str) -> bool {
        self.lanes.get(mn).is_some_and(|l| l.parked_until.is_some())
    }

    /// Park `mn` after its packet went unanswered (see the module documentation).
    pub(super) fn park(&mut self, mn: &str, why: &str) {
        let now = Instant::now();
        let (min, max) = (self.cfg.reconnect_min, self.cfg.reconnect_max);
        let lane = self.lanes.entry(mn.to_owned()).or_insert_with(|| Lane {
            parked_until: None,
            backoff: Backoff::new(min, max),
            waiting_since: now,
            reported: false,
        });
        let delay = lane.backoff.next_delay();
        lane.parked_until = Some(now + delay);
        tracing::warn!(mn, retry_in = ?delay, error = why, "HJ 212: MN parked, the others go on");
        self.publish_parked(Some(why));
    }

    /// Unpark the MNs whose turn has come; true when there was one.
    pub(super) fn unpark_due(&mut self) -> bool {
        let now = Instant::now();
        let mut any = false;
        for lane in self.lanes.values_mut() {
            if lane.parked_until.is_some_and(|t| t <= now) {
                lane.parked_until = None;
                any = true;
            }
        }
        any
    }

    /// The earliest instant a parked MN is due or a wait reaches `max_wait`.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        self.lanes
            .values()
            .flat_map(|l| {
                let waited = (!l.reported).then_some(l.waiting_since + self.cfg.max_wait);
                [l.parked_until, waited]
            })
            .flatten()
            .min()
    }

    /// Raise `hj212_waiting` for every MN that has waited longer than `max_wait`.
    pub(super) fn report_waits(&mut self) {
        let now = Instant::now();
        let due: Vec<(String, Duration)> = self
            .lanes
            .iter_mut()
            .filter(|(_, l)| {
                !l.reported && now.duration_since(l.waiting_since) >= self.cfg.max_wait
            })
            .map(|(mn, l)| {
                l.reported = true;
                (mn.clone(), now.duration_since(l.waiting_since))
            })
            .collect();
        for (mn, waited) in due {
            self.event(
                EventKind::Hj212Waiting,
                EventPhase::Start,
                &mn,
                vec![(Arc::from("waited_s"), Value::UInt(waited.as_secs()))],
                format!(
                    "the platform has not acknowledged MN {mn} for {}",
                    humantime::format_duration(Duration::from_secs(waited.as_secs()))
                ),
            );
        }
    }

    /// `mn`'s data was acknowledged: it is no longer waiting.
    pub(super) fn lane_delivered(&mut self, mn: &str) {
        let Some(lane) = self.lanes.remove(mn) else {
            return;
        };
        if lane.reported {
            let waited = Instant::now().duration_since(lane.waiting_since);
            self.event(
                EventKind::Hj212Waiting,
                EventPhase::End,
                mn,
                vec![(Arc::from("waited_s"), Value::UInt(waited.as_secs()))],
                format!("the platform acknowledges MN {mn} again"),
            );
        }
        self.publish_parked(None);
    }

    pub(super) fn publish_parked(&self, why: Option<&str>) {
        let mut parked: Vec<String> = self
            .lanes
            .iter()
            .filter(|(_, l)| l.parked_until.is_some())
            .map(|(mn, _)| mn.clone())
            .collect();
        parked.sort();
        if let Some(why) = why {
            self.report.update(|s| s.last_error = Some(why.to_owned()));
        }
        self.stats.send_modify(|s| {
            s.parked = parked;
            if let Some(why) = why {
                s.last_error = Some(why.to_owned());
            }
        });
    }

    pub(super) fn event(
        &self,
        kind: EventKind,
        phase: EventPhase,
        mn: &str,
        mut attributes: Vec<(Arc<str>, Value)>,
        message: String,
    ) {
        tracing::warn!(uplink = %self.cfg.name, %kind, mn, "{message}");
        let Some(events) = &self.events else {
            return;
        };
        attributes.insert(0, (Arc::from("mn"), Value::Text(mn.to_owned())));
        let event = Record::Event(Event {
            kind: kind.clone(),
            subject: Arc::from(format!("{}/{mn}", self.cfg.name)),
            phase,
            ts: Timestamp::now(),
            attributes,
            message,
        });
        if events.try_send(event).is_err() {
            tracing::warn!(uplink = %self.cfg.name, %kind, "event channel full or closed; event not recorded");
        }
    }
}
