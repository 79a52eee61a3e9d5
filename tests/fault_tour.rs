//! The whole agent, as a process, through the faults a gateway meets in its first year, one after
//! the other, with the same state directory throughout:
//!
//! 1. a provincial platform that never answers one stack's MN (it has not registered it yet);
//! 2. records larger than an uplink's `max_packet_size` (poison records for that uplink);
//! 3. the state directory's file system filling up with `[calc]` on;
//! 4. a reload (SIGHUP) of a configuration that validates but cannot start (a CA file that holds
//!    no certificate);
//! 5. the wall clock stepped a day forward (the agent runs under libfaketime, whose offset file
//!    the test rewrites; the monotonic clock is left alone, as NTP leaves it);
//! 6. SIGTERM;
//! 7. a start with one uplink's spool file damaged.
//!
//! After each, the test asserts from outside, as an operator or a regulator would see it:
//! acquisition went on (`smeltwatch_source_cycles_total` grows), nothing was lost uncounted (what
//! did not go out is in a spool, a dead-letter table or a lost-records counter) and the health
//! endpoints told the truth (`/readyz`). Needs root (`mount -t tmpfs`), `mosquitto` and
//! libfaketime (Debian package `faketime`).
//!
//! Not in the tour: a broker's ACL denial. Mosquitto answers a denied QoS 1 PUBLISH of an MQTT
//! 3.1.1 client with a PUBACK and drops it, so no client can tell; `tests/brokers.rs` and
//! `tests/deploy.rs` check instead that the shipped ACLs grant every topic the agent publishes.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::hj212::platform;
use common::mosquitto::{self, Mosquitto};
use common::plant::{
    calc_pot_gas_stack_toml, cems_map, four_streams_uplink_toml, stack_simulator,
    two_cems_source_toml,
};
use common::probe::{SmallFs, get, metric_sum};
use common::{agent, free_port};
use smeltwatch::codec::hj212;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const SITE: &str = "tour";
const MN_SITE: &str = "QHAL0000000000000000SITE";
const MN_1: &str = "QHAL0000000000000000GTC1";
const MN_2: &str = "QHAL0000000000000000GTC2";

/// The agent process; killed if the test ends without stopping it.
struct AgentProcess(Option<Child>);

