//! The cluster runner: the coordinator's batches run on the registered workers. It keeps who
//! is registered and who holds the present placement (epoch), calls every placed worker at
//! once with heartbeats while it waits, and tells a slow worker from a lost one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tonic::Status as RpcStatus;

use super::placement;
use super::service::Shared;
use crate::checkpoint::{Checkpointer, StateFile};
use crate::coordinator::{
    BatchFigures, BatchInput, Fault, Poll, Runner, StateFiles, Status, protocol,
};
use crate::exec::lock_unpoisoned;
use crate::job::{BatchReport, Job};
use crate::rpc::{AddToken, MAX_MESSAGE_BYTES, Tls, channel, pb};
use crate::time::now_ms;

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

impl WorkerRef {
    fn same_process(&self, other: &WorkerRef) -> bool {
        self.id == other.id && self.incarnation == other.incarnation
    }
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
/// How often idle workers hear from the master, so that they do not register again.
const KEEPALIVE: Duration = Duration::from_secs(1);

/// The workers of a job, as the master sees them.
pub struct Cluster {
    /// Registered workers, live as far as the master knows.
    workers: Vec<WorkerRef>,
    /// The workers of the current placement (epoch), as they were when it was made; batches,
    /// snapshots and restores go to them only. A worker registered since is not in it, and a
    /// worker dropped since makes the next step a new placement.
    placed: Vec<WorkerRef>,
    /// owners[p] = index into `placed`.
    owners: Vec<usize>,
    epoch: u64,
    /// Workers that asked to leave, released once their partitions are placed elsewhere.
    leaving: Vec<(String, oneshot::Sender<()>)>,
    min_workers: usize,
    shared: Arc<Mutex<Shared>>,
    runtime: Handle,
    token: AddToken,
    fingerprint: String,
    tls: Option<Tls>,
    checkpoint_uri: String,
    last_ping: Instant,
    /// The last status the coordinator reported; a long wait is shown on top of it.
    status: Status,
    /// Whether the workers write the state log.
    state_log: bool,
    metrics: Option<Arc<crate::metrics::RuntimeMetrics>>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn figures(b: &BatchFigures) -> pb::BatchFigures {
    pb::BatchFigures {
        batch: b.batch,
        time_ms: b.time_ms,
        records: b.records,
        processing_ms: millis(b.processing),
        scheduling_delay_ms: millis(b.scheduling_delay),
        total_delay_ms: millis(b.total_delay),
        input_rate: b.input_rate,
        backlog: b.backlog,
        replay: b.replay,
        workers: b.workers,
    }
}

impl Cluster {
    /// Whether the workers write the state log (on unless recovery is global).
    pub fn keeping_state_log(mut self, keep: bool) -> Self {
        self.state_log = keep;
        self
    }

    /// Where the number of placed workers goes.
    pub fn reporting_to(mut self, metrics: Option<Arc<crate::metrics::RuntimeMetrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: Arc<Mutex<Shared>>,
        runtime: Handle,
        token: AddToken,
        fingerprint: String,
        tls: Option<Tls>,
        min_workers: usize,
        checkpoint_uri: String,
    ) -> Self {
        Self {
            workers: Vec::new(),
            placed: Vec::new(),
            owners: Vec::new(),
            // Epochs grow across masters too, so that a worker can tell a message of a master
            // before a restart from one of the present master: start from the clock.
            epoch: now_ms(),
            leaving: Vec::new(),
            min_workers,
            shared,
            runtime,
            token,
            fingerprint,
            tls,
            checkpoint_uri,
            last_ping: Instant::now(),
            status: Status::default(),
            state_log: true,
            metrics: None,
        }
    }

