//! New files in a directory, each read once (Spark's `textFileStream`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rayon::prelude::*;
use serde_json::{Value as Json, json};

use super::{Line, LineSplitter, Refusals, Source, split_even};
use crate::error::{Error, Result};
use crate::time::BatchInfo;

/// Each batch takes the files that appeared since the previous one, in name order. Files whose
/// name starts with `.` or ends with `.tmp` are ignored until renamed, so writers can move
/// complete files in. Replayable while processed files stay in place.
///
/// The position is bounded: a file counts as new when its change time is no older than the
/// newest one seen minus `remember`, so only the names within that window are kept (in the
/// offset log of every batch), however many files the directory has held. The change time
/// (ctime) is set by the file system whenever a file is created or renamed in, and no writer
/// can set it back, so a file moved in with an old modification time is still new.
pub struct FilesSource {
    name: String,
    dir: PathBuf,
    remember_ms: u64,
    /// The newest change time seen, in ms since the epoch.
    newest_ms: u64,
    /// Files already planned whose change time is within the window, with that time.
    recent: BTreeMap<String, u64>,
    /// At most this many files per batch, oldest first.
    max_files: Option<usize>,
    /// Bytes of the files read, for the metrics.
    bytes_read: u64,
    /// The rate controller's bound, records per second (backpressure).
    rate_limit: Option<f64>,
    /// Bytes per line, estimated from the start of files planned: turns the controller's
    /// records into bytes of files, and bytes waiting into records.
    line_bytes: Option<f64>,
    /// Bytes of new files left for later batches by the last plan.
    backlog_bytes: u64,
}

/// How much of a file is read, while planning, to estimate its line length.
const SAMPLE_BYTES: u64 = 64 * 1024;

