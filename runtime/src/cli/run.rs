//! `sluice run`: a job in this process, with the batch clock, checkpoints and signals.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use sluice_crds::defaults;

use super::validate::{check, print_problems};
use super::{EXIT_FAILED, EXIT_INVALID};
use crate::checkpoint::{CheckpointStore, lock_local_writer, open_store};
use crate::coordinator::BatchProgress;
use crate::local::{self, LocalOptions};
use crate::manifest::CompileOptions;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The StreamingJob manifest.
    pub file: PathBuf,
    /// Stop after this batch (counted from the job's first batch, so a resumed run stops at the
    /// same point). Default: run until interrupted.
    #[arg(long)]
    pub batches: Option<u64>,
    /// Task threads. Default: one per core.
    #[arg(long, env = "SLUICE_THREADS")]
    pub threads: Option<usize>,
    /// Run batches back to back instead of waiting for each batch's time (replays, catch-up,
    /// tests). Batch times stay those of the clock.
    #[arg(long)]
    pub no_wait: bool,
    /// Serve the job's metrics (Prometheus/OpenMetrics text) at http://ADDR/metrics, e.g.
    /// 127.0.0.1:9090 (port 0: any free port; the log says which), and the batch-timeline
    /// page at http://ADDR/.
    #[arg(long, env = "SLUICE_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Serve the batch-timeline page (charts of input rate, delays and processing time,
    /// recent batches, checkpoints) at http://ADDR/, e.g. 127.0.0.1:4040; /metrics too.
    #[arg(long, env = "SLUICE_UI_ADDR", value_name = "ADDR")]
    pub ui: Option<std::net::SocketAddr>,
}

pub(crate) fn run(args: RunArgs) -> ExitCode {
    let threads = args
        .threads
        .unwrap_or_else(|| CompileOptions::default().threads);
    if threads == 0 {
        eprintln!("sluice: --threads must be at least 1");
        return ExitCode::from(EXIT_INVALID);
    }
    let (manifest, job) = match check(
        &args.file,
        &CompileOptions {
            threads,
            discard_output: false,
        },
    ) {
        Ok(ok) => ok,
        Err(problems) => {
            print_problems(&args.file, &problems);
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let stop = match super::stop_flag() {
        Ok(stop) => stop,
        Err(code) => return code,
    };
    let ckpt = manifest.spec.checkpoint.as_ref();
    let writer_lock = match lock_local_writer(ckpt) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("sluice: spec.checkpoint.uri: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let store: Option<Box<dyn CheckpointStore>> = match ckpt {
        Some(c) => match open_store(c) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("sluice: spec.checkpoint.uri: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        },
        None => {
            tracing::warn!(
                "no spec.checkpoint: state lives in memory only and a restart begins from scratch"
            );
            None
        }
    };
    let metrics = match super::serve_metrics(
        &[args.metrics_addr, args.ui],
        &manifest,
        crate::metrics::Role::Local,
    ) {
        Ok(m) => m,
        Err(code) => return code,
    };
    tracing::info!(
        job = %manifest.metadata.name,
        batch_interval = %manifest.spec.batch_interval,
        partitions = job.partitions(),
        threads,
        "starting"
    );
    let options = LocalOptions {
        job_name: manifest.metadata.name.clone(),
        job_uid: manifest.metadata.uid.clone(),
        fingerprint: sluice_crds::fingerprint(&manifest.spec),
        store,
        writer_lock,
        snapshot_interval: ckpt
            .and_then(|c| c.interval)
            .unwrap_or(defaults::CHECKPOINT_INTERVAL) as u64,
        snapshot_every: ckpt.map(|c| c.snapshot_spacing()).unwrap_or_default(),
        retain: ckpt
            .and_then(|c| c.retain)
            .unwrap_or(defaults::CHECKPOINT_RETAIN) as usize,
        stop_after: args.batches,
        stop,
        paced: !args.no_wait,
        on_batch: Box::new(BatchProgress::log),
        metrics,
    };
    match local::run(job, options) {
        Ok(summary) => {
            tracing::info!(
                last_batch = summary.last_batch,
                batches = summary.batches,
                replayed = summary.replayed,
                recoveries = summary.recoveries,
                "stopped"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("job failed: {e}");
            ExitCode::from(if e.domain() == crate::error::Domain::User {
                EXIT_INVALID
            } else {
                EXIT_FAILED
            })
        }
    }
}
