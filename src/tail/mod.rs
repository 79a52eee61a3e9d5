//! `smeltwatch tail`: the operators' live view of what smeltwatch publishes on a broker.
//!
//! It is a plain MQTT subscriber (it never publishes, and never asks an edge node for a
//! rebirth), so it can watch any broker an uplink delivers to, from any machine that may
//! subscribe there, without touching the agent. Three parts, kept apart so each can be tested on
//! its own:
//! - [`decode`]: `(topic, payload)` → [`Message`], for JSON, protobuf and Sparkplug B (which needs
//!   the aliases of the births, so the decoder has state);
//! - [`state`]: a pure [`State`] that folds messages into what the screen shows (KPIs, cells by
//!   voltage, stacks against limits, uplinks, derived points, recent events), behind the
//!   `--filter` globs;
//! - [`render`] draws a state with ratatui; [`plain`] prints one line per message instead
//!   (`--plain`, for pipes and logs).
//!
//! This module owns the I/O: the MQTT connection (address, credentials and TLS as for uplinks,
//! TLS through [`crate::mqtt::tls`]), the terminal, and shutdown.
//!
//! What the agent publishes decides what can be shown: uplink state comes from the retained
//! status topic (online/offline), from `outage` events (duration, records dropped) and from
//! records marked `historical` (a backlog being replayed); the spool's exact depth is only on
//! `/metrics`. Stack limits come from `--config` (the `[calc.stacks]` limit tables) or from the
//! `limit_mg_m3` of exceedance events.

pub mod decode;
pub mod plain;
pub mod render;
pub mod state;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{self, BrokerUrl, HostPort, Secret, TlsSettings, UplinkKind};
use crate::mqtt::subscriber::{self, Endpoint};

pub use decode::{Decoder, Message};
pub use state::{Filter, State};

/// The broker of `smeltwatch demo` (its embedded broker's preferred address).
pub const DEMO_BROKER: &str = "mqtt://127.0.0.1:1883";
/// Topics subscribed by default: everything under the default templates and all Sparkplug B.
pub const DEFAULT_TOPICS: [&str; 2] = ["smeltwatch/#", "spBv1.0/#"];
/// How often the screen is redrawn while messages arrive.
const FRAME: Duration = Duration::from_millis(250);

/// `smeltwatch tail` flags (`--broker`, `--plain`, `--filter` are a contract scripts rely on).
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Broker, `mqtt://host:port` or `mqtts://host:port` [default: the first MQTT uplink of
    /// --config, else the demo's broker, mqtt://127.0.0.1:1883].
    #[arg(long)]
    pub broker: Option<String>,
    /// One line per message on stdout instead of the live screen (for pipes and logs).
    #[arg(long)]
    pub plain: bool,
    /// Show only messages whose site, line, stack, source or device (or event subject, or
    /// Sparkplug group/edge/device) matches this glob (`*`, `?`); repeat for several.
    #[arg(long, value_name = "GLOB")]
    pub filter: Vec<String>,
    /// Topic filter to subscribe to; repeat for several [default: smeltwatch/# and spBv1.0/#,
    /// or the prefixes of --config's topic templates].
    #[arg(long, value_name = "TOPIC")]
    pub topic: Vec<String>,
    /// A site configuration: broker, credentials and TLS of its first MQTT (or Sparkplug) uplink,
    /// its topic templates, and the stack limits of `[calc]`.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// With --config: take the connection of this uplink instead of the first one.
    #[arg(long, requires = "config")]
    pub uplink: Option<String>,
    /// User name.
    #[arg(long)]
    pub username: Option<String>,
    /// File holding the password (first line).
    #[arg(long, requires = "username")]
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) the broker's certificate must chain to (mqtts); system roots
    /// otherwise.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --key-file.
    #[arg(long, requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Name checked against the broker's certificate (and sent as SNI) instead of the host.
    #[arg(long)]
    pub server_name: Option<String>,
    /// Stop after this long (for scripted runs); runs until q, Esc or Ctrl-C otherwise.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

/// Everything `tail` needs, resolved from the flags (and `--config`).
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS on.
    pub tls: bool,
    /// TLS files and server name.
    pub tls_settings: TlsSettings,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// Topic filters.
    pub topics: Vec<String>,
    /// Message filter.
    pub filter: Filter,
    /// One line per message.
    pub plain: bool,
    /// Known concentration limits: `(stack, pollutant, mg/m³)`.
    pub limits: Vec<(String, String, f64)>,
}

