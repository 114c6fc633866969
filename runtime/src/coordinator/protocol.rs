//! The decisions of the checkpoint protocol, as pure functions of what was read: whether a
//! checkpoint belongs to this job, what a new one records, when a snapshot is due, whether a
//! snapshot's files cover the job's state, whether the offset log can be replayed, which
//! state log objects rebuild lost partitions, and how long to wait before trying again. The loop in [`super`] does the I/O around them.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::checkpoint::state_log::LoggedState;
use sluice_crds::StreamingJobSpec;
use sluice_crds::upgrade::{self, UpgradePlan};

use crate::checkpoint::{
    FORMAT_VERSION, JobMeta, OffsetEntry, StateFile, StateLayout, state_file_part,
};

/// What the job about to run is, to compare with a checkpoint's `job.json`.
#[derive(Clone, Debug)]
pub struct Identity {
    pub job: String,
    pub uid: Option<String>,
    pub fingerprint: String,
    pub interval_ms: u64,
    pub partitions: usize,
    /// The manifest, for a job compiled from one: a changed one is planned against the
    /// checkpoint's.
    pub spec: Option<StreamingJobSpec>,
    /// How the job lays its state out.
    pub layout: StateLayout,
}

/// What taking over a checkpoint takes.
#[derive(Debug, PartialEq)]
pub enum Takeover {
    /// The checkpoint is this job's as it is.
    AsIs,
    /// The checkpoint was written by another spec (or before specs were recorded): its
    /// `job.json` becomes this, under the plan of the change (`None` for the same spec).
    Rewrite(Box<JobMeta>, Option<UpgradePlan>),
}

impl Identity {
    /// The `job.json` of a new checkpoint, whose first batch ends at the next interval
    /// boundary after `now_ms`.
    pub fn new_meta(&self, now_ms: u64) -> JobMeta {
        JobMeta {
            format_version: FORMAT_VERSION,
            job: self.job.clone(),
            uid: self.uid.clone(),
            fingerprint: self.fingerprint.clone(),
            zero_time_ms: now_ms / self.interval_ms * self.interval_ms,
            interval_ms: self.interval_ms,
            partitions: self.partitions,
            spec: self.spec_json(),
            legacy_layout: None,
        }
    }

    fn spec_json(&self) -> Option<serde_json::Value> {
        self.spec
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
    }

    /// Whether the checkpoint at `place`, described by `meta`, can be resumed by this job, and
    /// what its `job.json` becomes; the reason when it cannot.
    pub fn take_over(&self, meta: &JobMeta, place: &str) -> Result<Takeover, String> {
        if meta.format_version != FORMAT_VERSION {
            return Err(format!(
                "checkpoint {place} has format version {}, this sluice reads {FORMAT_VERSION}; use a new checkpoint.uri",
                meta.format_version
            ));
        }
        let recorded = meta.spec.as_ref().map(|json| {
            serde_json::from_value::<StreamingJobSpec>(json.clone()).map_err(|e| {
                format!(
                    "checkpoint {place} records a spec this sluice cannot read ({e}); resume it with the sluice that wrote it, or use a new spec.checkpoint.uri"
                )
            })
        });
        if let (Some(recorded), Some(spec)) = (recorded, &self.spec) {
            let plan = upgrade::plan(&recorded?, spec);
            let allowed = spec
                .upgrade
                .as_ref()
                .and_then(|u| u.allow_state_loss)
                .unwrap_or(false);
            if let Some(why) = plan.refusal(allowed) {
                return Err(format!("checkpoint {place}: {why}"));
            }
            if plan.is_empty() && meta.fingerprint == self.fingerprint {
                return Ok(Takeover::AsIs);
            }
            let mut next = meta.clone();
            next.fingerprint = self.fingerprint.clone();
            next.partitions = self.partitions;
            next.spec = self.spec_json();
            return Ok(Takeover::Rewrite(Box::new(next), Some(plan)));
        }
        // A checkpoint that does not record its spec (or a job without one): only the job
        // that wrote it resumes it.
        let legacy = self.spec.as_ref().map(sluice_crds::fingerprint_v1);
        if meta.fingerprint != self.fingerprint && Some(&meta.fingerprint) != legacy.as_ref() {
            return Err(format!(
                "checkpoint {place} belongs to a different job (job {:?}, fingerprint {} != {}): the sources, pipeline, batch interval or parallelism changed, and it was written before sluice recorded specs, so the change cannot be planned. Resume it once with the spec that wrote it (it then records it), point spec.checkpoint.uri at a new location, or delete the old checkpoint to start over",
                meta.job, meta.fingerprint, self.fingerprint
            ));
        }
        if meta.interval_ms != self.interval_ms || meta.partitions != self.partitions {
            return Err(format!(
                "checkpoint {place} was written with batch interval {}ms and {} partitions, the job has {}ms and {}",
                meta.interval_ms, meta.partitions, self.interval_ms, self.partitions
            ));
        }
        if self.spec.is_none() {
            return Ok(Takeover::AsIs);
        }
        // Record the spec from now on, and the layout of the snapshots written before it.
        let mut next = meta.clone();
        next.fingerprint = self.fingerprint.clone();
        next.spec = self.spec_json();
        next.legacy_layout = Some(self.layout.clone());
        Ok(Takeover::Rewrite(Box::new(next), None))
    }
}

