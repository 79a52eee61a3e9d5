//! `GET /api/v1/series` and `GET /api/v1/series/names`: the trends of [`SeriesStore`], with what
//! is older than a ring (hourly windows) and the daily windows from the history store.
//!
//! Query parameters of `/api/v1/series` (documented with examples in docs/HTTP.md):
//! - `name` (1 to [`MAX_NAMES`] times): a series name ([`Selector::parse`]).
//! - `from`, `to`: ms since the Unix epoch, an RFC 3339 UTC time, `now`, or a time relative to
//!   now (`-6h`, `-30m`, `-90s`, `-2d`). Defaults: `to` now, `from` one hour before `to`.
//! - `max_points` (1 to [`MAX_POINTS`], default [`DEFAULT_POINTS`]): longer series are merged
//!   into runs of consecutive buckets ([`downsample`]).
//!
//! Anything else, or a value that does not parse, is answered `400` with `{"error": "…"}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Ctx;
use crate::model::{Period, Quality, Timestamp};
use crate::series::{
    Bucket, Found, HOURS, Key, Listed, Reference, Selector, SelectorError, SeriesStore, downsample,
    window_bucket,
};

/// Most series in one request.
pub const MAX_NAMES: usize = 16;
/// Most points per series in an answer.
pub const MAX_POINTS: usize = 10_000;
/// Points per series when `max_points` is not given.
pub const DEFAULT_POINTS: usize = 1_000;
/// Range when `from` is not given, ms.
const DEFAULT_RANGE_MS: i64 = 3_600_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// A query that does not parse: its message is the `error` of the `400` answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadQuery {
    /// A `name` that is no series name.
    #[error(transparent)]
    Name(#[from] SelectorError),
    /// A `%` not followed by two hex digits.
    #[error("bad percent-escape in {0:?}")]
    PercentEscape(String),
    /// A key or value that is not UTF-8 once decoded.
    #[error("{0:?} is not UTF-8")]
    NotUtf8(String),
    /// `from`, `to` or `max_points` given twice.
    #[error("{0} is given more than once")]
    Repeated(String),
    /// A parameter this endpoint does not take.
    #[error("unknown parameter {0:?}; expected name, from, to, max_points")]
    UnknownParameter(String),
    /// No `name` at all.
    #[error(
        "name is required (e.g. name=sum:line_current_ka); GET /api/v1/series/names lists the series kept"
    )]
    NoName,
    /// More than [`MAX_NAMES`] names.
    #[error("{0} series asked; at most {MAX_NAMES} per request")]
    TooManyNames(usize),
    /// A `from` or `to` that is no time.
    #[error(
        "{key}={text:?}: expected ms since the Unix epoch, an RFC 3339 UTC time, `now`, or -<n><s|m|h|d> (e.g. -6h)"
    )]
    Time {
        /// `from` or `to`.
        key: String,
        /// The value given.
        text: String,
    },
    /// `from` after `to`.
    #[error("from ({from_ms}) is after to ({to_ms})")]
    Reversed {
        /// Start, ms.
        from_ms: i64,
        /// End, ms.
        to_ms: i64,
    },
    /// A `max_points` out of range or no number.
    #[error("max_points={0:?}: expected a whole number from 1 to {MAX_POINTS}")]
    MaxPoints(String),
}

/// What `/api/v1/series` was asked.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesQuery {
    /// The series names as given, and what they select.
    pub names: Vec<(String, Selector)>,
    /// Start, ms since the Unix epoch.
    pub from_ms: i64,
    /// End, ms since the Unix epoch.
    pub to_ms: i64,
    /// Most points per series.
    pub max_points: usize,
}

/// The answer of `/api/v1/series`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SeriesAnswer {
    /// Start of the range, ms.
    pub from_ms: i64,
    /// End of the range, ms.
    pub to_ms: i64,
    /// One entry per series found (a metric selector may find several), in the order asked.
    pub series: Vec<SeriesJson>,
}

