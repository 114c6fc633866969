//! The Kafka source, the direct approach: before each batch the coordinator asks the brokers
//! for the newest committed offsets and plans one `[from, until)` range per topic-partition;
//! the ranges go to the offset log before the batch runs, and the job's partitions read
//! exactly them. A replay reads the logged ranges again, so results are exactly once.
//!
//! Reads use `isolation.level=read_committed`: planning stops at each partition's last stable
//! offset, so a range never holds an open transaction and a replay sees the same records.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use super::client::{Cause, KafkaClient, REQUEST_TIMEOUT, Watch, describe, describe_with};
use super::ranges::{self, OffsetRange, TopicPartition};
use crate::error::{Error, Result};
use crate::source::{MAX_LINE_BYTES, Refusals, Source};
use crate::time::BatchInfo;

/// How long a read may go without a record or the end of a range before the batch fails (and
/// is retried after a back-off): the brokers may be restarting.
const READ_STALL: Duration = Duration::from_secs(60);

/// Batches whose planned offsets are kept until they commit, for the consumer group.
const PLANNED_KEPT: usize = 256;

/// How often a read asks the brokers where a partition's log ends, when the client reports
/// an end before the planned range's: a log truncated under the job is found within it.
const END_CHECK_EVERY: Duration = Duration::from_secs(1);

/// One Kafka record as it reaches a stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KafkaRecord {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch (creation or log-append time, as the topic says).
    pub timestamp: Option<i64>,
    pub key: Option<String>,
    pub value: String,
}

/// Where a job that has never run starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartingOffsets {
    /// The oldest records the brokers still hold.
    Earliest,
    /// Only records written after the job starts.
    #[default]
    Latest,
    /// The first record at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// Reads topics of a Kafka cluster.
pub struct KafkaSource {
    name: String,
    client: KafkaClient,
    topics: Vec<String>,
    starting: StartingOffsets,
    group_id: String,
    max_rate_per_partition: Option<u64>,
    /// The rate controller's bound for the whole source, records per second.
    rate_limit: Option<f64>,
    /// The next offset to plan, by topic-partition; `None` until the first plan or seek.
    next: Option<BTreeMap<TopicPartition, i64>>,
    /// Offsets after each planned batch, until it commits.
    planned: VecDeque<(u64, BTreeMap<TopicPartition, i64>)>,
    planner: Option<BaseConsumer<Watch>>,
    readers: HashMap<String, Reader>,
    /// Bytes of keys and values handed on, for the metrics.
    bytes_read: u64,
    /// Records past the last plan's ranges, as the brokers' ends stood then.
    backlog: Option<u64>,
}

impl KafkaSource {
    /// Reads `topics` through `client`; offsets are committed to `group_id` after each batch.
    pub fn new(name: &str, client: KafkaClient, topics: &[&str], group_id: &str) -> Self {
        Self {
            name: name.to_string(),
            client,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            starting: StartingOffsets::default(),
            group_id: group_id.to_string(),
            max_rate_per_partition: None,
            rate_limit: None,
            next: None,
            planned: VecDeque::new(),
            planner: None,
            bytes_read: 0,
            backlog: None,
            readers: HashMap::new(),
        }
    }

    /// Where a job that has never run starts (default: latest).
    pub fn starting_at(mut self, starting: StartingOffsets) -> Self {
        self.starting = starting;
        self
    }

    /// At most this many records per second of batch interval from each topic-partition.
    pub fn max_rate_per_partition(mut self, rate: Option<u64>) -> Self {
        self.max_rate_per_partition = rate.filter(|r| *r > 0);
        self
    }

    fn error(&self, message: String) -> Error {
        Error::Source {
            source_name: self.name.clone(),
            message,
        }
    }

    fn client_error(&self, what: &str, e: &KafkaError) -> Error {
        // Errors the client reported on its own arrive with a poll.
        let cause = self.planner.as_ref().and_then(|p| {
            let mut found = None;
            for _ in 0..16 {
                match p.poll(Duration::ZERO) {
                    None => break,
                    Some(Err(e)) => {
                        found = Cause::of(e.rdkafka_error_code(), &e.to_string()).or(found);
                    }
                    Some(_) => {}
                }
            }
            found.or_else(|| p.context().cause())
        });
        self.error(format!(
            "{what}: {}",
            describe_with(e, &self.client.bootstrap_servers, cause)
        ))
    }

