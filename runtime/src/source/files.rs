//! New files in a directory, each read once (Spark's `textFileStream`).

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use serde_json::{Value as Json, json};

use super::{Source, split_even};
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

    fn read(&mut self, range: &Json, partitions: usize) -> Result<Vec<Vec<String>>> {
        let mut lines = Vec::new();
        for name in Self::names(range) {
            let path = self.dir.join(&name);
            let text = fs::read_to_string(&path)
                .map_err(|e| self.error(format!("cannot read {}: {e}", path.display())))?;
            lines.extend(text.lines().map(String::from));
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
            s.read(&r, 1).expect("read"),
            vec![vec!["1".to_string(), "2".to_string()]]
        );
        assert_eq!(s.plan(&b).expect("plan"), json!({"files": []}));
        let pos = s.position();
        let mut t = FilesSource::new("f", dir.path());
        t.seek(&pos).expect("seek");
        assert_eq!(t.plan(&b).expect("plan"), json!({"files": []}));
    }
}
