//! What the job's pods say about it: why they cannot start (a missing Secret, an image that
//! cannot be pulled), whether they crash-loop, and which of them restarted or went away since
//! the operator last looked. Pure functions of pod objects, so they are unit-tested here.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;
use sluice_crds::resource::PodObservation;

use sluice_proto::JOB_FAILED;

use crate::conditions::reason;
use crate::constants::LABEL_ROLE;

/// A run shorter than this that ends in an error counts towards a crash loop.
const SHORT_RUN_SECONDS: i64 = 30;
/// Restarts of one container, each after a short failed run, that make a crash loop.
const CRASH_LOOP_RESTARTS: i32 = 2;

/// Why the job cannot run, as a Degraded condition says it.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

/// A restart or a loss, to publish as an event.
#[derive(Clone, Debug, PartialEq)]
pub struct Incident {
    pub reason: &'static str,
    pub message: String,
}

/// Everything read from the pods in one reconcile.
#[derive(Clone, Debug, Default)]
pub struct PodsReport {
    /// Pods that cannot start, and why (first one wins the condition).
    pub problems: Vec<Problem>,
    /// A container failing again and again: what it last said.
    pub crash_loop: Option<String>,
    /// The master stopped because the job itself is at fault (exit code
    /// [`sluice_proto::EXIT_JOB_AT_FAULT`], as `sluice run`): what it said. Starting it again would
    /// fail the same way.
    pub job_failed: Option<String>,
    /// Restarts and losses since `previous`.
    pub incidents: Vec<Incident>,
    /// The pods as seen now, for the next reconcile.
    pub observed: Vec<PodObservation>,
}

fn role(pod: &Pod) -> &str {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_ROLE))
        .map(String::as_str)
        .unwrap_or("")
}

fn restarts(pod: &Pod) -> i32 {
    statuses(pod).map(|c| c.restart_count).sum()
}

fn statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
}

/// Ordinal of a StatefulSet pod (`wc-worker-3` → 3).
fn ordinal(name: &str) -> Option<i32> {
    name.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

/// How the previous run of a container ended, for messages.
fn last_exit(c: &ContainerStatus) -> String {
    match c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
        Some(t) => {
            let mut text = format!("exit code {}", t.exit_code);
            if let Some(reason) = &t.reason {
                text.push_str(&format!(" ({reason})"));
            }
            if let Some(message) = t.message.as_ref().filter(|m| !m.is_empty()) {
                text.push_str(&format!(": {}", message.trim()));
            }
            text
        }
        None => "no exit recorded".into(),
    }
}

/// What a master container said when it stopped because the job is at fault, now or in its
/// last run.
fn job_failure(c: &ContainerStatus) -> Option<String> {
    let now = c.state.as_ref().and_then(|s| s.terminated.as_ref());
    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    let t = now
        .into_iter()
        .chain(last)
        .find(|t| t.exit_code == i32::from(sluice_proto::EXIT_JOB_AT_FAULT))?;
    let said = t.message.as_deref().map(str::trim).unwrap_or_default();
    // The termination message is the log's tail: the job's own account is its last line.
    // Text or JSON lines (`--log-format`): their messages.
    let messages: Vec<_> = said.lines().map(sluice_proto::logs::message_of).collect();
    let line = messages
        .iter()
        .rev()
        .find(|l| l.contains(JOB_FAILED))
        .or_else(|| messages.last())
        .map_or(
            "the master stopped with exit code 2 (the job is at fault)",
            |l| l,
        );
    let text = line
        .split_once(JOB_FAILED)
        .map_or(line, |(_, why)| why)
        .trim();
    Some(text.to_string())
}

/// A container that keeps failing soon after it starts.
fn crash_looping(c: &ContainerStatus) -> bool {
    let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) else {
        return false;
    };
    let short = match (&t.started_at, &t.finished_at) {
        (Some(start), Some(end)) => end.0.as_second() - start.0.as_second() < SHORT_RUN_SECONDS,
        _ => false,
    };
    c.restart_count >= CRASH_LOOP_RESTARTS && t.exit_code != 0 && short
}

