//! Upgrades: what a changed spec does to the job's checkpoint, change by change.
//!
//! A job restarted with a changed spec resumes from the checkpoint its old spec wrote. Most
//! changes keep everything (a sink, a filter, the image); some move the state into a new form
//! (more partitions: keyed state is re-sharded by key hash; a new stateful step starts empty);
//! some drop part of it (a removed stateful step), and some make it unreadable (a window of
//! another length). [`plan`] says which, for `sluice plan`, the operator and the runtime alike,
//! so that what a user is told is what happens.
//!
//! A stateful step's state is known by the step's identity ([`StatefulStep::id`]): its `name`,
//! or its operation and its place among the steps of that operation. Stateless steps may be
//! added, removed and changed around it freely.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value as Json;

use crate::duration::{format_duration, parse_duration};
use crate::kinds::StepKind;
use crate::spec::{DEPLOYMENT_FIELDS, PipelineStep, StreamingJobSpec, defaults};

/// What a change needs, from least to most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeClass {
    /// Applied to the running job, without a restart: the worker count, suspend.
    Live,
    /// The pods restart and the job resumes from its checkpoint with all its state.
    Restart,
    /// The state is carried over in a new form: re-sharded onto another partition count, or a
    /// new stateful step that starts empty. Nothing is lost.
    Migration,
    /// The job restores, but part of its state is dropped (said in the change).
    Loss,
    /// The new spec cannot read the checkpoint's state.
    CannotRestore,
}

impl ChangeClass {
    /// How the plan prints it.
    pub fn label(self) -> &'static str {
        match self {
            ChangeClass::Live => "live",
            ChangeClass::Restart => "restart",
            ChangeClass::Migration => "state migration",
            ChangeClass::Loss => "state loss",
            ChangeClass::CannotRestore => "cannot restore",
        }
    }
}

/// What the whole change comes to: `sluice plan`'s exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Everything in the checkpoint is carried over (exit 0).
    Restores,
    /// The job restores without part of its state, as the plan says (exit 1); it proceeds only
    /// with `spec.upgrade.allowStateLoss: true`.
    RestoresWithLoss,
    /// The checkpoint cannot be resumed by the new spec (exit 2).
    CannotRestore,
}

impl Verdict {
    /// The exit status of `sluice plan`.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Restores => 0,
            Verdict::RestoresWithLoss => 1,
            Verdict::CannotRestore => 2,
        }
    }

    /// How the plan prints it.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Restores => "restores",
            Verdict::RestoresWithLoss => "restores with stated losses",
            Verdict::CannotRestore => "cannot restore",
        }
    }
}

/// One difference between the old spec and the new, and what it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Field path in the new spec (in the old one for what was removed).
    pub path: String,
    pub class: ChangeClass,
    /// What happens, in words.
    pub effect: String,
}

/// Every change from one spec to another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpgradePlan {
    pub changes: Vec<Change>,
}

impl UpgradePlan {
    fn push(&mut self, path: impl Into<String>, class: ChangeClass, effect: impl Into<String>) {
        self.changes.push(Change {
            path: path.into(),
            class,
            effect: effect.into(),
        });
    }

    /// Whether the specs are the same, as far as the job is concerned.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The most a change needs.
    pub fn class(&self) -> Option<ChangeClass> {
        self.changes.iter().map(|c| c.class).max()
    }

    /// What the change comes to.
    pub fn verdict(&self) -> Verdict {
        match self.class() {
            Some(ChangeClass::CannotRestore) => Verdict::CannotRestore,
            Some(ChangeClass::Loss) => Verdict::RestoresWithLoss,
            _ => Verdict::Restores,
        }
    }

    /// Why the change may not proceed: it cannot restore, or it would lose state and
    /// `allow_state_loss` is not set. The message names the changes and the ways forward.
    pub fn refusal(&self, allow_state_loss: bool) -> Option<String> {
        let listed = |class: ChangeClass| -> String {
            self.changes
                .iter()
                .filter(|c| c.class == class)
                .map(|c| format!("{}: {}", c.path, c.effect))
                .collect::<Vec<_>>()
                .join("; ")
        };
        match self.verdict() {
            Verdict::CannotRestore => Some(format!(
                "the checkpoint cannot be resumed by the new spec: {}. Revert the change, or set a new spec.checkpoint.uri to start afresh",
                listed(ChangeClass::CannotRestore)
            )),
            Verdict::RestoresWithLoss if !allow_state_loss => Some(format!(
                "the change drops checkpointed state: {}. Set spec.upgrade.allowStateLoss: true to accept it, or revert the change",
                listed(ChangeClass::Loss)
            )),
            _ => None,
        }
    }

    /// Whether the state's layout changes: partitions re-sharded, stateful steps added or
    /// removed (what was logged for the old layout cannot rebuild the new one).
    pub fn reshapes_state(&self) -> bool {
        self.changes
            .iter()
            .any(|c| matches!(c.class, ChangeClass::Migration | ChangeClass::Loss))
    }

