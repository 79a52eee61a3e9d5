//! The names of the series in a query (`GET /api/v1/series?name=…`): parsing, and which stored
//! series a name selects.

use std::sync::Arc;

use super::{Key, Labels};

/// What a query names: one series, every label set of a metric that carries the given labels,
/// or daily windows (history store only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Exactly this series.
    Exact(Key),
    /// A metric, with labels every answered series must carry.
    Metric {
        /// Calculator.
        calc: Arc<str>,
        /// Metric name.
        name: Arc<str>,
        /// `key=value` the series must carry.
        labels: Labels,
    },
    /// Daily windows of an aggregate.
    Day {
        /// Stack (or other subject).
        subject: Arc<str>,
        /// Quantity.
        quantity: Arc<str>,
    },
}

/// Why a series name does not parse (see [`Selector::parse`]); each names the text given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// No `kind:` prefix.
    #[error("series {text:?} has no kind: expected reading:, sum:, mean:, metric:, hour: or day:")]
    NoKind {
        /// The name given.
        text: String,
    },
    /// A kind that is none of the known ones.
    #[error(
        "series {text:?}: unknown kind {kind:?}; expected reading, sum, mean, metric, hour or day"
    )]
    UnknownKind {
        /// The name given.
        text: String,
        /// Its kind.
        kind: String,
    },
    /// A known kind whose rest is not of its form.
    #[error("series {text:?}: expected {kind}:{form}")]
    Form {
        /// The name given.
        text: String,
        /// Its kind.
        kind: String,
        /// The form the kind wants, e.g. `<device>/<point>`.
        form: &'static str,
    },
    /// `{…` without the closing brace.
    #[error("series {text:?}: labels must end with `}}`")]
    UnclosedLabels {
        /// The name given.
        text: String,
    },
    /// A label that is not `key=value`.
    #[error("series {text:?}: label {label:?} is not key=value")]
    BadLabel {
        /// The name given.
        text: String,
        /// The label.
        label: String,
    },
}

impl Selector {
    /// Parse a series name: `reading:<device>/<point>`, `sum:<point>`, `mean:<point>`,
    /// `metric:<calc>/<name>` optionally followed by `{key=value,…}`, `hour:<subject>/<quantity>`,
    /// `day:<subject>/<quantity>`. The error says what is wrong.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let (kind, rest) = text.split_once(':').ok_or_else(|| SelectorError::NoKind {
            text: text.to_owned(),
        })?;
        let form = |form: &'static str| SelectorError::Form {
            text: text.to_owned(),
            kind: kind.to_owned(),
            form,
        };
        let pair = |rest: &str, what: &'static str| match rest.split_once('/') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains('/') => {
                Ok((Arc::from(a), Arc::from(b)))
            }
            _ => Err(form(what)),
        };
        let single = |rest: &str| {
            if rest.is_empty() || rest.contains('/') {
                Err(form("<point>"))
            } else {
                Ok(Arc::from(rest))
            }
        };
        Ok(match kind {
            "reading" => {
                let (device, point) = pair(rest, "<device>/<point>")?;
                Selector::Exact(Key::Reading { device, point })
            }
            "sum" => Selector::Exact(Key::Sum(single(rest)?)),
            "mean" => Selector::Exact(Key::Mean(single(rest)?)),
            "hour" => {
                let (subject, quantity) = pair(rest, "<subject>/<quantity>")?;
                Selector::Exact(Key::Hour { subject, quantity })
            }
            "day" => {
                let (subject, quantity) = pair(rest, "<subject>/<quantity>")?;
                Selector::Day { subject, quantity }
            }
            "metric" => {
                let (path, labels) = match rest.split_once('{') {
                    None => (rest, Vec::new()),
                    Some((path, l)) => {
                        let body =
                            l.strip_suffix('}')
                                .ok_or_else(|| SelectorError::UnclosedLabels {
                                    text: text.to_owned(),
                                })?;
                        let labels = body
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(|kv| match kv.split_once('=') {
                                Some((k, v)) if !k.is_empty() => {
                                    Ok((Arc::from(k.trim()), Arc::from(v.trim())))
                                }
                                _ => Err(SelectorError::BadLabel {
                                    text: text.to_owned(),
                                    label: kv.to_owned(),
                                }),
                            })
                            .collect::<Result<Labels, SelectorError>>()?;
                        (path, labels)
                    }
                };
                let (calc, name) = pair(path, "<calc>/<name>{key=value,…}")?;
                Selector::Metric { calc, name, labels }
            }
            other => {
                return Err(SelectorError::UnknownKind {
                    text: text.to_owned(),
                    kind: other.to_owned(),
                });
            }
        })
    }

    pub(super) fn matches(&self, key: &Key) -> bool {
        match (self, key) {
            (Selector::Exact(k), key) => k == key,
            (
                Selector::Metric { calc, name, labels },
                Key::Metric {
                    calc: c,
                    name: n,
                    labels: l,
                },
            ) => calc == c && name == n && labels.iter().all(|kv| l.contains(kv)),
            _ => false,
        }
    }
}
