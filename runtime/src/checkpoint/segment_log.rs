//! The offset and commit logs of a checkpoint that one process writes alone (`sluice run`, or
//! a master whose checkpoint is a local directory, both holding its
//! [`WriterLock`](super::WriterLock)): segment files that each batch's entry is appended to
//! and made durable with one `fdatasync`, instead of a new file per batch. A new file costs its
//! inode, a rename or link and a directory fsync: about four times an append on the disks
//! measured (docs/performance.md), and the offset entry is on every batch's path.
//!
//! ```text
//! offsets/<first batch>.<writer>.log    frames: [length u32 LE][CRC32 u32 LE][entry JSON]
//! commits/<first batch>.<writer>.log    the same
//! ```
//!
//! A segment holds up to [`ENTRIES_PER_SEGMENT`] consecutive batches from its first; every
//! batch in it is below the first of the next segment, so pruning drops whole segments. A
//! process killed in the middle of an append leaves a torn frame at a segment's end; readers
//! stop at the first frame that is cut short or fails its CRC, and that entry was never
//! durable, so nothing that follows it happened (an offset entry is synced before its batch
//! runs, a commit entry before the batch is reported complete). The next
//! process starts a new segment rather than append behind it.
//!
//! Stores other processes may write (S3, a directory without the lock) keep the file per batch,
//! whose creation fences two masters racing for one batch. Readers take both forms.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Batches per segment: a segment is dropped once the oldest kept snapshot is past all of them.
const ENTRIES_PER_SEGMENT: u64 = 1024;

const SUFFIX: &str = ".log";
const HEADER: usize = 8;

/// The first batch of the segment named `name`, if it is one.
pub(crate) fn segment_first(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (first, _writer) = stem.split_once('.')?;
    first.parse().ok()
}

/// Frames `entry` for a segment.
fn frame(entry: &[u8]) -> Result<Vec<u8>> {
    let len = u32::try_from(entry.len())
        .map_err(|_| Error::Internal(format!("an offset entry of {} bytes", entry.len())))?;
    let mut out = Vec::with_capacity(HEADER + entry.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(entry).to_le_bytes());
    out.extend_from_slice(entry);
    Ok(out)
}

