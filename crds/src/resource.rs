//! The StreamingJob custom resource: the job (the same spec `sluice run` takes) plus how the
//! operator deploys it, and the status the operator reports. Only with the `kube` feature.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
    Volume, VolumeMount,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::StreamingJobSpec;

/// What the job runs (the same fields as a manifest for `sluice run`: sources, pipeline,
/// sinks, batch interval, checkpoint) and how its pods run on Kubernetes.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "StreamingJob",
    root = "StreamingJobResource",
    namespaced,
    shortname = "sj",
    doc = "A Sluice streaming job: sources cut into micro-batches every batch interval, a pipeline of steps, sinks, exactly once across failures through checkpoints. The operator runs it as a master and workers; kubectl get sj shows its phase, workers, newest batch, delay and input rate, and kubectl scale sj changes its workers.",
    status = "StreamingJobStatus",
    scale(spec_replicas_path = ".spec.workers.replicas", status_replicas_path = ".status.workersReady", label_selector_path = ".status.selector"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Workers", type_ = "string", json_path = ".status.workers", description = "workers ready / wanted"),
    printcolumn(name = "Batch", type_ = "integer", json_path = ".status.lastCompletedBatch", description = "the newest committed batch"),
    printcolumn(name = "Delay", type_ = "string", json_path = ".status.lastBatch.schedulingDelay", description = "scheduling delay of the newest batch: above the batch interval, the job falls behind"),
    printcolumn(name = "Rate", type_ = "integer", json_path = ".status.lastBatch.inputRate", description = "input records per second in the newest batch"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Last checkpoint", type_ = "integer", json_path = ".status.lastCheckpoint.batch", description = "the batch of the newest snapshot", priority = 1),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.message", priority = 1),
    validation = Rule::new("!has(self.spec.podTemplate) || !has(self.spec.podTemplate.labels) || self.spec.podTemplate.labels.all(k, !k.startsWith('sluice.dev/'))").message("spec.podTemplate.labels: keys under sluice.dev/ belong to the operator; use another prefix"),
    validation = Rule::new("!has(self.spec.podTemplate) || !has(self.spec.podTemplate.volumes) || self.spec.podTemplate.volumes.all(v, v.name != 'config' && v.name != 'tls')").message("spec.podTemplate.volumes: the names config and tls are the operator's (they hold the job manifest and its TLS certificate); rename the volume"),
    validation = Rule::new("!has(self.spec.checkpoint) || !has(self.spec.checkpoint.deletionPolicy) || self.spec.checkpoint.deletionPolicy != 'Delete' || self.spec.checkpoint.uri.matches('^s3://[^/]+/+[^/]')").message("spec.checkpoint.deletionPolicy: Delete needs an s3://bucket/prefix location with a prefix of the job's own, never a whole bucket"),
    validation = Rule::new("self.spec.sources.all(s, [has(s.socket), has(s.files), has(s.generator), has(s.kafka)].filter(x, x).size() == 1)").message("spec.sources[]: set exactly one of socket, files, generator, kafka in each source"),
    validation = Rule::new("self.spec.sinks.all(s, [has(s.stdout), has(s.files), has(s.s3), has(s.kafka), has(s.postgres)].filter(x, x).size() == 1)").message("spec.sinks[]: set exactly one of stdout, files, s3, kafka, postgres in each sink"),
    validation = Rule::new("!has(self.spec.pipeline) || self.spec.pipeline.all(s, [has(s.map), has(s.parseJson), has(s.flatMap), has(s.filter), has(s.keyBy), has(s.window), has(s.countByValue), has(s.count), has(s.reduceByKey), has(s.countByValueAndWindow), has(s.reduceByKeyAndWindow), has(s.updateStateByKey), has(s.joinStatic), has(s.join), has(s.leftOuterJoin), has(s.rightOuterJoin), has(s.fullOuterJoin), has(s.cogroup), has(s.reduce), has(s.reduceByWindow), has(s.countByWindow), has(s.groupByKey), has(s.groupByKeyAndWindow), has(s.mapValues), has(s.flatMapValues), has(s.mapWithState), has(s.repartition), has(s.top)].filter(x, x).size() == 1)").message("spec.pipeline[]: set exactly one operation in each step (map, parseJson, flatMap, filter, keyBy, window, countByValue, count, reduceByKey, countByValueAndWindow, reduceByKeyAndWindow, updateStateByKey, joinStatic, join, leftOuterJoin, rightOuterJoin, fullOuterJoin, cogroup, reduce, reduceByWindow, countByWindow, groupByKey, groupByKeyAndWindow, mapValues, flatMapValues, mapWithState, repartition, top)"),
    validation = Rule::new("!has(self.spec.streams) || self.spec.streams.all(st, !has(st.pipeline) || st.pipeline.all(s, [has(s.map), has(s.parseJson), has(s.flatMap), has(s.filter), has(s.keyBy), has(s.window), has(s.countByValue), has(s.count), has(s.reduceByKey), has(s.countByValueAndWindow), has(s.reduceByKeyAndWindow), has(s.updateStateByKey), has(s.joinStatic), has(s.join), has(s.leftOuterJoin), has(s.rightOuterJoin), has(s.fullOuterJoin), has(s.cogroup), has(s.reduce), has(s.reduceByWindow), has(s.countByWindow), has(s.groupByKey), has(s.groupByKeyAndWindow), has(s.mapValues), has(s.flatMapValues), has(s.mapWithState), has(s.repartition), has(s.top)].filter(x, x).size() == 1))").message("spec.streams[].pipeline[]: set exactly one operation in each step (map, parseJson, flatMap, filter, keyBy, window, countByValue, count, reduceByKey, countByValueAndWindow, reduceByKeyAndWindow, updateStateByKey, joinStatic, join, leftOuterJoin, rightOuterJoin, fullOuterJoin, cogroup, reduce, reduceByWindow, countByWindow, groupByKey, groupByKeyAndWindow, mapValues, flatMapValues, mapWithState, repartition, top)"),
    validation = Rule::new("duration(self.spec.batchInterval) >= duration('5ms') && duration(self.spec.batchInterval) <= duration('1h')").message("spec.batchInterval: a duration from 5ms to 1h, such as 100ms or 1s"),
    validation = Rule::new("!has(self.spec.pipeline) || self.spec.pipeline.all(s, !has(s.updateStateByKey) || !has(s.updateStateByKey.timeout) || duration(s.updateStateByKey.timeout) > duration('0s'))").message("spec.pipeline[].updateStateByKey.timeout: a duration above zero, such as 10m"),
    validation = Rule::new("!has(self.spec.master) || !has(self.spec.master.nodeLossTimeout) || duration(self.spec.master.nodeLossTimeout) >= duration('0s')").message("spec.master.nodeLossTimeout: a duration such as 30s or 2m (0s: never)"),
    validation = Rule::new("!has(self.spec.workers) || !has(self.spec.workers.autoscale) || !has(self.spec.workers.autoscale.minReplicas) || self.spec.workers.autoscale.minReplicas <= self.spec.workers.autoscale.maxReplicas").message("spec.workers.autoscale: minReplicas must not exceed maxReplicas"),
    validation = Rule::new("!has(self.spec.workers) || !has(self.spec.workers.autoscale) || ((!has(self.spec.workers.autoscale.scaleUpAfter) || duration(self.spec.workers.autoscale.scaleUpAfter) >= duration('0s')) && (!has(self.spec.workers.autoscale.scaleDownAfter) || duration(self.spec.workers.autoscale.scaleDownAfter) >= duration('0s')))").message("spec.workers.autoscale: scaleUpAfter and scaleDownAfter are durations such as 0s, 30s or 5m"),
    validation = Rule::new("self.metadata.name.size() <= 52").message("metadata.name: at most 52 characters (pod names add a suffix)"),
    validation = Rule::new("self.spec.pipeline.all(s, !has(s.window) || ((!has(s.window.slide) || duration(s.window.slide).getMilliseconds() % duration(self.spec.batchInterval).getMilliseconds() == 0) && duration(s.window.length).getMilliseconds() % duration(self.spec.batchInterval).getMilliseconds() == 0))").message("spec.pipeline[].window: length and slide must be multiples of spec.batchInterval"),
    validation = Rule::new("self.spec.pipeline.all(s, !has(s.countByValueAndWindow) || ((!has(s.countByValueAndWindow.slide) || duration(s.countByValueAndWindow.slide).getMilliseconds() % duration(self.spec.batchInterval).getMilliseconds() == 0) && duration(s.countByValueAndWindow.length).getMilliseconds() % duration(self.spec.batchInterval).getMilliseconds() == 0))").message("spec.pipeline[].countByValueAndWindow: length and slide must be multiples of spec.batchInterval"),
    validation = Rule::new("self.spec.pipeline.all(s, !has(s.reduceByKeyAndWindow) || ((!has(s.reduceByKeyAndWindow.slide) || duration(s.reduceByKeyAndWindow.slide).getMilliseconds() % duration(self.spec.batchInterval).getMilliseconds() == 0) && duration(s.reduceByKeyAndWindow.length).getMilliseconds() % duration(self.spec.batchInterval).getMilliseconds() == 0))").message("spec.pipeline[].reduceByKeyAndWindow: length and slide must be multiples of spec.batchInterval"),
)]
#[serde(rename_all = "camelCase")]
pub struct StreamingJobResourceSpec {
    /// The job itself: batch interval, parallelism, sources, pipeline, sinks, checkpoint.
    #[serde(flatten)]
    pub job: StreamingJobSpec,
    /// Container image with the `sluice` binary. Default: the operator's own version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `Always`, `IfNotPresent` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// The workers: how many, and their resources. `kubectl scale sj NAME --replicas N` sets
    /// `replicas` and the job rescales live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<WorkersSpec>,
    /// The master's resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<MasterSpec>,
    /// Node labels the job's pods must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the job's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of the job's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Service account of the job's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// A Secret with the checkpoint store's credentials (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`), given to every pod as environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_credentials: Option<LocalObjectReference>,
    /// A Secret with the Kafka SASL credentials of the job's sources and sinks, under the keys
    /// `username` and `password`: every pod gets them as `SLUICE_KAFKA_SASL_USERNAME` and
    /// `SLUICE_KAFKA_SASL_PASSWORD` (set `sasl.mechanism` and `security.protocol` in the
    /// Kafka `properties`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_credentials: Option<LocalObjectReference>,
    /// A Secret with the credentials of the job's PostgreSQL sinks, under the keys `username`
    /// and `password`: every pod gets them as `SLUICE_POSTGRES_USER` and
    /// `SLUICE_POSTGRES_PASSWORD` (a user named in a sink's `url` wins over `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_credentials: Option<LocalObjectReference>,
    /// Stop the job's pods (state stays in the checkpoint); resume by setting it back to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// Additions to the pods the operator creates: labels, annotations, environment,
    /// volumes, priority class, image pull secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodOverrides>,
    /// How the operator restarts a job that keeps failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
}

