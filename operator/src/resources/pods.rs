//! The master (a one-replica StatefulSet, so Kubernetes restarts it even while the operator is
//! down) and the workers (a StatefulSet with the job's replica count): the same image and
//! manifest, restricted security, the token and checkpoint credentials from Secrets.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvFromSource, EnvVar,
    EnvVarSource, GRPCAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, SeccompProfile, SecretEnvSource, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use sluice_crds::resource::StreamingJobResource;

use super::{BuildError, child_meta, job_name, selector};
use crate::constants::*;

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The volume holding the job manifest; `spec.podTemplate.volumes` may not take its name.
const CONFIG_VOLUME: &str = "config";
/// The volume holding the job's TLS certificate; reserved likewise.
const TLS_VOLUME: &str = "tls";

/// A pod template for one role running `args` of the sluice binary.
fn template(
    job: &StreamingJobResource,
    role: &str,
    token_secret: &str,
    args: Vec<String>,
    port: i32,
) -> Result<PodTemplateSpec, BuildError> {
    let name = job_name(job)?;
    let spec = &job.spec;
    let mut env = vec![
        field("POD_IP", "status.podIP"),
        field("POD_NAME", "metadata.name"),
        EnvVar {
            name: "SLUICE_TOKEN".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: token_secret.into(),
                    key: TOKEN_KEY.into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        env("SLUICE_LOG", "info"),
        // Mutual TLS between the job's pods, with the certificate the operator issued.
        env("SLUICE_TLS_CERT", &format!("{TLS_DIR}/{TLS_CERT_KEY}")),
        env("SLUICE_TLS_KEY", &format!("{TLS_DIR}/{TLS_KEY_KEY}")),
        env("SLUICE_TLS_CA", &format!("{TLS_DIR}/{TLS_CA_KEY}")),
        env("SLUICE_TLS_SERVER_NAME", TLS_SERVER_NAME),
        // On the pod's own address: pods of one node may share a network namespace in tests.
        env("SLUICE_METRICS_ADDR", &format!("$(POD_IP):{METRICS_PORT}")),
        env("SLUICE_HEALTH_ADDR", &format!("$(POD_IP):{HEALTH_PORT}")),
    ];
    if role == "worker" {
        env.push(env_advertise());
    }
    let overrides = spec.pod_template.clone().unwrap_or_default();
    // The operator's variables, set above, win on a name clash.
    for extra in overrides.env.into_iter().flatten() {
        if !env.iter().any(|e| e.name == extra.name) {
            env.push(extra);
        }
    }
    // Secrets with a user name and password, each given as two variables.
    let credentials = [
        (
            &spec.kafka_credentials,
            ["SLUICE_KAFKA_SASL_USERNAME", "SLUICE_KAFKA_SASL_PASSWORD"],
        ),
        (
            &spec.postgres_credentials,
            ["SLUICE_POSTGRES_USER", "SLUICE_POSTGRES_PASSWORD"],
        ),
    ];
    for (secret, vars) in credentials {
        let Some(secret) = secret else { continue };
        for (var, key) in vars.into_iter().zip(["username", "password"]) {
            env.retain(|e| e.name != var);
            env.push(EnvVar {
                name: var.into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.name.clone(),
                        key: key.into(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    let mut env_from: Vec<EnvFromSource> = overrides.env_from.unwrap_or_default();
    if let Some(secret) = &spec.checkpoint_credentials {
        env_from.push(EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.name.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        });
    }
    let mut mounts = vec![
        VolumeMount {
            name: CONFIG_VOLUME.into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: TLS_VOLUME.into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ];
    mounts.extend(overrides.volume_mounts.into_iter().flatten());
    let mut volumes = vec![
        Volume {
            name: CONFIG_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: super::config_map(&name),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: TLS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(super::tls_secret(&name)),
                // Readable by the pod's group (fsGroup below), not by everyone.
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    for v in overrides.volumes.into_iter().flatten() {
        if v.name == CONFIG_VOLUME || v.name == TLS_VOLUME {
            return Err(BuildError::Invalid(
                "spec.podTemplate.volumes: the names config and tls are the operator's; rename the volume",
            ));
        }
        volumes.push(v);
    }
    let resources = match role {
        "master" => spec.master.as_ref().and_then(|m| m.resources.clone()),
        _ => spec.workers.as_ref().and_then(|w| w.resources.clone()),
    };
    let container = Container {
        name: role.into(),
        image: Some(spec.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into())),
        image_pull_policy: spec.image_pull_policy.clone(),
        args: Some(args),
        env: Some(env),
        env_from: (!env_from.is_empty()).then_some(env_from),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".into()),
                container_port: port,
                ..Default::default()
            },
            ContainerPort {
                name: Some("metrics".into()),
                container_port: METRICS_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("health".into()),
                container_port: HEALTH_PORT,
                ..Default::default()
            },
        ]),
        // Ready: the master serves its API; a worker is registered with its master (so
        // WorkersReady means that, not just started). Alive: the process answers.
        readiness_probe: Some(Probe {
            grpc: Some(GRPCAction {
                port: HEALTH_PORT,
                service: Some(
                    match role {
                        "master" => "sluice.v1.Master",
                        _ => "sluice.v1.Worker",
                    }
                    .into(),
                ),
            }),
            period_seconds: Some(2),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            grpc: Some(GRPCAction {
                port: HEALTH_PORT,
                service: None,
            }),
            initial_delay_seconds: Some(10),
            period_seconds: Some(10),
            // A minute without an answer: the process is stuck, not busy (health is served
            // by its own tasks, beside the batch loop).
            failure_threshold: Some(6),
            ..Default::default()
        }),
        resources,
        security_context: Some(restricted()),
        // A failed run's last log lines become its termination message, which the operator
        // quotes when the job crash-loops.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let mut labels = overrides.labels.unwrap_or_default();
    if labels.keys().any(|k| k.starts_with("sluice.dev/")) {
        return Err(BuildError::Invalid(
            "spec.podTemplate.labels: keys under sluice.dev/ belong to the operator; use another prefix",
        ));
    }
    labels.extend(selector(&name, role));
    labels.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    labels.insert(LABEL_COMPONENT.into(), role.into());
    labels.insert(LABEL_PART_OF.into(), PART_OF.into());
    // A changed manifest changes the template, so the pods restart and load it (resuming from
    // the checkpoint); a replica change does not.
    let mut annotations = overrides.annotations.unwrap_or_default();
    annotations.insert("sluice.dev/manifest-hash".to_string(), manifest_hash(job));
    // Where Prometheus finds the metrics, unless the template says otherwise.
    for (key, value) in [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", METRICS_PORT.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ] {
        annotations.entry(key.to_string()).or_insert(value);
    }
    Ok(PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            priority_class_name: overrides.priority_class_name,
            image_pull_secrets: overrides.image_pull_secrets,
            node_selector: spec.node_selector.clone(),
            tolerations: spec.tolerations.clone(),
            affinity: spec.affinity.clone(),
            service_account_name: spec.service_account_name.clone(),
            // Sluice never calls the Kubernetes API from a job's pods: no token to steal (a
            // joinStatic or files source pointed at it could otherwise read it).
            automount_service_account_token: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                fs_group: Some(65532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            termination_grace_period_seconds: Some(60),
            ..Default::default()
        }),
    })
}

/// A hash of the job part of the spec (what the ConfigMap holds): stable across builds, so
/// that a rebuilt operator rolls no pod whose manifest did not change.
fn manifest_hash(job: &StreamingJobResource) -> String {
    sluice_crds::digest(&serde_json::to_string(&job.spec.job).unwrap_or_default())
}

fn env_advertise() -> EnvVar {
    // Kubernetes expands $(POD_IP) from the variable defined before it.
    env("SLUICE_ADVERTISE", &format!("$(POD_IP):{WORKER_PORT}"))
}

/// Worker pods the job should have: `spec.workers.replicas` (default 2), none while stopped.
pub fn workers_wanted(job: &StreamingJobResource, stopped: bool) -> i32 {
    if stopped {
        return 0;
    }
    job.spec
        .workers
        .as_ref()
        .and_then(|w| w.replicas)
        .unwrap_or(DEFAULT_WORKERS)
        .max(0)
}

fn statefulset(
    job: &StreamingJobResource,
    role: &str,
    replicas: i32,
    template: PodTemplateSpec,
) -> Result<StatefulSet, BuildError> {
    let name = format!("{}-{role}", job_name(job)?);
    Ok(StatefulSet {
        metadata: child_meta(job, name.clone(), role)?,
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(name),
            // Workers start and stop together: the master places partitions, not the order.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector(&job_name(job)?, role)),
                ..Default::default()
            },
            template,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// `<job>-master`: one replica (none while `stopped`: suspended, backing off or failed).
pub fn master_statefulset(
    job: &StreamingJobResource,
    token_secret: &str,
    stopped: bool,
) -> Result<StatefulSet, BuildError> {
    let args = vec![
        "master".into(),
        format!("{CONFIG_DIR}/{MANIFEST_FILE}"),
        "--listen".into(),
        // The pod's own address: Kubernetes expands $(POD_IP), defined in env.
        format!("$(POD_IP):{MASTER_PORT}"),
        // No minimum from the replica count: a scale would change the master's pod template
        // and restart it; workers that come later are placed at a batch boundary instead.
    ];
    let replicas = if stopped { 0 } else { 1 };
    statefulset(
        job,
        "master",
        replicas,
        template(job, "master", token_secret, args, MASTER_PORT)?,
    )
}

/// `<job>-worker`: `spec.workers.replicas` (default 2; none while `stopped`).
pub fn worker_statefulset(
    job: &StreamingJobResource,
    token_secret: &str,
    stopped: bool,
) -> Result<StatefulSet, BuildError> {
    let name = job_name(job)?;
    let args = vec![
        "worker".into(),
        format!("{CONFIG_DIR}/{MANIFEST_FILE}"),
        "--master".into(),
        format!("{name}-master:{MASTER_PORT}"),
        "--listen".into(),
        format!("$(POD_IP):{WORKER_PORT}"),
    ];
    statefulset(
        job,
        "worker",
        workers_wanted(job, stopped),
        template(job, "worker", token_secret, args, WORKER_PORT)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::job;

    fn container(sts: &StatefulSet) -> Container {
        sts.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers[0].clone())
            .expect("a container")
    }

    #[test]
    fn only_a_manifest_change_rolls_the_pods() {
        let hash = |j: &StreamingJobResource| {
            let sts = worker_statefulset(j, "t", false).expect("builds");
            sts.spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations)
                .expect("annotations")["sluice.dev/manifest-hash"]
                .clone()
        };
        let base = hash(&job(""));
        assert_eq!(
            base,
            hash(&job("  workers: {replicas: 7}\n")),
            "scaling keeps the pods"
        );
        let mut changed = job("");
        changed.spec.job.batch_interval = "2s".into();
        assert_ne!(base, hash(&changed), "a new manifest restarts them");
    }

    #[test]
    fn workers_follow_replicas_and_suspend() {
        assert_eq!(
            worker_statefulset(&job(""), "t", false)
                .expect("builds")
                .spec
                .expect("spec")
                .replicas,
            Some(2)
        );
        let scaled = job("  workers: {replicas: 5}\n");
        assert_eq!(
            worker_statefulset(&scaled, "t", false)
                .expect("builds")
                .spec
                .expect("spec")
                .replicas,
            Some(5)
        );
        let suspended = job("  workers: {replicas: 5}\n  suspend: true\n");
        assert_eq!(
            worker_statefulset(&suspended, "t", true)
                .expect("builds")
                .spec
                .expect("spec")
                .replicas,
            Some(0)
        );
        assert_eq!(
            master_statefulset(&suspended, "t", true)
                .expect("builds")
                .spec
                .expect("spec")
                .replicas,
            Some(0)
        );
    }

    #[test]
    fn pods_run_the_roles_with_token_and_credentials_and_restricted_security() {
        let j = job(
            "  image: registry.example/sluice:9\n  checkpointCredentials: {name: s3-creds}\n  kafkaCredentials: {name: kafka-creds}\n  postgresCredentials: {name: pg-creds}\n",
        );
        let master = container(&master_statefulset(&j, "wc-token", false).expect("builds"));
        assert_eq!(master.image.as_deref(), Some("registry.example/sluice:9"));
        assert_eq!(
            master.args.as_ref().expect("args")[..2],
            ["master".to_string(), "/etc/sluice/job.yaml".to_string()]
        );
        let worker = container(&worker_statefulset(&j, "wc-token", false).expect("builds"));
        let args = worker.args.clone().expect("args");
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--master" && w[1] == "wc-master:7070"),
            "{args:?}"
        );
        let env = worker.env.clone().expect("env");
        let token = env
            .iter()
            .find(|e| e.name == "SLUICE_TOKEN")
            .expect("token env");
        assert_eq!(
            token
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .map(|s| s.name.as_str()),
            Some("wc-token")
        );
        assert!(
            env.iter()
                .any(|e| e.name == "SLUICE_ADVERTISE"
                    && e.value.as_deref() == Some("$(POD_IP):7071"))
        );
        // Both roles serve their metrics on a named port, and say so.
        for (set, c) in [
            (
                master_statefulset(&j, "wc-token", false).expect("builds"),
                &master,
            ),
            (
                worker_statefulset(&j, "wc-token", false).expect("builds"),
                &worker,
            ),
        ] {
            assert!(
                c.env
                    .as_ref()
                    .expect("env")
                    .iter()
                    .any(|e| e.name == "SLUICE_METRICS_ADDR"
                        && e.value.as_deref() == Some("$(POD_IP):9090"))
            );
            assert!(
                c.ports
                    .as_ref()
                    .expect("ports")
                    .iter()
                    .any(|p| p.name.as_deref() == Some("metrics") && p.container_port == 9090)
            );
            let annotations = set
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations)
                .expect("annotations");
            assert_eq!(annotations["prometheus.io/scrape"], "true");
            assert_eq!(annotations["prometheus.io/port"], "9090");
            // gRPC probes on the health port: readiness per role, liveness of the process.
            let ready = c
                .readiness_probe
                .as_ref()
                .and_then(|p| p.grpc.clone())
                .expect("a gRPC readiness probe");
            assert_eq!(ready.port, 7072);
            let role = c.name.as_str();
            assert_eq!(
                ready.service.as_deref(),
                Some(if role == "master" {
                    "sluice.v1.Master"
                } else {
                    "sluice.v1.Worker"
                })
            );
            assert!(
                c.liveness_probe
                    .as_ref()
                    .and_then(|p| p.grpc.as_ref())
                    .is_some()
            );
        }
        // Kafka's SASL and PostgreSQL's credentials come from the job's Secrets, by key.
        for (name, secret, key) in [
            ("SLUICE_KAFKA_SASL_USERNAME", "kafka-creds", "username"),
            ("SLUICE_KAFKA_SASL_PASSWORD", "kafka-creds", "password"),
            ("SLUICE_POSTGRES_USER", "pg-creds", "username"),
            ("SLUICE_POSTGRES_PASSWORD", "pg-creds", "password"),
        ] {
            let from = env
                .iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
                .unwrap_or_else(|| panic!("{name} from a Secret"));
            assert_eq!((from.name.as_str(), from.key.as_str()), (secret, key));
        }
        // Mutual TLS by default, with the job's own certificate, and no Kubernetes token.
        for (name, file) in [
            ("SLUICE_TLS_CERT", "/etc/sluice-tls/tls.crt"),
            ("SLUICE_TLS_KEY", "/etc/sluice-tls/tls.key"),
            ("SLUICE_TLS_CA", "/etc/sluice-tls/ca.crt"),
        ] {
            assert!(
                env.iter()
                    .any(|e| e.name == name && e.value.as_deref() == Some(file)),
                "{name}"
            );
        }
        let set = worker_statefulset(&j, "wc-token", false).expect("builds");
        let pod = set.spec.and_then(|s| s.template.spec).expect("pod spec");
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert!(pod.volumes.iter().flatten().any(|v| {
            v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("wc-tls")
        }));
        assert_eq!(
            worker.env_from.expect("envFrom")[0]
                .secret_ref
                .as_ref()
                .map(|s| s.name.as_str()),
            Some("s3-creds")
        );
        let sc = worker.security_context.expect("security context");
        assert_eq!(
            (
                sc.run_as_non_root,
                sc.read_only_root_filesystem,
                sc.allow_privilege_escalation
            ),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_string()])
        );
    }

    #[test]
    fn pod_template_adds_to_the_pods_without_taking_over() {
        let j = job(concat!(
            "  podTemplate:\n",
            "    labels: {team: search}\n",
            "    annotations: {prometheus.io/scrape: 'true'}\n",
            "    env: [{name: RUST_BACKTRACE, value: '1'}, {name: SLUICE_TOKEN, value: stolen}]\n",
            "    volumes: [{name: ca, configMap: {name: ca-bundle}}]\n",
            "    volumeMounts: [{name: ca, mountPath: /etc/ca}]\n",
            "    priorityClassName: streaming\n",
        ));
        let sts = worker_statefulset(&j, "t", false).expect("builds");
        let template = sts.spec.expect("spec").template;
        let meta = template.metadata.expect("metadata");
        let labels = meta.labels.expect("labels");
        assert_eq!(labels["team"], "search");
        assert_eq!(labels[LABEL_ROLE], "worker");
        assert!(
            meta.annotations
                .expect("annotations")
                .contains_key("prometheus.io/scrape")
        );
        let pod = template.spec.expect("pod spec");
        assert_eq!(pod.priority_class_name.as_deref(), Some("streaming"));
        let names: Vec<_> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, ["config", "tls", "ca"]);
        let c = &pod.containers[0];
        let env = c.env.clone().expect("env");
        assert!(env.iter().any(|e| e.name == "RUST_BACKTRACE"));
        let token: Vec<_> = env.iter().filter(|e| e.name == "SLUICE_TOKEN").collect();
        assert_eq!(token.len(), 1, "the operator's token stays");
        assert!(
            token[0].value.is_none(),
            "from the Secret, not the override"
        );
        let mounts: Vec<_> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, ["/etc/sluice", "/etc/sluice-tls", "/etc/ca"]);
    }

    #[test]
    fn pod_template_cannot_take_the_operators_names() {
        let labels = job("  podTemplate: {labels: {sluice.dev/job: other}}\n");
        assert!(matches!(
            worker_statefulset(&labels, "t", false),
            Err(BuildError::Invalid(m)) if m.contains("sluice.dev/")
        ));
        let volume = job("  podTemplate: {volumes: [{name: config, emptyDir: {}}]}\n");
        assert!(matches!(
            master_statefulset(&volume, "t", false),
            Err(BuildError::Invalid(m)) if m.contains("config")
        ));
    }
}
