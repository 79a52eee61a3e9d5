//! The end-to-end load harness: simulator → agent (a separate process) → Mosquitto → a counting
//! subscriber, and the bare reference loop that does the same I/O with nothing in between.
//!
//! One [`run`] starts, on free loopback ports:
//! - a synthetic plant from `smeltwatch::simulator`: `devices` devices of `registers` holding
//!   registers each, `per_endpoint` devices (unit ids 1..) behind each Modbus TCP endpoint; a model
//!   task changes every register once per poll interval;
//! - a Mosquitto broker ([`crate::mosquitto`]);
//! - the counting subscriber: a rumqttc client on `smeltwatch/bench/live/#` (QoS 1) that decodes
//!   every JSON batch and records, per (device, scheduled cycle), how many readings arrived, how
//!   many were `good`, how often the cycle arrived and the acquisition-to-arrival latency;
//! - the target: either the agent (`smeltwatch run -c <generated config>`, its own process, with an
//!   HTTP endpoint for `/metrics`) or the reference loop (one thread with a current-thread tokio
//!   runtime: a bare tokio-modbus client per endpoint and one bare rumqttc client publishing the
//!   same JSON bytes at QoS 1, so its CPU time is that thread's alone).
//!
//! After `warmup` it measures for `duration`: CPU time of the target (the nanoseconds on CPU in
//! `schedstat` of every thread of the agent's process, or of the reference thread), RSS (`VmRSS`
//! samples, `VmHWM`), and the subscriber's view of every cycle scheduled inside the window.
//! Latency is measured from the reading's acquisition timestamp (`ts_ms`) to the message's arrival
//! at the subscriber, an upper bound of acquisition-to-PUBACK (the broker acknowledges before it
//! forwards).
//!
//! Outage mode freezes the broker (SIGSTOP) after the measured window, resumes it (SIGCONT) and
//! then measures how fast the backlog arrives (`historical` batches per second), how long until
//! every cycle of the outage has arrived, and the latency of fresh batches meanwhile. The
//! subscriber's keep-alive is longer than any outage, so its session survives the freeze and it
//! sees everything the broker accepts after it thaws.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, PublishOptions, QoS};
use serde::{Deserialize, Serialize};
use smeltwatch::model::{Quality, Reading, ReadingBatch, Record, Timestamp, Value};
use smeltwatch::simulator::{BankSizes, Device, UnitMap, serve_tcp};
use tokio_util::sync::CancellationToken;

use crate::free_port;
use crate::mosquitto::{MAX_PACKET, Mosquitto};

/// Site name of the generated configuration (first topic level after `smeltwatch/`).
pub const SITE: &str = "bench";

/// What runs between the simulator and the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The agent under test, `smeltwatch run`, as a separate process.
    Agent,
    /// The bare tokio-modbus + rumqttc loop (the limit).
    Reference,
}

/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct Params {
    /// The `smeltwatch` binary (agent target only).
    pub agent_bin: PathBuf,
    /// What to measure.
    pub target: Target,
    /// Number of devices.
    pub devices: usize,
    /// Holding registers per device, each one `u16` point (1..=125: one read per device).
    pub registers: u16,
    /// Devices per Modbus TCP endpoint (one agent source, one poller, per endpoint; 1..=247).
    pub per_endpoint: usize,
    /// Poll interval of every point.
    pub interval: Duration,
    /// Time before the measured window.
    pub warmup: Duration,
    /// Length of the measured window.
    pub duration: Duration,
    /// Freeze the broker this long after the window (outage mode).
    pub outage: Option<Duration>,
    /// `replay_rate` of the agent's uplink, records/s.
    pub replay_rate: u32,
    /// `[uplinks.spool] max_bytes` of the agent.
    pub spool_max_bytes: u64,
    /// `[uplinks.spool] synchronous` of the agent: `"full"` or `"normal"`.
    pub spool_synchronous: String,
    /// `max_inflight` of the agent's uplink (`None`: its default).
    pub max_inflight: Option<u16>,
    /// Every source polls on the same instant (`poll_offset = "0s"` on each, and the reference's
    /// endpoints alike) instead of the agent's default spread of sources over the interval.
    pub aligned: bool,
    /// The last this many devices are configured but not served (their unit ids answer with an
    /// exception): for checking that the harness notices incomplete delivery.
    pub unserved_devices: usize,
    /// Parent of the run's temporary directory (the agent's configuration, state and spool);
    /// `None`: the system's temporary directory. It must be on the disk being judged: on a tmpfs
    /// `write_bytes` stays 0.
    pub work_dir: Option<PathBuf>,
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Batches measured.
    pub count: usize,
    /// Median.
    pub p50_ms: i64,
    /// 99th percentile.
    pub p99_ms: i64,
    /// Largest.
    pub max_ms: i64,
}

/// What outage mode measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutageReport {
    /// How long the broker was frozen.
    pub outage_s: f64,
    /// Batches (spool records) marked historical that arrived after the broker resumed.
    pub backlog_records: u64,
    /// Their readings.
    pub backlog_points: u64,
    /// Historical batches per second between the first and the last historical arrival.
    pub replay_records_per_s: f64,
    /// The same in readings per second.
    pub replay_points_per_s: f64,
    /// From SIGCONT until every cycle scheduled up to the resume had arrived; `None` if that did
    /// not happen before the harness gave up.
    pub catch_up_s: Option<f64>,
    /// Latency of fresh (not historical) batches scheduled after the resume, up to catch-up plus
    /// a few seconds.
    pub fresh_latency: Latency,
    /// Cycles scheduled after the resume that never arrived (in that same span).
    pub fresh_missing_cycles: u64,
}

