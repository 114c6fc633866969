//! One pod as local processes: its volumes as files, its containers' environment and command,
//! a private mount namespace per container for mounts and `/etc/hosts`, restarts with
//! back-off, and the status the API server is told.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret, Volume};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::process::Process;

/// What the agent knows that pods need.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Pod directories, logs and hosts files go here.
    pub dir: PathBuf,
    /// Image (without tag) → the local binary that stands for it.
    pub images: Vec<(String, PathBuf)>,
    /// The API server as pods reach it (KUBERNETES_SERVICE_HOST/PORT).
    pub api_host: String,
    pub api_port: u16,
}

impl AgentConfig {
    fn binary_for(&self, image: &str) -> Option<&Path> {
        let repo = image.rsplit_once('@').map_or(image, |(r, _)| r);
        let repo = match repo.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => repo,
        };
        self.images
            .iter()
            .find(|(name, _)| name == repo || repo.ends_with(&format!("/{name}")))
            .map(|(_, p)| p.as_path())
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// How to start one container.
#[derive(Clone, Debug)]
struct Launch {
    program: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    /// (source on the host, path in the container, read-only)
    mounts: Vec<(PathBuf, String, bool)>,
    workdir: Option<String>,
    /// `resources.limits.cpu` in millicores, enforced by a cgroup.
    cpu_millicores: Option<u64>,
}

#[derive(Debug)]
struct ContainerRun {
    name: String,
    image: String,
    launch: Launch,
    process: Option<Process>,
    restarts: i32,
    started_at: Option<(String, Instant)>,
    /// Exit code, start and finish times of the previous run.
    last_exit: Option<(i32, String, String)>,
    /// The tail of the log of a failed run, with `terminationMessagePolicy:
    /// FallbackToLogsOnError`.
    last_message: Option<String>,
    logs_on_error: bool,
    next_start: Instant,
    backoff: Duration,
    finished: bool,
    /// Its gRPC readiness probe: the checks run while the process does.
    readiness: Option<super::probe::GrpcProbe>,
    probe_ok: std::sync::Arc<std::sync::atomic::AtomicBool>,
    prober: Option<tokio::task::JoinHandle<()>>,
}

impl ContainerRun {
    /// Ready: running, and its readiness probe (if any) answered SERVING last.
    fn ready(&self) -> bool {
        self.process.is_some()
            && (self.readiness.is_none()
                || self.probe_ok.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn stop_probing(&mut self) {
        if let Some(p) = self.prober.take() {
            p.abort();
        }
        self.probe_ok
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A pod this agent runs.
pub struct PodRun {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub ip: String,
    dir: PathBuf,
    restart_policy: String,
    containers: Vec<ContainerRun>,
    /// Names and images of the pod's containers, reported while it cannot start them.
    declared: Vec<(String, String)>,
    /// Why the pod cannot start yet (a missing Secret, an unknown image).
    pub waiting: Option<(String, String)>,
    start_time: String,
    /// When SIGKILL follows SIGTERM.
    pub kill_at: Option<Instant>,
    last_status: Option<Value>,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    // Kubernetes' $(VAR) references; unknown ones stay as written, $$( escapes.
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("$(") {
        if i > 0 && rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("$(");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        match rest[i + 2..].find(')') {
            Some(end) => {
                let name = &rest[i + 2..i + 2 + end];
                match env.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&rest[i..i + 3 + end]),
                }
                rest = &rest[i + 3 + end..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn field_ref(pod: &Pod, ip: &str, path: &str) -> Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let pick = |map: Option<&BTreeMap<String, String>>, key: &str| {
        map.and_then(|m| m.get(key)).cloned().unwrap_or_default()
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => ip.to_string(),
        "status.hostIP" => "127.0.0.1".to_string(),
        p if p.starts_with("metadata.labels['") => pick(
            meta.labels.as_ref(),
            p.trim_start_matches("metadata.labels['")
                .trim_end_matches("']"),
        ),
        p if p.starts_with("metadata.annotations['") => pick(
            meta.annotations.as_ref(),
            p.trim_start_matches("metadata.annotations['")
                .trim_end_matches("']"),
        ),
        other => bail!("fieldRef {other} is not supported by the test node agent"),
    })
}

async fn secret(client: &Client, ns: &str, name: &str) -> Result<Option<BTreeMap<String, String>>> {
    let s: Option<Secret> = Api::namespaced(client.clone(), ns).get_opt(name).await?;
    Ok(s.map(|s| {
        let mut data: BTreeMap<String, String> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect();
        data.extend(s.string_data.unwrap_or_default());
        data
    }))
}

async fn config_map(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>> {
    let c: Option<ConfigMap> = Api::namespaced(client.clone(), ns).get_opt(name).await?;
    Ok(c.map(|c| c.data.unwrap_or_default()))
}

fn write_files(
    dir: &Path,
    data: &BTreeMap<String, String>,
    items: Option<&[(String, String)]>,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    match items {
        Some(items) => {
            for (key, path) in items {
                let value = data
                    .get(key)
                    .ok_or_else(|| anyhow!("key {key} is missing"))?;
                let file = dir.join(path);
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(file, value)?;
            }
        }
        None => {
            for (key, value) in data {
                std::fs::write(dir.join(key), value)?;
            }
        }
    }
    Ok(())
}

/// The last lines of a container log, as a kubelet reports them for a failed container.
fn log_tail(path: &Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let start = text.len().saturating_sub(2048);
    Some(crate::process::last_lines(
        &String::from_utf8_lossy(&text[start..]),
        10,
    ))
}

/// An image the agent has no binary for.
#[derive(Debug, thiserror::Error)]
#[error("image {0} is not mapped to a local binary (--image NAME=PATH)")]
struct UnknownImage(String);

impl PodRun {
    /// Prepares a pod: directory, volumes, and each container's command and environment. A
    /// missing Secret or ConfigMap or an unknown image leaves it waiting with a reason.
    pub async fn prepare(
        client: &Client,
        config: &AgentConfig,
        pod: &Pod,
        ip: String,
        hosts_file: &Path,
    ) -> PodRun {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let dir = config
            .dir
            .join("pods")
            .join(format!("{namespace}_{name}_{uid}"));
        let mut run = PodRun {
            uid,
            namespace,
            name,
            ip,
            dir,
            restart_policy: pod
                .spec
                .as_ref()
                .and_then(|s| s.restart_policy.clone())
                .unwrap_or_else(|| "Always".into()),
            containers: Vec::new(),
            declared: pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                .collect(),
            waiting: None,
            start_time: now_rfc3339(),
            kill_at: None,
            last_status: None,
        };
        if let Err(e) = run.build(client, config, pod, hosts_file).await {
            // As a kubelet would say it: an image it cannot get is a pull error.
            let reason = if e.chain().any(|c| c.is::<UnknownImage>()) {
                "ErrImagePull"
            } else {
                "CreateContainerConfigError"
            };
            run.waiting = Some((reason.into(), format!("{e:#}")));
        }
        run
    }

    async fn build(
        &mut self,
        client: &Client,
        config: &AgentConfig,
        pod: &Pod,
        hosts_file: &Path,
    ) -> Result<()> {
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| anyhow!("pod has no spec"))?;
        if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
            bail!("init containers are not supported by the test node agent");
        }
        std::fs::create_dir_all(self.dir.join("volumes"))?;
        let mut volumes = BTreeMap::new();
        for v in spec.volumes.iter().flatten() {
            volumes.insert(
                v.name.clone(),
                self.volume(client, pod, v)
                    .await
                    .with_context(|| format!("volume {}", v.name))?,
            );
        }
        let mut containers = Vec::new();
        for c in &spec.containers {
            let launch = self
                .launch(client, config, pod, c, &volumes, hosts_file)
                .await
                .with_context(|| format!("container {}", c.name))?;
            containers.push(ContainerRun {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                launch,
                process: None,
                restarts: 0,
                started_at: None,
                last_exit: None,
                last_message: None,
                logs_on_error: c.termination_message_policy.as_deref()
                    == Some("FallbackToLogsOnError"),
                next_start: Instant::now(),
                backoff: Duration::from_secs(1),
                finished: false,
                readiness: super::probe::GrpcProbe::of(c),
                probe_ok: Default::default(),
                prober: None,
            });
        }
        self.containers = containers;
        Ok(())
    }

    async fn volume(&self, client: &Client, pod: &Pod, v: &Volume) -> Result<PathBuf> {
        let dir = self.dir.join("volumes").join(&v.name);
        let ns = &self.namespace;
        let items_of = |items: &Option<Vec<k8s_openapi::api::core::v1::KeyToPath>>| {
            items.as_ref().map(|i| {
                i.iter()
                    .map(|k| (k.key.clone(), k.path.clone()))
                    .collect::<Vec<_>>()
            })
        };
        if let Some(cm) = &v.config_map {
            match config_map(client, ns, &cm.name).await? {
                Some(data) => write_files(&dir, &data, items_of(&cm.items).as_deref())?,
                None if cm.optional == Some(true) => std::fs::create_dir_all(&dir)?,
                None => bail!("ConfigMap {ns}/{} not found", cm.name),
            }
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            match secret(client, ns, &name).await? {
                Some(data) => write_files(&dir, &data, items_of(&s.items).as_deref())?,
                None if s.optional == Some(true) => std::fs::create_dir_all(&dir)?,
                None => bail!("Secret {ns}/{name} not found"),
            }
        } else if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir)?;
        } else if let Some(h) = &v.host_path {
            return Ok(PathBuf::from(&h.path));
        } else if let Some(p) = &v.projected {
            std::fs::create_dir_all(&dir)?;
            for source in p.sources.iter().flatten() {
                if let Some(cm) = &source.config_map
                    && let Some(data) = config_map(client, ns, &cm.name).await?
                {
                    write_files(&dir, &data, items_of(&cm.items).as_deref())?;
                }
                if let Some(s) = &source.secret
                    && let Some(data) = secret(client, ns, &s.name).await?
                {
                    write_files(&dir, &data, items_of(&s.items).as_deref())?;
                }
                if let Some(d) = &source.downward_api {
                    for item in d.items.iter().flatten() {
                        if let Some(f) = &item.field_ref {
                            std::fs::write(
                                dir.join(&item.path),
                                field_ref(pod, &self.ip, &f.field_path)?,
                            )?;
                        }
                    }
                }
                if let Some(t) = &source.service_account_token {
                    let sa = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone())
                        .unwrap_or_else(|| "default".into());
                    let token =
                        request_token(client, ns, &sa, t.expiration_seconds.unwrap_or(3600), pod)
                            .await?;
                    std::fs::write(dir.join(&t.path), token)?;
                }
            }
        } else {
            bail!(
                "this volume type is not supported by the test node agent (configMap, secret, emptyDir, hostPath and projected are)"
            );
        }
        Ok(dir)
    }

    async fn launch(
        &self,
        client: &Client,
        config: &AgentConfig,
        pod: &Pod,
        c: &Container,
        volumes: &BTreeMap<String, PathBuf>,
        hosts_file: &Path,
    ) -> Result<Launch> {
        let image = c.image.clone().unwrap_or_default();
        let entry = config
            .binary_for(&image)
            .ok_or_else(|| UnknownImage(image.clone()))?;
        let mut env = BTreeMap::new();
        env.insert("HOSTNAME".to_string(), self.name.clone());
        env.insert(
            "KUBERNETES_SERVICE_HOST".to_string(),
            config.api_host.clone(),
        );
        env.insert(
            "KUBERNETES_SERVICE_PORT".to_string(),
            config.api_port.to_string(),
        );
        env.insert(
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        );
        for from in c.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            let data = if let Some(r) = &from.config_map_ref {
                config_map(client, &self.namespace, &r.name)
                    .await?
                    .or_else(|| (r.optional == Some(true)).then(BTreeMap::new))
            } else if let Some(r) = &from.secret_ref {
                secret(client, &self.namespace, &r.name)
                    .await?
                    .or_else(|| (r.optional == Some(true)).then(BTreeMap::new))
            } else {
                None
            };
            let data = data.ok_or_else(|| anyhow!("envFrom source not found"))?;
            env.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
        }
        for var in c.env.iter().flatten() {
            let value = self.env_value(client, pod, var, &env).await?;
            if let Some(value) = value {
                env.insert(var.name.clone(), value);
            }
        }
        let mut words: Vec<String> = c.command.clone().unwrap_or_default();
        words.extend(c.args.clone().unwrap_or_default());
        let words: Vec<String> = words.iter().map(|w| expand(w, &env)).collect();
        // The image's "filesystem" is the mapped binary's directory: a command naming a
        // program found there (`/usr/local/bin/sluice-operator` next to `sluice`) runs that
        // program; other commands come from the host's PATH.
        let (program, args) = match c.command.as_ref().and_then(|cmd| cmd.first()) {
            Some(first) => {
                let in_image = Path::new(first)
                    .file_name()
                    .zip(entry.parent())
                    .map(|(name, dir)| dir.join(name))
                    .filter(|p| p.is_file());
                (
                    in_image.unwrap_or_else(|| PathBuf::from(first)),
                    words[1..].to_vec(),
                )
            }
            None => (entry.to_path_buf(), words),
        };
        let mut mounts = vec![(hosts_file.to_path_buf(), "/etc/hosts".to_string(), true)];
        for m in c.volume_mounts.iter().flatten() {
            let source = volumes
                .get(&m.name)
                .ok_or_else(|| anyhow!("volumeMount {} names no volume", m.name))?;
            let source = match &m.sub_path {
                Some(sub) if !sub.is_empty() => source.join(sub),
                _ => source.clone(),
            };
            mounts.push((source, m.mount_path.clone(), m.read_only.unwrap_or(false)));
        }
        let cpu_millicores = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("cpu"))
            .map(super::cpu::millicores)
            .transpose()?;
        Ok(Launch {
            program,
            args,
            env,
            mounts,
            workdir: c.working_dir.clone(),
            cpu_millicores,
        })
    }

