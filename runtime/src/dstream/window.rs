//! `window`: every `slide`, the records of the last `length` of the stream.
//!
//! A buffer remembers the parent's batches for the window's length; it is brought up to date
//! by its own stage at every parent batch (even when no window is due) and is saved in
//! checkpoints, so a restarted job emits the same windows as one that never stopped.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Compute, DStream, Stateful, Upstream};
use crate::data::Data;
use crate::error::{Error, Result};
use crate::exec::{BatchContext, Task, lock_unpoisoned};
use crate::job::whole_only;
use crate::plan::Dep;

/// The partition of a record among so many, for a buffer of records placed by key.
pub(crate) type Route<T> = Arc<dyn Fn(&T, usize) -> usize + Send + Sync>;

/// The parent's batches of the last `keep_ms`, per partition, by batch index.
pub(crate) struct Buffer<T> {
    parent: Upstream<T>,
    keep_batches: u64,
    parts: Vec<Mutex<BTreeMap<u64, Vec<T>>>>,
    /// How the parent placed its records, when by key; `None`: anywhere will do.
    route: Option<Route<T>>,
}

impl<T: Data> Buffer<T> {
    /// Buffers `stream` for `keep_ms`; returns the buffer and its materializer. `route` says
    /// where a record belongs when the stream is placed by key.
    pub(crate) fn register(
        stream: &DStream<T>,
        keep_ms: u64,
        op: &str,
        route: Option<Route<T>>,
    ) -> (Arc<Self>, usize) {
        let interval = stream.ctx.interval_ms().max(1);
        let buffer = Arc::new(Buffer {
            route,
            parent: stream.upstream(),
            keep_batches: keep_ms / interval,
            parts: (0..stream.ctx.partitions())
                .map(|_| Mutex::new(BTreeMap::new()))
                .collect(),
        });
        let name = stream.state_name(op);
        stream.ctx.add_stateful(name, buffer.clone());
        let m =
            stream
                .ctx
                .add_materializer(op, stream.slide_ms, vec![stream.narrow()], buffer.clone());
        (buffer, m)
    }

    /// Batch indexes `(now - batches, now]`.
    pub(crate) fn span(now: u64, batches: u64) -> RangeInclusive<u64> {
        now.saturating_sub(batches) + 1..=now
    }

    /// Runs `f` over the partition's buffered batches within `range`, oldest first.
    pub(crate) fn visit(&self, part: usize, range: RangeInclusive<u64>, mut f: impl FnMut(&[T])) {
        if range.is_empty() {
            return;
        }
        for records in lock_unpoisoned(&self.parts[part])
            .range(range)
            .map(|(_, v)| v)
        {
            f(records);
        }
    }
}

impl<T: Data> Task for Buffer<T> {
    fn run(&self, cx: &BatchContext, part: usize) -> Result<()> {
        let records = cx.state_input(part, || self.parent.pull(cx, part))?;
        let now = cx.batch.index;
        let mut buf = lock_unpoisoned(&self.parts[part]);
        buf.insert(now, records);
        let oldest = now.saturating_sub(self.keep_batches);
        buf.retain(|&index, _| index > oldest);
        Ok(())
    }
}

impl<T: Data> Stateful for Buffer<T> {
    fn entries(&self, part: usize) -> usize {
        lock_unpoisoned(&self.parts[part])
            .values()
            .map(Vec::len)
            .sum()
    }

    fn snapshot(&self, part: usize) -> Result<Vec<u8>> {
        postcard::to_stdvec(&*lock_unpoisoned(&self.parts[part]))
            .map_err(|e| Error::Internal(format!("cannot serialize a window buffer: {e}")))
    }

    fn restore(&self, part: usize, chain: &[Vec<u8>]) -> Result<()> {
        let restored = match whole_only(chain, "a window buffer")? {
            Some(b) => postcard::from_bytes(b)
                .map_err(|e| Error::Checkpoint(format!("window buffer is unreadable: {e}")))?,
            None => BTreeMap::new(),
        };
        *lock_unpoisoned(&self.parts[part]) = restored;
        Ok(())
    }

