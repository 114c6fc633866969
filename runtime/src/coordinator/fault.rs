//! What went wrong in a step of the protocol, and what the loop does about it.

use crate::error::{Domain, Error};

/// A failed step: an engine error in this process, or what a cluster runner learned from
/// its workers.
#[derive(Debug)]
pub enum Fault {
    /// An engine error in this process; [`Fault::class`] reads its domain.
    Engine(Error),
    /// A worker did not answer: drop it and recover without it.
    Lost { worker: String, why: String },
    /// Every worker is there, but the batch cannot go on (a push between workers failed, a
    /// worker holds another placement): place again and recover at once.
    Rollback(String),
    /// The checkpoint store or a source failed: recover after a back-off.
    Retry(String),
    /// A snapshot or log entry is torn or does not match its checksum.
    Damaged(String),
    /// The job or its input is wrong (a record refused under `onRecordError: fail`): running
    /// it again fails the same way, so the job fails, with the message.
    Job(String),
    /// Sluice has a bug, or something else that no retry repairs.
    Fatal(String),
}

/// What the loop does about a [`Fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Lost,
    Rollback,
    Retry,
    Damaged,
    Job,
    Fatal,
}

impl Fault {
    pub fn class(&self) -> Class {
        match self {
            Fault::Engine(Error::Checkpoint(_)) => Class::Damaged,
            Fault::Engine(e) if e.domain() == Domain::User => Class::Job,
            Fault::Engine(e) if e.is_retryable() => Class::Retry,
            Fault::Engine(_) => Class::Fatal,
            Fault::Lost { .. } => Class::Lost,
            Fault::Rollback(_) => Class::Rollback,
            Fault::Retry(_) => Class::Retry,
            Fault::Damaged(_) => Class::Damaged,
            Fault::Job(_) => Class::Job,
            Fault::Fatal(_) => Class::Fatal,
        }
    }

    /// The engine's error for it, for callers that report one (`sluice run`'s exit code
    /// follows its domain).
    pub fn into_error(self) -> Error {
        match self {
            Fault::Engine(e) => e,
            Fault::Damaged(why) => Error::Checkpoint(why),
            Fault::Job(why) => Error::Config(why),
            Fault::Retry(why) => Error::Store(why),
            Fault::Lost { worker, why } => Error::Internal(format!("worker {worker} lost: {why}")),
            Fault::Rollback(why) | Fault::Fatal(why) => Error::Internal(why),
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Engine(e) => write!(f, "{e}"),
            Fault::Lost { worker, why } => write!(f, "worker {worker} lost: {why}"),
            Fault::Rollback(why)
            | Fault::Retry(why)
            | Fault::Damaged(why)
            | Fault::Job(why)
            | Fault::Fatal(why) => f.write_str(why),
        }
    }
}

impl From<Error> for Fault {
    fn from(e: Error) -> Self {
        Fault::Engine(e)
    }
}
