//! `sluice bench --latency`: end-to-end latency against the batch interval, at a low rate,
//! with exactly-once output on. Each job runs paced (batches at their times, as a live job) for
//! each interval, once with a checkpoint in a local directory (offset log, commits and
//! snapshots fsynced) and once without, into the files sink; the difference is what the
//! checkpoint costs every batch.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::bench::{BenchArgs, percentile};
use super::bench_files::Scratch;
use crate::checkpoint::LocalStore;
use crate::coordinator::BatchProgress;
use crate::local::{self, LocalOptions};
use crate::manifest::{CompileOptions, compile};

/// Lines per second: a low rate, where a batch's fixed cost is all its cost.
const RATE: u64 = 10_000;
/// The intervals measured, ms (10 ms is the shortest a manifest takes).
const INTERVALS: [u64; 5] = [10, 20, 50, 100, 1000];
/// Batches before the measured ones (the process and the checkpoint warming up).
const WARM: u64 = 5;
/// Batches between snapshots, as a live job's default.
const SNAPSHOT_EVERY: u64 = 10;

/// A job of the latency table.
#[derive(Clone, Copy)]
enum Job {
    /// Each line to its length.
    Stateless,
    /// A running count per word, emitting the words the batch touched (`mapWithState`).
    RunningCount,
}

impl Job {
    fn name(self) -> &'static str {
        match self {
            Job::Stateless => "stateless",
            Job::RunningCount => "running count",
        }
    }

    fn steps(self) -> &'static str {
        match self {
            Job::Stateless => "{map: {expr: \"size(record)\"}}",
            Job::RunningCount => {
                "{flatMap: {split: \" \"}}, {countByValue: {}}, {mapWithState: {expr: \"{'state': (state == null ? 0 : state) + value, 'emit': (state == null ? 0 : state) + value}\"}}"
            }
        }
    }
}

/// What one run showed.
struct Latency {
    e2e_p50: Duration,
    e2e_p99: Duration,
    processing_p50: Duration,
    processing_p99: Duration,
}

fn run(
    job: Job,
    interval_ms: u64,
    checkpointed: bool,
    seconds: u64,
    args: &BenchArgs,
    threads: usize,
) -> Result<Latency, String> {
    let dir = Scratch::new(&format!("latency-{interval_ms}-{checkpointed}"))?;
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: bench}}\nspec:\n  batchInterval: {interval_ms}ms\n  parallelism: {}\n  sources:\n    - name: lines\n      generator: {{rate: {RATE}, seed: 42, vocabulary: 10000, lineBytes: 100}}\n  pipeline: [{}]\n  sinks:\n    - files: {{path: \"{}\"}}\n",
        args.parallelism,
        job.steps(),
        dir.path().join("out").display()
    );
    let spec = sluice_crds::load(&text).map_err(|p| format!("{p:?}"))?;
    let compiled = compile(
        &spec,
        &CompileOptions {
            threads,
            discard_output: false,
        },
    )
    .map_err(|p| format!("{p:?}"))?;
    let store = if checkpointed {
        let store = LocalStore::open(dir.path().join("ckpt"))
            .map_err(|e| format!("checkpoint directory: {e}"))?;
        Some(Box::new(store) as Box<_>)
    } else {
        None
    };
    let batches = WARM + (seconds * 1000).div_ceil(interval_ms).max(10);
    let seen: Arc<Mutex<Vec<BatchProgress>>> = Arc::default();
    let sink = seen.clone();
    local::run(
        compiled,
        LocalOptions {
            job_name: "bench".into(),
            job_uid: None,
            fingerprint: sluice_crds::fingerprint(&spec.spec),
            store,
            snapshot_interval: SNAPSHOT_EVERY,
            retain: 2,
            stop_after: Some(batches),
            stop: Arc::new(AtomicBool::new(false)),
            paced: true,
            on_batch: Box::new(move |p| {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(p.clone())
            }),
            metrics: None,
        },
    )
    .map_err(|e| e.to_string())?;
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let measured: Vec<&BatchProgress> = seen.iter().skip(WARM as usize).collect();
    if measured.is_empty() {
        return Err("no batch was measured".into());
    }
    let interval = Duration::from_millis(interval_ms);
    // A line's time is spread evenly over its batch's interval, which ends at the batch
    // time: from it to the batch's completion.
    let mut e2e: Vec<Duration> = measured
        .iter()
        .flat_map(|p| {
            let done = p.total_delay;
            (0..20).map(move |j| done + interval.mul_f64((j as f64 + 0.5) / 20.0))
        })
        .collect();
    e2e.sort();
    let mut processing: Vec<Duration> = measured.iter().map(|p| p.report.processing).collect();
    processing.sort();
    Ok(Latency {
        e2e_p50: percentile(&e2e, 0.5),
        e2e_p99: percentile(&e2e, 0.99),
        processing_p50: percentile(&processing, 0.5),
        processing_p99: percentile(&processing, 0.99),
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

pub(super) fn bench_latency(args: &BenchArgs, threads: usize) -> Result<(), String> {
    let seconds = args.paced_seconds.max(1);
    println!(
        "latency: generator at {RATE} lines/s, batches paced on the live clock for {seconds} s per run ({WARM} warm-up batches), files sink"
    );
    println!(
        "checkpointed: a local directory (offset log, commits, snapshots every {SNAPSHOT_EVERY} batches, each fsynced), exactly once; none: no checkpoint"
    );
    println!(
        "{:<14} {:>9} | {:>10} {:>10} {:>10} {:>10} | {:>10} {:>10}",
        "job",
        "interval",
        "e2e p50",
        "e2e p99",
        "proc p50",
        "proc p99",
        "none: e2e p99",
        "proc p99"
    );
    for job in [Job::Stateless, Job::RunningCount] {
        for interval in INTERVALS {
            let with = run(job, interval, true, seconds, args, threads)?;
            let without = run(job, interval, false, seconds, args, threads)?;
            println!(
                "{:<14} {:>7}ms | {:>10} {:>10} {:>10} {:>10} | {:>13} {:>10}",
                job.name(),
                interval,
                ms(with.e2e_p50),
                ms(with.e2e_p99),
                ms(with.processing_p50),
                ms(with.processing_p99),
                ms(without.e2e_p99),
                ms(without.processing_p99)
            );
        }
    }
    Ok(())
}