    /// A range that cannot be read again: the job cannot go on without losing records.
    fn lost(&self, message: String) -> Error {
        Error::Config(format!("source {}: {message}", self.name))
    }

    /// A client that reads committed records only.
    fn consumer(&self, group: Option<&str>) -> Result<BaseConsumer<Watch>> {
        let mut config = self.client.config();
        config
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "error")
            // A full local queue pauses fetching for this long (1 s by default): a batch that
            // drains it must not wait that long for more.
            .set("fetch.queue.backoff.ms", "10")
            // librdkafka backs off after reaching a partition's end as after an error (500 ms
            // by default), and a batch reads up to an end planned a moment before.
            .set("fetch.error.backoff.ms", "20");
        if let Some(group) = group {
            config.set("group.id", group);
        }
        config
            .create_with_context(Watch::default())
            .map_err(|e| self.client_error("cannot create a Kafka client", &e))
    }

    /// The client that plans (metadata, offsets) and commits to the job's group, made once.
    fn planner(&mut self) -> Result<&BaseConsumer<Watch>> {
        if self.planner.is_none() {
            self.planner = Some(self.consumer(Some(&self.group_id))?);
        }
        self.planner
            .as_ref()
            .ok_or_else(|| Error::Internal("the planning client is missing".into()))
    }

    /// Every partition of the topics, from the brokers' metadata.
    fn partitions(&mut self) -> Result<Vec<TopicPartition>> {
        let topics = self.topics.clone();
        let mut all = Vec::new();
        for topic in &topics {
            let metadata = self.planner()?.fetch_metadata(Some(topic), REQUEST_TIMEOUT);
            let metadata = metadata
                .map_err(|e| self.client_error(&format!("cannot read topic {topic}"), &e))?;
            let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return Err(self.error(format!("the brokers did not describe topic {topic}")));
            };
            if let Some(e) = t.error() {
                let code = RDKafkaErrorCode::from(e);
                return Err(if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                    self.error(format!(
                        "topic {topic} does not exist at {}; create it or correct the source's topics (the job retries until it exists)",
                        self.client.bootstrap_servers
                    ))
                } else {
                    self.error(format!("cannot read topic {topic}: {code}"))
                });
            }
            all.extend(
                t.partitions()
                    .iter()
                    .map(|p| TopicPartition::new(topic, p.id())),
            );
        }
        all.sort();
        Ok(all)
    }

    /// The offset of each partition at `at` (a time, or `Offset::Beginning` / `Offset::End`,
    /// where the end is the last stable offset under `read_committed`).
    fn offsets(&mut self, tps: &[TopicPartition], at: Offset) -> Result<Vec<i64>> {
        if tps.is_empty() {
            return Ok(Vec::new());
        }
        let mut list = TopicPartitionList::new();
        for tp in tps {
            list.add_partition_offset(&tp.topic, tp.partition, at)
                .map_err(|e| self.client_error("cannot list offsets", &e))?;
        }
        let answer = self.planner()?.offsets_for_times(list, REQUEST_TIMEOUT);
        let answer = answer.map_err(|e| self.client_error("cannot list offsets", &e))?;
        let mut out = Vec::with_capacity(tps.len());
        for tp in tps {
            let element = answer
                .find_partition(&tp.topic, tp.partition)
                .ok_or_else(|| self.error(format!("the brokers gave no offset for {tp}")))?;
            if let Err(e) = element.error() {
                return Err(self.client_error(&format!("cannot list the offsets of {tp}"), &e));
            }
            out.push(match element.offset() {
                Offset::Offset(o) => o,
                // No record at or after the time: start at the end.
                Offset::End => match at {
                    Offset::Offset(_) => -1,
                    _ => {
                        return Err(self.error(format!("the brokers gave no offset for {tp}")));
                    }
                },
                other => {
                    return Err(self.error(format!("the brokers gave offset {other:?} for {tp}")));
                }
            });
        }
        Ok(out)
    }

    /// The most each partition may give the next batch: `maxRatePerPartition`, and the rate
    /// controller's bound shared by the partitions in proportion to their backlogs (as Spark's
    /// direct stream does), at least one record where there is a backlog.
    fn caps(
        &self,
        tps: &[TopicPartition],
        ends: &[i64],
        next: &BTreeMap<TopicPartition, i64>,
        interval_ms: u64,
    ) -> Vec<Option<i64>> {
        let lags: Vec<f64> = tps
            .iter()
            .zip(ends)
            .map(|(tp, end)| match next.get(tp) {
                Some(from) if *from >= 0 => (end - from).max(0) as f64,
                _ => 0.0,
            })
            .collect();
        let total: f64 = lags.iter().sum();
        lags.iter()
            .map(|lag| {
                let by_controller = self
                    .rate_limit
                    .filter(|_| total > 0.0)
                    .map(|rate| rate * lag / total);
                let by_setting = self.max_rate_per_partition.map(|r| r as f64);
                let rate = match (by_controller, by_setting) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }?;
                // Whole products stay exact: 100/s over 100 ms is 10, not 9.999.
                Some(((rate * interval_ms as f64 / 1000.0).floor() as i64).max(1))
            })
            .collect()
    }

    fn read_topic(
        &mut self,
        topic: &str,
        pieces: &[(usize, OffsetRange)],
        out: &mut [Vec<KafkaRecord>],
        refused: &mut Refusals,
    ) -> Result<()> {
        // One piece's bounds per partition of the topic: pieces of one partition are adjacent,
        // so they are read as one span and each record goes to the piece holding its offset.
        let mut spans: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for (_, r) in pieces {
            let span = spans.entry(r.tp.partition).or_insert((r.from, r.until));
            span.0 = span.0.min(r.from);
            span.1 = span.1.max(r.until);
        }
        if !self.readers.contains_key(topic) {
            // librdkafka assigns only in a group; the reader never joins or commits to it.
            let consumer = self.consumer(Some(&self.group_id))?;
            self.readers.insert(
                topic.to_string(),
                Reader {
                    consumer,
                    covered: BTreeMap::new(),
                    ahead: BTreeMap::new(),
                },
            );
        }
        let Some(mut reader) = self.readers.remove(topic) else {
            return Err(Error::Internal("the reading client is missing".into()));
        };
        let result = self.read_spans(topic, &mut reader, &spans, pieces, out, refused);
        match result {
            Ok(bytes) => self.bytes_read += bytes,
            Err(_) => {
                // What the client holds is no longer known to follow on: assign afresh.
                reader.covered.clear();
                reader.ahead.clear();
            }
        }
        self.readers.insert(topic.to_string(), reader);
        result.map(drop)
    }

    /// Reads `spans` (partition → `[from, until)`) with `reader`. When every span starts where
    /// the reader's last one ended, the client goes on as it is, with what it fetched ahead;
    /// returns the bytes of the keys and values handed on.
    /// otherwise it is assigned the spans afresh.
    fn read_spans(
        &self,
        topic: &str,
        reader: &mut Reader,
        spans: &BTreeMap<i32, (i64, i64)>,
        pieces: &[(usize, OffsetRange)],
        out: &mut [Vec<KafkaRecord>],
        refused: &mut Refusals,
    ) -> Result<u64> {
        let follows_on = spans
            .iter()
            .all(|(p, (from, _))| reader.covered.get(p) == Some(from));
        if !follows_on {
            let mut list = TopicPartitionList::new();
            for (partition, (from, _)) in spans {
                list.add_partition_offset(topic, *partition, Offset::Offset(*from))
                    .map_err(|e| self.client_error("cannot assign partitions", &e))?;
            }
            reader
                .consumer
                .assign(&list)
                .map_err(|e| self.client_error("cannot assign partitions", &e))?;
            reader.covered = spans.iter().map(|(p, (from, _))| (*p, *from)).collect();
            reader.ahead.clear();
        }
        let topic_name: Arc<str> = Arc::from(topic);
        let mut open: BTreeMap<i32, i64> =
            spans.iter().map(|(p, (_, until))| (*p, *until)).collect();
        let mut overflowed = std::collections::BTreeSet::new();
        // Each partition's span end and pieces, looked up once per record (a topic may have
        // hundreds of partitions).
        let mut by_partition: HashMap<i32, (i64, Vec<Piece>)> = spans
            .iter()
            .map(|(p, (_, until))| (*p, (*until, Vec::new())))
            .collect();
        for (part, r) in pieces {
            if let Some((_, in_partition)) = by_partition.get_mut(&r.tp.partition) {
                in_partition.push((r.from, r.until, *part));
            }
        }
        let mut bytes = 0u64;
        // A record goes to the piece holding its offset, or ahead when past the span.
        let mut place = |partition: i32, offset: i64, fetched: Fetched, reader: &mut Reader| {
            let this = by_partition.get(&partition);
            let end = this
                .map(|(end, _)| *end)
                .or_else(|| reader.covered.get(&partition).copied());
            if end.is_some_and(|end| offset >= end) {
                let ahead = reader.ahead.entry(partition).or_default();
                if ahead.len() < AHEAD_KEPT {
                    ahead.push_back((offset, fetched));
                } else {
                    // Too far ahead to keep: the next range of it starts afresh.
                    reader.ahead.remove(&partition);
                    reader.covered.remove(&partition);
                    overflowed.insert(partition);
                }
                return;
            }
            let piece = this.and_then(|(_, ps)| {
                ps.iter()
                    .find(|(from, until, _)| *from <= offset && offset < *until)
            });
            match (piece, fetched) {
                (Some((_, _, part)), Fetched::Record(r)) => {
                    bytes += (r.value.len() + r.key.as_ref().map_or(0, String::len)) as u64;
                    out[*part].push(r)
                }
                (Some(_), Fetched::Refused(why)) => refused.push(why),
                // Between two pieces another worker reads.
                (None, _) => {}
            }
        };
        // First what was fetched ahead last time.
        for (partition, (_, until)) in spans {
            let Some(mut ahead) = reader.ahead.remove(partition) else {
                continue;
            };
            while let Some((offset, fetched)) = ahead.pop_front() {
                if offset >= *until {
                    ahead.push_front((offset, fetched));
                    break;
                }
                if offset + 1 >= *until {
                    open.remove(partition);
                }
                place(*partition, offset, fetched, reader);
            }
            if !ahead.is_empty() {
                // Seen past the end: the span is whole.
                open.remove(partition);
                reader.ahead.insert(*partition, ahead);
            }
        }
        let mut last_progress = Instant::now();
        // When each partition's log end was last asked of the brokers (see below).
        let mut ends_checked: HashMap<i32, Instant> = HashMap::new();
        while !open.is_empty() {
            if last_progress.elapsed() > READ_STALL {
                let waiting: Vec<String> = open.keys().map(|p| format!("{topic}[{p}]")).collect();
                return Err(self.error(format!(
                    "no records from {} for {}s; the brokers at {} may be down (the batch is retried)",
                    waiting.join(", "),
                    READ_STALL.as_secs(),
                    self.client.bootstrap_servers
                )));
            }
            let Some(event) = reader.consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            // Only records and ends count as progress: errors repeat while brokers are away.
            if matches!(event, Ok(_) | Err(KafkaError::PartitionEOF(_))) {
                last_progress = Instant::now();
            }
            let message = match event {
                Ok(message) => message,
                Err(KafkaError::PartitionEOF(partition)) => {
                    // The end of what can be read. Planning stopped at or before it, and a
                    // partition's end never moves back: a log that now ends inside the range
                    // is another log (the topic was created again) or was truncated.
                    let Some(until) = open.remove(&partition) else {
                        continue;
                    };
                    let position = reader
                        .consumer
                        .position()
                        .ok()
                        .and_then(|l| l.find_partition(topic, partition).map(|e| e.offset()));
                    let reached = match position {
                        Some(Offset::Offset(o)) => o,
                        _ => spans.get(&partition).map_or(0, |s| s.0),
                    };
                    if reached < until {
                        // An end reached in an earlier batch may be reported only now (the
                        // client reports one at every fetch that finds the end, and a client
                        // that follows a busy topic finds it many times a second): the log
                        // itself says whether it ends before the range. Asked once a second
                        // at most per partition: a round trip for every stale report made
                        // each batch wait most of a second for records it already held.
                        let recently = ends_checked
                            .get(&partition)
                            .is_some_and(|at| at.elapsed() < END_CHECK_EVERY);
                        if recently {
                            open.insert(partition, until);
                            continue;
                        }
                        ends_checked.insert(partition, Instant::now());
                        let end = reader
                            .consumer
                            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                            .map_err(|e| self.client_error("cannot list offsets", &e))?
                            .1;
                        if end >= until {
                            open.insert(partition, until);
                            continue;
                        }
                        return Err(self.lost(format!(
                            "{topic}[{partition}] now ends at offset {reached}, inside the range [.., {until}) this batch planned: the topic was deleted and created again, or truncated, and its records cannot be read again. Start the job over with a new checkpoint"
                        )));
                    }
                    continue;
                }
                Err(KafkaError::MessageConsumption(code)) => match code {
                    RDKafkaErrorCode::OffsetOutOfRange => {
                        return Err(self.lost(format!(
                            "records of topic {topic} planned for this batch were deleted by the brokers (retention) before they could be read; the job cannot go on exactly. Raise the topic's retention, then start the job over with a new checkpoint"
                        )));
                    }
                    RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
                    | RDKafkaErrorCode::UnknownPartition => {
                        return Err(self.lost(format!(
                            "topic {topic} was deleted while the job read it; its planned records cannot be read again. Start the job over with a new checkpoint"
                        )));
                    }
                    RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::Authentication => {
                        return Err(self.client_error(
                            &format!("cannot read topic {topic}"),
                            &KafkaError::MessageConsumption(code),
                        ));
                    }
                    // Brokers restarting, connections dropped, leaders moving: the client
                    // reconnects on its own; a read that stays stuck fails after READ_STALL.
                    other => {
                        tracing::debug!(source = %self.name, %topic, error = %other, "waiting for the brokers");
                        continue;
                    }
                },
                Err(e) => return Err(self.client_error(&format!("cannot read topic {topic}"), &e)),
            };
            let partition = message.partition();
            let offset = message.offset();
            if let Some(until) = open.get(&partition).copied()
                && offset + 1 >= until
            {
                open.remove(&partition);
            }
            let fetched = fetched(&topic_name, &message);
            place(partition, offset, fetched, reader);
        }
        for (partition, (_, until)) in spans {
            // A partition whose read-ahead overflowed was dropped from `covered`: it starts
            // afresh next time.
            if !overflowed.contains(partition) {
                reader.covered.insert(*partition, *until);
            }
        }
        Ok(bytes)
    }
}