/// What the target wrote to disk in the measured window, against what it delivered.
///
/// The counters are the kernel's block-I/O accounting of the target (`/proc/<pid>/io` of the
/// agent, which includes its exited threads; `/proc/<pid>/task/<tid>/io` of the reference thread):
/// `write_bytes` counts a page when the target dirties it, so a page written again after it was
/// flushed (an fsync per commit) counts again, and the file system's own journal writes are not
/// in it. `cancelled_write_bytes` are dirtied bytes that were truncated away before they reached
/// the disk. Per-record figures divide by the window's delivered records (poll batches, the
/// spool's unit), as the CPU figure divides by its delivered points.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiskReport {
    /// File system of the agent's state directory (`/proc/self/mounts`); `None` for the
    /// reference, which has none.
    pub fs_type: Option<String>,
    /// `write_bytes` delta over the window.
    pub write_bytes: u64,
    /// `cancelled_write_bytes` delta over the window.
    pub cancelled_write_bytes: u64,
    /// Growth of the agent's log file (its stderr) over the window: part of `write_bytes`.
    pub log_bytes: Option<u64>,
    /// Batches (one per device and cycle) of the window delivered to the subscriber, first copies.
    pub delivered_records: u64,
    /// `write_bytes / delivered_records`.
    pub write_bytes_per_record: f64,
    /// `write_bytes / delivered_points`.
    pub write_bytes_per_point: f64,
    /// Mean MQTT payload (the JSON batch) of those records at the subscriber, bytes.
    pub payload_bytes_per_record: f64,
    /// Mean spool body of those records, bytes: what the agent's spool stores for each (its
    /// binary form, about a third of the JSON), re-encoded from the delivered batch by the agent's
    /// own encoder, since `/metrics` counts no appended bytes. The spool adds the topic to it.
    pub spool_body_bytes_per_record: f64,
    /// `write_bytes` per spool body byte: disk bytes per record over the record's body size.
    pub write_over_body: f64,
    /// `write_bytes` per payload byte.
    pub write_over_payload: f64,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What ran.
    pub target: Target,
    /// Devices.
    pub devices: usize,
    /// Registers (points) per device.
    pub registers: u16,
    /// Poll interval in ms.
    pub interval_ms: u64,
    /// Length of the measured window in seconds.
    pub window_s: f64,
    /// Points scheduled in the window (devices × cycles × registers).
    pub expected_points: u64,
    /// Of them, delivered to the subscriber with quality `good` (duplicates counted once).
    pub delivered_points: u64,
    /// `delivered_points / expected_points`, in %.
    pub completeness_pct: f64,
    /// Cycles of the window that never arrived (a late, skipped tick is one of them).
    pub missing_cycles: u64,
    /// Cycles that arrived with fewer readings than registers, or readings not `good`.
    pub incomplete_cycles: u64,
    /// Cycles that arrived more than once (at-least-once delivery).
    pub duplicate_cycles: u64,
    /// Delivered points per second of window.
    pub points_per_s: f64,
    /// CPU time (user + system) of the target in the window, seconds.
    pub cpu_s: f64,
    /// `cpu_s / window_s`: cores used.
    pub cpu_cores: f64,
    /// CPU time per delivered point, µs.
    pub cpu_us_per_point: f64,
    /// Peak resident set (`VmHWM`), MB; agent only.
    pub peak_rss_mb: Option<f64>,
    /// Resident set at the start of the window, MB; agent only.
    pub rss_start_mb: Option<f64>,
    /// Largest resident-set sample in the window, MB; agent only.
    pub rss_max_in_window_mb: Option<f64>,
    /// Growth of the resident set over the window (last sample vs first), %; agent only.
    pub rss_growth_pct: Option<f64>,
    /// Acquisition → arrival at the subscriber, for cycles of the window.
    pub latency: Latency,
    /// Late (skipped) ticks over the whole run, from the agent's `/metrics`, or the reference's
    /// own count.
    pub late_ticks_total: Option<u64>,
    /// Disk writes in the window.
    pub disk: DiskReport,
    /// Outage mode.
    pub outage: Option<OutageReport>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Device `i` (0-based) of the run: its name, endpoint index and unit id.
fn device_name(i: usize) -> String {
    format!("dev{:04}", i + 1)
}

fn source_name(e: usize) -> String {
    format!("ep{e:02}")
}

/// Points of a synthetic device: `r000`, `r001`, …
fn point_name(r: u16) -> String {
    format!("r{r:03}")
}

// ------------------------------------------------------------------------------------------------
// The synthetic plant.

struct Plant {
    /// (bound address, source name, device names) per endpoint, device k on unit k + 1.
    endpoints: Vec<(SocketAddr, String, Vec<String>)>,
    stop: CancellationToken,
}

