//! The typed DStream API: a [`StreamingContext`] and [`DStream`]s built from it.
//!
//! Building a stream records a node in the job graph (plain data, see [`crate::plan`]) and the
//! function that computes one partition of it for one batch. Nothing runs until the context is
//! built into a [`Job`](crate::job::Job) and driven batch by batch.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use sluice::{StreamingConfig, StreamingContext, source::QueueSource};
//!
//! let ctx = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(2));
//! let queue = QueueSource::new("lines");
//! queue.push(vec!["a b a".to_string()]);
//! let counts = ctx.source(queue.clone()).flat_map(|l: String| {
//!     l.split(' ').map(str::to_string).collect::<Vec<_>>()
//! }).count_by_value();
//! let seen = counts.collect_batches();
//! let mut job = ctx.build().unwrap();
//! job.run_batches(1).unwrap();
//! let mut batch = seen.take().remove(0).1;
//! batch.sort();
//! assert_eq!(batch, vec![("a".to_string(), 2), ("b".to_string(), 1)]);
//! ```

mod count;
mod filter;
mod flat_map;
mod join;
mod map;
mod map_with_state;
mod output;
mod reduce;
mod reduce_by_key;
mod repartition;
pub(crate) mod shuffle;
mod timers;
pub(crate) mod tracked;
mod transform;
mod union;
mod update_state;
mod window;
pub(crate) mod windowed_reduce;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_crds::OnRecordError;

pub use join::{Cogrouped, FullOuterJoined};
pub use map_with_state::{MapWithState, State, StateSpec};
pub use output::Collected;

use crate::data::Data;
use crate::error::Result;
use crate::exec::{BatchContext, Task, lock_unpoisoned};
use crate::plan::{Dep, NodeId, NodeMeta, RootMeta, ShuffleId};
use crate::source::{Source, SourceNode};

/// How batches are cut and split.
#[derive(Clone, Debug)]
pub struct StreamingConfig {
    /// Interval between batches.
    pub batch_interval: Duration,
    /// Partitions per batch (and shards of keyed state).
    pub parallelism: usize,
    /// Threads that run tasks. Default: the machine's cores.
    pub threads: usize,
    /// What to do with a record an operation refuses.
    pub on_record_error: OnRecordError,
    /// The rate controller of sources that can bound a batch; `None`: off.
    pub backpressure: Option<crate::coordinator::rate::Backpressure>,
}

impl StreamingConfig {
    /// A configuration with the given batch interval, 4 partitions and one thread per core.
    pub fn new(batch_interval: Duration) -> Self {
        Self {
            batch_interval,
            parallelism: 4,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            on_record_error: OnRecordError::Skip,
            backpressure: None,
        }
    }

    /// Turns on the rate controller of sources that can bound a batch (Kafka).
    pub fn backpressure(mut self, settings: crate::coordinator::rate::Backpressure) -> Self {
        self.backpressure = Some(settings);
        self
    }

    /// Sets the number of partitions.
    pub fn parallelism(mut self, parallelism: usize) -> Self {
        self.parallelism = parallelism;
        self
    }

    /// Sets the number of task threads.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }
}

/// Computes one partition of a stream for one batch.
pub(crate) trait Compute<T>: Send + Sync {
    fn compute(&self, cx: &BatchContext, part: usize) -> Result<Vec<T>>;
}

/// A handle on a parent stream, as held by the operation that reads it.
pub(crate) struct Upstream<T> {
    pub id: NodeId,
    compute: Arc<dyn Compute<T>>,
}

impl<T> Clone for Upstream<T> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            compute: self.compute.clone(),
        }
    }
}

impl<T: Clone + Send + 'static> Upstream<T> {
    /// This batch's records of partition `part`, computed once when several operations read them.
    pub fn pull(&self, cx: &BatchContext, part: usize) -> Result<Vec<T>> {
        cx.shared(self.id, part, || self.compute.compute(cx, part))
    }
}

pub(crate) use crate::job::{Builder, Stateful};

/// Where streams are created; build it into a [`Job`](crate::job::Job) to run them.
#[derive(Clone)]
pub struct StreamingContext {
    inner: Arc<Mutex<Builder>>,
}

impl StreamingContext {
    /// A context with no streams yet.
    pub fn new(config: StreamingConfig) -> Self {
        let mut b = Builder {
            interval_ms: config.batch_interval.as_millis() as u64,
            threads: config.threads,
            policy: config.on_record_error,
            backpressure: config.backpressure,
            ..Builder::default()
        };
        b.graph.partitions = config.parallelism;
        if b.interval_ms == 0 {
            b.problems
                .push("the batch interval must be at least 1ms".into());
        }
        if config.parallelism == 0 {
            b.problems.push("parallelism must be at least 1".into());
        }
        Self {
            inner: Arc::new(Mutex::new(b)),
        }
    }

    /// The batch interval in milliseconds.
    pub fn interval_ms(&self) -> u64 {
        self.with(|b| b.interval_ms)
    }

    /// Partitions per batch.
    pub fn partitions(&self) -> usize {
        self.with(|b| b.graph.partitions)
    }

