//! The calculators against worked examples computed by hand from the standards they follow (each
//! section names its standard; docs/METRICS.md has the formulas and "Worked examples" the
//! figures), property tests for counters and windows, and anode-effect detection and a potline
//! day driven through the pipeline by timestamped readings.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::sync::Arc;

use common::calc::{
    batch, coef, events_of, of, reading, sample, smelter1_batches, so2_rate_window,
};

use proptest::prelude::*;
use smeltwatch::calc::anode_effect::{AeDetector, AeParams, AeStats, AeTransition};
use smeltwatch::calc::counter::{CounterStep, EnergyCounter};
use smeltwatch::calc::emissions::{
    anode_co2_factor, anode_co2_t, electricity_co2_t, kgce, mass_flow_kg_h, mass_kg, o2_corrected,
    pfc_slope,
};
use smeltwatch::calc::limits::{Grade, grade};
use smeltwatch::calc::potline::{
    Metal, ac_from_dc_kwh_per_t, anode_effect_share_v, capacity_utilisation,
    pseudo_resistance_uohm, specific_energy_kwh_per_t,
};
use smeltwatch::calc::tariff::{
    steps, surcharge_cost_yuan, surcharge_yuan_per_kwh, threshold_kwh_per_t,
};
use smeltwatch::calc::time::{DAY_MS, HOUR_MS, MINUTE_MS, civil, days_from_civil};
use smeltwatch::calc::window::{Window, month_valid};
use smeltwatch::calc::{CalcConfig, Pipeline, glob_match};
use smeltwatch::model::{
    Aggregate, EventPhase, Period, Quality, Reading, ReadingBatch, Record, Timestamp, Value,
};

fn al() -> Metal {
    Metal::from(&coef().metals["al"])
}

fn close(actual: f64, expected: f64, tol: f64) {
    common::calc::close(actual, expected, tol, "value");
}

// === Potline physics: Faraday's law, specific DC and AC energy, pseudo-resistance ===

#[test]
fn faraday_equivalent_of_aluminium_is_0_335573() {
    close(al().kg_per_ka_h(), 0.335573, 5e-7);
}

#[test]
fn magnesium_uses_its_valence_and_molar_mass() {
    let mg = Metal::from(&coef().metals["mg"]);
    // 24.305 / (2 × 96485.33212) × 3600
    close(mg.kg_per_ka_h(), 0.453_426, 1e-6);
}

#[test]
fn worked_example_1_production_energy_and_resistance() {
    let al = al();
    let cell_day_kg = al.produced_kg(400.0, 24.0, 0.935, 1.0);
    close(cell_day_kg, 3012.10, 0.005);
    let line_t = al.produced_kg(400.0, 24.0, 0.935, 200.0) / 1000.0;
    close(line_t, 602.42, 0.01);
    let dc_kwh = 400.0 * 4.05 * 200.0 * 24.0;
    close(dc_kwh, 7_776_000.0, 1e-6);
    let w_dc = specific_energy_kwh_per_t(dc_kwh, line_t).expect("production > 0");
    close(w_dc, 12_908.0, 1.0);
    close(al.dc_kwh_per_t(4.05, 0.935), 12_908.0, 1.0);
    close(ac_from_dc_kwh_per_t(w_dc, 0.975), 13_239.0, 1.0);
    close(ac_from_dc_kwh_per_t(w_dc, 0.97), 13_307.0, 1.0);
    close(
        pseudo_resistance_uohm(4.05, 1.65, 400.0).expect("current > 0"),
        6.0,
        1e-9,
    );
    close(200.0 * 4.05, 810.0, 1e-9);
}

#[test]
fn current_efficiency_from_tapped_metal_and_from_the_rectifier_example() {
    let al = al();
    // 200 cells × 400 kA × 24 h; tapped 602.42 t → CE 93.5 %
    let ce = al
        .current_efficiency(602_420.0, 400.0 * 24.0 * 200.0)
        .expect("charge > 0");
    close(ce, 0.935, 1e-4);
    // The AC consumption run backwards: 14000 kWh/t AC at 4.3 V and a 97 % efficient rectifier
    // is 2.98 × 4.3 / CE / 0.97 = 14000 → CE = 94.36 %
    let x = al.dc_kwh_per_t(4.3, 1.0) / (14_000.0 * 0.97);
    close(x, 0.9436, 1e-4);
}

#[test]
fn anode_effect_share_voltage_example() {
    close(anode_effect_share_v(0.05, 30.0, 4.0, 2.0), 0.0018, 5e-5);
}

// === PFC by the slope method (IPCC 2006 Vol. 3 Ch. 4.4; 40 CFR 98.63), one 30-day month ===

#[test]
fn worked_example_2_aef_aed_aem_and_pfc() {
    let c = coef();
    let stats = AeStats {
        count: 300,
        minutes: 600.0,
        cell_days: 6000.0,
    };
    close(stats.aef().expect("cell-days"), 0.05, 1e-12);
    close(stats.aed_min().expect("cell-days"), 2.0, 1e-12);
    let aem = stats.aem().expect("cell-days");
    close(aem, 0.10, 1e-12);
    let mp = 602.42 * 30.0;
    close(mp, 18_072.6, 1e-6);
    let pfc = pfc_slope(&c.pfc["cwpb"], aem, mp);
    close(pfc.cf4_kg, 258.44, 0.005);
    close(pfc.c2f6_kg, 31.27, 0.005);
    let ar5 = pfc.co2e_t(&c.gwp["ar5"]);
    close(ar5, 2060.6, 0.05);
    close(ar5 / mp, 0.1140, 5e-5);
    let ar6 = pfc.co2e_t(&c.gwp["ar6"]);
    close(ar6, 2295.0, 0.05);
    close(ar6 / mp, 0.1270, 5e-5);
    let sar = pfc.co2e_t(&c.gwp["sar"]);
    close(sar, 1967.5, 0.05);
    close(sar / mp, 0.1089, 5e-5);
}

// === Anode CO2 (IPCC 2006 Tier 2), CO2 of electricity by grid factor, standard coal ===

#[test]
fn worked_example_3_anode_co2() {
    let c = coef();
    close(anode_co2_factor(0.40, 2.0, 0.4), 1.4315, 5e-5);
    close(anode_co2_t(&c.anode, 18_072.6), 25_870.0, 1.0);
    // the 2024 draft's default 1.424 equals NAC 0.40 with 2.9 % sulphur + ash
    close(anode_co2_factor(0.40, 2.9, 0.0), 1.424, 5e-4);
}

#[test]
fn electricity_co2_and_standard_coal_examples() {
    let c = coef();
    close(
        electricity_co2_t(13_239.0, c.grid["qinghai-2022"].t_co2_per_mwh),
        2.07,
        0.005,
    );
    close(
        electricity_co2_t(13_239.0, c.grid["national-2022"].t_co2_per_mwh),
        7.10,
        0.005,
    );
    close(
        electricity_co2_t(13_239.0, c.grid["national-ets-2022"].t_co2_per_mwh),
        7.55,
        0.005,
    );
    close(kgce(13_450.0, c.energy.kgce_per_kwh), 1653.0, 0.05);
}

