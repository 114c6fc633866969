//! Runs a batch plan on a local thread pool: stage after stage, partitions in parallel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::exec::{BatchContext, Task};
use crate::plan::{BatchPlan, StageKind};

/// The tasks of a job by stage kind, and the pool that runs them.
pub struct Executor {
    pool: rayon::ThreadPool,
    pub(crate) shuffles: Vec<Arc<dyn Task>>,
    pub(crate) materializers: Vec<Arc<dyn Task>>,
    pub(crate) outputs: Vec<Arc<dyn Task>>,
    /// `applied[m][p]`: the last batch materializer `m` brought partition `p` up to. A batch
    /// run again for a partition that already has it (its state changed in place) skips the
    /// update, so that a batch cut short on some workers can be run again on all of them.
    applied: Vec<Vec<AtomicU64>>,
}

/// Stack of each task thread.
pub(crate) const TASK_STACK_BYTES: usize = 16 << 20;

impl Executor {
    pub(crate) fn new(
        threads: usize,
        partitions: usize,
        shuffles: Vec<Arc<dyn Task>>,
        materializers: Vec<Arc<dyn Task>>,
        outputs: Vec<Arc<dyn Task>>,
    ) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("sluice-task-{i}"))
            // Room to spare for recursive user code (CEL evaluation recurses once per level of
            // an expression, which compilation bounds); untouched stack costs no memory.
            .stack_size(TASK_STACK_BYTES)
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the task thread pool: {e}")))?;
        let applied = materializers
            .iter()
            .map(|_| (0..partitions).map(|_| AtomicU64::new(0)).collect())
            .collect();
        Ok(Self {
            pool,
            shuffles,
            materializers,
            outputs,
            applied,
        })
    }

    /// Records that partition `part`'s state is that after `batch` (restored from its
    /// snapshot, or emptied: 0).
    pub(crate) fn set_applied(&self, part: usize, batch: u64) {
        for m in &self.applied {
            if let Some(a) = m.get(part) {
                a.store(batch, Ordering::Relaxed);
            }
        }
    }

    /// Runs `op` on the task threads: parallel work inside it (`rayon`'s iterators, as
    /// sources reading a batch use) takes the job's threads, no more.
    pub(crate) fn install<R: Send>(&self, op: impl FnOnce() -> R + Send) -> R {
        self.pool.install(op)
    }

    /// Runs every stage of `plan`, in order.
    pub fn run(&self, plan: &BatchPlan, cx: &BatchContext) -> Result<()> {
        (0..plan.stages.len()).try_for_each(|i| self.run_stage(plan, i, cx))
    }

    /// Runs the plan's materializers only, over the partitions `cx` reduces: a replay from
    /// the state log, whose inputs `cx` holds.
    pub(crate) fn run_materializers(&self, plan: &BatchPlan, cx: &BatchContext) -> Result<()> {
        for (i, stage) in plan.stages.iter().enumerate() {
            if matches!(stage.kind, StageKind::Materialize(_)) {
                self.run_stage(plan, i, cx)?;
            }
        }
        Ok(())
    }

    /// Runs stage `index` of `plan` over the partitions this process owns.
    pub fn run_stage(&self, plan: &BatchPlan, index: usize, cx: &BatchContext) -> Result<()> {
        let Some(stage) = plan.stages.get(index) else {
            return Ok(());
        };
        let batch = cx.batch.index;
        // The map side of a shuffle runs for every partition here (in a partial replay it
        // feeds the recomputed ones); state and outputs only where they are recomputed.
        let (task, parts, applied) = match stage.kind {
            StageKind::ShuffleMap(s) => (&self.shuffles[s], cx.owned_partitions(), None),
            StageKind::Materialize(m) => {
                let applied = &self.applied[m];
                let due: Vec<usize> = cx
                    .reduced_partitions()
                    .into_iter()
                    .filter(|p| {
                        applied
                            .get(*p)
                            .is_none_or(|a| a.load(Ordering::Relaxed) < batch)
                    })
                    .collect();
                cx.set_materializing(m);
                (&self.materializers[m], due, Some((m, applied)))
            }
            // A partial replay rebuilds the state of batches already committed, whose outputs
            // were written whole before their commit.
            StageKind::Output(_) if cx.is_partial() => return Ok(()),
            StageKind::Output(o) => (&self.outputs[o], cx.reduced_partitions(), None),
        };
        self.pool.install(|| {
            parts.par_iter().copied().try_for_each(|p| {
                contain(|| task.run(cx, p))?;
                if let Some((m, applied)) = applied {
                    if let Some(a) = applied.get(p) {
                        a.store(batch, Ordering::Relaxed);
                    }
                    cx.note_materialized(m, p);
                }
                Ok::<(), Error>(())
            })
        })?;
        contain(|| task.finish(cx))
    }
}

/// Turns a panic in a task (a user function's, say) into an error of the batch instead of
/// taking the process down.
fn contain(f: impl FnOnce() -> Result<()>) -> Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(Error::Internal(format!("a task panicked: {message}")))
    })
}
