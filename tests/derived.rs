//! Derived points (`[[derived]]`): validation with located errors, what `check` prints,
//! evaluation with quality and time propagation through the engine, and a property test that no
//! expression accepted by validation panics or runs unbounded on any input values.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use smeltwatch::config::{self, Config, ConfigError, Location};
use smeltwatch::derived::{Engine, check_report};
use smeltwatch::model::{Quality, Reading, ReadingBatch, Record, Timestamp, Value};
use smeltwatch_testkit::batch::{one_second_batch, reading};

/// A potline with a rectifier, three pots and two auxiliary meters.
const PLANT: &str = concat!(
    r#"
site = "derived"
"#,
    include_str!("fixtures/derived_potline.toml"),
    r#"[sources.devices.points.line_current_a]
area = "input"
address = 4
type = "f32"
unit = "A"

[[sources.devices]]
name = "pot_{n:03}"
count = 3
unit_id = 10
map = "pcu"
"#,
    include_str!("fixtures/derived_aux_meters.toml"),
);

/// [`PLANT`], then `derived`.
fn plant(derived: &str) -> String {
    format!("{PLANT}{derived}\n")
}

fn parse(src: &str) -> Result<Config, ConfigError> {
    config::parse(src, Path::new("plant.toml"))
}

fn ok(derived: &str) -> Config {
    parse(&plant(derived)).unwrap_or_else(|e| panic!("should load:\n{e}"))
}

/// The plant with a potline calculator (its line `potline1`) and a copper smelter, then
/// `derived`.
fn plant_with_calc(derived: &str) -> String {
    let calc = r#"
[calc]
utc_offset_hours = 8
[[calc.potlines]]
name = "potline1"
rectifier = "potline1/rectifier"
pots = "potline1/pot_*"
current_efficiency = 0.935
[[calc.smelters]]
name = "smelter1"
device = "smelter1/smelter1"
"#;
    plant(&format!("{calc}{derived}"))
}

/// The one problem of `derived`: (line, key path, message).
fn problem(derived: &str) -> (usize, String, String) {
    problem_in(&plant(derived))
}

/// The one problem of the configuration `src`: (line, key path, message).
fn problem_in(src: &str) -> (usize, String, String) {
    let err = parse(src).expect_err("must be rejected");
    let problems = err.problems();
    assert_eq!(problems.len(), 1, "{err}");
    let p = &problems[0];
    assert_eq!(p.file, Path::new("plant.toml"));
    let Location::Toml { line, .. } = p.location else {
        panic!("not a TOML location: {p}");
    };
    (line, p.key_path.clone(), p.message.clone())
}

/// The line of the last occurrence of `needle` (the derived entries come last).
fn line_of(src: &str, needle: &str) -> usize {
    let lines: Vec<&str> = src.lines().collect();
    lines
        .iter()
        .rposition(|l| l.contains(needle))
        .expect("needle")
        + 1
}

