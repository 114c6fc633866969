//! Newline-delimited text from a TCP server, reconnecting with backoff.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value as Json, json};

use super::{Line, LineSplitter, Refusals, Source, split_even};
use crate::error::{Error, Result};
use crate::exec::lock_unpoisoned;
use crate::time::BatchInfo;

/// Lines buffered between batches before the receiver stops reading (and TCP pushes back).
const MAX_BUFFERED_LINES: usize = 4_000_000;
/// Bytes of text buffered between batches before the receiver stops reading.
const MAX_BUFFERED_BYTES: usize = 256 << 20;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What arrived since the last planned batch.
#[derive(Default)]
struct Received {
    lines: Vec<String>,
    bytes: usize,
    refused: Refusals,
}

impl Received {
    fn full(&self) -> bool {
        self.lines.len() >= MAX_BUFFERED_LINES || self.bytes >= MAX_BUFFERED_BYTES
    }
}

/// A receiver thread reads lines into a buffer; each batch takes what has arrived. Not
/// replayable by itself: the coordinator writes each batch's lines to the write-ahead log before the
/// batch runs; lines received after the last planned batch are lost if the process dies.
/// Lines are decoded one by one and bounded in length ([`super::MAX_LINE_BYTES`]): a line that
/// is not UTF-8 or too long is refused (counted under `onRecordError`), never the ones around it.
pub struct SocketSource {
    name: String,
    addr: String,
    buffer: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    receiver: Option<JoinHandle<()>>,
    held: BTreeMap<u64, Vec<String>>,
}

impl SocketSource {
    /// A source reading from `host:port` once started.
    pub fn new(name: &str, host: &str, port: u16) -> Self {
        Self {
            name: name.to_string(),
            addr: format!("{host}:{port}"),
            buffer: Arc::default(),
            stop: Arc::default(),
            receiver: None,
            held: BTreeMap::new(),
        }
    }
}

fn receive(name: String, addr: String, buffer: Arc<Mutex<Received>>, stop: Arc<AtomicBool>) {
    let mut backoff = Duration::from_millis(100);
    let mut bytes = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let mut stream = match TcpStream::connect(&addr) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(source = %name, %addr, error = %e, retry_in = ?backoff, "cannot connect; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        tracing::info!(source = %name, %addr, "connected");
        backoff = Duration::from_millis(100);
        // A read timeout lets the thread notice `stop` on an idle connection; bytes of a line
        // that straddles a pause wait in the splitter.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut splitter = LineSplitter::default();
        // The lines of one read are handed over under one lock, not one lock per line.
        let mut lines: Vec<Line> = Vec::new();
        let deliver = |lines: &mut Vec<Line>| {
            let mut received = lock_unpoisoned(&buffer);
            for line in lines.drain(..) {
                match line {
                    Line::Text(text) => {
                        received.bytes += text.len();
                        received.lines.push(text);
                    }
                    Line::Refused(why) => received.refused.push(why),
                }
            }
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if lock_unpoisoned(&buffer).full() {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            match stream.read(&mut bytes) {
                Ok(0) => {
                    splitter.finish(&mut |l| lines.push(l));
                    deliver(&mut lines);
                    tracing::warn!(source = %name, %addr, "connection closed by the server; reconnecting");
                    break;
                }
                Ok(n) => {
                    splitter.feed(&bytes[..n], &mut |l| lines.push(l));
                    deliver(&mut lines);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    splitter.abandon(&mut |l| lines.push(l));
                    deliver(&mut lines);
                    tracing::warn!(source = %name, %addr, error = %e, "connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}

impl Source for SocketSource {
    type Item = String;

    fn name(&self) -> &str {
        &self.name
    }

    fn replayable(&self) -> bool {
        false
    }

    fn on_start(&mut self) -> Result<()> {
        let (name, addr, buffer, stop) = (
            self.name.clone(),
            self.addr.clone(),
            self.buffer.clone(),
            self.stop.clone(),
        );
        let handle = std::thread::Builder::new()
            .name(format!("sluice-socket-{}", self.name))
            .spawn(move || receive(name, addr, buffer, stop))
            .map_err(|e| Error::Source {
                source_name: self.name.clone(),
                message: format!("cannot start the receiver: {e}"),
            })?;
        self.receiver = Some(handle);
        Ok(())
    }

    fn plan(&mut self, batch: &BatchInfo) -> Result<Json> {
        let received = std::mem::take(&mut *lock_unpoisoned(&self.buffer));
        let n = received.lines.len();
        self.held.insert(batch.index, received.lines);
        let mut range = json!({ "batch": batch.index, "records": n });
        // Refusals travel with the range, so the batch counts them even when replayed.
        if received.refused.count() > 0 {
            range["refused"] = received.refused.to_json();
        }
        Ok(range)
    }

    fn read(
        &mut self,
        range: &Json,
        partitions: usize,
        _refused: &mut Refusals,
    ) -> Result<Vec<Vec<String>>> {
        let index = range["batch"].as_u64().unwrap_or(0);
        let lines = self.held.get(&index).cloned().unwrap_or_else(|| {
            tracing::warn!(source = %self.name, batch = index, records = %range["records"], "socket data of this batch was lost with the previous process; the batch is empty");
            Vec::new()
        });
        Ok(split_even(lines, partitions))
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

    fn on_close(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.receiver.take() {
            let _ = handle.join();
        }
    }
}
