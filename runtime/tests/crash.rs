//! Exactly-once across SIGKILL: `sluice run` is killed at random points, restarted with the same
//! command, and its files output must equal an uninterrupted run's — no gap, no duplicate, same
//! bytes.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Rng, run_with_kills};

const BATCHES: u64 = 60;

/// A job of one generator through `steps` into the files sink.
fn pipeline(steps: &str) -> String {
    format!(
        "  sources: [{{name: g, generator: {{rate: 20000, seed: 11, vocabulary: 300}}}}]\n  pipeline:\n{steps}  sinks: [{{files: {{path: OUT}}}}]\n"
    )
}

/// `body`: the spec's sources, steps and sinks, with `OUT` where the files sink writes; and its
/// `checkpoint` with `CKPT` for the directory, or a checkpoint there every 3 batches.
fn manifest(dir: &Path, body: &str) -> PathBuf {
    let ckpt = dir.join("ckpt");
    let body = body
        .replace("OUT", &format!("\"{}\"", dir.join("out").display()))
        .replace("CKPT", &ckpt.display().to_string());
    let checkpoint = if body.contains("  checkpoint:") {
        String::new()
    } else {
        format!(
            "  checkpoint: {{uri: \"file://{}\", interval: 3, retain: 2}}\n",
            ckpt.display()
        )
    };
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: crash}}\nspec:\n  batchInterval: 100ms\n  parallelism: 3\n{body}{checkpoint}"
    );
    let path = dir.join("job.yaml");
    std::fs::write(&path, text).expect("write manifest");
    path
}

fn sluice(manifest: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.arg("run")
        .arg(manifest)
        .args(["--batches", &BATCHES.to_string(), "--no-wait"]);
    c.env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// The batch files in time order.
fn outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("out"))
        .expect("output dir")
        .map(|e| e.expect("entry").path())
        .map(|p| {
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                std::fs::read(&p).expect("read"),
            )
        })
        .collect();
    files.sort();
    files
}

fn batch_times(files: &[(String, Vec<u8>)]) -> Vec<u64> {
    files
        .iter()
        .map(|(n, _)| {
            n.trim_start_matches("batch-")
                .trim_end_matches(".txt")
                .parse()
                .expect("batch time in the name")
        })
        .collect()
}

