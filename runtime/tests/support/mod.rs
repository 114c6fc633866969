//! A real S3-compatible server for tests: s3s-fs (files on disk, conditional writes, survives
//! restarts), installed by `scripts/test` from crates.io.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "sluice-test-key";
pub const SECRET_KEY: &str = "sluice-test-secret-do-not-print";

/// The s3s-fs binary: `$SLUICE_S3S_FS` or the cache `scripts/test` installs it into.
pub fn s3s_fs() -> PathBuf {
    std::env::var("SLUICE_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/sluice-e2e/s3s-fs-0.14.1/bin/s3s-fs")
        })
}

/// A port nothing listens on, for a child process to listen on.
///
/// A port the system picks (`bind` to port 0, then let go) comes from the range it also takes
/// the local ports of outgoing connections from, so a connection made between the pick and the
/// child's own `bind` can take it: a master once failed to serve its metrics with "Address
/// already in use". These ports come from below that range (Linux's
/// `ip_local_port_range`), in turn from a place that depends on the process, so no connection
/// takes them and two tests of one binary never get the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let first = ephemeral.saturating_sub(12_000).max(1_024);
    let count = ephemeral.saturating_sub(first).max(1);
    let start = std::process::id().wrapping_mul(7_919) % count;
    for _ in 0..count {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = first + (start + n) % count;
        if let Ok(port) = u16::try_from(port)
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port between {first} and {}", first + count)
}