// === GB 21346-2022 energy grades of liquid aluminium ===

#[test]
fn gb21346_grading_examples() {
    let c = coef();
    let ac = &c.grades["gb21346_2022_al_liquid_ac"];
    let comp = &c.grades["gb21346_2022_al_liquid_comprehensive_ac"];
    assert_eq!(grade(ac, 12_980.0), Grade::Level2);
    assert_eq!(grade(ac, 12_950.0), Grade::Level1);
    assert_eq!(grade(comp, 13_400.0), Grade::Level3);
    assert_eq!(grade(comp, 13_700.0), Grade::Level3);
    assert_eq!(grade(comp, 13_700.1), Grade::Fail);
}

// === Tiered electricity price of electrolytic aluminium (NDRC 发改价格〔2021〕1239号) ===

#[test]
fn tariff_thresholds_by_year() {
    let t = coef().tariff;
    assert_eq!(threshold_kwh_per_t(&t, 2021), None);
    assert_eq!(threshold_kwh_per_t(&t, 2022), Some(13_650.0));
    assert_eq!(threshold_kwh_per_t(&t, 2024), Some(13_450.0));
    assert_eq!(threshold_kwh_per_t(&t, 2025), Some(13_300.0));
    assert_eq!(threshold_kwh_per_t(&t, 2030), Some(13_300.0));
}

#[test]
fn tariff_worked_examples_and_edge_cases() {
    let t = coef().tariff;
    for (e, expected_steps, surcharge) in [
        (13_300.0, 0, 0.0),
        (13_305.0, 1, 0.01),
        (13_320.0, 1, 0.01),
        (13_320.000_1, 2, 0.02),
        (13_321.0, 2, 0.02),
        (13_520.0, 11, 0.11),
        (13_000.0, 0, 0.0),
    ] {
        assert_eq!(steps(&t, e, 13_300.0), expected_steps, "steps at {e}");
        close(
            surcharge_yuan_per_kwh(&t, 2025, e, 0.0, 0.0),
            surcharge,
            1e-12,
        );
    }
    let s = surcharge_yuan_per_kwh(&t, 2025, 13_520.0, 0.0, 0.0);
    close(
        surcharge_cost_yuan(s, 13_520.0, 200_000.0) / 1e6,
        297.44,
        0.005,
    );
    // 25 % non-hydro share, at least the provincial weight: −10 %
    let s = surcharge_yuan_per_kwh(&t, 2025, 13_520.0, 25.0, 6.6);
    close(s, 0.099, 1e-12);
    close(
        surcharge_cost_yuan(s, 13_520.0, 200_000.0) / 1e6,
        267.70,
        0.005,
    );
    // exactly 15 %: no reduction ("超过15%")
    close(
        surcharge_yuan_per_kwh(&t, 2025, 13_520.0, 15.0, 6.6),
        0.11,
        1e-12,
    );
    // above 15 % but below the provincial weight: no reduction
    close(
        surcharge_yuan_per_kwh(&t, 2025, 13_520.0, 18.0, 20.0),
        0.11,
        1e-12,
    );
}

// === Capacity utilisation ===

#[test]
fn capacity_utilisation_example() {
    close(
        capacity_utilisation(360_000.0, 400_000.0, 365.0).expect("capacity"),
        0.90,
        1e-12,
    );
    close(
        capacity_utilisation(1_000.0, 365_000.0, 1.0).expect("capacity"),
        1.0,
        1e-12,
    );
}

// === Emission amounts (HJ 212-2017 -Cou) and the O2 conversion ===

#[test]
fn worked_example_4_amounts() {
    close(mass_kg(85.3, 1.6e6), 136.48, 1e-9);
    close(mass_kg(4.2, 1.6e6), 6.72, 1e-9);
    close(mass_kg(0.85, 1.6e6), 1.36, 1e-9);
    close(444.44 * 3600.0, 1.6e6, 100.0);
    close(mass_flow_kg_h(85.3, 1.6e6), 136.48, 1e-9);
    close(
        o2_corrected(100.0, 6.0, 11.0).expect("O2 < 21"),
        150.0,
        1e-9,
    );
    assert_eq!(o2_corrected(100.0, 6.0, 21.0), None);
}

// === CEMS data validity (HJ 75-2017) ===

const T0: i64 = 1_740_787_200_000; // 2025-03-01T00:00:00Z = 08:00 local (UTC+8)

/// One sample per minute of the hour starting at `start`: `valid` good minutes with value
/// `v_good(i)`, the rest flagged calibration with value `v_bad`.
fn feed_hour(
    w: &mut Window,
    start: i64,
    valid: u32,
    v_good: impl Fn(u32) -> f64,
    v_bad: f64,
    out: &mut Vec<Aggregate>,
) {
    for i in 0..60 {
        let ts = start + i64::from(i) * MINUTE_MS + 5_000;
        if i < valid {
            w.push(sample(ts, v_good(i), Quality::Good), out);
        } else {
            w.push(sample(ts, v_bad, Quality::Calibration), out);
        }
    }
}

#[test]
fn worked_example_5_hour_with_47_valid_minutes_is_valid_and_averages_them() {
    let mut w = so2_rate_window(60_000);
    let mut out = Vec::new();
    feed_hour(&mut w, T0, 47, f64::from, 1000.0, &mut out);
    w.advance(Timestamp(T0 + HOUR_MS), &mut out);
    let hours = of(&out, Period::Hour);
    assert_eq!(hours.len(), 1);
    let h = hours[0];
    assert!(h.valid);
    assert_eq!((h.samples, h.expected), (47, 60));
    close(h.avg.expect("valid hour"), 23.0, 1e-12); // mean of 0..=46
    assert_eq!((h.min, h.max), (Some(0.0), Some(46.0)));
    let minutes = of(&out, Period::Minute);
    assert_eq!(minutes.len(), 60);
    assert_eq!(minutes.iter().filter(|m| !m.valid).count(), 13);
    assert!(
        minutes
            .iter()
            .filter(|m| !m.valid)
            .all(|m| m.quality == Quality::Calibration && m.avg.is_none())
    );
}

#[test]
fn worked_example_5_hour_with_44_valid_minutes_is_invalid() {
    let mut w = so2_rate_window(60_000);
    let mut out = Vec::new();
    feed_hour(&mut w, T0, 44, |_| 85.3, 1000.0, &mut out);
    w.advance(Timestamp(T0 + HOUR_MS), &mut out);
    let h = of(&out, Period::Hour)[0];
    assert!(!h.valid);
    assert_eq!(h.samples, 44);
    assert_eq!(h.avg, None);
    assert_eq!(h.quality, Quality::Calibration);
}

