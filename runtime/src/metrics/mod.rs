//! The job's runtime metrics, in the Prometheus/OpenMetrics text format
//! (`prometheus-client`): what the batch loop did (batches, records, delays), what checkpoints
//! cost, how often the job recovered. One registry per process, labelled with the job and its
//! namespace; [`http`] serves it.
//!
//! Metric names and their meaning are listed in `docs/observability.md`; a test checks that
//! the Grafana dashboard queries only names this module exports.

mod flow;
pub mod http;
pub mod timeline;

pub use flow::BatchFlow;

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::coordinator::BatchProgress;
use crate::exec::lock_unpoisoned;

/// Bucket bounds in seconds for batch times and delays: 5 ms to about 80 s, doubling.
fn time_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 15)
}

/// What the process does in the job, which decides the series it exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `sluice run`: the batch loop and every task.
    Local,
    /// `sluice master`: the batch loop; tasks run on the workers.
    Master,
    /// `sluice worker`: tasks of the partitions it owns.
    Worker,
}

/// Every series a process exports: the batch loop's (local run, master) and what its tasks
/// moved (local run, workers).
pub struct RuntimeMetrics {
    role: Role,
    job: String,
    namespace: String,
    flow: Option<flow::FlowSeries>,
    workers: Gauge,
    /// Recent batches and events, for the page (the batch loop's processes only).
    timeline: Mutex<timeline::Timeline>,
    registry: Registry,
    /// Held while one batch's figures are updated and while the text is rendered, so a
    /// scrape sees whole batches only (records and batches agree with `last_batch`).
    update: Mutex<()>,
    batches: Counter,
    replayed_batches: Counter,
    failures: Counter,
    processing: Histogram,
    scheduling_delay: Histogram,
    total_delay: Histogram,
    input_records: Counter,
    refused_records: Counter,
    last_batch: Gauge,
    last_processing: Gauge<f64, AtomicU64>,
    last_scheduling_delay: Gauge<f64, AtomicU64>,
    last_input_rate: Gauge<f64, AtomicU64>,
    rate_limit: Gauge<f64, AtomicU64>,
    source_backlog: Family<[(&'static str, String); 1], Gauge>,
    checkpoint_duration: Histogram,
    checkpoint_failures: Counter,
    last_checkpoint_batch: Gauge,
    recoveries: Counter,
    recovery_duration: Histogram,
}

impl RuntimeMetrics {
    /// The metrics of job `job` in `namespace` (empty outside Kubernetes) for a process in
    /// `role`.
    pub fn new(job: &str, namespace: &str, role: Role) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "sluice",
            [
                ("job_name".into(), job.to_string().into()),
                ("job_namespace".into(), namespace.to_string().into()),
            ]
            .into_iter(),
        );
        let flow = (role != Role::Master).then(|| flow::FlowSeries::register(&mut registry));
        let mut m = Self {
            role,
            job: job.to_string(),
            namespace: namespace.to_string(),
            flow,
            workers: Gauge::default(),
            timeline: Mutex::default(),
            registry,
            update: Mutex::new(()),
            batches: Counter::default(),
            replayed_batches: Counter::default(),
            failures: Counter::default(),
            processing: Histogram::new(time_buckets()),
            scheduling_delay: Histogram::new(time_buckets()),
            total_delay: Histogram::new(time_buckets()),
            input_records: Counter::default(),
            refused_records: Counter::default(),
            last_batch: Gauge::default(),
            last_processing: Gauge::default(),
            last_scheduling_delay: Gauge::default(),
            last_input_rate: Gauge::default(),
            rate_limit: Gauge::default(),
            source_backlog: Family::default(),
            checkpoint_duration: Histogram::new(time_buckets()),
            checkpoint_failures: Counter::default(),
            last_checkpoint_batch: Gauge::default(),
            recoveries: Counter::default(),
            recovery_duration: Histogram::new(time_buckets()),
        };
        if role == Role::Worker {
            return m;
        }
        if role == Role::Master {
            m.registry.register(
                "workers",
                "Workers the partitions are placed on",
                m.workers.clone(),
            );
        }
        // The registry holds handles to the same values the fields update.
        m.registry.register(
            "batches_completed",
            "Batches completed and committed (replays included)",
            m.batches.clone(),
        );
        m.registry.register(
            "batches_replayed",
            "Batches run again from the offset log after a failure",
            m.replayed_batches.clone(),
        );
        m.registry.register(
            "batch_failures",
            "Failed attempts to run a batch or to recover: each is retried from the last checkpoint",
            m.failures.clone(),
        );
        m.registry.register(
            "batch_processing_seconds",
            "Time to read a batch's input and run all its stages",
            m.processing.clone(),
        );
        m.registry.register(
            "batch_scheduling_delay_seconds",
            "From a batch's time to the start of its processing",
            m.scheduling_delay.clone(),
        );
        m.registry.register(
            "batch_total_delay_seconds",
            "From a batch's time to its commit",
            m.total_delay.clone(),
        );
        m.registry.register(
            "input_records",
            "Records read from all sources",
            m.input_records.clone(),
        );
        m.registry.register(
            "refused_records",
            "Records an operation refused (onRecordError: skip)",
            m.refused_records.clone(),
        );
        m.registry.register(
            "last_batch",
            "Index of the newest committed batch",
            m.last_batch.clone(),
        );
        m.registry.register(
            "last_batch_processing_seconds",
            "Processing time of the newest committed batch",
            m.last_processing.clone(),
        );
        m.registry.register(
            "last_batch_scheduling_delay_seconds",
            "Scheduling delay of the newest committed batch",
            m.last_scheduling_delay.clone(),
        );
        m.registry.register(
            "input_rate",
            "Records per second of batch time in the newest committed batch",
            m.last_input_rate.clone(),
        );
        m.registry.register(
            "rate_limit",
            "The backpressure bound on input, records per second (0: none)",
            m.rate_limit.clone(),
        );
        m.registry.register(
            "source_backlog_records",
            "Records waiting in a source after the newest batch was planned (sources that can count them: Kafka)",
            m.source_backlog.clone(),
        );
        m.registry.register(
            "checkpoint_duration_seconds",
            "Time to write a snapshot of the job's state",
            m.checkpoint_duration.clone(),
        );
        m.registry.register(
            "checkpoint_failures",
            "Snapshots that failed",
            m.checkpoint_failures.clone(),
        );
        m.registry.register(
            "last_checkpoint_batch",
            "The batch of the newest snapshot",
            m.last_checkpoint_batch.clone(),
        );
        m.registry.register(
            "recoveries",
            "Recoveries from a failure: state restored and the log replayed",
            m.recoveries.clone(),
        );
        m.registry.register(
            "recovery_duration_seconds",
            "From the start of a recovery to the job running again",
            m.recovery_duration.clone(),
        );
        m
    }

