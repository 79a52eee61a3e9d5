//! Where the log lines go and how they look: colour only on a terminal, and lines journald reads
//! properly when the agent runs under systemd.
//!
//! - **Colour** (ANSI escapes) only when stderr is a terminal and `NO_COLOR` is unset or empty
//!   (<https://no-color.org>): redirected to a file, piped to a shipper or read by journald, the
//!   escapes would be stored as text.
//! - **Under systemd** (`JOURNAL_STREAM` names the device and inode of stderr, see
//!   `systemd.exec(5)`): no timestamp (journald stamps every line) and each line starts with its
//!   syslog priority, `<3>` for an error, `<4>` a warning, `<6>` info, `<7>` debug, which journald
//!   takes as the entry's priority (`journalctl -p warning`). A child that inherited the variable
//!   but writes elsewhere is not fooled: the device and inode must be those of its stderr.
//! - `--log-format json` is one JSON object per line, as before, never coloured.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How text lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextStyle {
    /// ANSI colours.
    pub ansi: bool,
    /// journald's form: priority prefix, no timestamp.
    pub journald: bool,
}

/// Decides the style from the environment: whether stderr is a terminal, `NO_COLOR`,
/// `JOURNAL_STREAM` and stderr's `(device, inode)`.
pub fn text_style(
    stderr_is_terminal: bool,
    no_color: Option<&str>,
    journal_stream: Option<&str>,
    stderr_id: Option<(u64, u64)>,
) -> TextStyle {
    let journald = journal_stream
        .and_then(|v| {
            let (dev, ino) = v.trim().split_once(':')?;
            Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
        })
        .is_some_and(|id| Some(id) == stderr_id);
    TextStyle {
        ansi: stderr_is_terminal && no_color.is_none_or(str::is_empty) && !journald,
        journald,
    }
}

/// The style for this process's stderr.
pub fn text_style_of_process() -> TextStyle {
    use std::io::IsTerminal;
    use std::os::unix::fs::MetadataExt;
    let stderr_id = std::fs::metadata("/proc/self/fd/2")
        .ok()
        .map(|m| (m.dev(), m.ino()));
    text_style(
        std::io::stderr().is_terminal(),
        std::env::var("NO_COLOR").ok().as_deref(),
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        stderr_id,
    )
}

/// The syslog priority journald reads from a `<N>` line prefix.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Lines for journald: `<priority>LEVEL target: message fields`, no timestamp, no colour.
#[derive(Debug, Default)]
pub struct JournaldFormat;

impl<S, N> FormatEvent<S, N> for JournaldFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write!(
            writer,
            "<{}>{} {}: ",
            priority(meta.level()),
            meta.level(),
            meta.target()
        )?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}", span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{{{fields}}}")?;
                }
                write!(writer, ": ")?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Installs the global subscriber: `json` or text in `style`, filtered by `RUST_LOG` or the
/// default filter.
pub fn init(json: bool, style: TextStyle) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rumqttc=warn,rumqttd=off,tokio_modbus=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else if style.journald {
        builder
            .with_ansi(false)
            .fmt_fields(format::DefaultFields::new())
            .event_format(JournaldFormat)
            .init();
    } else {
        builder.with_ansi(style.ansi).init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn colour_only_on_a_terminal_without_no_color_and_outside_journald() {
        let style = |tty, no_color, journal, id| text_style(tty, no_color, journal, id);
        assert!(style(true, None, None, None).ansi);
        assert!(
            style(true, Some(""), None, None).ansi,
            "an empty NO_COLOR is unset"
        );
        assert!(!style(true, Some("1"), None, None).ansi);
        assert!(!style(false, None, None, None).ansi, "a file or a pipe");
        let under_systemd = style(true, None, Some("8:12345"), Some((8, 12345)));
        assert_eq!(
            under_systemd,
            TextStyle {
                ansi: false,
                journald: true
            }
        );
        // Inherited by a child whose stderr went elsewhere, or garbage: not journald.
        assert!(!style(false, None, Some("8:12345"), Some((8, 999))).journald);
        assert!(!style(false, None, Some("x"), Some((8, 1))).journald);
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journald_lines_carry_the_priority_and_no_escapes_or_time() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .event_format(JournaldFormat)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("uplink", name = "plant");
            let _in = span.enter();
            tracing::warn!(records = 3, "spool dropped records");
            tracing::error!("cannot open");
            tracing::info!("started");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("<4>WARN smeltwatch::logging::tests: uplink{name=\"plant\"}: "),
            "{text}"
        );
        assert!(
            lines[0].ends_with("spool dropped records records=3"),
            "{text}"
        );
        assert!(lines[1].starts_with("<3>ERROR "), "{text}");
        assert!(lines[2].starts_with("<6>INFO "), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
    }
}
