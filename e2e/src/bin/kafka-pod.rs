//! `kafka-pod`: what the node agent runs for a Kafka image, as the entry point of a broker
//! image would: one KRaft node listening on `$POD_IP:9092`, its data under `$KAFKA_DATA_DIR`
//! (a volume, so a restarted container keeps its topics), the jars from the cache
//! `e2e/scripts/install-kafka.sh` fills (or `$SLUICE_KAFKA_JARS`).

use std::path::PathBuf;

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let ip = std::env::var("POD_IP").context("POD_IP is not set (give it from status.podIP)")?;
    let dir = std::env::var("KAFKA_DATA_DIR").context("KAFKA_DATA_DIR is not set")?;
    println!(
        "kafka-pod: broker on {ip}:{}, data in {dir}",
        sluice_e2e::kafka::POD_PORT
    );
    sluice_e2e::kafka::exec_pod_broker(&ip, &PathBuf::from(dir))?;
    Ok(())
}