    async fn env_value(
        &self,
        client: &Client,
        pod: &Pod,
        var: &EnvVar,
        env: &BTreeMap<String, String>,
    ) -> Result<Option<String>> {
        if let Some(v) = &var.value {
            return Ok(Some(expand(v, env)));
        }
        let Some(from) = &var.value_from else {
            return Ok(Some(String::new()));
        };
        if let Some(f) = &from.field_ref {
            return field_ref(pod, &self.ip, &f.field_path).map(Some);
        }
        if let Some(s) = &from.secret_key_ref {
            let data = secret(client, &self.namespace, &s.name).await?;
            return match data.and_then(|d| d.get(&s.key).cloned()) {
                Some(v) => Ok(Some(v)),
                None if s.optional == Some(true) => Ok(None),
                None => bail!(
                    "Secret {}/{} has no key {} (env {})",
                    self.namespace,
                    s.name,
                    s.key,
                    var.name
                ),
            };
        }
        if let Some(c) = &from.config_map_key_ref {
            let data = config_map(client, &self.namespace, &c.name).await?;
            return match data.and_then(|d| d.get(&c.key).cloned()) {
                Some(v) => Ok(Some(v)),
                None if c.optional == Some(true) => Ok(None),
                None => bail!(
                    "ConfigMap {}/{} has no key {} (env {})",
                    self.namespace,
                    c.name,
                    c.key,
                    var.name
                ),
            };
        }
        if from.resource_field_ref.is_some() {
            return Ok(Some("0".to_string()));
        }
        Ok(None)
    }

