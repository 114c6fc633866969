//! The worker's executor thread: job work (tasks, state, checkpoint I/O) runs on one thread
//! fed by commands, so that the gRPC handlers only pass messages and shuffle blocks from peers
//! are accepted while a stage runs (and the S3 client can block on its own runtime).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tonic::Status;

use crate::checkpoint::Checkpointer;
use crate::exec::{BatchContext, Placement, StateInputs, lock_unpoisoned};
use crate::job::Job;
use crate::rpc::pb;
use crate::time::BatchInfo;

pub type Reply<T> = oneshot::Sender<Result<T, Status>>;

pub enum Command {
    Assign {
        owners: Vec<usize>,
        me: usize,
        /// Write the state log after each batch.
        state_log: bool,
        reply: Reply<()>,
    },
    Restore {
        batch: u64,
        /// Only these partitions, leaving the others' state as it is.
        only: Option<Vec<usize>>,
        reply: Reply<()>,
    },
    ApplyStateLog {
        parts: Vec<usize>,
        /// Consecutive batches, each with the state log objects to read.
        batches: Vec<(BatchInfo, Vec<String>)>,
        /// How many batches every owned partition of `parts` took.
        reply: Reply<u32>,
    },
    Begin {
        batch: BatchInfo,
        ranges: BTreeMap<String, serde_json::Value>,
        replay: bool,
        /// Recompute the state and outputs of these partitions only.
        redo: Option<Vec<usize>>,
        reply: Reply<()>,
    },
    Stage {
        batch: u64,
        stage: usize,
        reply: Reply<StageDone>,
    },
    Snapshot {
        batch: u64,
        reply: Reply<Vec<pb::StateFile>>,
    },
}

/// A stage run: the blocks for other workers, and what the batch has done here so far.
pub struct StageDone {
    pub outgoing: Vec<crate::exec::OutgoingBlock>,
    pub reply: pb::StageReply,
}

/// The batch in progress, shared with the handler that accepts peers' blocks.
pub type Current = Arc<Mutex<Option<(u64, u64, Arc<BatchContext>)>>>;

/// An engine error as the master reads it: the message, and whose fault it is.
fn internal(e: crate::Error) -> Status {
    crate::rpc::engine_status(&e)
}

