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

/// The partition of `key` among `partitions`.
pub fn partition_of<K: Hash + ?Sized>(key: &K, partitions: usize) -> usize {
    let mut hasher = StableHasher::default();
    key.hash(&mut hasher);
    // Fx leaves weak low bits; fold the high half in before taking the remainder.
    let h = hasher.finish();
    let mixed = (h ^ (h >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    (mixed % partitions as u64) as usize
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
}
