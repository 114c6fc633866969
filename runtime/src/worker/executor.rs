//! The worker's executor thread: job work (tasks, state, checkpoint I/O) runs on one thread
//! fed by commands, so that the gRPC handlers only pass messages and shuffle blocks from peers
//! are accepted while a stage runs (and the S3 client can block on its own runtime).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tonic::Status;

use crate::checkpoint::Checkpointer;
use crate::exec::{BatchContext, Placement, lock_unpoisoned};
use crate::job::Job;
use crate::rpc::pb;
use crate::time::BatchInfo;

pub type Reply<T> = oneshot::Sender<Result<T, Status>>;

pub enum Command {
    Assign {
        owners: Vec<usize>,
        me: usize,
        reply: Reply<()>,
    },
    Restore {
        batch: u64,
        /// Only these partitions, leaving the others' state as it is.
        only: Option<Vec<usize>>,
        reply: Reply<()>,
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
    for command in commands {
        match command {
            Command::Assign { owners, me, reply } => {
                if owners.len() != job.partitions() {
                    let _ = reply.send(Err(Status::invalid_argument(format!(
                        "an assignment of {} partitions, but the job has {}",
                        owners.len(),
                        job.partitions()
                    ))));
                    continue;
                }
                placement = Some(Arc::new(Placement { owners, me }));
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
                                ckpt.read_state(b, &|part| mine.contains(&part))
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
                        Some(ckpt.read_state(batch, &owned).map_err(internal)?)
                    };
                    job.restore_owned(snapshot.as_ref(), &owned)
                        .map_err(internal)?;
                    *lock_unpoisoned(&current) = None;
                    tracing::info!(snapshot = batch, "state restored for the owned partitions");
                    Ok(())
                })();
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
                    let cx = job
                        .begin(batch, &ranges, &logged, replay, p, redo.as_deref())
                        .map_err(internal)?;
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
                let result = match cx {
                    Some((_, b, cx)) if b == batch => job
                        .run_stage(&cx, stage)
                        .map(|()| StageDone {
                            outgoing: cx.take_outgoing(),
                            reply: pb::StageReply {
                                records: cx.input_records(),
                                record_errors: cx.errors().count(),
                                error_samples: cx.errors().samples(),
                            },
                        })
                        .map_err(internal),
                    _ => Err(Status::failed_precondition(format!(
                        "batch {batch} was not begun"
                    ))),
                };
                let _ = reply.send(result);
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
