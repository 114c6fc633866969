//! The `StreamingJob` manifest: the file `sluice run` reads and `kubectl apply` takes.
//!
//! Kubernetes-style "one of" groups are optional fields of which exactly one is set (a source is
//! a `socket`, `files` or `generator`); `validate` enforces that, and the structural schema stays
//! simple for the API server.
//! Field docs are written for users: they become the descriptions `kubectl explain` shows.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Fields of `spec` that only the operator reads (how to deploy the job); `sluice run` ignores
/// them. Kept in step with the custom resource by a test.
pub const DEPLOYMENT_FIELDS: &[&str] = &[
    "image",
    "imagePullPolicy",
    "workers",
    "podTemplate",
    "master",
    "nodeSelector",
    "tolerations",
    "affinity",
    "serviceAccountName",
    "checkpointCredentials",
    "kafkaCredentials",
    "postgresCredentials",
    "suspend",
    "restartPolicy",
];

/// The `apiVersion` of every StreamingJob.
pub const API_VERSION: &str = "sluice.dev/v1alpha1";
/// The `kind` of every StreamingJob.
pub const KIND: &str = "StreamingJob";

/// A whole StreamingJob manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamingJob {
    /// Always `sluice.dev/v1alpha1`.
    pub api_version: String,
    /// Always `StreamingJob`.
    pub kind: String,
    /// Name and labels, as in any Kubernetes object.
    pub metadata: Metadata,
    /// What the job computes.
    pub spec: StreamingJobSpec,
}

/// The part of Kubernetes object metadata a local run uses; other keys are accepted and ignored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The job's name: a DNS label (lower case letters, digits and `-`).
    #[serde(default)]
    pub name: String,
    /// The namespace, when the manifest is applied to a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The uid of the StreamingJob on a cluster (the operator sets it): a checkpoint records
    /// the uid of the job that created it, and only that job's deletion may delete it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Labels, copied to what the operator creates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The job: where records come from, what is computed every batch, and where results go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamingJobSpec {
    /// How often a batch is cut from the live stream, e.g. `100ms`, `1s`. At least 5ms.
    #[schemars(length(max = 32))]
    pub batch_interval: String,
    /// Number of partitions every batch is split into (and keyed state is sharded by). Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// What to do with a record an operation cannot process (a bad JSON line, an expression
    /// error): `skip` counts and logs it and goes on (default); `fail` stops the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_record_error: Option<OnRecordError>,
    /// Named inputs. The pipeline reads their union, in this order.
    #[schemars(length(max = 32))]
    pub sources: Vec<SourceSpec>,
    /// DStream operations applied in order to the sources' records: the one-stream shorthand
    /// of `streams`. Leave it empty when `streams` is set.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub pipeline: Vec<PipelineStep>,
    /// Named streams, for a job that is a graph: each reads sources or other streams (their
    /// union), applies its steps, and feeds sinks (`sinks[].from`), joins (`join: {with}`) or
    /// other streams.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub streams: Vec<StreamSpec>,
    /// Where every batch's result goes.
    #[schemars(length(max = 32))]
    pub sinks: Vec<SinkSpec>,
    /// Where progress and state are checkpointed. Without it a restart begins from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSpec>,
    /// How fast sources that can bound a batch (Kafka, files) hand it records while a backlog
    /// drains: on by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backpressure: Option<BackpressureSpec>,
    /// How a changed spec may take over the checkpoint of the one before (see `sluice plan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeSpec>,
}

/// One named stream of a job graph.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamSpec {
    /// Unique among sources and streams: a DNS label.
    #[schemars(length(max = 63))]
    pub name: String,
    /// The sources and streams it reads, as their union (all plain or all keyed, with the
    /// same slide).
    #[schemars(length(min = 1, max = 32))]
    pub from: Vec<String>,
    /// DStream operations applied in order.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub pipeline: Vec<PipelineStep>,
}

