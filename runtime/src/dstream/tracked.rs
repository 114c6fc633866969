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
//!
//! The batch a snapshot is taken at would wait for the encoding of the delta's changes and its
//! stripe. So once deltas are being taken, each batch writes the next delta ahead, as its
//! state task ends: the changes logged since the batch before, then the next slice of the
//! stripe, so that the stripe is written over the batches between two snapshots (at the pace
//! of the last interval). The snapshot's batch writes what is left: its own changes (or,
//! once the log was dropped, every changed entry read from the map), the rest of the stripe,
//! and the state's length. A delta written so is a list of pieces in the order they were
//! taken ([`Piece`]), and recovery replays them in that order: a stripe gives the entries as
//! they were when it was taken, and the changes after it bring them to the snapshot. Replayed
//! in order from any point between the two snapshots, the changes give the same entries:
//! where a key took another's place, the change that put it there is in the log with it.
//! Positions past the snapshot's length were cut by it, and are skipped. Changes written
//! ahead leave the log (its bound counts them still), and only their positions stay, marked:
//! if the log is dropped later, the delta's last piece reads every changed entry from the
//! map, and replayed after the pieces before it, gives each its value at the snapshot.

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

/// What starts a delta written in pieces (see the module's documentation): each [`Piece`] in
/// the order it was taken, the last one [`Piece::End`]. Written under another key than the
/// deltas before it (`.pieces`), so that a binary from before skips it rather than misreads it.
const PIECES_MAGIC: &[u8] = b"sluice-delta-v4\n";

/// A part of a delta written in pieces, replayed in order onto the entries of the snapshot
/// before: `C` the changes, `S` the stripe's entries (borrowed when written, owned when read).
#[derive(Serialize, Deserialize)]
enum Piece<C, S> {
    /// Changes, in the order they were made.
    Changes(C),
    /// The entries from this position on, as they were when it was taken.
    Stripe(u64, S),
    /// The state's length at the snapshot: the last piece.
    End(u64),
}

/// A piece as read back.
type ReadPiece<K, V> = Piece<Vec<(u64, Change<K, V>)>, Vec<(K, V)>>;

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
    /// Every change since the last snapshot not yet written ahead, in order, while there were
    /// few enough to keep; `None` once there were too many (see the module's documentation).
    log: Option<Vec<(u64, Change<K, V>)>>,
    /// The positions written since the last snapshot that the log no longer holds: those of
    /// the changes written ahead from it, and once it is dropped, every change (its positions
    /// carried over). A dropped log's delta is read from the map at these positions.
    changed: FixedBitSet,
    /// Of those, the positions that took another key.
    rekeyed: FixedBitSet,
    /// Where the next delta's stripe starts.
    stripe: StripeCursor,
    /// The next delta, as written ahead so far.
    next: NextDelta,
}

/// Where a stripe cycle stands: the next stripe's first position, and the stripes the cycle
/// has written so far.
#[derive(Clone, Copy, Debug, Default)]
struct StripeCursor {
    at: usize,
    taken: usize,
}

/// The next delta, written ahead of its snapshot as the batches run (see the module's
/// documentation).
#[derive(Default)]
struct NextDelta {
    /// Deltas are being taken, so the batches write the next one ahead. Off until a delta is
    /// taken, and after a whole snapshot or a restore: a state written whole at every snapshot
    /// (a distributed worker's) would write its pieces for nothing.
    ahead: bool,
    /// Its pieces so far, after [`PIECES_MAGIC`].
    bytes: Vec<u8>,
    /// How many logged changes are in `bytes`, taken out of the log (their positions marked).
    logged: usize,
    /// The first position of its stripe: the cursor where it started.
    from: usize,
    /// The stripe entries it writes ahead, at most; the snapshot may add more.
    share: usize,
    /// Its stripe's entries written so far, and their bytes.
    striped: usize,
    stripe_bytes: usize,
    /// Its stripe reached the state's end: it ends its cycle, and writes no more stripe.
    ends: bool,
    /// Batches that wrote ahead since the last delta, and between the two deltas before:
    /// the stripe is written a `pace`th at a time.
    batches: usize,
    pace: usize,
}

impl NextDelta {
    /// Its pieces so far, left empty: [`PIECES_MAGIC`] if none yet.
    fn take_bytes(&mut self) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut self.bytes);
        if bytes.is_empty() {
            bytes.extend_from_slice(PIECES_MAGIC);
        }
        bytes
    }
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
            next: NextDelta::default(),
        }
    }
}

