//! Compiles a StreamingJob manifest into DStreams: sources, pipeline steps, sinks.
//!
//! Expressions, regular expressions and static data sets are checked here, with the field path
//! of the step, so `sluice validate` reports them like any other manifest problem.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use sluice_crds::{
    Aggregation, FlatMapStep, OutputFormat, PipelineStep, Problem, Selector, SinkSpec, SourceSpec,
    StaticJoinMode, StaticJoinStep, StreamingJob, defaults, parse_duration,
};

use super::aggregate::Acc;
use super::expr::{Expr, root_context};
use super::value::{StrKey, Value};
use crate::data::KeyMap;
use crate::dstream::windowed_reduce::Inverse;
use crate::dstream::{DStream, StreamingConfig, StreamingContext};
use crate::error::Result;
use crate::exec::BatchContext;
use crate::job::Job;
use crate::sink::{FilesSink, LineFormat, StdoutSink, ToText};
use crate::source::{FilesSource, GeneratorConfig, GeneratorSource, SocketSource};

/// A plain or keyed stream of manifest values.
enum Stream {
    Records(DStream<Value>),
    Keyed(DStream<(Value, Value)>),
}

/// Options that are not part of the manifest.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Task threads.
    pub threads: usize,
    /// Replace the manifest's sinks by one that only counts records (benchmarks).
    pub discard_output: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            discard_output: false,
        }
    }
}

/// Turns a path or `file://` URI into a path.
pub fn local_path(uri: &str) -> &str {
    uri.strip_prefix("file://").unwrap_or(uri)
}

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

/// Builds the job; returns every problem found (with field paths) otherwise.
pub fn compile(
    job: &StreamingJob,
    options: &CompileOptions,
) -> std::result::Result<Job, Vec<Problem>> {
    let spec = &job.spec;
    let interval = parse_duration(&spec.batch_interval)
        .map_err(|m| vec![Problem::new("spec.batchInterval", m)])?;
    let mut config = StreamingConfig::new(interval)
        .parallelism(spec.parallelism.unwrap_or(defaults::PARALLELISM) as usize)
        .threads(options.threads);
    config.on_record_error = spec.on_record_error.unwrap_or_default();
    let ctx = StreamingContext::new(config);
    let mut c = Compiler {
        ctx: ctx.clone(),
        problems: Vec::new(),
    };

    let mut input: Option<DStream<String>> = None;
    for (i, source) in spec.sources.iter().enumerate() {
        let stream = c.source(&format!("spec.sources[{i}]"), source);
        input = Some(match input {
            Some(all) => all.union(&stream),
            None => stream,
        });
    }
    let Some(input) = input else {
        return Err(vec![Problem::new(
            "spec.sources",
            "needs at least one source",
        )]);
    };
    let mut stream = Stream::Records(input.map(Value::Str));
    let steps = &spec.pipeline;
    let mut i = 0;
    while i < steps.len() {
        let (next, used) = c.step(stream, steps, i);
        stream = next;
        i += used;
    }
    if options.discard_output {
        match &stream {
            Stream::Records(s) => s.foreach_batch(|_, _| Ok(())),
            Stream::Keyed(s) => s.foreach_batch(|_, _| Ok(())),
        }
    } else {
        for sink in &spec.sinks {
            c.sink(&stream, sink);
        }
    }
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    ctx.build()
        .map_err(|e| vec![Problem::new("spec", e.to_string())])
}

struct Compiler {
    ctx: StreamingContext,
    problems: Vec<Problem>,
}

/// How `selector` picks a value.
#[derive(Clone)]
enum Sel {
    Field(Vec<String>),
    Expr(Expr),
}

impl Sel {
    fn record(&self, root: &cel::Context<'_, '_>, r: &Value) -> std::result::Result<Value, String> {
        match self {
            Sel::Field(path) => r.field(path),
            Sel::Expr(e) => e.eval_record(root, r),
        }
    }

    fn pair(
        &self,
        root: &cel::Context<'_, '_>,
        k: &Value,
        v: &Value,
    ) -> std::result::Result<Value, String> {
        match self {
            Sel::Field(path) => v.field(path),
            Sel::Expr(e) => e.eval_pair(root, k, v),
        }
    }
}

/// How a text record is cut into pieces.
enum Splitter {
    Whitespace,
    Separator(String),
    Regex(Regex),
}

