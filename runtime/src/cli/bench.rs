//! `sluice bench`: throughput and latency of the reference jobs, printed as figures.
//!
//! Each scenario runs twice through the real local runtime: back to back with 1 s batches (the most
//! records per second the engine sustains, generation included), then paced with 100 ms
//! batches at half that rate (processing time and delay per batch, as a live job sees them).

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use super::EXIT_FAILED;
use crate::coordinator::BatchProgress;
use crate::job::Job;
use crate::local::{self, LocalOptions};
use crate::manifest::{CompileOptions, compile};
use crate::metrics::{Role, RuntimeMetrics};
use crate::source::{GeneratorConfig, TextGenerator};
use sluice_crds::StreamingJob;

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Which job to measure.
    #[arg(long, value_enum, default_value = "all")]
    pub scenario: Scenario,
    /// Seconds of stream time for each throughput run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Generated lines per second for the throughput run (one batch holds one second).
    #[arg(long, default_value_t = 1_000_000)]
    pub rate: u64,
    /// Seconds of wall time for each paced 100 ms run; 0 skips it.
    #[arg(long, default_value_t = 10)]
    pub paced_seconds: u64,
    /// Task threads. Default: one per core.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Partitions.
    #[arg(long, default_value_t = 4)]
    pub parallelism: u32,
    /// Runtime metrics during the runs: off, on (updated every batch, as with
    /// --metrics-addr), or compare (throughput with and without, alternating runs, no paced
    /// runs).
    #[arg(long, value_enum, default_value = "off")]
    pub metrics: MetricsMode,
    /// With --metrics compare, --scaling, --latency or --nexmark: runs of each kind (the median is
    /// shown).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// End-to-end latency against the batch interval (5, 10, 20, 50, 100 and 1000 ms) at
    /// 10,000 lines/s, paced for --paced-seconds per run, a stateless job and a running count
    /// into the files sink, with a local checkpoint (exactly once) and without; beside each run
    /// a probe thread counts the machine's stalls (1 ms sleeps that woke over 5 ms late).
    #[arg(long)]
    pub latency: bool,
    /// The Nexmark queries of examples/nexmark (q0-q8, q12-q14, q17-q19, q21, q22)
    /// with their events from the built-in generator at --rate, 1 s batches back to back for
    /// --seconds: events/s per busy core, the generator's own cost included (and printed alone).
    #[arg(long)]
    pub nexmark: bool,
    /// With --nexmark: only these queries (e.g. q17,q19). Default: all of them.
    #[arg(long, value_delimiter = ',')]
    pub queries: Vec<String>,
    /// Throughput with one task thread and with --threads (default: one per core), in
    /// alternating runs, and their ratio: how the engine scales with threads. Split into busy
    /// cores (what the engine keeps running) and CPU per line (the work and the cores' speed).
    #[arg(long)]
    pub scaling: bool,
    /// Where lines come from: the generator inside the job, or files a feeder thread renames
    /// into a watched directory every 100 ms, read by the files source on the live clock. With
    /// files, each scenario's highest sustained rate is searched for from --rate (doubling,
    /// then bisecting; --seconds per run) and printed per busy core, beside one core
    /// hash-counting the same lines.
    #[arg(long, value_enum, default_value = "generator")]
    pub input: Input,
    /// A running count over --keys distinct keys (mapWithState): resident memory per key, the
    /// snapshot's size and time, what a snapshot adds to the batches it overlaps (each
    /// touching --touched keys, back to back), and the recovery of a new job from it.
    #[arg(long)]
    pub state: bool,
    /// One distributed job with each of these numbers of workers (e.g. 1,2,4,8,16,32), as
    /// processes of this binary on this machine at a low rate: the master's batch time, its
    /// CPU and the time to the first batch against the number of workers.
    #[arg(long, value_delimiter = ',')]
    pub workers: Vec<usize>,
    /// With --state: distinct keys.
    #[arg(long, default_value_t = 10_000_000)]
    pub keys: u64,
    /// With --state: keys each batch after the load touches.
    #[arg(long, default_value_t = 100_000)]
    pub touched: u64,
    /// With --state: snapshots taken after the load, 10 batches apart: the first whole, the
    /// next ones deltas, each with a stripe of the whole state (17 or more complete a stripe
    /// cycle, so that recovery reads from one).
    #[arg(long, default_value_t = 4)]
    pub snapshots: u64,
    /// With --state: the checkpoint (`file:///dir` or `s3://bucket/prefix`, S3 settings from
    /// the AWS environment: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). Default: a temporary
    /// directory.
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// With --state and an s3:// --checkpoint: the endpoint of an S3-compatible store
    /// (MinIO, s3s-fs), addressed path-style.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// With --input files: the highest rate the search tries (lines/s); the disk must hold
    /// 10 s of input at it (100 MB per M lines/s a second).
    #[arg(long)]
    pub max_rate: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Input {
    Generator,
    Files,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MetricsMode {
    Off,
    On,
    Compare,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    All,
    /// flatMap(split) + countByValue.
    Wordcount,
    /// flatMap(split) + countByValueAndWindow(10s, 2s).
    Windowed,
    /// Two sources, each flatMap(split) + countByValueAndWindow(10s, 2s), then a join of
    /// the two windowed streams (the input split between them): `windowed` plus a join.
    Joined,
    /// flatMap(split) + countByValue + updateStateByKey(sum).
    Stateful,
    /// As `stateful`, with the state from a CEL expression (`state + sum(values)`).
    StateExpr,
}

impl Scenario {
    /// As `--scenario` takes it.
    pub(super) fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }

    /// Scenarios whose batches carry their full cost only after one window length.
    fn windowed(self) -> bool {
        matches!(self, Scenario::Windowed | Scenario::Joined)
    }

    /// The steps of a one-stream scenario's pipeline (`joined`'s streams each run
    /// `windowed`'s), whatever the input.
    pub(super) fn steps(self) -> String {
        match self {
            Scenario::Windowed | Scenario::Joined => WINDOW.to_string(),
            Scenario::Stateful => format!("{COUNT}, {{updateStateByKey: {{op: sum}}}}"),
            Scenario::StateExpr => format!(
                "{COUNT}, {{updateStateByKey: {{expr: \"(state == null ? 0 : state) + sum(values)\"}}}}"
            ),
            Scenario::All | Scenario::Wordcount => COUNT.to_string(),
        }
    }
}

