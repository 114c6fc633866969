//! The `sluice` command: `run`, `validate`, `bench`. One binary serves every role.

mod bench;
mod bench_files;
mod bench_latency;
mod bench_nexmark;
mod bench_state;
mod bench_workers;
mod cluster;
mod plan;
mod run;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand};

/// Exit code for a manifest or usage problem, or a job at fault (the operator reads it).
pub const EXIT_INVALID: u8 = sluice_proto::EXIT_JOB_AT_FAULT;
/// Exit code for a job that failed while running.
pub const EXIT_FAILED: u8 = 1;

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Fault-tolerant micro-batch stream processing (Spark Streaming's DStream model)",
    long_about = "Sluice cuts live streams into small batches every batch interval and runs each batch as a \
deterministic, partitioned job, with exactly-once results across crashes.\n\n\
A job is a StreamingJob manifest (the same YAML `kubectl apply` takes). Run it locally with \
`sluice run job.yaml`; check it with `sluice validate job.yaml`.",
    after_help = "Examples:\n  sluice run examples/wordcount.yaml --batches 5\n  sluice validate examples/*.yaml\n  sluice bench --seconds 10"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter, e.g. `info`, `debug`, `sluice=debug`.
    #[arg(long, global = true, env = "SLUICE_LOG", default_value = "info")]
    log: String,
    /// Log format: `text` (for people; coloured on a terminal unless NO_COLOR is set) or
    /// `json` (one object per line, for log collectors).
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", default_value = "text")]
    log_format: sluice_proto::logs::LogFormat,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a job in this process until interrupted (local mode).
    #[command(
        after_help = "Ctrl-C (SIGINT) or SIGTERM finishes the current batch, writes a checkpoint and exits 0; \
a second Ctrl-C exits at once.\nWith spec.checkpoint set, running the same command again resumes where the job stopped, \
even after kill -9.\n\nExample:\n  sluice run examples/wordcount.yaml\n  sluice run examples/hashtags.yaml --batches 20"
    )]
    Run(run::RunArgs),
    /// Check manifests without running them; one line per problem, exit 2 if any.
    #[command(after_help = "Example:\n  sluice validate examples/*.yaml\n  \
job.yaml: spec.pipeline[2].window.slide: 3s is not a multiple of spec.batchInterval 2s")]
    Validate {
        /// Manifest files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Say what a changed manifest does to the job's checkpoint, change by change.
    #[command(
        after_help = "Each change is live (applied without a restart), restart (the job resumes from its checkpoint with all \
its state), state migration (state re-sharded onto a new parallelism, or a new stateful step starting empty), state loss \
(a removed stateful step's state is dropped) or cannot restore (a stateful step's state changed form, or the batch \
interval changed).\n\nExit status: 0 restores, 1 restores with stated losses (the job proceeds only with \
spec.upgrade.allowStateLoss: true), 2 cannot restore, 3 a manifest or the checkpoint cannot be read.\n\n\
Example:\n  sluice plan job.yaml job-v2.yaml\n  sluice plan job.yaml job-v2.yaml --checkpoint s3://ckpt/jobs/wc"
    )]
    Plan(plan::PlanArgs),
    /// Run the master of a distributed job: batch clock, placement, checkpoints.
    #[command(
        after_help = "Needs SLUICE_TOKEN (shared with the workers) and spec.checkpoint (usually s3://...).\n\nExample:\n  SLUICE_TOKEN=... sluice master job.yaml --listen 0.0.0.0:7070 --min-workers 3"
    )]
    Master(cluster::MasterArgs),
    /// Run a worker of a distributed job: tasks, shuffle, keyed state.
    #[command(
        after_help = "Needs SLUICE_TOKEN (the master's) and the same manifest as the master.\n\nExample:\n  SLUICE_TOKEN=... sluice worker job.yaml --master sluice-master:7070 --listen 0.0.0.0:7071"
    )]
    Worker(cluster::WorkerArgs),
    /// Measure throughput and batch latency of the built-in benchmark jobs.
    #[command(
        after_help = "Runs WordCount, windowed WordCount and a stateful running count on 100-byte generated \
lines (10,000-word Zipf vocabulary), prints records/s and per-batch latency p50/p99.\n\nExample:\n  sluice bench --seconds 10"
    )]
    Bench(bench::BenchArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_INVALID } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    sluice_proto::logs::init(&cli.log, cli.log_format);
    // Several rustls providers are compiled in (ring for gRPC, aws-lc for the S3 client):
    // pick one for everything that uses the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Validate { files } => validate::validate(&files),
        Command::Plan(args) => plan::plan(args),
        Command::Bench(args) => bench::bench(args),
        Command::Master(args) => cluster::master(args),
        Command::Worker(args) => cluster::worker(args),
    }
}

/// Set by SIGINT or SIGTERM: finish the batch, checkpoint, exit. A second signal while stopping
/// exits at once.
pub(crate) fn stop_flag() -> Result<Arc<AtomicBool>, ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let registered = signal_hook::flag::register_conditional_shutdown(signal, 1, stop.clone())
            .and_then(|_| signal_hook::flag::register(signal, stop.clone()));
        if let Err(e) = registered {
            eprintln!("sluice: cannot handle signal {signal}: {e}");
            return Err(ExitCode::from(EXIT_FAILED));
        }
    }
    Ok(stop)
}

/// Starts serving the metrics of `manifest`'s job (and the page, but on a worker), as a
/// process in `role`, at each address given; `None` when none is.
pub(crate) fn serve_metrics(
    addrs: &[Option<std::net::SocketAddr>],
    manifest: &sluice_crds::StreamingJob,
    role: crate::metrics::Role,
) -> Result<Option<Arc<crate::metrics::RuntimeMetrics>>, ExitCode> {
    let addrs: Vec<std::net::SocketAddr> = addrs.iter().flatten().copied().collect();
    if addrs.is_empty() {
        return Ok(None);
    }
    let metrics = Arc::new(crate::metrics::RuntimeMetrics::new(
        &manifest.metadata.name,
        manifest.metadata.namespace.as_deref().unwrap_or(""),
        role,
    ));
    for addr in addrs {
        if let Err(e) = crate::metrics::http::spawn(addr, metrics.clone()) {
            eprintln!("sluice: cannot serve metrics at {addr}: {e}");
            return Err(ExitCode::from(EXIT_FAILED));
        }
    }
    Ok(Some(metrics))
}