/// What a restart with a changed spec may do to the checkpointed state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradeSpec {
    /// Accept the losses a change states (the state of a removed stateful step is dropped).
    /// Default false: such a change is refused, and the job goes on with its old spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_state_loss: Option<bool>,
}

/// The rate controller: from each batch's processing time and scheduling delay it sets how
/// many records per second the next batch takes, so batches finish within the interval
/// while the job catches up (Spark's `spark.streaming.backpressure`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackpressureSpec {
    /// Default true. Off, a batch takes everything up to each source's own bound
    /// (`maxRatePerPartition`, `maxFilesPerBatch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Records per second for the first batches, before the controller has measured any.
    /// Default 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_rate: Option<u64>,
    /// The controller never goes below it. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rate: Option<u64>,
}

/// What happens to a record that an operation cannot process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnRecordError {
    /// Count it in the batch's error count, log it with the operation's name, and go on.
    #[default]
    Skip,
    /// Stop the job with the error.
    Fail,
}

/// One input. Set `name` and exactly one of `socket`, `files`, `generator`, `kafka`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// Unique name of the source; its positions are checkpointed under it.
    pub name: String,
    /// Newline-delimited text from a TCP server (like `nc -lk 9999`). Each batch's lines are
    /// written to the checkpoint's write-ahead log before the batch runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<SocketSource>,
    /// Every new file that appears in a directory, each read once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesSource>,
    /// Deterministic text or JSON lines at a target rate, for examples and benchmarks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<GeneratorSource>,
    /// Records of Kafka topics, read exactly once: each batch's offset ranges are planned and
    /// checkpointed before it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSource>,
}

/// Kafka topics read directly: no receivers, no consumer-group rebalancing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSource {
    /// Brokers to start from: `host:port[,host:port...]`.
    #[schemars(length(max = 2048))]
    pub bootstrap_servers: String,
    /// The topics to read. Partitions added while the job runs are read from their start.
    #[schemars(length(min = 1, max = 64))]
    pub topics: Vec<String>,
    /// Where a job without a checkpoint starts: `latest` (default: records written from now
    /// on), `earliest` (every record the brokers hold), or an RFC 3339 time such as
    /// `2026-11-30T12:00:00Z` (the first record at or after it). A job with a checkpoint goes
    /// on from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub starting_offsets: Option<String>,
    /// At most this many records per second of batch interval from each topic-partition, so a
    /// backlog is taken in bounded batches. Default: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate_per_partition: Option<u64>,
    /// Hand records on as maps with `key`, `value`, `topic`, `partition`, `offset` and
    /// `timestamp` (ms) instead of the value alone, for `keyBy`, `filter` and `map`. Default
    /// false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<bool>,
    /// The consumer group that receives each committed batch's offsets, for lag tools (the job
    /// never reads them back). Default `sluice.<namespace>.<job name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub group_id: Option<String>,
    /// Extra librdkafka client properties (`security.protocol`, `ssl.ca.location`,
    /// `sasl.mechanism`, ...). Secrets do not belong here: `sasl.username` and `sasl.password`
    /// come from the environment (`SLUICE_KAFKA_SASL_USERNAME`, `SLUICE_KAFKA_SASL_PASSWORD`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// A TCP text source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SocketSource {
    /// Host name or address to connect to.
    pub host: String,
    /// TCP port, 1-65535.
    pub port: u32,
}

/// A directory watched for new files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesSource {
    /// The directory. Write files elsewhere (or under a name starting with `.`) and rename them
    /// in, so a batch never sees half a file.
    pub path: String,
    /// How long the names of read files are remembered, e.g. `60s` (the default). A file is
    /// new when its change time (set by the rename that moves it in) is at most this much older
    /// than the newest file seen; older files are ignored, so the job's position stays small
    /// however many files pass through the directory. Raise it where files arrive late, e.g.
    /// on a file system whose clock differs from the writers'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub remember_for: Option<String>,
    /// At most this many files per batch, oldest first, so a directory that filled while the
    /// job was away is taken in bounded batches. Default: every new file, within the
    /// backpressure bound (files are taken whole, oldest first, up to the controller's records
    /// at a line length sampled from the files; at least one file a batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files_per_batch: Option<u32>,
}

