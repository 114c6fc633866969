//! Checkpoints on a real S3-compatible server (s3s-fs): the store's operations, exactly-once
//! across SIGKILL, an outage of the server in the middle of a run, and clear errors.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice::checkpoint::{CheckpointStore, LocalStore, S3Settings, S3Store};
use support::{S3Server, SECRET_KEY, run_ok, with_credentials};

fn store(server: &S3Server, prefix: &str) -> S3Store {
    let settings = S3Settings {
        endpoint: Some(server.endpoint()),
        region: Some("us-east-1".into()),
        path_style: true,
        credentials: Some((support::ACCESS_KEY.into(), SECRET_KEY.into())),
    };
    S3Store::open(&format!("s3://ckpt/{prefix}"), &settings).expect("open the S3 store")
}

fn conformance(s: &dyn CheckpointStore) {
    assert_eq!(s.get("job.json").expect("get"), None);
    s.put("job.json", b"{}").expect("put");
    assert_eq!(s.get("job.json").expect("get").as_deref(), Some(&b"{}"[..]));
    s.put("state/0002/a/0.bin", b"x").expect("put");
    s.put("state/0002/MANIFEST.json", b"m").expect("put");
    s.put("state/0001/a/0.bin", b"y").expect("put");
    s.put("offsets/0001.json", b"o").expect("put");
    assert_eq!(s.list("state").expect("list"), vec!["0001", "0002"]);
    assert_eq!(
        s.list("state/0002").expect("list"),
        vec!["MANIFEST.json", "a"]
    );
    assert_eq!(s.list("nothing").expect("list"), Vec::<String>::new());
    s.delete("state/0001").expect("delete");
    assert_eq!(s.list("state").expect("list"), vec!["0002"]);
    s.delete("offsets/0001.json").expect("delete");
    assert_eq!(s.get("offsets/0001.json").expect("get"), None);
    s.delete("missing/thing").expect("deleting nothing is fine");
    s.put("statelog/1-1.bin", b"a").expect("put");
    s.put("statelog/2-1.bin", b"b").expect("put");
    s.put("statelog/3-1.bin", b"c").expect("put");
    s.delete_objects(&["statelog/1-1.bin".into(), "statelog/2-1.bin".into()])
        .expect("delete objects");
    assert_eq!(s.list("statelog").expect("list"), vec!["3-1.bin"]);
    s.delete_objects(&[]).expect("deleting no objects is fine");
    // A conditional write goes in once: the second writer of a key learns it is taken.
    assert!(s.put_new("epochs/1.json", b"a").expect("put_new"));
    assert!(!s.put_new("epochs/1.json", b"b").expect("put_new"));
    assert_eq!(
        s.get("epochs/1.json").expect("get").as_deref(),
        Some(&b"a"[..])
    );
    // Several objects at once, across directories, each whole; a bad key among them fails.
    let big = vec![7u8; 3 << 20];
    s.put_many(&[
        ("state/0003/a/0.bin", &big),
        ("state/0003/a/1.bin", b"p1"),
        ("state/0003/b/0.bin", b""),
    ])
    .expect("put_many");
    assert_eq!(s.list("state/0003").expect("list"), vec!["a", "b"]);
    assert_eq!(
        s.list("state/0003/a").expect("list"),
        vec!["0.bin", "1.bin"]
    );
    assert_eq!(s.get("state/0003/a/0.bin").expect("get"), Some(big));
    assert_eq!(
        s.get("state/0003/a/1.bin").expect("get").as_deref(),
        Some(&b"p1"[..])
    );
    assert_eq!(
        s.get("state/0003/b/0.bin").expect("get").as_deref(),
        Some(&b""[..])
    );
    assert!(s.put_many(&[("../outside", b"x")]).is_err());
    s.delete("").expect("delete everything");
    assert_eq!(s.list("state").expect("list"), Vec::<String>::new());
    assert_eq!(s.get("job.json").expect("get"), None);
}