impl FilesSource {
    /// Watches `dir`, remembering read files for a minute.
    pub fn new(name: &str, dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.to_string(),
            dir: dir.into(),
            remember_ms: 60_000,
            newest_ms: 0,
            recent: BTreeMap::new(),
            max_files: None,
            bytes_read: 0,
            rate_limit: None,
            line_bytes: None,
            backlog_bytes: 0,
        }
    }

    /// Takes at most `n` files per batch (`maxFilesPerBatch`), the oldest first; the others
    /// wait for the next batches.
    pub fn max_files_per_batch(mut self, n: Option<usize>) -> Self {
        self.max_files = n.filter(|n| *n > 0);
        self
    }

    /// How long names of read files are remembered (`rememberFor`).
    pub fn remembering(mut self, window: Duration) -> Self {
        self.remember_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        self
    }

    fn error(&self, message: String) -> Error {
        Error::Source {
            source_name: self.name.clone(),
            message,
        }
    }

    fn names(range: &Json) -> Vec<String> {
        range["files"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn floor_ms(&self) -> u64 {
        self.newest_ms.saturating_sub(self.remember_ms)
    }

    /// Reads the start of `name` and folds its bytes per line into the estimate. Files are
    /// counted in bytes before they are read; the rate controller and the backlog count
    /// records. Each plan samples the oldest new file, so the estimate follows the input.
    fn sample_line_length(&mut self, name: &str) {
        let mut sample = Vec::with_capacity(SAMPLE_BYTES as usize);
        let read = fs::File::open(self.dir.join(name))
            .and_then(|f| f.take(SAMPLE_BYTES).read_to_end(&mut sample));
        let Ok(n) = read else { return };
        if n == 0 {
            return;
        }
        let lines = sample.iter().filter(|b| **b == b'\n').count();
        // A sample without a line end: its lines are at least this long.
        let per_line = n as f64 / lines.max(1) as f64;
        self.line_bytes = Some(match self.line_bytes {
            None => per_line,
            Some(old) => 0.8 * old + 0.2 * per_line,
        });
    }

    /// The bytes the next batch may take: the rate controller's records for one interval,
    /// at the estimated line length.
    fn byte_budget(&self, batch: &BatchInfo) -> Option<u64> {
        let records = self.rate_limit? * batch.interval_ms as f64 / 1000.0;
        Some((records * self.line_bytes?).max(1.0) as u64)
    }
}

/// When a file was created or last renamed, in ms since the epoch.
fn changed_ms(meta: &fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let secs = u64::try_from(meta.ctime()).unwrap_or(0);
        let nanos = u64::try_from(meta.ctime_nsec()).unwrap_or(0);
        secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
    }
    #[cfg(not(unix))]
    {
        meta.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl Source for FilesSource {
    type Item = String;

    fn name(&self) -> &str {
        &self.name
    }

    fn replayable(&self) -> bool {
        true
    }

    fn plan(&mut self, batch: &BatchInfo) -> Result<Json> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| self.error(format!("cannot list {}: {e}", self.dir.display())))?;
        let floor = self.floor_ms();
        let mut new = Vec::new();
        for entry in entries {
            let entry = entry
                .map_err(|e| self.error(format!("cannot list {}: {e}", self.dir.display())))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') || name.ends_with(".tmp") || self.recent.contains_key(&name) {
                continue;
            }
            // Gone between the listing and now (moved away again): not a file of this batch.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let changed = changed_ms(&meta);
            if meta.is_file() && changed >= floor {
                new.push((name, changed, meta.len()));
            }
        }
        // The oldest first: those left are newer than every file taken, so they stay within
        // the window for the next batch.
        new.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        if let Some((name, _, _)) = new.first() {
            self.sample_line_length(name);
        }
        let budget = self.byte_budget(batch);
        let mut take = 0;
        let mut bytes = 0u64;
        for (_, _, len) in &new {
            // At least one file, so a file larger than the budget still passes.
            let full = self.max_files.is_some_and(|max| take >= max)
                || budget.is_some_and(|b| bytes.saturating_add(*len) > b);
            if take > 0 && full {
                break;
            }
            take += 1;
            bytes = bytes.saturating_add(*len);
        }
        self.backlog_bytes = new[take..].iter().map(|f| f.2).sum();
        new.truncate(take);
        new.sort();
        for (name, changed, _) in &new {
            self.newest_ms = self.newest_ms.max(*changed);
            self.recent.insert(name.clone(), *changed);
        }
        let floor = self.floor_ms();
        self.recent.retain(|_, changed| *changed >= floor);
        let names: Vec<String> = new.into_iter().map(|(name, _, _)| name).collect();
        Ok(json!({ "files": names }))
    }

    fn read(
        &mut self,
        range: &Json,
        partitions: usize,
        refused: &mut Refusals,
    ) -> Result<Vec<Vec<String>>> {
        let names = Self::names(range);
        // A file a task thread (the batch is read on the job's pool), joined in name order:
        // the same records in the same order however many threads read them.
        let files: Vec<FileLines> = names
            .par_iter()
            .map(|name| read_file(&self.name, &self.dir, name))
            .collect();
        let mut lines = Vec::with_capacity(files.iter().map(|f| f.lines.len()).sum());
        for file in files {
            lines.extend(file.lines);
            refused.absorb(file.refused);
            self.bytes_read += file.bytes;
        }
        Ok(split_even(lines, partitions))
    }

    fn bytes_read(&self) -> Option<u64> {
        Some(self.bytes_read)
    }

    fn rate_limited(&self) -> bool {
        true
    }

    fn limit_rate(&mut self, records_per_second: Option<f64>) {
        self.rate_limit = records_per_second.filter(|r| r.is_finite() && *r > 0.0);
    }

    /// Estimated: the bytes of the files left for later over the estimated line length.
    fn backlog(&self) -> Option<u64> {
        if self.backlog_bytes == 0 {
            return Some(0);
        }
        Some((self.backlog_bytes as f64 / self.line_bytes?).ceil() as u64)
    }

    fn position(&self) -> Json {
        json!({ "newest": self.newest_ms, "recent": self.recent })
    }

    fn seek(&mut self, position: &Json) -> Result<()> {
        let bad = |source: &Self| {
            source.error(format!(
                "the checkpoint's position of this source is not one it wrote: {}",
                crate::error::shorten(&position.to_string(), 200)
            ))
        };
        if let Some(recent) = position.get("recent") {
            let newest = position["newest"].as_u64().ok_or_else(|| bad(self))?;
            self.recent = serde_json::from_value(recent.clone()).map_err(|_| bad(self))?;
            self.newest_ms = newest;
            return Ok(());
        }
        // Written before the window: every name ever read. Keep those still in the window
        // (by their change time now); the others are older than it and stay ignored.
        let seen = position.get("seen").ok_or_else(|| bad(self))?;
        let mut recent = BTreeMap::new();
        for name in Self::names(&json!({ "files": seen })) {
            if let Ok(meta) = fs::metadata(self.dir.join(&name)) {
                recent.insert(name, changed_ms(&meta));
            }
        }
        self.newest_ms = recent.values().copied().max().unwrap_or(0);
        self.recent = recent;
        let floor = self.floor_ms();
        self.recent.retain(|_, changed| *changed >= floor);
        Ok(())
    }
}

/// One file's part of a batch.
struct FileLines {
    lines: Vec<String>,
    refused: Refusals,
    /// The lines and their ends.
    bytes: u64,
}

