//! The `sluice` binary as users run it: `validate` on a corpus of bad manifests, the examples,
//! and a refused checkpoint of another job.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::run_ok;

fn sluice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env("SLUICE_LOG", "warn");
    c
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_invalid_manifest_is_refused_with_its_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 60, "the corpus shrank: {}", files.len());
    for file in files {
        // Some entries are not text at all: the expectation is the first line either way.
        let text = String::from_utf8_lossy(&std::fs::read(&file).expect("read")).into_owned();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .expect("first line: # expect: MESSAGE");
        let out = sluice()
            .arg("validate")
            .arg(&file)
            .output()
            .expect("run sluice");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: exit code; stderr: {stderr}",
            file.display()
        );
        assert!(
            stderr.contains(expect),
            "{}: expected {expect:?} in:\n{stderr}",
            file.display()
        );
        assert!(!stderr.contains("panicked"), "{}: {stderr}", file.display());
        // Passwords in a manifest are never repeated back.
        assert!(!stderr.contains("hunter2"), "{}: {stderr}", file.display());
        // `run` refuses the same manifest the same way, before doing anything.
        let out = sluice().arg("run").arg(&file).output().expect("run sluice");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: run exit code",
            file.display()
        );
    }
}

#[test]
fn examples_are_valid() {
    let mut files: Vec<PathBuf> = ["examples", "examples/nexmark"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(repo().join(dir)).expect("examples"))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "{files:?}");
    let out = sluice()
        .current_dir(repo())
        .arg("validate")
        .args(&files)
        .output()
        .expect("run sluice");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches(": valid")
            .count(),
        files.len()
    );
}

