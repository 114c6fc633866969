//! The checkpoint writes that follow a batch's outputs, done off the batch path.
//!
//! A batch is safe once its offset entry is logged and its outputs are written: a replay
//! recomputes it from the logged ranges, identically. What comes after — the directory sync
//! that makes its output files' names durable, its commit entry (a record of what it took,
//! and a fence against a replaced master), and a snapshot's state files, manifest and
//! pruning — changes no output, so the loop hands it to this writer's thread and plans the
//! next batch at once. With 10 ms batches these fsyncs and the snapshot of a large state no
//! longer sit on every batch's latency, and one directory sync covers every batch written
//! while the writer was busy.
//!
//! Writes go out in order, one at a time. A failed one is kept for the loop, which takes it
//! at its next look ([`CheckpointWriter::take`]) and recovers; the writes queued behind it are
//! dropped (recovery replays every batch after the newest complete snapshot and writes them
//! again). Recovery and every read of what was written wait for the queue to drain first
//! ([`CheckpointWriter::flush`]).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Fault;
use super::protocol;
use crate::checkpoint::{Checkpointer, CommitEntry, Logged, Snapshot, StateFile, StateLayout};
use crate::exec::Outputs;

/// The writer thread's nice value: below the task threads, so that a snapshot's bytes (copied,
/// checksummed, fsynced: tens of milliseconds of CPU for a large state) are written in the
/// time the batches leave the cores idle rather than taken from the batch that runs beside
/// them. It still gets a share when they never idle, and its waits are for the disk, not CPU.
const WRITER_NICE: i32 = 10;

/// Lowers this thread's priority to [`WRITER_NICE`] (Linux: nice values are per thread). A
/// refusal costs nothing but the batches' share, so it is logged, not raised.
fn yield_to_batches() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let me = Some(rustix::thread::gettid());
        let current = getpriority_process(me).unwrap_or(0);
        if let Err(e) = setpriority_process(me, current.max(WRITER_NICE)) {
            tracing::debug!(error = %e, "the checkpoint writer keeps the batches' priority");
        }
    }
}

/// Writes queued before [`CheckpointWriter::submit`] waits: a store slower than the batches
/// then slows the batches rather than letting entries pile up.
const MAX_QUEUED: usize = 16;

/// A snapshot's state files, as the runner leaves them.
pub enum StateFiles {
    /// Written already (by the workers that hold the partitions).
    Written(Vec<StateFile>),
    /// Encoded in this process, for the writer to write.
    Encoded(Snapshot),
}

/// One write, after the batch it belongs to has written its outputs.
pub(super) enum Write {
    /// Marks a batch complete, unless a newer master took the checkpoint over.
    Commit(CommitEntry),
    /// Completes the snapshot of `batch`: its state files (unless written), a check that they
    /// cover every partition of every stateful operation, the manifest; then prunes what it
    /// makes unneeded.
    Snapshot {
        batch: u64,
        files: StateFiles,
        layout: StateLayout,
        operations: usize,
        partitions: usize,
        /// When the snapshot was taken, for the time it took.
        started: Instant,
    },
}

/// A snapshot the writer completed (its manifest written), or failed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Written {
    pub batch: u64,
    pub elapsed: Duration,
    pub ok: bool,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Write>,
    /// A write is under way.
    busy: bool,
    /// The first failure since the loop last looked.
    fault: Option<Fault>,
    snapshots: Vec<Written>,
    /// The newest batch whose commit entry was written since the loop last looked.
    committed: Option<u64>,
    /// Snapshots queued or under way.
    snapshots_pending: usize,
    closing: bool,
    /// The thread has ended (see [`Gone`]).
    gone: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer thread and its queue.
