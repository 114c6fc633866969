//! One file per batch in a directory, replaced atomically so a re-run batch overwrites its own
//! output instead of duplicating it.

use std::path::PathBuf;
use std::sync::OnceLock;

use sluice_storage::files::{remove_stale_temporaries, write_atomically};

use super::{LineFormat, Sink};
use crate::error::Result;
use crate::time::BatchInfo;

/// Writes `DIR/PREFIX-<batch time ms>.txt` for every batch, even an empty one, so a reader can
/// tell "no records" from "not written yet".
pub struct FilesSink<T> {
    dir: PathBuf,
    prefix: String,
    format: LineFormat<T>,
    /// Set once the temporary files of dead writers have been swept from `dir`.
    swept: OnceLock<()>,
}

impl<T> FilesSink<T> {
    /// A sink writing into `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>, prefix: &str, format: LineFormat<T>) -> Self {
        Self {
            dir: dir.into(),
            prefix: prefix.to_string(),
            format,
            swept: OnceLock::new(),
        }
    }

    /// A writer killed between creating its temporary file and renaming it leaves the file
    /// behind; the first write of a new process removes those of this sink's prefix, so the
    /// directory holds batch files only.
    fn sweep_once(&self) {
        self.swept.get_or_init(|| {
            let prefix = format!(".{}-", self.prefix);
            match remove_stale_temporaries(&self.dir, |name| name.starts_with(&prefix)) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    dir = %self.dir.display(),
                    removed = n,
                    "removed temporary files left by an interrupted writer"
                ),
                Err(e) => tracing::warn!(error = %e, "could not sweep temporary files"),
            }
        });
    }

    /// The file a batch goes to.
    pub fn path_for(&self, batch: &BatchInfo) -> PathBuf {
        self.dir
            .join(format!("{}-{}.txt", self.prefix, batch.time_ms))
    }
}

impl<T: Send + Sync + 'static> Sink<T> for FilesSink<T> {
    fn name(&self) -> &str {
        "files"
    }

    fn write(&self, batch: &BatchInfo, records: Vec<T>) -> Result<()> {
        self.sweep_once();
        let mut text = String::with_capacity(records.len() * 16);
        for r in &records {
            (self.format)(r, &mut text);
            text.push('\n');
        }
        Ok(write_atomically(
            &self.dir,
            &self.path_for(batch),
            text.as_bytes(),
        )?)
    }

    /// In a distributed job each worker writes `PREFIX-<time>.part-<partition>.txt` for the
    /// partitions it owns, so re-runs on any worker overwrite the same files.
    fn write_partitions(
        &self,
        batch: &BatchInfo,
        parts: Vec<(usize, Vec<T>)>,
        whole: bool,
    ) -> Result<()> {
        if whole {
            return self.write(batch, parts.into_iter().flat_map(|(_, r)| r).collect());
        }
        self.sweep_once();
        for (part, records) in parts {
            let mut text = String::new();
            for r in &records {
                (self.format)(r, &mut text);
                text.push('\n');
            }
            let path = self.dir.join(format!(
                "{}-{}.part-{part:04}.txt",
                self.prefix, batch.time_ms
            ));
            write_atomically(&self.dir, &path, text.as_bytes())?;
        }
        Ok(())
    }
}
