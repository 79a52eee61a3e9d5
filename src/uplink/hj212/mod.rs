//! The HJ 212 TCP uplink: spool → HJ 212 packets over one TCP connection to the provincial
//! platform → 9014 data response → spool ack.
//!
//! # Delivery contract
//! The spool is the source of truth, as for every uplink. The uplink reads the oldest waiting
//! records, groups the [`Aggregate`](crate::model::Aggregate)s of one window (same subject, period
//! and start, wherever they are among the records read together) into one 2051/2061/2031 packet
//! (split over PNUM/PNO when long) and poll batches into 2011 packets, sends them one packet at a
//! time and acks the records in the spool only when every packet of the group has been answered by
//! a 9014 with the same QN (when the station asks for acknowledgements, Flag bit A; without it, a
//! packet leaves the spool once written and its records count as [`TcpStats::unconfirmed`], not as
//! delivered: the platform sends nothing that would prove they arrived). Delivery is at-least-once
//! and, window by window, in the spool order of each window's first record.
//!
//! # Retries and reconnects
//! A packet not answered within `over_time` is sent again with the same QN, up to `re_count`
//! times (the standard's OverTime/ReCount). When those are used up, or the connection fails or
//! closes, the connection is dropped and a new one is made after a backoff (`reconnect_min`
//! doubling to `reconnect_max`, reset by a connection that delivered something); the unacked
//! group is sent again from the start on the new connection.
//!
//! Records that cannot become HJ 212 (events, metrics, quantities without a factor code) are acked
//! without being sent and counted in [`TcpStats::skipped`]: they would never become sendable. A
//! record the encoder refuses (a station field the standard does not allow, a data segment over
//! its length limit) is acked too, since no retry can change the outcome, but it is a fault, not
//! a normal skip: it is counted in [`TcpStats::encode_failed`] and reported as one
//! `hj212_encode_error` event.
//!
//! # One queue per monitoring point
//! Every packet belongs to the MN of its stack. A platform that has not registered an MN yet
//! never answers that MN's packets, and it must not hold up the other stacks: when a packet's
//! ReCount is used up, its MN is *parked* (its records stay in the spool, unread) and the records
//! of the other MNs behind it are sent. A parked MN is tried again on its own schedule
//! (`reconnect_min` doubling to `reconnect_max`) on the same connection, from its oldest record,
//! so each MN keeps its spool order. The connection itself is rebuilt only when nothing at all
//! was answered on it: then the link, not one MN, is at fault. An MN whose data has waited
//! longer than `max_wait` since its first unanswered packet raises an `hj212_waiting` start
//! event, and an end event once its data is acknowledged again.
//!
//! # Status and completeness
//! The uplink reports the [`UplinkStatus`] every uplink reports ([`Hj212TcpUplink::status`]):
//! connected when a connection is made, disconnected with the reason when it ends; its own
//! counters are [`TcpStats`]. Acked groups go through the delivery hook
//! ([`Reporter::spool_acked`]): with [`Hj212TcpUplink::with_completeness`], the values of a group
//! count as delivered when the platform's 9014 for every packet of the group has arrived, never
//! when merely written. Without acknowledgements (`ack = false`) nothing proves a packet arrived:
//! such records are reported as unconfirmed ([`Reporter::unconfirmed`]) and nothing is counted.
//!
//! # Platform requests
//! Requests (CN 1000–3999) are answered whenever they arrive, also while waiting for a 9014:
//! - wrong MN or PW: 9011 with QnRtn 4 or 3;
//! - time get (1011): 9011 QnRtn 1, a 1011 packet with `SystemTime`, 9012 ExeRtn 1. Setting the
//!   time (1012) is refused (QnRtn 2): the gateway's clock is not the platform's to set;
//! - history (2051/2061/2031 with `BeginTime`/`EndTime`): 9011 QnRtn 1, then the stored windows
//!   from the [`HistorySource`] (one packet or split set per window, carrying the request's QN,
//!   without acknowledgement), then 9012 with ExeRtn 1, or 100 when there was no data. Without a
//!   history source: QnRtn 2;
//! - anything else: 9011 QnRtn 2.

