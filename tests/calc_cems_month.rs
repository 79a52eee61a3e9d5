//! Monthly CEMS aggregates: a month is valid with 25 valid days (February 23), its average is
//! the mean of its valid days, its total the sum of its days' totals with their filled hours.
//! Months are driven at one sample a minute (`sample_interval_ms = 60000`), so a whole month is
//! 44,640 samples.

mod common;

use std::sync::Arc;

use common::calc::{close, of, rules, so2_rate_window};
use common::hj212::station;
use smeltwatch::calc::time::{DAY_MS, HOUR_MS, MINUTE_MS};
use smeltwatch::calc::window::{Sample, Window};
use smeltwatch::calc::{CalcConfig, Pipeline};
use smeltwatch::codec::Envelope;
use smeltwatch::model::{
    Aggregate, Period, Quality, Reading, ReadingBatch, Record, Timestamp, Value,
};

/// Local (UTC+8) midnight that starts 2025-03-01.
const MARCH: i64 = 1_740_787_200_000 - 8 * HOUR_MS;
/// Local midnight that starts 2025-02-01.
const FEBRUARY: i64 = MARCH - 28 * DAY_MS;
/// Local midnight that starts 2025-04-01.
const APRIL: i64 = MARCH + 31 * DAY_MS;

/// The monthly aggregates among `aggs`.
fn months(aggs: &[Aggregate]) -> Vec<&Aggregate> {
    aggs.iter()
        .filter(|a| a.period.as_str() == "month")
        .collect()
}

/// One sample a minute for the day at `start`, at `rate`; when `invalid`, only hours 0–9 are
/// good and the analyser calibrates from 10:00 (10 valid hours: the day is invalid).
fn feed_day(w: &mut Window, start: i64, rate: f64, invalid: bool, out: &mut Vec<Aggregate>) {
    for m in 0..24 * 60 {
        let quality = if invalid && m >= 10 * 60 {
            Quality::Calibration
        } else {
            Quality::Good
        };
        let s = Sample {
            ts: Timestamp(start + m * MINUTE_MS + 5_000),
            value: rate,
            quality,
            rate_per_h: Some(rate),
        };
        w.push(s, out);
    }
}

/// A month of `days` days from `start`, day `d` at 100 + d kg/h, the days in `invalid` invalid.
fn drive_month(start: i64, days: i64, invalid: std::ops::Range<i64>) -> Vec<Aggregate> {
    let mut w = so2_rate_window(60_000);
    let mut out = Vec::new();
    for d in 0..days {
        feed_day(
            &mut w,
            start + d * DAY_MS,
            100.0 + d as f64,
            invalid.contains(&d),
            &mut out,
        );
    }
    w.advance(Timestamp(start + days * DAY_MS), &mut out);
    out
}

#[test]
fn march_with_25_valid_days_is_valid_its_avg_the_mean_of_the_valid_days_its_total_with_filled_hours()
 {
    // days 10–15 (6 days) invalid: 10 valid hours each, the other 14 filled with the hour before
    let out = drive_month(MARCH, 31, 10..16);
    let m = months(&out);
    assert_eq!(m.len(), 1, "one month closes");
    let m = m[0];
    assert_eq!((m.start, m.end), (Timestamp(MARCH), Timestamp(APRIL)));
    assert_eq!((m.samples, m.expected), (25, 31));
    assert!(m.valid, "{m:?}");
    // mean of the 25 valid days' 100 + d kg/h: (3565 − 675) / 25
    close(m.avg.expect("valid month"), 115.6, 1e-9, "month avg, kg/h");
    assert_eq!((m.min, m.max), (Some(100.0), Some(130.0)));
    // every day's 24 hours have a value: 24 × Σ(100 + d) = 85,560 kg; without the 6 × 14 filled
    // hours it would be 85,560 − 14 × 675 = 76,110
    close(
        m.total.expect("month total"),
        85_560.0,
        1e-6,
        "month total, kg",
    );
    assert_eq!(m.total_unit.as_deref(), Some("kg"));
    assert_eq!(m.substituted, 6 * 14);
    assert_eq!(m.quality, Quality::Substituted);
}