/// Why the files of the snapshot of `batch` do not make a whole snapshot: each of the
/// `operations` × `partitions` state partitions exactly once.
pub fn check_coverage(
    batch: u64,
    files: &[StateFile],
    operations: usize,
    partitions: usize,
) -> Result<(), String> {
    let mut covered = BTreeSet::new();
    for f in files {
        let Some((op, part)) = state_file_part(batch, &f.key) else {
            return Err(format!(
                "the snapshot of batch {batch} has a key outside it: {}",
                f.key
            ));
        };
        if part >= partitions || !covered.insert((op, part)) {
            return Err(format!(
                "the snapshot of batch {batch} holds partition {part} of an operation twice or out of range"
            ));
        }
    }
    let expected = operations * partitions;
    if covered.len() != expected {
        return Err(format!(
            "the snapshot of batch {batch} holds {} of the {expected} state partitions",
            covered.len()
        ));
    }
    Ok(())
}

/// One batch to rebuild from the state log: the objects that cover the lost partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogBatch {
    pub batch: u64,
    pub time_ms: u64,
    pub keys: Vec<String>,
}

/// Of `replay` (consecutive batches, with their times), the leading batches whose state log
/// covers every one of `parts`, each with the objects to read (one per partition at most;
/// the first in key order where several cover one). Stops at the first batch with a gap:
/// that one and the rest are recomputed.
pub fn state_log_plan(
    logged: &[LoggedState],
    parts: &[usize],
    replay: &[(u64, u64)],
) -> Vec<LogBatch> {
    let mut plan = Vec::new();
    if parts.is_empty() {
        return plan;
    }
    for &(batch, time_ms) in replay {
        let mut keys: Vec<String> = Vec::new();
        for p in parts {
            let Some(cover) = logged
                .iter()
                .find(|l| l.batch == batch && l.parts.contains(p))
            else {
                return plan;
            };
            if !keys.contains(&cover.key) {
                keys.push(cover.key.clone());
            }
        }
        plan.push(LogBatch {
            batch,
            time_ms,
            keys,
        });
    }
    plan
}

/// The logged batches to run again after the snapshot of `base`, up to `stop_after`; an
/// error when the log has a gap (it would skip input).
pub fn replay_plan(
    base: u64,
    logged: Vec<OffsetEntry>,
    stop_after: Option<u64>,
) -> Result<Vec<OffsetEntry>, String> {
    let mut plan = Vec::with_capacity(logged.len());
    for (expected, entry) in (base + 1..).zip(logged) {
        if entry.batch != expected {
            return Err(format!(
                "the offset log jumps from batch {} to {}",
                expected - 1,
                entry.batch
            ));
        }
        if stop_after.is_some_and(|last| entry.batch > last) {
            break;
        }
        plan.push(entry);
    }
    Ok(plan)
}

