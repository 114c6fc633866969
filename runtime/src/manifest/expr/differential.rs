//! The in-place evaluator against cel-rust: random expressions over random records, and
//! wherever the subset gives an answer it must be cel-rust's, value for value.

use std::cell::Cell;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::super::value::Name;
use super::{Bindings, Expr, NULL, Value, root_context};

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..4).prop_map(Value::Int),
        prop_oneof![Just(i64::MAX), Just(i64::MIN), Just(i64::MIN + 1)].prop_map(Value::Int),
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(1.5),
            Just(-2.0),
            Just(3.0),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(1e300),
        ]
        .prop_map(Value::Float),
        prop_oneof![
            Just(""),
            Just("a"),
            Just("ab"),
            Just("é"),
            Just("buy"),
            Just("12"),
            Just("-7"),
            Just("1.5"),
        ]
        .prop_map(|s| Value::Str(s.into())),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(2, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::List),
            prop::collection::btree_map(
                prop_oneof![Just("a"), Just("b"), Just("k")].prop_map(Name::from),
                inner,
                0..3
            )
            .prop_map(|map| Value::Map(map.into_iter().collect())),
        ]
    })
}

/// A record with the fields the expressions name: `n`, `x` and `t` always an int, a double
/// and a text (so that many expressions are well typed), the others of any type or missing.
fn record() -> impl Strategy<Value = Value> {
    let typed = (
        prop_oneof![(-3i64..4), Just(i64::MAX)],
        prop_oneof![Just(0.0), Just(-0.0), Just(2.5), Just(-1.0), Just(3.0)],
        prop_oneof![Just(""), Just("ab"), Just("buy"), Just("é!")],
    );
    let any = prop::collection::btree_map(
        prop_oneof![Just("a"), Just("b"), Just("s"), Just("l"), Just("m")].prop_map(Name::from),
        value(),
        3..6,
    );
    (typed, any).prop_map(|((n, x, t), mut fields)| {
        fields.insert("n".into(), Value::Int(n));
        fields.insert("x".into(), Value::Float(x));
        fields.insert("t".into(), Value::Str(t.into()));
        Value::Map(fields.into_iter().collect())
    })
}

/// The literals and the variables `kind` binds; rarely a name it does not bind, or a uint,
/// which the subset leaves to CEL.
fn leaf(kind: Kind) -> impl Strategy<Value = String> {
    let literals = prop_oneof![
        Just("0"),
        Just("1"),
        Just("-2"),
        Just("3"),
        Just("9223372036854775807"),
        Just("1.5"),
        Just("0.0"),
        Just("-0.5"),
        Just("'a'"),
        Just("''"),
        Just("'é'"),
        Just("'buy'"),
        Just("'12'"),
        Just("' a,B '"),
        Just("','"),
        Just("'é,É'"),
        Just("true"),
        Just("false"),
        Just("null"),
    ];
    let variables: &'static [&'static str] = match kind {
        Kind::Record => &[
            "record",
            "record.a",
            "record.b",
            "record.s",
            "record.l",
            "record.m",
            "record.m.k",
            "record.missing",
            "record.n",
            "record.x",
            "record.t",
        ],
        Kind::Pair => &[
            "key", "value", "value.a", "value.l", "value.n", "value.x", "value.t",
        ],
        Kind::State => &["key", "values", "state", "state.n", "state.t", "state.l"],
        Kind::RecordState => &["key", "value", "value.n", "value.t", "state", "state.x"],
    };
    prop_oneof![
        8 => literals,
        8 => prop::sample::select(variables),
        1 => prop_oneof![Just("other"), Just("1u"), Just("record"), Just("values")],
    ]
    .prop_map(String::from)
}

