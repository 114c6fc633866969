//! Generated gRPC types and services of `sluice.v1` (see `sluice/v1/runtime.proto`).

/// Bumped on any incompatible change of the protocol; peers of another version are refused.
pub const PROTOCOL_VERSION: u32 = 3;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}
