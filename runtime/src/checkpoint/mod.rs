//! Checkpoints: the protocol (what is written where, in which order, and how a restart decides
//! where to resume) on top of a [`CheckpointStore`].
//!
//! Layout under the checkpoint URI:
//!
//! ```text
//! job.json                              fingerprint, zero time, interval, partitions
//! epochs/<n>.json                       one per master that took the checkpoint over
//! offsets/<batch>.json                  source ranges of a batch, written BEFORE it runs
//! offsets/<first>.<writer>.log          the same, appended, where one process writes alone
//! commits/<first>.<writer>.log          (see [`segment_log`])
//! commits/<batch>.json                  written AFTER its outputs (and snapshot) are durable
//! state/<batch>/<operation>/<part>.bin  state of each stateful operation and partition
//! state/<batch>/MANIFEST.json           sizes and CRC32s of the above, written LAST
//! wal/<batch>/<source>.bin              records of sources that cannot read them again
//! statelog/<batch>-<partitions>.bin     stateful operations' inputs (see [`state_log`])
//! ```
//!
//! A snapshot without a manifest, or whose files do not match it, is ignored (with a warning)
//! and the previous one is used. On restart the newest good snapshot is loaded and every batch
//! logged in `offsets/` after it is run again from its logged ranges, so state and outputs come
//! out as if the process had never stopped.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

pub use sluice_storage::layout::{self, FORMAT_VERSION, JobMeta, StateLayout};
pub use sluice_storage::{
    LocalStore, MemoryStore, S3Settings, S3Store, Store as CheckpointStore, parse_s3_uri,
};

use crate::error::{Error, Result};
use crate::time::BatchInfo;

pub(crate) mod segment_log;
pub mod state_log;

/// Opens the store a manifest's `spec.checkpoint` names.
pub fn open_store(spec: &sluice_crds::CheckpointSpec) -> Result<Box<dyn CheckpointStore>> {
    if spec.uri.starts_with("s3://") {
        let settings = S3Settings {
            endpoint: spec.endpoint.clone(),
            region: spec.region.clone(),
            path_style: spec.path_style.unwrap_or(false),
            credentials: None,
        };
        return Ok(Box::new(S3Store::open(&spec.uri, &settings)?));
    }
    Ok(Box::new(LocalStore::open(local_dir(spec))?))
}

/// The directory of a checkpoint that is not on S3 (`file:///dir` or a bare path).
fn local_dir(spec: &sluice_crds::CheckpointSpec) -> &std::path::Path {
    std::path::Path::new(spec.uri.strip_prefix("file://").unwrap_or(&spec.uri))
}

/// Held while a process writes a local checkpoint's logs; dropped (and released by the
/// operating system, even on SIGKILL) when the process ends.
#[derive(Debug)]
pub struct WriterLock {
    _file: std::fs::File,
    dir: std::path::PathBuf,
}

impl WriterLock {
    /// The checkpoint directory it locks.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

/// Makes sure only one process writes a local checkpoint: two runs of one job interleaving
/// their offset and commit logs would corrupt it. S3 checkpoints have no such lock; on
/// Kubernetes the master's one-replica StatefulSet is the single writer. `None` for S3 or no
/// checkpoint.
pub fn lock_local_writer(spec: Option<&sluice_crds::CheckpointSpec>) -> Result<Option<WriterLock>> {
    let Some(spec) = spec.filter(|s| !s.uri.starts_with("s3://")) else {
        return Ok(None);
    };
    lock_dir(local_dir(spec)).map(Some).map_err(|e| match e {
        Error::Checkpoint(_) => Error::Checkpoint(format!(
            "{} is in use by another running sluice process; stop it first, or give this run \
             another spec.checkpoint.uri",
            spec.uri
        )),
        e => e,
    })
}

/// Locks the local checkpoint directory `dir` for this process (see [`lock_local_writer`]).
pub fn lock_dir(dir: &std::path::Path) -> Result<WriterLock> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create checkpoint directory", dir, e))?;
    let path = dir.join(".writer.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(WriterLock {
            _file: file,
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Checkpoint(format!(
            "{} is in use by another running sluice process",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
    }
}

/// A batch's input, logged before the batch runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OffsetEntry {
    pub batch: u64,
    pub time_ms: u64,
    /// The epoch of the master that planned it (0 in checkpoints from before epochs).
    #[serde(default)]
    pub epoch: u64,
    /// What each source contributes to the batch.
    pub ranges: BTreeMap<String, Json>,
    /// Where each source stands after planning the batch.
    pub positions: BTreeMap<String, Json>,
}

/// A completed batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitEntry {
    pub batch: u64,
    pub time_ms: u64,
    /// The epoch of the master that committed it (0 in checkpoints from before epochs).
    #[serde(default)]
    pub epoch: u64,
    pub records: u64,
    pub record_errors: u64,
    pub processing_ms: u64,
    pub committed_at_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    batch: u64,
    files: Vec<StateFile>,
    /// Absent in snapshots from before upgrades could change the layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layout: Option<StateLayout>,
    /// The snapshot that the files marked `delta` apply on; absent when every file is whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<u64>,
}

/// One state file of a snapshot, as its manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    pub key: String,
    pub len: u64,
    pub crc32: u32,
    /// The file holds the partition's changes since the manifest's base snapshot, not its
    /// whole state. Such files end in `.pieces` (`.stripe` before deltas were written in
    /// pieces, `.delta` before they carried stripes), so
    /// that a binary from before finds the key unknown and falls back to an older snapshot
    /// rather than misreading one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
    /// For a delta that carries a stripe: the snapshot its chain starts at, the first of its
    /// last completed stripe cycle (see `dstream::tracked`). Absent: the chain goes back to
    /// the partition's last whole state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
}

impl StateFile {
    /// Whether a chain that reads this file (the snapshot of `batch`'s) on its way back from
    /// a newer one starting at `from` (see [`StateFile::from`]) goes on to the snapshot below:
    /// a delta, above the chain's start. Recovery and retention both follow it, so that
    /// retention keeps exactly what recovery reads.
    fn chain_goes_below(&self, batch: u64, from: Option<u64>) -> bool {
        self.delta && from.is_none_or(|from| batch > from)
    }

    /// Where the chain of a newest file starts: its `from`, for a delta.
    fn chain_from(&self) -> Option<u64> {
        self.from.filter(|_| self.delta)
    }
}

/// State of every stateful operation and partition at the end of a batch, as it is written.
#[derive(Debug, Default, PartialEq)]
pub struct Snapshot {
    pub batch: u64,
    /// By (operation name, partition): its whole state, or its delta when `deltas` names it.
    pub parts: BTreeMap<(String, usize), Vec<u8>>,
    /// How `parts` is laid out, when the snapshot says: a job with another spec re-shards and
    /// renames from it (see [`crate::job::Job::restore`]). `None`: as the job that reads it.
    pub layout: Option<StateLayout>,
    /// The snapshot the deltas apply on: the one taken before this one, with this layout.
    pub base: Option<u64>,
    /// The parts that hold the changes since `base` rather than the whole state.
    pub deltas: BTreeSet<(String, usize)>,
    /// Of those, the ones whose chain starts at the first delta of a stripe cycle, with that
    /// snapshot's batch (see [`StateFile::from`]).
    pub from: BTreeMap<(String, usize), u64>,
}

