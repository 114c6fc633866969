//! `sluice worker`: runs the partitions the master assigns, exchanges shuffle blocks with the
//! other workers, and writes its partitions' state to the checkpoint store.
//!
//! Job work (tasks, state, checkpoint I/O) runs on one executor thread fed by commands; the
//! gRPC handlers only pass messages, so shuffle blocks from peers are accepted while a stage
//! runs.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::checkpoint::Checkpointer;
use crate::exec::{BatchContext, Placement, lock_unpoisoned};
use crate::job::Job;
use crate::rpc::{AddToken, CheckToken, MAX_MESSAGE_BYTES, PROTOCOL_VERSION, Tls, channel, pb};
use crate::time::{BatchInfo, now_ms};

type Reply<T> = oneshot::Sender<Result<T, Status>>;

enum Command {
    Assign {
        owners: Vec<usize>,
        me: usize,
        reply: Reply<()>,
    },
    Restore {
        batch: u64,
        reply: Reply<()>,
    },
    Begin {
        batch: BatchInfo,
        ranges: BTreeMap<String, serde_json::Value>,
        replay: bool,
        reply: Reply<()>,
    },
    Stage {
        batch: u64,
        stage: usize,
        reply: Reply<Vec<crate::exec::OutgoingBlock>>,
    },
    Snapshot {
        batch: u64,
        reply: Reply<Vec<pb::StateFile>>,
    },
}

/// The batch in progress, shared with the handler that accepts peers' blocks.
type Current = Arc<Mutex<Option<(u64, u64, Arc<BatchContext>)>>>;

/// An engine error as the master reads it: the message, and whose fault it is.
fn internal(e: crate::Error) -> Status {
    crate::rpc::engine_status(&e)
}