    fn spawn(&self, c: &ContainerRun) -> Result<Process> {
        let l = &c.launch;
        // A private mount namespace gives the container its mounts and /etc/hosts without
        // touching the host's view; mount points are created on the host if missing.
        let mut script = String::from("set -e\n");
        for (source, target, read_only) in &l.mounts {
            if source.is_dir() {
                script.push_str(&format!("mkdir -p {t}\n", t = quote(target)));
            } else {
                script.push_str(&format!(
                    "mkdir -p \"$(dirname {t})\"; [ -e {t} ] || touch {t}\n",
                    t = quote(target)
                ));
            }
            script.push_str(&format!(
                "mount --bind {} {}\n",
                quote(&source.to_string_lossy()),
                quote(target)
            ));
            if *read_only {
                script.push_str(&format!("mount -o remount,bind,ro {}\n", quote(target)));
            }
        }
        if let Some(dir) = &l.workdir {
            script.push_str(&format!("cd {}\n", quote(dir)));
        }
        if let Some(millicores) = l.cpu_millicores {
            // The shell joins the cgroup and becomes the program: it and its threads are held
            // to the limit.
            let procs = super::cpu::limit(&self.uid, &c.name, millicores)?;
            script.push_str(&format!("echo $$ > {}\n", quote(&procs.to_string_lossy())));
        }
        script.push_str("exec \"$@\"\n");
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(&l.program)
        .args(&l.args);
        cmd.env_clear().envs(&l.env).current_dir(&self.dir);
        Process::spawn(
            &format!("{}/{}/{}", self.namespace, self.name, c.name),
            cmd,
            &self.dir.join(format!("{}.log", c.name)),
        )
    }

