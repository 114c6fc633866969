//! The batch protocol, written once for local and distributed runs: one loop over a
//! [`Runner`] that runs the batches where they run — in this process ([`crate::local`]) or on
//! workers ([`crate::master`]).
//!
//! Every batch: plan the sources' ranges → write the records of sources that cannot replay to
//! the write-ahead log → log the ranges (`offsets/`, beside the run, before its outputs: see
//! [`log_ahead`]) → run → snapshot state if due → mark
//! complete (`commits/`) with its record counts → prune. What follows the run (the snapshot's
//! writing, the commit, the pruning) goes to the [`writer`]'s thread, in order, while the next
//! batch runs. On start and after any failure: wait for those writes → place the partitions →
//! pick the newest snapshot from its manifest → the runner loads it → replay every batch
//! logged after it → go on. On stop: a final snapshot, so that the next start replays
//! nothing. Nothing is marked complete that was not durably written.
//!
//! The decisions are pure functions in [`protocol`]; this loop does the I/O around them.

mod fault;
mod log_ahead;
pub mod protocol;
pub mod rate;
mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

pub use fault::{Class, Fault};
use log_ahead::LogAhead;
use protocol::{Backoff, Identity, Takeover};
pub use writer::StateFiles;
use writer::{CheckpointWriter, Write, Written};

use crate::checkpoint::{Checkpointer, CommitEntry, Logged, OffsetEntry};
use crate::job::{BatchReport, Job};
use crate::metrics::RuntimeMetrics;
use crate::rpc::pb::MasterState;
use crate::time::{BatchInfo, Lag, Schedule, now_ms};

/// Where batches run: in this process, or on a cluster of workers.
pub trait Runner {
    /// Whether batches can run now; called before every step. `started`: the job has run
    /// (or tried to), so a cluster no longer waits for its minimum of workers.
    fn poll(&mut self, started: bool) -> Result<Poll, Fault> {
        let _ = started;
        Ok(Poll::Ready)
    }

    /// Places the partitions afresh (after a failure or a change of workers).
    fn place(&mut self, job: &Job) -> Result<(), Fault> {
        let _ = job;
        Ok(())
    }

    /// After a worker loss: a new placement in which the surviving workers keep their
    /// partitions, and the partitions that moved (whose state must be rebuilt). `None` when
    /// the runner cannot keep its survivors' state; recovery is then global.
    fn replace_lost(&mut self, job: &Job) -> Result<Option<Vec<usize>>, Fault> {
        let _ = job;
        Ok(None)
    }

    /// Loads the state of the snapshot of `snapshot` (0: none, empty state): of every
    /// partition, or with `only` of those alone, the others keeping theirs.
    /// [`Class::Damaged`] sends recovery to the snapshot before it.
    fn restore(
        &mut self,
        job: &mut Job,
        ckpt: &Checkpointer,
        snapshot: u64,
        only: Option<&[usize]>,
    ) -> Result<(), Fault>;

    /// Brings the partitions `moved` (just restored from a snapshot) up to the batches of
    /// `plan`, in order, from the state log, where the runner keeps one; returns how many of
    /// its batches every moved partition took (the rest are recomputed).
    fn apply_state_log(
        &mut self,
        plan: &[protocol::LogBatch],
        moved: &[usize],
    ) -> Result<usize, Fault> {
        let _ = (plan, moved);
        Ok(0)
    }

    /// Reads a batch's input and runs it.
    fn execute(
        &mut self,
        job: &mut Job,
        ckpt: &Checkpointer,
        input: BatchInput<'_>,
    ) -> Result<BatchReport, Fault>;

    /// Takes the snapshot of `batch`: its state files written (by workers), or encoded for
    /// the loop's writer to write; the writer checks them and writes the manifest that
    /// completes the snapshot.
    fn snapshot(&mut self, job: &Job, ckpt: &Checkpointer, batch: u64)
    -> Result<StateFiles, Fault>;

    /// Whether the state held now is whole, so that a snapshot of it can be taken.
    fn placement_intact(&self) -> bool {
        true
    }

    /// Called while waiting for the next batch's time.
    fn idle(&mut self) -> Result<(), Fault> {
        Ok(())
    }

    /// `worker` was lost; it is no longer placed.
    fn lost(&mut self, worker: &str) {
        let _ = worker;
    }

    /// Where the job stands, for whoever asks.
    fn report(&mut self, status: &Status) {
        let _ = status;
    }

    /// Workers the present placement gives at least one partition to (one for a process
    /// running every partition itself).
    fn busy_workers(&self) -> usize {
        1
    }
}

/// What a [`Runner`] says before a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Poll {
    Ready,
    /// Workers joined or asked to leave: rescale at this batch boundary.
    Changed,
    /// Not enough workers yet: why, for the status.
    Wait(String),
}