const COUNT: &str = "{flatMap: {split: \" \"}}, {countByValue: {}}";
const WINDOW: &str = "{flatMap: {split: \" \"}}, {countByValueAndWindow: {length: 10s, slide: 2s}}";

fn manifest(scenario: Scenario, interval: &str, rate: u64, parallelism: u32) -> String {
    let source = |name: &str, rate: u64, seed: u64| {
        format!(
            "    - name: {name}\n      generator: {{rate: {rate}, seed: {seed}, vocabulary: 10000, lineBytes: 100}}\n"
        )
    };
    let (sources, job) = match scenario {
        Scenario::Joined => (
            format!(
                "{}{}",
                source("left", rate / 2, 42),
                source("right", rate - rate / 2, 43)
            ),
            format!(
                "  streams:\n    - {{name: l, from: [left], pipeline: [{WINDOW}]}}\n    - {{name: r, from: [right], pipeline: [{WINDOW}]}}\n    - {{name: joined, from: [l], pipeline: [{{join: {{with: r}}}}]}}\n  sinks:\n    - {{from: joined, stdout: {{}}}}\n"
            ),
        ),
        other => {
            let steps = other.steps();
            (
                source("lines", rate, 42),
                format!("  pipeline: [{steps}]\n  sinks:\n    - stdout: {{}}\n"),
            )
        }
    };
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: bench}}\nspec:\n  batchInterval: {interval}\n  parallelism: {parallelism}\n  sources:\n{sources}{job}"
    )
}

struct Figures {
    records: u64,
    wall: Duration,
    /// The process's CPU time over the run (every thread: the loop's, the task threads').
    cpu: Duration,
    processing: Vec<Duration>,
    total_delay: Vec<Duration>,
}

pub(super) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The median of `values` (the upper one of an even count); 0 without any.
pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// One run of a scenario.
struct Run<'a> {
    scenario: Scenario,
    interval: &'a str,
    rate: u64,
    batches: u64,
    /// Batches at their times (a live job) rather than back to back.
    paced: bool,
    metrics: bool,
}

impl Run<'static> {
    /// The throughput run: 1 s batches back to back for `args.seconds` of stream time, after
    /// one window length of warm-up for the windowed job (before it, batches do not carry
    /// their full cost).
    fn throughput(scenario: Scenario, args: &BenchArgs, metrics: bool) -> Self {
        let warm = if scenario.windowed() { 10 } else { 0 };
        Run {
            scenario,
            interval: "1s",
            rate: args.rate,
            batches: args.seconds + warm,
            paced: false,
            metrics,
        }
    }
}

/// Loads and compiles a bench manifest; with `discard_output`, sinks drop what they get.
pub(super) fn compile_manifest(
    text: &str,
    threads: usize,
    discard_output: bool,
) -> Result<(Job, StreamingJob), String> {
    let spec = sluice_crds::load(text).map_err(|p| format!("{p:?}"))?;
    let job = compile(
        &spec,
        &CompileOptions {
            threads,
            discard_output,
        },
    )
    .map_err(|p| format!("{p:?}"))?;
    Ok((job, spec))
}

