//! The whole system under real faults: the chart installed with helm into the real control
//! plane, the operator running as two pods, three jobs applied with kubectl — `examples/word-totals-s3.yaml`
//! (a generator, running totals, S3 output), `examples/kafka-wordcount.yaml` (from one topic
//! of a Kafka broker running as a pod to another, exactly once) and
//! `examples/conversions-postgres.yaml` (a graph: two generated streams joined over a sliding
//! window, appended to a real PostgreSQL) — their masters and workers as real `sluice`
//! processes, S3 on s3s-fs. Processes are killed for real (SIGKILL), the jobs are scaled,
//! suspended, resumed and deleted, and at the end every batch they wrote (to S3, to Kafka as a
//! `read_committed` reader sees it, to PostgreSQL) is compared with an uninterrupted run of the
//! same manifest by the local engine (`sluice run`, one process, no faults): no batch lost,
//! none counted twice.
//!
//! A report (each scenario, pass or fail, recovery times, records checked) goes to stderr and
//! to `$SLUICE_E2E_REPORT` when set; `scripts/test` prints it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use serde_json::json;
use sluice_e2e::cluster::{ClusterOptions, TestCluster};
use sluice_e2e::control_plane::bin_dir;
use sluice_e2e::fixtures::{self, S3Server, create_namespace, workspace_bin};
use sluice_e2e::kafka::{self, topics};
use sluice_e2e::postgres::{self as pg, Postgres};
use sluice_e2e::wait_for;

const NS: &str = "jobs";
const OPERATOR_NS: &str = "sluice-system";
const EXAMPLE: &str = "examples/word-totals-s3.yaml";
/// Where the example writes, and where the reference run writes instead.
const OUTPUT: &str = "s3://sluice/word-totals/out";
const REFERENCE_OUTPUT: &str = "s3://sluice/reference/out";

/// A job under test: its name, where it checkpoints, its batch interval.
struct Job {
    name: &'static str,
    checkpoint: &'static str,
    interval_ms: u64,
}

/// `examples/word-totals-s3.yaml`: a generator, running totals, S3 output.
const TOTALS: Job = Job {
    name: "word-totals",
    checkpoint: "s3://sluice/word-totals/checkpoint",
    interval_ms: 200,
};

/// `examples/kafka-wordcount.yaml` as `docs/kind.md` runs it: from one topic of a broker pod
/// to another, exactly once.
const KAFKA_JOB: Job = Job {
    name: "kafka-wordcount",
    checkpoint: "s3://sluice/kafka-wordcount/checkpoint",
    interval_ms: 200,
};
const KAFKA_EXAMPLE: &str = "examples/kafka-wordcount.yaml";

/// `examples/conversions-postgres.yaml`: a graph job appending to PostgreSQL.
const GRAPH_JOB: Job = Job {
    name: "conversions",
    checkpoint: "s3://sluice/conversions/checkpoint",
    interval_ms: 200,
};
const GRAPH_EXAMPLE: &str = "examples/conversions-postgres.yaml";
/// Batches between the example's windows: they slide every 1 s, the batches are 200 ms.
const GRAPH_SLIDE_BATCHES: i64 = 5;
/// The example's database, and the table its comment creates.
const GRAPH_DB_URL: &str = "postgres://sluice@shop-db.db:5432/shop";
const GRAPH_TABLE: &str = "CREATE TABLE conversions (user_id text NOT NULL, buys bigint NOT NULL, after_view bigint NOT NULL, window_end timestamptz NOT NULL)";
/// Every job, for the faults that hit them all.
const JOBS: [&Job; 3] = [&TOTALS, &KAFKA_JOB, &GRAPH_JOB];
const KAFKA_NS: &str = "kafka";
/// The broker as the job's pods reach it (the pod's name through the cluster's names).
const KAFKA_IN_CLUSTER: &str = "kafka-0.kafka.kafka:9092";
const KAFKA_PARTITIONS: i32 = 4;
/// Records the input topic holds before the job starts: more than the job reads in the
/// test at `maxRatePerPartition` (the cap makes every batch read a fixed range, so an
/// uninterrupted run reads the same ranges), so no batch is short of input.
const KAFKA_BACKLOG: usize = 200_000;
const KAFKA_RATE_PER_PARTITION: u32 = 50;

/// One broker as `docs/kind.md` runs it (the image maps to `kafka-pod`, which listens on the
/// pod's address and keeps its data in the volume); `$(JARS)`, where the image would have
/// the broker, is the jars' cache on this machine.
const KAFKA_BROKER: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: kafka}
spec:
  serviceName: kafka
  replicas: 1
  selector: {matchLabels: {app: kafka}}
  template:
    metadata: {labels: {app: kafka}}
    spec:
      containers:
        - name: kafka
          image: apache/kafka:4.1.0
          env:
            - name: POD_IP
              valueFrom: {fieldRef: {fieldPath: status.podIP}}
            - {name: KAFKA_DATA_DIR, value: /var/lib/kafka/data}
            - {name: SLUICE_KAFKA_JARS, value: "$(JARS)"}
          ports: [{containerPort: 9092, name: kafka}]
          volumeMounts: [{name: data, mountPath: /var/lib/kafka/data}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: kafka}
spec:
  clusterIP: None
  selector: {app: kafka}
  ports: [{port: 9092, name: kafka}]
"#;

/// One line of the report.
struct Outcome {
    scenario: &'static str,
    result: Result<String, String>,
    took: Duration,
}

#[derive(Default)]
struct Report {
    outcomes: Vec<Outcome>,
}

impl Report {
    /// Runs `scenario` unless an earlier one failed (they build on each other).
    async fn run(
        &mut self,
        scenario: &'static str,
        body: impl AsyncFnOnce() -> Result<String>,
    ) -> bool {
        if self.outcomes.iter().any(|o| o.result.is_err()) {
            self.outcomes.push(Outcome {
                scenario,
                result: Err("not run: an earlier scenario failed".into()),
                took: Duration::ZERO,
            });
            return false;
        }
        eprintln!("=== {scenario}");
        let started = Instant::now();
        let result = body().await.map_err(|e| format!("{e:#}"));
        let ok = result.is_ok();
        self.outcomes.push(Outcome {
            scenario,
            result,
            took: started.elapsed(),
        });
        ok
    }

