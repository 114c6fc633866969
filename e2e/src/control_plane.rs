//! A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager
//! and kube-scheduler as child processes, with fresh certificates and an admin kubeconfig.
//! Dropping it stops everything and leaves no process behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::pki::Pki;
use crate::process::Process;

/// A free TCP port on 127.0.0.1 (free when asked; good enough for tests).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where the control plane's binaries are: `$SLUICE_E2E_BIN`, or the cache that
/// `e2e/scripts/build-control-plane.sh` fills.
pub fn bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("SLUICE_E2E_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let version = std::env::var("K8S_VERSION").unwrap_or_else(|_| "v1.34.4".into());
    let cache = std::env::var("SLUICE_E2E_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/sluice-e2e")
        });
    let dir = cache.join(version).join("bin");
    for bin in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        if !dir.join(bin).exists() {
            bail!(
                "{} is missing: run e2e/scripts/build-control-plane.sh first (or set SLUICE_E2E_BIN)",
                dir.join(bin).display()
            );
        }
    }
    Ok(dir)
}

/// A running control plane.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub api_port: u16,
    pub pki: Pki,
    /// Started in this order, stopped in reverse.
    processes: Vec<Process>,
}

impl ControlPlane {
    /// Starts etcd, the API server, the controller manager and the scheduler under `dir`, and
    /// waits until the API server answers and the `default` service account exists.
    pub async fn start(bin: &Path, dir: &Path) -> Result<Self> {
        let started = Instant::now();
        std::fs::create_dir_all(dir)?;
        let pki = Pki::generate(&dir.join("pki"))?;
        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let mut cp = ControlPlane {
            dir: dir.to_path_buf(),
            kubeconfig: dir.join("kubeconfig"),
            api_port,
            pki,
            processes: Vec::new(),
        };

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.args(["--name", "e2e", "--log-level", "warn", "--unsafe-no-fsync"])
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("e2e={peer_url}")]);
        cp.processes
            .push(Process::spawn("etcd", etcd, &dir.join("etcd.log"))?);

        let p = &cp.pki;
        let mut api = Command::new(bin.join("kube-apiserver"));
        api.arg(format!("--etcd-servers={etcd_url}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--cert-dir={}", dir.join("apiserver").display()))
            .arg(format!("--tls-cert-file={}", p.server_cert.display()))
            .arg(format!("--tls-private-key-file={}", p.server_key.display()))
            .arg(format!("--client-ca-file={}", p.ca_cert.display()))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", p.sa_pub.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                p.sa_key.display()
            ))
            .args([
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--service-cluster-ip-range=10.0.0.0/24",
            ])
            .args([
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--enable-priority-and-fairness=false",
            ]);
        cp.processes.push(Process::spawn(
            "kube-apiserver",
            api,
            &dir.join("kube-apiserver.log"),
        )?);

        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: https://127.0.0.1:{api_port}\n    certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: admin\ncurrent-context: e2e\n",
            ca = p.ca_cert.display(),
            cert = p.admin_cert.display(),
            key = p.admin_key.display()
        );
        std::fs::write(&cp.kubeconfig, kubeconfig)?;

        let mut cm = Command::new(bin.join("kube-controller-manager"));
        cm.arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
            .args([
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                // A node whose agent stopped renewing its Lease is NotReady after 16 s (50 s
                // by default): the node-loss tests need not wait so long. The agent renews
                // every 2 s.
                "--node-monitor-grace-period=16s",
            ])
            .arg(format!(
                "--service-account-private-key-file={}",
                p.sa_key.display()
            ))
            .arg(format!("--root-ca-file={}", p.ca_cert.display()))
            .arg(format!(
                "--cluster-signing-cert-file={}",
                p.ca_cert.display()
            ))
            .arg(format!("--cluster-signing-key-file={}", p.ca_key.display()))
            .arg("--use-service-account-credentials=false");
        cp.processes.push(Process::spawn(
            "kube-controller-manager",
            cm,
            &dir.join("kube-controller-manager.log"),
        )?);

        let mut sched = Command::new(bin.join("kube-scheduler"));
        sched
            .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
            .args([
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
            ]);
        cp.processes.push(Process::spawn(
            "kube-scheduler",
            sched,
            &dir.join("kube-scheduler.log"),
        )?);

        cp.wait_ready(Duration::from_secs(120)).await?;
        tracing::info!(elapsed = ?started.elapsed(), port = api_port, "control plane ready");
        Ok(cp)
    }

    /// A client with the admin credentials.
    pub async fn client(&self) -> Result<Client> {
        client_for(&self.kubeconfig).await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_error = String::new();
        while Instant::now() < deadline {
            for p in &mut self.processes {
                if let Some(code) = p.exited() {
                    bail!(
                        "{} exited ({code:?}) during start-up:\n{}",
                        p.name,
                        p.tail(30)
                    );
                }
            }
            match self.client().await {
                Ok(client) => {
                    let ready = Api::<Namespace>::all(client.clone())
                        .get_opt("default")
                        .await;
                    let sa = Api::<ServiceAccount>::namespaced(client, "default")
                        .get_opt("default")
                        .await;
                    match (ready, sa) {
                        (Ok(Some(_)), Ok(Some(_))) => return Ok(()),
                        (Err(e), _) | (_, Err(e)) => last_error = e.to_string(),
                        _ => {
                            last_error =
                                "waiting for the default namespace and service account".into()
                        }
                    }
                }
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let logs: Vec<String> = self
            .processes
            .iter()
            .map(|p| format!("--- {}:\n{}", p.name, p.tail(15)))
            .collect();
        bail!(
            "control plane not ready after {timeout:?}: {last_error}\n{}",
            logs.join("\n")
        )
    }

    /// Stops every process, newest first.
    pub fn stop(&mut self) {
        while let Some(mut p) = self.processes.pop() {
            p.stop(Duration::from_secs(5));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Picks rustls' ring provider for the process: with several providers compiled in (the S3
/// client brings aws-lc), rustls refuses to guess.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<Client> {
    install_crypto_provider();
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("read {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}
