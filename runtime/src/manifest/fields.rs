//! A record's fields: a list of (name, value) pairs kept in the order of their names.
//!
//! Records are small (a Nexmark bid has seven fields) and made, read and dropped once per
//! event. A `BTreeMap` node cost an allocation and, on drop, a walk with an iterator; a lookup
//! compared the name with each key in order through `memcmp`. A sorted list is one allocation,
//! dropped as a list; a lookup in a short record scans it comparing lengths first, and a longer
//! one searches it by halves.
//!
//! It compares, hashes and encodes (postcard, JSON) as the `BTreeMap` of the same fields did:
//! its pairs in the order of their names, a map of them when encoded. So checkpoints and
//! shuffles written before read back, and keys that are records stay in their partitions (a
//! unit test compares both with a `BTreeMap`).

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::value::{Name, Value};

/// Records up to this many fields are looked up by scanning them; longer ones by halves.
const SCAN: usize = 12;

/// A record's fields, in the order of their names, each name once.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fields(Vec<(Name, Value)>);

impl Fields {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(fields: usize) -> Self {
        Fields(Vec::with_capacity(fields))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Where `name` is, or where it would go.
    fn find(&self, name: &str) -> Result<usize, usize> {
        if self.0.len() <= SCAN {
            // Equality compares lengths before bytes: most names differ in length.
            if let Some(at) = self.0.iter().position(|(key, _)| key.as_str() == name) {
                return Ok(at);
            }
            // Not there: its place in the order, found only for an insertion.
            return Err(self.0.partition_point(|(key, _)| key.as_str() < name));
        }
        self.0.binary_search_by(|(key, _)| key.as_str().cmp(name))
    }

