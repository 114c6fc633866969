//! Test infrastructure for Sluice's end-to-end tests: a real Kubernetes control plane on
//! loopback ([`control_plane`]) built from the Go module proxy, and a node agent ([`agent`])
//! that runs pods as local processes. See `e2e/README.md`.

pub mod agent;
pub mod cluster;
pub mod control_plane;
pub mod crd;
pub mod pki;
pub mod process;
