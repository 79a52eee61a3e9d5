//! Device name patterns of templates: `pot_{n}`, `pot_{n:03}`.
//!
//! `{n}` is the instance number in decimal; `{n:0W}` zero-pads it to at least `W` digits. Any
//! other `{…}` is an error, so that a typo such as `{N}` cannot silently name 24 devices alike.

/// Why a device name pattern does not parse; its text is the message located at `name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PatternError {
    /// A `{` without its `}`.
    #[error("unclosed `{{` in name `{pattern}`, expected `{{n}}` or `{{n:03}}`")]
    Unclosed { pattern: String },
    /// `{n:0W}` with W over 10.
    #[error("placeholder `{{{inner}}}` pads to more than 10 digits")]
    TooWide { inner: String },
    /// A placeholder other than `{n}` and `{n:0W}`.
    #[error(
        "unknown placeholder `{{{inner}}}` in name `{pattern}`, expected `{{n}}` or `{{n:03}}`"
    )]
    Unknown { inner: String, pattern: String },
}

/// A parsed device name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamePattern {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Number { width: usize },
}

impl NamePattern {
    /// Parses a pattern; the error says which placeholder is malformed.
    pub(crate) fn parse(pattern: &str) -> Result<Self, PatternError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = pattern;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err(PatternError::Unclosed {
                    pattern: pattern.to_owned(),
                });
            };
            let inner = &after[..close];
            let width = match inner {
                "n" => 0,
                _ => match inner.strip_prefix("n:0") {
                    Some(digits)
                        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        digits
                            .parse::<usize>()
                            .ok()
                            .filter(|w| *w <= 10)
                            .ok_or_else(|| PatternError::TooWide {
                                inner: inner.to_owned(),
                            })?
                    }
                    _ => {
                        return Err(PatternError::Unknown {
                            inner: inner.to_owned(),
                            pattern: pattern.to_owned(),
                        });
                    }
                },
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Number { width });
            rest = &after[close + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(NamePattern { parts })
    }

    /// Whether the pattern contains `{n}` (a template of more than one device needs it).
    pub(crate) fn has_placeholder(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Number { .. }))
    }

    /// The name of instance number `n`.
    pub(crate) fn render(&self, n: u64) -> String {
        let mut name = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => name.push_str(text),
                Part::Number { width } => name.push_str(&format!("{n:0width$}")),
            }
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_plain_and_zero_padded_numbers() {
        let plain = NamePattern::parse("pot_{n}").expect("valid");
        assert_eq!(plain.render(7), "pot_7");
        let padded = NamePattern::parse("line1_pot_{n:03}_pcu").expect("valid");
        assert_eq!(padded.render(7), "line1_pot_007_pcu");
        assert_eq!(padded.render(1234), "line1_pot_1234_pcu");
    }

    #[test]
    fn a_name_without_placeholder_renders_itself() {
        let pattern = NamePattern::parse("rectifier").expect("valid");
        assert!(!pattern.has_placeholder());
        assert_eq!(pattern.render(3), "rectifier");
    }

    #[test]
    fn rejects_unknown_and_unclosed_placeholders() {
        let err = NamePattern::parse("pot_{N}")
            .expect_err("unknown placeholder")
            .to_string();
        assert!(err.contains("unknown placeholder `{N}`"), "{err}");
        assert!(NamePattern::parse("pot_{n:3}").is_err());
        assert!(NamePattern::parse("pot_{n").is_err());
    }
}
