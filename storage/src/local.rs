//! Stores on a local directory and in memory.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::Store;
use crate::error::{Result, StoreError};
use crate::files::{remove_if_stale, replace_file, sync_directory, write_atomically};

/// Locks a mutex, ignoring poisoning: a store's map is whole after any panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Refuses a key that would leave the store's root (`..`, an absolute path). Keys come from the
/// checkpoint's own logs and, in a distributed job, over the network.
pub fn check_key(key: &str) -> Result<()> {
    use std::path::Component;
    let escapes = Path::new(key)
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if escapes {
        return Err(StoreError::Damaged(format!(
            "key {key:?} is not inside the checkpoint"
        )));
    }
    Ok(())
}

/// A directory on a local file system.
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root`, created if missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)
            .map_err(|e| StoreError::io("create checkpoint directory", &root, e))?;
        match sweep_temporaries(&root) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                root = %root.display(),
                removed = n,
                "removed temporary files left by an interrupted checkpoint"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not sweep the checkpoint's temporary files")
            }
        }
        Ok(Self { root })
    }

    /// The file of `key`. Keys come from the checkpoint's own logs and, in a distributed job,
    /// over the network: one that would leave the checkpoint directory is refused.
    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// The file of `key` and the directory it goes in (whose sync makes its name durable).
    fn path_in_dir(&self, key: &str) -> Result<(PathBuf, PathBuf)> {
        let path = self.path(key)?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        Ok((path, dir))
    }
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let (path, dir) = self.path_in_dir(key)?;
        write_atomically(&dir, &path, bytes)
    }

    /// Every file fsynced and renamed in, then each directory they went to synced once: a
    /// snapshot's partitions, written together, share one directory sync.
    fn put_many(&self, objects: &[(&str, &[u8])]) -> Result<()> {
        let mut dirs = Vec::new();
        for (key, bytes) in objects {
            let (path, dir) = self.path_in_dir(key)?;
            replace_file(&dir, &path, bytes)?;
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs.iter().try_for_each(|dir| sync_directory(dir))
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let (path, dir) = self.path_in_dir(key)?;
        crate::files::write_new(&dir, &path, bytes)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("read", path, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = self.path(prefix)?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("list", dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("list", &dir, e))?;
            if let Ok(name) = entry.file_name().into_string()
                && !name.starts_with('.')
            {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn delete(&self, prefix: &str) -> Result<()> {
        let path = self.path(prefix)?;
        let result = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("delete", path, e)),
        }
    }
}

/// Removes the temporary files of dead writers in `dir` and every directory below it: a `list`
/// never shows them, but each put cut short by a crash would otherwise leave one for good.
fn sweep_temporaries(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))? {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            removed += sweep_temporaries(&entry.path())?;
        } else if let Ok(name) = entry.file_name().into_string()
            && remove_if_stale(&entry.path(), &name)?
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Checkpoints in memory: a job without `spec.checkpoint` still recovers from a failed batch
/// within the process, through the same code path.
#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory".to_string()
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        lock(&self.objects).insert(key.to_string(), bytes.to_vec());
        Ok(())
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let mut objects = lock(&self.objects);
        if objects.contains_key(key) {
            return Ok(false);
        }
        objects.insert(key.to_string(), bytes.to_vec());
        Ok(true)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(lock(&self.objects).get(key).cloned())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = format!("{}/", prefix.trim_end_matches('/'));
        let objects = lock(&self.objects);
        let mut names: Vec<String> = objects
            .keys()
            .filter_map(|k| k.strip_prefix(&dir))
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
            .collect();
        names.dedup();
        Ok(names)
    }

    fn delete(&self, prefix: &str) -> Result<()> {
        if prefix.trim_matches('/').is_empty() {
            lock(&self.objects).clear();
            return Ok(());
        }
        let dir = format!("{}/", prefix.trim_end_matches('/'));
        lock(&self.objects).retain(|k, _| k != prefix && !k.starts_with(&dir));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_leave_the_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("outside"), b"secret").expect("write");
        let store = LocalStore::open(dir.path().join("ckpt")).expect("store");
        for key in ["../outside", "/etc/passwd", "wal/../../outside"] {
            assert!(
                matches!(store.get(key), Err(StoreError::Damaged(_))),
                "{key}"
            );
            assert!(store.put(key, b"x").is_err(), "{key}");
            assert!(store.delete(key).is_err(), "{key}");
        }
        assert_eq!(
            std::fs::read(dir.path().join("outside")).expect("read"),
            b"secret"
        );
    }
}
