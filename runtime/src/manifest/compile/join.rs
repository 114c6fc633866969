//! `joinStatic`: join or filter a stream against a table read from a file when the job starts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sluice_crds::{StaticJoinMode, StaticJoinStep};

use super::{Compiler, Stream, local_path, per_record};
use crate::manifest::value::Value;
use crate::sink::ToText;

/// The largest table `joinStatic` loads into every task's memory.
pub const MAX_STATIC_TABLE_BYTES: u64 = 256 << 20;

/// Reads a `joinStatic` table: a regular file (a FIFO or a device would block or never end),
/// of bounded size, in UTF-8. Errors describe the file, never quote it.
fn read_static_table(file: &str) -> std::result::Result<String, String> {
    use std::io::Read;
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "{file} is not a regular file; joinStatic reads a file of lines"
        ));
    }
    if meta.len() > MAX_STATIC_TABLE_BYTES {
        return Err(format!(
            "{file} is {} bytes; joinStatic loads its table into memory and takes at most {MAX_STATIC_TABLE_BYTES}",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_STATIC_TABLE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {file}: {e}"))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        format!("{file} line {line} is not UTF-8 text")
    })
}

impl Compiler {
    pub(super) fn join_static(&mut self, stream: Stream, j: &StaticJoinStep, path: &str) -> Stream {
        let p = format!("{path}.joinStatic");
        let file = local_path(&j.uri);
        let text = match read_static_table(file) {
            Ok(t) => t,
            Err(why) => {
                self.problem(format!("{p}.uri"), why);
                return stream;
            }
        };
        let op = p.clone();
        match (j.mode, stream) {
            (StaticJoinMode::Join, Stream::Keyed(s)) => {
                let mut table = HashMap::new();
                for (n, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    match line.split_once(',') {
                        Some((k, v)) => {
                            table.insert(k.trim().to_string(), Value::Str(v.trim().to_string()));
                        }
                        // The line itself is not quoted: the file may hold anything, and
                        // this message reaches logs, the job's status and its events.
                        None => self.problem(
                            format!("{p}.uri"),
                            format!(
                                "{file} line {}: {} bytes with no comma, where key,value is expected",
                                n + 1,
                                line.len()
                            ),
                        ),
                    }
                }
                let table = Arc::new(table);
                Stream::Keyed(s.map_partitions(&op, move |_, pairs| {
                    Ok(pairs
                        .into_iter()
                        .filter_map(|(k, v)| {
                            table
                                .get(&k.to_text())
                                .map(|t| (k, Value::List(vec![v, t.clone()])))
                        })
                        .collect())
                }))
            }
            (StaticJoinMode::Join, other) => {
                self.problem(&p, "mode join needs a keyed stream; add keyBy before it");
                other
            }
            (mode, stream) => {
                let set: Arc<HashSet<String>> = Arc::new(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from)
                        .collect(),
                );
                let include = mode == StaticJoinMode::Include;
                match stream {
                    Stream::Keyed(s) => {
                        Stream::Keyed(s.map_partitions(&op, move |_, mut pairs| {
                            pairs.retain(|(k, _)| set.contains(&k.to_text()) == include);
                            Ok(pairs)
                        }))
                    }
                    Stream::Records(s) => {
                        let key = match &j.key {
                            Some(sel) => match self.selector(&format!("{p}.key"), sel) {
                                Some(k) => Some(k),
                                None => return Stream::Records(s),
                            },
                            None => None,
                        };
                        Stream::Records(s.map_partitions(&op.clone(), move |cx, recs| {
                            per_record(cx, &op, recs, |root, r, out| {
                                let k = match &key {
                                    Some(sel) => sel.record(root, &r)?.to_text(),
                                    None => r.to_text(),
                                };
                                if set.contains(&k) == include {
                                    out.push(r);
                                }
                                Ok(())
                            })
                        }))
                    }
                }
            }
        }
    }
}
