//! Configuration loading: golden error cases and the meaning of valid files.
//!
//! Golden cases live in `tests/testdata/configs/<case>/`: `smeltwatch.toml` and, for a file that
//! must be rejected, `expected.err` with the exact error text. A case without `expected.err` must
//! load. Run with `SMELTWATCH_BLESS=1` to (re)write the `expected.err` files, then review them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use smeltwatch::config::{
    self, Area, ByteOrder, Config, ConfigError, DataType, Location, Stream, Transport, UplinkKind,
};

const CASES: &str = "tests/testdata/configs";

fn case_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(CASES)
        .expect("golden cases directory exists")
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.join("smeltwatch.toml").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn load_case(name: &str) -> Config {
    let path = Path::new(CASES).join(name).join("smeltwatch.toml");
    config::load(&path).unwrap_or_else(|err| panic!("{name} should load:\n{err}"))
}

fn parse_err(src: &str) -> ConfigError {
    config::parse(src, Path::new("inline/smeltwatch.toml")).expect_err("config must be rejected")
}

fn parse_ok(src: &str) -> Config {
    config::parse(src, Path::new("inline/smeltwatch.toml"))
        .unwrap_or_else(|err| panic!("config should load:\n{err}"))
}

/// The frame of an inline config whose subject is what follows it: site `t` and one TCP source
/// `gw` at `tcp`, then `rest`. Like the configs written out in full, the text opens with a blank
/// line, so the lines that errors name are counted alike.
fn gw_source(tcp: &str, rest: &str) -> String {
    format!("\nsite = \"t\"\n[[sources]]\nname = \"gw\"\ntcp = \"{tcp}\"\n{rest}")
}

/// [`gw_source`] with its first `[[sources.devices]]` table opened for `device` (its keys).
fn gw_device(tcp: &str, device: &str) -> String {
    gw_source(tcp, &format!("[[sources.devices]]\n{device}"))
}

/// Assert that `err` has `count` lines and that each text of `wants` stands in one of them
/// located in `inline/smeltwatch.toml` (one line may hold more than one of them).
fn assert_located_lines(err: &ConfigError, count: usize, wants: &[&str]) {
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    for want in wants {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("inline/smeltwatch.toml:") && l.contains(want)),
            "missing {want:?} in:\n{text}"
        );
    }
    assert_eq!(lines.len(), count, "{text}");
}

#[test]
fn golden_error_cases_match_exactly() {
    let bless = std::env::var_os("SMELTWATCH_BLESS").is_some();
    let mut checked = 0;
    let mut failures = Vec::new();
    for dir in case_dirs() {
        let expected_path = dir.join("expected.err");
        let result = config::load(&dir.join("smeltwatch.toml"));
        if !expected_path.exists() && !bless {
            if let Err(err) = result {
                failures.push(format!("{}: should load, got:\n{err}", dir.display()));
            }
            continue;
        }
        let actual = match result {
            Ok(_) if dir.ends_with("ok_potline") => continue,
            Ok(_) => format!("{}: unexpectedly loaded", dir.display()),
            Err(err) => format!("{err}\n"),
        };
        if bless {
            std::fs::write(&expected_path, &actual).expect("write expected.err");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).expect("read expected.err");
        checked += 1;
        if actual != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                dir.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        bless || checked >= 10,
        "only {checked} golden error cases found"
    );
}

#[test]
fn every_problem_is_one_located_line() {
    for dir in case_dirs() {
        let Err(err) = config::load(&dir.join("smeltwatch.toml")) else {
            continue;
        };
        assert!(!err.problems().is_empty(), "{}", dir.display());
        assert_eq!(err.problems().len(), err.to_string().lines().count());
        for problem in err.problems() {
            let line = problem.to_string();
            assert!(
                line.starts_with(&format!("{}:", problem.file.display())),
                "{line}"
            );
            match &problem.location {
                Location::Toml { line, column } => assert!(*line >= 1 && *column >= 1),
                Location::Csv { line, .. } => assert!(*line >= 1),
            }
        }
    }
}

#[test]
fn unknown_key_names_the_key_path_line_and_column() {
    let err = parse_err("site = \"t\"\n[[sources]]\nname = \"gw\"\ntcp = \"h:1\"\ncolour = 1\n");
    assert_eq!(
        err.to_string(),
        "inline/smeltwatch.toml:5:1: sources[0].colour: unknown field `colour`, expected one of \
         `name`, `protocol`, `tcp`, `rtu_over_tcp`, `serial`, `timeout`, `inter_request_gap`, \
         `reconnect_min`, `reconnect_max`, `breaker_failures`, `breaker_probe_interval`, \
         `default_poll`, `poll_offset`, `max_registers_per_read`, `max_bits_per_read`, \
         `max_gap_registers`, `devices`, `meters`"
    );
}

