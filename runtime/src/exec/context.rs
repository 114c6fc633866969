//! Everything one batch's tasks share: inputs, shuffle blocks, memoized streams, outputs and
//! the record error count. Dropped when the batch ends, so nothing leaks across batches.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use sluice_crds::OnRecordError;

use crate::error::{Error, Result};
use crate::plan::{NodeId, ShuffleId};
use crate::time::BatchInfo;

type Slot = Mutex<Option<Box<dyn Any + Send>>>;

/// A shuffle block that arrived serialized from another worker.
struct RemoteBytes(Vec<u8>);

/// Where partitions run when a batch is spread over workers.
#[derive(Debug)]
pub struct Placement {
    /// `owners[p]`: the worker that owns partition `p`.
    pub owners: Vec<usize>,
    /// This worker.
    pub me: usize,
}

/// What a replay for some partitions recomputes: the state of a batch already committed
/// (its outputs were written whole before the commit, so they do not run).
#[derive(Debug)]
pub struct Redo {
    /// `parts[p]`: whether partition `p`'s reduce side (state, outputs) runs; the others only
    /// feed the recomputed ones their shuffle blocks.
    pub parts: Vec<bool>,
    /// `shuffles[s]`: whether shuffle `s` sends blocks to the recomputed partitions only
    /// (false for a shuffle whose reduce side feeds another shuffle: every partition of it is
    /// needed).
    pub shuffles: Vec<bool>,
}

/// A shuffle block bound for another worker.
#[derive(Debug)]
pub struct OutgoingBlock {
    pub owner: usize,
    pub shuffle: usize,
    pub map_part: usize,
    pub reduce_part: usize,
    pub data: Vec<u8>,
}

fn slots(n: usize) -> Vec<Slot> {
    (0..n).map(|_| Mutex::new(None)).collect()
}

/// Locks a mutex, ignoring poisoning.
pub(crate) fn lock_unpoisoned<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking task poisons nothing we cannot reuse: every slot is overwritten per batch.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Refusal messages kept per batch, for the log.
pub const ERROR_SAMPLES: usize = 5;

