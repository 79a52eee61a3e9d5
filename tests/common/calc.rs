//! Timestamped readings and poll batches for driving the calculators directly, and the shipped
//! coefficient table's validity rules with a window and samples to drive them.

use std::sync::Arc;

use smeltwatch::calc::coefficients::Coefficients;
use smeltwatch::calc::time::HOUR_MS;
use smeltwatch::calc::window::{Sample, Substitution, Window, WindowRules};
use smeltwatch::model::{
    Aggregate, Event, Period, Quality, Reading, ReadingBatch, Record, Timestamp, Value,
};

/// The shipped coefficient table (`cn-2025`).
pub fn coef() -> Coefficients {
    Coefficients::embedded("cn-2025").expect("the shipped table parses")
}

/// The shipped validity rules and substitution rule (`hj75`), days starting at local midnight
/// of UTC+8.
pub fn rules() -> WindowRules {
    let c = coef();
    WindowRules::new(&c.validity, 8 * HOUR_MS)
        .with_substitution(Substitution::new(&c.substitution, None))
}

/// The SO2 mass-flow window of `gtc1_stack` (kg/h, totals in kg) under [`rules`], fed one sample
/// every `interval_ms`.
pub fn so2_rate_window(interval_ms: u64) -> Window {
    Window::new(
        Arc::from("gtc1_stack"),
        Arc::from("so2_kg_h"),
        Arc::from("kg/h"),
        Some(Arc::from("kg")),
        rules(),
        interval_ms,
    )
}

/// A sample of `value` at `ts` (ms) whose rate per hour is the value itself.
pub fn sample(ts: i64, value: f64, quality: Quality) -> Sample {
    Sample {
        ts: Timestamp(ts),
        value,
        quality,
        rate_per_h: Some(value),
    }
}

/// The aggregates of `period` among `aggs`, in their order.
pub fn of(aggs: &[Aggregate], period: Period) -> Vec<&Aggregate> {
    aggs.iter().filter(|a| a.period == period).collect()
}

/// A good reading of `point` at `ts` (ms), with no declared unit.
pub fn reading(point: &str, value: Value, ts: i64) -> Reading {
    Reading {
        point: Arc::from(point),
        value: Some(value),
        unit: Arc::from(""),
        quality: Quality::Good,
        ts: Timestamp(ts),
    }
}

/// A poll batch of `source/device`, scheduled at its first reading's time.
pub fn batch(source: &str, device: &str, interval_ms: u64, readings: Vec<Reading>) -> ReadingBatch {
    let ts = readings.first().map_or(Timestamp(0), |r| r.ts);
    ReadingBatch {
        source: Arc::from(source),
        device: Arc::from(device),
        unit_id: 1,
        poll_interval_ms: interval_ms,
        scheduled: ts,
        readings,
    }
}

/// The poll batches of the steady copper smelter `smelter1` at `t` (10 s polls): its stack
/// (SO2 120 mg/m³ in 250 000 m³/h) and the smelter (150 t/h of concentrate, 24 750 Nm³/h of
/// oxygen at 70 %, 12 % SO2 in 100 000 Nm³/h of acid-plant gas, 40 t/h of cathode, 9 000 kgce/h).
pub fn smelter1_batches(t: i64) -> [ReadingBatch; 2] {
    let at = |point: &str, v: f64| reading(point, Value::Float(v), t);
    let stack = vec![at("so2_mg_m3", 120.0), at("flow_m3h", 250_000.0)];
    let smelter = vec![
        at("concentrate_feed_tph", 150.0),
        at("oxygen_flow_nm3h", 24_750.0),
        at("oxygen_enrichment_pct", 70.0),
        at("acid_plant_so2_pct", 12.0),
        at("acid_plant_gas_nm3h", 100_000.0),
        at("cathode_tph", 40.0),
        at("energy_kgce_h", 9_000.0),
    ];
    [("smelter1_stack", stack), ("smelter1", smelter)]
        .map(|(device, readings)| batch("smelter1", device, 10_000, readings))
}

/// The events of `kind` among `records`, in order.
pub fn events_of<'a>(records: &'a [Record], kind: &str) -> Vec<&'a Event> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Event(e) if &*e.kind == kind => Some(e),
            _ => None,
        })
        .collect()
}

/// Assert that `actual` is within `tol` of `expected`, saying what was compared.
pub fn close(actual: f64, expected: f64, tol: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: {actual} is not within {tol} of {expected}"
    );
}
