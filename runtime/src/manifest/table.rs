//! `joinStatic`'s data set: a file or an S3 object, read again at the first batch of every
//! `refresh` period, each period's copy pinned in the checkpoint.
//!
//! A batch run again after a failure must meet the data set its first run met, or its output
//! would differ from what the first run wrote. The batch's time says which period it is in; the
//! first process to read a period's data set writes it to the checkpoint under its digest and
//! pins the period to that digest (a write that only the first writer wins), and every later
//! run of a batch of that period, in any process, reads the pinned copy.

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use sluice_storage::{S3Settings, S3Store, Store};

use crate::exec::lock_unpoisoned;

/// The largest data set `joinStatic` loads into every task's memory.
pub const MAX_STATIC_TABLE_BYTES: u64 = 256 << 20;

/// Where a data set is read from.
pub enum Origin {
    File(String),
    S3 { uri: String, settings: S3Settings },
}

impl Origin {
    /// The data set's bytes; the errors describe it, never quote it.
    pub fn fetch(&self) -> Result<Vec<u8>, String> {
        match self {
            Origin::File(file) => read_file(file),
            Origin::S3 { uri, settings } => {
                let (bucket, key) = sluice_storage::parse_s3_uri(uri)
                    .ok_or_else(|| format!("{uri:?} is not s3://bucket/key"))?;
                let store = S3Store::open(&format!("s3://{bucket}"), settings)
                    .map_err(|e| format!("cannot reach {uri}: {e}"))?;
                let bytes = store
                    .get(&key)
                    .map_err(|e| format!("cannot read {uri}: {e}"))?
                    .ok_or_else(|| format!("{uri} does not exist"))?;
                if bytes.len() as u64 > MAX_STATIC_TABLE_BYTES {
                    return Err(format!(
                        "{uri} is {} bytes; joinStatic loads its data set into memory and takes at most {MAX_STATIC_TABLE_BYTES}",
                        bytes.len()
                    ));
                }
                Ok(bytes)
            }
        }
    }

    fn describe(&self) -> &str {
        match self {
            Origin::File(file) => file,
            Origin::S3 { uri, .. } => uri,
        }
    }
}

/// Reads a local data set: a regular file (a FIFO or a device would block or never end), of
/// bounded size.
fn read_file(file: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "{file} is not a regular file; joinStatic reads a file of lines"
        ));
    }
    if meta.len() > MAX_STATIC_TABLE_BYTES {
        return Err(format!(
            "{file} is {} bytes; joinStatic loads its data set into memory and takes at most {MAX_STATIC_TABLE_BYTES}",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_STATIC_TABLE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {file}: {e}"))?;
    Ok(bytes)
}

/// The data set as text, or which line is not UTF-8.
pub fn utf8(origin: &str, bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        format!("{origin} line {line} is not UTF-8 text")
    })
}

/// Parses a data set's text into the table a step looks records up in.
pub type Parse<T> = dyn Fn(&str) -> Result<T, String> + Send + Sync;

/// A data set read again every period, each period's copy pinned in `pins`.
pub struct RefreshedTable<T> {
    origin: Origin,
    pins: Option<Pins>,
    refresh_ms: u64,
    parse: Box<Parse<T>>,
    loaded: Mutex<Option<Loaded<T>>>,
}

struct Loaded<T> {
    period: u64,
    digest: String,
    table: Arc<T>,
}

/// Where periods are pinned: the job's checkpoint store, under a prefix of the step's own.
pub struct Pins {
    pub store: Box<dyn Store>,
    pub prefix: String,
}

impl<T> RefreshedTable<T> {
    /// Without `pins` (a job without a durable checkpoint) each period is read as it comes.
    pub fn new(origin: Origin, pins: Option<Pins>, refresh_ms: u64, parse: Box<Parse<T>>) -> Self {
        Self {
            origin,
            pins,
            refresh_ms: refresh_ms.max(1),
            parse,
            loaded: Mutex::new(None),
        }
    }