fn expression(kind: Kind) -> impl Strategy<Value = String> {
    leaf(kind).prop_recursive(3, 16, 3, |inner| {
        let binary = prop_oneof![
            Just("+"),
            Just("-"),
            Just("*"),
            Just("/"),
            Just("%"),
            Just("=="),
            Just("!="),
            Just("<"),
            Just("<="),
            Just(">"),
            Just(">="),
            Just("in"),
            Just("&&"),
            Just("||"),
        ];
        prop_oneof![
            (inner.clone(), binary.clone(), inner.clone())
                .prop_map(|(l, op, r)| format!("({l} {op} {r})")),
            (inner.clone(), binary, inner.clone()).prop_map(|(l, op, r)| format!("({l} {op} {r})")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, t, e)| format!("({c} ? {t} : {e})")),
            inner.clone().prop_map(|x| format!("!({x})")),
            inner.clone().prop_map(|x| format!("-({x})")),
            (inner.clone(), inner.clone()).prop_map(|(x, i)| format!("({x})[{i}]")),
            (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("[{x}, {y}]")),
            (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("{{'k': {x}, 'a': {y}}}")),
            inner.clone().prop_map(|x| format!("({x}).k")),
            inner.clone().prop_map(|x| format!("has(({x}).a)")),
            Just("has(record.a)".to_string()),
            (
                prop_oneof![
                    Just("size"),
                    Just("string"),
                    Just("int"),
                    Just("double"),
                    Just("sum"),
                    Just("min"),
                    Just("max")
                ],
                inner.clone()
            )
                .prop_map(|(f, x)| format!("{f}({x})")),
            (
                prop_oneof![Just("sum"), Just("min"), Just("max")],
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(f, x, y)| format!("{f}({x}, {y})")),
            (
                prop_oneof![Just("contains"), Just("startsWith"), Just("endsWith")],
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(f, x, y)| format!("({x}).{f}({y})")),
            inner.clone().prop_map(|x| format!("({x}).size()")),
            (
                prop_oneof![Just("lowerAscii"), Just("upperAscii"), Just("trim")],
                inner.clone()
            )
                .prop_map(|(f, x)| format!("({x}).{f}()")),
            (
                prop_oneof![Just("split"), Just("indexOf"), Just("substring")],
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(f, x, y)| format!("({x}).{f}({y})")),
            (prop_oneof![Just("sort"), Just("reverse")], inner.clone())
                .prop_map(|(f, x)| format!("({x}).{f}()")),
            (
                prop_oneof![Just("replace"), Just("substring"), Just("slice")],
                inner.clone(),
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(f, x, y, z)| format!("({x}).{f}({y}, {z})")),
            // `cel.bind`: the name read, shadowed, and left unread.
            (inner.clone(), inner.clone())
                .prop_map(|(x, y)| format!("cel.bind(v, {x}, [v, {y}, v])")),
            (inner.clone(), inner.clone())
                .prop_map(|(x, y)| format!("cel.bind(v, {x}, cel.bind(v, [v, {y}], v))")),
            (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("cel.bind(v, {x}, {y})")),
            inner.prop_map(|x| format!("({x}).matches('^[a-b]+$')")),
        ]
    })
}

/// Which variables an evaluation binds: the four ways steps call an expression.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Record,
    Pair,
    State,
    RecordState,
}

#[test]
fn the_subset_answers_as_cel_does() {
    let mut runner = TestRunner::new(Config {
        cases: 4000,
        ..Config::default()
    });
    let (answered, cases) = (Cell::new(0u32), Cell::new(0u32));
    let root = root_context();
    let kind_and_expression = prop_oneof![
        Just(Kind::Record),
        Just(Kind::Pair),
        Just(Kind::State),
        Just(Kind::RecordState)
    ]
    .prop_flat_map(|kind| (expression(kind), Just(kind)));
    let inputs = (
        kind_and_expression,
        record(),
        value(),
        prop::collection::vec(scalar(), 0..4),
        prop::option::of(record()),
    );
    runner
        .run(&inputs, |((text, kind), record, key, values, state)| {
            let Ok(expr) = Expr::compile(&text) else {
                return Ok(());
            };
            cases.set(cases.get() + 1);
            let Some(node) = &expr.native else {
                return Ok(());
            };
            let state_ref = state.as_ref().unwrap_or(&NULL);
            let bindings = match kind {
                Kind::Record => Bindings {
                    record: Some(&record),
                    ..Bindings::default()
                },
                Kind::Pair => Bindings {
                    key: Some(&key),
                    value: Some(&record),
                    ..Bindings::default()
                },
                Kind::State => Bindings {
                    key: Some(&key),
                    values: Some(&values),
                    state: Some(state_ref),
                    ..Bindings::default()
                },
                Kind::RecordState => Bindings {
                    key: Some(&key),
                    value: Some(&record),
                    state: Some(state_ref),
                    ..Bindings::default()
                },
            };
            let Some(native) = node.eval(&bindings).map(super::native::Val::into_value) else {
                return Ok(());
            };
            answered.set(answered.get() + 1);
            let interpreted = expr.interpreted();
            let cel = match kind {
                Kind::Record => interpreted.eval_record(&root, &record),
                Kind::Pair => interpreted.eval_pair(&root, &key, &record),
                Kind::State => interpreted.eval_state(&root, &key, &values, state.as_ref()),
                Kind::RecordState => {
                    interpreted.eval_record_state(&root, &key, &record, state.as_ref(), None)
                }
            };
            // Debug tells 1 from 1.0 and 0.0 from -0.0, which Value's order does not.
            prop_assert_eq!(
                cel.map(|v| format!("{v:?}")),
                Ok(format!("{native:?}")),
                "{} over {:?}",
                text,
                kind
            );
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // The comparison means something only if the subset answers often.
    assert!(
        answered.get() * 8 > cases.get(),
        "the subset answered {} of {} cases",
        answered.get(),
        cases.get()
    );
}