#[test]
fn worked_example_5_day_needs_20_valid_hours() {
    for (valid_hours, expect_valid) in [(19, false), (20, true)] {
        let mut w = so2_rate_window(60_000);
        let mut out = Vec::new();
        // local day starts at 16:00Z the day before T0's local midnight; use T0 - 8 h
        let day = T0 - 8 * HOUR_MS;
        for h in 0..24 {
            let valid = if h < valid_hours { 60 } else { 30 };
            feed_hour(&mut w, day + h * HOUR_MS, valid, |_| 50.0, 999.0, &mut out);
        }
        w.advance(Timestamp(day + DAY_MS), &mut out);
        let days = of(&out, Period::Day);
        assert_eq!(days.len(), 1, "one day for {valid_hours} valid hours");
        let d = days[0];
        assert_eq!(d.start, Timestamp(day));
        assert_eq!(d.valid, expect_valid, "{valid_hours} valid hours");
        assert_eq!(d.samples, valid_hours as u32);
        if expect_valid {
            close(d.avg.expect("valid day"), 50.0, 1e-12);
            assert_eq!(d.quality, Quality::Substituted);
        }
        // valid or not, the invalid hours at the day's end are filled with the valid hour before
        // them (HJ 75): 24 × 50 kg/h × 1 h, not the valid hours' 20 × 50
        close(d.total.expect("every hour has a value"), 1200.0, 1e-6);
        assert_eq!(d.substituted, 24 - valid_hours as u32);
    }
}

#[test]
fn month_validity_rule() {
    let v = coef().validity;
    assert!(month_valid(&v, 3, 25));
    assert!(!month_valid(&v, 3, 24));
    assert!(month_valid(&v, 2, 23));
    assert!(!month_valid(&v, 2, 22));
}

#[test]
fn an_hour_at_the_example_concentration_and_flow_totals_136_48_kg() {
    let mut w = so2_rate_window(10_000);
    let mut out = Vec::new();
    for i in 0..360 {
        let rate = mass_flow_kg_h(85.3, 1.6e6);
        w.push(sample(T0 + i * 10_000, rate, Quality::Good), &mut out);
    }
    w.advance(Timestamp(T0 + HOUR_MS), &mut out);
    let h = of(&out, Period::Hour)[0];
    close(h.total.expect("valid hour"), 136.48, 1e-6);
    assert_eq!(h.total_unit.as_deref(), Some("kg"));
    assert_eq!(of(&out, Period::Minute)[0].expected, 6);
}

#[test]
fn windows_align_on_local_midnight() {
    // 2025-03-01 00:00 local = 2025-02-28 16:00Z
    let (y, m, d) = civil(days_from_civil(2025, 3, 1));
    assert_eq!((y, m, d), (2025, 3, 1));
    let local_midnight = days_from_civil(2025, 3, 1) * DAY_MS - 8 * HOUR_MS;
    assert_eq!(local_midnight, T0 - 8 * HOUR_MS);
}

proptest! {
    #[test]
    fn constant_input_gives_that_constant(c in -1e6f64..1e6, per_minute in 1usize..12, minutes in 45i64..=60) {
        let mut w = so2_rate_window(60_000 / per_minute as u64);
        let mut out = Vec::new();
        for m in 0..minutes {
            for k in 0..per_minute {
                let ts = T0 + m * MINUTE_MS + (k as i64) * (60_000 / per_minute as i64);
                w.push(sample(ts, c, Quality::Good), &mut out);
            }
        }
        w.advance(Timestamp(T0 + HOUR_MS), &mut out);
        for a in &out {
            prop_assert!(a.valid);
            let tol = 1e-9 * c.abs().max(1.0);
            prop_assert!((a.avg.unwrap() - c).abs() <= tol);
            prop_assert!((a.min.unwrap() - c).abs() <= tol);
            prop_assert!((a.max.unwrap() - c).abs() <= tol);
        }
        prop_assert_eq!(of(&out, Period::Hour).len(), 1);
    }

    #[test]
    fn invalid_minutes_never_enter_an_average(
        good in proptest::collection::vec(0.0f64..1000.0, 45..=60),
        bad_value in -1e9f64..1e9,
        bad_quality in prop::sample::select(vec![Quality::Calibration, Quality::Maintenance, Quality::CommFail, Quality::OutOfRange, Quality::Substituted]),
    ) {
        let mut w = so2_rate_window(60_000);
        let mut out = Vec::new();
        let n = good.len();
        // interleave: good minutes first then bad ones, plus a bad sample inside a good minute
        // that the majority rule tolerates
        for i in 0..60 {
            let ts = T0 + i as i64 * MINUTE_MS;
            if let Some(g) = good.get(i) {
                for k in 0..4 {
                    w.push(sample(ts + k * 1000, *g, Quality::Good), &mut out);
                }
                w.push(sample(ts + 5000, bad_value, bad_quality), &mut out);
            } else {
                w.push(sample(ts, bad_value, bad_quality), &mut out);
            }
        }
        w.advance(Timestamp(T0 + HOUR_MS), &mut out);
        let h = of(&out, Period::Hour)[0];
        let mean = good.iter().sum::<f64>() / n as f64;
        prop_assert!(h.valid);
        prop_assert_eq!(h.samples as usize, n);
        prop_assert!((h.avg.unwrap() - mean).abs() < 1e-9);
        // the hour's mean rate × 1 h (the missing minutes do not count as zero)
        prop_assert!((h.total.unwrap() - mean).abs() < 1e-6);
    }

    #[test]
    fn counter_sums_increments_across_rollovers(
        bits in prop::sample::select(vec![16u8, 32, 64]),
        start in any::<u64>(),
        steps in proptest::collection::vec(0u64..5000, 1..200),
    ) {
        let modulus: u128 = 1u128 << bits;
        let mut c = EnergyCounter::new(bits, 1.0).with_max_step(10_000);
        let mut raw = (u128::from(start) % modulus) as u64;
        prop_assert_eq!(c.update(raw, Timestamp(0)).step, CounterStep::First);
        let mut sum = 0.0;
        for (i, s) in steps.iter().enumerate() {
            let next = ((u128::from(raw) + u128::from(*s)) % modulus) as u64;
            let d = c.update(next, Timestamp(i as i64 + 1));
            prop_assert!(d.step == CounterStep::Normal || d.step == CounterStep::Rollover);
            prop_assert_eq!(d.step == CounterStep::Rollover, next < raw);
            sum += d.delta;
            raw = next;
        }
        prop_assert_eq!(sum, steps.iter().map(|s| *s as f64).sum::<f64>());
        prop_assert_eq!(c.last_raw(), Some(raw));
    }

    #[test]
    fn counter_reset_counts_from_the_new_value(
        last in 100_000u64..u32::MAX as u64,
        new in 0u64..50_000,
        after in proptest::collection::vec(0u64..1000, 0..20),
    ) {
        // a drop whose wrapped distance exceeds the plausible step is suspect, never a rollover,
        // and the reading after it confirms the reset
        let mut c = EnergyCounter::new(32, 0.5).with_max_step(10_000);
        c.update(last, Timestamp(0));
        let wrapped = (1u64 << 32) - last + new;
        let d = c.update(new, Timestamp(1));
        if wrapped <= 10_000 {
            prop_assert_eq!(d.step, CounterStep::Rollover);
        } else {
            prop_assert_eq!(d.step, CounterStep::Suspect);
            prop_assert_eq!(d.delta, 0.0);
        }
        let mut raw = new;
        let mut sum = 0.0;
        for (i, a) in after.iter().enumerate() {
            raw += a;
            let d = c.update(raw, Timestamp(i as i64 + 2));
            if i == 0 && wrapped > 10_000 {
                prop_assert_eq!(d.step, CounterStep::Reset);
            }
            sum += d.delta;
        }
        prop_assert_eq!(sum, after.iter().sum::<u64>() as f64 * 0.5);
    }
}