/// Waits that double from `first` up to `max`, and start again after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The wait before the next try; the one after is twice as long.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn logged(batch: u64, parts: &[usize]) -> LoggedState {
        LoggedState {
            batch,
            parts: parts.to_vec(),
            key: format!("statelog/{batch}-{parts:?}"),
        }
    }

    #[test]
    fn the_state_log_rebuilds_up_to_its_first_gap() {
        let log = vec![
            logged(11, &[0, 4]),
            logged(11, &[1, 5]),
            logged(12, &[0, 4]),
            logged(12, &[1]),
            logged(13, &[0, 4, 1, 5]),
        ];
        let replay = [(11, 1100), (12, 1200), (13, 1300)];
        // Partitions 0 and 4 were one worker's: one object per batch.
        let plan = state_log_plan(&log, &[0, 4], &replay);
        assert_eq!(plan.len(), 3);
        assert_eq!(plan[0].keys, vec![log[0].key.clone()]);
        assert_eq!((plan[2].batch, plan[2].time_ms), (13, 1300));
        // Partition 5 has no log for batch 12: batch 11 comes from the log, 12 on are redone.
        let plan = state_log_plan(&log, &[1, 5], &replay);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].keys, vec![log[1].key.clone()]);
        // Partitions of two objects read both.
        let plan = state_log_plan(&log, &[0, 1], &replay[..1]);
        assert_eq!(plan[0].keys, vec![log[0].key.clone(), log[1].key.clone()]);
        assert!(state_log_plan(&log, &[2], &replay).is_empty());
        assert!(state_log_plan(&log, &[], &replay).is_empty());
    }

    fn identity() -> Identity {
        Identity {
            job: "wc".into(),
            uid: None,
            fingerprint: "f1".into(),
            interval_ms: 1000,
            partitions: 4,
            spec: None,
            layout: StateLayout::default(),
        }
    }

    fn refusal(id: &Identity, meta: &JobMeta) -> String {
        match id.take_over(meta, "ckpt") {
            Err(why) => why,
            Ok(t) => panic!("taken over: {t:?}"),
        }
    }

    #[test]
    fn a_checkpoint_of_another_shape_is_refused_with_the_reason() {
        let id = identity();
        let meta = id.new_meta(12_345);
        assert_eq!(meta.zero_time_ms, 12_000);
        assert_eq!(id.take_over(&meta, "ckpt"), Ok(Takeover::AsIs));
        let old = JobMeta {
            format_version: FORMAT_VERSION + 1,
            ..meta.clone()
        };
        assert!(refusal(&id, &old).contains("format version"));
        let other = JobMeta {
            fingerprint: "f2".into(),
            ..meta.clone()
        };
        assert!(refusal(&id, &other).contains("different job"));
        let wider = JobMeta {
            partitions: 8,
            ..meta
        };
        assert!(refusal(&id, &wider).contains("8 partitions"));
    }

    fn manifest_job(yaml_spec: &str) -> Identity {
        let text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: wc}}\nspec:\n{yaml_spec}"
        );
        let spec = sluice_crds::parse_yaml(&text).expect("manifest").spec;
        Identity {
            fingerprint: sluice_crds::fingerprint(&spec),
            partitions: spec.parallelism.unwrap_or(4) as usize,
            spec: Some(spec),
            ..identity()
        }
    }

    const SPEC: &str = "  batchInterval: 1s
  sources: [{name: in, generator: {rate: 10}}]
  pipeline: [{flatMap: {split: ' '}}, {countByValue: {}}, {updateStateByKey: {op: sum}}]
  sinks: [{stdout: {}}]