async fn start_plant(p: &Params) -> anyhow::Result<Plant> {
    anyhow::ensure!(
        (1..=247).contains(&p.per_endpoint),
        "--per-endpoint must be 1..=247 (Modbus unit ids)"
    );
    anyhow::ensure!(
        (1..=125).contains(&p.registers),
        "--registers must be 1..=125 (one read per device)"
    );
    let stop = CancellationToken::new();
    let sizes = BankSizes {
        holding: usize::from(p.registers),
        ..BankSizes::default()
    };
    let mut endpoints = Vec::new();
    let mut all = Vec::new();
    let mut next = 0;
    while next < p.devices {
        let e = endpoints.len();
        let n = p.per_endpoint.min(p.devices - next);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut units = UnitMap::new();
        let mut names = Vec::new();
        for k in 0..n {
            let name = device_name(next + k);
            let dev = Device::new(&name, sizes, (next + k) as u64);
            if next + k < p.devices.saturating_sub(p.unserved_devices) {
                units.insert(u8::try_from(k + 1)?, dev.clone());
            }
            all.push(dev);
            names.push(name);
        }
        tokio::spawn(serve_tcp(listener, units, stop.clone()));
        endpoints.push((addr, source_name(e), names));
        next += n;
    }
    // The model: every register changes once per interval.
    let interval = p.interval;
    let model_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        let mut n: u16 = 0;
        loop {
            tokio::select! {
                _ = model_stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            n = n.wrapping_add(1);
            for (d, dev) in all.iter().enumerate() {
                dev.with_banks(|b| {
                    for (i, r) in b.holding.iter_mut().enumerate() {
                        *r = n.wrapping_add(i as u16).wrapping_add(d as u16);
                    }
                });
            }
        }
    });
    Ok(Plant { endpoints, stop })
}

// ------------------------------------------------------------------------------------------------
// The counting subscriber.

#[derive(Debug, Default, Clone, Copy)]
struct Cycle {
    readings: u16,
    good: u16,
    copies: u16,
    latency_ms: i64,
    historical: bool,
    /// MQTT payload size of the first copy.
    payload_bytes: u32,
    /// Spool body size of the first copy ([`spool_body_len`]).
    body_bytes: u32,
}

#[derive(Debug, Default)]
struct Seen {
    /// device → scheduled ms → first arrival.
    devices: HashMap<String, HashMap<i64, Cycle>>,
    undecodable: u64,
    hist_records: u64,
    hist_points: u64,
    hist_first_ms: Option<i64>,
    hist_last_ms: Option<i64>,
}

#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(borrow)]
    source: &'a str,
    #[serde(borrow)]
    device: &'a str,
    unit_id: u8,
    poll_interval_ms: u64,
    #[serde(borrow)]
    scheduled: &'a str,
    #[serde(default)]
    historical: bool,
    #[serde(borrow)]
    readings: Vec<Rd<'a>>,
}

#[derive(Deserialize)]
struct Rd<'a> {
    #[serde(borrow)]
    point: &'a str,
    value: Option<Value>,
    #[serde(borrow)]
    unit: &'a str,
    quality: Quality,
    ts_ms: i64,
}

/// The size of the spool body the agent stores for this batch: the record rebuilt from the
/// message and encoded by the agent's own code (`publish::body`), since `/metrics` has no
/// appended-bytes counter. Exact for this plant: every field of the body is in the JSON, and every
/// point is a `u16`, which the agent holds as an unsigned integer (JSON cannot tell it from a
/// signed one, and protobuf encodes the two differently).
fn spool_body_len(m: Msg<'_>, scheduled_ms: i64) -> usize {
    let batch = ReadingBatch {
        source: m.source.into(),
        device: m.device.into(),
        unit_id: m.unit_id,
        poll_interval_ms: m.poll_interval_ms,
        scheduled: Timestamp(scheduled_ms),
        readings: m
            .readings
            .into_iter()
            .map(|r| Reading {
                point: r.point.into(),
                value: match r.value {
                    Some(Value::Int(i)) if i >= 0 => Some(Value::UInt(i as u64)),
                    v => v,
                },
                unit: r.unit.into(),
                quality: r.quality,
                ts: Timestamp(r.ts_ms),
            })
            .collect(),
    };
    smeltwatch::publish::body::encode(&Record::Batch(batch)).len()
}

impl Seen {
    fn record(&mut self, payload: &[u8], arrival_ms: i64) {
        let Ok(m) = serde_json::from_slice::<Msg<'_>>(payload) else {
            self.undecodable += 1;
            return;
        };
        let Ok(sched) = humantime::parse_rfc3339(m.scheduled) else {
            self.undecodable += 1;
            return;
        };
        let sched = sched
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        if m.historical {
            self.hist_records += 1;
            self.hist_points += m.readings.len() as u64;
            self.hist_first_ms.get_or_insert(arrival_ms);
            self.hist_last_ms = Some(arrival_ms);
        }
        let acquired = m.readings.iter().map(|r| r.ts_ms).max().unwrap_or(sched);
        let good = m
            .readings
            .iter()
            .filter(|r| r.quality == Quality::Good && r.value.is_some())
            .count();
        let readings = m.readings.len() as u16;
        let historical = m.historical;
        let cycles = match self.devices.get_mut(m.device) {
            Some(c) => c,
            None => self.devices.entry(m.device.to_owned()).or_default(),
        };
        let c = cycles.entry(sched).or_default();
        if c.copies == 0 {
            *c = Cycle {
                readings,
                good: good as u16,
                copies: 1,
                latency_ms: arrival_ms - acquired,
                historical,
                payload_bytes: u32::try_from(payload.len()).unwrap_or(u32::MAX),
                body_bytes: u32::try_from(spool_body_len(m, sched)).unwrap_or(u32::MAX),
            };
        } else {
            c.copies += 1;
        }
    }
}

