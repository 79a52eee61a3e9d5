//! Compiling and evaluating one derived expression with CEL.
//!
//! An expression is rewritten ([`super::inputs`]), compiled once by the `cel` crate, and then
//! checked on its syntax tree before it is accepted:
//! - only arithmetic (`+ - * /`), comparisons, `&& || !`, the conditional `c ? a : b`, unary
//!   minus, `has()`, `double()`, and `max(a, b, …)`/`min(a, b, …)` of several values; no lists,
//!   maps, strings, macros (`map`, `filter`, `all`…) or other functions. Without loops and without
//!   collections the cost of an evaluation is bounded by the size of the tree: at most
//!   [`MAX_EXPR_CHARS`] characters and [`MAX_DEPTH`] levels.
//! - integer literals are read as doubles (`8` as `8.0`), so all arithmetic is IEEE double and
//!   cannot overflow: CEL does not mix ints and doubles, and `a > 8 ? 1 : 0` should just work.
//! - the variables are `_in.vN` only, and the unit of the result is inferred ([`super::units`]).

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{Expr, LiteralValue};
use cel::objects::{Key, Map};
use cel::{Context, IdedExpr, Program, Value};

use super::inputs::{INPUTS_MAP, Rewritten};
use super::units::Inferred;

/// Longest expression accepted, in characters.
pub const MAX_EXPR_CHARS: usize = 2000;
/// Deepest syntax tree accepted (the evaluator recurses once per level).
pub const MAX_DEPTH: usize = 48;

