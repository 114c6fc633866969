//! `sluice bench --state`: a running count over many distinct keys (issue item "big state").
//!
//! One job, run twice through the real local runtime against one checkpoint:
//! 1. **load and steady**: the first batches bring `--keys` new keys (a million a batch), the
//!    next ones each touch `--touched` keys drawn uniformly from all of them; `--snapshots`
//!    snapshots [`SNAPSHOT_EVERY`] batches apart, from the first batch after the load: the
//!    first whole, the next ones deltas on it (the keys touched since), each carrying a stripe
//!    of the whole state. Printed: resident memory per key, each
//!    snapshot's kind and size, their time, and what each adds to the batches it overlaps (the
//!    wall time between batches, back to back).
//! 2. **recovery**: a new job on the same checkpoint runs one batch; printed: the time from
//!    its start to that batch done (the newest snapshot read and loaded).
//!
//! The keys are text (`k0000001234`), the state a count per key (`mapWithState`, whose cost
//! follows the keys a batch touches, not the size of the state).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use super::bench::{self, BenchArgs};
use super::bench_files::Scratch;
use crate::checkpoint::{CheckpointStore, Checkpointer, open_store};
use crate::coordinator::BatchProgress;
use crate::dstream::{State, StateSpec};
use crate::error::{Error, Result};
use crate::local::{self, LocalOptions};
use crate::metrics::{Role, RuntimeMetrics};
use crate::source::{Refusals, Source};
use crate::time::BatchInfo;
use crate::{StreamingConfig, StreamingContext};

/// New keys per batch while loading.
const LOAD_PER_BATCH: u64 = 1_000_000;
/// Batches between snapshots (the first one right after the load).
const SNAPSHOT_EVERY: u64 = 10;
/// Batches after each snapshot counted as overlapping it (its state files are written while
/// they run).
const OVERLAP: u64 = 3;

/// Keys: batch `b` of the load brings keys `[(b-1)·L, b·L)`; every later batch touches
/// `touched` keys drawn uniformly from all of them, from the batch index alone (replayable).
struct Keys {
    keys: u64,
    touched: u64,
    next: u64,
}

impl Keys {
    fn load_batches(&self) -> u64 {
        self.keys.div_ceil(LOAD_PER_BATCH)
    }

    fn batch(&self, index: u64) -> Vec<u64> {
        if index <= self.load_batches() {
            let start = (index - 1) * LOAD_PER_BATCH;
            return (start..(start + LOAD_PER_BATCH).min(self.keys)).collect();
        }
        // Seeded from a mix of the index: seeded with the index times the generator's step,
        // batch i+1 would draw batch i's keys shifted by one.
        let mut index_seed = index;
        let mut s = crate::source::splitmix(&mut index_seed);
        (0..self.touched)
            .map(|_| crate::source::splitmix(&mut s) % self.keys)
            .collect()
    }
}

fn key_text(k: u64) -> String {
    format!("k{k:010}")
}

impl Source for Keys {
    type Item = String;

    fn name(&self) -> &str {
        "keys"
    }

    fn replayable(&self) -> bool {
        true
    }

    fn plan(&mut self, batch: &BatchInfo) -> Result<Json> {
        self.next = batch.index + 1;
        Ok(json!({ "batch": batch.index }))
    }

    fn read(
        &mut self,
        range: &Json,
        partitions: usize,
        _refused: &mut Refusals,
    ) -> Result<Vec<Vec<String>>> {
        let index = range["batch"].as_u64().ok_or_else(|| Error::Source {
            source_name: "keys".into(),
            message: format!("unreadable range {range}"),
        })?;
        let keys = self.batch(index).into_iter().map(key_text).collect();
        Ok(crate::source::split_even(keys, partitions))
    }

    fn position(&self) -> Json {
        json!({ "next": self.next })
    }