    fn text(&self) -> String {
        let mut out = String::from("\nSluice end-to-end report\n");
        for o in &self.outcomes {
            let (mark, detail) = match &o.result {
                Ok(d) => ("PASS", d.as_str()),
                Err(e) => ("FAIL", e.as_str()),
            };
            out.push_str(&format!(
                "  {mark}  {:<58} {:>6.1}s  {detail}\n",
                o.scenario,
                o.took.as_secs_f64()
            ));
        }
        let passed = self.outcomes.iter().filter(|o| o.result.is_ok()).count();
        out.push_str(&format!(
            "  {passed} of {} scenarios passed\n",
            self.outcomes.len()
        ));
        out
    }
}

/// The system under test and what the scenarios share.
struct System {
    dir: PathBuf,
    cluster: TestCluster,
    client: Client,
    s3: S3Server,
    /// The broker pod's address, once it runs.
    kafka: OnceLock<String>,
    postgres: &'static Postgres,
}

impl System {
    fn kubectl(&self, args: &[&str], input: Option<&str>) -> Result<(bool, String, String)> {
        let mut cmd = Command::new(bin_dir()?.join("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(self.cluster.kubeconfig())
            .args(args);
        let out = fixtures::run_with_input(&mut cmd, input)?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    fn kubectl_ok(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        let (ok, out, err) = self.kubectl(args, input)?;
        ensure!(ok, "kubectl {}: {err}", args.join(" "));
        Ok(out)
    }

    /// `kubectl patch sj JOB --type merge -p '{"spec":{"suspend":...}}'`.
    fn suspend(&self, job: &Job, suspend: bool) -> Result<()> {
        let patch = json!({"spec": {"suspend": suspend}}).to_string();
        let args = [
            "patch", "sj", job.name, "-n", NS, "--type", "merge", "-p", &patch,
        ];
        self.kubectl_ok(&args, None).map(|_| ())
    }

    fn jobs(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("sluice.dev", "v1alpha1", "StreamingJob");
        Api::namespaced_with(self.client.clone(), NS, &ApiResource::from_gvk(&gvk))
    }

    async fn status(&self, job: &Job) -> Result<serde_json::Value> {
        Ok(self.jobs().get(job.name).await?.data["status"].clone())
    }

    async fn job_pods(&self, job: &Job) -> Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        Ok(pods
            .list(&ListParams::default().labels(&format!("sluice.dev/job={}", job.name)))
            .await?
            .items)
    }

    /// Batch directories the job has written to S3, by batch time.
    fn batches(&self, uri: &str) -> BTreeMap<u64, Vec<String>> {
        fixtures::sink_batches(&self.s3.root.join(uri.trim_start_matches("s3://")))
    }

    /// The newest batch the master has committed: `commits/<batch>.json` in the checkpoint is
    /// written only after the batch's outputs and snapshot are durable, and only by a live
    /// master (output files could still be written by workers after the master died).
    fn newest_commit(&self, job: &Job) -> u64 {
        let dir = self
            .s3
            .root
            .join(job.checkpoint.trim_start_matches("s3://"))
            .join("commits");
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".json")?.parse::<u64>().ok()
            })
            .max()
            .unwrap_or(0)
    }

    /// Waits for a batch committed after the call; returns the time since `since`.
    async fn next_commit_after(
        &self,
        job: &Job,
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration> {
        self.commit_after(job, self.newest_commit(job), since, timeout)
            .await
    }

    /// Waits for a commit of a batch newer than `newest`; returns the time since `since`.
    async fn commit_after(
        &self,
        job: &Job,
        newest: u64,
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration> {
        wait_for(
            &format!("a newly committed batch of {} in the checkpoint", job.name),
            timeout,
            async || Ok((self.newest_commit(job) > newest).then_some(())),
        )
        .await?;
        Ok(since.elapsed())
    }

    async fn wait_running(&self, job: &Job, workers: i64, timeout: Duration) -> Result<()> {
        wait_for(
            &format!("{} Running with {workers} workers", job.name),
            timeout,
            async || {
                let s = self.status(job).await?;
                Ok((s["phase"] == "Running"
                    && s["workersReady"] == workers
                    && s["workersDesired"] == workers)
                    .then_some(()))
            },
        )
        .await
    }

    /// How many objects of kind `K` labelled as the job's are left in its namespace.
    async fn labelled<K>(&self, job: &Job) -> Result<usize>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + k8s_openapi::serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let selector = ListParams::default().labels(&format!("sluice.dev/job={}", job.name));
        Ok(Api::<K>::namespaced(self.client.clone(), NS)
            .list(&selector)
            .await?
            .items
            .len())
    }

    async fn lease_holder(&self) -> Result<Option<String>> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), OPERATOR_NS);
        Ok(leases
            .get_opt("sluice-operator")
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity))
    }

    fn diagnostics(&self) -> String {
        let mut out = format!("--- node agent:\n{}\n", self.cluster.agent_log(40));
        out.push_str(&self.cluster.pod_logs("sluice-", 25));
        for job in JOBS {
            out.push_str(&self.cluster.pod_logs(&format!("{}-master", job.name), 25));
        }
        out.push_str(&self.cluster.pod_logs("kafka-0", 25));
        if let Ok((_, text, _)) = self.kubectl(&["get", "sj,pods,sts", "-A", "-o", "wide"], None) {
            out.push_str(&text);
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_system_under_real_faults() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s3 = S3Server::start(
        &dir.path().join("s3"),
        &["sluice"],
        &dir.path().join("s3s-fs.log"),
    )?;
    let cluster = TestCluster::start(ClusterOptions {
        dir: dir.path().join("cluster"),
        nodes: vec!["node-1".into(), "node-2".into(), "node-3".into()],
        // The image holds `sluice` and, next to it, `sluice-operator` (as the Dockerfile's).
        images: vec![
            ("sluice".into(), workspace_bin("sluice")?),
            (
                "apache/kafka".into(),
                env!("CARGO_BIN_EXE_kafka-pod").into(),
            ),
        ],
        agent_bin: env!("CARGO_BIN_EXE_sluice-node-agent").into(),
    })
    .await?;
    let client = cluster.client.clone();
    let system = System {
        dir: dir.path().to_path_buf(),
        cluster,
        client,
        s3,
        kafka: OnceLock::new(),
        postgres: blocking(Postgres::shared),
    };
    let mut report = Report::default();
    let outcome = scenarios(&system, &mut report).await;
    let text = report.text();
    eprintln!("{text}");
    fixtures::append_report(&text)?;
    if outcome.is_err() || report.outcomes.iter().any(|o| o.result.is_err()) {
        eprintln!("{}", system.diagnostics());
        // Pod logs, the checkpoint and the outputs, for a failure that does not repeat.
        if std::env::var_os("SLUICE_E2E_KEEP").is_some() {
            eprintln!("kept for inspection: {}", dir.path().display());
            std::mem::forget(dir);
        }
    }
    outcome?;
    let failed: Vec<_> = report
        .outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.scenario)
        .collect();
    ensure!(failed.is_empty(), "failed: {failed:?}");
    Ok(())
}