    /// One line, for a condition or an event: the verdict and every change's path and class.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "no change".into();
        }
        let changes: Vec<String> = self
            .changes
            .iter()
            .map(|c| format!("{} ({})", c.path, c.class.label()))
            .collect();
        format!("{}: {}", self.verdict().label(), changes.join(", "))
    }

    /// The plan as `sluice plan` prints it: one change per line, then the verdict.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let width = self.changes.iter().map(|c| c.path.len()).max().unwrap_or(0);
        for c in &self.changes {
            let _ = writeln!(
                out,
                "{:width$}  {:15}  {}",
                c.path,
                c.class.label(),
                c.effect
            );
        }
        if self.is_empty() {
            out.push_str("no changes\n");
        }
        let verdict = self.verdict();
        let _ = writeln!(
            out,
            "verdict: {} (exit {})",
            verdict.label(),
            verdict.exit_code()
        );
        out
    }
}

/// A step whose state is checkpointed, as an upgrade sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatefulStep {
    /// What its state is known by: the step's `name`, or `OPERATION#N` for the N-th (from 0)
    /// unnamed step of that operation; in a stream of `spec.streams`, prefixed by the
    /// stream's name and `/`.
    pub id: String,
    /// The stream it is in (`spec.streams`), none for `spec.pipeline`.
    pub stream: Option<usize>,
    /// Its place in its pipeline.
    pub index: usize,
    /// The operation, e.g. `updateStateByKey`.
    pub operation: &'static str,
    /// The settings its state's form depends on, as people read them (`length` → `10s`): a
    /// change of any of them makes the old state unreadable.
    pub shape: BTreeMap<&'static str, String>,
}

/// The stateful steps of a job, in order: `spec.pipeline`'s, then each stream's.
pub fn stateful_steps(spec: &StreamingJobSpec) -> Vec<StatefulStep> {
    let mut out = pipeline_stateful_steps(spec, &spec.pipeline, None);
    for (i, stream) in spec.streams.iter().enumerate() {
        out.extend(pipeline_stateful_steps(spec, &stream.pipeline, Some(i)));
    }
    out
}

impl StatefulStep {
    /// Its field path.
    pub fn path(&self) -> String {
        match self.stream {
            Some(s) => format!("spec.streams[{s}].pipeline[{}]", self.index),
            None => format!("spec.pipeline[{}]", self.index),
        }
    }

    /// The step in `spec`.
    fn step<'a>(&self, spec: &'a StreamingJobSpec) -> Option<&'a PipelineStep> {
        match self.stream {
            Some(s) => spec.streams.get(s)?.pipeline.get(self.index),
            None => spec.pipeline.get(self.index),
        }
    }
}

fn pipeline_stateful_steps(
    spec: &StreamingJobSpec,
    steps: &[PipelineStep],
    stream: Option<usize>,
) -> Vec<StatefulStep> {
    let interval = parse_duration(&spec.batch_interval).ok();
    let ms = |text: &str| -> String {
        parse_duration(text).map_or_else(|_| text.to_string(), format_duration)
    };
    let slide = |text: Option<&str>| -> String {
        match (text, interval) {
            (Some(t), _) => ms(t),
            (None, Some(i)) => format_duration(i),
            (None, None) => spec.batch_interval.clone(),
        }
    };
    let prefix = stream
        .and_then(|s| spec.streams.get(s))
        .map(|s| format!("{}/", s.name))
        .unwrap_or_default();
    let mut ordinals: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let Some(kind) = step.kind() else { continue };
        let shape: BTreeMap<&'static str, String> = match kind {
            StepKind::Window(w)
            | StepKind::CountByValueAndWindow(w)
            | StepKind::CountByWindow(w)
            | StepKind::GroupByKeyAndWindow(w) => BTreeMap::from([
                ("length", ms(&w.length)),
                ("slide", slide(w.slide.as_deref())),
            ]),
            StepKind::ReduceByKeyAndWindow(w) | StepKind::ReduceByWindow(w) => BTreeMap::from([
                ("op", format!("{:?}", w.op).to_lowercase()),
                ("length", ms(&w.length)),
                ("slide", slide(w.slide.as_deref())),
                ("inverse", w.inverse.unwrap_or(false).to_string()),
            ]),
            // An expression's state is any value: another expression may read it (a change
            // of the step, the state kept); a built-in's is its aggregation's form.
            // Any value, as for an expression of updateStateByKey.
            StepKind::MapWithState(_) => BTreeMap::new(),
            StepKind::UpdateStateByKey(s) => BTreeMap::from([(
                "op",
                s.op.map_or_else(|| "expr".to_string(), |op| format!("{op:?}").to_lowercase()),
            )]),
            _ => continue,
        };
        let operation = kind.name();
        let ordinal = ordinals.entry(operation).or_default();
        let id = step
            .name
            .clone()
            .unwrap_or_else(|| format!("{operation}#{ordinal}"));
        if step.name.is_none() {
            *ordinal += 1;
        }
        out.push(StatefulStep {
            id: format!("{prefix}{id}"),
            stream,
            index,
            operation,
            shape,
        });
    }
    out
}