/// A seeded generator of lines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GeneratorSource {
    /// Lines per second of batch time.
    pub rate: u64,
    /// Seed; the same seed gives the same lines. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// `text` (words from a Zipf vocabulary, hashtags included), `json` (user events) or
    /// `nexmark` (the Nexmark benchmark's auction events). Default text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<GeneratorFormat>,
    /// Number of distinct words (text) or users (json). Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocabulary: Option<u32>,
    /// Approximate length of a text line in bytes. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_bytes: Option<u32>,
}

/// The shape of generated lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GeneratorFormat {
    /// Space-separated words, some of them `#hashtags`.
    #[default]
    Text,
    /// JSON objects `{"user":..., "action":..., "amount":..., "text":...}`.
    Json,
    /// Nexmark auction events: `{"type":"person"|"auction"|"bid", ...}` in the benchmark's
    /// proportions (1 : 3 : 46), each with its generation time as `dateTime` (milliseconds
    /// from the job's start). They come as records (maps), as `parseJson` makes of their JSON,
    /// without printing and parsing it; a `parseJson` step leaves them as they are, and sinks
    /// write them as JSON. `vocabulary` and `lineBytes` do not apply.
    Nexmark,
}

/// One DStream operation. Set exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineStep {
    /// A name for the step, unique in the pipeline. A stateful step's checkpointed state is
    /// known by it across upgrades; unnamed, by its operation and its place among the steps
    /// of that operation (the second `updateStateByKey`), so name stateful steps before
    /// inserting another of their kind ahead of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// Replace each record (each value, on a keyed stream) by a field or an expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<Selector>,
    /// Parse each text record as JSON, so later steps can read its fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_json: Option<Empty>,
    /// Turn each record into zero or more records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flat_map: Option<FlatMapStep>,
    /// Keep the records for which a condition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterStep>,
    /// Make a keyed stream of (key, value) pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_by: Option<KeyByStep>,
    /// Every `slide`, emit the records of the last `length`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowStep>,
    /// Count each distinct record in the batch: a keyed stream of (record, count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_by_value: Option<Empty>,
    /// Count the records of the batch: one record per batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<Empty>,
    /// Aggregate the values of each key in the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce_by_key: Option<ReduceStep>,
    /// Count each distinct record over a sliding window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_by_value_and_window: Option<WindowStep>,
    /// Aggregate the values of each key over a sliding window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce_by_key_and_window: Option<WindowedReduceStep>,
    /// Keep a running aggregate per key across batches (checkpointed state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_state_by_key: Option<StateStep>,
    /// Join or filter against a static data set loaded from a file when the job starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_static: Option<StaticJoinStep>,
    /// Pair each value with every value of the same key in another keyed stream, batch by
    /// batch (window both alike first for a windowed join): values become `[value, other]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinStep>,
    /// As `join`, keeping values without a match as `[value, null]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_outer_join: Option<JoinStep>,
    /// As `join`, keeping the other stream's values without a match as `[null, other]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub right_outer_join: Option<JoinStep>,
    /// As `join`, keeping values of either side without a match, with `null` on the other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_outer_join: Option<JoinStep>,
    /// Every key of either stream once per batch, its values `[[values...], [others...]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cogroup: Option<JoinStep>,
    /// Aggregate all records (or values) of the batch into one record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce: Option<ReduceStep>,
    /// Aggregate all records (or values) of a sliding window into one record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce_by_window: Option<WindowedReduceStep>,
    /// Count the records of a sliding window (incrementally): one record per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_by_window: Option<WindowStep>,
    /// Collect the values of each key in the batch into a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by_key: Option<Empty>,
    /// Collect the values of each key over a sliding window into a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by_key_and_window: Option<WindowStep>,
    /// Replace the value of each pair of a keyed stream by a field or an expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_values: Option<Selector>,
    /// Turn the value of each pair into zero or more values, each with the pair's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flat_map_values: Option<FlatMapStep>,
    /// State per key updated record by record, each record emitting a value or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_with_state: Option<MapWithStateStep>,
    /// Spread the records (or pairs) evenly over the job's partitions, for a skewed input
    /// before costly steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repartition: Option<Empty>,
    /// Keep the `keep` records (or pairs) of each batch with the largest `by`, largest first;
    /// after a `window` step (or a windowed count), of each window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<TopStep>,
}