async fn scenarios(sys: &System, report: &mut Report) -> Result<()> {
    let chart = fixtures::repo().join("charts/sluice");
    report
        .run(
            "a. helm install; the operator leads and is ready",
            async || {
                let mut helm = Command::new(bin_dir()?.join("helm"));
                helm.arg("--kubeconfig")
                    .arg(sys.cluster.kubeconfig())
                    .args(["install", "sluice"])
                    .arg(&chart)
                    .args(["--namespace", OPERATOR_NS, "--create-namespace"])
                    .args(["--wait", "--timeout", "180s"])
                    // Every pod shares this machine's network: serve /metrics on the pod's address.
                    .args([
                        "--set-json",
                        r#"extraEnv=[{"name":"SLUICE_METRICS_ADDR","value":"$(POD_IP):8080"}]"#,
                    ]);
                let out = helm.output()?;
                ensure!(
                    out.status.success(),
                    "helm install: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let holder = wait_for("an operator leader", Duration::from_secs(60), async || {
                    sys.lease_holder().await
                })
                .await?;
                let pods: Api<Pod> = Api::namespaced(sys.client.clone(), OPERATOR_NS);
                let leader = pods.get(&holder).await?;
                let ip = leader
                    .status
                    .and_then(|s| s.pod_ip)
                    .ok_or_else(|| anyhow!("the leader has no address"))?;
                wait_for("/readyz 200", Duration::from_secs(30), async || {
                    Ok(fixtures::http_get(&ip, 8080, "/readyz")
                        .ok()
                        .filter(|r| r.starts_with("HTTP/1.1 200")))
                })
                .await?;
                Ok(format!("leader {holder}"))
            },
        )
        .await;

    report
        .run(
            "b0. a Kafka broker as a pod; topics; a backlog",
            async || {
                create_namespace(&sys.client, KAFKA_NS).await?;
                let manifest = KAFKA_BROKER.replace(
                    "$(JARS)",
                    &sluice_e2e::kafka::jars_dir()?.to_string_lossy(),
                );
                sys.kubectl_ok(&["apply", "-n", KAFKA_NS, "-f", "-"], Some(&manifest))?;
                let pods: Api<Pod> = Api::namespaced(sys.client.clone(), KAFKA_NS);
                let ip = wait_for(
                    "the broker pod listening",
                    Duration::from_secs(120),
                    async || {
                        let ip = pods
                            .get_opt("kafka-0")
                            .await?
                            .and_then(|p| p.status)
                            .and_then(|s| s.pod_ip);
                        Ok(ip.filter(|ip| {
                            std::net::TcpStream::connect((ip.as_str(), kafka::POD_PORT)).is_ok()
                        }))
                    },
                )
                .await?;
                let bootstrap = format!("{ip}:{}", kafka::POD_PORT);
                sys.kafka
                    .set(bootstrap.clone())
                    .map_err(|_| anyhow!("the broker was started twice"))?;
                let at = bootstrap.clone();
                tokio::task::spawn_blocking(move || {
                    for topic in ["lines", "word-counts", "word-counts-reference"] {
                        topics::create_topic(&at, topic, KAFKA_PARTITIONS);
                    }
                    let lines: Vec<String> = (0..KAFKA_BACKLOG).map(backlog_line).collect();
                    let records: Vec<(i32, Option<&str>, &str)> = lines
                        .iter()
                        .enumerate()
                        .map(|(i, line)| (i as i32 % KAFKA_PARTITIONS, None, line.as_str()))
                        .collect();
                    topics::produce(&at, "lines", &records);
                })
                .await?;
                Ok(format!(
                    "broker pod at {bootstrap}; {KAFKA_BACKLOG} lines in {KAFKA_PARTITIONS} partitions"
                ))
            },
        )
        .await;

    report
        .run("b. kubectl apply the examples; outputs; kubectl get sj", async || {
            create_namespace(&sys.client, NS).await?;
            Api::<Secret>::namespaced(sys.client.clone(), NS)
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(
                        json!({"metadata": {"name": "s3-creds"}, "stringData": sys.s3.credentials()}),
                    )?,
                )
                .await?;
            let example = fixtures::repo().join(EXAMPLE);
            let path = example.to_string_lossy();
            sys.kubectl_ok(&["apply", "-n", NS, "-f", &path], None)?;
            let kafka_job = kafka_manifest(KAFKA_IN_CLUSTER, "word-counts", KAFKA_JOB.checkpoint)?;
            sys.kubectl_ok(&["apply", "-n", NS, "-f", "-"], Some(&kafka_job))?;
            // The graph job: its database and table as the example's comment makes them, the
            // credentials in a Secret.
            blocking(|| {
                sys.postgres.create_database("shop")?;
                sys.postgres.execute("shop", GRAPH_TABLE)
            })?;
            Api::<Secret>::namespaced(sys.client.clone(), NS)
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({
                        "metadata": {"name": "shop-db"},
                        "stringData": {"username": pg::USER, "password": pg::PASSWORD},
                    }))?,
                )
                .await?;
            let graph_job = graph_manifest(sys, "shop", GRAPH_JOB.checkpoint)?;
            sys.kubectl_ok(&["apply", "-n", NS, "-f", "-"], Some(&graph_job))?;
            for job in JOBS {
                sys.wait_running(job, 2, Duration::from_secs(120)).await?;
            }
            wait_for("20 batches in S3", Duration::from_secs(60), async || {
                Ok((sys.batches(OUTPUT).len() >= 20).then_some(()))
            })
            .await?;
            wait_for("5 Kafka batches committed", Duration::from_secs(60), async || {
                let s = sys.status(&KAFKA_JOB).await?;
                Ok((s["lastCompletedBatch"].as_i64().unwrap_or(0) >= 5).then_some(()))
            })
            .await?;
            let mut first_seen: Option<u64> = None;
            let table = wait_for(
                "kubectl get sj: Running with batches",
                Duration::from_secs(30),
                async || {
                    let out = sys.kubectl_ok(&["get", "sj", "-n", NS], None)?;
                    let row = out.lines().find(|l| l.starts_with(TOTALS.name)).unwrap_or("");
                    // NAME PHASE WORKERS BATCH DELAY RATE AGE
                    let cols: Vec<&str> = row.split_whitespace().collect();
                    let batch: u64 = cols.get(3).and_then(|b| b.parse().ok()).unwrap_or(0);
                    // Progressing: a later look shows a later batch.
                    let progressed = first_seen.is_some_and(|first| batch > first);
                    if first_seen.is_none() && batch > 0 {
                        first_seen = Some(batch);
                    }
                    let all_workers = cols
                        .get(2)
                        .and_then(|w| w.split_once('/'))
                        .is_some_and(|(ready, wanted)| ready == wanted && ready != "0");
                    let delay = cols.get(4).is_some_and(|d| {
                        d.strip_suffix("ms")
                            .or_else(|| d.strip_suffix('s'))
                            .is_some_and(|n| n.parse::<f64>().is_ok())
                    });
                    let rate = cols.get(5).and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
                    Ok((cols.get(1) == Some(&"Running")
                        && progressed
                        && all_workers
                        && delay
                        && rate > 0)
                        .then_some(out))
                },
            )
            .await?;
            let rows: Vec<String> = table
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            Ok(format!(
                "{} batches in S3; {}",
                sys.batches(OUTPUT).len(),
                rows.join("; ")
            ))
        })
        .await;

    report
        .run(
            "c+i. kill the masters and the operator leader together",
            async || {
                let holder = sys
                    .lease_holder()
                    .await?
                    .ok_or_else(|| anyhow!("no operator leader"))?;
                let batch_before = sys.status(&TOTALS).await?["lastCompletedBatch"]
                    .as_i64()
                    .unwrap_or(0);
                let kafka_newest = sys.newest_commit(&KAFKA_JOB);
                let graph_newest = sys.newest_commit(&GRAPH_JOB);
                let killed = Instant::now();
                for job in JOBS {
                    let master = format!("{}-master-0", job.name);
                    ensure!(sys.cluster.kill_pod_processes(&master)? >= 1, "no {master}");
                }
                // The operator leader goes with its node: processes killed, pod force-deleted.
                sys.cluster.kill_pod_processes(&holder)?;
                Api::<Pod>::namespaced(sys.client.clone(), OPERATOR_NS)
                    .delete(&holder, &DeleteParams::default().grace_period(0))
                    .await?;
                let recovery = sys
                    .next_commit_after(&TOTALS, killed, Duration::from_secs(90))
                    .await?;
                let kafka_recovery = sys
                    .commit_after(&KAFKA_JOB, kafka_newest, killed, Duration::from_secs(90))
                    .await?;
                let graph_recovery = sys
                    .commit_after(&GRAPH_JOB, graph_newest, killed, Duration::from_secs(90))
                    .await?;
                let new_holder = wait_for(
                    "another operator replica to lead",
                    Duration::from_secs(90),
                    async || Ok(sys.lease_holder().await?.filter(|h| *h != holder)),
                )
                .await?;
                let takeover = killed.elapsed();
                // The new leader sees the restarted master progress, and says what happened.
                let s = wait_for(
                    "progress past the kill in the status",
                    Duration::from_secs(60),
                    async || {
                        let s = sys.status(&TOTALS).await?;
                        let last = s["lastCompletedBatch"].as_i64().unwrap_or(0);
                        let recovered = s["recoveries"].as_i64().unwrap_or(0) >= 1;
                        Ok((s["phase"] == "Running" && last > batch_before && recovered)
                            .then_some(s))
                    },
                )
                .await?;
                let events: Api<k8s_openapi::api::events::v1::Event> =
                    Api::namespaced(sys.client.clone(), NS);
                wait_for("a MasterRestarted event", Duration::from_secs(30), async || {
                    let events = events.list(&Default::default()).await?.items;
                    Ok(events
                        .iter()
                        .any(|e| e.reason.as_deref() == Some("MasterRestarted"))
                        .then_some(()))
                })
                .await?;
                Ok(format!(
                    "master kill -> next committed batch {:.1}s (Kafka job {:.1}s, graph job {:.1}s); operator takeover by {new_holder} {:.1}s; batch {} and {} recoveries in the status",
                    recovery.as_secs_f64(),
                    kafka_recovery.as_secs_f64(),
                    graph_recovery.as_secs_f64(),
                    takeover.as_secs_f64(),
                    s["lastCompletedBatch"],
                    s["recoveries"]
                ))
            },
        )
        .await;

    report
        .run(
            "d. kill a worker; output continues; the pod comes back",
            async || {
                let mut recoveries = Vec::new();
                for job in JOBS {
                    let pod = format!("{}-worker-1", job.name);
                    // The batch in flight at the kill may still commit (the worker had done
                    // its part); the one after it is dispatched after the kill, so its commit
                    // shows the loss noticed and recovered from.
                    let in_flight = sys.newest_commit(job) + 1;
                    let killed = Instant::now();
                    ensure!(sys.cluster.kill_pod_processes(&pod)? >= 1, "no {pod}");
                    let recovery = sys
                        .commit_after(job, in_flight, killed, Duration::from_secs(60))
                        .await?;
                    let pods: Api<Pod> = Api::namespaced(sys.client.clone(), NS);
                    wait_for(
                        &format!("{pod} back and ready"),
                        Duration::from_secs(60),
                        async || {
                            let p = pods.get(&pod).await?;
                            let status = p.status.unwrap_or_default();
                            let restarted = status
                                .container_statuses
                                .iter()
                                .flatten()
                                .any(|c| c.restart_count >= 1 && c.ready);
                            Ok(restarted.then_some(()))
                        },
                    )
                    .await?;
                    sys.wait_running(job, 2, Duration::from_secs(60)).await?;
                    recoveries.push(format!("{:.1}s", recovery.as_secs_f64()));
                }
                Ok(format!(
                    "worker kill -> next committed batch {} (word totals, Kafka job, graph job)",
                    recoveries.join(", ")
                ))
            },
        )
        .await;

    report
        .run(
            "d2. kubectl drain the node of a job's master: one pod at a time, exactly once",
            async || {
                let node_of = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
                let master = format!("{}-master-0", TOTALS.name);
                let pods = sys.job_pods(&TOTALS).await?;
                let node = pods
                    .iter()
                    .find(|p| p.metadata.name.as_deref() == Some(master.as_str()))
                    .and_then(node_of)
                    .ok_or_else(|| anyhow!("{master} is on no node"))?;
                let on_node = pods.iter().filter(|p| node_of(p).as_deref() == Some(&node)).count();
                let budget: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
                    Api::namespaced(sys.client.clone(), NS);
                let budget = budget.get(&format!("{}-pods", TOTALS.name)).await?;
                let allowed = budget.status.map_or(-1, |s| s.disruptions_allowed);
                ensure!(allowed == 1, "the job's PodDisruptionBudget allows {allowed} disruptions, not 1");
                let newest = sys.newest_commit(&TOTALS);
                let started = Instant::now();
                // kubectl drain: cordon, then evict through the Eviction API, which the
                // budget holds to one of the job's pods at a time (kubectl retries the rest).
                let selector = format!("sluice.dev/job={}", TOTALS.name);
                sys.kubectl_ok(
                    &["drain", &node, "--pod-selector", &selector, "--timeout", "300s"],
                    None,
                )?;
                let drained = started.elapsed();
                sys.wait_running(&TOTALS, 2, Duration::from_secs(120)).await?;
                let recovery = sys
                    .commit_after(&TOTALS, newest, started, Duration::from_secs(90))
                    .await?;
                let moved = sys.job_pods(&TOTALS).await?;
                ensure!(
                    moved.iter().all(|p| node_of(p).as_deref() != Some(&node)),
                    "a pod of the job is still on the drained node {node}"
                );
                sys.kubectl_ok(&["uncordon", &node], None)?;
                // Evicted, the master got SIGTERM: it finished its batch and wrote a final
                // snapshot within its grace period (not SIGKILLed), so its successor, a new
                // pod, restored it and had nothing to replay.
                let now = sys
                    .job_pods(&TOTALS)
                    .await?
                    .into_iter()
                    .find(|p| p.metadata.name.as_deref() == Some(master.as_str()))
                    .and_then(|p| p.metadata.uid)
                    .ok_or_else(|| anyhow!("no {master} after the drain"))?;
                let restored = wait_for(
                    "the successor restored",
                    Duration::from_secs(60),
                    async || {
                        let logs = sys.cluster.pod_logs(&master, 100_000);
                        let successor = logs
                            .split("--- ")
                            .find(|section| section.contains(&now))
                            .unwrap_or_default();
                        Ok(successor
                            .lines()
                            .find(|l| l.contains("restored state"))
                            .and_then(|l| l.find("snapshot=").map(|at| l[at..].to_string())))
                    },
                )
                .await?;
                ensure!(
                    restored.contains("replay=0"),
                    "the evicted master left batches to replay (no final snapshot?): {restored:?}"
                );
                Ok(format!(
                    "drained {node} of {on_node} pods of the job in {:.1}s, one at a time; the evicted master's final snapshot left nothing to replay ({restored}); next committed batch {:.1}s after the drain began",
                    drained.as_secs_f64(),
                    recovery.as_secs_f64()
                ))
            },
        )
        .await;

    report
        .run(
            "d3. the node of a job's master freezes: new pods elsewhere; thawed, the old master cannot commit",
            async || {
                let node_of = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
                let master = format!("{}-master-0", TOTALS.name);
                let node = sys
                    .job_pods(&TOTALS)
                    .await?
                    .iter()
                    .find(|p| p.metadata.name.as_deref() == Some(master.as_str()))
                    .and_then(node_of)
                    .ok_or_else(|| anyhow!("{master} is on no node"))?;
                // Every pod of every job on that node freezes with it.
                let mut frozen = Vec::new();
                for job in JOBS {
                    for p in sys.job_pods(job).await? {
                        if node_of(&p).as_deref() == Some(node.as_str()) {
                            frozen.extend(p.metadata.name.clone());
                        }
                    }
                }
                let commits = sys.s3.root.join(TOTALS.checkpoint.trim_start_matches("s3://")).join("commits");
                // `None`: no such entry (any more: the log is pruned behind snapshots).
                let epoch_of = |batch: u64| -> Option<u64> {
                    std::fs::read(commits.join(format!("{batch:020}.json")))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v["epoch"].as_u64())
                };
                let newest = sys.newest_commit(&TOTALS);
                let old_epoch = epoch_of(newest).unwrap_or(0);
                let started = Instant::now();
                let pids = sys.cluster.freeze_node(&node, &frozen)?;
                ensure!(!pids.is_empty(), "no process of {frozen:?} to freeze");
                // NotReady after the node grace period (16 s here), then nodeLossTimeout
                // (30 s): the operator force-deletes the pods; a new master commits.
                let takeover = sys
                    .commit_after(&TOTALS, newest + 1, started, Duration::from_secs(180))
                    .await?;
                let events: Api<k8s_openapi::api::events::v1::Event> =
                    Api::namespaced(sys.client.clone(), NS);
                let lost = wait_for("a NodeLost event", Duration::from_secs(30), async || {
                    let events = events.list(&Default::default()).await?.items;
                    Ok(events
                        .iter()
                        .find(|e| e.reason.as_deref() == Some("NodeLost"))
                        .and_then(|e| e.note.clone()))
                })
                .await?;
                let new_epoch = epoch_of(sys.newest_commit(&TOTALS)).unwrap_or(0);
                ensure!(new_epoch > old_epoch, "commits after the takeover carry epoch {new_epoch}, not above {old_epoch}");
                sys.wait_running(&TOTALS, 2, Duration::from_secs(120)).await?;
                // Thawed on a node still cut off, the old processes go on from what they knew:
                // the checkpoint refuses whatever the old master tries to log.
                let fenced = || {
                    sys.cluster
                        .pod_logs(&format!("{}-master", TOTALS.name), 100_000)
                        .matches("another master took the checkpoint over")
                        .count()
                };
                let fenced_before = fenced();
                sys.cluster.thaw_processes(&pids);
                tokio::time::sleep(Duration::from_secs(10)).await;
                let said = fenced() > fenced_before;
                sys.cluster.unfreeze_node(&node)?;
                // Every commit entry after the takeover (the pruned ones are gone) is the new
                // epoch's.
                let late: Vec<u64> = std::fs::read_dir(&commits)?
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_suffix(".json")?.parse::<u64>().ok()
                    })
                    .filter(|b| *b > newest + 1 && epoch_of(*b).is_some_and(|e| e <= old_epoch))
                    .collect();
                ensure!(
                    late.is_empty(),
                    "batches {late:?} were committed in the old master's epoch after the takeover"
                );
                sys.wait_running(&TOTALS, 2, Duration::from_secs(120)).await?;
                sys.wait_running(&KAFKA_JOB, 2, Duration::from_secs(180)).await?;
                sys.wait_running(&GRAPH_JOB, 2, Duration::from_secs(180)).await?;
                Ok(format!(
                    "froze {node} ({} pods); a new master (epoch {new_epoch}, was {old_epoch}) committed {:.1}s after the freeze; {lost}; thawed, the old master {}",
                    frozen.len(),
                    takeover.as_secs_f64(),
                    if said { "tried and was refused" } else { "stayed idle (no commit of its epoch)" }
                ))
            },
        )
        .await;

    report
        .run(
            "e. kubectl scale to 5 (Kafka and graph jobs 3), then 2: live, no restart",
            async || {
                let master_uid = |job: &Job, pods: &[Pod]| {
                    pods.iter()
                        .find(|p| {
                            p.metadata.name.as_deref() == Some(&format!("{}-master-0", job.name))
                        })
                        .and_then(|p| p.metadata.uid.clone())
                };
                let jobs = [(&TOTALS, 5), (&KAFKA_JOB, 3), (&GRAPH_JOB, 3)];
                let mut before = Vec::new();
                for (job, up) in jobs {
                    before.push(master_uid(job, &sys.job_pods(job).await?));
                    let replicas = up.to_string();
                    sys.kubectl_ok(
                        &["scale", "sj", job.name, "-n", NS, "--replicas", &replicas],
                        None,
                    )?;
                }
                for (job, up) in jobs {
                    sys.wait_running(job, up, Duration::from_secs(120)).await?;
                    sys.next_commit_after(job, Instant::now(), Duration::from_secs(30))
                        .await?;
                }
                for (job, _) in jobs {
                    sys.kubectl_ok(
                        &["scale", "sj", job.name, "-n", NS, "--replicas", "2"],
                        None,
                    )?;
                }
                for ((job, up), before) in jobs.into_iter().zip(before) {
                    sys.wait_running(job, 2, Duration::from_secs(120)).await?;
                    let gone = up - 2;
                    wait_for(
                        &format!("{gone} workers of {} gone", job.name),
                        Duration::from_secs(60),
                        async || {
                            let pods = sys.job_pods(job).await?;
                            let workers = pods
                                .iter()
                                .filter(|p| {
                                    p.metadata
                                        .name
                                        .as_deref()
                                        .is_some_and(|n| n.contains("-worker-"))
                                })
                                .count();
                            Ok((workers == 2).then_some(()))
                        },
                    )
                    .await?;
                    let after = master_uid(job, &sys.job_pods(job).await?);
                    ensure!(
                        before == after,
                        "the master of {} was replaced by a rescale",
                        job.name
                    );
                    sys.next_commit_after(job, Instant::now(), Duration::from_secs(30))
                        .await?;
                }
                Ok("5 (and 3) then 2 workers, same master pods".into())
            },
        )
        .await;

    report
        .run("f. suspend and resume: pods go and come back", async || {
            let recoveries = |s: &serde_json::Value| s["recoveries"].as_i64().unwrap_or(0);
            let before = recoveries(&sys.status(&TOTALS).await?);
            for job in JOBS {
                sys.suspend(job, true)?;
            }
            for job in JOBS {
                wait_for(
                    &format!("{} Suspended with no pods", job.name),
                    Duration::from_secs(90),
                    async || {
                        let s = sys.status(job).await?;
                        let pods = sys.job_pods(job).await?;
                        Ok((s["phase"] == "Suspended" && pods.is_empty()).then_some(()))
                    },
                )
                .await?;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            // Nothing is committed while suspended: any batch newer than this one is the
            // resumed job's.
            let newest = sys.newest_commit(&TOTALS);
            let kafka_newest = sys.newest_commit(&KAFKA_JOB);
            let graph_newest = sys.newest_commit(&GRAPH_JOB);
            let resumed = Instant::now();
            for job in JOBS {
                sys.suspend(job, false)?;
            }
            // Where the time goes: pods started, job Running, first batch.
            wait_for("the job's pods running", Duration::from_secs(120), async || {
                let pods = sys.job_pods(&TOTALS).await?;
                let running = pods.iter().filter(|p| {
                    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                });
                Ok((running.count() == 3).then_some(()))
            })
            .await?;
            let pods_running = resumed.elapsed();
            sys.wait_running(&TOTALS, 2, Duration::from_secs(120)).await?;
            let job_running = resumed.elapsed();
            let back = sys
                .commit_after(&TOTALS, newest, resumed, Duration::from_secs(60))
                .await?;
            sys.wait_running(&KAFKA_JOB, 2, Duration::from_secs(120)).await?;
            let kafka_back = sys
                .commit_after(&KAFKA_JOB, kafka_newest, resumed, Duration::from_secs(60))
                .await?;
            sys.wait_running(&GRAPH_JOB, 2, Duration::from_secs(120)).await?;
            sys.commit_after(&GRAPH_JOB, graph_newest, resumed, Duration::from_secs(60))
                .await?;
            // The new master pod counts from zero; the job's total must not.
            let after = recoveries(&sys.status(&TOTALS).await?);
            ensure!(
                after >= before,
                "status.recoveries went from {before} to {after} across suspend and resume"
            );
            Ok(format!(
                "resume -> next committed batch {:.1}s (pods running {:.1}s, job Running {:.1}s; Kafka job {:.1}s); recoveries kept ({after})",
                back.as_secs_f64(),
                pods_running.as_secs_f64(),
                job_running.as_secs_f64(),
                kafka_back.as_secs_f64(),
            ))
        })
        .await;

    report
        .run(
            "g. an invalid manifest is refused with the field path",
            async || {
                let example = std::fs::read_to_string(fixtures::repo().join(EXAMPLE))?;
                let bad = example
                    .replace("name: word-totals", "name: bad-job")
                    .replace("workers: {replicas: 2}", "workers: {replicas: -1}");
                ensure!(bad.contains("replicas: -1"), "the example changed shape");
                let (ok, _, err) = sys.kubectl(&["apply", "-n", NS, "-f", "-"], Some(&bad))?;
                ensure!(!ok, "a negative replica count was accepted");
                ensure!(err.contains("spec.workers.replicas"), "{err}");
                let window = example
                    .replace("name: word-totals", "name: bad-window")
                    .replace(
                        "    - updateStateByKey: {op: sum}",
                        "    - reduceByKeyAndWindow: {op: sum, length: 1s, slide: 300ms}",
                    );
                let (ok, _, err2) = sys.kubectl(&["apply", "-n", NS, "-f", "-"], Some(&window))?;
                ensure!(
                    !ok,
                    "a slide that is not a multiple of the interval was accepted"
                );
                ensure!(err2.contains("multiples of spec.batchInterval"), "{err2}");
                let field = err
                    .split(['\n', ','])
                    .find(|part| part.contains("spec.workers.replicas"))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                Ok(format!("refused: {field}"))
            },
        )
        .await;

    report
        .run(
            "h. delete the jobs: every child and process gone",
            async || {
                let checkpoint = sys
                    .s3
                    .root
                    .join(TOTALS.checkpoint.trim_start_matches("s3://"));
                for job in JOBS {
                    sys.kubectl_ok(
                        &[
                            "delete",
                            "sj",
                            job.name,
                            "-n",
                            NS,
                            "--wait=true",
                            "--timeout=120s",
                        ],
                        None,
                    )?;
                }
                let mut processes = 0;
                for job in JOBS {
                    wait_for(
                        &format!("the children of {} gone", job.name),
                        Duration::from_secs(120),
                        async || {
                            let left = sys.labelled::<StatefulSet>(job).await?
                                + sys.labelled::<Service>(job).await?
                                + sys.labelled::<ConfigMap>(job).await?
                                + sys.labelled::<Pod>(job).await?
                                + Api::<Secret>::namespaced(sys.client.clone(), NS)
                                    .get_opt(&format!("{}-token", job.name))
                                    .await?
                                    .map_or(0, |_| 1);
                            Ok((left == 0).then_some(()))
                        },
                    )
                    .await?;
                    processes += wait_for(
                        &format!("no processes of {}", job.name),
                        Duration::from_secs(60),
                        async || {
                            let left = sys.cluster.pod_processes(&format!("{}-", job.name))?;
                            Ok((left == 0).then_some(left))
                        },
                    )
                    .await?;
                }
                let kept = fixtures::files_under(&checkpoint);
                ensure!(
                    kept > 0,
                    "deletionPolicy Retain (the default) keeps the checkpoint"
                );
                Ok(format!(
                    "{processes} processes left; checkpoint kept ({kept} objects)"
                ))
            },
        )
        .await;

    report
        .run(
            "exactly-once: S3 output equals an uninterrupted local run",
            async || {
                let written = sys.batches(OUTPUT);
                let times: Vec<u64> = written.keys().copied().collect();
                ensure!(times.len() > 50, "only {} batches written", times.len());
                for pair in times.windows(2) {
                    ensure!(
                        pair[1] - pair[0] == TOTALS.interval_ms,
                        "batch {} follows {}: a batch is missing",
                        pair[1],
                        pair[0]
                    );
                }
                // The last batch may have been cut short by the delete.
                let compared = times.len() - 1;
                let example = std::fs::read_to_string(fixtures::repo().join(EXAMPLE))?;
                let manifest = example
                    .replace(OUTPUT, REFERENCE_OUTPUT)
                    .replace(TOTALS.checkpoint, "s3://sluice/reference/checkpoint");
                reference_run(sys, &manifest, compared).await?;
                let reference: Vec<Vec<String>> =
                    sys.batches(REFERENCE_OUTPUT).into_values().collect();
                let records = equal_batches(written.iter().take(compared).enumerate().map(
                    |(k, (time, lines))| {
                        (format!("batch {k} (time {time})"), lines, reference.get(k))
                    },
                ))?;
                Ok(format!(
                    "{compared} batches, {records} records (running word totals) equal"
                ))
            },
        )
        .await;

    report
        .run(
            "exactly-once: Kafka output (read_committed) equals an uninterrupted local run",
            async || {
                let bootstrap = sys
                    .kafka
                    .get()
                    .cloned()
                    .ok_or_else(|| anyhow!("no broker"))?;
                let at = bootstrap.clone();
                let written =
                    tokio::task::spawn_blocking(move || topics::by_batch(&at, "word-counts"))
                        .await?;
                // The `sluice-batch` header numbers a job's batches 1, 2, ...: none missing.
                let batches: Vec<u64> = written.keys().copied().collect();
                ensure!(
                    batches.len() > 50,
                    "only {} Kafka batches written",
                    batches.len()
                );
                ensure!(
                    batches.iter().copied().eq(1..=batches.len() as u64),
                    "the Kafka job's batches are not 1..{}: {:?}",
                    batches.len(),
                    batches.windows(2).find(|w| w[1] != w[0] + 1)
                );
                let compared = batches.len() - 1;
                // The same manifest from outside the cluster: the broker by its address.
                let manifest = kafka_manifest(
                    &bootstrap,
                    "word-counts-reference",
                    "s3://sluice/reference-kafka/checkpoint",
                )?;
                reference_run(sys, &manifest, compared).await?;
                let at = bootstrap.clone();
                let reference = tokio::task::spawn_blocking(move || {
                    topics::by_batch(&at, "word-counts-reference")
                })
                .await?;
                let records = equal_batches((1..=compared as u64).map(|batch| {
                    (
                        format!("Kafka batch {batch}"),
                        &written[&batch],
                        reference.get(&batch),
                    )
                }))?;
                Ok(format!(
                    "{compared} batches, {records} records (running word totals) equal"
                ))
            },
        )
        .await;

    report
        .run(
            "exactly-once: PostgreSQL rows of the graph job equal an uninterrupted local run",
            async || {
                // Every partition's mark is at or past this batch: the batches up to it are
                // whole in the table (the last ones may have been cut short by the delete).
                let marks = blocking(|| {
                    sys.postgres
                        .rows("shop", "SELECT min(batch_time) FROM sluice_batches")
                })?;
                let through: i64 = marks
                    .first()
                    .and_then(|r| r[0].as_deref())
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| anyhow!("the graph job wrote no batch"))?;
                let written = blocking(|| batch_digests(sys.postgres, "shop", Some(through)))?;
                ensure!(written.len() > 20, "only {} graph windows written", written.len());
                // A window every slide: none missing.
                let numbers: Vec<i64> = written.iter().map(|(b, _, _)| *b).collect();
                ensure!(
                    numbers
                        .iter()
                        .copied()
                        .eq((0..numbers.len() as i64).map(|i| i * GRAPH_SLIDE_BATCHES)),
                    "the graph job's windows are not every {GRAPH_SLIDE_BATCHES} batches: {:?}",
                    numbers
                        .windows(2)
                        .find(|w| w[1] != w[0] + GRAPH_SLIDE_BATCHES)
                );
                // The first window ends at batch GRAPH_SLIDE_BATCHES (numbered 0 here).
                let batches = numbers
                    .last()
                    .map_or(0, |last| (last + GRAPH_SLIDE_BATCHES) as usize);
                blocking(|| {
                    sys.postgres.create_database("shop_reference")?;
                    sys.postgres.execute("shop_reference", GRAPH_TABLE)
                })?;
                let manifest = graph_manifest(
                    sys,
                    "shop_reference",
                    "s3://sluice/reference-conversions/checkpoint",
                )?;
                reference_run(sys, &manifest, batches).await?;
                let reference =
                    blocking(|| batch_digests(sys.postgres, "shop_reference", None))?;
                let rows: u64 = written.iter().map(|(_, n, _)| n).sum();
                for (i, (got, want)) in written.iter().zip(&reference).enumerate() {
                    ensure!(
                        got == want,
                        "graph batch {i}: {} rows (digest {}) against the reference's {} ({})",
                        got.1,
                        got.2,
                        want.1,
                        want.2
                    );
                }
                ensure!(
                    reference.len() == written.len(),
                    "the reference run wrote {} windows, the job {}",
                    reference.len(),
                    written.len()
                );
                Ok(format!(
                    "{} windows ({batches} batches), {rows} rows (per-user conversions per window) equal",
                    written.len()
                ))
            },
        )
        .await;
    Ok(())
}