#[test]
fn wordcount_example_prints_counts() {
    let out = run_ok(sluice().current_dir(repo()).args([
        "run",
        "examples/wordcount.yaml",
        "--batches",
        "2",
        "--no-wait",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("Time: ").count(), 2, "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with('(') && l.ends_with(')') && l.contains(',')),
        "{stdout}"
    );
}

#[test]
fn missing_file_and_bad_flags_exit_2() {
    let out = sluice()
        .args(["validate", "/nonexistent.yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read it"));
    let out = sluice()
        .args(["run", "x.yaml", "--batches", "many"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = sluice().arg("--help").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("sluice run examples/wordcount.yaml"));
}

#[test]
fn a_changed_spec_resumes_the_checkpoint_only_as_its_plan_allows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = |interval: &str, split: &str| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: fp}}\nspec:\n  batchInterval: {interval}\n  sources: [{{name: g, generator: {{rate: 100}}}}]\n  pipeline: [{{flatMap: {{split: \"{split}\"}}}}]\n  sinks: [{{stdout: {{limit: 0}}}}]\n  checkpoint: {{uri: \"file://{}\"}}\n",
            dir.path().join("ckpt").display()
        )
    };
    let first = dir.path().join("a.yaml");
    std::fs::write(&first, manifest("100ms", " ")).expect("write");
    run_ok(
        sluice()
            .arg("run")
            .arg(&first)
            .args(["--batches", "2", "--no-wait"]),
    );
    // Another interval: the checkpoint's batch times cannot follow.
    let slower = dir.path().join("b.yaml");
    std::fs::write(&slower, manifest("200ms", " ")).expect("write");
    let (code, stderr) = run_unpaced(&slower, 4);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot be resumed by the new spec")
            && stderr.contains("spec.batchInterval"),
        "{stderr}"
    );
    // A stateless step changed: resumed.
    let split = dir.path().join("c.yaml");
    std::fs::write(&split, manifest("100ms", ",")).expect("write");
    let (code, stderr) = run_unpaced(&split, 4);
    assert_eq!(code, Some(0), "{stderr}");
}

fn disk_job(dir: &Path) -> PathBuf {
    let job = dir.join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: disk}}\nspec:\n  batchInterval: 100ms\n  sources: [{{name: g, generator: {{rate: 1000}}}}]\n  pipeline: [{{flatMap: {{split: \" \"}}}}, {{countByValue: {{}}}}, {{updateStateByKey: {{op: sum}}}}]\n  sinks: [{{files: {{path: \"{}\"}}}}]\n  checkpoint: {{uri: \"file://{}\", interval: 2}}\n",
            dir.join("out").display(),
            dir.join("ckpt").display()
        ),
    )
    .expect("write");
    job
}

fn batch_files(out: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("out")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect()
}

#[test]
fn unwritable_output_fails_batches_visibly_then_recovers_exactly_once() {
    let reference = tempfile::tempdir().expect("tempdir");
    let ok = sluice()
        .arg("run")
        .arg(disk_job(reference.path()))
        .args(["--batches", "6", "--no-wait"])
        .output()
        .expect("run");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let job = disk_job(dir.path());
    let out = dir.path().join("out");
    // A file where the output directory should be: every write fails until it is removed.
    std::fs::write(&out, "in the way").expect("write");
    let child = sluice()
        .env("SLUICE_LOG", "info")
        .arg("run")
        .arg(&job)
        .args(["--batches", "6", "--no-wait"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::fs::remove_file(&out).expect("clear the way");
    let result = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(
        stderr.contains("batch failed; it will be recomputed from the last checkpoint"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("create directory {}", out.display())),
        "the error names what failed: {stderr}"
    );
    // Running totals equal the undisturbed run's: no batch was lost or applied twice.
    assert_eq!(
        batch_files(&out),
        batch_files(&reference.path().join("out"))
    );
}

fn bad_records_job(dir: &Path, policy: &str) -> PathBuf {
    let job = dir.join(format!("{policy}.yaml"));
    // Text lines are not JSON: every record is refused by parseJson.
    std::fs::write(
        &job,
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: bad-records}}\nspec:\n  batchInterval: 100ms\n  onRecordError: {policy}\n  sources: [{{name: g, generator: {{rate: 100}}}}]\n  pipeline: [{{parseJson: {{}}}}]\n  sinks: [{{stdout: {{limit: 1}}}}]\n"
        ),
    )
    .expect("write");
    job
}

#[test]
fn refused_records_are_counted_and_skipped_or_fail_the_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = sluice()
        .env("SLUICE_LOG", "info")
        .arg("run")
        .arg(bad_records_job(dir.path(), "skip"))
        .args(["--batches", "2", "--no-wait"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("10 records, 10 errors"), "{stderr}");
    assert!(
        stderr.contains("record refused: spec.pipeline[0].parseJson: not JSON"),
        "{stderr}"
    );

    let out = sluice()
        .arg("run")
        .arg(bad_records_job(dir.path(), "fail"))
        .args(["--batches", "2", "--no-wait"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("job failed: spec.pipeline[0].parseJson: not JSON"),
        "{stderr}"
    );
}

/// `sluice run JOB --batches N --no-wait`: its exit code and stderr.
fn run_unpaced(job: &Path, batches: u32) -> (Option<i32>, String) {
    let out = sluice()
        .arg("run")
        .arg(job)
        .args(["--batches", &batches.to_string(), "--no-wait"])
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until a running job has committed `n` batches to `dir/ckpt`.
fn wait_for_commits(dir: &Path, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while support::commits(dir).len() < n {
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn sigterm_finishes_the_batch_checkpoints_and_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = disk_job(dir.path());
    let child = sluice()
        .env("SLUICE_LOG", "info")
        .arg("run")
        .arg(&job)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait for a few batches, then ask it to stop the way Kubernetes does.
    wait_for_commits(dir.path(), 3);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    // The final snapshot covers the last completed batch: a restart replays nothing.
    let last_commit = support::commits(dir.path()).last().expect("a commit").batch;
    let last_state = std::fs::read_dir(dir.path().join("ckpt/state"))
        .expect("state")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max()
        .expect("a snapshot");
    assert_eq!(format!("{last_commit:020}"), last_state);
    let again = sluice()
        .env("SLUICE_LOG", "info")
        .arg("run")
        .arg(&job)
        .args(["--batches", "1", "--no-wait"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("replay=0"), "{stderr}");
}

#[test]
fn a_second_run_on_a_checkpoint_in_use_is_refused_until_the_first_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = disk_job(dir.path());
    let mut first = sluice()
        .arg("run")
        .arg(&job)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for_commits(dir.path(), 1);
    let (code, stderr) = run_unpaced(&job, 1);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("in use by another running sluice process"),
        "{stderr}"
    );
    // SIGKILL: no clean-up code runs, the operating system releases the lock.
    first.kill().expect("kill");
    first.wait().expect("wait");
    run_ok(
        sluice()
            .arg("run")
            .arg(&job)
            .args(["--batches", "1", "--no-wait"]),
    );
}

#[test]
fn errors_describe_files_and_records_without_quoting_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "eyJhbGciOiJSUzI1NiIsImtpZCI6IlNFQ1JFVCJ9";
    let table = dir.path().join("token");
    std::fs::write(&table, format!("{secret}\n")).expect("write");
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: leak}}\nspec:\n  batchInterval: 100ms\n  sources: [{{name: g, generator: {{rate: 10}}}}]\n  pipeline:\n    - keyBy: {{key: {{expr: record}}}}\n    - joinStatic: {{uri: 'file://{}', mode: join}}\n  sinks: [{{stdout: {{}}}}]\n",
            table.display()
        ),
    )
    .expect("write");
    let out = sluice().arg("validate").arg(&job).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 1: 40 bytes with no comma"),
        "{stderr}"
    );
    assert!(!stderr.contains(secret), "the file leaked: {stderr}");

    // A record refused by a failing job: its message (which becomes a pod's termination message
    // on Kubernetes) gives the record's shape, not its text.
    let records = dir.path().join("in");
    std::fs::create_dir(&records).expect("mkdir");
    std::fs::write(records.join("1.txt"), format!("{secret}\n")).expect("write");
    let job = files_job(dir.path(), &records, "fail", "parseJson: {}");
    let out = run_two_batches(&job);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("a text of 40 bytes"), "{stderr}");
    assert!(!stderr.contains(secret), "the record leaked: {stderr}");
}