/// What a job adds to the master and worker pods. The operator's own labels, environment and
/// the `config` volume win over these; everything else is added as given.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodOverrides {
    /// Extra pod labels (keys under `sluice.dev/` are the operator's and are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Extra environment variables of the sluice container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// Extra environment sources of the sluice container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from: Option<Vec<EnvFromSource>>,
    /// Extra pod volumes (the name `config` is the operator's), as in a pod spec; the API
    /// server checks them when the operator creates the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "volumes_schema")]
    pub volumes: Option<Vec<Volume>>,
    /// Where the sluice container mounts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount>>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Secrets for pulling `spec.image` from a private registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
}

/// Pod volumes, kept open in the CRD: the full `Volume` schema would more than double its
/// size, and the pod's own validation applies anyway.
fn volumes_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}},
            "x-kubernetes-preserve-unknown-fields": true
        }
    })
}

/// Restarts of a failing job: exponential back-off, and a limit.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartPolicy {
    /// First back-off in seconds, doubled at every restart. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub backoff_seconds: Option<i32>,
    /// Restarts before the job is marked Failed; unset means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub limit: Option<i32>,
}

/// The workers of a job.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkersSpec {
    /// Number of worker pods. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// CPU and memory of each worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Let the operator set `replicas` from the job's own figures: more workers as soon as
    /// the job falls behind, fewer once a smaller count is predicted to keep up. Without it,
    /// `replicas` stays as set (by hand, `kubectl scale`, or an HPA/KEDA of your own; never
    /// both on one job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleSpec>,
}

