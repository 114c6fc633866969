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
    /// Makes durable what `finish` left to be made durable later (an output's directory
    /// sync); see [`crate::sink::Sink::sync`].
    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// A job's outputs, for whoever marks batches complete: it syncs them first.
#[derive(Clone)]
pub(crate) struct Outputs(std::sync::Arc<[std::sync::Arc<dyn Task>]>);

impl Outputs {
    pub(crate) fn new(tasks: &[std::sync::Arc<dyn Task>]) -> Self {
        Self(tasks.iter().cloned().collect())
    }

    /// No outputs (tests of the checkpoint writer).
    #[cfg(test)]
    pub(crate) fn none() -> Self {
        Self::new(&[])
    }

    /// Makes durable what every output's writes so far left for later.
    pub(crate) fn sync(&self) -> Result<()> {
        self.0.iter().try_for_each(|t| t.sync())
    }
}