    fn reshard(&self, part: usize, olds: &[&[Vec<u8>]], partitions: usize) -> Result<()> {
        let mut share: BTreeMap<u64, Vec<T>> = BTreeMap::new();
        for (old, chain) in olds.iter().enumerate() {
            // Records not placed by key stay together: old partition `old` goes whole to one
            // new partition.
            if self.route.is_none() && old % partitions != part {
                continue;
            }
            let Some(bytes) = whole_only(chain, "a window buffer")? else {
                continue;
            };
            let batches: BTreeMap<u64, Vec<T>> = postcard::from_bytes(bytes)
                .map_err(|e| Error::Checkpoint(format!("window buffer is unreadable: {e}")))?;
            for (batch, records) in batches {
                let records = records.into_iter().filter(|r| {
                    self.route
                        .as_ref()
                        .is_none_or(|route| route(r, partitions) == part)
                });
                share.entry(batch).or_default().extend(records);
            }
        }
        *lock_unpoisoned(&self.parts[part]) = share;
        Ok(())
    }
}

struct Window<T> {
    buffer: Arc<Buffer<T>>,
    length_batches: u64,
}

impl<T: Data> Compute<T> for Window<T> {
    fn compute(&self, cx: &BatchContext, part: usize) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.buffer.visit(
            part,
            Buffer::<T>::span(cx.batch.index, self.length_batches),
            |batch| out.extend_from_slice(batch),
        );
        Ok(out)
    }
}

impl<T: Data> DStream<T> {
    /// Checks window durations against the batch interval and this stream's slide; records a
    /// problem (reported by `build`) when they do not fit. Returns them in milliseconds.
    pub(crate) fn window_ms(&self, op: &str, length: Duration, slide: Duration) -> (u64, u64) {
        let (l, s) = (length.as_millis() as u64, slide.as_millis() as u64);
        let interval = self.ctx.interval_ms();
        for (what, d) in [("length", l), ("slide", s)] {
            if d == 0 || interval == 0 || d % interval != 0 {
                self.ctx.problem(format!(
                    "{op}: {what} {d}ms is not a multiple of the batch interval {interval}ms"
                ));
            } else if d % self.slide_ms != 0 {
                self.ctx.problem(format!(
                    "{op}: {what} {d}ms is not a multiple of the parent stream's slide {}ms",
                    self.slide_ms
                ));
            }
        }
        (l, s.max(1))
    }

    /// Every `slide`, the records of the batches in the last `length` (both multiples of the
    /// batch interval; windows end at batch times).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
    /// let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(1));
    /// let q = QueueSource::new("q");
    /// for b in 1..=4 { q.push(vec![b]); }
    /// let w = ctx.source(q).window(Duration::from_secs(3), Duration::from_secs(2));
    /// let out = w.collect_batches();
    /// ctx.build().unwrap().run_batches(4).unwrap();
    /// // Windows end at batches 2 and 4 and cover three batches each.
    /// let got: Vec<(u64, Vec<i32>)> = out.take().into_iter().map(|(b, r)| (b.index, r)).collect();
    /// assert_eq!(got, vec![(2, vec![1, 2]), (4, vec![2, 3, 4])]);
    /// ```
    pub fn window(&self, length: Duration, slide: Duration) -> DStream<T> {
        let (length_ms, slide_ms) = self.window_ms("window", length, slide);
        let (buffer, m) = Buffer::register(self, length_ms, "window", None);
        let interval = self.ctx.interval_ms().max(1);
        let compute = Arc::new(Window {
            buffer,
            length_batches: length_ms / interval,
        });
        self.ctx
            .add_node("window", slide_ms, vec![Dep::Materialized(m)], compute)
    }
}
