//! Fixed-bucket histograms of durations, recorded at event time in atomics and rendered in the
//! Prometheus text format (`_bucket{le}`, `_sum`, `_count`).
//!
//! `/metrics` builds its other families from counters the agent keeps anyway (see
//! [`crate::http::metrics`]); a distribution cannot be rebuilt from a sum and a count, so the
//! observations are bucketed where they happen: a Modbus request's round trip in the poller, a
//! record's acquisition-to-acknowledgement time in each uplink. One `fetch_add` per bucket hit,
//! the count and the sum: no lock on the hot path.
//!
//! The bounds are fixed, not configurable: one set from 1 ms to 60 s ([`DURATION_BUCKETS_S`])
//! covers a Modbus round trip on a LAN (a few ms), a serial line or a slow gateway (100 ms to
//! the timeout of a few seconds) and a publish acknowledged over a WAN (tens of ms to seconds);
//! what waited out an outage lands above 60 s, in `+Inf` only, and shows in the `_sum`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::model::{Record, Timestamp};

/// Upper bounds of the buckets, seconds (`+Inf` is implicit).
pub const DURATION_BUCKETS_S: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A histogram of durations over [`DURATION_BUCKETS_S`].
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative): index i counts `bounds[i-1] < v <= bounds[i]`;
    /// the last slot counts those above every bound.
    buckets: [AtomicU64; DURATION_BUCKETS_S.len() + 1],
    count: AtomicU64,
    /// Sum of the observations, microseconds.
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Count one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = DURATION_BUCKETS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(DURATION_BUCKETS_S.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Count the time from `from` to `to` (0 when `to` is earlier: a clock step back).
    pub fn observe_between(&self, from: Timestamp, to: Timestamp) {
        let ms = to.unix_ms().saturating_sub(from.unix_ms()).max(0);
        self.observe(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(DURATION_BUCKETS_S.len());
        for (i, bound) in DURATION_BUCKETS_S.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        // Read after the buckets: concurrent observations may make the count larger than the
        // last bucket, never smaller (`+Inf` is the count).
        let count = self
            .count
            .load(Ordering::Relaxed)
            .max(cumulative + self.buckets[DURATION_BUCKETS_S.len()].load(Ordering::Relaxed));
        HistogramSnapshot {
            buckets,
            count,
            sum_s: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// The counts of a [`Histogram`] at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations at or below it), cumulative, without `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Observations (the `+Inf` bucket).
    pub count: u64,
    /// Sum of the observations, seconds.
    pub sum_s: f64,
}

/// When the data of a spooled record was acquired, for the publish latency: a reading batch's
/// scheduled poll time, otherwise (metrics, events, aggregates: computed, not acquired) the time
/// the record entered the spool. Not a metric's or aggregate's own timestamp: that is the end of
/// its window, or plant time under `[calc.simulated_time]`.
pub fn acquired_at(record: &Record, spooled: Timestamp) -> Timestamp {
    match record {
        Record::Batch(b) => b.scheduled,
        _ => spooled,
    }
}

/// Append one histogram family in the Prometheus text format: `# HELP`, `# TYPE`, then for each
/// series its `_bucket` lines (`le` last among the labels), `_sum` and `_count`.
pub fn render(
    out: &mut String,
    name: &str,
    help: &str,
    series: &[(Vec<(&str, &str)>, HistogramSnapshot)],
) {
    if series.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (labels, h) in series {
        let base: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let with = |extra: Option<String>| {
            let mut all = base.clone();
            all.extend(extra);
            if all.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", all.join(","))
            }
        };
        for (bound, n) in &h.buckets {
            let _ = writeln!(
                out,
                "{name}_bucket{} {n}",
                with(Some(format!("le=\"{bound}\"")))
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{} {}",
            with(Some("le=\"+Inf\"".to_owned())),
            h.count
        );
        let _ = writeln!(out, "{name}_sum{} {}", with(None), h.sum_s);
        let _ = writeln!(out, "{name}_count{} {}", with(None), h.count);
    }
    out.push('\n');
}

/// A label value escaped for the text format: backslash, double quote and line feed.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets_with_sum_and_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500)); // <= 1 ms
        h.observe(Duration::from_millis(1)); // on the bound: <= 1 ms
        h.observe(Duration::from_millis(30)); // <= 50 ms
        h.observe(Duration::from_secs(90)); // +Inf only
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (0.001, 2));
        assert_eq!(s.buckets[4], (0.025, 2));
        assert_eq!(s.buckets[5], (0.05, 3));
        assert_eq!(s.buckets.last(), Some(&(60.0, 3)));
        assert!((s.sum_s - 90.0315).abs() < 1e-9, "{}", s.sum_s);
        h.observe_between(Timestamp(10_000), Timestamp(9_000));
        assert_eq!(h.snapshot().buckets[0], (0.001, 3), "a step back counts 0");
    }

    #[test]
    fn renders_the_text_exposition_format() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(2));
        let mut out = String::new();
        render(
            &mut out,
            "x_seconds",
            "A test.",
            &[(vec![("uplink", "pl\"ant")], h.snapshot())],
        );
        assert!(out.starts_with("# HELP x_seconds A test.\n# TYPE x_seconds histogram\n"));
        assert!(out.contains("x_seconds_bucket{uplink=\"pl\\\"ant\",le=\"0.001\"} 0\n"));
        assert!(out.contains("x_seconds_bucket{uplink=\"pl\\\"ant\",le=\"0.0025\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{uplink=\"pl\\\"ant\",le=\"+Inf\"} 1\n"));
        assert!(out.contains("x_seconds_sum{uplink=\"pl\\\"ant\"} 0.002\n"));
        assert!(out.contains("x_seconds_count{uplink=\"pl\\\"ant\"} 1\n"));
    }
}
