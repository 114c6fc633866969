//! Keyed state that remembers where it changed since its last snapshot, so that the next
//! snapshot can write only that: a delta on the snapshot before (see `Job::next_snapshot`).
//!
//! A partition's state is an insertion-ordered map, and its order is part of the state: a batch
//! visits keys in that order (timeouts, the stream of every key's state), so a recovered job
//! must get the same order back as well as the same entries to write the same output. A delta
//! therefore holds positions, not only keys: the map's length and every position whose entry
//! changed, with the entry there now. Applied to the entries of the snapshot before (cut to
//! the length, overwritten at those positions), it gives back this snapshot's map exactly.
//!
//! Every change goes through [`Tracked::insert`] and [`Tracked::swap_remove`], which mark the
//! positions they write: an insert its key's position, a removal the position the last entry
//! moves into. Positions beyond the new length need no mark: the length drops them.
//!
//! Most changes of a running state are a new value for a key already in place. Such a position
//! is written as its value alone: the key there is the snapshot's before. Only a position that
//! took another key (a new key, or the last entry moved into a removed one's place) carries its
//! key. Besides halving the bytes, this spares the encoding a cache miss per entry, the key's
//! own memory, which with a large state scattered over memory was most of its time.
//!
//! The snapshot's batch waits for the encoding, and reading a million changed entries at
//! scattered places of a large map costs a cache miss each. So each change is also copied, as
//! it is made (its entry is then in cache), into a log that the delta is written from in one
//! sequential pass: the changes in the order they were made, a position more than once if it
//! changed more than once. Applied in order, they give the same state. The log is bounded (a
//! quarter of the state); past that it is dropped and the delta is read from the map.
//!
//! Recovery reads a partition's chain of deltas back to where its whole state is, so the whole
//! state must be written again from time to time; written at once, it held up the batch it was
//! taken at (a read of every entry, and tens of megabytes for the writer). Instead, each delta
//! also carries a stripe: the entries at the next [`STRIPES`]th of the positions, in order, so
//! that in [`STRIPES`] snapshots (a cycle) every position has been written whole once. A chain
//! then starts at the first delta of the last completed cycle rather than at a whole state:
//! read from there onto unknown entries, its changes fill what they give whole, a value alone
//! for an entry still unknown waits for its stripe (which holds the value at its own snapshot),
//! and by the chain's end every entry is known. A stripe holds at least half as many entries
//! as its delta holds changes, so a state that changes fast has shorter cycles, and a chain
//! never holds many times the state.

use fixedbitset::FixedBitSet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::data::{Key, KeyMap};
use crate::error::{Error, Result};

/// What a delta says of one position.
#[derive(Serialize, Deserialize)]
enum Change<K, V> {
    /// The key there is the one before; its value is this.
    Value(V),
    /// This entry is there now.
    Entry(K, V),
}

/// What starts a delta in this format, before the state's length and each changed position
/// with its [`Change`]. Deltas without it (written before values were told apart) hold every
/// changed position's whole entry: [`LegacyDelta`].
const DELTA_MAGIC: &[u8] = b"sluice-delta-v2\n";

/// What starts a delta that carries a stripe (see the module's documentation): the delta,
/// then the first position of its stripe and the stripe's entries.
const STRIPED_MAGIC: &[u8] = b"sluice-delta-v3\n";

/// A delta after [`DELTA_MAGIC`]: the state's length, then each changed position and what
/// changed there.
type Delta<K, V> = (u64, Vec<(u64, Change<K, V>)>);

/// A delta after [`STRIPED_MAGIC`]: as [`Delta`], then the stripe's first position and its
/// entries.
type StripedDelta<K, V> = (u64, Vec<(u64, Change<K, V>)>, u64, Vec<(K, V)>);

/// Snapshots in a stripe cycle: every position is written whole once in this many deltas.
/// Recovery reads a chain of this many deltas to twice as many, and each delta writes this
/// share of the state besides its changes.
pub(crate) const STRIPES: usize = 16;

/// The fewest entries a stripe holds (but for the last of a state): a small state is written
/// whole in a delta or two. The unit tests' states are small, and their cycles take several
/// deltas only with small stripes.
#[cfg(not(test))]
const MIN_STRIPE: usize = 1024;
#[cfg(test)]
const MIN_STRIPE: usize = 8;

/// A delta as written before [`DELTA_MAGIC`]: the state's length, then each changed position
/// and its entry.
type LegacyDelta<E> = (u64, Vec<(u64, E)>);