/// Records an operation refused during a batch.
#[derive(Debug, Default)]
pub struct RecordErrors {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl RecordErrors {
    /// How many records were refused.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The first few messages, for the log.
    pub fn samples(&self) -> Vec<String> {
        lock_unpoisoned(&self.first).clone()
    }
}

/// Shared values of a batch: partitions and, per source, shuffle, node and output, a slot
/// per partition.
pub struct BatchContext {
    pub batch: BatchInfo,
    pub partitions: usize,
    /// True while a batch is recomputed from a checkpoint after a failure.
    pub replay: bool,
    consumers: std::sync::Arc<Vec<usize>>,
    policy: OnRecordError,
    inputs: Vec<Vec<Slot>>,
    shuffles: Vec<Vec<Vec<Slot>>>,
    outputs: Vec<Vec<Slot>>,
    memo: Mutex<HashMap<(NodeId, usize), Box<dyn Any + Send>>>,
    errors: RecordErrors,
    /// What the batch moved here: input records per source, for the batch's report and the
    /// metrics.
    flow: Flow,
    placement: Option<std::sync::Arc<Placement>>,
    /// In a replay for some partitions only, which partitions and shuffles it recomputes.
    redo: Option<std::sync::Arc<Redo>>,
    outbox: Mutex<Vec<OutgoingBlock>>,
    /// The materializer whose stage runs now (stages run one at a time).
    materializing: AtomicUsize,
    /// When recording: what each materializer took in, by (materializer, partition), for the
    /// state log (see `checkpoint::state_log`).
    state_inputs: Option<Mutex<StateInputs>>,
    /// In a replay from the state log: the inputs to take instead of computing them.
    logged_state: Option<StateInputs>,
}

/// Records and bytes a batch moved in this process: read per source, written per output,
/// shuffled to and from other workers. Counted as they pass, read by the metrics after the
/// batch.
#[derive(Debug, Default)]
pub struct Flow {
    pub source_records: Vec<AtomicU64>,
    pub source_bytes: Vec<AtomicU64>,
    pub output_records: Vec<AtomicU64>,
    pub shuffle_bytes_sent: AtomicU64,
    pub shuffle_bytes_received: AtomicU64,
}

impl Flow {
    fn new(sources: usize, outputs: usize) -> Self {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Self {
            source_records: zeros(sources),
            source_bytes: zeros(sources),
            output_records: zeros(outputs),
            ..Self::default()
        }
    }
}

fn add(counters: &[AtomicU64], index: usize, n: u64) {
    if let Some(c) = counters.get(index) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Serialized materializer inputs by (materializer, partition). An empty entry: the
/// materializer ran for the partition and took no input (it reads other state).
pub type StateInputs = BTreeMap<(usize, usize), Vec<u8>>;

/// Sizes of the graph a context is built for.
pub(crate) struct Shared {
    pub consumers: std::sync::Arc<Vec<usize>>,
    pub sources: usize,
    pub shuffles: usize,
    pub outputs: usize,
    pub policy: OnRecordError,
}

impl BatchContext {
    pub(crate) fn new(batch: BatchInfo, partitions: usize, replay: bool, shared: &Shared) -> Self {
        Self {
            batch,
            partitions,
            replay,
            consumers: shared.consumers.clone(),
            policy: shared.policy,
            inputs: (0..shared.sources).map(|_| slots(partitions)).collect(),
            shuffles: (0..shared.shuffles)
                .map(|_| (0..partitions).map(|_| slots(partitions)).collect())
                .collect(),
            outputs: (0..shared.outputs).map(|_| slots(partitions)).collect(),
            memo: Mutex::new(HashMap::new()),
            errors: RecordErrors::default(),
            flow: Flow::new(shared.sources, shared.outputs),
            placement: None,
            redo: None,
            outbox: Mutex::new(Vec::new()),
            materializing: AtomicUsize::new(0),
            state_inputs: None,
            logged_state: None,
        }
    }

    /// Records what each materializer takes in, for the state log.
    pub(crate) fn recording_state_inputs(mut self) -> Self {
        self.state_inputs = Some(Mutex::new(BTreeMap::new()));
        self
    }

    /// A replay from the state log: materializers take `inputs` instead of computing them.
    pub(crate) fn with_logged_state(mut self, inputs: StateInputs) -> Self {
        self.logged_state = Some(inputs);
        self
    }

    pub(crate) fn set_materializing(&self, m: usize) {
        self.materializing.store(m, Ordering::Relaxed);
    }

    /// A materializer's input for `part`: from the state log in a replay from it, else
    /// computed (and recorded when the batch records state inputs).
    pub(crate) fn state_input<T: Serialize + DeserializeOwned>(
        &self,
        part: usize,
        compute: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let m = self.materializing.load(Ordering::Relaxed);
        if let Some(logged) = &self.logged_state {
            let bytes = logged.get(&(m, part)).ok_or_else(|| {
                Error::Internal(format!(
                    "the state log of batch {} has no input for materializer {m} of partition {part}",
                    self.batch.index
                ))
            })?;
            return postcard::from_bytes(bytes).map_err(|e| {
                Error::Checkpoint(format!(
                    "the state log of batch {} is unreadable for partition {part}: {e}",
                    self.batch.index
                ))
            });
        }
        let input = compute()?;
        if let Some(inputs) = &self.state_inputs {
            let bytes = postcard::to_stdvec(&input)
                .map_err(|e| Error::Internal(format!("cannot encode a state input: {e}")))?;
            lock_unpoisoned(inputs).insert((m, part), bytes);
        }
        Ok(input)
    }

    /// Notes that materializer `m` brought `part` up to this batch (with or without input).
    pub(crate) fn note_materialized(&self, m: usize, part: usize) {
        if let Some(inputs) = &self.state_inputs {
            lock_unpoisoned(inputs).entry((m, part)).or_default();
        }
    }

    /// The state inputs recorded since the last call.
    pub(crate) fn take_state_inputs(&self) -> StateInputs {
        self.state_inputs
            .as_ref()
            .map(|i| std::mem::take(&mut *lock_unpoisoned(i)))
            .unwrap_or_default()
    }

    /// Recomputes only what `redo` marks: a replay after a worker loss, in which the other
    /// partitions keep the state they have.
    pub(crate) fn with_redo(mut self, redo: std::sync::Arc<Redo>) -> Self {
        self.redo = Some(redo);
        self
    }

    /// Whether this batch recomputes some partitions only (see [`Redo`]).
    pub fn is_partial(&self) -> bool {
        self.redo.is_some()
    }

    /// Whether this process runs the reduce side (materializers, outputs) of partition
    /// `part` in this batch.
    pub fn reduces(&self, part: usize) -> bool {
        self.owns(part)
            && self
                .redo
                .as_ref()
                .is_none_or(|r| r.parts.get(part) == Some(&true))
    }

    /// The partitions whose reduce side runs here, in order.
    pub fn reduced_partitions(&self) -> Vec<usize> {
        (0..self.partitions).filter(|p| self.reduces(*p)).collect()
    }

    /// Runs only the partitions `placement` gives this worker; blocks for others go out.
    pub(crate) fn with_placement(mut self, placement: std::sync::Arc<Placement>) -> Self {
        self.placement = Some(placement);
        self
    }

    /// Whether this process runs partition `part`.
    pub fn owns(&self, part: usize) -> bool {
        self.placement
            .as_ref()
            .is_none_or(|p| p.owners.get(part) == Some(&p.me))
    }

    /// The partitions this process runs, in order.
    pub fn owned_partitions(&self) -> Vec<usize> {
        (0..self.partitions).filter(|p| self.owns(*p)).collect()
    }

    /// Whether every partition runs here (local mode).
    pub fn is_whole(&self) -> bool {
        self.placement.is_none()
    }

    /// Shuffle blocks produced for other workers since the last call.
    pub fn take_outgoing(&self) -> Vec<OutgoingBlock> {
        std::mem::take(&mut *lock_unpoisoned(&self.outbox))
    }

    /// Stores a block another worker sent.
    pub fn accept_block(
        &self,
        shuffle: usize,
        map_part: usize,
        reduce_part: usize,
        data: Vec<u8>,
    ) -> Result<()> {
        let slot = self
            .shuffles
            .get(shuffle)
            .and_then(|s| s.get(reduce_part))
            .and_then(|s| s.get(map_part))
            .ok_or_else(|| {
                Error::Internal(format!(
                    "block for unknown shuffle {shuffle} partition {reduce_part}/{map_part}"
                ))
            })?;
        self.flow
            .shuffle_bytes_received
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        *lock_unpoisoned(slot) = Some(Box::new(RemoteBytes(data)));
        Ok(())
    }

    /// Counts a refused record; fails the batch when the job says `onRecordError: fail`.
    pub fn record_error(&self, operation: &str, message: impl Into<String>) -> Result<()> {
        let message = message.into();
        let n = self.errors.count.fetch_add(1, Ordering::Relaxed);
        if n < ERROR_SAMPLES as u64 {
            lock_unpoisoned(&self.errors.first).push(format!("{operation}: {message}"));
        }
        match self.policy {
            OnRecordError::Skip => Ok(()),
            OnRecordError::Fail => Err(Error::Record {
                operation: operation.to_string(),
                message,
            }),
        }
    }

    /// Counts `count` refused records at once, `samples` being the first messages; fails the
    /// batch when the job says `onRecordError: fail`.
    pub fn record_errors(&self, operation: &str, count: u64, samples: &[String]) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let before = self.errors.count.fetch_add(count, Ordering::Relaxed);
        let room = 5usize.saturating_sub(usize::try_from(before).unwrap_or(usize::MAX));
        let mut first = lock_unpoisoned(&self.errors.first);
        first.extend(
            samples
                .iter()
                .take(room)
                .map(|m| format!("{operation}: {m}")),
        );
        drop(first);
        match self.policy {
            OnRecordError::Skip => Ok(()),
            OnRecordError::Fail => Err(Error::Record {
                operation: operation.to_string(),
                message: samples
                    .first()
                    .cloned()
                    .unwrap_or_else(|| format!("{count} records refused")),
            }),
        }
    }

    /// Records refused in this batch.
    pub fn errors(&self) -> &RecordErrors {
        &self.errors
    }

    /// Records read from all sources in this batch.
    pub fn input_records(&self) -> u64 {
        self.flow
            .source_records
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// What the batch moved here so far.
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// Bytes source `source` read for this batch.
    pub(crate) fn count_source_bytes(&self, source: usize, bytes: u64) {
        add(&self.flow.source_bytes, source, bytes);
    }

    /// Records output `output` wrote for this batch.
    pub(crate) fn count_output(&self, output: usize, records: u64) {
        add(&self.flow.output_records, output, records);
    }

    pub(crate) fn put_input<T: Send + 'static>(
        &self,
        source: usize,
        parts: Vec<Vec<T>>,
    ) -> Result<()> {
        let slots = self
            .inputs
            .get(source)
            .ok_or_else(|| Error::Internal(format!("no input slot for source {source}")))?;
        for (part, (slot, records)) in slots.iter().zip(parts).enumerate() {
            if !self.owns(part) {
                continue;
            }
            add(&self.flow.source_records, source, records.len() as u64);
            *lock_unpoisoned(slot) = Some(Box::new(records));
        }
        Ok(())
    }

    pub(crate) fn take_input<T: Send + 'static>(
        &self,
        source: usize,
        part: usize,
    ) -> Result<Vec<T>> {
        take_typed(&self.inputs[source][part], "input")
    }

