//! The broker side of a deployment, against real Mosquitto processes: the plant broker runs the
//! configuration and ACL file of `deploy/mosquitto/` (with a plain loopback listener instead of
//! TLS, and a password file made here with `mosquitto_passwd`), and each role can do what it must
//! and is refused what it must not. The bridge test adds a second Mosquitto as the provincial
//! broker, with `deploy/mosquitto/province.{conf,acl}`, and the plant broker bridging to it with
//! `deploy/mosquitto/bridge-province.conf`. One test keeps plant.conf's TLS listener, switches on
//! its documented certificate option, and checks that client certificates (made here with rcgen)
//! map to the same ACL accounts by their Common Name.
//!
//! Absence is proven with a marker, never with a sleep: the forbidden message is published (and,
//! when it comes from another client than the marker, its PUBACK awaited, so the broker has
//! already dealt with it) before a marker that the watching client may receive. Mosquitto
//! delivers one connection's messages in order, so when the marker has arrived and the forbidden
//! message has not, it was refused.
//!
//! Every broker also gets one test-only account, `test-observer`, appended to the real ACL file
//! with `topic read #`: it sees everything the broker accepted. Appending a user block leaves the
//! other users' rules as they are.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, PublishOptions, QoS};
use smeltwatch_testkit::free_port;
use tokio::sync::{mpsc, oneshot};

const SITE: &str = "al-yunnan-03";
const GROUP: &str = "yunnan-smelters";
const OBSERVER: &str = "test-observer";
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Brokers from the deploy files
// ---------------------------------------------------------------------------------------------

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/mosquitto")
        .join(name)
}

fn read_deploy(name: &str) -> String {
    std::fs::read_to_string(deploy_file(name)).expect("read a deploy/mosquitto file")
}

