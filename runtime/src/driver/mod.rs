//! The driver: the batch clock, the offset log, recovery and checkpoints around a [`Job`].
//!
//! Every batch: plan the sources' ranges → log them (`offsets/`) → read and run → snapshot
//! state if due → mark complete (`commits/`). Any retryable failure — a full disk, an
//! unwritable checkpoint directory, a source that cannot be read — fails the batch visibly,
//! waits, restores the last snapshot and replays the logged batches, then goes on. Nothing is
//! marked complete that was not durably written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value as Json;

use crate::checkpoint::{
    CheckpointStore, Checkpointer, CommitEntry, FORMAT_VERSION, JobMeta, MemoryStore, OffsetEntry,
};
use crate::error::{Error, Result};
use crate::job::{BatchReport, Job};
use crate::time::{BatchInfo, now_ms};

/// How a job is driven.
pub struct DriverOptions {
    /// The job's name, recorded in the checkpoint.
    pub job_name: String,
    /// The StreamingJob's uid, when the manifest has one; recorded in a new checkpoint.
    pub job_uid: Option<String>,
    /// Must match the checkpoint's to resume from it.
    pub fingerprint: String,
    /// Where checkpoints go; `None` keeps them in memory (in-process recovery only).
    pub store: Option<Box<dyn CheckpointStore>>,
    /// Snapshot every this many batches.
    pub snapshot_interval: u64,
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
}