/// `top`: the largest records of a batch or window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopStep {
    /// How many to keep: 1 to 10000. (Not `n`: YAML 1.1, which kubectl and Helm read, takes
    /// `n` for false.)
    #[schemars(range(min = 1, max = 10000))]
    pub keep: u32,
    /// A CEL expression over `record` (or `key` and `value`) whose largest results win. Of
    /// records with equal results, the larger record (then key) wins, so every run keeps the
    /// same ones. A record it fails on is refused (`spec.onRecordError`).
    #[schemars(length(max = 4096))]
    pub by: String,
}

/// `mapWithState`: a CEL expression per record, and one per due timer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MapWithStateStep {
    /// Over `key`, `value` (one record's), `state` (`null` when the key has none) and `batch`
    /// (`time`: the batch time, milliseconds since the Unix epoch at the end of its interval;
    /// `streamTime`: milliseconds since the job's start at the same instant); it returns a
    /// map: `state`, the key's new state (`null` or absent: the key is dropped), `emit`, what
    /// the record emits with its key (absent: nothing), and `timer` (needs `onTimer`): when to
    /// call `onTimer` for the key, in milliseconds since the Unix epoch (`null`: never;
    /// absent: as it was). Records of a key run in arrival order, each seeing the state the one
    /// before left.
    #[schemars(length(max = 4096))]
    pub expr: String,
    /// Over `key`, `state`, `timer` (the time the key's timer was set for) and `batch`, in the
    /// first batch whose time is the timer's or later, after that batch's records; it returns
    /// what `expr` returns. The timer is gone by then: return a `timer` to set another. For
    /// what happens at a time rather than on a record: an auction that closes, a session that
    /// ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub on_timer: Option<String>,
    /// Forget a key that has had no record for this long, e.g. `10m`. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// The other side of a join: a keyed stream of `spec.streams`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinStep {
    /// The stream's name. Both sides need the same slide (the same windows, or none).
    #[schemars(length(max = 63))]
    pub with: String,
}

/// A step with no settings: write `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Picks a value out of a record: set exactly one of `field` or `expr`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// A field of a JSON record, dotted for nesting: `user`, `geo.country`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A CEL expression over `record` (or `key` and `value` on a keyed stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub expr: Option<String>,
}

/// How a record becomes several. Set exactly one of `split`, `regex`, `expr`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlatMapStep {
    /// Split text on this separator (`" "` splits on runs of whitespace); empty pieces are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Emit every match of this regular expression, e.g. `#\w+` for hashtags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub regex: Option<String>,
    /// A CEL expression over `record` that returns a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub expr: Option<String>,
    /// Lower-case the pieces. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lowercase: Option<bool>,
}

/// A condition. Set exactly one of `expr` or `regex`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterStep {
    /// A CEL expression that returns a bool, over `record` (or `key` and `value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub expr: Option<String>,
    /// Keep text records that contain a match of this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub regex: Option<String>,
}

/// Turns records into (key, value) pairs; on a keyed stream, gives each pair a new key (and
/// value), its selectors reading the value (a `field`) or `key` and `value` (an `expr`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyByStep {
    /// Where the key comes from.
    pub key: Selector,
    /// Where the value comes from. Default: the whole record (on a keyed stream, the value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Selector>,
}

