//! Stack (CEMS) figures under real plant conditions: hours with calibration minutes, hours and
//! days with no data, the substitution of missing hours in a day, and the measured versus the
//! converted (折算) concentration. Each test carries the worked example it checks.

mod common;

use std::sync::Arc;

use common::calc::{close, events_of, of, rules, sample, so2_rate_window};
use smeltwatch::calc::emissions::mass_flow_kg_h;
use smeltwatch::calc::time::{DAY_MS, HOUR_MS, MINUTE_MS};
use smeltwatch::calc::window::{MAX_CATCH_UP_HOURS, Window};
use smeltwatch::calc::{CalcConfig, Pipeline};
use smeltwatch::codec::Envelope;
use smeltwatch::model::{
    Aggregate, Period, Quality, Reading, ReadingBatch, Record, Timestamp, Value,
};

/// 2025-03-01T00:00:00Z = 08:00 local (UTC+8).
const T0: i64 = 1_740_787_200_000;
/// Local midnight that starts 2025-03-01.
const DAY0: i64 = T0 - 8 * HOUR_MS;

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
    let mut w = so2_rate_window(60_000);
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
    let mut w = so2_rate_window(60_000);
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

const O2_STACK: &str = concat!(
    include_str!("fixtures/calc_boiler_stack.toml"),
    r#"limits = "gb25467_2010_cu_smelting"
o2_point = "o2_pct"
o2_reference_pct = 6.0
"#,
);

fn reading(point: &str, value: f64, ts: i64) -> Reading {
    common::calc::reading(point, Value::Float(value), ts)
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

const PLAIN_STACK: &str = concat!(
    include_str!("fixtures/calc_boiler_stack.toml"),
    "calibration_point = \"in_calibration\"\n",
);

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
    assert_eq!(day.substituted, 3);
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
    assert_eq!(day.substituted, 2);
}

#[test]
fn item_3_a_stack_with_substitution_none_keeps_the_sum_of_its_valid_hours() {
    let cfg = format!("{PLAIN_STACK}substitution = \"none\"\n");
    let mut p = pipeline(&cfg);
    let records = drive_day(&mut p, |h| match h {
        0..=9 => Some((50.0, false)),
        10..=12 => Some((50.0, true)),
        _ => Some((80.0, false)),
    });
    let day = day_of(&records, "so2_kg_h");
    close(
        day.total.expect("valid day"),
        1380.0,
        1e-6,
        "valid hours only",
    );
    assert_eq!((day.substituted, day.quality), (0, Quality::Good));
}

/// Day 1 valid (50 kg/h, 120 at 05:00), day 2 silent, day 3 silent until noon then 60 kg/h; the
/// window goes through JSON (an agent restart) after day 1.
#[test]
fn item_3_a_gap_longer_than_24_hours_takes_the_maximum_of_the_preceding_valid_hours() {
    let mut w = so2_rate_window(60_000);
    let mut out = Vec::new();
    for h in 0..24 {
        let rate = if h == 5 { 120.0 } else { 50.0 };
        feed_hour(&mut w, DAY0 + h * HOUR_MS, 60, rate, &mut out);
    }
    w.advance(Timestamp(DAY0 + DAY_MS), &mut out);
    let json = serde_json::to_string(&w).expect("window serialises");
    let mut w: Window = serde_json::from_str(&json).expect("window parses");
    w.advance(Timestamp(DAY0 + 2 * DAY_MS + 12 * HOUR_MS), &mut out);
    for h in 12..24 {
        feed_hour(&mut w, DAY0 + 2 * DAY_MS + h * HOUR_MS, 60, 60.0, &mut out);
    }
    w.advance(Timestamp(DAY0 + 3 * DAY_MS), &mut out);
    let days = of(&out, Period::Day);
    assert_eq!(days.len(), 3);
    close(
        days[0].total.expect("valid"),
        23.0 * 50.0 + 120.0,
        1e-9,
        "day 1",
    );
    // day 2: no data at all; emitted, invalid, its 24 hours filled with the hour before the gap
    // (the gap is 24 h long when the day closes)
    let d2 = days[1];
    assert_eq!(
        (d2.samples, d2.valid, d2.quality),
        (0, false, Quality::CommFail)
    );
    assert_eq!(d2.substituted, 24);
    close(d2.total.expect("filled"), 24.0 * 50.0, 1e-9, "day 2");
    // day 3: the gap is 36 h: its 12 hours take the maximum of the valid hours before it (120)
    let d3 = days[2];
    assert!(!d3.valid, "12 valid hours");
    assert_eq!(d3.substituted, 12);
    close(
        d3.total.expect("filled"),
        12.0 * 120.0 + 12.0 * 60.0,
        1e-9,
        "day 3: 2160 kg",
    );
    assert_eq!(of(&out, Period::Hour).len(), 72, "every hour emitted");
}

