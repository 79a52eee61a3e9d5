//! HJ 212 over MQTT: the text an MQTT uplink with `encoding = "hj212"` publishes.
//!
//! Several provinces take HJ 212-2017 packets over MQTT instead of a TCP link. The packets are
//! the ones the TCP uplink sends (see [`super::hj212`]); what differs is how spool records become
//! messages:
//!
//! - a poll batch is one 2011 real-time packet of its coded points, under the MN of its device
//!   (or the site's MN);
//! - the aggregates of one closed window of one stack (same subject, period and start: the
//!   calculators append them one after another) are one 2051/2061/2031 packet with every
//!   pollutant, as a platform expects one packet per monitoring point and `DataTime`. A platform
//!   that keys minute data on MN and `DataTime` would otherwise take the first pollutant's packet
//!   and drop the others as duplicates;
//! - data longer than one packet allows goes out as consecutive packets in one message, each
//!   with its own `\r\n`, as they would follow each other on a TCP link;
//! - a record with no HJ 212 form (a batch without coded points, a quantity not in the code
//!   table) gives no message.
//!
//! Packets never ask for a 9014 (`Flag` bit A clear): no answer can come back over a broker, and
//! the broker's PUBACK is the acknowledgement.

use std::collections::HashMap;
use std::sync::Arc;

use super::hj212::{self, EncodeError, Station, Table};
use crate::config::Hj212Station;
use crate::model::{Aggregate, Period, Record, Timestamp};

/// What makes records one message: the window of a stack's aggregate.
pub type WindowKey = (Arc<str>, Period, Timestamp);

/// Turns spool records into HJ 212 messages for one uplink.
#[derive(Debug)]
pub struct Hj212Messages {
    table: Arc<Table>,
    station: Station,
    /// MN of a stack or a device that is a monitoring point of its own.
    mn_by_subject: HashMap<String, String>,
    /// The last QN given, so that every message's QN is unique.
    last_qn_ms: i64,
}

impl Hj212Messages {
    /// Messages with the station header of `cfg`; `mn_by_subject` maps stacks and the devices
    /// that measure them to their MN (the stacks of `cfg.mn_by_stack` at least).
    pub fn new(cfg: &Hj212Station, mn_by_subject: HashMap<String, String>) -> Self {
        let mut station = cfg.station.clone();
        station.ack = false;
        Hj212Messages {
            table: cfg.table.clone(),
            station,
            mn_by_subject,
            last_qn_ms: 0,
        }
    }

    /// The window `record` belongs to, when it is an aggregate.
    pub fn window_of(record: &Record) -> Option<WindowKey> {
        match record {
            Record::Aggregate(a) => Some((a.subject.clone(), a.period, a.start)),
            _ => None,
        }
    }

    /// The message of `records`: one poll batch, or the aggregates of one window (anything else
    /// in the slice is left out). Empty when none of it has an HJ 212 form.
    pub fn encode(&mut self, now: Timestamp, records: &[&Record]) -> Result<Vec<u8>, EncodeError> {
        let qn = self.next_qn(now);
        let aggregates: Vec<Aggregate> = records
            .iter()
            .filter_map(|r| match r {
                Record::Aggregate(a) if self.table.factor(&a.quantity).is_some() => Some(a.clone()),
                _ => None,
            })
            .collect();
        let packets = if let Some(first) = aggregates.first() {
            let station = self.station_for(&first.subject);
            hj212::encode_window(&self.table, &station, qn, &aggregates)?
        } else if let Some(Record::Batch(batch)) = records.first() {
            let station = self.station_for(&batch.device);
            hj212::encode_record(&self.table, &station, qn, records[0])?
        } else {
            Vec::new()
        };
        Ok(packets.concat().into_bytes())
    }

    fn station_for(&self, subject: &str) -> Station {
        let mut station = self.station.clone();
        if let Some(mn) = self.mn_by_subject.get(subject) {
            station.mn.clone_from(mn);
        }
        station
    }

    /// A QN instant strictly after the previous one.
    fn next_qn(&mut self, now: Timestamp) -> Timestamp {
        let ms = now.0.max(self.last_qn_ms + 1);
        self.last_qn_ms = ms;
        Timestamp(ms)
    }
}
