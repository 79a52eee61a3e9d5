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

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_modbus::client::Context;
use tokio_modbus::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::acquisition::{Backoff, Breaker, PollerStats, Schedule, Transition};
use crate::clock::Clock;
use crate::config::{Area, DeviceConfig, HostPort, SerialSettings, SourceConfig, Transport};
use crate::modbus::decode::{self, RequestData};
use crate::modbus::plan::{self, DevicePlan, ReadRequest};
use crate::modbus::write::{WriteCommand, WriteData, WriteError, WriteQueue};
use crate::model::{Quality, Reading, ReadingBatch, Timestamp};

/// A poller for one source. Build it with [`Poller::new`], run it with [`Poller::run`].
#[derive(Debug)]
pub struct Poller {
    source: SourceConfig,
    plans: Vec<DevicePlan>,
    out: mpsc::Sender<ReadingBatch>,
    stats: Arc<PollerStats>,
    writes: Option<WriteQueue>,
    clock: Arc<Clock>,
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

/// Why the poller has no connection to its source: like a read's [`RequestFailure`], it tells
/// apart what happened to the link, so the log and the breaker see the cause.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// The last attempt failed and its backoff has not run out: no attempt was made.
    #[error("reconnect backoff")]
    Backoff,
    /// The TCP connection was refused or failed.
    #[error("{0}")]
    Tcp(#[source] io::Error),
    /// The serial port could not be opened or set up.
    #[error("{0}")]
    Serial(#[source] io::Error),
    /// No connection within the source's timeout (at least 1 s).
    #[error("connect timed out")]
    TimedOut,
}

/// What went wrong with one request.
enum RequestFailure {
    /// The device said no; the link is healthy.
    Exception(ExceptionCode),
    /// No usable answer: the connection must be rebuilt.
    Comm(String),
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
            out,
            stats: Arc::new(PollerStats::default()),
            writes: None,
            clock: Clock::system(),
        }
    }

    /// Take the wall time of the schedule from `clock` instead of the system clock (tests step it).
    pub fn with_clock(mut self, clock: Arc<Clock>) -> Self {
        self.clock = clock;
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
        self.stats.clone()
    }

    /// Poll until `shutdown` is cancelled or the output channel closes.
    pub async fn run(self, shutdown: CancellationToken) {
        let Poller {
            source,
            plans,
            out,
            stats,
            writes,
            clock,
        } = self;
        let mut writes = writes.map(|q| q.0);
        if plans.is_empty() {
            tracing::warn!(source = %source.name, "source has no points to poll");
            return;
        }
        let mut conn = Connection::new(&source, stats.clone());
        let mut health = vec![DeviceHealth::default(); source.devices.len()];
        // The schedule starts `poll_offset` from now (the sources of one agent are spread over
        // their poll interval in slots unless configured otherwise). Jobs due together run in
        // configuration order.
        let mut schedule = Schedule::new(plans.len(), source.poll_offset, clock);
        let mut readings = Vec::new();

        while let Some((due, job)) = schedule.pop() {
            tokio::select! {
                biased;
                // Writes before polls: a late schedule must not starve them (the queue is bounded).
                _ = shutdown.cancelled() => break,
                cmd = next_write(&mut writes) => {
                    match cmd {
                        Some(cmd) => conn.serve_write(&source, cmd).await,
                        // Every writer is gone: no more writes will come.
                        None => writes = None,
                    }
                    // The job was not run: wait for its deadline again.
                    schedule.put_back(due, job);
                    continue;
                }
                _ = sleep_until(due) => {}
            }
            let plan = &plans[job];
            let device = &source.devices[plan.device];
            let scheduled = schedule.wall_time(due);

            readings.clear();
            run_job(
                &mut conn,
                &source,
                device,
                plan,
                &mut health[plan.device],
                &stats,
                &mut readings,
            )
            .await;
            let batch = ReadingBatch {
                source: source.name.clone(),
                device: device.name.clone(),
                unit_id: device.unit_id,
                poll_interval_ms: plan.poll_interval.as_millis() as u64,
                scheduled,
                readings: std::mem::take(&mut readings),
            };
            let next = (&mut schedule, due, job, plan.poll_interval);
            if !crate::acquisition::finish_cycle(batch, &out, &stats, &shutdown, next).await {
                break;
            }
        }
        conn.close().await;
    }
}

