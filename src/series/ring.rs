//! One series in memory: a ring of fixed-width time buckets, plus the (at most two) buckets still
//! open, and the downsampling of bucket runs for an answer.
//!
//! Invariants: closed buckets are in ascending start order, one bucket per start, never more than
//! the ring's capacity; a bucket's `min <= mean <= max` when it has a value.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::model::Quality;

/// A sample older than the series' oldest open bucket by more than this is taken for a step of
/// the clock backwards: the series is cleared and starts again from that sample (otherwise it
/// would drop every sample until the clock caught up with the old data).
pub const CLOCK_STEP_BACK_MS: i64 = 60_000;

/// One bucket of a series: what its samples came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Start of the bucket, ms since the Unix epoch.
    pub start_ms: i64,
    /// Mean of the usable values (NaN when there was none).
    pub mean: f32,
    /// Lowest usable value (NaN when none).
    pub min: f32,
    /// Highest usable value (NaN when none).
    pub max: f32,
    /// Samples with a usable value (the weight of the bucket when buckets are merged; saturates).
    pub n: u16,
    /// `Good` when every sample was good, otherwise the quality of its last other sample.
    pub quality: Quality,
}

impl Bucket {
    /// A bucket without any value.
    pub fn empty(start_ms: i64, quality: Quality) -> Bucket {
        Bucket {
            start_ms,
            mean: f32::NAN,
            min: f32::NAN,
            max: f32::NAN,
            n: 0,
            quality,
        }
    }

    /// A bucket of one window already computed elsewhere (an hourly aggregate).
    pub fn window(
        start_ms: i64,
        mean: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
        q: Quality,
    ) -> Bucket {
        let f = |v: Option<f64>| v.filter(|v| v.is_finite()).map_or(f32::NAN, |v| v as f32);
        let mean = f(mean);
        Bucket {
            start_ms,
            mean,
            min: if min.is_some() { f(min) } else { mean },
            max: if max.is_some() { f(max) } else { mean },
            n: u16::from(!mean.is_nan()),
            quality: q,
        }
    }
}

/// How a series combines the samples of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// The samples of one point: their mean, lowest and highest.
    Plain,
    /// Over many devices: the mean of each device's mean; min and max are the lowest and highest
    /// device mean (the spread of the cells).
    MeanOfDevices,
    /// Over many devices: the sum of each device's mean (the rectifiers of a line); min = max.
    SumOfDevices,
}

/// What a quality says about the value next to it.
fn usable(q: Quality) -> bool {
    !matches!(
        q,
        Quality::CommFail | Quality::DeviceException | Quality::OutOfRange
    )
}

#[derive(Debug, Clone)]
struct Acc {
    start_ms: i64,
    sum: f64,
    n: u32,
    min: f64,
    max: f64,
    /// Last non-good quality seen.
    bad: Option<Quality>,
    /// Per device: sum and count (combined series only).
    devices: HashMap<Arc<str>, (f64, u32)>,
}

impl Acc {
    fn new(start_ms: i64) -> Acc {
        Acc {
            start_ms,
            sum: 0.0,
            n: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            bad: None,
            devices: HashMap::new(),
        }
    }