/// A finished batch with its delays, as shown to the user.
#[derive(Clone, Debug)]
pub struct BatchProgress {
    pub report: BatchReport,
    /// From the batch's time to the start of its processing.
    pub scheduling_delay: Duration,
    /// From the batch's time to its completion.
    pub total_delay: Duration,
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

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Drives `job` until the stop flag, `stop_after`, or a non-retryable error.
pub fn run(mut job: Job, options: DriverOptions) -> Result<RunSummary> {
    let DriverOptions {
        job_name,
        job_uid,
        fingerprint,
        store,
        snapshot_interval,
        retain,
        stop_after,
        stop,
        paced,
        mut on_batch,
    } = options;
    let store = store.unwrap_or_else(|| Box::new(MemoryStore::default()));
    let ckpt = Checkpointer::new(store, snapshot_interval, retain);
    let interval = job.interval_ms();
    let meta = match ckpt.load_meta_checked()? {
        Some(meta) => {
            check_meta(&meta, &fingerprint, &job, &ckpt)?;
            tracing::info!(checkpoint = %ckpt.describe(), "resuming from checkpoint");
            meta
        }
        None => {
            let meta = JobMeta {
                format_version: FORMAT_VERSION,
                job: job_name,
                uid: job_uid,
                fingerprint,
                // The first batch ends at the next interval boundary.
                zero_time_ms: now_ms() / interval * interval,
                interval_ms: interval,
                partitions: job.partitions(),
            };
            ckpt.write_meta(&meta)?;
            meta
        }
    };
    let not_replayable = job.non_replayable_sources();
    if !not_replayable.is_empty() {
        tracing::info!(sources = ?not_replayable, "these sources are not replayable: records they delivered after the last checkpoint are lost if the process dies");
    }
    job.start_sources()?;
    let mut driver = Driver {
        job,
        ckpt,
        zero: meta.zero_time_ms,
        interval,
        initial_positions: BTreeMap::new(),
        next: 1,
        last_snapshot: 0,
        summary: RunSummary::default(),
        schedule: crate::time::Schedule::new(),
        lag: crate::time::Lag::default(),
    };
    driver.initial_positions = driver.job.positions();
    let result = driver.run_loop(stop_after, &stop, paced, &mut *on_batch);
    driver.job.close_sources();
    result.map(|()| driver.summary)
}

fn check_meta(meta: &JobMeta, fingerprint: &str, job: &Job, ckpt: &Checkpointer) -> Result<()> {
    let place = ckpt.describe();
    if meta.format_version != FORMAT_VERSION {
        return Err(Error::Config(format!(
            "checkpoint {place} has format version {}, this sluice reads {FORMAT_VERSION}; use a new checkpoint.uri",
            meta.format_version
        )));
    }
    if meta.fingerprint != fingerprint {
        return Err(Error::Config(format!(
            "checkpoint {place} belongs to a different job (job {:?}, fingerprint {} != {fingerprint}): the sources, pipeline, batch interval or parallelism changed. Point spec.checkpoint.uri at a new location, or delete the old checkpoint to start over",
            meta.job, meta.fingerprint
        )));
    }
    if meta.interval_ms != job.interval_ms() || meta.partitions != job.partitions() {
        return Err(Error::Config(format!(
            "checkpoint {place} was written with batch interval {}ms and {} partitions, the job has {}ms and {}",
            meta.interval_ms,
            meta.partitions,
            job.interval_ms(),
            job.partitions()
        )));
    }
    Ok(())
}

struct Driver {
    job: Job,
    ckpt: Checkpointer,
    zero: u64,
    interval: u64,
    initial_positions: BTreeMap<String, Json>,
    /// The next batch to plan.
    next: u64,
    last_snapshot: u64,
    summary: RunSummary,
    schedule: crate::time::Schedule,
    lag: crate::time::Lag,
}

impl Driver {
    fn run_loop(
        &mut self,
        stop_after: Option<u64>,
        stop: &AtomicBool,
        paced: bool,
        on_batch: &mut (dyn FnMut(&BatchProgress) + Send),
    ) -> Result<()> {
        self.recover_until_done(stop_after, stop, on_batch)?;
        let mut backoff = Duration::from_millis(200);
        while !stop.load(Ordering::Relaxed) && stop_after.is_none_or(|last| self.next <= last) {
            let batch = BatchInfo::new(self.zero, self.interval, self.next);
            if paced {
                let wait = self.schedule.until(batch.time_ms);
                if sleep_unless_stopped(wait, stop) {
                    break;
                }
            }
            match self.run_new_batch(batch, on_batch) {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) if e.is_retryable() => {
                    tracing::error!(batch = batch.index, error = %e, retry_in = ?backoff, "batch failed; it will be recomputed from the last checkpoint");
                    sleep_unless_stopped(backoff, stop);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    self.summary.recoveries += 1;
                    self.recover_until_done(stop_after, stop, on_batch)?;
                }
                Err(e) => return Err(e),
            }
        }
        let last = self.next - 1;
        if last > self.last_snapshot {
            // A snapshot at shutdown means the next start replays nothing.
            self.snapshot(last)?;
            tracing::debug!(batch = last, checkpoint = %self.ckpt.describe(), "final checkpoint written");
        }
        Ok(())
    }