/// A sliding window. Both durations are multiples of `spec.batchInterval`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowStep {
    /// How much of the stream a window covers, e.g. `10s`.
    #[schemars(length(max = 32))]
    pub length: String,
    /// How often a window is emitted. Default: `spec.batchInterval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub slide: Option<String>,
}

/// A per-batch aggregation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReduceStep {
    /// `sum`, `min`, `max`, `count` or `avg`.
    pub op: Aggregation,
}

/// An aggregation over a sliding window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowedReduceStep {
    /// `sum`, `min`, `max`, `count` or `avg`.
    pub op: Aggregation,
    /// How much of the stream a window covers.
    #[schemars(length(max = 32))]
    pub length: String,
    /// How often a window is emitted. Default: `spec.batchInterval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub slide: Option<String>,
    /// Update the previous window incrementally (add what enters, subtract what leaves) instead
    /// of recomputing it; only for `sum` and `count`. Keys with no value left in the window are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inverse: Option<bool>,
}

/// State per key across batches: a built-in aggregation, or a CEL expression.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateStep {
    /// A built-in aggregation: `sum`, `min`, `max`, `count`, `avg` or `last`. Set `op` or
    /// `expr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Aggregation>,
    /// A CEL expression for the new state of a key, over `key`, `values` (the batch's values
    /// of the key, a list, empty for a key with state but no new values) and `state` (the
    /// previous state, `null` for a new key); it returns the new state (any value: a number,
    /// a map, a list), or `null` to drop the key. Like Spark's `updateStateByKey`, it runs
    /// for every key with state in every batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub expr: Option<String>,
    /// Forget a key that has had no new value for this long, e.g. `10m`. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A built-in aggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Aggregation {
    /// Sum of numeric values.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Number of values.
    Count,
    /// Mean of numeric values.
    Avg,
    /// The latest value (state only).
    Last,
}

/// A join with a data set read when the job starts, and again every `refresh`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticJoinStep {
    /// The data set: a path, a `file://` URI or `s3://bucket/key`. One entry per line; for
    /// `mode: join`, `key,value` lines.
    pub uri: String,
    /// Read the data set again at the first batch of every period this long (`10m`), so it
    /// can change without a restart. Each period's copy is kept in the checkpoint: a batch run
    /// again after a failure uses the copy its first run used. Default: read once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
    /// For `s3://`: endpoint URL of an S3-compatible store. Default: AWS, or `AWS_ENDPOINT_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// For `s3://`: the region. Default: the AWS chain, then us-east-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// For `s3://`: path-style addressing, needed by most S3-compatible stores. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// `exclude` drops records whose key is in the set (a spam filter), `include` keeps only
    /// those, `join` pairs each keyed value with the set's value for its key (inner join).
    pub mode: StaticJoinMode,
    /// What to look up, for unkeyed streams. Default: the whole record. Keyed streams use the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Selector>,
}

/// How records meet a static data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StaticJoinMode {
    /// Drop records found in the set.
    Exclude,
    /// Keep only records found in the set.
    Include,
    /// Inner join of a keyed stream with `key,value` lines: values become `[value, static]`.
    Join,
}

/// One output. Set exactly one of `stdout`, `files`, `s3`, `kafka` or `postgres`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkSpec {
    /// The stream it writes, by name (`spec.streams`). Default: the output of `spec.pipeline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub from: Option<String>,
    /// Print the first records of every batch, like Spark's `print()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<StdoutSink>,
    /// One file per batch in a directory, written atomically; a re-run batch overwrites its file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesSink>,
    /// One object per batch and partition in S3; a re-run batch overwrites its objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Sink>,
    /// A Kafka topic, each batch's partition in one transaction: `read_committed` readers see
    /// every batch once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSink>,
    /// Rows of a PostgreSQL table, appended or upserted by key; each batch's partition is one
    /// transaction that also marks the batch, so a batch run again is not written twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSink>,
}

