//! The common subset of CEL evaluated over records as they are.
//!
//! cel-rust evaluates over its own values, so every evaluation copied the record into them (a
//! map's fields into a hash map, each text into a fresh allocation) and looked its variables up
//! by name: ~1.4 µs for `record.action == 'buy' && record.amount > 10`, twenty times the native
//! step. Most manifest expressions are fields, literals, comparisons, boolean and arithmetic
//! operators, the ternary and a few functions; this module compiles those into a tree that reads
//! the record in place.
//!
//! It never decides what CEL means. An expression outside the subset is not compiled here, and
//! an evaluation that meets anything but the plain case (a type mismatch, an overflow, a missing
//! field, division by zero) returns `None`, so that cel-rust evaluates it again and gives its
//! result or its error. The differential property tests (`differential.rs`) hold this evaluator
//! to cel-rust's answers.

use cel::IdedExpr;
use cel::common::ast::{EntryExpr, Expr as Ast, LiteralValue, operators};
use compact_str::ToCompactString;
use regex::Regex;

use super::super::value::{Fields, Name, Text, Value};

/// The variables an evaluation binds; the others are undeclared.
#[derive(Clone, Copy, Default)]
pub(super) struct Bindings<'a> {
    pub record: Option<&'a Value>,
    pub key: Option<&'a Value>,
    pub value: Option<&'a Value>,
    pub values: Option<&'a [Value]>,
    pub state: Option<&'a Value>,
    pub batch: Option<&'a Value>,
    pub timer: Option<&'a Value>,
    /// The innermost name `cel.bind` binds, if any.
    pub local: Option<&'a Local<'a>>,
}

/// A value `cel.bind` names, and the names bound around it.
pub(super) struct Local<'a> {
    value: &'a Value,
    outer: Option<&'a Local<'a>>,
}