pub(super) struct CheckpointWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl CheckpointWriter {
    /// A writer for the master of `epoch`, which syncs `outputs` before each write.
    pub fn start(ckpt: Arc<Checkpointer>, epoch: u64, outputs: Outputs) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let inner = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-ckpt-writer".into())
            .spawn(move || write_loop(&inner, &ckpt, epoch, &outputs))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues a write; waits while [`MAX_QUEUED`] are queued already.
    pub fn submit(&self, write: Write) {
        let mut state = self.shared.lock();
        while state.queue.len() >= MAX_QUEUED && state.fault.is_none() && !state.gone {
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        if matches!(write, Write::Snapshot { .. }) {
            state.snapshots_pending += 1;
        }
        state.queue.push_back(write);
        self.shared.changed.notify_all();
    }

    /// Whether a snapshot is queued or being written.
    pub fn snapshot_pending(&self) -> bool {
        self.shared.lock().snapshots_pending > 0
    }

    /// The snapshots completed (or failed) since the last look, oldest first, and the first
    /// write that failed since then (the writes behind it were dropped).
    pub fn take(&self) -> Taken {
        take(&mut self.shared.lock())
    }

    /// Waits until every queued write is done, then as [`CheckpointWriter::take`].
    pub fn flush(&self) -> Taken {
        let mut state = self.shared.lock();
        while (!state.queue.is_empty() || state.busy) && !state.gone {
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        take(&mut state)
    }
}

/// What the writer did since the loop last looked.
pub(super) struct Taken {
    pub snapshots: Vec<Written>,
    /// The newest batch committed since.
    pub committed: Option<u64>,
    pub fault: Option<Fault>,
}

fn take(state: &mut State) -> Taken {
    if state.gone && !state.closing && state.fault.is_none() {
        state.fault = Some(Fault::Fatal(
            "the checkpoint writer thread stopped (a bug: see the panic above); nothing more can be committed, so the job stops. Restarting it resumes from the checkpoint".into(),
        ));
    }
    Taken {
        snapshots: std::mem::take(&mut state.snapshots),
        committed: state.committed.take(),
        fault: state.fault.take(),
    }
}

impl Drop for CheckpointWriter {
    /// Writes what is queued, then stops the thread.
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the checkpoint writer thread panicked");
        }
    }
}

/// Marks the writer gone when its thread ends, however it ends: after a panic the loop gets a
/// fault at its next look instead of waiting for writes that will never be done.
struct Gone<'a>(&'a Shared);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.gone = true;
        state.busy = false;
        state.queue.clear();
        state.snapshots_pending = 0;
        self.0.changed.notify_all();
    }
}