fn job(dir: &Path, server: &S3Server, prefix: &str, batches_rate: u64) -> PathBuf {
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: s3job}}\nspec:\n  batchInterval: 100ms\n  parallelism: 3\n  sources: [{{name: g, generator: {{rate: {batches_rate}, seed: 5, vocabulary: 200}}}}]\n  pipeline:\n    - flatMap: {{split: \" \"}}\n    - countByValue: {{}}\n    - updateStateByKey: {{op: sum}}\n  sinks: [{{files: {{path: \"{out}\"}}}}]\n  checkpoint: {{uri: \"s3://ckpt/{prefix}\", endpoint: \"{endpoint}\", pathStyle: true, interval: 4, retain: 2}}\n",
        out = dir.join("out").display(),
        endpoint = server.endpoint(),
    );
    let path = dir.join("job.yaml");
    std::fs::write(&path, text).expect("write");
    path
}

fn sluice(job: &Path, batches: u64) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.arg("run")
        .arg(job)
        .args(["--batches", &batches.to_string(), "--no-wait"])
        .env("SLUICE_LOG", "info");
    with_credentials(&mut c);
    c
}

fn outputs(dir: &Path) -> Vec<String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join("out"))
        .expect("out")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect()
}

/// Equal batch files, or a short account of the first difference.
fn assert_same_batches(got: &[String], want: &[String]) {
    assert_eq!(got.len(), want.len(), "number of batch files");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            let diff: Vec<String> = g
                .lines()
                .zip(w.lines())
                .filter(|(a, b)| a != b)
                .take(3)
                .map(|(a, b)| format!("got {a} want {b}"))
                .collect();
            panic!("batch {} differs from the reference: {diff:?}", i + 1);
        }
    }
}

#[test]
fn s3_store_behaves_like_the_local_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    conformance(&LocalStore::open(tmp.path().join("local")).expect("local store"));
    conformance(&store(&server, "conformance"));
    conformance(&store(&server, ""));
}

#[test]
fn exactly_once_across_sigkill_with_s3_checkpoints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let reference = tmp.path().join("reference");
    std::fs::create_dir_all(&reference).expect("dir");
    run_ok(sluice(&job(&reference, &server, "reference", 20000), 30).stderr(Stdio::piped()));
    let expected = outputs(&reference);
    assert_eq!(expected.len(), 30);

    let crashed = tmp.path().join("crashed");
    std::fs::create_dir_all(&crashed).expect("dir");
    let manifest = job(&crashed, &server, "crashed", 20000);
    for delay in [400, 250, 300] {
        let mut child = sluice(&manifest, 30)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = sluice(&manifest, 30)
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming from checkpoint"), "{stderr}");
    assert_same_batches(&outputs(&crashed), &expected);
}

/// A master frozen mid-run (SIGSTOP: a node that stopped answering) is replaced by another
/// that takes the checkpoint over and finishes the job; thawed, the first finds its next log
/// write taken by the newer epoch and stops without committing, and the output stays exactly
/// once.
#[test]
fn a_replaced_master_thawed_cannot_commit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let reference = tmp.path().join("reference");
    std::fs::create_dir_all(&reference).expect("dir");
    run_ok(sluice(&job(&reference, &server, "reference", 5000), 40).stderr(Stdio::piped()));
    let expected = outputs(&reference);

    let dir = tmp.path().join("fenced");
    std::fs::create_dir_all(&dir).expect("dir");
    let manifest = job(&dir, &server, "fenced", 5000);
    let commits = server.root.join("ckpt/fenced/commits");
    let committed = || std::fs::read_dir(&commits).map_or(0, |d| d.count());
    // Paced (one batch per 100 ms), so that it is mid-run when frozen.
    let log = std::fs::File::create(dir.join("first.log")).expect("log");
    let mut first = Command::new(env!("CARGO_BIN_EXE_sluice"));
    first
        .arg("run")
        .arg(&manifest)
        .args(["--batches", "40"])
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    with_credentials(&mut first);
    let mut first = first.spawn().expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while committed() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first master committed nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(first.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("freeze");
    let frozen_at = committed();
    // Its successor takes the checkpoint over and runs the job to its end.
    let out = sluice(&manifest, 40)
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("claimed the checkpoint") && stderr.contains("epoch=2"),
        "{stderr}"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("thaw");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = first.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the thawed master runs on"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let first_log = std::fs::read_to_string(dir.join("first.log")).expect("log");
    assert!(
        !status.success(),
        "the replaced master ended as if nothing happened:\n{first_log}"
    );
    assert!(
        first_log.contains("another master took the checkpoint over"),
        "{first_log}"
    );
    // Every commit after the freeze is the successor's.
    for entry in std::fs::read_dir(&commits).expect("commits") {
        let path = entry.expect("entry").path();
        let batch: usize = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .expect("a batch number");
        let commit: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        if batch > frozen_at + 1 {
            assert_eq!(
                commit["epoch"], 2,
                "batch {batch} committed by the replaced master"
            );
        }
    }
    assert_same_batches(&outputs(&dir), &expected);
}