/// A compiled expression of the subset.
#[derive(Debug)]
pub(super) enum Node {
    Literal(Value),
    Var(Var),
    /// A name `cel.bind` binds: 0 for the innermost, 1 for the one around it, ...
    Local(usize),
    /// `cel.bind(name, value, expression)`: the value, and the expression that reads it.
    Let(Box<Node>, Box<Node>),
    Field(Box<Node>, String),
    /// `has(operand.field)`.
    Has(Box<Node>, String),
    Index(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Negate(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Conditional(Box<Node>, Box<Node>, Box<Node>),
    Binary(BinaryOp, Box<Node>, Box<Node>),
    List(Vec<Node>),
    Map(Vec<(Name, Node)>),
    Call(Function, Vec<Node>),
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Var {
    Record,
    Key,
    Value,
    Values,
    State,
    Batch,
    Timer,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum BinaryOp {
    Add,
    Subtract,
    Multiply,
    Divide,
    Modulo,
    Equals,
    NotEquals,
    Less,
    LessEquals,
    Greater,
    GreaterEquals,
    In,
}

#[derive(Debug)]
pub(super) enum Function {
    Size,
    String,
    Int,
    Double,
    Contains,
    StartsWith,
    EndsWith,
    /// `text.matches('literal')`: the pattern compiled once, not per record.
    Matches(Regex),
    LowerAscii,
    UpperAscii,
    Trim,
    Replace,
    Split,
    IndexOf,
    Substring,
    Sort,
    Reverse,
    Slice,
    Sum,
    Min,
    Max,
}

impl Node {
    /// The subset's tree for `expr`, or `None` when any part of it is outside the subset.
    pub(super) fn compile(expr: &IdedExpr) -> Option<Node> {
        Node::compile_in(expr, &mut Vec::new())
    }

    /// [`Node::compile`] within the names `cel.bind` binds around `expr`, innermost last.
    fn compile_in(expr: &IdedExpr, names: &mut Vec<String>) -> Option<Node> {
        Some(match &expr.expr {
            Ast::Literal(literal) => Node::Literal(match literal {
                LiteralValue::Boolean(b) => Value::Bool(*b.inner()),
                LiteralValue::Int(i) => Value::Int(*i.inner()),
                LiteralValue::Double(d) => Value::Float(*d.inner()),
                LiteralValue::String(s) => Value::Str(Text::from(s.inner())),
                LiteralValue::Null => Value::Null,
                LiteralValue::UInt(_) | LiteralValue::Bytes(_) => return None,
            }),
            Ast::Ident(name) if names.contains(name) => {
                Node::Local(names.iter().rev().position(|n| n == name)?)
            }
            Ast::Comprehension(c) => {
                let (name, value, expression) = sluice_crds::expressions::as_bind(c)?;
                let value = Node::compile_in(value, names)?;
                names.push(name.to_string());
                let expression = Node::compile_in(expression, names);
                names.pop();
                Node::Let(Box::new(value), Box::new(expression?))
            }
            Ast::Ident(name) => Node::Var(match name.as_str() {
                "record" => Var::Record,
                "key" => Var::Key,
                "value" => Var::Value,
                "values" => Var::Values,
                "state" => Var::State,
                "batch" => Var::Batch,
                "timer" => Var::Timer,
                _ => return None,
            }),
            Ast::Select(select) => {
                let operand = Box::new(Node::compile_in(&select.operand, names)?);
                if select.test {
                    Node::Has(operand, select.field.clone())
                } else {
                    Node::Field(operand, select.field.clone())
                }
            }
            Ast::List(list) if list.optional_indices.is_empty() => Node::List(
                list.elements
                    .iter()
                    .map(|e| Node::compile_in(e, names))
                    .collect::<Option<_>>()?,
            ),
            Ast::Map(map) => {
                let mut entries: Vec<(Name, Node)> = Vec::with_capacity(map.entries.len());
                for entry in &map.entries {
                    let EntryExpr::MapEntry(entry) = &entry.expr else {
                        return None;
                    };
                    let Ast::Literal(LiteralValue::String(key)) = &entry.key.expr else {
                        return None;
                    };
                    let key = Name::from(key.inner());
                    // A repeated key is CEL's error to report.
                    if entry.optional || entries.iter().any(|(k, _)| *k == key) {
                        return None;
                    }
                    entries.push((key, Node::compile_in(&entry.value, names)?));
                }
                // In key order, so that each evaluation appends to the map (see below).
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Node::Map(entries)
            }
            Ast::Call(call) => {
                let name = call.func_name.as_str();
                let mut args = Vec::with_capacity(call.args.len() + 1);
                if let Some(target) = &call.target {
                    args.push(Node::compile_in(target, names)?);
                }
                for arg in &call.args {
                    args.push(Node::compile_in(arg, names)?);
                }
                let member = call.target.is_some();
                return Node::call(name, member, args, &call.args);
            }
            _ => return None,
        })
    }

    fn call(name: &str, member: bool, args: Vec<Node>, ast_args: &[IdedExpr]) -> Option<Node> {
        let structural = !member
            && matches!(
                (name, args.len()),
                (operators::CONDITIONAL, 3)
                    | (
                        operators::LOGICAL_AND | operators::LOGICAL_OR | operators::INDEX,
                        2
                    )
                    | (operators::LOGICAL_NOT | operators::NEGATE, 1)
            );
        let op = (!member && args.len() == 2)
            .then(|| binary_op(name))
            .flatten();
        if !structural && op.is_none() {
            return Node::function(name, member, args, ast_args);
        }
        let mut args = args.into_iter().map(Box::new);
        let mut next = || args.next();
        Some(match (name, op) {
            (_, Some(op)) => Node::Binary(op, next()?, next()?),
            (operators::CONDITIONAL, _) => Node::Conditional(next()?, next()?, next()?),
            (operators::LOGICAL_AND, _) => Node::And(next()?, next()?),
            (operators::LOGICAL_OR, _) => Node::Or(next()?, next()?),
            (operators::INDEX, _) => Node::Index(next()?, next()?),
            (operators::LOGICAL_NOT, _) => Node::Not(next()?),
            _ => Node::Negate(next()?),
        })
    }

    fn function(name: &str, member: bool, args: Vec<Node>, ast_args: &[IdedExpr]) -> Option<Node> {
        let function = match (name, member, args.len()) {
            ("size", _, 1) => Function::Size,
            ("string", false, 1) => Function::String,
            ("int", false, 1) => Function::Int,
            ("double", false, 1) => Function::Double,
            ("contains", true, 2) => Function::Contains,
            ("startsWith", true, 2) => Function::StartsWith,
            ("endsWith", true, 2) => Function::EndsWith,
            ("matches", true, 2) => match ast_args {
                [pattern] => match &pattern.expr {
                    Ast::Literal(LiteralValue::String(p)) => {
                        Function::Matches(Regex::new(p.inner()).ok()?)
                    }
                    _ => return None,
                },
                _ => return None,
            },
            ("lowerAscii", true, 1) => Function::LowerAscii,
            ("upperAscii", true, 1) => Function::UpperAscii,
            ("trim", true, 1) => Function::Trim,
            ("replace", true, 3) => Function::Replace,
            ("split", true, 2) => Function::Split,
            ("indexOf", true, 2) => Function::IndexOf,
            ("substring", true, 2 | 3) => Function::Substring,
            ("sort", true, 1) => Function::Sort,
            ("reverse", true, 1) => Function::Reverse,
            ("slice", true, 3) => Function::Slice,
            ("sum", false, n) if n > 0 => Function::Sum,
            ("min", false, n) if n > 0 => Function::Min,
            ("max", false, n) if n > 0 => Function::Max,
            _ => return None,
        };
        let args = match function {
            // The pattern is compiled; the call keeps its text only.
            Function::Matches(_) => args.into_iter().take(1).collect(),
            _ => args,
        };
        Some(Node::Call(function, args))
    }

    /// The value a node points at without building one (a variable, a literal, a name
    /// `cel.bind` binds, a field of one of these), as a plain reference; `None` for any other
    /// node, or when the field is missing (then [`Node::eval`] decides).
    ///
    /// A reference comes back in a register. A [`Val`] is returned through memory, and reading
    /// it back right after the call stalls on the stores that wrote it; most operands are
    /// fields and literals, so this path takes most of an evaluation's time away.
    #[inline]
    fn place<'a>(&'a self, b: &Bindings<'a>) -> Option<&'a Value> {
        match self {
            Node::Literal(v) => Some(v),
            Node::Var(Var::Record) => b.record,
            Node::Var(Var::Key) => b.key,
            Node::Var(Var::Value) => b.value,
            Node::Var(Var::State) => b.state,
            Node::Var(Var::Batch) => b.batch,
            Node::Var(Var::Timer) => b.timer,
            Node::Field(operand, field) => match operand.place(b)? {
                Value::Map(m) => m.get(field.as_str()),
                _ => None,
            },
            Node::Local(depth) => {
                let mut local = b.local?;
                for _ in 0..*depth {
                    local = local.outer?;
                }
                Some(local.value)
            }
            _ => None,
        }
    }

    /// [`Node::eval`], through [`Node::place`] where the node points at a value.
    #[inline]
    fn operand<'a>(&'a self, b: &Bindings<'a>) -> Option<Val<'a>> {
        match self.place(b) {
            Some(v) => Some(Val::Ref(v)),
            None => self.eval(b),
        }
    }

    /// Evaluates; `None` when CEL must decide (see the module's comment).
    pub(super) fn eval<'a>(&'a self, b: &Bindings<'a>) -> Option<Val<'a>> {
        Some(match self {
            Node::Var(Var::Values) => Val::Slice(b.values?),
            Node::Literal(_) | Node::Var(_) | Node::Local(_) => Val::Ref(self.place(b)?),
            Node::Let(value, expression) => {
                // A part of the input (`state`, a field) is named where it is, not copied.
                let owned: Value;
                let value = match value.operand(b)? {
                    Val::Ref(v) => v,
                    other => {
                        owned = other.into_value();
                        &owned
                    }
                };
                let local = Local {
                    value,
                    outer: b.local,
                };
                let inner = Bindings {
                    local: Some(&local),
                    ..*b
                };
                Val::Own(expression.eval(&inner)?.into_value())
            }
            // A field of a place was looked for by `operand` already; this is a field of a
            // value built here, or of a place that lacks it.
            Node::Field(operand, field) => operand.operand(b)?.field(field)?,
            Node::Has(operand, field) => match operand.operand(b)?.view() {
                View::Map(m) => Val::Own(Value::Bool(m.contains_key(field.as_str()))),
                _ => return None,
            },
            Node::Index(operand, index) => {
                let operand = operand.operand(b)?;
                let index = index.operand(b)?;
                match (operand.view(), index.view()) {
                    (View::List(_), View::Int(i)) => operand.item(usize::try_from(i).ok()?)?,
                    (View::Map(_), View::Str(s)) => operand.field(s)?,
                    _ => return None,
                }
            }
            Node::Not(operand) => match operand.operand(b)?.view() {
                View::Bool(v) => Val::Own(Value::Bool(!v)),
                _ => return None,
            },
            Node::Negate(operand) => match operand.operand(b)?.view() {
                View::Int(i) => Val::Own(Value::Int(i.checked_neg()?)),
                View::Float(f) => Val::Own(Value::Float(-f)),
                _ => return None,
            },
            Node::And(left, right) => match left.operand(b)?.view() {
                View::Bool(false) => Val::Own(Value::Bool(false)),
                View::Bool(true) => match right.operand(b)?.view() {
                    View::Bool(r) => Val::Own(Value::Bool(r)),
                    _ => return None,
                },
                _ => return None,
            },
            Node::Or(left, right) => match left.operand(b)?.view() {
                View::Bool(true) => Val::Own(Value::Bool(true)),
                View::Bool(false) => match right.operand(b)?.view() {
                    View::Bool(r) => Val::Own(Value::Bool(r)),
                    _ => return None,
                },
                _ => return None,
            },
            Node::Conditional(condition, then, otherwise) => match condition.operand(b)?.view() {
                View::Bool(true) => then.operand(b)?,
                View::Bool(false) => otherwise.operand(b)?,
                _ => return None,
            },
            Node::Binary(op, left, right) => {
                let (left, right) = (left.operand(b)?, right.operand(b)?);
                Val::Own(binary(*op, left, right)?)
            }
            Node::List(items) => Val::Own(Value::List(
                items
                    .iter()
                    .map(|item| item.operand(b).map(Val::into_value))
                    .collect::<Option<_>>()?,
            )),
            // The keys are unique and sorted: inserted one by one, each goes at the end of the
            // map, where collecting would gather, sort and deduplicate them first.
            Node::Map(entries) => {
                let mut fields = Fields::with_capacity(entries.len());
                for (k, v) in entries {
                    fields.insert(k.clone(), v.operand(b)?.into_value());
                }
                Val::Own(Value::Map(fields))
            }
            Node::Call(function, args) => Val::Own(call(function, args, b)?),
        })
    }
}

fn binary_op(name: &str) -> Option<BinaryOp> {
    Some(match name {
        operators::ADD => BinaryOp::Add,
        operators::SUBSTRACT => BinaryOp::Subtract,
        operators::MULTIPLY => BinaryOp::Multiply,
        operators::DIVIDE => BinaryOp::Divide,
        operators::MODULO => BinaryOp::Modulo,
        operators::EQUALS => BinaryOp::Equals,
        operators::NOT_EQUALS => BinaryOp::NotEquals,
        operators::LESS => BinaryOp::Less,
        operators::LESS_EQUALS => BinaryOp::LessEquals,
        operators::GREATER => BinaryOp::Greater,
        operators::GREATER_EQUALS => BinaryOp::GreaterEquals,
        operators::IN => BinaryOp::In,
        _ => return None,
    })
}

/// An evaluation's intermediate value: the record's own parts borrowed, results owned.
pub(super) enum Val<'a> {
    Ref(&'a Value),
    Own(Value),
    /// A list bound as a slice (`values`).
    Slice(&'a [Value]),
}

/// What a [`Val`] is, to match on.
#[derive(Clone, Copy)]
enum View<'v> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'v str),
    List(&'v [Value]),
    Map(&'v Fields),
}

fn view(v: &Value) -> View<'_> {
    match v {
        Value::Null => View::Null,
        Value::Bool(b) => View::Bool(*b),
        Value::Int(i) => View::Int(*i),
        Value::Float(f) => View::Float(*f),
        Value::Str(s) => View::Str(s),
        Value::List(l) => View::List(l),
        Value::Map(m) => View::Map(m),
    }
}

impl<'a> Val<'a> {
    fn view(&self) -> View<'_> {
        match self {
            Val::Ref(v) => view(v),
            Val::Own(v) => view(v),
            Val::Slice(s) => View::List(s),
        }
    }

    pub(super) fn into_value(self) -> Value {
        match self {
            Val::Ref(v) => v.clone(),
            Val::Own(v) => v,
            Val::Slice(s) => Value::List(s.to_vec()),
        }
    }

    /// A map's field, borrowed when the map is.
    fn field(self, name: &str) -> Option<Val<'a>> {
        match self {
            Val::Ref(Value::Map(m)) => m.get(name).map(Val::Ref),
            Val::Own(Value::Map(mut m)) => m.remove(name).map(Val::Own),
            _ => None,
        }
    }

    /// A list's item, borrowed when the list is.
    fn item(self, index: usize) -> Option<Val<'a>> {
        match self {
            Val::Ref(Value::List(l)) => l.get(index).map(Val::Ref),
            Val::Slice(l) => l.get(index).map(Val::Ref),
            Val::Own(Value::List(mut l)) => {
                (index < l.len()).then(|| Val::Own(l.swap_remove(index)))
            }
            _ => None,
        }
    }
}

/// CEL's equality where it is plain: numbers across int and double, scalars of one kind, null
/// against anything. Lists and maps against anything but null are left to CEL.
fn equals(left: View<'_>, right: View<'_>) -> Option<bool> {
    Some(match (left, right) {
        (View::Null, View::Null) => true,
        (View::Bool(a), View::Bool(b)) => a == b,
        (View::Int(a), View::Int(b)) => a == b,
        (View::Float(a), View::Float(b)) => a == b,
        (View::Int(a), View::Float(b)) | (View::Float(b), View::Int(a)) => a as f64 == b,
        (View::Str(a), View::Str(b)) => a == b,
        // Null equals only null, a list or a map included: `state != null`.
        (View::Null, _) | (_, View::Null) => false,
        (View::List(_) | View::Map(_), _) | (_, View::List(_) | View::Map(_)) => return None,
        _ => false,
    })
}

/// CEL's order of two scalars of one kind, or of an int and a double.
fn compare(left: View<'_>, right: View<'_>) -> Option<std::cmp::Ordering> {
    match (left, right) {
        (View::Int(a), View::Int(b)) => Some(a.cmp(&b)),
        (View::Float(a), View::Float(b)) => a.partial_cmp(&b),
        (View::Int(a), View::Float(b)) => (a as f64).partial_cmp(&b),
        (View::Float(a), View::Int(b)) => a.partial_cmp(&(b as f64)),
        (View::Str(a), View::Str(b)) => Some(a.cmp(b)),
        (View::Bool(a), View::Bool(b)) => Some(a.cmp(&b)),
        _ => None,
    }
}

fn binary(op: BinaryOp, left: Val<'_>, right: Val<'_>) -> Option<Value> {
    use std::cmp::Ordering::{Greater, Less};
    let (l, r) = (left.view(), right.view());
    Some(match op {
        BinaryOp::Add => match (l, r) {
            (View::Int(a), View::Int(b)) => Value::Int(a.checked_add(b)?),
            (View::Float(a), View::Float(b)) => Value::Float(a + b),
            (View::Str(a), View::Str(b)) => {
                let mut s = Text::with_capacity(a.len() + b.len());
                s.push_str(a);
                s.push_str(b);
                Value::Str(s)
            }
            (View::List(a), View::List(b)) => Value::List(a.iter().chain(b).cloned().collect()),
            _ => return None,
        },
        BinaryOp::Subtract => match (l, r) {
            (View::Int(a), View::Int(b)) => Value::Int(a.checked_sub(b)?),
            (View::Float(a), View::Float(b)) => Value::Float(a - b),
            _ => return None,
        },
        BinaryOp::Multiply => match (l, r) {
            (View::Int(a), View::Int(b)) => Value::Int(a.checked_mul(b)?),
            (View::Float(a), View::Float(b)) => Value::Float(a * b),
            _ => return None,
        },
        BinaryOp::Divide => match (l, r) {
            (View::Int(a), View::Int(b)) if b != 0 => Value::Int(a.checked_div(b)?),
            (View::Float(a), View::Float(b)) => Value::Float(a / b),
            _ => return None,
        },
        BinaryOp::Modulo => match (l, r) {
            (View::Int(a), View::Int(b)) if b != 0 => Value::Int(a.checked_rem(b)?),
            _ => return None,
        },
        BinaryOp::Equals => Value::Bool(equals(l, r)?),
        BinaryOp::NotEquals => Value::Bool(!equals(l, r)?),
        BinaryOp::Less => Value::Bool(compare(l, r)? == Less),
        BinaryOp::LessEquals => Value::Bool(compare(l, r)? != Greater),
        BinaryOp::Greater => Value::Bool(compare(l, r)? == Greater),
        BinaryOp::GreaterEquals => Value::Bool(compare(l, r)? != Less),
        BinaryOp::In => match (l, r) {
            (item, View::List(list)) => {
                let mut found = false;
                for candidate in list {
                    if equals(item, view(candidate))? {
                        found = true;
                        break;
                    }
                }
                Value::Bool(found)
            }
            (View::Str(key), View::Map(map)) => Value::Bool(map.contains_key(key)),
            _ => return None,
        },
    })
}

fn call(function: &Function, args: &[Node], b: &Bindings<'_>) -> Option<Value> {
    let first = args.first()?.operand(b)?;
    Some(match function {
        Function::Size => Value::Int(match first.view() {
            View::Str(s) => i64::try_from(s.chars().count()).ok()?,
            View::List(l) => i64::try_from(l.len()).ok()?,
            View::Map(m) => i64::try_from(m.len()).ok()?,
            _ => return None,
        }),
        Function::String => match first.view() {
            View::Str(_) => first.into_value(),
            View::Int(i) => Value::Str(i.to_compact_string()),
            _ => return None,
        },
        Function::Int => match first.view() {
            View::Int(_) => first.into_value(),
            View::Str(s) => Value::Int(s.parse().ok()?),
            _ => return None,
        },
        Function::Double => match first.view() {
            View::Float(_) => first.into_value(),
            View::Int(i) => Value::Float(i as f64),
            _ => return None,
        },
        Function::Contains | Function::StartsWith | Function::EndsWith => {
            let second = args.get(1)?.operand(b)?;
            let (View::Str(text), View::Str(part)) = (first.view(), second.view()) else {
                return None;
            };
            Value::Bool(match function {
                Function::Contains => text.contains(part),
                Function::StartsWith => text.starts_with(part),
                _ => text.ends_with(part),
            })
        }
        Function::Matches(pattern) => match first.view() {
            View::Str(text) => Value::Bool(pattern.is_match(text)),
            _ => return None,
        },
        Function::LowerAscii | Function::UpperAscii | Function::Trim => {
            let View::Str(text) = first.view() else {
                return None;
            };
            let mut text = Text::from(match function {
                Function::Trim => text.trim(),
                _ => text,
            });
            match function {
                Function::LowerAscii => text.make_ascii_lowercase(),
                Function::UpperAscii => text.make_ascii_uppercase(),
                _ => {}
            }
            Value::Str(text)
        }
        Function::Replace | Function::Split | Function::IndexOf | Function::Substring => {
            let rest = two_more(args, b)?;
            let View::Str(text) = first.view() else {
                return None;
            };
            strings(function, text, &rest)?
        }
        Function::Sort | Function::Reverse | Function::Slice => {
            lists(function, first, &two_more(args, b)?)?
        }
        Function::Sum | Function::Min | Function::Max => {
            let rest: Vec<Val<'_>> = args[1..]
                .iter()
                .map(|a| a.operand(b))
                .collect::<Option<_>>()?;
            aggregate(function, first, rest)?
        }
    })
}

/// The second and third arguments of an extension function, those it has: they take at most
/// three, and a call per record allocates nothing for them.
fn two_more<'a>(args: &'a [Node], b: &Bindings<'a>) -> Option<[Option<Val<'a>>; 2]> {
    let arg = |i: usize| match args.get(i) {
        Some(node) => node.operand(b).map(Some),
        None => Some(None),
    };
    Some([arg(1)?, arg(2)?])
}