/// A piece of a partition's span: `[from, until)` and the job partition it goes to.
type Piece = (i64, i64, usize);

/// Records fetched past a span's end are kept for the next batch, up to this many per
/// partition (the client fetches ahead by about as many).
const AHEAD_KEPT: usize = 200_000;

/// A topic's reading client, and where it stands.
struct Reader {
    consumer: BaseConsumer<Watch>,
    /// For each assigned partition, the end of the last span read.
    covered: BTreeMap<i32, i64>,
    /// Records fetched past a span's end, in offset order, for the span that follows on.
    ahead: BTreeMap<i32, VecDeque<(i64, Fetched)>>,
}

/// A message as the source hands it on, or why it cannot.
enum Fetched {
    Record(KafkaRecord),
    Refused(String),
}

fn fetched(topic: &Arc<str>, message: &rdkafka::message::BorrowedMessage<'_>) -> Fetched {
    let (partition, offset) = (message.partition(), message.offset());
    // Formatted only for a refusal: most records are not.
    let at = || format!("{topic}[{partition}] offset {offset}");
    let value = match message.payload().map(std::str::from_utf8) {
        None => String::new(),
        Some(Ok(text)) if text.len() <= MAX_LINE_BYTES => text.to_string(),
        Some(Ok(text)) => {
            return Fetched::Refused(format!(
                "{}: a value of {} bytes, over the limit of {MAX_LINE_BYTES}",
                at(),
                text.len()
            ));
        }
        Some(Err(_)) => return Fetched::Refused(format!("{}: the value is not UTF-8 text", at())),
    };
    let key = match message.key().map(std::str::from_utf8) {
        None => None,
        Some(Ok(text)) if text.len() <= MAX_LINE_BYTES => Some(text.to_string()),
        Some(_) => {
            return Fetched::Refused(format!(
                "{}: the key is not UTF-8 text of at most {MAX_LINE_BYTES} bytes",
                at()
            ));
        }
    };
    Fetched::Record(KafkaRecord {
        topic: topic.clone(),
        partition,
        offset,
        timestamp: message.timestamp().to_millis(),
        key,
        value,
    })
}

