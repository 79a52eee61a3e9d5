//! The address of an MQTT broker as users write it, in the configuration (`broker = "…"`) and on
//! the command line (`run --broker`, `tail --broker`, `verify --broker`): one parser, one set of
//! rules, one error text.
//!
//! `mqtt://host[:port]` is plain TCP, port 1883 by default; `mqtts://host[:port]` is TLS, port
//! 8883 by default (the ports IANA assigned to MQTT). An IPv6 literal goes in brackets
//! (`mqtt://[fd00::5]:1883`). One trailing `/` is allowed; a path, a query, a fragment or
//! credentials are not (credentials belong in `username` and `password_file`, where they are not
//! logged with the URL). Other schemes are refused rather than guessed: `tcp://` and `ssl://`
//! (Paho's spellings) and `ws://` would each mean something this client does not do the same way.

use std::fmt;
use std::str::FromStr;

use super::HostPort;

/// Port of `mqtt://` when the URL names none.
pub const MQTT_PORT: u16 = 1883;
/// Port of `mqtts://` when the URL names none.
pub const MQTTS_PORT: u16 = 8883;

/// A parsed `mqtt://` or `mqtts://` broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host and port (the scheme's default port when the URL names none).
    pub addr: HostPort,
    /// `mqtts://`: TLS.
    pub tls: bool,
}

/// A broker URL that does not parse: the text as given and what is wrong with it. Shown as a
/// configuration file's problem (``invalid broker URL `x`: …, expected …``); on the command line
/// [`BrokerUrlError::for_flag`] names the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid broker URL `{text}`: {problem}, expected `mqtt://host:port` or `mqtts://host:port`"
)]
pub struct BrokerUrlError {
    /// The text as given.
    pub text: String,
    /// What is wrong with it.
    pub problem: BrokerUrlProblem,
}

/// What is wrong with a broker URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlProblem {
    /// No `scheme://` in front.
    #[error("no scheme")]
    NoScheme,
    /// A scheme other than `mqtt` or `mqtts` (the URL, quoted beside, shows which).
    #[error("unknown scheme")]
    UnknownScheme(String),
    /// A path, query, fragment or `user@`.
    #[error("no path, query or credentials allowed")]
    PathQueryOrCredentials,
    /// Nothing between `://` and the port.
    #[error("missing host")]
    MissingHost,
    /// A host with white space in it, or an IPv6 literal without its closing bracket.
    #[error("malformed host")]
    MalformedHost,
    /// A port that is not a number from 1 to 65535.
    #[error("bad port {0:?}")]
    BadPort(String),
}

impl FromStr for BrokerUrl {
    type Err = BrokerUrlError;

    fn from_str(text: &str) -> Result<BrokerUrl, BrokerUrlError> {
        let fail = |problem| BrokerUrlError {
            text: text.to_owned(),
            problem,
        };
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| fail(BrokerUrlProblem::NoScheme))?;
        let (tls, default_port) = match scheme {
            "mqtt" => (false, MQTT_PORT),
            "mqtts" => (true, MQTTS_PORT),
            other => return Err(fail(BrokerUrlProblem::UnknownScheme(other.to_owned()))),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(fail(BrokerUrlProblem::PathQueryOrCredentials));
        }
        let (host, port) = match rest.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed
                    .split_once(']')
                    .ok_or_else(|| fail(BrokerUrlProblem::MalformedHost))?;
                let port = match after {
                    "" => None,
                    _ => Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| fail(BrokerUrlProblem::MalformedHost))?,
                    ),
                };
                (host, port)
            }
            None => match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            },
        };
        if host.is_empty() {
            return Err(fail(BrokerUrlProblem::MissingHost));
        }
        if host.contains(char::is_whitespace) {
            return Err(fail(BrokerUrlProblem::MalformedHost));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| fail(BrokerUrlProblem::BadPort(p.to_owned())))?,
        };
        Ok(BrokerUrl {
            addr: HostPort {
                host: host.to_owned(),
                port,
            },
            tls,
        })
    }
}

impl BrokerUrlError {
    /// The message for command-line flag `flag`: `--broker "x": expected … (why)`.
    pub fn for_flag(&self, flag: &str) -> String {
        format!(
            "{flag} {:?}: expected mqtt://host:port or mqtts://host:port ({})",
            self.text, self.problem
        )
    }
}

impl BrokerUrl {
    /// Like [`str::parse`], and a bare `host:port` is `mqtt://host:port`: the form the command
    /// line's `verify --broker` has always taken. Errors quote the text as given.
    pub fn parse_or_plain(text: &str) -> Result<BrokerUrl, BrokerUrlError> {
        if text.contains("://") {
            return text.parse();
        }
        format!("mqtt://{text}")
            .parse()
            .map_err(|e: BrokerUrlError| BrokerUrlError {
                text: text.to_owned(),
                ..e
            })
    }
}

