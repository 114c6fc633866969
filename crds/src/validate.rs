//! Validation of a parsed manifest: every problem, each with the field path and the fix.
//!
//! Pure functions only. Expressions and regular expressions are compiled by the runtime, which
//! owns those engines; everything else about a manifest is checked here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::duration::{format_duration, parse_duration};
use crate::graph::{StreamOrder, stream_order};
use crate::kinds::{SinkKind, SourceKind, StepKind};
use crate::s3::{endpoint_problem, parse_s3_uri, s3_uri_problem};
use crate::spec::*;

/// The most records a `top` step keeps (its `keep`).
pub const MAX_TOP: u32 = 10_000;

/// One thing wrong with a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `spec.pipeline[2].window.slide`.
    pub path: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for Problem {}

/// Whether a stream holds plain records or (key, value) pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shape {
    /// Plain records.
    #[default]
    Records,
    /// (key, value) pairs.
    Keyed,
}

/// Batch interval bounds: below 5ms a batch's fixed cost (its offset entry fsynced, its
/// output written) is most of the interval; above an hour a "micro" batch is a daily job in
/// disguise.
const MIN_BATCH_INTERVAL: Duration = Duration::from_millis(5);
const MAX_BATCH_INTERVAL: Duration = Duration::from_secs(3600);
/// Most partitions a job may have (`spec.parallelism`).
pub const MAX_PARALLELISM: u32 = 1024;
/// As the CRD's `maxItems`.
const MAX_SOURCES: usize = 32;
const MAX_STEPS: usize = 64;
const MAX_STREAMS: usize = 32;
const MAX_SINKS: usize = 32;

/// Checks a parsed manifest and returns every problem found (empty when it is valid).
pub fn validate(job: &StreamingJob) -> Vec<Problem> {
    let mut v = Validator::default();
    if job.api_version != API_VERSION {
        v.add(
            "apiVersion",
            format!(
                "{:?} is not supported; write {API_VERSION}",
                job.api_version
            ),
        );
    }
    if job.kind != KIND {
        v.add(
            "kind",
            format!("{:?} is not supported; write {KIND}", job.kind),
        );
    }
    v.dns_label("metadata.name", &job.metadata.name);
    v.spec(&job.spec);
    v.problems
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

/// What validation knows of a stream's records: their shape, and the slide of the last
/// window (none: every batch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Output {
    shape: Shape,
    slide: Option<Duration>,
}

impl Validator {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    fn dns_label(&mut self, path: &str, name: &str) {
        let ok_chars = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        let ok_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if name.is_empty() {
            self.add(path, "is required: a name such as word-count");
        } else if name.len() > 63 || !ok_chars || !ok_ends {
            self.add(
                path,
                format!("{name:?} is not a DNS label: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"),
            );
        }
    }

    /// A CEL expression the runtime compiles (where this crate is built to compile it).
    fn cel(&mut self, path: &str, text: &str) {
        if text.trim().is_empty() {
            self.add(path, "is empty; write a CEL expression");
        } else {
            #[cfg(any(feature = "expressions", test))]
            if let Err(message) = crate::expressions::compile_cel(text) {
                self.add(path, message);
            }
        }
    }

    /// A regular expression the runtime compiles (where this crate is built to compile it).
    fn regex(&mut self, path: &str, text: &str) {
        #[cfg(any(feature = "expressions", test))]
        if let Err(message) = crate::expressions::check_regex(text) {
            self.add(path, message);
        }
        #[cfg(not(any(feature = "expressions", test)))]
        let _ = (path, text);
    }