/// The whole entries of a segment, in order, up to the first torn or damaged frame; and how
/// many bytes follow them (a torn tail, or damage).
pub(crate) fn entries(segment: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut rest = segment;
    while rest.len() >= HEADER {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let Some(body) = rest.get(HEADER..HEADER + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        out.push(body);
        rest = &rest[HEADER + len..];
    }
    (out, rest.len())
}

/// Appends entries to the segment files of one log in a local checkpoint directory.
pub(crate) struct Appender {
    dir: PathBuf,
    /// Names this process's segments apart from a killed predecessor's.
    writer: String,
    /// Entries before a new segment ([`ENTRIES_PER_SEGMENT`]).
    per_segment: u64,
    active: Mutex<Active>,
}

#[derive(Default)]
struct Active {
    segment: Option<(File, u64)>,
    /// The newest batch logged (by anyone, in either form), once looked up.
    newest: Option<u64>,
}

impl Appender {
    /// Appends to the log in `dir`; its segments are named by `writer` (unique to this
    /// process). The caller holds the checkpoint's lock.
    pub(crate) fn new(dir: PathBuf, writer: String) -> Self {
        Self {
            dir,
            writer,
            per_segment: ENTRIES_PER_SEGMENT,
            active: Mutex::new(Active::default()),
        }
    }

    /// With `n` entries per segment (tests: segments roll without a thousand fsyncs).
    #[cfg(test)]
    pub(crate) fn per_segment(mut self, n: u64) -> Self {
        self.per_segment = n.max(1);
        self
    }

    /// The newest batch logged: `look_up` the first time (it reads the log), then as appended.
    pub(crate) fn newest(&self, look_up: impl FnOnce() -> Result<u64>) -> Result<u64> {
        let mut active = crate::exec::lock_unpoisoned(&self.active);
        match active.newest {
            Some(newest) => Ok(newest),
            None => {
                let newest = look_up()?;
                active.newest = Some(newest);
                Ok(newest)
            }
        }
    }

    /// Forgets what it knows of the log, which was deleted.
    pub(crate) fn reset(&self) {
        *crate::exec::lock_unpoisoned(&self.active) = Active::default();
    }

    /// Appends the entry of `batch` and makes it durable. After a failed write the segment is
    /// left behind (its tail may be torn) and the next entry starts another.
    pub(crate) fn append(&self, batch: u64, entry: &[u8]) -> Result<()> {
        let bytes = frame(entry)?;
        let mut active = crate::exec::lock_unpoisoned(&self.active);
        if active
            .segment
            .as_ref()
            .is_none_or(|(_, n)| *n >= self.per_segment)
        {
            active.segment = Some((self.create(batch)?, 0));
        }
        let Some((file, n)) = active.segment.as_mut() else {
            return Err(Error::Internal("no offset segment open".into()));
        };
        let written = file.write_all(&bytes).and_then(|()| file.sync_data());
        if let Err(e) = written {
            active.segment = None;
            return Err(Error::io("append to the log in", &self.dir, e));
        }
        *n += 1;
        active.newest = Some(active.newest.map_or(batch, |b| b.max(batch)));
        Ok(())
    }

    /// Creates the segment whose first batch is `batch`, durably (its directory entry too).
    fn create(&self, batch: u64) -> Result<File> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io("create directory", &self.dir, e))?;
        let path = self
            .dir
            .join(format!("{batch:020}.{}{SUFFIX}", self.writer));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("sync directory", &self.dir, e))?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(entries: &[&[u8]]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|e| frame(e).expect("frame"))
            .collect()
    }

    #[test]
    fn segment_names_give_their_first_batch() {
        assert_eq!(segment_first("00000000000000000042.1a2b3c.log"), Some(42));
        assert_eq!(segment_first("00000000000000000042.json"), None);
        assert_eq!(segment_first("notabatch.w.log"), None);
        assert_eq!(segment_first(".00000000000000000042.w.log.7.tmp"), None);
    }

    #[test]
    fn every_cut_or_damage_leaves_a_prefix_of_the_entries() {
        let all: [&[u8]; 3] = [b"{\"batch\":1}", b"", b"{\"batch\":3,\"x\":\"yz\"}"];
        let bytes = log(&all);
        assert_eq!(entries(&bytes), (all.to_vec(), 0));
        // A process killed in the middle of an append: every cut is a prefix.
        for cut in 0..bytes.len() {
            let (read, rest) = entries(&bytes[..cut]);
            assert_eq!(read, all[..read.len()].to_vec(), "cut at {cut}");
            assert_eq!(log(&read).len() + rest, cut, "cut at {cut}");
        }
        // Any byte flipped: the entries before it, never a changed one.
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x41;
            let (read, _) = entries(&damaged);
            assert!(read.len() < all.len(), "flip at {at} went unseen");
            assert_eq!(read, all[..read.len()].to_vec(), "flip at {at}");
        }
    }

    #[test]
    fn segments_roll_after_their_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Appender::new(dir.path().join("offsets"), "w".into()).per_segment(4);
        for batch in 1..=6 {
            log.append(batch, format!("{batch}").as_bytes())
                .expect("append");
        }
        let mut names: Vec<String> = fs::read_dir(dir.path().join("offsets"))
            .expect("list")
            .map(|e| e.expect("entry").file_name().into_string().expect("name"))
            .collect();
        names.sort();
        let firsts: Vec<Option<u64>> = names.iter().map(|n| segment_first(n)).collect();
        assert_eq!(firsts, vec![Some(1), Some(5)]);
        let second = fs::read(dir.path().join("offsets").join(&names[1])).expect("read");
        let (read, rest) = entries(&second);
        assert_eq!(read, vec![b"5".as_slice(), b"6"]);
        assert_eq!(rest, 0);
        assert_eq!(log.newest(|| Ok(0)).expect("newest"), 6);
    }
}