    fn seek(&mut self, position: &Json) -> Result<()> {
        self.next = position["next"].as_u64().unwrap_or(1);
        Ok(())
    }
}

/// The job: a count per key, nothing emitted.
fn build(args: &BenchArgs, threads: usize) -> Result<crate::Job> {
    let ctx = StreamingContext::new(
        StreamingConfig::new(Duration::from_secs(1))
            .parallelism(args.parallelism as usize)
            .threads(threads),
    );
    let keys = ctx.source(Keys {
        keys: args.keys,
        touched: args.touched,
        next: 1,
    });
    let counted = keys.map(|k| (k, 1u64)).map_with_state(StateSpec::function(
        |_, _: &String, one: Option<u64>, count: &mut State<u64>| {
            let n = count.get().copied().unwrap_or(0) + one.unwrap_or(0);
            count.update(n);
            None::<u64>
        },
    ));
    counted.emitted.foreach_batch(|_, _| Ok(()));
    ctx.build()
}

/// The store of `--checkpoint`, as a manifest's `spec.checkpoint` would name it.
fn store(args: &BenchArgs) -> Result<Box<dyn CheckpointStore>> {
    let uri = args.checkpoint.as_deref().unwrap_or_default();
    let spec = match &args.s3_endpoint {
        Some(endpoint) => json!({ "uri": uri, "endpoint": endpoint, "pathStyle": true }),
        None => json!({ "uri": uri }),
    };
    let spec: sluice_crds::CheckpointSpec = serde_json::from_value(spec)
        .map_err(|e| Error::Config(format!("--checkpoint {uri}: {e}")))?;
    open_store(&spec)
}

fn local_options(
    args: &BenchArgs,
    stop_after: u64,
    metrics: Arc<RuntimeMetrics>,
    on_batch: Box<dyn FnMut(&BatchProgress) + Send>,
) -> Result<LocalOptions> {
    Ok(LocalOptions {
        job_name: "bench-state".into(),
        job_uid: None,
        fingerprint: format!("bench-state-{}-{}", args.keys, args.parallelism),
        store: Some(store(args)?),
        writer_lock: None,
        snapshot_interval: SNAPSHOT_EVERY,
        snapshot_every: Duration::ZERO,
        retain: 2,
        stop_after: Some(stop_after),
        stop: Arc::new(AtomicBool::new(false)),
        paced: false,
        on_batch,
        metrics: Some(metrics),
    })
}

/// Resident memory of this process, bytes.
fn resident() -> u64 {
    super::bench_files::process_status_kb("VmRSS").map_or(0, |kb| kb * 1024)
}