";

    #[test]
    fn a_changed_spec_takes_over_the_checkpoint_as_its_plan_allows() {
        let id = manifest_job(SPEC);
        let meta = id.new_meta(0);
        assert_eq!(id.take_over(&meta, "ckpt"), Ok(Takeover::AsIs));
        // Re-sharded: job.json gets the new spec and partition count; the clock stays.
        let wider = manifest_job(&SPEC.replace("1s\n", "1s\n  parallelism: 8\n"));
        let Ok(Takeover::Rewrite(next, Some(plan))) = wider.take_over(&meta, "ckpt") else {
            panic!("not rewritten");
        };
        assert_eq!(next.partitions, 8);
        assert_eq!(next.zero_time_ms, meta.zero_time_ms);
        assert_eq!(next.fingerprint, wider.fingerprint);
        assert!(plan.reshapes_state());
        // Dropping state needs allowStateLoss; an unreadable state is refused whatever is set.
        let dropped = SPEC.replace(", {updateStateByKey: {op: sum}}", "");
        assert!(refusal(&manifest_job(&dropped), &meta).contains("allowStateLoss"));
        let allowed = format!("{dropped}  upgrade: {{allowStateLoss: true}}\n");
        assert!(manifest_job(&allowed).take_over(&meta, "ckpt").is_ok());
        let reshaped = SPEC.replace("op: sum", "op: max");
        assert!(refusal(&manifest_job(&reshaped), &meta).contains("changed form"));
    }

    #[test]
    fn a_checkpoint_without_a_spec_is_resumed_by_its_own_job_and_then_records_it() {
        let id = manifest_job(SPEC);
        let legacy = JobMeta {
            fingerprint: sluice_crds::fingerprint_v1(id.spec.as_ref().expect("spec")),
            spec: None,
            ..id.new_meta(0)
        };
        let Ok(Takeover::Rewrite(next, None)) = id.take_over(&legacy, "ckpt") else {
            panic!("not recorded");
        };
        assert!(next.spec.is_some());
        assert_eq!(next.legacy_layout, Some(id.layout.clone()));
        let changed = manifest_job(&SPEC.replace("1s\n", "1s\n  parallelism: 8\n"));
        assert!(refusal(&changed, &legacy).contains("before sluice recorded specs"));
    }

    fn file(batch: u64, op: &str, part: usize) -> StateFile {
        StateFile {
            key: format!("state/{batch:020}/{op}/{part}.w1.bin"),
            len: 1,
            crc32: 0,
            delta: false,
            from: None,
        }
    }

    #[test]
    fn a_snapshot_must_cover_every_state_partition_once() {
        let whole = vec![file(3, "a", 0), file(3, "a", 1)];
        assert!(check_coverage(3, &whole, 1, 2).is_ok());
        assert!(check_coverage(3, &whole[..1], 1, 2).is_err());
        let twice = vec![file(3, "a", 0), file(3, "a", 0)];
        assert!(check_coverage(3, &twice, 1, 2).is_err());
        assert!(check_coverage(4, &whole, 1, 2).is_err(), "another batch");
        assert!(check_coverage(3, &[], 0, 2).is_ok(), "a stateless job");
    }

    fn entry(batch: u64) -> OffsetEntry {
        OffsetEntry {
            batch,
            time_ms: batch * 1000,
            epoch: 1,
            ranges: BTreeMap::new(),
            positions: BTreeMap::new(),
        }
    }

    #[test]
    fn replay_runs_the_log_in_order_and_refuses_a_gap() {
        let plan = replay_plan(2, vec![entry(3), entry(4), entry(5)], Some(4)).expect("plan");
        assert_eq!(plan.iter().map(|e| e.batch).collect::<Vec<_>>(), [3, 4]);
        assert!(replay_plan(2, vec![entry(3), entry(5)], None).is_err());
        assert!(replay_plan(0, vec![entry(2)], None).is_err());
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_millis(700));
        let waits: Vec<u128> = (0..4).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [200, 400, 700, 700]);
        b.reset();
        assert_eq!(b.next_wait().as_millis(), 200);
    }
}
