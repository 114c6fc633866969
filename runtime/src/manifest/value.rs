//! The dynamic record of manifest pipelines: text, numbers, or parsed JSON.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::sink::ToText;

/// A field's name in a record: kept inline, without an allocation, up to 24 bytes, so that
/// making, copying and freeing a record does not allocate each of its field names. It encodes
/// (postcard, JSON), hashes and orders as the text it holds, as `String` does.
pub type Name = compact_str::CompactString;

/// A text value: kept inline up to 24 bytes as a [`Name`] is, so that words, keys, channel
/// names and other short texts are made, copied, shuffled, decoded and freed without an
/// allocation, and a large keyed state holds its short keys in its own entries. It encodes,
/// hashes and orders as the text it holds, as `String` does, so checkpoints and shuffles
/// written before read back and keys stay in their partitions.
pub type Text = compact_str::CompactString;

pub use super::fields::Fields;

/// A record (or key, or value) in a manifest pipeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Text),
    List(Vec<Value>),
    Map(Fields),
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
            Json::String(s) => Value::Str(s.into()),
            Json::Array(a) => Value::List(a.into_iter().map(Value::from_json).collect()),
            Json::Object(o) => Value::Map(
                o.into_iter()
                    .map(|(k, v)| (Name::from(k), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// Parses JSON text straight into a value, as [`Value::from_json`] of the parsed text but
    /// without building a `serde_json::Value` first: one allocation per field instead of three.
    pub fn parse_json(text: &str) -> Result<Value, serde_json::Error> {
        use serde::de::DeserializeSeed;
        let mut de = serde_json::Deserializer::from_str(text);
        let value = JsonSeed.deserialize(&mut de)?;
        de.end()?;
        Ok(value)
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
            Value::Str(s) => Json::String(s.to_string()),
            Value::List(l) => Json::Array(l.iter().map(Value::to_json).collect()),
            Value::Map(m) => Json::Object(
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Follows a dotted field path (`geo.country`) into a map; text is parsed as JSON first.
    pub fn field(&self, path: &[String]) -> Result<Value, String> {
        if let Value::Str(text) = self {
            let parsed = Value::parse_json(text)
                .map_err(|e| format!("record is not JSON ({e}): {}", self.describe()))?;
            return parsed.field(path);
        }
        let mut current = self;
        for name in path {
            current = match current {
                Value::Map(m) => m
                    .get(name.as_str())
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

/// Reads JSON into a [`Value`] (see [`Value::parse_json`]).
struct JsonSeed;

impl<'de> serde::de::DeserializeSeed<'de> for JsonSeed {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }

    /// Past `i64`, a float, as [`Value::from_json`] makes it.
    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(i64::try_from(u).map_or(Value::Float(u as f64), Value::Int))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Str(s.into()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::Str(s.into()))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(JsonSeed)? {
            items.push(item);
        }
        Ok(Value::List(items))
    }

    /// A key given twice keeps its last value, as `serde_json` does.
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        // A short name is read into place, not allocated.
        while let Some(key) = map.next_key::<Name>()? {
            let value = map.next_value_seed(JsonSeed)?;
            pairs.push((key, value));
        }
        Ok(Value::Map(Fields::from_pairs(pairs)))
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
            Value::Str(s) => StrKey(s.as_str()).hash(state),
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
    use std::collections::BTreeMap;

    use super::*;
    use crate::data::stable_hash;

    fn hash(v: &impl Hash) -> u64 {
        stable_hash(v)
    }

    /// Checkpoints and shuffles written with `String` names and texts read back, and keys land
    /// in the same partitions: a name or a text encodes and hashes as the text it holds, short
    /// or long.
    #[test]
    fn names_encode_and_hash_as_text() {
        #[derive(Serialize)]
        enum Before {
            #[allow(dead_code)]
            Null,
            #[allow(dead_code)]
            Bool(bool),
            Int(i64),
            #[allow(dead_code)]
            Float(f64),
            Str(String),
            #[allow(dead_code)]
            List(Vec<Before>),
            Map(BTreeMap<String, Before>),
        }
        let long = "a field name longer than twenty-four bytes";
        let now = Value::Map(Fields::from([
            (Name::from("id"), Value::Int(7)),
            (Name::from(long), Value::Str("x".into())),
            (Name::from("text"), Value::Str(long.into())),
        ]));
        let before = Before::Map(BTreeMap::from([
            ("id".to_string(), Before::Int(7)),
            (long.to_string(), Before::Str("x".into())),
            ("text".to_string(), Before::Str(long.into())),
        ]));
        let bytes = postcard::to_allocvec(&now).expect("encodes");
        assert_eq!(bytes, postcard::to_allocvec(&before).expect("encodes"));
        let back: Value = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, now);
        for name in ["id", long] {
            assert_eq!(hash(&Name::from(name)), hash(&name.to_string()));
            assert_eq!(hash(&Value::Str(name.into())), hash(&StrKey(name)));
        }
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

    /// What `parse_json` makes of a text is exactly what parsing to JSON and converting does,
    /// and it refuses what `serde_json` refuses.
    #[test]
    fn parse_json_agrees_with_parse_and_convert() {
        let texts = [
            r#"{"type":"bid","auction":1007,"price":12.5,"extra":null,"tags":["a",1,[true]]}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"big":18446744073709551615,"neg":-9223372036854775808,"e":1e300,"esc":"\u00e9\n"}"#,
            "[]",
            "  \"x\"  ",
            "-0.0",
        ];
        for text in texts {
            let expected = Value::from_json(serde_json::from_str(text).expect("json"));
            let got = Value::parse_json(text).expect("parse");
            // Compared as JSON too: `Value` equality holds 2 == 2.0.
            assert_eq!(got.to_json(), expected.to_json(), "{text}");
            assert_eq!(got, expected, "{text}");
        }
        for bad in ["", "{", "{\"a\":}", "[1,]", "1 2", "nul", "{\"a\":1}}"] {
            assert!(serde_json::from_str::<Json>(bad).is_err(), "{bad}");
            assert!(Value::parse_json(bad).is_err(), "{bad}");
        }
    }

    fn json() -> impl proptest::strategy::Strategy<Value = Json> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(Json::from),
            any::<u64>().prop_map(Json::from),
            (-1e12f64..1e12).prop_map(Json::from),
            ".{0,8}".prop_map(Json::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                proptest::collection::vec((".{0,4}", inner), 0..4)
                    .prop_map(|fields| Json::Object(fields.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn parse_json_reads_what_serde_json_writes(json in json()) {
            // Against serde_json's reading of the same text: its float parsing may land a unit
            // in the last place off the value the text was printed from, and so does ours.
            let text = serde_json::to_string(&json).expect("text");
            let got = Value::parse_json(&text).expect("parse");
            let read: Json = serde_json::from_str(&text).expect("serde_json reads it");
            proptest::prop_assert_eq!(got.to_json(), Value::from_json(read).to_json());
        }
    }
}