/// The next queued write, or never when the poller serves none.
async fn next_write(writes: &mut Option<mpsc::Receiver<WriteCommand>>) -> Option<WriteCommand> {
    match writes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
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
    for slot in &req.points {
        let p = &device.points[slot.point];
        readings.push(Reading {
            point: p.name.clone(),
            value: None,
            unit: p.unit.clone(),
            quality,
            ts,
        });
    }
}

/// Data of a successful read.
enum ReadData {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

/// A (re)connecting Modbus client for one source.
struct Connection {
    ctx: Option<Context>,
    /// When the next connect attempt may go after a failed one.
    backoff: Backoff,
    /// End of the previous exchange, for the inter-request gap.
    last_exchange: Option<Instant>,
    name: Arc<str>,
    /// Whether the last connect attempt failed (to log state changes once).
    down: bool,
    stats: Arc<PollerStats>,
}

impl Connection {
    fn new(source: &SourceConfig, stats: Arc<PollerStats>) -> Self {
        Connection {
            ctx: None,
            backoff: Backoff::new(source.reconnect_min, source.reconnect_max),
            last_exchange: None,
            name: source.name.clone(),
            down: false,
            stats,
        }
    }

    async fn close(&mut self) {
        if let Some(mut ctx) = self.ctx.take() {
            let _ = ctx.disconnect().await;
        }
    }

    fn drop_context(&mut self) {
        // Dropping the context closes the socket; a late reply dies with it.
        self.ctx = None;
    }

    async fn ensure_connected(&mut self, source: &SourceConfig) -> Result<(), ConnectError> {
        if self.ctx.is_some() {
            return Ok(());
        }
        if !self.backoff.ready() {
            return Err(ConnectError::Backoff);
        }
        match timeout(
            source.timeout.max(Duration::from_secs(1)),
            connect(&source.transport),
        )
        .await
        {
            Ok(Ok(ctx)) => {
                self.ctx = Some(ctx);
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                self.backoff.succeeded();
                if self.down {
                    tracing::info!(source = %self.name, "connected to {}", describe(&source.transport));
                } else {
                    tracing::debug!(source = %self.name, "connected to {}", describe(&source.transport));
                }
                self.down = false;
                Ok(())
            }
            Ok(Err(e)) => Err(self.connect_failed(source, e)),
            Err(_) => Err(self.connect_failed(source, ConnectError::TimedOut)),
        }
    }

    fn connect_failed(&mut self, source: &SourceConfig, reason: ConnectError) -> ConnectError {
        if !self.down {
            tracing::warn!(source = %self.name, "cannot connect to {}: {reason}", describe(&source.transport));
        }
        self.down = true;
        self.backoff.failed();
        reason
    }

    /// The connected context, addressed to `unit_id` once the source's gap since the last
    /// exchange has passed. Call after `ensure_connected` succeeded.
    async fn addressed(&mut self, source: &SourceConfig, unit_id: u8) -> &mut Context {
        if let Some(last) = self.last_exchange
            && !source.inter_request_gap.is_zero()
        {
            sleep_until(last + source.inter_request_gap).await;
        }
        let ctx = self.ctx.as_mut().expect("ensure_connected succeeded");
        ctx.set_slave(Slave(unit_id));
        ctx
    }