/// A snapshot read back: every partition's state as the chain of encodings that gives it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SavedState {
    pub batch: u64,
    /// By (operation name, partition): the whole state of this snapshot or an earlier one,
    /// then the delta of each snapshot after that one up to this one, oldest first; or, for a
    /// chain that starts at a stripe cycle, an empty item and then the deltas from the cycle's
    /// first on (see `dstream::tracked::decode_chain`).
    pub parts: BTreeMap<(String, usize), Vec<Vec<u8>>>,
    /// The chains that start at a stripe cycle, with its first snapshot's batch: where the
    /// deltas written on this snapshot start theirs until another cycle completes.
    pub from: BTreeMap<(String, usize), u64>,
    /// As [`Snapshot::layout`]; every snapshot of a chain has the same.
    pub layout: Option<StateLayout>,
    /// The most deltas any partition's chain holds.
    pub depth: usize,
}

impl SavedState {
    /// The bytes read, whole states and deltas.
    pub fn bytes(&self) -> usize {
        self.parts.values().flatten().map(Vec::len).sum()
    }
}

fn batch_key(batch: u64) -> String {
    format!("{batch:020}")
}

fn parse_batch(name: &str) -> Option<u64> {
    name.trim_end_matches(".json").parse().ok()
}

/// The operation and partition of a state file of the snapshot of `batch`, from its key:
/// `state/BATCH/OP/PART.WRITER.bin` (`.pieces` for a delta, `.stripe` or `.delta` in older
/// checkpoints), or `PART.bin` in checkpoints from before unique keys.
pub(crate) fn state_file_part(batch: u64, key: &str) -> Option<(String, usize)> {
    let rest = key.strip_prefix(&format!("state/{}/", batch_key(batch)))?;
    let (op, file) = rest.rsplit_once('/')?;
    let stem = file
        .strip_suffix(".bin")
        .or_else(|| file.strip_suffix(".delta"))
        .or_else(|| file.strip_suffix(".stripe"))
        .or_else(|| file.strip_suffix(".pieces"))?;
    let part = stem.split('.').next()?.parse().ok()?;
    Some((op.to_string(), part))
}

/// A snapshot's state files by (operation, partition).
type PartFiles = BTreeMap<(String, usize), StateFile>;

/// A manifest's files by (operation, partition), each checked to be where its key says and
/// listed once.
fn manifest_files(manifest: &Manifest) -> Result<PartFiles> {
    let name = batch_key(manifest.batch);
    let mut files = BTreeMap::new();
    for file in &manifest.files {
        let part = state_file_part(manifest.batch, &file.key)
            .filter(|_| file.delta != file.key.ends_with(".bin"))
            .ok_or_else(|| Error::Checkpoint(format!("bad state key {}", file.key)))?;
        if let Some(twice) = files.insert(part, file.clone()) {
            let (op, part) = state_file_part(manifest.batch, &twice.key).unwrap_or_default();
            return Err(Error::Checkpoint(format!(
                "state/{name} lists partition {part} of {op} twice"
            )));
        }
    }
    Ok(files)
}

/// The oldest snapshot that a chain of `manifest`'s files reads, through the manifests of
/// `complete`: back to each partition's whole state, or to the start of its stripe cycle. A
/// chain broken by a missing manifest or file stops where it breaks (recovery skips such a
/// snapshot; nothing below the break is read).
fn chain_floor(manifest: &Manifest, complete: &BTreeMap<u64, Manifest>) -> u64 {
    let mut floor = manifest.batch;
    for file in &manifest.files {
        let Some(part) = state_file_part(manifest.batch, &file.key) else {
            continue;
        };
        let from = file.chain_from();
        let (mut at, mut below) = (manifest, file);
        while below.chain_goes_below(at.batch, from) {
            let Some(older) = at
                .base
                .filter(|&b| b < at.batch)
                .and_then(|b| complete.get(&b))
            else {
                break;
            };
            let Some(older_file) = older
                .files
                .iter()
                .find(|f| state_file_part(older.batch, &f.key).as_ref() == Some(&part))
            else {
                break;
            };
            (at, below) = (older, older_file);
        }
        floor = floor.min(at.batch);
    }
    floor
}

/// What a write to the offset or commit log did: log entries are written once, by the first
/// master to get there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logged {
    Written,
    /// An entry was there already, written in this epoch.
    Taken {
        epoch: u64,
    },
}

/// Where [`Checkpointer::prune`] records the oldest batch the logs' segments still count.
const LOG_FLOOR_KEY: &str = "offsets/floor.json";

/// Epoch claims kept by [`Checkpointer::prune`]: a replaced master finds its successor's
/// claim (see [`Checkpointer::superseded`]) unless this many masters came after it.
const KEPT_EPOCH_CLAIMS: usize = 1000;

/// State files read at once by a recovery.
const PARALLEL_READS: usize = 8;

/// Reads and writes one job's checkpoints.
pub struct Checkpointer {
    store: Box<dyn CheckpointStore>,
    /// Snapshot state every this many batches.
    pub interval: u64,
    /// Complete snapshots to keep.
    pub retain: usize,
    /// Names this process's state files apart from every other writer's (see
    /// [`Checkpointer::write_state_files`]).
    writer: String,
    writes: std::sync::atomic::AtomicU64,
    /// Batch time between snapshots, at least (0: every `interval` batches).
    snapshot_every_ms: u64,
    /// Where this process alone writes the checkpoint: the offset and commit logs' segments.
    appenders: Option<Appenders>,
}

/// The logs one process appends to while it holds the checkpoint's lock.
struct Appenders {
    offsets: segment_log::Appender,
    commits: segment_log::Appender,
    _lock: WriterLock,
}

/// An entry of the offset or commit log.
trait LogEntry: Serialize + for<'de> Deserialize<'de> {
    /// The log's directory.
    const DIR: &'static str;
    fn batch(&self) -> u64;
    fn epoch(&self) -> u64;
}

