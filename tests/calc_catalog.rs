//! The catalogue of the calculators' metrics (`smeltwatch::calc::catalog`) against what the
//! calculators emit: a potline and a copper smelter (with its acid plant's stack) are driven over
//! the end of a month, once with every optional input configured and once with none, and the
//! (calculator, first label, name, unit) of every metric they emit must be in the catalogue of
//! that configuration, and every entry of the catalogue must have been emitted. The catalogue in
//! docs/CONFIG.md is checked against it too.

mod common;

use std::collections::BTreeSet;

use common::month_end::{self, EVERY_INPUT};
use smeltwatch::calc::CalcConfig;
use smeltwatch::calc::catalog;

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

/// (calculator, first label, name, unit) of every metric the calculators of `cfg` emit over a
/// month's end ([`common::month_end`]).
fn emitted(cfg: &CalcConfig) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for m in month_end::metric_batches(cfg) {
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
    assert_same(EVERY_INPUT);
}

#[test]
fn without_optional_inputs_the_catalogue_drops_exactly_what_is_not_emitted() {
    assert_same(BARE);
    let full = listed(&toml::from_str(EVERY_INPUT).expect("parses"));
    let bare = listed(&toml::from_str(BARE).expect("parses"));
    assert!(bare.len() < full.len(), "{} vs {}", bare.len(), full.len());
}

#[test]
fn the_configuration_reference_lists_every_metric_of_the_catalogue_with_its_unit() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFIG.md"))
        .expect("docs/CONFIG.md");
    let cfg: CalcConfig = toml::from_str(EVERY_INPUT).expect("parses");
    for m in catalog::metrics(&cfg) {
        let unit = if m.unit.is_empty() {
            String::new()
        } else {
            format!("`{}`", m.unit)
        };
        let row = format!("| `{}` | {unit} |", m.name);
        assert!(doc.contains(&row), "docs/CONFIG.md lacks the row {row}");
    }
}