/// One s3s-fs process serving a directory.
pub struct S3Server {
    pub root: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl S3Server {
    /// Starts a server over `root` with one bucket.
    pub fn start(root: &Path, bucket: &str) -> S3Server {
        std::fs::create_dir_all(root.join(bucket)).expect("bucket directory");
        let port = free_port();
        let mut server = S3Server {
            root: root.to_path_buf(),
            port,
            child: None,
        };
        server.resume();
        server
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server (the data stays on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn resume(&mut self) {
        let bin = s3s_fs();
        assert!(
            bin.exists(),
            "{} is missing: run scripts/test (it installs s3s-fs) or set SLUICE_S3S_FS",
            bin.display()
        );
        let child = Command::new(bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
            ])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sets the AWS environment a `sluice` process needs to reach the test server.
pub fn with_credentials(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
}

/// Runs `cmd` to the end and fails the test, with its stderr, unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
/// The real broker and its client helpers.
#[allow(unused_imports)]
pub mod kafka {
    pub use sluice_e2e::kafka::KafkaBroker;
    pub use sluice_e2e::kafka::topics::*;
}

/// SplitMix64 for crash tests, seeded from `CRASH_SEED` or the clock; the seed is printed so
/// a failure can be replayed.
pub struct Rng {
    seed: u64,
    state: u64,
}

impl Rng {
    pub fn from_env(name: &str) -> Rng {
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
        Rng { seed, state: seed }
    }

    /// The seed, for failure messages.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The local checkpoint `DIR/ckpt`, read as a restart reads it.
fn checkpoint(dir: &Path) -> Option<sluice::checkpoint::Checkpointer> {
    let store = sluice::checkpoint::LocalStore::open(dir.join("ckpt")).ok()?;
    Some(sluice::checkpoint::Checkpointer::new(Box::new(store), 1, 1))
}

/// The newest batch marked complete in the local checkpoint `DIR/ckpt` (`sluice run` appends
/// commits to the commit log's segments), 0 for none.
pub fn last_commit(dir: &Path) -> u64 {
    checkpoint(dir)
        .and_then(|c| c.last_commit().ok().flatten())
        .map_or(0, |c| c.batch)
}

/// The batches committed to the local checkpoint `DIR/ckpt`, in order.
pub fn commits(dir: &Path) -> Vec<sluice::checkpoint::CommitEntry> {
    checkpoint(dir)
        .and_then(|c| c.commits_after(0).ok())
        .unwrap_or_default()
}

/// Runs `command()` (a `sluice run` of `batches` batches checkpointing to `DIR/ckpt`) until it
/// finishes, first SIGKILLing `kills` starts of it, each `min_wait` plus a random part of
/// `spread` after it starts. Returns the kills and how many landed mid-run (after the first
/// commit, before the last); fails the test on a failed final run or after `timeout`.
pub fn run_with_kills(
    name: &str,
    rng: &mut Rng,
    command: impl Fn() -> Command,
    dir: &Path,
    batches: u64,
    (kills, min_wait, spread): (u32, Duration, Duration),
    timeout: Duration,
) -> (u32, u32) {
    let (mut done, mut mid_run) = (0, 0);
    let deadline = Instant::now() + timeout;
    loop {
        assert!(Instant::now() < deadline, "{name}: did not finish in time");
        let mut child = command().spawn().expect("spawn sluice");
        if done < kills {
            let spread_ms = (spread.as_millis() as u64).max(1);
            std::thread::sleep(min_wait + Duration::from_millis(rng.next() % spread_ms));
            if child.try_wait().expect("wait").is_none() {
                child.kill().expect("SIGKILL");
                let _ = child.wait();
                done += 1;
                let last = last_commit(dir);
                eprintln!("{name}: killed after batch {last}");
                mid_run += u32::from(last > 0 && last < batches);
                continue;
            }
        }
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{name}: run after {done} kills: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return (done, mid_run);
    }
}

/// `GET path` on `addr`: the status line and the body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

/// The value of the series `name` (with any labels) in an OpenMetrics text.
pub fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// The newest committed batch a batch loop's scrape names, checked to be whole: as many
/// batches completed as the newest batch's index.
pub fn whole_batches(text: &str) -> u64 {
    let last = series(text, "sluice_last_batch") as u64;
    assert_eq!(
        series(text, "sluice_batches_completed_total") as u64,
        last,
        "{text}"
    );
    last
}

/// The sum of the series `name` whose labels contain `label` (e.g. `source="g"`; empty:
/// every one), over several OpenMetrics texts (the master's and each worker's); `None` when
/// no text has one.
pub fn series_sum(texts: &[String], name: &str, label: &str) -> Option<f64> {
    let mut found = None;
    for text in texts {
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let labelled = rest.starts_with('{') && rest.contains(label);
            let bare = label.is_empty() && rest.starts_with(' ');
            if (labelled || bare)
                && let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok())
            {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

/// The text of each batch file a files sink wrote in `dir`, in time order.
pub fn batch_texts(dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("read"))
        .collect()
}

/// The JSON lines of each batch file a files sink wrote in `dir` (`format: json`), in time
/// order.
pub fn json_batches(dir: &Path) -> Vec<Vec<serde_json::Value>> {
    batch_texts(dir)
        .iter()
        .map(|text| {
            text.lines()
                .map(|l| serde_json::from_str(l).expect("a JSON line"))
                .collect()
        })
        .collect()
}

/// `sluice run MANIFEST --batches N --no-wait` to its end; fails the test unless it succeeds.
/// Returns its log (warnings and errors).
pub fn run_job(manifest: &Path, batches: usize) -> String {
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("run")
            .arg(manifest)
            .args(["--batches", &batches.to_string(), "--no-wait"])
            .env("SLUICE_LOG", "warn"),
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `cmd` until its stderr has a line containing `wanted` (then kills it), it exits, or
/// `timeout` passes; returns whether it exited successfully, its stdout and its stderr.
pub fn run_until(
    mut cmd: std::process::Command,
    wanted: &str,
    timeout: Duration,
) -> (bool, String, String) {
    use std::io::{BufRead, Read};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let stderr = child.stderr.take().expect("stderr");
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + timeout;
    let mut text = String::new();
    loop {
        match seen.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let found = !wanted.is_empty() && line.contains(wanted);
                text.push_str(&line);
                text.push('\n');
                if found {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if std::time::Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let status = child.wait().expect("wait");
    let stdout = out.join().unwrap_or_default();
    (status.success(), stdout, text)
}
