//! `sluice master`: the batch clock, source positions and offset log, partition placement over
//! the registered workers, stage-by-stage execution, snapshots and commits.
//!
//! Recovery is a global rollback: when a worker is lost (or the master restarts), every worker
//! reloads the newest snapshot for the partitions it now owns and the logged batches after it
//! are run again; outputs are idempotent per batch time, so the result stays exactly once. A
//! worker joining or leaving is placed at a batch boundary after a fresh snapshot, so live
//! rescaling replays nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::checkpoint::{
    Checkpointer, CommitEntry, FORMAT_VERSION, JobMeta, OffsetEntry, StateFile,
};
use crate::exec::lock_unpoisoned;
use crate::job::Job;
use crate::rpc::{AddToken, CheckToken, MAX_MESSAGE_BYTES, PROTOCOL_VERSION, Tls, channel, pb};
use crate::time::{BatchInfo, now_ms};

type Client = pb::worker_client::WorkerClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AddToken>,
>;

#[derive(Clone)]
struct WorkerRef {
    id: String,
    address: String,
    incarnation: String,
    client: Client,
}

/// How often workers that owe an answer are pinged.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a ping may take before its worker counts as lost.
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(5);
/// How long a call may take before the status and the log say what the job waits on.
const STALL_WARNING: Duration = Duration::from_secs(10);
/// The longest a single call may take: heartbeats find lost workers, so this only bounds a
/// worker that answers pings but never finishes.
const CALL_TIMEOUT: Duration = Duration::from_secs(3600);

/// What the gRPC side shares with the master loop.
#[derive(Default)]
struct Shared {
    joins: Vec<(String, String, String)>,
    leaves: Vec<(String, oneshot::Sender<()>)>,
    status: pb::StatusReply,
}

struct MasterService {
    fingerprint: String,
    shared: Arc<Mutex<Shared>>,
}

#[tonic::async_trait]
impl pb::master_server::Master for MasterService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        let r = request.into_inner();
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "worker {} speaks protocol {}, this master {PROTOCOL_VERSION}: run the same sluice version",
                r.worker_id, r.protocol_version
            )));
        }
        if r.fingerprint != self.fingerprint {
            return Err(Status::failed_precondition(format!(
                "worker {} runs job {}, this master {}: give both the same manifest",
                r.worker_id, r.fingerprint, self.fingerprint
            )));
        }
        if r.worker_id.is_empty()
            || r.address.parse::<SocketAddr>().is_err() && !r.address.contains(':')
        {
            return Err(Status::invalid_argument(
                "worker_id and a host:port address are required",
            ));
        }
        // Workers register again whenever the master is silent (a long back-off): only a new
        // or restarted one is worth a line, in `take_membership_changes`.
        tracing::debug!(worker = %r.worker_id, address = %r.address, "worker registered");
        lock_unpoisoned(&self.shared)
            .joins
            .push((r.worker_id, r.address, r.incarnation));
        Ok(Response::new(pb::RegisterReply {
            master_id: format!("master-{}", std::process::id()),
        }))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveReply>, Status> {
        let id = request.into_inner().worker_id;
        let (tx, rx) = oneshot::channel();
        lock_unpoisoned(&self.shared).leaves.push((id.clone(), tx));
        tracing::info!(worker = %id, "worker asks to leave");
        let _ = tokio::time::timeout(Duration::from_secs(60), rx).await;
        Ok(Response::new(pb::LeaveReply {}))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        Ok(Response::new(lock_unpoisoned(&self.shared).status.clone()))
    }
}

/// How the master runs.
pub struct MasterOptions {
    pub listen: SocketAddr,
    pub job_name: String,
    /// The StreamingJob's uid (from the manifest), recorded in a checkpoint it creates.
    pub job_uid: Option<String>,
    pub fingerprint: String,
    pub token: String,
    /// Workers to wait for before the first batch.
    pub min_workers: usize,
    pub stop_after: Option<u64>,
    pub stop: Arc<AtomicBool>,
    pub paced: bool,
    /// Mutual TLS with the workers.
    pub tls: Option<Tls>,
}

