//! The worker's gRPC service: commands from the master go to the executor thread; shuffle
//! blocks from peers go straight into the batch in progress.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::executor::{Command, Current, Reply};
use crate::exec::lock_unpoisoned;
use crate::rpc::{AddToken, MAX_MESSAGE_BYTES, Tls, channel, pb};
use crate::time::{BatchInfo, now_ms};

pub struct WorkerService {
    pub id: String,
    pub address: String,
    pub fingerprint: String,
    pub token: String,
    pub epoch: Arc<AtomicU64>,
    pub last_contact: Arc<AtomicU64>,
    pub commands: Mutex<std::sync::mpsc::Sender<Command>>,
    pub current: Current,
    pub peers: Mutex<Vec<String>>,
    pub tls: Option<Tls>,
    /// The job's partitions.
    pub partitions: usize,
    /// Malformed messages refused so far.
    pub rejected: AtomicU64,
}

impl WorkerService {
    /// Refuses a malformed message: counted and logged, never fatal.
    fn reject(&self, message: impl Into<String>) -> Status {
        let message = message.into();
        let n = self.rejected.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(rejected_total = n, "refused a malformed message: {message}");
        Status::invalid_argument(message)
    }

    /// Partition numbers from the master, checked against the job's.
    fn partitions(&self, parts: &[u32], field: &str) -> Result<Vec<usize>, Status> {
        parts
            .iter()
            .map(|p| {
                let p = *p as usize;
                if p < self.partitions {
                    Ok(p)
                } else {
                    Err(self.reject(format!(
                        "{field}: partition {p}, but the job has {}",
                        self.partitions
                    )))
                }
            })
            .collect()
    }

    fn contact(&self, epoch: u64) -> Result<(), Status> {
        self.last_contact.store(now_ms(), Ordering::Relaxed);
        let current = self.epoch.load(Ordering::SeqCst);
        // Work for another placement than the one this worker holds would run on the wrong
        // partitions: an older epoch is a message from before a change (or from a master that
        // has been replaced), a newer one a placement that has not reached this worker.
        if epoch != current {
            return Err(Status::aborted(format!(
                "epoch {epoch} is not this worker's placement (epoch {current}); the master assigns again"
            )));
        }
        Ok(())
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        lock_unpoisoned(&self.commands)
            .send(make(tx))
            .map_err(|_| Status::unavailable("the worker is stopping"))?;
        rx.await
            .map_err(|_| Status::internal("the executor thread stopped"))?
    }

    async fn push(
        &self,
        epoch: u64,
        batch: u64,
        outgoing: Vec<crate::exec::OutgoingBlock>,
    ) -> Result<(), Status> {
        let peers = lock_unpoisoned(&self.peers).clone();
        let mut by_owner: HashMap<usize, Vec<pb::Block>> = HashMap::new();
        for b in outgoing {
            by_owner.entry(b.owner).or_default().push(pb::Block {
                shuffle: b.shuffle as u32,
                map_partition: b.map_part as u32,
                reduce_partition: b.reduce_part as u32,
                data: b.data,
                epoch,
                batch,
            });
        }
        let token = AddToken::new(&self.token).map_err(Status::internal)?;
        let sends = by_owner.into_iter().map(|(owner, blocks)| {
            let address = peers.get(owner).cloned().unwrap_or_default();
            let token = token.clone();
            let tls = self.tls.clone();
            async move {
                let ch = channel(&address, Duration::from_secs(30), tls.as_ref())
                    .map_err(Status::internal)?;
                let mut client = pb::worker_client::WorkerClient::with_interceptor(ch, token)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES);
                client
                    .push_blocks(futures::stream::iter(blocks))
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        Status::unavailable(format!(
                            "pushing shuffle blocks to {address}: {}",
                            e.message()
                        ))
                    })
            }
        });
        futures::future::try_join_all(sends).await.map(|_| ())
    }
}