#[test]
fn item_3_catching_up_after_a_long_outage_is_bounded_to_31_days_of_hours() {
    let mut w = so2_rate_window(60_000);
    let mut out = Vec::new();
    feed_hour(&mut w, DAY0, 60, 10.0, &mut out);
    w.advance(Timestamp(DAY0 + 40 * DAY_MS), &mut out);
    let hours = of(&out, Period::Hour);
    // the first day (with its 23 silent hours) and the last 31 days are emitted
    assert_eq!(hours.len() as i64, 24 + MAX_CATCH_UP_HOURS);
    assert_eq!(
        hours.last().expect("hours").end,
        Timestamp(DAY0 + 40 * DAY_MS)
    );
    let days = of(&out, Period::Day);
    assert_eq!(days.len(), 32);
    assert_eq!(days[1].start, Timestamp(DAY0 + 9 * DAY_MS));
}

#[test]
fn the_aggregate_json_has_substituted_only_when_hours_were_filled() {
    let mut p = pipeline(PLAIN_STACK);
    let records = drive_day(&mut p, |h| (h < 22).then_some((50.0, false)));
    let day = day_of(&records, "so2_kg_h");
    let json = serde_json::to_value(day).expect("serialises");
    assert_eq!(json["substituted"], 2);
    let hour = hour_of(&records, "so2_kg_h");
    let json = serde_json::to_value(hour).expect("serialises");
    assert!(json.get("substituted").is_none(), "{json}");
    // and the protobuf form carries it (field 16)
    use smeltwatch::codec::protobuf;
    use smeltwatch::config::Stream;
    let record = Record::Aggregate(day.clone());
    let bytes =
        protobuf::encode_record(Envelope::new("site", Stream::Emissions, 1, false), &record);
    let back = protobuf::decode_record(&bytes).expect("decodes");
    assert_eq!(back.record, record);
}

// === item 4: the converted concentration is its own quantity, and the limits apply to it ===

fn exceedances(records: &[Record]) -> Vec<&smeltwatch::model::Event> {
    events_of(records, "exceedance")
}

fn drive_hour(p: &mut Pipeline, readings: impl Fn(i64) -> Vec<Reading>) -> Vec<Record> {
    let mut records = Vec::new();
    for i in 0..360 {
        let t = T0 + i * 10_000;
        records.extend(p.on_batch(&stack_batch(t, readings(t))));
    }
    records.extend(p.flush(Timestamp(T0 + HOUR_MS)));
    records
}

/// The records of an hour of `stack` whose points hold `values` (point, value) throughout.
fn steady_hour(stack: &str, values: &[(&str, f64)]) -> Vec<Record> {
    drive_hour(&mut pipeline(stack), |t| {
        values
            .iter()
            .map(|&(point, value)| reading(point, value, t))
            .collect()
    })
}

/// The hourly mean of `quantity`, which must be valid.
fn hour_avg(records: &[Record], quantity: &str) -> f64 {
    hour_of(records, quantity).avg.expect("valid")
}

/// The hourly total of `quantity`, which must be valid.
fn hour_total(records: &[Record], quantity: &str) -> f64 {
    hour_of(records, quantity).total.expect("valid")
}

#[test]
fn item_4_the_limit_check_uses_the_o2_converted_hourly_mean() {
    // 300 mg/m³ measured at 11 % O2 is 450 mg/m³ at 6 %: above GB 25467's 400, below it measured
    let records = steady_hour(
        O2_STACK,
        &[("so2_mg_m3", 300.0), ("o2_pct", 11.0), ("flow_m3h", 1.0e6)],
    );
    close(hour_avg(&records, "so2_mg_m3"), 300.0, 1e-9, "measured");
    let zs = hour_of(&records, "so2_zs_mg_m3");
    close(zs.avg.expect("valid"), 450.0, 1e-9, "converted");
    close(hour_total(&records, "so2_kg_h"), 300.0, 1e-9, "kg");
    let e = exceedances(&records);
    assert_eq!(e.len(), 1);
    assert_eq!(&*e[0].subject, "boiler_stack/so2_zs_mg_m3");
}

#[test]
fn item_4_without_o2_readings_nothing_is_converted_and_mass_is_still_counted() {
    let records = steady_hour(O2_STACK, &[("so2_mg_m3", 100.0), ("flow_m3h", 1.0e6)]);
    let zs = hour_of(&records, "so2_zs_mg_m3");
    assert!(!zs.valid && zs.quality == Quality::OutOfRange, "{zs:?}");
    close(hour_total(&records, "so2_kg_h"), 100.0, 1e-9, "kg");
}

