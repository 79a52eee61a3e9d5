//! Clock-aligned minute, hour and day aggregates with the HJ 75/76 validity rules (DOMAIN §7.6).
//!
//! Invariants:
//! - Windows are aligned in the site's local time and closed only by timestamps: a sample in a
//!   later minute closes the current one (and the hour or day it ends); [`Window::advance`]
//!   closes windows whose end has passed without new data.
//! - A sample of bad quality never counts as valid data. A minute is valid with at least
//!   `minute_min_samples` good samples making up at least `minute_min_good_ratio` of its samples;
//!   its average is the mean of its good samples. An hour is valid with at least
//!   `hour_min_minutes` valid minutes and averages only those; a day is valid with at least
//!   `day_min_hours` valid hours and averages only those. Invalid minutes and hours never enter an
//!   average or a total.
//! - Min and max of an hour (day) are the extremes of its valid minute (hour) averages; the total
//!   (e.g. kg) is the sum over valid sub-windows of the sample rate (e.g. kg/h) times the time.
//! - A sample older than the open minute is dropped and counted ([`Window::late_samples`]).
//!   Hours or days with no data at all are not emitted.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::coefficients::ValidityTable;
use super::time::{DAY_MS, HOUR_MS, MINUTE_MS, floor};
use crate::model::{Aggregate, Period, Quality, Timestamp};

/// Validity rules and the site's UTC offset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowRules {
    /// Good samples a minute needs.
    pub minute_min_samples: u32,
    /// Share of a minute's samples that must be good (0–1).
    pub minute_min_good_ratio: f64,
    /// Valid minutes an hour needs (HJ 76: 45).
    pub hour_min_minutes: u32,
    /// Valid hours a day needs (HJ 76: 20).
    pub day_min_hours: u32,
    /// Site offset from UTC, ms (UTC+8: 28 800 000).
    pub utc_offset_ms: i64,
}

impl WindowRules {
    /// Rules from a validity table and a UTC offset.
    pub fn new(v: &ValidityTable, utc_offset_ms: i64) -> Self {
        WindowRules {
            minute_min_samples: v.minute_min_samples,
            minute_min_good_ratio: v.minute_min_good_ratio,
            hour_min_minutes: v.hour_min_minutes,
            day_min_hours: v.day_min_hours,
            utc_offset_ms,
        }
    }
}

/// Whether a month with `valid_days` valid days is valid (HJ 76: 25, February 23).
pub fn month_valid(v: &ValidityTable, month: u32, valid_days: u32) -> bool {
    valid_days
        >= if month == 2 {
            v.february_min_days
        } else {
            v.month_min_days
        }
}

/// One sample of the windowed quantity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Acquisition time.
    pub ts: Timestamp,
    /// Value (ignored unless quality is good).
    pub value: f64,
    /// Quality.
    pub quality: Quality,
    /// Rate of the cumulative quantity at this instant (kg/h for a mass flow), if any.
    pub rate_per_h: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Acc {
    start: Timestamp,
    len_ms: i64,
    valid: u32,
    seen: u32,
    sum: f64,
    min: f64,
    max: f64,
    total: f64,
    has_total: bool,
    bad: [u32; Quality::ALL.len()],
}

impl Acc {
    fn new(start: Timestamp, len_ms: i64) -> Self {
        Acc {
            start,
            len_ms,
            valid: 0,
            seen: 0,
            sum: 0.0,
            // Finite sentinels (not ±∞) so that a snapshot survives JSON; every value that
            // reaches `add_valid` is finite, so they never show in an aggregate.
            min: f64::MAX,
            max: f64::MIN,
            total: 0.0,
            has_total: false,
            bad: [0; Quality::ALL.len()],
        }
    }

    fn end(&self) -> Timestamp {
        Timestamp(self.start.0 + self.len_ms)
    }

    fn worst(&self) -> Quality {
        let (i, n) = self
            .bad
            .iter()
            .enumerate()
            .skip(1)
            .max_by_key(|(_, n)| **n)
            .expect("Quality has more than one variant");
        if *n == 0 {
            Quality::CommFail
        } else {
            Quality::ALL[i]
        }
    }

    /// Add a valid sub-window (or a good sample).
    fn add_valid(&mut self, avg: f64, min: f64, max: f64, total: Option<f64>) {
        self.seen += 1;
        self.valid += 1;
        self.sum += avg;
        self.min = self.min.min(min);
        self.max = self.max.max(max);
        if let Some(t) = total {
            self.total += t;
            self.has_total = true;
        }
    }

    fn add_invalid(&mut self, q: Quality) {
        self.seen += 1;
        self.bad[q as usize] += 1;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MinuteAcc {
    acc: Acc,
    rate_sum: f64,
    rate_n: u32,
}

/// Aggregation windows of one quantity of one subject. It serialises with its open windows, so
/// that an agent restart resumes them (see `PipelineSnapshot`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Window {
    subject: Arc<str>,
    quantity: Arc<str>,
    unit: Arc<str>,
    total_unit: Option<Arc<str>>,
    rules: WindowRules,
    expected_per_minute: u32,
    minute: Option<MinuteAcc>,
    hour: Option<Acc>,
    day: Option<Acc>,
    late: u64,
}

impl Window {
    /// Windows for `quantity` of `subject`, sampled every `sample_interval_ms`; `total_unit` names
    /// the unit of the integrated rate (`kg`) when samples carry one.
    pub fn new(
        subject: Arc<str>,
        quantity: Arc<str>,
        unit: Arc<str>,
        total_unit: Option<Arc<str>>,
        rules: WindowRules,
        sample_interval_ms: u64,
    ) -> Self {
        let expected = (60_000 / sample_interval_ms.max(1)).max(1);
        Window {
            subject,
            quantity,
            unit,
            total_unit,
            rules,
            expected_per_minute: u32::try_from(expected).unwrap_or(u32::MAX),
            minute: None,
            hour: None,
            day: None,
            late: 0,
        }
    }

