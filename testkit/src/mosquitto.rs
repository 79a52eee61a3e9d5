//! A real Mosquitto broker for integration tests, on a free loopback port, with helpers to stop,
//! kill and restart it on the same port, and a subscriber that returns only after its SUBACK.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::free_port;

/// Largest packet the test broker and subscribers accept.
pub const MAX_PACKET: usize = 4 * 1024 * 1024;

/// A running `mosquitto` process. Dropping it kills the process.
pub struct Mosquitto {
    pub port: u16,
    /// With a TLS listener on `port`: a second, plain listener for test subscribers.
    pub plain_port: Option<u16>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Logins in the password file; empty: anonymous access.
    users: Vec<(String, String)>,
    persistent: bool,
    tls: Option<TlsListener>,
    /// Mosquitto's `max_packet_size`: a client sending a larger packet is disconnected.
    max_packet: usize,
}

/// PEM files of a TLS listener (`cafile`, `certfile`, `keyfile`).
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// CA that client certificates must chain to.
    pub ca: PathBuf,
    /// The broker's certificate chain.
    pub cert: PathBuf,
    /// The broker's private key.
    pub key: PathBuf,
    /// `require_certificate true`: clients must present a certificate signed by `ca`.
    pub require_certificate: bool,
}

impl Mosquitto {
    /// Anonymous access, no persistence.
    pub fn start() -> Mosquitto {
        Self::launch(Vec::new(), false)
    }

    /// Only `user`/`password` may connect.
    pub fn start_with_user(user: &str, password: &str) -> Mosquitto {
        Self::start_with_users(&[(user, password)])
    }

    /// Only these logins may connect.
    pub fn start_with_users(users: &[(&str, &str)]) -> Mosquitto {
        Self::launch(owned(users), false)
    }

    /// Anonymous access with persistence saved after every change, so that persistent sessions
    /// (subscriptions, queued QoS 1 messages) survive a SIGKILL as far as they were saved.
    pub fn start_persistent() -> Mosquitto {
        Self::launch(Vec::new(), true)
    }

    /// Anonymous access; the broker disconnects a client that sends a packet of more than
    /// `max_packet` bytes.
    pub fn start_with_max_packet(max_packet: usize) -> Mosquitto {
        let mut m = Self::configured(Vec::new(), false, None);
        m.max_packet = max_packet;
        m.spawn();
        m
    }

    /// Restart on the same port with another `max_packet_size`.
    pub fn restart_with_max_packet(&mut self, max_packet: usize) {
        self.kill();
        self.max_packet = max_packet;
        self.spawn();
    }

    /// Anonymous access over TLS only.
    pub fn start_tls(tls: TlsListener) -> Mosquitto {
        Self::launch_with(Vec::new(), false, Some(tls))
    }

    fn launch(users: Vec<(String, String)>, persistent: bool) -> Mosquitto {
        Self::launch_with(users, persistent, None)
    }

    fn launch_with(
        users: Vec<(String, String)>,
        persistent: bool,
        tls: Option<TlsListener>,
    ) -> Mosquitto {
        let mut m = Self::configured(users, persistent, tls);
        m.spawn();
        m
    }

