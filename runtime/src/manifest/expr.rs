//! CEL expressions over records: `record` on plain streams, `key` and `value` on keyed ones.
//!
//! CEL is what Kubernetes users already write in validation rules. Each evaluation converts the
//! record into CEL values, so the native built-ins (`field`, `split`, `regex`) stay the fast path;
//! the benchmarks measure the difference.

use std::sync::Arc;

use cel::objects::{Key as CelKey, Map as CelMap};
use cel::{Context, Program, Value as Cel};

use super::value::Value;

/// A compiled expression.
#[derive(Clone)]
pub struct Expr {
    program: Arc<Program>,
    text: String,
}

impl Expr {
    /// Compiles `text`; the error is CEL's message, or the bound it breaks. Size and depth are
    /// bounded (see [`sluice_crds::expressions`]) so that evaluation, which recurses once per
    /// level, can never run out of stack at run time: a job that validates does not abort on
    /// its first record.
    pub fn compile(text: &str) -> Result<Self, String> {
        Ok(Self {
            program: Arc::new(sluice_crds::expressions::compile_cel(text)?),
            text: text.to_string(),
        })
    }

    /// Evaluates with `record` bound.
    pub fn eval_record(&self, root: &Context<'_, '_>, record: &Value) -> Result<Value, String> {
        let mut scope = root.new_inner_scope();
        scope.add_variable_from_value("record", to_cel(record));
        self.run(&scope)
    }

    /// Evaluates with `key` and `value` bound.
    pub fn eval_pair(
        &self,
        root: &Context<'_, '_>,
        key: &Value,
        value: &Value,
    ) -> Result<Value, String> {
        let mut scope = root.new_inner_scope();
        scope.add_variable_from_value("key", to_cel(key));
        scope.add_variable_from_value("value", to_cel(value));
        self.run(&scope)
    }

    fn run(&self, scope: &Context<'_, '_>) -> Result<Value, String> {
        let result = self
            .program
            .execute(scope)
            .map_err(|e| format!("{}: {e}", self.text))?;
        from_cel(result)
    }
}

/// The context every evaluation's scope derives from; one per task.
pub fn root_context() -> Context<'static, 'static> {
    Context::default()
}

fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Int(i) => Cel::Int(*i),
        Value::Float(f) => Cel::Float(*f),
        Value::Str(s) => Cel::String(Arc::new(s.clone())),
        Value::List(l) => Cel::List(Arc::new(l.iter().map(to_cel).collect())),
        Value::Map(m) => {
            let map: std::collections::HashMap<CelKey, Cel> = m
                .iter()
                .map(|(k, v)| (CelKey::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            Cel::Map(CelMap { map: Arc::new(map) })
        }
    }
}

fn from_cel(v: Cel) -> Result<Value, String> {
    Ok(match v {
        Cel::Null => Value::Null,
        Cel::Bool(b) => Value::Bool(b),
        Cel::Int(i) => Value::Int(i),
        Cel::UInt(u) => i64::try_from(u)
            .map(Value::Int)
            .unwrap_or(Value::Float(u as f64)),
        Cel::Float(f) => Value::Float(f),
        Cel::String(s) => Value::Str(s.to_string()),
        Cel::Bytes(b) => Value::Str(String::from_utf8_lossy(&b).into_owned()),
        Cel::List(l) => Value::List(l.iter().cloned().map(from_cel).collect::<Result<_, _>>()?),
        Cel::Map(m) => {
            let mut out = std::collections::BTreeMap::new();
            for (k, v) in m.map.iter() {
                let key = match k {
                    CelKey::String(s) => s.to_string(),
                    CelKey::Int(i) => i.to_string(),
                    CelKey::Uint(u) => u.to_string(),
                    CelKey::Bool(b) => b.to_string(),
                };
                out.insert(key, from_cel(v.clone())?);
            }
            Value::Map(out)
        }
        other => {
            return Err(format!(
                "the expression returned a {:?}, which records cannot hold",
                other.type_of()
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::expressions::{MAX_EXPR_BYTES, MAX_EXPR_DEPTH};

    #[test]
    fn evaluates_over_records_and_pairs() {
        let root = root_context();
        let e = Expr::compile("record.amount > 10 && record.user != 'bot'").expect("compiles");
        let rec = Value::from_json(serde_json::json!({"user": "ann", "amount": 12}));
        assert_eq!(e.eval_record(&root, &rec), Ok(Value::Bool(true)));
        let p = Expr::compile("key + ':' + string(value)").expect("compiles");
        assert_eq!(
            p.eval_pair(&root, &Value::Str("a".into()), &Value::Int(3)),
            Ok(Value::Str("a:3".into()))
        );
    }

    #[test]
    fn size_and_depth_are_bounded_at_compile_time() {
        let chain = |n: usize| vec!["1"; n].join("+");
        assert!(Expr::compile(&chain(MAX_EXPR_DEPTH - 1)).is_ok());
        let deep = Expr::compile(&chain(MAX_EXPR_DEPTH + 1))
            .err()
            .expect("refused");
        assert!(deep.contains("levels deep"), "{deep}");
        let nested = format!("{}1{}", "[".repeat(150), "]".repeat(150));
        assert!(Expr::compile(&nested).is_err());
        let long = Expr::compile(&chain(100_000)).err().expect("refused");
        assert!(long.contains("the limit is 4096"), "{long}");
        // The longest chain that fits is refused for its depth, and building it costs no stack
        // beyond a task thread's.
        let widest = chain(MAX_EXPR_BYTES / 2);
        let handle = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || Expr::compile(&widest).is_err())
            .expect("thread");
        assert!(handle.join().expect("no overflow"));
    }

    #[test]
    fn the_deepest_accepted_expression_evaluates_on_a_task_thread() {
        let e = Expr::compile(&vec!["record"; MAX_EXPR_DEPTH - 1].join(" + ")).expect("compiles");
        let handle = std::thread::Builder::new()
            .stack_size(crate::exec::TASK_STACK_BYTES)
            .spawn(move || e.eval_record(&root_context(), &Value::Int(1)))
            .expect("thread");
        assert_eq!(
            handle.join().expect("no overflow"),
            Ok(Value::Int(MAX_EXPR_DEPTH as i64 - 1))
        );
    }

    #[test]
    fn errors_are_messages() {
        assert!(Expr::compile("record.(").is_err());
        let e = Expr::compile("record.missing").expect("compiles");
        assert!(
            e.eval_record(&root_context(), &Value::Map(Default::default()))
                .is_err()
        );
    }
}