fn encoding_failed(e: postcard::Error) -> Error {
    Error::Internal(format!("cannot serialize a state delta: {e}"))
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
        if self.next.logged + log.len() >= (self.map.len() / 4).max(MIN_LOG) {
            let log = std::mem::take(log);
            self.log = None;
            self.mark_logged(&log);
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

    /// Marks the positions of logged changes, which the log will no longer hold.
    fn mark_logged(&mut self, log: &[(u64, Change<K, V>)]) {
        for (at, change) in log {
            // A logged position is below the map's length at the time, so it fits usize.
            self.mark(*at as usize, matches!(change, Change::Entry(..)));
        }
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

    /// Changes count from here, and the next delta starts (written ahead with `ahead`).
    fn start_delta(&mut self, ahead: bool) {
        self.changed.clear();
        self.rekeyed.clear();
        match &mut self.log {
            Some(log) => log.clear(),
            None => self.log = Some(Vec::new()),
        }
        let len = self.map.len();
        let StripeCursor { at, taken } = self.stripe;
        let at = at.min(len);
        let left = STRIPES.saturating_sub(taken).max(1);
        self.next = NextDelta {
            ahead,
            from: at,
            share: (len - at).div_ceil(left).max(MIN_STRIPE),
            pace: if ahead { self.next.batches } else { 0 },
            ..NextDelta::default()
        };
    }

    /// How many entries a delta would hold now, at most.
    pub fn changes(&self) -> usize {
        if let Some(log) = &self.log {
            return self.next.logged + log.len();
        }
        let len = self.map.len().min(self.changed.len());
        self.changed.count_ones(..len)
    }

    /// The whole state, encoded; from now on changes count from here.
    ///
    /// The batch a snapshot is taken at waits for its encoding: a large map is encoded in
    /// chunks on the task threads, each chunk's entries as the sequence's items, so the bytes
    /// are the sequence's as one pass would write them.
    pub fn encode_whole(&mut self) -> Result<Vec<u8>> {
        use rayon::prelude::*;
        self.stripe = StripeCursor::default();
        self.start_delta(false);
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

    /// Writes the next delta ahead, once deltas are being taken: the changes logged since the
    /// last call, then the next `pace`th of the stripe. Called as a batch's state task ends,
    /// so that the snapshot's batch has little left to write (see the module's documentation).
    pub fn write_ahead(&mut self) -> Result<()> {
        if !self.next.ahead {
            return Ok(());
        }
        self.next.batches += 1;
        self.write_logged()?;
        let pace = self.next.pace;
        if pace > 0 {
            let slice = self.next.share.div_ceil(pace);
            let room = self.next.share.saturating_sub(self.next.striped);
            self.write_stripe(slice.min(room))?;
        }
        Ok(())
    }

    /// Appends the logged changes to the next delta, and takes them out of the log: only
    /// their positions are kept, marked, for a delta read from the map if the log is dropped
    /// later.
    fn write_logged(&mut self) -> Result<()> {
        let Some(mut log) = self.log.take() else {
            return Ok(());
        };
        let mut written = Ok(());
        if !log.is_empty() {
            let bytes = self.next.take_bytes();
            written = postcard::to_extend(&Piece::<_, ()>::Changes(&log), bytes)
                .map(|bytes| self.next.bytes = bytes);
            self.mark_logged(&log);
            self.next.logged += log.len();
            log.clear();
        }
        self.log = Some(log);
        written.map_err(encoding_failed)
    }

    /// Appends up to `entries` of the stripe, from the cursor on, as they are now; moves the
    /// cursor past them. Reaching the state's end ends the delta's stripe.
    fn write_stripe(&mut self, entries: usize) -> Result<()> {
        if self.next.ends {
            return Ok(());
        }
        let len = self.map.len();
        let at = self.stripe.at.min(len);
        let end = at + entries.min(len - at);
        if end > at {
            // The range is within the map, so `get_range` always gives its entries.
            let stripe = crate::data::Seq(self.map.get_range(at..end).unwrap_or_default().iter());
            let bytes = self.next.take_bytes();
            let before = bytes.len();
            self.next.bytes =
                postcard::to_extend(&Piece::<(), _>::Stripe(at as u64, stripe), bytes)
                    .map_err(encoding_failed)?;
            self.next.stripe_bytes += self.next.bytes.len() - before;
            self.next.striped += end - at;
        }
        self.stripe.at = end;
        self.next.ends = end == len;
        Ok(())
    }

    /// The next delta, finished: the changes since the last snapshot (whole or delta) that
    /// the batches did not write ahead, the rest of its stripe, and the state's length. From
    /// now on changes count from here.
    pub fn encode_delta(&mut self) -> Result<EncodedDelta> {
        let len = self.map.len();
        if self.log.is_some() {
            self.write_logged()?;
        } else {
            // The values are copied out first, then written. Each copy reads memory
            // independent of the others, so the processor overlaps their cache misses; the
            // encoder, which branches on every value it reads, would take them one at a time
            // (a probe of 250,000 changes of a 2.5 M-entry partition: 13 ms copied, 16–25 ms
            // read in place). They are the entries as they are now, so they come after the
            // changes and stripes written ahead (a change past the end was dropped by a
            // later removal, and nothing read it since).
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
            let bytes = self.next.take_bytes();
            self.next.bytes = postcard::to_extend(&Piece::<_, ()>::Changes(changes), bytes)
                .map_err(encoding_failed)?;
        }
        self.write_stripe(self.stripe_left(len))?;
        let bytes = self.next.take_bytes();
        let bytes = postcard::to_extend(&Piece::<(), ()>::End(len as u64), bytes)
            .map_err(encoding_failed)?;
        let begins = self.stripe.taken == 0;
        let ends = self.next.ends;
        let whole_bytes = match self.next.striped {
            0 => 0,
            n => (self.next.stripe_bytes as u64).saturating_mul(len as u64) / n as u64,
        };
        self.stripe = if ends {
            StripeCursor::default()
        } else {
            StripeCursor {
                at: self.stripe.at,
                taken: self.stripe.taken + 1,
            }
        };
        self.start_delta(true);
        // The next delta about this one's size, so that its buffer does not grow by copies.
        self.next.bytes.reserve(bytes.len());
        Ok(EncodedDelta {
            bytes,
            begins,
            ends,
            whole_bytes,
        })
    }

    /// How many more entries the delta's stripe must hold at its snapshot. The stripes left
    /// in a cycle share what is left of the state, so a cycle ends in [`STRIPES`] deltas even
    /// while the state grows; and a stripe holds at least half as many entries as the delta
    /// holds changes, so that the changes a cycle's deltas hold stay under twice the state (a
    /// chain is read whole at recovery, and a state whose keys all change often is cheaper
    /// read whole).
    fn stripe_left(&self, len: usize) -> usize {
        let from = self.next.from.min(len);
        let left = STRIPES.saturating_sub(self.stripe.taken).max(1);
        let share = (len - from)
            .div_ceil(left)
            .max(MIN_STRIPE)
            .max(self.changes() / 2);
        // The last stripe of a cycle takes everything left: with `left` 1, the share reaches
        // the end from where the stripe started.
        (from + share).saturating_sub(self.stripe.at.min(len))
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
        self.stripe = StripeCursor::default();
        self.start_delta(false);
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
        let (len, pieces) = read_delta(delta).map_err(unreadable)?;
        apply(&mut slots, len, pieces, striped, limit)
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

/// A delta's length and pieces, in whichever format it was written. A delta from before pieces
/// reads as its changes, then its stripe: it was applied so, onto entries cut or grown to its
/// length first.
fn read_delta<K: DeserializeOwned, V: DeserializeOwned>(
    delta: &[u8],
) -> postcard::Result<(u64, Vec<ReadPiece<K, V>>)> {
    if let Some(mut rest) = delta.strip_prefix(PIECES_MAGIC) {
        let mut pieces = Vec::new();
        loop {
            let (piece, after) = postcard::take_from_bytes::<ReadPiece<K, V>>(rest)?;
            rest = after;
            match piece {
                // Nothing may follow the end.
                Piece::End(len) if rest.is_empty() => return Ok((len, pieces)),
                Piece::End(_) => return Err(postcard::Error::DeserializeBadEncoding),
                piece => pieces.push(piece),
            }
        }
    }
    if let Some(body) = delta.strip_prefix(STRIPED_MAGIC) {
        let (len, changed, at, stripe): StripedDelta<K, V> = postcard::from_bytes(body)?;
        return Ok((
            len,
            vec![Piece::Changes(changed), Piece::Stripe(at, stripe)],
        ));
    }
    if let Some(body) = delta.strip_prefix(DELTA_MAGIC) {
        let (len, changed): Delta<K, V> = postcard::from_bytes(body)?;
        return Ok((len, vec![Piece::Changes(changed)]));
    }
    let (len, changed): LegacyDelta<(K, V)> = postcard::from_bytes(delta)?;
    let changed = changed
        .into_iter()
        .map(|(at, (k, v))| (at, Change::Entry(k, v)))
        .collect();
    Ok((len, vec![Piece::Changes(changed)]))
}

/// Applies one delta to the entries (`None`: not known yet, in a chain that starts at a stripe
/// cycle): the entries cut or grown to the delta's `len`, then its pieces replayed in order.
/// A position at or past `len` was cut by the snapshot, and what a piece writes there is
/// skipped. In a chain from a whole state (`striped` false) every entry is known, so positions
/// past the old end must be given whole and a value alone goes only where an entry is.
fn apply<K, V>(
    slots: &mut Vec<Option<(K, V)>>,
    len: u64,
    pieces: Vec<ReadPiece<K, V>>,
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
    for piece in pieces {
        match piece {
            Piece::Changes(changed) => {
                for (at, change) in changed {
                    let Some(slot) = usize::try_from(at).ok().and_then(|at| slots.get_mut(at))
                    else {
                        continue;
                    };
                    match change {
                        Change::Entry(k, v) => *slot = Some((k, v)),
                        Change::Value(v) => match slot {
                            Some((_, value)) => *value = v,
                            // The entry's stripe, later in the chain, holds it whole.
                            None if striped => {}
                            None => {
                                return Err(format!(
                                    "gives a value alone to position {at} of {len}"
                                ));
                            }
                        },
                    }
                }
            }
            Piece::Stripe(at, entries) => {
                let at = usize::try_from(at).unwrap_or(usize::MAX);
                let place = slots.get_mut(at.min(len)..).unwrap_or_default();
                for (slot, entry) in place.iter_mut().zip(entries) {
                    *slot = Some(entry);
                }
            }
            Piece::End(_) => {}
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
                // Growth: new keys beyond the churned ones, with a batch's pieces written
                // ahead in between.
                0..20 => {
                    for i in 0..(round * 7) {
                        state.insert(format!("g{round}-{i}"), i);
                    }
                    state.write_ahead().expect("ahead");
                    churn(&mut state, round + 1, 30);
                }
                // Changes in place, some removals, written ahead in two batches (every
                // third round at its snapshot alone).
                20..45 if round % 3 == 0 => churn(&mut state, round + 1, 50),
                20..45 => {
                    churn(&mut state, round + 1, 25);
                    state.write_ahead().expect("ahead");
                    churn(&mut state, round + 100, 25);
                    state.write_ahead().expect("ahead");
                }
                // Shrinking, past the stripe written ahead.
                _ => {
                    state.write_ahead().expect("ahead");
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

    /// Two states given the same changes, one writing its deltas ahead in batches and one at
    /// its snapshots alone: each chain gives back the state, through growth, changes in
    /// place, a log dropped in the middle of a delta, and shrinking past the stripe written
    /// ahead; and the snapshots of the one written ahead finish less of their stripes.
    #[test]
    fn a_delta_written_ahead_gives_back_what_one_written_at_once_does() {
        let (mut ahead, mut at_once) = (State::default(), State::default());
        for i in 0..300u64 {
            ahead.insert(format!("k{i}"), i);
            at_once.insert(format!("k{i}"), i);
        }
        let whole = ahead.encode_whole().expect("whole");
        assert_eq!(whole, at_once.encode_whole().expect("whole"));
        let (mut chain_ahead, mut chain_at_once) = (vec![whole.clone()], vec![whole]);
        // Of the deltas' bytes once the pace is known (from the third delta on), those
        // written ahead.
        let (mut written_ahead, mut written) = (0, 0);
        for round in 0..30u64 {
            for batch in 0..4u64 {
                let seed = round * 10 + batch + 1;
                for state in [&mut ahead, &mut at_once] {
                    match round {
                        // Growth.
                        0..8 => {
                            for i in 0..40 {
                                state.insert(format!("g{seed}-{i}"), i);
                            }
                            churn(state, seed, 20);
                        }
                        // More changes than the log keeps, in the middle of a delta.
                        12 if batch == 2 => {
                            for pass in 0..3 {
                                for (i, k) in entries(state).into_iter().enumerate() {
                                    state.insert(k.0, i as u64 * seed + pass);
                                }
                            }
                        }
                        // Shrinking.
                        20.. => {
                            let gone: Vec<String> =
                                state.iter().take(15).map(|(k, _)| k.clone()).collect();
                            for k in gone {
                                state.swap_remove(&k);
                            }
                            churn(state, seed, 10);
                        }
                        _ => churn(state, seed, 40),
                    }
                }
                ahead.write_ahead().expect("ahead");
                // Written ahead (from the first delta on), the changes leave the log: their
                // positions alone are kept.
                let dropped = round == 12 && batch >= 2;
                if round > 0 {
                    assert_eq!(
                        ahead.log.as_ref().map(Vec::len),
                        (!dropped).then_some(0),
                        "round {round}, batch {batch}"
                    );
                }
            }
            if round == 12 {
                assert!(ahead.log.is_none(), "the log was dropped in round 12");
            }
            let before = ahead.next.bytes.len();
            let delta_ahead = ahead.encode_delta().expect("delta");
            let delta_at_once = at_once.encode_delta().expect("delta");
            if round >= 2 {
                written_ahead += before;
                written += delta_ahead.bytes.len();
            }
            chain_ahead.push(delta_ahead.bytes);
            chain_at_once.push(delta_at_once.bytes);
            for (chain, what) in [(&chain_ahead, "ahead"), (&chain_at_once, "at once")] {
                let read: Vec<(String, u64)> = decode_chain(chain, "state").expect(what);
                assert_eq!(read, entries(&at_once), "{what}, round {round}");
            }
            assert_eq!(entries(&ahead), entries(&at_once));
        }
        assert!(
            written_ahead * 4 > written * 3,
            "{written_ahead} of {written} bytes written ahead"
        );
    }

    /// A checkpoint written before pieces goes on with them: a chain that starts at a stripe
    /// cycle of deltas with stripes (`sluice-delta-v3`) and goes on in pieces reads.
    #[test]
    fn a_chain_from_before_pieces_goes_on_in_pieces() {
        let mut state = State::default();
        churn(&mut state, 5, 300);
        state.encode_whole().expect("whole");
        churn(&mut state, 6, 50);
        // The delta as written before pieces: no change, and a stripe of the whole state, so
        // that it completes a cycle alone.
        let mut v3 = STRIPED_MAGIC.to_vec();
        v3.extend(
            postcard::to_stdvec(&(
                state.len() as u64,
                Vec::<(u64, Change<String, u64>)>::new(),
                0u64,
                entries(&state),
            ))
            .expect("encode"),
        );
        state.encode_delta().expect("delta");
        let mut chain = vec![Vec::new(), v3];
        for round in 0..3 {
            churn(&mut state, 7 + round, 40);
            state.write_ahead().expect("ahead");
            churn(&mut state, 17 + round, 40);
            chain.push(state.encode_delta().expect("delta").bytes);
        }
        let read: Vec<(String, u64)> = decode_chain(&chain, "state").expect("chain");
        assert_eq!(read, entries(&state));
    }

    #[test]
    fn a_delta_in_pieces_ends_with_its_length_alone() {
        let mut state = State::default();
        state.insert("a".into(), 1);
        let whole = state.encode_whole().expect("whole");
        let piece = |p: &ReadPiece<String, u64>| postcard::to_stdvec(p).expect("encode");
        let stripe = piece(&Piece::Stripe(0, vec![("b".to_string(), 2)]));
        let end = piece(&Piece::End(1));
        let delta = |pieces: &[&Vec<u8>]| {
            let mut bytes = PIECES_MAGIC.to_vec();
            for p in pieces {
                bytes.extend_from_slice(p);
            }
            bytes
        };
        let read: Vec<(String, u64)> =
            decode_chain(&[whole.clone(), delta(&[&stripe, &end])], "keyed state").expect("read");
        assert_eq!(read, vec![("b".to_string(), 2)]);
        for (pieces, why) in [
            (vec![&stripe], "no end"),
            (vec![&end, &stripe], "a piece after the end"),
            (vec![&end, &end], "two ends"),
        ] {
            let err = decode_chain::<String, u64>(&[whole.clone(), delta(&pieces)], "keyed state")
                .expect_err(why);
            assert!(
                matches!(&err, Error::Checkpoint(m) if m.contains("unreadable")),
                "{why}: {err}"
            );
        }
        // A stripe taken before the state shrank reaches past the snapshot's length: what is
        // past it was cut, and is skipped.
        let wide = piece(&Piece::Stripe(
            0,
            vec![("b".to_string(), 2), ("c".to_string(), 3)],
        ));
        let read: Vec<(String, u64)> =
            decode_chain(&[whole, delta(&[&wide, &end])], "keyed state").expect("read");
        assert_eq!(read, vec![("b".to_string(), 2)]);
    }
}
