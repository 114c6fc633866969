//! The reconciler. Each reconcile of a StreamingJob is a pipeline: refuse a spec that cannot
//! run → read the pods → decide restarts (`restart`) → build the objects (`resources`) and
//! check that their names are free (`ownership`) → write them (`apply`) → read the progress
//! (StatefulSets, the master's Status RPC) → events (`events`) and the status (`status`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use sluice_crds::resource::{Phase, StreamingJobResource, StreamingJobStatus};
use sluice_proto::v1 as pb;

use crate::conditions::{ConditionType, condition, reason};
use crate::constants::MANAGER;
use crate::resources::{self, BuildError};
use crate::{apply, events, health, node_loss, ownership, restart, status, upgrade};

/// What reconciles share.
pub struct Context {
    pub client: Client,
    /// The operator's own namespace (`POD_NAMESPACE`), which job NetworkPolicies admit.
    pub namespace: Option<String>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub recorder: kube::runtime::events::Recorder,
    /// What the autoscaler remembers of each job between looks.
    pub autoscale: crate::autoscale::Memories,
    /// The job's objects as watched, and what the operator last wrote of each.
    pub children: crate::cache::Children,
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

/// Where the operator runs and what it watches.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Namespaces to watch; empty: all of them.
    pub namespaces: Vec<String>,
    /// The operator's own namespace, which job NetworkPolicies admit.
    pub own_namespace: Option<String>,
    /// The operator pod's name, as the events' reporting instance.
    pub pod_name: Option<String>,
}

/// Runs the controller until the process stops: over all namespaces, or one per namespace
/// in `settings.namespaces` (the RBAC the chart grants then covers only those).
pub async fn run(client: Client, settings: Settings, metrics: Arc<crate::metrics::Metrics>) {
    if settings.namespaces.is_empty() {
        run_in(client.clone(), Api::all(client), None, &settings, metrics).await;
    } else {
        let controllers = settings.namespaces.iter().map(|ns| {
            run_in(
                client.clone(),
                Api::namespaced(client.clone(), ns),
                Some(ns.as_str()),
                &settings,
                metrics.clone(),
            )
        });
        futures::future::join_all(controllers).await;
    }
}

async fn run_in(
    client: Client,
    jobs: Api<StreamingJobResource>,
    namespace: Option<&str>,
    settings: &Settings,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let reporter = kube::runtime::events::Reporter {
        controller: MANAGER.into(),
        instance: settings.pod_name.clone(),
    };
    let recorder = kube::runtime::events::Recorder::new(client.clone(), reporter);
    let (children, sets) = crate::cache::Children::start(&client, namespace);
    let context = Arc::new(Context {
        client,
        namespace: settings.own_namespace.clone(),
        metrics,
        recorder,
        autoscale: crate::autoscale::Memories::default(),
        children,
    });
    let controller = Controller::new(jobs, watcher::Config::default()).owns_stream(sets);
    sweep_memory(controller.store(), context.clone());
    controller
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

/// How often what the operator remembers of deleted jobs is dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(300);

/// Drops, every [`SWEEP_EVERY`], what the operator remembers of jobs no longer in `jobs`.
fn sweep_memory(jobs: kube::runtime::reflector::Store<StreamingJobResource>, ctx: Arc<Context>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            every.tick().await;
            let alive: std::collections::HashSet<crate::cache::JobKey> = jobs
                .state()
                .iter()
                .map(|job| crate::cache::JobKey::of(job.as_ref()))
                .collect();
            ctx.children.sweep(|job| alive.contains(job));
        }
    });
}

async fn reconcile(job: Arc<StreamingJobResource>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.children.ready().await;
    let started = std::time::Instant::now();
    let result = reconcile_with_finalizer(job, &ctx).await;
    let failure = match &result {
        Err(Error::Build(_)) => Some(crate::metrics::Failure::Build),
        Err(_) => Some(crate::metrics::Failure::Api),
        Ok(_) => None,
    };
    ctx.metrics.reconciled(started.elapsed(), failure);
    result
}

