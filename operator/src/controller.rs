//! The reconciler: for every StreamingJob, its token Secret and the objects `resources` builds,
//! applied server-side; then the status, from the StatefulSets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use sluice_crds::resource::{StreamingJobResource, StreamingJobStatus};
use sluice_proto::v1 as pb;

use crate::constants::{LABEL_JOB, MANAGER, TOKEN_KEY};
use crate::health;
use crate::resources::{self, BuildError};

/// What reconciles share.
pub struct Context {
    pub client: Client,
    /// The operator's own namespace (`POD_NAMESPACE`), which job NetworkPolicies admit.
    pub namespace: Option<String>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub recorder: kube::runtime::events::Recorder,
}

/// Reconcile failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the StreamingJob cannot be built: {0}")]
    Build(#[from] BuildError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot make a token: {0}")]
    Token(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::IssueError),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("deleting the checkpoint: {0}")]
    Cleanup(String),
}

/// Keeps a deleted job until its checkpoint has followed `checkpoint.deletionPolicy`.
pub const FINALIZER: &str = "sluice.dev/checkpoint";

/// Runs the controller until the process stops: over all namespaces, or one per namespace
/// in `namespaces` (the RBAC the chart grants then covers only those).
pub async fn run(client: Client, namespaces: Vec<String>, metrics: Arc<crate::metrics::Metrics>) {
    if namespaces.is_empty() {
        run_in(
            client.clone(),
            Api::all(client.clone()),
            Api::all(client),
            metrics,
        )
        .await;
    } else {
        let controllers = namespaces.iter().map(|ns| {
            run_in(
                client.clone(),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                metrics.clone(),
            )
        });
        futures::future::join_all(controllers).await;
    }
}

async fn run_in(
    client: Client,
    jobs: Api<StreamingJobResource>,
    sets: Api<StatefulSet>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let reporter = kube::runtime::events::Reporter {
        controller: MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = kube::runtime::events::Recorder::new(client.clone(), reporter);
    let context = Arc::new(Context {
        client,
        namespace: std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|ns| !ns.is_empty()),
        metrics,
        recorder,
    });
    Controller::new(jobs, watcher::Config::default())
        .owns(sets, watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((job, _)) => tracing::debug!(job = %job.name, "reconciled"),
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

fn random_token() -> Result<String, Error> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(Error::Token)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The data of the job's Secret `name`, created (owned by the job) from `make` the first time
/// and never changed under running pods: the token, the TLS certificate. `None` when a Secret
/// of that name is not this job's: anyone could have made it.
async fn ensure_secret(
    job: &StreamingJobResource,
    api: &Api<Secret>,
    name: &str,
    make: impl FnOnce() -> Result<BTreeMap<String, String>, Error>,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
    let ours = |secret: Secret| {
        owned_by(&secret.metadata, job).then(|| {
            secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        })
    };
    if let Some(secret) = api.get_opt(name).await? {
        return Ok(ours(secret));
    }
    let owner = job
        .controller_owner_ref(&())
        .ok_or(BuildError::Missing("metadata.uid"))?;
    let data = make()?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        string_data: Some(data.clone()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Some(
            data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
        )),
        // Created meanwhile by another reconcile: its data is the one.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(api.get_opt(name).await?.and_then(ours)),
        Err(e) => Err(e.into()),
    }
}

/// How often a job blocked by a name conflict looks again (the objects in its way are not
/// watched).
const NAME_CONFLICT_RECHECK: Duration = Duration::from_secs(30);

/// Whether `meta` names the job (its uid) as its controlling owner.
fn owned_by(meta: &kube::api::ObjectMeta, job: &StreamingJobResource) -> bool {
    let uid = job.metadata.uid.as_deref();
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == uid)
}

/// `Kind name` of each object the job would write that exists and is not the job's.
async fn foreign_objects(
    client: &Client,
    ns: &str,
    job: &StreamingJobResource,
    token: &str,
    desired: &resources::Desired,
) -> Result<Vec<String>, Error> {
    let mut claims = Claims {
        client,
        ns,
        job,
        foreign: Vec::new(),
    };
    claims.name::<Secret>(token).await?;
    claims
        .name::<Secret>(&resources::tls_secret(&job.name_any()))
        .await?;
    claims.object(&desired.config).await?;
    claims.object(&desired.master_service).await?;
    claims.object(&desired.worker_service).await?;
    claims.object(&desired.network_policy).await?;
    claims.object(&desired.master).await?;
    claims.object(&desired.workers).await?;
    Ok(claims.foreign)
}

