//! The DL/T 645 poller: one task per meter bus, with the Modbus poller's guarantees.
//!
//! # Schedule
//! Every (meter, poll class) pair is a job on the shared deadline schedule
//! ([`crate::acquisition::Schedule`]): no drift, late deadlines skipped and counted, wall times
//! that follow a stepped clock. A job reads each data identifier of its points once (a demand
//! and its time share one DI) and emits one [`ReadingBatch`] with one reading per point.
//!
//! # One request in flight
//! The bus is half-duplex: one request, its answer (or its timeout), the inter-frame gap, the
//! next request. Bytes buffered before a request are dropped, so nothing left from an earlier
//! exchange is taken as its answer.
//!
//! # Whose answer
//! An answer counts only when it carries the address asked and echoes the DI asked; any other
//! frame (another meter's, the echo of our request on a two-wire line, a late answer to an
//! earlier request) is discarded and counted (`discarded_replies`), and the wait goes on until
//! the exchange's timeout. A frame with a bad checksum ends the exchange at once as a
//! communication failure (`comm_fail`): its meter answered, the line is in use, nothing in it
//! can be trusted.
//!
//! # Failures
//! - A timeout or a bad checksum marks the DI's points `comm_fail`; the connection stays (the
//!   addresses and DIs of the answers already protect the next exchange). A transport error
//!   (the serial server closed the connection) drops it; it is rebuilt with the shared
//!   exponential backoff ([`crate::acquisition::Backoff`]).
//! - An abnormal reply marks the DI's points with the error word's quality
//!   ([`ErrorWord::quality`](super::ErrorWord::quality): `device_exception`).
//! - Value bytes that are not BCD, or of the wrong length for the point's format, mark the
//!   point `out_of_range` with no value.
//! - A meter whose cycles fail `breaker_failures` times in a row has its circuit opened
//!   ([`crate::acquisition::Breaker`]): its jobs emit `comm_fail` without touching the bus and
//!   one probe per `breaker_probe_interval` tries it again. Within a cycle, a silent meter that
//!   also answered nothing in its previous cycle costs one timeout, not one per DI, so a dead
//!   meter does not hold up the other meters of its bus.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use super::config::{BusConfig, BusTransport, MeterConfig};
use super::frame::{self, Address, DataId, Decoder, Edition, ErrorWord, Frame, FrameError, Reply};
use crate::acquisition::{
    Awaiting, Breaker, ConnectError, Jobs, Link, PollerBase, PollerStats, Transition,
};
use crate::clock::Clock;
use crate::model::{Quality, Reading, ReadingBatch, Timestamp};

/// One job: a meter's points of one poll class, grouped by DI.
#[derive(Debug, Clone)]
pub struct MeterPlan {
    /// Index of the meter in the bus.
    pub meter: usize,
    /// The poll class.
    pub poll_interval: Duration,
    /// One read per DI, in first-point order, with the indexes of the points it feeds.
    pub reads: Vec<(DataId, Vec<usize>)>,
}

/// The jobs of a bus: per meter, per poll class (shortest first), one read per DI.
pub fn plan_bus(bus: &BusConfig) -> Vec<MeterPlan> {
    let mut plans = Vec::new();
    for (m, meter) in bus.meters.iter().enumerate() {
        let mut classes: BTreeMap<Duration, Vec<(DataId, Vec<usize>)>> = BTreeMap::new();
        for (i, p) in meter.points.iter().enumerate() {
            let reads = classes.entry(p.poll_interval).or_default();
            match reads.iter_mut().find(|(di, _)| *di == p.di) {
                Some((_, points)) => points.push(i),
                None => reads.push((p.di, vec![i])),
            }
        }
        plans.extend(classes.into_iter().map(|(poll_interval, reads)| MeterPlan {
            meter: m,
            poll_interval,
            reads,
        }));
    }
    plans
}