#[test]
fn all_semantic_problems_are_reported_together() {
    let err = parse_err(&gw_source(
        "h:502",
        r#"max_registers_per_read = 0
[[sources.devices]]
name = "a"
unit_id = 0
[[sources.devices]]
name = "a"
unit_id = 300
"#,
    ));
    let text = err.to_string();
    assert_eq!(err.problems().len(), 4, "{text}");
    assert!(text.contains("sources[0].max_registers_per_read"), "{text}");
    assert!(
        text.contains("sources[0].devices[0].unit_id: unit id 0 is the broadcast"),
        "{text}"
    );
    assert!(
        text.contains("sources[0].devices[1].unit_id: unit id 300"),
        "{text}"
    );
    assert!(
        text.contains("sources[0].devices[1].name: duplicate device name `a`"),
        "{text}"
    );
}

#[test]
fn potline_fixture_expands_the_template_and_imports_the_csv() {
    let cfg = load_case("ok_potline");
    assert_eq!(cfg.site, "al-line1");
    assert_eq!(cfg.sources.len(), 1);
    let source = &cfg.sources[0];
    assert_eq!(&*source.name, "line1_gw");
    assert_eq!(
        source.transport,
        Transport::Tcp {
            addr: config::HostPort {
                host: "127.0.0.1".into(),
                port: 15020
            }
        }
    );
    let names: Vec<&str> = source.devices.iter().map(|d| &*d.name).collect();
    assert_eq!(
        names,
        ["rectifier", "pot_001", "pot_002", "pot_003", "pot_004"]
    );
    let units: Vec<u8> = source.devices.iter().map(|d| d.unit_id).collect();
    assert_eq!(units, [1, 10, 11, 12, 13]);

    // Rectifier: map points first, in file order, then the inline point.
    let rectifier = &source.devices[0];
    let point_names: Vec<&str> = rectifier.points.iter().map(|p| &*p.name).collect();
    assert_eq!(
        point_names,
        [
            "line_current_ka",
            "line_voltage_v",
            "dc_energy_kwh",
            "transformer_temp_c"
        ]
    );
    assert_eq!(rectifier.points[0].byte_order, ByteOrder::Cdab);
    assert_eq!(rectifier.points[0].range, Some((0.0, 600.0)));
    assert_eq!(rectifier.points[2].data_type, DataType::U64);
    assert_eq!(rectifier.points[2].poll_interval, Duration::from_secs(60));
    assert_eq!(rectifier.points[3].scale, 0.1);
    assert_eq!(
        rectifier.labels,
        [
            ("kind".to_owned(), "rectifier".to_owned()),
            ("line".to_owned(), "1".to_owned())
        ]
    );

    // Pots: every instance carries the CSV map.
    let pot = &source.devices[3];
    let csv_names: Vec<&str> = pot.points.iter().map(|p| &*p.name).collect();
    assert_eq!(
        csv_names,
        [
            "cell_voltage_v",
            "anode_current_ka",
            "bath_temp_c",
            "anode_effect",
            "feeding",
            "status_word",
            "feed_setpoint_s",
            "tag"
        ]
    );
    let p = |name: &str| {
        pot.points
            .iter()
            .find(|p| &*p.name == name)
            .expect("point exists")
    };
    assert_eq!(p("cell_voltage_v").data_type, DataType::F32);
    assert_eq!(p("cell_voltage_v").range, Some((0.0, 10.0)));
    assert_eq!(&*p("cell_voltage_v").unit, "V");
    assert_eq!(p("anode_current_ka").address, 2);
    // An empty poll cell falls back to the source's default_poll (2s here).
    assert_eq!(p("anode_current_ka").poll_interval, Duration::from_secs(2));
    assert_eq!(p("bath_temp_c").poll_interval, Duration::from_secs(10));
    assert_eq!(p("bath_temp_c").scale, 0.1);
    assert_eq!(p("anode_effect").data_type, DataType::Bool { bit: Some(0) });
    assert_eq!(p("feeding").data_type, DataType::Bool { bit: Some(1) });
    assert_eq!(p("feed_setpoint_s").area, Area::Holding);
    assert!(p("feed_setpoint_s").writable);
    assert!(!p("cell_voltage_v").writable);
    assert_eq!(p("tag").data_type, DataType::Ascii { registers: 4 });
    assert_eq!(p("tag").width(), 4);
}

