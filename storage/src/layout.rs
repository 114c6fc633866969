//! What a checkpoint holds at rest, as far as anyone but the engine needs to know: the
//! `job.json` that says whose it is, and the directories of its layout, so that the operator
//! can delete a job's checkpoint (and nothing else under its location).

use serde::{Deserialize, Serialize};

use crate::Store;
use crate::error::{Result, StoreError};

/// The directories of the layout, besides `job.json`.
pub const LAYOUT_DIRS: [&str; 5] = ["offsets", "commits", "state", "wal", "statelog"];

/// The object that says whose the checkpoint is.
pub const JOB_META_KEY: &str = "job.json";

/// Bumped when the layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// What a checkpoint belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobMeta {
    pub format_version: u32,
    pub job: String,
    /// The uid of the StreamingJob that created the checkpoint, on Kubernetes: the operator
    /// deletes a checkpoint (`deletionPolicy: Delete`) only for the job that created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    pub fingerprint: String,
    pub zero_time_ms: u64,
    pub interval_ms: u64,
    pub partitions: usize,
}

/// The checkpoint's `job.json`, if one was written.
pub fn read_meta(store: &dyn Store) -> Result<Option<JobMeta>> {
    match store.get(JOB_META_KEY)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            StoreError::Damaged(format!(
                "{}/{JOB_META_KEY} is unreadable: {e}",
                store.describe()
            ))
        }),
    }
}

/// Deletes the checkpoint: the keys of its own layout, `job.json` last (a deletion cut short
/// leaves a checkpoint that still says whose it is, so it can be finished). Nothing else under
/// the location is touched, whatever else the bucket holds.
pub fn delete(store: &dyn Store) -> Result<()> {
    for dir in LAYOUT_DIRS {
        store.delete(dir)?;
    }
    store.delete(JOB_META_KEY)
}
