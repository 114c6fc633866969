//! Engine errors. Each carries a domain so the coordinator (in local mode and on the master) and the operator
//! can tell a bad job from a flaky disk: user errors stop the job, external ones are retried.

use std::path::PathBuf;

/// Who is at fault, which decides whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// The job or its input is wrong; retrying gives the same result.
    User,
    /// Something outside (disk, network, a checkpoint store) failed; retrying may succeed.
    External,
    /// A bug in Sluice.
    Internal,
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operation refused a record and the job says `onRecordError: fail`.
    #[error("{operation}: {message}")]
    Record { operation: String, message: String },
    /// The job is built wrongly (a window that is not a multiple of the batch interval, ...).
    #[error("{0}")]
    Config(String),
    /// A file or directory could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint exists but cannot be used (torn, corrupt, from another job).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The checkpoint store did not answer or refused a request (network, permissions,
    /// missing bucket). Unlike [`Error::Checkpoint`], it says nothing about the data.
    #[error("checkpoint store: {0}")]
    Store(String),
    /// A source failed to produce or replay input.
    #[error("source {source_name}: {message}")]
    Source {
        source_name: String,
        message: String,
    },
    /// A user-supplied output function failed.
    #[error("output {output}: {message}")]
    Output { output: String, message: String },
    /// An invariant of the engine broke.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The error's domain.
    pub fn domain(&self) -> Domain {
        match self {
            Error::Record { .. } | Error::Config(_) => Domain::User,
            Error::Io { .. }
            | Error::Checkpoint(_)
            | Error::Store(_)
            | Error::Source { .. }
            | Error::Output { .. } => Domain::External,
            Error::Internal(_) => Domain::Internal,
        }
    }

    /// Whether running the batch again may succeed. A damaged checkpoint
    /// ([`Error::Checkpoint`]) stays damaged: retrying it for ever would hide it.
    pub fn is_retryable(&self) -> bool {
        self.domain() == Domain::External && !matches!(self, Error::Checkpoint(_))
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

pub use sluice_crds::shorten;

impl From<sluice_storage::StoreError> for Error {
    fn from(e: sluice_storage::StoreError) -> Self {
        use sluice_storage::StoreError as S;
        match e {
            S::Io {
                action,
                path,
                source,
            } => Error::Io {
                action,
                path,
                source,
            },
            S::Damaged(why) => Error::Checkpoint(why),
            S::Unavailable(why) => Error::Store(why),
            S::Config(why) => Error::Config(why),
            S::Internal(why) => Error::Internal(why),
        }
    }
}

/// Result with the engine's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
