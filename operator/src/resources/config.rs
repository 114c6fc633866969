//! The ConfigMap with the job manifest that master and workers read: the job part of the spec
//! only, as `sluice run` would take it; beside it, the whole spec the pods were made from, which
//! a changed spec is planned against (see [`crate::upgrade`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use sluice_crds::resource::StreamingJobResource;
use sluice_crds::{API_VERSION, KIND, Metadata, StreamingJob};

use super::{BuildError, child_meta, job_name};
use crate::constants::MANIFEST_FILE;

/// The job's manifest, as `sluice` reads it in the pods (and `sluice validate` checks it).
pub fn manifest(job: &StreamingJobResource) -> Result<StreamingJob, BuildError> {
    Ok(StreamingJob {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        metadata: Metadata {
            name: job_name(job)?,
            namespace: job.metadata.namespace.clone(),
            uid: job.metadata.uid.clone(),
            labels: BTreeMap::new(),
        },
        spec: job.spec.job.clone(),
    })
}

/// `<job>-config` with `job.yaml`.
pub fn manifest_config_map(job: &StreamingJobResource) -> Result<ConfigMap, BuildError> {
    let manifest = manifest(job)?;
    let name = manifest.metadata.name.clone();
    let text = yaml_serde::to_string(&manifest).map_err(|e| BuildError::Render(e.to_string()))?;
    Ok(ConfigMap {
        metadata: child_meta(job, super::config_map(&name), "config")?,
        data: Some(
            [
                (MANIFEST_FILE.to_string(), text),
                (
                    crate::upgrade::APPLIED_SPEC_KEY.to_string(),
                    crate::upgrade::applied_spec(job).unwrap_or_default(),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::job;

    #[test]
    fn the_mounted_manifest_is_a_valid_local_job_with_the_same_fingerprint() {
        let j = job("  image: x/sluice:1\n  workers: {replicas: 3}\n");
        let cm = manifest_config_map(&j).expect("builds");
        let text = &cm.data.expect("data")["job.yaml"];
        let parsed = sluice_crds::load(text).expect("the runtime accepts it");
        assert_eq!(
            sluice_crds::fingerprint(&parsed.spec),
            sluice_crds::fingerprint(&j.spec.job)
        );
        assert_eq!(parsed.metadata.uid.as_deref(), Some("1234-abcd"));
        assert!(
            !text.contains("replicas"),
            "deployment fields stay out of the job manifest"
        );
    }
}