/// Entries a task encodes at once when a whole state is encoded in chunks.
const ENCODE_CHUNK: usize = 1 << 16;

/// The fewest changes the log may hold, however small the state: below this, a log costs less
/// than deciding to drop it.
const MIN_LOG: usize = 1024;

/// A partition's keyed state and the positions changed since its last snapshot.
pub(crate) struct Tracked<K, V> {
    map: KeyMap<K, V>,
    /// Every change since the last snapshot, in order, while there were few enough to keep;
    /// `None` once there were too many (see the module's documentation).
    log: Option<Vec<(u64, Change<K, V>)>>,
    /// Once the log is dropped: the positions written since the last snapshot (the log's
    /// positions carried over, then every later change). Empty while the log is kept.
    changed: FixedBitSet,
    /// Of those, the positions that took another key.
    rekeyed: FixedBitSet,
    /// Where the next delta's stripe starts.
    stripe: StripeCursor,
}

/// Where a stripe cycle stands: the next stripe's first position, and the stripes the cycle
/// has written so far.
#[derive(Clone, Copy, Debug, Default)]
struct StripeCursor {
    at: usize,
    taken: usize,
}

/// A delta's bytes, and where its stripe stands in its cycle.
pub(crate) struct EncodedDelta {
    pub bytes: Vec<u8>,
    /// Its stripe starts a cycle (at the first position).
    pub begins: bool,
    /// Its stripe reaches the last position: with those since the cycle began, every position
    /// was written whole.
    pub ends: bool,
    /// About how many bytes the whole state would take: the stripe's bytes an entry, times
    /// the entries.
    pub whole_bytes: u64,
}

impl<K, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Self {
            map: KeyMap::default(),
            changed: FixedBitSet::new(),
            rekeyed: FixedBitSet::new(),
            log: Some(Vec::new()),
            stripe: StripeCursor::default(),
        }
    }
}

impl<K: Key, V: Clone + Serialize + DeserializeOwned + Send + Sync> Tracked<K, V> {
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Where `key`'s entry is: its place in the order a snapshot keeps.
    pub fn position(&self, key: &K) -> Option<usize> {
        self.map.get_index_of(key)
    }

