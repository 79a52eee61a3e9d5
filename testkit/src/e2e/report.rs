//! What one run reports (CPU, memory, latency, disk, outage figures) and the table that prints
//! reports side by side.

use serde::Serialize;

use super::Target;

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

pub(super) fn latency(mut l: Vec<i64>) -> Latency {
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

/// A readable table of one or more reports.
pub fn table(reports: &[Report]) -> String {
    let mut out = header();
    for r in reports {
        out.push_str(&row(r));
        out.push_str(&disk_line(&r.disk));
        if let Some(o) = &r.outage {
            out.push_str(&outage_line(o));
        }
    }
    out
}

/// `v` with `prec` decimals, or `-`.
fn cell(o: Option<f64>, prec: usize) -> String {
    match o {
        Some(v) => format!("{v:.prec$}"),
        None => "-".into(),
    }
}

/// The table's column titles.
fn header() -> String {
    format!(
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
    )
}

/// The main line of report `r`.
fn row(r: &Report) -> String {
    format!(
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
        r.late_ticks_total
            .map(|n| n.to_string())
            .unwrap_or("-".into()),
    )
}

/// The disk figures of a report, indented under its line.
fn disk_line(d: &DiskReport) -> String {
    format!(
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
    )
}

/// The outage figures of a report, indented under its line.
fn outage_line(o: &OutageReport) -> String {
    format!(
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
    )
}
