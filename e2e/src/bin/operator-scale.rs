//! `operator-scale`: many StreamingJobs against the real control plane and one operator
//! (issue #17, "past one machine, by simulation", item b).
//!
//! Starts the control plane built by `e2e/scripts/build-control-plane.sh` (no node agent: the
//! pods the operator asks for are created and stay Pending), installs the CRD, runs the
//! workspace's `sluice-operator`, creates `--jobs` StreamingJobs, `--concurrency` requests at a
//! time, and prints:
//! - how long each job waited from its creation to its first status (the operator's first
//!   reconcile of it), p50, p99 and the slowest, seen through a watch;
//! - the operator's resident memory before the jobs and once it has reconciled them all;
//! - its reconciles, from its own metrics, and the time they took;
//! - the API server's requests per second, from its `apiserver_request_total`, while idle
//!   before the jobs, while they are created and reconciled, and once everything is quiet
//!   again (the control plane's own controllers included: the Deployments' pods are created
//!   and scheduled, and stay Pending).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use kube::api::{DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;
use sluice_e2e::control_plane::{ControlPlane, bin_dir, free_port};
use sluice_e2e::fixtures::{self, http_get, spawn_operator_binary, workspace_bin};

const HELP: &str =
    "operator-scale [--jobs N] [--concurrency N] [--suspend] [--quiet-seconds N] [--dir DIR]
               [--operator PATH]

Creates N StreamingJobs (default 1000), N at a time (default 20), against a local control plane
and one sluice-operator, and prints the operator's reconcile latency, memory and the API
server's request rate. --suspend creates them suspended (no pods at all). --operator runs
another build of sluice-operator (default: the one beside this tool). Build first:
e2e/scripts/build-control-plane.sh and cargo build -p sluice-operator -p sluice-e2e --bins.";

struct Args {
    jobs: usize,
    concurrency: usize,
    suspend: bool,
    quiet: Duration,
    dir: PathBuf,
    operator: Option<PathBuf>,
}

fn args() -> Result<Args> {
    let mut args = Args {
        jobs: 1000,
        concurrency: 20,
        suspend: false,
        quiet: Duration::from_secs(20),
        dir: std::env::temp_dir().join("sluice-operator-scale"),
        operator: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{arg} needs a value\n\n{HELP}"))
        };
        match arg.as_str() {
            "--jobs" => args.jobs = value()?.parse().context("--jobs: a count")?,
            "--concurrency" => {
                args.concurrency = value()?.parse().context("--concurrency: a count")?
            }
            "--suspend" => args.suspend = true,
            "--quiet-seconds" => {
                args.quiet = Duration::from_secs(value()?.parse().context("--quiet-seconds")?)
            }
            "--dir" => args.dir = PathBuf::from(value()?),
            "--operator" => {
                let path = PathBuf::from(value()?);
                if !path.is_file() {
                    bail!("--operator {}: no such file", path.display());
                }
                args.operator = Some(path);
            }
            "--help" | "-h" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n\n{HELP}"),
        }
    }
    if args.jobs == 0 || args.concurrency == 0 {
        bail!("--jobs and --concurrency must be at least 1");
    }
    Ok(args)
}

fn jobs_api(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("sluice.dev", "v1alpha1", "StreamingJob");
    Api::namespaced_with(client.clone(), "jobs", &ApiResource::from_gvk(&gvk))
}

fn job(name: &str, suspend: bool) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "StreamingJob",
        "metadata": {"name": name, "namespace": "jobs"},
        "spec": {
            "batchInterval": "1s", "parallelism": 4,
            "sources": [{"name": "g", "generator": {"rate": 100}}],
            "pipeline": [{"flatMap": {"split": " "}}, {"countByValue": {}}, {"updateStateByKey": {"op": "sum"}}],
            "sinks": [{"s3": {"uri": format!("s3://data/{name}"), "endpoint": "http://127.0.0.1:9", "pathStyle": true}}],
            "checkpoint": {"uri": format!("s3://ckpt/{name}"), "endpoint": "http://127.0.0.1:9", "pathStyle": true},
            "image": "registry.example/sluice:scale", "workers": {"replicas": 2},
            "checkpointCredentials": {"name": "s3-creds"},
            "suspend": suspend,
        }
    }))?)
}

