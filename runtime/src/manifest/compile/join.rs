//! `joinStatic`: join or filter a stream against a data set read from a file or S3 when the
//! job starts, and again every `refresh` ([`crate::manifest::table`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sluice_crds::{StaticJoinMode, StaticJoinStep, parse_duration};

use super::{Compiler, Stream, local_path, per_record};
use crate::error::{Error, Result};
use crate::exec::BatchContext;
use crate::manifest::table::{Origin, Pins, RefreshedTable};
use crate::manifest::value::Value;
use crate::sink::ToText;

/// `mode: join`'s table: `key,value` lines.
type Pairs = HashMap<String, Value>;
/// `include` and `exclude`'s set: one entry per line.
type Set = HashSet<String>;

fn parse_pairs(origin: &str, text: &str) -> std::result::Result<Pairs, String> {
    let mut table = HashMap::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match line.split_once(',') {
            Some((k, v)) => {
                table.insert(k.trim().to_string(), Value::Str(v.trim().into()));
            }
            // The line itself is not quoted: the file may hold anything, and this message
            // reaches logs, the job's status and its events.
            None => {
                return Err(format!(
                    "{origin} line {}: {} bytes with no comma, where key,value is expected",
                    n + 1,
                    line.len()
                ));
            }
        }
    }
    Ok(table)
}

fn parse_set(text: &str) -> Set {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// A step's data set, for the batch at hand.
struct DataSet<T> {
    table: Arc<RefreshedTable<T>>,
    op: String,
}

impl<T> Clone for DataSet<T> {
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
            op: self.op.clone(),
        }
    }
}

impl<T> DataSet<T> {
    fn at(&self, cx: &BatchContext) -> Result<Arc<T>> {
        self.table
            .at(cx.batch.time_ms)
            .map_err(|message| Error::Source {
                source_name: self.op.clone(),
                message,
            })
    }
}

impl Compiler {
    pub(super) fn join_static(&mut self, stream: Stream, j: &StaticJoinStep, path: &str) -> Stream {
        let p = format!("{path}.joinStatic");
        let op = p.clone();
        match (j.mode, stream) {
            (StaticJoinMode::Join, Stream::Keyed(s)) => {
                let Some(pairs) = self.data_set(&p, j, parse_pairs) else {
                    return Stream::Keyed(s);
                };
                Stream::Keyed(s.map_partitions(&op, move |cx, pairs_in| {
                    let table = pairs.at(cx)?;
                    Ok(pairs_in
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
                let Some(set) = self.data_set(&p, j, |_, text| Ok(parse_set(text))) else {
                    return stream;
                };
                let include = mode == StaticJoinMode::Include;
                match stream {
                    Stream::Keyed(s) => {
                        Stream::Keyed(s.map_partitions(&op, move |cx, mut pairs| {
                            let set = set.at(cx)?;
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
                            let set = set.at(cx)?;
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

    /// The step's data set, read by `parse`. A local file is read now too, so that a missing
    /// or malformed one stops the job before it starts, with the field; an S3 object is read
    /// at the first batch (`sluice validate` reaches no store). With `refresh` and a
    /// checkpoint, each period's copy is pinned under `tables/` in the checkpoint.
    fn data_set<T: Send + Sync + 'static>(
        &mut self,
        p: &str,
        j: &StaticJoinStep,
        parse: impl Fn(&str, &str) -> std::result::Result<T, String> + Send + Sync + 'static,
    ) -> Option<DataSet<T>> {
        let origin = if j.uri.starts_with("s3://") {
            Origin::S3 {
                uri: j.uri.clone(),
                settings: sluice_storage::S3Settings {
                    endpoint: j.endpoint.clone(),
                    region: j.region.clone(),
                    path_style: j.path_style.unwrap_or(false),
                    credentials: None,
                },
            }
        } else {
            let file = local_path(&j.uri).to_string();
            let checked = Origin::File(file.clone())
                .fetch()
                .and_then(|bytes| crate::manifest::table::utf8(&file, bytes))
                .and_then(|text| parse(&file, &text).map(drop));
            if let Err(why) = checked {
                self.problem(format!("{p}.uri"), why);
                return None;
            }
            Origin::File(file)
        };
        let described = j.uri.clone();
        let parse: Box<crate::manifest::table::Parse<T>> =
            Box::new(move |text| parse(local_path(&described), text));
        let Some(refresh) = &j.refresh else {
            // Read once per process: one period that never ends.
            let table = RefreshedTable::new(origin, None, u64::MAX, parse);
            return Some(DataSet {
                table: Arc::new(table),
                op: p.to_string(),
            });
        };
        let refresh_ms = match parse_duration(refresh) {
            Ok(d) => d.as_millis().try_into().unwrap_or(u64::MAX),
            Err(why) => {
                self.problem(format!("{p}.refresh"), why);
                return None;
            }
        };
        let pins = match &self.checkpoint {
            Some(spec) => match crate::checkpoint::open_store(spec) {
                Ok(store) => Some(Pins {
                    store,
                    prefix: format!("tables/{}", key_segment(p)),
                }),
                Err(e) => {
                    self.problem("spec.checkpoint.uri", e.to_string());
                    return None;
                }
            },
            None => None,
        };
        Some(DataSet {
            table: Arc::new(RefreshedTable::new(origin, pins, refresh_ms, parse)),
            op: p.to_string(),
        })
    }
}

/// A step's path as one segment of a checkpoint key: `spec.streams[1].pipeline[2].joinStatic`
/// becomes `spec.streams-1.pipeline-2.joinStatic`.
fn key_segment(path: &str) -> String {
    path.replace('[', "-").replace(']', "")
}
