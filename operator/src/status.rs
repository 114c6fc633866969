//! The job's status: from its StatefulSets and from the master's Status RPC, with standard
//! conditions whose `lastTransitionTime` moves only when their status changes.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use sluice_crds::resource::{RecoveryTally, StreamingJobStatus};
use sluice_proto::v1 as pb;
use tonic::metadata::MetadataValue;

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
}

/// Asks the master at `address` (`ip:port`) for its status, with the job's token.
pub async fn ask_master(
    address: &str,
    token: &str,
    tls: Option<&sluice::rpc::Tls>,
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
    /// Conditions currently in the status, to keep their transition times.
    pub previous: &'a [Condition],
    /// The restart policy holding the pods at zero: its phase, the reason and why.
    pub hold: Option<(&'static str, &'static str, &'a str)>,
    /// Why pods cannot start.
    pub problems: &'a [crate::health::Problem],
}

/// A condition whose `lastTransitionTime` stays from `previous` while its status does.
pub(crate) fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: scrub(message),
        last_transition_time: since,
        observed_generation: generation,
    }
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
    sluice::error::shorten(&clean, MESSAGE_LIMIT)
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

/// The phase and the status patch body.
pub fn compute(o: &Observed<'_>) -> (String, Value) {
    let master_state = o.master.map_or(pb::MasterState::Unspecified, |m| m.state);
    let checkpoint_failing = master_state == pb::MasterState::CheckpointFailing;
    let recovering = master_state == pb::MasterState::Recovering;
    // Waiting long on a slow worker: still running, but not making progress.
    let stalled = master_state == pb::MasterState::Stalled;
    let running = master_state == pb::MasterState::Running;
    let workers_ok = o.workers_ready >= o.workers_desired;
    let phase = if o.suspended {
        "Suspended"
    } else if let Some((held, _, _)) = o.hold {
        held
    } else if recovering {
        "Recovering"
    } else if o.master_ready && workers_ok && (running || stalled) {
        "Running"
    } else {
        "Pending"
    };
    let g = o.generation;
    let p = o.previous;
    let progressing = running;
    let problem = o.problems.first().filter(|_| phase != "Running");
    let degraded =
        checkpoint_failing || recovering || stalled || o.hold.is_some() || problem.is_some();
    let master_message = || o.master.map(|m| m.message.clone()).unwrap_or_default();
    let (degraded_reason, degraded_message) = match (o.hold, problem) {
        (Some((_, reason, why)), _) => (reason, why.to_string()),
        (None, Some(p)) => (p.reason, p.message.clone()),
        (None, None) if checkpoint_failing => ("CheckpointFailing", master_message()),
        (None, None) if recovering => ("Recovering", master_message()),
        (None, None) if stalled => ("Stalled", master_message()),
        (None, None) => ("Healthy", String::new()),
    };
    let conditions = vec![
        condition(
            p,
            "Ready",
            phase == "Running",
            if phase == "Running" { "Running" } else { phase },
            "",
            g,
        ),
        condition(
            p,
            "MasterReady",
            o.master_ready,
            if o.master_ready {
                "PodReady"
            } else {
                "PodNotReady"
            },
            "",
            g,
        ),
        condition(
            p,
            "WorkersReady",
            workers_ok,
            if workers_ok { "AllReady" } else { "Waiting" },
            &format!("{} of {} ready", o.workers_ready, o.workers_desired),
            g,
        ),
        condition(
            p,
            "Progressing",
            progressing,
            if progressing {
                "BatchesCommitting"
            } else if stalled {
                "Stalled"
            } else {
                "NotRunning"
            },
            "",
            g,
        ),
        condition(
            p,
            "Degraded",
            degraded,
            degraded_reason,
            &degraded_message,
            g,
        ),
    ];
    let mut status = json!({
        "phase": phase,
        "observedGeneration": g,
        "workersReady": o.workers_ready,
        "workersDesired": o.workers_desired,
        "conditions": conditions,
    });
    if let Some(m) = o.master {
        status["lastCompletedBatch"] = json!(m.last_completed_batch);
        status["recoveries"] = json!(m.recoveries);
        if m.last_checkpoint_batch > 0 {
            status["lastCheckpoint"] =
                json!({"batch": m.last_checkpoint_batch, "location": m.checkpoint_uri});
        }
        status["message"] = json!(scrub(if m.message.is_empty() {
            state_words(m.state)
        } else {
            &m.message
        }));
    }
    // The restart policy's or the pods' account of why the job does not run wins over the
    // master's (which is silent while it is down).
    if (o.hold.is_some() || problem.is_some()) && !degraded_message.is_empty() {
        status["message"] = json!(scrub(&degraded_message));
    }
    (phase.to_string(), json!({ "status": status }))
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
    #[test]
    fn messages_are_scrubbed_and_bounded() {
        let noisy = format!("\u{1b}[31mERROR\u{1b}[0m {}", "x".repeat(5000));
        let m = super::scrub(&noisy);
        assert!(m.len() <= super::MESSAGE_LIMIT, "{}", m.len());
        assert!(!m.contains('\u{1b}'));
        assert_eq!(super::scrub("line one\nline two"), "line one\nline two");
    }

    use super::*;

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

    fn observed<'a>(master: Option<&'a MasterView>, previous: &'a [Condition]) -> Observed<'a> {
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
        let (phase, body) = compute(&observed(Some(&running), &[]));
        assert_eq!(phase, "Running");
        assert_eq!(body["status"]["lastCompletedBatch"], 7);
        let (phase, _) = compute(&observed(None, &[]));
        assert_eq!(phase, "Pending");
    }

    #[test]
    fn checkpoint_failing_is_degraded_with_the_masters_message() {
        let failing = MasterView {
            state: pb::MasterState::CheckpointFailing,
            message: "bucket ckpt at http://s3: unreachable".into(),
            ..Default::default()
        };
        let (_, body) = compute(&observed(Some(&failing), &[]));
        let degraded = body["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == "Degraded")
            .cloned()
            .expect("Degraded");
        assert_eq!(degraded["status"], "True");
        assert_eq!(degraded["reason"], "CheckpointFailing");
        assert!(
            degraded["message"]
                .as_str()
                .expect("message")
                .contains("unreachable")
        );
    }

    #[test]
    fn a_stalled_job_runs_but_says_what_it_waits_on() {
        let stalled = MasterView {
            state: pb::MasterState::Stalled,
            message: "waiting 12s on word-totals-worker-1 for stage 2 of 3 of batch 40".into(),
            ..Default::default()
        };
        let (phase, body) = compute(&observed(Some(&stalled), &[]));
        assert_eq!(phase, "Running");
        let conditions = body["status"]["conditions"].as_array().expect("conditions");
        let of = |kind: &str| {
            conditions
                .iter()
                .find(|c| c["type"] == kind)
                .cloned()
                .expect("condition")
        };
        assert_eq!(of("Progressing")["status"], "False");
        assert_eq!(of("Progressing")["reason"], "Stalled");
        assert_eq!(of("Degraded")["reason"], "Stalled");
        assert!(
            body["status"]["message"]
                .as_str()
                .expect("message")
                .contains("word-totals-worker-1")
        );
    }

    #[test]
    fn transition_times_stay_while_the_status_does() {
        let running = MasterView {
            state: pb::MasterState::Running,
            ..Default::default()
        };
        let (_, first) = compute(&observed(Some(&running), &[]));
        let previous: Vec<Condition> =
            serde_json::from_value(first["status"]["conditions"].clone()).expect("conditions");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let (_, second) = compute(&observed(Some(&running), &previous));
        assert_eq!(
            first["status"]["conditions"],
            second["status"]["conditions"]
        );
    }
}
