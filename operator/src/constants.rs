//! Names shared by everything the operator creates: labels, ports, paths, env vars.

/// Label with the job's name on every child object.
pub const LABEL_JOB: &str = "sluice.dev/job";
/// Label with the role (`master` or `worker`).
pub const LABEL_ROLE: &str = "sluice.dev/role";
/// Standard labels.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// What an object is to the job: `master`, `worker`, `config`, `token`, ...
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// The operator version that wrote the object (not on pods: an operator upgrade must not roll
/// every job's pods for a label).
pub const LABEL_VERSION: &str = "app.kubernetes.io/version";
/// `app.kubernetes.io/part-of` of everything Sluice makes.
pub const PART_OF: &str = "sluice";
pub const MANAGER: &str = "sluice-operator";
/// `app.kubernetes.io/name` of the operator's own pods (the chart sets it): the job's
/// NetworkPolicy lets them reach the master.
pub const OPERATOR_APP_NAME: &str = "sluice-operator";

/// The master's gRPC port.
pub const MASTER_PORT: i32 = 7070;
/// A worker's gRPC port.
pub const WORKER_PORT: i32 = 7071;
/// Where the master and every worker serve `/metrics` (named `metrics` in the pods and the
/// Services, announced by the `prometheus.io/*` annotations).
pub const METRICS_PORT: i32 = 9090;
/// Where the master and every worker serve `grpc.health.v1` for the kubelet's gRPC probes
/// (no TLS: the kubelet's probe cannot do it).
pub const HEALTH_PORT: i32 = 7072;

/// Where the job manifest is mounted, and its file name.
pub const CONFIG_DIR: &str = "/etc/sluice";
pub const MANIFEST_FILE: &str = "job.yaml";

/// Key of the per-job token in its Secret.
pub const TOKEN_KEY: &str = "token";

/// Keys of the per-job TLS Secret (`<job>-tls`): the job's CA, its certificate and key.
pub const TLS_CA_KEY: &str = "ca.crt";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
/// Where the job's TLS Secret is mounted in its pods (beside, not inside, the read-only
/// manifest volume: a mount point inside it cannot be made).
pub const TLS_DIR: &str = "/etc/sluice-tls";
/// The name the job's certificate carries, which every peer checks (the runtime's default).
pub const TLS_SERVER_NAME: &str = "sluice";

/// The default image when a StreamingJob names none.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/sluice-dev/sluice:", env!("CARGO_PKG_VERSION"));
/// Workers when a StreamingJob says nothing.
pub const DEFAULT_WORKERS: i32 = 2;
