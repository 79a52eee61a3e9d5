//! Clock-aligned minute, hour, day and month aggregates with the HJ 75/76 validity rules, and
//! the substitution of a day's missing hours of mass.
//!
//! Invariants:
//! - Windows are aligned in the site's local time and closed only by timestamps: a sample in a
//!   later minute closes the current one (and the hour or day it ends); [`Window::advance`]
//!   closes windows whose end has passed without new data.
//! - A sample of bad quality never counts as valid data. A minute is valid with at least
//!   `minute_min_samples` good samples making up at least `minute_min_good_ratio` of its samples;
//!   its average is the mean of its good samples. An hour is valid with at least
//!   `hour_min_minutes` valid minutes and averages only those; a day is valid with at least
//!   `day_min_hours` valid hours and averages only those (HJ 76: the day's concentration is the
//!   mean of its valid hours, filled hours never enter it). Min and max of an hour (day) are the
//!   extremes of its valid minute (hour) averages.
//! - Totals (kg of a kg/h rate, m³ of a m³/h flow): a valid minute's total is the mean rate of
//!   its good samples × 1 min. A valid hour's total is the mean rate of its valid minutes × 1 h,
//!   so calibration or missing minutes in a valid hour do not count as zero emission; an invalid
//!   hour has no total. A day's total is the sum over its 24 hours of the valid hours' totals and,
//!   for every missing or invalid hour, the value of the substitution policy
//!   ([`SubstitutionPolicy`]): the day counts the filled hours in `substituted` and its quality is
//!   `substituted` when it is otherwise valid. Under `hj75` a day has a total when every hour
//!   has a value (valid or filled), valid day or not; under `none` only a valid day has one, the
//!   sum of its valid hours.
//! - The `hj75` rule: a gap (a run of missing or invalid hours) of at most `short_gap_max_hours`
//!   takes the mean of the last valid hour before it and the first valid hour after it; a longer
//!   gap takes the maximum of the `long_gap_lookback_hours` valid hours before it. A gap is
//!   filled when its day closes: a gap at the end of the day has no hour after it yet, so it takes
//!   the valid hour before it, and its length is what is known at the close (a gap that goes on
//!   into the next day is not revisited). A gap with only one neighbour known (the first hours a
//!   window ever saw) takes that neighbour. What the rule needs across days (the last valid hour,
//!   the length of the gap in progress, the last `long_gap_lookback_hours` valid hours) is part of
//!   the serialised window, so a restart resumes it.
//! - A month (calendar month in local time) is valid with at least `month_min_days` valid days,
//!   `february_min_days` in February (HJ 76: 25 and 23; [`month_valid`]). Its average is the mean
//!   of its valid days' averages (filled hours never enter it, as for a day), its min and max the
//!   extremes of its valid days'. Its total is the sum of its days' totals, filled hours
//!   included, and its `substituted` the sum of their filled hours: the month's mass is what
//!   was reported day by day, never recomputed. Under `hj75` a month has a total when every day
//!   it covers has one, valid month or not; under `none` only a valid month has one, the sum of
//!   its valid days' totals. A month's quality is `substituted` when it is valid with filled
//!   hours, `good` when valid without, otherwise the worst quality of its invalid days. The
//!   days a month covers run from its first day to its end, or from the first day the window
//!   closed in it (a window that started, or was restored from a snapshot without an open month,
//!   in mid-month): those earlier days count as missing in `samples` against `expected` (the
//!   days of the month). A month closes with its last day, through the same `push`/`advance`.
//! - An hour with no data at all (device silent, agent down) is still emitted, with 0 samples,
//!   not valid, quality `comm_fail`; so is a day and a month. [`Window::advance`] emits every hour between the
//!   last closed one and `now`, but at most [`MAX_CATCH_UP_HOURS`] (31 days) of hours after the
//!   day in progress: after a longer silence the whole days before that are not emitted (they
//!   still count in the length of the gap, and a month they belong to has no total; a month
//!   all of whose days were jumped over is not emitted). Minutes with no data are not emitted (the hour's
//!   `samples` says how many it had). Hours before the first sample a window ever saw are not
//!   emitted either, but they count as missing hours of that day.
//! - A sample older than the open minute, or in an hour already closed, is dropped and counted
//!   ([`Window::late_samples`]).

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use super::coefficients::SubstitutionPolicy;
use super::coefficients::{SubstitutionTable, ValidityTable};
use super::time::{DAY_MS, HOUR_MS, MINUTE_MS, civil, days_from_civil, days_in_month, floor};
use crate::model::{Aggregate, Period, Quality, Timestamp};