/// Every change from `old` to `new` (the job's part of the spec), classified.
pub fn plan(old: &StreamingJobSpec, new: &StreamingJobSpec) -> UpgradePlan {
    let mut p = UpgradePlan::default();
    let old_uri = old.checkpoint.as_ref().map(|c| c.uri.as_str());
    let new_uri = new.checkpoint.as_ref().map(|c| c.uri.as_str());
    let fresh = old_uri != new_uri;
    if fresh {
        p.push(
            "spec.checkpoint.uri",
            ChangeClass::Restart,
            match new_uri {
                Some(uri) => format!(
                    "a new checkpoint ({uri}): the job starts afresh, its sources at their starting positions and its state empty; the old checkpoint is left as it is"
                ),
                None => "no checkpoint: the job starts afresh and keeps nothing across restarts"
                    .into(),
            },
        );
    }
    let interval = |s: &StreamingJobSpec| {
        parse_duration(&s.batch_interval).map_or_else(|_| s.batch_interval.clone(), format_duration)
    };
    let (oi, ni) = (interval(old), interval(new));
    if oi != ni {
        p.push(
            "spec.batchInterval",
            ChangeClass::CannotRestore,
            format!("{oi} -> {ni}: the checkpoint counts batch times and windows in {oi} batches"),
        );
    }
    let parts = |s: &StreamingJobSpec| s.parallelism.unwrap_or(defaults::PARALLELISM);
    if parts(old) != parts(new) {
        p.push(
            "spec.parallelism",
            ChangeClass::Migration,
            format!(
                "{} -> {} partitions: keyed state and window buffers are re-sharded by key hash from the last snapshot",
                parts(old),
                parts(new)
            ),
        );
    }
    sources(old, new, &mut p);
    pipeline(old, new, &mut p);
    streams(old, new, &mut p);
    restart_if_changed(
        &mut p,
        "spec.onRecordError",
        &old.on_record_error.unwrap_or_default(),
        &new.on_record_error.unwrap_or_default(),
        "records that fail are handled the new way",
    );
    restart_if_changed(
        &mut p,
        "spec.backpressure",
        &old.backpressure.clone().unwrap_or_default(),
        &new.backpressure.clone().unwrap_or_default(),
        "the rate controller starts again with the new settings",
    );
    sinks(old, new, &mut p);
    if !fresh {
        let settings = |s: &StreamingJobSpec| {
            s.checkpoint.as_ref().map(|c| {
                let mut c = c.clone();
                c.deletion_policy = None;
                c
            })
        };
        restart_if_changed(
            &mut p,
            "spec.checkpoint",
            &settings(old),
            &settings(new),
            "the same checkpoint, written with the new settings",
        );
        let policy = |s: &StreamingJobSpec| {
            s.checkpoint
                .as_ref()
                .and_then(|c| c.deletion_policy)
                .unwrap_or_default()
        };
        if policy(old) != policy(new) {
            p.push(
                "spec.checkpoint.deletionPolicy",
                ChangeClass::Live,
                format!(
                    "{:?} -> {:?}: what the operator does with the checkpoint when the job is deleted",
                    policy(old),
                    policy(new)
                ),
            );
        }
    }
    if fresh {
        // Nothing is carried over: no change can lose or fail to read what is not read.
        for c in &mut p.changes {
            if c.class > ChangeClass::Restart {
                c.class = ChangeClass::Restart;
                c.effect = format!("{} (moot: the job starts afresh)", c.effect);
            }
        }
    }
    p
}

