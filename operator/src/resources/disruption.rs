//! The job's PodDisruptionBudget: a drain or a cluster upgrade evicts at most one of the job's
//! pods at a time, and waits for it to be back (Ready) before the next. A pod that is not
//! Ready anyway (crash-looping, pending) may always go, so a broken job never blocks a drain.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_crds::resource::StreamingJobResource;

use super::{BuildError, child_meta, job_name};
use crate::constants::LABEL_JOB;

/// `<job>-pods`: one voluntary disruption at a time among the master and the workers.
pub fn disruption_budget(job: &StreamingJobResource) -> Result<PodDisruptionBudget, BuildError> {
    let name = job_name(job)?;
    Ok(PodDisruptionBudget {
        metadata: child_meta(job, format!("{name}-pods"), "disruption")?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some([(LABEL_JOB.to_string(), name)].into()),
                ..Default::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::job;

    #[test]
    fn one_pod_of_the_job_at_a_time_and_never_blocked_by_unready_pods() {
        let pdb = disruption_budget(&job("")).expect("builds");
        let spec = pdb.spec.expect("spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        assert_eq!(
            spec.selector.and_then(|s| s.match_labels),
            Some([(LABEL_JOB.to_string(), "wc".to_string())].into())
        );
        assert_eq!(
            spec.unhealthy_pod_eviction_policy.as_deref(),
            Some("AlwaysAllow")
        );
    }
}
