//! The expressions a manifest holds, checked the way the runtime compiles them: CEL (bounded
//! in size and depth, so that evaluation, which recurses once per level, never runs out of
//! stack) and regular expressions. Shared so that `sluice validate` and the operator refuse
//! the same texts with the same words before any pod starts.

use std::sync::{Arc, LazyLock};

use cel::common::ast::{
    ComprehensionExpr, EntryExpr, Expr as Node, ListExpr, LiteralValue, MapExpr, StructExpr,
};
use cel::parser::{Macro, MacroExprHelper, ParseError};
use cel::{Env, IdedExpr, Program};

/// The longest expression accepted, in bytes (the CRD says the same).
pub const MAX_EXPR_BYTES: usize = 4096;
/// The deepest expression accepted: levels of nesting of its syntax tree.
pub const MAX_EXPR_DEPTH: usize = 100;

/// Stack of the thread that parses an expression.
const COMPILE_STACK_BYTES: usize = 64 << 20;

/// The name `cel.bind` gives no loop variable, as cel-go's expansion names it.
const UNUSED_ITER_VAR: &str = "#unused";

/// The CEL environment every manifest expression is compiled and evaluated in: CEL's standard
/// library, the `strings` (`split`, `replace`, `lowerAscii`, `indexOf`, `substring`, ...),
/// `lists` (`slice`, `sort`, `sortBy`, ...) and `math` (`math.greatest`, ...) extensions, and
/// `cel.bind(name, value, expression)`, which names a value once for an expression to use
/// several times. These are the libraries Kubernetes' own CEL offers, so a rule written for a
/// ValidatingAdmissionPolicy reads the same here.
pub fn environment() -> Arc<Env> {
    // Only a clash with an overload already declared fails, which a cel upgrade would show in
    // this module's test; the standard library alone is then better than no expressions.
    static ENVIRONMENT: LazyLock<Arc<Env>> =
        LazyLock::new(|| Arc::new(build_environment().unwrap_or_else(|_| Env::stdlib())));
    Arc::clone(&ENVIRONMENT)
}

fn build_environment() -> Result<Env, cel::DeclarationError> {
    let mut env = Env::stdlib();
    env.add_extension(cel::extensions::strings)?;
    env.add_extension(cel::extensions::lists)?;
    env.add_extension(cel::extensions::math)?;
    env.add_macro(Macro::receiver("bind", 3, bind))?;
    Ok(env)
}

/// `cel.bind(name, value, expression)`: `expression` with `name` bound to `value`, expanded as
/// cel-go expands it, into a comprehension over no items whose accumulator is the value.
fn bind(
    helper: &mut MacroExprHelper<'_>,
    target: &mut Option<IdedExpr>,
    args: &mut Vec<IdedExpr>,
) -> Result<Option<IdedExpr>, ParseError> {
    if !matches!(target.as_ref().map(|t| &t.expr), Some(Node::Ident(namespace)) if namespace == "cel")
    {
        return Ok(None);
    }
    let [name, value, expression] = std::mem::take(args)
        .try_into()
        .map_err(|_: Vec<IdedExpr>| helper.new_error(0, "cel.bind() takes three arguments"))?;
    let Node::Ident(name) = name.expr else {
        return Err(helper.new_error(
            name.id,
            "cel.bind() binds a simple name: cel.bind(total, a + b, total * 2)",
        ));
    };
    let none = helper.next_expr(Node::List(ListExpr::new(Vec::new())));
    let stop = helper.next_expr(Node::Literal(LiteralValue::Boolean(false.into())));
    let step = helper.next_expr(Node::Ident(name.clone()));
    Ok(Some(helper.next_expr(Node::Comprehension(Box::new(
        ComprehensionExpr {
            iter_range: none,
            iter_var: UNUSED_ITER_VAR.to_string(),
            iter_var2: None,
            accu_var: name,
            accu_init: value,
            loop_cond: stop,
            loop_step: step,
            result: expression,
        },
    )))))
}