#[test]
fn defaults_are_applied() {
    let cfg = parse_ok(&gw_device(
        "plc:502",
        r#"name = "d"
unit_id = 1
points.v = { area = "holding", address = 0, type = "f32" }
[[uplinks]]
name = "plant"
type = "mqtt"
broker = "mqtt://broker"
"#,
    ));
    assert_eq!(cfg.state_dir, Path::new("inline/state"));
    assert!(cfg.simulator.is_none());
    let source = &cfg.sources[0];
    assert_eq!(source.timeout, Duration::from_secs(1));
    assert_eq!(source.inter_request_gap, Duration::ZERO);
    assert_eq!(source.reconnect_min, Duration::from_millis(200));
    assert_eq!(source.reconnect_max, Duration::from_secs(30));
    assert_eq!(source.breaker_failures, 3);
    assert_eq!(source.breaker_probe_interval, Duration::from_secs(30));
    let device = &source.devices[0];
    assert_eq!(device.max_registers_per_read, 125);
    assert_eq!(device.max_bits_per_read, 2000);
    assert_eq!(device.max_gap_registers, 8);
    assert!(!device.single_point_reads);
    assert!(device.labels.is_empty());
    let point = &device.points[0];
    assert_eq!(point.byte_order, ByteOrder::Abcd);
    assert_eq!((point.scale, point.offset), (1.0, 0.0));
    assert_eq!(&*point.unit, "");
    assert_eq!(point.poll_interval, Duration::from_secs(1));
    assert_eq!(point.range, None);
    assert!(!point.writable);

    let uplink = &cfg.uplinks[0];
    assert_eq!(
        uplink.streams,
        [
            Stream::Live,
            Stream::Metrics,
            Stream::Events,
            Stream::Emissions
        ]
    );
    assert_eq!(uplink.spool, config::SpoolConfig::default());
    let UplinkKind::Mqtt(mqtt) = &uplink.kind else {
        panic!("an MQTT uplink")
    };
    assert_eq!(
        (mqtt.broker.host.as_str(), mqtt.broker.port),
        ("broker", 1883)
    );
    assert!(!mqtt.tls);
    assert_eq!(mqtt.client_id, "smeltwatch-t-plant");
    assert_eq!(mqtt.keep_alive, Duration::from_secs(15));
    assert_eq!(mqtt.max_packet_size, 1024 * 1024);
    assert_eq!(mqtt.max_inflight, 256);
    assert_eq!(mqtt.reconnect_min, Duration::from_millis(500));
    assert_eq!(mqtt.reconnect_max, Duration::from_secs(30));
    assert_eq!(mqtt.topics, config::TopicTemplates::default());
    assert!(mqtt.username.is_none() && mqtt.password.is_none());
}

#[test]
fn sources_are_spread_over_their_shortest_poll_interval_in_slots_of_32_devices_unless_an_offset_is_given()
 {
    let source = |name: &str, extra: &str| {
        format!(
            "[[sources]]\nname = \"{name}\"\ntcp = \"plc:502\"\n{extra}\n[[sources.devices]]\n\
             name = \"{name}_d\"\nunit_id = 1\n\
             points.fast = {{ area = \"holding\", address = 0, type = \"u16\", poll = \"2s\" }}\n\
             points.slow = {{ area = \"holding\", address = 1, type = \"u16\", poll = \"1m\" }}\n"
        )
    };
    let offsets =
        |cfg: &Config| -> Vec<Duration> { cfg.sources.iter().map(|s| s.poll_offset).collect() };

    // Up to 32 devices poll together: a plant of four one-device sources is one slot, at 0.
    let few = parse_ok(&format!(
        "site = \"t\"\n{}{}{}{}",
        source("a", ""),
        source("b", ""),
        source("c", ""),
        source("d", "")
    ));
    assert_eq!(offsets(&few), [Duration::ZERO; 4]);

    // 100 one-device sources: four slots of 25 at 0, 1/4, 2/4 and 3/4 of the shortest interval
    // (2 s), in configuration order.
    let many = parse_ok(&format!(
        "site = \"t\"\n{}",
        (0..100)
            .map(|i| source(&format!("s{i}"), ""))
            .collect::<String>()
    ));
    let expected: Vec<Duration> = (0..100u64)
        .map(|i| Duration::from_millis(i / 25 * 500))
        .collect();
    assert_eq!(offsets(&many), expected);

    // An explicit offset wins; the others keep their place in the spread.
    let mixed = parse_ok(&format!(
        "site = \"t\"\n{}{}",
        source("a", "poll_offset = \"1200ms\""),
        source("b", "")
    ));
    assert_eq!(offsets(&mixed), [1200, 0].map(Duration::from_millis));

    // `0s` everywhere puts every source on the same instant.
    let aligned = parse_ok(&format!(
        "site = \"t\"\n{}{}",
        source("a", "poll_offset = \"0s\""),
        source("b", "poll_offset = \"0s\"")
    ));
    assert_eq!(offsets(&aligned), [Duration::ZERO; 2]);

    // An offset of a whole interval or more is not an offset.
    let err = parse_err(&format!(
        "site = \"t\"\n{}",
        source("a", "poll_offset = \"2s\"")
    ));
    assert_eq!(
        err.to_string(),
        "inline/smeltwatch.toml:5:15: sources[0].poll_offset: poll_offset (2s) must be shorter than the \
         source's shortest poll interval (2s)"
    );
}