#[test]
fn counter_rollover_of_the_demo_u32_meter() {
    let t = Timestamp;
    let mut c = EnergyCounter::new(32, 1.0);
    c.update(4_294_966_800, t(0));
    let d = c.update(100, t(1));
    assert_eq!(d.step, CounterStep::Rollover);
    assert_eq!(d.delta, 596.0);
    let d = c.update(50, t(2));
    assert_eq!(d.step, CounterStep::Suspect);
    assert_eq!(d.delta, 0.0);
    let d = c.update(70, t(3));
    assert_eq!((d.step, d.delta), (CounterStep::Reset, 20.0));
    // a CT/PT ratio multiplies the delta
    let mut c = EnergyCounter::new(16, 40.0);
    c.update(65_530, t(0));
    let d = c.update(4, t(1));
    assert_eq!((d.step, d.delta), (CounterStep::Rollover, 400.0));
}

// === anode-effect detection ===

fn params() -> AeParams {
    AeParams {
        threshold_v: 8.0,
        min_duration_s: 3.0,
        hysteresis_v: 0.5,
    }
}

#[test]
fn detector_applies_threshold_min_duration_and_hysteresis() {
    let p = params();
    let mut d = AeDetector::default();
    let mut got = Vec::new();
    for (s, v) in [
        (0, 4.0),
        (10, 9.0),
        (11, 9.5),
        (12, 9.0),
        (13, 9.0),
        (14, 7.8),
        (15, 7.4),
        (16, 4.0),
    ] {
        if let Some(t) = d.update(&p, Timestamp(s * 1000), v, true) {
            got.push((s, t));
        }
    }
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], (13, AeTransition::Started(Timestamp(10_000))));
    let AeTransition::Ended(ae) = got[1].1 else {
        panic!("second transition is the end")
    };
    assert_eq!(got[1].0, 15);
    assert_eq!((ae.start, ae.end), (Timestamp(10_000), Timestamp(15_000)));
    // at or above 8 V from 10 s to the 7.8 V sample at 14 s: 4 s; the hysteresis only holds
    // the effect open until 15 s so that a return above 8 V would not be a second one
    close(ae.duration_s(), 4.0, 1e-12);
    close(ae.peak_v, 9.5, 1e-12);
    close(ae.mean_v, (9.0 + 9.5 + 9.0 + 9.0 + 7.8) / 5.0, 1e-12);
}

#[test]
fn a_dip_under_the_threshold_within_the_hysteresis_is_one_effect_counting_only_time_above() {
    let p = params();
    let mut d = AeDetector::default();
    let mut ended = Vec::new();
    // above 8 V 0..4 s, 7.8 V (within the 0.5 V hysteresis) 4..6 s, above again 6..9 s, out
    for (s, v) in [
        (0, 20.0),
        (2, 18.0),
        (4, 7.8),
        (6, 9.0),
        (8, 8.5),
        (9, 7.0),
        (12, 4.0),
    ] {
        if let Some(AeTransition::Ended(ae)) = d.update(&p, Timestamp(s * 1000), v, true) {
            ended.push(ae);
        }
    }
    assert_eq!(ended.len(), 1, "{ended:?}");
    close(ended[0].duration_s(), 4.0 + 3.0, 1e-12);
    assert_eq!(ended[0].end, Timestamp(9_000));
}

#[test]
fn detector_ignores_short_spikes_and_cells_out_of_service() {
    let p = params();
    let mut d = AeDetector::default();
    for (s, v) in [(0, 9.0), (1, 12.0), (2, 7.0), (3, 4.0)] {
        assert_eq!(
            d.update(&p, Timestamp(s * 1000), v, true),
            None,
            "spike at {s}"
        );
    }
    let mut d = AeDetector::default();
    for s in 0..60 {
        assert_eq!(d.update(&p, Timestamp(s * 1000), 30.0, false), None);
    }
    // an AE in progress ends when the cell leaves service
    let mut d = AeDetector::default();
    for s in 0..5 {
        d.update(&p, Timestamp(s * 1000), 30.0, true);
    }
    assert!(d.in_effect());
    assert!(matches!(
        d.update(&p, Timestamp(5000), 0.0, false),
        Some(AeTransition::Ended(_))
    ));
}

// === the pipeline, driven by timestamped readings ===

fn pot(device: &str, ts: i64, v: f64, in_service: bool, cut_out: bool) -> ReadingBatch {
    batch(
        "potline1",
        device,
        10_000,
        vec![
            reading("cell_voltage_v", Value::Float(v), ts),
            reading("in_service", Value::Bool(in_service), ts),
            reading("cut_out", Value::Bool(cut_out), ts),
        ],
    )
}

const DEMO_CALC: &str = concat!(
    include_str!("fixtures/calc_demo_head.toml"),
    include_str!("fixtures/calc_potline1.toml"),
    r#"approved_capacity_t_per_year = 1100.0

[[stacks]]
name = "gtc1_stack"
device = "gtc1/gtc1_stack"
limits = "gb25465_2010_al_pot_gas"
pollutants = { so2 = "so2_mg_m3", fluoride = "fluoride_mg_m3" }
calibration_point = "in_calibration"
"#,
);

fn pipeline() -> Pipeline {
    let cfg: CalcConfig = toml::from_str(DEMO_CALC).expect("calc config parses");
    Pipeline::new(&cfg).expect("pipeline builds")
}

/// A pipeline of [`DEMO_CALC`] whose potline has `keys` (TOML lines) besides.
fn demo_pipeline_with(keys: &str) -> Pipeline {
    let cfg: CalcConfig = toml::from_str(&DEMO_CALC.replace(
        "approved_capacity_t_per_year = 1100.0",
        &format!("approved_capacity_t_per_year = 1100.0\n{keys}"),
    ))
    .expect("parses");
    Pipeline::new(&cfg).expect("builds")
}