impl Splitter {
    fn for_each<'a>(&self, text: &'a str, mut f: impl FnMut(&'a str)) {
        match self {
            Splitter::Whitespace => text.split_whitespace().for_each(f),
            Splitter::Separator(sep) => text
                .split(sep.as_str())
                .filter(|p| !p.is_empty())
                .for_each(f),
            Splitter::Regex(re) => re.find_iter(text).for_each(|m| f(m.as_str())),
        }
    }
}

/// Runs `f` on each record of a partition, counting refusals under `op`.
fn per_record<T, U>(
    cx: &BatchContext,
    op: &str,
    records: Vec<T>,
    mut f: impl FnMut(&cel::Context<'_, '_>, T, &mut Vec<U>) -> std::result::Result<(), String>,
) -> Result<Vec<U>> {
    let root = root_context();
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        if let Err(message) = f(&root, r, &mut out) {
            cx.record_error(op, message)?;
        }
    }
    Ok(out)
}

fn text_format(format: OutputFormat) -> (LineFormat<Value>, LineFormat<(Value, Value)>) {
    match format {
        OutputFormat::Text => (
            Arc::new(|v: &Value, out: &mut String| v.write_text(out)),
            Arc::new(|p: &(Value, Value), out: &mut String| p.write_text(out)),
        ),
        OutputFormat::Json => (
            Arc::new(|v: &Value, out: &mut String| out.push_str(&v.to_json().to_string())),
            Arc::new(|(k, v): &(Value, Value), out: &mut String| {
                out.push_str(
                    &serde_json::json!({ "key": k.to_json(), "value": v.to_json() }).to_string(),
                )
            }),
        ),
    }
}

impl Compiler {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    fn source(&mut self, path: &str, s: &SourceSpec) -> DStream<String> {
        if let Some(g) = &s.generator {
            return self.ctx.source(GeneratorSource::new(GeneratorConfig {
                name: s.name.clone(),
                rate: g.rate,
                seed: g.seed.unwrap_or(defaults::GENERATOR_SEED),
                format: g.format.unwrap_or_default(),
                vocabulary: g.vocabulary.unwrap_or(defaults::GENERATOR_VOCABULARY),
                line_bytes: g.line_bytes.unwrap_or(defaults::GENERATOR_LINE_BYTES),
            }));
        }
        if let Some(f) = &s.files {
            let remember = match &f.remember_for {
                None => Duration::from_secs(defaults::FILES_REMEMBER_FOR_SECONDS),
                Some(text) => {
                    let field = format!("{path}.files.rememberFor");
                    let d = self.duration(&field, Some(text));
                    if d.is_zero() {
                        self.problem(
                            field,
                            "must be longer than 0s: it covers files that land while a batch is planned",
                        );
                    }
                    d
                }
            };
            return self
                .ctx
                .source(FilesSource::new(&s.name, local_path(&f.path)).remembering(remember));
        }
        if let Some(sock) = &s.socket {
            return self.ctx.source(SocketSource::new(
                &s.name,
                &sock.host,
                u16::try_from(sock.port).unwrap_or(0),
            ));
        }
        // `validate` reports the missing kind; an empty queue keeps the graph well formed.
        self.ctx.source(crate::source::QueueSource::new(&s.name))
    }

    fn selector(&mut self, path: &str, s: &Selector) -> Option<Sel> {
        match (&s.field, &s.expr) {
            (Some(f), _) => Some(Sel::Field(f.split('.').map(String::from).collect())),
            (None, Some(e)) => match Expr::compile(e) {
                Ok(e) => Some(Sel::Expr(e)),
                Err(m) => {
                    self.problem(format!("{path}.expr"), m);
                    None
                }
            },
            (None, None) => None,
        }
    }

    fn regex(&mut self, path: &str, text: &str) -> Option<Regex> {
        match Regex::new(text) {
            Ok(r) => Some(r),
            Err(e) => {
                self.problem(
                    path,
                    format!("{text:?} is not a valid regular expression: {e}"),
                );
                None
            }
        }
    }

    fn duration(&mut self, path: &str, text: Option<&str>) -> Duration {
        match text {
            None => Duration::from_millis(self.ctx.interval_ms()),
            Some(t) => parse_duration(t).unwrap_or_else(|m| {
                self.problem(path, m);
                Duration::from_millis(self.ctx.interval_ms())
            }),
        }
    }

