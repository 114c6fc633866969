//! The operator against the real control plane, with its pods run as real `sluice` processes by
//! the node agent and checkpoints and outputs on s3s-fs: a StreamingJob becomes a running job,
//! and `kubectl scale` (the scale subresource) adds a worker without restarting it; jobs that
//! cannot run (a missing Secret, an unknown image, a crash loop) say why in their status.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use serde_json::json;
use sluice_e2e::cluster::{ClusterOptions, TestCluster};
use sluice_e2e::control_plane::free_port;
use sluice_e2e::fixtures::{
    self, S3Server, create_namespace, http_get, spawn_operator, workspace_bin,
};
use sluice_e2e::wait_for;

fn jobs(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("sluice.dev", "v1alpha1", "StreamingJob");
    Api::namespaced_with(client.clone(), "jobs", &ApiResource::from_gvk(&gvk))
}

/// Files s3s-fs stores for the sink's objects.
fn sink_objects(root: &Path) -> usize {
    let dir = root.join("data/wc");
    std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| std::fs::read_dir(e.path()).map(|p| p.count()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_job_runs_and_scales_live() -> Result<()> {
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
    let s3_root = s3.root.clone();

    let cluster = TestCluster::start(ClusterOptions {
        dir: dir.path().join("cluster"),
        nodes: vec!["node-1".into(), "node-2".into()],
        images: vec![("sluice".into(), workspace_bin("sluice")?)],
        agent_bin: env!("CARGO_BIN_EXE_sluice-node-agent").into(),
    })
    .await?;
    let client = cluster.client.clone();
    fixtures::prepare_jobs_namespace(&client).await?;

    // Two replicas, as the chart would run them: one leads, one waits for the Lease.
    let ports = [free_port()?, free_port()?];
    let mut operators = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        operators.push(Some(spawn_operator(
            cluster.kubeconfig(),
            &format!("operator-{i}"),
            *port,
            &dir.path().join(format!("operator-{i}.log")),
        )?));
    }
    let log = |i: usize| {
        std::fs::read_to_string(dir.path().join(format!("operator-{i}.log"))).unwrap_or_default()
    };

    let job: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "StreamingJob",
        "metadata": {"name": "wc", "namespace": "jobs"},
        "spec": {
            "batchInterval": "200ms", "parallelism": 4,
            "sources": [{"name": "g", "generator": {"rate": 2000, "vocabulary": 100}}],
            "pipeline": [{"flatMap": {"split": " "}}, {"countByValue": {}}, {"updateStateByKey": {"op": "sum"}}],
            "sinks": [{"s3": {"uri": "s3://data/wc", "endpoint": s3.endpoint(), "pathStyle": true}}],
            "checkpoint": {"uri": "s3://ckpt/wc", "endpoint": s3.endpoint(), "pathStyle": true, "interval": 5},
            "image": "registry.example/sluice:e2e", "workers": {"replicas": 2},
            "checkpointCredentials": {"name": "s3-creds"},
        }
    }))?;
    jobs(&client).create(&PostParams::default(), &job).await?;

    let result: Result<()> = async {
        let status = |o: &DynamicObject| o.data.get("status").cloned().unwrap_or_default();
        wait_for(
            "the job Running with 2 workers",
            Duration::from_secs(120),
            async || {
                let s = status(&jobs(&client).get("wc").await?);
                Ok((s["phase"] == "Running" && s["workersReady"] == 2).then_some(()))
            },
        )
        .await?;
        wait_for("batches in S3", Duration::from_secs(60), async || {
            Ok((sink_objects(&s3_root) >= 40).then_some(()))
        })
        .await?;

        // kubectl scale sj wc --replicas 3
        let scale = json!({"spec": {"replicas": 3}});
        jobs(&client)
            .patch_scale("wc", &PatchParams::default(), &Patch::Merge(&scale))
            .await?;
        wait_for("3 workers ready", Duration::from_secs(120), async || {
            let s = status(&jobs(&client).get("wc").await?);
            Ok((s["workersReady"] == 3 && s["workersDesired"] == 3).then_some(()))
        })
        .await?;
        // The scale subresource names the worker pods, as HPA and KEDA need it to.
        let scale = jobs(&client).get_scale("wc").await?;
        let selector = scale
            .status
            .and_then(|s| s.selector)
            .ok_or_else(|| anyhow::anyhow!("the scale subresource has no selector"))?;
        assert_eq!(selector, "sluice.dev/job=wc,sluice.dev/role=worker");
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "jobs");
        let workers = pods
            .list(&kube::api::ListParams::default().labels(&selector))
            .await?;
        assert_eq!(
            workers.items.len(),
            3,
            "the selector finds the three workers"
        );
        // Transitions a user cares about show as events on the job.
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(client.clone(), "jobs");
        wait_for_events(&events, &["Created", "Rescaled"], Duration::from_secs(30)).await?;
        // The master's progress and the conditions reach the status.
        wait_for(
            "progress and Ready in the status",
            Duration::from_secs(60),
            async || {
                let s = status(&jobs(&client).get("wc").await?);
                let ready = s["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                Ok((ready && s["lastCompletedBatch"].as_u64().unwrap_or(0) > 5).then_some(()))
            },
        )
        .await?;
        // A crashed worker and a crashed master show as events; the job goes on.
        assert!(cluster.kill_pod_processes("wc-worker-1")? >= 1);
        assert!(cluster.kill_pod_processes("wc-master-0")? >= 1);
        wait_for_events(
            &events,
            &["WorkerLost", "MasterRestarted"],
            Duration::from_secs(60),
        )
        .await?;
        let leader = wait_for("a leader", Duration::from_secs(30), async || {
            Ok((0..2).find(|i| log(*i).contains("became leader")))
        })
        .await?;
        assert!(
            !log(1 - leader).contains("became leader"),
            "only one replica leads"
        );
        let metrics_port = ports[leader];
        // Running again after the kills, as the metrics say.
        let metrics = wait_for(
            "the job Running in /metrics",
            Duration::from_secs(60),
            async || {
                let m = http_get("127.0.0.1", metrics_port, "/metrics")?;
                Ok(m.contains("sluice_jobs{phase=\"Running\"} 1").then_some(m))
            },
        )
        .await?;
        assert!(metrics.contains("sluice_reconciles_total "), "{metrics}");
        // The dashboard's operator panels query only what the operator exports.
        let exported = sluice_e2e::dashboard::sample_names(std::slice::from_ref(&metrics));
        let missing: Vec<String> = sluice_e2e::dashboard::dashboard_series()
            .into_iter()
            .filter(|s| s.starts_with("sluice_jobs") || s.starts_with("sluice_reconcile"))
            .filter(|s| !exported.contains(s))
            .collect();
        assert!(
            missing.is_empty(),
            "the dashboard queries {missing:?}, which the operator does not export:\n{metrics}"
        );
        assert!(http_get("127.0.0.1", metrics_port, "/healthz")?.contains("ok"));
        let before = sink_objects(&s3_root);
        wait_for(
            "batches after the rescale",
            Duration::from_secs(60),
            async || Ok((sink_objects(&s3_root) >= before + 20).then_some(())),
        )
        .await?;

        // A steady job's reconciles apply nothing: its objects are, as watched, what the
        // last apply left.
        let sent = r#"sluice_child_applies_total{outcome="sent"}"#;
        let unchanged = r#"sluice_child_applies_total{outcome="unchanged"}"#;
        let (sent_before, unchanged_before) = (
            metric(metrics_port, sent)?,
            metric(metrics_port, unchanged)?,
        );
        tokio::time::sleep(Duration::from_secs(12)).await;
        let (sent_after, unchanged_after) = (
            metric(metrics_port, sent)?,
            metric(metrics_port, unchanged)?,
        );
        eprintln!(
            "applies of a steady job's objects over 12 s: {} sent, {} left out",
            sent_after - sent_before,
            unchanged_after - unchanged_before
        );
        assert_eq!(
            sent_after, sent_before,
            "a steady job's objects were applied again"
        );
        assert!(unchanged_after > unchanged_before, "no reconcile in 12 s");
        // But a change made by hand is undone: the workers scaled behind the job's back go
        // back to its replicas.
        let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
            Api::namespaced(client.clone(), "jobs");
        sets.patch_scale(
            "wc-worker",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 1}})),
        )
        .await?;
        wait_for(
            "the workers' StatefulSet back at 3 replicas",
            Duration::from_secs(30),
            async || {
                let set = sets.get("wc-worker").await?;
                Ok((set.spec.and_then(|s| s.replicas) == Some(3)).then_some(()))
            },
        )
        .await?;
        assert!(metric(metrics_port, sent)? > sent_after);

        // Kill the leader: the standby takes the Lease and goes on reconciling.
        if let Some(mut p) = operators[leader].take() {
            p.kill();
        }
        let killed = Instant::now();
        let scale = json!({"spec": {"replicas": 2}});
        jobs(&client)
            .patch_scale("wc", &PatchParams::default(), &Patch::Merge(&scale))
            .await?;
        wait_for(
            "the standby to reconcile",
            Duration::from_secs(90),
            async || {
                let s = status(&jobs(&client).get("wc").await?);
                Ok((s["workersDesired"] == 2 && s["workersReady"] == 2).then_some(()))
            },
        )
        .await?;
        assert!(log(1 - leader).contains("became leader"));
        eprintln!(
            "operator leader killed -> standby reconciled in {:?}",
            killed.elapsed()
        );

        // A new parallelism: planned (an event and the Upgrade condition), then the pods
        // restart and the keyed state is re-sharded from the checkpoint.
        let condition = |s: &serde_json::Value, kind: &str| {
            s["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == kind).cloned())
                .unwrap_or_default()
        };
        let wider = json!({"spec": {"parallelism": 8}});
        jobs(&client)
            .patch("wc", &PatchParams::default(), &Patch::Merge(&wider))
            .await?;
        wait_for("the upgrade planned", Duration::from_secs(30), async || {
            let s = status(&jobs(&client).get("wc").await?);
            let planned = condition(&s, "Upgrade");
            Ok((planned["status"] == "True"
                && planned["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("spec.parallelism (state migration)"))
            .then_some(()))
        })
        .await?;
        wait_for_events(&events, &["UpgradePlanned"], Duration::from_secs(30)).await?;
        let before = sink_objects(&s3_root);
        wait_for(
            "batches at parallelism 8",
            Duration::from_secs(120),
            async || {
                let s = status(&jobs(&client).get("wc").await?);
                Ok(
                    (s["phase"] == "Running" && sink_objects(&s3_root) >= before + 40)
                        .then_some(()),
                )
            },
        )
        .await?;

        // A change that drops state is refused, with its plan, and the job goes on with its
        // previous spec; accepted with allowStateLoss.
        let change =
            json!({"spec": {"pipeline": [{"flatMap": {"split": ","}}, {"countByValue": {}}]}});
        jobs(&client)
            .patch("wc", &PatchParams::default(), &Patch::Merge(&change))
            .await?;
        let s = wait_for("the change refused", Duration::from_secs(30), async || {
            let s = status(&jobs(&client).get("wc").await?);
            Ok((s["phase"] == "Blocked").then_some(s))
        })
        .await?;
        let message = s["message"].as_str().unwrap_or("");
        assert!(
            message.contains("updateStateByKey#0") && message.contains("allowStateLoss"),
            "{s}"
        );
        let refused = condition(&s, "Upgrade");
        assert_eq!(
            (refused["status"].as_str(), refused["reason"].as_str()),
            (Some("False"), Some("UpgradeRefused")),
            "{s}"
        );
        let before = sink_objects(&s3_root);
        wait_for(
            "the old spec still running",
            Duration::from_secs(60),
            async || Ok((sink_objects(&s3_root) >= before + 20).then_some(())),
        )
        .await?;
        let consent = json!({"spec": {"upgrade": {"allowStateLoss": true}}});
        jobs(&client)
            .patch("wc", &PatchParams::default(), &Patch::Merge(&consent))
            .await?;
        let applied = wait_for(
            "the change applied with consent",
            Duration::from_secs(120),
            async || {
                let s = status(&jobs(&client).get("wc").await?);
                let upgraded = condition(&s, "Upgrade");
                Ok((s["phase"] == "Running"
                    && upgraded["status"] == "True"
                    && upgraded["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("state loss"))
                .then_some(()))
            },
        )
        .await;
        if let Err(e) = applied {
            let s = status(&jobs(&client).get("wc").await?);
            anyhow::bail!("{e}; the status: {s}");
        }

        // Delete the job with deletionPolicy Delete: children, processes and checkpoint go.
        assert!(
            fixtures::files_under(&s3_root.join("ckpt/wc")) > 0,
            "a checkpoint exists before the delete"
        );
        let policy = json!({"spec": {"checkpoint": {"deletionPolicy": "Delete"}}});
        jobs(&client)
            .patch("wc", &PatchParams::default(), &Patch::Merge(&policy))
            .await?;
        // Only a job whose deletion has work to do holds a finalizer: the policy binds once
        // the operator has added it.
        wait_for("the finalizer", Duration::from_secs(30), async || {
            let job = jobs(&client).get("wc").await?;
            Ok(job
                .metadata
                .finalizers
                .unwrap_or_default()
                .iter()
                .any(|f| f == "sluice.dev/checkpoint")
                .then_some(()))
        })
        .await?;
        jobs(&client).delete("wc", &Default::default()).await?;
        wait_for("the job gone", Duration::from_secs(60), async || {
            Ok(jobs(&client).get_opt("wc").await?.is_none().then_some(()))
        })
        .await?;
        let left = fixtures::files_under(&s3_root.join("ckpt/wc"));
        anyhow::ensure!(
            left == 0,
            "deletionPolicy Delete removes the checkpoint: {left} files left"
        );
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "jobs");
        wait_for("the job's pods gone", Duration::from_secs(60), async || {
            Ok(pods
                .list(&Default::default())
                .await?
                .items
                .is_empty()
                .then_some(()))
        })
        .await?;
        Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("--- operator logs:\n{}\n{}", log(0), log(1));
        eprintln!("--- node agent log:\n{}", cluster.agent_log(40));
        eprintln!("--- pod logs:\n{}", cluster.pod_logs("wc", 30));
    }
    result
}

/// The reasons of the events in a namespace.
async fn event_reasons(events: &Api<k8s_openapi::api::events::v1::Event>) -> Result<Vec<String>> {
    Ok(events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect())
}

/// Waits until events with every one of `reasons` exist.
async fn wait_for_events(
    events: &Api<k8s_openapi::api::events::v1::Event>,
    reasons: &[&str],
    timeout: Duration,
) -> Result<()> {
    wait_for(&format!("events {reasons:?}"), timeout, async || {
        let seen = event_reasons(events).await?;
        Ok(reasons
            .iter()
            .all(|r| seen.iter().any(|s| s == r))
            .then_some(()))
    })
    .await
}

/// Reads a counter from the operator's /metrics.
fn metric(port: u16, name: &str) -> Result<f64> {
    let text = http_get("127.0.0.1", port, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {name} in /metrics"))
}

fn degraded(status: &serde_json::Value) -> Option<(String, String)> {
    status["conditions"].as_array()?.iter().find_map(|c| {
        (c["type"] == "Degraded" && c["status"] == "True").then(|| {
            (
                c["reason"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_cannot_run_say_why_without_a_hot_loop() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // An "image" whose program fails at once, as a master with a broken setup would (exit 1:
    // not the job's own fault, which exits 2 and fails the job without a crash loop).
    let crasher = dir.path().join("crasher");
    std::fs::write(
        &crasher,
        "#!/bin/sh\necho 'error: checkpoint bucket ckpt-missing does not exist' >&2\nexit 1\n",
    )?;
    std::fs::set_permissions(
        &crasher,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let cluster = TestCluster::start(ClusterOptions {
        dir: dir.path().join("cluster"),
        nodes: vec!["node-1".into()],
        images: vec![
            ("sluice".into(), workspace_bin("sluice")?),
            ("crasher".into(), crasher),
        ],
        agent_bin: env!("CARGO_BIN_EXE_sluice-node-agent").into(),
    })
    .await?;
    let client = cluster.client.clone();
    sluice_e2e::crd::install(&client, &fixtures::repo().join("crds/streamingjob.yaml")).await?;
    create_namespace(&client, "jobs").await?;
    let port = free_port()?;
    let log_path = dir.path().join("operator.log");
    let _operator = spawn_operator(cluster.kubeconfig(), "operator-0", port, &log_path)?;

    let job = |name: &str, extra: serde_json::Value| -> Result<DynamicObject> {
        let mut spec = json!({
            "batchInterval": "500ms",
            "sources": [{"name": "g", "generator": {"rate": 100}}],
            "pipeline": [{"flatMap": {"split": " "}}, {"countByValue": {}}],
            "sinks": [{"stdout": {}}],
            "image": "sluice", "workers": {"replicas": 1},
            // Master and workers are processes of one machine here: a directory is shared.
            "checkpoint": {"uri": format!("file://{}/ckpt-{name}", dir.path().display())},
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        Ok(serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "StreamingJob",
            "metadata": {"name": name, "namespace": "jobs"}, "spec": spec,
        }))?)
    };
    let api = jobs(&client);
    api.create(
        &PostParams::default(),
        &job(
            "nosecret",
            json!({"checkpointCredentials": {"name": "s3-creds"}}),
        )?,
    )
    .await?;
    api.create(
        &PostParams::default(),
        &job("badimage", json!({"image": "registry.example/missing:1"}))?,
    )
    .await?;
    api.create(
        &PostParams::default(),
        &job(
            "crashy",
            json!({"image": "crasher", "restartPolicy": {"backoffSeconds": 2, "limit": 1}}),
        )?,
    )
    .await?;

    // Accepted by the CRD, refused by `sluice validate`: refused before any pod starts.
    api.create(
        &PostParams::default(),
        &job(
            "invalid",
            json!({"pipeline": [{"flatMap": {"split": ""}}, {"countByValue": {}}]}),
        )?,
    )
    .await?;

    let mut unsaved = job("nockpt", json!({}))?;
    unsaved.data["spec"]
        .as_object_mut()
        .map(|spec| spec.remove("checkpoint"));
    api.create(&PostParams::default(), &unsaved).await?;

    let result: Result<()> = async {
        let status = |o: &DynamicObject| o.data.get("status").cloned().unwrap_or_default();
        // The status of job `name` once its phase is `phase`.
        let in_phase = async |name: &str, phase: &str, timeout: Duration| {
            wait_for(&format!("{name} {phase}"), timeout, async || {
                let s = status(&api.get(name).await?);
                Ok((s["phase"] == phase).then_some(s))
            })
            .await
        };
        let s = in_phase("invalid", "Blocked", Duration::from_secs(60)).await?;
        let (reason, message) = degraded(&s).unwrap_or_default();
        assert_eq!(reason, "InvalidSpec", "{s}");
        assert!(
            message.contains("spec.pipeline[0].flatMap.split: is empty"),
            "{message}"
        );
        let ready = s["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("InvalidSpec")),
            "{s}"
        );
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "jobs");
        let started = pods
            .list(&kube::api::ListParams::default().labels("sluice.dev/job=invalid"))
            .await?;
        assert!(started.items.is_empty(), "an invalid job started pods");
        // One Warning event says so, not one per look (the operator looks again on a timer
        // and on every status write).
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(client.clone(), "jobs");
        let invalid_events = async || -> Result<usize> {
            Ok(events
                .list(&Default::default())
                .await?
                .items
                .iter()
                .filter(|e| {
                    e.reason.as_deref() == Some("InvalidSpec")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("invalid")
                })
                .count())
        };
        wait_for(
            "the InvalidSpec event",
            Duration::from_secs(30),
            async || Ok((invalid_events().await? >= 1).then_some(())),
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(invalid_events().await?, 1, "one event for one refusal");
        let s = in_phase("nockpt", "Blocked", Duration::from_secs(60)).await?;
        assert_eq!(
            degraded(&s).map(|d| d.0).as_deref(),
            Some("NoCheckpoint"),
            "{s}"
        );
        assert!(
            s["message"]
                .as_str()
                .unwrap_or("")
                .contains("spec.checkpoint"),
            "{s}"
        );
        let (reason, message) = wait_for(
            "the missing Secret in the status",
            Duration::from_secs(60),
            async || Ok(degraded(&status(&api.get("nosecret").await?))),
        )
        .await?;
        assert_eq!(reason, "SecretMissing", "{message}");
        assert!(message.contains("s3-creds") && message.contains("spec.checkpointCredentials"));
        let (_, message) = wait_for(
            "the image problem in the status",
            Duration::from_secs(60),
            async || {
                Ok(degraded(&status(&api.get("badimage").await?))
                    .filter(|(r, _)| r == "ImagePullFailed"))
            },
        )
        .await?;
        assert!(message.contains("registry.example/missing:1"), "{message}");

        // The crash loop: stopped, restarted after the back-off, then Failed at the limit.
        let s = in_phase("crashy", "Failed", Duration::from_secs(120)).await?;
        assert_eq!(s["restarts"], 2, "{s}");
        let message = s["message"].as_str().unwrap_or("");
        assert!(message.contains("ckpt-missing does not exist"), "{message}");
        assert!(message.contains("restartPolicy.limit"), "{message}");
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(client.clone(), "jobs");
        let reasons = event_reasons(&events).await?;
        assert!(reasons.iter().any(|r| r == "CrashLoop"), "{reasons:?}");
        assert!(reasons.iter().any(|r| r == "Failed"), "{reasons:?}");
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "jobs");
        wait_for(
            "the failed job's pods gone",
            Duration::from_secs(60),
            async || {
                let left = pods
                    .list(&kube::api::ListParams::default().labels("sluice.dev/job=crashy"))
                    .await?
                    .items;
                Ok(left.is_empty().then_some(()))
            },
        )
        .await?;

        // No hot loop: four jobs that cannot run (missing Secret, bad image, Failed, Blocked)
        // are looked at every few seconds, not continuously. Measured once the crash loop is
        // over: its transitions (pods stopped, started, stopped) each wake the controller a
        // few times in a burst, which is work done, not a loop.
        let before = metric(port, "sluice_reconciles_total")?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let per_second = (metric(port, "sluice_reconciles_total")? - before) / 10.0;
        eprintln!("reconciles per second for 4 jobs that cannot run: {per_second}");
        assert!(
            per_second < 3.0,
            "{per_second} reconciles/s for 4 jobs is a hot loop"
        );

        // The Secret appears: the pods start, the condition clears.
        Api::<Secret>::namespaced(client.clone(), "jobs")
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "s3-creds"}, "stringData": {
                    "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}}))?,
            )
            .await?;
        wait_for(
            "the Secret problem to clear",
            Duration::from_secs(60),
            async || {
                let s = status(&api.get("nosecret").await?);
                Ok((s["phase"] == "Running" && degraded(&s).is_none()).then_some(()))
            },
        )
        .await?;
        Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!(
            "--- operator log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        eprintln!("--- node agent log:\n{}", cluster.agent_log(40));
        for name in ["nosecret", "badimage", "crashy", "nockpt"] {
            if let Ok(j) = api.get(name).await {
                eprintln!("--- {name} status: {}", j.data["status"]);
            }
        }
        eprintln!("--- pod logs:\n{}", cluster.pod_logs("nosecret", 20));
    }
    result
}