/// A failure that the master handles by rolling back.
#[derive(Debug)]
enum Fault {
    /// A worker did not answer: drop it and roll back.
    Worker(String, String),
    /// The checkpoint store or a source failed: retry after a back-off.
    Retry(String),
    /// Every worker is there, but the batch cannot go on (a push between workers failed, a
    /// worker holds another placement): place again and recover at once.
    Rollback(String),
    /// The job or its input is wrong (a record refused under `onRecordError: fail`): running
    /// it again fails the same way, so the job fails, with the message.
    Job(String),
    /// Give up: the checkpoint is damaged, or Sluice has a bug.
    Fatal(String),
}

impl From<crate::Error> for Fault {
    fn from(e: crate::Error) -> Self {
        if e.domain() == crate::error::Domain::User {
            Fault::Job(e.to_string())
        } else if e.is_retryable() {
            Fault::Retry(e.to_string())
        } else {
            Fault::Fatal(e.to_string())
        }
    }
}

/// How the master's last log line begins when the job itself is at fault; the operator finds
/// the job's own words after it in the container's termination message.
pub const JOB_FAILED: &str = "the job failed: ";

/// Why the master stopped without finishing.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The job or its input is wrong; starting it again fails the same way.
    #[error("{JOB_FAILED}{0}")]
    Job(String),
    /// Anything else: the checkpoint, the network, the setup.
    #[error("{0}")]
    Other(String),
}

impl From<String> for MasterError {
    fn from(message: String) -> Self {
        MasterError::Other(message)
    }
}

/// Runs the master until stopped; `job` is the compiled manifest (the master uses its graph
/// and sources, never its tasks).
pub fn run(
    job: Job,
    ckpt: Checkpointer,
    options: MasterOptions,
    runtime: Handle,
) -> Result<(), MasterError> {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let service = MasterService {
        fingerprint: options.fingerprint.clone(),
        shared: shared.clone(),
    };
    let server =
        pb::master_server::MasterServer::with_interceptor(service, CheckToken::new(&options.token));
    let listen = options.listen;
    let mut builder = crate::rpc::listener::server(options.tls.as_ref())?;
    let incoming = runtime
        .block_on(crate::rpc::listener::bind(listen, Default::default()))
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    runtime.spawn(async move {
        if let Err(e) = builder
            .add_service(server)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(error = %e, "the master's gRPC server stopped");
        }
    });
    tracing::info!(%listen, job = %options.job_name, "master serving");
    let meta = match ckpt.load_meta_checked().map_err(|e| e.to_string())? {
        Some(meta) => {
            if meta.fingerprint != options.fingerprint {
                return Err(MasterError::Other(format!(
                    "checkpoint {} belongs to a different job (fingerprint {} != {}); use a new checkpoint location",
                    ckpt.describe(),
                    meta.fingerprint,
                    options.fingerprint
                )));
            }
            tracing::info!(checkpoint = %ckpt.describe(), "resuming from checkpoint");
            meta
        }
        None => {
            let interval = job.interval_ms();
            let meta = JobMeta {
                format_version: FORMAT_VERSION,
                job: options.job_name.clone(),
                uid: options.job_uid.clone(),
                fingerprint: options.fingerprint.clone(),
                zero_time_ms: now_ms() / interval * interval,
                interval_ms: interval,
                partitions: job.partitions(),
            };
            ckpt.write_meta(&meta).map_err(|e| e.to_string())?;
            meta
        }
    };
    let mut master = Master {
        initial_positions: job.positions(),
        job,
        ckpt,
        zero: meta.zero_time_ms,
        workers: Vec::new(),
        placed: Vec::new(),
        owners: Vec::new(),
        // Epochs grow across masters too, so that a worker can tell a message of a master
        // before a restart from one of the present master: start from the clock.
        epoch: now_ms(),
        next: 1,
        last_snapshot: 0,
        recoveries: 0,
        shared,
        runtime,
        token: AddToken::new(&options.token)?,
        fingerprint: options.fingerprint.clone(),
        checkpoint_uri: String::new(),
        tls: options.tls.clone(),
        last_ping: Instant::now(),
        schedule: crate::time::Schedule::new(),
        lag: crate::time::Lag::default(),
    };
    master.checkpoint_uri = master.ckpt.describe();
    master.run_loop(&options)
}

