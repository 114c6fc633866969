//! The job fingerprint: what a checkpoint must match to be resumed.

use sha2::{Digest, Sha256};

use crate::spec::StreamingJobSpec;

/// A short hex digest of everything that shapes a job's state: batch interval, parallelism,
/// sources and pipeline. Sinks, checkpoint settings and metadata may change across a restart.
pub fn fingerprint(spec: &StreamingJobSpec) -> String {
    let shaping = serde_json::json!({
        "batchInterval": spec.batch_interval,
        "parallelism": spec.parallelism,
        "sources": spec.sources,
        "pipeline": spec.pipeline,
    });
    let digest = Sha256::digest(shaping.to_string().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