    fn duration(&mut self, path: &str, text: &str) -> Option<Duration> {
        match parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.add(path, "must be greater than zero");
                None
            }
            Ok(d) if d.subsec_nanos() % 1_000_000 != 0 => {
                self.add(
                    path,
                    format!("{text} has a finer unit than milliseconds; round it to whole ms"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(message) => {
                self.add(path, message);
                None
            }
        }
    }

    fn spec(&mut self, spec: &StreamingJobSpec) {
        let interval = self.duration("spec.batchInterval", &spec.batch_interval);
        if let Some(d) = interval
            && (d < MIN_BATCH_INTERVAL || d > MAX_BATCH_INTERVAL)
        {
            self.add(
                "spec.batchInterval",
                format!(
                    "{} is out of range; use between 5ms and 1h",
                    spec.batch_interval
                ),
            );
        }
        if let Some(p) = spec.parallelism
            && (p == 0 || p > MAX_PARALLELISM)
        {
            self.add(
                "spec.parallelism",
                format!("{p} is out of range; use 1 to {MAX_PARALLELISM}"),
            );
        }
        // Bounded as the CRD bounds them: a manifest of 100,000 steps would otherwise build a
        // graph deep enough to exhaust the stack.
        for (path, len, max) in [
            ("spec.sources", spec.sources.len(), MAX_SOURCES),
            ("spec.pipeline", spec.pipeline.len(), MAX_STEPS),
            ("spec.streams", spec.streams.len(), MAX_STREAMS),
            ("spec.sinks", spec.sinks.len(), MAX_SINKS),
        ] {
            if len > max {
                self.add(
                    path,
                    format!("has {len} entries; at most {max}: split the job into several"),
                );
                return;
            }
        }
        self.sources(&spec.sources);
        if let Some(interval) = interval {
            self.generated_batches(&spec.sources, interval);
        }
        if let Some(bp) = &spec.backpressure {
            self.backpressure(bp);
        }
        if spec.streams.is_empty() {
            self.pipeline(
                "spec.pipeline",
                &spec.pipeline,
                interval,
                Output::default(),
                &BTreeMap::new(),
            );
        } else {
            if !spec.pipeline.is_empty() {
                self.add(
                    "spec.pipeline",
                    "is set with spec.streams; move its steps into a stream ({name: main, from: [SOURCES], pipeline: [...]})",
                );
            }
            self.streams(spec, interval);
        }
        self.sinks(&spec.sinks, &spec.streams);
        if let Some(ckpt) = &spec.checkpoint {
            self.checkpoint(ckpt);
        }
    }

    fn exactly_one(&mut self, path: &str, set: &[(&str, bool)]) -> bool {
        let names: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
        match set.iter().filter(|(_, on)| *on).count() {
            1 => true,
            0 => {
                self.add(path, format!("set one of {}", names.join(", ")));
                false
            }
            _ => {
                let on: Vec<&str> = set.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect();
                self.add(
                    path,
                    format!(
                        "sets {}; set only one of {}",
                        on.join(" and "),
                        names.join(", ")
                    ),
                );
                false
            }
        }
    }

    fn sources(&mut self, sources: &[SourceSpec]) {
        if sources.is_empty() {
            self.add(
                "spec.sources",
                "needs at least one source (socket, files, generator or kafka)",
            );
        }
        let mut names = BTreeSet::new();
        for (i, source) in sources.iter().enumerate() {
            let path = format!("spec.sources[{i}]");
            let name_ok = !source.name.is_empty()
                && source.name.len() <= 63
                && source
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                self.add(
                    format!("{path}.name"),
                    format!(
                        "{:?} is not a valid source name; use 1-63 letters, digits, '-' or '_'",
                        source.name
                    ),
                );
            } else if !names.insert(source.name.as_str()) {
                self.add(
                    format!("{path}.name"),
                    format!(
                        "{:?} is used by an earlier source; names must be unique",
                        source.name
                    ),
                );
            }
            let set: Vec<&str> = source.kinds().iter().map(|k| k.name()).collect();
            let kinds = SourceKind::NAMES.map(|n| (n, set.contains(&n)));
            if !self.exactly_one(&path, &kinds) {
                continue;
            }
            let Some(kind) = source.kind() else {
                continue;
            };
            match kind {
                SourceKind::Socket(socket) => {
                    if socket.host.trim().is_empty() {
                        self.add(
                            format!("{path}.socket.host"),
                            "is empty; write a host name or address",
                        );
                    }
                    if socket.port == 0 || socket.port > 65535 {
                        self.add(
                            format!("{path}.socket.port"),
                            format!("{} is not a TCP port; use 1-65535", socket.port),
                        );
                    }
                }
                SourceKind::Files(files) => {
                    if files.path.trim().is_empty() {
                        self.add(
                            format!("{path}.files.path"),
                            "is empty; write the directory to watch",
                        );
                    }
                    if files.max_files_per_batch == Some(0) {
                        self.add(
                            format!("{path}.files.maxFilesPerBatch"),
                            "is 0; use at least 1 (or leave it out for every new file)",
                        );
                    }
                }
                SourceKind::Generator(g) => self.generator(&path, g),
                SourceKind::Kafka(k) => {
                    for (field, message) in crate::kafka::source_problems(k) {
                        self.add(format!("{path}.kafka.{field}"), message);
                    }
                }
            }
        }
    }