    pub(crate) fn put_shuffle<T: crate::data::Data>(
        &self,
        shuffle: ShuffleId,
        map_part: usize,
        buckets: Vec<Vec<T>>,
    ) -> Result<()> {
        for (reduce_part, bucket) in buckets.into_iter().enumerate() {
            if self.redo.as_ref().is_some_and(|r| {
                r.shuffles.get(shuffle) == Some(&true) && r.parts.get(reduce_part) != Some(&true)
            }) {
                // Not recomputed in this replay: its owner already has this batch.
                continue;
            }
            match &self.placement {
                Some(p) if p.owners[reduce_part] != p.me => {
                    let data = postcard::to_stdvec(&bucket).map_err(|e| {
                        Error::Internal(format!("cannot encode a shuffle block: {e}"))
                    })?;
                    self.flow
                        .shuffle_bytes_sent
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    lock_unpoisoned(&self.outbox).push(OutgoingBlock {
                        owner: p.owners[reduce_part],
                        shuffle,
                        map_part,
                        reduce_part,
                        data,
                    });
                }
                _ => {
                    *lock_unpoisoned(&self.shuffles[shuffle][reduce_part][map_part]) =
                        Some(Box::new(bucket))
                }
            }
        }
        Ok(())
    }

    /// This reduce partition's blocks, one per map partition, in map partition order.
    pub(crate) fn take_shuffle<T: crate::data::Data>(
        &self,
        shuffle: ShuffleId,
        reduce_part: usize,
    ) -> Result<Vec<Vec<T>>> {
        let mut blocks = Vec::with_capacity(self.partitions);
        for (map_part, slot) in self.shuffles[shuffle][reduce_part].iter().enumerate() {
            let boxed = lock_unpoisoned(slot).take().ok_or_else(|| {
                Error::Internal(format!("shuffle {shuffle} block {map_part}->{reduce_part} is missing (read twice, or lost in transit)"))
            })?;
            let block = match boxed.downcast::<Vec<T>>() {
                Ok(b) => *b,
                Err(other) => match other.downcast::<RemoteBytes>() {
                    Ok(bytes) => postcard::from_bytes(&bytes.0)
                        .map_err(|e| Error::Internal(format!("unreadable shuffle block: {e}")))?,
                    Err(_) => {
                        return Err(Error::Internal(
                            "a shuffle block has an unexpected type".into(),
                        ));
                    }
                },
            };
            blocks.push(block);
        }
        Ok(blocks)
    }