/// One batch to run.
pub struct BatchInput<'a> {
    pub batch: BatchInfo,
    pub ranges: &'a BTreeMap<String, Json>,
    /// The records of sources that cannot replay, when they were just read; `None` on a
    /// replay, when they are in the write-ahead log.
    pub logged: Option<&'a BTreeMap<String, Vec<u8>>>,
    pub replay: bool,
    /// A replay that recomputes the state and outputs of these partitions only.
    pub redo: Option<&'a [usize]>,
    /// A new batch whose offset entry is still being written: called before the batch writes
    /// any output, it waits for the entry and fails when this master did not log the batch.
    pub before_outputs: Option<&'a (dyn Fn() -> crate::error::Result<()> + Sync)>,
}

/// What a worker loss costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recovery {
    /// Only the lost partitions are rebuilt, on other workers, from the snapshot and the
    /// log; the surviving workers keep their state (when the job allows: no shuffle reads
    /// state).
    #[default]
    Partial,
    /// Every worker rolls back to the snapshot and replays the log (kept for comparison).
    Global,
}

/// Where the job stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub state: MasterState,
    pub message: String,
    pub last_completed_batch: u64,
    pub last_checkpoint_batch: u64,
    pub recoveries: u64,
    /// The figures of the last [`RECENT_BATCHES`] committed batches, oldest first: what an
    /// autoscaler judges the job by between two looks.
    pub recent: Vec<BatchFigures>,
    /// The job's partitions: more workers than this have nothing to run.
    pub partitions: u32,
    pub interval_ms: u64,
}

impl Status {
    /// The newest committed batch's figures, once there is one.
    pub fn last_batch(&self) -> Option<&BatchFigures> {
        self.recent.last()
    }
}

/// How many committed batches' figures the status carries.
pub const RECENT_BATCHES: usize = 30;

/// What one committed batch took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchFigures {
    pub batch: u64,
    pub time_ms: u64,
    pub records: u64,
    pub processing: Duration,
    pub scheduling_delay: Duration,
    pub total_delay: Duration,
    /// Records per second of batch time.
    pub input_rate: u64,
    /// Records waiting in the sources after this batch was planned, where they can count them
    /// (Kafka); `None` when no source can.
    pub backlog: Option<u64>,
    /// Run again from the offset log after a failure.
    pub replay: bool,
    /// Workers that ran a partition of it.
    pub workers: u32,
}

/// How a job is driven, wherever its batches run.
pub struct Settings {
    /// The job's name, recorded in the checkpoint.
    pub job_name: String,
    /// The StreamingJob's uid, when the manifest has one; recorded in a new checkpoint.
    pub job_uid: Option<String>,
    /// Must match the checkpoint's to resume from it.
    pub fingerprint: String,
    /// Stop after this batch index (counted from the job's first batch, across restarts).
    pub stop_after: Option<u64>,
    /// Set to stop after the current batch.
    pub stop: Arc<AtomicBool>,
    /// Wait for each batch's time (live) or run batches back to back (benchmarks, catch-up).
    pub paced: bool,
    /// Called after every batch.
    pub on_batch: Box<dyn FnMut(&BatchProgress) + Send>,
    /// What a worker loss redoes.
    pub recovery: Recovery,
    /// Where the loop's figures go, when they are served.
    pub metrics: Option<Arc<RuntimeMetrics>>,
}

/// A finished batch with its delays, as shown to the user.
#[derive(Clone, Debug)]
pub struct BatchProgress {
    pub report: BatchReport,
    /// From the batch's time to the start of its processing.
    pub scheduling_delay: Duration,
    /// From the batch's time to its completion.
    pub total_delay: Duration,
    /// The rate controller's bound for the next batches, records per second.
    pub rate_limit: Option<f64>,
    /// Records waiting in each source that can count them, after this batch was planned (a
    /// replayed batch: after the newest plan).
    pub backlog: BTreeMap<String, u64>,
}

impl BatchFigures {
    fn of(p: &BatchProgress, workers: usize) -> Self {
        let r = &p.report;
        BatchFigures {
            batch: r.batch.index,
            time_ms: r.batch.time_ms,
            records: r.records,
            processing: r.processing,
            scheduling_delay: p.scheduling_delay,
            total_delay: p.total_delay,
            input_rate: p.input_rate().round() as u64,
            backlog: (!p.backlog.is_empty()).then(|| p.backlog.values().sum()),
            replay: r.replay,
            workers: u32::try_from(workers).unwrap_or(u32::MAX),
        }
    }
}