struct Master {
    job: Job,
    ckpt: Checkpointer,
    zero: u64,
    /// Registered workers, live as far as the master knows.
    workers: Vec<WorkerRef>,
    /// The workers of the current placement (epoch), as they were when it was made; batches,
    /// snapshots and restores go to them only. A worker registered since is not in it, and a
    /// worker dropped since makes the next step a new placement.
    placed: Vec<WorkerRef>,
    /// owners[p] = index into `placed`.
    owners: Vec<usize>,
    epoch: u64,
    next: u64,
    last_snapshot: u64,
    recoveries: u64,
    initial_positions: BTreeMap<String, serde_json::Value>,
    shared: Arc<Mutex<Shared>>,
    runtime: Handle,
    token: AddToken,
    fingerprint: String,
    checkpoint_uri: String,
    tls: Option<Tls>,
    last_ping: Instant,
    /// When batches are due, on the monotonic clock.
    schedule: crate::time::Schedule,
    /// Warns when batches start later and later.
    lag: crate::time::Lag,
}

impl Master {
    fn set_status(&self, state: pb::MasterState, message: &str) {
        let mut shared = lock_unpoisoned(&self.shared);
        shared.status = pb::StatusReply {
            state: state.into(),
            last_completed_batch: self.next.saturating_sub(1),
            last_checkpoint_batch: self.last_snapshot,
            checkpoint_uri: self.checkpoint_uri.clone(),
            recoveries: self.recoveries,
            workers: self.workers.iter().map(|w| w.id.clone()).collect(),
            message: message.to_string(),
            epoch: self.epoch,
        };
    }

