//! A deleted job's checkpoint, by `checkpoint.deletionPolicy`: `Retain` (the default) leaves it
//! for a job that resumes from it; `Delete` removes it, and only it.
//!
//! The checkpoint's location is written by the job's author, who may not own what is there, so
//! a deletion is refused unless every one of these holds:
//! - the location is `s3://bucket/prefix` with a prefix (never a whole bucket);
//! - the job names its own credentials (`spec.checkpointCredentials`): the operator's own are
//!   never used for a job's data, nor sent to the endpoint the job names;
//! - the location holds a Sluice checkpoint whose `job.json` records this job's name and uid,
//!   so it was created by this very job (not by an earlier job of the same name, nor another);
//! - then only the checkpoint layout's keys are deleted, never other objects under the prefix.
//!
//! Whatever is refused or fails is said in a Warning event, and the job is let go: a deletion
//! never hangs on a Secret that went first (a namespace being deleted) or an endpoint that does
//! not answer; it retries for [`CLEANUP_DEADLINE`] at most.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use sluice_crds::DeletionPolicy;
use sluice_crds::resource::StreamingJobResource;
use sluice_storage::layout::{self, JobMeta};
use sluice_storage::{S3Settings, S3Store};

use crate::conditions::reason;
use crate::constants::LABEL_JOB;
use crate::controller::{Context, Error};
use crate::events::publish;

/// How long a deletion retries an unreachable store or pods that do not stop, counted from
/// the deletion request; then the job goes and an event says what was left.
pub const CLEANUP_DEADLINE: Duration = Duration::from_secs(120);

/// Whether the job needs the finalizer: only a deletion that has work to do holds the job.
pub fn needs_finalizer(job: &StreamingJobResource) -> bool {
    job.spec.job.checkpoint.as_ref().is_some_and(|c| {
        c.deletion_policy == Some(DeletionPolicy::Delete) && c.uri.starts_with("s3://")
    })
}

/// What to do with the checkpoint found at the job's location.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It is this job's: delete its layout.
    Delete,
    /// Leave it, for this reason (said in an event).
    Leave(String),
}

/// Judges the checkpoint's `job.json` against the job being deleted.
pub fn judge(meta: Option<&JobMeta>, name: &str, uid: &str) -> Verdict {
    let Some(meta) = meta else {
        return Verdict::Leave(
            "there is no Sluice checkpoint there (no job.json): nothing was deleted".into(),
        );
    };
    if meta.job != name {
        return Verdict::Leave(format!(
            "the checkpoint there belongs to job {:?}, not to this one: nothing was deleted",
            meta.job
        ));
    }
    match meta.uid.as_deref() {
        Some(created_by) if created_by == uid => Verdict::Delete,
        Some(created_by) => Verdict::Leave(format!(
            "the checkpoint there was created by another StreamingJob of this name (uid {created_by}), which this one resumed: nothing was deleted; delete it by hand if it is no longer needed"
        )),
        None => Verdict::Leave(
            "the checkpoint there does not record which StreamingJob created it (it was written by an older Sluice or by sluice run): nothing was deleted; delete it by hand if it is no longer needed".into(),
        ),
    }
}

/// Refuses a location without a prefix: a job may not claim a whole bucket.
pub fn check_location(uri: &str) -> Result<(), String> {
    match sluice_storage::parse_s3_uri(uri) {
        Some((_, prefix)) if !prefix.is_empty() => Ok(()),
        Some((bucket, _)) => Err(format!(
            "{uri} is a whole bucket ({bucket}); deletionPolicy Delete needs a prefix of its own, such as s3://{bucket}/jobs/NAME: nothing was deleted"
        )),
        None => Err(format!(
            "{uri} is not an s3:// location: nothing was deleted"
        )),
    }
}

