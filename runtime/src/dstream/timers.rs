//! Timers of `map_with_state`: per key, a batch time at which the function is called again.
//!
//! A key has at most one timer. Its time is checkpointed with the key ([`Tracked`], so a
//! snapshot writes only the timers set or fired since the one before); an index by time finds
//! the due ones without visiting every key. The index is not saved: it is rebuilt from the
//! timers on restore.
//!
//! The index keeps an entry for every time a key's timer was set, and drops the stale ones (the
//! key's timer was set again, cleared or fired) when their time comes, or all at once when they
//! outnumber the live ones.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::tracked::{EncodedDelta, Tracked, decode_chain, keyed_share};
use crate::data::Key;
use crate::error::Result;
use crate::exec::lock_unpoisoned;
use crate::job::Stateful;

/// Stale index entries tolerated before the index is rebuilt, beyond one per live timer.
const SLACK: usize = 1024;

/// One partition's timers.
pub(crate) struct PartTimers<K> {
    due: Tracked<K, u64>,
    /// Keys by the time their timer was set for; stale entries included.
    index: BTreeMap<u64, Vec<K>>,
    /// Entries in `index`.
    indexed: usize,
}

impl<K: Key> Default for PartTimers<K> {
    fn default() -> Self {
        Self {
            due: Tracked::default(),
            index: BTreeMap::new(),
            indexed: 0,
        }
    }
}

impl<K: Key> PartTimers<K> {
    /// The time of `key`'s timer.
    pub fn get(&self, key: &K) -> Option<u64> {
        self.due.get(key).copied()
    }

    /// Sets `key`'s timer to `at` (`None`: clears it).
    pub fn set(&mut self, key: &K, at: Option<u64>) {
        if self.get(key) == at {
            return;
        }
        match at {
            Some(at) => {
                self.due.insert(key.clone(), at);
                self.index.entry(at).or_default().push(key.clone());
                self.indexed += 1;
                if self.indexed > 2 * self.due.len() + SLACK {
                    self.reindex();
                }
            }
            None => {
                self.due.swap_remove(key);
            }
        }
    }

    /// Removes and returns the timers due at `now` (time at or before it), by time and then
    /// by their place among the partition's timers: an order a recovered job repeats.
    pub fn take_due(&mut self, now: u64) -> Vec<(K, u64)> {
        let later = self.index.split_off(&now.saturating_add(1));
        let due = std::mem::replace(&mut self.index, later);
        let mut fired: Vec<(u64, usize, K)> = Vec::new();
        for (at, keys) in due {
            self.indexed -= keys.len();
            for key in keys {
                // Stale when the key's timer is now another one.
                if self.get(&key) == Some(at)
                    && let Some(position) = self.due.position(&key)
                {
                    fired.push((at, position, key));
                }
            }
        }
        fired.sort_unstable_by_key(|(at, position, _)| (*at, *position));
        // A key set to a time, then another, then the first again is indexed there twice.
        fired.dedup_by_key(|(at, position, _)| (*at, *position));
        // Removed after the sort: a removal moves the last timer into the removed one's place.
        for (_, _, key) in &fired {
            self.due.swap_remove(key);
        }
        fired.into_iter().map(|(at, _, key)| (key, at)).collect()
    }

    /// Writes the next snapshot's delta ahead (see [`Tracked::write_ahead`]).
    pub fn write_ahead(&mut self) -> Result<()> {
        self.due.write_ahead()
    }

    /// Timers in the partition.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    /// Rebuilds the index from the timers alone.
    fn reindex(&mut self) {
        self.index.clear();
        for (key, at) in self.due.iter() {
            self.index.entry(*at).or_default().push(key.clone());
        }
        self.indexed = self.due.len();
    }

    fn replace(&mut self, entries: Vec<(K, u64)>) -> Result<()> {
        self.due.replace(entries, "timers")?;
        self.reindex();
        Ok(())
    }
}

/// The timers of every partition of one `map_with_state`, checkpointed as a state of their own.
pub(crate) struct Timers<K> {
    pub parts: Vec<Mutex<PartTimers<K>>>,
}

