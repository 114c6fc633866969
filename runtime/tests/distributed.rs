//! A distributed job for real: s3s-fs, one `sluice master` and three `sluice worker` processes
//! on loopback, killed and added for real. Every scenario compares the output, batch by batch,
//! with an independent local run of the same manifest.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use support::{S3Server, with_credentials};

const TOKEN: &str = "test-token-0123456789";
const BATCHES: u64 = 40;

fn port() -> u16 {
    support::free_port()
}

fn manifest(dir: &Path, out: &Path, checkpoint: &str) -> PathBuf {
    manifest_with(dir, out, checkpoint, 6)
}

/// The word count most tests run: a running total per word.
const WORD_COUNT: &str = "  sources: [{name: g, generator: {rate: 10000, seed: 9, vocabulary: 300}}]\n  pipeline:\n    - flatMap: {split: \" \"}\n    - countByValue: {}\n    - updateStateByKey: {op: sum}\n";

fn manifest_with(dir: &Path, out: &Path, checkpoint: &str, parallelism: usize) -> PathBuf {
    manifest_of(dir, WORD_COUNT, out, checkpoint, parallelism)
}

/// A job of `body` (its sources and pipeline) into the files sink at `out`.
fn manifest_of(
    dir: &Path,
    body: &str,
    out: &Path,
    checkpoint: &str,
    parallelism: usize,
) -> PathBuf {
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: dist}}\nspec:\n  batchInterval: 100ms\n  parallelism: {parallelism}\n{body}  sinks: [{{files: {{path: \"{}\"}}}}]\n  checkpoint: {checkpoint}\n",
        out.display()
    );
    let path = dir.join(format!("job-{}.yaml", port()));
    std::fs::write(&path, text).expect("write manifest");
    path
}

/// Lines of every batch, merged over partitions, keyed by batch time.
fn batches(out: &Path) -> BTreeMap<u64, Vec<String>> {
    let mut all: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(out).expect("output dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.starts_with('.') {
            continue;
        }
        let time: u64 = name
            .trim_start_matches("batch-")
            .split('.')
            .next()
            .and_then(|t| t.parse().ok())
            .expect("batch time");
        let text = std::fs::read_to_string(out.join(&name)).expect("read");
        all.entry(time)
            .or_default()
            .extend(text.lines().map(String::from));
    }
    for lines in all.values_mut() {
        lines.sort();
    }
    all
}

fn reference(dir: &Path) -> Vec<Vec<String>> {
    let out = dir.join("reference-out");
    let job = manifest(
        dir,
        &out,
        &format!(
            "{{uri: \"file://{}\"}}",
            dir.join("reference-ckpt").display()
        ),
    );
    run_local(&job);
    batches(&out).into_values().collect()
}

/// `sluice run` of BATCHES batches of `job`, back to back, to the end.
fn run_local(job: &Path) {
    let run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(job)
        .args(["--batches", &BATCHES.to_string(), "--no-wait"])
        .env("SLUICE_LOG", "warn")
        .output()
        .expect("reference run");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

struct Cluster {
    dir: PathBuf,
    job: PathBuf,
    out: PathBuf,
    master_port: u16,
    master: Option<Child>,
    workers: Vec<(String, Child)>,
    parallelism: usize,
    /// Where the master and each worker serve their metrics, when asked for.
    metrics: Option<Vec<String>>,
    /// Where they serve gRPC health, in the same order.
    health: Vec<String>,
    /// The master stops after this batch.
    batches: u64,
}

impl Cluster {
    fn new(dir: &Path, server: &S3Server, prefix: &str) -> Cluster {
        Self::with_parallelism(dir, server, prefix, 6)
    }

    fn with_parallelism(
        dir: &Path,
        server: &S3Server,
        prefix: &str,
        parallelism: usize,
    ) -> Cluster {
        let out = dir.join(format!("{prefix}-out"));
        let checkpoint = format!(
            "{{uri: \"s3://ckpt/{prefix}\", endpoint: \"{}\", pathStyle: true, interval: 5}}",
            server.endpoint()
        );
        let job = manifest_with(dir, &out, &checkpoint, parallelism);
        Self::for_manifest(dir, job, out, parallelism)
    }

    /// A cluster for the manifest `job`, whose files sink writes to `out`.
    fn for_manifest(dir: &Path, job: PathBuf, out: PathBuf, parallelism: usize) -> Cluster {
        Cluster {
            dir: dir.to_path_buf(),
            job,
            out,
            master_port: port(),
            master: None,
            workers: Vec::new(),
            parallelism,
            metrics: None,
            health: Vec::new(),
            batches: BATCHES,
        }
    }

    /// Runs a master and `workers` workers (`w0`, `w1`, ...) until batch `until`, and returns
    /// the output, which has a file for each batch.
    fn run_until(&mut self, until: u64, workers: usize) -> Vec<Vec<String>> {
        self.batches = until;
        self.start_master(workers);
        for w in 0..workers {
            self.start_worker(&format!("w{w}"));
        }
        let got = self.finish();
        assert_eq!(
            got.len() as u64,
            until,
            "batches after parallelism {}",
            self.parallelism
        );
        got
    }

    /// The master stops after batch `n` instead of [`BATCHES`].
    fn stopping_after(mut self, n: u64) -> Self {
        self.batches = n;
        self
    }

    /// Every process started from now on serves its metrics.
    fn serving_metrics(mut self) -> Self {
        self.metrics = Some(Vec::new());
        self
    }

    /// `--metrics-addr` and `--health-addr` on free ports, when metrics are asked for;
    /// the health address is the metrics port's neighbour in `health`.
    fn metrics_args(&mut self, c: &mut Command) -> Option<String> {
        let served = self.metrics.as_mut()?;
        let addr = format!("127.0.0.1:{}", port());
        let health = format!("127.0.0.1:{}", port());
        c.args(["--metrics-addr", &addr, "--health-addr", &health]);
        served.push(addr.clone());
        self.health.push(health);
        Some(addr)
    }

    fn worker_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{id}.log"))).unwrap_or_default()
    }

    fn command(&self, log: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
        with_credentials(&mut c)
            .env("SLUICE_TOKEN", TOKEN)
            .env("SLUICE_LOG", "info");
        let file = std::fs::File::create(self.dir.join(log)).expect("log");
        c.stdout(Stdio::null()).stderr(file);
        c
    }

    fn start_master(&mut self, min_workers: usize) {
        let c = self.command(&format!("master-{}.log", self.master_port));
        self.spawn_master(c, min_workers);
    }

    /// Starts the master with `c`, which runs the `sluice` binary (or a wrapper of it).
    fn spawn_master(&mut self, mut c: Command, min_workers: usize) {
        c.arg("master")
            .arg(&self.job)
            .args(["--listen", &format!("127.0.0.1:{}", self.master_port)]);
        c.args([
            "--min-workers",
            &min_workers.to_string(),
            "--batches",
            &self.batches.to_string(),
        ]);
        self.metrics_args(&mut c);
        self.master = Some(c.spawn().expect("start master"));
    }

    fn start_worker(&mut self, id: &str) {
        let mut c = self.command(&format!("{id}.log"));
        c.arg("worker")
            .arg(&self.job)
            .args(["--master", &format!("127.0.0.1:{}", self.master_port)]);
        c.args([
            "--listen",
            &format!("127.0.0.1:{}", port()),
            "--id",
            id,
            "--threads",
            "1",
        ]);
        self.metrics_args(&mut c);
        self.workers
            .push((id.to_string(), c.spawn().expect("start worker")));
    }

    fn kill_master(&mut self) {
        if let Some(mut m) = self.master.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }

    fn kill_worker(&mut self, id: &str) {
        if let Some(i) = self.workers.iter().position(|(w, _)| w == id) {
            let (_, mut child) = self.workers.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn stop_worker(&mut self, id: &str) {
        if let Some(i) = self.workers.iter().position(|(w, _)| w == id) {
            let (_, child) = self.workers.remove(i);
            signal(child.id(), Signal::SIGTERM);
            let out = child.wait_with_output().expect("worker exits");
            assert!(out.status.success(), "a worker asked to leave exits 0");
        }
    }

    fn commits(&self) -> usize {
        std::fs::read_dir(self.out.as_path())
            .map(|d| d.count())
            .unwrap_or(0)
            / self.parallelism
    }

    fn wait_commits(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.commits() < n {
            assert!(
                Instant::now() < deadline,
                "stuck below {n} batches; master log:\n{}",
                self.master_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn master_log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("master-{}.log", self.master_port)))
            .unwrap_or_default()
    }

    fn finish(&mut self) -> Vec<Vec<String>> {
        let mut master = self.master.take().expect("a master");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = master.try_wait().expect("wait") {
                assert!(status.success(), "master failed:\n{}", self.master_log());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the job did not finish:\n{}",
                self.master_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        batches(&self.out).into_values().collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_master();
        for (_, mut w) in self.workers.drain(..) {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Sends `sig` to the process `pid`.
fn signal(pid: u32, sig: Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid"));
    nix::sys::signal::kill(pid, sig).expect("signal the process");
}

fn assert_exactly_once(got: &[Vec<String>], want: &[Vec<String>], scenario: &str) {
    assert_eq!(got.len(), want.len(), "{scenario}: number of batches");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g == w,
            "{scenario}: batch {} differs from the local run ({} lines vs {})",
            i + 1,
            g.len(),
            w.len()
        );
    }
}

#[test]
fn distributed_job_survives_master_and_worker_loss_and_rescales() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let want = reference(tmp.path());
    assert_eq!(want.len() as u64, BATCHES);
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");

    // Kill the master: a new one resumes from S3 and the workers come back to it.
    let mut c = Cluster::new(tmp.path(), &server, "master-kill");
    c.start_master(3);
    for w in ["w1", "w2", "w3"] {
        c.start_worker(w);
    }
    c.wait_commits(10, Duration::from_secs(60));
    let before = c.commits();
    c.kill_master();
    let killed = Instant::now();
    c.start_master(3);
    c.wait_commits(before + 1, Duration::from_secs(60));
    eprintln!(
        "master kill -> next committed batch: {:?}",
        killed.elapsed()
    );
    assert_exactly_once(&c.finish(), &want, "master killed");
    drop(c);

    // Kill a worker: the others take its partitions; nothing is lost or doubled.
    let mut c = Cluster::new(tmp.path(), &server, "worker-kill");
    c.start_master(3);
    for w in ["w1", "w2", "w3"] {
        c.start_worker(w);
    }
    c.wait_commits(10, Duration::from_secs(60));
    let before = c.commits();
    c.kill_worker("w2");
    let killed = Instant::now();
    c.wait_commits(before + 1, Duration::from_secs(60));
    eprintln!(
        "worker kill -> next committed batch: {:?}",
        killed.elapsed()
    );
    assert_exactly_once(&c.finish(), &want, "worker killed");
    // The others fail to push to the dead one; that must not count them lost (a live worker
    // dropped keeps a placement and state the master no longer knows of).
    let log = c.master_log();
    for line in log.lines().filter(|l| l.contains("worker lost")) {
        assert!(
            line.contains("worker=w2"),
            "a live worker counted lost: {line}"
        );
    }
    drop(c);

    // Add a worker, then ask one to leave: live rescaling at batch boundaries.
    let mut c = Cluster::new(tmp.path(), &server, "rescale");
    c.start_master(2);
    c.start_worker("w1");
    c.start_worker("w2");
    c.wait_commits(8, Duration::from_secs(60));
    c.start_worker("w3");
    c.wait_commits(20, Duration::from_secs(60));
    c.stop_worker("w1");
    assert_exactly_once(&c.finish(), &want, "rescaled");
    assert!(c.master_log().contains("rescaled"), "{}", c.master_log());
}

/// An upgrade of parallelism on a cluster: stopped after batch 12 at 4 partitions, resumed at 8
/// until batch 26, then at 3 to the end, each time by a new master and new workers that read
/// the re-sharded state from S3 (every worker reads all of a snapshot's old partitions, and
/// keeps the keys that now hash to its own). The output is the uninterrupted run's.
#[test]
fn a_cluster_resumes_with_another_parallelism_and_its_state_resharded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let want = reference(tmp.path());
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    for (parallelism, until, workers) in [(4, 12, 2), (8, 26, 3), (3, BATCHES, 2)] {
        let mut c = Cluster::with_parallelism(tmp.path(), &server, "upgrade", parallelism);
        let got = c.run_until(until, workers);
        if parallelism != 4 {
            assert!(
                c.master_log().contains("re-sharded by key hash"),
                "{}",
                c.master_log()
            );
        }
        if until == BATCHES {
            assert_exactly_once(&got, &want, "parallelism 4 -> 8 -> 3");
        }
    }
}

/// Timers on workers: sparse words whose counts are emitted 300 ms after their last record,
/// then every 200 ms counting down; the cluster stops twice and resumes with other partition
/// counts (timers re-sharded with the keys) and must write what one local run writes.
#[test]
fn timers_fire_on_workers_as_in_one_process_across_a_reshard() {
    const TIMERS: &str = "  sources: [{name: g, generator: {rate: 2000, seed: 9, vocabulary: 20000}}]\n  pipeline:\n    - flatMap: {split: \" \"}\n    - countByValue: {}\n    - mapWithState:\n        expr: \"{'state': (state == null ? 0 : state) + value, 'timer': batch.time + 300}\"\n        onTimer: \"state > 3 ? {'state': state - 3, 'emit': state, 'timer': timer + 200} : {'emit': state}\"\n";
    let tmp = tempfile::tempdir().expect("tempdir");
    let local_out = tmp.path().join("reference-out");
    let checkpoint = format!(
        "{{uri: \"file://{}\"}}",
        tmp.path().join("reference-ckpt").display()
    );
    run_local(&manifest_of(tmp.path(), TIMERS, &local_out, &checkpoint, 4));
    let want: Vec<Vec<String>> = batches(&local_out).into_values().collect();
    let fired: usize = want.iter().map(Vec::len).sum();
    assert!(fired > 1000, "only {fired} timers fired");
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let out = tmp.path().join("timers-out");
    let checkpoint = format!(
        "{{uri: \"s3://ckpt/timers\", endpoint: \"{}\", pathStyle: true, interval: 5}}",
        server.endpoint()
    );
    for (parallelism, until, workers) in [(4, 12, 2), (6, 26, 3), (4, BATCHES, 2)] {
        let job = manifest_of(tmp.path(), TIMERS, &out, &checkpoint, parallelism);
        let got = Cluster::for_manifest(tmp.path(), job, out.clone(), parallelism)
            .run_until(until, workers);
        if until == BATCHES {
            assert_exactly_once(&got, &want, "timers, parallelism 4 -> 6 -> 4");
        }
    }
}

/// Scrapes `addr`'s metrics.
fn scrape(addr: &str) -> String {
    let (status, text) = support::http_get(addr, "/metrics").expect("scrape");
    assert!(status.contains("200"), "{status}");
    text
}

/// The master's and the workers' metrics add up to what the job did: the master's batch
/// figures to the generated input, the workers' records, sink records, state and partitions
/// to the output the job wrote.
#[test]
fn master_and_workers_serve_metrics_that_add_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let mut c = Cluster::new(tmp.path(), &server, "metrics").serving_metrics();
    c.start_master(2);
    c.start_worker("w1");
    c.start_worker("w2");
    let served = c.metrics.clone().expect("addresses");
    let (master, workers) = (&served[0], &served[1..]);
    c.wait_commits(10, Duration::from_secs(60));

    // gRPC health for the probes: the master serves, the workers are registered.
    let health = |i: usize, service: &str| {
        let url = format!("http://{}", c.health[i]);
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(sluice_e2e::agent::probe::check(&url, service))
    };
    assert!(health(0, "sluice.v1.Master") && health(0, ""));
    assert!(health(1, "sluice.v1.Worker") && health(2, "sluice.v1.Worker"));
    assert!(!health(1, "sluice.v1.Master"), "a worker is no master");
    // The master's batch loop, while it runs: whole batches of 1,000 generated lines. The
    // metrics count a batch once the loop sees its commit written, at its next step: they may
    // be a batch or two behind the store for a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(master);
        if support::whole_batches(&text) >= 10 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let labels = r#"{job_name="dist",job_namespace=""}"#;
    assert!(
        text.contains(&format!("sluice_workers{labels} 2")),
        "{text}"
    );
    let last = support::whole_batches(&text);
    assert!(last >= 10, "{text}");
    assert_eq!(
        support::series(&text, "sluice_input_records_total") as u64,
        1000 * last,
        "records in = records generated"
    );
    assert_eq!(
        support::series_sum(
            std::slice::from_ref(&text),
            "sluice_source_records_total",
            ""
        ),
        None,
        "the master runs no task"
    );

    // The workers, once the job has finished its batches (and they are idle).
    let out = c.finish();
    assert_eq!(out.len() as u64, BATCHES);
    let texts: Vec<String> = workers.iter().map(|w| scrape(w)).collect();
    let sum = |name: &str, label: &str| {
        support::series_sum(&texts, name, label).unwrap_or_else(|| panic!("no {name} {label}"))
    };
    assert_eq!(
        sum("sluice_source_records_total", r#"source="g""#) as u64,
        1000 * BATCHES,
        "each worker counts the lines of its partitions"
    );
    let lines: usize = out.iter().map(Vec::len).sum();
    assert_eq!(
        sum("sluice_sink_records_total", r#"sink="0:files""#) as usize,
        lines
    );
    // The running count holds every word seen, and writes them all in each batch.
    let keys = out.last().map(Vec::len).unwrap_or(0);
    assert_eq!(
        sum("sluice_state_entries", "updateStateByKey") as usize,
        keys
    );
    assert!(sum("sluice_state_bytes", "updateStateByKey") > 0.0);
    assert_eq!(sum("sluice_partitions_owned", "") as usize, 6);
    for (w, text) in texts.iter().enumerate() {
        assert!(
            support::series(text, "sluice_shuffle_sent_bytes_total") > 0.0,
            "worker {w} shuffled nothing:\n{text}"
        );
        assert!(!text.contains("sluice_batches_completed"), "{text}");
    }
    // The Grafana dashboard queries only series the job's processes export (the operator's
    // own are checked against the operator in e2e/tests/operator.rs).
    let mut all = texts.clone();
    all.push(text);
    let exported = sluice_e2e::dashboard::sample_names(&all);
    let missing: Vec<String> = sluice_e2e::dashboard::dashboard_series()
        .into_iter()
        .filter(|s| !s.starts_with("sluice_jobs") && !s.starts_with("sluice_reconcile"))
        .filter(|s| !exported.contains(s))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which no process exports"
    );
    // Without a fault, every block sent was received once.
    assert_eq!(
        sum("sluice_shuffle_sent_bytes_total", ""),
        sum("sluice_shuffle_received_bytes_total", "")
    );
}

/// The master's batch-timeline page in a real browser (Chromium over the DevTools protocol):
/// its charts plot the batches the master committed, a rescale shows as a placement marker,
/// the partitions table names the three workers. A screenshot is saved as
/// `$CARGO_TARGET_TMPDIR/batch-timeline.png`.
#[test]
fn the_batch_timeline_page_shows_the_committed_batches_and_a_rescale() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    // The commit log read below is pruned up to the oldest snapshot kept: with a snapshot
    // every 5 batches and 8 kept it holds at least 35 batches, more than the page can lag
    // behind (with the default 3 it held as few as 10, and a page a batch behind failed).
    let out = tmp.path().join("page-out");
    let checkpoint = format!(
        "{{uri: \"s3://ckpt/page\", endpoint: \"{}\", pathStyle: true, interval: 5, retain: 8}}",
        server.endpoint()
    );
    let job = manifest_with(tmp.path(), &out, &checkpoint, 6);
    let mut c = Cluster::for_manifest(tmp.path(), job, out, 6)
        .serving_metrics()
        .stopping_after(100_000);
    c.start_master(2);
    c.start_worker("w1");
    c.start_worker("w2");
    let master = c.metrics.as_ref().expect("addresses")[0].clone();
    c.wait_commits(5, Duration::from_secs(60));
    let mut browser = sluice_e2e::browser::Browser::start(1400, 1000).expect("chromium");
    browser
        .open(&format!("http://{master}/"))
        .expect("open the page");
    browser
        .wait_for(
            "+document.body.dataset.rendered > 0",
            Duration::from_secs(30),
        )
        .expect("the page renders");
    // A rescale: the third worker gets partitions at a batch boundary.
    c.start_worker("w3");
    browser
        .wait_for(
            "document.querySelectorAll('#events tr[data-kind=placement]').length >= 2 \
             && document.querySelectorAll('#owners tr[data-worker]').length == 3 \
             && +document.getElementById('rate').dataset.markers >= 2",
            Duration::from_secs(60),
        )
        .expect("the rescale on the page");
    c.wait_commits(30, Duration::from_secs(60));
    browser
        .wait_for(
            "+document.body.dataset.lastBatch >= 25",
            Duration::from_secs(30),
        )
        .expect("the page follows the batches");
    // What the charts plot, point by point: batch time and records per second.
    let plotted = browser
        .eval("JSON.stringify(charts.rate.data)")
        .expect("the chart's data");
    let plotted: Vec<Vec<f64>> =
        serde_json::from_str(plotted.as_str().expect("a string")).expect("two series");
    // Stop the job at once: its commit log is pruned as snapshots advance, and read below.
    c.kill_master();
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("batch-timeline.png");
    browser.screenshot(&shot).expect("screenshot");
    drop(browser);
    // The commit log (pruned up to the oldest snapshot kept): batch time -> records.
    let commits: BTreeMap<u64, f64> = std::fs::read_dir(tmp.path().join("s3/ckpt/page/commits"))
        .expect("the commit log")
        .flatten()
        .filter_map(|e| {
            let entry: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()?;
            Some((entry["timeMs"].as_u64()?, entry["records"].as_f64()?))
        })
        .collect();
    let oldest = *commits.keys().next().unwrap_or_else(|| {
        panic!(
            "no commit entry in {:?}",
            std::fs::read_dir(tmp.path().join("s3/ckpt/page/commits")).map(|d| d
                .flatten()
                .map(|e| e.path())
                .take(3)
                .collect::<Vec<_>>())
        )
    });
    let points: BTreeMap<u64, f64> = plotted[0]
        .iter()
        .zip(&plotted[1])
        .map(|(x, y)| ((x * 1000.0).round() as u64, *y))
        .collect();
    let newest_plotted = *points.keys().last().expect("points");
    let mut matched = 0;
    for (time, records) in commits.range(oldest..=newest_plotted) {
        // 100 ms batches: records per second is ten times the batch's records.
        assert_eq!(
            points.get(time),
            Some(&(records * 10.0)),
            "the committed batch at {time} ms on the chart"
        );
        matched += 1;
    }
    let unknown: Vec<&u64> = points
        .keys()
        .filter(|t| **t >= oldest && !commits.contains_key(t))
        .collect();
    assert!(
        unknown.is_empty(),
        "points of no committed batch: {unknown:?}"
    );
    assert!(
        matched >= 10,
        "only {matched} committed batches on the chart"
    );
    let png = std::fs::metadata(&shot).expect("the screenshot").len();
    assert!(png > 20_000, "a {png}-byte screenshot is blank");
    eprintln!("screenshot: {} ({png} bytes)", shot.display());
}

/// One of four workers of a 16-partition job is killed: only its partitions are rebuilt, on
/// the others, from the snapshot and the log. The survivors load no state (their partitions
/// are not rolled back), the moved partitions are exactly the lost worker's, and the output is
/// exactly once.
#[test]
fn a_lost_worker_is_rebuilt_alone_and_the_survivors_keep_their_state() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let want = reference(tmp.path());
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let mut c = Cluster::with_parallelism(tmp.path(), &server, "partial", 16);
    c.start_master(4);
    let workers = ["w1", "w2", "w3", "w4"];
    for w in workers {
        c.start_worker(w);
    }
    c.wait_commits(12, Duration::from_secs(60));
    let survivors = ["w1", "w2", "w4"];
    let full_restores =
        |c: &Cluster, w: &str| c.worker_log(w).matches("for the owned partitions").count();
    let before: Vec<usize> = survivors.iter().map(|w| full_restores(&c, w)).collect();
    let committed = c.commits();
    c.kill_worker("w3");
    c.wait_commits(committed + 1, Duration::from_secs(60));
    let got = c.finish();
    assert_exactly_once(&got, &want, "one of four workers killed");
    let log = c.master_log();
    assert!(
        log.contains("rebuilt the lost partitions on other workers"),
        "{log}"
    );
    assert!(
        !log.contains("restored state; replaying logged batches"),
        "every worker was rolled back: {log}"
    );
    // The batches after the snapshot come from the state log: only the last committed one
    // may be recomputed (the lost worker may have died before writing its log).
    let rebuilt = log
        .lines()
        .find(|l| l.contains("rebuilt the lost partitions"))
        .unwrap_or_default();
    let field = |name: &str| -> u64 {
        rebuilt
            .split(&format!("{name}="))
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in: {rebuilt}"))
    };
    let (from_log, replayed) = (field("from_log"), field("replayed"));
    eprintln!(
        "lost partitions rebuilt: {from_log} batches from the state log, {replayed} recomputed"
    );
    assert!(replayed <= 1, "recomputed {replayed} batches: {rebuilt}");
    if from_log + replayed > 1 {
        assert!(from_log >= 1, "the state log was not used: {rebuilt}");
    }
    let after: Vec<usize> = survivors.iter().map(|w| full_restores(&c, w)).collect();
    assert_eq!(before, after, "a survivor reloaded all its state");
    // The partitions moved to the survivors: the lost worker's four, each to one survivor.
    let mut moved: Vec<String> = Vec::new();
    for w in survivors {
        for line in c.worker_log(w).lines().filter(|l| l.contains("moved here")) {
            let list = line
                .split("partitions=[")
                .nth(1)
                .and_then(|rest| rest.split(']').next())
                .unwrap_or_default();
            moved.extend(
                list.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty()),
            );
        }
    }
    moved.sort();
    let distinct = {
        let mut d = moved.clone();
        d.dedup();
        d
    };
    assert_eq!(distinct.len(), 4, "moved partitions: {moved:?}");
}

/// A frozen worker (SIGSTOP: its connections stay open, nothing answers) used to hold the job
/// until a 60 s call timeout while the status said `running`. Heartbeats during every call
/// find it lost within seconds; the others take its partitions; thawed, it joins again; the
/// output is exactly once.
#[test]
fn a_frozen_worker_is_found_by_heartbeat_and_the_job_goes_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let want = reference(tmp.path());
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let mut c = Cluster::new(tmp.path(), &server, "frozen");
    c.start_master(3);
    for w in ["w1", "w2", "w3"] {
        c.start_worker(w);
    }
    c.wait_commits(10, Duration::from_secs(60));
    let frozen = c
        .workers
        .iter()
        .find(|(id, _)| id == "w2")
        .map(|(_, child)| child.id())
        .expect("w2 runs");
    signal(frozen, Signal::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.master_log().contains("no answer to a heartbeat") {
        assert!(Instant::now() < deadline, "{}", c.master_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Thawed, it still holds the placement and the state of before: it must be placed anew
    // before any of its state counts (a snapshot of the rescale once took its stale copy).
    signal(frozen, Signal::SIGCONT);
    let got = c.finish();
    let log = c.master_log();
    assert!(log.contains("worker lost"), "{log}");
    assert!(
        log.contains("rescaled"),
        "the thawed worker joined again: {log}"
    );
    assert_exactly_once(&got, &want, "worker frozen, then thawed");
}

/// A record refused under `onRecordError: fail` fails a distributed job as it fails
/// `sluice run` (exit 2, the record's error), instead of being retried for ever as a store
/// outage: the worker sends the error's domain with it, typed.
#[test]
fn a_user_error_on_a_worker_fails_the_job_with_its_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let mut c = Cluster::new(tmp.path(), &server, "user-error");
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: bad-records}}\nspec:\n  batchInterval: 100ms\n  parallelism: 4\n  onRecordError: fail\n  sources: [{{name: g, generator: {{rate: 1000}}}}]\n  pipeline: [{{parseJson: {{}}}}]\n  sinks: [{{files: {{path: \"{}\"}}}}]\n  checkpoint: {{uri: \"s3://ckpt/user-error\", endpoint: \"{}\", pathStyle: true}}\n",
        c.out.display(),
        server.endpoint()
    );
    std::fs::write(&c.job, text).expect("manifest");
    c.start_master(2);
    c.start_worker("w1");
    c.start_worker("w2");
    let mut master = c.master.take().expect("master");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = master.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the master retries a user error instead of failing the job:\n{}",
            c.master_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = c.master_log();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("the job failed"), "{log}");
    assert!(
        log.contains("parseJson"),
        "the record's error reaches the master: {log}"
    );
    assert!(!log.contains("checkpoint failing"), "{log}");
}

#[test]
fn a_worker_with_the_wrong_token_or_job_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let mut c = Cluster::new(tmp.path(), &server, "refuse");
    c.start_master(1);
    let mut bad = c.command("bad.log");
    bad.env("SLUICE_TOKEN", "a-different-token-0000");
    bad.arg("worker").arg(&c.job).args([
        "--master",
        &format!("127.0.0.1:{}", c.master_port),
        "--listen",
        &format!("127.0.0.1:{}", port()),
        "--id",
        "intruder",
    ]);
    // Owned by the cluster, so a failing assertion still kills it.
    c.workers
        .push(("intruder".into(), bad.spawn().expect("spawn")));
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = tmp.path().join("bad.log");
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("missing or wrong job token")
    {
        assert!(
            Instant::now() < deadline,
            "the intruder was not refused: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !c.master_log().contains("worker registered"),
        "{}",
        c.master_log()
    );
}

/// A CA and one certificate for the job (SAN `sluice`), made with openssl.
fn job_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:sluice\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("ext");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=job-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "job.key",
        "-out",
        "job.csr",
        "-subj",
        "/CN=sluice",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "job.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "job.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (dir.join("job.crt"), dir.join("job.key"), dir.join("ca.crt"))
}

#[test]
fn master_and_workers_talk_mutual_tls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let want = reference(tmp.path());
    let (cert, key, ca) = job_certificates(tmp.path());
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let mut c = Cluster::new(tmp.path(), &server, "tls");
    let tls = |cmd: &mut Command| {
        cmd.env("SLUICE_TLS_CERT", &cert)
            .env("SLUICE_TLS_KEY", &key)
            .env("SLUICE_TLS_CA", &ca);
    };
    let mut master = c.command("master-tls.log");
    tls(&mut master);
    master.arg("master").arg(&c.job).args([
        "--listen",
        &format!("127.0.0.1:{}", c.master_port),
        "--batches",
        &BATCHES.to_string(),
    ]);
    c.master = Some(master.spawn().expect("master"));
    for id in ["t1", "t2"] {
        let mut w = c.command(&format!("{id}.log"));
        tls(&mut w);
        w.arg("worker").arg(&c.job).args([
            "--master",
            &format!("127.0.0.1:{}", c.master_port),
            "--listen",
            &format!("127.0.0.1:{}", port()),
            "--id",
            id,
        ]);
        c.workers.push((id.to_string(), w.spawn().expect("worker")));
    }
    // A worker without TLS cannot even register.
    let mut plain = c.command("plain.log");
    plain.arg("worker").arg(&c.job).args([
        "--master",
        &format!("127.0.0.1:{}", c.master_port),
        "--listen",
        &format!("127.0.0.1:{}", port()),
        "--id",
        "plain",
    ]);
    c.workers
        .push(("plain".into(), plain.spawn().expect("worker")));
    let got = {
        let deadline = Instant::now() + Duration::from_secs(90);
        let master = c.master.as_mut().expect("master");
        loop {
            if let Some(status) = master.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "{}",
                    std::fs::read_to_string(tmp.path().join("master-tls.log")).unwrap_or_default()
                );
                break;
            }
            assert!(Instant::now() < deadline, "TLS job did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
        batches(&c.out).into_values().collect::<Vec<_>>()
    };
    assert_exactly_once(&got, &want, "mutual TLS");
    // The commit log counts the records the workers read, as a local run of the same input.
    let records = |dir: &Path| -> BTreeMap<u64, u64> {
        let store = sluice::checkpoint::LocalStore::open(dir).expect("store");
        sluice::checkpoint::Checkpointer::new(Box::new(store), 1, 1)
            .commits_after(0)
            .expect("the commit log")
            .into_iter()
            .map(|c| (c.batch, c.records))
            .collect()
    };
    // The reference ran alone (`sluice run`: segments), the cluster on S3 (a file each).
    let local = records(&tmp.path().join("reference-ckpt"));
    let distributed = records(&tmp.path().join("s3/ckpt/tls"));
    assert!(
        distributed.values().any(|r| *r > 0),
        "records counted: {distributed:?}"
    );
    let mut compared = 0;
    for (batch, n) in &distributed {
        if let Some(want) = local.get(batch) {
            assert_eq!(n, want, "records of batch {batch}");
            compared += 1;
        }
    }
    assert!(
        compared > 0,
        "no batch in both logs: {local:?} {distributed:?}"
    );
    let master_log = std::fs::read_to_string(tmp.path().join("master-tls.log")).unwrap_or_default();
    assert!(
        !master_log.contains("worker=plain"),
        "a plaintext worker must not join: {master_log}"
    );
}

#[test]
fn an_s3_outage_in_a_distributed_job_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let want = reference(tmp.path());
    let mut server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let mut c = Cluster::new(tmp.path(), &server, "outage");
    c.start_master(2);
    c.start_worker("w1");
    c.start_worker("w2");
    c.wait_commits(8, Duration::from_secs(60));
    server.stop();
    std::thread::sleep(Duration::from_secs(5));
    server.resume();
    let got = c.finish();
    let log = c.master_log();
    assert!(
        log.contains("checkpoint") && log.contains("retrying"),
        "the outage must show: {log}"
    );
    assert_exactly_once(&got, &want, "S3 outage");
}

