//! `reduce`, `reduce_by_window` and `count_by_window`: one result per batch or window for the
//! whole stream, not per key.

use std::sync::Arc;
use std::time::Duration;

use super::DStream;
use super::shuffle::combine_shuffled;
use crate::data::Data;

impl<T: Data> DStream<T> {
    /// Reduces each batch to one record with `f` (associative and commutative: partitions are
    /// reduced apart, then together); an empty batch gives none.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(3));
    /// let q = QueueSource::new("q");
    /// q.push(vec![4, 9, 2]);
    /// let out = ctx.source(q).reduce(|a: i64, b| a.max(b)).collect_batches();
    /// ctx.build().unwrap().run_batches(2).unwrap();
    /// let got: Vec<Vec<i64>> = out.take().into_iter().map(|(_, r)| r).collect();
    /// assert_eq!(got, vec![vec![9], vec![]]);
    /// ```
    pub fn reduce(&self, f: impl Fn(T, T) -> T + Send + Sync + 'static) -> DStream<T> {
        let f = Arc::new(f);
        let g = f.clone();
        // One key, `()`: every partition's partial result meets in one partition.
        let reduced = combine_shuffled(
            self,
            "reduce",
            move |_, records, map| {
                let mut records = records.into_iter();
                if let Some(first) = records.next() {
                    let partial = records.fold(first, |a, b| f(a, b));
                    map.insert((), Some(partial));
                }
                Ok(())
            },
            move |acc: &mut Option<T>, other: Option<T>| {
                *acc = match (acc.take(), other) {
                    (Some(a), Some(b)) => Some(g(a, b)),
                    (a, b) => a.or(b),
                };
            },
        );
        reduced.map_partitions("reduce", |_, partials| {
            Ok(partials.into_iter().filter_map(|((), v)| v).collect())
        })
    }

    /// Reduces the records of a sliding window to one record with `f` (associative and
    /// commutative), every `slide`: each batch is reduced once, and a window reduces its
    /// batches' results. A window without records gives none.
    pub fn reduce_by_window(
        &self,
        f: impl Fn(T, T) -> T + Send + Sync + 'static,
        length: Duration,
        slide: Duration,
    ) -> DStream<T> {
        let f = Arc::new(f);
        let g = f.clone();
        self.reduce(move |a, b| f(a, b))
            .map(|v| ((), v))
            .reduce_by_key_and_window(move |a, b| g(a, b), length, slide)
            .map(|((), v)| v)
    }

    /// The number of records in a sliding window, every `slide` (0 for an empty one), updated
    /// incrementally: the batches that enter are added and those that leave subtracted.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(2));
    /// let q = QueueSource::new("q");
    /// for batch in [vec![1, 2], vec![3], vec![]] { q.push(batch); }
    /// let counts = ctx.source(q).count_by_window(Duration::from_secs(2), Duration::from_secs(1));
    /// let out = counts.collect_batches();
    /// ctx.build().unwrap().run_batches(4).unwrap();
    /// let got: Vec<Vec<u64>> = out.take().into_iter().map(|(_, r)| r).collect();
    /// assert_eq!(got, vec![vec![2], vec![3], vec![1], vec![0]]);
    /// ```
    pub fn count_by_window(&self, length: Duration, slide: Duration) -> DStream<u64> {
        self.count()
            .map(|n| ((), n))
            .reduce_by_key_and_window_inv(
                |a: u64, b| a + b,
                |a, b| a.saturating_sub(b),
                length,
                slide,
                None,
            )
            .map(|((), n)| n)
    }
}