/// A compiled expression and the unit its result has.
pub struct Compiled {
    program: Program,
    /// Keys `v0`, `v1`… of the inputs map, made once.
    keys: Vec<Key>,
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

/// The evaluation context with our functions (`max`, `min`), shared by every evaluation.
pub fn root_context() -> Context<'static, 'static> {
    let mut ctx = Context::default();
    ctx.add_function("max", cel::functions::max)
        .expect("max is not a standard CEL function");
    ctx.add_function("min", cel::functions::min)
        .expect("min is not a standard CEL function");
    ctx
}

/// Compile `rewritten`, whose inputs have the units `units` (one per input). `Err` says why the
/// expression is refused.
pub fn compile(rewritten: &Rewritten, units: &[Inferred]) -> Result<Compiled, String> {
    if rewritten.cel.chars().count() > MAX_EXPR_CHARS {
        return Err(format!(
            "the expression is longer than {MAX_EXPR_CHARS} characters"
        ));
    }
    let depth = nesting(&rewritten.cel);
    if depth > MAX_DEPTH / 2 {
        return Err(format!(
            "the expression nests {depth} parentheses deep, more than {}",
            MAX_DEPTH / 2
        ));
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
fn parse(cel: &str) -> Result<Program, String> {
    let text = cel.to_owned();
    let parsed = std::thread::Builder::new()
        .name("derived-parse".into())
        .stack_size(PARSER_STACK_BYTES)
        .spawn(move || Program::compile(&text).map_err(|e| e.to_string()))
        .map_err(|e| format!("cannot start the parser: {e}"))?
        .join()
        .map_err(|_| "the parser failed".to_string())?;
    parsed.map_err(|e| format!("does not compile: {}", e.trim()))
}

/// Why an evaluation gave no number.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalError {
    /// CEL raised an error (an input without a value, a type mismatch).
    Failed(String),
    /// The result is not a number or a truth value.
    NotANumber(String),
}

impl Compiled {
    /// Evaluate with `values[i]` the value of input `i` (`None`: no good value, left out of
    /// `_in` so that `has()` is false for it). A truth value is 1 or 0. The result may be NaN or
    /// infinite; the caller decides what that means.
    pub fn eval(&self, root: &Context<'_, '_>, values: &[Option<f64>]) -> Result<f64, EvalError> {
        let inputs: HashMap<Key, Value> = self
            .keys
            .iter()
            .zip(values)
            .filter_map(|(k, v)| v.map(|v| (k.clone(), Value::Float(v))))
            .collect();
        let mut ctx = root.new_inner_scope();
        ctx.add_variable_from_value(INPUTS_MAP, Value::Map(Map::from(inputs)));
        match self.program.execute(&ctx) {
            Ok(Value::Float(f)) => Ok(f),
            Ok(Value::Bool(b)) => Ok(if b { 1.0 } else { 0.0 }),
            Ok(Value::Int(i)) => Ok(i as f64),
            Ok(Value::UInt(u)) => Ok(u as f64),
            Ok(other) => Err(EvalError::NotANumber(format!("{other:?}"))),
            Err(e) => Err(EvalError::Failed(e.to_string())),
        }
    }
}

/// The syntax check and unit inference.
struct Check<'a> {
    units: &'a [Inferred],
}

impl Check<'_> {
    fn walk(&self, e: &IdedExpr, depth: usize) -> Result<Inferred, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "the expression nests deeper than {MAX_DEPTH} levels"
            ));
        }
        match &e.expr {
            Expr::Literal(LiteralValue::Double(_)) => Ok(Inferred::Literal),
            Expr::Literal(LiteralValue::Boolean(_)) => Ok(Inferred::Bool),
            Expr::Literal(LiteralValue::Int(_) | LiteralValue::UInt(_)) => Err(
                "hexadecimal and unsigned literals are not accepted: write numbers in decimal"
                    .into(),
            ),
            Expr::Literal(_) => {
                Err("strings, bytes and null have no place in a derived point".into())
            }
            Expr::Select(s) => self.select(&s.operand, &s.field, s.test),
            Expr::Call(c) if c.target.is_none() => {
                let args = c
                    .args
                    .iter()
                    .map(|a| self.walk(a, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                call(&c.func_name, &args)
            }
            Expr::Call(c) => Err(format!(
                "`.{}()` is not available: the functions are mean, sum, min, max, count, rate, delta, has and double",
                c.func_name
            )),
            Expr::Ident(name) => Err(format!(
                "unknown input `{name}`: inputs are written `source/device.point` or `device.point`"
            )),
            Expr::Comprehension(_) => Err(
                "macros (map, filter, all, exists) are not available: evaluation must stay bounded"
                    .into(),
            ),
            Expr::List(_) | Expr::Map(_) | Expr::Struct(_) => {
                Err("lists, maps and messages are not available in a derived point".into())
            }
            Expr::Unspecified => Err("empty expression".into()),
        }
    }

    /// `_in.vN` (an input) or `has(_in.vN)`.
    fn select(&self, operand: &IdedExpr, field: &str, test: bool) -> Result<Inferred, String> {
        let Expr::Ident(map) = &operand.expr else {
            return Err("field selection is only for inputs".into());
        };
        let index = field
            .strip_prefix('v')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&i| map == INPUTS_MAP && i < self.units.len())
            .ok_or_else(|| format!("unknown input `{map}.{field}`"))?;
        Ok(if test {
            Inferred::Bool
        } else {
            self.units[index]
        })
    }
}

/// The unit of a call of an operator or function with arguments of units `args`.
fn call(name: &str, args: &[Inferred]) -> Result<Inferred, String> {
    let pair = || -> Result<(Inferred, Inferred), String> {
        match args {
            [a, b] => Ok((*a, *b)),
            _ => Err(format!("`{name}` takes two operands")),
        }
    };
    match name {
        "_+_" | "_-_" => {
            let (a, b) = pair()?;
            Inferred::same(a, b).map_err(|m| format!("`{}` {m}", op(name)))
        }
        "_*_" => pair().map(|(a, b)| Inferred::product(a, b, false)),
        "_/_" => pair().map(|(a, b)| Inferred::product(a, b, true)),
        "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" => {
            let (a, b) = pair()?;
            Inferred::same(a, b)
                .map(|_| Inferred::Bool)
                .map_err(|m| format!("`{}` {m}", op(name)))
        }
        "_&&_" | "_||_" => pair().map(|_| Inferred::Bool),
        "!_" => Ok(Inferred::Bool),
        "-_" | "double" => match args {
            [a] => Ok(*a),
            _ => Err(format!("`{}` takes one operand", op(name))),
        },
        "_?_:_" => match args {
            [_, a, b] => {
                Inferred::same(*a, *b).map_err(|m| format!("the two branches of `? :` differ: {m}"))
            }
            _ => Err("`? :` takes three operands".into()),
        },
        "max" | "min" if args.len() >= 2 => args[1..]
            .iter()
            .try_fold(args[0], |acc, x| Inferred::same(acc, *x))
            .map_err(|m| format!("`{name}` {m}")),
        "max" | "min" => Err(format!(
            "`{name}(x)` of one value: write `{name}(source/device_glob.point)` for an aggregate, `{name}(a, b)` for the larger of values"
        )),
        other => Err(format!(
            "`{}` is not available: the functions are mean, sum, min, max, count, rate, delta, has and double",
            op(other)
        )),
    }
}

