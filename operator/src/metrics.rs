//! `/metrics` (OpenMetrics text, `prometheus-client`, as the jobs' own) and `/healthz` for the
//! operator. Labels are static categories (phases, error kinds), never free-form strings.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sluice_crds::resource::Phase;

/// The content type of the OpenMetrics text.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why a reconcile failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The job's resources could not be built from its spec.
    Build,
    /// The API server refused or did not answer.
    Api,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::Build => "build",
            Failure::Api => "api",
        }
    }
}

/// What became of a write the reconciler had to make: sent, or left out because the API server
/// already has it (see `cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Sent,
    Unchanged,
}

impl Write {
    fn as_str(self) -> &'static str {
        match self {
            Write::Sent => "sent",
            Write::Unchanged => "unchanged",
        }
    }
}

type Label = [(&'static str, &'static str); 1];

/// What the reconciler does, and the phase of every job it knows.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<Label, Counter>,
    reconcile_duration: Histogram,
    jobs: Family<Label, Gauge>,
    applies: Family<Label, Counter>,
    status_writes: Family<Label, Counter>,
    /// The phase of each job (namespace/name); `jobs` is counted from it when scraped.
    phases: Mutex<BTreeMap<String, Phase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("sluice"),
            reconciles: Counter::default(),
            errors: Family::default(),
            // 1 ms to about 16 s, doubling.
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            jobs: Family::default(),
            applies: Family::default(),
            status_writes: Family::default(),
            phases: Mutex::default(),
        };
        m.registry.register(
            "reconciles",
            "StreamingJob reconciles",
            m.reconciles.clone(),
        );
        m.registry.register(
            "reconcile_errors",
            "Failed reconciles by kind (build: the spec cannot make resources; api: the API server)",
            m.errors.clone(),
        );
        m.registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            m.reconcile_duration.clone(),
        );
        m.registry
            .register("jobs", "StreamingJobs by phase", m.jobs.clone());
        m.registry.register(
            "child_applies",
            "Applies of a job's objects: sent, or left out as what the API server already has",
            m.applies.clone(),
        );
        m.registry.register(
            "status_writes",
            "Writes of a job's status: sent, or left out as the status it already has",
            m.status_writes.clone(),
        );
        for kind in [Failure::Build, Failure::Api] {
            // Both kinds show from the start, at 0.
            let _ = m.errors.get_or_create(&[("kind", kind.as_str())]);
        }
        for outcome in [Write::Sent, Write::Unchanged] {
            let _ = m.applies.get_or_create(&[("outcome", outcome.as_str())]);
            let _ = m
                .status_writes
                .get_or_create(&[("outcome", outcome.as_str())]);
        }
        m
    }
}

impl Metrics {
    /// One reconcile that took `took` and failed for `failure`, if it did.
    pub fn reconciled(&self, took: Duration, failure: Option<Failure>) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        if let Some(kind) = failure {
            self.errors.get_or_create(&[("kind", kind.as_str())]).inc();
        }
    }

    /// One apply of a job's object, sent or left out.
    pub fn applied(&self, outcome: Write) {
        self.applies
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    /// One write of a job's status, sent or left out.
    pub fn status_written(&self, outcome: Write) {
        self.status_writes
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    /// Job `key` (namespace/name) is in `phase`.
    pub fn phase(&self, key: String, phase: Phase) {
        self.phases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, phase);
    }

    /// Job `key` is gone.
    pub fn forget(&self, key: &str) {
        self.phases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        {
            let phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
            for phase in Phase::ALL {
                let n = phases.values().filter(|p| **p == phase).count();
                self.jobs
                    .get_or_create(&[("phase", phase.as_str())])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until the process stops.
pub async fn serve(addr: SocketAddr, metrics: std::sync::Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    loop {
        let (stream, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (status, content_type, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, OPENMETRICS, metrics.render()),
                        "/healthz" | "/readyz" => (StatusCode::OK, "text/plain", "ok\n".into()),
                        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
                    };
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    if let Ok(value) = content_type.parse() {
                        response.headers_mut().insert(CONTENT_TYPE, value);
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_reconciles_errors_and_jobs_by_phase() {
        let m = Metrics::default();
        for failure in [None, None, Some(Failure::Api)] {
            m.reconciled(Duration::from_millis(3), failure);
        }
        m.phase("a/x".into(), Phase::Running);
        m.phase("a/y".into(), Phase::Running);
        m.phase("a/z".into(), Phase::Failed);
        m.forget("a/z");
        let text = m.render();
        for line in [
            "sluice_reconciles_total 3\n",
            "sluice_reconcile_errors_total{kind=\"api\"} 1\n",
            "sluice_reconcile_errors_total{kind=\"build\"} 0\n",
            "sluice_reconcile_duration_seconds_count 3\n",
            "sluice_jobs{phase=\"Running\"} 2\n",
            "sluice_jobs{phase=\"Failed\"} 0\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