/// Most hours without data that [`Window::advance`] emits after the day in progress (31 days):
/// it bounds the work and the output of one call after a long outage.
pub const MAX_CATCH_UP_HOURS: i64 = 31 * 24;

/// The substitution rule a window applies to its day totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Substitution {
    /// Which rule.
    pub policy: SubstitutionPolicy,
    /// Longest gap, hours, filled with the mean of its neighbours.
    pub short_gap_max_hours: u32,
    /// Valid hours a longer gap looks back over for their maximum (and that a window keeps).
    pub long_gap_lookback_hours: u32,
}

impl Substitution {
    /// The rule of a coefficient table, with its policy replaced by `policy` when given.
    pub fn new(t: &SubstitutionTable, policy: Option<SubstitutionPolicy>) -> Self {
        Substitution {
            policy: policy.unwrap_or(t.policy),
            short_gap_max_hours: t.short_gap_max_hours,
            long_gap_lookback_hours: t.long_gap_lookback_hours,
        }
    }
}

/// Validity rules, the substitution rule and the site's UTC offset.
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
    /// Valid days a month needs (HJ 76: 25).
    #[serde(default = "default_month_min_days")]
    pub month_min_days: u32,
    /// Valid days February needs (HJ 76: 23).
    #[serde(default = "default_february_min_days")]
    pub february_min_days: u32,
    /// Site offset from UTC, ms (UTC+8: 28 800 000).
    pub utc_offset_ms: i64,
    /// How a day fills its missing hours (policy `none` unless set).
    #[serde(default)]
    pub substitution: Substitution,
}

impl WindowRules {
    /// Rules from a validity table and a UTC offset, without substitution (see
    /// [`WindowRules::with_substitution`]).
    pub fn new(v: &ValidityTable, utc_offset_ms: i64) -> Self {
        WindowRules {
            minute_min_samples: v.minute_min_samples,
            minute_min_good_ratio: v.minute_min_good_ratio,
            hour_min_minutes: v.hour_min_minutes,
            day_min_hours: v.day_min_hours,
            month_min_days: v.month_min_days,
            february_min_days: v.february_min_days,
            utc_offset_ms,
            substitution: Substitution::default(),
        }
    }

    /// The same rules with a substitution rule.
    pub fn with_substitution(mut self, substitution: Substitution) -> Self {
        self.substitution = substitution;
        self
    }
}

/// The month rule of a window saved before it had one (replaced by the configured rule on
/// restore, see [`Window::with_rules`]): HJ 76's 25 days.
fn default_month_min_days() -> u32 {
    25
}

/// February's part of the rule above: HJ 76's 23 days.
fn default_february_min_days() -> u32 {
    23
}

/// Whether a month with `valid_days` valid days is valid (HJ 76: 25, February 23).
pub fn month_valid(v: &ValidityTable, month: u32, valid_days: u32) -> bool {
    min_days_met(v.month_min_days, v.february_min_days, month, valid_days)
}