/// Runs job work on its own thread (the S3 client blocks on its own runtime).
pub fn executor_thread(
    mut job: Job,
    ckpt: Checkpointer,
    current: Current,
    epoch: Arc<AtomicU64>,
    commands: std::sync::mpsc::Receiver<Command>,
) {
    let mut placement: Option<Arc<Placement>> = None;
    // The state inputs of the batch in progress, kept across its runs: a batch run again
    // skips the operations a partition already took it for, whose inputs the first run holds.
    let mut pending = PendingLog::default();
    let mut keep_state_log = false;
    for command in commands {
        match command {
            Command::Assign {
                owners,
                me,
                state_log,
                reply,
            } => {
                if owners.len() != job.partitions() {
                    let _ = reply.send(Err(Status::invalid_argument(format!(
                        "an assignment of {} partitions, but the job has {}",
                        owners.len(),
                        job.partitions()
                    ))));
                    continue;
                }
                placement = Some(Arc::new(Placement { owners, me }));
                keep_state_log =
                    state_log && job.partitions() <= crate::checkpoint::state_log::MAX_PARTITIONS;
                *lock_unpoisoned(&current) = None;
                let _ = reply.send(Ok(()));
            }
            Command::Restore { batch, only, reply } => {
                let result = (|| {
                    let p = placement
                        .clone()
                        .ok_or_else(|| Status::failed_precondition("no assignment yet"))?;
                    let owned = |part: usize| p.owners.get(part) == Some(&p.me);
                    if let Some(parts) = &only {
                        // Moved here from a lost worker: the others keep their state.
                        let mine: Vec<usize> =
                            parts.iter().copied().filter(|part| owned(*part)).collect();
                        let snapshot = match batch {
                            0 => None,
                            b => Some(
                                ckpt.read_state(b, job.partitions(), &|part| mine.contains(&part))
                                    .map_err(internal)?,
                            ),
                        };
                        job.restore_partitions(snapshot.as_ref(), &mine)
                            .map_err(internal)?;
                        *lock_unpoisoned(&current) = None;
                        tracing::info!(snapshot = batch, partitions = ?mine, "state restored for the partitions moved here");
                        return Ok(());
                    }
                    // Only the owned partitions' files are read.
                    let snapshot = if batch == 0 {
                        None
                    } else {
                        Some(
                            ckpt.read_state(batch, job.partitions(), &owned)
                                .map_err(internal)?,
                        )
                    };
                    job.restore_owned(snapshot.as_ref(), &owned)
                        .map_err(internal)?;
                    pending = PendingLog::default();
                    *lock_unpoisoned(&current) = None;
                    tracing::info!(snapshot = batch, "state restored for the owned partitions");
                    Ok(())
                })();
                let _ = reply.send(result);
            }
            Command::ApplyStateLog {
                parts,
                batches,
                reply,
            } => {
                let result = placement
                    .clone()
                    .ok_or_else(|| Status::failed_precondition("no assignment yet"))
                    .and_then(|p| apply_state_log(&job, &ckpt, p, &parts, batches));
                let _ = reply.send(result);
            }
            Command::Begin {
                batch,
                ranges,
                replay,
                redo,
                reply,
            } => {
                let result = (|| {
                    let p = placement
                        .clone()
                        .ok_or_else(|| Status::failed_precondition("no assignment yet"))?;
                    let batch = BatchInfo {
                        interval_ms: job.interval_ms(),
                        ..batch
                    };
                    let logged = ckpt.logged_inputs(&ranges).map_err(internal)?;
                    let mut cx = job
                        .begin(batch, &ranges, &logged, replay, p, redo.as_deref())
                        .map_err(internal)?;
                    if keep_state_log {
                        cx = cx.recording_state_inputs();
                        pending.begin(&job, batch);
                    }
                    *lock_unpoisoned(&current) =
                        Some((epoch.load(Ordering::SeqCst), batch.index, Arc::new(cx)));
                    Ok(())
                })();
                let _ = reply.send(result);
            }
            Command::Stage {
                batch,
                stage,
                reply,
            } => {
                let cx = lock_unpoisoned(&current).clone();
                let Some((_, _, cx)) = cx.filter(|(_, b, _)| *b == batch) else {
                    let _ = reply.send(Err(Status::failed_precondition(format!(
                        "batch {batch} was not begun"
                    ))));
                    continue;
                };
                let result = job.run_stage(&cx, stage).map_err(internal);
                let ok = result.is_ok();
                if ok {
                    pending.add(batch, cx.take_state_inputs());
                }
                let last = ok && pending.is_last_stage(batch, stage);
                let _ = reply.send(result.map(|()| StageDone {
                    outgoing: cx.take_outgoing(),
                    reply: pb::StageReply {
                        records: cx.input_records(),
                        record_errors: cx.errors().count(),
                        error_samples: cx.errors().samples(),
                    },
                }));
                // After the answer, while the master commits: off the batch's path.
                if last {
                    pending.write(&ckpt, &cx);
                }
            }
            Command::Snapshot { batch, reply } => {
                let result = (|| {
                    let p = placement
                        .clone()
                        .ok_or_else(|| Status::failed_precondition("no assignment yet"))?;
                    let owned: Vec<usize> = (0..job.partitions())
                        .filter(|part| p.owners.get(*part) == Some(&p.me))
                        .collect();
                    let snapshot = job.snapshot_of(batch, &owned).map_err(internal)?;
                    let files = ckpt.write_state_files(&snapshot).map_err(internal)?;
                    Ok(files
                        .into_iter()
                        .map(|f| pb::StateFile {
                            key: f.key,
                            len: f.len,
                            crc32: f.crc32,
                        })
                        .collect())
                })();
                let _ = reply.send(result);
            }
        }
    }
}

/// Batches of the state log read at once.
const LOG_READ_AHEAD: usize = 64;

/// The state inputs recorded for one batch so far.
#[derive(Default)]
struct PendingLog {
    batch: u64,
    /// The batch's stages, and which of them are materializers: from its plan, once.
    stages: usize,
    materializers: Vec<usize>,
    inputs: StateInputs,
}

impl PendingLog {
    /// A batch begins; one begun again keeps what its earlier run recorded.
    fn begin(&mut self, job: &Job, batch: BatchInfo) {
        if batch.index != self.batch {
            let plan = job.graph().plan(batch);
            *self = PendingLog {
                batch: batch.index,
                stages: plan.stages.len(),
                materializers: plan.materializers(),
                inputs: StateInputs::new(),
            };
        }
    }