/// The read plan as `smeltwatch check` prints it.
pub fn render_plan(bus: &BusConfig, plans: &[MeterPlan]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "source {} ({} via {}): {} meters, timeout {}, poll offset {}\n",
        bus.name,
        bus.edition,
        bus.transport,
        bus.meters.len(),
        humantime::format_duration(bus.timeout),
        humantime::format_duration(bus.poll_offset),
    );
    for plan in plans {
        let meter = &bus.meters[plan.meter];
        let _ = writeln!(
            out,
            "  meter {} (address {}) every {}:",
            meter.name,
            meter.address,
            humantime::format_duration(plan.poll_interval)
        );
        for (di, points) in &plan.reads {
            let names: Vec<String> = points
                .iter()
                .map(|&i| {
                    let p = &meter.points[i];
                    format!("{} [{}{}]", p.name, p.format, unit_suffix(&p.unit))
                })
                .collect();
            let _ = writeln!(out, "    DI {di}: {}", names.join(", "));
        }
    }
    out.push_str(&plan_totals(bus, plans));
    out
}

/// The plan's read rate and, on a serial port, the share of the line it takes: a request is
/// 4 wake-up bytes, 12 of frame and the DI; its answer 4 + 12 + the DI + the value, each byte
/// 11 bits on the line (8E1).
fn plan_totals(bus: &BusConfig, plans: &[MeterPlan]) -> String {
    let reads: usize = plans.iter().map(|p| p.reads.len()).sum();
    let per_s: f64 = plans
        .iter()
        .map(|p| p.reads.len() as f64 / p.poll_interval.as_secs_f64())
        .sum();
    let mut out = format!("  total: {reads} reads planned, {per_s:.1} requests/s\n");
    if let BusTransport::Serial(serial) = &bus.transport {
        let di = bus.edition.di_len();
        let wire_s: f64 = plans
            .iter()
            .map(|p| {
                let meter = &bus.meters[p.meter];
                let bytes: usize = p
                    .reads
                    .iter()
                    .map(|(_, points)| {
                        let value = points.iter().map(|&i| meter.points[i].format.width());
                        2 * (frame::WAKE_UP_COUNT + frame::OVERHEAD + di) + value.max().unwrap_or(0)
                    })
                    .sum();
                bytes as f64 * 11.0 / f64::from(serial.baud) / p.poll_interval.as_secs_f64()
            })
            .sum();
        out.push_str(&format!(
            "  on the line at {} baud the exchanges take {:.0} % of the time, before the meters' answer delays\n",
            serial.baud,
            wire_s * 100.0
        ));
    }
    out
}

fn unit_suffix(unit: &str) -> String {
    if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    }
}

/// A poller for one DL/T 645 bus.
#[derive(Debug)]
pub struct Dlt645Poller {
    bus: BusConfig,
    plans: Vec<MeterPlan>,
    base: PollerBase,
}

/// Circuit breaker and silence of one meter.
#[derive(Debug, Default, Clone)]
struct MeterHealth {
    breaker: Breaker,
    silent_last_cycle: bool,
}

impl Dlt645Poller {
    /// A poller for `bus` that sends one batch per job run to `out` (bounded: a slow consumer
    /// shows up as late ticks).
    pub fn new(bus: BusConfig, out: mpsc::Sender<ReadingBatch>) -> Self {
        let plans = plan_bus(&bus);
        Dlt645Poller {
            bus,
            plans,
            base: PollerBase::new(out),
        }
    }

    /// Take the schedule's wall time from `clock` (tests step it).
    pub fn with_clock(mut self, clock: Arc<Clock>) -> Self {
        self.base.clock = clock;
        self
    }

    /// The poller's counters (the Modbus poller's, with DL/T 645 meaning: a request is one
    /// exchange, an exception an abnormal reply).
    pub fn stats(&self) -> Arc<PollerStats> {
        self.base.stats.clone()
    }

    /// Poll until `shutdown` is cancelled or the output channel closes.
    pub async fn run(self, shutdown: CancellationToken) {
        let Dlt645Poller { bus, plans, base } = self;
        let mut jobs = BusJobs {
            line: Line::new(&bus, base.stats.clone()),
            health: vec![MeterHealth::default(); bus.meters.len()],
            bus: &bus,
            plans: &plans,
        };
        let schedule = (plans.len(), bus.poll_offset);
        base.run(&mut jobs, (&bus.name, "meter bus"), schedule, &shutdown)
            .await;
    }
}

