//! What a store operation can fail with.

use std::path::PathBuf;

/// Failures of a store, by what they say about the data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// What is stored is not what was written: a missing or corrupt object, a key outside the
    /// store. Retrying does not repair it.
    #[error("checkpoint: {0}")]
    Damaged(String),
    /// The store did not answer or refused a request (network, permissions, missing bucket);
    /// says nothing about the data, and may pass.
    #[error("checkpoint store: {0}")]
    Unavailable(String),
    /// The location is written wrongly.
    #[error("{0}")]
    Config(String),
    /// The store could not start (its client runtime).
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Result with a store's error.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
