//! The job's status: from its StatefulSets and from the master's Status RPC, with standard
//! conditions whose `lastTransitionTime` moves only when their status changes.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use sluice_crds::resource::{
    BatchStatus, CheckpointStatus, Phase, RecoveryTally, StreamingJobStatus,
};
use sluice_proto::v1 as pb;
use tonic::metadata::MetadataValue;

use crate::conditions::{ConditionType, condition, reason};

/// What the master says of the job, when it answers.
#[derive(Clone, Debug, Default)]
pub struct MasterView {
    pub state: pb::MasterState,
    pub last_completed_batch: u64,
    pub last_checkpoint_batch: u64,
    pub checkpoint_uri: String,
    /// Recoveries: the master's own count of rollbacks as it answers; the controller replaces
    /// it with the job's total (`tally_recoveries`) before the status is computed.
    pub recoveries: u64,
    pub message: String,
    /// The newest committed batch's figures.
    pub last_batch: Option<pb::BatchFigures>,
    /// The last committed batches' figures, oldest first (the autoscaler's input).
    pub recent: Vec<pb::BatchFigures>,
    pub partitions: u32,
    pub interval_ms: u64,
}

/// How long the operator waits for a master's answer, connection included.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks the master at `address` (`ip:port`) for its status, with the job's token; `None` when
/// it does not answer within [`ASK_TIMEOUT`]. A master whose process is frozen (a node that
/// stopped, SIGSTOP) accepts the TCP connection and never speaks: without the bound, the
/// reconcile of its job would wait for ever, and nothing else would happen to that job.
pub async fn ask_master(
    address: &str,
    token: &str,
    tls: Option<&sluice_proto::Tls>,
) -> Option<MasterView> {
    tokio::time::timeout(ASK_TIMEOUT, ask_master_unbounded(address, token, tls))
        .await
        .ok()
        .flatten()
}

async fn ask_master_unbounded(
    address: &str,
    token: &str,
    tls: Option<&sluice_proto::Tls>,
) -> Option<MasterView> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{address}"))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.client()).ok()?;
    }
    let channel = endpoint.connect().await.ok()?;
    let header: MetadataValue<_> = format!("Bearer {token}").parse().ok()?;
    let mut client = pb::master_client::MasterClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", header.clone());
            Ok(req)
        },
    );
    let reply = client.status(pb::StatusRequest {}).await.ok()?.into_inner();
    Some(MasterView {
        state: reply.state(),
        last_completed_batch: reply.last_completed_batch,
        last_checkpoint_batch: reply.last_checkpoint_batch,
        checkpoint_uri: reply.checkpoint_uri,
        recoveries: reply.recoveries,
        message: reply.message,
        last_batch: reply.last_batch,
        recent: reply.recent,
        partitions: reply.partitions,
        interval_ms: reply.interval_ms,
    })
}

/// Inputs of a status computation.
pub struct Observed<'a> {
    pub generation: Option<i64>,
    pub suspended: bool,
    pub master_ready: bool,
    pub workers_ready: i32,
    pub workers_desired: i32,
    pub master: Option<&'a MasterView>,
    /// The status as it was: its conditions keep their transition times, and what the master
    /// said last stays while it does not answer.
    pub previous: &'a StreamingJobStatus,
    /// The restart policy holding the pods at zero: its phase, the reason and why.
    pub hold: Option<(Phase, &'static str, &'a str)>,
    /// Why pods cannot start.
    pub problems: &'a [crate::health::Problem],
}

/// The longest message the status carries (the API server takes 32 KiB per condition message,
/// but a status is read by people, and a pod's last log lines may be long).
pub const MESSAGE_LIMIT: usize = 1024;

/// A message fit for the status: control characters (a log's colours, stray bytes) replaced,
/// and cut to [`MESSAGE_LIMIT`] bytes.
pub fn scrub(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
        .collect();
    sluice_crds::shorten(&clean, MESSAGE_LIMIT)
}

/// The master's state in the words the status shows when the master says nothing more.
fn state_words(state: pb::MasterState) -> &'static str {
    match state {
        pb::MasterState::Unspecified => "",
        pb::MasterState::Starting => "starting",
        pb::MasterState::Running => "running",
        pb::MasterState::Stalled => "stalled",
        pb::MasterState::Recovering => "recovering",
        pb::MasterState::CheckpointFailing => "checkpoint failing",
        pb::MasterState::Failed => "failed",
        pb::MasterState::Stopped => "stopped",
    }
}

/// A duration as people read it in a column: `35ms`, `1.2s`, `4m05s`.
pub fn short_duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
    }
}

