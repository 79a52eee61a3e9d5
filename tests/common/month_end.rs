//! The calculators over a month's end, for the tests that check every figure they emit (the
//! catalogue, the Sparkplug node metrics): a configuration with every optional input of a potline
//! and a smelter, the poll batches of each 10 s step, and the figures the calculators emit from
//! two hours before the local midnight that ends March 2025 to five minutes after it (a day and a
//! month close), with two taps of metal and one anode effect on the way.

use smeltwatch::calc::time::{DAY_MS, HOUR_MS, MINUTE_MS, days_from_civil};
use smeltwatch::calc::{CalcConfig, Pipeline};
use smeltwatch::model::{MetricBatch, ReadingBatch, Record, Value};

use super::calc::{batch, reading, smelter1_batches};

/// Every optional input of a potline and of a smelter.
pub const EVERY_INPUT: &str = concat!(
    "utc_offset_hours = 8\n",
    include_str!("../fixtures/calc_potline1.toml"),
    r#"approved_capacity_t_per_year = 1100.0
tapped_metal_kg_point = "tapped_kg"

[[potlines.auxiliary_meters]]
device = "potline1/aux_fans"
"#,
    include_str!("../fixtures/calc_smelter1.toml"),
);

/// The poll batches of one 10 s step at `t`: the rectifier (line current, the energy counters
/// and the tapped-metal counter), four pots (one in anode effect for a minute), an auxiliary
/// meter, the smelter's stack and the smelter.
pub fn step(t: i64, n: u64, tapped_kg: u64, ae_from: i64) -> Vec<ReadingBatch> {
    let mut out = vec![batch(
        "potline1",
        "rectifier",
        10_000,
        vec![
            reading("line_current_ka", Value::Float(400.0), t),
            reading("dc_energy_kwh", Value::UInt(1_000_000 + 18 * n), t),
            reading("ac_energy_kwh", Value::UInt(2_000_000 + 19 * n), t),
            reading("tapped_kg", Value::UInt(tapped_kg), t),
        ],
    )];
    for c in 1..=4 {
        let v = if c == 2 && (ae_from..ae_from + MINUTE_MS).contains(&t) {
            30.0
        } else {
            4.05
        };
        out.push(batch(
            "potline1",
            &format!("pot_{c:03}"),
            10_000,
            vec![
                reading("cell_voltage_v", Value::Float(v), t),
                reading("in_service", Value::Bool(true), t),
                reading("cut_out", Value::Bool(false), t),
            ],
        ));
    }
    out.push(batch(
        "potline1",
        "aux_fans",
        10_000,
        vec![reading("energy_kwh", Value::UInt(50_000 + 2 * n), t)],
    ));
    out.extend(smelter1_batches(t));
    out
}

/// Every metric batch the calculators of `cfg` emit over the month's end, in order.
pub fn metric_batches(cfg: &CalcConfig) -> Vec<MetricBatch> {
    let mut p = Pipeline::new(cfg).expect("builds");
    let midnight = days_from_civil(2025, 4, 1) * DAY_MS - 8 * HOUR_MS;
    let mut tapped = 10_000u64;
    let mut out = Vec::new();
    let mut t = midnight - 2 * HOUR_MS;
    let mut n = 0u64;
    while t <= midnight + 5 * MINUTE_MS {
        if t == midnight - 90 * MINUTE_MS || t == midnight - 30 * MINUTE_MS {
            tapped += 2_000;
        }
        for b in step(t, n, tapped, midnight - HOUR_MS) {
            for r in p.on_batch(&b) {
                if let Record::Metrics(m) = r {
                    out.push(m);
                }
            }
        }
        t += 10_000;
        n += 1;
    }
    out
}