    fn backpressure(&mut self, bp: &BackpressureSpec) {
        for (field, value) in [("initialRate", bp.initial_rate), ("minRate", bp.min_rate)] {
            if let Some(v) = value
                && !(1..=1_000_000_000).contains(&v)
            {
                self.add(
                    format!("spec.backpressure.{field}"),
                    format!("{v} is out of range; use 1 to 1000000000 records/s"),
                );
            }
        }
        if let (Some(initial), Some(min)) = (bp.initial_rate, bp.min_rate)
            && min > initial
        {
            self.add(
                "spec.backpressure.minRate",
                format!("{min} is above initialRate ({initial}); lower it"),
            );
        }
    }

    fn generator(&mut self, path: &str, g: &GeneratorSource) {
        if g.rate == 0 || g.rate > 100_000_000 {
            self.add(
                format!("{path}.generator.rate"),
                format!("{} is out of range; use 1 to 100000000 lines/s", g.rate),
            );
        }
        if let Some(v) = g.vocabulary
            && (v == 0 || v > 10_000_000)
        {
            self.add(
                format!("{path}.generator.vocabulary"),
                format!("{v} is out of range; use 1 to 10000000"),
            );
        }
        if let Some(b) = g.line_bytes
            && !(8..=65536).contains(&b)
        {
            self.add(
                format!("{path}.generator.lineBytes"),
                format!("{b} is out of range; use 8 to 65536"),
            );
        }
    }

