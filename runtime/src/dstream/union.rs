//! `union`: the records of two streams, batch by batch.

use std::sync::Arc;

use super::{Compute, DStream, Upstream};
use crate::data::Data;
use crate::error::Result;
use crate::exec::BatchContext;

struct Union<T> {
    left: Upstream<T>,
    right: Upstream<T>,
}

impl<T: Data> Compute<T> for Union<T> {
    fn compute(&self, cx: &BatchContext, part: usize) -> Result<Vec<T>> {
        let mut records = self.left.pull(cx, part)?;
        records.extend(self.right.pull(cx, part)?);
        Ok(records)
    }
}

impl<T: Data> DStream<T> {
    /// The records of both streams in each batch (this stream's first, per partition). Both
    /// streams must have the same slide.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(1));
    /// let (a, b) = (QueueSource::new("a"), QueueSource::new("b"));
    /// a.push(vec![1]);
    /// b.push(vec![2]);
    /// let out = ctx.source(a).union(&ctx.source(b)).collect_batches();
    /// ctx.build().unwrap().run_batches(1).unwrap();
    /// assert_eq!(out.take()[0].1, vec![1, 2]);
    /// ```
    pub fn union(&self, other: &DStream<T>) -> DStream<T> {
        if self.slide_ms != other.slide_ms {
            self.ctx.problem(format!(
                "union of streams with different slides ({}ms and {}ms); window them alike first",
                self.slide_ms, other.slide_ms
            ));
        }
        let compute = Arc::new(Union {
            left: self.upstream(),
            right: other.upstream(),
        });
        self.ctx.add_node(
            "union",
            self.slide_ms,
            vec![self.narrow(), other.narrow()],
            compute,
        )
    }
}