    fn splitter(&mut self, path: &str, f: &FlatMapStep) -> Option<Splitter> {
        if let Some(sep) = &f.split {
            return Some(if sep.trim().is_empty() {
                Splitter::Whitespace
            } else {
                Splitter::Separator(sep.clone())
            });
        }
        if let Some(re) = &f.regex {
            return self
                .regex(&format!("{path}.regex"), re)
                .map(Splitter::Regex);
        }
        None
    }

    /// Compiles step `i` (and the next, when they fuse); returns the stream and steps used.
    fn step(&mut self, stream: Stream, steps: &[PipelineStep], i: usize) -> (Stream, usize) {
        let step = &steps[i];
        let path = format!("spec.pipeline[{i}]");
        if step.operations().len() != 1 {
            self.problem(&path, "set exactly one operation");
            return (stream, 1);
        }
        // flatMap (split or regex) followed by a count fuses into one map-side combine over the
        // text, so words are counted without allocating a record each.
        if let (Some(fm), Some(next), Stream::Records(records)) =
            (&step.flat_map, steps.get(i + 1), &stream)
        {
            let counts = next.count_by_value.is_some() || next.count_by_value_and_window.is_some();
            if counts
                && fm.expr.is_none()
                && let Some(splitter) = self.splitter(&format!("{path}.flatMap"), fm)
            {
                let op = format!("{path}.flatMap");
                let counted = count_pieces(records, splitter, fm.lowercase.unwrap_or(false), op);
                let next_path = format!("spec.pipeline[{}]", i + 1);
                return (self.finish_count(counted, next, &next_path), 2);
            }
        }
        let out = match stream {
            Stream::Records(s) => self.records_step(s, step, &path),
            Stream::Keyed(s) => self.keyed_step(s, step, &path),
        };
        (out, 1)
    }

    fn finish_count(
        &mut self,
        counted: DStream<(Value, i64)>,
        step: &PipelineStep,
        path: &str,
    ) -> Stream {
        let counted = match &step.count_by_value_and_window {
            Some(w) => {
                let length = self.duration(
                    &format!("{path}.countByValueAndWindow.length"),
                    Some(&w.length),
                );
                let slide = self.duration(
                    &format!("{path}.countByValueAndWindow.slide"),
                    w.slide.as_deref(),
                );
                let inverse = Inverse {
                    inverse: Arc::new(|a: i64, b: i64| a - b),
                    keep: Some(Arc::new(|_: &Value, n: &i64| *n != 0)),
                };
                counted.window_reduced(Arc::new(|a, b| a + b), Some(inverse), length, slide)
            }
            None => counted,
        };
        Stream::Keyed(counted.map_values(Value::Int))
    }