impl BatchProgress {
    /// Input records per second of batch time.
    pub fn input_rate(&self) -> f64 {
        match self.report.batch.interval_ms {
            0 => 0.0,
            ms => self.report.records as f64 * 1000.0 / ms as f64,
        }
    }

    /// The batch's line in the log, and its refused records' samples.
    pub fn log(&self) {
        let r = &self.report;
        let replay = if r.replay { " (replayed)" } else { "" };
        let rate = self
            .rate_limit
            .map(|r| format!(", rate limit {r:.0} records/s"))
            .unwrap_or_default();
        let backlog = if self.backlog.is_empty() {
            String::new()
        } else {
            format!(", backlog {} records", self.backlog.values().sum::<u64>())
        };
        tracing::info!(
            "batch {} {}{replay}: {} records, {} errors, processing {}ms, scheduling delay {}ms, total delay {}ms{rate}{backlog}",
            r.batch.index,
            r.batch.display_time(),
            r.records,
            r.record_errors,
            r.processing.as_millis(),
            self.scheduling_delay.as_millis(),
            self.total_delay.as_millis()
        );
        for sample in &r.error_samples {
            tracing::warn!(batch = r.batch.index, "record refused: {sample}");
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// Batches run (replays included).
    pub batches: u64,
    /// Batches recomputed from the checkpoint log.
    pub replayed: u64,
    /// The last completed batch index.
    pub last_batch: u64,
    /// Recoveries after failures within this process.
    pub recoveries: u64,
}

/// Where the loop is in a job's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Nothing has run yet: recover from the checkpoint (or start afresh) once the runner is
    /// ready; a cluster waits for its minimum of workers.
    Start,
    /// After a failure: restore and replay, of every partition, or only of the partitions a
    /// worker lost while batches ran.
    Recover { lost_only: bool },
    /// Batches run.
    Run,
}

/// What a step did.
enum Progress {
    Done,
    /// Waiting for the next batch's time.
    Waiting,
}

/// The longest wait between tries of a store or source that fails.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// The longest wait between rollbacks for a cause that persists.
const MAX_ROLLBACK_WAIT: Duration = Duration::from_secs(5);
/// The longest sleep between looks at the stop flag and the runner while waiting.
const TICK: Duration = Duration::from_millis(50);

/// Drives `job` on `runner` until the stop flag, `stop_after`, or a failure that no retry
/// repairs.
pub fn run<R: Runner>(
    mut job: Job,
    ckpt: Checkpointer,
    runner: R,
    settings: Settings,
) -> Result<RunSummary, Fault> {
    let identity = Identity {
        job: settings.job_name.clone(),
        uid: settings.job_uid.clone(),
        fingerprint: settings.fingerprint.clone(),
        interval_ms: job.interval_ms(),
        partitions: job.partitions(),
        spec: job.spec().cloned(),
        layout: job.state_layout(),
    };
    let meta = match ckpt.load_meta_checked()? {
        Some(meta) => {
            let meta = match identity.take_over(&meta, &ckpt.describe()) {
                Err(why) => return Err(Fault::Engine(crate::Error::Config(why))),
                Ok(Takeover::AsIs) => meta,
                Ok(Takeover::Rewrite(next, plan)) => {
                    if let Some(plan) = &plan {
                        for change in &plan.changes {
                            tracing::info!(path = %change.path, class = change.class.label(), "upgrade: {}", change.effect);
                        }
                        // What the state log holds was logged for the old layout.
                        if plan.reshapes_state() {
                            ckpt.drop_state_log()?;
                        }
                    }
                    ckpt.write_meta(&next)?;
                    *next
                }
            };
            tracing::info!(checkpoint = %ckpt.describe(), "resuming from checkpoint");
            meta
        }
        None => {
            let meta = identity.new_meta(now_ms());
            ckpt.write_meta(&meta)?;
            meta
        }
    };
    let epoch = ckpt.claim_epoch()?;
    let ckpt = Arc::new(ckpt);
    let writer = CheckpointWriter::start(ckpt.clone(), epoch, job.outputs())
        .map_err(|e| Fault::Fatal(format!("cannot start the checkpoint writer thread: {e}")))?;
    tracing::info!(epoch, checkpoint = %ckpt.describe(), "claimed the checkpoint: batches are planned and committed under this epoch");
    let not_replayable = job.non_replayable_sources();
    if !not_replayable.is_empty() {
        tracing::info!(sources = ?not_replayable, "these sources are not replayable: records they delivered after the last checkpoint are lost if the process dies");
    }
    job.start_sources()?;
    let rate = job
        .backpressure()
        .filter(|_| job.has_rate_limited_sources())
        .map(|bp| {
            job.limit_rate(Some(bp.initial_rate));
            rate::RateEstimator::new(meta.interval_ms, &bp)
        });
    let mut coordinator = Coordinator {
        rate,
        rate_limit: job.backpressure().map(|bp| bp.initial_rate),
        initial_positions: job.positions(),
        job,
        ckpt,
        writer,
        runner,
        zero: meta.zero_time_ms,
        interval: meta.interval_ms,
        stop_after: settings.stop_after,
        paced: settings.paced,
        on_batch: settings.on_batch,
        recovery: settings.recovery,
        epoch,
        next: 1,
        last_snapshot: 0,
        snapshot_taken: 0,
        summary: RunSummary::default(),
        schedule: Schedule::new(),
        lag: Lag::default(),
        metrics: settings.metrics.clone(),
        recovering_since: None,
        recent: VecDeque::with_capacity(RECENT_BATCHES),
        uncommitted: VecDeque::new(),
        last_committed: 0,
    };
    let result = coordinator.run_loop(&settings.stop);
    coordinator.job.close_sources();
    result.map(|()| coordinator.summary)
}

struct Coordinator<R> {
    job: Job,
    ckpt: Arc<Checkpointer>,
    writer: CheckpointWriter,
    runner: R,
    zero: u64,
    interval: u64,
    stop_after: Option<u64>,
    paced: bool,
    on_batch: Box<dyn FnMut(&BatchProgress) + Send>,
    recovery: Recovery,
    initial_positions: BTreeMap<String, Json>,
    /// This master's epoch (see [`Checkpointer::claim_epoch`]).
    epoch: u64,
    /// The next batch to plan.
    next: u64,
    /// The newest complete snapshot (its manifest written).
    last_snapshot: u64,
    /// The newest snapshot taken, complete or still being written.
    snapshot_taken: u64,
    summary: RunSummary,
    schedule: Schedule,
    lag: Lag,
    metrics: Option<Arc<RuntimeMetrics>>,
    /// When the running recovery began (after a failure, not at the start).
    recovering_since: Option<Instant>,
    /// The rate controller, when backpressure is on and a source can be bounded.
    rate: Option<rate::RateEstimator>,
    /// Its present figure, records per second.
    rate_limit: Option<f64>,
    /// The newest committed batches' figures, oldest first.
    recent: VecDeque<BatchFigures>,
    /// Completed batches whose commit entries the writer has yet to write, with what the lag
    /// tracker said of each.
    uncommitted: VecDeque<(BatchProgress, Option<String>)>,
    /// The newest batch whose commit entry is written.
    last_committed: u64,
}

impl<R: Runner> Coordinator<R> {
    fn report(&mut self, state: MasterState, message: &str) {
        let status = Status {
            state,
            message: message.to_string(),
            last_completed_batch: self.last_committed,
            last_checkpoint_batch: self.last_snapshot,
            recoveries: self.summary.recoveries,
            recent: self.recent.iter().copied().collect(),
            partitions: u32::try_from(self.job.partitions()).unwrap_or(u32::MAX),
            interval_ms: self.interval,
        };
        self.runner.report(&status);
    }