    fn configured(
        users: Vec<(String, String)>,
        persistent: bool,
        tls: Option<TlsListener>,
    ) -> Mosquitto {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir for mosquitto");
        let plain_port = tls.as_ref().map(|_| free_port());
        Mosquitto {
            port,
            plain_port,
            child: None,
            dir,
            users,
            persistent,
            tls,
            max_packet: MAX_PACKET,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The persistence file (exists once Mosquitto has saved something).
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.db")
    }

    fn write_config(&self) -> PathBuf {
        let conf = self.dir.path().join("mosquitto.conf");
        let mut text = format!(
            "listener {} 127.0.0.1\nmax_packet_size {}\nmax_queued_messages 0\n\
             max_inflight_messages 0\nlog_dest stderr\nlog_type error\nlog_type warning\n",
            self.port, self.max_packet
        );
        if let Some(tls) = &self.tls {
            text.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display(),
                tls.require_certificate
            ));
        }
        if let Some(plain) = self.plain_port {
            // Settings above apply to the TLS listener; this one is plain TCP.
            text.push_str(&format!("listener {plain} 127.0.0.1\n"));
        }
        if self.persistent {
            // Started as root, Mosquitto drops to its own user, which must be able to write here.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("make the persistence directory writable");
            text.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_on_changes true\nautosave_interval 1\n",
                self.dir.path().display()
            ));
        } else {
            text.push_str("persistence false\n");
        }
        if self.users.is_empty() {
            text.push_str("allow_anonymous true\n");
        } else {
            let pw = self.dir.path().join("passwd");
            std::fs::write(&pw, "").expect("create password file");
            for (user, password) in &self.users {
                let status = Command::new("mosquitto_passwd")
                    .arg("-b")
                    .arg(&pw)
                    .arg(user)
                    .arg(password)
                    .status()
                    .expect("run mosquitto_passwd");
                assert!(status.success(), "mosquitto_passwd failed");
            }
            text.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                pw.display()
            ));
        }
        let mut f = std::fs::File::create(&conf).expect("write mosquitto.conf");
        f.write_all(text.as_bytes()).expect("write mosquitto.conf");
        conf
    }

    fn spawn(&mut self) {
        let conf = self.write_config();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mosquitto (is it installed?)");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Poll TCP connects until the broker accepts one (10 s deadline).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("mosquitto exited at start-up: {status}");
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not accept connections on {} within 10 s",
                self.addr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait: a clean broker shutdown.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// The broker's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOP: the process freezes; its TCP connections stay open but silent (the kernel still
    /// acknowledges segments and completes handshakes into the listen backlog).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Mosquitto::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let status = Command::new("kill")
                .arg(sig)
                .arg(pid.to_string())
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {sig} {pid} failed");
        }
    }

    /// SIGKILL and wait: the broker vanishes without closing anything cleanly.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port (after `stop` or `kill`; kills a running one first).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Replace the logins without a restart: rewrite the password file and SIGHUP the broker,
    /// which rereads it (connected clients whose login is still in the file stay connected).
    pub fn reload_users(&mut self, users: &[(&str, &str)]) {
        self.users = owned(users);
        self.write_config();
        self.signal("-HUP");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

fn owned(users: &[(&str, &str)]) -> Vec<(String, String)> {
    users
        .iter()
        .map(|(u, p)| ((*u).to_owned(), (*p).to_owned()))
        .collect()
}

/// Options for a test subscriber.
pub struct SubscribeOptions {
    /// `None`: a clean session with a generated id; `Some(id)`: a persistent session with that id.
    pub persistent_id: Option<String>,
    /// Login, if the broker needs one.
    pub user: Option<(String, String)>,
}

/// Subscribe to `topic` at QoS 1 with a clean session; returns after the SUBACK.
pub async fn subscribe(port: u16, topic: &str) -> (AsyncClient, mpsc::Receiver<(String, Vec<u8>)>) {
    subscribe_with(
        port,
        topic,
        SubscribeOptions {
            persistent_id: None,
            user: None,
        },
    )
    .await
}

/// Subscribe to `topic` at QoS 1 with a persistent session under a fresh client id: the broker
/// keeps what it accepted for this subscriber while it reconnects (after a broker restart, say).
pub async fn subscribe_persistent(
    port: u16,
    topic: &str,
) -> (AsyncClient, mpsc::Receiver<(String, Vec<u8>)>) {
    subscribe_with(
        port,
        topic,
        SubscribeOptions {
            persistent_id: Some(format!("test-persistent-sub-{}", fastrand::u64(..))),
            user: None,
        },
    )
    .await
}

/// Subscribe with options; returns after the SUBACK. The event loop keeps running in a task: it
/// reconnects after errors (every 50 ms) and, on a clean session, subscribes again after each
/// reconnect. Received publishes go to the channel as `(topic, payload)`.
pub async fn subscribe_with(
    port: u16,
    topic: &str,
    opts: SubscribeOptions,
) -> (AsyncClient, mpsc::Receiver<(String, Vec<u8>)>) {
    let persistent = opts.persistent_id.is_some();
    let id = opts
        .persistent_id
        .unwrap_or_else(|| format!("test-sub-{}", fastrand::u64(..)));
    let mut o = MqttOptions::new(id, ("127.0.0.1".to_owned(), port));
    o.set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_keep_alive(30)
        .set_clean_session(!persistent);
    if persistent {
        // Acknowledge a message only once it is in the test's channel: if the connection drops
        // with messages read (and, in automatic mode, already acknowledged) but not yet handed
        // over, the broker delivers them again instead of the test seeing a gap.
        o.set_ack_mode(rumqttc::AckMode::Manual);
    }
    if let Some((u, p)) = opts.user {
        o.set_credentials(u, p);
    }
    // Room for the manual acks of a whole flood of messages.
    let capacity = if persistent { 1 << 16 } else { 64 };
    let (client, mut eventloop) = AsyncClient::builder(o).capacity(capacity).build();
    let (tx, rx) = mpsc::channel(1_000_000);
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(1);
    let resub = client.clone();
    let topic_owned = topic.to_owned();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if !first && !ack.session_present {
                        let _ = resub.try_subscribe(topic_owned.clone(), QoS::AtLeastOnce);
                    }
                    first = false;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.try_send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let t = String::from_utf8_lossy(&p.topic).into_owned();
                    if tx.send((t, p.payload.to_vec())).await.is_err() {
                        return;
                    }
                    // Queued without waiting: this task is the one that drains the queue.
                    if persistent && resub.try_ack(&p).is_err() {
                        tracing::debug!("ack queue full; the broker will deliver again");
                    }
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::RequestsDone) => return,
                Err(e) => {
                    eprintln!("test subscriber {topic_owned}: {e}; reconnecting");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    client
        .subscribe(topic.to_owned(), QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
        .await
        .expect("SUBACK within 10 s")
        .expect("subscriber task alive");
    (client, rx)
}

/// An independent witness: a `mosquitto_sub` process (libmosquitto, not rumqttc) subscribed at
/// QoS 1, collecting every payload it prints. Used where a test must tell a loss in the agent
/// from a loss in the test's own subscriber. Dropping it kills the process.
pub struct CliWitness {
    child: Child,
    payloads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl CliWitness {
    /// Subscribe to `topic` on the broker at `port`; returns once a probe message published after
    /// the subscription has come through (so nothing published later can be missed). `None` when
    /// `mosquitto_sub` is not installed.
    pub fn start(port: u16, topic: &str) -> Option<CliWitness> {
        use std::io::BufRead;
        let probe_topic = format!("witness/probe/{}", fastrand::u64(..));
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-v"])
            // A persistent session: a reconnect of the witness itself loses nothing.
            .args([
                "-c",
                "-i",
                &format!("witness-{}", fastrand::u64(..)),
                "-k",
                "60",
            ])
            .args(["-t", topic, "-t", &probe_topic])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let payloads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (probe_seen_tx, probe_seen_rx) = std::sync::mpsc::channel::<()>();
        let sink = payloads.clone();
        let probe = probe_topic.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                match line.split_once(' ') {
                    Some((t, _)) if t == probe => {
                        let _ = probe_seen_tx.send(());
                    }
                    Some((_, payload)) => sink.lock().unwrap().push(payload.to_owned()),
                    None => {}
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let _ = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
                .args(["-t", &probe_topic, "-m", "probe"])
                .status();
            if probe_seen_rx
                .recv_timeout(Duration::from_millis(200))
                .is_ok()
            {
                return Some(CliWitness { child, payloads });
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto_sub witness did not see its probe within 10 s"
            );
        }
    }

    /// Every payload received so far (probe excluded), in arrival order.
    pub fn payloads(&self) -> Vec<String> {
        self.payloads.lock().unwrap().clone()
    }
}

impl Drop for CliWitness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