    /// A stream of the records a source delivers each batch.
    pub fn source<S: Source>(&self, source: S) -> DStream<S::Item> {
        let name = source.name().to_string();
        let index = self.with(|b| {
            b.sources.push(Box::new(SourceNode::new(source)));
            b.sources.len() - 1
        });
        let slide = self.interval_ms();
        self.add_node(
            &format!("source:{name}"),
            slide,
            vec![Dep::Source(index)],
            Arc::new(SourceRead { index }),
        )
    }

    /// Turns the streams into a runnable job; fails with every problem found while building.
    pub fn build(&self) -> Result<crate::job::Job> {
        let builder = std::mem::take(&mut *lock_unpoisoned(&self.inner));
        crate::job::Job::from_builder(builder)
    }

    /// How many stateful operations were declared so far.
    pub(crate) fn stateful_count(&self) -> usize {
        self.with(|b| b.stateful.len())
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Builder) -> R) -> R {
        f(&mut lock_unpoisoned(&self.inner))
    }

    pub(crate) fn problem(&self, message: String) {
        self.with(|b| b.problems.push(message));
    }

    fn count_reads(b: &mut Builder, deps: &[Dep]) {
        for dep in deps {
            if let Dep::Narrow(n) = dep {
                b.graph.consumers[*n] += 1;
            }
        }
    }

    pub(crate) fn add_node<T>(
        &self,
        name: &str,
        slide_ms: u64,
        deps: Vec<Dep>,
        compute: Arc<dyn Compute<T>>,
    ) -> DStream<T> {
        let id = self.with(|b| {
            Self::count_reads(b, &deps);
            let id = b.graph.nodes.len();
            b.graph.nodes.push(NodeMeta {
                id,
                name: name.to_string(),
                slide_ms,
                deps,
            });
            b.graph.consumers.push(0);
            id
        });
        DStream {
            ctx: self.clone(),
            id,
            slide_ms,
            compute,
        }
    }

    pub(crate) fn add_shuffle(
        &self,
        name: &str,
        slide_ms: u64,
        deps: Vec<Dep>,
        task: impl FnOnce(ShuffleId) -> Arc<dyn Task>,
    ) -> ShuffleId {
        self.with(|b| {
            Self::count_reads(b, &deps);
            let id = b.graph.shuffles.len();
            b.graph.shuffles.push(RootMeta {
                name: name.to_string(),
                slide_ms,
                deps,
            });
            b.shuffle_tasks.push(task(id));
            id
        })
    }

    pub(crate) fn add_materializer(
        &self,
        name: &str,
        slide_ms: u64,
        deps: Vec<Dep>,
        task: Arc<dyn Task>,
    ) -> usize {
        self.with(|b| {
            Self::count_reads(b, &deps);
            b.graph.materializers.push(RootMeta {
                name: name.to_string(),
                slide_ms,
                deps,
            });
            b.materializer_tasks.push(task);
            b.graph.materializers.len() - 1
        })
    }

    pub(crate) fn add_output(
        &self,
        name: &str,
        slide_ms: u64,
        deps: Vec<Dep>,
        task: impl FnOnce(usize) -> Arc<dyn Task>,
    ) {
        self.with(|b| {
            Self::count_reads(b, &deps);
            let id = b.graph.outputs.len();
            b.graph.outputs.push(RootMeta {
                name: name.to_string(),
                slide_ms,
                deps,
            });
            b.output_tasks.push(task(id));
        })
    }

    pub(crate) fn add_stateful(&self, name: String, state: Arc<dyn Stateful>) {
        self.with(|b| b.stateful.push((name, state)));
    }
}

struct SourceRead {
    index: usize,
}

impl<T: Send + 'static> Compute<T> for SourceRead {
    fn compute(&self, cx: &BatchContext, part: usize) -> Result<Vec<T>> {
        cx.take_input(self.index, part)
    }
}

/// A discretized stream: a sequence of batches of records of type `T`, each split into the
/// context's partitions.
pub struct DStream<T> {
    ctx: StreamingContext,
    id: NodeId,
    slide_ms: u64,
    compute: Arc<dyn Compute<T>>,
}

impl<T> Clone for DStream<T> {
    fn clone(&self) -> Self {
        Self {
            ctx: self.ctx.clone(),
            id: self.id,
            slide_ms: self.slide_ms,
            compute: self.compute.clone(),
        }
    }
}

impl<T: Data> DStream<T> {
    /// The context the stream belongs to.
    pub fn context(&self) -> &StreamingContext {
        &self.ctx
    }

    /// How often the stream produces a batch, in milliseconds.
    pub fn slide_ms(&self) -> u64 {
        self.slide_ms
    }

    pub(crate) fn upstream(&self) -> Upstream<T> {
        Upstream {
            id: self.id,
            compute: self.compute.clone(),
        }
    }

    pub(crate) fn narrow(&self) -> Dep {
        Dep::Narrow(self.id)
    }

    /// A unique, stable name for state owned by an operation on this stream.
    pub(crate) fn state_name(&self, op: &str) -> String {
        let n = self.ctx.with(|b| b.stateful.len());
        format!("{n:03}-{op}")
    }
}