    /// Recovers, retrying with back-off until it succeeds (or stop is asked): no new batch may
    /// run on a half-recovered state, whose sources and state could disagree with the log.
    fn recover_until_done(
        &mut self,
        stop_after: Option<u64>,
        stop: &AtomicBool,
        on_batch: &mut (dyn FnMut(&BatchProgress) + Send),
    ) -> Result<()> {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.recover(stop_after, on_batch) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && !stop.load(Ordering::Relaxed) => {
                    tracing::error!(error = %e, retry_in = ?backoff, "cannot recover from the checkpoint yet; retrying");
                    sleep_unless_stopped(backoff, stop);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                // Every intact snapshot was tried (`latest_snapshot` falls back past damaged
                // ones): no retry can repair what is left, so stop and say what to do.
                Err(Error::Checkpoint(why)) => {
                    return Err(Error::Checkpoint(format!(
                        "{} is damaged and cannot be resumed: {why}. Restore it from a copy, or give the job a new spec.checkpoint.uri (or delete this one) to start over without its state",
                        self.ckpt.describe()
                    )));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Loads the newest snapshot and replays every batch logged after it.
    fn recover(
        &mut self,
        stop_after: Option<u64>,
        on_batch: &mut (dyn FnMut(&BatchProgress) + Send),
    ) -> Result<()> {
        let snapshot = self.ckpt.latest_snapshot()?;
        self.job.restore(snapshot.as_ref())?;
        let base = snapshot.as_ref().map_or(0, |s| s.batch);
        let positions = match base {
            0 => self.initial_positions.clone(),
            b => {
                self.ckpt
                    .read_offsets(b)?
                    .ok_or_else(|| {
                        Error::Checkpoint(format!("the offsets of snapshot batch {b} are missing"))
                    })?
                    .positions
            }
        };
        self.job.seek(&positions)?;
        self.last_snapshot = base;
        self.next = base + 1;
        let logged = self.ckpt.offsets_after(base)?;
        if !logged.is_empty() || base > 0 {
            tracing::info!(
                snapshot = base,
                replay = logged.len(),
                "restored state; replaying logged batches"
            );
        }
        for entry in logged {
            if entry.batch != self.next {
                return Err(Error::Checkpoint(format!(
                    "the offset log jumps from batch {} to {}",
                    self.next - 1,
                    entry.batch
                )));
            }
            if stop_after.is_some_and(|last| entry.batch > last) {
                break;
            }
            let batch = BatchInfo {
                index: entry.batch,
                time_ms: entry.time_ms,
                interval_ms: self.interval,
            };
            let logged = self.ckpt.logged_inputs(&entry.ranges)?;
            let report = self.job.execute(batch, &entry.ranges, &logged, true)?;
            self.job.seek(&entry.positions)?;
            self.complete(report, on_batch)?;
        }
        Ok(())
    }

    fn run_new_batch(
        &mut self,
        batch: BatchInfo,
        on_batch: &mut (dyn FnMut(&BatchProgress) + Send),
    ) -> Result<()> {
        let (mut ranges, positions) = self.job.plan_inputs(&batch)?;
        // Records that cannot be read again go to the write-ahead log before the batch is logged.
        let mut logged = BTreeMap::new();
        for (name, (key, bytes)) in self.job.log_inputs(&batch, &mut ranges)? {
            self.ckpt.put_log(&key, &bytes)?;
            logged.insert(name, bytes);
        }
        self.ckpt.write_offsets(&OffsetEntry {
            batch: batch.index,
            time_ms: batch.time_ms,
            ranges: ranges.clone(),
            positions,
        })?;
        let report = self.job.execute(batch, &ranges, &logged, false)?;
        self.complete(report, on_batch)
    }

    /// Snapshots if due, then marks the batch complete and reports it.
    fn complete(
        &mut self,
        report: BatchReport,
        on_batch: &mut (dyn FnMut(&BatchProgress) + Send),
    ) -> Result<()> {
        let batch = report.batch;
        if batch.index.is_multiple_of(self.ckpt.interval) {
            self.snapshot(batch.index)?;
        }
        let now = now_ms();
        self.ckpt.write_commit(&CommitEntry {
            batch: batch.index,
            time_ms: batch.time_ms,
            records: report.records,
            record_errors: report.record_errors,
            processing_ms: report.processing.as_millis() as u64,
            committed_at_ms: now,
        })?;
        self.next = batch.index + 1;
        self.summary.batches += 1;
        self.summary.replayed += u64::from(report.replay);
        self.summary.last_batch = batch.index;
        let total_delay = Duration::from_millis(now.saturating_sub(batch.time_ms));
        let scheduling_delay = total_delay.saturating_sub(report.processing);
        if !report.replay {
            self.lag
                .observe(scheduling_delay, Duration::from_millis(self.interval));
        }
        let progress = BatchProgress {
            scheduling_delay,
            total_delay,
            report,
        };
        on_batch(&progress);
        Ok(())
    }

    fn snapshot(&mut self, batch: u64) -> Result<()> {
        let snapshot = self.job.snapshot(batch)?;
        self.ckpt.write_snapshot(&snapshot)?;
        self.last_snapshot = batch;
        self.job
            .on_checkpoint(&BatchInfo::new(self.zero, self.interval, batch));
        self.ckpt.prune()
    }
}

/// Sleeps up to `d`, waking early when `stop` is set; returns whether it was.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
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
