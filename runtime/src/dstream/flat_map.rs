//! `flat_map` and `flat_map_values`: each record (or value) becomes zero or more.

use super::DStream;
use crate::data::Data;

impl<T: Data> DStream<T> {
    /// Replaces every record by the records `f` returns for it.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(1));
    /// let q = QueueSource::new("q");
    /// q.push(vec!["to be".to_string(), "or".to_string()]);
    /// let words = ctx.source(q).flat_map(|l: String| l.split(' ').map(String::from).collect::<Vec<_>>());
    /// let out = words.collect_batches();
    /// ctx.build().unwrap().run_batches(1).unwrap();
    /// assert_eq!(out.take()[0].1, vec!["to", "be", "or"]);
    /// ```
    pub fn flat_map<U: Data, I>(&self, f: impl Fn(T) -> I + Send + Sync + 'static) -> DStream<U>
    where
        I: IntoIterator<Item = U>,
    {
        self.map_partitions("flatMap", move |_, records| {
            Ok(records.into_iter().flat_map(&f).collect())
        })
    }
}

impl<K: Data, V: Data> DStream<(K, V)> {
    /// Replaces every pair by one pair with the same key for each value `f` returns for its
    /// value (the partitioning is kept).
    pub fn flat_map_values<W: Data, I>(
        &self,
        f: impl Fn(V) -> I + Send + Sync + 'static,
    ) -> DStream<(K, W)>
    where
        I: IntoIterator<Item = W>,
    {
        self.map_partitions("flatMapValues", move |_, pairs| {
            let mut out = Vec::with_capacity(pairs.len());
            for (k, v) in pairs {
                out.extend(f(v).into_iter().map(|w| (k.clone(), w)));
            }
            Ok(out)
        })
    }
}
