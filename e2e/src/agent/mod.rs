//! A node agent for tests — a "process kubelet". It registers Nodes, runs the pods the
//! scheduler binds to them as local processes, and reports their status, so controllers and
//! operators can be tested against a real API server without containers.
//!
//! What it does: Node registration and Lease heartbeats; pod IPs (`127.<node>.x.y`, one per
//! pod, on loopback); env with `value`, `fieldRef`, `secretKeyRef`, `configMapKeyRef`,
//! `envFrom` and `$(VAR)` expansion; ConfigMap, Secret, emptyDir, hostPath and projected
//! volumes (service-account tokens through TokenRequest) as files bind-mounted in a private
//! mount namespace; Service and StatefulSet pod names through a per-namespace `/etc/hosts`
//! (matched from Services and pods: the API server refuses EndpointSlices with loopback
//! addresses);
//! restarts with back-off (1 s doubling to 30 s); phases, container states, restart counts and
//! exit codes; SIGTERM on deletion and SIGKILL after the grace period.
//!
//! CPU limits are enforced as a kubelet does, by a CFS quota per container (`cpu`).
//!
//! What a real kubelet does that this does not: images (an image name maps to a local binary),
//! network, PID, user and cgroup isolation (processes share the host; only CPU limits hold),
//! probes other than gRPC readiness (`probe`; a container without one counts as ready once
//! running), init and sidecar containers, persistent
//! volumes, ClusterIP virtual addresses and load balancing (a Service name resolves to its
//! endpoints' addresses), port mapping (a process binds its pod IP itself), eviction.

mod cpu;
mod hosts;
mod pod;
pub mod probe;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;

pub use hosts::Hosts;
pub use pod::{AgentConfig, PodRun, now_rfc3339};

const MANAGER: &str = "sluice-e2e-node-agent";

/// Runs pods for `nodes` until `shutdown` resolves; then kills every pod process.
pub async fn run(
    client: Client,
    config: AgentConfig,
    nodes: Vec<String>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let mut agent = Agent {
        client: client.clone(),
        hosts: Hosts::new(&config.dir.join("hosts"))?,
        config,
        nodes,
        pods: HashMap::new(),
        node_of: HashMap::new(),
        next_ip: 2,
    };
    for node in agent.nodes.clone() {
        agent
            .register(&node)
            .await
            .with_context(|| format!("register node {node}"))?;
    }
    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_watch = reflector::reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .applied_objects()
    .for_each(|_| async {});
    let (services, service_writer) = reflector::store::<Service>();
    let service_watch = reflector::reflector(
        service_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .applied_objects()
    .for_each(|_| async {});
    tokio::spawn(pod_watch);
    tokio::spawn(service_watch);
    tokio::spawn(heartbeat(
        client.clone(),
        agent.nodes.clone(),
        agent.config.dir.clone(),
    ));
    tracing::info!(nodes = ?agent.nodes, "node agent running");

    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                if let Err(e) = agent.sync(&pods, &services).await {
                    tracing::warn!(error = %format!("{e:#}"), "sync failed; retrying");
                }
            }
        }
    }
    for run in agent.pods.values_mut() {
        run.destroy();
    }
    tracing::info!("node agent stopped; every pod process is gone");
    Ok(())
}

struct Agent {
    client: Client,
    config: AgentConfig,
    nodes: Vec<String>,
    hosts: Hosts,
    pods: HashMap<String, PodRun>,
    /// The node of each pod run, by uid.
    node_of: HashMap<String, String>,
    next_ip: u32,
}

/// Where a test marks a node frozen: an empty file named after it. A frozen node neither
/// renews its Lease nor reports its status, and its agent leaves its pods alone (whatever the
/// API server says of them), as a kubelet on a frozen or cut-off machine would; the test stops
/// the pods' processes itself.
pub fn frozen_marker(agent_dir: &std::path::Path, node: &str) -> std::path::PathBuf {
    agent_dir.join("frozen").join(node)
}

fn frozen(agent_dir: &std::path::Path, node: &str) -> bool {
    frozen_marker(agent_dir, node).exists()
}