    /// Starts, watches and restarts containers. Returns whether anything changed.
    pub fn tick(&mut self) {
        if self.waiting.is_some() || self.kill_at.is_some() {
            return;
        }
        let restart = self.restart_policy.clone();
        for i in 0..self.containers.len() {
            let exited = self.containers[i].process.as_mut().and_then(|p| p.exited());
            if let Some(code) = exited {
                let c = &mut self.containers[i];
                let code = code.unwrap_or(137);
                c.process = None;
                c.stop_probing();
                let started = c
                    .started_at
                    .as_ref()
                    .map(|(at, _)| at.clone())
                    .unwrap_or_default();
                c.last_exit = Some((code, started, now_rfc3339()));
                let log = self.dir.join(format!("{}.log", c.name));
                c.last_message = (c.logs_on_error && code != 0)
                    .then(|| log_tail(&log))
                    .flatten();
                let ran_long = c
                    .started_at
                    .as_ref()
                    .is_some_and(|(_, at)| at.elapsed() > Duration::from_secs(30));
                c.started_at = None;
                if ran_long {
                    c.backoff = Duration::from_secs(1);
                }
                let again = restart == "Always" || (restart == "OnFailure" && code != 0);
                if again {
                    c.restarts += 1;
                    c.next_start = Instant::now() + c.backoff;
                    c.backoff = (c.backoff * 2).min(Duration::from_secs(30));
                } else {
                    c.finished = true;
                }
            }
            let c = &self.containers[i];
            if c.process.is_none() && !c.finished && Instant::now() >= c.next_start {
                match self.spawn(c) {
                    Ok(p) => {
                        let ip = self.ip.clone();
                        let c = &mut self.containers[i];
                        c.process = Some(p);
                        c.started_at = Some((now_rfc3339(), Instant::now()));
                        if let Some(probe) = &c.readiness {
                            c.prober = Some(probe.start(&ip, c.probe_ok.clone()));
                        }
                    }
                    Err(e) => {
                        self.waiting = Some(("RunContainerError".into(), format!("{e:#}")));
                    }
                }
            }
        }
    }

