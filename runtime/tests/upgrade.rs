//! Upgrades with state: `sluice run` stopped, restarted with a changed manifest, resumes from
//! the checkpoint as `sluice plan` says — keyed state re-sharded onto a new parallelism (with
//! random SIGKILLs around each change), a stateful step's removal refused unless its loss is
//! accepted, a state of another form refused.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Rng, run_with_kills};

fn manifest(dir: &Path, parallelism: u32, steps: &str, extra: &str) -> PathBuf {
    manifest_named(
        dir,
        &format!("job-{parallelism}.yaml"),
        parallelism,
        steps,
        extra,
    )
}

/// [`manifest`] in the file `name` under `dir`.
fn manifest_named(dir: &Path, name: &str, parallelism: u32, steps: &str, extra: &str) -> PathBuf {
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: upgrade}}\nspec:\n  batchInterval: 100ms\n  parallelism: {parallelism}\n  sources: [{{name: g, generator: {{rate: 5000, seed: 5, vocabulary: 400}}}}]\n  pipeline:\n{steps}  sinks: [{{files: {{path: \"{out}\"}}}}]\n  checkpoint: {{uri: \"file://{ckpt}\", interval: 3, retain: 2}}\n{extra}",
        out = dir.join("out").display(),
        ckpt = dir.join("ckpt").display(),
    );
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    path
}

fn sluice(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.args(args)
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run(manifest: &Path, batches: u64) -> Command {
    let path = manifest.to_str().expect("utf-8 path");
    sluice(&["run", path, "--batches", &batches.to_string(), "--no-wait"])
}

/// Each batch file's lines, sorted (a batch's lines come out in partition order), in time
/// order.
fn outputs(dir: &Path) -> Vec<Vec<String>> {
    support::batch_texts(&dir.join("out"))
        .iter()
        .map(|text| {
            let mut lines: Vec<String> = text.lines().map(String::from).collect();
            lines.sort();
            lines
        })
        .collect()
}

/// 30 batches at parallelism 4, against 10 at 4, 10 more at 8 and 10 more at 3, with two
/// SIGKILLs in each stretch: the outputs must be the same, batch for batch.
fn check_reshard(name: &str, steps: &str) {
    let reference = tempfile::tempdir().expect("tempdir");
    let job = manifest(reference.path(), 4, steps, "");
    let out = run(&job, 30).output().expect("reference run");
    assert!(
        out.status.success(),
        "{name}: reference run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = outputs(reference.path());
    assert!(
        expected.len() >= 10 && expected.iter().any(|b| b.len() > 10),
        "{name}: the reference run wrote too little to compare: {} files",
        expected.len()
    );

    let upgraded = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng::from_env(name);
    for (parallelism, until) in [(4, 10), (8, 20), (3, 30)] {
        let job = manifest(upgraded.path(), parallelism, steps, "");
        let (kills, _) = run_with_kills(
            name,
            &mut rng,
            || run(&job, until),
            upgraded.path(),
            until,
            (2, Duration::from_millis(5), Duration::from_millis(150)),
            Duration::from_secs(120),
        );
        eprintln!("{name}: parallelism {parallelism} up to batch {until} after {kills} kills");
    }
    let got = outputs(upgraded.path());
    assert_eq!(got.len(), expected.len(), "{name}: one file per output");
    for (i, (want, have)) in expected.iter().zip(&got).enumerate() {
        assert!(
            want == have,
            "{name}: output {} differs from the uninterrupted run after 4 -> 8 -> 3:\nwant {:?}\nhave {:?}",
            i + 1,
            &want[..want.len().min(5)],
            &have[..have.len().min(5)]
        );
    }
}

#[test]
fn running_totals_are_resharded_as_if_never_stopped() {
    check_reshard(
        "totals",
        "    - flatMap: {split: \" \"}\n    - countByValue: {}\n    - updateStateByKey: {op: sum}\n",
    );
}

#[test]
fn sliding_windows_are_resharded_as_if_never_stopped() {
    // An incremental window (buffer and window state, both by key) and a plain window's
    // buffer of records.
    check_reshard(
        "windows",
        "    - flatMap: {split: \" \"}\n    - countByValueAndWindow: {length: 700ms, slide: 200ms}\n    - filter: {expr: \"value > 3\"}\n",
    );
    check_reshard(
        "plain-window",
        "    - flatMap: {split: \" \"}\n    - window: {length: 500ms, slide: 200ms}\n    - countByValue: {}\n",
    );
}

const TOTALS: &str =
    "    - flatMap: {split: \" \"}\n    - countByValue: {}\n    - updateStateByKey: {op: sum}\n";

#[test]
fn dropping_state_needs_consent_and_an_unreadable_state_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = manifest(dir.path(), 4, TOTALS, "");
    let out = run(&first, 5).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = outputs(dir.path()).len();

    // Another aggregation: the state cannot be read, whatever is allowed.
    let other = TOTALS.replace("op: sum", "op: max");
    let job = manifest(dir.path(), 4, &other, "  upgrade: {allowStateLoss: true}\n");
    let out = run(&job, 10).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unreadable state was resumed");
    assert!(stderr.contains("op sum -> max"), "{stderr}");
    assert_eq!(outputs(dir.path()).len(), before, "nothing ran");

    // The running count removed: refused without consent, then run with it.
    let dropped = "    - flatMap: {split: \" \"}\n    - countByValue: {}\n";
    let job = manifest(dir.path(), 4, dropped, "");
    let out = run(&job, 10).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "state was dropped without consent");
    assert!(
        stderr.contains("updateStateByKey#0") && stderr.contains("allowStateLoss"),
        "{stderr}"
    );
    assert_eq!(outputs(dir.path()).len(), before, "nothing ran");
    let job = manifest(
        dir.path(),
        4,
        dropped,
        "  upgrade: {allowStateLoss: true}\n",
    );
    let out = run(&job, 10).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        outputs(dir.path()).len(),
        10,
        "the job went on from batch 6"
    );
}

#[test]
fn plan_prints_each_change_and_exits_with_the_verdict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = |old: &Path, new: &Path, checkpoint: Option<&str>| {
        let mut args = vec![
            "plan".to_string(),
            old.display().to_string(),
            new.display().to_string(),
        ];
        if let Some(uri) = checkpoint {
            args.extend(["--checkpoint".into(), uri.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sluice(&args).output().expect("plan");
        (
            out.status.code().expect("exit code"),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let old = manifest(dir.path(), 4, TOTALS, "");
    let wider = manifest(dir.path(), 8, TOTALS, "");
    let (code, text) = plan(&old, &wider, None);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("spec.parallelism") && text.contains("state migration"),
        "{text}"
    );
    assert!(text.contains("verdict: restores (exit 0)"), "{text}");

    // The same checkpoint and outputs as `old`: only the pipeline differs.
    let fewer = manifest_named(
        dir.path(),
        "fewer.yaml",
        4,
        "    - flatMap: {split: \" \"}\n    - countByValue: {}\n",
        "",
    );
    let (code, text) = plan(&old, &fewer, None);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("state loss"), "{text}");

    let other = TOTALS.replace("op: sum", "op: min");
    let longer = manifest_named(dir.path(), "other.yaml", 3, &other, "");
    let (code, text) = plan(&old, &longer, None);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("cannot restore"), "{text}");

    // Against the checkpoint: the spec that wrote it.
    let out = run(&wider, 3).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uri = format!("file://{}", dir.path().join("ckpt").display());
    let (code, text) = plan(&old, &wider, Some(&uri));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("written by another spec"), "{text}");
    assert!(
        text.contains("no changes"),
        "the checkpoint has parallelism 8: {text}"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\n",
    )
    .expect("write");
    let (code, text) = plan(&old, &bad, None);
    assert_eq!(code, 3, "{text}");
}
