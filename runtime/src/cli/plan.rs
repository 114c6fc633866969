//! `sluice plan`: what a changed manifest does to the job's checkpoint, change by change.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde_json::Value as Json;
use sluice_crds::upgrade::{UpgradePlan, plan_resources};

use super::validate::print_problems;
use crate::checkpoint::{Checkpointer, open_store};

/// Exit status when a manifest or the checkpoint cannot be read (0, 1 and 2 are verdicts).
const EXIT_UNREADABLE: u8 = 3;

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The manifest the job runs now.
    pub old: PathBuf,
    /// The changed manifest.
    pub new: PathBuf,
    /// The job's checkpoint (e.g. s3://bucket/jobs/wc; endpoint and credentials as for the
    /// new manifest's spec.checkpoint): plan against the spec that wrote it, which is what
    /// the job will resume, rather than against OLD.
    #[arg(long, value_name = "URI")]
    pub checkpoint: Option<String>,
}

pub(crate) fn plan(args: PlanArgs) -> ExitCode {
    match planned(&args) {
        Ok((notes, plan)) => {
            for note in notes {
                println!("note: {note}");
            }
            print!("{}", plan.render());
            ExitCode::from(plan.verdict().exit_code() as u8)
        }
        Err(()) => ExitCode::from(EXIT_UNREADABLE),
    }
}

/// A manifest's spec as JSON, once it is known to be valid; its problems printed otherwise.
fn read(file: &Path) -> Result<(sluice_crds::StreamingJob, Json), ()> {
    let problems = |p: Vec<sluice_crds::Problem>| print_problems(file, &p);
    let text = std::fs::read_to_string(file).map_err(|e| {
        problems(vec![sluice_crds::Problem::new(
            "file",
            format!("cannot read it: {e}"),
        )])
    })?;
    let job = sluice_crds::load(&text).map_err(problems)?;
    let spec = sluice_crds::spec_json(&text).map_err(|p| problems(vec![p]))?;
    Ok((job, spec))
}

fn planned(args: &PlanArgs) -> Result<(Vec<String>, UpgradePlan), ()> {
    let (old_job, mut old) = read(&args.old)?;
    let (new_job, new) = read(&args.new)?;
    let mut notes = Vec::new();
    if let Some(uri) = &args.checkpoint {
        let fail = |what: String| eprintln!("sluice: --checkpoint {uri}: {what}");
        let mut settings = new_job
            .spec
            .checkpoint
            .clone()
            .or_else(|| old_job.spec.checkpoint.clone())
            .unwrap_or(sluice_crds::CheckpointSpec {
                uri: uri.clone(),
                endpoint: None,
                region: None,
                path_style: None,
                interval: None,
                snapshot_every: None,
                retain: None,
                deletion_policy: None,
            });
        settings.uri = uri.clone();
        let store = open_store(&settings).map_err(|e| fail(e.to_string()))?;
        let ckpt = Checkpointer::new(store, 1, 1);
        match ckpt.load_meta().map_err(|e| fail(e.to_string()))? {
            None => notes.push(format!(
                "{uri} holds no checkpoint: the job will start afresh whatever changed"
            )),
            Some(meta) => match meta.spec {
                Some(recorded) => {
                    let recorded_spec: sluice_crds::StreamingJobSpec =
                        serde_json::from_value(recorded.clone()).map_err(|e| {
                            fail(format!(
                                "its job.json holds a spec this sluice cannot read: {e}"
                            ))
                        })?;
                    if recorded_spec != old_job.spec {
                        notes.push(format!(
                            "the checkpoint was written by another spec than {}; planning against the checkpoint's",
                            args.old.display()
                        ));
                        // The job's part from the checkpoint, the deployment from OLD.
                        let mut merged = recorded;
                        if let (Some(m), Some(o)) = (merged.as_object_mut(), old.as_object()) {
                            for f in sluice_crds::DEPLOYMENT_FIELDS {
                                if let Some(v) = o.get(*f) {
                                    m.insert((*f).to_string(), v.clone());
                                }
                            }
                        }
                        old = merged;
                    }
                }
                None => {
                    let fp = [
                        sluice_crds::fingerprint(&old_job.spec),
                        sluice_crds::fingerprint_v1(&old_job.spec),
                    ];
                    if !fp.contains(&meta.fingerprint) {
                        fail(format!(
                            "it was written by another spec than {} (fingerprint {}), before checkpoints recorded their spec: plan against the manifest that wrote it",
                            args.old.display(),
                            meta.fingerprint
                        ));
                        return Err(());
                    }
                    notes.push("the checkpoint was written by an older sluice and does not record its spec: resume it once with OLD unchanged (it then records it) before a change of its sources, pipeline, interval or parallelism".into());
                }
            },
        }
    }
    let plan = plan_resources(&old, &new).map_err(|e| eprintln!("sluice: {e}"))?;
    Ok((notes, plan))
}
