//! The end-to-end load harness (see `smeltwatch_testkit::e2e`, `testkit/src/e2e/`, for what it
//! measures and how).
//!
//! ```text
//! cargo bench --bench e2e -- --devices 20 --registers 100 --duration 60s
//! cargo bench --bench e2e -- --devices 200 --registers 100 --duration 30s --outage 60s --target agent
//! ```
//!
//! Needs `mosquitto` on the PATH. Runs the agent (the `smeltwatch` binary cargo built beside this
//! bench, in the bench profile) and then the bare reference loop against a fresh simulator and
//! broker each, prints a table and the ratio of their CPU time per point, and writes the reports
//! as JSON to `--json FILE` (or to stdout with `--json -`). See docs/PERFORMANCE.md.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use smeltwatch_testkit::e2e as harness;
use smeltwatch_testkit::e2e::{Params, PollSchedule, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Schedule {
    Slots,
    Aligned,
    PerSource,
}

impl From<Schedule> for PollSchedule {
    fn from(s: Schedule) -> PollSchedule {
        match s {
            Schedule::Slots => PollSchedule::Slots,
            Schedule::Aligned => PollSchedule::Aligned,
            Schedule::PerSource => PollSchedule::PerSource,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Agent,
    Reference,
    Both,
}

/// End-to-end load harness: simulator → agent → Mosquitto → counting subscriber.
#[derive(Debug, Parser)]
struct Args {
    /// Devices.
    #[arg(long, default_value_t = 20)]
    devices: usize,
    /// Holding registers (u16 points) per device, 1..=125.
    #[arg(long, default_value_t = 100)]
    registers: u16,
    /// Devices per Modbus TCP endpoint (= per agent source and poller), 1..=247.
    #[arg(long, default_value_t = 100)]
    per_endpoint: usize,
    /// Poll interval.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    interval: Duration,
    /// Warm-up before the measured window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    warmup: Duration,
    /// Measured window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    duration: Duration,
    /// After the window, freeze the broker (SIGSTOP) this long, then measure the replay.
    #[arg(long, value_parser = humantime::parse_duration)]
    outage: Option<Duration>,
    /// The agent uplink's `replay_rate` (records/s) in outage mode.
    #[arg(long, default_value_t = 1_000_000)]
    replay_rate: u32,
    /// The agent spool's byte budget.
    #[arg(long, default_value_t = 4 << 30)]
    spool_max_bytes: u64,
    /// The agent spool's `synchronous` level: `full` (an fsync per commit, the default) or
    /// `normal`.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    spool_synchronous: String,
    /// The agent uplink's `max_inflight` (unset: the agent's default).
    #[arg(long)]
    max_inflight: Option<u16>,
    /// Poll every source (and every endpoint of the reference) on the same instant: short for
    /// `--schedule aligned`.
    #[arg(long)]
    aligned: bool,
    /// Where in the interval sources poll: `slots` (the agent's default: slots of up to 32
    /// devices spread over it), `aligned` (all on one instant) or `per-source` (source i of n at
    /// i/n of it).
    #[arg(long, value_enum, default_value_t = Schedule::Slots)]
    schedule: Schedule,
    /// What to run.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    target: Which,
    /// The agent binary (default: the one cargo built with this bench).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Parent of each run's temporary directory, which holds the agent's state and spool (default:
    /// the system's temporary directory). Disk writes are only measured on a real disk: not a
    /// tmpfs.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write the reports as JSON here (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    /// `--aligned` wins over `--schedule`.
    fn poll_schedule(&self) -> PollSchedule {
        if self.aligned {
            PollSchedule::Aligned
        } else {
            self.schedule.into()
        }
    }
}

/// Raise the soft limit on open files to the hard one, for this process and the agent and broker
/// it starts (they inherit it), and check that it covers `need`. With one endpoint per device,
/// 1000 devices take 1000 listeners and 1000 accepted connections here (plus 1000 connections of
/// the reference loop, which runs in this process), and 1000 connections in the agent: more than
/// the usual soft limit of 1024.
fn raise_open_files_limit(need: u64) -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` into the valid, exclusively borrowed `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        anyhow::bail!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `setrlimit` only reads the valid `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    let soft = lim.rlim_cur;
    anyhow::ensure!(
        soft >= need,
        "this run needs about {need} open files but the limit is {soft} \
         (hard limit {}): raise it (ulimit -Hn) or use fewer endpoints",
        lim.rlim_max
    );
    Ok(soft)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let endpoints = args.devices.div_ceil(args.per_endpoint.max(1)) as u64;
    raise_open_files_limit(3 * endpoints + 256)?;
    let agent_bin = args
        .agent
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_smeltwatch")));
    let targets: &[Target] = match args.target {
        Which::Agent => &[Target::Agent],
        Which::Reference => &[Target::Reference],
        Which::Both => &[Target::Agent, Target::Reference],
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    for &target in targets {
        let params = Params {
            agent_bin: agent_bin.clone(),
            target,
            devices: args.devices,
            registers: args.registers,
            per_endpoint: args.per_endpoint,
            interval: args.interval,
            warmup: args.warmup,
            duration: args.duration,
            outage: args.outage.filter(|_| target == Target::Agent),
            replay_rate: args.replay_rate,
            spool_max_bytes: args.spool_max_bytes,
            spool_synchronous: args.spool_synchronous.clone(),
            max_inflight: args.max_inflight,
            schedule: args.poll_schedule(),
            unserved_devices: 0,
            work_dir: args.work_dir.clone(),
        };
        eprintln!(
            "bench: {target:?}: {} devices × {} registers every {}, warm-up {}, window {}{}",
            args.devices,
            args.registers,
            humantime::format_duration(args.interval),
            humantime::format_duration(args.warmup),
            humantime::format_duration(args.duration),
            params
                .outage
                .map(|o| format!(", then a {} outage", humantime::format_duration(o)))
                .unwrap_or_default()
        );
        reports.push(rt.block_on(harness::run(&params))?);
    }
    print!("{}", harness::table(&reports));
    let ratio = match (
        reports.iter().find(|r| r.target == Target::Agent),
        reports.iter().find(|r| r.target == Target::Reference),
    ) {
        (Some(a), Some(r)) if r.cpu_us_per_point > 0.0 => {
            let ratio = a.cpu_us_per_point / r.cpu_us_per_point;
            println!(
                "agent / reference CPU per point: {:.3} / {:.3} µs = {ratio:.2}×",
                a.cpu_us_per_point, r.cpu_us_per_point
            );
            Some(ratio)
        }
        _ => None,
    };
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&serde_json::json!({
            "reports": reports,
            "agent_over_reference_cpu_per_point": ratio,
        }))?;
        if path.as_os_str() == "-" {
            println!("{json}");
        } else {
            std::fs::write(path, json + "\n")?;
        }
    }
    Ok(())
}
