//! The HJ 212 TCP uplink: spool → HJ 212 packets over one TCP connection to the provincial
//! platform → 9014 data response → spool ack.
//!
//! # Delivery contract
//! The spool is the source of truth, as for every uplink. The uplink reads the oldest waiting
//! records, groups the [`Aggregate`]s of one window (same subject, period and start, wherever
//! they are among the records read together) into one 2051/2061/2031 packet (split over
//! PNUM/PNO when long) and poll batches into 2011 packets, sends them one packet at a time and
//! acks the records in the spool only when every packet of the group has been answered by a 9014
//! with the same QN (when the station asks for acknowledgements, Flag bit A; without it, a packet
//! leaves the spool once written and its records count as [`TcpStats::unconfirmed`], not as
//! delivered: the platform sends nothing that would prove they arrived). Delivery is at-least-once and, window by window, in the
//! spool order of each window's first record.
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
//! # Completeness
//! With [`Hj212TcpUplink::with_completeness`], the values of a group count as delivered when the
//! platform's 9014 for every packet of the group has arrived, never when merely written. Without
//! acknowledgements (`ack = false`) nothing proves a packet arrived, so nothing is counted.
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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::completeness::{self, Completeness, Tally};
use crate::config::defaults;
use crate::model::{Aggregate, Event, EventKind, EventPhase, Period, Record, Timestamp, Value};
use crate::publish::backoff::Backoff;
use crate::publish::encode::hj212::{
    self, EncodeError, Packet, ParseOptions, Scan, Station, Table,
};
use crate::spool::{SpoolError, SpoolHandle, StoredRecord};

/// Stored closed windows, for the platform's history requests (the history store implements it).
pub trait HistorySource: Send + Sync {
    /// The closed windows of `period` whose start lies in `begin..=end`, oldest first, each as the
    /// aggregates of one subject and window. Called on a blocking thread.
    fn windows(&self, period: Period, begin: Timestamp, end: Timestamp) -> Vec<Vec<Aggregate>>;
}

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
    completeness: Option<Arc<Completeness>>,
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
            cfg,
            table,
            spool,
            stats: Arc::new(watch::Sender::new(TcpStats::default())),
            last_qn_ms: 0,
            history: None,
            events: None,
            completeness: None,
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
        self.completeness = Some(completeness);
        self
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
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = Vec::with_capacity(4096);
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
                // Idle: wait for new records or a parked MN's turn while watching the socket.
                let wake = self.next_wake();
                let sleep = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => return LinkEnd::Shutdown,
                    () = sleep => {}
                    r = appended.changed() => if r.is_err() {
                        return LinkEnd::Spool(SpoolError::Closed);
                    },
                    r = rd.read_buf(&mut buf) => match r {
                        Ok(0) => return LinkEnd::Failed("platform closed the connection".into()),
                        Ok(_) => {
                            if let Err(e) = self.serve_incoming(&mut buf, &mut wr, None).await {
                                return e;
                            }
                        }
                        Err(e) => return LinkEnd::Failed(format!("read: {e}")),
                    },
                }
                continue;
            };
            for group in self.groups(&records) {
                if !group.packets.is_empty() && self.is_parked(&group.mn) {
                    continue;
                }
                let mut outcome = Ok(());
                for packet in &group.packets {
                    outcome = self
                        .deliver(packet, &mut rd, &mut wr, &mut buf, shutdown)
                        .await;
                    if outcome.is_err() {
                        break;
                    }
                }
                match outcome {
                    Ok(()) => {}
                    Err(LinkEnd::Unanswered(why)) => {
                        self.park(&group.mn, &why);
                        if !answered_here {
                            // Nothing was answered on this connection: the link is at fault.
                            return LinkEnd::Failed(why);
                        }
                        continue;
                    }
                    Err(end) => return end,
                }
                let n = group.ids.len() as u64;
                if let Err(e) = self.spool.ack(group.ids).await {
                    return e.into();
                }
                let sent = !group.packets.is_empty();
                if sent {
                    answered_here = true;
                    self.lane_delivered(&group.mn);
                    if self.cfg.station.ack
                        && let Some(c) = &self.completeness
                    {
                        c.delivered(&self.cfg.name, &group.tallies);
                    }
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
            head = last;
        }
    }

    fn is_parked(&self, mn: &str) -> bool {
        self.lanes.get(mn).is_some_and(|l| l.parked_until.is_some())
    }

    /// Park `mn` after its packet went unanswered (see the module documentation).
    fn park(&mut self, mn: &str, why: &str) {
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
    fn unpark_due(&mut self) -> bool {
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
    fn next_wake(&self) -> Option<Instant> {
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
    fn report_waits(&mut self) {
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
    fn lane_delivered(&mut self, mn: &str) {
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

    fn publish_parked(&self, why: Option<&str>) {
        let mut parked: Vec<String> = self
            .lanes
            .iter()
            .filter(|(_, l)| l.parked_until.is_some())
            .map(|(mn, _)| mn.clone())
            .collect();
        parked.sort();
        self.stats.send_modify(|s| {
            s.parked = parked;
            if let Some(why) = why {
                s.last_error = Some(why.to_owned());
            }
        });
    }

    fn event(
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

    /// Send one packet and wait for its 9014, resending after OverTime up to ReCount times.
    async fn deliver(
        &mut self,
        packet: &str,
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
        buf: &mut Vec<u8>,
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
                wr.write_all(packet.as_bytes()).await?;
                wr.flush().await
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
                if self.serve_incoming(buf, wr, qn.as_deref()).await? {
                    return Ok(());
                }
                let until = stopping.map_or(deadline, |s| s.min(deadline));
                let read = tokio::time::timeout_at(until, rd.read_buf(buf));
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
    async fn serve_incoming(
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

    async fn send(&self, wr: &mut OwnedWriteHalf, packet: &str) -> Result<(), LinkEnd> {
        wr.write_all(packet.as_bytes())
            .await
            .map_err(|e| LinkEnd::Failed(format!("write: {e}")))
    }

    fn encode_or_fail<T>(result: Result<T, EncodeError>) -> Result<T, LinkEnd> {
        result.map_err(|e| LinkEnd::Failed(format!("encode answer: {e}")))
    }

    /// Answer one platform request (see the module documentation).
    async fn answer_request(
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

    /// A QN instant strictly after the previous one, so QNs are unique per exchange.
    fn next_qn(&mut self) -> Timestamp {
        let ms = Timestamp::now().0.max(self.last_qn_ms + 1);
        self.last_qn_ms = ms;
        Timestamp(ms)
    }

    fn station_for(&self, subject: Option<&str>) -> Station {
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
    fn groups(&mut self, records: &[StoredRecord]) -> Vec<Group> {
        enum Pending {
            Window(Vec<(i64, Aggregate)>),
            Done(Group),
        }
        let mut pending: Vec<Pending> = Vec::new();
        let mut open: HashMap<(Arc<str>, Period, Timestamp), usize> = HashMap::new();
        for r in records {
            let decoded = crate::publish::body::decode(&r.body).ok();
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
                    if self.completeness.is_some() {
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

    fn window_group(&mut self, window: Vec<(i64, Aggregate)>) -> Group {
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
        if self.completeness.is_some() {
            group.tallies = aggs
                .into_iter()
                .filter_map(|a| completeness::tally(&Record::Aggregate(a)))
                .collect();
        }
        group
    }
}
