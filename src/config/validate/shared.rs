//! Checks and parsers that several sections share: positive durations, reconnect ranges and
//! `host:port` addresses.

use std::time::Duration;

use super::Builder;
use crate::config::locate::KeyPath;
use crate::config::model::HostPort;

impl Builder<'_, '_> {
    /// A duration that must be positive, with its default.
    pub(super) fn positive(
        &mut self,
        path: &KeyPath,
        key: &str,
        value: Option<Duration>,
        default: Duration,
    ) -> Duration {
        let value = value.unwrap_or(default);
        if value.is_zero() {
            self.report
                .at(&path.key(key), format!("{key} must be greater than zero"));
        }
        value
    }

    /// `reconnect_min` and `reconnect_max` of a source or an uplink: each positive, the first
    /// not above the second.
    pub(super) fn reconnect_range(
        &mut self,
        path: &KeyPath,
        (min, max): (Option<Duration>, Option<Duration>),
        (default_min, default_max): (Duration, Duration),
    ) -> (Duration, Duration) {
        let min = self.positive(path, "reconnect_min", min, default_min);
        let max = self.positive(path, "reconnect_max", max, default_max);
        if min > max {
            self.report.at(
                &path.key("reconnect_min"),
                format!(
                    "reconnect_min ({}) is greater than reconnect_max ({})",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
        }
        (min, max)
    }
}

/// The address of a section whose own is missing or invalid (an error already reported).
pub(super) fn no_host() -> HostPort {
    HostPort {
        host: String::new(),
        port: 0,
    }
}

/// Why a `host:port` address does not parse; its text is the message located at the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HostPortError {
    /// Not `host:port` or `[v6]:port` with a port number.
    #[error("invalid address `{0}`, expected `host:port` (e.g. `10.1.0.20:502`)")]
    Malformed(String),
    /// Port 0, which no one listens on.
    #[error("invalid address `{0}`: port 0")]
    PortZero(String),
}

/// `host:port` or `[v6]:port`.
pub(crate) fn parse_host_port(text: &str) -> Result<HostPort, HostPortError> {
    let bad = || HostPortError::Malformed(text.to_owned());
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, rest) = rest.split_once(']').ok_or_else(bad)?;
        (host, rest.strip_prefix(':').ok_or_else(bad)?)
    } else {
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        if host.contains(':') {
            return Err(bad());
        }
        (host, port)
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(HostPortError::PortZero(text.to_owned()));
    }
    Ok(HostPort {
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_needs_a_port() {
        assert!(parse_host_port("10.0.0.1").is_err());
        assert!(parse_host_port(":502").is_err());
        assert!(parse_host_port("::1:502").is_err());
        assert_eq!(
            parse_host_port("plc-7:5020").expect("valid"),
            HostPort {
                host: "plc-7".into(),
                port: 5020
            }
        );
    }
}