impl fmt::Display for BrokerUrl {
    /// The URL with its port always written: `mqtts://broker.plant:8883`, `mqtt://[::1]:1883`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (String, u16, bool) {
        let url: BrokerUrl = text.parse().unwrap_or_else(|e| panic!("{e}"));
        (url.addr.host, url.addr.port, url.tls)
    }

    fn problem(text: &str) -> BrokerUrlProblem {
        text.parse::<BrokerUrl>()
            .expect_err("should be rejected")
            .problem
    }

    #[test]
    fn the_scheme_gives_tls_and_the_default_port() {
        assert_eq!(
            parsed("mqtt://broker.plant"),
            ("broker.plant".into(), 1883, false)
        );
        assert_eq!(parsed("mqtts://10.0.0.5"), ("10.0.0.5".into(), 8883, true));
        assert_eq!(
            parsed("mqtts://broker.plant:8884"),
            ("broker.plant".into(), 8884, true)
        );
        assert_eq!(
            parsed("mqtt://10.0.0.5:1884/"),
            ("10.0.0.5".into(), 1884, false)
        );
    }

    #[test]
    fn ipv6_literals_go_in_brackets() {
        assert_eq!(parsed("mqtt://[::1]:1884/"), ("::1".into(), 1884, false));
        assert_eq!(parsed("mqtts://[fd00::5]"), ("fd00::5".into(), 8883, true));
        assert_eq!(problem("mqtt://::1"), BrokerUrlProblem::MissingHost);
        assert_eq!(problem("mqtt://[::1"), BrokerUrlProblem::MalformedHost);
        assert_eq!(problem("mqtt://[::1]1883"), BrokerUrlProblem::MalformedHost);
    }

    #[test]
    fn everything_else_is_refused_with_its_reason() {
        assert_eq!(
            problem("tcp://x:1"),
            BrokerUrlProblem::UnknownScheme("tcp".into())
        );
        assert_eq!(
            problem("ssl://x:1"),
            BrokerUrlProblem::UnknownScheme("ssl".into())
        );
        assert_eq!(problem("broker.plant:1883"), BrokerUrlProblem::NoScheme);
        assert_eq!(problem("mqtt://"), BrokerUrlProblem::MissingHost);
        assert_eq!(problem("mqtt://:1883"), BrokerUrlProblem::MissingHost);
        assert_eq!(
            problem("mqtt://x:99999"),
            BrokerUrlProblem::BadPort("99999".into())
        );
        assert_eq!(problem("mqtt://x:0"), BrokerUrlProblem::BadPort("0".into()));
        assert_eq!(
            problem("mqtt://x:port"),
            BrokerUrlProblem::BadPort("port".into())
        );
        assert_eq!(
            problem("mqtt://x:"),
            BrokerUrlProblem::BadPort(String::new())
        );
        assert_eq!(problem("mqtt://bro ker"), BrokerUrlProblem::MalformedHost);
        for text in ["mqtt://u:p@x:1", "mqtt://x/t", "mqtt://x:1?q", "mqtt://x#f"] {
            assert_eq!(
                problem(text),
                BrokerUrlProblem::PathQueryOrCredentials,
                "{text}"
            );
        }
    }

    #[test]
    fn the_error_quotes_the_text_and_says_what_is_expected_and_why() {
        let err = "http://127.0.0.1:1883".parse::<BrokerUrl>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid broker URL `http://127.0.0.1:1883`: unknown scheme, expected \
             `mqtt://host:port` or `mqtts://host:port`"
        );
        let err = "mqtt://x:port".parse::<BrokerUrl>().unwrap_err();
        assert_eq!(
            err.for_flag("--broker"),
            "--broker \"mqtt://x:port\": expected mqtt://host:port or mqtts://host:port \
             (bad port \"port\")"
        );
    }

    #[test]
    fn a_bare_host_and_port_is_plain_mqtt_where_allowed() {
        let url = BrokerUrl::parse_or_plain("127.0.0.1:1883").unwrap();
        assert_eq!(
            (url.addr.host.as_str(), url.addr.port, url.tls),
            ("127.0.0.1", 1883, false)
        );
        let url = BrokerUrl::parse_or_plain("[::1]:1884").unwrap();
        assert_eq!((url.addr.host.as_str(), url.addr.port), ("::1", 1884));
        let url = BrokerUrl::parse_or_plain("mqtts://broker.plant").unwrap();
        assert_eq!((url.addr.port, url.tls), (8883, true));
        let err = BrokerUrl::parse_or_plain("h:port").unwrap_err();
        assert_eq!(err.problem, BrokerUrlProblem::BadPort("port".into()));
        assert!(
            err.for_flag("--broker")
                .starts_with("--broker \"h:port\": expected mqtt://"),
            "{err}"
        );
        let err = BrokerUrl::parse_or_plain("ws://h:1").unwrap_err();
        assert_eq!(err.problem, BrokerUrlProblem::UnknownScheme("ws".into()));
    }

    #[test]
    fn display_writes_the_port_and_brackets() {
        for (text, shown) in [
            ("mqtts://broker.plant", "mqtts://broker.plant:8883"),
            ("mqtt://[::1]", "mqtt://[::1]:1883"),
            ("mqtt://10.0.0.5:1884/", "mqtt://10.0.0.5:1884"),
        ] {
            let url: BrokerUrl = text.parse().unwrap();
            assert_eq!(url.to_string(), shown);
            assert_eq!(url.to_string().parse::<BrokerUrl>(), Ok(url));
        }
    }
}