mod exchange;
mod groups;
mod lanes;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::codec::hj212::{Station, Table};
use crate::completeness::{Completeness, Tally};
use crate::config::defaults;
use crate::history::HistorySource;
use crate::model::{EventKind, EventPhase, Record, Timestamp, Value};
use crate::spool::{SpoolError, SpoolHandle};
use crate::uplink::backoff::Backoff;
use crate::uplink::status::{LinkState, Reporter, UplinkStatus};

/// Settings of one HJ 212 TCP uplink.
#[derive(Debug, Clone)]
pub struct Hj212TcpConfig {
    /// Platform address, `host:port`.
    pub platform: String,
    /// Station header (ST, PW, default MN, ack flag, local time offset).
    pub station: Station,
    /// MN per subject (stack), when stacks are separate monitoring points.
    pub mn_by_subject: HashMap<String, String>,
    /// How long to wait for a 9014 before sending again (OverTime).
    pub over_time: Duration,
    /// How many times a packet is sent again before the connection is given up (ReCount).
    pub re_count: u32,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
    /// Records read from the spool at a time.
    pub batch: usize,
    /// How long an MN's data may wait unacknowledged before an `hj212_waiting` event.
    pub max_wait: Duration,
    /// The uplink's name, in its events and completeness counts.
    pub name: String,
    /// After the shutdown signal, how long the packet on the wire may still wait for its 9014
    /// (it is not sent again; unacknowledged records stay in the spool). The agent gives its
    /// `grace_period`.
    pub shutdown_grace: Duration,
}

impl Hj212TcpConfig {
    /// The configuration's defaults of an HJ 212 uplink (the standard's examples: OverTime 5 s,
    /// ReCount 3).
    pub fn new(platform: impl Into<String>, station: Station) -> Hj212TcpConfig {
        Hj212TcpConfig {
            platform: platform.into(),
            station,
            mn_by_subject: HashMap::new(),
            over_time: defaults::HJ212_OVER_TIME,
            re_count: defaults::HJ212_RE_COUNT,
            reconnect_min: defaults::HJ212_RECONNECT_MIN,
            reconnect_max: defaults::HJ212_RECONNECT_MAX,
            batch: 256,
            max_wait: defaults::HJ212_MAX_WAIT,
            name: "hj212".into(),
            shutdown_grace: Duration::from_secs(3),
        }
    }
}

/// What stops the uplink.
#[derive(Debug, thiserror::Error)]
pub enum Hj212TcpError {
    /// The spool failed or was closed.
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
}

/// Counters of the uplink, published on a `watch`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Connections made.
    pub connects: u64,
    /// Packets written (including resends).
    pub packets_sent: u64,
    /// Packets sent again after OverTime.
    pub resends: u64,
    /// Spool records acked after the platform acknowledged them (9014).
    pub delivered: u64,
    /// Spool records acked once written, without acknowledgement (`ack = false`): sent, but not
    /// known to have arrived, so not counted as delivered.
    pub unconfirmed: u64,
    /// Spool records acked without sending (nothing to say in HJ 212).
    pub skipped: u64,
    /// Spool records acked without sending because the encoder refused them.
    pub encode_failed: u64,
    /// MNs parked now because the platform did not answer their last packet.
    pub parked: Vec<String>,
    /// The last link error.
    pub last_error: Option<String>,
}

/// Why a connection ended.
#[derive(Debug)]
enum LinkEnd {
    Shutdown,
    Failed(String),
    /// ReCount used up for a packet of this MN.
    Unanswered(String),
    Spool(SpoolError),
}

impl From<SpoolError> for LinkEnd {
    fn from(e: SpoolError) -> Self {
        LinkEnd::Spool(e)
    }
}

/// The HJ 212 TCP uplink task.
pub struct Hj212TcpUplink {
    cfg: Hj212TcpConfig,
    table: Arc<Table>,
    spool: SpoolHandle,
    stats: Arc<watch::Sender<TcpStats>>,
    last_qn_ms: i64,
    history: Option<Arc<dyn HistorySource>>,
    events: Option<mpsc::Sender<Record>>,
    /// The status every uplink reports, and the completeness accounting the platform's 9014s
    /// count in.
    report: Reporter,
    /// Acquisition to the platform's 9014 of each delivered record.
    publish_latency: Arc<crate::histogram::Histogram>,
    /// Per MN: parked or waiting. Kept across connections.
    lanes: HashMap<String, Lane>,
}

