//! The Helm chart: `helm lint` is clean, and everything `helm template` renders is accepted by
//! the real API server (server-side dry run, strict field validation), cluster-wide and with
//! `watchNamespaces`.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};
use sluice_e2e::control_plane::{ControlPlane, bin_dir};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn run(cmd: &mut Command, input: Option<&str>) -> Result<String> {
    let out = sluice_e2e::fixtures::run_with_input(cmd, input)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Prometheus Operator's CRDs: `$SLUICE_PROMETHEUS_CRDS`, or the cache
/// `e2e/scripts/install-prometheus-crds.sh` fills (scripts/test runs it).
fn prometheus_crds() -> Result<std::path::PathBuf> {
    if let Ok(dir) = std::env::var("SLUICE_PROMETHEUS_CRDS") {
        return Ok(dir.into());
    }
    let out = run(
        &mut Command::new(repo().join("e2e/scripts/install-prometheus-crds.sh")),
        None,
    )?;
    Ok(out.trim().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_lints_and_renders_objects_the_api_server_accepts() -> Result<()> {
    let bin = bin_dir()?;
    let chart = repo().join("charts/sluice");
    let lint = run(
        Command::new(bin.join("helm"))
            .arg("lint")
            .arg(&chart)
            .arg("--strict"),
        None,
    )?;
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    // values.schema.json refuses what the templates would misread.
    for (value, field) in [("logFormat=xml", "logFormat"), ("replicas=0", "replicas")] {
        let refused = run(
            Command::new(bin.join("helm"))
                .args(["template", "sluice", "--kube-version", "1.34.4"])
                .arg(&chart)
                .args(["--set", value]),
            None,
        );
        let Err(why) = refused else {
            panic!("helm accepted --set {value}");
        };
        assert!(why.to_string().contains(field), "{why}");
    }

    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&bin, dir.path()).await?;
    let kubectl = |args: &[&str], input: Option<&str>| {
        run(
            Command::new(bin.join("kubectl"))
                .arg("--kubeconfig")
                .arg(&cp.kubeconfig)
                .args(args),
            input,
        )
    };
    // Our own install waits for Established (kubectl wait fails while conditions are still unset).
    sluice_e2e::crd::install(&cp.client().await?, &chart.join("crds/streamingjob.yaml")).await?;
    // The monitors the chart renders are checked against the Prometheus Operator's own CRDs.
    let prometheus = prometheus_crds()?;
    for kind in ["servicemonitors", "podmonitors"] {
        let file = prometheus.join(format!("monitoring.coreos.com_{kind}.yaml"));
        sluice_e2e::crd::install(&cp.client().await?, &file).await?;
    }
    kubectl(&["create", "namespace", "sluice-system"], None)?;
    for ns in ["team-a", "team-b"] {
        kubectl(&["create", "namespace", ns], None)?;
    }
    for (cluster_wide, extra) in [
        (
            true,
            vec![
                "--set",
                "metrics.serviceMonitor.enabled=true",
                "--set",
                "metrics.podMonitor.enabled=true",
            ],
        ),
        (
            false,
            vec![
                "--set",
                "metrics.podMonitor.enabled=true",
                "--set",
                "watchNamespaces={team-a,team-b}",
                "--set",
                "metrics.enabled=false",
            ],
        ),
    ] {
        let rendered = run(
            Command::new(bin.join("helm"))
                .args(["template", "sluice", "--kube-version", "1.34.4"])
                .arg(&chart)
                .args(["--namespace", "sluice-system"])
                .args(&extra),
            None,
        )?;
        assert!(rendered.contains("kind: Deployment"), "{rendered}");
        let applied = kubectl(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--field-manager=e2e",
                "-f",
                "-",
            ],
            Some(&rendered),
        )?;
        let objects = applied.lines().count();
        assert!(objects >= 6, "only {objects} objects applied:\n{applied}");
        assert!(
            applied.contains("podmonitor.monitoring.coreos.com/sluice-operator-jobs")
                && applied.contains("poddisruptionbudget.policy/sluice-operator"),
            "{applied}"
        );
        if cluster_wide {
            assert!(
                applied.contains("clusterrole.rbac.authorization.k8s.io/sluice-operator")
                    && applied.contains("servicemonitor.monitoring.coreos.com/sluice-operator"),
                "{applied}"
            );
        } else {
            // Namespaced: the jobs' rights per namespace; cluster-wide only reading nodes and
            // keeping the one CRD current.
            let cluster_roles: Vec<&str> = applied
                .lines()
                .filter_map(|l| l.strip_prefix("clusterrole.rbac.authorization.k8s.io/"))
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            assert!(
                applied.contains("role.rbac.authorization.k8s.io/sluice-operator")
                    && cluster_roles == ["sluice-operator-crd", "sluice-operator-nodes"],
                "{applied}"
            );
        }
    }
    Ok(())
}
