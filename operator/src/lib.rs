//! The Sluice operator. The reconciler (`controller`) runs a pipeline over pure decisions:
//! what the job's pods say (`health`), whether the restart policy holds them (`restart`), the
//! objects that run the job (`resources`), whose its names are (`ownership`), and its status
//! and conditions (`status`, `conditions`), whether a changed spec may take over the
//! checkpoint (`upgrade`); then writes (`apply`) and says (`events`). Around
//! it: the checkpoint's deletion (`cleanup`), leader election, TLS and metrics.

pub mod apply;
pub mod autoscale;
pub mod cache;
pub mod cleanup;
pub mod conditions;
pub mod constants;
pub mod controller;
pub mod crd;
pub mod events;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod node_loss;
pub mod ownership;
pub mod resources;
pub mod restart;
pub mod status;
pub mod tls;
pub mod upgrade;