/// The status's account of one batch.
fn batch_status(b: &pb::BatchFigures) -> BatchStatus {
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    BatchStatus {
        batch: int(b.batch),
        time: i64::try_from(b.time_ms)
            .ok()
            .and_then(|ms| k8s_openapi::jiff::Timestamp::from_millisecond(ms).ok())
            .map(|t| t.to_string())
            .unwrap_or_default(),
        records: int(b.records),
        input_rate: int(b.input_rate),
        processing_time: short_duration(b.processing_ms),
        scheduling_delay: short_duration(b.scheduling_delay_ms),
        total_delay: short_duration(b.total_delay_ms),
    }
}

/// The status the observations make, on top of the previous one. The fields that the
/// restart policy and the pods' history own (`restarts`, `restartAt`, `pods`, `fingerprint`,
/// the recovery tally) stay as they were; the controller sets them.
pub fn compute(o: &Observed<'_>) -> StreamingJobStatus {
    let master_state = o.master.map_or(pb::MasterState::Unspecified, |m| m.state);
    let checkpoint_failing = master_state == pb::MasterState::CheckpointFailing;
    let recovering = master_state == pb::MasterState::Recovering;
    // Waiting long on a slow worker: still running, but not making progress.
    let stalled = master_state == pb::MasterState::Stalled;
    let running = master_state == pb::MasterState::Running;
    let workers_ok = o.workers_ready >= o.workers_desired;
    let phase = if o.suspended {
        Phase::Suspended
    } else if let Some((held, _, _)) = o.hold {
        held
    } else if recovering {
        Phase::Recovering
    } else if o.master_ready && workers_ok && (running || stalled) {
        Phase::Running
    } else {
        Phase::Pending
    };
    let g = o.generation;
    let p = &o.previous.conditions;
    let progressing = running;
    let problem = o.problems.first().filter(|_| phase != Phase::Running);
    let degraded =
        checkpoint_failing || recovering || stalled || o.hold.is_some() || problem.is_some();
    let master_message = || o.master.map(|m| m.message.clone()).unwrap_or_default();
    let (degraded_reason, degraded_message) = match (o.hold, problem) {
        (Some((_, reason, why)), _) => (reason, why.to_string()),
        (None, Some(p)) => (p.reason, p.message.clone()),
        (None, None) if checkpoint_failing => (reason::CHECKPOINT_FAILING, master_message()),
        (None, None) if recovering => (reason::RECOVERING, master_message()),
        (None, None) if stalled => (reason::STALLED, master_message()),
        (None, None) => (reason::HEALTHY, String::new()),
    };
    let conditions = vec![
        condition(
            p,
            ConditionType::Ready,
            phase == Phase::Running,
            phase.as_str(),
            "",
            g,
        ),
        condition(
            p,
            ConditionType::MasterReady,
            o.master_ready,
            if o.master_ready {
                reason::POD_READY
            } else {
                reason::POD_NOT_READY
            },
            "",
            g,
        ),
        condition(
            p,
            ConditionType::WorkersReady,
            workers_ok,
            if workers_ok {
                reason::ALL_READY
            } else {
                reason::WAITING
            },
            &format!("{} of {} ready", o.workers_ready, o.workers_desired),
            g,
        ),
        condition(
            p,
            ConditionType::Progressing,
            progressing,
            if progressing {
                reason::BATCHES_COMMITTING
            } else if stalled {
                reason::STALLED
            } else {
                reason::NOT_RUNNING
            },
            "",
            g,
        ),
        condition(
            p,
            ConditionType::Degraded,
            degraded,
            degraded_reason,
            &degraded_message,
            g,
        ),
    ];
    // Conditions computed elsewhere (the last upgrade's) stay as they were.
    let mut conditions = conditions;
    conditions.extend(
        p.iter()
            .filter(|c| !conditions.iter().any(|n| n.type_ == c.type_))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let mut status = StreamingJobStatus {
        phase: Some(phase),
        observed_generation: g,
        workers_ready: o.workers_ready,
        workers_desired: o.workers_desired,
        workers: Some(format!("{}/{}", o.workers_ready, o.workers_desired)),
        conditions,
        ..o.previous.clone()
    };
    if let Some(m) = o.master {
        if let Some(b) = &m.last_batch {
            status.last_batch = Some(batch_status(b));
        }
        status.last_completed_batch =
            Some(i64::try_from(m.last_completed_batch).unwrap_or(i64::MAX));
        status.recoveries = i64::try_from(m.recoveries).unwrap_or(i64::MAX);
        if m.last_checkpoint_batch > 0 {
            status.last_checkpoint = Some(CheckpointStatus {
                batch: i64::try_from(m.last_checkpoint_batch).unwrap_or(i64::MAX),
                location: m.checkpoint_uri.clone(),
            });
        }
        status.message = Some(scrub(if m.message.is_empty() {
            state_words(m.state)
        } else {
            &m.message
        }));
    }
    // The restart policy's or the pods' account of why the job does not run wins over the
    // master's (which is silent while it is down).
    if (o.hold.is_some() || problem.is_some()) && !degraded_message.is_empty() {
        status.message = Some(scrub(&degraded_message));
    }
    status
}

/// The status of a job whose spec is refused: phase Blocked, Degraded for `reason` with
/// `message`, and the rest as it was.
pub fn blocked(
    previous: &StreamingJobStatus,
    generation: Option<i64>,
    why: &str,
    message: &str,
) -> StreamingJobStatus {
    let p = &previous.conditions;
    let mut conditions: Vec<Condition> = p
        .iter()
        .filter(|c| {
            c.type_ != ConditionType::Degraded.as_str() && c.type_ != ConditionType::Ready.as_str()
        })
        .cloned()
        .collect();
    conditions.push(condition(
        p,
        ConditionType::Degraded,
        true,
        why,
        message,
        generation,
    ));
    // Ready says why too (InvalidSpec, NoCheckpoint, UpgradeRefused, NameConflict), so that
    // `kubectl wait --for=condition=Ready` users see the cause where they look.
    conditions.push(condition(
        p,
        ConditionType::Ready,
        false,
        why,
        message,
        generation,
    ));
    StreamingJobStatus {
        phase: Some(Phase::Blocked),
        message: Some(scrub(message)),
        conditions,
        observed_generation: generation,
        ..previous.clone()
    }
}

/// The job's recoveries over its life. A master pod counts its own from zero, so a new master
/// pod (a new `master_uid`) starts a new term whose base is the total so far; `current` is the
/// present master's count, `None` while it does not answer (the total then stays as it was).
pub fn tally_recoveries(
    previous: &StreamingJobStatus,
    master_uid: Option<&str>,
    current: Option<u64>,
) -> (i64, Option<RecoveryTally>) {
    let (Some(uid), Some(current)) = (master_uid, current) else {
        return (previous.recoveries, previous.recovery_tally.clone());
    };
    let current = i64::try_from(current).unwrap_or(i64::MAX);
    let tally = match &previous.recovery_tally {
        Some(t) if t.master_uid == uid => t.clone(),
        _ => RecoveryTally {
            master_uid: uid.to_string(),
            earlier: previous.recoveries,
        },
    };
    (tally.earlier.saturating_add(current), Some(tally))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::find;

    #[test]
    fn messages_are_scrubbed_and_bounded() {
        let noisy = format!("\u{1b}[31mERROR\u{1b}[0m {}", "x".repeat(5000));
        let m = scrub(&noisy);
        assert!(m.len() <= MESSAGE_LIMIT, "{}", m.len());
        assert!(!m.contains('\u{1b}'));
        assert_eq!(scrub("line one\nline two"), "line one\nline two");
    }

    #[test]
    fn recoveries_add_up_across_master_pods() {
        let mut status = StreamingJobStatus::default();
        let mut step = |uid: Option<&str>, current: Option<u64>| {
            let (total, tally) = tally_recoveries(&status, uid, current);
            status.recoveries = total;
            status.recovery_tally = tally;
            total
        };
        assert_eq!(step(Some("a"), Some(0)), 0);
        assert_eq!(step(Some("a"), Some(2)), 2, "the first master's own count");
        assert_eq!(
            step(None, None),
            2,
            "no master (suspended): the total stays"
        );
        assert_eq!(step(Some("b"), None), 2, "a new master not answering yet");
        assert_eq!(
            step(Some("b"), Some(0)),
            2,
            "a new master counts from zero on top"
        );
        assert_eq!(step(Some("b"), Some(1)), 3);
        assert_eq!(step(Some("c"), Some(1)), 4);
        assert_eq!(status.recovery_tally.as_ref().map(|t| t.earlier), Some(3));
    }

    fn observed<'a>(
        master: Option<&'a MasterView>,
        previous: &'a StreamingJobStatus,
    ) -> Observed<'a> {
        Observed {
            generation: Some(3),
            suspended: false,
            master_ready: true,
            workers_ready: 2,
            workers_desired: 2,
            master,
            previous,
            hold: None,
            problems: &[],
        }
    }

    #[test]
    fn running_needs_a_running_master_and_all_workers() {
        let running = MasterView {
            state: pb::MasterState::Running,
            last_completed_batch: 7,
            ..Default::default()
        };
        let none = StreamingJobStatus::default();
        let status = compute(&observed(Some(&running), &none));
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!(status.last_completed_batch, Some(7));
        // The master stops answering: Pending, and what it said last stays.
        let status = compute(&observed(None, &status));
        assert_eq!(status.phase, Some(Phase::Pending));
        assert_eq!(status.last_completed_batch, Some(7));
    }

    #[test]
    fn the_newest_batch_shows_in_the_columns_kubectl_prints() {
        let running = MasterView {
            state: pb::MasterState::Running,
            last_completed_batch: 12,
            last_batch: Some(pb::BatchFigures {
                batch: 12,
                time_ms: 1_764_590_400_200,
                records: 400,
                processing_ms: 35,
                scheduling_delay_ms: 1_250,
                total_delay_ms: 245_000,
                input_rate: 2000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let status = compute(&observed(Some(&running), &StreamingJobStatus::default()));
        assert_eq!(status.workers.as_deref(), Some("2/2"));
        let b = status.last_batch.clone().expect("the newest batch");
        assert_eq!((b.batch, b.records, b.input_rate), (12, 400, 2000), "{b:?}");
        assert_eq!(b.time, "2025-12-01T12:00:00.2Z");
        assert_eq!(
            (
                b.processing_time.as_str(),
                b.scheduling_delay.as_str(),
                b.total_delay.as_str()
            ),
            ("35ms", "1.2s", "4m05s")
        );
        // The master is silent: the figures it gave last stay.
        let later = compute(&observed(None, &status));
        assert_eq!(later.last_batch, Some(b));
    }

    #[test]
    fn checkpoint_failing_is_degraded_with_the_masters_message() {
        let failing = MasterView {
            state: pb::MasterState::CheckpointFailing,
            message: "bucket ckpt at http://s3: unreachable".into(),
            ..Default::default()
        };
        let status = compute(&observed(Some(&failing), &StreamingJobStatus::default()));
        let degraded = find(&status.conditions, ConditionType::Degraded).expect("Degraded");
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, reason::CHECKPOINT_FAILING);
        assert!(degraded.message.contains("unreachable"));
    }

    #[test]
    fn a_stalled_job_runs_but_says_what_it_waits_on() {
        let stalled = MasterView {
            state: pb::MasterState::Stalled,
            message: "waiting 12s on word-totals-worker-1 for stage 2 of 3 of batch 40".into(),
            ..Default::default()
        };
        let status = compute(&observed(Some(&stalled), &StreamingJobStatus::default()));
        assert_eq!(status.phase, Some(Phase::Running));
        let of = |kind| find(&status.conditions, kind).expect("condition");
        assert_eq!(of(ConditionType::Progressing).status, "False");
        assert_eq!(of(ConditionType::Progressing).reason, reason::STALLED);
        assert_eq!(of(ConditionType::Degraded).reason, reason::STALLED);
        assert!(
            status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("word-totals-worker-1"))
        );
    }

    #[test]
    fn transition_times_stay_while_the_status_does() {
        let running = MasterView {
            state: pb::MasterState::Running,
            ..Default::default()
        };
        let first = compute(&observed(Some(&running), &StreamingJobStatus::default()));
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = compute(&observed(Some(&running), &first));
        assert_eq!(first.conditions, second.conditions);
    }

    #[test]
    fn a_blocked_job_keeps_what_it_knew_and_clears_what_it_no_longer_holds() {
        let running = MasterView {
            state: pb::MasterState::Running,
            last_completed_batch: 9,
            ..Default::default()
        };
        let mut before = compute(&observed(Some(&running), &StreamingJobStatus::default()));
        before.fingerprint = Some("abc".into());
        let status = blocked(
            &before,
            Some(4),
            reason::NO_CHECKPOINT,
            "spec.checkpoint: needed",
        );
        assert_eq!(status.phase, Some(Phase::Blocked));
        assert_eq!(status.fingerprint.as_deref(), Some("abc"));
        assert_eq!(status.last_completed_batch, Some(9));
        let ready = find(&status.conditions, ConditionType::Ready).expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason::NO_CHECKPOINT)
        );
        assert!(
            find(&status.conditions, ConditionType::Degraded)
                .is_some_and(|c| c.reason == reason::NO_CHECKPOINT)
        );
        // Written as a merge patch, every field is present: an absent one clears the old value.
        let body = serde_json::to_value(StreamingJobStatus::default()).expect("json");
        assert!(body.get("restartAt").is_some_and(|v| v.is_null()), "{body}");
        assert!(body.get("pods").is_some_and(|v| v.is_array()), "{body}");
    }
}