/// The strings extension's functions that take arguments, as cel-rust computes them. Indices
/// count code points, not bytes; every error (an index out of range) is left to cel-rust.
fn strings(function: &Function, text: &str, args: &[Option<Val<'_>>; 2]) -> Option<Value> {
    let text_arg = |i: usize| match args[i].as_ref()?.view() {
        View::Str(s) => Some(s),
        _ => None,
    };
    let int_arg = |i: usize| match args[i].as_ref()?.view() {
        View::Int(n) => Some(n),
        _ => None,
    };
    Some(match function {
        Function::Replace => Value::Str(text.replace(text_arg(0)?, text_arg(1)?).into()),
        Function::Split => {
            let separator = text_arg(0)?;
            let parts: Vec<Value> = if separator.is_empty() {
                text.chars()
                    .map(|c| Value::Str(std::iter::once(c).collect()))
                    .collect()
            } else {
                text.split(separator)
                    .map(|part| Value::Str(part.into()))
                    .collect()
            };
            Value::List(parts)
        }
        // A match of valid UTF-8 in valid UTF-8 starts on a code point, and the first one in
        // bytes is the first one in code points.
        Function::IndexOf => Value::Int(match text.find(text_arg(0)?) {
            Some(at) => i64::try_from(text[..at].chars().count()).ok()?,
            None => -1,
        }),
        _ => {
            let length = text.chars().count();
            let start = usize::try_from(int_arg(0)?).ok()?;
            let end = match args[1] {
                None => length,
                Some(_) => usize::try_from(int_arg(1)?).ok()?,
            };
            if start > end || end > length {
                return None;
            }
            Value::Str(text.chars().skip(start).take(end - start).collect())
        }
    })
}

/// The lists extension's `sort`, `reverse` (of a list, or of a text's code points, the strings
/// extension's) and `slice`, as cel-rust computes them; errors are left to it.
fn lists(function: &Function, first: Val<'_>, args: &[Option<Val<'_>>; 2]) -> Option<Value> {
    if let (Function::Reverse, View::Str(text)) = (function, first.view()) {
        return Some(Value::Str(text.chars().rev().collect()));
    }
    let View::List(items) = first.view() else {
        return None;
    };
    Some(match function {
        Function::Sort => {
            // One type throughout, as CEL requires; doubles (NaN) are left to it.
            let one_type = items.iter().all(|v| matches!(v, Value::Int(_)))
                || items.iter().all(|v| matches!(v, Value::Str(_)))
                || items.iter().all(|v| matches!(v, Value::Bool(_)));
            if !one_type {
                return None;
            }
            let Value::List(mut items) = first.into_value() else {
                return None;
            };
            items.sort_by(|a, b| compare(view(a), view(b)).unwrap_or(std::cmp::Ordering::Equal));
            Value::List(items)
        }
        Function::Reverse => {
            let Value::List(mut items) = first.into_value() else {
                return None;
            };
            items.reverse();
            Value::List(items)
        }
        _ => {
            let (View::Int(start), View::Int(end)) =
                (args[0].as_ref()?.view(), args[1].as_ref()?.view())
            else {
                return None;
            };
            let (start, end) = (usize::try_from(start).ok()?, usize::try_from(end).ok()?);
            Value::List(items.get(start..end)?.to_vec())
        }
    })
}