    /// The table of the period that the batch of time `time_ms` is in.
    pub fn at(&self, time_ms: u64) -> Result<Arc<T>, String> {
        let period = time_ms / self.refresh_ms;
        // One task loads a period; the others of the batch wait for its table.
        let mut loaded = lock_unpoisoned(&self.loaded);
        if let Some(l) = loaded.as_ref().filter(|l| l.period == period) {
            return Ok(l.table.clone());
        }
        // Read and parsed before it is pinned: a data set that does not parse is never
        // pinned, so the batch fails and runs again, reading it again, until it is mended.
        let mut fresh: Option<(String, Arc<T>)> = None;
        let mut read = || -> Result<Vec<u8>, String> {
            let bytes = self.origin.fetch()?;
            let table = self.parse(bytes.clone())?;
            fresh = Some((digest(&bytes), Arc::new(table)));
            Ok(bytes)
        };
        let digest = match &self.pins {
            Some(pins) => pins.pinned(period, read)?,
            None => digest(&read()?),
        };
        let table = match (fresh, loaded.as_ref()) {
            (Some((d, table)), _) if d == digest => table,
            // The data set did not change: the parsed table serves this period too.
            (_, Some(l)) if l.digest == digest => l.table.clone(),
            _ => match &self.pins {
                Some(pins) => Arc::new(self.parse(pins.data(&digest)?)?),
                None => return Err("the data set changed while it was read".into()),
            },
        };
        tracing::info!(
            data = self.origin.describe(),
            period,
            digest = &digest[..12],
            "joinStatic data set in use"
        );
        *loaded = Some(Loaded {
            period,
            digest,
            table: table.clone(),
        });
        Ok(table)
    }

    fn parse(&self, bytes: Vec<u8>) -> Result<T, String> {
        (self.parse)(&utf8(self.origin.describe(), bytes)?)
    }
}

impl Pins {
    /// The digest pinned for `period`, pinning what `read` reads when none is.
    fn pinned(
        &self,
        period: u64,
        read: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> Result<String, String> {
        let pointer = format!("{}/periods/{period:020}", self.prefix);
        if let Some(pinned) = self.get(&pointer)? {
            return text_digest(pinned);
        }
        let bytes = read()?;
        let digest = digest(&bytes);
        // Content-addressed: an object already there holds these bytes.
        self.store
            .put_new(&format!("{}/data/{digest}", self.prefix), &bytes)
            .map_err(|e| format!("cannot keep the data set in the checkpoint: {e}"))?;
        let won = self
            .store
            .put_new(&pointer, digest.as_bytes())
            .map_err(|e| format!("cannot pin the data set in the checkpoint: {e}"))?;
        if won {
            return Ok(digest);
        }
        // Another process pinned the period first, perhaps to other bytes: its copy counts.
        text_digest(
            self.get(&pointer)?
                .ok_or_else(|| format!("{pointer} vanished from the checkpoint"))?,
        )
    }

    fn data(&self, digest: &str) -> Result<Vec<u8>, String> {
        let key = format!("{}/data/{digest}", self.prefix);
        self.get(&key)?
            .ok_or_else(|| format!("the checkpoint lost the data set {key}"))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.store
            .get(key)
            .map_err(|e| format!("cannot read {key} from the checkpoint: {e}"))
    }
}

fn text_digest(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes)
        .ok()
        .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| "a pinned data set's digest is damaged".to_string())
}

fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_storage::MemoryStore;

    fn table(dir: &std::path::Path, pins: bool) -> (RefreshedTable<String>, std::path::PathBuf) {
        let file = dir.join("set.txt");
        let pins = pins.then(|| Pins {
            store: Box::new(MemoryStore::default()),
            prefix: "tables/step".into(),
        });
        let t = RefreshedTable::new(
            Origin::File(file.display().to_string()),
            pins,
            1000,
            Box::new(|text: &str| Ok(text.to_string())),
        );
        (t, file)
    }

    #[test]
    fn a_period_keeps_its_pinned_copy_and_the_next_reads_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (t, file) = table(dir.path(), true);
        std::fs::write(&file, "a").expect("write");
        assert_eq!(*t.at(1500).expect("period 1"), "a");
        std::fs::write(&file, "b").expect("write");
        // Period 1 again (a replay, even in a process that never loaded it): the pinned copy.
        assert_eq!(*t.at(1999).expect("period 1"), "a");
        assert_eq!(*t.at(2000).expect("period 2"), "b");
        *lock_unpoisoned(&t.loaded) = None;
        assert_eq!(*t.at(1000).expect("period 1, cold"), "a");
        assert_eq!(*t.at(2500).expect("period 2, cold"), "b");
    }

    #[test]
    fn without_pins_each_period_reads_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (t, file) = table(dir.path(), false);
        std::fs::write(&file, "a").expect("write");
        assert_eq!(*t.at(0).expect("period 0"), "a");
        std::fs::write(&file, "b").expect("write");
        assert_eq!(*t.at(999).expect("period 0"), "a");
        assert_eq!(*t.at(1000).expect("period 1"), "b");
        std::fs::remove_file(&file).expect("remove");
        let missing = t.at(2000).expect_err("gone");
        assert!(missing.contains("cannot read"), "{missing}");
    }
}
