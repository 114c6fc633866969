//! The job graph and per-batch plans as plain data.
//!
//! Operations know how to compute a partition; this module only knows what depends on what.
//! A [`BatchPlan`] lists the stages one batch runs, in an order where every stage comes after
//! the stages it reads from — so an executor, local thread pool or remote workers, can place
//! each stage's partitions anywhere without knowing the user's functions.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::BatchInfo;

/// Index of a stream in the job graph.
pub type NodeId = usize;
/// Index of a shuffle (a hash repartitioning by key) in the job graph.
pub type ShuffleId = usize;

/// What a computation reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dep {
    /// The same partition of another stream, computed in the same task.
    Narrow(NodeId),
    /// This partition's blocks of a shuffle, written by a previous stage.
    Shuffle(ShuffleId),
    /// A buffer or state kept across batches, brought up to date by a previous stage.
    Materialized(usize),
    /// This partition of a source's input for the batch.
    Source(usize),
}

/// A stream in the graph.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeMeta {
    pub id: NodeId,
    /// The operation, for logs: `map`, `reduceByKey`, ...
    pub name: String,
    /// The stream produces a batch every `slide_ms` (the batch interval unless windowed).
    pub slide_ms: u64,
    pub deps: Vec<Dep>,
}

/// A task root: the map side of a shuffle, a materializer, or an output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RootMeta {
    pub name: String,
    /// Runs at batches whose time is a multiple of this.
    pub slide_ms: u64,
    pub deps: Vec<Dep>,
}

/// Why a stage exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageKind {
    /// Compute a stream's partitions and split them by key into shuffle blocks.
    ShuffleMap(ShuffleId),
    /// Bring a window buffer or keyed state up to date with this batch.
    Materialize(usize),
    /// Compute an output stream and hand it to its sink.
    Output(usize),
}

impl StageKind {
    /// What the stage does, as the batch-timeline page names it.
    pub fn label(&self) -> String {
        match self {
            StageKind::ShuffleMap(s) => format!("shuffle {s}"),
            StageKind::Materialize(m) => format!("state {m}"),
            StageKind::Output(o) => format!("output {o}"),
        }
    }
}

/// One stage of a batch: the same task over every partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub kind: StageKind,
    /// Indexes (in [`BatchPlan::stages`]) of the stages this one reads from.
    pub parents: Vec<usize>,
}

/// The stages one batch runs, parents first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPlan {
    pub batch: BatchInfo,
    pub partitions: usize,
    pub stages: Vec<Stage>,
}

impl BatchPlan {
    /// The materializers (window buffers, keyed state) that run in this batch, in order.
    pub fn materializers(&self) -> Vec<usize> {
        self.stages
            .iter()
            .filter_map(|s| match s.kind {
                StageKind::Materialize(m) => Some(m),
                _ => None,
            })
            .collect()
    }
}

/// The whole job as data: streams, shuffles, materializers and outputs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobGraph {
    pub partitions: usize,
    pub nodes: Vec<NodeMeta>,
    /// Map sides of shuffles, by [`ShuffleId`].
    pub shuffles: Vec<RootMeta>,
    pub materializers: Vec<RootMeta>,
    pub outputs: Vec<RootMeta>,
    /// How many computations read each node; a node read more than once is computed once per
    /// batch and shared.
    pub consumers: Vec<usize>,
}

impl JobGraph {
    /// The stages to run for `batch`.
    pub fn plan(&self, batch: BatchInfo) -> BatchPlan {
        let mut planner = Planner {
            graph: self,
            batch,
            stages: Vec::new(),
        };
        for (i, m) in self.materializers.iter().enumerate() {
            if batch.is_multiple_of(m.slide_ms) {
                planner.stage(StageKind::Materialize(i));
            }
        }
        for (i, o) in self.outputs.iter().enumerate() {
            if batch.is_multiple_of(o.slide_ms) {
                planner.stage(StageKind::Output(i));
            }
        }
        BatchPlan {
            batch,
            partitions: self.partitions,
            stages: planner.stages,
        }
    }

    /// Whether the map side of some shuffle reads a buffer or state (directly or through
    /// narrow dependencies): its blocks then depend on state kept across batches.
    pub fn shuffles_read_state(&self) -> bool {
        fn reads_state(graph: &JobGraph, deps: &[Dep], depth: usize) -> bool {
            depth > graph.nodes.len()
                || deps.iter().any(|d| match *d {
                    Dep::Materialized(_) => true,
                    Dep::Narrow(n) => graph
                        .nodes
                        .get(n)
                        .is_some_and(|node| reads_state(graph, &node.deps, depth + 1)),
                    Dep::Shuffle(_) | Dep::Source(_) => false,
                })
        }
        self.shuffles.iter().any(|s| reads_state(self, &s.deps, 0))
    }

    /// For each shuffle, whether its reduce side is read by the map side of another shuffle
    /// (directly or through narrow dependencies).
    pub fn shuffles_feeding_shuffles(&self) -> Vec<bool> {
        fn read(graph: &JobGraph, deps: &[Dep], depth: usize, out: &mut Vec<bool>) {
            if depth > graph.nodes.len() {
                return;
            }
            for d in deps {
                match *d {
                    Dep::Shuffle(s) => {
                        if let Some(f) = out.get_mut(s) {
                            *f = true;
                        }
                    }
                    Dep::Narrow(n) => {
                        if let Some(node) = graph.nodes.get(n) {
                            read(graph, &node.deps, depth + 1, out);
                        }
                    }
                    Dep::Materialized(_) | Dep::Source(_) => {}
                }
            }
        }
        let mut feeding = vec![false; self.shuffles.len()];
        for s in &self.shuffles {
            read(self, &s.deps, 0, &mut feeding);
        }
        feeding
    }

    fn root(&self, kind: StageKind) -> &RootMeta {
        match kind {
            StageKind::ShuffleMap(s) => &self.shuffles[s],
            StageKind::Materialize(m) => &self.materializers[m],
            StageKind::Output(o) => &self.outputs[o],
        }
    }
}

struct Planner<'g> {
    graph: &'g JobGraph,
    batch: BatchInfo,
    stages: Vec<Stage>,
}

impl Planner<'_> {
    /// Adds `kind` (after its parents) unless already planned; returns its index.
    fn stage(&mut self, kind: StageKind) -> usize {
        if let Some(i) = self.stages.iter().position(|s| s.kind == kind) {
            return i;
        }
        let mut parents = Vec::new();
        let deps = self.graph.root(kind).deps.clone();
        self.collect(&deps, &mut parents);
        parents.sort_unstable();
        parents.dedup();
        self.stages.push(Stage { kind, parents });
        self.stages.len() - 1
    }

    fn collect(&mut self, deps: &[Dep], parents: &mut Vec<usize>) {
        for dep in deps {
            match *dep {
                Dep::Narrow(n) => {
                    let deps = self.graph.nodes[n].deps.clone();
                    self.collect(&deps, parents);
                }
                Dep::Shuffle(s) => parents.push(self.stage(StageKind::ShuffleMap(s))),
                Dep::Materialized(m) => {
                    // A buffer read at a batch where it does not update is read as it stands.
                    if self
                        .batch
                        .is_multiple_of(self.graph.materializers[m].slide_ms)
                    {
                        parents.push(self.stage(StageKind::Materialize(m)));
                    }
                }
                Dep::Source(_) => {}
            }
        }
    }
}

impl fmt::Display for BatchPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.stages.iter().enumerate() {
            writeln!(
                f,
                "stage {i}: {:?} after {:?} x{} partitions",
                s.kind, s.parents, self.partitions
            )?;
        }
        Ok(())
    }
}