/// A bench run's options: no checkpoint (callers that measure one set a store), stopping
/// after `stop_after` batches, every batch handed to `on_batch`.
/// How a benchmark mode ended, as the process's exit code.
fn exit_code(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice bench: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

pub(super) fn run_options(
    spec: &StreamingJob,
    stop_after: u64,
    paced: bool,
    on_batch: Box<dyn FnMut(&BatchProgress) + Send>,
) -> LocalOptions {
    LocalOptions {
        job_name: "bench".into(),
        job_uid: None,
        fingerprint: sluice_crds::fingerprint(&spec.spec),
        store: None,
        writer_lock: None,
        snapshot_interval: 10,
        snapshot_every: Duration::ZERO,
        retain: 2,
        stop_after: Some(stop_after),
        stop: Arc::new(AtomicBool::new(false)),
        paced,
        on_batch,
        metrics: None,
    }
}

fn measure(run: Run<'_>, args: &BenchArgs, threads: usize) -> Result<Figures, String> {
    let Run {
        scenario,
        interval,
        rate,
        batches,
        paced,
        metrics,
    } = run;
    let text = manifest(scenario, interval, rate, args.parallelism);
    let (job, job_spec) = compile_manifest(&text, threads, true)?;
    let seen: Arc<Mutex<Vec<BatchProgress>>> = Arc::default();
    let sink = seen.clone();
    let started = Instant::now();
    let cpu_before = super::bench_files::process_cpu();
    local::run(
        job,
        LocalOptions {
            metrics: metrics.then(|| Arc::new(RuntimeMetrics::new("bench", "", Role::Local))),
            ..run_options(
                &job_spec,
                batches,
                paced,
                Box::new(move |p| {
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(p.clone())
                }),
            )
        },
    )
    .map_err(|e| e.to_string())?;
    let wall = started.elapsed();
    let cpu = super::bench_files::process_cpu().saturating_sub(cpu_before);
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let mut processing: Vec<Duration> = seen.iter().map(|p| p.report.processing).collect();
    let mut total_delay: Vec<Duration> = seen.iter().map(|p| p.total_delay).collect();
    processing.sort();
    total_delay.sort();
    Ok(Figures {
        records: seen.iter().map(|p| p.report.records).sum(),
        wall,
        cpu,
        processing,
        total_delay,
    })
}

pub(crate) fn bench(args: BenchArgs) -> ExitCode {
    let threads = args
        .threads
        .unwrap_or_else(|| CompileOptions::default().threads)
        .max(1);
    let scenarios = match args.scenario {
        Scenario::All => vec![
            Scenario::Wordcount,
            Scenario::Windowed,
            Scenario::Joined,
            Scenario::Stateful,
            Scenario::StateExpr,
        ],
        s => vec![s],
    };
    println!(
        "sluice bench: {threads} task threads, {} partitions, 100-byte lines, 10,000-word Zipf vocabulary",
        args.parallelism
    );
    if args.input == Input::Files {
        let scenarios: Vec<Scenario> = scenarios
            .into_iter()
            .filter(|s| *s != Scenario::Joined)
            .collect();
        return exit_code(super::bench_files::bench_files(&args, &scenarios, threads));
    }
    if args.nexmark {
        return exit_code(super::bench_nexmark::bench_nexmark(&args, threads));
    }
    if !args.workers.is_empty() {
        return exit_code(super::bench_workers::bench_workers(&args));
    }
    if args.state {
        return exit_code(super::bench_state::bench_state(&args, threads));
    }
    if args.latency {
        return exit_code(super::bench_latency::bench_latency(&args, threads));
    }
    let generator = TextGenerator::new(GeneratorConfig {
        name: "g".into(),
        rate: args.rate,
        seed: 42,
        format: Default::default(),
        vocabulary: 10_000,
        line_bytes: 100,
    });
    let started = Instant::now();
    let lines = generator.lines(0, args.rate, threads);
    let gen_rate = args.rate as f64 / started.elapsed().as_secs_f64();
    let words: usize = lines.iter().flatten().map(|l| l.split(' ').count()).sum();
    println!(
        "generator alone: {:.2} M lines/s ({:.2} M/s per thread); {:.1} words per line",
        gen_rate / 1e6,
        gen_rate / 1e6 / threads as f64,
        words as f64 / args.rate.max(1) as f64
    );
    drop(lines);
    if args.metrics == MetricsMode::Compare {
        println!(
            "metrics cost: 1 s batches back to back, off and on alternating, median of {} runs each",
            args.rounds.max(1)
        );
        return compare(
            &args,
            &scenarios,
            [("off", threads, false), ("on", threads, true)],
        );
    }
    if args.scaling {
        println!(
            "scaling: 1 s batches back to back, 1 and {threads} task threads alternating, median of {} runs each",
            args.rounds.max(1)
        );
        return compare(
            &args,
            &scenarios,
            [("1 thread", 1, false), ("threads", threads, false)],
        );
    }
    let metrics = args.metrics == MetricsMode::On;
    println!(
        "{:<10} {:>12} {:>14} {:>10} {:>10} | {:>14} {:>11} {:>11} {:>11}",
        "job",
        "lines/s",
        "lines/s/core",
        "p50 1s",
        "p99 1s",
        "paced rate",
        "p50 100ms",
        "p99 100ms",
        "p99 delay"
    );
    for scenario in scenarios {
        let name = scenario.name();
        let full = match measure(Run::throughput(scenario, &args, metrics), &args, threads) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("sluice bench: {name}: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        };
        let per_sec = full.records as f64 / full.wall.as_secs_f64();
        let mut line = format!(
            "{name:<10} {:>12.0} {:>14.0} {:>8}ms {:>8}ms |",
            per_sec,
            per_sec / threads as f64,
            percentile(&full.processing, 0.5).as_millis(),
            percentile(&full.processing, 0.99).as_millis()
        );
        if args.paced_seconds > 0 {
            let paced_rate = (per_sec / 2.0) as u64;
            match measure(
                Run {
                    scenario,
                    interval: "100ms",
                    rate: paced_rate.max(1),
                    batches: args.paced_seconds * 10,
                    paced: true,
                    metrics,
                },
                &args,
                threads,
            ) {
                Ok(p) => line.push_str(&format!(
                    " {:>14} {:>9}ms {:>9}ms {:>9}ms",
                    paced_rate,
                    percentile(&p.processing, 0.5).as_millis(),
                    percentile(&p.processing, 0.99).as_millis(),
                    percentile(&p.total_delay, 0.99).as_millis()
                )),
                Err(e) => line.push_str(&format!(" paced run failed: {e}")),
            }
        }
        println!("{line}");
    }
    ExitCode::SUCCESS
}

/// Throughput of two kinds of run of each scenario, alternating so that the machine's drift
/// hits both alike; the median of `--rounds` each, and the second against the first.
fn compare(args: &BenchArgs, scenarios: &[Scenario], kinds: [(&str, usize, bool); 2]) -> ExitCode {
    let [(first, _, _), (second, _, _)] = kinds;
    println!(
        "lines/s is (lines per CPU second) x (busy cores); the ratio of each between the kinds says which one moved: busy cores what the engine keeps running, CPU per line the work and the cores' speed"
    );
    println!(
        "{:<10} {:>14} {:>14} {:>7} | {:>7} {:>7} {:>7} | {:>10} {:>10} {:>7}",
        "job",
        format!("{first} lines/s"),
        format!("{second} lines/s"),
        "ratio",
        "busy",
        "busy",
        "ratio",
        "CPU us/kl",
        "CPU us/kl",
        "ratio"
    );
    for &scenario in scenarios {
        let name = scenario.name();
        // Per kind: lines/s, busy cores, CPU microseconds per thousand lines.
        let mut runs: [[Vec<f64>; 3]; 2] = Default::default();
        for _ in 0..args.rounds.max(1) {
            for (runs, (_, threads, metrics)) in runs.iter_mut().zip(kinds) {
                match measure(Run::throughput(scenario, args, metrics), args, threads) {
                    Ok(f) => {
                        let wall = f.wall.as_secs_f64();
                        let cpu = f.cpu.as_secs_f64();
                        runs[0].push(f.records as f64 / wall);
                        runs[1].push(cpu / wall);
                        runs[2].push(cpu * 1e9 / f.records.max(1) as f64);
                    }
                    Err(e) => {
                        eprintln!("sluice bench: {name}: {e}");
                        return ExitCode::from(EXIT_FAILED);
                    }
                }
            }
        }
        let [[rate_a, busy_a, cpu_a], [rate_b, busy_b, cpu_b]] = runs.map(|kind| kind.map(median));
        println!(
            "{name:<10} {rate_a:>14.0} {rate_b:>14.0} {:>7.2} | {busy_a:>7.2} {busy_b:>7.2} {:>7.2} | {cpu_a:>10.0} {cpu_b:>10.0} {:>7.2}",
            rate_b / rate_a,
            busy_b / busy_a,
            cpu_b / cpu_a
        );
    }
    ExitCode::SUCCESS
}
