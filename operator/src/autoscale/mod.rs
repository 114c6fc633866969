//! `spec.workers.autoscale`: at every reconcile of a running job, a look at its master's
//! figures ([`rule`]) and, when the rule says so, a new `spec.workers.replicas` through the
//! scale subresource — the path `kubectl scale` takes — with an event that says why. The job
//! rescales live at its next batch boundary. Where `maxParallelism` lets it, a need past the
//! partitions also raises `spec.parallelism` (the upgrade path then restarts the job and
//! re-shards its state).

pub mod rule;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::json;
use sluice_crds::resource::{Phase, StreamingJobResource, StreamingJobStatus};
use sluice_proto::v1 as pb;

use crate::conditions::{ConditionType, condition, holds, reason};
use crate::constants::DEFAULT_WORKERS;
use crate::controller::{Context, Error, jobs_api};
use crate::events;
use crate::status::MasterView;

/// How often a running job with autoscaling is looked at (the master's figures cover its last
/// 30 batches, so no batch goes unseen between looks of batches of 100 ms and more).
pub const LOOK_EVERY: Duration = Duration::from_secs(2);

/// What the autoscaler remembers per job (by uid) between reconciles. An operator that
/// restarts starts afresh: scale-downs then wait `scaleDownAfter` again, never sooner.
pub struct Memories {
    started: Instant,
    jobs: Mutex<HashMap<String, rule::Memory>>,
}

impl Default for Memories {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            jobs: Mutex::default(),
        }
    }
}

impl Memories {
    /// Forgets a deleted job.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.remove(uid);
        }
    }
}

/// The spec's autoscale settings, or what is wrong with them; `None` without autoscaling.
pub fn settings(job: &StreamingJobResource) -> Option<Result<rule::Settings, String>> {
    let spec = job.spec.workers.as_ref()?.autoscale.as_ref()?;
    Some(rule::Settings::from_spec(spec))
}