    /// The same windows under other rules (after a restore, the configuration's rules apply).
    pub fn with_rules(mut self, rules: WindowRules) -> Self {
        self.rules = rules;
        self
    }

    /// Samples dropped because they were older than the open minute.
    pub fn late_samples(&self) -> u64 {
        self.late
    }

    /// Feed one sample; returns the windows it closed (minute, then hour, then day).
    pub fn push(&mut self, s: Sample, out: &mut Vec<Aggregate>) {
        let off = self.rules.utc_offset_ms;
        let m = floor(s.ts, MINUTE_MS, off);
        if let Some(cur) = &self.minute
            && m < cur.acc.start
        {
            self.late += 1;
            return;
        }
        self.advance(m, out);
        let cur = self.minute.get_or_insert_with(|| MinuteAcc {
            acc: Acc::new(m, MINUTE_MS),
            rate_sum: 0.0,
            rate_n: 0,
        });
        if s.quality.is_good() && s.value.is_finite() {
            cur.acc.add_valid(s.value, s.value, s.value, None);
            if let Some(r) = s.rate_per_h.filter(|r| r.is_finite()) {
                cur.rate_sum += r;
                cur.rate_n += 1;
            }
        } else {
            let q = if s.quality.is_good() {
                Quality::OutOfRange
            } else {
                s.quality
            };
            cur.acc.add_invalid(q);
        }
    }

    /// Close every window that ends at or before `now`.
    pub fn advance(&mut self, now: Timestamp, out: &mut Vec<Aggregate>) {
        if self.minute.as_ref().is_some_and(|m| m.acc.end() <= now) {
            let m = self.minute.take().expect("checked just above");
            self.close_minute(m, out);
        }
        if self.hour.as_ref().is_some_and(|h| h.end() <= now) {
            let h = self.hour.take().expect("checked just above");
            self.close_hour(h, out);
        }
        if self.day.as_ref().is_some_and(|d| d.end() <= now) {
            let d = self.day.take().expect("checked just above");
            let agg = self.aggregate(&d, Period::Day, 24, self.rules.day_min_hours);
            out.push(agg);
        }
    }

    fn close_minute(&mut self, m: MinuteAcc, out: &mut Vec<Aggregate>) {
        let acc = &m.acc;
        let good = acc.valid;
        let valid = good >= self.rules.minute_min_samples
            && f64::from(good) >= self.rules.minute_min_good_ratio * f64::from(acc.seen);
        let total = (m.rate_n > 0).then(|| m.rate_sum / f64::from(m.rate_n) / 60.0);
        let mut agg = self.aggregate_samples(acc, valid, total);
        agg.expected = self.expected_per_minute;
        let hour_start = floor(acc.start, HOUR_MS, self.rules.utc_offset_ms);
        if self.hour.as_ref().is_some_and(|h| h.start != hour_start) {
            let h = self.hour.take().expect("checked just above");
            self.close_hour(h, out);
        }
        let hour = self
            .hour
            .get_or_insert_with(|| Acc::new(hour_start, HOUR_MS));
        match (valid, agg.avg, agg.min, agg.max) {
            (true, Some(avg), Some(min), Some(max)) => hour.add_valid(avg, min, max, agg.total),
            _ => hour.add_invalid(agg.quality),
        }
        out.push(agg);
    }

    fn close_hour(&mut self, h: Acc, out: &mut Vec<Aggregate>) {
        let agg = self.aggregate(&h, Period::Hour, 60, self.rules.hour_min_minutes);
        let day_start = floor(h.start, DAY_MS, self.rules.utc_offset_ms);
        if self.day.as_ref().is_some_and(|d| d.start != day_start) {
            let d = self.day.take().expect("checked just above");
            out.push(self.aggregate(&d, Period::Day, 24, self.rules.day_min_hours));
        }
        let day = self.day.get_or_insert_with(|| Acc::new(day_start, DAY_MS));
        match (agg.valid, agg.avg, agg.min, agg.max) {
            (true, Some(avg), Some(min), Some(max)) => day.add_valid(avg, min, max, agg.total),
            _ => day.add_invalid(agg.quality),
        }
        out.push(agg);
    }

    fn aggregate_samples(&self, acc: &Acc, valid: bool, total: Option<f64>) -> Aggregate {
        let mut agg = self.aggregate_of(acc, Period::Minute, valid, acc.seen);
        agg.total = if valid { total } else { None };
        agg
    }

    fn aggregate(&self, acc: &Acc, period: Period, expected: u32, min_valid: u32) -> Aggregate {
        let valid = acc.valid >= min_valid;
        let mut agg = self.aggregate_of(acc, period, valid, expected);
        agg.total = (valid && acc.has_total).then_some(acc.total);
        agg
    }

    fn aggregate_of(&self, acc: &Acc, period: Period, valid: bool, expected: u32) -> Aggregate {
        let any = acc.valid > 0;
        Aggregate {
            subject: self.subject.clone(),
            quantity: self.quantity.clone(),
            unit: self.unit.clone(),
            period,
            start: acc.start,
            end: acc.end(),
            avg: (valid && any).then(|| acc.sum / f64::from(acc.valid)),
            min: (valid && any).then_some(acc.min),
            max: (valid && any).then_some(acc.max),
            total: None,
            total_unit: self.total_unit.clone(),
            samples: acc.valid,
            expected,
            valid,
            quality: if valid { Quality::Good } else { acc.worst() },
        }
    }
}
