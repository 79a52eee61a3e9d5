//! The poller: one task per physical connection (a TCP endpoint or a serial bus).
//!
//! # Schedule
//! Every (device, poll class) pair is a *job* with a period. All jobs of a connection share one
//! deterministic, deadline-based schedule ([`crate::acquisition::Schedule`], shared with the
//! DL/T 645 poller): job `j` is due at `start + k × period_j` for
//! k = 0, 1, 2, … and nothing else moves those deadlines, so the schedule never drifts. `start` is
//! the poller's start plus the source's `poll_offset`, which spreads the sources of one agent over
//! their poll interval in slots ([`crate::config::PollSlots`]). Jobs due at the same instant run in configuration order. When a job is
//! picked up after its *next* deadline has already passed (the bus was too slow, or a device took
//! its whole timeout), the missed deadlines are skipped and counted as late ticks; the cycle that
//! does run is never repeated to catch up.
//!
//! The wall time of a deadline is the wall clock read at the start plus the monotonic time since,
//! so the timestamps do not jitter with the scheduler; when the wall clock is stepped (NTP's first
//! sync on a gateway without a real-time clock), every job checks [`Clock`] and the schedule's
//! wall time moves by the step, from the next cycle on.
//!
//! # One request in flight
//! tokio-modbus takes `&mut self` per call, so a connection has exactly one outstanding request,
//! which is also what an RS-485 bus requires. On RTU an inter-request gap (≥ 3.5 characters) is
//! kept between the end of one exchange and the start of the next.
//!
//! # Failures
//! - Every call is wrapped in a timeout: tokio-modbus has none of its own.
//! - After a timeout, a transport error or a transaction-id mismatch the connection is dropped and
//!   rebuilt, because a late reply would otherwise be taken as the answer to the next request.
//!   Reconnecting after a *timeout* is immediate (the link itself was fine; a silent unit behind a
//!   gateway must not hold its neighbours back); reconnecting after a failed *connect* waits an
//!   exponential backoff with ±25 % jitter.
//! - A Modbus exception marks only the points of that request (`device_exception`) and keeps the
//!   connection.
//! - A device whose cycles fail `breaker_failures` times in a row has its circuit opened: its jobs
//!   emit `comm_fail` readings without touching the bus, and one half-open probe per
//!   `breaker_probe_interval` tries it again; one good answer closes the circuit.
//! - The same holds for each request group of a device that answers others: a block that fails
//!   `breaker_failures` times in a row is left out (its points `comm_fail`) and probed once per
//!   `breaker_probe_interval`, so a device that answers some requests and not others costs no
//!   timeout (and no rebuilt connection shared with its neighbours) per cycle. Within a cycle, a
//!   comm failure ends the device's cycle only when the device answered nothing in its previous
//!   cycle (a dead device costs one timeout a cycle, not one per request).
//!
//! # Writes
//! A poller built [`with_writes`](Poller::with_writes) also serves a bounded queue of guarded
//! writes ([`crate::modbus::write`]) between two polls, ahead of a poll that is due (so that a
//! late schedule cannot starve them; the queue is bounded, so neither can they starve the polls
//! for long). A write goes on the same connection, so there is still one request in flight and
//! the inter-request gap is kept. Every write is answered on its reply channel with the device's
//! verdict.
//!
//! Every job run emits exactly one [`ReadingBatch`] with one reading per configured point, so a
//! consumer can count expected against received readings.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_modbus::ProtocolError;
use tokio_modbus::client::Context;
use tokio_modbus::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::acquisition::{
    Awaiting, Breaker, ConnectError, Jobs, Link, PollerBase, PollerStats, SharedError, Transition,
};
use crate::clock::Clock;
use crate::config::{Area, DeviceConfig, SerialSettings, SourceConfig, Transport};
use crate::modbus::decode::{self, RequestData};
use crate::modbus::plan::{self, DevicePlan, ReadRequest};
use crate::modbus::write::{WriteCommand, WriteData, WriteError, WriteQueue};
use crate::model::{Quality, Reading, ReadingBatch, Timestamp};