/// What to do with the lines whose first word is `directive`.
enum Rule<'a> {
    Drop(&'a str),
    Replace(&'a str, String),
}

/// Rewrite a Mosquitto configuration line by line. Every rule must match at least one line, so a
/// deploy file that changes shape fails here instead of silently testing something else.
fn derive(file: &str, text: &str, rules: &[Rule<'_>]) -> String {
    let mut used = vec![false; rules.len()];
    let mut out = String::new();
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        // `#directive` rules match a commented-out line (`# require_certificate true`).
        let commented = line
            .strip_prefix('#')
            .and_then(|rest| rest.split_whitespace().next())
            .map(|w| format!("#{w}"))
            .unwrap_or_default();
        let mut keep = Some(line.to_owned());
        for (i, rule) in rules.iter().enumerate() {
            match rule {
                Rule::Drop(d) if *d == first || *d == commented => {
                    used[i] = true;
                    keep = None;
                }
                Rule::Replace(d, with) if *d == first || *d == commented => {
                    used[i] = true;
                    keep = Some(with.clone());
                }
                _ => {}
            }
        }
        if let Some(l) = keep {
            out.push_str(&l);
            out.push('\n');
        }
    }
    for (i, rule) in rules.iter().enumerate() {
        let d = match rule {
            Rule::Drop(d) | Rule::Replace(d, _) => d,
        };
        assert!(
            used[i],
            "{file} has no `{d}` line any more: update this test"
        );
    }
    out
}

fn password(user: &str) -> String {
    format!("pw-{user}-{}", fastrand::u32(..))
}

/// A running `mosquitto`; dropping it kills the process.
struct Broker {
    port: u16,
    child: Child,
    /// Login of every account made for this broker.
    users: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Start Mosquitto with `conf` (which must contain `@PORT@`, `@PASSWD@` and `@ACL@`
    /// placeholders), the ACL text `acl` plus the test observer, and one account per user.
    fn start(conf: &str, acl: &str, users: &[&str]) -> Broker {
        use std::os::unix::fs::PermissionsExt;
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir for mosquitto");
        // Started as root, Mosquitto may read its files as its own user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("open the broker directory");
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "").expect("create the password file");
        let mut logins = Vec::new();
        for user in users.iter().copied().chain([OBSERVER]) {
            let pw = password(user);
            let status = Command::new("mosquitto_passwd")
                .arg("-b")
                .arg(&passwd)
                .arg(user)
                .arg(&pw)
                .status()
                .expect("run mosquitto_passwd");
            assert!(status.success(), "mosquitto_passwd failed for {user}");
            logins.push((user.to_owned(), pw));
        }
        let acl_path = dir.path().join("acl");
        std::fs::write(
            &acl_path,
            format!("{acl}\n# test only\nuser {OBSERVER}\ntopic read #\n"),
        )
        .expect("write the ACL file");
        let conf = conf
            .replace("@PORT@", &port.to_string())
            .replace("@PASSWD@", &passwd.display().to_string())
            .replace("@ACL@", &acl_path.display().to_string());
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf_path,
            format!(
                "{conf}\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n"
            ),
        )
        .expect("write mosquitto.conf");
        for f in [&passwd, &acl_path, &conf_path] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644))
                .expect("make the broker's files readable");
        }
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mosquitto (is it installed?)");
        let mut broker = Broker {
            port,
            child,
            users: logins,
            _dir: dir,
        };
        broker.wait_ready();
        broker
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mosquitto exited at start-up ({status}); its configuration is refused");
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto not listening within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn password_of(&self, user: &str) -> String {
        self.users
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("no account {user} on this broker"))
    }

    /// Log in as `user` (with its password) or panic.
    async fn login(&self, user: &str) -> Client {
        Client::connect(self.port, Some((user, &self.password_of(user))))
            .await
            .unwrap_or_else(|e| panic!("{user} could not log in: {e}"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// deploy/mosquitto/`name` with a plain loopback listener instead of its TLS one, and the
/// password and ACL files the test writes.
fn plain_loopback_conf(name: &str) -> String {
    derive(
        name,
        &read_deploy(name),
        &[
            Rule::Replace("listener", "listener @PORT@ 127.0.0.1".into()),
            Rule::Drop("cafile"),
            Rule::Drop("certfile"),
            Rule::Drop("keyfile"),
            Rule::Drop("tls_version"),
            Rule::Replace("password_file", "password_file @PASSWD@".into()),
            Rule::Replace("acl_file", "acl_file @ACL@".into()),
        ],
    )
}

/// The test's observer on `broker`, subscribed to every topic.
async fn observer_of(broker: &Broker) -> Client {
    let observer = broker.login(OBSERVER).await;
    observer.must_subscribe("#").await;
    observer
}

/// `agent` publishes each of `topics` (payload `agent`), then the marker `events/{marker}` of the
/// site (payload `marker`), which it returns: whoever reads the marker has been given all of
/// the topics it may read.
async fn publish_then_marker(agent: &Client, topics: &[String], marker: &str) -> String {
    for t in topics {
        agent.publish(t, "agent").await;
    }
    let marker = site(&format!("events/{marker}"));
    agent.publish(&marker, "marker").await;
    marker
}

/// `client` publishes each of `forbidden` (payload `forbidden`) followed by one of `allowed`
/// (payload `allowed`), interleaved so that each refusal sits between two accepted messages,
/// then the site's marker `events/marker`, which it returns.
async fn interleave_then_marker(
    client: &Client,
    allowed: &[String],
    forbidden: &[String],
) -> String {
    for (ok, no) in allowed.iter().zip(forbidden) {
        client.publish(no, "forbidden").await;
        client.publish(ok, "allowed").await;
    }
    let marker = site("events/marker");
    client.publish(&marker, "marker").await;
    marker
}

/// The plant broker's configuration: deploy/mosquitto/plant.conf with a plain loopback listener.
fn plant_conf() -> String {
    plain_loopback_conf("plant.conf")
}

/// The accounts of the plant ACL.
const PLANT_USERS: &[&str] = &[
    "agent-al-yunnan-03",
    "operator-control-room",
    "scada-host",
    "regulator-eeb",
];

fn start_plant() -> Broker {
    Broker::start(&plant_conf(), &read_deploy("plant.acl"), PLANT_USERS)
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// One MQTT 3.1.1 connection; received publishes arrive on `rx` as `(topic, payload)`.
struct Client {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, String)>,
}

impl Client {
    /// Connect and wait for the CONNACK; `Err` says why the broker refused.
    async fn connect(port: u16, login: Option<(&str, &str)>) -> Result<Client, String> {
        let id = format!("test-{}", fastrand::u64(..));
        let mut o = MqttOptions::new(id, ("127.0.0.1".to_owned(), port));
        o.set_keep_alive(5).set_clean_session(true);
        if let Some((u, p)) = login {
            o.set_credentials(u.to_owned(), p.to_owned());
        }
        let (client, mut eventloop) = AsyncClient::builder(o).capacity(64).build();
        let (tx, rx) = mpsc::unbounded_channel();
        let (up_tx, up_rx) = oneshot::channel::<Result<(), String>>();
        tokio::spawn(async move {
            let mut up = Some(up_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(up) = up.take() {
                            let _ = up.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        let payload = String::from_utf8_lossy(&p.payload).into_owned();
                        if tx.send((topic, payload)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(up) = up.take() {
                            let _ = up.send(Err(e.to_string()));
                        }
                        return;
                    }
                }
            }
        });
        match tokio::time::timeout(WAIT, up_rx).await {
            Ok(Ok(Ok(()))) => Ok(Client { client, rx }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err("event loop ended".into()),
            Err(_) => Err("no CONNACK within 10 s".into()),
        }
    }

    /// Subscribe at QoS 1; `Ok` when the SUBACK grants it, `Err` when the broker refuses it.
    async fn subscribe(&self, filter: &str) -> Result<(), String> {
        let notice = self
            .client
            .subscribe_tracked(filter.to_owned(), QoS::AtLeastOnce)
            .await
            .expect("queue SUBSCRIBE");
        tokio::time::timeout(WAIT, notice.wait_completion_async())
            .await
            .expect("SUBACK within 10 s")
            .map_err(|e| e.to_string())
    }

    /// Subscribe and require the broker to grant it.
    async fn must_subscribe(&self, filter: &str) {
        self.subscribe(filter)
            .await
            .unwrap_or_else(|e| panic!("subscription to {filter} refused: {e}"));
    }

    /// Publish at QoS 1 and wait for the PUBACK: the broker has dealt with the message (delivered
    /// or dropped it) when this returns.
    async fn publish(&self, topic: &str, payload: &str) {
        let notice = self
            .client
            .publish_tracked(
                topic.to_owned(),
                payload.to_owned(),
                PublishOptions::new(QoS::AtLeastOnce),
            )
            .await
            .expect("queue PUBLISH");
        tokio::time::timeout(WAIT, notice.wait_async())
            .await
            .expect("PUBACK within 10 s")
            .expect("publish acknowledged");
    }

    /// Everything received up to and including the first message on `marker`.
    async fn until(&mut self, marker: &str) -> Vec<(String, String)> {
        let mut got = Vec::new();
        loop {
            let msg = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("marker {marker} not received within 10 s; got {got:?}"))
                .expect("client's event loop alive");
            let done = msg.0 == marker;
            got.push(msg);
            if done {
                return got;
            }
        }
    }
}

fn topics(msgs: &[(String, String)]) -> Vec<&str> {
    msgs.iter().map(|(t, _)| t.as_str()).collect()
}

/// The topics of `msgs` other than `probe`, in order.
fn topics_but(msgs: &[(String, String)], probe: &str) -> Vec<String> {
    msgs.iter()
        .map(|(t, _)| t.clone())
        .filter(|t| t != probe)
        .collect()
}

fn site(rest: &str) -> String {
    format!("smeltwatch/{SITE}/{rest}")
}

/// A topic of each stream the plant's agent publishes under its site (the emissions at
/// `period`, `minute` or `hour`), in the order the tests publish them.
fn site_streams(period: &str) -> Vec<String> {
    vec![
        site("live/potroom_gw/pot_001"),
        site("metrics/potline"),
        site("events/anode_effect"),
        site(&format!("emissions/gtc3_stack/{period}")),
        site("status"),
    ]
}

/// A mix of what the agent publishes in a minute, in this order: a live batch, the potline's
/// metrics, the stack's minute emissions, its status and a Sparkplug NDATA. Tests about which of
/// them a reader gets append the topics they are about.
fn minute_mix() -> Vec<String> {
    vec![
        site("live/potroom_gw/pot_001"),
        site("metrics/potline"),
        site("emissions/gtc3_stack/minute"),
        site("status"),
        spb(&format!("NDATA/{SITE}")),
    ]
}

/// `published` in order, then `marker`: what a reader allowed all of them sees.
fn then_marker<'a>(published: &'a [String], marker: &'a str) -> Vec<&'a str> {
    published
        .iter()
        .map(String::as_str)
        .chain([marker])
        .collect()
}

fn spb(rest: &str) -> String {
    format!("spBv1.0/{GROUP}/{rest}")
}

// ---------------------------------------------------------------------------------------------
// The plant broker
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn anonymous_clients_and_wrong_passwords_are_refused() {
    let broker = start_plant();
    assert!(
        Client::connect(broker.port, None).await.is_err(),
        "an anonymous client was let in"
    );
    assert!(
        Client::connect(
            broker.port,
            Some(("agent-al-yunnan-03", "not-the-password"))
        )
        .await
        .is_err(),
        "a wrong password was accepted"
    );
    // The right one is accepted (so the refusals above are about the credentials).
    broker.login("agent-al-yunnan-03").await;
}

#[tokio::test]
async fn the_agent_writes_only_its_site_and_its_edge_node() {
    let broker = start_plant();
    let mut observer = observer_of(&broker).await;
    let agent = broker.login("agent-al-yunnan-03").await;

    let mut allowed = site_streams("minute");
    allowed.extend([
        spb(&format!("NBIRTH/{SITE}")),
        spb(&format!("NDATA/{SITE}")),
        spb(&format!("DDATA/{SITE}/pot_001")),
    ]);
    let forbidden = [
        "smeltwatch/cu-other-01/live/gw/dev".to_owned(),
        "smeltwatch/cu-other-01/emissions/stack/minute".to_owned(),
        spb("NDATA/cu-other-01"),
        spb(&format!("NCMD/{SITE}")),
        spb(&format!("DCMD/{SITE}/pot_001")),
        format!("spBv1.0/other-group/NDATA/{SITE}"),
        "spBv1.0/STATE/scada-host".to_owned(),
        "plant/anything".to_owned(),
    ];
    let marker = interleave_then_marker(&agent, &allowed, &forbidden).await;

    let seen = observer.until(&marker).await;
    assert_eq!(
        topics(&seen),
        then_marker(&allowed, &marker),
        "what the broker accepted from the agent"
    );
}

#[tokio::test]
async fn the_agent_reads_its_own_commands_and_nobody_elses() {
    let broker = start_plant();
    let mut agent = broker.login("agent-al-yunnan-03").await;
    agent.must_subscribe(&spb(&format!("NCMD/{SITE}"))).await;
    agent.must_subscribe(&spb(&format!("DCMD/{SITE}/+"))).await;
    // Commands to another edge node: refused at SUBSCRIBE, or never delivered.
    let _ = agent.subscribe(&spb("NCMD/cu-other-01")).await;
    // Its own data: it may write it, not read it (nothing it needs).
    let _ = agent.subscribe(&site("#")).await;

    let scada = broker.login("scada-host").await;
    let other = broker.login("operator-control-room").await;
    scada.publish(&spb("NCMD/cu-other-01"), "rebirth").await;
    other.publish(&site("live/potroom_gw/pot_001"), "x").await;
    scada
        .publish(&spb(&format!("DCMD/{SITE}/pot_001")), "dcmd")
        .await;
    let marker = spb(&format!("NCMD/{SITE}"));
    scada.publish(&marker, "ncmd").await;

    let seen = agent.until(&marker).await;
    assert_eq!(
        seen,
        vec![
            (spb(&format!("DCMD/{SITE}/pot_001")), "dcmd".to_owned()),
            (marker.clone(), "ncmd".to_owned()),
        ]
    );
}

#[tokio::test]
async fn operators_read_the_whole_site_and_write_nothing() {
    let broker = start_plant();
    let mut operator = broker.login("operator-control-room").await;
    operator.must_subscribe(&site("#")).await;
    operator.must_subscribe(&spb("#")).await;
    let mut observer = observer_of(&broker).await;
    let agent = broker.login("agent-al-yunnan-03").await;

    let mut streams = site_streams("hour");
    streams.push(spb(&format!("NDATA/{SITE}")));
    let first_marker = publish_then_marker(&agent, &streams, "marker1").await;
    let seen = operator.until(&first_marker).await;
    assert_eq!(
        topics(&seen),
        then_marker(&streams, &first_marker),
        "an operator reads every stream of the site"
    );

    // The operator tries to write: forged readings, a fake status, a command. Each PUBACK is
    // awaited, so the broker has handled them all before the agent's marker.
    let forged = [
        site("live/potroom_gw/pot_001"),
        site("emissions/gtc3_stack/hour"),
        site("status"),
        spb(&format!("NCMD/{SITE}")),
        "smeltwatch/cu-other-01/events/x".to_owned(),
    ];
    for t in &forged {
        operator.publish(t, "forged").await;
    }
    let marker = site("events/marker2");
    agent.publish(&marker, "marker").await;
    let seen = observer.until(&marker).await;
    let forged_seen: Vec<_> = seen.iter().filter(|(_, p)| p == "forged").collect();
    assert!(
        forged_seen.is_empty(),
        "the broker accepted an operator's publish: {forged_seen:?}"
    );
}

#[tokio::test]
async fn regulators_get_emissions_and_events_and_nothing_live() {
    let broker = start_plant();
    let mut regulator = broker.login("regulator-eeb").await;
    regulator.must_subscribe("smeltwatch/+/emissions/#").await;
    regulator.must_subscribe("smeltwatch/+/events/#").await;
    // Live data and everything else: refused at SUBSCRIBE, or granted and never delivered. Either
    // way nothing may arrive.
    let live = regulator.subscribe(&site("live/#")).await;
    let all = regulator.subscribe("smeltwatch/#").await;
    let spark = regulator.subscribe("spBv1.0/#").await;

    let agent = broker.login("agent-al-yunnan-03").await;
    let mut published = minute_mix();
    published.extend([site("events/exceedance"), site("live/gtc_cems/gtc3_stack")]);
    let marker = publish_then_marker(&agent, &published, "marker").await;

    let seen = regulator.until(&marker).await;
    let got: BTreeSet<String> = seen.into_iter().map(|(t, _)| t).collect();
    let want = BTreeSet::from([
        site("emissions/gtc3_stack/minute"),
        site("events/exceedance"),
        marker.clone(),
    ]);
    assert_eq!(
        got, want,
        "a regulator reads emissions and events only (live: {live:?}, smeltwatch/#: {all:?}, spBv1.0/#: {spark:?})"
    );

    // A regulator cannot write, not even into the streams it reads.
    let mut observer = observer_of(&broker).await;
    regulator
        .publish(&site("emissions/gtc3_stack/minute"), "forged")
        .await;
    regulator
        .publish(&site("events/exceedance"), "forged")
        .await;
    let marker = site("events/marker2");
    agent.publish(&marker, "marker").await;
    let seen = observer.until(&marker).await;
    assert_eq!(
        topics(&seen),
        vec![marker.as_str()],
        "a regulator's publish got through"
    );
}

// ---------------------------------------------------------------------------------------------
// The provincial broker and the bridge
// ---------------------------------------------------------------------------------------------

/// The provincial broker: deploy/mosquitto/province.conf with a plain loopback listener, and
/// province.acl followed by `extra_acl`.
fn start_province(extra_acl: &str) -> Broker {
    let conf = plain_loopback_conf("province.conf");
    Broker::start(
        &conf,
        &format!("{}\n{extra_acl}", read_deploy("province.acl")),
        &[SITE, "cu-other-01", "platform-ingest"],
    )
}

#[tokio::test]
async fn the_province_lets_each_plant_write_only_its_own_regulated_topics() {
    let province = start_province("");
    let mut observer = observer_of(&province).await;
    let plant = province.login(SITE).await;

    let allowed = [
        site("emissions/gtc3_stack/hour"),
        site("events/anode_effect"),
        site("metrics/completeness"),
        site("status"),
    ];
    let forbidden = [
        "smeltwatch/cu-other-01/emissions/stack/hour".to_owned(),
        site("live/potroom_gw/pot_001"),
        "smeltwatch/cu-other-01/metrics/potline".to_owned(),
        site("live/gtc_cems/gtc3_stack"),
    ];
    let marker = interleave_then_marker(&plant, &allowed, &forbidden).await;
    let seen = observer.until(&marker).await;
    assert_eq!(topics(&seen), then_marker(&allowed, &marker));

    // The platform's consumers read the regulated streams of every plant.
    let mut ingest = province.login("platform-ingest").await;
    ingest.must_subscribe("smeltwatch/+/emissions/#").await;
    ingest.must_subscribe("smeltwatch/+/events/#").await;
    let other = province.login("cu-other-01").await;
    other
        .publish("smeltwatch/cu-other-01/emissions/stack/day", "x")
        .await;
    let marker = "smeltwatch/cu-other-01/events/marker";
    other.publish(marker, "marker").await;
    let seen = ingest.until(marker).await;
    assert_eq!(
        topics(&seen),
        vec!["smeltwatch/cu-other-01/emissions/stack/day", marker]
    );
}

#[tokio::test]
async fn the_bridge_carries_emissions_events_and_metrics_to_the_province_and_nothing_else() {
    // The platform's ACL would stop live data too (the test above); here the plant's account may
    // write anything, so that what arrives shows what the bridge's own topic filter lets out.
    let province = start_province(&format!("# test only\nuser {SITE}\ntopic write #\n"));
    let mut ingest = province.login("platform-ingest").await;
    ingest.must_subscribe("smeltwatch/+/emissions/#").await;
    ingest.must_subscribe("smeltwatch/+/events/#").await;
    ingest.must_subscribe("smeltwatch/+/metrics/#").await;
    let mut observer = observer_of(&province).await;

    let bridge = derive(
        "bridge-province.conf",
        &read_deploy("bridge-province.conf"),
        &[
            Rule::Replace("address", format!("address 127.0.0.1:{}", province.port)),
            Rule::Replace(
                "remote_password",
                format!("remote_password {}", province.password_of(SITE)),
            ),
            Rule::Drop("bridge_cafile"),
            Rule::Drop("bridge_tls_version"),
            Rule::Drop("bridge_insecure"),
        ],
    );
    let plant = Broker::start(
        &format!("{}\n{bridge}", plant_conf()),
        &read_deploy("plant.acl"),
        PLANT_USERS,
    );
    let agent = plant.login("agent-al-yunnan-03").await;

    // Wait for the bridge: publish a probe event until one reaches the platform.
    let probe = site("events/bridge_probe");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        agent.publish(&probe, "probe").await;
        match tokio::time::timeout(Duration::from_millis(250), ingest.rx.recv()).await {
            Ok(Some((t, _))) if t == probe => break,
            Ok(Some(other)) => panic!("unexpected message at the platform: {other:?}"),
            Ok(None) => panic!("platform consumer's event loop ended"),
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "the bridge did not connect within 10 s"
            ),
        }
    }

    let mut published = minute_mix();
    published.extend([
        site("events/anode_effect"),
        site("live/gtc_cems/gtc3_stack"),
        site("emissions/gtc3_stack/hour"),
    ]);
    let marker = publish_then_marker(&agent, &published, "marker").await;

    let carried: Vec<String> = topics_but(&observer.until(&marker).await, &probe);
    assert_eq!(
        carried,
        vec![
            site("metrics/potline"),
            site("emissions/gtc3_stack/minute"),
            site("events/anode_effect"),
            site("emissions/gtc3_stack/hour"),
            marker.clone(),
        ],
        "the bridge carries emissions, events and metrics, in order, and nothing else"
    );
    let at_platform: Vec<String> = topics_but(&ingest.until(&marker).await, &probe);
    assert_eq!(
        at_platform, carried,
        "the platform's consumer gets the same"
    );
}

// ---------------------------------------------------------------------------------------------
// Certificate authentication on the plant broker's TLS listener
// ---------------------------------------------------------------------------------------------

/// A CA, and leaf certificates it signs, as PEM files in `dir`.
struct Pki {
    ca: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "test plant CA");
        let pem = ca.self_signed(&key).expect("self-sign CA").pem();
        let pki = Pki {
            ca,
            key,
            dir: dir.to_owned(),
        };
        pki.write("plant-ca.crt", &pem);
        pki
    }

    fn write(&self, name: &str, pem: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(name);
        std::fs::write(&path, pem).expect("write PEM");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        path
    }

    /// Issue `<name>.crt` and `<name>.key` with Common Name `cn` (and `cn` as the SAN).
    fn issue(&self, name: &str, cn: &str, purpose: rcgen::ExtendedKeyUsagePurpose) {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params = rcgen::CertificateParams::new(vec![cn.to_owned()]).expect("leaf params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![purpose];
        let issuer = rcgen::Issuer::from_params(&self.ca, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        self.write(&format!("{name}.crt"), &cert.pem());
        self.write(&format!("{name}.key"), &key.serialize_pem());
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// `mosquitto_pub` at QoS 1 over TLS with a client certificate (`None`: without one). It returns
/// after the PUBACK; `false` when the connection was refused.
fn tls_publish(pki: &Pki, port: u16, client: Option<&str>, topic: &str, payload: &str) -> bool {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["--cafile", &pki.path("plant-ca.crt")])
        .args(["-t", topic, "-m", payload])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(c) = client {
        cmd.args(["--cert", &pki.path(&format!("{c}.crt"))])
            .args(["--key", &pki.path(&format!("{c}.key"))]);
    }
    cmd.status().expect("run mosquitto_pub").success()
}

#[tokio::test]
async fn with_certificates_the_common_name_is_the_account_of_the_same_acl() {
    let pki_dir = tempfile::tempdir().expect("PKI dir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(pki_dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("open the PKI dir");
    }
    let pki = Pki::new(pki_dir.path());
    pki.issue(
        "broker",
        "127.0.0.1",
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    pki.issue(
        "agent",
        "agent-al-yunnan-03",
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    pki.issue(
        "operator",
        "operator-control-room",
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );

    // plant.conf as shipped, with its certificate option switched on, plus a plain listener on
    // another port for the test observer (it logs in with a password).
    let tls_port = free_port();
    let conf = derive(
        "plant.conf",
        &read_deploy("plant.conf"),
        &[
            Rule::Replace("listener", format!("listener {tls_port} 127.0.0.1")),
            Rule::Replace("cafile", format!("cafile {}", pki.path("plant-ca.crt"))),
            Rule::Replace("certfile", format!("certfile {}", pki.path("broker.crt"))),
            Rule::Replace("keyfile", format!("keyfile {}", pki.path("broker.key"))),
            Rule::Replace("#require_certificate", "require_certificate true".into()),
            Rule::Replace(
                "#use_identity_as_username",
                "use_identity_as_username true".into(),
            ),
            Rule::Replace("password_file", "password_file @PASSWD@".into()),
            Rule::Replace("acl_file", "acl_file @ACL@".into()),
        ],
    );
    let conf = format!("{conf}\nlistener @PORT@ 127.0.0.1\n");
    let broker = Broker::start(&conf, &read_deploy("plant.acl"), &[]);
    let mut observer = observer_of(&broker).await;

    // Without a client certificate the TLS listener lets nobody in.
    assert!(
        !tls_publish(&pki, tls_port, None, &site("events/x"), "no-cert"),
        "a client without a certificate was let in"
    );
    // The agent's certificate (CN=agent-al-yunnan-03) gets the agent's rules; the operator's
    // certificate gets the operator's (it connects, but its publish goes nowhere).
    let steps = [
        (
            Some("agent"),
            "smeltwatch/cu-other-01/live/gw/dev",
            "forbidden",
        ),
        (
            Some("agent"),
            "smeltwatch/al-yunnan-03/live/potroom_gw/pot_001",
            "allowed",
        ),
        (
            Some("operator"),
            "smeltwatch/al-yunnan-03/live/potroom_gw/pot_001",
            "forged",
        ),
        (
            Some("agent"),
            "smeltwatch/al-yunnan-03/events/marker",
            "marker",
        ),
    ];
    for (client, topic, payload) in steps {
        assert!(
            tls_publish(&pki, tls_port, client, topic, payload),
            "{client:?} could not connect over TLS"
        );
    }
    let seen = observer.until(&site("events/marker")).await;
    assert_eq!(
        seen,
        vec![
            (site("live/potroom_gw/pot_001"), "allowed".to_owned()),
            (site("events/marker"), "marker".to_owned()),
        ]
    );
}