    async fn read(
        &mut self,
        source: &SourceConfig,
        unit_id: u8,
        req: &ReadRequest,
    ) -> Result<ReadData, RequestFailure> {
        self.ensure_connected(source)
            .await
            .map_err(|e| RequestFailure::Comm(e.to_string()))?;
        let ctx = self.addressed(source, unit_id).await;
        let call = async {
            match req.area {
                Area::Holding => ctx
                    .read_holding_registers(req.start, req.count)
                    .await
                    .map(|r| r.map(ReadData::Registers)),
                Area::Input => ctx
                    .read_input_registers(req.start, req.count)
                    .await
                    .map(|r| r.map(ReadData::Registers)),
                Area::Coil => ctx
                    .read_coils(req.start, req.count)
                    .await
                    .map(|r| r.map(ReadData::Bits)),
                Area::DiscreteInput => ctx
                    .read_discrete_inputs(req.start, req.count)
                    .await
                    .map(|r| r.map(ReadData::Bits)),
            }
        };
        let result = timeout(source.timeout, call).await;
        self.last_exchange = Some(Instant::now());
        match result {
            Ok(Ok(Ok(data))) => {
                let got = match &data {
                    ReadData::Registers(w) => w.len(),
                    ReadData::Bits(b) => b.len(),
                };
                if got < usize::from(req.count) {
                    // A short answer is a bad frame: nothing in it can be trusted to be aligned.
                    self.drop_context();
                    return Err(RequestFailure::Comm(format!(
                        "short reply: {got} of {} values",
                        req.count
                    )));
                }
                Ok(data)
            }
            Ok(Ok(Err(code))) => Err(RequestFailure::Exception(code)),
            Ok(Err(e)) => {
                self.drop_context();
                Err(RequestFailure::Comm(e.to_string()))
            }
            Err(_) => {
                self.drop_context();
                Err(RequestFailure::Comm(format!(
                    "no reply within {}",
                    humantime::format_duration(source.timeout)
                )))
            }
        }
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

    async fn write(
        &mut self,
        source: &SourceConfig,
        unit_id: u8,
        address: u16,
        data: &WriteData,
    ) -> Result<(), WriteError> {
        self.ensure_connected(source)
            .await
            .map_err(|e| WriteError::Link(e.to_string()))?;
        let ctx = self.addressed(source, unit_id).await;
        let call = async {
            match data {
                WriteData::Coil(on) => ctx.write_single_coil(address, *on).await,
                WriteData::Registers(words) if words.len() == 1 => {
                    ctx.write_single_register(address, words[0]).await
                }
                WriteData::Registers(words) => ctx.write_multiple_registers(address, words).await,
            }
        };
        let result = timeout(source.timeout, call).await;
        self.last_exchange = Some(Instant::now());
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(code))) => {
                self.stats.exceptions.fetch_add(1, Ordering::Relaxed);
                Err(WriteError::Exception(code))
            }
            Ok(Err(e)) => {
                self.stats.comm_failures.fetch_add(1, Ordering::Relaxed);
                self.drop_context();
                Err(WriteError::Link(e.to_string()))
            }
            Err(_) => {
                self.stats.comm_failures.fetch_add(1, Ordering::Relaxed);
                self.drop_context();
                Err(WriteError::Link(format!(
                    "no reply within {}",
                    humantime::format_duration(source.timeout)
                )))
            }
        }
    }
}

fn describe(t: &Transport) -> String {
    match t {
        Transport::Tcp { addr } => format!("modbus tcp {addr}"),
        Transport::RtuOverTcp { addr } => format!("rtu over tcp {addr}"),
        Transport::Rtu(s) => format!("serial {} at {} baud", s.path, s.baud),
    }
}

async fn connect(transport: &Transport) -> Result<Context, ConnectError> {
    match transport {
        Transport::Tcp { addr } => {
            let stream = tcp_stream(addr).await.map_err(ConnectError::Tcp)?;
            Ok(tokio_modbus::client::tcp::attach(stream))
        }
        Transport::RtuOverTcp { addr } => {
            let stream = tcp_stream(addr).await.map_err(ConnectError::Tcp)?;
            Ok(tokio_modbus::client::rtu::attach_slave(stream, Slave(1)))
        }
        Transport::Rtu(serial) => open_serial(serial).map_err(ConnectError::Serial),
    }
}

async fn tcp_stream(addr: &HostPort) -> io::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect((addr.host.as_str(), addr.port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn open_serial(s: &SerialSettings) -> io::Result<Context> {
    let port = crate::acquisition::open_serial(s)?;
    Ok(tokio_modbus::client::rtu::attach_slave(port, Slave(1)))
}
