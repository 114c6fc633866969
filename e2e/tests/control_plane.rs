//! The test control plane and node agent, end to end: a StatefulSet whose pods run as local
//! processes with their own addresses, reach each other by Service name, see their Secret and
//! ConfigMap, restart when they exit, come back when deleted, and are gone with the StatefulSet.
//!
//! Needs the control-plane binaries (`e2e/scripts/build-control-plane.sh`, which
//! `scripts/test` runs first).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use sluice_e2e::cluster::{ClusterOptions, TestCluster};
use sluice_e2e::wait_for;

fn request(ip: &str, line: &str) -> Result<String> {
    let mut s = TcpStream::connect((ip, 7000)).with_context(|| format!("connect {ip}:7000"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    Ok(answer.trim().to_string())
}

async fn running_pod(pods: &Api<Pod>, name: &str) -> Result<Option<Pod>> {
    let Some(pod) = pods.get_opt(name).await? else {
        return Ok(None);
    };
    let status = pod.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    Ok((status.phase.as_deref() == Some("Running")
        && ready
        && pod.metadata.deletion_timestamp.is_none())
    .then_some(pod))
}

/// Processes whose executable is `bin`.
fn processes_of(bin: &Path) -> Vec<u32> {
    let Ok(target) = bin.canonicalize() else {
        return vec![];
    };
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let e = e.ok()?;
                    let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                    (std::fs::read_link(e.path().join("exe")).ok()? == target).then_some(pid)
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn apply_workload(client: &Client, ns: &str) -> Result<()> {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}}),
            )?,
        )
        .await?;
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"greeting": "hello from a configmap"}}))?)
        .await?;
    Api::<Service>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web"},
                "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 7000}], "publishNotReadyAddresses": true}
            }))?,
        )
        .await?;
    let sts = json!({
        "metadata": {"name": "web"},
        "spec": {
            "serviceName": "web", "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "echo", "image": "registry.example/e2e-echo:1.0",
                        "env": [
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                            {"name": "GREETING_FILE", "value": "/etc/e2e/greeting"},
                        ],
                        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/e2e", "readOnly": true}],
                    }],
                    "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}],
                }
            }
        }
    });
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &serde_json::from_value(sts)?)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_pods_run_as_local_processes() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir()?;
    let echo = Path::new(env!("CARGO_BIN_EXE_e2e-echo"));
    let cluster = TestCluster::start(ClusterOptions {
        dir: dir.path().to_path_buf(),
        nodes: vec!["node-1".into(), "node-2".into()],
        images: vec![("e2e-echo".into(), echo.to_path_buf())],
        agent_bin: env!("CARGO_BIN_EXE_sluice-node-agent").into(),
    })
    .await?;
    eprintln!(
        "control plane and 2 nodes ready in {:?}",
        cluster.started_in
    );
    let result = scenario(&cluster, echo).await;
    if result.is_err() {
        eprintln!("--- node agent log:\n{}", cluster.agent_log(60));
    }
    result
}

async fn scenario(cluster: &TestCluster, echo: &Path) -> Result<()> {
    let client = cluster.client.clone();
    let ns = "e2e-sts";
    apply_workload(&client, ns).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let t = Instant::now();
    let web0 = wait_for("web-0 running", Duration::from_secs(90), async || {
        running_pod(&pods, "web-0").await
    })
    .await?;
    let web1 = wait_for("web-1 running", Duration::from_secs(90), async || {
        running_pod(&pods, "web-1").await
    })
    .await?;
    eprintln!("StatefulSet of 2 running in {:?}", t.elapsed());
    let ip = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default()
    };
    let (ip0, ip1) = (ip(&web0), ip(&web1));
    assert!(
        ip0.starts_with("127.") && ip1.starts_with("127.") && ip0 != ip1,
        "pods have their own addresses: {ip0} {ip1}"
    );

    // Without a readiness probe a pod is Ready once its process runs, as with a kubelet, which
    // may be before the process listens: the first request waits for the port.
    let whoami = wait_for("web-0 listening", Duration::from_secs(10), async || {
        request(&ip0, "whoami").map(Some)
    })
    .await?;
    assert_eq!(whoami, "web-0");
    // By name, through the headless Service, from inside a pod.
    let answer = wait_for(
        "web-0 reaching web-1.web",
        Duration::from_secs(30),
        async || {
            let a = request(&ip0, "ask web-1.web")?;
            Ok((a == "web-1").then_some(a))
        },
    )
    .await?;
    assert_eq!(answer, "web-1");
    assert_eq!(
        request(&ip1, "ask web-0.web.e2e-sts.svc.cluster.local")?,
        "web-0"
    );
    assert_eq!(request(&ip0, "env TOKEN")?, "s3cr3t", "secretKeyRef env");
    assert_eq!(
        request(&ip0, "read /etc/e2e/greeting")?,
        "hello from a configmap",
        "ConfigMap volume"
    );
    assert_eq!(processes_of(echo).len(), 2, "one process per pod");

    // A container that exits is restarted and its exit code reported.
    let _ = request(&ip0, "exit 3");
    let restarted = wait_for("web-0 restarted", Duration::from_secs(30), async || {
        let Some(pod) = running_pod(&pods, "web-0").await? else {
            return Ok(None);
        };
        let cs = pod
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default();
        Ok(cs.first().filter(|c| c.restart_count == 1).cloned())
    })
    .await?;
    let last_exit = restarted
        .last_state
        .and_then(|s| s.terminated)
        .map(|t| t.exit_code);
    assert_eq!(last_exit, Some(3));
    wait_for(
        "web-0 answering again",
        Duration::from_secs(10),
        async || Ok(request(&ip0, "whoami").ok().filter(|a| a == "web-0")),
    )
    .await?;

    // A deleted pod comes back (the StatefulSet controller recreates it) as a new process.
    let old_uid = web1.metadata.uid.clone();
    pods.delete("web-1", &DeleteParams::default()).await?;
    let t = Instant::now();
    let new1 = wait_for("web-1 back", Duration::from_secs(60), async || {
        Ok(running_pod(&pods, "web-1")
            .await?
            .filter(|p| p.metadata.uid != old_uid))
    })
    .await?;
    eprintln!("deleted pod back in {:?}", t.elapsed());
    assert_eq!(request(&ip(&new1), "whoami")?, "web-1");

    // Deleting the StatefulSet removes every pod and every process.
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .delete("web", &DeleteParams::background())
        .await?;
    wait_for("pods gone", Duration::from_secs(60), async || {
        Ok(pods
            .list(&Default::default())
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    wait_for("processes gone", Duration::from_secs(15), async || {
        Ok(processes_of(echo).is_empty().then_some(()))
    })
    .await?;
    Ok(())
}