    /// One committed batch.
    pub fn batch(&self, p: &BatchProgress) {
        let _whole = lock_unpoisoned(&self.update);
        let r = &p.report;
        self.batches.inc();
        if r.replay {
            self.replayed_batches.inc();
        }
        self.input_records.inc_by(r.records);
        self.refused_records.inc_by(r.record_errors);
        self.processing.observe(r.processing.as_secs_f64());
        self.scheduling_delay
            .observe(p.scheduling_delay.as_secs_f64());
        self.total_delay.observe(p.total_delay.as_secs_f64());
        self.last_processing.set(r.processing.as_secs_f64());
        self.last_scheduling_delay
            .set(p.scheduling_delay.as_secs_f64());
        self.last_input_rate.set(p.input_rate());
        self.rate_limit.set(p.rate_limit.unwrap_or(0.0));
        for (source, records) in &p.backlog {
            self.source_backlog
                .get_or_create(&[("source", source.clone())])
                .set(i64::try_from(*records).unwrap_or(i64::MAX));
        }
        self.last_batch
            .set(i64::try_from(r.batch.index).unwrap_or(i64::MAX));
        let mut t = lock_unpoisoned(&self.timeline);
        t.interval_ms = r.batch.interval_ms;
        t.batch(timeline::BatchRow {
            batch: r.batch.index,
            time_ms: r.batch.time_ms,
            records: r.records,
            refused: r.record_errors,
            processing_ms: timeline::ms(r.processing),
            scheduling_delay_ms: timeline::ms(p.scheduling_delay),
            total_delay_ms: timeline::ms(p.total_delay),
            input_rate: p.input_rate(),
            replay: r.replay,
            stages: r
                .stages
                .iter()
                .map(|(name, took)| (name.clone(), timeline::ms(*took)))
                .collect(),
            committed_at_ms: crate::time::now_ms(),
        });
    }

