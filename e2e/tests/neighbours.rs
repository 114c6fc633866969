//! Jobs among neighbours, on the real control plane: a job's deletion removes its own checkpoint
//! and nothing else (not other teams' objects in the bucket, not a checkpoint it did not
//! create, nothing without credentials of its own, even when the operator holds broad ones),
//! never hangs (a namespace deleted with its job and Secret), and a job never takes over
//! objects it did not create.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use serde_json::json;
use sluice_e2e::cluster::{ClusterOptions, TestCluster};
use sluice_e2e::control_plane::free_port;
use sluice_e2e::fixtures::{
    self, S3Server, create_namespace, spawn_operator_with_env, workspace_bin,
};
use sluice_e2e::wait_for;

fn jobs(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("sluice.dev", "v1alpha1", "StreamingJob");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

/// A small job checkpointing to `uri` on `s3`, with `extra` merged into its spec.
fn job(
    name: &str,
    ns: &str,
    s3: &S3Server,
    uri: &str,
    extra: serde_json::Value,
) -> Result<DynamicObject> {
    let mut spec = json!({
        "batchInterval": "200ms",
        "sources": [{"name": "g", "generator": {"rate": 200, "vocabulary": 20}}],
        "pipeline": [{"flatMap": {"split": " "}}, {"countByValue": {}}, {"updateStateByKey": {"op": "sum"}}],
        "sinks": [{"stdout": {"limit": 1}}],
        "checkpoint": {"uri": uri, "endpoint": s3.endpoint(), "pathStyle": true, "interval": 2, "deletionPolicy": "Delete"},
        "checkpointCredentials": {"name": "s3-creds"},
        "image": "sluice", "workers": {"replicas": 1},
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        if v.is_null() {
            spec.as_object_mut().map(|s| s.remove(k));
        } else if k == "checkpoint" {
            for (ck, cv) in v.as_object().into_iter().flatten() {
                spec["checkpoint"][ck] = cv.clone();
            }
        } else {
            spec[k] = v.clone();
        }
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "StreamingJob",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    }))?)
}

fn status(o: &DynamicObject) -> serde_json::Value {
    o.data.get("status").cloned().unwrap_or_default()
}

/// Files of a checkpoint's layout (what `deletionPolicy: Delete` may remove) under `dir`.
fn layout_files(dir: &Path) -> usize {
    ["job.json", "offsets", "commits", "state", "wal"]
        .iter()
        .map(|n| {
            let p = dir.join(n);
            if p.is_file() {
                1
            } else {
                fixtures::files_under(&p)
            }
        })
        .sum()
}

/// Event notes of `reason` about the object `name`.
async fn notes(events: &Api<Event>, name: &str, reason: &str) -> Result<Vec<String>> {
    Ok(events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .filter_map(|e| e.note)
        .collect())
}