/// How the operator sizes a job's workers (see docs/autoscaling.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoscaleSpec {
    /// Fewest workers. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: Option<i32>,
    /// Most workers. Workers beyond `spec.parallelism` have no partition to run, so the
    /// operator never goes past it (unless `maxParallelism` lets it raise the partitions);
    /// when the job needs more, the ScalingLimited condition says so.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Most partitions the operator may raise `spec.parallelism` to when the job needs more
    /// workers than it has partitions. It raises it once, straight to this value (the keyed
    /// state is re-sharded from the last snapshot, with a restart: docs/upgrades.md), and
    /// never lowers it. Unset: `spec.parallelism` is the user's alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_parallelism: Option<i32>,
    /// The share of each batch interval the workers should spend processing: the operator
    /// sizes the job so that processing time / batch interval stays near it. Default 0.7;
    /// from 0.1 to 0.95 (headroom for bursts and snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.1, max = 0.95))]
    pub target_utilization: Option<f64>,
    /// How long the job must keep needing more workers before they are added. Default 0s:
    /// at the first look that finds the job behind (each look judges its last batches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub scale_up_after: Option<String>,
    /// How long a smaller count must keep being enough, at every look, before workers are
    /// removed; counted again from every change. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub scale_down_after: Option<String>,
}

