//! The dynamic record of manifest pipelines: text, numbers, or parsed JSON.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::sink::ToText;

/// A record (or key, or value) in a manifest pipeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

impl Value {
    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 2,
            Value::Str(_) => 4,
            Value::List(_) => 5,
            Value::Map(_) => 6,
        }
    }

    /// The value as a float, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The shape of a value for error messages, never its contents: refusals reach logs, and
    /// a failed job's message reaches its status and events, readable by more people than the
    /// data is.
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an integer".into(),
            Value::Float(_) => "a number".into(),
            Value::Str(s) => format!("a text of {} bytes", s.len()),
            Value::List(l) => format!("a list of {} items", l.len()),
            Value::Map(m) => format!("a map of {} fields", m.len()),
        }
    }

    /// Converts parsed JSON.
    pub fn from_json(json: Json) -> Value {
        match json {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => Value::Str(s),
            Json::Array(a) => Value::List(a.into_iter().map(Value::from_json).collect()),
            Json::Object(o) => Value::Map(
                o.into_iter()
                    .map(|(k, v)| (k, Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// Converts to JSON.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => Json::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(Json::Number)
                .unwrap_or(Json::Null),
            Value::Str(s) => Json::String(s.clone()),
            Value::List(l) => Json::Array(l.iter().map(Value::to_json).collect()),
            Value::Map(m) => {
                Json::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// Follows a dotted field path (`geo.country`) into a map; text is parsed as JSON first.
    pub fn field(&self, path: &[String]) -> Result<Value, String> {
        if let Value::Str(text) = self {
            let parsed: Json = serde_json::from_str(text)
                .map_err(|e| format!("record is not JSON ({e}): {}", self.describe()))?;
            return Value::from_json(parsed).field(path);
        }
        let mut current = self;
        for name in path {
            current = match current {
                Value::Map(m) => m
                    .get(name)
                    .ok_or_else(|| format!("no field {name:?} in {}", current.describe()))?,
                other => {
                    return Err(format!(
                        "cannot read field {name:?} of {}",
                        other.describe()
                    ));
                }
            };
        }
        Ok(current.clone())
    }
}

/// Numbers compare by value across Int and Float; -0.0 equals 0.0 and NaN equals itself, so
/// equality, hashing and ordering agree.
fn float_bits(f: f64) -> u64 {
    if f == 0.0 {
        0
    } else if f.is_nan() {
        u64::MAX
    } else {
        f.to_bits()
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Str(a), Value::Str(b)) => a.cmp(b),
            (Value::List(a), Value::List(b)) => a.cmp(b),
            (Value::Map(a), Value::Map(b)) => a.cmp(b),
            (a, b) if a.rank() == 2 && b.rank() == 2 => {
                let (x, y) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
                if float_bits(x) == float_bits(y) {
                    Ordering::Equal
                } else {
                    x.total_cmp(&y)
                }
            }
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }
}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Value::Null => state.write_u8(0),
            Value::Bool(b) => {
                state.write_u8(1);
                b.hash(state);
            }
            // Whole floats hash like the equal integer.
            Value::Int(i) => {
                state.write_u8(2);
                float_bits(*i as f64).hash(state);
            }
            Value::Float(f) => {
                state.write_u8(2);
                float_bits(*f).hash(state);
            }
            Value::Str(s) => StrKey(s).hash(state),
            Value::List(l) => {
                state.write_u8(5);
                l.hash(state);
            }
            Value::Map(m) => {
                state.write_u8(6);
                m.hash(state);
            }
        }
    }
}

/// Looks up a `Value::Str` key by `&str`, without allocating a `String`.
#[derive(Clone, Copy, Debug)]
pub struct StrKey<'a>(pub &'a str);

impl Hash for StrKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u8(4);
        self.0.hash(state);
    }
}

impl indexmap::Equivalent<Value> for StrKey<'_> {
    fn equivalent(&self, key: &Value) -> bool {
        matches!(key, Value::Str(s) if s == self.0)
    }
}

impl ToText for Value {
    fn write_text(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => {
                let _ = write!(out, "{b}");
            }
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Float(f) => {
                let _ = write!(out, "{f}");
            }
            Value::Str(s) => out.push_str(s),
            Value::List(_) | Value::Map(_) => out.push_str(&self.to_json().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::StableHasher;

    fn hash(v: &impl Hash) -> u64 {
        let mut h = StableHasher::default();
        v.hash(&mut h);
        h.finish()
    }

    #[test]
    fn str_key_hashes_like_the_value() {
        assert_eq!(hash(&StrKey("word")), hash(&Value::Str("word".into())));
    }

    #[test]
    fn numbers_compare_across_types() {
        assert_eq!(Value::Int(2), Value::Float(2.0));
        assert_eq!(hash(&Value::Int(2)), hash(&Value::Float(2.0)));
        assert!(Value::Int(1) < Value::Float(1.5));
        assert!(Value::Float(0.0) == Value::Float(-0.0));
    }

    #[test]
    fn fields_of_json_text() {
        let v = Value::Str(r#"{"user":"ann","geo":{"cc":"fr"}}"#.into());
        assert_eq!(
            v.field(&["geo".into(), "cc".into()]),
            Ok(Value::Str("fr".into()))
        );
        assert!(v.field(&["nope".into()]).unwrap_err().contains("no field"));
        assert!(
            Value::Str("not json".into())
                .field(&["a".into()])
                .unwrap_err()
                .contains("not JSON")
        );
    }
}
