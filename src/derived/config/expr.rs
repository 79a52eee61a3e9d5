//! Compiling one derived expression with CEL, and checking it before it is accepted.
//!
//! An expression is rewritten ([`super::inputs`]), compiled once by the `cel` crate, and then
//! checked on its syntax tree:
//! - only arithmetic (`+ - * /`), comparisons, `&& || !`, the conditional `c ? a : b`, unary
//!   minus, `has()`, `double()`, and `max(a, b, …)`/`min(a, b, …)` of several values; no lists,
//!   maps, strings, macros (`map`, `filter`, `all`…) or other functions. Without loops and without
//!   collections the cost of an evaluation is bounded by the size of the tree: at most
//!   [`MAX_EXPR_CHARS`] characters and [`MAX_DEPTH`] levels.
//! - integer literals are read as doubles (`8` as `8.0`), so all arithmetic is IEEE double and
//!   cannot overflow: CEL does not mix ints and doubles, and `a > 8 ? 1 : 0` should just work.
//! - the variables are `_in.vN` only, and the unit of the result is inferred ([`super::units`]).
//!
//! Compiling is part of validating `[[derived]]`: it is pure (no I/O, no state) and its result,
//! [`Compiled`], is what the engine evaluates ([`crate::derived::eval`]).

use std::sync::Arc;

use cel::common::ast::{Expr, LiteralValue};
use cel::objects::Key;
use cel::{IdedExpr, Program};

use super::inputs::{INPUTS_MAP, Rewritten};
use super::units::{CombineError, Inferred};

/// Longest expression accepted, in characters.
pub const MAX_EXPR_CHARS: usize = 2000;
/// Deepest syntax tree accepted (the evaluator recurses once per level).
pub const MAX_DEPTH: usize = 48;

/// A compiled expression and the unit its result has.
pub struct Compiled {
    /// The program the engine runs.
    pub(crate) program: Program,
    /// Keys `v0`, `v1`… of the inputs map, made once.
    pub(crate) keys: Vec<Key>,
    /// The unit of the result, from the units of the inputs.
    pub unit: Inferred,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("inputs", &self.keys.len())
            .field("unit", &self.unit)
            .finish()
    }
}

/// Compile `rewritten`, whose inputs have the units `units` (one per input). `Err` says why the
/// expression is refused.
pub fn compile(rewritten: &Rewritten, units: &[Inferred]) -> Result<Compiled, ExprError> {
    if rewritten.cel.chars().count() > MAX_EXPR_CHARS {
        return Err(ExprError::TooLong);
    }
    let depth = nesting(&rewritten.cel);
    if depth > MAX_DEPTH / 2 {
        return Err(ExprError::TooNested(depth));
    }
    let program = parse(&rewritten.cel)?;
    let unit = Check { units }.walk(program.expression(), 0)?;
    let keys = (0..rewritten.inputs.len())
        .map(|i| Key::String(Arc::new(format!("v{i}"))))
        .collect();
    Ok(Compiled {
        program,
        keys,
        unit,
    })
}