async fn create_secret(
    client: &Client,
    ns: &str,
    name: &str,
    data: serde_json::Value,
) -> Result<()> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))?,
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_touch_only_what_is_theirs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s3 = S3Server::start(
        &dir.path().join("s3"),
        &["shared"],
        &dir.path().join("s3s-fs.log"),
    )?;
    let bucket = s3.root.join("shared");
    // Other teams' objects: beside the jobs, and inside one job's prefix.
    let foreign = [
        "team-a/data.csv",
        "jobs/owned/README.md",
        "jobs/owned-notes.txt",
        "jobs/nocreds/job.json",
        "jobs/nocreds/offsets/00000000000000000001.json",
    ];
    for key in foreign {
        let path = bucket.join(key);
        std::fs::create_dir_all(path.parent().expect("parent"))?;
        std::fs::write(
            &path,
            format!("{{\"formatVersion\":1,\"job\":\"nocreds\",\"note\":\"{key}\"}}"),
        )?;
    }
    let cluster = TestCluster::start(ClusterOptions {
        dir: dir.path().join("cluster"),
        nodes: vec!["node-1".into()],
        images: vec![("sluice".into(), workspace_bin("sluice")?)],
        agent_bin: env!("CARGO_BIN_EXE_sluice-node-agent").into(),
    })
    .await?;
    let client = cluster.client.clone();
    sluice_e2e::crd::install(&client, &fixtures::repo().join("crds/streamingjob.yaml")).await?;
    for ns in ["jobs", "doomed"] {
        create_namespace(&client, ns).await?;
        create_secret(&client, ns, "s3-creds", s3.credentials()).await?;
    }
    // The operator holds credentials of its own that could delete anything in the bucket: a
    // job without credentials must not get them used on its behalf.
    let log_path = dir.path().join("operator.log");
    let endpoint = s3.endpoint();
    let _operator = spawn_operator_with_env(
        cluster.kubeconfig(),
        "operator-0",
        free_port()?,
        &log_path,
        &[
            ("AWS_ACCESS_KEY_ID", s3.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", s3.secret_key.as_str()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ],
    )?;
    let api = jobs(&client, "jobs");
    let events: Api<Event> = Api::namespaced(client.clone(), "jobs");

    let result: Result<()> = async {
        // A whole bucket is refused at apply.
        let refused = api
            .create(&PostParams::default(), &job("greedy", "jobs", &s3, "s3://shared", json!({}))?)
            .await
            .expect_err("a Delete policy on a whole bucket is refused");
        assert!(refused.to_string().contains("deletionPolicy"), "{refused}");

        // Objects of the names a job would use, made by someone else.
        Api::<ConfigMap>::namespaced(client.clone(), "jobs")
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "squat-config"}, "data": {"keep": "me"}}))?)
            .await?;
        Api::<Service>::namespaced(client.clone(), "jobs")
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "squat-master"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}))?)
            .await?;
        create_secret(&client, "jobs", "squat-token", json!({"token": "stolen"})).await?;

        for (name, uri, extra) in [
            ("owned", "s3://shared/jobs/owned", json!({})),
            ("nocreds", "s3://shared/jobs/nocreds", json!({"checkpointCredentials": null})),
            ("again", "s3://shared/jobs/again", json!({"checkpoint": {"deletionPolicy": "Retain"}})),
            ("squat", "s3://shared/jobs/squat", json!({})),
        ] {
            api.create(&PostParams::default(), &job(name, "jobs", &s3, uri, extra)?).await?;
        }
        jobs(&client, "doomed").create(&PostParams::default(), &job("doomed", "doomed", &s3, "s3://shared/jobs/doomed", json!({}))?)
            .await?;

        // The squatter is blocked and names what is in its way; nothing of it runs.
        let s = wait_for("squat blocked", Duration::from_secs(60), async || {
            let s = status(&api.get("squat").await?);
            Ok((s["phase"] == "Blocked").then_some(s))
        })
        .await?;
        let message = s["message"].as_str().unwrap_or("");
        for name in ["ConfigMap squat-config", "Service squat-master", "Secret squat-token"] {
            assert!(message.contains(name), "{message}");
        }
        assert!(
            s["conditions"].as_array().into_iter().flatten().any(|c| c["reason"] == "NameConflict"),
            "{s}"
        );

        // Checkpoints written by the jobs that run.
        for name in ["owned", "again", "doomed"] {
            let ckpt = bucket.join("jobs").join(name);
            wait_for(&format!("{name}'s checkpoint"), Duration::from_secs(90), async || {
                Ok((ckpt.join("job.json").is_file() && fixtures::files_under(&ckpt.join("state")) > 0).then_some(()))
            })
            .await?;
        }
        // Only a job whose deletion has work to do holds a finalizer; its pods get no
        // Kubernetes token and a NetworkPolicy admits only its own pods and the operator.
        let finalizers = |o: &DynamicObject| o.metadata.finalizers.clone().unwrap_or_default();
        assert!(finalizers(&api.get("again").await?).is_empty());
        assert_eq!(finalizers(&api.get("owned").await?), vec!["sluice.dev/checkpoint"]);
        let pod = Api::<Pod>::namespaced(client.clone(), "jobs").get("owned-master-0").await?;
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert!(
            !spec.volumes.iter().flatten().any(|v| v.projected.is_some()),
            "no service account token volume"
        );
        let policy = Api::<NetworkPolicy>::namespaced(client.clone(), "jobs").get("owned-pods").await?;
        assert_eq!(
            policy.spec.and_then(|s| s.pod_selector).and_then(|s| s.match_labels).expect("selector")["sluice.dev/job"],
            "owned"
        );

        // Delete them all but "doomed", whose namespace goes below.
        for name in ["owned", "nocreds", "again", "squat"] {
            api.delete(name, &Default::default()).await?;
        }
        for name in ["owned", "nocreds", "again", "squat"] {
            wait_for(&format!("{name} gone"), Duration::from_secs(90), async || {
                Ok(api.get_opt(name).await?.is_none().then_some(()))
            })
            .await?;
        }
        // "owned": its checkpoint is gone; the README in its prefix and every neighbour stay.
        assert_eq!(layout_files(&bucket.join("jobs/owned")), 0, "the owned checkpoint is deleted");
        let deleted = notes(&events, "owned", "CheckpointDeleted").await?;
        assert_eq!(deleted.len(), 1, "{deleted:?}");
        // "nocreds": the operator's own credentials were not used.
        let left = notes(&events, "nocreds", "CheckpointRetained").await?;
        assert!(left.iter().any(|n| n.contains("checkpointCredentials")), "{left:?}");
        // "again" had Retain: its checkpoint stays.
        assert!(bucket.join("jobs/again/job.json").is_file());

        // A new job of the same name resumes that checkpoint, with Delete: it did not create
        // it, so its deletion leaves it.
        api.create(&PostParams::default(), &job("again", "jobs", &s3, "s3://shared/jobs/again", json!({}))?)
            .await?;
        wait_for("again running again", Duration::from_secs(90), async || {
            let s = status(&api.get("again").await?);
            Ok((s["phase"] == "Running" && s["lastCompletedBatch"].as_i64().unwrap_or(0) > 0).then_some(()))
        })
        .await?;
        api.delete("again", &Default::default()).await?;
        wait_for("again gone", Duration::from_secs(90), async || {
            Ok(api.get_opt("again").await?.is_none().then_some(()))
        })
        .await?;
        assert!(bucket.join("jobs/again/job.json").is_file(), "a checkpoint this job did not create is kept");
        let left = notes(&events, "again", "CheckpointRetained").await?;
        assert!(left.iter().any(|n| n.contains("created by another StreamingJob")), "{left:?}");

        // A namespace deleted with its job and the job's Secret: nothing hangs.
        Api::<Namespace>::all(client.clone()).delete("doomed", &Default::default()).await?;
        wait_for("the namespace gone", Duration::from_secs(150), async || {
            Ok(Api::<Namespace>::all(client.clone()).get_opt("doomed").await?.is_none().then_some(()))
        })
        .await?;

        // Every neighbour's object survived, byte for byte.
        for key in foreign {
            let text = std::fs::read_to_string(bucket.join(key))?;
            assert!(text.contains(key), "{key} changed: {text}");
        }
        // The squatted objects survived the job, untouched and still not owned by anyone.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cm = Api::<ConfigMap>::namespaced(client.clone(), "jobs").get("squat-config").await?;
        assert_eq!(cm.data.expect("data")["keep"], "me");
        assert!(cm.metadata.owner_references.is_none());
        let svc = Api::<Service>::namespaced(client.clone(), "jobs").get("squat-master").await?;
        assert!(svc.metadata.owner_references.is_none());
        let token = Api::<Secret>::namespaced(client.clone(), "jobs").get("squat-token").await?;
        assert_eq!(token.data.expect("data")["token"].0, b"stolen".to_vec());
        assert!(token.metadata.owner_references.is_none());
        Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!(
            "--- operator log:\n{}",
            sluice_e2e::process::last_lines(
                &std::fs::read_to_string(&log_path).unwrap_or_default(),
                80
            )
        );
        eprintln!("--- node agent log:\n{}", cluster.agent_log(40));
    }
    result
}
