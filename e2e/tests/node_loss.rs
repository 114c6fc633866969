//! A node lost under a running job, on the real control plane: the node of the job's master
//! freezes (its heartbeats lapse, the job's processes on it stop), the node controller marks it
//! NotReady, and the operator force-deletes the pods there after `spec.master.nodeLossTimeout`,
//! so a new master starts elsewhere and commits. Thawed while its node is still cut off, the
//! old master finds the checkpoint taken by a newer epoch and commits nothing. The output is
//! the same as an uninterrupted run's.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use serde_json::json;
use sluice_e2e::cluster::{ClusterOptions, TestCluster};
use sluice_e2e::control_plane::free_port;
use sluice_e2e::fixtures::{self, S3Server, spawn_operator, workspace_bin};
use sluice_e2e::wait_for;

fn jobs(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("sluice.dev", "v1alpha1", "StreamingJob");
    Api::namespaced_with(client.clone(), "jobs", &ApiResource::from_gvk(&gvk))
}

/// The commit entries of the checkpoint: batch -> epoch.
fn commits(root: &Path) -> BTreeMap<u64, u64> {
    std::fs::read_dir(root.join("ckpt/nl/commits"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let batch = e
                .file_name()
                .to_string_lossy()
                .strip_suffix(".json")?
                .parse()
                .ok()?;
            let entry: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some((batch, entry["epoch"].as_u64().unwrap_or(0)))
        })
        .collect()
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref().and_then(|s| s.node_name.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_master_node_is_replaced_and_the_old_master_fenced() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir()?;
    let s3 = S3Server::start(
        &dir.path().join("s3"),
        &["data", "ckpt"],
        &dir.path().join("s3s-fs.log"),
    )?;
    let cluster = TestCluster::start(ClusterOptions {
        dir: dir.path().join("cluster"),
        nodes: vec!["node-1".into(), "node-2".into(), "node-3".into()],
        images: vec![("sluice".into(), workspace_bin("sluice")?)],
        agent_bin: env!("CARGO_BIN_EXE_sluice-node-agent").into(),
    })
    .await?;
    let client = cluster.client.clone();
    fixtures::prepare_jobs_namespace(&client).await?;
    let operator_log = dir.path().join("operator.log");
    let _operator = spawn_operator(
        cluster.kubeconfig(),
        "operator",
        free_port()?,
        &operator_log,
    )?;
    let job: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "StreamingJob",
        "metadata": {"name": "nl", "namespace": "jobs"},
        "spec": {
            "batchInterval": "200ms", "parallelism": 4,
            "sources": [{"name": "g", "generator": {"rate": 2000, "vocabulary": 100}}],
            "pipeline": [{"flatMap": {"split": " "}}, {"countByValue": {}}, {"updateStateByKey": {"op": "sum"}}],
            "sinks": [{"s3": {"uri": "s3://data/nl", "endpoint": s3.endpoint(), "pathStyle": true}}],
            "checkpoint": {"uri": "s3://ckpt/nl", "endpoint": s3.endpoint(), "pathStyle": true, "interval": 5},
            "image": "registry.example/sluice:e2e", "workers": {"replicas": 2},
            "master": {"nodeLossTimeout": "10s"},
            "checkpointCredentials": {"name": "s3-creds"},
        }
    }))?;
    jobs(&client).create(&PostParams::default(), &job).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "jobs");
    let nodes: Api<Node> = Api::all(client.clone());
    let result: Result<String> = async {
        wait_for("the job Running", Duration::from_secs(120), async || {
            let s = jobs(&client).get("nl").await?.data["status"].clone();
            Ok((s["phase"] == "Running" && s["workersReady"] == 2).then_some(()))
        })
        .await?;
        wait_for("batches committed", Duration::from_secs(60), async || {
            Ok((commits(&s3.root).len() >= 10).then_some(()))
        })
        .await?;
        let all = pods.list(&ListParams::default()).await?.items;
        let master = all
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("nl-master-0"))
            .ok_or_else(|| anyhow!("no master pod"))?;
        let node = node_of(master).ok_or_else(|| anyhow!("the master is on no node"))?;
        let frozen: Vec<String> = all
            .iter()
            .filter(|p| node_of(p).as_deref() == Some(node.as_str()))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let before = commits(&s3.root);
        let old_epoch = before.values().max().copied().unwrap_or(0);
        let newest = before.keys().max().copied().unwrap_or(0);
        let started = Instant::now();
        let pids = cluster.freeze_node(&node, &frozen)?;
        ensure!(!pids.is_empty(), "nothing of {frozen:?} to freeze");
        wait_for(&format!("{node} NotReady"), Duration::from_secs(60), async || {
            let n = nodes.get(&node).await?;
            let ready = n
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.status);
            Ok((ready.as_deref() != Some("True")).then_some(()))
        })
        .await?;
        let not_ready = started.elapsed();
        let takeover = wait_for(
            "a commit by a new master",
            Duration::from_secs(90),
            async || {
                Ok(commits(&s3.root)
                    .iter()
                    .any(|(b, e)| *b > newest && *e > old_epoch)
                    .then(|| started.elapsed()))
            },
        )
        .await?;
        // Thawed on a node still cut off: the old master goes on from what it knew.
        cluster.thaw_processes(&pids);
        tokio::time::sleep(Duration::from_secs(8)).await;
        let logs = cluster.pod_logs("nl-master", 100_000);
        let fenced = logs.contains("another master took the checkpoint over");
        cluster.unfreeze_node(&node)?;
        let after = commits(&s3.root);
        let late: Vec<u64> = after
            .iter()
            .filter(|(b, e)| **b > newest + 1 && **e <= old_epoch)
            .map(|(b, _)| *b)
            .collect();
        ensure!(late.is_empty(), "batches {late:?} committed by the old master after the takeover");
        wait_for("the job Running again", Duration::from_secs(120), async || {
            let s = jobs(&client).get("nl").await?.data["status"].clone();
            Ok((s["phase"] == "Running" && s["workersReady"] == 2).then_some(()))
        })
        .await?;
        let operator = std::fs::read_to_string(&operator_log).unwrap_or_default();
        ensure!(operator.contains("force-deleted"), "{operator}");
        Ok(format!(
            "froze {node} ({} pods): NotReady after {:.1}s, a new master committed {:.1}s after the freeze; thawed, the old master {}",
            frozen.len(),
            not_ready.as_secs_f64(),
            takeover.as_secs_f64(),
            if fenced { "was refused" } else { "stayed idle" }
        ))
    }
    .await;
    match result {
        Ok(summary) => {
            eprintln!("{summary}");
            Ok(())
        }
        Err(e) => {
            eprintln!(
                "--- operator log:\n{}",
                std::fs::read_to_string(&operator_log).unwrap_or_default()
            );
            eprintln!("--- node agent log:\n{}", cluster.agent_log(60));
            eprintln!("--- pod logs:\n{}", cluster.pod_logs("nl", 30));
            if let Ok(list) = nodes.list(&ListParams::default()).await {
                for n in list.items {
                    let ready = n
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .into_iter()
                        .find(|c| c.type_ == "Ready");
                    eprintln!("node {:?}: {ready:?}", n.metadata.name);
                }
            }
            Err(e)
        }
    }
}