/// Deepest nesting of parentheses and brackets.
fn nesting(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for c in text.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Stack of the thread that parses: the generated parser recurses several frames per level
/// of the text (a conditional in a conditional, a unary minus of a unary minus), which the
/// limits on length and nesting bound but which a worker thread's 2 MB could not always take.
const PARSER_STACK_BYTES: usize = 64 << 20;

/// Parse `cel` on a thread of its own with a large stack.
fn parse(cel: &str) -> Result<Program, ExprError> {
    let text = cel.to_owned();
    let parsed = std::thread::Builder::new()
        .name("derived-parse".into())
        .stack_size(PARSER_STACK_BYTES)
        .spawn(move || Program::compile(&text).map_err(|e| e.to_string()))
        .map_err(|e| ExprError::ParserThread(e.to_string()))?
        .join()
        .map_err(|_| ExprError::ParserPanicked)?;
    parsed.map_err(|e| ExprError::Syntax(e.trim().to_owned()))
}

/// Why an expression is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    /// More than [`MAX_EXPR_CHARS`] characters.
    #[error("the expression is longer than {MAX_EXPR_CHARS} characters")]
    TooLong,
    /// Parentheses nested deeper than half of [`MAX_DEPTH`].
    #[error("the expression nests {0} parentheses deep, more than {half}", half = MAX_DEPTH / 2)]
    TooNested(usize),
    /// A syntax tree deeper than [`MAX_DEPTH`].
    #[error("the expression nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// The parser's thread could not be started.
    #[error("cannot start the parser: {0}")]
    ParserThread(String),
    /// The parser panicked.
    #[error("the parser failed")]
    ParserPanicked,
    /// CEL's parser refused the text.
    #[error("does not compile: {0}")]
    Syntax(String),
    /// A hexadecimal or unsigned literal.
    #[error("hexadecimal and unsigned literals are not accepted: write numbers in decimal")]
    NotDecimal,
    /// A string, bytes or null literal.
    #[error("strings, bytes and null have no place in a derived point")]
    NotANumber,
    /// A method call (`x.size()`).
    #[error(
        "`.{0}()` is not available: the functions are mean, sum, min, max, count, rate, delta, has and double"
    )]
    Method(String),
    /// A function or operator that is not ours (`size`).
    #[error(
        "`{0}` is not available: the functions are mean, sum, min, max, count, rate, delta, has and double"
    )]
    Function(String),
    /// A plain identifier: not written as a reference.
    #[error("unknown input `{0}`: inputs are written `source/device.point` or `device.point`")]
    UnknownIdent(String),
    /// A variable that is not one of the inputs (`_in.v7` beyond them).
    #[error("unknown input `{map}.{field}`")]
    UnknownVariable {
        /// The map selected from.
        map: String,
        /// The field selected.
        field: String,
    },
    /// A field selection on something other than the inputs.
    #[error("field selection is only for inputs")]
    FieldSelection,
    /// A comprehension (`map`, `filter`, `all`, `exists`).
    #[error("macros (map, filter, all, exists) are not available: evaluation must stay bounded")]
    Macro,
    /// A list, map or message.
    #[error("lists, maps and messages are not available in a derived point")]
    Collection,
    /// Nothing to evaluate.
    #[error("empty expression")]
    Empty,
    /// An operator with other than two operands (as CEL names it, `_+_`).
    #[error("`{0}` takes two operands")]
    NotTwoOperands(String),
    /// A unary operator or `double` with other than one operand.
    #[error("`{0}` takes one operand")]
    NotOneOperand(String),
    /// A conditional with other than three operands.
    #[error("`? :` takes three operands")]
    NotThreeOperands,
    /// `max(x)` or `min(x)` of one value, where an aggregate was meant.
    #[error(
        "`{0}(x)` of one value: write `{0}(source/device_glob.point)` for an aggregate, `{0}(a, b)` for the larger of values"
    )]
    OneValue(String),
    /// An operator or function whose operands' units do not combine.
    #[error("`{op}` {units}")]
    Units {
        /// The operator as written (`+`) or the function.
        op: String,
        /// What differs.
        units: CombineError,
    },
    /// The two branches of a conditional in different units.
    #[error("the two branches of `? :` differ: {0}")]
    Branches(CombineError),
}

/// The syntax check and unit inference.
struct Check<'a> {
    units: &'a [Inferred],
}

impl Check<'_> {
    fn walk(&self, e: &IdedExpr, depth: usize) -> Result<Inferred, ExprError> {
        if depth > MAX_DEPTH {
            return Err(ExprError::TooDeep);
        }
        match &e.expr {
            Expr::Literal(LiteralValue::Double(_)) => Ok(Inferred::Literal),
            Expr::Literal(LiteralValue::Boolean(_)) => Ok(Inferred::Bool),
            Expr::Literal(LiteralValue::Int(_) | LiteralValue::UInt(_)) => {
                Err(ExprError::NotDecimal)
            }
            Expr::Literal(_) => Err(ExprError::NotANumber),
            Expr::Select(s) => self.select(&s.operand, &s.field, s.test),
            Expr::Call(c) if c.target.is_none() => {
                let args = c
                    .args
                    .iter()
                    .map(|a| self.walk(a, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                call(&c.func_name, &args)
            }
            Expr::Call(c) => Err(ExprError::Method(c.func_name.clone())),
            Expr::Ident(name) => Err(ExprError::UnknownIdent(name.clone())),
            Expr::Comprehension(_) => Err(ExprError::Macro),
            Expr::List(_) | Expr::Map(_) | Expr::Struct(_) => Err(ExprError::Collection),
            Expr::Unspecified => Err(ExprError::Empty),
        }
    }

    /// `_in.vN` (an input) or `has(_in.vN)`.
    fn select(&self, operand: &IdedExpr, field: &str, test: bool) -> Result<Inferred, ExprError> {
        let Expr::Ident(map) = &operand.expr else {
            return Err(ExprError::FieldSelection);
        };
        let index = field
            .strip_prefix('v')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&i| map == INPUTS_MAP && i < self.units.len())
            .ok_or_else(|| ExprError::UnknownVariable {
                map: map.clone(),
                field: field.to_owned(),
            })?;
        Ok(if test {
            Inferred::Bool
        } else {
            self.units[index]
        })
    }
}

