//! `combine_by_key`, `reduce_by_key` and `group_by_key`: per-batch aggregation by key.

use indexmap::map::Entry;

use super::DStream;
use super::shuffle::combine_shuffled;
use crate::data::{Data, Key};

impl<K: Key, V: Data> DStream<(K, V)> {
    /// Aggregates the values of each key in each batch with combiners of type `C`: `create`
    /// starts one from a value, `merge_value` adds a value, `merge_combiners` joins two partial
    /// results (from different partitions).
    pub fn combine_by_key<C: Data>(
        &self,
        create: impl Fn(V) -> C + Send + Sync + 'static,
        merge_value: impl Fn(&mut C, V) + Send + Sync + 'static,
        merge_combiners: impl Fn(&mut C, C) + Send + Sync + 'static,
    ) -> DStream<(K, C)> {
        combine_shuffled(
            self,
            "combineByKey",
            move |_, pairs, map| {
                for (k, v) in pairs {
                    match map.entry(k) {
                        Entry::Occupied(mut e) => merge_value(e.get_mut(), v),
                        Entry::Vacant(e) => {
                            e.insert(create(v));
                        }
                    }
                }
                Ok(())
            },
            merge_combiners,
        )
    }

    /// Reduces the values of each key in each batch with an associative, commutative `f`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(3));
    /// let q = QueueSource::new("q");
    /// q.push(vec![("a".to_string(), 1), ("b".to_string(), 5), ("a".to_string(), 2)]);
    /// let out = ctx.source(q).reduce_by_key(|x: i64, y| x + y).collect_batches();
    /// ctx.build().unwrap().run_batches(1).unwrap();
    /// let mut sums = out.take().remove(0).1;
    /// sums.sort();
    /// assert_eq!(sums, vec![("a".to_string(), 3), ("b".to_string(), 5)]);
    /// ```
    pub fn reduce_by_key(&self, f: impl Fn(V, V) -> V + Send + Sync + 'static) -> DStream<(K, V)> {
        let f = std::sync::Arc::new(f);
        let g = f.clone();
        // `Option` lets the reduction move values instead of cloning them.
        let reduced = combine_shuffled(
            self,
            "reduceByKey",
            move |_, pairs, map| {
                for (k, v) in pairs {
                    match map.entry(k) {
                        Entry::Occupied(mut e) => reduce_into(e.get_mut(), v, &*f),
                        Entry::Vacant(e) => {
                            e.insert(Some(v));
                        }
                    }
                }
                Ok(())
            },
            move |acc: &mut Option<V>, other: Option<V>| {
                if let Some(v) = other {
                    reduce_into(acc, v, &*g);
                }
            },
        );
        reduced.map_partitions("reduceByKey", |_, pairs| {
            Ok(pairs
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect())
        })
    }

    /// Collects the values of each key in each batch, in arrival order.
    pub fn group_by_key(&self) -> DStream<(K, Vec<V>)> {
        self.combine_by_key(|v| vec![v], |c, v| c.push(v), |c, other| c.extend(other))
    }

    /// Collects the values of each key over a sliding window, every `slide`.
    pub fn group_by_key_and_window(
        &self,
        length: std::time::Duration,
        slide: std::time::Duration,
    ) -> DStream<(K, Vec<V>)> {
        self.window(length, slide).group_by_key()
    }
}

fn reduce_into<V>(acc: &mut Option<V>, v: V, f: &dyn Fn(V, V) -> V) {
    *acc = Some(match acc.take() {
        Some(a) => f(a, v),
        None => v,
    });
}
