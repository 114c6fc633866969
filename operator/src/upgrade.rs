//! A changed spec against the one the job's pods run: planned change by change (as
//! `sluice plan` prints it), and applied only where the plan allows — the checkpoint restores,
//! or the losses it states are accepted (`spec.upgrade.allowStateLoss`). A refused change
//! leaves the job running its old spec.
//!
//! The spec the pods run is kept beside their manifest, in the job's ConfigMap
//! ([`APPLIED_SPEC_KEY`]), so that it is the one applied and not the one last seen.

use serde_json::Value as Json;
use sluice_crds::resource::StreamingJobResource;
use sluice_crds::upgrade::{ChangeClass, UpgradePlan, plan_resources};

/// Key of the job's ConfigMap with the whole spec the pods were made from, as JSON.
pub const APPLIED_SPEC_KEY: &str = "applied-spec.json";

/// What to do with the spec as it is now.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Nothing the job sees changed (or there is nothing to compare with: a new job).
    Unchanged,
    /// Apply it; the plan says what it does.
    Proceed(UpgradePlan),
    /// Keep the pods on the old spec, for this reason.
    Refuse(UpgradePlan, String),
}

/// The decision for `job`'s spec against the `applied` one (the ConfigMap's).
pub fn decide(applied: Option<&str>, job: &StreamingJobResource) -> Decision {
    let Some(applied) = applied.and_then(|text| serde_json::from_str::<Json>(text).ok()) else {
        return Decision::Unchanged;
    };
    let Ok(current) = serde_json::to_value(&job.spec) else {
        return Decision::Unchanged;
    };
    // An applied spec this operator cannot read (written by another version): the runtime
    // still refuses what its checkpoint cannot take.
    let Ok(plan) = plan_resources(&applied, &current) else {
        return Decision::Unchanged;
    };
    // The worker count and suspend are applied to the running job: not an upgrade (a
    // rescale has its own event).
    if plan.class().is_none_or(|c| c == ChangeClass::Live) {
        return Decision::Unchanged;
    }
    let allowed = job
        .spec
        .job
        .upgrade
        .as_ref()
        .and_then(|u| u.allow_state_loss)
        .unwrap_or(false);
    match plan.refusal(allowed) {
        Some(why) => Decision::Refuse(plan, why),
        None => Decision::Proceed(plan),
    }
}

/// The applied-spec entry of the job's ConfigMap.
pub fn applied_spec(job: &StreamingJobResource) -> Option<String> {
    serde_json::to_string(&job.spec).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_crds::upgrade::Verdict;

    use super::*;

    fn job(spec: &Json) -> StreamingJobResource {
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "StreamingJob",
            "metadata": {"name": "wc", "namespace": "jobs", "generation": 2},
            "spec": spec
        }))
        .expect("a job")
    }

    fn base() -> Json {
        json!({
            "batchInterval": "1s",
            "sources": [{"name": "g", "generator": {"rate": 10}}],
            "pipeline": [
                {"flatMap": {"split": " "}},
                {"countByValue": {}},
                {"updateStateByKey": {"op": "sum"}}
            ],
            "sinks": [{"stdout": {}}],
            "checkpoint": {"uri": "s3://ckpt/wc"},
            "workers": {"replicas": 2}
        })
    }

    #[test]
    fn changes_proceed_where_the_plan_allows() {
        let old = job(&base());
        let applied = applied_spec(&old).expect("json");
        assert_eq!(decide(None, &old), Decision::Unchanged, "a new job");
        assert_eq!(decide(Some(&applied), &old), Decision::Unchanged);
        let mut scaled = base();
        scaled["workers"]["replicas"] = 5.into();
        assert_eq!(
            decide(Some(&applied), &job(&scaled)),
            Decision::Unchanged,
            "a rescale is no upgrade"
        );
        let mut wider = base();
        wider["parallelism"] = 8.into();
        wider["workers"]["replicas"] = 4.into();
        let Decision::Proceed(plan) = decide(Some(&applied), &job(&wider)) else {
            panic!("a re-shard proceeds");
        };
        assert_eq!(plan.class(), Some(ChangeClass::Migration));
        assert_eq!(plan.changes.len(), 2, "{}", plan.render());
    }

    #[test]
    fn losses_need_consent_and_unreadable_state_is_refused() {
        let applied = applied_spec(&job(&base())).expect("json");
        let mut dropped = base();
        dropped["pipeline"] = json!([{"flatMap": {"split": " "}}, {"countByValue": {}}]);
        let Decision::Refuse(plan, why) = decide(Some(&applied), &job(&dropped)) else {
            panic!("a loss without consent is refused");
        };
        assert_eq!(plan.verdict(), Verdict::RestoresWithLoss);
        assert!(why.contains("allowStateLoss"), "{why}");
        dropped["upgrade"] = json!({"allowStateLoss": true});
        assert!(matches!(
            decide(Some(&applied), &job(&dropped)),
            Decision::Proceed(_)
        ));
        let mut reshaped = base();
        reshaped["pipeline"][2] = json!({"updateStateByKey": {"op": "max"}});
        reshaped["upgrade"] = json!({"allowStateLoss": true});
        let Decision::Refuse(plan, _) = decide(Some(&applied), &job(&reshaped)) else {
            panic!("an unreadable state is refused");
        };
        assert_eq!(plan.verdict(), Verdict::CannotRestore);
        // A new checkpoint starts afresh: allowed.
        reshaped["checkpoint"]["uri"] = "s3://ckpt/wc-v2".into();
        assert!(matches!(
            decide(Some(&applied), &job(&reshaped)),
            Decision::Proceed(_)
        ));
        // An applied spec this operator cannot read is not planned against.
        assert_eq!(decide(Some("{"), &job(&reshaped)), Decision::Unchanged);
    }
}
