//! Inputs of a derived point: finding the references in an expression, rewriting them into
//! variables the CEL evaluator gets, and resolving them against the configured devices.
//!
//! CEL has no syntax for `potline1/pot_*.cell_voltage_v`, nor an aggregate over a glob, so before
//! the expression is compiled a scan (lexical only: runs of name characters outside string
//! literals, not a grammar) replaces
//! - `mean(REF)`, `sum(REF)`, `min(REF)`, `max(REF)`, `count(REF)` by one variable holding the
//!   aggregate over the devices the glob matches,
//! - `rate(REF, "5m")` and `delta(REF, "1h")` by one variable holding the counter's rate (per
//!   hour) or increase over that trailing window,
//! - every other `REF` by one variable holding the point's latest value,
//!
//! where a `REF` is `source/device.point`, `device.point`, `derived/device.name` (an earlier
//! derived point) or `calc:<calculator>/<first label>.<metric>` (`calc:potline/potline1.
//! line_current_ka`). Each variable is a key of the map `_in` (`_in.v0`), so that `has(REF)`
//! (rewritten to `has(_in.v0)`) tells whether the input has a good value. The same reference
//! written twice is one variable.

use std::time::Duration;

/// An aggregate over the devices a glob matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Agg {
    /// Arithmetic mean of the good values.
    Mean,
    /// Sum of the good values.
    Sum,
    /// Smallest good value.
    Min,
    /// Largest good value.
    Max,
    /// Number of good values.
    Count,
}

impl Agg {
    fn from_name(name: &str) -> Option<Agg> {
        Some(match name {
            "mean" => Agg::Mean,
            "sum" => Agg::Sum,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "count" => Agg::Count,
            _ => return None,
        })
    }

    /// The function name as written.
    pub fn name(self) -> &'static str {
        match self {
            Agg::Mean => "mean",
            Agg::Sum => "sum",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Count => "count",
        }
    }
}

/// What a variable holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The latest value of one point.
    Point,
    /// An aggregate over a glob.
    Aggregate(Agg),
    /// A counter's increase per hour over the trailing window.
    Rate(Duration),
    /// A counter's increase over the trailing window.
    Delta(Duration),
}

/// A reference as written: `source/device.point` with the source optional.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    /// Source name (`calc:potline` for a calculator's metrics, `derived` for derived points).
    pub source: Option<String>,
    /// Device name or glob (`pot_*`).
    pub device: String,
    /// Point (or metric) name.
    pub point: String,
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(s) => write!(f, "{s}/{}.{}", self.device, self.point),
            None => write!(f, "{}.{}", self.device, self.point),
        }
    }
}

/// One variable of a rewritten expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// What it holds.
    pub kind: Kind,
    /// Which points.
    pub pattern: Pattern,
    /// Whether the expression tests it with `has()` (a missing value is then handled).
    pub guarded: bool,
}

impl Input {
    /// The input as written in the expression (`mean(potline1/pot_*.cell_voltage_v)`).
    pub fn written(&self) -> String {
        match self.kind {
            Kind::Point => self.pattern.to_string(),
            Kind::Aggregate(a) => format!("{}({})", a.name(), self.pattern),
            Kind::Rate(w) => format!(
                "rate({}, \"{}\")",
                self.pattern,
                humantime::format_duration(w)
            ),
            Kind::Delta(w) => {
                format!(
                    "delta({}, \"{}\")",
                    self.pattern,
                    humantime::format_duration(w)
                )
            }
        }
    }
}

/// An expression with its references replaced by `_in.vN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// CEL text.
    pub cel: String,
    /// The variables, `_in.v0` first.
    pub inputs: Vec<Input>,
}

/// The name of the map that holds the inputs.
pub const INPUTS_MAP: &str = "_in";

#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    /// A run of name characters (`potline1/pot_*.cell_voltage_v`, `mean`, `8.0`).
    Run(&'a str),
    /// A string literal, quotes included.
    Str(&'a str),
    /// Spaces.
    Space(&'a str),
    /// Any other character.
    Other(&'a str),
}

fn is_run_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '*' | '/' | '.')
}

/// A run starts with a name character; `/` and `.` only continue one (`a.x / 2` divides).
fn starts_run(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '*')
}

fn tokens(src: &str) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(c) = rest.chars().next() {
        let len = if let Some(tail) = rest.strip_prefix("calc:") {
            5 + tail.find(|c| !is_run_char(c)).unwrap_or(tail.len())
        } else if starts_run(c) {
            rest.find(|c| !is_run_char(c)).unwrap_or(rest.len())
        } else if c == '"' || c == '\'' {
            string_len(rest, c)
        } else if c.is_whitespace() {
            rest.find(|c: char| !c.is_whitespace())
                .unwrap_or(rest.len())
        } else {
            c.len_utf8()
        };
        let (tok, tail) = rest.split_at(len);
        out.push(if starts_run(c) {
            Tok::Run(tok)
        } else if c == '"' || c == '\'' {
            Tok::Str(tok)
        } else if c.is_whitespace() {
            Tok::Space(tok)
        } else {
            Tok::Other(tok)
        });
        rest = tail;
    }
    out
}

