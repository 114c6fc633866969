//! `sluice master` and `sluice worker`: the two roles of a distributed job.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use sluice_crds::defaults;

use super::validate::{check, print_problems};
use super::{EXIT_FAILED, EXIT_INVALID};
use crate::checkpoint::{Checkpointer, lock_local_writer, open_store};
use crate::manifest::CompileOptions;
use crate::rpc::token_from_env;

/// Mutual TLS between master and workers; all three files or none.
#[derive(Args, Debug)]
pub struct TlsArgs {
    /// This process's TLS certificate (PEM); with --tls-key and --tls-ca, master and workers
    /// talk mutual TLS.
    #[arg(long = "tls-cert", env = "SLUICE_TLS_CERT")]
    pub cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long = "tls-key", env = "SLUICE_TLS_KEY")]
    pub key: Option<PathBuf>,
    /// The CA that signed the job's certificates (PEM).
    #[arg(long = "tls-ca", env = "SLUICE_TLS_CA")]
    pub ca: Option<PathBuf>,
    /// The name every job certificate carries as a SAN.
    #[arg(
        long = "tls-server-name",
        env = "SLUICE_TLS_SERVER_NAME",
        default_value = "sluice"
    )]
    pub server_name: String,
}

impl TlsArgs {
    fn load(&self) -> Result<Option<crate::rpc::Tls>, String> {
        crate::rpc::Tls::load(
            self.cert.as_deref(),
            self.key.as_deref(),
            self.ca.as_deref(),
            &self.server_name,
        )
    }
}

