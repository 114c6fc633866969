//! `sluice-cluster`: a test cluster by hand.
//!
//! `sluice-cluster up [--dir DIR] [--nodes n1,n2] [--image NAME=PATH]...` builds nothing (run
//! `e2e/scripts/build-control-plane.sh` first), starts the control plane and a node agent, prints
//! the kubeconfig and stays in the foreground; Ctrl-C or `sluice-cluster down --dir DIR` tears
//! everything down.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sluice_e2e::cluster::{ClusterOptions, TestCluster};

const HELP: &str = "sluice-cluster up [--dir DIR] [--nodes n1,n2] [--image NAME=PATH]...
sluice-cluster down [--dir DIR]

up starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a node agent on
loopback and waits for Ctrl-C or `down`; DIR defaults to /tmp/sluice-cluster.";

fn agent_bin() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("sluice-node-agent");
    if !bin.exists() {
        bail!("{} is missing: cargo build -p sluice-e2e", bin.display());
    }
    Ok(bin)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let mut dir = PathBuf::from("/tmp/sluice-cluster");
    let mut nodes = vec!["node-1".to_string()];
    let mut images = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n\n{HELP}"))
        };
        match arg.as_str() {
            "--dir" => dir = PathBuf::from(value()?),
            "--nodes" => nodes = value()?.split(',').map(String::from).collect(),
            "--image" => {
                let v = value()?;
                let (n, p) = v
                    .split_once('=')
                    .with_context(|| format!("--image {v}: write NAME=PATH"))?;
                images.push((n.to_string(), PathBuf::from(p)));
            }
            other => bail!("unknown argument {other}\n\n{HELP}"),
        }
    }
    let pid_file = dir.join("cluster.pid");
    match command.as_str() {
        "up" => {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("clean {}", dir.display()))?;
            }
            std::fs::create_dir_all(&dir)?;
            let cluster = TestCluster::start(ClusterOptions {
                dir: dir.clone(),
                nodes,
                images,
                agent_bin: agent_bin()?,
            })
            .await?;
            std::fs::write(&pid_file, std::process::id().to_string())?;
            println!(
                "cluster ready in {:?}\nexport KUBECONFIG={}",
                cluster.started_in,
                cluster.kubeconfig().display()
            );
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            drop(cluster);
            let _ = std::fs::remove_file(&pid_file);
            println!("cluster stopped");
            Ok(())
        }
        "down" => {
            let pid: i32 = std::fs::read_to_string(&pid_file)
                .with_context(|| {
                    format!("no cluster at {} ({})", dir.display(), pid_file.display())
                })?
                .trim()
                .parse()?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            )?;
            for _ in 0..300 {
                if !pid_file.exists() {
                    println!("cluster stopped");
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            bail!("the cluster (pid {pid}) did not stop in 30s")
        }
        _ => {
            println!("{HELP}");
            Ok(())
        }
    }
}