/// A poller for one source. Build it with [`Poller::new`], run it with [`Poller::run`].
#[derive(Debug)]
pub struct Poller {
    source: SourceConfig,
    plans: Vec<DevicePlan>,
    writes: Option<WriteQueue>,
    base: PollerBase,
}

/// Circuit-breaker and failure state of one device.
#[derive(Debug, Default, Clone)]
struct DeviceHealth {
    /// While open, only a probe at or after its probe instant touches the bus.
    breaker: Breaker,
    /// Whether the device answered nothing in its last cycle.
    silent_last_cycle: bool,
    /// Per request group (by area and first address), the same breaker.
    requests: std::collections::HashMap<(&'static str, u16), Breaker>,
}

/// What went wrong with one request.
enum RequestFailure {
    /// The device said no; the link is healthy.
    Exception(ExceptionCode),
    /// No usable answer: the connection must be rebuilt.
    Comm(LinkError),
}

/// Why a request (a read or a write) brought no usable answer; the connection is rebuilt.
///
/// `Clone + Eq` because a write's outcome ([`WriteError`]) is: the errors of the transport and
/// of tokio-modbus are held in a [`SharedError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// There is no connection to send it on.
    #[error(transparent)]
    NotConnected(#[from] ConnectError),
    /// The transport failed during the exchange.
    #[error(transparent)]
    Transport(SharedError<io::Error>),
    /// The reply did not match the request (its transaction id, unit or function code).
    #[error(transparent)]
    Mismatch(SharedError<ProtocolError>),
    /// No reply within the source's timeout.
    #[error("no reply within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// A read's reply held fewer values than asked: nothing in it can be trusted to be aligned.
    #[error("short reply: {got} of {asked} values")]
    ShortReply {
        /// Values in the reply.
        got: usize,
        /// Values asked for.
        asked: u16,
    },
}

impl From<tokio_modbus::Error> for LinkError {
    fn from(e: tokio_modbus::Error) -> Self {
        match e {
            tokio_modbus::Error::Transport(e) => LinkError::Transport(e.into()),
            tokio_modbus::Error::Protocol(e) => LinkError::Mismatch(e.into()),
        }
    }
}

impl Poller {
    /// A poller for `source` that sends one batch per job run to `out`.
    ///
    /// `out` is bounded: when downstream is slower than acquisition, the poller waits for room,
    /// which shows up as late ticks rather than as unbounded memory.
    pub fn new(source: SourceConfig, out: mpsc::Sender<ReadingBatch>) -> Self {
        let plans = plan::plan_source(&source);
        Poller {
            source,
            plans,
            writes: None,
            base: PollerBase::new(out),
        }
    }

    /// Take the wall time of the schedule from `clock` instead of the system clock (tests step it).
    pub fn with_clock(mut self, clock: Arc<Clock>) -> Self {
        self.base.clock = clock;
        self
    }

    /// Serve the guarded writes queued on `queue` (from
    /// [`DeviceWriters::for_sources`](crate::modbus::write::DeviceWriters::for_sources)) between
    /// polls.
    pub fn with_writes(mut self, queue: WriteQueue) -> Self {
        self.writes = Some(queue);
        self
    }

    /// The poller's counters.
    pub fn stats(&self) -> Arc<PollerStats> {
        self.base.stats.clone()
    }

    /// Poll until `shutdown` is cancelled or the output channel closes.
    pub async fn run(self, shutdown: CancellationToken) {
        let Poller {
            source,
            plans,
            writes,
            base,
        } = self;
        let mut jobs = SourceJobs {
            conn: Connection::new(&source, base.stats.clone()),
            health: vec![DeviceHealth::default(); source.devices.len()],
            writes: writes.map(|q| q.0),
            source: &source,
            plans: &plans,
            stats: &base.stats,
        };
        // The schedule starts `poll_offset` from now (the sources of one agent are spread over
        // their poll interval in slots unless configured otherwise).
        let schedule = (plans.len(), source.poll_offset);
        base.run(&mut jobs, (&source.name, "source"), schedule, &shutdown)
            .await;
        jobs.conn.close().await;
    }
}

/// The jobs of one source and their connection, as the poll loop runs them.
struct SourceJobs<'a> {
    conn: Connection,
    health: Vec<DeviceHealth>,
    /// The queue of guarded writes, while any writer is left.
    writes: Option<mpsc::Receiver<WriteCommand>>,
    source: &'a SourceConfig,
    plans: &'a [DevicePlan],
    stats: &'a PollerStats,
}

