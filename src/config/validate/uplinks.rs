//! `[[uplinks]]` of type `mqtt` and `sparkplug`: the broker, credentials, TLS, topics and the
//! Sparkplug identity; and what every uplink type shares (streams, spool, keys that do not apply).

use std::collections::HashMap;
use std::time::Duration;

use super::Builder;
use super::shared::no_host;
use crate::config::broker_url::BrokerUrl;
use crate::config::defaults;
use crate::config::locate::KeyPath;
use crate::config::model::{
    HostPort, MqttConfig, Secret, SparkplugConfig, SpoolConfig, TlsSettings, TopicTemplates,
    UplinkConfig, UplinkKind,
};
use crate::config::raw::{
    RawConfig, RawSpool, RawSynchronous, RawTls, RawTopics, RawUplink, RawUplinkType,
};
use crate::model::Stream;

/// The MQTT session settings of an uplink, checked.
struct Session {
    keep_alive: Duration,
    max_packet_size: usize,
    max_inflight: u16,
    reconnect_min: Duration,
    reconnect_max: Duration,
}

impl Builder<'_, '_> {
    /// `[[uplinks]]`: each uplink, with names unique across the site.
    pub(super) fn uplinks(&mut self, raw: &RawConfig, root: &KeyPath) -> Vec<UplinkConfig> {
        let mut uplinks = Vec::new();
        let mut uplink_names: HashMap<String, usize> = HashMap::new();
        for (i, uplink) in raw.uplinks.iter().enumerate() {
            let uplink_path = root.key("uplinks").index(i);
            if let Some(first) = uplink_names.get(&uplink.name) {
                self.report.at(
                    &uplink_path.key("name"),
                    format!(
                        "duplicate uplink name `{}`, already used by uplinks[{first}]",
                        uplink.name
                    ),
                );
            } else {
                uplink_names.insert(uplink.name.clone(), i);
            }
            uplinks.push(self.uplink(&raw.site, uplink, &uplink_path));
        }
        uplinks
    }

