//! `sluice bench --nexmark`: the Nexmark queries of `examples/nexmark`, each run back to back
//! (1 s batches, no pacing) through the local runtime with its events from the built-in
//! generator at --rate, outputs discarded; prints events per second per busy core. The
//! generator runs inside the job, as Nexmark's data generator runs inside the Flink job it
//! measures: its cost is part of every figure, and its cost alone is printed first.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::bench::{BenchArgs, compile_manifest, run_options};
use super::bench_files::process_cpu;
use crate::local;
use crate::source::{GeneratorConfig, TextGenerator};

/// The queries, as their examples state them (rate and sink replaced here), with the batches
/// each runs before the measured ones: a windowed query carries its full cost only once its
/// first (10 s) window has filled, and q4 and q6 once auctions close as fast as they open
/// (they last 5 to 15 s).
const QUERIES: [(&str, &str, u64, &str); 17] = [
    (
        "q0",
        "pass-through",
        1,
        include_str!("../../../examples/nexmark/q0.yaml"),
    ),
    (
        "q1",
        "currency conversion",
        1,
        include_str!("../../../examples/nexmark/q1.yaml"),
    ),
    (
        "q2",
        "selection",
        1,
        include_str!("../../../examples/nexmark/q2.yaml"),
    ),
    (
        "q3",
        "local item suggestion",
        1,
        include_str!("../../../examples/nexmark/q3.yaml"),
    ),
    (
        "q4",
        "average price for a category",
        15,
        include_str!("../../../examples/nexmark/q4.yaml"),
    ),
    (
        "q5",
        "hot items",
        10,
        include_str!("../../../examples/nexmark/q5.yaml"),
    ),
    (
        "q6",
        "average selling price by seller",
        15,
        include_str!("../../../examples/nexmark/q6.yaml"),
    ),
    (
        "q7",
        "highest bid",
        10,
        include_str!("../../../examples/nexmark/q7.yaml"),
    ),
    (
        "q8",
        "monitor new users",
        10,
        include_str!("../../../examples/nexmark/q8.yaml"),
    ),
    (
        "q12",
        "processing-time window",
        10,
        include_str!("../../../examples/nexmark/q12.yaml"),
    ),
    (
        "q13",
        "side input join",
        1,
        include_str!("../../../examples/nexmark/q13.yaml"),
    ),
    (
        "q14",
        "calculation",
        1,
        include_str!("../../../examples/nexmark/q14.yaml"),
    ),
    (
        "q17",
        "auction statistics",
        1,
        include_str!("../../../examples/nexmark/q17.yaml"),
    ),
    (
        "q18",
        "find last bid",
        1,
        include_str!("../../../examples/nexmark/q18.yaml"),
    ),
    (
        "q19",
        "auction top-k",
        1,
        include_str!("../../../examples/nexmark/q19.yaml"),
    ),
    (
        "q21",
        "add channel id",
        1,
        include_str!("../../../examples/nexmark/q21.yaml"),
    ),
    (
        "q22",
        "get URL directories",
        1,
        include_str!("../../../examples/nexmark/q22.yaml"),
    ),
];

/// Where q13's example names its side input, relative to the repository's root.
const SIDE_INPUT: &str = "examples/nexmark/side-input.csv";