    fn add(&mut self, batch: u64, inputs: StateInputs) {
        if batch == self.batch {
            self.inputs.extend(inputs);
        }
    }

    fn is_last_stage(&self, batch: u64, stage: usize) -> bool {
        batch == self.batch && stage + 1 == self.stages
    }

    /// Writes the batch's state log for the partitions whose every stateful operation's input
    /// is here. A failure is only logged: the batch is then recomputed if it is ever needed.
    fn write(&self, ckpt: &Checkpointer, cx: &BatchContext) {
        if self.materializers.is_empty() {
            return;
        }
        let covered: Vec<usize> = cx
            .reduced_partitions()
            .into_iter()
            .filter(|p| {
                self.materializers
                    .iter()
                    .all(|m| self.inputs.contains_key(&(*m, *p)))
            })
            .collect();
        if covered.is_empty() {
            return;
        }
        if let Err(e) = ckpt.put_state_log(self.batch, &covered, &self.inputs) {
            tracing::warn!(batch = self.batch, error = %e, "could not write the state log; a lost partition would recompute this batch");
        }
    }
}

/// Brings the owned partitions of `parts` up to each of `batches` in turn from the state log;
/// stops at a batch whose log is incomplete or unreadable for them. Returns how many batches
/// they took.
fn apply_state_log(
    job: &Job,
    ckpt: &Checkpointer,
    placement: Arc<Placement>,
    parts: &[usize],
    batches: Vec<(BatchInfo, Vec<String>)>,
) -> Result<u32, Status> {
    let mine: Vec<usize> = parts
        .iter()
        .copied()
        .filter(|p| placement.owners.get(*p) == Some(&placement.me))
        .collect();
    let total = batches.len() as u32;
    if mine.is_empty() {
        return Ok(total);
    }
    let started = std::time::Instant::now();
    let mut reading = std::time::Duration::ZERO;
    let covers_mine = |key: &String| {
        key.rsplit('/')
            .next()
            .and_then(crate::checkpoint::state_log::parse)
            .is_some_and(|(_, covered)| covered.iter().any(|p| mine.contains(p)))
    };
    // Of each batch's objects, those that hold partitions of this worker.
    let batches: Vec<(BatchInfo, Vec<String>)> = batches
        .into_iter()
        .map(|(batch, keys)| (batch, keys.into_iter().filter(covers_mine).collect()))
        .collect();
    let mut applied = 0u32;
    // Read a chunk of batches' objects at once, then apply them in order.
    for chunk in batches.chunks(LOG_READ_AHEAD) {
        let wanted: Vec<(String, u64)> = chunk
            .iter()
            .flat_map(|(batch, keys)| keys.iter().map(|k| (k.clone(), batch.index)))
            .collect();
        let read_started = std::time::Instant::now();
        let read = ckpt.read_state_logs(&wanted);
        reading += read_started.elapsed();
        let mut read = match read {
            Ok(read) => read.into_iter(),
            Err(e) => {
                tracing::warn!(error = %e, "the state log cannot be read; recomputing the rest");
                return Ok(applied);
            }
        };
        for (batch, keys) in chunk {
            let batch = BatchInfo {
                interval_ms: job.interval_ms(),
                ..*batch
            };
            let mut inputs = StateInputs::new();
            for object in read.by_ref().take(keys.len()) {
                match object {
                    Ok(more) => {
                        inputs.extend(more.into_iter().filter(|((_, p), _)| mine.contains(p)))
                    }
                    Err(e) => {
                        tracing::warn!(batch = batch.index, error = %e, "the state log is unusable here; recomputing from this batch");
                        return Ok(applied);
                    }
                }
            }
            let materializers = job.graph().plan(batch).materializers();
            let whole = mine
                .iter()
                .all(|p| materializers.iter().all(|m| inputs.contains_key(&(*m, *p))));
            if !whole {
                tracing::warn!(
                    batch = batch.index,
                    "the state log misses an input here; recomputing from this batch"
                );
                return Ok(applied);
            }
            job.apply_state_log(batch, placement.clone(), &mine, inputs)
                .map_err(internal)?;
            applied += 1;
        }
    }
    tracing::info!(
        partitions = ?mine,
        batches = applied,
        elapsed_ms = started.elapsed().as_millis() as u64,
        reading_ms = reading.as_millis() as u64,
        "state rebuilt from the state log"
    );
    Ok(applied)
}
