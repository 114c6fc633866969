//! `/metrics` (Prometheus text format) and `/healthz` for the operator. Labels are static
//! categories (phases, error kinds), never free-form strings.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sluice_crds::resource::Phase;

/// Counters the reconciler updates.
#[derive(Default)]
pub struct Metrics {
    pub reconciles: AtomicU64,
    pub errors_build: AtomicU64,
    pub errors_api: AtomicU64,
    /// The phase of each job (namespace/name), for the jobs-by-phase gauge.
    pub phases: Mutex<BTreeMap<String, Phase>>,
    pub reconcile_seconds_total: Mutex<f64>,
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut by_phase: BTreeMap<Phase, u64> = BTreeMap::new();
        for phase in self
            .phases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            *by_phase.entry(*phase).or_default() += 1;
        }
        let mut out = String::new();
        out.push_str("# HELP sluice_reconciles_total StreamingJob reconciles.\n# TYPE sluice_reconciles_total counter\n");
        out.push_str(&format!(
            "sluice_reconciles_total {}\n",
            self.reconciles.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP sluice_reconcile_errors_total Failed reconciles by kind.\n# TYPE sluice_reconcile_errors_total counter\n");
        out.push_str(&format!(
            "sluice_reconcile_errors_total{{kind=\"build\"}} {}\n",
            self.errors_build.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "sluice_reconcile_errors_total{{kind=\"api\"}} {}\n",
            self.errors_api.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP sluice_reconcile_seconds_total Time spent reconciling.\n# TYPE sluice_reconcile_seconds_total counter\n");
        out.push_str(&format!(
            "sluice_reconcile_seconds_total {}\n",
            *self
                .reconcile_seconds_total
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        ));
        out.push_str("# HELP sluice_jobs StreamingJobs by phase.\n# TYPE sluice_jobs gauge\n");
        for (phase, n) in by_phase {
            out.push_str(&format!("sluice_jobs{{phase=\"{phase}\"}} {n}\n"));
        }
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
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, metrics.render()),
                        "/healthz" | "/readyz" => (StatusCode::OK, "ok\n".to_string()),
                        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                    };
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
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
    fn renders_counters_and_phases() {
        let m = Metrics::default();
        m.reconciles.fetch_add(3, Ordering::Relaxed);
        m.phases
            .lock()
            .expect("lock")
            .insert("a/x".into(), Phase::Running);
        m.phases
            .lock()
            .expect("lock")
            .insert("a/y".into(), Phase::Running);
        let text = m.render();
        assert!(text.contains("sluice_reconciles_total 3\n"), "{text}");
        assert!(
            text.contains("sluice_jobs{phase=\"Running\"} 2\n"),
            "{text}"
        );
    }
}
