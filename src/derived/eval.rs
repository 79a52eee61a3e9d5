//! Evaluating a compiled derived expression ([`Compiled`]) with the values of its inputs.

use std::collections::HashMap;

use cel::objects::{Key, Map};
use cel::{Context, Value};

use super::config::expr::Compiled;
use super::config::inputs::INPUTS_MAP;

/// The evaluation context with our functions (`max`, `min`), shared by every evaluation.
pub fn root_context() -> Context<'static, 'static> {
    let mut ctx = Context::default();
    ctx.add_function("max", cel::functions::max)
        .expect("max is not a standard CEL function");
    ctx.add_function("min", cel::functions::min)
        .expect("min is not a standard CEL function");
    ctx
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

#[cfg(test)]
mod tests {
    use super::super::config::expr::compile;
    use super::super::config::inputs::rewrite;
    use super::super::config::units::Inferred;
    use super::*;

    fn compiled(expr: &str, units: &[&str]) -> Compiled {
        crate::derived::config::expr::compiled(expr, units).unwrap()
    }

    #[test]
    fn arithmetic_conditions_and_has_evaluate() {
        let root = root_context();
        let c = compiled("r.current_ka * r.voltage_v", &["kA", "V"]);
        assert_eq!(c.eval(&root, &[Some(400.0), Some(4.2)]), Ok(1680.0));
        let c = compiled("mean(line/pot_*.v) > 8 ? 1 : 0", &["V"]);
        assert_eq!(c.eval(&root, &[Some(9.5)]), Ok(1.0));
        assert_eq!(c.eval(&root, &[Some(4.1)]), Ok(0.0));
        let c = compiled("has(a.x) ? a.x : 0.0", &["kW"]);
        assert_eq!(c.eval(&root, &[None]), Ok(0.0));
        assert_eq!(c.eval(&root, &[Some(2.5)]), Ok(2.5));
        let c = compiled("max(a.x, b.x, 3) - min(a.x, b.x)", &["kW", "kW"]);
        assert_eq!(c.eval(&root, &[Some(1.0), Some(2.0)]), Ok(2.0));
        // A missing input that the expression reads is an error, not a number.
        let c = compiled("a.x + 1", &["kW"]);
        assert!(matches!(c.eval(&root, &[None]), Err(EvalError::Failed(_))));
        // Division by zero is IEEE: the caller turns ±inf and NaN into a bad quality.
        let c = compiled("a.x / 0", &["kW"]);
        assert_eq!(c.eval(&root, &[Some(1.0)]), Ok(f64::INFINITY));
    }

    #[test]
    fn a_folded_run_of_unary_minus_evaluates_without_recursion() {
        let minus = format!("{}a.b", "-".repeat(1500));
        let c = compile(&rewrite(&minus).unwrap(), &[Inferred::Unknown]).unwrap();
        assert_eq!(c.eval(&root_context(), &[Some(2.0)]), Ok(2.0));
    }
}