/// Length of the string literal at the start of `s` (quote `q`), escapes skipped; the rest of
/// the text when it is not closed (CEL then reports it).
fn string_len(s: &str, q: char) -> usize {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            '\\' if !escaped => escaped = true,
            c if c == q && !escaped => return i + 1,
            _ => escaped = false,
        }
    }
    s.len()
}

/// Whether a run is a reference (not a number, a CEL identifier or a function name).
fn is_reference(run: &str) -> bool {
    !run.starts_with(|c: char| c.is_ascii_digit()) && (run.contains('/') || run.contains('.'))
}

/// Parse a reference run into a pattern.
fn pattern(run: &str) -> Result<Pattern, ReferenceError> {
    let (path, point) = run
        .rsplit_once('.')
        .ok_or_else(|| ReferenceError::NoPoint(run.to_owned()))?;
    let (source, device) = match path.split_once('/') {
        Some((s, d)) => (Some(s.to_owned()), d),
        None => (None, path),
    };
    if device.contains('/') || device.contains('.') || device.is_empty() || point.is_empty() {
        return Err(ReferenceError::Malformed(run.to_owned()));
    }
    if point.contains('*') || source.as_deref().is_some_and(|s| s.contains('*')) {
        return Err(ReferenceError::GlobOutsideDevice(run.to_owned()));
    }
    Ok(Pattern {
        source,
        device: device.to_owned(),
        point: point.to_owned(),
    })
}

/// Index of the next token after `i` that is not a space.
fn next_solid(toks: &[Tok<'_>], i: usize) -> Option<usize> {
    (i..toks.len()).find(|&j| !matches!(toks[j], Tok::Space(_)))
}

/// A call `name(REF)` or `name(REF, "window")` starting at token `i`: the reference, the window
/// literal, and the index of the closing parenthesis.
fn call_at<'a>(toks: &[Tok<'a>], i: usize) -> Option<(&'a str, Option<&'a str>, usize)> {
    let open = next_solid(toks, i + 1)?;
    if toks[open] != Tok::Other("(") {
        return None;
    }
    let arg = next_solid(toks, open + 1)?;
    let Tok::Run(run) = toks[arg] else {
        return None;
    };
    let after = next_solid(toks, arg + 1)?;
    if toks[after] == Tok::Other(")") {
        return Some((run, None, after));
    }
    if toks[after] != Tok::Other(",") {
        return None;
    }
    let lit = next_solid(toks, after + 1)?;
    let Tok::Str(window) = toks[lit] else {
        return None;
    };
    let close = next_solid(toks, lit + 1)?;
    (toks[close] == Tok::Other(")")).then_some((run, Some(window), close))
}

/// Rewrite `expr`; `Err` names the reference that is malformed.
pub fn rewrite(expr: &str) -> Result<Rewritten, ReferenceError> {
    let toks = tokens(expr);
    let mut out = Rewritten {
        cel: String::with_capacity(expr.len()),
        inputs: Vec::new(),
    };
    let mut i = 0;
    while i < toks.len() {
        let tok = toks[i].clone();
        let text = match tok {
            Tok::Run(t) | Tok::Str(t) | Tok::Space(t) | Tok::Other(t) => t,
        };
        if let Tok::Run(name) = tok
            && let Some((run, window, close)) = call_at(&toks, i)
            && is_reference(run)
        {
            let kind = match (name, window) {
                ("has", None) => {
                    let v = variable(&mut out.inputs, Kind::Point, pattern(run)?, true);
                    out.cel.push_str(&format!("has({INPUTS_MAP}.v{v})"));
                    i = close + 1;
                    continue;
                }
                ("rate", Some(w)) => Kind::Rate(window_of(w)?),
                ("delta", Some(w)) => Kind::Delta(window_of(w)?),
                (n, None) if Agg::from_name(n).is_some() => {
                    Kind::Aggregate(Agg::from_name(n).expect("checked"))
                }
                ("rate" | "delta", None) => {
                    return Err(ReferenceError::NoWindow {
                        function: name.to_owned(),
                        run: run.to_owned(),
                    });
                }
                _ => Kind::Point,
            };
            if kind == Kind::Point {
                // Another function of a single reference (`double(x)`): not ours, CEL's.
                out.cel.push_str(text);
                i += 1;
                continue;
            }
            let v = variable(&mut out.inputs, kind, pattern(run)?, false);
            out.cel.push_str(&format!("{INPUTS_MAP}.v{v}"));
            i = close + 1;
            continue;
        }
        if let Tok::Run(run) = tok
            && is_reference(run)
        {
            let p = pattern(run)?;
            if p.device.contains('*') {
                return Err(ReferenceError::BareGlob(run.to_owned()));
            }
            let v = variable(&mut out.inputs, Kind::Point, p, false);
            out.cel.push_str(&format!("{INPUTS_MAP}.v{v}"));
        } else if let Tok::Run(run) = tok
            && run.bytes().all(|b| b.is_ascii_digit())
        {
            // All arithmetic is double: an integer literal is read as one (`8` → `8.0`).
            out.cel.push_str(run);
            out.cel.push_str(".0");
        } else {
            out.cel.push_str(text);
        }
        i += 1;
    }
    Ok(out)
}

