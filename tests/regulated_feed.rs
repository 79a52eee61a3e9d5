//! The regulator's feed, end to end through the agent: a simulated stack CEMS → calculators →
//! history store → the HJ 212 uplink to a fake platform (history requests answered from the store,
//! across a dropped connection and an agent restart), and the signed ledger on Mosquitto, checked
//! by `smeltwatch verify --broker` and from a capture file, continuing across a restart.
//!
//! The HJ 212 test runs the simulator and the calculators on plant time (`time_scale` and
//! `[calc.simulated_time]`, 120 plant seconds per real second), so an hour window closes every
//! 30 s. The ledger test runs on real time (a configuration record carries the real time of the
//! start, and the verifier checks time order), so it waits for real minute windows: about a
//! minute, never an hour.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::agent;
use common::hj212::next_packet;
use common::mosquitto::{self, Mosquitto};
use common::plant::{GTC1_STACK_CALC, cems_map, gtc1_source_toml, stack_simulator};
use smeltwatch::app::RunOptions;
use smeltwatch::audit::capture;
use smeltwatch::codec::hj212::{self, Packet, Table};
use smeltwatch::config;
use smeltwatch::{audit, ledger};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout_at};

const SITE: &str = "qh-al-01";
const MN: &str = "QHAL0000000000000000GTC1";
const PW: &str = "123456";

/// The stack, its calculator (with `calc_extra` in `[calc]`) and `rest` (uplinks, `[ledger]`).
fn agent_toml(modbus_port: u16, state: &Path, poll: &str, calc_extra: &str, rest: &str) -> String {
    format!(
        r#"
site = "{SITE}"
state_dir = "{state}"
{gtc1}
[calc]
utc_offset_hours = 8
{calc_extra}
{GTC1_STACK_CALC}{rest}
"#,
        state = state.display(),
        gtc1 = gtc1_source_toml(modbus_port, &cems_map(state, poll)),
    )
}

/// Acknowledge a data packet that asks for it (9014), as a platform does.
async fn ack(conn: &mut TcpStream, p: &Packet, table: &Table) {
    if p.wants_ack() {
        let answer = hj212::data_response(table, p).unwrap();
        conn.write_all(answer.as_bytes()).await.unwrap();
    }
}

/// The next connection of the agent to `platform` (failing the test with `connects` if none
/// comes before `deadline`): the hourly data (2061) of `data_time` requested under `qn`, the
/// answer's data segments.
async fn history_answer(
    platform: &TcpListener,
    table: &Table,
    qn: &str,
    data_time: &str,
    deadline: Instant,
    connects: &str,
) -> Vec<hj212::Cp> {
    let (mut conn, _) = timeout_at(deadline, platform.accept())
        .await
        .expect(connects)
        .unwrap();
    let mut buf = Vec::new();
    let answer = request_history(&mut conn, &mut buf, table, (2061, qn), data_time, deadline).await;
    answer.iter().map(|p| p.cp.clone()).collect()
}

