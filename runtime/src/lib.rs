//! Sluice: micro-batch stream processing with Spark Streaming's DStream model.
//!
//! - [`dstream`]: the typed API ([`StreamingContext`], [`DStream`]).
//! - [`plan`]: the job graph and per-batch stage plans, as plain data.
//! - [`exec`]: running a plan's stages on a thread pool.
//! - [`source`] and [`sink`]: inputs and outputs; [`kafka`]: Kafka's source and sink.
//! - [`checkpoint`]: what is written where (offset log, commits, snapshots) on a store.
//! - [`coordinator`]: the batch protocol — clock, offset log, snapshots and recovery — once,
//!   over a runner: in this process ([`local`], `sluice run`) or on workers ([`master`],
//!   [`worker`]).
//! - [`manifest`]: StreamingJob manifests compiled into DStreams.
//! - [`cli`]: the `sluice` command.

pub mod checkpoint;
pub mod cli;
pub mod coordinator;
pub mod data;
pub mod dstream;
pub mod error;
pub mod exec;
pub mod job;
pub mod kafka;
pub mod local;
pub mod manifest;
pub mod master;
pub mod metrics;
pub mod plan;
pub mod rpc;
pub mod sink;
pub mod source;
pub mod time;
pub mod ui;
pub mod worker;

pub use dstream::{DStream, StreamingConfig, StreamingContext};
pub use error::{Error, Result};
pub use job::Job;
