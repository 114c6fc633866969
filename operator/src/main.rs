//! `sluice-operator`: reconciles StreamingJob resources (see the `controller` module).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await?;
    // Empty: every namespace.
    let namespaces: Vec<String> = std::env::var("SLUICE_WATCH_NAMESPACES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    tracing::info!(?namespaces, "sluice-operator running");
    let metrics = std::sync::Arc::new(sluice_operator::metrics::Metrics::default());
    let port: u16 = std::env::var("SLUICE_METRICS_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    // SLUICE_METRICS_ADDR binds one address (such as the pod's own) instead of all of them.
    let addr: std::net::SocketAddr = match std::env::var("SLUICE_METRICS_ADDR") {
        Ok(text) => text.parse().map_err(|e| {
            anyhow::anyhow!(
                "SLUICE_METRICS_ADDR={text}: {e}; give an address and port such as 10.0.0.7:8080"
            )
        })?,
        Err(_) => ([0, 0, 0, 0], port).into(),
    };
    let server = tokio::spawn(sluice_operator::metrics::serve(addr, metrics.clone()));
    // One replica reconciles; the others wait for the Lease.
    let me = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("sluice-operator-{}", std::process::id()));
    let lease_ns = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client.clone(), &lease_ns);
    let lease = "sluice-operator";
    tracing::info!(identity = %me, namespace = %lease_ns, "waiting for the leader lease");
    sluice_operator::leader::acquire(&leases, lease, &me).await?;
    tracing::info!(identity = %me, "became leader");
    tokio::select! {
        () = sluice_operator::controller::run(client, namespaces, metrics) => {}
        () = sluice_operator::leader::hold(&leases, lease, &me) => {
            tracing::error!("lost the leader lease; exiting so a standby takes over");
            server.abort();
            std::process::exit(1);
        }
    }
    server.abort();
    Ok(())
}
