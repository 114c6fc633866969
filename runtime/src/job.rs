//! A built job: the frozen graph, its tasks, sources and state, able to run one batch at a time.
//! The [`coordinator`](crate::coordinator) decides which batches run when, and checkpoints them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde_json::Value as Json;

use crate::checkpoint::{SavedState, Snapshot, StateLayout};
use crate::coordinator::rate::Backpressure;
use sluice_crds::OnRecordError;

use crate::dstream::tracked::EncodedDelta;
use crate::error::{Error, Result};
use crate::exec::{BatchContext, Executor, Outputs, Shared, Task, lock_unpoisoned};
use crate::metrics::{BatchFlow, RuntimeMetrics};
use crate::plan::{JobGraph, StageKind};
use crate::source::ErasedSource;
use crate::time::BatchInfo;

/// Keyed state or buffers kept across batches, saved in checkpoints per partition.
pub(crate) trait Stateful: Send + Sync {
    /// Keys (or buffered records, for a window) the partition holds, for the metrics.
    fn entries(&self, part: usize) -> usize;
    /// The partition's whole state, serialized. A state that records its changes counts them
    /// from here.
    fn snapshot(&self, part: usize) -> Result<Vec<u8>>;
    /// Whether the state records its changes, so that its snapshots can be deltas; one that
    /// does not is always written whole.
    fn records_changes(&self) -> bool {
        false
    }
    /// The partition's changes since its last snapshot and the next stripe of its whole
    /// state, serialized: what the batches did not write ahead, added to what they did (see
    /// [`crate::dstream::tracked`]); changes count from here afterwards.
    fn delta(&self, part: usize) -> Result<EncodedDelta> {
        Err(Error::Internal(format!(
            "a delta of partition {part} of a state that records no changes"
        )))
    }
    /// Replaces the partition's state with a snapshot's: its chain, the whole state of a
    /// snapshot and then the delta of each one after it, oldest first. Empty: no state.
    fn restore(&self, part: usize, chain: &[Vec<u8>]) -> Result<()>;
    /// Replaces the partition's state with its share of a snapshot taken with another number
    /// of partitions (`olds`, the chain of each old partition): the keys that now hash to
    /// `part` of `partitions`.
    fn reshard(&self, part: usize, olds: &[&[Vec<u8>]], partitions: usize) -> Result<()>;
}

/// The whole state in a chain that a state recording no changes reads: it never wrote a delta.
pub(crate) fn whole_only<'a>(chain: &'a [Vec<u8>], what: &str) -> Result<Option<&'a [u8]>> {
    match chain {
        [] => Ok(None),
        [whole] => Ok(Some(whole)),
        _ => Err(Error::Checkpoint(format!(
            "{what} has deltas in its snapshot, and this state writes whole snapshots only"
        ))),
    }
}

/// Where the changes the states record count from, for the next snapshot to be a delta on.
#[derive(Clone, Debug, Default)]
struct DeltaBase {
    /// The snapshot they count from (the last one taken, or the one restored); `None`: the
    /// next snapshot is whole.
    batch: Option<u64>,
    /// By (operation, partition), for those whose last snapshot was a delta: what recovery
    /// reads to rebuild it.
    chains: BTreeMap<(usize, usize), Chain>,
}

impl DeltaBase {
    /// Counting from the whole snapshot of `batch`.
    fn at(batch: u64) -> Self {
        Self {
            batch: Some(batch),
            ..Self::default()
        }
    }
}

/// Where a partition's chain of deltas starts (see [`crate::dstream::tracked`]).
#[derive(Clone, Copy, Debug, Default)]
struct Chain {
    /// The first snapshot of the last completed stripe cycle, where recovery starts reading;
    /// `None`: none completed since the last whole state, which recovery starts from.
    from: Option<u64>,
    /// The first snapshot of the stripe cycle under way.
    cycle: Option<u64>,
}

impl Chain {
    /// Adds the delta of `batch`, whose stripe `begins` and `ends` a cycle.
    fn add(&mut self, batch: u64, begins: bool, ends: bool) {
        if begins {
            self.cycle = Some(batch);
        }
        if ends {
            self.from = self.cycle;
        }
    }
}

/// Where a stateful operation's state is found in a snapshot.
enum StateSource {
    /// Under this name, sharded into this many partitions.
    Named(String, usize),
    /// Nowhere: the operation is new, its state starts empty.
    Empty,
}

/// What a [`StreamingContext`](crate::StreamingContext) collects as streams are declared,
/// built into a [`Job`].
#[derive(Default)]
pub(crate) struct Builder {
    pub graph: JobGraph,
    pub interval_ms: u64,
    pub threads: usize,
    pub policy: OnRecordError,
    pub backpressure: Option<Backpressure>,
    pub shuffle_tasks: Vec<Arc<dyn Task>>,
    pub materializer_tasks: Vec<Arc<dyn Task>>,
    pub output_tasks: Vec<Arc<dyn Task>>,
    pub sources: Vec<Box<dyn ErasedSource>>,
    pub stateful: Vec<(String, Arc<dyn Stateful>)>,
    pub problems: Vec<String>,
}

/// What one batch did.
#[derive(Clone, Debug)]
pub struct BatchReport {
    pub batch: BatchInfo,
    /// Records read from all sources.
    pub records: u64,
    /// Records an operation refused (`onRecordError: skip`).
    pub record_errors: u64,
    /// The first refusal messages.
    pub error_samples: Vec<String>,
    /// Wall time to read input and run every stage.
    pub processing: Duration,
    /// Whether the batch was recomputed from the checkpoint log.
    pub replay: bool,
    /// Each stage's label and wall time, in plan order.
    pub stages: Vec<(String, Duration)>,
}

