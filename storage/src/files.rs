//! Files written so that a reader (or a crash) never sees half of one: a temporary file,
//! fsynced and renamed into place, and a sweep of the temporaries dead writers left.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{Result, StoreError};

/// Writes `bytes` to `path` through a temporary file in `dir`, fsynced and renamed, then fsyncs
/// the directory so the rename itself survives a crash.
pub fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    replace_file(dir, path, bytes)?;
    sync_directory(dir)
}

/// Writes `bytes` to `path` through a temporary file in `dir`, fsynced and renamed: a reader,
/// or a machine that crashes, sees the whole file or what was there before, never part of it.
/// The rename is durable only once `dir` is synced ([`sync_directory`]); a caller that syncs
/// it later, once for many files, saves a journal commit per file.
pub fn replace_file(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(temporary_name(name, std::process::id()));
    let mut file = fs::File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            StoreError::io("write", &tmp, e)
        })?;
    fs::rename(&tmp, path).map_err(|e| StoreError::io("rename into place", path, e))
}

/// Makes the renames and new names in `dir` durable.
pub fn sync_directory(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("sync directory", dir, e))
}

/// Writes `bytes` to `path` only if nothing is there, atomically: `false` when something is.
/// The bytes are written to a temporary file and hard-linked into place, which fails where
/// the name is taken, whoever races for it.
pub fn write_new(dir: &Path, path: &Path, bytes: &[u8]) -> Result<bool> {
    fs::create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(temporary_name(name, std::process::id()));
    let mut file = fs::File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
    let linked = file
        .write_all(bytes)
        .and_then(|_| file.sync_all())
        .and_then(|_| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(StoreError::io("link into place", path, e)),
    }
    sync_directory(dir)?;
    Ok(true)
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
pub fn remove_stale_temporaries(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::io("list", dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
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
pub fn remove_if_stale(path: &Path, name: &str) -> Result<bool> {
    if temporary_writer(name).is_none_or(writer_may_be_alive) {
        return Ok(false);
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        // Renamed or removed by someone else meanwhile: nothing left to do.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io("remove", path, e)),
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