/// Reads the file `name` of `dir`. A file that cannot be read, or a line that is not text, is
/// refused on its own: failing the batch would fail every replay of it too, and wedge the job.
fn read_file(source: &str, dir: &Path, name: &str) -> FileLines {
    let mut file = FileLines {
        lines: Vec::new(),
        refused: Refusals::default(),
        bytes: 0,
    };
    // Ranges come from the offset log or over the network: a name is one file of the
    // watched directory, never a path out of it.
    if name.is_empty() || name.contains('/') || name == ".." || name == "." {
        file.refused
            .push(format!("file name {name:?} is not a file of the directory"));
        return file;
    }
    let path = dir.join(name);
    let FileLines {
        lines,
        refused,
        bytes,
    } = &mut file;
    if let Err(e) = read_lines(&path, &mut |line| match line {
        Line::Text(text) => {
            *bytes += text.len() as u64 + 1;
            lines.push(text)
        }
        Line::Refused(why) => refused.push(format!("file {name} {why}")),
    }) {
        tracing::warn!(source = %source, file = %path.display(), error = %e, "cannot read a file; it is skipped");
        refused.push(format!("file {name} cannot be read: {e}"));
    }
    file
}

/// Feeds a file's lines to `out`, a read buffer at a time: an overlong line is never held.
fn read_lines(path: &Path, out: &mut impl FnMut(Line)) -> std::io::Result<()> {
    let mut file = fs::File::open(path)?;
    let mut splitter = LineSplitter::default();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => splitter.feed(&buffer[..n], out),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    splitter.finish(out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_file_is_read_once_and_temp_files_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = FilesSource::new("f", dir.path());
        fs::write(dir.path().join("a.txt"), "1\n2\n").expect("write");
        fs::write(dir.path().join(".b.txt"), "hidden\n").expect("write");
        let b = BatchInfo::new(0, 1000, 1);
        let r = s.plan(&b).expect("plan");
        assert_eq!(r, json!({"files": ["a.txt"]}));
        assert_eq!(
            s.read(&r, 1, &mut Refusals::default()).expect("read"),
            vec![vec!["1".to_string(), "2".to_string()]]
        );
        assert_eq!(s.plan(&b).expect("plan"), json!({"files": []}));
        let pos = s.position();
        let mut t = FilesSource::new("f", dir.path());
        t.seek(&pos).expect("seek");
        assert_eq!(t.plan(&b).expect("plan"), json!({"files": []}));
    }

    #[test]
    fn the_position_keeps_only_the_window_and_old_modification_times_are_still_new() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = FilesSource::new("f", dir.path()).remembering(Duration::from_millis(300));
        let b = BatchInfo::new(0, 1000, 1);
        for i in 0..50 {
            fs::write(dir.path().join(format!("old-{i:02}.txt")), "x\n").expect("write");
        }
        assert_eq!(FilesSource::names(&s.plan(&b).expect("plan")).len(), 50);
        std::thread::sleep(Duration::from_millis(600));
        // Moved in with a modification time a year old: the rename sets its change time.
        let staged = dir.path().join(".staged");
        fs::write(&staged, "y\n").expect("write");
        let year_ago = std::time::SystemTime::now() - Duration::from_secs(365 * 86_400);
        fs::File::options()
            .write(true)
            .open(&staged)
            .and_then(|f| f.set_modified(year_ago))
            .expect("set mtime");
        fs::rename(&staged, dir.path().join("late.txt")).expect("rename");
        assert_eq!(s.plan(&b).expect("plan"), json!({"files": ["late.txt"]}));
        // The 50 older names left the position; none of them is read again.
        let pos = s.position();
        assert_eq!(pos["recent"].as_object().map(|m| m.len()), Some(1), "{pos}");
        assert_eq!(s.plan(&b).expect("plan"), json!({"files": []}));
        let mut t = FilesSource::new("f", dir.path()).remembering(Duration::from_millis(300));
        t.seek(&pos).expect("seek");
        assert_eq!(t.plan(&b).expect("plan"), json!({"files": []}));
    }

    #[test]
    fn max_files_per_batch_takes_the_oldest_and_leaves_the_rest_for_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = FilesSource::new("f", dir.path()).max_files_per_batch(Some(2));
        for name in ["c.txt", "a.txt", "b.txt"] {
            fs::write(dir.path().join(name), "x\n").expect("write");
            std::thread::sleep(Duration::from_millis(15));
        }
        let b = BatchInfo::new(0, 1000, 1);
        assert_eq!(
            s.plan(&b).expect("plan"),
            json!({"files": ["a.txt", "c.txt"]})
        );
        assert_eq!(s.plan(&b).expect("plan"), json!({"files": ["b.txt"]}));
        assert_eq!(s.plan(&b).expect("plan"), json!({"files": []}));
    }

    #[test]
    fn the_rate_bound_takes_whole_files_oldest_first_and_counts_the_rest_as_backlog() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = FilesSource::new("f", dir.path());
        // Five files of 100 lines of 10 bytes (9 characters and the line end).
        let lines = "abcdefghi\n".repeat(100);
        for name in ["e", "d", "c", "b", "a"] {
            fs::write(dir.path().join(name), &lines).expect("write");
            std::thread::sleep(Duration::from_millis(15));
        }
        // 250 records a second, 1 s batches: two files of 100 lines fit, a third does not.
        s.limit_rate(Some(250.0));
        let b = BatchInfo::new(0, 1000, 1);
        assert_eq!(s.plan(&b).expect("plan"), json!({"files": ["d", "e"]}));
        assert_eq!(s.backlog(), Some(300));
        // Below one file's worth: still one file a batch, so the job moves.
        s.limit_rate(Some(10.0));
        assert_eq!(s.plan(&b).expect("plan"), json!({"files": ["c"]}));
        assert_eq!(s.backlog(), Some(200));
        // The bound lifted: everything waiting.
        s.limit_rate(None);
        assert_eq!(s.plan(&b).expect("plan"), json!({"files": ["a", "b"]}));
        assert_eq!(s.backlog(), Some(0));
        assert_eq!(
            s.read(&json!({"files": ["a"]}), 1, &mut Refusals::default())
                .expect("read")[0]
                .len(),
            100
        );
    }

    #[test]
    fn several_threads_read_the_same_records_in_the_same_order_as_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut names = Vec::new();
        for f in 0..9 {
            let name = format!("f{f}");
            let mut text = String::new();
            for l in 0..(f * 37 + 5) {
                text.push_str(&format!("file {f} line {l}\n"));
            }
            if f == 4 {
                text.push_str("bad \u{0}");
                let mut bytes = text.into_bytes();
                bytes.extend_from_slice(b"\xff\n");
                fs::write(dir.path().join(&name), bytes).expect("write");
            } else {
                fs::write(dir.path().join(&name), text).expect("write");
            }
            names.push(name);
        }
        names.push("missing".into());
        let range = json!({ "files": names });
        // On a pool of `threads`, as the job reads a batch on its task threads.
        let read = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| {
                let mut s = FilesSource::new("f", dir.path());
                let mut refused = Refusals::default();
                let parts = s.read(&range, 4, &mut refused).expect("read");
                (parts, refused, s.bytes_read)
            })
        };
        let one = read(1);
        assert_eq!(one.0.iter().map(Vec::len).sum::<usize>(), 1_377);
        assert_eq!(one.1.count(), 2, "{:?}", one.1);
        for threads in [2, 3, 16] {
            assert_eq!(read(threads), one, "{threads} threads");
        }
    }

    #[test]
    fn a_position_from_before_the_window_still_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a.txt"), "1\n").expect("write");
        fs::write(dir.path().join("b.txt"), "2\n").expect("write");
        let mut s = FilesSource::new("f", dir.path());
        s.seek(&json!({"seen": ["a.txt", "gone.txt"]}))
            .expect("seek");
        assert_eq!(
            s.plan(&BatchInfo::new(0, 1000, 1)).expect("plan"),
            json!({"files": ["b.txt"]})
        );
        let err = s.seek(&json!({"recent": 3})).expect_err("not a position");
        assert!(err.to_string().contains("position"), "{err}");
    }

    #[test]
    fn bad_lines_and_unreadable_files_are_refused_and_the_rest_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = FilesSource::new("f", dir.path());
        fs::write(dir.path().join("a.txt"), "1\n2").expect("write");
        fs::write(dir.path().join("b.txt"), b"3\nsecret\xc3\n4\n").expect("write");
        fs::write(dir.path().join("c.txt"), "5\n").expect("write");
        let r = s.plan(&BatchInfo::new(0, 1000, 1)).expect("plan");
        fs::remove_file(dir.path().join("c.txt")).expect("remove");
        let mut refused = Refusals::default();
        let got = s.read(&r, 1, &mut refused).expect("read");
        assert_eq!(got, vec![vec!["1", "2", "3", "4"]]);
        assert_eq!(refused.count(), 2);
        assert!(
            refused.samples()[0].starts_with("file b.txt line 2: not UTF-8"),
            "{:?}",
            refused.samples()
        );
        assert!(refused.samples()[1].starts_with("file c.txt cannot be read"));
        assert!(!refused.samples().iter().any(|m| m.contains("secret")));
    }
}