#[tonic::async_trait]
impl pb::worker_server::Worker for WorkerService {
    async fn ping(
        &self,
        request: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingReply>, Status> {
        self.last_contact.store(now_ms(), Ordering::Relaxed);
        let _ = request;
        Ok(Response::new(pb::PingReply {
            worker_id: self.id.clone(),
        }))
    }

    async fn assign(
        &self,
        request: Request<pb::AssignRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let r = request.into_inner();
        if r.fingerprint != self.fingerprint {
            return Err(Status::failed_precondition(format!(
                "master runs job {} but this worker runs {}",
                r.fingerprint, self.fingerprint
            )));
        }
        self.last_contact.store(now_ms(), Ordering::Relaxed);
        self.epoch.store(r.epoch, Ordering::SeqCst);
        let mut peers: Vec<String> = Vec::new();
        let mut owners = Vec::with_capacity(r.owners.len());
        for address in &r.owners {
            let index = match peers.iter().position(|p| p == address) {
                Some(i) => i,
                None => {
                    peers.push(address.clone());
                    peers.len() - 1
                }
            };
            owners.push(index);
        }
        // A worker that owns nothing still takes part (it may get partitions later).
        let me = peers
            .iter()
            .position(|p| *p == self.address)
            .unwrap_or(usize::MAX);
        *lock_unpoisoned(&self.peers) = peers;
        let state_log = r.state_log;
        self.call(|reply| Command::Assign {
            owners,
            me,
            state_log,
            reply,
        })
        .await?;
        tracing::info!(
            epoch = r.epoch,
            partitions = r.owners.iter().filter(|a| **a == self.address).count(),
            "assigned"
        );
        Ok(Response::new(pb::Ack {}))
    }

    async fn restore(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let r = request.into_inner();
        self.contact(r.epoch)?;
        let only = r
            .partial
            .then(|| self.partitions(&r.partitions, "restore"))
            .transpose()?;
        self.call(|reply| Command::Restore {
            batch: r.snapshot_batch,
            only,
            reply,
        })
        .await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn apply_state_log(
        &self,
        request: Request<pb::ApplyStateLogRequest>,
    ) -> Result<Response<pb::ApplyStateLogReply>, Status> {
        let r = request.into_inner();
        self.contact(r.epoch)?;
        let parts = self.partitions(&r.partitions, "partitions")?;
        let mut batches = Vec::with_capacity(r.batches.len());
        let first = r.batches.first().map_or(0, |b| b.batch);
        for (i, b) in r.batches.into_iter().enumerate() {
            if Some(b.batch) != first.checked_add(i as u64) {
                return Err(self.reject(format!(
                    "batches: batch {} at place {i} after batch {first} (they must be consecutive)",
                    b.batch
                )));
            }
            if let Some(key) = b.keys.iter().find(|k| {
                k.strip_prefix(crate::checkpoint::state_log::DIR)
                    .and_then(|k| k.strip_prefix('/'))
                    .and_then(crate::checkpoint::state_log::parse)
                    .is_none_or(|(batch, _)| batch != b.batch)
            }) {
                return Err(self.reject(format!(
                    "batches: {key} is not a state log object of batch {}",
                    b.batch
                )));
            }
            let batch = BatchInfo {
                index: b.batch,
                time_ms: b.time_ms,
                interval_ms: 0,
            };
            batches.push((batch, b.keys));
        }
        let applied = self
            .call(|reply| Command::ApplyStateLog {
                parts,
                batches,
                reply,
            })
            .await?;
        Ok(Response::new(pb::ApplyStateLogReply { applied }))
    }

    async fn begin_batch(
        &self,
        request: Request<pb::BeginBatchRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let r = request.into_inner();
        self.contact(r.epoch)?;
        let mut ranges = BTreeMap::new();
        for (name, json) in r.ranges {
            let value = serde_json::from_str(&json)
                .map_err(|e| self.reject(format!("range of source {name}: {e}")))?;
            ranges.insert(name, value);
        }
        // The interval is not on the wire: the worker compiled the same manifest.
        let batch = BatchInfo {
            index: r.batch,
            time_ms: r.time_ms,
            interval_ms: 0,
        };
        let redo = r
            .partial
            .then(|| self.partitions(&r.redo, "redo"))
            .transpose()?;
        self.call(|reply| Command::Begin {
            batch,
            ranges,
            replay: r.replay,
            redo,
            reply,
        })
        .await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn run_stage(
        &self,
        request: Request<pb::RunStageRequest>,
    ) -> Result<Response<pb::StageReply>, Status> {
        let r = request.into_inner();
        self.contact(r.epoch)?;
        let done = self
            .call(|reply| Command::Stage {
                batch: r.batch,
                stage: r.stage as usize,
                reply,
            })
            .await?;
        self.push(r.epoch, r.batch, done.outgoing).await?;
        Ok(Response::new(done.reply))
    }

    async fn push_blocks(
        &self,
        request: Request<tonic::Streaming<pb::Block>>,
    ) -> Result<Response<pb::Ack>, Status> {
        let mut stream = request.into_inner();
        while let Some(b) = stream.message().await? {
            let current = lock_unpoisoned(&self.current).clone();
            let Some((_, _, cx)) = current.filter(|(e, n, _)| *e == b.epoch && *n == b.batch)
            else {
                return Err(Status::failed_precondition(format!(
                    "blocks for batch {} of epoch {}, which is not in progress here",
                    b.batch, b.epoch
                )));
            };
            let (shuffle, map, reduce) = (
                b.shuffle as usize,
                b.map_partition as usize,
                b.reduce_partition as usize,
            );
            if reduce >= cx.partitions || map >= cx.partitions || !cx.owns(reduce) {
                return Err(self.reject(format!(
                    "block for partition {reduce}, which this worker does not own"
                )));
            }
            cx.accept_block(shuffle, map, reduce, b.data)
                .map_err(|e| self.reject(e.to_string()))?;
        }
        Ok(Response::new(pb::Ack {}))
    }

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotReply>, Status> {
        let r = request.into_inner();
        self.contact(r.epoch)?;
        let files = self
            .call(|reply| Command::Snapshot {
                batch: r.batch,
                reply,
            })
            .await?;
        Ok(Response::new(pb::SnapshotReply { files }))
    }
}
