//! What a checkpoint holds at rest, as far as anyone but the engine needs to know: the
//! `job.json` that says whose it is, and the directories of its layout, so that the operator
//! can delete a job's checkpoint (and nothing else under its location).

use serde::{Deserialize, Serialize};

use crate::Store;
use crate::error::{Result, StoreError};

/// The directories of the layout, besides `job.json`.
pub const LAYOUT_DIRS: [&str; 7] = [
    "offsets", "commits", "state", "wal", "statelog", "epochs", "tables",
];

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
    /// The job's spec (of a manifest job), as JSON: what a changed spec is planned against
    /// (`sluice plan`). Absent in checkpoints from before upgrades were planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    /// The state layout of the snapshots written before snapshots recorded their own: that of
    /// the job that first recorded its spec here (the same spec that wrote them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_layout: Option<StateLayout>,
}

/// How a snapshot's state is laid out: what a job with another spec needs to read it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateLayout {
    /// The partitions the state is sharded into.
    pub partitions: usize,
    /// Each stateful operation's state name and the identity of the manifest step it belongs
    /// to (see `sluice_crds::upgrade`); `None` for a job written in Rust, whose names are fixed.
    pub states: Vec<(String, Option<String>)>,
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