fn min_days_met(month_min_days: u32, february_min_days: u32, month: u32, valid_days: u32) -> bool {
    valid_days
        >= if month == 2 {
            february_min_days
        } else {
            month_min_days
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

/// The open month: its days as a day's hours are in [`Acc`], and what its total needs besides.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MonthAcc {
    acc: Acc,
    /// Calendar month (1–12), for the February rule.
    month: u32,
    /// Start of the first day closed in it.
    first_day: Timestamp,
    /// Days closed in it.
    days: u32,
    /// Days with a total, and the sum of those totals.
    days_with_total: u32,
    total: f64,
    /// Sum of the valid days' totals (the month's total under `none`).
    valid_total: f64,
    /// Hours filled in its days.
    filled_hours: u32,
}

/// What the substitution rule carries from one day to the next.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct FillState {
    /// Total of the last valid hour.
    last_valid: Option<f64>,
    /// Missing or invalid hours since it (the gap in progress).
    gap_hours: u32,
    /// Totals of the last `long_gap_lookback_hours` valid hours, oldest first.
    history: VecDeque<f64>,
}

impl FillState {
    fn push_valid(&mut self, total: f64, lookback: u32) {
        self.last_valid = Some(total);
        self.gap_hours = 0;
        self.history.push_back(total);
        while self.history.len() > lookback as usize {
            self.history.pop_front();
        }
    }

    /// The `hj75` value of one hour of a gap of `gap_hours`, `after` the first valid hour after it
    /// (if known).
    fn hj75(&self, rule: &Substitution, gap_hours: u32, after: Option<f64>) -> Option<f64> {
        if gap_hours > rule.short_gap_max_hours {
            return self.history.iter().copied().reduce(f64::max).or(after);
        }
        match (self.last_valid, after) {
            (Some(b), Some(a)) => Some((b + a) / 2.0),
            (b, a) => b.or(a),
        }
    }
}

