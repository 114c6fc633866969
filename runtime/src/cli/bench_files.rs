//! `sluice bench --input files`: the real input path. A feeder thread writes 100-byte lines at
//! a set rate into a watched directory, a file renamed in every 100 ms, and the job reads them
//! with the files source on the live clock, 1 s batches. For each scenario the highest
//! sustained rate is found by doubling, then bisecting: sustained when every batch (after the
//! warm-up) is done within its interval and the delay does not grow. Beside it, in the same
//! run, one core hash-counting the same lines: the bound the engine is measured against.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::bench::{BenchArgs, Scenario, compile_manifest, percentile, run_options};
use crate::coordinator::BatchProgress;
use crate::local::{self, LocalOptions};
use crate::source::{GeneratorConfig, TextGenerator};

/// The batch interval of every run.
const INTERVAL: Duration = Duration::from_secs(1);
/// How often the feeder renames a file in.
const FILE_EVERY: Duration = Duration::from_millis(100);
/// How long the feeder leaves a file in the directory: long past the batch that reads it
/// while the job keeps up, and the disk holds at most this much input (2 GB at 2 M lines/s).
const KEEP_FILES: Duration = Duration::from_secs(10);
/// Distinct lines the feeder cycles through.
const POOL_LINES: usize = 200_000;
/// Bisection steps after the doubling overshoots.
const BISECTIONS: usize = 3;
/// A run whose delay passes this is over: it is not sustained, and the backlog would only
/// make it last minutes longer.
const GIVE_UP_DELAY: Duration = Duration::from_secs(10);

/// Lines to write, each 100 bytes of words and a newline, cycled through.
struct Pool {
    bytes: Vec<u8>,
    /// Where each line starts in `bytes`; one more entry for the end.
    starts: Vec<usize>,
}

impl Pool {
    fn new() -> Self {
        let generator = TextGenerator::new(GeneratorConfig {
            name: "feed".into(),
            rate: 1,
            seed: 42,
            format: Default::default(),
            vocabulary: 10_000,
            line_bytes: 100,
        });
        let mut bytes = Vec::with_capacity(POOL_LINES * 102);
        let mut starts = Vec::with_capacity(POOL_LINES + 1);
        let mut line = String::new();
        for i in 0..POOL_LINES as u64 {
            line.clear();
            generator.line(i, &mut line);
            starts.push(bytes.len());
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
        }
        starts.push(bytes.len());
        Pool { bytes, starts }
    }

    /// Writes `n` lines from line `from` on (cycling); returns where the next write starts.
    fn write(&self, out: &mut impl Write, from: usize, n: usize) -> std::io::Result<usize> {
        let mut at = from;
        let mut left = n;
        while left > 0 {
            let take = left.min(POOL_LINES - at);
            out.write_all(&self.bytes[self.starts[at]..self.starts[at + take]])?;
            left -= take;
            at = (at + take) % POOL_LINES;
        }
        Ok(at)
    }

    /// One core counting the words of the pool's lines in a hash map, lines per second: what
    /// the engine's per-core figure is measured against.
    fn hash_count_rate(&self) -> f64 {
        let text = std::str::from_utf8(&self.bytes).unwrap_or("");
        let started = Instant::now();
        let mut lines = 0u64;
        let mut counts: HashMap<&str, u64> = HashMap::new();
        while started.elapsed() < Duration::from_secs(1) {
            for line in text.lines() {
                for word in line.split(' ') {
                    *counts.entry(word).or_default() += 1;
                }
                lines += 1;
            }
        }
        std::hint::black_box(&counts);
        lines as f64 / started.elapsed().as_secs_f64()
    }
}

/// What one run at one rate showed.
struct Outcome {
    rate: u64,
    sustained: bool,
    /// Lines per second the measured batches held.
    lines_per_s: f64,
    /// CPU seconds of the engine (the process less the feeder) per wall second.
    busy_cores: f64,
    processing_p99: Duration,
    /// From a line's write to its batch's completion, assuming writes spread evenly over
    /// the interval before the batch (the feeder writes every 100 ms).
    e2e_p50: Duration,
    e2e_p99: Duration,
    /// Peak resident memory of the run (the process's high-water mark, reset before it).
    peak_rss_mb: f64,
    /// One core hash-counting the same lines just before the run, lines/s.
    hash_rate: f64,
    /// Each stage's mean time over the measured batches, in plan order.
    stages: Vec<(String, Duration)>,
    /// The largest batch, lines.
    largest_batch: u64,
    /// The total delay of the last batch.
    delay_end: Duration,
    /// Lines of every batch, warm-up included, over the run's wall time.
    lines_per_wall_s: f64,
    /// Lines waiting in the directory after the last batch was planned (estimated by the
    /// source), when it counts them.
    backlog_end: Option<u64>,
    why: String,
}

