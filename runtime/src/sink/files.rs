//! One file per batch in a directory, replaced atomically so a re-run batch overwrites its own
//! output instead of duplicating it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{LineFormat, Sink};
use crate::error::{Error, Result};
use crate::time::BatchInfo;

/// Writes `DIR/PREFIX-<batch time ms>.txt` for every batch, even an empty one, so a reader can
/// tell "no records" from "not written yet".
pub struct FilesSink<T> {
    dir: PathBuf,
    prefix: String,
    format: LineFormat<T>,
}

impl<T> FilesSink<T> {
    /// A sink writing into `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>, prefix: &str, format: LineFormat<T>) -> Self {
        Self {
            dir: dir.into(),
            prefix: prefix.to_string(),
            format,
        }
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
        let mut text = String::with_capacity(records.len() * 16);
        for r in &records {
            (self.format)(r, &mut text);
            text.push('\n');
        }
        write_atomically(&self.dir, &self.path_for(batch), text.as_bytes())
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

/// Writes `bytes` to `path` through a temporary file in `dir`, fsynced and renamed, then fsyncs
/// the directory so the rename itself survives a crash.
pub(crate) fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = fs::File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("write", &tmp, e)
        })?;
    fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync directory", dir, e))
}