/// A job reading the files of `records` through one pipeline `step`, printing to stdout.
fn files_job(dir: &Path, records: &Path, policy: &str, step: &str) -> PathBuf {
    let job = dir.join(format!("files-{policy}.yaml"));
    std::fs::write(
        &job,
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: files-{policy}}}\nspec:\n  batchInterval: 100ms\n  onRecordError: {policy}\n  sources: [{{name: f, files: {{path: '{}'}}}}]\n  pipeline: [{{{step}}}]\n  sinks: [{{stdout: {{}}}}]\n",
            records.display()
        ),
    )
    .expect("write");
    job
}

/// `sluice run JOB --batches 2 --no-wait` with progress logs.
fn run_two_batches(job: &Path) -> std::process::Output {
    sluice()
        .env("SLUICE_LOG", "info")
        .arg("run")
        .arg(job)
        .args(["--batches", "2", "--no-wait"])
        .output()
        .expect("run")
}

#[test]
fn a_files_job_with_a_binary_file_runs_its_good_files_and_counts_the_bad_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = dir.path().join("in");
    std::fs::create_dir(&records).expect("mkdir");
    std::fs::write(records.join("1.txt"), "a b\n").expect("write");
    std::fs::write(records.join("2.bin"), [0xffu8, 0xfe, b'\n', b'c', b'\n']).expect("write");
    for (policy, code) in [("skip", 0), ("fail", 2)] {
        let job = files_job(dir.path(), &records, policy, "flatMap: {split: ' '}");
        let out = run_two_batches(&job);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{policy}: {stderr}");
        assert!(
            stderr.contains("source f: file 2.bin line 1: not UTF-8"),
            "{policy}: {stderr}"
        );
        if policy == "skip" {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stderr.contains("2 records, 1 errors"), "{stderr}");
            for word in ["a", "b", "c"] {
                assert!(stdout.lines().any(|l| l == word), "{word} in {stdout}");
            }
        }
    }
}

