//! Pure builders: a StreamingJob in, the objects that run it out. No I/O, so every rule about
//! what a job's pods look like is unit-tested here.

mod config;
mod disruption;
mod network;
mod pods;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sluice_crds::resource::StreamingJobResource;

pub use config::{manifest, manifest_config_map};
pub use disruption::disruption_budget;
pub use network::network_policy;
pub use pods::{master_statefulset, worker_statefulset, workers_wanted};

use crate::constants::*;

/// What cannot be built from a StreamingJob.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the StreamingJob has no {0}")]
    Missing(&'static str),
    #[error("{0}")]
    Invalid(&'static str),
    #[error("cannot render the job manifest: {0}")]
    Render(String),
}

/// Everything one job needs.
pub struct Desired {
    pub config: ConfigMap,
    pub master: StatefulSet,
    pub master_service: Service,
    pub workers: StatefulSet,
    pub worker_service: Service,
    pub network_policy: NetworkPolicy,
    pub disruption_budget: PodDisruptionBudget,
}

/// The objects for `job`, whose master–worker token is in the Secret `token_secret`.
/// While `stopped` (suspended, backing off after a crash loop, or failed) the StatefulSets
/// have no replicas. The operator runs in `operator_namespace`, when known.
pub fn desired(
    job: &StreamingJobResource,
    token_secret: &str,
    stopped: bool,
    operator_namespace: Option<&str>,
) -> Result<Desired, BuildError> {
    Ok(Desired {
        config: manifest_config_map(job)?,
        master: master_statefulset(job, token_secret, stopped)?,
        master_service: headless_service(job, "master", MASTER_PORT)?,
        workers: worker_statefulset(job, token_secret, stopped)?,
        worker_service: headless_service(job, "worker", WORKER_PORT)?,
        network_policy: network_policy(job, operator_namespace)?,
        disruption_budget: disruption_budget(job)?,
    })
}

/// The Secret with the token a job's master and workers present to each other.
pub fn token_secret(job: &str) -> String {
    format!("{job}-token")
}

/// The ConfigMap with a job's manifest (and the spec its pods were made from).
pub fn config_map(job: &str) -> String {
    format!("{job}-config")
}

/// The Secret with a job's TLS certificate (see [`crate::tls`]).
pub fn tls_secret(job: &str) -> String {
    format!("{job}-tls")
}

pub(crate) fn job_name(job: &StreamingJobResource) -> Result<String, BuildError> {
    job.metadata
        .name
        .clone()
        .ok_or(BuildError::Missing("metadata.name"))
}

/// Labels that select a job's pods of one role.
pub fn selector(job: &str, role: &str) -> BTreeMap<String, String> {
    [
        (LABEL_JOB.to_string(), job.to_string()),
        (LABEL_ROLE.to_string(), role.to_string()),
    ]
    .into()
}

/// Metadata of a child object: name, namespace, labels, and the job as controlling owner (so
/// deleting the job deletes it).
pub(crate) fn child_meta(
    job: &StreamingJobResource,
    name: String,
    role: &str,
) -> Result<ObjectMeta, BuildError> {
    let job_name = job_name(job)?;
    let mut labels = selector(&job_name, role);
    labels.insert(LABEL_NAME.into(), "sluice".into());
    labels.insert(LABEL_INSTANCE.into(), job_name.clone());
    labels.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    labels.insert(LABEL_COMPONENT.into(), role.into());
    labels.insert(LABEL_PART_OF.into(), PART_OF.into());
    labels.insert(LABEL_VERSION.into(), env!("CARGO_PKG_VERSION").into());
    let owner = OwnerReference {
        api_version: StreamingJobResource::api_version(&()).to_string(),
        kind: StreamingJobResource::kind(&()).to_string(),
        name: job_name,
        uid: job
            .metadata
            .uid
            .clone()
            .ok_or(BuildError::Missing("metadata.uid"))?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    Ok(ObjectMeta {
        name: Some(name),
        namespace: job.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: Some(vec![owner]),
        ..Default::default()
    })
}

fn headless_service(
    job: &StreamingJobResource,
    role: &str,
    port: i32,
) -> Result<Service, BuildError> {
    let name = format!("{}-{role}", job_name(job)?);
    let spec = k8s_openapi::api::core::v1::ServiceSpec {
        cluster_ip: Some("None".into()),
        selector: Some(selector(&job_name(job)?, role)),
        ports: Some(vec![
            k8s_openapi::api::core::v1::ServicePort {
                name: Some("grpc".into()),
                port,
                ..Default::default()
            },
            k8s_openapi::api::core::v1::ServicePort {
                name: Some("metrics".into()),
                port: crate::constants::METRICS_PORT,
                ..Default::default()
            },
        ]),
        publish_not_ready_addresses: Some(true),
        ..Default::default()
    };
    Ok(Service {
        metadata: child_meta(job, name, role)?,
        spec: Some(spec),
        ..Default::default()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use sluice_crds::resource::StreamingJobResource;

    use crate::constants::{LABEL_COMPONENT, LABEL_PART_OF, LABEL_VERSION};

    /// A job as the API server would hand it over (name, namespace, uid set).
    pub fn job(extra_spec: &str) -> StreamingJobResource {
        let text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: wc, namespace: jobs, uid: 1234-abcd}}\nspec:\n  batchInterval: 1s\n  sources: [{{name: g, generator: {{rate: 100}}}}]\n  pipeline: [{{flatMap: {{split: \" \"}}}}, {{countByValue: {{}}}}]\n  sinks: [{{stdout: {{}}}}]\n  checkpoint: {{uri: \"s3://ckpt/wc\"}}\n{extra_spec}"
        );
        yaml_serde::from_str(&text).expect("a valid StreamingJob")
    }

    #[test]
    fn every_child_is_owned_labelled_and_named_after_the_job() {
        let d = super::desired(&job(""), "wc-token", false, None).expect("builds");
        for meta in [
            &d.config.metadata,
            &d.master.metadata,
            &d.workers.metadata,
            &d.master_service.metadata,
            &d.worker_service.metadata,
            &d.network_policy.metadata,
            &d.disruption_budget.metadata,
        ] {
            let owner = &meta.owner_references.as_ref().expect("owned")[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
                ("StreamingJob", "1234-abcd", Some(true))
            );
            assert_eq!(meta.namespace.as_deref(), Some("jobs"));
            assert_eq!(
                meta.labels.as_ref().expect("labels")["sluice.dev/job"],
                "wc"
            );
            assert!(meta.name.as_deref().expect("named").starts_with("wc-"));
            // The recommended labels, on every object.
            let labels = meta.labels.as_ref().expect("labels");
            assert_eq!(labels[LABEL_PART_OF], "sluice");
            assert_eq!(labels[LABEL_VERSION], env!("CARGO_PKG_VERSION"));
            assert!(!labels[LABEL_COMPONENT].is_empty());
        }
        let pod_labels = d
            .master
            .spec
            .expect("spec")
            .template
            .metadata
            .expect("meta")
            .labels
            .expect("labels");
        assert_eq!(pod_labels[LABEL_COMPONENT], "master");
        assert!(
            !pod_labels.contains_key(LABEL_VERSION),
            "an operator upgrade must not roll pods for a label"
        );
        assert_eq!(
            d.master_service.spec.expect("spec").cluster_ip.as_deref(),
            Some("None")
        );
    }

    #[test]
    fn a_job_without_uid_is_refused() {
        let mut j = job("");
        j.metadata.uid = None;
        assert!(super::desired(&j, "t", false, None).is_err());
    }
}