/// `sum`, `min` and `max` of a list, or of their arguments, as `super::sum` and cel-rust's
/// `min` and `max` compute them.
fn aggregate(function: &Function, first: Val<'_>, rest: Vec<Val<'_>>) -> Option<Value> {
    let owned: Vec<Value>;
    let items: &[Value] = match (first.view(), rest.is_empty()) {
        (View::List(list), true) => list,
        (_, true) if !matches!(function, Function::Sum) => return Some(first.into_value()),
        _ => {
            owned = std::iter::once(first)
                .chain(rest)
                .map(Val::into_value)
                .collect();
            &owned
        }
    };
    match function {
        Function::Sum => {
            let mut int: i64 = 0;
            let mut float: Option<f64> = None;
            for item in items {
                match (item, &mut float) {
                    (Value::Int(i), None) => int = int.checked_add(*i)?,
                    (Value::Int(i), Some(f)) => *f += *i as f64,
                    (Value::Float(x), None) => float = Some(int as f64 + x),
                    (Value::Float(x), Some(f)) => *f += x,
                    _ => return None,
                }
            }
            Some(float.map_or(Value::Int(int), Value::Float))
        }
        _ => {
            let keep = if matches!(function, Function::Min) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            };
            let Some((head, tail)) = items.split_first() else {
                return Some(Value::Null);
            };
            let mut best = head;
            for item in tail {
                if compare(view(best), view(item))? != keep {
                    best = item;
                }
            }
            Some(best.clone())
        }
    }
}