/// One look at `job` (phase `phase`, its master's answer `master`): may set
/// `spec.workers.replicas`; writes what it found into `next` (`status.autoscale`, the
/// ScalingLimited condition). Returns whether the job is autoscaled and running, so that it is
/// looked at again within [`LOOK_EVERY`].
pub async fn look(
    job: &StreamingJobResource,
    ctx: &Context,
    phase: Phase,
    master: Option<&MasterView>,
    next: &mut StreamingJobStatus,
    version: &mut Option<String>,
) -> Result<bool, Error> {
    let Some(Ok(settings)) = settings(job) else {
        // Not autoscaled (any more): nothing of the autoscaler stays in the status.
        next.autoscale = None;
        next.conditions
            .retain(|c| c.type_ != ConditionType::ScalingLimited.as_str());
        return Ok(false);
    };
    let previous = job.status.clone().unwrap_or_default();
    let mut found = previous.autoscale.clone().unwrap_or_default();
    let master = master.filter(|m| m.state == pb::MasterState::Running);
    let (Phase::Running, Some(master)) = (phase, master) else {
        found.message = Some(format!(
            "waiting: the job is {phase}, the autoscaler judges running jobs only"
        ));
        next.autoscale = Some(found);
        return Ok(false);
    };
    let replicas = job
        .spec
        .workers
        .as_ref()
        .and_then(|w| w.replicas)
        .unwrap_or(DEFAULT_WORKERS);
    let batches: Vec<rule::Batch> = master
        .recent
        .iter()
        .map(|b| rule::Batch {
            records: b.records,
            processing_ms: b.processing_ms,
            scheduling_delay_ms: b.scheduling_delay_ms,
            backlog: b.backlog,
            workers: b.workers,
            replay: b.replay,
        })
        .collect();
    let decision = {
        let uid = job.uid().unwrap_or_default();
        let mut jobs = ctx
            .autoscale
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let memory = jobs.entry(uid).or_default();
        rule::decide(
            &settings,
            &rule::Look {
                at_ms: u64::try_from(ctx.autoscale.started.elapsed().as_millis())
                    .unwrap_or(u64::MAX),
                replicas: u32::try_from(replicas).unwrap_or(0),
                partitions: master.partitions,
                interval_ms: master.interval_ms,
                batches: &batches,
            },
            memory,
        )
    };
    found.recommended_workers = decision
        .recommended
        .map(|n| i32::try_from(n).unwrap_or(i32::MAX));
    found.utilization = decision
        .estimate
        .as_ref()
        .map(|e| (e.utilization * 100.0).round() / 100.0);
    found.message = Some(match &decision.verdict {
        rule::Verdict::Wait(why) => format!("waiting: {why}"),
        rule::Verdict::Keep(why) => why.clone(),
        rule::Verdict::Scale { why, .. } | rule::Verdict::Reshard { why, .. } => why.clone(),
    });
    let change = match &decision.verdict {
        rule::Verdict::Scale { to, why } => {
            *version = scale(job, ctx, *to).await?;
            let up = i64::from(*to) > i64::from(replicas);
            Some(if up {
                (reason::SCALED_UP, "ScaleUp", why)
            } else {
                (reason::SCALED_DOWN, "ScaleDown", why)
            })
        }
        rule::Verdict::Reshard {
            partitions,
            to,
            why,
        } => {
            *version = reshard(job, ctx, *partitions, *to).await?;
            Some((reason::SCALED_UP, "Reshard", why))
        }
        rule::Verdict::Wait(_) | rule::Verdict::Keep(_) => None,
    };
    if let Some((event_reason, action, why)) = change {
        tracing::info!(job = %job.name_any(), "autoscale: {why}");
        events::publish(ctx, job, EventType::Normal, event_reason, why, action).await;
        found.last_scale = Some(why.clone());
        found.last_scale_time = Some(Timestamp::now().to_string());
    }
    let limited = match decision.limit {
        Some(limit @ rule::Limit::Partitions { .. }) => {
            Some((reason::TOO_FEW_PARTITIONS, limit.message()))
        }
        Some(limit @ rule::Limit::MaxReplicas { .. }) => {
            Some((reason::MAX_REPLICAS_REACHED, limit.message()))
        }
        None => None,
    };
    // A look that could not judge leaves the condition as it was.
    if decision.estimate.is_some() {
        let c = match &limited {
            Some((why, message)) => {
                if !holds(&previous.conditions, ConditionType::ScalingLimited, why) {
                    events::publish(ctx, job, EventType::Warning, why, message, "Autoscale").await;
                }
                condition(
                    &previous.conditions,
                    ConditionType::ScalingLimited,
                    true,
                    why,
                    message,
                    job.metadata.generation,
                )
            }
            None => condition(
                &previous.conditions,
                ConditionType::ScalingLimited,
                false,
                reason::WITHIN_BOUNDS,
                "",
                job.metadata.generation,
            ),
        };
        next.conditions.retain(|old| old.type_ != c.type_);
        next.conditions.push(c);
    }
    next.autoscale = Some(found);
    Ok(true)
}

/// Sets the job's workers through its scale subresource, as `kubectl scale` does; the job's
/// new resourceVersion, for the status written after it.
async fn scale(
    job: &StreamingJobResource,
    ctx: &Context,
    replicas: u32,
) -> Result<Option<String>, Error> {
    let scale = jobs_api(job, ctx)
        .patch_scale(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    Ok(scale.metadata.resource_version)
}

/// Raises the job's partitions and sets its workers in one change of its spec: the reconcile
/// that follows plans it as an upgrade (a re-shard of the state, with a restart).
async fn reshard(
    job: &StreamingJobResource,
    ctx: &Context,
    partitions: u32,
    replicas: u32,
) -> Result<Option<String>, Error> {
    let patched = jobs_api(job, ctx)
        .patch(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "parallelism": partitions,
                "workers": {"replicas": replicas},
            }})),
        )
        .await?;
    Ok(patched.metadata.resource_version)
}
