//! `sluice master`: the batch protocol ([`crate::coordinator`]) over a cluster of workers.
//!
//! - [`service`]: the gRPC side — workers register and leave, the operator reads the status;
//! - `cluster`: the runner — placement over the registered workers, calls to all of them at
//!   once with heartbeats, snapshots checked against the placement;
//! - [`placement`]: where each partition runs.
//!
//! When a worker is lost, its partitions move to the others, are loaded there from the newest
//! snapshot, and the committed batches after it are run again for them alone; the surviving
//! partitions keep their state. When that cannot be (the master restarted, a shuffle reads
//! state, a failure during recovery) every worker reloads the snapshot and the logged batches
//! are run again for all. Outputs are idempotent per batch time and partition, so the result
//! stays exactly once either way. A worker joining or leaving is placed at a batch boundary
//! after a fresh snapshot, so live rescaling replays nothing.

mod cluster;
pub mod placement;
pub mod service;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;

use crate::checkpoint::Checkpointer;
pub use crate::coordinator::Recovery;
use crate::coordinator::{self, BatchProgress, Class, Settings};
use crate::job::Job;
use crate::rpc::{AddToken, CheckToken, Tls, pb};

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
    /// What a worker loss redoes.
    pub recovery: Recovery,
    /// Where the loop's figures go, when they are served.
    pub metrics: Option<Arc<crate::metrics::RuntimeMetrics>>,
    /// Where to serve `grpc.health.v1` for probes.
    pub health: Option<SocketAddr>,
}

pub use sluice_proto::JOB_FAILED;

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
    let shared = Arc::new(Mutex::new(service::Shared::default()));
    let service = service::MasterService {
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
    if let Some(addr) = options.health {
        // Ready once the API serves: workers can register.
        let health = runtime.block_on(crate::rpc::health::Health::serve(
            addr,
            crate::rpc::health::MASTER,
        ))?;
        runtime.block_on(health.ready(true));
    }
    let cluster = cluster::Cluster::new(
        shared,
        runtime,
        AddToken::new(&options.token)?,
        options.fingerprint.clone(),
        options.tls.clone(),
        options.min_workers,
        ckpt.describe(),
    )
    .keeping_state_log(options.recovery == Recovery::Partial)
    .reporting_to(options.metrics.clone());
    let settings = Settings {
        job_name: options.job_name,
        job_uid: options.job_uid,
        fingerprint: options.fingerprint,
        stop_after: options.stop_after,
        stop: options.stop,
        paced: options.paced,
        on_batch: Box::new(BatchProgress::log),
        recovery: options.recovery,
        metrics: options.metrics,
    };
    match coordinator::run(job, ckpt, cluster, settings) {
        Ok(_) => Ok(()),
        Err(fault) if fault.class() == Class::Job => Err(MasterError::Job(fault.to_string())),
        Err(fault) => Err(MasterError::Other(fault.to_string())),
    }
}