impl LogEntry for OffsetEntry {
    const DIR: &'static str = "offsets";
    fn batch(&self) -> u64 {
        self.batch
    }
    fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl LogEntry for CommitEntry {
    const DIR: &'static str = "commits";
    fn batch(&self) -> u64 {
        self.batch
    }
    fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Checkpointer {
    /// A checkpointer over `store`.
    pub fn new(store: Box<dyn CheckpointStore>, interval: u64, retain: usize) -> Self {
        Self {
            store,
            interval: interval.max(1),
            retain: retain.max(1),
            writer: format!(
                "{:x}{:x}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos())
            ),
            writes: std::sync::atomic::AtomicU64::new(0),
            snapshot_every_ms: 0,
            appenders: None,
        }
    }

    /// For a local checkpoint this process holds the lock of (`lock` names the directory the
    /// store is on): offset and commit entries are appended to segment files (see
    /// [`segment_log`]) rather than written a file each. The lock is held as long as the
    /// checkpointer.
    pub fn holding(mut self, lock: WriterLock) -> Self {
        self.appenders = Some(Appenders {
            offsets: segment_log::Appender::new(lock.dir().join("offsets"), self.writer.clone()),
            commits: segment_log::Appender::new(lock.dir().join("commits"), self.writer.clone()),
            _lock: lock,
        });
        self
    }

    /// Snapshots also at most once per `every` of batch time (`spec.checkpoint.snapshotEvery`).
    pub fn snapshot_every(mut self, every: std::time::Duration) -> Self {
        self.snapshot_every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Whether `batch` takes a snapshot, the last one having been taken at `last` (0: none).
    pub fn snapshot_due(&self, batch: &BatchInfo, last: u64) -> bool {
        let since_ms = batch
            .index
            .saturating_sub(last)
            .saturating_mul(batch.interval_ms);
        batch.index.is_multiple_of(self.interval) && since_ms >= self.snapshot_every_ms
    }

    /// Where checkpoints go.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>> {
        match self.store.get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Checkpoint(format!("{}/{key} is unreadable: {e}", self.describe()))
            }),
        }
    }

    fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::Internal(format!("cannot encode {key}: {e}")))?;
        Ok(self.store.put(key, &bytes)?)
    }

    /// The job a checkpoint belongs to, if any was written.
    pub fn load_meta(&self) -> Result<Option<JobMeta>> {
        self.get_json("job.json")
    }

    /// The job a checkpoint belongs to; `None` for a new checkpoint. A checkpoint that has
    /// logged batches but lost its `job.json` is damaged: starting it afresh would restart the
    /// job's clock and its input under the old log.
    pub fn load_meta_checked(&self) -> Result<Option<JobMeta>> {
        if let Some(meta) = self.load_meta()? {
            return Ok(Some(meta));
        }
        let logged = self.store.list("offsets")?.len() + self.store.list("commits")?.len();
        if logged > 0 {
            return Err(Error::Checkpoint(format!(
                "{} has no job.json but holds {logged} logged batches: it is damaged (job.json was deleted?). Restore job.json, or give the job a new spec.checkpoint.uri (or delete this one) to start over",
                self.describe()
            )));
        }
        Ok(None)
    }

    /// Records the job this checkpoint belongs to.
    pub fn write_meta(&self, meta: &JobMeta) -> Result<()> {
        self.put_json("job.json", meta)
    }

    /// Deletes the checkpoint's own layout (see [`layout::delete`]).
    pub fn delete_layout(&self) -> Result<()> {
        if let Some(a) = &self.appenders {
            a.offsets.reset();
            a.commits.reset();
        }
        Ok(layout::delete(&*self.store)?)
    }

    /// Claims the next epoch for this process: `epochs/<n>.json`, written only where no
    /// other master wrote it. A master looks for a newer claim before it plans or commits a
    /// batch ([`Checkpointer::superseded`]), every batch it plans and commits carries its
    /// epoch, and neither log entry is ever overwritten (see [`Logged`]): a master that a
    /// newer one replaced (a frozen node thawed, a network partition healed) stops at its next
    /// batch, and cannot slip a write in between.
    pub fn claim_epoch(&self) -> Result<u64> {
        for _ in 0..100 {
            let next = self
                .store
                .list("epochs")?
                .iter()
                .filter_map(|n| parse_batch(n))
                .max()
                .unwrap_or(0)
                + 1;
            let claim = serde_json::json!({
                "epoch": next,
                "pid": std::process::id(),
                "host": std::env::var("HOSTNAME").unwrap_or_default(),
                "claimedAtMs": crate::time::now_ms(),
            });
            let bytes = serde_json::to_vec_pretty(&claim)
                .map_err(|e| Error::Internal(format!("cannot encode an epoch claim: {e}")))?;
            if self
                .store
                .put_new(&format!("epochs/{}.json", batch_key(next)), &bytes)?
            {
                return Ok(next);
            }
        }
        Err(Error::Store(format!(
            "{}: no epoch could be claimed in 100 tries (as many masters starting at once?)",
            self.describe()
        )))
    }

    /// Whether a master newer than the one of `epoch` claimed the checkpoint. Every claim
    /// takes the next number, so the first after `epoch` is `epoch + 1`: one read, which finds
    /// a successor even where the log entries it could collide with have been pruned.
    pub fn superseded(&self, epoch: u64) -> Result<bool> {
        // A lone writer holds the directory's lock: no other master can have claimed it.
        if self.appenders.is_some() {
            return Ok(false);
        }
        Ok(self
            .store
            .get(&format!("epochs/{}.json", batch_key(epoch + 1)))?
            .is_some())
    }

    /// Logs a batch's input before it runs, unless the batch is logged already.
    pub fn write_offsets(&self, entry: &OffsetEntry) -> Result<Logged> {
        self.log_new(self.appenders.as_ref().map(|a| &a.offsets), entry)
    }

    /// Writes `entry` to its log unless its batch is there; else says the epoch of what is.
    fn log_new<E: LogEntry>(
        &self,
        log: Option<&segment_log::Appender>,
        entry: &E,
    ) -> Result<Logged> {
        let Some(log) = log else {
            return self.put_json_new(
                &format!("{}/{}.json", E::DIR, batch_key(entry.batch())),
                entry,
            );
        };
        // This process alone writes the log, so what is there is what it has seen.
        let newest =
            log.newest(|| Ok(self.logged_after::<E>(0)?.last().map_or(0, LogEntry::batch)))?;
        if entry.batch() <= newest {
            return match self.logged::<E>(entry.batch())? {
                Some(there) => Ok(Logged::Taken {
                    epoch: there.epoch(),
                }),
                None => Err(Error::Checkpoint(format!(
                    "{}: batch {} is not in {}/, whose newest batch is {newest}",
                    self.describe(),
                    entry.batch(),
                    E::DIR
                ))),
            };
        }
        let bytes = serde_json::to_vec(entry)
            .map_err(|e| Error::Internal(format!("cannot encode a {} entry: {e}", E::DIR)))?;
        log.append(entry.batch(), &bytes)?;
        Ok(Logged::Written)
    }

    /// Writes `value` at `key` only where nothing is; else says the epoch of what is there.
    fn put_json_new<T: Serialize>(&self, key: &str, value: &T) -> Result<Logged> {
        #[derive(Deserialize)]
        struct Epoch {
            #[serde(default)]
            epoch: u64,
        }
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::Internal(format!("cannot encode {key}: {e}")))?;
        if self.store.put_new(key, &bytes)? {
            return Ok(Logged::Written);
        }
        let there: Epoch = self
            .get_json(key)?
            .ok_or_else(|| Error::Checkpoint(format!("{key} was there, then vanished")))?;
        Ok(Logged::Taken { epoch: there.epoch })
    }

    /// The logged input of one batch.
    pub fn read_offsets(&self, batch: u64) -> Result<Option<OffsetEntry>> {
        self.logged(batch)
    }

    /// Logged batches after `batch`, in order.
    pub fn offsets_after(&self, batch: u64) -> Result<Vec<OffsetEntry>> {
        self.logged_after(batch)
    }

    /// The entry of `batch` in the log of `E`, in either form.
    fn logged<E: LogEntry>(&self, batch: u64) -> Result<Option<E>> {
        if let Some(entry) = self.get_json(&format!("{}/{}.json", E::DIR, batch_key(batch)))? {
            return Ok(Some(entry));
        }
        if batch < self.log_floor()? {
            return Ok(None);
        }
        // Entries of a segment are below the next one's first batch.
        let segments = self.segments(E::DIR)?;
        let Some((_, name)) = segments.iter().rev().find(|(first, _)| *first <= batch) else {
            return Ok(None);
        };
        Ok(self
            .segment_entries::<E>(name)?
            .into_iter()
            .find(|e| e.batch() == batch))
    }

    /// The entries after `batch` in the log of `E`, in either form, in order.
    fn logged_after<E: LogEntry>(&self, batch: u64) -> Result<Vec<E>> {
        let keys: Vec<String> = self
            .store
            .list(E::DIR)?
            .iter()
            .filter(|name| parse_batch(name).is_some_and(|b| b > batch))
            .map(|name| format!("{}/{name}", E::DIR))
            .collect();
        let mut out: BTreeMap<u64, E> = BTreeMap::new();
        for (key, bytes) in keys.iter().zip(self.store.get_many(&keys)?) {
            let bytes =
                bytes.ok_or_else(|| Error::Checkpoint(format!("{key} vanished while reading")))?;
            let entry: E = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Checkpoint(format!("{}/{key} is unreadable: {e}", self.describe()))
            })?;
            out.insert(entry.batch(), entry);
        }
        let batch = batch.max(self.log_floor()?.saturating_sub(1));
        let segments = self.segments(E::DIR)?;
        for (i, (_, name)) in segments.iter().enumerate() {
            // A segment whose successor starts at or before `batch + 1` holds nothing after it.
            if segments
                .get(i + 1)
                .is_some_and(|(next, _)| *next <= batch + 1)
            {
                continue;
            }
            for entry in self.segment_entries::<E>(name)? {
                if entry.batch() > batch {
                    out.entry(entry.batch()).or_insert(entry);
                }
            }
        }
        Ok(out.into_values().collect())
    }

    /// The oldest batch the logs' segments still count (0: all): [`Checkpointer::prune`] drops
    /// whole segments only, so it records where the log it would have kept begins. A recovery
    /// that falls back past it (every snapshot damaged) then meets the gap it met when entries
    /// were files, rather than replaying batches whose write-ahead logs are gone.
    fn log_floor(&self) -> Result<u64> {
        #[derive(Deserialize)]
        struct Floor {
            batch: u64,
        }
        Ok(self
            .get_json::<Floor>(LOG_FLOOR_KEY)?
            .map_or(0, |f| f.batch))
    }

    /// The segments of the log in `dir`, by first batch.
    fn segments(&self, dir: &str) -> Result<Vec<(u64, String)>> {
        let mut segments: Vec<(u64, String)> = self
            .store
            .list(dir)?
            .into_iter()
            .filter_map(|name| Some((segment_log::segment_first(&name)?, name)))
            .collect();
        segments.sort();
        Ok(segments)
    }

    /// The whole entries of one segment (a torn tail, from a process killed mid-append, is
    /// left out: it was never durable, so nothing after it happened).
    fn segment_entries<E: LogEntry>(&self, name: &str) -> Result<Vec<E>> {
        let key = format!("{}/{name}", E::DIR);
        let Some(bytes) = self.store.get(&key)? else {
            return Ok(Vec::new());
        };
        let (frames, torn) = segment_log::entries(&bytes);
        if torn > 0 {
            tracing::debug!(segment = %key, bytes = torn, "a log segment ends in a torn entry");
        }
        frames
            .into_iter()
            .map(|frame| {
                serde_json::from_slice(frame).map_err(|e| {
                    Error::Checkpoint(format!("{}/{key} is unreadable: {e}", self.describe()))
                })
            })
            .collect()
    }

    /// Writes a write-ahead-log entry (the records of a source that cannot replay).
    pub fn put_log(&self, key: &str, bytes: &[u8]) -> Result<()> {
        Ok(self.store.put(key, bytes)?)
    }

    /// Reads the write-ahead-log entries the ranges of a batch refer to, by source.
    pub fn logged_inputs(
        &self,
        ranges: &BTreeMap<String, Json>,
    ) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut out = BTreeMap::new();
        for (name, range) in ranges {
            if let Some(key) = range.get("wal").and_then(Json::as_str) {
                let bytes = self.store.get(key)?.ok_or_else(|| {
                    Error::Checkpoint(format!("write-ahead log {key} is missing"))
                })?;
                out.insert(name.clone(), bytes);
            }
        }
        Ok(out)
    }

    /// Marks a batch complete, unless it is marked already.
    pub fn write_commit(&self, entry: &CommitEntry) -> Result<Logged> {
        self.log_new(self.appenders.as_ref().map(|a| &a.commits), entry)
    }

    /// The newest completed batch.
    pub fn last_commit(&self) -> Result<Option<CommitEntry>> {
        let file = match self
            .store
            .list("commits")?
            .iter()
            .rfind(|name| parse_batch(name).is_some())
        {
            Some(name) => self.get_json::<CommitEntry>(&format!("commits/{name}"))?,
            None => None,
        };
        // The newest segment with a whole entry holds the newest appended one.
        let mut appended = None;
        for (_, name) in self.segments("commits")?.iter().rev() {
            appended = self.segment_entries::<CommitEntry>(name)?.pop();
            if appended.is_some() {
                break;
            }
        }
        Ok(match (file, appended) {
            (Some(a), Some(b)) => Some(if a.batch >= b.batch { a } else { b }),
            (a, b) => a.or(b),
        })
    }

    /// Completed batches after `batch`, in order.
    pub fn commits_after(&self, batch: u64) -> Result<Vec<CommitEntry>> {
        self.logged_after(batch)
    }

    /// Writes a snapshot: the state files first, the manifest last.
    pub fn write_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        let files = self.write_state_files(snapshot)?;
        self.write_manifest(
            snapshot.batch,
            files,
            snapshot.layout.clone(),
            snapshot.base,
        )
    }

    /// Writes state files of a snapshot (all of it, or one worker's partitions) and returns
    /// what the manifest must list.
    ///
    /// Every write gets a key of its own (`PART.WRITER.bin`), never reused: the same snapshot
    /// is written again after a failure, possibly by another worker while the first one's
    /// request is still in flight, and the bytes differ (state is serialized in hash order).
    /// Two writes to one key could leave an object whose bytes and recorded checksum come
    /// from different writes on a store that does not update both at once. The manifest names
    /// the keys that count; the others go when the snapshot is pruned.
    pub fn write_state_files(&self, snapshot: &Snapshot) -> Result<Vec<StateFile>> {
        let dir = format!("state/{}", batch_key(snapshot.batch));
        let write = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !snapshot.deltas.is_empty() && snapshot.base.is_none() {
            return Err(Error::Internal(format!(
                "the snapshot of batch {} has deltas and no base",
                snapshot.batch
            )));
        }
        let mut files = Vec::new();
        let mut contents: Vec<&[u8]> = Vec::new();
        for ((name, part), bytes) in &snapshot.parts {
            let delta = snapshot.deltas.contains(&(name.clone(), *part));
            let from = snapshot.from.get(&(name.clone(), *part)).copied();
            if let Some(from) = from
                && (!delta || from > snapshot.batch)
            {
                return Err(Error::Internal(format!(
                    "the snapshot of batch {} starts the chain of {name} partition {part} at batch {from}",
                    snapshot.batch
                )));
            }
            // Deltas are written in pieces (`sluice-delta-v4`): a binary from before pieces
            // finds the key unknown, as one from before stripes does `.stripe` and one from
            // before deltas `.delta`, and falls back to an older snapshot.
            let suffix = if delta { "pieces" } else { "bin" };
            let key = format!("{dir}/{name}/{part}.{}{write:x}.{suffix}", self.writer);
            files.push(StateFile {
                key,
                len: bytes.len() as u64,
                crc32: crc32fast::hash(bytes),
                delta,
                from,
            });
            contents.push(bytes);
        }
        // Written together: on a local disk the partitions of an operation share one directory
        // sync, on S3 they are in flight at once.
        let objects: Vec<(&str, &[u8])> = files
            .iter()
            .zip(contents)
            .map(|(file, bytes)| (file.key.as_str(), bytes))
            .collect();
        self.store.put_many(&objects)?;
        Ok(files)
    }

    /// Completes a snapshot: the manifest, written last, makes it visible to recovery.
    /// `base`: the snapshot its delta files apply on.
    pub fn write_manifest(
        &self,
        batch: u64,
        files: Vec<StateFile>,
        layout: Option<StateLayout>,
        base: Option<u64>,
    ) -> Result<()> {
        let has_deltas = files.iter().any(|f| f.delta);
        match base {
            Some(b) if b >= batch => {
                return Err(Error::Internal(format!(
                    "the snapshot of batch {batch} would apply on the later one of batch {b}"
                )));
            }
            None if has_deltas => {
                return Err(Error::Internal(format!(
                    "the snapshot of batch {batch} has deltas and no base"
                )));
            }
            _ => {}
        }
        let dir = format!("state/{}", batch_key(batch));
        self.put_json(
            &format!("{dir}/MANIFEST.json"),
            &Manifest {
                batch,
                files,
                layout,
                base: base.filter(|_| has_deltas),
            },
        )
    }

    /// The snapshot of `batch`, verified: every partition of every operation.
    pub fn snapshot_at(&self, batch: u64) -> Result<SavedState> {
        self.read_state(batch, 0, &|_| true)
    }

    /// Deletes the state log: after a change of the state's layout it describes partitions
    /// and operations that are no more (recovery recomputes what it covered instead).
    pub fn drop_state_log(&self) -> Result<()> {
        let keys: Vec<String> = self.state_log()?.into_iter().map(|l| l.key).collect();
        Ok(self.store.delete_objects(&keys)?)
    }

    /// The batches of the snapshots present, newest first (complete or not: a snapshot is
    /// complete when [`Checkpointer::has_manifest`]).
    pub fn snapshot_batches(&self) -> Result<Vec<u64>> {
        let mut batches: Vec<u64> = self
            .store
            .list("state")?
            .iter()
            .filter_map(|name| parse_batch(name))
            .collect();
        batches.sort_unstable_by(|a, b| b.cmp(a));
        Ok(batches)
    }

    /// Whether the snapshot of `batch` was completed (its manifest written): one small read,
    /// so that the master picks a snapshot without reading the state it holds.
    pub fn has_manifest(&self, batch: u64) -> Result<bool> {
        Ok(self.read_manifest(batch)?.is_some())
    }

    /// The files the manifest of `batch` lists (whole states and deltas); `None` without one.
    pub fn snapshot_files(&self, batch: u64) -> Result<Option<Vec<StateFile>>> {
        Ok(self.read_manifest(batch)?.map(|m| m.files))
    }

    fn read_manifest(&self, batch: u64) -> Result<Option<Manifest>> {
        let manifest: Option<Manifest> =
            self.get_json(&format!("state/{}/MANIFEST.json", batch_key(batch)))?;
        match manifest {
            Some(m) if m.batch != batch => Err(Error::Checkpoint(format!(
                "state/{} holds the manifest of batch {}",
                batch_key(batch),
                m.batch
            ))),
            other => Ok(other),
        }
    }

    /// The state of the partitions `wanted` (of a job of `partitions`) in the snapshot of
    /// `batch`, verified against its manifest; the files of other partitions are not read,
    /// unless the snapshot has another partition count (every partition is then re-sharded
    /// from all of them). A partition held as a delta comes with the files of the snapshots
    /// before it back to its whole state. [`Error::Checkpoint`] when the snapshot (or one it
    /// builds on) is torn or damaged.
    pub fn read_state(
        &self,
        batch: u64,
        partitions: usize,
        wanted: &dyn Fn(usize) -> bool,
    ) -> Result<SavedState> {
        let name = batch_key(batch);
        let manifest = self.read_manifest(batch)?.ok_or_else(|| {
            Error::Checkpoint(format!(
                "state/{name} has no manifest (an interrupted snapshot)"
            ))
        })?;
        // Snapshots from before layouts were recorded have the layout job.json kept for them.
        let layout = match &manifest.layout {
            Some(layout) => Some(layout.clone()),
            None => self.load_meta()?.and_then(|m| m.legacy_layout),
        };
        let all = |_: usize| true;
        let wanted: &dyn Fn(usize) -> bool = match &layout {
            Some(l) if l.partitions != partitions => &all,
            _ => wanted,
        };
        let mut saved = SavedState {
            batch: manifest.batch,
            parts: BTreeMap::new(),
            from: BTreeMap::new(),
            layout,
            depth: 0,
        };
        // Each manifest of the chain, read once however many partitions go through it; then
        // every file of every wanted partition's chain, oldest first.
        let newest = manifest_files(&manifest)?;
        // The manifests below the newest, each with its files by partition.
        let mut chain: Vec<(Manifest, PartFiles)> = Vec::new();
        let mut plan = Vec::new();
        for (part_key, file) in newest {
            if !wanted(part_key.1) {
                continue;
            }
            // Back to a whole state, or to the start of the file's stripe cycle.
            let from = file.chain_from();
            let mut files = vec![file];
            let mut at = 0;
            let mut oldest = manifest.batch;
            while files
                .last()
                .is_some_and(|f| f.chain_goes_below(oldest, from))
            {
                if at == chain.len() {
                    let above = chain.last().map_or(&manifest, |(m, _)| m);
                    let next = self.base_manifest(above)?;
                    let listed = manifest_files(&next)?;
                    chain.push((next, listed));
                }
                let (older, listed) = &chain[at];
                at += 1;
                let file = listed.get(&part_key).cloned().ok_or_else(|| {
                    Error::Checkpoint(format!(
                        "state/{} has no file for {} partition {}, which the snapshot of batch {batch} builds on",
                        batch_key(older.batch),
                        part_key.0,
                        part_key.1
                    ))
                })?;
                oldest = older.batch;
                files.push(file);
            }
            saved.depth = saved.depth.max(files.len() - 1);
            files.reverse();
            if let Some(from) = from {
                if oldest != from && files.first().is_some_and(|f| f.delta) {
                    return Err(Error::Checkpoint(format!(
                        "state/{name} starts the chain of {} partition {} at batch {from}, which its snapshots do not go through",
                        part_key.0, part_key.1
                    )));
                }
                saved.from.insert(part_key.clone(), from);
            }
            plan.push((part_key, files));
        }
        let all: Vec<&StateFile> = plan.iter().flat_map(|(_, files)| files).collect();
        let mut read = self.read_state_files(&all)?.into_iter();
        for (part_key, files) in plan {
            // A chain that starts at a delta starts at a stripe cycle, onto unknown entries.
            let mut chain: Vec<Vec<u8>> = Vec::with_capacity(files.len() + 1);
            if files.first().is_some_and(|f| f.delta) {
                chain.push(Vec::new());
            }
            chain.extend(read.by_ref().take(files.len()));
            saved.parts.insert(part_key, chain);
        }
        Ok(saved)
    }

    /// The bytes of `files`, in their order, read [`PARALLEL_READS`] at a time: on S3 a
    /// recovery waits for the slowest of a few reads, not for the sum of them all.
    fn read_state_files(&self, files: &[&StateFile]) -> Result<Vec<Vec<u8>>> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let read: Vec<std::sync::Mutex<Option<Result<Vec<u8>>>>> =
            files.iter().map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..PARALLEL_READS.min(files.len()) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(file) = files.get(i) else { break };
                        let bytes = self.read_state_file(file);
                        let failed = bytes.is_err();
                        *read[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
                        if failed {
                            // The snapshot is unusable: the others need not be read.
                            next.store(files.len(), std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let mut out = Vec::with_capacity(files.len());
        // A slot left empty was skipped after a failure, which a slot before or after holds.
        for slot in read {
            if let Some(bytes) = slot.into_inner().unwrap_or_else(|e| e.into_inner()) {
                out.push(bytes?);
            }
        }
        if out.len() != files.len() {
            return Err(Error::Internal(format!(
                "{} of {} state files read, and no failure",
                out.len(),
                files.len()
            )));
        }
        Ok(out)
    }

    /// The manifest of the snapshot that `manifest`'s deltas apply on, with the same layout.
    fn base_manifest(&self, manifest: &Manifest) -> Result<Manifest> {
        let name = batch_key(manifest.batch);
        let base = manifest
            .base
            .filter(|&b| b < manifest.batch)
            .ok_or_else(|| {
                Error::Checkpoint(format!(
                    "state/{name} lists deltas without an earlier snapshot to apply them on"
                ))
            })?;
        let older = self.read_manifest(base)?.ok_or_else(|| {
            Error::Checkpoint(format!(
                "state/{name} builds on the snapshot of batch {base}, which has no manifest"
            ))
        })?;
        if older.layout != manifest.layout {
            return Err(Error::Checkpoint(format!(
                "state/{name} builds on the snapshot of batch {base}, which has another layout"
            )));
        }
        Ok(older)
    }

    /// A state file's bytes, checked against what its manifest lists.
    fn read_state_file(&self, file: &StateFile) -> Result<Vec<u8>> {
        let bytes = self
            .store
            .get(&file.key)?
            .ok_or_else(|| Error::Checkpoint(format!("{} is missing", file.key)))?;
        if bytes.len() as u64 != file.len || crc32fast::hash(&bytes) != file.crc32 {
            return Err(Error::Checkpoint(format!(
                "{} does not match its checksum",
                file.key
            )));
        }
        Ok(bytes)
    }

    /// The newest snapshot that reads back whole; corrupt or torn ones are skipped with a
    /// warning. `None` when there is none.
    pub fn latest_snapshot(&self) -> Result<Option<SavedState>> {
        for batch in self.snapshot_batches()? {
            match self.snapshot_at(batch) {
                Ok(s) => return Ok(Some(s)),
                Err(Error::Checkpoint(why)) => {
                    tracing::warn!(checkpoint = %self.describe(), snapshot = batch, %why, "skipping an unusable snapshot; trying the previous one");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Deletes snapshots beyond the newest `retain` complete ones and the snapshots their
    /// deltas build on, and logs older than the oldest kept snapshot (its own offsets stay:
    /// they hold the source positions to resume at).
    pub fn prune(&self) -> Result<()> {
        let names = self.store.list("state")?;
        // Complete snapshots (their manifests read), oldest first.
        let complete: BTreeMap<u64, Manifest> = names
            .iter()
            .filter_map(|n| parse_batch(n))
            .filter_map(|b| Some((b, self.read_manifest(b).ok().flatten()?)))
            .collect();
        // The state log serves recovery from the newest snapshot only (from an older one,
        // after damage, its batches are recomputed instead): it is the bulk of what a job
        // writes, so it goes as soon as a snapshot covers it.
        if let Some(&newest) = complete.keys().next_back() {
            let covered: Vec<String> = self
                .state_log()?
                .into_iter()
                .filter(|l| l.batch <= newest)
                .map(|l| l.key)
                .collect();
            self.store.delete_objects(&covered)?;
        }
        if complete.len() <= self.retain {
            return Ok(());
        }
        // The oldest kept snapshot, and below it the oldest that a kept one's chains read.
        let kept: Vec<&Manifest> = complete.values().rev().take(self.retain).collect();
        let floor = kept
            .iter()
            .map(|m| chain_floor(m, &complete))
            .min()
            .unwrap_or(0);
        for name in &names {
            if parse_batch(name).is_some_and(|b| b < floor) {
                self.store.delete(&format!("state/{name}"))?;
            }
        }
        for dir in ["offsets", "commits"] {
            let old: Vec<String> = self
                .store
                .list(dir)?
                .into_iter()
                .filter(|name| parse_batch(name).is_some_and(|b| b < floor))
                .map(|name| format!("{dir}/{name}"))
                .collect();
            self.store.delete_objects(&old)?;
        }
        // Segments all of whose batches are below the floor: those followed by one starting
        // at or below it. The floor is recorded first: what is left of a segment below it no
        // longer counts.
        let logs = [
            ("offsets", self.segments("offsets")?),
            ("commits", self.segments("commits")?),
        ];
        if logs.iter().any(|(_, segments)| !segments.is_empty()) {
            self.put_json(LOG_FLOOR_KEY, &serde_json::json!({ "batch": floor }))?;
        }
        for (dir, segments) in logs {
            let old: Vec<String> = segments
                .windows(2)
                .filter(|pair| pair[1].0 <= floor)
                .map(|pair| format!("{dir}/{}", pair[0].1))
                .collect();
            self.store.delete_objects(&old)?;
        }
        // Epoch claims: a replaced master looks for its successor's among the newest.
        let epochs = self.store.list("epochs")?;
        let old: Vec<String> = epochs
            .iter()
            .rev()
            .skip(KEPT_EPOCH_CLAIMS)
            .map(|n| format!("epochs/{n}"))
            .collect();
        self.store.delete_objects(&old)?;
        // Directories, one per batch.
        for name in self.store.list("wal")? {
            if parse_batch(&name).is_some_and(|b| b < floor) {
                self.store.delete(&format!("wal/{name}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_due_every_interval_batches_and_at_most_every_snapshot_every() {
        let every = |interval, spacing_ms| {
            let c = Checkpointer::new(Box::new(MemoryStore::default()), interval, 2)
                .snapshot_every(std::time::Duration::from_millis(spacing_ms));
            let mut last = 0;
            let mut taken = Vec::new();
            for index in 1..=24 {
                if c.snapshot_due(&BatchInfo::new(0, 100, index), last) {
                    taken.push(index);
                    last = index;
                }
            }
            taken
        };
        assert_eq!(every(3, 0), vec![3, 6, 9, 12, 15, 18, 21, 24]);
        assert_eq!(every(3, 250), vec![3, 6, 9, 12, 15, 18, 21, 24]);
        assert_eq!(every(3, 500), vec![6, 12, 18, 24]);
        assert_eq!(every(1, 1000), vec![10, 20]);
    }

    fn snapshot(batch: u64) -> Snapshot {
        let mut s = Snapshot {
            batch,
            ..Snapshot::default()
        };
        s.parts
            .insert(("000-state".into(), 0), vec![batch as u8; 4]);
        s
    }

    /// [`snapshot`] as it reads back.
    fn saved(batch: u64) -> SavedState {
        let mut s = SavedState {
            batch,
            ..SavedState::default()
        };
        s.parts
            .insert(("000-state".into(), 0), vec![vec![batch as u8; 4]]);
        s
    }

    #[test]
    fn every_state_write_has_a_key_of_its_own_and_old_keys_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Checkpointer::new(Box::new(LocalStore::open(dir.path()).expect("store")), 1, 3);
        let first = c.write_state_files(&snapshot(4)).expect("write");
        let again = c.write_state_files(&snapshot(4)).expect("write");
        assert_ne!(first[0].key, again[0].key);
        c.write_manifest(4, again, None, None).expect("manifest");
        assert_eq!(c.snapshot_at(4).expect("read"), saved(4));
        // A checkpoint written before unique keys: `PART.bin`.
        let old = snapshot(5);
        let bytes = &old.parts[&("000-state".to_string(), 0)];
        let key = "state/00000000000000000005/000-state/0.bin".to_string();
        c.store.put(&key, bytes).expect("put");
        let file = StateFile {
            key,
            len: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
            delta: false,
            from: None,
        };
        c.write_manifest(5, vec![file], None, None)
            .expect("manifest");
        assert_eq!(c.snapshot_at(5).expect("read"), saved(5));
    }

    /// A snapshot of partitions 0 and 1 of one operation: deltas on `base` for `deltas`.
    fn partial(batch: u64, base: Option<u64>, deltas: &[usize]) -> Snapshot {
        let mut s = Snapshot {
            batch,
            base,
            ..Snapshot::default()
        };
        for part in 0..2 {
            let key = ("000-state".to_string(), part);
            if deltas.contains(&part) {
                s.deltas.insert(key.clone());
            }
            s.parts.insert(key, vec![batch as u8, part as u8]);
        }
        s
    }

    #[test]
    fn a_delta_reads_back_with_the_snapshots_it_builds_on() {
        let c = Checkpointer::new(Box::new(MemoryStore::default()), 1, 10);
        c.write_snapshot(&partial(1, None, &[])).expect("whole");
        c.write_snapshot(&partial(2, Some(1), &[0, 1]))
            .expect("deltas");
        c.write_snapshot(&partial(3, Some(2), &[0])).expect("delta");
        let read = c.snapshot_at(3).expect("read");
        let op = |part| ("000-state".to_string(), part);
        assert_eq!(read.parts[&op(0)], vec![vec![1, 0], vec![2, 0], vec![3, 0]]);
        assert_eq!(read.parts[&op(1)], vec![vec![3, 1]]);
        assert_eq!(read.depth, 2);
        // Only the wanted partition's chain is read.
        let one = c.read_state(3, 2, &|p| p == 1).expect("read");
        assert_eq!(one.parts.keys().collect::<Vec<_>>(), vec![&op(1)]);
        // Binaries from before deltas find a key they cannot place, not a whole state.
        let manifest = c.read_manifest(3).expect("read").expect("manifest");
        assert!(
            manifest
                .files
                .iter()
                .any(|f| f.delta && f.key.ends_with(".pieces"))
        );
        // A delta without its base cannot be read: recovery falls back past it.
        c.store
            .delete("state/00000000000000000002/MANIFEST.json")
            .expect("delete");
        let err = c.snapshot_at(3).expect_err("no base");
        assert!(
            matches!(&err, Error::Checkpoint(m) if m.contains("builds on the snapshot of batch 2")),
            "{err}"
        );
        assert_eq!(c.latest_snapshot().expect("read").map(|s| s.batch), Some(1));
        // Deltas never name a later snapshot, nor go without a base.
        let files = c
            .write_state_files(&partial(4, Some(3), &[0]))
            .expect("files");
        assert!(c.write_manifest(4, files.clone(), None, Some(5)).is_err());
        assert!(c.write_manifest(4, files, None, None).is_err());
        assert!(c.write_state_files(&partial(4, None, &[0])).is_err());
    }

    #[test]
    fn prune_keeps_the_snapshots_a_kept_delta_builds_on() {
        let c = Checkpointer::new(Box::new(MemoryStore::default()), 1, 2);
        let write = |batch, base: Option<u64>| {
            c.write_offsets(&offsets(batch, 1)).expect("offsets");
            let deltas: &[usize] = if base.is_some() { &[0] } else { &[] };
            c.write_snapshot(&partial(batch, base, deltas))
                .expect("snapshot");
            c.prune().expect("prune");
        };
        write(1, None);
        for b in 2..=4 {
            write(b, Some(b - 1));
        }
        assert_eq!(c.snapshot_batches().expect("list"), vec![4, 3, 2, 1]);
        assert!(c.read_offsets(1).expect("read").is_some());
        assert_eq!(c.snapshot_at(4).expect("read").depth, 3);
        write(5, None);
        write(6, Some(5));
        assert_eq!(c.snapshot_batches().expect("list"), vec![6, 5]);
        assert!(c.read_offsets(4).expect("read").is_none());
        assert_eq!(c.snapshot_at(6).expect("read").depth, 1);
    }

    /// Partitions written whole in turns, then deltas with stripes: every snapshot has a
    /// delta, so following the manifests' bases would keep every snapshot; each file's chain
    /// reads only back to its whole state or its stripe cycle's start.
    #[test]
    fn prune_keeps_what_each_partitions_chain_reads_and_no_more() {
        let c = Checkpointer::new(Box::new(MemoryStore::default()), 1, 2);
        let op = |part| ("000-state".to_string(), part);
        let write = |snapshot: &Snapshot| {
            c.write_offsets(&offsets(snapshot.batch, 1))
                .expect("offsets");
            c.write_snapshot(snapshot).expect("snapshot");
            c.prune().expect("prune");
        };
        write(&partial(1, None, &[]));
        // Turns: one partition whole, the other a delta on the snapshot before.
        for b in 2..=5 {
            write(&partial(b, Some(b - 1), &[(b % 2) as usize]));
        }
        assert_eq!(c.snapshot_batches().expect("list"), vec![5, 4, 3]);
        assert_eq!(c.snapshot_at(5).expect("read").depth, 1);
        // Deltas whose chains start at a stripe cycle: 6 to 7, then 7 to 8.
        let striped = |batch: u64, from: u64| {
            let mut s = partial(batch, Some(batch - 1), &[0, 1]);
            s.from = [(op(0), from), (op(1), from)].into();
            s
        };
        write(&striped(6, 6));
        write(&striped(7, 6));
        write(&striped(8, 7));
        assert_eq!(c.snapshot_batches().expect("list"), vec![8, 7, 6]);
        let read = c.snapshot_at(7).expect("read");
        assert_eq!(read.parts[&op(0)], vec![vec![], vec![6, 0], vec![7, 0]]);
        assert_eq!(read.from, [(op(0), 6), (op(1), 6)].into());
        assert_eq!(read.depth, 1);
        // A chain that does not go through the snapshot it starts at is damaged.
        let mut skipped = striped(10, 9);
        skipped.base = Some(8);
        write(&skipped);
        let err = c.snapshot_at(10).expect_err("passes batch 9");
        assert!(
            matches!(&err, Error::Checkpoint(m) if m.contains("at batch 9")),
            "{err}"
        );
        // A stripe cycle's start is a delta's, and never later than the delta.
        let mut whole = partial(11, Some(10), &[]);
        whole.from = [(op(0), 11)].into();
        assert!(c.write_state_files(&whole).is_err());
        assert!(c.write_state_files(&striped(11, 12)).is_err());
    }

    #[test]
    fn torn_newest_snapshot_falls_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Checkpointer::new(Box::new(LocalStore::open(dir.path()).expect("store")), 1, 3);
        c.write_snapshot(&snapshot(1)).expect("write");
        c.write_snapshot(&snapshot(2)).expect("write");
        // Corrupt batch 2's state file behind the manifest's back.
        let part_dir = dir.path().join("state/00000000000000000002/000-state");
        let file = std::fs::read_dir(&part_dir)
            .expect("state files")
            .next()
            .expect("one state file")
            .expect("entry")
            .path();
        std::fs::write(file, b"xx").expect("corrupt");
        assert_eq!(c.latest_snapshot().expect("read").map(|s| s.batch), Some(1));
        // A snapshot without a manifest is ignored too.
        c.store
            .put("state/00000000000000000003/000-state/0.bin", b"x")
            .expect("put");
        assert_eq!(c.latest_snapshot().expect("read").map(|s| s.batch), Some(1));
    }

    fn offsets(batch: u64, epoch: u64) -> OffsetEntry {
        OffsetEntry {
            batch,
            time_ms: batch * 10,
            epoch,
            ranges: BTreeMap::new(),
            positions: BTreeMap::from([("lines".to_string(), Json::from(batch))]),
        }
    }

    /// A checkpointer over a local directory, which it holds the lock of when `alone` (and
    /// then appends offset entries to segments of `per_segment`).
    fn local(dir: &std::path::Path, alone: bool, per_segment: u64) -> Checkpointer {
        let c = Checkpointer::new(Box::new(LocalStore::open(dir).expect("store")), 1, 2);
        if !alone {
            return c;
        }
        let mut c = c.holding(lock_dir(dir).expect("lock"));
        c.appenders = c.appenders.map(|a| Appenders {
            offsets: a.offsets.per_segment(per_segment),
            commits: a.commits.per_segment(per_segment),
            _lock: a._lock,
        });
        c
    }

    #[test]
    fn a_lone_writer_appends_offsets_to_segments_that_read_back_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Written before the log had segments: a file per batch.
        let old = local(dir.path(), false, 0);
        for b in 1..=2 {
            assert_eq!(
                old.write_offsets(&offsets(b, 1)).expect("write"),
                Logged::Written
            );
        }
        drop(old);
        let c = local(dir.path(), true, 3);
        assert_eq!(c.last_commit().expect("read"), None);
        for b in 3..=8 {
            let commit = CommitEntry {
                batch: b,
                time_ms: b * 10,
                epoch: 2,
                records: b,
                record_errors: 0,
                processing_ms: 1,
                committed_at_ms: 1,
            };
            assert_eq!(c.write_commit(&commit).expect("commit"), Logged::Written);
        }
        for b in 3..=8 {
            assert_eq!(
                c.write_offsets(&offsets(b, 2)).expect("write"),
                Logged::Written
            );
        }
        assert_eq!(
            c.write_offsets(&offsets(5, 3)).expect("write"),
            Logged::Taken { epoch: 2 },
            "an entry is never replaced"
        );
        assert_eq!(
            c.write_offsets(&offsets(2, 3)).expect("write"),
            Logged::Taken { epoch: 1 }
        );
        let segments = c.segments("offsets").expect("segments");
        let firsts: Vec<u64> = segments.iter().map(|(first, _)| *first).collect();
        assert_eq!(firsts, vec![3, 6]);
        // Killed in the middle of the next append: a torn frame at the segment's end.
        let last = dir.path().join("offsets").join(&segments[1].1);
        let mut torn = std::fs::OpenOptions::new()
            .append(true)
            .open(&last)
            .expect("open");
        std::io::Write::write_all(&mut torn, &[40, 0, 0, 0, 1, 2]).expect("tear");
        drop(c);
        // The next process reads everything back, in order, and starts a segment of its own.
        let c = local(dir.path(), true, 3);
        let batches = |c: &Checkpointer, after| -> Vec<u64> {
            c.offsets_after(after)
                .expect("read")
                .iter()
                .map(|e| e.batch)
                .collect()
        };
        assert_eq!(batches(&c, 0), (1..=8).collect::<Vec<_>>());
        assert_eq!(c.last_commit().expect("read").map(|e| e.batch), Some(8));
        let committed: Vec<u64> = c
            .commits_after(6)
            .expect("read")
            .iter()
            .map(|e| e.batch)
            .collect();
        assert_eq!(committed, vec![7, 8]);
        assert_eq!(batches(&c, 6), vec![7, 8]);
        assert_eq!(c.read_offsets(7).expect("read"), Some(offsets(7, 2)));
        assert_eq!(c.read_offsets(1).expect("read"), Some(offsets(1, 1)));
        assert_eq!(c.read_offsets(9).expect("read"), None);
        assert_eq!(
            c.write_offsets(&offsets(9, 3)).expect("write"),
            Logged::Written
        );
        assert_eq!(c.read_offsets(9).expect("read"), Some(offsets(9, 3)));
        let firsts: Vec<u64> = c
            .segments("offsets")
            .expect("segments")
            .iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(firsts, vec![3, 6, 9]);
        // Pruned below the oldest kept snapshot (7): the segment of 3..=5 and the files of 1
        // and 2 go; 6..=8 stays, holding the snapshot's own entry, and its 6 no longer counts,
        // as if it had gone with the rest.
        for b in [6, 7, 8] {
            c.write_snapshot(&snapshot(b)).expect("snapshot");
        }
        c.prune().expect("prune");
        assert_eq!(batches(&c, 0), vec![7, 8, 9]);
        assert_eq!(c.read_offsets(6).expect("read"), None);
        assert_eq!(c.read_offsets(7).expect("read"), Some(offsets(7, 2)));
        let segments: Vec<u64> = c
            .segments("offsets")
            .expect("segments")
            .iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(segments, vec![6, 9]);
    }

    #[test]
    fn log_entries_are_written_once_and_say_whose_they_are() {
        for alone in [false, true] {
            log_entries_are_written_once(alone);
        }
    }

    fn log_entries_are_written_once(alone: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = local(dir.path(), alone, 1024);
        assert_eq!(c.claim_epoch().expect("claim"), 1);
        assert_eq!(
            c.claim_epoch().expect("claim"),
            2,
            "each master its own epoch"
        );
        let first = OffsetEntry {
            batch: 7,
            time_ms: 7000,
            epoch: 1,
            ranges: BTreeMap::new(),
            positions: BTreeMap::new(),
        };
        assert_eq!(c.write_offsets(&first).expect("write"), Logged::Written);
        let second = OffsetEntry {
            epoch: 2,
            time_ms: 9999,
            ..first.clone()
        };
        assert_eq!(
            c.write_offsets(&second).expect("write"),
            Logged::Taken { epoch: 1 }
        );
        assert_eq!(c.read_offsets(7).expect("read"), Some(first));
        let commit = CommitEntry {
            batch: 7,
            time_ms: 7000,
            epoch: 2,
            records: 1,
            record_errors: 0,
            processing_ms: 1,
            committed_at_ms: 1,
        };
        assert_eq!(c.write_commit(&commit).expect("commit"), Logged::Written);
        let late = CommitEntry { epoch: 1, ..commit };
        assert_eq!(
            c.write_commit(&late).expect("commit"),
            Logged::Taken { epoch: 2 }
        );
    }

    #[test]
    fn deleting_the_layout_leaves_other_keys_alone() {
        const LAYOUT: [&str; 6] = [
            "job.json",
            "epochs/1.json",
            "offsets/1.json",
            "state/1/a/0.bin",
            "wal/1/x",
            "commits/1.json",
        ];
        const FOREIGN: [&str; 4] = ["other/data.csv", "statement.txt", "offsets.bak", "README"];
        let store = MemoryStore::default();
        for key in LAYOUT {
            store.put(key, b"x").expect("put");
        }
        for key in FOREIGN {
            store.put(key, b"keep").expect("put");
        }
        let c = Checkpointer::new(Box::new(store), 1, 2);
        c.delete_layout().expect("delete");
        for key in LAYOUT {
            assert_eq!(c.store.get(key).expect("get"), None, "{key}");
        }
        for key in FOREIGN {
            assert_eq!(
                c.store.get(key).expect("get"),
                Some(b"keep".to_vec()),
                "{key}"
            );
        }
    }

    #[test]
    fn prune_keeps_the_newest_snapshots_and_their_logs() {
        let c = Checkpointer::new(Box::new(MemoryStore::default()), 1, 2);
        for b in 1..=4 {
            let entry = OffsetEntry {
                batch: b,
                time_ms: b,
                epoch: 1,
                ranges: BTreeMap::new(),
                positions: BTreeMap::new(),
            };
            c.write_offsets(&entry).expect("offsets");
            c.write_snapshot(&snapshot(b)).expect("snapshot");
            c.put_state_log(b, &[0], &BTreeMap::new())
                .expect("state log");
        }
        c.put_state_log(5, &[0], &BTreeMap::new())
            .expect("state log");
        c.prune().expect("prune");
        let logged: Vec<u64> = c
            .state_log()
            .expect("list")
            .iter()
            .map(|l| l.batch)
            .collect();
        assert_eq!(
            logged,
            vec![5],
            "only the state log after the newest snapshot stays"
        );
        assert_eq!(c.store.list("state").expect("list").len(), 2);
        assert!(c.read_offsets(2).expect("read").is_none());
        assert!(c.read_offsets(3).expect("read").is_some());
        assert_eq!(c.latest_snapshot().expect("read").map(|s| s.batch), Some(4));
    }
}