/// Local midnight of 2025-03-01 at UTC+8, the day the potline and smelter days below close.
fn local_midnight() -> i64 {
    days_from_civil(2025, 3, 1) * DAY_MS - 8 * HOUR_MS
}

/// A poll of potline1's rectifier at `t`: 400 kA and `other`.
fn rectifier(t: i64, other: Reading) -> ReadingBatch {
    batch(
        "potline1",
        "rectifier",
        10_000,
        vec![reading("line_current_ka", Value::Float(400.0), t), other],
    )
}

fn metric(records: &[Record], calc: &str, name: &str, period: &str) -> Option<f64> {
    records.iter().rev().find_map(|r| match r {
        Record::Metrics(b) if &*b.calc == calc => b.metrics.iter().find_map(|m| {
            let p = m
                .labels
                .iter()
                .any(|(k, v)| &**k == "period" && &**v == period);
            (&*m.name == name && p).then_some(m.value).flatten()
        }),
        _ => None,
    })
}

#[test]
fn potline_day_matches_worked_example_1_and_counts_one_anode_effect() {
    let mut p = pipeline();
    let cells = 10;
    // local midnight 2025-03-01 = 2025-02-28T16:00Z; start one step before it
    let midnight = local_midnight();
    let step = 10_000i64;
    let mut ac_raw: u64 = 4_294_960_000;
    let ac_per_step = 400.0 * 4.05 * f64::from(cells) / 0.975 * step as f64 / 3_600_000.0;
    let mut ac_acc = 0.0f64;
    let mut records = Vec::new();
    let ae_start = midnight + 6 * HOUR_MS;
    let mut t = midnight - step;
    while t <= midnight + DAY_MS {
        records.extend(p.on_batch(&rectifier(
            t,
            reading("ac_energy_kwh", Value::UInt(ac_raw), t),
        )));
        for c in 1..=cells {
            let v = if c == 3 && (ae_start..ae_start + 60_000).contains(&t) {
                30.0
            } else {
                4.05
            };
            records.extend(p.on_batch(&pot(&format!("pot_{c:03}"), t, v, true, false)));
        }
        // a cut-out cell: its 30 V never counts, it counts in no denominator
        records.extend(p.on_batch(&pot(
            "pot_011",
            t,
            if t == ae_start { 30.0 } else { 0.0 },
            false,
            true,
        )));
        ac_acc += ac_per_step;
        let whole = ac_acc.floor();
        ac_acc -= whole;
        ac_raw = ((u128::from(ac_raw) + whole as u128) % (1u128 << 32)) as u64;
        t += step;
    }
    let prod = metric(&records, "potline", "production_t", "day").expect("a day closed");
    // 10 cells: a twentieth of the example line's 602.42 t/day
    close(prod, 602.42 / 20.0, 0.01);
    close(
        metric(&records, "potline", "dc_kwh_per_t", "day").expect("dc"),
        // 12,908 at 4.05 V, plus the anode effect: 26 V above 4.05 V at 400 kA for one minute
        12_908.0 + 26.0 * 400.0 / 60.0 / prod,
        1.0,
    );
    close(
        metric(&records, "potline", "ac_kwh_per_t", "day").expect("ac"),
        13_239.0,
        1.0,
    );
    assert_eq!(metric(&records, "potline", "ac_grade", "day"), Some(3.0));
    assert_eq!(
        metric(&records, "potline", "meter_resets", "day"),
        Some(0.0)
    );
    close(
        metric(&records, "potline", "capacity_utilisation_pct", "day").expect("cap"),
        prod / (1100.0 / 365.0) * 100.0,
        0.05,
    );
    assert_eq!(
        metric(&records, "anode_effect", "ae_count", "day"),
        Some(1.0)
    );
    close(
        metric(&records, "anode_effect", "cell_days", "day").expect("cell-days"),
        10.0,
        1e-6,
    );
    close(
        metric(&records, "anode_effect", "aem_min_per_cell_day", "day").expect("aem"),
        0.1,
        1e-9,
    );
    let cf4 = metric(&records, "emissions", "pfc_cf4_kg", "day").expect("cf4");
    close(cf4, 0.143 * 0.1 * prod, 1e-6);
    close(
        metric(&records, "emissions", "anode_co2_t", "day").expect("anode"),
        1.431_466_7 * prod,
        1e-3,
    );
    let events: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 2, "one start and one end: {events:?}");
    assert_eq!(events[0].phase, EventPhase::Start);
    assert_eq!(&*events[0].subject, "potline1/pot_003");
    assert_eq!(events[0].ts, Timestamp(ae_start));
    assert_eq!(events[1].phase, EventPhase::End);
    let duration = events[1]
        .attributes
        .iter()
        .find(|(k, _)| &**k == "duration_s")
        .map(|(_, v)| v.clone());
    assert_eq!(duration, Some(Value::Float(60.0)));
    // per-cell pseudo-resistance on the minute
    let r = records.iter().find_map(|r| match r {
        Record::Metrics(b) => b
            .metrics
            .iter()
            .find(|m| &*m.name == "pseudo_resistance_uohm")
            .and_then(|m| m.value),
        _ => None,
    });
    close(r.expect("pseudo-resistance"), 6.0, 1e-9);
}

#[test]
fn stack_hour_with_an_exceedance_gives_an_event_and_mass() {
    let mut p = pipeline();
    let mut records = Vec::new();
    for i in 0..360 {
        let t = T0 + i * 10_000;
        let so2 = if i < 180 { 150.0 } else { 300.0 };
        records.extend(p.on_batch(&batch(
            "gtc1",
            "gtc1_stack",
            10_000,
            vec![
                reading("so2_mg_m3", Value::Float(so2), t),
                reading("fluoride_mg_m3", Value::Float(0.85), t),
                reading("flow_m3h", Value::Float(1.6e6), t),
                reading("in_calibration", Value::Bool(i % 60 == 59), t),
            ],
        )));
    }
    records.extend(p.flush(Timestamp(T0 + HOUR_MS)));
    let hour = |q: &str| {
        records
            .iter()
            .find_map(|r| match r {
                Record::Aggregate(a) if a.period == Period::Hour && &*a.quantity == q => {
                    Some(a.clone())
                }
                _ => None,
            })
            .expect("hour aggregate")
    };
    let so2 = hour("so2_mg_m3");
    assert!(so2.valid);
    close(so2.avg.expect("valid"), 225.0, 1e-9);
    let f = hour("fluoride_kg_h");
    close(f.total.expect("valid"), 1.36, 1e-9);
    let exceed = events_of(&records, "exceedance");
    assert_eq!(exceed.len(), 1);
    assert_eq!(&*exceed[0].subject, "gtc1_stack/so2_mg_m3");
}