/// Rows written to a PostgreSQL table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresSink {
    /// `postgres://[user@]host[:port]/database[?sslmode=...]`. Never a password: it comes
    /// from `SLUICE_POSTGRES_PASSWORD` (and the user, when the URL names none, from
    /// `SLUICE_POSTGRES_USER`; on Kubernetes both from `spec.postgresCredentials`). TLS as
    /// libpq reads `sslmode`: `disable`, `prefer` (default: TLS when the server offers it),
    /// `require` (TLS; neither checks the certificate), `verify-ca` (a certificate signed by
    /// the system's CAs or by `sslrootcert=/path/ca.pem`), `verify-full` (and naming the host).
    #[schemars(length(max = 2048))]
    pub url: String,
    /// The table, `name` or `schema.name`, as written (names are quoted, so case counts). It
    /// must exist.
    #[schemars(length(max = 127))]
    pub table: String,
    /// The columns written and what fills each. Default: `key` and `value` for a keyed
    /// stream, `value` for plain records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub columns: Vec<PostgresColumn>,
    /// Upsert: the columns of a primary key or unique index of the table; a row whose key the
    /// table holds replaces its other columns. Default: none, every row is appended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub key: Vec<String>,
}

/// One column of a PostgreSQL sink's rows. Set `name` and at most one of `field` or `expr`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresColumn {
    /// The column's name in the table.
    #[schemars(length(max = 63))]
    pub name: String,
    /// A field of the record (of the value, on a keyed stream), dotted for nesting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A CEL expression over `record` (or `key` and `value`). Without `field`, `expr` or
    /// `batchTime`: the record's field of the column's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub expr: Option<String>,
    /// `true`: the batch's time (the end of its interval; a window's end on a windowed
    /// stream) in UTC, for a `timestamptz`, `timestamp` or `text` column. Rows of windowed
    /// results appended per batch need it to say which window they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_time: Option<bool>,
}

/// Records written to a Kafka topic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSink {
    /// Brokers to start from: `host:port[,host:port...]`.
    #[schemars(length(max = 2048))]
    pub bootstrap_servers: String,
    /// The topic (it must exist).
    #[schemars(length(max = 249))]
    pub topic: String,
    /// The message key: a field or expression of the record. Default: the key of a keyed
    /// stream (its value is the message), none for plain records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Selector>,
    /// How a message's value is written: `text` or `json`. Default text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<OutputFormat>,
    /// `exactlyOnce` (default): each batch's partition is one transaction, and a batch Kafka
    /// already holds is not written again. `atLeastOnce`: no transactions; a batch run again
    /// after a failure may be written twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<KafkaDelivery>,
    /// Extra librdkafka producer properties, as for the source.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// What a reader of a Kafka sink's topic may see after failures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum KafkaDelivery {
    /// Every record once, for readers with `isolation.level=read_committed`.
    #[default]
    ExactlyOnce,
    /// Every record at least once; cheaper.
    AtLeastOnce,
}

/// Objects in S3 (or an S3-compatible store), `PREFIX/batch-<time ms>/part-<partition>.txt`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Sink {
    /// `s3://bucket/prefix`. Credentials come from the standard AWS chain.
    pub uri: String,
    /// Endpoint URL for S3-compatible stores. Default: AWS, or `AWS_ENDPOINT_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region. Default: the AWS chain, then us-east-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style addressing, needed by most S3-compatible stores. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// `text` or `json`. Default text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<OutputFormat>,
}

/// Printing to standard output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StdoutSink {
    /// How many records of each batch to print. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Files in a directory, one per batch time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesSink {
    /// The output directory (created if missing). A path or `file://` URI.
    pub path: String,
    /// File name prefix; files are named `PREFIX-<batch time in ms>.txt`. Default `batch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `text` (Spark-like `(key,value)`) or `json` (one JSON value per line). Default text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<OutputFormat>,
}

