//! CEL expressions over records: `record` on plain streams, `key` and `value` on keyed ones.
//!
//! CEL is what Kubernetes users already write in validation rules. Each evaluation converts the
//! record into CEL values, so the native built-ins (`field`, `split`, `regex`) stay the fast path;
//! the benchmarks measure the difference.

use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr as Node, MapExpr, StructExpr};
use cel::objects::{Key as CelKey, Map as CelMap};
use cel::{Context, IdedExpr, Program, Value as Cel};

use super::value::Value;

/// A compiled expression.
#[derive(Clone)]
pub struct Expr {
    program: Arc<Program>,
    text: String,
}

impl Expr {
    /// Compiles `text`; the error is CEL's message, or the bound it breaks. Size and depth are
    /// bounded here so that evaluation, which recurses once per level, can never run out of
    /// stack at run time: a job that validates does not abort on its first record.
    pub fn compile(text: &str) -> Result<Self, String> {
        if text.len() > MAX_EXPR_BYTES {
            return Err(format!(
                "the expression is {} bytes long; the limit is {MAX_EXPR_BYTES}: split the work into several steps",
                text.len()
            ));
        }
        // CEL's parser recurses once per level too, before any depth can be checked: parse on
        // a thread with room for the longest text accepted (a 2,000-term chain needs about
        // 5 MiB in a debug build); untouched stack costs no memory.
        let source = text.to_string();
        let program = std::thread::Builder::new()
            .name("sluice-cel-compile".into())
            .stack_size(COMPILE_STACK_BYTES)
            .spawn(move || parse_bounded(&source))
            .map_err(|e| format!("cannot start the CEL compiler: {e}"))?
            .join()
            .map_err(|_| "the CEL compiler failed on this expression".to_string())??;
        Ok(Self {
            program: Arc::new(program),
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

/// The longest expression accepted, in bytes (the CRD says the same).
pub const MAX_EXPR_BYTES: usize = 4096;
/// The deepest expression accepted: levels of nesting of its syntax tree.
pub const MAX_EXPR_DEPTH: usize = 100;

/// Stack of the thread that parses an expression.
const COMPILE_STACK_BYTES: usize = 64 << 20;

/// Parses `text` and checks its depth; the deep tree of a refused text is dropped here too.
fn parse_bounded(text: &str) -> Result<Program, String> {
    let program = Program::compile(text).map_err(|e| {
        format!(
            "{:?} is not a valid CEL expression: {e}",
            crate::error::shorten(text, 200)
        )
    })?;
    let depth = depth(program.expression());
    if depth > MAX_EXPR_DEPTH {
        return Err(format!(
            "the expression nests {depth} levels deep (a chain of operators counts one level per operator); the limit is {MAX_EXPR_DEPTH}: split the work into several steps"
        ));
    }
    Ok(program)
}

/// The depth of an expression's syntax tree, found without recursion.
fn depth(root: &IdedExpr) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(root, 1usize)];
    while let Some((node, level)) = pending.pop() {
        deepest = deepest.max(level);
        pending.extend(children(node).into_iter().map(|c| (c, level + 1)));
    }
    deepest
}

/// The sub-expressions of `node`.
fn children(node: &IdedExpr) -> Vec<&IdedExpr> {
    match &node.expr {
        Node::Call(call) => call
            .target
            .as_deref()
            .into_iter()
            .chain(call.args.iter())
            .collect(),
        Node::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Node::List(list) => list.elements.iter().collect(),
        Node::Map(MapExpr { entries }) | Node::Struct(StructExpr { entries, .. }) => entries
            .iter()
            .flat_map(|entry| match &entry.expr {
                EntryExpr::StructField(field) => vec![&field.value],
                EntryExpr::MapEntry(pair) => vec![&pair.key, &pair.value],
            })
            .collect(),
        Node::Select(select) => vec![&*select.operand],
        Node::Unspecified | Node::Ident(_) | Node::Literal(_) => Vec::new(),
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