/// Runs job work on its own thread (the S3 client blocks on its own runtime).
fn executor_thread(
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
            Command::Restore { batch, reply } => {
                let result = (|| {
                    let p = placement
                        .clone()
                        .ok_or_else(|| Status::failed_precondition("no assignment yet"))?;
                    let snapshot = if batch == 0 {
                        None
                    } else {
                        Some(ckpt.snapshot_at(batch).map_err(internal)?)
                    };
                    job.restore_owned(snapshot.as_ref(), &|part| p.owners.get(part) == Some(&p.me))
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
                        .begin(batch, &ranges, &logged, replay, p)
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
                        .map(|()| cx.take_outgoing())
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

struct WorkerService {
    id: String,
    address: String,
    fingerprint: String,
    token: String,
    epoch: Arc<AtomicU64>,
    last_contact: Arc<AtomicU64>,
    commands: Mutex<std::sync::mpsc::Sender<Command>>,
    current: Current,
    peers: Mutex<Vec<String>>,
    tls: Option<Tls>,
    /// Malformed messages refused so far.
    rejected: AtomicU64,
}

impl WorkerService {
    /// Refuses a malformed message: counted and logged, never fatal.
    fn reject(&self, message: impl Into<String>) -> Status {
        let message = message.into();
        let n = self.rejected.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(rejected_total = n, "refused a malformed message: {message}");
        Status::invalid_argument(message)
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
        self.call(|reply| Command::Assign { owners, me, reply })
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
        self.call(|reply| Command::Restore {
            batch: r.snapshot_batch,
            reply,
        })
        .await?;
        Ok(Response::new(pb::Ack {}))
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
        self.call(|reply| Command::Begin {
            batch,
            ranges,
            replay: r.replay,
            reply,
        })
        .await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn run_stage(
        &self,
        request: Request<pb::RunStageRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let r = request.into_inner();
        self.contact(r.epoch)?;
        let outgoing = self
            .call(|reply| Command::Stage {
                batch: r.batch,
                stage: r.stage as usize,
                reply,
            })
            .await?;
        self.push(r.epoch, r.batch, outgoing).await?;
        Ok(Response::new(pb::Ack {}))
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

/// How a worker runs.
pub struct WorkerOptions {
    pub id: String,
    /// Where to serve.
    pub listen: SocketAddr,
    /// How peers and the master reach this worker (`host:port`).
    pub advertise: String,
    pub master: String,
    pub fingerprint: String,
    pub token: String,
    /// Mutual TLS with the master and the other workers.
    pub tls: Option<Tls>,
}

/// Serves until `shutdown` resolves; then asks the master to hand its partitions off.
pub async fn run(
    job: Job,
    ckpt: Checkpointer,
    options: WorkerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let epoch = Arc::new(AtomicU64::new(0));
    let current: Current = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (current, epoch) = (current.clone(), epoch.clone());
        std::thread::Builder::new()
            .name("sluice-worker-exec".into())
            .spawn(move || executor_thread(job, ckpt, current, epoch, rx))
            .map_err(|e| format!("cannot start the executor thread: {e}"))?;
    }
    let last_contact = Arc::new(AtomicU64::new(0));
    let service = WorkerService {
        id: options.id.clone(),
        address: options.advertise.clone(),
        fingerprint: options.fingerprint.clone(),
        token: options.token.clone(),
        epoch,
        last_contact: last_contact.clone(),
        commands: Mutex::new(tx),
        current,
        peers: Mutex::default(),
        tls: options.tls.clone(),
        rejected: AtomicU64::new(0),
    };
    // Blocks up to the same limit peers send; larger messages are refused by tonic with an error
    // (the batch fails and is retried), never a crash.
    let server = tonic::service::interceptor::InterceptedService::new(
        pb::worker_server::WorkerServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES),
        CheckToken::new(&options.token),
    );
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let listen = options.listen;
    let mut builder = crate::rpc::listener::server(options.tls.as_ref())?;
    let incoming = crate::rpc::listener::bind(listen, Default::default())
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let serve = tokio::spawn(async move {
        builder
            .add_service(server)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            })
            .await
    });
    tracing::info!(id = %options.id, listen = %options.listen, advertise = %options.advertise, master = %options.master, "worker serving");
    let register = tokio::spawn(register_loop(
        options.id.clone(),
        options.advertise.clone(),
        options.master.clone(),
        options.fingerprint.clone(),
        options.token.clone(),
        options.tls.clone(),
        last_contact,
    ));
    shutdown.await;
    register.abort();
    // Scale-down: the master snapshots and moves our partitions before it lets us go.
    let token = AddToken::new(&options.token)?;
    if let Ok(ch) = channel(
        &options.master,
        Duration::from_secs(60),
        options.tls.as_ref(),
    ) {
        let mut master = pb::master_client::MasterClient::with_interceptor(ch, token);
        match master
            .leave(pb::LeaveRequest {
                worker_id: options.id.clone(),
            })
            .await
        {
            Ok(_) => tracing::info!("the master took our partitions; leaving"),
            Err(e) => {
                tracing::warn!(error = %e.message(), "could not hand off to the master; leaving anyway")
            }
        }
    }
    let _ = stop_tx.send(());
    let _ = serve.await;
    Ok(())
}

/// Registers with the master, and again whenever the master has been silent for a while (it
/// restarted, or lost us).
async fn register_loop(
    id: String,
    address: String,
    master: String,
    fingerprint: String,
    token: String,
    tls: Option<Tls>,
    last_contact: Arc<AtomicU64>,
) {
    let incarnation = format!("{}-{}", std::process::id(), now_ms());
    let mut backoff = Duration::from_millis(100);
    loop {
        let silent = now_ms().saturating_sub(last_contact.load(Ordering::Relaxed));
        if silent > 1500 {
            let result = async {
                let ch = channel(&master, Duration::from_secs(5), tls.as_ref())?;
                let mut client =
                    pb::master_client::MasterClient::with_interceptor(ch, AddToken::new(&token)?);
                client
                    .register(pb::RegisterRequest {
                        protocol_version: PROTOCOL_VERSION,
                        fingerprint: fingerprint.clone(),
                        worker_id: id.clone(),
                        incarnation: incarnation.clone(),
                        address: address.clone(),
                    })
                    .await
                    .map_err(|e| format!("{}: {}", e.code(), e.message()))
            }
            .await;
            match result {
                Ok(_) => {
                    tracing::info!(%master, "registered with the master");
                    last_contact.store(now_ms(), Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!(%master, error = %e, retry_in = ?backoff, "cannot register with the master; retrying");
                    tokio::time::sleep(backoff).await;
                    // Capped low: a master that starts with its workers (a resume, a new job)
                    // is found within a second of answering, and a try costs one connection.
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