impl Source for KafkaSource {
    type Item = KafkaRecord;

    fn name(&self) -> &str {
        &self.name
    }

    fn replayable(&self) -> bool {
        true
    }

    fn plan(&mut self, batch: &BatchInfo) -> Result<Json> {
        let tps = self.partitions()?;
        let ends = self.offsets(&tps, Offset::End)?;
        let starts = self.offsets(&tps, Offset::Beginning)?;
        let mut refused = Refusals::default();
        let first = self.next.is_none();
        // Planned on a copy: a plan that fails moves nothing.
        let mut next = self.next.clone().unwrap_or_default();
        // Partitions the position does not hold: all of them on the first batch (where the
        // source says), new ones later (from their start, so nothing written to them is missed).
        let fresh: Vec<TopicPartition> = tps
            .iter()
            .filter(|tp| !next.contains_key(*tp))
            .cloned()
            .collect();
        if !fresh.is_empty() {
            let at = match (first, self.starting) {
                (true, StartingOffsets::Latest) => Offset::End,
                (true, StartingOffsets::Timestamp(ms)) => Offset::Offset(ms),
                _ => Offset::Beginning,
            };
            let fresh_starts = self.offsets(&fresh, at)?;
            for (tp, start) in fresh.into_iter().zip(fresh_starts) {
                if !first {
                    tracing::info!(source = %self.name, partition = %tp, "a new partition; reading it from its start");
                }
                next.insert(tp, start);
            }
        }
        let caps = self.caps(&tps, &ends, &next, batch.interval_ms);
        let mut planned = Vec::new();
        let mut backlog = 0u64;
        for (((tp, end), start), cap) in tps.iter().zip(&ends).zip(&starts).zip(caps) {
            let Some(from) = next.get(tp).copied() else {
                continue;
            };
            // A start at the end (-1: no record after the starting time) waits for records.
            let mut from = if from < 0 { *end } else { from };
            if from > *end {
                // The log ends before where the job stands: the topic was deleted and created
                // again, or truncated. Which records were missed cannot be known.
                let e = self.lost(format!(
                    "{tp} ends at offset {end}, before the job's position {from}: the topic was deleted and created again, or truncated, and the job cannot tell which records it missed. Start the job over with a new checkpoint (startingOffsets says where it begins)"
                ));
                return Err(e);
            }
            if from < *start {
                // Deleted (retention) before any batch planned them: they are in no batch, and
                // the job says so rather than fail for ever.
                let lost = u64::try_from(start - from).unwrap_or(0);
                tracing::error!(source = %self.name, partition = %tp, from, start, "records were deleted by the brokers before the job read them");
                refused.push_many(
                    lost,
                    format!("{tp}: offsets {from}..{start} were deleted by the brokers (retention) before the job read them"),
                );
                from = *start;
            }
            let until = match cap {
                Some(cap) => (*end).min(from.saturating_add(cap)),
                None => *end,
            }
            .max(from);
            backlog += u64::try_from(end - until).unwrap_or(0);
            next.insert(tp.clone(), until);
            if until > from {
                planned.push(OffsetRange {
                    tp: tp.clone(),
                    from,
                    until,
                });
            }
        }
        // Deleted partitions (a topic recreated with fewer) drop out of the position.
        next.retain(|tp, _| tps.binary_search(tp).is_ok());
        if self.planned.len() >= PLANNED_KEPT {
            self.planned.pop_front();
        }
        self.planned.push_back((batch.index, next.clone()));
        self.next = Some(next);
        self.backlog = Some(backlog);
        let mut range = ranges::to_json(&planned);
        if refused.count() > 0 {
            range["refused"] = refused.to_json();
        }
        Ok(range)
    }

