//! The command-line contract: `probe` against a live device, `spool stats` and `spool export`,
//! global options.

mod common;

use common::agent::smeltwatch;
use common::plant::one_meter_toml;
use smeltwatch::codec::body;
use smeltwatch::config::{SpoolConfig, Stream};
use smeltwatch::model::{Quality, Reading, ReadingBatch, Record, Timestamp, Value};
use smeltwatch::simulator::{BankSizes, Device, UnitMap, serve_tcp};
use smeltwatch::spool::{NewRecord, Spool};
use tokio_util::sync::CancellationToken;

#[test]
fn worker_threads_is_a_global_option_of_at_least_one() {
    let (ok, stdout, stderr) =
        smeltwatch(&["check", "-c", "config/demo.toml", "--worker-threads", "1"]);
    assert!(ok, "{stderr}");
    assert!(!stdout.is_empty());
    let (ok, _, stderr) = smeltwatch(&["--worker-threads", "0", "check", "-c", "config/demo.toml"]);
    assert!(!ok);
    assert!(
        stderr.contains("invalid value '0' for '--worker-threads <WORKER_THREADS>'"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_shows_a_cdab_float_in_the_cdab_column() {
    let dev = Device::new(
        "meter",
        BankSizes {
            input: 16,
            holding: 16,
            ..BankSizes::default()
        },
        1,
    );
    // 123.456 f32 with swapped words (CDAB), then 4.05 f32 ABCD.
    dev.set_input(0, &[0xE979, 0x42F6, 0x4081, 0x999A]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_tcp(
        listener,
        UnitMap::from([(3, dev)]),
        shutdown.clone(),
    ));

    let out = tokio::task::spawn_blocking(move || {
        smeltwatch(&[
            "probe",
            "--tcp",
            &addr,
            "--unit",
            "3",
            "--address",
            "0",
            "--count",
            "4",
            "--area",
            "input",
        ])
    })
    .await
    .unwrap();
    shutdown.cancel();
    let (ok, stdout, stderr) = out;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("123.456"), "{stdout}");
    assert!(stdout.contains("4.05"), "{stdout}");
    assert!(stdout.contains("CDAB"), "{stdout}");
}

#[test]
fn probe_reports_an_unreachable_device_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ok, _, stderr) = smeltwatch(&[
        "probe",
        "--tcp",
        &format!("127.0.0.1:{port}"),
        "--address",
        "0",
        "--timeout",
        "1s",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("connecting to 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[test]
fn spool_stats_and_export_show_what_is_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plant.toml");
    let toml = one_meter_toml(
        "s",
        "state",
        "127.0.0.1:502",
        None,
        "meter",
        r#"broker = "mqtt://127.0.0.1:1883""#,
    );
    std::fs::write(&config, toml).unwrap();
    let path = dir.path().join("state/spool-plant.db");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut spool = Spool::open(&path, &SpoolConfig::default()).unwrap();
    let records = (0..3)
        .map(|i| NewRecord {
            stream: Stream::Live,
            topic: format!("smeltwatch/s/live/bus/meter{i}"),
            body: br#"{"kind":"batch"}"#.to_vec(),
            created: Timestamp(1_795_000_000_000 + i),
        })
        .collect();
    spool.append(records).unwrap();
    // What the agent writes (the binary form), and a body nothing can decode.
    let batch = Record::Batch(ReadingBatch {
        source: "bus".into(),
        device: "meter".into(),
        unit_id: 1,
        poll_interval_ms: 1000,
        scheduled: Timestamp(1_795_000_001_000),
        readings: vec![Reading {
            point: "power_mw".into(),
            value: Some(Value::Float(41.5)),
            unit: "MW".into(),
            quality: Quality::Good,
            ts: Timestamp(1_795_000_001_012),
        }],
    });
    let more = [body::encode(&batch), vec![0x7f, 0, 0]]
        .into_iter()
        .map(|body| NewRecord {
            stream: Stream::Live,
            topic: "smeltwatch/s/live/bus/meter".into(),
            body,
            created: Timestamp(1_795_000_001_100),
        })
        .collect();
    spool.append(more).unwrap();
    spool.close().unwrap();

    let cfg = config.to_str().unwrap();
    let (ok, stdout, stderr) = smeltwatch(&["spool", "stats", "-c", cfg]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("plant        5 records"), "{stdout}");
    assert!(stdout.contains("live=5"), "{stdout}");

    let (ok, stdout, stderr) = smeltwatch(&["spool", "export", "-c", cfg]);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[2]["seq"], 3);
    assert_eq!(lines[2]["topic"], "smeltwatch/s/live/bus/meter2");
    assert_eq!(lines[0]["record"]["kind"], "batch");
    // A binary body is shown as its record's JSON; an undecodable one says why.
    assert_eq!(lines[3]["record"], serde_json::to_value(&batch).unwrap());
    assert_eq!(lines[3]["record"]["readings"][0]["value"], 41.5);
    assert_eq!(
        lines[4]["record"]["undecodable"],
        "unknown body form (first byte 0x7f)"
    );
}

#[test]
fn keygen_then_verify_accepts_a_clean_ledger_and_names_a_tampered_record() {
    use smeltwatch::ledger::{Chain, append_jsonl, load_signing_key};
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (ok, stdout, stderr) = smeltwatch(&["keygen", "--out", keys.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("site.pub"), "{stdout}");
    // A second keygen must not overwrite the site's key.
    let (ok, _, _) = smeltwatch(&["keygen", "--out", keys.to_str().unwrap()]);
    assert!(!ok);

    let key = load_signing_key(&keys.join("site.key")).unwrap();
    let mut chain = Chain::new("qh-al-01", "emissions");
    let records: Vec<_> = (0..5)
        .map(|i| chain.append(&key, format!("{{\"so2_kg\":{i}.5}}")))
        .collect();
    let ledger = dir.path().join("emissions.jsonl");
    append_jsonl(&ledger, &records).unwrap();
    let pubkey = keys.join("site.pub");
    let args = |f: &std::path::Path| {
        vec![
            "verify".to_string(),
            "--key".into(),
            pubkey.to_str().unwrap().into(),
            "--file".into(),
            f.to_str().unwrap().into(),
        ]
    };
    let run = |f: &std::path::Path| {
        let a = args(f);
        smeltwatch(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (ok, stdout, stderr) = run(&ledger);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("5 verified"), "{stdout}");

    // Change one emission figure in record 3: verify fails and names it.
    let text = std::fs::read_to_string(&ledger).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let tampered_line = lines[2].replace("2.5", "0.5");
    assert_ne!(tampered_line, lines[2]);
    let tampered = dir.path().join("tampered.jsonl");
    let mut out = lines.clone();
    out[2] = &tampered_line;
    std::fs::write(&tampered, out.join("\n") + "\n").unwrap();
    let (ok, stdout, _) = run(&tampered);
    assert!(!ok, "{stdout}");
    let seq = records[2].seq.to_string();
    assert!(stdout.contains(&seq), "{stdout}");
}

/// Log lines written to a file carry no colour escapes, and under systemd's journal (stderr is
/// the stream `JOURNAL_STREAM` names) each starts with its syslog priority and has no timestamp.
#[test]
fn logs_are_plain_in_a_file_and_carry_priorities_for_journald() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plant.toml");
    // A device and a broker on a port nothing listens on: the agent logs while it runs.
    let toml = one_meter_toml(
        "s",
        "state",
        "127.0.0.1:1",
        None,
        "meter",
        r#"broker = "mqtt://127.0.0.1:1""#,
    );
    std::fs::write(&config, toml).unwrap();
    let run = |log: &std::path::Path, journal: bool| -> String {
        let file = std::fs::File::create(log).unwrap();
        let meta = file.metadata().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_smeltwatch"));
        cmd.args([
            "run",
            "-c",
            config.to_str().unwrap(),
            "--duration",
            "1500ms",
        ])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .stdout(std::process::Stdio::null())
        .stderr(file);
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        let status = cmd.status().unwrap();
        assert!(status.success(), "{status}");
        std::fs::read_to_string(log).unwrap()
    };
    let plain = run(&dir.path().join("plain.log"), false);
    assert!(plain.lines().count() >= 2, "{plain}");
    assert!(
        !plain.contains('\x1b'),
        "colour escapes in a file: {plain:?}"
    );
    assert!(plain.contains(" INFO "), "{plain}");

    let journal = run(&dir.path().join("journal.log"), true);
    assert!(journal.lines().count() >= 2, "{journal}");
    assert!(!journal.contains('\x1b'), "{journal:?}");
    for line in journal.lines() {
        assert!(
            ["<3>ERROR ", "<4>WARN ", "<6>INFO ", "<7>DEBUG "]
                .iter()
                .any(|p| line.starts_with(p)),
            "not a journald line: {line:?}"
        );
    }
}