impl Agent {
    async fn register(&self, node: &str) -> Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let body = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node, "kubernetes.io/os": "linux", "sluice.dev/e2e-node": "true"}},
        });
        api.patch(
            node,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
        api.patch_status(
            node,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(node_status(node)),
        )
        .await?;
        Ok(())
    }

    /// A loopback address for a new pod: `127.<agent>.<node>.<n>`. The second octet comes
    /// from the agent's process id, so clusters of tests running side by side do not hand
    /// out the same addresses (and fight over the same ports).
    fn ip_for(&mut self, node: &str) -> String {
        let agent = std::process::id() % 200 + 20;
        let index = self.nodes.iter().position(|n| n == node).unwrap_or(0) as u32;
        let n = self.next_ip;
        self.next_ip += 1;
        format!(
            "127.{agent}.{}.{}",
            (index * 16 + (n >> 8)) & 0xff,
            n & 0xff
        )
    }

    async fn sync(&mut self, pods: &Store<Pod>, services: &Store<Service>) -> Result<()> {
        let all_pods = pods.state();
        self.hosts.update(&services.state(), &all_pods)?;
        let dir = self.config.dir.clone();
        let mine: Vec<std::sync::Arc<Pod>> = all_pods
            .into_iter()
            .filter(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some_and(|n| self.nodes.contains(n) && !frozen(&dir, n))
            })
            .collect();
        let live: std::collections::HashSet<String> =
            mine.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        // Pods deleted outright (no grace): kill what is left of them (not on a frozen node,
        // whose agent hears nothing).
        let node_of = &mut self.node_of;
        self.pods.retain(|uid, run| {
            if live.contains(uid) || node_of.get(uid).is_some_and(|n| frozen(&dir, n)) {
                true
            } else {
                node_of.remove(uid);
                tracing::info!(pod = %run.name, namespace = %run.namespace, "pod is gone; killing its processes");
                run.destroy();
                false
            }
        });
        for pod in mine {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            let finished_phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Succeeded" || p == "Failed");
            if !self.pods.contains_key(&uid) {
                if pod.metadata.deletion_timestamp.is_some() {
                    self.delete_pod(&pod).await;
                    continue;
                }
                if finished_phase {
                    continue;
                }
                let node = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                let ip = self.ip_for(&node);
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let hosts = self.hosts.file(&ns)?;
                let run = PodRun::prepare(&self.client, &self.config, &pod, ip, &hosts).await;
                tracing::info!(pod = %run.name, namespace = %run.namespace, ip = %run.ip, waiting = ?run.waiting, "pod admitted");
                self.pods.insert(uid.clone(), run);
                self.node_of.insert(uid.clone(), node);
            }
            let Some(run) = self.pods.get_mut(&uid) else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or_else(|| {
                        pod.spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds)
                    })
                    .unwrap_or(30);
                run.terminate(Duration::from_secs(grace.max(0) as u64));
                if run.terminated() {
                    run.destroy();
                    self.pods.remove(&uid);
                    self.node_of.remove(&uid);
                    self.delete_pod(&pod).await;
                }
                continue;
            }
            if run
                .waiting
                .as_ref()
                .is_some_and(|(reason, _)| reason == "CreateContainerConfigError")
            {
                // Retry: the missing Secret or ConfigMap may exist by now.
                let ns = run.namespace.clone();
                let (ip, hosts) = (run.ip.clone(), self.hosts.file(&ns)?);
                let mut retry = PodRun::prepare(&self.client, &self.config, &pod, ip, &hosts).await;
                if retry.waiting.is_none() || retry.waiting != run.waiting {
                    *run = retry;
                } else {
                    retry.destroy_dir_only();
                }
            }
            let Some(run) = self.pods.get_mut(&uid) else {
                continue;
            };
            run.tick();
            if let Some(patch) = run.status_patch() {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &run.namespace);
                if let Err(e) = api
                    .patch_status(&run.name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    tracing::warn!(pod = %run.name, error = %e, "status update failed; will retry");
                    run.status_not_sent();
                }
            }
        }
        Ok(())
    }

    /// The final deletion a kubelet does once a pod's processes are gone.
    async fn delete_pod(&self, pod: &Pod) {
        let (Some(ns), Some(name)) = (
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref(),
        ) else {
            return;
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => tracing::info!(pod = name, namespace = ns, "pod terminated and deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = name, error = %e, "final delete failed; will retry"),
        }
    }
}

fn node_status(node: &str) -> serde_json::Value {
    let now = now_rfc3339();
    json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
        "status": {
            "capacity": {"cpu": "16", "memory": "64Gi", "pods": "110"},
            "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": node}],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "sluice e2e node agent is running", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "lastHeartbeatTime": now, "lastTransitionTime": now},
            ],
            "nodeInfo": {
                "architecture": "amd64", "operatingSystem": "linux", "osImage": "sluice e2e", "kernelVersion": "",
                "kubeletVersion": "v1.34.4", "kubeProxyVersion": "", "containerRuntimeVersion": "process://local",
                "machineID": node, "systemUUID": node, "bootID": node,
            },
        }
    })
}

/// Renews each node's Lease every 2 s and its Ready condition every 30 s, so the node
/// lifecycle controller keeps the nodes Ready (the test control plane gives a node 16 s); a
/// frozen node's are left to lapse.
async fn heartbeat(client: Client, nodes: Vec<String>, agent_dir: std::path::PathBuf) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let node_api: Api<Node> = Api::all(client);
    let mut last_status = Instant::now();
    let mut was_frozen: std::collections::HashSet<String> = Default::default();
    loop {
        for node in nodes.iter().filter(|n| !frozen(&agent_dir, n)) {
            // Thawed: say Ready at once, as a kubelet back on the network does.
            let thawed = was_frozen.remove(node.as_str());
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": node, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now_micro()},
            });
            if let Err(e) = leases
                .patch(
                    node,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(lease),
                )
                .await
            {
                tracing::warn!(node, error = %e, "lease renewal failed");
            }
            if thawed || last_status.elapsed() > Duration::from_secs(30) {
                let _ = node_api
                    .patch_status(
                        node,
                        &PatchParams::apply(MANAGER).force(),
                        &Patch::Apply(node_status(node)),
                    )
                    .await;
            }
        }
        if last_status.elapsed() > Duration::from_secs(30) {
            last_status = Instant::now();
        }
        was_frozen.extend(nodes.iter().filter(|n| frozen(&agent_dir, n)).cloned());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn now_micro() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}