impl AgentProcess {
    /// `smeltwatch run -c config`, its wall clock offset by what `clock_offset` holds (a
    /// libfaketime offset such as `+0` or `+1d`, reread at most once a second).
    fn spawn(config: &Path, clock_offset: &Path) -> AgentProcess {
        let child = agent::run_command(config)
            .env("LD_PRELOAD", libfaketime())
            .env("FAKETIME_TIMESTAMP_FILE", clock_offset)
            .env("FAKETIME_CACHE_DURATION", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .spawn()
            .expect("starting smeltwatch run");
        AgentProcess(Some(child))
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    fn signal(&self, sig: &str) {
        agent::signal(self.pid(), sig);
    }

    fn running(&mut self) -> bool {
        matches!(self.0.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, then wait up to `limit` for the exit.
    fn terminate(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let started = std::time::Instant::now();
        self.signal("-TERM");
        let mut child = self.0.take().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                panic!("the agent did not stop within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The multi-threaded libfaketime of Debian's `faketime` package, wherever the architecture puts it.
fn libfaketime() -> std::path::PathBuf {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists())
        .expect("libfaketime (apt-get install faketime)")
}

struct Ports {
    modbus: u16,
    mqtt: u16,
    platform: std::net::SocketAddr,
    http: u16,
}

fn agent_toml(state: &Path, map: &Path, p: &Ports) -> String {
    format!(
        r#"
site = "{SITE}"
state_dir = "{state}"

{sources}
{plant_uplink}
# Its limit (the smallest allowed) is below the size of a live batch of a CEMS (about 2 kB of
# JSON) and above an event's: every live record is a poison record here, the events are not.
[[uplinks]]
name = "narrow"
type = "mqtt"
broker = "mqtt://127.0.0.1:{mqtt}"
reconnect_min = "100ms"
reconnect_max = "500ms"
max_packet_size = 1024
streams = ["live", "events"]

[[uplinks]]
name = "province"
type = "hj212"
platform = "{platform}"
streams = ["live", "emissions"]
reconnect_min = "50ms"
reconnect_max = "500ms"
[uplinks.hj212]
mn = "{MN_SITE}"
pw = "123456"
over_time = "300ms"
re_count = 1
max_wait = "1s"
[uplinks.hj212.mn_by_stack]
gtc1_stack = "{MN_1}"
gtc2_stack = "{MN_2}"
[uplinks.spool]
# Stack 1's live data waits here while the platform ignores its MN: a clock step must not
# expire it.
max_age = "1h"

[http]
listen = "127.0.0.1:{http}"

[calc]
utc_offset_hours = 8

[calc.simulated_time]
scale = 120
start = "2025-03-01T00:00:00Z"

{stacks}"#,
        stacks = ["gtc1", "gtc2"]
            .map(|gtc| calc_pot_gas_stack_toml(
                &format!("{gtc}_stack"),
                &format!("cems/{gtc}_cems"),
                r#"{ so2 = "so2_mg_m3", fluoride = "fluoride_mg_m3" }"#,
            ))
            .join("\n"),
        state = state.display(),
        sources = two_cems_source_toml(p.modbus, map),
        mqtt = p.mqtt,
        plant_uplink = four_streams_uplink_toml(p.mqtt),
        platform = p.platform,
        http = p.http,
    )
}

async fn metrics(port: u16) -> String {
    let (code, body) = get(port, "/metrics").await;
    assert_eq!(code, 200, "/metrics: {body}");
    body
}

async fn cycles(port: u16) -> u64 {
    metric_sum(&metrics(port).await, "smeltwatch_source_cycles_total", "")
}

/// Poll `/metrics` (every 100 ms, up to `limit`) until `done` holds for its text.
async fn until_metrics(port: u16, what: &str, limit: Duration, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let text = metrics(port).await;
        if done(&text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited {limit:?} for {what}; /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Poll `/readyz` until it answers `code`; returns its body.
async fn until_ready_is(port: u16, code: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (got, body) = get(port, "/readyz").await;
        if got == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {got} after {limit:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait on the broker for an event of `kind` (JSON on `smeltwatch/{site}/events/{kind}`).
async fn event(rx: &mut mpsc::Receiver<(String, Vec<u8>)>, kind: &str) -> serde_json::Value {
    let suffix = format!("/events/{kind}");
    timeout(Duration::from_secs(30), async {
        loop {
            let (topic, payload) = rx.recv().await.expect("subscriber open");
            if topic.ends_with(&suffix) {
                return serde_json::from_slice(&payload).unwrap();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} event within 30 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_keeps_acquiring_counts_what_it_could_not_deliver_and_tells_the_truth() {
    let fs = SmallFs::mount("64m");
    let work = tempfile::tempdir().unwrap();
    let map = cems_map(work.path(), "100ms");
    let (sim, modbus_port) = stack_simulator(2, 120.0).await;
    let broker = Mosquitto::start();
    let (_events_sub, mut events) =
        mosquitto::subscribe(broker.port, &format!("smeltwatch/{SITE}/events/#")).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let ports = Ports {
        modbus: modbus_port,
        mqtt: broker.port,
        platform: listener.local_addr().unwrap(),
        http: free_port(),
    };
    let platform = platform(listener, Some(MN_1), Some(seen_tx));
    let state = fs.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let config = work.path().join("smeltwatch.toml");
    std::fs::write(&config, agent_toml(&state, &map, &ports)).unwrap();
    let clock_offset = work.path().join("clock-offset");
    std::fs::write(&clock_offset, "+0\n").unwrap();
    let mut agent = AgentProcess::spawn(&config, &clock_offset);
    let http = ports.http;

    // Start: every source polled, every uplink connected.
    until_ready_is(http, 200, Duration::from_secs(30)).await;

    // 1. The platform never answers stack 1's MN: stack 2's live data keeps flowing, stack 1's
    // waits in the spool (not lost), and the wait is reported as an event.
    let mut by_mn = std::collections::BTreeMap::<String, usize>::new();
    timeout(Duration::from_secs(30), async {
        while by_mn.get(MN_2).copied().unwrap_or(0) < 20 || !by_mn.contains_key(MN_1) {
            let hj212::Packet { mn, cn, .. } = seen.recv().await.unwrap();
            if cn == 2011 {
                *by_mn.entry(mn).or_default() += 1;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("2011 packets per MN: {by_mn:?}"));
    assert!(!by_mn.contains_key(MN_SITE), "{by_mn:?}");
    let waiting = event(&mut events, "hj212_waiting").await;
    assert!(
        waiting["subject"].as_str().unwrap().ends_with(MN_1),
        "{waiting}"
    );
    let text = metrics(http).await;
    assert!(
        metric_sum(&text, "smeltwatch_spool_records", "uplink=\"province\"") > 0,
        "stack 1's data waits in the province spool:\n{text}"
    );
    until_ready_is(http, 200, Duration::from_secs(10)).await;

    // 2. Poison records: every live batch is over the narrow uplink's limit. They are set aside
    // (counted, with events) and its events still go out.
    let dead_letter = event(&mut events, "dead_letter").await;
    assert_eq!(dead_letter["subject"], "narrow", "{dead_letter}");
    until_metrics(
        http,
        "dead letters of the narrow uplink and its events acked",
        Duration::from_secs(30),
        |t| {
            metric_sum(
                t,
                "smeltwatch_spool_dead_letter_records",
                "uplink=\"narrow\"",
            ) > 0
                && metric_sum(t, "smeltwatch_uplink_acked_total", "uplink=\"narrow\"") > 0
        },
    )
    .await;

    // 3. The state directory's file system fills up: acquisition goes on, what the stores could
    // not keep is counted, and /readyz says so.
    let before = cycles(http).await;
    let filler = fs.fill();
    let body = until_ready_is(http, 503, Duration::from_secs(30)).await;
    assert!(
        body.contains("disk full") || body.contains("store failing"),
        "the reason names the full disk or the failing store: {body}"
    );
    until_metrics(
        http,
        "records counted as lost or dropped with the disk full",
        Duration::from_secs(30),
        |t| {
            metric_sum(t, "smeltwatch_store_lost_records_total", "") > 0
                || metric_sum(t, "smeltwatch_spool_drops_total", "") > 0
        },
    )
    .await;
    let full = cycles(http).await;
    until_metrics(http, "poll cycles going on", Duration::from_secs(30), |t| {
        metric_sum(t, "smeltwatch_source_cycles_total", "") > full + 50
    })
    .await;
    assert!(full > before);
    // Space again: the stores write again and /readyz recovers.
    std::fs::remove_file(&filler).unwrap();
    until_ready_is(http, 200, Duration::from_secs(60)).await;

    // 4. A reload whose configuration validates but cannot start: the plant uplink moved to TLS
    // with a CA file that holds no certificate. The running configuration goes on and says so.
    let good = agent_toml(&state, &map, &ports);
    let plain = format!(
        "broker = \"mqtt://127.0.0.1:{}\"\nreconnect_min = \"100ms\"\nreconnect_max = \"500ms\"\nstreams = [\"live\", \"metrics\", \"events\", \"emissions\"]\n",
        ports.mqtt
    );
    assert!(good.contains(&plain));
    let bad_ca = work.path().join("ca.crt");
    std::fs::write(&bad_ca, "not a certificate\n").unwrap();
    let tls = format!(
        "broker = \"mqtts://127.0.0.1:{}\"\nstreams = [\"live\", \"metrics\", \"events\", \"emissions\"]\n[uplinks.tls]\nca_file = \"{}\"\n",
        ports.mqtt,
        bad_ca.display()
    );
    std::fs::write(&config, good.replacen(&plain, &tls, 1)).unwrap();
    let before = cycles(http).await;
    agent.signal("-HUP");
    let failed = event(&mut events, "reload_failed").await;
    assert!(
        failed.to_string().contains("ca.crt"),
        "the event names the file: {failed}"
    );
    let (_live_sub, mut live) =
        mosquitto::subscribe(broker.port, &format!("smeltwatch/{SITE}/live/#")).await;
    timeout(Duration::from_secs(10), live.recv())
        .await
        .expect("live data still reaches the broker on the running configuration");
    assert!(agent.running(), "the daemon survived the bad reload");
    assert!(cycles(http).await > before);
    until_ready_is(http, 200, Duration::from_secs(10)).await;
    std::fs::write(&config, &good).unwrap();

    // 5. The wall clock steps a day forward (a gateway without a real-time clock set by NTP):
    // one event, timestamps follow the new time, and the backlog waiting for the platform is not
    // expired by the step although it is now a day older than max_age on the wall clock.
    let waiting = metric_sum(
        &metrics(http).await,
        "smeltwatch_spool_records",
        "uplink=\"province\"",
    );
    assert!(waiting > 0);
    let dropped = |t: &str| metric_sum(t, "smeltwatch_spool_drops_total", "uplink=\"province\"");
    let dropped_before = dropped(&metrics(http).await);
    let stepped_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    std::fs::write(&clock_offset, "+1d\n").unwrap();
    let step = event(&mut events, "clock_step").await;
    assert!(step.to_string().contains("forward"), "{step}");
    let day_ms = 86_400_000;
    timeout(Duration::from_secs(10), async {
        loop {
            let (_, payload) = live.recv().await.expect("live subscriber open");
            let batch: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            let ts = batch["readings"][0]["ts_ms"].as_i64().unwrap_or(0);
            if ts > stepped_at_ms + day_ms - 60_000 {
                return;
            }
        }
    })
    .await
    .expect("live readings stamped with the stepped clock");
    let after = metrics(http).await;
    assert_eq!(
        dropped(&after),
        dropped_before,
        "nothing expired by the step:\n{after}"
    );
    assert!(metric_sum(&after, "smeltwatch_spool_records", "uplink=\"province\"") >= waiting);
    until_ready_is(http, 200, Duration::from_secs(10)).await;

    // 6. SIGTERM: a clean stop within the grace period (10 s by default) and some margin.
    let (status, took) = agent.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit status {status} after {took:?}");

    // 7. One spool file damaged while the agent was down: it is moved aside, that uplink starts
    // on an empty spool, and everything else runs as before.
    let narrow = state.join("spool-narrow.db");
    std::fs::write(&narrow, vec![0x5a; 64 * 1024]).unwrap();
    let mut agent = AgentProcess::spawn(&config, &clock_offset);
    let set_aside = event(&mut events, "spool_set_aside").await;
    assert!(
        set_aside.to_string().contains("spool-narrow.db"),
        "{set_aside}"
    );
    until_ready_is(http, 200, Duration::from_secs(30)).await;
    let moved: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("spool-narrow.db.corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "the damaged file is kept beside: {moved:?}");
    until_metrics(
        http,
        "the narrow uplink acking again",
        Duration::from_secs(30),
        |t| metric_sum(t, "smeltwatch_uplink_acked_total", "uplink=\"narrow\"") > 0,
    )
    .await;
    let (status, took) = agent.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit status {status} after {took:?}");

    platform.abort();
    sim.shutdown().await;
}