    fn read(
        &mut self,
        range: &Json,
        partitions: usize,
        refused: &mut Refusals,
    ) -> Result<Vec<Vec<KafkaRecord>>> {
        self.read_owned(range, partitions, &|_| true, refused)
    }

    fn read_owned(
        &mut self,
        range: &Json,
        partitions: usize,
        owns: &dyn Fn(usize) -> bool,
        refused: &mut Refusals,
    ) -> Result<Vec<Vec<KafkaRecord>>> {
        let ranges = ranges::from_json(range).map_err(|m| {
            self.error(format!(
                "the offset log holds a range this source did not write: {m}"
            ))
        })?;
        let cut = ranges::cut(&ranges, partitions);
        let mut by_topic: BTreeMap<String, Vec<(usize, OffsetRange)>> = BTreeMap::new();
        for (part, pieces) in cut.into_iter().enumerate() {
            if owns(part) {
                for piece in pieces {
                    by_topic
                        .entry(piece.tp.topic.clone())
                        .or_default()
                        .push((part, piece));
                }
            }
        }
        let mut out = vec![Vec::new(); partitions.max(1)];
        for (topic, pieces) in by_topic {
            self.read_topic(&topic, &pieces, &mut out, refused)?;
        }
        Ok(out)
    }

    fn bytes_read(&self) -> Option<u64> {
        Some(self.bytes_read)
    }