/// Aggregation windows of one quantity of one subject. It serialises with its open windows and
/// the substitution state, so that an agent restart resumes them (see `PipelineSnapshot`).
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
    /// Start of the first hour not closed yet (absent before the first sample; derived from the
    /// open windows in a snapshot written before it existed).
    #[serde(default)]
    next_hour: Option<Timestamp>,
    /// Totals of the open day's valid hours: (hour of the day, total).
    #[serde(default)]
    day_hours: Vec<(u32, f64)>,
    #[serde(default)]
    fill: FillState,
    /// The open month (absent in a snapshot written before months: it starts with the next day
    /// closed).
    #[serde(default)]
    month: Option<MonthAcc>,
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
            next_hour: None,
            day_hours: Vec::new(),
            fill: FillState::default(),
            month: None,
        }
    }

    /// The same windows under other rules (after a restore, the configuration's rules apply).
    pub fn with_rules(mut self, rules: WindowRules) -> Self {
        self.rules = rules;
        self
    }

    /// Samples dropped because they were older than the open minute or in a closed hour.
    pub fn late_samples(&self) -> u64 {
        self.late
    }

    /// Feed one sample; returns the windows it closed (minute, then hour, then day, then month).
    pub fn push(&mut self, s: Sample, out: &mut Vec<Aggregate>) {
        let off = self.rules.utc_offset_ms;
        let m = floor(s.ts, MINUTE_MS, off);
        let late = match &self.minute {
            Some(cur) => m < cur.acc.start,
            None => self.next_hour.is_some_and(|h| m < h),
        };
        if late {
            self.late += 1;
            return;
        }
        self.advance(m, out);
        if self.next_hour.is_none() {
            self.next_hour = Some(floor(m, HOUR_MS, off));
        }
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

    /// Close every window that ends at or before `now`, hours without data included (see the
    /// module doc for the bound).
    pub fn advance(&mut self, now: Timestamp, out: &mut Vec<Aggregate>) {
        if self.minute.as_ref().is_some_and(|m| m.acc.end() <= now) {
            let m = self.minute.take().expect("checked just above");
            self.close_minute(m, out);
        }
        self.close_hours_until(now, out);
    }

    /// Close every hour that ends at or before `t`, from the first one not closed yet.
    fn close_hours_until(&mut self, t: Timestamp, out: &mut Vec<Aggregate>) {
        let Some(mut h) = self
            .next_hour
            .or_else(|| self.hour.as_ref().map(|a| a.start))
        else {
            return;
        };
        while h.0 + HOUR_MS <= t.0 {
            // After a long silence, jump over whole days once nothing is open (the day in
            // progress has closed): their hours count in the gap but are not emitted.
            if self.hour.is_none()
                && self.day.is_none()
                && (t.0 - h.0) / HOUR_MS > MAX_CATCH_UP_HOURS
            {
                let resume = floor(
                    Timestamp(t.0 - MAX_CATCH_UP_HOURS * HOUR_MS),
                    DAY_MS,
                    self.rules.utc_offset_ms,
                );
                if resume > h {
                    let skipped = u32::try_from((resume.0 - h.0) / HOUR_MS).unwrap_or(u32::MAX);
                    self.fill.gap_hours = self.fill.gap_hours.saturating_add(skipped);
                    h = resume;
                    self.next_hour = Some(h);
                    continue;
                }
            }
            let acc = match self.hour.take() {
                Some(a) if a.start == h => a,
                other => {
                    self.hour = other;
                    Acc::new(h, HOUR_MS)
                }
            };
            self.close_hour(acc, out);
            h = Timestamp(h.0 + HOUR_MS);
            self.next_hour = Some(h);
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
        self.close_hours_until(hour_start, out);
        if self.next_hour.is_none() {
            self.next_hour = Some(hour_start);
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
        let off = self.rules.utc_offset_ms;
        let day_start = floor(h.start, DAY_MS, off);
        if self.day.as_ref().is_some_and(|d| d.start != day_start) {
            let d = self.day.take().expect("checked just above");
            self.close_day(d, out);
        }
        let day = self.day.get_or_insert_with(|| Acc::new(day_start, DAY_MS));
        match (agg.valid, agg.avg, agg.min, agg.max) {
            (true, Some(avg), Some(min), Some(max)) => {
                day.add_valid(avg, min, max, agg.total);
                if let Some(t) = agg.total {
                    let index = u32::try_from((h.start.0 - day_start.0) / HOUR_MS).unwrap_or(0);
                    self.day_hours.push((index, t));
                }
            }
            _ => day.add_invalid(agg.quality),
        }
        let day_ends = day.end() == h.end();
        out.push(agg);
        if day_ends {
            let d = self.day.take().expect("opened just above");
            self.close_day(d, out);
        }
    }

    fn close_day(&mut self, d: Acc, out: &mut Vec<Aggregate>) {
        let mut agg = self.aggregate(&d, Period::Day, 24, self.rules.day_min_hours);
        let hours = std::mem::take(&mut self.day_hours);
        if self.total_unit.is_some() {
            let (total, filled) = self.fill_day(&d, &hours);
            if self.rules.substitution.policy == SubstitutionPolicy::Hj75 {
                agg.total = total;
                agg.substituted = filled;
                if agg.valid && filled > 0 {
                    agg.quality = Quality::Substituted;
                }
            }
        }
        self.add_day_to_month(&agg, out);
        out.push(agg);
        if self.month.as_ref().is_some_and(|m| m.acc.end() == d.end()) {
            let m = self.month.take().expect("checked just above");
            self.close_month(m, out);
        }
    }

    /// Count a closed day in its month, closing first an open month it is not part of (days
    /// jumped over after a long silence).
    fn add_day_to_month(&mut self, day: &Aggregate, out: &mut Vec<Aggregate>) {
        let off = self.rules.utc_offset_ms;
        let local = (day.start.0 + off).div_euclid(DAY_MS);
        let (y, mo, _) = civil(local);
        let month_start = Timestamp(days_from_civil(y, mo, 1) * DAY_MS - off);
        if self
            .month
            .as_ref()
            .is_some_and(|m| m.acc.start != month_start)
        {
            let m = self.month.take().expect("checked just above");
            self.close_month(m, out);
        }
        let m = self.month.get_or_insert_with(|| MonthAcc {
            acc: Acc::new(month_start, i64::from(days_in_month(y, mo)) * DAY_MS),
            month: mo,
            first_day: day.start,
            days: 0,
            days_with_total: 0,
            total: 0.0,
            valid_total: 0.0,
            filled_hours: 0,
        });
        m.days += 1;
        m.filled_hours = m.filled_hours.saturating_add(day.substituted);
        if let Some(t) = day.total {
            m.days_with_total += 1;
            m.total += t;
        }
        match (day.valid, day.avg, day.min, day.max) {
            (true, Some(avg), Some(min), Some(max)) => {
                if let Some(t) = day.total {
                    m.valid_total += t;
                }
                m.acc.add_valid(avg, min, max, day.total);
            }
            _ => m.acc.add_invalid(day.quality),
        }
    }

    fn close_month(&self, m: MonthAcc, out: &mut Vec<Aggregate>) {
        let r = &self.rules;
        let expected = u32::try_from(m.acc.len_ms / DAY_MS).unwrap_or(31);
        let valid = min_days_met(r.month_min_days, r.february_min_days, m.month, m.acc.valid);
        let mut agg = self.aggregate_of(&m.acc, Period::Month, valid, expected);
        if self.total_unit.is_some() {
            if r.substitution.policy == SubstitutionPolicy::Hj75 {
                let covered = u32::try_from((m.acc.end().0 - m.first_day.0) / DAY_MS).unwrap_or(0);
                agg.total = (m.days_with_total == covered && covered > 0).then_some(m.total);
                agg.substituted = m.filled_hours;
                if valid && m.filled_hours > 0 {
                    agg.quality = Quality::Substituted;
                }
            } else {
                agg.total = (valid && m.acc.has_total).then_some(m.valid_total);
            }
        }
        out.push(agg);
    }

    /// Walk the day's hours in order: valid hours feed the substitution state, each gap gets the
    /// `hj75` value. Returns the day's total when every hour has a value, and the hours filled.
    fn fill_day(&mut self, d: &Acc, hours: &[(u32, f64)]) -> (Option<f64>, u32) {
        let rule = self.rules.substitution;
        let n = usize::try_from(d.len_ms / HOUR_MS).unwrap_or(24);
        let mut slots: Vec<Option<f64>> = vec![None; n];
        for &(i, t) in hours {
            if let Some(s) = slots.get_mut(i as usize) {
                *s = Some(t);
            }
        }
        let (mut total, mut filled, mut complete) = (0.0, 0u32, true);
        let mut i = 0;
        while i < n {
            if let Some(t) = slots[i] {
                total += t;
                self.fill.push_valid(t, rule.long_gap_lookback_hours);
                i += 1;
                continue;
            }
            let first = i;
            while i < n && slots[i].is_none() {
                i += 1;
            }
            let run = u32::try_from(i - first).unwrap_or(u32::MAX);
            let gap = self.fill.gap_hours.saturating_add(run);
            let after = slots.get(i).copied().flatten();
            match self.fill.hj75(&rule, gap, after) {
                Some(v) => {
                    total += v * f64::from(run);
                    filled += run;
                }
                None => complete = false,
            }
            self.fill.gap_hours = gap;
        }
        (complete.then_some(total), filled)
    }

    fn aggregate_samples(&self, acc: &Acc, valid: bool, total: Option<f64>) -> Aggregate {
        let mut agg = self.aggregate_of(acc, Period::Minute, valid, acc.seen);
        agg.total = if valid { total } else { None };
        agg
    }

    /// An hour or day; `expected` sub-windows of which `min_valid` must be valid. An hour's total
    /// is the mean of its valid minutes' totals × 60 (the mean rate × 1 h); a day's, before
    /// substitution, the sum of its valid hours' totals.
    fn aggregate(&self, acc: &Acc, period: Period, expected: u32, min_valid: u32) -> Aggregate {
        let valid = acc.valid >= min_valid;
        let mut agg = self.aggregate_of(acc, period, valid, expected);
        agg.total = (valid && acc.has_total).then(|| match period {
            Period::Hour => acc.total / f64::from(acc.valid) * f64::from(expected),
            Period::Minute | Period::Day | Period::Month => acc.total,
        });
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
            substituted: 0,
        }
    }
}
