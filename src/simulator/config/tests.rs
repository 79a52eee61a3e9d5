use super::*;

fn parse(src: &str) -> SimulatorConfig {
    toml::from_str(src).expect("valid simulator section")
}

#[test]
fn time_scale_schedule_and_fixed_points_are_checked() {
    let base = r#"
            [[potlines]]
            name = "p"
            listen = "127.0.0.1:15020"
            cells = 4
            cells_out_of_service = [4]
            [[stacks]]
            name = "s"
            listen = "127.0.0.1:15021"
            profile = "potline_gtc"
            "#;
    assert_eq!(parse(base).time_scale, 1.0);
    parse(base).validate().expect("valid");
    let err = parse(&format!("time_scale = 0.0\n{base}"))
        .validate()
        .expect_err("zero scale");
    assert_eq!(err, SimConfigError::TimeScale(0.0));
    let with_ae = |cell: u16| {
        format!(
            "{base}\n[[potlines.anode_effect_schedule]]\ncell = {cell}\nat = \"1m\"\nduration = \"2m\"\n"
        )
    };
    let ok = parse(&with_ae(2));
    ok.validate().expect("cell 2 is in service");
    assert_eq!(ok.potlines[0].anode_effect_schedule[0].peak_v, 30.0);
    assert_eq!(
        ok.potlines[0].anode_effect_schedule[0].duration,
        Duration::from_secs(120)
    );
    let err = parse(&with_ae(4)).validate().expect_err("cut-out cell");
    assert!(err.to_string().contains("cell 4"), "{err}");
    let err = parse(&format!("{base}fixed = {{ so3_mg_m3 = 1.0 }}\n"))
        .validate()
        .expect_err("unknown point");
    assert!(
        err.to_string().contains("so3_mg_m3") && err.to_string().contains("so2_mg_m3"),
        "{err}"
    );
}

#[test]
fn example_section_parses_with_defaults() {
    let cfg = parse(
        r#"
            seed = 42
            [[potlines]]
            name = "potline1"
            listen = "127.0.0.1:15020"
            cells = 24
            cells_out_of_service = [7]
            dc_energy_start_kwh = 4294000000
            [[stacks]]
            name = "gtc1"
            listen = "127.0.0.1:15021"
            profile = "potline_gtc"
            [[faults]]
            device = "potline1/pot_005"
            latency = "2s"
            exception = 6
            exception_addresses = [0, 3]
            corruption = "truncate"
            corrupt_every = 20
            "#,
    );
    assert_eq!(cfg.tick, Duration::from_secs(1));
    let line = &cfg.potlines[0];
    assert_eq!((line.rectifier_unit_id, line.first_pot_unit_id), (1, 10));
    assert_eq!(line.line_current_ka, 400.0);
    assert_eq!(cfg.validate(), Ok(()));
    let faults = cfg.faults[0].to_faults();
    assert_eq!(faults.latency, Duration::from_secs(2));
    assert_eq!(
        faults.exception.map(|e| (e.code, e.addresses)),
        Some((6, Some(0..=3)))
    );
    assert_eq!(faults.corruption, Corruption::Truncate);
    let devices = cfg.devices().expect("devices");
    assert_eq!(devices.len(), 1 + 24 + 1);
    assert_eq!(devices[24].name, "potline1/pot_024");
    assert_eq!(devices[24].unit_id, 33);
}

#[test]
fn unknown_keys_are_rejected() {
    let err = toml::from_str::<SimulatorConfig>("seed = 1\nsede = 2\n").expect_err("typo");
    assert!(err.to_string().contains("sede"), "{err}");
}

#[test]
fn validation_catches_conflicts() {
    let mut cfg = parse(
        r#"
            [[smelters]]
            name = "smelter1"
            listen = "127.0.0.1:15022"
            unit_id = 1
            [[stacks]]
            name = "stack1"
            listen = "127.0.0.1:15022"
            unit_id = 1
            profile = "copper_smelter"
            "#,
    );
    assert!(matches!(
        cfg.validate(),
        Err(SimConfigError::DuplicateUnit { unit_id: 1, .. })
    ));
    cfg.stacks[0].unit_id = 2;
    assert_eq!(cfg.validate(), Ok(()));
    cfg.stacks[0].listen = "0.0.0.0:15022".parse().expect("addr");
    assert!(matches!(
        cfg.validate(),
        Err(SimConfigError::NotLoopback { .. })
    ));
    cfg.allow_non_loopback = true;
    assert_eq!(cfg.validate(), Ok(()));
    cfg.faults.push(FaultSim {
        device: "nope".into(),
        latency: None,
        latency_jitter: None,
        silent: true,
        silent_addresses: None,
        exception: None,
        exception_addresses: None,
        drop_every: 0,
        drop_once: false,
        corrupt_every: 0,
        corruption: Corruption::TransactionId,
    });
    assert_eq!(
        cfg.validate(),
        Err(SimConfigError::UnknownFaultDevice("nope".into()))
    );
}

#[test]
fn pot_unit_ids_must_fit() {
    let cfg = parse(
        r#"
            [[potlines]]
            name = "p"
            listen = "127.0.0.1:1"
            cells = 200
            first_pot_unit_id = 100
            "#,
    );
    assert!(matches!(
        cfg.validate(),
        Err(SimConfigError::UnitId { unit_id: 248, .. })
    ));
}
