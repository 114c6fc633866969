//! `transform`: an arbitrary function of each batch, partition by partition.

use super::DStream;
use crate::data::Data;
use crate::time::BatchInfo;

impl<T: Data> DStream<T> {
    /// Applies `f` to each partition of each batch, with the batch's time. This is where a
    /// stream meets data that is not a stream — a static table loaded once and shared by the
    /// closure, for example. Records of one key may sit in any partition unless the stream is
    /// keyed by a shuffle before (`reduce_by_key`, `group_by_key`...).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::{collections::HashSet, sync::Arc, time::Duration};
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let spammers: Arc<HashSet<String>> = Arc::new(["bot".to_string()].into());
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(2));
    /// let q = QueueSource::new("q");
    /// q.push(vec!["ann".to_string(), "bot".to_string(), "bob".to_string()]);
    /// let clean = ctx.source(q).transform(move |_batch, users: Vec<String>| {
    ///     users.into_iter().filter(|u| !spammers.contains(u)).collect()
    /// });
    /// let out = clean.collect_batches();
    /// ctx.build().unwrap().run_batches(1).unwrap();
    /// assert_eq!(out.take()[0].1, vec!["ann", "bob"]);
    /// ```
    pub fn transform<U: Data>(
        &self,
        f: impl Fn(&BatchInfo, Vec<T>) -> Vec<U> + Send + Sync + 'static,
    ) -> DStream<U> {
        self.map_partitions("transform", move |cx, records| Ok(f(&cx.batch, records)))
    }
}