/// One series in columns: `t[i]`, `v[i]`, `min[i]`, `max[i]`, `q[i]` describe bucket `i`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SeriesJson {
    /// The series' name (a metric without its labels).
    pub name: String,
    /// A metric's labels.
    pub labels: BTreeMap<Arc<str>, Arc<str>>,
    /// Unit; `null` when the series has no data yet.
    pub unit: Option<Arc<str>>,
    /// `trend`, `cell`, `minute`, `hour` or `day`; `null` when unknown.
    pub class: Option<&'static str>,
    /// Width of one point after merging, seconds.
    pub resolution_s: f64,
    /// How many stored buckets each point merges (1: none).
    pub merged: usize,
    /// Points that came from the history store.
    pub from_history: usize,
    /// Bucket starts, ms since the Unix epoch.
    pub t: Vec<i64>,
    /// Means; `null` where no usable value fell in the bucket.
    pub v: Vec<Option<f64>>,
    /// Lowest values.
    pub min: Vec<Option<f64>>,
    /// Highest values.
    pub max: Vec<Option<f64>>,
    /// Qualities.
    pub q: Vec<Quality>,
    /// Limits and grade bounds to draw with it.
    pub references: Vec<Reference>,
}

fn percent_decode(s: &str) -> Result<String, BadQuery> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| BadQuery::PercentEscape(s.to_owned()))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| BadQuery::NotUtf8(s.to_owned()))
}

/// `from`/`to`: ms since the epoch, RFC 3339, `now` or `-<n><s|m|h|d>`.
fn parse_time(key: &str, text: &str, now_ms: i64) -> Result<i64, BadQuery> {
    let bad = || BadQuery::Time {
        key: key.to_owned(),
        text: text.to_owned(),
    };
    if text == "now" {
        return Ok(now_ms);
    }
    if let Some(rel) = text.strip_prefix('-') {
        let split = rel.len().saturating_sub(1);
        let (n, unit) = rel.split_at(split);
        let n: i64 = n.parse().map_err(|_| bad())?;
        let ms = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => HOUR_MS,
            "d" => DAY_MS,
            _ => return Err(bad()),
        };
        return n
            .checked_mul(ms)
            .and_then(|d| now_ms.checked_sub(d))
            .ok_or_else(bad);
    }
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(text).map_err(|_| bad())?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .ok_or_else(bad)
}

impl SeriesQuery {
    /// Parse the raw query string at `now_ms`.
    pub fn parse(raw: Option<&str>, now_ms: i64) -> Result<SeriesQuery, BadQuery> {
        let (mut names, mut from, mut to, mut max_points) = (Vec::new(), None, None, None);
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (percent_decode(k)?, percent_decode(v)?);
            let once = |slot: &Option<String>| match slot {
                Some(_) => Err(BadQuery::Repeated(k.clone())),
                None => Ok(Some(v.clone())),
            };
            match k.as_str() {
                "name" => {
                    let sel = Selector::parse(&v)?;
                    names.push((v, sel));
                }
                "from" => from = once(&from)?,
                "to" => to = once(&to)?,
                "max_points" => max_points = once(&max_points)?,
                other => {
                    return Err(BadQuery::UnknownParameter(other.to_owned()));
                }
            }
        }
        if names.is_empty() {
            return Err(BadQuery::NoName);
        }
        if names.len() > MAX_NAMES {
            return Err(BadQuery::TooManyNames(names.len()));
        }
        let to_ms = match &to {
            Some(t) => parse_time("to", t, now_ms)?,
            None => now_ms,
        };
        let from_ms = match &from {
            Some(t) => parse_time("from", t, now_ms)?,
            None => to_ms.saturating_sub(DEFAULT_RANGE_MS),
        };
        if from_ms > to_ms {
            return Err(BadQuery::Reversed { from_ms, to_ms });
        }
        let max_points = match &max_points {
            None => DEFAULT_POINTS,
            Some(m) => match m.parse::<usize>() {
                Ok(n) if (1..=MAX_POINTS).contains(&n) => n,
                _ => {
                    return Err(BadQuery::MaxPoints(m.clone()));
                }
            },
        };
        Ok(SeriesQuery {
            names,
            from_ms,
            to_ms,
            max_points,
        })
    }
}

fn f(v: f32) -> Option<f64> {
    (!v.is_nan()).then_some(f64::from(v))
}

