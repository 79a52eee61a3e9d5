//! What a session sends: the births, and the spool's records as DDATA, DDEATH and DBIRTH (poll
//! batches) and NDATA (metric batches), each group followed by the UNSUBSCRIBE whose answer proves
//! it arrived, then acked in the spool.

use std::time::Duration;

use rumqttc::{PublishOptions, QoS};
use tokio::time::{Instant, timeout};

use super::session::{Proof, Session, SessionError};
use super::{PROOF_LEVEL, READ_BATCH, STEP_TIMEOUT};
use crate::codec::sparkplug::{self as spb, Change, MessageType};
use crate::completeness::{self, Tally};
use crate::config::Stream;
use crate::model::{MetricBatch, Record, Timestamp};

impl Session<'_> {
    pub(super) async fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
    ) -> Result<(), SessionError> {
        let notice = self
            .client
            .publish_tracked(topic, payload, PublishOptions::new(QoS::AtMostOnce))
            .await
            .map_err(SessionError::Publish)?;
        self.pending.push(notice);
        Ok(())
    }

    /// Wait until every publish so far was written to the socket (QoS 0 notices resolve then).
    pub(super) async fn flushed(&mut self) -> Result<(), SessionError> {
        for notice in self.pending.drain(..) {
            timeout(STEP_TIMEOUT, notice.wait_async())
                .await
                .map_err(|_| SessionError::PublishTimedOut)?
                .map_err(SessionError::NotWritten)?;
        }
        Ok(())
    }

    /// NBIRTH (seq 0) and every DBIRTH; DDEATH after the DBIRTH of a device known dead.
    pub(super) async fn births(&mut self) -> Result<(), SessionError> {
        let up = self.up;
        let now = Timestamp::now();
        let _ = self.seq.birth();
        let nbirth = spb::nbirth_with(
            self.bd_seq,
            &up.model.node,
            self.node.metrics.current(),
            now,
        );
        self.publish(up.topic(MessageType::NBirth, None), spb::encode(&nbirth))
            .await?;
        for (i, dev) in up.model.devices.iter().enumerate() {
            let p = spb::dbirth(
                dev,
                self.node.devices[i].current(),
                self.seq.next_seq(),
                now,
            );
            self.publish(
                up.topic(MessageType::DBirth, Some(&dev.name)),
                spb::encode(&p),
            )
            .await?;
            if self.node.dead[i] {
                let p = spb::ddeath(self.seq.next_seq(), now);
                self.publish(
                    up.topic(MessageType::DDeath, Some(&dev.name)),
                    spb::encode(&p),
                )
                .await?;
            }
        }
        self.flushed().await?;
        up.status_tx.send_modify(|s| {
            s.online = true;
            s.nbirths += 1;
        });
        Ok(())
    }

    /// Send the next spool batch after `cursor`: `Ok(true, _)` when more may be waiting, and the
    /// group's [`Proof`] when it produced messages. A group that produced none (other streams,
    /// figures that are no node metric, no change to report) is acked at once: the messages
    /// before it were proven already.
    pub(super) async fn send_batch(
        &mut self,
        cursor: &mut i64,
        boundary: i64,
    ) -> Result<(bool, Option<Proof>), SessionError> {
        let up = self.up;
        let records = up
            .spool
            .read_after(*cursor, READ_BATCH)
            .await
            .map_err(SessionError::SpoolRead)?;
        let more = records.len() == READ_BATCH;
        let mut ids = Vec::with_capacity(records.len());
        let mut tallies = Vec::new();
        let mut acquired = Vec::new();
        for r in &records {
            if matches!(r.stream, Stream::Live | Stream::Metrics)
                && let Ok(record) = crate::codec::body::decode(&r.body)
            {
                let historical = r.id <= boundary;
                let carried = match &record {
                    Record::Batch(batch) => {
                        self.send_reading_batch(batch, historical).await?;
                        acquired.push(crate::histogram::acquired_at(&record, r.created));
                        true
                    }
                    Record::Metrics(batch) => self.send_metric_batch(batch, historical).await?,
                    _ => false,
                };
                if carried && up.status_tx.report().counts_delivery() {
                    tallies.extend(completeness::tally(&record));
                }
            }
            ids.push(r.id);
            *cursor = r.id;
        }
        // The publishes' own notices only say they were written to the socket: not a proof.
        let sent = !self.pending.is_empty();
        self.pending.clear();
        if !sent {
            // Nothing went out: no publish to time.
            self.settle(ids, &tallies, &[]).await?;
            return Ok((more, None));
        }
        let topic = format!("{}/{PROOF_LEVEL}", up.topic(MessageType::NCmd, None));
        let notice = self
            .client
            .unsubscribe_tracked(topic)
            .await
            .map_err(SessionError::ProofRequest)?;
        let n = ids.len() as u64;
        up.status_tx.send_modify(|s| s.unproven = n);
        Ok((
            more,
            Some(Proof {
                answer: Box::pin(async move {
                    notice
                        .wait_async()
                        .await
                        .map(|_| ())
                        .map_err(SessionError::ProofFailed)
                }),
                deadline: Instant::now() + up.mqtt.keep_alive.max(Duration::from_secs(1)),
                ids,
                tallies,
                acquired,
            }),
        ))
    }

    /// Ack a group in the spool, and count its `live` values as delivered.
    pub(super) async fn settle(
        &mut self,
        ids: Vec<i64>,
        tallies: &[Tally],
        acquired: &[Timestamp],
    ) -> Result<(), SessionError> {
        let up = self.up;
        if ids.is_empty() {
            return Ok(());
        }
        let n = up.spool.ack(ids).await.map_err(SessionError::SpoolAck)?;
        // Latency first: whoever sees `acked_total` grow (a status watcher, a test) finds the
        // group's latencies already counted.
        let now = Timestamp::now();
        for t in acquired {
            up.publish_latency.observe_between(*t, now);
        }
        up.status_tx.send_modify(|s| {
            s.acked_total += n;
            s.unproven = 0;
        });
        up.status_tx.report().spool_acked(n, tallies);
        Ok(())
    }

    pub(super) async fn send_reading_batch(
        &mut self,
        batch: &crate::model::ReadingBatch,
        historical: bool,
    ) -> Result<(), SessionError> {
        let up = self.up;
        let Some(i) = up.model.batch_device(batch) else {
            return Ok(());
        };
        let dev = &up.model.devices[i];
        let topic = |kind| up.topic(kind, Some(&dev.name));
        let now = Timestamp::now();
        if historical {
            let changes = spb::replayed(dev, batch);
            if changes.is_empty() {
                return Ok(());
            }
            let p = spb::ddata(dev, &changes, self.seq.next_seq(), now, true);
            return self
                .publish(topic(MessageType::DData), spb::encode(&p))
                .await;
        }
        // A derived device is never dead: a derived value's bad quality goes out as DATA.
        if dev.derived.is_none() && spb::device_is_dead(batch) {
            if !self.node.dead[i] {
                self.node.dead[i] = true;
                let p = spb::ddeath(self.seq.next_seq(), now);
                self.publish(topic(MessageType::DDeath), spb::encode(&p))
                    .await?;
            }
            return Ok(());
        }
        if self.node.dead[i] {
            self.node.dead[i] = false;
            self.node.devices[i].absorb(dev, batch);
            let p = spb::dbirth(
                dev,
                self.node.devices[i].current(),
                self.seq.next_seq(),
                now,
            );
            return self
                .publish(topic(MessageType::DBirth), spb::encode(&p))
                .await;
        }
        let changes = self.node.devices[i].changes(dev, batch);
        if changes.is_empty() {
            return Ok(());
        }
        let p = spb::ddata(dev, &changes, self.seq.next_seq(), now, false);
        self.publish(topic(MessageType::DData), spb::encode(&p))
            .await
    }

    /// A metric batch as NDATA: its figures that are node metrics, by exception (live) or all
    /// of them (replayed, `is_historical`). `Ok(false)` when none of its figures is a node metric
    /// (a calculator or a derived point the node does not declare): nothing of it is carried.
    pub(super) async fn send_metric_batch(
        &mut self,
        batch: &MetricBatch,
        historical: bool,
    ) -> Result<bool, SessionError> {
        let up = self.up;
        let node = &up.model.node;
        let readings = up.model.node_batch(batch);
        if readings.readings.is_empty() {
            return Ok(false);
        }
        let changes: Vec<Change<'_>> = if historical {
            spb::replayed(node, &readings)
        } else {
            self.node.metrics.changes(node, &readings)
        };
        if !changes.is_empty() {
            let p = spb::ddata(
                node,
                &changes,
                self.seq.next_seq(),
                Timestamp::now(),
                historical,
            );
            self.publish(up.topic(MessageType::NData, None), spb::encode(&p))
                .await?;
        }
        Ok(true)
    }
}
