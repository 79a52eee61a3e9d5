//! Topic templates: `smeltwatch/{site}/live/{source}/{device}` and friends (docs/TOPICS.md).
//!
//! Templates are checked once, when an uplink is built ([`validate`]): each may only use the
//! placeholders that make sense for its stream, must not contain the MQTT wildcards `+` and `#`
//! (a wildcard in a PUBLISH topic makes brokers drop the connection) and must have balanced braces.
//! Rendering ([`topic_for`], [`status_topic`]) then cannot fail. Placeholder values are sanitised:
//! `/`, `+`, `#` and NUL become `_`, so a device named `a/b` cannot add a topic level.

use std::borrow::Cow;

use crate::config::TopicTemplates;
use crate::model::Record;

/// A topic template that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The template names a placeholder its stream does not have.
    #[error(
        "topic template {stream} = {template:?}: unknown placeholder {{{placeholder}}} (allowed here: {allowed})"
    )]
    UnknownPlaceholder {
        /// Which template (`live`, `status` …).
        stream: &'static str,
        /// The template text.
        template: String,
        /// The placeholder name, without braces.
        placeholder: String,
        /// The placeholders this template may use, as `{a}, {b}`.
        allowed: String,
    },
    /// The template contains `+` or `#`, which are only valid in subscriptions.
    #[error(
        "topic template {stream} = {template:?}: MQTT wildcards '+' and '#' are not allowed in a topic"
    )]
    Wildcard {
        /// Which template.
        stream: &'static str,
        /// The template text.
        template: String,
    },
    /// A `{` without `}` (or the reverse), or an empty template.
    #[error("topic template {stream} = {template:?}: {problem}")]
    Malformed {
        /// Which template.
        stream: &'static str,
        /// The template text.
        template: String,
        /// What is wrong.
        problem: &'static str,
    },
}

const LIVE: &[&str] = &["site", "source", "device"];
const METRICS: &[&str] = &["site", "calc"];
const EVENTS: &[&str] = &["site", "kind"];
const EMISSIONS: &[&str] = &["site", "stack", "period"];
const STATUS: &[&str] = &["site"];

/// Check every template of an uplink. Called when the uplink is built, so a bad template stops the
/// agent at start-up with a message naming the template.
pub fn validate(templates: &TopicTemplates) -> Result<(), TopicError> {
    check("live", &templates.live, LIVE)?;
    check("metrics", &templates.metrics, METRICS)?;
    check("events", &templates.events, EVENTS)?;
    check("emissions", &templates.emissions, EMISSIONS)?;
    check("status", &templates.status, STATUS)
}

fn check(stream: &'static str, template: &str, allowed: &[&str]) -> Result<(), TopicError> {
    let malformed = |problem| TopicError::Malformed {
        stream,
        template: template.to_owned(),
        problem,
    };
    if template.is_empty() {
        return Err(malformed("the topic is empty"));
    }
    if template.contains(['+', '#']) {
        return Err(TopicError::Wildcard {
            stream,
            template: template.to_owned(),
        });
    }
    if template.contains('\0') {
        return Err(malformed("NUL is not allowed in a topic"));
    }
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(malformed("'}' without a matching '{'"));
        }
        let after = &rest[open + 1..];
        let close = after
            .find(['}', '{'])
            .filter(|&i| after.as_bytes()[i] == b'}')
            .ok_or_else(|| malformed("'{' without a matching '}'"))?;
        let name = &after[..close];
        if !allowed.contains(&name) {
            return Err(TopicError::UnknownPlaceholder {
                stream,
                template: template.to_owned(),
                placeholder: name.to_owned(),
                allowed: allowed
                    .iter()
                    .map(|a| format!("{{{a}}}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// Replace the characters that would change a topic's structure (`/`, `+`, `#`, NUL) with `_`.
pub fn sanitise(value: &str) -> Cow<'_, str> {
    if value.contains(['/', '+', '#', '\0']) {
        Cow::Owned(value.replace(['/', '+', '#', '\0'], "_"))
    } else {
        Cow::Borrowed(value)
    }
}

/// Render a template, looking placeholders up with `lookup`. A placeholder `lookup` does not know
/// is left as written (only possible for a template that skipped [`validate`]).
fn render<'a>(template: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                match lookup(name) {
                    Some(v) => out.push_str(&sanitise(v)),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The topic a record is published on.
pub fn topic_for(templates: &TopicTemplates, site: &str, record: &Record) -> String {
    match record {
        Record::Batch(b) => render(&templates.live, |name| match name {
            "site" => Some(site),
            "source" => Some(&b.source),
            "device" => Some(&b.device),
            _ => None,
        }),
        Record::Metrics(m) => render(&templates.metrics, |name| match name {
            "site" => Some(site),
            "calc" => Some(&m.calc),
            _ => None,
        }),
        Record::Event(e) => render(&templates.events, |name| match name {
            "site" => Some(site),
            "kind" => Some(e.kind.as_str()),
            _ => None,
        }),
        Record::Aggregate(a) => render(&templates.emissions, |name| match name {
            "site" => Some(site),
            "stack" => Some(&a.subject),
            "period" => Some(a.period.as_str()),
            _ => None,
        }),
    }
}

/// The retained status topic of an uplink (Last Will, online/offline).
pub fn status_topic(templates: &TopicTemplates, site: &str) -> String {
    render(&templates.status, |name| (name == "site").then_some(site))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ReadingBatch, Timestamp};

    fn record(source: &str, device: &str) -> Record {
        Record::Batch(ReadingBatch {
            source: source.into(),
            device: device.into(),
            unit_id: 1,
            poll_interval_ms: 1000,
            scheduled: Timestamp(0),
            readings: vec![],
        })
    }

    #[test]
    fn default_templates_render_as_documented() {
        let t = TopicTemplates::default();
        validate(&t).unwrap();
        assert_eq!(
            topic_for(&t, "qh-al-01", &record("potline1", "pot_003")),
            "smeltwatch/qh-al-01/live/potline1/pot_003"
        );
        assert_eq!(status_topic(&t, "qh-al-01"), "smeltwatch/qh-al-01/status");
    }

    #[test]
    fn values_with_topic_syntax_are_sanitised() {
        let t = TopicTemplates::default();
        assert_eq!(
            topic_for(&t, "a/b", &record("line+1", "pot#3")),
            "smeltwatch/a_b/live/line_1/pot_3"
        );
    }

    #[test]
    fn unknown_placeholder_is_rejected_with_the_allowed_list() {
        let t = TopicTemplates {
            live: "x/{site}/{calc}".into(),
            ..TopicTemplates::default()
        };
        let e = validate(&t).unwrap_err();
        assert!(
            matches!(&e, TopicError::UnknownPlaceholder { placeholder, .. } if placeholder == "calc")
        );
        assert_eq!(
            e.to_string(),
            "topic template live = \"x/{site}/{calc}\": unknown placeholder {calc} (allowed here: {site}, {source}, {device})"
        );
    }

    #[test]
    fn wildcards_and_unbalanced_braces_are_rejected() {
        for (bad, wildcard) in [
            ("a/+/b", true),
            ("a/#", true),
            ("a/{site", false),
            ("a/site}", false),
            ("a/{si{te}", false),
            ("", false),
        ] {
            let t = TopicTemplates {
                status: bad.into(),
                ..TopicTemplates::default()
            };
            let e = validate(&t).unwrap_err();
            assert_eq!(
                matches!(e, TopicError::Wildcard { .. }),
                wildcard,
                "{bad}: {e}"
            );
        }
    }
}
