//! What a job's processes agree on: the gRPC types and services of `sluice.v1` (see
//! `sluice/v1/runtime.proto`), their TLS, how they log, and how a master tells the operator
//! that the job itself failed. The operator depends on this crate, not on the engine.

pub mod logs;
mod tls;

pub use tls::Tls;

/// Bumped on any incompatible change of the protocol; peers of another version are refused.
pub const PROTOCOL_VERSION: u32 = 4;

/// The exit code of a `sluice` process whose job is at fault (an invalid manifest, a record
/// refused under `onRecordError: fail`): starting it again fails the same way.
pub const EXIT_JOB_AT_FAULT: u8 = 2;

/// How a master's last log line begins when the job itself is at fault; the operator finds
/// the job's own words after it in the container's termination message.
pub const JOB_FAILED: &str = "the job failed: ";

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}
