//! `[http]`, `[history]` and `[ledger]`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Builder;
use crate::config::defaults;
use crate::config::locate::KeyPath;
use crate::config::model::{HistoryConfig, HttpConfig, LedgerConfig, Regulated, Secret};
use crate::config::raw::{RawHistory, RawHttp, RawLedger};

impl Builder<'_, '_> {
    /// `[http]`: a socket address (an IP literal: binding follows no DNS) and a non-empty token.
    pub(super) fn http(&mut self, raw: &RawHttp, path: &KeyPath) -> HttpConfig {
        let listen = match raw.listen.as_deref() {
            None => std::net::SocketAddr::from(([127, 0, 0, 1], defaults::HTTP_PORT)),
            Some(text) => text.parse().unwrap_or_else(|_| {
                self.report.at(
                    &path.key("listen"),
                    format!(
                        "invalid listen address `{text}`, expected IP:PORT such as `127.0.0.1:9187` or `[::1]:9187`"
                    ),
                );
                std::net::SocketAddr::from(([127, 0, 0, 1], defaults::HTTP_PORT))
            }),
        };
        let token = raw.token_file.as_ref().and_then(|file| {
            let file = self.resolve(file);
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    let token = text.trim();
                    if token.is_empty() {
                        self.report.at(
                            &path.key("token_file"),
                            format!("token file `{}` is empty", file.display()),
                        );
                        None
                    } else {
                        Some(Secret(token.to_owned()))
                    }
                }
                Err(err) => {
                    self.report.at(
                        &path.key("token_file"),
                        format!("cannot read token file `{}`: {err}", file.display()),
                    );
                    None
                }
            }
        });
        HttpConfig { listen, token }
    }

    /// `[history]`: the store file (relative to `state_dir`) and the retention per period.
    pub(super) fn history(
        &mut self,
        raw: Option<&RawHistory>,
        state_dir: &Path,
        path: &KeyPath,
    ) -> HistoryConfig {
        let file = raw
            .and_then(|h| h.file.clone())
            .unwrap_or_else(|| PathBuf::from(defaults::HISTORY_FILE));
        let mut retention = |key: &str, value: Option<Duration>, default: Duration| {
            let d = value.unwrap_or(default);
            if d < Duration::from_secs(60) {
                self.report.at(
                    &path.key(key),
                    format!(
                        "{key} = {} is too short, expected at least 1m",
                        humantime::format_duration(d)
                    ),
                );
            }
            d
        };
        HistoryConfig {
            path: if file.is_absolute() {
                file
            } else {
                state_dir.join(file)
            },
            minute_retention: retention(
                "minute_retention",
                raw.and_then(|h| h.minute_retention),
                defaults::MINUTE_RETENTION,
            ),
            hour_retention: retention(
                "hour_retention",
                raw.and_then(|h| h.hour_retention),
                defaults::HOUR_RETENTION,
            ),
            day_retention: retention(
                "day_retention",
                raw.and_then(|h| h.day_retention),
                defaults::DAY_RETENTION,
            ),
        }
    }

    /// `[ledger]`: the site key (must exist; its permissions are checked when the agent starts)
    /// and which records are regulated.
    pub(super) fn ledger(&mut self, raw: &RawLedger, path: &KeyPath) -> LedgerConfig {
        let key_file = self.resolve(&raw.key_file);
        if !key_file.is_file() {
            self.report.at(
                &path.key("key_file"),
                format!(
                    "no key file at `{}`, expected the site's secret key (make one with `smeltwatch keygen --out DIR`)",
                    key_file.display()
                ),
            );
        }
        let regulated = match &raw.regulated {
            None => Regulated::DEFAULT.to_vec(),
            Some(list) => {
                if list.is_empty() {
                    self.report.at(
                        &path.key("regulated"),
                        "regulated must not be empty, expected some of `stack_minute`, `stack_hour`, `stack_day`, `stack_month`, `potline_day`, `potline_month`",
                    );
                }
                for (i, r) in list.iter().enumerate() {
                    if list[..i].contains(r) {
                        self.report.at(
                            &path.key("regulated").index(i),
                            format!("`{}` is listed twice", r.as_str()),
                        );
                    }
                }
                list.clone()
            }
        };
        LedgerConfig {
            key_file,
            regulated,
        }
    }
}
