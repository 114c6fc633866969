//! Where records come from: the [`Source`] trait and the built-in sources.
//!
//! Every batch, the coordinator asks each source to *plan* the batch (decide its range and move
//! past it) and logs that range in the checkpoint before the batch runs; then it *reads* the
//! range. After a crash the logged ranges are read again, so a replayable source gives the
//! same records to the same batch.
//!
//! | source | replayable | guarantee across a crash |
//! |---|---|---|
//! | `generator` | yes | exactly once |
//! | `files` | yes (while the files stay) | exactly once |
//! | `socket` | through the write-ahead log | exactly once from the moment a batch is planned; lines received after the last planned batch are lost with the process |
//! | `queue` | through the write-ahead log | as `socket` (tests and the Rust API) |
//! | `kafka` ([`crate::kafka`]) | yes (while the brokers keep the records) | exactly once |

mod files;
mod generator;
mod lines;
pub mod nexmark;
mod queue;
mod socket;

use serde_json::Value as Json;

pub use files::FilesSource;
pub(crate) use generator::splitmix;
pub use generator::{GeneratorConfig, GeneratorSource, TextGenerator};
pub use lines::{Line, LineSplitter, MAX_LINE_BYTES};
pub use queue::QueueSource;
pub use socket::SocketSource;

use crate::data::Data;
use crate::error::{Error, Result};
use crate::exec::BatchContext;
use crate::time::BatchInfo;

/// A stream's input.
pub trait Source: Send + 'static {
    /// The records it produces.
    type Item: Data;

    /// Unique name; positions are checkpointed under it.
    fn name(&self) -> &str;

    /// Whether `read` can produce a planned range again after the process restarts.
    fn replayable(&self) -> bool;

    /// Decides which records make up `batch` and moves past them. The returned range is written
    /// to the checkpoint before the batch runs.
    fn plan(&mut self, batch: &BatchInfo) -> Result<Json>;

    /// Reads the records of a planned range, split into `partitions` partitions. Input that
    /// cannot become a record (a line that is not text, a file that cannot be read) goes to
    /// `refused`, which `onRecordError` then judges like any refused record: a source never
    /// fails a batch over its data, since a replay would fail the same way for ever.
    fn read(
        &mut self,
        range: &Json,
        partitions: usize,
        refused: &mut Refusals,
    ) -> Result<Vec<Vec<Self::Item>>>;

    /// Whether [`Source::read_owned`] reads only the partitions asked for. Other sources read
    /// the whole range on every worker, which keeps its partitions.
    fn reads_owned_partitions(&self) -> bool {
        false
    }

    /// Reads the partitions of a planned range that `owns` says this process runs; the others
    /// may be left empty. By default, [`Source::read`] of the whole range.
    fn read_owned(
        &mut self,
        range: &Json,
        partitions: usize,
        owns: &dyn Fn(usize) -> bool,
        refused: &mut Refusals,
    ) -> Result<Vec<Vec<Self::Item>>> {
        let _ = owns;
        self.read(range, partitions, refused)
    }

    /// For a source that cannot replay: the records of a planned range, to be written to the
    /// write-ahead log before the batch runs. Replayable sources return `None`.
    fn records_for_log(&mut self, _range: &Json) -> Result<Option<Vec<Self::Item>>> {
        Ok(None)
    }

    /// Where the source stands after the last planned batch.
    fn position(&self) -> Json;

    /// Moves to a position returned by `position` (after a restart).
    fn seek(&mut self, position: &Json) -> Result<()>;

    /// Called before the first batch.
    fn on_start(&mut self) -> Result<()> {
        Ok(())
    }

    /// State up to and including `batch` is checkpointed: those batches are never re-read, so
    /// data held for them may go.
    fn on_checkpoint(&mut self, _batch: &BatchInfo) {}

    /// Whether the source bounds its batches by [`Source::limit_rate`] (backpressure).
    fn rate_limited(&self) -> bool {
        false
    }

    /// From the next plan on, hand at most `records_per_second` of batch interval (the rate
    /// controller's figure); `None` lifts the bound.
    fn limit_rate(&mut self, _records_per_second: Option<f64>) {}

    /// `batch` committed: its output is done and it is never run again unless a failure
    /// rolls back past it.
    fn on_commit(&mut self, _batch: &BatchInfo) {}

    /// Called when the job stops.
    fn on_close(&mut self) {}

    /// Bytes read so far, for the metrics, by a source that knows them (a file's length, a
    /// Kafka message's size); others say `None`.
    fn bytes_read(&self) -> Option<u64> {
        None
    }

    /// Records already waiting in the source past the last planned batch, by a source that
    /// can count them (Kafka: the partitions' ends less the planned offsets); others say
    /// `None`. It tells whether the job keeps up with its input (metrics, autoscaling).
    fn backlog(&self) -> Option<u64> {
        None
    }
}