/// What a series entry says besides its points.
struct Head {
    name: String,
    labels: BTreeMap<Arc<str>, Arc<str>>,
    unit: Option<Arc<str>>,
    /// Class name and bucket width, ms.
    class: Option<(&'static str, i64)>,
    from_history: usize,
    references: Vec<Reference>,
}

fn columns(head: Head, buckets: Vec<Bucket>, max_points: usize) -> SeriesJson {
    let (buckets, merged) = downsample(buckets, max_points);
    SeriesJson {
        name: head.name,
        labels: head.labels,
        unit: head.unit,
        class: head.class.map(|c| c.0),
        resolution_s: head
            .class
            .map_or(0.0, |c| (c.1 as f64 / 1000.0) * merged as f64),
        merged,
        from_history: head.from_history,
        t: buckets.iter().map(|b| b.start_ms).collect(),
        v: buckets.iter().map(|b| f(b.mean)).collect(),
        min: buckets.iter().map(|b| f(b.min)).collect(),
        max: buckets.iter().map(|b| f(b.max)).collect(),
        q: buckets.iter().map(|b| b.quality).collect(),
        references: head.references,
    }
}

/// Windows of `period` of `subject`/`quantity` overlapping `from..=to` from the history store
/// (blocking; called on the blocking pool). Returns the buckets and the unit.
fn history_windows(
    store: &crate::history::HistoryStore,
    period: Period,
    subject: &str,
    quantity: &str,
    from_ms: i64,
    to_ms: i64,
) -> (Vec<Bucket>, Option<Arc<str>>) {
    let len = if period == Period::Day {
        DAY_MS
    } else {
        HOUR_MS
    };
    let windows = store
        .windows_between(period, Timestamp(from_ms - len + 1), Timestamp(to_ms))
        .unwrap_or_else(|e| {
            tracing::error!("series: history store: {e}");
            Vec::new()
        });
    let mut unit = None;
    let buckets = windows
        .iter()
        .flatten()
        .filter(|a| &*a.subject == subject && &*a.quantity == quantity)
        .map(|a| {
            unit.get_or_insert_with(|| a.unit.clone());
            window_bucket(a)
        })
        .collect();
    (buckets, unit)
}

/// Answer `q` from `store` (and its history store, on the blocking pool).
pub async fn answer(store: &SeriesStore, q: &SeriesQuery) -> SeriesAnswer {
    let mut series = Vec::new();
    for (name, sel) in &q.names {
        match sel {
            Selector::Day { subject, quantity } => {
                series.push(day_series(store, q, name, subject, quantity).await);
            }
            sel => series.extend(ring_series(store, q, name, sel).await),
        }
    }
    SeriesAnswer {
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        series,
    }
}

/// The daily windows of `subject`/`quantity` in `q`'s range, all from the history store (none
/// without one).
async fn day_series(
    store: &SeriesStore,
    q: &SeriesQuery,
    name: &str,
    subject: &Arc<str>,
    quantity: &Arc<str>,
) -> SeriesJson {
    let (buckets, unit) = match store.history() {
        Some(h) => {
            let (s, qn, from, to) = (subject.clone(), quantity.clone(), q.from_ms, q.to_ms);
            tokio::task::spawn_blocking(move || history_windows(&h, Period::Day, &s, &qn, from, to))
                .await
                .unwrap_or_default()
        }
        None => (Vec::new(), None),
    };
    let head = Head {
        name: name.to_owned(),
        labels: BTreeMap::new(),
        unit,
        class: Some(("day", DAY_MS)),
        from_history: buckets.len(),
        references: store.window_references(subject, quantity),
    };
    columns(head, buckets, q.max_points)
}

/// The series `sel` matches in the in-memory rings, hours extended from the history store; one
/// empty series named `name` when nothing matches.
async fn ring_series(
    store: &SeriesStore,
    q: &SeriesQuery,
    name: &str,
    sel: &Selector,
) -> Vec<SeriesJson> {
    let mut series = Vec::new();
    let mut found = store.query(sel, q.from_ms, q.to_ms);
    // Hours not in memory (none closed since the start) may be in the history store.
    if found.is_empty()
        && let Selector::Exact(key @ Key::Hour { subject, quantity }) = sel
    {
        found.push(Found {
            key: key.clone(),
            unit: Arc::from(""),
            class: HOURS,
            buckets: Vec::new(),
            oldest_ms: None,
            references: store.window_references(subject, quantity),
        });
    }
    if found.is_empty() {
        let labels = match sel {
            Selector::Metric { labels, .. } => labels.iter().cloned().collect(),
            _ => BTreeMap::new(),
        };
        let head = Head {
            name: name.to_owned(),
            labels,
            unit: None,
            class: None,
            from_history: 0,
            references: Vec::new(),
        };
        series.push(columns(head, Vec::new(), q.max_points));
    }
    for mut f in found {
        let from_history = prepend_older_hours(store, q, &mut f).await;
        let head = Head {
            name: f.key.name(),
            labels: f.key.labels().iter().cloned().collect(),
            unit: (!f.unit.is_empty()).then_some(f.unit),
            class: Some((f.class.name, f.class.resolution_ms)),
            from_history,
            references: f.references,
        };
        series.push(columns(head, f.buckets, q.max_points));
    }
    series
}

/// For an hour series, the hours of `q`'s range older than its ring, read from the history store
/// and put before the ring's buckets (the unit too, when the ring had none); how many were added.
async fn prepend_older_hours(store: &SeriesStore, q: &SeriesQuery, f: &mut Found) -> usize {
    if let Key::Hour { subject, quantity } = &f.key
        && let Some(h) = store.history()
        && f.oldest_ms.is_none_or(|oldest| q.from_ms < oldest)
    {
        let until = f.oldest_ms.map_or(q.to_ms, |o| (o - 1).min(q.to_ms));
        let (s, qn, from) = (subject.to_string(), quantity.to_string(), q.from_ms);
        let (older, unit) = tokio::task::spawn_blocking(move || {
            history_windows(&h, Period::Hour, &s, &qn, from, until)
        })
        .await
        .unwrap_or_default();
        if let Some(unit) = unit.filter(|_| f.unit.is_empty()) {
            f.unit = unit;
        }
        let from_history = older.len();
        f.buckets.splice(0..0, older);
        return from_history;
    }
    0
}

fn bad_request(e: BadQuery) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({ "error": e.to_string() })),
    )
        .into_response()
}