    fn run_loop(&mut self, stop: &AtomicBool) -> Result<(), Fault> {
        self.report(MasterState::Starting, "");
        let mut retry = Backoff::new(Duration::from_millis(200), MAX_RETRY_WAIT);
        let mut rollback = Backoff::new(Duration::from_millis(200), MAX_ROLLBACK_WAIT);
        let mut step = Step::Start;
        let mut rollbacks_in_row = 0u32;
        while !stop.load(Ordering::Relaxed) {
            if self.stop_after.is_some_and(|last| self.next > last) && step == Step::Run {
                break;
            }
            // From the first attempt on, a cluster's minimum of workers no longer applies: a
            // worker lost while recovering must not stall the job.
            let changed = match self.runner.poll(step != Step::Start)? {
                Poll::Ready => false,
                Poll::Changed => true,
                Poll::Wait(why) => {
                    self.report(MasterState::Starting, &why);
                    if step == Step::Run {
                        step = Step::Recover { lost_only: false };
                    }
                    sleep_unless_stopped(Duration::from_millis(100), stop);
                    continue;
                }
            };
            let was_recovery = step != Step::Run;
            let result = match step {
                Step::Recover { lost_only: true }
                    if self.recovery == Recovery::Partial
                        && self.job.recomputable_by_partition() =>
                {
                    self.recover_lost()
                }
                Step::Start | Step::Recover { .. } => self.recover(),
                Step::Run => self.run_step(changed, stop),
            };
            let fault = match result {
                Ok(Progress::Done) => {
                    step = Step::Run;
                    if let Some(since) = self.recovering_since.take()
                        && let Some(m) = &self.metrics
                    {
                        m.recovery(since.elapsed());
                    }
                    retry.reset();
                    if !was_recovery {
                        rollbacks_in_row = 0;
                        rollback.reset();
                    }
                    self.report(MasterState::Running, "");
                    continue;
                }
                Ok(Progress::Waiting) => continue,
                Err(fault) => fault,
            };
            if let Some(m) = &self.metrics {
                m.failure(&fault.to_string());
            }
            self.recovering_since.get_or_insert_with(Instant::now);
            match fault.class() {
                Class::Lost => {
                    if let Fault::Lost { worker, why } = &fault {
                        tracing::error!(%worker, error = %why, "worker lost; rolling back to the last checkpoint");
                        self.runner.lost(worker);
                    }
                    // Lost between or during new batches: the others hold whole state, so only
                    // the lost partitions need rebuilding.
                    step = Step::Recover {
                        lost_only: !was_recovery && !changed,
                    };
                    self.summary.recoveries += 1;
                    self.report(MasterState::Recovering, &fault.to_string());
                }
                Class::Rollback => {
                    tracing::warn!(error = %fault, "rolling back to the last checkpoint");
                    self.summary.recoveries += 1;
                    step = Step::Recover { lost_only: false };
                    self.report(MasterState::Recovering, &fault.to_string());
                    // At once the first time; a cause that persists must not spin.
                    rollbacks_in_row += 1;
                    if rollbacks_in_row > 1 {
                        sleep_unless_stopped(rollback.next_wait(), stop);
                    }
                }
                Class::Retry => {
                    let wait = retry.next_wait();
                    if was_recovery {
                        tracing::error!(error = %fault, retry_in = ?wait, "cannot recover from the checkpoint yet; retrying");
                    } else {
                        tracing::error!(error = %fault, retry_in = ?wait, "batch failed; it will be recomputed from the last checkpoint (retrying)");
                    }
                    self.report(MasterState::CheckpointFailing, &fault.to_string());
                    sleep_unless_stopped(wait, stop);
                    // A recovery that fails again is still the same recovery.
                    if !was_recovery {
                        self.summary.recoveries += 1;
                    }
                    step = Step::Recover { lost_only: false };
                }
                Class::Damaged => {
                    // Every intact snapshot was tried (recovery falls back past damaged
                    // ones): no retry can repair what is left, so stop and say what to do.
                    let why = format!(
                        "{} is damaged and cannot be resumed: {fault}. Restore it from a copy, or give the job a new spec.checkpoint.uri (or delete this one) to start over without its state",
                        self.ckpt.describe()
                    );
                    self.report(MasterState::Failed, &why);
                    return Err(Fault::Damaged(why));
                }
                Class::Job => {
                    tracing::error!(error = %fault, "the job failed; running it again would fail the same way");
                    self.report(MasterState::Failed, &fault.to_string());
                    return Err(fault);
                }
                Class::Fatal => {
                    self.report(MasterState::Failed, &fault.to_string());
                    return Err(fault);
                }
            }
        }
        // What the writer holds is written before the process stops.
        if let Err(e) = self.settle() {
            tracing::warn!(error = %e, "the last checkpoint writes failed; the next start replays from the newest snapshot");
            self.report(MasterState::Stopped, "");
            return Ok(());
        }
        let last = self.next - 1;
        if step == Step::Run && last > self.last_snapshot && self.runner.placement_intact() {
            // A snapshot at shutdown means the next start replays nothing.
            match self.snapshot(last, true) {
                Ok(()) => {
                    tracing::info!(batch = last, checkpoint = %self.ckpt.describe(), "final checkpoint written")
                }
                Err(e) => {
                    tracing::warn!(batch = last, error = %e, "the final checkpoint failed; the next start replays from the one before")
                }
            }
        }
        self.report(MasterState::Stopped, "");
        Ok(())
    }