    fn publish(&self, state: pb::MasterState, message: &str) {
        lock_unpoisoned(&self.shared).status = pb::StatusReply {
            state: state.into(),
            last_completed_batch: self.status.last_completed_batch,
            last_checkpoint_batch: self.status.last_checkpoint_batch,
            checkpoint_uri: self.checkpoint_uri.clone(),
            recoveries: self.status.recoveries,
            workers: self.workers.iter().map(|w| w.id.clone()).collect(),
            message: message.to_string(),
            epoch: self.epoch,
            last_batch: self.status.last_batch().map(figures),
            recent: self.status.recent.iter().map(figures).collect(),
            partitions: self.status.partitions,
            interval_ms: self.status.interval_ms,
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

    /// Adds registered workers and takes leave requests; true when membership changed.
    fn take_membership_changes(&mut self) -> bool {
        let (joins, leaves) = {
            let mut shared = lock_unpoisoned(&self.shared);
            (
                std::mem::take(&mut shared.joins),
                std::mem::take(&mut shared.leaves),
            )
        };
        let mut changed = !leaves.is_empty();
        self.leaving.extend(leaves);
        for join in joins {
            // The same process registering again (it thought us gone) keeps its place.
            if self.workers.iter().any(|w| {
                w.id == join.id && w.address == join.address && w.incarnation == join.incarnation
            }) {
                continue;
            }
            // Otherwise it is new, or restarted and empty: it needs a placement.
            self.workers
                .retain(|w| w.id != join.id && w.address != join.address);
            match self.client(&join.address) {
                Ok(client) => {
                    tracing::info!(worker = %join.id, address = %join.address, "worker registered");
                    self.workers.push(WorkerRef {
                        id: join.id,
                        address: join.address,
                        incarnation: join.incarnation,
                        client,
                    });
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(worker = %join.id, error = %e, "ignoring a worker with a bad address")
                }
            }
        }
        changed
    }

    /// Lets the workers that asked to leave go: they hold nothing of the next placement.
    fn release_leavers(&mut self) {
        for (id, done) in std::mem::take(&mut self.leaving) {
            self.workers.retain(|w| w.id != id);
            tracing::info!(worker = %id, "worker left");
            let _ = done.send(());
        }
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
        Fut: std::future::Future<Output = Result<tonic::Response<T>, RpcStatus>> + Send + 'static,
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
        let mut results: Vec<Option<Result<T, RpcStatus>>> = std::iter::repeat_with(|| None)
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
                            self.publish(pb::MasterState::Stalled, &message);
                        }
                    }
                }
            }
        });
        if warned_at.is_some() {
            tracing::info!(waited = ?started.elapsed(), "{what} done after a long wait");
        }
        if let Err((worker, why)) = waited {
            return Err(Fault::Lost { worker, why });
        }
        let mut out = Vec::with_capacity(results.len());
        for (w, r) in workers.iter().zip(results) {
            match r {
                Some(Ok(v)) => out.push(v),
                Some(Err(e)) => return Err(self.fault(workers, w, e)),
                None => {
                    return Err(Fault::Lost {
                        worker: w.id.clone(),
                        why: format!("no answer for {what}"),
                    });
                }
            }
        }
        Ok(out)
    }

    /// What an error from worker `w` means for the job.
    fn fault(&self, workers: &[WorkerRef], w: &WorkerRef, e: RpcStatus) -> Fault {
        let why = format!("worker {}: {}: {}", w.id, e.code(), e.message());
        // An engine error says whose fault it is.
        match crate::rpc::error_domain(&e) {
            Some(pb::ErrorDomain::User) => {
                return Fault::Job(format!("worker {}: {}", w.id, e.message()));
            }
            Some(pb::ErrorDomain::External) => return Fault::Retry(why),
            Some(pb::ErrorDomain::Damaged) => return Fault::Damaged(why),
            Some(pb::ErrorDomain::Internal) => return Fault::Fatal(why),
            Some(pb::ErrorDomain::Unspecified) | None => {}
        }
        match e.code() {
            // The call failed on the way: the worker may be gone, or it may be reporting a
            // peer it could not reach (a shuffle push). Dropping a live worker would leave it
            // holding a placement and state the master no longer knows of, so ask every
            // worker who is really gone.
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded => {
                let everyone: Vec<&WorkerRef> = workers.iter().collect();
                match self.runtime.block_on(self.heartbeat(&everyone)) {
                    Some((worker, ping)) => Fault::Lost {
                        worker,
                        why: format!("{ping} ({why})"),
                    },
                    None => Fault::Rollback(why),
                }
            }
            // Work for another placement or batch than the worker holds: place again.
            tonic::Code::Aborted | tonic::Code::FailedPrecondition => Fault::Rollback(why),
            // A worker that answers with an error is alive (its disk or the store failed).
            _ => Fault::Retry(why),
        }
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

    /// Pings every registered worker (at most every [`KEEPALIVE`]), so that idle workers
    /// know the master is there and a dead one is found.
    fn keepalive(&mut self) -> Result<(), Fault> {
        if self.workers.is_empty() || self.last_ping.elapsed() < KEEPALIVE {
            return Ok(());
        }
        self.last_ping = Instant::now();
        self.all(&self.workers, "a ping", |mut c| async move {
            c.ping(pb::PingRequest { epoch: 0 }).await
        })
        .map(|_| ())
    }
}