impl<K: Key> Timers<K> {
    pub fn new(partitions: usize) -> Self {
        Self {
            parts: (0..partitions)
                .map(|_| Mutex::new(PartTimers::default()))
                .collect(),
        }
    }
}

impl<K: Key> Stateful for Timers<K> {
    fn entries(&self, part: usize) -> usize {
        lock_unpoisoned(&self.parts[part]).len()
    }

    fn snapshot(&self, part: usize) -> Result<Vec<u8>> {
        lock_unpoisoned(&self.parts[part]).due.encode_whole()
    }

    fn records_changes(&self) -> bool {
        true
    }

    fn delta(&self, part: usize) -> Result<EncodedDelta> {
        lock_unpoisoned(&self.parts[part]).due.encode_delta()
    }

    fn restore(&self, part: usize, chain: &[Vec<u8>]) -> Result<()> {
        let entries: Vec<(K, u64)> = decode_chain(chain, "timers")?;
        lock_unpoisoned(&self.parts[part]).replace(entries)
    }

    fn reshard(&self, part: usize, olds: &[&[Vec<u8>]], partitions: usize) -> Result<()> {
        let share: Vec<(K, u64)> = keyed_share(olds, part, partitions, "timers")?;
        lock_unpoisoned(&self.parts[part]).replace(share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timers(set: &[(&str, u64)]) -> PartTimers<String> {
        let mut t = PartTimers::default();
        for (k, at) in set {
            t.set(&k.to_string(), Some(*at));
        }
        t
    }

    #[test]
    fn due_timers_fire_once_in_time_then_place_order() {
        let mut t = timers(&[("c", 30), ("a", 10), ("b", 10), ("d", 40)]);
        assert_eq!(
            t.take_due(30),
            vec![
                ("a".to_string(), 10),
                ("b".to_string(), 10),
                ("c".to_string(), 30)
            ]
        );
        assert!(t.take_due(30).is_empty());
        assert_eq!(t.len(), 1);
        assert_eq!(t.take_due(u64::MAX), vec![("d".to_string(), 40)]);
    }

    #[test]
    fn a_timer_set_again_or_cleared_fires_at_its_last_time_only() {
        let mut t = timers(&[("a", 10), ("b", 10), ("a", 20), ("a", 20)]);
        t.set(&"b".to_string(), None);
        assert!(t.take_due(15).is_empty());
        assert_eq!(t.take_due(20), vec![("a".to_string(), 20)]);
        assert_eq!(t.len(), 0);
        // Set back to a time whose stale entry already left the index.
        t.set(&"a".to_string(), Some(10));
        assert_eq!(t.take_due(10), vec![("a".to_string(), 10)]);
    }

    #[test]
    fn the_index_stays_bounded_when_one_key_is_set_again_and_again() {
        let mut t = PartTimers::default();
        for at in 0..10 * SLACK as u64 {
            t.set(&"k".to_string(), Some(1_000_000 + at));
        }
        assert!(t.indexed <= 2 + SLACK, "{} index entries", t.indexed);
        assert_eq!(
            t.take_due(u64::MAX),
            vec![("k".to_string(), 1_000_000 + 10 * SLACK as u64 - 1)]
        );
    }

    #[test]
    fn a_restored_partition_fires_what_the_saved_one_would() {
        let mut t = timers(&[("a", 10), ("b", 20), ("c", 10), ("d", 5)]);
        let whole = t.due.encode_whole().unwrap();
        t.set(&"a".to_string(), None);
        t.set(&"e".to_string(), Some(10));
        let delta = t.due.encode_delta().unwrap().bytes;
        let stored = Timers::<String>::new(1);
        stored.restore(0, &[whole, delta]).unwrap();
        let mut restored = stored
            .parts
            .into_iter()
            .next()
            .unwrap()
            .into_inner()
            .unwrap();
        assert_eq!(restored.take_due(100), t.take_due(100));
    }
}