#[test]
fn an_s3_outage_fails_batches_then_the_job_goes_on_without_loss() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let reference = tmp.path().join("reference");
    std::fs::create_dir_all(&reference).expect("dir");
    run_ok(sluice(&job(&reference, &server, "ref", 2000), 80).stderr(Stdio::piped()));

    let run = tmp.path().join("outage");
    std::fs::create_dir_all(&run).expect("dir");
    // Paced: 80 batches of 100 ms take about 8 s; the server is down for 10 s from the
    // middle, longer than the S3 client's own retries can hide.
    job(&run, &server, "outage", 2000);
    let mut cmd = {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
        c.arg("run")
            .arg(run.join("job.yaml"))
            .args(["--batches", "80"])
            .env("SLUICE_LOG", "info");
        with_credentials(&mut c);
        c
    };
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(1200));
    server.stop();
    // Longer than the S3 client's own retries (3 attempts with jittered back-off), so that
    // batches fail for certain: 6 s was sometimes ridden out on a loaded machine.
    std::thread::sleep(Duration::from_millis(10_000));
    server.resume();
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("batch failed; it will be recomputed from the last checkpoint"),
        "{stderr}"
    );
    assert!(
        stderr.contains("s3://ckpt/outage"),
        "errors name the bucket and key: {stderr}"
    );
    assert!(
        !stderr.contains(SECRET_KEY),
        "the secret never appears in logs"
    );
    assert_same_batches(&outputs(&run), &outputs(&reference));
}

/// The CI failure of 2026-11-30: a state file whose bytes and stored checksum disagreed was
/// read as a store outage and retried for ever. Damage at rest is now reported as damage, and
/// recovery falls back to the snapshot before.
#[test]
fn an_object_damaged_at_rest_is_damage_and_recovery_falls_back() {
    use sluice::checkpoint::{Checkpointer, Snapshot};
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let c = Checkpointer::new(Box::new(store(&server, "damaged")), 1, 5);
    for batch in [1u64, 2] {
        let mut s = Snapshot {
            batch,
            ..Default::default()
        };
        s.parts
            .insert(("000-state".into(), 0), vec![batch as u8; 64]);
        c.write_snapshot(&s).expect("snapshot");
    }
    // Flip the bytes of batch 2's state file on the server's disk: same length, so only the
    // checksum the server recorded at write time can tell.
    let dir = tmp
        .path()
        .join("s3/ckpt/damaged/state/00000000000000000002/000-state");
    let file = std::fs::read_dir(&dir)
        .expect("state dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "bin"))
        .expect("state file");
    std::fs::write(&file, vec![9u8; 64]).expect("damage");
    let key = format!(
        "state/00000000000000000002/000-state/{}",
        file.file_name().and_then(|n| n.to_str()).expect("name")
    );
    let raw = store(&server, "damaged");
    match raw.get(&key).map_err(sluice::Error::from) {
        Err(sluice::Error::Checkpoint(why)) => assert!(why.contains("is damaged"), "{why}"),
        other => panic!("a damaged object must read as damage, got {other:?}"),
    }
    let latest = c.latest_snapshot().expect("recovery does not stall");
    assert_eq!(latest.map(|s| s.batch), Some(1));
}

#[test]
fn a_missing_bucket_is_reported_with_endpoint_and_bucket() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(&tmp.path().join("s3"), "other");
    let manifest = job(tmp.path(), &server, "x", 100);
    let out = sluice(&manifest, 2)
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bucket ckpt at http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET_KEY), "{stderr}");
}