/// The jobs of one bus and its line, as the poll loop runs them.
struct BusJobs<'a> {
    line: Line,
    health: Vec<MeterHealth>,
    bus: &'a BusConfig,
    plans: &'a [MeterPlan],
}

impl Jobs for BusJobs<'_> {
    /// Nothing goes between polls on a meter bus.
    type Between = std::convert::Infallible;

    async fn next_between(&mut self) -> Self::Between {
        std::future::pending().await
    }

    async fn between(&mut self, nothing: Self::Between) {
        match nothing {}
    }

    /// DL/T 645 has no unit id (0): meters are told apart by their address.
    fn device(&self, job: usize) -> (Arc<str>, u8, Duration) {
        let plan = &self.plans[job];
        let meter = &self.bus.meters[plan.meter];
        (meter.name.clone(), 0, plan.poll_interval)
    }

    async fn poll(&mut self, job: usize, readings: &mut Vec<Reading>) {
        let plan = &self.plans[job];
        let meter = &self.bus.meters[plan.meter];
        let health = &mut self.health[plan.meter];
        run_job(&mut self.line, self.bus, meter, plan, health, readings).await;
    }
}

/// How one exchange ended, when it brought no value.
#[derive(Debug)]
enum Failure {
    /// The meter refused.
    Refused(ErrorWord),
    /// No usable answer.
    Comm(CommFailure),
}