    fn client(&self, address: &str) -> Result<Client, String> {
        // Channels spawn their connection task on the runtime.
        let _entered = self.runtime.enter();
        let ch = channel(address, CALL_TIMEOUT, self.tls.as_ref())?;
        Ok(
            pb::worker_client::WorkerClient::with_interceptor(ch, self.token.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
    }

    /// Calls every worker at once; the first failure names the worker. `what` says what the
    /// call does ("stage 2 of batch 37"), for the status while it is awaited.
    ///
    /// A worker that is busy still answers pings (its gRPC side runs apart from the executor
    /// thread); a frozen or cut-off one does not. So while calls are outstanding, the workers
    /// that owe an answer are pinged every [`HEARTBEAT`]; one that misses a ping's deadline is
    /// lost at once, instead of holding the job until the call's own timeout, and a long wait
    /// is shown in the status and the log.
    fn all<T: Send + 'static, F, Fut>(
        &self,
        workers: &[WorkerRef],
        what: &str,
        call: F,
    ) -> Result<Vec<T>, Fault>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>> + Send + 'static,
    {
        use futures::StreamExt;
        let mut pending: futures::stream::FuturesUnordered<_> = workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let fut = call(w.client.clone());
                async move { (i, fut.await.map(|r| r.into_inner())) }
            })
            .collect();
        let mut results: Vec<Option<Result<T, Status>>> = std::iter::repeat_with(|| None)
            .take(workers.len())
            .collect();
        let started = Instant::now();
        let mut warned_at: Option<Instant> = None;
        let waited = self.runtime.block_on(async {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    next = pending.next() => match next {
                        Some((i, r)) => results[i] = Some(r),
                        None => return Ok(()),
                    },
                    _ = tick.tick() => {
                        let owing: Vec<&WorkerRef> = workers
                            .iter()
                            .zip(&results)
                            .filter(|(_, r)| r.is_none())
                            .map(|(w, _)| w)
                            .collect();
                        if let Some(lost) = self.heartbeat(&owing).await {
                            return Err(lost);
                        }
                        let waiting = started.elapsed();
                        if waiting >= STALL_WARNING
                            && warned_at.is_none_or(|t| t.elapsed() >= STALL_WARNING)
                        {
                            warned_at = Some(Instant::now());
                            let names: Vec<&str> = owing.iter().map(|w| w.id.as_str()).collect();
                            let message = format!(
                                "waiting {}s on {} for {what}; they answer heartbeats, so the work is slow, not lost",
                                waiting.as_secs(),
                                names.join(", ")
                            );
                            tracing::warn!("{message}");
                            self.set_status(pb::MasterState::Stalled, &message);
                        }
                    }
                }
            }
        });
        if warned_at.is_some() {
            tracing::info!(waited = ?started.elapsed(), "{what} done after a long wait");
        }
        if let Err((id, why)) = waited {
            return Err(Fault::Worker(id, why));
        }
        let mut out = Vec::with_capacity(results.len());
        for (w, r) in workers.iter().zip(results) {
            let e = match r {
                Some(Ok(v)) => {
                    out.push(v);
                    continue;
                }
                Some(Err(e)) => e,
                None => return Err(Fault::Worker(w.id.clone(), format!("no answer for {what}"))),
            };
            let why = format!("worker {}: {}: {}", w.id, e.code(), e.message());
            // An engine error says whose fault it is.
            match crate::rpc::error_domain(&e) {
                Some(pb::ErrorDomain::User) => {
                    return Err(Fault::Job(format!("worker {}: {}", w.id, e.message())));
                }
                Some(pb::ErrorDomain::External) => return Err(Fault::Retry(why)),
                Some(pb::ErrorDomain::Damaged | pb::ErrorDomain::Internal) => {
                    return Err(Fault::Fatal(why));
                }
                Some(pb::ErrorDomain::Unspecified) | None => {}
            }
            return Err(match e.code() {
                // The call failed on the way: the worker may be gone, or it may be reporting a
                // peer it could not reach (a shuffle push). Dropping a live worker would leave
                // it holding a placement and state the master no longer knows of, so ask
                // every worker who is really gone.
                tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::DeadlineExceeded => {
                    let everyone: Vec<&WorkerRef> = workers.iter().collect();
                    match self.runtime.block_on(self.heartbeat(&everyone)) {
                        Some((gone, ping)) => Fault::Worker(gone, format!("{ping} ({why})")),
                        None => Fault::Rollback(why),
                    }
                }
                // Work for another placement or batch than the worker holds: place again.
                tonic::Code::Aborted | tonic::Code::FailedPrecondition => Fault::Rollback(why),
                // A worker that answers with an error is alive (its disk or the store failed).
                _ => Fault::Retry(why),
            });
        }
        Ok(out)
    }

    /// Pings `workers` at once; the first that misses the deadline, with why.
    async fn heartbeat(&self, workers: &[&WorkerRef]) -> Option<(String, String)> {
        let pings = workers.iter().map(|w| {
            let mut client = w.client.clone();
            let id = w.id.clone();
            async move {
                let ping = client.ping(pb::PingRequest { epoch: 0 });
                match tokio::time::timeout(HEARTBEAT_DEADLINE, ping).await {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some((id, format!("heartbeat failed: {}", e.message()))),
                    Err(_) => Some((
                        id,
                        format!(
                            "no answer to a heartbeat within {}s",
                            HEARTBEAT_DEADLINE.as_secs()
                        ),
                    )),
                }
            }
        });
        futures::future::join_all(pings)
            .await
            .into_iter()
            .flatten()
            .next()
    }

    fn run_loop(&mut self, options: &MasterOptions) -> Result<(), MasterError> {
        let stop = &options.stop;
        self.set_status(pb::MasterState::Starting, "waiting for workers");
        let mut backoff = Duration::from_millis(200);
        let mut needs_recovery = true;
        let mut started = false;
        let mut rollbacks_in_row = 0u32;
        while !stop.load(Ordering::Relaxed) {
            if options.stop_after.is_some_and(|last| self.next > last) && !needs_recovery {
                break;
            }
            // Membership changes and recovery happen between batches.
            let changed = self.take_membership_changes();
            // The minimum gates the start only; afterwards any live worker keeps the job going.
            let required = if started {
                1
            } else {
                options.min_workers.max(1)
            };
            if self.workers.len() < required {
                self.set_status(
                    pb::MasterState::Starting,
                    &format!("waiting for workers ({} of {required})", self.workers.len()),
                );
                if !self.workers.is_empty() && self.last_ping.elapsed() > Duration::from_secs(1) {
                    // Keep the registered ones from thinking us gone; drop the dead.
                    self.last_ping = Instant::now();
                    let pinged = self.all(&self.workers, "a ping", |mut c| async move {
                        c.ping(pb::PingRequest { epoch: 0 }).await
                    });
                    if let Err(Fault::Worker(id, why)) = pinged {
                        tracing::warn!(worker = %id, error = %why, "registered worker is gone");
                        self.workers.retain(|w| w.id != id);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
                needs_recovery = true;
                continue;
            }
            let was_recovery = needs_recovery;
            let result = if needs_recovery {
                // From the first attempt on, the minimum no longer applies: a worker lost while
                // recovering must not stall the job.
                started = true;
                self.recover(options.stop_after)
            } else if changed {
                self.rebalance()
            } else {
                let batch = BatchInfo::new(self.zero, self.job.interval_ms(), self.next);
                let wait = if options.paced {
                    self.schedule.until(batch.time_ms).as_millis() as u64
                } else {
                    0
                };
                if wait > 0 && self.last_ping.elapsed() < Duration::from_secs(1) {
                    std::thread::sleep(Duration::from_millis(wait.min(100)));
                    continue;
                }
                self.last_ping = Instant::now();
                if wait > 0 {
                    // Between slow batches: show the workers we are alive, and notice losses.
                    self.all(&self.workers, "a ping", |mut c| async move {
                        c.ping(pb::PingRequest { epoch: 0 }).await
                    })
                    .map(|_| ())
                } else {
                    self.run_new_batch(batch)
                }
            };
            match result {
                Ok(()) => {
                    needs_recovery = false;
                    backoff = Duration::from_millis(200);
                    if !was_recovery {
                        rollbacks_in_row = 0;
                    }
                    self.set_status(pb::MasterState::Running, "");
                }
                Err(Fault::Worker(id, why)) => {
                    tracing::error!(worker = %id, error = %why, "worker lost; rolling back to the last checkpoint");
                    self.workers.retain(|w| w.id != id);
                    self.recoveries += 1;
                    needs_recovery = true;
                    self.set_status(
                        pb::MasterState::Recovering,
                        &format!("worker {id} lost: {why}"),
                    );
                }
                Err(Fault::Rollback(why)) => {
                    tracing::warn!(error = %why, "rolling back to the last checkpoint");
                    self.recoveries += 1;
                    needs_recovery = true;
                    self.set_status(pb::MasterState::Recovering, &why);
                    // At once the first time; a cause that persists must not spin.
                    rollbacks_in_row += 1;
                    if rollbacks_in_row > 1 {
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                Err(Fault::Retry(why)) => {
                    tracing::error!(error = %why, retry_in = ?backoff, "batch failed; retrying from the last checkpoint");
                    self.set_status(pb::MasterState::CheckpointFailing, &why);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    self.recoveries += 1;
                    needs_recovery = true;
                }
                Err(Fault::Job(why)) => {
                    tracing::error!(error = %why, "the job failed; running it again would fail the same way");
                    self.set_status(pb::MasterState::Failed, &why);
                    return Err(MasterError::Job(why));
                }
                Err(Fault::Fatal(why)) => {
                    self.set_status(pb::MasterState::Failed, &why);
                    return Err(MasterError::Other(why));
                }
            }
        }
        if !needs_recovery && self.next > 1 && self.next - 1 > self.last_snapshot {
            let _ = self.snapshot(self.next - 1);
        }
        self.set_status(pb::MasterState::Stopped, "");
        Ok(())
    }

    /// Adds registered workers and releases leaving ones; true when membership changed.
    fn take_membership_changes(&mut self) -> bool {
        let (joins, leaves) = {
            let mut shared = lock_unpoisoned(&self.shared);
            (
                std::mem::take(&mut shared.joins),
                std::mem::take(&mut shared.leaves),
            )
        };
        let mut changed = false;
        for (id, address, incarnation) in joins {
            // The same process registering again (it thought us gone) keeps its place.
            if self
                .workers
                .iter()
                .any(|w| w.id == id && w.address == address && w.incarnation == incarnation)
            {
                continue;
            }
            // Otherwise it is new, or restarted and empty: it needs a placement.
            self.workers.retain(|w| w.id != id && w.address != address);
            match self.client(&address) {
                Ok(client) => {
                    tracing::info!(worker = %id, %address, "worker registered");
                    self.workers.push(WorkerRef {
                        id,
                        address,
                        incarnation,
                        client,
                    });
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(worker = %id, error = %e, "ignoring a worker with a bad address")
                }
            }
        }
        if !leaves.is_empty() {
            // Hand off: snapshot where we are, then place partitions without the leavers.
            if self.next > 1
                && self.next - 1 > self.last_snapshot
                && self.placement_intact()
                && let Err(e) = self.snapshot(self.next - 1)
            {
                tracing::warn!(error = ?e, "snapshot before hand-off failed; the next recovery replays instead");
            }
            for (id, done) in leaves {
                self.workers.retain(|w| w.id != id);
                tracing::info!(worker = %id, "worker left");
                let _ = done.send(());
                changed = true;
            }
        }
        changed
    }

    /// Whether every worker of the current placement is still registered as the same process:
    /// only then can they snapshot what they hold.
    fn placement_intact(&self) -> bool {
        !self.placed.is_empty()
            && self.placed.iter().all(|p| {
                self.workers
                    .iter()
                    .any(|w| w.id == p.id && w.incarnation == p.incarnation)
            })
    }

    /// Spreads partitions over the workers, keeping owners where possible, in a new epoch.
    fn assign(&mut self) -> Result<(), Fault> {
        let n = self.workers.len();
        let partitions = self.job.partitions();
        let mut load = vec![0usize; n];
        let target = partitions.div_ceil(n);
        // Where each partition was, as an index into the present workers (if its owner is
        // still here, as the same process).
        let previous: Vec<Option<usize>> = std::mem::take(&mut self.owners)
            .iter()
            .map(|o| {
                let was = self.placed.get(*o)?;
                self.workers
                    .iter()
                    .position(|w| w.id == was.id && w.incarnation == was.incarnation)
            })
            .collect();
        let mut owners = vec![usize::MAX; partitions];
        // Keep a partition where it was if that worker is still here and not over its share.
        for (p, owner) in previous.iter().enumerate().take(partitions) {
            if let Some(owner) = *owner
                && load[owner] < target
            {
                owners[p] = owner;
                load[owner] += 1;
            }
        }
        for owner in owners.iter_mut().filter(|o| **o == usize::MAX) {
            let least = (0..n).min_by_key(|w| load[*w]).unwrap_or(0);
            *owner = least;
            load[least] += 1;
        }
        self.owners = owners;
        self.placed = self.workers.clone();
        self.epoch += 1;
        let addresses: Vec<String> = self
            .owners
            .iter()
            .map(|w| self.placed[*w].address.clone())
            .collect();
        let (epoch, fingerprint) = (self.epoch, self.fingerprint.clone());
        self.all(
            &self.placed,
            &format!("the placement of epoch {epoch}"),
            move |mut c| {
                let req = pb::AssignRequest {
                    epoch,
                    master_id: String::new(),
                    owners: addresses.clone(),
                    fingerprint: fingerprint.clone(),
                };
                async move { c.assign(req).await }
            },
        )?;
        tracing::info!(epoch, workers = n, "partitions assigned");
        Ok(())
    }

    fn restore_all(&self, snapshot: u64) -> Result<(), Fault> {
        let epoch = self.epoch;
        let what = format!("loading the snapshot of batch {snapshot}");
        self.all(&self.placed, &what, move |mut c| async move {
            c.restore(pb::RestoreRequest {
                epoch,
                snapshot_batch: snapshot,
            })
            .await
        })?;
        Ok(())
    }

    /// A new placement of the partitions; returns the batch of the newest snapshot (0 for
    /// none), which the workers load next.
    fn reassign(&mut self) -> Result<u64, Fault> {
        self.assign()?;
        Ok(self
            .ckpt
            .latest_snapshot()
            .map_err(Fault::from)?
            .map_or(0, |s| s.batch))
    }

    /// New placement from the last snapshot; replays whatever was logged after it.
    fn recover(&mut self, stop_after: Option<u64>) -> Result<(), Fault> {
        let snapshot = self.reassign()?;
        self.restore_all(snapshot)?;
        let positions = match snapshot {
            0 => self.initial_positions.clone(),
            b => {
                self.ckpt
                    .read_offsets(b)
                    .map_err(Fault::from)?
                    .ok_or_else(|| {
                        Fault::Retry(format!("offsets of snapshot batch {b} are missing"))
                    })?
                    .positions
            }
        };
        self.job.seek(&positions).map_err(Fault::from)?;
        self.last_snapshot = snapshot;
        self.next = snapshot + 1;
        let logged = self.ckpt.offsets_after(snapshot).map_err(Fault::from)?;
        tracing::info!(
            snapshot,
            replay = logged.len(),
            workers = self.workers.len(),
            "recovering"
        );
        for entry in logged {
            if entry.batch != self.next {
                return Err(Fault::Fatal(format!(
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
                interval_ms: self.job.interval_ms(),
            };
            self.execute(batch, &entry.ranges, true)?;
            self.job.seek(&entry.positions).map_err(Fault::from)?;
            self.complete(batch, 0, true)?;
        }
        Ok(())
    }

    /// Live rescale: a fresh snapshot, a new placement, the snapshot loaded; nothing replayed.
    fn rebalance(&mut self) -> Result<(), Fault> {
        let last = self.next - 1;
        if last > self.last_snapshot
            && self.owners.len() == self.job.partitions()
            && self.placement_intact()
        {
            // Taken by the old placement's workers, before the new one.
            self.snapshot(last)?;
        }
        let snapshot = self.reassign()?;
        if snapshot != last {
            // The hand-off snapshot could not be taken: fall back to replaying.
            return self.recover(None);
        }
        self.restore_all(snapshot)?;
        tracing::info!(workers = self.workers.len(), at_batch = last, "rescaled");
        Ok(())
    }

    fn run_new_batch(&mut self, batch: BatchInfo) -> Result<(), Fault> {
        let (mut ranges, positions) = self.job.plan_inputs(&batch).map_err(Fault::from)?;
        // Records that cannot be read again go to the write-ahead log before the batch is logged.
        for (_, (key, bytes)) in self
            .job
            .log_inputs(&batch, &mut ranges)
            .map_err(Fault::from)?
        {
            self.ckpt.put_log(&key, &bytes).map_err(Fault::from)?;
        }
        self.ckpt
            .write_offsets(&OffsetEntry {
                batch: batch.index,
                time_ms: batch.time_ms,
                ranges: ranges.clone(),
                positions,
            })
            .map_err(Fault::from)?;
        let started = Instant::now();
        self.execute(batch, &ranges, false)?;
        self.complete(batch, started.elapsed().as_millis() as u64, false)
    }

    fn execute(
        &mut self,
        batch: BatchInfo,
        ranges: &BTreeMap<String, serde_json::Value>,
        replay: bool,
    ) -> Result<(), Fault> {
        let epoch = self.epoch;
        let ranges: std::collections::HashMap<String, String> = ranges
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        let what = format!("reading the input of batch {}", batch.index);
        self.all(&self.placed, &what, move |mut c| {
            let req = pb::BeginBatchRequest {
                epoch,
                batch: batch.index,
                time_ms: batch.time_ms,
                replay,
                ranges: ranges.clone(),
            };
            async move { c.begin_batch(req).await }
        })?;
        let stages = self.job.graph().plan(batch).stages.len();
        for stage in 0..stages {
            let what = format!("stage {} of {stages} of batch {}", stage + 1, batch.index);
            self.all(&self.placed, &what, move |mut c| async move {
                c.run_stage(pb::RunStageRequest {
                    epoch,
                    batch: batch.index,
                    stage: stage as u32,
                })
                .await
            })?;
        }
        Ok(())
    }

    fn complete(
        &mut self,
        batch: BatchInfo,
        processing_ms: u64,
        replay: bool,
    ) -> Result<(), Fault> {
        if batch.index.is_multiple_of(self.ckpt.interval) {
            self.snapshot(batch.index)?;
        }
        self.ckpt
            .write_commit(&CommitEntry {
                batch: batch.index,
                time_ms: batch.time_ms,
                records: 0,
                record_errors: 0,
                processing_ms,
                committed_at_ms: now_ms(),
            })
            .map_err(Fault::from)?;
        self.next = batch.index + 1;
        let total_delay = now_ms().saturating_sub(batch.time_ms);
        tracing::info!(
            "batch {} {}{}: processing {processing_ms}ms, total delay {total_delay}ms",
            batch.index,
            batch.display_time(),
            if replay { " (replayed)" } else { "" },
        );
        let behind = if replay {
            None
        } else {
            self.lag.observe(
                Duration::from_millis(total_delay.saturating_sub(processing_ms)),
                Duration::from_millis(batch.interval_ms),
            )
        };
        self.set_status(pb::MasterState::Running, behind.as_deref().unwrap_or(""));
        Ok(())
    }

    fn snapshot(&mut self, batch: u64) -> Result<(), Fault> {
        let epoch = self.epoch;
        let what = format!("the snapshot of batch {batch}");
        let replies = self.all(&self.placed, &what, move |mut c| async move {
            c.snapshot(pb::SnapshotRequest { epoch, batch }).await
        })?;
        let mut files: Vec<StateFile> = Vec::new();
        let mut covered = std::collections::BTreeSet::new();
        for (worker, reply) in replies.into_iter().enumerate() {
            for f in reply.files {
                // Each partition's state comes from its owner in this placement, once: a
                // snapshot holding another worker's (stale) copy would restore the wrong state.
                let Some((op, part)) = crate::checkpoint::state_file_part(batch, &f.key) else {
                    return Err(Fault::Rollback(format!(
                        "worker {} answered the snapshot of batch {batch} with a key outside it: {}",
                        self.placed[worker].id, f.key
                    )));
                };
                if self.owners.get(part) != Some(&worker) || !covered.insert((op, part)) {
                    return Err(Fault::Rollback(format!(
                        "worker {} sent state of partition {part} for batch {batch}, which it does not own in epoch {epoch}",
                        self.placed[worker].id
                    )));
                }
                files.push(StateFile {
                    key: f.key,
                    len: f.len,
                    crc32: f.crc32,
                });
            }
        }
        let expected = self.job.stateful_names().len() * self.job.partitions();
        if covered.len() != expected {
            return Err(Fault::Rollback(format!(
                "the snapshot of batch {batch} holds {} of the {expected} state partitions",
                covered.len()
            )));
        }
        self.ckpt
            .write_manifest(batch, files)
            .map_err(Fault::from)?;
        self.last_snapshot = batch;
        self.ckpt.prune().map_err(Fault::from)?;
        Ok(())
    }
}
