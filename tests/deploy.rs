//! The deployment files outside the code: the systemd unit passes `systemd-analyze verify` (where
//! that tool exists) and asks for what the agent provides, the example gateway configuration
//! passes `smeltwatch check`, and every file the Debian package names exists.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn unit_text() -> String {
    std::fs::read_to_string(repo("deploy/systemd/smeltwatch.service")).expect("read the unit")
}

/// `key=value` settings of the unit, in order (comments and section headers left out).
fn settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed here");
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the binary under test.
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = dir.path().join("smeltwatch.service");
    std::fs::write(
        &unit,
        unit_text().replace("/usr/bin/smeltwatch", env!("CARGO_BIN_EXE_smeltwatch")),
    )
    .expect("write the unit copy");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Unknown keys and unparsable values are only warnings (exit 0): there must be none.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warns:\n{stderr}"
    );
}

#[test]
fn the_unit_runs_the_agent_as_a_watched_notify_service_with_serial_access_only() {
    let s = settings(&unit_text());
    let get = |key: &str| -> Vec<&str> {
        s.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, value) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        (
            "ExecStart",
            "/usr/bin/smeltwatch run -c /etc/smeltwatch/smeltwatch.toml --log-format json",
        ),
        ("User", "smeltwatch"),
        ("SupplementaryGroups", "dialout"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "smeltwatch"),
        ("ConfigurationDirectory", "smeltwatch"),
        ("NoNewPrivileges", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("DevicePolicy", "closed"),
        ("CapabilityBoundingSet", ""),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(get(key), vec![value], "{key}");
    }
    assert_eq!(
        get("DeviceAllow"),
        vec!["char-ttyS rw", "char-ttyUSB rw", "char-ttyACM rw"]
    );
    assert!(
        get("DynamicUser").is_empty(),
        "DynamicUser cannot keep dialout"
    );
}

#[test]
fn the_example_gateway_configuration_passes_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
        .args(["check", "-c"])
        .arg(repo("deploy/smeltwatch.toml"))
        .output()
        .expect("run smeltwatch check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = stdout.lines().next().unwrap_or("");
    assert!(
        first.ends_with(
            r#"ok: site "al-yunnan-03", 4 sources, 246 devices, 2940 points, 2 uplinks"#
        ),
        "{first}"
    );
    // The ACL in deploy/mosquitto names the same site (the agent logs in as agent-<site>).
    let acl = std::fs::read_to_string(repo("deploy/mosquitto/plant.acl")).expect("read ACL");
    assert!(acl.contains("user agent-al-yunnan-03\ntopic write smeltwatch/al-yunnan-03/#"));
}

#[test]
fn every_file_the_debian_package_names_exists() {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo("Cargo.toml")).expect("read Cargo.toml"))
            .expect("parse Cargo.toml");
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().expect("assets");
    let mut destinations = Vec::new();
    for asset in assets {
        let asset = asset.as_array().expect("asset triple");
        let source = asset[0].as_str().expect("asset source");
        let dest = asset[1].as_str().expect("asset destination");
        if source.starts_with("target/") {
            continue; // built by cargo
        }
        let sources: Vec<PathBuf> = match source.split_once('*') {
            None => vec![repo(source)],
            Some((dir, suffix)) => std::fs::read_dir(repo(dir))
                .expect("asset directory")
                .map(|e| e.expect("dir entry").path())
                .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
                .collect(),
        };
        assert!(!sources.is_empty(), "asset {source} matches no file");
        for s in &sources {
            assert!(s.is_file(), "asset {} is missing", s.display());
            let name = s.file_name().expect("file name").to_string_lossy();
            destinations.push(if dest.ends_with('/') {
                format!("/{dest}{name}")
            } else {
                format!("/{dest}")
            });
        }
    }
    for conf in deb["conf-files"].as_array().expect("conf-files") {
        let conf = conf.as_str().expect("conf-file path");
        assert!(
            destinations.iter().any(|d| d == conf),
            "conf-file {conf} is not installed by any asset"
        );
    }
    let scripts = repo(
        deb["maintainer-scripts"]
            .as_str()
            .expect("maintainer-scripts"),
    );
    use std::os::unix::fs::PermissionsExt;
    for script in ["postinst", "postrm"] {
        let mode = std::fs::metadata(scripts.join(script))
            .expect("maintainer script")
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{script} is not executable");
    }
    let units = deb["systemd-units"]["unit-scripts"]
        .as_str()
        .expect("unit-scripts");
    assert!(repo(units).join("smeltwatch.service").is_file());
}

/// The regulator's feed carries the completeness reports (`metrics/completeness`, on the
/// `metrics` stream) and the energy figures, whichever way it leaves the plant: the agent's own
/// `province` uplink or the plant broker's bridge.
#[test]
fn the_province_feed_carries_the_completeness_reports() {
    let text = std::fs::read_to_string(repo("deploy/smeltwatch.toml")).unwrap();
    let cfg: toml::Table = toml::from_str(&text).unwrap();
    let province = cfg["uplinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"].as_str() == Some("province"))
        .expect("a province uplink");
    let streams: Vec<&str> = province["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    for stream in ["emissions", "events", "metrics"] {
        assert!(streams.contains(&stream), "{stream} in {streams:?}");
    }
    let bridge = std::fs::read_to_string(repo("deploy/mosquitto/bridge-province.conf")).unwrap();
    for topic in ["emissions", "events", "metrics"] {
        assert!(
            bridge.contains(&format!("topic smeltwatch/al-yunnan-03/{topic}/# out 1")),
            "the bridge forwards {topic}"
        );
    }
    // A platform broker that denies a topic still acknowledges an MQTT 3.1.1 PUBLISH: its ACL
    // must let the site write every topic the feed carries.
    let acl = std::fs::read_to_string(repo("deploy/mosquitto/province.acl")).unwrap();
    for topic in ["emissions", "events", "metrics"] {
        assert!(acl.contains(&format!("pattern write smeltwatch/%u/{topic}/#")));
        assert!(acl.contains(&format!("topic read smeltwatch/+/{topic}/#")));
    }
}