/// Every change from one StreamingJob `spec` to another, given as JSON objects with the
/// operator's deployment fields (`workers`, `image`, ...) as well as the job's.
pub fn plan_resources(old: &Json, new: &Json) -> Result<UpgradePlan, String> {
    let job = |spec: &Json, which: &str| -> Result<StreamingJobSpec, String> {
        let mut spec = spec.clone();
        if let Some(object) = spec.as_object_mut() {
            for field in DEPLOYMENT_FIELDS {
                object.remove(*field);
            }
        }
        serde_json::from_value(spec).map_err(|e| format!("the {which} spec is unreadable: {e}"))
    };
    let mut p = plan(&job(old, "old")?, &job(new, "new")?);
    let field = |spec: &Json, name: &str| spec.get(name).cloned().unwrap_or(Json::Null);
    for name in DEPLOYMENT_FIELDS {
        let (mut a, mut b) = (field(old, name), field(new, name));
        if *name == "workers" {
            let replicas = |w: &mut Json| {
                w.as_object_mut()
                    .and_then(|o| o.remove("replicas"))
                    .unwrap_or(Json::Null)
            };
            let (ra, rb) = (replicas(&mut a), replicas(&mut b));
            if ra != rb {
                p.push(
                    "spec.workers.replicas",
                    ChangeClass::Live,
                    format!(
                        "{} -> {} workers: partitions move at a batch boundary, without a restart",
                        shown(&ra),
                        shown(&rb)
                    ),
                );
            }
            let autoscale = |w: &mut Json| {
                w.as_object_mut()
                    .and_then(|o| o.remove("autoscale"))
                    .unwrap_or(Json::Null)
            };
            let (aa, ab) = (autoscale(&mut a), autoscale(&mut b));
            if aa != ab {
                p.push(
                    "spec.workers.autoscale",
                    ChangeClass::Live,
                    if ab.is_null() {
                        "the operator stops sizing the workers; replicas stays where it is"
                    } else {
                        "the operator sizes the workers from the job's figures, without a restart"
                    },
                );
            }
            // `workers: {}` and no `workers` mean the same.
            for w in [&mut a, &mut b] {
                if w.as_object().is_some_and(serde_json::Map::is_empty) {
                    *w = Json::Null;
                }
            }
        }
        if a == b {
            continue;
        }
        let (class, effect) = match *name {
            "suspend" => (
                ChangeClass::Live,
                if b == Json::Bool(true) {
                    "the job stops; resumed, it goes on from its checkpoint"
                } else {
                    "the job resumes from its checkpoint"
                },
            ),
            "restartPolicy" => (
                ChangeClass::Live,
                "the operator applies it from the next failure on",
            ),
            _ => (
                ChangeClass::Restart,
                "the pods are replaced; the job resumes from its checkpoint",
            ),
        };
        p.push(format!("spec.{name}"), class, effect);
    }
    Ok(p)
}

fn shown(value: &Json) -> String {
    match value {
        Json::Null => "default".into(),
        other => other.to_string(),
    }
}

fn restart_if_changed<T: PartialEq>(p: &mut UpgradePlan, path: &str, a: &T, b: &T, effect: &str) {
    if a != b {
        p.push(path, ChangeClass::Restart, effect);
    }
}

fn sources(old: &StreamingJobSpec, new: &StreamingJobSpec, p: &mut UpgradePlan) {
    let by_name: BTreeMap<&str, _> = old.sources.iter().map(|s| (s.name.as_str(), s)).collect();
    let kept: BTreeSet<&str> = new.sources.iter().map(|s| s.name.as_str()).collect();
    for (i, source) in new.sources.iter().enumerate() {
        let path = format!("spec.sources[{i}]");
        let kind = |s: &crate::spec::SourceSpec| s.kind().map_or("?", |k| k.name());
        match by_name.get(source.name.as_str()) {
            None => p.push(
                path,
                ChangeClass::Restart,
                format!(
                    "new source {:?}: read from its starting position",
                    source.name
                ),
            ),
            Some(before) if kind(before) != kind(source) => p.push(
                path,
                ChangeClass::Restart,
                format!(
                    "{:?} is now a {} source (was {}): it starts at its starting position",
                    source.name,
                    kind(source),
                    kind(before)
                ),
            ),
            Some(before) if *before != source => p.push(
                path,
                ChangeClass::Restart,
                format!(
                    "{:?} resumes at its checkpointed position with the new settings",
                    source.name
                ),
            ),
            Some(_) => {}
        }
    }
    for (i, source) in old.sources.iter().enumerate() {
        if !kept.contains(source.name.as_str()) {
            p.push(
                format!("spec.sources[{i}] (old)"),
                ChangeClass::Restart,
                format!(
                    "source {:?} removed: its position is forgotten (added back, it starts over)",
                    source.name
                ),
            );
        }
    }
}