#[test]
fn a_damaged_checkpoint_stops_the_job_with_advice_instead_of_retrying_for_ever() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = disk_job(dir.path());
    // Snapshots every 2 batches, 3 kept: the log before batch 6 is pruned.
    let (code, stderr) = run_unpaced(&job, 10);
    assert_eq!(code, Some(0), "{stderr}");
    // Every snapshot's state fails its checksum, and the log before them is pruned: nothing
    // intact is left to resume from.
    let mut damaged = 0;
    let mut stack = vec![dir.path().join("ckpt/state")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)
            .expect("state")
            .map(|e| e.expect("entry"))
        {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "bin") {
                std::fs::write(&path, b"garbage").expect("damage");
                damaged += 1;
            }
        }
    }
    assert!(damaged > 0);
    let mut child = sluice()
        .arg("run")
        .arg(&job)
        .args(["--batches", "12", "--no-wait"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run retried a damaged checkpoint for 30 s instead of stopping");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is damaged and cannot be resumed"),
        "{stderr}"
    );
    assert!(stderr.contains("spec.checkpoint.uri"), "{stderr}");
}

#[test]
fn a_checkpoint_that_lost_its_job_json_is_refused_not_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = disk_job(dir.path());
    let (code, stderr) = run_unpaced(&job, 3);
    assert_eq!(code, Some(0), "{stderr}");
    std::fs::remove_file(dir.path().join("ckpt/job.json")).expect("remove");
    let (code, stderr) = run_unpaced(&job, 5);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("has no job.json but holds"), "{stderr}");
}