/// On deletion with `deletionPolicy: Delete`: stops the job, then deletes its checkpoint if it
/// is provably this job's, with the job's own credentials. Always lets the job go in the end.
pub async fn cleanup(job: &Arc<StreamingJobResource>, ctx: &Arc<Context>) -> Result<Action, Error> {
    let name = job.name_any();
    let Some(checkpoint) = job.spec.job.checkpoint.clone() else {
        return Ok(Action::await_change());
    };
    let past_deadline = job
        .metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|t| {
            k8s_openapi::jiff::Timestamp::now()
                .duration_since(t.0)
                .try_into()
                .ok()
        })
        .is_some_and(|elapsed: Duration| elapsed > CLEANUP_DEADLINE);
    match delete_checkpoint(job, ctx, &checkpoint).await {
        Ok(Outcome::Deleted) => {
            tracing::info!(job = %name, uri = %checkpoint.uri, "job deleted; checkpoint deleted (deletionPolicy Delete)");
            publish(
                ctx,
                job,
                EventType::Normal,
                reason::CHECKPOINT_DELETED,
                &format!(
                    "deleted the checkpoint at {} (deletionPolicy Delete)",
                    checkpoint.uri
                ),
                "Delete",
            )
            .await;
            Ok(Action::await_change())
        }
        Ok(Outcome::Left(why)) => {
            tracing::warn!(job = %name, uri = %checkpoint.uri, %why, "job deleted; checkpoint left in place");
            publish(
                ctx,
                job,
                EventType::Warning,
                reason::CHECKPOINT_RETAINED,
                &format!("checkpoint {} left in place: {why}", checkpoint.uri),
                "Delete",
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) if past_deadline => {
            let why = format!(
                "{e}; gave up after {} s: the checkpoint at {} may be partly deleted (delete it by hand)",
                CLEANUP_DEADLINE.as_secs(),
                checkpoint.uri
            );
            tracing::warn!(job = %name, %why, "job deleted; checkpoint cleanup abandoned");
            publish(
                ctx,
                job,
                EventType::Warning,
                reason::CHECKPOINT_RETAINED,
                &why,
                "Delete",
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) => Err(e),
    }
}

enum Outcome {
    Deleted,
    Left(String),
}

async fn delete_checkpoint(
    job: &StreamingJobResource,
    ctx: &Context,
    checkpoint: &sluice_crds::CheckpointSpec,
) -> Result<Outcome, Error> {
    let name = job.name_any();
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    if let Err(why) = check_location(&checkpoint.uri) {
        return Ok(Outcome::Left(why));
    }
    let Some(secret_ref) = &job.spec.checkpoint_credentials else {
        return Ok(Outcome::Left(
            "the job names no spec.checkpointCredentials, and the operator never uses its own credentials for a job's data".into(),
        ));
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(secret) = secrets.get_opt(&secret_ref.name).await? else {
        return Ok(Outcome::Left(format!(
            "the Secret {} named by spec.checkpointCredentials is gone (deleted with the namespace?)",
            secret_ref.name
        )));
    };
    let data = secret.data.unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    };
    let (Some(key), Some(secret_key)) = (text("AWS_ACCESS_KEY_ID"), text("AWS_SECRET_ACCESS_KEY"))
    else {
        return Ok(Outcome::Left(format!(
            "the Secret {} has no AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            secret_ref.name
        )));
    };
    // Stop the job first: a master still running would write new checkpoint objects.
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    for role in ["master", "worker"] {
        match sets
            .delete(&format!("{name}-{role}"), &Default::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let running = pods
        .list(&ListParams::default().labels(&format!("{LABEL_JOB}={name}")))
        .await?;
    if !running.items.is_empty() {
        return Err(Error::Cleanup(format!(
            "waiting for {} pods of the job to stop",
            running.items.len()
        )));
    }
    let settings = S3Settings {
        endpoint: checkpoint.endpoint.clone(),
        region: checkpoint.region.clone(),
        path_style: checkpoint.path_style.unwrap_or(false),
        credentials: Some((key, secret_key)),
    };
    let uid = job.metadata.uid.clone().unwrap_or_default();
    // The S3 store blocks on its own runtime: run it on a thread of its own.
    let uri = checkpoint.uri.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = S3Store::open(&uri, &settings).and_then(|store| {
            match judge(layout::read_meta(&store)?.as_ref(), &name, &uid) {
                Verdict::Delete => layout::delete(&store).map(|()| Outcome::Deleted),
                Verdict::Leave(why) => Ok(Outcome::Left(why)),
            }
        });
        let _ = tx.send(result.map_err(|e| e.to_string()));
    });
    rx.await
        .map_err(|_| Error::Cleanup("the cleanup thread died".into()))?
        .map_err(Error::Cleanup)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(job: &str, uid: Option<&str>) -> JobMeta {
        JobMeta {
            format_version: 1,
            job: job.into(),
            uid: uid.map(String::from),
            fingerprint: "f".into(),
            zero_time_ms: 0,
            interval_ms: 1000,
            partitions: 4,
            spec: None,
            legacy_layout: None,
        }
    }

    #[test]
    fn only_the_job_that_created_a_checkpoint_deletes_it() {
        assert_eq!(
            judge(Some(&meta("wc", Some("u1"))), "wc", "u1"),
            Verdict::Delete
        );
        for (found, why) in [
            (None, "no job.json"),
            (Some(meta("other", Some("u1"))), "belongs to job \"other\""),
            (Some(meta("wc", Some("u0"))), "uid u0"),
            (Some(meta("wc", None)), "does not record"),
        ] {
            match judge(found.as_ref(), "wc", "u1") {
                Verdict::Leave(message) => assert!(message.contains(why), "{message}"),
                Verdict::Delete => panic!("deleted {found:?}"),
            }
        }
    }

    #[test]
    fn a_whole_bucket_is_never_a_checkpoint_to_delete() {
        assert!(check_location("s3://ckpt/jobs/wc").is_ok());
        for uri in ["s3://shared", "s3://shared/", "s3://shared//", "file:///x"] {
            assert!(check_location(uri).is_err(), "{uri}");
        }
    }
}