/// The sum and count of a histogram in the metrics' text.
fn histogram(text: &str, name: &str) -> (f64, u64) {
    let value = |suffix: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{suffix}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (value("_sum"), value("_count") as u64)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub(super) fn bench_state(args: &BenchArgs, threads: usize) -> Result<(), String> {
    if args.keys == 0 || args.touched == 0 || args.snapshots == 0 {
        return Err("--keys, --touched and --snapshots must be at least 1".into());
    }
    let scratch;
    let mut args_local;
    let args = if args.checkpoint.is_none() {
        scratch = Scratch::new("state")?;
        args_local = args.clone();
        args_local.checkpoint = Some(format!("file://{}", scratch.path().join("ckpt").display()));
        &args_local
    } else {
        args
    };
    let uri = args.checkpoint.clone().unwrap_or_default();
    let source = Keys {
        keys: args.keys,
        touched: args.touched,
        next: 1,
    };
    let load = source.load_batches();
    let first_snapshot = load.max(1).next_multiple_of(SNAPSHOT_EVERY);
    let snapshot_batches: Vec<u64> = (0..args.snapshots)
        .map(|i| first_snapshot + i * SNAPSHOT_EVERY)
        .collect();
    let last = first_snapshot + (args.snapshots - 1) * SNAPSHOT_EVERY + OVERLAP + 1;
    println!(
        "state: {} distinct text keys, a count each (mapWithState), {} partitions, {threads} task threads; checkpoint {uri}",
        args.keys, args.parallelism
    );
    println!(
        "load: {load} batches of up to {LOAD_PER_BATCH} new keys; then {} batches of {} keys drawn from all, back to back, a snapshot every {SNAPSHOT_EVERY} batches from batch {first_snapshot}",
        last - load,
        args.touched
    );

    // 1. Load and steady.
    let before = resident();
    let seen: Arc<Mutex<Vec<(u64, Instant, u64)>>> = Arc::default();
    let sink = seen.clone();
    let metrics = Arc::new(RuntimeMetrics::new("bench-state", "bench", Role::Local));
    let job = build(args, threads).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let options = local_options(
        args,
        last,
        metrics.clone(),
        Box::new(move |p| {
            sink.lock().unwrap_or_else(|e| e.into_inner()).push((
                p.report.batch.index,
                Instant::now(),
                resident(),
            ))
        }),
    )
    .map_err(|e| e.to_string())?;
    local::run(job, options).map_err(|e| e.to_string())?;
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let loaded_at = seen
        .iter()
        .find(|(b, _, _)| *b == load)
        .ok_or("the load did not finish")?;
    let per_key = loaded_at.2.saturating_sub(before) as f64 / args.keys as f64;
    println!(
        "load: {} ({:.2} M keys/s); resident memory +{:.0} MB, {per_key:.0} bytes per key (with a load batch's working memory)",
        secs(loaded_at.1 - started),
        args.keys as f64 / (loaded_at.1 - started).as_secs_f64() / 1e6,
        loaded_at.2.saturating_sub(before) as f64 / 1e6
    );

    // Wall time between consecutive batches after the load: with a snapshot and without.
    let gaps: Vec<(u64, Duration)> = seen
        .windows(2)
        .filter(|w| w[1].0 > load + 1)
        .map(|w| (w[1].0, w[1].1 - w[0].1))
        .collect();
    // A snapshot is encoded before its batch is reported and written while the next ones run.
    let overlaps = |b: u64| snapshot_batches.iter().any(|s| b >= *s && b <= s + OVERLAP);
    let mut quiet: Vec<Duration> = gaps
        .iter()
        .filter(|(b, _)| !overlaps(*b))
        .map(|(_, d)| *d)
        .collect();
    quiet.sort();
    let median = quiet.get(quiet.len() / 2).copied().unwrap_or_default();
    let (snap_secs, snaps) = histogram(&metrics.render(), "sluice_checkpoint_duration_seconds");
    let ckpt = Checkpointer::new(store(args).map_err(|e| e.to_string())?, SNAPSHOT_EVERY, 2);
    let newest = ckpt
        .snapshot_batches()
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or("no snapshot was written")?;
    let read_started = Instant::now();
    let snapshot = ckpt.snapshot_at(newest).map_err(|e| e.to_string())?;
    let read = read_started.elapsed();
    let (bytes, depth) = (snapshot.bytes(), snapshot.depth);
    // A chain from a stripe cycle starts with an empty item, not a file.
    let read_files = snapshot.parts.values().flatten().filter(|f| !f.is_empty());
    let (read_files, cycles) = (read_files.count(), snapshot.from.len());
    let chains = snapshot.parts.len();
    drop(snapshot);
    println!(
        "snapshots: {} on average from a batch to its manifest written ({snaps} snapshots); the newest (batch {newest}) read back in {:.0} ms: {:.0} MB in {read_files} files ({cycles} of {chains} partition chains from a stripe cycle, the others from a whole state; the longest {} files)",
        secs(Duration::from_secs_f64(snap_secs / snaps.max(1) as f64)),
        read.as_secs_f64() * 1e3,
        bytes as f64 / 1e6,
        depth + 1,
    );
    println!(
        "steady batches ({} keys touched): median {:.1} ms apart without a snapshot",
        args.touched,
        median.as_secs_f64() * 1e3
    );
    // What each delta adds over the batches it overlaps, for their median; and, of those, its
    // own batch (which waits for what is left of the encoding) and the one after it (which
    // shares the cores with the checkpoint writer).
    let mut delta_shares = Vec::new();
    let (mut own_batch, mut next_batch) = (Vec::new(), Vec::new());
    for s in &snapshot_batches {
        let around: Vec<String> = gaps
            .iter()
            .filter(|(b, _)| *b >= *s && *b <= s + OVERLAP)
            .map(|(b, d)| format!("{b}: {:.0} ms", d.as_secs_f64() * 1e3))
            .collect();
        let extra: Duration = gaps
            .iter()
            .filter(|(b, _)| *b >= *s && *b <= s + OVERLAP)
            .map(|(_, d)| d.saturating_sub(median))
            .sum();
        let files = ckpt.snapshot_files(*s).map_err(|e| e.to_string())?;
        let written = files.as_deref().map_or("pruned".to_string(), |files| {
            let bytes: u64 = files.iter().map(|f| f.len).sum();
            let whole = files.iter().filter(|f| !f.delta).count();
            let kind = match whole {
                0 => "delta".to_string(),
                n if n == files.len() => "whole".to_string(),
                n => format!("delta, {n} of {} files whole", files.len()),
            };
            format!(
                "{kind}, {:.1} MB, {:.1} bytes per key",
                bytes as f64 / 1e6,
                bytes as f64 / args.keys as f64
            )
        });
        let share = extra.as_secs_f64() / (median.as_secs_f64() * around.len() as f64).max(1e-9);
        if !around.is_empty() {
            if files.as_ref().is_some_and(|f| f.iter().any(|f| f.delta)) {
                delta_shares.push(share);
                let above = |batch: u64| {
                    let gap = gaps.iter().find(|(b, _)| *b == batch).map(|(_, d)| *d);
                    gap.map(|d| d.as_secs_f64() - median.as_secs_f64())
                };
                own_batch.extend(above(*s));
                next_batch.extend(above(s + 1));
            }
            println!(
                "  snapshot of batch {s} ({written}): {} ; {:.0} ms more than {} quiet batches ({:+.0} % over them)",
                around.join(", "),
                extra.as_secs_f64() * 1e3,
                around.len(),
                share * 100.0
            );
        }
    }
    if !delta_shares.is_empty() {
        delta_shares.sort_by(f64::total_cmp);
        println!(
            "deltas: median {:+.0} % over the batches each overlaps ({} deltas, from {:+.0} to {:+.0} %)",
            delta_shares[delta_shares.len() / 2] * 100.0,
            delta_shares.len(),
            delta_shares[0] * 100.0,
            delta_shares[delta_shares.len() - 1] * 100.0
        );
        println!(
            "deltas: a delta's own batch took a median {:+.0} ms over a quiet one (the encoding left for it), the batch after it {:+.0} ms (beside the checkpoint writer)",
            bench::median(own_batch) * 1e3,
            bench::median(next_batch) * 1e3
        );
    }

    // 2. Recovery: a new job on the same checkpoint, one batch.
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    let sink = first.clone();
    let metrics = Arc::new(RuntimeMetrics::new("bench-state", "bench", Role::Local));
    let job = build(args, threads).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let options = local_options(
        args,
        last + 1,
        metrics,
        Box::new(move |_| {
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(Instant::now);
        }),
    )
    .map_err(|e| e.to_string())?;
    local::run(job, options).map_err(|e| e.to_string())?;
    let done = first
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .ok_or("the recovered job ran no batch")?;
    println!(
        "recovery: a new job on the checkpoint ran its first batch {} after it started (snapshot of batch {newest} read and loaded)",
        secs(done - started)
    );
    Ok(())
}