const EXHAUST_STACK: &str = concat!(
    include_str!("fixtures/calc_boiler_stack.toml"),
    r#"limits = "gb25465_2010_al_pot_gas"
reference_exhaust_m3_per_t = 8000.0
production_point = "production_tph"
"#,
);

#[test]
fn item_4_reference_exhaust_volume_scales_the_concentration_only_above_the_reference() {
    // 10⁶ m³/h over 100 t/h is 10,000 m³/t, above the 8,000 reference: 180 × 10,000/8,000 = 225, above GB 25465's
    // 200 where the measured 180 is not
    let records = steady_hour(
        EXHAUST_STACK,
        &[
            ("so2_mg_m3", 180.0),
            ("flow_m3h", 1.0e6),
            ("production_tph", 100.0),
        ],
    );
    close(hour_avg(&records, "so2_zs_mg_m3"), 225.0, 1e-9, "converted");
    close(
        hour_avg(&records, "so2_kg_h"),
        180.0,
        1e-9,
        "kg/h, measured",
    );
    assert_eq!(exceedances(&records).len(), 1);
    // at 5,000 m³/t the measured concentration stands
    let records = steady_hour(
        EXHAUST_STACK,
        &[
            ("so2_mg_m3", 180.0),
            ("flow_m3h", 0.5e6),
            ("production_tph", 100.0),
        ],
    );
    close(
        hour_avg(&records, "so2_zs_mg_m3"),
        180.0,
        1e-9,
        "not scaled",
    );
    // both conversions at once, or a reference volume without a production rate, are refused
    let both = format!("{EXHAUST_STACK}o2_reference_pct = 6.0\n");
    let cfg: CalcConfig = toml::from_str(&both).expect("parses");
    let e = Pipeline::new(&cfg)
        .expect_err("both conversions")
        .to_string();
    assert!(e.contains("stacks[0].reference_exhaust_m3_per_t"), "{e}");
    let bare = EXHAUST_STACK.replace("production_point = \"production_tph\"\n", "");
    let cfg: CalcConfig = toml::from_str(&bare).expect("parses");
    assert!(Pipeline::new(&cfg).is_err());
}

/// A window saved by an older build (without the substitution state and the next hour to close)
/// still restores, and closes its open hour and day.
#[test]
fn a_window_saved_without_the_new_fields_restores_with_defaults() {
    let mut w = so2_rate_window(60_000);
    let mut out = Vec::new();
    for h in 0..2 {
        feed_hour(&mut w, DAY0 + h * HOUR_MS, 60, 40.0, &mut out);
    }
    let mut json: serde_json::Value = serde_json::to_value(&w).expect("serialises");
    let obj = json.as_object_mut().expect("an object");
    for key in ["next_hour", "day_hours", "fill"] {
        assert!(obj.remove(key).is_some(), "{key}");
    }
    obj["rules"]
        .as_object_mut()
        .expect("rules")
        .remove("substitution");
    let w: Window = serde_json::from_value(json).expect("an old window parses");
    let mut w = w.with_rules(rules());
    let mut out = Vec::new();
    w.advance(Timestamp(DAY0 + DAY_MS), &mut out);
    let hours = of(&out, Period::Hour);
    assert_eq!(
        hours.len(),
        23,
        "the open hour 01:00 and the 22 silent ones"
    );
    assert!(hours[0].valid);
    assert_eq!(of(&out, Period::Day).len(), 1);
}

// === item 8: a reading's unit is checked against the unit the calculator expects ===

/// A reading of `point` declared in `unit`.
fn reading_in(point: &str, value: f64, unit: &str, ts: i64) -> Reading {
    let mut r = reading(point, value, ts);
    r.unit = Arc::from(unit);
    r
}

#[test]
fn a_flow_declared_in_m3_per_s_is_converted_and_one_in_kg_is_refused() {
    // 444.44 m³/s is 1.6 × 10⁶ m³/h: 85.3 mg/m³ gives 136.48 kg in the hour, not 1/3600 of it
    let run = |flow_unit: &str| {
        drive_hour(&mut pipeline(PLAIN_STACK), |t| {
            vec![
                reading_in("so2_mg_m3", 85.3, "mg/m3", t),
                reading_in("flow_m3h", 1.6e6 / 3600.0, flow_unit, t),
            ]
        })
    };
    let records = run("m3/s");
    close(
        hour_total(&records, "so2_kg_h"),
        136.48,
        1e-6,
        "SO2 kg with the flow in m³/s",
    );
    close(hour_avg(&records, "flow_m3h"), 1.6e6, 1e-3, "flow in m³/h");
    let records = run("kg");
    let kg = hour_of(&records, "so2_kg_h");
    assert!(!kg.valid && kg.total.is_none(), "{kg:?}");
    let events = events_of(&records, "unit_mismatch");
    assert_eq!(events.len(), 1, "{events:?}");
}
