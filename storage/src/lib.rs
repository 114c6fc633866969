//! Object storage under Sluice's checkpoints and sinks: a few blocking operations on objects
//! named by `/`-separated keys, so the checkpoint protocol and the sinks above work the same on
//! a local directory ([`LocalStore`]), in memory ([`MemoryStore`]) or on S3 ([`S3Store`]);
//! atomic file writes ([`files`]); and what a checkpoint holds at rest ([`layout`]), which the
//! operator reads and deletes without linking the engine.

mod error;
pub mod files;
pub mod layout;
mod local;
mod s3;

pub use error::{Result, StoreError};
pub use local::{LocalStore, MemoryStore, check_key};
pub use s3::{S3Settings, S3Store};
pub use sluice_crds::parse_s3_uri;

/// Objects named by `/`-separated keys.
pub trait Store: Send + Sync {
    /// Where the store is, for messages.
    fn describe(&self) -> String;
    /// Writes an object atomically: a reader sees the old bytes or the new, never a mix.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// Writes an object only where none has the key, atomically: `false` (and nothing written)
    /// when one does. Of writers racing for one key, exactly one gets `true` (S3:
    /// `If-None-Match: *`), so a key written this way names one writer for good.
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool>;
    /// Writes several objects, each atomically as [`Store::put`] does, and returns once all
    /// are durable (a store that can writes them at once, or makes them durable together).
    /// On an error some may be written and others not.
    fn put_many(&self, objects: &[(&str, &[u8])]) -> Result<()> {
        objects
            .iter()
            .try_for_each(|(key, bytes)| self.put(key, bytes))
    }
    /// Reads an object; `None` when it does not exist.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Reads several objects, in order (a store that can reads them at once).
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// Keys under `prefix` (one level: the next path segment), sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Deletes objects by key, keys just listed (a store that can deletes a thousand per
    /// request).
    fn delete_objects(&self, keys: &[String]) -> Result<()> {
        keys.iter().try_for_each(|k| self.delete(k))
    }
    /// Deletes everything under `prefix` (an object or a "directory").
    fn delete(&self, prefix: &str) -> Result<()>;
}
