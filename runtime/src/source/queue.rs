//! An in-memory queue of batches, for tests and the Rust API (like Spark's `queueStream`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{Value as Json, json};

use super::{Refusals, Source, split_even};
use crate::data::Data;
use crate::error::{Error, Result};
use crate::exec::lock_unpoisoned;
use crate::time::BatchInfo;

/// Each batch takes the next pushed `Vec` (or nothing when the queue is empty). Not replayable:
/// after a process restart, batches that were planned but not checkpointed come back empty.
pub struct QueueSource<T> {
    name: String,
    queue: Arc<Mutex<VecDeque<Vec<T>>>>,
    held: BTreeMap<u64, Vec<T>>,
}

impl<T> Clone for QueueSource<T> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            queue: self.queue.clone(),
            held: BTreeMap::new(),
        }
    }
}

impl<T> QueueSource<T> {
    /// An empty queue.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            queue: Arc::default(),
            held: BTreeMap::new(),
        }
    }

    /// Queues the records of one future batch.
    pub fn push(&self, records: Vec<T>) {
        lock_unpoisoned(&self.queue).push_back(records);
    }
}

impl<T: Data> Source for QueueSource<T> {
    type Item = T;

    fn name(&self) -> &str {
        &self.name
    }

    fn replayable(&self) -> bool {
        false
    }

    fn plan(&mut self, batch: &BatchInfo) -> Result<Json> {
        let records = lock_unpoisoned(&self.queue).pop_front().unwrap_or_default();
        let n = records.len();
        self.held.insert(batch.index, records);
        Ok(json!({ "batch": batch.index, "records": n }))
    }

    fn read(
        &mut self,
        range: &Json,
        partitions: usize,
        _refused: &mut Refusals,
    ) -> Result<Vec<Vec<T>>> {
        let index = range["batch"].as_u64().ok_or_else(|| Error::Source {
            source_name: self.name.clone(),
            message: format!("range {range} has no batch index"),
        })?;
        let records = self.held.get(&index).cloned().unwrap_or_else(|| {
            tracing::warn!(source = %self.name, batch = index, "queue data of this batch was lost with the previous process; the batch is empty");
            Vec::new()
        });
        Ok(split_even(records, partitions))
    }

    fn records_for_log(&mut self, range: &Json) -> Result<Option<Vec<Self::Item>>> {
        let index = range["batch"].as_u64().unwrap_or(0);
        Ok(Some(self.held.get(&index).cloned().unwrap_or_default()))
    }

    fn position(&self) -> Json {
        Json::Null
    }

    fn seek(&mut self, _position: &Json) -> Result<()> {
        Ok(())
    }

    fn on_checkpoint(&mut self, batch: &BatchInfo) {
        self.held.retain(|&i, _| i > batch.index);
    }
}
