//! CEL expressions over records: `record` on plain streams, `key` and `value` on keyed ones.
//!
//! CEL is what Kubernetes users already write in validation rules. The common subset of it is
//! evaluated over the records in place ([`native`]); cel-rust evaluates the rest, and decides
//! every case the subset leaves open, converting the record into CEL values each time. The
//! benchmarks measure both against the native built-ins (`field`, `split`, `regex`).

#[cfg(test)]
mod differential;
mod native;

use std::sync::Arc;

use cel::objects::{Key as CelKey, Map as CelMap};
use cel::{Context, Program, Value as Cel};

use super::value::Value;
use native::{Bindings, Node};

/// A compiled expression.
#[derive(Clone)]
pub struct Expr {
    program: Arc<Program>,
    /// The same expression in the subset evaluated in place, when it is in it.
    native: Option<Arc<Node>>,
    text: String,
}

/// `state` of a new key.
static NULL: Value = Value::Null;

impl Expr {
    /// Compiles `text`; the error is CEL's message, or the bound it breaks. Size and depth are
    /// bounded (see [`sluice_crds::expressions`]) so that evaluation, which recurses once per
    /// level, can never run out of stack at run time: a job that validates does not abort on
    /// its first record.
    pub fn compile(text: &str) -> Result<Self, String> {
        let program = sluice_crds::expressions::compile_cel(text)?;
        Ok(Self {
            native: Node::compile(program.expression()).map(Arc::new),
            program: Arc::new(program),
            text: text.to_string(),
        })
    }

    /// Whether the expression is evaluated in place, never converting records for cel-rust
    /// (unless an evaluation meets a case the subset leaves to it).
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }

    /// The same expression always evaluated by cel-rust: the benchmarks' baseline.
    #[doc(hidden)]
    pub fn interpreted(&self) -> Self {
        Self {
            native: None,
            ..self.clone()
        }
    }

    /// Evaluates with the variables `b` binds: in place when the subset has an answer, else
    /// by cel-rust over copies of them.
    fn eval_bound(&self, root: &Context<'_, '_>, b: Bindings<'_>) -> Result<Value, String> {
        if let Some(v) = self
            .native
            .as_ref()
            .and_then(|node| node.eval(&b))
            .map(native::Val::into_value)
        {
            return Ok(v);
        }
        let mut scope = root.new_inner_scope();
        let single = [
            ("record", b.record),
            ("key", b.key),
            ("value", b.value),
            ("state", b.state),
            ("batch", b.batch),
            ("timer", b.timer),
        ];
        for (name, value) in single {
            if let Some(value) = value {
                scope.add_variable_from_value(name, to_cel(value));
            }
        }
        if let Some(values) = b.values {
            scope.add_variable_from_value(
                "values",
                Cel::List(Arc::new(values.iter().map(to_cel).collect())),
            );
        }
        self.run(&scope)
    }

    /// Evaluates with `record` bound.
    pub fn eval_record(&self, root: &Context<'_, '_>, record: &Value) -> Result<Value, String> {
        self.eval_bound(
            root,
            Bindings {
                record: Some(record),
                ..Bindings::default()
            },
        )
    }

    /// Evaluates with `key` and `value` bound.
    pub fn eval_pair(
        &self,
        root: &Context<'_, '_>,
        key: &Value,
        value: &Value,
    ) -> Result<Value, String> {
        self.eval_bound(
            root,
            Bindings {
                key: Some(key),
                value: Some(value),
                ..Bindings::default()
            },
        )
    }

    /// Evaluates with `key`, `values` (a list) and `state` (`null` when absent) bound: a
    /// state expression.
    pub fn eval_state(
        &self,
        root: &Context<'_, '_>,
        key: &Value,
        values: &[Value],
        state: Option<&Value>,
    ) -> Result<Value, String> {
        self.eval_bound(
            root,
            Bindings {
                key: Some(key),
                values: Some(values),
                state: Some(state.unwrap_or(&NULL)),
                ..Bindings::default()
            },
        )
    }

    /// Whether the expression reads the variable `name`: a variable that costs something to
    /// build is built only for the expressions that read it.
    pub fn reads(&self, name: &str) -> bool {
        self.program.references().has_variable(name)
    }

    /// Evaluates with `key`, `value`, `state` (`null` when absent) and `batch` (when the
    /// expression reads it) bound: a `mapWithState` expression, once per record.
    pub fn eval_record_state(
        &self,
        root: &Context<'_, '_>,
        key: &Value,
        value: &Value,
        state: Option<&Value>,
        batch: Option<&Value>,
    ) -> Result<Value, String> {
        self.eval_bound(
            root,
            Bindings {
                key: Some(key),
                value: Some(value),
                state: Some(state.unwrap_or(&NULL)),
                batch,
                ..Bindings::default()
            },
        )
    }

    /// Evaluates with `key`, `state` (`null` when absent), `timer` (the time the key's timer
    /// was set for) and `batch` (when the expression reads it) bound: `mapWithState`'s
    /// `onTimer`.
    pub fn eval_timer(
        &self,
        root: &Context<'_, '_>,
        key: &Value,
        state: Option<&Value>,
        timer: &Value,
        batch: Option<&Value>,
    ) -> Result<Value, String> {
        self.eval_bound(
            root,
            Bindings {
                key: Some(key),
                state: Some(state.unwrap_or(&NULL)),
                timer: Some(timer),
                batch,
                ..Bindings::default()
            },
        )
    }

    fn run(&self, scope: &Context<'_, '_>) -> Result<Value, String> {
        let result = self
            .program
            .execute(scope)
            .map_err(|e| format!("{}: {e}", self.text))?;
        from_cel(result)
    }
}

