//! Timestamped readings and poll batches for driving the calculators directly, and the shipped
//! coefficient table's validity rules with a window and samples to drive them.

use std::sync::Arc;

use smeltwatch::calc::coefficients::Coefficients;
use smeltwatch::calc::time::HOUR_MS;
use smeltwatch::calc::window::{Sample, Substitution, Window, WindowRules};
use smeltwatch::model::{Aggregate, Period, Quality, Reading, ReadingBatch, Timestamp, Value};

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

/// Assert that `actual` is within `tol` of `expected`, saying what was compared.
pub fn close(actual: f64, expected: f64, tol: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: {actual} is not within {tol} of {expected}"
    );
}