    /// What one batch moved in this process (a local run, a worker).
    pub fn flow(&self, flow: &BatchFlow) {
        if let Some(series) = &self.flow {
            let _whole = lock_unpoisoned(&self.update);
            series.observe(flow);
        }
    }

    /// A snapshot holds `bytes` of stateful step `step`'s state from this process.
    pub fn state_bytes(&self, step: &str, bytes: u64) {
        if let Some(series) = &self.flow {
            series.state_bytes(step, bytes);
        }
    }

    /// The master placed partition `p` on worker `owners[p]`.
    pub fn placement(&self, owners: Vec<String>) {
        let mut workers: Vec<&String> = owners.iter().collect();
        workers.sort();
        workers.dedup();
        self.workers
            .set(i64::try_from(workers.len()).unwrap_or(i64::MAX));
        let detail = format!(
            "{} partitions on {} workers: {}",
            owners.len(),
            workers.len(),
            workers
                .iter()
                .map(|w| w.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut t = lock_unpoisoned(&self.timeline);
        t.event(timeline::EventKind::Placement, detail);
        t.owners = owners;
    }

    /// The job's name and namespace, as the page shows them (JSON).
    pub fn job_json(&self) -> String {
        serde_json::json!({ "name": self.job, "namespace": self.namespace }).to_string()
    }

    /// The recent batches and events, as the page reads them (JSON).
    pub fn timeline_json(&self) -> String {
        let _whole = lock_unpoisoned(&self.update);
        serde_json::to_string(&*lock_unpoisoned(&self.timeline)).unwrap_or_else(|_| "{}".into())
    }

    /// What the process does in the job.
    pub fn role(&self) -> Role {
        self.role
    }

    /// A failed batch attempt, and why.
    pub fn failure(&self, why: &str) {
        self.failures.inc();
        lock_unpoisoned(&self.timeline).event(timeline::EventKind::Failure, why.to_string());
    }

    /// A snapshot written for `batch` in `took`, or failed.
    pub fn checkpoint(&self, batch: u64, took: Duration, ok: bool) {
        let mut t = lock_unpoisoned(&self.timeline);
        if ok {
            self.checkpoint_duration.observe(took.as_secs_f64());
            self.last_checkpoint_batch
                .set(i64::try_from(batch).unwrap_or(i64::MAX));
            t.event(
                timeline::EventKind::Checkpoint,
                format!("snapshot of batch {batch} in {} ms", took.as_millis()),
            );
        } else {
            self.checkpoint_failures.inc();
            t.event(
                timeline::EventKind::CheckpointFailed,
                format!("the snapshot of batch {batch} failed"),
            );
        }
    }

    /// A recovery that took `took`.
    pub fn recovery(&self, took: Duration) {
        self.recoveries.inc();
        self.recovery_duration.observe(took.as_secs_f64());
        lock_unpoisoned(&self.timeline).event(
            timeline::EventKind::Recovered,
            format!("running again after {} ms", took.as_millis()),
        );
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        let _whole = lock_unpoisoned(&self.update);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::BatchReport;
    use crate::time::BatchInfo;

    #[test]
    fn a_batch_shows_in_counters_gauges_and_histograms_with_the_job_labels() {
        let m = RuntimeMetrics::new("clicks", "prod", Role::Local);
        m.batch(&BatchProgress {
            report: BatchReport {
                batch: BatchInfo::new(0, 1000, 7),
                records: 500,
                record_errors: 2,
                error_samples: vec![],
                processing: Duration::from_millis(250),
                replay: false,
                stages: vec![("input".into(), Duration::from_millis(50))],
            },
            scheduling_delay: Duration::from_millis(10),
            total_delay: Duration::from_millis(260),
            rate_limit: None,
            backlog: [("clicks".to_string(), 1200)].into(),
        });
        let text = m.render();
        let labels = r#"{job_name="clicks",job_namespace="prod"}"#;
        for line in [
            format!("sluice_batches_completed_total{labels} 1"),
            format!("sluice_input_records_total{labels} 500"),
            format!("sluice_refused_records_total{labels} 2"),
            format!("sluice_last_batch{labels} 7"),
            format!("sluice_input_rate{labels} 500.0"),
            r#"sluice_source_backlog_records{job_name="clicks",job_namespace="prod",source="clicks"} 1200"#.to_string(),
            format!("sluice_batch_processing_seconds_count{labels} 1"),
        ] {
            assert!(text.contains(&line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