    /// Starts termination: SIGTERM to every container, SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if self.kill_at.is_none() {
            for c in &self.containers {
                if let Some(p) = &c.process {
                    p.terminate();
                }
            }
            self.kill_at = Some(Instant::now() + grace);
        }
    }

    /// During termination: true once every process is gone (killing them at the deadline).
    pub fn terminated(&mut self) -> bool {
        let deadline_passed = self.kill_at.is_some_and(|t| Instant::now() >= t);
        let mut all_gone = true;
        for c in &mut self.containers {
            if let Some(p) = &mut c.process {
                if p.exited().is_some() {
                    c.process = None;
                    c.stop_probing();
                } else if deadline_passed {
                    p.kill();
                    c.process = None;
                    c.stop_probing();
                } else {
                    all_gone = false;
                }
            }
        }
        all_gone
    }

    /// Removes the directory of a run that never started a process.
    pub fn destroy_dir_only(&mut self) {
        if self.containers.iter().all(|c| c.process.is_none()) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Kills everything now and removes the pod's directory.
    pub fn destroy(&mut self) {
        for c in &mut self.containers {
            c.stop_probing();
            if let Some(mut p) = c.process.take() {
                p.kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        super::cpu::remove(&self.uid);
    }

    /// The pod status as a merge patch, or `None` when unchanged since the last one.
    pub fn status_patch(&mut self) -> Option<Value> {
        let mut statuses = Vec::new();
        let mut all_ready = !self.containers.is_empty();
        let mut any_running = false;
        let mut all_finished = !self.containers.is_empty();
        let mut any_failed = false;
        for c in &self.containers {
            let state = match (&c.process, &c.started_at, &self.waiting) {
                (_, _, Some((reason, message))) => {
                    json!({"waiting": {"reason": reason, "message": message}})
                }
                (Some(_), Some((at, _)), _) => json!({"running": {"startedAt": at}}),
                (None, _, _) if c.finished => {
                    let (code, _, at) =
                        c.last_exit
                            .clone()
                            .unwrap_or((0, String::new(), now_rfc3339()));
                    json!({"terminated": {"exitCode": code, "finishedAt": at, "reason": if code == 0 { "Completed" } else { "Error" }}})
                }
                _ => {
                    json!({"waiting": {"reason": if c.restarts > 0 { "CrashLoopBackOff" } else { "ContainerCreating" }}})
                }
            };
            let running = state.get("running").is_some();
            any_running |= running;
            let ready = running && c.ready();
            all_ready &= ready;
            all_finished &= c.finished;
            any_failed |= c.finished && c.last_exit.as_ref().is_some_and(|(code, ..)| *code != 0);
            let last_state = match &c.last_exit {
                Some((code, started, at)) if !c.finished => {
                    json!({"terminated": {"exitCode": code, "startedAt": started, "finishedAt": at,
                        "reason": if *code == 0 { "Completed" } else { "Error" },
                        "message": c.last_message.clone().unwrap_or_default()}})
                }
                _ => json!({}),
            };
            statuses.push(json!({
                "name": c.name, "image": c.image, "imageID": "", "ready": ready, "started": running,
                "restartCount": c.restarts, "state": state, "lastState": last_state,
            }));
        }
        if let (true, Some((reason, message))) = (self.containers.is_empty(), &self.waiting) {
            for (name, image) in &self.declared {
                statuses.push(json!({
                    "name": name, "image": image, "imageID": "", "ready": false, "started": false,
                    "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}},
                }));
            }
        }
        let phase = if self.waiting.is_some() {
            "Pending"
        } else if all_finished {
            if any_failed { "Failed" } else { "Succeeded" }
        } else if any_running {
            "Running"
        } else {
            "Pending"
        };
        let ready = if all_ready { "True" } else { "False" };
        let patch = json!({"status": {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": ready},
                {"type": "Ready", "status": ready},
            ],
            "containerStatuses": statuses,
        }});
        if self.last_status.as_ref() == Some(&patch) {
            return None;
        }
        self.last_status = Some(patch.clone());
        Some(patch)
    }

    /// Forgets the last sent status, so the next patch is sent (after a failed update).
    pub fn status_not_sent(&mut self) {
        self.last_status = None;
    }
}

async fn request_token(
    client: &Client,
    ns: &str,
    sa: &str,
    expiration: i64,
    pod: &Pod,
) -> Result<String> {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    use k8s_openapi::api::core::v1::ServiceAccount;
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(expiration.max(600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let answer: TokenRequest = api
        .create_subresource("token", sa, &Default::default(), &request)
        .await
        .context("TokenRequest")?;
    Ok(answer.status.map(|s| s.token).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_references_like_kubernetes() {
        let env: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into();
        assert_eq!(expand("--a=$(A) $(B) $$(A)", &env), "--a=x $(B) $(A)");
    }

    #[test]
    fn images_map_with_or_without_tags() {
        let c = AgentConfig {
            dir: "/tmp".into(),
            images: vec![("sluice".into(), "/bin/sluice".into())],
            api_host: "127.0.0.1".into(),
            api_port: 1,
        };
        assert_eq!(
            c.binary_for("ghcr.io/sluice-dev/sluice:0.1"),
            Some(Path::new("/bin/sluice"))
        );
        assert_eq!(c.binary_for("sluice"), Some(Path::new("/bin/sluice")));
        assert_eq!(c.binary_for("nginx:1"), None);
    }
}
