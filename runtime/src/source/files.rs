//! New files in a directory, each read once (Spark's `textFileStream`).

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use super::{Line, LineSplitter, Refusals, Source, split_even};
use crate::error::{Error, Result};
use crate::time::BatchInfo;

/// Each batch takes the files that appeared since the previous one, in name order. Files whose
/// name starts with `.` or ends with `.tmp` are ignored until renamed, so writers can move
/// complete files in. Replayable while processed files stay in place.
pub struct FilesSource {
    name: String,
    dir: PathBuf,
    seen: BTreeSet<String>,
}

impl FilesSource {
    /// Watches `dir`.
    pub fn new(name: &str, dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.to_string(),
            dir: dir.into(),
            seen: BTreeSet::new(),
        }
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
}

impl Source for FilesSource {
    type Item = String;

    fn name(&self) -> &str {
        &self.name
    }

    fn replayable(&self) -> bool {
        true
    }

    fn plan(&mut self, _batch: &BatchInfo) -> Result<Json> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| self.error(format!("cannot list {}: {e}", self.dir.display())))?;
        let mut new = Vec::new();
        for entry in entries {
            let entry = entry
                .map_err(|e| self.error(format!("cannot list {}: {e}", self.dir.display())))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if is_file
                && !name.starts_with('.')
                && !name.ends_with(".tmp")
                && !self.seen.contains(&name)
            {
                new.push(name);
            }
        }
        new.sort();
        self.seen.extend(new.iter().cloned());
        Ok(json!({ "files": new }))
    }

    fn read(
        &mut self,
        range: &Json,
        partitions: usize,
        refused: &mut Refusals,
    ) -> Result<Vec<Vec<String>>> {
        let mut lines = Vec::new();
        for name in Self::names(range) {
            // Ranges come from the offset log or over the network: a name is one file of the
            // watched directory, never a path out of it.
            if name.is_empty() || name.contains('/') || name == ".." || name == "." {
                refused.push(format!("file name {name:?} is not a file of the directory"));
                continue;
            }
            let path = self.dir.join(&name);
            // A file that cannot be read, or a line that is not text, is refused on its own:
            // failing the batch would fail every replay of it too, and wedge the job.
            if let Err(e) = read_lines(&path, &mut |line| match line {
                Line::Text(text) => lines.push(text),
                Line::Refused(why) => refused.push(format!("file {name} {why}")),
            }) {
                tracing::warn!(source = %self.name, file = %path.display(), error = %e, "cannot read a file; it is skipped");
                refused.push(format!("file {name} cannot be read: {e}"));
            }
        }
        Ok(split_even(lines, partitions))
    }

    fn position(&self) -> Json {
        json!({ "seen": self.seen })
    }

    fn seek(&mut self, position: &Json) -> Result<()> {
        self.seen = Self::names(&json!({ "files": position["seen"] }))
            .into_iter()
            .collect();
        Ok(())
    }
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
