//! The conditions the operator writes into a job's status and the reasons it gives, in
//! conditions and in events: the words `kubectl describe` shows, named once so that the code,
//! the tests and the docs agree.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The conditions of a StreamingJob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// The job runs: batches commit with every worker up.
    Ready,
    MasterReady,
    WorkersReady,
    /// Batches commit (false while stalled, recovering or stopped).
    Progressing,
    /// Something is wrong; its reason says what.
    Degraded,
    /// The last change of the spec: planned and applied (true), or refused (false); the
    /// message is its plan.
    Upgrade,
    /// With `spec.workers.autoscale`: the job needs more workers than its bounds allow (true).
    ScalingLimited,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::MasterReady => "MasterReady",
            ConditionType::WorkersReady => "WorkersReady",
            ConditionType::Progressing => "Progressing",
            ConditionType::Degraded => "Degraded",
            ConditionType::Upgrade => "Upgrade",
            ConditionType::ScalingLimited => "ScalingLimited",
        }
    }
}

/// Why a condition is as it is, or why an event was published.
pub mod reason {
    // Ready (otherwise the phase's name, or, Blocked, the reason of the block).
    pub const RUNNING: &str = "Running";
    // MasterReady, WorkersReady, Progressing.
    pub const POD_READY: &str = "PodReady";
    pub const POD_NOT_READY: &str = "PodNotReady";
    pub const ALL_READY: &str = "AllReady";
    pub const WAITING: &str = "Waiting";
    pub const BATCHES_COMMITTING: &str = "BatchesCommitting";
    pub const NOT_RUNNING: &str = "NotRunning";
    // Degraded: what the master says.
    pub const HEALTHY: &str = "Healthy";
    pub const CHECKPOINT_FAILING: &str = "CheckpointFailing";
    pub const RECOVERING: &str = "Recovering";
    pub const STALLED: &str = "Stalled";
    // Degraded: the restart policy holds the pods at zero.
    /// The job failed by its own fault (the master exited with the user-error code).
    pub const JOB_FAILED: &str = "JobFailed";
    /// Crash-looped past `restartPolicy.limit`.
    pub const RESTART_LIMIT: &str = "RestartLimitReached";
    /// Crash-looping, held back before the next start.
    pub const CRASH_LOOP: &str = "CrashLoop";
    // Degraded: the pods cannot start.
    pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";
    pub const POD_CONFIG_ERROR: &str = "PodConfigError";
    pub const SECRET_MISSING: &str = "SecretMissing";
    // Degraded: the spec is refused (phase Blocked).
    /// A change of the spec its checkpoint cannot take, or that drops state without consent.
    pub const UPGRADE_REFUSED: &str = "UpgradeRefused";
    // Upgrade (and its event).
    pub const UPGRADE_PLANNED: &str = "UpgradePlanned";
    pub const NO_CHECKPOINT: &str = "NoCheckpoint";
    /// The spec fails the checks of `sluice validate`.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const NAME_CONFLICT: &str = "NameConflict";
    // ScalingLimited (true also as a Warning event).
    pub const TOO_FEW_PARTITIONS: &str = "TooFewPartitions";
    pub const MAX_REPLICAS_REACHED: &str = "MaxReplicasReached";
    pub const WITHIN_BOUNDS: &str = "WithinBounds";
    // Events only.
    pub const CREATED: &str = "Created";
    pub const SUSPENDED: &str = "Suspended";
    pub const RESUMED: &str = "Resumed";
    pub const RESCALED: &str = "Rescaled";
    /// The autoscaler changed `spec.workers.replicas`; the note says why.
    pub const SCALED_UP: &str = "ScaledUp";
    pub const SCALED_DOWN: &str = "ScaledDown";
    pub const RECOVERED: &str = "Recovered";
    pub const CHECKPOINT_FAILED: &str = "CheckpointFailed";
    /// Stopped for good after `restartPolicy.limit` restarts.
    pub const FAILED: &str = "Failed";
    pub const MASTER_RESTARTED: &str = "MasterRestarted";
    pub const WORKER_LOST: &str = "WorkerLost";
    /// A pod force-deleted because its node has been NotReady past the timeout.
    pub const NODE_LOST: &str = "NodeLost";
    pub const CHECKPOINT_DELETED: &str = "CheckpointDeleted";
    pub const CHECKPOINT_RETAINED: &str = "CheckpointRetained";
}

/// The condition `kind` among `conditions`.
pub fn find(conditions: &[Condition], kind: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == kind.as_str())
}

/// A condition whose `lastTransitionTime` stays from `previous` while its status does.
pub fn condition(
    previous: &[Condition],
    kind: ConditionType,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = find(previous, kind)
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: kind.as_str().into(),
        status: status.into(),
        reason: reason.into(),
        message: crate::status::scrub(message),
        last_transition_time: since,
        observed_generation: generation,
    }
}

/// Whether `kind` is true among `conditions` for `reason`.
pub fn holds(conditions: &[Condition], kind: ConditionType, reason: &str) -> bool {
    find(conditions, kind).is_some_and(|c| c.status == "True" && c.reason == reason)
}