#[test]
fn march_with_24_valid_days_is_invalid() {
    let out = drive_month(MARCH, 31, 10..17);
    let m = months(&out);
    assert_eq!(m.len(), 1, "one month closes");
    let m = m[0];
    assert_eq!((m.samples, m.expected, m.valid), (24, 31, false));
    assert_eq!((m.avg, m.min, m.max), (None, None, None));
    // the invalid days were calibrating
    assert_eq!(m.quality, Quality::Calibration);
    // like an invalid day under hj75, the month keeps its filled total
    close(
        m.total.expect("every hour has a value"),
        24.0 * (3100.0 + 465.0),
        1e-6,
        "month total, kg",
    );
}

#[test]
fn february_2025_with_23_valid_days_is_valid_and_with_22_is_not() {
    let out = drive_month(FEBRUARY, 28, 0..5);
    let m = months(&out);
    assert_eq!(m.len(), 1, "one month closes");
    let m = m[0];
    assert_eq!((m.start, m.end), (Timestamp(FEBRUARY), Timestamp(MARCH)));
    assert_eq!((m.samples, m.expected, m.valid), (23, 28, true), "{m:?}");
    // days 5–27: mean of 105..=127
    close(m.avg.expect("valid"), 116.0, 1e-9, "month avg");
    let out = drive_month(FEBRUARY, 28, 0..6);
    let m = months(&out)[0];
    assert_eq!((m.samples, m.valid), (22, false));
}

#[test]
fn the_month_total_is_the_sum_of_its_day_totals_and_substituted_the_sum_of_their_filled_hours() {
    let mut w = so2_rate_window(60_000);
    let mut out = Vec::new();
    for d in 0..31 {
        let start = MARCH + d * DAY_MS;
        match d {
            // silent from day 3 to 4 (two days of hours without data)
            3 | 4 => w.advance(Timestamp(start + DAY_MS), &mut out),
            // calibrating afternoons
            _ => feed_day(
                &mut w,
                start,
                50.0 + (d * 7 % 13) as f64,
                d % 10 == 0,
                &mut out,
            ),
        }
    }
    w.advance(Timestamp(APRIL), &mut out);
    let days = of(&out, Period::Day);
    assert_eq!(days.len(), 31, "every day emitted, the silent ones too");
    let m = months(&out)[0];
    let day_sum: f64 = days.iter().map(|d| d.total.expect("hj75 fills")).sum();
    close(m.total.expect("month total"), day_sum, 1e-9, "Σ day totals");
    let filled: u32 = days.iter().map(|d| d.substituted).sum();
    assert_eq!(m.substituted, filled);
    assert_eq!(filled, 48 + 4 * 14);
    let valid_days: Vec<f64> = days
        .iter()
        .filter(|d| d.valid)
        .map(|d| d.avg.expect("valid"))
        .collect();
    assert_eq!(m.samples as usize, valid_days.len());
    close(
        m.avg.expect("valid"),
        valid_days.iter().sum::<f64>() / valid_days.len() as f64,
        1e-9,
        "mean of the valid days",
    );
}

#[test]
fn a_month_without_data_is_emitted_invalid() {
    let mut w = so2_rate_window(60_000);
    let mut out = Vec::new();
    for d in 0..31 {
        feed_day(&mut w, MARCH + d * DAY_MS, 80.0, false, &mut out);
    }
    // the device falls silent for the whole of April; the agent keeps flushing
    w.advance(Timestamp(APRIL + 30 * DAY_MS), &mut out);
    let m = months(&out);
    assert_eq!(m.len(), 2, "{m:?}");
    let april = m[1];
    assert_eq!(
        (april.start, april.end),
        (Timestamp(APRIL), Timestamp(APRIL + 30 * DAY_MS))
    );
    assert_eq!((april.samples, april.expected, april.valid), (0, 30, false));
    assert_eq!(april.quality, Quality::CommFail);
    // its hours are filled from the last valid hour of March (80 kg/h; the gap is 720 h long
    // at the end, the maximum of the hours before it)
    close(
        april.total.expect("filled"),
        720.0 * 80.0,
        1e-6,
        "April, kg",
    );
    assert_eq!(april.substituted, 720);
}

