//! Sources against real peers: a TCP server that drops the connection, a directory that fills.

use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use sluice::source::{FilesSource, SocketSource};
use sluice::{StreamingConfig, StreamingContext};

/// 100 ms batches over 2 partitions.
fn context() -> StreamingContext {
    StreamingContext::new(StreamingConfig::new(Duration::from_millis(100)).parallelism(2))
}

#[test]
fn socket_source_reconnects_after_the_server_drops_it() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        for lines in ["alpha beta\n", "gamma\n"] {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.write_all(lines.as_bytes()).expect("write");
            // Dropping the connection makes the source reconnect for the next lines.
        }
    });
    let ctx = context();
    let words = ctx
        .source(SocketSource::new("tcp", "127.0.0.1", port))
        .flat_map(|l: String| l.split(' ').map(String::from).collect::<Vec<_>>())
        .collect_batches();
    let mut job = ctx.build().expect("build");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 3 && Instant::now() < deadline {
        job.run_batches(1).expect("batch");
        seen.extend(words.take().into_iter().flat_map(|(_, w)| w));
        std::thread::sleep(Duration::from_millis(50));
    }
    server.join().expect("server");
    seen.sort();
    assert_eq!(seen, vec!["alpha", "beta", "gamma"]);
}

#[test]
fn files_source_reads_each_new_file_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = context();
    let lines = ctx
        .source(FilesSource::new("in", dir.path()))
        .collect_batches();
    let mut job = ctx.build().expect("build");
    std::fs::write(dir.path().join("1.txt"), "a\nb\n").expect("write");
    job.run_batches(1).expect("batch");
    // Written under a hidden name, then renamed in: the batch before the rename sees nothing.
    std::fs::write(dir.path().join(".2.txt"), "c\n").expect("write");
    job.run_batches(1).expect("batch");
    std::fs::rename(dir.path().join(".2.txt"), dir.path().join("2.txt")).expect("rename");
    job.run_batches(2).expect("batches");
    let got: Vec<Vec<String>> = lines.take().into_iter().map(|(_, l)| l).collect();
    assert_eq!(
        got,
        vec![
            vec!["a".to_string(), "b".to_string()],
            vec![],
            vec!["c".to_string()],
            vec![]
        ]
    );
}

/// Runs batches until `want` records or 10 s; returns the records and the refusals.
fn collect_until(
    job: &mut sluice::Job,
    records: &sluice::dstream::Collected<String>,
    want: usize,
) -> (Vec<String>, u64, Vec<String>) {
    let (mut seen, mut refused, mut samples) = (Vec::new(), 0, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < want && Instant::now() < deadline {
        for report in job.run_batches(1).expect("batch") {
            refused += report.record_errors;
            samples.extend(report.error_samples);
        }
        seen.extend(records.take().into_iter().flat_map(|(_, l)| l));
        std::thread::sleep(Duration::from_millis(50));
    }
    (seen, refused, samples)
}

#[test]
fn socket_source_keeps_every_good_line_around_bad_bytes_pauses_and_overlong_lines() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.write_all(b"first\nsecret\xff\xfe\nafter-bad\nsplit-")
            .expect("write");
        conn.flush().expect("flush");
        // Longer than the source's read timeout: the line and the character must survive it.
        std::thread::sleep(Duration::from_millis(600));
        conn.write_all(&"caf\u{e9}".as_bytes()[..4]).expect("write");
        std::thread::sleep(Duration::from_millis(600));
        conn.write_all(&"caf\u{e9}".as_bytes()[4..]).expect("write");
        conn.write_all(b"\n").expect("write");
        let long = vec![b'x'; sluice::source::MAX_LINE_BYTES + 10];
        conn.write_all(&long).expect("write");
        conn.write_all(b"\nlast\n").expect("write");
        // Keep the connection open until the test has read everything.
        std::thread::sleep(Duration::from_secs(3));
    });
    let ctx = context();
    let lines = ctx
        .source(SocketSource::new("tcp", "127.0.0.1", port))
        .collect_batches();
    let mut job = ctx.build().expect("build");
    let (seen, refused, samples) = collect_until(&mut job, &lines, 4);
    assert_eq!(seen, vec!["first", "after-bad", "split-café", "last"]);
    assert_eq!(refused, 2, "{samples:?}");
    assert!(
        samples.iter().any(|s| s.contains("not UTF-8")),
        "{samples:?}"
    );
    assert!(
        samples.iter().any(|s| s.contains("byte limit")),
        "{samples:?}"
    );
    assert!(!samples.iter().any(|s| s.contains("secret")), "{samples:?}");
    server.join().expect("server");
}

#[test]
fn a_files_source_job_with_a_binary_file_reads_the_good_files_of_the_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("1.txt"), "a\nb\n").expect("write");
    std::fs::write(dir.path().join("2.bin"), [0u8, 159, 146, 150, 10, 255]).expect("write");
    std::fs::write(dir.path().join("3.txt"), "c\n").expect("write");
    let ctx = context();
    let lines = ctx
        .source(FilesSource::new("in", dir.path()))
        .collect_batches();
    let mut job = ctx.build().expect("build");
    let (seen, refused, samples) = collect_until(&mut job, &lines, 3);
    assert_eq!(seen, vec!["a", "b", "c"]);
    assert_eq!(refused, 2, "{samples:?}");
}
