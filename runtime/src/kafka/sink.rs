//! The Kafka sink. Exactly once: each job partition of each batch is one Kafka transaction,
//! under a transactional id stable per job, topic and partition, so a producer left over from
//! before a failover is fenced by the broker. The transaction also commits a *mark*, the
//! batch's time, as the offset of a consumer group of that partition; a batch run again after
//! a failure first reads the mark, and a batch Kafka already holds is not written again.
//! Readers with `isolation.level=read_committed` see every batch once.
//!
//! At least once: one idempotent producer; a batch run again may be written twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::client::{Cause, KafkaClient, REQUEST_TIMEOUT, Watch, describe_with};
use crate::error::{Error, Result};
use crate::exec::lock_unpoisoned;
use crate::sink::Sink;
use crate::time::BatchInfo;

/// The header every message carries: the index of the batch that wrote it (1, 2, ...), so a
/// reader can tell batches apart.
pub const BATCH_HEADER: &str = "sluice-batch";

/// One message to write.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaMessage {
    pub key: Option<String>,
    pub value: String,
}

/// What readers may see after failures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Delivery {
    /// Each batch's partition in one transaction; a batch Kafka holds is not written again.
    #[default]
    ExactlyOnce,
    /// No transactions: a batch run again may be written twice.
    AtLeastOnce,
}

/// Counts failed deliveries (the default context drops them) and keeps what the client
/// reports on its own.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    watch: Watch,
}

impl ClientContext for Deliveries {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.watch.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.watch.error(error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            lock_unpoisoned(&self.first_error).get_or_insert_with(|| e.to_string());
        }
    }
}

type Producer_ = BaseProducer<Deliveries>;

/// A partition's transactional producer and what Kafka already holds of it.
struct Writer {
    producer: Producer_,
    /// The client of the partition's consumer group, which holds the mark.
    marks: BaseConsumer<Watch>,
    /// The time of the newest batch Kafka holds for this partition.
    written: Option<i64>,
}

/// Writes a stream of [`KafkaMessage`]s to a topic.
pub struct KafkaSink {
    client: KafkaClient,
    topic: String,
    delivery: Delivery,
    /// Transactional ids and mark groups are `<prefix>.p<partition>`.
    prefix: String,
    writers: Mutex<HashMap<usize, Arc<Mutex<Option<Writer>>>>>,
    plain: Mutex<Option<Arc<Producer_>>>,
}

impl KafkaSink {
    /// Writes to `topic`; `prefix` names the job (and sink): ids and mark groups derive from
    /// it, so it must stay the same across restarts and differ between jobs.
    pub fn new(client: KafkaClient, topic: &str, prefix: &str, delivery: Delivery) -> Self {
        Self {
            client,
            topic: topic.to_string(),
            delivery,
            prefix: prefix.to_string(),
            writers: Mutex::new(HashMap::new()),
            plain: Mutex::new(None),
        }
    }

    fn error(&self, message: String) -> Error {
        Error::Output {
            output: format!("kafka topic {}", self.topic),
            message,
        }
    }

    fn client_error(&self, what: &str, e: &KafkaError) -> Error {
        self.explained_error(what, e, None)
    }

    /// `e`, explained by what the client reported on its own when that names a cause.
    fn explained_error(&self, what: &str, e: &KafkaError, cause: Option<Cause>) -> Error {
        self.error(format!(
            "{what}: {}",
            describe_with(e, &self.client.bootstrap_servers, cause)
        ))
    }

    /// A producer's error, explained by what the producer reported on its own (its reports
    /// arrive with a poll).
    fn producer_error(&self, what: &str, producer: &Producer_, e: &KafkaError) -> Error {
        producer.poll(Duration::ZERO);
        self.explained_error(what, e, producer.context().watch.cause())
    }

    fn producer(&self, transactional_id: Option<&str>) -> Result<Producer_> {
        let mut config = self.client.config();
        config
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.type", "lz4");
        if let Some(id) = transactional_id {
            config.set("transactional.id", id);
        }
        config
            .create_with_context(Deliveries::default())
            .map_err(|e| self.client_error("cannot create a Kafka producer", &e))
    }

