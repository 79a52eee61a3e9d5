//! The exchange on the wire: a packet sent and resent until its 9014, the platform's packets
//! taken out of the receive buffer, and the answers to its requests (time, history, the rest).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Hj212TcpUplink, LinkEnd, Wire};
use crate::codec::hj212::{self, EncodeError, Packet, ParseOptions, Scan};
use crate::model::{Aggregate, Timestamp};

impl Hj212TcpUplink {
    /// Send one packet and wait for its 9014, resending after OverTime up to ReCount times.
    pub(super) async fn deliver(
        &mut self,
        packet: &str,
        wire: &mut Wire,
        shutdown: &CancellationToken,
    ) -> Result<(), LinkEnd> {
        let qn = hj212::parse(packet.as_bytes(), &self.table, &ParseOptions::default())
            .expect("the encoder's packets parse")
            .qn;
        for attempt in 0..=self.cfg.re_count {
            if attempt > 0 {
                self.stats.send_modify(|s| s.resends += 1);
            }
            let write = async {
                wire.wr.write_all(packet.as_bytes()).await?;
                wire.wr.flush().await
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Err(LinkEnd::Shutdown),
                r = write => r.map_err(|e| LinkEnd::Failed(format!("write: {e}")))?,
            }
            self.stats.send_modify(|s| s.packets_sent += 1);
            if !self.cfg.station.ack {
                return Ok(());
            }
            let deadline = Instant::now() + self.cfg.over_time;
            // After the shutdown signal the packet on the wire still gets its 9014, until the end
            // of the grace period and without a resend: a record the platform acknowledged is
            // not sent again on the next start.
            let mut stopping: Option<Instant> = None;
            loop {
                if self
                    .serve_incoming(&mut wire.buf, &mut wire.wr, qn.as_deref())
                    .await?
                {
                    return Ok(());
                }
                let until = stopping.map_or(deadline, |s| s.min(deadline));
                let read = tokio::time::timeout_at(until, wire.rd.read_buf(&mut wire.buf));
                tokio::select! {
                    () = shutdown.cancelled(), if stopping.is_none() => {
                        stopping = Some(Instant::now() + self.cfg.shutdown_grace);
                    }
                    r = read => match r {
                        Err(_) if stopping.is_some() => return Err(LinkEnd::Shutdown),
                        Err(_) => break, // OverTime: send again
                        Ok(Ok(0)) => {
                            return Err(LinkEnd::Failed("platform closed the connection".into()));
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(LinkEnd::Failed(format!("read: {e}"))),
                    },
                }
            }
        }
        Err(LinkEnd::Unanswered(format!(
            "no 9014 after {} sends of QN {}",
            self.cfg.re_count + 1,
            qn.as_deref().unwrap_or("-")
        )))
    }

    /// Take every complete packet out of `buf`; true when one is the 9014 for `awaiting`.
    pub(super) async fn serve_incoming(
        &self,
        buf: &mut Vec<u8>,
        wr: &mut OwnedWriteHalf,
        awaiting: Option<&str>,
    ) -> Result<bool, LinkEnd> {
        let mut acked = false;
        loop {
            match hj212::scan(buf) {
                Scan::Incomplete => return Ok(acked),
                Scan::Skip(n) => {
                    buf.drain(..n);
                }
                Scan::Frame(n) => {
                    let frame: Vec<u8> = buf.drain(..n).collect();
                    let packet = match hj212::parse(&frame, &self.table, &ParseOptions::default()) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(error = %e, "HJ 212: bad packet from the platform");
                            continue;
                        }
                    };
                    if packet.cn == self.table.commands.data_response {
                        if awaiting.is_some() && packet.qn.as_deref() == awaiting {
                            acked = true;
                        }
                        continue;
                    }
                    if (1000..4000).contains(&packet.cn) {
                        self.answer_request(&packet, wr).await?;
                    }
                }
            }
        }
    }

    pub(super) async fn send(&self, wr: &mut OwnedWriteHalf, packet: &str) -> Result<(), LinkEnd> {
        wr.write_all(packet.as_bytes())
            .await
            .map_err(|e| LinkEnd::Failed(format!("write: {e}")))
    }

    pub(super) fn encode_or_fail<T>(result: Result<T, EncodeError>) -> Result<T, LinkEnd> {
        result.map_err(|e| LinkEnd::Failed(format!("encode answer: {e}")))
    }

    /// Answer one platform request (see the module documentation).
    pub(super) async fn answer_request(
        &self,
        request: &Packet,
        wr: &mut OwnedWriteHalf,
    ) -> Result<(), LinkEnd> {
        let t = &*self.table;
        let rtn = |code| Self::encode_or_fail(hj212::request_response(t, request, code));
        let ours = request.mn == self.cfg.station.mn
            || self.cfg.mn_by_subject.values().any(|mn| *mn == request.mn);
        let Some(qn) = request.qn.as_deref() else {
            return self.send(wr, &rtn(hj212::qn_rtn::WRONG_QN)?).await;
        };
        if !ours {
            return self.send(wr, &rtn(hj212::qn_rtn::WRONG_MN)?).await;
        }
        if request.pw != self.cfg.station.pw {
            return self.send(wr, &rtn(hj212::qn_rtn::WRONG_PW)?).await;
        }
        let mut station = self.cfg.station.clone();
        station.mn = request.mn.clone();
        station.ack = false;
        if request.cn == t.commands.get_time {
            self.send(wr, &rtn(hj212::qn_rtn::READY)?).await?;
            let now = Timestamp::now();
            self.send(
                wr,
                &Self::encode_or_fail(hj212::system_time(t, &station, qn, now))?,
            )
            .await?;
            let done = Self::encode_or_fail(hj212::execution_result(t, request, 1))?;
            return self.send(wr, &done).await;
        }
        let history = match hj212::history_request(t, request, station.utc_offset_min) {
            Ok(Some(h)) => h,
            Ok(None) => {
                tracing::info!(cn = request.cn, "HJ 212: platform request not served");
                return self.send(wr, &rtn(hj212::qn_rtn::REJECTED)?).await;
            }
            Err(e) => return self.send(wr, &rtn(e.qn_rtn())?).await,
        };
        let Some(source) = self.history.clone() else {
            return self.send(wr, &rtn(hj212::qn_rtn::REJECTED)?).await;
        };
        self.send(wr, &rtn(hj212::qn_rtn::READY)?).await?;
        let windows = tokio::task::spawn_blocking(move || {
            source.windows(history.period, history.begin, history.end)
        })
        .await
        .unwrap_or_default();
        let mut answered = 0;
        for window in windows {
            let Some(first) = window.first() else {
                continue;
            };
            if self.station_for(Some(&first.subject)).mn != request.mn {
                continue;
            }
            let known: Vec<Aggregate> = window
                .into_iter()
                .filter(|a| t.factor(&a.quantity).is_some())
                .collect();
            if known.is_empty() {
                continue;
            }
            for packet in Self::encode_or_fail(hj212::encode_window_qn(t, &station, qn, &known))? {
                self.send(wr, &packet).await?;
            }
            answered += 1;
        }
        let exe_rtn = if answered > 0 { 1 } else { 100 };
        let done = Self::encode_or_fail(hj212::execution_result(t, request, exe_rtn))?;
        self.send(wr, &done).await
    }
}