    fn records_step(&mut self, s: DStream<Value>, step: &PipelineStep, path: &str) -> Stream {
        if let Some(sel) = &step.map {
            let Some(sel) = self.selector(&format!("{path}.map"), sel) else {
                return Stream::Records(s);
            };
            let op = format!("{path}.map");
            return Stream::Records(s.map_partitions(&op.clone(), move |cx, recs| {
                per_record(cx, &op, recs, |root, r, out| {
                    let _: () = out.push(sel.record(root, &r)?);
                    Ok(())
                })
            }));
        }
        if step.parse_json.is_some() {
            let op = format!("{path}.parseJson");
            return Stream::Records(s.map_partitions(&op.clone(), move |cx, recs| {
                per_record(cx, &op, recs, |_, r, out| {
                    match r {
                        Value::Str(text) => {
                            let json = serde_json::from_str(&text).map_err(|e| {
                                format!("not JSON ({e}): {}", Value::Str(text).describe())
                            })?;
                            out.push(Value::from_json(json));
                        }
                        other => out.push(other),
                    }
                    Ok(())
                })
            }));
        }
        if let Some(fm) = &step.flat_map {
            let op = format!("{path}.flatMap");
            let lower = fm.lowercase.unwrap_or(false);
            let case = move |p: &str| {
                if lower {
                    p.to_lowercase()
                } else {
                    p.to_string()
                }
            };
            if let Some(e) = &fm.expr {
                let e = match Expr::compile(e) {
                    Ok(e) => e,
                    Err(m) => {
                        self.problem(format!("{op}.expr"), m);
                        return Stream::Records(s);
                    }
                };
                return Stream::Records(s.map_partitions(&op.clone(), move |cx, recs| {
                    per_record(cx, &op, recs, |root, r, out| {
                        match e.eval_record(root, &r)? {
                            Value::List(items) => {
                                out.extend(items.into_iter().map(|v| match v {
                                    Value::Str(t) => Value::Str(case(&t)),
                                    other => other,
                                }));
                                Ok(())
                            }
                            other => Err(format!(
                                "flatMap expr must return a list, got {}",
                                other.describe()
                            )),
                        }
                    })
                }));
            }
            let Some(splitter) = self.splitter(&op, fm) else {
                return Stream::Records(s);
            };
            return Stream::Records(s.map_partitions(&op.clone(), move |cx, recs| {
                per_record(cx, &op, recs, |_, r, out| match r {
                    Value::Str(text) => {
                        splitter.for_each(&text, |p| out.push(Value::Str(case(p))));
                        Ok(())
                    }
                    other => Err(format!(
                        "flatMap split/regex needs text, got {}",
                        other.describe()
                    )),
                })
            }));
        }
        if let Some(f) = &step.filter {
            let op = format!("{path}.filter");
            if let Some(re) = &f.regex {
                let Some(re) = self.regex(&format!("{op}.regex"), re) else {
                    return Stream::Records(s);
                };
                return Stream::Records(s.map_partitions(&op.clone(), move |cx, recs| {
                    per_record(cx, &op, recs, |_, r, out| {
                        let keep = match &r {
                            Value::Str(t) => re.is_match(t),
                            other => re.is_match(&other.to_text()),
                        };
                        if keep {
                            out.push(r);
                        }
                        Ok(())
                    })
                }));
            }
            let Some(Sel::Expr(e)) = self.selector(
                &op,
                &Selector {
                    field: None,
                    expr: f.expr.clone(),
                },
            ) else {
                return Stream::Records(s);
            };
            return Stream::Records(s.map_partitions(&op.clone(), move |cx, recs| {
                per_record(cx, &op, recs, |root, r, out| {
                    if keeps(e.eval_record(root, &r)?)? {
                        let _: () = out.push(r);
                    }
                    Ok(())
                })
            }));
        }
        if let Some(k) = &step.key_by {
            let op = format!("{path}.keyBy");
            let key = self.selector(&format!("{op}.key"), &k.key);
            let value = match &k.value {
                Some(v) => self.selector(&format!("{op}.value"), v).map(Some),
                None => Some(None),
            };
            let (Some(key), Some(value)) = (key, value) else {
                // Already reported; an empty keyed stream lets later steps be checked too.
                return Stream::Keyed(s.map_partitions("keyBy", |_, _| Ok(Vec::new())));
            };
            return Stream::Keyed(s.map_partitions(&op.clone(), move |cx, recs| {
                per_record(cx, &op, recs, |root, r, out| {
                    let k = key.record(root, &r)?;
                    let v = match &value {
                        Some(sel) => sel.record(root, &r)?,
                        None => r,
                    };
                    out.push((k, v));
                    Ok(())
                })
            }));
        }
        if let Some(w) = &step.window {
            let length = self.duration(&format!("{path}.window.length"), Some(&w.length));
            let slide = self.duration(&format!("{path}.window.slide"), w.slide.as_deref());
            return Stream::Records(s.window(length, slide));
        }
        if step.count_by_value.is_some() || step.count_by_value_and_window.is_some() {
            let op = format!("{path}.countByValue");
            let counted = crate::dstream::shuffle::combine_shuffled(
                &s,
                &op,
                |_, recs, map: &mut KeyMap<Value, i64>| {
                    for r in recs {
                        *map.entry(r).or_insert(0) += 1;
                    }
                    Ok(())
                },
                |a: &mut i64, b| *a += b,
            );
            return self.finish_count(counted, step, path);
        }
        if step.count.is_some() {
            return Stream::Records(s.count().map(|n| Value::Int(n as i64)));
        }
        if let Some(j) = &step.join_static {
            return self.join_static(Stream::Records(s), j, path);
        }
        // Keyed-only operations on a plain stream: `validate` explains; keep the stream.
        self.problem(
            path,
            format!(
                "{} needs a keyed stream; add keyBy or countByValue before it",
                step.operations().join("")
            ),
        );
        Stream::Records(s)
    }