/// Reads the job's pods against what the operator saw last time. `workers_desired` tells a
/// worker lost from one removed by a scale-down.
pub fn inspect(pods: &[Pod], previous: &[PodObservation], workers_desired: i32) -> PodsReport {
    let mut report = PodsReport::default();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let count = restarts(pod);
        let role = role(pod);
        for c in statuses(pod) {
            let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
            if let Some(w) = waiting {
                let reason = w.reason.as_deref().unwrap_or("");
                let message = w.message.clone().unwrap_or_default();
                match reason {
                    "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" => {
                        report.problems.push(Problem {
                            reason: reason::IMAGE_PULL_FAILED,
                            message: format!(
                                "pod {name} cannot get image {}: {reason} {message}; check spec.image (and spec.podTemplate.imagePullSecrets for a private registry)",
                                c.image
                            ),
                        })
                    }
                    "CreateContainerConfigError" => report.problems.push(Problem {
                        reason: reason::POD_CONFIG_ERROR,
                        message: format!("pod {name} cannot start: {message}"),
                    }),
                    _ => {}
                }
            }
            if role == "master" && report.job_failed.is_none() {
                report.job_failed = job_failure(c);
            }
            if report.crash_loop.is_none() && crash_looping(c) {
                report.crash_loop = Some(format!(
                    "{role} pod {name} failed {} times soon after starting; last run: {}",
                    c.restart_count,
                    last_exit(c)
                ));
            }
        }
        let before = previous.iter().find(|p| p.name == name);
        let why = match before {
            Some(b) if b.uid != uid => Some(format!("pod {name} was replaced")),
            Some(b) if count > b.restarts => Some(format!(
                "pod {name} restarted ({})",
                statuses(pod)
                    .map(last_exit)
                    .next()
                    .unwrap_or_else(|| "no exit recorded".into())
            )),
            _ => None,
        };
        if let Some(message) = why {
            report.incidents.push(Incident {
                reason: if role == "master" {
                    reason::MASTER_RESTARTED
                } else {
                    reason::WORKER_LOST
                },
                message,
            });
        }
        report.observed.push(PodObservation {
            name,
            uid,
            restarts: count,
        });
    }
    for gone in previous
        .iter()
        .filter(|p| !report.observed.iter().any(|o| o.name == p.name))
    {
        let is_worker = gone.name.contains("-worker-");
        let scaled_away = ordinal(&gone.name).is_some_and(|n| n >= workers_desired);
        if is_worker && !scaled_away {
            report.incidents.push(Incident {
                reason: reason::WORKER_LOST,
                message: format!(
                    "pod {} disappeared; its StatefulSet recreates it",
                    gone.name
                ),
            });
        }
    }
    report.observed.sort_by(|a, b| a.name.cmp(&b.name));
    report
}