/// Ask for the windows of command `cn` starting at `data_time` and return the data packets of
/// the answer (acknowledging live packets that arrive meanwhile). Checks the 9011/9012 framing.
async fn request_history(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    table: &Table,
    (cn, qn): (u16, &str),
    data_time: &str,
    deadline: Instant,
) -> Vec<Packet> {
    let cp = format!("BeginTime={data_time},EndTime={data_time}");
    let seg = format!("QN={qn};ST=31;CN={cn};PW={PW};MN={MN};Flag=5;CP=&&{cp}&&");
    conn.write_all(hj212::frame(&seg).unwrap().as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut ready = false;
    loop {
        let p = timeout_at(deadline, next_packet(conn, buf, table))
            .await
            .expect("the history answer arrives")
            .expect("the agent keeps the connection");
        if p.qn.as_deref() != Some(qn) {
            // A live packet sent meanwhile.
            ack(conn, &p, table).await;
            continue;
        }
        match p.cn {
            9011 => {
                assert_eq!(p.cp.get("QnRtn"), Some("1"), "{p:?}");
                ready = true;
            }
            9012 => {
                assert!(ready, "9012 before 9011");
                assert_eq!(p.cp.get("ExeRtn"), Some("1"), "{p:?}");
                return answer;
            }
            c if c == cn => {
                assert!(
                    !p.wants_ack(),
                    "answers to a request ask no acknowledgement"
                );
                answer.push(p);
            }
            other => panic!("unexpected CN {other} in the answer: {p:?}"),
        }
    }
}

/// `[calc.simulated_time]` at 120 plant seconds per real second from plant time `start`.
fn plant_time(start: &str) -> String {
    format!("[calc.simulated_time]\nscale = 120\nstart = \"{start}\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_gets_the_same_hours_back_after_a_dropped_connection_and_a_restart() {
    let table = Table::hj212_2017();
    let (sim, modbus_port) = stack_simulator(1, 120.0).await;
    let state = tempfile::tempdir().unwrap();
    let platform = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uplink = format!(
        r#"
[[uplinks]]
name = "province"
type = "hj212"
platform = "{}"
reconnect_min = "100ms"
reconnect_max = "500ms"
[uplinks.hj212]
mn = "{MN}"
pw = "{PW}"
over_time = "2s"
"#,
        platform.local_addr().unwrap()
    );
    // Plant time starts two minutes before a local hour: 2025-03-01 08:58 (UTC+8).
    let toml = agent_toml(
        modbus_port,
        state.path(),
        "100ms",
        &plant_time("2025-03-01T00:58:00Z"),
        &uplink,
    );
    let file = state.path().join("smeltwatch.toml");
    let agent = agent::start(&file, &toml).await;
    let deadline = Instant::now() + Duration::from_secs(120);

    // Connection 1: minute and hour packets as windows close, all acknowledged. The first
    // complete hour (all its PNUM parts) is kept; then the platform drops the connection.
    let (mut conn, _) = timeout_at(deadline, platform.accept())
        .await
        .expect("the agent connects")
        .unwrap();
    let mut buf = Vec::new();
    let mut hour: Vec<Packet> = Vec::new();
    let mut minutes = 0;
    loop {
        let p = timeout_at(deadline, next_packet(&mut conn, &mut buf, &table))
            .await
            .expect("an hour window closes")
            .expect("the agent keeps the connection");
        ack(&mut conn, &p, &table).await;
        assert_eq!((p.st, p.mn.as_str(), p.pw.as_str()), (31, MN, PW));
        if p.cn == 2051 {
            minutes += 1;
        }
        if p.cn != 2061 {
            continue;
        }
        let total = p.split.map_or(1, |(pnum, _)| pnum);
        if hour
            .first()
            .is_some_and(|w| w.cp.get("DataTime") != p.cp.get("DataTime"))
        {
            hour.clear();
        }
        hour.push(p);
        // The first hour holds the start's two minutes only; keep the first full one.
        if hour.len() == usize::from(total) && hour[0].cp.get("DataTime") != Some("20250301080000")
        {
            break;
        }
    }
    drop(conn);
    assert!(minutes >= 60, "minute packets precede the hour: {minutes}");
    let data_time = hour[0].cp.get("DataTime").unwrap().to_owned();
    assert_eq!(data_time, "20250301090000", "the first full local hour");
    let live_cp: Vec<hj212::Cp> = hour.iter().map(|p| p.cp.clone()).collect();
    for factor in ["a21026", "a34013"] {
        assert!(
            live_cp
                .iter()
                .any(|cp| cp.get(&format!("{factor}-Avg")).is_some()),
            "{factor} in {live_cp:?}"
        );
    }

    // Connection 2: the platform asks for that hour and gets the same data back.
    let answer_cp = history_answer(
        &platform,
        &table,
        "20250301120000001",
        &data_time,
        deadline,
        "the agent reconnects",
    )
    .await;
    assert_eq!(answer_cp, live_cp);

    // The agent restarts on the same state directory (its plant clock a day later, so that it
    // computes no hour twice): the history store still answers for the first run's hour.
    agent.shutdown().await;
    let toml = agent_toml(
        modbus_port,
        state.path(),
        "100ms",
        &plant_time("2025-03-02T00:58:00Z"),
        &uplink,
    );
    let agent = agent::start(&file, &toml).await;
    let answer_cp = history_answer(
        &platform,
        &table,
        "20250301120000002",
        &data_time,
        deadline,
        "the restarted agent connects",
    )
    .await;
    assert_eq!(answer_cp, live_cp, "after a restart");
    agent.shutdown().await;
    sim.shutdown().await;
}

/// Topics of the record streams the regulator captures (not the retained status).
/// The next ledger record on the JSON uplink, (topic, payload), by `deadline` (`what` says what
/// did not come in time); the records of the protobuf uplink on the way go to `pb`.
async fn next_json_record(
    rx: &mut tokio::sync::mpsc::Receiver<(String, Vec<u8>)>,
    deadline: Instant,
    what: &str,
    pb: &mut Vec<Vec<u8>>,
) -> (String, Vec<u8>) {
    loop {
        let (topic, payload) = timeout_at(deadline, rx.recv()).await.expect(what).unwrap();
        if !is_record(&topic) {
            continue;
        }
        if topic.starts_with("pb/") {
            pb.push(payload);
            continue;
        }
        return (topic, payload);
    }
}

fn is_record(topic: &str) -> bool {
    ["/emissions/", "/events/", "/metrics/"]
        .iter()
        .any(|s| topic.contains(s))
}

/// The seal of a captured payload, if it has one.
fn sealed(payload: &[u8]) -> Option<ledger::LedgerRecord> {
    match capture::read_message(payload, false).unwrap() {
        capture::Captured::Sealed { record, .. } => Some(*record),
        capture::Captured::Unsealed => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signed_feed_verifies_from_the_broker_and_continues_across_a_restart() {
    let broker = Mosquitto::start();
    let (sim, modbus_port) = stack_simulator(1, 1.0).await;
    let state = tempfile::tempdir().unwrap();
    let keys = ledger::keygen(&state.path().join("keys")).unwrap();
    let (_sub, mut rx) = mosquitto::subscribe(broker.port, "#").await;
    let rest = format!(
        r#"
[[uplinks]]
name = "regulator"
type = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
reconnect_min = "100ms"
streams = ["emissions", "events", "metrics"]

[[uplinks]]
name = "regulator_pb"
type = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
reconnect_min = "100ms"
streams = ["emissions", "events", "metrics"]
encoding = "protobuf"
[uplinks.topics]
emissions = "pb/{{site}}/emissions/{{stack}}/{{period}}"
events = "pb/{{site}}/events/{{kind}}"
metrics = "pb/{{site}}/metrics/{{calc}}"

[ledger]
key_file = "{key}"
regulated = ["stack_minute", "stack_hour", "stack_day", "potline_day", "potline_month"]
"#,
        port = broker.port,
        key = keys.secret.display()
    );
    let toml = agent_toml(modbus_port, state.path(), "1s", "", &rest);
    let file = state.path().join("smeltwatch.toml");

    // A key others can read is refused before anything starts.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keys.secret, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::write(&file, &toml).unwrap();
        let cfg = config::load(&file).unwrap();
        let err = smeltwatch::app::start(cfg, RunOptions::default())
            .await
            .expect_err("a group-readable key is refused");
        assert!(
            format!("{err:#}").contains("mode 0640 lets others read the secret key"),
            "{err:#}"
        );
        std::fs::set_permissions(&keys.secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    let agent = agent::start(&file, &toml).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut json = Vec::new();
    let mut pb = Vec::new();
    // A live capture starts wherever the chain is when it subscribes: the regulator anchors its
    // start on a record it already holds, here the configuration record (seq 1).
    let first = loop {
        let (_, payload) = next_json_record(
            &mut rx,
            deadline,
            "the configuration record arrives",
            &mut pb,
        )
        .await;
        let seal = sealed(&payload);
        json.push(payload);
        if let Some(seal) = seal {
            break seal;
        }
    };
    assert_eq!(
        first.seq, 1,
        "a fresh chain starts with the configuration record"
    );
    let after = format!("1:{}", ledger::to_hex(&first.hash));
    // The regulator's verifier, live from the broker: three signed records after seq 1.
    let verifier = tokio::process::Command::new(env!("CARGO_BIN_EXE_smeltwatch"))
        .args(["verify", "--key"])
        .arg(&keys.public)
        .args(["--after", &after])
        .args(["--broker", &format!("127.0.0.1:{}", broker.port)])
        .args(["--topic", &format!("smeltwatch/{SITE}/emissions/#")])
        .args([
            "--topic",
            &format!("smeltwatch/{SITE}/events/config_change"),
        ])
        .args(["--count", "3", "--duration", "150s"])
        .output();
    let verifier = tokio::spawn(verifier);

    // Run 1: the first sealed minute window.
    let mut run1_aggregates = 0;
    while run1_aggregates == 0 {
        let (topic, payload) =
            next_json_record(&mut rx, deadline, "a sealed minute window arrives", &mut pb).await;
        if topic.contains("/emissions/") && sealed(&payload).is_some() {
            run1_aggregates += 1;
        }
        json.push(payload);
    }
    let out = timeout_at(deadline, verifier)
        .await
        .expect("verify --broker ends after three records")
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Verdict: INTACT"), "{stdout}");
    assert!(stdout.contains("Records: 3 read, 3 verified"), "{stdout}");

    // Run 2 on the same state directory: its configuration record continues the chain.
    let last_run1 = json
        .iter()
        .filter_map(|p| sealed(p))
        .map(|r| r.seq)
        .max()
        .unwrap();
    agent.shutdown().await;
    let agent = agent::start(&file, &toml).await;
    let mut resumed = None;
    while resumed.is_none() {
        let (topic, payload) = next_json_record(
            &mut rx,
            deadline,
            "the restarted agent publishes its configuration record",
            &mut pb,
        )
        .await;
        if topic.ends_with("/events/config_change")
            && let Some(r) = sealed(&payload)
            && r.seq > last_run1
        {
            resumed = Some(r);
        }
        json.push(payload);
    }
    let resumed = resumed.unwrap();
    agent.shutdown().await;
    sim.shutdown().await;
    // Whatever the JSON uplink sent of run 2 so far, in the same order on the protobuf uplink.
    while let Ok(Some((topic, payload))) =
        tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
    {
        if !is_record(&topic) {
            continue;
        }
        if topic.starts_with("pb/") {
            pb.push(payload);
        } else {
            json.push(payload);
        }
    }

    // The whole capture verifies clean from a file, in JSON lines and in protobuf.
    let jsonl = state.path().join("capture.jsonl");
    let mut text = Vec::new();
    for p in &json {
        text.extend_from_slice(p);
        text.push(b'\n');
    }
    std::fs::write(&jsonl, &text).unwrap();
    let report = audit::verify_file(&keys.public, &jsonl).unwrap();
    assert!(report.ok, "{report}");
    assert!(report.from_genesis, "{report}");
    assert!(report.verified as u64 >= resumed.seq, "{report}");
    assert_eq!(
        report.chain,
        Some((SITE.to_owned(), "regulated".to_owned()))
    );
    // The restarted agent's first record follows the first run's last one, a minute window.
    let before = json
        .iter()
        .filter_map(|p| sealed(p))
        .find(|r| r.seq == resumed.seq - 1)
        .expect("the first run's last record was captured");
    assert_eq!(
        resumed.prev, before.hash,
        "the chain continues after a restart"
    );
    assert!(
        before.payload.contains(r#""record":"aggregate""#),
        "{}",
        before.payload
    );

    let pbfile = state.path().join("capture.pb");
    let mut bytes = Vec::new();
    for p in &pb {
        prost::encoding::encode_varint(p.len() as u64, &mut bytes);
        bytes.extend_from_slice(p);
    }
    std::fs::write(&pbfile, &bytes).unwrap();
    let report = audit::verify_file(&keys.public, &pbfile).unwrap();
    assert!(report.ok, "{report}");
    assert!(report.verified >= 2, "{report}");

    // One value changed in a captured JSON body (not in the signed payload) is named.
    let (i, tampered) = json
        .iter()
        .enumerate()
        .find_map(|(i, p)| {
            let text = String::from_utf8(p.clone()).unwrap();
            (text.contains("\"avg\":") && sealed(p).is_some()).then(|| {
                let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
                v["avg"] = serde_json::json!(1.0);
                (i, serde_json::to_vec(&v).unwrap())
            })
        })
        .expect("a sealed window with an average");
    let seq = sealed(&tampered).unwrap().seq;
    let mut lines = json.clone();
    lines[i] = tampered;
    let text = lines.join(&b'\n');
    std::fs::write(&jsonl, &text).unwrap();
    let report = audit::verify_file(&keys.public, &jsonl).unwrap();
    assert!(!report.ok);
    assert_eq!(report.mismatched, vec![seq], "{report}");
    assert!(
        report
            .to_string()
            .contains(&format!("Altered body: seq {seq}"))
    );
}