pub(super) async fn series(State(ctx): State<Arc<Ctx>>, RawQuery(raw): RawQuery) -> Response {
    let q = match SeriesQuery::parse(raw.as_deref(), Timestamp::now().unix_ms()) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let body = answer(&ctx.live.series, &q).await;
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// The answer of `/api/v1/series/names`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NamesAnswer {
    /// Every series kept.
    pub series: Vec<Listed>,
    /// Series not kept because their class was full, since start.
    pub refused: u64,
}

pub(super) async fn names(State(ctx): State<Arc<Ctx>>) -> Response {
    let body = NamesAnswer {
        series: ctx.live.series.catalogue(),
        refused: ctx.live.series.refused(),
    };
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_800_000_000;

    fn parse(q: &str) -> Result<SeriesQuery, BadQuery> {
        SeriesQuery::parse(Some(q), NOW)
    }

    #[test]
    fn times_are_absolute_relative_or_rfc3339_with_defaults() {
        let q = parse("name=sum:line_current_ka").unwrap();
        assert_eq!(
            (q.from_ms, q.to_ms, q.max_points),
            (NOW - HOUR_MS, NOW, DEFAULT_POINTS)
        );
        let q = parse("name=sum:line_current_ka&from=-6h&to=now&max_points=300").unwrap();
        assert_eq!(
            (q.from_ms, q.to_ms, q.max_points),
            (NOW - 6 * HOUR_MS, NOW, 300)
        );
        let q =
            parse("name=mean:cell_voltage_v&from=2025-03-01T00:00:00Z&to=1740787200500").unwrap();
        assert_eq!((q.from_ms, q.to_ms), (1_740_787_200_000, 1_740_787_200_500));
        let q = parse("name=metric%3Apotline%2Fac_kwh_per_t_today%7Bline%3Dpotline1%7D&name=hour:gtc1_stack/so2_mg_m3").unwrap();
        assert_eq!(q.names.len(), 2);
        assert!(matches!(&q.names[0].1, Selector::Metric { labels, .. } if labels.len() == 1));
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        for (q, says) in [
            ("", "name is required"),
            ("from=-1h", "name is required"),
            ("name=volts", "has no kind"),
            ("name=sum:x&from=yesterday", "from=\"yesterday\""),
            ("name=sum:x&from=-5y", "from=\"-5y\""),
            ("name=sum:x&from=-1h&to=-2h", "is after to"),
            ("name=sum:x&max_points=0", "max_points=\"0\""),
            ("name=sum:x&max_points=20000", "from 1 to 10000"),
            ("name=sum:x&limit=5", "unknown parameter \"limit\""),
            ("name=sum:x&to=now&to=now", "more than once"),
            ("name=sum:x%zz", "percent-escape"),
        ] {
            let e = parse(q).unwrap_err().to_string();
            assert!(e.contains(says), "{q}: {e}");
        }
        let many = vec!["name=sum:x"; MAX_NAMES + 1].join("&");
        assert!(parse(&many).unwrap_err().to_string().contains("at most 16"));
    }
}
