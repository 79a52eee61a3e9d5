//! The catalogue of the calculators' metrics (`smeltwatch::calc::catalog`) against what the
//! calculators emit: a potline and a copper smelter (with its acid plant's stack) are driven over
//! the end of a month, once with every optional input configured and once with none, and the
//! (calculator, first label, name, unit) of every metric they emit must be in the catalogue of
//! that configuration, and every entry of the catalogue must have been emitted.

mod common;

use std::collections::BTreeSet;

use common::calc::{batch, reading};
use smeltwatch::calc::catalog;
use smeltwatch::calc::time::{DAY_MS, HOUR_MS, MINUTE_MS, days_from_civil};
use smeltwatch::calc::{CalcConfig, Pipeline};
use smeltwatch::model::{ReadingBatch, Record, Value};

/// Every optional input of a potline and of a smelter.
const FULL: &str = r#"
utc_offset_hours = 8

[[potlines]]
name = "potline1"
rectifier = "potline1/rectifier"
pots = "potline1/pot_*"
current_efficiency = 0.935
approved_capacity_t_per_year = 1100.0
tapped_metal_kg_point = "tapped_kg"

[[potlines.auxiliary_meters]]
device = "potline1/aux_fans"

[[stacks]]
name = "smelter1_stack"
device = "smelter1/smelter1_stack"
pollutants = { so2 = "so2_mg_m3" }

[[smelters]]
name = "smelter1"
device = "smelter1/smelter1"
acid_plant_gas_flow_point = "acid_plant_gas_nm3h"
stack = "smelter1_stack"
copper_output_point = "cathode_tph"
energy_kgce_point = "energy_kgce_h"
"#;

/// No optional input at all.
const BARE: &str = r#"
utc_offset_hours = 8

[[potlines]]
name = "line_b"
rectifier = "potline1/rectifier"
pots = "potline1/pot_*"
current_efficiency = 0.935

[[smelters]]
name = "smelter_b"
device = "smelter1/smelter1"
"#;

/// The poll batches of one 10 s step at `t`: the rectifier (line current, the energy counters
/// and the tapped-metal counter), four pots (one in anode effect for a minute), an auxiliary
/// meter, the smelter's stack and the smelter.
fn step(t: i64, n: u64, tapped_kg: u64, ae_from: i64) -> Vec<ReadingBatch> {
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
    out.push(batch(
        "smelter1",
        "smelter1_stack",
        10_000,
        vec![
            reading("so2_mg_m3", Value::Float(120.0), t),
            reading("flow_m3h", Value::Float(250_000.0), t),
        ],
    ));
    out.push(batch(
        "smelter1",
        "smelter1",
        10_000,
        vec![
            reading("concentrate_feed_tph", Value::Float(150.0), t),
            reading("oxygen_flow_nm3h", Value::Float(24_750.0), t),
            reading("oxygen_enrichment_pct", Value::Float(70.0), t),
            reading("acid_plant_so2_pct", Value::Float(12.0), t),
            reading("acid_plant_gas_nm3h", Value::Float(100_000.0), t),
            reading("cathode_tph", Value::Float(40.0), t),
            reading("energy_kgce_h", Value::Float(9_000.0), t),
        ],
    ));
    out
}

/// (calculator, first label, name, unit) of every metric the calculators of `cfg` emit from
/// two hours before the local midnight that ends March 2025 to five minutes after it (a day
/// and a month close), with two taps of metal and one anode effect on the way.
fn emitted(cfg: &CalcConfig) -> BTreeSet<(String, String, String, String)> {
    let mut p = Pipeline::new(cfg).expect("builds");
    let midnight = days_from_civil(2025, 4, 1) * DAY_MS - 8 * HOUR_MS;
    let mut tapped = 10_000u64;
    let mut out = BTreeSet::new();
    let mut t = midnight - 2 * HOUR_MS;
    let mut n = 0u64;
    while t <= midnight + 5 * MINUTE_MS {
        if t == midnight - 90 * MINUTE_MS || t == midnight - 30 * MINUTE_MS {
            tapped += 2_000;
        }
        for b in step(t, n, tapped, midnight - HOUR_MS) {
            for r in p.on_batch(&b) {
                let Record::Metrics(m) = r else { continue };
                for x in &m.metrics {
                    let label = x.labels.first().map(|l| l.1.to_string());
                    out.insert((
                        m.calc.to_string(),
                        label.expect("every calculator metric has a first label"),
                        x.name.to_string(),
                        x.unit.to_string(),
                    ));
                }
            }
        }
        t += 10_000;
        n += 1;
    }
    out
}

fn listed(cfg: &CalcConfig) -> BTreeSet<(String, String, String, String)> {
    catalog::metrics(cfg)
        .into_iter()
        .map(|m| {
            (
                m.calc.to_owned(),
                m.label,
                m.name.to_owned(),
                m.unit.to_owned(),
            )
        })
        .collect()
}

fn assert_same(text: &str) {
    let cfg: CalcConfig = toml::from_str(text).expect("parses");
    let emitted = emitted(&cfg);
    let listed = listed(&cfg);
    let not_listed: Vec<_> = emitted.difference(&listed).collect();
    assert!(
        not_listed.is_empty(),
        "emitted but not in the catalogue: {not_listed:#?}"
    );
    let not_emitted: Vec<_> = listed.difference(&emitted).collect();
    assert!(
        not_emitted.is_empty(),
        "in the catalogue but never emitted: {not_emitted:#?}"
    );
    assert_eq!(catalog::metrics(&cfg).len(), listed.len(), "one entry each");
}

#[test]
fn every_metric_emitted_with_every_optional_input_is_catalogued_and_nothing_else() {
    assert_same(FULL);
}

#[test]
fn without_optional_inputs_the_catalogue_drops_exactly_what_is_not_emitted() {
    assert_same(BARE);
    let full = listed(&toml::from_str(FULL).expect("parses"));
    let bare = listed(&toml::from_str(BARE).expect("parses"));
    assert!(bare.len() < full.len(), "{} vs {}", bare.len(), full.len());
}