#[test]
fn serial_sources_default_to_even_parity_and_an_rtu_gap() {
    let cfg = parse_ok(
        r#"
site = "t"
[[sources]]
name = "bus"
[sources.serial]
path = "/dev/ttyS1"
baud = 9600
[[sources]]
name = "server"
rtu_over_tcp = "10.0.0.9:4001"
"#,
    );
    let Transport::Rtu(serial) = &cfg.sources[0].transport else {
        panic!("expected rtu, got {:?}", cfg.sources[0].transport);
    };
    assert_eq!(serial.parity, config::Parity::Even);
    assert_eq!((serial.data_bits, serial.stop_bits), (8, 1));
    // 3.5 characters of 11 bits at 9600 baud.
    assert_eq!(cfg.sources[0].inter_request_gap.as_micros(), 4010);
    assert_eq!(cfg.sources[1].inter_request_gap, Duration::from_millis(5));
}

#[test]
fn a_24_pot_template_expands_into_24_devices() {
    let cfg = parse_ok(&gw_device(
        "127.0.0.1:15020",
        r#"name = "pot_{n:03}"
count = 24
unit_id = 10
labels = { kind = "pcu" }
points.cell_voltage_v = { area = "input", address = 0, type = "f32", unit = "V" }
"#,
    ));
    let devices = &cfg.sources[0].devices;
    assert_eq!(devices.len(), 24);
    for (k, device) in devices.iter().enumerate() {
        assert_eq!(&*device.name, format!("pot_{:03}", k + 1));
        assert_eq!(usize::from(device.unit_id), 10 + k);
        assert_eq!(device.points[0].address, 0);
        assert_eq!(device.labels, [("kind".to_owned(), "pcu".to_owned())]);
    }
    assert_eq!(&*devices[23].name, "pot_024");
    assert_eq!(devices[23].unit_id, 33);
}

#[test]
fn unit_id_step_and_first_index_are_honoured() {
    let cfg = parse_ok(&gw_device(
        "127.0.0.1:15020",
        r#"name = "pot{n}"
count = 3
first_index = 101
unit_id = 2
unit_id_step = 2
"#,
    ));
    let got: Vec<(&str, u8)> = cfg.sources[0]
        .devices
        .iter()
        .map(|d| (&*d.name, d.unit_id))
        .collect();
    assert_eq!(got, [("pot101", 2), ("pot102", 4), ("pot103", 6)]);
}

#[test]
fn address_stride_shares_the_unit_id_and_shifts_addresses() {
    let cfg = parse_ok(&gw_device(
        "127.0.0.1:15020",
        r#"name = "pot_{n}"
count = 3
unit_id = 5
address_stride = 20
points.cell_voltage_v = { area = "input", address = 100, type = "f32" }
points.status = { area = "input", address = 102, type = "u16" }
points.running = { area = "coil", address = 7, type = "bool" }
"#,
    ));
    let devices = &cfg.sources[0].devices;
    assert_eq!(devices.len(), 3);
    for (k, device) in devices.iter().enumerate() {
        let k = u16::try_from(k).expect("small");
        assert_eq!(device.unit_id, 5);
        assert_eq!(device.points[0].address, 100 + 20 * k);
        assert_eq!(device.points[1].address, 102 + 20 * k);
        assert_eq!(device.points[2].address, 7 + 20 * k);
    }
}

#[test]
fn a_template_error_points_at_the_template_and_names_the_instance() {
    let err = parse_err(&gw_device(
        "127.0.0.1:15020",
        r#"name = "rectifier"
unit_id = 1
[[sources.devices]]
name = "pot_{n:03}"
count = 24
unit_id = 240
"#,
    ));
    assert_eq!(
        err.to_string(),
        "inline/smeltwatch.toml:12:11: sources[0].devices[1].unit_id: unit id 248 of instance \
         `pot_009` is out of range, expected 1..=247 (or 255 on tcp) (and 14 more instances)"
    );
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("maps")).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("secrets")).expect("mkdir");
    std::fs::write(
        dir.path().join("maps/meter.csv"),
        "name,area,address,type\nenergy_kwh,holding,0,u32\n",
    )
    .expect("write csv");
    std::fs::write(dir.path().join("secrets/mqtt.pass"), "from-file\n").expect("write pass");
    let path = dir.path().join("smeltwatch.toml");
    std::fs::write(
        &path,
        r#"
site = "t"
state_dir = "var/state"
[register_maps.meter]
csv = "maps/meter.csv"
[[sources]]
name = "gw"
tcp = "127.0.0.1:502"
[[sources.devices]]
name = "meter"
unit_id = 1
map = "meter"
[[uplinks]]
name = "plant"
type = "mqtt"
broker = "mqtts://broker:8884"
username = "agent"
password_file = "secrets/mqtt.pass"
"#,
    )
    .expect("write config");
    let cfg = config::load(&path).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(cfg.path, path);
    assert_eq!(cfg.state_dir, dir.path().join("var/state"));
    assert_eq!(&*cfg.sources[0].devices[0].points[0].name, "energy_kwh");
    let UplinkKind::Mqtt(mqtt) = &cfg.uplinks[0].kind else {
        panic!("an MQTT uplink")
    };
    assert!(mqtt.tls);
    assert_eq!(mqtt.broker.port, 8884);
    // The trailing newline of the file is not part of the password.
    assert_eq!(
        mqtt.password.as_ref().map(|s| s.0.as_str()),
        Some("from-file")
    );
}

