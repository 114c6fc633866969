//! Compiles a StreamingJob manifest into DStreams: `sources`, pipeline `steps` (with
//! `joinStatic` in `join`), `sinks`. Each matches the manifest's kind enums
//! (`SourceKind`, `StepKind`, `SinkKind`) exhaustively, so a new kind is a compile error until
//! it is built here.
//!
//! Expressions, regular expressions and static data sets are checked here, with the field path
//! of the step, so `sluice validate` reports them like any other manifest problem.

mod combine;
mod join;
mod sinks;
mod sources;
mod state;

pub(crate) use sources::nexmark_record;
mod steps;
mod top;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use sluice_crds::{
    FlatMapStep, OutputFormat, Problem, Selector, StreamingJob, defaults, parse_duration,
};

use super::expr::{Expr, with_root};
use super::value::Value;
use crate::dstream::{DStream, StreamingConfig, StreamingContext};
use crate::error::Result;
use crate::exec::BatchContext;
use crate::job::Job;
use crate::sink::{LineFormat, ToText};

/// A plain or keyed stream of manifest values.
#[derive(Clone)]
enum Stream {
    Records(DStream<Value>),
    Keyed(DStream<(Value, Value)>),
}

/// Where a pipeline of steps is: its field path (`spec.pipeline`, `spec.streams[1].pipeline`)
/// and its stream (an index of `spec.streams`, none for `spec.pipeline`).
struct Pipeline {
    base: String,
    stream: Option<usize>,
}

/// The stateful steps of the spec, and the step of each stateful operation built so far.
type StateSteps<'a> = (
    &'a [sluice_crds::upgrade::StatefulStep],
    &'a mut Vec<Option<String>>,
);

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
    let bp = spec.backpressure.clone().unwrap_or_default();
    if bp.enabled.unwrap_or(true) {
        let defaults = crate::coordinator::rate::Backpressure::default();
        config.backpressure = Some(crate::coordinator::rate::Backpressure {
            initial_rate: bp.initial_rate.map_or(defaults.initial_rate, |r| r as f64),
            min_rate: bp.min_rate.map_or(defaults.min_rate, |r| r as f64),
        });
    }
    let ctx = StreamingContext::new(config);
    let mut c = Compiler {
        ctx: ctx.clone(),
        problems: Vec::new(),
        job_name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        checkpoint: spec.checkpoint.clone(),
    };

    let mut sources: BTreeMap<String, DStream<Value>> = BTreeMap::new();
    for (i, source) in spec.sources.iter().enumerate() {
        let stream = c.source(&format!("spec.sources[{i}]"), source);
        sources.insert(source.name.clone(), stream);
    }
    // Each stateful operation's step, so that a later spec finds its state by the step.
    let stateful_steps = sluice_crds::upgrade::stateful_steps(spec);
    let mut state_steps = Vec::new();
    // What sinks read: the pipeline's output (no `from`), or each stream by name.
    let mut outputs: BTreeMap<Option<String>, Stream> = BTreeMap::new();
    if spec.streams.is_empty() {
        let mut input: Option<DStream<Value>> = None;
        for source in &spec.sources {
            let Some(stream) = sources.get(&source.name) else {
                continue;
            };
            input = Some(match input {
                Some(all) => all.union(stream),
                None => stream.clone(),
            });
        }
        let Some(input) = input else {
            return Err(vec![Problem::new(
                "spec.sources",
                "needs at least one source",
            )]);
        };
        let pipeline = Pipeline {
            base: "spec.pipeline".into(),
            stream: None,
        };
        let out = c.steps(
            Stream::Records(input),
            &spec.pipeline,
            &pipeline,
            &BTreeMap::new(),
            (&stateful_steps, &mut state_steps),
        );
        outputs.insert(None, out);
    } else {
        let built = c.streams(spec, &sources, (&stateful_steps, &mut state_steps));
        outputs.extend(built.into_iter().map(|(name, s)| (Some(name), s)));
    }
    for (i, sink) in spec.sinks.iter().enumerate() {
        let path = format!("spec.sinks[{i}]");
        let Some(stream) = outputs.get(&sink.from) else {
            c.problem(
                format!("{path}.from"),
                "names no stream of spec.streams (or is missing)",
            );
            continue;
        };
        if options.discard_output {
            match stream {
                Stream::Records(s) => s.foreach_batch(|_, _| Ok(())),
                Stream::Keyed(s) => s.foreach_batch(|_, _| Ok(())),
            }
        } else {
            c.sink(&path, stream, sink);
        }
    }
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    let mut built = ctx
        .build()
        .map_err(|e| vec![Problem::new("spec", e.to_string())])?;
    built.set_manifest(spec.clone(), state_steps);
    Ok(built)
}

