//! Hash repartitioning by key with map-side combining: the engine's only wide dependency.
//!
//! The map side combines each partition's records into one value per key, then splits the
//! result by [`partition_of`] into one block per reduce partition. The reduce side merges its
//! blocks in map-partition order, so the result is the same in every run.

use std::sync::Arc;

use indexmap::map::Entry;

use super::{Compute, DStream, Upstream};
use crate::data::{Data, Key, KeyMap, partition_of};
use crate::error::Result;
use crate::exec::{BatchContext, Task};
use crate::plan::{Dep, ShuffleId};

/// Folds a partition's records into per-key combiners.
pub(crate) type CombineFn<T, K, C> =
    dyn Fn(&BatchContext, Vec<T>, &mut KeyMap<K, C>) -> Result<()> + Send + Sync;
/// Merges two combiners of one key.
pub(crate) type MergeFn<C> = dyn Fn(&mut C, C) + Send + Sync;

struct ShuffleMap<T, K, C> {
    parent: Upstream<T>,
    shuffle: ShuffleId,
    combine: Arc<CombineFn<T, K, C>>,
}

impl<T: Data, K: Key, C: Data> Task for ShuffleMap<T, K, C> {
    fn run(&self, cx: &BatchContext, part: usize) -> Result<()> {
        let records = self.parent.pull(cx, part)?;
        let mut combined = KeyMap::default();
        (self.combine)(cx, records, &mut combined)?;
        let mut blocks: Vec<Vec<(K, C)>> = (0..cx.partitions).map(|_| Vec::new()).collect();
        for (k, c) in combined {
            blocks[partition_of(&k, cx.partitions)].push((k, c));
        }
        cx.put_shuffle(self.shuffle, part, blocks)
    }
}

/// Registers the map side of a shuffle of `stream`; its blocks are read with [`read_grouped`].
pub(crate) fn shuffle_by_key<T: Data, K: Key, C: Data>(
    stream: &DStream<T>,
    name: &str,
    combine: impl Fn(&BatchContext, Vec<T>, &mut KeyMap<K, C>) -> Result<()> + Send + Sync + 'static,
) -> ShuffleId {
    let parent = stream.upstream();
    let combine: Arc<CombineFn<T, K, C>> = Arc::new(combine);
    stream.ctx.add_shuffle(
        name,
        stream.slide_ms,
        vec![stream.narrow()],
        move |shuffle| {
            Arc::new(ShuffleMap {
                parent,
                shuffle,
                combine,
            })
        },
    )
}

/// Merges this reduce partition's blocks of `shuffle` into one combiner per key.
pub(crate) fn read_grouped<K: Key, C: Data>(
    cx: &BatchContext,
    shuffle: ShuffleId,
    part: usize,
    merge: &MergeFn<C>,
) -> Result<KeyMap<K, C>> {
    let blocks = cx.take_shuffle::<(K, C)>(shuffle, part)?;
    let mut grouped = KeyMap::with_capacity_and_hasher(
        blocks.iter().map(Vec::len).max().unwrap_or(0),
        Default::default(),
    );
    for block in blocks {
        for (k, c) in block {
            match grouped.entry(k) {
                Entry::Occupied(mut e) => merge(e.get_mut(), c),
                Entry::Vacant(e) => {
                    e.insert(c);
                }
            }
        }
    }
    Ok(grouped)
}

struct ShuffleRead<C> {
    shuffle: ShuffleId,
    merge: Arc<MergeFn<C>>,
}

impl<K: Key, C: Data> Compute<(K, C)> for ShuffleRead<C> {
    fn compute(&self, cx: &BatchContext, part: usize) -> Result<Vec<(K, C)>> {
        Ok(read_grouped::<K, C>(cx, self.shuffle, part, &*self.merge)?
            .into_iter()
            .collect())
    }
}

/// Shuffles `stream` by key and returns one `(key, combiner)` record per key and batch.
pub(crate) fn combine_shuffled<T: Data, K: Key, C: Data>(
    stream: &DStream<T>,
    name: &str,
    combine: impl Fn(&BatchContext, Vec<T>, &mut KeyMap<K, C>) -> Result<()> + Send + Sync + 'static,
    merge: impl Fn(&mut C, C) + Send + Sync + 'static,
) -> DStream<(K, C)> {
    let shuffle = shuffle_by_key(stream, name, combine);
    let read = Arc::new(ShuffleRead {
        shuffle,
        merge: Arc::new(merge),
    });
    stream
        .ctx
        .add_node(name, stream.slide_ms, vec![Dep::Shuffle(shuffle)], read)
}