impl TailOptions {
    /// `mqtt://host:port` or `mqtts://host:port`, for display.
    pub fn broker_url(&self) -> String {
        BrokerUrl {
            addr: HostPort {
                host: self.host.clone(),
                port: self.port,
            },
            tls: self.tls,
        }
        .to_string()
    }

    /// Resolve the flags: `--config` first, then the flags that override it.
    pub fn from_args(args: &TailArgs) -> anyhow::Result<TailOptions> {
        let mut opts = TailOptions {
            host: "127.0.0.1".into(),
            port: config::MQTT_PORT,
            tls: false,
            tls_settings: TlsSettings::default(),
            username: None,
            password: None,
            topics: Vec::new(),
            filter: Filter::new(args.filter.clone()),
            plain: args.plain,
            limits: Vec::new(),
        };
        if let Some(path) = &args.config {
            let cfg = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            opts.apply_config(&cfg, args.uplink.as_deref())
                .with_context(|| path.display().to_string())?;
        }
        if let Some(url) = &args.broker {
            let url: BrokerUrl = url.parse().map_err(|e: crate::config::BrokerUrlError| {
                anyhow::anyhow!(e.for_flag("--broker"))
            })?;
            (opts.host, opts.port, opts.tls) = (url.addr.host, url.addr.port, url.tls);
        }
        if let Some(u) = &args.username {
            opts.username = Some(u.clone());
            opts.password = None;
        }
        if let Some(path) = &args.password_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--password-file {}", path.display()))?;
            let first = text.lines().next().unwrap_or("").to_owned();
            opts.password = Some(Secret(first));
        }
        let t = &mut opts.tls_settings;
        t.ca_file = args.ca_file.clone().or(t.ca_file.take());
        t.cert_file = args.cert_file.clone().or(t.cert_file.take());
        t.key_file = args.key_file.clone().or(t.key_file.take());
        t.server_name = args.server_name.clone().or(t.server_name.take());
        if !args.topic.is_empty() {
            opts.topics = args.topic.clone();
        }
        if opts.topics.is_empty() {
            opts.topics = DEFAULT_TOPICS.iter().map(|t| (*t).to_owned()).collect();
        }
        Ok(opts)
    }

    fn apply_config(&mut self, cfg: &config::Config, uplink: Option<&str>) -> anyhow::Result<()> {
        let mqtt_of = |u: &config::UplinkConfig| match &u.kind {
            UplinkKind::Mqtt(m) => Some(m.clone()),
            UplinkKind::Sparkplug(s) => Some(s.mqtt.clone()),
            UplinkKind::Hj212(_) => None,
        };
        let chosen = match uplink {
            Some(name) => {
                let u = cfg
                    .uplinks
                    .iter()
                    .find(|u| u.name == name)
                    .with_context(|| format!("no uplink named {name:?}"))?;
                mqtt_of(u).with_context(|| format!("uplink {name:?} is not an MQTT uplink"))?
            }
            None => cfg
                .uplinks
                .iter()
                .find_map(mqtt_of)
                .context("the configuration has no MQTT or Sparkplug uplink")?,
        };
        self.host = chosen.broker.host.clone();
        self.port = chosen.broker.port;
        self.tls = chosen.tls;
        self.tls_settings = chosen.tls_settings.clone();
        self.username = chosen.username.clone();
        self.password = chosen.password.clone();
        // Subscribe to the fixed prefix of each MQTT uplink's templates, and to Sparkplug.
        for u in &cfg.uplinks {
            match &u.kind {
                UplinkKind::Mqtt(m) => {
                    let t = &m.topics;
                    for template in [&t.live, &t.metrics, &t.events, &t.emissions, &t.status] {
                        let filter = topic_prefix_filter(template, &cfg.site);
                        if !self.topics.contains(&filter) {
                            self.topics.push(filter);
                        }
                    }
                }
                UplinkKind::Sparkplug(s) => {
                    let filter = format!("spBv1.0/{}/#", s.group_id);
                    if !self.topics.contains(&filter) {
                        self.topics.push(filter);
                    }
                }
                UplinkKind::Hj212(_) => {}
            }
        }
        if let Some(calc) = &cfg.calc {
            self.limits = stack_limits(calc)?;
        }
        Ok(())
    }
}

