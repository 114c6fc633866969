//! `filter`: keep the records for which a predicate holds.

use super::DStream;
use crate::data::Data;

impl<T: Data> DStream<T> {
    /// Keeps the records for which `f` returns true.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(1));
    /// let q = QueueSource::new("q");
    /// q.push(vec![1, 2, 3, 4]);
    /// let out = ctx.source(q).filter(|x: &i64| x % 2 == 0).collect_batches();
    /// ctx.build().unwrap().run_batches(1).unwrap();
    /// assert_eq!(out.take()[0].1, vec![2, 4]);
    /// ```
    pub fn filter(&self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> DStream<T> {
        self.map_partitions("filter", move |_, mut records| {
            records.retain(|r| f(r));
            Ok(records)
        })
    }
}
