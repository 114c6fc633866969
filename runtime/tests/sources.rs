//! Sources against real peers: a TCP server that drops the connection, a directory that fills.

use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use sluice::source::{FilesSource, SocketSource};
use sluice::{StreamingConfig, StreamingContext};

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
    let ctx =
        StreamingContext::new(StreamingConfig::new(Duration::from_millis(100)).parallelism(2));
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
    let ctx =
        StreamingContext::new(StreamingConfig::new(Duration::from_millis(100)).parallelism(2));
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