/// Why an exchange brought no usable answer.
#[derive(Debug, thiserror::Error)]
enum CommFailure {
    /// There is no connection to send the request on.
    #[error(transparent)]
    NotConnected(#[from] ConnectError),
    /// The transport failed (the serial server closed the connection, the port failed): the
    /// line is built anew.
    #[error(transparent)]
    Transport(io::Error),
    /// No answer within the bus's timeout.
    #[error("no reply within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// The answer's frame has a bad checksum: nothing in it can be trusted.
    #[error(transparent)]
    BadFrame(#[from] FrameError),
    /// The meter answered, but not with the value or the refusal of a read.
    #[error("unexpected answer {0:?}")]
    Unexpected(Reply),
}

/// Runs every read of one job, appending one reading per point.
async fn run_job(
    line: &mut Line,
    bus: &BusConfig,
    meter: &MeterConfig,
    plan: &MeterPlan,
    health: &mut MeterHealth,
    readings: &mut Vec<Reading>,
) {
    if health.breaker.is_open(Instant::now()) {
        let ts = Timestamp::now();
        for (_, points) in &plan.reads {
            fill(meter, points, Quality::CommFail, ts, readings);
        }
        return;
    }
    let mut answered = false;
    let mut comm_failed = false;
    for (di, points) in &plan.reads {
        if comm_failed && health.silent_last_cycle {
            // Silent last cycle and silent again now: no further timeout on it this cycle.
            fill(meter, points, Quality::CommFail, Timestamp::now(), readings);
            continue;
        }
        let started = Instant::now();
        let result = line.exchange(bus, meter.address, *di).await;
        let ts = Timestamp::now();
        let stats = &line.stats;
        stats.count_request(started.elapsed());
        match result {
            Ok(value) => {
                answered = true;
                decode_points(meter, points, &value, ts, readings);
            }
            Err(Failure::Refused(word)) => {
                answered = true;
                stats.exceptions.fetch_add(1, Ordering::Relaxed);
                stats.count_read_error(&meter.name, true);
                tracing::debug!(source = %bus.name, meter = %meter.name, %di, "meter refused: {word}");
                fill(meter, points, word.quality(), ts, readings);
            }
            Err(Failure::Comm(reason)) => {
                comm_failed = true;
                stats.comm_failures.fetch_add(1, Ordering::Relaxed);
                stats.count_read_error(&meter.name, false);
                tracing::debug!(source = %bus.name, meter = %meter.name, %di, "read failed: {reason}");
                fill(meter, points, Quality::CommFail, ts, readings);
            }
        }
    }
    health.silent_last_cycle = !answered;
    let (threshold, probe) = (bus.breaker_failures, bus.breaker_probe_interval);
    if answered {
        if health.breaker.succeeded(threshold) == Transition::Closed {
            tracing::info!(source = %bus.name, meter = %meter.name, "meter answers again");
        }
    } else if comm_failed && health.breaker.failed(threshold, probe) == Transition::Opened {
        tracing::warn!(
            source = %bus.name, meter = %meter.name,
            "meter not answering; probing it every {}",
            humantime::format_duration(probe)
        );
    }
}

/// Readings of `points` from the value bytes of their DI.
fn decode_points(
    meter: &MeterConfig,
    points: &[usize],
    value: &[u8],
    ts: Timestamp,
    readings: &mut Vec<Reading>,
) {
    for &i in points {
        let p = &meter.points[i];
        let (value, quality) = match p.format.decode(value) {
            Ok(v) => (Some(v), Quality::Good),
            Err(e) => {
                tracing::debug!(meter = %meter.name, point = %p.name, "undecodable value: {e}");
                (None, Quality::OutOfRange)
            }
        };
        readings.push(Reading {
            point: p.name.clone(),
            value,
            unit: p.unit.clone(),
            quality,
            ts,
        });
    }
}

/// Valueless readings of `points`.
fn fill(
    meter: &MeterConfig,
    points: &[usize],
    quality: Quality,
    ts: Timestamp,
    readings: &mut Vec<Reading>,
) {
    let named = points
        .iter()
        .map(|&i| (&meter.points[i].name, &meter.points[i].unit));
    crate::acquisition::push_valueless(readings, named, quality, ts);
}

/// A byte stream to the bus: a TCP connection or a serial port.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The (re)connecting line of one bus.
struct Line {
    link: Link<Box<dyn Stream>>,
    decoder: Decoder,
    stats: Arc<PollerStats>,
}

impl Line {
    fn new(bus: &BusConfig, stats: Arc<PollerStats>) -> Self {
        Line {
            link: Link::new(bus.reconnect_min, bus.reconnect_max, stats.clone()),
            decoder: Decoder::new(),
            stats,
        }
    }

    /// One request for `di` to `address` and its answer's value bytes.
    async fn exchange(
        &mut self,
        bus: &BusConfig,
        address: Address,
        di: DataId,
    ) -> Result<Vec<u8>, Failure> {
        let attempt = connect(bus);
        self.link
            .connect(&bus.name, &bus.transport, bus.timeout, attempt)
            .await
            .map_err(|e| Failure::Comm(e.into()))?;
        let stream = self.link.after_gap(bus.inter_frame_gap).await;
        let deadline = Instant::now() + bus.timeout;
        let (decoder, stats) = (&mut self.decoder, &self.stats);
        let answer = request(stream, decoder, stats, bus.edition, address, di);
        let awaiting = Awaiting::start();
        let result = timeout_at(deadline, answer).await;
        drop(awaiting);
        self.link.exchanged();
        match result {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                // The serial server went away (or the port failed): build the line anew.
                self.link.drop_connection();
                Err(Failure::Comm(CommFailure::Transport(e)))
            }
            Err(_) => Err(Failure::Comm(CommFailure::TimedOut(bus.timeout))),
        }
    }
}

/// Sends the request on `stream` and reads until its answer; the outer result is the
/// transport's.
async fn request(
    stream: &mut Box<dyn Stream>,
    decoder: &mut Decoder,
    stats: &PollerStats,
    edition: Edition,
    address: Address,
    di: DataId,
) -> io::Result<Result<Vec<u8>, Failure>> {
    decoder.clear();
    stream.write_all(&frame::read_request(address, di)).await?;
    let accepts = |f: &Frame, reply: &Reply| {
        f.address == address
            && match reply {
                Reply::Data { di: got, .. } => *got == di,
                Reply::Error(_) => true,
                Reply::Address(_) => false,
            }
    };
    let discarded = &stats.discarded_replies;
    let answer = read_answer(stream, decoder, edition, discarded, accepts);
    Ok(match answer.await? {
        Ok(Reply::Data { value, .. }) => Ok(value),
        Ok(Reply::Error(word)) => Err(Failure::Refused(word)),
        Ok(other) => Err(Failure::Comm(CommFailure::Unexpected(other))),
        Err(e) => Err(Failure::Comm(e.into())),
    })
}

/// Reads `stream` until a frame that `accepts` takes, and returns its meaning. Frames it does
/// not take (another meter's, another DI's) are counted in `discarded` and skipped; requests on
/// the line (the echo of ours on a two-wire bus) are skipped silently. A frame with a bad
/// checksum ends the wait with its error. The outer result is the transport's.
pub(crate) async fn read_answer<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    decoder: &mut Decoder,
    edition: Edition,
    discarded: &AtomicU64,
    accepts: impl Fn(&Frame, &Reply) -> bool,
) -> io::Result<Result<Reply, FrameError>> {
    let mut buf = [0u8; 256];
    loop {
        while let Some(next) = decoder.next_frame() {
            let frame = match next {
                Ok(frame) => frame,
                Err(e) => return Ok(Err(e)),
            };
            match frame::interpret(edition, &frame) {
                Ok(reply) if accepts(&frame, &reply) => return Ok(Ok(reply)),
                Err(frame::ReplyError::NotAReply(_)) => {}
                other => {
                    discarded.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        from = %frame.address,
                        "discarded a frame that does not answer the request: {other:?}"
                    );
                }
            }
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        decoder.extend(&buf[..n]);
    }
}