#[test]
fn config_errors_name_the_key() {
    let mut cfg: CalcConfig = toml::from_str(DEMO_CALC).expect("parses");
    cfg.gwp = Some("ar9".into());
    let e = Pipeline::new(&cfg).expect_err("unknown gwp").to_string();
    assert!(e.contains("calc.gwp") && e.contains("ar5"), "{e}");
    let mut cfg: CalcConfig = toml::from_str(DEMO_CALC).expect("parses");
    cfg.potlines[0].technology = "xx".into();
    let e = Pipeline::new(&cfg)
        .expect_err("unknown technology")
        .to_string();
    assert!(e.contains("potlines[0].technology"), "{e}");
    assert!(toml::from_str::<CalcConfig>("gwpp = \"ar5\"").is_err());
}

#[test]
fn glob_matches_templates() {
    assert!(glob_match("potline1/pot_*", "potline1/pot_017"));
    assert!(!glob_match("potline1/pot_*", "potline1/rectifier"));
    assert!(glob_match("pot_0?7", "pot_017"));
}

#[test]
fn demo_config_calc_section_builds_a_pipeline() {
    let cfg = smeltwatch::config::load(std::path::Path::new("config/demo.toml"))
        .expect("demo config loads");
    let calc = cfg.calc.expect("demo config has a [calc] section");
    assert_eq!(calc.potlines.len(), 1);
    assert_eq!(calc.stacks.len(), 2);
    Pipeline::new(&calc).expect("demo calc section builds");
}

// === restarts: the open windows survive a snapshot ===

/// An hour of a 3-cell line and its stack, one poll every 10 s, steps `from..to` (step 0 is
/// local 08:00). Cell 2 is in an anode effect from minute 20 to minute 40; SO2 varies so that
/// a lost or doubled sample would change the hour.
fn drive_hour(p: &mut Pipeline, steps: std::ops::Range<i64>, out: &mut Vec<Record>) {
    for i in steps {
        let t = T0 + i * 10_000;
        out.extend(p.on_batch(&batch(
            "potline1",
            "rectifier",
            10_000,
            vec![
                reading("line_current_ka", Value::Float(400.0 + (i % 5) as f64), t),
                reading("ac_energy_kwh", Value::UInt(1_000 + i as u64 * 50), t),
            ],
        )));
        for c in 1..=3 {
            let ae = c == 2 && (120..240).contains(&i);
            let v = if ae { 25.0 - (i % 3) as f64 } else { 4.05 };
            out.extend(p.on_batch(&pot(&format!("pot_{c:03}"), t, v, true, false)));
        }
        out.extend(p.on_batch(&batch(
            "gtc1",
            "gtc1_stack",
            10_000,
            vec![
                reading("so2_mg_m3", Value::Float(150.0 + (i % 7) as f64), t),
                reading("fluoride_mg_m3", Value::Float(0.85), t),
                reading("flow_m3h", Value::Float(1.0e6 + (i % 11) as f64 * 100.0), t),
                reading("in_calibration", Value::Bool(false), t),
            ],
        )));
    }
}

/// Snapshot `p` through JSON (as the agent stores it) into a freshly built pipeline.
fn restart(p: Pipeline) -> Pipeline {
    let json = serde_json::to_string(&p.snapshot()).expect("snapshot serialises");
    drop(p);
    let mut fresh = pipeline();
    let snap = serde_json::from_str(&json).expect("snapshot parses");
    assert!(fresh.restore(snap), "same format version restores");
    fresh
}

