//! Local mode (`sluice run`): the batch protocol with every batch run in this process.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::checkpoint::{CheckpointStore, Checkpointer, MemoryStore, WriterLock};
use crate::coordinator::{
    self, BatchInput, BatchProgress, Fault, RunSummary, Runner, Settings, StateFiles,
};
use crate::error::Result;
use crate::job::{BatchReport, Job};
use crate::metrics::RuntimeMetrics;

/// How a job runs in this process.
pub struct LocalOptions {
    /// The job's name, recorded in the checkpoint.
    pub job_name: String,
    /// The StreamingJob's uid, when the manifest has one; recorded in a new checkpoint.
    pub job_uid: Option<String>,
    /// Must match the checkpoint's to resume from it.
    pub fingerprint: String,
    /// Where checkpoints go; `None` keeps them in memory (in-process recovery only).
    pub store: Option<Box<dyn CheckpointStore>>,
    /// The lock of `store`'s directory, when it is local: this process alone writes it, so
    /// offset entries are appended to a log rather than written a file each.
    pub writer_lock: Option<WriterLock>,
    /// Snapshot every this many batches.
    pub snapshot_interval: u64,
    /// And at most this often, by batch time (zero: every `snapshot_interval` batches).
    pub snapshot_every: Duration,
    /// Snapshots to keep.
    pub retain: usize,
    /// Stop after this batch index (counted from the job's first batch, across restarts).
    pub stop_after: Option<u64>,
    /// Set to stop after the current batch.
    pub stop: Arc<AtomicBool>,
    /// Wait for each batch's time (live) or run batches back to back (benchmarks, catch-up).
    pub paced: bool,
    /// Called after every batch.
    pub on_batch: Box<dyn FnMut(&BatchProgress) + Send>,
    /// Where the loop's figures go, when they are served.
    pub metrics: Option<Arc<RuntimeMetrics>>,
}

/// Drives `job` in this process until the stop flag, `stop_after`, or an error that no retry
/// repairs.
pub fn run(mut job: Job, options: LocalOptions) -> Result<RunSummary> {
    if let Some(m) = &options.metrics {
        job.set_metrics(m.clone());
    }
    let store = options
        .store
        .unwrap_or_else(|| Box::new(MemoryStore::default()));
    let mut ckpt = Checkpointer::new(store, options.snapshot_interval, options.retain)
        .snapshot_every(options.snapshot_every);
    if let Some(lock) = options.writer_lock {
        ckpt = ckpt.holding(lock);
    }
    let settings = Settings {
        job_name: options.job_name,
        job_uid: options.job_uid,
        fingerprint: options.fingerprint,
        stop_after: options.stop_after,
        stop: options.stop,
        paced: options.paced,
        on_batch: options.on_batch,
        recovery: coordinator::Recovery::Global,
        metrics: options.metrics,
    };
    coordinator::run(job, ckpt, InProcess, settings).map_err(Fault::into_error)
}

/// Runs every partition of every batch in this process, on the job's thread pool.
pub struct InProcess;

impl Runner for InProcess {
    fn restore(
        &mut self,
        job: &mut Job,
        ckpt: &Checkpointer,
        snapshot: u64,
        only: Option<&[usize]>,
    ) -> Result<(), Fault> {
        if only.is_some() {
            return Err(Fault::Fatal(
                "a process that runs every partition never restores some alone".into(),
            ));
        }
        let snapshot = match snapshot {
            0 => None,
            batch => Some(ckpt.snapshot_at(batch)?),
        };
        job.restore(snapshot.as_ref())?;
        Ok(())
    }

    fn execute(
        &mut self,
        job: &mut Job,
        ckpt: &Checkpointer,
        input: BatchInput<'_>,
    ) -> Result<BatchReport, Fault> {
        let read;
        let logged = match input.logged {
            Some(logged) => logged,
            None => {
                read = ckpt.logged_inputs(input.ranges)?;
                &read
            }
        };
        if input.redo.is_some() {
            return Err(Fault::Fatal(
                "a process that runs every partition never replays some alone".into(),
            ));
        }
        Ok(job.execute(
            input.batch,
            input.ranges,
            logged,
            input.replay,
            input.before_outputs,
        )?)
    }

    /// Encodes the state here; the loop's writer writes it while the next batches run.
    fn snapshot(
        &mut self,
        job: &Job,
        _ckpt: &Checkpointer,
        batch: u64,
    ) -> Result<StateFiles, Fault> {
        Ok(StateFiles::Encoded(job.next_snapshot(batch)?))
    }
}