#[test]
fn absolute_state_dir_is_kept() {
    let cfg = parse_ok("site = \"t\"\nstate_dir = \"/var/lib/smeltwatch\"\n");
    assert_eq!(cfg.state_dir, Path::new("/var/lib/smeltwatch"));
}

#[test]
fn password_from_the_environment_is_read() {
    // Cargo sets this for every test run; setting a variable here would race other tests.
    let variable = "CARGO_PKG_NAME";
    let cfg = parse_ok(&format!(
        "site = \"t\"\n[[uplinks]]\nname = \"p\"\ntype = \"mqtt\"\nbroker = \"mqtt://b\"\n\
         username = \"u\"\npassword_env = \"{variable}\"\n"
    ));
    let UplinkKind::Mqtt(mqtt) = &cfg.uplinks[0].kind else {
        panic!("an MQTT uplink")
    };
    assert_eq!(
        mqtt.password.as_ref().map(|s| s.0.as_str()),
        Some("smeltwatch")
    );
}

#[test]
fn the_password_never_appears_in_debug_output_or_errors() {
    let cfg = load_case("ok_potline");
    let debug = format!("{cfg:?}");
    assert!(!debug.contains("correct horse"), "{debug}");
    assert!(debug.contains("Secret(***)"), "{debug}");
    let UplinkKind::Mqtt(mqtt) = &cfg.uplinks[0].kind else {
        panic!("an MQTT uplink")
    };
    assert_eq!(
        mqtt.password.as_ref().map(|s| s.0.as_str()),
        Some("correct horse battery staple")
    );

    let dir = Path::new(CASES).join("uplink_problems");
    let err = config::load(&dir.join("smeltwatch.toml")).expect_err("rejected");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[test]
fn uplink_settings_are_read() {
    let cfg = load_case("ok_potline");
    let uplink = &cfg.uplinks[0];
    assert_eq!(uplink.name, "plant");
    assert_eq!(
        uplink.streams,
        [Stream::Live, Stream::Metrics, Stream::Events]
    );
    assert_eq!(uplink.spool.max_bytes, 64 * 1024 * 1024);
    assert!(!uplink.spool.synchronous_full);
    let UplinkKind::Mqtt(mqtt) = &uplink.kind else {
        panic!("an MQTT uplink")
    };
    assert_eq!(mqtt.username.as_deref(), Some("agent"));
    assert_eq!(cfg.state_dir, Path::new(CASES).join("ok_potline/var/state"));
}

#[test]
fn a_missing_file_is_a_read_error() {
    let err = config::load(Path::new(
        "tests/testdata/configs/no_such_case/smeltwatch.toml",
    ))
    .expect_err("missing file");
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("tests/testdata/configs/no_such_case/smeltwatch.toml: cannot read"),
        "{err}"
    );
}

#[test]
fn bits_of_one_status_word_do_not_overlap_but_the_same_bit_twice_does() {
    let base = gw_device(
        "127.0.0.1:502",
        r#"name = "plc"
unit_id = 1
points.word = { area = "holding", address = 3, type = "u16" }
points.a = { area = "holding", address = 3, type = "bool", bit = 0 }
points.b = { area = "holding", address = 3, type = "bool", bit = 1 }
"#,
    );
    parse_ok(&base);
    let err = parse_err(&format!(
        "{base}points.c = {{ area = \"holding\", address = 3, type = \"bool\", bit = 1 }}\n"
    ));
    assert_eq!(
        err.to_string(),
        "inline/smeltwatch.toml:12:42: sources[0].devices[0].points.c.address: point `c` \
         (holding 3 bit 1) overlaps point `b` (holding 3 bit 1)"
    );
}

const SPARKPLUG_SOURCES: &str = "\nsite = \"t\"\n[[sources]]\nname = \"gw\"\ntcp = \"127.0.0.1:502\"\n\
                                 [[sources.devices]]\nname = \"pot_001\"\nunit_id = 1\n\
                                 points.setpoint_v = { area = \"holding\", address = 0, type = \"f32\", \
                                 range = [3.8, 4.6], writable = true }\n";