#[derive(Args, Debug)]
pub struct MasterArgs {
    /// The StreamingJob manifest (the same file every worker gets).
    pub file: PathBuf,
    /// Address to serve the master API on.
    #[arg(long, env = "SLUICE_MASTER_LISTEN", default_value = "0.0.0.0:7070")]
    pub listen: SocketAddr,
    /// Workers to wait for before the first batch.
    #[arg(long, env = "SLUICE_MIN_WORKERS", default_value_t = 1)]
    pub min_workers: usize,
    /// Stop after this batch (counted from the job's first batch).
    #[arg(long)]
    pub batches: Option<u64>,
    /// Run batches back to back instead of waiting for each batch's time.
    #[arg(long)]
    pub no_wait: bool,
    /// On a worker loss, roll every worker back to the last snapshot and replay the log for
    /// all partitions, instead of rebuilding the lost partitions alone (for comparisons).
    #[arg(long)]
    pub global_recovery: bool,
    /// Serve the job's metrics (Prometheus/OpenMetrics text) at http://ADDR/metrics, e.g.
    /// 0.0.0.0:9090, and the batch-timeline page at http://ADDR/.
    #[arg(long, env = "SLUICE_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve the batch-timeline page (and /metrics) at http://ADDR/ as well, e.g.
    /// 0.0.0.0:4040.
    #[arg(long, env = "SLUICE_UI_ADDR", value_name = "ADDR")]
    pub ui: Option<SocketAddr>,
    /// Serve gRPC health (grpc.health.v1, no TLS) at ADDR for probes: service
    /// sluice.v1.Master is SERVING once the master's API is up.
    #[arg(long, env = "SLUICE_HEALTH_ADDR", value_name = "ADDR")]
    pub health_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The StreamingJob manifest (the same file the master gets).
    pub file: PathBuf,
    /// The master's address (host:port).
    #[arg(long, env = "SLUICE_MASTER")]
    pub master: String,
    /// Address to serve the worker API on.
    #[arg(long, env = "SLUICE_WORKER_LISTEN", default_value = "0.0.0.0:7071")]
    pub listen: SocketAddr,
    /// How the master and other workers reach this one (host:port). Default: `$POD_IP` (or the
    /// listen address) with the listen port.
    #[arg(long, env = "SLUICE_ADVERTISE")]
    pub advertise: Option<String>,
    /// A stable name for this worker. Default: `$HOSTNAME`, else the advertised address.
    #[arg(long, env = "SLUICE_WORKER_ID")]
    pub id: Option<String>,
    /// Task threads. Default: one per core.
    #[arg(long, env = "SLUICE_THREADS")]
    pub threads: Option<usize>,
    /// Serve this worker's metrics (records per source and sink, shuffle bytes, state,
    /// partitions owned) at http://ADDR/metrics, e.g. 0.0.0.0:9090.
    #[arg(long, env = "SLUICE_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve gRPC health (grpc.health.v1, no TLS) at ADDR for probes: service
    /// sluice.v1.Worker is SERVING while the worker is registered with its master.
    #[arg(long, env = "SLUICE_HEALTH_ADDR", value_name = "ADDR")]
    pub health_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// The async runtime of a master or worker. Both serve connections from the network, so the
/// open-file limit is raised first (the listener's own limits then apply before the kernel's).
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    if let Some(limit) = crate::rpc::listener::raise_file_limit() {
        tracing::debug!(limit, "open-file limit");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn load(
    file: &std::path::Path,
    threads: usize,
) -> Result<(sluice_crds::StreamingJob, crate::job::Job, Checkpointer), ExitCode> {
    let (manifest, job) = match check(
        file,
        &CompileOptions {
            threads,
            discard_output: false,
        },
    ) {
        Ok(ok) => ok,
        Err(problems) => {
            print_problems(file, &problems);
            return Err(ExitCode::from(EXIT_INVALID));
        }
    };
    let Some(spec) = manifest.spec.checkpoint.as_ref() else {
        eprintln!(
            "{}: spec.checkpoint: a distributed job needs a checkpoint location shared by master and workers (s3://bucket/prefix)",
            file.display()
        );
        return Err(ExitCode::from(EXIT_INVALID));
    };
    let store = match open_store(spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice: spec.checkpoint: {e}");
            return Err(ExitCode::from(EXIT_FAILED));
        }
    };
    let ckpt = Checkpointer::new(
        store,
        spec.interval.unwrap_or(defaults::CHECKPOINT_INTERVAL) as u64,
        spec.retain.unwrap_or(defaults::CHECKPOINT_RETAIN) as usize,
    )
    .snapshot_every(spec.snapshot_spacing());
    Ok((manifest, job, ckpt))
}

pub(crate) fn master(args: MasterArgs) -> ExitCode {
    let token = match token_from_env() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice master: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let tls = match args.tls.load() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice master: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let (manifest, job, ckpt) = match load(&args.file, 1) {
        Ok(x) => x,
        Err(code) => return code,
    };
    // The master alone writes the offset and commit logs (workers write their snapshots).
    let ckpt = match lock_local_writer(manifest.spec.checkpoint.as_ref()) {
        Ok(Some(lock)) => ckpt.holding(lock),
        Ok(None) => ckpt,
        Err(e) => {
            eprintln!("sluice master: spec.checkpoint.uri: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let stop = match super::stop_flag() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let metrics = match super::serve_metrics(
        &[args.metrics_addr, args.ui],
        &manifest,
        crate::metrics::Role::Master,
    ) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice master: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let options = crate::master::MasterOptions {
        listen: args.listen,
        job_name: manifest.metadata.name.clone(),
        job_uid: manifest.metadata.uid.clone(),
        fingerprint: sluice_crds::fingerprint(&manifest.spec),
        token,
        min_workers: args.min_workers,
        stop_after: args.batches,
        stop,
        paced: !args.no_wait,
        tls,
        metrics,
        health: args.health_addr,
        recovery: if args.global_recovery {
            crate::master::Recovery::Global
        } else {
            crate::master::Recovery::Partial
        },
    };
    match crate::master::run(job, ckpt, options, rt.handle().clone()) {
        Ok(()) => ExitCode::SUCCESS,
        // As `sluice run`: exit 2 when the job itself is at fault, so that whoever restarts
        // the master (the operator) can stop instead of failing the same way again.
        Err(e @ crate::master::MasterError::Job(_)) => {
            tracing::error!("{e}");
            ExitCode::from(EXIT_INVALID)
        }
        Err(e) => {
            tracing::error!("master failed: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

pub(crate) fn worker(args: WorkerArgs) -> ExitCode {
    let token = match token_from_env() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice worker: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let threads = args
        .threads
        .unwrap_or_else(|| CompileOptions::default().threads)
        .max(1);
    let tls = match args.tls.load() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice worker: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let (manifest, mut job, ckpt) = match load(&args.file, threads) {
        Ok(x) => x,
        Err(code) => return code,
    };
    match super::serve_metrics(
        &[args.metrics_addr],
        &manifest,
        crate::metrics::Role::Worker,
    ) {
        Ok(Some(m)) => job.set_metrics(m),
        Ok(None) => {}
        Err(code) => return code,
    }
    let advertise = args.advertise.clone().unwrap_or_else(|| {
        let host = std::env::var("POD_IP")
            .ok()
            .filter(|ip| !ip.is_empty())
            .unwrap_or_else(|| {
                if args.listen.ip().is_unspecified() {
                    "127.0.0.1".to_string()
                } else {
                    args.listen.ip().to_string()
                }
            });
        format!("{host}:{}", args.listen.port())
    });
    let id = args
        .id
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| advertise.clone());
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice worker: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let options = crate::worker::WorkerOptions {
        id,
        listen: args.listen,
        advertise,
        master: args.master.clone(),
        fingerprint: sluice_crds::fingerprint(&manifest.spec),
        token,
        tls,
        health: args.health_addr,
    };
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
        }
    };
    match rt.block_on(crate::worker::run(job, ckpt, options, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("worker failed: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
