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

impl Selector {
    /// Parse a series name: `reading:<device>/<point>`, `sum:<point>`, `mean:<point>`,
    /// `metric:<calc>/<name>` optionally followed by `{key=value,…}`, `hour:<subject>/<quantity>`,
    /// `day:<subject>/<quantity>`. The error says what is wrong.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let (kind, rest) = text.split_once(':').ok_or_else(|| {
            format!(
                "series {text:?} has no kind: expected reading:, sum:, mean:, metric:, hour: or day:"
            )
        })?;
        let pair = |rest: &str, what: &str| -> Result<(Arc<str>, Arc<str>), String> {
            match rest.split_once('/') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains('/') => {
                    Ok((Arc::from(a), Arc::from(b)))
                }
                _ => Err(format!("series {text:?}: expected {kind}:{what}")),
            }
        };
        let single = |rest: &str| -> Result<Arc<str>, String> {
            if rest.is_empty() || rest.contains('/') {
                Err(format!("series {text:?}: expected {kind}:<point>"))
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
                        let body = l
                            .strip_suffix('}')
                            .ok_or_else(|| format!("series {text:?}: labels must end with `}}`"))?;
                        let labels = body
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(|kv| match kv.split_once('=') {
                                Some((k, v)) if !k.is_empty() => {
                                    Ok((Arc::from(k.trim()), Arc::from(v.trim())))
                                }
                                _ => Err(format!("series {text:?}: label {kv:?} is not key=value")),
                            })
                            .collect::<Result<Labels, String>>()?;
                        (path, labels)
                    }
                };
                let (calc, name) = pair(path, "<calc>/<name>{key=value,…}")?;
                Selector::Metric { calc, name, labels }
            }
            other => {
                return Err(format!(
                    "series {text:?}: unknown kind {other:?}; expected reading, sum, mean, metric, hour or day"
                ));
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