    /// One uplink: its name, then the settings of its type.
    fn uplink(&mut self, site: &str, raw: &RawUplink, path: &KeyPath) -> UplinkConfig {
        if raw.name.is_empty()
            || !raw
                .name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            self.report.at(
                &path.key("name"),
                format!(
                    "invalid uplink name `{}`: it names the spool file, so only letters, digits, `_` and `-` are allowed",
                    raw.name
                ),
            );
        }
        if raw.kind == RawUplinkType::Hj212 {
            return self.hj212_uplink(raw, path);
        }
        let kind_name = if raw.kind == RawUplinkType::Sparkplug {
            "sparkplug"
        } else {
            "mqtt"
        };
        self.not_for_kind(
            path,
            kind_name,
            &[
                ("platform", raw.platform.is_some()),
                // An MQTT uplink takes `[uplinks.hj212]` for its `hj212` encoding.
                ("hj212", raw.hj212.is_some() && kind_name == "sparkplug"),
            ],
        );
        let (mqtt, streams, spool) = self.mqtt(site, raw, path);
        if raw.kind == RawUplinkType::Sparkplug {
            return self.sparkplug_uplink(raw, path, mqtt, spool);
        }
        self.not_for_kind(
            path,
            "mqtt",
            &[
                ("group_id", raw.group_id.is_some()),
                ("edge_node_id", raw.edge_node_id.is_some()),
                ("primary_host_id", raw.primary_host_id.is_some()),
                ("device_writes", raw.device_writes.is_some()),
            ],
        );
        UplinkConfig {
            name: raw.name.clone(),
            kind: UplinkKind::Mqtt(mqtt),
            streams,
            spool,
        }
    }

    /// What MQTT and Sparkplug uplinks share: the broker session, and the streams and spool.
    fn mqtt(
        &mut self,
        site: &str,
        raw: &RawUplink,
        path: &KeyPath,
    ) -> (MqttConfig, Vec<Stream>, SpoolConfig) {
        let (broker, tls) = self.broker(raw, path);
        let client_id = raw
            .client_id
            .clone()
            .unwrap_or_else(|| format!("smeltwatch-{site}-{}", raw.name));
        if client_id.is_empty() {
            self.report
                .at(&path.key("client_id"), "client_id must not be empty");
        }
        let password = self.password(raw, path);
        if password.is_some() && raw.username.is_none() {
            self.report.at(
                &path.key("username"),
                "a password needs a `username` (MQTT 3.1.1 sends no password without a user name)",
            );
        }
        let session = self.session(raw, path);
        let streams = self.streams(
            raw.streams.as_ref(),
            path,
            &[
                Stream::Live,
                Stream::Metrics,
                Stream::Events,
                Stream::Emissions,
            ],
        );
        let topics = self.topics(raw.topics.as_ref(), path);
        let tls_settings = self.tls(raw.tls.as_ref(), tls, path);
        let replay_rate = raw.replay_rate.unwrap_or(defaults::REPLAY_RATE);
        if replay_rate == 0 {
            self.report.at(
                &path.key("replay_rate"),
                "replay_rate must be at least 1 record per second",
            );
        }
        let spool = self.spool(raw.spool.as_ref(), path);
        let mqtt = MqttConfig {
            broker,
            tls,
            client_id,
            username: raw.username.clone(),
            password,
            keep_alive: session.keep_alive,
            max_packet_size: session.max_packet_size,
            max_inflight: session.max_inflight,
            reconnect_min: session.reconnect_min,
            reconnect_max: session.reconnect_max,
            topics,
            encoding: if raw.kind == RawUplinkType::Sparkplug {
                Default::default()
            } else {
                self.mqtt_encoding(raw, path, &streams)
            },
            tls_settings,
            replay_rate,
        };
        (mqtt, streams, spool)
    }

    /// `broker`: the address and whether it is `mqtts://`.
    fn broker(&mut self, raw: &RawUplink, path: &KeyPath) -> (HostPort, bool) {
        let broker_url = raw.broker.as_deref().ok_or_else(|| {
            "missing `broker`, expected mqtt://host:port or mqtts://host:port".to_owned()
        });
        let parsed =
            broker_url.and_then(|text| text.parse::<BrokerUrl>().map_err(|e| e.to_string()));
        match parsed {
            Ok(url) => (url.addr, url.tls),
            Err(message) => {
                self.report.at(&path.key("broker"), message);
                (no_host(), false)
            }
        }
    }

    /// `keep_alive`, `max_packet_size`, `max_inflight` and the reconnect delays.
    fn session(&mut self, raw: &RawUplink, path: &KeyPath) -> Session {
        let keep_alive = raw.keep_alive.unwrap_or(defaults::KEEP_ALIVE);
        if keep_alive < Duration::from_secs(1) || keep_alive > Duration::from_secs(65535) {
            self.report.at(
                &path.key("keep_alive"),
                format!(
                    "keep_alive = {} is out of range, expected 1s..=65535s",
                    humantime::format_duration(keep_alive)
                ),
            );
        }
        let max_packet_size = raw.max_packet_size.unwrap_or(defaults::MAX_PACKET_SIZE);
        if max_packet_size == 0 {
            self.report.at(
                &path.key("max_packet_size"),
                "max_packet_size must be greater than zero",
            );
        }
        let max_inflight = raw.max_inflight.unwrap_or(defaults::MAX_INFLIGHT);
        if !(1..=65535).contains(&max_inflight) {
            self.report.at(
                &path.key("max_inflight"),
                format!("max_inflight = {max_inflight} is out of range, expected 1..=65535"),
            );
        }
        let (reconnect_min, reconnect_max) = self.reconnect_range(
            path,
            (raw.reconnect_min, raw.reconnect_max),
            (defaults::MQTT_RECONNECT_MIN, defaults::MQTT_RECONNECT_MAX),
        );
        Session {
            keep_alive,
            max_packet_size: usize::try_from(max_packet_size).unwrap_or(usize::MAX),
            max_inflight: u16::try_from(max_inflight).unwrap_or(u16::MAX),
            reconnect_min,
            reconnect_max,
        }
    }

    /// `[uplinks.tls]`: only with an `mqtts://` broker; a client certificate comes with its key.
    fn tls(&mut self, raw: Option<&RawTls>, enabled: bool, path: &KeyPath) -> TlsSettings {
        let Some(raw) = raw else {
            return TlsSettings::default();
        };
        let at = path.key("tls");
        if !enabled {
            self.report.at(
                &at,
                "[uplinks.tls] needs an `mqtts://` broker URL (the broker is `mqtt://`, plain TCP)",
            );
        }
        match (&raw.cert_file, &raw.key_file) {
            (Some(_), None) => self.report.at(
                &at.key("cert_file"),
                "cert_file needs key_file (the client certificate's private key)",
            ),
            (None, Some(_)) => self.report.at(
                &at.key("key_file"),
                "key_file needs cert_file (the client certificate)",
            ),
            _ => {}
        }
        if raw.server_name.as_deref() == Some("") {
            self.report
                .at(&at.key("server_name"), "server_name must not be empty");
        }
        TlsSettings {
            ca_file: raw.ca_file.clone(),
            cert_file: raw.cert_file.clone(),
            key_file: raw.key_file.clone(),
            server_name: raw.server_name.clone(),
        }
    }

    /// A `type = "sparkplug"` uplink: the broker settings of an MQTT uplink (`mqtt`, already
    /// checked) plus the Sparkplug identity and `[uplinks.device_writes]`.
    fn sparkplug_uplink(
        &mut self,
        raw: &RawUplink,
        path: &KeyPath,
        mqtt: MqttConfig,
        spool: SpoolConfig,
    ) -> UplinkConfig {
        self.not_for_kind(
            path,
            "sparkplug",
            &[
                ("topics", raw.topics.is_some()),
                ("encoding", raw.encoding.is_some()),
                ("replay_rate", raw.replay_rate.is_some()),
            ],
        );
        let streams = self.sparkplug_streams(raw, path);
        let group_id = self.sparkplug_id(path, "group_id", raw.group_id.as_deref());
        let edge_node_id = self.sparkplug_id(path, "edge_node_id", raw.edge_node_id.as_deref());
        let primary_host_id = raw
            .primary_host_id
            .as_deref()
            .map(|h| self.sparkplug_id(path, "primary_host_id", Some(h)));
        let device_writes = raw
            .device_writes
            .as_ref()
            .and_then(|w| w.enabled)
            .unwrap_or(false);
        let max_command_age = raw
            .device_writes
            .as_ref()
            .and_then(|w| w.max_command_age)
            .unwrap_or(defaults::MAX_COMMAND_AGE);
        if max_command_age.is_zero() {
            self.report.at(
                &path.key("device_writes").key("max_command_age"),
                "max_command_age must be greater than zero",
            );
        }
        // A DCMD can move a set point: only a broker session that proves who it is may carry one.
        if device_writes && mqtt.username.is_none() && mqtt.tls_settings.cert_file.is_none() {
            self.report.at(
                &path.key("device_writes").key("enabled"),
                "device writes need an authenticated uplink: set `username` (with a password) or a client certificate (`[uplinks.tls] cert_file`)",
            );
        }
        UplinkConfig {
            name: raw.name.clone(),
            kind: UplinkKind::Sparkplug(SparkplugConfig {
                mqtt,
                group_id,
                edge_node_id,
                primary_host_id,
                device_writes,
                max_command_age,
            }),
            streams,
            spool,
        }
    }

    /// `streams` of a Sparkplug uplink: poll batches travel as device metrics and the figures of
    /// the `metrics` stream as node metrics; events and emissions have no Sparkplug form. The
    /// default is `live` alone: the node metrics (one per figure and place, hundreds with
    /// per-cell figures) change what the births declare to a host, so an edge node takes them
    /// on when its configuration asks.
    fn sparkplug_streams(&mut self, raw: &RawUplink, path: &KeyPath) -> Vec<Stream> {
        let Some(streams) = &raw.streams else {
            return vec![Stream::Live];
        };
        for (i, stream) in streams.iter().enumerate() {
            if !matches!(stream, Stream::Live | Stream::Metrics) {
                self.report.at(
                    &path.key("streams").index(i),
                    format!(
                        "a Sparkplug uplink carries the `live` stream (device metrics) and the `metrics` stream (node metrics), not `{}`",
                        stream.as_str()
                    ),
                );
            }
        }
        streams.clone()
    }

    /// A Sparkplug id (group, edge node, host): required, one topic level.
    fn sparkplug_id(&mut self, path: &KeyPath, key: &str, value: Option<&str>) -> String {
        let Some(v) = value else {
            self.report.at(
                &path.key(key),
                format!("missing `{key}`, expected a Sparkplug id (one MQTT topic level)"),
            );
            return String::new();
        };
        if v.is_empty() || v.contains(['+', '/', '#']) {
            self.report.at(
                &path.key(key),
                format!(
                    "invalid {key} `{v}`: a Sparkplug id must be non-empty and free of `+`, `/` and `#` (it is one topic level)"
                ),
            );
        }
        v.to_owned()
    }

    /// The password from exactly one of its three sources. Messages name the file or variable,
    /// never the secret.
    fn password(&mut self, raw: &RawUplink, path: &KeyPath) -> Option<Secret> {
        let given: Vec<&str> = [
            raw.password.as_ref().map(|_| "password"),
            raw.password_file.as_ref().map(|_| "password_file"),
            raw.password_env.as_ref().map(|_| "password_env"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let [_, second, ..] = given.as_slice() {
            self.report.at(
                &path.key(second),
                format!(
                    "give at most one of `password`, `password_file`, `password_env`; found {}",
                    given
                        .iter()
                        .map(|g| format!("`{g}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            );
            return None;
        }
        if let Some(password) = &raw.password {
            return Some(Secret(password.clone()));
        }
        if let Some(file) = &raw.password_file {
            let file = self.resolve(file);
            return match std::fs::read_to_string(&file) {
                Ok(text) => Some(Secret(text.trim_end_matches(['\r', '\n']).to_owned())),
                Err(err) => {
                    self.report.at(
                        &path.key("password_file"),
                        format!("cannot read password file `{}`: {err}", file.display()),
                    );
                    None
                }
            };
        }
        if let Some(variable) = &raw.password_env {
            return match std::env::var(variable) {
                Ok(value) => Some(Secret(value)),
                Err(std::env::VarError::NotPresent) => {
                    self.report.at(
                        &path.key("password_env"),
                        format!("environment variable `{variable}` is not set"),
                    );
                    None
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    self.report.at(
                        &path.key("password_env"),
                        format!("environment variable `{variable}` is not valid UTF-8"),
                    );
                    None
                }
            };
        }
        None
    }

    /// `[uplinks.topics]`: templates that override the defaults, free of wildcards.
    fn topics(&mut self, raw: Option<&RawTopics>, path: &KeyPath) -> TopicTemplates {
        let mut topics = TopicTemplates::default();
        let Some(raw) = raw else { return topics };
        let overrides = [
            ("live", &raw.live, &mut topics.live),
            ("metrics", &raw.metrics, &mut topics.metrics),
            ("events", &raw.events, &mut topics.events),
            ("emissions", &raw.emissions, &mut topics.emissions),
            ("status", &raw.status, &mut topics.status),
        ];
        for (key, value, slot) in overrides {
            let Some(value) = value else { continue };
            if value.is_empty() || value.contains(['+', '#', '\0']) {
                self.report.at(
                    &path.key("topics").key(key),
                    format!(
                        "invalid topic template `{value}`: it must not be empty or contain the wildcards `+` and `#`"
                    ),
                );
            }
            *slot = value.clone();
        }
        topics
    }
}

/// Validation shared by every uplink type, and the HJ 212 uplink.
impl Builder<'_, '_> {
    /// `streams`: `default` when absent; never empty, no stream twice.
    pub(super) fn streams(
        &mut self,
        raw: Option<&Vec<Stream>>,
        path: &KeyPath,
        default: &[Stream],
    ) -> Vec<Stream> {
        let Some(streams) = raw else {
            return default.to_vec();
        };
        if streams.is_empty() {
            self.report.at(
                &path.key("streams"),
                "streams must not be empty, expected some of `live`, `metrics`, `events`, `emissions`",
            );
        }
        for (i, stream) in streams.iter().enumerate() {
            if streams[..i].contains(stream) {
                self.report.at(
                    &path.key("streams").index(i),
                    format!("stream `{}` is listed twice", stream.as_str()),
                );
            }
        }
        streams.clone()
    }

    /// `[uplinks.spool]`.
    pub(super) fn spool(&mut self, raw: Option<&RawSpool>, path: &KeyPath) -> SpoolConfig {
        let default = SpoolConfig::default();
        let Some(spool) = raw else {
            return default;
        };
        let max_bytes = spool.max_bytes.unwrap_or(default.max_bytes);
        if max_bytes == 0 {
            self.report.at(
                &path.key("spool").key("max_bytes"),
                "max_bytes must be greater than zero",
            );
        }
        if spool.max_age.is_some_and(|a| a.is_zero()) {
            self.report.at(
                &path.key("spool").key("max_age"),
                "max_age must be a positive duration such as \"7d\" (leave it out for no age limit)",
            );
        }
        SpoolConfig {
            max_bytes,
            max_age: spool.max_age,
            synchronous_full: spool.synchronous.unwrap_or(RawSynchronous::Full)
                == RawSynchronous::Full,
        }
    }

    /// Report every key in `given` that is set although uplinks of `kind` do not use it.
    pub(super) fn not_for_kind(&mut self, path: &KeyPath, kind: &str, given: &[(&str, bool)]) {
        for (key, _) in given.iter().filter(|(_, set)| *set) {
            self.report.at(
                &path.key(key),
                format!("`{key}` does not apply to an uplink of type = \"{kind}\""),
            );
        }
    }
}
