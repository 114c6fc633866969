//! The `StreamingJob` manifest shared by the Sluice runtime and operator: Rust types, YAML
//! parsing with field paths, validation, and the job fingerprint that guards checkpoints.
//!
//! This crate knows nothing of how jobs run; it must stay free of engine, network and
//! Kubernetes client code so both sides can depend on it cheaply.

mod duration;
#[cfg(any(feature = "expressions", test))]
pub mod expressions;
mod fingerprint;
pub mod graph;
pub mod kafka;
mod kinds;
mod parse;
pub mod postgres;
#[cfg(feature = "kube")]
pub mod resource;
mod s3;
pub mod spec;
mod text;
pub mod upgrade;
mod validate;

pub use duration::{format_duration, parse_duration};
pub use fingerprint::{digest, fingerprint, fingerprint_v1};
pub use kinds::{JoinKind, SinkKind, SourceKind, StepKind};
pub use parse::{parse_yaml, spec_json};
pub use s3::{endpoint_problem, parse_s3_uri, s3_uri_problem};
pub use spec::*;
pub use text::shorten;
pub use validate::{MAX_PARALLELISM, MAX_TOP, Problem, Shape, validate};

/// Reads and validates a manifest: every problem found, or the job.
pub fn load(text: &str) -> Result<StreamingJob, Vec<Problem>> {
    let job = parse_yaml(text).map_err(|p| vec![p])?;
    let problems = validate(&job);
    if problems.is_empty() {
        Ok(job)
    } else {
        Err(problems)
    }
}
