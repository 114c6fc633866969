//! Running batches: the per-batch context shared by tasks, and the executor that runs a
//! [`BatchPlan`](crate::plan::BatchPlan)'s stages on a thread pool.

mod context;
mod executor;

pub use context::{
    BatchContext, ERROR_SAMPLES, Flow, OutgoingBlock, Placement, RecordErrors, Redo, StateInputs,
};
pub(crate) use context::{Shared, lock_unpoisoned};
pub use executor::Executor;
#[cfg(test)]
pub(crate) use executor::TASK_STACK_BYTES;

use crate::error::Result;

/// The work of one stage: `run` once per partition (in parallel), then `finish` once.
pub(crate) trait Task: Send + Sync {
    fn run(&self, cx: &BatchContext, part: usize) -> Result<()>;
    fn finish(&self, _cx: &BatchContext) -> Result<()> {
        Ok(())
    }
}
