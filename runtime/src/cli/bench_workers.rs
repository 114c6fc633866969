//! `sluice bench --workers 1,2,4,...`: one distributed job with more and more workers, as
//! processes of this binary on this machine, at a low rate: what the master's batch costs as
//! the workers grow (issue item "past one machine, by simulation").
//!
//! For each count: `sluice master` and that many `sluice worker`s (one task thread each) run
//! a word count with keyed state (`flatMap`, `countByValue`, `updateStateByKey`: a shuffle
//! between every pair of workers) over 64 partitions, 100 ms batches, 10,000 lines/s, the
//! checkpoint in a local directory. The output goes to the stdout sink (discarded): a files
//! sink would write and fsync 64 files a batch, and measure the disk. The master's log gives each batch's processing (from the
//! master's call to the workers until the last one answered) and total delay; the master's
//! CPU time comes from the operating system when it exits.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};

use super::bench::{BenchArgs, percentile};
use super::bench_files::Scratch;

/// Partitions: every worker of the largest count gets two.
const PARTITIONS: usize = 64;
/// Batches each run; the first [`WARM`] are not counted.
const BATCHES: u64 = 80;
const WARM: usize = 20;
const INTERVAL_MS: u64 = 100;
/// How long one run may take before it is stopped as stuck.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// What one run showed.
struct Run {
    workers: usize,
    /// From the master's start to its first batch done: workers registered, partitions placed.
    first_batch: Duration,
    processing: Vec<Duration>,
    total_delay: Vec<Duration>,
    master_cpu: Duration,
    workers_cpu: Duration,
    /// Wall time of the measured batches.
    wall: Duration,
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

fn children_cpu() -> Duration {
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::from_secs(tv.tv_sec().max(0) as u64)
                + Duration::from_micros(tv.tv_usec().max(0) as u64)
        };
        t(u.user_time()) + t(u.system_time())
    })
}

/// A figure `NAME Xms` in a batch's log line.
fn millis(line: &str, name: &str) -> Option<Duration> {
    let rest = &line[line.find(name)? + name.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().map(Duration::from_millis)
}

/// The master's log lines of its batches.
fn batch_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" batch ") && l.contains("processing"))
        .collect()
}

