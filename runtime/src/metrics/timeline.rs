//! The recent history of a job, as the batch-timeline page shows it: the last batches with
//! their figures and stage times, and what happened between them (recoveries, placements,
//! snapshots). Kept in memory, bounded; served as JSON at `/api/timeline`.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

use crate::time::now_ms;

/// Batches kept: ten minutes of 1 s batches.
pub const BATCHES_KEPT: usize = 600;
/// Events kept.
pub const EVENTS_KEPT: usize = 100;

/// One committed batch.
#[derive(Clone, Debug, Serialize)]
pub struct BatchRow {
    pub batch: u64,
    pub time_ms: u64,
    pub records: u64,
    pub refused: u64,
    pub processing_ms: f64,
    pub scheduling_delay_ms: f64,
    pub total_delay_ms: f64,
    /// Records per second of batch time.
    pub input_rate: f64,
    pub replay: bool,
    /// Each stage's label (`input`, `shuffle 0`, `state 1`, `output 0`) and wall time in ms,
    /// in plan order.
    pub stages: Vec<(String, f64)>,
    pub committed_at_ms: u64,
}

/// What happened between batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EventKind {
    /// A failed attempt; the job recovers from the last snapshot.
    Failure,
    /// The job runs again after a failure.
    Recovered,
    /// Partitions placed on (another set of) workers: a start, a rescale, a loss.
    Placement,
    /// A snapshot of the job's state written.
    Checkpoint,
    /// A snapshot failed.
    CheckpointFailed,
}

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub at_ms: u64,
    pub kind: EventKind,
    /// The newest committed batch when it happened.
    pub after_batch: Option<u64>,
    pub detail: String,
}

/// The page's data.
#[derive(Debug, Default, Serialize)]
pub struct Timeline {
    pub interval_ms: u64,
    pub batches: VecDeque<BatchRow>,
    pub events: VecDeque<Event>,
    /// The worker owning each partition (`sluice run`: none, every partition runs here).
    pub owners: Vec<String>,
}

impl Timeline {
    pub fn batch(&mut self, row: BatchRow) {
        if self.batches.len() == BATCHES_KEPT {
            self.batches.pop_front();
        }
        self.batches.push_back(row);
    }

    pub fn event(&mut self, kind: EventKind, detail: String) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            at_ms: now_ms(),
            kind,
            after_batch: self.batches.back().map(|b| b.batch),
            detail,
        });
    }
}

/// Milliseconds with a fraction, as the charts plot them.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