/// A runnable job.
pub struct Job {
    graph: JobGraph,
    executor: Executor,
    sources: Vec<Box<dyn ErasedSource>>,
    stateful: Vec<(String, Arc<dyn Stateful>)>,
    shared: Shared,
    interval_ms: u64,
    next_unpaced: u64,
    backpressure: Option<Backpressure>,
    metrics: Option<Arc<RuntimeMetrics>>,
    /// The manifest the job was compiled from, if it was: a checkpoint records it, and a
    /// changed one is planned against it (see [`sluice_crds::upgrade`]).
    spec: Option<sluice_crds::StreamingJobSpec>,
    /// The manifest step each stateful operation belongs to (by `stateful`'s order): a job
    /// with another spec finds its state by it.
    state_steps: Vec<Option<String>>,
    /// Where the next snapshot's deltas would count from.
    delta_base: Mutex<DeltaBase>,
}

impl Job {
    pub(crate) fn from_builder(b: Builder) -> Result<Self> {
        if !b.problems.is_empty() {
            return Err(Error::Config(b.problems.join("; ")));
        }
        if b.sources.is_empty() {
            return Err(Error::Config("the job has no source".into()));
        }
        if b.graph.outputs.is_empty() {
            return Err(Error::Config(
                "the job has no output: add foreach_batch, print or save_as_text_files".into(),
            ));
        }
        let executor = Executor::new(
            b.threads,
            b.graph.partitions,
            b.shuffle_tasks,
            b.materializer_tasks,
            b.output_tasks,
        )?;
        let shared = Shared {
            consumers: Arc::new(b.graph.consumers.clone()),
            sources: b.sources.len(),
            shuffles: b.graph.shuffles.len(),
            outputs: b.graph.outputs.len(),
            policy: b.policy,
        };
        Ok(Self {
            graph: b.graph,
            executor,
            sources: b.sources,
            stateful: b.stateful,
            shared,
            interval_ms: b.interval_ms,
            next_unpaced: 1,
            backpressure: b.backpressure,
            metrics: None,
            spec: None,
            state_steps: Vec::new(),
            delta_base: Mutex::new(DeltaBase::default()),
        })
    }

    /// Records the manifest the job was compiled from, and the step each stateful operation
    /// belongs to (by the operations' order).
    pub(crate) fn set_manifest(
        &mut self,
        spec: sluice_crds::StreamingJobSpec,
        state_steps: Vec<Option<String>>,
    ) {
        self.spec = Some(spec);
        self.state_steps = state_steps;
    }

    /// The manifest the job was compiled from, if it was.
    pub fn spec(&self) -> Option<&sluice_crds::StreamingJobSpec> {
        self.spec.as_ref()
    }

    /// How this job lays its state out in a snapshot.
    pub(crate) fn state_layout(&self) -> StateLayout {
        StateLayout {
            partitions: self.graph.partitions,
            states: self
                .stateful
                .iter()
                .enumerate()
                .map(|(i, (name, _))| (name.clone(), self.state_steps.get(i).cloned().flatten()))
                .collect(),
        }
    }

    /// Where each stateful operation's state is in `snapshot`: under the same name, or the
    /// name its step's state had when the snapshot was taken by another spec.
    fn state_sources(&self, snapshot: &SavedState) -> Result<Vec<StateSource>> {
        let Some(layout) = &snapshot.layout else {
            return Ok(self
                .stateful
                .iter()
                .map(|(name, _)| StateSource::Named(name.clone(), self.graph.partitions))
                .collect());
        };
        let mut out = Vec::with_capacity(self.stateful.len());
        for (i, (name, _)) in self.stateful.iter().enumerate() {
            let step = self.state_steps.get(i).cloned().flatten();
            let old = match &step {
                // A manifest step: its state is its step's, in the same place among that
                // step's states (a windowed reduce has a buffer and a window).
                Some(id) => {
                    let nth = self.state_steps[..i]
                        .iter()
                        .filter(|s| s.as_deref() == Some(id))
                        .count();
                    layout
                        .states
                        .iter()
                        .filter(|(_, s)| s.as_deref() == Some(id))
                        .nth(nth)
                        .map(|(n, _)| n.clone())
                }
                None => layout
                    .states
                    .iter()
                    .any(|(n, _)| n == name)
                    .then(|| name.clone()),
            };
            out.push(match (old, step) {
                (Some(old), _) => StateSource::Named(old, layout.partitions),
                // A step the snapshot's spec did not have (the upgrade plan said so).
                (None, Some(_)) => StateSource::Empty,
                (None, None) => {
                    return Err(Error::Checkpoint(format!(
                        "the snapshot of batch {} has no state for {name}",
                        snapshot.batch
                    )));
                }
            });
        }
        Ok(out)
    }

    /// Reports what each batch moves (and snapshot sizes) to `metrics`.
    pub(crate) fn set_metrics(&mut self, metrics: Arc<RuntimeMetrics>) {
        self.metrics = Some(metrics);
    }

