//! One run: starting the plant, broker, subscriber and target, the measured window, outage
//! mode, and assembling the report.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::agent::{AgentProcess, metric_sum, write_agent_config};
use super::plant::start_plant;
use super::procfs::{IoCounters, cpu_between, fs_type, read_io, status_mb, threads_cpu_ns};
use super::reference::{Reference, start_reference};
use super::report::{DiskReport, OutageReport, Report, latency};
use super::subscriber::{Seen, WindowView, start_subscriber, window_view};
use super::{Params, Target, now_ms};
use crate::free_port;
use crate::mosquitto::Mosquitto;

pub(super) enum Running {
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
pub(super) async fn watch(
    running: &mut Running,
    d: Duration,
    rss: &mut Vec<f64>,
) -> anyhow::Result<()> {
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
    let dir = work_dir(p)?;
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

    let w = measure_window(p, &mut running).await?;
    wait_for_window(p, &seen, &names, &w).await;

    let outage = match p.outage {
        Some(d) => Some(outage_mode(p, &mut broker, &seen, &names, &mut running, d).await?),
        None => None,
    };

    let late_ticks_total = stop_target(running).await?;
    let _ = sub.disconnect().await;
    plant.stop.cancel();
    drop(broker);

    let seen = seen.lock().expect("counter lock");
    if seen.undecodable > 0 {
        eprintln!("bench: {} payloads could not be decoded", seen.undecodable);
    }
    let v = window_view(&seen, &names, p.registers, interval_ms, w.from, w.to, false);
    Ok(report(p, v, w, fs, late_ticks_total, outage))
}

/// The run's temporary directory, under `--work-dir` if given.
fn work_dir(p: &Params) -> anyhow::Result<tempfile::TempDir> {
    Ok(match &p.work_dir {
        Some(parent) => tempfile::tempdir_in(parent)
            .map_err(|e| anyhow::anyhow!("--work-dir {}: {e}", parent.display()))?,
        None => tempfile::tempdir()?,
    })
}

/// What the target's counters read at both ends of the measured window.
struct Window {
    /// Start and end, ms since the Unix epoch.
    from: i64,
    to: i64,
    /// Its length, seconds.
    window_s: f64,
    cpu0: HashMap<u32, u64>,
    cpu1: HashMap<u32, u64>,
    io0: IoCounters,
    io1: IoCounters,
    log0: Option<u64>,
    log1: Option<u64>,
    /// RSS samples in the window, MB.
    rss: Vec<f64>,
    /// `VmHWM` at its end, MB.
    peak_rss: Option<f64>,
}

/// Waits out the warm-up, then measures for `p.duration`.
async fn measure_window(p: &Params, running: &mut Running) -> anyhow::Result<Window> {
    let mut warm_rss = Vec::new();
    watch(running, p.warmup, &mut warm_rss).await?;
    let from = now_ms();
    let cpu0 = running.cpu_ns()?;
    let io0 = running.io()?;
    let log0 = running.log_len();
    let t0 = Instant::now();
    let mut rss = Vec::new();
    watch(running, p.duration, &mut rss).await?;
    let cpu1 = running.cpu_ns()?;
    let io1 = running.io()?;
    let log1 = running.log_len();
    let window_s = t0.elapsed().as_secs_f64();
    let to = now_ms();
    let peak_rss = running.pid().and_then(|pid| status_mb(pid, "VmHWM:"));
    Ok(Window {
        from,
        to,
        window_s,
        cpu0,
        cpu1,
        io0,
        io1,
        log0,
        log1,
        rss,
        peak_rss,
    })
}

/// Gives the last cycles of the window time to arrive.
async fn wait_for_window(p: &Params, seen: &Mutex<Seen>, names: &[String], w: &Window) {
    let interval_ms = p.interval.as_millis() as i64;
    let deadline = Instant::now() + Duration::from_secs(10).max(p.interval * 3);
    loop {
        let v = window_view(
            &seen.lock().expect("counter lock"),
            names,
            p.registers,
            interval_ms,
            w.from,
            w.to,
            false,
        );
        if v.received >= v.expected_cycles || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops the target; its late ticks over the whole run (the agent's from `/metrics`).
async fn stop_target(running: Running) -> anyhow::Result<Option<u64>> {
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
    Ok(match running {
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
    })
}

/// The report of a run from the subscriber's view `v` of window `w`.
fn report(
    p: &Params,
    v: WindowView,
    w: Window,
    fs: Option<String>,
    late_ticks_total: Option<u64>,
    outage: Option<OutageReport>,
) -> Report {
    let window = w.window_s;
    let expected_points = v.expected_cycles * u64::from(p.registers);
    let (cpu, exited) = cpu_between(&w.cpu0, &w.cpu1);
    let disk = disk_report(&v, &w, fs);
    if exited > 0 {
        eprintln!(
            "bench: {exited} thread(s) of the target exited in the window; their CPU after its start is not counted"
        );
    }
    let rss = w.rss;
    Report {
        target: p.target,
        devices: p.devices,
        registers: p.registers,
        interval_ms: p.interval.as_millis() as u64,
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
        peak_rss_mb: w.peak_rss,
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
    }
}

/// Disk writes of window `w` against what `v` delivered.
fn disk_report(v: &WindowView, w: &Window, fs: Option<String>) -> DiskReport {
    let write_bytes = w.io1.write_bytes.saturating_sub(w.io0.write_bytes);
    let per = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    DiskReport {
        fs_type: fs,
        write_bytes,
        cancelled_write_bytes: w
            .io1
            .cancelled_write_bytes
            .saturating_sub(w.io0.cancelled_write_bytes),
        log_bytes: w.log0.zip(w.log1).map(|(a, b)| b.saturating_sub(a)),
        delivered_records: v.received,
        write_bytes_per_record: per(write_bytes, v.received),
        write_bytes_per_point: per(write_bytes, v.delivered_points),
        payload_bytes_per_record: per(v.payload_bytes, v.received),
        spool_body_bytes_per_record: per(v.body_bytes, v.received),
        write_over_body: per(write_bytes, v.body_bytes),
        write_over_payload: per(write_bytes, v.payload_bytes),
    }
}

pub(super) async fn outage_mode(
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
