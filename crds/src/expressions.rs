//! The expressions a manifest holds, checked the way the runtime compiles them: CEL (bounded
//! in size and depth, so that evaluation, which recurses once per level, never runs out of
//! stack) and regular expressions. Shared so that `sluice validate` and the operator refuse
//! the same texts with the same words before any pod starts.

use cel::common::ast::{EntryExpr, Expr as Node, MapExpr, StructExpr};
use cel::{IdedExpr, Program};

/// The longest expression accepted, in bytes (the CRD says the same).
pub const MAX_EXPR_BYTES: usize = 4096;
/// The deepest expression accepted: levels of nesting of its syntax tree.
pub const MAX_EXPR_DEPTH: usize = 100;

/// Stack of the thread that parses an expression.
const COMPILE_STACK_BYTES: usize = 64 << 20;

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
    let program = Program::compile(text).map_err(|e| {
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
}
