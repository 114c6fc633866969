//! The committed CRD YAML must be what the Rust types generate.
#![cfg(feature = "kube")]

#[test]
fn committed_crd_matches_the_types() {
    let generated = sluice_crds::resource::crd_yaml().expect("the CRD serializes");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // The Helm chart installs its own copy.
    for path in [
        root.join("streamingjob.yaml"),
        root.join("../charts/sluice/crds/streamingjob.yaml"),
    ] {
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is out of date: run `cargo run -p sluice-crds --features kube --bin crdgen crds/streamingjob.yaml` and copy it to charts/sluice/crds/",
            path.display()
        );
    }
}

#[test]
fn deployment_fields_are_the_resource_fields_beyond_the_job() {
    use kube::CustomResourceExt;
    let crd =
        serde_json::to_value(sluice_crds::resource::StreamingJobResource::crd()).expect("json");
    let props = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let job =
        serde_json::to_value(schemars::schema_for!(sluice_crds::StreamingJobSpec)).expect("json");
    let job_fields: std::collections::BTreeSet<String> = job["properties"]
        .as_object()
        .expect("props")
        .keys()
        .cloned()
        .collect();
    let mut extra: Vec<String> = props
        .as_object()
        .expect("props")
        .keys()
        .filter(|k| !job_fields.contains(*k))
        .cloned()
        .collect();
    extra.sort();
    let mut listed: Vec<String> = sluice_crds::DEPLOYMENT_FIELDS
        .iter()
        .map(|s| s.to_string())
        .collect();
    listed.sort();
    assert_eq!(extra, listed);
}

#[test]
fn a_cluster_manifest_runs_locally() {
    let text = "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {name: a}\nspec:\n  batchInterval: 1s\n  image: ghcr.io/x/sluice:1\n  workers: {replicas: 3}\n  sources: [{name: g, generator: {rate: 1}}]\n  sinks: [{stdout: {}}]\n";
    assert!(sluice_crds::load(text).is_ok());
}

#[test]
fn kubectl_explain_describes_the_resource_and_hpa_can_target_it() {
    use kube::CustomResourceExt;
    let crd =
        serde_json::to_value(sluice_crds::resource::StreamingJobResource::crd()).expect("json");
    let version = &crd["spec"]["versions"][0];
    let root = version["schema"]["openAPIV3Schema"]["description"]
        .as_str()
        .expect("a description");
    assert!(
        root.starts_with("A Sluice streaming job") && !root.contains("Auto-generated"),
        "{root}"
    );
    assert_eq!(
        version["subresources"]["scale"]["labelSelectorPath"],
        ".status.selector"
    );
}

/// kubectl and Helm read YAML 1.1, where a bare `y`, `n`, `yes`, `no`, `on` or `off` is a bool:
/// a field so named turns into `false` on its way to the API server (a `top.n` did, and Helm
/// refused the CRD). No field of the schema may have such a name.
#[test]
fn no_field_is_named_like_a_yaml_1_1_bool() {
    use kube::CustomResourceExt;
    const BOOLS: [&str; 22] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
    ];
    fn walk(schema: &serde_json::Value, path: &str, bad: &mut Vec<String>) {
        match schema {
            serde_json::Value::Object(fields) => {
                if let Some(serde_json::Value::Object(props)) = fields.get("properties") {
                    for (name, sub) in props {
                        if BOOLS.contains(&name.as_str()) {
                            bad.push(format!("{path}.{name}"));
                        }
                        walk(sub, &format!("{path}.{name}"), bad);
                    }
                }
                for (key, sub) in fields {
                    if key != "properties" {
                        walk(sub, path, bad);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, path, bad)),
            _ => {}
        }
    }
    let crd =
        serde_json::to_value(sluice_crds::resource::StreamingJobResource::crd()).expect("json");
    let mut bad = Vec::new();
    walk(&crd["spec"]["versions"], "", &mut bad);
    assert!(bad.is_empty(), "fields named like YAML 1.1 bools: {bad:?}");
}