/// The context every evaluation's scope derives from; one per task. Besides the environment
/// manifests are compiled in ([`sluice_crds::expressions::environment`]: CEL's standard
/// library, its strings, lists and math extensions, `cel.bind`) it has `sum`, `min` and `max`
/// of a list (or of their arguments): a state expression aggregates its `values` with them.
pub fn root_context() -> Context<'static, 'static> {
    let mut context = Context::with_env(sluice_crds::expressions::environment());
    for (name, result) in [
        ("sum", context.add_function("sum", sum)),
        ("min", context.add_function("min", cel::functions::min)),
        ("max", context.add_function("max", cel::functions::max)),
    ] {
        // Only a clash with a standard function fails, which a cel upgrade would show here.
        if let Err(e) = result {
            tracing::warn!(function = name, error = ?e, "a CEL function is unavailable");
        }
    }
    context
}

thread_local! {
    /// This thread's root context: CEL's function table is built once per task thread, not
    /// once per partition and batch.
    static ROOT: Context<'static, 'static> = root_context();
}

/// Runs `f` with this thread's root context.
pub fn with_root<R>(f: impl FnOnce(&Context<'static, 'static>) -> R) -> R {
    ROOT.with(f)
}

/// `sum(list)` or `sum(a, b, ...)`: an int while every item is one (an error on overflow),
/// a double once one is; 0 for none.
fn sum(
    cel::extractors::Arguments(args): cel::extractors::Arguments,
) -> Result<Cel, cel::ExecutionError> {
    let items: &[Cel] = match args.as_slice() {
        [Cel::List(list)] => list,
        all => all,
    };
    let mut int: i64 = 0;
    let mut float: Option<f64> = None;
    for item in items {
        match (item, &mut float) {
            (Cel::Int(i), None) => {
                int = int.checked_add(*i).ok_or_else(|| {
                    cel::ExecutionError::function_error("sum", "the sum overflows an int")
                })?;
            }
            (Cel::UInt(u), None) => {
                let i = i64::try_from(*u).map_err(|_| {
                    cel::ExecutionError::function_error("sum", "the sum overflows an int")
                })?;
                int = int.checked_add(i).ok_or_else(|| {
                    cel::ExecutionError::function_error("sum", "the sum overflows an int")
                })?;
            }
            (Cel::Int(i), Some(f)) => *f += *i as f64,
            (Cel::UInt(u), Some(f)) => *f += *u as f64,
            (Cel::Float(x), None) => float = Some(int as f64 + x),
            (Cel::Float(x), Some(f)) => *f += x,
            (other, _) => {
                return Err(cel::ExecutionError::function_error(
                    "sum",
                    format!("sums numbers, not a {:?}", other.type_of()),
                ));
            }
        }
    }
    Ok(float.map_or(Cel::Int(int), Cel::Float))
}

fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Int(i) => Cel::Int(*i),
        Value::Float(f) => Cel::Float(*f),
        Value::Str(s) => Cel::String(Arc::new(s.to_string())),
        Value::List(l) => Cel::List(Arc::new(l.iter().map(to_cel).collect())),
        Value::Map(m) => {
            let map: std::collections::HashMap<CelKey, Cel> = m
                .iter()
                .map(|(k, v)| (CelKey::String(Arc::new(k.to_string())), to_cel(v)))
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
        Cel::String(s) => Value::Str(s.as_str().into()),
        Cel::Bytes(b) => Value::Str(String::from_utf8_lossy(&b).into()),
        Cel::List(l) => Value::List(l.iter().cloned().map(from_cel).collect::<Result<_, _>>()?),
        Cel::Map(m) => {
            let mut out = super::value::Fields::new();
            for (k, v) in m.map.iter() {
                let key = match k {
                    CelKey::String(s) => s.to_string(),
                    CelKey::Int(i) => i.to_string(),
                    CelKey::Uint(u) => u.to_string(),
                    CelKey::Bool(b) => b.to_string(),
                };
                out.insert(key.into(), from_cel(v.clone())?);
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
    fn lists_have_sum_min_and_max() {
        let root = root_context();
        let eval = |text: &str, values: Vec<Value>| {
            Expr::compile(text).expect("compiles").eval_state(
                &root,
                &Value::Str("k".into()),
                &values,
                None,
            )
        };
        let ints = vec![Value::Int(3), Value::Int(-1), Value::Int(5)];
        assert_eq!(eval("sum(values)", ints.clone()), Ok(Value::Int(7)));
        assert_eq!(eval("max(values)", ints.clone()), Ok(Value::Int(5)));
        assert_eq!(eval("min(values)", ints), Ok(Value::Int(-1)));
        assert_eq!(eval("sum(values)", vec![]), Ok(Value::Int(0)));
        assert_eq!(
            eval("sum(values)", vec![Value::Int(1), Value::Float(0.5)]),
            Ok(Value::Float(1.5))
        );
        assert_eq!(
            eval("state == null ? sum(1, 2) : 0", vec![]),
            Ok(Value::Int(3))
        );
        assert!(eval("sum(values)", vec![Value::Str("x".into())]).is_err());
        assert!(eval("sum(values)", vec![Value::Int(i64::MAX), Value::Int(1)]).is_err());
    }

    #[test]
    fn what_the_subset_leaves_cel_rust_evaluates() {
        let root = root_context();
        let word = Value::Str("w12".into());
        let macro_filter =
            Expr::compile("[record].exists(r, r.matches('^w[0-9]+$'))").expect("compiles");
        assert!(!macro_filter.is_native());
        assert_eq!(
            macro_filter.eval_record(&root, &word),
            Ok(Value::Bool(true))
        );
        let in_place = Expr::compile("record.matches('^w[0-9]+$')").expect("compiles");
        assert!(in_place.is_native());
        assert_eq!(in_place.eval_record(&root, &word), Ok(Value::Bool(true)));
        // A case the subset leaves open (int plus double) is CEL's error, not a guess.
        let mixed = Expr::compile("record + 1.5").expect("compiles");
        assert!(mixed.is_native());
        assert!(mixed.eval_record(&root, &Value::Int(1)).is_err());
    }

    #[test]
    fn bind_and_the_string_and_list_functions_are_evaluated_in_place() {
        let root = root_context();
        let url = Value::Str("https://x.com/a/b?q=1&channel_id=7&z".into());
        for (text, expected) in [
            (
                "cel.bind(p, record.split('/'), [size(p), p[3]])",
                Value::List(vec![Value::Int(5), Value::Str("a".into())]),
            ),
            (
                "record.split('&channel_id=')[1].split('&')[0]",
                Value::Str("7".into()),
            ),
            (
                "size(record) - size(record.replace('c', ''))",
                Value::Int(2),
            ),
            (
                "cel.bind(x, record.indexOf('?'), record.substring(x + 1, x + 4).upperAscii())",
                Value::Str("Q=1".into()),
            ),
            ("cel.bind(x, 1, cel.bind(x, x + 1, x) + x)", Value::Int(3)),
            (
                "([3, 1, 2] + [5]).sort().reverse().slice(0, 3)",
                Value::List(vec![Value::Int(5), Value::Int(3), Value::Int(2)]),
            ),
            ("' Apple '.trim().lowerAscii()", Value::Str("apple".into())),
        ] {
            let expr = Expr::compile(text).expect("compiles");
            assert!(expr.is_native(), "{text}");
            assert_eq!(
                expr.eval_record(&root, &url),
                Ok(expected.clone()),
                "{text}"
            );
            assert_eq!(
                expr.interpreted().eval_record(&root, &url),
                Ok(expected),
                "{text} in cel-rust"
            );
        }
        // `sortBy` expands into a comprehension the subset does not take.
        let sorted = Expr::compile("[2, 1].sortBy(x, -x)").expect("compiles");
        assert!(!sorted.is_native());
        assert_eq!(
            sorted.eval_record(&root, &url),
            Ok(Value::List(vec![Value::Int(2), Value::Int(1)]))
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