/// The API server's request counts so far, by verb and resource.
async fn api_requests_by_kind(client: &Client) -> Result<HashMap<String, f64>> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let mut counts = HashMap::new();
    for line in text.lines() {
        let Some(labels) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches(['"', '}']).to_string())
                .unwrap_or_default()
        };
        let kind = format!("{} {}", label("verb"), label("resource"));
        *counts.entry(kind).or_insert(0.0) += value;
    }
    Ok(counts)
}

/// The API server's request count so far, all verbs and resources.
async fn api_requests(client: &Client) -> Result<f64> {
    Ok(api_requests_by_kind(client).await?.values().sum())
}

/// API requests per second over `span`, in all and the most frequent verb and resource.
async fn request_rate(client: &Client, span: Duration) -> Result<(f64, Vec<(String, f64)>)> {
    let before = api_requests_by_kind(client).await?;
    tokio::time::sleep(span).await;
    let after = api_requests_by_kind(client).await?;
    let mut rates: Vec<(String, f64)> = after
        .iter()
        .map(|(kind, n)| {
            let was = before.get(kind).copied().unwrap_or(0.0);
            (kind.clone(), (n - was) / span.as_secs_f64())
        })
        .filter(|(_, rate)| *rate > 0.0)
        .collect();
    rates.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total = rates.iter().map(|(_, r)| r).sum();
    rates.truncate(5);
    Ok((total, rates))
}