    pub fn iter(&self) -> indexmap::map::Iter<'_, K, V> {
        self.map.iter()
    }

    /// Sets `key`'s entry: in place when it has one, else at the end.
    pub fn insert(&mut self, key: K, value: V) {
        let (at, old) = self.map.insert_full(key, value);
        self.record(at, old.is_none());
    }

    /// Removes `key`'s entry; the last entry takes its place.
    pub fn swap_remove(&mut self, key: &K) -> Option<V> {
        let (at, _, value) = self.map.swap_remove_full(key)?;
        if at < self.map.len() {
            self.record(at, true);
        }
        Some(value)
    }

    /// Records a change of the entry at `at` (with `rekeyed`, it took another key): copied
    /// into the log while the log is kept, else marked in the bit sets. A log grown past its
    /// bound is dropped, its positions carried into the bit sets.
    fn record(&mut self, at: usize, rekeyed: bool) {
        let Some(log) = &mut self.log else {
            self.mark(at, rekeyed);
            return;
        };
        if log.len() >= (self.map.len() / 4).max(MIN_LOG) {
            let log = std::mem::take(log);
            self.log = None;
            for (was, change) in &log {
                // A logged position is below the map's length at the time, so it fits usize.
                self.mark(*was as usize, matches!(change, Change::Entry(..)));
            }
            self.mark(at, rekeyed);
            return;
        }
        let Some((k, v)) = self.map.get_index(at) else {
            return;
        };
        let change = if rekeyed {
            Change::Entry(k.clone(), v.clone())
        } else {
            Change::Value(v.clone())
        };
        log.push((at as u64, change));
    }

    fn mark(&mut self, at: usize, rekeyed: bool) {
        if at >= self.changed.len() {
            let len = (at + 1).next_power_of_two();
            self.changed.grow(len);
            self.rekeyed.grow(len);
        }
        self.changed.insert(at);
        if rekeyed {
            self.rekeyed.insert(at);
        }
    }

    fn clear_marks(&mut self) {
        self.changed.clear();
        self.rekeyed.clear();
        match &mut self.log {
            Some(log) => log.clear(),
            None => self.log = Some(Vec::new()),
        }
    }

    /// How many entries a delta would hold now, at most.
    pub fn changes(&self) -> usize {
        if let Some(log) = &self.log {
            return log.len();
        }
        let len = self.map.len().min(self.changed.len());
        self.changed.count_ones(..len)
    }

    /// The whole state, encoded; from now on changes count from here.
    ///
    /// The batch a snapshot is taken at waits for its encoding, and a partition is encoded
    /// whole in its turn alone (see `Job::next_snapshot`): a large map is encoded in chunks on
    /// the task threads, each chunk's entries as the sequence's items, so the bytes are the
    /// sequence's as one pass would write them.
    pub fn encode_whole(&mut self) -> Result<Vec<u8>> {
        use rayon::prelude::*;
        self.clear_marks();
        self.stripe = StripeCursor::default();
        let failed = |e: postcard::Error| Error::Internal(format!("cannot serialize state: {e}"));
        let len = self.map.len();
        if len <= ENCODE_CHUNK {
            return crate::data::encode_seq(self.map.iter()).map_err(failed);
        }
        let map = &self.map;
        let chunk = |c: usize| {
            map.get_range(c * ENCODE_CHUNK..((c + 1) * ENCODE_CHUNK).min(len))
                .into_iter()
                .flat_map(|entries| entries.iter())
        };
        let chunks = len.div_ceil(ENCODE_CHUNK);
        // Each chunk's size first, then each chunk encoded in its place in one buffer: nothing
        // is copied after the encoding, and no chunk's buffer grows. A size reads an entry's
        // lengths and numbers but not a key's text, so it costs little beside the encoding;
        // gathering chunks encoded apart into one buffer took as long as encoding them.
        let sizes: Vec<usize> = (0..chunks)
            .into_par_iter()
            .map(|c| {
                chunk(c)
                    .map(|entry| postcard::experimental::serialized_size(&entry))
                    .sum::<std::result::Result<usize, _>>()
            })
            .collect::<std::result::Result<_, postcard::Error>>()
            .map_err(failed)?;
        // A sequence is its length (a varint, as a usize is written), then its items.
        let head = postcard::to_allocvec(&len).map_err(failed)?;
        let mut bytes = vec![0u8; head.len() + sizes.iter().sum::<usize>()];
        let (first, mut rest) = bytes.split_at_mut(head.len());
        first.copy_from_slice(&head);
        let mut places = Vec::with_capacity(chunks);
        for &size in &sizes {
            let (place, after) = std::mem::take(&mut rest).split_at_mut(size);
            places.push(place);
            rest = after;
        }
        places
            .into_par_iter()
            .enumerate()
            .try_for_each(|(c, mut out)| {
                for entry in chunk(c) {
                    let used = postcard::to_slice(&entry, &mut *out)?.len();
                    out = &mut std::mem::take(&mut out)[used..];
                }
                // The sizes and the encoding disagreed: never write the zeros left over.
                if out.is_empty() {
                    Ok(())
                } else {
                    Err(postcard::Error::SerializeBufferFull)
                }
            })
            .map_err(failed)?;
        Ok(bytes)
    }

    /// The changes since the last snapshot (whole or delta) and the next stripe, encoded; from
    /// now on changes count from here.
    pub fn encode_delta(&mut self) -> Result<EncodedDelta> {
        let len = self.map.len();
        let (range, begins, ends) = self.next_stripe(self.changes());
        // The range is within the map, so `get_range` always gives its entries.
        let stripe = crate::data::Seq(self.map.get_range(range.clone()).unwrap_or_default().iter());
        let at = range.start as u64;
        let bytes = match &self.log {
            Some(log) => {
                // A change past the end was dropped by a later removal, and nothing read it
                // since: a move into a lower position is logged with its key.
                let changes: Vec<&(u64, Change<K, V>)> =
                    log.iter().filter(|(at, _)| *at < len as u64).collect();
                postcard::to_extend(&(len as u64, changes), STRIPED_MAGIC.to_vec())
            }
            None => {
                // The values are copied out first, then written. Each copy reads memory
                // independent of the others, so the processor overlaps their cache misses; the
                // encoder, which branches on every value it reads, would take them one at a
                // time (a probe of 250,000 changes of a 2.5 M-entry partition: 13 ms copied,
                // 16–25 ms read in place).
                let changes: Vec<(u64, Change<&K, V>)> = self
                    .changed
                    .ones()
                    .take_while(|&at| at < len)
                    .filter_map(|at| {
                        let (k, v) = self.map.get_index(at)?;
                        let change = if self.rekeyed.contains(at) {
                            Change::Entry(k, v.clone())
                        } else {
                            Change::Value(v.clone())
                        };
                        Some((at as u64, change))
                    })
                    .collect();
                postcard::to_extend(&(len as u64, changes), STRIPED_MAGIC.to_vec())
            }
        };
        // The stripe after the changes (a tuple's items are written one after another, so in
        // two steps the bytes are the same): its share of the bytes measures the state's size.
        let bytes = bytes.and_then(|changes| {
            let before = changes.len();
            let bytes = postcard::to_extend(&(at, stripe), changes)?;
            Ok((bytes.len() - before, bytes))
        });
        self.clear_marks();
        let (stripe_bytes, bytes) =
            bytes.map_err(|e| Error::Internal(format!("cannot serialize a state delta: {e}")))?;
        let whole_bytes = match range.len() {
            0 => 0,
            n => (stripe_bytes as u64).saturating_mul(len as u64) / n as u64,
        };
        Ok(EncodedDelta {
            bytes,
            begins,
            ends,
            whole_bytes,
        })
    }

    /// The positions of the next delta's stripe, whether it begins a cycle and whether it
    /// ends one; moves the cursor past it. The stripes left in a cycle share what is left of
    /// the state, so a cycle ends in [`STRIPES`] deltas even while the state grows; and a
    /// stripe holds at least half as many entries as the delta holds `changes`, so that the
    /// changes a cycle's deltas hold stay under twice the state (a chain is read whole at
    /// recovery, and a state whose keys all change often is cheaper read whole).
    fn next_stripe(&mut self, changes: usize) -> (std::ops::Range<usize>, bool, bool) {
        let len = self.map.len();
        let StripeCursor { at, taken } = self.stripe;
        let at = at.min(len);
        let left = STRIPES.saturating_sub(taken).max(1);
        let share = (len - at).div_ceil(left).max(MIN_STRIPE).max(changes / 2);
        let end = at + share.min(len - at);
        let ends = end == len;
        self.stripe = if ends {
            StripeCursor::default()
        } else {
            StripeCursor {
                at: end,
                taken: taken + 1,
            }
        };
        (at..end, taken == 0, ends)
    }

    /// Replaces the state with `entries`, in their order; changes count from here.
    pub fn replace(&mut self, entries: Vec<(K, V)>, what: &str) -> Result<()> {
        let len = entries.len();
        let map: KeyMap<K, V> = entries.into_iter().collect();
        if map.len() != len {
            return Err(Error::Checkpoint(format!(
                "{what} holds a key more than once"
            )));
        }
        self.map = map;
        self.clear_marks();
        self.stripe = StripeCursor::default();
        Ok(())
    }
}