/// Opens `count` connections to `port` from 127.0.0.2 (another address than the workers') and
/// keeps reopening those the server closes, sending nothing, until killed.
fn flood(port: u16, count: usize) -> Child {
    let script = r#"
import socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
held, opened = [], 0
while True:
    alive = []
    for s in held:
        try:
            if s.recv(1, socket.MSG_DONTWAIT) == b"":
                s.close()
                continue
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            continue
        alive.append(s)
    held = alive
    while len(held) < count:
        s = socket.socket()
        try:
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            break
        held.append(s)
        opened += 1
    print(opened, len(held), flush=True)
    time.sleep(0.2)
"#;
    Command::new("python3")
        .args(["-c", script, &port.to_string(), &count.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("python3")
}

/// Kills the flood when the test ends, however it ends.
struct Flood(Child);

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_connection_flood_does_not_stall_the_job() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let want = reference(tmp.path());
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let mut c = Cluster::new(tmp.path(), &server, "flood");
    // The soft file-handle limit of many distributions (the hard one unchanged): 1,100 idle
    // connections used to exhaust it.
    let mut master = Command::new("prlimit");
    master
        .arg("--nofile=1024:")
        .arg(env!("CARGO_BIN_EXE_sluice"));
    with_credentials(&mut master)
        .env("SLUICE_TOKEN", TOKEN)
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(tmp.path().join(format!("master-{}.log", c.master_port)))
                .expect("log"),
        );
    c.spawn_master(master, 2);
    // The flood comes first: the workers must register through it.
    let _flood = Flood(flood(c.master_port, 1100));
    std::thread::sleep(Duration::from_secs(2));
    // The flood holds at most its address's share of the master's file handles (it took all
    // 1,024 before).
    let pid = c.master.as_ref().expect("master").id();
    let handles = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        (10..300).contains(&handles),
        "the master holds {handles} file handles under the flood"
    );
    c.start_worker("w1");
    c.start_worker("w2");
    assert_exactly_once(&c.finish(), &want, "under a connection flood");
    let log = c.master_log();
    assert!(
        log.contains("refused a connection: too many from one address"),
        "{log}"
    );
}