    /// A batch is held in memory: a generator may not be asked for more than fits.
    fn generated_batches(&mut self, sources: &[SourceSpec], interval: Duration) {
        for (i, g) in sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.generator.as_ref()?)))
        {
            let line = u64::from(g.line_bytes.unwrap_or(defaults::GENERATOR_LINE_BYTES));
            let bytes = u128::from(g.rate) * interval.as_millis() / 1000 * u128::from(line);
            let max = defaults::GENERATOR_BATCH_BYTES;
            if bytes > u128::from(max) {
                self.add(
                    format!("spec.sources[{i}].generator.rate"),
                    format!(
                        "{} lines/s of {line} bytes over spec.batchInterval {} make {} MB per batch; at most {} MB: lower the rate, the line size or the interval",
                        g.rate,
                        format_duration(interval),
                        bytes / 1_000_000,
                        max / 1_000_000
                    ),
                );
            }
        }
    }

    fn selector(&mut self, path: &str, s: &Selector) {
        if self.exactly_one(
            path,
            &[("field", s.field.is_some()), ("expr", s.expr.is_some())],
        ) {
            if let Some(field) = &s.field
                && (field.is_empty() || field.split('.').any(str::is_empty))
            {
                self.add(
                    format!("{path}.field"),
                    format!("{field:?} is not a field path; write e.g. user or geo.country"),
                );
            }
            if let Some(expr) = &s.expr {
                self.cel(&format!("{path}.expr"), expr);
            }
        }
    }

    /// Checks a window's durations against the batch interval and the stream's current slide.
    /// Returns the window's slide when valid.
    fn window(
        &mut self,
        path: &str,
        length: &str,
        slide: Option<&str>,
        interval: Option<Duration>,
        parent_slide: Option<Duration>,
    ) -> Option<Duration> {
        let length_d = self.duration(&format!("{path}.length"), length);
        let slide_d = match slide {
            Some(s) => self.duration(&format!("{path}.slide"), s),
            None => interval,
        };
        let interval = interval?;
        let parent = parent_slide.unwrap_or(interval);
        for (field, d) in [("length", length_d), ("slide", slide_d)] {
            let Some(d) = d else { continue };
            let text = format_duration(d);
            if d.as_millis() % interval.as_millis() != 0 {
                self.add(
                    format!("{path}.{field}"),
                    format!(
                        "{text} is not a multiple of spec.batchInterval {}",
                        format_duration(interval)
                    ),
                );
            } else if d.as_millis() % parent.as_millis() != 0 {
                self.add(
                    format!("{path}.{field}"),
                    format!(
                        "{text} is not a multiple of the slide {} of the window before it",
                        format_duration(parent)
                    ),
                );
            }
        }
        if let (Some(l), Some(s)) = (length_d, slide_d)
            && l < s
        {
            self.add(
                format!("{path}.length"),
                format!(
                    "{} is shorter than the slide {}; records would be skipped",
                    format_duration(l),
                    format_duration(s)
                ),
            );
        }
        slide_d
    }

    /// Checks the steps at `base` (`spec.pipeline`, or a stream's), from what they read
    /// (`start`), with `streams` the outputs of the streams checked before (for joins);
    /// returns what they give.
    fn pipeline(
        &mut self,
        base: &str,
        steps: &[PipelineStep],
        interval: Option<Duration>,
        start: Output,
        streams: &BTreeMap<String, Option<Output>>,
    ) -> Output {
        let mut shape = start.shape;
        let mut slide: Option<Duration> = start.slide;
        let mut named = std::collections::BTreeMap::new();
        for (i, step) in steps.iter().enumerate() {
            let path = format!("{base}[{i}]");
            if let Some(name) = &step.name {
                self.dns_label(&format!("{path}.name"), name);
                if let Some(first) = named.insert(name.as_str(), i) {
                    self.add(
                        format!("{path}.name"),
                        format!(
                            "{name:?} is the name of {base}[{first}] too; step names are unique"
                        ),
                    );
                }
            }
            let ops = step.operations();
            if ops.len() != 1 {
                if ops.is_empty() {
                    self.add(&path, "is empty; set one operation such as map, flatMap, filter, window or reduceByKey");
                } else {
                    self.add(
                        &path,
                        format!(
                            "sets {}; put each operation in its own step",
                            ops.join(" and ")
                        ),
                    );
                }
                continue;
            }
            let op = ops[0];
            let current = shape;
            let needs = move |want: Shape| -> Option<String> {
                (current != want).then(|| match want {
                    Shape::Keyed => format!("{op} needs a keyed stream; add a keyBy or countByValue step before it"),
                    Shape::Records => format!("{op} works on plain records, but the stream is keyed here; use it before keyBy, or map the values"),
                })
            };
            let require = |v: &mut Self, want: Shape| {
                if let Some(message) = needs(want) {
                    v.add(format!("{path}.{op}"), message);
                }
            };
            if let Some(s) = &step.map {
                self.selector(&format!("{path}.map"), s);
            }
            if step.parse_json.is_some() {
                require(self, Shape::Records);
            }
            if let Some(f) = &step.flat_map {
                require(self, Shape::Records);
                self.flat_map(&format!("{path}.flatMap"), f);
            }
            if let Some(f) = &step.filter {
                if self.exactly_one(
                    &format!("{path}.filter"),
                    &[("expr", f.expr.is_some()), ("regex", f.regex.is_some())],
                ) {
                    if let Some(re) = &f.regex {
                        self.regex(&format!("{path}.filter.regex"), re);
                    }
                    if let Some(expr) = &f.expr {
                        self.cel(&format!("{path}.filter.expr"), expr);
                    }
                }
                if f.regex.is_some() && shape == Shape::Keyed {
                    self.add(format!("{path}.filter.regex"), "needs plain text records; on a keyed stream write an expr over key and value");
                }
            }
            if let Some(t) = &step.top {
                if !(1..=MAX_TOP).contains(&t.keep) {
                    self.add(
                        format!("{path}.top.keep"),
                        format!(
                            "must be 1 to {MAX_TOP}: the records kept are gathered in one partition"
                        ),
                    );
                }
                self.cel(&format!("{path}.top.by"), &t.by);
            }
            if let Some(k) = &step.key_by {
                self.selector(&format!("{path}.keyBy.key"), &k.key);
                if let Some(value) = &k.value {
                    self.selector(&format!("{path}.keyBy.value"), value);
                }
                shape = Shape::Keyed;
            }
            if let Some(w) = &step.window {
                slide = self
                    .window(
                        &format!("{path}.window"),
                        &w.length,
                        w.slide.as_deref(),
                        interval,
                        slide,
                    )
                    .or(slide);
            }
            if step.count_by_value.is_some() {
                require(self, Shape::Records);
                shape = Shape::Keyed;
            }
            if step.count.is_some() {
                shape = Shape::Records;
            }
            if let Some(r) = &step.reduce_by_key {
                require(self, Shape::Keyed);
                if r.op == Aggregation::Last {
                    self.add(
                        format!("{path}.reduceByKey.op"),
                        "last is only for updateStateByKey; use sum, min, max, count or avg",
                    );
                }
            }
            if let Some(w) = &step.count_by_value_and_window {
                require(self, Shape::Records);
                slide = self
                    .window(
                        &format!("{path}.countByValueAndWindow"),
                        &w.length,
                        w.slide.as_deref(),
                        interval,
                        slide,
                    )
                    .or(slide);
                shape = Shape::Keyed;
            }
            if let Some(w) = &step.reduce_by_key_and_window {
                require(self, Shape::Keyed);
                let p = format!("{path}.reduceByKeyAndWindow");
                slide = self.windowed_reduce(&p, w, interval, slide);
            }
            if let Some(s) = &step.update_state_by_key {
                require(self, Shape::Keyed);
                let p = format!("{path}.updateStateByKey");
                if self.exactly_one(&p, &[("op", s.op.is_some()), ("expr", s.expr.is_some())])
                    && let Some(expr) = &s.expr
                {
                    self.cel(&format!("{p}.expr"), expr);
                }
                if let Some(t) = &s.timeout {
                    self.duration(&format!("{p}.timeout"), t);
                }
            }
            if let Some(j) = &step.join_static {
                let p = format!("{path}.joinStatic");
                if j.uri.trim().is_empty() {
                    self.add(
                        format!("{p}.uri"),
                        "is empty; write the path or file:// URI of the data set",
                    );
                } else if j.uri.starts_with("s3://") {
                    if let Some(problem) = j.endpoint.as_deref().and_then(endpoint_problem) {
                        self.add(format!("{p}.endpoint"), problem);
                    }
                    if let Some(problem) = crate::s3::s3_uri_problem(&j.uri) {
                        self.add(format!("{p}.uri"), problem);
                    } else if crate::parse_s3_uri(&j.uri).is_some_and(|(_, key)| key.is_empty()) {
                        self.add(
                            format!("{p}.uri"),
                            format!(
                                "{:?} names a bucket, not an object; write s3://bucket/key",
                                j.uri
                            ),
                        );
                    }
                } else if j.uri.contains("://") && !j.uri.starts_with("file://") {
                    self.add(
                        format!("{p}.uri"),
                        format!(
                            "{:?}: write a local path, a file:// URI or s3://bucket/key",
                            j.uri
                        ),
                    );
                } else {
                    for (field, set) in [
                        ("endpoint", j.endpoint.is_some()),
                        ("region", j.region.is_some()),
                        ("pathStyle", j.path_style.is_some()),
                    ] {
                        if set {
                            self.add(
                                format!("{p}.{field}"),
                                "is for s3:// data sets; remove it for a local file",
                            );
                        }
                    }
                }
                if let Some(refresh) = &j.refresh
                    && let (Some(r), Some(i)) =
                        (self.duration(&format!("{p}.refresh"), refresh), interval)
                    && r < i
                {
                    self.add(
                        format!("{p}.refresh"),
                        format!("{refresh} is shorter than spec.batchInterval; the data set is read at most once a batch"),
                    );
                }
                if j.mode == StaticJoinMode::Join {
                    require(self, Shape::Keyed);
                }
                if let Some(key) = &j.key {
                    if shape == Shape::Keyed {
                        self.add(
                            format!("{p}.key"),
                            "a keyed stream is joined on its key; remove key",
                        );
                    } else {
                        self.selector(&format!("{p}.key"), key);
                    }
                }
            }
            match step.kind() {
                Some(StepKind::Join(kind, j)) => {
                    require(self, Shape::Keyed);
                    let p = format!("{path}.{}.with", kind.name());
                    match streams.get(&j.with) {
                        Some(Some(other)) => {
                            if other.shape != Shape::Keyed {
                                self.add(&p, format!("{:?} is a stream of plain records; a join needs (key, value) pairs on both sides: add keyBy to it", j.with));
                            }
                            if other.slide != slide {
                                let show = |d: Option<Duration>| {
                                    format_duration(d.or(interval).unwrap_or_default())
                                };
                                self.add(&p, format!("{:?} slides every {}, this stream every {}; window both alike to join them", j.with, show(other.slide), show(slide)));
                            }
                        }
                        // A stream on a cycle: reported there.
                        Some(None) => {}
                        None if base == "spec.pipeline" => {
                            self.add(&p, "a join reads another stream: name both in spec.streams")
                        }
                        None => {
                            self.add(&p, format!("{:?} names no stream of spec.streams", j.with))
                        }
                    }
                }
                Some(StepKind::Reduce(r)) => {
                    if r.op == Aggregation::Last {
                        self.add(
                            format!("{path}.reduce.op"),
                            "last is only for updateStateByKey; use sum, min, max, count or avg",
                        );
                    }
                    shape = Shape::Records;
                }
                Some(StepKind::ReduceByWindow(w)) => {
                    let p = format!("{path}.reduceByWindow");
                    slide = self.windowed_reduce(&p, w, interval, slide);
                    shape = Shape::Records;
                }
                Some(StepKind::CountByWindow(w)) => {
                    let p = format!("{path}.countByWindow");
                    slide = self
                        .window(&p, &w.length, w.slide.as_deref(), interval, slide)
                        .or(slide);
                    shape = Shape::Records;
                }
                Some(StepKind::GroupByKey(_)) => require(self, Shape::Keyed),
                Some(StepKind::GroupByKeyAndWindow(w)) => {
                    require(self, Shape::Keyed);
                    let p = format!("{path}.groupByKeyAndWindow");
                    slide = self
                        .window(&p, &w.length, w.slide.as_deref(), interval, slide)
                        .or(slide);
                }
                Some(StepKind::MapValues(sel)) => {
                    require(self, Shape::Keyed);
                    self.selector(&format!("{path}.mapValues"), sel);
                }
                Some(StepKind::FlatMapValues(f)) => {
                    require(self, Shape::Keyed);
                    self.flat_map(&format!("{path}.flatMapValues"), f);
                }
                Some(StepKind::MapWithState(m)) => {
                    require(self, Shape::Keyed);
                    let p = format!("{path}.mapWithState");
                    self.cel(&format!("{p}.expr"), &m.expr);
                    if let Some(on_timer) = &m.on_timer {
                        self.cel(&format!("{p}.onTimer"), on_timer);
                    }
                    if let Some(t) = &m.timeout {
                        self.duration(&format!("{p}.timeout"), t);
                    }
                }
                _ => {}
            }
        }
        Output { shape, slide }
    }

    /// The graph of `spec.streams`: names, what each reads, no cycles; then each stream's
    /// steps, in an order where what a stream reads is checked before it.
    fn streams(&mut self, spec: &StreamingJobSpec, interval: Option<Duration>) {
        let sources: BTreeSet<&str> = spec.sources.iter().map(|s| s.name.as_str()).collect();
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, stream) in spec.streams.iter().enumerate() {
            let path = format!("spec.streams[{i}].name");
            self.dns_label(&path, &stream.name);
            if sources.contains(stream.name.as_str()) {
                self.add(
                    &path,
                    format!(
                        "{:?} is a source's name too; name the stream apart",
                        stream.name
                    ),
                );
            } else if let Some(first) = index.insert(&stream.name, i) {
                self.add(
                    &path,
                    format!(
                        "{:?} is the name of spec.streams[{first}] too; stream names are unique",
                        stream.name
                    ),
                );
            }
        }
        for (i, stream) in spec.streams.iter().enumerate() {
            if stream.pipeline.len() > MAX_STEPS {
                self.add(
                    format!("spec.streams[{i}].pipeline"),
                    format!(
                        "has {} steps; at most {MAX_STEPS}: split the stream",
                        stream.pipeline.len()
                    ),
                );
            }
            if stream.from.is_empty() {
                self.add(
                    format!("spec.streams[{i}].from"),
                    "is empty; name the sources or streams it reads",
                );
            }
            for (j, from) in stream.from.iter().enumerate() {
                if !index.contains_key(from.as_str()) && !sources.contains(from.as_str()) {
                    self.add(
                        format!("spec.streams[{i}].from[{j}]"),
                        format!(
                            "{from:?} names no source or stream; use one of {}",
                            sources
                                .iter()
                                .copied()
                                .chain(index.keys().copied())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
            }
        }
        let StreamOrder { order, blocked } = stream_order(spec);
        // What each stream gives, once checked; the streams on a cycle give nothing known.
        let mut outputs: BTreeMap<String, Option<Output>> = blocked
            .iter()
            .map(|(i, _)| (spec.streams[*i].name.clone(), None))
            .collect();
        for (i, waits_for) in blocked {
            let on_cycle: Vec<&str> = waits_for
                .iter()
                .map(|&k| spec.streams[k].name.as_str())
                .collect();
            self.add(
                format!("spec.streams[{i}]"),
                format!(
                    "{:?} reads or joins {} which read it back: a job is a graph without cycles",
                    spec.streams[i].name,
                    on_cycle.join(", ")
                ),
            );
        }
        for i in order {
            let stream = &spec.streams[i];
            let mut read: Vec<Output> = Vec::new();
            for from in &stream.from {
                if sources.contains(from.as_str()) {
                    read.push(Output::default());
                } else if let Some(Some(out)) = outputs.get(from) {
                    read.push(*out);
                }
            }
            let start = read.first().copied().unwrap_or_default();
            if read.iter().any(|o| o.shape != start.shape) {
                self.add(
                    format!("spec.streams[{i}].from"),
                    "reads plain records and (key, value) pairs together; a union needs one kind",
                );
            } else if read.iter().any(|o| o.slide != start.slide) {
                self.add(
                    format!("spec.streams[{i}].from"),
                    "reads streams of different slides together; a union needs one slide",
                );
            }
            let out = self.pipeline(
                &format!("spec.streams[{i}].pipeline"),
                &stream.pipeline,
                interval,
                start,
                &outputs,
            );
            outputs.insert(stream.name.clone(), Some(out));
        }
    }

    /// A windowed aggregation's settings at `p`; returns the stream's slide after it.
    fn windowed_reduce(
        &mut self,
        p: &str,
        w: &WindowedReduceStep,
        interval: Option<Duration>,
        slide: Option<Duration>,
    ) -> Option<Duration> {
        let after = self
            .window(p, &w.length, w.slide.as_deref(), interval, slide)
            .or(slide);
        if w.op == Aggregation::Last {
            self.add(
                format!("{p}.op"),
                "last is only for updateStateByKey; use sum, min, max, count or avg",
            );
        }
        if w.inverse == Some(true) && !matches!(w.op, Aggregation::Sum | Aggregation::Count) {
            self.add(
                format!("{p}.inverse"),
                format!(
                    "{:?} has no inverse; inverse works with sum and count only",
                    w.op
                )
                .to_lowercase(),
            );
        }
        after
    }

    /// A `flatMap` or `flatMapValues` step's settings.
    fn flat_map(&mut self, p: &str, f: &FlatMapStep) {
        if self.exactly_one(
            p,
            &[
                ("split", f.split.is_some()),
                ("regex", f.regex.is_some()),
                ("expr", f.expr.is_some()),
            ],
        ) {
            if f.split.as_deref() == Some("") {
                self.add(
                    format!("{p}.split"),
                    "is empty; write a separator such as \" \" or \",\"",
                );
            }
            if let Some(re) = &f.regex {
                self.regex(&format!("{p}.regex"), re);
            }
            if let Some(expr) = &f.expr {
                self.cel(&format!("{p}.expr"), expr);
            }
        }
    }

    fn sinks(&mut self, sinks: &[SinkSpec], streams: &[StreamSpec]) {
        if sinks.is_empty() {
            self.add(
                "spec.sinks",
                "needs at least one sink (stdout, files, s3, kafka or postgres)",
            );
        }
        let names: Vec<&str> = streams.iter().map(|s| s.name.as_str()).collect();
        for (i, sink) in sinks.iter().enumerate() {
            let path = format!("spec.sinks[{i}]");
            match (&sink.from, names.is_empty()) {
                (None, false) => self.add(
                    format!("{path}.from"),
                    format!("is required with spec.streams: name the stream it writes ({})", names.join(", ")),
                ),
                (Some(from), true) => self.add(
                    format!("{path}.from"),
                    format!("{from:?}: there is no spec.streams; leave from out to write the pipeline's output"),
                ),
                (Some(from), false) if !names.contains(&from.as_str()) => self.add(
                    format!("{path}.from"),
                    format!("{from:?} names no stream; use one of {}", names.join(", ")),
                ),
                _ => {}
            }
            let set: Vec<&str> = sink.kinds().iter().map(|k| k.name()).collect();
            let kinds = SinkKind::NAMES.map(|n| (n, set.contains(&n)));
            if !self.exactly_one(&path, &kinds) {
                continue;
            }
            let Some(kind) = sink.kind() else {
                continue;
            };
            match kind {
                SinkKind::Stdout(stdout) => {
                    if let Some(limit) = stdout.limit
                        && limit > 100_000
                    {
                        self.add(
                            format!("{path}.stdout.limit"),
                            format!("{limit} is too many to print; use at most 100000"),
                        );
                    }
                }
                SinkKind::Kafka(k) => {
                    for (field, message) in crate::kafka::sink_problems(k) {
                        self.add(format!("{path}.kafka.{field}"), message);
                    }
                }
                SinkKind::Postgres(pg) => {
                    for (field, message) in crate::postgres::sink_problems(pg) {
                        self.add(format!("{path}.postgres.{field}"), message);
                    }
                }
                SinkKind::S3(s3) => {
                    if let Some(problem) = s3_uri_problem(&s3.uri) {
                        self.add(format!("{path}.s3.uri"), problem);
                    }
                    if let Some(problem) = s3.endpoint.as_deref().and_then(endpoint_problem) {
                        self.add(format!("{path}.s3.endpoint"), problem);
                    }
                }
                SinkKind::Files(files) => {
                    if files.path.trim().is_empty() {
                        self.add(
                            format!("{path}.files.path"),
                            "is empty; write the output directory",
                        );
                    } else if files.path.contains("://") && !files.path.starts_with("file://") {
                        self.add(
                            format!("{path}.files.path"),
                            format!(
                                "{:?}: only local paths and file:// URIs are supported",
                                files.path
                            ),
                        );
                    }
                    if let Some(prefix) = &files.prefix
                        && (prefix.is_empty()
                            || !prefix
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                    {
                        self.add(format!("{path}.files.prefix"), format!("{prefix:?} is not a safe file name prefix; use letters, digits, '-' or '_'"));
                    }
                }
            }
        }
    }

    fn checkpoint(&mut self, ckpt: &CheckpointSpec) {
        if let Some(path) = ckpt.uri.strip_prefix("file://") {
            if !path.starts_with('/') {
                self.add(
                    "spec.checkpoint.uri",
                    format!("{:?} is not absolute; write file:///absolute/dir", ckpt.uri),
                );
            } else if path.trim_matches('/').is_empty() {
                self.add(
                    "spec.checkpoint.uri",
                    "file:/// is the root directory; give the checkpoint a directory of its own, e.g. file:///var/lib/sluice/NAME",
                );
            }
        } else if ckpt.uri.starts_with("s3://") {
            if let Some(problem) = s3_uri_problem(&ckpt.uri) {
                self.add("spec.checkpoint.uri", problem);
            }
        } else {
            self.add(
                "spec.checkpoint.uri",
                format!(
                    "{:?} is not supported; write s3://bucket/prefix or file:///absolute/dir",
                    ckpt.uri
                ),
            );
        }
        if ckpt.deletion_policy == Some(crate::DeletionPolicy::Delete) {
            let has_prefix = parse_s3_uri(&ckpt.uri).is_some_and(|(_, prefix)| !prefix.is_empty());
            if !has_prefix {
                self.add(
                    "spec.checkpoint.deletionPolicy",
                    "Delete needs an s3://bucket/prefix location with a prefix of the job's own, never a whole bucket",
                );
            }
        }
        if let Some(endpoint) = &ckpt.endpoint {
            if let Some(problem) = endpoint_problem(endpoint) {
                self.add("spec.checkpoint.endpoint", problem);
            }
            if !ckpt.uri.starts_with("s3://") {
                self.add(
                    "spec.checkpoint.endpoint",
                    "only applies to s3:// checkpoints",
                );
            }
        }
        if ckpt.interval == Some(0) {
            self.add("spec.checkpoint.interval", "must be at least 1 batch");
        }
        if let Some(text) = &ckpt.snapshot_every {
            self.duration("spec.checkpoint.snapshotEvery", text);
        }
        if ckpt.retain == Some(0) {
            self.add("spec.checkpoint.retain", "must be at least 1 snapshot");
        }
    }
}