/// Runs the PostgreSQL harness's blocking calls (it drives its own client runtime) off the
/// test's async workers.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

/// `examples/conversions-postgres.yaml` writing to `database` of the test's PostgreSQL and
/// checkpointing at `checkpoint`.
fn graph_manifest(sys: &System, database: &str, checkpoint: &str) -> Result<String> {
    let example = std::fs::read_to_string(fixtures::repo().join(GRAPH_EXAMPLE))?;
    for from in [GRAPH_DB_URL, GRAPH_JOB.checkpoint] {
        ensure!(
            example.contains(from),
            "{GRAPH_EXAMPLE} changed shape: no {from:?}"
        );
    }
    Ok(example
        .replace(GRAPH_DB_URL, &sys.postgres.url(database))
        .replace(GRAPH_JOB.checkpoint, checkpoint))
}

/// The graph job's rows in `database` window by window (numbered by the batch that wrote it,
/// from the first window's end, one batch interval a number): each window's row count and a
/// digest of its sorted rows, for the windows that end at or before `through` (ms since the
/// epoch), or all.
fn batch_digests(
    postgres: &Postgres,
    database: &str,
    through: Option<i64>,
) -> Result<Vec<(i64, u64, String)>> {
    let limit = through.map_or(String::new(), |t| {
        format!("WHERE window_end <= to_timestamp({t} / 1000.0)")
    });
    let sql = format!(
        "WITH t AS (SELECT *, round(extract(epoch FROM window_end - (SELECT min(window_end) FROM conversions)) * 1000 / {interval})::bigint AS batch FROM conversions {limit}) \
         SELECT batch, count(*), md5(string_agg(user_id || ':' || buys || ':' || after_view, ',' ORDER BY user_id, buys, after_view)) FROM t GROUP BY batch ORDER BY batch",
        interval = GRAPH_JOB.interval_ms,
    );
    postgres
        .rows(database, &sql)?
        .into_iter()
        .map(|r| {
            let field = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
            Ok((field(0).parse()?, field(1).parse()?, field(2)))
        })
        .collect()
}