#[test]
fn a_valid_entry_is_resolved_and_check_prints_the_devices_a_glob_matched() {
    let cfg = ok(r#"
[[derived]]
name = "line_power_kw"
expr = "potline1/rectifier.line_current_ka * rectifier.line_voltage_v"
unit = "kW"
labels = { line = "potline1" }

[[derived]]
name = "mean_cell_voltage_v"
expr = "mean(potline1/pot_*.cell_voltage_v)"
unit = "V"
stream = "live"
device = "potline1"
trigger = "10s"
"#);
    assert_eq!(cfg.derived.len(), 2);
    let text = check_report(&cfg.derived);
    assert!(text.starts_with("derived points: 2\n"), "{text}");
    assert!(
        text.contains("  derived/derived.line_power_kw [kW] = potline1/rectifier.line_current_ka * rectifier.line_voltage_v  (metrics, on every input batch)\n"),
        "{text}"
    );
    assert!(
        text.contains("    mean(potline1/pot_*.cell_voltage_v) <- 3 devices: potline1/pot_001, potline1/pot_002, potline1/pot_003\n"),
        "{text}"
    );
    assert!(text.contains("(live, every 10s)"), "{text}");
    // `check` prints it with the rest of the summary.
    assert!(smeltwatch::app::commands::check_report(&cfg).contains("derived points: 2"));
}

#[test]
fn an_expression_that_does_not_compile_is_located_at_its_key() {
    let derived = "\n[[derived]]\nname = \"x_kw\"\nexpr = \"potline1/rectifier.line_current_ka *\"\nunit = \"kW\"\n";
    let (line, key, msg) = problem(derived);
    assert_eq!(key, "derived[0].expr");
    assert_eq!(line, line_of(&plant(derived), "expr = \"potline1"));
    assert!(msg.starts_with("does not compile"), "{msg}");
}

#[test]
fn an_unknown_input_is_named() {
    for (expr, want) in [
        (
            "potline1/rectifer.line_current_ka",
            "unknown input `potline1/rectifer.line_current_ka`: no device matches `rectifer`",
        ),
        (
            "mean(potline1/pot_*.cell_volts_v)",
            "unknown input `mean(potline1/pot_*.cell_volts_v)`: no point `cell_volts_v` on potline1/pot_001, potline1/pot_002, potline1/pot_003",
        ),
        ("energy_kwh + 1", "unknown input `energy_kwh`"),
        (
            "calc:potline/potline1.line_current_ka",
            "no calculator `potline` in [calc]",
        ),
        (
            "derived/derived.later_kw",
            "unknown input `derived/derived.later_kw`",
        ),
    ] {
        let derived = format!("\n[[derived]]\nname = \"x\"\nexpr = \"{expr}\"\n");
        let (_, key, msg) = problem(&derived);
        assert_eq!(key, "derived[0].expr", "{expr}");
        assert!(msg.contains(want), "{expr}: {msg}");
    }
}

#[test]
fn units_that_do_not_divide_or_add_up_are_refused_naming_the_entry() {
    for (expr, unit, key, want) in [
        (
            "rectifier.line_current_ka * rectifier.line_voltage_v",
            "MW",
            "derived[0].unit",
            "multiply by 0.001 to get `MW`",
        ),
        (
            "rectifier.line_current_ka / rectifier.line_voltage_v",
            "kW",
            "derived[0].unit",
            "is not a `kW`",
        ),
        (
            "rectifier.line_current_ka + rectifier.line_current_a",
            "kA",
            "derived[0].expr",
            "another scale",
        ),
        (
            "rate(aux/compressors.energy_kwh, \\\"5m\\\")",
            "kWh",
            "derived[0].unit",
            "is not a `kWh`",
        ),
    ] {
        let derived =
            format!("\n[[derived]]\nname = \"x\"\nexpr = \"{expr}\"\nunit = \"{unit}\"\n");
        let (line, k, msg) = problem(&derived);
        assert_eq!(k, key, "{expr}: {msg}");
        let field = key.rsplit('.').next().unwrap();
        assert_eq!(
            line,
            line_of(&plant(&derived), &format!("{field} = ")),
            "{expr}"
        );
        assert!(msg.contains(want), "{expr}: {msg}");
    }
    // The same with the right units loads.
    ok(r#"
[[derived]]
name = "aux_power_kw"
expr = "rate(aux/compressors.energy_kwh, \"5m\") + rate(aux/gtc_fans.energy_kwh, \"5m\")"
unit = "kW"
[[derived]]
name = "line_power_mw"
expr = "rectifier.line_current_ka * rectifier.line_voltage_v / 1000"
unit = "MW"
"#);
}

#[test]
fn a_calc_reference_that_names_no_metric_of_the_catalogue_is_refused_with_the_nearest_names() {
    for (expr, want, nearest) in [
        (
            "calc:potline/potline1.line_curent_ka",
            "unknown input `calc:potline/potline1.line_curent_ka`",
            "calc:potline/potline1.line_current_ka",
        ),
        (
            "calc:potline/potline2.line_current_ka",
            "unknown input `calc:potline/potline2.line_current_ka`",
            "calc:potline/potline1.line_current_ka",
        ),
        (
            "calc:copper/smelter1.copper_t",
            "unknown input `calc:copper/smelter1.copper_t`",
            "calc:copper/smelter1.concentrate_t",
        ),
    ] {
        let derived = format!("\n[[derived]]\nname = \"x\"\nexpr = \"{expr}\"\n");
        let src = plant_with_calc(&derived);
        let (line, key, msg) = problem_in(&src);
        assert_eq!(key, "derived[0].expr", "{expr}: {msg}");
        assert_eq!(line, line_of(&src, "expr = "), "{expr}");
        assert!(msg.contains(want), "{expr}: {msg}");
        assert!(msg.contains(nearest), "{expr}: {msg}");
    }
}

#[test]
fn a_calc_input_brings_its_unit_from_the_catalogue_into_the_unit_check() {
    let entry = |unit: &str| {
        format!(
            "\n[[derived]]\nname = \"x\"\nexpr = \"calc:potline/potline1.line_current_ka * potline1/rectifier.line_voltage_v\"\nunit = \"{unit}\"\n"
        )
    };
    for (unit, want) in [
        ("t", "is not a `t`"),
        ("MW", "multiply by 0.001 to get `MW`"),
    ] {
        let src = plant_with_calc(&entry(unit));
        let (line, key, msg) = problem_in(&src);
        assert_eq!(key, "derived[0].unit", "{unit}: {msg}");
        assert_eq!(line, line_of(&src, "unit = "), "{unit}");
        assert!(msg.contains("unit mismatch"), "{unit}: {msg}");
        assert!(msg.contains(want), "{unit}: {msg}");
    }
    // kA × V is kW: it loads, and `check` shows the calc input with its unit.
    let src = plant_with_calc(&entry("kW"));
    let cfg = parse(&src).unwrap_or_else(|e| panic!("should load:\n{e}"));
    let text = check_report(&cfg.derived);
    assert!(
        text.contains(
            "    calc:potline/potline1.line_current_ka <- 1 metric in kA: calc:potline/potline1\n"
        ),
        "{text}"
    );
    // An aggregate over a glob of lines reads each line's metric, in its unit.
    let err = parse(&plant_with_calc(
        "\n[[derived]]\nname = \"x\"\nexpr = \"mean(calc:potline/potline*.line_current_ka)\"\nunit = \"A\"\n",
    ))
    .expect_err("kA is not A without a factor");
    assert!(
        err.to_string().contains("multiply by 1000 to get `A`"),
        "{err}"
    );
}

#[test]
fn name_trigger_and_unit_keys_are_checked() {
    let (_, key, msg) = problem("\n[[derived]]\nname = \"Bad Name\"\nexpr = \"1\"\n");
    assert_eq!(
        (key.as_str(), msg.contains("invalid name")),
        ("derived[0].name", true)
    );
    let (_, key, msg) =
        problem("\n[[derived]]\nname = \"x\"\nexpr = \"1\"\ntrigger = \"sometimes\"\n");
    assert_eq!(key, "derived[0].trigger");
    assert!(msg.contains("\"batch\" or a period"), "{msg}");
    let (_, key, msg) = problem("\n[[derived]]\nname = \"x\"\nexpr = \"1\"\nunit = \"furlong\"\n");
    assert_eq!(key, "derived[0].unit");
    assert!(msg.contains("unknown unit `furlong`"), "{msg}");
}

fn batch(source: &str, device: &str, points: &[(&str, Option<f64>, Quality)], ts: i64) -> Record {
    let readings = points
        .iter()
        .map(|&(p, v, q)| reading(p, v.map(Value::Float), "", q, ts))
        .collect();
    Record::Batch(one_second_batch(source, device, ts, readings))
}

/// The result of derived point `name` in the engine's output: (value, quality, ts).
fn result(engine: &mut Engine, now: i64, name: &str) -> Option<(Option<f64>, Quality, i64)> {
    let out = engine.evaluate(Timestamp(now));
    out.batches
        .iter()
        .flat_map(|b| &b.readings)
        .find(|r| &*r.point == name)
        .map(|r| (r.value.as_ref().and_then(Value::as_f64), r.quality, r.ts.0))
}

const GOOD: Quality = Quality::Good;

#[test]
fn quality_and_time_propagate_from_the_inputs() {
    let cfg = ok(r#"
[[derived]]
name = "mean_cell_voltage_v"
expr = "mean(potline1/pot_*.cell_voltage_v)"
unit = "V"
[[derived]]
name = "pots_answering"
expr = "count(potline1/pot_*.cell_voltage_v)"
[[derived]]
name = "line_power_kw"
expr = "rectifier.line_current_ka * rectifier.line_voltage_v"
unit = "kW"
[[derived]]
name = "aux_energy_kwh"
expr = "aux/compressors.energy_kwh + (has(aux/gtc_fans.energy_kwh) ? aux/gtc_fans.energy_kwh : 0)"
unit = "kWh"
"#);
    let mut e = Engine::new(&cfg.derived).unwrap();
    // Nothing seen yet: nothing to report.
    assert!(e.evaluate(Timestamp(0)).batches.is_empty());
    let t = 1_000_000;
    e.observe(&[
        batch(
            "potline1",
            "pot_001",
            &[("cell_voltage_v", Some(4.0), GOOD)],
            t,
        ),
        batch(
            "potline1",
            "pot_002",
            &[("cell_voltage_v", Some(4.2), GOOD)],
            t + 5,
        ),
        batch(
            "potline1",
            "pot_003",
            &[("cell_voltage_v", Some(4.4), GOOD)],
            t + 9,
        ),
        batch(
            "potline1",
            "rectifier",
            &[
                ("line_current_ka", Some(400.0), GOOD),
                ("line_voltage_v", Some(1800.0), GOOD),
            ],
            t + 2,
        ),
    ]);
    let out = e.evaluate(Timestamp(t + 10));
    let get = |name: &str| {
        out.batches
            .iter()
            .flat_map(|b| &b.readings)
            .find(|r| &*r.point == name)
            .map(|r| (r.value.as_ref().and_then(Value::as_f64), r.quality, r.ts.0))
    };
    let (v, q, ts) = get("mean_cell_voltage_v").unwrap();
    assert!((v.unwrap() - 4.2).abs() < 1e-12);
    assert_eq!((q, ts), (GOOD, t + 9), "the newest input's timestamp");
    assert_eq!(get("pots_answering"), Some((Some(3.0), GOOD, t + 9)));
    assert_eq!(get("line_power_kw"), Some((Some(720_000.0), GOOD, t + 2)));
    // The aux meters were not read yet: not evaluated (batch trigger, no input changed).
    assert_eq!(get("aux_energy_kwh"), None);

    // One pot silent: the mean of the others, with the silent pot's quality; count says 2.
    e.observe(&[
        batch(
            "potline1",
            "pot_001",
            &[("cell_voltage_v", Some(4.0), GOOD)],
            t + 1000,
        ),
        batch(
            "potline1",
            "pot_002",
            &[("cell_voltage_v", None, Quality::CommFail)],
            t + 1000,
        ),
    ]);
    let out = e.evaluate(Timestamp(t + 1010));
    let mean = out.batches[0]
        .readings
        .iter()
        .find(|r| &*r.point == "mean_cell_voltage_v")
        .unwrap();
    assert!((mean.value.as_ref().and_then(Value::as_f64).unwrap() - 4.2).abs() < 1e-12);
    assert_eq!(mean.quality, Quality::CommFail);
    let count = out.batches[0]
        .readings
        .iter()
        .find(|r| &*r.point == "pots_answering")
        .unwrap();
    assert_eq!(
        (count.value.clone(), count.quality),
        (Some(Value::Float(2.0)), GOOD)
    );

    // A bad input without has(): no value, the worst quality; NaN makes out_of_range.
    e.observe(&[batch(
        "potline1",
        "rectifier",
        &[
            ("line_current_ka", Some(f64::NAN), GOOD),
            ("line_voltage_v", None, Quality::DeviceException),
        ],
        t + 2000,
    )]);
    assert_eq!(
        result(&mut e, t + 2001, "line_power_kw"),
        Some((None, Quality::DeviceException, t + 2000))
    );
    e.observe(&[batch(
        "potline1",
        "rectifier",
        &[
            ("line_current_ka", Some(f64::NAN), GOOD),
            ("line_voltage_v", Some(1.0), GOOD),
        ],
        t + 3000,
    )]);
    assert_eq!(
        result(&mut e, t + 3001, "line_power_kw"),
        Some((None, Quality::OutOfRange, t + 3000))
    );

    // has() handles a missing meter: good, counted as 0; the other meter missing is not handled.
    e.observe(&[
        batch(
            "aux",
            "compressors",
            &[("energy_kwh", Some(120.0), GOOD)],
            t + 4000,
        ),
        batch(
            "aux",
            "gtc_fans",
            &[("energy_kwh", None, Quality::CommFail)],
            t + 4000,
        ),
    ]);
    assert_eq!(
        result(&mut e, t + 4001, "aux_energy_kwh"),
        Some((Some(120.0), GOOD, t + 4000))
    );
    e.observe(&[batch(
        "aux",
        "compressors",
        &[("energy_kwh", None, Quality::CommFail)],
        t + 5000,
    )]);
    assert_eq!(
        result(&mut e, t + 5001, "aux_energy_kwh"),
        Some((None, Quality::CommFail, t + 5000))
    );
}

#[test]
fn a_counter_rate_and_delta_over_the_window_and_a_derived_point_as_input() {
    let cfg = ok(r#"
[[derived]]
name = "aux_energy_kwh"
expr = "aux/compressors.energy_kwh + aux/gtc_fans.energy_kwh"
unit = "kWh"
stream = "live"
[[derived]]
name = "aux_power_kw"
expr = "rate(derived/derived.aux_energy_kwh, \"5m\")"
unit = "kW"
[[derived]]
name = "aux_last_hour_kwh"
expr = "delta(aux/compressors.energy_kwh, \"1h\")"
unit = "kWh"
"#);
    let mut e = Engine::new(&cfg.derived).unwrap();
    let minute = 60_000;
    // 600 kW and 300 kW: 10 and 5 kWh a minute.
    for m in 0..=10 {
        e.observe(&[
            batch(
                "aux",
                "compressors",
                &[("energy_kwh", Some(1000.0 + 10.0 * m as f64), GOOD)],
                m * minute,
            ),
            batch(
                "aux",
                "gtc_fans",
                &[("energy_kwh", Some(500.0 + 5.0 * m as f64), GOOD)],
                m * minute,
            ),
        ]);
        let out = e.evaluate(Timestamp(m * minute));
        let get = |name: &str| {
            out.batches
                .iter()
                .flat_map(|b| &b.readings)
                .find(|r| &*r.point == name)
                .map(|r| (r.value.as_ref().and_then(Value::as_f64), r.quality))
                .unwrap()
        };
        if m == 0 {
            // One sample: no rate yet.
            assert_eq!(get("aux_power_kw"), (None, Quality::Stale));
            continue;
        }
        let (kw, q) = get("aux_power_kw");
        assert!((kw.unwrap() - 900.0).abs() < 1e-9, "minute {m}: {kw:?}");
        assert_eq!(q, GOOD);
        let (kwh, _) = get("aux_last_hour_kwh");
        assert!((kwh.unwrap() - 10.0 * m as f64).abs() < 1e-9);
        // Only the live entry is a live record; the metrics entries are one metric batch.
        assert!(out.records.iter().any(|r| matches!(r, Record::Batch(b) if b.readings.len() == 1 && &*b.readings[0].point == "aux_energy_kwh")));
        assert!(
            out.records
                .iter()
                .any(|r| matches!(r, Record::Metrics(m) if m.metrics.len() == 2))
        );
    }
    // The counter was reset: the window starts over, no rate until a second sample.
    e.observe(&[batch(
        "aux",
        "compressors",
        &[("energy_kwh", Some(3.0), GOOD)],
        11 * minute,
    )]);
    assert_eq!(
        result(&mut e, 11 * minute, "aux_power_kw").map(|r| r.1),
        Some(Quality::Stale)
    );
}

#[test]
fn a_periodic_entry_runs_on_its_clock_and_ages_its_inputs() {
    let cfg = ok(r#"
[[derived]]
name = "mean_cell_voltage_v"
expr = "mean(potline1/pot_*.cell_voltage_v)"
unit = "V"
trigger = "10s"
"#);
    let mut e = Engine::new(&cfg.derived).unwrap();
    e.observe(&[batch(
        "potline1",
        "pot_001",
        &[("cell_voltage_v", Some(4.0), GOOD)],
        0,
    )]);
    // Pots 2 and 3 never answered.
    assert_eq!(
        result(&mut e, 1_000, "mean_cell_voltage_v"),
        Some((Some(4.0), Quality::CommFail, 0))
    );
    assert_eq!(
        result(&mut e, 5_000, "mean_cell_voltage_v"),
        None,
        "not due before 10 s"
    );
    for p in ["pot_001", "pot_002", "pot_003"] {
        e.observe(&[batch(
            "potline1",
            p,
            &[("cell_voltage_v", Some(4.0), GOOD)],
            9_000,
        )]);
    }
    assert_eq!(
        result(&mut e, 10_000, "mean_cell_voltage_v"),
        Some((Some(4.0), GOOD, 9_000))
    );
    // Nothing new for more than three poll intervals: stale.
    assert_eq!(
        result(&mut e, 20_000, "mean_cell_voltage_v"),
        Some((None, Quality::Stale, 9_000))
    );
}

/// Expressions built from the accepted forms: inputs, literals (NaN-prone ones included),
/// operators, conditionals, has, aggregates, rate and delta.
fn expression() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("rectifier.line_current_ka".to_string()),
        Just("rectifier.line_voltage_v".to_string()),
        Just("mean(potline1/pot_*.cell_voltage_v)".to_string()),
        Just("sum(potline1/pot_*.cell_voltage_v)".to_string()),
        Just("min(potline1/pot_*.cell_voltage_v)".to_string()),
        Just("max(potline1/pot_*.cell_voltage_v)".to_string()),
        Just("count(potline1/pot_*.cell_voltage_v)".to_string()),
        Just("rate(aux/compressors.energy_kwh, \"5m\")".to_string()),
        Just("delta(aux/compressors.energy_kwh, \"1h\")".to_string()),
        Just("0".to_string()),
        Just("1e308".to_string()),
        Just("-1e308".to_string()),
        (-1000.0f64..1000.0).prop_map(|f| format!("{f:?}")),
    ];
    leaf.prop_recursive(6, 40, 3, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(vec!["+", "-", "*", "/", ">", "<", "==", "!=", "&&", "||"]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, a, b)| format!("({c} > 1 ? {a} : {b})")),
            inner.clone().prop_map(|a| format!("-({a})")),
            inner.clone().prop_map(|a| format!("!({a})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("max({a}, {b})")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("min({a}, {b}, 0)")),
            Just("(has(rectifier.line_current_ka) ? rectifier.line_current_ka : 0)".to_string()),
        ]
    })
}

fn any_value() -> impl Strategy<Value = (Option<f64>, Quality)> {
    prop_oneof![
        Just((None, Quality::CommFail)),
        Just((Some(f64::NAN), GOOD)),
        Just((Some(f64::INFINITY), GOOD)),
        Just((Some(f64::NEG_INFINITY), GOOD)),
        Just((Some(f64::MAX), GOOD)),
        Just((Some(-0.0), GOOD)),
        (-1e6f64..1e6).prop_map(|v| (Some(v), GOOD)),
        (-1e6f64..1e6).prop_map(|v| (Some(v), Quality::Stale)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn no_accepted_expression_panics_runs_long_or_publishes_a_non_finite_number(
        expr in expression(),
        values in prop::collection::vec(any_value(), 7),
        steps in 1usize..4,
    ) {
        let derived = format!(
            "\n[[derived]]\nname = \"x\"\nexpr = \"{}\"\n",
            expr.replace('"', "\\\"")
        );
        // Whatever validation says is fine; what it accepts must evaluate safely.
        // Without declared units, so that the unit check does not narrow what is generated.
        let src: Vec<String> = plant(&derived)
            .lines()
            .filter(|l| !l.starts_with("unit = "))
            .map(str::to_owned)
            .collect();
        let Ok(cfg) = parse(&src.join("\n")) else { return Ok(()) };
        let mut e = Engine::new(&cfg.derived).unwrap();
        let started = Instant::now();
        for step in 0..steps {
            let t = step as i64 * 60_000;
            let v = |i: usize| values[i];
            e.observe(&[
                batch("potline1", "rectifier", &[("line_current_ka", v(0).0, v(0).1), ("line_voltage_v", v(1).0, v(1).1)], t),
                batch("potline1", "pot_001", &[("cell_voltage_v", v(2).0, v(2).1)], t),
                batch("potline1", "pot_002", &[("cell_voltage_v", v(3).0, v(3).1)], t),
                batch("potline1", "pot_003", &[("cell_voltage_v", v(4).0, v(4).1)], t),
                batch("aux", "compressors", &[("energy_kwh", v(5).0.map(|x| x + step as f64), v(5).1)], t),
            ]);
            let out = e.evaluate(Timestamp(t));
            for r in out.batches.iter().flat_map(|b| &b.readings) {
                match r.value {
                    Some(Value::Float(f)) => prop_assert!(f.is_finite(), "{expr}: {f}"),
                    None => prop_assert!(r.quality != GOOD, "{expr}: no value but good"),
                    ref other => prop_assert!(false, "{expr}: {other:?}"),
                }
            }
        }
        prop_assert!(started.elapsed() < Duration::from_secs(1), "{expr}: {:?}", started.elapsed());
    }
}

/// Rectifier and pot batches of a 3-cell line at 400 kA and 4.05 V, at `t` (ms), with its AC and
/// DC counters at `ac_kwh`, `dc_kwh`.
fn line_batches(t: i64, ac_kwh: u64, dc_kwh: u64) -> Vec<ReadingBatch> {
    let r = |p: &str, v: Value| Reading {
        point: Arc::from(p),
        value: Some(v),
        unit: Arc::from(""),
        quality: GOOD,
        ts: Timestamp(t),
    };
    let b = |device: &str, readings| ReadingBatch {
        source: Arc::from("potline1"),
        device: Arc::from(device),
        unit_id: 1,
        poll_interval_ms: 10_000,
        scheduled: Timestamp(t),
        readings,
    };
    let mut out = vec![b(
        "rectifier",
        vec![
            r("line_current_ka", Value::Float(400.0)),
            r("ac_energy_kwh", Value::UInt(ac_kwh)),
            r("dc_energy_kwh", Value::UInt(dc_kwh)),
        ],
    )];
    for pot in ["pot_001", "pot_002", "pot_003"] {
        out.push(b(
            pot,
            vec![
                r("cell_voltage_v", Value::Float(4.05)),
                r("in_service", Value::UInt(1)),
            ],
        ));
    }
    out
}

/// The last `comprehensive_ac_kwh_per_t_today` and `ac_kwh_per_t_today` in `records`.
fn comprehensive(records: &[Record]) -> (Option<f64>, Option<f64>) {
    let last = |name: &str| {
        records
            .iter()
            .filter_map(|r| match r {
                Record::Metrics(m) => m.metrics.iter().rev().find(|x| &*x.name == name),
                _ => None,
            })
            .next_back()
            .and_then(|m| m.value)
    };
    (
        last("comprehensive_ac_kwh_per_t_today"),
        last("ac_kwh_per_t_today"),
    )
}

#[test]
fn a_derived_counter_is_an_auxiliary_meter_of_the_potline_like_the_meters_it_sums() {
    use smeltwatch::calc::{CalcConfig, Pipeline};
    let calc = |aux: &str| -> Pipeline {
        let text = format!(
            r#"
[[potlines]]
name = "potline1"
rectifier = "potline1/rectifier"
pots = "potline1/pot_*"
current_efficiency = 0.935
{aux}
"#
        );
        let cfg: CalcConfig = toml::from_str(&text).expect("calc parses");
        Pipeline::new(&cfg).expect("calc builds")
    };
    // The derived counter as the meter, beside the two physical meters it sums.
    let mut through_derived = calc(
        "[[potlines.auxiliary_meters]]\ndevice = \"derived/derived\"\npoint = \"aux_energy_kwh\"\ncounter_bits = 64\n",
    );
    let mut direct = calc("[[potlines.auxiliary_meters]]\ndevice = \"aux/*\"\n");
    let cfg = ok(r#"
[[derived]]
name = "aux_energy_kwh"
expr = "aux/compressors.energy_kwh + aux/gtc_fans.energy_kwh"
unit = "kWh"
"#);
    let mut engine = Engine::new(&cfg.derived).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let t0 = 1_764_300_000_000;
    for step in 0..40i64 {
        let t = t0 + step * 10_000;
        // 160 kW at the line's AC meter, 1,080 and 360 kW of auxiliaries.
        for batch in line_batches(
            t,
            1_000_000 + 4_444 * step as u64,
            900_000 + 4_300 * step as u64,
        ) {
            a.extend(through_derived.on_batch(&batch));
            b.extend(direct.on_batch(&batch));
        }
        let meters = [
            batch(
                "aux",
                "compressors",
                &[("energy_kwh", Some(5_000.0 + 3.0 * step as f64), GOOD)],
                t,
            ),
            batch(
                "aux",
                "gtc_fans",
                &[("energy_kwh", Some(7_000.0 + 1.0 * step as f64), GOOD)],
                t,
            ),
        ];
        for m in &meters {
            let Record::Batch(m) = m else { unreachable!() };
            b.extend(direct.on_batch(m));
        }
        engine.observe(&meters);
        for d in engine.evaluate(Timestamp(t)).batches {
            a.extend(through_derived.on_batch(&d));
        }
    }
    let (with_derived, ac) = comprehensive(&a);
    let (with_meters, ac_direct) = comprehensive(&b);
    let with_derived = with_derived.expect("the comprehensive figure with the derived meter");
    assert_eq!(Some(with_derived), with_meters);
    assert_eq!(ac, ac_direct);
    assert!(with_derived > ac.unwrap(), "{with_derived} vs {ac:?}");
}

#[test]
fn check_lists_the_calculator_metrics_a_derived_point_may_read_with_their_units() {
    let cfg = parse(&plant_with_calc("")).unwrap_or_else(|e| panic!("should load:\n{e}"));
    let text = smeltwatch::derived::calc_inputs_report(cfg.calc.as_ref().expect("[calc]"));
    assert!(
        text.starts_with(
            "calculator metrics: 44 (derived inputs `calc:<calculator>/<label>.<metric>`)\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "\n  calc:potline/potline1: line_current_ka [kA], cells_in_service, production_today_t [t],"
        ),
        "{text}"
    );
    assert!(
        text.contains("\n  calc:copper/smelter1: concentrate_feed_tph [t/h],"),
        "{text}"
    );
    assert!(!text.contains("copper_t"), "no copper output point: {text}");
    // `smeltwatch check` prints it after the read plan.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
        .args(["check", "-c", "config/demo.toml"])
        .output()
        .expect("running smeltwatch");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("\ncalculator metrics: "), "{stdout}");
    assert!(
        stdout.contains("\n  calc:potline/potline1: line_current_ka [kA],"),
        "{stdout}"
    );
}

#[test]
fn a_calc_input_takes_the_value_the_potline_calculator_emits() {
    let cfg = parse(&plant_with_calc(
        r#"
[[derived]]
name = "line_power_kw"
expr = "calc:potline/potline1.line_current_ka * potline1/rectifier.line_voltage_v"
unit = "kW"
"#,
    ))
    .unwrap_or_else(|e| panic!("should load:\n{e}"));
    let mut calc =
        smeltwatch::calc::Pipeline::new(cfg.calc.as_ref().expect("[calc]")).expect("calc builds");
    let mut engine = Engine::new(&cfg.derived).unwrap();
    let t0 = 1_764_300_000_000; // on a minute
    let mut last = None;
    for step in 0..13i64 {
        let t = t0 + step * 10_000;
        let rect = batch(
            "potline1",
            "rectifier",
            &[
                ("line_current_ka", Some(400.0), GOOD),
                ("line_voltage_v", Some(1_250.0), GOOD),
            ],
            t,
        );
        let Record::Batch(b) = &rect else {
            unreachable!()
        };
        let mut records = calc.on_batch(b);
        records.push(rect.clone());
        engine.observe(&records);
        if let Some(r) = result(&mut engine, t, "line_power_kw") {
            last = Some(r);
        }
    }
    // The minute closed at t0 + 60 s with the line current of 400 kA: 400 kA × 1,250 V.
    let (value, quality, _) = last.expect("evaluated once the minute's metric came");
    assert_eq!((value, quality), (Some(500_000.0), GOOD));
}
