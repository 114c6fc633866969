//! Apache Kafka (and Kafka-protocol brokers): the source, which reads offset ranges planned
//! before each batch and logged with it, and the exactly-once sink, which writes each batch's
//! partition in one transaction. Built on librdkafka (the `rdkafka` crate): transactions,
//! idempotence, SASL and TLS, and the compression codecs users' topics carry.
//!
//! No consumer group takes part in reading: the coordinator decides the ranges, so a replay
//! reads exactly what the first run read. The job's group only receives committed offsets, for
//! the lag tools.

mod client;
pub(crate) mod ranges;
mod sink;
mod source;

pub use client::KafkaClient;
pub use ranges::{OffsetRange, TopicPartition};
pub use sink::{BATCH_HEADER, Delivery, KafkaMessage, KafkaSink};
pub use source::{KafkaRecord, KafkaSource, StartingOffsets};