#[test]
fn sparkplug_uplink_settings_are_read() {
    let cfg = parse_ok(&format!(
        r#"{SPARKPLUG_SOURCES}
[[uplinks]]
name = "scada"
type = "sparkplug"
broker = "mqtt://broker.plant:1884"
username = "edge"
password = "pw"
group_id = "smelter"
edge_node_id = "line1"
primary_host_id = "ignition"
keep_alive = "15s"
[uplinks.device_writes]
enabled = true
[uplinks.spool]
max_bytes = 1048576
"#
    ));
    let uplink = &cfg.uplinks[0];
    let UplinkKind::Sparkplug(spb) = &uplink.kind else {
        panic!("a Sparkplug uplink: {:?}", uplink.kind)
    };
    assert_eq!(spb.group_id, "smelter");
    assert_eq!(spb.edge_node_id, "line1");
    assert_eq!(spb.primary_host_id.as_deref(), Some("ignition"));
    assert!(spb.device_writes);
    assert_eq!(spb.mqtt.broker.to_string(), "broker.plant:1884");
    assert_eq!(spb.mqtt.username.as_deref(), Some("edge"));
    assert_eq!(spb.mqtt.keep_alive, Duration::from_secs(15));
    assert_eq!(spb.mqtt.client_id, "smeltwatch-t-scada");
    assert_eq!(
        uplink.streams,
        [Stream::Live],
        "Sparkplug carries device metrics only"
    );
    assert_eq!(uplink.spool.max_bytes, 1_048_576);
    assert!(cfg.sources[0].devices[0].points[0].writable);
}

#[test]
fn a_sparkplug_uplink_takes_the_metrics_stream_when_asked() {
    let cfg = parse_ok(&format!(
        "{SPARKPLUG_SOURCES}\n[[uplinks]]\nname = \"scada\"\ntype = \"sparkplug\"\n\
         broker = \"mqtt://b\"\ngroup_id = \"g\"\nedge_node_id = \"e\"\n\
         streams = [\"live\", \"metrics\"]\n"
    ));
    assert_eq!(cfg.uplinks[0].streams, [Stream::Live, Stream::Metrics]);
}

#[test]
fn sparkplug_device_writes_are_off_by_default() {
    let cfg = parse_ok(&format!(
        "{SPARKPLUG_SOURCES}\n[[uplinks]]\nname = \"scada\"\ntype = \"sparkplug\"\n\
         broker = \"mqtt://b\"\ngroup_id = \"g\"\nedge_node_id = \"e\"\n"
    ));
    let UplinkKind::Sparkplug(spb) = &cfg.uplinks[0].kind else {
        panic!("a Sparkplug uplink")
    };
    assert!(!spb.device_writes);
    assert_eq!(spb.primary_host_id, None);
}

#[test]
fn sparkplug_uplink_problems_name_the_key_and_what_was_expected() {
    let err = parse_err(&format!(
        r#"{SPARKPLUG_SOURCES}
[[uplinks]]
name = "scada"
type = "sparkplug"
broker = "mqtt://b"
edge_node_id = "line/1"
primary_host_id = ""
streams = ["live", "events"]
encoding = "protobuf"
[uplinks.device_writes]
enabled = true
"#
    ));
    assert_located_lines(
        &err,
        6,
        &[
            "uplinks[0].encoding: `encoding` does not apply to an uplink of type = \"sparkplug\"",
            "uplinks[0].streams[1]: a Sparkplug uplink carries the `live` stream (device metrics) and the `metrics` stream (node metrics), not `events`",
            "uplinks[0].group_id: missing `group_id`, expected a Sparkplug id (one MQTT topic level)",
            "uplinks[0].edge_node_id: invalid edge_node_id `line/1`: a Sparkplug id must be non-empty and free of `+`, `/` and `#` (it is one topic level)",
            "uplinks[0].primary_host_id: invalid primary_host_id ``",
            "uplinks[0].device_writes.enabled: device writes need an authenticated uplink: set `username` (with a password) or a client certificate (`[uplinks.tls] cert_file`)",
        ],
    );
}

#[test]
fn sparkplug_keys_on_an_mqtt_uplink_are_rejected() {
    let err = parse_err(&format!(
        "{SPARKPLUG_SOURCES}\n[[uplinks]]\nname = \"plant\"\ntype = \"mqtt\"\nbroker = \"mqtt://b\"\n\
         group_id = \"g\"\n[uplinks.device_writes]\nenabled = false\n"
    ));
    let text = err.to_string();
    assert!(
        text.contains(
            "uplinks[0].group_id: `group_id` does not apply to an uplink of type = \"mqtt\""
        ),
        "{text}"
    );
    assert!(
        text.contains("uplinks[0].device_writes: `device_writes` does not apply to an uplink of type = \"mqtt\""),
        "{text}"
    );
}

#[test]
fn sparkplug_keys_on_an_hj212_uplink_are_rejected() {
    let err = parse_err(
        "site = \"t\"\n[[uplinks]]\nname = \"province\"\ntype = \"hj212\"\n\
         platform = \"127.0.0.1:9000\"\nedge_node_id = \"e\"\n\
         [uplinks.hj212]\nmn = \"MN0001\"\npw = \"123456\"\n",
    );
    assert!(
        err.to_string().contains(
            "uplinks[0].edge_node_id: `edge_node_id` does not apply to an uplink of type = \"hj212\""
        ),
        "{err}"
    );
}

