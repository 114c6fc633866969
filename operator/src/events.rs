//! Events about a job: the transitions a user cares about (created, suspended, resumed,
//! rescaled, recovered, a checkpoint failing) and the decisions the operator takes.

use kube::Resource;
use kube::runtime::events::EventType;
use sluice_crds::resource::{Phase, StreamingJobResource};
use sluice_proto::v1 as pb;

use crate::conditions::{ConditionType, holds, reason};
use crate::controller::Context;

/// Events for the transitions a user cares about, from the previous status to this one.
pub async fn publish_transitions(
    job: &StreamingJobResource,
    ctx: &Context,
    phase: Phase,
    desired_workers: i32,
    master: Option<&crate::status::MasterView>,
    incidents: Vec<(EventType, &str, String)>,
) {
    let previous = job.status.clone();
    let mut events = incidents;
    match &previous {
        None => events.push((
            EventType::Normal,
            reason::CREATED,
            format!("master, {desired_workers} workers, services and config created"),
        )),
        Some(p) => {
            let was_suspended = p.phase == Some(Phase::Suspended);
            let suspended = phase == Phase::Suspended;
            if !was_suspended && suspended {
                events.push((
                    EventType::Normal,
                    reason::SUSPENDED,
                    "pods stopped; state stays in the checkpoint".into(),
                ));
            }
            if was_suspended && !suspended {
                events.push((
                    EventType::Normal,
                    reason::RESUMED,
                    "pods started; the job resumes from its checkpoint".into(),
                ));
            }
            if p.workers_desired != desired_workers && !suspended && !was_suspended {
                events.push((
                    EventType::Normal,
                    reason::RESCALED,
                    format!("workers {} -> {desired_workers}", p.workers_desired),
                ));
            }
            if let Some(m) = master {
                if m.recoveries as i64 > p.recoveries {
                    events.push((
                        EventType::Warning,
                        reason::RECOVERED,
                        format!("recovered from the last checkpoint: {}", m.message),
                    ));
                }
                let failing_before = holds(
                    &p.conditions,
                    ConditionType::Degraded,
                    reason::CHECKPOINT_FAILING,
                );
                if m.state == pb::MasterState::CheckpointFailing && !failing_before {
                    events.push((
                        EventType::Warning,
                        reason::CHECKPOINT_FAILED,
                        m.message.clone(),
                    ));
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
pub async fn publish(
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
        note: Some(sluice_crds::shorten(note, EVENT_NOTE_LIMIT)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &job.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish an event");
    }
}

/// The API server refuses event notes longer than this.
const EVENT_NOTE_LIMIT: usize = 1024;
