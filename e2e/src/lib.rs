//! Test infrastructure for Sluice's end-to-end tests: a real Kubernetes control plane on
//! loopback ([`control_plane`]) built from the Go module proxy, and a node agent ([`agent`])
//! that runs pods as local processes. See `e2e/README.md`.

pub mod agent;
pub mod browser;
pub mod cluster;
pub mod control_plane;
pub mod crd;
pub mod dashboard;
pub mod fixtures;
pub mod kafka;
pub mod pki;
pub mod postgres;
pub mod process;

/// Polls `check` until it gives a value or `timeout` passes. Errors count as "not yet" (the
/// API server or a pod may be between states); the last one is in the timeout message.
pub async fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    anyhow::bail!("timed out after {timeout:?} waiting for {what} {last}")
}
