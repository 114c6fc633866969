//! A whole test cluster: the control plane plus a node agent process, torn down on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};

use crate::control_plane::{ControlPlane, bin_dir};
use crate::process::Process;

/// What a test cluster runs.
pub struct ClusterOptions {
    /// Work directory (certificates, logs, pod directories).
    pub dir: PathBuf,
    /// Node names.
    pub nodes: Vec<String>,
    /// Image name → local binary, for the node agent.
    pub images: Vec<(String, PathBuf)>,
    /// The `sluice-node-agent` binary.
    pub agent_bin: PathBuf,
}

/// A running cluster.
pub struct TestCluster {
    // Field order is drop order: the agent (and its pods) go before the control plane.
    agent: Process,
    agent_dir: PathBuf,
    pub control_plane: ControlPlane,
    pub client: Client,
    pub started_in: Duration,
}

impl TestCluster {
    /// Starts the control plane and the node agent; waits until every node is Ready.
    pub async fn start(options: ClusterOptions) -> Result<Self> {
        let started = Instant::now();
        let control_plane = ControlPlane::start(&bin_dir()?, &options.dir).await?;
        let client = control_plane.client().await?;
        let mut cmd = Command::new(&options.agent_bin);
        cmd.arg("--kubeconfig")
            .arg(&control_plane.kubeconfig)
            .arg("--dir")
            .arg(options.dir.join("agent"));
        cmd.arg("--nodes").arg(options.nodes.join(","));
        for (image, bin) in &options.images {
            cmd.arg("--image").arg(format!("{image}={}", bin.display()));
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let agent = Process::spawn(
            "sluice-node-agent",
            cmd,
            &options.dir.join("node-agent.log"),
        )?;
        let mut cluster = TestCluster {
            agent,
            agent_dir: options.dir.join("agent"),
            control_plane,
            client,
            started_in: Duration::ZERO,
        };
        cluster
            .wait_nodes_ready(&options.nodes, Duration::from_secs(60))
            .await?;
        cluster.started_in = started.elapsed();
        Ok(cluster)
    }

    async fn wait_nodes_ready(&mut self, nodes: &[String], timeout: Duration) -> Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(code) = self.agent.exited() {
                bail!("the node agent exited ({code:?}):\n{}", self.agent.tail(30));
            }
            let mut ready = 0;
            for n in nodes {
                let node = api.get_opt(n).await?;
                let is_ready = node
                    .and_then(|n| n.status)
                    .and_then(|s| s.conditions)
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                ready += usize::from(is_ready);
            }
            if ready == nodes.len() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "nodes not Ready after {timeout:?}; agent log:\n{}",
            self.agent.tail(30)
        )
    }

    /// The node agent's recent log, for failure messages.
    pub fn agent_log(&self, lines: usize) -> String {
        self.agent.tail(lines)
    }

    /// Container processes of the pods whose name `matches`, from their `HOSTNAME`.
    fn processes_where(&self, matches: impl Fn(&str) -> bool) -> Result<Vec<u32>> {
        let Some(agent) = self.agent.pid() else {
            bail!("the node agent is not running");
        };
        Ok(crate::process::descendants(agent)
            .into_iter()
            .filter(|pid| {
                let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                environ.split(|b| *b == 0).any(|var| {
                    var.strip_prefix(b"HOSTNAME=")
                        .is_some_and(|host| matches(&String::from_utf8_lossy(host)))
                })
            })
            .collect())
    }

    /// How many container processes run for pods whose name starts with `prefix`.
    pub fn pod_processes(&self, prefix: &str) -> Result<usize> {
        Ok(self.processes_where(|host| host.starts_with(prefix))?.len())
    }

    /// Kills (SIGKILL) the container processes of pod `pod`, as a crash or the OOM killer
    /// would; the node agent then restarts them as a kubelet does. Returns how many it killed.
    pub fn kill_pod_processes(&self, pod: &str) -> Result<usize> {
        let pids = self.processes_where(|host| host == pod)?;
        for pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Ok(pids.len())
    }

    /// Freezes `node` as a machine that stops answering does: its agent stops renewing its
    /// Lease (the node lifecycle controller marks it NotReady) and leaves its pods alone, and
    /// the processes of `pods` (the pods bound to it) are stopped (SIGSTOP). Returns the
    /// stopped processes, for [`TestCluster::thaw_processes`].
    pub fn freeze_node(&self, node: &str, pods: &[String]) -> Result<Vec<u32>> {
        let marker = crate::agent::frozen_marker(&self.agent_dir, node);
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&marker, b"")?;
        let pids = self.processes_where(|host| pods.iter().any(|p| p == host))?;
        for pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGSTOP,
            );
        }
        Ok(pids)
    }

    /// Lets stopped processes run again (SIGCONT), on a node still frozen: they act on what
    /// they knew before, as processes on a machine whose network comes back before its
    /// kubelet has caught up.
    pub fn thaw_processes(&self, pids: &[u32]) {
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }

    /// Ends a freeze: the agent renews the node's Lease and Ready condition again, and kills
    /// what is left of pods deleted meanwhile, as a kubelet that comes back does.
    pub fn unfreeze_node(&self, node: &str) -> Result<()> {
        std::fs::remove_file(crate::agent::frozen_marker(&self.agent_dir, node))?;
        Ok(())
    }

    /// The last `lines` of the logs of every container of pods whose name starts with
    /// `prefix`, current and past runs alike, for failure messages.
    pub fn pod_logs(&self, prefix: &str, lines: usize) -> String {
        let mut out = String::new();
        let pods = std::fs::read_dir(self.agent_dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten();
        for pod in pods {
            let dir_name = pod.file_name().to_string_lossy().into_owned();
            // Directories are named <namespace>_<pod>_<uid>.
            let pod_name = dir_name.split('_').nth(1).unwrap_or("");
            if !pod_name.starts_with(prefix) {
                continue;
            }
            for log in std::fs::read_dir(pod.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if log.path().extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                    out.push_str(&format!(
                        "--- {dir_name}/{}\n",
                        log.file_name().to_string_lossy()
                    ));
                    out.push_str(&crate::process::last_lines(&text, lines));
                    out.push('\n');
                }
            }
        }
        out
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.control_plane.kubeconfig
    }
}
