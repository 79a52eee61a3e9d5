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
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;

use super::config::{BusConfig, BusTransport, MeterConfig};
use super::frame::{self, Address, DataId, Decoder, Edition, ErrorWord, Frame, FrameError, Reply};
use crate::acquisition::{Backoff, Breaker, PollerStats, Schedule, Transition};
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
    out: mpsc::Sender<ReadingBatch>,
    stats: Arc<PollerStats>,
    clock: Arc<Clock>,
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
            out,
            stats: Arc::new(PollerStats::default()),
            clock: Clock::system(),
        }
    }

    /// Take the schedule's wall time from `clock` (tests step it).
    pub fn with_clock(mut self, clock: Arc<Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The poller's counters (the Modbus poller's, with DL/T 645 meaning: a request is one
    /// exchange, an exception an abnormal reply).
    pub fn stats(&self) -> Arc<PollerStats> {
        self.stats.clone()
    }

    /// Poll until `shutdown` is cancelled or the output channel closes.
    pub async fn run(self, shutdown: CancellationToken) {
        let Dlt645Poller {
            bus,
            plans,
            out,
            stats,
            clock,
        } = self;
        if plans.is_empty() {
            tracing::warn!(source = %bus.name, "meter bus has no points to poll");
            return;
        }
        let mut line = Line::new(&bus, stats.clone());
        let mut health = vec![MeterHealth::default(); bus.meters.len()];
        let mut schedule = Schedule::new(plans.len(), bus.poll_offset, clock);
        while let Some((due, job)) = schedule.pop() {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = sleep_until(due) => {}
            }
            let plan = &plans[job];
            let meter = &bus.meters[plan.meter];
            let scheduled = schedule.wall_time(due);
            let mut readings = Vec::new();
            let h = &mut health[plan.meter];
            run_job(&mut line, &bus, meter, plan, h, &mut readings).await;
            let batch = ReadingBatch {
                source: bus.name.clone(),
                device: meter.name.clone(),
                // DL/T 645 has no unit id: meters are told apart by their address.
                unit_id: 0,
                poll_interval_ms: plan.poll_interval.as_millis() as u64,
                scheduled,
                readings,
            };
            let next = (&mut schedule, due, job, plan.poll_interval);
            if !crate::acquisition::finish_cycle(batch, &out, &stats, &shutdown, next).await {
                break;
            }
        }
    }
}

/// How one exchange ended, when it brought no value.
#[derive(Debug)]
enum Failure {
    /// The meter refused.
    Refused(ErrorWord),
    /// No usable answer.
    Comm(String),
}

/// Why the bus is not connected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ConnectError {
    /// The reconnect backoff has not elapsed.
    #[error("reconnect backoff")]
    Backoff,
    /// Connecting failed.
    #[error("{0}")]
    Io(String),
    /// Connecting took longer than the bus's timeout (at least 1 s).
    #[error("connect timed out")]
    TimedOut,
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
    for &i in points {
        let p = &meter.points[i];
        readings.push(Reading {
            point: p.name.clone(),
            value: None,
            unit: p.unit.clone(),
            quality,
            ts,
        });
    }
}

/// A byte stream to the bus: a TCP connection or a serial port.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The (re)connecting line of one bus.
struct Line {
    stream: Option<Box<dyn Stream>>,
    decoder: Decoder,
    backoff: Backoff,
    /// End of the previous exchange, for the inter-frame gap.
    last_exchange: Option<Instant>,
    /// Whether the last connect attempt failed (to log state changes once).
    down: bool,
    stats: Arc<PollerStats>,
}

impl Line {
    fn new(bus: &BusConfig, stats: Arc<PollerStats>) -> Self {
        Line {
            stream: None,
            decoder: Decoder::new(),
            backoff: Backoff::new(bus.reconnect_min, bus.reconnect_max),
            last_exchange: None,
            down: false,
            stats,
        }
    }

    async fn ensure_connected(&mut self, bus: &BusConfig) -> Result<(), ConnectError> {
        if self.stream.is_some() {
            return Ok(());
        }
        if !self.backoff.ready() {
            return Err(ConnectError::Backoff);
        }
        let attempt = tokio::time::timeout(bus.timeout.max(Duration::from_secs(1)), connect(bus));
        let reason = match attempt.await {
            Ok(Ok(stream)) => {
                self.stream = Some(stream);
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                self.backoff.succeeded();
                if self.down {
                    tracing::info!(source = %bus.name, "connected to {}", bus.transport);
                }
                self.down = false;
                return Ok(());
            }
            Ok(Err(e)) => ConnectError::Io(e.to_string()),
            Err(_) => ConnectError::TimedOut,
        };
        if !self.down {
            tracing::warn!(source = %bus.name, "cannot connect to {}: {reason}", bus.transport);
        }
        self.down = true;
        self.backoff.failed();
        Err(reason)
    }

    /// One request for `di` to `address` and its answer's value bytes.
    async fn exchange(
        &mut self,
        bus: &BusConfig,
        address: Address,
        di: DataId,
    ) -> Result<Vec<u8>, Failure> {
        self.ensure_connected(bus)
            .await
            .map_err(|e| Failure::Comm(e.to_string()))?;
        if let Some(last) = self.last_exchange {
            sleep_until(last + bus.inter_frame_gap).await;
        }
        let deadline = Instant::now() + bus.timeout;
        let result = timeout_at(deadline, self.request(bus, address, di)).await;
        self.last_exchange = Some(Instant::now());
        match result {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                // The serial server went away (or the port failed): build the line anew.
                self.stream = None;
                Err(Failure::Comm(e.to_string()))
            }
            Err(_) => Err(Failure::Comm(format!(
                "no reply within {}",
                humantime::format_duration(bus.timeout)
            ))),
        }
    }

    /// Sends the request and reads until its answer; the outer result is the transport's.
    async fn request(
        &mut self,
        bus: &BusConfig,
        address: Address,
        di: DataId,
    ) -> io::Result<Result<Vec<u8>, Failure>> {
        let stream = self.stream.as_mut().expect("ensure_connected succeeded");
        self.decoder.clear();
        stream.write_all(&frame::read_request(address, di)).await?;
        let accepts = |f: &Frame, reply: &Reply| {
            f.address == address
                && match reply {
                    Reply::Data { di: got, .. } => *got == di,
                    Reply::Error(_) => true,
                    Reply::Address(_) => false,
                }
        };
        let discarded = &self.stats.discarded_replies;
        let answer = read_answer(stream, &mut self.decoder, bus.edition, discarded, accepts);
        Ok(match answer.await? {
            Ok(Reply::Data { value, .. }) => Ok(value),
            Ok(Reply::Error(word)) => Err(Failure::Refused(word)),
            Ok(other) => Err(Failure::Comm(format!("unexpected answer {other:?}"))),
            Err(e) => Err(Failure::Comm(e.to_string())),
        })
    }
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

async fn connect(bus: &BusConfig) -> io::Result<Box<dyn Stream>> {
    match &bus.transport {
        BusTransport::SerialServer(addr) => {
            let stream = tokio::net::TcpStream::connect((addr.host.as_str(), addr.port)).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream))
        }
        BusTransport::Serial(settings) => Ok(Box::new(crate::acquisition::open_serial(settings)?)),
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
