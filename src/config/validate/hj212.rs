//! `[uplinks.hj212]`: the HJ 212 station header, for an HJ 212 TCP uplink (`type = "hj212"`) and
//! for an MQTT uplink that encodes some of its streams as HJ 212 text (`encoding = "hj212"`).

use std::path::Path;
use std::sync::Arc;

use super::Builder;
use super::shared::{no_host, parse_host_port};
use crate::config::defaults;
use crate::config::hj212_table::{Station, Table};
use crate::config::locate::KeyPath;
use crate::config::model::{
    Encoding, EncodingConfig, Hj212Config, Hj212Station, UplinkConfig, UplinkKind,
};
use crate::config::raw::{RawEncoding, RawHj212, RawUplink};
use crate::model::Stream;

impl Builder<'_, '_> {
    /// A `type = "hj212"` uplink: the platform address and `[uplinks.hj212]`.
    pub(super) fn hj212_uplink(&mut self, raw: &RawUplink, path: &KeyPath) -> UplinkConfig {
        self.not_for_kind(
            path,
            "hj212",
            &[
                ("broker", raw.broker.is_some()),
                ("client_id", raw.client_id.is_some()),
                ("username", raw.username.is_some()),
                ("password", raw.password.is_some()),
                ("password_file", raw.password_file.is_some()),
                ("password_env", raw.password_env.is_some()),
                ("keep_alive", raw.keep_alive.is_some()),
                ("max_packet_size", raw.max_packet_size.is_some()),
                ("max_inflight", raw.max_inflight.is_some()),
                ("topics", raw.topics.is_some()),
                ("encoding", raw.encoding.is_some()),
                ("tls", raw.tls.is_some()),
                ("replay_rate", raw.replay_rate.is_some()),
                ("group_id", raw.group_id.is_some()),
                ("edge_node_id", raw.edge_node_id.is_some()),
                ("primary_host_id", raw.primary_host_id.is_some()),
                ("device_writes", raw.device_writes.is_some()),
            ],
        );
        let platform = match raw.platform.as_deref() {
            Some(text) => parse_host_port(text).unwrap_or_else(|err| {
                self.report.at(&path.key("platform"), err.to_string());
                no_host()
            }),
            None => {
                self.report.at(
                    &path.key("platform"),
                    "missing `platform`, expected the HJ 212 platform as host:port",
                );
                no_host()
            }
        };
        let streams = self.streams(raw.streams.as_ref(), path, &[Stream::Emissions]);
        let spool = self.spool(raw.spool.as_ref(), path);
        let at = path.key("hj212");
        let (station, h) = match &raw.hj212 {
            Some(h) => (self.hj212_station(h, &at), Some(h)),
            None => {
                self.report.at(
                    &at,
                    "missing [uplinks.hj212], expected at least `mn` and `pw` (the station's MN and access password)",
                );
                (unnamed_station(), None)
            }
        };
        let (reconnect_min, reconnect_max) = self.reconnect_range(
            path,
            (raw.reconnect_min, raw.reconnect_max),
            (defaults::HJ212_RECONNECT_MIN, defaults::HJ212_RECONNECT_MAX),
        );
        let over_time = h.and_then(|h| h.over_time);
        let max_wait = h.and_then(|h| h.max_wait);
        UplinkConfig {
            name: raw.name.clone(),
            kind: UplinkKind::Hj212(Hj212Config {
                platform,
                table: station.table,
                station: station.station,
                mn_by_stack: station.mn_by_stack,
                over_time: self.positive(&at, "over_time", over_time, defaults::HJ212_OVER_TIME),
                re_count: h
                    .and_then(|h| h.re_count)
                    .unwrap_or(defaults::HJ212_RE_COUNT),
                reconnect_min,
                reconnect_max,
                max_wait: self.positive(&at, "max_wait", max_wait, defaults::HJ212_MAX_WAIT),
            }),
            streams,
            spool,
        }
    }

