//! What end-to-end tests share: the workspace's binaries, an S3 server (s3s-fs) on a local
//! directory, namespaces, and an operator process.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::control_plane::free_port;
use crate::process::Process;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).to_path_buf()
}

/// A binary of the workspace, from the target directory the running test or tool was built in
/// (`target/<profile>/deps/<test>` or `target/<profile>/<tool>` → `target/<profile>/<name>`).
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let here = exe
        .parent()
        .ok_or_else(|| anyhow!("no directory above {}", exe.display()))?;
    let dir = if here.ends_with("deps") {
        here.parent().unwrap_or(here)
    } else {
        here
    };
    let bin = dir.join(name);
    if !bin.exists() {
        bail!(
            "{} is missing: build the binaries first (`cargo build --workspace --bins`; scripts/test does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The s3s-fs binary `scripts/test` installs (`SLUICE_S3S_FS` overrides).
pub fn s3s_fs_bin() -> PathBuf {
    std::env::var("SLUICE_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/sluice-e2e/s3s-fs-0.14.1/bin/s3s-fs")
        })
}

/// An S3-compatible server on 127.0.0.1 keeping each bucket as a directory under `root`.
pub struct S3Server {
    pub root: PathBuf,
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
    _process: Process,
}

impl S3Server {
    /// Starts s3s-fs on a free port with `buckets` created; its log goes to `log`.
    pub fn start(root: &Path, buckets: &[&str], log: &Path) -> Result<Self> {
        for bucket in buckets {
            std::fs::create_dir_all(root.join(bucket))?;
        }
        let port = free_port()?;
        let (access_key, secret_key) = ("e2e-key".to_string(), "e2e-secret-0000".to_string());
        let mut cmd = Command::new(s3s_fs_bin());
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &access_key, "--secret-key", &secret_key])
            .arg(root);
        let process = Process::spawn("s3s-fs", cmd, log)?;
        Ok(Self {
            root: root.to_path_buf(),
            port,
            access_key,
            secret_key,
            _process: process,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The variables the AWS SDK (and so every sluice pod) reads to reach this server.
    pub fn credentials(&self) -> serde_json::Value {
        serde_json::json!({
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint(),
        })
    }
}

/// Creates namespace `name`.
pub async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?,
        )
        .await?;
    Ok(())
}

/// A cluster ready for StreamingJobs: the CRD installed, the namespace `jobs` with the Secret
/// `s3-creds` that [`S3Server`]'s credentials go in.
pub async fn prepare_jobs_namespace(client: &Client) -> Result<()> {
    crate::crd::install(client, &repo().join("crds/streamingjob.yaml")).await?;
    create_namespace(client, "jobs").await?;
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "jobs")
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "s3-creds"}, "stringData": {
                "AWS_ACCESS_KEY_ID": "e2e-key", "AWS_SECRET_ACCESS_KEY": "e2e-secret-0000", "AWS_REGION": "us-east-1"}}))?,
        )
        .await?;
    Ok(())
}

/// Runs `sluice-operator` as a local process against `kubeconfig`, as replica `name`, with
/// its metrics on `metrics_port`.
pub fn spawn_operator(
    kubeconfig: &Path,
    name: &str,
    metrics_port: u16,
    log: &Path,
) -> Result<Process> {
    spawn_operator_with_env(kubeconfig, name, metrics_port, log, &[])
}

/// [`spawn_operator`] with more environment variables (say, credentials of its own).
pub fn spawn_operator_with_env(
    kubeconfig: &Path,
    name: &str,
    metrics_port: u16,
    log: &Path,
    env: &[(&str, &str)],
) -> Result<Process> {
    spawn_operator_binary(
        &workspace_bin("sluice-operator")?,
        kubeconfig,
        name,
        metrics_port,
        log,
        env,
    )
}

/// [`spawn_operator_with_env`] with another build of the operator (say, an older one to
/// compare with).
pub fn spawn_operator_binary(
    binary: &Path,
    kubeconfig: &Path,
    name: &str,
    metrics_port: u16,
    log: &Path,
    env: &[(&str, &str)],
) -> Result<Process> {
    let mut operator = Command::new(binary);
    operator
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .env("SLUICE_METRICS_PORT", metrics_port.to_string())
        .env("POD_NAME", name)
        .env("POD_NAMESPACE", "default")
        .envs(env.iter().copied());
    Process::spawn(name, operator, log)
}

/// A plain HTTP GET to 127.0.0.1 (or `host`), returning the whole response.
pub fn http_get(host: &str, port: u16, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((host, port))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// Regular files below `dir` (s3s-fs keeps one per object).
pub fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        files_under(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Runs `cmd` with `input` on its standard input (or none), capturing its output.
pub fn run_with_input(cmd: &mut Command, input: Option<&str>) -> Result<Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("start {cmd:?}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin.write_all(text.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// The batches a files or S3 sink wrote under `dir` (s3s-fs keeps one file per object): the
/// lines of each `batch-<time>/part-*` object, sorted, by batch time.
pub fn sink_batches(dir: &Path) -> std::collections::BTreeMap<u64, Vec<String>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(time) = name
            .strip_prefix("batch-")
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        let mut lines = Vec::new();
        for part in std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if part.file_name().to_string_lossy().starts_with("part-") {
                let text = std::fs::read_to_string(part.path()).unwrap_or_default();
                lines.extend(text.lines().map(String::from));
            }
        }
        lines.sort();
        out.insert(time, lines);
    }
    out
}

/// Appends a test's report to `$SLUICE_E2E_REPORT` when set (`scripts/test` prints the file
/// after the tests; each test binary adds its own).
pub fn append_report(text: &str) -> Result<()> {
    use std::io::Write;
    let Ok(path) = std::env::var("SLUICE_E2E_REPORT") else {
        return Ok(());
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{text}"))
        .with_context(|| format!("write {path}"))
}
