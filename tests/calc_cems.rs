//! Stack (CEMS) figures under real plant conditions: hours with calibration minutes, hours and
//! days with no data, the substitution of missing hours in a day, and the measured versus the
//! converted (折算) concentration. Each test carries the worked example it checks.

use std::sync::Arc;

use smeltwatch::calc::coefficients::Coefficients;
use smeltwatch::calc::emissions::mass_flow_kg_h;
use smeltwatch::calc::time::{DAY_MS, HOUR_MS, MINUTE_MS};
use smeltwatch::calc::window::{Sample, Window, WindowRules};
use smeltwatch::calc::{CalcConfig, Pipeline};
use smeltwatch::model::{
    Aggregate, Period, Quality, Reading, ReadingBatch, Record, Timestamp, Value,
};

/// 2025-03-01T00:00:00Z = 08:00 local (UTC+8).
const T0: i64 = 1_740_787_200_000;
/// Local midnight that starts 2025-03-01.
const DAY0: i64 = T0 - 8 * HOUR_MS;

fn coef() -> Coefficients {
    Coefficients::embedded("cn-2025").expect("the shipped table parses")
}

fn close(actual: f64, expected: f64, tol: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: {actual} is not within {tol} of {expected}"
    );
}

fn rules() -> WindowRules {
    WindowRules::new(&coef().validity, 8 * HOUR_MS)
}

fn rate_window() -> Window {
    Window::new(
        Arc::from("gtc1_stack"),
        Arc::from("so2_kg_h"),
        Arc::from("kg/h"),
        Some(Arc::from("kg")),
        rules(),
        60_000,
    )
}

fn sample(ts: i64, value: f64, quality: Quality) -> Sample {
    Sample {
        ts: Timestamp(ts),
        value,
        quality,
        rate_per_h: Some(value),
    }
}

fn of(aggs: &[Aggregate], period: Period) -> Vec<&Aggregate> {
    aggs.iter().filter(|a| a.period == period).collect()
}

/// One sample per minute of the hour at `start`: the first `valid` minutes good at `rate`, the
/// others flagged calibration.
fn feed_hour(w: &mut Window, start: i64, valid: u32, rate: f64, out: &mut Vec<Aggregate>) {
    for i in 0..60 {
        let ts = start + i64::from(i) * MINUTE_MS + 5_000;
        let q = if i < valid {
            Quality::Good
        } else {
            Quality::Calibration
        };
        w.push(sample(ts, rate, q), out);
    }
}

// === item 3: missing CEMS data does not count as zero emission ===

#[test]
fn item_3_hour_with_47_valid_minutes_totals_136_48_kg_not_106_91() {
    let mut w = rate_window();
    let mut out = Vec::new();
    let rate = mass_flow_kg_h(85.3, 1.6e6); // 136.48 kg/h
    feed_hour(&mut w, T0, 47, rate, &mut out);
    w.advance(Timestamp(T0 + HOUR_MS), &mut out);
    let h = of(&out, Period::Hour)[0];
    assert!(h.valid);
    assert_eq!(h.samples, 47);
    // hourly mean rate × 1 h; the sum over the 47 valid minutes would be 106.91 kg
    close(h.total.expect("valid hour"), 136.48, 1e-9, "hour total, kg");
}

#[test]
fn item_3_hours_with_no_data_are_emitted_as_invalid_comm_fail() {
    let mut w = rate_window();
    let mut out = Vec::new();
    feed_hour(&mut w, T0, 60, 100.0, &mut out);
    // the device falls silent for two hours; the agent keeps flushing
    w.advance(Timestamp(T0 + 3 * HOUR_MS), &mut out);
    let hours = of(&out, Period::Hour);
    let starts: Vec<i64> = hours.iter().map(|h| h.start.0).collect();
    assert_eq!(starts, vec![T0, T0 + HOUR_MS, T0 + 2 * HOUR_MS]);
    for h in &hours[1..] {
        assert!(!h.valid, "{h:?}");
        assert_eq!(h.samples, 0);
        assert_eq!(h.quality, Quality::CommFail);
        assert_eq!((h.avg, h.total), (None, None));
    }
    // data again: hour 3 opens without re-emitting hours 1 and 2
    feed_hour(&mut w, T0 + 3 * HOUR_MS, 60, 100.0, &mut out);
    w.advance(Timestamp(T0 + 4 * HOUR_MS), &mut out);
    assert_eq!(of(&out, Period::Hour).len(), 4);
}

// === item 4: mass from the measured concentration, limits on the converted one ===

const O2_STACK: &str = r#"
utc_offset_hours = 8

[[stacks]]
name = "boiler_stack"
device = "plant/boiler_stack"
limits = "gb25467_2010_cu_smelting"
pollutants = { so2 = "so2_mg_m3" }
o2_point = "o2_pct"
o2_reference_pct = 6.0
"#;

fn reading(point: &str, value: f64, ts: i64) -> Reading {
    Reading {
        point: Arc::from(point),
        value: Some(Value::Float(value)),
        unit: Arc::from(""),
        quality: Quality::Good,
        ts: Timestamp(ts),
    }
}

fn stack_batch(ts: i64, readings: Vec<Reading>) -> ReadingBatch {
    ReadingBatch {
        source: Arc::from("plant"),
        device: Arc::from("boiler_stack"),
        unit_id: 1,
        poll_interval_ms: 10_000,
        scheduled: Timestamp(ts),
        readings,
    }
}