/// How records are written as lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OutputFormat {
    /// Text; pairs as `(key,value)`.
    #[default]
    Text,
    /// One JSON value per line; pairs as `{"key":..,"value":..}`.
    Json,
}

/// Where checkpoints go and how often.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointSpec {
    /// `s3://bucket/prefix` or `file:///absolute/dir` (local mode only). S3 credentials come
    /// from the standard AWS chain (e.g. `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`), never
    /// from the manifest.
    pub uri: String,
    /// S3 endpoint URL for S3-compatible stores (MinIO, Ceph, R2). Default: AWS, or
    /// `AWS_ENDPOINT_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region. Default: the AWS chain (`AWS_REGION`), then us-east-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style S3 addressing (`endpoint/bucket/key`), needed by most S3-compatible stores.
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// Snapshot keyed state every this many batches. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u32>,
    /// And at most this often, by batch time, e.g. `1s`: with millisecond batches a snapshot
    /// every `interval` batches would sit on the path of one batch in ten. A snapshot is due
    /// at a batch that is a multiple of `interval` when this much batch time has passed since
    /// the last one. Default: none (every `interval` batches). A recovery replays the batches
    /// since the last snapshot, so this bounds that time too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub snapshot_every: Option<String>,
    /// How many complete state snapshots to keep. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<u32>,
    /// What deleting the StreamingJob does to its checkpoint: `Retain` (default) keeps it, so a
    /// new job with the same spec resumes; `Delete` removes it: only on S3, only under a prefix
    /// (never a whole bucket), only the checkpoint's own keys, only a checkpoint this very job
    /// created, and only with the job's own `checkpointCredentials`; anything else is left, and
    /// an event says why. Only a job with `Delete` carries the operator's finalizer, so a change
    /// to `Delete` binds once the operator has added it (`metadata.finalizers`). `sluice run`
    /// ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

impl CheckpointSpec {
    /// `snapshotEvery` as a duration; zero when unset (every `interval` batches). Validation
    /// refuses one that does not parse, so none reaches a runner.
    pub fn snapshot_spacing(&self) -> std::time::Duration {
        self.snapshot_every
            .as_deref()
            .and_then(|text| crate::parse_duration(text).ok())
            .unwrap_or_default()
    }
}

/// What happens to a checkpoint when its job is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the checkpoint.
    #[default]
    Retain,
    /// Delete the checkpoint with the job.
    Delete,
}

/// Defaults, in one place so docs, validation and runtime agree.
pub mod defaults {
    /// `spec.parallelism`.
    pub const PARALLELISM: u32 = 4;
    /// `spec.checkpoint.interval`, in batches.
    pub const CHECKPOINT_INTERVAL: u32 = 10;
    /// `spec.checkpoint.retain`.
    pub const CHECKPOINT_RETAIN: u32 = 3;
    /// `stdout.limit`.
    pub const STDOUT_LIMIT: u32 = 10;
    /// `generator.seed`.
    pub const GENERATOR_SEED: u64 = 1;
    /// `generator.vocabulary`.
    pub const GENERATOR_VOCABULARY: u32 = 10_000;
    /// `generator.lineBytes`.
    pub const GENERATOR_LINE_BYTES: u32 = 100;
    /// The most text a generator may produce for one batch (rate × interval × line size): a
    /// batch is held in memory.
    pub const GENERATOR_BATCH_BYTES: u64 = 1 << 30;
    /// `files.prefix`.
    pub const FILES_PREFIX: &str = "batch";
    /// `sources[].files.rememberFor`, in seconds (Spark's `minRememberDuration`).
    pub const FILES_REMEMBER_FOR_SECONDS: u64 = 60;
    /// `spec.backpressure.initialRate`, records per second.
    pub const BACKPRESSURE_INITIAL_RATE: u64 = 100_000;
    /// `spec.backpressure.minRate`, records per second.
    pub const BACKPRESSURE_MIN_RATE: u64 = 100;
}