fn pipeline(old: &StreamingJobSpec, new: &StreamingJobSpec, p: &mut UpgradePlan) {
    let (old_state, new_state) = (stateful_steps(old), stateful_steps(new));
    let stateful_at =
        |steps: &[StatefulStep], i: usize| steps.iter().any(|s| s.stream.is_none() && s.index == i);
    // Stateless steps hold nothing: compared in order, each difference is a restart.
    let stateless =
        |spec: &StreamingJobSpec, state: &[StatefulStep]| -> Vec<(usize, PipelineStep)> {
            spec.pipeline
                .iter()
                .enumerate()
                .filter(|(i, _)| !stateful_at(state, *i))
                .map(|(i, s)| (i, s.clone()))
                .collect()
        };
    let (a, b) = (stateless(old, &old_state), stateless(new, &new_state));
    let op = |s: &PipelineStep| s.operations().join("+");
    let mut pending_removal: Option<(usize, &PipelineStep)> = None;
    let flush = |p: &mut UpgradePlan, removed: Option<(usize, &PipelineStep)>| {
        if let Some((i, x)) = removed {
            p.push(
                format!("spec.pipeline[{i}] (old)"),
                ChangeClass::Restart,
                format!("{} removed: the state is kept", op(x)),
            );
        }
    };
    for edit in diff(&a, &b) {
        match edit {
            Edit::Keep => {
                flush(p, pending_removal.take());
            }
            Edit::Remove((i, x)) => {
                flush(p, pending_removal.take());
                pending_removal = Some((*i, x));
            }
            Edit::Add((i, y)) => match pending_removal.take() {
                // A step removed where one is added: a change of that step.
                Some((_, x)) => p.push(
                    format!("spec.pipeline[{i}]"),
                    ChangeClass::Restart,
                    if op(x) == op(y) {
                        format!("{} changed: the state is kept", op(y))
                    } else {
                        format!("{} -> {}: the state is kept", op(x), op(y))
                    },
                ),
                None => p.push(
                    format!("spec.pipeline[{i}]"),
                    ChangeClass::Restart,
                    format!("{} added: the state is kept", op(y)),
                ),
            },
        }
    }
    flush(p, pending_removal.take());
    let before: BTreeMap<&str, &StatefulStep> =
        old_state.iter().map(|s| (s.id.as_str(), s)).collect();
    let after: BTreeSet<&str> = new_state.iter().map(|s| s.id.as_str()).collect();
    for step in &new_state {
        let path = step.path();
        let Some(was) = before.get(step.id.as_str()) else {
            p.push(
                path,
                ChangeClass::Migration,
                format!(
                    "new stateful step {} ({}): its state starts empty",
                    step.id, step.operation
                ),
            );
            continue;
        };
        if was.operation != step.operation || was.shape != step.shape {
            p.push(
                path,
                ChangeClass::CannotRestore,
                format!(
                    "the state of {} changed form ({}): the old state cannot be read by it; to start it empty instead, give the step a new name",
                    step.id,
                    shape_change(was, step)
                ),
            );
        } else if was.step(old) != step.step(new) {
            let (had, has) = (has_timers(was.step(old)), has_timers(step.step(new)));
            let (class, what) = match (had, has) {
                (true, false) => (
                    ChangeClass::Loss,
                    format!(
                        "{} lost onTimer: its state is kept, its keys' timers are dropped",
                        step.id
                    ),
                ),
                (false, true) => (
                    ChangeClass::Migration,
                    format!(
                        "{} gained onTimer: its state is kept, its keys start with no timer",
                        step.id
                    ),
                ),
                _ => (
                    ChangeClass::Restart,
                    format!("{} changed: its state is kept", step.id),
                ),
            };
            p.push(path, class, what);
        }
    }
    for step in &old_state {
        if !after.contains(step.id.as_str()) {
            p.push(
                format!("{} (old)", step.path()),
                ChangeClass::Loss,
                format!(
                    "stateful step {} ({}) removed: its state is dropped",
                    step.id, step.operation
                ),
            );
        }
    }
}

/// Whether a step keeps timers beside its state (`mapWithState` with `onTimer`): they are a
/// state of their own in the checkpoint.
fn has_timers(step: Option<&PipelineStep>) -> bool {
    step.and_then(|s| s.map_with_state.as_ref())
        .is_some_and(|m| m.on_timer.is_some())
}

/// The streams of a graph, by name: added, removed or changed; their stateful steps are
/// `pipeline`'s (known by their ids wherever they are).
fn streams(old: &StreamingJobSpec, new: &StreamingJobSpec, p: &mut UpgradePlan) {
    let (old_state, new_state) = (stateful_steps(old), stateful_steps(new));
    fn stateless<'a>(
        spec: &'a StreamingJobSpec,
        state: &[StatefulStep],
        i: usize,
    ) -> Vec<&'a PipelineStep> {
        spec.streams[i]
            .pipeline
            .iter()
            .enumerate()
            .filter(|(j, _)| !state.iter().any(|s| s.stream == Some(i) && s.index == *j))
            .map(|(_, step)| step)
            .collect()
    }
    for (i, stream) in new.streams.iter().enumerate() {
        let path = format!("spec.streams[{i}]");
        match old.streams.iter().position(|s| s.name == stream.name) {
            None => p.push(
                path,
                ChangeClass::Restart,
                format!("stream {} added", stream.name),
            ),
            Some(k) => {
                if old.streams[k].from != stream.from {
                    p.push(
                        format!("{path}.from"),
                        ChangeClass::Restart,
                        format!(
                            "stream {} reads {} -> {}: the state is kept",
                            stream.name,
                            old.streams[k].from.join(", "),
                            stream.from.join(", ")
                        ),
                    );
                }
                if stateless(old, &old_state, k) != stateless(new, &new_state, i) {
                    p.push(
                        format!("{path}.pipeline"),
                        ChangeClass::Restart,
                        format!(
                            "stream {}'s stateless steps changed: the state is kept",
                            stream.name
                        ),
                    );
                }
            }
        }
    }
    for (k, stream) in old.streams.iter().enumerate() {
        if !new.streams.iter().any(|s| s.name == stream.name) {
            p.push(
                format!("spec.streams[{k}] (old)"),
                ChangeClass::Restart,
                format!("stream {} removed", stream.name),
            );
        }
    }
}

