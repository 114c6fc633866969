//! Exactly-once across SIGKILL: `sluice run` is killed at random points, restarted with the same
//! command, and its files output must equal an uninterrupted run's — no gap, no duplicate, same
//! bytes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BATCHES: u64 = 60;

fn manifest(dir: &Path, steps: &str) -> PathBuf {
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: crash}}\nspec:\n  batchInterval: 100ms\n  parallelism: 3\n  sources: [{{name: g, generator: {{rate: 20000, seed: 11, vocabulary: 300}}}}]\n  pipeline:\n{steps}  sinks: [{{files: {{path: \"{out}\"}}}}]\n  checkpoint: {{uri: \"file://{ckpt}\", interval: 3, retain: 2}}\n",
        out = dir.join("out").display(),
        ckpt = dir.join("ckpt").display(),
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

/// The newest batch marked complete in the checkpoint.
fn last_commit(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("ckpt/commits"))
        .map(|entries| {
            entries
                .filter_map(|e| {
                    e.ok()?
                        .file_name()
                        .to_string_lossy()
                        .trim_end_matches(".json")
                        .parse()
                        .ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// SplitMix64, seeded from the clock; the seed is printed so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `slide_ms`: how often the pipeline emits, so how far apart its files are.
fn check_exactly_once(name: &str, steps: &str, slide_ms: u64) {
    let files = BATCHES * 100 / slide_ms;
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{name}: CRASH_SEED={seed}");
    let mut rng = Rng(seed);

    let reference = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let out = sluice(&manifest(reference.path(), steps))
        .output()
        .expect("reference run");
    // Kill points spread over the time a whole run takes (at least a few ms).
    let run_ms = (started.elapsed().as_millis() as u64).max(20);
    assert!(
        out.status.success(),
        "reference run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = outputs(reference.path());
    assert_eq!(
        expected.len() as u64,
        files,
        "the reference run writes one file per slide"
    );

    let crashed = tempfile::tempdir().expect("tempdir");
    let job = manifest(crashed.path(), steps);
    let mut kills = 0;
    let mut mid_run_kills = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "{name}: did not finish in time");
        let mut child = sluice(&job).spawn().expect("spawn sluice");
        if kills < 5 {
            std::thread::sleep(Duration::from_millis(5 + rng.next() % (run_ms / 4).max(1)));
            if child.try_wait().expect("wait").is_none() {
                child.kill().expect("SIGKILL");
                let _ = child.wait();
                kills += 1;
                let last = last_commit(crashed.path());
                eprintln!("{name}: killed after batch {last}");
                mid_run_kills += u32::from(last > 0 && last < BATCHES);
                continue;
            }
        }
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{name}: run after {kills} kills: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        break;
    }
    assert!(
        mid_run_kills >= 1,
        "{name}: no kill landed mid-run ({kills} kills); make the job longer"
    );
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
}

#[test]
fn stateful_running_count_survives_sigkill() {
    check_exactly_once(
        "state",
        "    - flatMap: {split: \" \"}\n    - countByValue: {}\n    - updateStateByKey: {op: sum}\n",
        100,
    );
}

#[test]
fn sliding_window_survives_sigkill() {
    check_exactly_once(
        "window",
        "    - flatMap: {split: \" \"}\n    - countByValueAndWindow: {length: 700ms, slide: 200ms}\n    - filter: {expr: \"value > 3\"}\n",
        200,
    );
}
