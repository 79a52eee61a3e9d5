use super::*;
use crate::simulator::device::BankSizes;

fn potline_cfg(ae_rate: f64) -> PotlineSim {
    toml::from_str(&format!(
        r#"
            name = "p"
            listen = "127.0.0.1:1"
            cells = 24
            cells_out_of_service = [7]
            anode_effects_per_cell_day = {ae_rate}
            dc_energy_start_kwh = 4294967000
            "#
    ))
    .expect("potline config")
}

fn potline(ae_rate: f64, seed: u64) -> Potline {
    let cfg = potline_cfg(ae_rate);
    let rect = Device::new("r", BankSizes::for_layout(rectifier::LAYOUT), 0);
    let pots = (0..cfg.cells)
        .map(|_| Device::new("pot", BankSizes::for_layout(pcu::LAYOUT), 0))
        .collect();
    Potline::new(&cfg, seed, rect, pots)
}

#[test]
fn potline_values_are_plausible() {
    let mut line = potline(0.0, 7);
    let mut current_sum = 0.0;
    for _ in 0..600 {
        line.step(1.0);
        current_sum += line
            .rectifier
            .read_point(&rectifier::LINE_CURRENT_KA)
            .expect("current");
    }
    let mean_current = current_sum / 600.0;
    assert!((385.0..415.0).contains(&mean_current), "{mean_current}");
    let cut = &line.cells[6].device;
    assert!(cut.read_point(&pcu::CELL_VOLTAGE_V).expect("v") < 0.05);
    assert_eq!(cut.read_point(&pcu::CUT_OUT), Some(1.0));
    assert_eq!(cut.read_point(&pcu::IN_SERVICE), Some(0.0));
    let v = line.cells[0]
        .device
        .read_point(&pcu::CELL_VOLTAGE_V)
        .expect("v");
    assert!((3.8..4.3).contains(&v), "{v}");
    let r = line.cells[0]
        .device
        .read_point(&pcu::PSEUDO_RESISTANCE_UOHM)
        .expect("r");
    assert!((5.0..7.0).contains(&r), "{r}");
    let t = line.cells[0]
        .device
        .read_point(&pcu::BATH_TEMP_C)
        .expect("t");
    assert!((940.0..970.0).contains(&t), "{t}");
    // 23 cells × ~4.05 V + 5 V bus ≈ 98 V.
    let line_v = line
        .rectifier
        .read_point(&rectifier::LINE_VOLTAGE_V)
        .expect("V");
    assert!((90.0..106.0).contains(&line_v), "{line_v}");
}

#[test]
fn energy_counters_roll_over_and_ac_exceeds_dc_by_the_efficiency() {
    let mut line = potline(0.0, 1);
    let start = 4_294_967_000.0;
    // ~39 MW: 296 kWh to the wrap take ~27 s.
    for _ in 0..60 {
        line.step(1.0);
    }
    let dc = line
        .rectifier
        .read_point(&rectifier::DC_ENERGY_KWH)
        .expect("dc");
    let ac = line
        .rectifier
        .read_point(&rectifier::AC_ENERGY_KWH)
        .expect("ac");
    assert!(dc < 1000.0, "DC counter wrapped: {dc}");
    let dc_used = dc + 4_294_967_296.0 - start;
    let ac_used = ac + 4_294_967_296.0 - start;
    let ratio = dc_used / ac_used;
    assert!((ratio - 0.975).abs() < 0.01, "{ratio}");
    assert!((500.0..800.0).contains(&dc_used), "{dc_used}");
}

#[test]
fn anode_effects_happen_at_roughly_the_configured_rate_and_exceed_8_v() {
    // 23 cells × 200 per cell-day ≈ 3.2 per minute.
    let mut line = potline(200.0, 3);
    let mut max_v: f64 = 0.0;
    for _ in 0..1800 {
        line.step(1.0);
        for cell in &line.cells {
            if cell.device.read_point(&pcu::ANODE_EFFECT) == Some(1.0) {
                let v = cell.device.read_point(&pcu::CELL_VOLTAGE_V).expect("v");
                assert!(v > AE_THRESHOLD_V, "{v}");
                max_v = max_v.max(v);
            }
        }
    }
    let total: f64 = line
        .cells
        .iter()
        .map(|c| {
            c.device
                .read_point(&pcu::ANODE_EFFECT_COUNT)
                .expect("count")
        })
        .sum();
    // Cells in an effect cannot start another, so expect somewhat fewer than 96.
    assert!((40.0..=110.0).contains(&total), "{total}");
    assert!(max_v > 12.0, "{max_v}");
    assert_eq!(
        line.cells[6].device.read_point(&pcu::ANODE_EFFECT_COUNT),
        Some(0.0)
    );
}

