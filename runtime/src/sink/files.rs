//! One file per batch in a directory, replaced atomically so a re-run batch overwrites its own
//! output instead of duplicating it.
//!
//! A file's bytes are fsynced before it is renamed into place, so no reader and no crash ever
//! sees part of one. In local mode the directory's sync, which makes the rename itself durable,
//! waits for the checkpoint writer ([`Sink::sync`]): it runs before the batch is marked
//! complete, off the batch path, and once for all the batches written meanwhile. Until then a
//! crash of the machine (not of the process) may forget the rename; the batch is not marked
//! complete, so it runs again and writes the same file.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use sluice_storage::files::{
    remove_stale_temporaries, replace_file, sync_directory, write_atomically,
};

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
    /// A whole batch's file was renamed into `dir` since the directory was last synced.
    unsynced: AtomicBool,
}

impl<T> FilesSink<T> {
    /// A sink writing into `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>, prefix: &str, format: LineFormat<T>) -> Self {
        Self {
            dir: dir.into(),
            prefix: prefix.to_string(),
            format,
            swept: OnceLock::new(),
            unsynced: AtomicBool::new(false),
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

    /// The records as lines.
    fn text<'a>(&self, records: impl Iterator<Item = &'a T>, len: usize) -> String
    where
        T: 'a,
    {
        let mut text = String::with_capacity(len * 16);
        for r in records {
            (self.format)(r, &mut text);
            text.push('\n');
        }
        text
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
        let text = self.text(records.iter(), records.len());
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
        self.sweep_once();
        if whole {
            // The file is whole and in place now; the rename is made durable by `sync`, before
            // the batch is marked complete, once for every batch written meanwhile.
            let len = parts.iter().map(|(_, r)| r.len()).sum();
            let text = self.text(parts.iter().flat_map(|(_, r)| r), len);
            replace_file(&self.dir, &self.path_for(batch), text.as_bytes())?;
            self.unsynced.store(true, Ordering::Release);
            return Ok(());
        }
        for (part, records) in parts {
            let text = self.text(records.iter(), records.len());
            let path = self.dir.join(format!(
                "{}-{}.part-{part:04}.txt",
                self.prefix, batch.time_ms
            ));
            write_atomically(&self.dir, &path, text.as_bytes())?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        // Cleared before the sync: a rename after it sets the flag again for the next one.
        if self.unsynced.swap(false, Ordering::AcqRel)
            && let Err(e) = sync_directory(&self.dir)
        {
            self.unsynced.store(true, Ordering::Release);
            return Err(e.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(dir: &std::path::Path) -> FilesSink<String> {
        FilesSink::new(
            dir,
            "out",
            std::sync::Arc::new(|r: &String, out: &mut String| out.push_str(r)),
        )
    }

    #[test]
    fn a_whole_batch_is_in_place_at_once_and_its_directory_synced_later() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("out");
        let sink = sink(&dir);
        let batch = BatchInfo::new(0, 100, 1);
        let parts = vec![(0, vec!["a".to_string()]), (1, vec!["b".to_string()])];
        sink.write_partitions(&batch, parts, true).expect("write");
        assert_eq!(
            std::fs::read_to_string(sink.path_for(&batch)).expect("read"),
            "a\nb\n"
        );
        assert!(sink.unsynced.load(Ordering::Acquire));
        sink.sync().expect("sync");
        assert!(!sink.unsynced.load(Ordering::Acquire));

        // A sync that fails is owed still.
        sink.write_partitions(&batch, vec![(0, vec!["c".to_string()])], true)
            .expect("write again");
        std::fs::remove_dir_all(&dir).expect("remove");
        assert!(sink.sync().is_err());
        assert!(sink.unsynced.load(Ordering::Acquire));
    }

    #[test]
    fn a_workers_partitions_are_durable_when_written() {
        let root = tempfile::tempdir().expect("tempdir");
        let sink = sink(root.path());
        let batch = BatchInfo::new(0, 100, 2);
        sink.write_partitions(&batch, vec![(3, vec!["x".to_string()])], false)
            .expect("write");
        let path = root.path().join("out-200.part-0003.txt");
        assert_eq!(std::fs::read_to_string(path).expect("read"), "x\n");
        assert!(!sink.unsynced.load(Ordering::Acquire), "nothing owed");
    }
}