/// The subscription that covers a topic template: `{site}` filled in, everything from the first
/// other placeholder's level on replaced by `#` (`smeltwatch/{site}/live/{source}/{device}` →
/// `smeltwatch/demo-al-01/live/#`).
pub fn topic_prefix_filter(template: &str, site: &str) -> String {
    let filled = template.replace("{site}", &crate::codec::topic::sanitise(site));
    let mut levels = Vec::new();
    for level in filled.split('/') {
        if level.contains('{') {
            levels.push("#");
            return levels.join("/");
        }
        levels.push(level);
    }
    levels.join("/")
}

/// The concentration limit of every pollutant of every `[[calc.stacks]]` with a limit table.
pub fn stack_limits(calc: &crate::calc::CalcConfig) -> anyhow::Result<Vec<(String, String, f64)>> {
    Ok(crate::calc::limits::stack_limits(calc)?
        .into_iter()
        .map(|l| (l.stack, l.pollutant, l.limit_mg_m3))
        .collect())
}

/// The connection as the screen's title shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Link {
    Connecting,
    Subscribed,
    Down(String),
}

/// Connect, subscribe after every CONNACK, and forward every PUBLISH as `(topic, payload)`.
/// Reconnects every second after a failure; ends when `shutdown` fires or `tx` is closed.
async fn subscriber(
    opts: &TailOptions,
    tx: mpsc::Sender<(String, Vec<u8>)>,
    link: watch::Sender<Link>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let endpoint = Endpoint {
        host: &opts.host,
        port: opts.port,
        tls: opts.tls.then_some(&opts.tls_settings),
        credentials: opts
            .username
            .as_deref()
            .map(|u| (u, opts.password.as_ref().map(|p| p.0.as_str()))),
    };
    let o = subscriber::options("tail", &endpoint)?;
    let (client, mut eventloop) = AsyncClient::builder(o).capacity(64).build();
    let subscribe = |client: &AsyncClient| {
        for t in &opts.topics {
            if let Err(e) = client.try_subscribe(t.clone(), QoS::AtMostOnce) {
                tracing::warn!("cannot subscribe to {t}: {e}");
            }
        }
    };
    let mut acks_missing = 0usize;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                acks_missing = opts.topics.len();
                subscribe(&client);
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                acks_missing = acks_missing.saturating_sub(1);
                if acks_missing == 0 {
                    let _ = link.send(Link::Subscribed);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                if tx.send((topic, p.payload.to_vec())).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let why = crate::mqtt::tls::explain(&e).unwrap_or_else(|| e.to_string());
                let _ = link.send(Link::Down(why));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let _ = link.send(Link::Connecting);
            }
        }
    }
    let _ = client.try_disconnect();
    Ok(())
}

/// Run `tail` until `shutdown` fires (or, on the live screen, q / Esc / Ctrl-C).
pub async fn run(opts: TailOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(4096);
    let (link_tx, link_rx) = watch::channel(Link::Connecting);
    let sub_opts = opts.clone();
    let sub_shutdown = shutdown.child_token();
    let sub_stop = sub_shutdown.clone();
    let subscriber =
        tokio::spawn(async move { subscriber(&sub_opts, tx, link_tx, sub_shutdown).await });
    let result = if opts.plain {
        run_plain(&opts, rx, link_rx, &shutdown).await
    } else {
        run_screen(&opts, rx, link_rx, &shutdown).await
    };
    sub_stop.cancel();
    match subscriber.await {
        Ok(Err(e)) => return Err(e),
        Err(e) => bail!("the MQTT subscriber failed: {e}"),
        Ok(Ok(())) => {}
    }
    result
}

async fn run_plain(
    opts: &TailOptions,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    mut link: watch::Receiver<Link>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut decoder = Decoder::new();
    let mut stdout = std::io::stdout().lock();
    // A broker that stays down is reported once per reason, not once per retry.
    let mut last_down: Option<String> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            changed = link.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                // Status goes to stderr so that stdout holds only messages.
                match &*link.borrow_and_update() {
                    Link::Subscribed => {
                        last_down = None;
                        eprintln!(
                            "tail: subscribed to {} on {}",
                            opts.topics.join(", "),
                            opts.broker_url()
                        );
                    }
                    Link::Down(why) => {
                        if last_down.as_deref() != Some(why.as_str()) {
                            eprintln!("tail: {}: {why} (retrying every second)", opts.broker_url());
                            last_down = Some(why.clone());
                        }
                    }
                    Link::Connecting => {}
                }
            }
            msg = rx.recv() => {
                let Some((topic, payload)) = msg else { return Ok(()) };
                match decoder.decode(&topic, &payload) {
                    Ok(m) => {
                        if opts.filter.accepts(&m) {
                            // A closed pipe (`| head`) ends tail quietly.
                            if writeln!(stdout, "{}", plain::line(&m)).and_then(|_| stdout.flush()).is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Err(e) => eprintln!("tail: {e}"),
                }
            }
        }
    }
}

