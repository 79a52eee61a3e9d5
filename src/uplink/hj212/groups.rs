//! Spool records grouped into packets: the aggregates of one window into one 2051/2061/2031
//! packet (or split set), each poll batch into 2011 packets, addressed to the MN of its stack.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Group, Hj212TcpUplink};
use crate::codec::hj212::{self, Station};
use crate::completeness;
use crate::model::{Aggregate, Period, Record, Timestamp};
use crate::spool::StoredRecord;

impl Hj212TcpUplink {
    /// A QN instant strictly after the previous one, so QNs are unique per exchange.
    pub(super) fn next_qn(&mut self) -> Timestamp {
        let ms = Timestamp::now().0.max(self.last_qn_ms + 1);
        self.last_qn_ms = ms;
        Timestamp(ms)
    }

    pub(super) fn station_for(&self, subject: Option<&str>) -> Station {
        let mut station = self.cfg.station.clone();
        if let Some(mn) = subject.and_then(|s| self.cfg.mn_by_subject.get(s)) {
            station.mn = mn.clone();
        }
        station
    }

    /// Group records into packets: the aggregates of one window (same subject, period and
    /// start) among the records read together form one group, placed where its first aggregate
    /// is (the calculators interleave the windows of several quantities and periods that close
    /// at once); each poll batch is a group of its own; anything else (or nothing encodable)
    /// gives a group without packets.
    pub(super) fn groups(&mut self, records: &[StoredRecord]) -> Vec<Group> {
        enum Pending {
            Window(Vec<(i64, Aggregate)>),
            Done(Group),
        }
        let mut pending: Vec<Pending> = Vec::new();
        let mut open: HashMap<(Arc<str>, Period, Timestamp), usize> = HashMap::new();
        for r in records {
            let decoded = crate::codec::body::decode(&r.body).ok();
            if let Some(Record::Aggregate(a)) = decoded {
                let key = (a.subject.clone(), a.period, a.start);
                match open.get(&key) {
                    Some(&i) => {
                        if let Pending::Window(w) = &mut pending[i] {
                            w.push((r.id, a));
                        }
                    }
                    None => {
                        open.insert(key, pending.len());
                        pending.push(Pending::Window(vec![(r.id, a)]));
                    }
                }
                continue;
            }
            let mut group = Group {
                ids: vec![r.id],
                packets: Vec::new(),
                mn: self.cfg.station.mn.clone(),
                tallies: Vec::new(),
                acquired: Vec::new(),
                encode_error: None,
            };
            match decoded {
                Some(Record::Batch(batch)) => {
                    group.acquired.push(batch.scheduled);
                    let station = self.station_for(Some(&batch.device));
                    let qn = self.next_qn();
                    let record = Record::Batch(batch);
                    match hj212::encode_record(&self.table, &station, qn, &record) {
                        Ok(packets) => group.packets = packets,
                        Err(e) => group.encode_error = Some(e.to_string()),
                    }
                    if self.report.counts_delivery() {
                        group.tallies.extend(completeness::tally(&record));
                    }
                    group.mn = station.mn;
                }
                Some(_) => {}
                None => {
                    tracing::warn!(id = r.id, "HJ 212: spool record is not a record; skipped");
                }
            }
            pending.push(Pending::Done(group));
        }
        // A window is computed, not acquired: its records' time is when they were spooled.
        let spooled: HashMap<i64, Timestamp> = records.iter().map(|r| (r.id, r.created)).collect();
        pending
            .into_iter()
            .map(|p| match p {
                Pending::Window(w) => {
                    let mut g = self.window_group(w);
                    g.acquired = g
                        .ids
                        .iter()
                        .filter_map(|id| spooled.get(id))
                        .copied()
                        .collect();
                    g
                }
                Pending::Done(g) => g,
            })
            .collect()
    }

    pub(super) fn window_group(&mut self, window: Vec<(i64, Aggregate)>) -> Group {
        let ids = window.iter().map(|(id, _)| *id).collect();
        let aggs: Vec<Aggregate> = window
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| {
                let known = self.table.factor(&a.quantity).is_some();
                if !known {
                    tracing::debug!(quantity = %a.quantity, "HJ 212: no factor code; not sent");
                }
                known
            })
            .collect();
        let station = self.station_for(aggs.first().map(|a| &*a.subject));
        let mut group = Group {
            ids,
            packets: Vec::new(),
            mn: station.mn.clone(),
            tallies: Vec::new(),
            acquired: Vec::new(),
            encode_error: None,
        };
        if aggs.is_empty() {
            return group;
        }
        let qn = self.next_qn();
        match hj212::encode_window(&self.table, &station, qn, &aggs) {
            Ok(packets) => group.packets = packets,
            Err(e) => group.encode_error = Some(e.to_string()),
        }
        if self.report.counts_delivery() {
            group.tallies = aggs
                .into_iter()
                .filter_map(|a| completeness::tally(&Record::Aggregate(a)))
                .collect();
        }
        group
    }
}
