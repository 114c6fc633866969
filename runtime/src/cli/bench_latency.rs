//! `sluice bench --latency`: end-to-end latency against the batch interval, at a low rate,
//! with exactly-once output on. Each job runs paced (batches at their times, as a live job) for
//! each interval into the files sink: with a checkpoint in a local directory (offset log,
//! commits and snapshots fsynced) snapshotting every 10 batches, the same snapshotting at most
//! once a second (`snapshotEvery: 1s`), and without a checkpoint; the differences are what
//! the checkpoint costs. Beside each run a probe thread asks to sleep a millisecond at a
//! time and records how late it wakes: the machine's own stalls in that run, against which
//! a p99 over a few hundred batches can be read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::bench::{BenchArgs, compile_manifest, percentile, run_options};
use super::bench_files::Scratch;
use crate::checkpoint::{LocalStore, lock_dir};
use crate::coordinator::BatchProgress;
use crate::local::{self, LocalOptions};

/// Lines per second: a low rate, where a batch's fixed cost is all its cost.
const RATE: u64 = 10_000;
/// The intervals measured, ms (5 ms is the shortest a manifest takes).
const INTERVALS: [u64; 6] = [5, 10, 20, 50, 100, 1000];
/// Batches before the measured ones (the process and the checkpoint warming up).
const WARM: u64 = 5;
/// Batches between snapshots, as a live job's default.
const SNAPSHOT_EVERY: u64 = 10;

/// How a run checkpoints.
#[derive(Clone, Copy, PartialEq)]
enum Checkpoint {
    /// A local directory, a snapshot every [`SNAPSHOT_EVERY`] batches.
    EveryTenBatches,
    /// The same, and at most one snapshot a second of batch time.
    AtMostEverySecond,
    /// None: nothing written but the output.
    Off,
}

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

/// A wake-up later than this is a stall of the machine, not the timer's slack.
const STALL: Duration = Duration::from_millis(5);

/// A thread that sleeps a millisecond at a time until stopped, timing how late it wakes: a
/// late wake-up is time the machine gave no thread of this process, whatever the engine did.
struct StallProbe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Stalls>,
}

/// The stalls one probe saw.
#[derive(Clone, Copy, Default)]
struct Stalls {
    /// Wake-ups later than [`STALL`].
    count: usize,
    /// The latest wake-up, beyond the millisecond asked for.
    worst: Duration,
}

impl StallProbe {
    fn start() -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-probe".into())
            .spawn(move || {
                let mut stalls = Stalls::default();
                while !stopping.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    std::thread::sleep(Duration::from_millis(1));
                    let late = asked.elapsed().saturating_sub(Duration::from_millis(1));
                    stalls = stalls.and(Stalls {
                        count: usize::from(late > STALL),
                        worst: late,
                    });
                }
                stalls
            })
            .map_err(|e| format!("cannot start the stall probe: {e}"))?;
        Ok(Self { stop, thread })
    }

    fn finish(self) -> Stalls {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

impl Stalls {
    /// The stalls of both: counted together, the latest of the two.
    fn and(self, other: Stalls) -> Stalls {
        Stalls {
            count: self.count + other.count,
            worst: self.worst.max(other.worst),
        }
    }
}

/// What one run showed.
struct Latency {
    e2e_p50: Duration,
    e2e_p99: Duration,
    /// From a batch's time (the end of its interval) to its output written: what the engine
    /// adds to the wait for the interval to close.
    delay_p99: Duration,
    processing_p99: Duration,
    /// The machine's stalls during the run.
    stalls: Stalls,
}

fn run(
    job: Job,
    interval_ms: u64,
    checkpoint: Checkpoint,
    seconds: u64,
    args: &BenchArgs,
    threads: usize,
) -> Result<Latency, String> {
    let dir = Scratch::new(&format!("latency-{interval_ms}"))?;
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: bench}}\nspec:\n  batchInterval: {interval_ms}ms\n  parallelism: {}\n  sources:\n    - name: lines\n      generator: {{rate: {RATE}, seed: 42, vocabulary: 10000, lineBytes: 100}}\n  pipeline: [{}]\n  sinks:\n    - files: {{path: \"{}\"}}\n",
        args.parallelism,
        job.steps(),
        dir.path().join("out").display()
    );
    let (compiled, spec) = compile_manifest(&text, threads, false)?;
    let (store, writer_lock) = if checkpoint != Checkpoint::Off {
        let ckpt = dir.path().join("ckpt");
        let lock = lock_dir(&ckpt).map_err(|e| format!("checkpoint directory: {e}"))?;
        let store = LocalStore::open(&ckpt).map_err(|e| format!("checkpoint directory: {e}"))?;
        (Some(Box::new(store) as Box<_>), Some(lock))
    } else {
        (None, None)
    };
    let batches = WARM + (seconds * 1000).div_ceil(interval_ms).max(10);
    let seen: Arc<Mutex<Vec<BatchProgress>>> = Arc::default();
    let sink = seen.clone();
    let probe = StallProbe::start()?;
    let ran = local::run(
        compiled,
        LocalOptions {
            store,
            writer_lock,
            snapshot_interval: SNAPSHOT_EVERY,
            snapshot_every: if checkpoint == Checkpoint::AtMostEverySecond {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            },
            ..run_options(
                &spec,
                batches,
                true,
                Box::new(move |p| {
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(p.clone())
                }),
            )
        },
    );
    let stalls = probe.finish();
    ran.map_err(|e| e.to_string())?;
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
    let mut delay: Vec<Duration> = measured.iter().map(|p| p.total_delay).collect();
    delay.sort();
    Ok(Latency {
        e2e_p50: percentile(&e2e, 0.5),
        e2e_p99: percentile(&e2e, 0.99),
        delay_p99: percentile(&delay, 0.99),
        processing_p99: percentile(&processing, 0.99),
        stalls,
    })
}