#[test]
fn sluice_run_serves_metrics_that_agree_with_the_commit_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: seen, namespace: team}}\nspec:\n  batchInterval: 100ms\n  sources: [{{name: g, generator: {{rate: 2000}}}}]\n  pipeline: [{{flatMap: {{split: \" \"}}}}, {{countByValue: {{}}}}, {{updateStateByKey: {{op: sum}}}}]\n  sinks: [{{stdout: {{limit: 0}}}}]\n  checkpoint: {{uri: \"file://{}\", interval: 3}}\n",
            dir.path().join("ckpt").display()
        ),
    )
    .expect("manifest");
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let ui = format!("127.0.0.1:{}", support::free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(&manifest)
        .args(["--metrics-addr", &addr, "--ui", &ui])
        .env("SLUICE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sluice run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Ten batches committed, and told: the loop reports a batch once the checkpoint writer has
    // written its commit entry, at its next step.
    let told = || {
        support::http_get(&ui, "/api/timeline")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|t| t["batches"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    while support::last_commit(dir.path()) < 10 || told() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "no 10 batches in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (status, text) = support::http_get(&addr, "/metrics").expect("scrape");
    let (health, _) = support::http_get(&addr, "/healthz").expect("healthz");
    let (missing, _) = support::http_get(&addr, "/nothing").expect("404");
    // The page and its data, on --ui as on the metrics address.
    let (page_status, page) = support::http_get(&ui, "/").expect("the page");
    let (_, uplot) = support::http_get(&ui, "/uplot.js").expect("uPlot");
    let (_, timeline) = support::http_get(&ui, "/api/timeline").expect("the timeline");
    let (_, job) = support::http_get(&addr, "/api/job").expect("the job");
    let _ = child.kill();
    assert!(
        page_status.contains("200") && page.contains("uplot.js"),
        "{page}"
    );
    assert!(uplot.contains("uPlot"), "uPlot is served");
    let timeline: serde_json::Value = serde_json::from_str(&timeline).expect("timeline JSON");
    assert_eq!(timeline["interval_ms"], 100, "{timeline}");
    let rows = timeline["batches"].as_array().expect("batches");
    assert!(rows.len() >= 10, "{timeline}");
    assert!(
        rows.iter()
            .all(|r| r["records"] == 200 && r["stages"][0][0] == "input"),
        "{timeline}"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&job).expect("job JSON"),
        serde_json::json!({"name": "seen", "namespace": "team"})
    );
    let _ = child.wait();
    assert!(status.contains("200"), "{status}");
    assert!(
        health.contains("200") && missing.contains("404"),
        "{health} {missing}"
    );
    assert!(
        text.contains(r#"sluice_batches_completed_total{job_name="seen",job_namespace="team"}"#),
        "{text}"
    );
    // The scrape sees whole batches: counters agree with the newest batch it names, and with
    // what the commit log says of those batches.
    let last = support::whole_batches(&text);
    assert!(last >= 10, "{text}");
    let log = support::commits(dir.path());
    let batches: Vec<u64> = log.iter().map(|c| c.batch).take(last as usize).collect();
    assert_eq!(
        batches,
        (1..=last).collect::<Vec<u64>>(),
        "every batch committed"
    );
    let committed: u64 = log.iter().take(last as usize).map(|c| c.records).sum();
    let input = support::series(&text, "sluice_input_records_total") as u64;
    assert_eq!(
        input, committed,
        "records in the metrics and the commit log"
    );
    // 2000 lines a second in 100 ms batches: 200 generated per batch.
    assert_eq!(input, 200 * last, "records in = records generated");
    assert!(
        support::series(&text, "sluice_last_checkpoint_batch") >= 3.0,
        "{text}"
    );
    assert!(
        support::series(&text, "sluice_checkpoint_duration_seconds_count") >= 1.0,
        "{text}"
    );
    assert_eq!(support::series(&text, "sluice_recoveries_total"), 0.0);
    // What the tasks moved, updated as a batch ends, before its commit: at most one batch
    // ahead of the loop's figures.
    let texts = [text.clone()];
    let read = support::series_sum(&texts, "sluice_source_records_total", r#"source="g""#)
        .expect("records of source g") as u64;
    assert!(
        read == input || read == input + 200,
        "{read} read, {input} committed"
    );
    let written = support::series_sum(&texts, "sluice_sink_records_total", r#"sink="0:stdout""#)
        .expect("records of the stdout sink");
    assert!(written > 0.0, "{text}");
    let keys = support::series_sum(&texts, "sluice_state_entries", "updateStateByKey")
        .expect("entries of the running count");
    assert!(keys > 0.0, "{text}");
    assert!(
        support::series_sum(&texts, "sluice_state_bytes", "updateStateByKey")
            .is_some_and(|b| b > 0.0),
        "{text}"
    );
    assert!(support::series(&text, "sluice_partitions_owned") >= 1.0);
    // A generator knows no bytes; a local run shuffles nothing over the network.
    assert_eq!(
        support::series_sum(&texts, "sluice_source_bytes_total", ""),
        None
    );
    assert_eq!(
        support::series(&text, "sluice_shuffle_sent_bytes_total"),
        0.0
    );
    assert_eq!(support::series_sum(&texts, "sluice_workers", ""), None);
    assert!(support::series(&text, "sluice_batch_processing_seconds_count") >= last as f64);
}

#[test]
fn json_logs_are_one_object_per_line_and_a_bad_format_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = disk_job(dir.path());
    let out = sluice()
        .arg("run")
        .arg(&job)
        .args(["--batches", "3", "--no-wait", "--log-format", "json"])
        .env("SLUICE_LOG", "info")
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut batches = 0;
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}"));
        let message = v["fields"]["message"].as_str().expect("a message");
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        batches += usize::from(message.starts_with("batch "));
    }
    assert_eq!(batches, 3, "{stderr}");
    let out = sluice()
        .arg("run")
        .arg(&job)
        .args(["--log-format", "yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--log-format") && stderr.contains("text or json"),
        "{stderr}"
    );
}

#[test]
fn a_files_source_counts_the_bytes_and_lines_it_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir(&input).expect("input dir");
    // Two lines of 3 and 2 bytes, each with its end: 7 bytes.
    std::fs::write(input.join("a.txt"), "a b\ncd\n").expect("input");
    let manifest = dir.path().join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: bytes}}\nspec:\n  batchInterval: 100ms\n  sources: [{{name: f, files: {{path: \"{}\"}}}}]\n  sinks: [{{stdout: {{limit: 0}}}}]\n  checkpoint: {{uri: \"file://{}\"}}\n",
            input.display(),
            dir.path().join("ckpt").display()
        ),
    )
    .expect("manifest");
    let addr = format!("127.0.0.1:{}", support::free_port());
    let mut child = sluice()
        .arg("run")
        .arg(&manifest)
        .args(["--metrics-addr", &addr])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sluice run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let text = loop {
        let text = support::http_get(&addr, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        let texts = [text.clone()];
        if support::series_sum(&texts, "sluice_source_records_total", r#"source="f""#) == Some(2.0)
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the file's lines never counted:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        support::series_sum(
            std::slice::from_ref(&text),
            "sluice_source_bytes_total",
            r#"source="f""#
        ),
        Some(7.0),
        "{text}"
    );
}