/// Collects the objects of a job's names that someone else controls.
struct Claims<'a> {
    client: &'a Client,
    ns: &'a str,
    job: &'a StreamingJobResource,
    foreign: Vec<String>,
}

impl Claims<'_> {
    async fn name<K>(&mut self, name: &str) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.ns);
        if let Some(found) = api.get_metadata_opt(name).await?
            && !owned_by(&found.metadata, self.job)
        {
            self.foreign.push(format!("{} {name}", K::kind(&())));
        }
        Ok(())
    }

    async fn object<K>(&mut self, object: &K) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        self.name::<K>(&name).await
    }
}

async fn apply<K>(client: &Client, ns: &str, object: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = object.meta().name.clone().unwrap_or_default();
    let mut body = serde_json::to_value(object)
        .map_err(|e| Error::Build(BuildError::Render(e.to_string())))?;
    body["apiVersion"] = json!(K::api_version(&()));
    body["kind"] = json!(K::kind(&()));
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

async fn reconcile(job: Arc<StreamingJobResource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_with_finalizer(job, &ctx).await;
    let m = &ctx.metrics;
    m.reconciles
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    *m.reconcile_seconds_total
        .lock()
        .unwrap_or_else(|e| e.into_inner()) += started.elapsed().as_secs_f64();
    let counter = match &result {
        Err(Error::Build(_)) => Some(&m.errors_build),
        Err(_) => Some(&m.errors_api),
        Ok(_) => None,
    };
    if let Some(c) = counter {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    result
}

/// The finalizer holds a deleted job only while its deletion has work to do (deletionPolicy
/// Delete); otherwise it is taken off, so that a job never waits on the operator to go.
async fn reconcile_with_finalizer(
    job: Arc<StreamingJobResource>,
    ctx: &Arc<Context>,
) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let api: Api<StreamingJobResource> = Api::namespaced(ctx.client.clone(), &ns);
    if !crate::cleanup::needs_finalizer(&job) {
        if job.finalizers().iter().any(|f| f == FINALIZER) {
            // Conditional on the version read: another writer's finalizers are never lost.
            let rest: Vec<&String> = job
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .collect();
            let patch = json!({"metadata": {
                "finalizers": rest,
                "resourceVersion": job.resource_version(),
            }});
            api.patch(
                &job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
        }
        if job.metadata.deletion_timestamp.is_some() {
            tracing::info!(job = %job.name_any(), "job deleted; checkpoint retained");
            return Ok(Action::await_change());
        }
        return reconcile_job(&job, ctx).await;
    }
    kube::runtime::finalizer::finalizer(&api, FINALIZER, job, |event| async {
        match event {
            kube::runtime::finalizer::Event::Apply(job) => reconcile_job(&job, ctx).await,
            kube::runtime::finalizer::Event::Cleanup(job) => {
                crate::cleanup::cleanup(&job, ctx).await
            }
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

async fn reconcile_job(
    job: &Arc<StreamingJobResource>,
    ctx: &Arc<Context>,
) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let client = &ctx.client;
    // A job whose state-shaping spec changed cannot resume from the checkpoint it wrote:
    // refuse the change (keep running the old one) instead of letting the master crash-loop.
    let fingerprint = sluice_crds::fingerprint(&job.spec.job);
    if let Some(status) = &job.status {
        let same_location = match (&status.last_checkpoint, &job.spec.job.checkpoint) {
            (Some(written), Some(now)) => written.location.starts_with(&now.uri),
            _ => false,
        };
        if let Some(old) = status
            .fingerprint
            .as_ref()
            .filter(|old| **old != fingerprint && same_location)
        {
            let message = format!(
                "the sources, pipeline, batch interval or parallelism changed (fingerprint {old} -> {fingerprint}), so the checkpoint at {} cannot be resumed; revert the change, or set a new spec.checkpoint.uri to start over",
                job.spec
                    .job
                    .checkpoint
                    .as_ref()
                    .map(|c| c.uri.as_str())
                    .unwrap_or("")
            );
            return block(job, ctx, "IncompatibleChange", &message, None).await;
        }
    }
    if job.spec.job.checkpoint.is_none() {
        return block(
            job,
            ctx,
            "NoCheckpoint",
            "spec.checkpoint: a job on Kubernetes needs a checkpoint location its master and workers share, such as s3://bucket/prefix (a file:// location only on a volume every pod mounts)",
            None,
        )
        .await;
    }
    let suspended = job.spec.suspend == Some(true);
    let previous_status = job.status.clone().unwrap_or_default();
    // Any change of the spec (a fix, a suspend and resume) gives a failed job a fresh start.
    let spec_changed = previous_status.observed_generation != job.metadata.generation;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pods = pods_api
        .list(&ListParams::default().labels(&format!("{LABEL_JOB}={name}")))
        .await?
        .items;
    let was_stopped = suspended
        || matches!(
            previous_status.phase.as_deref(),
            Some("BackingOff" | "Failed")
        );
    let mut report = health::inspect(
        &pods,
        &previous_status.pods,
        resources::workers_wanted(job, was_stopped),
    );
    if let Some(secret) = &job.spec.checkpoint_credentials {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        if secrets.get_opt(&secret.name).await?.is_none() {
            report.problems.insert(0, health::Problem {
                reason: "SecretMissing",
                message: format!(
                    "the Secret {} named by spec.checkpointCredentials does not exist in namespace {ns}; create it with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the pods wait for it)",
                    secret.name
                ),
            });
        }
    }
    let hold = restart_decision(job, &previous_status, spec_changed, suspended, &report);
    let mut incidents: Vec<(EventType, &str, String)> = report
        .incidents
        .iter()
        .map(|i| (EventType::Warning, i.reason, i.message.clone()))
        .collect();
    if let Some(event) = &hold.event {
        incidents.push((EventType::Warning, event.0, event.1.clone()));
    }
    let stopped = suspended || hold.phase.is_some();

    let token = format!("{name}-token");
    let desired = resources::desired(job, &token, stopped, ctx.namespace.as_deref())?;
    // Server-side apply with force would take over an object of the same name that someone
    // else made (and the garbage collector would delete it with the job): refuse instead.
    let foreign = foreign_objects(client, &ns, job, &token, &desired).await?;
    if !foreign.is_empty() {
        let message = format!(
            "{} already exist{} and {} not owned by this StreamingJob; the operator does not take over objects it did not create: rename the job, or delete or rename {}",
            foreign.join(", "),
            if foreign.len() == 1 { "s" } else { "" },
            if foreign.len() == 1 { "is" } else { "are" },
            if foreign.len() == 1 { "it" } else { "them" },
        );
        return block(
            job,
            ctx,
            "NameConflict",
            &message,
            Some(NAME_CONFLICT_RECHECK),
        )
        .await;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = ensure_secret(job, &secrets, &token, || {
        Ok([(TOKEN_KEY.to_string(), random_token()?)].into())
    })
    .await?
    .and_then(|data| String::from_utf8(data.get(TOKEN_KEY)?.clone()).ok());
    let tls = ensure_secret(job, &secrets, &resources::tls_secret(&name), || {
        Ok(crate::tls::issue(&name)?)
    })
    .await?
    .as_ref()
    .and_then(crate::tls::from_secret);
    apply::<ConfigMap>(client, &ns, &desired.config).await?;
    apply::<Service>(client, &ns, &desired.master_service).await?;
    apply::<Service>(client, &ns, &desired.worker_service).await?;
    apply::<NetworkPolicy>(client, &ns, &desired.network_policy).await?;
    apply::<StatefulSet>(client, &ns, &desired.master).await?;
    apply::<StatefulSet>(client, &ns, &desired.workers).await?;

    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let ready = |s: Option<StatefulSet>| {
        s.and_then(|s| s.status)
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    };
    let master_ready = ready(sets.get_opt(&format!("{name}-master")).await?);
    let workers_ready = ready(sets.get_opt(&format!("{name}-worker")).await?);
    let desired_workers = resources::workers_wanted(job, stopped);
    // The master's own account: progress, checkpoints, recoveries (when it answers).
    let master_name = format!("{name}-master-0");
    let master_ip = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(master_name.as_str()))
        .and_then(|p| p.status.as_ref()?.pod_ip.clone());
    let mut master_view = match (master_ip, secret) {
        (Some(ip), Some(secret)) => {
            let address = format!("{ip}:{}", crate::constants::MASTER_PORT);
            crate::status::ask_master(&address, &secret, tls.as_ref()).await
        }
        _ => None,
    };
    // A restarted master resumed from the checkpoint too: its restarts count as recoveries,
    // on top of the rollbacks it reports itself (which start again at zero in a new process);
    // a new master pod starts from zero again, on top of the total so far.
    let master_pod = report.observed.iter().find(|p| p.name == master_name);
    let (recoveries, recovery_tally) = crate::status::tally_recoveries(
        &previous_status,
        master_pod.map(|p| p.uid.as_str()),
        master_view
            .as_ref()
            .map(|m| m.recoveries + master_pod.map_or(0, |p| p.restarts.max(0) as u64)),
    );
    if let Some(m) = master_view.as_mut() {
        m.recoveries = u64::try_from(recoveries).unwrap_or(0);
    }
    let (phase, status) = crate::status::compute(&crate::status::Observed {
        generation: job.metadata.generation,
        suspended,
        master_ready: master_ready >= 1,
        workers_ready,
        workers_desired: desired_workers,
        master: master_view.as_ref(),
        previous: &previous_status.conditions,
        hold: hold.phase.map(|p| (p, hold.reason, hold.message.as_str())),
        problems: &report.problems,
    });
    let mut status = status;
    status["status"]["fingerprint"] = json!(fingerprint);
    status["status"]["restarts"] = json!(hold.restarts);
    status["status"]["restartAt"] = json!(hold.restart_at.map(|t| t.to_string()));
    status["status"]["pods"] = json!(report.observed);
    status["status"]["recoveryTally"] = json!(recovery_tally);
    let phase = phase.as_str();
    publish_transitions(
        job,
        ctx,
        phase,
        desired_workers,
        master_view.as_ref(),
        incidents,
    )
    .await;
    ctx.metrics
        .phases
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(format!("{ns}/{name}"), phase.to_string());
    let jobs: Api<StreamingJobResource> = Api::namespaced(client.clone(), &ns);
    jobs.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    // The master's progress is read over RPC, not watched: while its master says it is coming
    // up (waiting for workers, restoring the checkpoint) look again soon, so that the status
    // says Running within a second of the first batch rather than up to five seconds later.
    // Pods that are not up yet wake the controller through their StatefulSets instead, and a
    // master that never answers (a crash loop) is not polled faster.
    let master_state = master_view.as_ref().map(|m| m.state);
    let coming_up = matches!(phase, "Pending" | "Recovering")
        && report.problems.is_empty()
        && matches!(
            master_state,
            Some(pb::MasterState::Starting | pb::MasterState::Recovering)
        );
    Ok(Action::requeue(Duration::from_secs(if coming_up {
        1
    } else {
        5
    })))
}

/// Refuses to run the spec as it is: phase Blocked, a Degraded condition with `reason` and
/// `message`, and nothing more until the spec changes (or, with `recheck`, until that time has
/// passed: for causes outside the spec). Running pods are left alone.
async fn block(
    job: &StreamingJobResource,
    ctx: &Context,
    reason: &str,
    message: &str,
    recheck: Option<Duration>,
) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let previous = job
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let generation = job.metadata.generation;
    let mut conditions: Vec<Condition> = previous
        .iter()
        .filter(|c| c.type_ != "Degraded" && c.type_ != "Ready")
        .cloned()
        .collect();
    conditions.push(crate::status::condition(
        &previous, "Degraded", true, reason, message, generation,
    ));
    conditions.push(crate::status::condition(
        &previous, "Ready", false, "Blocked", "", generation,
    ));
    let body = json!({"status": {"phase": "Blocked", "message": crate::status::scrub(message), "conditions": conditions, "observedGeneration": generation}});
    let jobs: Api<StreamingJobResource> = Api::namespaced(ctx.client.clone(), &ns);
    jobs.patch_status(&name, &PatchParams::default(), &Patch::Merge(body))
        .await?;
    ctx.metrics
        .phases
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(format!("{ns}/{name}"), "Blocked".into());
    Ok(recheck.map_or_else(Action::await_change, Action::requeue))
}

/// The job failed by its own fault (the master exited with the user-error code).
const REASON_JOB_FAILED: &str = "JobFailed";
/// Crash-looped past `restartPolicy.limit`.
const REASON_RESTART_LIMIT: &str = "RestartLimitReached";
/// Crash-looping, held back before the next start.
const REASON_CRASH_LOOP: &str = "CrashLoop";

/// What the restart policy says about this reconcile.
struct Hold {
    /// `BackingOff` or `Failed` while the job's pods are held at zero.
    phase: Option<&'static str>,
    /// Why, as the Degraded condition's reason.
    reason: &'static str,
    message: String,
    restarts: i64,
    restart_at: Option<Timestamp>,
    /// A Warning event for a decision taken now.
    event: Option<(&'static str, String)>,
}

/// A crash-looping job is stopped and started again after `restartPolicy.backoffSeconds`,
/// doubled at every restart; past `restartPolicy.limit` restarts it is Failed and stays
/// stopped until its spec changes. Ten healthy minutes after a restart forgive the count.
fn restart_decision(
    job: &StreamingJobResource,
    previous: &StreamingJobStatus,
    spec_changed: bool,
    suspended: bool,
    report: &health::PodsReport,
) -> Hold {
    let policy = job.spec.restart_policy.clone().unwrap_or_default();
    let backoff = i64::from(policy.backoff_seconds.unwrap_or(10));
    let now = Timestamp::now();
    let mut hold = Hold {
        phase: None,
        reason: "",
        message: String::new(),
        restarts: if spec_changed { 0 } else { previous.restarts },
        restart_at: if spec_changed {
            None
        } else {
            previous.restart_at.as_deref().and_then(|t| t.parse().ok())
        },
        event: None,
    };
    if suspended {
        return hold;
    }
    if !spec_changed && previous.phase.as_deref() == Some("Failed") {
        hold.phase = Some("Failed");
        let failed_for = previous
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .map(|c| c.reason.as_str());
        hold.reason = if failed_for == Some(REASON_JOB_FAILED) {
            REASON_JOB_FAILED
        } else {
            REASON_RESTART_LIMIT
        };
        hold.message = previous.message.clone().unwrap_or_default();
        return hold;
    }
    if let Some(why) = &report.job_failed {
        // Not a crash to wait out: the job fails the same way every time it starts.
        hold.phase = Some("Failed");
        hold.reason = REASON_JOB_FAILED;
        hold.message = format!(
            "the job failed: {why}; fix the manifest or its input, then change the spec (for example suspend and resume the job) to start it again"
        );
        hold.event = Some((REASON_JOB_FAILED, hold.message.clone()));
        return hold;
    }
    if hold.restart_at.is_some_and(|at| now < at) {
        hold.phase = Some("BackingOff");
        hold.reason = REASON_CRASH_LOOP;
        // Said when the back-off began; it names the time and the restart already.
        hold.message = previous.message.clone().unwrap_or_default();
        return hold;
    }
    if let Some(why) = &report.crash_loop {
        hold.restarts += 1;
        if policy
            .limit
            .is_some_and(|limit| hold.restarts > i64::from(limit))
        {
            hold.phase = Some("Failed");
            hold.reason = REASON_RESTART_LIMIT;
            hold.message = format!(
                "{why}; stopped after {} restarts (spec.restartPolicy.limit {}): fix the cause, then change the spec (for example suspend and resume the job) to start it again",
                hold.restarts - 1,
                policy.limit.unwrap_or(0)
            );
            hold.event = Some(("Failed", hold.message.clone()));
        } else {
            let at = health::restart_time(now, backoff, hold.restarts);
            hold.restart_at = Some(at);
            hold.phase = Some("BackingOff");
            hold.reason = REASON_CRASH_LOOP;
            hold.message = format!(
                "{why}; the job starts again at {at} (restart {})",
                hold.restarts
            );
            hold.event = Some(("CrashLoop", hold.message.clone()));
        }
        return hold;
    }
    let healthy_for = hold
        .restart_at
        .map(|at| now.as_second() - at.as_second())
        .unwrap_or(0);
    if hold.restarts > 0 && healthy_for > 600 && report.problems.is_empty() {
        hold.restarts = 0;
    }
    hold
}

/// Events for the transitions a user cares about, from the previous status to this one.
async fn publish_transitions(
    job: &StreamingJobResource,
    ctx: &Context,
    phase: &str,
    desired_workers: i32,
    master: Option<&crate::status::MasterView>,
    incidents: Vec<(EventType, &str, String)>,
) {
    let previous = job.status.clone();
    let mut events = incidents;
    match &previous {
        None => events.push((
            EventType::Normal,
            "Created",
            format!("master, {desired_workers} workers, services and config created"),
        )),
        Some(p) => {
            let was = p.phase.clone().unwrap_or_default();
            if was != "Suspended" && phase == "Suspended" {
                events.push((
                    EventType::Normal,
                    "Suspended",
                    "pods stopped; state stays in the checkpoint".into(),
                ));
            }
            if was == "Suspended" && phase != "Suspended" {
                events.push((
                    EventType::Normal,
                    "Resumed",
                    "pods started; the job resumes from its checkpoint".into(),
                ));
            }
            if p.workers_desired != desired_workers && phase != "Suspended" && was != "Suspended" {
                events.push((
                    EventType::Normal,
                    "Rescaled",
                    format!("workers {} -> {desired_workers}", p.workers_desired),
                ));
            }
            if let Some(m) = master {
                if m.recoveries as i64 > p.recoveries {
                    events.push((
                        EventType::Warning,
                        "Recovered",
                        format!("recovered from the last checkpoint: {}", m.message),
                    ));
                }
                let failing_before = p.conditions.iter().any(|c| {
                    c.type_ == "Degraded" && c.reason == "CheckpointFailing" && c.status == "True"
                });
                if m.state == pb::MasterState::CheckpointFailing && !failing_before {
                    events.push((EventType::Warning, "CheckpointFailed", m.message.clone()));
                }
            }
        }
    }
    for (type_, reason, note) in events {
        publish(ctx, job, type_, reason, &note, "Reconcile").await;
    }
}

/// Publishes an event about `job`, its note cut to what the API server takes; a failure to
/// publish is logged, never fatal.
pub(crate) async fn publish(
    ctx: &Context,
    job: &StreamingJobResource,
    type_: EventType,
    reason: &str,
    note: &str,
    action: &str,
) {
    let event = kube::runtime::events::Event {
        type_,
        reason: reason.into(),
        note: Some(sluice::error::shorten(note, EVENT_NOTE_LIMIT)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &job.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish an event");
    }
}

/// The API server refuses event notes longer than this.
const EVENT_NOTE_LIMIT: usize = 1024;

fn error_policy(_job: Arc<StreamingJobResource>, error: &Error, _ctx: Arc<Context>) -> Action {
    match error {
        // A spec that cannot be built waits for a change of the spec.
        Error::Build(_) => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

#[cfg(test)]
mod tests {
    use sluice::error::shorten;

    use super::*;

    fn job() -> StreamingJobResource {
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "StreamingJob",
            "metadata": {"name": "wc", "namespace": "jobs", "generation": 2},
            "spec": {
                "batchInterval": "1s",
                "sources": [{"name": "g", "generator": {"rate": 10}}],
                "sinks": [{"stdout": {}}],
                "restartPolicy": {"limit": 3}
            }
        }))
        .expect("a job")
    }

    #[test]
    fn a_job_at_fault_fails_at_once_and_stays_failed_until_its_spec_changes() {
        let report = health::PodsReport {
            job_failed: Some("worker w1: spec.pipeline[0].parseJson: not JSON".into()),
            ..Default::default()
        };
        let hold = restart_decision(
            &job(),
            &StreamingJobStatus::default(),
            false,
            false,
            &report,
        );
        assert_eq!(hold.phase, Some("Failed"));
        assert_eq!(hold.reason, REASON_JOB_FAILED);
        assert!(hold.message.contains("parseJson"), "{}", hold.message);
        assert_eq!(hold.event.as_ref().map(|e| e.0), Some(REASON_JOB_FAILED));
        // The next reconcile (pods gone, nothing reported) keeps it Failed, for the same reason.
        let previous = StreamingJobStatus {
            phase: Some("Failed".into()),
            message: Some(hold.message.clone()),
            conditions: vec![Condition {
                type_: "Degraded".into(),
                status: "True".into(),
                reason: REASON_JOB_FAILED.into(),
                message: hold.message.clone(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::now(),
                ),
                observed_generation: Some(2),
            }],
            ..Default::default()
        };
        let again = restart_decision(&job(), &previous, false, false, &Default::default());
        assert_eq!(again.phase, Some("Failed"));
        assert_eq!(again.reason, REASON_JOB_FAILED);
        assert!(again.event.is_none());
        // A new spec starts it again.
        let changed = restart_decision(&job(), &previous, true, false, &Default::default());
        assert_eq!(changed.phase, None);
    }

    #[test]
    fn event_notes_fit_the_api_limit() {
        assert_eq!(shorten("short", 1024), "short");
        let long = "é".repeat(1000);
        let cut = shorten(&long, 1024);
        assert!(cut.len() <= 1024 && cut.ends_with("..."));
    }
}
