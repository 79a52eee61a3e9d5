//! The sender's reads and publishes: each lane filled from the spool up to `max_inflight`,
//! records prepared (topic, payload, historical flag, size check) and published, HJ 212 windows
//! grouped into one message.

use std::sync::Arc;

use rumqttc::{PublishOptions, QoS};
use tokio::time::Instant;

use super::*;
use crate::codec::Envelope;
use crate::codec::hj212_message::Hj212Messages;
use crate::codec::json;
use crate::codec::topic::{self};
use crate::completeness::{self, Tally};
use crate::config::{Encoding, Stream};
use crate::model::{Record, Timestamp};
use crate::spool::{Decoded, StoredRecord};

impl Sender<'_> {
    /// Publish fresh records first, then backlog records as far as the replay rate allows, until
    /// the in-flight window is full.
    pub(super) async fn fill(&mut self) {
        if self.state.fresh_more() {
            let room = self.state.room();
            self.fill_lane(Lane::Fresh, room).await;
        }
        if self.state.backlog_more() && self.conn.is_some() {
            let room = self.state.room();
            let tokens = self.bucket.available(Instant::now());
            let sent = self.fill_lane(Lane::Backlog, room.min(tokens)).await;
            self.bucket.take(sent);
        }
        self.publish_status();
    }

    /// Read records of one lane after its cursor and publish up to `room` of them; returns how
    /// many were published.
    pub(super) async fn fill_lane(&mut self, lane: Lane, room: usize) -> usize {
        let Some(conn) = self.conn.clone() else {
            return 0;
        };
        if room == 0 {
            return 0;
        }
        let cursor = self.state.cursor(lane);
        let limit = room;
        let Some(records) = self.read_lane(lane, cursor, limit).await else {
            return 0;
        };
        let exhausted = records.len() < limit;
        let mut cursor = cursor;
        let mut stopped_early = false;
        let mut lane_done = false;
        let mut sent = 0usize;
        let mut records = records.into_iter().peekable();
        while let Some((record, decoded)) = records.next() {
            match self.state.step(lane, record.id) {
                Step::EndOfLane => {
                    lane_done = true;
                    break;
                }
                Step::Skip => {
                    cursor = record.id;
                    continue;
                }
                Step::Send => {}
            }
            if sent >= room {
                stopped_early = true;
                break;
            }
            let outcome = if self.hj212.is_some()
                && self.uplink.cfg.encoding.for_stream(record.stream) == Encoding::Hj212
            {
                let bound = (lane == Lane::Backlog).then_some(self.state.boundary());
                let group = self.hj212_group(record, decoded, &mut records, bound);
                let last = group.last().map(|(r, _)| r.id);
                let outcome = self.publish_hj212(&conn, group).await;
                if !matches!(outcome, Sent::Failed) {
                    cursor = last.unwrap_or(cursor);
                }
                outcome
            } else {
                let id = record.id;
                let outcome = self.publish(&conn, &record, decoded).await;
                if !matches!(outcome, Sent::Failed) {
                    cursor = id;
                }
                outcome
            };
            match outcome {
                Sent::Published => sent += 1,
                Sent::Rejected | Sent::Nothing => {}
                Sent::Failed => {
                    // The connection is going away; wait for the driver to hand over a new one.
                    self.publish_failed();
                    stopped_early = true;
                    break;
                }
            }
        }
        let more = !lane_done && (stopped_early || !exhausted);
        self.set_lane(lane, cursor, more);
        sent
    }

    /// Read up to `limit` records of `lane` after `cursor`. Reading `room` records, no more: each
    /// carries its whole body, so reading more than can be sent costs a copy per record. Records
    /// skipped as already in flight or acked (after a rewind) leave the lane `more`, and the next
    /// fill reads on from the cursor. On a read error the lane waits for the next append or
    /// connection change (`None`).
    async fn read_lane(
        &mut self,
        lane: Lane,
        cursor: i64,
        limit: usize,
    ) -> Option<Vec<(StoredRecord, Option<Decoded>)>> {
        let records = match self.spool.read_after_decoded(cursor, limit).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(uplink = %self.uplink.name, "cannot read the spool: {e}");
                self.uplink
                    .update(|s| s.last_error = Some(format!("spool read: {e}")));
                self.set_lane(lane, cursor, false);
                return None;
            }
        };
        if lane == Lane::Backlog {
            let boundary = self.state.boundary();
            let oldest = records
                .iter()
                .find(|(r, _)| r.id <= boundary)
                .map(|(r, _)| r.created);
            self.uplink.update(|s| s.backlog_oldest = oldest);
        }
        Some(records)
    }

    pub(super) fn set_lane(&mut self, lane: Lane, cursor: i64, more: bool) {
        self.state.set_lane(lane, cursor, more);
        if lane == Lane::Backlog && !more {
            self.uplink.update(|s| s.backlog_oldest = None);
        }
    }

    /// A record is historical when it was already in the spool when the current connection was
    /// established (the backlog: it waited out an outage or a restart), or when it was created
    /// more than [`HISTORICAL_AGE`] ago.
    pub(super) fn is_historical(&self, record: &StoredRecord) -> bool {
        let age_ms = Timestamp::now()
            .unix_ms()
            .saturating_sub(record.created.unix_ms());
        record.id <= self.state.boundary()
            || u128::try_from(age_ms).unwrap_or(0) > HISTORICAL_AGE.as_millis()
    }

    /// The payload, topic and completeness tally of a spooled record; `Err` when its body cannot
    /// be decoded. `decoded` is the record as fan-out appended it (unsealed records only), when
    /// the spool still had it: a poll batch that its body decodes back to exactly is then encoded
    /// from it, without parsing the body again (the payload is the same either way).
    pub(in crate::uplink::mqtt) fn prepare(
        &self,
        record: &StoredRecord,
        decoded: Option<Decoded>,
    ) -> Result<(Vec<u8>, String, Option<Tally>, Timestamp), crate::codec::body::BodyError> {
        let u = self.uplink;
        let historical = self.is_historical(record);
        let envelope = Envelope::new(&u.site, record.stream, record.seq, historical);
        let encoding = u.cfg.encoding.for_stream(record.stream);
        if let Some(decoded) = decoded.as_ref().and_then(|d| d.downcast_ref::<Record>())
            && !record.topic.is_empty()
            && decoded.is_batch_exact_in_json()
        {
            let payload = crate::codec::encode_sealed(encoding, envelope, decoded, None);
            let tally = u
                .report
                .counts_delivery()
                .then(|| completeness::tally(decoded))
                .flatten();
            let acquired = crate::histogram::acquired_at(decoded, record.created);
            return Ok((payload, record.topic.clone(), tally, acquired));
        }
        // A live batch to a JSON payload straight from its body, without building the record: a
        // binary body read in place (every batch of a backlog, see `BatchView`), or a JSON one
        // (spools written by older builds, see `SpooledBatch`).
        let live_json =
            record.stream == Stream::Live && encoding == Encoding::Json && !record.topic.is_empty();
        let tally_of = |device: &str, scheduled, counts| {
            u.report
                .counts_delivery()
                .then(|| completeness::live_tally(Arc::from(device), scheduled, counts))
        };
        if live_json && let Some(batch) = crate::codec::body::live_batch(&record.body) {
            let payload = json::encode_view(envelope, &batch);
            let tally = tally_of(batch.device, batch.scheduled, batch.quality_counts());
            return Ok((payload, record.topic.clone(), tally, batch.scheduled));
        }
        if live_json && let Some(batch) = json::SpooledBatch::parse(&record.body) {
            let payload = batch.encode(envelope);
            let tally = tally_of(&batch.device, batch.scheduled, batch.quality_counts());
            return Ok((payload, record.topic.clone(), tally, batch.scheduled));
        }
        let decoded = crate::codec::body::decode(&record.body)?;
        let seal = crate::ledger::capture::seal_of(&record.body);
        let payload = crate::codec::encode_sealed(encoding, envelope, &decoded, seal.as_ref());
        let topic = if record.topic.is_empty() {
            topic::topic_for(&u.cfg.topics, &u.site, &decoded)
        } else {
            record.topic.clone()
        };
        let tally = u
            .report
            .counts_delivery()
            .then(|| completeness::tally(&decoded))
            .flatten();
        let acquired = crate::histogram::acquired_at(&decoded, record.created);
        Ok((payload, topic, tally, acquired))
    }

    /// A spooled record whose body cannot be decoded (`why`, when the decoder said): logged,
    /// counted as rejected and acked, since it would never become sendable.
    fn reject_undecodable(
        &mut self,
        record: &StoredRecord,
        why: Option<&dyn std::fmt::Display>,
    ) -> Sent {
        let u = self.uplink;
        let why = why.map(|e| format!(": {e}")).unwrap_or_default();
        tracing::warn!(
            uplink = %u.name, id = record.id, stream = record.stream.as_str(), seq = record.seq,
            "dropping a spooled record that cannot be decoded{why}"
        );
        u.update(|s| s.rejected_total += 1);
        self.state.dropped(record.id);
        self.queue_ack(record.id);
        Sent::Rejected
    }

    pub(super) async fn publish(
        &mut self,
        conn: &Conn,
        record: &StoredRecord,
        decoded: Option<Decoded>,
    ) -> Sent {
        let u = self.uplink;
        let (payload, topic, tally, acquired) = match self.prepare(record, decoded) {
            Ok(prepared) => prepared,
            Err(e) => return self.reject_undecodable(record, Some(&e)),
        };
        let size = publish_packet_size(topic.len(), payload.len());
        if size > u.cfg.max_packet_size {
            let reason = format!(
                "its PUBLISH packet of {size} bytes is larger than max_packet_size ({})",
                u.cfg.max_packet_size
            );
            self.set_aside(record.id, reason);
            return Sent::Rejected;
        }
        match conn
            .client
            .publish_tracked(topic, payload, PublishOptions::new(QoS::AtLeastOnce))
            .await
        {
            Ok(notice) => {
                let (id, generation) = (record.id, conn.generation);
                self.state
                    .published(generation, &[(record.id, record.attempts)]);
                self.track(record.id, tally, acquired);
                self.await_puback(id, generation, notice);
                Sent::Published
            }
            Err(e) => {
                tracing::debug!(uplink = %u.name, "publish not queued: {e}");
                Sent::Failed
            }
        }
    }

    /// Keep what the published record `id` counts for until its ack.
    pub(super) fn track(&mut self, id: i64, tally: Option<Tally>, acquired: Timestamp) {
        if let Some(t) = tally {
            self.tallies.insert(id, t);
        }
        self.acquired.insert(id, acquired);
    }

    /// The records that make one HJ 212 message, starting with `first`: a window's aggregates
    /// are appended one after another, so the next records of `rest` that belong to the same
    /// window join it (up to `bound`, the backlog's end, and not those already published). A
    /// record whose body cannot be decoded goes alone, as `None`.
    pub(super) fn hj212_group<I>(
        &self,
        first: StoredRecord,
        decoded: Option<Decoded>,
        rest: &mut std::iter::Peekable<I>,
        bound: Option<i64>,
    ) -> Vec<(StoredRecord, Option<Record>)>
    where
        I: Iterator<Item = (StoredRecord, Option<Decoded>)>,
    {
        let decode = |r: &StoredRecord, d: Option<&Decoded>| -> Option<Record> {
            match d.and_then(|d| d.downcast_ref::<Record>()) {
                Some(record) if crate::ledger::capture::seal_of(&r.body).is_none() => {
                    Some(record.clone())
                }
                _ => crate::codec::body::decode(&r.body).ok(),
            }
        };
        let head = decode(&first, decoded.as_ref());
        let window = head.as_ref().and_then(Hj212Messages::window_of);
        let mut group = vec![(first, head)];
        let Some(window) = window else {
            return group;
        };
        while let Some((next, next_decoded)) = rest.peek() {
            let joins = next.stream == group[0].0.stream
                && bound.is_none_or(|b| next.id <= b)
                && !self.state.is_tracked(next.id);
            let record = joins.then(|| decode(next, next_decoded.as_ref())).flatten();
            match record {
                Some(r) if Hj212Messages::window_of(&r).as_ref() == Some(&window) => {
                    let (next, _) = rest.next().expect("peeked");
                    group.push((next, Some(r)));
                }
                _ => break,
            }
        }
        group
    }

    /// Publish the HJ 212 message of `group` (see [`Sender::hj212_group`]): its first record is
    /// tracked, the others ride with it.
    pub(super) async fn publish_hj212(
        &mut self,
        conn: &Conn,
        group: Vec<(StoredRecord, Option<Record>)>,
    ) -> Sent {
        let u = self.uplink;
        let ids: Vec<i64> = group.iter().map(|(r, _)| r.id).collect();
        let (leader, leader_record) = &group[0];
        let Some(leader_record) = leader_record else {
            return self.reject_undecodable(leader, None);
        };
        let records: Vec<&Record> = group.iter().filter_map(|(_, r)| r.as_ref()).collect();
        let encoded = match self.hj212.as_mut() {
            Some(messages) => messages.encode(Timestamp::now(), &records),
            None => Ok(Vec::new()),
        };
        let payload = match encoded {
            Ok(payload) => payload,
            Err(e) => {
                for id in ids {
                    self.set_aside(id, format!("it has no HJ 212 packet: {e}"));
                }
                return Sent::Rejected;
            }
        };
        if payload.is_empty() {
            for id in ids {
                self.state.dropped(id);
                self.queue_ack(id);
            }
            return Sent::Nothing;
        }
        let topic = if leader.topic.is_empty() {
            topic::topic_for(&u.cfg.topics, &u.site, leader_record)
        } else {
            leader.topic.clone()
        };
        let size = publish_packet_size(topic.len(), payload.len());
        if size > u.cfg.max_packet_size {
            let reason = format!(
                "its PUBLISH packet of {size} bytes is larger than max_packet_size ({})",
                u.cfg.max_packet_size
            );
            for id in ids {
                self.set_aside(id, reason.clone());
            }
            return Sent::Rejected;
        }
        let notice = conn
            .client
            .publish_tracked(topic, payload, PublishOptions::new(QoS::AtLeastOnce))
            .await;
        let notice = match notice {
            Ok(notice) => notice,
            Err(e) => {
                tracing::debug!(uplink = %u.name, "publish not queued: {e}");
                return Sent::Failed;
            }
        };
        let generation = conn.generation;
        let published: Vec<(i64, u32)> = group.iter().map(|(r, _)| (r.id, r.attempts)).collect();
        self.state.published(generation, &published);
        for (record, decoded) in &group {
            let tally = decoded.as_ref().and_then(|d| {
                u.report
                    .counts_delivery()
                    .then(|| completeness::tally(d))
                    .flatten()
            });
            let acquired = decoded.as_ref().map_or(record.created, |d| {
                crate::histogram::acquired_at(d, record.created)
            });
            self.track(record.id, tally, acquired);
        }
        self.await_puback(ids[0], generation, notice);
        Sent::Published
    }
}