impl Latency {
    /// Each figure's median over `runs`, and the stalls of them all.
    fn median(runs: &[Latency]) -> Latency {
        let of = |f: fn(&Latency) -> Duration| {
            let mut v: Vec<Duration> = runs.iter().map(f).collect();
            v.sort();
            v.get(v.len() / 2).copied().unwrap_or_default()
        };
        Latency {
            e2e_p50: of(|l| l.e2e_p50),
            e2e_p99: of(|l| l.e2e_p99),
            delay_p99: of(|l| l.delay_p99),
            processing_p99: of(|l| l.processing_p99),
            stalls: runs
                .iter()
                .fold(Stalls::default(), |all, l| all.and(l.stalls)),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

pub(super) fn bench_latency(args: &BenchArgs, threads: usize) -> Result<(), String> {
    let seconds = args.paced_seconds.max(1);
    println!(
        "latency: generator at {RATE} lines/s, batches paced on the live clock for {seconds} s per run ({WARM} warm-up batches), files sink; medians of {} rounds",
        args.rounds.max(1)
    );
    println!(
        "checkpointed: a local directory (offset log, commits, snapshots every {SNAPSHOT_EVERY} batches, each fsynced), exactly once; 1s: the same with snapshotEvery: 1s; none: no checkpoint"
    );
    println!(
        "e2e: from a line's time (spread over its batch's interval) to its batch's output written; delay: from the batch's time to then; proc: the batch's processing alone"
    );
    println!(
        "stalls: a probe thread's 1 ms sleeps that woke over {} ms late, over the row's runs, and the latest (the machine's pauses, which no engine can hide)",
        STALL.as_millis()
    );
    println!(
        "{:<14} {:>9} | {:>9} {:>9} {:>9} {:>9} | {:>11} {:>9} | {:>13} {:>9} | {:>6} {:>9}",
        "job",
        "interval",
        "e2e p50",
        "e2e p99",
        "delay p99",
        "proc p99",
        "1s: e2e p99",
        "delay p99",
        "none: e2e p99",
        "delay p99",
        "stalls",
        "worst"
    );
    let rounds = args.rounds.max(1);
    for job in [Job::Stateless, Job::RunningCount] {
        for interval in INTERVALS {
            // The three kinds alternate, so that the machine's hiccups (a p99 over a few
            // hundred batches catches them) fall on each alike; each figure is the median.
            let mut runs: [Vec<Latency>; 3] = [Vec::new(), Vec::new(), Vec::new()];
            for _ in 0..rounds {
                for (kind, runs) in [
                    Checkpoint::EveryTenBatches,
                    Checkpoint::AtMostEverySecond,
                    Checkpoint::Off,
                ]
                .into_iter()
                .zip(runs.iter_mut())
                {
                    runs.push(run(job, interval, kind, seconds, args, threads)?);
                }
            }
            let [with, spaced, without] = runs.map(|r| Latency::median(&r));
            let stalls = with.stalls.and(spaced.stalls).and(without.stalls);
            println!(
                "{:<14} {:>7}ms | {:>9} {:>9} {:>9} {:>9} | {:>11} {:>9} | {:>13} {:>9} | {:>6} {:>9}",
                job.name(),
                interval,
                ms(with.e2e_p50),
                ms(with.e2e_p99),
                ms(with.delay_p99),
                ms(with.processing_p99),
                ms(spaced.e2e_p99),
                ms(spaced.delay_p99),
                ms(without.e2e_p99),
                ms(without.delay_p99),
                stalls.count,
                ms(stalls.worst)
            );
        }
    }
    Ok(())
}
