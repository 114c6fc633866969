//! `sluice-node-agent`: runs the pods bound to its nodes as local processes (see the `agent`
//! module for what it does and does not do).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sluice_e2e::agent::{self, AgentConfig};
use sluice_e2e::control_plane::client_for;

const HELP: &str =
    "sluice-node-agent --kubeconfig FILE --dir DIR [--nodes n1,n2] [--image NAME=PATH]...

Registers the nodes and runs the pods bound to them as local processes. An image name (without
tag or registry) maps to the local binary that stands for it. SIGTERM/SIGINT kill every pod
process and exit.";

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_ansi(false)
        .init();
    let mut kubeconfig = None;
    let mut dir = None;
    let mut nodes = vec!["node-1".to_string()];
    let mut images = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n\n{HELP}"))
        };
        match arg.as_str() {
            "--kubeconfig" => kubeconfig = Some(PathBuf::from(value()?)),
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--nodes" => nodes = value()?.split(',').map(String::from).collect(),
            "--image" => {
                let v = value()?;
                let (name, path) = v
                    .split_once('=')
                    .with_context(|| format!("--image {v}: write NAME=PATH"))?;
                images.push((name.to_string(), PathBuf::from(path)));
            }
            "--help" | "-h" => {
                println!("{HELP}");
                return Ok(());
            }
            other => bail!("unknown argument {other}\n\n{HELP}"),
        }
    }
    let kubeconfig = kubeconfig.context("--kubeconfig is required")?;
    let dir = dir.context("--dir is required")?;
    let client = client_for(&kubeconfig).await?;
    let port = std::fs::read_to_string(&kubeconfig)?
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("server: https://127.0.0.1:")
                .map(|p| p.trim().parse::<u16>())
        })
        .context("the kubeconfig's server must be https://127.0.0.1:PORT")??;
    let config = AgentConfig {
        dir,
        images,
        api_host: "127.0.0.1".into(),
        api_port: port,
    };
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
        }
    };
    agent::run(client, config, nodes, shutdown).await
}
