//! `count` and `count_by_value`.

use super::DStream;
use super::shuffle::combine_shuffled;
use crate::data::{Data, Key, partition_of};

impl<T: Data> DStream<T> {
    /// The number of records in each batch, as a stream of one record per batch (0 for an empty
    /// batch).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(3));
    /// let q = QueueSource::new("q");
    /// q.push(vec![7, 8, 9]);
    /// let out = ctx.source(q).count().collect_batches();
    /// ctx.build().unwrap().run_batches(2).unwrap();
    /// let counts: Vec<Vec<u64>> = out.take().into_iter().map(|(_, c)| c).collect();
    /// assert_eq!(counts, vec![vec![3], vec![0]]);
    /// ```
    pub fn count(&self) -> DStream<u64> {
        let totals = combine_shuffled(
            self,
            "count",
            |_, records, map| {
                if !records.is_empty() {
                    map.insert((), records.len() as u64);
                }
                Ok(())
            },
            |acc: &mut u64, n| *acc += n,
        );
        // An empty batch counts 0, reported once: by the partition that owns the key `()`.
        totals.map_partitions_at("count", |cx, part, totals| {
            let mut counts: Vec<u64> = totals.into_iter().map(|((), n)| n).collect();
            if counts.is_empty() && part == partition_of(&(), cx.partitions) {
                counts.push(0);
            }
            Ok(counts)
        })
    }
}

impl<T: Key> DStream<T> {
    /// How many times each distinct record occurs in each batch.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(2));
    /// let q = QueueSource::new("q");
    /// q.push(vec!["x", "y", "x"].into_iter().map(String::from).collect());
    /// let out = ctx.source(q).count_by_value().collect_batches();
    /// ctx.build().unwrap().run_batches(1).unwrap();
    /// let mut counts = out.take().remove(0).1;
    /// counts.sort();
    /// assert_eq!(counts, vec![("x".to_string(), 2), ("y".to_string(), 1)]);
    /// ```
    pub fn count_by_value(&self) -> DStream<(T, u64)> {
        combine_shuffled(
            self,
            "countByValue",
            |_, records, map| {
                for r in records {
                    *map.entry(r).or_insert(0) += 1;
                }
                Ok(())
            },
            |acc: &mut u64, n| *acc += n,
        )
    }
}