/// The finalizer holds a deleted job only while its deletion has work to do (deletionPolicy
/// Delete); otherwise it is taken off, so that a job never waits on the operator to go.
async fn reconcile_with_finalizer(
    job: Arc<StreamingJobResource>,
    ctx: &Arc<Context>,
) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let api = jobs_api(&job, ctx);
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
            ctx.metrics.forget(&format!("{ns}/{}", job.name_any()));
            ctx.autoscale.forget(&job.uid().unwrap_or_default());
            ctx.children.forget(&crate::cache::JobKey::of(job.as_ref()));
            tracing::info!(job = %job.name_any(), "job deleted; checkpoint retained");
            return Ok(Action::await_change());
        }
        return reconcile_job(&job, ctx).await;
    }
    kube::runtime::finalizer::finalizer(&api, FINALIZER, job, |event| async {
        match event {
            kube::runtime::finalizer::Event::Apply(job) => reconcile_job(&job, ctx).await,
            kube::runtime::finalizer::Event::Cleanup(job) => {
                ctx.metrics.forget(&format!("{ns}/{}", job.name_any()));
                ctx.autoscale.forget(&job.uid().unwrap_or_default());
                ctx.children.forget(&crate::cache::JobKey::of(job.as_ref()));
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

/// The label selector of the job's worker pods, as the scale subresource reports it.
fn worker_selector(job: &StreamingJobResource) -> String {
    resources::selector(&job.name_any(), "worker")
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// How often a job blocked by a name conflict looks again (the objects in its way are not
/// watched).
const NAME_CONFLICT_RECHECK: Duration = Duration::from_secs(30);

async fn reconcile_job(
    job: &Arc<StreamingJobResource>,
    ctx: &Arc<Context>,
) -> Result<Action, Error> {
    // 1. Refuse a spec that cannot run, before anything is created or changed.
    if let Some((why, message)) = refusal(job) {
        return block(job, ctx, why, &message, None).await;
    }
    // 2. A changed spec: planned against the one the pods run, applied only where the plan
    // allows; said in an event and the Upgrade condition before anything changes.
    let previous = job.status.clone().unwrap_or_default();
    let upgrade = match upgrade::decide(applied_spec(job, ctx).await?.as_deref(), job) {
        upgrade::Decision::Unchanged => None,
        upgrade::Decision::Refuse(plan, why) => {
            let refused = condition(
                &previous.conditions,
                ConditionType::Upgrade,
                false,
                reason::UPGRADE_REFUSED,
                &plan.summary(),
                job.metadata.generation,
            );
            let message = format!("{why} (the job goes on with its previous spec)");
            return block_with(
                job,
                ctx,
                reason::UPGRADE_REFUSED,
                &message,
                None,
                Some(refused),
            )
            .await;
        }
        upgrade::Decision::Proceed(plan) => {
            events::publish(
                ctx,
                job,
                EventType::Normal,
                reason::UPGRADE_PLANNED,
                &plan.summary(),
                "Upgrade",
            )
            .await;
            Some(condition(
                &previous.conditions,
                ConditionType::Upgrade,
                true,
                reason::UPGRADE_PLANNED,
                &plan.summary(),
                job.metadata.generation,
            ))
        }
    };
    // 3. Read what the job's pods say.
    let suspended = job.spec.suspend == Some(true);
    let pods = read_pods(job, ctx, &previous, suspended).await?;
    // Pods on nodes lost past the timeout: force-deleted, so their StatefulSets start them on
    // another node (the checkpoint fences whatever still runs on the lost one).
    let node_recheck = replace_lost_pods(job, ctx, &pods.items).await?;
    // 4. Decide whether the restart policy holds the pods at zero.
    // Any change of the spec (a fix, a suspend and resume) gives a failed job a fresh start.
    let spec_changed = previous.observed_generation != job.metadata.generation;
    let hold = restart::decide(job, &previous, spec_changed, suspended, &pods.report);
    let stopped = suspended || hold.phase.is_some();
    // 5. Build the objects, and make sure their names are free.
    let name = job.name_any();
    let desired = resources::desired(
        job,
        &resources::token_secret(&name),
        stopped,
        ctx.namespace.as_deref(),
    )?;
    let foreign = ownership::foreign_objects(ctx, job, &desired).await?;
    if !foreign.is_empty() {
        let message = ownership::conflict_message(&foreign);
        return block(
            job,
            ctx,
            reason::NAME_CONFLICT,
            &message,
            Some(NAME_CONFLICT_RECHECK),
        )
        .await;
    }
    // 6. Write them.
    let access = apply::all(ctx, job, &desired).await?;
    // 7. Read the progress, and say it.
    let workers_desired = resources::workers_wanted(job, stopped);
    let progress = read_progress(job, ctx, &desired, &pods, &access).await?;
    let (recoveries, recovery_tally) = status::tally_recoveries(
        &previous,
        progress.master_uid.as_deref(),
        progress
            .master
            .as_ref()
            .map(|m| m.recoveries + progress.master_restarts),
    );
    let mut master = progress.master;
    if let Some(m) = master.as_mut() {
        m.recoveries = u64::try_from(recoveries).unwrap_or(0);
    }
    let mut next = status::compute(&status::Observed {
        generation: job.metadata.generation,
        suspended,
        master_ready: progress.master_ready,
        workers_ready: progress.workers_ready,
        workers_desired,
        master: master.as_ref(),
        previous: &previous,
        hold: hold.phase.map(|p| (p, hold.reason, hold.message.as_str())),
        problems: &pods.report.problems,
    });
    next.fingerprint = Some(sluice_crds::fingerprint(&job.spec.job));
    if let Some(planned) = upgrade {
        next.conditions.retain(|c| c.type_ != planned.type_);
        next.conditions.push(planned);
    }
    next.selector = Some(worker_selector(job));
    next.restarts = hold.restarts;
    next.restart_at = hold.restart_at.map(|t| t.to_string());
    next.pods = pods.report.observed.clone();
    next.recoveries = recoveries;
    next.recovery_tally = recovery_tally;
    let phase = next.phase.unwrap_or(Phase::Pending);
    let mut incidents: Vec<(EventType, &str, String)> = pods
        .report
        .incidents
        .iter()
        .map(|i| (EventType::Warning, i.reason, i.message.clone()))
        .collect();
    if let Some((why, message)) = &hold.event {
        incidents.push((EventType::Warning, why, message.clone()));
    }
    events::publish_transitions(job, ctx, phase, workers_desired, master.as_ref(), incidents).await;
    // The autoscaler's look, on what the master just said; a change of replicas comes back
    // as a new generation of the job.
    let mut version = job.metadata.resource_version.clone();
    let autoscaled =
        crate::autoscale::look(job, ctx, phase, master.as_ref(), &mut next, &mut version).await?;
    write_status(job, ctx, &next, version).await?;
    // 8. When to look again. The master's progress is read over RPC, not watched: while its
    // master says it is coming up (waiting for workers, restoring the checkpoint) look again
    // soon, so that the status says Running within a second of the first batch rather than up
    // to five seconds later. Pods that are not up yet wake the controller through their
    // StatefulSets instead, and a master that never answers (a crash loop) is not polled faster.
    let coming_up = matches!(phase, Phase::Pending | Phase::Recovering)
        && pods.report.problems.is_empty()
        && matches!(
            master.as_ref().map(|m| m.state),
            Some(pb::MasterState::Starting | pb::MasterState::Recovering)
        );
    let next = if coming_up {
        Duration::from_secs(1)
    } else if autoscaled {
        crate::autoscale::LOOK_EVERY
    } else {
        Duration::from_secs(5)
    };
    Ok(Action::requeue(
        node_recheck.map_or(next, |r| r.clamp(Duration::from_secs(1), next)),
    ))
}

/// Force-deletes the job's pods whose nodes have been NotReady past
/// `spec.master.nodeLossTimeout`, with a Warning event each; returns when a NotReady node
/// reaches the timeout, if one will.
async fn replace_lost_pods(
    job: &StreamingJobResource,
    ctx: &Context,
    pods: &[Pod],
) -> Result<Option<Duration>, Error> {
    let timeout = job
        .spec
        .master
        .as_ref()
        .and_then(|m| m.node_loss_timeout.as_deref())
        .and_then(|t| sluice_crds::parse_duration(t).ok())
        .unwrap_or(node_loss::DEFAULT_TIMEOUT);
    if timeout.is_zero() {
        return Ok(None);
    }
    let bound: std::collections::BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
        .collect();
    let api: Api<Node> = Api::all(ctx.client.clone());
    let mut nodes = std::collections::BTreeMap::new();
    for name in bound {
        match api.get_opt(name).await {
            Ok(Some(node)) => {
                nodes.insert(name.to_string(), node);
            }
            Ok(None) => {}
            // Installed without the right to read nodes: lost nodes wait for Kubernetes.
            Err(kube::Error::Api(e)) if e.code == 403 => {
                tracing::debug!(
                    node = name,
                    "cannot read nodes; pods on lost nodes wait for the node object to go"
                );
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let verdict = node_loss::judge(pods, &nodes, k8s_openapi::jiff::Timestamp::now(), timeout);
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for lost in &verdict.lost {
        match pods_api
            .delete(
                &lost.pod,
                &kube::api::DeleteParams::default().grace_period(0),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e.into()),
        }
        let note = format!(
            "{} force-deleted: its node {} has been NotReady for {}s (spec.master.nodeLossTimeout {}s); its StatefulSet starts it on another node, and a process left on the lost node cannot commit",
            lost.pod,
            lost.node,
            lost.for_.as_secs(),
            timeout.as_secs()
        );
        tracing::warn!(job = %job.name_any(), pod = %lost.pod, node = %lost.node, "{note}");
        events::publish(
            ctx,
            job,
            EventType::Warning,
            reason::NODE_LOST,
            &note,
            "ForceDelete",
        )
        .await;
    }
    Ok(verdict.recheck)
}

/// Why the operator refuses to run the spec as it is, before it touches anything: the reason
/// and the message of the Blocked status.
fn refusal(job: &StreamingJobResource) -> Option<(&'static str, String)> {
    // What `sluice validate` refuses would crash-loop the pods: refuse it before any starts,
    // with the same messages and field paths.
    if let Ok(manifest) = resources::manifest(job) {
        let problems = sluice_crds::validate(&manifest);
        if !problems.is_empty() {
            let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Some((reason::INVALID_SPEC, all.join("; ")));
        }
    }
    if let Some(Err(message)) = crate::autoscale::settings(job) {
        return Some((reason::INVALID_SPEC, message));
    }
    if job.spec.job.checkpoint.is_none() {
        return Some((
            reason::NO_CHECKPOINT,
            "spec.checkpoint: a job on Kubernetes needs a checkpoint location its master and workers share, such as s3://bucket/prefix (a file:// location only on a volume every pod mounts)".into(),
        ));
    }
    None
}

/// The spec the job's pods were made from, as its ConfigMap keeps it: `None` for a new job
/// (or one made by an operator that did not keep it). Read only when the ConfigMap may hold
/// another spec than this one: when it is not, as watched, what this operator last wrote for
/// the spec as it is now.
async fn applied_spec(job: &StreamingJobResource, ctx: &Context) -> Result<Option<String>, Error> {
    if let Ok(config) = resources::manifest_config_map(job)
        && ctx
            .children
            .unchanged(&crate::cache::JobKey::of(job), &config)
    {
        return Ok(upgrade::applied_spec(job));
    }
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let config = api
        .get_opt(&resources::config_map(&job.name_any()))
        .await
        .map_err(Error::Kube)?;
    Ok(config
        .and_then(|c| c.data)
        .and_then(|mut d| d.remove(upgrade::APPLIED_SPEC_KEY)))
}

/// The job's pods as watched, and what they say.
struct Pods {
    items: Vec<Pod>,
    report: health::PodsReport,
}

async fn read_pods(
    job: &StreamingJobResource,
    ctx: &Context,
    previous: &StreamingJobStatus,
    suspended: bool,
) -> Result<Pods, Error> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let items = ctx.children.pods(&ns, &name);
    let was_stopped =
        suspended || matches!(previous.phase, Some(Phase::BackingOff | Phase::Failed));
    let mut report = health::inspect(
        &items,
        &previous.pods,
        resources::workers_wanted(job, was_stopped),
    );
    let named = [
        (
            &job.spec.checkpoint_credentials,
            "spec.checkpointCredentials",
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ),
        (
            &job.spec.kafka_credentials,
            "spec.kafkaCredentials",
            "the keys username and password",
        ),
        (
            &job.spec.postgres_credentials,
            "spec.postgresCredentials",
            "the keys username and password",
        ),
    ];
    for (secret, field, keys) in named {
        let Some(secret) = secret else { continue };
        if !named_secret_exists(job, ctx, &ns, &secret.name).await? {
            report.problems.insert(0, health::Problem {
                reason: reason::SECRET_MISSING,
                message: format!(
                    "the Secret {} named by {field} does not exist in namespace {ns}; create it with {keys} (the pods wait for it)",
                    secret.name
                ),
            });
        }
    }
    Ok(Pods { items, report })
}

/// Whether the Secret `name` a job names (its credentials) exists: asked of the API server
/// unless it was seen lately. Only that it exists is remembered, never what it holds.
async fn named_secret_exists(
    job: &StreamingJobResource,
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<bool, Error> {
    let key = crate::cache::JobKey::of(job);
    if ctx.children.seen_secret(&key, name) {
        return Ok(true);
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let exists = secrets.get_metadata_opt(name).await?.is_some();
    if exists {
        ctx.children.saw_secret(&key, name);
    }
    Ok(exists)
}

/// How far the job is: its StatefulSets' readiness and the master's own account.
struct Progress {
    master_ready: bool,
    workers_ready: i32,
    /// What the master says, when it answers.
    master: Option<status::MasterView>,
    /// The master pod's uid and container restarts: a restarted master resumed from the
    /// checkpoint too, so its restarts count as recoveries.
    master_uid: Option<String>,
    master_restarts: u64,
}

async fn read_progress(
    job: &StreamingJobResource,
    ctx: &Context,
    desired: &resources::Desired,
    pods: &Pods,
    access: &apply::Access,
) -> Result<Progress, Error> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let ready = |set: &StatefulSet| -> i32 {
        let name = set.metadata.name.as_deref().unwrap_or_default();
        ctx.children
            .stateful_set(&ns, name)
            .and_then(|s| s.status.as_ref()?.ready_replicas)
            .unwrap_or(0)
    };
    let master_ready = ready(&desired.master) >= 1;
    let workers_ready = ready(&desired.workers);
    let master_pod = format!(
        "{}-0",
        desired.master.metadata.name.as_deref().unwrap_or_default()
    );
    let master_ip = pods
        .items
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(master_pod.as_str()))
        .and_then(|p| p.status.as_ref()?.pod_ip.clone());
    let master = match (master_ip, &access.token) {
        (Some(ip), Some(token)) => {
            let address = format!("{ip}:{}", crate::constants::MASTER_PORT);
            status::ask_master(&address, token, access.tls.as_ref()).await
        }
        _ => None,
    };
    let seen = pods.report.observed.iter().find(|p| p.name == master_pod);
    Ok(Progress {
        master_ready,
        workers_ready,
        master,
        master_uid: seen.map(|p| p.uid.clone()),
        master_restarts: seen.map_or(0, |p| u64::try_from(p.restarts).unwrap_or(0)),
    })
}

/// The StreamingJobs of `job`'s namespace.
pub(crate) fn jobs_api(job: &StreamingJobResource, ctx: &Context) -> Api<StreamingJobResource> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    Api::namespaced(ctx.client.clone(), &ns)
}

/// Writes the whole status (a JSON merge patch in which every field is present, so that one
/// that no longer holds is cleared), unless it is the one the job has, and the phase gauge.
///
/// Only over the job as it was read (`version`, its resourceVersion): a status computed from an
/// older copy (the cache behind a write of the reconcile before) would put back what that
/// write changed, such as an Upgrade condition. On a conflict nothing is written: the newer
/// job wakes the controller again.
async fn write_status(
    job: &StreamingJobResource,
    ctx: &Context,
    status: &StreamingJobStatus,
    version: Option<String>,
) -> Result<(), Error> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    if job.status.as_ref() == Some(status) {
        // Nothing to say that the job does not say already.
        ctx.metrics.status_written(crate::metrics::Write::Unchanged);
        if let Some(phase) = status.phase {
            ctx.metrics.phase(format!("{ns}/{name}"), phase);
        }
        return Ok(());
    }
    let body = match version {
        Some(v) => json!({ "metadata": {"resourceVersion": v}, "status": status }),
        None => json!({ "status": status }),
    };
    match jobs_api(job, ctx)
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(body))
        .await
    {
        Ok(_) => ctx.metrics.status_written(crate::metrics::Write::Sent),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::debug!(job = %name, "status not written: the job changed since it was read");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    if let Some(phase) = status.phase {
        ctx.metrics.phase(format!("{ns}/{name}"), phase);
    }
    Ok(())
}

/// Refuses to run the spec as it is: phase Blocked, a Degraded condition with `why` and
/// `message`, and nothing more until the spec changes (or, with `recheck`, until that time has
/// passed: for causes outside the spec). Running pods are left alone.
async fn block(
    job: &StreamingJobResource,
    ctx: &Context,
    why: &str,
    message: &str,
    recheck: Option<Duration>,
) -> Result<Action, Error> {
    block_with(job, ctx, why, message, recheck, None).await
}

/// [`block`], with one more condition in the status (replacing its kind's).
async fn block_with(
    job: &StreamingJobResource,
    ctx: &Context,
    why: &str,
    message: &str,
    recheck: Option<Duration>,
    extra: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
) -> Result<Action, Error> {
    let previous = job.status.clone().unwrap_or_default();
    let mut next = status::blocked(&previous, job.metadata.generation, why, message);
    if let Some(extra) = extra {
        next.conditions.retain(|c| c.type_ != extra.type_);
        next.conditions.push(extra);
    }
    // One Warning event when the job becomes blocked, or blocked for another reason; not one
    // per look.
    let was_reason = previous
        .conditions
        .iter()
        .find(|c| c.type_ == crate::conditions::ConditionType::Degraded.as_str())
        .filter(|_| previous.phase == Some(Phase::Blocked))
        .map(|c| c.reason.as_str());
    let same = was_reason == Some(why) && previous.message == next.message;
    if !same {
        events::publish(ctx, job, EventType::Warning, why, message, "Block").await;
    }
    write_status(job, ctx, &next, job.metadata.resource_version.clone()).await?;
    Ok(recheck.map_or_else(Action::await_change, Action::requeue))
}

fn error_policy(_job: Arc<StreamingJobResource>, error: &Error, _ctx: Arc<Context>) -> Action {
    match error {
        // A spec that cannot be built waits for a change of the spec.
        Error::Build(_) => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn job(checkpoint: Option<&str>) -> StreamingJobResource {
        let mut spec = json!({
            "batchInterval": "1s",
            "sources": [{"name": "g", "generator": {"rate": 10}}],
            "sinks": [{"stdout": {}}]
        });
        if let Some(uri) = checkpoint {
            spec["checkpoint"] = json!({"uri": uri});
        }
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "StreamingJob",
            "metadata": {"name": "wc", "namespace": "jobs", "generation": 2},
            "spec": spec
        }))
        .expect("a job")
    }

    #[test]
    fn a_job_without_a_checkpoint_is_refused() {
        let refused = refusal(&job(None)).expect("refused");
        assert_eq!(refused.0, reason::NO_CHECKPOINT);
        assert!(refused.1.contains("spec.checkpoint"), "{}", refused.1);
        assert!(refusal(&job(Some("s3://ckpt/wc"))).is_none());
        // What `sluice validate` refuses is refused here, with its field path.
        let (why, message) = refusal(&job(Some("s3://b/wc"))).expect("refused");
        assert_eq!(why, reason::INVALID_SPEC);
        assert!(message.starts_with("spec.checkpoint.uri: "), "{message}");
    }

    #[test]
    fn expressions_that_would_not_compile_are_refused_before_any_pod() {
        let mut bad = job(Some("s3://ckpt/wc"));
        bad.spec.job.pipeline = serde_json::from_value(json!([
            {"filter": {"expr": "record.size() >"}},
            {"flatMap": {"regex": "(unclosed"}}
        ]))
        .expect("steps");
        let (why, message) = refusal(&bad).expect("refused");
        assert_eq!(why, reason::INVALID_SPEC);
        assert!(
            message.contains("spec.pipeline[0].filter.expr: ")
                && message.contains("is not a valid CEL expression"),
            "{message}"
        );
        assert!(
            message.contains("spec.pipeline[1].flatMap.regex: ")
                && message.contains("is not a valid regular expression"),
            "{message}"
        );
    }

    #[test]
    fn event_notes_fit_the_api_limit() {
        use sluice_crds::shorten;
        assert_eq!(shorten("short", 1024), "short");
        let long = "é".repeat(1000);
        let cut = shorten(&long, 1024);
        assert!(cut.len() <= 1024 && cut.ends_with("..."));
    }
}