/// The unit of a call of an operator or function with arguments of units `args`.
fn call(name: &str, args: &[Inferred]) -> Result<Inferred, ExprError> {
    let pair = || -> Result<(Inferred, Inferred), ExprError> {
        match args {
            [a, b] => Ok((*a, *b)),
            _ => Err(ExprError::NotTwoOperands(name.to_owned())),
        }
    };
    // The error of an operation whose operands' units differ.
    let differ = |op: &str| {
        let op = op.to_owned();
        move |units| ExprError::Units { op, units }
    };
    match name {
        "_+_" | "_-_" => {
            let (a, b) = pair()?;
            Inferred::same(a, b).map_err(differ(op(name)))
        }
        "_*_" => pair().map(|(a, b)| Inferred::product(a, b, false)),
        "_/_" => pair().map(|(a, b)| Inferred::product(a, b, true)),
        "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" => {
            let (a, b) = pair()?;
            Inferred::same(a, b)
                .map(|_| Inferred::Bool)
                .map_err(differ(op(name)))
        }
        "_&&_" | "_||_" => pair().map(|_| Inferred::Bool),
        "!_" => Ok(Inferred::Bool),
        "-_" | "double" => match args {
            [a] => Ok(*a),
            _ => Err(ExprError::NotOneOperand(op(name).to_owned())),
        },
        "_?_:_" => match args {
            [_, a, b] => Inferred::same(*a, *b).map_err(ExprError::Branches),
            _ => Err(ExprError::NotThreeOperands),
        },
        "max" | "min" if args.len() >= 2 => args[1..]
            .iter()
            .try_fold(args[0], |acc, x| Inferred::same(acc, *x))
            .map_err(differ(name)),
        "max" | "min" => Err(ExprError::OneValue(name.to_owned())),
        other => Err(ExprError::Function(op(other).to_owned())),
    }
}

/// An operator's name as written (`_+_` → `+`).
fn op(name: &str) -> &str {
    match name {
        "_?_:_" => "? :",
        n => n.trim_matches('_'),
    }
}

/// `expr` rewritten and compiled with its inputs in `units` (as written; empty: unknown).
#[cfg(test)]
pub(crate) fn compiled(expr: &str, units: &[&str]) -> Result<Compiled, String> {
    let r = super::inputs::rewrite(expr).map_err(|e| e.to_string())?;
    let units: Vec<_> = units
        .iter()
        .map(|u| match super::units::Unit::parse(u) {
            Some(unit) if !u.is_empty() => Inferred::of(unit),
            _ => Inferred::Unknown,
        })
        .collect();
    assert_eq!(units.len(), r.inputs.len(), "{expr}");
    compile(&r, &units).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::inputs::rewrite;
    use super::super::units::Unit;
    use super::*;

    #[test]
    fn the_unit_of_the_result_is_inferred() {
        let kw = Unit::parse("kW").unwrap();
        let c = compiled("r.current_ka * r.voltage_v", &["kA", "V"]).unwrap();
        assert_eq!(c.unit.fits(&kw, "kW"), Ok(()));
        let c = compiled("rate(m.energy_kwh, \"5m\")", &["kWh/h"]).unwrap();
        assert_eq!(c.unit.fits(&kw, "kW"), Ok(()));
        let e = compiled("r.current_ka + r.voltage_v", &["kA", "V"]).unwrap_err();
        assert!(e.contains("`+` combines"), "{e}");
        let e = compiled("r.v > 1 ? r.current_ka : r.voltage_v", &["V", "kA", "V"]).unwrap_err();
        assert!(e.contains("branches"), "{e}");
    }

    #[test]
    fn unbounded_or_foreign_constructs_are_refused() {
        for (expr, want) in [
            ("[1, 2].map(x, x * a.b)", "not available"),
            ("[a.b, 2][0]", "not available"),
            ("a.b + 0x10", "decimal"),
            ("size(\"abc\") + a.b", "strings"),
            ("foo + 1", "unknown input `foo`"),
            ("a.b +", "does not compile"),
            ("max(3.0) + a.b", "of one value"),
        ] {
            let r = rewrite(expr).unwrap();
            let units = vec![Inferred::Unknown; r.inputs.len()];
            let e = compile(&r, &units).unwrap_err().to_string();
            assert!(e.contains(want), "{expr}: {e}");
        }
        // A variable beyond the inputs (only our own rewriting writes `_in`).
        let r = Rewritten {
            cel: "_in.v7 + 1.0".into(),
            inputs: vec![],
        };
        assert!(
            compile(&r, &[])
                .unwrap_err()
                .to_string()
                .contains("unknown input `_in.v7`")
        );
        let deep = format!("{}a.b{}", "(".repeat(200), ")".repeat(200));
        let r = rewrite(&deep).unwrap();
        assert!(
            compile(&r, &[Inferred::Unknown])
                .unwrap_err()
                .to_string()
                .contains("nests 200")
        );
        // Deep without parentheses: a chain of conditionals and of unary minus.
        let chain = format!("{}a.b", "a.b > 1 ? 1 : ".repeat(120));
        let r = rewrite(&chain).unwrap();
        assert!(compile(&r, &[Inferred::Unknown]).is_err());
        // The parser folds a run of unary minus: accepted (and evaluated without recursion,
        // `crate::derived::eval`).
        let minus = format!("{}a.b", "-".repeat(1500));
        let r = rewrite(&minus).unwrap();
        compile(&r, &[Inferred::Unknown]).unwrap();
        let long = vec!["a.b"; 600].join(" + ");
        let r = rewrite(&long).unwrap();
        assert!(
            compile(&r, &[Inferred::Unknown])
                .unwrap_err()
                .to_string()
                .contains("longer")
        );
    }
}