/// The entries of a partition from its snapshot chain, oldest first: the whole state of a
/// snapshot, then the delta of each snapshot after it up to the one read; or an empty first
/// item (never a whole state's encoding, which holds at least its length), then the deltas
/// from the first of a completed stripe cycle on (see the module's documentation). An empty
/// chain is an empty state.
pub(crate) fn decode_chain<K: DeserializeOwned, V: DeserializeOwned>(
    chain: &[Vec<u8>],
    what: &str,
) -> Result<Vec<(K, V)>> {
    let unreadable = |e: postcard::Error| Error::Checkpoint(format!("{what} is unreadable: {e}"));
    let Some((first, deltas)) = chain.split_first() else {
        return Ok(Vec::new());
    };
    let striped = first.is_empty();
    let mut slots: Vec<Option<(K, V)>> = if striped {
        Vec::new()
    } else {
        let whole: Vec<(K, V)> = postcard::from_bytes(first).map_err(unreadable)?;
        whole.into_iter().map(Some).collect()
    };
    let limit = chain.iter().map(Vec::len).sum();
    for delta in deltas {
        let (len, changed, stripe) = read_delta(delta).map_err(unreadable)?;
        apply(&mut slots, len, changed, stripe, striped, limit)
            .map_err(|why| Error::Checkpoint(format!("a delta of {what} {why}")))?;
    }
    let len = slots.len();
    slots
        .into_iter()
        .enumerate()
        .map(|(at, slot)| {
            slot.ok_or_else(|| {
                Error::Checkpoint(format!(
                    "the chain of {what} leaves position {at} of {len} unknown"
                ))
            })
        })
        .collect()
}