#[test]
fn a_writable_number_needs_a_range_and_a_coil_does_not() {
    let base = "site = \"t\"\n[[sources]]\nname = \"gw\"\ntcp = \"127.0.0.1:502\"\n\
                [[sources.devices]]\nname = \"plc\"\nunit_id = 1\n";
    let err = parse_err(&format!(
        "{base}points.sp = {{ area = \"holding\", address = 0, type = \"i32\", writable = true }}\n"
    ));
    assert!(
        err.to_string().contains(
            "sources[0].devices[0].points.sp.writable: writable = true: a number needs a `range` (range_min and range_max in a CSV map): without one any value the register holds could be written"
        ),
        "{err}"
    );
    parse_ok(&format!(
        "{base}points.sp = {{ area = \"holding\", address = 0, type = \"i32\", range = [0.0, 100.0], writable = true }}\n\
         points.run = {{ area = \"coil\", address = 0, type = \"bool\", writable = true }}\n"
    ));
}

#[test]
fn only_holding_registers_and_coils_can_be_writable() {
    let base = "site = \"t\"\n[[sources]]\nname = \"gw\"\ntcp = \"127.0.0.1:502\"\n\
                [[sources.devices]]\nname = \"plc\"\nunit_id = 1\n";
    parse_ok(&format!(
        "{base}points.sp = {{ area = \"holding\", address = 0, type = \"i32\", range = [0.0, 10.0], writable = true }}\n\
         points.run = {{ area = \"coil\", address = 0, type = \"bool\", writable = true }}\n"
    ));
    for (point, why) in [
        (
            "{ area = \"input\", address = 0, type = \"u16\", writable = true }",
            "writable = true: input is a read-only area, expected a `holding` register or a `coil`",
        ),
        (
            "{ area = \"holding\", address = 5, type = \"bool\", bit = 2, writable = true }",
            "writable = true: a bit of a holding register cannot be written on its own (smeltwatch does no read-modify-write)",
        ),
        (
            "{ area = \"holding\", address = 9, type = \"ascii\", registers = 4, writable = true }",
            "writable = true: text (`ascii`) points cannot be written",
        ),
    ] {
        let err = parse_err(&format!("{base}points.x = {point}\n"));
        assert!(
            err.to_string()
                .contains(&format!("sources[0].devices[0].points.x.writable: {why}")),
            "{err}"
        );
    }
}

const HJ212_SOURCES: &str = "site = \"t\"\n[[sources]]\nname = \"gw\"\ntcp = \"127.0.0.1:502\"\n\
                             [[sources.devices]]\nname = \"stack\"\nunit_id = 1\n\
                             points.so2_mg_m3 = { area = \"input\", address = 0, type = \"f32\" }\n";

#[test]
fn hj212_uplink_settings_are_read_with_their_defaults() {
    let cfg = parse_ok(&format!(
        r#"{HJ212_SOURCES}
[[uplinks]]
name = "province"
type = "hj212"
platform = "10.1.2.3:8600"
reconnect_max = "2m"
[uplinks.hj212]
mn = "88888880000001"
pw = "123456"
over_time = "10s"
re_count = 5
[uplinks.hj212.mn_by_stack]
gtc1_stack = "88888880000002"
"#
    ));
    let uplink = &cfg.uplinks[0];
    assert_eq!(uplink.streams, vec![Stream::Emissions]);
    assert_eq!(uplink.spool, config::SpoolConfig::default());
    let UplinkKind::Hj212(h) = &uplink.kind else {
        panic!("an HJ 212 uplink")
    };
    assert_eq!(h.platform.to_string(), "10.1.2.3:8600");
    assert_eq!(h.table.name, "HJ 212-2017");
    assert_eq!(h.station.st, 31);
    assert_eq!(h.station.mn, "88888880000001");
    assert_eq!(h.station.pw, "123456");
    assert!(h.station.ack);
    assert_eq!(h.station.utc_offset_min, 480);
    assert_eq!(
        h.mn_by_stack,
        vec![("gtc1_stack".to_owned(), "88888880000002".to_owned())]
    );
    assert_eq!(h.over_time, Duration::from_secs(10));
    assert_eq!(h.re_count, 5);
    assert_eq!(h.reconnect_min, Duration::from_secs(1));
    assert_eq!(h.reconnect_max, Duration::from_secs(120));
    // No [calc], no [ledger]: the history store keeps its defaults, nothing is signed.
    assert_eq!(cfg.history.path, Path::new("inline/state/history.db"));
    assert_eq!(
        cfg.history.hour_retention,
        Duration::from_secs(400 * 86_400)
    );
    assert!(cfg.ledger.is_none());
}