    fn backlog(&self) -> Option<u64> {
        self.backlog
    }

    fn reads_owned_partitions(&self) -> bool {
        true
    }

    fn rate_limited(&self) -> bool {
        true
    }

    fn limit_rate(&mut self, records_per_second: Option<f64>) {
        self.rate_limit = records_per_second;
    }

    fn position(&self) -> Json {
        match &self.next {
            Some(next) => json!({ "next": ranges::positions_to_json(next) }),
            None => json!({}),
        }
    }

    fn seek(&mut self, position: &Json) -> Result<()> {
        self.planned.clear();
        let Some(next) = position.get("next") else {
            self.next = None;
            return Ok(());
        };
        self.next = Some(ranges::positions_from_json(next).ok_or_else(|| {
            self.error(format!(
                "the checkpoint's position of this source is not one it wrote: {}",
                crate::error::shorten(&position.to_string(), 200)
            ))
        })?);
        Ok(())
    }

    fn on_commit(&mut self, batch: &BatchInfo) {
        let mut offsets = None;
        while self.planned.front().is_some_and(|(b, _)| *b <= batch.index) {
            offsets = self.planned.pop_front().map(|(_, o)| o);
        }
        let Some(offsets) = offsets else {
            return;
        };
        let mut list = TopicPartitionList::new();
        for (tp, offset) in &offsets {
            if *offset >= 0 {
                let _ = list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset));
            }
        }
        // For the lag tools only: recovery never reads it, so a failed commit is a warning.
        let result = match self.planner() {
            Ok(planner) => planner
                .commit(&list, CommitMode::Async)
                .map_err(|e| describe(&e, &self.client.bootstrap_servers)),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            tracing::warn!(source = %self.name, group = %self.group_id, error = %e, "cannot commit the batch's offsets to the consumer group (lag tools will lag behind)");
        }
    }
}
