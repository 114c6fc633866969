//! The write-ahead log of non-replayable input: a socket source's lines survive `kill -9`
//! because each batch's lines are logged before the batch runs, and a restarted job replays
//! them instead of finding them gone.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                (!name.starts_with('.'))
                    .then(|| (name, std::fs::read_to_string(e.path()).unwrap_or_default()))
            })
            .collect()
        })
        .unwrap_or_default()
}

#[test]
fn socket_lines_are_replayed_from_the_log_after_sigkill() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    {
        let (next, done) = (next.clone(), done.clone());
        std::thread::spawn(move || {
            // Numbered lines, one per millisecond, across reconnections.
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                while !done.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if conn.write_all(format!("{n}\n").as_bytes()).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
    }
    let out = tmp.path().join("out");
    let job = tmp.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: wal}}\nspec:\n  batchInterval: 100ms\n  parallelism: 2\n  sources: [{{name: tcp, socket: {{host: 127.0.0.1, port: {port}}}}}]\n  sinks: [{{files: {{path: \"{}\"}}}}]\n  checkpoint: {{uri: \"file://{}\", interval: 1000}}\n",
            out.display(),
            tmp.path().join("ckpt").display()
        ),
    )
    .expect("write");
    let sluice = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
        c.arg("run")
            .arg(&job)
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null());
        c
    };
    let mut first = sluice().stderr(Stdio::null()).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while files(&out).values().filter(|t| !t.is_empty()).count() < 8 {
        assert!(Instant::now() < deadline, "no input arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let before = files(&out);
    // No snapshot was taken (interval 1000): everything must come back from the log.
    let restarted = sluice().stderr(Stdio::piped()).spawn().expect("spawn");
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill")
        .args(["-TERM", &restarted.id().to_string()])
        .status();
    let result = restarted.wait_with_output().expect("wait");
    done.store(true, Ordering::Relaxed);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("replaying logged batches"), "{stderr}");
    let after = files(&out);
    let mut replayed = 0;
    for (name, text) in &before {
        if !text.is_empty() {
            assert_eq!(
                after.get(name),
                Some(text),
                "{name} was rewritten differently on replay"
            );
            replayed += 1;
        }
    }
    assert!(replayed >= 8);
    // Exactly once: no line appears twice in the whole output.
    let mut seen = HashSet::new();
    for text in after.values() {
        for line in text.lines() {
            assert!(seen.insert(line.to_string()), "line {line} delivered twice");
        }
    }
    assert!(seen.len() > 100, "only {} lines arrived", seen.len());
}