/// The index of the variable for `(kind, pattern)`, added when new; `guarded` is sticky.
fn variable(inputs: &mut Vec<Input>, kind: Kind, pattern: Pattern, guarded: bool) -> usize {
    if let Some(i) = inputs
        .iter()
        .position(|x| x.kind == kind && x.pattern == pattern)
    {
        inputs[i].guarded |= guarded;
        return i;
    }
    inputs.push(Input {
        kind,
        pattern,
        guarded,
    });
    inputs.len() - 1
}

fn window_of(literal: &str) -> Result<Duration, ReferenceError> {
    let text = &literal[1..literal.len().saturating_sub(1).max(1)];
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(ReferenceError::BadWindow(literal.to_owned())),
    }
}

/// Why a reference in an expression is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// A run with a `/` but no `.point`.
    #[error("`{0}` is not `source/device.point` or `device.point`")]
    NoPoint(String),
    /// A run with more than one `/`, or an empty device or point.
    #[error(
        "`{0}` is not `source/device.point` or `device.point` (put spaces around `/` to divide)"
    )]
    Malformed(String),
    /// A glob in the source or the point.
    #[error("`{0}`: only the device part of a reference may be a glob")]
    GlobOutsideDevice(String),
    /// `rate` or `delta` without its window.
    #[error("`{function}` needs a window: {function}({run}, \"5m\")")]
    NoWindow {
        /// `rate` or `delta`.
        function: String,
        /// The reference.
        run: String,
    },
    /// A glob outside an aggregate.
    #[error("`{0}` matches devices by a glob: wrap it in mean, sum, min, max or count")]
    BareGlob(String),
    /// A window that is not a positive duration.
    #[error("window {0} is not a duration such as \"5m\" or \"1h\"")]
    BadWindow(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_become_variables_and_aggregates_one_variable_each() {
        let r = rewrite(
            "mean(potline1/pot_*.cell_voltage_v) > 4.5 ? rectifier.line_current_ka * 1.0 : rectifier.line_current_ka",
        )
        .unwrap();
        assert_eq!(r.cel, "_in.v0 > 4.5 ? _in.v1 * 1.0 : _in.v1");
        assert_eq!(r.inputs.len(), 2);
        assert_eq!(r.inputs[0].kind, Kind::Aggregate(Agg::Mean));
        assert_eq!(
            r.inputs[0].pattern,
            Pattern {
                source: Some("potline1".into()),
                device: "pot_*".into(),
                point: "cell_voltage_v".into()
            }
        );
        assert_eq!(r.inputs[1].pattern.source, None);
        assert_eq!(r.inputs[0].written(), "mean(potline1/pot_*.cell_voltage_v)");
    }

    #[test]
    fn rate_delta_has_metrics_and_strings_are_recognised() {
        let r = rewrite(
            r#"has(aux/meter1.energy_kwh) ? rate( aux/meter1.energy_kwh , "5m") + delta(aux/meter1.energy_kwh, "1h") : calc:potline/potline1.line_current_ka + size("a.b")"#,
        )
        .unwrap();
        assert_eq!(
            r.cel,
            r#"has(_in.v0) ? _in.v1 + _in.v2 : _in.v3 + size("a.b")"#
        );
        assert!(r.inputs[0].guarded);
        assert_eq!(r.inputs[1].kind, Kind::Rate(Duration::from_secs(300)));
        assert_eq!(r.inputs[2].kind, Kind::Delta(Duration::from_secs(3600)));
        assert_eq!(r.inputs[3].pattern.source.as_deref(), Some("calc:potline"));
        assert_eq!(r.inputs[3].pattern.device, "potline1");
    }

    #[test]
    fn malformed_references_are_refused_with_the_reason() {
        for (expr, want) in [
            ("pot_*.cell_voltage_v + 1", "glob"),
            ("a/b/c.d", "spaces around `/`"),
            ("rate(a.b, \"soon\")", "not a duration"),
            ("rate(a.b)", "needs a window"),
            ("a.*", "glob"),
        ] {
            let e = rewrite(expr).unwrap_err().to_string();
            assert!(e.contains(want), "{expr}: {e}");
        }
        // Numbers, plain identifiers and division with spaces are left alone.
        assert_eq!(rewrite("1.5e3 / 2").unwrap().cel, "1.5e3 / 2.0");
        assert_eq!(rewrite("a.b / c.d").unwrap().cel, "_in.v0 / _in.v1");
    }
}