/// Subscribe to every live batch of the site; returns once subscribed.
async fn start_subscriber(port: u16) -> anyhow::Result<(AsyncClient, Arc<Mutex<Seen>>)> {
    let mut o = MqttOptions::new(
        format!("bench-counter-{}", fastrand::u32(..)),
        ("127.0.0.1", port),
    );
    // Longer than any outage: a frozen broker must not make the counter reconnect (and miss what
    // the broker forwards right after it thaws).
    o.set_keep_alive(u16::MAX)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_clean_session(true);
    let (client, mut el) = AsyncClient::builder(o).capacity(64).build();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(1);
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let arrival = now_ms();
                    s.lock().expect("counter lock").record(&p.payload, arrival);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.try_send(());
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::RequestsDone) => return,
                Err(e) => {
                    eprintln!("bench: counting subscriber: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    client
        .subscribe(format!("smeltwatch/{SITE}/live/#"), QoS::AtLeastOnce)
        .await?;
    tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
        .await
        .map_err(|_| anyhow::anyhow!("no SUBACK within 10 s"))?;
    Ok((client, seen))
}

/// What the subscriber saw of the cycles scheduled in `[from, to)`.
#[derive(Debug, Default)]
struct WindowView {
    expected_cycles: u64,
    received: u64,
    delivered_points: u64,
    incomplete: u64,
    duplicates: u64,
    latencies: Vec<i64>,
    /// Payload bytes of the received cycles (first copies).
    payload_bytes: u64,
    /// Their spool body bytes.
    body_bytes: u64,
}

fn window_view(
    seen: &Seen,
    devices: &[String],
    registers: u16,
    interval_ms: i64,
    from: i64,
    to: i64,
    fresh_only: bool,
) -> WindowView {
    let mut v = WindowView::default();
    for d in devices {
        let cycles = seen.devices.get(d);
        // The device's grid: its poller's start plus multiples of the interval.
        let phase = cycles
            .and_then(|c| c.keys().next())
            .map(|k| k.rem_euclid(interval_ms))
            .unwrap_or(from.rem_euclid(interval_ms));
        let mut s = from - (from - phase).rem_euclid(interval_ms);
        if s < from {
            s += interval_ms;
        }
        while s < to {
            v.expected_cycles += 1;
            if let Some(c) = cycles.and_then(|c| c.get(&s)) {
                v.received += 1;
                v.delivered_points += u64::from(c.good);
                v.payload_bytes += u64::from(c.payload_bytes);
                v.body_bytes += u64::from(c.body_bytes);
                if c.readings != registers || c.good != registers {
                    v.incomplete += 1;
                }
                if c.copies > 1 {
                    v.duplicates += 1;
                }
                if !(fresh_only && c.historical) {
                    v.latencies.push(c.latency_ms);
                }
            }
            s += interval_ms;
        }
    }
    v
}

fn latency(mut l: Vec<i64>) -> Latency {
    if l.is_empty() {
        return Latency::default();
    }
    l.sort_unstable();
    let at = |q: f64| l[((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1];
    Latency {
        count: l.len(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: *l.last().expect("not empty"),
    }
}

// ------------------------------------------------------------------------------------------------
// /proc.

/// On-CPU time of every thread under a `/proc/.../task` directory, in nanoseconds, by thread id:
/// the first field of each thread's `schedstat`, which the scheduler keeps in nanoseconds (the
/// `utime`/`stime` of `stat` count 10 ms clock ticks, too coarse for a gateway that uses a few
/// milliseconds of CPU a second).
fn threads_cpu_ns(task_dir: &Path) -> anyhow::Result<HashMap<u32, u64>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(task_dir)? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A thread may exit between the listing and the read.
        if let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat"))
            && let Some(ns) = text.split_whitespace().next().and_then(|f| f.parse().ok())
        {
            out.insert(tid, ns);
        }
    }
    Ok(out)
}

/// CPU seconds the threads used between two [`threads_cpu_ns`] readings: a thread that started in
/// between counts in full; one that exited in between is missing its share after the first
/// reading, and is counted in the second result.
fn cpu_between(from: &HashMap<u32, u64>, to: &HashMap<u32, u64>) -> (f64, usize) {
    let ns: u64 = to
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(from.get(tid).copied().unwrap_or(0)))
        .sum();
    let exited = from.keys().filter(|tid| !to.contains_key(tid)).count();
    (ns as f64 / 1e9, exited)
}

/// The block-I/O counters of a `/proc/.../io` file that matter for disk wear.
#[derive(Debug, Clone, Copy, Default)]
struct IoCounters {
    write_bytes: u64,
    cancelled_write_bytes: u64,
}

fn read_io(path: &Path) -> anyhow::Result<IoCounters> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no {key} in {}", path.display()))
    };
    Ok(IoCounters {
        write_bytes: field("write_bytes")?,
        cancelled_write_bytes: field("cancelled_write_bytes")?,
    })
}

/// The file system type of the mount that holds `dir` (the longest mount point above it in
/// `/proc/self/mounts`).
fn fs_type(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, ty) = (f.next()?, f.next()?, f.next()?);
            // Spaces in mount points are written `\040`.
            let at = PathBuf::from(at.replace("\\040", " "));
            dir.starts_with(&at)
                .then(|| (at.as_os_str().len(), ty.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, ty)| ty)
}