/// The delivery state of one MN.
#[derive(Debug)]
struct Lane {
    /// Not tried again before this instant; `None`: sendable.
    parked_until: Option<Instant>,
    /// The length of its parks.
    backoff: Backoff,
    /// Since when its oldest undelivered packet has gone unanswered.
    waiting_since: Instant,
    /// Whether the `hj212_waiting` start event was raised for this wait.
    reported: bool,
}

/// The connection to the platform and what was received on it but not read yet.
struct Wire {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: Vec<u8>,
}

/// One group of spool records and the packets that carry it.
struct Group {
    ids: Vec<i64>,
    packets: Vec<String>,
    /// The MN the packets are addressed to.
    mn: String,
    /// What the group counts for in completeness once acknowledged.
    tallies: Vec<Tally>,
    /// When its records were acquired (publish latency).
    acquired: Vec<Timestamp>,
    /// Why the encoder refused the group, if it did.
    encode_error: Option<String>,
}

impl Hj212TcpUplink {
    /// An uplink over `spool` with a code table.
    pub fn new(cfg: Hj212TcpConfig, table: Arc<Table>, spool: SpoolHandle) -> Hj212TcpUplink {
        Hj212TcpUplink {
            report: Reporter::new(&cfg.name),
            cfg,
            table,
            spool,
            stats: Arc::new(watch::Sender::new(TcpStats::default())),
            last_qn_ms: 0,
            history: None,
            events: None,
            publish_latency: Arc::default(),
            lanes: HashMap::new(),
        }
    }

    /// Report `hj212_encode_error` and `hj212_waiting` events on `events` (never waiting: an
    /// event that finds the channel full is logged instead).
    pub fn with_events(mut self, events: mpsc::Sender<Record>) -> Hj212TcpUplink {
        self.events = Some(events);
        self
    }

    /// Count the time from each delivered record's acquisition to the platform's 9014 in
    /// `histogram` (with `ack = true` only: without it nothing proves a record arrived).
    pub fn with_publish_latency(
        mut self,
        histogram: Arc<crate::histogram::Histogram>,
    ) -> Hj212TcpUplink {
        self.publish_latency = histogram;
        self
    }

    /// Count the values the platform acknowledged as delivered by this uplink.
    pub fn with_completeness(mut self, completeness: Arc<Completeness>) -> Hj212TcpUplink {
        self.report = self.report.with_completeness(completeness);
        self
    }

    /// Report on `status` (shared with an earlier instance of the same uplink, like
    /// [`Hj212TcpUplink::with_stats`]).
    pub fn with_status(mut self, status: Arc<watch::Sender<UplinkStatus>>) -> Hj212TcpUplink {
        self.report = self.report.with_status(status);
        self
    }

    /// The status every uplink reports: connected once a connection is made, disconnected with
    /// the reason when it is lost, the records acked (delivered and skipped), unconfirmed and
    /// refused by the encoder.
    pub fn status(&self) -> watch::Receiver<UplinkStatus> {
        self.report.subscribe()
    }

    /// The status's sender, for the supervisor and a rebuilt instance (see
    /// [`Hj212TcpUplink::with_status`]).
    pub fn status_sender(&self) -> Arc<watch::Sender<UplinkStatus>> {
        self.report.sender()
    }

    /// Publish the counters on `stats` (shared with an earlier instance of the same uplink, so a
    /// rebuilt uplink continues its counts).
    pub fn with_stats(mut self, stats: Arc<watch::Sender<TcpStats>>) -> Hj212TcpUplink {
        self.stats = stats;
        self
    }

    /// The counters' sender, to hand to a rebuilt instance (see [`Hj212TcpUplink::with_stats`]).
    pub fn stats_sender(&self) -> Arc<watch::Sender<TcpStats>> {
        self.stats.clone()
    }

    /// Answer the platform's history requests from `source`.
    pub fn with_history(mut self, source: Arc<dyn HistorySource>) -> Hj212TcpUplink {
        self.history = Some(source);
        self
    }

    /// The counters.
    pub fn stats(&self) -> watch::Receiver<TcpStats> {
        self.stats.subscribe()
    }