/// A delta's length, changes and stripe (its first position and entries), in whichever format
/// it was written.
#[allow(clippy::type_complexity)]
fn read_delta<K: DeserializeOwned, V: DeserializeOwned>(
    delta: &[u8],
) -> postcard::Result<(u64, Vec<(u64, Change<K, V>)>, Option<(u64, Vec<(K, V)>)>)> {
    if let Some(body) = delta.strip_prefix(STRIPED_MAGIC) {
        let (len, changed, at, stripe): StripedDelta<K, V> = postcard::from_bytes(body)?;
        return Ok((len, changed, Some((at, stripe))));
    }
    if let Some(body) = delta.strip_prefix(DELTA_MAGIC) {
        let (len, changed): Delta<K, V> = postcard::from_bytes(body)?;
        return Ok((len, changed, None));
    }
    let (len, changed): LegacyDelta<(K, V)> = postcard::from_bytes(delta)?;
    let changed = changed
        .into_iter()
        .map(|(at, (k, v))| (at, Change::Entry(k, v)))
        .collect();
    Ok((len, changed, None))
}

/// Applies one delta to the entries (`None`: not known yet, in a chain that starts at a stripe
/// cycle): the state cut or grown to `len`, each changed position in order, then the stripe.
/// In a chain from a whole state (`striped` false) every entry is known, so positions past the
/// old end must be given whole and a value alone goes only where an entry is.
fn apply<K, V>(
    slots: &mut Vec<Option<(K, V)>>,
    len: u64,
    changed: Vec<(u64, Change<K, V>)>,
    stripe: Option<(u64, Vec<(K, V)>)>,
    striped: bool,
    limit: usize,
) -> Result<(), String> {
    // Every entry is given by the chain, in a byte or more: a longer state is damage, refused
    // before it is allocated.
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= limit)
        .ok_or_else(|| format!("has a length of {len}, more entries than its chain holds"))?;
    let grown = slots.len().min(len);
    slots.resize_with(len, || None);
    for (at, change) in changed {
        let slot = usize::try_from(at)
            .ok()
            .and_then(|at| slots.get_mut(at))
            .ok_or_else(|| format!("writes position {at} of {len}"))?;
        match change {
            Change::Entry(k, v) => *slot = Some((k, v)),
            Change::Value(v) => match slot {
                Some((_, value)) => *value = v,
                // The entry's stripe, later in the chain, holds it whole.
                None if striped => {}
                None => return Err(format!("gives a value alone to position {at} of {len}")),
            },
        }
    }
    if let Some((at, entries)) = stripe {
        let n = entries.len();
        let place = usize::try_from(at)
            .ok()
            .and_then(|at| slots.get_mut(at..at.checked_add(n)?))
            .ok_or_else(|| format!("has a stripe of {n} entries at {at}, past {len}"))?;
        for (slot, entry) in place.iter_mut().zip(entries) {
            *slot = Some(entry);
        }
    }
    if !striped && let Some(gap) = slots[grown..].iter().position(Option::is_none) {
        return Err(format!("leaves position {} of {len} empty", grown + gap));
    }
    Ok(())
}