/// The master of a job.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MasterSpec {
    /// CPU and memory of the master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// How long the node of one of the job's pods (the master's or a worker's) may be
    /// NotReady — lost, frozen, cut off — before the operator force-deletes the pod so that
    /// its StatefulSet starts it elsewhere (Kubernetes alone waits until the node object is
    /// deleted, which may be never). A master that was only cut off and comes back cannot
    /// commit: the checkpoint refuses every master but the newest. Default 30s; 0s turns it
    /// off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub node_loss_timeout: Option<String>,
}

/// Where a job is in its life, as `kubectl get sj` shows it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Phase {
    /// Its pods are starting, or its master is waiting for workers.
    Pending,
    /// Batches commit.
    Running,
    /// The master is restoring the last checkpoint after a failure.
    Recovering,
    /// `spec.suspend`: no pods; the state stays in the checkpoint.
    Suspended,
    /// Crash-looping: held at zero pods until `status.restartAt`.
    BackingOff,
    /// The spec cannot run as it is (see the Degraded condition); changing it unblocks.
    Blocked,
    /// Failed for good (a user error, or `restartPolicy.limit` reached) until the spec changes.
    Failed,
}

impl Phase {
    /// Every phase, in declaration order.
    pub const ALL: [Phase; 7] = [
        Phase::Pending,
        Phase::Running,
        Phase::Recovering,
        Phase::Suspended,
        Phase::BackingOff,
        Phase::Blocked,
        Phase::Failed,
    ];

