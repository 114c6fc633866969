//! Readiness probes as the kubelet runs them, for the pods' gRPC probes
//! (`readinessProbe.grpc`: `grpc.health.v1` at the pod's address). A container with such a
//! probe is ready only while its last check answered SERVING. Liveness and the other probe
//! kinds are not run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A container's gRPC readiness probe.
#[derive(Clone, Debug)]
pub struct GrpcProbe {
    pub port: i32,
    pub service: String,
    pub period: Duration,
    pub initial_delay: Duration,
}

impl GrpcProbe {
    /// The container's `readinessProbe.grpc`, if it has one.
    pub fn of(c: &Container) -> Option<GrpcProbe> {
        let probe = c.readiness_probe.as_ref()?;
        let grpc = probe.grpc.as_ref()?;
        let seconds = |s: Option<i32>, default: i32| {
            Duration::from_secs(u64::try_from(s.unwrap_or(default)).unwrap_or(1).max(1))
        };
        Some(GrpcProbe {
            port: grpc.port,
            service: grpc.service.clone().unwrap_or_default(),
            period: seconds(probe.period_seconds, 10),
            initial_delay: probe.initial_delay_seconds.map_or(Duration::ZERO, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            }),
        })
    }

    /// Checks `ip` every period until dropped, keeping `ready` up to date.
    pub fn start(&self, ip: &str, ready: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
        let probe = self.clone();
        let url = format!("http://{ip}:{}", self.port);
        tokio::spawn(async move {
            tokio::time::sleep(probe.initial_delay).await;
            loop {
                let serving = check(&url, &probe.service).await;
                ready.store(serving, Ordering::Relaxed);
                tokio::time::sleep(probe.period).await;
            }
        })
    }
}

/// Whether `grpc.health.v1` at `url` says `service` is SERVING.
pub async fn check(url: &str, service: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url.to_string()) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(1))
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving)
}
