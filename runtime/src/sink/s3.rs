//! Objects in S3, one per batch and partition: `PREFIX/batch-<time ms>/part-<partition>.txt`.
//! A re-run batch writes the same keys, so the result is exactly once. The store is opened on
//! the first write, so validating a manifest makes no network call.

use std::sync::OnceLock;

use super::{LineFormat, Sink};
use crate::error::{Error, Result};
use crate::time::BatchInfo;
use sluice_storage::{S3Settings, S3Store, Store};

/// The `s3` sink.
pub struct S3Sink<T> {
    uri: String,
    settings: S3Settings,
    store: OnceLock<S3Store>,
    format: LineFormat<T>,
}

impl<T> S3Sink<T> {
    /// A sink writing under `uri` (`s3://bucket/prefix`).
    pub fn new(uri: &str, settings: S3Settings, format: LineFormat<T>) -> Self {
        Self {
            uri: uri.to_string(),
            settings,
            store: OnceLock::new(),
            format,
        }
    }

    fn store(&self) -> Result<&S3Store> {
        if let Some(s) = self.store.get() {
            return Ok(s);
        }
        let opened = S3Store::open(&self.uri, &self.settings)?;
        Ok(self.store.get_or_init(|| opened))
    }
}

impl<T: Send + Sync + 'static> Sink<T> for S3Sink<T> {
    fn name(&self) -> &str {
        "s3"
    }

    fn write(&self, batch: &BatchInfo, records: Vec<T>) -> Result<()> {
        self.write_partitions(batch, vec![(0, records)], false)
    }

    fn write_partitions(
        &self,
        batch: &BatchInfo,
        parts: Vec<(usize, Vec<T>)>,
        _whole: bool,
    ) -> Result<()> {
        let store = self.store()?;
        for (part, records) in parts {
            let mut text = String::new();
            for r in &records {
                (self.format)(r, &mut text);
                text.push('\n');
            }
            store
                .put(
                    &format!("batch-{}/part-{part:04}.txt", batch.time_ms),
                    text.as_bytes(),
                )
                .map_err(|e| Error::Output {
                    output: "s3".into(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }
}