/// Writes a file of `rate / 10` lines every 100 ms into `dir` until `stop`: written under a
/// dot name, renamed in, removed after [`KEEP_FILES`]. Returns its own CPU time.
fn feed(pool: Arc<Pool>, dir: PathBuf, rate: u64, stop: Arc<AtomicBool>) -> Duration {
    let per_file = (rate as f64 * FILE_EVERY.as_secs_f64()) as usize;
    let start = Instant::now();
    let mut next_line = 0;
    let mut seq = 0u64;
    let kept = (KEEP_FILES.as_millis() / FILE_EVERY.as_millis()) as u64;
    while !stop.load(Ordering::Relaxed) {
        if let Some(old) = seq.checked_sub(kept) {
            let _ = std::fs::remove_file(dir.join(format!("f{old:09}")));
        }
        let tmp = dir.join(format!(".f{seq:09}"));
        let written = std::fs::File::create(&tmp).and_then(|f| {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
            let next = pool.write(&mut out, next_line, per_file)?;
            out.flush()?;
            Ok(next)
        });
        match written {
            Ok(next) => {
                next_line = next;
                if let Err(e) = std::fs::rename(&tmp, dir.join(format!("f{seq:09}"))) {
                    eprintln!("sluice bench: feeder: {e}");
                    break;
                }
            }
            Err(e) => {
                eprintln!("sluice bench: feeder: {e}");
                break;
            }
        }
        seq += 1;
        // On an absolute schedule: a slow write is caught up, not accumulated.
        let due = start + FILE_EVERY * seq as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    thread_cpu()
}

fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

pub(super) fn process_cpu() -> Duration {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| timeval(u.user_time()) + timeval(u.system_time()))
        .unwrap_or_default()
}

fn timeval(t: nix::sys::time::TimeVal) -> Duration {
    Duration::from_secs(t.tv_sec().max(0) as u64) + Duration::from_micros(t.tv_usec().max(0) as u64)
}

/// Resets the process's peak resident memory (Linux: `5` to `/proc/self/clear_refs`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mb() -> f64 {
    process_status_kb("VmHWM").map_or(0.0, |kb| kb as f64 / 1024.0)
}

/// A figure of `/proc/self/status` in kB (`VmRSS`, `VmHWM`), where there is one.
pub(super) fn process_status_kb(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn manifest(scenario: Scenario, dir: &Path, parallelism: u32, backpressure: bool) -> String {
    let steps = scenario.steps();
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: bench}}\nspec:\n  batchInterval: 1s\n  parallelism: {parallelism}\n  backpressure: {{enabled: {backpressure}}}\n  sources:\n    - name: lines\n      files: {{path: \"{}\"}}\n  pipeline: [{steps}]\n  sinks:\n    - stdout: {{}}\n",
        dir.display()
    )
}

/// The watched directory of one run, removed with everything in it when the run ends.
pub(super) struct Scratch(PathBuf);