    fn keyed_step(
        &mut self,
        s: DStream<(Value, Value)>,
        step: &PipelineStep,
        path: &str,
    ) -> Stream {
        if let Some(sel) = &step.map {
            let Some(sel) = self.selector(&format!("{path}.map"), sel) else {
                return Stream::Keyed(s);
            };
            let op = format!("{path}.map");
            return Stream::Keyed(s.map_partitions(&op.clone(), move |cx, pairs| {
                per_record(cx, &op, pairs, |root, (k, v), out| {
                    let v = sel.pair(root, &k, &v)?;
                    out.push((k, v));
                    Ok(())
                })
            }));
        }
        if let Some(f) = &step.filter {
            let op = format!("{path}.filter");
            let Some(Sel::Expr(e)) = self.selector(
                &op,
                &Selector {
                    field: None,
                    expr: f.expr.clone(),
                },
            ) else {
                return Stream::Keyed(s);
            };
            return Stream::Keyed(s.map_partitions(&op.clone(), move |cx, pairs| {
                per_record(cx, &op, pairs, |root, (k, v), out| {
                    if keeps(e.eval_pair(root, &k, &v)?)? {
                        let _: () = out.push((k, v));
                    }
                    Ok(())
                })
            }));
        }
        if let Some(w) = &step.window {
            let length = self.duration(&format!("{path}.window.length"), Some(&w.length));
            let slide = self.duration(&format!("{path}.window.slide"), w.slide.as_deref());
            return Stream::Keyed(s.window(length, slide));
        }
        if step.count.is_some() {
            return Stream::Records(s.count().map(|n| Value::Int(n as i64)));
        }
        if let Some(r) = &step.reduce_by_key {
            let reduced = reduce_accs(&s, r.op, format!("{path}.reduceByKey"));
            return Stream::Keyed(reduced.map_values(|a| a.finish()));
        }
        if let Some(w) = &step.reduce_by_key_and_window {
            let p = format!("{path}.reduceByKeyAndWindow");
            let length = self.duration(&format!("{p}.length"), Some(&w.length));
            let slide = self.duration(&format!("{p}.slide"), w.slide.as_deref());
            let reduced = reduce_accs(&s, w.op, p);
            let inverse = (w.inverse == Some(true)).then(|| Inverse {
                inverse: Arc::new(|mut a: Acc, b: Acc| {
                    a.subtract(&b);
                    a
                }) as Arc<dyn Fn(Acc, Acc) -> Acc + Send + Sync>,
                keep: Some(Arc::new(|_: &Value, a: &Acc| !a.is_empty())
                    as Arc<dyn Fn(&Value, &Acc) -> bool + Send + Sync>),
            });
            let merge = Arc::new(|mut a: Acc, b: Acc| {
                a.merge(b);
                a
            });
            return Stream::Keyed(
                reduced
                    .window_reduced(merge, inverse, length, slide)
                    .map_values(|a| a.finish()),
            );
        }
        if let Some(st) = &step.update_state_by_key {
            let p = format!("{path}.updateStateByKey");
            let op = st.op;
            let timeout_batches = st.timeout.as_deref().map(|t| {
                let d = self.duration(&format!("{p}.timeout"), Some(t));
                (d.as_millis() as u64)
                    .div_ceil(self.ctx.interval_ms().max(1))
                    .max(1)
            });
            let name = p.clone();
            let state = s.state_by_key(
                &p,
                move |cx, pairs, map: &mut KeyMap<Value, Acc>| fold_accs(cx, &name, op, pairs, map),
                |a: &mut Acc, b| a.merge(b),
                move |batch, _k, fresh: Option<Acc>, old: Option<(Acc, u64)>| match (fresh, old) {
                    (Some(f), Some((mut acc, _))) => {
                        acc.merge(f);
                        Some((acc, batch.index))
                    }
                    (Some(f), None) => Some((f, batch.index)),
                    (None, Some((acc, last))) => match timeout_batches {
                        Some(t) if last + t <= batch.index => None,
                        _ => Some((acc, last)),
                    },
                    (None, None) => None,
                },
            );
            return Stream::Keyed(state.map_values(|(acc, _)| acc.finish()));
        }
        if let Some(j) = &step.join_static {
            return self.join_static(Stream::Keyed(s), j, path);
        }
        self.problem(
            path,
            format!(
                "{} works on plain records, but the stream is keyed here",
                step.operations().join("")
            ),
        );
        Stream::Keyed(s)
    }