/// Input a source could not turn into records, counted, with the first few reasons.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Refusals {
    count: u64,
    samples: Vec<String>,
}

impl Refusals {
    /// Reasons kept; the rest are only counted.
    pub const SAMPLES: usize = 5;

    /// Counts one refusal. The reason must not quote the input: it reaches logs and the
    /// job's status.
    pub fn push(&mut self, reason: impl Into<String>) {
        self.count += 1;
        if self.samples.len() < Self::SAMPLES {
            self.samples.push(reason.into());
        }
    }

    /// Counts `n` refusals for one reason (a run of records lost together).
    pub fn push_many(&mut self, n: u64, reason: impl Into<String>) {
        if n == 0 {
            return;
        }
        self.count += n;
        if self.samples.len() < Self::SAMPLES {
            self.samples.push(reason.into());
        }
    }

    /// Adds the refusals of `other`, its reasons after ours while room is left.
    pub fn absorb(&mut self, other: Refusals) {
        self.count += other.count;
        let room = Self::SAMPLES.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.into_iter().take(room));
    }

    /// How many were refused.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The first reasons.
    pub fn samples(&self) -> &[String] {
        &self.samples
    }

    /// As a range field, so refusals made while planning are logged with the batch.
    pub fn to_json(&self) -> Json {
        serde_json::json!({ "count": self.count, "samples": self.samples })
    }

    /// Reads what `to_json` wrote; anything else is no refusal.
    pub fn from_json(v: &Json) -> Self {
        Self {
            count: v["count"].as_u64().unwrap_or(0),
            samples: v["samples"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .take(Self::SAMPLES)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// A source with its item type hidden, as the job holds it.
pub(crate) trait ErasedSource: Send {
    fn name(&self) -> &str;
    fn replayable(&self) -> bool;
    fn plan(&mut self, batch: &BatchInfo) -> Result<Json>;
    /// Reads a range into the batch; `logged` holds the write-ahead-log bytes of ranges that
    /// were logged (`{"wal": KEY}`).
    fn read_into(
        &mut self,
        cx: &BatchContext,
        index: usize,
        range: &Json,
        logged: Option<&[u8]>,
    ) -> Result<()>;
    /// The write-ahead-log bytes of a planned range, if the source needs a log.
    fn log_bytes(&mut self, range: &Json) -> Result<Option<Vec<u8>>>;
    fn position(&self) -> Json;
    fn seek(&mut self, position: &Json) -> Result<()>;
    fn on_start(&mut self) -> Result<()>;
    fn on_checkpoint(&mut self, batch: &BatchInfo);
    fn on_commit(&mut self, batch: &BatchInfo);
    fn rate_limited(&self) -> bool;
    fn limit_rate(&mut self, records_per_second: Option<f64>);
    fn on_close(&mut self);
    fn bytes_read(&self) -> Option<u64>;
    fn backlog(&self) -> Option<u64>;
}

pub(crate) struct SourceNode<S>(S);

impl<S> SourceNode<S> {
    pub(crate) fn new(source: S) -> Self {
        Self(source)
    }
}

impl<S: Source> ErasedSource for SourceNode<S> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn replayable(&self) -> bool {
        self.0.replayable()
    }
    fn plan(&mut self, batch: &BatchInfo) -> Result<Json> {
        self.0.plan(batch)
    }
    fn read_into(
        &mut self,
        cx: &BatchContext,
        index: usize,
        range: &Json,
        logged: Option<&[u8]>,
    ) -> Result<()> {
        // Refused while planning (logged with the range), then while reading.
        let mut refused = Refusals::from_json(&range["refused"]);
        let mut read_refused = Refusals::default();
        let owned_only = self.0.reads_owned_partitions();
        let bytes_before = self.0.bytes_read();
        let parts = match (range.get("wal"), logged) {
            (Some(_), Some(bytes)) => {
                let records: Vec<S::Item> =
                    postcard::from_bytes(bytes).map_err(|e| Error::Source {
                        source_name: self.0.name().to_string(),
                        message: format!("unreadable write-ahead log: {e}"),
                    })?;
                split_even(records, cx.partitions)
            }
            (Some(key), None) => {
                return Err(Error::Source {
                    source_name: self.0.name().to_string(),
                    message: format!("write-ahead log {key} is missing"),
                });
            }
            _ if owned_only => {
                self.0
                    .read_owned(range, cx.partitions, &|p| cx.owns(p), &mut read_refused)?
            }
            _ => self.0.read(range, cx.partitions, &mut refused)?,
        };
        // Every worker reads the whole range and keeps its partitions; the owner of partition
        // 0 alone counts the refusals, so a distributed batch counts them once. A source that
        // reads only this worker's partitions refused for those alone.
        let operation = format!("source {}", self.0.name());
        if cx.owns(0) {
            cx.record_errors(&operation, refused.count(), refused.samples())?;
        }
        if read_refused.count() > 0 {
            cx.record_errors(&operation, read_refused.count(), read_refused.samples())?;
        }
        if let (Some(before), Some(after)) = (bytes_before, self.0.bytes_read()) {
            cx.count_source_bytes(index, after.saturating_sub(before));
        }
        cx.put_input(index, parts)
    }
    fn log_bytes(&mut self, range: &Json) -> Result<Option<Vec<u8>>> {
        match self.0.records_for_log(range)? {
            Some(records) => postcard::to_stdvec(&records)
                .map(Some)
                .map_err(|e| Error::Internal(format!("cannot encode the write-ahead log: {e}"))),
            None => Ok(None),
        }
    }
    fn position(&self) -> Json {
        self.0.position()
    }
    fn seek(&mut self, position: &Json) -> Result<()> {
        self.0.seek(position)
    }
    fn on_start(&mut self) -> Result<()> {
        self.0.on_start()
    }
    fn on_checkpoint(&mut self, batch: &BatchInfo) {
        self.0.on_checkpoint(batch)
    }
    fn on_commit(&mut self, batch: &BatchInfo) {
        self.0.on_commit(batch)
    }
    fn rate_limited(&self) -> bool {
        self.0.rate_limited()
    }
    fn limit_rate(&mut self, records_per_second: Option<f64>) {
        self.0.limit_rate(records_per_second)
    }
    fn on_close(&mut self) {
        self.0.on_close()
    }
    fn bytes_read(&self) -> Option<u64> {
        self.0.bytes_read()
    }
    fn backlog(&self) -> Option<u64> {
        self.0.backlog()
    }
}

/// Splits records into `partitions` contiguous runs of (nearly) equal length.
pub fn split_even<T>(records: Vec<T>, partitions: usize) -> Vec<Vec<T>> {
    let partitions = partitions.max(1);
    let n = records.len();
    let mut out = Vec::with_capacity(partitions);
    let mut it = records.into_iter();
    for p in 0..partitions {
        let take = n / partitions + usize::from(p < n % partitions);
        out.push(it.by_ref().take(take).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::split_even;

    #[test]
    fn split_even_keeps_order_and_balance() {
        let parts = split_even((0..10).collect(), 3);
        assert_eq!(parts, vec![vec![0, 1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]]);
        assert_eq!(
            split_even(Vec::<u8>::new(), 2),
            vec![Vec::<u8>::new(), Vec::new()]
        );
    }
}
