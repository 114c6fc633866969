//! The StreamingJob CRD on a real API server: it is accepted and established, every example
//! passes a server-side dry run, and invalid manifests are refused by the API server itself
//! (schema and CEL rules) with the field path.

use std::path::Path;

use anyhow::Result;
use kube::api::{DynamicObject, Patch, PatchParams, ValidationDirective};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use sluice_e2e::control_plane::{ControlPlane, bin_dir};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn jobs(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("sluice.dev", "v1alpha1", "StreamingJob");
    Api::namespaced_with(client.clone(), "default", &ApiResource::from_gvk(&gvk))
}

/// A server-side apply dry run with strict field validation, as `kubectl apply --server-side
/// --dry-run=server` does.
async fn dry_run(client: &Client, manifest: &str) -> Result<(), String> {
    let mut obj: DynamicObject = yaml_serde::from_str(manifest).map_err(|e| e.to_string())?;
    obj.metadata.namespace = Some("default".into());
    let name = obj.metadata.name.clone().unwrap_or_default();
    let params = PatchParams {
        dry_run: true,
        force: true,
        field_manager: Some("sluice-e2e".into()),
        field_validation: Some(ValidationDirective::Strict),
    };
    jobs(client)
        .patch(&name, &params, &Patch::Apply(obj))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_accepts_examples_and_refuses_bad_manifests() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&bin_dir()?, dir.path()).await?;
    let client = cp.client().await?;
    sluice_e2e::crd::install(&client, &repo().join("crds/streamingjob.yaml")).await?;

    let mut examples = 0;
    let dirs = [repo().join("examples"), repo().join("examples/nexmark")];
    for entry in dirs
        .iter()
        .map(std::fs::read_dir)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path)?;
            dry_run(&client, &text)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            examples += 1;
        }
    }
    assert!(examples >= 20);

    let base = std::fs::read_to_string(repo().join("examples/hashtags.yaml"))?;
    let cases = [
        (
            base.replace("length: 10s, slide: 2s", "length: 10s, slide: 1500ms"),
            "spec.pipeline[].countByValueAndWindow: length and slide must be multiples",
        ),
        (
            base.replace(
                "batchInterval: 1s",
                "batchInterval: 1s\n  parallelism: lots",
            ),
            "spec.parallelism",
        ),
        (
            base.replace(
                "batchInterval: 1s",
                "batchInterval: 1s\n  workers: {replicas: -1}",
            ),
            "spec.workers.replicas",
        ),
        (
            base.replace("batchInterval: 1s", "batchInterval: 1s\n  speed: 3"),
            ".spec.speed: field not declared in schema",
        ),
        // One-of fields and durations, refused by the CRD's CEL rules at apply.
        (
            base.replace(
                "generator: {rate: 5000, seed: 7}",
                "generator: {rate: 5000, seed: 7}\n      files: {path: /in}",
            ),
            "spec.sources[]: set exactly one of socket, files, generator, kafka",
        ),
        (
            base.replace("    - stdout: {limit: 10}", "    - {}"),
            "spec.sinks[]: set exactly one of stdout, files, s3, kafka",
        ),
        (
            base.replace(
                "    - filter: {expr: \"value >= 20\"}",
                "    - filter: {expr: \"value >= 20\"}\n      count: {}",
            ),
            "spec.pipeline[]: set exactly one operation in each step",
        ),
        (
            base.replace("batchInterval: 1s", "batchInterval: 4ms"),
            "spec.batchInterval: a duration from 5ms to 1h",
        ),
    ];
    for (manifest, expected) in cases {
        let err = match dry_run(&client, &manifest).await {
            Ok(()) => {
                panic!("the API server accepted a manifest that should fail with {expected:?}")
            }
            Err(e) => e,
        };
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
    Ok(())
}

/// `helm upgrade` never upgrades a chart's CRDs: the operator applies its own at start where
/// the installed one is older, and leaves a newer operator's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_brings_an_older_crd_up_to_date() -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    use kube::api::PostParams;
    use sluice_crds::resource::StreamingJobResource;
    use sluice_e2e::control_plane::free_port;
    use sluice_e2e::fixtures::spawn_operator_with_env;
    use sluice_e2e::wait_for;
    use std::time::Duration;

    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&bin_dir()?, dir.path()).await?;
    let client = cp.client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "streamingjobs.sluice.dev";
    // The CRD as an older release had it: without spec.upgrade, and an older version.
    let older = |version: &str| -> Result<CustomResourceDefinition> {
        let mut crd = serde_json::to_value(StreamingJobResource::crd())?;
        let spec = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"];
        spec.as_object_mut()
            .and_then(|o| o.remove("upgrade"))
            .ok_or_else(|| anyhow::anyhow!("the CRD has no spec.upgrade"))?;
        crd["metadata"]["annotations"] =
            serde_json::json!({"sluice.dev/operator-version": version});
        Ok(serde_json::from_value(crd)?)
    };
    let has_upgrade = |crd: &CustomResourceDefinition| {
        serde_json::to_value(crd).is_ok_and(|v| {
            v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
                ["properties"]
                .get("upgrade")
                .is_some()
        })
    };
    let file = dir.path().join("older-crd.yaml");
    std::fs::write(&file, yaml_serde::to_string(&older("0.0.1")?)?)?;
    sluice_e2e::crd::install(&client, &file).await?;
    let manifest = std::fs::read_to_string(repo().join("examples/user-totals.yaml"))?.replace(
        "  batchInterval: 1s",
        "  batchInterval: 1s\n  upgrade: {allowStateLoss: true}",
    );
    let refused = dry_run(&client, &manifest)
        .await
        .expect_err("spec.upgrade is unknown to the older CRD");
    assert!(refused.contains("upgrade"), "{refused}");

    let start = |log: &str| {
        spawn_operator_with_env(
            &cp.kubeconfig,
            log,
            free_port()?,
            &dir.path().join(format!("{log}.log")),
            &[("SLUICE_MANAGE_CRD", "true")],
        )
    };
    let _operator = start("operator-new")?;
    wait_for("the CRD updated", Duration::from_secs(60), async || {
        let crd = crds.get(name).await?;
        let version = crd
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("sluice.dev/operator-version").cloned());
        Ok(
            (has_upgrade(&crd) && version.as_deref() == Some(env!("CARGO_PKG_VERSION")))
                .then_some(()),
        )
    })
    .await?;
    wait_for(
        "the new field accepted",
        Duration::from_secs(30),
        async || Ok(dry_run(&client, &manifest).await.ok()),
    )
    .await?;

    // A CRD a newer operator wrote stays as it is.
    let mut newer = older("99.0.0")?;
    let current = crds.get(name).await?;
    newer.metadata.resource_version = current.metadata.resource_version;
    crds.replace(name, &PostParams::default(), &newer).await?;
    let _older_operator = start("operator-old")?;
    let log = dir.path().join("operator-old.log");
    wait_for(
        "the old operator to say so",
        Duration::from_secs(60),
        async || {
            Ok(std::fs::read_to_string(&log)?
                .contains("Newer")
                .then_some(()))
        },
    )
    .await?;
    assert!(
        !has_upgrade(&crds.get(name).await?),
        "a newer operator's CRD was replaced"
    );
    Ok(())
}