impl Scratch {
    /// `sluice-bench-PID-LABEL` in the temporary directory, empty.
    pub(super) fn new(label: &str) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("sluice-bench-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `scenario` on the live clock with the feeder at `rate` for `seconds` measured batches
/// after a warm-up.
fn run(
    pool: &Arc<Pool>,
    scenario: Scenario,
    rate: u64,
    seconds: u64,
    args: &BenchArgs,
    threads: usize,
    backpressure: bool,
) -> Result<Outcome, String> {
    // Windows carry their full cost after one length; the first batches warm the process.
    let warm: usize = if scenario == Scenario::Windowed {
        11
    } else {
        2
    };
    let batches = seconds + warm as u64;
    // Measured beside every run: on this kind of machine one core's speed moves by a third
    // from minute to minute, so a figure from the start of the bench misleads later ratios.
    let hash_rate = pool.hash_count_rate();
    let dir = Scratch::new(&rate.to_string())?;
    let text = manifest(scenario, dir.path(), args.parallelism, backpressure);
    let (job, spec) = compile_manifest(&text, threads, true)?;
    reset_peak_rss();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (pool, dir, stop) = (pool.clone(), dir.path().to_path_buf(), stop.clone());
        std::thread::Builder::new()
            .name("bench-feeder".into())
            .spawn(move || feed(pool, dir, rate, stop))
            .map_err(|e| format!("feeder: {e}"))?
    };
    let seen: Arc<Mutex<Vec<BatchProgress>>> = Arc::default();
    let sink = seen.clone();
    let give_up = Arc::new(AtomicBool::new(false));
    let stop_job = give_up.clone();
    let (cpu_before, started) = (process_cpu(), Instant::now());
    let result = local::run(
        job,
        LocalOptions {
            stop: give_up.clone(),
            ..run_options(
                &spec,
                batches,
                true,
                Box::new(move |p| {
                    if p.total_delay > GIVE_UP_DELAY {
                        stop_job.store(true, Ordering::Relaxed);
                    }
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(p.clone())
                }),
            )
        },
    );
    let (wall, cpu) = (started.elapsed(), process_cpu().saturating_sub(cpu_before));
    stop.store(true, Ordering::Relaxed);
    let feeder_cpu = feeder.join().unwrap_or_default();
    result.map_err(|e| e.to_string())?;
    let peak_rss_mb = peak_rss_mb();
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let gave_up = give_up.load(Ordering::Relaxed);
    let measured: Vec<&BatchProgress> = seen.iter().skip(warm).collect();
    if measured.is_empty() && !gave_up {
        return Err("no batch was measured".into());
    }
    let records: u64 = measured.iter().map(|p| p.report.records).sum();
    let mut processing: Vec<Duration> = measured.iter().map(|p| p.report.processing).collect();
    processing.sort();
    let delays: Vec<Duration> = measured.iter().map(|p| p.total_delay).collect();
    let mut e2e: Vec<Duration> = delays
        .iter()
        .flat_map(|d| (0..20).map(move |j| *d + INTERVAL.mul_f64((j as f64 + 0.5) / 20.0)))
        .collect();
    e2e.sort();
    // Sustained: every batch within its interval, and the delay of the last third not above
    // the first third's by half an interval (a queue building up).
    let third = (delays.len() / 3).max(1).min(delays.len());
    let mean = |d: &[Duration]| d.iter().sum::<Duration>() / d.len().max(1) as u32;
    let (early, late) = if delays.is_empty() {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (
            mean(&delays[..third]),
            mean(&delays[delays.len() - third..]),
        )
    };
    let slow = processing.iter().filter(|p| **p >= INTERVAL).count();
    let growing = late > early + INTERVAL / 2;
    let why = match (slow, growing) {
        _ if gave_up => format!("the delay passed {GIVE_UP_DELAY:?}; stopped"),
        (0, false) => String::new(),
        (n, false) => format!("{n} batches over the interval"),
        (0, true) => format!("delay grew from {early:?} to {late:?}"),
        (n, true) => format!("{n} batches over the interval; delay grew to {late:?}"),
    };
    let engine_cpu = cpu.saturating_sub(feeder_cpu);
    Ok(Outcome {
        rate,
        sustained: why.is_empty(),
        lines_per_s: records as f64 / (measured.len().max(1) as f64 * INTERVAL.as_secs_f64()),
        busy_cores: engine_cpu.as_secs_f64() / wall.as_secs_f64(),
        processing_p99: percentile(&processing, 0.99),
        e2e_p50: percentile(&e2e, 0.5),
        e2e_p99: percentile(&e2e, 0.99),
        peak_rss_mb,
        hash_rate,
        stages: mean_stages(&measured),
        largest_batch: seen.iter().map(|p| p.report.records).max().unwrap_or(0),
        delay_end: seen.last().map_or(Duration::ZERO, |p| p.total_delay),
        lines_per_wall_s: seen.iter().map(|p| p.report.records).sum::<u64>() as f64
            / wall.as_secs_f64().max(1e-3),
        backlog_end: seen
            .last()
            .and_then(|p| (!p.backlog.is_empty()).then(|| p.backlog.values().sum())),
        why,
    })
}

/// Each stage's mean wall time over `batches`, by label, in the first batch's order.
fn mean_stages(batches: &[&BatchProgress]) -> Vec<(String, Duration)> {
    let Some(first) = batches.first() else {
        return Vec::new();
    };
    first
        .report
        .stages
        .iter()
        .map(|(label, _)| {
            let total: Duration = batches
                .iter()
                .flat_map(|b| b.report.stages.iter())
                .filter(|(l, _)| l == label)
                .map(|(_, d)| *d)
                .sum();
            (label.clone(), total / batches.len() as u32)
        })
        .collect()
}

/// The highest sustained rate of `scenario`: doubling from `args.rate` until a run is not
/// sustained, then bisecting. Each run is printed as it ends.
fn search(
    pool: &Arc<Pool>,
    scenario: Scenario,
    args: &BenchArgs,
    threads: usize,
) -> Result<Option<Outcome>, String> {
    let report = |o: &Outcome| {
        eprintln!(
            "  {} at {} lines/s: {}{} (busy cores {:.2}, p99 processing {} ms, one core hash-counting {:.2} M lines/s; mean stages: {})",
            scenario.name(),
            o.rate,
            if o.sustained {
                "sustained"
            } else {
                "not sustained: "
            },
            o.why,
            o.busy_cores,
            o.processing_p99.as_millis(),
            o.hash_rate / 1e6,
            o.stages
                .iter()
                .map(|(label, d)| format!("{label} {}ms", d.as_millis()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let mut best: Option<Outcome> = None;
    let max = args.max_rate.unwrap_or(u64::MAX).max(1000);
    let mut rate = args.rate.clamp(1000, max);
    let mut failed: Option<u64> = None;
    while failed.is_none() {
        let o = run(pool, scenario, rate, args.seconds, args, threads, false)?;
        report(&o);
        if !o.sustained {
            failed = Some(rate);
            continue;
        }
        best = Some(o);
        if rate >= max {
            eprintln!("  {}: stopped at --max-rate {max}", scenario.name());
            return Ok(best);
        }
        rate = rate.saturating_mul(2).min(max);
    }
    let mut high = failed.unwrap_or(rate);
    let mut low = best.as_ref().map_or(high / 4, |b| b.rate);
    for _ in 0..BISECTIONS {
        let mid = low + (high - low) / 2;
        if mid <= low || high - low < high / 20 {
            break;
        }
        let o = run(pool, scenario, mid, args.seconds, args, threads, false)?;
        report(&o);
        if o.sustained {
            low = mid;
            best = Some(o);
        } else {
            high = mid;
        }
    }
    Ok(best)
}

pub(super) fn bench_files(
    args: &BenchArgs,
    scenarios: &[Scenario],
    threads: usize,
) -> Result<(), String> {
    let pool = Arc::new(Pool::new());
    println!(
        "input: files of 100-byte lines renamed into a watched directory every 100 ms; 1 s batches on the live clock; the search with backpressure off"
    );
    println!(
        "hash/core: one core hash-counting the same lines just before the run; of hash: lines/s/core over it"
    );
    println!(
        "{:<10} {:>12} {:>10} {:>15} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "job",
        "sustained",
        "busy cores",
        "lines/s/core",
        "hash/core",
        "of hash",
        "e2e p50",
        "e2e p99",
        "proc p99",
        "peak MB"
    );
    let mut overload: Option<(Scenario, u64)> = None;
    for &scenario in scenarios {
        let name = scenario.name();
        match search(&pool, scenario, args, threads)? {
            Some(o) => {
                overload.get_or_insert((scenario, o.rate));
                let per_core = o.lines_per_s / o.busy_cores.max(0.01);
                println!(
                    "{name:<10} {:>12.0} {:>10.2} {:>15.0} {:>10.0} {:>9.2} {:>7}ms {:>7}ms {:>7}ms {:>9.0}",
                    o.lines_per_s,
                    o.busy_cores,
                    per_core,
                    o.hash_rate,
                    per_core / o.hash_rate,
                    o.e2e_p50.as_millis(),
                    o.e2e_p99.as_millis(),
                    o.processing_p99.as_millis(),
                    o.peak_rss_mb
                );
            }
            None => println!("{name:<10} not sustained at {} lines/s", args.rate),
        }
    }
    if let Some((scenario, sustained)) = overload {
        overloaded(&pool, scenario, sustained, args, threads)?;
    }
    Ok(())
}

/// The first scenario fed at twice its sustained rate, with backpressure on (the default) and
/// off: whether the batches, and with them memory, stay bounded while the input outruns the
/// job.
fn overloaded(
    pool: &Arc<Pool>,
    scenario: Scenario,
    sustained: u64,
    args: &BenchArgs,
    threads: usize,
) -> Result<(), String> {
    let rate = sustained.saturating_mul(2);
    println!(
        "overload: {} fed at {rate} lines/s (twice its sustained rate) for {} s",
        scenario.name(),
        args.seconds
    );
    println!(
        "{:<13} {:>10} {:>14} {:>10} {:>10} {:>15} {:>9}",
        "backpressure",
        "lines/s",
        "largest batch",
        "proc p99",
        "delay end",
        "backlog end",
        "peak MB"
    );
    for backpressure in [true, false] {
        let o = run(
            pool,
            scenario,
            rate,
            args.seconds,
            args,
            threads,
            backpressure,
        )?;
        println!(
            "{:<13} {:>10.0} {:>14} {:>8}ms {:>8}ms {:>15} {:>9.0}{}",
            if backpressure { "on" } else { "off" },
            o.lines_per_wall_s,
            o.largest_batch,
            o.processing_p99.as_millis(),
            o.delay_end.as_millis(),
            o.backlog_end
                .map_or_else(|| "-".to_string(), |b| b.to_string()),
            o.peak_rss_mb,
            if o.why.contains("stopped") {
                format!(" ({})", o.why)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