    /// One step while running: a rescale when workers changed, else the next batch when its
    /// time has come (until then, a cluster shows its workers it is alive).
    fn run_step(&mut self, changed: bool, stop: &AtomicBool) -> Result<Progress, Fault> {
        let taken = self.writer.take();
        self.absorb(taken)?;
        if changed {
            return self.rescale().map(|()| Progress::Done);
        }
        let batch = BatchInfo::new(self.zero, self.interval, self.next);
        let wait = if self.paced {
            self.schedule.until(batch.time_ms)
        } else {
            Duration::ZERO
        };
        if wait.is_zero() {
            return self.run_new_batch(batch).map(|()| Progress::Done);
        }
        self.runner.idle()?;
        sleep_unless_stopped(wait.min(TICK), stop);
        Ok(Progress::Waiting)
    }

    /// A new placement; the newest snapshot that loads; every batch logged after it run again.
    fn recover(&mut self) -> Result<Progress, Fault> {
        self.settle()?;
        // Batches whose commits a failure dropped run again from the log, and are told then.
        self.uncommitted.clear();
        self.runner.place(&self.job)?;
        let (base, positions) = self.restore_newest(None, u64::MAX)?;
        self.job.seek(&positions)?;
        self.last_snapshot = base;
        self.snapshot_taken = base;
        self.next = base + 1;
        self.replay_after(base, true)?;
        Ok(Progress::Done)
    }

