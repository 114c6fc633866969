//! `update_state_by_key`: state per key carried across batches.
//!
//! As in Spark Streaming, the update function runs for every key that has new values in the
//! batch and for every key that already has state, with all of the batch's values for the key
//! at once. Returning `None` drops the key.

use std::sync::{Arc, Mutex};

use super::shuffle::{read_grouped, shuffle_by_key};
use super::tracked::{decode_chain, keyed_share};
use super::{Compute, DStream, Stateful};
use crate::data::{Data, Key, KeyMap};
use crate::error::{Error, Result};
use crate::exec::{BatchContext, Task, lock_unpoisoned};
use crate::plan::{Dep, ShuffleId};

/// The new state of a key from its batch's values and its state; an error fails the batch
/// (or is counted and skipped by the function, through the context).
type Update<K, C, S> =
    dyn Fn(&BatchContext, &K, Option<C>, Option<S>) -> Result<Option<S>> + Send + Sync;
type Merge<C> = dyn Fn(&mut C, C) + Send + Sync;

/// Keyed state of one operation, per partition, in an order that survives checkpoints.
struct StateStore<K, C, S> {
    shuffle: ShuffleId,
    merge: Arc<Merge<C>>,
    update: Arc<Update<K, C, S>>,
    parts: Vec<Mutex<KeyMap<K, S>>>,
}

impl<K: Key, C: Data, S: Data> Task for StateStore<K, C, S> {
    fn run(&self, cx: &BatchContext, part: usize) -> Result<()> {
        let mut fresh: KeyMap<K, Option<C>> = cx
            .state_input(part, || {
                read_grouped::<K, C>(cx, self.shuffle, part, &*self.merge)
            })?
            .into_iter()
            .map(|(k, c)| (k, Some(c)))
            .collect();
        let mut state = lock_unpoisoned(&self.parts[part]);
        let old = std::mem::take(&mut *state);
        let mut next =
            KeyMap::with_capacity_and_hasher(old.len() + fresh.len(), Default::default());
        for (k, s) in old {
            let values = fresh.get_mut(&k).and_then(Option::take);
            if let Some(s) = (self.update)(cx, &k, values, Some(s))? {
                next.insert(k, s);
            }
        }
        // Keys new in this batch, in arrival order; the values of old keys were taken above.
        for (k, values) in fresh {
            if let Some(values) = values
                && let Some(s) = (self.update)(cx, &k, Some(values), None)?
            {
                next.insert(k, s);
            }
        }
        *state = next;
        Ok(())
    }
}

impl<K: Key, C: Send + 'static, S: Data> Stateful for StateStore<K, C, S> {
    fn entries(&self, part: usize) -> usize {
        lock_unpoisoned(&self.parts[part]).len()
    }

    fn snapshot(&self, part: usize) -> Result<Vec<u8>> {
        let state = lock_unpoisoned(&self.parts[part]);
        crate::data::encode_seq(state.iter())
            .map_err(|e| Error::Internal(format!("cannot serialize state: {e}")))
    }

    fn restore(&self, part: usize, chain: &[Vec<u8>]) -> Result<()> {
        let pairs: Vec<(K, S)> = decode_chain(chain, "keyed state")?;
        *lock_unpoisoned(&self.parts[part]) = pairs.into_iter().collect();
        Ok(())
    }

    fn reshard(&self, part: usize, olds: &[&[Vec<u8>]], partitions: usize) -> Result<()> {
        let share: Vec<(K, S)> = keyed_share(olds, part, partitions, "keyed state")?;
        *lock_unpoisoned(&self.parts[part]) = share.into_iter().collect();
        Ok(())
    }
}

struct StateRead<K, C, S> {
    store: Arc<StateStore<K, C, S>>,
}

impl<K: Key, C: Send + 'static, S: Data> Compute<(K, S)> for StateRead<K, C, S> {
    fn compute(&self, _cx: &BatchContext, part: usize) -> Result<Vec<(K, S)>> {
        let state = lock_unpoisoned(&self.store.parts[part]);
        Ok(state.iter().map(|(k, s)| (k.clone(), s.clone())).collect())
    }
}

impl<T: Data> DStream<T> {
    /// State by key, fed by a custom map-side combine of this stream's records into `C`.
    pub(crate) fn state_by_key<K: Key, C: Data, S: Data>(
        &self,
        op: &str,
        combine: impl Fn(&BatchContext, Vec<T>, &mut KeyMap<K, C>) -> Result<()> + Send + Sync + 'static,
        merge: impl Fn(&mut C, C) + Send + Sync + 'static,
        update: impl Fn(&BatchContext, &K, Option<C>, Option<S>) -> Result<Option<S>>
        + Send
        + Sync
        + 'static,
    ) -> DStream<(K, S)> {
        let shuffle = shuffle_by_key(self, op, combine);
        let store = Arc::new(StateStore {
            shuffle,
            merge: Arc::new(merge),
            update: Arc::new(update),
            parts: (0..self.ctx.partitions())
                .map(|_| Mutex::new(KeyMap::default()))
                .collect(),
        });
        self.ctx.add_stateful(self.state_name(op), store.clone());
        let m = self.ctx.add_materializer(
            op,
            self.slide_ms,
            vec![Dep::Shuffle(shuffle)],
            store.clone(),
        );
        self.ctx.add_node(
            op,
            self.slide_ms,
            vec![Dep::Materialized(m)],
            Arc::new(StateRead { store }),
        )
    }
}

impl<K: Key, V: Data> DStream<(K, V)> {
    /// Carries a state per key across batches: every batch, `update(new values, old state)`
    /// gives the new state (`None` removes the key). The result holds every key's state.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(2));
    /// let q = QueueSource::new("q");
    /// q.push(vec![("ann".to_string(), 2), ("ann".to_string(), 3)]);
    /// q.push(vec![("ann".to_string(), 1)]);
    /// let totals = ctx.source(q).update_state_by_key(|values: Vec<i64>, total: Option<i64>| {
    ///     Some(total.unwrap_or(0) + values.iter().sum::<i64>())
    /// });
    /// let out = totals.collect_batches();
    /// ctx.build().unwrap().run_batches(3).unwrap();
    /// let got: Vec<Vec<(String, i64)>> = out.take().into_iter().map(|(_, r)| r).collect();
    /// assert_eq!(got, vec![vec![("ann".into(), 5)], vec![("ann".into(), 6)], vec![("ann".into(), 6)]]);
    /// ```
    pub fn update_state_by_key<S: Data>(
        &self,
        update: impl Fn(Vec<V>, Option<S>) -> Option<S> + Send + Sync + 'static,
    ) -> DStream<(K, S)> {
        self.state_by_key(
            "updateStateByKey",
            |_, pairs, map: &mut KeyMap<K, Vec<V>>| {
                for (k, v) in pairs {
                    map.entry(k).or_default().push(v);
                }
                Ok(())
            },
            |acc, more| acc.extend(more),
            move |_, _, values, state| Ok(update(values.unwrap_or_default(), state)),
        )
    }
}