#[test]
fn the_open_month_survives_a_restart_and_an_older_snapshot_without_it_restores() {
    let uninterrupted = drive_month(MARCH, 31, 10..16);
    let expected = months(&uninterrupted)[0].clone();
    let mut w = so2_rate_window(60_000);
    let mut out = Vec::new();
    for d in 0..15 {
        feed_day(
            &mut w,
            MARCH + d * DAY_MS,
            100.0 + d as f64,
            (10..16).contains(&d),
            &mut out,
        );
    }
    let json = serde_json::to_string(&w).expect("serialises");
    let mut w: Window = serde_json::from_str(&json).expect("parses");
    let mut w_old = {
        let mut v: serde_json::Value = serde_json::from_str(&json).expect("json");
        let obj = v.as_object_mut().expect("an object");
        assert!(obj.remove("month").is_some(), "the open month is saved");
        let rules = obj["rules"].as_object_mut().expect("rules");
        rules.remove("month_min_days");
        rules.remove("february_min_days");
        let w: Window = serde_json::from_value(v).expect("an older window parses");
        w.with_rules(self::rules())
    };
    let mut out_old = Vec::new();
    for d in 15..31 {
        let invalid = (10..16).contains(&d);
        feed_day(
            &mut w,
            MARCH + d * DAY_MS,
            100.0 + d as f64,
            invalid,
            &mut out,
        );
        feed_day(
            &mut w_old,
            MARCH + d * DAY_MS,
            100.0 + d as f64,
            invalid,
            &mut out_old,
        );
    }
    w.advance(Timestamp(APRIL), &mut out);
    w_old.advance(Timestamp(APRIL), &mut out_old);
    assert_eq!(months(&out), vec![&expected]);
    // a window saved before months existed starts its month with the first day it closes after
    // the restart (day 14, still open when it was saved): 15 of days 14–30 are valid
    let m = months(&out_old);
    assert_eq!(m.len(), 1);
    assert_eq!((m[0].samples, m[0].expected, m[0].valid), (15, 31, false));
}

// === through the pipeline: every stack quantity gets its month ===

const STACK: &str = include_str!("fixtures/calc_boiler_stack.toml");

fn reading(point: &str, value: f64, ts: i64) -> Reading {
    common::calc::reading(point, Value::Float(value), ts)
}

#[test]
fn the_pipeline_closes_a_month_for_each_stack_quantity() {
    let cfg: CalcConfig = toml::from_str(STACK).expect("calc config parses");
    let mut p = Pipeline::new(&cfg).expect("pipeline builds");
    let mut records = Vec::new();
    for m in 0..28 * 24 * 60 {
        let t = FEBRUARY + m * MINUTE_MS + 5_000;
        let b = ReadingBatch {
            source: Arc::from("plant"),
            device: Arc::from("boiler_stack"),
            unit_id: 1,
            poll_interval_ms: 60_000,
            scheduled: Timestamp(t),
            readings: vec![reading("so2_mg_m3", 40.0, t), reading("flow_m3h", 1.0e6, t)],
        };
        records.extend(
            p.on_batch(&b)
                .into_iter()
                .filter(|r| !matches!(r, Record::Aggregate(a) if a.period == Period::Minute)),
        );
    }
    records.extend(p.flush(Timestamp(MARCH)));
    let month = |q: &str| {
        records
            .iter()
            .find_map(|r| match r {
                Record::Aggregate(a) if a.period.as_str() == "month" && &*a.quantity == q => {
                    Some(a)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("a month of {q}"))
    };
    let c = month("so2_mg_m3");
    assert!(c.valid && c.total.is_none());
    close(c.avg.expect("valid"), 40.0, 1e-9, "mg/m³");
    // 40 mg/m³ × 10⁶ m³/h = 40 kg/h over 672 h
    close(
        month("so2_kg_h").total.expect("kg"),
        40.0 * 672.0,
        1e-6,
        "kg",
    );
    close(
        month("flow_m3h").total.expect("m³"),
        1.0e6 * 672.0,
        1e-3,
        "m³",
    );
    // the protobuf form carries the period; HJ 212 has no monthly command: no packet
    use smeltwatch::codec::{hj212, protobuf};
    use smeltwatch::config::Stream;
    let record = Record::Aggregate(month("so2_kg_h").clone());
    let bytes =
        protobuf::encode_record(Envelope::new("site", Stream::Emissions, 1, false), &record);
    let back = protobuf::decode_record(&bytes).expect("decodes");
    assert_eq!(back.record, record);
    let station = station(false);
    let table = hj212::Table::hj212_2017();
    let packets = hj212::encode_record(&table, &station, Timestamp(MARCH), &record);
    assert_eq!(packets.expect("no error"), Vec::<String>::new());
    let json = serde_json::to_value(month("so2_mg_m3")).expect("serialises");
    assert_eq!(json["period"], "month");
}
