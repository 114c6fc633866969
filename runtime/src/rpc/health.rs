//! `grpc.health.v1` (tonic-health) for Kubernetes' gRPC probes, on a port of its own without
//! TLS or token: the kubelet's gRPC probe can do neither, and the answer says nothing but
//! "serving". The empty service name is liveness (the process answers); the role's service
//! (`sluice.v1.Master`, `sluice.v1.Worker`) is readiness: the master serves its API, a worker
//! has registered with its master.

use std::net::SocketAddr;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The readiness service name of a master.
pub const MASTER: &str = "sluice.v1.Master";
/// The readiness service name of a worker.
pub const WORKER: &str = "sluice.v1.Worker";

/// Where a process reports its health.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    service: &'static str,
}

impl Health {
    /// Serves the health service at `addr` on the current runtime, alive and not yet ready
    /// as `service`.
    pub async fn serve(addr: SocketAddr, service: &'static str) -> Result<Health, String> {
        let (reporter, server) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
        let incoming = tonic::transport::server::TcpIncoming::bind(addr)
            .map_err(|e| format!("--health-addr {addr}: cannot listen: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::error!(error = %e, "the health service stopped");
            }
        });
        tracing::info!(%addr, service, "gRPC health (grpc.health.v1) serving");
        Ok(Health { reporter, service })
    }

    /// Whether the process is ready (`service` answers SERVING) or not.
    pub async fn ready(&self, ready: bool) {
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status(self.service, status).await;
    }
}