impl Runner for Cluster {
    fn poll(&mut self, started: bool) -> Result<Poll, Fault> {
        let changed = self.take_membership_changes();
        // The minimum gates the start only; afterwards any live worker keeps the job going.
        let required = if started { 1 } else { self.min_workers.max(1) };
        let staying = self
            .workers
            .iter()
            .filter(|w| !self.leaving.iter().any(|(id, _)| *id == w.id))
            .count();
        if staying < required {
            // Nothing runs, so nothing is handed off.
            self.release_leavers();
            if let Err(Fault::Lost { worker, why }) = self.keepalive() {
                tracing::warn!(%worker, error = %why, "registered worker is gone");
                self.workers.retain(|w| w.id != worker);
            }
            return Ok(Poll::Wait(format!(
                "waiting for workers ({} of {required})",
                self.workers.len()
            )));
        }
        Ok(if changed { Poll::Changed } else { Poll::Ready })
    }

    /// Spreads partitions over the workers, keeping owners where possible, in a new epoch.
    fn place(&mut self, job: &Job) -> Result<(), Fault> {
        self.release_leavers();
        let partitions = job.partitions();
        // Where each partition was, as an index into the present workers (if its owner is
        // still here, as the same process).
        let previous: Vec<Option<usize>> = self
            .owners
            .iter()
            .map(|o| {
                let was = self.placed.get(*o)?;
                self.workers.iter().position(|w| w.same_process(was))
            })
            .collect();
        self.owners = placement::spread(&previous, partitions, self.workers.len());
        self.placed = self.workers.clone();
        self.epoch += 1;
        let addresses: Vec<String> = self
            .owners
            .iter()
            .map(|w| self.placed[*w].address.clone())
            .collect();
        let (epoch, fingerprint, state_log) =
            (self.epoch, self.fingerprint.clone(), self.state_log);
        self.all(
            &self.placed,
            &format!("the placement of epoch {epoch}"),
            move |mut c| {
                let req = pb::AssignRequest {
                    epoch,
                    master_id: String::new(),
                    owners: addresses.clone(),
                    fingerprint: fingerprint.clone(),
                    state_log,
                };
                async move { c.assign(req).await }
            },
        )?;
        tracing::info!(epoch, workers = self.placed.len(), "partitions assigned");
        if let Some(m) = &self.metrics {
            m.placement(
                self.owners
                    .iter()
                    .map(|w| self.placed[*w].id.clone())
                    .collect(),
            );
        }
        Ok(())
    }

    fn replace_lost(&mut self, job: &Job) -> Result<Option<Vec<usize>>, Fault> {
        if self.placed.is_empty() || self.owners.len() != job.partitions() {
            return Ok(None);
        }
        let before: Vec<WorkerRef> = self
            .owners
            .iter()
            .map(|o| self.placed[*o].clone())
            .collect();
        self.place(job)?;
        // Moved: placed on another process than before (the lost worker's, a restarted
        // worker's, a leaver's, or a share given to a worker that joined meanwhile).
        let moved = (0..job.partitions())
            .filter(|p| !self.placed[self.owners[*p]].same_process(&before[*p]))
            .collect();
        Ok(Some(moved))
    }

    fn restore(
        &mut self,
        _job: &mut Job,
        _ckpt: &Checkpointer,
        snapshot: u64,
        only: Option<&[usize]>,
    ) -> Result<(), Fault> {
        let epoch = self.epoch;
        let partitions: Vec<u32> = only.unwrap_or_default().iter().map(|p| *p as u32).collect();
        let partial = only.is_some();
        let what = format!("loading the snapshot of batch {snapshot}");
        self.all(&self.placed, &what, move |mut c| {
            let req = pb::RestoreRequest {
                epoch,
                snapshot_batch: snapshot,
                partial,
                partitions: partitions.clone(),
            };
            async move { c.restore(req).await }
        })?;
        Ok(())
    }

    fn apply_state_log(
        &mut self,
        plan: &[protocol::LogBatch],
        moved: &[usize],
    ) -> Result<usize, Fault> {
        if plan.is_empty() {
            return Ok(0);
        }
        let epoch = self.epoch;
        let partitions: Vec<u32> = moved.iter().map(|p| *p as u32).collect();
        let batches: Vec<pb::LoggedBatch> = plan
            .iter()
            .map(|b| pb::LoggedBatch {
                batch: b.batch,
                time_ms: b.time_ms,
                keys: b.keys.clone(),
            })
            .collect();
        let what = format!(
            "rebuilding {} partitions from the state log of {} batches",
            moved.len(),
            plan.len()
        );
        let replies = self.all(&self.placed, &what, move |mut c| {
            let req = pb::ApplyStateLogRequest {
                epoch,
                partitions: partitions.clone(),
                batches: batches.clone(),
            };
            async move { c.apply_state_log(req).await }
        })?;
        let applied = replies
            .iter()
            .map(|r| r.applied as usize)
            .min()
            .unwrap_or(0);
        Ok(applied.min(plan.len()))
    }