/// q13's side input, as `examples/nexmark/side-input.csv` holds it (a test checks the file):
/// written where the bench can name it from any working directory.
fn write_side_input(dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
    let path = dir.join("side-input.csv");
    let text: String = (0..10_000).map(|k| format!("{k},side-{k}\n")).collect();
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// What one run of a query showed, after its warm-up.
struct Figures {
    events: u64,
    wall: Duration,
    cpu: Duration,
}

impl Figures {
    fn per_core(&self) -> f64 {
        self.events as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
}

fn run(text: &str, warm: u64, seconds: u64, threads: usize) -> Result<Figures, String> {
    let (job, spec) = compile_manifest(text, threads, true)?;
    // Each batch's end: its input, the process's CPU time and the clock.
    let marks: Arc<Mutex<Vec<(u64, Duration, Instant)>>> = Arc::default();
    let sink = marks.clone();
    local::run(
        job,
        run_options(
            &spec,
            warm + seconds,
            false,
            Box::new(move |p| {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push((
                    p.report.records,
                    process_cpu(),
                    Instant::now(),
                ))
            }),
        ),
    )
    .map_err(|e| e.to_string())?;
    let marks = marks.lock().unwrap_or_else(|e| e.into_inner());
    let (Some(first), Some(last)) = (marks.get(warm as usize - 1), marks.last()) else {
        return Err("no batch was measured".into());
    };
    Ok(Figures {
        events: marks[warm as usize..].iter().map(|m| m.0).sum(),
        wall: last.2 - first.2,
        cpu: last.1.saturating_sub(first.1),
    })
}

pub(super) fn bench_nexmark(args: &BenchArgs, threads: usize) -> Result<(), String> {
    if let Some(unknown) = args
        .queries
        .iter()
        .find(|q| !QUERIES.iter().any(|(name, ..)| name == q))
    {
        let names: Vec<&str> = QUERIES.iter().map(|(name, ..)| *name).collect();
        return Err(format!(
            "--queries: there is no query {unknown:?}; the queries are {}",
            names.join(", ")
        ));
    }
    let seconds = args.seconds.max(1);
    let rounds = args.rounds.max(1);
    let generator = TextGenerator::new(GeneratorConfig {
        name: "events".into(),
        rate: args.rate,
        seed: 42,
        format: sluice_crds::GeneratorFormat::Nexmark,
        vocabulary: 1,
        line_bytes: 100,
    });
    // What the source does: events as records (the queries' input). The first run warms the
    // thread pool and the allocator up; the second is timed.
    let records = || {
        generator.records(0, args.rate, threads, &|g, index| {
            crate::manifest::nexmark_record(g.nexmark_event(index))
        })
    };
    drop(records());
    let cpu = process_cpu();
    drop(records());
    let cpu = process_cpu().saturating_sub(cpu);
    // And printed as JSON, as a source reading them from elsewhere would parse them.
    let json_cpu = process_cpu();
    let lines = generator.lines(0, args.rate, threads);
    let json_cpu = process_cpu().saturating_sub(json_cpu);
    let bytes: usize = lines.iter().flatten().map(String::len).sum();
    println!(
        "nexmark: events from the built-in generator at {} events/s of stream time, 1 s batches back to back, {seconds} s measured per run after a warm-up, outputs discarded; medians of {rounds} rounds",
        args.rate
    );
    let per_core = |cpu: std::time::Duration| args.rate as f64 / cpu.as_secs_f64().max(1e-9) / 1e6;
    println!(
        "the generator alone: {:.2} M events/s per core as records (the queries' input, made and freed), {:.2} M as JSON lines ({:.0} bytes an event); event time is generation time",
        per_core(cpu),
        per_core(json_cpu),
        bytes as f64 / args.rate.max(1) as f64
    );
    println!(
        "{:<5} {:<24} {:>6} {:>8} {:>12} {:>11} {:>18}",
        "query", "", "cores", "seconds", "events", "events/s", "events/s per core"
    );
    let scratch = super::bench_files::Scratch::new("nexmark")?;
    let side_input = write_side_input(scratch.path())?;
    for (name, what, warm, example) in QUERIES {
        if !args.queries.is_empty() && !args.queries.iter().any(|q| q == name) {
            continue;
        }
        let text = example
            .replace("rate: 100000", &format!("rate: {}", args.rate))
            .replace(SIDE_INPUT, &side_input.display().to_string());
        let mut runs = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            runs.push(run(&text, warm, seconds, threads)?);
        }
        runs.sort_by(|a, b| a.per_core().total_cmp(&b.per_core()));
        let f = &runs[runs.len() / 2];
        let wall = f.wall.as_secs_f64().max(1e-9);
        println!(
            "{:<5} {:<24} {:>6.2} {:>8.1} {:>12} {:>9.2} M {:>16.2} M",
            name,
            what,
            f.cpu.as_secs_f64() / wall,
            wall,
            f.events,
            f.events as f64 / wall / 1e6,
            f.per_core() / 1e6
        );
    }
    Ok(())
}