    /// Reports what a batch moved in this process, once its last stage ran.
    fn observe(&self, cx: &BatchContext) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let flow = cx.flow();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let owned = cx.owned_partitions();
        metrics.flow(&BatchFlow {
            sources: self
                .sources
                .iter()
                .zip(flow.source_records.iter().zip(&flow.source_bytes))
                .map(|(s, (records, bytes))| {
                    let bytes = s.bytes_read().map(|_| load(bytes));
                    (s.name().to_string(), load(records), bytes)
                })
                .collect(),
            sinks: self
                .graph
                .outputs
                .iter()
                .zip(&flow.output_records)
                .enumerate()
                .map(|(i, (o, records))| (format!("{i}:{}", o.name), load(records)))
                .collect(),
            shuffle_bytes_sent: load(&flow.shuffle_bytes_sent),
            shuffle_bytes_received: load(&flow.shuffle_bytes_received),
            state_entries: self
                .stateful
                .iter()
                .map(|(name, state)| {
                    let entries: usize = owned.iter().map(|p| state.entries(*p)).sum();
                    (name.clone(), entries as u64)
                })
                .collect(),
            partitions_owned: owned.len(),
        });
    }

    /// The job graph as data.
    pub fn graph(&self) -> &JobGraph {
        &self.graph
    }

    /// The batch interval in milliseconds.
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// Partitions per batch.
    pub fn partitions(&self) -> usize {
        self.graph.partitions
    }

    /// Names of the sources, in order.
    pub fn source_names(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.name().to_string()).collect()
    }

    /// Names of the sources that cannot replay their input after a restart.
    pub fn non_replayable_sources(&self) -> Vec<String> {
        self.sources
            .iter()
            .filter(|s| !s.replayable())
            .map(|s| s.name().to_string())
            .collect()
    }

    /// Runs the next `n` batches back to back, without a clock or checkpoints; for tests and
    /// examples. Batch times start at 0.
    pub fn run_batches(&mut self, n: u64) -> Result<Vec<BatchReport>> {
        if self.next_unpaced == 1 {
            self.start_sources()?;
        }
        let mut reports = Vec::new();
        for _ in 0..n {
            let batch = BatchInfo::new(0, self.interval_ms, self.next_unpaced);
            let (mut ranges, _) = self.plan_inputs(&batch)?;
            let logged = self
                .log_inputs(&batch, 0, &mut ranges)?
                .into_iter()
                .map(|(name, (_, bytes))| (name, bytes))
                .collect();
            reports.push(self.execute(batch, &ranges, &logged, false, None)?);
            self.outputs().sync()?;
            self.next_unpaced += 1;
        }
        Ok(reports)
    }

    pub(crate) fn start_sources(&mut self) -> Result<()> {
        self.sources.iter_mut().try_for_each(|s| s.on_start())
    }

    pub(crate) fn close_sources(&mut self) {
        self.sources.iter_mut().for_each(|s| s.on_close());
    }

    /// Asks every source for its part of `batch`: (ranges, positions after) by source name.
    pub(crate) fn plan_inputs(
        &mut self,
        batch: &BatchInfo,
    ) -> Result<(BTreeMap<String, Json>, BTreeMap<String, Json>)> {
        let mut ranges = BTreeMap::new();
        for s in &mut self.sources {
            ranges.insert(s.name().to_string(), s.plan(batch)?);
        }
        Ok((ranges, self.positions()))
    }

    /// Moves the records of sources that cannot replay into write-ahead-log entries: their
    /// ranges get `"wal": KEY`; returns, by source, the key and the bytes to write before
    /// the batch is logged.
    pub(crate) fn log_inputs(
        &mut self,
        batch: &BatchInfo,
        epoch: u64,
        ranges: &mut BTreeMap<String, Json>,
    ) -> Result<BTreeMap<String, (String, Vec<u8>)>> {
        let mut logs = BTreeMap::new();
        for s in &mut self.sources {
            let name = s.name().to_string();
            let Some(range) = ranges.get(&name) else {
                continue;
            };
            if let Some(bytes) = s.log_bytes(range)? {
                // A key of this epoch's own: a replaced master still running cannot
                // overwrite the records its successor logged for the same batch.
                let key = format!("wal/{:020}/{name}.{epoch}.bin", batch.index);
                // The range as planned (its refusals are counted again on a replay), plus
                // where its records went.
                let mut logged = range.clone();
                logged["wal"] = serde_json::json!(key);
                ranges.insert(name.clone(), logged);
                logs.insert(name, (key, bytes));
            }
        }
        Ok(logs)
    }

    /// Records waiting past the last planned batch, by each source that can count them.
    pub(crate) fn backlogs(&self) -> BTreeMap<String, u64> {
        self.sources
            .iter()
            .filter_map(|s| Some((s.name().to_string(), s.backlog()?)))
            .collect()
    }

    pub(crate) fn positions(&self) -> BTreeMap<String, Json> {
        self.sources
            .iter()
            .map(|s| (s.name().to_string(), s.position()))
            .collect()
    }

    pub(crate) fn seek(&mut self, positions: &BTreeMap<String, Json>) -> Result<()> {
        for s in &mut self.sources {
            if let Some(p) = positions.get(s.name()) {
                // Positions come from the offset log, and a source only parses one: one it
                // cannot read is damage no retry repairs (it used to retry for ever).
                s.seek(p).map_err(|e| {
                    Error::Checkpoint(format!(
                        "the offset log's position of source {} cannot be used: {e}",
                        s.name()
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// Starts a batch on this worker: a context for its partitions, with their input read.
    /// With `redo`, a replay that recomputes the reduce side of those partitions only.
    pub(crate) fn begin(
        &mut self,
        batch: BatchInfo,
        ranges: &BTreeMap<String, Json>,
        logged: &BTreeMap<String, Vec<u8>>,
        replay: bool,
        placement: Arc<crate::exec::Placement>,
        redo: Option<&[usize]>,
    ) -> Result<BatchContext> {
        let mut cx = BatchContext::new(batch, self.graph.partitions, replay, &self.shared)
            .with_placement(placement);
        if let Some(parts) = redo {
            cx = cx.with_redo(self.redo(parts));
        }
        self.read_sources(&cx, ranges, logged, |name| {
            Error::Internal(format!(
                "batch {} has no range for source {name}",
                batch.index
            ))
        })?;
        Ok(cx)
    }

    /// Reads every source's range of the batch into `cx`, on the task threads: a source that
    /// reads in parallel (files, the generator) takes the job's threads, no more. `missing`
    /// is the error for a source without a range.
    fn read_sources(
        &mut self,
        cx: &BatchContext,
        ranges: &BTreeMap<String, Json>,
        logged: &BTreeMap<String, Vec<u8>>,
        missing: impl Fn(&str) -> Error + Sync,
    ) -> Result<()> {
        let sources = &mut self.sources;
        self.executor.install(|| {
            for (i, s) in sources.iter_mut().enumerate() {
                let range = ranges.get(s.name()).ok_or_else(|| missing(s.name()))?;
                s.read_into(cx, i, range, logged.get(s.name()).map(Vec::as_slice))?;
            }
            Ok(())
        })
    }

    /// Recomputing `parts` only (see [`crate::exec::Redo`]).
    fn redo(&self, parts: &[usize]) -> Arc<crate::exec::Redo> {
        let mut marked = vec![false; self.graph.partitions];
        for &p in parts {
            if let Some(m) = marked.get_mut(p) {
                *m = true;
            }
        }
        let feeding = self.graph.shuffles_feeding_shuffles();
        Arc::new(crate::exec::Redo {
            parts: marked,
            shuffles: feeding.iter().map(|f| !f).collect(),
        })
    }

    /// Brings the state of `parts` (owned here) up to `batch` from the batch's state log:
    /// the stateful operations take their logged inputs; nothing is read or shuffled, and no
    /// output runs.
    pub(crate) fn apply_state_log(
        &self,
        batch: BatchInfo,
        placement: Arc<crate::exec::Placement>,
        parts: &[usize],
        inputs: crate::exec::StateInputs,
    ) -> Result<()> {
        let cx = BatchContext::new(batch, self.graph.partitions, true, &self.shared)
            .with_placement(placement)
            .with_redo(self.redo(parts))
            .with_logged_state(inputs);
        let plan = self.graph.plan(batch);
        self.executor.run_materializers(&plan, &cx)
    }

    /// Runs stage `index` of the batch's plan over the partitions this worker owns.
    /// After the last stage, reports what the batch moved here to the metrics.
    pub(crate) fn run_stage(&self, cx: &BatchContext, index: usize) -> Result<()> {
        let plan = self.graph.plan(cx.batch);
        self.executor.run_stage(&plan, index, cx)?;
        if index + 1 == plan.stages.len() {
            self.observe(cx);
        }
        Ok(())
    }

    /// Reads the batch's input and runs its plan.
    pub(crate) fn execute(
        &mut self,
        batch: BatchInfo,
        ranges: &BTreeMap<String, Json>,
        logged: &BTreeMap<String, Vec<u8>>,
        replay: bool,
        before_outputs: Option<&(dyn Fn() -> Result<()> + Sync)>,
    ) -> Result<BatchReport> {
        let started = Instant::now();
        let cx = BatchContext::new(batch, self.graph.partitions, replay, &self.shared);
        self.read_sources(&cx, ranges, logged, |name| {
            Error::Checkpoint(format!(
                "batch {} has no logged range for source {name}",
                batch.index
            ))
        })?;
        let plan = self.graph.plan(batch);
        let mut stages = Vec::with_capacity(plan.stages.len() + 1);
        stages.push(("input".to_string(), started.elapsed()));
        let mut before_outputs = before_outputs;
        for (i, stage) in plan.stages.iter().enumerate() {
            let started = Instant::now();
            if matches!(stage.kind, StageKind::Output(_))
                && let Some(wait) = before_outputs.take()
            {
                wait()?;
            }
            self.executor.run_stage(&plan, i, &cx)?;
            stages.push((stage.kind.label(), started.elapsed()));
        }
        self.observe(&cx);
        Ok(BatchReport {
            batch,
            records: cx.input_records(),
            record_errors: cx.errors().count(),
            error_samples: cx.errors().samples(),
            processing: started.elapsed(),
            replay,
            stages,
        })
    }

    /// The names of the stateful operations, as their state is keyed in snapshots.
    pub(crate) fn stateful_names(&self) -> Vec<&str> {
        self.stateful
            .iter()
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// The whole state of every stateful operation, for a checkpoint after `batch`.
    #[cfg(test)]
    pub(crate) fn snapshot(&self, batch: u64) -> Result<Snapshot> {
        self.snapshot_of(batch, &(0..self.graph.partitions).collect::<Vec<_>>())
    }

    /// The whole state of the given partitions, for a checkpoint after `batch`.
    pub(crate) fn snapshot_of(&self, batch: u64, parts: &[usize]) -> Result<Snapshot> {
        let (snapshot, _) = self.encode_snapshot(batch, parts, None)?;
        *lock_unpoisoned(&self.delta_base) = if parts.len() == self.graph.partitions {
            DeltaBase::at(batch)
        } else {
            DeltaBase::default()
        };
        Ok(snapshot)
    }

    /// The state of every stateful operation for a checkpoint after `batch`: as deltas on the
    /// snapshot taken before (for the states that record their changes), or whole. The caller
    /// writes it, and after a failed write restores from a written snapshot (which sets where
    /// the next delta counts from) before it takes another.
    ///
    /// A partition's state is written whole once, then as deltas, each carrying a stripe of
    /// the whole state (see [`crate::dstream::tracked`]): recovery reads a chain of deltas from
    /// the start of the last completed stripe cycle, never longer than two cycles, and no
    /// snapshot after the first encodes a whole state. The batch a snapshot is taken at waits
    /// for its encoding, and a whole state costs a read of every key.
    pub(crate) fn next_snapshot(&self, batch: u64) -> Result<Snapshot> {
        let parts: Vec<usize> = (0..self.graph.partitions).collect();
        let mut base = lock_unpoisoned(&self.delta_base);
        let Some(on) = base.batch else {
            let (snapshot, _) = self.encode_snapshot(batch, &parts, None)?;
            *base = DeltaBase::at(batch);
            return Ok(snapshot);
        };
        let as_delta: std::collections::BTreeSet<(usize, usize)> = (self.stateful.iter())
            .enumerate()
            .filter(|(_, (_, state))| state.records_changes())
            .flat_map(|(op, _)| parts.iter().map(move |&part| (op, part)))
            .collect();
        let (mut snapshot, stripes) = self.encode_snapshot(batch, &parts, Some((on, &as_delta)))?;
        let mut chains = BTreeMap::new();
        for (key @ (op, part), (begins, ends)) in stripes {
            let mut chain = base.chains.get(&key).copied().unwrap_or_default();
            chain.add(batch, begins, ends);
            if let Some(from) = chain.from {
                snapshot
                    .from
                    .insert((self.stateful[op].0.clone(), part), from);
            }
            chains.insert(key, chain);
        }
        *base = DeltaBase {
            batch: Some(batch),
            chains,
        };
        Ok(snapshot)
    }

    /// Encodes the state of `parts`: whole, or with `delta`, the (operation, partition) pairs
    /// it names as deltas on its snapshot. Returns the snapshot and, for each delta, whether
    /// its stripe begins and ends a cycle.
    #[allow(clippy::type_complexity)]
    fn encode_snapshot(
        &self,
        batch: u64,
        parts: &[usize],
        delta: Option<(u64, &std::collections::BTreeSet<(usize, usize)>)>,
    ) -> Result<(Snapshot, Vec<((usize, usize), (bool, bool))>)> {
        let mut snapshot = Snapshot {
            batch,
            layout: Some(self.state_layout()),
            base: delta.map(|(on, _)| on),
            ..Snapshot::default()
        };
        // Every partition of every operation at once, on the task threads: the loop waits
        // for the encoding, so it takes all the cores the batches take.
        let stateful = &self.stateful;
        // Each part: its delta's stripe (whether it begins and ends a cycle), its bytes, and
        // the whole state's size (or about, for a delta).
        type Encoded = ((usize, usize), Option<(bool, bool)>, Vec<u8>, u64);
        let encoded: Vec<Encoded> = self.executor.install(|| {
            let pairs: Vec<(usize, usize)> = (0..stateful.len())
                .flat_map(|op| parts.iter().map(move |&part| (op, part)))
                .collect();
            pairs
                .into_par_iter()
                .map(|(op, part)| {
                    let state = &stateful[op].1;
                    if delta.is_some_and(|(_, pairs)| pairs.contains(&(op, part))) {
                        let d = state.delta(part)?;
                        Ok(((op, part), Some((d.begins, d.ends)), d.bytes, d.whole_bytes))
                    } else {
                        let whole = state.snapshot(part)?;
                        let size = whole.len() as u64;
                        Ok(((op, part), None, whole, size))
                    }
                })
                .collect::<Result<_>>()
        })?;
        let mut bytes = vec![0u64; self.stateful.len()];
        let mut stripes = Vec::new();
        for ((op, part), stripe, state, size) in encoded {
            bytes[op] += size;
            let key = (self.stateful[op].0.clone(), part);
            if let Some(stripe) = stripe {
                snapshot.deltas.insert(key.clone());
                stripes.push(((op, part), stripe));
            }
            snapshot.parts.insert(key, state);
        }
        if let Some(m) = &self.metrics {
            // The gauge shows the whole state's size, estimated from the stripes of deltas.
            for ((name, _), bytes) in self.stateful.iter().zip(bytes) {
                m.state_bytes(name, bytes);
            }
        }
        Ok((snapshot, stripes))
    }

    /// Replaces all state with a snapshot's (or empties it).
    pub(crate) fn restore(&self, snapshot: Option<&SavedState>) -> Result<()> {
        self.restore_owned(snapshot, &|_| true)?;
        // The state is now the snapshot's exactly (same partitions and names, nothing
        // re-sharded), so the next snapshot can be a delta on it.
        let layout = self.state_layout();
        *lock_unpoisoned(&self.delta_base) = match snapshot {
            Some(saved) if saved.layout.as_ref().is_none_or(|l| *l == layout) => {
                // A chain that starts at a stripe cycle goes on from there; the next cycle
                // starts afresh (a state restored has its stripe cursor at the start).
                let mut chains = BTreeMap::new();
                for ((name, part), &from) in &saved.from {
                    if let Some(op) = self.stateful.iter().position(|(n, _)| n == name) {
                        let chain = Chain {
                            from: Some(from),
                            ..Chain::default()
                        };
                        chains.insert((op, *part), chain);
                    }
                }
                DeltaBase {
                    batch: Some(saved.batch),
                    chains,
                }
            }
            _ => DeltaBase::default(),
        };
        Ok(())
    }

    /// Loads the owned partitions' state from a snapshot (or empties it) and empties the rest.
    pub(crate) fn restore_owned(
        &self,
        snapshot: Option<&SavedState>,
        owned: &dyn Fn(usize) -> bool,
    ) -> Result<()> {
        *lock_unpoisoned(&self.delta_base) = DeltaBase::default();
        let sources = self.sources_in(snapshot)?;
        for part in 0..self.graph.partitions {
            if owned(part) {
                self.restore_partition(snapshot, &sources, part)?;
            } else {
                for (_, state) in &self.stateful {
                    state.restore(part, &[])?;
                }
                self.executor.set_applied(part, 0);
            }
        }
        Ok(())
    }

    /// Loads the state of `parts` from a snapshot (or empties it), leaving every other
    /// partition as it is: the partitions of a lost worker, on their new owners.
    pub(crate) fn restore_partitions(
        &self,
        snapshot: Option<&SavedState>,
        parts: &[usize],
    ) -> Result<()> {
        *lock_unpoisoned(&self.delta_base) = DeltaBase::default();
        let sources = self.sources_in(snapshot)?;
        for &part in parts {
            if part >= self.graph.partitions {
                return Err(Error::Internal(format!(
                    "partition {part} of {} to restore",
                    self.graph.partitions
                )));
            }
            self.restore_partition(snapshot, &sources, part)?;
        }
        Ok(())
    }

    /// Where each stateful operation's state is in `snapshot` (nothing without one): worked
    /// out once per restore, not per partition.
    fn sources_in(&self, snapshot: Option<&SavedState>) -> Result<Vec<StateSource>> {
        snapshot.map_or(Ok(Vec::new()), |s| self.state_sources(s))
    }

    fn restore_partition(
        &self,
        snapshot: Option<&SavedState>,
        sources: &[StateSource],
        part: usize,
    ) -> Result<()> {
        let Some(snapshot) = snapshot else {
            for (_, state) in &self.stateful {
                state.restore(part, &[])?;
            }
            self.executor.set_applied(part, 0);
            return Ok(());
        };
        let missing = |name: &str, p: usize| {
            Error::Checkpoint(format!(
                "the snapshot of batch {} has no state for {name} partition {p}",
                snapshot.batch
            ))
        };
        for ((_, state), source) in self.stateful.iter().zip(sources) {
            match source {
                StateSource::Empty => state.restore(part, &[])?,
                StateSource::Named(old, parts) if *parts == self.graph.partitions => {
                    let chain = snapshot
                        .parts
                        .get(&(old.clone(), part))
                        .ok_or_else(|| missing(old, part))?;
                    state.restore(part, chain)?;
                }
                StateSource::Named(old, parts) => {
                    let olds = (0..*parts)
                        .map(|p| {
                            snapshot
                                .parts
                                .get(&(old.clone(), p))
                                .map(Vec::as_slice)
                                .ok_or_else(|| missing(old, p))
                        })
                        .collect::<Result<Vec<&[Vec<u8>]>>>()?;
                    state.reshard(part, &olds, self.graph.partitions)?;
                }
            }
        }
        self.executor.set_applied(part, snapshot.batch);
        Ok(())
    }

    /// Whether a partition's batches can be recomputed alone, from the logged input and its
    /// own state: no shuffle reads state, so the other partitions' map side does not depend on
    /// the state they hold now.
    pub(crate) fn recomputable_by_partition(&self) -> bool {
        !self.graph.shuffles_read_state()
    }

    /// The rate controller's settings, when it is on.
    pub fn backpressure(&self) -> Option<Backpressure> {
        self.backpressure
    }

    /// Whether a source bounds its batches by the rate controller's figure.
    pub(crate) fn has_rate_limited_sources(&self) -> bool {
        self.sources.iter().any(|s| s.rate_limited())
    }

    /// Bounds the next batches at `rate` records per second, shared by the sources that can
    /// bound a batch; `None` lifts the bound.
    pub(crate) fn limit_rate(&mut self, rate: Option<f64>) {
        let bounded = self.sources.iter().filter(|s| s.rate_limited()).count();
        for s in self.sources.iter_mut().filter(|s| s.rate_limited()) {
            s.limit_rate(rate.map(|r| r / bounded as f64));
        }
    }

    /// The outputs, to sync before batches are marked complete.
    pub(crate) fn outputs(&self) -> Outputs {
        Outputs::new(&self.executor.outputs)
    }

    pub(crate) fn on_commit(&mut self, batch: &BatchInfo) {
        self.sources.iter_mut().for_each(|s| s.on_commit(batch));
    }

    pub(crate) fn on_checkpoint(&mut self, batch: &BatchInfo) {
        self.sources.iter_mut().for_each(|s| s.on_checkpoint(batch));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Placement;
    use crate::source::QueueSource;
    use crate::{StreamingConfig, StreamingContext};

    /// A job keeping running totals, a window over them and an incremental window, fed one
    /// queue batch per batch.
    fn stateful_job(batches: &[Vec<(String, i64)>]) -> Result<Job> {
        let c = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(2));
        let q = QueueSource::new("q");
        for b in batches {
            q.push(b.clone());
        }
        let pairs = c.source(q);
        let totals = pairs.update_state_by_key(|v: Vec<i64>, s: Option<i64>| {
            Some(s.unwrap_or(0) + v.iter().sum::<i64>())
        });
        totals
            .window(Duration::from_secs(2), Duration::from_secs(1))
            .collect_batches();
        pairs
            .reduce_by_key_and_window_inv(
                |a, b| a + b,
                |a, b| a - b,
                Duration::from_secs(3),
                Duration::from_secs(1),
                None,
            )
            .collect_batches();
        c.build()
    }

    /// A `map_with_state` job whose keys come and go: a key leaves when its total reaches a
    /// multiple of 5, or after 20 batches without records.
    fn churning_job(batches: &[Vec<(String, i64)>]) -> Result<Job> {
        use crate::dstream::{State, StateSpec};
        let c = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(2));
        let q = QueueSource::new("q");
        for b in batches {
            q.push(b.clone());
        }
        let spec = StateSpec::function(
            |_, _: &String, value: Option<i64>, total: &mut State<i64>| {
                let n = total.get().copied().unwrap_or(0) + value.unwrap_or(0);
                if n % 5 == 0 {
                    total.remove();
                } else {
                    total.update(n);
                }
                None::<i64>
            },
        )
        .timeout(Duration::from_secs(20));
        c.source(q).map_with_state(spec).snapshots.collect_batches();
        c.build()
    }

    /// Snapshots taken as deltas on the ones before read back, through their chain, as the
    /// state each partition held, entries and order alike: from the whole snapshot at first,
    /// then from the start of a completed stripe cycle.
    #[test]
    fn delta_snapshots_restore_the_state_in_its_order() -> Result<()> {
        // 300 keys at first, then 15 records a batch: some keys leave (a multiple of 5),
        // come back, and from batch 21 on the untouched ones time out.
        let input: Vec<Vec<(String, i64)>> = (1..=40u64)
            .map(|b| {
                if b == 1 {
                    return (0..300).map(|i| (format!("k{i}"), 1)).collect();
                }
                (0..15u64)
                    .map(|i| {
                        (
                            format!("k{}", (i * 37 + b * b * 11) % 300),
                            (i % 3) as i64 + 1,
                        )
                    })
                    .collect()
            })
            .collect();
        let ckpt = crate::checkpoint::Checkpointer::new(
            Box::new(crate::checkpoint::MemoryStore::default()),
            2,
            100,
        );
        let mut job = churning_job(&input)?;
        // The same batches without snapshots, whose whole state is the reference.
        let mut reference = churning_job(&input)?;
        let mut kinds = Vec::new();
        let mut from_cycles = Vec::new();
        for batch in 1..=40 {
            job.run_batches(1)?;
            reference.run_batches(1)?;
            if batch % 2 != 0 {
                continue;
            }
            let snapshot = job.next_snapshot(batch)?;
            kinds.push(match snapshot.deltas.len() {
                0 => 'W',
                n if n == snapshot.parts.len() => 'D',
                _ => 'M',
            });
            ckpt.write_snapshot(&snapshot)?;
            let saved = ckpt.snapshot_at(batch)?;
            assert!(
                saved.depth < 2 * crate::dstream::tracked::STRIPES,
                "batch {batch}: a chain of {}",
                saved.depth
            );
            if !saved.from.is_empty() {
                from_cycles.push(batch);
            }
            let restored = churning_job(&[])?;
            restored.restore(Some(&saved))?;
            assert_eq!(
                restored.snapshot(batch)?.parts,
                reference.snapshot(batch)?.parts,
                "batch {batch}, snapshots {kinds:?}"
            );
        }
        let kinds: String = kinds.into_iter().collect();
        // Whole once; then deltas, never whole again (each delta carries a stripe of the
        // whole state), and read back from a completed stripe cycle once one completed.
        assert!(kinds.starts_with("WD"), "{kinds}");
        assert!(!kinds[1..].contains('W'), "all whole again: {kinds}");
        assert!(kinds.contains("DDDD"), "{kinds}");
        assert!(
            from_cycles.len() >= 4,
            "chains from a cycle at {from_cycles:?}"
        );
        Ok(())
    }

    /// A lost partition's new owner applies the logged inputs of its stateful operations
    /// instead of recomputing the batches: the state comes out the same, with no input read.
    #[test]
    fn the_state_log_rebuilds_state_without_the_input() -> Result<()> {
        let input: Vec<Vec<(String, i64)>> = (1..=4)
            .map(|b| {
                (0..20)
                    .map(|i| (format!("k{}", (i * b) % 7), i64::from(i + b)))
                    .collect()
            })
            .collect();
        let placement = Arc::new(Placement {
            owners: vec![0, 0],
            me: 0,
        });
        // The uninterrupted run, recording each batch's state inputs.
        let mut whole = stateful_job(&input)?;
        whole.start_sources()?;
        let mut logs = Vec::new();
        for index in 1..=4 {
            let batch = BatchInfo::new(0, 1000, index);
            let (ranges, _) = whole.plan_inputs(&batch)?;
            let cx = whole
                .begin(
                    batch,
                    &ranges,
                    &BTreeMap::new(),
                    false,
                    placement.clone(),
                    None,
                )?
                .recording_state_inputs();
            let mut inputs = crate::exec::StateInputs::new();
            for stage in 0..whole.graph().plan(batch).stages.len() {
                whole.run_stage(&cx, stage)?;
                inputs.extend(cx.take_state_inputs());
            }
            let materializers = whole.graph().plan(batch).materializers();
            assert!(!materializers.is_empty());
            for m in materializers {
                for p in 0..2 {
                    assert!(
                        inputs.contains_key(&(m, p)),
                        "batch {index}: no input of {m}/{p}"
                    );
                }
            }
            logs.push((batch, inputs));
        }
        // Rebuilt: batch 1 run, batches 2 to 4 from the log alone (its queue holds batch 1).
        let mut rebuilt = stateful_job(&input[..1])?;
        rebuilt.start_sources()?;
        let first = BatchInfo::new(0, 1000, 1);
        let (ranges, _) = rebuilt.plan_inputs(&first)?;
        let cx = rebuilt.begin(
            first,
            &ranges,
            &BTreeMap::new(),
            false,
            placement.clone(),
            None,
        )?;
        for stage in 0..rebuilt.graph().plan(first).stages.len() {
            rebuilt.run_stage(&cx, stage)?;
        }
        for (batch, inputs) in logs.into_iter().skip(1) {
            rebuilt.apply_state_log(batch, placement.clone(), &[0, 1], inputs)?;
        }
        assert_eq!(rebuilt.snapshot(4)?, whole.snapshot(4)?);
        assert_ne!(
            rebuilt.snapshot(4)?,
            stateful_job(&input)?.snapshot(4)?,
            "the state is not empty"
        );
        Ok(())
    }

    /// A new batch's outputs wait for its offset entry (written beside its run), and a batch
    /// whose entry this master did not write writes none.
    #[test]
    fn a_batch_waits_for_its_log_before_its_outputs() -> Result<()> {
        let c = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(2));
        let q = QueueSource::new("q");
        q.push(vec![("a".to_string(), 1i64)]);
        q.push(vec![("b".to_string(), 2i64)]);
        let out = c.source(q).reduce_by_key(|a, b| a + b).collect_batches();
        let mut job = c.build()?;
        job.start_sources()?;
        let mut run = |index, gate: &(dyn Fn() -> Result<()> + Sync)| {
            let batch = BatchInfo::new(0, 1000, index);
            let (ranges, _) = job.plan_inputs(&batch)?;
            job.execute(batch, &ranges, &BTreeMap::new(), false, Some(gate))
        };
        let waited = std::sync::atomic::AtomicBool::new(false);
        let refused = run(1, &|| {
            waited.store(true, std::sync::atomic::Ordering::SeqCst);
            Err(Error::Checkpoint("logged by another master".into()))
        });
        assert!(matches!(refused, Err(Error::Checkpoint(_))));
        assert!(waited.load(std::sync::atomic::Ordering::SeqCst));
        assert!(out.take().is_empty(), "an output written before its log");
        run(2, &|| Ok(()))?;
        let got: Vec<(String, i64)> = out.take().into_iter().flat_map(|(_, r)| r).collect();
        assert_eq!(got, vec![("b".into(), 2)]);
        Ok(())
    }

    /// After a worker loss, the batch in flight runs again on every worker, some of which had
    /// already brought their state up to it before the batch was cut short elsewhere: their
    /// state must take the batch once, and the output come out the same.
    #[test]
    fn a_batch_run_again_changes_state_once() -> Result<()> {
        let c = StreamingContext::new(StreamingConfig::new(Duration::from_secs(1)).parallelism(2));
        let q = QueueSource::new("q");
        q.push(vec![("a".to_string(), 1i64), ("b".to_string(), 2)]);
        let totals = c
            .source(q)
            .update_state_by_key(|v: Vec<i64>, s: Option<i64>| {
                Some(s.unwrap_or(0) + v.iter().sum::<i64>())
            });
        let out = totals.collect_batches();
        let mut job = c.build()?;
        job.start_sources()?;
        let batch = BatchInfo::new(0, 1000, 1);
        let (mut ranges, _) = job.plan_inputs(&batch)?;
        let logged: BTreeMap<String, Vec<u8>> = job
            .log_inputs(&batch, 0, &mut ranges)?
            .into_iter()
            .map(|(name, (_, bytes))| (name, bytes))
            .collect();
        let placement = Arc::new(Placement {
            owners: vec![0, 0],
            me: 0,
        });
        let stages = job.graph().plan(batch).stages.len();
        // Cut short before its output stage (the last), as when another worker is lost then.
        let cx = job.begin(batch, &ranges, &logged, false, placement.clone(), None)?;
        for stage in 0..stages - 1 {
            job.run_stage(&cx, stage)?;
        }
        let again = job.begin(batch, &ranges, &logged, true, placement, None)?;
        for stage in 0..stages {
            job.run_stage(&again, stage)?;
        }
        let mut got: Vec<(String, i64)> = out.take().into_iter().flat_map(|(_, r)| r).collect();
        got.sort();
        assert_eq!(got, vec![("a".into(), 1), ("b".into(), 2)]);
        Ok(())
    }
}