/// When a job backing off for the `restarts`-th time starts again: `backoff` doubled per
/// restart, capped at an hour.
pub fn restart_time(now: Timestamp, backoff_seconds: i64, restarts: i64) -> Timestamp {
    let doublings = (restarts - 1).clamp(0, 20) as u32;
    let delay = backoff_seconds
        .max(1)
        .saturating_mul(1i64 << doublings)
        .min(3600);
    now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(delay))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, uid: &str, role: &str, container: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": uid, "labels": {LABEL_ROLE: role}},
            "status": {"containerStatuses": [container]},
        }))
        .expect("a pod")
    }

    fn running(restarts: i32) -> serde_json::Value {
        json!({"name": "c", "image": "sluice", "imageID": "", "ready": true, "restartCount": restarts,
               "state": {"running": {"startedAt": "2026-11-27T10:00:00Z"}}})
    }

    #[test]
    fn image_and_secret_problems_name_the_pod_and_the_fix() {
        let pull = pod(
            "wc-master-0",
            "u1",
            "master",
            json!({"name": "c", "image": "nope:1", "imageID": "", "ready": false, "restartCount": 0,
                   "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}),
        );
        let secret = pod(
            "wc-worker-0",
            "u2",
            "worker",
            json!({"name": "c", "image": "sluice", "imageID": "", "ready": false, "restartCount": 0,
                   "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"s3\" not found"}}}),
        );
        let r = inspect(&[pull, secret], &[], 1);
        assert_eq!(r.problems[0].reason, "ImagePullFailed");
        assert!(r.problems[0].message.contains("nope:1"));
        assert!(r.problems[0].message.contains("spec.image"));
        assert_eq!(r.problems[1].reason, "PodConfigError");
        assert!(r.problems[1].message.contains("secret \"s3\" not found"));
        assert!(r.crash_loop.is_none());
    }

    #[test]
    fn short_failed_runs_are_a_crash_loop_and_long_ones_are_not() {
        let exited = |restarts: i32, started: &str| {
            json!({"name": "c", "image": "sluice", "imageID": "", "ready": false, "restartCount": restarts,
                   "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                   "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "bucket missing",
                       "startedAt": started, "finishedAt": "2026-11-27T10:00:05Z"}}})
        };
        let looping = pod(
            "wc-master-0",
            "u",
            "master",
            exited(3, "2026-11-27T10:00:04Z"),
        );
        let r = inspect(&[looping], &[], 2);
        let message = r.crash_loop.expect("a crash loop");
        assert!(message.contains("exit code 1"), "{message}");
        assert!(r.job_failed.is_none());
        assert!(message.contains("bucket missing"), "{message}");
        // Killed after running for an hour, twice: recoveries, not a loop.
        let killed = pod(
            "wc-master-0",
            "u",
            "master",
            exited(2, "2026-11-27T09:00:00Z"),
        );
        assert!(inspect(&[killed], &[], 2).crash_loop.is_none());
        let once = pod(
            "wc-master-0",
            "u",
            "master",
            exited(1, "2026-11-27T10:00:04Z"),
        );
        assert!(inspect(&[once], &[], 2).crash_loop.is_none());
    }

    #[test]
    fn a_master_that_exits_2_failed_the_job_at_once() {
        let log = "INFO batch 3\nERROR the job failed: worker w1: spec.pipeline[0].parseJson: a text of 12 bytes is not JSON\n";
        let master = pod(
            "wc-master-0",
            "u",
            "master",
            json!({"name": "c", "image": "sluice", "imageID": "", "ready": false, "restartCount": 1,
                   "state": {"running": {"startedAt": "2026-11-27T10:00:06Z"}},
                   "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": log,
                       "startedAt": "2026-11-27T10:00:00Z", "finishedAt": "2026-11-27T10:00:05Z"}}}),
        );
        let r = inspect(&[master], &[], 2);
        assert_eq!(
            r.job_failed.as_deref(),
            Some("worker w1: spec.pipeline[0].parseJson: a text of 12 bytes is not JSON")
        );
        // The same in JSON logs (`--log-format json`).
        let json_log = concat!(
            r#"{"timestamp":"2026-11-27T10:00:04Z","level":"INFO","fields":{"message":"batch 3"}}"#,
            "\n",
            r#"{"timestamp":"2026-11-27T10:00:05Z","level":"ERROR","fields":{"message":"the job failed: a record was refused"}}"#,
        );
        let master = pod(
            "wc-master-0",
            "u",
            "master",
            json!({"name": "c", "image": "sluice", "imageID": "", "ready": false, "restartCount": 1,
                   "state": {"terminated": {"exitCode": 2, "reason": "Error", "message": json_log}}}),
        );
        assert_eq!(
            inspect(&[master], &[], 2).job_failed.as_deref(),
            Some("a record was refused")
        );
        // A worker's exit code says nothing about the job.
        let worker = pod(
            "wc-worker-0",
            "w",
            "worker",
            json!({"name": "c", "image": "sluice", "imageID": "", "ready": false, "restartCount": 1,
                   "state": {"terminated": {"exitCode": 2, "reason": "Error", "message": "x"}}}),
        );
        assert!(inspect(&[worker], &[], 2).job_failed.is_none());
    }

    #[test]
    fn restarts_replacements_and_losses_become_incidents() {
        let seen = |name: &str, uid: &str, restarts| PodObservation {
            name: name.into(),
            uid: uid.into(),
            restarts,
        };
        let previous = vec![
            seen("wc-master-0", "m1", 0),
            seen("wc-worker-0", "w0", 0),
            seen("wc-worker-1", "w1", 0),
            seen("wc-worker-2", "w2", 0),
            seen("wc-worker-3", "w3", 0),
        ];
        let pods = [
            pod("wc-master-0", "m1", "master", running(1)),
            pod("wc-worker-0", "w0-new", "worker", running(0)),
            pod("wc-worker-1", "w1", "worker", running(0)),
        ];
        // Desired 3: worker-2 is lost, worker-3 was scaled away.
        let r = inspect(&pods, &previous, 3);
        let reasons: Vec<_> = r
            .incidents
            .iter()
            .map(|i| (i.reason, i.message.clone()))
            .collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert_eq!(reasons[0].0, "MasterRestarted");
        assert!(reasons[1].1.contains("wc-worker-0 was replaced"));
        assert!(reasons[2].1.contains("wc-worker-2 disappeared"));
        assert_eq!(r.observed.len(), 3);
        // Seen again unchanged: nothing new.
        assert!(inspect(&pods, &r.observed, 3).incidents.is_empty());
    }

    #[test]
    fn back_off_doubles_and_is_capped() {
        let now = Timestamp::from_second(1_000_000).expect("time");
        let after = |n| restart_time(now, 10, n).as_second() - now.as_second();
        assert_eq!((after(1), after(2), after(3)), (10, 20, 40));
        assert_eq!(after(30), 3600);
    }
}