#[test]
fn a_restart_mid_hour_emits_exactly_what_an_uninterrupted_run_emits() {
    let mut straight = pipeline();
    let mut expected = Vec::new();
    drive_hour(&mut straight, 0..361, &mut expected);
    expected.extend(straight.flush(Timestamp(T0 + HOUR_MS + MINUTE_MS)));

    // restart at minute 30: inside the open hour, inside the anode effect, mid-minute
    let mut first = pipeline();
    let mut got = Vec::new();
    drive_hour(&mut first, 0..183, &mut got);
    let mut second = restart(first);
    drive_hour(&mut second, 183..361, &mut got);
    got.extend(second.flush(Timestamp(T0 + HOUR_MS + MINUTE_MS)));

    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e);
    }
    // and the hour is there, valid, with every minute in it
    let hour = got
        .iter()
        .find_map(|r| match r {
            Record::Aggregate(a) if a.period == Period::Hour && &*a.quantity == "so2_kg_h" => {
                Some(a)
            }
            _ => None,
        })
        .expect("the hour closed");
    assert!(hour.valid);
    assert_eq!(hour.samples, 60);
    // one anode effect, started before the restart and ended after it
    let ends: Vec<_> = got
        .iter()
        .filter_map(|r| match r {
            Record::Event(e) if e.phase == EventPhase::End => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(ends.len(), 1);
    assert!(
        ends[0]
            .attributes
            .iter()
            .any(|(k, v)| &**k == "start" && *v == Value::Int(T0 + 120 * 10_000))
    );
}

#[test]
fn a_restart_after_downtime_counts_the_gap_as_missing_and_nothing_twice() {
    let mut first = pipeline();
    let mut got = Vec::new();
    drive_hour(&mut first, 0..120, &mut got); // minutes 0-19
    let mut second = restart(first);
    drive_hour(&mut second, 180..361, &mut got); // down for minutes 20-29
    got.extend(second.flush(Timestamp(T0 + HOUR_MS + MINUTE_MS)));
    let minutes: Vec<_> = got
        .iter()
        .filter_map(|r| match r {
            Record::Aggregate(a)
                if a.period == Period::Minute
                    && &*a.quantity == "so2_mg_m3"
                    && a.start.0 < T0 + HOUR_MS =>
            {
                Some(a)
            }
            _ => None,
        })
        .collect();
    let mut starts: Vec<_> = minutes.iter().map(|a| a.start).collect();
    starts.dedup();
    assert_eq!(starts.len(), minutes.len(), "a minute emitted twice");
    assert_eq!(minutes.len(), 50);
    let hour = got
        .iter()
        .find_map(|r| match r {
            Record::Aggregate(a) if a.period == Period::Hour && &*a.quantity == "so2_mg_m3" => {
                Some(a)
            }
            _ => None,
        })
        .expect("the hour closed");
    assert!(hour.valid, "50 valid minutes make a valid hour");
    assert_eq!(hour.samples, 50);
    let mean = minutes.iter().map(|a| a.avg.expect("valid")).sum::<f64>() / 50.0;
    close(hour.avg.expect("valid"), mean, 1e-9);
}

#[test]
fn a_snapshot_of_another_format_version_is_not_restored() {
    let mut p = pipeline();
    let mut out = Vec::new();
    drive_hour(&mut p, 0..10, &mut out);
    let mut snap = p.snapshot();
    snap.version += 1;
    let mut fresh = pipeline();
    assert!(!fresh.restore(snap));
    assert_eq!(fresh.snapshot().latest, None);
}

#[tokio::test]
async fn the_agent_keeps_the_snapshot_in_the_state_directory_and_sets_a_bad_one_aside() {
    use smeltwatch::fanout::calc_state::{CALC_STATE_FILE, CalcStage, load};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(CALC_STATE_FILE);
    let mut stage = CalcStage::open(pipeline(), dir.path());
    let mut out = Vec::new();
    for i in 0..7 {
        let t = T0 + i * 10_000;
        out.extend(stage.on_batch(&pot("pot_001", t, 4.05, true, false)));
    }
    // a minute closed: the records are handed on, then the state is saved
    assert!(!out.is_empty());
    stage.saved_after(&out).await;
    let saved = load(&path).expect("readable").expect("saved");
    assert_eq!(saved.latest, Some(Timestamp(T0 + 60_000)));
    // the next start resumes from it
    let resumed = CalcStage::open(pipeline(), dir.path());
    assert_eq!(
        resumed.pipeline().snapshot().latest,
        Some(Timestamp(T0 + 60_000))
    );
    // a file that is not a snapshot is moved aside, not silently dropped
    std::fs::write(&path, b"{ not json").expect("write");
    let _fresh = CalcStage::open(pipeline(), dir.path());
    assert!(!path.exists());
    assert!(dir.path().join("calc-state.json.bad").exists());
}

// === copper smelting (GB 25323-2023, oxygen-enriched smelting) ===

#[test]
fn copper_oxygen_so2_capture_and_energy_formulas() {
    use smeltwatch::calc::copper::{
        energy_kgce_per_t, oxygen_per_t_concentrate, so2_kg_h_from_volume_pct, sulphur_capture_pct,
    };
    // 150 t/h of concentrate blown with 24,750 Nm³/h of oxygen: 165 Nm³/t
    close(
        oxygen_per_t_concentrate(24_750.0, 150.0).expect("feed"),
        165.0,
        1e-12,
    );
    assert_eq!(oxygen_per_t_concentrate(1.0, 0.0), None);
    // SO2 density at 0 °C, 101.325 kPa: 64.066 g/mol / 22.414 L/mol
    let rho = coef().copper.so2_density_kg_per_nm3;
    close(rho, 64.066 / 22.414, 5e-4);
    // 12 % SO2 in 100,000 Nm³/h at the acid-plant inlet: 34,296 kg/h
    let inlet = so2_kg_h_from_volume_pct(12.0, 100_000.0, rho);
    close(inlet, 34_296.0, 1e-9);
    // 120 mg/m³ in 250,000 m³/h leave by the stack: 30 kg/h; 99.9125 % captured
    let stack = mass_flow_kg_h(120.0, 250_000.0);
    close(stack, 30.0, 1e-12);
    close(
        sulphur_capture_pct(inlet, stack).expect("inlet"),
        100.0 * (1.0 - 30.0 / 34_296.0),
        1e-12,
    );
    assert_eq!(sulphur_capture_pct(0.0, 1.0), None);
    // 216,000 kgce for 960 t of cathode copper: 225 kgce/t
    close(
        energy_kgce_per_t(216_000.0, 960.0).expect("output"),
        225.0,
        1e-12,
    );
}

#[test]
fn gb25323_copper_grades() {
    let c = coef();
    let smelting = &c.grades["gb25323_2023_cu_smelting"];
    // concentrate to cathode: 1级 ≤ 210, 2级 ≤ 230, 3级 ≤ 340 kgce/t
    assert_eq!(grade(smelting, 210.0), Grade::Level1);
    assert_eq!(grade(smelting, 215.0), Grade::Level2);
    assert_eq!(grade(smelting, 340.0), Grade::Level3);
    assert_eq!(grade(smelting, 340.5), Grade::Fail);
    let blister = &c.grades["gb25323_2023_cu_blister"];
    assert_eq!(blister.levels, [100.0, 125.0, 175.0]);
    assert_eq!(grade(blister, 130.0), Grade::Level3);
    let electrolysis = &c.grades["gb25323_2023_cu_electrolysis"];
    assert_eq!(grade(electrolysis, 85.0), Grade::Level2);
    assert_eq!(
        c.grades["gb25323_2023_cu_scrap_to_cathode"].levels,
        [290.0, 310.0, 370.0]
    );
}

const SMELTER_CALC: &str = concat!(
    "utc_offset_hours = 8\n",
    include_str!("fixtures/calc_smelter1.toml"),
    "limits = \"gb25467_2010_cu_smelting\"\n",
);

#[test]
fn smelter_day_integrates_feed_oxygen_so2_and_energy() {
    let cfg: CalcConfig = toml::from_str(SMELTER_CALC).expect("parses");
    let mut p = Pipeline::new(&cfg).expect("builds");
    let midnight = local_midnight();
    let step = 10_000i64;
    let mut records = Vec::new();
    let mut t = midnight - step;
    while t <= midnight + DAY_MS {
        for b in smelter1_batches(t) {
            records.extend(p.on_batch(&b));
        }
        t += step;
    }
    let day = |name: &str| metric(&records, "copper", name, "day").expect(name);
    close(day("concentrate_t"), 3_600.0, 1e-6);
    close(day("oxygen_nm3"), 594_000.0, 1e-4);
    close(day("oxygen_nm3_per_t_concentrate"), 165.0, 1e-9);
    close(day("copper_t"), 960.0, 1e-6);
    close(day("energy_kgce"), 216_000.0, 1e-4);
    close(day("energy_kgce_per_t"), 225.0, 1e-9);
    assert_eq!(day("energy_grade"), 2.0);
    let rho = coef().copper.so2_density_kg_per_nm3;
    close(
        day("acid_plant_so2_t"),
        12.0 / 100.0 * 100_000.0 * rho * 24.0 / 1000.0,
        1e-6,
    );
    close(day("stack_so2_t"), 30.0 * 24.0 / 1000.0, 1e-9);
    close(
        day("sulphur_capture_pct"),
        100.0 * (1.0 - 30.0 / (12.0 / 100.0 * 100_000.0 * rho)),
        1e-9,
    );
    // the minute figures carry the instantaneous ratio and enrichment
    let minute = records.iter().find_map(|r| match r {
        Record::Metrics(b) if &*b.calc == "copper" => b
            .metrics
            .iter()
            .find(|m| &*m.name == "oxygen_nm3_per_t_concentrate" && m.labels.len() == 1)
            .and_then(|m| m.value),
        _ => None,
    });
    close(minute.expect("minute metric"), 165.0, 1e-9);
}

#[test]
fn a_smelter_feed_declared_in_kg_per_h_is_converted_and_an_oxygen_flow_in_kw_is_refused() {
    let cfg: CalcConfig = toml::from_str(SMELTER_CALC).expect("parses");
    let mut p = Pipeline::new(&cfg).expect("builds");
    let midnight = local_midnight();
    let in_unit = |point: &str, v: f64, unit: &str, t: i64| {
        let mut r = reading(point, Value::Float(v), t);
        r.unit = Arc::from(unit);
        r
    };
    let mut records = Vec::new();
    for i in 0..=12 {
        let t = midnight + i * 10_000;
        records.extend(p.on_batch(&batch(
            "smelter1",
            "smelter1",
            10_000,
            vec![
                in_unit("concentrate_feed_tph", 150_000.0, "kg/h", t),
                in_unit("oxygen_flow_nm3h", 24_750.0, "kW", t),
            ],
        )));
    }
    let minute = |name: &str| {
        records.iter().find_map(|r| match r {
            Record::Metrics(b) if &*b.calc == "copper" => b
                .metrics
                .iter()
                .find(|m| &*m.name == name && m.labels.len() == 1)
                .map(|m| m.value),
            _ => None,
        })
    };
    assert_eq!(minute("concentrate_feed_tph"), Some(Some(150.0)));
    assert_eq!(minute("oxygen_flow_nm3h"), Some(None));
    let refused = events_of(&records, "unit_mismatch").len();
    assert_eq!(refused, 1);
}

#[test]
fn a_smelter_naming_an_unknown_stack_is_a_config_error() {
    let mut cfg: CalcConfig = toml::from_str(SMELTER_CALC).expect("parses");
    cfg.smelters[0].stack = Some("nope".into());
    let e = Pipeline::new(&cfg).expect_err("unknown stack").to_string();
    assert!(
        e.contains("smelters[0].stack") && e.contains("smelter1_stack"),
        "{e}"
    );
}

#[test]
fn current_efficiency_from_the_tapped_metal_counter() {
    let mut p = demo_pipeline_with("tapped_metal_kg_point = \"tapped_kg\"\ncounter_bits = 16");
    let midnight = local_midnight();
    let step = 10_000i64;
    // six taps of 4,940 kg, one every 4 hours from 01:00; a u16 counter rolls over on the way
    let mut tapped: u64 = 60_000;
    let mut records = Vec::new();
    let mut t = midnight - step;
    while t <= midnight + DAY_MS {
        let since = t - midnight;
        if (HOUR_MS..DAY_MS).contains(&since) && (since - HOUR_MS) % (4 * HOUR_MS) == 0 {
            tapped = (tapped + 4_940) % 65_536;
        }
        records.extend(p.on_batch(&rectifier(t, reading("tapped_kg", Value::UInt(tapped), t))));
        for c in 1..=10 {
            records.extend(p.on_batch(&pot(&format!("pot_{c:03}"), t, 4.05, true, false)));
        }
        t += step;
    }
    close(
        metric(&records, "potline", "tapped_metal_t", "day").expect("tapped"),
        29.64,
        1e-9,
    );
    // 10 cells × 400 kA × 24 h = 96,000 kA·h → 32,215 kg in theory; 29,640 kg tapped: 92.0 %
    close(
        metric(
            &records,
            "potline",
            "current_efficiency_from_tapping_pct",
            "day",
        )
        .expect("CE"),
        29_640.0 / (0.335_573 * 96_000.0) * 100.0,
        1e-3,
    );
    assert_eq!(
        metric(&records, "potline", "meter_resets", "day"),
        Some(0.0),
        "a rollover is not a reset"
    );
}

#[test]
fn simulated_time_maps_readings_to_plant_time_and_rejects_bad_settings() {
    let with = |extra: &str| format!("{DEMO_CALC}\n[simulated_time]\n{extra}\n");
    let cfg: CalcConfig =
        toml::from_str(&with("scale = 60.0\nstart = \"2025-03-01T15:00:00Z\"")).expect("parses");
    let mut p = Pipeline::new(&cfg).expect("builds");
    // two stack samples one real second apart are one plant minute apart: the first minute
    // (15:00Z) closes with the second sample
    let wall = 1_900_000_000_000;
    let mut out = Vec::new();
    for k in 0..2 {
        out.extend(p.on_batch(&batch(
            "gtc1",
            "gtc1_stack",
            10_000,
            vec![
                reading("so2_mg_m3", Value::Float(100.0), wall + k * 1000),
                reading("flow_m3h", Value::Float(1.0e6), wall + k * 1000),
            ],
        )));
    }
    let plant_start = days_from_civil(2025, 3, 1) * DAY_MS + 15 * HOUR_MS;
    let minute = out
        .iter()
        .find_map(|r| match r {
            Record::Aggregate(a) if a.period == Period::Minute => Some(a),
            _ => None,
        })
        .expect("a plant minute closed");
    assert_eq!(minute.start, Timestamp(plant_start));
    assert_eq!(minute.end, Timestamp(plant_start + MINUTE_MS));

    let cfg: CalcConfig =
        toml::from_str(&with("scale = 0.0\nstart = \"2025-03-01T15:00:00Z\"")).expect("parses");
    let e = Pipeline::new(&cfg).expect_err("scale 0").to_string();
    assert!(e.contains("calc.simulated_time.scale"), "{e}");
    let cfg: CalcConfig =
        toml::from_str(&with("scale = 60.0\nstart = \"1 March 2025\"")).expect("parses");
    let e = Pipeline::new(&cfg).expect_err("bad start").to_string();
    assert!(
        e.contains("calc.simulated_time.start") && e.contains("1 March 2025"),
        "{e}"
    );
}

#[test]
fn a_glitched_ac_counter_reading_adds_the_real_energy_and_raises_one_meter_anomaly() {
    // A 50 MW meter read every 10 s can add at most about 139 kWh between two readings: the
    // 1.5 × 10⁹ reading is a glitch, the next reading is 100 kWh above the one before it.
    let mut p = demo_pipeline_with("ac_meter_rated_kw = 50000.0");
    let midnight = local_midnight();
    let mut records = Vec::new();
    for (i, raw) in [1_000_000u64, 1_500_000_000, 1_000_100, 1_000_100]
        .into_iter()
        .enumerate()
    {
        let t = midnight - 30_000 + i as i64 * 10_000;
        records.extend(p.on_batch(&rectifier(t, reading("ac_energy_kwh", Value::UInt(raw), t))));
    }
    records.extend(p.flush(Timestamp(midnight + 20_000)));
    close(
        metric(&records, "potline", "ac_energy_kwh", "day").expect("the day closed"),
        100.0,
        1e-9,
    );
    let anomalies = events_of(&records, "meter_anomaly");
    assert_eq!(anomalies.len(), 1, "{anomalies:?}");
    assert_eq!(&*anomalies[0].subject, "potline1/rectifier.ac_energy_kwh");
    assert_eq!(
        metric(&records, "potline", "meter_resets", "day"),
        Some(0.0),
        "a glitch is not a reset"
    );
}