    fn execute(
        &mut self,
        job: &mut Job,
        _ckpt: &Checkpointer,
        input: BatchInput<'_>,
    ) -> Result<BatchReport, Fault> {
        // The workers write outputs in stages this runner does not tell apart: the batch
        // starts once its offset entry is logged.
        if let Some(wait) = input.before_outputs {
            wait()?;
        }
        let started = Instant::now();
        let (epoch, batch, replay) = (self.epoch, input.batch, input.replay);
        let partial = input.redo.is_some();
        let redo: Vec<u32> = input
            .redo
            .unwrap_or_default()
            .iter()
            .map(|p| *p as u32)
            .collect();
        let ranges: std::collections::HashMap<String, String> = input
            .ranges
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
                partial,
                redo: redo.clone(),
            };
            async move { c.begin_batch(req).await }
        })?;
        let plan = job.graph().plan(batch);
        let stages = plan.stages.len();
        let mut times = Vec::with_capacity(stages + 1);
        times.push(("input".to_string(), started.elapsed()));
        let mut last: Vec<pb::StageReply> = Vec::new();
        for (stage, kind) in plan.stages.iter().map(|s| &s.kind).enumerate() {
            let stage_started = Instant::now();
            let what = format!("stage {} of {stages} of batch {}", stage + 1, batch.index);
            last = self.all(&self.placed, &what, move |mut c| async move {
                c.run_stage(pb::RunStageRequest {
                    epoch,
                    batch: batch.index,
                    stage: stage as u32,
                })
                .await
            })?;
            times.push((kind.label(), stage_started.elapsed()));
        }
        Ok(BatchReport {
            batch,
            records: last.iter().map(|r| r.records).sum(),
            record_errors: last.iter().map(|r| r.record_errors).sum(),
            error_samples: last
                .into_iter()
                .flat_map(|r| r.error_samples)
                .take(crate::exec::ERROR_SAMPLES)
                .collect(),
            processing: started.elapsed(),
            replay,
            stages: times,
        })
    }

    fn snapshot(
        &mut self,
        _job: &Job,
        _ckpt: &Checkpointer,
        batch: u64,
    ) -> Result<StateFiles, Fault> {
        let epoch = self.epoch;
        let what = format!("the snapshot of batch {batch}");
        let replies = self.all(&self.placed, &what, move |mut c| async move {
            c.snapshot(pb::SnapshotRequest { epoch, batch }).await
        })?;
        let mut files: Vec<StateFile> = Vec::new();
        for (worker, reply) in replies.into_iter().enumerate() {
            for f in reply.files {
                // Each partition's state comes from its owner in this placement: a snapshot
                // holding another worker's (stale) copy would restore the wrong state.
                let part = crate::checkpoint::state_file_part(batch, &f.key).map(|(_, p)| p);
                if part.and_then(|p| self.owners.get(p)) != Some(&worker) {
                    return Err(Fault::Rollback(format!(
                        "worker {} sent state file {} for batch {batch}, which is not of a partition it owns in epoch {epoch}",
                        self.placed[worker].id, f.key
                    )));
                }
                files.push(StateFile {
                    key: f.key,
                    len: f.len,
                    crc32: f.crc32,
                    // Workers write whole snapshots.
                    delta: false,
                    from: None,
                });
            }
        }
        Ok(StateFiles::Written(files))
    }

    /// Whether every worker of the current placement is still registered as the same process:
    /// only then can they snapshot what they hold.
    fn placement_intact(&self) -> bool {
        !self.placed.is_empty()
            && self
                .placed
                .iter()
                .all(|p| self.workers.iter().any(|w| w.same_process(p)))
    }

    fn idle(&mut self) -> Result<(), Fault> {
        self.keepalive()
    }

    fn lost(&mut self, worker: &str) {
        self.workers.retain(|w| w.id != worker);
    }

    fn report(&mut self, status: &Status) {
        self.status = status.clone();
        self.publish(status.state, &status.message);
    }

    fn busy_workers(&self) -> usize {
        let mut owners = self.owners.clone();
        owners.sort_unstable();
        owners.dedup();
        owners.len()
    }
}