    /// Run until `shutdown` is cancelled (records not yet acknowledged stay in the spool).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Hj212TcpError> {
        self.run_once(&shutdown).await
    }

    /// Run until `shutdown` is cancelled or the spool fails; may be called again after an error
    /// (the supervisor does, after a backoff): every session starts again from the spool.
    pub async fn run_once(&mut self, shutdown: &CancellationToken) -> Result<(), Hj212TcpError> {
        let mut backoff = Backoff::new(self.cfg.reconnect_min, self.cfg.reconnect_max);
        loop {
            let connect = tokio::time::timeout(
                self.cfg.over_time,
                TcpStream::connect(self.cfg.platform.as_str()),
            );
            let result = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = connect => r,
            };
            let end = match result {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    self.stats.send_modify(|s| s.connects += 1);
                    self.report.update(|s| {
                        s.state = LinkState::Connected;
                        s.connects += 1;
                    });
                    tracing::info!(platform = %self.cfg.platform, "HJ 212 platform connected");
                    let sent = |s: &TcpStats| s.delivered + s.unconfirmed;
                    let sent_before = sent(&self.stats.borrow());
                    let end = self.session(stream, shutdown).await;
                    if sent(&self.stats.borrow()) > sent_before {
                        backoff.reset();
                    }
                    end
                }
                Ok(Err(e)) => LinkEnd::Failed(format!("connect: {e}")),
                Err(_) => LinkEnd::Failed("connect: timed out".into()),
            };
            match end {
                LinkEnd::Shutdown => return Ok(()),
                LinkEnd::Spool(e) => return Err(e.into()),
                LinkEnd::Failed(why) | LinkEnd::Unanswered(why) => {
                    tracing::warn!(platform = %self.cfg.platform, error = %why, "HJ 212 link down");
                    self.report.update(|s| {
                        s.state = LinkState::Disconnected(why.clone());
                        s.last_error = Some(why.clone());
                    });
                    self.stats.send_modify(|s| s.last_error = Some(why));
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    async fn session(&mut self, stream: TcpStream, shutdown: &CancellationToken) -> LinkEnd {
        let (rd, wr) = stream.into_split();
        let mut wire = Wire {
            rd,
            wr,
            buf: Vec::with_capacity(4096),
        };
        let mut appended = self.spool.appended();
        // Every record up to `head` was acked or belongs to an MN parked now; an MN that is due
        // again sends `head` back to 0, so its oldest record is read first.
        let mut head = 0;
        let mut answered_here = false;
        loop {
            // A parked MN gets its turn once this connection has proved itself with another MN's
            // acknowledgement, or when nothing else is waiting (below); otherwise a reconnect
            // would hand the connection to the unanswered MN first, every time.
            if answered_here && self.unpark_due() {
                head = 0;
            }
            self.report_waits();
            appended.borrow_and_update();
            let records = match self.spool.read_after(head, self.cfg.batch).await {
                Ok(r) => r,
                Err(e) => return e.into(),
            };
            let Some(last) = records.last().map(|r| r.id) else {
                if self.unpark_due() {
                    head = 0;
                    continue;
                }
                if let Err(end) = self.idle(&mut wire, &mut appended, shutdown).await {
                    return end;
                }
                continue;
            };
            for group in self.groups(&records) {
                if let Err(end) = self
                    .send_group(group, &mut wire, &mut answered_here, shutdown)
                    .await
                {
                    return end;
                }
            }
            head = last;
        }
    }

    /// Nothing to send: wait for new records or a parked MN's turn while watching the socket
    /// (and answering the platform's requests).
    async fn idle(
        &mut self,
        wire: &mut Wire,
        appended: &mut watch::Receiver<i64>,
        shutdown: &CancellationToken,
    ) -> Result<(), LinkEnd> {
        let wake = self.next_wake();
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return Err(LinkEnd::Shutdown),
            () = sleep => {}
            r = appended.changed() => if r.is_err() {
                return Err(LinkEnd::Spool(SpoolError::Closed));
            },
            r = wire.rd.read_buf(&mut wire.buf) => match r {
                Ok(0) => return Err(LinkEnd::Failed("platform closed the connection".into())),
                Ok(_) => {
                    self.serve_incoming(&mut wire.buf, &mut wire.wr, None).await?;
                }
                Err(e) => return Err(LinkEnd::Failed(format!("read: {e}"))),
            },
        }
        Ok(())
    }

    /// Send one group's packets, each answered before the next, then ack its records and count
    /// them. A group whose MN is parked is left in the spool; one that goes unanswered parks its
    /// MN, or ends the connection when nothing was answered on it yet.
    async fn send_group(
        &mut self,
        mut group: Group,
        wire: &mut Wire,
        answered_here: &mut bool,
        shutdown: &CancellationToken,
    ) -> Result<(), LinkEnd> {
        if !group.packets.is_empty() && self.is_parked(&group.mn) {
            return Ok(());
        }
        let mut outcome = Ok(());
        for packet in &group.packets {
            outcome = self.deliver(packet, wire, shutdown).await;
            if outcome.is_err() {
                break;
            }
        }
        match outcome {
            Ok(()) => {}
            Err(LinkEnd::Unanswered(why)) => {
                self.park(&group.mn, &why);
                if !*answered_here {
                    // Nothing was answered on this connection: the link is at fault.
                    return Err(LinkEnd::Failed(why));
                }
                return Ok(());
            }
            Err(end) => return Err(end),
        }
        let n = group.ids.len() as u64;
        self.spool.ack(std::mem::take(&mut group.ids)).await?;
        if !group.packets.is_empty() {
            *answered_here = true;
        }
        self.account(&group, n);
        Ok(())
    }

    /// Count an acked group: delivered (and its latency), unconfirmed, refused by the encoder
    /// (with its event) or skipped.
    fn account(&mut self, group: &Group, n: u64) {
        let sent = !group.packets.is_empty();
        if sent {
            self.lane_delivered(&group.mn);
            if self.cfg.station.ack {
                let now = Timestamp::now();
                for t in &group.acquired {
                    self.publish_latency.observe_between(*t, now);
                }
            }
        }
        if let Some(why) = &group.encode_error {
            self.event(
                EventKind::Hj212EncodeError,
                EventPhase::Instant,
                &group.mn,
                vec![(Arc::from("records"), Value::UInt(n))],
                format!(
                    "{n} record(s) for MN {} cannot be encoded and were skipped: {why}",
                    group.mn
                ),
            );
        }
        let failed = group.encode_error.is_some();
        let ack = self.cfg.station.ack;
        if sent && ack {
            self.report.spool_acked(n, &group.tallies);
        } else if sent {
            self.report.unconfirmed(n);
        } else if failed {
            self.report.update(|s| s.rejected_total += n);
        } else {
            self.report.spool_acked(n, &[]);
        }
        self.stats.send_modify(|s| {
            if sent && ack {
                s.delivered += n;
            } else if sent {
                s.unconfirmed += n;
            } else if failed {
                s.encode_failed += n;
            } else {
                s.skipped += n;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SpoolConfig;

    #[tokio::test]
    async fn a_link_lost_again_for_the_same_reason_shows_disconnected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let platform = listener.local_addr().unwrap().to_string();
        // A platform that closes every connection at once.
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                drop(conn);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let spool =
            SpoolHandle::open(&dir.path().join("hj212.db"), &SpoolConfig::default()).unwrap();
        let station = Station {
            st: 31,
            pw: "123456".into(),
            mn: "QHAL0000000000000000GTC1".into(),
            ack: true,
            utc_offset_min: 480,
        };
        let mut cfg = Hj212TcpConfig::new(platform, station);
        cfg.reconnect_min = Duration::from_millis(10);
        cfg.reconnect_max = Duration::from_millis(20);
        let uplink = Hj212TcpUplink::new(cfg, Arc::new(Table::hj212_2017()), spool);
        let mut status = uplink.status();
        let stop = CancellationToken::new();
        let run = tokio::spawn(uplink.run(stop.clone()));
        let closed = LinkState::Disconnected("platform closed the connection".into());
        for connects in 1..=3 {
            let lost = tokio::time::timeout(
                Duration::from_secs(5),
                status.wait_for(|s| s.connects >= connects && s.state == closed),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            assert!(
                lost,
                "connection {connects} lost, status {:?}",
                status.borrow().state
            );
        }
        stop.cancel();
        run.await.unwrap().unwrap();
    }
}
