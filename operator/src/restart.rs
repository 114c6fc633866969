//! The restart policy: whether a job that crash-loops or fails is held at zero pods, for how
//! long, and what the status and events say about it. A pure decision over the previous
//! status and what the pods say, unit-tested here.

use k8s_openapi::jiff::Timestamp;
use sluice_crds::resource::{Phase, StreamingJobResource, StreamingJobStatus};

use crate::conditions::{ConditionType, holds, reason};
use crate::health;

/// What the restart policy says about this reconcile.
pub struct Hold {
    /// `BackingOff` or `Failed` while the job's pods are held at zero.
    pub phase: Option<Phase>,
    /// Why, as the Degraded condition's reason.
    pub reason: &'static str,
    pub message: String,
    pub restarts: i64,
    pub restart_at: Option<Timestamp>,
    /// A Warning event for a decision taken now.
    pub event: Option<(&'static str, String)>,
}

/// A crash-looping job is stopped and started again after `restartPolicy.backoffSeconds`,
/// doubled at every restart; past `restartPolicy.limit` restarts it is Failed and stays
/// stopped until its spec changes. Ten healthy minutes after a restart forgive the count.
pub fn decide(
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
    if !spec_changed && previous.phase == Some(Phase::Failed) {
        hold.phase = Some(Phase::Failed);
        hold.reason = if holds(
            &previous.conditions,
            ConditionType::Degraded,
            reason::JOB_FAILED,
        ) {
            reason::JOB_FAILED
        } else {
            reason::RESTART_LIMIT
        };
        hold.message = previous.message.clone().unwrap_or_default();
        return hold;
    }
    if let Some(why) = &report.job_failed {
        // Not a crash to wait out: the job fails the same way every time it starts.
        hold.phase = Some(Phase::Failed);
        hold.reason = reason::JOB_FAILED;
        hold.message = format!(
            "the job failed: {why}; fix the manifest or its input, then change the spec (for example suspend and resume the job) to start it again"
        );
        hold.event = Some((reason::JOB_FAILED, hold.message.clone()));
        return hold;
    }
    if hold.restart_at.is_some_and(|at| now < at) {
        hold.phase = Some(Phase::BackingOff);
        hold.reason = reason::CRASH_LOOP;
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
            hold.phase = Some(Phase::Failed);
            hold.reason = reason::RESTART_LIMIT;
            hold.message = format!(
                "{why}; stopped after {} restarts (spec.restartPolicy.limit {}): fix the cause, then change the spec (for example suspend and resume the job) to start it again",
                hold.restarts - 1,
                policy.limit.unwrap_or(0)
            );
            hold.event = Some((reason::FAILED, hold.message.clone()));
        } else {
            let at = health::restart_time(now, backoff, hold.restarts);
            hold.restart_at = Some(at);
            hold.phase = Some(Phase::BackingOff);
            hold.reason = reason::CRASH_LOOP;
            hold.message = format!(
                "{why}; the job starts again at {at} (restart {})",
                hold.restarts
            );
            hold.event = Some((reason::CRASH_LOOP, hold.message.clone()));
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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use serde_json::json;

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
                "restartPolicy": {"limit": 2, "backoffSeconds": 10}
            }
        }))
        .expect("a job")
    }

    fn crash_loop() -> health::PodsReport {
        health::PodsReport {
            crash_loop: Some("worker wc-worker-0: exit code 1: bucket missing".into()),
            ..Default::default()
        }
    }

    /// The status a reconcile writes after `hold`, as the next reconcile reads it.
    fn after(hold: &Hold) -> StreamingJobStatus {
        StreamingJobStatus {
            phase: hold.phase,
            message: Some(hold.message.clone()),
            restarts: hold.restarts,
            restart_at: hold.restart_at.map(|t| t.to_string()),
            conditions: hold
                .phase
                .map(|_| Condition {
                    type_: ConditionType::Degraded.as_str().into(),
                    status: "True".into(),
                    reason: hold.reason.into(),
                    message: hold.message.clone(),
                    last_transition_time: Time(Timestamp::now()),
                    observed_generation: Some(2),
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_job_at_fault_fails_at_once_and_stays_failed_until_its_spec_changes() {
        let report = health::PodsReport {
            job_failed: Some("worker w1: spec.pipeline[0].parseJson: not JSON".into()),
            ..Default::default()
        };
        let hold = decide(
            &job(),
            &StreamingJobStatus::default(),
            false,
            false,
            &report,
        );
        assert_eq!(hold.phase, Some(Phase::Failed));
        assert_eq!(hold.reason, reason::JOB_FAILED);
        assert!(hold.message.contains("parseJson"), "{}", hold.message);
        assert_eq!(hold.event.as_ref().map(|e| e.0), Some(reason::JOB_FAILED));
        // The next reconcile (pods gone, nothing reported) keeps it Failed, for the same reason.
        let previous = after(&hold);
        let again = decide(&job(), &previous, false, false, &Default::default());
        assert_eq!(again.phase, Some(Phase::Failed));
        assert_eq!(again.reason, reason::JOB_FAILED);
        assert!(again.event.is_none());
        // A new spec starts it again.
        let changed = decide(&job(), &previous, true, false, &Default::default());
        assert_eq!(changed.phase, None);
    }

    #[test]
    fn a_crash_loop_backs_off_twice_as_long_each_time_then_fails_past_the_limit() {
        let first = decide(
            &job(),
            &StreamingJobStatus::default(),
            false,
            false,
            &crash_loop(),
        );
        assert_eq!(first.phase, Some(Phase::BackingOff));
        assert_eq!(first.reason, reason::CRASH_LOOP);
        assert_eq!(first.restarts, 1);
        assert_eq!(first.event.as_ref().map(|e| e.0), Some(reason::CRASH_LOOP));
        let wait = |h: &Hold| {
            h.restart_at
                .map(|t| t.as_second() - Timestamp::now().as_second())
        };
        assert!(
            wait(&first).is_some_and(|s| (8..=10).contains(&s)),
            "{:?}",
            wait(&first)
        );
        // Within the back-off, the job stays held and nothing new is said.
        let held = decide(&job(), &after(&first), false, false, &Default::default());
        assert_eq!(held.phase, Some(Phase::BackingOff));
        assert!(held.event.is_none());
        assert_eq!(held.restarts, 1);
        // Past it, a new crash loop is the second restart, after twice the wait.
        let mut past = after(&first);
        past.restart_at = Some(Timestamp::now().to_string());
        let second = decide(&job(), &past, false, false, &crash_loop());
        assert_eq!(
            (second.phase, second.restarts),
            (Some(Phase::BackingOff), 2)
        );
        assert!(
            wait(&second).is_some_and(|s| (18..=20).contains(&s)),
            "{:?}",
            wait(&second)
        );
        // The third is past `limit: 2`: Failed, with the limit named.
        let mut past = after(&second);
        past.restart_at = Some(Timestamp::now().to_string());
        let third = decide(&job(), &past, false, false, &crash_loop());
        assert_eq!(third.phase, Some(Phase::Failed));
        assert_eq!(third.reason, reason::RESTART_LIMIT);
        assert!(
            third.message.contains("spec.restartPolicy.limit 2"),
            "{}",
            third.message
        );
        assert_eq!(third.event.as_ref().map(|e| e.0), Some(reason::FAILED));
        let stays = decide(&job(), &after(&third), false, false, &Default::default());
        assert_eq!(
            (stays.phase, stays.reason),
            (Some(Phase::Failed), reason::RESTART_LIMIT)
        );
    }

    #[test]
    fn ten_healthy_minutes_forgive_the_restarts_and_a_suspended_job_is_never_held() {
        let mut previous = StreamingJobStatus {
            restarts: 2,
            restart_at: Some(
                Timestamp::now()
                    .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(601))
                    .expect("time")
                    .to_string(),
            ),
            ..Default::default()
        };
        let hold = decide(&job(), &previous, false, false, &Default::default());
        assert_eq!((hold.phase, hold.restarts), (None, 0));
        previous.restart_at = Some(Timestamp::now().to_string());
        let hold = decide(&job(), &previous, false, false, &Default::default());
        assert_eq!(
            (hold.phase, hold.restarts),
            (None, 2),
            "not yet ten minutes"
        );
        let suspended = decide(
            &job(),
            &StreamingJobStatus::default(),
            false,
            true,
            &crash_loop(),
        );
        assert_eq!(suspended.phase, None);
        assert!(suspended.event.is_none());
    }
}