    fn join_static(&mut self, stream: Stream, j: &StaticJoinStep, path: &str) -> Stream {
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

    fn sink(&mut self, stream: &Stream, sink: &SinkSpec) {
        if let Some(out) = &sink.stdout {
            let limit = out.limit.unwrap_or(defaults::STDOUT_LIMIT) as usize;
            let (records, pairs) = text_format(OutputFormat::Text);
            match stream {
                Stream::Records(s) => s.output(StdoutSink::new(limit, records)),
                Stream::Keyed(s) => s.output(StdoutSink::new(limit, pairs)),
            }
        }
        if let Some(s3) = &sink.s3 {
            let settings = crate::checkpoint::S3Settings {
                endpoint: s3.endpoint.clone(),
                region: s3.region.clone(),
                path_style: s3.path_style.unwrap_or(false),
                credentials: None,
            };
            let (records, pairs) = text_format(s3.format.unwrap_or_default());
            match stream {
                Stream::Records(s) => {
                    s.output(crate::sink::S3Sink::new(&s3.uri, settings, records))
                }
                Stream::Keyed(s) => s.output(crate::sink::S3Sink::new(&s3.uri, settings, pairs)),
            }
        }
        if let Some(files) = &sink.files {
            let dir = local_path(&files.path).to_string();
            let prefix = files
                .prefix
                .clone()
                .unwrap_or_else(|| defaults::FILES_PREFIX.to_string());
            let (records, pairs) = text_format(files.format.unwrap_or_default());
            match stream {
                Stream::Records(s) => s.output(FilesSink::new(&dir, &prefix, records)),
                Stream::Keyed(s) => s.output(FilesSink::new(&dir, &prefix, pairs)),
            }
        }
    }
}

/// Counts the pieces of text records per key, map-side, without a record per piece.
fn count_pieces(
    records: &DStream<Value>,
    splitter: Splitter,
    lowercase: bool,
    op: String,
) -> DStream<(Value, i64)> {
    crate::dstream::shuffle::combine_shuffled(
        records,
        &op.clone(),
        move |cx, recs, map: &mut KeyMap<Value, i64>| {
            let mut lower = String::new();
            for r in recs {
                let Value::Str(text) = r else {
                    cx.record_error(
                        &op,
                        format!("flatMap split/regex needs text, got {}", r.describe()),
                    )?;
                    continue;
                };
                splitter.for_each(&text, |piece| {
                    let piece = if lowercase {
                        lower.clear();
                        lower.extend(piece.chars().flat_map(char::to_lowercase));
                        lower.as_str()
                    } else {
                        piece
                    };
                    match map.get_mut(&StrKey(piece)) {
                        Some(n) => *n += 1,
                        None => {
                            map.insert(Value::Str(piece.to_string()), 1);
                        }
                    }
                });
            }
            Ok(())
        },
        |a: &mut i64, b| *a += b,
    )
}

/// Folds (key, value) pairs into per-key partial aggregates; values the aggregation refuses
/// (text for `sum`, say) are counted as record errors under `name`.
fn fold_accs(
    cx: &BatchContext,
    name: &str,
    op: Aggregation,
    pairs: Vec<(Value, Value)>,
    map: &mut KeyMap<Value, Acc>,
) -> Result<()> {
    for (k, v) in pairs {
        let result = match map.get_mut(&k) {
            Some(acc) => acc.add(op, v),
            None => Acc::start(op, v).map(|a| {
                map.insert(k, a);
            }),
        };
        if let Err(m) = result {
            cx.record_error(name, m)?;
        }
    }
    Ok(())
}

/// Per-batch aggregation of keyed values into partial aggregates.
fn reduce_accs(
    s: &DStream<(Value, Value)>,
    op: Aggregation,
    name: String,
) -> DStream<(Value, Acc)> {
    crate::dstream::shuffle::combine_shuffled(
        s,
        &name.clone(),
        move |cx, pairs, map: &mut KeyMap<Value, Acc>| fold_accs(cx, &name, op, pairs, map),
        |a: &mut Acc, b| a.merge(b),
    )
}

/// A filter expression's verdict on one record.
fn keeps(value: Value) -> Result<bool, String> {
    match value {
        Value::Bool(keep) => Ok(keep),
        other => Err(format!(
            "filter expr must return a bool, got {}",
            other.describe()
        )),
    }
}