/// One message a hostile (or broken) peer holding the token might send a worker.
#[derive(Debug, Clone)]
enum Message {
    Assign(u64, Vec<bool>, bool),
    Restore(u64, u64),
    Begin(u64, u64, String),
    Stage(u64, u64, u32),
    Blocks(u64, u64, u32, u32, u32, Vec<u8>),
    Snapshot(u64, u64),
    ApplyStateLog(u64, u64, String),
}

fn message() -> impl proptest::strategy::Strategy<Value = Message> {
    use proptest::prelude::*;
    let epoch = 0u64..4;
    let batch = prop_oneof![0u64..4, Just(u64::MAX)];
    let range = prop::sample::select(vec![
        r#"{"start":0,"end":10}"#,
        r#"{"start":10,"end":0}"#,
        r#"{"start":0,"end":18446744073709551615}"#,
        r#"{"wal":"../../../etc/passwd"}"#,
        r#"{"wal":"wal/00000000000000000001/g.bin"}"#,
        r#"{"files":["../x"]}"#,
        r#"{"refused":{"count":18446744073709551615,"samples":[1,2]}}"#,
        r#"null"#,
        r#"{"#,
        "",
    ])
    .prop_map(String::from);
    let small = prop_oneof![0u32..8, Just(u32::MAX)];
    prop_oneof![
        (
            epoch.clone(),
            proptest::collection::vec(any::<bool>(), 0..9),
            any::<bool>()
        )
            .prop_map(|(e, o, f)| Message::Assign(e, o, f)),
        (epoch.clone(), batch.clone()).prop_map(|(e, b)| Message::Restore(e, b)),
        (epoch.clone(), batch.clone(), range).prop_map(|(e, b, r)| Message::Begin(e, b, r)),
        (epoch.clone(), batch.clone(), small.clone()).prop_map(|(e, b, s)| Message::Stage(e, b, s)),
        (
            epoch.clone(),
            batch.clone(),
            small.clone(),
            small.clone(),
            small,
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(e, b, s, m, r, d)| Message::Blocks(e, b, s, m, r, d)),
        (epoch.clone(), batch.clone()).prop_map(|(e, b)| Message::Snapshot(e, b)),
        (
            epoch,
            batch,
            prop::sample::select(vec![
                "statelog/00000000000000000001-1.bin",
                "statelog/00000000000000000001-ff.bin",
                "statelog/../../etc/passwd-1.bin",
                "wal/00000000000000000001/g.bin",
                "statelog/x-1.bin",
                "",
            ])
            .prop_map(String::from)
        )
            .prop_map(|(e, b, k)| Message::ApplyStateLog(e, b, k)),
    ]
}