    fn add(&mut self, combine: Combine, device: &Arc<str>, value: Option<f64>, q: Quality) {
        if q != Quality::Good {
            self.bad = Some(q);
        }
        let Some(v) = value.filter(|v| v.is_finite() && usable(q)) else {
            return;
        };
        match combine {
            Combine::Plain => {
                self.sum += v;
                self.n += 1;
                self.min = self.min.min(v);
                self.max = self.max.max(v);
            }
            Combine::MeanOfDevices | Combine::SumOfDevices => {
                let e = self.devices.entry(device.clone()).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
    }

    fn bucket(&self, combine: Combine) -> Bucket {
        let quality = self.bad.unwrap_or(Quality::Good);
        let (mean, min, max, n) = match combine {
            Combine::Plain => (self.sum / f64::from(self.n), self.min, self.max, self.n),
            Combine::MeanOfDevices | Combine::SumOfDevices => {
                let means = self.devices.values().map(|(s, n)| s / f64::from(*n));
                let (mut sum, mut lo, mut hi) = (0.0, f64::INFINITY, f64::NEG_INFINITY);
                for m in means {
                    sum += m;
                    lo = lo.min(m);
                    hi = hi.max(m);
                }
                let k = u32::try_from(self.devices.len()).unwrap_or(u32::MAX);
                if combine == Combine::SumOfDevices {
                    (sum, sum, sum, k)
                } else {
                    (sum / f64::from(k), lo, hi, k)
                }
            }
        };
        if n == 0 {
            return Bucket::empty(self.start_ms, quality);
        }
        Bucket {
            start_ms: self.start_ms,
            mean: mean as f32,
            min: min as f32,
            max: max as f32,
            n: u16::try_from(n).unwrap_or(u16::MAX),
            quality,
        }
    }
}

/// A bounded series: closed buckets in a ring, and up to two open ones (a sample may arrive a
/// little after a later one of another device: the previous bucket stays open for one more
/// bucket width).
#[derive(Debug)]
pub struct Ring {
    resolution_ms: i64,
    capacity: usize,
    combine: Combine,
    closed: VecDeque<Bucket>,
    open: VecDeque<Acc>,
}

impl Ring {
    /// An empty ring of `capacity` buckets of `resolution_ms`. The memory for the buckets is
    /// taken now, so that the store's bound is what it allocates.
    pub fn new(resolution_ms: i64, capacity: usize, combine: Combine) -> Ring {
        Ring {
            resolution_ms: resolution_ms.max(1),
            capacity: capacity.max(1),
            combine,
            closed: VecDeque::with_capacity(capacity.max(1)),
            open: VecDeque::with_capacity(2),
        }
    }

    /// Bucket width, ms.
    pub fn resolution_ms(&self) -> i64 {
        self.resolution_ms
    }

    /// Add a sample of `device` (for combined series) taken at `ts_ms`.
    pub fn add(&mut self, device: &Arc<str>, ts_ms: i64, value: Option<f64>, q: Quality) {
        let start = ts_ms.div_euclid(self.resolution_ms) * self.resolution_ms;
        if let Some(first) = self.open.front()
            && start < first.start_ms
        {
            if first.start_ms - start > CLOCK_STEP_BACK_MS {
                self.closed.clear();
                self.open.clear();
            } else {
                // Late by more than a bucket: left out rather than reopening a closed bucket.
                return;
            }
        }
        // Close what a bucket this late can no longer reach.
        while let Some(first) = self.open.front()
            && first.start_ms < start - self.resolution_ms
        {
            let acc = self.open.pop_front().expect("front exists");
            self.push_closed(acc.bucket(self.combine));
        }
        let acc = match self.open.iter_mut().position(|a| a.start_ms == start) {
            Some(i) => &mut self.open[i],
            None => {
                self.open.push_back(Acc::new(start));
                self.open.back_mut().expect("just pushed")
            }
        };
        acc.add(self.combine, device, value, q);
    }

    /// Store a whole bucket computed elsewhere (an aggregate window); a bucket with the same start
    /// replaces the stored one, an older one than the newest stored is left out.
    pub fn put(&mut self, bucket: Bucket) {
        match self.closed.back_mut() {
            Some(last) if last.start_ms == bucket.start_ms => *last = bucket,
            Some(last) if last.start_ms > bucket.start_ms => {
                if last.start_ms - bucket.start_ms > CLOCK_STEP_BACK_MS.max(self.resolution_ms * 2)
                {
                    self.closed.clear();
                    self.push_closed(bucket);
                }
            }
            _ => self.push_closed(bucket),
        }
    }

    fn push_closed(&mut self, b: Bucket) {
        if self.closed.len() == self.capacity {
            self.closed.pop_front();
        }
        self.closed.push_back(b);
    }

    /// Start of the oldest bucket held, if any.
    pub fn oldest_ms(&self) -> Option<i64> {
        self.closed
            .front()
            .map(|b| b.start_ms)
            .or_else(|| self.open.front().map(|a| a.start_ms))
    }

    /// Closed and open buckets overlapping `from_ms..=to_ms`, oldest first.
    pub fn range(&self, from_ms: i64, to_ms: i64) -> Vec<Bucket> {
        let res = self.resolution_ms;
        let first = self
            .closed
            .partition_point(|b| b.start_ms.saturating_add(res) <= from_ms);
        let mut out: Vec<Bucket> = self
            .closed
            .range(first..)
            .take_while(|b| b.start_ms <= to_ms)
            .copied()
            .collect();
        out.extend(
            self.open
                .iter()
                .filter(|a| a.start_ms.saturating_add(res) > from_ms && a.start_ms <= to_ms)
                .map(|a| a.bucket(self.combine)),
        );
        out
    }

    /// Buckets held (closed and open).
    pub fn len(&self) -> usize {
        self.closed.len() + self.open.len()
    }

    /// No bucket held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Merge runs of consecutive buckets so that at most `max_points` remain: each run of
/// `ceil(len / max_points)` buckets becomes one, starting where the run starts, whose mean is
/// the sample-weighted mean, min and max the run's extremes (a short spike survives), and quality
/// good only when every bucket of the run was. Returns the buckets and the run length.
pub fn downsample(buckets: Vec<Bucket>, max_points: usize) -> (Vec<Bucket>, usize) {
    let max_points = max_points.max(1);
    if buckets.len() <= max_points {
        return (buckets, 1);
    }
    let k = buckets.len().div_ceil(max_points);
    let out = buckets
        .chunks(k)
        .map(|run| {
            let (mut sum, mut n) = (0.0f64, 0u32);
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            let mut quality = Quality::Good;
            for b in run {
                if b.n > 0 && !b.mean.is_nan() {
                    sum += f64::from(b.mean) * f64::from(b.n);
                    n += u32::from(b.n);
                    lo = lo.min(b.min);
                    hi = hi.max(b.max);
                }
                if b.quality != Quality::Good {
                    quality = b.quality;
                }
            }
            if n == 0 {
                return Bucket::empty(run[0].start_ms, quality);
            }
            Bucket {
                start_ms: run[0].start_ms,
                mean: (sum / f64::from(n)) as f32,
                min: lo,
                max: hi,
                n: u16::try_from(n).unwrap_or(u16::MAX),
                quality,
            }
        })
        .collect();
    (out, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn a_ring_keeps_its_capacity_and_drops_the_oldest() {
        let mut r = Ring::new(1000, 5, Combine::Plain);
        let d = dev("pot_001");
        for s in 0..20 {
            r.add(&d, s * 1000 + 10, Some(s as f64), Quality::Good);
        }
        // 5 closed + the two still open (18 s, 19 s).
        assert_eq!(r.len(), 7);
        let all = r.range(i64::MIN, i64::MAX);
        let starts: Vec<i64> = all.iter().map(|b| b.start_ms / 1000).collect();
        assert_eq!(starts, vec![13, 14, 15, 16, 17, 18, 19]);
        assert_eq!(r.oldest_ms(), Some(13_000));
    }

    #[test]
    fn a_bucket_holds_mean_min_max_and_the_last_bad_quality() {
        let mut r = Ring::new(10_000, 10, Combine::Plain);
        let d = dev("rectifier");
        r.add(&d, 1_000, Some(400.0), Quality::Good);
        r.add(&d, 2_000, Some(402.0), Quality::Good);
        r.add(&d, 3_000, None, Quality::CommFail);
        r.add(&d, 4_000, Some(1e9), Quality::OutOfRange);
        r.add(&d, 5_000, Some(404.0), Quality::Good);
        let b = r.range(0, 9_999);
        assert_eq!(b.len(), 1);
        assert_eq!(
            (b[0].mean, b[0].min, b[0].max, b[0].n),
            (402.0, 400.0, 404.0, 3)
        );
        assert_eq!(b[0].quality, Quality::OutOfRange);
        // A bucket of failed reads only has no value, and says why.
        r.add(&d, 31_000, None, Quality::CommFail);
        let b = r.range(30_000, 30_000);
        assert!(b[0].mean.is_nan() && b[0].n == 0);
        assert_eq!(b[0].quality, Quality::CommFail);
    }

    #[test]
    fn combined_series_mean_and_sum_per_device_with_a_late_device() {
        let mut mean = Ring::new(1000, 10, Combine::MeanOfDevices);
        let mut sum = Ring::new(1000, 10, Combine::SumOfDevices);
        for r in [&mut mean, &mut sum] {
            // Device a twice in bucket 0 (4.0, 4.2 → 4.1), b once (4.5); b's sample for bucket 0
            // arrives after a's first of bucket 1 and still counts.
            r.add(&dev("a"), 100, Some(4.0), Quality::Good);
            r.add(&dev("a"), 600, Some(4.2), Quality::Good);
            r.add(&dev("a"), 1100, Some(4.0), Quality::Good);
            r.add(&dev("b"), 900, Some(4.5), Quality::Good);
        }
        let m = mean.range(0, 0)[0];
        assert!((m.mean - 4.3).abs() < 1e-6, "{m:?}");
        assert!((m.min - 4.1).abs() < 1e-6 && (m.max - 4.5).abs() < 1e-6);
        assert_eq!(m.n, 2);
        let s = sum.range(0, 0)[0];
        assert!((s.mean - 8.6).abs() < 1e-5, "{s:?}");
    }

    #[test]
    fn a_sample_more_than_a_bucket_late_is_left_out_and_a_clock_step_back_restarts() {
        let mut r = Ring::new(1000, 100, Combine::Plain);
        let d = dev("x");
        for s in 0..10 {
            r.add(&d, s * 1000, Some(1.0), Quality::Good);
        }
        r.add(&d, 2_500, Some(99.0), Quality::Good);
        assert!(r.range(0, 20_000).iter().all(|b| b.max == 1.0));
        // The clock went back an hour: the series starts again.
        r.add(&d, 9_000 - 3_600_000, Some(2.0), Quality::Good);
        let all = r.range(i64::MIN, i64::MAX);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].mean, 2.0);
    }

    #[test]
    fn ranges_select_overlapping_buckets() {
        let mut r = Ring::new(10_000, 100, Combine::Plain);
        let d = dev("x");
        for s in 0..10 {
            r.add(&d, s * 10_000, Some(s as f64), Quality::Good);
        }
        let starts = |from, to| -> Vec<i64> {
            r.range(from, to)
                .iter()
                .map(|b| b.start_ms / 10_000)
                .collect()
        };
        // 15 s lies in bucket 1 (10–20 s); 40 s starts bucket 4.
        assert_eq!(starts(15_000, 40_000), vec![1, 2, 3, 4]);
        assert_eq!(starts(85_000, i64::MAX), vec![8, 9]);
        assert!(starts(200_000, 300_000).is_empty());
    }

    #[test]
    fn put_replaces_a_window_and_keeps_order() {
        let mut r = Ring::new(3_600_000, 3, Combine::Plain);
        let h = 3_600_000;
        for i in 0..4 {
            r.put(Bucket::window(
                i * h,
                Some(i as f64),
                None,
                None,
                Quality::Good,
            ));
        }
        r.put(Bucket::window(3 * h, Some(9.0), None, None, Quality::Good));
        let all = r.range(i64::MIN, i64::MAX);
        let got: Vec<(i64, f32)> = all.iter().map(|b| (b.start_ms / h, b.mean)).collect();
        assert_eq!(got, vec![(1, 1.0), (2, 2.0), (3, 9.0)]);
    }

    #[test]
    fn downsampling_keeps_weighted_means_extremes_and_bad_quality() {
        let mut buckets: Vec<Bucket> = (0..10)
            .map(|i| Bucket {
                start_ms: i * 1000,
                mean: 4.0,
                min: 4.0,
                max: 4.0,
                n: 1,
                quality: Quality::Good,
            })
            .collect();
        buckets[7].max = 9.3; // an anode-effect spike
        buckets[7].mean = 6.0;
        buckets[2].quality = Quality::Stale;
        let (out, k) = downsample(buckets.clone(), 3);
        assert_eq!(k, 4);
        assert_eq!(out.len(), 3);
        assert_eq!(
            out.iter().map(|b| b.start_ms).collect::<Vec<_>>(),
            vec![0, 4000, 8000]
        );
        assert_eq!(out[0].quality, Quality::Stale);
        assert_eq!(out[1].max, 9.3);
        assert!((out[1].mean - 4.5).abs() < 1e-6);
        assert_eq!(out[2].n, 2);
        let (same, k) = downsample(buckets, 10);
        assert_eq!((same.len(), k), (10, 1));
    }
}
