//! Printing the first records of every batch, like Spark's `print()`.

use std::io::Write;

use super::{LineFormat, Sink};
use crate::error::{Error, Result};
use crate::time::BatchInfo;

/// Prints a header and the first `limit` records of each batch to standard output.
pub struct StdoutSink<T> {
    limit: usize,
    format: LineFormat<T>,
}

impl<T> StdoutSink<T> {
    /// A sink printing `limit` records per batch, each formatted by `format`.
    pub fn new(limit: usize, format: LineFormat<T>) -> Self {
        Self { limit, format }
    }
}

impl<T: Send + Sync + 'static> Sink<T> for StdoutSink<T> {
    fn name(&self) -> &str {
        "stdout"
    }

    fn write(&self, batch: &BatchInfo, records: Vec<T>) -> Result<()> {
        let mut text = format!(
            "-------------------------------------------\nTime: {} (batch {})\n-------------------------------------------\n",
            batch.display_time(),
            batch.index
        );
        for r in records.iter().take(self.limit) {
            (self.format)(r, &mut text);
            text.push('\n');
        }
        if records.len() > self.limit {
            text.push_str(&format!("... ({} more)\n", records.len() - self.limit));
        }
        text.push('\n');
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| Error::io("write", "stdout", e))
    }
}
