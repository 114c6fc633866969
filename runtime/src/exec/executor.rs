//! Runs a batch plan on a local thread pool: stage after stage, partitions in parallel.

use std::sync::Arc;

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
}

/// Stack of each task thread.
pub(crate) const TASK_STACK_BYTES: usize = 16 << 20;

impl Executor {
    pub(crate) fn new(
        threads: usize,
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
        Ok(Self {
            pool,
            shuffles,
            materializers,
            outputs,
        })
    }

    /// Runs every stage of `plan`, in order.
    pub fn run(&self, plan: &BatchPlan, cx: &BatchContext) -> Result<()> {
        (0..plan.stages.len()).try_for_each(|i| self.run_stage(plan, i, cx))
    }

    /// Runs stage `index` of `plan` over the partitions this process owns.
    pub fn run_stage(&self, plan: &BatchPlan, index: usize, cx: &BatchContext) -> Result<()> {
        let owned = cx.owned_partitions();
        if let Some(stage) = plan.stages.get(index) {
            let task = match stage.kind {
                StageKind::ShuffleMap(s) => &self.shuffles[s],
                StageKind::Materialize(m) => &self.materializers[m],
                StageKind::Output(o) => &self.outputs[o],
            };
            self.pool.install(|| {
                owned
                    .par_iter()
                    .copied()
                    .try_for_each(|p| contain(|| task.run(cx, p)))
            })?;
            contain(|| task.finish(cx))?;
        }
        Ok(())
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