/// One step of turning one list into another.
enum Edit<'a, T> {
    Keep,
    Remove(&'a T),
    Add(&'a T),
}

/// The shortest edit from `a` to `b` (by their longest common subsequence of equal steps,
/// compared without their places): removals before additions at each point.
fn diff<'a>(
    a: &'a [(usize, PipelineStep)],
    b: &'a [(usize, PipelineStep)],
) -> Vec<Edit<'a, (usize, PipelineStep)>> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i].1 == b[j].1 {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::with_capacity(n + m));
    while i < n || j < m {
        if i < n && j < m && a[i].1 == b[j].1 {
            out.push(Edit::Keep);
            (i, j) = (i + 1, j + 1);
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(Edit::Remove(&a[i]));
            i += 1;
        } else {
            out.push(Edit::Add(&b[j]));
            j += 1;
        }
    }
    out
}

/// `length 10s -> 20s`, or the operations when they differ.
fn shape_change(a: &StatefulStep, b: &StatefulStep) -> String {
    if a.operation != b.operation {
        return format!("{} -> {}", a.operation, b.operation);
    }
    let keys: BTreeSet<&&str> = a.shape.keys().chain(b.shape.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (a.shape.get(*k), b.shape.get(*k));
            (x != y).then(|| {
                format!(
                    "{k} {} -> {}",
                    x.map_or("-", String::as_str),
                    y.map_or("-", String::as_str)
                )
            })
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn sinks(old: &StreamingJobSpec, new: &StreamingJobSpec, p: &mut UpgradePlan) {
    let kind = |s: &crate::spec::SinkSpec| s.kind().map_or("?", |k| k.name());
    for j in 0..old.sinks.len().max(new.sinks.len()) {
        match (old.sinks.get(j), new.sinks.get(j)) {
            (Some(a), Some(b)) if a != b => p.push(
                format!("spec.sinks[{j}]"),
                ChangeClass::Restart,
                format!(
                    "{} sink changed: batches from the restart on go to it",
                    kind(b)
                ),
            ),
            (None, Some(b)) => p.push(
                format!("spec.sinks[{j}]"),
                ChangeClass::Restart,
                format!(
                    "{} sink added: it receives batches from the restart on",
                    kind(b)
                ),
            ),
            (Some(a), None) => p.push(
                format!("spec.sinks[{j}] (old)"),
                ChangeClass::Restart,
                format!("{} sink removed", kind(a)),
            ),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> StreamingJobSpec {
        let text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: StreamingJob\nmetadata: {{name: t}}\nspec:\n{yaml}"
        );
        crate::parse_yaml(&text).expect("manifest").spec
    }

    const BASE: &str = "  batchInterval: 1s
  sources: [{name: in, generator: {rate: 100}}]
  pipeline:
    - flatMap: {split: ' '}
    - countByValueAndWindow: {length: 10s, slide: 2s}
    - filter: {expr: 'value > 1'}
  sinks: [{stdout: {}}]
  checkpoint: {uri: /tmp/c}
";

    fn with(base: &str, from: &str, to: &str) -> StreamingJobSpec {
        assert!(base.contains(from), "{from}");
        spec(&base.replace(from, to))
    }

    #[test]
    fn the_same_spec_and_written_defaults_change_nothing() {
        let a = spec(BASE);
        assert!(plan(&a, &a).is_empty());
        let explicit = with(
            BASE,
            "batchInterval: 1s",
            "batchInterval: 1000ms\n  parallelism: 4",
        );
        let p = plan(&a, &explicit);
        assert!(p.is_empty(), "{}", p.render());
    }

    #[test]
    fn stateless_changes_sinks_and_sources_restart_with_state() {
        let a = spec(BASE);
        let b = with(BASE, "value > 1", "value > 2");
        let b = StreamingJobSpec { sinks: vec![], ..b };
        let p = plan(&a, &b);
        assert_eq!(p.verdict(), Verdict::Restores);
        assert_eq!(p.class(), Some(ChangeClass::Restart));
        let paths: Vec<&str> = p.changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["spec.pipeline[2]", "spec.sinks[0] (old)"]);
        // A stateless step inserted before the stateful one moves nothing.
        let c = with(
            BASE,
            "    - flatMap",
            "    - map: {expr: record}\n    - flatMap",
        );
        let p = plan(&a, &c);
        assert_eq!(p.class(), Some(ChangeClass::Restart), "{}", p.render());
        assert_eq!(p.changes.len(), 1, "one step added: {}", p.render());
        assert_eq!(p.changes[0].effect, "map added: the state is kept");
        let d = with(BASE, "rate: 100", "rate: 500");
        assert_eq!(plan(&a, &d).class(), Some(ChangeClass::Restart));
        let e = with(
            BASE,
            "sources: [",
            "sources: [{name: more, generator: {rate: 1}}, ",
        );
        let p = plan(&a, &e);
        assert_eq!(p.changes.len(), 1, "{}", p.render());
        assert!(p.changes[0].effect.contains("new source \"more\""));
    }

    #[test]
    fn a_graphs_state_is_known_by_stream_and_step() {
        const GRAPH: &str = "  batchInterval: 1s
  sources: [{name: a, generator: {rate: 100}}, {name: b, generator: {rate: 100}}]
  streams:
    - name: counts
      from: [a]
      pipeline: [{flatMap: {split: ' '}}, {countByValue: {}}, {updateStateByKey: {op: sum}}]
    - name: other
      from: [b]
      pipeline: [{countByWindow: {length: 3s}}]
  sinks: [{from: counts, stdout: {}}]";
        let a = spec(GRAPH);
        let ids: Vec<(String, String)> = stateful_steps(&a)
            .into_iter()
            .map(|s| (s.id.clone(), s.path()))
            .collect();
        assert_eq!(
            ids,
            [
                (
                    "counts/updateStateByKey#0".to_string(),
                    "spec.streams[0].pipeline[2]".to_string()
                ),
                (
                    "other/countByWindow#0".to_string(),
                    "spec.streams[1].pipeline[0]".to_string()
                )
            ]
        );
        // A stateless change in a stream restarts it; its state stays.
        let b = spec(&GRAPH.replace("split: ' '", "split: ','"));
        let p = plan(&a, &b);
        assert_eq!(p.verdict(), Verdict::Restores, "{}", p.render());
        assert_eq!(p.changes.len(), 1, "{}", p.render());
        assert_eq!(p.changes[0].path, "spec.streams[0].pipeline");
        // Another window length cannot read the old window, named by the stream's step.
        let c = spec(&GRAPH.replace("length: 3s", "length: 4s"));
        let p = plan(&a, &c);
        assert_eq!(p.verdict(), Verdict::CannotRestore, "{}", p.render());
        assert!(
            p.render().contains("other/countByWindow#0"),
            "{}",
            p.render()
        );
        // A renamed stream is another stream: its state is dropped, which needs consent.
        let d = spec(
            &GRAPH
                .replace("name: counts", "name: totals")
                .replace("from: counts", "from: totals"),
        );
        let p = plan(&a, &d);
        assert_eq!(p.verdict(), Verdict::RestoresWithLoss, "{}", p.render());
        assert!(p.refusal(false).is_some());
    }

    #[test]
    fn parallelism_and_new_stateful_steps_migrate() {
        let a = spec(BASE);
        let b = with(
            BASE,
            "batchInterval: 1s",
            "batchInterval: 1s\n  parallelism: 8",
        );
        let p = plan(&a, &b);
        assert_eq!(p.class(), Some(ChangeClass::Migration));
        assert_eq!(p.verdict(), Verdict::Restores);
        assert!(p.reshapes_state());
        assert!(p.changes[0].effect.starts_with("4 -> 8 partitions"));
        let c = with(
            BASE,
            "    - filter",
            "    - updateStateByKey: {op: sum}\n    - filter",
        );
        let p = plan(&a, &c);
        assert_eq!(p.changes.len(), 1, "{}", p.render());
        assert_eq!(p.changes[0].class, ChangeClass::Migration);
        assert_eq!(p.changes[0].path, "spec.pipeline[2]");
        assert!(p.refusal(false).is_none());
    }

    #[test]
    fn a_removed_stateful_step_is_a_stated_loss() {
        let a = spec(BASE);
        let b = with(
            BASE,
            "    - countByValueAndWindow: {length: 10s, slide: 2s}\n",
            "    - countByValue: {}\n",
        );
        let p = plan(&a, &b);
        assert_eq!(p.verdict(), Verdict::RestoresWithLoss, "{}", p.render());
        assert_eq!(p.verdict().exit_code(), 1);
        let refused = p.refusal(false).expect("refused without allowStateLoss");
        assert!(refused.contains("countByValueAndWindow#0"), "{refused}");
        assert!(refused.contains("allowStateLoss"), "{refused}");
        assert!(p.refusal(true).is_none());
    }

    #[test]
    fn timers_added_migrate_and_removed_are_a_stated_loss() {
        let plain = "  batchInterval: 1s
  sources: [{name: in, generator: {rate: 100}}]
  pipeline:
    - flatMap: {split: ' '}
    - countByValue: {}
    - mapWithState: {expr: \"{'state': value}\"}
  sinks: [{stdout: {}}]
  checkpoint: {uri: /tmp/c}
";
        let timed = with(
            plain,
            "{expr: \"{'state': value}\"}",
            "{expr: \"{'state': value, 'timer': batch.time}\", onTimer: \"{'emit': state}\"}",
        );
        let added = plan(&spec(plain), &timed);
        assert_eq!(added.verdict(), Verdict::Restores, "{}", added.render());
        assert!(
            added.render().contains("gained onTimer"),
            "{}",
            added.render()
        );
        let removed = plan(&timed, &spec(plain));
        assert_eq!(
            removed.verdict(),
            Verdict::RestoresWithLoss,
            "{}",
            removed.render()
        );
        assert!(
            removed.render().contains("timers are dropped"),
            "{}",
            removed.render()
        );
        // Another expression, timers on both sides: a restart with everything kept.
        let changed = with(
            plain,
            "{expr: \"{'state': value}\"}",
            "{expr: \"{'state': value, 'timer': batch.time}\", onTimer: \"{'emit': [key, state]}\"}",
        );
        assert_eq!(plan(&timed, &changed).class(), Some(ChangeClass::Restart));
    }

    #[test]
    fn a_state_of_another_form_cannot_restore() {
        let a = spec(BASE);
        let b = with(BASE, "length: 10s", "length: 20s");
        let p = plan(&a, &b);
        assert_eq!(p.verdict(), Verdict::CannotRestore);
        assert_eq!(p.verdict().exit_code(), 2);
        assert!(
            p.changes[0].effect.contains("length 10s -> 20s"),
            "{}",
            p.render()
        );
        assert!(
            p.refusal(true).is_some(),
            "no setting accepts an unreadable state"
        );
        let c = with(BASE, "batchInterval: 1s", "batchInterval: 2s");
        assert_eq!(plan(&a, &c).verdict(), Verdict::CannotRestore);
        // Renamed, the old state is dropped and the new one starts empty: a stated loss.
        let d = with(
            BASE,
            "- countByValueAndWindow: {length: 10s",
            "- name: counts\n      countByValueAndWindow: {length: 20s",
        );
        let p = plan(&a, &d);
        assert_eq!(p.verdict(), Verdict::RestoresWithLoss, "{}", p.render());
        // A new checkpoint starts afresh: nothing to restore, nothing refused.
        let e = with(
            &BASE.replace("length: 10s", "length: 20s"),
            "uri: /tmp/c",
            "uri: /tmp/d",
        );
        let p = plan(&a, &e);
        assert_eq!(p.verdict(), Verdict::Restores, "{}", p.render());
        assert!(p.changes[0].effect.contains("starts afresh"));
    }

    #[test]
    fn named_steps_keep_their_state_wherever_they_move() {
        let named = BASE.replace(
            "- countByValueAndWindow",
            "- name: counts\n      countByValueAndWindow",
        );
        let a = spec(&named);
        let b = with(
            &named,
            "    - flatMap",
            "    - countByValueAndWindow: {length: 4s}\n    - flatMap",
        );
        let p = plan(&a, &b);
        assert_eq!(p.verdict(), Verdict::Restores, "{}", p.render());
        assert_eq!(p.changes.len(), 1);
        assert!(p.changes[0].effect.contains("countByValueAndWindow#0"));
    }

    #[test]
    fn deployment_fields_are_live_or_restart() {
        let a = serde_json::json!({
            "batchInterval": "1s",
            "sources": [{"name": "in", "generator": {"rate": 1}}],
            "sinks": [{"stdout": {}}],
            "checkpoint": {"uri": "s3://b/c"},
            "workers": {"replicas": 2},
        });
        let mut b = a.clone();
        b["workers"]["replicas"] = 5.into();
        b["workers"]["autoscale"] = serde_json::json!({"maxReplicas": 6});
        let p = plan_resources(&a, &b).expect("plan");
        assert_eq!(p.class(), Some(ChangeClass::Live), "{}", p.render());
        assert_eq!(p.changes.len(), 2, "{}", p.render());
        b["workers"]["autoscale"] = Json::Null;
        b["workers"]["resources"] = serde_json::json!({"limits": {"cpu": "1"}});
        let p = plan_resources(&a, &b).expect("plan");
        assert_eq!(p.class(), Some(ChangeClass::Restart), "{}", p.render());
        b["workers"] = serde_json::json!({"replicas": 5});
        b["image"] = "sluice:2".into();
        b["checkpoint"]["deletionPolicy"] = "Delete".into();
        let p = plan_resources(&a, &b).expect("plan");
        assert_eq!(p.class(), Some(ChangeClass::Restart), "{}", p.render());
        assert_eq!(p.changes.len(), 3, "{}", p.render());
        b["parallelism"] = "x".into();
        assert!(plan_resources(&a, &b).is_err());
    }

    #[test]
    fn the_rendered_plan_ends_with_the_verdict() {
        let a = spec(BASE);
        let b = with(BASE, "length: 10s", "length: 20s");
        let text = plan(&a, &b).render();
        assert!(text.contains("cannot restore"), "{text}");
        assert!(
            text.ends_with("verdict: cannot restore (exit 2)\n"),
            "{text}"
        );
        assert_eq!(
            plan(&a, &a).render(),
            "no changes\nverdict: restores (exit 0)\n"
        );
    }
}