    /// After a worker loss: the lost partitions are placed on other workers, loaded from the
    /// newest snapshot there, and brought up to the last committed batch from the state log;
    /// batches the log does not cover are run again for them alone (every worker reads its
    /// logged input and sends blocks to them only). The surviving partitions keep their
    /// state. Then the batch in flight runs again for every partition.
    fn recover_lost(&mut self) -> Result<Progress, Fault> {
        self.settle()?;
        let Some(moved) = self.runner.replace_lost(&self.job)? else {
            return self.recover();
        };
        let started = std::time::Instant::now();
        let committed = self.next - 1;
        let (mut base, mut replayed, mut from_log) = (committed, 0, 0);
        if !moved.is_empty() {
            base = self.restore_newest(Some(&moved), committed)?.0;
            // A batch's time follows from its index: the offset log is read only for the
            // batches the state log does not cover.
            let times: Vec<(u64, u64)> = (base + 1..=committed)
                .map(|b| (b, BatchInfo::new(self.zero, self.interval, b).time_ms))
                .collect();
            let log_plan = protocol::state_log_plan(&self.ckpt.state_log()?, &moved, &times);
            from_log = self.runner.apply_state_log(&log_plan, &moved)?;
            let rebuilt = base + from_log as u64;
            let plan = if rebuilt < committed {
                let logged = self.ckpt.offsets_after(rebuilt)?;
                protocol::replay_plan(rebuilt, logged, Some(committed)).map_err(Fault::Damaged)?
            } else {
                Vec::new()
            };
            if plan.last().map_or(rebuilt, |e| e.batch) != committed {
                return Err(Fault::Damaged(format!(
                    "the offset log after batch {rebuilt} ends before batch {committed}, the last committed"
                )));
            }
            for entry in plan {
                self.replay_batch(&entry, Some(&moved))?;
                replayed += 1;
            }
        }
        tracing::info!(
            partitions = ?moved,
            snapshot = base,
            from_log,
            replayed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rebuilt the lost partitions on other workers; the other partitions kept their state"
        );
        self.replay_after(committed, false)?;
        Ok(Progress::Done)
    }

    /// Runs every batch logged after `base` again, for every partition, and commits it;
    /// `restored`: `base` is the snapshot every partition was just loaded from.
    fn replay_after(&mut self, base: u64, restored: bool) -> Result<(), Fault> {
        let logged = self.ckpt.offsets_after(base)?;
        let plan = protocol::replay_plan(base, logged, self.stop_after).map_err(Fault::Damaged)?;
        if restored && (!plan.is_empty() || base > 0) {
            tracing::info!(
                snapshot = base,
                replay = plan.len(),
                "restored state; replaying logged batches"
            );
        } else if !plan.is_empty() {
            tracing::info!(
                batches = plan.len(),
                "running the batch in flight again for every partition"
            );
        }
        for entry in plan {
            let report = self.replay_batch(&entry, None)?;
            self.job.seek(&entry.positions)?;
            self.complete(report)?;
        }
        Ok(())
    }

    /// Runs a logged batch again from its logged ranges: for every partition, or for `redo`.
    fn replay_batch(
        &mut self,
        entry: &OffsetEntry,
        redo: Option<&[usize]>,
    ) -> Result<BatchReport, Fault> {
        let batch = BatchInfo {
            index: entry.batch,
            time_ms: entry.time_ms,
            interval_ms: self.interval,
        };
        self.runner.execute(
            &mut self.job,
            &self.ckpt,
            BatchInput {
                batch,
                ranges: &entry.ranges,
                logged: None,
                replay: true,
                redo,
                before_outputs: None,
            },
        )
    }

