//! The Kafka source and sink against a real Apache Kafka broker (one KRaft node started once for
//! this test binary; each test has its own topics).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use sluice::kafka::{
    Delivery, KafkaClient, KafkaMessage, KafkaRecord, KafkaSink, KafkaSource, StartingOffsets,
};
use sluice::sink::Sink;
use sluice::time::BatchInfo;
use sluice::{StreamingConfig, StreamingContext};
use support::kafka::*;
use support::{Rng, run_until, run_with_kills};

fn context(partitions: usize) -> StreamingContext {
    StreamingContext::new(StreamingConfig::new(Duration::from_millis(100)).parallelism(partitions))
}

fn source(broker: &KafkaBroker, topic: &str) -> KafkaSource {
    KafkaSource::new(
        "k",
        KafkaClient::new(&broker.bootstrap()),
        &[topic],
        &format!("test.{topic}"),
    )
    .starting_at(StartingOffsets::Earliest)
}

fn records(n: usize, partitions: i32, tag: &str) -> Vec<(i32, Option<String>, String)> {
    (0..n)
        .map(|i| {
            (
                i as i32 % partitions,
                Some(format!("k{}", i % 7)),
                format!("{tag}-{i}"),
            )
        })
        .collect()
}

fn produce_owned(broker: &KafkaBroker, topic: &str, recs: &[(i32, Option<String>, String)]) {
    let borrowed: Vec<(i32, Option<&str>, &str)> = recs
        .iter()
        .map(|(p, k, v)| (*p, k.as_deref(), v.as_str()))
        .collect();
    produce(&broker.bootstrap(), topic, &borrowed);
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn the_source_reads_each_record_once_with_its_metadata_and_new_records_in_the_next_batch() {
    let broker = KafkaBroker::shared();
    let topic = unique_topic("reads");
    create_topic(&broker.bootstrap(), &topic, 3);
    let first = records(30, 3, "a");
    produce_owned(broker, &topic, &first);

    let ctx = context(2);
    let got = ctx.source(source(broker, &topic)).collect_batches();
    let mut job = ctx.build().expect("build");
    job.run_batches(1).expect("batch 1");
    let batch: Vec<KafkaRecord> = got.take().into_iter().flat_map(|(_, r)| r).collect();
    assert_eq!(
        sorted(batch.iter().map(|r| r.value.clone()).collect()),
        sorted(first.iter().map(|r| r.2.clone()).collect())
    );
    // Every record carries where it came from; offsets per partition are 0..10.
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &batch {
        assert_eq!(&*r.topic, topic.as_str());
        assert!(r.key.as_deref().is_some_and(|k| k.starts_with('k')));
        assert!(r.timestamp.is_some_and(|t| t > 1_700_000_000_000));
        by_partition.entry(r.partition).or_default().push(r.offset);
    }
    for offsets in by_partition.values_mut() {
        offsets.sort_unstable();
        assert_eq!(*offsets, (0..10).collect::<Vec<i64>>());
    }

    job.run_batches(1).expect("batch 2");
    assert!(got.take().iter().all(|(_, r)| r.is_empty()), "nothing new");
    let second = records(6, 3, "b");
    produce_owned(broker, &topic, &second);
    job.run_batches(1).expect("batch 3");
    let batch: Vec<String> = got
        .take()
        .into_iter()
        .flat_map(|(_, r)| r)
        .map(|r| r.value)
        .collect();
    assert_eq!(
        sorted(batch),
        sorted(second.iter().map(|r| r.2.clone()).collect())
    );
}

#[test]
fn max_rate_per_partition_bounds_every_batch_of_a_backlog() {
    let broker = KafkaBroker::shared();
    let topic = unique_topic("rate");
    create_topic(&broker.bootstrap(), &topic, 2);
    produce_owned(broker, &topic, &records(100, 2, "r"));
    let ctx = context(3);
    // 100 records/s per partition over 100 ms batches: 10 per partition, 20 per batch.
    let got = ctx
        .source(source(broker, &topic).max_rate_per_partition(Some(100)))
        .collect_batches();
    let mut job = ctx.build().expect("build");
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    for _ in 0..6 {
        job.run_batches(1).expect("batch");
        for (_, r) in got.take() {
            sizes.push(r.len());
            all.extend(r.into_iter().map(|r| r.value));
        }
    }
    assert_eq!(sizes, vec![20, 20, 20, 20, 20, 0]);
    assert_eq!(
        sorted(all),
        sorted(records(100, 2, "r").into_iter().map(|r| r.2).collect())
    );
}

#[test]
fn partitions_added_while_running_are_read_from_their_start() {
    let broker = KafkaBroker::shared();
    let topic = unique_topic("grow");
    create_topic(&broker.bootstrap(), &topic, 1);
    let ctx = context(2);
    let got = ctx
        .source(source(broker, &topic).starting_at(StartingOffsets::Latest))
        .collect_batches();
    let mut job = ctx.build().expect("build");
    job.run_batches(1).expect("batch 1");
    add_partitions(&broker.bootstrap(), &topic, 3);
    produce(
        &broker.bootstrap(),
        &topic,
        &[(0, None, "p0"), (1, None, "p1"), (2, None, "p2")],
    );
    job.run_batches(1).expect("batch 2");
    let values: Vec<String> = got
        .take()
        .into_iter()
        .flat_map(|(_, r)| r)
        .map(|r| r.value)
        .collect();
    assert_eq!(sorted(values), vec!["p0", "p1", "p2"]);
}

#[test]
fn an_open_transaction_is_not_planned_and_aborted_records_are_never_read() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let broker = KafkaBroker::shared();
    let topic = unique_topic("txn-in");
    create_topic(&broker.bootstrap(), &topic, 1);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("transactional.id", format!("writer-{topic}"))
        .create()
        .expect("producer");
    let t = Duration::from_secs(30);
    p.init_transactions(t).expect("init");
    let send = |values: &[&str]| {
        for v in values {
            p.send(BaseRecord::<(), str>::to(&topic).payload(*v))
                .expect("send");
        }
        p.flush(t).expect("flush");
    };
    p.begin_transaction().expect("begin");
    send(&["c1", "c2"]);
    p.commit_transaction(t).expect("commit");
    p.begin_transaction().expect("begin");
    send(&["aborted"]);
    p.abort_transaction(t).expect("abort");
    p.begin_transaction().expect("begin");
    send(&["open"]);

    let ctx = context(2);
    let got = ctx.source(source(broker, &topic)).collect_batches();
    let mut job = ctx.build().expect("build");
    job.run_batches(1).expect("batch 1");
    let values = |got: &sluice::dstream::Collected<KafkaRecord>| -> Vec<String> {
        got.take()
            .into_iter()
            .flat_map(|(_, r)| r)
            .map(|r| r.value)
            .collect()
    };
    assert_eq!(sorted(values(&got)), vec!["c1", "c2"]);
    p.commit_transaction(t).expect("commit");
    // The commit markers land just after the commit returns; until then the record waits.
    let mut later = Vec::new();
    for _ in 0..30 {
        job.run_batches(1).expect("batch");
        later.extend(values(&got));
        if !later.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(later, vec!["open"]);
}

fn sink(broker: &KafkaBroker, topic: &str) -> KafkaSink {
    KafkaSink::new(
        KafkaClient::new(&broker.bootstrap()),
        topic,
        &format!("test.{topic}"),
        Delivery::ExactlyOnce,
    )
}

fn messages(batch: u64, part: usize, n: usize) -> Vec<KafkaMessage> {
    (0..n)
        .map(|i| KafkaMessage {
            key: Some(format!("{part}")),
            value: format!("b{batch}-p{part}-{i}"),
        })
        .collect()
}

#[test]
fn the_sink_writes_a_batch_once_even_when_it_runs_again_in_a_new_process() {
    let broker = KafkaBroker::shared();
    let topic = unique_topic("out");
    create_topic(&broker.bootstrap(), &topic, 2);
    let batch = |i: u64| BatchInfo::new(1_000_000, 100, i);
    let parts = |i: u64| vec![(0, messages(i, 0, 3)), (1, messages(i, 1, 2))];

    let first = sink(broker, &topic);
    first
        .write_partitions(&batch(1), parts(1), false)
        .expect("batch 1");
    first
        .write_partitions(&batch(2), parts(2), false)
        .expect("batch 2");
    // Run again in the same process: it knows what it wrote.
    first
        .write_partitions(&batch(2), parts(2), false)
        .expect("batch 2 again");
    // A new process (after a crash between the Kafka commit and the checkpoint) fences the
    // old producers, reads the marks, and skips what Kafka holds.
    let second = sink(broker, &topic);
    second
        .write_partitions(&batch(2), parts(2), false)
        .expect("batch 2 in a new process");
    second
        .write_partitions(&batch(3), parts(3), false)
        .expect("batch 3");
    // The first process is now a zombie: its producers were fenced, so it cannot write.
    let zombie = first.write_partitions(&batch(4), parts(4), false);
    assert!(zombie.is_err(), "a fenced producer wrote");

    let mut want: Vec<String> = (1..=3)
        .flat_map(|i| parts(i).into_iter().flat_map(|(_, m)| m).map(|m| m.value))
        .collect();
    want.sort();
    assert_eq!(sorted(committed_values(&broker.bootstrap(), &topic)), want);
}

/// A manifest from topic `input` to topic `output` through a running count per word.
fn kafka_manifest(
    dir: &std::path::Path,
    name: &str,
    broker: &KafkaBroker,
    input: &str,
    output: &str,
) -> std::path::PathBuf {
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: {name}}}\nspec:\n  batchInterval: 100ms\n  parallelism: 3\n  sources:\n    - name: in\n      kafka: {{bootstrapServers: \"{servers}\", topics: [{input}], startingOffsets: earliest, maxRatePerPartition: 1000}}\n  backpressure: {{enabled: false}}\n  pipeline:\n    - flatMap: {{split: \" \"}}\n    - countByValue: {{}}\n    - updateStateByKey: {{op: sum}}\n  sinks:\n    - kafka: {{bootstrapServers: \"{servers}\", topic: {output}}}\n  checkpoint: {{uri: \"file://{ckpt}\", interval: 4, retain: 2}}\n",
        servers = broker.bootstrap(),
        ckpt = dir.join("ckpt").display(),
    );
    let path = dir.join("job.yaml");
    std::fs::write(&path, text).expect("write manifest");
    path
}

