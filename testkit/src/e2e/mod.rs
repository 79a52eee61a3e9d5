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

mod agent;
mod plant;
mod procfs;
mod reference;
mod report;
mod run;
mod subscriber;

pub use report::{DiskReport, Latency, OutageReport, Report, table};
pub use run::run;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

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
    /// Where in the interval each source (and each endpoint of the reference) polls.
    pub schedule: PollSchedule,
    /// The last this many devices are configured but not served (their unit ids answer with an
    /// exception): for checking that the harness notices incomplete delivery.
    pub unserved_devices: usize,
    /// Parent of the run's temporary directory (the agent's configuration, state and spool);
    /// `None`: the system's temporary directory. It must be on the disk being judged: on a tmpfs
    /// `write_bytes` stays 0.
    pub work_dir: Option<PathBuf>,
}

/// Where in the interval the agent's sources and the reference's endpoints poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PollSchedule {
    /// The agent's default: slots of up to 32 devices spread over the interval
    /// ([`smeltwatch::config::PollSlots`]); the reference's endpoints alike.
    #[default]
    Slots,
    /// Every source on the same instant (`poll_offset = "0s"` on each).
    Aligned,
    /// Source `i` of `n` at `i / n` of the interval, each on an instant of its own (an explicit
    /// `poll_offset` on each).
    PerSource,
}

impl PollSchedule {
    /// The offset of endpoint `i` of endpoints with these device counts.
    pub fn offset(
        self,
        i: usize,
        devices: &[usize],
        interval: std::time::Duration,
    ) -> std::time::Duration {
        match self {
            PollSchedule::Slots => smeltwatch::config::PollSlots::new(devices).offset(i, interval),
            PollSchedule::Aligned => std::time::Duration::ZERO,
            PollSchedule::PerSource => {
                let n = devices.len().max(1) as u128;
                std::time::Duration::from_millis((interval.as_millis() * i as u128 / n) as u64)
            }
        }
    }
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