    pub(crate) fn put_output<T: Send + 'static>(
        &self,
        output: usize,
        part: usize,
        records: Vec<T>,
    ) {
        *lock_unpoisoned(&self.outputs[output][part]) = Some(Box::new(records));
    }

    /// An output's records of the partitions run here, in partition order.
    pub(crate) fn take_output<T: Send + 'static>(
        &self,
        output: usize,
    ) -> Result<Vec<(usize, Vec<T>)>> {
        let mut all = Vec::new();
        for (part, slot) in self.outputs[output].iter().enumerate() {
            if self.reduces(part) {
                all.push((part, take_typed::<Vec<T>>(slot, "output")?));
            }
        }
        Ok(all)
    }

    /// Computes a node's partition once per batch when several computations read it.
    pub(crate) fn shared<T: Clone + Send + 'static>(
        &self,
        node: NodeId,
        part: usize,
        compute: impl FnOnce() -> Result<Vec<T>>,
    ) -> Result<Vec<T>> {
        if self.consumers.get(node).copied().unwrap_or(1) <= 1 {
            return compute();
        }
        if let Some(v) = lock_unpoisoned(&self.memo)
            .get(&(node, part))
            .and_then(|b| b.downcast_ref::<Vec<T>>())
        {
            return Ok(v.clone());
        }
        let v = compute()?;
        lock_unpoisoned(&self.memo).insert((node, part), Box::new(v.clone()));
        Ok(v)
    }
}

fn take_typed<T: Send + 'static>(slot: &Slot, what: &str) -> Result<T> {
    let boxed = lock_unpoisoned(slot)
        .take()
        .ok_or_else(|| Error::Internal(format!("{what} read before it was written, or twice")))?;
    boxed
        .downcast::<T>()
        .map(|b| *b)
        .map_err(|_| Error::Internal(format!("{what} has an unexpected type")))
}