fn write_loop(shared: &Shared, ckpt: &Checkpointer, epoch: u64, outputs: &Outputs) {
    let _gone = Gone(shared);
    yield_to_batches();
    loop {
        let write = {
            let mut state = shared.lock();
            loop {
                if let Some(write) = state.queue.pop_front() {
                    state.busy = true;
                    break write;
                }
                if state.closing {
                    return;
                }
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
        };
        let is_snapshot = matches!(write, Write::Snapshot { .. });
        // After a failure nothing more is written until the loop has seen it: recovery writes
        // it all again, in order.
        let skip = shared.lock().fault.is_some();
        let outcome = if skip {
            Ok(Done::Skipped)
        } else {
            perform(ckpt, epoch, outputs, write)
        };
        let mut state = shared.lock();
        state.busy = false;
        if is_snapshot {
            state.snapshots_pending = state.snapshots_pending.saturating_sub(1);
        }
        match outcome {
            Ok(Done::Snapshot(done)) => state.snapshots.push(done),
            Ok(Done::Commit(batch)) => {
                state.committed = Some(state.committed.map_or(batch, |c| c.max(batch)));
            }
            Ok(Done::Skipped) => {}
            Err((fault, failed)) => {
                if let Some(failed) = failed {
                    state.snapshots.push(failed);
                }
                if state.fault.is_none() {
                    state.fault = Some(fault);
                }
            }
        }
        shared.changed.notify_all();
    }
}

/// What a write did.
enum Done {
    Commit(u64),
    Snapshot(Written),
    /// Dropped behind a failure.
    Skipped,
}

type Outcome = Result<Done, (Fault, Option<Written>)>;

fn perform(ckpt: &Checkpointer, epoch: u64, outputs: &Outputs, write: Write) -> Outcome {
    // Outputs first: what a commit or a snapshot covers must survive a crash of the machine
    // (a replay after it does not rewrite the batches a snapshot covers).
    if let Err(e) = outputs.sync() {
        let failed = match &write {
            Write::Snapshot { batch, started, .. } => Some(Written {
                batch: *batch,
                elapsed: started.elapsed(),
                ok: false,
            }),
            Write::Commit(_) => None,
        };
        return Err((Fault::from(e), failed));
    }
    match write {
        Write::Commit(entry) => commit(ckpt, epoch, &entry)
            .map(|()| Done::Commit(entry.batch))
            .map_err(|f| (f, None)),
        Write::Snapshot {
            batch,
            files,
            layout,
            operations,
            partitions,
            started,
        } => {
            let result = complete_snapshot(ckpt, batch, files, layout, operations, partitions);
            let written = Written {
                batch,
                elapsed: started.elapsed(),
                ok: result.is_ok(),
            };
            // Pruning after a complete snapshot: if it fails, the snapshot still counts.
            match result.and_then(|()| Ok(ckpt.prune()?)) {
                Ok(()) => Ok(Done::Snapshot(written)),
                Err(fault) => Err((fault, Some(written))),
            }
        }
    }
}

/// Committed already by this master or an older one (a replayed batch), from the same logged
/// input: done. By a newer one, or a newer one claimed the checkpoint: this master was
/// replaced, and writes nothing more.
fn commit(ckpt: &Checkpointer, epoch: u64, entry: &CommitEntry) -> Result<(), Fault> {
    if ckpt.superseded(epoch)? {
        return Err(super::superseded(entry.batch, epoch, epoch + 1));
    }
    match ckpt.write_commit(entry)? {
        Logged::Taken { epoch: theirs } if theirs > epoch => {
            Err(super::superseded(entry.batch, epoch, theirs))
        }
        _ => Ok(()),
    }
}

fn complete_snapshot(
    ckpt: &Checkpointer,
    batch: u64,
    files: StateFiles,
    layout: StateLayout,
    operations: usize,
    partitions: usize,
) -> Result<(), Fault> {
    let (files, base) = match files {
        StateFiles::Written(files) => (files, None),
        StateFiles::Encoded(snapshot) => (ckpt.write_state_files(&snapshot)?, snapshot.base),
    };
    protocol::check_coverage(batch, &files, operations, partitions).map_err(Fault::Rollback)?;
    ckpt.write_manifest(batch, files, Some(layout), base)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::MemoryStore;
    use crate::exec::{BatchContext, Task};
    use std::sync::atomic::{AtomicBool, Ordering};

    fn commit_entry(batch: u64, epoch: u64) -> CommitEntry {
        CommitEntry {
            batch,
            time_ms: batch * 100,
            epoch,
            records: 1,
            record_errors: 0,
            processing_ms: 1,
            committed_at_ms: 0,
        }
    }

    fn checkpointer() -> Arc<Checkpointer> {
        Arc::new(Checkpointer::new(Box::new(MemoryStore::default()), 10, 2))
    }

    #[test]
    fn commits_are_written_in_order_by_the_time_flush_returns() {
        let ckpt = checkpointer();
        let epoch = ckpt.claim_epoch().expect("epoch");
        let writer = CheckpointWriter::start(ckpt.clone(), epoch, Outputs::none()).expect("thread");
        for batch in 1..=40 {
            writer.submit(Write::Commit(commit_entry(batch, epoch)));
        }
        let taken = writer.flush();
        assert!(taken.fault.is_none() && taken.snapshots.is_empty());
        assert_eq!(taken.committed, Some(40));
        let last = ckpt.last_commit().expect("read").expect("a commit");
        assert_eq!(last.batch, 40);
    }

    #[test]
    fn a_replaced_master_stops_at_its_next_commit_and_writes_nothing_after() {
        let ckpt = checkpointer();
        let old = ckpt.claim_epoch().expect("epoch");
        let writer = CheckpointWriter::start(ckpt.clone(), old, Outputs::none()).expect("thread");
        writer.submit(Write::Commit(commit_entry(1, old)));
        assert!(writer.flush().fault.is_none());
        let newer = ckpt.claim_epoch().expect("newer epoch");
        assert!(newer > old);
        writer.submit(Write::Commit(commit_entry(2, old)));
        writer.submit(Write::Commit(commit_entry(3, old)));
        let fault = writer.flush().fault.expect("superseded");
        assert!(
            fault
                .to_string()
                .contains("another master took the checkpoint over"),
            "{fault}"
        );
        assert_eq!(fault.class(), super::super::Class::Fatal);
        assert_eq!(ckpt.last_commit().expect("read").map(|c| c.batch), Some(1));
        // Seen once: the loop recovers (or stops) and the writer is usable again.
        assert!(writer.flush().fault.is_none(), "the fault was taken");
    }

    /// A store with a bug: it panics on every write.
    struct Panicking;

    impl crate::checkpoint::CheckpointStore for Panicking {
        fn describe(&self) -> String {
            "panicking".into()
        }
        fn put(&self, key: &str, _: &[u8]) -> sluice_storage::Result<()> {
            panic!("a store bug writing {key}")
        }
        fn put_new(&self, key: &str, _: &[u8]) -> sluice_storage::Result<bool> {
            panic!("a store bug writing {key}")
        }
        fn get(&self, _: &str) -> sluice_storage::Result<Option<Vec<u8>>> {
            Ok(None)
        }
        fn list(&self, _: &str) -> sluice_storage::Result<Vec<String>> {
            Ok(Vec::new())
        }
        fn delete(&self, _: &str) -> sluice_storage::Result<()> {
            Ok(())
        }
    }

    /// The nice value of the calling thread, as the kernel reports it.
    #[cfg(target_os = "linux")]
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // Fields after the command's closing parenthesis start at the third (state); the
        // nice value is the nineteenth.
        let (_, rest) = stat.rsplit_once(')').expect("a command name");
        rest.split_whitespace()
            .nth(16)
            .and_then(|n| n.parse().ok())
            .expect("a nice value")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_writer_thread_runs_below_the_task_threads() {
        let (before, after) = std::thread::spawn(|| {
            let before = own_nice();
            yield_to_batches();
            (before, own_nice())
        })
        .join()
        .expect("thread");
        assert_eq!(after, before.max(WRITER_NICE), "from {before}");
        // The thread that asked is the only one lowered.
        assert_eq!(own_nice(), before);
    }

    #[test]
    fn a_writer_thread_that_panicked_is_a_fault_not_a_wait() {
        let ckpt = Arc::new(Checkpointer::new(Box::new(Panicking), 10, 2));
        let writer = CheckpointWriter::start(ckpt, 1, Outputs::none()).expect("thread");
        writer.submit(Write::Commit(commit_entry(1, 1)));
        let fault = writer.flush().fault.expect("the thread is gone");
        assert_eq!(fault.class(), super::super::Class::Fatal);
        // Every later look says so too, and nothing waits.
        for _ in 0..MAX_QUEUED + 2 {
            writer.submit(Write::Commit(commit_entry(2, 1)));
        }
        assert!(writer.flush().fault.is_some());
        assert!(writer.take().fault.is_some());
    }

    #[test]
    fn an_encoded_snapshot_is_written_checked_and_reported() {
        let ckpt = checkpointer();
        let epoch = ckpt.claim_epoch().expect("epoch");
        let writer = CheckpointWriter::start(ckpt.clone(), epoch, Outputs::none()).expect("thread");
        let mut parts = std::collections::BTreeMap::new();
        parts.insert(("count".to_string(), 0), b"zero".to_vec());
        parts.insert(("count".to_string(), 1), b"one".to_vec());
        let snapshot = |batch, parts| Write::Snapshot {
            batch,
            files: StateFiles::Encoded(Snapshot {
                batch,
                parts,
                ..Snapshot::default()
            }),
            layout: StateLayout::default(),
            operations: 1,
            partitions: 2,
            started: Instant::now(),
        };
        writer.submit(snapshot(10, parts.clone()));
        let done = writer.flush().snapshots;
        assert_eq!(done.len(), 1);
        assert!(done[0].ok && done[0].batch == 10);
        assert!(!writer.snapshot_pending());
        let read = ckpt.snapshot_at(10).expect("readable");
        let chains: std::collections::BTreeMap<_, _> = parts
            .iter()
            .map(|(part, bytes)| (part.clone(), vec![bytes.clone()]))
            .collect();
        assert_eq!(read.parts, chains);

        // A partition missing: no manifest, and the loop hears of it.
        parts.remove(&("count".to_string(), 1));
        writer.submit(snapshot(20, parts));
        let taken = writer.flush();
        let fault = taken.fault.expect("coverage");
        assert_eq!(fault.class(), super::super::Class::Rollback);
        assert_eq!(taken.snapshots.len(), 1);
        assert!(!taken.snapshots[0].ok);
        assert!(!ckpt.has_manifest(20).expect("read"));
    }

    /// An output that notes the last commit each time it is synced, and fails when told to.
    struct Output {
        ckpt: Arc<Checkpointer>,
        seen: Mutex<Vec<Option<u64>>>,
        fail: AtomicBool,
    }

    impl Task for Output {
        fn run(&self, _: &BatchContext, _: usize) -> crate::Result<()> {
            Ok(())
        }

        fn sync(&self) -> crate::Result<()> {
            let last = self.ckpt.last_commit()?.map(|c| c.batch);
            self.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(last);
            if self.fail.load(Ordering::SeqCst) {
                return Err(crate::Error::Output {
                    output: "files".into(),
                    message: "no space left on device".into(),
                });
            }
            Ok(())
        }
    }

    #[test]
    fn outputs_are_synced_before_each_commit_and_a_failed_sync_commits_nothing() {
        let ckpt = checkpointer();
        let epoch = ckpt.claim_epoch().expect("epoch");
        let output = Arc::new(Output {
            ckpt: ckpt.clone(),
            seen: Mutex::default(),
            fail: AtomicBool::new(false),
        });
        let outputs = Outputs::new(&[output.clone() as Arc<dyn Task>]);
        let writer = CheckpointWriter::start(ckpt.clone(), epoch, outputs).expect("thread");
        for batch in 1..=3 {
            writer.submit(Write::Commit(commit_entry(batch, epoch)));
        }
        assert!(writer.flush().fault.is_none());
        // Each sync came before the commit it covers.
        assert_eq!(
            *output.seen.lock().expect("lock"),
            vec![None, Some(1), Some(2)]
        );
        output.fail.store(true, Ordering::SeqCst);
        writer.submit(Write::Commit(commit_entry(4, epoch)));
        let fault = writer.flush().fault.expect("the sync failed");
        assert!(fault.to_string().contains("no space left"), "{fault}");
        assert_eq!(ckpt.last_commit().expect("read").map(|c| c.batch), Some(3));
    }
}
