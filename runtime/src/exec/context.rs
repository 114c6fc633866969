//! Everything one batch's tasks share: inputs, shuffle blocks, memoized streams, outputs and
//! the record error count. Dropped when the batch ends, so nothing leaks across batches.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_crds::OnRecordError;

use crate::error::{Error, Result};
use crate::plan::{NodeId, ShuffleId};
use crate::time::BatchInfo;

type Slot = Mutex<Option<Box<dyn Any + Send>>>;

fn slots(n: usize) -> Vec<Slot> {
    (0..n).map(|_| Mutex::new(None)).collect()
}

/// Locks a mutex, ignoring poisoning.
pub(crate) fn lock_unpoisoned<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking task poisons nothing we cannot reuse: every slot is overwritten per batch.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

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
    input_records: AtomicU64,
}

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
            input_records: AtomicU64::new(0),
        }
    }

    /// Counts a refused record; fails the batch when the job says `onRecordError: fail`.
    pub fn record_error(&self, operation: &str, message: impl Into<String>) -> Result<()> {
        let message = message.into();
        let n = self.errors.count.fetch_add(1, Ordering::Relaxed);
        if n < 5 {
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

    /// Records refused in this batch.
    pub fn errors(&self) -> &RecordErrors {
        &self.errors
    }

    /// Records read from all sources in this batch.
    pub fn input_records(&self) -> u64 {
        self.input_records.load(Ordering::Relaxed)
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
        for (slot, records) in slots.iter().zip(parts) {
            self.input_records
                .fetch_add(records.len() as u64, Ordering::Relaxed);
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

    pub(crate) fn put_shuffle<T: Send + 'static>(
        &self,
        shuffle: ShuffleId,
        map_part: usize,
        buckets: Vec<Vec<T>>,
    ) {
        for (reduce_part, bucket) in buckets.into_iter().enumerate() {
            *lock_unpoisoned(&self.shuffles[shuffle][reduce_part][map_part]) =
                Some(Box::new(bucket));
        }
    }

    /// This reduce partition's blocks, one per map partition, in map partition order.
    pub(crate) fn take_shuffle<T: Send + 'static>(
        &self,
        shuffle: ShuffleId,
        reduce_part: usize,
    ) -> Result<Vec<Vec<T>>> {
        self.shuffles[shuffle][reduce_part]
            .iter()
            .map(|slot| take_typed(slot, "shuffle block"))
            .collect()
    }

    pub(crate) fn put_output<T: Send + 'static>(
        &self,
        output: usize,
        part: usize,
        records: Vec<T>,
    ) {
        *lock_unpoisoned(&self.outputs[output][part]) = Some(Box::new(records));
    }

    /// An output's records in partition order.
    pub(crate) fn take_output<T: Send + 'static>(&self, output: usize) -> Result<Vec<T>> {
        let mut all = Vec::new();
        for slot in &self.outputs[output] {
            all.extend(take_typed::<Vec<T>>(slot, "output")?);
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