#[test]
fn a_worker_answers_hostile_messages_and_stays_up() {
    use proptest::strategy::{Strategy, ValueTree};
    use sluice::rpc::pb;
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let mut c = Cluster::new(tmp.path(), &server, "hostile");
    let manifest =
        sluice_crds::load(&std::fs::read_to_string(&c.job).expect("job")).expect("valid");
    let fingerprint = sluice_crds::fingerprint(&manifest.spec);
    let port = port();
    let address = format!("127.0.0.1:{port}");
    let mut worker = c.command("hostile-worker.log");
    // No master: the worker keeps trying to register while the peer below talks to it.
    worker.arg("worker").arg(&c.job).args([
        "--master",
        "127.0.0.1:1",
        "--listen",
        &address,
        "--advertise",
        &address,
        "--id",
        "target",
    ]);
    c.workers
        .push(("target".into(), worker.spawn().expect("spawn")));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let token = sluice::rpc::AddToken::new(TOKEN).expect("token");
    // connect_lazy needs the runtime's reactor.
    let _guard = rt.enter();
    let channel = sluice::rpc::channel(&address, Duration::from_secs(10), None).expect("channel");
    let mut client = pb::worker_client::WorkerClient::with_interceptor(channel, token);
    let alive = |client: &mut pb::worker_client::WorkerClient<_>| {
        rt.block_on(client.ping(pb::PingRequest { epoch: 0 }))
            .is_ok()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !alive(&mut client) {
        assert!(Instant::now() < deadline, "the worker did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let cases: u32 = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = proptest::collection::vec(message(), 1..8);
    let mut sent = 0;
    for _ in 0..cases {
        let messages = strategy.new_tree(&mut runner).expect("case").current();
        for m in messages {
            sent += 1;
            let _ = rt.block_on(async {
                match m.clone() {
                    Message::Assign(epoch, owners, right_job) => client
                        .assign(pb::AssignRequest {
                            epoch,
                            master_id: "m".into(),
                            owners: owners
                                .iter()
                                .map(|mine| {
                                    if *mine {
                                        address.clone()
                                    } else {
                                        "10.0.0.1:1".into()
                                    }
                                })
                                .collect(),
                            fingerprint: if right_job {
                                fingerprint.clone()
                            } else {
                                "x".into()
                            },
                            state_log: right_job,
                        })
                        .await
                        .map(|_| ()),
                    Message::Restore(epoch, snapshot_batch) => client
                        .restore(pb::RestoreRequest {
                            epoch,
                            snapshot_batch,
                            // Partial restores of partitions in and out of range.
                            partial: snapshot_batch % 2 == 0,
                            partitions: vec![(snapshot_batch % 20) as u32, u32::MAX],
                        })
                        .await
                        .map(|_| ()),
                    Message::Begin(epoch, batch, range) => client
                        .begin_batch(pb::BeginBatchRequest {
                            epoch,
                            batch,
                            time_ms: batch,
                            replay: false,
                            ranges: [("g".to_string(), range)].into(),
                            partial: batch % 2 == 0,
                            redo: vec![(batch % 20) as u32],
                        })
                        .await
                        .map(|_| ()),
                    Message::Stage(epoch, batch, stage) => client
                        .run_stage(pb::RunStageRequest {
                            epoch,
                            batch,
                            stage,
                        })
                        .await
                        .map(|_| ()),
                    Message::Blocks(
                        epoch,
                        batch,
                        shuffle,
                        map_partition,
                        reduce_partition,
                        data,
                    ) => {
                        let block = pb::Block {
                            shuffle,
                            map_partition,
                            reduce_partition,
                            data,
                            epoch,
                            batch,
                        };
                        client
                            .push_blocks(futures::stream::iter(vec![block]))
                            .await
                            .map(|_| ())
                    }
                    Message::Snapshot(epoch, batch) => client
                        .snapshot(pb::SnapshotRequest { epoch, batch })
                        .await
                        .map(|_| ()),
                    Message::ApplyStateLog(epoch, batch, key) => client
                        .apply_state_log(pb::ApplyStateLogRequest {
                            epoch,
                            // Partitions in and out of range; batches in and out of order.
                            partitions: vec![(batch % 20) as u32, u32::MAX >> (batch % 2)],
                            batches: vec![
                                pb::LoggedBatch {
                                    batch,
                                    time_ms: batch,
                                    keys: vec![key.clone()],
                                },
                                pb::LoggedBatch {
                                    batch: batch.wrapping_add(1 + batch % 2),
                                    time_ms: 0,
                                    keys: vec![key],
                                },
                            ],
                        })
                        .await
                        .map(|_| ()),
                }
            });
            assert!(
                alive(&mut client),
                "the worker stopped answering after {m:?}; its log:\n{}",
                std::fs::read_to_string(tmp.path().join("hostile-worker.log")).unwrap_or_default()
            );
        }
    }
    let (_, process) = c
        .workers
        .iter_mut()
        .find(|(id, _)| id == "target")
        .expect("worker");
    assert!(
        process.try_wait().expect("wait").is_none(),
        "the worker exited"
    );
    eprintln!("{sent} hostile messages answered");
}

/// A job from a 4-partition Kafka topic to a Kafka topic (and files, to count commits), with a
/// worker and then the master killed: both outputs equal a local run's, batch by batch. The
/// input is a backlog, so every batch is the rate bound in both runs.
#[test]
fn a_kafka_job_survives_worker_and_master_loss() {
    use support::kafka::{KafkaBroker, by_batch, create_topic, produce, unique_topic};
    let broker = KafkaBroker::shared();
    let servers = broker.bootstrap();
    let input = unique_topic("dist-in");
    create_topic(&servers, &input, 4);
    let lines: Vec<String> = (0..4 * 100 * (BATCHES as usize + 5))
        .map(|i| format!("w{} w{} x", i % 37, i % 11))
        .collect();
    let records: Vec<(i32, Option<&str>, &str)> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| (i as i32 % 4, None, l.as_str()))
        .collect();
    produce(&servers, &input, &records);

    let tmp = tempfile::tempdir().expect("tempdir");
    let job = |name: &str, out: &Path, output: &str, checkpoint: &str| -> PathBuf {
        let text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: {name}}}\nspec:\n  batchInterval: 100ms\n  parallelism: 6\n  backpressure: {{enabled: false}}\n  sources:\n    - name: in\n      kafka: {{bootstrapServers: \"{servers}\", topics: [{input}], startingOffsets: earliest, maxRatePerPartition: 1000}}\n  pipeline:\n    - flatMap: {{split: \" \"}}\n    - countByValue: {{}}\n    - updateStateByKey: {{op: sum}}\n  sinks:\n    - files: {{path: \"{}\"}}\n    - kafka: {{bootstrapServers: \"{servers}\", topic: {output}}}\n  checkpoint: {checkpoint}\n",
            out.display()
        );
        let path = tmp.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text).expect("write manifest");
        path
    };

    let reference_topic = unique_topic("dist-ref");
    create_topic(&servers, &reference_topic, 3);
    let reference_out = tmp.path().join("reference-out");
    let reference = job(
        "reference",
        &reference_out,
        &reference_topic,
        &format!(
            "{{uri: \"file://{}\"}}",
            tmp.path().join("reference-ckpt").display()
        ),
    );
    run_local(&reference);
    let want_files: Vec<Vec<String>> = batches(&reference_out).into_values().collect();
    let want_topic = by_batch(&servers, &reference_topic);
    assert_eq!(want_topic.len() as u64, BATCHES);

    let server = S3Server::start(&tmp.path().join("s3"), "ckpt");
    let topic = unique_topic("dist-out");
    create_topic(&servers, &topic, 3);
    let out = tmp.path().join("kafka-out");
    let checkpoint = format!(
        "{{uri: \"s3://ckpt/kafka\", endpoint: \"{}\", pathStyle: true, interval: 5}}",
        server.endpoint()
    );
    let mut c = Cluster::for_manifest(tmp.path(), job("kafka", &out, &topic, &checkpoint), out, 6);
    c.start_master(3);
    for w in ["w1", "w2", "w3"] {
        c.start_worker(w);
    }
    c.wait_commits(8, Duration::from_secs(60));
    let before = c.commits();
    c.kill_worker("w2");
    c.wait_commits(before + 3, Duration::from_secs(60));
    let before = c.commits();
    c.kill_master();
    c.start_master(2);
    c.wait_commits(before + 1, Duration::from_secs(60));
    assert_exactly_once(
        &c.finish(),
        &want_files,
        "Kafka job, worker and master killed",
    );
    let got = by_batch(&servers, &topic);
    assert_eq!(got.len(), want_topic.len(), "batches in the output topic");
    for (batch, want) in &want_topic {
        assert!(
            got.get(batch) == Some(want),
            "batch {batch} of the output topic differs from the local run's"
        );
    }
}
