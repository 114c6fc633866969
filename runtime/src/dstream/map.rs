//! `map`, `map_values`, `key_by` and the partition-level `map_partitions` they are built on.

use std::sync::Arc;

use super::{Compute, DStream, Upstream};
use crate::data::Data;
use crate::error::Result;
use crate::exec::BatchContext;

pub(crate) type PartitionFn<T, U> =
    dyn Fn(&BatchContext, usize, Vec<T>) -> Result<Vec<U>> + Send + Sync;

struct MapPartitions<T, U> {
    parent: Upstream<T>,
    f: Arc<PartitionFn<T, U>>,
}

impl<T: Data, U> Compute<U> for MapPartitions<T, U> {
    fn compute(&self, cx: &BatchContext, part: usize) -> Result<Vec<U>> {
        (self.f)(cx, part, self.parent.pull(cx, part)?)
    }
}

impl<T: Data> DStream<T> {
    /// Applies `f` to all records of each partition of each batch; the most general narrow
    /// operation. `f` may count refused records with [`BatchContext::record_error`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(1));
    /// let q = QueueSource::new("q");
    /// q.push(vec![1, 2, 3]);
    /// let sums = ctx.source(q).map_partitions("sum", |_, xs: Vec<i64>| Ok(vec![xs.iter().sum::<i64>()]));
    /// let out = sums.collect_batches();
    /// ctx.build().unwrap().run_batches(1).unwrap();
    /// assert_eq!(out.take()[0].1, vec![6]);
    /// ```
    pub fn map_partitions<U: Data>(
        &self,
        name: &str,
        f: impl Fn(&BatchContext, Vec<T>) -> Result<Vec<U>> + Send + Sync + 'static,
    ) -> DStream<U> {
        self.map_partitions_at(name, move |cx, _, records| f(cx, records))
    }

    /// `map_partitions` whose function also gets the partition index.
    pub(crate) fn map_partitions_at<U: Data>(
        &self,
        name: &str,
        f: impl Fn(&BatchContext, usize, Vec<T>) -> Result<Vec<U>> + Send + Sync + 'static,
    ) -> DStream<U> {
        let compute = Arc::new(MapPartitions {
            parent: self.upstream(),
            f: Arc::new(f),
        });
        self.ctx
            .add_node(name, self.slide_ms, vec![self.narrow()], compute)
    }

    /// Applies `f` to every record.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(1));
    /// let q = QueueSource::new("q");
    /// q.push(vec![1, 2]);
    /// let out = ctx.source(q).map(|x: i64| x * 10).collect_batches();
    /// ctx.build().unwrap().run_batches(1).unwrap();
    /// assert_eq!(out.take()[0].1, vec![10, 20]);
    /// ```
    pub fn map<U: Data>(&self, f: impl Fn(T) -> U + Send + Sync + 'static) -> DStream<U> {
        self.map_partitions("map", move |_, records| {
            Ok(records.into_iter().map(&f).collect())
        })
    }

    /// Pairs every record with a key computed from it: `(key, record)`.
    pub fn key_by<K: Data>(&self, f: impl Fn(&T) -> K + Send + Sync + 'static) -> DStream<(K, T)> {
        self.map_partitions("keyBy", move |_, records| {
            Ok(records.into_iter().map(|r| (f(&r), r)).collect())
        })
    }
}

impl<K: Data, V: Data> DStream<(K, V)> {
    /// Applies `f` to the value of every pair, keeping the key (and the partitioning).
    pub fn map_values<W: Data>(
        &self,
        f: impl Fn(V) -> W + Send + Sync + 'static,
    ) -> DStream<(K, W)> {
        self.map_partitions("mapValues", move |_, pairs| {
            Ok(pairs.into_iter().map(|(k, v)| (k, f(v))).collect())
        })
    }
}