fn s3_sink_job(dir: &Path, server: &S3Server, name: &str) -> PathBuf {
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: s3sink}}\nspec:\n  batchInterval: 100ms\n  parallelism: 2\n  sources: [{{name: g, generator: {{rate: 20000, seed: 3, vocabulary: 100}}}}]\n  pipeline:\n    - flatMap: {{split: \" \"}}\n    - countByValue: {{}}\n    - updateStateByKey: {{op: sum}}\n  sinks: [{{s3: {{uri: \"s3://ckpt/{name}-out\", endpoint: \"{e}\", pathStyle: true, format: json}}}}]\n  checkpoint: {{uri: \"s3://ckpt/{name}-ckpt\", endpoint: \"{e}\", pathStyle: true, interval: 3}}\n",
        e = server.endpoint()
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("write");
    path
}

/// Every object under a prefix, by key.
fn objects(server: &S3Server, prefix: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let s = store(server, prefix);
    let mut all = std::collections::BTreeMap::new();
    for batch in s.list("").unwrap_or_default() {
        for part in s.list(&batch).expect("list") {
            let key = format!("{batch}/{part}");
            all.insert(key.clone(), s.get(&key).expect("get").expect("object"));
        }
    }
    all
}

#[test]
fn s3_sink_writes_each_batch_and_partition_once_across_sigkill() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    run_ok(sluice(&s3_sink_job(tmp.path(), &server, "ref"), 20).stderr(Stdio::piped()));
    let want = objects(&server, "ref-out");
    assert_eq!(
        want.len(),
        40,
        "20 batches x 2 partitions: {:?}",
        want.keys().take(3).collect::<Vec<_>>()
    );

    let job = s3_sink_job(tmp.path(), &server, "crash");
    let mut child = sluice(&job, 20)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    run_ok(sluice(&job, 20).stderr(Stdio::piped()));
    let got = objects(&server, "crash-out");
    let strip =
        |m: &std::collections::BTreeMap<String, Vec<u8>>| m.values().cloned().collect::<Vec<_>>();
    assert_eq!(got.len(), want.len());
    assert!(
        strip(&got) == strip(&want),
        "S3 objects differ from the uninterrupted run"
    );
}

