//! The Sluice operator. So far: the pure builders that turn a StreamingJob into the Kubernetes
//! objects that run it (`resources`), unit-tested without a cluster. The controller that applies
//! them comes next (see the open operator issue).

pub mod constants;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod resources;
pub mod status;