fn pipeline(toml_text: &str) -> Pipeline {
    let cfg: CalcConfig = toml::from_str(toml_text).expect("calc config parses");
    Pipeline::new(&cfg).expect("pipeline builds")
}

fn hour_of<'a>(records: &'a [Record], quantity: &str) -> &'a Aggregate {
    records
        .iter()
        .find_map(|r| match r {
            Record::Aggregate(a) if a.period == Period::Hour && &*a.quantity == quantity => Some(a),
            _ => None,
        })
        .unwrap_or_else(|| panic!("an hour of {quantity}"))
}

#[test]
fn item_4_mass_uses_the_measured_concentration_100_kg_h_not_150() {
    let mut p = pipeline(O2_STACK);
    let mut records = Vec::new();
    for i in 0..360 {
        let t = T0 + i * 10_000;
        records.extend(p.on_batch(&stack_batch(
            t,
            vec![
                reading("so2_mg_m3", 100.0, t),
                reading("o2_pct", 11.0, t),
                reading("flow_m3h", 1.0e6, t),
            ],
        )));
    }
    records.extend(p.flush(Timestamp(T0 + HOUR_MS)));
    let kg = hour_of(&records, "so2_kg_h");
    // 100 mg/m³ × 10⁶ m³/h × 10⁻⁶; the converted 150 mg/m³ would give 150 kg/h
    close(kg.avg.expect("valid"), 100.0, 1e-9, "SO2 kg/h");
    close(kg.total.expect("valid"), 100.0, 1e-9, "SO2 kg in the hour");
    let measured = hour_of(&records, "so2_mg_m3");
    close(measured.avg.expect("valid"), 100.0, 1e-9, "measured mg/m³");
}

// === item 3: a day's missing hours are filled by the substitution policy (HJ 75 default) ===

const PLAIN_STACK: &str = r#"
utc_offset_hours = 8

[[stacks]]
name = "boiler_stack"
device = "plant/boiler_stack"
pollutants = { so2 = "so2_mg_m3" }
calibration_point = "in_calibration"
"#;

/// One poll a minute for every hour of the local day 2025-03-01: `so2(hour)` gives the SO2
/// concentration and whether the analyser is calibrating, `None` a silent device.
fn drive_day(p: &mut Pipeline, so2: impl Fn(i64) -> Option<(f64, bool)>) -> Vec<Record> {
    let mut records = Vec::new();
    for m in 0..24 * 60 {
        let t = DAY0 + m * MINUTE_MS + 5_000;
        let Some((c, cal)) = so2(m / 60) else {
            records.extend(p.flush(Timestamp(t)));
            continue;
        };
        let mut b = stack_batch(
            t,
            vec![
                reading("so2_mg_m3", c, t),
                reading("flow_m3h", 1.0e6, t),
                reading("in_calibration", if cal { 1.0 } else { 0.0 }, t),
            ],
        );
        b.poll_interval_ms = 60_000;
        records.extend(p.on_batch(&b));
    }
    records.extend(p.flush(Timestamp(DAY0 + DAY_MS)));
    records
}

fn day_of<'a>(records: &'a [Record], quantity: &str) -> &'a Aggregate {
    records
        .iter()
        .find_map(|r| match r {
            Record::Aggregate(a) if a.period == Period::Day && &*a.quantity == quantity => Some(a),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a day of {quantity}"))
}

#[test]
fn item_3_day_fills_a_3_hour_calibration_gap_with_the_mean_of_its_neighbours_1575_kg() {
    let mut p = pipeline(PLAIN_STACK);
    // 50 kg/h for hours 0-9, calibrating hours 10-12, 80 kg/h for hours 13-23
    let records = drive_day(&mut p, |h| match h {
        0..=9 => Some((50.0, false)),
        10..=12 => Some((50.0, true)),
        _ => Some((80.0, false)),
    });
    let day = day_of(&records, "so2_kg_h");
    assert!(day.valid, "{day:?}");
    assert_eq!(day.samples, 21);
    // 10 × 50 + 3 × (50 + 80)/2 + 11 × 80; counting the gap as zero gives 1380
    close(
        day.total.expect("filled day"),
        1575.0,
        1e-6,
        "day total, kg",
    );
    assert_eq!(day.quality, Quality::Substituted);
    // the day's average stays the mean of its valid hours
    close(
        day.avg.expect("valid day"),
        (500.0 + 880.0) / 21.0,
        1e-9,
        "day avg",
    );
}

#[test]
fn item_3_a_silent_device_at_the_end_of_the_day_is_filled_with_the_hour_before_1200_kg() {
    let mut p = pipeline(PLAIN_STACK);
    let records = drive_day(&mut p, |h| (h < 22).then_some((50.0, false)));
    let hours: Vec<&Aggregate> = records
        .iter()
        .filter_map(|r| match r {
            Record::Aggregate(a) if a.period == Period::Hour && &*a.quantity == "so2_kg_h" => {
                Some(a)
            }
            _ => None,
        })
        .collect();
    assert_eq!(hours.len(), 24, "the two silent hours are emitted");
    assert!(
        hours[22..]
            .iter()
            .all(|h| !h.valid && h.quality == Quality::CommFail)
    );
    let day = day_of(&records, "so2_kg_h");
    assert!(day.valid);
    // 22 × 50 + 2 × 50 (no hour after the gap yet: the hour before it); without filling 1100
    close(
        day.total.expect("filled day"),
        1200.0,
        1e-6,
        "day total, kg",
    );
    assert_eq!(day.quality, Quality::Substituted);
}