/// A word count filtered by a data set on S3 (`joinStatic` `include`, `refresh: 300ms`, three
/// batches a period) while the test rewrites the data set every 130 ms, the job SIGKILLed
/// mid-run: every batch, first run or replay, must have met the copy pinned for its period, so
/// each batch equals the unfiltered count of the same batch (an uninterrupted run without the
/// step) filtered by the pinned copy.
#[test]
fn a_refreshed_data_set_is_pinned_per_period_across_sigkills() {
    const BATCHES: u64 = 30;
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let manifest = |dir: &Path, step: &str| {
        let text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: refreshed}}\nspec:\n  batchInterval: 100ms\n  parallelism: 3\n  sources: [{{name: g, generator: {{rate: 2000, seed: 5, vocabulary: 60}}}}]\n  pipeline:\n    - flatMap: {{split: \" \"}}\n    - countByValue: {{}}\n{step}  sinks: [{{files: {{path: \"{out}\"}}}}]\n  checkpoint: {{uri: \"s3://ckpt/{name}\", endpoint: \"{endpoint}\", pathStyle: true, interval: 4, retain: 2}}\n",
            out = dir.join("out").display(),
            endpoint = server.endpoint(),
            name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("job"),
        );
        let path = dir.join("job.yaml");
        std::fs::write(&path, text).expect("write");
        path
    };
    let unfiltered = tmp.path().join("unfiltered");
    std::fs::create_dir_all(&unfiltered).expect("dir");
    let started = std::time::Instant::now();
    run_ok(sluice(&manifest(&unfiltered, ""), BATCHES).stderr(Stdio::piped()));
    let run_ms = (started.elapsed().as_millis() as u64).max(50);
    let counts = outputs(&unfiltered);
    assert_eq!(counts.len(), BATCHES as usize);
    let mut words: Vec<String> = counts
        .iter()
        .flat_map(|b| b.lines())
        .filter_map(|l| Some(l.trim_matches(['(', ')']).split_once(',')?.0.to_string()))
        .collect();
    words.sort();
    words.dedup();
    assert!(words.len() > 20, "{} words", words.len());

    // The data set: a random half of the words, rewritten until the job is done.
    let set_file = tmp.path().join("s3/ckpt/sets/allowed.txt");
    std::fs::create_dir_all(set_file.parent().expect("dir")).expect("dir");
    let mut rng = support::Rng::from_env("refreshed");
    let seed = rng.seed();
    let write_set = move |rng: &mut support::Rng| {
        let chosen: Vec<&str> = words
            .iter()
            .filter(|_| rng.next().is_multiple_of(2))
            .map(String::as_str)
            .collect();
        let tmp = set_file.with_extension("tmp");
        std::fs::write(&tmp, chosen.join("\n")).expect("write set");
        std::fs::rename(&tmp, &set_file).expect("replace set");
    };
    write_set(&mut rng);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        let mut rng = support::Rng::from_env("refreshed-writer");
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                write_set(&mut rng);
                std::thread::sleep(Duration::from_millis(130));
            }
        })
    };

    let crashed = tmp.path().join("crashed");
    std::fs::create_dir_all(&crashed).expect("dir");
    let step = format!(
        "    - joinStatic: {{uri: s3://ckpt/sets/allowed.txt, endpoint: \"{}\", pathStyle: true, mode: include, refresh: 300ms}}\n",
        server.endpoint()
    );
    let job = manifest(&crashed, &step);
    // `run_with_kills` tells a kill mid-run by the commits in DIR/ckpt: the S3 checkpoint's.
    let view = tmp.path().join("crashed-checkpoint");
    std::fs::create_dir_all(&view).expect("dir");
    std::os::unix::fs::symlink(tmp.path().join("s3/ckpt/crashed"), view.join("ckpt"))
        .expect("symlink");
    let (kills, mid_run) = support::run_with_kills(
        "refreshed",
        &mut rng,
        || {
            let mut c = sluice(&job, BATCHES);
            c.stdout(Stdio::null()).stderr(Stdio::piped());
            c
        },
        &view,
        BATCHES,
        // From a quarter to three quarters into a whole run (the S3 client's start is a large
        // part of a short one).
        (
            4,
            Duration::from_millis(run_ms / 4),
            Duration::from_millis(run_ms / 2),
        ),
        Duration::from_secs(180),
    );
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().expect("writer");

    // Each period's pinned copy, from the checkpoint.
    let tables = tmp
        .path()
        .join("s3/ckpt/crashed/tables/spec.pipeline-2.joinStatic");
    let pinned = |period: u64| -> std::collections::HashSet<String> {
        let digest = std::fs::read_to_string(tables.join(format!("periods/{period:020}")))
            .unwrap_or_else(|e| panic!("period {period} is not pinned: {e}"));
        std::fs::read_to_string(tables.join("data").join(digest.trim()))
            .expect("pinned data")
            .lines()
            .map(String::from)
            .collect()
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(crashed.join("out"))
        .expect("out")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), BATCHES as usize, "one file per batch");
    let mut periods = std::collections::BTreeSet::new();
    let mut kept = 0;
    for (i, (file, unfiltered)) in files.iter().zip(&counts).enumerate() {
        let time: u64 = file
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("batch-"))
            .and_then(|t| t.parse().ok())
            .expect("batch-TIME.txt");
        let period = time / 300;
        periods.insert(period);
        let set = pinned(period);
        let want: Vec<&str> = unfiltered
            .lines()
            .filter(|l| {
                l.trim_matches(['(', ')'])
                    .split_once(',')
                    .is_some_and(|(w, _)| set.contains(w))
            })
            .collect();
        let got = std::fs::read_to_string(file).expect("batch");
        let got: Vec<&str> = got.lines().collect();
        kept += got.len();
        assert!(
            got == want,
            "batch {} (period {period}) did not meet its pinned data set after {kills} kills (seed {seed}): {} lines against {}",
            i + 1,
            got.len(),
            want.len()
        );
    }
    assert!(mid_run >= 1, "no kill landed mid-run ({kills} kills)");
    assert!(periods.len() >= 5, "only {} periods", periods.len());
    assert!(
        kept > 0,
        "every batch came out empty: the test would prove little"
    );
}
