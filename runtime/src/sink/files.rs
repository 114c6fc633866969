//! One file per batch in a directory, replaced atomically so a re-run batch overwrites its own
//! output instead of duplicating it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{LineFormat, Sink};
use crate::error::{Error, Result};
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

/// Writes `bytes` to `path` through a temporary file in `dir`, fsynced and renamed, then fsyncs
/// the directory so the rename itself survives a crash.
pub(crate) fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(temporary_name(name, std::process::id()));
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

/// `.<name>.<pid>.tmp`: hidden, so readers that skip dot files never see a half-written batch,
/// and carrying the writer's process id, so a sweep can tell a dead writer's file from a live one.
fn temporary_name(name: &str, pid: u32) -> String {
    format!(".{name}.{pid}.tmp")
}

/// The process id in a temporary file's name, if the name is one.
fn temporary_writer(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (_, pid) = rest.rsplit_once('.')?;
    pid.parse().ok()
}

/// Whether a process that wrote a temporary file may still be about to rename it. Where `/proc`
/// exists, a process id with no entry there is dead; a writer in another pid namespace (another
/// pod sharing the volume) may look dead, and then its rename fails and its batch is recomputed,
/// which costs time, not data. Without `/proc`, every writer counts as alive.
fn writer_may_be_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Removes, from `dir` only (not below it), the temporary files whose writer is dead and whose
/// name passes `wanted`; returns how many. A missing directory holds none.
pub(crate) fn remove_stale_temporaries(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        if let Ok(name) = entry.file_name().into_string()
            && wanted(&name)
            && remove_if_stale(&entry.path(), &name)?
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes `path` (named `name`) if it is a temporary file whose writer is dead; says whether
/// it did.
pub(crate) fn remove_if_stale(path: &Path, name: &str) -> Result<bool> {
    if temporary_writer(name).is_none_or(writer_may_be_alive) {
        return Ok(false);
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        // Renamed or removed by someone else meanwhile: nothing left to do.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_carry_the_writer() {
        assert_eq!(
            temporary_writer(&temporary_name("batch-100.txt", 42)),
            Some(42)
        );
        assert_eq!(temporary_writer("batch-100.txt"), None);
        assert_eq!(temporary_writer(".hidden"), None);
        assert_eq!(temporary_writer(".x.notapid.tmp"), None);
    }

    #[test]
    fn a_dead_writers_temporary_file_is_swept_and_a_live_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A child that has exited and been waited for: its pid names no process.
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let dead = child.id();
        child.wait().expect("wait");
        let stale = temporary_name("batch-100.txt", dead);
        let live = temporary_name("batch-200.txt", std::process::id());
        let other = temporary_name("other-100.txt", dead);
        for name in [&stale, &live, &other, &"batch-100.txt".to_string()] {
            fs::write(dir.path().join(name), b"x").expect("write");
        }
        let removed =
            remove_stale_temporaries(dir.path(), |n| n.starts_with(".batch-")).expect("sweep");
        assert_eq!(removed, 1);
        assert!(!dir.path().join(&stale).exists());
        for kept in [&live, &other, &"batch-100.txt".to_string()] {
            assert!(dir.path().join(kept).exists(), "{kept} kept");
        }
        assert_eq!(
            remove_stale_temporaries(&dir.path().join("missing"), |_| true).expect("sweep"),
            0
        );
    }
}