/// The entries of old partitions (`olds`, each as its snapshot chain) whose keys hash to
/// `part` of `partitions`, in old partition order and then in each one's order.
pub(crate) fn keyed_share<K: Key, S: DeserializeOwned>(
    olds: &[&[Vec<u8>]],
    part: usize,
    partitions: usize,
    what: &str,
) -> Result<Vec<(K, S)>> {
    let mut share = Vec::new();
    for chain in olds {
        share.extend(
            decode_chain::<K, S>(chain, what)?
                .into_iter()
                .filter(|(k, _)| crate::data::partition_of(k, partitions) == part),
        );
    }
    Ok(share)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_state_encoded_in_chunks_is_the_sequence_in_one_pass() {
        let mut state: Tracked<String, u64> = Tracked::default();
        for i in 0..(3 * ENCODE_CHUNK as u64 + 17) {
            state.insert(format!("key-{i}"), i * 7);
        }
        state.swap_remove(&"key-5".to_string());
        let one_pass = crate::data::encode_seq(state.iter()).expect("encode");
        assert_eq!(state.encode_whole().expect("encode"), one_pass);
        let back: Vec<(String, u64)> = decode_chain(&[one_pass], "state").expect("decode");
        assert_eq!(back.len(), state.len());
    }

    type State = Tracked<String, u64>;

    fn entries(state: &State) -> Vec<(String, u64)> {
        state.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// A seeded mix of inserts (new and existing keys) and removals.
    fn churn(state: &mut State, seed: u64, steps: usize) {
        let mut x = seed;
        for step in 0..steps {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = format!("k{}", x % 64);
            if x.is_multiple_of(5) {
                state.swap_remove(&key);
            } else {
                state.insert(key, step as u64);
            }
        }
    }

    #[test]
    fn a_chain_of_deltas_gives_back_the_state_in_its_order() {
        let mut state = State::default();
        churn(&mut state, 7, 200);
        let mut chain = vec![state.encode_whole().expect("whole")];
        for round in 0..6 {
            churn(&mut state, 11 + round, 40 + 30 * round as usize);
            chain.push(state.encode_delta().expect("delta").bytes);
            let read: Vec<(String, u64)> = decode_chain(&chain, "state").expect("chain");
            assert_eq!(read, entries(&state), "after delta {round}");
        }
        // A round that empties the state, then one that fills it again.
        for k in entries(&state) {
            state.swap_remove(&k.0);
        }
        chain.push(state.encode_delta().expect("delta").bytes);
        churn(&mut state, 99, 100);
        chain.push(state.encode_delta().expect("delta").bytes);
        let read: Vec<(String, u64)> = decode_chain(&chain, "state").expect("chain");
        assert_eq!(read, entries(&state));
    }

    #[test]
    fn a_delta_holds_only_what_changed() {
        let mut state = State::default();
        for i in 0..1000 {
            state.insert(format!("k{i}"), i);
        }
        let whole = state.encode_whole().expect("whole");
        state.insert("k5".into(), 50);
        state.swap_remove(&"k10".to_string());
        assert_eq!(state.changes(), 2, "k5 in place, k999 into k10's place");
        let delta = state.encode_delta().expect("delta").bytes;
        // The two changes, and a stripe of a STRIPES-th of the state.
        assert!(
            delta.len() < whole.len() / STRIPES + 32,
            "{} bytes of {}",
            delta.len(),
            whole.len()
        );
        assert_eq!(state.changes(), 0);
    }

    #[test]
    fn a_delta_reads_the_map_once_its_log_is_too_long() {
        let mut state = State::default();
        churn(&mut state, 3, 300);
        let mut chain = vec![state.encode_whole().expect("whole")];
        // More changes than the log keeps (64 keys, so MIN_LOG bounds it): the delta is
        // read from the map, and the log starts again after it.
        churn(&mut state, 5, 3 * MIN_LOG);
        assert!(state.log.is_none(), "the log was dropped");
        assert!(state.changes() <= 64, "{} changes", state.changes());
        chain.push(state.encode_delta().expect("delta from the map").bytes);
        churn(&mut state, 9, 150);
        assert!(state.log.as_ref().is_some_and(|log| !log.is_empty()));
        chain.push(state.encode_delta().expect("delta from the log").bytes);
        let read: Vec<(String, u64)> = decode_chain(&chain, "state").expect("chain");
        assert_eq!(read, entries(&state));
    }

    #[test]
    fn a_logged_delta_drops_changes_past_the_end() {
        let mut state = State::default();
        for i in 0..10 {
            state.insert(format!("k{i}"), i);
        }
        let mut chain = vec![state.encode_whole().expect("whole")];
        // New keys past the old end, changed, moved down and removed again: the log holds
        // positions 10 to 12 more than once, and the state ends shorter than it started.
        for i in 10..13 {
            state.insert(format!("k{i}"), i);
        }
        state.insert("k11".into(), 111);
        state.swap_remove(&"k2".to_string());
        state.insert("k11".into(), 1111);
        for i in [12, 10, 9, 0] {
            state.swap_remove(&format!("k{i}"));
        }
        state.insert("k20".into(), 20);
        chain.push(state.encode_delta().expect("delta").bytes);
        let read: Vec<(String, u64)> = decode_chain(&chain, "state").expect("chain");
        assert_eq!(read, entries(&state));
    }

    #[test]
    fn a_key_that_stays_in_place_is_written_as_its_value_alone() {
        let long = |i: usize| format!("{i:0>64}");
        let mut state = State::default();
        for i in 0..100 {
            state.insert(long(i), i as u64);
        }
        let mut chain = vec![state.encode_whole().expect("whole")];
        // A delta of no change: its stripe alone, of as many keys as the next ones'.
        let stripe = state.encode_delta().expect("delta").bytes;
        let stripe_len = stripe.len();
        chain.push(stripe);
        // Ten values changed in place: no key in the delta.
        for i in 0..10 {
            state.insert(long(i), 1000 + i as u64);
        }
        let values = state.encode_delta().expect("delta").bytes;
        assert!(values.len() < stripe_len + 64, "{} bytes", values.len());
        chain.push(values);
        // A new key, then a removal that moves it (the last entry) into the removed key's
        // place: that position carries its key.
        state.insert(long(500), 5);
        state.swap_remove(&long(3));
        let rekeyed = state.encode_delta().expect("delta").bytes;
        assert!(rekeyed.len() > stripe_len + 64, "{} bytes", rekeyed.len());
        chain.push(rekeyed);
        let read: Vec<(String, u64)> = decode_chain(&chain, "state").expect("chain");
        assert_eq!(read, entries(&state));
    }

    #[test]
    fn deltas_written_before_values_were_told_apart_still_read() {
        let mut state = State::default();
        for i in 0..4 {
            state.insert(format!("k{i}"), i);
        }
        let whole = state.encode_whole().expect("whole");
        // Position 1 changed, a fifth entry added: each as a whole entry, no magic.
        let legacy = postcard::to_stdvec(&(
            5u64,
            vec![
                (1u64, ("k1".to_string(), 10u64)),
                (4, ("k4".to_string(), 4)),
            ],
        ))
        .expect("encode");
        let read: Vec<(String, u64)> =
            decode_chain(&[whole, legacy], "keyed state").expect("legacy chain");
        let want: Vec<(String, u64)> = [("k0", 0), ("k1", 10), ("k2", 2), ("k3", 3), ("k4", 4)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(read, want);
    }

    #[test]
    fn a_damaged_delta_is_a_checkpoint_error() {
        let mut state = State::default();
        state.insert("a".into(), 1);
        let whole = state.encode_whole().expect("whole");
        // Position 3 of a state of 4 entries, with only 1 filled: a gap.
        let gap =
            postcard::to_stdvec(&(4u64, vec![(3u64, ("d".to_string(), 4u64))])).expect("encode");
        let err =
            decode_chain::<String, u64>(&[whole.clone(), gap], "keyed state").expect_err("a gap");
        assert!(
            matches!(&err, Error::Checkpoint(m) if m.contains("a delta of keyed state")),
            "{err}"
        );
        // A value alone for a position the state does not have.
        let mut lone = DELTA_MAGIC.to_vec();
        lone.extend(
            postcard::to_stdvec(&(2u64, vec![(1u64, Change::<String, u64>::Value(7))]))
                .expect("encode"),
        );
        let err = decode_chain::<String, u64>(&[whole.clone(), lone], "keyed state")
            .expect_err("a value alone past the end");
        assert!(
            matches!(&err, Error::Checkpoint(m) if m.contains("a value alone")),
            "{err}"
        );
        let err = decode_chain::<String, u64>(&[whole, vec![0xff; 3]], "keyed state")
            .expect_err("garbage");
        assert!(matches!(err, Error::Checkpoint(_)), "{err}");
        let twice = vec![("a".to_string(), 1u64), ("a".to_string(), 2)];
        assert!(matches!(
            State::default().replace(twice, "keyed state"),
            Err(Error::Checkpoint(_))
        ));
    }

    /// Deltas alone, from an empty state through growth, churn and shrinking: read from the
    /// start of the last completed stripe cycle onto unknown entries, each chain gives back the
    /// state; a cycle ends within STRIPES deltas; read from a cycle not yet complete, the
    /// chain leaves entries unknown, an error rather than a wrong state.
    #[test]
    fn a_chain_from_a_completed_stripe_cycle_gives_back_the_state() {
        let mut state = State::default();
        let mut deltas: Vec<EncodedDelta> = Vec::new();
        let mut from: Option<usize> = None;
        let mut cycle = 0;
        // The state's length before the cycle under way, and after the last delta.
        let (mut before_cycle, mut len_before) = (0, 0);
        // Incomplete chains read, and of those refused for an entry left unknown.
        let (mut incomplete, mut unknown) = (0, 0);
        for round in 0..60u64 {
            match round {
                // Growth: new keys beyond the churned ones.
                0..20 => {
                    for i in 0..(round * 7) {
                        state.insert(format!("g{round}-{i}"), i);
                    }
                    churn(&mut state, round + 1, 30);
                }
                // Changes in place, some removals.
                20..45 => churn(&mut state, round + 1, 50),
                // Shrinking.
                _ => {
                    let gone: Vec<String> = state.iter().take(9).map(|(k, _)| k.clone()).collect();
                    for k in gone {
                        state.swap_remove(&k);
                    }
                    churn(&mut state, round + 1, 5);
                }
            }
            let delta = state.encode_delta().expect("delta");
            let (begins, ends) = (delta.begins, delta.ends);
            deltas.push(delta);
            let at = deltas.len() - 1;
            if begins {
                cycle = at;
                before_cycle = len_before;
            }
            len_before = state.len();
            if ends {
                assert!(at - cycle < STRIPES, "a cycle of {} deltas", at - cycle + 1);
                from = Some(cycle);
            } else if (20..45).contains(&round) && state.stripe.at + 64 < before_cycle {
                // The cycle under way, read alone, has not written every entry yet: keys
                // older than the cycle and untouched since (the 64 churned ones aside), past
                // its stripes.
                let mut partial = vec![Vec::new()];
                partial.extend(deltas[cycle..].iter().map(|d| d.bytes.clone()));
                // Refused at the end (an entry unknown), or at once when the chain's bytes
                // are too few for the state's length.
                let err = decode_chain::<String, u64>(&partial, "state")
                    .expect_err("a cycle not complete");
                assert!(
                    matches!(&err, Error::Checkpoint(m)
                        if m.contains("unknown") || m.contains("more entries than its chain holds")),
                    "{err}"
                );
                incomplete += 1;
                unknown += usize::from(err.to_string().contains("unknown"));
            }
            let Some(from) = from else {
                continue;
            };
            let mut chain = vec![Vec::new()];
            chain.extend(deltas[from..].iter().map(|d| d.bytes.clone()));
            let read: Vec<(String, u64)> = decode_chain(&chain, "state").expect("chain");
            assert_eq!(read, entries(&state), "round {round}, from delta {from}");
        }
        assert!(
            from.is_some_and(|f| f > 20),
            "cycles completed up to {from:?}"
        );
        assert!(incomplete >= 3, "{incomplete} incomplete cycles read");
        assert!(
            unknown >= 1,
            "none of {incomplete} incomplete cycles left an entry unknown"
        );
    }

    #[test]
    fn a_delta_estimates_the_whole_state_from_its_stripe() {
        let mut state = State::default();
        for i in 0..5000u64 {
            state.insert(format!("key-{i:06}"), i * 1000);
        }
        let whole = state.encode_whole().expect("whole").len() as u64;
        state.insert("key-000007".into(), 1);
        let delta = state.encode_delta().expect("delta");
        let estimate = delta.whole_bytes;
        assert!(
            estimate * 10 > whole * 9 && estimate * 10 < whole * 11,
            "{estimate} bytes estimated, {whole} whole"
        );
        assert_eq!(
            State::default().encode_delta().expect("empty").whole_bytes,
            0
        );
    }

    #[test]
    fn a_delta_longer_than_its_chain_holds_is_refused_before_it_is_allocated() {
        let mut huge = STRIPED_MAGIC.to_vec();
        huge.extend(
            postcard::to_stdvec(&(
                u64::MAX / 2,
                vec![(0u64, Change::Entry("a".to_string(), 1u64))],
                0u64,
                Vec::<(String, u64)>::new(),
            ))
            .expect("encode"),
        );
        let err =
            decode_chain::<String, u64>(&[Vec::new(), huge], "keyed state").expect_err("too long");
        assert!(
            matches!(&err, Error::Checkpoint(m) if m.contains("more entries than its chain holds")),
            "{err}"
        );
    }

    #[test]
    fn a_stripe_past_the_state_is_a_checkpoint_error() {
        let mut state = State::default();
        state.insert("a".into(), 1);
        let whole = state.encode_whole().expect("whole");
        let mut far = STRIPED_MAGIC.to_vec();
        far.extend(
            postcard::to_stdvec(&(
                1u64,
                Vec::<(u64, Change<String, u64>)>::new(),
                1u64,
                vec![("b".to_string(), 2u64)],
            ))
            .expect("encode"),
        );
        let err = decode_chain::<String, u64>(&[whole, far], "keyed state").expect_err("past");
        assert!(
            matches!(&err, Error::Checkpoint(m) if m.contains("stripe of 1 entries at 1")),
            "{err}"
        );
    }
}