    /// The encodings of an MQTT uplink's streams (`encoding`), with the station header of
    /// `[uplinks.hj212]` when some carried stream is encoded as `hj212`.
    ///
    /// HJ 212 has a form only for poll batches (2011) and closed windows (2051/2061/2031), so
    /// `hj212` on the `metrics` or `events` stream is an error rather than a stream that would
    /// silently publish nothing. Over MQTT the broker's PUBACK is the acknowledgement: the TCP
    /// exchange settings (`ack`, `over_time`, `re_count`, `max_wait`) are refused.
    pub(super) fn mqtt_encoding(
        &mut self,
        raw: &RawUplink,
        path: &KeyPath,
        streams: &[Stream],
    ) -> EncodingConfig {
        let mut encoding = raw
            .encoding
            .as_ref()
            .map(RawEncoding::resolve)
            .unwrap_or_default();
        let hj212_streams: Vec<Stream> = streams
            .iter()
            .copied()
            .filter(|s| encoding.for_stream(*s) == Encoding::Hj212)
            .collect();
        for stream in &hj212_streams {
            if matches!(stream, Stream::Metrics | Stream::Events) {
                let s = stream.as_str();
                self.report.at(
                    &path.key("encoding"),
                    format!(
                        "the `{s}` stream has no HJ 212 form (only `live` and `emissions` have), expected another encoding for it, e.g. encoding = {{ default = \"hj212\", {s} = \"json\" }}"
                    ),
                );
            }
        }
        let at = path.key("hj212");
        match (&raw.hj212, hj212_streams.is_empty()) {
            (None, true) => {}
            (Some(_), true) => self.report.at(
                &at,
                "[uplinks.hj212] of an MQTT uplink is used only by encoding = \"hj212\", which none of its streams has",
            ),
            (None, false) => self.report.at(
                &at,
                "missing [uplinks.hj212]: encoding = \"hj212\" needs at least `mn` and `pw` (the station's MN and access password)",
            ),
            (Some(h), false) => {
                let tcp_only = [
                    ("ack", h.ack.is_some()),
                    ("over_time", h.over_time.is_some()),
                    ("re_count", h.re_count.is_some()),
                    ("max_wait", h.max_wait.is_some()),
                ];
                for (key, _) in tcp_only.iter().filter(|(_, set)| *set) {
                    self.report.at(
                        &at.key(key),
                        format!(
                            "`{key}` applies to an HJ 212 TCP uplink (type = \"hj212\"); over MQTT the broker's PUBACK acknowledges each packet"
                        ),
                    );
                }
                let mut station = self.hj212_station(h, &at);
                // No 9014 can come back over a broker: packets must not ask for one.
                station.station.ack = false;
                encoding.hj212 = Some(station);
            }
        }
        encoding
    }

    /// `[uplinks.hj212]`'s station header: the code table, ST, PW, MN, the local time offset and
    /// the MN of each stack that is a monitoring point of its own.
    fn hj212_station(&mut self, h: &RawHj212, at: &KeyPath) -> Hj212Station {
        let table = self.hj212_table(h.table.as_deref(), at);
        let st = h.st.unwrap_or(i64::from(defaults::HJ212_ST));
        if !table.systems.keys().any(|&code| i64::from(code) == st) {
            self.report.at(
                &at.key("st"),
                format!(
                    "st = {st} is not a system code of {}, expected one of {}",
                    table.name,
                    table
                        .systems
                        .keys()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if h.pw.len() != table.limits.pw_len || !is_plain(&h.pw) {
            self.report.at(
                &at.key("pw"),
                format!(
                    "pw must be {} printable ASCII characters without `;`, `=`, `&` or `,`",
                    table.limits.pw_len
                ),
            );
        }
        self.check_mn(&at.key("mn"), &h.mn, &table);
        for (stack, mn) in &h.mn_by_stack {
            self.check_mn(&at.key("mn_by_stack").key(stack), mn, &table);
        }
        let utc_offset_hours = h
            .utc_offset_hours
            .unwrap_or(defaults::HJ212_UTC_OFFSET_HOURS);
        if !(-12..=14).contains(&utc_offset_hours) {
            self.report.at(
                &at.key("utc_offset_hours"),
                format!("utc_offset_hours = {utc_offset_hours} is out of range, expected -12..=14"),
            );
        }
        Hj212Station {
            station: Station {
                st: u16::try_from(st).unwrap_or(0),
                pw: h.pw.clone(),
                mn: h.mn.clone(),
                ack: h.ack.unwrap_or(true),
                utc_offset_min: utc_offset_hours * 60,
            },
            table: Arc::new(table),
            mn_by_stack: h
                .mn_by_stack
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// `table`: the built-in `hj212-2017`, or a code table file relative to the configuration.
    fn hj212_table(&mut self, name: Option<&str>, at: &KeyPath) -> Table {
        let name = name.unwrap_or(defaults::HJ212_TABLE);
        if name == defaults::HJ212_TABLE {
            return Table::hj212_2017();
        }
        let file = self.resolve(Path::new(name));
        let loaded = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read `{}`: {e}", file.display()))
            .and_then(|text| {
                Table::from_toml(&text)
                    .map_err(|e| format!("`{}` is not an HJ 212 code table: {e}", file.display()))
            });
        loaded.unwrap_or_else(|message| {
            self.report.at(
                &at.key("table"),
                format!(
                    "{message}; expected `{}` (built in) or the path of a code table file",
                    defaults::HJ212_TABLE
                ),
            );
            Table::hj212_2017()
        })
    }

    fn check_mn(&mut self, key: &KeyPath, mn: &str, table: &Table) {
        if mn.is_empty() || mn.len() > table.limits.mn_len || !is_plain(mn) {
            self.report.at(
                key,
                format!(
                    "MN `{mn}` must be 1 to {} printable ASCII characters without `;`, `=`, `&` or `,`",
                    table.limits.mn_len
                ),
            );
        }
    }
}

/// Text an HJ 212 field can carry: printable ASCII without the segment's separators.
fn is_plain(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b'=' | b'&' | b','))
}

/// The station of an uplink whose `[uplinks.hj212]` is missing (an error already reported).
fn unnamed_station() -> Hj212Station {
    Hj212Station {
        table: Arc::new(Table::hj212_2017()),
        station: Station {
            st: defaults::HJ212_ST,
            pw: String::new(),
            mn: String::new(),
            ack: true,
            utc_offset_min: defaults::HJ212_UTC_OFFSET_HOURS * 60,
        },
        mn_by_stack: Vec::new(),
    }
}