    /// The fields of `pairs`, in any order; a name given twice keeps its last value.
    ///
    /// Sorted once, in place: inserting pairs one by one in no order would move the ones after
    /// each, which for a record of thousands of fields (a large JSON object) is quadratic.
    pub fn from_pairs(mut pairs: Vec<(Name, Value)>) -> Self {
        // Stable: of equal names, the one given last stays last. Sorted pairs cost one pass.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        // `dedup_by` keeps the first of a run of equal names: each later one's value is moved
        // into it before the later one goes.
        pairs.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        Fields(pairs)
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        let at = self.find(name).ok()?;
        self.0.get(at).map(|(_, v)| v)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Sets `name`'s value; the value it had, if any.
    pub fn insert(&mut self, name: Name, value: Value) -> Option<Value> {
        // Fields are mostly set in the order of their names: check the end first.
        if self.0.last().is_none_or(|(last, _)| *last < name) {
            self.0.push((name, value));
            return None;
        }
        match self.find(&name) {
            Ok(at) => Some(std::mem::replace(&mut self.0[at].1, value)),
            Err(at) => {
                self.0.insert(at, (name, value));
                None
            }
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let at = self.find(name).ok()?;
        Some(self.0.remove(at).1)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Name, &Value)> + Clone {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(Name, Value)> for Fields {
    /// A name given twice keeps its last value, as a `BTreeMap` collected does.
    fn from_iter<I: IntoIterator<Item = (Name, Value)>>(iter: I) -> Self {
        Self::from_pairs(iter.into_iter().collect())
    }
}

impl<const N: usize> From<[(Name, Value); N]> for Fields {
    fn from(pairs: [(Name, Value); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl IntoIterator for Fields {
    type Item = (Name, Value);
    type IntoIter = std::vec::IntoIter<(Name, Value)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of fields")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(pair) = map.next_entry::<Name, Value>()? {
                    pairs.push(pair);
                }
                Ok(Fields::from_pairs(pairs))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::hash::Hash;

    use super::*;
    use crate::data::stable_hash;

    fn hash(v: &impl Hash) -> u64 {
        stable_hash(v)
    }

    fn both(pairs: &[(&str, i64)]) -> (Fields, BTreeMap<Name, Value>) {
        let pairs: Vec<(Name, Value)> = pairs
            .iter()
            .map(|(k, v)| (Name::from(*k), Value::Int(*v)))
            .collect();
        (
            pairs.clone().into_iter().collect(),
            pairs.into_iter().collect(),
        )
    }

    /// Shapes from empty to past the scanned length, names given out of order and twice.
    fn shapes() -> Vec<Vec<(String, i64)>> {
        let mut shapes = vec![vec![], vec![("b".to_string(), 1), ("a".to_string(), 2)]];
        shapes.push(vec![
            ("x".into(), 1),
            ("y".into(), 2),
            ("x".into(), 3),
            ("a longer name than twenty-four bytes".into(), 4),
        ]);
        for n in [SCAN - 1, SCAN, SCAN + 1, 40] {
            shapes.push((0..n as i64).rev().map(|i| (format!("f{i}"), i)).collect());
        }
        shapes
    }

    #[test]
    fn fields_encode_hash_and_order_as_the_map_they_replace() {
        let shapes = shapes();
        for shape in &shapes {
            let pairs: Vec<(&str, i64)> = shape.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            let (fields, map) = both(&pairs);
            assert_eq!(fields.len(), map.len());
            assert!(fields.iter().eq(map.iter()), "{shape:?}");
            let bytes = postcard::to_allocvec(&fields).expect("encodes");
            assert_eq!(bytes, postcard::to_allocvec(&map).expect("encodes"));
            let back: Fields = postcard::from_bytes(&bytes).expect("decodes");
            assert_eq!(back, fields);
            assert_eq!(
                serde_json::to_string(&fields).ok(),
                serde_json::to_string(&map).ok()
            );
            assert_eq!(hash(&fields), hash(&map), "{shape:?}");
            for (name, _) in shape {
                assert_eq!(fields.get(name), map.get(name.as_str()));
            }
            assert_eq!(fields.get("absent"), None);
        }
        for a in &shapes {
            for b in &shapes {
                let pa: Vec<(&str, i64)> = a.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                let pb: Vec<(&str, i64)> = b.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                let ((fa, ma), (fb, mb)) = (both(&pa), both(&pb));
                assert_eq!(fa.cmp(&fb), ma.cmp(&mb));
            }
        }
    }

    /// A large object, its names in reverse order and one given twice, reads as the map of its
    /// fields, from JSON and from postcard (in one sort, not an insertion each).
    #[test]
    fn a_large_object_in_any_order_reads_as_its_map() {
        let mut text = String::from("{");
        for i in (0..5_000).rev() {
            text.push_str(&format!("\"f{i:05}\":{i},"));
        }
        text.push_str("\"f00007\":-7}");
        let Ok(Value::Map(fields)) = Value::parse_json(&text) else {
            panic!("a record");
        };
        // The same pairs, in the same order, decoded by `Fields` itself: a list of pairs and a
        // map of them encode alike in postcard.
        let mut pairs: Vec<(Name, Value)> = (0..5_000)
            .rev()
            .map(|i| (Name::from(format!("f{i:05}")), Value::Int(i)))
            .collect();
        pairs.push(("f00007".into(), Value::Int(-7)));
        let bytes = postcard::to_allocvec(&pairs).expect("encodes");
        let decoded: Fields = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(fields, decoded);
        assert_eq!(fields.len(), 5_000);
        assert_eq!(fields.get("f00007"), Some(&Value::Int(-7)));
        assert_eq!(fields.get("f04999"), Some(&Value::Int(4_999)));
        assert!(fields.iter().map(|(k, _)| k).is_sorted());
    }

    #[test]
    fn inserts_and_removals_keep_the_order_and_each_name_once() {
        for shape in shapes() {
            let mut fields = Fields::new();
            let mut map = BTreeMap::new();
            for (k, v) in &shape {
                assert_eq!(
                    fields.insert(k.as_str().into(), Value::Int(*v)),
                    map.insert(Name::from(k.as_str()), Value::Int(*v))
                );
            }
            assert!(fields.iter().eq(map.iter()));
            for (k, _) in shape.iter().step_by(2) {
                assert_eq!(fields.remove(k), map.remove(k.as_str()));
            }
            assert!(fields.iter().eq(map.iter()));
            assert!(fields.clone().into_iter().eq(map.into_iter()));
        }
    }
}