async fn connect(bus: &BusConfig) -> Result<Box<dyn Stream>, ConnectError> {
    match &bus.transport {
        BusTransport::SerialServer(addr) => match crate::acquisition::connect_tcp(addr).await {
            Ok(stream) => Ok(Box::new(stream)),
            Err(e) => Err(ConnectError::Tcp(e.into())),
        },
        BusTransport::Serial(settings) => match crate::acquisition::open_serial(settings) {
            Ok(port) => Ok(Box::new(port)),
            Err(e) => Err(ConnectError::Serial(e.into())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlt645::config::MeterPoint;

    fn point(name: &str, di: u32, format: &str, poll_s: u64) -> MeterPoint {
        MeterPoint {
            name: name.into(),
            di: DataId::V2007(di),
            format: format.parse().expect("format"),
            unit: "".into(),
            poll_interval: Duration::from_secs(poll_s),
        }
    }

    #[test]
    fn a_demand_and_its_time_share_one_read_and_classes_split_jobs() {
        let meter = MeterConfig {
            name: "aux1".into(),
            address: Address::parse("1").expect("valid"),
            labels: Vec::new(),
            points: vec![
                point("energy_kwh", 0x0001_0000, "XXXXXX.XX", 60),
                point("demand_kw", 0x0101_0000, "demand", 60),
                point("power_kw", 0x0203_0000, "sXX.XXXX", 5),
                point("demand_at", 0x0101_0000, "demand_time", 60),
            ],
        };
        let bus = BusConfig {
            name: "aux".into(),
            edition: Edition::Dlt2007,
            transport: BusTransport::SerialServer(crate::config::HostPort {
                host: "127.0.0.1".into(),
                port: 1,
            }),
            timeout: Duration::from_secs(1),
            inter_frame_gap: Duration::ZERO,
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(1),
            breaker_failures: 3,
            breaker_probe_interval: Duration::from_secs(1),
            poll_offset: Duration::ZERO,
            meters: vec![meter],
        };
        let plans = plan_bus(&bus);
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].poll_interval, Duration::from_secs(5));
        assert_eq!(plans[0].reads, vec![(DataId::V2007(0x0203_0000), vec![2])]);
        assert_eq!(
            plans[1].reads,
            vec![
                (DataId::V2007(0x0001_0000), vec![0]),
                (DataId::V2007(0x0101_0000), vec![1, 3]),
            ]
        );
        let text = render_plan(&bus, &plans);
        assert!(
            text.contains("DI 01010000: demand_kw [demand], demand_at [demand_time]"),
            "{text}"
        );
    }
}