/// A `kB` line of `/proc/<pid>/status`, in MB.
fn status_mb(pid: u32, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

// ------------------------------------------------------------------------------------------------
// The agent as a process.

fn write_agent_config(p: &Params, plant: &Plant, broker: u16, http: u16, dir: &Path) -> PathBuf {
    let mut csv = String::from("name,area,address,type\n");
    for r in 0..p.registers {
        csv.push_str(&format!("{},holding,{r},u16\n", point_name(r)));
    }
    std::fs::write(dir.join("synth.csv"), csv).expect("write the register map");
    let poll = humantime::format_duration(p.interval);
    let mut toml = format!(
        "site = \"{SITE}\"\nstate_dir = \"state\"\n\n[http]\nlisten = \"127.0.0.1:{http}\"\n\n\
         [register_maps.synth]\ncsv = \"synth.csv\"\n"
    );
    let mut first = 1;
    let offset = if p.aligned {
        "poll_offset = \"0s\"\n"
    } else {
        ""
    };
    for (addr, source, names) in &plant.endpoints {
        toml.push_str(&format!(
            "\n[[sources]]\nname = \"{source}\"\ntcp = \"{addr}\"\ntimeout = \"1s\"\n\
             default_poll = \"{poll}\"\n{offset}\n[[sources.devices]]\nname = \"dev{{n:04}}\"\n\
             count = {}\nfirst_index = {first}\nunit_id = 1\nmap = \"synth\"\n",
            names.len()
        ));
        first += names.len();
    }
    let inflight = p
        .max_inflight
        .map(|n| format!("max_inflight = {n}\n"))
        .unwrap_or_default();
    toml.push_str(&format!(
        "\n[[uplinks]]\nname = \"bench\"\ntype = \"mqtt\"\nbroker = \"mqtt://127.0.0.1:{broker}\"\n\
         streams = [\"live\"]\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n\
         replay_rate = {}\n{inflight}\n[uplinks.spool]\nmax_bytes = {}\nsynchronous = \"{}\"\n",
        p.replay_rate, p.spool_max_bytes, p.spool_synchronous
    ));
    let path = dir.join("agent.toml");
    std::fs::write(&path, toml).expect("write the agent configuration");
    path
}

struct AgentProcess {
    child: Child,
    log: PathBuf,
    http: u16,
}

impl AgentProcess {
    fn spawn(bin: &Path, config: &Path, http: u16, dir: &Path) -> anyhow::Result<AgentProcess> {
        let log = dir.join("agent.log");
        let child = Command::new(bin)
            .arg("run")
            .arg("-c")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
        Ok(AgentProcess { child, log, http })
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            anyhow::bail!("the agent exited ({status}):\n{log}");
        }
        Ok(())
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of every `name{…} value` sample of the agent's `/metrics` at `http_port`.
fn metric_sum(http_port: u16, name: &str) -> Option<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", http_port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let mut total = 0u64;
    let mut found = false;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix(name)
            && (rest.starts_with('{') || rest.starts_with(' '))
        {
            found = true;
            total += rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
        }
    }
    found.then_some(total)
}

// ------------------------------------------------------------------------------------------------
// The reference loop.

struct Reference {
    thread: std::thread::JoinHandle<u64>,
    /// `/proc/<pid>/task/<tid>` of the reference thread.
    thread_dir: PathBuf,
    stop: CancellationToken,
}

/// The envelope of one reference batch.
#[derive(Clone, Copy)]
struct BatchHead<'a> {
    seq: u64,
    source: &'a str,
    device: &'a str,
    unit_id: u8,
    interval_ms: u64,
    scheduled: Timestamp,
}

/// The JSON batch the agent would publish for these registers (same fields, same order).
fn encode_reference(buf: &mut Vec<u8>, head: &BatchHead<'_>, ts: Timestamp, words: &[u16]) {
    let BatchHead {
        seq,
        source,
        device,
        unit_id,
        interval_ms,
        scheduled,
    } = *head;
    buf.clear();
    let ts_text = ts.to_rfc3339();
    let _ = write!(
        buf,
        "{{\"site\":\"{SITE}\",\"stream\":\"live\",\"seq\":{seq},\"source\":\"{source}\",\
         \"device\":\"{device}\",\"unit_id\":{unit_id},\"poll_interval_ms\":{interval_ms},\
         \"scheduled\":\"{}\",\"readings\":[",
        scheduled.to_rfc3339()
    );
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        let _ = write!(
            buf,
            "{{\"point\":\"r{i:03}\",\"value\":{w},\"unit\":\"\",\"quality\":\"good\",\
             \"ts\":\"{ts_text}\",\"ts_ms\":{}}}",
            ts.unix_ms()
        );
    }
    buf.extend_from_slice(b"]}");
}

fn start_reference(p: &Params, plant: &Plant, broker: u16) -> anyhow::Result<Reference> {
    let endpoints = plant.endpoints.clone();
    let registers = p.registers;
    let interval = p.interval;
    let aligned = p.aligned;
    let stop = CancellationToken::new();
    let thread_stop = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("reference".into())
        .spawn(move || {
            // `/proc/thread-self` is `<pid>/task/<tid>`: this thread alone.
            let me = std::fs::read_link("/proc/thread-self")
                .map(|p| Path::new("/proc").join(p))
                .unwrap_or_default();
            let _ = tx.send(me);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("reference runtime");
            rt.block_on(reference_loop(
                endpoints,
                registers,
                interval,
                aligned,
                broker,
                thread_stop,
            ))
        })?;
    let thread_dir = rx.recv()?;
    anyhow::ensure!(
        !thread_dir.as_os_str().is_empty(),
        "cannot find the reference thread's /proc entry"
    );
    Ok(Reference {
        thread,
        thread_dir,
        stop,
    })
}

