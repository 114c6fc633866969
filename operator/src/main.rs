//! `sluice-operator`: reconciles StreamingJob resources (see the `controller` module).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use clap::Parser;
use sluice_operator::controller::Settings;

/// Reconciles StreamingJob resources into master and worker pods, with their Services, Secrets
/// and NetworkPolicy, and reports each job's status. One replica reconciles at a time (a
/// Lease); the others wait. Every option can be given by its environment variable, as the Helm
/// chart does.
#[derive(Parser, Debug)]
#[command(name = "sluice-operator", version)]
struct Args {
    /// Namespaces whose StreamingJobs to reconcile, separated by commas; none: every namespace.
    #[arg(long, env = "SLUICE_WATCH_NAMESPACES", value_delimiter = ',', num_args = 0..)]
    watch_namespaces: Vec<String>,
    /// Port of /metrics and /healthz, on every address.
    #[arg(long, env = "SLUICE_METRICS_PORT", default_value_t = 8080)]
    metrics_port: u16,
    /// Address and port of /metrics and /healthz, such as 10.0.0.7:8080: binds that one
    /// address instead of all of them (wins over --metrics-port).
    #[arg(long, env = "SLUICE_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// This pod's name: the identity that holds the leader Lease, and the events' reporter.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// This pod's namespace: where the leader Lease is, and what job NetworkPolicies admit.
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// Log filter, e.g. `info`, `sluice_operator=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Log format: `text` (coloured on a terminal unless NO_COLOR is set) or `json` (one
    /// object per line; the chart's default).
    #[arg(long, env = "SLUICE_LOG_FORMAT", default_value = "text")]
    log_format: sluice_proto::logs::LogFormat,
    /// Apply the StreamingJob CRD this operator was built with at start, where the installed
    /// one is older (`helm upgrade` never upgrades CRDs). Needs get and patch on
    /// customresourcedefinitions; without them it says so and goes on.
    #[arg(long, env = "SLUICE_MANAGE_CRD", default_value_t = false)]
    manage_crd: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    sluice_proto::logs::init(&args.log, args.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await?;
    let settings = Settings {
        namespaces: args
            .watch_namespaces
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect(),
        own_namespace: args.pod_namespace.clone().filter(|ns| !ns.is_empty()),
        pod_name: args.pod_name.clone(),
    };
    tracing::info!(namespaces = ?settings.namespaces, "sluice-operator running");
    if args.manage_crd {
        match sluice_operator::crd::ensure(&client).await {
            Ok(outcome) => tracing::info!(?outcome, "StreamingJob CRD"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep the StreamingJob CRD current; jobs are validated against the one installed")
            }
        }
    }
    let metrics = Arc::new(sluice_operator::metrics::Metrics::default());
    let addr = args.metrics_addr.unwrap_or(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        args.metrics_port,
    ));
    let server = tokio::spawn(sluice_operator::metrics::serve(addr, metrics.clone()));
    // One replica reconciles; the others wait for the Lease.
    let me = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("sluice-operator-{}", std::process::id()));
    let lease_ns = settings
        .own_namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client.clone(), &lease_ns);
    let lease = "sluice-operator";
    tracing::info!(identity = %me, namespace = %lease_ns, "waiting for the leader lease");
    sluice_operator::leader::acquire(&leases, lease, &me).await?;
    tracing::info!(identity = %me, "became leader");
    tokio::select! {
        () = sluice_operator::controller::run(client, settings, metrics) => {}
        () = sluice_operator::leader::hold(&leases, lease, &me) => {
            tracing::error!("lost the leader lease; exiting so a standby takes over");
            server.abort();
            std::process::exit(1);
        }
    }
    server.abort();
    Ok(())
}
