//! Client helpers for tests against a real broker: topics, a producer and a `read_committed`
//! reader. They block (each call runs its own small runtime) and panic on failure, as test
//! helpers do; from async code call them through `spawn_blocking`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Creates `topic` with `partitions` partitions.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let results = block_on(admin(bootstrap).create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
    ))
    .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
    wait_for_leaders(bootstrap, topic, partitions);
}

/// Raises `topic` to `partitions` partitions.
pub fn add_partitions(bootstrap: &str, topic: &str, partitions: usize) {
    let results = block_on(admin(bootstrap).create_partitions(
        &[NewPartitions::new(topic, partitions)],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
    ))
    .expect("create partitions");
    for r in results {
        r.expect("partitions added");
    }
    wait_for_leaders(bootstrap, topic, partitions as i32);
}

/// Deletes `topic`.
pub fn delete_topic(bootstrap: &str, topic: &str) {
    let results = block_on(admin(bootstrap).delete_topics(
        &[topic],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
    ))
    .expect("delete topics");
    for r in results {
        r.expect("topic deleted");
    }
}

fn wait_for_leaders(bootstrap: &str, topic: &str, partitions: i32) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                let t = m.topics().iter().find(|t| t.name() == topic)?;
                Some(
                    t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0),
                )
            })
            .unwrap_or(false);
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "topic {topic} has no leaders");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A producer that waits for every record (`acks=all`).
pub fn producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()
        .expect("producer")
}

/// Writes `(partition, key, value)` records and waits until the broker holds them.
pub fn produce(bootstrap: &str, topic: &str, records: &[(i32, Option<&str>, &str)]) {
    let p = producer(bootstrap);
    for (partition, key, value) in records {
        let mut r = BaseRecord::to(topic).partition(*partition).payload(*value);
        if let Some(k) = key {
            r = r.key(*k);
        }
        send(&p, r).unwrap_or_else(|e| panic!("send: {e}"));
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// Hands `record` to `producer`, waiting while its local queue is full.
pub fn send<K, P>(
    producer: &BaseProducer,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(_), back)) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// One record as a reader sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Read {
    pub offset: i64,
    pub key: Option<String>,
    pub value: String,
    /// The `sluice-batch` header, when the record has one.
    pub batch: Option<u64>,
}

/// Every record of `topic` a `read_committed` reader sees, by partition.
pub fn read_committed(bootstrap: &str, topic: &str) -> BTreeMap<i32, Vec<Read>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("group.id", "sluice-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("assign");
    }
    c.assign(&list).expect("assign");
    let mut open: std::collections::BTreeSet<i32> = partitions.iter().copied().collect();
    let mut out: BTreeMap<i32, Vec<Read>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !open.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} took over 60 s");
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                use rdkafka::message::Headers;
                let batch = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "sluice-batch")
                        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
                });
                out.entry(m.partition()).or_default().push(Read {
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    batch,
                })
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => panic!("read {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// Just the values a `read_committed` reader sees, partitions in order.
pub fn committed_values(bootstrap: &str, topic: &str) -> Vec<String> {
    read_committed(bootstrap, topic)
        .into_values()
        .flatten()
        .map(|r| r.value)
        .collect()
}

/// A topic's records by batch (the `sluice-batch` header), each batch's (key, value) sorted.
pub fn by_batch(bootstrap: &str, topic: &str) -> BTreeMap<u64, Vec<(Option<String>, String)>> {
    let mut out: BTreeMap<u64, Vec<(Option<String>, String)>> = BTreeMap::new();
    for r in read_committed(bootstrap, topic).into_values().flatten() {
        let batch = r.batch.expect("every record names its batch");
        out.entry(batch).or_default().push((r.key, r.value));
    }
    out.values_mut().for_each(|v| v.sort());
    out
}