fn resident_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// A metric's value in the operator's /metrics (the first series of that name).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() -> Result<()> {
    sluice_e2e::control_plane::install_crypto_provider();
    let args = args()?;
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("clean {}", args.dir.display()))?;
    }
    std::fs::create_dir_all(&args.dir)?;
    let started = Instant::now();
    let mut control_plane = ControlPlane::start(&bin_dir()?, &args.dir.join("cluster")).await?;
    let client = control_plane.client().await?;
    fixtures::prepare_jobs_namespace(&client).await?;
    println!(
        "control plane up in {:.1} s; {} StreamingJobs, {} created at a time, {}",
        started.elapsed().as_secs_f64(),
        args.jobs,
        args.concurrency,
        if args.suspend {
            "suspended (no pods)"
        } else {
            "running (their pods stay Pending: no node runs them)"
        }
    );
    let port = free_port()?;
    let binary = match &args.operator {
        Some(path) => path.clone(),
        None => workspace_bin("sluice-operator")?,
    };
    println!("operator: {}", binary.display());
    let mut operator = spawn_operator_binary(
        &binary,
        &control_plane.kubeconfig,
        "operator-0",
        port,
        &args.dir.join("operator.log"),
        &[],
    )?;
    let operator_pid = operator.pid().context("the operator did not start")?;
    let operator_metrics = || http_get("127.0.0.1", port, "/metrics").unwrap_or_default();
    // Up and leading: its metrics answer and its reconcile loop has started.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !operator_metrics().contains("sluice_reconciles_total") {
        if let Some(code) = operator.exited() {
            bail!("the operator exited ({code:?}):\n{}", operator.tail(30));
        }
        if Instant::now() > deadline {
            bail!(
                "the operator's metrics did not answer:\n{}",
                operator.tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle_rate, _) = request_rate(&client, Duration::from_secs(10)).await?;
    let idle_mb = resident_mb(operator_pid);

    // A watch sees each job's first status.
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let first_status: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let api = jobs_api(&client);
    let watch = {
        let first_status = first_status.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Ok(Some(o)) = events.try_next().await {
                let has_status = o.data.get("status").and_then(|s| s.get("phase")).is_some();
                if let (true, Some(name)) = (has_status, o.metadata.name) {
                    first_status
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        })
    };

    let before_burst = api_requests(&client).await?;
    let burst_started = Instant::now();
    let names: Vec<String> = (0..args.jobs).map(|i| format!("job-{i:05}")).collect();
    futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let (api, created) = (api.clone(), created.clone());
            let suspend = args.suspend;
            async move {
                let object = job(&name, suspend)?;
                let at = Instant::now();
                api.create(&PostParams::default(), &object)
                    .await
                    .with_context(|| format!("create {name}"))?;
                created
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name, at);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let created_in = burst_started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let seen = first_status.lock().unwrap_or_else(|e| e.into_inner()).len();
        if seen >= args.jobs {
            break;
        }
        if Instant::now() > deadline {
            bail!("{seen} of {} jobs got a status in 10 minutes", args.jobs);
        }
        if let Some(code) = operator.exited() {
            bail!("the operator exited ({code:?}):\n{}", operator.tail(30));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_reconciled = burst_started.elapsed();
    let burst_rate = (api_requests(&client).await? - before_burst) / all_reconciled.as_secs_f64();
    let busy_mb = resident_mb(operator_pid);
    watch.abort();

    let mut waits: Vec<Duration> = {
        let created = created.lock().unwrap_or_else(|e| e.into_inner());
        let first = first_status.lock().unwrap_or_else(|e| e.into_inner());
        names
            .iter()
            .filter_map(|n| Some(first.get(n)?.saturating_duration_since(*created.get(n)?)))
            .collect()
    };
    waits.sort();

    // Quiet: every job reconciled; what keeping them costs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reconciles_before = metric(&operator_metrics(), "sluice_reconciles_total");
    let (quiet_rate, quiet_kinds) = request_rate(&client, args.quiet).await?;
    let metrics = operator_metrics();
    let reconciles = metric(&metrics, "sluice_reconciles_total");
    let quiet_reconciles = (reconciles - reconciles_before) / args.quiet.as_secs_f64();
    let took_sum = metric(&metrics, "sluice_reconcile_duration_seconds_sum");
    let took_count = metric(&metrics, "sluice_reconcile_duration_seconds_count");
    let quiet_mb = resident_mb(operator_pid);

    println!(
        "created {} jobs in {:.1} s ({:.0} a second); all had a status {:.1} s after the first was created",
        args.jobs,
        created_in.as_secs_f64(),
        args.jobs as f64 / created_in.as_secs_f64(),
        all_reconciled.as_secs_f64()
    );
    println!(
        "from a job's creation to its first status: p50 {}, p99 {}, slowest {}",
        ms(percentile(&waits, 0.5)),
        ms(percentile(&waits, 0.99)),
        ms(waits.last().copied().unwrap_or_default())
    );
    println!(
        "operator: {reconciles:.0} reconciles, {:.1} ms each on average; {quiet_reconciles:.1} a second once quiet",
        took_sum / took_count.max(1.0) * 1e3
    );
    println!(
        "operator resident memory: {idle_mb:.0} MB with no job, {busy_mb:.0} MB once all {} had a status, {quiet_mb:.0} MB {:.0} s later",
        args.jobs,
        args.quiet.as_secs_f64() + 5.0
    );
    println!(
        "API server requests a second (every client, the control plane's own included): {idle_rate:.0} idle before the jobs, {burst_rate:.0} while they were created and reconciled, {quiet_rate:.0} once quiet"
    );
    let counter = |name: &str, outcome: &str| {
        metric(&metrics, &format!("{name}_total{{outcome=\"{outcome}\"}}"))
    };
    // Only an operator that counts its writes exports these (the watch cache's); a missing
    // counter is not a zero.
    if metrics.contains("sluice_child_applies_total") {
        println!(
            "operator writes (all run): child applies {:.0} sent, {:.0} left out as unchanged; status {:.0} sent, {:.0} left out",
            counter("sluice_child_applies", "sent"),
            counter("sluice_child_applies", "unchanged"),
            counter("sluice_status_writes", "sent"),
            counter("sluice_status_writes", "unchanged"),
        );
    }
    let kinds: Vec<String> = quiet_kinds
        .iter()
        .map(|(kind, rate)| format!("{kind} {rate:.1}"))
        .collect();
    println!(
        "once quiet, the most frequent requests a second: {}",
        kinds.join(", ")
    );
    if quiet_reconciles > 0.0 {
        println!(
            "once quiet: {:.1} API requests a reconcile (above the idle rate)",
            (quiet_rate - idle_rate).max(0.0) / quiet_reconciles
        );
    }
    drop(operator);
    control_plane.stop();
    Ok(())
}