/// Returns the number of skipped (late) ticks. Unless `aligned`, endpoint `i` of `n` starts
/// `i / n` of the interval after the first, as the agent spreads its sources by default.
async fn reference_loop(
    endpoints: Vec<(SocketAddr, String, Vec<String>)>,
    registers: u16,
    interval: Duration,
    aligned: bool,
    broker: u16,
    stop: CancellationToken,
) -> u64 {
    use tokio_modbus::prelude::*;
    let mut o = MqttOptions::new("bench-reference", ("127.0.0.1", broker));
    o.set_keep_alive(30)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(64);
    let (client, mut el) = AsyncClient::builder(o).capacity(72).build();
    let el_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = el_stop.cancelled() => return,
                r = el.poll() => if r.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let late = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    let n = endpoints.len() as u32;
    for (i, (addr, source, devices)) in endpoints.into_iter().enumerate() {
        let offset = if aligned {
            Duration::ZERO
        } else {
            interval * i as u32 / n
        };
        let client = client.clone();
        let stop = stop.clone();
        let late = late.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let mut ctx = tokio_modbus::client::tcp::attach(stream);
            let start = tokio::time::Instant::now() + offset;
            let wall = Timestamp(Timestamp::now().0 + offset.as_millis() as i64);
            let mut tick = tokio::time::interval_at(start, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let interval_ms = interval.as_millis() as u64;
            let mut expected_next = start;
            let mut seq = 0u64;
            let mut buf = Vec::with_capacity(128 * usize::from(registers) + 256);
            loop {
                let at = tokio::select! {
                    _ = stop.cancelled() => return,
                    at = tick.tick() => at,
                };
                if at > expected_next {
                    let skipped = (at - expected_next).as_millis() as u64 / interval_ms.max(1);
                    late.fetch_add(skipped, std::sync::atomic::Ordering::Relaxed);
                }
                expected_next = at + interval;
                let scheduled = Timestamp(wall.0 + (at - start).as_millis() as i64);
                for (k, device) in devices.iter().enumerate() {
                    ctx.set_slave(Slave(k as u8 + 1));
                    let Ok(Ok(words)) = ctx.read_holding_registers(0, registers).await else {
                        continue;
                    };
                    let ts = Timestamp::now();
                    seq += 1;
                    let head = BatchHead {
                        seq,
                        source: &source,
                        device,
                        unit_id: k as u8 + 1,
                        interval_ms,
                        scheduled,
                    };
                    encode_reference(&mut buf, &head, ts, &words);
                    let topic = format!("smeltwatch/{SITE}/live/{source}/{device}");
                    if client
                        .publish(topic, buf.clone(), PublishOptions::new(QoS::AtLeastOnce))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = client.disconnect().await;
    late.load(std::sync::atomic::Ordering::Relaxed)
}

// ------------------------------------------------------------------------------------------------
// One run.

enum Running {
    Agent(AgentProcess),
    Reference(Reference),
}

impl Running {
    /// On-CPU nanoseconds of the target's threads (the agent's process, the reference's thread).
    fn cpu_ns(&self) -> anyhow::Result<HashMap<u32, u64>> {
        match self {
            Running::Agent(a) => threads_cpu_ns(Path::new(&format!("/proc/{}/task", a.child.id()))),
            Running::Reference(r) => {
                let text = std::fs::read_to_string(r.thread_dir.join("schedstat"))?;
                let ns = text
                    .split_whitespace()
                    .next()
                    .and_then(|f| f.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("bad schedstat: {text:?}"))?;
                Ok(HashMap::from([(0, ns)]))
            }
        }
    }

    /// Block-I/O counters of the target: the agent's whole process (exited threads included),
    /// the reference's thread alone (the harness's own threads share its process).
    fn io(&self) -> anyhow::Result<IoCounters> {
        match self {
            Running::Agent(a) => read_io(Path::new(&format!("/proc/{}/io", a.child.id()))),
            Running::Reference(r) => read_io(&r.thread_dir.join("io")),
        }
    }

    /// Size of the agent's log file (its stderr), bytes.
    fn log_len(&self) -> Option<u64> {
        match self {
            Running::Agent(a) => std::fs::metadata(&a.log).ok().map(|m| m.len()),
            Running::Reference(_) => None,
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Running::Agent(a) => Some(a.child.id()),
            Running::Reference(_) => None,
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self {
            Running::Agent(a) => a.check_alive(),
            Running::Reference(r) => {
                anyhow::ensure!(!r.thread.is_finished(), "the reference loop stopped");
                Ok(())
            }
        }
    }
}

/// Sleep `d`, checking every second that the target still runs, and sampling its RSS.
async fn watch(running: &mut Running, d: Duration, rss: &mut Vec<f64>) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    loop {
        running.check_alive()?;
        if let Some(pid) = running.pid()
            && let Some(mb) = status_mb(pid, "VmRSS:")
        {
            rss.push(mb);
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
    }
}

/// Run one measurement.
pub async fn run(p: &Params) -> anyhow::Result<Report> {
    let interval_ms = p.interval.as_millis() as i64;
    anyhow::ensure!(interval_ms > 0, "--interval must be at least 1 ms");
    let plant = start_plant(p).await?;
    let names: Vec<String> = plant
        .endpoints
        .iter()
        .flat_map(|(_, _, n)| n.iter().cloned())
        .collect();
    let mut broker = tokio::task::spawn_blocking(Mosquitto::start).await?;
    let (sub, seen) = start_subscriber(broker.port).await?;
    let dir = match &p.work_dir {
        Some(parent) => tempfile::tempdir_in(parent)
            .map_err(|e| anyhow::anyhow!("--work-dir {}: {e}", parent.display()))?,
        None => tempfile::tempdir()?,
    };
    let fs = match p.target {
        Target::Agent => fs_type(dir.path()),
        Target::Reference => None,
    };
    if fs.as_deref() == Some("tmpfs") {
        eprintln!(
            "bench: {} is on a tmpfs: the agent's disk writes will read 0 (see --work-dir)",
            dir.path().display()
        );
    }

    let mut running = match p.target {
        Target::Agent => {
            let http = free_port();
            let cfg = write_agent_config(p, &plant, broker.port, http, dir.path());
            Running::Agent(AgentProcess::spawn(&p.agent_bin, &cfg, http, dir.path())?)
        }
        Target::Reference => Running::Reference(start_reference(p, &plant, broker.port)?),
    };

    let mut warm_rss = Vec::new();
    watch(&mut running, p.warmup, &mut warm_rss).await?;
    let from = now_ms();
    let cpu0 = running.cpu_ns()?;
    let io0 = running.io()?;
    let log0 = running.log_len();
    let t0 = Instant::now();
    let mut rss = Vec::new();
    watch(&mut running, p.duration, &mut rss).await?;
    let cpu1 = running.cpu_ns()?;
    let io1 = running.io()?;
    let log1 = running.log_len();
    let window = t0.elapsed().as_secs_f64();
    let to = now_ms();
    let peak_rss = running.pid().and_then(|pid| status_mb(pid, "VmHWM:"));

    // Give the last cycles of the window time to arrive.
    let deadline = Instant::now() + Duration::from_secs(10).max(p.interval * 3);
    loop {
        let v = window_view(
            &seen.lock().expect("counter lock"),
            &names,
            p.registers,
            interval_ms,
            from,
            to,
            false,
        );
        if v.received >= v.expected_cycles || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let outage = match p.outage {
        Some(d) => Some(outage_mode(p, &mut broker, &seen, &names, &mut running, d).await?),
        None => None,
    };

    let late_ticks_total = match &running {
        // Scraped after the window's CPU reading: rendering every point costs the agent CPU.
        Running::Agent(a) => {
            let port = a.http;
            tokio::task::spawn_blocking(move || {
                metric_sum(port, "smeltwatch_source_late_ticks_total")
            })
            .await?
        }
        Running::Reference(_) => None,
    };
    let late_ticks_total = match running {
        Running::Agent(a) => {
            tokio::task::spawn_blocking(move || a.stop()).await?;
            late_ticks_total
        }
        Running::Reference(r) => {
            r.stop.cancel();
            Some(
                tokio::task::spawn_blocking(move || r.thread.join())
                    .await?
                    .unwrap_or(0),
            )
        }
    };
    let _ = sub.disconnect().await;
    plant.stop.cancel();
    drop(broker);

    let seen = seen.lock().expect("counter lock");
    if seen.undecodable > 0 {
        eprintln!("bench: {} payloads could not be decoded", seen.undecodable);
    }
    let v = window_view(&seen, &names, p.registers, interval_ms, from, to, false);
    let expected_points = v.expected_cycles * u64::from(p.registers);
    let (cpu, exited) = cpu_between(&cpu0, &cpu1);
    let write_bytes = io1.write_bytes.saturating_sub(io0.write_bytes);
    let per = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    let disk = DiskReport {
        fs_type: fs,
        write_bytes,
        cancelled_write_bytes: io1
            .cancelled_write_bytes
            .saturating_sub(io0.cancelled_write_bytes),
        log_bytes: log0.zip(log1).map(|(a, b)| b.saturating_sub(a)),
        delivered_records: v.received,
        write_bytes_per_record: per(write_bytes, v.received),
        write_bytes_per_point: per(write_bytes, v.delivered_points),
        payload_bytes_per_record: per(v.payload_bytes, v.received),
        spool_body_bytes_per_record: per(v.body_bytes, v.received),
        write_over_body: per(write_bytes, v.body_bytes),
        write_over_payload: per(write_bytes, v.payload_bytes),
    };
    if exited > 0 {
        eprintln!(
            "bench: {exited} thread(s) of the target exited in the window; their CPU after its start is not counted"
        );
    }
    Ok(Report {
        target: p.target,
        devices: p.devices,
        registers: p.registers,
        interval_ms: interval_ms as u64,
        window_s: window,
        expected_points,
        delivered_points: v.delivered_points,
        completeness_pct: if expected_points == 0 {
            0.0
        } else {
            100.0 * v.delivered_points as f64 / expected_points as f64
        },
        missing_cycles: v.expected_cycles - v.received,
        incomplete_cycles: v.incomplete,
        duplicate_cycles: v.duplicates,
        points_per_s: v.delivered_points as f64 / window,
        cpu_s: cpu,
        cpu_cores: cpu / window,
        cpu_us_per_point: if v.delivered_points == 0 {
            0.0
        } else {
            cpu * 1e6 / v.delivered_points as f64
        },
        peak_rss_mb: peak_rss,
        rss_start_mb: rss.first().copied(),
        rss_max_in_window_mb: rss.iter().copied().reduce(f64::max),
        rss_growth_pct: match (rss.first(), rss.last()) {
            (Some(a), Some(b)) if *a > 0.0 => Some(100.0 * (b - a) / a),
            _ => None,
        },
        latency: latency(v.latencies),
        late_ticks_total,
        disk,
        outage,
    })
}

async fn outage_mode(
    p: &Params,
    broker: &mut Mosquitto,
    seen: &Arc<Mutex<Seen>>,
    names: &[String],
    running: &mut Running,
    d: Duration,
) -> anyhow::Result<OutageReport> {
    let interval_ms = p.interval.as_millis() as i64;
    let paused_at = now_ms();
    broker.pause();
    let mut ignore = Vec::new();
    watch(running, d, &mut ignore).await?;
    broker.resume();
    let resumed_at = now_ms();
    let resumed = Instant::now();
    let give_up = Instant::now() + (d * 3).max(Duration::from_secs(60));
    let mut catch_up = None;
    while Instant::now() < give_up {
        running.check_alive()?;
        let v = window_view(
            &seen.lock().expect("counter lock"),
            names,
            p.registers,
            interval_ms,
            paused_at - interval_ms,
            resumed_at,
            false,
        );
        if v.received >= v.expected_cycles {
            catch_up = Some(resumed.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Fresh data for a few more seconds after catch-up.
    let mut ignore = Vec::new();
    watch(running, Duration::from_secs(5), &mut ignore).await?;
    let fresh_to = now_ms() - 2 * interval_ms;
    let s = seen.lock().expect("counter lock");
    let fresh = window_view(
        &s,
        names,
        p.registers,
        interval_ms,
        resumed_at,
        fresh_to,
        true,
    );
    let span = match (s.hist_first_ms, s.hist_last_ms) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1000.0,
        _ => 0.0,
    };
    Ok(OutageReport {
        outage_s: d.as_secs_f64(),
        backlog_records: s.hist_records,
        backlog_points: s.hist_points,
        replay_records_per_s: if span > 0.0 {
            s.hist_records as f64 / span
        } else {
            0.0
        },
        replay_points_per_s: if span > 0.0 {
            s.hist_points as f64 / span
        } else {
            0.0
        },
        catch_up_s: catch_up,
        fresh_latency: latency(fresh.latencies),
        fresh_missing_cycles: fresh.expected_cycles - fresh.received,
    })
}

/// A readable table of one or more reports.
pub fn table(reports: &[Report]) -> String {
    let mut out = String::new();
    let cell = |o: Option<f64>, prec: usize| match o {
        Some(v) => format!("{v:.prec$}"),
        None => "-".into(),
    };
    out.push_str(&format!(
        "{:<10} {:>7} {:>6} {:>10} {:>10} {:>8} {:>8} {:>7} {:>8} {:>8} {:>7} {:>7} {:>7} {:>6}\n",
        "target",
        "devices",
        "regs",
        "points/s",
        "complete%",
        "missing",
        "cpu",
        "µs/pt",
        "peakRSS",
        "RSSgrow%",
        "p50ms",
        "p99ms",
        "maxms",
        "late"
    ));
    for r in reports {
        out.push_str(&format!(
            "{:<10} {:>7} {:>6} {:>10.0} {:>10.3} {:>8} {:>8.3} {:>7.3} {:>8} {:>8} {:>7} {:>7} {:>7} {:>6}\n",
            match r.target {
                Target::Agent => "agent",
                Target::Reference => "reference",
            },
            r.devices,
            r.registers,
            r.points_per_s,
            r.completeness_pct,
            r.missing_cycles,
            r.cpu_cores,
            r.cpu_us_per_point,
            cell(r.peak_rss_mb, 1),
            cell(r.rss_growth_pct, 1),
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            r.late_ticks_total.map(|n| n.to_string()).unwrap_or("-".into()),
        ));
        let d = &r.disk;
        out.push_str(&format!(
            "  disk: {} B written in the window ({} B cancelled{}{}), {} records: {:.0} B/record, \
             {:.1} B/point; record payload {:.0} B, spool body {:.0} B; written/body {:.2}×, \
             written/payload {:.2}×\n",
            d.write_bytes,
            d.cancelled_write_bytes,
            d.log_bytes
                .map(|b| format!(", log {b} B"))
                .unwrap_or_default(),
            d.fs_type
                .as_ref()
                .map(|t| format!(", state on {t}"))
                .unwrap_or_default(),
            d.delivered_records,
            d.write_bytes_per_record,
            d.write_bytes_per_point,
            d.payload_bytes_per_record,
            d.spool_body_bytes_per_record,
            d.write_over_body,
            d.write_over_payload,
        ));
        if let Some(o) = &r.outage {
            out.push_str(&format!(
                "  outage {:.0} s: backlog {} records ({} points) replayed at {:.0} records/s \
                 ({:.0} points/s); caught up {} s after resume; fresh data meanwhile p50 {} ms, \
                 p99 {} ms, max {} ms, {} cycles missing\n",
                o.outage_s,
                o.backlog_records,
                o.backlog_points,
                o.replay_records_per_s,
                o.replay_points_per_s,
                cell(o.catch_up_s, 1),
                o.fresh_latency.p50_ms,
                o.fresh_latency.p99_ms,
                o.fresh_latency.max_ms,
                o.fresh_missing_cycles
            ));
        }
    }
    out
}
