//! A new batch's offset entry, written on a thread of its own while the batch reads its input
//! and runs the stages before its outputs.
//!
//! The entry must be durable before the batch writes any output: a replay after a crash must
//! find the ranges that made it. Nothing before the outputs needs it — reading the input and
//! computing change nothing outside this process, and a batch whose entry turns out to be
//! someone else's (a newer master's, or an older one's that planned it first) is dropped with
//! its state by the recovery that follows. So the store's round trips (on S3, a read for a
//! newer master's claim and a conditional write) overlap the batch's work instead of adding to
//! it, and the outputs wait only for what is left of them.

use std::sync::Mutex;
use std::thread::ScopedJoinHandle;

use crate::checkpoint::Logged;
use crate::error::{Error, Result};

/// The write of one batch's offset entry, under way or done.
pub(super) struct LogAhead<'scope> {
    state: Mutex<Write<'scope>>,
}

struct Write<'scope> {
    under_way: Option<ScopedJoinHandle<'scope, Result<Logged>>>,
    done: Option<Result<Logged>>,
}

impl<'scope> Write<'scope> {
    fn join(&mut self) -> &Result<Logged> {
        if let Some(writing) = self.under_way.take() {
            self.done = Some(writing.join().unwrap_or_else(|_| {
                Err(Error::Internal(
                    "the thread logging the batch's offsets panicked".into(),
                ))
            }));
        }
        self.done.get_or_insert_with(|| {
            Err(Error::Internal(
                "the batch's offsets write has no outcome".into(),
            ))
        })
    }
}

impl<'scope> LogAhead<'scope> {
    pub fn new(writing: ScopedJoinHandle<'scope, Result<Logged>>) -> Self {
        Self {
            state: Mutex::new(Write {
                under_way: Some(writing),
                done: None,
            }),
        }
    }

    /// A write done already (where no thread could be started for it).
    pub fn done(outcome: Result<Logged>) -> Self {
        Self {
            state: Mutex::new(Write {
                under_way: None,
                done: Some(outcome),
            }),
        }
    }

    /// For the batch's outputs: waits for the write; `Ok` when this master logged the batch,
    /// else the batch stops before writing anything (the loop reads why from
    /// [`LogAhead::finish`]).
    pub fn logged(&self) -> Result<()> {
        let mut write = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match write.join() {
            Ok(Logged::Written) => Ok(()),
            Ok(Logged::Taken { epoch }) => Err(Error::Checkpoint(format!(
                "the batch was logged by the master of epoch {epoch}; its outputs are not written"
            ))),
            Err(e) => Err(Error::Store(format!(
                "the batch's offsets could not be logged, so its outputs are not written: {e}"
            ))),
        }
    }

    /// Waits for the write; what it did.
    pub fn finish(self) -> Result<Logged> {
        let mut write = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        write.join();
        write
            .done
            .take()
            .unwrap_or_else(|| Err(Error::Internal("the offsets write was not joined".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outputs_wait_for_the_entry_and_the_loop_gets_what_it_did() {
        std::thread::scope(|s| {
            let taken = LogAhead::new(s.spawn(|| Ok(Logged::Taken { epoch: 7 })));
            assert!(matches!(taken.logged(), Err(Error::Checkpoint(m)) if m.contains("epoch 7")));
            assert_eq!(taken.finish().ok(), Some(Logged::Taken { epoch: 7 }));
            let written = LogAhead::new(s.spawn(|| Ok(Logged::Written)));
            assert!(written.logged().is_ok());
            assert_eq!(written.finish().ok(), Some(Logged::Written));
            // Never waited for by outputs (the batch failed first): the loop still waits.
            let failed = LogAhead::new(s.spawn(|| Err(Error::Checkpoint("torn".into()))));
            assert!(matches!(failed.finish(), Err(Error::Checkpoint(m)) if m == "torn"));
        });
    }
}