struct Compiler {
    ctx: StreamingContext,
    problems: Vec<Problem>,
    /// The job's name and namespace: Kafka's consumer group and transactional ids derive
    /// from them.
    job_name: String,
    namespace: Option<String>,
    /// Where `joinStatic` pins each refresh period's data set.
    checkpoint: Option<sluice_crds::CheckpointSpec>,
}

/// A Kafka client from a manifest's settings; SASL credentials come from the environment.
fn kafka_client(
    servers: &str,
    properties: &std::collections::BTreeMap<String, String>,
) -> crate::kafka::KafkaClient {
    let mut client = crate::kafka::KafkaClient::new(servers);
    client.properties = properties.clone();
    client.with_credentials_from_env()
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
    with_root(|root| {
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            if let Err(message) = f(root, r, &mut out) {
                cx.record_error(op, message)?;
            }
        }
        Ok(out)
    })
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
    /// Compiles a pipeline's steps over `stream`; `streams` are the streams built before, for
    /// joins.
    fn steps(
        &mut self,
        mut stream: Stream,
        steps: &[sluice_crds::PipelineStep],
        pipeline: &Pipeline,
        streams: &BTreeMap<String, Stream>,
        (stateful_steps, state_steps): StateSteps<'_>,
    ) -> Stream {
        let mut i = 0;
        while i < steps.len() {
            let (next, used) = self.step(stream, steps, pipeline, i, streams);
            let step = stateful_steps
                .iter()
                .find(|s| s.stream == pipeline.stream && (i..i + used).contains(&s.index))
                .map(|s| s.id.clone());
            state_steps.resize(self.ctx.stateful_count(), step);
            stream = next;
            i += used;
        }
        stream
    }

    /// Builds `spec.streams`, each after what it reads and joins.
    fn streams(
        &mut self,
        spec: &sluice_crds::StreamingJobSpec,
        sources: &BTreeMap<String, DStream<Value>>,
        (stateful_steps, state_steps): StateSteps<'_>,
    ) -> BTreeMap<String, Stream> {
        let mut built: BTreeMap<String, Stream> = BTreeMap::new();
        let graph = sluice_crds::graph::stream_order(spec);
        if !graph.blocked.is_empty() {
            // Validation names each cycle.
            self.problem(
                "spec.streams",
                "a stream reads or joins one that reads it back",
            );
        }
        for i in graph.order {
            let stream = &spec.streams[i];
            let mut input: Option<Stream> = None;
            for from in &stream.from {
                let next = match (sources.get(from), built.get(from)) {
                    (Some(s), _) => Stream::Records(s.clone()),
                    (None, Some(s)) => s.clone(),
                    (None, None) => continue,
                };
                input = Some(match (input, next) {
                    (None, next) => next,
                    (Some(Stream::Records(a)), Stream::Records(b)) => Stream::Records(a.union(&b)),
                    (Some(Stream::Keyed(a)), Stream::Keyed(b)) => Stream::Keyed(a.union(&b)),
                    (Some(a), _) => {
                        self.problem(
                            format!("spec.streams[{i}].from"),
                            "reads plain records and (key, value) pairs together; a union needs one kind",
                        );
                        a
                    }
                });
            }
            let Some(input) = input else { continue };
            let pipeline = Pipeline {
                base: format!("spec.streams[{i}].pipeline"),
                stream: Some(i),
            };
            let out = self.steps(
                input,
                &stream.pipeline,
                &pipeline,
                &built,
                (stateful_steps, &mut *state_steps),
            );
            built.insert(stream.name.clone(), out);
        }
        built
    }

    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
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
        match sluice_crds::expressions::check_regex(text) {
            Ok(r) => Some(r),
            Err(message) => {
                self.problem(path, message);
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

    /// A state step's `timeout` (at `path`) in whole batches, at least one.
    fn timeout_batches(&mut self, path: &str, timeout: Option<&str>) -> Option<u64> {
        timeout.map(|t| {
            let d = self.duration(path, Some(t));
            (d.as_millis() as u64)
                .div_ceil(self.ctx.interval_ms().max(1))
                .max(1)
        })
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
}
