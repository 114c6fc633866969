//! `repartition`: records spread evenly over the partitions.

use std::sync::Arc;

use super::{Compute, DStream, Upstream};
use crate::data::Data;
use crate::error::Result;
use crate::exec::{BatchContext, Task};
use crate::plan::{Dep, ShuffleId};

/// Deals a partition's records out over all partitions in turn, starting at the partition's
/// own index so that many small partitions do not all fill partition 0.
struct DealMap<T> {
    parent: Upstream<T>,
    shuffle: ShuffleId,
}

impl<T: Data> Task for DealMap<T> {
    fn run(&self, cx: &BatchContext, part: usize) -> Result<()> {
        let records = self.parent.pull(cx, part)?;
        let n = cx.partitions;
        let mut blocks: Vec<Vec<T>> = (0..n)
            .map(|_| Vec::with_capacity(records.len() / n + 1))
            .collect();
        for (i, record) in records.into_iter().enumerate() {
            blocks[(part + i) % n].push(record);
        }
        cx.put_shuffle(self.shuffle, part, blocks)
    }
}

struct DealRead {
    shuffle: ShuffleId,
}

impl<T: Data> Compute<T> for DealRead {
    fn compute(&self, cx: &BatchContext, part: usize) -> Result<Vec<T>> {
        // Blocks in map-partition order: every run of a batch reads the same sequence.
        Ok(cx
            .take_shuffle::<T>(self.shuffle, part)?
            .into_iter()
            .flatten()
            .collect())
    }
}

impl<T: Data> DStream<T> {
    /// The same records spread evenly over the partitions: each partition's records are dealt
    /// out over all of them in turn, so no partition ends with more than its share plus one
    /// record per partition. For a skewed input (one hot Kafka partition, one socket) before
    /// costly per-record work; the partitions are the job's (Spark's `repartition(n)` with `n`
    /// the job's parallelism). Deterministic: a replayed batch deals its records alike.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(4));
    /// let q = QueueSource::new("q");
    /// q.push((0..100).collect::<Vec<u32>>());
    /// let sizes = ctx
    ///     .source(q)
    ///     .repartition()
    ///     .map_partitions("size", |_, records: Vec<u32>| Ok(vec![records.len()]))
    ///     .collect_batches();
    /// ctx.build().unwrap().run_batches(1).unwrap();
    /// assert_eq!(sizes.take().remove(0).1, vec![25, 25, 25, 25]);
    /// ```
    pub fn repartition(&self) -> DStream<T> {
        let parent = self.upstream();
        let shuffle = self.ctx.add_shuffle(
            "repartition",
            self.slide_ms,
            vec![self.narrow()],
            move |shuffle| Arc::new(DealMap { parent, shuffle }),
        );
        self.ctx.add_node(
            "repartition",
            self.slide_ms,
            vec![Dep::Shuffle(shuffle)],
            Arc::new(DealRead { shuffle }),
        )
    }
}
