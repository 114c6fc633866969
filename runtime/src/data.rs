//! What a record must be, and how keys are placed on partitions.

use std::hash::{Hash, Hasher};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A record that can flow through a stream: cloned when a stream has several consumers, sent
/// between threads, and serialized into checkpoints.
pub trait Data: Clone + Send + Sync + Serialize + DeserializeOwned + 'static {}
impl<T: Clone + Send + Sync + Serialize + DeserializeOwned + 'static> Data for T {}

/// A key of a keyed stream. `Ord` is not needed for grouping, only `Hash + Eq`.
pub trait Key: Data + Hash + Eq {}
impl<T: Data + Hash + Eq> Key for T {}

/// A hasher with a fixed algorithm and seed, so a key lands on the same partition in every
/// process and every run: checkpoints written by one run are read by the next.
pub type StableHasher = rustc_hash::FxHasher;
/// `BuildHasher` for maps keyed by record keys.
pub type StableBuildHasher = std::hash::BuildHasherDefault<StableHasher>;
/// Insertion-ordered map with the stable hasher: iteration order depends only on the history of
/// inserts and removals, so a restored checkpoint iterates exactly like the original.
pub type KeyMap<K, V> = indexmap::IndexMap<K, V, StableBuildHasher>;

/// `key`'s hash with [`StableHasher`]: what places it in a partition.
pub fn stable_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = StableHasher::default();
    key.hash(&mut hasher);
    hasher.finish()
}

/// The partition of `key` among `partitions`.
pub fn partition_of<K: Hash + ?Sized>(key: &K, partitions: usize) -> usize {
    // Fx leaves weak low bits; fold the high half in before taking the remainder.
    let h = stable_hash(key);
    let mixed = (h ^ (h >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    (mixed % partitions as u64) as usize
}

/// Items serialized as a sequence straight from their iterator, as a `Vec` of them would be.
pub(crate) struct Seq<I>(pub I);

impl<I> Serialize for Seq<I>
where
    I: ExactSizeIterator + Clone,
    I::Item: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.clone())
    }
}

/// Serializes the items of `items` as postcard encodes a `Vec` of them, without collecting
/// them first: a snapshot of ten million keys no longer builds a list of ten million
/// references before encoding it.
pub(crate) fn encode_seq<I>(items: I) -> Result<Vec<u8>, postcard::Error>
where
    I: ExactSizeIterator + Clone,
    I::Item: Serialize,
{
    postcard::to_stdvec(&Seq(items))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        let mut counts = [0usize; 8];
        for i in 0..8000 {
            let p = partition_of(&format!("word{i}"), 8);
            assert_eq!(p, partition_of(&format!("word{i}"), 8));
            counts[p] += 1;
        }
        for c in counts {
            assert!((700..1300).contains(&c), "skewed partitions: {counts:?}");
        }
    }

    #[test]
    fn a_sequence_encodes_as_the_list_of_its_items() {
        let state: KeyMap<String, (u64, u64)> = (0..1000u64)
            .map(|i| (format!("k{i}"), (i * 7, i % 13)))
            .collect();
        let listed: Vec<(&String, &(u64, u64))> = state.iter().collect();
        let bytes = encode_seq(state.iter()).expect("encode");
        assert_eq!(bytes, postcard::to_stdvec(&listed).expect("encode a list"));
        let read: Vec<(String, (u64, u64))> = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(read.len(), 1000);
        assert_eq!(read[999], ("k999".to_string(), (6993, 11)));
        assert_eq!(
            encode_seq(KeyMap::<String, u64>::default().iter()).expect("empty"),
            vec![0]
        );
    }
}
