//! The Sluice operator: the pure builders that turn a StreamingJob into the Kubernetes objects
//! that run it (`resources`), what the job's pods say about it (`health`), its status
//! (`status`), the reconciler that applies all of it (`controller`), leader election and
//! metrics.

pub mod cleanup;
pub mod constants;
pub mod controller;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod resources;
pub mod status;
pub mod tls;
