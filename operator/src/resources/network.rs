//! The job's NetworkPolicy: its pods take connections from each other, on the master's port
//! from the operator (its Status calls), and on the metrics port from anyone (a scraper: the
//! metrics hold counts and names, nothing secret); from nothing else. The master and workers check
//! a token, but only after a connection is accepted: the policy keeps other pods from reaching
//! them at all (where the cluster's network enforces policies).

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_crds::resource::StreamingJobResource;

use super::{BuildError, child_meta, job_name};
use crate::constants::{LABEL_JOB, LABEL_NAME, MASTER_PORT, METRICS_PORT, OPERATOR_APP_NAME};

fn labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

/// `<job>-pods`: ingress to the job's pods from its own pods, and to the master's port from the
/// operator's pods in `operator_namespace` (any namespace when unknown).
pub fn network_policy(
    job: &StreamingJobResource,
    operator_namespace: Option<&str>,
) -> Result<NetworkPolicy, BuildError> {
    let name = job_name(job)?;
    let own_pods = NetworkPolicyPeer {
        pod_selector: Some(labels(&[(LABEL_JOB, &name)])),
        ..Default::default()
    };
    let operator = NetworkPolicyPeer {
        pod_selector: Some(labels(&[(LABEL_NAME, OPERATOR_APP_NAME)])),
        namespace_selector: Some(match operator_namespace {
            Some(ns) => labels(&[("kubernetes.io/metadata.name", ns)]),
            None => LabelSelector::default(),
        }),
        ..Default::default()
    };
    Ok(NetworkPolicy {
        metadata: child_meta(job, format!("{name}-pods"), "network")?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(labels(&[(LABEL_JOB, &name)])),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![own_pods]),
                    ports: None,
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![operator]),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(MASTER_PORT)),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                },
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(METRICS_PORT)),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                },
            ]),
            ..Default::default()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::job;

    #[test]
    fn only_the_jobs_pods_and_the_operator_get_in() {
        let policy = network_policy(&job(""), Some("sluice-system")).expect("builds");
        let spec = policy.spec.expect("spec");
        assert_eq!(
            spec.pod_selector
                .expect("selector")
                .match_labels
                .expect("labels")["sluice.dev/job"],
            "wc"
        );
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        let rules = spec.ingress.expect("ingress");
        assert_eq!(rules.len(), 3);
        // Anyone may scrape the metrics port, and only it.
        assert!(rules[2].from.is_none());
        assert_eq!(
            rules[2].ports.as_ref().expect("ports")[0].port,
            Some(IntOrString::Int(9090))
        );
        let peer = &rules[0].from.as_ref().expect("from")[0];
        assert!(peer.namespace_selector.is_none(), "same namespace only");
        assert_eq!(
            peer.pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone())
                .expect("labels")["sluice.dev/job"],
            "wc"
        );
        let operator = &rules[1].from.as_ref().expect("from")[0];
        assert_eq!(
            operator
                .namespace_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone())
                .expect("namespace")["kubernetes.io/metadata.name"],
            "sluice-system"
        );
        let ports = rules[1].ports.as_ref().expect("ports");
        assert_eq!(ports[0].port, Some(IntOrString::Int(MASTER_PORT)));
    }
}