/// Checks each batch a job wrote (named, records) against the reference run's; returns the
/// records compared.
fn equal_batches<'a, T: PartialEq + std::fmt::Debug + 'a>(
    batches: impl Iterator<Item = (String, &'a Vec<T>, Option<&'a Vec<T>>)>,
) -> Result<usize> {
    let mut records = 0;
    for (batch, got, expected) in batches {
        let expected = expected.ok_or_else(|| anyhow!("the reference run has no {batch}"))?;
        ensure!(
            got == expected,
            "{batch} differs from the reference: {} records vs {}; first difference {:?}",
            got.len(),
            expected.len(),
            got.iter().zip(expected).find(|(a, b)| a != b)
        );
        records += got.len();
    }
    Ok(records)
}

/// `examples/kafka-wordcount.yaml` for this test: the broker at `bootstrap`, output to
/// `output`, checkpoints to S3 at `checkpoint`, two workers, the batch interval of
/// [`KAFKA_JOB`]. Each batch reads a fixed range
/// (`maxRatePerPartition` over a backlog, backpressure off), so a run without faults reads
/// the same ranges batch by batch.
fn kafka_manifest(bootstrap: &str, output: &str, checkpoint: &str) -> Result<String> {
    let example = std::fs::read_to_string(fixtures::repo().join(KAFKA_EXAMPLE))?;
    let edits = [
        (
            "batchInterval: 1s",
            format!("batchInterval: {}ms", KAFKA_JOB.interval_ms),
        ),
        (
            "bootstrapServers: localhost:9092",
            format!("bootstrapServers: {bootstrap}"),
        ),
        (
            "maxRatePerPartition: 100000",
            format!("maxRatePerPartition: {KAFKA_RATE_PER_PARTITION}"),
        ),
        ("topic: word-counts", format!("topic: {output}")),
        (
            "  sources:\n",
            "  backpressure: {enabled: false}\n  sources:\n".into(),
        ),
        (
            "  checkpoint: {uri: \"file:///tmp/sluice/kafka-wordcount\"}",
            format!(
                "  checkpoint: {{uri: \"{checkpoint}\", pathStyle: true, interval: 5}}\n  \
                 checkpointCredentials: {{name: s3-creds}}\n  workers: {{replicas: 2}}"
            ),
        ),
    ];
    let mut manifest = example;
    for (from, to) in edits {
        ensure!(
            manifest.contains(from),
            "{KAFKA_EXAMPLE} changed shape: no {from:?}"
        );
        manifest = manifest.replace(from, &to);
    }
    Ok(manifest)
}

/// One line of the Kafka job's input: three words of small vocabularies.
fn backlog_line(i: usize) -> String {
    format!("w{} w{} W{}", i % 97, (i * 31) % 89, (i * 7) % 53)
}

/// Runs `manifest` with `sluice run` for `batches` batches without waiting for the clock (one
/// process, no network faults), with the S3 server's credentials.
async fn reference_run(sys: &System, manifest: &str, batches: usize) -> Result<()> {
    let path = sys.dir.join("reference.yaml");
    std::fs::write(&path, manifest)?;
    let mut cmd = Command::new(workspace_bin("sluice")?);
    cmd.arg("run")
        .arg(&path)
        .args(["--batches", &batches.to_string(), "--no-wait"])
        .env("SLUICE_LOG", "warn")
        .env("SLUICE_POSTGRES_PASSWORD", pg::PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in sys.s3.credentials().as_object().into_iter().flatten() {
        cmd.env(k, v.as_str().unwrap_or(""));
    }
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    if !out.status.success() {
        bail!("reference run: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