    /// The partition's writer: a new producer fences every older one with the same id and
    /// aborts what it left open; then the mark says what Kafka holds.
    fn open(&self, part: usize) -> Result<Writer> {
        let id = format!("{}.p{part:04}", self.prefix);
        let producer = self.producer(Some(&id))?;
        producer
            .init_transactions(REQUEST_TIMEOUT)
            .map_err(|e| self.producer_error("cannot start transactions", &producer, &e))?;
        let mut config = self.client.config();
        config
            .set("group.id", &id)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false");
        let marks: BaseConsumer<Watch> = config
            .create_with_context(Watch::default())
            .map_err(|e| self.client_error("cannot create a Kafka client", &e))?;
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, 0);
        // A group coordinator that is just starting or moving answers "not yet": ask again.
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        let committed = loop {
            match marks.committed_offsets(list.clone(), REQUEST_TIMEOUT) {
                Ok(committed) => break committed,
                Err(e)
                    if std::time::Instant::now() < deadline
                        && matches!(
                            e.rdkafka_error_code(),
                            Some(
                                RDKafkaErrorCode::NotCoordinator
                                    | RDKafkaErrorCode::CoordinatorLoadInProgress
                                    | RDKafkaErrorCode::CoordinatorNotAvailable
                            )
                        ) =>
                {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    let what = "cannot read what the topic holds";
                    return Err(self.explained_error(what, &e, marks.context().cause()));
                }
            }
        };
        let written = committed
            .find_partition(&self.topic, 0)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        tracing::debug!(topic = %self.topic, partition = part, ?written, "Kafka sink partition ready");
        Ok(Writer {
            producer,
            marks,
            written,
        })
    }

    fn send_all(
        &self,
        producer: &Producer_,
        batch: &BatchInfo,
        records: &[KafkaMessage],
    ) -> Result<()> {
        let index = batch.index.to_string();
        for r in records {
            let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                key: BATCH_HEADER,
                value: Some(index.as_bytes()),
            });
            let mut record = BaseRecord::to(&self.topic)
                .payload(r.value.as_bytes())
                .headers(headers);
            if let Some(key) = &r.key {
                record = record.key(key.as_bytes());
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(self.client_error("cannot send a record", &e)),
                }
            }
        }
        Ok(())
    }

    /// One transaction: the partition's records and its mark.
    fn write_transaction(
        &self,
        writer: &mut Writer,
        batch: &BatchInfo,
        records: &[KafkaMessage],
    ) -> Result<()> {
        let time = i64::try_from(batch.time_ms).unwrap_or(i64::MAX);
        let producer = &writer.producer;
        producer
            .begin_transaction()
            .map_err(|e| self.producer_error("cannot begin a transaction", producer, &e))?;
        let result = (|| {
            self.send_all(producer, batch, records)?;
            let mut mark = TopicPartitionList::new();
            mark.add_partition_offset(&self.topic, 0, Offset::Offset(time))
                .map_err(|e| self.client_error("cannot mark the batch", &e))?;
            let group = writer
                .marks
                .group_metadata()
                .ok_or_else(|| self.error("the mark's group is missing".into()))?;
            producer
                .send_offsets_to_transaction(&mark, &group, REQUEST_TIMEOUT)
                .map_err(|e| self.producer_error("cannot mark the batch", producer, &e))?;
            producer
                .commit_transaction(REQUEST_TIMEOUT)
                .map_err(|e| self.producer_error("cannot commit the transaction", producer, &e))
        })();
        if result.is_err() {
            let _ = producer.abort_transaction(REQUEST_TIMEOUT);
        }
        result
    }

    fn write_exactly_once(
        &self,
        batch: &BatchInfo,
        part: usize,
        records: &[KafkaMessage],
    ) -> Result<()> {
        // Nothing to write, nothing to mark: a run again writes nothing either.
        if records.is_empty() {
            return Ok(());
        }
        let slot = lock_unpoisoned(&self.writers)
            .entry(part)
            .or_default()
            .clone();
        let mut slot = lock_unpoisoned(&slot);
        if slot.is_none() {
            *slot = Some(self.open(part)?);
        }
        let Some(writer) = slot.as_mut() else {
            return Err(Error::Internal("the partition's writer is missing".into()));
        };
        let time = i64::try_from(batch.time_ms).unwrap_or(i64::MAX);
        if writer.written.is_some_and(|w| w >= time) {
            tracing::info!(topic = %self.topic, partition = part, batch = batch.index, "Kafka already holds this batch; not writing it again");
            return Ok(());
        }
        match self.write_transaction(writer, batch, records) {
            Ok(()) => {
                writer.written = Some(time);
                Ok(())
            }
            Err(e) => {
                // Fenced, or in a state only a new producer leaves: the next attempt opens
                // one (and learns from the mark whether this batch made it after all).
                *slot = None;
                Err(e)
            }
        }
    }

    fn write_at_least_once(
        &self,
        batch: &BatchInfo,
        parts: &[(usize, Vec<KafkaMessage>)],
    ) -> Result<()> {
        let producer = {
            let mut plain = lock_unpoisoned(&self.plain);
            match plain.as_ref() {
                Some(p) => p.clone(),
                None => {
                    let p = Arc::new(self.producer(None)?);
                    *plain = Some(p.clone());
                    p
                }
            }
        };
        for (_, records) in parts {
            self.send_all(&producer, batch, records)?;
        }
        producer
            .flush(REQUEST_TIMEOUT)
            .map_err(|e| self.producer_error("cannot deliver the batch", &producer, &e))?;
        let failed = producer.context().failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            let first = lock_unpoisoned(&producer.context().first_error)
                .take()
                .unwrap_or_default();
            return Err(self.error(format!(
                "{failed} records were not delivered (first: {first})"
            )));
        }
        Ok(())
    }
}

impl Sink<KafkaMessage> for KafkaSink {
    fn name(&self) -> &str {
        "kafka"
    }

    fn write(&self, batch: &BatchInfo, records: Vec<KafkaMessage>) -> Result<()> {
        self.write_partitions(batch, vec![(0, records)], true)
    }

    fn write_partitions(
        &self,
        batch: &BatchInfo,
        parts: Vec<(usize, Vec<KafkaMessage>)>,
        _whole: bool,
    ) -> Result<()> {
        if self.delivery == Delivery::AtLeastOnce {
            return self.write_at_least_once(batch, &parts);
        }
        // Partitions commit independently (each is its own transaction), so they go at once.
        std::thread::scope(|scope| {
            let handles: Vec<_> = parts
                .iter()
                .map(|(part, records)| {
                    scope.spawn(move || self.write_exactly_once(batch, *part, records))
                })
                .collect();
            let mut result = Ok(());
            for handle in handles {
                let outcome = handle
                    .join()
                    .unwrap_or_else(|_| Err(Error::Internal("a Kafka writer panicked".into())));
                if result.is_ok() {
                    result = outcome;
                }
            }
            result
        })
    }
}