/// An operator's name as written (`_+_` → `+`).
fn op(name: &str) -> &str {
    match name {
        "_?_:_" => "? :",
        n => n.trim_matches('_'),
    }
}

#[cfg(test)]
mod tests {
    use super::super::inputs::rewrite;
    use super::super::units::Unit;
    use super::*;

    fn compiled(expr: &str, units: &[&str]) -> Result<Compiled, String> {
        let r = rewrite(expr)?;
        let units: Vec<_> = units
            .iter()
            .map(|u| match Unit::parse(u) {
                Some(unit) if !u.is_empty() => Inferred::of(unit),
                _ => Inferred::Unknown,
            })
            .collect();
        assert_eq!(units.len(), r.inputs.len(), "{expr}");
        compile(&r, &units)
    }

    #[test]
    fn arithmetic_conditions_and_has_evaluate() {
        let root = root_context();
        let c = compiled("r.current_ka * r.voltage_v", &["kA", "V"]).unwrap();
        assert_eq!(c.eval(&root, &[Some(400.0), Some(4.2)]), Ok(1680.0));
        let c = compiled("mean(line/pot_*.v) > 8 ? 1 : 0", &["V"]).unwrap();
        assert_eq!(c.eval(&root, &[Some(9.5)]), Ok(1.0));
        assert_eq!(c.eval(&root, &[Some(4.1)]), Ok(0.0));
        let c = compiled("has(a.x) ? a.x : 0.0", &["kW"]).unwrap();
        assert_eq!(c.eval(&root, &[None]), Ok(0.0));
        assert_eq!(c.eval(&root, &[Some(2.5)]), Ok(2.5));
        let c = compiled("max(a.x, b.x, 3) - min(a.x, b.x)", &["kW", "kW"]).unwrap();
        assert_eq!(c.eval(&root, &[Some(1.0), Some(2.0)]), Ok(2.0));
        // A missing input that the expression reads is an error, not a number.
        let c = compiled("a.x + 1", &["kW"]).unwrap();
        assert!(matches!(c.eval(&root, &[None]), Err(EvalError::Failed(_))));
        // Division by zero is IEEE: the caller turns ±inf and NaN into a bad quality.
        let c = compiled("a.x / 0", &["kW"]).unwrap();
        assert_eq!(c.eval(&root, &[Some(1.0)]), Ok(f64::INFINITY));
    }

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
            let e = compile(&r, &units).unwrap_err();
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
                .contains("unknown input `_in.v7`")
        );
        let deep = format!("{}a.b{}", "(".repeat(200), ")".repeat(200));
        let r = rewrite(&deep).unwrap();
        assert!(
            compile(&r, &[Inferred::Unknown])
                .unwrap_err()
                .contains("nests 200")
        );
        // Deep without parentheses: a chain of conditionals and of unary minus.
        let chain = format!("{}a.b", "a.b > 1 ? 1 : ".repeat(120));
        let r = rewrite(&chain).unwrap();
        assert!(compile(&r, &[Inferred::Unknown]).is_err());
        // The parser folds a run of unary minus: accepted, and evaluated without recursion.
        let minus = format!("{}a.b", "-".repeat(1500));
        let r = rewrite(&minus).unwrap();
        let c = compile(&r, &[Inferred::Unknown]).unwrap();
        assert_eq!(c.eval(&root_context(), &[Some(2.0)]), Ok(2.0));
        let long = vec!["a.b"; 600].join(" + ");
        let r = rewrite(&long).unwrap();
        assert!(
            compile(&r, &[Inferred::Unknown])
                .unwrap_err()
                .contains("longer")
        );
    }
}