const CRASH_BATCHES: u64 = 30;

fn sluice_run(manifest: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.arg("run")
        .arg(manifest)
        .args(["--batches", &CRASH_BATCHES.to_string(), "--no-wait"])
        .env("SLUICE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    c
}

#[test]
fn kafka_to_kafka_is_exactly_once_across_sigkills() {
    let broker = KafkaBroker::shared();
    let input = unique_topic("crash-in");
    create_topic(&broker.bootstrap(), &input, 3);
    // A backlog larger than the run takes: every batch is the rate bound, 100 records from
    // each partition, in both runs, whatever the timing.
    let lines: Vec<(i32, Option<String>, String)> = (0..3 * 100 * (CRASH_BATCHES as usize + 5))
        .map(|i| (i as i32 % 3, None, format!("w{} w{} x", i % 37, i % 11)))
        .collect();
    produce_owned(broker, &input, &lines);

    let mut rng = Rng::from_env("kafka crash");

    let reference = tempfile::tempdir().expect("tempdir");
    let reference_out = unique_topic("crash-ref");
    create_topic(&broker.bootstrap(), &reference_out, 2);
    let started = std::time::Instant::now();
    let out = sluice_run(&kafka_manifest(
        reference.path(),
        "reference",
        broker,
        &input,
        &reference_out,
    ))
    .output()
    .expect("reference run");
    let run_ms = (started.elapsed().as_millis() as u64).max(50);
    assert!(
        out.status.success(),
        "reference run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = by_batch(&broker.bootstrap(), &reference_out);
    assert_eq!(expected.len() as u64, CRASH_BATCHES, "one output per batch");

    let crashed = tempfile::tempdir().expect("tempdir");
    let crashed_out = unique_topic("crash-out");
    create_topic(&broker.bootstrap(), &crashed_out, 2);
    let job = kafka_manifest(crashed.path(), "crashed", broker, &input, &crashed_out);
    let (kills, mid_run) = run_with_kills(
        "kafka crash",
        &mut rng,
        || sluice_run(&job),
        crashed.path(),
        CRASH_BATCHES,
        (
            6,
            Duration::from_millis(20),
            Duration::from_millis(run_ms / 3),
        ),
        Duration::from_secs(240),
    );
    assert!(mid_run >= 1, "no kill landed mid-run ({kills} kills)");
    let got = by_batch(&broker.bootstrap(), &crashed_out);
    assert_eq!(
        got.len(),
        expected.len(),
        "batches written after {kills} kills"
    );
    for (batch, want) in &expected {
        assert!(
            got.get(batch) == Some(want),
            "batch {batch} differs from the uninterrupted run after {kills} kills (seed {}): {} records against {}",
            rng.seed(),
            got.get(batch).map_or(0, Vec::len),
            want.len()
        );
    }
}

/// One line of `sluice run`'s progress: (batch, records, scheduling delay ms).
/// A progress line's batch, records, scheduling delay (ms) and backlog (records), when it says.
fn progress_line(line: &str) -> Option<(u64, u64, u64, Option<u64>)> {
    let rest = line.split("batch ").nth(1)?;
    let batch = rest.split_whitespace().next()?.parse().ok()?;
    let records = rest
        .split(": ")
        .nth(1)?
        .split(" records")
        .next()?
        .trim()
        .parse()
        .ok()?;
    let delay = rest
        .split("scheduling delay ")
        .nth(1)?
        .split("ms")
        .next()?
        .parse()
        .ok()?;
    let backlog = rest
        .split("backlog ")
        .nth(1)
        .and_then(|b| b.split(" records").next()?.parse().ok());
    Some((batch, records, delay, backlog))
}

#[test]
fn a_backlog_of_two_million_records_is_taken_in_bounded_batches_until_the_job_keeps_up() {
    use rdkafka::producer::Producer;
    use std::io::BufRead;
    let broker = KafkaBroker::shared();
    let topic = unique_topic("backlog");
    create_topic(&broker.bootstrap(), &topic, 4);
    const BACKLOG: u64 = 2_000_000;
    let p = producer(&broker.bootstrap());
    for i in 0..BACKLOG {
        let value = format!("w{} x", i % 1000);
        let mut r = rdkafka::producer::BaseRecord::<(), str>::to(&topic)
            .partition((i % 4) as i32)
            .payload(&value);
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    p.poll(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush");

    let dir = tempfile::tempdir().expect("tempdir");
    // 4 partitions × 200 000 records/s × 0.5 s: at most 400 000 records a batch.
    let bound = 400_000;
    let manifest = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: backlog}}\nspec:\n  batchInterval: 500ms\n  parallelism: 2\n  sources:\n    - name: in\n      kafka: {{bootstrapServers: \"{}\", topics: [{topic}], startingOffsets: earliest, maxRatePerPartition: 200000}}\n  pipeline:\n    - flatMap: {{split: \" \"}}\n    - countByValue: {{}}\n  sinks: [{{stdout: {{limit: 0}}}}]\n  checkpoint: {{uri: \"file://{}\"}}\n",
        broker.bootstrap(),
        dir.path().join("ckpt").display()
    );
    let path = dir.path().join("job.yaml");
    std::fs::write(&path, manifest).expect("manifest");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(&path)
        .env("SLUICE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sluice run");
    let stderr = child.stderr.take().expect("stderr");
    let (mut total, mut batches) = (0u64, Vec::new());
    let (mut after_drain, mut in_time) = (0, 0);
    let mut log = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        log.push(line.clone());
        let Some((batch, records, delay, backlog)) = progress_line(&line) else {
            continue;
        };
        total += records;
        // Nothing is produced while the job runs: what waits is what was not yet read.
        assert_eq!(
            backlog,
            Some(BACKLOG - total),
            "batch {batch}: the backlog is the records not yet read"
        );
        batches.push((batch, records, delay));
        if total >= BACKLOG {
            // Drained: the job must then run within its interval, batch after batch.
            after_drain += 1;
            in_time = if delay < 500 { in_time + 1 } else { 0 };
            if in_time == 3 || after_drain > 30 {
                break;
            }
        }
        assert!(
            batches.len() < 600,
            "no catch-up in 600 batches: {batches:?}"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("(batch, records, scheduling delay ms): {batches:?}");
    assert_eq!(total, BACKLOG, "every record once: {}", log.join("\n"));
    let biggest = batches.iter().map(|b| b.1).max().unwrap_or(0);
    assert!(
        biggest <= bound,
        "a batch of {biggest} records, over the bound of {bound}"
    );
    let tail: Vec<u64> = batches.iter().rev().take(3).map(|b| b.2).collect();
    assert!(
        tail.iter().all(|d| *d < 500),
        "still behind after the backlog: {tail:?}"
    );
    assert!(
        log.iter().any(|l| l.contains("rate limit")),
        "the rate controller never spoke"
    );
}

/// `sluice run` of a manifest from `topic` (on `servers`) to files in `dir/out`, logging at
/// info to `dir/log`; a snapshot after every batch, so that a recovery replays only the batch
/// in flight.
fn run_to_files(dir: &std::path::Path, servers: &str, topic: &str) -> std::process::Child {
    let manifest = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: files}}\nspec:\n  batchInterval: 100ms\n  parallelism: 2\n  sources:\n    - name: in\n      kafka: {{bootstrapServers: \"{servers}\", topics: [{topic}], startingOffsets: earliest}}\n  sinks: [{{files: {{path: \"{}\"}}}}]\n  checkpoint: {{uri: \"file://{}\", interval: 1}}\n",
        dir.join("out").display(),
        dir.join("ckpt").display()
    );
    let path = dir.join("job.yaml");
    std::fs::write(&path, manifest).expect("manifest");
    let log = std::fs::File::create(dir.join("log")).expect("log");
    std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(&path)
        .env("SLUICE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("sluice run")
}

/// Every line the files sink wrote, sorted.
fn file_lines(dir: &std::path::Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_dir(dir.join("out"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .flat_map(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .lines()
                        .map(String::from)
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .unwrap_or_default();
    lines.sort();
    lines
}

/// Waits for `done`; on a timeout the message ends with the job's log in `dir`.
fn wait_until(
    what: &str,
    dir: &std::path::Path,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; the job's log:\n{}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_broker_restart_mid_run_loses_and_doubles_nothing() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut broker = KafkaBroker::start(data.path()).expect("own broker");
    let servers = broker.bootstrap();
    let topic = unique_topic("restart");
    create_topic(&servers, &topic, 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut job = run_to_files(dir.path(), &servers, &topic);
    let value = |i: usize| format!("r{i:05}");
    let send = |from: usize, to: usize| {
        let values: Vec<String> = (from..to).map(value).collect();
        let records: Vec<(i32, Option<&str>, &str)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i32 % 2, None, v.as_str()))
            .collect();
        produce(&servers, &topic, &records);
    };
    send(0, 500);
    wait_until(
        "the first records",
        dir.path(),
        Duration::from_secs(30),
        || file_lines(dir.path()).len() >= 500,
    );
    broker.kill();
    std::thread::sleep(Duration::from_secs(3));
    broker.resume().expect("broker back");
    send(500, 1000);
    wait_until(
        "every record after the restart",
        dir.path(),
        Duration::from_secs(90),
        || file_lines(dir.path()).len() >= 1000,
    );
    std::thread::sleep(Duration::from_millis(500));
    let _ = job.kill();
    let _ = job.wait();
    let want: Vec<String> = (0..1000).map(value).collect();
    assert_eq!(file_lines(dir.path()), want);
}

#[test]
fn a_topic_deleted_and_created_again_under_a_running_job_stops_it_with_the_reason() {
    let broker = KafkaBroker::shared();
    let servers = broker.bootstrap();
    let topic = unique_topic("deleted");
    create_topic(&servers, &topic, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut job = run_to_files(dir.path(), &servers, &topic);
    produce(
        &servers,
        &topic,
        &[(0, None, "a"), (0, None, "b"), (0, None, "c")],
    );
    wait_until("the records", dir.path(), Duration::from_secs(30), || {
        file_lines(dir.path()).len() == 3
    });
    let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    // The batch that read them snapshotted and committed (three batches later, with the
    // writer one batch behind at most): a recovery after the deletion does not read them
    // again. Deleted before that, the job rightly stops at once ("deleted while the job read
    // it"), which is not what this test is about.
    let batches = |text: &str| text.lines().filter(|l| l.contains(" INFO batch ")).count();
    let seen = batches(&log());
    wait_until(
        "three more batches",
        dir.path(),
        Duration::from_secs(30),
        || batches(&log()) >= seen + 3,
    );
    delete_topic(&servers, &topic);
    wait_until(
        "a message naming the missing topic",
        dir.path(),
        Duration::from_secs(30),
        || log().contains(&format!("topic {topic} does not exist")),
    );
    create_topic(&servers, &topic, 1);
    produce(&servers, &topic, &[(0, None, "new")]);
    let status = {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = job.try_wait().expect("wait") {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the job went on: {}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(!status.success());
    assert!(
        log().contains("deleted and created again"),
        "the reason is not in the log: {}",
        log()
    );
    assert_eq!(file_lines(dir.path()), vec!["a", "b", "c"]);
}

#[test]
fn sasl_scram_credentials_come_from_the_environment_and_a_refusal_is_named() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let data = tempfile::tempdir().expect("tempdir");
    let broker = KafkaBroker::start_with_scram(data.path(), "alice", "alice-secret")
        .expect("a SCRAM broker");
    let servers = broker.bootstrap();
    let mut admin_config = ClientConfig::new();
    admin_config
        .set("bootstrap.servers", &servers)
        .set("sasl.username", "alice")
        .set("sasl.password", "alice-secret");
    for (k, v) in broker.client_properties() {
        admin_config.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = admin_config.create().expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for r in rt
        .block_on(admin.create_topics(
            &[NewTopic::new("secure", 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        ))
        .expect("create")
    {
        r.expect("topic");
    }
    let producer: rdkafka::producer::BaseProducer = admin_config.create().expect("producer");
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(1)).ok();
    for v in ["s1", "s2"] {
        producer
            .send(rdkafka::producer::BaseRecord::<(), str>::to("secure").payload(v))
            .expect("send");
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).expect("flush");

    let run = |password: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let manifest = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: secure}}\nspec:\n  batchInterval: 100ms\n  sources:\n    - name: in\n      kafka:\n        bootstrapServers: \"{servers}\"\n        topics: [secure]\n        startingOffsets: earliest\n        properties: {{security.protocol: SASL_PLAINTEXT, sasl.mechanism: SCRAM-SHA-256}}\n  sinks: [{{stdout: {{limit: 10}}}}]\n"
        );
        let path = dir.path().join("job.yaml");
        std::fs::write(&path, manifest).expect("manifest");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("run")
            .arg(&path)
            .args(["--batches", "3"])
            .env("SLUICE_LOG", "info")
            .env("SLUICE_KAFKA_SASL_USERNAME", "alice")
            .env("SLUICE_KAFKA_SASL_PASSWORD", password);
        // A refused login is retried for ever: stop it once it says so.
        let (_, stdout, stderr) =
            run_until(cmd, "refused the credentials", Duration::from_secs(40));
        (stdout, stderr)
    };
    let (stdout, stderr) = run("alice-secret");
    assert!(
        stdout.contains("s1") && stdout.contains("s2"),
        "{stdout}\n{stderr}"
    );
    let (_, stderr) = run("wrong-secret");
    assert!(
        stderr.contains("refused the credentials"),
        "the refusal is not named: {stderr}"
    );
    assert!(
        !stderr.contains("wrong-secret"),
        "the password reached the log"
    );

    // The sink's transactional producer names the refusal too (librdkafka reports it on the
    // side, not as the failed call's error).
    let refused = KafkaSink::new(
        KafkaClient::new(&servers)
            .property("security.protocol", "SASL_PLAINTEXT")
            .property("sasl.mechanism", "SCRAM-SHA-256")
            .property("sasl.username", "alice")
            .property("sasl.password", "wrong-secret"),
        "secure",
        "test.secure",
        Delivery::ExactlyOnce,
    )
    .write_partitions(
        &BatchInfo::new(1_000_000, 100, 1),
        vec![(0, messages(1, 0, 1))],
        false,
    );
    let message = format!("{:#}", refused.expect_err("a refused login wrote"));
    assert!(
        message.contains("refused the credentials"),
        "the sink's refusal is not named: {message}"
    );
}

#[test]
fn tls_in_and_out_with_the_ca_from_properties_and_a_wrong_ca_is_named() {
    let data = tempfile::tempdir().expect("tempdir");
    let broker = KafkaBroker::start_with_tls(data.path()).expect("a TLS broker");
    let plain = broker.bootstrap();
    let tls = broker.tls_bootstrap().expect("a TLS listener");
    create_topic(&plain, "tls-in", 2);
    create_topic(&plain, "tls-out", 2);
    produce(&plain, "tls-in", &[(0, None, "a b"), (1, None, "b c")]);
    // Another CA, which did not sign the broker's certificate.
    let stranger = sluice_e2e::pki::Pki::generate(&data.path().join("stranger"))
        .expect("a CA")
        .ca_cert;

    let run = |source: &str,
               source_ca: &std::path::Path,
               sink_ca: &std::path::Path,
               wanted: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls_props = |ca: &std::path::Path| {
            format!(
                "properties: {{security.protocol: SSL, ssl.ca.location: \"{}\"}}",
                ca.display()
            )
        };
        let source_props = if source == tls {
            tls_props(source_ca)
        } else {
            "properties: {}".into()
        };
        let manifest = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: tls}}\nspec:\n  batchInterval: 100ms\n  sources:\n    - name: in\n      kafka: {{bootstrapServers: \"{source}\", topics: [tls-in], startingOffsets: earliest, {source_props}}}\n  pipeline:\n    - flatMap: {{split: \" \"}}\n    - countByValue: {{}}\n    - updateStateByKey: {{op: sum}}\n  sinks:\n    - kafka: {{bootstrapServers: \"{tls}\", topic: tls-out, {sink_props}}}\n  checkpoint: {{uri: \"file://{ckpt}\"}}\n",
            sink_props = tls_props(sink_ca),
            ckpt = dir.path().join("ckpt").display(),
        );
        let path = dir.path().join("job.yaml");
        std::fs::write(&path, manifest).expect("manifest");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("run")
            .arg(&path)
            .args(["--batches", "3", "--no-wait"])
            .env("SLUICE_LOG", "warn");
        let (ok, _, stderr) = run_until(cmd, wanted, Duration::from_secs(60));
        (ok, stderr)
    };

    let ca = broker.ca_cert();
    let (ok, stderr) = run(&tls, &ca, &ca, "");
    assert!(ok, "the job over TLS failed: {stderr}");
    let batches = by_batch(&plain, "tls-out");
    let last = batches.values().next_back().expect("output over TLS");
    let totals: Vec<&str> = last.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(totals.len(), 3, "{batches:?}");

    // A CA that did not sign the brokers' certificates: the source says so, and so does the
    // sink (its source on the plaintext listener).
    for (source, what) in [(tls.as_str(), "source"), (plain.as_str(), "sink")] {
        let (ok, stderr) = run(source, &stranger, &stranger, "TLS handshake");
        assert!(!ok, "the {what} trusted a stranger's CA");
        assert!(
            stderr.contains("the TLS handshake with the Kafka brokers")
                && stderr.contains("ssl.ca.location"),
            "the {what}'s handshake failure is not named: {stderr}"
        );
    }
    assert_eq!(
        by_batch(&plain, "tls-out").len(),
        batches.len(),
        "a failed run wrote"
    );
}