#[test]
fn scheduled_anode_effects_start_and_end_on_their_ticks() {
    let mut cfg = potline_cfg(0.0);
    cfg.anode_effect_schedule = toml::from_str::<PotlineSim>(
        r#"
            name = "p"
            listen = "127.0.0.1:1"
            cells = 24
            [[anode_effect_schedule]]
            cell = 3
            at = "10s"
            duration = "5s"
            peak_v = 25.0
            "#,
    )
    .expect("schedule")
    .anode_effect_schedule;
    let rect = Device::new("r", BankSizes::for_layout(rectifier::LAYOUT), 0);
    let pots = (0..cfg.cells)
        .map(|_| Device::new("pot", BankSizes::for_layout(pcu::LAYOUT), 0))
        .collect();
    let mut line = Potline::new(&cfg, 3, rect, pots);
    let mut in_effect = Vec::new();
    for t in 1..=20 {
        line.step(1.0);
        let cell = &line.cells[2].device;
        let v = cell.read_point(&pcu::CELL_VOLTAGE_V).expect("v");
        let ae = cell.read_point(&pcu::ANODE_EFFECT) == Some(1.0);
        assert_eq!(ae, v > AE_THRESHOLD_V, "t = {t} s: {v} V");
        if t == 10 {
            // the jump: 9 + (25 - 9) at elapsed 0, plus noise
            assert!(v > 23.0, "{v}");
        }
        if ae {
            in_effect.push(t);
        }
        // no other cell has an effect at rate 0
        assert!(
            line.cells
                .iter()
                .enumerate()
                .all(|(i, c)| i == 2 || c.device.read_point(&pcu::ANODE_EFFECT) == Some(0.0))
        );
    }
    assert_eq!(in_effect, vec![10, 11, 12, 13, 14]);
    assert_eq!(
        line.cells[2].device.read_point(&pcu::ANODE_EFFECT_COUNT),
        Some(1.0)
    );
}

#[test]
fn fixed_stack_points_hold_their_value() {
    let cfg: StackSim = toml::from_str(
        r#"
            name = "s"
            listen = "127.0.0.1:1"
            profile = "potline_gtc"
            fixed = { so2_mg_m3 = 250.0, flow_m3h = 1600000.0 }
            "#,
    )
    .expect("stack");
    let dev = Device::new("s", BankSizes::for_layout(cems::LAYOUT), 0);
    let mut stack = Stack::new(&cfg, 1, dev.clone());
    let mut fluoride = Vec::new();
    for _ in 0..100 {
        stack.step(10.0);
        assert_eq!(dev.read_point(&cems::SO2_MG_M3), Some(250.0));
        assert_eq!(dev.read_point(&cems::FLOW_M3H), Some(1_600_000.0));
        fluoride.push(dev.read_point(&cems::FLUORIDE_MG_M3).expect("f"));
    }
    // the others still move
    assert!(fluoride.windows(2).any(|w| w[0] != w[1]));
}

#[test]
fn stacks_stay_mostly_under_their_limits() {
    for (profile, so2_limit, particulate_limit) in [
        (StackProfile::PotlineGtc, 200.0, 20.0),
        (StackProfile::CopperSmelter, 400.0, 80.0),
    ] {
        let cfg = StackSim {
            name: "s".into(),
            listen: "127.0.0.1:1".parse().expect("addr"),
            unit_id: 1,
            profile,
            fixed: Default::default(),
        };
        let dev = Device::new("s", BankSizes::for_layout(cems::LAYOUT), 0);
        let mut stack = Stack::new(&cfg, 11, dev.clone());
        let mut over = 0;
        for _ in 0..3600 {
            stack.step(1.0);
            let so2 = dev.read_point(&cems::SO2_MG_M3).expect("so2");
            let pm = dev.read_point(&cems::PARTICULATE_MG_M3).expect("pm");
            if so2 > so2_limit || pm > particulate_limit {
                over += 1;
            }
        }
        assert!(over < 36, "{profile:?}: {over} of 3600 s over a limit");
    }
}

#[test]
fn smelter_follows_a_written_setpoint() {
    let cfg = SmelterSim {
        name: "s".into(),
        listen: "127.0.0.1:1".parse().expect("addr"),
        unit_id: 1,
        concentrate_feed_tph: 150.0,
    };
    let dev = Device::new("s", BankSizes::for_layout(copper_smelter::LAYOUT), 0);
    let mut s = Smelter::new(&cfg, 5, dev.clone());
    dev.write_point(&copper_smelter::FEED_SETPOINT_TPH, 100.0);
    s.step(1.0);
    let feed = dev
        .read_point(&copper_smelter::CONCENTRATE_FEED_TPH)
        .expect("feed");
    assert!((85.0..115.0).contains(&feed), "{feed}");
    let o2 = dev
        .read_point(&copper_smelter::OXYGEN_FLOW_NM3H)
        .expect("o2");
    assert!((o2 / feed - 165.0).abs() < 25.0, "{o2}");
    assert_eq!(dev.read_point(&copper_smelter::RUNNING), Some(1.0));
}