    /// Loads the newest snapshot (of a batch up to `at_most`) that is whole, by its manifest
    /// (the state itself is read by the runner, each worker its own partitions'): of every
    /// partition, or of `only`. Returns its batch and the sources' positions after it. A torn
    /// or damaged snapshot is skipped for the one before.
    fn restore_newest(
        &mut self,
        only: Option<&[usize]>,
        at_most: u64,
    ) -> Result<(u64, BTreeMap<String, Json>), Fault> {
        for batch in self.ckpt.snapshot_batches()? {
            if batch > at_most {
                continue;
            }
            let skip = |why: &str| {
                tracing::warn!(checkpoint = %self.ckpt.describe(), snapshot = batch, %why, "skipping an unusable snapshot; trying the previous one");
            };
            if !self.ckpt.has_manifest(batch)? {
                skip("no manifest (an interrupted snapshot)");
                continue;
            }
            let Some(offsets) = self.ckpt.read_offsets(batch)? else {
                skip("the offsets of its batch are missing");
                continue;
            };
            match self.runner.restore(&mut self.job, &self.ckpt, batch, only) {
                Ok(()) => return Ok((batch, offsets.positions)),
                Err(fault) if fault.class() == Class::Damaged => skip(&fault.to_string()),
                Err(fault) => return Err(fault),
            }
        }
        self.runner.restore(&mut self.job, &self.ckpt, 0, only)?;
        Ok((0, self.initial_positions.clone()))
    }

    /// Live rescale at a batch boundary: a snapshot by the present placement, a new one, the
    /// snapshot loaded; nothing replayed (or, when the snapshot could not be taken, a replay).
    fn rescale(&mut self) -> Result<(), Fault> {
        let last = self.next - 1;
        if last > self.last_snapshot
            && self.runner.placement_intact()
            && let Err(e) = self.settle().and_then(|()| self.snapshot(last, true))
        {
            tracing::warn!(error = %e, "the snapshot before the hand-off failed; replaying instead");
        }
        if self.last_snapshot != last {
            return self.recover().map(|_| ());
        }
        self.runner.place(&self.job)?;
        self.runner.restore(&mut self.job, &self.ckpt, last, None)?;
        tracing::info!(at_batch = last, "rescaled");
        Ok(())
    }

    fn run_new_batch(&mut self, batch: BatchInfo) -> Result<(), Fault> {
        let (mut ranges, positions) = self.job.plan_inputs(&batch)?;
        // Records that cannot be read again go to the write-ahead log before the batch is logged.
        let mut logged = BTreeMap::new();
        for (name, (key, bytes)) in self.job.log_inputs(&batch, self.epoch, &mut ranges)? {
            self.ckpt.put_log(&key, &bytes)?;
            logged.insert(name, bytes);
        }
        let entry = OffsetEntry {
            batch: batch.index,
            time_ms: batch.time_ms,
            epoch: self.epoch,
            ranges,
            positions,
        };
        // The entry is written beside the batch's run, which waits for it before its outputs
        // (see `log_ahead`).
        let (epoch, ckpt) = (self.epoch, &self.ckpt);
        let log_entry = || {
            // A newer master's claim stops this one before it logs the batch.
            if ckpt.superseded(epoch)? {
                return Ok(Logged::Taken { epoch: epoch + 1 });
            }
            ckpt.write_offsets(&entry)
        };
        let (log, executed) = std::thread::scope(|s| {
            let ahead = match std::thread::Builder::new()
                .name("sluice-log-ahead".into())
                .spawn_scoped(s, log_entry)
            {
                Ok(writing) => LogAhead::new(writing),
                // No thread to spare: written here, before the batch runs.
                Err(_) => LogAhead::done(log_entry()),
            };
            let before_outputs = || ahead.logged();
            let executed = self.runner.execute(
                &mut self.job,
                ckpt,
                BatchInput {
                    batch,
                    ranges: &entry.ranges,
                    logged: Some(&logged),
                    replay: false,
                    redo: None,
                    before_outputs: Some(&before_outputs),
                },
            );
            (ahead.finish(), executed)
        });
        if let Logged::Taken { epoch } = log? {
            return Err(if epoch > self.epoch {
                superseded(batch.index, self.epoch, epoch)
            } else {
                // An older master, still running, planned it first: run it as it logged it.
                Fault::Rollback(format!(
                    "batch {} was planned meanwhile by the master of epoch {epoch}; replaying it as logged",
                    batch.index
                ))
            });
        }
        self.complete(executed?)
    }

