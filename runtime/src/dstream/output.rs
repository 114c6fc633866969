//! Output operations: `foreach_batch`, `print`, `save_as_text_files`, sinks, and
//! `collect_batches` for tests.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{DStream, Upstream};
use crate::data::Data;
use crate::error::{Error, Result};
use crate::exec::{BatchContext, Task, lock_unpoisoned};
use crate::sink::{FilesSink, Sink, StdoutSink, ToText};
use crate::time::BatchInfo;

struct OutputTask<T> {
    stream: Upstream<T>,
    output: usize,
    sink: Box<dyn Sink<T>>,
}

impl<T: Data> Task for OutputTask<T> {
    fn run(&self, cx: &BatchContext, part: usize) -> Result<()> {
        cx.put_output(self.output, part, self.stream.pull(cx, part)?);
        Ok(())
    }

    fn finish(&self, cx: &BatchContext) -> Result<()> {
        let parts = cx.take_output(self.output)?;
        let records: usize = parts.iter().map(|(_, r)| r.len()).sum();
        self.sink
            .write_partitions(&cx.batch, parts, cx.is_whole())?;
        cx.count_output(self.output, records as u64);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.sink.sync()
    }
}

struct FnSink<F>(F);

impl<T, F> Sink<T> for FnSink<F>
where
    F: Fn(&BatchInfo, Vec<T>) -> std::result::Result<(), String> + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        "foreachBatch"
    }

    fn write(&self, batch: &BatchInfo, records: Vec<T>) -> Result<()> {
        (self.0)(batch, records).map_err(|message| Error::Output {
            output: "foreachBatch".into(),
            message,
        })
    }
}

type Batches<T> = Vec<(BatchInfo, Vec<T>)>;

/// Batches gathered by [`DStream::collect_batches`].
#[derive(Clone, Default)]
pub struct Collected<T> {
    batches: Arc<Mutex<Batches<T>>>,
}

impl<T> Collected<T> {
    /// Takes the batches gathered so far.
    pub fn take(&self) -> Batches<T> {
        std::mem::take(&mut *lock_unpoisoned(&self.batches))
    }
}

impl<T: Data> DStream<T> {
    /// Sends every batch of this stream to `sink`.
    pub fn output(&self, sink: impl Sink<T>) {
        let stream = self.upstream();
        let name = sink.name().to_string();
        self.ctx
            .add_output(&name, self.slide_ms, vec![self.narrow()], move |output| {
                Arc::new(OutputTask {
                    stream,
                    output,
                    sink: Box::new(sink),
                })
            });
    }

    /// Calls `f` with every batch's records (all partitions, in order). An `Err` fails the batch,
    /// which is retried from the last checkpoint: `f` may see a batch twice and should be
    /// idempotent per batch time.
    pub fn foreach_batch(
        &self,
        f: impl Fn(&BatchInfo, Vec<T>) -> std::result::Result<(), String> + Send + Sync + 'static,
    ) {
        self.output(FnSink(f));
    }

    /// Gathers every batch in memory; for tests and examples.
    pub fn collect_batches(&self) -> Collected<T> {
        let collected = Collected {
            batches: Arc::new(Mutex::new(Vec::new())),
        };
        let sink = collected.clone();
        self.foreach_batch(move |batch, records| {
            lock_unpoisoned(&sink.batches).push((*batch, records));
            Ok(())
        });
        collected
    }
}

impl<T: Data + ToText> DStream<T> {
    /// Prints the first `n` records of every batch to standard output.
    pub fn print(&self, n: usize) {
        self.output(StdoutSink::new(
            n,
            Arc::new(|r: &T, out: &mut String| r.write_text(out)),
        ));
    }

    /// Writes every batch to `DIR/PREFIX-<batch time ms>.txt`, atomically.
    pub fn save_as_text_files(&self, dir: impl Into<PathBuf>, prefix: &str) {
        self.output(FilesSink::new(
            dir,
            prefix,
            Arc::new(|r: &T, out: &mut String| r.write_text(out)),
        ));
    }
}