/// Runs the job of `body` in `dir` to its end, uninterrupted; returns how long it took in ms
/// (at least a few), over which kill points are spread.
fn uninterrupted(dir: &Path, body: &str) -> u64 {
    let started = Instant::now();
    let out = sluice(&manifest(dir, body))
        .output()
        .expect("reference run");
    let run_ms = (started.elapsed().as_millis() as u64).max(20);
    assert!(
        out.status.success(),
        "reference run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_ms
}

/// Runs the job of `body` in `dir` to its end through 5 SIGKILLs at random points within
/// the first quarter of `run_ms` after each start; returns the kills.
fn killed_at_random(name: &str, rng: &mut Rng, dir: &Path, body: &str, run_ms: u64) -> u32 {
    let job = manifest(dir, body);
    let (kills, mid_run_kills) = run_with_kills(
        name,
        rng,
        || sluice(&job),
        dir,
        BATCHES,
        (
            5,
            Duration::from_millis(5),
            Duration::from_millis(run_ms / 4),
        ),
        Duration::from_secs(120),
    );
    assert!(
        mid_run_kills >= 1,
        "{name}: no kill landed mid-run ({kills} kills); make the job longer"
    );
    kills
}

/// `slide_ms`: how often the job's output emits, so how far apart its files are. Returns the
/// uninterrupted run's files.
fn check_exactly_once(name: &str, body: &str, slide_ms: u64) -> Vec<(String, Vec<u8>)> {
    let files = BATCHES * 100 / slide_ms;
    let mut rng = Rng::from_env(name);

    let reference = tempfile::tempdir().expect("tempdir");
    let run_ms = uninterrupted(reference.path(), body);
    let expected = outputs(reference.path());
    assert_eq!(
        expected.len() as u64,
        files,
        "the reference run writes one file per slide"
    );

    let crashed = tempfile::tempdir().expect("tempdir");
    let kills = killed_at_random(name, &mut rng, crashed.path(), body, run_ms);
    let got = outputs(crashed.path());
    let times = batch_times(&got);
    assert_eq!(
        got.len() as u64,
        files,
        "{name}: one file per slide, no gap and no extra, after {kills} kills"
    );
    assert!(
        times.windows(2).all(|w| w[1] - w[0] == slide_ms),
        "{name}: batch times have a gap: {times:?}"
    );
    for (i, ((_, want), (file, have))) in expected.iter().zip(&got).enumerate() {
        assert!(
            want == have,
            "{name}: batch {} ({file}) differs from the uninterrupted run after {kills} kills",
            i + 1
        );
    }
    expected
}

#[test]
fn stateful_running_count_survives_sigkill() {
    check_exactly_once(
        "state",
        &pipeline(
            "    - flatMap: {split: \" \"}\n    - countByValue: {}\n    - updateStateByKey: {op: sum}\n",
        ),
        100,
    );
}

/// Snapshots spaced by batch time (`snapshotEvery`) rather than every 3 batches: a recovery
/// replays more batches from the log, to the same output.
#[test]
fn snapshots_spaced_by_time_survive_sigkill() {
    let body = pipeline(
        "    - flatMap: {split: \" \"}\n    - countByValue: {}\n    - updateStateByKey: {op: sum}\n",
    ) + "  checkpoint: {uri: \"file://CKPT\", interval: 2, snapshotEvery: 700ms, retain: 2}\n";
    check_exactly_once("snapshotEvery", &body, 100);
    // The spacing held: every 2 batches and 700 ms of batch time is every 8th batch, so the two
    // snapshots kept after 60 batches are 56 and the one at shutdown (58 and 60 without it).
    let dir = tempfile::tempdir().expect("tempdir");
    uninterrupted(dir.path(), &body);
    let mut kept: Vec<u64> = std::fs::read_dir(dir.path().join("ckpt/state"))
        .expect("snapshots")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    kept.sort();
    assert_eq!(kept, vec![56, 60]);
}

#[test]
fn sliding_window_survives_sigkill() {
    check_exactly_once(
        "window",
        &pipeline(
            "    - flatMap: {split: \" \"}\n    - countByValueAndWindow: {length: 700ms, slide: 200ms}\n    - filter: {expr: \"value > 3\"}\n",
        ),
        200,
    );
}

/// Two sources, each its own stream of word counts, fully joined over a sliding window.
const JOIN_GRAPH: &str = "  sources:
    - {name: a, generator: {rate: 5000, seed: 11, vocabulary: 300}}
    - {name: b, generator: {rate: 3000, seed: 12, vocabulary: 300}}
  streams:
    - name: left
      from: [a]
      pipeline: [{flatMap: {split: \" \"}}, {countByValue: {}}, {window: {length: 500ms, slide: 200ms}}]
    - name: right
      from: [b]
      pipeline: [{flatMap: {split: \" \"}}, {countByValue: {}}, {window: {length: 500ms, slide: 200ms}}]
    - name: joined
      from: [left]
      pipeline: [{fullOuterJoin: {with: right}}]
  sinks: [{from: joined, files: {path: OUT}}]
";

#[test]
fn state_from_an_expression_survives_sigkill() {
    check_exactly_once(
        "state expression",
        &pipeline(
            "    - flatMap: {split: \" \"}\n    - countByValue: {}\n    - updateStateByKey: {expr: \"{'n': (state == null ? 0 : state.n) + sum(values), 'batches': (state == null ? 0 : state.batches) + 1}\"}\n",
        ),
        100,
    );
}

#[test]
fn map_with_state_survives_sigkill() {
    check_exactly_once(
        "mapWithState",
        &pipeline(
            "    - flatMap: {split: \" \"}\n    - countByValue: {}\n    - mapWithState: {expr: \"{'state': (state == null ? 0 : state) + value, 'emit': (state == null ? 0 : state) + value}\"}\n",
        ),
        100,
    );
}

/// Timers: a word's count is emitted 300 ms after its last record, then every 200 ms (counting
/// down by 3) until it is 3 or less. Sparse words, so that most keys' timers fire; the restored
/// timers must fire as the uninterrupted run's did, each once.
#[test]
fn timers_survive_sigkill() {
    let body = "  sources: [{name: g, generator: {rate: 3000, seed: 11, vocabulary: 20000}}]\n  pipeline:\n    - flatMap: {split: \" \"}\n    - countByValue: {}\n    - mapWithState:\n        expr: \"{'state': (state == null ? 0 : state) + value, 'timer': batch.time + 300}\"\n        onTimer: \"state > 3 ? {'state': state - 3, 'emit': state, 'timer': timer + 200} : {'emit': state}\"\n  sinks: [{files: {path: OUT}}]\n  checkpoint: {uri: \"file://CKPT\", interval: 2, retain: 2}\n";
    let expected = check_exactly_once("timers", body, 100);
    let records: usize = expected
        .iter()
        .map(|(_, bytes)| bytes.iter().filter(|&&b| b == b'\n').count())
        .sum();
    // 60 batches of 300 lines of about 15 words: tens of thousands of keys fired.
    assert!(records > 10_000, "only {records} timers fired");
}

/// Snapshots as deltas: a large vocabulary, of which each batch touches a small part, and
/// keys that leave (a total past 40, or 2 s without a record), so that most snapshots are
/// deltas on the one before and recovery reads chains of them, removals included.
#[test]
fn delta_snapshots_survive_sigkill() {
    let body = "  sources: [{name: g, generator: {rate: 400, seed: 11, vocabulary: 20000}}]\n  pipeline:\n    - flatMap: {split: \" \"}\n    - countByValue: {}\n    - mapWithState: {expr: \"{'state': (state == null ? 0 : state) + value > 40 ? null : (state == null ? 0 : state) + value, 'emit': (state == null ? 0 : state) + value}\", timeout: 2s}\n  sinks: [{files: {path: OUT}}]\n  checkpoint: {uri: \"file://CKPT\", interval: 2, retain: 2}\n";
    check_exactly_once("deltas", body, 100);
    // The uninterrupted run wrote deltas, and its last snapshot reads back through a chain.
    let dir = tempfile::tempdir().expect("tempdir");
    uninterrupted(dir.path(), body);
    let deltas = std::fs::read_dir(dir.path().join("ckpt/state"))
        .expect("snapshots")
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("MANIFEST.json"))
                .is_ok_and(|m| m.contains("\"base\""))
        })
        .count();
    assert!(deltas >= 1, "no snapshot kept is a delta");
    // Each delta carries a stripe of the whole state, and a chain starts at the first delta of
    // the last completed stripe cycle: the kept snapshots' manifests say where.
    let manifests: Vec<String> = std::fs::read_dir(dir.path().join("ckpt/state"))
        .expect("snapshots")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("MANIFEST.json")).ok())
        .collect();
    assert!(
        manifests.iter().any(|m| m.contains("\"from\"")),
        "no snapshot kept reads from a stripe cycle"
    );
    // Pruning follows each partition's chain, not every manifest's base: of the 30 snapshots,
    // the 2 retained and the ones their chains read. A partition here holds about 2,000 keys,
    // which stripes of at least 1,024 cover in 2 deltas: a chain is 2 to 4 snapshots long
    // (before the fix, every snapshot was kept: each had a delta, whose base was kept).
    assert!(
        manifests.len() <= 2 + 4,
        "{} snapshots kept with retain: 2",
        manifests.len()
    );
}

#[test]
fn joined_streams_survive_sigkill() {
    check_exactly_once("join", JOIN_GRAPH, 200);
}

/// Running totals per word in the newest batch file of a files sink (`format: json`).
fn final_totals(out: &Path) -> std::collections::BTreeMap<String, u64> {
    let batches = support::json_batches(out);
    let last = batches.last().expect("at least one batch file");
    last.iter()
        .map(|r| {
            let key = r["key"].as_str().expect("a word key").to_string();
            (key, r["value"].as_u64().expect("a count"))
        })
        .collect()
}

/// The files source bounded by backpressure: a directory that filled before the job started is
/// taken a few files a batch (whole files, oldest first, within the rate controller's
/// bound), and the running counts after random SIGKILLs equal an uninterrupted run's and a
/// count of the files themselves.
#[test]
fn files_source_bounded_by_backpressure_survives_sigkill() {
    let name = "files backpressure";
    let mut rng = Rng::from_env(name);
    let input = tempfile::tempdir().expect("tempdir");
    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    for f in 0..40u64 {
        let mut text = String::new();
        for l in 0..300u64 {
            let words: Vec<String> = (0..4)
                .map(|w| format!("w{}", (f * 7 + l * 13 + w * 31) % 97))
                .collect();
            for w in &words {
                *expected.entry(w.clone()).or_default() += 1;
            }
            text.push_str(&words.join(" "));
            text.push('\n');
        }
        std::fs::write(input.path().join(format!("in-{f:03}.txt")), text).expect("write input");
        // Distinct change times, so the order of files is the order of their names.
        std::thread::sleep(Duration::from_millis(3));
    }
    // 1,000 lines/s over 100 ms batches: 100 lines, less than a file, at first.
    let body = format!(
        "  backpressure: {{initialRate: 1000, minRate: 100}}\n  sources: [{{name: f, files: {{path: \"{}\"}}}}]\n  pipeline:\n    - flatMap: {{split: \" \"}}\n    - countByValue: {{}}\n    - updateStateByKey: {{op: sum}}\n  sinks: [{{files: {{path: OUT, format: json}}}}]\n",
        input.path().display()
    );

    let reference = tempfile::tempdir().expect("tempdir");
    let run_ms = uninterrupted(reference.path(), &body);
    assert_eq!(final_totals(&reference.path().join("out")), expected);
    // The bound held: the first batch took one file, and the files took several batches.
    let totals: Vec<u64> = support::json_batches(&reference.path().join("out"))
        .iter()
        .map(|b| b.iter().filter_map(|r| r["value"].as_u64()).sum())
        .collect();
    let first = totals.iter().copied().find(|t| *t > 0).unwrap_or(0);
    assert_eq!(first, 1200, "the first batch takes one file: {totals:?}");
    let steps = totals.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        steps >= 2,
        "the files were taken over a few batches: {totals:?}"
    );

    let crashed = tempfile::tempdir().expect("tempdir");
    let kills = killed_at_random(name, &mut rng, crashed.path(), &body, run_ms);
    assert_eq!(
        final_totals(&crashed.path().join("out")),
        expected,
        "{name}: the running counts after {kills} kills differ from the files' words"
    );
}