#[test]
fn hj212_uplink_problems_name_the_key_and_what_was_expected() {
    let err = parse_err(&format!(
        r#"{HJ212_SOURCES}
[[uplinks]]
name = "province"
type = "hj212"
encoding = "protobuf"
[uplinks.hj212]
mn = "this-mn-is-far-too-long-for-hj212-2017"
pw = "12345"
st = 99
table = "missing-table.toml"
utc_offset_hours = 20
"#
    ));
    assert_located_lines(
        &err,
        7,
        &[
            "uplinks[0].encoding: `encoding` does not apply to an uplink of type = \"hj212\"",
            "uplinks[0].platform: missing `platform`, expected the HJ 212 platform as host:port",
            "uplinks[0].hj212.table: cannot read `inline/missing-table.toml`",
            "expected `hj212-2017` (built in) or the path of a code table file",
            "uplinks[0].hj212.st: st = 99 is not a system code of HJ 212-2017, expected one of 21,",
            "uplinks[0].hj212.pw: pw must be 6 printable ASCII characters",
            "uplinks[0].hj212.mn: MN `this-mn-is-far-too-long-for-hj212-2017` must be 1 to 24 printable ASCII characters",
            "uplinks[0].hj212.utc_offset_hours: utc_offset_hours = 20 is out of range, expected -12..=14",
        ],
    );

    let err = parse_err(&format!(
        "{HJ212_SOURCES}\n[[uplinks]]\nname = \"p\"\ntype = \"hj212\"\nplatform = \"h:1\"\n"
    ));
    assert!(
        err.to_string()
            .contains("uplinks[0].hj212: missing [uplinks.hj212], expected at least `mn` and `pw`"),
        "{err}"
    );
    let err = parse_err(&format!(
        "{HJ212_SOURCES}\n[[uplinks]]\nname = \"p\"\ntype = \"mqtt\"\nplatform = \"h:1\"\n"
    ));
    let text = err.to_string();
    assert!(
        text.contains(
            "uplinks[0].platform: `platform` does not apply to an uplink of type = \"mqtt\""
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "uplinks[0].broker: missing `broker`, expected mqtt://host:port or mqtts://host:port"
        ),
        "{text}"
    );
}

#[test]
fn history_and_ledger_sections_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("site.key");
    std::fs::write(&key, "00".repeat(32)).unwrap();
    let cfg = parse_ok(&format!(
        r#"{HJ212_SOURCES}
[history]
file = "/var/lib/smeltwatch/history.db"
minute_retention = "2days"
[ledger]
key_file = "{}"
regulated = ["stack_minute", "stack_hour"]
"#,
        key.display()
    ));
    assert_eq!(
        cfg.history.path,
        Path::new("/var/lib/smeltwatch/history.db")
    );
    assert_eq!(
        cfg.history.minute_retention,
        Duration::from_secs(2 * 86_400)
    );
    assert_eq!(
        cfg.history.day_retention,
        Duration::from_secs(3653 * 86_400)
    );
    let ledger = cfg.ledger.unwrap();
    assert_eq!(ledger.key_file, key);
    assert_eq!(
        ledger.regulated,
        vec![config::Regulated::StackMinute, config::Regulated::StackHour]
    );

    let err = parse_err(&format!(
        r#"{HJ212_SOURCES}
[history]
hour_retention = "30s"
[ledger]
key_file = "no-such.key"
regulated = ["stack_day", "stack_day"]
"#
    ));
    let text = err.to_string();
    for want in [
        "history.hour_retention: hour_retention = 30s is too short, expected at least 1m",
        "ledger.key_file: no key file at `inline/no-such.key`, expected the site's secret key (make one with `smeltwatch keygen --out DIR`)",
        "ledger.regulated[1]: `stack_day` is listed twice",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let err = parse_err(&format!(
        "{HJ212_SOURCES}\n[ledger]\nkey_file = \"k\"\nregulated = [\"stack_week\"]\n"
    ));
    assert!(err.to_string().contains("ledger.regulated"), "{err}");
}

#[test]
fn spool_max_age_is_a_duration_and_zero_is_rejected() {
    let uplink = "[[uplinks]]\nname = \"plant\"\ntype = \"mqtt\"\nbroker = \"mqtt://127.0.0.1:1883\"\n[uplinks.spool]\n";
    let cfg = parse_ok(&format!("{SPARKPLUG_SOURCES}\n{uplink}max_age = \"7d\"\n"));
    assert_eq!(
        cfg.uplinks[0].spool.max_age,
        Some(Duration::from_secs(7 * 24 * 3600))
    );
    let err = parse_err(&format!("{SPARKPLUG_SOURCES}\n{uplink}max_age = \"0s\"\n")).to_string();
    assert!(
        err.contains("uplinks[0].spool.max_age") && err.contains("positive duration"),
        "{err}"
    );
    let err = parse_err(&format!("{SPARKPLUG_SOURCES}\n{uplink}max_age = 7\n")).to_string();
    assert!(err.contains("max_age"), "{err}");
}