/// The parts of a `cel.bind` expansion: the name, its value and the expression.
pub fn as_bind(c: &ComprehensionExpr) -> Option<(&str, &IdedExpr, &IdedExpr)> {
    let empty = matches!(&c.iter_range.expr, Node::List(l) if l.elements.is_empty());
    let stops = matches!(&c.loop_cond.expr, Node::Literal(LiteralValue::Boolean(b)) if !*b.inner());
    (empty && stops && c.iter_var == UNUSED_ITER_VAR && c.iter_var2.is_none()).then_some((
        c.accu_var.as_str(),
        &c.accu_init,
        &c.result,
    ))
}

/// Compiles a CEL expression; the error is CEL's message, or the bound it breaks.
pub fn compile_cel(text: &str) -> Result<Program, String> {
    if text.len() > MAX_EXPR_BYTES {
        return Err(format!(
            "the expression is {} bytes long; the limit is {MAX_EXPR_BYTES}: split the work into several steps",
            text.len()
        ));
    }
    // CEL's parser recurses once per level too, before any depth can be checked: parse on a
    // thread with room for the longest text accepted (a 2,000-term chain needs about 5 MiB in
    // a debug build); untouched stack costs no memory.
    let source = text.to_string();
    std::thread::Builder::new()
        .name("sluice-cel-compile".into())
        .stack_size(COMPILE_STACK_BYTES)
        .spawn(move || parse_bounded(&source))
        .map_err(|e| format!("cannot start the CEL compiler: {e}"))?
        .join()
        .map_err(|_| "the CEL compiler failed on this expression".to_string())?
}

/// Why `text` is not a regular expression the runtime takes.
pub fn check_regex(text: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(text).map_err(|e| format!("{text:?} is not a valid regular expression: {e}"))
}

/// Parses `text` and checks its depth; the deep tree of a refused text is dropped here too.
fn parse_bounded(text: &str) -> Result<Program, String> {
    let program = environment().compile(text).map_err(|e| {
        format!(
            "{:?} is not a valid CEL expression: {e}",
            crate::shorten(text, 200)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_depth_are_bounded_and_bad_texts_named() {
        let chain = |n: usize| vec!["1"; n].join("+");
        assert!(compile_cel(&chain(MAX_EXPR_DEPTH - 1)).is_ok());
        let Err(deep) = compile_cel(&chain(MAX_EXPR_DEPTH + 1)) else {
            panic!("refused")
        };
        assert!(deep.contains("levels deep"), "{deep}");
        let Err(long) = compile_cel(&chain(100_000)) else {
            panic!("refused")
        };
        assert!(long.contains("the limit is 4096"), "{long}");
        let Err(bad) = compile_cel("record.a >") else {
            panic!("refused")
        };
        assert!(bad.contains("is not a valid CEL expression"), "{bad}");
        assert!(check_regex("#\\w+").is_ok());
        let Err(re) = check_regex("(") else {
            panic!("refused")
        };
        assert!(re.contains("is not a valid regular expression"), "{re}");
    }

    #[test]
    fn the_environment_has_every_extension_and_bind() {
        assert!(build_environment().is_ok());
        let run = |text: &str| {
            let program = compile_cel(text).expect("compiles");
            program.execute(&cel::Context::with_env(environment()))
        };
        assert_eq!(
            run("'a/b/c'.split('/')[1].upperAscii()"),
            Ok(cel::Value::from("B"))
        );
        assert_eq!(run("[3, 1, 2].sort().slice(0, 2)"), Ok(vec![1, 2].into()));
        assert_eq!(run("math.greatest(1, 5, 3)"), Ok(5.into()));
        assert_eq!(run("cel.bind(x, 2 + 3, x * x + x)"), Ok(30.into()));
        assert_eq!(run("cel.bind(x, 1, cel.bind(x, x + 1, x))"), Ok(2.into()));
        let Err(name) = compile_cel("cel.bind(a.b, 1, 2)") else {
            panic!("refused")
        };
        assert!(name.contains("binds a simple name"), "{name}");
        // `bind` on anything but `cel` is left as the call it is.
        assert!(compile_cel("x.bind(a, 1, 2)").is_ok());
        let expansion = compile_cel("cel.bind(y, 1, y)").expect("compiles");
        let Node::Comprehension(c) = &expansion.expression().expr else {
            panic!("a comprehension")
        };
        assert!(matches!(as_bind(c), Some(("y", _, _))));
    }
}