    /// Snapshots if due, then marks the batch complete (both written by the writer, off the
    /// batch path) and reports it.
    fn complete(&mut self, report: BatchReport) -> Result<(), Fault> {
        let batch = report.batch;
        if self.ckpt.snapshot_due(&batch, self.snapshot_taken) {
            // One snapshot at a time: a store slower than the snapshots holds the batches back
            // rather than piling encoded state up in memory.
            if self.writer.snapshot_pending() {
                self.settle()?;
            }
            self.snapshot(batch.index, false)?;
        }
        let now = now_ms();
        self.writer.submit(Write::Commit(CommitEntry {
            batch: batch.index,
            time_ms: batch.time_ms,
            epoch: self.epoch,
            records: report.records,
            record_errors: report.record_errors,
            processing_ms: report.processing.as_millis() as u64,
            committed_at_ms: now,
        }));
        self.job.on_commit(&batch);
        self.next = batch.index + 1;
        self.summary.batches += 1;
        self.summary.replayed += u64::from(report.replay);
        self.summary.last_batch = batch.index;
        let total_delay = Duration::from_millis(now.saturating_sub(batch.time_ms));
        let scheduling_delay = total_delay.saturating_sub(report.processing);
        let behind = if report.replay {
            None
        } else {
            self.lag
                .observe(scheduling_delay, Duration::from_millis(self.interval))
        };
        if !report.replay
            && let Some(rate) = self.rate.as_mut()
            && let Some(limit) = rate.compute(
                batch.time_ms,
                report.records,
                report.processing.as_millis() as u64,
                scheduling_delay.as_millis() as u64,
            )
        {
            self.job.limit_rate(Some(limit));
            self.rate_limit = Some(limit);
        }
        let progress = BatchProgress {
            scheduling_delay,
            total_delay,
            rate_limit: self.rate.as_ref().and(self.rate_limit),
            backlog: self.job.backlogs(),
            report,
        };
        // Its caller hears of it now (`sluice run` logs it, a benchmark times it); the status,
        // the metrics and the page once its commit entry is written (see `absorb`), so that
        // they show committed batches only.
        (self.on_batch)(&progress);
        self.uncommitted.push_back((progress, behind));
        Ok(())
    }

    /// Reports the batches up to `committed`, in order.
    fn report_committed(&mut self, committed: u64) {
        self.last_committed = self.last_committed.max(committed);
        while self
            .uncommitted
            .front()
            .is_some_and(|(p, _)| p.report.batch.index <= committed)
        {
            let Some((progress, behind)) = self.uncommitted.pop_front() else {
                break;
            };
            if self.recent.len() == RECENT_BATCHES {
                self.recent.pop_front();
            }
            let workers = self.runner.busy_workers();
            self.recent.push_back(BatchFigures::of(&progress, workers));
            if let Some(m) = &self.metrics {
                m.batch(&progress);
            }
            self.report(MasterState::Running, behind.as_deref().unwrap_or(""));
        }
    }

    /// Takes the snapshot of `batch` and hands it to the writer, which completes it; `wait`:
    /// until it is complete.
    fn snapshot(&mut self, batch: u64, wait: bool) -> Result<(), Fault> {
        let started = Instant::now();
        let files = match self.runner.snapshot(&self.job, &self.ckpt, batch) {
            Ok(files) => files,
            Err(fault) => {
                if let Some(m) = &self.metrics {
                    m.checkpoint(batch, started.elapsed(), false);
                }
                return Err(fault);
            }
        };
        self.snapshot_taken = batch;
        self.writer.submit(Write::Snapshot {
            batch,
            files,
            layout: self.job.state_layout(),
            operations: self.job.stateful_names().len(),
            partitions: self.job.partitions(),
            started,
        });
        if wait {
            self.settle()?;
            if self.last_snapshot != batch {
                return Err(Fault::Retry(format!(
                    "the snapshot of batch {batch} was not completed"
                )));
            }
        }
        Ok(())
    }

    /// Waits for every write handed to the writer, then as [`Coordinator::absorb`].
    fn settle(&mut self) -> Result<(), Fault> {
        let taken = self.writer.flush();
        self.absorb(taken)
    }

    /// Takes in what the writer did: each completed snapshot is the newest to recover from
    /// (the sources hear of it); a failed write is this step's fault.
    fn absorb(&mut self, taken: writer::Taken) -> Result<(), Fault> {
        if let Some(committed) = taken.committed {
            self.report_committed(committed);
        }
        for Written { batch, elapsed, ok } in taken.snapshots {
            if let Some(m) = &self.metrics {
                m.checkpoint(batch, elapsed, ok);
            }
            if ok && batch > self.last_snapshot {
                self.last_snapshot = batch;
                self.job
                    .on_checkpoint(&BatchInfo::new(self.zero, self.interval, batch));
            }
        }
        match taken.fault {
            Some(fault) => Err(fault),
            None => Ok(()),
        }
    }
}

/// The fault of the master of epoch `ours` when it finds, at `batch`, that a newer one (of
/// `theirs`) took its checkpoint over: it stops, writing nothing more.
fn superseded(batch: u64, ours: u64, theirs: u64) -> Fault {
    Fault::Fatal(format!(
        "another master took the checkpoint over (epoch {theirs}; this one has {ours}), found at batch {batch}. This master stops without writing more"
    ))
}

/// Sleeps up to `d`, waking early when `stop` is set; returns whether it was.
pub(crate) fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let step = Duration::from_millis(20);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
    stop.load(Ordering::Relaxed)
}