fn run(workers: usize, dir: &Path) -> Result<Run, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let job = dir.join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: bench-workers}}\nspec:\n  batchInterval: {INTERVAL_MS}ms\n  parallelism: {PARTITIONS}\n  sources: [{{name: lines, generator: {{rate: 10000, seed: 42, vocabulary: 10000, lineBytes: 100}}}}]\n  pipeline: [{{flatMap: {{split: \" \"}}}}, {{countByValue: {{}}}}, {{updateStateByKey: {{op: sum}}}}]\n  sinks: [{{stdout: {{}}}}]\n  checkpoint: {{uri: \"file://{}\", interval: 10}}\n",
            dir.join("ckpt").display()
        ),
    )
    .map_err(|e| format!("cannot write the manifest: {e}"))?;
    let port = free_port()?;
    // The master refuses a token shorter than 16 characters.
    let token = format!("sluice-bench-token-{}", std::process::id());
    let command = |log: &str| -> Result<Command, String> {
        let mut c = Command::new(&exe);
        let file = std::fs::File::create(dir.join(log))
            .map_err(|e| format!("cannot create {log}: {e}"))?;
        c.env("SLUICE_TOKEN", &token)
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file);
        Ok(c)
    };
    let cpu_before = children_cpu();
    let started = Instant::now();
    let mut master = command("master.log")?
        .arg("master")
        .arg(&job)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--min-workers", &workers.to_string()])
        .args(["--batches", &BATCHES.to_string()])
        .spawn()
        .map_err(|e| format!("cannot start the master: {e}"))?;
    let mut spawned: Vec<Child> = Vec::new();
    let result = (|| {
        for i in 0..workers {
            let listen = free_port()?;
            spawned.push(
                command(&format!("worker-{i}.log"))?
                    .arg("worker")
                    .arg(&job)
                    .args(["--master", &format!("127.0.0.1:{port}")])
                    .args(["--listen", &format!("127.0.0.1:{listen}")])
                    .args(["--id", &format!("w{i}"), "--threads", "1"])
                    .spawn()
                    .map_err(|e| format!("cannot start worker {i}: {e}"))?,
            );
        }
        loop {
            if let Some(status) = master.try_wait().map_err(|e| e.to_string())? {
                if !status.success() {
                    return Err(format!(
                        "the master failed ({status}); its log is in {}",
                        dir.join("master.log").display()
                    ));
                }
                return Ok(());
            }
            if started.elapsed() > RUN_LIMIT {
                return Err(format!(
                    "{workers} workers: the job did not finish in {} s",
                    RUN_LIMIT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    let _ = master.kill();
    let _ = master.wait();
    let master_cpu = children_cpu().saturating_sub(cpu_before);
    for w in &mut spawned {
        let _ = w.kill();
        let _ = w.wait();
    }
    let workers_cpu = children_cpu()
        .saturating_sub(cpu_before)
        .saturating_sub(master_cpu);
    result?;
    let log = std::fs::read_to_string(dir.join("master.log"))
        .map_err(|e| format!("cannot read the master's log: {e}"))?;
    let lines = batch_lines(&log);
    if lines.len() <= WARM {
        return Err(format!(
            "{workers} workers: the master logged {} batches",
            lines.len()
        ));
    }
    // The log's first field is the time it was written (RFC 3339).
    let stamp = |l: &str| {
        l.split_whitespace()
            .next()
            .and_then(log_millis)
            .unwrap_or(0)
    };
    let measured = &lines[WARM..];
    let wall = Duration::from_millis(
        stamp(measured[measured.len() - 1]).saturating_sub(stamp(measured[0])),
    );
    let first_batch = {
        let spawned_at = stamp(log.lines().next().unwrap_or_default());
        Duration::from_millis(stamp(lines[0]).saturating_sub(spawned_at))
    };
    let mut processing: Vec<Duration> = measured
        .iter()
        .filter_map(|l| millis(l, "processing"))
        .collect();
    let mut total_delay: Vec<Duration> = measured
        .iter()
        .filter_map(|l| millis(l, "total delay"))
        .collect();
    processing.sort();
    total_delay.sort();
    Ok(Run {
        workers,
        first_batch,
        processing,
        total_delay,
        master_cpu,
        workers_cpu,
        wall,
    })
}

/// Milliseconds since the epoch of an RFC 3339 time as the log writes it
/// (`2026-12-02T20:00:36.352988Z`).
fn log_millis(t: &str) -> Option<u64> {
    let at = humantime::parse_rfc3339(t).ok()?;
    let since = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

fn ms(d: Duration) -> String {
    format!("{:.0}ms", d.as_secs_f64() * 1000.0)
}

fn ms_tenths(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

pub(super) fn bench_workers(args: &BenchArgs) -> Result<(), String> {
    let counts = &args.workers;
    if counts.iter().any(|n| *n == 0 || *n > PARTITIONS) {
        return Err(format!("--workers: each count must be 1 to {PARTITIONS}"));
    }
    println!(
        "workers: one job, sluice master and N sluice workers (1 task thread each) on this machine; {PARTITIONS} partitions, {INTERVAL_MS} ms batches, 10,000 lines/s, word count with keyed state (a shuffle between every pair of workers), output discarded, local checkpoint; {BATCHES} batches, the first {WARM} not counted"
    );
    println!(
        "{:>7} | {:>11} | {:>9} {:>9} | {:>10} | {:>10} {:>11} | {:>12} {:>16}",
        "workers",
        "first batch",
        "proc p50",
        "proc p99",
        "delay p99",
        "master CPU",
        "workers CPU",
        "master/batch",
        "a worker/batch"
    );
    for &n in counts {
        let dir = Scratch::new(&format!("workers-{n}"))?;
        let r = run(n, dir.path())?;
        let per_second = |cpu: Duration| {
            format!(
                "{:.0}%",
                cpu.as_secs_f64() / (r.first_batch + r.wall).as_secs_f64().max(1e-9) * 100.0
            )
        };
        // CPU a batch, over every batch of the run (start-up included): what a projection to
        // more workers or shorter batches scales.
        let per_batch = |cpu: Duration| cpu / BATCHES as u32;
        println!(
            "{:>7} | {:>11} | {:>9} {:>9} | {:>10} | {:>10} {:>11} | {:>12} {:>16}",
            r.workers,
            ms(r.first_batch),
            ms(percentile(&r.processing, 0.5)),
            ms(percentile(&r.processing, 0.99)),
            ms(percentile(&r.total_delay, 0.99)),
            per_second(r.master_cpu),
            per_second(r.workers_cpu),
            ms_tenths(per_batch(r.master_cpu)),
            ms_tenths(per_batch(r.workers_cpu) / r.workers as u32),
        );
    }
    println!(
        "first batch: from the master's first log line to its first batch done; proc: the master's batch, from its call to the workers to the last answer; CPU: share of one core over the run; /batch: CPU time over the run's {BATCHES} batches (start-up included), the master's and one worker's on average"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_and_figures_are_read() {
        assert_eq!(log_millis("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            log_millis("2026-12-02T20:00:36.352988Z"),
            Some(1_796_241_636_352)
        );
        assert_eq!(log_millis("yesterday"), None);
        let line = "2026-12-02T20:00:36.352988Z  INFO batch 397 2026-12-02T20:00:36.350Z: 100 records, 0 errors, processing 2ms, scheduling delay 0ms, total delay 12ms";
        assert_eq!(millis(line, "processing"), Some(Duration::from_millis(2)));
        assert_eq!(millis(line, "total delay"), Some(Duration::from_millis(12)));
        assert_eq!(batch_lines(line).len(), 1);
    }
}
