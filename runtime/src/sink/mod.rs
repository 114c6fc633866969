//! Where batches go: the [`Sink`] trait and the built-in sinks.
//!
//! Delivery: a sink sees a batch again when the batch is re-run after a failure. The files sink
//! names its output by batch time and replaces it atomically, so re-runs overwrite and the
//! result is exactly once; a custom sink must be idempotent per batch time to say the same.

pub(crate) mod files;
mod postgres;
mod s3;
mod stdout;
mod text;

pub use files::FilesSink;
pub use postgres::{PostgresSink, PostgresTarget};
pub use s3::S3Sink;
pub use stdout::StdoutSink;
pub use text::ToText;

use crate::error::Result;
use crate::time::BatchInfo;

/// Receives every batch of an output stream, in partition order.
pub trait Sink<T>: Send + Sync + 'static {
    /// Name for logs and errors.
    fn name(&self) -> &str;
    /// Writes one batch. An error fails the batch, which is retried from the last checkpoint.
    fn write(&self, batch: &BatchInfo, records: Vec<T>) -> Result<()>;

    /// Writes the partitions of a batch that ran in this process: all of them in local mode
    /// (`whole`), this worker's in a distributed job. By default, as one batch.
    fn write_partitions(
        &self,
        batch: &BatchInfo,
        parts: Vec<(usize, Vec<T>)>,
        whole: bool,
    ) -> Result<()> {
        let _ = whole;
        self.write(
            batch,
            parts.into_iter().flat_map(|(_, records)| records).collect(),
        )
    }

    /// Makes durable what the writes of whole batches (`whole` above) left to be made durable
    /// later; called before those batches are marked complete, off the batch path, so that a
    /// sink can sync once for many batches. A partial write (a worker's) must be durable when
    /// it returns: the master marks the batch complete on the workers' word. By default,
    /// nothing is left.
    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// Formats a record as one line of text.
pub type LineFormat<T> = std::sync::Arc<dyn Fn(&T, &mut String) + Send + Sync>;