impl Jobs for SourceJobs<'_> {
    /// The next queued write; `None` once every writer is gone.
    type Between = Option<WriteCommand>;

    async fn next_between(&mut self) -> Option<WriteCommand> {
        match &mut self.writes {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    async fn between(&mut self, cmd: Option<WriteCommand>) {
        match cmd {
            Some(cmd) => self.conn.serve_write(self.source, cmd).await,
            // Every writer is gone: no more writes will come.
            None => self.writes = None,
        }
    }

    fn device(&self, job: usize) -> (Arc<str>, u8, Duration) {
        let plan = &self.plans[job];
        let device = &self.source.devices[plan.device];
        (device.name.clone(), device.unit_id, plan.poll_interval)
    }

    async fn poll(&mut self, job: usize, readings: &mut Vec<Reading>) {
        let plan = &self.plans[job];
        let device = &self.source.devices[plan.device];
        let health = &mut self.health[plan.device];
        let (conn, source) = (&mut self.conn, self.source);
        run_job(conn, source, device, plan, health, self.stats, readings).await;
    }
}

/// Run every request of one job, appending one reading per point to `readings`.
async fn run_job(
    conn: &mut Connection,
    source: &SourceConfig,
    device: &DeviceConfig,
    plan: &DevicePlan,
    health: &mut DeviceHealth,
    stats: &PollerStats,
    readings: &mut Vec<Reading>,
) {
    let now = Instant::now();
    // Circuit open: no bus traffic, the cycle is reported as failed. Once `open_until` has
    // passed, the cycle goes ahead as the half-open probe.
    if health.breaker.is_open(now) {
        let ts = Timestamp::now();
        for req in &plan.requests {
            fill_failed(device, req, Quality::CommFail, ts, readings);
        }
        return;
    }

    let mut answered = false;
    let mut comm_failed = false;
    for req in &plan.requests {
        let key = (req.area.as_str(), req.start);
        let req_health = health.requests.get(&key).copied().unwrap_or_default();
        let left_out = req_health.is_open(now);
        if left_out || (comm_failed && health.silent_last_cycle) {
            // A block whose own circuit is open, or a device that answered nothing last cycle
            // and has just timed out again: no further timeout is spent on it this cycle.
            fill_failed(device, req, Quality::CommFail, Timestamp::now(), readings);
            continue;
        }
        let started = Instant::now();
        let result = conn.read(source, device.unit_id, req).await;
        let ts = Timestamp::now();
        stats.count_request(started.elapsed());
        match result {
            Ok(data) => {
                answered = true;
                if req_health.has_opened() {
                    tracing::info!(
                        source = %source.name, device = %device.name,
                        area = req.area.as_str(), start = req.start,
                        "request group answers again"
                    );
                }
                health.requests.remove(&key);
                let data = match &data {
                    ReadData::Registers(w) => RequestData::Registers(w),
                    ReadData::Bits(b) => RequestData::Bits(b),
                };
                decode::apply_request(device, req, data, ts, readings);
            }
            Err(RequestFailure::Exception(code)) => {
                answered = true;
                health.requests.remove(&key);
                stats.exceptions.fetch_add(1, Ordering::Relaxed);
                stats.count_read_error(&device.name, true);
                tracing::debug!(
                    source = %source.name, device = %device.name,
                    area = req.area.as_str(), start = req.start, count = req.count,
                    "device answered with exception {code:?}"
                );
                fill_failed(device, req, Quality::DeviceException, ts, readings);
            }
            Err(RequestFailure::Comm(reason)) => {
                comm_failed = true;
                stats.comm_failures.fetch_add(1, Ordering::Relaxed);
                stats.count_read_error(&device.name, false);
                let r = health.requests.entry(key).or_default();
                let opened = r.failed(source.breaker_failures, source.breaker_probe_interval);
                if opened == Transition::Opened {
                    tracing::warn!(
                        source = %source.name, device = %device.name,
                        area = req.area.as_str(), start = req.start, count = req.count,
                        "request group not answering; probing it every {}",
                        humantime::format_duration(source.breaker_probe_interval)
                    );
                }
                tracing::debug!(
                    source = %source.name, device = %device.name,
                    area = req.area.as_str(), start = req.start, count = req.count,
                    "read failed: {reason}"
                );
                fill_failed(device, req, Quality::CommFail, ts, readings);
            }
        }
    }

    health.end_cycle(source, device, answered, comm_failed);
}

impl DeviceHealth {
    /// Close a cycle of the device: whether it answered anything, and its breaker's count (a
    /// cycle of exceptions only is an answer; one without answers and with a comm failure is
    /// a failure).
    fn end_cycle(
        &mut self,
        source: &SourceConfig,
        device: &DeviceConfig,
        answered: bool,
        comm_failed: bool,
    ) {
        self.silent_last_cycle = !answered;
        if answered {
            if self.breaker.succeeded(source.breaker_failures) == Transition::Closed {
                tracing::info!(source = %source.name, device = %device.name, "device answers again");
            }
        } else if comm_failed {
            let b = &mut self.breaker;
            if b.failed(source.breaker_failures, source.breaker_probe_interval)
                == Transition::Opened
            {
                tracing::warn!(
                    source = %source.name, device = %device.name,
                    failures = b.consecutive_failures(),
                    "device not answering; probing it every {}",
                    humantime::format_duration(source.breaker_probe_interval)
                );
            }
        }
    }
}

/// Readings for every point of a request that could not be read.
fn fill_failed(
    device: &DeviceConfig,
    req: &ReadRequest,
    quality: Quality,
    ts: Timestamp,
    readings: &mut Vec<Reading>,
) {
    let points = req.points.iter().map(|slot| &device.points[slot.point]);
    let named = points.map(|p| (&p.name, &p.unit));
    crate::acquisition::push_valueless(readings, named, quality, ts);
}

/// Data of a successful read.
enum ReadData {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

/// The (re)connecting Modbus client of one source.
struct Connection {
    link: Link<Context>,
    stats: Arc<PollerStats>,
}

impl Connection {
    fn new(source: &SourceConfig, stats: Arc<PollerStats>) -> Self {
        Connection {
            link: Link::new(source.reconnect_min, source.reconnect_max, stats.clone()),
            stats,
        }
    }

    async fn close(&mut self) {
        if let Some(mut ctx) = self.link.take() {
            let _ = ctx.disconnect().await;
        }
    }

    /// One exchange with `unit_id`: connected first, after the source's inter-request gap,
    /// within its timeout. A transport error, a mismatched reply or a timeout drops the
    /// connection (dropping the context closes the socket, so a late reply dies with it).
    async fn exchange<T>(
        &mut self,
        source: &SourceConfig,
        unit_id: u8,
        call: impl AsyncFnOnce(&mut Context) -> tokio_modbus::Result<T>,
    ) -> Result<T, RequestFailure> {
        let peer = Peer(&source.transport);
        let attempt = connect(&source.transport);
        self.link
            .connect(&source.name, &peer, source.timeout, attempt)
            .await
            .map_err(|e| RequestFailure::Comm(e.into()))?;
        let ctx = self.link.after_gap(source.inter_request_gap).await;
        ctx.set_slave(Slave(unit_id));
        let awaiting = Awaiting::start();
        let result = timeout(source.timeout, call(ctx)).await;
        drop(awaiting);
        self.link.exchanged();
        match result {
            Ok(Ok(Ok(data))) => Ok(data),
            Ok(Ok(Err(code))) => Err(RequestFailure::Exception(code)),
            Ok(Err(e)) => {
                self.link.drop_connection();
                Err(RequestFailure::Comm(e.into()))
            }
            Err(_) => {
                self.link.drop_connection();
                Err(RequestFailure::Comm(LinkError::TimedOut(source.timeout)))
            }
        }
    }

    async fn read(
        &mut self,
        source: &SourceConfig,
        unit_id: u8,
        req: &ReadRequest,
    ) -> Result<ReadData, RequestFailure> {
        use ReadData::{Bits, Registers};
        let (start, n) = (req.start, req.count);
        let call = async |ctx: &mut Context| {
            let data = match req.area {
                Area::Holding => ctx.read_holding_registers(start, n).await?.map(Registers),
                Area::Input => ctx.read_input_registers(start, n).await?.map(Registers),
                Area::Coil => ctx.read_coils(start, n).await?.map(Bits),
                Area::DiscreteInput => ctx.read_discrete_inputs(start, n).await?.map(Bits),
            };
            Ok::<_, tokio_modbus::Error>(data)
        };
        let data = self.exchange(source, unit_id, call).await?;
        let got = match &data {
            ReadData::Registers(w) => w.len(),
            ReadData::Bits(b) => b.len(),
        };
        if got < usize::from(req.count) {
            // A short answer is a bad frame: nothing in it can be trusted to be aligned.
            self.link.drop_connection();
            return Err(RequestFailure::Comm(LinkError::ShortReply {
                got,
                asked: req.count,
            }));
        }
        Ok(data)
    }
}

impl Connection {
    /// Send one write on this connection (same timeout, gap and failure handling as a read) and
    /// answer its reply channel.
    async fn serve_write(&mut self, source: &SourceConfig, cmd: WriteCommand) {
        let WriteCommand {
            unit_id,
            device,
            address,
            data,
            reply,
        } = cmd;
        let result = self.write(source, unit_id, address, &data).await;
        match &result {
            Ok(()) => tracing::info!(
                source = %source.name, %device, address, ?data, "write confirmed by the device"
            ),
            Err(e) => tracing::warn!(
                source = %source.name, %device, address, ?data, "write failed: {e}"
            ),
        }
        let _ = reply.send(result);
    }

    /// One write; counted as a request once it went on the bus (not when there is no
    /// connection to send it on).
    async fn write(
        &mut self,
        source: &SourceConfig,
        unit_id: u8,
        address: u16,
        data: &WriteData,
    ) -> Result<(), WriteError> {
        let call = async |ctx: &mut Context| match data {
            WriteData::Coil(on) => ctx.write_single_coil(address, *on).await,
            WriteData::Registers(words) if words.len() == 1 => {
                ctx.write_single_register(address, words[0]).await
            }
            WriteData::Registers(words) => ctx.write_multiple_registers(address, words).await,
        };
        let result = match self.exchange(source, unit_id, call).await {
            // No connection: nothing went on the bus, there is nothing to count.
            Err(RequestFailure::Comm(e @ LinkError::NotConnected(_))) => {
                return Err(WriteError::Link(e));
            }
            result => result,
        };
        let stats = &self.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        result.map_err(|failure| match failure {
            RequestFailure::Exception(code) => {
                stats.exceptions.fetch_add(1, Ordering::Relaxed);
                WriteError::Exception(code)
            }
            RequestFailure::Comm(e) => {
                stats.comm_failures.fetch_add(1, Ordering::Relaxed);
                WriteError::Link(e)
            }
        })
    }
}

/// How the log names a source's link.
struct Peer<'a>(&'a Transport);

impl fmt::Display for Peer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Transport::Tcp { addr } => write!(f, "modbus tcp {addr}"),
            Transport::RtuOverTcp { addr } => write!(f, "rtu over tcp {addr}"),
            Transport::Rtu(s) => write!(f, "serial {} at {} baud", s.path, s.baud),
        }
    }
}

async fn connect(transport: &Transport) -> Result<Context, ConnectError> {
    match transport {
        Transport::Tcp { addr } => {
            let stream = crate::acquisition::connect_tcp(addr)
                .await
                .map_err(|e| ConnectError::Tcp(e.into()))?;
            Ok(tokio_modbus::client::tcp::attach(stream))
        }
        Transport::RtuOverTcp { addr } => {
            let stream = crate::acquisition::connect_tcp(addr)
                .await
                .map_err(|e| ConnectError::Tcp(e.into()))?;
            Ok(tokio_modbus::client::rtu::attach_slave(stream, Slave(1)))
        }
        Transport::Rtu(serial) => open_serial(serial).map_err(|e| ConnectError::Serial(e.into())),
    }
}

fn open_serial(s: &SerialSettings) -> io::Result<Context> {
    let port = crate::acquisition::open_serial(s)?;
    Ok(tokio_modbus::client::rtu::attach_slave(port, Slave(1)))
}
