//! Built-in aggregations (`sum`, `min`, `max`, `count`, `avg`, `last`) as mergeable partial
//! results, so they combine on the map side of a shuffle and subtract in inverse windows.

use serde::{Deserialize, Serialize};
use sluice_crds::Aggregation;

use super::value::Value;

/// A partial aggregate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Acc {
    /// The total and how many values made it, so an inverse window knows when a key is empty
    /// (a sum of zero may still hold values).
    Sum {
        total: Value,
        n: i64,
    },
    Count(i64),
    Min(Value),
    Max(Value),
    Avg {
        sum: f64,
        n: u64,
    },
    Last(Value),
}

fn number(v: Value, op: &str) -> Result<Value, String> {
    match v {
        Value::Int(_) | Value::Float(_) => Ok(v),
        other => Err(format!("{op} needs numbers, got {}", other.describe())),
    }
}

fn add(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x
            .checked_add(*y)
            .map(Value::Int)
            .unwrap_or(Value::Float(*x as f64 + *y as f64)),
        _ => Value::Float(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
    }
}

fn sub(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x
            .checked_sub(*y)
            .map(Value::Int)
            .unwrap_or(Value::Float(*x as f64 - *y as f64)),
        _ => Value::Float(a.as_f64().unwrap_or(0.0) - b.as_f64().unwrap_or(0.0)),
    }
}

impl Acc {
    /// The aggregate of one value.
    pub fn start(op: Aggregation, v: Value) -> Result<Acc, String> {
        Ok(match op {
            Aggregation::Sum => Acc::Sum {
                total: number(v, "sum")?,
                n: 1,
            },
            Aggregation::Count => Acc::Count(1),
            Aggregation::Min => Acc::Min(v),
            Aggregation::Max => Acc::Max(v),
            Aggregation::Avg => Acc::Avg {
                sum: number(v, "avg")?.as_f64().unwrap_or(0.0),
                n: 1,
            },
            Aggregation::Last => Acc::Last(v),
        })
    }

    /// Adds one value.
    pub fn add(&mut self, op: Aggregation, v: Value) -> Result<(), String> {
        let other = Acc::start(op, v)?;
        self.merge(other);
        Ok(())
    }

    /// Merges another partial aggregate of the same operation (`other` is the later one).
    pub fn merge(&mut self, other: Acc) {
        match (self, other) {
            (Acc::Sum { total, n }, Acc::Sum { total: t2, n: n2 }) => {
                *total = add(total, &t2);
                *n += n2;
            }
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Min(a), Acc::Min(b)) => {
                if b < *a {
                    *a = b;
                }
            }
            (Acc::Max(a), Acc::Max(b)) => {
                if b > *a {
                    *a = b;
                }
            }
            (Acc::Avg { sum, n }, Acc::Avg { sum: s2, n: n2 }) => {
                *sum += s2;
                *n += n2;
            }
            (Acc::Last(a), Acc::Last(b)) => *a = b,
            (a, b) => debug_assert!(false, "merging different aggregations {a:?} and {b:?}"),
        }
    }

    /// Removes a partial aggregate that was merged before (`sum` and `count` only).
    pub fn subtract(&mut self, other: &Acc) {
        match (self, other) {
            (Acc::Sum { total, n }, Acc::Sum { total: t2, n: n2 }) => {
                *total = sub(total, t2);
                *n -= n2;
            }
            (Acc::Count(a), Acc::Count(b)) => *a -= b,
            _ => {}
        }
    }

    /// Whether no value is left after subtractions.
    pub fn is_empty(&self) -> bool {
        match self {
            Acc::Sum { n, .. } | Acc::Count(n) => *n <= 0,
            _ => false,
        }
    }

    /// The result.
    pub fn finish(&self) -> Value {
        match self {
            Acc::Sum { total: v, .. } | Acc::Min(v) | Acc::Max(v) | Acc::Last(v) => v.clone(),
            Acc::Count(n) => Value::Int(*n),
            Acc::Avg { sum, n } => Value::Float(if *n == 0 { 0.0 } else { sum / *n as f64 }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(op: Aggregation, values: &[Value]) -> Value {
        let mut acc = Acc::start(op, values[0].clone()).expect("start");
        for v in &values[1..] {
            acc.add(op, v.clone()).expect("add");
        }
        acc.finish()
    }

    #[test]
    fn aggregations() {
        let vs = [Value::Int(3), Value::Float(1.5), Value::Int(4)];
        assert_eq!(fold(Aggregation::Sum, &vs), Value::Float(8.5));
        assert_eq!(fold(Aggregation::Count, &vs), Value::Int(3));
        assert_eq!(fold(Aggregation::Min, &vs), Value::Float(1.5));
        assert_eq!(fold(Aggregation::Max, &vs), Value::Int(4));
        assert_eq!(fold(Aggregation::Avg, &vs), Value::Float(8.5 / 3.0));
        assert_eq!(fold(Aggregation::Last, &vs), Value::Int(4));
    }

    #[test]
    fn sum_refuses_text_and_subtracts() {
        assert!(
            Acc::start(Aggregation::Sum, Value::Str("x".into()))
                .unwrap_err()
                .contains("sum needs numbers")
        );
        let mut a = Acc::start(Aggregation::Sum, Value::Int(5)).expect("start");
        a.add(Aggregation::Sum, Value::Int(-5)).expect("add");
        assert!(!a.is_empty(), "a zero sum still holds values");
        a.subtract(&Acc::start(Aggregation::Sum, Value::Int(5)).expect("start"));
        a.subtract(&Acc::start(Aggregation::Sum, Value::Int(-5)).expect("start"));
        assert!(a.is_empty());
    }
}
