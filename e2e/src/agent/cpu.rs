//! CPU limits, as a kubelet enforces them: a container with `resources.limits.cpu` runs in a
//! cgroup of its own whose CFS quota is the limit (`250m`: 25 ms of CPU per 100 ms), so a
//! process at its limit is throttled as it would be on a node. Tests that need a worker's
//! capacity bounded (autoscaling on a 2-core machine) rely on it.
//!
//! cgroup v1 (`/sys/fs/cgroup/cpu`, `cpu.cfs_quota_us`) and v2 (`cpu.max`, where the cpu
//! controller is enabled at the root) are supported; without either, a container with a CPU
//! limit does not start, with the reason, rather than run unlimited.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The CFS period: the quota is a share of it.
const PERIOD_US: u64 = 100_000;
/// Where this agent's cgroups go, under the cpu hierarchy.
const PARENT: &str = "sluice-e2e";

/// `quantity` (`250m`, `1`, `0.5`) in millicores.
pub fn millicores(quantity: &Quantity) -> Result<u64> {
    let text = quantity.0.trim();
    let bad = || anyhow!("resources.limits.cpu {text:?} is not a CPU quantity such as 250m or 1");
    if let Some(milli) = text.strip_suffix('m') {
        return milli.parse::<u64>().map_err(|_| bad());
    }
    let cores: f64 = text.parse().map_err(|_| bad())?;
    if !cores.is_finite() || cores < 0.0 {
        return Err(bad());
    }
    Ok((cores * 1000.0).round() as u64)
}

/// The cpu hierarchy: the cgroup v1 cpu controller's mount, or the v2 root with cpu enabled.
enum Hierarchy {
    V1(PathBuf),
    V2(PathBuf),
}

fn hierarchy() -> Result<Hierarchy> {
    let v1 = Path::new("/sys/fs/cgroup/cpu");
    if v1.join("cpu.cfs_quota_us").exists() {
        return Ok(Hierarchy::V1(v1.to_path_buf()));
    }
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let root = Path::new(root);
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "cpu") {
            return Ok(Hierarchy::V2(root.to_path_buf()));
        }
    }
    bail!(
        "this machine offers no writable cgroup cpu controller (/sys/fs/cgroup/cpu or cgroup v2 with cpu), so a CPU limit cannot be enforced"
    )
}

/// Makes the cgroup of container `container` of pod `pod_uid` with a quota of `millicores`;
/// returns the file a process writes its PID into to join it.
pub fn limit(pod_uid: &str, container: &str, millicores: u64) -> Result<PathBuf> {
    let quota = (millicores * PERIOD_US / 1000).max(1000);
    match hierarchy()? {
        Hierarchy::V1(root) => {
            let dir = root.join(PARENT).join(format!("{pod_uid}_{container}"));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot make cgroup {}", dir.display()))?;
            std::fs::write(dir.join("cpu.cfs_period_us"), PERIOD_US.to_string())?;
            std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())
                .with_context(|| format!("cannot set the CPU quota of {}", dir.display()))?;
            Ok(dir.join("cgroup.procs"))
        }
        Hierarchy::V2(root) => {
            let parent = root.join(PARENT);
            std::fs::create_dir_all(&parent)?;
            // Children get the cpu controller only where their parent passes it on.
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+cpu");
            let dir = parent.join(format!("{pod_uid}_{container}"));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot make cgroup {}", dir.display()))?;
            std::fs::write(dir.join("cpu.max"), format!("{quota} {PERIOD_US}"))
                .with_context(|| format!("cannot set the CPU quota of {}", dir.display()))?;
            Ok(dir.join("cgroup.procs"))
        }
    }
}

/// Removes the cgroups of pod `pod_uid` whose processes are gone (best effort: a cgroup
/// with a process left in it stays).
pub fn remove(pod_uid: &str) {
    let Ok(h) = hierarchy() else { return };
    let parent = match h {
        Hierarchy::V1(root) | Hierarchy::V2(root) => root.join(PARENT),
    };
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(&format!("{pod_uid}_"))
        {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_become_millicores() {
        let q = |s: &str| millicores(&Quantity(s.into()));
        assert_eq!(q("250m").ok(), Some(250));
        assert_eq!(q("1").ok(), Some(1000));
        assert_eq!(q("0.5").ok(), Some(500));
        assert!(q("lots").is_err());
        assert!(q("-1").is_err());
    }
}