    /// The name the status and the API carry.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Recovering => "Recovering",
            Phase::Suspended => "Suspended",
            Phase::BackingOff => "BackingOff",
            Phase::Blocked => "Blocked",
            Phase::Failed => "Failed",
        }
    }

    /// Whether the operator holds the job's pods at zero for it.
    pub fn holds_pods(self) -> bool {
        matches!(self, Phase::Suspended | Phase::BackingOff | Phase::Failed)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator reports. Every field is written at every update (an absent one as
/// `null`), so that a JSON merge patch of the whole status clears what no longer holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamingJobStatus {
    /// Where the job is in its life.
    #[serde(default)]
    pub phase: Option<Phase>,
    /// The generation the status describes.
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// Workers ready.
    #[serde(default)]
    pub workers_ready: i32,
    /// Workers wanted.
    #[serde(default)]
    pub workers_desired: i32,
    /// `ready/wanted`, as `kubectl get` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<String>,
    /// The label selector of the job's worker pods, for the scale subresource (HPA, KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// What the newest committed batch took, as the master reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_batch: Option<BatchStatus>,
    /// The newest committed batch.
    #[serde(default)]
    pub last_completed_batch: Option<i64>,
    /// The newest checkpoint.
    #[serde(default)]
    pub last_checkpoint: Option<CheckpointStatus>,
    /// Recoveries after failures, over the job's life: rollbacks to the last checkpoint and
    /// master restarts, of this master pod and of the ones before it.
    #[serde(default)]
    pub recoveries: i64,
    /// How `recoveries` adds up across master pods, each of which counts from zero.
    #[serde(default)]
    pub recovery_tally: Option<RecoveryTally>,
    /// For people.
    #[serde(default)]
    pub message: Option<String>,
    /// Fingerprint of the job (sources, pipeline, batch interval, parallelism) that the
    /// checkpoint belongs to; a change to it needs a new checkpoint location.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Times the operator stopped and restarted the job after a crash loop; a change of the
    /// spec starts the count again.
    #[serde(default)]
    pub restarts: i64,
    /// When the operator last restarted (or, while `BackingOff`, will restart) the job.
    #[serde(default)]
    pub restart_at: Option<String>,
    /// What the operator last saw of the job's pods, to tell restarts and losses apart.
    #[serde(default)]
    pub pods: Vec<PodObservation>,
    /// What the autoscaler (`spec.workers.autoscale`) last found and did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleStatus>,
    /// Ready, MasterReady, WorkersReady, Progressing, Degraded, Upgrade, ScalingLimited.
    #[serde(default)]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// The autoscaler's last look and its last change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleStatus {
    /// Workers the last look found right for the load, before waiting (scaleUpAfter,
    /// scaleDownAfter) and bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_workers: Option<i32>,
    /// Processing time / batch interval over the batches of the last look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
    /// What the last look concluded, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the autoscaler last changed `spec.workers.replicas` (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// That change and its reason, as its event said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale: Option<String>,
}

/// One pod of the job as the operator last saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodObservation {
    /// Pod name.
    pub name: String,
    /// Pod UID: a new one means the pod was replaced.
    pub uid: String,
    /// Container restarts.
    pub restarts: i32,
}

/// The recoveries of earlier master pods, and the master pod whose own count goes on top.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryTally {
    /// UID of the master pod whose count `recoveries` includes.
    pub master_uid: String,
    /// Recoveries counted before that pod started.
    pub earlier: i64,
}

/// What one batch took: the figures of Spark's Streaming tab.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchStatus {
    /// The batch's index.
    pub batch: i64,
    /// The batch's time (RFC 3339).
    pub time: String,
    /// Input records read from all sources.
    pub records: i64,
    /// Input records per second of batch time.
    pub input_rate: i64,
    /// Time to read the input and run every stage, e.g. `35ms`, `1.2s`.
    pub processing_time: String,
    /// From the batch's time to the start of its processing. Growing past the batch
    /// interval: the job falls behind.
    pub scheduling_delay: String,
    /// From the batch's time to its commit.
    pub total_delay: String,
}

/// Where the newest checkpoint is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    /// Batch the snapshot was taken after.
    pub batch: i64,
    /// Where it is.
    pub location: String,
}

/// The CustomResourceDefinition as YAML, with a header saying where it comes from.
pub fn crd_yaml() -> Result<String, yaml_serde::Error> {
    use kube::CustomResourceExt;
    let body = yaml_serde::to_string(&StreamingJobResource::crd())?;
    Ok(format!(
        "# Generated by `cargo run -p sluice-crds --features kube --bin crdgen`. DO NOT EDIT.\n{body}"
    ))
}