async fn run_screen(
    opts: &TailOptions,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    mut link: watch::Receiver<Link>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    use crossterm::event::{Event as TermEvent, EventStream, KeyCode, KeyEventKind, KeyModifiers};
    use futures_util::StreamExt as _;

    let mut state = State::new(opts.filter.clone());
    for (stack, pollutant, limit) in &opts.limits {
        state.set_limit(stack, pollutant, *limit);
    }
    let mut decoder = Decoder::new();
    let mut terminal = ratatui::try_init().context("cannot set up the terminal (use --plain)")?;
    let _restore = RestoreTerminal;
    let mut keys = EventStream::new();
    let mut frame = tokio::time::interval(FRAME);
    let mut dirty = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = frame.tick() => {
                if dirty {
                    let title = match &*link.borrow_and_update() {
                        Link::Subscribed => opts.broker_url(),
                        Link::Connecting => format!("{} (connecting)", opts.broker_url()),
                        Link::Down(why) => format!("{} (down: {why})", opts.broker_url()),
                    };
                    terminal.draw(|f| render::draw(f, &state, &title))?;
                    dirty = false;
                }
            }
            msg = rx.recv() => {
                let Some((topic, payload)) = msg else { break };
                match decoder.decode(&topic, &payload) {
                    Ok(m) => { state.apply(&m); }
                    Err(e) => state.decode_error(e.to_string()),
                }
                dirty = true;
            }
            key = keys.next() => match key {
                Some(Ok(TermEvent::Key(k))) if k.kind == KeyEventKind::Press => {
                    let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                        break;
                    }
                }
                Some(Ok(TermEvent::Resize(..))) => dirty = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("reading the terminal"),
                None => break,
            },
        }
        // The link state changes the title.
        if link.has_changed().unwrap_or(false) {
            dirty = true;
        }
    }
    Ok(())
}

/// Puts the terminal back (raw mode off, main screen) however the screen loop ends.
struct RestoreTerminal;

impl Drop for RestoreTerminal {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Decode a recorded stream into a state (for tests and screenshots): `(topic, payload)` in
/// arrival order.
pub fn replay<'a>(
    state: &mut State,
    decoder: &mut Decoder,
    messages: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) {
    for (topic, payload) in messages {
        match decoder.decode(topic, payload) {
            Ok(m) => {
                state.apply(&m);
            }
            Err(e) => state.decode_error(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_prefixes_become_subscriptions() {
        assert_eq!(
            topic_prefix_filter("smeltwatch/{site}/live/{source}/{device}", "al-01"),
            "smeltwatch/al-01/live/#"
        );
        assert_eq!(
            topic_prefix_filter("smeltwatch/{site}/status", "al/01"),
            "smeltwatch/al_01/status"
        );
        assert_eq!(topic_prefix_filter("{site}/m/{calc}", "x"), "x/m/#");
    }

    #[test]
    fn demo_config_gives_connection_topics_and_stack_limits() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::app::demo::demo_config(dir.path()).unwrap();
        let mut opts = TailOptions::from_args(&TailArgs {
            broker: None,
            plain: true,
            filter: vec![],
            topic: vec![],
            config: None,
            uplink: None,
            username: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            duration: None,
        })
        .unwrap();
        assert_eq!(opts.broker_url(), DEMO_BROKER);
        assert_eq!(opts.topics, DEFAULT_TOPICS);
        opts.topics.clear();
        opts.apply_config(&cfg, None).unwrap();
        assert_eq!(opts.broker_url(), "mqtt://127.0.0.1:1883");
        assert!(
            opts.topics
                .contains(&"smeltwatch/demo-al-01/live/#".to_owned())
        );
        assert!(
            opts.topics
                .contains(&"smeltwatch/demo-al-01/status".to_owned())
        );
        // GB 25465-2010 general limits of the potline's stack (config/coefficients/cn-2025.toml).
        let so2 = opts
            .limits
            .iter()
            .find(|(s, p, _)| s == "gtc1_stack" && p == "so2")
            .unwrap();
        assert_eq!(so2.2, 200.0);
        assert!(opts.apply_config(&cfg, Some("nope")).is_err());
    }
}
